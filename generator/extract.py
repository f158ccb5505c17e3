"""Device-side capture and reductions of one batch of prompts (imports torch).

`run_batch` generates each prompt's greedy continuation and captures everything it analyses in the
same passes: one eager prefill over the left-padded prompts, then one single-token step over the
KV cache per generated token, each returning its attention rows and hidden states. Attention is
never recomputed for the continuation and the prompt+continuation is never run a second time
(only a long prompt's prefill runs twice, to hold one layer's attention at a time: see below).

Attention is captured as float32 probabilities in every dtype: a model whose weights are not
float32 runs `float32_softmax_attention`, which computes the scores as eager attention does and
returns their float32 softmax (the model itself goes on with it cast to its dtype).

Everything is reduced on the device before it is copied to the host: the head metrics from the
full-precision attention (`device_metrics`), the attention quantized to uint8 and encoded in the
stored format (no host-side indexing), predictions as top-k ids and log-probabilities, and the
direct logit attribution (`attribution.DlaRecorder` hooks the same passes and keeps per layer
only [positions, width] activations; `attribution.direct_logit_attribution` reduces them to
[positions, 2, components]). The host receives a few arrays per batch.

Attention is reduced one layer at a time (`AttentionReduction`), never held as [L, H, T, T]
float32 for all layers of a long prompt: an `AttentionTap` (forward hooks on each layer's
attention module; the model is not asked for `output_attentions`, so transformers keeps none)
takes each layer's weights as that layer runs. The steps' rows are small and always kept. The
prefill's [B, H, P, P] of every layer is kept until the continuation is known only while all
layers fit the batch's budget (`prefill_bytes`, short prompts: as before, no extra work); past
it, the prefill runs a second time with the same inputs after the continuation, and each layer
is reduced inside that forward and dropped (one more prefill: a long prompt's time is mostly the
logit lens). Both ways store the same bytes (tests/test_compute.py).

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
from .codec import DIGIT_ESCAPE, dense_head, head_block, key_order
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
# Values `encode_on_device` takes at once: its temporaries are a few bytes a value (64 M: a few
# hundred MB), so a long prompt's layers are encoded a few at a time.
ENCODE_CHUNK = 1 << 26

@dataclass
class StoredAttention:
    """One sequence's attention as stored (`codec.encode_heads`, encoded on the device)."""
    data: np.ndarray            # uint8: every head's digits, then overflow bytes, then runs
    index: np.ndarray           # int64 [L, H, 3]: each head's n, overflow count, runs size
    heads: int
    length: int                 # T

    def values(self) -> np.ndarray:
        """The stored values decoded: uint8 [L, H, T, T], zero above the diagonal."""
        L, H, _ = self.index.shape
        return np.stack([dense_head(head_block(self.data, self.index, i), self.length)
                         for i in range(L * H)]).reshape(L, H, self.length, self.length)


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


def quantize_rows(p: torch.Tensor) -> torch.Tensor:
    """`quantize_attention` of maps p [..., S, S], a block of rows at a time (the metrics' blocks,
    `device_metrics.ROW_BLOCK`): the same bytes, with a float temporary of a block of rows
    instead of one the size of the maps."""
    out = torch.empty(p.shape, dtype=torch.uint8, device=p.device)
    rows = device_metrics.ROW_BLOCK
    for r0 in range(0, p.shape[-2], rows):
        out[..., r0:r0 + rows, :] = quantize_attention(p[..., r0:r0 + rows, :])
    return out


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

class AttentionTap:
    """Forward hooks on every layer's self-attention module that hand the attention weights it
    returns to `sink(layer, weights)` as soon as that layer has run, inside the forward.

    The model is called without `output_attentions`, so transformers keeps none of them: a weight
    tensor lives as long as `sink` keeps it (eager attention returns its weights whether asked or
    not; SDPA returns None, which is an error here). Use as a context manager around the passes.
    """

    def __init__(self, model: Any, sink: Any):
        self.modules = DlaRecorder(model).attn           # each decoder layer's self-attention
        self.sink = sink
        self._handles: list[Any] = []

    def _seen(self, layer: int, out: Any) -> None:
        weights = out[1] if isinstance(out, tuple) and len(out) > 1 else None
        if weights is None:
            raise RuntimeError("the model returned no attention maps (is attn_implementation "
                               "eager?)")
        self.sink(layer, weights)

    def __enter__(self) -> "AttentionTap":
        for l, module in enumerate(self.modules):
            self._handles.append(module.register_forward_hook(
                lambda m, args, out, l=l: self._seen(l, out)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


@dataclass
class Passes:
    """What the prefill and the generation steps of one batch returned, still on the device.

    prefill[l]: float32 [B, H, P, P], layer l's attention in the prefill, when it was kept
    (`generate_with_capture`'s `keep_prefill`), else None (then `reduce_attention` computes it
    again, layer by layer). rows[l]: float32 [B, H, n_new, S], S = P + n_new: layer l's
    attention rows of the single-token steps (step s: the row of position P + s, keys up to it).
    Rows of left padding hold whatever the model gave them and are never read.
    hidden[s][l]: [B, queries, D], layer l's output in pass s (0 = the prefill; entry L-1 already
    has the final norm); generated: [B, n_new] greedy ids (before cutting at end-of-text);
    prefill_inputs: the prefill's keyword arguments, to run it again exactly.
    """
    prefill: list[torch.Tensor | None] | None
    rows: list[torch.Tensor]
    hidden: list[tuple[torch.Tensor, ...]]
    generated: torch.Tensor
    prefill_inputs: dict[str, Any]


def prefill_bytes(layers: int, batch: int, heads: int, length: int) -> int:
    """Bytes of float32 attention [L, B, H, S, S] that keeping every layer's prefill holds."""
    return layers * batch * heads * length * length * 4


def left_pad(seqs: list[list[int]], pad_id: int, dev: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences left-padded into ids and attention mask, both [B, P] on `dev`."""
    B, P = len(seqs), max(len(s) for s in seqs)
    ids = torch.full((B, P), pad_id, dtype=torch.long)
    mask = torch.zeros((B, P), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, P - len(s):] = torch.tensor(s)
        mask[b, P - len(s):] = 1
    return ids.to(dev), mask.to(dev)


# The attention implementation of a prefill whose attention is not kept (`generate_with_capture`):
# SDPA makes no weights. (A test sets "eager" to check that the layers' attention made again from
# the prefill's hidden states is, bit for bit, the prefill's own.)
UNKEPT_PREFILL = "sdpa"


@contextlib.contextmanager
def attention_implementation(model: Any, impl: str):
    """The model runs with transformers' attention implementation `impl` inside, and with the one
    it had (eager, or `FLOAT32_SOFTMAX`) again after."""
    before = model.config._attn_implementation
    if before == impl:
        yield
        return
    model.set_attn_implementation(impl)
    try:
        yield
    finally:
        model.set_attn_implementation(before)


@torch.no_grad()
def generate_with_capture(model: Any, ids: torch.Tensor, mask: torch.Tensor,
                          n_new: int, keep_prefill: bool = True) -> Passes:
    """One prefill over the left-padded prompts, then n_new single-token eager steps over the KV
    cache, each handing its attention rows to an `AttentionTap` and returning its hidden states,
    kept on the device.

    The steps' rows are written into one [B, H, n_new, S] tensor per layer as they come. With
    `keep_prefill` the prefill is eager and its [B, H, P, P] attention of each layer is kept (all
    layers at once: the caller checks `prefill_bytes` against its budget). Without it the prefill
    runs in SDPA (`UNKEPT_PREFILL`), which makes no attention weights at all (on the CPU it takes
    half the time of an eager one at 2,048 tokens: 9.5 s against 18.5 for Qwen2.5-0.5B), and
    `reduce_attention` makes each layer's eager attention afterwards, from this prefill's hidden
    states (`attention_only`). Its hidden states differ from an eager prefill's by float
    rounding, so a stored weight may differ by one step of 1/128 from what an eager prefill would
    have given.

    Every forward pass of the batch happens here (a recorder of per-layer activations wraps this
    function's model calls). Positions count from each row's first real token. The last step
    feeds the last generated token only to capture it. Nothing waits for the device in the loop.
    """
    dev = ids.device
    B, P = ids.shape
    S = P + n_new
    pos = (mask.cumsum(-1) - 1).clamp_min(0)                        # [B, P]
    capture = dict(output_hidden_states=True, use_cache=n_new > 0, logits_to_keep=1)
    cache_kw = cache_argument(model)
    prefill: list[torch.Tensor | None] = []
    rows: list[torch.Tensor | None] = []
    step = -1                                                       # -1: the prefill

    def sink(l: int, a: torch.Tensor) -> None:
        if step < 0:                                                # a: [B, H, P, P]
            prefill[l] = a
        else:                                                       # a: [B, H, 1, P + step + 1]
            if rows[l] is None:
                rows[l] = torch.zeros((B, a.shape[1], n_new, S), dtype=torch.float32,
                                      device=a.device)
            rows[l][:, :, step, :P + step + 1] = a[:, :, 0]

    inputs = dict(input_ids=ids, attention_mask=mask, position_ids=pos, **capture)
    if keep_prefill:
        with AttentionTap(model, sink) as tap:
            prefill.extend([None] * len(tap.modules))
            out = model(**inputs)
        _captured(prefill)
    else:
        with attention_implementation(model, UNKEPT_PREFILL):
            out = model(**inputs)
    hid_steps = [out.hidden_states[1:]]                             # L x [B, P, D]
    rows.extend([None] * len(hid_steps[0]))
    new = []
    with AttentionTap(model, sink):
        for s in range(n_new):
            nxt = out.logits[:, -1].argmax(-1, keepdim=True).to(dev)   # [B, 1]
            new.append(nxt)
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)       # [B, P + s + 1]
            pos = pos[:, -1:] + 1                                       # [B, 1]
            step = s
            out = model(input_ids=nxt, attention_mask=mask, position_ids=pos,
                        **{cache_kw: getattr(out, cache_kw)}, **capture)
            hid_steps.append(out.hidden_states[1:])                     # L x [B, 1, D]
    if n_new:
        _captured(rows)
    else:       # no steps: empty rows, one per layer, where the layer's output is
        heads = model.config.num_attention_heads
        rows = [torch.zeros((B, heads, 0, S), dtype=torch.float32, device=h.device)
                for h in hid_steps[0]]
    gen = torch.cat(new, dim=1) if new else torch.zeros((B, 0), dtype=torch.long, device=dev)
    return Passes(prefill if keep_prefill else None, rows, hid_steps, gen, inputs)


def _captured(maps: list[torch.Tensor | None]) -> None:
    if any(m is None for m in maps):
        raise RuntimeError("the model returned no attention maps (is attn_implementation eager?)")


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


# Maps of at least this many tokens are encoded from their non-zero weights (`_encode_sparse`),
# shorter ones by passes over every position (`_encode_dense`): the same bytes. On this CPU the
# dense way is faster at 72 tokens (0.6 ms against 2.1 for 4 heads) and 700 (23 ms against 41),
# the sparse one at 1,737 (75 against 86) and 2,056 (254 against 387 for 14 heads).
SPARSE_ENCODE_FROM = 1024


def encode_on_device(q: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`codec.encode_heads` on the tensor's device: uint8 [..., n, n] (q / 128, some layers'
    heads; only the lower triangle is read) -> (every head's digits, every head's overflow
    bytes, every head's runs: uint8; the index: int64 [heads, 3], each head's n, overflow count
    and runs size). The counts come to the host first, then the bytes in one copy."""
    return (_encode_sparse if q.shape[-1] >= SPARSE_ENCODE_FROM else _encode_dense)(q)


@functools.lru_cache(maxsize=8)
def _key_order(n: int, device: str) -> torch.Tensor:
    """Flat indices into an [n, n] block of its lower triangle in stored order (key by key)."""
    queries, keys = key_order(n)
    return torch.from_numpy(queries * n + keys).to(device)


def _encode_dense(q: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`encode_on_device` for short maps: the positions permuted into stored order, then a few
    passes over all of them, no per-value index arrays."""
    n = q.shape[-1]
    dev = q.device
    flat = q.reshape(-1, n * n).index_select(1, _key_order(n, str(dev)))   # [M, N]: key by key
    M, N = flat.shape
    nonzero = flat > 0
    counts = nonzero.sum(1)                                          # [M] non-zero values a head
    escaped = flat > DIGIT_ESCAPE
    n_over = escaped.sum(1)
    over = flat[escaped] - (DIGIT_ESCAPE + 1)                        # head by head, in order
    # Digits min(q, 6) - 1, three to a byte: each head's non-zero values and 0 to 2 values of 1
    # (digit 0) that pad it to a multiple of three, taken in one pass.
    padding = (3 - counts % 3) % 3
    take = torch.cat([nonzero, torch.arange(2, device=dev) < padding[:, None]], 1)  # [M, N+2]
    d = (torch.cat([flat, flat.new_ones(M, 2)], 1)[take].clamp_(max=DIGIT_ESCAPE + 1) - 1)
    d = d.view(-1, 3)
    codes = d[:, 0] * 36 + d[:, 1] * 6 + d[:, 2]                    # uint8, <= 215
    # Runs: a point where each run starts (a zero run first, so position 0 twice when it is
    # non-zero), and N; lengths between points of the same head.
    starts = torch.zeros(M, N + 2, dtype=torch.bool, device=dev)   # column c: point max(c-1, 0)
    starts[:, 0] = starts[:, N + 1] = True
    starts[:, 1] = nonzero[:, 0]
    starts[:, 2:N + 1] = nonzero[:, 1:] != nonzero[:, :-1]
    head, col = starts.nonzero(as_tuple=True)                        # head by head, in order
    point = (col - 1).clamp_(min=0).int()                           # N < 2**31
    same = head[1:] == head[:-1]
    runs, run_head = (point[1:] - point[:-1])[same], head[1:][same]
    return _stored(codes, over, runs, run_head, counts, n_over, M, N)


def _encode_sparse(q: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`encode_on_device` for long maps, from their non-zero weights alone: one pass finds them
    (row by row), each gets its place in stored order (key k's queries start at
    k T - k (k - 1) / 2) and one sort puts them in that order; the runs are the gaps between
    them. At 2,048 tokens a weight under 1/256 is stored as nothing and most are, so this reads
    each map once instead of permuting and scanning all T (T + 1) / 2 positions several times."""
    n = q.shape[-1]
    dev = q.device
    flat = q.reshape(-1, n, n)
    M, N = flat.shape[0], n * (n + 1) // 2
    head, query, key = flat.nonzero(as_tuple=True)                   # row-major
    lower = query >= key
    head, query, key = head[lower], query[lower], key[lower]
    values = flat[head, query, key]
    # Place in stored order, key by key: key k's queries start at k n - k (k - 1) / 2.
    place = key * n - key * (key - 1) // 2 + (query - key)
    place, order = (head * N + place).sort()
    head, values = head[order], values[order]
    place -= head * N
    counts = torch.bincount(head, minlength=M)                       # [M] non-zero values a head
    escaped = values > DIGIT_ESCAPE
    n_over = torch.bincount(head[escaped], minlength=M)
    over = values[escaped] - (DIGIT_ESCAPE + 1)                      # head by head, in order
    # Digits min(q, 6) - 1, three to a byte: each head's values, then 0 to 2 values of 1 (digit 0)
    # that pad it to a multiple of three.
    padded = counts + (3 - counts % 3) % 3
    first = torch.cumsum(counts, 0) - counts                         # each head's first value
    slot = torch.cumsum(padded, 0) - padded                          # ... and its first digit
    at = slot[head] + torch.arange(head.numel(), device=dev) - first[head]
    d = torch.ones(int(padded.sum()), dtype=torch.uint8, device=dev)
    d[at] = values
    d = (d.clamp_(max=DIGIT_ESCAPE + 1) - 1).view(-1, 3)
    codes = d[:, 0] * 36 + d[:, 1] * 6 + d[:, 2]                    # uint8, <= 215
    # Runs: the points where runs change, per head: 0 (the zero run first, so 0 twice when
    # position 0 is non-zero), each non-zero run's start and end (an end at N is the head's end),
    # and N; the lengths are the gaps between a head's consecutive points.
    same = head[1:] == head[:-1]
    starts = torch.ones_like(place, dtype=torch.bool)
    starts[1:] = ~same | (place[1:] != place[:-1] + 1)
    ends = torch.ones_like(starts)
    ends[:-1] = starts[1:]
    heads = torch.arange(M, device=dev)
    end_at = place[ends] + 1
    end_head = head[ends]
    inner = end_at < N
    point = torch.cat([heads * 0, place[starts], end_at[inner], heads * 0 + N]).int()  # N < 2**31
    owner = torch.cat([heads, head[starts], end_head[inner], heads])
    # Sorted by head, then position; at one position the head's 0 comes before a run's start.
    kind = torch.cat([heads * 0, place[starts] * 0 + 1, end_at[inner] * 0 + 1, heads * 0 + 2])
    _, order = (owner * (3 * N + 3) + point.long() * 3 + kind).sort()
    point, owner = point[order], owner[order]
    same_head = owner[1:] == owner[:-1]
    runs, run_head = (point[1:] - point[:-1])[same_head], owner[1:][same_head]
    return _stored(codes, over, runs, run_head, counts, n_over, M, N)


def _stored(codes: torch.Tensor, over: torch.Tensor, runs: torch.Tensor, run_head: torch.Tensor,
            counts: torch.Tensor, n_over: torch.Tensor, M: int, N: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`encode_on_device`'s result from every head's digit codes and overflow bytes, and the run
    lengths of every head in order (`run_head`: each run's head), as varints."""
    dev = runs.device
    width = max(1, -(-N.bit_length() // 7))                         # varint bytes of N
    shifts = torch.arange(width, device=dev, dtype=torch.int32) * 7
    groups = (runs[:, None] >> shifts) & 0x7F                        # [R, width]
    used = torch.ones_like(groups, dtype=torch.bool)
    used[:, 1:] = (runs[:, None] >> shifts[1:]) > 0
    follows = torch.zeros_like(used)
    follows[:, :-1] = used[:, 1:]
    run_bytes = (groups | follows.int() << 7).to(torch.uint8)[used]
    n_runs = torch.zeros(M, dtype=torch.long, device=dev).index_add_(0, run_head, used.sum(1))
    index = torch.stack([counts, n_over, n_runs], 1).cpu().numpy()   # [M, 3]
    stream = torch.cat([codes, over, run_bytes]).cpu().numpy()
    cut = np.cumsum([codes.numel(), over.numel()])
    return (*np.split(stream, cut), index)


def encode_chunks(block: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """One sequence's quantized attention, uint8 [L, H, n, n] -> (the stored bytes, the index
    int64 [L, H, 3]): `encode_on_device` over as many layers at a time as ENCODE_CHUNK values
    hold (all of them at short lengths, one at a time at long ones), its parts joined."""
    L, H, n = block.shape[:3]
    step = max(1, ENCODE_CHUNK // max(H * n * n, 1))
    return join_parts([encode_on_device(block[l:l + step]) for l in range(0, L, step)], L, H)


def join_parts(parts: list[tuple[np.ndarray, ...]], L: int, H: int) -> tuple[np.ndarray, np.ndarray]:
    """`encode_on_device`'s outputs for consecutive layers -> the stored bytes (every head's
    digits, then every head's overflow bytes, then every head's runs) and the index [L, H, 3]."""
    data = np.concatenate([p[i] for i in range(3) for p in parts])
    return data, np.concatenate([p[3] for p in parts]).reshape(L, H, 3)


class AttentionReduction:
    """What is measured and stored of a batch's attention, reduced one layer at a time.

    `layer(l, prefill, rows)` takes layer l's prefill attention [B, H, P, P] and its steps' rows
    [B, H, n_new, S], puts them in one float32 [B, H, S, S] (the only one held: the next layer
    overwrites it), and reduces it on its device to every head metric
    (`device_metrics.head_metrics`), the grouped-query comparison where kv_heads < H, and each
    sequence's stored bytes (quantized, encoded). So memory holds one layer's attention at a time,
    whatever the prompt's length; `results` gives what the layers left, on the host.
    """

    def __init__(self, at: device_metrics.Positions, starts: list[int], lengths: list[int],
                 kv_heads: int, layers: int, out_dev: Any):
        self.at, self.starts, self.lengths = at, starts, lengths
        self.kv_heads, self.out_dev = kv_heads, out_dev
        self.metrics: list[torch.Tensor | None] = [None] * layers      # [5, B, H] each
        self.groups: list[torch.Tensor | None] = [None] * layers       # [B, 1 + 2G] each
        self.encoded: list[list[Any]] = [[None] * layers for _ in lengths]
        self._full: torch.Tensor | None = None   # one layer's maps, the same buffer every layer

    @torch.no_grad()
    def layer(self, l: int, prefill: torch.Tensor, rows: torch.Tensor) -> None:
        B, H, P, _ = prefill.shape
        S = rows.shape[-1]
        full = self._full                                              # float32 [B, H, S, S]
        if full is None or full.shape != (B, H, S, S) or full.device != rows.device:
            # Zero once: no layer writes above the steps' rows ([:P, P:], the future).
            full = self._full = rows.new_zeros((B, H, S, S))
        full[:, :, :P, :P] = prefill
        full[:, :, P:, :] = rows
        at = self.at.to(full.device)
        self.metrics[l] = device_metrics.head_metrics(full[None], at)[:, 0].to(self.out_dev)
        quantized = quantize_rows(full)                                # uint8 [B, H, S, S]
        if self.kv_heads < H:   # full is done with but for this: its rows masked in place
            self.groups[l] = device_metrics.group_metrics(
                device_metrics.mask_queries(full, at)[None], at, self.kv_heads,
                masked=True)[0].to(self.out_dev)
        for b, (st, n) in enumerate(zip(self.starts, self.lengths)):
            self.encoded[b][l] = encode_on_device(quantized[b, :, st:st + n, st:st + n])  # [H]

    def results(self) -> tuple[np.ndarray, np.ndarray | None, list[StoredAttention]]:
        """float32 [len(HEAD_METRICS), L, B, H] and [L, B, 1 + 2G] (or None) on the host, and each
        sequence's stored attention."""
        self._full = None
        metrics = torch.stack(self.metrics, dim=1).cpu().numpy()       # [5, L, B, H]
        groups = (torch.stack(self.groups).cpu().numpy()
                  if self.groups[0] is not None else None)             # [L, B, 1 + 2G]
        heads = metrics.shape[-1]
        stored = [StoredAttention(*join_parts(layers, len(layers), heads), heads, n)
                  for layers, n in zip(self.encoded, self.lengths)]
        return metrics, groups, stored


@contextlib.contextmanager
def attention_only(model: Any, outputs: tuple[torch.Tensor, ...] | None):
    """While the prefill runs again (`reduce_attention`), run each layer's attention but not its
    MLP: every MLP returns zeros without computing anything, and every layer's output but the
    last is replaced by `outputs[l]`, that layer's output in the first prefill (its hidden
    state). So each layer's attention sees, bit for bit, the input it saw in the first prefill,
    at the cost of the attention alone (an MLP is most of a layer's work: two thirds of
    Qwen2.5-0.5B's at 2,048 tokens). `outputs` None: the full layers run, as the first time."""
    if outputs is None:
        yield
        return
    found = DlaRecorder(model)              # finds the decoder layers and their MLPs
    saved: list[tuple[Any, Any]] = []
    handles = []

    def skipped(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.zeros_like(x)

    def replaced(out: Any, stored: torch.Tensor) -> Any:
        return (stored, *out[1:]) if isinstance(out, tuple) else stored

    try:
        for l, (layer, mlp) in enumerate(zip(found.layers, found.mlps)):
            saved.append((mlp, mlp.__dict__.get("forward")))   # an accelerate wrapper, if any
            mlp.forward = skipped
            if l < len(found.layers) - 1:  # the last entry has the final norm applied
                handles.append(layer.register_forward_hook(
                    lambda m, args, out, l=l: replaced(out, outputs[l])))
        yield
    finally:
        for h in handles:
            h.remove()
        for mlp, own in saved:
            if own is None:
                del mlp.forward
            else:
                mlp.forward = own


@torch.no_grad()
def reduce_attention(model: Any, passes: Passes, reduction: AttentionReduction,
                     outputs: tuple[torch.Tensor, ...] | None = None) -> None:
    """Every layer of the batch's attention through `reduction`, one layer at a time: from the
    kept prefill, or (none kept) by running the prefill again with an `AttentionTap` that reduces
    each layer inside the forward, as soon as it is made; given the first prefill's layer
    `outputs` (`Passes.hidden[0]`), only the attention of each layer runs again
    (`attention_only`). Each layer gets the input it had in the first prefill, so it makes the
    attention that prefill would have made: the same bytes as a kept prefill when the first was
    eager too (`UNKEPT_PREFILL`)."""
    if passes.prefill is not None:
        for l, rows in enumerate(passes.rows):
            reduction.layer(l, passes.prefill[l], rows)
            passes.prefill[l] = passes.rows[l] = None
        return

    def sink(l: int, a: torch.Tensor) -> None:
        reduction.layer(l, a, passes.rows[l])
        passes.rows[l] = None

    with AttentionTap(model, sink), attention_only(model, outputs):
        model(**passes.prefill_inputs)


@torch.no_grad()
def run_batch(model: Any, seqs: list[list[int]], n_new: int, eos_id: int | None, pad_id: int,
              k: int, lens_k: int | None = None, dla: bool = True,
              prefill_budget: int = 512 << 20) -> list[SequenceOutput]:
    """Greedy continuation of each sequence (up to n_new tokens, cut after end-of-text), with the
    attention and the logit lens of prompt + continuation captured on the way: the model's top k
    predictions at every position, the top lens_k (default k) of every other layer, every head
    metric, the attention quantized and encoded for storage, and (with `dla`) the direct logit
    attribution of every position to its top-1 prediction and to the token that came next.

    The stages, each its own function: `left_pad` -> `generate_with_capture` (every forward pass
    of the batch: the prefill and the n_new steps, with a `DlaRecorder` on them when `dla`) ->
    `kept_continuations` -> `logit_lens`, `logit_attribution` -> `reduce_attention` (metrics,
    quantization and encoding, one layer at a time; all on the device, a few arrays come to the
    host). The prefill's attention of every layer is kept for `reduce_attention` when it fits
    `prefill_budget` bytes (`prefill_bytes`); a longer batch runs the prefill again instead and
    reduces each layer inside that forward, so memory holds one layer's attention at a time.
    """
    lens_k = k if lens_k is None else lens_k
    capture_float32_softmax(model)
    lengths = [len(s) for s in seqs]
    B, P = len(seqs), max(lengths)
    ids, mask = left_pad(seqs, pad_id, model.device)                # [B, P]
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    keep = prefill_bytes(layers, B, heads, P + n_new) <= prefill_budget
    # The recorder's hooks live only as long as the passes (removed even if one fails).
    with (DlaRecorder(model) if dla else contextlib.nullcontext()) as rec:
        passes = generate_with_capture(model, ids, mask, n_new, keep_prefill=keep)
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
    del rec                           # the recorded activations, on the device
    # The prefill's layer outputs, when the prefill runs again: its MLPs need not.
    outputs = passes.hidden[0] if passes.prefill is None else None
    passes.hidden = []
    out_dev = model.get_output_embeddings().weight.device
    dev0 = passes.rows[0].device
    at = device_metrics.Positions(torch.tensor(starts), valid.to(dev0), all_ids.to(dev0))
    kv = getattr(model.config, "num_key_value_heads", None) or passes.rows[0].shape[1]
    reduction = AttentionReduction(at, starts, analysed, kv, len(passes.rows), out_dev)
    reduce_attention(model, passes, reduction, outputs)
    del passes, outputs
    metrics, groups, packed = reduction.results()
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
