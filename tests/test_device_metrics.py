"""The device-side metrics (generator/device_metrics.py) against the numpy definitions in
generator/metrics.py: a left-padded batch of causal attention maps of different lengths, with
repeated tokens, must give every row the numbers metrics.py gives that row's map alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generator import device_metrics as D
from generator.metrics import (HEAD_METRICS, between_group_similarity, group_similarity,
                               layer_metrics)


def _causal_rows(rng: np.random.Generator, h: int, t: int, sharp: float) -> np.ndarray:
    """Random causal attention [h, t, t] (rows sum to 1), some weights far under 1/256."""
    logits = rng.normal(size=(h, t, t)) * sharp
    logits = np.where(np.tril(np.ones((t, t), dtype=bool)), logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def _batch(lengths, heads, seed=0):
    """Per-row maps and token ids, and the same placed in one left-padded [B, H, S, S] batch."""
    rng = np.random.default_rng(seed)
    S = max(lengths) + 2                     # two padded positions past the longest (cut rows)
    B = len(lengths)
    att = np.zeros((B, heads, S, S))
    ids = np.full((B, S), -1)
    valid = np.zeros((B, S), dtype=bool)
    starts = []
    maps, toks = [], []
    for b, t in enumerate(lengths):
        start = S - 2 - t if b % 2 else S - t  # some rows end before S (cut after end-of-text)
        m = _causal_rows(rng, heads, t, sharp=3.0 + b)
        tok = rng.integers(0, 4, size=t)     # a small vocabulary: tokens repeat
        att[b, :, start:start + t, start:start + t] = m
        ids[b, start:start + t] = tok
        valid[b, start:start + t] = True
        starts.append(start)
        maps.append(m)
        toks.append(tok.tolist())
    at = D.Positions(torch.tensor(starts), torch.tensor(valid), torch.tensor(ids))
    return torch.tensor(att, dtype=torch.float32), at, maps, toks


@pytest.mark.parametrize("lengths", [[5, 9, 1, 13], [2, 2], [30, 7]])
def test_head_metrics_equal_the_numpy_definitions(lengths):
    att, at, maps, toks = _batch(lengths, heads=4)
    got = D.head_metrics(att, at).numpy()                        # [5, B, H]
    for b, (m, tok) in enumerate(zip(maps, toks)):
        want = layer_metrics(m[None], tok)                       # name -> [1, H]
        for i, name in enumerate(HEAD_METRICS):
            np.testing.assert_allclose(got[i, b], want[name][0], atol=2e-5, equal_nan=True,
                                       err_msg=f"{name}, row {b} ({len(tok)} tokens)")


@pytest.mark.parametrize("lengths", [[5, 9, 1, 13], [30, 7]])
def test_group_metrics_equal_the_numpy_definitions(lengths):
    heads, kv = 6, 2
    att, at, maps, _ = _batch(lengths, heads=heads, seed=1)
    got = D.group_metrics(att, at, kv).numpy()                   # [B, 1 + 2G]
    for b, m in enumerate(maps):
        np.testing.assert_allclose(got[b, 0], between_group_similarity(m, kv), atol=2e-5,
                                   equal_nan=True)
        for g, want in enumerate(group_similarity(m, kv)):
            np.testing.assert_allclose(got[b, 1 + 2 * g], want["similarity"], atol=2e-5,
                                       equal_nan=True, err_msg=f"similarity, row {b}, group {g}")
            np.testing.assert_allclose(got[b, 2 + 2 * g], want["mean_js"], atol=2e-5,
                                       equal_nan=True, err_msg=f"mean_js, row {b}, group {g}")


def test_metrics_use_full_precision_not_the_stored_grid():
    """Weights under 1/256 count: the entropy of a map with a long tail of tiny weights differs
    from that of its 1/128-quantized copy, and the device metric is the full-precision one."""
    t = 40
    row = np.full(t, 1e-3)
    row[0] = 1 - 1e-3 * (t - 1)
    m = np.zeros((1, t, t))
    for i in range(t):
        m[0, i, :i + 1] = row[:i + 1] / row[:i + 1].sum()
    att = torch.tensor(m[None], dtype=torch.float32)
    at = D.Positions(torch.tensor([0]), torch.ones((1, t), dtype=torch.bool),
                     torch.arange(t)[None])
    got = D.head_metrics(att, at)[HEAD_METRICS.index("entropy"), 0, 0].item()
    full = layer_metrics(m[None], list(range(t)))["entropy"][0, 0]
    stored = layer_metrics((np.round(m * 128) / 128)[None], list(range(t)))["entropy"][0, 0]
    assert abs(full - stored) > 0.05
    assert got == pytest.approx(full, abs=1e-4)


def test_all_layers_at_once_and_in_chunks_equal_layer_by_layer(monkeypatch):
    """The compute stage passes every layer at once ([L, B, H, S, S]) and the JS divergence goes
    in chunks of rows: both give what one layer at a time gives."""
    layers = [_batch([5, 9, 3], heads=6, seed=s) for s in range(3)]
    at = layers[0][1]
    stacked = torch.stack([att for att, *_ in layers])                 # [L, B, H, S, S]
    # The same positions for every layer: rebuild each layer's maps over layer 0's positions.
    head = D.head_metrics(stacked, at)                                 # [5, L, B, H]
    group = D.group_metrics(stacked, at, 2)                            # [L, B, 1 + 2G]
    monkeypatch.setattr(D, "JS_CHUNK_BYTES", 1)                        # one row per chunk
    chunked = D.group_metrics(stacked, at, 2)
    for l in range(len(layers)):
        # The compute stage reduces one layer at a time: the head metrics bit for bit; the group
        # comparison's sums over more maps at once may round their last bit differently.
        alone = D.head_metrics(stacked[l], at)
        assert torch.equal(head[:, l].nan_to_num(-1), alone.nan_to_num(-1))
        torch.testing.assert_close(group[l], D.group_metrics(stacked[l], at, 2), equal_nan=True)
    torch.testing.assert_close(chunked, group, equal_nan=True)
    monkeypatch.setattr(D, "JS_CHUNK_BYTES", 256 << 20)
    monkeypatch.setattr(D, "ROW_BLOCK", 2)                             # rows two at a time
    blocked = D.group_metrics(stacked, at, 2)
    # Rows in blocks of two (a long prompt's layer, in blocks of 256): the same sums over keys.
    torch.testing.assert_close(blocked, group, equal_nan=True)
