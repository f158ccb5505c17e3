"""What the pages show, shaped from artifacts (no torch): the rows behind every chart and table.

Render writes these rows as JSON data files that a page fetches when a chart scrolls into view;
the chart specs themselves (generator/charts.py) carry no data. Everything here is a pure function
of validated artifacts, so two renders of the same artifacts give the same bytes.
"""

from __future__ import annotations

import codecs
import math
import unicodedata
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np

from .metrics import ATLAS_METRICS, aggregate
from .schema import DLA_TARGETS, dla_component_names
from .tokens import entry_bytes

LN2 = math.log(2)
CHART_TOP_K = 5           # predictions per position drawn in the chart (the artifact holds more)
_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def show_token(text: str | None, hexed: str, tid: int | None = None) -> str:
    """A token as a reader should see it: whitespace and invisible characters made visible,
    partial UTF-8 pieces as their bytes."""
    if text is None:
        return "<" + " ".join(hexed[i:i + 2] for i in range(0, len(hexed), 2)) + ">"
    if text == "":
        return f"[{tid}]" if tid is not None else "[empty]"
    out = []
    for ch in text:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Co", "Cn"):
            out.append(f"⟨U+{ord(ch):04X}⟩")
        else:
            out.append(ch)
    return "".join(out)


TITLE_CHARS = 40          # a prompt's title: its first words, up to about this many characters


def prompt_title(text: str) -> str:
    """A prompt's page title and nav label: the first words of its text (prompt sets have no title
    field per prompt, and the id is a slug like `repeated-list`). Cut at a word boundary, with an
    ellipsis when anything is left out; a text without spaces (Chinese, Japanese) is cut at
    TITLE_CHARS characters."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "(empty prompt)"
    first = " ".join(lines[0].split())
    if len(first) <= TITLE_CHARS:
        return first + (" …" if len(lines) > 1 else "")
    cut = first[:TITLE_CHARS + 1]
    space = cut.rfind(" ")
    cut = cut[:space] if space >= TITLE_CHARS // 2 else first[:TITLE_CHARS]
    return cut.rstrip(" ,;:") + " …"


def token_counts(a: dict[str, Any]) -> dict[str, int]:
    """The one count of a prompt's tokens every page shows: the prompt's own tokens and the
    tokens the model generated after it, named separately (the artifact's token list holds both)."""
    g = a["generation"]       # schema.py checks that the two add up to the token list
    return {"prompt": g["prompt_tokens"], "generated": g["generated_tokens"]}


def bits(logprob: float | None) -> float | None:
    return None if logprob is None else round(-logprob / LN2, 3)


def _labels(a: dict[str, Any]) -> tuple[list[str], list[str]]:
    shown = [show_token(t["text"], t["bytes"], t["id"]) for t in a["tokens"]]
    return shown, [f"{i}: {s}" for i, s in enumerate(shown)]


def token_rows(a: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per token; surprisal is that of the token itself given what came before it."""
    shown, labels = _labels(a)
    pred = a["predictions"]
    rows = []
    for i, t in enumerate(a["tokens"]):
        rows.append({
            "i": i, "label": labels[i], "text": shown[i], "id": t["id"],
            "start": t["start"], "end": t["end"], "generated": bool(t.get("generated")),
            "surprisal": bits(pred["next_logprob"][i - 1]) if i > 0 else None,
            "rank": pred["next_rank"][i - 1] if i > 0 else None,
            "next": shown[i + 1] if i + 1 < len(shown) else "(end)",
        })
    return rows


# A prompt page shows every view indexed by position (predictions, lens, surprisal, attribution,
# the comparison table) as a window of this many positions around the selected one, so that a
# 2,048-token page is about as tall as a 72-token one. The page script's POSITION_WINDOW.
POSITION_WINDOW = 24


def position_window(length: int, pos: int, size: int = POSITION_WINDOW) -> tuple[int, int]:
    """The first and last position (inclusive) of the window of `size` positions around `pos`
    among `length`: centred on it, shifted to stay inside 0 .. length - 1. Mirrors `windowAround`
    in site_src/assets/atlas.js."""
    lo = min(max(pos - size // 2, 0), max(length - size, 0))
    return lo, min(length, lo + size) - 1


MAX_CHAR_PIECES = 16      # byte-level BPE needs at most 4 pieces per character; a longer run is
                          # chained characters (a piece that ends one and starts the next)


def chip_groups(a: dict[str, Any], rows: Sequence[dict[str, Any]],
                generated: bool = True) -> list[dict[str, Any]]:
    """Token chips grouped under the character(s) they form: a run of byte pieces (tokens whose
    bytes are not complete UTF-8 on their own, like `<e0 a4>` `<ac>`) becomes one group whose
    bytes together decode, shown as `char` above its chips. Every other token is a group of one
    with `char` None. `rows` are `token_rows(a)`; `generated=False` leaves out the generated
    tokens. A run that never completes (generation stopped mid-character, or a stray continuation
    byte) stays ungrouped."""
    groups: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    buf = b""

    def flush_single() -> None:
        groups.extend({"char": None, "tokens": [r]} for r in pending)
        pending.clear()

    for t, row in zip(a["tokens"], rows):
        if row["generated"] and not generated:
            break
        if pending and row["generated"] != pending[0]["generated"]:
            flush_single()
        if not pending and t["text"] is not None:
            groups.append({"char": None, "tokens": [row]})
            continue
        buf = (buf if pending else b"") + bytes.fromhex(t["bytes"])
        pending.append(row)
        try:
            text = buf.decode("utf-8")
        except UnicodeDecodeError:
            try:      # incomplete (more pieces to come) or invalid (never completes)?
                codecs.getincrementaldecoder("utf-8")().decode(buf, final=False)
            except UnicodeDecodeError:
                flush_single()
                continue
            if len(pending) >= MAX_CHAR_PIECES:
                flush_single()
            continue
        if len(pending) == 1:   # a lone token that decodes (cannot happen: text was None)
            flush_single()
        else:
            shown = show_token(text, buf.hex())
            if unicodedata.category(shown[0]).startswith("M"):
                shown = "◌" + shown    # a vowel sign or other mark: drawn on a dotted circle
            groups.append({"char": shown, "tokens": list(pending),
                           "codepoints": " ".join(f"U+{ord(c):04X}" for c in text
                                                  if not c.isspace())})
            pending.clear()
    flush_single()
    return groups


def prediction_rows(a: dict[str, Any]) -> list[dict[str, Any]]:
    shown, labels = _labels(a)
    vocab, pred = a["vocab"], a["predictions"]
    rows = []
    for i, (ids, probs) in enumerate(zip(pred["ids"], pred["probs"])):
        actual = shown[i + 1] if i + 1 < len(shown) else "(end)"
        for r, (tid, p) in enumerate(zip(ids[:CHART_TOP_K], probs), start=1):
            v = vocab[str(tid)]
            rows.append({"pos": i, "pl": labels[i], "rank": r, "prob": p, "actual": actual,
                         "token": show_token(v["text"], entry_bytes(v), tid)})
    return rows


def lens_rows(a: dict[str, Any]) -> list[dict[str, Any]]:
    """Logit lens: per layer and position, the top prediction, the ones after it (the stored
    lens_top_k) and the rank of the actual next."""
    _, labels = _labels(a)
    vocab = a["vocab"]

    def shown(tid: int) -> str:
        v = vocab[str(tid)]
        return show_token(v["text"], entry_bytes(v), tid)

    rows = []
    for layer, block in enumerate(a["lens"]):
        for i, (ids, probs) in enumerate(zip(block["ids"], block["probs"])):
            rank = block["next_rank"][i]
            rows.append({"layer": layer, "pos": i, "pl": labels[i],
                         "top": shown(ids[0]), "p": probs[0],
                         # FSI..PDI isolate each token: a right-to-left one (Hebrew, Arabic)
                         # must not swap places with its probability.
                         "runners": ", ".join(f"\u2068{shown(t)}\u2069 ({p:.3f})"
                                              for t, p in zip(ids[1:], probs[1:])),
                         "rank": rank, "lrank": None if rank is None else round(math.log10(rank), 3),
                         "pnext": None if block["next_logprob"][i] is None
                         else _sig(math.exp(block["next_logprob"][i]))})
    return rows


def _sig(x: float) -> float:
    """Three significant figures: 0.00003217 stays 3.22e-05 where round(x, 5) made it 3e-05."""
    return float(f"{x:.3g}")


def head_rows(a: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (layer, head) with every head metric and its key/value group."""
    m = a["model"]
    per_group = m["query_heads"] // m["kv_heads"]
    rows = []
    for layer in range(m["layers"]):
        for head in range(m["query_heads"]):
            row = {"layer": layer, "head": head, "group": head // per_group,
                   "name": f"L{layer}.H{head}"}
            for name in ATLAS_METRICS:
                row[name] = a["metrics"][name][layer][head]
            rows.append(row)
    return rows


def attribution_data(a: dict[str, Any]) -> dict[str, Any]:
    """The direct logit attribution of every position, as the prompt page's script reads it, and
    the heatmap rows of the default view (the last prompt token, its top-1 prediction).

    `top1` / `next`: per position, the stored largest components ({"index", "value", "rest"}, or
    None where there is no next token); `names` gives each index its component's name."""
    m, dla = a["model"], a["attribution"]
    L, H = m["layers"], m["query_heads"]
    shown, labels = _labels(a)
    vocab, top_ids = a["vocab"], a["predictions"]["ids"]
    positions = []
    for i in range(len(a["tokens"])):
        v = vocab[str(top_ids[i][0])]
        positions.append({"i": i, "label": labels[i],
                          "top1": show_token(v["text"], entry_bytes(v), top_ids[i][0]),
                          "next": shown[i + 1] if i + 1 < len(shown) else None})
    per_target = {name: [None if dla["index"][i][j] is None else
                         {"index": dla["index"][i][j], "value": dla["value"][i][j],
                          "rest": dla["rest"][i][j]} for i in range(len(positions))]
                  for j, name in enumerate(DLA_TARGETS)}
    default = a["generation"]["prompt_tokens"] - 1
    return {"layers": L, "heads": H, "names": dla_component_names(L, H), "top_k": dla["top_k"],
            "default": default, "positions": positions, **per_target,
            "dla": dla_head_rows(per_target["top1"][default], L, H)}


DLA_LIST_LENGTH = 8       # contributors listed by name; the page script's LIST_LENGTH


def _signed(v: float) -> str:
    return ("+" if v >= 0 else "\u2212") + f"{abs(v):.3f}"


def dla_list(data: dict[str, Any], pos: int, target: str) -> dict[str, Any]:
    """The "who wrote it" caption and list of one position and target, as the page script's
    `fillDlaList` writes them (render puts the default one into the page, so nothing moves when
    the script draws): the largest contributors, signed, heads with their layer and head."""
    entry, p = data[target][pos], data["positions"][pos]
    if entry is None:
        return {"caption": f"No token came after {p['label']}.", "entries": [], "rest": None}
    token = p["top1"] if target == "top1" else p["next"]
    logit = sum(entry["value"]) + entry["rest"]
    items, listed = [], 0.0
    for c, v in zip(entry["index"][:DLA_LIST_LENGTH], entry["value"]):
        if abs(v) < 0.0005:   # "+0.000" says nothing: such components join the rest
            continue
        name = data["names"][c]
        layer, _, head = name[1:].partition(".H") if name.startswith("L") else ("", "", "")
        items.append({"name": name, "value": _signed(v),
                      "head": (int(layer), int(head)) if head.isdigit() else None})
        listed += v
    rest = sum(entry["value"]) + entry["rest"] - listed
    return {"caption": f"Logit of {token} after {p['label']}: {logit:.3f}. Who wrote it "
                       f"(largest direct contributions):", "entries": items, "rest": _signed(rest)}


def dla_head_rows(entry: dict[str, Any] | None, layers: int, heads: int) -> list[dict[str, Any]]:
    """Heatmap rows (every head) of one position and target; heads outside the stored largest
    components have value None (drawn blank). Mirrors `dlaRows` in site_src/assets/atlas.js."""
    values = dict(zip(entry["index"], entry["value"])) if entry else {}
    top = max((abs(v) for v in values.values()), default=0.0) or 1.0
    rows = []
    for l in range(layers):
        for h in range(heads):
            v = values.get(1 + l * heads + h)
            rows.append({"layer": l, "head": h, "name": f"L{l}.H{h}", "value": v,
                         "share": None if v is None else round(v / top, 4)})
    return rows


def group_rows(a: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for layer, entry in enumerate(a["groups"]):
        for g in entry["groups"]:
            rows.append({"layer": layer, "group": g["group"], "similarity": g["similarity"],
                         "mean_js": g["mean_js"], "between": entry["between"],
                         "heads": ", ".join(str(h) for h in g["heads"])})
    return rows


# --- text-aligned views --------------------------------------------------------------------------

def char_bits(a: dict[str, Any], text: str) -> list[float | None]:
    """Surprisal per character of the prompt: each token's bits spread evenly over the characters
    it covers (tokens that share one character add up). None where no token has a surprisal."""
    out: list[float | None] = [None] * len(text)
    for row in token_rows(a):
        if row["generated"] or row["surprisal"] is None or row["end"] <= row["start"]:
            continue
        share = row["surprisal"] / (row["end"] - row["start"])
        for c in range(row["start"], min(row["end"], len(text))):
            out[c] = (out[c] or 0.0) + share
    return out


def aligned_segments(text: str, artifacts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The prompt cut at every token boundary of every model, with each model's surprisal (bits
    per character) on every segment: the same text, aligned across tokenizers."""
    cuts = {0, len(text)}
    for a in artifacts:
        for t in a["tokens"]:
            if not t.get("generated"):
                cuts.update((t["start"], t["end"]))
    cuts = sorted(c for c in cuts if 0 <= c <= len(text))
    per_model = [char_bits(a, text) for a in artifacts]
    segs = []
    for lo, hi in zip(cuts, cuts[1:]):
        vals = [[v for v in cb[lo:hi] if v is not None] for cb in per_model]
        segs.append({"text": text[lo:hi], "start": lo,
                     "bits": [round(sum(v) / len(v), 2) if v else None for v in vals]})
    return segs


def cumulative_rows(text: str, models: Sequence[str], artifacts: Sequence[dict]) -> list[dict]:
    """Cumulative surprisal (bits) against character offset, one line per model."""
    rows = []
    for name, a in zip(models, artifacts):
        total = 0.0
        for row in token_rows(a):
            if row["generated"] or row["surprisal"] is None:
                continue
            total += row["surprisal"]
            rows.append({"model": name, "char": row["end"], "bits": round(total, 3),
                         "token": row["text"]})
    return rows


def top1_agreement(artifacts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Both models' next-token predictions where both have a token boundary at the same character
    (aligned positions): their top-1 predictions and whether they agree (same text)."""
    a, b = artifacts[0], artifacts[1]

    def ends(x: dict) -> dict[int, int]:
        return {t["end"]: i for i, t in enumerate(x["tokens"]) if not t.get("generated")}

    ea, eb = ends(a), ends(b)
    rows = []
    for end in sorted(ea.keys() & eb.keys()):
        i, j = ea[end], eb[end]
        pa, pb = _top1(a, i), _top1(b, j)
        rows.append({"char": end, "context": a["prompt"]["text"][max(0, end - 24):end],
                     "a": pa, "b": pb, "agree": pa["raw"] == pb["raw"],
                     "a_bits": bits(a["predictions"]["next_logprob"][i]),
                     "b_bits": bits(b["predictions"]["next_logprob"][j])})
    agree = sum(r["agree"] for r in rows)
    return {"rows": rows, "agree": agree, "total": len(rows),
            "rate": round(agree / len(rows), 3) if rows else None}


def _top1(a: dict[str, Any], i: int) -> dict[str, Any]:
    tid = a["predictions"]["ids"][i][0]
    v = a["vocab"][str(tid)]
    return {"text": show_token(v["text"], entry_bytes(v), tid), "raw": entry_bytes(v),
            "prob": a["predictions"]["probs"][i][0]}


# --- across prompts -------------------------------------------------------------------------------

def script_of(text: str) -> str:
    """The dominant writing system of a text, from Unicode character names."""
    counts: Counter[str] = Counter()
    for ch in text:
        cat = unicodedata.category(ch)
        if cat.startswith("L"):
            name = unicodedata.name(ch, "")
            word = name.split(" ")[0] if name else "OTHER"
            script = {"CJK": "Chinese (Han)", "HIRAGANA": "Japanese kana", "KATAKANA":
                      "Japanese kana", "HANGUL": "Korean (Hangul)"}.get(word, word.title())
            counts[script] += 1
        elif cat == "So" or 0x1F000 <= ord(ch) <= 0x1FAFF:
            counts["Emoji"] += 1
    if not counts:
        return "Other"
    (top, n), total = counts.most_common(1)[0], sum(counts.values())
    if top == "Latin" and len(counts) > 1 and n / total < 0.8:
        top = counts.most_common(2)[1][0]
    return top


def tokenizer_stats(prompt: Any, artifact: dict[str, Any]) -> dict[str, Any]:
    """Counts over the prompt's own tokens (never the generated ones)."""
    toks = [t for t in artifact["tokens"] if not t.get("generated")]
    chars = len(prompt.text)
    words = max(1, len(prompt.text.split()))
    return {"tokens": len(toks), "per_char": round(len(toks) / max(chars, 1), 3),
            "per_word": round(len(toks) / words, 2),
            "byte_pieces": sum(1 for t in toks if t["text"] is None)}


def head_atlas(slug: str, keys: Sequence[str], artifacts: Sequence[dict[str, Any]],
               link: Callable[[str, int, int], str] | None = None) -> dict:
    """Every head's metrics averaged over prompts, with the prompt where each shows most
    (`{metric}_best`) and, given `link(prompt key, layer, head) -> URL`, the link that opens that
    prompt's page at this layer and head (`{metric}_href`)."""
    per_prompt = [{n: np.array(a["metrics"][n], dtype=np.float64) for n in ATLAS_METRICS}
                  for a in artifacts]
    mean = aggregate(per_prompt)                                     # name -> [L, H]
    stacked = {n: np.stack([p[n] for p in per_prompt]) for n in ATLAS_METRICS}  # [P, L, H]
    L, H = mean["entropy"].shape
    rows = []
    for layer in range(L):
        for head in range(H):
            row: dict[str, Any] = {"layer": layer, "head": head, "name": f"L{layer}.H{head}"}
            for n in ATLAS_METRICS:
                v = mean[n][layer, head]
                row[n] = None if math.isnan(v) else round(float(v), 4)
                column = stacked[n][:, layer, head]
                if np.all(np.isnan(column)):
                    row[f"{n}_best"] = None
                else:
                    # Entropy shows a head's behaviour most clearly where it is lowest (focused).
                    best = int(np.nanargmin(column) if n == "entropy" else np.nanargmax(column))
                    row[f"{n}_best"] = keys[best]
                if link is not None:
                    row[f"{n}_href"] = (None if row[f"{n}_best"] is None
                                        else link(row[f"{n}_best"], layer, head))
            rows.append(row)
    return {"model": slug, "rows": rows}
