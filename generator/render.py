"""The render stage: artifacts -> Markdown pages, chart specs and data files (never imports torch).

`load_catalog` reads and validates every artifact; `render_docs` then writes a complete MkDocs
`docs_dir` (the hand-written `site_src/` tree copied in, plus generated pages, data files, chart
specs, and for every chart a download and an embed page, generator/embed.py) into a fresh
directory that replaces the old one only when it is complete. Every path it writes comes from
generator/layout.py. Last it writes the manifest (generator/manifest.py), the record that
`model-atlas export` reads. Generated files never mix into `site_src/`. Pages are Jinja templates
with autoescaping on (generator/templating.py, the one Jinja environment of the site): prompt
text, tokens and model names only ever enter a page as escaped values, never as template source.
"""

from __future__ import annotations

import base64
import html
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from . import embed, head_pages, lanes, layout, overview, tokenize_page
from . import pagedata as pd
from .charts import ATLAS_TOP, chart_specs
from .embed import ChartRef, ModelInfo
from .errors import ArtifactError
from .manifest import manifest_data
from .prompts import PromptSet
from .resources import resource_path
from .schema import DLA_TOP_K, SCHEMA_VERSION, attention_head, attention_path, read_artifact
from .skips import SkipRecord, read_skip
from .store import canonical_json, gzip_text, sha256_bytes
from .templating import environment, surprisal_style

Log = Callable[[str], None]
AGREEMENT_WINDOW = 12     # rows of the comparison table around the selected position (atlas.js)
# A comparison with more segments than this keeps its aligned text and its agreement table's rows
# (but the first window) out of the page, in files of their own (layout.prompt_part) that the page
# script loads when the reader comes near: a 2,048-token page's HTML stays small (issue 16).
INLINE_SEGMENTS = 400
# A prompt with more tokens than this has compact chips in its page (templates/_macros.j2 chip):
# the page script completes them, their titles made from the token file it fetches anyway.
FULL_CHIPS = 400
# gzip level of the per-head attention files. On the demo's 1,568 head files (8.6 MB of JSON),
# levels 1, 4 and 6 take 0.11, 0.18 and 0.59 s and leave 55.4, 51.6 and 50.3 % of the bytes: 4
# keeps nearly all of 6's saving at a third of its time.
HEAD_GZIP_LEVEL = 4


def build_date() -> str:
    """The one place the build date comes from: SOURCE_DATE_EPOCH if set, else today (UTC)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    return when.strftime("%Y-%m-%d")


@dataclass
class ModelSummary:
    slug: str
    model_id: str
    revision: str
    random_weights: bool
    facts: dict[str, Any]
    provenance: dict[str, Any]
    prompts: list[str] = field(default_factory=list)

    @property
    def planted(self) -> bool:
        """Constructed demo weights with planted heads (random weights have none)."""
        return bool(self.facts.get("planted_heads"))


@dataclass
class Catalog:
    """Every artifact of a build, validated and grouped."""
    sets: list[PromptSet]
    models: list[ModelSummary]
    artifacts: dict[tuple[str, str], dict[str, Any]]   # (model slug, prompt key) -> artifact
    paths: dict[tuple[str, str], Path]
    artifacts_dir: Path = Path("build/artifacts")   # the models' tokenizers and OV files lie by it
    # (model slug, prompt key) -> why that model has no artifact: the prompt is longer than its
    # context (`skips`). Such a pair is in neither `artifacts` nor its model's `prompts`.
    skipped: dict[tuple[str, str], SkipRecord] = field(default_factory=dict)

    @property
    def any_random(self) -> bool:
        return any(m.random_weights for m in self.models)

    def slugs_of_skipped(self, key: str) -> list[str]:
        """The models that skipped prompt `key` (longer than their context), in build order."""
        return [slug for slug, k in self.skipped if k == key]


def load_catalog(artifacts_dir: Path, sets: list[PromptSet], slugs: list[str],
                 log: Log = print) -> Catalog:
    """Read and validate the artifact of every (model, prompt); the order of `slugs` is kept."""
    if not artifacts_dir.is_dir():
        raise ArtifactError(f"{artifacts_dir}: no artifacts directory. Run `model-atlas compute` "
                            f"first (or `model-atlas build`).")
    artifacts, paths, models, skipped = {}, {}, [], {}
    for slug in slugs:
        summary = None
        for s in sets:
            for p in s.prompts:
                path = layout.artifact_path(artifacts_dir, slug, s.id, p.id)
                if not path.exists() and (record := _skip_record(artifacts_dir, slug, p)):
                    skipped[(slug, p.key)] = record
                    continue
                if not path.exists():
                    raise ArtifactError(
                        f"{path}: missing artifact for prompt {p.key} and model {slug}. Run "
                        f"`model-atlas compute` (with every --shard when sharding) before render.")
                a = read_artifact(path)
                if a["prompt"]["text"] != p.text:
                    raise ArtifactError(f"{path}: computed for another text of prompt {p.key} "
                                        f"(the prompt set changed). Run `model-atlas compute`.")
                prov = a["provenance"]
                if summary is None:
                    summary = ModelSummary(slug, prov["model_id"], prov["revision"],
                                           prov["random_weights"], a["model"], prov)
                elif prov["revision"] != summary.revision:
                    raise ArtifactError(
                        f"{path}: made from revision {prov['revision']} of {summary.model_id}, but "
                        f"other artifacts come from {summary.revision}. Mixed revisions in one "
                        f"site: recompute with `model-atlas compute` for one revision.")
                summary.prompts.append(p.key)
                artifacts[(slug, p.key)] = a
                paths[(slug, p.key)] = path
        if summary is not None:
            models.append(summary)
    log(f"render: {len(artifacts)} artifacts of {len(models)} models validated"
        + (f", {len(skipped)} prompt(s) skipped for a model whose context they exceed"
           if skipped else ""))
    return Catalog(sets, models, artifacts, paths, artifacts_dir, skipped)


def _skip_record(artifacts_dir: Path, slug: str, p: Any) -> SkipRecord | None:
    """The skip record of (model, prompt), if the compute stage wrote one for this text."""
    path = layout.skip_record_path(artifacts_dir, slug, p.set_id, p.id)
    if not path.exists():
        return None
    record = read_skip(path)
    if record.prompt_sha256 != sha256_bytes(p.text.encode()):
        raise ArtifactError(f"{path}: written for another text of prompt {p.key} (the prompt set "
                            f"changed). Run `model-atlas compute`.")
    return record


class Writer:
    """Collects the generated tree; `commit` swaps it in whole."""

    def __init__(self, final: Path):
        self.final = final
        self.tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.count = 0

    def text(self, rel: str, content: str) -> None:
        self.bytes(rel, content.encode("utf-8"))

    def bytes(self, rel: str, content: bytes) -> None:
        path = self.tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        self.count += 1

    def json(self, rel: str, obj: Any) -> None:
        self.text(rel, canonical_json(obj) + "\n")

    def json_gz(self, rel: str, obj: Any, level: int) -> None:
        """`json`, gzipped (`store.gzip_text`: a rebuild writes the same bytes)."""
        self.bytes(rel, gzip_text(canonical_json(obj) + "\n", level))

    def copy(self, src: Path, rel: str) -> None:
        path = self.tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)
        self.count += 1

    def commit(self) -> None:
        old = self.final.with_name(self.final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if self.final.exists():
            self.final.rename(old)
        self.tmp.rename(self.final)
        shutil.rmtree(old, ignore_errors=True)


def discard_unfinished(docs_dir: Path) -> None:
    """Delete what a failed render left half-written (its `Writer`'s tree; the last complete
    docs tree stays), so that a full disk gets its space back."""
    shutil.rmtree(docs_dir.with_name(docs_dir.name + ".tmp"), ignore_errors=True)


def _model_info(m: ModelSummary) -> ModelInfo:
    return ModelInfo(m.slug, m.model_id, m.facts["layers"], m.facts["query_heads"],
                     m.facts["kv_heads"], m.random_weights, tuple(m.prompts))


class _Site:
    """One render: the writer, the Jinja environment, what every page gets, and every chart
    written so far (for the manifest). Pages and charts are written as they are made, so the rows
    of one prompt are let go before the next."""

    def __init__(self, catalog: Catalog, w: Writer, log: Log):
        from .metrics import GROUP_METRIC_DEFINITIONS, METRIC_DEFINITIONS
        self.catalog, self.w, self.log = catalog, w, log
        self.env = environment()
        self.specs = chart_specs()
        self.models = {m.slug: _model_info(m) for m in catalog.models}
        self.charts: list[ChartRef] = []
        self.common = {"catalog": catalog, "models": catalog.models, "sets": catalog.sets,
                       "build_date": build_date(), "schema_version": SCHEMA_VERSION,
                       "metric_defs": METRIC_DEFINITIONS, "group_defs": GROUP_METRIC_DEFINITIONS,
                       "chart_top_k": pd.CHART_TOP_K, "dla_top_k": DLA_TOP_K}

    def page(self, rel: str, template: str, **ctx: Any) -> None:
        self.w.text(rel, self.env.get_template(template).render(
            urls=layout.Urls(rel), **self.common, **ctx))

    def chart(self, ref: ChartRef, datasets: dict[str, Any] | None = None,
              data: dict[str, Any] | None = None, note: str | None = None) -> None:
        """Write one chart's download and embed page, its datasets given or taken from `data`
        (the content of its data file); `note`: a line of its subtitle (`embed.chart_title`)."""
        spec = self.specs[ref.name]
        if datasets is None:
            datasets = embed.datasets_from(spec, data or {}, ref.data, ref.name)
        embed.write_chart(self.w.text, self.env, self.models, ref, spec, datasets, note)
        self.charts.append(ref)

    def static_files(self, vendor_js: Path) -> None:
        """site_src/ as it is, the Vega bundle and the chart specs."""
        src = resource_path("site_src")
        for f in sorted(src.rglob("*")):
            if f.is_file():
                self.w.copy(f, f.relative_to(src).as_posix())
        self.w.copy(vendor_js, layout.VENDOR_BUNDLE)
        for name, spec in self.specs.items():
            self.w.json(layout.chart_spec(name), spec)

    def model_pages(self) -> None:
        for m in self.catalog.models:
            page = layout.model_page(m.slug)
            keys = m.prompts                  # the prompts it has an artifact of, in set order
            atlas = pd.head_atlas(
                m.slug, keys, [self.catalog.artifacts[(m.slug, k)] for k in keys],
                link=lambda key, layer, head, slug=m.slug, page=page:
                layout.Urls(page).prompt_head(key, slug, layer, head))
            data = {"atlas": atlas["rows"]}
            self.w.json(layout.atlas_data(m.slug), data)
            charts = embed.atlas_charts(self.models[m.slug], self.specs)
            for ref in charts.values():
                self.chart(ref, data=data)
            self.page(page, "model.md.j2", model=m, atlas=atlas["rows"],
                      atlas_top=min(ATLAS_TOP, m.facts["layers"] * m.facts["query_heads"]),
                      charts=charts)

    def prompt_files(self, p: Any) -> list[dict[str, Any]]:
        """Data files and charts of one prompt; what the page needs per model. (`attention_files`
        writes its per-head attention files and artifact copies, in render's other lane.)"""
        per_model = []
        for m in self.catalog.models:
            a = self.catalog.artifacts.get((m.slug, p.key))
            if a is None:                     # skipped: longer than its context (`skipped_of`)
                continue
            tokens, lens = pd.token_rows(a), pd.lens_rows(a)
            files = {layout.prompt_data(m.slug, p.key): {"tokens": tokens,
                                                          "predictions": pd.prediction_rows(a)},
                     layout.prompt_lens(m.slug, p.key): {"lens": lens},
                     layout.prompt_heads(m.slug, p.key): {"heads": pd.head_rows(a),
                                                          "groups": pd.group_rows(a)}}
            for rel, content in files.items():
                self.w.json(rel, content)
            dla = pd.attribution_data(a)
            self.w.json(layout.prompt_dla(m.slug, p.key), dla)
            self.w.json(layout.attention_thumbs(m.slug, p.key), overview.thumbnails(a))
            self.w.json(layout.attention_labels(m.slug, p.key), {
                "labels": [t["label"] for t in tokens],
                "prompt_tokens": sum(not t["generated"] for t in tokens)})
            charts = embed.prompt_charts(self.models[m.slug], p.key, self.specs)
            for name, ref in charts.items():
                if name == "attention":
                    self.chart(ref, {"attention": embed.attention_rows(a, 0, 0, tokens)},
                               note=embed.pooled_note(len(tokens)))
                else:
                    self.chart(ref, data=files[ref.data])
            per_model.append({"summary": m, "artifact": a, "tokens": tokens, "lens": lens,
                              "charts": charts, "chips": pd.chip_groups(a, tokens),
                              "full_chips": len(tokens) <= FULL_CHIPS,
                              "chip_heat": chip_heat(tokens) if len(tokens) > FULL_CHIPS else "",
                              "generation": a["generation"],
                              "dla": layout.prompt_dla(m.slug, p.key),
                              "thumbs": layout.attention_thumbs(m.slug, p.key),
                              "labels": layout.attention_labels(m.slug, p.key),
                              "dla_list": pd.dla_list(dla, dla["default"], "top1"),
                              # The position every position-indexed view opens at, and its window.
                              "selected": dla["default"],
                              "window": pd.position_window(len(tokens), dla["default"])})
        return per_model

    def attention_files(self, slug: str, key: str, a: dict[str, Any]) -> None:
        att = a["attention"]
        for layer in range(att["layers"]):
            for head in range(att["heads"]):
                # One file per head: switching heads fetches only that head. Gzipped by us, not
                # left to the host: one that compresses nothing (python -m http.server, many
                # object stores) sent a 2,048-token head's 242 kB of JSON whole.
                self.w.json_gz(layout.attention_head(slug, key, layer, head), {
                    "layer": layer, "head": head, "length": att["length"],
                    "encoding": att["encoding"], "scale": att["scale"],
                    "data": base64.b64encode(attention_head(a, layer, head)).decode("ascii")},
                    HEAD_GZIP_LEVEL)
        src, copy = self.catalog.paths[(slug, key)], layout.artifact_copy(slug, key)
        self.w.copy(src, copy)
        self.w.copy(attention_path(src), attention_path(copy).as_posix())

    def comparison(self, p: Any, per_model: list[dict[str, Any]]) -> dict[str, Any]:
        """The prompt's data and chart across models, and what its page shows of them."""
        arts = [pm["artifact"] for pm in per_model]
        names = [pm["summary"].model_id for pm in per_model]
        ref = embed.compare_chart(p.key)
        data = {"cumulative": pd.cumulative_rows(p.text, names, arts)}
        self.w.json(ref.data, data)
        self.chart(ref, data=data)
        agreement = pd.top1_agreement(arts) if len(arts) >= 2 else None
        if agreement:
            # The rows the page shows first: the window at the end of the prompt, where every
            # position-indexed view opens (atlas.js moves it with the selected position).
            n = len(agreement["rows"])
            agreement["window"] = pd.position_window(n, n - 1, AGREEMENT_WINDOW)
        compare = {"segments": pd.aligned_segments(p.text, arts), "names": names,
                   "agreement": agreement, "chart": ref}
        compare["parts"] = self.prompt_parts(p.key, compare)
        return compare

    def prompt_parts(self, key: str, compare: dict[str, Any]) -> dict[str, Any]:
        """Where a long comparison's aligned text and agreement rows went (layout.prompt_part),
        written here, and the agreement rows the page holds itself ("first", inclusive)."""
        ag = compare["agreement"]
        n = len(ag["rows"]) if ag else 0
        if len(compare["segments"]) <= INLINE_SEGMENTS:
            return {"aligned": None, "agreement": None, "first": (0, n - 1)}
        macros = self.env.get_template("_positions.j2").module
        aligned = layout.prompt_part(key, "aligned")
        self.w.json(aligned, {"html": str(macros.aligned_rows(compare))})
        if not ag:
            return {"aligned": aligned, "agreement": None, "first": (0, -1)}
        rows = layout.prompt_part(key, "agreement")
        self.w.json(rows, {"html": str(macros.agreement_rows(compare, 0, n - 1, ag["window"]))})
        return {"aligned": aligned, "agreement": rows, "first": ag["window"]}

    def prompt_pages(self) -> list[dict[str, Any]]:
        """Every set page and prompt page; returns the tokenizer rows of every prompt that every
        model computed (none of them skipped it)."""
        done, tok_rows = 0, []
        for s in self.catalog.sets:
            self.page(layout.set_page(s.id), "set.md.j2", set=s)
            for p in s.prompts:
                per_model = self.prompt_files(p)
                compare = self.comparison(p, per_model) if per_model else None
                skipped = self.skipped_of(p)
                self.page(layout.prompt_page(p.key), "prompt.md.j2", set=s, prompt=p,
                          per_model=per_model, compare=compare, skipped=skipped,
                          domains=shared_domains(per_model))
                if not skipped:               # the tokenizer comparison needs every model
                    tok_rows.append({"set": s, "prompt": p, "script": pd.script_of(p.text),
                                     "stats": [pd.tokenizer_stats(p, pm["artifact"])
                                               for pm in per_model],
                                     "counts": [pd.token_counts(pm["artifact"])
                                                for pm in per_model],
                                     "chips": [pd.chip_groups(pm["artifact"], pm["tokens"],
                                                              generated=False)
                                               for pm in per_model]})
                done += 1
                if done % 10 == 0:
                    self.log(f"render: {done} prompt pages written")
        return tok_rows

    def skipped_of(self, p: Any) -> list[dict[str, Any]]:
        """The models a prompt is too long for, in the catalog's order, with what their column
        on the prompt page says (`_skipped.j2`)."""
        out = []
        for slug in self.catalog.slugs_of_skipped(p.key):
            record = self.catalog.skipped[(slug, p.key)]
            out.append({"slug": slug, "model_id": record.model_id, "message": record.message,
                        "tokens": record.tokens, "context_length": record.context_length})
        return out

    def comparison_pages(self, tok_rows: list[dict[str, Any]]) -> None:
        by_script = _tokenizer_summary(self.catalog, tok_rows)
        ref = embed.tokenizers_chart()
        data = {"scripts": by_script}
        self.w.json(ref.data, data)
        self.chart(ref, data=data)
        differ = sorted(tok_rows, key=lambda r: (-_spread(r["stats"]), r["prompt"].key))[:8]
        self.page(layout.TOKENIZERS_PAGE, "tokenizers.md.j2", rows=tok_rows, by_script=by_script,
                  differ=differ, tokenizers_chart=ref)
        self.page(layout.ARCHITECTURES_PAGE, "architectures.md.j2")

    def tokenize_pages(self) -> None:
        """"Tokenize your own text", its embed page, and the tokenizers they load
        (generator/tokenize_page.py)."""
        tokenize_page.copy_into_site(self.w.copy, self.w.text, self.catalog.artifacts_dir,
                                     [m.slug for m in self.catalog.models])
        for rel, template in ((layout.TOKENIZE_PAGE, "tokenize.md.j2"),
                              (layout.TOKENIZE_EMBED, "tokenize-embed.html.j2")):
            self.page(rel, template,
                      **tokenize_page.page_context(self.catalog.models, layout.Urls(rel)))

    def manifest(self) -> None:
        self.w.json(layout.MANIFEST, manifest_data(list(self.models.values()), list(self.specs),
                                                   self.charts))


def chip_heat(tokens: list[dict[str, Any]]) -> str:
    """The heat of every compact chip, in token order, comma-separated (a holder's data-heat):
    surprisal_style's --atlas-s value in fewer characters (".87" for 0.87, "1" for 1.00), empty
    for a token without surprisal. atlas.js fullChips sets it on each chip."""
    def one(bits: float | None) -> str:
        value = surprisal_style(bits).partition(": ")[2]
        return "1" if value == "1.00" else value.removeprefix("0")
    return ",".join(one(t["surprisal"]) for t in tokens)


def shared_domains(per_model: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Scale domains shared by both models' charts of one prompt page, so that the same colour
    and the same axis position mean the same value side by side. Keyed by chart; each value is
    the params of that chart's spec (generator/charts.py), which atlas.js sets before drawing."""
    def top(values: Any) -> float | None:
        vals = [v for v in values if v is not None]
        return round(max(vals), 3) if vals else None

    entropy = [v for pm in per_model for row in pm["artifact"]["metrics"]["entropy"] for v in row
               if v is not None]
    return {"surprisal": {"surprisal_max": top(t["surprisal"] for pm in per_model
                                               for t in pm["tokens"])},
            "heads": {"entropy_min": round(min(entropy), 3) if entropy else None,
                      "entropy_max": round(max(entropy), 3) if entropy else None},
            "lens": {"lrank_max": top(r["lrank"] for pm in per_model for r in pm["lens"])}}


def render_docs(catalog: Catalog, docs_dir: Path, vendor_js: Path, log: Log = print) -> list[Any]:
    """Write the complete docs tree; return the nav (for mkdocs.yml)."""
    t0 = time.perf_counter()
    w = Writer(docs_dir)
    site = _Site(catalog, w, log)
    site.static_files(vendor_js)
    site.page(layout.HOME, "home.md.j2")
    site.model_pages()
    # The head pages (every head of every model, from all of its artifacts) and every prompt's
    # per-head attention files and artifact copies in a second lane, while this one writes the
    # prompt pages: they share no file and need nothing of each other.
    heads = lanes.Beside(lambda: _head_lane(site))
    try:
        site.comparison_pages(site.prompt_pages())
        site.tokenize_pages()
        site.manifest()
        written, lines = heads.join()
    finally:
        heads.stop()
    w.count += written
    for line in lines:
        log(line)
    w.commit()
    log(f"render: {w.count} files ({len(site.charts)} charts with embed pages and downloads) "
        f"written to {docs_dir} in {time.perf_counter() - t0:.1f}s")
    return navigation(catalog)


def _head_lane(site: _Site) -> tuple[int, list[str]]:
    """The second lane of `render_docs`: every prompt's per-head attention files and artifact
    copies, then `head_pages.write_all`. Returns the count of files it wrote and its log lines,
    both for the parent to add when it joins (a forked lane cannot write to the parent's log or
    count; in one lane, this is the parent's site object, left as it was)."""
    lines: list[str] = []
    log, site.log, before = site.log, lines.append, site.w.count
    try:
        for (slug, key), a in site.catalog.artifacts.items():
            site.attention_files(slug, key, a)
        head_pages.write_all(site)
        return site.w.count - before, lines
    finally:
        site.log, site.w.count = log, before


def navigation(catalog: Catalog) -> list[Any]:
    """The site's navigation, for mkdocs.yml."""
    # MkDocs inserts nav titles into pages unescaped: escape the set titles and model ids here.
    nav: list[Any] = [{"Home": layout.HOME}]
    # Labels a reader can use: the set's overview as "Overview" under the set's title, each
    # prompt by its first words (pd.prompt_title, as the page's own title), never by its slug.
    nav.append({"Prompt sets": [
        {html.escape(s.title, quote=False):
         [{"Overview": layout.set_page(s.id)}]
         + [{html.escape(pd.prompt_title(p.text), quote=False): layout.prompt_page(p.key)}
            for p in s.prompts]}
        for s in catalog.sets]})
    nav.append({"Models": [{html.escape(m.model_id, quote=False): layout.model_page(m.slug)}
                           for m in catalog.models]})
    nav.append({"Comparisons": [{"Tokenizers": layout.TOKENIZERS_PAGE},
                                {"Tokenize your own text": layout.TOKENIZE_PAGE},
                                {"Architectures": layout.ARCHITECTURES_PAGE}]})
    nav.append({"Reference": [{title: rel} for title, rel in layout.REFERENCE_PAGES.items()]})
    return nav


def _spread(stats: list[dict[str, Any]]) -> float:
    counts = [s["tokens"] for s in stats]
    return max(counts) / max(min(counts), 1)


def _tokenizer_summary(catalog: Catalog, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean tokens per character and per word, and byte pieces, by script and model."""
    out = []
    scripts = sorted({r["script"] for r in rows})
    for script in scripts:
        mine = [r for r in rows if r["script"] == script]
        for i, m in enumerate(catalog.models):
            stats = [r["stats"][i] for r in mine]
            out.append({"script": script, "model": m.model_id, "prompts": len(mine),
                        "per_char": round(sum(x["per_char"] for x in stats) / len(stats), 3),
                        "per_word": round(sum(x["per_word"] for x in stats) / len(stats), 2),
                        "byte_pieces": sum(x["byte_pieces"] for x in stats)})
    return out
