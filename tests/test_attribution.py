"""Direct logit attribution (generator/attribution.py), recorded on the compute stage's own passes.

The contributions must add up to the model's logit at every stored position (prompt and generated,
left-padded batches), checked against an independent full forward pass; and on the demo models,
whose circuits are known, they must name the right components.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generator import metrics
from generator.attribution import DlaRecorder, component_names
from generator.extract import run_batch
from generator.schema import Attribution

PROMPTS = [
    "vortex maple quill azure pickle orbit lantern seven | vortex maple quill azure pickle orbit",
    "The cat sat on the mat. The cat sat on the",
    "Hello world",
]
MAX_REL_ERROR = 1e-3
# The bound site_src/metrics.md states for attribution.max_rel_error in float32.
DOCUMENTED_MAX_REL_ERROR = 1e-5


@pytest.fixture(scope="module", params=["gpt2_model", "qwen2_model"])
def lm(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def batch(lm):
    tok = lm.tokenizer
    seqs = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    eos = tok.eos_token_id
    outs = run_batch(lm.model, seqs, n_new=6, eos_id=eos, pad_id=eos, k=5)
    return seqs, outs


def _full_logits(lm, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(torch.tensor([ids])).logits[0].float()              # [T, V]


def test_contributions_add_up_to_the_logit_at_every_stored_position(lm, batch):
    seqs, outs = batch
    L, H = lm.facts["layers"], lm.facts["query_heads"]
    C = len(component_names(L, H))
    for seq, out in zip(seqs, outs):
        T = len(out.ids)
        assert T > len(seq), "the batch must include generated positions"
        assert out.dla.shape == (T, 2, C) and out.dla_error.shape == (T, 2)
        logits = _full_logits(lm, out.ids)                                   # independent pass
        top1 = logits.argmax(-1)
        # (a) the top-1 prediction, every position
        ref = logits.gather(1, top1[:, None])[:, 0].numpy()
        total = out.dla[:, 0].astype(np.float64).sum(-1)
        err = np.abs(total - ref) / np.maximum(np.abs(ref), 1.0)
        assert err.max() < MAX_REL_ERROR, err.max()
        assert np.array_equal(out.lens_ids[-1, :, 0], top1.numpy())
        # (b) the actual next token, every position but the last
        nxt = torch.tensor(out.ids[1:])
        ref = logits[:-1].gather(1, nxt[:, None])[:, 0].numpy()
        total = out.dla[:-1, 1].astype(np.float64).sum(-1)
        err = np.abs(total - ref) / np.maximum(np.abs(ref), 1.0)
        assert err.max() < MAX_REL_ERROR, err.max()
        assert np.isnan(out.dla[-1, 1]).all() and np.isnan(out.dla_error[-1, 1])
        assert np.nanmax(out.dla_error) < MAX_REL_ERROR


def test_stored_attribution_keeps_its_documented_bounds(lm, batch):
    """What the artifact stores (site_src/artifact-format.md, attribution): sum(value) + rest is
    the model's logit within 0.0005 (plus max_rel_error), and max_rel_error stays under the bound
    metrics.md states for float32."""
    seqs, outs = batch
    for out in outs:
        stored = Attribution.from_ranked(out.dla.shape[-1], *out.dla_ranked, out.dla_error)
        assert stored.max_rel_error < DOCUMENTED_MAX_REL_ERROR, stored.max_rel_error
        logits = _full_logits(lm, out.ids)                                   # independent pass
        targets = [logits.argmax(-1).tolist(), out.ids[1:] + [None]]
        for i in range(len(out.ids)):
            for j in range(2):
                if targets[j][i] is None:
                    assert stored.rest[i][j] is None
                    continue
                ref = float(logits[i, targets[j][i]])
                got = sum(stored.value[i][j]) + stored.rest[i][j]
                # 0.0005: rest rounded to 3 decimals; 2e-5: the documented bound, and the
                # independent pass's own float32 noise
                assert abs(got - ref) <= 0.0005 + 2e-5 * max(abs(ref), 1.0), (i, j, got, ref)


def test_batching_and_padding_do_not_change_the_attribution(lm, batch):
    seqs, outs = batch
    alone = run_batch(lm.model, [seqs[0]], n_new=6, eos_id=lm.tokenizer.eos_token_id,
                      pad_id=lm.tokenizer.eos_token_id, k=5)[0]
    np.testing.assert_allclose(alone.dla, outs[0].dla, atol=2e-4, equal_nan=True)


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_are_removed(lm, batch):
    """transformers keeps hooks of its own; the recorder's go after every batch, failed or not."""
    model = lm.model
    before = _hook_count(model)
    with DlaRecorder(model):
        assert _hook_count(model) > before
    assert _hook_count(model) == before
    with pytest.raises(RuntimeError):
        with DlaRecorder(model):
            raise RuntimeError("a failing batch")
    assert _hook_count(model) == before


def test_dla_names_the_planted_heads(lm, batch):
    """On the demo, the induction head writes the repeated token (largest contributor at repeated
    positions), the previous-token head writes nothing the unembedding reads, and the tied
    embedding nearly cancels through the final norm (see generator/demo.py)."""
    seqs, outs = batch
    L, H = lm.facts["layers"], lm.facts["query_heads"]
    names = component_names(L, H)
    planted = {p["metric"]: p["name"] for p in lm.facts["planted_heads"]}
    ind = names.index(planted["induction"])
    prev = [names.index(p["name"]) for p in lm.facts["planted_heads"] if p["metric"] == "prev_token"]
    for seq, out in zip(seqs, outs):
        targets = metrics.induction_targets(out.ids)
        repeated = [i for i in range(len(seq)) if targets[i].any()]
        if not repeated:
            continue
        top = out.dla[repeated, 0]                                           # [R, C]
        largest = np.abs(top).argmax(-1)
        assert (largest == ind).mean() > 0.9, [names[i] for i in largest]
        assert np.abs(top[:, prev]).max() < 0.01 * np.abs(top[:, ind]).min()
        # the embeddings: only the small direct path the final norm leaves in (demo.LEAK)
        assert np.abs(top[:, 0]).max() < 0.25 * np.abs(top[:, ind]).min()


def test_grouped_query_heads_are_attributed_one_by_one(qwen2_model):
    """The Qwen2 demo's induction head shares its key/value head with a random query head that
    writes nothing the unembedding reads: attributed per query head, the two come apart."""
    facts = qwen2_model.facts
    names = component_names(facts["layers"], facts["query_heads"])
    assert sum(n.startswith("L0.H") for n in names) == facts["query_heads"] > facts["kv_heads"]
    ind = next(p for p in facts["planted_heads"] if p["metric"] == "induction")
    group = next(g for g in metrics.kv_groups(facts["query_heads"], facts["kv_heads"])
                 if ind["head"] in g)
    sibling = f"L{ind['layer']}.H{next(h for h in group if h != ind['head'])}"
    ids = qwen2_model.tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    out = run_batch(qwen2_model.model, [ids], n_new=0, eos_id=None, pad_id=0, k=3)[0]
    repeated = metrics.induction_targets(ids).any(1)
    mine = out.dla[repeated, 0, names.index(ind["name"])]
    theirs = out.dla[repeated, 0, names.index(sibling)]
    assert mine.min() > 1.0 and np.abs(theirs).max() < 0.05 * mine.min(), (mine, theirs)
