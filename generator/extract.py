"""Device-side capture and reductions of one batch of prompts (imports torch).

`run_batch` generates each prompt's greedy continuation and captures everything it analyses in the
same passes: one eager prefill over the left-padded prompts, then one single-token step over the
KV cache per generated token, each returning its attention rows and hidden states. Attention is
never recomputed for the continuation and the prompt+continuation is never run a second time.

Attention is captured as float32 probabilities in every dtype: a model whose weights are not
float32 runs `float32_softmax_attention`, which computes the scores as eager attention does and
returns their float32 softmax (the model itself goes on with it cast to its dtype).

Everything is reduced on the device before it is copied to the host: the head metrics from the
full-precision attention (`device_metrics`), the attention quantized to uint8 and packed in the
stored order (4x smaller than float32, no host-side indexing), predictions as top-k ids and
log-probabilities, and the direct logit attribution (`attribution.DlaRecorder` hooks the same
passes; `attribution.direct_logit_attribution` reduces what it recorded to [positions, 2,
components]). The host receives a few arrays per batch.

The logit lens stacks every layer's residual stream into one matrix and multiplies it by the
unembedding one block of rows and vocabulary at a time (`lens_topk`), keeping per block what the
log-sum-exp, the top-k and the rank of the token that actually came next need, so the full
[layers, positions, vocabulary] logits or log-softmax are never materialized. In transformers'
`hidden_states` the last entry already has the final norm applied; the norm is applied to every
other layer's entry, never twice.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import device_metrics
from .attribution import DlaRecorder, direct_logit_attribution, rank_components
from .models import final_norm
from .codec import DIGIT_ESCAPE, dense_head, split_blocks, varint_bytes
from .schema import ATTENTION_SCALE, DLA_TOP_K

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
class StoredAttention:
    """One sequence's attention as stored (`codec.encode_heads`, encoded on the device)."""
    data: np.ndarray            # uint8: every head's block, layer by layer, head by head
    head_bytes: list[list[int]]  # [L][H]: each block's size
    heads: int
    length: int                 # T

    def values(self) -> np.ndarray:
        """The stored values decoded: uint8 [L, H, T, T], zero above the diagonal."""
        sizes = [n for layer in self.head_bytes for n in layer]
        return np.stack([dense_head(b, self.length) for b in split_blocks(self.data, sizes)]).reshape(
            len(self.head_bytes), self.heads, self.length, self.length)


@dataclass
class SequenceOutput:
    """Host-side results for one sequence of a batch: its T analysed tokens (prompt, then the
    generated tokens, cut after end-of-text)."""
    ids: list[int]              # [T] token ids
    attention: StoredAttention  # the stored bytes (values(): uint8 [L, H, T, T])
    top_ids: Any                # int64 [T, k]: the model's top-k predictions (the output layer)
    top_logprobs: Any           # float32 [T, k]
    lens_ids: Any               # int64 [L, T, lens_k] (the output layer's: the first lens_k of top_ids)
    lens_logprobs: Any          # float32 [L, T, lens_k]
    next_logprob: Any           # float32 [L, T] (NaN where there is no next token)
    next_rank: Any              # int64 [L, T] (1 = top prediction; 0 where there is no next token)
    metrics: Any = None         # float32 [len(HEAD_METRICS), L, H], from full-precision attention
    groups: Any = None          # float32 [L, 1 + 2G] (device_metrics.group_metrics), or None
    # Direct logit attribution (attribution.py) to [top-1 prediction, actual next token]:
    dla: Any = None             # float32 [T, 2, C], C = attribution.component_names; NaN: no token
    dla_error: Any = None       # float32 [T, 2]: |sum of contributions - logit| / max(|logit|, 1)
    dla_ranked: Any = None      # attribution.rank_components of dla: (index, value, rest)

    def square_attention(self) -> np.ndarray:
        """The stored attention unpacked: uint8 [L, H, T, T], zero above the diagonal."""
        return self.attention.values()


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
    passes while it is hot (`_tile_candidates`, `_tile_reductions`); per-block results go to small
    buffers combined at the end (`_combine`), and nothing waits for the device inside the loop
    (no .item(), no data-dependent branch):
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
    safe_t = targets.clamp_min(0)
    # The target's logit, from the same rows of the unembedding: [R]
    t_logit = (h.float() * weight[safe_t].float()).sum(-1)
    if bias is not None:
        t_logit = t_logit + bias[safe_t].float()
    t_col = t_logit[:, None]                                        # [R, 1]
    rt, ct = lens_tiles(rows, dev)
    nb = -(-vocab // ct)
    # Per row and vocabulary block: max logit, sum of exp, count above the target, target's own.
    blk = torch.empty((4, rows, nb), dtype=f32, device=dev)         # [4, R, blocks]
    cand_v: list[torch.Tensor] = []          # candidates per vocabulary block: [R, n]
    cand_i: list[torch.Tensor] = []
    direct = weight.dtype == f32 and (bias is None or bias.dtype == f32)
    rt0, ct0 = min(rows, rt), min(vocab, ct)
    logit_buf = torch.empty(rt0 * ct0, dtype=f32, device=dev)
    cmp_buf = torch.empty_like(logit_buf)
    a0, b0 = _grid(ct0, k)
    maxima = torch.full((rt0, 2, max(a0, b0, 1)), -float("inf"), device=dev)  # [rows, 2, a|b]
    for bi, c0 in enumerate(range(0, vocab, ct)):
        c1 = min(vocab, c0 + ct)
        w = c1 - c0
        wt = weight[c0:c1].T                                        # [D, w]
        bb = bias[c0:c1] if bias is not None else None
        a, b = _grid(w, k)
        ncand = (k * k if a else 0) + (w - a * b)
        cv = torch.empty((rows, ncand), dtype=f32, device=dev)
        ci = torch.empty((rows, ncand), dtype=torch.long, device=dev)
        if a and (a, b) != (a0, b0):
            maxima.fill_(-float("inf"))      # the padding may hold a previous block's maxima
        t_loc = (safe_t - c0).clamp_(0, w - 1)[:, None]             # [R, 1]
        for r0 in range(0, rows, rt):
            r1 = min(rows, r0 + rt)
            x = logit_buf[:(r1 - r0) * w].view(r1 - r0, w)          # [r, w] logits of the tile
            if direct:
                if bb is None:
                    torch.mm(h[r0:r1], wt, out=x)
                else:
                    torch.addmm(bb, h[r0:r1], wt, out=x)
            else:
                x.copy_(h[r0:r1] @ wt)
                if bb is not None:
                    x += bb.float()
            m = _tile_candidates(x, k, a, b, maxima, cv[r0:r1], ci[r0:r1])
            _tile_reductions(x, m, t_col[r0:r1], t_loc[r0:r1], cmp_buf, blk[:, r0:r1, bi])
        cand_v.append(cv)
        cand_i.append(ci.add_(c0))
        if sum(c.shape[1] for c in cand_v) > MAX_CANDIDATES:  # bound memory: merge down to k
            v, sel = torch.cat(cand_v, 1).topk(k, dim=-1)
            cand_v, cand_i = [v], [torch.cat(cand_i, 1).gather(1, sel)]
    return _combine(blk, cand_v, cand_i, t_logit, targets, ct, k)


def _tile_candidates(x: torch.Tensor, k: int, a: int, b: int, maxima: torch.Tensor,
                     cv: torch.Tensor, ci: torch.Tensor) -> torch.Tensor:
    """Top-k candidates of a tile of logits x [r, w] into cv, ci [r, n] (column indices within the
    block); returns the rows' maxima [r, 1]. With a grid (a > 0): the k*k crossings of the k grid
    rows and k grid columns with the largest maxima, plus every column past the grid; without
    one, every column."""
    r, w = x.shape
    if not a:
        cv.copy_(x)
        ci.copy_(torch.arange(w, device=x.device))
        return x.amax(1, keepdim=True)
    main = a * b
    grid = x[:, :main].view(r, a, b)                                # [r, a, b]
    m2 = maxima[:r, :, :max(a, b)]                                  # [r, 2, max(a, b)]
    torch.amax(grid, 2, out=m2[:, 0, :a])
    torch.amax(grid, 1, out=m2[:, 1, :b])
    sel = m2.topk(k, dim=-1, sorted=False)[1]                       # [r, 2, k]
    ids = ci[:, :k * k]
    torch.add(sel[:, 1, None, :], sel[:, 0, :, None], alpha=b, out=ids.view(r, k, k))
    torch.gather(x, 1, ids, out=cv[:, :k * k])
    m = m2[:, 0, :a].amax(1, keepdim=True)                          # [r, 1]
    if main < w:  # columns past the grid (the last block only): all candidates
        cv[:, k * k:] = x[:, main:]
        ci[:, k * k:] = torch.arange(main, w, device=x.device)
        m = torch.maximum(m, x[:, main:].amax(1, keepdim=True))
    return m


def _tile_reductions(x: torch.Tensor, m: torch.Tensor, t_col: torch.Tensor, t_loc: torch.Tensor,
                     cmp_buf: torch.Tensor, out: torch.Tensor) -> None:
    """Per row of the tile x [r, w]: out[0] its maximum m, out[1] sum exp(x - m), out[2] how many
    logits beat the target's t_col [r, 1], out[3] the logit at column t_loc [r, 1] (the target's
    own, for the block that holds it). out: [4, r]. Overwrites x."""
    r, w = x.shape
    out[0] = m[:, 0]
    g = cmp_buf[:r * w].view(r, w)
    torch.gt(x, t_col, out=g)
    torch.sum(g, 1, out=out[2])
    out[3] = x.gather(1, t_loc)[:, 0]
    # sum exp(x - max) = sum 2^((x - max) log2 e), in place: the block is done with.
    torch.add(m.mul_(-LOG2E), x, alpha=LOG2E, out=x)
    torch.sum(x.clamp_(min=EXP2_FLOOR).exp2_(), 1, out=out[1])


def _combine(blk: torch.Tensor, cand_v: list[torch.Tensor], cand_i: list[torch.Tensor],
             t_logit: torch.Tensor, targets: torch.Tensor, ct: int,
             k: int) -> tuple[torch.Tensor, ...]:
    """Merge the per-block results (blk [4, R, blocks]: max, sum exp, count above, own logit) into
    lens_topk's (topk_ids, topk_logprobs, target_logprob, target_rank)."""
    blk_max, blk_sum, blk_cnt, own = blk
    has_target = targets >= 0
    gmax = blk_max.amax(1, keepdim=True)                            # [R, 1]
    lse = gmax[:, 0] + torch.log((blk_sum * torch.exp(blk_max - gmax)).sum(1))
    top_val, sel = torch.cat(cand_v, 1).topk(k, dim=-1)             # [R, k]
    top_idx = torch.cat(cand_i, 1).gather(1, sel)
    # The target counted itself if its own logit from the product beats t_logit: take it out.
    own_t = own.gather(1, (targets.clamp_min(0) // ct)[:, None])[:, 0]
    higher = blk_cnt.sum(1, dtype=torch.float64).long() - (has_target & (own_t > t_logit)).long()
    t_lp = torch.where(has_target, t_logit - lse, torch.full_like(lse, float("nan")))
    rank = torch.where(has_target, higher + 1, torch.zeros_like(higher))
    return top_idx, top_val - lse[:, None], t_lp, rank


def cache_argument(model: Any) -> str:
    """The keyword under which this transformers takes (and returns) the KV cache.

    Newer transformers (5.24 here) name it `cache`, in the forward's arguments and in its outputs,
    and warn that the old name `past_key_values` goes in 5.40; 5.17, the oldest release we support,
    knows only `past_key_values`. Detected from the forward's signature, not from a version.
    """
    # The class's forward: an instance's forward may be wrapped by a profiler or a recorder.
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


# --- float32 attention probabilities in every dtype ----------------------------------------------

FLOAT32_SOFTMAX = "model_atlas_eager_float32_softmax"  # the attention implementation's name


def float32_softmax_attention(module: Any, query: torch.Tensor, key: torch.Tensor,
                              value: torch.Tensor, attention_mask: torch.Tensor | None,
                              scaling: float | None = None, dropout: float = 0.0,
                              **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention that returns, as its attention weights, the float32 softmax of the scores.

    The scores are computed as transformers' eager attention computes them, in the model's dtype;
    the model goes on with the probabilities cast to its dtype, exactly as eager does. What is
    captured is the float32 softmax before that cast: in bfloat16 the cast alone moves a weight
    by up to 2^-9 of itself, which with the 1/128 storage grid breaks the 1/255 bound.
    query: [B, H, Q, d]; key, value: [B, KV, K, d] (grouped-query: KV < H).
    """
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # transformers' repeat_kv order: key/value head g serves heads g*n .. g*n+n-1
        key = key.repeat_interleave(groups, dim=1)                 # [B, H, K, d]
        value = value.repeat_interleave(groups, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling    # [B, H, Q, K], model dtype
    if attention_mask is not None:
        scores = scores + attention_mask[..., :key.shape[-2]]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32)       # [B, H, Q, K] float32
    weights = torch.nn.functional.dropout(probs.to(value.dtype), p=dropout,
                                          training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()  # [B, Q, H, d]
    return out, probs


def capture_float32_softmax(model: Any) -> str:
    """Make a model whose weights are not float32 return float32 attention probabilities.

    Registers `float32_softmax_attention` (and eager's attention mask for it) with transformers'
    attention interfaces and switches the model to it; a float32 model keeps plain "eager" (its
    softmax is float32 already). Returns the softmax's dtype as the artifact records it.
    """
    if model.dtype == torch.float32:
        return "float32"
    if getattr(model.config, "_attn_implementation", None) != FLOAT32_SOFTMAX:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
        AttentionInterface.register(FLOAT32_SOFTMAX, float32_softmax_attention)
        AttentionMaskInterface.register(FLOAT32_SOFTMAX, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
        model.set_attn_implementation(FLOAT32_SOFTMAX)
    return "float32"


# --- one batch -------------------------------------------------------------------------------------

@dataclass
class Passes:
    """What the prefill and the generation steps of one batch returned, still on the device.

    attention[l]: float32 [B, H, S, S] of layer l over the whole batch, S = P + n_new: the
    prefill's [P, P] block, then one row per step (step s: the row of position P + s, keys up to
    it); rows of left padding hold whatever the model gave them and are never read.
    hidden[s][l]: [B, queries, D], layer l's output in pass s (0 = the prefill; entry L-1 already
    has the final norm); generated: [B, n_new] greedy ids (before cutting at end-of-text).
    """
    attention: list[torch.Tensor]
    hidden: list[tuple[torch.Tensor, ...]]
    generated: torch.Tensor
    stacked: torch.Tensor | None = None   # [L, B, H, S, S] whose views `attention` holds, if any


def left_pad(seqs: list[list[int]], pad_id: int, dev: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences left-padded into ids and attention mask, both [B, P] on `dev`."""
    B, P = len(seqs), max(len(s) for s in seqs)
    ids = torch.full((B, P), pad_id, dtype=torch.long)
    mask = torch.zeros((B, P), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, P - len(s):] = torch.tensor(s)
        mask[b, P - len(s):] = 1
    return ids.to(dev), mask.to(dev)


@torch.no_grad()
def generate_with_capture(model: Any, ids: torch.Tensor, mask: torch.Tensor,
                          n_new: int) -> Passes:
    """One eager prefill over the left-padded prompts, then n_new single-token steps over the KV
    cache, each returning its attention rows and hidden states, kept on the device.

    Every forward pass of the batch happens here (a recorder of per-layer activations wraps this
    function's model calls). Positions count from each row's first real token. The last step
    feeds the last generated token only to capture it. Nothing waits for the device in the loop.
    """
    dev = ids.device
    B, P = ids.shape
    S = P + n_new
    pos = (mask.cumsum(-1) - 1).clamp_min(0)                        # [B, P]
    capture = dict(output_attentions=True, output_hidden_states=True, use_cache=n_new > 0,
                   logits_to_keep=1)
    cache_kw = cache_argument(model)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, **capture)
    if not out.attentions or out.attentions[0] is None:
        raise RuntimeError("the model returned no attention maps (is attn_implementation eager?)")
    # One [L, B, H, S, S] tensor when every layer is on one device (then metrics, quantization
    # and packing run over all layers at once); with device_map="auto" layers may sit on
    # different devices, and each layer's attention stays where it is.
    L, H = len(out.attentions), out.attentions[0].shape[1]
    devices = {a.device for a in out.attentions}
    stacked = (torch.zeros((L, B, H, S, S), dtype=torch.float32, device=devices.pop())
               if len(devices) == 1 else None)
    att = []
    for l, a in enumerate(out.attentions):                          # L x [B, H, P, P]
        full = stacked[l] if stacked is not None else torch.zeros(
            (B, H, S, S), dtype=torch.float32, device=a.device)
        full[:, :, :P, :P] = a
        att.append(full)                                            # L x float32 [B, H, S, S]
    hid_steps = [out.hidden_states[1:]]                             # L x [B, P, D]
    new = []
    for s in range(n_new):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True).to(dev)   # [B, 1]
        new.append(nxt)
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)       # [B, P + s + 1]
        pos = pos[:, -1:] + 1                                       # [B, 1]
        out = model(input_ids=nxt, attention_mask=mask, position_ids=pos,
                    **{cache_kw: getattr(out, cache_kw)}, **capture)
        for full, a in zip(att, out.attentions):                    # a: [B, H, 1, P + s + 1]
            full[:, :, P + s, :P + s + 1] = a[:, :, 0]
        hid_steps.append(out.hidden_states[1:])                     # L x [B, 1, D]
    gen = torch.cat(new, dim=1) if new else torch.zeros((B, 0), dtype=torch.long, device=dev)
    return Passes(att, hid_steps, gen, stacked)


def kept_continuations(generated: torch.Tensor, eos_id: int | None) -> list[list[int]]:
    """Generated ids kept per row: up to and including the first end-of-text."""
    kept = []
    for row in generated.tolist():
        if eos_id is not None and eos_id in row:
            row = row[:row.index(eos_id) + 1]
        kept.append(row)
    return kept


@torch.no_grad()
def logit_lens(model: Any, passes: Passes, all_ids: torch.Tensor, valid: torch.Tensor,
               k: int, lens_k: int) -> tuple[np.ndarray, ...]:
    """The logit lens at every analysed position (valid: bool [B, P + n_new]), layers stacked.

    The output layer keeps its top k (the model's predictions); every other layer its top lens_k.
    Returns host arrays (N = valid positions, batch-major):
    top_ids int64 [N, k], top_logprobs float32 [N, k] (the output layer),
    lens_ids int64 [L, N, lens_k], lens_logprobs float32 [L, N, lens_k] (the output layer's are the
    first lens_k of its top k), next_logprob float32 [L, N], next_rank int64 [L, N].
    """
    unemb = model.get_output_embeddings()
    out_dev = unemb.weight.device
    bias = getattr(unemb, "bias", None)
    norm = final_norm(model)
    norm_dev = next(norm.parameters()).device
    layers = len(passes.hidden[0])
    stacked = []
    for l in range(layers):
        h = torch.cat([step[l] for step in passes.hidden], dim=1)  # [B, P + n_new, D]
        h = h[valid.to(h.device)]                                   # [N, D]
        stacked.append((norm(h.to(norm_dev)) if l < layers - 1 else h).to(out_dev))
    all_ids, valid = all_ids.to(out_dev), valid.to(out_dev)
    nxt_ids = torch.full_like(all_ids, -1)                          # [B, P + n_new]
    nxt_ids[:, :-1] = torch.where(valid[:, 1:], all_ids[:, 1:], -1)
    targets = nxt_ids[valid]                                         # [N]
    h = torch.stack(stacked)                                         # [L, N, D]
    L, N, D = h.shape
    # Layers before the output: lens_k each; the output layer: k (its top k are the predictions).
    top = lens_topk(h[-1], unemb.weight, bias, targets, k)
    if L > 1:
        low = lens_topk(h[:-1].reshape((L - 1) * N, D), unemb.weight, bias,
                        targets.repeat(L - 1), lens_k)
    else:  # a one-layer model: the output layer is the only one
        low = tuple(x[:0] for x in top)
    lens_ids = torch.cat([low[0].view(L - 1, N, -1)[..., :lens_k], top[0][None, :, :lens_k]])
    lens_lps = torch.cat([low[1].view(L - 1, N, -1)[..., :lens_k], top[1][None, :, :lens_k]])
    t_lp = torch.cat([low[2].view(L - 1, N), top[2][None]])          # [L, N]
    rank = torch.cat([low[3].view(L - 1, N), top[3][None]])          # [L, N]
    return tuple(x.cpu().numpy() for x in (top[0], top[1], lens_ids, lens_lps, t_lp, rank))


@torch.no_grad()
def logit_attribution(rec: DlaRecorder, passes: Passes, all_ids: torch.Tensor, valid: torch.Tensor,
                      top1: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Direct logit attribution at every analysed position to [the model's top-1 prediction,
    the token that actually came next]: host float32 [N, 2, C], its relative error [N, 2],
    checked against the model's own output-layer hidden states, and the stored top components
    ranked on the device (`attribution.rank_components`)."""
    dev = rec.unembed.weight.device
    all_ids, valid = all_ids.to(dev), valid.to(dev)
    nxt_ids = torch.full_like(all_ids, -1)                          # [B, P + n_new]
    nxt_ids[:, :-1] = torch.where(valid[:, 1:], all_ids[:, 1:], -1)
    targets = torch.stack([torch.as_tensor(top1, device=dev), nxt_ids[valid]], 1)   # [N, 2]
    last = torch.cat([step[-1].to(dev) for step in passes.hidden], dim=1)[valid]    # [N, D]
    out, err = direct_logit_attribution(rec, valid, targets, last)
    return out.cpu().numpy(), err.cpu().numpy(), rank_components(out, DLA_TOP_K)


# Bytes of attention one call of the device metrics takes at once: their temporaries are as large
# as their input, so all layers of a large batch go in chunks of layers.
METRICS_CHUNK_BYTES = 256 << 20


def _layer_chunks(passes: Passes) -> list[torch.Tensor]:
    """The attention in pieces of [layers, B, H, S, S] for the device metrics: chunks of layers of
    the stacked tensor, or one layer at a time when layers sit on different devices."""
    if passes.stacked is None:
        return [a[None] for a in passes.attention]
    per_layer = passes.stacked[0].numel() * 4
    step = max(1, METRICS_CHUNK_BYTES // max(per_layer, 1))
    return [passes.stacked[i:i + step] for i in range(0, passes.stacked.shape[0], step)]


@torch.no_grad()
def attention_metrics(passes: Passes, at: device_metrics.Positions, kv_heads: int,
                      out_dev: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Every head metric of every layer, and the grouped-query comparison where kv_heads < H,
    from the full-precision attention, batched on the device (all layers at once, or in chunks):
    float32 [len(HEAD_METRICS), L, B, H] and [L, B, 1 + 2G] (or None) on the host."""
    heads = passes.attention[0].shape[1]
    per_chunk, groups = [], []
    for a in _layer_chunks(passes):                                 # [l, B, H, S, S]
        at_c = at.to(a.device)
        per_chunk.append(device_metrics.head_metrics(a, at_c).to(out_dev))    # [5, l, B, H]
        if kv_heads < heads:
            groups.append(device_metrics.group_metrics(a, at_c, kv_heads).to(out_dev))
    metrics = torch.cat(per_chunk, dim=1).cpu().numpy()             # [5, L, B, H]
    return metrics, (torch.cat(groups).cpu().numpy() if groups else None)  # [L, B, 1 + 2G]


@functools.lru_cache(maxsize=64)
def _tril_index(n: int, device: str) -> torch.Tensor:
    """Flat indices into an [n, n] block of its lower triangle in stored order (row by row)."""
    rows, keys = np.tril_indices(n)
    return torch.from_numpy(rows * n + keys).to(device)


def encode_on_device(q: torch.Tensor) -> tuple[np.ndarray, list[int]]:
    """`codec.encode_heads` on the tensor's device: uint8 [..., n, n] (q / 128, one layer's heads
    or more; only the lower triangle is read) -> (every head's block, in order; each block's
    size). The counts come to the host first, then the bytes in one copy; the host only puts
    each head's four parts (count, digits, overflow bytes, runs) side by side."""
    n = q.shape[-1]
    dev = q.device
    flat = q.reshape(-1, n * n).index_select(1, _tril_index(n, str(dev)))   # [M, N] row by row
    M, N = flat.shape
    nonzero = flat > 0
    counts = nonzero.sum(1)                                          # [M] non-zero values a head
    values = flat[nonzero]                                           # head by head, in order
    head_of = torch.repeat_interleave(torch.arange(M, device=dev), counts,
                                      output_size=values.numel())
    # Digits min(q, 6) - 1, three to a byte, each head's padded to a multiple of three.
    padding = (3 - counts % 3) % 3
    shift = torch.cumsum(padding, 0) - padding                      # padding before each head
    digits = torch.zeros(values.numel() + int(padding.sum()), dtype=torch.uint8, device=dev)
    digits[torch.arange(values.numel(), device=dev) + shift[head_of]] = (
        values.clamp(max=DIGIT_ESCAPE + 1) - 1)
    d = digits.view(-1, 3)
    codes = d[:, 0] * 36 + d[:, 1] * 6 + d[:, 2]                    # uint8, <= 215
    escaped = values > DIGIT_ESCAPE
    over = values[escaped] - (DIGIT_ESCAPE + 1)                      # head by head, in order
    n_over = torch.bincount(head_of[escaped], minlength=M)
    # Runs: a point where each run starts (a zero run first, so position 0 twice when it is
    # non-zero), and N; lengths between points of the same head.
    starts = torch.zeros(M, N + 2, dtype=torch.bool, device=dev)   # column c: point max(c-1, 0)
    starts[:, 0] = starts[:, N + 1] = True
    starts[:, 1] = nonzero[:, 0]
    starts[:, 2:N + 1] = nonzero[:, 1:] != nonzero[:, :-1]
    head, col = starts.nonzero(as_tuple=True)                        # head by head, in order
    point = (col - 1).clamp(min=0)
    same = head[1:] == head[:-1]
    runs, run_head = (point[1:] - point[:-1])[same], head[1:][same]
    width = max(1, -(-N.bit_length() // 7))                         # varint bytes of N
    shifts = torch.arange(width, device=dev) * 7
    groups = (runs[:, None] >> shifts) & 0x7F                        # [R, width]
    used = torch.ones_like(groups, dtype=torch.bool)
    used[:, 1:] = (runs[:, None] >> shifts[1:]) > 0
    follows = torch.zeros_like(used)
    follows[:, :-1] = used[:, 1:]
    run_bytes = (groups | follows.long() << 7).to(torch.uint8)[used]
    n_runs = torch.zeros(M, dtype=torch.long, device=dev).index_add_(0, run_head, used.sum(1))
    sizes = torch.stack([-(-counts // 3), n_over, n_runs]).cpu().numpy()    # [3, M] bytes
    stream = torch.cat([codes, over, run_bytes]).cpu().numpy()      # all digits, overflow, runs
    ends = np.cumsum(sizes.reshape(-1)).reshape(3, M)               # each part's end in stream
    headers = [varint_bytes([c]) for c in counts.cpu().tolist()]
    parts = [[headers[h]] + [stream[ends[i, h] - sizes[i, h]:ends[i, h]] for i in range(3)]
             for h in range(M)]
    out_sizes = [sum(p.size for p in head) for head in parts]
    parts = [p for head in parts for p in head]
    return np.concatenate(parts).astype(np.uint8), out_sizes


@torch.no_grad()
def pack_attention(passes: Passes, starts: list[int], lengths: list[int],
                   out_dev: Any) -> list[StoredAttention]:
    """Each sequence's stored attention, quantized and encoded on the device layer by layer
    (`encode_on_device`), its bytes copied to the host (n = its analysed tokens)."""
    if passes.stacked is not None:
        # Layer by layer into one uint8 tensor: quantize's float temporary stays one layer big.
        quantized = torch.empty(passes.stacked.shape, dtype=torch.uint8,
                                device=passes.stacked.device)       # uint8 [L, B, H, S, S]
        for l, layer in enumerate(passes.stacked):
            quantized[l] = quantize_attention(layer)
        blocks = [quantized[:, b, :, st:st + n, st:st + n]          # [L, H, n, n]
                  for b, (st, n) in enumerate(zip(starts, lengths))]
    else:
        layers = [quantize_attention(a) for a in passes.attention]  # L x uint8 [B, H, S, S]
        blocks = [torch.stack([q[b, :, st:st + n, st:st + n].to(out_dev) for q in layers])
                  for b, (st, n) in enumerate(zip(starts, lengths))]
    out = []
    for block, n in zip(blocks, lengths):
        L, H = block.shape[:2]
        encoded = [encode_on_device(layer) for layer in block]       # layer [H, n, n]
        out.append(StoredAttention(np.concatenate([data for data, _ in encoded]),
                                   [sizes for _, sizes in encoded], H, n))
    return out


@torch.no_grad()
def run_batch(model: Any, seqs: list[list[int]], n_new: int, eos_id: int | None, pad_id: int,
              k: int, lens_k: int | None = None, dla: bool = True) -> list[SequenceOutput]:
    """Greedy continuation of each sequence (up to n_new tokens, cut after end-of-text), with the
    attention and the logit lens of prompt + continuation captured on the way: the model's top k
    predictions at every position, the top lens_k (default k) of every other layer, every head
    metric, the attention quantized and packed for storage, and (with `dla`) the direct logit
    attribution of every position to its top-1 prediction and to the token that came next.

    The stages, each its own function: `left_pad` -> `generate_with_capture` (every forward pass
    of the batch: the prefill and the n_new steps, with a `DlaRecorder` on them when `dla`) ->
    `kept_continuations` -> `logit_lens`, `logit_attribution`, `attention_metrics`,
    `pack_attention` (all on the device; a few arrays come to the host).
    """
    lens_k = k if lens_k is None else lens_k
    capture_float32_softmax(model)
    lengths = [len(s) for s in seqs]
    B, P = len(seqs), max(lengths)
    ids, mask = left_pad(seqs, pad_id, model.device)                # [B, P]
    # The recorder's hooks live only as long as the passes (removed even if one fails).
    with (DlaRecorder(model) if dla else contextlib.nullcontext()) as rec:
        passes = generate_with_capture(model, ids, mask, n_new)
    kept = kept_continuations(passes.generated, eos_id)
    starts = [P - n for n in lengths]
    analysed = [n + len(x) for n, x in zip(lengths, kept)]
    valid = torch.zeros((B, P + n_new), dtype=torch.bool)           # analysed positions
    for b in range(B):
        valid[b, starts[b]:starts[b] + analysed[b]] = True
    all_ids = torch.cat([ids, passes.generated.to(ids.device)], dim=1)  # [B, P + n_new]
    top_ids, top_lps, lens_ids, lens_lps, t_lp, rank = logit_lens(model, passes, all_ids, valid,
                                                                  k, lens_k)
    attr, attr_err, ranked = (logit_attribution(rec, passes, all_ids, valid, top_ids[:, 0])
                              if dla else (None, None, None))
    out_dev = model.get_output_embeddings().weight.device
    dev0 = passes.attention[0].device
    at = device_metrics.Positions(torch.tensor(starts), valid.to(dev0), all_ids.to(dev0))
    kv = getattr(model.config, "num_key_value_heads", None) or passes.attention[0].shape[1]
    metrics, groups = attention_metrics(passes, at, kv, out_dev)
    packed = pack_attention(passes, starts, analysed, out_dev)
    del passes, rec                   # the attention and the recorded activations, on the device
    results, offset = [], 0
    for b, n in enumerate(analysed):
        sl = slice(offset, offset + n)
        offset += n
        results.append(SequenceOutput(seqs[b] + kept[b], packed[b], top_ids[sl], top_lps[sl],
                                      lens_ids[:, sl], lens_lps[:, sl], t_lp[:, sl], rank[:, sl],
                                      metrics[:, :, b], None if groups is None else groups[:, b],
                                      None if attr is None else attr[sl],
                                      None if attr is None else attr_err[sl],
                                      None if attr is None else tuple(r[sl] for r in ranked)))
    return results
