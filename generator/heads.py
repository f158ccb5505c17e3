"""Every head of one model across every prompt: what its page shows (render stage, numpy, no torch).

`model_heads` reads a model's artifacts once, layer by layer (`schema.decode_attention`: the stored
attention, within 1/256 of the model's own), and reduces them per query head to:

- `metrics`: each head metric's value on every prompt (the artifact's `metrics`, computed from the
  full-precision attention), its mean and its rank among all heads of the model;
- `distance`: a histogram of query-key distance i - j, weighted by attention and pooled over every
  query row i >= 1 of every prompt, divided by the number of those rows (so the bins and the
  first token add up to 1), with the first token (j = 0) a bin of its own (`DISTANCE_BINS`);
- `keys`: the key tokens that receive the most of that attention (position 0 apart, as "first
  token"), each with the query tokens it receives the most from;
- `itself`: the prompts and positions where its defining metric is highest, one position per
  prompt (`POSITION_VALUE` says what a position's value is);
- `dla`: its direct contribution to the logit of the next token per prompt (the artifact's
  `metrics.direct_logit`), and the positions where its stored contribution is largest;
- `group`: under grouped-query attention, the query heads that share its key/value head, with the
  cosine similarity of their stored attention (mean over prompts, as `metrics.cosine_matrix`);
- `ov`: its OV circuit (generator/ov.py's artifact), when the compute stage wrote one.

`site_src/metrics.md` ("Head pages") defines every number; nothing here rounds twice.
"""

from __future__ import annotations

import gzip
import json
import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .metrics import ATLAS_METRICS, HEAD_METRICS, cosine_matrix, induction_targets, kv_groups
from .pagedata import show_token
from .schema import decode_attention
from .tokens import entry_bytes

# Distance bins (first, last) in tokens, last None: no end. Single distances up to 8, then
# doublings: a previous-token head peaks in bin 1, a head that reads far back in a wide bin.
DISTANCE_BINS: tuple[tuple[int, int | None], ...] = (
    (0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7), (8, 15), (16, 31), (32, 63),
    (64, 127), (128, 255), (256, None))
KEY_TOKENS = 8            # key tokens listed per head
QUERY_TOKENS = 3          # query tokens listed per key token
ITSELF = 6                # prompts listed where the head is most itself
DLA_POSITIONS = 5         # positions listed where it wrote the most
FIRST = "\u0000first"      # the label of position 0 among key tokens (no token is shown so)
IMAGE_SIZE = 32           # the small pattern images: at most this many cells a side (max-pooled)

# Which way a metric shows a head "most itself": entropy when it is lowest (most focused).
LOWER_IS_STRONGER = {"entropy"}
# The defining metric of a head that was not planted: where its rank among the model's heads is
# best, ties in this order (the mechanisms first).
DEFINING_ORDER = ("induction", "prev_token", "first_token", "entropy", "distance")
POSITION_VALUE = {
    "prev_token": "a_i,i−1",
    "first_token": "a_i,0",
    "induction": "Σ_{k∈S_i} a_ik (positions with S_i ≠ ∅)",
    "entropy": "−Σ_j a_ij log2 a_ij (lowest first)",
    "distance": "Σ_j a_ij (i − j)",
}


OV_FORMAT = "model-atlas-ov"     # the `format` of generator/ov.py's artifact


def read_ov(path: Path) -> dict[str, Any] | None:
    """The OV artifact (generator/ov.py, gzipped JSON) at `path`, or None when it is missing or
    unreadable."""
    try:
        data = json.loads(gzip.decompress(path.read_bytes()).decode("utf-8"))
    except (OSError, ValueError, EOFError):
        return None
    return data if isinstance(data, dict) and data.get("format") == OV_FORMAT else None


def bin_label(first: int, last: int | None) -> str:
    return str(first) if first == last else (f"{first}+" if last is None else f"{first}–{last}")


def _bin_of_distance(max_t: int) -> np.ndarray:
    """[max_t] the bin index of every distance 0 .. max_t - 1."""
    out = np.empty(max_t, dtype=np.int64)
    for b, (first, last) in enumerate(DISTANCE_BINS):
        out[first:(max_t if last is None else last + 1)] = b
    return out


def _per_position(name: str, att: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """[H, T] the value of metric `name` at every query position (NaN where undefined, row 0
    always), as `POSITION_VALUE` states."""
    H, T, _ = att.shape
    out = np.full((H, T), np.nan)
    if T < 2:
        return out
    if name == "prev_token":
        out[:, 1:] = np.diagonal(att, offset=-1, axis1=1, axis2=2)
    elif name == "first_token":
        out[:, 1:] = att[:, 1:, 0]
    elif name == "induction":
        mask = induction_targets(ids)
        rows = mask.any(axis=1)
        out[:, rows] = (att * mask).sum(axis=2)[:, rows]
    elif name == "entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.where(att > 0, att * np.log2(np.where(att > 0, att, 1)), 0.0)
        out[:, 1:] = -x.sum(axis=2)[:, 1:]
    elif name == "distance":
        pos = np.arange(T)
        gap = np.maximum(pos[:, None] - pos[None, :], 0)
        out[:, 1:] = (att * gap).sum(axis=2)[:, 1:]
    return out


def pattern_image(att: np.ndarray, pos: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """One head's attention rows 0 .. pos (keys 0 .. pos) as at most size x size cells, each the
    largest weight it covers (max pooling keeps a sharp diagonal visible): float [rows, cols]."""
    block = att[:pos + 1, :pos + 1]
    n = block.shape[0]
    if n <= size:
        return block.astype(np.float64)
    edges = np.linspace(0, n, size + 1).astype(int)
    rows = np.maximum.reduceat(block, edges[:-1], axis=0)
    return np.maximum.reduceat(rows, edges[:-1], axis=1).astype(np.float64)


def _rank(values: np.ndarray, value: float, lower_first: bool) -> int:
    """1-based rank of `value` among `values` (NaN left out), strongest first."""
    v = values[~np.isnan(values)]
    return int((v < value).sum() + 1) if lower_first else int((v > value).sum() + 1)


def model_heads(keys: Sequence[str], artifacts: Sequence[dict[str, Any]],
                ov: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Everything the head pages of one model show: one dict per query head, layer-major.
    `keys`: the prompt keys of `artifacts`, in order; `ov`: the model's OV artifact or None."""
    if not artifacts:
        return []
    m = artifacts[0]["model"]
    L, H, KV = m["layers"], m["query_heads"], m["kv_heads"]
    planted = {(p["layer"], p["head"]): p for p in m.get("planted_heads") or []}
    P = len(artifacts)
    # --- per prompt values from the artifacts' metrics: [P, L, H] ------------------------------
    values = {n: np.array([a["metrics"][n] for a in artifacts], dtype=np.float64)
              for n in ATLAS_METRICS}
    with warnings.catch_warnings():         # a metric undefined on every prompt: NaN, no warning
        warnings.simplefilter("ignore", RuntimeWarning)
        means = {n: np.nanmean(v, axis=0) for n, v in values.items()}            # [L, H]
    ids = [[t["id"] for t in a["tokens"]] for a in artifacts]
    shown = [[show_token(t["text"], t["bytes"], t["id"]) for t in a["tokens"]] for a in artifacts]
    # Every shown token of the model's prompts as an integer (0: the first token, position 0,
    # pooled apart whatever it is), and every token id: bincounts instead of dictionaries.
    labels = [FIRST] + sorted({s for row in shown for s in row})
    label_of = {s: k for k, s in enumerate(labels)}
    kidx = [np.array([0] + [label_of[s] for s in row[1:]], dtype=np.int64) for row in shown]
    all_ids = sorted({t for row in ids for t in row})
    id_of = {t: k for k, t in enumerate(all_ids)}
    tidx = [np.array([id_of[t] for t in row], dtype=np.int64) for row in ids]
    max_t = max(len(i) for i in ids)
    bin_of = _bin_of_distance(max(max_t, 1))
    groups = kv_groups(H, KV)
    dla_found = _dla_positions(keys, artifacts, shown)
    heads: list[dict[str, Any]] = []
    for layer in range(L):
        dist = np.zeros((H, len(DISTANCE_BINS)))
        first = np.zeros(H)
        rows_total = 0
        key_mass = np.zeros((H, len(labels)))
        id_mass = np.zeros((H, len(all_ids)))
        best: dict[str, list[list[tuple[float, int, int]]]] = {
            n: [[] for _ in range(H)] for n in HEAD_METRICS}
        cos_sum, cos_n = np.zeros((H, H)), np.zeros((H, H))
        kept: list[np.ndarray | None] = []        # rows i >= 1 of every prompt, for pass two
        for p, a in enumerate(artifacts):
            att = decode_attention(a, layer)                                  # [H, T, T] float32
            T = att.shape[1]
            if T < 2:
                kept.append(None)
                continue
            rows = att[:, 1:, :]                                              # [H, T-1, T]
            kept.append(rows)
            rows_total += T - 1
            gap = np.arange(1, T)[:, None] - np.arange(T)[None, :]            # [T-1, T], i - j
            col = rows.sum(axis=1, dtype=np.float64)                          # [H, T] per key
            first += col[:, 0]
            b = np.where(gap >= 0, bin_of[np.clip(gap, 0, None)], len(DISTANCE_BINS))
            b[:, 0] = len(DISTANCE_BINS)                                      # key 0: apart
            flat_b = b.ravel()
            for h in range(H):
                dist[h] += np.bincount(flat_b, weights=rows[h].ravel(),
                                       minlength=len(DISTANCE_BINS) + 1)[:-1]
                key_mass[h] += np.bincount(kidx[p], weights=col[h], minlength=len(labels))
                id_mass[h] += np.bincount(tidx[p], weights=col[h], minlength=len(all_ids))
            for n in HEAD_METRICS:
                per = _per_position(n, att, ids[p])                           # [H, T]
                lower = n in LOWER_IS_STRONGER
                # Each head's best position; ties go to the latest (the most context before it).
                rev = np.where(np.isnan(per), np.inf if lower else -np.inf, per)[:, ::-1]
                at = T - 1 - (rev.argmin(axis=1) if lower else rev.argmax(axis=1))   # [H]
                for h in np.nonzero(~np.isnan(per[np.arange(H), at]))[0]:
                    best[n][h].append((float(per[h, at[h]]), p, int(at[h])))
            if KV < H:
                c = cosine_matrix(att)
                ok = ~np.isnan(c)
                cos_sum[ok] += c[ok]
                cos_n[ok] += 1
        # Pass two, over the rows kept: for each head's top key tokens, the query tokens that
        # give them their attention.
        top = [np.lexsort((np.arange(len(labels)), -key_mass[h]))[:KEY_TOKENS] for h in range(H)]
        from_q = np.zeros((H, KEY_TOKENS, len(labels)))
        for p, rows in enumerate(kept):
            if rows is None:
                continue
            q_labels = np.array([label_of[s] for s in shown[p][1:]], dtype=np.int64)
            for h in range(H):
                for r, k in enumerate(top[h]):
                    cols = kidx[p] == k
                    if cols.any():
                        w = rows[h][:, cols].sum(axis=1, dtype=np.float64)    # [T-1]
                        from_q[h, r] += np.bincount(q_labels, weights=w, minlength=len(labels))
        for h in range(H):
            total = key_mass[h].sum() or 1.0
            keys_out = []
            for r, k in enumerate(top[h]):
                if key_mass[h, k] <= 0:
                    break
                qs = np.lexsort((np.arange(len(labels)), -from_q[h, r]))[:QUERY_TOKENS]
                keys_out.append({"token": None if k == 0 else labels[k],
                                 "share": float(key_mass[h, k] / total),
                                 "queries": [{"token": labels[q],
                                              "share": float(from_q[h, r, q] / key_mass[h, k])}
                                             for q in qs if from_q[h, r, q] > 0]})
            heads.append(_head(layer, h, L, H, KV, keys, artifacts, shown, values, means, planted,
                               dist[h] / max(rows_total, 1), first[h] / max(rows_total, 1),
                               keys_out, dict(zip(all_ids, id_mass[h])),
                               {n: best[n][h] for n in HEAD_METRICS},
                               groups[h // (H // KV)], cos_sum[h] / np.maximum(cos_n[h], 1),
                               cos_n[h], ov, dla_found))
    _add_images(heads, artifacts)
    return heads


def _head(layer: int, h: int, L: int, H: int, KV: int, keys: Sequence[str],
          artifacts: Sequence[dict[str, Any]], shown: list[list[str]],
          values: dict[str, np.ndarray], means: dict[str, np.ndarray],
          planted: dict[tuple[int, int], dict[str, Any]], dist: np.ndarray, first: float,
          keys_out: list[dict[str, Any]], id_mass: dict[int, float],
          best: dict[str, list[tuple[float, int, int]]],
          group: list[int], cos: np.ndarray, cos_n: np.ndarray,
          ov: dict[str, Any] | None, dla_found: dict[int, list[dict[str, Any]]]
          ) -> dict[str, Any]:
    name = f"L{layer}.H{h}"
    metrics = {}
    for n in ATLAS_METRICS:
        col = values[n][:, layer, h]
        mean = means[n][layer, h]
        everyone = means[n].ravel()
        metrics[n] = {
            "per_prompt": [None if math.isnan(v) else float(v) for v in col],
            "mean": None if math.isnan(mean) else float(mean),
            "rank": None if math.isnan(mean) else _rank(everyone, mean, n in LOWER_IS_STRONGER),
            "of": int((~np.isnan(everyone)).sum()),
            "all_means": [None if math.isnan(v) else float(v) for v in everyone],
            "prompts": int((~np.isnan(col)).sum()),
            "std": None if np.isnan(col).all() else float(np.nanstd(col)),
        }
    plant = planted.get((layer, h))
    if plant is not None:
        defining = plant["metric"]
    else:
        ranked = [(metrics[n]["rank"] / max(metrics[n]["of"], 1), i, n)
                  for i, n in enumerate(DEFINING_ORDER) if metrics[n]["rank"] is not None]
        defining = min(ranked)[2] if ranked else "entropy"
    lower = defining in LOWER_IS_STRONGER
    cands = sorted(best.get(defining, []), key=lambda x: (x[0] if lower else -x[0], -x[2], x[1]))
    itself = [{"key": keys[p], "pos": i, "value": v, "token": shown[p][i], "p": p}
              for v, p, i in cands[:ITSELF]]
    return {
        "layer": layer, "head": h, "name": name, "planted": plant, "defining": defining,
        "metrics": metrics, "itself": itself,
        "distance": [{"label": bin_label(*DISTANCE_BINS[k]), "share": float(dist[k])}
                     for k in range(len(DISTANCE_BINS))],
        "first_share": float(first),
        "keys": keys_out,
        "dla": dla_found.get(1 + layer * H + h, []),
        "group": None if KV >= H else {
            "index": h // (H // KV),
            "members": [{"head": g, "name": f"L{layer}.H{g}",
                         "cosine": None if cos_n[g] == 0 else float(cos[g])}
                        for g in group if g != h]},
        "ov": _ov_of(layer, h, H, ov, id_mass),
    }


def _dla_positions(keys: Sequence[str], artifacts: Sequence[dict[str, Any]],
                   shown: list[list[str]]) -> dict[int, list[dict[str, Any]]]:
    """Per component, the positions where its stored contribution to the next token's logit is
    largest in size (the artifact's `attribution`, target "next"; a position where it is not among
    the stored components is not a candidate, nor one stored as 0.000), DLA_POSITIONS at most."""
    found: dict[int, list[tuple[float, int, int, float]]] = defaultdict(list)
    for p, a in enumerate(artifacts):
        dla = a["attribution"]
        for i, (idx, val) in enumerate(zip(dla["index"], dla["value"])):
            if idx[1] is None:
                continue
            for c, v in zip(idx[1], val[1]):
                if abs(v) >= 0.0005:        # "+0.000" says nothing (as the prompt page's list)
                    found[c].append((-abs(v), p, i, v))
    out = {}
    for c, rows in found.items():
        rows.sort()
        out[c] = [{"key": keys[p], "pos": i, "value": v, "token": shown[p][i],
                   "next": shown[p][i + 1] if i + 1 < len(shown[p]) else None}
                  for _, p, i, v in rows[:DLA_POSITIONS]]
    return out


def _vocab_label(ov: dict[str, Any], tid: int) -> str:
    e = (ov.get("vocab") or {}).get(str(tid))
    return f"[{tid}]" if e is None else show_token(e["text"], entry_bytes(e), tid)


def _ov_of(layer: int, h: int, H: int, ov: dict[str, Any] | None,
           id_mass: dict[int, float]) -> dict[str, Any] | None:
    """The head's OV circuit: its copying score over the sample rows, and the rows of the
    source tokens it attends to most among those the artifact holds."""
    if ov is None:
        return None
    k = layer * H + h
    rows = ov["rows"]
    sources = sorted((t for t in map(int, rows) if id_mass.get(t, 0) > 0),
                     key=lambda t: (-id_mass[t], t))[:5]

    def row(t: int) -> dict[str, Any]:
        r = rows[str(t)]
        up_ids, up_vals = r["up"][k]
        down_ids, down_vals = r["down"][k]
        return {"source": _vocab_label(ov, t), "rank": r["rank"][k],
                "up": [{"token": _vocab_label(ov, i), "value": v} for i, v in zip(up_ids, up_vals)],
                "down": [{"token": _vocab_label(ov, i), "value": v}
                         for i, v in zip(down_ids, down_vals)]}
    copy = ov["copy"][k]
    med = float(copy["median_rank"])
    return {"top1": copy["top1"], "median_rank": med,
            "median_text": f"{med:,.0f}" if med.is_integer() else f"{med:,.1f}",
            "sample": len(ov["sample"]), "rows": [row(t) for t in sources]}


def _add_images(heads: list[dict[str, Any]], artifacts: Sequence[dict[str, Any]]) -> None:
    """The small pattern image of every listed (prompt, position): one decode per (prompt,
    layer)."""
    need: dict[tuple[int, int], list[tuple[dict[str, Any], int]]] = defaultdict(list)
    for hd in heads:
        for entry in hd["itself"]:
            need[(entry["p"], hd["layer"])].append((entry, hd["head"]))
    for (p, layer), entries in sorted(need.items()):
        att = decode_attention(artifacts[p], layer)
        for entry, h in entries:
            entry["image"] = pattern_image(att[h], entry["pos"])


