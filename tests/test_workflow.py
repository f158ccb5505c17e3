"""The GitHub workflow passes a security audit: `zizmor --offline` (where zizmor is installed: the
`test` extra pins it), and, checked here without it, the rules that audit enforces and the
project's own conventions (a full commit SHA with its version beside it, no persisted token,
least permissions per job). Its behaviour is tested in test_faults.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

WORKFLOW = REPO / ".github" / "workflows" / "site.yml"
# `uses: owner/repo[/path]@<40 hex> # vX.Y.Z`: the SHA is what runs, the comment is for people
# (and for Dependabot, which updates both).
PINNED = re.compile(r"^\s*(?:- )?uses: [\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+\s*$")


def _zizmor() -> str | None:
    beside = Path(sys.executable).parent / "zizmor"   # the venv's, even when it is not on PATH
    return str(beside) if beside.is_file() else shutil.which("zizmor")


def test_zizmor_finds_nothing():
    zizmor = _zizmor()
    if zizmor is None:
        pytest.skip("zizmor is not installed (it comes with the test extra: pip install -e "
                    "'.[test]'); test_actions_are_pinned_and_permissions_least checks the main "
                    "rules without it")
    proc = subprocess.run([zizmor, "--offline", "--no-progress", str(WORKFLOW)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No findings" in proc.stdout + proc.stderr


def test_actions_are_pinned_and_permissions_least():
    text = WORKFLOW.read_text(encoding="utf-8")
    uses = [line for line in text.splitlines() if re.match(r"^\s*(- )?uses:", line)]
    assert len(uses) >= 9
    unpinned = [line.strip() for line in uses if not PINNED.match(line)]
    assert not unpinned, f"not pinned to a commit with its version in a comment: {unpinned}"

    wf = yaml.safe_load(text)
    assert wf["permissions"] == {}, "no rights by default: each job names what it needs"
    for name, job in wf["jobs"].items():
        assert "permissions" in job, f"job {name} must declare its permissions"
        for step in job.get("steps", []):
            if str(step.get("uses", "")).startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, f"job {name}: checkout"
    write = {n: j["permissions"] for n, j in wf["jobs"].items()
             if any(v == "write" for v in (j["permissions"] or {}).values())}
    assert write == {"deploy": {"pages": "write", "id-token": "write"}}
