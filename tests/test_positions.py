"""Positions on a long prompt page (issue 16): the token chips stay in a frame of their own, every
view indexed by position (predictions, lens, surprisal, attribution, the comparison table) shows a
window around one selected position, choosing a token anywhere selects it in every view and in the
URL, and a long page is at most twice as tall as a 72-token one. Also issue 18's first part as the
prompt page shows it: the attribution grid keeps every layer x head, and surprisal is shown with
the data's own 3 decimals. A demo site of its own (a long prompt and the 72-token one) opened in
headless Chromium; skipped (with the reason) where /usr/bin/chromium is absent."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import REPO, serve_directory

pytestmark = pytest.mark.browser

TIMEOUT_MS = 30_000
WINDOW = 24               # generator/pagedata.py POSITION_WINDOW
AGREEMENT_WINDOW = 12     # generator/render.py AGREEMENT_WINDOW
GPT2, QWEN = "tiny-random-gpt2", "tiny-random-qwen2"

# About 2,048 tokens (2,069 GPT-2 tokens, 1,990 Qwen2.5 tokens): a paragraph repeated, a list of
# words twice in the middle (something for an induction head to copy), the paragraph again.
PARAGRAPH = ("The river town kept its records in a stone house by the bridge. Every spring the "
             "clerk counted the boats, the bales of wool and the barrels of salted fish, and wrote "
             "the numbers in a ledger bound in green leather. ")
WORDS = ("amber basalt cedar delta ember fjord garnet harbor indigo juniper kestrel lagoon meadow "
         "nectar onyx pepper quartz russet saffron tundra ")
LONG_TEXT = (PARAGRAPH * 15 + "A list to remember: " + (WORDS * 8).strip() + ". The same list "
             "again: " + (WORDS * 8).strip() + ". " + PARAGRAPH * 15
             + "The clerk's ledger was bound in")
# The 72-token page of the heatmap tests (tests/test_browser.py LONG_TEXT).
SHORT_TEXT = ("Shopping list: flour, lentils, saffron, walnuts, yogurt, apples, bread, cheese, "
              "dates, eggs, figs, grapes, honey. Checked items: flour, lentils, saffron, walnuts, "
              "yogurt, apples, bread, cheese, dates, eggs, figs,")
LONG, SHORT = "prompts/long/ledger.html", "prompts/long/list-72.html"


@pytest.fixture(scope="module")
def long_site(scratch, demo_dirs):
    from conftest import run_demo_build, write_prompt_sets
    root = scratch("positions-build")
    prompts = write_prompt_sets(root / "prompt-sets", {"long": {
        "title": "Long", "description": "A long prompt and a 72-token one.",
        "prompts": [{"id": "ledger", "text": LONG_TEXT, "note": "A long page."},
                    {"id": "list-72", "text": SHORT_TEXT, "note": "72 tokens."}]}})
    build = run_demo_build(root, demo_dirs, prompts)
    with serve_directory(build.site) as url:
        yield build.site, url


def tokens_of(site: Path, slug: str, key: str = "long/ledger") -> list[dict]:
    return json.loads((site / f"data/{slug}/{key}.json").read_text("utf-8"))["tokens"]


class Reader:
    """A page at a width, with its console errors and page errors recorded."""

    def __init__(self, browser, width: int = 1400, scheme: str = "light"):
        self.context = browser.new_context(viewport={"width": width, "height": 900},
                                           color_scheme=scheme)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, url: str) -> None:
        self.page.goto(url, wait_until="load")

    def draw_all(self) -> None:
        """Scroll every chart into view, one at a time, and wait until each is drawn."""
        boxes = self.page.locator(".atlas-attention, .atlas-plain, .atlas-dla")
        for i in range(boxes.count()):
            boxes.nth(i).scroll_into_view_if_needed()
            self.page.wait_for_function(
                """(b) => { const el = b.querySelector('.atlas-chart');
                            return el.dataset.rendered === 'true'
                                   || el.classList.contains('atlas-error'); }""",
                arg=boxes.nth(i).element_handle(), timeout=TIMEOUT_MS)
        failed = self.page.locator(".atlas-error").all_inner_texts()
        assert not failed, failed

    def close(self) -> None:
        self.context.close()


@pytest.fixture()
def reader(browser):
    r = Reader(browser)
    yield r
    r.close()


def chart_of(page, kind: str, slug: str):
    return page.locator(f'[data-positions-of="{slug}"] [data-spec$="charts/{kind}.vl.json"] '
                        f'.atlas-chart')


def window_of(chart) -> tuple[int, int]:
    lo, hi = chart.get_attribute("data-window").split("-")
    return int(lo), int(hi)


def expect_views_at(page, slug: str, pos: int, length: int) -> None:
    """Every position-indexed view of `slug` shows a window around `pos` and outlines it."""
    for kind in ("predictions", "lens", "surprisal"):
        chart = chart_of(page, kind, slug)
        page.wait_for_function("([c, p]) => c.dataset.position === p",
                               arg=[chart.element_handle(), str(pos)], timeout=TIMEOUT_MS)
        lo, hi = window_of(chart)
        assert lo <= pos <= hi, (kind, slug, lo, hi, pos)
        assert hi - lo + 1 <= min(WINDOW, length), (kind, slug, lo, hi)
    # The predictions chart has one row per position of the window, the chosen one among them.
    labels = chart_of(page, "predictions", slug).locator("svg.marks").evaluate(
        """(s) => [...s.querySelectorAll('.role-axis-label text')].map((t) => t.textContent)
                  .filter((t) => /^\\d+: /.test(t))""")
    assert any(x.startswith(f"{pos}: ") for x in labels), labels
    assert len(labels) <= WINDOW, len(labels)
    # The chip is outlined and shows inside its frame.
    col = page.locator(f'[data-tokens-of="{slug}"]')
    chip = col.locator(".atlas-tok.atlas-pos-on")
    assert chip.count() == 1 and chip.get_attribute("data-i") == str(pos)
    frame = col.locator(".atlas-tokens-frame").bounding_box()
    box = chip.bounding_box()
    assert frame["y"] - 1 <= box["y"]
    assert box["y"] + box["height"] <= frame["y"] + frame["height"] + 1
    # The attribution shows that position.
    dla = page.locator(f'.atlas-dla[data-model="{slug}"]')
    page.wait_for_function("([c, p]) => c.dataset.position === p",
                           arg=[dla.locator(".atlas-chart").element_handle(), str(pos)],
                           timeout=TIMEOUT_MS)
    assert dla.locator(".atlas-dla-pos").input_value() == str(pos)
    assert dla.locator(".atlas-dla-pos option").count() <= WINDOW


def mapped(site: Path, pos: int) -> int:
    """The Qwen2 token that covers the end of GPT-2's token `pos` (atlas.js positionFor)."""
    gpt, qwen = tokens_of(site, GPT2), tokens_of(site, QWEN)
    end = gpt[pos]["end"]
    return next(j for j, t in enumerate(qwen) if not t["generated"] and t["end"] >= end)


def test_the_window_follows_a_token_chosen_anywhere(long_site, reader):
    site, url = long_site
    page = reader.page
    gpt, qwen = tokens_of(site, GPT2), tokens_of(site, QWEN)
    assert len(gpt) > 2000 and len(qwen) > 1950, "the long prompt is not about 2,048 tokens"
    reader.open(url + LONG)
    reader.draw_all()
    # At first: the last prompt token of each model.
    for slug, tokens in ((GPT2, gpt), (QWEN, qwen)):
        last = sum(1 for t in tokens if not t["generated"]) - 1
        expect_views_at(page, slug, last, len(tokens))

    # A chip of GPT-2's: every view of both models follows, and the URL names it.
    chip = page.locator(f'[data-tokens-of="{GPT2}"] .atlas-tok[data-i="100"]')
    chip.click()
    expect_views_at(page, GPT2, 100, len(gpt))
    expect_views_at(page, QWEN, mapped(site, 100), len(qwen))
    # (the heatmap adds the window it moved to: &win=Q0,K0)
    assert re.search(rf"\?model={GPT2}&layer=\d+&head=\d+&pos=100(&win=\d+,\d+)?$",
                     page.url), page.url
    # The comparison table shows its rows around that token's end (its rows load on the way).
    page.wait_for_function(
        "() => !document.querySelector('table.atlas-agreement').hasAttribute('data-part')",
        timeout=TIMEOUT_MS)
    rows = page.locator("table.atlas-agreement tr[data-char]:not([hidden])")
    chars = [int(c) for c in rows.evaluate_all("(rs) => rs.map((r) => r.dataset.char)")]
    assert 0 < len(chars) <= AGREEMENT_WINDOW
    assert chars[0] <= gpt[100]["end"] <= chars[-1], (chars, gpt[100]["end"])

    # The attribution's position list of Qwen2's: GPT-2's views follow.
    dla = page.locator(f'.atlas-dla[data-model="{QWEN}"] .atlas-dla-pos')
    options = dla.locator("option").evaluate_all("(os) => os.map((o) => o.value)")
    target = int(options[-1])
    dla.select_option(str(target))
    expect_views_at(page, QWEN, target, len(qwen))
    assert re.search(rf"&pos={target}(&win=\d+(,|%2C)\d+)?$", page.url) and f"model={QWEN}" in page.url

    # The keyboard: a focused chip, the arrow keys, Enter.
    chip = page.locator(f'[data-tokens-of="{GPT2}"] .atlas-tok[data-i="200"]')
    chip.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    expect_views_at(page, GPT2, 201, len(gpt))

    # A click on a row of the predictions chart (its label, on the y axis).
    chart = chart_of(page, "predictions", GPT2)
    chart.scroll_into_view_if_needed()
    lo, _ = window_of(chart)
    cell = chart.locator("svg.marks .mark-rect.role-mark path").first.bounding_box()
    page.mouse.click(cell["x"] + 3, cell["y"] + 3)
    expect_views_at(page, GPT2, lo, len(gpt))

    # The URL opens the page at a position.
    reader.open(url + LONG + f"?model={QWEN}&pos=150")
    reader.draw_all()
    expect_views_at(page, QWEN, 150, len(qwen))
    # Both heatmaps select that token: Qwen2's at 150, GPT-2's (drawn after it, the address
    # naming the other model) at its token that covers the same text.
    back = next(j for j, t in enumerate(gpt) if t["end"] >= qwen[150]["end"])
    for slug, q in ((QWEN, 150), (GPT2, back)):
        page.wait_for_function(
            "([s, q]) => (document.querySelector(`.atlas-attention[data-model='${s}']`)"
            "  || {dataset: {}}).dataset.activeQuery === q", arg=[slug, str(q)], timeout=TIMEOUT_MS)
    assert not reader.errors, reader.errors


def test_a_long_page_is_at_most_twice_as_tall_as_a_72_token_page(long_site, reader):
    site, url = long_site
    assert len(tokens_of(site, QWEN, "long/list-72")) == 72
    heights = {}
    for path in (SHORT, LONG):
        reader.open(url + path)
        reader.draw_all()
        reader.page.wait_for_timeout(300)
        heights[path] = reader.page.evaluate("document.documentElement.scrollHeight")
        # The chips stay within one screen, in their own frame.
        frames = reader.page.locator(".atlas-tokens-frame")
        for i in range(frames.count()):
            assert frames.nth(i).bounding_box()["height"] <= 900 / 2 + 8
    assert heights[LONG] <= 2 * heights[SHORT], heights
    assert not reader.errors, reader.errors


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_a_long_page_on_a_phone_does_not_scroll_sideways(long_site, browser, scheme):
    site, url = long_site
    r = Reader(browser, width=390, scheme=scheme)
    try:
        r.open(url + LONG)
        r.draw_all()
        r.page.evaluate("window.scrollTo(0, 0)")
        width, viewport = r.page.evaluate(
            "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert width <= viewport, f"{width} px wide at {viewport} px"
        assert not r.errors, r.errors
    finally:
        r.close()


def test_attribution_grid_keeps_every_layer_and_head(long_site, reader):
    """Issue 18: where only a few heads are among the largest contributors (full-size models: 16
    of 144 or 336), the grid must not shrink to their columns. The page's own chart spec drawn
    with the rows of such a position: one stored head of a 4 x 6 model."""
    site, url = long_site
    reader.open(url + LONG)
    reader.draw_all()
    axes = reader.page.evaluate("""async () => {
        const spec = await (await fetch('../../charts/dla.vl.json')).json();
        const rows = [];
        for (let l = 0; l < 4; l++) for (let h = 0; h < 6; h++) {
            const v = l === 2 && h === 4 ? 1.5 : null;
            rows.push({layer: l, head: h, name: 'L' + l + '.H' + h, value: v,
                       share: v === null ? null : 1});
        }
        spec.datasets = {dla: rows};
        const el = document.createElement('div');
        document.body.appendChild(el);
        await vegaEmbed(el, spec, {renderer: 'svg', actions: false});
        const axes = [...el.querySelectorAll('.role-axis')].map((a) =>
            [...a.querySelectorAll('.role-axis-label text')].map((t) => t.textContent));
        el.remove();
        return axes.filter((ls) => ls.length);
    }""")
    assert sorted(map(sorted, axes)) == [["0", "1", "2", "3"], ["0", "1", "2", "3", "4", "5"]], axes
    assert not reader.errors, reader.errors


def test_attribution_head_names_link_to_their_head_pages(long_site, reader):
    site, url = long_site
    reader.open(url + LONG)
    reader.draw_all()
    for slug in (GPT2, QWEN):
        links = reader.page.locator(f'.atlas-dla[data-model="{slug}"] .atlas-dla-list a')
        assert links.count() >= 1
        for i in range(links.count()):
            name, href = links.nth(i).inner_text(), links.nth(i).get_attribute("href")
            layer, head = name[1:].split(".H")
            assert href == f"../../heads/{slug}/L{layer}.H{head}.html", (name, href)


def test_chips_show_the_datas_surprisal_without_rounding_it_again(long_site, reader):
    """Issue 18: 31.7354 is stored as 31.735 and must not show as 31.73. A 72-token page writes the
    titles into its chips; a long page's compact chips get theirs from the page script."""
    site, url = long_site
    page = (site / SHORT).read_text("utf-8")
    for slug in (GPT2, QWEN):
        col = page.split(f'data-tokens-of="{slug}"')[1].split("</div>\n</div>")[0]
        shown = re.findall(r'data-i="(\d+)"[^>]*title="[^"]*surprisal ([\d.]+) bits', col)
        tokens = tokens_of(site, slug, "long/list-72")
        assert len(shown) == sum(1 for t in tokens if t["surprisal"] is not None)
        for i, value in shown:
            assert value == f"{tokens[int(i)]['surprisal']:.3f}", (slug, i, value)
    reader.open(url + LONG)
    for slug in (GPT2, QWEN):
        titles = reader.page.evaluate("""async (slug) => {
            await AtlasPage.getJSON(document.querySelector(
                '[data-tokens-of="' + slug + '"]').dataset.tokens);
            await new Promise((r) => setTimeout(r, 100));
            return [...document.querySelectorAll('[data-tokens-of="' + slug + '"] .atlas-tok')]
                .map((c) => { c.dispatchEvent(new MouseEvent('mouseover', {bubbles: true}));
                              return [c.dataset.i, c.title]; });
        }""", slug)
        tokens = tokens_of(site, slug)
        assert [int(i) for i, _ in titles] == list(range(len(tokens)))
        for (i, title), t in zip(titles, tokens):
            want = f"#{t['i']} · id {t['id']}" + (" · generated" if t["generated"] else "")
            if t["surprisal"] is not None:
                want += f" · surprisal {t['surprisal']:.3f} bits (rank {t['rank']})"
            assert title == want, (slug, i, title, want)
    assert not reader.errors, reader.errors


def test_a_long_pages_html_is_small_and_its_parts_load(long_site, reader):
    """Issue 16: the per-position bulk of a 2,048-token page (the comparison's aligned text and
    agreement rows) is in files of its own, loaded when the reader comes near; its chips are
    compact in the HTML and complete in the page (class, index, heat and text of every token)."""
    from generator.templating import surprisal_style
    site, url = long_site
    long_bytes = (site / LONG).stat().st_size
    short_bytes = (site / SHORT).stat().st_size
    assert long_bytes <= 200_000, f"{LONG}: {long_bytes} bytes of HTML"
    assert long_bytes <= 2 * short_bytes, (long_bytes, short_bytes)
    assert "data-part=" not in (site / SHORT).read_text("utf-8")
    reader.open(url + LONG)
    page = reader.page
    for slug in (GPT2, QWEN):
        chips = page.locator(f'[data-tokens-of="{slug}"] .atlas-tok').evaluate_all(
            """(cs) => cs.map((c) => [Number(c.dataset.i), c.textContent,
                                      c.style.getPropertyValue('--atlas-s').trim(),
                                      c.classList.contains('atlas-gen')])""")
        tokens = tokens_of(site, slug)
        assert [c[0] for c in chips] == list(range(len(tokens)))
        for (i, text, heat, gen), t in zip(chips, tokens):
            style = surprisal_style(t["surprisal"]).partition(": ")[2]
            assert (text, gen) == (t["text"], t["generated"]), (slug, i)
            assert (float(heat) if heat else None) == (float(style) if style else None), (slug, i)
    assert page.locator("[data-part]").count() == 2
    page.locator("table.atlas-agreement").scroll_into_view_if_needed()
    page.wait_for_function("() => !document.querySelector('[data-part]')", timeout=TIMEOUT_MS)
    assert page.locator(".atlas-aligned-row").count() == 2
    rows = page.locator("table.atlas-agreement tr[data-char]")
    assert rows.count() > 500
    assert 0 < page.locator("table.atlas-agreement tr[data-char]:not([hidden])").count() \
        <= AGREEMENT_WINDOW
    # A click on a segment of the aligned text selects that token.
    seg = page.locator(".atlas-aligned-row").nth(0).locator("[data-char]").nth(40)
    seg.scroll_into_view_if_needed()
    seg.click()
    page.wait_for_function("() => /[?&]pos=\\d+/.test(location.search)", timeout=TIMEOUT_MS)
    assert seg.evaluate("(s) => s.classList.contains('atlas-pos-on')")
    assert not reader.errors, reader.errors


def test_prompt_template_reads_like_the_page():
    """One element per line: no line of the prompt page's template over 140 characters."""
    for name in ("prompt.md.j2",):
        lines = (REPO / "templates" / name).read_text("utf-8").splitlines()
        long = [(n, len(line)) for n, line in enumerate(lines, 1) if len(line) > 140]
        assert not long, f"templates/{name}: lines over 140 characters: {long}"
