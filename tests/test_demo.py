"""The offline demo's constructed circuits (generator/demo.py) do what their names promise.

The planted heads are checked on the curated induction prompts through the real tokenizers and the
same eager forward pass the compute stage runs; the head atlas of the built demo site must rank each
planted head first for its own metric, which checks the metrics against a known answer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from generator import demo, metrics
from generator.models import final_norm
from generator.pagedata import head_atlas
from generator.schema import read_artifact

REPO = Path(__file__).resolve().parent.parent
INDUCTION = [p["text"] for p in
             yaml.safe_load((REPO / "prompt_sets" / "induction.yaml").read_text())["prompts"]]
MIN_INDUCTION_SHARE = 0.8    # measured: GPT-2 1.0, Qwen2 0.83 (its misses: see induction_share)


def _run(lm, text: str):
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = lm.model(torch.tensor([ids]), output_attentions=True)
    att = torch.stack(out.attentions)[:, 0].double().numpy()          # [L, H, T, T]
    return ids, att, out.logits[0]


def _planted(lm) -> list[dict]:
    heads = lm.facts.get("planted_heads")
    assert heads, "the demo checkpoint's config must list its planted heads"
    return heads


@pytest.fixture(scope="module", params=["gpt2_model", "qwen2_model"])
def lm(request):
    return request.getfixturevalue(request.param)


def test_planted_heads_reach_the_artifact_facts(lm):
    names = {p["name"] for p in _planted(lm)}
    assert {p["metric"] for p in _planted(lm)} == {"prev_token", "first_token", "induction"}
    assert all(p["mechanism"] for p in _planted(lm)), names


def test_planted_heads_behave(lm):
    """Previous-token head: most weight on i-1; sink: on 0; induction head: on the target set."""
    for text in INDUCTION:
        ids, att, _ = _run(lm, text)
        T = len(ids)
        targets = metrics.induction_targets(ids)                     # [T, T]
        for p in _planted(lm):
            a = att[p["layer"], p["head"]]                            # [T, T]
            if p["metric"] == "prev_token":
                on = a[np.arange(1, T), np.arange(0, T - 1)]
                assert on.min() > 0.9, (p["name"], text, on.round(2))
            elif p["metric"] == "first_token":
                assert a[1:, 0].min() > 0.9, (p["name"], text, a[1:, 0].round(2))
            else:
                rows = targets.any(1)
                on = (a * targets).sum(1)[rows]
                assert np.median(on) > 0.9, (p["name"], text, on.round(2))


LONG = [p["text"] for p in
        yaml.safe_load((REPO / "prompt_sets" / "long-context.yaml").read_text())["prompts"]]


def test_planted_heads_behave_across_the_whole_context(lm):
    """The same mechanisms hold over long prompts: the curated long-context set and 2,000 tokens
    of random words repeated (the sink's score still grows at the far end, the induction match
    survives a thousand positions of rotation)."""
    rng = np.random.default_rng(0)
    words = " ".join(rng.choice(["apple", "river", "stone", "cloud", "green", "quiet"], 1000))
    for text in LONG + [words + " " + words]:
        ids, att, _ = _run(lm, text)
        T = len(ids)
        assert T >= 450
        targets = metrics.induction_targets(ids)
        for p in _planted(lm):
            a = att[p["layer"], p["head"]]
            if p["metric"] == "prev_token":
                assert a[np.arange(1, T), np.arange(0, T - 1)].min() > 0.9, (p["name"], T)
            elif p["metric"] == "first_token":
                assert a[1:, 0].min() > 0.9, (p["name"], T, a[1:, 0].min())
            else:
                rows = targets.any(1)
                assert np.median((a * targets).sum(1)[rows]) > 0.9, (p["name"], T)


def test_random_heads_do_not_look_planted(lm):
    """Contrast: no unplanted head comes near a planted head's score on its metric."""
    per_prompt = [metrics.layer_metrics(att, ids) for ids, att, _ in map(lambda t: _run(lm, t),
                                                                         INDUCTION)]
    mean = metrics.aggregate(per_prompt)
    planted = {(p["layer"], p["head"]) for p in _planted(lm)}
    for name in ("prev_token", "first_token", "induction"):
        others = [mean[name][l, h] for l in range(mean[name].shape[0])
                  for h in range(mean[name].shape[1]) if (l, h) not in planted]
        assert max(others) < 0.5, (name, max(others))


def test_qwen2_pair_sharing_a_kv_head_behaves_alike(qwen2_model):
    pair = [p for p in _planted(qwen2_model) if p["metric"] == "prev_token"]
    assert len(pair) == 2 and pair[0]["layer"] == pair[1]["layer"]
    layer = pair[0]["layer"]
    kv, heads = qwen2_model.facts["kv_heads"], qwen2_model.facts["query_heads"]
    group = metrics.kv_groups(heads, kv)
    members = sorted(p["head"] for p in pair)
    assert members in group, "the two planted heads must share one key/value head"
    ids, att, _ = _run(qwen2_model, INDUCTION[0])
    sims = metrics.group_similarity(att[layer], kv)
    same = next(g for g in sims if g["heads"] == members)
    assert same["similarity"] > 0.99 and same["mean_js"] < 0.05, same
    assert metrics.between_group_similarity(att[layer], kv) < 0.5


def induction_share(lm) -> tuple[int, int]:
    """(hits, positions): positions of the induction prompts where the current token occurred
    before, and how many of them the model's top-1 completes with a token that followed it."""
    hits = total = 0
    for text in INDUCTION:
        ids, _, logits = _run(lm, text)
        top = logits.argmax(-1).tolist()
        targets = metrics.induction_targets(ids)
        for i in range(len(ids)):
            following = {ids[k] for k in np.nonzero(targets[i])[0]}
            if following:
                total += 1
                hits += top[i] in following
    return hits, total


def test_demo_completes_the_repeat(lm):
    hits, total = induction_share(lm)
    assert total > 50
    assert hits / total >= MIN_INDUCTION_SHARE, f"{hits}/{total} repeated positions completed"


def test_final_norm_is_not_trivial_and_matters(lm):
    """Non-trivial final norm weights, so that applying the norm twice (a logit-lens bug) would
    change the predictions instead of going unnoticed."""
    norm = final_norm(lm.model)
    assert not torch.allclose(norm.weight, torch.ones_like(norm.weight))
    assert norm.weight.std() > 0.3
    if getattr(norm, "bias", None) is not None:
        assert norm.bias.abs().max() > 0.05
    ids = lm.tokenizer(INDUCTION[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = lm.model(torch.tensor([ids]), output_hidden_states=True)
        last = out.hidden_states[-1][0]                          # already normed
        W = lm.model.get_output_embeddings().weight
        once = (last @ W.T).log_softmax(-1)
        twice = (norm(last) @ W.T).log_softmax(-1)
    assert torch.allclose(once, out.logits[0].log_softmax(-1), atol=1e-4)
    # With weight 1 and bias 0 the norm is idempotent and `twice` would equal `once`.
    top = once.argmax(-1, keepdim=True)
    shift = (once.gather(1, top) - twice.gather(1, top)).abs()       # [T, 1] nats
    assert shift.mean() > 0.5, shift.ravel()


def test_construction_is_seeded_and_fast():
    import time
    t0 = time.perf_counter()
    a = demo.construct_model("tiny-random-qwen2")
    b = demo.construct_model("tiny-random-qwen2")
    assert time.perf_counter() - t0 < 20
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n


def test_head_atlas_ranks_each_planted_head_first(demo_site_full):
    """On the built demo (every curated prompt), the head atlas's ranking puts the planted heads
    of each metric at the top."""
    root = demo_site_full.root / "artifacts"
    for slug in demo.DEMO_SPECS:
        paths = sorted((root / slug).rglob("*.json"))
        artifacts = [read_artifact(p) for p in paths]
        planted = artifacts[0]["model"]["planted_heads"]
        atlas = head_atlas(slug, [str(p) for p in paths], artifacts)["rows"]
        for metric in ("prev_token", "first_token", "induction"):
            mine = {p["name"] for p in planted if p["metric"] == metric}
            ranked = sorted((r for r in atlas if r[metric] is not None),
                            key=lambda r: -r[metric])
            top = {r["name"] for r in ranked[:len(mine)]}
            assert top == mine, (slug, metric, [(r["name"], r[metric]) for r in ranked[:4]])
