"""The render stage: artifacts -> Markdown pages, chart specs and data files (never imports torch).

`render_docs` reads and validates every artifact, then writes a complete MkDocs `docs_dir` (the
hand-written `site_src/` tree copied in, plus generated pages, data and charts) into a fresh
directory that replaces the old one only when it is complete. Generated files never mix into
`site_src/`. Pages are Jinja templates with autoescaping on: prompt text, tokens and model names
only ever enter a page as escaped values, never as template source.
"""

from __future__ import annotations

import base64
import html
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import jinja2
import markupsafe

from . import pagedata as pd
from . import typeset
from .charts import chart_specs
from .errors import ArtifactError
from .export import write_embed_pages
from .prompts import PromptSet
from .schema import SCHEMA_VERSION, attention_layer, attention_path, read_artifact
from .store import canonical_json

Log = Callable[[str], None]
REPO = Path(__file__).resolve().parent.parent


def resource_dir(name: str) -> Path:
    """templates/ and site_src/ of the checkout, or the copies installed inside the package."""
    for candidate in (REPO / name, Path(__file__).parent / "_data" / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cannot find the {name}/ directory of Model Atlas")


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


@dataclass
class Catalog:
    """Every artifact of a build, validated and grouped."""
    sets: list[PromptSet]
    models: list[ModelSummary]
    artifacts: dict[tuple[str, str], dict[str, Any]]   # (model slug, prompt key) -> artifact
    paths: dict[tuple[str, str], Path]

    @property
    def any_random(self) -> bool:
        return any(m.random_weights for m in self.models)


def load_catalog(artifacts_dir: Path, sets: list[PromptSet], slugs: list[str],
                 log: Log = print) -> Catalog:
    """Read and validate the artifact of every (model, prompt); the order of `slugs` is kept."""
    if not artifacts_dir.is_dir():
        raise ArtifactError(f"{artifacts_dir}: no artifacts directory. Run `model-atlas compute` "
                            f"first (or `model-atlas build`).")
    artifacts, paths, models = {}, {}, []
    for slug in slugs:
        summary = None
        for s in sets:
            for p in s.prompts:
                path = artifacts_dir / slug / s.id / f"{p.id}.json"
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
    log(f"render: {len(artifacts)} artifacts of {len(models)} models validated")
    return Catalog(sets, models, artifacts, paths)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(resource_dir("templates")),
        autoescape=True, trim_blocks=True, lstrip_blocks=True,
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["show_token"] = lambda t: pd.show_token(t["text"], t["bytes"], t["id"])
    env.filters["thousands"] = lambda n: f"{n:,}" if isinstance(n, int) else n
    env.filters["surprisal_style"] = _surprisal_style
    env.filters["char_style"] = lambda b: _surprisal_style(None if b is None else 4 * b)
    env.filters["prompt_title"] = lambda p: pd.prompt_title(p.text)
    env.filters["front_matter"] = _front_matter_string
    env.filters["typeset"] = typeset.formula_html
    env.globals["token_counts"] = pd.token_counts
    return env


def _front_matter_string(value: str) -> markupsafe.Markup:
    """A page title for the YAML front matter: MkDocs and Material write `page.meta.title` into
    <title> and the header unescaped, so it is HTML-escaped here, then quoted as a JSON string
    (valid YAML) so that quotes, colons and braces in a prompt's text stay text."""
    return markupsafe.Markup(json.dumps(html.escape(value, quote=False), ensure_ascii=False))


def _surprisal_style(bits: float | None) -> str:
    """A token chip's heat, 0 (expected) to 1 (16 bits or more), as the CSS variable --atlas-s.

    atlas.css turns it into a colour laid over the page (pale to deep orange in the light scheme,
    dark to orange in the dark one), so one page reads in both. No surprisal: no heat."""
    if bits is None:
        return ""
    level = min(max(bits, 0.0) / 16.0, 1.0)
    return f"--atlas-s: {0.06 + 0.94 * level:.2f}"


class Writer:
    """Collects the generated tree; `commit` swaps it in whole."""

    def __init__(self, final: Path):
        self.final = final
        self.tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.count = 0

    def text(self, rel: str, content: str) -> None:
        path = self.tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        self.count += 1

    def json(self, rel: str, obj: Any) -> None:
        self.text(rel, canonical_json(obj) + "\n")

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


def _rel_root(page: str) -> str:
    return "../" * page.count("/")


def _prompt_files(w: Writer, catalog: Catalog, s: PromptSet, p: Any) -> list[dict[str, Any]]:
    """Data files of one prompt page; returns what the template needs per model."""
    per_model = []
    for m in catalog.models:
        a = catalog.artifacts[(m.slug, p.key)]
        base = f"data/{m.slug}/{s.id}/{p.id}"
        tokens = pd.token_rows(a)
        w.json(f"{base}.json", {"tokens": tokens, "predictions": pd.prediction_rows(a)})
        w.json(f"{base}.lens.json", {"lens": pd.lens_rows(a)})
        w.json(f"{base}.heads.json", {"heads": pd.head_rows(a), "groups": pd.group_rows(a)})
        att = a["attention"]
        for layer in range(att["layers"]):
            # base64 in JSON: web servers compress JSON but often not binary files.
            w.json(f"{base}/L{layer}.json", {
                "layer": layer, "heads": att["heads"], "length": att["length"],
                "encoding": att["encoding"], "scale": att["scale"],
                "data": base64.b64encode(attention_layer(a, layer)).decode("ascii")})
        src = catalog.paths[(m.slug, p.key)]
        w.copy(src, f"artifacts/{m.slug}/{s.id}/{p.id}.json")
        w.copy(attention_path(src), f"artifacts/{m.slug}/{s.id}/{attention_path(src).name}")
        per_model.append({"summary": m, "artifact": a, "base": base, "tokens": tokens,
                          "chips": pd.chip_groups(a, tokens), "generation": a["generation"]})
    return per_model


def _comparison(w: Writer, catalog: Catalog, s: PromptSet, p: Any,
                per_model: list[dict[str, Any]]) -> dict[str, Any] | None:
    arts = [pm["artifact"] for pm in per_model]
    names = [pm["summary"].model_id for pm in per_model]
    segments = pd.aligned_segments(p.text, arts)
    w.json(f"data/compare/{s.id}/{p.id}.json",
           {"cumulative": pd.cumulative_rows(p.text, names, arts)})
    return {"segments": segments, "names": names,
            "agreement": pd.top1_agreement(arts) if len(arts) >= 2 else None,
            "data": f"data/compare/{s.id}/{p.id}.json"}


def render_docs(catalog: Catalog, docs_dir: Path, vendor_js: Path, log: Log = print) -> list[Any]:
    """Write the complete docs tree; return the nav (for mkdocs.yml)."""
    from .metrics import GROUP_METRIC_DEFINITIONS, METRIC_DEFINITIONS
    t0 = time.perf_counter()
    env = _environment()
    w = Writer(docs_dir)
    src = resource_dir("site_src")
    for f in sorted(src.rglob("*")):
        if f.is_file():
            w.copy(f, str(f.relative_to(src)))
    w.copy(vendor_js, "assets/vendor/vega-bundle.js")
    for name, spec in chart_specs().items():
        w.json(f"charts/{name}.vl.json", spec)
    common = {"catalog": catalog, "models": catalog.models, "sets": catalog.sets,
              "build_date": build_date(), "schema_version": SCHEMA_VERSION,
              "metric_defs": METRIC_DEFINITIONS, "group_defs": GROUP_METRIC_DEFINITIONS}

    def page(rel: str, template: str, **ctx: Any) -> None:
        w.text(rel, env.get_template(template).render(root=_rel_root(rel), page=rel, **common,
                                                       **ctx))

    page("index.md", "home.md.j2")
    keys = [p.key for s in catalog.sets for p in s.prompts]
    for m in catalog.models:
        atlas = pd.head_atlas(m.slug, keys, [catalog.artifacts[(m.slug, k)] for k in keys])
        w.json(f"data/{m.slug}/atlas.json", {"atlas": atlas["rows"]})
        page(f"models/{m.slug}.md", "model.md.j2", model=m, atlas=atlas["rows"])
    done = 0
    tok_rows = []
    for s in catalog.sets:
        page(f"sets/{s.id}.md", "set.md.j2", set=s)
        for p in s.prompts:
            per_model = _prompt_files(w, catalog, s, p)
            compare = _comparison(w, catalog, s, p, per_model)
            page(f"prompts/{s.id}/{p.id}.md", "prompt.md.j2", set=s, prompt=p,
                 per_model=per_model, compare=compare)
            tok_rows.append({"set": s, "prompt": p, "script": pd.script_of(p.text),
                             "stats": [pd.tokenizer_stats(p, pm["artifact"]) for pm in per_model],
                             "counts": [pd.token_counts(pm["artifact"]) for pm in per_model],
                             "chips": [pd.chip_groups(pm["artifact"], pm["tokens"],
                                                      generated=False) for pm in per_model]})
            done += 1
            if done % 10 == 0:
                log(f"render: {done} prompt pages written")
    by_script = _tokenizer_summary(catalog, tok_rows)
    w.json("data/compare/tokenizers.json", {"scripts": by_script})
    differ = sorted(tok_rows, key=lambda r: (-_spread(r["stats"]), r["prompt"].key))[:8]
    page("compare/tokenizers.md", "tokenizers.md.j2", rows=tok_rows, by_script=by_script,
         differ=differ)
    page("compare/architectures.md", "architectures.md.j2")
    write_embed_pages(w, log)
    w.commit()
    log(f"render: {w.count} files written to {docs_dir} in {time.perf_counter() - t0:.1f}s")
    # MkDocs inserts nav titles into pages unescaped: escape the set titles and model ids here.
    nav: list[Any] = [{"Home": "index.md"}]
    # Labels a reader can use: the set's overview as "Overview" under the set's title, each
    # prompt by its first words (pd.prompt_title, as the page's own title), never by its slug.
    nav.append({"Prompt sets": [
        {html.escape(s.title, quote=False):
         [{"Overview": f"sets/{s.id}.md"}]
         + [{html.escape(pd.prompt_title(p.text), quote=False): f"prompts/{s.id}/{p.id}.md"}
            for p in s.prompts]}
        for s in catalog.sets]})
    nav.append({"Models": [{html.escape(m.model_id, quote=False): f"models/{m.slug}.md"}
                           for m in catalog.models]})
    nav.append({"Comparisons": [{"Tokenizers": "compare/tokenizers.md"},
                                {"Architectures": "compare/architectures.md"}]})
    nav.append({"Reference": [{"About Model Atlas": "about.md"},
                              {"Head metrics": "metrics.md"},
                              {"Artifact format": "artifact-format.md"},
                              {"Prompt-set format": "prompt-sets.md"},
                              {"Embedding charts": "embedding.md"}]})
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


def iter_files(root: Path) -> Iterable[Path]:
    return (p for p in sorted(root.rglob("*")) if p.is_file())
