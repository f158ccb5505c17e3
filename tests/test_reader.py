"""What a reader is told, checked without a browser: every page states the same token counts as the
artifacts; byte pieces are grouped under the character they form; prompt titles and nav labels are
words, not slugs; formulas are typeset; the search index stays small and holds no generated data or
embed page. Browser-side checks (390 px, dark mode, no Vega bundle on chart-free pages) are in
tests/test_browser.py."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from html.parser import HTMLParser

import pytest
import yaml

from conftest import CJK_EMOJI_TEXT, SUBSET

from generator.pagedata import chip_groups, prompt_title, token_rows
from generator.schema import read_artifact
from generator.typeset import formula_html

SEARCH_INDEX_LIMIT = 150_000   # bytes, for the full demo site (issue 10)
DEMO_SLUGS = ["tiny-random-gpt2", "tiny-random-qwen2"]


class _Counts(HTMLParser):
    """Collects every <span class="atlas-count" data-count=.. data-model=.. data-prompt=..>N."""

    def __init__(self):
        super().__init__()
        self.open: dict | None = None
        self.found: list[tuple[str, str, str, int]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "span" and a.get("class") == "atlas-count":
            self.open = a

    def handle_data(self, data):
        if self.open is not None:
            a = self.open
            self.found.append((a["data-model"], a["data-prompt"], a["data-count"],
                               int(data.strip())))
            self.open = None


def page_counts(path) -> list[tuple[str, str, str, int]]:
    parser = _Counts()
    parser.feed(path.read_text("utf-8"))
    return parser.found


def artifact_counts(site, slug, key) -> dict[str, int]:
    """Counted from the token list itself (the generated flag), not from the `generation` summary
    the pages are rendered from: two independent routes to the same number."""
    a = read_artifact(site / "artifacts" / slug / f"{key}.json")
    generated = sum(1 for t in a["tokens"] if t.get("generated"))
    return {"prompt": len(a["tokens"]) - generated, "generated": generated}


def test_every_page_states_the_artifacts_token_counts(demo_build):
    """Set pages, prompt pages and the tokenizer page give the same prompt-token and
    generated-token counts for every (model, prompt), and those are the artifacts' counts."""
    site = demo_build.site
    keys = [f"{sid}/{p['id']}" for sid, s in SUBSET.items() for p in s["prompts"]]
    pages = {"set": [site / "sets" / f"{sid}.html" for sid in SUBSET],
             "prompt": [site / "prompts" / f"{k}.html" for k in keys],
             "tokenizers": [site / "compare" / "tokenizers.html"]}
    seen: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for kind, paths in pages.items():
        for path in paths:
            found = page_counts(path)
            assert found, f"{path}: no marked token count"
            for slug, key, what, n in found:
                expected = artifact_counts(site, slug, key)[what]
                assert n == expected, (f"{path.relative_to(site)} says {n} {what} tokens for "
                                       f"{slug} {key}; the artifact has {expected}")
                seen[(slug, key, what)].add(kind)
    for slug in DEMO_SLUGS:
        for key in keys:
            # The prompt-token count is on all three page kinds; the generated count on the set
            # and prompt pages (the tokenizer page counts only prompt tokens, and says so).
            assert seen[(slug, key, "prompt")] == {"set", "prompt", "tokenizers"}, (slug, key)
            if artifact_counts(site, slug, key)["generated"]:
                assert seen[(slug, key, "generated")] == {"set", "prompt"}, (slug, key)
    # The set table names both counts in its header instead of adding them up.
    set_page = (site / "sets" / "basics.html").read_text("utf-8")
    assert "prompt tokens (+ generated)" in set_page


def test_byte_pieces_are_grouped_under_their_character(demo_build):
    """Every run of byte pieces becomes one group whose bytes decode to the character shown above
    it; every token appears exactly once, in order."""
    a = read_artifact(demo_build.site / "artifacts" / "tiny-random-gpt2" / "mixed" /
                      "cjk-emoji.json")
    rows = token_rows(a)
    groups = chip_groups(a, rows)
    assert [r["i"] for g in groups for r in g["tokens"]] == list(range(len(rows)))
    pieces = [g for g in groups if g["char"] is not None]
    assert pieces, "GPT-2 splits Chinese and emoji into byte pieces: some group expected"
    for g in pieces:
        raw = b"".join(bytes.fromhex(a["tokens"][r["i"]]["bytes"]) for r in g["tokens"])
        assert len(g["tokens"]) >= 2
        assert g["char"] == raw.decode("utf-8").replace(" ", "␣")
        assert a["tokens"][g["tokens"][0]["i"]]["text"] is None
    # Outside the groups no byte piece is left when the prompt decodes completely.
    assert all(a["tokens"][g["tokens"][0]["i"]]["text"] is not None
               for g in groups if g["char"] is None and not g["tokens"][0]["generated"])
    # The page shows them so: the characters of the prompt appear above their chips.
    page = (demo_build.site / "prompts" / "mixed" / "cjk-emoji.html").read_text("utf-8")
    shown = re.findall(r'<span class="atlas-char-text">([^<]*)</span>', page)
    assert "巴" in "".join(shown) and "🙂" in "".join(shown)
    assert 'class="atlas-legend"' in page and "byte piece" in page and "␣" in page


def _artifact(tokens):
    """A minimal artifact: tokens as (text or None, hex, generated)."""
    return {"tokens": [{"text": t, "bytes": h, "id": i, "start": 0, "end": 0, "generated": g}
                       for i, (t, h, g) in enumerate(tokens)]}


def test_chip_groups_edge_cases():
    rows = lambda a: [{"i": i, "generated": t["generated"]} for i, t in enumerate(a["tokens"])]
    # "␣ब" split as <20 e0 a4> <ac>, then a plain token: one group, then one chip.
    a = _artifact([(None, "20e0a4", False), (None, "ac", False), ("x", "78", False)])
    g = chip_groups(a, rows(a))
    assert [x["char"] for x in g] == ["␣ब", None] and len(g[0]["tokens"]) == 2
    # A piece that ends one character and starts the next chains them into one group.
    a = _artifact([(None, "e0a4", False), (None, "ace0a4", False), (None, "ac", False)])
    assert [x["char"] for x in chip_groups(a, rows(a))] == ["बब"]
    # A vowel sign alone is drawn on a dotted circle.
    a = _artifact([(None, "e0a4", False), (None, "bf", False)])
    assert chip_groups(a, rows(a))[0]["char"] == "◌ि"
    # A stray continuation byte never completes: left ungrouped, nothing lost.
    a = _artifact([(None, "ac", False), ("x", "78", False)])
    assert [x["char"] for x in chip_groups(a, rows(a))] == [None, None]
    # Generation stopped mid-character: the pieces stay single; prompt and generated never mix.
    a = _artifact([(None, "e0a4", False), (None, "ac", True), (None, "e0", True)])
    g = chip_groups(a, rows(a))
    assert [x["char"] for x in g] == [None, None, None]
    assert len(chip_groups(a, rows(a), generated=False)) == 1


def test_prompt_titles_are_words():
    assert prompt_title("Shopping list: flour, lentils, saffron, walnuts, yogurt. Checked "
                        "items: flour") == "Shopping list: flour, lentils, saffron …"
    assert prompt_title("Hello world") == "Hello world"
    assert prompt_title("def f(x):\n    return x + 1\n") == "def f(x): …"
    assert prompt_title(CJK_EMOJI_TEXT) == "巴黎是法国的首都。🙂🇫🇷 Paris 巴"
    assert len(prompt_title("巴" * 100)) <= 42


def test_pages_and_nav_use_titles_not_slugs(demo_build):
    site = demo_build.site
    nav = yaml.safe_load((demo_build.root / "mkdocs.yml").read_text("utf-8"))["nav"]
    sets = next(item["Prompt sets"] for item in nav if "Prompt sets" in item)
    basics = next(entry["Basics"] for entry in sets if "Basics" in entry)
    labels = [next(iter(e)) for e in basics]
    assert labels[0] == "Overview"
    assert "The cat sat on the mat. The cat sat on …" in labels
    assert "repeat" not in labels and "basics" not in labels
    page = (site / "prompts" / "basics" / "repeat.html").read_text("utf-8")
    assert "<title>The cat sat on the mat. The cat sat on … - Model Atlas</title>" in page
    assert "<title>Basics - Model Atlas</title>" in (site / "sets" / "basics.html").read_text(
        "utf-8")
    # A hostile prompt's title is escaped in <title>, the header and the nav.
    hostile = (site / "prompts" / "basics" / "hostile.html").read_text("utf-8")
    assert "<script>alert(1)" not in hostile
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in hostile


def test_formulas_are_typeset_as_html():
    html = str(formula_html("mean over i≥1 of −Σ_j a_ij log2 a_ij (0 log 0 = 0)"))
    assert "<var>a</var><sub><var>ij</var></sub>" in html
    assert "log<sub>2</sub>" in html and "Σ<sub><var>j</var></sub>" in html
    assert "_" not in html
    html = str(formula_html("mean over i with S_i ≠ ∅ of Σ_{k∈S_i} a_ik"))
    assert "Σ<sub><var>k</var>∈<var>S</var><sub><var>i</var></sub></sub>" in html
    assert "<var>" not in str(formula_html("in a group"))   # the article stays upright
    # Text is escaped, and the escapes survive typesetting, in subscripts too.
    assert "<b>" not in str(formula_html("<b>"))
    assert str(formula_html("Σ_{j<i} a_ij")).startswith(
        '<span class="atlas-formula">Σ<sub><var>j</var>&lt;<var>i</var></sub>')


def test_model_and_reference_pages_show_no_raw_formula(demo_build):
    site = demo_build.site
    for rel in ("models/tiny-random-gpt2.html", "metrics.html"):
        text = (site / rel).read_text("utf-8")
        assert 'class="atlas-formula"' in text, rel
        assert "a_ij" not in text and "log2" not in text, f"{rel}: an untypeset formula"
    metrics = (site / "metrics.html").read_text("utf-8")
    assert "final norm" in metrics and "unembedding" in metrics
    prompt = (site / "prompts" / "basics" / "repeat.html").read_text("utf-8")
    assert "<em>final norm</em> (the" in prompt and "<em>unembedding</em> (the" in prompt


@pytest.mark.slow
def test_search_index_is_small_and_holds_no_data(demo_site_full):
    """The full demo site's search index: under 150 KB, and no generated data, embed page or
    repeated per-prompt section (each prompt page is found by its title, text and note)."""
    path = demo_site_full.site / "search" / "search_index.json"
    size = path.stat().st_size
    assert size < SEARCH_INDEX_LIMIT, f"search index is {size:,} bytes"
    docs = json.loads(path.read_text("utf-8"))["docs"]
    locations = [d["location"] for d in docs]
    assert not [u for u in locations if u.startswith(("data/", "embed/", "downloads/",
                                                      "artifacts/", "charts/"))]
    prompt_docs = [u for u in locations if u.startswith("prompts/")]
    assert prompt_docs and all("#" not in u for u in prompt_docs), "a prompt page section is indexed"
    text = " ".join(d["text"] for d in docs)
    assert "lantern" in text          # a prompt's text is still searchable
    assert "Provenance" not in " ".join(d["title"] for d in docs)


def test_agreement_table_isolates_tokens_and_fixes_decimals(demo_build):
    """A right-to-left token must not swap places with its probability (each token sits in a
    <bdi>), and each quantity has one number of decimals (probabilities 3; bits 3, the data's
    own rounding, never rounded again: issue 18's 31.7354 -> 31.735 -> 31.73)."""
    page = (demo_build.site / "prompts" / "basics" / "repeat.html").read_text("utf-8")
    table = page[page.index('class="atlas-table atlas-small atlas-agreement"'):]
    table = table[:table.index("</table>")]
    rows = re.findall(r"<tr data-char=\"\d+\"(?: hidden)?>\s*<td>(.*?)</td>\s*</tr>", table,
                      re.S)
    assert rows, "no agreement row"
    data = {s: json.loads((demo_build.site / f"data/{s}/basics/repeat.json").read_text("utf-8"))
            for s in ("tiny-random-gpt2", "tiny-random-qwen2")}
    stored = {f"{t['surprisal']:.3f}" for d in data.values() for t in d["tokens"]
              if t["surprisal"] is not None}
    for row in rows:
        cells = re.split(r"</td>\s*<td>", row)
        for cell in cells[1:3]:
            assert re.fullmatch(r'<bdi class="atlas-text">[^<]*</bdi> \(\d\.\d{3}\)', cell), cell
        assert re.fullmatch(r"(\d+\.\d{3}|–) / (\d+\.\d{3}|–)", cells[4]), cells[4]
        # Each is a stored surprisal as it is (its 3 decimals), not one rounded again.
        assert {v for v in cells[4].split(" / ") if v != "–"} <= stored, cells[4]


def test_random_and_constructed_weights_get_their_own_banner():
    """A random-weight checkpoint (benchmarks/reference_checkpoints.py) is not the demo: its
    banner must not claim planted heads; the demo's names them."""
    from generator.render import ModelSummary
    from generator.templating import environment
    banner = environment().get_template("_macros.j2").module.random_banner
    demo = ModelSummary("tiny", "tiny-random-gpt2", "r", True, {"planted_heads": [{"layer": 0}]},
                        {})
    noise = ModelSummary("big", "gpt2-random", "r", True, {}, {})
    learned = ModelSummary("real", "gpt2", "r", False, {}, {})
    text = str(banner([demo, noise, learned]))
    first, second = text.split("gpt2-random")[0], text.split("gpt2-random")[1]
    assert "tiny-random-gpt2" in first and "planted heads implement" in first
    assert "random, not learned" in text and "no head trained or planted" in second
    assert "planted heads implement" not in second
    assert "<strong>gpt2</strong>" not in text
    assert str(banner([learned])).strip() == ""
