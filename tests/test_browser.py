"""Browser tests: the small demo site (the `demo_build` fixture) served on 127.0.0.1 and opened in
headless Chromium. Charts render, the layer/head selects redraw the heatmap, nothing is requested
from any other host, the console stays clean, and hostile prompt text shows literally without
running. Skipped (with the reason) where /usr/bin/chromium is absent."""

from __future__ import annotations

import re
from urllib.parse import urlparse

import pytest

from conftest import CJK_EMOJI_TEXT, HOSTILE_TEXT, serve_directory

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
    boxes = page.locator(".atlas-attention, .atlas-plain")
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


def canvas_pixels(chart) -> str:
    """The drawn pixels of a chart's Vega canvas, as a data URL."""
    return chart.locator("canvas.marks").evaluate("(c) => c.toDataURL()")


def canvas_colours(chart) -> int:
    """How many distinct colours a chart's Vega canvas shows."""
    return chart.locator("canvas.marks").evaluate("""(c) => {
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
        assert chart.locator("svg.marks, canvas.marks").count() == 1, f"chart {i} has no Vega view"
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
    assert chart.locator("canvas.marks").count() == 1, "the redraw added a second chart"
    assert not page.locator(".atlas-error").count()

    assert not watched.errors, watched.errors
    assert not watched.dialogs, watched.dialogs
    assert not watched.foreign_requests(), watched.foreign_requests()
    assert any(u.endswith("assets/vendor/vega-bundle.js") for u in watched.requests)
    assert any("/data/" in u and u.endswith(".json") for u in watched.requests)


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
    assert "random weights" in page.inner_text("body").lower()
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
