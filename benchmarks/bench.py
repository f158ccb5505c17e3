#!/usr/bin/env python
"""Model Atlas reference benchmark: how far the compute stage is from what the work needs.

    python benchmarks/bench.py [--device cpu|cuda] [--models gpt2,qwen2.5] [--prompts N]
                               [--tokens 64] [--batch 8] [--quick] [--out FILE]
    python benchmarks/bench.py --device cuda --suite [--out FILE]   # the one GPU check
    python benchmarks/bench.py --long [--long-lengths 64,512,1024,2048] [--out FILE]

Prints ONE JSON object on stdout (progress goes to stderr) and writes it to --out if given.
Definitions of every number are in benchmarks/README.md. In short, per model and per prompt:

* forward_ms_per_prompt: bare batched forward pass, SDPA attention, no capture (logits_to_keep=1);
* floor_ms_per_prompt: the same forward with output_hidden_states=True, plus the logit lens's
  unavoidable matrix products (final norm + unembedding of every layer's residual stream for every
  real token, one stacked matmul per vocabulary chunk), nothing else;
* compute_ms_per_prompt: the generator's own compute stage, `generator.compute.compute_model`,
  with only model loading replaced (the full-size random-weight model built here is handed in)
  and, with --batch N, batch formation (length-sorted batches of N; by default the compute
  stage's own batches): greedy generation and capture in one pass (`extract.run_batch`),
  `build_artifact`, validation, JSON encoding and atomic writes;
* compute_over_floor = compute / floor;
* host_ms_per_prompt: the compute stage's own host time after the device, from a batch's results on
  the host to its artifacts on disk (its writer thread, which overlaps the next batch).

Forward, floor and compute run interleaved, one repetition of each in turn, on the same weights
in the same process, after one warm-up batch each; the median over repetitions is reported.

The models are full-size GPT-2 (124M) and Qwen2.5-0.5B with random weights, built from the
published configs in benchmarks/reference/ (no download), with the real tokenizers. Prompts are
the curated prompt_sets/ texts (round-robin over the sets), tokenized for real.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import gzip
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # run from a bare checkout (the GPU box has no pip install -e)
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

# name -> (reference config folder, tokenizer name for generator.demo.load_real_tokenizer)
MODELS = {"gpt2": ("gpt2", "gpt2"), "qwen2.5": ("qwen2.5-0.5b", "qwen2.5")}
GZIP_LEVEL = 6  # what web servers typically use
NATURAL_MAX = 64  # the curated prompts are all shorter; above this, --fill defaults on


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --- workload ------------------------------------------------------------------------------------

def reference_prompts(n: int) -> list[Any]:
    """n curated prompts, round-robin over the sets (sorted by id); cycles if n exceeds them all."""
    from generator.prompts import Prompt, default_prompt_dir, load_prompt_sets
    sets = sorted(load_prompt_sets([default_prompt_dir()]), key=lambda s: s.id)
    queues = [list(s.prompts) for s in sets]
    order = []
    for i in range(max(len(q) for q in queues)):
        order.extend(q[i] for q in queues if i < len(q))
    out = []
    for i in range(n):
        p = order[i % len(order)]
        cycle = i // len(order)
        out.append(p if cycle == 0 else Prompt(p.set_id, f"{p.id}-r{cycle}", p.text, p.note, p.tags))
    return out


def fit_text(tokenizer: Any, text: str, tokens: int, fill: bool) -> str:
    """`text` cut to at most `tokens` tokens; with `fill`, repeated first to reach `tokens`."""
    def count(t: str) -> int:
        return len(tokenizer(t, add_special_tokens=False)["input_ids"])
    if fill:
        base, t = text, text
        while count(t) < tokens:
            t = t + " " + base
        text = t
    cut = tokens
    while count(text) > tokens and cut > 0:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        text = text[:enc["offset_mapping"][cut - 1][1]]
        cut -= 1
    return text


def workload(tokenizer: Any, prompts: list[Any], tokens: int, fill: bool) -> list[Any]:
    from generator.prompts import Prompt
    return [Prompt(p.set_id, p.id, fit_text(tokenizer, p.text, tokens, fill), p.note, p.tags)
            for p in prompts]


def artifact_sequences(paths: list[Path]) -> tuple[list[list[int]], list[int]]:
    """Each artifact's analysed token ids and its number of prompt (not generated) tokens."""
    seqs, prompt_lens = [], []
    for path in paths:
        tokens = json.loads(path.read_text(encoding="utf-8"))["tokens"]
        seqs.append([t["id"] for t in tokens])
        prompt_lens.append(sum(1 for t in tokens if not t.get("generated")))
    return seqs, prompt_lens


def tensors(batch: list[tuple[Any, list[int]]], pad: int, device: str):
    T = max(len(ids) for _, ids in batch)
    input_ids = torch.full((len(batch), T), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    for b, (_, ids) in enumerate(batch):
        input_ids[b, :len(ids)] = torch.tensor(ids)
        mask[b, :len(ids)] = 1
    return input_ids.to(device), mask.to(device)


# --- models --------------------------------------------------------------------------------------

def build_model(config_dir: Path, device: str) -> Any:
    """Full-size model with random weights (seed 0), float32, SDPA attention, from a config.json.

    A fresh config object per model: from_config writes attn_implementation into it.
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(str(config_dir))
    torch.manual_seed(0)
    ctx = torch.device(device) if device.startswith("cuda") else contextlib.nullcontext()
    with ctx:
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model.to(device=device, dtype=torch.float32).eval()


def set_attention(model: Any, impl: str) -> None:
    if getattr(model.config, "_attn_implementation", None) != impl:
        model.set_attn_implementation(impl)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


# --- the three measured passes -------------------------------------------------------------------

@torch.no_grad()
def forward_pass(model: Any, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Bare forward pass: SDPA, no attention or hidden-state capture, logits of the last position."""
    for ids, mask in batches:
        model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)


@torch.no_grad()
def floor_pass(model: Any, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Bare SDPA forward with hidden states + final norm and unembedding of every layer's residual
    stream at every real token, and nothing else: no top-k, softmax, ranks, copies or encoding.

    The unembedding runs as one matmul per block of rows and vocabulary columns into one reused
    buffer, in the blocks of generator.extract.lens_tiles (on this CPU 7-20 % faster than one
    matmul per 2^26-logit chunk, the tiling before it existed, so the floor is the faster one)."""
    from generator import extract
    from generator.models import final_norm
    norm = final_norm(model)
    unemb = model.get_output_embeddings()
    weight, bias = unemb.weight, getattr(unemb, "bias", None)
    vocab = weight.shape[0]
    for ids, mask in batches:
        out = model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True,
                    logits_to_keep=1)
        m = mask.bool()
        hs = out.hidden_states
        layers = len(hs) - 1
        h = torch.cat([norm(hs[l][m]) if l < layers else hs[l][m] for l in range(1, layers + 1)])
        h = h.to(weight.dtype)
        rt, ct = extract.lens_tiles(h.shape[0], h.device)
        buf = torch.empty(min(rt, h.shape[0]) * min(ct, vocab), dtype=weight.dtype,
                          device=h.device)
        for c0 in range(0, vocab, ct):
            wt = weight[c0:c0 + ct].T
            for r0 in range(0, h.shape[0], rt):
                x = buf[:min(rt, h.shape[0] - r0) * wt.shape[1]].view(-1, wt.shape[1])
                if bias is None:
                    torch.mm(h[r0:r0 + rt], wt, out=x)
                else:
                    torch.addmm(bias[c0:c0 + ct], h[r0:r0 + rt], wt, out=x)


@torch.no_grad()
def batched_greedy(model: Any, ids: torch.Tensor, mask: torch.Tensor, n_new: int) -> torch.Tensor:
    """Greedy continuation of a left-padded batch with the KV cache: one prefill and n_new - 1
    single-token steps, positions counted from each row's first real token. -> [B, n_new]."""
    from generator.extract import cache_argument
    cache_kw = cache_argument(model)  # `cache` (transformers >= 5.24) or `past_key_values`
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                logits_to_keep=1)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    new = [nxt]
    for _ in range(n_new - 1):
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        pos = pos[:, -1:] + 1
        out = model(input_ids=nxt, attention_mask=mask, position_ids=pos,
                    **{cache_kw: getattr(out, cache_kw)}, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        new.append(nxt)
    return torch.cat(new, dim=1)


@torch.no_grad()
def continuation_floor_pass(model: Any, batches: list[tuple[torch.Tensor, torch.Tensor]],
                            n_new: int) -> None:
    """The least work for a greedy continuation of n_new tokens: the prompts batched and
    left-padded, SDPA, the KV cache, one prefill and n_new - 1 single-token steps, nothing else."""
    for ids, mask in batches:
        batched_greedy(model, ids, mask, n_new)


def left_padded(batch: list[tuple[Any, list[int]]], pad: int, device: str):
    T = max(len(ids) for _, ids in batch)
    input_ids = torch.full((len(batch), T), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    for b, (_, ids) in enumerate(batch):
        input_ids[b, T - len(ids):] = torch.tensor(ids)
        mask[b, T - len(ids):] = 1
    return input_ids.to(device), mask.to(device)


def loaded_model(name: str, model: Any, tokenizer: Any, device: str, dtype: torch.dtype) -> Any:
    from generator.models import LoadedModel, ModelRef, architecture_facts
    ref = ModelRef(f"bench-{name}-random", f"bench-{name}", None, "reference-config",
                   random_weights=True)
    return LoadedModel(ref, model, tokenizer, device, str(dtype).replace("torch.", ""),
                       architecture_facts(model, tokenizer))


def prompt_groups(lm: Any, prompts: list[Any], batch: int | None, n_new: int) -> list[list[Any]]:
    """The prompts of each batch the compute stage runs (`generator.compute.plan_batches`): with
    `batch` None its own batching (length-sorted, sized to its memory budget for the device), else
    length-sorted groups of exactly `batch`. Forward, floor and continuation floor run the same
    groups."""
    from generator import compute as C
    from generator.tokens import describe_tokens
    items = [(p, describe_tokens(lm.tokenizer, p.text)[0]) for p in prompts]
    groups = C.plan_batches(items, lm.facts["layers"], lm.facts["query_heads"],
                        C.default_budget(lm.device), n_new, batch)
    return [[p for p, _ in g] for g in groups]


def compute_pass(lm: Any, prompts: list[Any], out_dir: Path, settings: Any, dtype: torch.dtype,
                 batch: int | None) -> Any:
    """The generator's compute stage for these prompts into a fresh `out_dir` (nothing reused),
    on our already loaded model (`compute_model(model=...)`), batched by `batch` (None: its own
    batching). Returns its ComputeReport (host_seconds: the writer's time)."""
    from generator import compute as C
    report = C.ComputeReport()
    C.compute_model(lm.ref.model_id, prompts, out_dir, settings, lm.device, dtype,
                    lambda s: None, report, model=lm, batch_size=batch)
    if report.failures or report.computed != len(prompts):
        raise RuntimeError(f"compute stage failed: {report.computed}/{len(prompts)} computed; "
                           + "; ".join(report.failures[:3]))
    return report


# --- breakdown and profile of the compute path ---------------------------------------------------

BREAKDOWN_PARTS = ("tokenize", "prefill_forward_with_capture", "generation_steps_with_capture",
                   "attention_quantize", "lens_topk_and_to_host", "direct_logit_attribution",
                   "build_artifact",
                   "validate_artifact", "write_artifact", "other")
# part -> (module, function) of the generator whose calls are timed; forward passes are timed
# on the model itself (prefill: more than one input position; generation step: one).
TIMED_FUNCTIONS = {"tokenize": ("compute", "describe_tokens"),
                   "attention_quantize": ("extract", "quantize_attention"),
                   "lens_topk_and_to_host": ("extract", "lens_topk"),
                   "direct_logit_attribution": ("extract", "logit_attribution"),
                   "build_artifact": ("compute", "build_artifact"),
                   "validate_artifact": ("compute", "validate_artifact"),
                   # The JSON; the binary file is hashed and written on the writer's I/O thread,
                   # at the same time as other parts, so it is not timed as a part of its own.
                   "write_artifact": ("compute", "write_artifact_json")}
PROFILED_PARTS = ("build_artifact", "validate_artifact", "write_artifact")


@torch.no_grad()
def compute_breakdown(lm: Any, prompts: list[Any], batch_size: int, out_dir: Path, settings: Any,
                      host_profile: Any = None) -> dict[str, float]:
    """Seconds spent in each part of one more run of the compute stage (`compute_pass`).

    The generator runs unchanged; the functions it calls (TIMED_FUNCTIONS) and the model's forward
    are wrapped in timers (with a device synchronize on each side), so the parts stay in step with
    the code. `lens_topk_and_to_host` includes the lens's copy to the host, which waits for it;
    `other` is the rest of the run (batch assembly, hidden-state stacking and norm, attention
    assembly on the host, key checks). `host_profile` (a cProfile.Profile) is enabled inside
    PROFILED_PARTS only."""
    from generator import compute as C
    from generator import extract as X
    modules = {"compute": C, "extract": X}
    parts = dict.fromkeys(BREAKDOWN_PARTS, 0.0)
    dev = lm.device

    def timer(part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)  # keeps the signature (extract.cache_argument reads the forward's)
        def wrapped(*a: Any, **k: Any) -> Any:
            if part == "prefill_forward_with_capture":
                ids = k.get("input_ids", a[0] if a else None)
                key = part if ids is None or ids.shape[1] > 1 else "generation_steps_with_capture"
            else:
                key = part
            sync(dev)
            t0 = time.perf_counter()
            profiled = host_profile is not None and part in PROFILED_PARTS
            if profiled:
                host_profile.enable()
            try:
                return fn(*a, **k)
            finally:
                if profiled:
                    host_profile.disable()
                sync(dev)
                parts[key] += time.perf_counter() - t0
        return wrapped

    saved = [(modules[m], name, getattr(modules[m], name)) for m, name in TIMED_FUNCTIONS.values()]
    model = lm.model
    try:
        for part, (m, name) in TIMED_FUNCTIONS.items():
            setattr(modules[m], name, timer(part, getattr(modules[m], name)))
        model.forward = timer("prefill_forward_with_capture", model.forward)
        total = timed(lambda: compute_pass(lm, prompts, out_dir, settings, lm.model.dtype,
                                           batch_size), dev)
    finally:
        del model.forward  # back to the class's forward
        for module, name, fn in saved:
            setattr(module, name, fn)
    parts["other"] = total - sum(parts.values())
    return parts


def host_profile_top(prof: Any, rows: int = 15) -> list[dict[str, Any]]:
    """The functions with the largest cumulative time under build_artifact/validate/encode."""
    import pstats
    st = pstats.Stats(prof)
    out = []
    for (file, line, fn), (cc, nc, tt, ct, callers) in st.stats.items():  # type: ignore[attr-defined]
        out.append({"function": f"{Path(file).name}:{line}:{fn}", "calls": nc,
                    "cumulative_ms": round(ct * 1000, 1), "self_ms": round(tt * 1000, 1)})
    out.sort(key=lambda r: r["cumulative_ms"], reverse=True)
    return out[:rows]


def profile_run_batch(lm: Any, batch: list, settings: Any, rows: int = 20) -> list[dict[str, Any]]:
    """torch.profiler over one extract.run_batch call: the top operators by self time."""
    from torch.profiler import ProfilerActivity, profile
    from generator.extract import run_batch
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    cuda = lm.device.startswith("cuda")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        run_batch(lm.model, [ids for _, ids in batch], settings.continuation, tok.eos_token_id,
                  pad, settings.top_k, settings.lens_top_k)
        sync(lm.device)
    sort_attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, sort_attr, 0), reverse=True)
    total = sum(getattr(e, sort_attr, 0) for e in events) or 1
    out = [{"op": "(total)", "self_ms": round(total / 1000, 2)}]
    for e in events[:rows]:
        t = getattr(e, sort_attr, 0)
        out.append({"op": e.key, "calls": e.count, "self_ms": round(t / 1000, 2),
                    "share": round(t / total, 3)})
    return out


# --- checks on the written artifacts -------------------------------------------------------------

def artifact_sizes(paths: list[Path]) -> dict[str, Any]:
    """Mean bytes of an artifact: its JSON plus the attention file beside it (schema 2), each
    gzipped on its own as a web server or a CI cache would; the JSON part alone too."""
    raw, gz, json_gz, toks = [], [], [], []
    for p in paths:
        data = p.read_bytes()
        files = [data]
        meta = json.loads(data)["attention"]
        if "file" in meta:
            files.append((p.parent / meta["file"]).read_bytes())
        raw.append(sum(len(f) for f in files))
        gz.append(sum(len(gzip.compress(f, GZIP_LEVEL)) for f in files))
        json_gz.append(len(gzip.compress(data, GZIP_LEVEL)))
        toks.append(meta["length"])
    return {"prompts": len(paths), "tokens_mean": round(statistics.mean(toks), 1),
            "raw": int(statistics.mean(raw)), "gzip": int(statistics.mean(gz)),
            "gzip_min": min(gz), "gzip_median": int(statistics.median(gz)), "gzip_max": max(gz),
            "gzip_json_part": int(statistics.mean(json_gz))}


@torch.no_grad()
def attention_error(ref_model: Any, paths: list[Path], device: str) -> float:
    """max |decoded stored attention - `ref_model`'s own attention| over these artifacts.

    Each artifact's own token ids (prompt and any generated continuation) are run alone (batch 1,
    no padding) through `ref_model`: eager in float32; in a reduced precision through the compute
    stage's float32-softmax attention (`extract.capture_float32_softmax`), so the reference is
    the float32 softmax of the scores the model computes in its dtype."""
    from generator.extract import capture_float32_softmax
    from generator.schema import decode_attention, read_artifact
    before = ref_model.config._attn_implementation
    set_attention(ref_model, "eager")
    capture_float32_softmax(ref_model)
    full = importlib.util.find_spec("jsonschema") is not None  # the GPU image may lack it
    worst = 0.0
    for path in paths:
        art = read_artifact(path, full=full)
        ids = torch.tensor([[t["id"] for t in art["tokens"]]], device=device)
        out = ref_model(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True,
                        use_cache=False, logits_to_keep=1)
        own = torch.stack([a[0].float() for a in out.attentions]).cpu().numpy()  # [L, H, T, T]
        stored = np.stack([decode_attention(art, l) for l in range(art["attention"]["layers"])])
        worst = max(worst, float(np.abs(stored - own).max()))
    set_attention(ref_model, before)
    return worst


# --- one model -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Models:
    """One model as the benchmark runs it: built once, shared by every workload of a suite."""
    name: str
    lm: Any                  # generator.models.LoadedModel of `model`
    fp32: Any                # the float32 model (the fidelity reference)
    model: Any               # the model that runs: fp32 itself, or a copy in `dtype`
    dtype: torch.dtype
    build_s: float


@dataclasses.dataclass
class Bench:
    """One model's benchmark state for one workload: the workload as the compute stage analyses
    it, and the batches every timed pass runs."""
    name: str
    lm: Any
    fp32: Any
    model: Any
    dtype: torch.dtype
    settings: Any            # generator.compute.Settings
    prompts: list[Any]
    analysed: list[tuple[Any, list[int]]]   # (prompt, prompt + continuation token ids)
    prompt_lens: list[int]
    batches: list[list[tuple[Any, list[int]]]]
    dev_batches: list[tuple[torch.Tensor, torch.Tensor]]   # right-padded analysed ids, mask
    gen_batches: list[tuple[torch.Tensor, torch.Tensor]]   # left-padded prompts, mask
    build_s: float

    @property
    def n_new(self) -> int:
        return int(getattr(self.settings, "continuation", 0) or 0)


def build_models(name: str, args: argparse.Namespace, device: str,
                 dtype: torch.dtype | None) -> Models:
    """The full-size random-weight model in float32 and, if the dtype is reduced, a copy in it.
    dtype None (`--dtype auto` on a GPU) is decided as the CLI decides it (`models.auto_dtype`)."""
    from generator.demo import load_real_tokenizer
    from generator.models import auto_dtype
    folder, tok_name = MODELS[name]
    t0 = time.perf_counter()
    tokenizer = load_real_tokenizer(tok_name)
    fp32 = build_model(Path(args.reference) / folder, device)
    if dtype is None:
        params = sum(p.numel() for p in fp32.parameters())
        free = torch.cuda.mem_get_info(torch.device(device))[0] + 4 * params  # as before loading
        dtype = auto_dtype(params, free)
    model = fp32 if dtype == torch.float32 else copy.deepcopy(fp32).to(dtype)
    build_s = time.perf_counter() - t0
    lm = loaded_model(name, model, tokenizer, device, dtype)
    log(f"{name}: built {lm.facts['parameters'] / 1e6:.0f}M-parameter model in {build_s:.1f}s "
        f"({str(dtype).replace('torch.', '')})")
    return Models(name, lm, fp32, model, dtype, build_s)


def prepare(m: Models, args: argparse.Namespace, device: str, tmp: Path) -> Bench:
    """Run the compute stage once (warm-up) and take from its artifacts the token sequences that
    forward and floor then run on, batched as the compute stage batches them."""
    from generator.compute import Settings, artifact_path
    lm, name = m.lm, m.name
    settings = Settings()
    n_new = int(getattr(settings, "continuation", 0) or 0)
    tokenizer = lm.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prompts = workload(tokenizer, reference_prompts(args.prompts), args.tokens, args.fill)
    set_attention(m.model, "eager")
    warm = tmp / f"{name}-warm"
    compute_pass(lm, prompts, warm, settings, m.dtype, args.batch)
    seqs, prompt_lens = artifact_sequences([artifact_path(warm, lm.ref.slug, p) for p in prompts])
    shutil.rmtree(warm, ignore_errors=True)
    analysed = list(zip(prompts, seqs))
    # The same groups of prompts as the compute stage's batches, each sorted by analysed length.
    groups = prompt_groups(lm, prompts, args.batch, n_new)
    of = {p.key: (ids, k) for (p, ids), k in zip(analysed, prompt_lens)}
    batches = [sorted([(p, of[p.key][0]) for p in g], key=lambda it: len(it[1])) for g in groups]
    dev_batches = [tensors(b, pad, device) for b in batches]
    # Continuation floor: the prompts alone, the same groups, left-padded.
    gen_batches = [left_padded([(p, of[p.key][0][:of[p.key][1]]) for p in g], pad, device)
                   for g in groups]
    return Bench(name, lm, m.fp32, m.model, m.dtype, settings, prompts, analysed, prompt_lens,
                 batches, dev_batches, gen_batches, m.build_s)


def time_passes(b: Bench, args: argparse.Namespace, device: str,
                tmp: Path) -> tuple[dict[str, list[float]], Path]:
    """Forward, floor, continuation floor and compute, one repetition of each in turn, after a
    warm-up: seconds per repetition (and the compute stage's host seconds per prompt, `host`),
    and the folder of the last compute repetition's artifacts."""
    model, n = b.model, len(b.prompts)
    set_attention(model, "sdpa")
    forward_pass(model, b.dev_batches[:1])
    floor_pass(model, b.dev_batches[:1])
    if b.n_new:
        continuation_floor_pass(model, b.gen_batches[:1], b.n_new)
    sync(device)
    t: dict[str, list[float]] = {"forward": [], "floor": [], "continuation_floor": [],
                                 "compute": [], "host": [], "host_cpu": []}
    for rep in range(args.reps):
        set_attention(model, "sdpa")
        t["forward"].append(timed(lambda: forward_pass(model, b.dev_batches), device))
        t["floor"].append(timed(lambda: floor_pass(model, b.dev_batches), device))
        if b.n_new:
            t["continuation_floor"].append(timed(
                lambda: continuation_floor_pass(model, b.gen_batches, b.n_new), device))
        set_attention(model, "eager")
        out_dir = tmp / f"{b.name}-rep{rep}"
        reports: list[Any] = []
        t["compute"].append(timed(lambda: reports.append(compute_pass(
            b.lm, b.prompts, out_dir, b.settings, b.dtype, args.batch)), device))
        t["host"].append(reports[0].host_seconds / max(reports[0].host_prompts, 1) * n)
        t["host_cpu"].append(reports[0].host_cpu_seconds / max(reports[0].host_prompts, 1) * n)
        gen = t["continuation_floor"]
        log(f"{b.name}: rep {rep + 1}/{args.reps}: forward {t['forward'][-1]:.2f}s, floor "
            f"{t['floor'][-1]:.2f}s, " + (f"continuation floor {gen[-1]:.2f}s, " if gen else "")
            + f"compute {t['compute'][-1]:.2f}s (host {t['host'][-1]:.2f}s) for {n} prompts")
        if rep < args.reps - 1:
            shutil.rmtree(out_dir, ignore_errors=True)
    return t, tmp / f"{b.name}-rep{args.reps - 1}"


def timing_results(b: Bench, t: dict[str, list[float]]) -> dict[str, Any]:
    """Per-prompt figures and ratios from the repetitions' seconds."""
    n = len(b.prompts)
    fwd, flo, gen, com = t["forward"], t["floor"], t["continuation_floor"], t["compute"]

    def per_prompt_ms(xs: list[float]) -> float | None:
        return round(statistics.median(xs) / n * 1000, 2) if xs else None

    facts = b.lm.facts
    res: dict[str, Any] = {
        "parameters": facts["parameters"], "layers": facts["layers"],
        "heads": facts["query_heads"], "vocab": facts["vocab_size"],
        "model_build_s": round(b.build_s, 1), "settings": asdict_or_repr(b.settings),
        "prompts": n, "batches": len(b.batches), "batch_sizes": [len(x) for x in b.batches],
        "prompt_tokens_mean": round(sum(b.prompt_lens) / n, 1),
        "analysed_tokens_mean": round(sum(len(ids) for _, ids in b.analysed) / n, 1),
        "analysed_tokens_max": max(len(i) for _, i in b.analysed),
        "forward_ms_per_prompt": per_prompt_ms(fwd),
        "floor_ms_per_prompt": per_prompt_ms(flo),
        "compute_ms_per_prompt": per_prompt_ms(com),
        # From a batch's results on the host to its artifacts on disk (the compute stage's writer
        # thread, overlapping the next batch's device work), per prompt.
        "host_ms_per_prompt": per_prompt_ms(t["host"]),
        # The CPU time of the writer's two threads in that time (on a CPU the next batch's
        # forward shares the cores meanwhile: wall time above, work here).
        "host_cpu_ms_per_prompt": per_prompt_ms(t["host_cpu"]),
    }
    res["compute_over_floor"] = round(res["compute_ms_per_prompt"] / res["floor_ms_per_prompt"], 2)
    res["floor_over_forward"] = round(res["floor_ms_per_prompt"] / res["forward_ms_per_prompt"], 2)
    if gen:
        res["continuation_floor_ms_per_prompt"] = per_prompt_ms(gen)
        both = res["floor_ms_per_prompt"] + res["continuation_floor_ms_per_prompt"]
        res["floor_incl_continuation_ms_per_prompt"] = round(both, 2)
        res["compute_over_floor_incl_continuation"] = round(res["compute_ms_per_prompt"] / both, 2)
    # On a shared machine the load changes within seconds: the fastest repetition is the best
    # estimate of uncontended time, and the ratio within each repetition (same load, roughly)
    # is steadier than a ratio of medians taken from different repetitions.
    res["min_ms_per_prompt"] = {k: round(min(v) / n * 1000, 2) for k, v in t.items() if v}
    res["dtype"] = str(b.dtype).replace("torch.", "")
    res["compute_over_floor_min"] = round(min(com) / min(flo), 2)
    res["compute_over_floor_per_rep"] = [round(c / f, 2) for c, f in zip(com, flo)]
    if gen:
        res["compute_over_floor_incl_continuation_per_rep"] = [
            round(c / (f + g), 2) for c, f, g in zip(com, flo, gen)]
    res["reps_s"] = {k: [round(x, 3) for x in v] for k, v in t.items()}
    return res


def rebuild_one_prompt(b: Bench, args: argparse.Namespace, device: str, tmp: Path,
                       full_s: float) -> dict[str, Any]:
    """A one-prompt rebuild, the model already loaded (loading is a fixed cost a rebuild shares
    with a full build): the compute stage over one edited prompt, against the whole workload."""
    from generator.prompts import Prompt
    p0 = b.prompts[0]
    edited = [Prompt(p0.set_id, p0.id, "Indeed, " + p0.text, p0.note, p0.tags)]
    one = timed(lambda: compute_pass(b.lm, edited, tmp / f"{b.name}-edited", b.settings, b.dtype,
                                     args.batch), device)
    return {"rebuild_one_prompt_compute_s": round(one, 3), "full_compute_s": round(full_s, 3),
            "rebuild_one_prompt_over_full_compute": round(one / full_s, 3)}


def breakdown(b: Bench, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Where compute time goes (one more pass, a timer around each part); with --profile, the
    host's top functions and run_batch's top operators over the last batch."""
    n = len(b.prompts)
    set_attention(b.model, "eager")
    parts = compute_breakdown(b.lm, b.prompts, args.batch, tmp / f"{b.name}-breakdown",
                              b.settings)
    bd = {k: round(v / n * 1000, 2) for k, v in parts.items()}
    bd["total"] = round(sum(parts.values()) / n * 1000, 2)
    res: dict[str, Any] = {"compute_breakdown_ms_per_prompt": bd}
    # The attribution's own computation (attribution.py, after the passes) against the whole
    # compute stage; its hooks during the passes add about as much again (README).
    res["dla_share_of_compute"] = round(parts["direct_logit_attribution"] / sum(parts.values()), 4)
    if args.profile:  # separate passes over the last batch: profilers slow what they watch
        import cProfile
        prof = cProfile.Profile()
        compute_breakdown(b.lm, [p for p, _ in b.batches[-1]], args.batch,
                          tmp / f"{b.name}-profile", b.settings, prof)
        res["profile_host_top_functions"] = host_profile_top(prof)
        res["profile_run_batch_top_ops"] = profile_run_batch(b.lm, b.batches[-1], b.settings)
    return res


def sizes(b: Bench, args: argparse.Namespace, tmp: Path, paths: list[Path]) -> dict[str, Any]:
    """Artifact sizes: the workload as run, and prompts filled to exactly 64 and 256 tokens."""
    from generator.compute import artifact_path
    out: dict[str, Any] = {"workload": artifact_sizes(paths)}
    sample = reference_prompts(args.size_prompts)
    set_attention(b.model, "eager")
    for T in (64, 256):
        filled = workload(b.lm.tokenizer, sample, T, fill=True)
        d = tmp / f"{b.name}-size{T}"
        report = compute_pass(b.lm, filled, d, b.settings, b.dtype, args.batch)
        out[str(T)] = artifact_sizes([artifact_path(d, b.lm.ref.slug, p) for p in filled])
        # The writer's time in this pass (its batches overlap the next batch's device work).
        out[str(T)]["host_ms_per_prompt"] = round(
            report.host_seconds / max(report.host_prompts, 1) * 1000, 3)
        out[str(T)]["host_cpu_ms_per_prompt"] = round(
            report.host_cpu_seconds / max(report.host_prompts, 1) * 1000, 3)
        shutil.rmtree(d, ignore_errors=True)
    out["gzip_level"] = GZIP_LEVEL
    if b.n_new:
        out["note"] = (f"64/256 = prompt tokens; each artifact also holds up to {b.n_new} "
                       f"generated tokens (see tokens_mean)")
    return out


def measure(b: Bench, args: argparse.Namespace, device: str, tmp: Path, notes: list[str],
            extras: bool = True) -> dict[str, Any]:
    """Timings, host time, the breakdown and the attention error of one workload; with `extras`
    also the one-prompt rebuild and the artifact sizes (the full benchmark, not the suite)."""
    from generator.compute import artifact_path
    t, last = time_passes(b, args, device, tmp)
    paths = [artifact_path(last, b.lm.ref.slug, p) for p in b.prompts]
    # Every repetition must have analysed the same tokens forward and floor ran on.
    stored, _ = artifact_sequences(paths)
    differ = [p.key for (p, ids), got in zip(b.analysed, stored) if got != ids]
    if differ:
        notes.append(f"{b.name}: {len(differ)} artifact(s) of the last repetition hold other "
                     f"tokens than the warm-up run (e.g. {differ[0]}): the continuation is not "
                     f"reproducible from run to run")
    res = timing_results(b, t)
    if extras:
        res.update(rebuild_one_prompt(b, args, device, tmp, statistics.median(t["compute"])))
    res.update(breakdown(b, args, tmp))
    res.update(fidelity(b, paths, device))
    if extras:
        res["artifact_bytes_per_prompt"] = sizes(b, args, tmp, paths)
    log(f"{b.name}: forward {res['forward_ms_per_prompt']} ms, floor {res['floor_ms_per_prompt']} "
        f"ms, compute {res['compute_ms_per_prompt']} ms (host {res['host_ms_per_prompt']} ms) per "
        f"prompt (x{res['compute_over_floor']} floor)")
    shutil.rmtree(last, ignore_errors=True)
    return res


def fidelity(b: Bench, paths: list[Path], device: str) -> dict[str, Any]:
    """Stored attention against the float32 model's attention, and in a reduced precision also
    against the float32 softmax of the scores the model itself computes in its dtype; the direct
    logit attribution's largest relative error (its components' sum against the model's logit)."""
    res = {"attention_max_abs_error": round(attention_error(b.fp32, paths, device), 6),
           "attention_error_bound": round(1 / 255, 6)}
    if b.dtype != torch.float32:
        res["attention_max_abs_error_vs_own_dtype"] = round(
            attention_error(b.model, paths, device), 6)
    # Direct logit attribution: the largest |sum of contributions - logit| / max(|logit|, 1)
    # that the compute stage measured against the model's own output, over every artifact.
    res["dla_max_rel_error"] = max(json.loads(p.read_text())["attribution"]["max_rel_error"]
                                   for p in paths)
    return res


def bench_model(name: str, args: argparse.Namespace, device: str, dtype: torch.dtype | None,
                tmp: Path, notes: list[str]) -> dict[str, Any]:
    """Every figure of one model (see the module docstring and benchmarks/README.md)."""
    m = build_models(name, args, device, dtype)
    return measure(prepare(m, args, device, tmp), args, device, tmp, notes)


# The suite's workloads: (label, changes to the command line's settings).
SUITE = (("tokens64", {}), ("batch8", {"batch": 8}),
         ("tokens256", {"tokens": None, "fill": True}))  # tokens: --long-tokens


def bench_suite(name: str, args: argparse.Namespace, device: str, dtype: torch.dtype | None,
                tmp: Path, notes: list[str]) -> dict[str, Any]:
    """The suite for one model, built once: the 64-token workload in the compute stage's own
    batches, the same at a fixed batch of 8, and the --long-tokens (256) workload, each with its
    timings, host time, breakdown and attention error."""
    m = build_models(name, args, device, dtype)
    out: dict[str, Any] = {"dtype": str(m.dtype).replace("torch.", ""),
                           "parameters": m.lm.facts["parameters"]}
    for label, change in SUITE:
        run = argparse.Namespace(**vars(args))
        for key, value in change.items():
            setattr(run, key, args.long_tokens if key == "tokens" else value)
        log(f"{name}: suite workload {label} (tokens {run.tokens}, batch {run.batch or 'auto'})")
        sub = tmp / label  # each workload its own artifacts: none may reuse another's
        sub.mkdir()
        out[label] = measure(prepare(m, run, device, sub), run, device, sub, notes, extras=False)
        shutil.rmtree(sub, ignore_errors=True)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    c64, c256 = out["tokens64"]["compute_over_floor"], out["tokens256"]["compute_over_floor"]
    out["compute_over_floor_256_over_64"] = round(c256 / c64, 2)
    log(f"{name}: suite workload long ({', '.join(map(str, args.long_lengths))} tokens)")
    sub = tmp / "long"
    sub.mkdir()
    out["long"] = long_rows(m, args, device, sub, notes)
    shutil.rmtree(sub, ignore_errors=True)
    return out


# --- long prompts: bytes, time and memory from 64 to 2,048 tokens ------------------------------

LONG_LENGTHS = (64, 512, 1024, 2048)
LONG_TEXT = ("long-context", "retrieval")  # the prompt filled (repeated) or cut to each length


def peak_memory_reset(device: str) -> bool:
    """Start a new peak: the GPU allocator's, or on the CPU the process's peak resident set
    (VmHWM, reset by writing 5 to /proc/self/clear_refs). False if the CPU's cannot be reset."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_gib(device: str) -> float | None:
    """The peak since `peak_memory_reset`: GPU memory allocated, or the CPU process's resident
    set (everything it holds: the model's weights too)."""
    if device.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3)
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) * 1024 / 2 ** 30, 3)
    return None


def long_prompt(tokenizer: Any, tokens: int) -> Any:
    """The long-context set's retrieval document, repeated or cut to exactly `tokens` tokens."""
    from generator.prompts import default_prompt_dir, load_prompt_set
    set_id, prompt_id = LONG_TEXT
    base = next(p for p in load_prompt_set(default_prompt_dir() / f"{set_id}.yaml").prompts
                if p.id == prompt_id)
    return workload(tokenizer, [base], tokens, fill=True)[0]


def long_rows(m: Models, args: argparse.Namespace, device: str, tmp: Path,
              notes: list[str]) -> dict[str, Any]:
    """One prompt at each of --long-lengths tokens (cut to the model's context with its
    continuation): bytes of its artifact, the compute stage's time against the floor, its peak
    memory and host time. One repetition each (at 2,048 tokens the floor alone is minutes on a
    CPU): compute first, then the floor over the tokens it analysed."""
    from generator.compute import Settings, artifact_path
    lm, settings = m.lm, Settings()
    context = lm.facts.get("context_length")
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    rows: dict[str, Any] = {}
    # Warm-up (untimed): the first compute pass pays one-off costs (vocabulary records, kernels).
    warm = long_prompt(lm.tokenizer, 16)
    set_attention(m.model, "eager")
    compute_pass(lm, [warm], tmp / f"{m.name}-long-warm", settings, m.dtype, 1)
    set_attention(m.model, "sdpa")
    floor_pass(m.model, [tensors([(warm, lm.tokenizer(warm.text)["input_ids"])], pad, device)])
    for T in args.long_lengths:
        tokens = T if not context else min(T, context - settings.continuation)
        if tokens < T and T - tokens > settings.continuation:
            notes.append(f"{m.name}: no {T}-token row, longer than its context of {context}")
            continue
        prompt = long_prompt(lm.tokenizer, tokens)
        out_dir = tmp / f"{m.name}-long{T}"
        set_attention(m.model, "eager")
        gc_collect(device)
        reports: list[Any] = []
        exact = peak_memory_reset(device)
        with model_once_timer(device) as once:
            total_s = timed(lambda: reports.append(compute_pass(lm, [prompt], out_dir, settings,
                                                                m.dtype, 1)), device)
        compute_s = total_s - once["s"]
        peak = peak_memory_gib(device) if exact else None
        path = artifact_path(out_dir, lm.ref.slug, prompt)
        seqs, prompt_lens = artifact_sequences([path])
        set_attention(m.model, "sdpa")
        floor_s = timed(lambda: floor_pass(m.model, [tensors([(prompt, seqs[0])], pad, device)]),
                        device)
        size = artifact_sizes([path])
        report = reports[0]
        rows[str(T)] = {
            "prompt_tokens": prompt_lens[0], "analysed_tokens": len(seqs[0]),
            "bytes_per_prompt": size["raw"], "gzip_bytes_per_prompt": size["gzip"],
            "compute_s": round(compute_s, 2), "model_once_s": round(once["s"], 2),
            "floor_s": round(floor_s, 2),
            "compute_over_floor": round(compute_s / floor_s, 2),
            "peak_memory_gib": peak,
            "host_ms_per_prompt": round(report.host_seconds / max(report.host_prompts, 1) * 1000,
                                        1)}
        log(f"{m.name}: {T} tokens: {size['raw']:,} bytes ({size['gzip']:,} gzip), compute "
            f"{compute_s:.1f}s (+{once['s']:.1f}s once per model), floor {floor_s:.1f}s "
            f"(x{compute_s / floor_s:.2f}), peak {peak} GiB, host "
            f"{rows[str(T)]['host_ms_per_prompt']} ms")
        shutil.rmtree(out_dir, ignore_errors=True)
    out: dict[str, Any] = {"rows": rows, "text": "/".join(LONG_TEXT),
                           "peak_memory": ("GPU memory allocated" if device.startswith("cuda")
                                           else "the process's peak resident set (VmHWM), "
                                                "weights included")}
    if "1024" in rows and "2048" in rows:
        ratio = rows["2048"]["bytes_per_prompt"] / rows["1024"]["bytes_per_prompt"]
        out["bytes_2048_over_1024"] = round(ratio, 2)
        out["gzip_bytes_2048_over_1024"] = round(rows["2048"]["gzip_bytes_per_prompt"]
                                                 / rows["1024"]["gzip_bytes_per_prompt"], 2)
        log(f"{m.name}: bytes per prompt, 2,048 over 1,024 tokens: x{ratio:.2f} (linear: 2, "
            f"quadratic: 4)")
    return out


@contextlib.contextmanager
def model_once_timer(device: str):
    """Seconds the compute stage spends on what it does once per model and build, not per prompt:
    the OV circuits (`ov.ensure_for_model`, after the prompts) and the tokenize page's copy of the
    tokenizer (`save_tokenizer`). A long row times one prompt alone, so they would be charged to
    it whole; the row's `compute_s` leaves them out and reports them as `model_once_s`."""
    from generator import compute as C
    spent = {"s": 0.0}
    saved = {"save_tokenizer": C.save_tokenizer, "ensure_for_model": C.ov.ensure_for_model}

    def timer(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapped(*a: Any, **k: Any) -> Any:
            sync(device)
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                sync(device)
                spent["s"] += time.perf_counter() - t0
        return wrapped

    C.save_tokenizer = timer(saved["save_tokenizer"])
    C.ov.ensure_for_model = timer(saved["ensure_for_model"])
    try:
        yield spent
    finally:
        C.save_tokenizer = saved["save_tokenizer"]
        C.ov.ensure_for_model = saved["ensure_for_model"]


def gc_collect(device: str) -> None:
    import gc
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def bench_long(name: str, args: argparse.Namespace, device: str, dtype: torch.dtype | None,
               tmp: Path, notes: list[str]) -> dict[str, Any]:
    """`--long`: only the long rows of one model."""
    m = build_models(name, args, device, dtype)
    return {"dtype": str(m.dtype).replace("torch.", ""), "parameters": m.lm.facts["parameters"],
            "long": long_rows(m, args, device, tmp, notes)}


def asdict_or_repr(obj: Any) -> Any:
    import dataclasses
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else repr(obj)


# --- the site (tiny demo models, through the real CLI) -------------------------------------------

def render_stack_missing() -> list[str]:
    return [m for m in ("altair", "mkdocs", "vl_convert", "jinja2", "jsonschema")
            if importlib.util.find_spec(m) is None]


SUMMARY_LINES = re.compile(r"^(compute: \d+ computed.*|loaded .* in [\d.]+s|render: \d+ files written.*|"
                           r"site: built.*)$",
                           re.M)


COMPUTE_TIME = re.compile(r"^compute: .* failed in ([\d.]+)s")
LOAD_TIME = re.compile(r"^loaded .* in ([\d.]+)s$")


def cli(args: list[str], env: dict[str, str], summary: dict[str, Any], label: str) -> float:
    """Run `model-atlas ARGS` (python -m generator.cli: the same click entry point) and time it.

    The CLI's own summary lines (compute counts and time, render and mkdocs times) go into
    `summary[label]`."""
    cmd = [sys.executable, "-m", "generator.cli", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"`model-atlas {' '.join(args)}` failed ({proc.returncode}):\n"
                           + (proc.stderr or proc.stdout)[-2000:])
    summary[label] = SUMMARY_LINES.findall(proc.stderr)
    return dt


def edit_one_prompt(prompt_dir: Path) -> str:
    """Change the text of the first double-quoted `text:` line of the first set file."""
    for f in sorted(prompt_dir.glob("*.yaml")):
        src = f.read_text(encoding="utf-8")
        m = re.search(r'^(\s+text: ")(.+)("\s*)$', src, flags=re.M)
        if m:
            f.write_text(src[:m.start()] + m.group(1) + "Indeed, " + m.group(2) + m.group(3)
                         + src[m.end():], encoding="utf-8")
            return f"{f.stem}: {m.group(2)[:40]!r}"
    raise RuntimeError(f"found no `text: \"...\"` line to edit in {prompt_dir}")


def dir_bytes(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def bench_site(device: str, tmp: Path, notes: list[str]) -> dict[str, Any]:
    from generator.demo import ensure_demo_models
    from generator.prompts import default_prompt_dir
    build, prompts = tmp / "site-build", tmp / "site-prompts"
    shutil.copytree(default_prompt_dir(), prompts)
    t0 = time.perf_counter()
    ensure_demo_models(build / "demo-models")  # outside the timings: built once per checkout
    res: dict[str, Any] = {"demo_models_build_s": round(time.perf_counter() - t0, 1)}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    common = ["--demo", "--build-dir", str(build), "--prompts", str(prompts)]
    log_lines: dict[str, Any] = {}
    res["cli_summary"] = log_lines
    missing = render_stack_missing()
    if missing:
        notes.append(f"render stack not importable ({', '.join(missing)}): render_s and site_bytes "
                     f"skipped; full_build_s and rebuild_one_prompt_s time `model-atlas compute` "
                     f"only")
        stage = ["compute", *common, "--device", device]
        res["full_build_s"] = round(cli(stage, env, log_lines, "full_build"), 2)
        res["edited"] = edit_one_prompt(prompts)
        res["rebuild_one_prompt_s"] = round(cli(stage, env, log_lines, "rebuild"), 2)
        res.update(render_s=None, site_bytes=None, stage_timed="compute")
    else:
        site = build / "site"
        res["full_build_s"] = round(cli(["build", *common, "--device", device, "--out", str(site)],
                                        env, log_lines, "full_build"), 2)
        res["render_s"] = round(cli(["render", *common, "--out", str(site)], env, log_lines,
                                    "render"), 2)
        res["site_bytes"], res["site_files"] = dir_bytes(site)
        res["edited"] = edit_one_prompt(prompts)
        res["rebuild_one_prompt_s"] = round(cli(["build", *common, "--device", device, "--out",
                                                 str(site)], env, log_lines, "rebuild"), 2)
        res["stage_timed"] = "build"
    res["rebuild_over_full"] = round(res["rebuild_one_prompt_s"] / res["full_build_s"], 2)
    # The compute stage alone, from the CLI's own lines: its time, and the part of it that is
    # loading models (a fixed cost per model that a rebuild of any prompt pays again).
    for label in ("full_build", "rebuild"):
        lines = log_lines.get(label, [])
        total = [float(m.group(1)) for m in map(COMPUTE_TIME.search, lines) if m]
        loads = [float(m.group(1)) for m in map(LOAD_TIME.search, lines) if m]
        if total:
            res[f"{label}_compute_s"] = total[0]
            res[f"{label}_model_load_s"] = round(sum(loads), 2)
    if res.get("full_build_compute_s") and "rebuild_compute_s" in res:
        full, again = res["full_build_compute_s"], res["rebuild_compute_s"]
        res["rebuild_compute_over_full_compute"] = round(again / full, 3)
        work = full - res["full_build_model_load_s"]
        if work > 0:
            res["rebuild_compute_over_full_compute_excluding_model_load"] = round(
                (again - res["rebuild_model_load_s"]) / work, 3)
    return res


# --- machine -------------------------------------------------------------------------------------

def machine(device: str, dtype: str) -> dict[str, Any]:
    import transformers
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    facts: dict[str, Any] = {
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else cpu,
        "cpu": cpu, "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "dtype": dtype,
        "loadavg_start": loadavg(),
    }
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(device)
        facts.update(gpu_memory_gib=round(p.total_memory / 2 ** 30, 1), cuda=torch.version.cuda)
    return facts


def code_version() -> dict[str, Any]:
    """Which generator was measured: git commit, whether generator/ differs from it, and a hash of
    generator/*.py as they were read (other people edit the tree while benchmarks run)."""
    import hashlib
    h = hashlib.sha256()
    for f in sorted((REPO / "generator").glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    out: dict[str, Any] = {"generator_sha256": h.hexdigest()[:16]}
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True,
                                        timeout=10)
        commit = run("rev-parse", "--short", "HEAD")
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
            out["generator_modified"] = bool(run("status", "--porcelain", "--", "generator").stdout)
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    ap.add_argument("--dtype", default="auto",
                    help="auto (as the CLI: float32, on cuda unless the weights take more than "
                         "half the free memory), float32, bfloat16, float16")
    ap.add_argument("--models", default="gpt2,qwen2.5", help="comma-separated: gpt2, qwen2.5")
    ap.add_argument("--prompts", type=int, default=None, help="prompts in the workload (40)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per prompt at most (64)")
    ap.add_argument("--fill", action=argparse.BooleanOptionalAction, default=None,
                    help="repeat each prompt's text to exactly --tokens tokens (default: on when "
                         f"--tokens > {NATURAL_MAX}; the curated prompts are 3-44 tokens)")
    ap.add_argument("--batch", default="auto",
                    help="prompts per batch: 'auto' (the compute stage's own batching, sized to "
                         "its memory budget) or a number, for every timing (auto)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (3; 5 on cuda)")
    ap.add_argument("--size-prompts", type=int, default=None,
                    help="prompts filled to 64 and 256 tokens for artifact sizes (1; 8 on cuda)")
    ap.add_argument("--reference", default=str(HERE / "reference"),
                    help="folder with gpt2/ and qwen2.5-0.5b/ config.json (benchmarks/reference)")
    ap.add_argument("--profile", action="store_true",
                    help="add torch.profiler's top operators of one run_batch call per model")
    ap.add_argument("--skip-site", action="store_true", help="skip the demo-site build timings")
    ap.add_argument("--quick", action="store_true",
                    help="development settings: 8 prompts, 2 reps, 1 size prompt")
    ap.add_argument("--suite", action="store_true",
                    help="one GPU check: per model, the 64-token workload (own batches), the same "
                         "at batch 8, and the --long-tokens workload, each with host time, "
                         "breakdown and attention error (3 reps; no sizes, rebuild or site)")
    ap.add_argument("--long-tokens", type=int, default=256,
                    help="prompt tokens of the suite's long workload (256; smaller to try the "
                         "suite on a CPU)")
    ap.add_argument("--long", action="store_true",
                    help="only the long rows: per model one prompt at each --long-lengths (cut "
                         "to its context): bytes, compute over floor, peak memory, host time")
    ap.add_argument("--long-lengths", default=",".join(map(str, LONG_LENGTHS)),
                    help="prompt lengths of the long rows, in --long and --suite "
                         f"({','.join(map(str, LONG_LENGTHS))}; smaller to try it on a CPU)")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: no CUDA GPU is visible")
    args.prompts = args.prompts or (8 if args.quick else 40)
    args.reps = args.reps or (2 if args.quick else 3 if args.suite else 5 if cuda else 3)
    args.size_prompts = args.size_prompts or (8 if cuda and not args.quick else 1)
    if args.fill is None:
        args.fill = args.tokens > NATURAL_MAX
    if args.batch == "auto":
        args.batch = None
    elif not args.batch.isdigit() or int(args.batch) < 1:
        ap.error(f"--batch {args.batch}: a positive number or 'auto'")
    else:
        args.batch = int(args.batch)
    try:
        args.long_lengths = [int(x) for x in args.long_lengths.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--long-lengths {args.long_lengths}: comma-separated numbers, like 64,512")
    if not args.long_lengths or min(args.long_lengths) < 1:
        ap.error("--long-lengths: at least one length, each at least 1")
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        ap.error(f"--models: unknown {unknown}; known: {', '.join(MODELS)}")
    try:
        importlib.import_module("generator.compute")  # transformers, yaml: fail early
    except ImportError as e:
        ap.error(f"cannot import generator.compute ({e}); install the missing package")
    from generator.models import pick_dtype
    try:
        dtype = pick_dtype(args.dtype, args.device)  # None: decided per model (auto on cuda)
    except Exception as e:  # noqa: BLE001 - OptionError names the valid values
        ap.error(str(e))

    t_start = time.perf_counter()
    notes: list[str] = []
    result: dict[str, Any] = {
        "benchmark": "model-atlas reference " + ("suite" if args.suite else
                                                 "long prompts" if args.long else "workload"),
        "version": 2,
        "settings": {"device": args.device, "dtype": args.dtype,
                     "models": names, "prompts": args.prompts, "tokens": args.tokens,
                     "fill": args.fill, "batch": args.batch or "auto", "reps": args.reps,
                     "size_prompts": args.size_prompts, "quick": args.quick,
                     "suite": args.suite, "long_tokens": args.long_tokens,
                     "long": args.long, "long_lengths": args.long_lengths},
        "machine": machine(args.device, args.dtype),
        "code": code_version(),
        "models": {}, "site": None, "notes": notes,
    }
    with tempfile.TemporaryDirectory(prefix="atlas-bench-") as tmp_name:
        tmp = Path(tmp_name)
        run_model = bench_suite if args.suite else bench_long if args.long else bench_model
        for name in names:
            result["models"][name] = run_model(name, args, args.device, dtype, tmp, notes)
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()  # the model is gone with the function's frame
        if args.skip_site or args.suite or args.long:
            notes.append("site timings skipped (--skip-site, --suite or --long)")
        else:
            log("site: demo build, render, one-prompt rebuild through the CLI")
            try:
                result["site"] = bench_site(args.device, tmp, notes)
            except Exception as e:  # noqa: BLE001 - report, keep the model numbers
                notes.append(f"site timings failed: {type(e).__name__}: {str(e)[:600]}")
    result["machine"]["loadavg_end"] = loadavg()
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
