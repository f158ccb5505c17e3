"""Shared, session-scoped fixtures of the test suite.

Expensive things are made once per session and shared by every test file:

- `demo_dirs`: the offline demo's two tiny checkpoints with constructed weights (GPT-2 and Qwen2
  architectures, real tokenizers), checked to be tiny and the Qwen2 one to use grouped-query attention;
- `gpt2_model` / `qwen2_model`: those checkpoints loaded on the CPU in float32, exactly as the compute
  stage loads them;
- `demo_build`: one `model-atlas build --demo` through click's CliRunner, on a small prompt subset
  that includes a hostile prompt (HTML, an ampersand, quotes, Jinja braces) and a Chinese + emoji one;
  it also records `git status` and the `site_src/` tree before and after, for the tests that check a
  build writes nothing into the checkout;
- `demo_site_full`: the same build with the default curated `prompt_sets/`, for the one test that
  checks every page of the real site exists.

Both builds get a copy of `demo_dirs` as their `demo-models/`, so the checkpoints are built once.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import itertools
import json
import shutil
import subprocess
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")

HOSTILE_TEXT = '<script>alert(1)</script> & "quotes" {{ jinja }}'
CJK_EMOJI_TEXT = "巴黎是法国的首都。🙂🇫🇷 Paris 巴"

# The small prompt subset of `demo_build`: two sets, five prompts of different lengths.
SUBSET = {
    "basics": {
        "title": "Basics",
        "description": "Small prompts for the test suite.",
        "prompts": [
            {"id": "hello", "text": "Hello world", "note": "Two tokens."},
            {"id": "hostile", "text": HOSTILE_TEXT,
             "note": "Must show literally: <b>not bold</b> & {{ not jinja }}."},
            {"id": "repeat", "text": "The cat sat on the mat. The cat sat on the",
             "note": "An induction pattern."},
        ],
    },
    "mixed": {
        "title": "Mixed scripts",
        "description": "Chinese, emoji and code.",
        "prompts": [
            {"id": "cjk-emoji", "text": CJK_EMOJI_TEXT, "note": "Partial UTF-8 pieces."},
            {"id": "code", "text": "def f(x):\n    return x + 1\n", "note": "Indentation."},
        ],
    },
}

MAX_DEMO_PARAMETERS = 20_000_000


def pytest_collection_modifyitems(config, items):
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(reason=f"{CHROMIUM} is not installed: the browser tests need headless "
                                   f"Chromium (Debian package 'chromium').")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


def write_prompt_sets(directory: Path, sets: dict = SUBSET) -> Path:
    """Write `sets` as prompt-set YAML files (`<set-id>.yaml`) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    for set_id, content in sets.items():
        (directory / f"{set_id}.yaml").write_text(
            yaml.safe_dump(content, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return directory


def _safetensors_parameters(directory: Path) -> int:
    """Number of stored parameters, read from the safetensors headers (no weights loaded)."""
    total = 0
    files = sorted(directory.glob("*.safetensors"))
    assert files, f"{directory}: no safetensors weights"
    for f in files:
        with open(f, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                n = 1
                for d in entry["shape"]:
                    n *= d
                total += n
    return total


@pytest.fixture(scope="session")
def scratch():
    """mkdir(name) -> a fresh directory for the session's shared files.

    Not pytest's tmp_path_factory: pytest deletes all but the 3 newest of its base directories when
    a session starts, so on a machine where several people run pytest at once a long session would
    lose its build (and a served site its files) midway. Removed when the session ends.
    """
    root = Path(tempfile.mkdtemp(prefix="model-atlas-tests-"))
    counter = itertools.count()

    def mkdir(name: str) -> Path:
        path = root / f"{name}{next(counter)}"
        path.mkdir()
        return path

    yield mkdir
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_root(scratch) -> Path:
    return scratch("demo-models")


@pytest.fixture(scope="session")
def demo_dirs(demo_root) -> list[Path]:
    """[gpt2_dir, qwen2_dir]: the demo checkpoints, built once per session."""
    from generator.demo import ensure_demo_models

    dirs = ensure_demo_models(demo_root)
    assert [d.name for d in dirs] == ["tiny-random-gpt2", "tiny-random-qwen2"]
    for d in dirs:
        params = _safetensors_parameters(d)
        assert params < MAX_DEMO_PARAMETERS, f"{d.name} has {params:,} parameters: not tiny"
        marker = json.loads((d / "model_atlas_demo.json").read_text())
        assert marker["random_weights"] is True
    qwen = json.loads((dirs[1] / "config.json").read_text())
    assert qwen["model_type"] == "qwen2"
    assert qwen["num_key_value_heads"] < qwen["num_attention_heads"], \
        "the Qwen2 demo model must use grouped-query attention"
    return dirs


def _load(path: Path):
    import torch

    from generator.models import load_model, resolve_model
    return load_model(resolve_model(str(path)), "cpu", torch.float32)


@pytest.fixture(scope="session")
def gpt2_model(demo_dirs):
    """generator.models.LoadedModel of the tiny GPT-2, cpu, float32."""
    return _load(demo_dirs[0])


@pytest.fixture(scope="session")
def qwen2_model(demo_dirs):
    """generator.models.LoadedModel of the tiny Qwen2, cpu, float32."""
    lm = _load(demo_dirs[1])
    assert lm.facts["kv_heads"] < lm.facts["query_heads"]
    return lm


def git_status() -> list[str]:
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return sorted(line for line in out.splitlines() if line.strip())


def tree_digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `root`."""
    if not root.is_dir():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_head_file(path: Path) -> dict:
    """One per-head attention file of a built site (generator/layout.py attention_head): gzipped
    JSON."""
    return json.loads(gzip.decompress(path.read_bytes()).decode("utf-8"))


@dataclass
class Build:
    """One `model-atlas build --demo` run."""
    root: Path            # --build-dir
    site: Path            # --out
    prompts: Path | None  # --prompts (None: the curated sets)
    output: str           # what the command printed
    seconds: float
    exit_code: int
    git_before: list[str]
    git_after: list[str]
    site_src_before: dict[str, str]
    site_src_after: dict[str, str]


def _traceback(result) -> str:
    """The traceback of an unexpected exception inside a CliRunner invocation, if any."""
    if result.exc_info is None or isinstance(result.exception, SystemExit):
        return ""
    return "\n" + "".join(traceback.format_exception(*result.exc_info))


def run_demo_build(root: Path, demo_dirs: list[Path], prompts: Path | None) -> Build:
    from click.testing import CliRunner

    from generator.cli import main

    # Reuse the session's demo checkpoints (ensure_demo_models keeps current ones).
    for d in demo_dirs:
        shutil.copytree(d, root / "demo-models" / d.name)
    args = ["build", "--demo", "--build-dir", str(root), "--out", str(root / "site")]
    if prompts is not None:
        args += ["--prompts", str(prompts)]
    git_before, src_before = git_status(), tree_digest(REPO / "site_src")
    t0 = time.perf_counter()
    result = CliRunner().invoke(main, args)
    seconds = time.perf_counter() - t0
    build = Build(root, root / "site", prompts, result.output, seconds, result.exit_code,
                  git_before, git_status(), src_before, tree_digest(REPO / "site_src"))
    assert result.exit_code == 0, result.output + _traceback(result)
    return build


@pytest.fixture(scope="session")
def demo_build(scratch, demo_dirs) -> Build:
    """`model-atlas build --demo` on the small SUBSET of prompts."""
    root = scratch("demo-build")
    prompts = write_prompt_sets(root / "prompt-sets")
    return run_demo_build(root, demo_dirs, prompts)


@pytest.fixture(scope="session")
def demo_site_full(scratch, demo_dirs) -> Build:
    """`model-atlas build --demo` on the default curated prompt sets."""
    root = scratch("demo-full")
    return run_demo_build(root, demo_dirs, None)


# --- serving built sites and opening them in headless Chromium ---------------------------------

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """`model-atlas serve`'s handler (http.server's), without its request log."""

    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


@contextlib.contextmanager
def serve_directory(root: Path, handler_class: type = QuietHandler):
    """Serve `root` on 127.0.0.1 (a free port) for the duration; yields the base URL."""
    handler = functools.partial(handler_class, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium (Debian's) for the whole session."""
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


# --- small inputs and an unreachable hub, for CLI and error tests -------------------------------

TINY = {"tiny": {"title": "Tiny", "description": "One prompt.",
                 "prompts": [{"id": "hello", "text": "Hello world", "note": "Two tokens."}]}}


@pytest.fixture()
def tiny_prompts(tmp_path) -> Path:
    return write_prompt_sets(tmp_path / "prompts", TINY)


@pytest.fixture()
def hub_unreachable(monkeypatch, tmp_path):
    """No network and an empty Hugging Face cache; returns the list of reachability checks."""
    import huggingface_hub.constants

    import generator.models
    calls = []

    def unreachable(*args, **kwargs):
        calls.append(args)
        return False

    monkeypatch.setattr(generator.models, "_hub_reachable", unreachable)
    home = tmp_path / "hf-home"
    (home / "hub").mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    # huggingface_hub reads HF_HOME when it is imported: point its constant at the empty cache too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    return calls
