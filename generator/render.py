"""The render stage: artifacts -> Markdown pages, chart specs and data files (never imports torch).

`render_docs` reads and validates every artifact, then writes a complete MkDocs `docs_dir` (the
hand-written `site_src/` tree copied in, plus generated pages, data and charts) into a fresh
directory that replaces the old one only when it is complete. Generated files never mix into
`site_src/`. Pages are Jinja templates with autoescaping on: prompt text, tokens and model names
only ever enter a page as escaped values, never as template source.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import jinja2

from .charts import chart_specs
from .errors import ArtifactError
from .prompts import PromptSet
from .schema import SCHEMA_VERSION, read_artifact
from .store import atomic_write_json, atomic_write_text, canonical_json

Log = Callable[[str], None]
REPO = Path(__file__).resolve().parent.parent
LN2 = math.log(2)
_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def resource_dir(name: str) -> Path:
    """templates/ and site_src/ of the checkout, or the copies installed inside the package."""
    for candidate in (REPO / name, Path(__file__).parent / "_data" / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cannot find the {name}/ directory of Model Atlas")


def show_token(text: str | None, hexed: str, tid: int | None = None) -> str:
    """A token as a reader should see it: whitespace and invisible characters made visible,
    partial UTF-8 pieces as their bytes."""
    if text is None:
        return "<" + " ".join(hexed[i:i + 2] for i in range(0, len(hexed), 2)) + ">"
    if text == "":
        return f"[{tid}]" if tid is not None else "[empty]"
    out = []
    for ch in text:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Co", "Cn"):
            out.append(f"⟨U+{ord(ch):04X}⟩")
        else:
            out.append(ch)
    return "".join(out)


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


def _surprisal(logprob: float | None) -> float | None:
    return None if logprob is None else round(-logprob / LN2, 3)


def page_data(a: dict[str, Any]) -> dict[str, Any]:
    """What a prompt page fetches for one model: tokens with surprisal, and the predictions."""
    toks = a["tokens"]
    shown = [show_token(t["text"], t["bytes"], t["id"]) for t in toks]
    labels = [f"{i}: {s}" for i, s in enumerate(shown)]
    pred = a["predictions"]
    tokens = []
    for i, t in enumerate(toks):
        prev = i - 1
        tokens.append({
            "i": i, "label": labels[i], "text": shown[i], "id": t["id"],
            "surprisal": _surprisal(pred["next_logprob"][prev]) if i > 0 else None,
            "rank": pred["next_rank"][prev] if i > 0 else None,
            "next": shown[i + 1] if i + 1 < len(toks) else "(end of prompt)",
        })
    vocab = a["vocab"]
    predictions = []
    for i, (ids, probs) in enumerate(zip(pred["ids"], pred["probs"])):
        actual = shown[i + 1] if i + 1 < len(toks) else "(end of prompt)"
        for r, (tid, p) in enumerate(zip(ids, probs), start=1):
            v = vocab[str(tid)]
            predictions.append({"pos": i, "pl": labels[i], "rank": r, "prob": p, "actual": actual,
                                "token": show_token(v["text"], v["bytes"], tid)})
    m = a["model"]
    return {"model": a["provenance"]["model_slug"], "layers": m["layers"],
            "heads": m["query_heads"], "kv_heads": m["kv_heads"], "tokens": tokens,
            "predictions": predictions}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(resource_dir("templates")),
        autoescape=True, trim_blocks=True, lstrip_blocks=True,
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["show_token"] = lambda t: show_token(t["text"], t["bytes"], t["id"])
    env.filters["thousands"] = lambda n: f"{n:,}" if isinstance(n, int) else n
    env.filters["surprisal_style"] = _surprisal_style
    return env


def _surprisal_style(bits: float | None) -> str:
    """Background colour for a token chip: white (expected) to deep orange (surprising)."""
    if bits is None:
        return "background: transparent"
    level = min(bits / 16.0, 1.0)
    return f"background: hsl(24, 95%, {98 - 48 * level:.0f}%)"


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


def render_docs(catalog: Catalog, docs_dir: Path, vendor_js: Path, log: Log = print) -> list[str]:
    """Write the complete docs tree; return the nav (for mkdocs.yml)."""
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
              "build_date": build_date(), "schema_version": SCHEMA_VERSION}

    def page(rel: str, template: str, **ctx: Any) -> None:
        w.text(rel, env.get_template(template).render(root=_rel_root(rel), page=rel, **common,
                                                       **ctx))

    page("index.md", "home.md.j2")
    for m in catalog.models:
        page(f"models/{m.slug}.md", "model.md.j2", model=m)
    done = 0
    for s in catalog.sets:
        page(f"sets/{s.id}.md", "set.md.j2", set=s)
        for p in s.prompts:
            per_model = []
            for m in catalog.models:
                a = catalog.artifacts[(m.slug, p.key)]
                base = f"data/{m.slug}/{s.id}/{p.id}"
                data = page_data(a)
                w.json(f"{base}.json", data)
                for layer, blob in enumerate(a["attention"]["data"]):
                    w.json(f"{base}/L{layer}.json", {"layer": layer, "heads": a["attention"]["heads"],
                                                     "length": a["attention"]["length"],
                                                     "data": blob})
                w.copy(catalog.paths[(m.slug, p.key)], f"artifacts/{m.slug}/{s.id}/{p.id}.json")
                per_model.append({"summary": m, "artifact": a, "data": f"{base}.json",
                                  "attn_prefix": f"{base}/L",
                                  "tokens": data["tokens"]})
            page(f"prompts/{s.id}/{p.id}.md", "prompt.md.j2", set=s, prompt=p, per_model=per_model)
            done += 1
            if done % 10 == 0:
                log(f"render: {done} prompt pages written")
    w.commit()
    log(f"render: {w.count} files written to {docs_dir} in {time.perf_counter() - t0:.1f}s")
    nav: list[Any] = [{"Home": "index.md"}]
    nav.append({"Prompt sets": [
        {s.title: [f"sets/{s.id}.md"] + [{p.id: f"prompts/{s.id}/{p.id}.md"} for p in s.prompts]}
        for s in catalog.sets]})
    nav.append({"Models": [{m.model_id: f"models/{m.slug}.md"} for m in catalog.models]})
    nav.append({"Reference": [{"About Model Atlas": "about.md"},
                              {"Artifact format": "artifact-format.md"},
                              {"Prompt-set format": "prompt-sets.md"}]})
    return nav


def iter_files(root: Path) -> Iterable[Path]:
    return (p for p in sorted(root.rglob("*")) if p.is_file())
