"""A prompt longer than one model's context (generator/skips.py): computed for the models that can
hold it, skipped for the other with a record, one line in the build's output, and a column on the
prompt page that says why.

The demo models hold every curated prompt, so the short model here is a tiny GPT-2 with random
weights and 64 positions, next to the demo's Qwen2 (4,096 positions).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from generator import layout
from generator.cli import main
from generator.compute import Settings, run_compute
from generator.errors import ArtifactError
from generator.prompts import Prompt, PromptSet
from generator.schema import read_artifact
from generator.skips import SkipRecord, fits, read_skip

from conftest import write_prompt_sets

CONTEXT = 64
LONG = " ".join(["a"] * 80)           # 80 tokens for both tokenizers ("a", then " a" x 79)
SETS = {"ctx": {"title": "Context", "description": "One prompt too long for the small model.",
                "prompts": [{"id": "short", "text": "Hello world", "note": "Fits both."},
                            {"id": "long", "text": LONG, "note": "Fits Qwen2 only."}]}}


@pytest.fixture(scope="module")
def small_gpt2(tmp_path_factory) -> Path:
    """A GPT-2 checkpoint of 64 positions (2 layers, random weights) with the real tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from generator.demo import load_real_tokenizer
    dest = tmp_path_factory.mktemp("small") / "small-context-gpt2"
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=CONTEXT, vocab_size=50257,
                        bos_token_id=50256, eos_token_id=50256)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(dest)
    load_real_tokenizer("gpt2").save_pretrained(dest)
    (dest / "model_atlas_demo.json").write_text(json.dumps(
        {"random_weights": True, "description": "64 positions, random weights, for tests."}))
    return dest


def prompt_set() -> PromptSet:
    prompts = tuple(Prompt("ctx", p["id"], p["text"], p["note"]) for p in SETS["ctx"]["prompts"])
    return PromptSet("ctx", "Context", "d", prompts, "ctx.yaml")


def test_fits_counts_the_continuation():
    assert fits(56, 8, 64) and not fits(57, 8, 64) and fits(10 ** 6, 8, None)


def test_messages_say_why():
    record = SkipRecord("k", "gpt2", "gpt2", "s", "p", "h", 1731, 8, 1024)
    assert record.message == "1,731 tokens: longer than gpt2's context of 1,024"
    close = SkipRecord("k", "gpt2", "gpt2", "s", "p", "h", 1020, 8, 1024)
    assert close.message == "1,020 tokens and 8 generated: longer than gpt2's context of 1,024"


def test_a_damaged_record_is_named(tmp_path):
    path = tmp_path / "p.skipped.json"
    path.write_text('{"kind": "model-atlas-skip"}')
    with pytest.raises(ArtifactError, match=r"p\.skipped\.json: not a skip record"):
        read_skip(path)


def test_compute_skips_the_long_prompt_for_the_short_model_only(small_gpt2, demo_dirs, tmp_path):
    out = tmp_path / "artifacts"
    lines: list[str] = []
    models = [str(small_gpt2), str(demo_dirs[1])]
    report = run_compute(models, [prompt_set()], out, Settings(), device="cpu", log=lines.append)
    assert not report.failures and report.computed == 3
    small, qwen = "small-context-gpt2", "tiny-random-qwen2"
    expected = f"ctx/long ({small}): skipped, 80 tokens: longer than {small}'s context of 64"
    assert report.skipped == [expected] and lines.count(expected) == 1
    record = read_skip(layout.skip_record_path(out, small, "ctx", "long"))
    assert (record.tokens, record.context_length, record.continuation) == (80, CONTEXT, 8)
    assert not layout.artifact_path(out, small, "ctx", "long").exists()
    assert read_artifact(layout.artifact_path(out, qwen, "ctx", "long"))["attention"]["length"] > 80
    read_artifact(layout.artifact_path(out, small, "ctx", "short"))
    # A rebuild reuses the record as it reuses an artifact: nothing is loaded again.
    lines.clear()
    again = run_compute(models, [prompt_set()], out, Settings(), device="cpu", log=lines.append)
    assert (again.computed, again.reused, again.skipped) == (0, 4, [])
    assert sum("model not loaded" in line for line in lines) == 2


def test_the_prompt_page_says_why_and_the_build_succeeds(small_gpt2, demo_dirs, tmp_path):
    prompts = write_prompt_sets(tmp_path / "prompts", SETS)
    build, site = tmp_path / "build", tmp_path / "site"
    result = CliRunner().invoke(main, ["build", "--model", str(small_gpt2), "--model",
                                       str(demo_dirs[1]), "--prompts", str(prompts),
                                       "--build-dir", str(build), "--out", str(site),
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    line = "ctx/long (small-context-gpt2): skipped, 80 tokens: longer than"
    assert result.output.count(line) == 1, result.output
    page = (site / layout.served(layout.prompt_page("ctx/long"))).read_text("utf-8")
    assert ('Not computed for small-context-gpt2: 80 tokens: longer than small-context-gpt2'
            '&#39;s context of 64.') in page
    assert 'data-skipped-of="small-context-gpt2"' in page
    assert 'data-tokens-of="tiny-random-qwen2"' in page      # the other model's column is there
    short = (site / layout.served(layout.prompt_page("ctx/short"))).read_text("utf-8")
    assert "data-skipped-of" not in short and 'data-tokens-of="small-context-gpt2"' in short
    # A changed prompt text makes the record stale: render refuses it until compute runs.
    changed = {"ctx": {**SETS["ctx"], "prompts": [SETS["ctx"]["prompts"][0],
                                                  {**SETS["ctx"]["prompts"][1],
                                                   "text": LONG + "b"}]}}
    other = write_prompt_sets(tmp_path / "changed", changed)
    result = CliRunner().invoke(main, ["render", "--model", str(small_gpt2), "--model",
                                       str(demo_dirs[1]), "--prompts", str(other),
                                       "--build-dir", str(build), "--out", str(site)])
    assert result.exit_code != 0 and "written for another text of prompt ctx/long" in \
        result.output, result.output
