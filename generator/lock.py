"""The build directory's lock: one command at a time writes into a `--build-dir`.

`build`, `compute`, `render` and `serve` (while it builds) hold it for as long as they write there;
a second command on the same directory waits for it, printing a line that names the holder (its
pid, its command, since when), or with `--no-wait` fails at once with that line. The lock is
`filelock`'s operating-system lock (flock on Unix) on `<build-dir>/.model-atlas.lock`: the kernel
releases it when its process ends, however it ends, so a lock left by a killed build never blocks
the next one. Beside it the holder writes who it is (`.model-atlas.lock.json`), only for that
message: a killed holder leaves that file behind, so a waiter believes it only while it names a
live process (the next holder overwrites it).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from filelock import FileLock, Timeout

from .errors import AtlasError
from .store import atomic_write_text

LOCK_FILE = ".model-atlas.lock"
HOLDER_FILE = ".model-atlas.lock.json"
REPEAT_S = 30.0  # how often a waiting command says it is still waiting

Log = Callable[[str], None]


class BuildDirBusy(AtlasError):
    """Another command holds the build directory and `--no-wait` was given."""


def command_line(name: str | None = None) -> str:
    """How this process was started, as a user would type it (`model-atlas build --demo`)."""
    args = sys.argv[1:]
    if name is not None and args[:1] != [name]:  # not started from a shell (a test's CliRunner)
        return f"model-atlas {name}"
    return "model-atlas " + shlex.join(args)


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this machine runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def holder(build_dir: Path) -> dict[str, Any] | None:
    """Who holds the lock of `build_dir`, as it wrote itself down; None if it has not (yet), or if
    the file names a process of this machine that no longer runs (a killed holder's)."""
    try:
        info = json.loads((build_dir / HOLDER_FILE).read_text(encoding="utf-8"))
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if info.get("host") == socket.gethostname() and not process_alive(pid):
        return None
    return info


def describe(build_dir: Path, info: dict[str, Any] | None) -> str:
    """`--build-dir X is in use by pid N (`model-atlas build ...`) since HH:MM:SS (M s ago)`."""
    if info is None:
        who = "another model-atlas command (it has not written its name yet)"
    else:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
        ago = max(0, round(time.time() - info.get("started", time.time())))
        host = "" if info.get("host") == socket.gethostname() else f" on {info.get('host')}"
        who = f"pid {info['pid']}{host} (`{info.get('command', '?')}`) since {since} ({ago} s ago)"
    return f"--build-dir {build_dir} is in use by {who}"


@contextmanager
def build_dir_lock(build_dir: Path, command: str, *, wait: bool = True,
                   log: Log = print) -> Iterator[None]:
    """Hold `build_dir`'s lock for the body (creating the directory). Waits for a holder, saying
    who it is every `REPEAT_S` seconds; with `wait=False` raises `BuildDirBusy` instead."""
    lock = FileLock(build_dir / LOCK_FILE)
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except PermissionError as e:
        raise AtlasError(f"--build-dir {build_dir}: cannot write there ({e.strerror}); give a "
                         f"directory you can write to.") from None
    except Timeout:
        message = describe(build_dir, _named_holder(build_dir))
        if not wait:
            raise BuildDirBusy(f"{message}. Run the command again when it has finished, leave "
                               f"out --no-wait to wait for it, or give another --build-dir.") \
                from None
        _wait(lock, build_dir, message, log)
    try:
        try:
            atomic_write_text(build_dir / HOLDER_FILE, json.dumps({
                "pid": os.getpid(), "command": command, "started": time.time(),
                "host": socket.gethostname()}) + "\n", durable=False)
        except OSError:  # a full disk: waiters then say they wait for a command without a name
            pass
        yield
    finally:
        # The name goes first: a waiter that gets the lock must not find this process's name.
        (build_dir / HOLDER_FILE).unlink(missing_ok=True)
        lock.release()


def _named_holder(build_dir: Path, patience: float = 2.0) -> dict[str, Any] | None:
    """The holder's name, waiting a moment for it: a holder writes it just after it takes the
    lock, so a command that meets the lock in between would otherwise name no one."""
    deadline = time.monotonic() + patience
    while (info := holder(build_dir)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return info


def _wait(lock: FileLock, build_dir: Path, message: str, log: Log) -> None:
    log(f"{message}; waiting for it to finish (--no-wait: fail instead)")
    t0 = time.monotonic()
    while True:
        try:
            lock.acquire(timeout=REPEAT_S)
            log(f"--build-dir {build_dir} is free after {time.monotonic() - t0:.0f} s; going on")
            return
        except Timeout:
            log(f"{describe(build_dir, holder(build_dir))}; still waiting "
                f"({time.monotonic() - t0:.0f} s so far)")
