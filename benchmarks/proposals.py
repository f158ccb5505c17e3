#!/usr/bin/env python
"""Prototypes of the compute-stage fixes proposed in benchmarks/README.md, timed against the
generator's current functions on the same inputs, each with an equality check.

    python benchmarks/proposals.py [--device cpu|cuda] [--model gpt2|qwen2.5] [--prompts 8]

Prints one JSON object. Nothing here is used by the generator; once a fix lands in generator/,
its prototype can go. Parts:

* lens: extract.lens_topk against its matrix products alone, and with --compile against
  `lens_topk_compiled` (the per-chunk reductions fused into one pass by torch.compile);
* quantize: extract.quantize_rows per layer against one call over all layers with one sort;
* continuation: the generator's greedy continuations one prompt at a time against all prompts
  in one left-padded batch (the same tokens are required: batch independence);
* validate: schema.validate_artifact (full JSON Schema walk) against the cross-field checks alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

import bench  # noqa: E402


def clock(fn: Callable[[], Any], device: str, reps: int) -> tuple[float, Any]:
    """Median seconds over `reps` runs after one warm-up, and the last result."""
    out = fn()
    times = []
    for _ in range(reps):
        bench.sync(device)
        t0 = time.perf_counter()
        out = fn()
        bench.sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _chunk_stats(logits: torch.Tensor, t_logit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-sum-exp, count of entries above t_logit) of each row: one pass once compiled."""
    m = logits.amax(-1)
    lse = m + torch.log(torch.exp(logits - m[:, None]).sum(-1))
    return lse, (logits > t_logit[:, None]).sum(-1)


_compiled_stats = None


@torch.no_grad()
def lens_topk_compiled(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       targets: torch.Tensor, k: int, chunk: int) -> tuple[torch.Tensor, ...]:
    """extract.lens_topk (as of commit 8217ff8) with the per-chunk log-sum-exp and rank count
    fused into one pass by torch.compile (dynamic shapes: one compilation serves every chunk and
    batch size)."""
    global _compiled_stats
    if _compiled_stats is None:
        _compiled_stats = torch.compile(_chunk_stats, dynamic=True)
    rows, vocab = h.shape[0], weight.shape[0]
    h = h.to(weight.dtype)
    lse = torch.full((rows,), -float("inf"), device=h.device)
    top_val = torch.full((rows, k), -float("inf"), device=h.device)
    top_idx = torch.zeros((rows, k), dtype=torch.long, device=h.device)
    has_target = targets >= 0
    safe_t = targets.clamp_min(0)
    t_logit = (h.float() * weight[safe_t].float()).sum(-1)
    if bias is not None:
        t_logit = t_logit + bias[safe_t].float()
    higher = torch.zeros(rows, dtype=torch.long, device=h.device)
    for start in range(0, vocab, chunk):
        end = min(vocab, start + chunk)
        logits = (h @ weight[start:end].T).float()
        if bias is not None:
            logits += bias[start:end].float()
        c_lse, c_higher = _compiled_stats(logits, t_logit)
        lse = torch.logaddexp(lse, c_lse)
        higher += c_higher
        v, i = logits.topk(min(k, end - start), dim=-1)
        top_val, sel = torch.cat([top_val, v], -1).topk(k, dim=-1)
        top_idx = torch.cat([top_idx, i + start], -1).gather(-1, sel)
        inside = has_target & (safe_t >= start) & (safe_t < end)
        own = logits.gather(1, (safe_t - start).clamp(0, end - start - 1)[:, None])[:, 0]
        higher -= (inside & (own > t_logit)).long()
    t_lp = torch.where(has_target, t_logit - lse, torch.full_like(lse, float("nan")))
    rank = torch.where(has_target, higher + 1, torch.zeros_like(higher))
    return top_idx, top_val - lse[:, None], t_lp, rank


def quantize_rows_one_sort(p: torch.Tensor) -> torch.Tensor:
    """extract.quantize_rows with one sort instead of two: the largest remainders get the
    missing units through a scatter of 'position in the sorted order < deficit'."""
    x = p.float().clamp_min(0) * 255
    x = x * (255 / x.sum(-1, keepdim=True).clamp_min(1e-12))
    f = x.floor()
    r = x - f
    deficit = (255 - f.sum(-1, keepdim=True)).round()
    order = r.argsort(dim=-1, descending=True, stable=True)
    pos = torch.arange(p.shape[-1], device=p.device, dtype=f.dtype).expand_as(f)
    bump = torch.zeros_like(f).scatter_(-1, order, (pos < deficit).to(f.dtype))
    return (f + bump).to(torch.uint8)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="gpt2", choices=list(bench.MODELS))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--compile", action="store_true",
                    help="also time the lens with torch.compile-fused reductions (compiles once)")
    args = ap.parse_args()
    dev = args.device
    cuda = dev.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32

    from generator import compute as C
    from generator import extract
    from generator.compute import Settings, artifact_path
    from generator.demo import load_real_tokenizer
    from generator.schema import _check_cross_fields, validate_artifact
    folder, tok_name = bench.MODELS[args.model]
    tok = load_real_tokenizer(tok_name)
    model = bench.build_model(HERE / "reference" / folder, dev).to(dtype)
    bench.set_attention(model, "eager")
    lm = bench.loaded_model(args.model, model, tok, dev, dtype)
    settings = Settings()
    n_new = int(getattr(settings, "continuation", 0) or 0)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    prompts = bench.workload(tok, bench.reference_prompts(args.prompts), 64, False)
    res: dict[str, Any] = {"device": dev, "dtype": str(dtype), "model": args.model,
                           "prompts": len(prompts), "loadavg": bench.loadavg()}

    # --- continuation: per prompt (current) vs one batched generate -----------------------------
    from generator.tokens import describe_tokens
    ids = [describe_tokens(tok, p.text)[0] for p in prompts]
    if n_new:
        items = list(zip(prompts, ids))
        # batch 1: every prompt alone; batched: all of them in one left-padded batch
        saved = getattr(C, "CONTINUATION_BATCH", None)
        try:
            if saved is not None:
                C.CONTINUATION_BATCH = 1
            t_one, one = clock(lambda: bench.generator_continuations(lm, items, settings), dev, 1)
            if saved is not None:
                C.CONTINUATION_BATCH = len(items)
            t_all, alln = clock(lambda: bench.generator_continuations(lm, items, settings), dev, 1)
        finally:
            if saved is not None:
                C.CONTINUATION_BATCH = saved
        res["continuation"] = {"batch_1_ms": round(t_one / len(ids) * 1000, 1),
                               f"batch_{len(items)}_ms": round(t_all / len(ids) * 1000, 1),
                               "speedup": round(t_one / t_all, 2),
                               "same_tokens": one == alln}
        ids = [i + e for i, e in zip(ids, alln)]

    # --- one eager capture pass for the other parts ----------------------------------------------
    batch = [(p, i) for p, i in zip(prompts, ids)]
    x, mask = bench.tensors(batch, pad, dev)
    with torch.no_grad():
        out = model(input_ids=x, attention_mask=mask, output_attentions=True,
                    output_hidden_states=True, use_cache=False, logits_to_keep=1)

    # --- quantize --------------------------------------------------------------------------------
    t_cur, q_cur = clock(lambda: torch.stack([extract.quantize_rows(a) for a in out.attentions]),
                         dev, args.reps)
    t_new, q_new = clock(lambda: quantize_rows_one_sort(torch.stack(out.attentions)), dev,
                         args.reps)
    res["quantize"] = {"current_ms": round(t_cur * 1000, 2), "proposed_ms": round(t_new * 1000, 2),
                       "speedup": round(t_cur / t_new, 2),
                       "identical": bool(torch.equal(q_cur, q_new))}

    # --- lens ------------------------------------------------------------------------------------
    from generator.models import final_norm
    m = mask.bool()
    hs = out.hidden_states
    L = len(hs) - 1
    norm = final_norm(model)
    with torch.no_grad():
        stacked = torch.cat([norm(hs[l][m]) if l < L else hs[l][m] for l in range(1, L + 1)])
    nxt = torch.full_like(x, -1)
    nxt[:, :-1] = torch.where(m[:, 1:], x[:, 1:], -1)
    targets = nxt[m].repeat(L)
    unemb = model.get_output_embeddings()
    W, b = unemb.weight, getattr(unemb, "bias", None)
    rows = stacked.shape[0]
    chunk = max(1024, min(extract.VOCAB_CHUNK, extract.MAX_CHUNK_ELEMENTS // rows))
    k = settings.top_k
    t_cur, a = clock(lambda: extract.lens_topk(stacked, W, b, targets, k), dev, args.reps)

    def matmuls():
        h = stacked.to(W.dtype)
        for s in range(0, W.shape[0], chunk):
            h @ W[s:s + chunk].T
    t_mm, _ = clock(matmuls, dev, args.reps)
    res["lens"] = {"rows": rows, "chunk": chunk, "matmul_only_ms": round(t_mm * 1000, 1),
                   "current_ms": round(t_cur * 1000, 1),
                   "current_over_matmul": round(t_cur / t_mm, 2)}
    if args.compile:
        t0 = time.perf_counter()
        lens_topk_compiled(stacked, W, b, targets, k, chunk)
        compile_s = time.perf_counter() - t0
        t_cmp, cc = clock(lambda: lens_topk_compiled(stacked, W, b, targets, k, chunk), dev,
                          args.reps)
        res["lens"].update(compiled_first_call_s=round(compile_s, 1),
                           compiled_ms=round(t_cmp * 1000, 1),
                           compiled_over_matmul=round(t_cmp / t_mm, 2),
                           compiled_same_topk_ids=bool(torch.equal(a[0], cc[0])),
                           compiled_max_logprob_diff=float((a[1] - cc[1]).abs().max()),
                           compiled_max_rank_diff=int((a[3] - cc[3]).abs().max()))

    # --- validate --------------------------------------------------------------------------------
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        bench.compute_pass(lm, prompts[:4], Path(tmp), settings, dtype, 8)
        arts = [json.loads(artifact_path(Path(tmp), lm.ref.slug, p).read_text())
                for p in prompts[:4]]
    t_cur, _ = clock(lambda: [validate_artifact(art) for art in arts], dev, args.reps)
    t_x, _ = clock(lambda: [_check_cross_fields(art) for art in arts], dev, args.reps)
    res["validate_per_artifact"] = {"current_ms": round(t_cur / len(arts) * 1000, 1),
                                    "cross_field_checks_only_ms": round(t_x / len(arts) * 1000, 2)}
    res["loadavg_end"] = bench.loadavg()
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
