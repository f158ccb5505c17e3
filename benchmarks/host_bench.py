"""The compute stage's host work alone: `host_ms_per_prompt` of issue 11, without the device.

For one model (full size, random weights, as bench.py builds it), one `extract.run_batch` over N
reference prompts of a given length, then the writer's job for that batch (`compute._store_batch`:
build each artifact from the device's arrays, check it, hash and write the binary file on the I/O
thread, encode and write the JSON) timed `--reps` times on the same results, each into a fresh
directory. Nothing else runs meanwhile, so this is the host time with the device idle; bench.py's
`host_ms_per_prompt` is the same time measured inside the compute stage, overlapping the next
batch's device work.

    python benchmarks/host_bench.py [--model qwen2.5] [--tokens 64] [--fill] [--prompts 8]
                                    [--reps 7]

Prints one JSON object: the run_batch time and the host time per prompt (median, min, each rep).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench  # noqa: E402 - the benchmark's model building and workload
from generator import compute as C  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5", choices=["gpt2", "qwen2.5"])
    ap.add_argument("--tokens", type=int, default=64, help="prompt tokens at most (64)")
    ap.add_argument("--fill", action="store_true",
                    help="repeat each text to exactly --tokens tokens (always above 64)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--reference", default=str(HERE / "reference"))
    args = ap.parse_args(argv)
    m = bench.build_models(args.model, args, "cpu", torch.float32)
    bench.set_attention(m.model, "eager")
    prompts = bench.workload(m.lm.tokenizer, bench.reference_prompts(args.prompts), args.tokens,
                             fill=args.fill or args.tokens > 64)
    settings = C.Settings()
    items, tokens_of = C._tokenize(m.lm, [(p, "0" * 64) for p in prompts], settings,
                                   C.ComputeReport())
    t0 = time.perf_counter()
    results = list(C._run(m.lm, items, settings, bench.log))
    device_s = time.perf_counter() - t0
    per_rep, cpu = [], []
    for _ in range(args.reps + 1):                  # the first fills the vocabulary cache
        out = Path(tempfile.mkdtemp(prefix="atlas-host-"))
        report = C.ComputeReport()
        C._store_batch(m.lm, results, tokens_of, settings, out, report)
        shutil.rmtree(out)
        if report.failures or report.computed != len(results):
            raise RuntimeError(f"writer failed: {report.failures[:3]}")
        per_rep.append(report.host_seconds / report.host_prompts * 1000)
        cpu.append(report.host_cpu_seconds / report.host_prompts * 1000)
    per_rep, cpu = per_rep[1:], cpu[1:]
    tokens = [len(r.ids) for _, r in results]
    print(json.dumps({
        "model": args.model, "prompts": len(results), "fill": args.fill or args.tokens > 64,
        "analysed_tokens_mean": round(statistics.mean(tokens), 1),
        "run_batch_s": round(device_s, 2),
        "host_ms_per_prompt": round(statistics.median(per_rep), 3),
        "host_ms_per_prompt_min": round(min(per_rep), 3),
        "host_ms_per_prompt_per_rep": [round(x, 3) for x in per_rep],
        "host_cpu_ms_per_prompt": round(statistics.median(cpu), 3),
        "machine": bench.machine("cpu", "float32"),
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
