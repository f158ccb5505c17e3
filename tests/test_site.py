"""Tests of the built demo site (generator/render.py, generator/site.py, templates/, site_src/):
every expected page exists, nothing is fetched from a CDN, demo pages say the weights are random,
hostile prompt text is escaped, a build writes nothing into the checkout, and the render stage
needs no torch."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import unquote

import pytest

from conftest import CJK_EMOJI_TEXT, HOSTILE_TEXT, REPO, SUBSET, read_head_file
from generator.layout import HEAD, LAYER

DEMO_SLUGS = ["tiny-random-gpt2", "tiny-random-qwen2"]
CDN_HOSTS = ("cdn.jsdelivr", "unpkg", "googleapis", "gstatic")
# Material for MkDocs' own script names two unpkg.com scripts it loads only as fallbacks: a
# ResizeObserver polyfill (for browsers without ResizeObserver) and Mermaid (for pages with Mermaid
# diagrams; the site has none, checked below). Nothing else may name a CDN.
THEME_FALLBACK_URLS = ("https://unpkg.com/resize-observer-polyfill", "https://unpkg.com/mermaid@")
LINK_RE = re.compile(r'\s(href|src|data-[a-z-]+)="([^"]*)"')
LINKED_SUFFIXES = (".html", ".json", ".js", ".css", ".png", ".svg", ".ico", ".xml", ".gz")


def html_pages(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


def generated_pages(site: Path) -> list[Path]:
    """Pages made from templates: every page except 404 and the hand-written site_src/ ones."""
    hand_written = {p.relative_to(REPO / "site_src").with_suffix(".html")
                    for p in (REPO / "site_src").rglob("*.md")}
    return [p for p in html_pages(site)
            if p.name != "404.html" and p.relative_to(site) not in hand_written]


# --- the full demo site (marked slow: it computes every curated prompt) ----------------------------


@pytest.mark.slow
def test_full_site_has_every_page(demo_site_full):
    from generator.prompts import default_prompt_dir, load_prompt_sets
    site = demo_site_full.site
    sets = load_prompt_sets([default_prompt_dir()])
    assert len(sets) >= 5 and sum(len(s.prompts) for s in sets) >= 40
    expected = ["index.html", "404.html"]
    expected += [f"sets/{s.id}.html" for s in sets]
    expected += [f"prompts/{s.id}/{p.id}.html" for s in sets for p in s.prompts]
    expected += [f"models/{slug}.html" for slug in DEMO_SLUGS]
    expected += [f"{p.relative_to(REPO / 'site_src').with_suffix('.html')}"
                 for p in (REPO / "site_src").rglob("*.md")]
    missing = [e for e in expected if not (site / e).is_file()]
    assert not missing, f"missing pages: {missing}"
    # No page of a prompt or set that is not in the prompt sets.
    prompt_pages = {str(p.relative_to(site)) for p in (site / "prompts").rglob("*.html")}
    assert prompt_pages == {e for e in expected if e.startswith("prompts/")}
    # The site links every set, prompt and model from its navigation.
    index = (site / "index.html").read_text("utf-8")
    for s in sets:
        assert f'href="sets/{s.id}.html"' in index
    for slug in DEMO_SLUGS:
        assert f'href="models/{slug}.html"' in index
    for s in sets:
        page = (site / "sets" / f"{s.id}.html").read_text("utf-8")
        for p in s.prompts:
            assert f"{p.id}.html" in page, f"sets/{s.id}.html does not link {p.id}"


@pytest.mark.slow
def test_full_site_vendors_vega(demo_site_full):
    bundle = demo_site_full.site / "assets" / "vendor" / "vega-bundle.js"
    assert bundle.is_file() and bundle.stat().st_size > 200_000
    text = bundle.read_text("utf-8")
    assert "vegaEmbed" in text or "vega-embed" in text
    index = (demo_site_full.site / "index.html").read_text("utf-8")
    # Pages list only the codec and atlas.js, which adds the bundle itself on pages that draw a
    # chart, from their chart elements' data-vega (the browser tests check which pages fetch it).
    assert "vega-bundle.js" not in index
    assert 'src="assets/atlas.js"' in index
    prompt = next((demo_site_full.site / "prompts").rglob("*.html")).read_text("utf-8")
    assert 'data-vega="../../assets/vendor/vega-bundle.js"' in prompt


def test_the_sites_data_files_are_the_docs_trees_hard_linked(demo_site_full):
    """generator/mkdocs_hooks.py: every generated data file of the site (layout.BULK_DIRS) is
    the docs tree's file, linked, not a copy; pages and the theme are MkDocs' own."""
    from generator.layout import BULK_DIRS
    docs, site = demo_site_full.root / "docs", demo_site_full.site
    bulk = [p for d in BULK_DIRS for p in (docs / d).rglob("*") if p.is_file()]
    assert len(bulk) > 1000
    for p in bulk:
        assert os.path.samefile(p, site / p.relative_to(docs)), p
    page = site / "index.html"
    assert page.is_file() and page.stat().st_nlink == 1


@pytest.mark.slow
def test_no_cdn_anywhere(demo_site_full):
    site = demo_site_full.site
    files = [p for p in site.rglob("*") if p.suffix in (".html", ".js", ".css")]
    assert len(files) > 50
    offenders = []
    for f in files:
        text = f.read_text("utf-8", errors="replace")
        if f.parent == site / "assets" / "javascripts" and f.name.startswith("bundle."):
            for url in THEME_FALLBACK_URLS:
                text = text.replace(url, "")
        offenders += [f"{f.relative_to(site)}: {host}" for host in CDN_HOSTS if host in text]
        if f.suffix == ".html":
            assert 'class="mermaid"' not in text, f"{f}: Mermaid would load from unpkg.com"
            assert "fonts.googleapis" not in text
    assert not offenders, offenders


@pytest.mark.slow
def test_every_local_link_resolves(demo_site_full):
    """Every href, src and data-* file reference of every page points at a file of the site."""
    site = demo_site_full.site
    broken = []
    checked = 0
    # 404.html is left out: MkDocs gives it root-absolute links, as it is served at any missing path.
    for page in html_pages(site):
        if page.name == "404.html":
            continue
        for attr, value in LINK_RE.findall(page.read_text("utf-8")):
            value = html.unescape(value).split("#")[0].split("?")[0]
            # A per-head URL template (generator/layout.py attention_heads): its layer 0 head 0 file.
            value = value.replace(LAYER, "0").replace(HEAD, "0")
            if not value or re.match(r"^[a-z]+:", value) or not value.endswith(LINKED_SUFFIXES):
                continue
            target = (page.parent / unquote(value)).resolve()
            checked += 1
            if not target.is_file():
                broken.append(f"{page.relative_to(site)}: {attr}={value}")
    assert checked > 1000
    assert not broken, broken[:20]


@pytest.mark.slow
def test_every_demo_page_says_the_weights_are_constructed(demo_site_full):
    pages = generated_pages(demo_site_full.site)
    assert len(pages) >= 40
    silent = [str(p.relative_to(demo_site_full.site)) for p in pages
              if "atlas-random" not in p.read_text("utf-8")
              or "constructed in code" not in p.read_text("utf-8")
              or "not learned" not in p.read_text("utf-8")
              or "random weights" not in p.read_text("utf-8").lower()]
    assert not silent, f"pages without the constructed-weights notice: {silent}"


def test_demo_model_pages_list_the_planted_heads(demo_site_full):
    from generator.demo import planted_heads
    for slug in ("tiny-random-gpt2", "tiny-random-qwen2"):
        page = (demo_site_full.site / "models" / f"{slug}.html").read_text("utf-8")
        assert "Planted heads" in page
        for p in planted_heads(slug):
            head = f"../heads/{slug}/L{p['layer']}.H{p['head']}.html"   # its head page
            assert (f"<td><a href=\"{head}\">{p['name']}</a></td><td>{p['mechanism']}</td>"
                    in page), p["name"]


@pytest.mark.slow
def test_model_pages_show_architecture_facts(demo_site_full):
    for slug in DEMO_SLUGS:
        page = (demo_site_full.site / "models" / f"{slug}.html").read_text("utf-8")
        artifact = next((demo_site_full.root / "artifacts" / slug).rglob("*.json"))
        facts = json.loads(artifact.read_text("utf-8"))["model"]
        assert f"{facts['parameters']:,}" in page
        assert facts["architecture"] in page
    qwen = (demo_site_full.site / "models" / "tiny-random-qwen2.html").read_text("utf-8")
    assert "grouped-query" in qwen


# --- the small demo build: escaping, scripts, the checkout ----------------------------------------


def test_hostile_prompt_is_escaped(demo_build):
    site = demo_build.site
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    prompt_page = (site / "prompts" / "basics" / "hostile.html").read_text("utf-8")
    set_page = (site / "sets" / "basics.html").read_text("utf-8")
    assert escaped in prompt_page and escaped in set_page
    assert "{{ jinja }}" in prompt_page and "{{ jinja }}" in set_page
    # The note is escaped too, and its braces are not evaluated.
    assert "&lt;b&gt;not bold&lt;/b&gt;" in prompt_page and "{{ not jinja }}" in prompt_page
    # The whole text, entity-decoded, sits in the prompt box.
    box = re.search(r'<pre class="atlas-prompt-text">(.*?)</pre>', prompt_page, re.S)
    assert box and html.unescape(box.group(1)) == HOSTILE_TEXT
    for page in html_pages(site):
        text = page.read_text("utf-8")
        assert "<script>alert(1)" not in text, page
        assert "<b>not bold</b>" not in text, page
    index = (site / "search" / "search_index.json").read_text("utf-8")
    assert "<script>alert(1)" not in json.loads(index).__repr__()


def test_page_data_keeps_the_text_exact(demo_build):
    """Data files hold prompt text as JSON strings, exact (no HTML escaping, no normalization)."""
    for slug in DEMO_SLUGS:
        a = json.loads((demo_build.site / "artifacts" / slug / "mixed" / "cjk-emoji.json")
                       .read_text("utf-8"))
        assert a["prompt"]["text"] == CJK_EMOJI_TEXT
        assert a["provenance"]["random_weights"] is True
        n = a["generation"]["prompt_tokens"]
        joined = b"".join(bytes.fromhex(t["bytes"]) for t in a["tokens"][:n])
        assert joined == CJK_EMOJI_TEXT.encode("utf-8")


def test_chinese_and_emoji_prompt_shows_literally(demo_build):
    page = (demo_build.site / "prompts" / "mixed" / "cjk-emoji.html").read_text("utf-8")
    assert CJK_EMOJI_TEXT in page
    set_page = (demo_build.site / "sets" / "mixed.html").read_text("utf-8")
    assert CJK_EMOJI_TEXT in set_page


def test_every_subset_prompt_has_a_page(demo_build):
    for set_id, content in SUBSET.items():
        assert (demo_build.site / "sets" / f"{set_id}.html").is_file()
        for p in content["prompts"]:
            page = demo_build.site / "prompts" / set_id / f"{p['id']}.html"
            assert page.is_file(), page
            assert "Constructed weights" in page.read_text("utf-8")


def test_build_leaves_the_checkout_unchanged(demo_build):
    new = sorted(set(demo_build.git_after) - set(demo_build.git_before))
    assert not new, f"the build changed the checkout: {new}"
    assert demo_build.site_src_after == demo_build.site_src_before, "the build wrote into site_src/"
    assert demo_build.site_src_before, "site_src/ was not read"
    # Nothing of this build went to the checkout's default build/ and site/ (both git-ignored).
    assert not list((REPO / "build" / "artifacts").glob("*/basics")), "artifacts went to build/"
    assert not (REPO / "build" / "docs" / "prompts" / "basics").exists()
    assert not (REPO / "site" / "prompts" / "basics").exists()
    # Nothing half-written is left behind.
    leftovers = [p for p in demo_build.root.rglob("*")
                 if p.name.endswith((".tmp", ".old")) and p.exists()]
    assert not leftovers, leftovers


def test_render_stage_imports_no_torch():
    code = ("import generator.render, generator.site, generator.charts; import sys; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_render_command_works_without_torch(demo_build, tmp_path):
    """`model-atlas render` with torch made unimportable, on the demo build's artifacts."""
    build = tmp_path / "build"
    for sub in ("artifacts", "vendor"):
        shutil.copytree(demo_build.root / sub, build / sub)
    out = tmp_path / "site"
    script = textwrap.dedent(f"""
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is not installed (blocked by the test)")

        sys.meta_path.insert(0, NoTorch())
        from generator.cli import main
        main(["render", "--demo", "--prompts", {str(demo_build.prompts)!r},
              "--build-dir", {str(build)!r}, "--out", {str(out)!r}], standalone_mode=False)
        assert "torch" not in sys.modules, "torch was imported"
        print("rendered without torch")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rendered without torch" in proc.stdout
    assert (out / "prompts" / "basics" / "hostile.html").is_file()
    # The same pages as the build that had torch.
    assert sorted(p.relative_to(out) for p in out.rglob("*.html")) == \
        sorted(p.relative_to(demo_build.site) for p in demo_build.site.rglob("*.html"))


def test_lens_rows_show_the_stored_top_k(demo_build):
    """The logit-lens chart's rows carry every stored prediction of a layer: the top one, then the
    others with their probabilities, shown as the page shows tokens (partial characters as bytes)."""
    from generator.pagedata import show_token
    from generator.schema import read_artifact
    from generator.tokens import entry_bytes
    for slug in DEMO_SLUGS:
        a = read_artifact(demo_build.site / "artifacts" / slug / "mixed" / "cjk-emoji.json")
        k = a["provenance"]["settings"]["lens_top_k"]
        assert k == 3 and a["lens"][0]["k"] == k
        rows = json.loads((demo_build.site / "data" / slug / "mixed" / "cjk-emoji.lens.json")
                          .read_text("utf-8"))["lens"]
        assert len(rows) == len(a["lens"]) * len(a["tokens"])
        for row in rows:
            block = a["lens"][row["layer"]]
            ids, probs = block["ids"][row["pos"]], block["probs"][row["pos"]]
            shown = [show_token(a["vocab"][str(t)]["text"], entry_bytes(a["vocab"][str(t)]), t)
                     for t in ids]
            assert row["top"] == shown[0] and row["p"] == probs[0]
            # Each token isolated (U+2068 .. U+2069) so right-to-left text keeps its place.
            assert row["runners"] == ", ".join(f"\u2068{s}\u2069 ({p:.3f})"
                                               for s, p in zip(shown[1:], probs[1:]))


def _params_of(page_html: str, chart: str) -> list[dict]:
    """The data-params of every `chart` box of a page (its shared scale domains)."""
    found = re.findall(r'data-spec="[^"]*charts/' + re.escape(chart) +
                       r'\.vl\.json"[^>]*data-params=\'([^\']*)\'', page_html)
    return [json.loads(html.unescape(p)) for p in found]


def test_both_models_share_one_scale_per_quantity(demo_build):
    """Surprisal, entropy and lens rank: both models' charts of a prompt page get one domain,
    the extremes over both models' data files (issue 10: side by side, comparable)."""
    site = demo_build.site
    page = (site / "prompts/basics/repeat.html").read_text("utf-8")
    data = {s: json.loads((site / f"data/{s}/basics/repeat.json").read_text("utf-8"))
            for s in DEMO_SLUGS}
    heads = {s: json.loads((site / f"data/{s}/basics/repeat.heads.json").read_text("utf-8"))
             for s in DEMO_SLUGS}
    lens = {s: json.loads((site / f"data/{s}/basics/repeat.lens.json").read_text("utf-8"))
            for s in DEMO_SLUGS}
    surprisal = _params_of(page, "surprisal")
    assert len(surprisal) == 2 and surprisal[0] == surprisal[1]
    top = max(t["surprisal"] for s in DEMO_SLUGS for t in data[s]["tokens"]
              if t["surprisal"] is not None)
    assert surprisal[0]["surprisal_max"] == pytest.approx(top, abs=1e-3)
    per_model_top = [max(t["surprisal"] or 0 for t in data[s]["tokens"]) for s in DEMO_SLUGS]
    assert min(per_model_top) < top, "the test needs two models with different maxima"
    entropy = _params_of(page, "heads")
    assert len(entropy) == 2 and entropy[0] == entropy[1]
    values = [h["entropy"] for s in DEMO_SLUGS for h in heads[s]["heads"]
              if h["entropy"] is not None]
    assert entropy[0] == {"entropy_min": pytest.approx(min(values), abs=1e-3),
                          "entropy_max": pytest.approx(max(values), abs=1e-3)}
    lrank = _params_of(page, "lens")
    assert len(lrank) == 2 and lrank[0] == lrank[1]
    assert lrank[0]["lrank_max"] == pytest.approx(
        max(r["lrank"] for s in DEMO_SLUGS for r in lens[s]["lens"] if r["lrank"] is not None),
        abs=1e-3)
    # The specs read those params for their scales (and fall back to their own data without).
    specs = {n: json.loads((site / f"charts/{n}.vl.json").read_text("utf-8"))
             for n in ("surprisal", "heads", "lens")}
    # (Charts indexed by position also take the window the page shows: generator/charts.py.)
    window = {"win_lo", "win_hi", "sel_pos"}
    assert {p["name"] for p in specs["surprisal"]["params"]} == {"surprisal_max"} | window
    assert {p["name"] for p in specs["heads"]["params"]} == {"entropy_min", "entropy_max"}
    assert {p["name"] for p in specs["lens"]["params"]} == {"lrank_max"} | window
    bars = next(layer for layer in specs["surprisal"]["layer"] if "y" in layer["encoding"])
    assert '"expr": "surprisal_max"' in json.dumps(bars["encoding"]["y"])


def test_head_atlas_links_name_layer_and_head_and_count_the_heads(demo_build):
    """Every head-atlas row links to its clearest prompt opened at that layer and head, and the
    intro counts the heads a chart really ranks (16 for a 4 x 4 model, not 20)."""
    site = demo_build.site
    for slug in DEMO_SLUGS:
        rows = json.loads((site / f"data/{slug}/atlas.json").read_text("utf-8"))["atlas"]
        for row in rows:
            for metric in ("entropy", "prev_token", "first_token"):
                best = row[f"{metric}_best"]
                assert row[f"{metric}_href"] == (
                    f"../prompts/{best}.html?model={slug}&layer={row['layer']}&head={row['head']}")
        page = (site / f"models/{slug}.html").read_text("utf-8")
        n = len(rows)
        assert f"ranks the {min(20, n)} heads" in page
        links = re.findall(r'href="(\.\./prompts/[^"]+)"', page)
        with_head = [h for h in links if "?model=" in h]
        assert with_head and all(re.search(r"\?model=[\w-]+&amp;layer=\d+&amp;head=\d+$", h)
                                 for h in with_head), with_head[:3]


def test_lens_probabilities_keep_three_significant_figures():
    from generator.pagedata import _sig
    assert _sig(0.0000321789) == 3.22e-05
    assert _sig(0.41234) == 0.412


def test_attribution_data_matches_the_artifact(demo_build):
    """The prompt page's attribution file carries every position's stored components for both
    targets, names them in the artifact's order, and its default heatmap is the last prompt
    token's top-1 view; on the repeated sentence the planted induction head wrote the prediction."""
    from generator.demo import planted_heads
    from generator.layout import prompt_dla
    from generator.schema import DLA_TARGETS, dla_component_names, read_artifact
    for slug in DEMO_SLUGS:
        a = read_artifact(demo_build.site / "artifacts" / slug / "basics" / "repeat.json")
        d = json.loads((demo_build.site / prompt_dla(slug, "basics/repeat")).read_text("utf-8"))
        L, H = a["model"]["layers"], a["model"]["query_heads"]
        assert d["names"] == dla_component_names(L, H)
        assert len(d["names"]) == a["attribution"]["components"]
        assert d["default"] == a["generation"]["prompt_tokens"] - 1
        for j, target in enumerate(DLA_TARGETS):
            assert len(d[target]) == len(a["tokens"])
            for i, entry in enumerate(d[target]):
                if entry is None:
                    assert a["attribution"]["index"][i][j] is None
                    continue
                assert entry["index"] == a["attribution"]["index"][i][j]
                assert entry["value"] == a["attribution"]["value"][i][j]
        assert d["next"][-1] is None
        heads = {r["name"]: r for r in d["dla"]}
        assert len(heads) == L * H
        induction = next(p["name"] for p in planted_heads(slug) if p["metric"] == "induction")
        top = d["top1"][d["default"]]
        assert d["names"][top["index"][0]] == induction
        assert heads[induction]["share"] == 1.0
        page = (demo_build.site / "prompts" / "basics" / "repeat.html").read_text("utf-8")
        opening = re.search(rf'class="atlas-col atlas-dla"\s+data-model="{slug}"', page)
        assert opening, f"{slug}: no attribution view"
        # The default list is in the page already (nothing moves when the script draws), and a
        # head's name links to that head's page (issue 18).
        box = page[opening.end():]
        first = box.split('<ol class="atlas-small atlas-dla-list">')[1].split("</li>")[0].strip()
        layer, head = induction[1:].split(".H")
        href = f"../../heads/{slug}/L{layer}.H{head}.html"
        assert first.startswith(f'<li><a href="{href}">{induction}</a> +'), first
        # A component that rounds to zero says nothing: it joins "all other components", and the
        # list with the rest still adds up to the logit the caption states.
        from generator.pagedata import dla_list
        for target in ("top1", "next"):
            for pos, entry in enumerate(d[target]):
                if entry is None:
                    continue
                shown = dla_list(d, pos, target)
                values = [it["value"] for it in shown["entries"]] + [shown["rest"]]
                assert all(v not in ("+0.000", "\u22120.000") for v in values[:-1]), values
                total = sum(float(v.replace("\u2212", "-")) for v in values)
                logit = float(re.search(r": (-?\d+\.\d{3})\. Who wrote it",
                                        shown["caption"]).group(1))
                assert total == pytest.approx(logit, abs=0.002 * len(values))


def test_attention_is_served_one_file_per_head(demo_build):
    """Each model's attention on a prompt is one file per layer and head (layout.attention_head),
    gzipped, each holding that head's stored block alone, and no per-layer or uncompressed file is
    left: a page switching heads fetches only the head it shows."""
    import base64
    from generator.layout import attention_head
    from generator.schema import attention_head as stored_block
    from generator.schema import read_artifact
    for slug in DEMO_SLUGS:
        a = read_artifact(demo_build.site / "artifacts" / slug / "basics" / "repeat.json")
        att = a["attention"]
        expected = {attention_head(slug, "basics/repeat", layer, head)
                    for layer in range(att["layers"]) for head in range(att["heads"])}
        folder = demo_build.site / "data" / slug / "basics" / "repeat"
        found = {f"data/{slug}/basics/repeat/{p.name}" for p in folder.iterdir()
                 if re.fullmatch(r"L\d+(\.H\d+)?\.json(\.gz)?", p.name)}
        assert found == expected
        for layer, head in ((0, 0), (att["layers"] - 1, att["heads"] - 1)):
            path = demo_build.site / attention_head(slug, "basics/repeat", layer, head)
            f = read_head_file(path)
            assert path.read_bytes()[4:8] == bytes(4), "a time in the gzip header: rebuilds differ"
            assert {k: v for k, v in f.items() if k != "data"} == {
                "layer": layer, "head": head, "length": att["length"],
                "encoding": att["encoding"], "scale": att["scale"]}
            assert base64.b64decode(f["data"]) == stored_block(a, layer, head)
