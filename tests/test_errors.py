"""Bad input gives a clear error and loses nothing: prompt sets, models, artifacts and options,
each through the `model-atlas` command line (click's CliRunner), one test per case.

The library-level checks of prompt-set files live in tests/test_prompts.py; here the same mistakes
go through the CLI, which must print the file, the line or field and the fix in one line, without a
traceback and before any work is done. Cases that need a model use the offline demo's tiny
random-weight checkpoints (512 positions), shared with the rest of the session through the
`demo_dirs` fixture of tests/conftest.py.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from generator.cli import main
from generator.schema import decode_attention, read_artifact

from conftest import write_prompt_sets

SLUGS = ("tiny-random-gpt2", "tiny-random-qwen2")
SMALL = {"errs": {"title": "Errors", "description": "Two short prompts.",
                  "prompts": [{"id": "hello", "text": "Hello world", "note": "Two tokens."},
                              {"id": "cat", "text": "The cat sat", "note": "Three tokens."}]}}
GOOD_YAML = ('title: T\ndescription: D\nprompts:\n  - id: a\n    text: "Hello"\n    note: n\n'
             '  - id: b\n    text: "World"\n    note: n\n')


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean_failure(result, *fragments: str) -> None:
    """A one-line error (no traceback) that contains every fragment."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"unexpected exception {result.exception!r}\n{result.output}"
    for fragment in fragments:
        assert fragment in result.output, f"{fragment!r} not in:\n{result.output}"


def new_build_dir(path: Path, demo_dirs: list[Path]) -> Path:
    """A build dir whose demo-models/ is the session's demo checkpoints (no rebuild)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "demo-models").symlink_to(demo_dirs[0].parent, target_is_directory=True)
    return path


def json_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.json")) if root.is_dir() else []




@pytest.fixture(scope="module")
def computed(tmp_path_factory, demo_dirs):
    """`model-atlas compute --demo` of SMALL: (build dir, prompts dir). Tests copy it, never edit it."""
    root = tmp_path_factory.mktemp("errors-computed")
    prompts = write_prompt_sets(root / "prompts", SMALL)
    build = new_build_dir(root / "build", demo_dirs)
    result = invoke("compute", "--demo", "--prompts", prompts, "--build-dir", build,
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert len(json_files(build / "artifacts")) == 4
    return build, prompts


def copy_build(computed, tmp_path: Path, demo_dirs: list[Path]) -> Path:
    build, _ = computed
    dest = new_build_dir(tmp_path / "build", demo_dirs)
    shutil.copytree(build / "artifacts", dest / "artifacts")
    return dest


def edit(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


# --- prompt sets, through the CLI ------------------------------------------------------------

PROMPT_SET_CASES = {
    # name: (file content, fragments the message must contain)
    "malformed-yaml": ('title: T\ndescription: D\nprompts:\n  - id: a\n    text: "unclosed\n',
                       [":6:", "(YAML syntax): not valid YAML", "Fix: correct the YAML"]),
    "unknown-field": (GOOD_YAML.replace("    note: n\n  - id: b", "    note: n\n    author: me\n"
                                        "  - id: b", 1),
                      [":7:", "prompts[0].author: unknown field 'author'", "Fix: remove it"]),
    "duplicate-id": (GOOD_YAML.replace("id: b", "id: a"),
                     [":7:", "prompts[1].id: duplicate prompt id 'a'",
                      "Fix: give each prompt in the set its own id"]),
    "empty-text": (GOOD_YAML.replace('text: "World"', 'text: "  "'),
                   [":8:", "prompts[1].text: text is empty or only whitespace",
                    "Fix: write the prompt text"]),
    "no-prompts": ("title: T\ndescription: D\nprompts: []\n",
                   ["prompts: the set has no prompts", "Fix: add at least one prompt"]),
    "non-utf8": ("title: Caf\xe9\ndescription: D\n".encode("latin-1"),
                 [":1:", "(encoding): not valid UTF-8: byte 0xe9", "Fix: save the file as UTF-8"]),
}


@pytest.mark.parametrize("case", list(PROMPT_SET_CASES))
def test_bad_prompt_set_fails_before_any_work(case, tmp_path):
    content, fragments = PROMPT_SET_CASES[case]
    path = tmp_path / "prompts" / "bad-set.yaml"
    path.parent.mkdir()
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    build = tmp_path / "build"
    t0 = time.perf_counter()
    result = invoke("build", "--demo", "--prompts", path.parent, "--build-dir", build,
                    "--out", tmp_path / "site")
    assert_clean_failure(result, "bad-set.yaml", *fragments)
    assert time.perf_counter() - t0 < 5, "a bad prompt set must fail before models are built"
    assert not build.exists() and not (tmp_path / "site").exists()


def test_prompt_longer_than_the_context_fails_alone(tmp_path, demo_dirs):
    """The demo models have 4,096 positions: the long prompt fails naming itself and field 'text';
    the short prompt's artifacts are written for both models."""
    long_text = "a " * 4200  # 4,200 tokens for both tokenizers, under the 20,000-character limit
    sets = {"ctx": {"title": "Context", "description": "One too long.",
                    "prompts": [{"id": "short", "text": "Hello world", "note": "Fits."},
                                {"id": "too-long", "text": long_text, "note": "Does not fit."}]}}
    prompts = write_prompt_sets(tmp_path / "prompts", sets)
    build = new_build_dir(tmp_path / "build", demo_dirs)
    result = invoke("compute", "--demo", "--prompts", prompts, "--build-dir", build,
                    "--device", "cpu")
    assert_clean_failure(result, "2 unit(s) failed; the 2 other artifacts are kept",
                         "ctx/too-long (tiny-random-gpt2)", "ctx/too-long (tiny-random-qwen2)",
                         "longer than the model's context of 4096", "shorten field 'text'")
    assert "ctx/short (" not in result.output.split("failed;")[-1]
    for slug in SLUGS:
        read_artifact(build / "artifacts" / slug / "ctx" / "short.json")
        assert not (build / "artifacts" / slug / "ctx" / "too-long.json").exists()


# --- models ----------------------------------------------------------------------------------


def test_unknown_hub_id_offline_fails_fast_naming_demo(hub_unreachable, tiny_prompts, tmp_path):
    t0 = time.perf_counter()
    result = invoke("compute", "--model", "nobody-here/no-such-model", "--prompts", tiny_prompts,
                    "--build-dir", tmp_path / "b", "--device", "cpu")
    assert time.perf_counter() - t0 < 5
    assert_clean_failure(result, "'nobody-here/no-such-model'", "unreachable",
                         "not in the local cache", "model-atlas build --demo")
    assert hub_unreachable, "the hub check was not consulted"
    assert not json_files(tmp_path / "b")


def test_no_network_and_no_cached_weights_fails_fast(monkeypatch, tiny_prompts, tmp_path):
    """The real check, not a stub: HF_HUB_OFFLINE=1 and an empty cache."""
    import huggingface_hub.constants
    home = tmp_path / "hf-home"
    (home / "hub").mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    t0 = time.perf_counter()
    result = invoke("build", "--model", "gpt2", "--prompts", tiny_prompts,
                    "--build-dir", tmp_path / "b", "--out", tmp_path / "site", "--device", "cpu")
    assert time.perf_counter() - t0 < 5
    assert_clean_failure(result, "Cannot get the weights of 'gpt2'", "not in the local cache",
                         "HF_HOME", "--demo")
    assert not (tmp_path / "site").exists()


def test_local_checkpoint_without_weights(tiny_prompts, tmp_path, demo_dirs):
    ckpt = tmp_path / "no-weights"
    ckpt.mkdir()
    shutil.copy(demo_dirs[0] / "config.json", ckpt / "config.json")
    result = invoke("compute", "--model", ckpt, "--prompts", tiny_prompts,
                    "--build-dir", tmp_path / "b", "--device", "cpu")
    assert_clean_failure(result, str(ckpt), "no weights (*.safetensors or *.bin)",
                         "save_pretrained()")
    assert not json_files(tmp_path / "b")


def _save_bert(dest: Path) -> None:
    from transformers import BertConfig, BertModel
    BertModel(BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(dest)


def _save_t5_encoder(dest: Path) -> None:
    from transformers import T5Config, T5EncoderModel
    T5EncoderModel(T5Config(vocab_size=1000, d_model=32, d_kv=16, d_ff=64, num_layers=2,
                            num_heads=2)).save_pretrained(dest)


@pytest.mark.parametrize("save, kind", [(_save_bert, "bert"), (_save_t5_encoder, "t5")],
                         ids=["bert", "t5-encoder"])
def test_model_that_is_not_a_causal_lm(save, kind, tiny_prompts, tmp_path, demo_dirs):
    ckpt = tmp_path / f"tiny-{kind}"
    save(ckpt)
    for f in demo_dirs[0].glob("tokenizer*"):  # a working tokenizer, so only the model is wrong
        shutil.copy(f, ckpt / f.name)
    result = invoke("compute", "--model", ckpt, "--prompts", tiny_prompts,
                    "--build-dir", tmp_path / "b", "--device", "cpu")
    assert_clean_failure(result, f"--model tiny-{kind}: not a causal language model",
                         f"({kind}) is an encoder", "Use a decoder-only causal LM")
    assert len(result.output) < 2000, "the message must stay short"
    assert not json_files(tmp_path / "b" / "artifacts")


def test_model_loaded_without_eager_attention_is_refused(monkeypatch, tiny_prompts, tmp_path,
                                                         demo_dirs):
    """If transformers ignored attn_implementation='eager', attention could not be captured."""
    from transformers import AutoModelForCausalLM
    original = AutoModelForCausalLM.from_pretrained

    def sdpa(*args, **kwargs):
        model = original(*args, **kwargs)
        model.config._attn_implementation = "sdpa"
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", sdpa)
    result = invoke("compute", "--model", demo_dirs[0], "--prompts", tiny_prompts,
                    "--build-dir", tmp_path / "b", "--device", "cpu")
    assert_clean_failure(result, "--model tiny-random-gpt2: attention cannot be captured",
                         "'sdpa', not 'eager'")
    assert not json_files(tmp_path / "b" / "artifacts")


def test_model_that_returns_no_attentions_fails_its_prompts(monkeypatch, tiny_prompts, tmp_path,
                                                             demo_dirs):
    from transformers import AutoModelForCausalLM
    original = AutoModelForCausalLM.from_pretrained

    def no_attentions(*args, **kwargs):
        model = original(*args, **kwargs)
        forward = model.forward

        def patched(*a, **kw):
            out = forward(*a, **kw)
            out.attentions = None
            return out

        model.forward = patched
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_attentions)
    result = invoke("compute", "--model", demo_dirs[0], "--prompts", tiny_prompts,
                    "--build-dir", tmp_path / "b", "--device", "cpu")
    assert_clean_failure(result, "1 unit(s) failed", "tiny/hello (tiny-random-gpt2)",
                         "the model returned no attention maps")
    assert not json_files(tmp_path / "b" / "artifacts")


# --- artifacts -------------------------------------------------------------------------------


def _render(build: Path, prompts: Path, out: Path):
    return invoke("render", "--demo", "--prompts", prompts, "--build-dir", build, "--out", out)


def test_render_of_the_intact_copy_works(computed, tmp_path, demo_dirs):
    """The baseline of the artifact cases below: the unedited copy renders."""
    build = copy_build(computed, tmp_path, demo_dirs)
    result = _render(build, computed[1], tmp_path / "site")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "site" / "index.html").is_file()


def test_truncated_artifact(computed, tmp_path, demo_dirs):
    build = copy_build(computed, tmp_path, demo_dirs)
    path = build / "artifacts" / SLUGS[0] / "errs" / "cat.json"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    result = _render(build, computed[1], tmp_path / "site")
    assert_clean_failure(result, str(path), "not valid JSON", "truncated or was edited",
                         "Delete it and run `model-atlas compute`")
    assert not (tmp_path / "site").exists()


@pytest.mark.parametrize("change, fragments", [
    (lambda a: a["tokens"][0].__setitem__("id", "seven"),
     ["invalid field tokens/0/id", "'seven' is not of type 'integer'"]),
    (lambda a: a["predictions"]["probs"].pop(),
     ["predictions.probs has"]),
    (lambda a: a["predictions"]["probs"][0].pop(),
     ["predictions.probs rows must have k=10 entries"]),
    (lambda a: a.pop("attention"),
     ["invalid field (top level)", "'attention' is a required property"]),
], ids=["wrong-type", "probs-too-short", "probs-row-too-short", "missing-field"])
def test_hand_edited_artifact(computed, tmp_path, demo_dirs, change, fragments):
    build = copy_build(computed, tmp_path, demo_dirs)
    path = build / "artifacts" / SLUGS[1] / "errs" / "hello.json"
    edit(path, change)
    result = _render(build, computed[1], tmp_path / "site")
    assert_clean_failure(result, str(path), *fragments, "run `model-atlas compute`")
    assert not (tmp_path / "site").exists()


@pytest.mark.parametrize("damage, fragments", [
    (lambda p: p.unlink(), ["its attention file cat.attention.bin is missing"]),
    (lambda p: p.write_bytes(p.read_bytes()[:-1]), ["bytes that do not match", "different builds"]),
    (lambda p: p.write_bytes(bytes([p.read_bytes()[0] ^ 1]) + p.read_bytes()[1:]),
     ["bytes that do not match", "different builds"]),
], ids=["missing", "truncated", "flipped-byte"])
def test_damaged_attention_file(computed, tmp_path, demo_dirs, damage, fragments):
    """The attention beside an artifact must be the one its JSON records (size and SHA-256):
    render refuses the pair naming the file and the fix, and compute recomputes it."""
    build = copy_build(computed, tmp_path, demo_dirs)
    path = build / "artifacts" / SLUGS[0] / "errs" / "cat.attention.bin"
    damage(path)
    result = _render(build, computed[1], tmp_path / "site")
    assert_clean_failure(result, "cat", *fragments, "run `model-atlas compute`")
    assert not (tmp_path / "site").exists()
    result = invoke("compute", "--demo", "--prompts", computed[1], "--build-dir", build,
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "compute: 1 computed, 3 reused, 0 failed" in result.output
    # The same numbers as the first computation, in a batch of its own: float noise may move a
    # stored value by one step (1/128, or a float16 log-probability by one unit in the last place).
    new = read_artifact(path.with_name("cat.json"))
    old = read_artifact(computed[0] / "artifacts" / SLUGS[0] / "errs" / "cat.json")
    assert new["key"] == old["key"]
    for layer in range(old["attention"]["layers"]):
        diff = decode_attention(new, layer) - decode_attention(old, layer)
        assert np.abs(diff).max() <= 1 / 128
    for a, b in zip(new["lens"], old["lens"]):
        assert a["ids"] == b["ids"] and a["next_rank"] == b["next_rank"]
        np.testing.assert_allclose(np.array(a["probs"]), np.array(b["probs"]), rtol=5e-2,
                                   atol=1e-6)


def test_other_schema_version_render_says_how_to_recompute(computed, tmp_path, demo_dirs):
    build = copy_build(computed, tmp_path, demo_dirs)
    path = build / "artifacts" / SLUGS[0] / "errs" / "hello.json"
    edit(path, lambda a: a.__setitem__("schema_version", 0))
    result = _render(build, computed[1], tmp_path / "site")
    assert_clean_failure(result, str(path), "schema_version 0 is not the supported version",
                         "Recompute it with `model-atlas compute`")


def test_compute_recomputes_old_schema_and_damaged_artifacts(computed, tmp_path, demo_dirs):
    build = copy_build(computed, tmp_path, demo_dirs)
    old = build / "artifacts" / SLUGS[0] / "errs" / "hello.json"
    edit(old, lambda a: a.__setitem__("schema_version", 0))
    cut = build / "artifacts" / SLUGS[1] / "errs" / "cat.json"
    cut.write_bytes(cut.read_bytes()[:100])
    result = invoke("compute", "--demo", "--prompts", computed[1], "--build-dir", build,
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "compute: 2 computed, 2 reused, 0 failed" in result.output
    for path in json_files(build / "artifacts"):
        read_artifact(path)
    # The same artifact again; this time "hello" ran alone, not batched with "cat", so floats may
    # differ in their last stored digit (the demo predicts with confidence: p ~ 0.9 to 6 places).
    assert_same_up_to_float_noise(
        json.loads((build / "artifacts" / SLUGS[0] / "errs" / "hello.json").read_bytes()),
        json.loads((computed[0] / "artifacts" / SLUGS[0] / "errs" / "hello.json").read_bytes()))


def assert_same_up_to_float_noise(a, b, path: str = "") -> None:
    """Equal JSON, floats within 1e-4 (and every other value, every key and length, exactly)."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), path
        assert abs(a - b) <= 1e-4, (path, a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            assert_same_up_to_float_noise(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_up_to_float_noise(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def test_mixed_model_revisions_are_refused(computed, tmp_path, demo_dirs):
    build = copy_build(computed, tmp_path, demo_dirs)
    path = build / "artifacts" / SLUGS[0] / "errs" / "hello.json"
    edit(path, lambda a: a["provenance"].__setitem__("revision", "sha256:0123456789abcdef"))
    result = _render(build, computed[1], tmp_path / "site")
    assert_clean_failure(result, "Mixed revisions in one site",
                         "recompute with `model-atlas compute` for one revision",
                         "sha256:0123456789abcdef")
    assert not (tmp_path / "site").exists()


# --- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("args, fragments", [
    (["--shard", "3/2"], ["--shard 3/2: K must be between 1 and N (got K=3, N=2)"]),
    (["--top-k", "-1"], ["--top-k -1: must be between 1 and 100"]),
    (["--device", "quantum"], ["--device 'quantum' is not a device", "Valid: auto, cpu, cuda"]),
], ids=["shard", "top-k", "device"])
def test_bad_option_values(args, fragments, tiny_prompts, tmp_path, demo_dirs):
    t0 = time.perf_counter()
    result = invoke("build", "--model", demo_dirs[0], "--prompts", tiny_prompts,
                    "--build-dir", tmp_path / "b", "--out", tmp_path / "site", *args)
    assert_clean_failure(result, *fragments)
    assert time.perf_counter() - t0 < 5
    assert not json_files(tmp_path / "b") and not (tmp_path / "site").exists()


@pytest.mark.parametrize("command", ["compute", "render", "build"])
def test_build_dir_that_is_a_file(command, tiny_prompts, tmp_path):
    target = tmp_path / "build.txt"
    target.write_text("keep me")
    args = [command, "--demo", "--prompts", tiny_prompts, "--build-dir", target]
    if command != "compute":
        args += ["--out", tmp_path / "site"]
    t0 = time.perf_counter()
    result = invoke(*args)
    assert_clean_failure(result, "--build-dir", "is a file, not a directory")
    assert time.perf_counter() - t0 < 5, "must fail before any model is built"
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("command", ["render", "build"])
def test_out_that_is_a_file(command, tiny_prompts, tmp_path):
    target = tmp_path / "site.html"
    target.write_text("keep me")
    t0 = time.perf_counter()
    result = invoke(command, "--demo", "--prompts", tiny_prompts, "--build-dir", tmp_path / "b",
                    "--out", target)
    assert_clean_failure(result, "--out", "is a file, not a directory")
    assert time.perf_counter() - t0 < 5, "build must check --out before computing"
    assert target.read_text() == "keep me"
    assert not (tmp_path / "b" / "artifacts").exists()


def test_out_that_is_an_unrelated_directory_is_not_deleted(tiny_prompts, tmp_path):
    """A build replaces --out whole; a directory of other files must not be swept away."""
    target = tmp_path / "documents"
    target.mkdir()
    (target / "thesis.txt").write_text("years of work")
    result = invoke("build", "--demo", "--prompts", tiny_prompts, "--build-dir", tmp_path / "b",
                    "--out", target)
    assert_clean_failure(result, "--out", "not a built site (no index.html)",
                         "Give a new or empty directory")
    assert (target / "thesis.txt").read_text() == "years of work"


def test_out_that_contains_the_build_dir_is_refused(tiny_prompts, tmp_path):
    result = invoke("build", "--demo", "--prompts", tiny_prompts, "--build-dir",
                    tmp_path / "b", "--out", tmp_path)
    assert_clean_failure(result, "--out", "contains", "a build replaces --out whole")
    assert tiny_prompts.is_dir()
