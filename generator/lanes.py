"""A second lane of work beside the main one: a forked child process, on a machine with a second core.

The render stage is pure Python, so one process uses one core. `Beside(fn)` runs `fn` in a forked
child (it sees everything the parent holds, copy-on-write: nothing is pickled on the way in) while
the parent goes on; `join()` waits for it and returns what `fn` returned, or raises what it raised
(an OSError keeps its errno, so a full disk is still reported as one). Where there is no second
core, or `SERIAL` is set, or the system is not Linux (Windows has no fork; on macOS a process that
forks after loading system frameworks can crash in the child), `fn` runs at once in the parent:
the same result, one lane (and what it raises is raised at once).

The child dies with its parent (PR_SET_PDEATHSIG on Linux), so a build killed in the middle leaves
no process writing into the tree that the next build clears; the parent kills it (`stop()`) when
its own lane fails.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
from typing import Any, Callable, Generic, TypeVar

from .errors import AtlasError

T = TypeVar("T")

# Tests set this to compare one lane with two; nothing else does.
SERIAL = False
PR_SET_PDEATHSIG = 1                             # <linux/prctl.h>


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                      # not Linux
        return os.cpu_count() or 1


def _die_with_parent(parent: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):           # no prctl here: the parent's stop() still applies
        return
    if os.getppid() != parent:                  # it died before prctl took effect
        os._exit(1)


class Beside(Generic[T]):
    """`fn()` in a second lane; `join()` for its result."""

    def __init__(self, fn: Callable[[], T]):
        self.pid: int | None = None
        self._result: tuple[bool, Any] | None = None
        if SERIAL or cores() < 2 or not sys.platform.startswith("linux"):
            self._result = (True, fn())         # its exception, if any, is raised here
            return
        sys.stdout.flush()                      # or the child would write the parent's buffer
        sys.stderr.flush()                      # again when it exits
        read, write = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:                            # the child: run, send the outcome, leave
            status = 1
            try:
                os.close(read)
                _die_with_parent(parent)
                data = _pickled(_outcome(fn))
                with os.fdopen(write, "wb") as out:
                    out.write(data)
                status = 0
            finally:
                os._exit(status)                # no atexit, no test-runner teardown in the child
        os.close(write)
        self.pid, self._read = pid, read

    def join(self) -> T:
        """Wait for the lane; its result, or its exception raised here."""
        if self._result is None:
            with os.fdopen(self._read, "rb") as inp:
                data = inp.read()
            pid, self.pid = self.pid, None
            _, status = os.waitpid(pid, 0)
            if not data:
                raise AtlasError(f"the second lane of work (process {pid}) ended without a "
                                 f"result (wait status {status}); run again, or report this.")
            self._result = pickle.loads(data)
        ok, value = self._result
        if ok:
            return value
        raise value

    def stop(self) -> None:
        """Kill the lane if it still runs (the parent failed: its work is not wanted)."""
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            try:
                os.close(self._read)
            except OSError:                     # join() had opened and closed it
                pass
            self.pid = None


def _outcome(fn: Callable[[], T]) -> tuple[bool, Any]:
    try:
        return True, fn()
    except Exception as e:                      # noqa: BLE001 - handed to join() to raise
        return False, e


def _pickled(outcome: tuple[bool, Any]) -> bytes:
    """The outcome as bytes; an exception that does not pickle goes as an AtlasError saying what it
    was."""
    try:
        return pickle.dumps(outcome)
    except Exception:                           # noqa: BLE001 - any pickling failure
        ok, value = outcome
        return pickle.dumps((False, AtlasError(f"{type(value).__name__}: {value}")))
