#!/usr/bin/env python
""""Tokenize your own text" in headless Chromium, served from 127.0.0.1 (issue 17's budgets).

    python benchmarks/tokenize_bench.py SITE_DIR [--runs 5] [--chars 2000] [--keys 30]

Prints one JSON object:
- first_tokens_ms: from navigation start to the first tokens on screen (the page script marks
  "atlas-tokenize-first"), tokenizer download included: a fresh browser context each run, no
  cache. Budget: 1,500 ms.
- all_tokens_ms: the same until every tokenizer shows its tokens ("atlas-tokenize-all").
- worker_load_ms / worker_fetch_ms per model: in its worker, from the load message to ready, and
  the part spent fetching and parsing the library and tokenizer.json (the rest builds it).
- keystroke_ms: a text of --chars characters (Hindi, English, Chinese, emoji, Python) is put in the
  box, then --keys characters are typed at its end one by one; for each, the time from the input
  event to every tokenization redrawn, layout included (the page's data-update-ms). Budget: 50 ms.
  keystroke_parts_ms: its parts (PARTS below).
Figures are medians (and maxima) over runs; on a shared machine they are noisy: say so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from page_bench import ARGS, serve  # noqa: E402

from generator import layout  # noqa: E402

SETTLED = ("() => { const r = document.querySelector('.atlas-tokenize');"
           " return r && r.getAttribute('aria-busy') === 'false' && r.dataset.shown === r.dataset.seq; }")
# The parts of one keystroke's update (tokenize.js data-*-ms): the input handler, each column's
# tokens back from its worker (queueing and messages included), encoding in the worker, drawing the
# chips, the boundaries, and the forced layout at the end.
PARTS = """() => {
  const r = document.querySelector('.atlas-tokenize');
  const out = {update: +r.dataset.updateMs, input: +r.dataset.inputMs,
               boundaries: +r.dataset.boundariesMs, layout: +r.dataset.layoutMs};
  for (const c of document.querySelectorAll('[data-tokens-of]')) {
    const s = c.dataset.tokensOf;
    out[s + ' arrived'] = +c.dataset.arrivedMs;
    out[s + ' encode'] = +c.dataset.encodeMs;
    out[s + ' draw'] = +c.dataset.drawMs;
  }
  return out;
}"""
PIECES = ["नमस्ते दुनिया, आप कैसे हैं? ", "The quick brown fox jumps over the lazy dog. ",
          "巴黎是法国的首都。", "👨‍👩‍👧‍👦 🙂 ", "def f(x):\n    return x ** 2  # square\n",
          "Ünïcödé naïve café 12345678 "]


def long_text(chars: int) -> str:
    text, i = "", 0
    while len(text) < chars:
        text += PIECES[i % len(PIECES)]
        i += 1
    return text[:chars]


def summary(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"median": round(statistics.median(xs), 1), "max": round(xs[-1], 1),
            "p90": round(xs[int(0.9 * (len(xs) - 1))], 1), "n": len(xs)}


def measure(site: Path, runs: int, chars: int, keys: int) -> dict:
    from playwright.sync_api import sync_playwright
    server, base = serve(site)
    url = base + layout.served(layout.TOKENIZE_PAGE)
    first, every, keystrokes, loads, fetches, breakdown = [], [], [], {}, {}, {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            for _ in range(runs):
                ctx = browser.new_context(viewport={"width": 1400, "height": 900})
                page = ctx.new_page()
                page.goto(url)
                page.wait_for_function(SETTLED, timeout=60_000)
                marks = page.evaluate("() => Object.fromEntries(performance.getEntriesByType('mark')"
                                      ".map(m => [m.name, m.startTime]))")
                first.append(marks["atlas-tokenize-first"])
                every.append(marks["atlas-tokenize-all"])
                for slug, load, fetch in page.evaluate(
                        "() => Array.from(document.querySelectorAll('[data-tokens-of]'), e =>"
                        " [e.dataset.tokensOf, +e.dataset.loadMs, +e.dataset.fetchMs])"):
                    loads.setdefault(slug, []).append(load)
                    fetches.setdefault(slug, []).append(fetch)
                page.fill(".atlas-tokenize-text", long_text(chars))
                page.wait_for_function(SETTLED, timeout=60_000)
                page.focus(".atlas-tokenize-text")
                page.keyboard.press("End")
                page.evaluate("() => document.querySelector('.atlas-tokenize-text')"
                              ".setSelectionRange(1e9, 1e9)")
                for k in range(keys):
                    page.keyboard.type("ab c1\u0928"[k % 6])
                    page.wait_for_function(SETTLED, timeout=60_000)
                    parts = page.evaluate(PARTS)
                    keystrokes.append(parts.pop("update"))
                    for name, value in parts.items():
                        breakdown.setdefault(name, []).append(value)
                ctx.close()
            browser.close()
    finally:
        server.shutdown()
    return {"page": layout.served(layout.TOKENIZE_PAGE), "runs": runs, "chars": chars,
            "first_tokens_ms": summary(first), "all_tokens_ms": summary(every),
            "worker_load_ms": {s: summary(v) for s, v in loads.items()},
            "worker_fetch_ms": {s: summary(v) for s, v in fetches.items()},
            "keystroke_ms": summary(keystrokes),
            "keystroke_parts_ms": {k: summary(v) for k, v in breakdown.items()},
            "budgets_ms": {"first_tokens": 1500, "keystroke": 50},
            "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("site", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--chars", type=int, default=2000)
    ap.add_argument("--keys", type=int, default=30)
    a = ap.parse_args()
    print(json.dumps(measure(a.site, a.runs, a.chars, a.keys), indent=1))


if __name__ == "__main__":
    main()
