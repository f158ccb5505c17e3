"""Two commands on one build directory, the site swapped in one step, and a full disk
(generator/lock.py, generator/space.py, store.replace_dir): fast tests, with a holder in a
subprocess and ENOSPC patched into a write. The whole-build tests (two builds at once, a killed
holder, a failed render, a real small file system) are in tests/test_faults.py.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from generator import lock
from generator.cli import main
from generator.space import DiskFullError, Space, is_disk_full
from generator.store import _exchange, replace_dir

from conftest import REPO

HOLD = """
import sys, time
from pathlib import Path
from generator.lock import build_dir_lock
with build_dir_lock(Path(sys.argv[1]), "model-atlas build --demo --from-test", log=print):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def holder_process(build_dir: Path, seconds: float = 60) -> subprocess.Popen:
    """A process that holds `build_dir`'s lock for `seconds`; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(build_dir), str(seconds)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


@pytest.fixture()
def held(tmp_path):
    build_dir = tmp_path / "build"
    proc = holder_process(build_dir)
    yield build_dir, proc
    stop(proc)


def test_no_wait_fails_at_once_naming_the_holder(held):
    build_dir, proc = held
    t0 = time.monotonic()
    with pytest.raises(lock.BuildDirBusy) as e:
        with lock.build_dir_lock(build_dir, "model-atlas render", wait=False):
            pytest.fail("the lock was taken while another process held it")
    assert time.monotonic() - t0 < 2
    message = str(e.value)
    assert f"--build-dir {build_dir} is in use by pid {proc.pid}" in message
    assert "`model-atlas build --demo --from-test`" in message and " since " in message
    assert "leave out --no-wait" in message and "another --build-dir" in message


def test_a_second_holder_waits_saying_who_it_waits_for(held, monkeypatch):
    build_dir, proc = held
    monkeypatch.setattr(lock, "REPEAT_S", 0.2)
    lines: list[str] = []
    got = threading.Event()

    def second() -> None:
        with lock.build_dir_lock(build_dir, "model-atlas render", log=lines.append):
            got.set()
            info = json.loads((build_dir / lock.HOLDER_FILE).read_text())
            assert info["pid"] == os.getpid() and info["command"] == "model-atlas render"

    t = threading.Thread(target=second)
    t.start()
    time.sleep(1.0)
    assert not got.is_set(), "the second command did not wait"
    assert lines and f"in use by pid {proc.pid}" in lines[0] and "waiting" in lines[0]
    assert any("still waiting" in line for line in lines[1:]), lines
    proc.terminate()  # the holder ends: the waiter goes on
    t.join(timeout=30)
    assert got.is_set()
    assert "is free after" in lines[-1]
    assert not (build_dir / lock.HOLDER_FILE).exists(), "the holder's name outlived its lock"


def test_a_killed_holder_never_blocks(held):
    build_dir, proc = held
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # It could not remove its name: the file is there, naming a process that is gone.
    assert json.loads((build_dir / lock.HOLDER_FILE).read_text())["pid"] == proc.pid
    assert lock.holder(build_dir) is None
    t0 = time.monotonic()
    with lock.build_dir_lock(build_dir, "model-atlas build", wait=False):
        assert json.loads((build_dir / lock.HOLDER_FILE).read_text())["pid"] == os.getpid()
    assert time.monotonic() - t0 < 2


@pytest.mark.parametrize("command", ["build", "compute", "render", "serve"])
def test_commands_with_no_wait_fail_with_one_message(held, tiny_prompts, command):
    build_dir, proc = held
    args = [command, "--demo", "--prompts", str(tiny_prompts), "--build-dir", str(build_dir),
            "--no-wait"]
    if command != "compute":
        args += ["--out", str(build_dir.parent / "site")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert result.output.startswith(f"Error: --build-dir {build_dir} is in use by pid {proc.pid}")
    assert "Traceback" not in result.output
    assert not (build_dir / "demo-models").exists(), "it wrote before holding the lock"


def test_the_lock_is_released_when_a_command_fails(tiny_prompts, tmp_path):
    build_dir = tmp_path / "build"
    result = CliRunner().invoke(main, ["render", "--demo", "--prompts", str(tiny_prompts),
                                       "--build-dir", str(build_dir), "--out",
                                       str(tmp_path / "site"), "--no-wait"])
    assert result.exit_code == 1 and "no artifacts directory" in result.output, result.output
    with lock.build_dir_lock(build_dir, "model-atlas build", wait=False):
        pass
    assert not (build_dir / lock.HOLDER_FILE).exists()


# --- the site replaced in one step ---------------------------------------------------------------


def _tree(root: Path, version: str, files: int = 50) -> Path:
    root.mkdir()
    for i in range(files):
        (root / f"page{i}.html").write_text(version * 100)
    return root


def test_replace_dir_never_shows_a_missing_or_partial_tree(tmp_path):
    """A reader of the target during 200 swaps always finds it, each file whole (where the system
    swaps two directories in one step; elsewhere there is a moment without it, and this fails)."""
    probe = [_tree(tmp_path / "p1", "a", 1), _tree(tmp_path / "p2", "b", 1)]
    if not _exchange(*probe):
        pytest.skip("this system or file system cannot swap two directories in one step")
    for p in probe:
        shutil.rmtree(p)
    target = _tree(tmp_path / "site", "a")
    errors: list[str] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                first = (target / "page0.html").read_text()
                last = (target / "page49.html").read_text()
                if len(first) != 100 or len(last) != 100:
                    errors.append(f"a partial file: {len(first)}, {len(last)}")
            except OSError as e:
                errors.append(repr(e))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for n in range(200):
            new = _tree(tmp_path / f".site.{n}.tmp", "ab"[n % 2])
            replace_dir(new, target)
            assert not new.exists(), "the old tree was not deleted"
    finally:
        done.set()
        t.join()
    assert not errors, errors[:5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_replace_dir_into_nothing(tmp_path):
    new = _tree(tmp_path / "new", "a", files=1)
    replace_dir(new, tmp_path / "site")
    assert (tmp_path / "site" / "page0.html").read_text() == "a" * 100 and not new.exists()


# --- a full disk, patched ------------------------------------------------------------------------


def test_an_atomic_write_that_fails_names_its_file(monkeypatch, tmp_path):
    """os.write names no file; the error of atomic_write_bytes does, and leaves no temporary."""
    from generator.store import atomic_write_bytes
    target = tmp_path / "a" / "x.json"

    def full(fd, data):
        raise enospc()

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError) as e:
        atomic_write_bytes(target, b"{}")
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert list(target.parent.iterdir()) == []


def enospc(filename: str | None = None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)


def test_disk_full_is_recognised_however_it_is_wrapped():
    assert is_disk_full(enospc())
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    try:
        try:
            raise enospc("/x")
        except OSError as e:
            raise RuntimeError("wrapped") from e
    except RuntimeError as e:
        assert is_disk_full(e)
    # safetensors' error carries only the text of the Rust io::Error
    assert is_disk_full(Exception('Error while serializing: I/O error: No space left on device '
                                  '(os error 28)'))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(ValueError("bad value"))


def test_the_message_says_what_where_free_and_needed(tmp_path):
    build = tmp_path / "build"
    (build / "docs").mkdir(parents=True)
    (build / "docs" / "a.html").write_bytes(b"x" * 2_000_000)
    (build / "artifacts").mkdir()
    (build / "artifacts" / "a.json").write_bytes(b"x" * 500_000)
    space = Space(build, tmp_path / "site")
    with pytest.raises(DiskFullError) as e:
        with space.writing("the generated pages", build / "docs"):
            raise enospc(str(build / "docs.tmp" / "x.html"))
    message = str(e.value)
    assert message.startswith("No space left on device while writing the generated pages")
    assert str(build / "docs") in message and " free there" in message
    # 2.5 MB there now, plus a new docs tree beside the old one: 4.5 MB
    assert "needs about 2.0 MB free (4.5 MB in all)" in message
    assert "--build-dir and --out on a disk with room" in message
    assert message.count(". ") == 0, "one sentence"
    with pytest.raises(ValueError):  # anything else passes through
        with space.writing("the generated pages", build / "docs"):
            raise ValueError("not a full disk")


def test_a_full_disk_in_compute_stops_it_with_one_sentence(monkeypatch, demo_dirs, tiny_prompts,
                                                           tmp_path):
    """ENOSPC from an artifact's write: compute stops (no failure per prompt), says it in one
    line, and leaves no temporary file."""
    import generator.compute
    from generator.schema import write_binary_file
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    (build_dir / "demo-models").symlink_to(demo_dirs[0].parent, target_is_directory=True)
    calls = []

    def full(path, *args):
        calls.append(path)
        if len(calls) > 1:  # the first model's artifact is written, the second's is not
            raise enospc()
        return write_binary_file(path, *args)

    monkeypatch.setattr(generator.compute, "write_binary_file", full)
    result = CliRunner().invoke(main, ["compute", "--demo", "--prompts", str(tiny_prompts),
                                       "--build-dir", str(build_dir), "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "Traceback" not in result.output, result.output
    assert error[0].startswith("Error: No space left on device while writing the artifacts in "
                               f"{build_dir / 'artifacts'}: "), error
    assert "unit(s) failed" not in result.output
    assert not list(build_dir.rglob(".*.tmp")), "a temporary file was left"
    # The artifact written before the disk filled is whole and is reused by the next build.
    assert len(list((build_dir / "artifacts").rglob("*.json"))) == 1
