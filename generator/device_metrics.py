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

import torch

from .metrics import HEAD_METRICS

LN2 = math.log(2.0)


def _xlog2x(p: torch.Tensor) -> torch.Tensor:
    """Elementwise p log2 p with 0 log 0 = 0."""
    return torch.special.xlogy(p, p) / LN2


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
    entropy = -_xlog2x(att).sum(-1)                                  # [..., B, H, S]
    prev = torch.zeros((*lead, B, H, S), device=att.device)
    prev[..., 1:] = torch.diagonal(att, offset=-1, dim1=-2, dim2=-1)  # a_{i, i-1}
    first_col = at.starts[:, None, None, None].expand(*lead, B, H, S, 1)
    first = att.gather(-1, first_col)[..., 0]                        # a_{i, start}: [..., B, H, S]
    distance = (att * at.gap).sum(-1)                                # [..., B, H, S]
    induction = (att * at.induction[:, None]).sum(-1)                # [..., B, H, S]
    per_name = {
        "entropy": _masked_mean(entropy, q),
        "prev_token": _masked_mean(prev, q),
        "first_token": _masked_mean(first, q),
        "distance": _masked_mean(distance, q),
        "induction": _masked_mean(induction, at.induction_queries),
    }
    return torch.stack([per_name[name] for name in HEAD_METRICS])   # [5, ..., B, H]


# Bytes of the [rows, G, pairs, S, S] float32 mixture tensor of the Jensen-Shannon divergence that
# one chunk of `group_metrics` may hold (Qwen2.5: 21 pairs per group; at 264 tokens one layer of a
# batch of 8 is about 94 MB).
JS_CHUNK_BYTES = 256 << 20
# Bytes of pair mixtures [N, G, pairs, S, S] that `_group_rows` makes at once (a long prompt's
# layer holds one map, N = 1: then the pairs go in chunks).
MIX_CHUNK_BYTES = 256 << 20


@torch.no_grad()
def group_metrics(att: torch.Tensor, at: Positions, kv_heads: int) -> torch.Tensor:
    """Grouped-query comparison: float32 [..., B, 1 + 2G] = (between-group cosine, then per
    group g its within-group cosine and mean Jensen-Shannon divergence), G = kv_heads.

    att: float [..., B, H, S, S] as in `head_metrics`. Heads h of group g are g*n .. g*n + n - 1,
    n = H / G (transformers' `repeat_kv` order). Rows i >= 1 only, as
    `metrics.group_similarity`: cosine of the heads' flattened maps, JS averaged over head pairs
    and rows. NaN where a group has one head or a row has no query."""
    *lead, B, H, S, _ = att.shape
    flat_att = att.reshape(-1, H, S, S)                              # [N, H, S, S], N = lead*B
    q = at.queries.expand(*lead, B, S).reshape(-1, S)                # [N, S]
    pairs = (H // kv_heads) * (H // kv_heads - 1) // 2
    per_row = max(1, kv_heads * pairs * S * S * 4)
    step = max(1, JS_CHUNK_BYTES // per_row)
    out = torch.cat([_group_rows(flat_att[i:i + step].float(), q[i:i + step], kv_heads)
                     for i in range(0, flat_att.shape[0], step)])
    return out.view(*lead, B, 1 + 2 * kv_heads)


def _group_rows(att: torch.Tensor, q: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """`group_metrics` of N independent maps att [N, H, S, S] with query masks q [N, S]."""
    N, H, S, _ = att.shape
    G, n = kv_heads, H // kv_heads
    rows = att * q[:, None, :, None]                                 # [N, H, S, S], rows i >= 1
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
        ent = _xlog2x(grouped).sum(-1)                               # [N, G, n, S]
        # Entropy of each pair's mixture, a few pairs at a time: all pairs' mixtures at once,
        # [N, G, pairs, S, S], would be (n - 1) / 2 times the attention itself (Qwen2.5: 3x, 710
        # MB a layer at 2,048 tokens). Row by row the same operations: the same values.
        step = max(1, MIX_CHUNK_BYTES // max(1, N * G * S * S * 4))
        mixed = torch.cat([_xlog2x((grouped[:, :, a[i:i + step]] + grouped[:, :, b[i:i + step]])
                                   / 2).sum(-1) for i in range(0, len(a), step)], dim=2)
        js = ((ent[:, :, a] + ent[:, :, b]) / 2 - mixed).clamp_min(0)  # [N, G, pairs, S]
        count = q.sum(-1)[:, None] * len(a)                          # [N, 1]
        out[:, 2::2] = (js * q[:, None, None, :]).sum((-1, -2)) / count
    return out
