"""The render stage's second lane (generator/lanes.py): a forked child's result and errors come back
to the parent as if it had run there, the child dies with its parent, and a render in two lanes
writes the same docs tree as one in one lane."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import time

import pytest

from generator import lanes
from generator.errors import AtlasError

from conftest import REPO, tree_digest

# The second lane is a fork on Linux only: Windows has no fork and macOS does not make it safe, so
# there the work runs in one lane, which `test_one_lane_...` covers on every system.
linux = pytest.mark.skipif(not sys.platform.startswith("linux"),
                           reason="the second lane forks on Linux only; elsewhere the work runs in "
                                  "one lane (test_one_lane_runs_at_once_and_raises_at_once)")


@pytest.fixture()
def two_cores(monkeypatch):
    """A second core, as far as `lanes` can tell: on a one-core machine the render keeps one lane,
    but the fork works there all the same, and these tests run it."""
    monkeypatch.setattr(lanes, "cores", lambda: 2)


@linux
def test_the_lane_runs_in_another_process_and_returns_its_result(two_cores):
    lane = lanes.Beside(lambda: (os.getpid(), [1, 2, 3]))
    assert lane.pid is not None and lane.pid != os.getpid()
    pid, value = lane.join()
    assert pid != os.getpid() and value == [1, 2, 3]


@linux
def test_the_lanes_errors_are_raised_by_join_as_they_were(two_cores):
    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "/somewhere/file.json")

    with pytest.raises(OSError) as caught:
        lanes.Beside(full_disk).join()
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == "/somewhere/file.json"

    class Unpicklable(Exception):
        def __reduce__(self):
            raise TypeError("no")

    def odd():
        raise Unpicklable("planted")

    with pytest.raises(AtlasError, match="Unpicklable: planted"):
        lanes.Beside(odd).join()


def test_one_lane_runs_at_once_and_raises_at_once(monkeypatch):
    monkeypatch.setattr(lanes, "SERIAL", True)
    ran = []
    lane = lanes.Beside(lambda: ran.append(os.getpid()) or "done")
    assert ran == [os.getpid()] and lane.pid is None and lane.join() == "done"
    with pytest.raises(ZeroDivisionError):
        lanes.Beside(lambda: 1 / 0)


@linux
def test_stop_kills_a_running_lane(two_cores):
    lane = lanes.Beside(lambda: time.sleep(60))
    pid = lane.pid
    lane.stop()
    assert lane.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@linux
def test_the_lane_dies_with_its_parent():
    """A build killed during render leaves no child writing into the tree the next build clears."""
    script = textwrap.dedent("""
        import os, signal, sys, time
        from generator import lanes
        lanes.cores = lambda: 2
        lane = lanes.Beside(lambda: time.sleep(60))
        print(lane.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    child = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(child, 9)
    pytest.fail(f"the lane (pid {child}) outlived its killed parent")


@linux
def test_two_lanes_render_the_same_docs_tree_as_one(demo_build, monkeypatch, tmp_path, two_cores):
    """The head pages and per-head files in a forked lane beside the prompt pages: the same
    files, byte for byte, and the same count and log lines, as in one lane."""
    from generator.cli import _prompt_sets, _slugs
    from generator.render import load_catalog, render_docs
    from generator.site import vendor_bundle
    sets = _prompt_sets((demo_build.prompts,))
    catalog = load_catalog(demo_build.root / "artifacts", sets, _slugs((), True, demo_build.root),
                           lambda _: None)
    forked: list[bool] = []           # whether each render's second lane was a child process
    real_init = lanes.Beside.__init__

    def init(self, fn):
        real_init(self, fn)
        forked.append(self.pid is not None)

    monkeypatch.setattr(lanes.Beside, "__init__", init)
    trees, logs = {}, {}
    for serial in (False, True):
        monkeypatch.setattr(lanes, "SERIAL", serial)
        lines: list[str] = []
        docs = tmp_path / f"serial-{serial}" / "docs"
        render_docs(catalog, docs, vendor_bundle(demo_build.root), lines.append)
        trees[serial] = tree_digest(docs)
        logs[serial] = [line.replace(str(docs), "DOCS").split(" in ")[0] for line in lines]
    assert forked == [True, False]
    assert trees[False] == trees[True]
    assert logs[False] == logs[True]
    assert any(line.startswith("render: ") and "head pages of" in line for line in logs[False])
