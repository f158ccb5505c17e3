#!/usr/bin/env python
"""Page weight and time to first chart of built pages, in headless Chromium on 127.0.0.1.

    python benchmarks/page_bench.py SITE_DIR PAGE [PAGE ...] [--runs 5]
    python benchmarks/page_bench.py --long demo [--work DIR] [--runs 5]
    python benchmarks/page_bench.py --long reference [--work DIR] [--runs 5]

PAGE is a path inside the site, e.g. prompts/measure/long-64.html. Prints one JSON object per
page: the median time from navigation start to the first drawn chart (the page script marks it
with performance.mark("atlas-first-chart")), the bytes of data (`.json`, and the gzipped
`.json.gz` head files of the attention) and of everything fetched before that moment, which data
files those were, and the totals once the page settles (charts below the fold are drawn only
when scrolled to, so they are not part of the load). On a page with an attention heatmap, then
the time from choosing another head in the first heatmap to its drawing (`switch_head_ms`), and
what that fetched.

`--long` builds a site first, into `--work` (default build/page-bench), then measures its two
pages against the budgets of issue 16 (`budgets` in the output): a prompt of about 2,048 tokens
(`long-context-bench/tokens-2048`: first chart within 1 s, at most 300 kB of data before it,
another head within 300 ms) and one of 64 (+ 8 generated: the 72-token page of before). `demo`
builds with `--demo`; `reference` writes the full-size random-weight checkpoints
(reference_checkpoints.py) and builds Qwen2.5-0.5B from them (GPT-2's context of 1,024 positions
cannot hold the long prompt; `--with-gpt2` adds it, for a build that skips what a model cannot
hold). The build is the CLI's own, so a second run reuses its artifacts.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import http.server
import io
import json
import statistics
import subprocess
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

MEASURE = """() => {
  const mark = performance.getEntriesByName("atlas-first-chart")[0];
  const first = mark ? mark.startTime : null;
  const res = performance.getEntriesByType("resource");
  const nav = performance.getEntriesByType("navigation")[0];
  const sum = (xs) => xs.reduce((a, r) => a + (r.encodedBodySize || 0), 0);
  const before = res.filter((r) => first !== null && r.responseEnd <= first);
  const isData = (r) => /\.json(\.gz)?$/.test(new URL(r.name).pathname);
  return {first_chart_ms: first, html_bytes: nav.encodedBodySize,
          data_bytes_before_first_chart: sum(before.filter(isData)),
          data_files_before_first_chart: before.filter(isData).map(
            (r) => [new URL(r.name).pathname, r.encodedBodySize]),
          all_bytes_before_first_chart: sum(before) + nav.encodedBodySize,
          data_bytes_after_load: sum(res.filter(isData)),
          all_bytes_after_load: sum(res) + nav.encodedBodySize,
          requests_after_load: res.length + 1,
          dom_content_loaded_ms: nav.domContentLoadedEventEnd};
}"""


# Choosing another head in the first heatmap of the page: the time until it is drawn (the heatmap
# sets data-head when it is), and what was fetched for it.
SWITCH_HEAD = """async () => {
  const box = document.querySelector(".atlas-attention");
  if (!box) return {};
  const select = box.querySelector(".atlas-head"), chart = box.querySelector(".atlas-chart");
  const next = String((Number(select.value) + 1) % select.options.length);
  const before = performance.getEntriesByType("resource").length;
  const t0 = performance.now();
  select.value = next;
  select.dispatchEvent(new Event("change"));
  await new Promise((resolve) => {
    const check = () => (chart.dataset.head === next ? resolve() : setTimeout(check, 2));
    check();
  });
  await new Promise((resolve) => requestAnimationFrame(() => resolve()));
  const ms = performance.now() - t0;
  const fetched = performance.getEntriesByType("resource").slice(before);
  return {switch_head_ms: ms, switch_head_requests: fetched.length,
          switch_head_bytes: fetched.reduce((a, r) => a + (r.encodedBodySize || 0), 0)};
}"""

# Issue 16's budgets of a page (first chart, data before it, another head).
BUDGETS = {"first_chart_ms": 1000, "data_bytes_before_first_chart": 300_000,
           "all_bytes_before_first_chart": 300_000, "switch_head_ms": 300}

# Words that are one token each for the GPT-2 and Qwen2.5 tokenizers: 1,015 of them and the same
# list again make a prompt of 2,039 tokens (+ 8 generated), as tests/test_browser.py's long page.
WORDS = ("red blue green cat dog sun sea map key box cup hat pen car bus tree fish bird milk rain "
         "snow wind book door road ship star moon gold iron salt").split()
LIST_2048 = " ".join(WORDS[(i * 7 + i * i // 3) % len(WORDS)] for i in range(1015))
LONG_SET = {"title": "Page benchmark", "description": "The pages of issue 16's budgets.",
            "prompts": [
                {"id": "tokens-2048", "text": f"Memorize this list: {LIST_2048}. Again: {LIST_2048}",
                 "note": "A list of one-token words, repeated: about 2,048 tokens."},
                {"id": "tokens-64", "text": (
                    "Shopping list: flour, lentils, saffron, walnuts, yogurt, apples, bread, cheese, "
                    "dates, eggs, figs, grapes, honey. Checked items: flour, lentils, saffron, "
                    "walnuts, yogurt, apples, bread, cheese, dates, eggs, figs,"),
                 "note": "64 tokens: with 8 generated, the 72-token page of before."}]}
LONG_PAGES = ["prompts/long-context-bench/tokens-2048.html",
              "prompts/long-context-bench/tokens-64.html"]


def build_long(kind: str, work: Path, with_gpt2: bool) -> Path:
    """Build the site of the long pages (`--long`) into `work`; return the site's directory."""
    import yaml
    prompts = work / "prompt-sets"
    prompts.mkdir(parents=True, exist_ok=True)
    (prompts / "long-context-bench.yaml").write_text(
        yaml.safe_dump(LONG_SET, allow_unicode=True, sort_keys=False, width=1 << 20), "utf-8")
    cmd = [sys.executable, "-m", "generator.cli", "build", "--build-dir", str(work / "build"),
           "--out", str(work / "site"), "--prompts", str(prompts)]
    if kind == "demo":
        cmd.append("--demo")
    else:
        models = work / "models"
        subprocess.run([sys.executable, str(HERE / "reference_checkpoints.py"), str(models)],
                       check=True)
        if with_gpt2:
            cmd += ["--model", str(models / "gpt2-random")]
        cmd += ["--model", str(models / "qwen2.5-0.5b-random")]
    print(" ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=HERE.parent)
    return work / "site"


def budgets(row: dict) -> dict:
    """Each budget of issue 16 with the page's figure and whether it holds."""
    return {k: {"budget": limit, "measured": row.get(k),
                "holds": row.get(k) is not None and row[k] <= limit}
            for k, limit in BUDGETS.items()}


# What a static host (GitHub Pages, nginx's gzip_static, a CDN) sends compressed. Not ".gz": the
# head files (`L<l>.H<h>.json.gz`) are gzip streams already and go out as they are.
COMPRESSED = {".html", ".js", ".css", ".json", ".svg", ".map", ".txt", ".xml"}


def serve(root: Path, compress: bool = False) -> tuple[http.server.ThreadingHTTPServer, str]:
    """`root` on 127.0.0.1; with `compress`, text files gzip-encoded (level 6) for a client that
    accepts it, as static hosts serve them, so that a page's transfer sizes are those a reader
    downloads."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # noqa: D401 - silence the request log
            pass

        def send_head(self):
            path = Path(self.translate_path(self.path))
            if (not compress or path.suffix not in COMPRESSED or not path.is_file()
                    or "gzip" not in self.headers.get("Accept-Encoding", "")):
                return super().send_head()
            body = gzip.compress(path.read_bytes(), compresslevel=6, mtime=0)
            self.send_response(200)
            self.send_header("Content-Type", self.guess_type(str(path)))
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return io.BytesIO(body)

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def measure(site: Path, pages: list[str], runs: int, compress: bool = False) -> list[dict]:
    from playwright.sync_api import sync_playwright
    server, base = serve(site, compress)
    out = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            for page_path in pages:
                samples = []
                for _ in range(runs):
                    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
                    page = ctx.new_page()
                    page.goto(base + page_path)
                    page.wait_for_function(
                        "performance.getEntriesByName('atlas-first-chart').length > 0",
                        timeout=30000)
                    page.wait_for_load_state("networkidle")
                    sample = page.evaluate(MEASURE)
                    sample.update(page.evaluate(SWITCH_HEAD))
                    samples.append(sample)
                    ctx.close()
                row = {"page": page_path, "runs": runs,
                       "transfer": "gzip, as a static host serves text" if compress
                       else "uncompressed (python -m http.server)"}
                # Which files the data before the first chart were, in the first run (a list: no
                # median of it).
                files = [s.pop("data_files_before_first_chart") for s in samples]
                row["data_files_before_first_chart"] = files[0]
                for key in samples[0]:
                    row[key] = statistics.median(s[key] for s in samples)
                row["first_chart_ms_all"] = [round(s["first_chart_ms"]) for s in samples]
                if "switch_head_ms" in samples[0]:
                    row["switch_head_ms_all"] = [round(s["switch_head_ms"]) for s in samples]
                row["budgets"] = budgets(row)
                out.append(row)
            browser.close()
    finally:
        server.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("site", type=Path, nargs="?")
    ap.add_argument("pages", nargs="*")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--long", choices=["demo", "reference"],
                    help="build the long pages' site first (demo or full-size Qwen2.5), measure it")
    ap.add_argument("--work", type=Path, default=HERE.parent / "build" / "page-bench",
                    help="where --long builds (default build/page-bench)")
    ap.add_argument("--with-gpt2", action="store_true",
                    help="with --long reference: build full-size GPT-2 too")
    ap.add_argument("--gzip", action="store_true",
                    help="serve text files gzip-encoded, as static hosts do (byte counts are then "
                         "what a reader downloads)")
    args = ap.parse_args()
    if args.long:
        site = build_long(args.long, args.work / args.long, args.with_gpt2)
        pages = LONG_PAGES
    elif args.site and args.pages:
        site, pages = args.site, args.pages
    else:
        ap.error("give SITE_DIR and PAGE, or --long demo|reference")
    print(json.dumps(measure(site, pages, args.runs, args.gzip), indent=2))


if __name__ == "__main__":
    main()
