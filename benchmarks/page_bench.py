#!/usr/bin/env python
"""Page weight and time to first chart of built pages, in headless Chromium on 127.0.0.1.

    python benchmarks/page_bench.py SITE_DIR PAGE [PAGE ...] [--runs 5]

PAGE is a path inside the site, e.g. prompts/measure/long-64.html. Prints one JSON object per
page: the median time from navigation start to the first drawn chart (the page script marks it
with performance.mark("atlas-first-chart")), the bytes of data (JSON) and of everything fetched
before that moment, and the totals once the page settles (charts below the fold are drawn only
when scrolled to, so they are not part of the load).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import statistics
import threading
from pathlib import Path

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

MEASURE = """() => {
  const mark = performance.getEntriesByName("atlas-first-chart")[0];
  const first = mark ? mark.startTime : null;
  const res = performance.getEntriesByType("resource");
  const nav = performance.getEntriesByType("navigation")[0];
  const sum = (xs) => xs.reduce((a, r) => a + (r.encodedBodySize || 0), 0);
  const before = res.filter((r) => first !== null && r.responseEnd <= first);
  const isData = (r) => r.name.endsWith(".json");
  return {first_chart_ms: first, html_bytes: nav.encodedBodySize,
          data_bytes_before_first_chart: sum(before.filter(isData)),
          all_bytes_before_first_chart: sum(before) + nav.encodedBodySize,
          data_bytes_after_load: sum(res.filter(isData)),
          all_bytes_after_load: sum(res) + nav.encodedBodySize,
          requests_after_load: res.length + 1,
          dom_content_loaded_ms: nav.domContentLoadedEventEnd};
}"""


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # noqa: D401 - silence the request log
            pass
    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def measure(site: Path, pages: list[str], runs: int) -> list[dict]:
    from playwright.sync_api import sync_playwright
    server, base = serve(site)
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
                    samples.append(page.evaluate(MEASURE))
                    ctx.close()
                row = {"page": page_path, "runs": runs}
                for key in samples[0]:
                    row[key] = statistics.median(s[key] for s in samples)
                row["first_chart_ms_all"] = [round(s["first_chart_ms"]) for s in samples]
                out.append(row)
            browser.close()
    finally:
        server.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("site", type=Path)
    ap.add_argument("pages", nargs="+")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print(json.dumps(measure(args.site, args.pages, args.runs), indent=2))


if __name__ == "__main__":
    main()
