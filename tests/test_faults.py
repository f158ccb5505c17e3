"""Faults: a build killed at any moment loses nothing and resumes; builds are reproducible; a prompt
that fails, an out-of-memory batch and a broken checkpoint are handled; the CI workflow is sound.

The kill tests run `model-atlas build --demo` in a subprocess (its own process group, so mkdocs dies
with it), SIGKILL it during compute and during render, check every artifact left on disk still
validates, run the build again and compare the site, byte for byte, with an uninterrupted build's.
`SOURCE_DATE_EPOCH` is fixed so that the build date printed on pages is the same.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from generator import layout
from generator.cli import main
from generator.lock import HOLDER_FILE
from generator.schema import read_artifact

from conftest import REPO, tree_digest, write_prompt_sets

SLUGS = ("tiny-random-gpt2", "tiny-random-qwen2")
SETS = {"faults": {"title": "Faults", "description": "Three short prompts.",
                   "prompts": [{"id": "hello", "text": "Hello world", "note": "Two tokens."},
                               {"id": "cat", "text": "The cat sat on the mat.", "note": "A cat."},
                               {"id": "count", "text": "One two three four five",
                                "note": "Counting."}]}}
TOTAL = len(SETS["faults"]["prompts"]) * len(SLUGS)
EPOCH = "1700000000"
ENV = {**os.environ, "SOURCE_DATE_EPOCH": EPOCH, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
       "TOKENIZERS_PARALLELISM": "false"}
WORKFLOW = REPO / ".github" / "workflows" / "site.yml"


def artifacts(root: Path) -> list[Path]:
    d = root / "artifacts"
    return sorted(d.rglob("*.json")) if d.is_dir() else []


def build_command(root: Path, prompts: Path) -> list[str]:
    # --batch-size 1: float32 results depend on a batch's shape by about 1e-6, and a resumed build
    # batches the prompts it still has to compute otherwise than an uninterrupted one; the
    # constructed demo predicts with confidence (p ~ 0.9), where that shows in the sixth stored
    # decimal. One prompt per batch makes every build's numbers the same, so the bytes compare.
    return [sys.executable, "-m", "generator.cli", "build", "--demo", "--prompts", str(prompts),
            "--build-dir", str(root), "--out", str(root / "site"), "--device", "cpu",
            "--batch-size", "1"]


def new_root(path: Path, demo_dirs: list[Path]) -> Path:
    """A fresh build dir with its own copy of the session's demo checkpoints."""
    for d in demo_dirs:
        shutil.copytree(d, path / "demo-models" / d.name)
    return path


def run_build(root: Path, prompts: Path, *extra: str) -> str:
    """A build in a subprocess, to its end; returns its log."""
    proc = subprocess.run(build_command(root, prompts) + list(extra), cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stderr


def kill_when(root: Path, prompts: Path, moment: Callable[[], bool], what: str) -> str:
    """Start a build and SIGKILL its whole process group as soon as `moment()` is true."""
    log = root.parent / f"{root.name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(build_command(root, prompts), cwd=REPO, env=ENV, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if moment():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return log.read_text(errors="replace")
            if proc.poll() is not None:
                pytest.fail(f"the build ended (exit {proc.returncode}) before {what}:\n"
                            + log.read_text(errors="replace"))
            time.sleep(0.005)
        pytest.fail(f"{what} did not happen within 300 s:\n" + log.read_text(errors="replace"))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    return ""


def assert_artifacts_valid(root: Path) -> list[Path]:
    found = artifacts(root)
    for path in found:
        read_artifact(path)  # raises ArtifactError naming the file if it is corrupt
    return found


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    return write_prompt_sets(tmp_path_factory.mktemp("fault-prompts"), SETS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, demo_dirs, prompts) -> Path:
    """An uninterrupted build: the bytes every other build must reproduce."""
    root = new_root(tmp_path_factory.mktemp("reference") / "build", demo_dirs)
    log = run_build(root, prompts)
    assert f"compute: {TOTAL} computed, 0 reused, 0 failed" in log, log
    assert len(assert_artifacts_valid(root)) == TOTAL
    return root


# --- kills -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_during_compute_resumes_to_the_same_site(reference, prompts, demo_dirs, tmp_path):
    root = new_root(tmp_path / "build", demo_dirs)
    kill_when(root, prompts, lambda: 0 < len(artifacts(root)) < TOTAL,
              "some but not all artifacts existed")
    done = assert_artifacts_valid(root)
    assert 0 < len(done) < TOTAL, [p.name for p in done]
    assert not (root / "site").exists()
    # The killed build held the build directory's lock and could not say it let go: its name is
    # still there. --no-wait: the next build must not even wait.
    assert json.loads((root / HOLDER_FILE).read_text())["command"].startswith("model-atlas build")
    log = run_build(root, prompts, "--no-wait")
    assert "in use" not in log, log
    assert f"compute: {TOTAL - len(done)} computed, {len(done)} reused, 0 failed" in log, log
    assert not list((root / "artifacts").rglob(".*.tmp")), "temporary files were left behind"
    assert tree_digest(root / "artifacts") == tree_digest(reference / "artifacts")
    assert tree_digest(root / "site") == tree_digest(reference / "site")


@pytest.mark.slow
@pytest.mark.parametrize("stage, marker", [("docs", "docs.tmp"), ("mkdocs", ".site.*.tmp")])
def test_killed_during_render_resumes_to_the_same_site(reference, prompts, demo_dirs, tmp_path,
                                                       stage, marker):
    """Killed while the pages are generated (build/docs.tmp) or while mkdocs runs (.site.<pid>.tmp,
    beside --out)."""
    root = new_root(tmp_path / "build", demo_dirs)
    shutil.copytree(reference / "artifacts", root / "artifacts")
    kill_when(root, prompts, lambda: any(root.glob(marker)), f"{marker} existed")
    assert_artifacts_valid(root)
    assert tree_digest(root / "artifacts") == tree_digest(reference / "artifacts")
    assert not (root / "site").exists(), "a half-built site must never be in --out"
    log = run_build(root, prompts)
    assert f"compute: 0 computed, {TOTAL} reused, 0 failed" in log, log
    assert not (root / "docs.tmp").exists() and not list(root.glob(".site.*.tmp*"))
    assert tree_digest(root / "site") == tree_digest(reference / "site")


# --- determinism -----------------------------------------------------------------------------


@pytest.mark.slow
def test_two_clean_builds_are_byte_identical(reference, prompts, demo_dirs, tmp_path):
    """Same inputs, another build dir at another depth: the same artifacts and site, byte for
    byte, and no absolute path of either build in any file."""
    root = new_root(tmp_path / "x" / "y" / "other-build", demo_dirs)
    run_build(root, prompts)
    for part in ("artifacts", "site"):
        ours, theirs = tree_digest(root / part), tree_digest(reference / part)
        assert sorted(ours) == sorted(theirs), f"{part}: different files"
        differ = [name for name in ours if ours[name] != theirs[name]]
        assert not differ, f"{part}: files differ between two clean builds: {differ[:10]}"
    for path in (root / "site").rglob("*"):
        if path.is_file() and path.suffix in (".html", ".json", ".xml", ".js"):
            text = path.read_text(encoding="utf-8", errors="replace")
            assert str(root) not in text and str(reference) not in text, path


# --- two builds at once, a failed render -------------------------------------------------------


def start_build(root: Path, prompts: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(build_command(root, prompts) + list(extra), cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_builds_at_once_run_one_after_the_other(reference, prompts, demo_dirs, tmp_path):
    """Two builds of one build directory and --out, started together: the second waits, saying
    for whom; both succeed, and the site is one build's, byte for byte. A reader of the site
    (`serve --no-build`) finds it at every moment once the first build made it, across the
    second build's swap."""
    root = new_root(tmp_path / "build", demo_dirs)
    procs = [start_build(root, prompts) for _ in range(2)]
    seen, missing, done = [], [], threading.Event()

    def reader() -> None:
        while not done.is_set():
            if (root / "site" / "index.html").is_file():
                seen.append(1)
            elif seen:
                missing.append(time.monotonic())
            time.sleep(0.001)  # the swap itself has no gap: tests/test_lock.py reads through it

    t = threading.Thread(target=reader)
    t.start()
    try:
        logs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        done.set()
        t.join()
    assert seen and not missing, f"the site was missing {len(missing)} times"
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log
    waited = [i for i, log in enumerate(logs) if "waiting for it to finish" in log]
    assert len(waited) == 1, logs
    second, first = waited[0], 1 - waited[0]
    assert f"is in use by pid {procs[first].pid} (`model-atlas build --demo" in logs[second]
    assert f"compute: {TOTAL} computed, 0 reused, 0 failed" in logs[first]
    assert f"compute: 0 computed, {TOTAL} reused, 0 failed" in logs[second]
    assert tree_digest(root / "site") == tree_digest(reference / "site")
    assert not list(root.glob(".site.*")) and not (root / "docs.tmp").exists()


@pytest.mark.slow
def test_with_no_wait_the_second_build_fails_at_once_naming_the_first(reference, prompts,
                                                                       demo_dirs, tmp_path):
    root = new_root(tmp_path / "build", demo_dirs)
    procs = [start_build(root, prompts, "--no-wait") for _ in range(2)]
    ended: dict[int, float] = {}
    while len(ended) < 2:
        for i, p in enumerate(procs):
            if i not in ended and p.poll() is not None:
                ended[i] = time.monotonic()
        time.sleep(0.05)
    logs = [p.communicate(timeout=60)[0] for p in procs]
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    assert len(failed) == 1, logs
    loser, winner = failed[0], 1 - failed[0]
    assert procs[winner].returncode == 0, logs[winner]
    assert ended[loser] < ended[winner], "the second build waited"
    message = logs[loser].strip()
    assert message.startswith(f"Error: --build-dir {root} is in use by "), message
    assert f"pid {procs[winner].pid}" in message or "has not written its name" in message
    assert "Traceback" not in message and len(message.splitlines()) == 1, message
    assert tree_digest(root / "site") == tree_digest(reference / "site")


def _render(root: Path, prompts: Path):
    return CliRunner().invoke(main, ["render", "--demo", "--prompts", str(prompts),
                                     "--build-dir", str(root), "--out", str(root / "site")])


def _copy_build(reference: Path, root: Path) -> Path:
    """The reference build without its demo checkpoints (render does not read them)."""
    shutil.copytree(reference, root, symlinks=True, ignore=shutil.ignore_patterns("demo-models"))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("where", ["pages", "mkdocs"])
def test_a_failed_render_leaves_the_previous_site(monkeypatch, reference, prompts, tmp_path,
                                                  where):
    """A render that fails while writing the pages, or in mkdocs: the site (and, when the pages
    failed, the docs tree) of the last build stay as they were, and nothing half-written is left."""
    import generator.render
    from generator.errors import ArtifactError
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    root = _copy_build(reference, tmp_path / "build")
    site, docs = tree_digest(root / "site"), tree_digest(root / "docs")
    if where == "pages":
        def fail(self):
            raise ArtifactError("planted failure while writing the pages")
        monkeypatch.setattr(generator.render._Site, "manifest", fail)
    else:
        real = generator.render.navigation
        monkeypatch.setattr(generator.render, "navigation",
                            lambda catalog: real(catalog) + [{"Gone": "no-such-page.md"}])
    result = _render(root, prompts)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    expected = "planted failure" if where == "pages" else "mkdocs build --strict failed"
    assert expected in result.output
    assert tree_digest(root / "site") == site
    if where == "pages":
        assert tree_digest(root / "docs") == docs
    assert not (root / "docs.tmp").exists() and not list(root.glob(".site.*"))


# --- a full disk: a small file system made in the test ---------------------------------------


class SmallDisk:
    """A tmpfs mounted at `path` whose size can be set (root only)."""

    def __init__(self, path: Path):
        self.path = path

    def resize(self, size: int) -> None:
        size = max(4096, size // 4096 * 4096)
        subprocess.run(["mount", "-o", f"remount,size={size}", "tmpfs", str(self.path)],
                       check=True, capture_output=True)

    def free(self) -> int:
        return shutil.disk_usage(self.path).free

    def leave_free(self, size: int) -> None:
        """Make the file system hold what it holds now plus `size` bytes."""
        self.resize(shutil.disk_usage(self.path).used + size)


@pytest.fixture()
def small_disk(tmp_path):
    path = tmp_path / "small"
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root (the patched-write test in "
                    "tests/test_lock.py covers a full disk without it)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def allocated(root: Path) -> int:
    """Bytes the files under `root` take on their file system (whole pages on a tmpfs)."""
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def one_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    message = errors[0]
    assert " free there, and a build here needs about " in message, message
    assert message.count(". ") == 0, "one sentence"
    return message


@pytest.mark.slow
def test_a_full_disk_while_writing_the_demo_checkpoints(small_disk, prompts):
    small_disk.resize(20_000_000)  # a demo checkpoint takes more
    root = small_disk.path / "build"
    result = CliRunner().invoke(main, ["compute", "--demo", "--prompts", str(prompts),
                                       "--build-dir", str(root), "--device", "cpu"])
    message = one_error(result)
    assert message.startswith("Error: No space left on device while writing the demo "
                              "checkpoints") and str(root / "demo-models") in message, message
    assert "(170.0 MB in all)" in message
    assert list((root / "demo-models").iterdir()) == [], "a half-written checkpoint was left"


@pytest.mark.slow
def test_a_full_disk_while_writing_the_artifacts(small_disk, prompts, demo_dirs):
    root = _linked_root(small_disk.path / "build", demo_dirs)
    small_disk.leave_free(100_000)  # an artifact or two of the six
    result = _compute(root, prompts)
    message = one_error(result)
    assert message.startswith(f"Error: No space left on device while writing the artifacts "
                              f"({root / 'artifacts'}"), message
    found = assert_artifacts_valid(root)  # whatever was written is whole
    assert len(found) < TOTAL
    assert not list((root / "artifacts").rglob(".*.tmp")), "a temporary file was left"


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["pages", "site"])
def test_a_full_disk_in_render_leaves_the_site_as_it_was(monkeypatch, small_disk, reference,
                                                         prompts, stage):
    """The last build's tree on a small disk; the next render runs out of room while writing the
    docs tree (the disk holds less than another one) or the site (room for another docs tree;
    then, as mkdocs starts, less than its pages take): the docs and site stay, nothing
    half-written is left."""
    import generator.site
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    root = _copy_build(reference, small_disk.path / "build")
    docs = allocated(root / "docs")
    before = {part: tree_digest(root / part) for part in ("docs", "site")}
    free = {}
    if stage == "pages":
        small_disk.leave_free(docs // 2)
    else:
        # The site's data files are hard links to the docs tree's (generator/mkdocs_hooks.py):
        # what it needs of its own is its pages and the theme. The disk fills as mkdocs starts.
        small_disk.leave_free(docs * 2)
        real = generator.site.build_site

        def filled(*a, **k):
            pages = sum(p.stat().st_size for p in (root / "docs").rglob("*.md"))
            small_disk.leave_free(pages // 4)
            free["start"] = small_disk.free()
            return real(*a, **k)

        monkeypatch.setattr(generator.site, "build_site", filled)
    free.setdefault("start", small_disk.free())  # when the failing stage starts
    message = one_error(_render(root, prompts))
    if stage == "pages":
        assert message.startswith("Error: No space left on device while writing the generated "
                                  "pages") and str(root / "docs") in message, message
        assert tree_digest(root / "docs") == before["docs"]
    else:
        assert message.startswith(f"Error: No space left on device while writing the site "
                                  f"({root}/.site."), message
    assert tree_digest(root / "site") == before["site"]
    assert not (root / "docs.tmp").exists() and not list(root.glob(".site.*"))
    assert small_disk.free() >= free["start"] - 64 * 1024, "the failed render kept space"


# --- failures inside compute (in-process, monkeypatched) --------------------------------------


def _compute(root: Path, prompts: Path, command: str = "compute"):
    args = [command, "--demo", "--prompts", str(prompts), "--build-dir", str(root),
            "--device", "cpu"]
    if command == "build":
        args += ["--out", str(root / "site")]
    return CliRunner().invoke(main, args)


def _linked_root(path: Path, demo_dirs: list[Path]) -> Path:
    path.mkdir(parents=True)
    (path / "demo-models").symlink_to(demo_dirs[0].parent, target_is_directory=True)
    return path


@pytest.mark.slow
def test_a_failing_prompt_fails_alone(monkeypatch, prompts, demo_dirs, tmp_path):
    """run_batch raises for batches holding the 'cat' prompt: that prompt fails, for both models,
    with the error; the other prompts of the same batch are split off, computed and kept."""
    import generator.compute
    from transformers import AutoTokenizer

    from generator.tokens import describe_tokens
    bad = [describe_tokens(AutoTokenizer.from_pretrained(d), "The cat sat on the mat.")[0]
           for d in demo_dirs]
    real = generator.compute.run_batch
    sizes = []

    def flaky(model, seqs, *args, **kwargs):
        sizes.append(len(seqs))
        if any(ids[:len(b)] == b for ids in seqs for b in bad):
            raise RuntimeError("simulated failure in the forward pass")
        return real(model, seqs, *args, **kwargs)

    monkeypatch.setattr(generator.compute, "run_batch", flaky)
    root = _linked_root(tmp_path / "build", demo_dirs)
    result = _compute(root, prompts)
    assert result.exit_code == 1, result.output
    assert "2 unit(s) failed; the 4 other artifacts are kept" in result.output
    for slug in SLUGS:
        assert f"faults/cat ({slug}): RuntimeError: simulated failure in the forward pass" \
            in result.output
        assert not (root / "artifacts" / slug / "faults" / "cat.json").exists()
        assert not (root / "artifacts" / slug / "faults" / "cat.attention.bin").exists()
        for pid in ("hello", "count"):
            read_artifact(root / "artifacts" / slug / "faults" / f"{pid}.json")
    assert max(sizes) == 3, "the three prompts should first run as one batch"
    assert "RuntimeError on a batch of 3; retrying as 1 + 2" in result.output
    assert "faults/hello (" not in result.output and "faults/count (" not in result.output


@pytest.mark.slow
def test_out_of_memory_batches_are_split_and_retried(monkeypatch, reference, prompts, demo_dirs,
                                                     tmp_path):
    import torch

    import generator.compute
    real = generator.compute.run_batch
    sizes = []

    def small_memory(model, seqs, *args, **kwargs):
        sizes.append(len(seqs))
        if len(seqs) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, seqs, *args, **kwargs)

    monkeypatch.setattr(generator.compute, "run_batch", small_memory)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    root = _linked_root(tmp_path / "build", demo_dirs)
    result = _compute(root, prompts, "build")
    assert result.exit_code == 0, result.output
    assert "out of memory on a batch of 3; retrying as 1 + 2" in result.output
    assert "out of memory on a batch of 2; retrying as 1 + 1" in result.output
    assert f"compute: {TOTAL} computed, 0 reused, 0 failed" in result.output
    assert sizes.count(1) == TOTAL
    assert (root / "site" / "index.html").is_file()
    for path in assert_artifacts_valid(root):
        # One prompt at a time gives the batched reference build's tokens and, up to float
        # rounding (matrix shapes differ), its numbers.
        ours = json.loads(path.read_text(encoding="utf-8"))
        ref = json.loads((reference / path.relative_to(root)).read_text(encoding="utf-8"))
        assert ours["key"] == ref["key"] and ours["tokens"] == ref["tokens"], path
        assert np.allclose(ours["predictions"]["probs"], ref["predictions"]["probs"], atol=1e-3)


def test_missing_tokenizer_files_fail_that_model(prompts, demo_dirs, tmp_path):
    broken = tmp_path / "broken-gpt2"
    shutil.copytree(demo_dirs[0], broken)
    removed = [f.name for f in broken.iterdir()
               if f.name.startswith(("tokenizer", "vocab", "merges", "special_tokens"))]
    assert "tokenizer.json" in removed
    for name in removed:
        (broken / name).unlink()
    root = tmp_path / "build"
    result = CliRunner().invoke(main, ["compute", "--model", str(broken), "--prompts", str(prompts),
                                       "--build-dir", str(root), "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "--model broken-gpt2: its tokenizer is empty" in result.output
    assert "tokenizer.json" in result.output and str(broken) in result.output
    assert "tokenizer.save_pretrained()" in result.output
    assert not artifacts(root)


# --- the CI workflow -------------------------------------------------------------------------


def _steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def _uses(job: dict, action: str) -> list[dict]:
    return [s for s in _steps(job) if str(s.get("uses", "")).startswith(action + "@")]


def test_workflow_parses():
    wf = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as True
    shards = triggers["workflow_dispatch"]["inputs"]["shards"]
    assert str(shards["default"]) == "1"
    jobs = wf["jobs"]
    assert {"compute", "render", "deploy"} <= set(jobs)

    # The switch: every job runs only when the repository variable says there is a GPU runner.
    for name, job in jobs.items():
        assert "vars.MODEL_ATLAS_GPU == 'true'" in job.get("if", ""), f"job {name} lacks the switch"
    header = WORKFLOW.read_text(encoding="utf-8").split("\nname:")[0]
    assert "MODEL_ATLAS_GPU" in header and "fork" in header.lower()

    compute = jobs["compute"]
    assert "vars.MODEL_ATLAS_RUNNER" in compute["runs-on"] and "ubuntu-latest" in compute["runs-on"]
    assert "matrix.shard" in json.dumps(compute["strategy"]["matrix"]) or \
        "shard" in compute["strategy"]["matrix"]
    runs = "\n".join(s.get("run", "") for s in _steps(compute))
    assert "model-atlas compute" in runs and '--shard "$SHARD"' in runs
    assert "${{ matrix.shard }}/" in compute["env"]["SHARD"]

    caches = [s for s in _steps(compute) if str(s.get("uses", "")).startswith("actions/cache")]
    paths = {s["with"]["path"]: s for s in caches}
    assert "~/.cache/huggingface" in paths and "build/artifacts" in paths
    art = paths["build/artifacts"]["with"]
    assert "hashFiles('prompt_sets/**', 'pyproject.toml')" in art["key"]
    assert art["restore-keys"].strip(), "restore-keys let a changed prompt set reuse old artifacts"
    assert paths["~/.cache/huggingface"]["with"]["restore-keys"].strip()
    assert _uses(compute, "actions/upload-artifact")

    render = jobs["render"]
    assert render["needs"] == "compute" or "compute" in render["needs"]
    download = _uses(render, "actions/download-artifact")[0]["with"]
    assert download["path"] == "build/artifacts" and download["merge-multiple"] is True
    assert any("model-atlas render" in s.get("run", "") for s in _steps(render))
    saves = [s for s in _steps(render) if str(s.get("uses", "")).startswith("actions/cache")]
    assert saves and saves[0]["with"]["path"] == "build/artifacts"
    assert _uses(render, "actions/upload-pages-artifact")[0]["with"]["path"] == "site"

    deploy = jobs["deploy"]
    assert _uses(deploy, "actions/deploy-pages")
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    assert wf["permissions"] == {}  # each job names its own (test_workflow.py)


def test_readme_documents_building_in_ci():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "## Building in CI" in readme
    section = readme.split("## Building in CI", 1)[1]
    for needle in ("MODEL_ATLAS_GPU", "~/.cache/huggingface", "build/artifacts",
                   "model-atlas compute --shard", "model-atlas render", "GitLab"):
        assert needle in section, needle


# --- shards ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_shards_compute_disjoint_shares_that_combine_into_one_site(reference, prompts, demo_dirs,
                                                                    tmp_path):
    """Two runners (--shard 1/2 and 2/2) each compute only their share; gathered into one
    artifacts directory the shares do not overlap, cover every prompt, and render the site."""
    from generator.compute import Shard
    from generator.prompts import load_prompt_sets
    every = [p for s in load_prompt_sets([prompts]) for p in s.prompts]
    gathered = _linked_root(tmp_path / "gathered", demo_dirs)
    seen: dict[str, str] = {}
    for k in (1, 2):
        root = _linked_root(tmp_path / f"runner{k}", demo_dirs)
        result = CliRunner().invoke(main, ["compute", "--demo", "--prompts", str(prompts),
                                           "--build-dir", str(root), "--device", "cpu",
                                           "--shard", f"{k}/2"])
        assert result.exit_code == 0, result.output
        share = {p.id for p in Shard(k, 2).take(every)}
        # Every shard also saves each model's tokenizer (the tokenize page's) and its OV circuits
        # (for the source tokens of every prompt, not only its share's): the same bytes.
        for slug in SLUGS:
            for where in (layout.tokenizer_artifact, layout.ov_path):
                saved, copy = where(root / "artifacts", slug), where(gathered / "artifacts", slug)
                if copy.is_file():
                    assert copy.read_bytes() == saved.read_bytes(), f"shards wrote two {saved}"
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(saved, copy)
        files = sorted(f.relative_to(root / "artifacts") for f in (root / "artifacts").rglob("*")
                       if f.is_file())
        assert {f.name.split(".", 1)[0] for f in files} == share, (k, files)
        assert len(files) == 2 * len(share) * len(SLUGS)  # JSON + attention file per model
        for f in files:
            assert str(f) not in seen, f"{f} computed by shard {seen.get(str(f))} and {k}"
            seen[str(f)] = str(k)
            (gathered / "artifacts" / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / "artifacts" / f, gathered / "artifacts" / f)
    assert len(seen) == 2 * TOTAL
    result = CliRunner().invoke(main, ["render", "--demo", "--prompts", str(prompts),
                                       "--build-dir", str(gathered), "--out",
                                       str(gathered / "site")])
    assert result.exit_code == 0, result.output
    assert sorted(tree_digest(gathered / "site")) == sorted(tree_digest(reference / "site"))
    # The gathered OV circuits are those of an unsharded build (they come from the weights and
    # every prompt's text, not from the batches), so the head pages show the same circuits.
    for slug in SLUGS:
        ours = layout.ov_path(gathered / "artifacts", slug)
        assert ours.read_bytes() == layout.ov_path(reference / "artifacts", slug).read_bytes()
    for path in assert_artifacts_valid(gathered):
        ref = read_artifact(reference / path.relative_to(gathered))
        ours = read_artifact(path)
        assert ours["key"] == ref["key"] and ours["tokens"] == ref["tokens"]


def test_workflow_keeps_only_its_shards_artifacts(tmp_path):
    """The workflow's "Keep only this shard's artifacts" script, run as the workflow runs it on a
    restored cache holding every prompt's JSON and attention file: only this shard's remain."""
    from generator.compute import Shard
    from generator.prompts import default_prompt_dir, load_prompt_sets
    wf = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    step = next(s for s in wf["jobs"]["compute"]["steps"]
                if s.get("name") == "Keep only this shard's artifacts")
    script = step["run"].split("<<'PY'\n", 1)[1].rsplit("PY", 1)[0]
    every = [p for s in load_prompt_sets([default_prompt_dir()]) for p in s.prompts]
    for slug in ("gpt2", "qwen2.5-0.5b"):
        for p in every:
            d = tmp_path / "build" / "artifacts" / slug / p.set_id
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{p.id}.json").write_text("{}")
            (d / f"{p.id}.attention.bin").write_bytes(b"\0")
    env = dict(ENV, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-", "2/3"], input=script, text=True, cwd=tmp_path,
                          env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    share = {f"{p.set_id}/{p.id}" for p in Shard(2, 3).take(every)}
    left = sorted(f.relative_to(tmp_path / "build" / "artifacts")
                  for f in (tmp_path / "build" / "artifacts").rglob("*") if f.is_file())
    expected = sorted(Path(slug) / f"{key}{suffix}" for slug in ("gpt2", "qwen2.5-0.5b")
                      for key in share for suffix in (".json", ".attention.bin"))
    assert left == expected
    assert f"shard 2/3: {2 * len(share)} artifacts kept" in proc.stdout
