"""Head pages (issue 18): one page per query head, its aggregates across prompts
(generator/heads.py), its OV circuit from the weights (generator/ov.py), the model page's scatter; and the documents
about the attribution and the stored attention, held to the artifacts.

On the demo, whose planted heads are known: the previous-token head's distance histogram peaks at
1, the sink head's first-token share is the highest of its model, the induction head's OV circuit
copies, and the planted heads' pages say they are planted.
"""

from __future__ import annotations

import gzip
import json
import re
import numpy as np
import pytest

from conftest import serve_directory

from generator import heads, layout
from generator.metrics import HEAD_METRICS, induction_targets, layer_metrics
from generator.schema import decode_attention, read_artifact

DEMO_SLUGS = ["tiny-random-gpt2", "tiny-random-qwen2"]
EPS = 1 / 256                 # the stored attention's bound (artifact-format.md)
METRIC_ROUNDING = 0.00005     # the artifact's metrics are stored to 4 decimals
HEAD_PAGE_LIMIT = 150_000     # bytes of a demo head page's HTML, all of it inline


def _artifacts(build, slug):
    """(keys, artifacts) of one model of a build, in prompt-set order."""
    root = build.root / "artifacts" / slug
    paths = sorted(root.rglob("*.json"))
    keys = [p.relative_to(root).with_suffix("").as_posix() for p in paths]
    return keys, [read_artifact(p) for p in paths]


@pytest.fixture(scope="module")
def model_heads(demo_build):
    """{slug: heads.model_heads(...)} of the test build, with its OV artifacts."""
    out = {}
    for slug in DEMO_SLUGS:
        keys, arts = _artifacts(demo_build, slug)
        ov = heads.read_ov(layout.ov_path(demo_build.root / "artifacts", slug))
        assert ov is not None, f"{slug}: the compute stage wrote no OV artifact"
        out[slug] = heads.model_heads(keys, arts, ov)
    return out


def _planted(demo_build, slug, metric):
    _, arts = _artifacts(demo_build, slug)
    return [p for p in arts[0]["model"]["planted_heads"] if p["metric"] == metric]


# --- the documents, held to the artifacts ---------------------------------------------------------

def test_stored_attention_metrics_keep_the_documented_bounds(demo_build):
    """site_src/metrics.md, "Recomputed from the stored attention": every bound of its first
    column on every artifact, and the measured figures on prompts of up to 64 tokens."""
    worst = dict.fromkeys(HEAD_METRICS, 0.0)
    for slug in DEMO_SLUGS:
        _, arts = _artifacts(demo_build, slug)
        for a in arts:
            T = len(a["tokens"])
            att = np.stack([decode_attention(a, l) for l in range(a["attention"]["layers"])])
            ids = [t["id"] for t in a["tokens"]]
            got = layer_metrics(att, ids)
            diff = {n: np.abs(got[n] - np.array(a["metrics"][n], dtype=float))
                    for n in HEAD_METRICS}
            for n in ("prev_token", "first_token"):
                assert np.nanmax(diff[n]) <= EPS + METRIC_ROUNDING, (slug, n)
            sizes = induction_targets(ids).sum(1)
            if sizes.any():
                bound = EPS * sizes[sizes > 0].mean() + METRIC_ROUNDING
                assert np.nanmax(diff["induction"]) <= bound, slug
            i = np.arange(1, T)
            assert np.nanmax(diff["distance"]) <= EPS * (i * (i + 1) / 2).mean() + METRIC_ROUNDING
            if T <= 64:
                for n in HEAD_METRICS:
                    worst[n] = max(worst[n], float(np.nanmax(diff[n])))
    assert worst["entropy"] <= 0.13 and worst["distance"] <= 0.25, worst


def test_attribution_index_follows_the_documented_order(demo_build):
    """artifact-format.md, attribution `index`: by round(|value| x 1000), largest first, equal
    sizes in component order; and sum(value) + rest is what the page's caption shows."""
    checked = 0
    for slug in DEMO_SLUGS:
        _, arts = _artifacts(demo_build, slug)
        for a in arts:
            d = a["attribution"]
            assert d["targets"] == ["top1", "next"] and d["top_k"] == 16
            assert d["components"] == 2 + a["model"]["layers"] * (a["model"]["query_heads"] + 1)
            assert d["max_rel_error"] < 1e-5            # metrics.md: float32
            for idx_pos, val_pos in zip(d["index"], d["value"]):
                for idx, val in zip(idx_pos, val_pos):
                    if idx is None:
                        continue
                    keys = [round(abs(v) * 1000) for v in val]
                    for k in range(len(idx) - 1):
                        assert (keys[k], -idx[k]) > (keys[k + 1], -idx[k + 1]), (idx, val)
                        checked += 1
    assert checked > 1000


# --- the aggregates on the demo's planted heads ---------------------------------------------------

def test_previous_token_head_histogram_peaks_at_one(demo_build, model_heads):
    for slug in DEMO_SLUGS:
        rows = {h["name"]: h for h in model_heads[slug]}
        for p in _planted(demo_build, slug, "prev_token"):
            h = rows[p["name"]]
            shares = [b["share"] for b in h["distance"]]
            assert h["distance"][int(np.argmax(shares))]["label"] == "1", (slug, shares)
            assert max(shares) > 0.8
        # and a random head does not
        assert any(model_heads[slug][k]["distance"][1]["share"] < 0.5
                   for k in range(len(model_heads[slug])))


def test_sink_head_first_token_share_is_the_highest_of_its_model(demo_build, model_heads):
    for slug in DEMO_SLUGS:
        (sink,) = _planted(demo_build, slug, "first_token")
        shares = {h["name"]: h["first_share"] for h in model_heads[slug]}
        assert max(shares, key=shares.get) == sink["name"], shares
        assert shares[sink["name"]] > 0.9
        sink_row = next(h for h in model_heads[slug] if h["name"] == sink["name"])
        assert sink_row["keys"][0]["token"] is None     # "first token" leads what it attends to


def test_distance_bins_and_first_token_add_up_to_one(model_heads):
    for rows in model_heads.values():
        for h in rows:
            total = h["first_share"] + sum(b["share"] for b in h["distance"])
            assert abs(total - 1) < 0.02, (h["name"], total)   # stored weights: within 1/256


def test_induction_head_ov_circuit_copies(demo_build, model_heads):
    """The induction head raises the token it attends to above every other output for at least
    90 % of the vocabulary rows tested; a random head of the same model does not."""
    for slug in DEMO_SLUGS:
        (ind,) = _planted(demo_build, slug, "induction")
        rows = {h["name"]: h for h in model_heads[slug]}
        ov = rows[ind["name"]]["ov"]
        assert ov["sample"] >= 32 and ov["top1"] >= 0.9, ov
        assert ov["rows"] and all(r["rank"] == 1 for r in ov["rows"])
        planted = {p["name"] for p in _artifacts(demo_build, slug)[1][0]["model"]["planted_heads"]}
        assert any(h["ov"]["top1"] < 0.5 for n, h in rows.items() if n not in planted)


def test_ov_artifact_is_reused_after_a_prompt_changes(gpt2_model, tmp_path):
    """generator/ov.py: a second run with the same tokens computes nothing and leaves the file
    as it is; a changed prompt's new token adds its row and keeps every other row as it was."""
    from generator import ov
    path = layout.ov_path(tmp_path, "m")
    lm = gpt2_model
    args = (lm.model, lm.ref.model_id, lm.ref.revision, lm.facts, path)
    first = ov.ensure_ov(*args, [464, 3797], lambda s: None, lm.tokenizer)
    assert first == ov.SAMPLE_ROWS + 2
    before = path.read_bytes()
    assert ov.current(path, lm.ref.model_id, lm.ref.revision, [464, 3797])
    assert ov.ensure_ov(*args, [464, 3797], lambda s: None, lm.tokenizer) == 0
    assert path.read_bytes() == before
    assert ov.ensure_ov(*args, [464, 3797, 9246], lambda s: None, lm.tokenizer) == 1
    old, new = json.loads(gzip.decompress(before)), heads.read_ov(path)
    assert set(new["rows"]) == set(old["rows"]) | {"9246"}
    assert all(new["rows"][t] == r for t, r in old["rows"].items())
    assert not ov.current(path, lm.ref.model_id, "another-revision", [464])


def test_ov_artifact_follows_its_documentation(demo_build):
    """artifact-format.md, "The OV artifact": its key and its sample rows from the recipes there."""
    from generator.store import content_key
    for slug in DEMO_SLUGS:
        data = heads.read_ov(layout.ov_path(demo_build.root / "artifacts", slug))
        facts = _artifacts(demo_build, slug)[1][0]["model"]
        n = min(facts["vocab_size"], facts["tokenizer_size"])
        rng = np.random.default_rng(data["sample_seed"])
        assert data["sample"] == sorted(int(i) for i in rng.choice(n, 32, replace=False))
        assert data["key"] == content_key("ov", data["version"], data["model_id"],
                                          data["revision"], 32, data["sample_seed"], data["top"])
        k = facts["layers"] * facts["query_heads"]
        for row in data["rows"].values():
            assert len(row["up"]) == len(row["down"]) == len(row["rank"]) == k
        ranks = [[data["rows"][str(t)]["rank"][h] for t in data["sample"]] for h in range(k)]
        assert [c["top1"] for c in data["copy"]] == [
            round(float(np.mean(np.array(r) == 1)), 4) for r in ranks]


# --- the pages ------------------------------------------------------------------------------------

def test_every_head_has_a_page_linked_both_ways(demo_build):
    site = demo_build.site
    for slug in DEMO_SLUGS:
        a = read_artifact(next((site / "artifacts" / slug).rglob("*.json")))
        L, H = a["model"]["layers"], a["model"]["query_heads"]
        model_page = (site / layout.served(layout.model_page(slug))).read_text("utf-8")
        for layer in range(L):
            for head in range(H):
                path = site / layout.served(layout.head_page(slug, layer, head))
                assert path.is_file(), path
                page = path.read_text("utf-8")
                assert len(page.encode()) < HEAD_PAGE_LIMIT, (path, len(page))
                title = re.search(r"<title>(.*?)</title>", page).group(1)
                assert title.startswith(f"L{layer}.H{head} · {a['provenance']['model_id']}"), title
                assert f'href="../../models/{slug}.html"' in page      # back to the model page
                assert f'href="../heads/{slug}/L{layer}.H{head}.html"' in model_page
        # The head atlas's tables link each head label to its page.
        atlas = model_page.split('id="head-atlas"')[1].split('id="every-head"')[0]
        assert re.search(rf'<td><a href="../heads/{slug}/L\d+\.H\d+\.html">L\d+\.H\d+</a></td>',
                         atlas)


def test_planted_heads_pages_say_so(demo_build):
    site = demo_build.site
    for slug in DEMO_SLUGS:
        planted = _artifacts(demo_build, slug)[1][0]["model"]["planted_heads"]
        names = {(p["layer"], p["head"]) for p in planted}
        for p in planted:
            page = (site / layout.served(layout.head_page(slug, p["layer"], p["head"]))
                    ).read_text("utf-8")
            assert "atlas-planted-head" in page and "Planted:" in page, p["name"]
            assert p["mechanism"].split(":")[0] in page
        other = next((l, h) for l in range(4) for h in range(4) if (l, h) not in names)
        page = (site / layout.served(layout.head_page(slug, *other))).read_text("utf-8")
        assert "Planted:" not in page


def test_head_pages_stay_out_of_the_search_index(demo_build):
    index = (demo_build.site / "search" / "search_index.json").read_text("utf-8")
    assert layout.HEAD_PAGES_DIR not in index


def test_head_page_numbers_are_the_artifacts(demo_build, model_heads):
    """The means on a head page are the head atlas's (the artifacts' metrics averaged)."""
    slug = DEMO_SLUGS[0]
    atlas = json.loads((demo_build.site / layout.atlas_data(slug)).read_text("utf-8"))["atlas"]
    for row in atlas[:6]:
        page = (demo_build.site / layout.served(layout.head_page(slug, row["layer"], row["head"]))
                ).read_text("utf-8")
        table = page.split('class="atlas-table atlas-head-metrics"')[1].split("</table>")[0]
        for name in ("entropy", "prev_token", "first_token", "distance"):
            assert f"<td>{row[name]:.3f}</td>" in table, (row["name"], name, row[name])


@pytest.mark.browser
def test_scatter_draws_every_head_and_opens_its_page(browser, demo_build):
    slug = DEMO_SLUGS[1]
    with serve_directory(demo_build.site) as url:
        ctx = browser.new_context(viewport={"width": 390, "height": 900})
        page = ctx.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + layout.served(layout.model_page(slug)))
        page.locator(".atlas-scatter").scroll_into_view_if_needed()
        page.wait_for_selector(".atlas-scatter-svg", timeout=30_000)
        assert page.locator(".atlas-scatter-point").count() == 16
        rings = page.locator(".atlas-scatter-point text")
        assert rings.count() == len(_planted(demo_build, slug, "prev_token")) + 2
        page.select_option('select[data-axis="x"]', "first_token")
        page.wait_for_function("document.querySelector('.atlas-scatter-svg')"
                               ".getAttribute('aria-label').startsWith('every head: First')")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        # Each point is a link: the keyboard opens it as a click does.
        page.locator(".atlas-scatter-point").filter(has_text="planted").first.focus()
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(rf"/heads/{slug}/L\d+\.H\d+\.html$"))
        assert "Planted:" in page.content()
        assert page.evaluate("performance.getEntriesByName('atlas-first-chart').length") == 1
        assert not errors, errors
        ctx.close()
