"""Security: hostile prompt text goes through the whole build and shows literally, never as markup,
template code or script; model ids are validated before use; remote code is never trusted.

A prompt set of hostile strings (HTML and script injection, Markdown link injection, Jinja syntax,
bidirectional overrides, zero-width and combining characters, emoji sequences) is built with the
offline demo, served on 127.0.0.1 and opened in headless Chromium (/usr/bin/chromium; the browser
tests are skipped with the reason where it is absent). The built files are checked as text too.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from generator.cli import main

from conftest import REPO, serve_directory, write_prompt_sets

SET_ID = "hostile"
SET_TITLE = "Hostile <b>set</b> {{ 7*7 }}"
SET_DESCRIPTION = "<script>alert(4)</script> [x](javascript:alert(5)) {% if true %}yes{% endif %}"
PROMPTS = {  # id: (text, note)
    "script": ("<script>alert(1)</script>", "<img src=x onerror=alert(2)>"),
    "img": ("<img src=x onerror=alert(1)>", "[note](javascript:alert(3))"),
    "md-link": ("[click](javascript:alert(1))", "{{ 7*7 }}"),
    "md-inject": ('](http://evil.example) <a href="javascript:alert(1)">x</a>',
                  "<a href=\"javascript:alert(6)\">n</a>"),
    "jinja": ("{{ 7*7 }} and {% raw %}x{% endraw %}", "{% raw %}{{ x }}{% endraw %}"),
    "unicode": ("abc\u202edef zero\u200bwidth e\u0301 "
                "\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 \U0001F1EB\U0001F1F7",
                "right-to-left override, zero-width space, combining accent, ZWJ family, flag"),
}
# Prompts whose text is plain ASCII without spaces lost to tokenization: their tokens, joined,
# give the text back (a space shows as the visible "␣").
JOINABLE = ("script", "img", "md-link", "md-inject", "jinja")
HOSTILE_FRAGMENTS = ("<script", "<img", "onerror", "javascript:", "alert", "evil.example", "{{",
                     "{%")
CHART_TIMEOUT_MS = 60_000


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# --- the hostile build -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory, demo_dirs) -> Path:
    root = tmp_path_factory.mktemp("hostile-build")
    prompts = write_prompt_sets(root / "prompts", {SET_ID: {
        "title": SET_TITLE, "description": SET_DESCRIPTION,
        "prompts": [{"id": pid, "text": text, "note": note}
                    for pid, (text, note) in PROMPTS.items()]}})
    loaded = (root / "prompts" / f"{SET_ID}.yaml").read_text(encoding="utf-8")
    assert "{{ 7*7 }}" in loaded
    build = root / "build"
    build.mkdir()
    (build / "demo-models").symlink_to(demo_dirs[0].parent, target_is_directory=True)
    result = invoke("build", "--demo", "--prompts", prompts, "--build-dir", build,
                    "--out", build / "site", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return build / "site"


def site_files(site: Path, *suffixes: str) -> list[Path]:
    return [p for p in sorted(site.rglob("*")) if p.is_file() and p.suffix in suffixes]


def _without_json_strings(text: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)


@pytest.mark.slow
def test_html_files_hold_the_hostile_text_only_escaped(hostile_site):
    pages = site_files(hostile_site, ".html")
    assert len(pages) > 10
    raw = ["<script>alert", "<img src=x", 'href="javascript:', "href='javascript:",
           "<b>set</b>"]
    for page in pages:
        html = page.read_text(encoding="utf-8")
        for fragment in raw:
            assert fragment not in html, f"{page.relative_to(hostile_site)}: raw {fragment!r}"
        assert not re.search(r"<a[^>]+href=[\"']?\s*javascript:", html, re.I), page
        assert not re.search(r"<[a-z][^>]*\sonerror\s*=", html, re.I), page
    prompt_page = (hostile_site / "prompts" / SET_ID / "script.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in prompt_page
    jinja_page = (hostile_site / "prompts" / SET_ID / "jinja.html").read_text(encoding="utf-8")
    assert "{{ 7*7 }} and {% raw %}x{% endraw %}" in jinja_page  # not evaluated: no 49, no x


@pytest.mark.slow
def test_json_files_hold_the_hostile_text_only_as_string_values(hostile_site):
    """Vega specs, data files, downloads, artifacts and the search index: outside JSON string
    literals there is only JSON punctuation, numbers, true, false and null."""
    files = site_files(hostile_site, ".json")
    assert any("data" in p.parts for p in files) and any("charts" in p.parts for p in files)
    for path in files:
        text = path.read_text(encoding="utf-8")
        json.loads(text)
        rest = _without_json_strings(text)
        assert re.fullmatch(r'[\s\[\]{}:,""0-9eE.+\-]*(?:(?:true|false|null)[\s\[\]{}:,""0-9eE.+\-]*)*',
                            rest), f"{path.relative_to(hostile_site)}: text outside JSON strings"
    for name in ("charts",):  # chart specs carry no data: no prompt text at all
        for spec in (hostile_site / name).glob("*.json"):
            text = spec.read_text(encoding="utf-8")
            assert not any(f in text for f in ("<script", "onerror", "javascript:")), spec


@pytest.mark.slow
@pytest.mark.parametrize("pid", list(PROMPTS))
def test_data_files_carry_the_exact_text(hostile_site, pid):
    text = PROMPTS[pid][0]
    for slug in ("tiny-random-gpt2", "tiny-random-qwen2"):
        artifact = json.loads((hostile_site / "artifacts" / slug / SET_ID / f"{pid}.json")
                              .read_text(encoding="utf-8"))
        assert artifact["prompt"]["text"] == text
        data = json.loads((hostile_site / "data" / slug / SET_ID / f"{pid}.json")
                          .read_text(encoding="utf-8"))
        shown = [t["text"] for t in data["tokens"] if not t["generated"]]
        if pid in JOINABLE:
            assert "".join(shown).replace("␣", " ") == text


# --- in the browser --------------------------------------------------------------------------




@pytest.fixture(scope="module")
def site_url(hostile_site):
    with serve_directory(hostile_site) as url:
        yield url




class Opened:
    """A page opened with a tall viewport (every chart draws), its dialogs and errors recorded."""

    def __init__(self, browser, url: str, height: int = 20000):
        self.context = browser.new_context(viewport={"width": 1400, "height": height})
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url)
        self.page.wait_for_load_state("load")

    def _dialog(self, dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def wait_for_charts(self) -> int:
        self.page.wait_for_function(
            "() => [...document.querySelectorAll('.atlas-chart')].every("
            "e => e.dataset.rendered === 'true' || e.classList.contains('atlas-error'))",
            timeout=CHART_TIMEOUT_MS)
        failed = self.page.eval_on_selector_all(".atlas-error", "els => els.map(e => e.textContent)")
        assert not failed, failed
        return self.page.eval_on_selector_all(".atlas-chart", "els => els.length")

    def assert_nothing_ran(self) -> None:
        page = self.page
        page.wait_for_timeout(200)  # let a late onerror fire, if any
        assert not self.dialogs, self.dialogs
        assert not self.errors, self.errors
        scripts = page.eval_on_selector_all(
            "script", "els => els.filter(e => e.textContent.includes('alert')).length")
        assert scripts == 0, "a <script> with 'alert' is in the page"
        handlers = page.evaluate(
            "() => [...document.querySelectorAll('*')].flatMap(e => [...e.attributes]"
            ".filter(a => a.name.startsWith('on')).map(a => e.tagName + ' ' + a.name))")
        assert not handlers, handlers
        assert page.eval_on_selector_all('[href^="javascript:" i], [src^="javascript:" i]',
                                         "els => els.length") == 0
        assert page.eval_on_selector_all('img[src="x"], a[href*="evil.example"]',
                                         "els => els.length") == 0

    def close(self) -> None:
        self.context.close()


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("pid", list(PROMPTS))
def test_prompt_page_shows_the_text_literally(browser, site_url, pid):
    text, note = PROMPTS[pid]
    opened = Opened(browser, f"{site_url}prompts/{SET_ID}/{pid}.html")
    try:
        charts = opened.wait_for_charts()
        assert charts >= 8
        page = opened.page
        assert page.inner_text(".atlas-prompt-text") == text
        assert page.text_content(".atlas-prompt-text") == text
        assert page.inner_text(".atlas-note").endswith(note)
        if "{{ 7*7 }}" in text:
            assert "49" not in page.inner_text(".atlas-prompt-text")
        # Chart labels are SVG text nodes: markup in a token is text there, never an element.
        labels = page.eval_on_selector_all(".atlas-chart svg text", "els => els.map(e => e.textContent)")
        assert labels, "no chart labels were drawn"
        assert page.eval_on_selector_all(
            ".atlas-chart svg foreignObject, .atlas-chart svg script, .atlas-chart svg image, "
            ".atlas-chart img", "els => els.length") == 0
        if text.startswith("<"):
            assert "0: <" in labels or "0: <img" in labels or "0: <script" in labels, labels[:20]
        opened.assert_nothing_ran()
    finally:
        opened.close()


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("pid", ["script", "img"])
def test_chart_tooltip_shows_markup_as_text(browser, site_url, pid):
    opened = Opened(browser, f"{site_url}prompts/{SET_ID}/{pid}.html", height=900)
    try:
        page = opened.page
        # The predictions chart (SVG; the attention heatmap is a canvas): its first bar is the
        # prediction after position 0, labelled with the "<" token.
        selector = '[data-spec$="charts/predictions.vl.json"] .atlas-chart'
        chart = page.locator(selector).first
        chart.scroll_into_view_if_needed()
        page.wait_for_function(
            f"() => document.querySelector('{selector}').dataset.rendered === 'true'",
            timeout=CHART_TIMEOUT_MS)
        cell = chart.locator("svg [role='graphics-symbol']").first
        cell.hover(position={"x": 2, "y": 2}, force=True)  # the corner: the text sits mid-cell
        tooltip = page.locator("#vg-tooltip-element")
        tooltip.wait_for(state="visible", timeout=10_000)
        assert "0: <" in tooltip.inner_text()
        html = tooltip.inner_html()
        assert "0: &lt;" in html and "<img" not in html and "<script" not in html
        opened.assert_nothing_ran()
    finally:
        opened.close()


@pytest.mark.browser
@pytest.mark.slow
def test_set_page_shows_title_texts_and_notes_literally(browser, site_url):
    opened = Opened(browser, f"{site_url}sets/{SET_ID}.html")
    try:
        page = opened.page
        assert page.inner_text("article h1") == SET_TITLE
        assert page.inner_text(".atlas-lead") == SET_DESCRIPTION
        texts = page.eval_on_selector_all(".atlas-prompts .atlas-text", "els => els.map(e => e.innerText)")
        assert texts == [text for text, _ in PROMPTS.values()]
        rows = page.eval_on_selector_all(".atlas-prompts tr", "rows => rows.slice(1).map("
                                         "r => r.lastElementChild.innerText)")
        assert rows == [note for _, note in PROMPTS.values()]
        assert "49" not in "".join(texts)
        nav = page.inner_text("nav.md-nav--primary")
        assert SET_TITLE in nav
        opened.assert_nothing_ran()
    finally:
        opened.close()


@pytest.mark.browser
@pytest.mark.slow
def test_tokenizer_page_shows_tokens_literally(browser, site_url):
    opened = Opened(browser, f"{site_url}compare/tokenizers.html")
    try:
        opened.wait_for_charts()
        page = opened.page
        blocks = page.eval_on_selector_all(
            # Each block links its prompt page (its text is the prompt's title, its href the key).
            ".atlas-differ", "els => els.map(e => [e.querySelector('a').getAttribute('href')"
            ".replace(/^.*prompts\\//, '').replace(/\\.html$/, ''), "
            "[...e.querySelectorAll('.atlas-col')].map(c => [...c.querySelectorAll('.atlas-tok')]"
            ".map(t => t.innerText).join(''))])")
        shown = {key: cols for key, cols in blocks}
        for pid in JOINABLE:
            for joined in shown[f"{SET_ID}/{pid}"]:
                assert joined.replace("␣", " ") == PROMPTS[pid][0]
        opened.assert_nothing_ran()
    finally:
        opened.close()


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("rel", ["index.html", "models/tiny-random-gpt2.html",
                                 "models/tiny-random-qwen2.html", "compare/architectures.html"])
def test_other_pages_run_nothing(browser, site_url, rel):
    opened = Opened(browser, site_url + rel)
    try:
        opened.wait_for_charts()
        opened.assert_nothing_ran()
        if rel == "index.html":
            assert SET_TITLE in opened.page.inner_text("article")
            assert SET_DESCRIPTION in opened.page.inner_text("article")
    finally:
        opened.close()


@pytest.mark.browser
@pytest.mark.slow
def test_embed_pages_run_nothing(browser, site_url, hostile_site):
    pages = sorted((hostile_site / "embed").rglob(f"{SET_ID}/script/*.html"))
    assert pages, "the build wrote no embed pages for the hostile prompt"
    for path in pages[:3]:
        opened = Opened(browser, site_url + path.relative_to(hostile_site).as_posix(), height=900)
        try:
            opened.page.wait_for_timeout(1500)
            opened.assert_nothing_ran()
        finally:
            opened.close()


@pytest.mark.browser
@pytest.mark.slow
def test_search_results_show_the_text_literally(browser, site_url):
    opened = Opened(browser, f"{site_url}index.html", height=900)
    try:
        page = opened.page
        page.keyboard.press("s")  # Material's shortcut to the search box
        page.locator("input.md-search__input").type("script", delay=20)
        page.wait_for_selector(".md-search-result__item", timeout=20_000)
        results = page.inner_text(".md-search-result")
        assert PROMPTS["script"][0] in results
        assert page.eval_on_selector_all(".md-search-result img, .md-search-result script",
                                         "els => els.length") == 0
        opened.assert_nothing_ran()
    finally:
        opened.close()


# --- the generator's own defences ------------------------------------------------------------


def test_autoescape_is_on_for_every_template():
    from generator.templating import environment
    env = environment()
    names = env.list_templates()
    assert "prompt.md.j2" in names and "set.md.j2" in names and "tokenizers.md.j2" in names
    for name in names:
        on = env.autoescape(name) if callable(env.autoescape) else env.autoescape
        assert on is True, f"autoescape is off for {name}"
    rendered = env.from_string("{{ x }}").render(x="<script>alert(1)</script>")
    assert rendered == "&lt;script&gt;alert(1)&lt;/script&gt;"


def test_templates_never_switch_escaping_off():
    for path in sorted((REPO / "templates").glob("*.j2")):
        source = path.read_text(encoding="utf-8")
        assert not re.search(r"\|\s*safe\b", source), f"{path.name} uses the safe filter"
        assert not re.search(r"autoescape\s+false", source, re.I), f"{path.name} turns escaping off"


@pytest.fixture()
def hub_calls(monkeypatch):
    import generator.models
    calls = []
    monkeypatch.setattr(generator.models, "_hub_reachable",
                        lambda *a, **k: calls.append(a) or False)
    return calls


@pytest.mark.parametrize("model", ["../../etc", "a b", "x;rm -rf /", "$(touch pwned)",
                                   "org/name/../../x", "gpt2\n", "gpt2\n--demo"])
def test_model_ids_are_validated_before_use(model, hub_calls, monkeypatch, tmp_path):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # ../../etc is then tmp_path/etc, which does not exist
    prompts = write_prompt_sets(tmp_path / "prompts", {"tiny": {
        "title": "T", "description": "D",
        "prompts": [{"id": "hello", "text": "Hello world", "note": "n"}]}})
    result = CliRunner().invoke(main, ["compute", "--model", model, "--prompts", str(prompts),
                                       "--build-dir", str(tmp_path / "build"), "--device", "cpu"])
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert "neither an existing directory nor a valid Hugging Face model id" in result.output, \
        result.output
    assert not hub_calls, "an invalid id must be refused before any network access"
    assert not list((tmp_path / "build").rglob("*.json"))
    assert sorted(p.name for p in work.iterdir()) == [] and not (tmp_path / "pwned").exists()


def _dict_literals_with_trust_false(tree: ast.AST) -> set[str]:
    """Names assigned a dict literal whose 'trust_remote_code' is the constant False."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for k, v in zip(node.value.keys, node.value.values):
                if (isinstance(k, ast.Constant) and k.value == "trust_remote_code"
                        and isinstance(v, ast.Constant) and v.value is False):
                    names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def test_trust_remote_code_is_never_enabled():
    """Every from_pretrained call in generator/ passes trust_remote_code=False (directly or in
    the **kwargs dict it spreads), and True appears nowhere."""
    checked = 0
    for path in sorted((REPO / "generator").rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        assert not re.search(r"""trust_remote_code["']?\s*[=:]\s*True""", source), path
        tree = ast.parse(source)
        safe_kwargs = _dict_literals_with_trust_false(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "from_pretrained"):
                continue
            checked += 1
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            direct = [k for k in node.keywords if k.arg == "trust_remote_code"]
            spread = [k for k in node.keywords if k.arg is None]
            if direct:
                value = direct[0].value
                assert isinstance(value, ast.Constant) and value.value is False, where
            else:
                assert any(isinstance(k.value, ast.Name) and k.value.id in safe_kwargs
                           for k in spread), f"{where}: from_pretrained without trust_remote_code=False"
    assert checked >= 4, "expected the from_pretrained calls of models.py and demo.py"
