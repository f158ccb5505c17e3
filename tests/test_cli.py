"""Tests for the `model-atlas` command line (generator/cli.py) through click's CliRunner: help texts,
the offline demo build, and the one-line messages for models that cannot be had and bad options."""

from __future__ import annotations

import time

import click
import pytest
from click.testing import CliRunner

from generator.cli import main


COMMANDS = sorted(main.commands)




def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("command", [None] + COMMANDS)
def test_help_exits_0_and_documents_every_option(command):
    """Every option of every command (and of the group) appears in its --help, with its help."""
    args = ([command] if command else []) + ["--help"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    cmd = main if command is None else main.commands[command]
    assert cmd.help and cmd.help.split("\n")[0].strip() in " ".join(result.output.split())
    for param in cmd.params:
        if isinstance(param, click.Option):
            for opt in param.opts:
                assert opt in result.output, f"{command} --help does not show {opt}"
            if param.help and param.name != "help":
                assert param.help.split()[0] in result.output
    if command is None:
        for name in COMMANDS:
            assert name in result.output


def test_the_stage_commands_exist():
    assert {"compute", "render", "build", "serve"} <= set(COMMANDS)


def test_short_help_option():
    result = invoke("build", "-h")
    assert result.exit_code == 0, result.output
    assert "--demo" in result.output


def test_build_demo_writes_the_site(demo_build):
    assert demo_build.exit_code == 0, demo_build.output
    index = demo_build.site / "index.html"
    assert index.is_file() and index.stat().st_size > 1000
    assert "done: open" in demo_build.output
    # Artifacts for both demo models and every prompt of the subset.
    for slug in ("tiny-random-gpt2", "tiny-random-qwen2"):
        assert sorted(p.stem for p in (demo_build.root / "artifacts" / slug).rglob("*.json")) == \
            sorted(["hello", "hostile", "repeat", "cjk-emoji", "code"])


def test_second_build_reuses_every_artifact(demo_build, tmp_path):
    """A build over an existing build dir loads no model: every artifact is current."""
    result = invoke("compute", "--demo", "--prompts", demo_build.prompts, "--build-dir",
                    demo_build.root, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "0 computed, 10 reused, 0 failed" in result.output
    assert result.output.count("model not loaded") == 2


def test_hub_model_without_network_fails_fast_naming_demo(hub_unreachable, tiny_prompts, tmp_path):
    t0 = time.perf_counter()
    result = invoke("compute", "--model", "gpt2", "--prompts", tiny_prompts,
                    "--build-dir", tmp_path / "b", "--device", "cpu")
    seconds = time.perf_counter() - t0
    assert result.exit_code != 0
    assert seconds < 5, f"took {seconds:.1f}s to fail"
    assert "--demo" in result.output, result.output
    assert "'gpt2'" in result.output and "unreachable" in result.output
    assert hub_unreachable, "the hub check was not consulted"
    assert "Traceback" not in result.output


def test_default_models_without_network_fail_naming_demo(hub_unreachable, tiny_prompts, tmp_path):
    result = invoke("build", "--prompts", tiny_prompts, "--build-dir", tmp_path / "b",
                    "--out", tmp_path / "site", "--device", "cpu")
    assert result.exit_code != 0
    assert "model-atlas build --demo" in result.output, result.output
    assert not (tmp_path / "site").exists()


@pytest.mark.parametrize("model", ["no such model!", "./does/not/exist", "a/b/c", "../up",
                                   "x" * 200])
def test_unusable_model_names_fail_clearly(hub_unreachable, tiny_prompts, tmp_path, model):
    result = invoke("compute", "--model", model, "--prompts", tiny_prompts,
                    "--build-dir", tmp_path / "b", "--device", "cpu")
    assert result.exit_code != 0
    assert "neither an existing directory nor a valid Hugging Face model id" in result.output, \
        result.output
    assert model in result.output
    assert not hub_unreachable, "an invalid id must be rejected before any network check"


def test_model_path_that_is_not_a_checkpoint(tiny_prompts, tmp_path):
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    result = invoke("compute", "--model", empty, "--prompts", tiny_prompts,
                    "--build-dir", tmp_path / "b", "--device", "cpu")
    assert result.exit_code != 0
    assert "no config.json" in result.output and str(empty) in result.output
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"x")
    result = invoke("compute", "--model", a_file, "--prompts", tiny_prompts,
                    "--build-dir", tmp_path / "b", "--device", "cpu")
    assert result.exit_code != 0
    assert "this is a file" in result.output


@pytest.mark.parametrize("args, message", [
    (["--shard", "3/2"], "--shard 3/2: K must be between 1 and N"),
    (["--shard", "0/2"], "--shard 0/2"),
    (["--shard", "half"], "--shard 'half': expected K/N"),
    (["--top-k", "-1"], "--top-k -1: must be between 1 and 100"),
    (["--top-k", "101"], "--top-k 101"),
    (["--top-k", "3", "--lens-top-k", "4"], "--lens-top-k 4"),
    (["--top-k", "many"], "'--top-k'"),
    (["--device", "quantum"], "--device 'quantum' is not a device"),
    (["--dtype", "float8"], "--dtype 'float8' is not supported"),
])
def test_bad_options_fail_naming_the_option(hub_unreachable, tiny_prompts, tmp_path, args,
                                            message):
    result = invoke("compute", "--model", "gpt2", "--prompts", tiny_prompts,
                    "--build-dir", tmp_path / "b", *args)
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "b" / "artifacts").exists() or not any(
        (tmp_path / "b" / "artifacts").rglob("*.json"))


def test_demo_and_model_together_are_refused(tiny_prompts, tmp_path):
    result = invoke("compute", "--demo", "--model", "gpt2", "--prompts", tiny_prompts,
                    "--build-dir", tmp_path / "b")
    assert result.exit_code == 2
    assert "--demo uses the two demo models; leave out --model" in result.output


def test_missing_prompt_file_is_reported(tmp_path):
    result = invoke("compute", "--demo", "--prompts", tmp_path / "nope.yaml",
                    "--build-dir", tmp_path / "b")
    assert result.exit_code != 0
    assert "nope.yaml" in result.output and "no such file or directory" in result.output


def test_render_without_artifacts_says_to_compute(tiny_prompts, tmp_path):
    result = invoke("render", "--demo", "--prompts", tiny_prompts, "--build-dir", tmp_path / "b",
                    "--out", tmp_path / "site")
    assert result.exit_code != 0
    assert "model-atlas compute" in result.output
    assert not (tmp_path / "site").exists()


def test_out_that_is_a_file_is_refused(demo_build, tmp_path):
    target = tmp_path / "site.html"
    target.write_text("not a directory")
    result = invoke("render", "--demo", "--prompts", demo_build.prompts,
                    "--build-dir", demo_build.root, "--out", target)
    assert result.exit_code != 0
    assert "--out" in result.output and "is a file" in result.output
    assert target.read_text() == "not a directory"


def test_render_finds_artifacts_of_a_checkpoint_it_does_not_have(demo_dirs, tiny_prompts, tmp_path):
    """Compute with `--model DIR`, move DIR away (a render job without the checkpoints), render
    with the same `--model DIR`: the slug is the one compute wrote, not one made of the path."""
    import shutil
    ckpt = tmp_path / "gpu-machine" / "ck" / "tiny-random-gpt2"
    shutil.copytree(demo_dirs[0], ckpt)
    build = tmp_path / "b"
    result = invoke("compute", "--model", ckpt, "--prompts", tiny_prompts, "--build-dir", build,
                    "--device", "cpu", "--continuation", "0")
    assert result.exit_code == 0, result.output
    assert (build / "artifacts" / "tiny-random-gpt2" / "tiny" / "hello.json").is_file()
    (tmp_path / "gpu-machine").rename(tmp_path / "gone")
    result = invoke("render", "--model", ckpt, "--prompts", tiny_prompts, "--build-dir", build,
                    "--out", tmp_path / "site")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "site" / "models" / "tiny-random-gpt2.html").is_file()
    assert (tmp_path / "site" / "prompts" / "tiny" / "hello.html").is_file()


def test_a_model_that_is_not_the_demo_renders(demo_dirs, tiny_prompts, tmp_path):
    """A checkpoint with no planted heads in its config (any hub or local model but the demo's):
    its model page renders, with no planted-heads section and no constructed-weights banner."""
    import json
    import shutil
    ckpt = tmp_path / "ck" / "plain-gpt2"
    shutil.copytree(demo_dirs[0], ckpt)
    config = json.loads((ckpt / "config.json").read_text("utf-8"))
    assert config.pop("model_atlas_planted_heads"), "the demo checkpoint should plant heads"
    (ckpt / "config.json").write_text(json.dumps(config), "utf-8")
    for marker in ckpt.glob("*demo*"):   # the demo's marker file, if it has one
        marker.unlink()
    build = tmp_path / "b"
    result = invoke("build", "--model", ckpt, "--prompts", tiny_prompts, "--build-dir", build,
                    "--out", tmp_path / "site", "--device", "cpu", "--continuation", "0")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "site" / "models" / "plain-gpt2.html").read_text("utf-8")
    assert "Planted heads" not in page


# (what --model says, slug directories the artifacts hold, the slug, whether compute read a
# local directory)
@pytest.mark.parametrize("model, written, slug, local", [
    ("/data/ck/gpt2-random", [], "gpt2-random", True),      # a path: its directory's name
    ("./gpt2-random/", [], "gpt2-random", True),
    ("a/b/Tiny_GPT2", [], "tiny_gpt2", True),
    ("gpt2", [], "gpt2", False),                             # one name: the same either way
    ("gpt2", [], "gpt2", True),
    ("Qwen/Qwen2.5-0.5B", [], "qwen-qwen2.5-0.5b", False),   # owner/name: a hub id ...
    ("Qwen/Qwen2.5-0.5B", ["qwen-qwen2.5-0.5b"], "qwen-qwen2.5-0.5b", False),
    ("ck/gpt2-random", ["gpt2-random"], "gpt2-random", True),  # ... or a relative directory
    ("ck/gpt2-random", ["gpt2-random", "other"], "gpt2-random", True),
])
def test_render_slug_does_not_depend_on_the_checkpoint(tmp_path, model, written, slug, local):
    from generator.store import model_slug, render_slug
    artifacts = tmp_path / "artifacts"
    for s in written:
        (artifacts / s).mkdir(parents=True)
    assert render_slug(model, artifacts) == slug      # no checkpoint exists in tmp_path
    assert model_slug(model, local_dir=local) == slug  # what compute named it
