"""Tests of chart reuse (generator/export.py, the `export` command, the site's embed pages and
downloads): every format of every chart, data inlined and decoded exactly, files that open offline,
options that narrow and fail naming the valid values, and embed pages that render when served."""

from __future__ import annotations

import html.parser
import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import read_head_file, run_demo_build, serve_directory, write_prompt_sets
from generator import layout
from generator.cli import main
from generator.metrics import METRIC_DEFINITIONS
from generator.schema import decode_attention, read_artifact

GPT2, QWEN2 = "tiny-random-gpt2", "tiny-random-qwen2"
HOSTILE = "The cat sat. The cat </script><b>x</b>"
PROMPTS = {"tiny": {"title": "Tiny", "description": "Two short prompts for the export tests.",
                    "prompts": [{"id": "hello", "text": "Hello world", "note": "Two tokens."},
                                {"id": "repeat", "text": HOSTILE, "note": "A closing tag."}]}}
PROMPT_CHARTS = {GPT2: ["attention", "heads", "lens", "predictions", "surprisal"],
                 QWEN2: ["attention", "groups", "heads", "lens", "predictions", "surprisal"]}
SUFFIXES = (".html", ".vl.json", ".svg", ".png")
CHART_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def built(tmp_path_factory, demo_dirs) -> Path:
    """--build-dir of one `model-atlas build --demo` of one set of two short prompts."""
    root = tmp_path_factory.mktemp("export-build")
    prompts = write_prompt_sets(root.parent / f"{root.name}-prompts", PROMPTS)
    run_demo_build(root, demo_dirs, prompts)
    return root


def export(built: Path, out: Path, *args: str):
    return CliRunner().invoke(main, ["export", "--build-dir", str(built), "--out", str(out),
                                     *[str(a) for a in args]])


@pytest.fixture(scope="module")
def repeat_export(built, tmp_path_factory) -> Path:
    """Every chart of prompt tiny/repeat, in all four formats."""
    out = tmp_path_factory.mktemp("export-repeat")
    result = export(built, out, "--prompt", "tiny/repeat")
    assert result.exit_code == 0, result.output
    return out


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def spec_of(path: Path) -> dict:
    return json.loads(path.read_text("utf-8"))


def attention_head(built: Path, slug: str, key: str, layer: int, head: int) -> dict:
    return read_head_file(built / "docs" / layout.attention_head(slug, key, layer, head))


def expected_attention(built: Path, slug: str, key: str, layer: int, head: int) -> list[dict]:
    """One head of the compute stage's artifact, decoded by the one Python decoder
    (`schema.decode_attention`, itself checked against the written format in test_layout.py),
    labelled by the page's token rows."""
    tokens = json.loads((built / "docs" / "data" / slug / f"{key}.json").read_text("utf-8"))
    labels = [t["label"] for t in tokens["tokens"]]
    weights = decode_attention(read_artifact(built / "artifacts" / slug / f"{key}.json"), layer)
    t = weights.shape[-1]
    return [{"q": q, "k": k, "w": float(weights[head, q, k]), "ql": labels[q], "kl": labels[k]}
            for q in range(t) for k in range(q + 1)]


# --- the export command --------------------------------------------------------------------------


def test_export_writes_every_format_of_every_chart_of_a_prompt(repeat_export):
    expected = {f"{slug}/tiny/repeat/{chart}{suffix}" for slug, charts in PROMPT_CHARTS.items()
                for chart in charts for suffix in SUFFIXES}
    expected |= {f"compare/tiny/repeat/cumulative{suffix}" for suffix in SUFFIXES}
    assert files(repeat_export) == expected
    assert not [p for p in repeat_export.rglob(".*")], "temporary files left behind"


def test_json_spec_has_its_data_inline(built, repeat_export):
    for slug in PROMPT_CHARTS:
        spec = spec_of(repeat_export / slug / "tiny/repeat/attention.vl.json")
        t = attention_head(built, slug, "tiny/repeat", 0, 0)["length"]
        rows = spec["datasets"]["attention"]
        assert len(rows) == t * (t + 1) // 2
        assert rows == expected_attention(built, slug, "tiny/repeat", 0, 0)
        assert spec["data"] == {"name": "attention"}
        assert spec["title"]["text"] == f"{slug} · tiny/repeat · attention, layer 0, head 0"
        assert spec["title"]["subtitle"] == "constructed weights"
        data = json.loads((built / "docs/data" / slug / "tiny/repeat.json").read_text("utf-8"))
        predictions = spec_of(repeat_export / slug / "tiny/repeat/predictions.vl.json")
        assert predictions["datasets"] == {"predictions": data["predictions"]}
        surprisal = spec_of(repeat_export / slug / "tiny/repeat/surprisal.vl.json")
        assert surprisal["datasets"] == {"tokens": data["tokens"]}
    cumulative = spec_of(repeat_export / "compare/tiny/repeat/cumulative.vl.json")
    assert len(cumulative["datasets"]["cumulative"]) > 0
    assert cumulative["title"]["subtitle"] == "constructed weights"
    for path in repeat_export.rglob("*.vl.json"):
        text = path.read_text("utf-8")
        assert '"url"' not in text, f"{path}: data must be inline, not fetched"
        assert "href" not in json.dumps(spec_of(path)["encoding"] if "encoding" in spec_of(path)
                                        else {}), path


def test_svg_parses_and_png_is_a_png(repeat_export):
    svgs = sorted(repeat_export.rglob("*.svg"))
    assert len(svgs) == 12
    for path in svgs:
        root = ET.fromstring(path.read_bytes())
        assert root.tag.endswith("svg"), path
        assert "role-mark" in path.read_text("utf-8"), f"{path}: no marks drawn"
    attention = (repeat_export / GPT2 / "tiny/repeat/attention.svg").read_text("utf-8")
    assert "mark-rect" in attention and "constructed weights" in attention
    for path in repeat_export.rglob("*.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


class _Scripts(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.scripts: list[tuple[dict, str]] = []
        self._open: dict | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self._open = dict(attrs)
            self.scripts.append((self._open, ""))

    def handle_data(self, data):
        if self._open is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def handle_endtag(self, tag):
        if tag == "script":
            self._open = None


def test_html_is_self_contained_and_escapes_the_data(repeat_export):
    for path in repeat_export.rglob("*.html"):
        text = path.read_text("utf-8")
        assert not re.search(r"<script[^>]*\bsrc=", text), f"{path}: loads a script"
        assert not re.search(r"""src=["']?https?://""", text), path
        parser = _Scripts()
        parser.feed(text)
        assert len(parser.scripts) == 3, f"{path}: the token text broke out of its script"
        embedded = [s for a, s in parser.scripts if a.get("type") == "application/json"]
        assert json.loads(embedded[0]) == spec_of(path.with_name(
            path.name.replace(".html", ".vl.json")))
    assert "</script><b>" not in (repeat_export / GPT2 / "tiny/repeat/surprisal.html").read_text()


def test_layer_and_head_choose_the_attention_head(built, tmp_path):
    result = export(built, tmp_path, "--model", QWEN2, "--prompt", "tiny/hello", "--chart",
                    "attention", "--layer", "1", "--head", "2", "--format", "json")
    assert result.exit_code == 0, result.output
    assert files(tmp_path) == {f"{QWEN2}/tiny/hello/attention-L1-H2.vl.json"}
    spec = spec_of(tmp_path / QWEN2 / "tiny/hello/attention-L1-H2.vl.json")
    assert spec["datasets"]["attention"] == expected_attention(built, QWEN2, "tiny/hello", 1, 2)
    assert spec["title"]["text"].endswith("attention, layer 1, head 2")


@pytest.mark.parametrize("args, expected", [
    (["--model", GPT2, "--chart", "heads"],
     {f"{GPT2}/tiny/hello/heads.vl.json", f"{GPT2}/tiny/repeat/heads.vl.json"}),
    (["--prompt", "tiny", "--chart", "cumulative"],
     {"compare/tiny/hello/cumulative.vl.json", "compare/tiny/repeat/cumulative.vl.json"}),
    (["--chart", "tokenizers"], {"site/tokenizers.vl.json"}),
    (["--model", QWEN2, "--chart", "atlas-entropy"], {f"{QWEN2}/atlas-entropy.vl.json"}),
    (["--chart", "groups", "--prompt", "tiny/hello"], {f"{QWEN2}/tiny/hello/groups.vl.json"}),
])
def test_options_narrow_the_export(built, tmp_path, args, expected):
    result = export(built, tmp_path, *args, "--format", "json")
    assert result.exit_code == 0, result.output
    assert files(tmp_path) == expected


def test_export_of_everything_counts_every_chart(built, tmp_path):
    result = export(built, tmp_path, "--format", "json")
    assert result.exit_code == 0, result.output
    per_prompt = sum(len(c) for c in PROMPT_CHARTS.values()) + 1    # + cumulative
    per_model = len(METRIC_DEFINITIONS)                              # atlas-*
    assert len(files(tmp_path)) == 2 * per_prompt + 2 * per_model + 1   # + tokenizers
    assert f"{len(files(tmp_path))} charts" in result.output


@pytest.mark.parametrize("args, named", [
    (["--model", "gpt3"], ["--model gpt3", GPT2, QWEN2]),
    (["--prompt", "tiny/nope"], ["--prompt tiny/nope", "tiny/hello", "tiny/repeat"]),
    (["--chart", "pie"], ["--chart pie", "attention", "atlas-entropy", "tokenizers"]),
    (["--model", GPT2, "--chart", "attention", "--layer", "9"], ["--layer 9", "0 to 3"]),
    (["--model", QWEN2, "--head", "4"], ["--head 4", "0 to 3"]),
    (["--chart", "lens", "--layer", "1"], ["--layer", "--chart attention"]),
    (["--model", GPT2, "--chart", "groups"], ["grouped-query", QWEN2]),
    (["--model", GPT2, "--chart", "cumulative"], ["leave out --model"]),
    (["--format", "gif"], ["--format", "html", "png"]),
])
def test_bad_values_fail_naming_the_valid_ones(built, tmp_path, args, named):
    result = export(built, tmp_path, *args)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    for text in named:
        assert text in result.output, (text, result.output)
    assert not files(tmp_path), "nothing may be written when an option is wrong"


def test_export_without_a_build_says_to_build_first(tmp_path):
    result = export(tmp_path / "never-built", tmp_path / "out")
    assert result.exit_code != 0
    assert "model-atlas build" in result.output
    result = CliRunner().invoke(main, ["export", "--build-dir", str(tmp_path)])
    assert result.exit_code != 0 and "--out" in result.output


def test_export_python_api_returns_the_files(built, tmp_path):
    from generator.errors import OptionError
    from generator.export import export_charts
    lines: list[str] = []
    written = export_charts(built / "docs", tmp_path, model=GPT2, prompt="tiny/hello",
                            chart="surprisal", formats=("json", "svg"), log=lines.append)
    assert [p.relative_to(tmp_path).as_posix() for p in written] == [
        f"{GPT2}/tiny/hello/surprisal.vl.json", f"{GPT2}/tiny/hello/surprisal.svg"]
    assert lines and "1 charts" in lines[-1]
    with pytest.raises(OptionError, match="Valid values: tiny-random-gpt2, tiny-random-qwen2"):
        export_charts(built / "docs", tmp_path, model="nope")


# --- what export reads: the manifest render wrote, and artifacts, both checked ---------------------


@pytest.fixture()
def docs_copy(built, tmp_path) -> Path:
    """A copy of the built docs tree, to damage."""
    docs = tmp_path / "build" / "docs"
    shutil.copytree(built / "docs", docs)
    return docs


def test_the_manifest_lists_every_chart_of_the_site(built):
    manifest = json.loads((built / "docs" / layout.MANIFEST).read_text("utf-8"))
    assert [m["slug"] for m in manifest["models"]] == [GPT2, QWEN2]
    assert manifest["models"][1]["kv_heads"] < manifest["models"][1]["query_heads"]
    listed = {f"{c['scope']}/{c['stem']}" for c in manifest["charts"]}
    downloads = {p.relative_to(built / "docs" / "downloads").as_posix()[: -len(".vl.json")]
                 for p in (built / "docs" / "downloads").rglob("*.vl.json")}
    assert listed == downloads and len(listed) == len(manifest["charts"])
    for c in manifest["charts"]:
        assert (built / "docs" / c["data"]).is_file(), c
        assert (built / "docs" / c["page"]).is_file(), c
        if c["name"] == "attention":
            assert (built / "docs" / c["artifact"]).is_file(), c


@pytest.mark.parametrize("damage, message", [
    (lambda m: m["charts"][0].update(data="../../../etc/passwd"),
     "invalid field data of chart 0: '../../../etc/passwd' is not a path inside the docs tree"),
    (lambda m: m["charts"][3].update(scope="/tmp/elsewhere"),
     "invalid field scope, stem of chart 3"),
    (lambda m: m["models"][0].pop("layers"), "invalid field models/0: 'layers' is a required"),
    (lambda m: m.update(version=99), "invalid field version: 1 was expected"),
    (lambda m: m["charts"][0].update(model="gpt3"), "invalid field model of chart 0: 'gpt3'"),
])
def test_export_refuses_a_damaged_manifest(docs_copy, tmp_path, damage, message):
    path = docs_copy / layout.MANIFEST
    data = json.loads(path.read_text("utf-8"))
    damage(data)
    path.write_text(json.dumps(data), "utf-8")
    result = export(docs_copy.parent, tmp_path / "out", "--format", "json")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"{path}: {message}" in result.output, result.output
    assert "model-atlas render" in result.output
    assert not (tmp_path / "out").exists()


def test_export_refuses_an_unreadable_or_missing_manifest(docs_copy, tmp_path):
    path = docs_copy / layout.MANIFEST
    path.write_text('{"format": ', "utf-8")
    result = export(docs_copy.parent, tmp_path / "out")
    assert result.exit_code != 0 and f"{path}: cannot read it" in result.output, result.output
    path.unlink()
    result = export(docs_copy.parent, tmp_path / "out")
    assert result.exit_code != 0 and "model-atlas build" in result.output, result.output


def test_export_checks_the_artifact_it_decodes(docs_copy, tmp_path):
    """The attention chart is decoded from the artifact copy, read through schema.read_artifact:
    an attention file that does not match its JSON is refused, naming it."""
    attention = docs_copy / "artifacts" / GPT2 / "tiny" / "repeat.attention.bin"
    attention.write_bytes(bytes(reversed(attention.read_bytes())))
    result = export(docs_copy.parent, tmp_path / "out", "--model", GPT2, "--prompt", "tiny/repeat",
                    "--chart", "attention", "--format", "json")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"{attention}: " in result.output and "do not match" in result.output, result.output
    # Charts that do not decode attention still export.
    result = export(docs_copy.parent, tmp_path / "out", "--model", GPT2, "--prompt", "tiny/repeat",
                    "--chart", "surprisal", "--format", "json")
    assert result.exit_code == 0, result.output


# --- the site: downloads, embed pages, links -----------------------------------------------------


def test_site_has_a_download_and_an_embed_page_for_every_chart(built, repeat_export):
    site = built / "site"
    for slug, charts in PROMPT_CHARTS.items():
        for chart in charts:
            rel = f"{slug}/tiny/repeat/{chart}"
            assert (site / "embed" / f"{rel}.html").is_file(), rel
            # The site's download is the exported spec, byte for byte.
            assert (site / "downloads" / f"{rel}.vl.json").read_bytes() == \
                (repeat_export / f"{rel}.vl.json").read_bytes()
    for rel in ("compare/tiny/repeat/cumulative", f"{GPT2}/atlas-induction", "site/tokenizers"):
        assert (site / "embed" / f"{rel}.html").is_file(), rel
        assert (site / "downloads" / f"{rel}.vl.json").is_file(), rel
    embed = (site / "embed" / GPT2 / "tiny/repeat/attention.html").read_text("utf-8")
    assert 'src="../../../../assets/vendor/vega-bundle.js"' in embed
    assert "https://" not in embed and "http://" not in embed
    assert "atlas-random" in embed and "Constructed weights" in embed
    assert "</script><b>" not in embed


def test_every_chart_of_a_page_links_its_downloads(built):
    site = built / "site"
    page = site / "prompts" / "tiny" / "repeat.html"
    text = page.read_text("utf-8")
    lines = re.findall(r'<p class="atlas-small atlas-downloads">(.*?)</p>', text)
    charts = sum(len(c) for c in PROMPT_CHARTS.values()) + 1
    assert len(lines) == charts
    for line in lines:
        links = re.findall(r'href="([^"]+)"', line)
        assert [re.sub(r".*\.", ".", link.split("?")[0].split("/")[-1]) for link in links] == \
            [".html", ".json", ".html", ".html"]
        assert links[2].endswith("?export=svg") and links[3].endswith("?export=png")
        for link in links:
            assert (page.parent / link.split("?")[0]).resolve().is_file(), link
    model_page = (site / "models" / f"{GPT2}.html").read_text("utf-8")
    assert "embed/tiny-random-gpt2/atlas-entropy.html" in model_page
    tokenizers = (site / "compare" / "tokenizers.html").read_text("utf-8")
    assert "embed/site/tokenizers.html" in tokenizers
    assert (site / "embedding.html").is_file()


# --- in the browser ------------------------------------------------------------------------------




@pytest.fixture(scope="module")
def served(built):
    """The build directory on 127.0.0.1, so the site sits under the sub-path /site/."""
    with serve_directory(built) as url:
        yield url + "site/"




def open_page(browser, url: str, allowed: str) -> tuple:
    """A page at `url` whose requests outside `allowed` are aborted and recorded."""
    context = browser.new_context(viewport={"width": 1000, "height": 800}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    foreign: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def route(r):
        if r.request.url.startswith(allowed) or r.request.url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            foreign.append(r.request.url)
            r.abort()
    page.route("**/*", route)
    page.goto(url, wait_until="load")
    page.wait_for_function(
        """() => { const el = document.getElementById('atlas-chart');
                   return el.dataset.rendered === 'true'
                          || el.classList.contains('atlas-error'); }""",
        timeout=CHART_TIMEOUT_MS)
    return context, page, errors, foreign


@pytest.mark.browser
@pytest.mark.parametrize("chart", ["attention", "predictions", "lens"])
def test_exported_html_renders_from_file_with_no_network(browser, repeat_export, chart):
    path = repeat_export / QWEN2 / "tiny/repeat" / f"{chart}.html"
    context, page, errors, foreign = open_page(browser, path.as_uri(), "file://")
    try:
        chart_el = page.locator("#atlas-chart")
        assert chart_el.get_attribute("data-rendered") == "true", chart_el.inner_text()
        assert chart_el.locator("svg, canvas").count() >= 1
        assert chart_el.locator(".role-mark").count() > 0
        assert not errors, errors
        assert not foreign, foreign
    finally:
        context.close()


@pytest.mark.browser
def test_embed_page_renders_when_served(browser, served, built):
    base = served + f"embed/{GPT2}/tiny/repeat/"
    context, page, errors, foreign = open_page(browser, base + "predictions.html", served)
    try:
        assert page.locator("#atlas-chart").get_attribute("data-rendered") == "true", \
            page.locator("#atlas-chart").inner_text()
        assert page.locator("#atlas-chart svg").count() >= 1
        assert page.locator("#atlas-chart .role-mark").count() > 0
        # vega-embed's action menu offers the SVG and PNG downloads.
        assert page.locator(".vega-actions a").count() >= 2
        assert not errors and not foreign, (errors, foreign)
    finally:
        context.close()


@pytest.mark.browser
def test_embed_attention_page_takes_layer_and_head(browser, served, built):
    url = served + f"embed/{QWEN2}/tiny/repeat/attention.html?layer=1&head=3"
    context, page, errors, foreign = open_page(browser, url, served)
    try:
        assert page.locator("#atlas-chart").get_attribute("data-rendered") == "true", \
            page.locator("#atlas-chart").inner_text()
        title = page.locator("#atlas-chart .role-title-text").first.text_content()
        assert "layer 1, head 3" in title
        t = attention_head(built, QWEN2, "tiny/repeat", 1, 3)["length"]
        assert page.locator("#atlas-chart .mark-rect.role-mark path").count() == t * (t + 1) // 2
        assert not errors and not foreign, (errors, foreign)
    finally:
        context.close()
    context, page, errors, _ = open_page(browser, url.replace("head=3", "head=7"), served)
    try:
        assert "valid values are 0 to 3" in page.locator(".atlas-error").inner_text()
    finally:
        context.close()


@pytest.mark.browser
def test_embed_page_downloads_svg_on_request(browser, served):
    url = served + f"embed/{GPT2}/tiny/hello/surprisal.html?export=svg"
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    try:
        with page.expect_download(timeout=CHART_TIMEOUT_MS) as download:
            page.goto(url, wait_until="load")
        d = download.value
        assert d.suggested_filename == f"{GPT2}-tiny-hello-surprisal.svg"
        assert ET.fromstring(Path(d.path()).read_bytes()).tag.endswith("svg")
    finally:
        context.close()
