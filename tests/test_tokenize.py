"""Tests of "Tokenize your own text" (issue 17; generator/tokenize_page.py, site_src/assets/tokenize.js).

- The vendored @huggingface/tokenizers is the pinned version's file (SHA-256), with its licence;
  render refuses another file.
- The browser's ids equal transformers' ids, for both tokenizers, on more than 5,000 texts
  (tests/tokenize_corpus.py), under Node.js in one process; a difference names the text, its
  category and the first differing token.
- The build saves each model's tokenizer, copies it into the site, and only the tokenize page and
  its embed fetch it; the page is linked from the home page, the navigation and compare/tokenizers.
- In headless Chromium: a sample of the corpus typed into the page gives the same ids chip by chip;
  the text goes into the address and back; hostile text shows as text (typed and in the URL); text
  over the limit gets a message; chips are reached by keyboard; axe-core (tests/vendor/) finds no
  serious or critical WCAG 2 A/AA violation; at 390 px nothing scrolls sideways; dark mode follows
  the site.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote, urlparse

import pytest

from conftest import REPO, HOSTILE_TEXT, serve_directory
from tokenize_corpus import corpus

from generator import layout, tokenize_page
from generator.errors import ArtifactError, AtlasError

NODE = shutil.which("node")
SLUGS = ("tiny-random-gpt2", "tiny-random-qwen2")
AXE = REPO / "tests" / "vendor" / "axe-core-4.14.1" / "axe.min.js"
AXE_SHA256 = "29348999450cdf2849a8e70b7912fc2da85a849da39c0d0d5394f51d4a9ed95c"
PAGE_TIMEOUT_MS = 60_000


def _tokenizers(demo_dirs):
    from transformers import AutoTokenizer
    # As the compute stage loads them (models.load_model): the checkpoints' own files.
    return {d.name: AutoTokenizer.from_pretrained(str(d), trust_remote_code=False)
            for d in demo_dirs}


@pytest.fixture(scope="module")
def toks(demo_dirs):
    """slug -> the demo model's transformers tokenizer, loaded once for this file."""
    return _tokenizers(demo_dirs)


def python_ids(tok, texts):
    return tok(list(texts), add_special_tokens=False)["input_ids"]


def first_difference(text, category, want, got, tok) -> str:
    k = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    name = lambda ids: (f"{ids[k]} {tok.convert_ids_to_tokens([ids[k]])[0]!r}"
                        if k < len(ids) else "(none: the list ends)")
    return (f"[{category}] {text!r}: first difference at token {k}: transformers {name(want)}, "
            f"browser {name(got)}")


# --- the vendored library ----------------------------------------------------------------------


def test_vendored_library_is_the_pinned_version():
    lib = tokenize_page.LIBRARY
    assert lib.version in lib.file and lib.package == "@huggingface/tokenizers"
    assert hashlib.sha256(lib.path.read_bytes()).hexdigest() == lib.sha256, \
        f"{lib.path} is not {lib.package} {lib.version}'s {lib.source}"
    licence = lib.licence_path.read_text(encoding="utf-8")
    assert "Apache License" in licence and "Version 2.0" in licence
    assert tokenize_page.checked_library() == lib.path
    # An ES module with no import of its own: nothing is fetched from elsewhere at view time.
    source = lib.path.read_text(encoding="utf-8")
    assert "export{" in source.replace(" ", "") and not re.search(r"\bimport\s*[\"'({]", source)


def test_render_refuses_another_file(monkeypatch, tmp_path):
    fake = tmp_path / tokenize_page.LIBRARY.file
    fake.write_text("export const Tokenizer = 1;\n")
    shutil.copy(tokenize_page.LIBRARY.licence_path, tmp_path / tokenize_page.LIBRARY.licence)
    monkeypatch.setattr(tokenize_page, "VENDOR_DIR", tmp_path)
    with pytest.raises(AtlasError, match=r"is not that of @huggingface/tokenizers 0\.2\.0.*npm pack"):
        tokenize_page.checked_library()


def test_axe_is_the_vendored_version():
    assert hashlib.sha256(AXE.read_bytes()).hexdigest() == AXE_SHA256
    assert "4.14.1" in AXE.read_text(encoding="utf-8")[:400]


def test_missing_tokenizer_names_the_fix(tmp_path):
    copied = []
    with pytest.raises(ArtifactError, match=r"no tokenizer saved for model m1.*model-atlas compute"):
        tokenize_page.copy_into_site(lambda src, rel: copied.append(rel),
                                     lambda rel, text: copied.append(rel), tmp_path, ["m1"])


# --- the browser's ids equal transformers' -----------------------------------------------------


def test_corpus_covers_the_issue():
    items = corpus()
    cats = {c.split(":")[0] for c, _ in items}
    assert len(items) >= 5000
    assert cats == {"prompt", "script", "emoji-combining-rtl", "code-whitespace", "number",
                    "hostile", "random-unicode"}
    assert len({c for c, _ in items if c.startswith("script:")}) >= 20
    assert any("\t" in t and "\r\n" in t for c, t in items if c == "code-whitespace")


def test_tokenizer_json_is_deterministic(demo_dirs, toks, tmp_path):
    first = {k: tokenize_page.tokenizer_json(t) for k, t in toks.items()}
    again = {k: tokenize_page.tokenizer_json(t) for k, t in _tokenizers(demo_dirs).items()}
    assert first == again, "two loads of one tokenizer serialize differently"
    saved = [tokenize_page.save_tokenizer(toks["tiny-random-gpt2"], tmp_path / d, "m").read_bytes()
             for d in ("a", "b")]
    assert saved[0] == saved[1], "the saved (gzipped) file differs between two saves"
    assert json.loads(first["tiny-random-gpt2"])["model"]["type"] == "BPE"


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed: it runs the browser's "
                                         "tokenizer outside a browser (Debian package 'nodejs').")
def test_browser_ids_equal_transformers(toks, tmp_path):
    items = corpus()
    texts = [t for _, t in items]
    job = {"tokenizers": {}, "texts": texts}
    for slug, tok in toks.items():
        saved = tokenize_page.save_tokenizer(tok, tmp_path, slug)   # what the site ships
        path = tmp_path / f"{slug}.json"
        path.write_text(tokenize_page.read_saved(saved), encoding="utf-8")
        job["tokenizers"][slug] = str(path)
    (tmp_path / "job.json").write_text(json.dumps(job), encoding="utf-8")
    proc = subprocess.run([NODE, str(REPO / "tests" / "js" / "tokenize_ids.mjs"),
                           str(tokenize_page.LIBRARY.path), str(tmp_path / "job.json"),
                           str(tmp_path / "ids.json")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    browser = json.loads((tmp_path / "ids.json").read_text(encoding="utf-8"))
    assert set(browser) == set(SLUGS)
    for slug, tok in toks.items():
        want = python_ids(tok, texts)
        assert sum(map(len, want)) > 100_000
        diffs = [first_difference(text, cat, w, g, tok)
                 for (cat, text), w, g in zip(items, want, browser[slug]) if w != g]
        assert not diffs, f"{slug}: {len(diffs)} of {len(texts)} texts differ:\n" + \
            "\n".join(diffs[:20])


def test_first_difference_names_the_text_and_token(toks):
    tok = toks["tiny-random-gpt2"]
    message = first_difference("Hello world", "prompt", [15496, 995], [15496, 1002], tok)
    assert "'Hello world'" in message and "token 1" in message and "995" in message


# --- the build -----------------------------------------------------------------------------------


def test_build_ships_the_tokenizers_to_the_page_alone(demo_build):
    site, root = demo_build.site, demo_build.root
    for slug in SLUGS:
        saved = layout.tokenizer_artifact(root / "artifacts", slug)
        shipped = site / layout.tokenizer_file(slug)
        assert shipped.read_text(encoding="utf-8") == tokenize_page.read_saved(saved)
        assert not saved.name.endswith(".json"), "the artifacts' *.json are artifacts alone"
    assert (site / layout.TOKENIZERS_LIB).read_bytes() == tokenize_page.LIBRARY.path.read_bytes()
    assert (site / layout.TOKENIZERS_LICENSE).is_file()
    pages = {layout.served(layout.TOKENIZE_PAGE), layout.TOKENIZE_EMBED}
    for html in site.rglob("*.html"):
        rel = html.relative_to(site).as_posix()
        text = html.read_text(encoding="utf-8")
        if rel not in pages:   # no attribute (src, href, data-*) names a tokenizer or its script
            assert not re.search(r'="[^"]*(?:tokenizer\.json|tokenize\.js|tokenize-worker\.js)"',
                                 text), rel
    for page in (layout.HOME, layout.TOKENIZERS_PAGE, layout.prompt_page("basics/hello")):
        html = (site / layout.served(page)).read_text(encoding="utf-8")
        link = layout.Urls(page).tokenize_page()
        assert f'href="{link}"' in html, f"{page} does not link to the tokenize page"


# --- in Chromium -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site_url(demo_build):
    with serve_directory(demo_build.site) as url:
        yield url


class Opened:
    """The tokenize page (or its embed) in a fresh context: errors, requests, dialogs recorded."""

    def __init__(self, browser, url, width=1400, color_scheme="light"):
        self.context = browser.new_context(viewport={"width": width, "height": 900},
                                           color_scheme=color_scheme)
        self.page = self.context.new_page()
        self.errors, self.requests, self.dialogs = [], [], []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.goto(url)
        self.settled()

    def settled(self):
        self.page.wait_for_function(
            "() => { const r = document.querySelector('.atlas-tokenize');"
            " return r.getAttribute('aria-busy') === 'false' && r.dataset.shown === r.dataset.seq; }",
            timeout=PAGE_TIMEOUT_MS)

    def type(self, text):
        self.page.fill(".atlas-tokenize-text", text)
        self.settled()

    def ids(self, slug):
        return self.page.evaluate(
            "(s) => Array.from(document.querySelectorAll(`[data-tokens-of='${s}'] [data-id]`),"
            " e => Number(e.dataset.id))", slug)

    def close(self):
        self.context.close()


@pytest.fixture()
def opened(browser, site_url):
    o = Opened(browser, site_url + layout.served(layout.TOKENIZE_PAGE))
    yield o
    o.close()


@pytest.mark.browser
def test_page_tokenizes_a_sample_like_python(opened, toks):
    items = corpus()
    rng = random.Random(5)
    by_cat: dict[str, list[tuple[str, str]]] = {}
    for c, t in items:
        by_cat.setdefault(c.split(":")[0], []).append((c, t))
    sample = [x for group in by_cat.values() for x in rng.sample(group, min(6, len(group)))]
    sample = [(c, t) for c, t in sample if t.strip()]   # a box of blanks is still text, but
    for cat, text in sample:                              # fill() of "" is tested below
        opened.type(text)
        for slug in SLUGS:
            want = python_ids(toks[slug], [opened.page.input_value(".atlas-tokenize-text")])[0]
            got = opened.ids(slug)
            assert got == want, first_difference(text, cat, want, got, toks[slug])
    opened.type("")
    assert opened.ids(SLUGS[0]) == []
    assert not opened.errors and not opened.dialogs


@pytest.mark.browser
def test_default_view_counts_boundaries_and_keyboard(opened, toks):
    page = opened.page
    text = page.input_value(".atlas-tokenize-text")
    for slug in SLUGS:
        col = page.locator(f"[data-tokens-of='{slug}']")
        n = len(python_ids(toks[slug], [text])[0])
        assert col.locator("[data-count='tokens']").inner_text() == str(n)
        assert col.locator(".atlas-char").count() > 0, "byte pieces are grouped under characters"
        assert "␣" in col.locator(".atlas-tokens").inner_text()
    assert re.search(r"\d+ of the \d+ places", page.inner_text(".atlas-boundaries-summary"))
    assert page.locator(".atlas-boundaries .atlas-cut-all").count() > 0
    # Keyboard: the first chip is a tab stop, the arrow keys move along; its id and bytes show.
    first = page.locator(f"[data-tokens-of='{SLUGS[0]}'] .atlas-tok").first
    first.focus()
    page.keyboard.press("ArrowRight")
    focused = page.evaluate(
        "() => Array.prototype.indexOf.call(document.activeElement.parentElement.closest("
        "'.atlas-tokens').querySelectorAll('.atlas-tok'), document.activeElement)")
    assert focused == 1
    detail = page.locator(f"[data-tokens-of='{SLUGS[0]}'] .atlas-tokenize-detail").inner_text()
    assert re.search(r"token #1 · id \d+ · bytes [0-9a-f ]+", detail), detail
    label = page.evaluate("document.activeElement.getAttribute('aria-label')")
    assert "id " in label and "bytes" in label
    assert page.get_by_label("Your text").count() == 1


@pytest.mark.browser
def test_text_goes_into_the_address_and_back(opened, browser, site_url):
    opened.type("Über 42 cats\tand\r\nदुनिया")
    url = opened.page.url
    assert "text=" in url
    again = Opened(browser, url)
    try:
        assert again.page.input_value(".atlas-tokenize-text") == "Über 42 cats\tand\r\nदुनिया" \
            or again.page.input_value(".atlas-tokenize-text") == "Über 42 cats\tand\nदुनिया"
        for slug in SLUGS:
            assert again.ids(slug) == opened.ids(slug)
        embed = opened.page.get_attribute(".atlas-tokenize-embed", "href")
        assert "text=" in embed and layout.TOKENIZE_EMBED.split("/")[-1] in embed
    finally:
        again.close()


@pytest.mark.browser
@pytest.mark.parametrize("hostile", [HOSTILE_TEXT, '"><img src=x onerror=alert(1)>',
                                     "</textarea><script>alert(2)</script>",
                                     "[x](javascript:alert(3)) {{ 7*7 }}"])
def test_hostile_text_shows_as_text(browser, site_url, hostile):
    url = site_url + layout.served(layout.TOKENIZE_PAGE) + "?text=" + quote(hostile)
    o = Opened(browser, url)
    try:
        page = o.page
        count = "document.querySelectorAll('script, img, iframe').length"
        before = page.evaluate(count)
        assert page.input_value(".atlas-tokenize-text") == hostile
        o.type(hostile + " <b>bold</b>")
        assert page.evaluate(count) == before
        assert page.locator(".atlas-tokenize b, .atlas-tokenize img").count() == 0
        joined = page.locator(f"[data-tokens-of='{SLUGS[0]}'] .atlas-tokens").inner_text()
        assert "<b>bold</b>" in joined.replace("\n", "").replace("␣", " ")
        assert not o.dialogs and not o.errors
    finally:
        o.close()


@pytest.mark.browser
def test_text_over_the_limit_gets_a_message(browser, site_url):
    long = "word " * (tokenize_page.MAX_CHARS // 5 + 100)
    o = Opened(browser, site_url + layout.served(layout.TOKENIZE_PAGE) + "?text=" + quote(long))
    try:
        status = o.page.inner_text(".atlas-tokenize-status")
        assert "at most 20,000 characters" in status
        assert len(o.page.input_value(".atlas-tokenize-text")) == tokenize_page.MAX_CHARS
        assert o.page.evaluate("1 + 1") == 2   # the tab answers
    finally:
        o.close()


def _axe(page) -> list[dict]:
    page.add_script_tag(content=AXE.read_text(encoding="utf-8"))
    result = page.evaluate("""async () => {
        const r = await axe.run(document, {runOnly: {type: 'tag', values:
            ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}});
        return r.violations.map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.length,
                                       target: v.nodes.slice(0, 3).map(n => n.target.join(' '))}));
    }""")
    return [v for v in result if v["impact"] in ("serious", "critical")]


@pytest.mark.browser
@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("which", ["page", "embed"])
def test_axe_finds_no_serious_violation(browser, site_url, scheme, which):
    rel = layout.served(layout.TOKENIZE_PAGE) if which == "page" else layout.TOKENIZE_EMBED
    o = Opened(browser, site_url + rel, color_scheme=scheme)
    try:
        bad = _axe(o.page)
        assert not bad, f"axe-core on {rel} ({scheme}): {bad}"
    finally:
        o.close()


@pytest.mark.browser
@pytest.mark.parametrize("which", ["page", "embed"])
def test_phone_width_and_dark_mode(browser, site_url, which):
    rel = layout.served(layout.TOKENIZE_PAGE) if which == "page" else layout.TOKENIZE_EMBED
    for scheme in ("light", "dark"):
        o = Opened(browser, site_url + rel, width=390, color_scheme=scheme)
        try:
            page = o.page
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), \
                f"{rel} scrolls sideways at 390 px ({scheme})"
            bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
            rgb = [int(x) for x in re.findall(r"\d+", bg)[:3]]
            assert (sum(rgb) < 200) == (scheme == "dark"), f"{rel} {scheme}: background {bg}"
        finally:
            o.close()


@pytest.mark.browser
def test_nothing_from_elsewhere_and_other_pages_fetch_no_tokenizer(opened, browser, site_url):
    foreign = [u for u in opened.requests
               if urlparse(u).scheme not in ("data", "blob") and urlparse(u).hostname != "127.0.0.1"]
    assert not foreign
    assert sum("tokenizer.json" in u for u in opened.requests) == len(SLUGS)
    home = Opened.__new__(Opened)
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        seen = []
        page.on("request", lambda r: seen.append(r.url))
        page.goto(site_url + layout.served(layout.HOME))
        page.wait_for_load_state("networkidle")
        assert not [u for u in seen if "tokenizer" in u.rsplit("/", 1)[-1]]
    finally:
        ctx.close()
