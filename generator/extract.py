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
    run_max = torch.full((rows,), -float("inf"), device=h.device)
    run_sum = torch.zeros(rows, device=h.device)
    top_val = torch.full((rows, k), -float("inf"), device=h.device)
    top_idx = torch.zeros((rows, k), dtype=torch.long, device=h.device)
    has_target = targets >= 0
    safe_t = targets.clamp_min(0)
    # The target's logit, from the same rows of the unembedding: [R]
    t_logit = (h.float() * weight[safe_t].float()).sum(-1)
    if bias is not None:
        t_logit = t_logit + bias[safe_t].float()
    higher = torch.zeros(rows, dtype=torch.long, device=h.device)
    for start in range(0, vocab, chunk):
        end = min(vocab, start + chunk)
        logits = (h @ weight[start:end].T).float()           # [R, C]
        if bias is not None:
            logits = logits + bias[start:end].float()
        c_max = logits.max(-1).values
        new_max = torch.maximum(run_max, c_max)
        run_sum = run_sum * torch.exp(run_max - new_max) + torch.exp(
            logits - new_max[:, None]).sum(-1)
        run_max = new_max
        kk = min(k, end - start)
        v, i = logits.topk(kk, dim=-1)
        merged_v = torch.cat([top_val, v], dim=-1)
        merged_i = torch.cat([top_idx, i + start], dim=-1)
        top_val, sel = merged_v.topk(k, dim=-1)
        top_idx = merged_i.gather(-1, sel)
        # Rank: tokens scoring above the target; the target itself is excluded so rounding
        # differences between the two products cannot count it against itself.
        inside = has_target & (safe_t >= start) & (safe_t < end)
        if inside.any():
            logits[inside, safe_t[inside] - start] = -float("inf")
        higher += (logits > t_logit[:, None]).sum(-1)
    lse = run_max + torch.log(run_sum)
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
def greedy_continuation(model: Any, ids: list[int], n: int, eos_id: int | None) -> list[int]:
    """The model's own greedy continuation of `ids`: up to n new tokens, stopping after
    end-of-text. A plain loop over the KV cache (one prompt at a time, so the result does not
    depend on which prompts share a batch); `generate` costs far more per call for short runs."""
    out: list[int] = []
    if n <= 0:
        return out
    x = torch.tensor([ids], device=model.device)                    # [1, T]
    past = None
    for _ in range(n):
        res = model(input_ids=x, past_key_values=past, use_cache=True, logits_to_keep=1)
        past = res.past_key_values
        nxt = int(res.logits[0, -1].argmax())
        out.append(nxt)
        if eos_id is not None and nxt == eos_id:
            break
        x = torch.tensor([[nxt]], device=model.device)              # [1, 1]
    return out
