"""Device-side capture and reductions of one batch of prompts (imports torch).

`run_batch` generates each prompt's greedy continuation and captures everything it analyses in the
same passes: one eager prefill over the left-padded prompts, then one single-token step over the
KV cache per generated token, each returning its attention rows and hidden states. Attention is
never recomputed for the continuation and the prompt+continuation is never run a second time.

Everything is reduced and quantized on the device before it is copied to the host: attention goes
over as uint8 (4x smaller than float32), predictions as top-k ids and log-probabilities.

The logit lens stacks every layer's residual stream into one matrix and multiplies it by the
unembedding one block of rows and vocabulary at a time (`lens_topk`), keeping per block what the
log-sum-exp, the top-k and the rank of the token that actually came next need, so the full
[layers, positions, vocabulary] logits or log-softmax are never materialized. In transformers' `hidden_states` the last entry already has the final norm
applied; the norm is applied to every other layer's entry, never twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .models import final_norm
from .schema import ATTENTION_SCALE

# Tiling of the lens's [rows, vocabulary] logits. On the CPU a block of CPU_ROW_TILE x CPU_COL_TILE
# float32 (16 MiB) stays in the last-level cache while every reduction reads it; on a GPU one
# block spans all rows and VOCAB_CHUNK columns (at most MAX_CHUNK_ELEMENTS).
CPU_ROW_TILE = 1024
CPU_COL_TILE = 4096
VOCAB_CHUNK = 32768
MAX_CHUNK_ELEMENTS = 1 << 26
MAX_CANDIDATES = 512      # top-k candidate columns kept per row before they are merged down to k
LOG2E = 1.4426950408889634
EXP2_FLOOR = -120.0       # 2^-120 is nothing next to the row maximum's 1; keeps exp2 off subnormals

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


def lens_tiles(rows: int, device: torch.device | str) -> tuple[int, int]:
    """(row tile, vocabulary tile) of the lens's logits for `rows` rows on `device`."""
    if torch.device(device).type == "cpu":
        n = -(-rows // CPU_ROW_TILE)                      # row tiles of equal size
        return max(1, -(-rows // n)), CPU_COL_TILE
    return max(1, rows), max(1024, min(VOCAB_CHUNK, MAX_CHUNK_ELEMENTS // max(rows, 1)))


def _grid(w: int, k: int) -> tuple[int, int]:
    """Grid [a, b] (a*b <= w, b ~ sqrt(w) a power of two) for a block of width w; (0, 0) when the
    block is too narrow for the top-k prefilter (every column is then a candidate)."""
    b = 1 << max(0, round(math.log2(max(w, 1)) / 2))
    a = w // b
    return (a, b) if a >= k and b >= k else (0, 0)


@torch.no_grad()
def lens_topk(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              targets: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """Top-k, log-sum-exp and target rank of h @ weight.T (+ bias), blocked over rows and vocabulary.

    h: [R, D] rows (layers x positions stacked); weight: [V, D]; targets: [R] (-1 = none).
    Returns (topk_ids [R, k], topk_logprobs [R, k], target_logprob [R], target_rank [R]).

    Each block of logits is written into one preallocated buffer and read by a few vectorized
    passes while it is hot; per-block results go to small buffers combined at the end, and nothing
    waits for the device inside the loop (no .item(), no data-dependent branch):
    - top-k by a row/column-maxima prefilter: each row's block of w = a*b logits is viewed as an
      [a, b] grid; an entry of the row's top k lies in one of the k grid rows with the largest
      maxima and in one of the k grid columns with the largest maxima, so the top k are among the
      k*k crossings (exact up to exact ties). topk then sees a + b maxima instead of w logits
      (on the CPU topk costs about as much per element as the matmul itself);
    - log-sum-exp: the block's maximum is the max of the grid-row maxima; sum 2^((x - max) log2 e)
      (exp2 is several times faster than exp on the CPU), all in place;
    - rank: logits above the target's, compared into a float32 buffer (faster than bool on the CPU).
    """
    rows, vocab = h.shape[0], weight.shape[0]
    dev, f32 = h.device, torch.float32
    h = h.to(weight.dtype)
    has_target = targets >= 0
    safe_t = targets.clamp_min(0)
    # The target's logit, from the same rows of the unembedding: [R]
    t_logit = (h.float() * weight[safe_t].float()).sum(-1)
    if bias is not None:
        t_logit = t_logit + bias[safe_t].float()
    t_col = t_logit[:, None]
    rt, ct = lens_tiles(rows, dev)
    nb = -(-vocab // ct)
    blk_max = torch.empty((rows, nb), dtype=f32, device=dev)
    blk_sum = torch.empty((rows, nb), dtype=f32, device=dev)
    blk_cnt = torch.empty((rows, nb), dtype=f32, device=dev)
    own = torch.empty((rows, nb), dtype=f32, device=dev)
    cand_v: list[torch.Tensor] = []          # candidates per vocabulary block: [R, n]
    cand_i: list[torch.Tensor] = []
    direct = weight.dtype == f32 and (bias is None or bias.dtype == f32)
    rt0, ct0 = min(rows, rt), min(vocab, ct)
    logit_buf = torch.empty(rt0 * ct0, dtype=f32, device=dev)
    cmp_buf = torch.empty_like(logit_buf)
    a0, b0 = _grid(ct0, k)
    maxima = torch.full((rt0, 2, max(a0, b0, 1)), -float("inf"), device=dev)
    for bi, c0 in enumerate(range(0, vocab, ct)):
        c1 = min(vocab, c0 + ct)
        w = c1 - c0
        wt = weight[c0:c1].T
        bb = bias[c0:c1] if bias is not None else None
        a, b = _grid(w, k)
        main = a * b
        ncand = (k * k if a else 0) + (w - main)
        cv = torch.empty((rows, ncand), dtype=f32, device=dev)
        ci = torch.empty((rows, ncand), dtype=torch.long, device=dev)
        if a and (a, b) != (a0, b0):
            maxima.fill_(-float("inf"))      # the padding may hold a previous block's maxima
        n = max(a, b)
        t_loc = (safe_t - c0).clamp_(0, w - 1)[:, None]
        for r0 in range(0, rows, rt):
            r1 = min(rows, r0 + rt)
            r = r1 - r0
            x = logit_buf[:r * w].view(r, w)
            if direct:
                if bb is None:
                    torch.mm(h[r0:r1], wt, out=x)
                else:
                    torch.addmm(bb, h[r0:r1], wt, out=x)
            else:
                x.copy_(h[r0:r1] @ wt)
                if bb is not None:
                    x += bb.float()
            if a:
                grid = x[:, :main].view(r, a, b)
                m2 = maxima[:r, :, :n]
                torch.amax(grid, 2, out=m2[:, 0, :a])
                torch.amax(grid, 1, out=m2[:, 1, :b])
                sel = m2.topk(k, dim=-1, sorted=False)[1]             # [r, 2, k]
                ids = ci[r0:r1, :k * k]
                torch.add(sel[:, 1, None, :], sel[:, 0, :, None], alpha=b, out=ids.view(r, k, k))
                torch.gather(x, 1, ids, out=cv[r0:r1, :k * k])
                m = m2[:, 0, :a].amax(1, keepdim=True)
                if main < w:  # columns past the grid (the last block only): all candidates
                    cv[r0:r1, k * k:] = x[:, main:]
                    ci[r0:r1, k * k:] = torch.arange(main, w, device=dev)
                    m = torch.maximum(m, x[:, main:].amax(1, keepdim=True))
            else:
                cv[r0:r1] = x
                ci[r0:r1] = torch.arange(w, device=dev)
                m = x.amax(1, keepdim=True)
            blk_max[r0:r1, bi] = m[:, 0]
            g = cmp_buf[:r * w].view(r, w)
            torch.gt(x, t_col[r0:r1], out=g)
            torch.sum(g, 1, out=blk_cnt[r0:r1, bi])
            # The target's own logit from this product (used only for the block holding it).
            own[r0:r1, bi] = x.gather(1, t_loc[r0:r1])[:, 0]
            # sum exp(x - max) = sum 2^((x - max) log2 e), in place: the block is done with.
            torch.add(m.mul_(-LOG2E), x, alpha=LOG2E, out=x)
            torch.sum(x.clamp_(min=EXP2_FLOOR).exp2_(), 1, out=blk_sum[r0:r1, bi])
        cand_v.append(cv)
        cand_i.append(ci.add_(c0))
        if sum(c.shape[1] for c in cand_v) > MAX_CANDIDATES:  # bound memory: merge down to k
            v, sel = torch.cat(cand_v, 1).topk(k, dim=-1)
            cand_v, cand_i = [v], [torch.cat(cand_i, 1).gather(1, sel)]
    gmax = blk_max.amax(1, keepdim=True)
    lse = gmax[:, 0] + torch.log((blk_sum * torch.exp(blk_max - gmax)).sum(1))
    top_val, sel = torch.cat(cand_v, 1).topk(k, dim=-1)
    top_idx = torch.cat(cand_i, 1).gather(1, sel)
    # The target counted itself if its own logit from the product beats t_logit: take it out.
    own_t = own.gather(1, (safe_t // ct)[:, None])[:, 0]
    higher = blk_cnt.sum(1, dtype=torch.float64).long() - (has_target & (own_t > t_logit)).long()
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
