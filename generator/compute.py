"""The compute stage: prompt sets x models -> one JSON artifact per (model, prompt) (imports torch).

Work is keyed by a content hash of (schema version, model id and revision, prompt text, extraction
settings): an artifact whose key matches is kept, so unchanged prompts are not recomputed, and a
model whose artifacts are all current is not even loaded. `--shard K/N` takes every N-th prompt, the
same prompts for every model, so N runners write disjoint artifacts that combine into one site.
Prompts run in length-sorted batches sized to the model; a batch that runs out of memory is split and
retried; a prompt that fails is reported and the others are kept.

The device work of a batch (`extract.run_batch`) and the host work of the previous one (building
each artifact from the arrays the device sent, checking it, JSON encoding, atomic writes) overlap:
one writer thread takes a batch's results while this thread starts the next batch.
"""

from __future__ import annotations

import platform
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import __version__, layout, ov, skips
from .errors import AtlasError, OptionError
from .extract import SequenceOutput, run_batch
from .metrics import HEAD_METRICS, kv_groups
from .models import (LoadedModel, ModelRef, load_model, load_tokenizer, pick_dtype, pick_device,
                     resolve_model)
from .prompts import Prompt, PromptSet
from .schema import (SCHEMA_VERSION, Artifact, Attention, Attribution, Generation,
                     LayerGroups, Lens, PromptInfo, Provenance, TopK, attention_path,
                     current_attention, validate_artifact, write_artifact_json, write_binary_file)
from .space import is_disk_full
from .store import content_key, remove_stale_temporaries, sha256_bytes
from .tokenize_page import save_tokenizer
from .tokens import describe_ids, describe_tokens, preload_vocab, vocab_entries

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
    skipped: list[str] = field(default_factory=list)   # "<prompt key> (<model>): why", one a line
    seconds: float = 0.0
    artifacts: list[Path] = field(default_factory=list)
    # Host work after the device: from a batch's results on the host to its artifacts on disk
    # (build, check, serialise, write), summed over batches, and the prompts it covered; and the
    # CPU time the writer's two threads spent on it (on a CPU "device" the next batch's forward
    # runs on the same cores meanwhile, and the wall time includes waiting for them).
    host_seconds: float = 0.0
    host_cpu_seconds: float = 0.0
    host_prompts: int = 0


def artifact_path(root: Path, slug: str, prompt: Prompt) -> Path:
    return layout.artifact_path(root, slug, prompt.set_id, prompt.id)


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


def lens_of(seq: SequenceOutput, settings: Settings) -> Lens:
    """The stored logit lens of one sequence."""
    return Lens.from_arrays(seq.lens_ids, seq.lens_logprobs, seq.next_logprob, seq.next_rank,
                            settings.lens_top_k)


def build_artifact(lm: LoadedModel, prompt: Prompt, key: str, settings: Settings,
                   tokens: list[dict], seq: SequenceOutput, lens: Lens | None = None,
                   file_sha256: str | None = None) -> Artifact:
    """The artifact of one prompt, in memory, built through the schema's typed constructor from
    the arrays `extract.run_batch` brought to the host (no per-value work here). `lens`
    (`lens_of(seq, settings)`) and `file_sha256` (of the binary file): if already made."""
    ref = lm.ref
    n_prompt = sum(1 for t in tokens if not t.get("generated"))
    referenced = _referenced(seq.top_ids, seq.lens_ids)
    stored = seq.attention
    attention = Attention.from_encoded(stored.data, stored.index, stored.heads, stored.length,
                                       prompt.id, file_sha256)
    return Artifact(
        key=key,
        provenance=Provenance(
            model_id=ref.model_id, model_slug=ref.slug, revision=ref.revision,
            random_weights=ref.random_weights, prompt_sha256=sha256_bytes(prompt.text.encode()),
            device=lm.device.split(":")[0], dtype=lm.dtype, libraries=library_versions(),
            settings=asdict(settings)),
        model=lm.facts,
        prompt=PromptInfo(prompt.set_id, prompt.id, prompt.text, prompt.note),
        tokens=tokens,
        predictions=TopK.from_arrays(seq.top_ids, seq.top_logprobs, seq.next_logprob[-1],
                                     seq.next_rank[-1], settings.top_k),
        lens=lens if lens is not None else lens_of(seq, settings),
        attention=attention,
        vocab=vocab_entries(lm.tokenizer, referenced),
        generation=Generation(n_prompt, attention.length - n_prompt),
        metrics={**dict(zip(HEAD_METRICS, seq.metrics)),             # name -> [L, H]
                 "direct_logit": direct_logit_to_next(seq.dla, attention.layers,
                                                      attention.heads)},
        groups=_groups(seq.groups, attention.heads, lm.facts["kv_heads"]),
        attribution=Attribution.from_ranked(seq.dla.shape[-1], *seq.dla_ranked, seq.dla_error),
    )


def _referenced(*ids: np.ndarray) -> list[int]:
    """The distinct token ids of `ids`, ascending (a mark per id: faster than sorting them)."""
    flat = np.concatenate([np.ravel(x) for x in ids])
    seen = np.zeros(int(flat.max()) + 1 if flat.size else 0, dtype=bool)
    seen[flat] = True
    return np.flatnonzero(seen).tolist()


def direct_logit_to_next(dla: np.ndarray, layers: int, heads: int) -> np.ndarray:
    """Each head's mean direct contribution to the logit of the token that came next, over the
    positions that have one: dla float [T, 2, C] -> [L, H] (NaN when no position has one)."""
    heads_next = dla[:, 1, 1:1 + layers * heads].astype(np.float64)   # [T, L*H], NaN: no next
    if np.isnan(heads_next).all():
        return np.full((layers, heads), np.nan)
    return np.nanmean(heads_next, axis=0).reshape(layers, heads)


def _groups(values: np.ndarray | None, heads: int, kv_heads: int) -> list[LayerGroups]:
    """Grouped-query attention: per layer, how alike the query heads sharing a key/value head
    attend, and (for contrast) heads of different groups; empty for multi-head attention.
    values: [L, 1 + 2G] from `device_metrics.group_metrics` (between, then per group similarity
    and mean JS)."""
    if values is None or kv_heads >= heads:
        return []
    return LayerGroups.layers_from_array(values, kv_groups(heads, kv_heads))


def plan_batches(items: list[tuple[Prompt, list[int]]], layers: int, heads: int,
                 budget_bytes: int, extra: int = 0,
                 batch_size: int | None = None) -> list[list[tuple[Prompt, list[int]]]]:
    """Length-sorted batches whose attention ([L, B, H, T, T] float32, T = the longest prompt
    plus `extra` generated tokens) fits `budget_bytes`; with `batch_size`, batches of exactly that
    many (the last one smaller), whatever their memory."""
    items = sorted(items, key=lambda it: (len(it[1]), it[0].key))
    if batch_size is not None:
        return [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
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


def _run(lm: LoadedModel, batch: list[tuple[Prompt, list[int]]], settings: Settings, log: Log,
         budget_bytes: int | None = None):
    """Run one batch (generation and capture; the prefill's attention of every layer is kept for
    the reduction only within `budget_bytes`, see `extract.run_batch`); split it in halves on any
    error (out-of-memory included). Yields (prompt, result): a SequenceOutput, or the exception of
    a prompt that failed on its own."""
    tok = lm.tokenizer
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else 0)
    if budget_bytes is None:
        budget_bytes = default_budget(lm.device)
    try:
        out = run_batch(lm.model, [ids for _, ids in batch], settings.continuation, eos, pad,
                        settings.top_k, settings.lens_top_k, prefill_budget=budget_bytes)
    except Exception as e:  # noqa: BLE001 - OOM classes differ between backends
        if len(batch) > 1:
            # Split and retry: out of memory goes away in smaller batches, and any other error is
            # narrowed down to the prompt that causes it, so it does not fail its whole batch.
            if _is_oom(e) and lm.device.startswith("cuda"):
                torch.cuda.empty_cache()
            half = len(batch) // 2
            why = "out of memory" if _is_oom(e) else f"{type(e).__name__}"
            log(f"{why} on a batch of {len(batch)}; retrying as {half} + {len(batch) - half}")
            yield from _run(lm, batch[:half], settings, log, budget_bytes)
            yield from _run(lm, batch[half:], settings, log, budget_bytes)
            return
        yield batch[0][0], e  # a single prompt failed: its error instead of a result
        return
    for (prompt, _), seq in zip(batch, out):
        yield prompt, seq


def compute_model(model_id: str, prompts: Sequence[Prompt], out_dir: Path, settings: Settings,
                  device: str, dtype: torch.dtype | None, log: Log, report: ComputeReport,
                  revision: str = "main", budget_bytes: int | None = None,
                  device_map: str | None = None, model: LoadedModel | None = None,
                  batch_size: int | None = None,
                  all_prompts: Sequence[Prompt] | None = None) -> None:
    """Compute the artifacts of `prompts` that are missing or stale for one model.

    `model`: an already loaded model (then `model_id`, `revision`, `device`, `dtype` and
    `device_map` are not used to find or load one; its `ref` names the artifacts). The benchmark
    hands in full-size models it built itself this way. `batch_size`: batches of exactly this many
    prompts instead of batches sized to `budget_bytes`. `all_prompts`: every prompt of the build
    when `prompts` is one shard's share (the OV circuit's source tokens come from all of them).
    """
    ref = model.ref if model is not None else resolve_model(model_id, revision)
    todo = _stale(ref, prompts, out_dir, settings, report)
    texts = [p.text for p in (prompts if all_prompts is None else all_prompts)]
    if not todo:
        tokenizer = load_tokenizer(ref) if model is None else model.tokenizer
        if ov.current(layout.ov_path(out_dir, ref.slug), ref.model_id, ref.revision,
                      ov.prompt_tokens(tokenizer, texts)):
            log(f"{ref.model_id}: all {len(prompts)} artifacts are current; model not loaded")
            if not layout.tokenizer_artifact(out_dir, ref.slug).is_file():
                save_tokenizer(tokenizer, out_dir, ref.slug)  # for the tokenize page
                log(f"{ref.model_id}: tokenizer saved for the tokenize page")
            return
    lm = model if model is not None else load_model(ref, device, dtype, log, device_map=device_map)
    save_tokenizer(lm.tokenizer, out_dir, ref.slug)  # the tokenize page's copy (tokenize_page.py)
    t_vocab = time.perf_counter()
    if made := preload_vocab(lm.tokenizer):  # the writer then only looks records up
        log(f"{ref.slug}: display records of {made} vocabulary tokens made in "
            f"{time.perf_counter() - t_vocab:.1f}s")
    items, tokens_of = _tokenize(lm, todo, settings, report, out_dir, log)
    if budget_bytes is None:
        budget_bytes = default_budget(lm.device)
    facts = lm.facts
    t0, done = time.perf_counter(), 0
    batches = plan_batches(items, facts["layers"], facts["query_heads"], budget_bytes,
                           settings.continuation, batch_size)
    # One writer thread: while it serialises and writes batch k, this thread runs batch k + 1 on
    # the device. At most one batch waits for it, which bounds the host memory held. When the
    # device is the CPU, the two would share its cores (the writer's wall time then mostly
    # waits for the forward pass), so each batch is written before the next one starts.
    overlap = not lm.device.startswith("cpu")

    def written(job: Future) -> None:
        nonlocal done
        done += job.result()
        log(f"{ref.slug}: {done}/{len(items)} prompts computed "
            f"({done / max(time.perf_counter() - t0, 1e-9):.1f} prompts/s)")

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="atlas-writer") as writer:
        pending: Future | None = None
        for batch in batches:
            results = list(_run(lm, batch, settings, log, budget_bytes))  # on the host now
            if pending is not None:
                written(pending)
            pending = writer.submit(_store_batch, lm, results, tokens_of, settings, out_dir,
                                    report)
            if not overlap:
                written(pending)
                pending = None
        if pending is not None:
            written(pending)
    ov.ensure_for_model(lm, out_dir, ov.prompt_tokens(lm.tokenizer, texts), log)


def _store_batch(lm: LoadedModel, results: list, tokens_of: dict, settings: Settings,
                 out_dir: Path, report: ComputeReport) -> int:
    """The writer's job for one batch: every prompt's artifact built, checked and written; the
    time it takes goes to `report.host_seconds`. Returns how many were written.

    One I/O thread hashes and writes the binary files (attention and lens), in order (both
    release the GIL), while this thread builds, checks and writes the JSONs: each JSON waits only
    for its own binary file, which is on disk before the JSON that records it."""
    t0, cpu0 = time.perf_counter(), time.thread_time()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="atlas-io") as io:
        jobs = []
        for prompt, result in results:
            if isinstance(result, BaseException):
                jobs.append((None, None))
                continue
            lens = lens_of(result, settings)
            jobs.append((lens, io.submit(_write_binary_timed,
                                         artifact_path(out_dir, lm.ref.slug, prompt),
                                         result.attention.data, lens.data)))
        failures = [_store(lm, prompt, result, tokens_of[prompt.key], settings, out_dir, *job)
                    for (prompt, result), job in zip(results, jobs)]
    report.failures.extend(f for f in failures if f is not None)  # in the batch's order
    done = failures.count(None)
    report.computed += done
    report.host_seconds += time.perf_counter() - t0
    report.host_cpu_seconds += time.thread_time() - cpu0 + sum(
        job.result()[1] for _, job in jobs if job is not None and job.exception() is None)
    report.host_prompts += len(results)
    return done


def _write_binary_timed(path: Path, attention: Any, lens: bytes) -> tuple[str, float]:
    """`write_binary_file` on the I/O thread: (the file's SHA-256, the CPU time it took)."""
    t0 = time.thread_time()
    digest = write_binary_file(path, attention, lens)
    return digest, time.thread_time() - t0


def _stale(ref: ModelRef, prompts: Sequence[Prompt], out_dir: Path, settings: Settings,
           report: ComputeReport) -> list[tuple[Prompt, str]]:
    """(prompt, key) of every prompt whose artifact is missing or stale; the others are reused
    (a current skip record, `skips`, counts as done: the prompt still does not fit)."""
    todo = []
    for p in prompts:
        key = unit_key(ref, p, settings)
        path = artifact_path(out_dir, ref.slug, p)
        if _current_key(path) == key:
            report.artifacts.append(path)
            report.reused += 1
        elif skips.current_key(skip_path(out_dir, ref.slug, p)) == key:
            report.reused += 1
        else:
            report.artifacts.append(path)
            todo.append((p, key))
    return todo


def _tokenize(lm: LoadedModel, todo: list[tuple[Prompt, str]], settings: Settings,
              report: ComputeReport, out_dir: Path, log: Log):
    """Token ids of every prompt to run, and per prompt key its (artifact key, token records).
    A prompt longer than the model's context (with its continuation) is skipped for this model
    only: a skip record (`skips`) takes its artifact's place and one line says so."""
    context = lm.facts.get("context_length")
    items, tokens_of = [], {}
    for p, key in todo:
        ids, tokens = describe_tokens(lm.tokenizer, p.text)
        if not skips.fits(len(ids), settings.continuation, context):
            record = skips.SkipRecord(key, lm.ref.model_id, lm.ref.slug, p.set_id, p.id,
                                      sha256_bytes(p.text.encode()), len(ids),
                                      settings.continuation, context)
            skip(out_dir, lm.ref.slug, p, record)
            line = f"{p.key} ({lm.ref.model_id}): skipped, {record.message}"
            report.skipped.append(line)
            report.artifacts.remove(artifact_path(out_dir, lm.ref.slug, p))
            log(line)
            continue
        items.append((p, ids))
        tokens_of[p.key] = (key, tokens)
    return items, tokens_of


def skip_path(root: Path, slug: str, prompt: Prompt) -> Path:
    return layout.skip_record_path(root, slug, prompt.set_id, prompt.id)


def skip(root: Path, slug: str, prompt: Prompt, record: skips.SkipRecord) -> None:
    """Write the skip record of (model, prompt) and remove an artifact left from before."""
    skips.write_skip(skip_path(root, slug, prompt), record)
    path = artifact_path(root, slug, prompt)
    path.unlink(missing_ok=True)
    attention_path(path).unlink(missing_ok=True)


def _store(lm: LoadedModel, prompt: Prompt, result: SequenceOutput | BaseException,
           key_tokens: tuple[str, list[dict]], settings: Settings, out_dir: Path,
           lens: Lens | None, binary_written: Future | None) -> str | None:
    """Build, check and write one prompt's artifact, its binary file (attention and `lens`) being
    written by `binary_written` (`_write_binary_timed`): None if written, else the failure's line
    for the report (one failed prompt must not lose the others)."""
    ref = lm.ref
    try:
        if isinstance(result, BaseException):
            raise result
        key, tokens = key_tokens
        extra = result.ids[len(tokens):]
        tokens = tokens + describe_ids(lm.tokenizer, extra, len(prompt.text))
        artifact = build_artifact(lm, prompt, key, settings, tokens, result, lens,
                                  binary_written.result()[0]).to_dict()
        validate_artifact(artifact, f"{ref.slug}/{prompt.key}", full=False)
        write_artifact_json(artifact_path(out_dir, ref.slug, prompt), artifact)
        skip_path(out_dir, ref.slug, prompt).unlink(missing_ok=True)   # it fits now
        return None
    except AtlasError as e:
        return f"{prompt.key} ({ref.model_id}): {e}"
    except Exception as e:  # noqa: BLE001 - one failed prompt must not lose the others
        if is_disk_full(e):
            raise  # every prompt after it would fail too: the stage stops, the CLI says why
        kind = ("out of memory even at batch size 1" if _is_oom(e)
                else f"{type(e).__name__}: {e}")
        return f"{prompt.key} ({ref.model_id}): {kind}"


def run_compute(models: Sequence[str], prompt_sets: Sequence[PromptSet], out_dir: Path,
                settings: Settings = Settings(), device: str = "auto", dtype: str = "auto",
                shard: Shard = Shard(1, 1), log: Log = print, revision: str = "main",
                device_map: str | None = None, batch_size: int | None = None) -> ComputeReport:
    """Compute every (model, prompt) of this shard whose artifact is missing or stale
    (`batch_size`: prompts per batch; default, as many as the memory budget holds)."""
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    everything = [p for s in prompt_sets for p in s.prompts]
    prompts = shard.take(everything)
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
                      revision=revision, device_map=device_map, batch_size=batch_size,
                      all_prompts=everything)
    report.seconds = time.perf_counter() - t0
    log(f"compute: {report.computed} computed, {report.reused} reused, "
        + (f"{len(report.skipped)} skipped (longer than a model's context), "
           if report.skipped else "")
        + f"{len(report.failures)} failed in {report.seconds:.1f}s")
    return report
