"""Device-side reductions of one batched forward pass (imports torch).

Everything is reduced and quantized on the device before it is copied to the host: attention goes
over as uint8 (4x smaller than float32), predictions as top-k ids and log-probabilities.

The logit lens stacks every layer's residual stream into one matrix and multiplies it by the
unembedding in chunks of the vocabulary, keeping a running log-sum-exp, a running top-k and a running
rank of the token that actually came next, so the full [layers, positions, vocabulary] log-softmax is
never materialized. In transformers' `hidden_states` the last entry already has the final norm
applied; the norm is applied to every other layer's entry, never twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .models import final_norm

VOCAB_CHUNK = 32768
MAX_CHUNK_ELEMENTS = 1 << 26  # rows x vocabulary columns of one chunk of lens logits


@dataclass
class BatchOutput:
    """Host-side results for one batch. N = total real tokens in the batch (padding dropped)."""
    attention: Any        # uint8 [L, B, H, T, T] (numpy), rows sum to 255
    lens_ids: Any         # int64 [L, N, k]
    lens_logprobs: Any    # float32 [L, N, k]
    next_logprob: Any     # float32 [L, N] (NaN where there is no next token)
    next_rank: Any        # int64 [L, N] (1 = top prediction; 0 where there is no next token)


def quantize_rows(p: torch.Tensor) -> torch.Tensor:
    """Probabilities [..., T] -> uint8 [..., T] summing to exactly 255 per row (largest remainder).

    Each value is within 1/255 of p*255 / 255: floor, then the row's missing units go to the
    entries with the largest remainders.
    """
    x = p.float().clamp_min(0) * 255
    x = x * (255 / x.sum(-1, keepdim=True).clamp_min(1e-12))   # renormalize rounding in bf16/fp16
    f = x.floor()
    r = x - f
    deficit = (255 - f.sum(-1, keepdim=True)).round()
    order = r.argsort(dim=-1, descending=True, stable=True)
    ranks = order.argsort(dim=-1)
    return (f + (ranks < deficit).to(f.dtype)).to(torch.uint8)


@torch.no_grad()
def lens_topk(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              targets: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """Top-k, log-sum-exp and target rank of h @ weight.T (+ bias), chunked over the vocabulary.

    h: [R, D] rows (layers x positions stacked); weight: [V, D]; targets: [R] (-1 = none).
    Returns (topk_ids [R, k], topk_logprobs [R, k], target_logprob [R], target_rank [R]).
    """
    rows = h.shape[0]
    vocab = weight.shape[0]
    chunk = max(1024, min(VOCAB_CHUNK, MAX_CHUNK_ELEMENTS // max(rows, 1)))
    h = h.to(weight.dtype)
    lse = torch.full((rows,), -float("inf"), device=h.device)
    top_val = torch.full((rows, k), -float("inf"), device=h.device)
    top_idx = torch.zeros((rows, k), dtype=torch.long, device=h.device)
    has_target = targets >= 0
    safe_t = targets.clamp_min(0)
    # The target's logit, from the same rows of the unembedding: [R]
    t_logit = (h.float() * weight[safe_t].float()).sum(-1)
    if bias is not None:
        t_logit = t_logit + bias[safe_t].float()
    higher = torch.zeros(rows, dtype=torch.long, device=h.device)
    # No data-dependent Python branch in the loop: nothing waits for the device until the end.
    for start in range(0, vocab, chunk):
        end = min(vocab, start + chunk)
        logits = (h @ weight[start:end].T).float()           # [R, C]
        if bias is not None:
            logits += bias[start:end].float()
        v, i = logits.topk(min(k, end - start), dim=-1)
        top_val, sel = torch.cat([top_val, v], -1).topk(k, dim=-1)
        top_idx = torch.cat([top_idx, i + start], -1).gather(-1, sel)
        # Rank: tokens scoring above the target. The target's own logit from this product can
        # differ from t_logit by rounding; if it counted itself, take it back out.
        higher += (logits > t_logit[:, None]).sum(-1)
        inside = has_target & (safe_t >= start) & (safe_t < end)
        own = logits.gather(1, (safe_t - start).clamp(0, end - start - 1)[:, None])[:, 0]
        higher -= (inside & (own > t_logit)).long()
        # Log-sum-exp of the chunk, shifted by its maximum (the top-1 just found), in place:
        # the chunk is not needed any more, and no [R, C] temporary is allocated.
        m = v[:, 0]
        lse = torch.logaddexp(lse, m + torch.log(logits.sub_(m[:, None]).exp_().sum(-1)))
    t_lp = torch.where(has_target, t_logit - lse, torch.full_like(lse, float("nan")))
    rank = torch.where(has_target, higher + 1, torch.zeros_like(higher))
    return top_idx, top_val - lse[:, None], t_lp, rank


@torch.no_grad()
def run_batch(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              k: int) -> BatchOutput:
    """One forward pass with capture. input_ids, attention_mask: [B, T], right-padded."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True,
                output_hidden_states=True, use_cache=False, logits_to_keep=1)
    if not out.attentions or out.attentions[0] is None:
        raise RuntimeError("the model returned no attention maps (is attn_implementation eager?)")
    # attentions: L x [B, H, T, T] -> quantized uint8 [L, B, H, T, T]
    # Layers may sit on different devices (device_map="auto"): reduce each where it is.
    attention = np.stack([quantize_rows(a).cpu().numpy() for a in out.attentions])
    hs = out.hidden_states                                          # (L+1) x [B, T, D]
    norm = final_norm(model)
    unemb = model.get_output_embeddings()
    dev = unemb.weight.device
    mask = attention_mask.bool().to(dev)                            # [B, T]
    layers = len(hs) - 1
    # Real positions only, layers stacked: [L, N, D]; the last entry is already normed.
    norm_dev = next(norm.parameters()).device
    stacked = torch.stack([norm(hs[l].to(norm_dev)[mask.to(norm_dev)]).to(dev) if l < layers
                           else hs[l].to(dev)[mask] for l in range(1, layers + 1)])
    ids = input_ids.to(dev)
    nxt = torch.full_like(ids, -1)
    nxt[:, :-1] = torch.where(mask[:, 1:], ids[:, 1:], -1)
    targets = nxt[mask]                                              # [N]
    L, N, D = stacked.shape
    ids, lps, t_lp, rank = lens_topk(stacked.reshape(L * N, D), unemb.weight,
                                     getattr(unemb, "bias", None), targets.repeat(L), k)
    return BatchOutput(attention, ids.view(L, N, k).cpu().numpy(),
                       lps.view(L, N, k).cpu().numpy(), t_lp.view(L, N).cpu().numpy(),
                       rank.view(L, N).cpu().numpy())


@torch.no_grad()
def greedy_continuations(model: Any, seqs: list[list[int]], n: int, eos_id: int | None,
                         pad_id: int) -> list[list[int]]:
    """Each sequence's greedy continuation: up to n new tokens, cut after end-of-text.

    The batch is left-padded with positions counted from each row's first real token, then one
    prefill and n - 1 single-token steps over the KV cache: the cost of n forward passes per batch
    rather than per prompt.
    """
    if n <= 0 or not seqs:
        return [[] for _ in seqs]
    dev = model.device
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, T - len(s):] = torch.tensor(s)
        mask[b, T - len(s):] = 1
    ids, mask = ids.to(dev), mask.to(dev)                           # [B, T]
    pos = (mask.cumsum(-1) - 1).clamp_min(0)                        # [B, T]
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                logits_to_keep=1)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)                # [B, 1]
    new = [nxt]
    for _ in range(n - 1):
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        pos = pos[:, -1:] + 1
        out = model(input_ids=nxt, attention_mask=mask, position_ids=pos,
                    past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        new.append(nxt)
    rows = torch.cat(new, dim=1).tolist()                           # [B, n]
    result = []
    for row in rows:
        if eos_id is not None and eos_id in row:
            row = row[:row.index(eos_id) + 1]
        result.append(row)
    return result
