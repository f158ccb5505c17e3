"""Per-head attention metrics: pure numpy, imported by both the compute and the render stage.

Every function takes attention as the artifact stores it after `schema.decode_attention`: a float
array [H, T, T] (one layer) or [L, H, T, T] (all layers), rows = query positions i, columns = key
positions j, causal (a_ij = 0 for j > i), every row summing to 1. Metrics are computed in float64.

Head metrics (`head_metrics`, `layer_metrics`) reduce each head to one number per prompt, always
averaging over query positions i >= 1: position 0 can only attend to itself, so it carries no
information about the head. `aggregate` averages them over prompts for the head atlas.

Grouped-query metrics (`group_similarity`, `between_group_similarity`) compare the query heads that
share one key/value head (Qwen2.5) with each other and with heads of other groups. In multi-head
attention (GPT-2) every query head has its own keys and values, so there is nothing to compare
within a group.

`renormalize_without_first` states in Python what the prompt page's "hide first token" toggle
shows (the browser's codec, site_src/assets/attention-codec.js, re-normalizes the rows itself;
tests/test_layout.py checks that both agree), and `METRIC_DEFINITIONS` holds the titles, units,
formulas and meanings that the pages and `site_src/metrics.md` show.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from itertools import combinations

import numpy as np

HEAD_METRICS = ("entropy", "prev_token", "first_token", "distance", "induction")

METRIC_DEFINITIONS: dict[str, dict[str, str]] = {
    "entropy": {
        "title": "Attention entropy",
        "unit": "bits",
        "formula": "mean over i≥1 of −Σ_j a_ij log2 a_ij (0 log 0 = 0)",
        "meaning": "A high value means the head spreads its attention over many tokens; "
                   "0 means every query attends to exactly one token.",
    },
    "prev_token": {
        "title": "Previous-token attention",
        "unit": "fraction of attention",
        "formula": "mean over i≥1 of a_i,i−1",
        "meaning": "A high value means the head mostly looks at the token just before the "
                   "current one (a previous-token head).",
    },
    "first_token": {
        "title": "First-token (sink) attention",
        "unit": "fraction of attention",
        "formula": "mean over i≥1 of a_i,0",
        "meaning": "A high value means the head parks most of its attention on the first token, "
                   "an attention sink that often means 'nothing to do here'.",
    },
    "distance": {
        "title": "Mean attention distance",
        "unit": "tokens",
        "formula": "mean over i≥1 of Σ_j a_ij (i − j)",
        "meaning": "A high value means the head reads tokens far back in the prompt; "
                   "a low value means it reads nearby tokens.",
    },
    "induction": {
        "title": "Induction score",
        "unit": "fraction of attention",
        "formula": "mean over i with S_i ≠ ∅ of Σ_{k∈S_i} a_ik, "
                   "S_i = {j+1 : j+1 ≤ i−1, t_j = t_i}",
        "meaning": "A high value means that when the current token appeared before, the head "
                   "attends to the token that followed it there (an induction head, "
                   "Olsson et al. 2022).",
    },
}

GROUP_METRIC_DEFINITIONS: dict[str, dict[str, str]] = {
    "similarity": {
        "title": "Within-group similarity",
        "unit": "cosine",
        "formula": "mean over pairs of heads (h, h′) in a group of cos(A_h, A_h′), "
                   "A_h = rows i≥1 of head h flattened",
        "meaning": "A value near 1 means the query heads that share one key/value head attend "
                   "in almost the same way.",
    },
    "mean_js": {
        "title": "Within-group Jensen-Shannon divergence",
        "unit": "bits",
        "formula": "mean over pairs (h, h′) in a group and over i≥1 of "
                   "JS(a_h,i , a_h′,i), JS(p, q) = ½ KL(p‖m) + ½ KL(q‖m), m = (p + q)/2",
        "meaning": "A value near 0 means the heads' attention rows are the same distributions; "
                   "1 bit means they never attend to the same tokens.",
    },
}


# --- validation and small helpers ---------------------------------------------------------------

def _check_layer(att: np.ndarray) -> np.ndarray:
    """Return `att` as float64 [H, T, T], or raise ValueError naming the shape at fault."""
    att = np.asarray(att, dtype=np.float64)
    if att.ndim != 3 or att.shape[1] != att.shape[2]:
        raise ValueError(f"attention must be [heads, T, T], got shape {att.shape}")
    return att


def _mean_over_queries(per_row: np.ndarray) -> np.ndarray:
    """Mean of [H, T] per-row values over query positions i >= 1 -> [H]; NaN when T < 2."""
    if per_row.shape[1] < 2:
        return np.full(per_row.shape[0], np.nan)
    return per_row[:, 1:].mean(axis=1)


def _xlog2x(p: np.ndarray) -> np.ndarray:
    """Elementwise p log2 p with 0 log 0 = 0."""
    safe = np.where(p > 0, p, 1.0)
    return np.where(p > 0, p * np.log2(safe), 0.0)


def _nanmean(values: np.ndarray, axis=None) -> np.ndarray:
    """`np.nanmean` without the 'Mean of empty slice' warning (all-NaN -> NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(values, axis=axis)


# --- head metrics --------------------------------------------------------------------------------

def row_entropy(att: np.ndarray) -> np.ndarray:
    """Entropy in bits of every row: H_i = −Σ_j a_ij log2 a_ij -> [H, T]."""
    return -_xlog2x(_check_layer(att)).sum(axis=2)


def entropy(att: np.ndarray) -> np.ndarray:
    """Mean row entropy in bits over query positions i >= 1 -> [H]."""
    return _mean_over_queries(row_entropy(att))


def prev_token(att: np.ndarray) -> np.ndarray:
    """Mean over i >= 1 of a_{i,i-1}, the weight on the previous token -> [H]."""
    att = _check_layer(att)
    t = att.shape[1]
    sub = np.zeros((att.shape[0], t))                    # [H, T], a_{i,i-1}, row 0 unused
    sub[:, 1:] = np.diagonal(att, offset=-1, axis1=1, axis2=2)
    return _mean_over_queries(sub)


def first_token(att: np.ndarray) -> np.ndarray:
    """Mean over i >= 1 of a_{i,0}, the mass on the first token (the sink) -> [H]."""
    att = _check_layer(att)
    return _mean_over_queries(att[:, :, 0])              # [H, T] -> [H]


def distance(att: np.ndarray) -> np.ndarray:
    """Mean attention distance in tokens: mean over i >= 1 of Σ_j a_ij (i − j) -> [H]."""
    att = _check_layer(att)
    pos = np.arange(att.shape[1])
    gap = np.maximum(pos[:, None] - pos[None, :], 0)     # [T, T], i − j below the diagonal
    return _mean_over_queries((att * gap).sum(axis=2))   # [H, T] -> [H]


def induction_targets(token_ids: Sequence[int]) -> np.ndarray:
    """Boolean [T, T] mask M with M[i, k] true iff k is in the induction target set S_i.

    S_i = { j+1 : 0 ≤ j, j+1 ≤ i−1, t_j = t_i }: the positions right after every earlier
    occurrence j of the current token t_i, excluding the query position i itself (which is what
    j = i−1 would point to when a token repeats immediately).
    """
    ids = np.asarray(token_ids)
    t = ids.shape[0]
    pos = np.arange(t)
    same = ids[:, None] == ids[None, :]                  # [T, T], same[i, j] = (t_i == t_j)
    mask = np.zeros((t, t), dtype=bool)                  # [T, T], mask[i, k], k = j + 1
    mask[:, 1:] = same[:, :-1]
    return mask & (pos[None, :] <= pos[:, None] - 1)


def induction(att: np.ndarray, token_ids: Sequence[int]) -> np.ndarray:
    """Induction score per head -> [H] (Olsson et al. 2022, "In-context Learning and Induction
    Heads"): how much a head attends to the token that followed earlier occurrences of the
    current token.

        S_i   = { j+1 : j+1 ≤ i−1, t_j = t_i }          (see `induction_targets`)
        score = mean over the positions i with S_i ≠ ∅ of Σ_{k ∈ S_i} a_ik

    S_i is a set, so a target is counted once even if reached twice. A perfect induction head
    scores 1; the score is NaN for every head when no token repeats (no S_i is non-empty).
    """
    att = _check_layer(att)
    if len(token_ids) != att.shape[1]:
        raise ValueError(f"{len(token_ids)} token ids for attention over {att.shape[1]} tokens")
    mask = induction_targets(token_ids)                  # [T, T]
    queries = mask.any(axis=1)                           # [T], positions with S_i ≠ ∅
    if not queries.any():
        return np.full(att.shape[0], np.nan)
    on_target = (att * mask).sum(axis=2)                 # [H, T]
    return on_target[:, queries].mean(axis=1)


def head_metrics(att: np.ndarray, token_ids: Sequence[int]) -> dict[str, np.ndarray]:
    """Every head metric of one layer: {name: float64 [H]} for the names in `HEAD_METRICS`.

    `att` is [H, T, T]; `token_ids` has T entries. All metrics average over query positions
    i >= 1 (NaN when T < 2); `induction` is NaN when no token repeats. Formulas are in
    `METRIC_DEFINITIONS` and in each metric's function.
    """
    att = _check_layer(att)
    if len(token_ids) != att.shape[1]:
        raise ValueError(f"{len(token_ids)} token ids for attention over {att.shape[1]} tokens")
    return {
        "entropy": entropy(att),
        "prev_token": prev_token(att),
        "first_token": first_token(att),
        "distance": distance(att),
        "induction": induction(att, token_ids),
    }


def layer_metrics(att_layers: np.ndarray, token_ids: Sequence[int]) -> dict[str, np.ndarray]:
    """`head_metrics` for every layer of [L, H, T, T] attention -> {name: float64 [L, H]}."""
    att_layers = np.asarray(att_layers)
    if att_layers.ndim != 4:
        raise ValueError(f"attention must be [layers, heads, T, T], got shape {att_layers.shape}")
    per_layer = [head_metrics(layer, token_ids) for layer in att_layers]
    return {name: np.stack([m[name] for m in per_layer]) for name in HEAD_METRICS}  # [L, H]


def aggregate(per_prompt: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """NaN-aware mean over prompts: {name: [P, ...] stacked -> nanmean over P}.

    Works for [H] (`head_metrics`) and [L, H] (`layer_metrics`) arrays alike. A head is NaN only
    where every prompt left it undefined (e.g. `induction` when no prompt repeats a token). All
    dictionaries must hold the same metric names.
    """
    if not per_prompt:
        raise ValueError("aggregate needs the metrics of at least one prompt")
    names = list(per_prompt[0])
    for m in per_prompt[1:]:
        if set(m) != set(names):
            raise ValueError(f"metric names differ between prompts: {sorted(names)} vs {sorted(m)}")
    return {name: _nanmean(np.stack([np.asarray(m[name], dtype=np.float64) for m in per_prompt]),
                           axis=0)
            for name in names}


# --- grouped-query attention ---------------------------------------------------------------------

def kv_groups(heads: int, kv_heads: int) -> list[list[int]]:
    """Query heads per key/value group: head h belongs to group g = h // (heads // kv_heads).

    This is transformers' `repeat_kv` order: key/value head g is repeated for query heads
    g·n … g·n + n − 1, n = heads // kv_heads.
    """
    if kv_heads < 1 or heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot be split into {kv_heads} key/value groups")
    n = heads // kv_heads
    return [list(range(g * n, (g + 1) * n)) for g in range(kv_heads)]


def _query_rows(att: np.ndarray) -> np.ndarray:
    """Rows i >= 1 of every head: [H, T, T] -> [H, T−1, T]."""
    return _check_layer(att)[:, 1:, :]


def cosine_matrix(att: np.ndarray) -> np.ndarray:
    """Cosine similarity between heads' flattened maps (rows i >= 1) -> [H, H].

    cos(A_h, A_h′) = <A_h, A_h′> / (|A_h| |A_h′|); NaN where a map has no rows (T < 2).
    """
    rows = _query_rows(att)
    flat = rows.reshape(rows.shape[0], -1)               # [H, (T−1)·T]
    norm = np.linalg.norm(flat, axis=1)                  # [H]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (flat @ flat.T) / np.outer(norm, norm)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits along the last axis (0 ≤ JS ≤ 1).

    JS(p, q) = ½ KL(p‖m) + ½ KL(q‖m), m = (p + q)/2, written as
    H(m) − ½ H(p) − ½ H(q) with H(x) = −Σ x log2 x (0 log 0 = 0).
    """
    m = (p + q) / 2
    js = (_xlog2x(p).sum(-1) + _xlog2x(q).sum(-1)) / 2 - _xlog2x(m).sum(-1)
    return np.maximum(js, 0.0)                           # clip float noise below 0


def _mean_pairwise_js(rows: np.ndarray, heads: list[int]) -> float:
    """Mean over head pairs and over rows i >= 1 of the JS divergence; NaN for < 2 heads/rows.

    All pairs of the group at once: js_divergence written out over [n, n, T−1] (n = heads)."""
    if len(heads) < 2 or rows.shape[1] == 0:
        return float("nan")
    r = rows[heads]                                      # [n, T−1, T]
    ent = _xlog2x(r).sum(-1)                             # [n, T−1]
    m = (r[:, None] + r[None, :]) / 2                    # [n, n, T−1, T]
    js = np.maximum((ent[:, None] + ent[None, :]) / 2 - _xlog2x(m).sum(-1), 0.0)  # [n, n, T−1]
    a, b = np.triu_indices(len(heads), k=1)
    return float(js[a, b].mean())


def group_similarity(att: np.ndarray, kv_heads: int) -> list[dict]:
    """Within-group comparison of the query heads that share a key/value head.

    Returns one dict per group g (see `kv_groups`):
        {"group": g, "heads": [h, ...],
         "similarity": mean over pairs of cos(A_h, A_h′)  (rows i >= 1 flattened),
         "mean_js": mean over pairs and rows i >= 1 of JS(a_h,i, a_h′,i) in bits}

    When kv_heads == H (multi-head attention, GPT-2) each query head has its own keys and values:
    every group is a single head, so "similarity" and "mean_js" are NaN.
    """
    att = _check_layer(att)
    cos = cosine_matrix(att)                             # [H, H]
    rows = _query_rows(att)                              # [H, T−1, T]
    out = []
    for g, heads in enumerate(kv_groups(att.shape[0], kv_heads)):
        pairs = list(combinations(heads, 2))
        sim = float(_nanmean(np.array([cos[a, b] for a, b in pairs]))) if pairs else float("nan")
        out.append({"group": g, "heads": heads, "similarity": sim,
                    "mean_js": _mean_pairwise_js(rows, heads)})
    return out


def between_group_similarity(att: np.ndarray, kv_heads: int) -> float:
    """Mean cos(A_h, A_h′) over pairs of heads in different key/value groups (NaN for one group).

    The baseline for `group_similarity`: within-group similarity above it means heads that share
    keys and values also attend alike.
    """
    att = _check_layer(att)
    groups = kv_groups(att.shape[0], kv_heads)
    if len(groups) < 2:
        return float("nan")
    group_of = np.repeat(np.arange(len(groups)), len(groups[0]))  # [H]
    cos = cosine_matrix(att)                                       # [H, H]
    between = group_of[:, None] != group_of[None, :]               # [H, H]
    return float(_nanmean(cos[between]))


# --- attention-sink toggle -----------------------------------------------------------------------

def renormalize_without_first(att: np.ndarray) -> np.ndarray:
    """Attention with the first key removed: a′_ij = a_ij / Σ_{k≥1} a_ik for j ≥ 1, a′_i0 = 0.

    Same shape as `att` ([H, T, T] or [L, H, T, T]) and same float dtype. Row 0 (which can only
    attend to key 0) becomes all zeros, and so does any row that put all of its mass on key 0;
    every other row sums to 1.
    """
    att = np.asarray(att)
    dtype = att.dtype if np.issubdtype(att.dtype, np.floating) else np.float64
    rest = np.array(att, dtype=np.float64)               # [..., T, T]
    rest[..., 0] = 0.0
    total = rest.sum(axis=-1, keepdims=True)             # [..., T, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(total > 0, rest / total, 0.0)
    return out.astype(dtype)
