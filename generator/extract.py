"""Device-side capture and reductions of one batch of prompts (imports torch).

`run_batch` generates each prompt's greedy continuation and captures everything it analyses in the
same passes: one eager prefill over the left-padded prompts, then one single-token step over the
KV cache per generated token, each returning its attention rows and hidden states. Attention is
never recomputed for the continuation and the prompt+continuation is never run a second time.

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
from .schema import ATTENTION_SCALE

VOCAB_CHUNK = 32768
MAX_CHUNK_ELEMENTS = 1 << 26  # rows x vocabulary columns of one chunk of lens logits


@dataclass
class SequenceOutput:
    """Host-side results for one sequence of a batch: its T analysed tokens (prompt, then the
    generated tokens, cut after end-of-text)."""
    ids: list[int]              # [T] token ids
    attention: Any              # uint8 [L, H, T, T] (numpy), q / ATTENTION_SCALE, zero above the diagonal
    lens_ids: Any               # int64 [L, T, k]
    lens_logprobs: Any          # float32 [L, T, k]
    next_logprob: Any           # float32 [L, T] (NaN where there is no next token)
    next_rank: Any              # int64 [L, T] (1 = top prediction; 0 where there is no next token)


def quantize_attention(p: torch.Tensor) -> torch.Tensor:
    """Probabilities -> uint8 q = round(p * 128), so q / 128 is within 1/256 (< 1/255) of p.

    Elementwise, on the tensor's device: no sort, no row coupling. A step of 1/128 is the coarsest
    grid whose rounding error stays under the format's bound of 1/255; 129 levels fit a byte.
    """
    return (p.float() * ATTENTION_SCALE).round_().clamp_(0, ATTENTION_SCALE).to(torch.uint8)


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
def run_batch(model: Any, seqs: list[list[int]], n_new: int, eos_id: int | None, pad_id: int,
              k: int) -> list[SequenceOutput]:
    """Greedy continuation of each sequence (up to n_new tokens, cut after end-of-text), with the
    attention and the logit lens of prompt + continuation captured on the way.

    The batch is left-padded, positions counted from each row's first real token. The prefill
    returns the prompts' attention [B, H, P, P] and hidden states; each of the n_new steps feeds one
    token per row over the KV cache and returns that token's attention row [B, H, 1, keys] and
    hidden states. The last step feeds the last generated token only to capture it. Nothing waits
    for the device inside the loop: the generated ids stay on it until the end.
    """
    dev = model.device
    lengths = [len(s) for s in seqs]
    B, P = len(seqs), max(lengths)
    ids = torch.full((B, P), pad_id, dtype=torch.long)
    mask = torch.zeros((B, P), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, P - len(s):] = torch.tensor(s)
        mask[b, P - len(s):] = 1
    ids, mask = ids.to(dev), mask.to(dev)                           # [B, P]
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    capture = dict(output_attentions=True, output_hidden_states=True, use_cache=n_new > 0,
                   logits_to_keep=1)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, **capture)
    if not out.attentions or out.attentions[0] is None:
        raise RuntimeError("the model returned no attention maps (is attn_implementation eager?)")
    # Per pass: L x uint8 [B, H, queries, keys] and L x [B, queries, D] (entry L-1 already normed).
    # Layers may sit on different devices (device_map="auto"): each is reduced where it is.
    att_steps = [[quantize_attention(a) for a in out.attentions]]
    hid_steps = [out.hidden_states[1:]]
    new = []
    for _ in range(n_new):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True).to(dev)   # [B, 1]
        new.append(nxt)
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        pos = pos[:, -1:] + 1
        out = model(input_ids=nxt, attention_mask=mask, position_ids=pos,
                    past_key_values=out.past_key_values, **capture)
        att_steps.append([quantize_attention(a) for a in out.attentions])
        hid_steps.append(out.hidden_states[1:])

    # Generated tokens kept per row: up to and including the first end-of-text.
    gen = torch.cat(new, dim=1) if new else torch.zeros((B, 0), dtype=torch.long, device=dev)
    kept = []
    for row in gen.tolist():
        if eos_id is not None and eos_id in row:
            row = row[:row.index(eos_id) + 1]
        kept.append(row)
    full = P + n_new
    valid = torch.zeros((B, full), dtype=torch.bool)
    for b in range(B):
        valid[b, P - lengths[b]:P + len(kept[b])] = True

    # Logit lens over every layer at every analysed position, layers stacked: [L, N, D].
    unemb = model.get_output_embeddings()
    out_dev = unemb.weight.device
    norm = final_norm(model)
    norm_dev = next(norm.parameters()).device
    layers = len(hid_steps[0])
    stacked = []
    for l in range(layers):
        h = torch.cat([step[l] for step in hid_steps], dim=1)       # [B, P + n_new, D]
        h = h[valid.to(h.device)]
        stacked.append((norm(h.to(norm_dev)) if l < layers - 1 else h).to(out_dev))
    all_ids = torch.cat([ids, gen], dim=1).to(out_dev)
    valid = valid.to(out_dev)
    nxt_ids = torch.full_like(all_ids, -1)
    nxt_ids[:, :-1] = torch.where(valid[:, 1:], all_ids[:, 1:], -1)
    targets = nxt_ids[valid]                                         # [N]
    h = torch.stack(stacked)
    L, N, D = h.shape
    top_ids, top_lps, t_lp, rank = lens_topk(h.reshape(L * N, D), unemb.weight,
                                             getattr(unemb, "bias", None), targets.repeat(L), k)
    top_ids, top_lps = top_ids.view(L, N, k).cpu().numpy(), top_lps.view(L, N, k).cpu().numpy()
    t_lp, rank = t_lp.view(L, N).cpu().numpy(), rank.view(L, N).cpu().numpy()

    # Attention on the host: the prefill's block, then one row per generated token.
    prefill = np.stack([a.cpu().numpy() for a in att_steps[0]])      # [L, B, H, P, P]
    rows = [np.stack([a.cpu().numpy() for a in step])[:, :, :, 0] for step in att_steps[1:]]
    results, offset = [], 0
    for b, (n_prompt, extra) in enumerate(zip(lengths, kept)):
        pad, n = P - n_prompt, n_prompt + len(extra)
        att = np.zeros((L, prefill.shape[2], n, n), dtype=np.uint8)
        att[:, :, :n_prompt, :n_prompt] = prefill[:, b, :, pad:, pad:]
        for s in range(len(extra)):                                 # row of token n_prompt + s
            att[:, :, n_prompt + s, :n_prompt + s + 1] = rows[s][:, b, :, pad:]
        sl = slice(offset, offset + n)
        offset += n
        results.append(SequenceOutput(seqs[b] + extra, att, top_ids[:, sl], top_lps[:, sl],
                                      t_lp[:, sl], rank[:, sl]))
    return results
