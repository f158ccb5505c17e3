"""Browser tests: the small demo site (the `demo_build` fixture) served on 127.0.0.1 and opened in
headless Chromium. Charts render, the layer/head selects redraw the heatmap, nothing is requested
from any other host, the console stays clean, and hostile prompt text shows literally without
running. Skipped (with the reason) where /usr/bin/chromium is absent."""

from __future__ import annotations

import base64
import io
import os
import re
from urllib.parse import urlparse

import numpy as np
import pytest

from conftest import CJK_EMOJI_TEXT, HOSTILE_TEXT, QuietHandler, serve_directory

from generator.codec import dense_head
from generator.overview import read_thumbnails

pytestmark = pytest.mark.browser

CHART_TIMEOUT_MS = 30_000




@pytest.fixture(scope="module")
def site_url(demo_build):
    with serve_directory(demo_build.site) as url:
        yield url




class Watched:
    """A page with its console errors, page errors, requests and dialogs recorded."""

    def __init__(self, browser, width: int = 1400, color_scheme: str = "light"):
        self.context = browser.new_context(viewport={"width": width, "height": 900},
                                           color_scheme=color_scheme)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}")
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("requestfailed", lambda r: self.errors.append(
            f"request failed: {r.url} ({r.failure})"))

        def on_dialog(dialog):
            self.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()
        self.page.on("dialog", on_dialog)

    def foreign_requests(self) -> list[str]:
        out = []
        for url in self.requests:
            parsed = urlparse(url)
            if parsed.scheme in ("data", "blob", "about"):
                continue
            if parsed.hostname != "127.0.0.1":
                out.append(url)
        return out

    def close(self) -> None:
        self.context.close()


@pytest.fixture()
def watched(browser):
    w = Watched(browser)
    yield w
    w.close()


def render_all_charts(page) -> int:
    """Scroll every chart box into view (they are drawn lazily) and wait until all are drawn."""
    boxes = page.locator(".atlas-attention, .atlas-plain, .atlas-dla")
    count = boxes.count()
    for i in range(count):
        # One at a time, as a reader scrolls: a box scrolled past before the page's
        # IntersectionObserver saw it would never be drawn.
        box = boxes.nth(i)
        box.scroll_into_view_if_needed()
        page.wait_for_function(
            """(box) => { const el = box.querySelector('.atlas-chart');
                          return el.dataset.rendered === 'true'
                                 || el.classList.contains('atlas-error'); }""",
            arg=box.element_handle(), timeout=CHART_TIMEOUT_MS)
    page.wait_for_function(
        """() => [...document.querySelectorAll('.atlas-chart')].every(
               (el) => el.dataset.rendered === 'true' || el.classList.contains('atlas-error'))""",
        timeout=CHART_TIMEOUT_MS)
    return count


def wait_redrawn(page, chart, key: str, value: str, watched: Watched) -> None:
    """Wait until the heatmap says it shows `key` = `value` (atlas.js sets data-layer/data-head
    after a redraw), or shows an error."""
    page.wait_for_function(
        "([el, key, value]) => el.dataset[key] === value || el.classList.contains('atlas-error')",
        arg=[chart.element_handle(), key, value], timeout=CHART_TIMEOUT_MS)
    error = chart.evaluate("(el) => el.classList.contains('atlas-error') ? el.textContent : ''")
    assert not error, f"redraw for {key}={value} failed: {error}; {watched.errors}"


# A Vega canvas, or the attention heatmap's own (site_src/assets/heatmap.js).
CANVAS = "canvas.marks, canvas.atlas-heat-canvas"


def canvas_pixels(chart) -> str:
    """The drawn pixels of a chart's Vega canvas, as a data URL."""
    return chart.locator(CANVAS).evaluate("(c) => c.toDataURL()")


def canvas_colours(chart) -> int:
    """How many distinct colours a chart's Vega canvas shows."""
    return chart.locator(CANVAS).evaluate("""(c) => {
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        const seen = new Set();
        for (let i = 0; i < d.length; i += 4) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
        return seen.size;
    }""")


def test_prompt_page_charts_render_and_redraw(site_url, watched):
    page = watched.page
    page.goto(site_url + "prompts/basics/repeat.html", wait_until="load")
    count = render_all_charts(page)
    assert count >= 6
    failed = page.locator(".atlas-error").all_inner_texts()
    assert not failed, failed
    charts = page.locator(".atlas-chart")
    for i in range(charts.count()):
        chart = charts.nth(i)
        assert chart.get_attribute("data-rendered") == "true"
        assert chart.locator("svg.marks, " + CANVAS).count() == 1, f"chart {i} is not drawn"
    for kind in ("predictions", "surprisal"):
        kind_charts = page.locator(f'[data-spec$="charts/{kind}.vl.json"] .atlas-chart')
        assert kind_charts.count() == 2, f"{kind}: one chart per model expected"
        for i in range(2):
            svg = kind_charts.nth(i).locator("svg.marks")
            assert svg.locator("path, rect, text").count() > 0, f"{kind} chart {i} is empty"
    # The heatmaps are drawn on a canvas: it must hold many distinct colours (cells of different
    # weights), not a blank or single-colour area.
    heatmaps = page.locator(".atlas-attention .atlas-chart")
    assert heatmaps.count() == 2, "one attention heatmap per model expected"
    for i in range(2):
        assert canvas_colours(heatmaps.nth(i)) > 20, f"attention heatmap {i} is empty"

    # Changing the layer, then the head, redraws the first model's heatmap.
    box = page.locator(".atlas-attention").first
    chart = box.locator(".atlas-chart")
    before = canvas_pixels(chart)
    layers = box.locator(".atlas-layer option").count()
    heads = box.locator(".atlas-head option").count()
    assert layers >= 2 and heads >= 2
    box.locator(".atlas-layer").select_option(str(layers - 1))
    wait_redrawn(page, chart, "layer", str(layers - 1), watched)
    after_layer = canvas_pixels(chart)
    assert after_layer != before, "changing the layer did not redraw the heatmap"
    box.locator(".atlas-head").select_option(str(heads - 1))
    wait_redrawn(page, chart, "head", str(heads - 1), watched)
    assert canvas_pixels(chart) != after_layer, "changing the head did not redraw the heatmap"
    assert chart.locator(CANVAS).count() == 1, "the redraw added a second chart"
    assert not page.locator(".atlas-error").count()

    assert not watched.errors, watched.errors
    assert not watched.dialogs, watched.dialogs
    assert not watched.foreign_requests(), watched.foreign_requests()
    assert any(u.endswith("assets/vendor/vega-bundle.js") for u in watched.requests)
    assert any("/data/" in u and u.endswith(".json") for u in watched.requests)


def test_direct_logit_attribution_names_the_induction_head_and_opens_it(site_url, watched):
    """On the repeated sentence, the demo GPT-2's top-1 prediction at the last prompt token is
    written by its planted induction head: the list names it first, the heatmap redraws for
    another position and target, and a click on the head opens its attention."""
    from generator.demo import planted_heads
    induction = next(p for p in planted_heads("tiny-random-gpt2") if p["metric"] == "induction")
    page = watched.page
    page.goto(site_url + "prompts/basics/repeat.html", wait_until="load")
    box = page.locator('.atlas-dla[data-model="tiny-random-gpt2"]')
    box.scroll_into_view_if_needed()
    chart = box.locator(".atlas-chart")
    page.wait_for_function("(el) => el.dataset.rendered === 'true' || "
                           "el.classList.contains('atlas-error')", arg=chart.element_handle(),
                           timeout=CHART_TIMEOUT_MS)
    assert box.locator(".atlas-dla-list li").count() >= 2
    first = box.locator(".atlas-dla-list li a").first
    assert first.inner_text() == induction["name"], box.locator(".atlas-dla-list").inner_text()
    assert "Logit of" in box.locator(".atlas-dla-caption").inner_text()
    box.locator(".atlas-dla-pos").select_option("3")
    wait_redrawn(page, chart, "position", "3", watched)
    box.locator(".atlas-dla-target").select_option("next")
    wait_redrawn(page, chart, "target", "next", watched)
    first = box.locator(".atlas-dla-list li a").first
    name = first.inner_text()
    layer, head = name[1:].split(".H")
    # A head's name links to its own page (issue 18); its cell in the grid opens its attention.
    assert first.get_attribute("href") == f"../../heads/tiny-random-gpt2/L{layer}.H{head}.html"
    chart.scroll_into_view_if_needed()
    labels = chart.locator("svg.marks").evaluate("""(s) => [...s.querySelectorAll('.role-axis')]
        .map((a) => [...a.querySelectorAll('.role-axis-label text')].map((t) => {
            const r = t.getBoundingClientRect();
            return {text: t.textContent, x: r.left + r.width / 2, y: r.top + r.height / 2}; }))
        .filter((ls) => ls.length)""")
    # The x axis lists the heads (its labels share one height), the y axis the layers.
    heads_axis = next(ls for ls in labels if len({round(x["y"]) for x in ls}) == 1)
    layers_axis = next(ls for ls in labels if ls is not heads_axis)
    x = next(t["x"] for t in heads_axis if t["text"] == head)
    y = next(t["y"] for t in layers_axis if t["text"] == layer)
    page.mouse.click(x, y)
    att = page.locator('.atlas-attention[data-model="tiny-random-gpt2"]')
    wait_redrawn(page, att.locator(".atlas-chart"), "head", head, watched)
    assert att.locator(".atlas-layer").input_value() == layer
    # ... at that position: the heatmap lights the row of the position chosen above.
    page.wait_for_function("(b) => b.dataset.activeQuery === '3'", arg=att.element_handle(),
                           timeout=CHART_TIMEOUT_MS)
    assert not watched.errors, watched.errors


def test_hostile_prompt_shows_literally_and_runs_nothing(site_url, watched):
    page = watched.page
    page.goto(site_url + "prompts/basics/hostile.html", wait_until="load")
    assert page.inner_text(".atlas-prompt-text") == HOSTILE_TEXT
    render_all_charts(page)
    page.wait_for_timeout(300)
    assert not watched.dialogs, watched.dialogs
    # No script element holds the prompt's script.
    assert page.evaluate(
        "() => [...document.scripts].filter((s) => s.textContent.includes('alert(1)')).length") == 0
    assert not watched.errors, watched.errors
    assert not watched.foreign_requests(), watched.foreign_requests()


def test_chinese_and_emoji_prompt_shows_literally(site_url, watched):
    page = watched.page
    page.goto(site_url + "prompts/mixed/cjk-emoji.html", wait_until="load")
    assert page.inner_text(".atlas-prompt-text") == CJK_EMOJI_TEXT
    render_all_charts(page)
    assert not page.locator(".atlas-error").count()
    assert not watched.errors, watched.errors


@pytest.mark.parametrize("path", ["index.html", "sets/basics.html", "models/tiny-random-qwen2.html"])
def test_other_pages_load_cleanly(site_url, watched, path):
    page = watched.page
    page.goto(site_url + path, wait_until="load")
    assert "constructed weights" in page.inner_text("body").lower()
    if page.locator(".atlas-attention, .atlas-plain").count():
        render_all_charts(page)
        assert not page.locator(".atlas-error").count()
    page.wait_for_timeout(200)
    assert not watched.errors, watched.errors
    assert not watched.foreign_requests(), watched.foreign_requests()


# --- a site that fits the reader (issue 10): phones, dark mode, no chart library where unused ---

# One page of every kind the site has.
PAGE_KINDS = ["index.html", "sets/basics.html", "prompts/basics/repeat.html",
              "prompts/mixed/cjk-emoji.html", "models/tiny-random-gpt2.html",
              "compare/tokenizers.html", "compare/architectures.html", "metrics.html",
              "artifact-format.html", "prompt-sets.html", "embedding.html", "about.html"]
# Pages that draw no chart.
CHART_FREE = ["index.html", "sets/basics.html", "compare/architectures.html", "metrics.html",
              "about.html"]


@pytest.mark.parametrize("path", PAGE_KINDS)
def test_no_page_scrolls_sideways_on_a_phone(browser, site_url, path):
    """At 390 px no page is wider than the screen once every chart is drawn: wide tables and
    charts scroll inside their own frames."""
    w = Watched(browser, width=390)
    try:
        page = w.page
        page.goto(site_url + path, wait_until="load")
        if page.locator(".atlas-attention, .atlas-plain").count():
            render_all_charts(page)
        page.evaluate("window.scrollTo(0, 0)")
        width, viewport = page.evaluate(
            "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        if width > viewport:
            culprits = page.evaluate("""(w) => [...document.querySelectorAll('.md-content *')]
                .filter((el) => el.getBoundingClientRect().right > w + 1)
                .slice(0, 5).map((el) => el.tagName + '.' + el.className)""", viewport)
        else:
            culprits = []
        assert width <= viewport, f"{path} is {width} px wide at {viewport} px: {culprits}"
        assert not w.errors, w.errors
    finally:
        w.close()


@pytest.mark.parametrize("path", CHART_FREE)
def test_chart_free_pages_fetch_no_vega_bundle(watched, site_url, path):
    page = watched.page
    page.goto(site_url + path, wait_until="load")
    assert page.locator(".atlas-attention, .atlas-plain").count() == 0, f"{path} has a chart"
    page.wait_for_timeout(500)
    assert watched.requests, "no request recorded"
    bundle = [u for u in watched.requests if "vega" in u.rsplit("/", 1)[-1]]
    assert not bundle, f"{path} fetched {bundle}"
    assert not watched.errors, watched.errors


def test_chart_pages_load_the_vega_bundle_once(watched, site_url):
    page = watched.page
    page.goto(site_url + "compare/tokenizers.html", wait_until="load")
    render_all_charts(page)
    assert not page.locator(".atlas-error").count()
    assert sum(u.endswith("assets/vendor/vega-bundle.js") for u in watched.requests) == 1
    assert not watched.errors, watched.errors


class EncodingHost(QuietHandler):
    """A host that sends the gzipped head files as JSON with Content-Encoding: gzip (an object
    store with that metadata, a server configured so): the browser inflates them before the page
    script sees the body."""

    def send_head(self):
        path = self.translate_path(self.path)
        if not path.endswith(".json.gz") or not os.path.isfile(path):
            return super().send_head()
        with open(path, "rb") as f:
            body = f.read()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)


def heatmap_pixels(browser, url: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The canvases of a prompt page's heatmaps, the first one's after choosing its last head,
    and the response headers of the head files it fetched."""
    w = Watched(browser)
    heads: dict[str, dict[str, str]] = {}
    w.page.on("response", lambda r: heads.update({r.url: r.headers}) if ".json.gz" in r.url
              else None)
    try:
        w.page.goto(url, wait_until="load")
        charts = w.page.locator(".atlas-attention .atlas-chart")
        w.page.wait_for_function(
            "() => [...document.querySelectorAll('.atlas-attention .atlas-chart')].every("
            "(el) => el.dataset.rendered === 'true' || el.classList.contains('atlas-error'))",
            timeout=CHART_TIMEOUT_MS)
        pixels = [canvas_pixels(charts.nth(i)) for i in range(charts.count())]
        box = w.page.locator(".atlas-attention").first
        last = str(box.locator(".atlas-head option").count() - 1)
        box.locator(".atlas-head").select_option(last)
        wait_redrawn(w.page, box.locator(".atlas-chart"), "head", last, w)
        pixels.append(canvas_pixels(box.locator(".atlas-chart")))
        assert not w.page.locator(".atlas-error").count(), \
            w.page.locator(".atlas-error").all_inner_texts()
        assert not w.errors, w.errors
        return pixels, heads
    finally:
        w.close()


def test_head_files_read_alike_gzipped_or_inflated_by_the_browser(browser, demo_build, site_url):
    """The site's head files are gzip streams: http.server (`model-atlas serve`) sends them as
    they are and the page inflates them; a host that labels them Content-Encoding: gzip has the
    browser inflate them first. Either way the heatmaps draw the same pixels, and so does the
    embed page's other head."""
    page = "prompts/basics/repeat.html"
    plain, plain_heads = heatmap_pixels(browser, site_url + page)
    with serve_directory(demo_build.site, EncodingHost) as url:
        inflated, inflated_heads = heatmap_pixels(browser, url + page)
        assert inflated == plain
        assert len(set(plain)) == 3, "two models' heatmaps and another head: three drawings"
        assert len(plain_heads) == len(inflated_heads) == 3, (plain_heads, inflated_heads)
        assert all("content-encoding" not in h for h in plain_heads.values()), plain_heads
        assert all(h.get("content-encoding") == "gzip" for h in inflated_heads.values())
        w = Watched(browser)
        try:
            w.page.goto(url + f"embed/{QWEN}/basics/repeat/attention.html?layer=1&head=2",
                        wait_until="load")
            chart = w.page.locator("#atlas-chart")
            w.page.wait_for_function(
                "(el) => el.dataset.rendered === 'true' || el.classList.contains('atlas-error')",
                arg=chart.element_handle(), timeout=CHART_TIMEOUT_MS)
            assert chart.get_attribute("data-rendered") == "true", chart.inner_text()
            assert "layer 1, head 2" in chart.locator(".role-title-text").first.text_content()
            assert not w.errors, w.errors
        finally:
            w.close()


def test_a_head_file_that_fails_is_named_in_the_chart(watched, site_url):
    """A head file the host does not have, or one whose gzip stream is broken: the heatmap says
    it could not draw and names the file (by the URL the page holds, relative to it)."""
    page = watched.page
    broken = {}

    def route(r):
        path = urlparse(r.request.url).path
        if f"/{GPT2}/" in path:
            broken["missing"] = "../.." + path
            r.fulfill(status=404, body="not here")
        else:
            broken["damaged"] = "../.." + path
            r.fulfill(status=200, body=b"\x1f\x8b" + path.encode() * 20)
    page.route("**/*.json.gz", route)
    page.goto(site_url + "prompts/basics/repeat.html", wait_until="load")
    page.wait_for_function("() => document.querySelectorAll('.atlas-attention .atlas-error')"
                           ".length === 2", timeout=CHART_TIMEOUT_MS)
    said = {m: page.locator(f'.atlas-attention[data-model="{m}"] .atlas-error').inner_text()
            for m in (GPT2, QWEN)}
    assert said[GPT2] == f"Could not draw this chart: {broken['missing']}: HTTP 404", said
    assert said[QWEN].startswith(f"Could not draw this chart: {broken['damaged']}: "), said


def _scheme(page) -> str:
    return page.evaluate("document.body.dataset.mdColorScheme")


def _background(page, selector: str) -> tuple[int, ...]:
    css = page.eval_on_selector(selector, "(el) => getComputedStyle(el).backgroundColor")
    return tuple(int(float(x)) for x in re.findall(r"[\d.]+", css)[:3])


def _dark(rgb) -> bool:
    return sum(rgb) / 3 < 100


def test_dark_mode_toggle_switches_the_scheme(browser, site_url):
    """The header's toggle cycles light -> dark -> follow the system; the page and the token chips
    follow it, and the choice holds on the next page."""
    w = Watched(browser, color_scheme="light")
    try:
        page = w.page
        page.goto(site_url + "prompts/basics/repeat.html", wait_until="load")
        assert _scheme(page) == "default" and not _dark(_background(page, "body"))
        chip_light = page.eval_on_selector(".atlas-tok[style]",
                                           "(el) => getComputedStyle(el).backgroundColor")
        toggles = page.locator("form[data-md-component=palette] label.md-header__button")
        assert toggles.count() == 3, "light, dark and follow-the-system options expected"
        titles = [toggles.nth(i).get_attribute("title") for i in range(3)]
        assert any("dark" in t for t in titles) and any("system" in t for t in titles), titles

        def click_visible_toggle():
            page.locator("form[data-md-component=palette] label.md-header__button:not([hidden])"
                         ).click()

        # The first option follows the system (light here); the toggle goes on to light, dark.
        while _scheme(page) != "slate":
            click_visible_toggle()
            assert len(page.evaluate("[...document.querySelectorAll('input[name=__palette]')]"
                                     ".filter(i => i.checked)")) == 1
            page.wait_for_timeout(100)
        assert _dark(_background(page, "body")), "the dark scheme left the page light"
        chip_dark = page.eval_on_selector(".atlas-tok[style]",
                                          "(el) => getComputedStyle(el).backgroundColor")
        assert chip_dark != chip_light, "token chips did not follow the dark scheme"
        # Material remembers the choice: the next page opens dark.
        page.goto(site_url + "index.html", wait_until="load")
        assert _scheme(page) == "slate"
        assert not w.errors, w.errors
    finally:
        w.close()


def test_dark_system_setting_gives_a_dark_site(browser, site_url):
    w = Watched(browser, color_scheme="dark")
    try:
        w.page.goto(site_url + "index.html", wait_until="load")
        assert _scheme(w.page) == "slate" and _dark(_background(w.page, "body"))
    finally:
        w.close()


WORD_SPLITS = """() => {
    // Every run of letters in a table cell must sit on one line: "Agreeme nt" is a word cut in
    // two. (Lines may still break at spaces and hyphens.) A prompt's verbatim text (.atlas-text)
    // is exempt: a run like <script>alert(1)</script> has no space to break at, and wrapping it
    // beats a column as wide as the longest prompt.
    const cut = [];
    for (const cell of document.querySelectorAll('.md-content table td, .md-content table th')) {
        const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            if (node.parentElement.closest('.atlas-text')) continue;
            for (const m of node.data.matchAll(/\\p{L}{2,}/gu)) {
                const range = document.createRange();
                range.setStart(node, m.index);
                range.setEnd(node, m.index + m[0].length);
                const tops = new Set([...range.getClientRects()].map((r) => Math.round(r.top)));
                if (tops.size > 1) cut.push(m[0]);
            }
        }
    }
    return cut;
}"""


@pytest.mark.parametrize("width", [390, 1400])
@pytest.mark.parametrize("path", ["index.html", "sets/basics.html", "compare/tokenizers.html",
                                  "compare/architectures.html", "models/tiny-random-qwen2.html",
                                  "prompts/basics/repeat.html"])
def test_table_cells_do_not_cut_words(browser, site_url, path, width):
    w = Watched(browser, width=width)
    try:
        w.page.goto(site_url + path, wait_until="load")
        assert w.page.locator(".md-content table").count(), f"{path} has no table"
        cut = w.page.evaluate(WORD_SPLITS)
        assert not cut, f"{path} at {width} px cuts words in table cells: {cut[:10]}"
    finally:
        w.close()
# --- issue 10: attention you can follow, a lens you can read ------------------------------------

# 28 words: 66 GPT-2 tokens and 64 Qwen2.5 tokens, so with the 8 generated tokens the Qwen2
# heatmap has exactly the 72 tokens the issue asks about (and the GPT-2 one 74).
LONG_TEXT = ("Shopping list: flour, lentils, saffron, walnuts, yogurt, apples, bread, cheese, dates, "
             "eggs, figs, grapes, honey. Checked items: flour, lentils, saffron, walnuts, yogurt, "
             "apples, bread, cheese, dates, eggs, figs,")
LONG_PAGE = "prompts/long/list-64.html"
QWEN = "tiny-random-qwen2"
GPT2 = "tiny-random-gpt2"


@pytest.fixture(scope="module")
def long_url(scratch, demo_dirs):
    """A demo site of one 64-token prompt (its own small build: the shared subset has only short
    prompts, and other tests count the subset's pages)."""
    from conftest import run_demo_build, write_prompt_sets
    root = scratch("long-build")
    prompts = write_prompt_sets(root / "prompt-sets", {"long": {
        "title": "Long", "description": "One prompt of 64 tokens.",
        "prompts": [{"id": "list-64", "text": LONG_TEXT, "note": "A list copied."}]}})
    build = run_demo_build(root, demo_dirs, prompts)
    with serve_directory(build.site) as url:
        yield url


def wait_heatmaps(page, count: int = 2) -> None:
    page.wait_for_function(
        """(n) => document.querySelectorAll('.atlas-attention .atlas-chart[data-rendered="true"]')
                   .length === n || document.querySelector('.atlas-error')""",
        arg=count, timeout=CHART_TIMEOUT_MS)
    assert not page.locator(".atlas-error").count(), page.locator(".atlas-error").all_inner_texts()


LABEL_BOXES = """(box) => [".atlas-heat-queries", ".atlas-heat-keys"].map((axis) =>
    [...box.querySelectorAll(axis + " .atlas-heat-label")].map((el) => {
        const r = el.getBoundingClientRect();
        return {text: el.textContent, font: parseFloat(getComputedStyle(el).fontSize),
                x0: r.left, y0: r.top, x1: r.right, y1: r.bottom};
    }))"""


def overlaps(boxes: list[dict]) -> list[tuple[str, str]]:
    out = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            # Touching edges are fine; 0.5 px of rounding too.
            if min(a["x1"], b["x1"]) - max(a["x0"], b["x0"]) > 0.5 and \
               min(a["y1"], b["y1"]) - max(a["y0"], b["y0"]) > 0.5:
                out.append((a["text"], b["text"]))
    return out


def test_heatmap_shows_every_label_legibly_at_72_tokens(long_url, watched):
    page = watched.page
    page.goto(long_url + LONG_PAGE, wait_until="load")
    wait_heatmaps(page)
    for model, tokens in ((QWEN, 72), (GPT2, 74)):
        box = page.locator(f'.atlas-attention[data-model="{model}"]')
        data = page.evaluate("(u) => fetch(u).then((r) => r.json())",
                             box.get_attribute("data-src").replace(".labels.json", ".json"))
        assert len(data["tokens"]) == tokens, f"{model}: the prompt is not {tokens} tokens long"
        queries, keys = box.evaluate(LABEL_BOXES)
        for axis, labels in (("query", queries), ("key", keys)):
            assert [x["text"] for x in labels] == [t["label"] for t in data["tokens"]], \
                f"{model}: the {axis} axis does not show every token's label"
            small = [(x["text"], x["font"]) for x in labels if x["font"] < 10]
            assert not small, f"{model}: {axis} labels under 10 px: {small[:5]}"
            assert all(x["x1"] > x["x0"] and x["y1"] > x["y0"] for x in labels)
            clash = overlaps(labels)
            assert not clash, f"{model}: overlapping {axis} labels: {clash[:5]}"
        # The heatmap grows with the sequence and scrolls inside its own frame; the page does not.
        # A pattern this short has no overview: the frame holds it in a scroll or two.
        assert box.locator(".atlas-heat-over").count() == 0
        frame = box.locator(".atlas-heat-frame")
        assert frame.evaluate("(f) => f.scrollWidth > f.clientWidth + 100"), \
            f"{model}: 72 tokens fit the column only if the heatmap was shrunk"
        assert frame.evaluate("(f) => getComputedStyle(f).overflowX") == "auto"
        # The rule between the prompt and the generated tokens sits after the last prompt token.
        prompt_tokens = sum(1 for t in data["tokens"] if not t["generated"])
        cell = page.evaluate("AtlasHeatmap.CELL")
        rules = box.locator(".atlas-heat-rule")
        assert rules.count() == 2
        assert box.locator(".atlas-heat-rule-h").evaluate("(r) => r.style.top") == \
            f"{prompt_tokens * cell}px"
        assert box.locator(".atlas-heat-rule-v").evaluate("(r) => r.style.left") == \
            f"{prompt_tokens * cell}px"
        generated = box.locator(".atlas-heat-queries .atlas-heat-gen")
        assert generated.count() == tokens - prompt_tokens
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert not watched.errors, watched.errors


def test_hover_and_focus_highlight_row_column_and_shade_the_chips(long_url, watched):
    page = watched.page
    page.goto(long_url + LONG_PAGE, wait_until="load")
    wait_heatmaps(page)
    box = page.locator(f'.atlas-attention[data-model="{QWEN}"]')
    chips = page.locator(f'[data-tokens-of="{QWEN}"] .atlas-tok')
    cell = page.evaluate("AtlasHeatmap.CELL")
    layer = page.evaluate("(u) => AtlasCodec.fetchHead(u)",
                          box.get_attribute("data-attn").replace("{layer}", "0")
                          .replace("{head}", "0"))
    t = layer["length"]
    stored = dense_head(base64.b64decode(layer["data"]), t)          # layer 0, head 0

    def weight(q: int, k: int) -> float:
        return stored[q, k] / layer["scale"]

    def shown_weights() -> list[float]:
        return chips.evaluate_all("(cs) => cs.map((c) => Number(c.dataset.attn ?? -1))")

    def expect_token(i: int) -> None:
        assert box.get_attribute("data-active-query") == str(i)
        assert box.get_attribute("data-active-key") == str(i)
        row, col = box.locator(".atlas-heat-row"), box.locator(".atlas-heat-col")
        assert row.is_visible() and col.is_visible()
        assert row.evaluate("(r) => r.style.top") == f"{i * cell}px"
        assert col.evaluate("(c) => c.style.left") == f"{i * cell}px"
        assert box.locator(".atlas-heat-queries .atlas-heat-on").inner_text() == \
            box.locator(".atlas-heat-queries .atlas-heat-label").nth(i).inner_text()
        weights = shown_weights()
        # The chips carry token i's stored attention row (layer 0, head 0), nothing after i.
        assert all(w == 0 for w in weights[i + 1:]), weights[i + 1:]
        assert weights[:i + 1] == pytest.approx([weight(i, k) for k in range(i + 1)], abs=1e-4)
        assert sum(weights[:i + 1]) == pytest.approx(1, abs=(i + 1) / layer["scale"])
        strongest = max(range(i + 1), key=lambda j: weights[j])
        shade = chips.nth(strongest).evaluate("(c) => getComputedStyle(c).backgroundColor")
        assert shade.startswith("rgba(33, 113, 181"), shade
        assert chips.nth(i).evaluate("(c) => c.classList.contains('atlas-attn-src')")

    # Pointing at a query label.
    box.locator(".atlas-heat-queries .atlas-heat-label").nth(40).hover()
    expect_token(40)
    # Pointing at a key label.
    box.locator(".atlas-heat-keys .atlas-heat-label").nth(12).hover()
    expect_token(12)
    # Pointing at a chip in the Tokens section.
    chips.nth(30).hover()
    expect_token(30)
    # A cell: its row and its column, with a tooltip that names both tokens and the weight.
    canvas = box.locator(".atlas-heat-canvas")
    box.locator(".atlas-heat-frame").evaluate(
        "(f) => { f.scrollTop = 0; f.scrollLeft = 0; f.scrollIntoView({block: 'center'}); }")
    r = canvas.bounding_box()
    page.mouse.move(r["x"] + 3 * cell + cell / 2, r["y"] + 20 * cell + cell / 2)
    assert box.get_attribute("data-active-query") == "20"
    assert box.get_attribute("data-active-key") == "3"
    tip = box.locator(".atlas-heat-tip")
    assert tip.is_visible() and "→" in tip.inner_text()
    # Keyboard: focus a query label, then the arrow keys move along the axis.
    page.mouse.move(0, 0)
    box.locator(".atlas-heat-queries .atlas-heat-label").first.focus()
    expect_token(0)
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    expect_token(2)
    assert page.evaluate("document.activeElement.dataset.i") == "2"
    assert box.locator(".atlas-heat-queries .atlas-heat-label").nth(2).get_attribute(
        "tabindex") == "0"
    assert not watched.errors, watched.errors


def test_deep_link_opens_the_head_and_the_url_follows_the_selectors(long_url, watched):
    page = watched.page
    page.goto(long_url + LONG_PAGE + f"?model={QWEN}&layer=3&head=2", wait_until="load")
    wait_heatmaps(page)
    qwen = page.locator(f'.atlas-attention[data-model="{QWEN}"] .atlas-chart')
    gpt2 = page.locator(f'.atlas-attention[data-model="{GPT2}"] .atlas-chart')
    assert (qwen.get_attribute("data-layer"), qwen.get_attribute("data-head")) == ("3", "2")
    assert (gpt2.get_attribute("data-layer"), gpt2.get_attribute("data-head")) == ("0", "0")
    linked = canvas_pixels_of(qwen)
    box = page.locator(f'.atlas-attention[data-model="{GPT2}"]')
    box.locator(".atlas-head").select_option("1")
    wait_redrawn(page, gpt2, "head", "1", watched)
    assert page.url.endswith(f"?model={GPT2}&layer=0&head=1"), page.url
    box.locator(".atlas-layer").select_option("2")
    wait_redrawn(page, gpt2, "layer", "2", watched)
    assert page.url.endswith(f"?model={GPT2}&layer=2&head=1"), page.url
    # Reloading the followed URL shows the same head again; a plain load shows layer 0 head 0.
    page.goto(long_url + LONG_PAGE, wait_until="load")
    wait_heatmaps(page)
    assert canvas_pixels_of(qwen) != linked, "the deep link drew the default head"
    assert not watched.errors, watched.errors


def canvas_pixels_of(chart) -> str:
    return chart.locator("canvas.atlas-heat-canvas").evaluate("(c) => c.toDataURL()")


def test_head_atlas_links_open_that_layer_and_head(site_url, watched):
    page = watched.page
    page.goto(site_url + f"models/{QWEN}.html", wait_until="load")
    links = page.locator("table.atlas-table a[href*='prompts/']")
    assert links.count() > 0
    hrefs = links.evaluate_all("(ls) => ls.map((a) => a.getAttribute('href'))")
    assert all(f"?model={QWEN}&layer=" in h and "&head=" in h for h in hrefs), hrefs
    # Open a ranking's link to a head other than L0.H0 and check the heatmap shows it.
    target = next(h for h in hrefs if not h.endswith("layer=0&head=0"))
    layer, head = target.split("layer=")[1].split("&head=")
    page.locator(f"table.atlas-table a[href='{target}']").first.click()
    page.wait_for_load_state("load")
    wait_heatmaps(page)
    chart = page.locator(f'.atlas-attention[data-model="{QWEN}"] .atlas-chart')
    assert (chart.get_attribute("data-layer"), chart.get_attribute("data-head")) == (layer, head)
    # A bar of a head-atlas chart opens its head's clearest prompt at that layer and head.
    page.goto(site_url + f"models/{QWEN}.html", wait_until="load")
    assert "ranks the 16 heads" in page.inner_text("body")
    box = page.locator(".atlas-plain").first
    box.scroll_into_view_if_needed()
    page.wait_for_function("(b) => b.querySelector('.atlas-chart').dataset.rendered === 'true'",
                           arg=box.element_handle(), timeout=CHART_TIMEOUT_MS)
    bar = box.locator("svg.marks .mark-rect path").nth(1).bounding_box()
    page.mouse.click(bar["x"] + bar["width"] / 2, bar["y"] + bar["height"] / 2)
    page.wait_for_url("**/prompts/**", timeout=CHART_TIMEOUT_MS)
    match = re.search(rf"\?model={QWEN}&layer=(\d+)&head=(\d+)$", page.url)
    assert match, page.url
    wait_heatmaps(page)
    assert (chart.get_attribute("data-layer"), chart.get_attribute("data-head")) == match.groups()
    # Leaving the model page cancels the fetches of its charts that were still loading.
    errors = [e for e in watched.errors if "net::ERR_ABORTED" not in e]
    assert not errors, errors


def test_thumbnails_load_when_scrolled_to_and_open_their_head(long_url, watched):
    page = watched.page
    page.goto(long_url + LONG_PAGE, wait_until="load")
    wait_heatmaps(page)
    head_files = lambda: sorted({u.rsplit("/", 1)[1] for u in watched.requests
                                 if "/list-64/L" in u})
    thumb_files = lambda: [u for u in watched.requests if u.endswith(".thumbs.json")]
    assert head_files() == ["L0.H0.json.gz"], "the heatmaps fetch their head, nothing else"
    assert not thumb_files(), "thumbnails fetched before they were scrolled to"
    dims = {}
    for model in (QWEN, GPT2):
        holder = page.locator(f'.atlas-thumbs[data-model="{model}"]')
        layers, heads = int(holder.get_attribute("data-layers")), int(holder.get_attribute("data-heads"))
        dims[model] = layers, heads
        thumbs = holder.locator(".atlas-thumb")
        assert thumbs.count() == layers * heads
        holder.scroll_into_view_if_needed()
        page.wait_for_function(
            "(h) => [...h.querySelectorAll('.atlas-thumb')].every((b) => b.dataset.drawn)",
            arg=holder.element_handle(), timeout=CHART_TIMEOUT_MS)
        # Each thumbnail is drawn from its own head's pooled image (generator/overview.py): two
        # thumbnails look alike exactly where the file's images of their heads are alike (the
        # demo's Qwen2 has two planted previous-token heads in one key/value group), and the page
        # decodes the same levels as Python.
        content = page.evaluate("(u) => fetch(u).then((r) => r.json())",
                                holder.get_attribute("data-thumbs"))
        images = read_thumbnails(content)
        size = content["size"]
        decoded = page.evaluate("""([c, l, h]) => { const d = AtlasThumbs.decode(c, l, h), out = [];
            for (let i = 0; i < l; i++) for (let j = 0; j < h; j++) out.push(Array.from(d.at(i, j)));
            return out; }""", [content, layers, heads])
        assert np.allclose(np.array(decoded) / content["levels"],
                           images.reshape(layers * heads, size * size)), "JS and Python disagree"
        drawn = thumbs.evaluate_all("(bs) => bs.map((b) => b.querySelector('canvas').toDataURL())")
        same_drawn = [[i for i in range(len(drawn)) if drawn[i] == d] for d in drawn]
        flat = images.reshape(layers * heads, -1)
        same_file = [[i for i in range(len(flat)) if (flat[i] == f).all()] for f in flat]
        assert same_drawn == same_file, "thumbnails do not follow their heads' images"
        assert len(set(drawn)) > len(drawn) // 2, "most heads drew the same thumbnail"
        blank = thumbs.first.evaluate("""(b) => { const c = b.querySelector('canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }""")
        assert blank > 0
    # One small file per model, never the attention itself.
    assert len(set(thumb_files())) == 2 and head_files() == ["L0.H0.json.gz"], \
        (thumb_files(), head_files())
    layers, heads = dims[QWEN]
    # A click opens that head in the heatmap and the URL follows.
    target = page.locator(f'.atlas-thumbs[data-model="{QWEN}"] .atlas-thumb'
                          f'[data-layer="{layers - 1}"][data-head="{heads - 1}"]')
    target.click()
    chart = page.locator(f'.atlas-attention[data-model="{QWEN}"] .atlas-chart')
    wait_redrawn(page, chart, "layer", str(layers - 1), watched)
    assert chart.get_attribute("data-head") == str(heads - 1)
    assert page.url.endswith(f"?model={QWEN}&layer={layers - 1}&head={heads - 1}")
    assert target.evaluate("(b) => b.classList.contains('atlas-thumb-on')")
    # Keyboard: the grid is one tab stop, the arrows move, Enter opens.
    grid = page.locator(f'.atlas-thumbs[data-model="{QWEN}"] .atlas-thumb')
    assert grid.evaluate_all("(bs) => bs.filter((b) => b.tabIndex === 0).length") == 1
    first = grid.first
    first.focus()
    for key in ("ArrowDown", "ArrowRight", "ArrowRight", "Enter"):
        page.keyboard.press(key)
    wait_redrawn(page, chart, "layer", "1", watched)
    assert chart.get_attribute("data-head") == "2"
    assert not watched.errors, watched.errors


def test_dark_mode_rethemes_the_charts(long_url, watched):
    page = watched.page
    page.goto(long_url + LONG_PAGE, wait_until="load")
    wait_heatmaps(page)
    box = page.locator('[data-spec$="charts/surprisal.vl.json"]').first
    box.scroll_into_view_if_needed()
    chart = box.locator(".atlas-chart")
    page.wait_for_function("(c) => c.dataset.rendered === 'true'", arg=chart.element_handle(),
                           timeout=CHART_TIMEOUT_MS)
    vega_bg = lambda: chart.locator("svg.marks").evaluate("(s) => s.style.backgroundColor")
    heat = page.locator(f'.atlas-attention[data-model="{QWEN}"] .atlas-chart')
    heat_pixels = lambda: heat.locator("canvas.atlas-heat-canvas").evaluate(
        "(c) => c.toDataURL()")
    light_bg, light_heat = vega_bg(), heat_pixels()
    assert light_bg == "rgb(255, 255, 255)", light_bg
    page.evaluate("document.body.setAttribute('data-md-color-scheme', 'slate')")
    page.wait_for_function("(c) => c.dataset.theme === 'dark'", arg=chart.element_handle(),
                           timeout=CHART_TIMEOUT_MS)
    dark_bg = vega_bg()
    channels = [int(x) for x in dark_bg[4:-1].split(",")[:3]]
    assert max(channels) < 80, f"dark mode left the chart background at {dark_bg}"
    assert heat_pixels() != light_heat, "the heatmap kept its light colours in dark mode"
    page.evaluate("document.body.setAttribute('data-md-color-scheme', 'default')")
    page.wait_for_function("(c) => c.dataset.theme === 'light'", arg=chart.element_handle(),
                           timeout=CHART_TIMEOUT_MS)
    assert vega_bg() == light_bg
    assert not watched.errors, watched.errors


def test_logit_lens_is_legible_and_its_legend_and_tooltip_agree(long_url, watched):
    page = watched.page
    page.goto(long_url + LONG_PAGE, wait_until="load")
    box = page.locator('[data-spec$="charts/lens.vl.json"]').first
    box.scroll_into_view_if_needed()
    chart = box.locator(".atlas-chart")
    page.wait_for_function("(c) => c.dataset.rendered === 'true'", arg=chart.element_handle(),
                           timeout=CHART_TIMEOUT_MS)
    svg = chart.locator("svg.marks")
    # Drawn at its own size (not shrunk into the column), in its own frame that scrolls when
    # the chart is wider; it shows the window of positions the frame holds (issue 16), not all 72.
    assert svg.evaluate("(s) => Math.abs(s.getBoundingClientRect().width - s.width.baseVal.value)"
                        " < 1")
    frame = box   # the chart's own frame scrolls, not the page
    assert frame.evaluate("(f) => getComputedStyle(f).overflowX") == "auto"
    lo, hi = map(int, chart.get_attribute("data-window").split("-"))
    assert 8 <= hi - lo + 1 < 72, (lo, hi)
    assert frame.evaluate("(f) => f.scrollWidth <= f.clientWidth + 1"), "the window overflows"
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    sizes = svg.evaluate("""(s) => [...s.querySelectorAll('.role-mark text')].map(
        (t) => parseFloat(getComputedStyle(t).fontSize))""")
    assert sizes and min(sizes) >= 10, min(sizes)
    legend = svg.evaluate("(s) => [...s.querySelectorAll('.role-legend-title text')]"
                          ".map((t) => t.textContent)")
    assert legend == ["rank of the actual next token"], legend
    labels = svg.evaluate("(s) => [...s.querySelectorAll('.role-legend-label text')]"
                          ".map((t) => t.textContent)")
    assert labels[0] == "1", labels
    # Rank 1 is drawn dark (the caption says "dark purple = rank 1").
    caption = page.locator("h2#logit-lens + p").inner_text()
    assert "dark purple = rank 1" in caption
    gradient = svg.evaluate("""(s) => [...s.querySelectorAll('linearGradient stop')].map(
        (e) => e.getAttribute('stop-color'))""")

    def lum(colour: str) -> int:
        if colour.startswith("#"):
            return sum(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        return sum(int(float(x)) for x in re.findall(r"[\d.]+", colour)[:3])
    assert lum(gradient[0]) < lum(gradient[-1]), gradient
    # The tooltip writes small probabilities in readable notation, not 0.0000.
    r = svg.bounding_box()
    page.mouse.move(r["x"] + 120, r["y"] + 80)
    page.wait_for_function("() => document.querySelector('#vg-tooltip-element.visible')",
                           timeout=CHART_TIMEOUT_MS)
    tip = page.inner_text("#vg-tooltip-element")
    value = tip.split("p(actual next)")[1].split()[0]
    assert re.fullmatch(r"0\.\d{3}|1\.000|\d\.\de-\d+", value), value
    assert value != "0.000", tip
    assert not watched.errors, watched.errors


def test_embed_lens_does_not_scroll_the_window(long_url, watched):
    page = watched.page
    page.goto(long_url + f"embed/{QWEN}/long/list-64/lens.html", wait_until="load")
    page.wait_for_function("() => document.getElementById('atlas-chart').dataset.rendered",
                           timeout=CHART_TIMEOUT_MS)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert page.evaluate("(() => { const c = document.getElementById('atlas-chart');"
                         " return c.scrollWidth > c.clientWidth; })()"), \
        "the embedded lens should scroll in its frame"
    assert not watched.errors, watched.errors


AXIS_LABELS = """(svg) => [...svg.querySelectorAll('.role-axis')].map((axis) =>
    [...axis.querySelectorAll('.role-axis-label text')].filter((t) => t.textContent).map((t) => {
        const r = t.getBoundingClientRect();
        return {text: t.textContent, font: parseFloat(getComputedStyle(t).fontSize),
                x0: r.left, y0: r.top, x1: r.right, y1: r.bottom};
    }))"""


def test_head_atlas_axis_labels_are_legible_and_apart(site_url, watched):
    page = watched.page
    page.goto(site_url + f"models/{QWEN}.html", wait_until="load")
    render_all_charts(page)
    charts = page.locator('[data-spec*="charts/atlas-"] svg.marks')
    assert charts.count() >= 5
    for i in range(charts.count()):
        svg = charts.nth(i)
        # Drawn at its own size: a shrunk SVG shrinks its text.
        assert svg.evaluate("(s) => Math.abs(s.getBoundingClientRect().width - s.width.baseVal.value)"
                            " < 1")
        axes = [labels for labels in svg.evaluate(AXIS_LABELS) if labels]   # grid lines: none
        assert len(axes) == 2
        for labels in axes:
            assert labels
            small = [(x["text"], x["font"]) for x in labels if x["font"] < 10]
            assert not small, small
            clash = overlaps(labels)
            assert not clash, f"atlas chart {i}: labels overlap: {clash}"
    assert not watched.errors, watched.errors


def test_both_models_charts_share_their_scales(long_url, watched):
    """The two models' surprisal axes, entropy legends and lens legends read the same (the shared
    domains render computes), though the models' own maxima differ."""
    page = watched.page
    page.goto(long_url + LONG_PAGE, wait_until="load")

    def drawn(kind: str) -> list:
        charts = page.locator(f'[data-spec$="charts/{kind}.vl.json"] .atlas-chart')
        assert charts.count() == 2
        for i in range(2):
            charts.nth(i).scroll_into_view_if_needed()
            page.wait_for_function("(c) => c.dataset.rendered === 'true'",
                                   arg=charts.nth(i).element_handle(), timeout=CHART_TIMEOUT_MS)
        return [charts.nth(i).locator("svg.marks") for i in range(2)]

    def texts(svg, role: str) -> list[str]:
        return svg.evaluate(f"(s) => [...s.querySelectorAll('.{role} text')].map((t) => "
                            "t.textContent)")

    surprisal = drawn("surprisal")
    y_axes = [s.evaluate("""(s) => [...s.querySelectorAll('.role-axis')].map((a) =>
        [...a.querySelectorAll('.role-axis-label text')].map((t) => t.textContent))
        .filter((ls) => ls.length && ls.every((x) => /^[0-9.]+$/.test(x)))""") for s in surprisal]
    assert y_axes[0] and y_axes[0] == y_axes[1], y_axes
    for kind in ("heads", "lens"):
        legends = [texts(s, "role-legend-label") for s in drawn(kind)]
        assert legends[0] and legends[0] == legends[1], (kind, legends)
    assert not watched.errors, watched.errors


def test_heatmaps_draw_without_scrolling_and_before_the_vega_bundle(long_url, browser):
    """The heatmaps are a prompt page's main view: drawn at load even below the first screen (a
    short window here), and before the 900 KB Vega bundle is fetched (page budget)."""
    context = browser.new_context(viewport={"width": 1400, "height": 300})
    try:
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(long_url + LONG_PAGE, wait_until="load")
        tops = page.evaluate("[...document.querySelectorAll('.atlas-attention')]"
                             ".map((b) => b.getBoundingClientRect().top)")
        assert min(tops) > 300 + 400, "the heatmaps should start below the first screen here"
        wait_heatmaps(page)
        assert page.evaluate("window.scrollY") == 0
        fetched_before = page.evaluate("""() => {
            const first = performance.getEntriesByName('atlas-first-chart')[0].startTime;
            return performance.getEntriesByType('resource')
                .filter((r) => r.startTime <= first).map((r) => r.name); }""")
        assert not [u for u in fetched_before if u.endswith("vega-bundle.js")], fetched_before
        # The mark is the heatmap's (after a head's file came), and the token files, which the
        # views need only once a token is chosen, wait for it.
        head_done = page.evaluate("""() => performance.getEntriesByType('resource')
            .filter((r) => /\\/L\\d+\\.H\\d+\\.json\\.gz$/.test(r.name)).map((r) => r.responseEnd)""")
        first = page.evaluate("performance.getEntriesByName('atlas-first-chart')[0].startTime")
        assert head_done and min(head_done) <= first, (head_done, first)
        token_files = page.evaluate("""[...document.querySelectorAll('[data-tokens-of][data-tokens]')]
            .map((c) => new URL(c.dataset.tokens, location.href).href)""")
        assert token_files and not set(token_files) & set(fetched_before), fetched_before
        # The bundle still comes, for the Vega charts further down.
        page.wait_for_function("() => window.vegaEmbed !== undefined", timeout=CHART_TIMEOUT_MS)
        assert not errors, errors
    finally:
        context.close()


# --- issue 16: the attention of a 2,048-token prompt ----------------------------------------------

# Words that are one token each in both tokenizers: a list of 1,015 of them, then the same list
# again (an induction pattern over 1,000 tokens): 2,039 prompt tokens for Qwen2.5, and with the 8
# generated ones a 2,047-token pattern.
CONTEXT_WORDS = ("red blue green cat dog sun sea map key box cup hat pen car bus tree fish bird "
                 "milk rain snow wind book door road ship star moon gold iron salt").split()
CONTEXT_LIST = " ".join(CONTEXT_WORDS[(i * 7 + i * i // 3) % len(CONTEXT_WORDS)] for i in range(1015))
CONTEXT_TEXT = f"Memorize this list: {CONTEXT_LIST}. Again: {CONTEXT_LIST}"
CONTEXT_PAGE = "prompts/long2k/repeat-2048.html"


@pytest.fixture(scope="module")
def context_url(scratch, demo_dirs):
    """A demo site of one prompt of about 2,048 tokens (its own build)."""
    from conftest import run_demo_build, write_prompt_sets
    root = scratch("context-build")
    prompts = write_prompt_sets(root / "prompt-sets", {"long2k": {
        "title": "Long context", "description": "One prompt of about 2,048 tokens.",
        "prompts": [{"id": "repeat-2048", "text": CONTEXT_TEXT, "note": "A list repeated."}]}})
    build = run_demo_build(root, demo_dirs, prompts)
    with serve_directory(build.site) as url:
        yield url


def window_of(box) -> list[int]:
    """The heatmap's window: first query row, first key column, and the ends (exclusive)."""
    return [int(x) for x in box.get_attribute("data-window").split(",")]


CANVAS_STATS = """(c) => {
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data, seen = new Set();
    let drawn = 0;
    for (let i = 0; i < d.length; i += 4) {
        if (d[i + 3] === 0) continue;
        drawn++;
        seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    }
    return {width: c.width, height: c.height, drawn: drawn, colours: seen.size,
            cssWidth: c.getBoundingClientRect().width, cssHeight: c.getBoundingClientRect().height};
}"""

VISIBLE_LABELS = """(box) => {
    const f = box.querySelector(".atlas-heat-frame").getBoundingClientRect();
    return [".atlas-heat-queries", ".atlas-heat-keys"].map((axis) =>
        [...box.querySelectorAll(axis + " .atlas-heat-label")].map((el) => {
            const r = el.getBoundingClientRect();
            return {text: el.textContent, font: parseFloat(getComputedStyle(el).fontSize),
                    x0: r.left, y0: r.top, x1: r.right, y1: r.bottom};
        }).filter((r) => r.x1 > f.left && r.x0 < f.right && r.y1 > f.top && r.y0 < f.bottom));
}"""


@pytest.mark.parametrize("ratio,width", [(1, 1400), (2, 1400), (2, 390)])
def test_long_heatmap_draws_overview_and_detail(context_url, browser, ratio, width):
    """At 2,048 tokens: an overview of the whole pattern and a detail window, both drawn at a
    pixel ratio of 1 and of 2 (a canvas of T x 16 px per side was blank past Chromium's limits),
    neither canvas larger than what it shows; legible labels that do not overlap; no console error
    and no sideways scroll, on a phone too."""
    context = browser.new_context(viewport={"width": width, "height": 900},
                                  device_scale_factor=ratio)
    errors = []
    try:
        page = context.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(context_url + CONTEXT_PAGE, wait_until="load")
        wait_heatmaps(page)
        assert page.evaluate("window.devicePixelRatio") == ratio
        for model in (QWEN, GPT2):
            box = page.locator(f'.atlas-attention[data-model="{model}"]')
            box.scroll_into_view_if_needed()
            t = len(page.evaluate("(u) => fetch(u).then((r) => r.json())",
                                  box.get_attribute("data-src"))["labels"])
            assert t >= 2000, f"{model}: the prompt is only {t} tokens long"
            over = box.locator("canvas.atlas-heat-over-canvas").evaluate(CANVAS_STATS)
            side = over["cssWidth"]
            assert over["width"] == over["height"] == min(t, round(side * ratio)), over
            assert over["drawn"] > over["width"] * over["height"] * 0.4, f"{model}: overview blank"
            assert over["colours"] > 5, f"{model}: overview flat: {over}"
            detail = box.locator("canvas.atlas-heat-canvas").evaluate(CANVAS_STATS)
            frame = box.locator(".atlas-heat-frame").evaluate(
                "(f) => ({w: f.clientWidth, h: f.clientHeight})")
            assert detail["drawn"] > 0 and detail["colours"] > 3, f"{model}: detail blank"
            assert detail["width"] <= (frame["w"] + 16) * ratio, (detail, frame)
            assert detail["height"] <= (frame["h"] + 16) * ratio, (detail, frame)
            assert detail["width"] == round(detail["cssWidth"] * ratio), detail
            queries, keys = box.evaluate(VISIBLE_LABELS)
            for axis, labels in (("query", queries), ("key", keys)):
                assert len(labels) >= (5 if width < 500 else 15), f"{model}: {axis} labels hidden"
                small = [(x["text"], x["font"]) for x in labels if x["font"] < 10]
                assert not small, f"{model}: {axis} labels under 10 px: {small[:5]}"
                clash = overlaps(labels)
                assert not clash, f"{model}: overlapping {axis} labels: {clash[:5]}"
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), \
            f"the page scrolls sideways at {width} px"
        assert not errors, errors
    finally:
        context.close()


def test_long_heatmap_window_moves_by_keyboard_overview_and_token(context_url, watched):
    page = watched.page
    page.goto(context_url + CONTEXT_PAGE, wait_until="load")
    wait_heatmaps(page)
    box = page.locator(f'.atlas-attention[data-model="{QWEN}"]')
    canvas = box.locator("canvas.atlas-heat-canvas")
    over = box.locator(".atlas-heat-over-box")
    t = int(page.evaluate("(b) => b.atlasHeatmap.t", box.element_handle()))
    cell = page.evaluate("AtlasHeatmap.CELL")
    assert window_of(box)[:2] == [0, 0]
    assert "win=" not in page.url, "a page opened plainly writes no window"

    # Keyboard: the overview takes the focus; the arrows move the window down and right.
    over.focus()
    page.keyboard.press("ArrowDown")
    q0, k0, q1, k1 = window_of(box)
    assert q0 > 0 and k0 == 0
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert window_of(box)[0] == q0 and window_of(box)[1] > 0
    page.keyboard.press("End")
    q0, k0, q1, k1 = window_of(box)
    assert q1 == t and k1 == t, window_of(box)
    # The detail canvas follows the window, and a cell there answers the pointer.
    assert canvas.get_attribute("data-window") == box.get_attribute("data-window")
    stats = canvas.evaluate(CANVAS_STATS)
    # Its cells on and below the diagonal: about half the window, less the gaps between cells.
    assert stats["drawn"] > 0.3 * stats["width"] * stats["height"], stats
    box.locator(".atlas-heat-frame").evaluate("(f) => f.scrollIntoView({block: 'center'})")
    plot = box.locator(".atlas-heat-plot").bounding_box()
    q, k = q1 - 3, k0 + 2
    page.mouse.move(plot["x"] + k * cell + cell / 2, plot["y"] + q * cell + cell / 2)
    assert (box.get_attribute("data-active-query"), box.get_attribute("data-active-key")) == \
        (str(q), str(k))
    assert box.locator(".atlas-heat-tip").is_visible()
    # The address carries the window, with the model, layer and head it belongs to.
    page.wait_for_function("(w) => new URLSearchParams(location.search).get('win') === w", arg=f"{q0},{k0}",
                           timeout=CHART_TIMEOUT_MS)
    assert f"model={QWEN}" in page.url and "layer=0" in page.url and "head=0" in page.url

    # A click on the overview centres the window there.
    over.evaluate("(o) => o.scrollIntoView({block: 'center'})")
    r = over.bounding_box()
    page.mouse.click(r["x"] + r["width"] * 0.5, r["y"] + r["height"] * 0.75)
    q0, k0, q1, k1 = window_of(box)
    assert q0 <= 0.75 * t < q1 and k0 <= 0.5 * t < k1, (window_of(box), t)

    # Choosing a token elsewhere on the page ("atlas:position") brings its row into the window.
    page.evaluate("""document.dispatchEvent(new CustomEvent("atlas:position",
                     {detail: {pos: 300, source: "test"}}))""")
    q0, k0, q1, k1 = window_of(box)
    assert q0 <= 300 < q1 and k0 <= 300 < k1, window_of(box)
    assert k1 - 300 <= 3, "the keys after the token (empty) fill the window"
    assert box.get_attribute("data-active-query") == "300"
    # Choosing a query row in the heatmap tells the page.
    page.evaluate("""window.chosen = [];
        document.addEventListener("atlas:position", (e) => window.chosen.push(e.detail))""")
    label = box.locator('.atlas-heat-queries .atlas-heat-label[data-i="305"]')
    label.click()
    assert page.evaluate("window.chosen") == [{"pos": 305, "source": "heatmap", "model": QWEN}]

    # The address opens the same window again.
    page.wait_for_function("(w) => new URLSearchParams(location.search).get('win') === w",
                           arg=",".join(map(str, window_of(box)[:2])), timeout=CHART_TIMEOUT_MS)
    shown = window_of(box)
    page.goto(page.url, wait_until="load")
    wait_heatmaps(page)
    assert window_of(box) == shown
    assert not watched.errors, watched.errors


def test_long_heatmap_switches_heads_with_one_file(context_url, watched):
    """Another head fetches that head's file and nothing else of the attention."""
    page = watched.page
    page.goto(context_url + CONTEXT_PAGE, wait_until="load")
    wait_heatmaps(page)
    attention = lambda: [u.rsplit("/", 1)[1] for u in watched.requests if "/repeat-2048/L" in u]
    assert sorted(attention()) == ["L0.H0.json.gz", "L0.H0.json.gz"]   # one per model
    box = page.locator(f'.atlas-attention[data-model="{QWEN}"]')
    chart = box.locator(".atlas-chart")
    before = canvas_pixels_of(chart)
    box.locator(".atlas-head").select_option("2")
    wait_redrawn(page, chart, "head", "2", watched)
    assert attention()[2:] == ["L0.H2.json.gz"]
    assert canvas_pixels_of(chart) != before
    assert not watched.errors, watched.errors
