"""Per-head attention metrics as batched tensor operations on the device (imports torch).

The same quantities as `metrics.py`, which holds their definitions (`METRIC_DEFINITIONS`,
`GROUP_METRIC_DEFINITIONS`) and the numpy versions the render stage and the tests use. Here they
are computed by the compute stage for a whole batch at once, from the model's full-precision
attention before it is quantized for storage (weights under 1/256 are stored as 0, which would
bias an entropy by up to a tenth of a bit), and come to the host as a few small arrays.

Attention arrives as one layer of the batch in global positions: [B, H, S, S], S = the batch's
padded length (left padding, then the generated tokens). Each row b analyses the positions
`valid[b]` (a contiguous run starting at `starts[b]`: its prompt and kept continuation); local
position i = s - starts[b]. Every metric covers exactly those positions, the generated tokens
included, and averages over local query positions i >= 1, as `metrics.py` does.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .metrics import HEAD_METRICS

LN2 = math.log(2.0)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values [..., B, H, S] over the positions where mask [B, S] is 1 -> [..., B, H];
    NaN where the mask is empty (0/0)."""
    return (values * mask[:, None, :]).sum(-1) / mask.sum(-1)[:, None]


class Positions:
    """What every metric of one batch needs to know about its positions, built once per batch.

    starts: long [B], first analysed position of each row; valid: bool [B, S]; ids: long [B, S].
    """

    def __init__(self, starts: torch.Tensor, valid: torch.Tensor, ids: torch.Tensor):
        dev = valid.device
        B, S = valid.shape
        pos = torch.arange(S, device=dev)
        self.starts = starts.to(dev)
        # Query positions i >= 1: analysed and after the row's first token.  [B, S]
        self.queries = (valid & (pos[None, :] > self.starts[:, None])).float()
        # i - j below the diagonal, 0 elsewhere.  [S, S]
        self.gap = (pos[:, None] - pos[None, :]).clamp_min(0).float()
        # Induction targets: M[b, i, k] iff k-1 is an earlier occurrence of token t_i and
        # k <= i - 1 (metrics.induction_targets, in global positions).  [B, S, S]
        same = (ids[:, :, None] == ids[:, None, :]) & valid[:, :, None] & valid[:, None, :]
        target = torch.zeros((B, S, S), dtype=torch.bool, device=dev)
        target[:, :, 1:] = same[:, :, :-1]
        self.induction = (target & (pos[None, None, :] <= pos[None, :, None] - 1)).float()
        self.induction_queries = self.induction.amax(-1)             # [B, S], S_i non-empty

    def to(self, device: torch.device) -> "Positions":
        if self.queries.device == device:
            return self
        out = object.__new__(Positions)
        for name, value in vars(self).items():
            setattr(out, name, value.to(device))
        return out


@torch.no_grad()
def head_metrics(att: torch.Tensor, at: Positions) -> torch.Tensor:
    """The head metrics: float32 [len(HEAD_METRICS), ..., B, H] in HEAD_METRICS order.

    att: float [..., B, H, S, S] probabilities (zero outside each row's analysed positions); the
    leading dimensions (all layers at once: [L, B, H, S, S]) share the batch's positions."""
    att = att.float()
    *lead, B, H, S, _ = att.shape
    q = at.queries                                                   # [B, S]
    entropy = _row_xlogx(att) / -LN2                                 # [..., B, H, S]
    prev = torch.zeros((*lead, B, H, S), device=att.device)
    prev[..., 1:] = torch.diagonal(att, offset=-1, dim1=-2, dim2=-1)  # a_{i, i-1}
    first_col = at.starts[:, None, None, None].expand(*lead, B, H, S, 1)
    first = att.gather(-1, first_col)[..., 0]                        # a_{i, start}: [..., B, H, S]
    distance = _row_dot(att, at.gap)                                 # [..., B, H, S]
    induction = _row_dot(att, at.induction[:, None])                 # [..., B, H, S]
    per_name = {
        "entropy": _masked_mean(entropy, q),
        "prev_token": _masked_mean(prev, q),
        "first_token": _masked_mean(first, q),
        "distance": _masked_mean(distance, q),
        "induction": _masked_mean(induction, at.induction_queries),
    }
    return torch.stack([per_name[name] for name in HEAD_METRICS])   # [5, ..., B, H]


# Bytes of the masked copy [rows, H, S, S] of the maps that one chunk of `group_metrics` holds
# (a batch's maps go in chunks of rows; one long map is one chunk).
JS_CHUNK_BYTES = 256 << 20
# Rows of the maps that `_row_xlogx` reads at once. Maps are causal (zero right of the diagonal),
# so a block of rows ending at r1 reads keys < r1 only: with blocks of 256 rows a 2,048-token map
# is read over 56 % of its square, and one block of one head is at most 2 MB at 2,048 tokens.
ROW_BLOCK = 256


def _by_rows(x: torch.Tensor, fill: Any) -> torch.Tensor:
    """Per row of causal maps x [..., S, S], the sum over keys of what `fill(r0, r1, buf)` writes
    into buf [..., r1 - r0, r1] for rows r0..r1-1 -> float32 [..., S]. Row blocks of ROW_BLOCK
    read only the keys left of their last row's diagonal (the rest is 0 and adds 0), through one
    reused buffer: no temporary the size of the maps (a fresh one costs page faults each time)."""
    *lead, S, _ = x.shape
    out = torch.empty((*lead, S), dtype=torch.float32, device=x.device)
    n = math.prod(lead)
    buf = torch.empty(n * min(S, ROW_BLOCK) * S, dtype=torch.float32, device=x.device)
    for r0 in range(0, S, ROW_BLOCK):
        r1 = min(S, r0 + ROW_BLOCK)
        b = buf[:n * (r1 - r0) * r1].view(*lead, r1 - r0, r1)
        fill(r0, r1, b)
        torch.sum(b, -1, out=out[..., r0:r1])
    return out


def _row_xlogx(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Per row of causal maps x [..., S, S]: sum over keys of s ln s, s = x (+ y, same shape),
    with 0 ln 0 = 0 -> [..., S]."""
    def fill(r0: int, r1: int, b: torch.Tensor) -> None:
        if y is None:
            b.copy_(x[..., r0:r1, :r1])
        else:
            torch.add(x[..., r0:r1, :r1], y[..., r0:r1, :r1], out=b)
        torch.special.xlogy(b, b, out=b)
    return _by_rows(x, fill)


def _row_dot(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per row of causal maps x [..., S, S]: sum over keys of x * w (w broadcasts to x) -> [..., S]."""
    def fill(r0: int, r1: int, b: torch.Tensor) -> None:
        torch.mul(x[..., r0:r1, :r1], w[..., r0:r1, :r1], out=b)
    return _by_rows(x, fill)


@torch.no_grad()
def group_metrics(att: torch.Tensor, at: Positions, kv_heads: int,
                  masked: bool = False) -> torch.Tensor:
    """Grouped-query comparison: float32 [..., B, 1 + 2G] = (between-group cosine, then per
    group g its within-group cosine and mean Jensen-Shannon divergence), G = kv_heads.

    att: float [..., B, H, S, S] as in `head_metrics`. Heads h of group g are g*n .. g*n + n - 1,
    n = H / G (transformers' `repeat_kv` order). Rows i >= 1 only, as
    `metrics.group_similarity`: cosine of the heads' flattened maps, JS averaged over head pairs
    and rows. NaN where a group has one head or a row has no query. `masked`: att is already
    `mask_queries(att, at)` (then no masked copy is made: the same numbers)."""
    *lead, B, H, S, _ = att.shape
    flat_att = att.reshape(-1, H, S, S)                              # [N, H, S, S], N = lead*B
    q = at.queries.expand(*lead, B, S).reshape(-1, S)                # [N, S]
    step = max(1, JS_CHUNK_BYTES // max(1, H * S * S * 4))
    out = torch.cat([_group_rows(flat_att[i:i + step].float(), q[i:i + step], kv_heads, masked)
                     for i in range(0, flat_att.shape[0], step)])
    return out.view(*lead, B, 1 + 2 * kv_heads)


def mask_queries(att: torch.Tensor, at: Positions) -> torch.Tensor:
    """att [..., B, H, S, S] with the rows of positions that are not queries (`at.queries`: the
    first analysed token, padding, cut tokens) set to 0, in place; returns att."""
    return att.mul_(at.queries[:, None, :, None])


def _group_rows(att: torch.Tensor, q: torch.Tensor, kv_heads: int,
                masked: bool = False) -> torch.Tensor:
    """`group_metrics` of N independent maps att [N, H, S, S] with query masks q [N, S]."""
    N, H, S, _ = att.shape
    G, n = kv_heads, H // kv_heads
    rows = att if masked else att * q[:, None, :, None]              # [N, H, S, S], rows i >= 1
    flat = rows.reshape(N, H, S * S)                                 # [N, H, S*S]
    gram = flat @ flat.transpose(1, 2)                               # [N, H, H]
    norm = gram.diagonal(dim1=1, dim2=2).sqrt()                      # [N, H]
    cos = gram / (norm[:, :, None] * norm[:, None, :])               # NaN where a norm is 0
    group = torch.arange(H, device=att.device) // n                  # [H]
    a, b = torch.triu_indices(n, n, offset=1, device=att.device)     # the pairs within a group
    out = torch.full((N, 1 + 2 * G), float("nan"), device=att.device)
    if G > 1:
        between = group[:, None] != group[None, :]                   # [H, H]
        out[:, 0] = torch.nanmean(cos[:, between], dim=-1)
    if len(a):
        heads = torch.arange(H, device=att.device).view(G, n)        # [G, n]
        out[:, 1::2] = torch.nanmean(cos[:, heads[:, a], heads[:, b]], dim=-1)  # [N, G]
        grouped = rows.view(N, G, n, S, S)
        ent = _row_xlogx(grouped) / LN2                              # [N, G, n, S]: sum p log2 p
        # Each pair's mixture m = (p + p') / 2, one pair at a time (all pairs' mixtures at once,
        # [N, G, pairs, S, S], would be (n - 1) / 2 times the attention itself: Qwen2.5 3x, 710
        # MB a layer at 2,048 tokens): sum m log2 m = (sum s ln s) / (2 ln 2) - (sum s) / 2 with
        # s = p + p', since log2(s / 2) = log2 s - 1.
        mass = grouped.sum(-1)                                       # [N, G, n, S]
        mixed = torch.stack([_row_xlogx(grouped[:, :, i], grouped[:, :, j]) / (2 * LN2)
                             - (mass[:, :, i] + mass[:, :, j]) / 2
                             for i, j in zip(a.tolist(), b.tolist())], dim=2)
        js = ((ent[:, :, a] + ent[:, :, b]) / 2 - mixed).clamp_min(0)  # [N, G, pairs, S]
        count = q.sum(-1)[:, None] * len(a)                          # [N, 1]
        out[:, 2::2] = (js * q[:, None, None, :]).sum((-1, -2)) / count
    return out
