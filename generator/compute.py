"""The compute stage: prompt sets x models -> one JSON artifact per (model, prompt) (imports torch).

Work is keyed by a content hash of (schema version, model id and revision, prompt text, extraction
settings): an artifact whose key matches is kept, so unchanged prompts are not recomputed, and a
model whose artifacts are all current is not even loaded. `--shard K/N` takes every N-th prompt, the
same prompts for every model, so N runners write disjoint artifacts that combine into one site.
Prompts run in length-sorted batches sized to the model; a batch that runs out of memory is split and
retried; a prompt that fails is reported and the others are kept.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import __version__
from .errors import AtlasError, OptionError
from .extract import SequenceOutput, run_batch
from .metrics import between_group_similarity, group_similarity, layer_metrics
from .models import LoadedModel, ModelRef, load_model, pick_dtype, pick_device, resolve_model
from .prompts import Prompt, PromptSet
from .schema import (ATTENTION_ENCODING, ATTENTION_SCALE, ATTENTION_SUFFIX, SCHEMA_VERSION,
                     current_attention, encode_attention, validate_artifact, write_artifact)
from .store import content_key, remove_stale_temporaries, sha256_bytes
from .tokens import describe_tokens, describe_ids, vocab_entries

Log = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    """Extraction settings; every field is part of each artifact's key."""
    top_k: int = 10        # predictions stored per position
    lens_top_k: int = 3    # logit-lens predictions stored per layer and position
    continuation: int = 8  # greedy tokens generated after the prompt, analysed like the prompt

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.top_k > 100:
            raise OptionError(f"--top-k {self.top_k}: must be between 1 and 100.")
        if self.lens_top_k < 1 or self.lens_top_k > self.top_k:
            raise OptionError(f"--lens-top-k {self.lens_top_k}: must be between 1 and --top-k.")
        if self.continuation < 0 or self.continuation > 256:
            raise OptionError(f"--continuation {self.continuation}: must be between 0 and 256.")


@dataclass
class Shard:
    index: int  # 1-based
    count: int

    @classmethod
    def parse(cls, text: str | None) -> "Shard":
        if not text:
            return cls(1, 1)
        try:
            k, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise OptionError(f"--shard {text!r}: expected K/N, like 2/4.") from None
        if n < 1 or not 1 <= k <= n:
            raise OptionError(f"--shard {text}: K must be between 1 and N (got K={k}, N={n}).")
        return cls(k, n)

    def take(self, prompts: Sequence[Prompt]) -> list[Prompt]:
        ordered = sorted(prompts, key=lambda p: p.key)
        return [p for i, p in enumerate(ordered) if i % self.count == self.index - 1]


@dataclass
class ComputeReport:
    computed: int = 0
    reused: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    artifacts: list[Path] = field(default_factory=list)


def artifact_path(root: Path, slug: str, prompt: Prompt) -> Path:
    return root / slug / prompt.set_id / f"{prompt.id}.json"


def unit_key(ref: ModelRef, prompt: Prompt, settings: Settings) -> str:
    return content_key(SCHEMA_VERSION, ref.model_id, ref.revision, prompt.text, asdict(settings))


def _current_key(path: Path) -> str | None:
    """The key of an existing artifact, or None if it is missing, unreadable or its attention file
    does not match it (then recompute)."""
    import json
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("schema_version") != SCHEMA_VERSION or not current_attention(path, data):
            return None
        return data.get("key")
    except (OSError, ValueError, AttributeError):
        return None


def library_versions() -> dict[str, str]:
    import transformers
    return {"model-atlas": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def _block(ids: np.ndarray, lps: np.ndarray, nlp: np.ndarray, rank: np.ndarray, k: int) -> dict:
    """Per-position top-k for one layer of one prompt. ids, lps: [T, >=k]; nlp, rank: [T]."""
    return {
        "k": k,
        "ids": ids[:, :k].tolist(),
        "probs": np.round(np.exp(lps[:, :k].astype(np.float64)), 6).tolist(),
        "next_logprob": [None if math.isnan(x) else round(float(x), 4) for x in nlp],
        "next_rank": [None if r == 0 else int(r) for r in rank],
    }


def build_artifact(lm: LoadedModel, prompt: Prompt, key: str, settings: Settings,
                   tokens: list[dict], seq: SequenceOutput) -> dict:
    """The artifact of one prompt, in memory: its attention bytes in `["attention"]["data"]`
    (`schema.write_artifact` writes them beside the JSON)."""
    attention = seq.attention
    L, H, T, _ = attention.shape
    ids, lps, nlp, rank = seq.lens_ids, seq.lens_logprobs, seq.next_logprob, seq.next_rank
    data = encode_attention(attention)
    referenced = np.unique(np.concatenate([ids[-1, :, :settings.top_k].ravel(),
                                           ids[:, :, :settings.lens_top_k].ravel()]))
    ref = lm.ref
    n_prompt = sum(1 for t in tokens if not t.get("generated"))
    token_ids = [t["id"] for t in tokens]
    decoded = [attention[l].astype(np.float32) / ATTENTION_SCALE for l in range(L)]  # L x [H, T, T]
    per_head = layer_metrics(np.stack(decoded), token_ids)                          # name -> [L, H]
    kv = lm.facts["kv_heads"]
    return {
        "format": "model-atlas-artifact",
        "schema_version": SCHEMA_VERSION,
        "key": key,
        "provenance": {
            "model_id": ref.model_id, "model_slug": ref.slug, "revision": ref.revision,
            "random_weights": ref.random_weights, "prompt_sha256": sha256_bytes(prompt.text.encode()),
            "device": lm.device.split(":")[0], "dtype": lm.dtype, "attn_implementation": "eager",
            "libraries": library_versions(), "settings": asdict(settings),
        },
        "model": lm.facts,
        "prompt": {"set": prompt.set_id, "id": prompt.id, "text": prompt.text, "note": prompt.note},
        "tokens": tokens,
        "predictions": _block(ids[-1], lps[-1], nlp[-1], rank[-1], settings.top_k),
        "lens": [_block(ids[l], lps[l], nlp[l], rank[l], settings.lens_top_k) for l in range(L)],
        "attention": {
            "encoding": ATTENTION_ENCODING, "scale": ATTENTION_SCALE, "layers": L, "heads": H,
            "length": T, "file": prompt.id + ATTENTION_SUFFIX, "bytes": len(data),
            "sha256": sha256_bytes(data), "data": data,
        },
        "vocab": vocab_entries(lm.tokenizer, referenced.tolist()),
        "generation": {"prompt_tokens": n_prompt, "generated_tokens": T - n_prompt,
                       "method": "greedy"},
        "metrics": {name: _round(values) for name, values in sorted(per_head.items())},
        # Grouped-query attention: per layer, how alike the query heads sharing a key/value head
        # attend, and (for contrast) heads of different groups. Empty for multi-head models.
        "groups": [{"between": _round(between_group_similarity(decoded[l], kv)),
                    "groups": [{**g, "similarity": _round(g["similarity"]),
                                "mean_js": _round(g["mean_js"])}
                               for g in group_similarity(decoded[l], kv)]}
                   for l in range(L)] if kv < H else [],
    }


def _round(x: Any, digits: int = 4) -> Any:
    """Round floats (nested lists too) for storage; NaN (undefined) becomes null."""
    if isinstance(x, np.ndarray):
        x = x.tolist()
    if isinstance(x, list):
        return [_round(v, digits) for v in x]
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return round(float(x), digits)


def _batches(items: list[tuple[Prompt, list[int]]], layers: int, heads: int,
             budget_bytes: int, extra: int = 0) -> list[list[tuple[Prompt, list[int]]]]:
    """Length-sorted batches whose attention ([L, B, H, T, T] float32, T = the longest prompt
    plus `extra` generated tokens) fits `budget_bytes`."""
    items = sorted(items, key=lambda it: (len(it[1]), it[0].key))
    out: list[list] = []
    for it in items:
        if out:
            t = len(it[1]) + extra  # the longest so far, since sorted
            if (len(out[-1]) + 1) * layers * heads * t * t * 4 <= budget_bytes and len(out[-1]) < 64:
                out[-1].append(it)
                continue
        out.append([it])
    return out


def default_budget(device: str) -> int:
    """Bytes of float32 attention one batch may capture: 2 GiB on a GPU, 512 MiB on the CPU."""
    return (2 << 30) if device.startswith("cuda") else (512 << 20)


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def _run(lm: LoadedModel, batch: list[tuple[Prompt, list[int]]], settings: Settings, log: Log):
    """Run one batch (generation and capture); split it in halves on any error (out-of-memory
    included). Yields (prompt, result): a SequenceOutput, or the exception of a prompt that failed
    on its own."""
    tok = lm.tokenizer
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else 0)
    try:
        out = run_batch(lm.model, [ids for _, ids in batch], settings.continuation, eos, pad,
                        settings.top_k)
    except Exception as e:  # noqa: BLE001 - OOM classes differ between backends
        if len(batch) > 1:
            # Split and retry: out of memory goes away in smaller batches, and any other error is
            # narrowed down to the prompt that causes it, so it does not fail its whole batch.
            if _is_oom(e) and lm.device.startswith("cuda"):
                torch.cuda.empty_cache()
            half = len(batch) // 2
            why = "out of memory" if _is_oom(e) else f"{type(e).__name__}"
            log(f"{why} on a batch of {len(batch)}; retrying as {half} + {len(batch) - half}")
            yield from _run(lm, batch[:half], settings, log)
            yield from _run(lm, batch[half:], settings, log)
            return
        yield batch[0][0], e  # a single prompt failed: its error instead of a result
        return
    for (prompt, _), seq in zip(batch, out):
        yield prompt, seq


def compute_model(model_id: str, prompts: Sequence[Prompt], out_dir: Path, settings: Settings,
                  device: str, dtype: torch.dtype, log: Log, report: ComputeReport,
                  revision: str = "main", budget_bytes: int | None = None,
                  device_map: str | None = None) -> None:
    ref = resolve_model(model_id, revision)
    todo = []
    for p in prompts:
        key = unit_key(ref, p, settings)
        path = artifact_path(out_dir, ref.slug, p)
        report.artifacts.append(path)
        if _current_key(path) == key:
            report.reused += 1
        else:
            todo.append((p, key))
    if not todo:
        log(f"{ref.model_id}: all {len(prompts)} artifacts are current; model not loaded")
        return
    lm = load_model(ref, device, dtype, log, device_map=device_map)
    context = lm.facts.get("context_length") or 10 ** 9
    items, tokens_of = [], {}
    for p, key in todo:
        ids, tokens = describe_tokens(lm.tokenizer, p.text)
        if len(ids) + settings.continuation > context:
            report.failures.append(f"{p.key} ({ref.model_id}): {len(ids)} tokens, longer than the "
                                   f"model's context of {context}; shorten field 'text'.")
            continue
        items.append((p, ids))
        tokens_of[p.key] = (key, tokens)
    if budget_bytes is None:
        budget_bytes = default_budget(lm.device)
    facts = lm.facts
    t0, done = time.perf_counter(), 0
    for batch in _batches(items, facts["layers"], facts["query_heads"], budget_bytes,
                          settings.continuation):
        for prompt, result in _run(lm, batch, settings, log):
            try:
                if isinstance(result, BaseException):
                    raise result
                key, tokens = tokens_of[prompt.key]
                extra = result.ids[len(tokens):]
                tokens = tokens + describe_ids(lm.tokenizer, extra, len(prompt.text))
                artifact = build_artifact(lm, prompt, key, settings, tokens, result)
                validate_artifact(artifact, f"{ref.slug}/{prompt.key}", full=False)
                write_artifact(artifact_path(out_dir, ref.slug, prompt), artifact)
                report.computed += 1
                done += 1
            except AtlasError as e:
                report.failures.append(f"{prompt.key} ({ref.model_id}): {e}")
            except Exception as e:  # noqa: BLE001 - one failed prompt must not lose the others
                kind = ("out of memory even at batch size 1" if _is_oom(e)
                        else f"{type(e).__name__}: {e}")
                report.failures.append(f"{prompt.key} ({ref.model_id}): {kind}")
        rate = done / max(time.perf_counter() - t0, 1e-9)
        log(f"{ref.slug}: {done}/{len(items)} prompts computed ({rate:.1f} prompts/s)")
    del lm


def run_compute(models: Sequence[str], prompt_sets: Sequence[PromptSet], out_dir: Path,
                settings: Settings = Settings(), device: str = "auto", dtype: str = "auto",
                shard: Shard = Shard(1, 1), log: Log = print, revision: str = "main",
                device_map: str | None = None) -> ComputeReport:
    """Compute every (model, prompt) of this shard whose artifact is missing or stale."""
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    prompts = shard.take([p for s in prompt_sets for p in s.prompts])
    out_dir.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_temporaries(out_dir)
    if removed:
        log(f"removed {removed} temporary file(s) left by an interrupted build")
    report = ComputeReport()
    t0 = time.perf_counter()
    log(f"compute: {len(prompts)} prompts x {len(models)} models on {dev}"
        + (f" (shard {shard.index}/{shard.count})" if shard.count > 1 else ""))
    for model_id in models:
        compute_model(model_id, prompts, out_dir, settings, dev, torch_dtype, log, report,
                      revision=revision, device_map=device_map)
    report.seconds = time.perf_counter() - t0
    log(f"compute: {report.computed} computed, {report.reused} reused, "
        f"{len(report.failures)} failed in {report.seconds:.1f}s")
    return report
