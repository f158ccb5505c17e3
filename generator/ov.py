"""Each head's OV circuit through the unembedding, from the weights alone (compute stage, torch).

What a head writes when it attends to a token t, read straight off the weights (Elhage et al. 2021,
*A Mathematical Framework for Transformer Circuits*), with its norms approximated as the page and
`site_src/metrics.md` say:

    o_t = ( norm_l(E[t]) W_V^h + b_V^h ) W_O^h  ->  logits  o_t . u_v,   u_v = w_f * W_U[v]
                                                          (LayerNorm: u_v centred)

E[t] the token's input embedding alone (no position), norm_l layer l's own input norm applied to
it (weight and bias), W_V^h / b_V^h the value weights of head h's key/value head (shared within a
group under grouped-query attention), W_O^h its slice of the output projection, w_f the final
norm's weight and W_U the unembedding. The final norm's scale 1/s is left out (set to 1): it is the
same positive number for every output token, so it changes no order, only the size of every value.

Per head and source token it keeps the `top` output tokens it raises most and lowers most and the
rank of the source token itself among all outputs (1: the head raises the token it reads more
than any other: it copies). The source tokens are a fixed, seeded sample of SAMPLE_ROWS vocabulary
rows (the copying score's rows, the same for every build of a model) and the FREQUENT most
frequent tokens of the model's prompts (where heads put much of their attention: the first
token, punctuation, common words). Every row costs a [hidden, vocabulary] product per head
(4.6 x 10^10 multiply-adds per source token for Qwen2.5-0.5B's 336 heads), so the set is kept
small.

The artifact (`layout.ov_path`, documented in site_src/artifact-format.md) is keyed by the model's
id and revision and these settings: a rebuild computes only the rows of source tokens it does not
hold yet (a new prompt's new tokens), never the others again, and a model whose artifact holds
every token is not loaded for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from . import layout
from .heads import OV_FORMAT, read_ov  # the reader is torch-free: the render stage reads it too
from .store import atomic_write_bytes, canonical_json, content_key, gzip_text

OV_VERSION = 1
SAMPLE_ROWS = 32      # vocabulary rows drawn for the copying score
FREQUENT = 8          # and the prompts' most frequent tokens (their most attended, often)
SAMPLE_SEED = 0
TOP = 5               # output tokens kept raised and lowered per head and source token
CHUNK = 64            # source rows per input norm call
ROWS_BYTES = 1 << 28  # the [heads x rows, vocabulary] float32 logits held at once, at most

Log = Callable[[str], None]


def ov_key(model_id: str, revision: str) -> str:
    """The identity of a model's OV artifact: what changes its numbers."""
    return content_key("ov", OV_VERSION, model_id, revision, SAMPLE_ROWS, SAMPLE_SEED, TOP)


def sample_ids(vocab: int) -> list[int]:
    """The copying score's vocabulary rows: SAMPLE_ROWS distinct ids below `vocab`, seeded."""
    rng = np.random.default_rng(SAMPLE_SEED)
    return sorted(int(i) for i in rng.choice(vocab, size=min(SAMPLE_ROWS, vocab), replace=False))


def current(path: Path, model_id: str, revision: str, tokens: Iterable[int]) -> bool:
    """Whether the artifact at `path` is of this model and revision and holds every token."""
    data = read_ov(path)
    return (data is not None and data.get("key") == ov_key(model_id, revision)
            and {str(t) for t in tokens} <= set(data["rows"]))


def _value_weights(layer: Any, attn: Any, heads: int, kv_heads: int, hd: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """W_V [kv_heads, D, hd] and b_V [kv_heads, hd] of one layer."""
    if hasattr(attn, "v_proj"):                       # Qwen2, Llama: nn.Linear [kv*hd, D]
        w = attn.v_proj.weight.float()
        b = attn.v_proj.bias
        w_v = w.T.reshape(-1, kv_heads, hd).permute(1, 0, 2)
    elif hasattr(attn, "c_attn"):                     # GPT-2: Conv1D [D, 3D] = [q | k | v]
        D = attn.c_attn.weight.shape[0]
        w = attn.c_attn.weight.float()[:, 2 * D:]
        b = attn.c_attn.bias[2 * D:] if attn.c_attn.bias is not None else None
        w_v = w.reshape(D, kv_heads, hd).permute(1, 0, 2)
    else:
        raise ValueError(f"{type(attn).__name__}: cannot find the value projection for the OV "
                         f"circuit (looked for v_proj, c_attn).")
    b_v = (b.float() if b is not None else torch.zeros(kv_heads * hd, device=w.device))
    return w_v, b_v.reshape(kv_heads, hd)


def _input_norm(layer: Any) -> torch.nn.Module:
    for name in ("ln_1", "input_layernorm"):
        module = getattr(layer, name, None)
        if module is not None:
            return module
    raise ValueError(f"{type(layer).__name__}: cannot find the layer's input norm for the OV "
                     f"circuit (looked for ln_1, input_layernorm).")


@torch.no_grad()
def ov_rows(model: Any, token_ids: list[int], top: int = TOP) -> dict[int, dict[str, list]]:
    """Per source token: for every head (layer-major, `L{l}.H{h}` order) the `top` output tokens
    raised most (`up`: [ids, values]) and lowered most (`down`), and the source's own rank
    (`rank`, 1 = raised most). Values in logits with the final norm's scale set to 1, 3 decimals."""
    from .attribution import DlaRecorder
    from .models import final_norm
    rec = DlaRecorder(model)
    cfg = model.config
    H = rec.heads
    kv = int(getattr(cfg, "num_key_value_heads", None) or H)
    norm = final_norm(model)
    W_U = rec.unembed.weight                                          # [V, D]
    dev = W_U.device
    u = W_U.float() * norm.weight.float()                             # [V, D]
    if isinstance(norm, torch.nn.LayerNorm):
        u = u - u.mean(-1, keepdim=True)
    ids = torch.tensor(token_ids, dtype=torch.long, device=dev)
    E = model.get_input_embeddings().weight
    out: dict[int, dict[str, list]] = {t: {"up": [], "down": [], "rank": []} for t in token_ids}
    for l, layer in enumerate(rec.layers):
        W_O = rec.out_weights(l).to(dev).float()                      # [H, hd, D]
        hd = W_O.shape[1]
        w_v, b_v = _value_weights(layer, rec.attn[l], H, kv, hd)      # [kv, D, hd], [kv, hd]
        ln = _input_norm(layer)
        x = torch.cat([ln(E[ids[s:s + CHUNK]].to(dev)).float()            # [n, D]
                       for s in range(0, len(token_ids), CHUNK)])
        n = len(token_ids)
        # o_t of every head: [H, n, D] (a head's value vectors are those of its key/value head).
        vals = torch.einsum("nd,gde->gne", x, w_v.to(dev)) + b_v.to(dev)[:, None, :]  # [kv, n, hd]
        o = torch.einsum("hne,hed->hnd", vals.repeat_interleave(H // kv, dim=0), W_O)
        # Through the unembedding a few heads at a time: [heads x n, V] float32, ROWS_BYTES at most.
        step = max(1, ROWS_BYTES // (n * u.shape[0] * 4))
        for h0 in range(0, H, step):
            hs = range(h0, min(H, h0 + step))
            logits = (o[h0:h0 + len(hs)].reshape(-1, o.shape[-1]) @ u.T)            # [h*n, V]
            up = torch.topk(logits, top, dim=-1)
            down = torch.topk(logits, top, dim=-1, largest=False)
            src = ids.repeat(len(hs))                                               # [h*n]
            own = logits.gather(1, src[:, None])
            # Pessimistic: every other output at least as high ranks before the source (a head
            # that writes nothing the unembedding reads ties them all: rank V).
            rank = (logits >= own).sum(-1).view(len(hs), n).tolist()
            up_i, up_v = (up.indices.view(len(hs), n, top).tolist(),
                          up.values.view(len(hs), n, top).tolist())
            dn_i, dn_v = (down.indices.view(len(hs), n, top).tolist(),
                          down.values.view(len(hs), n, top).tolist())
            for k in range(len(hs)):
                for r, t in enumerate(token_ids):
                    row = out[t]
                    row["up"].append([up_i[k][r], [round(v, 3) for v in up_v[k][r]]])
                    row["down"].append([dn_i[k][r], [round(v, 3) for v in dn_v[k][r]]])
                    row["rank"].append(rank[k][r])
    return out


def copy_scores(data: dict[str, Any]) -> list[dict[str, float]]:
    """Per head (layer-major): over the artifact's sample rows, the fraction whose source token is
    the head's most raised output (`top1`) and the median rank of the source token
    (`median_rank`)."""
    rows = [data["rows"][str(t)] for t in data["sample"]]
    count = len(data["rows"][str(data["sample"][0])]["rank"]) if rows else 0
    out = []
    for k in range(count):
        ranks = np.array([r["rank"][k] for r in rows])
        out.append({"top1": round(float(np.mean(ranks == 1)), 4),
                    "median_rank": float(np.median(ranks))})
    return out


def ensure_ov(model: Any, model_id: str, revision: str, facts: dict[str, Any], path: Path,
              prompt_tokens: Iterable[int], log: Log = print, tokenizer: Any = None) -> int:
    """Bring the OV artifact at `path` up to date: rows for the sample and `prompt_tokens`, the
    rows it already holds kept as they are. Returns how many rows were computed (0: current)."""
    vocab = int(facts["vocab_size"])
    sample = sample_ids(min(vocab, int(facts.get("tokenizer_size") or vocab)))
    key = ov_key(model_id, revision)
    old = read_ov(path)
    rows = old["rows"] if old is not None and old.get("key") == key else {}
    wanted = sorted(set(sample) | {int(t) for t in prompt_tokens if 0 <= int(t) < vocab})
    todo = [t for t in wanted if str(t) not in rows]
    if not todo:
        return 0
    import time
    t0 = time.perf_counter()
    new = ov_rows(model, todo)
    rows = {**rows, **{str(t): r for t, r in new.items()}}
    data = {"format": OV_FORMAT, "version": OV_VERSION, "key": key,
            "model_id": model_id, "revision": revision, "layers": facts["layers"],
            "heads": facts["query_heads"], "kv_heads": facts["kv_heads"], "top": TOP,
            "sample_seed": SAMPLE_SEED, "sample": sample, "rows": rows}
    data["copy"] = copy_scores(data)
    if tokenizer is not None:   # display records of every id the rows name (tokens.vocab_entries)
        from .tokens import vocab_entries
        named = {int(t) for t in rows}
        for r in rows.values():
            for ids, _ in r["up"] + r["down"]:
                named.update(ids)
        data["vocab"] = vocab_entries(tokenizer, sorted(i for i in named if i < len(tokenizer)))
    atomic_write_bytes(path, gzip_text(canonical_json(data) + "\n"))   # gzipped: `layout.ov_path`
    log(f"{model_id}: OV circuits of {len(todo)} source tokens x "
        f"{facts['layers'] * facts['query_heads']} heads in {time.perf_counter() - t0:.1f}s")
    return len(todo)


def prompt_tokens(tokenizer: Any, texts: Iterable[str], count: int = FREQUENT) -> list[int]:
    """The `count` most frequent tokens (ties by id) of the prompt texts as the model's tokenizer
    splits them (`tokens.describe_tokens`: no special tokens added): the OV circuit's source
    tokens besides the sample. Every prompt of the build counts, whether this shard computes it
    or not and whether it fits the model's context or not, so every shard of a sharded build
    (`compute --shard`) writes the same OV artifact, and any one of them can be gathered."""
    from collections import Counter
    found: Counter[int] = Counter()
    for text in texts:
        found.update(int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"])
    return sorted(found, key=lambda t: (-found[t], t))[:count]


def ensure_for_model(lm: Any, out_dir: Path, prompt_tokens: Iterable[int], log: Log = print) -> int:
    """`ensure_ov` for a loaded model (`models.LoadedModel`), at its artifact directory."""
    return ensure_ov(lm.model, lm.ref.model_id, lm.ref.revision, lm.facts,
                     layout.ov_path(out_dir, lm.ref.slug), prompt_tokens, log, lm.tokenizer)
