"""`model-atlas export`: the charts of the last build as standalone files (no torch).

Per chart a self-contained HTML file (the vendored Vega bundle, the chart's script and the spec
inlined, so it opens from file:// with no network), the spec as `.vl.json`, an SVG and a PNG
(vl-convert), under `<out>/<scope>/<chart>.<ext>`, laid out like the site's stable URLs
(generator/layout.py).

Export reads what render recorded in the docs tree: its manifest (generator/manifest.py), which
lists every chart and the data file that fills it, and those files. An attention chart is decoded
from the artifact copy the manifest names, read and checked by `schema.read_artifact`. The specs
are completed by generator/embed.py, as render's downloads are, so both are the same bytes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from . import layout
from .embed import (ChartRef, ModelInfo, attention_rows, chart_title, complete_spec, datasets_from,
                    pooled_note, standalone_html)
from .errors import ArtifactError, AtlasError, OptionError
from .manifest import Manifest, read_manifest
from .schema import read_artifact
from .store import atomic_write_bytes, canonical_json
from .templating import environment

Log = Callable[[str], None]
FORMATS = ("html", "json", "svg", "png")
SUFFIXES = {"html": ".html", "json": layout.SPEC_SUFFIX, "svg": ".svg", "png": ".png"}
PNG_SCALE = 2


@dataclass
class Inventory:
    """The charts, models and prompts of one built docs tree, from its manifest."""
    docs: Path
    manifest: Manifest
    _artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def models(self) -> dict[str, ModelInfo]:
        return self.manifest.models

    @property
    def prompts(self) -> list[str]:
        return self.manifest.prompts

    @property
    def kinds(self) -> list[str]:
        return self.manifest.kinds

    def spec(self, name: str) -> dict[str, Any]:
        return _read_json(self.docs / layout.chart_spec(name))

    def data(self, rel: str) -> dict[str, Any]:
        path = self.docs / rel
        if not path.is_file():
            raise ArtifactError(f"{path}: missing data file of the last build. Run "
                                f"`model-atlas render` (or `model-atlas build`) again.")
        return _read_json(path)

    def artifact(self, rel: str) -> dict[str, Any]:
        """An artifact copy of the docs tree, validated with its attention file (one at a time:
        the charts of one prompt come one after another)."""
        if rel not in self._artifacts:
            self._artifacts.clear()
            self._artifacts[rel] = read_artifact(self.docs / rel)
        return self._artifacts[rel]


@lru_cache(maxsize=16)
def _read_cached(path: str, mtime_ns: int, size: int) -> Any:
    return json.loads(Path(path).read_text("utf-8"))


def _read_json(path: Path) -> Any:
    """A JSON file, parsed once per version (the same data file fills several charts): shared,
    so callers copy what they change."""
    try:
        stat = path.stat()
        return _read_cached(str(path), stat.st_mtime_ns, stat.st_size)
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path}: cannot read it ({e}). Run `model-atlas render` (or "
                            f"`model-atlas build`) again.") from None


# --- what a built docs tree holds -----------------------------------------------------------------


def load_inventory(docs_dir: Path) -> Inventory:
    """Models, prompts and charts of a built docs tree (`<build-dir>/docs`), from its manifest."""
    docs_dir = Path(docs_dir)
    return Inventory(docs_dir, read_manifest(docs_dir))


def all_charts(inv: Inventory, layer: int = 0, head: int = 0) -> list[ChartRef]:
    """Every chart of the site, in the manifest's order; attention charts for layer, head."""
    return [ref.with_head(layer, head) if ref.name == "attention" else ref
            for ref in inv.manifest.charts]


def _valid(values: Iterable[str]) -> str:
    return ", ".join(values)


def select_charts(inv: Inventory, model: str | None = None, prompt: str | None = None,
                  chart: str | None = None, layer: int | None = None,
                  head: int | None = None) -> list[ChartRef]:
    """The charts the options name; a value that names nothing is an OptionError."""
    if model is not None and model not in inv.models:
        raise OptionError(f"--model {model}: not a model of this build. Valid values: "
                          f"{_valid(inv.models)}.")
    sets = sorted({k.split("/")[0] for k in inv.prompts})
    if prompt is not None and prompt not in inv.prompts and prompt not in sets:
        raise OptionError(f"--prompt {prompt}: not a prompt of this build. Give set/prompt (or "
                          f"a set). Valid values: {_valid(inv.prompts)}.")
    if chart is not None and chart not in inv.kinds:
        raise OptionError(f"--chart {chart}: no such chart. Valid values: {_valid(inv.kinds)}.")
    if (layer is not None or head is not None) and chart not in (None, "attention"):
        raise OptionError(f"--layer and --head choose the attention head; they do not apply to "
                          f"--chart {chart}. Leave them out or use --chart attention.")
    refs = [r for r in all_charts(inv, layer or 0, head or 0)
            if (model is None or r.model == model)
            and (prompt is None or (r.prompt is not None
                                    and (r.prompt == prompt or r.prompt.startswith(prompt + "/"))))
            and (chart is None or r.name == chart)]
    _check_head(inv, refs, layer, head)
    if not refs:
        raise OptionError(_nothing_selected(inv, model, prompt, chart))
    return refs


def _check_head(inv: Inventory, refs: Sequence[ChartRef], layer: int | None,
                head: int | None) -> None:
    slugs = sorted({r.model for r in refs if r.name == "attention" and r.model})
    for slug in slugs:
        m = inv.models[slug]
        for option, value, count in (("--layer", layer, m.layers), ("--head", head, m.query_heads)):
            if value is not None and not 0 <= value < count:
                hint = "" if len(slugs) == 1 else " Narrow to one model with --model."
                raise OptionError(f"{option} {value}: {m.model_id} has {count} "
                                  f"{option[2:]}s, valid values 0 to {count - 1}.{hint}")


def _nothing_selected(inv: Inventory, model: str | None, prompt: str | None,
                      chart: str | None) -> str:
    asked = " ".join(f"--{k} {v}" for k, v in (("model", model), ("prompt", prompt),
                                                ("chart", chart)) if v is not None)
    if chart == "groups":
        grouped = [m.slug for m in inv.models.values() if m.grouped]
        why = (f"groups exists only for grouped-query models: {_valid(grouped) or 'none here'}.")
    elif chart in ("cumulative", "tokenizers") and model:
        why = f"{chart} compares every model; leave out --model."
    elif chart in ("tokenizers",) or (chart or "").startswith("atlas-"):
        why = f"{chart} is not a chart of one prompt; leave out --prompt."
    else:
        why = "no chart of the last build matches them all."
    return f"{asked}: {why}"


# --- complete specs ------------------------------------------------------------------------------


def chart_spec(inv: Inventory, ref: ChartRef, layer: int = 0, head: int = 0) -> dict[str, Any]:
    """The complete Vega-Lite spec of one chart: its named datasets filled, a title added."""
    spec = inv.spec(ref.name)
    if ref.name == "attention":
        if ref.artifact is None:
            raise ArtifactError(f"{inv.docs / layout.MANIFEST}: attention chart {ref.file} names "
                                f"no artifact. Run `model-atlas render` again.")
        tokens = inv.data(ref.data)["tokens"]
        datasets = {"attention": attention_rows(inv.artifact(ref.artifact), layer, head, tokens)}
        note = pooled_note(len(tokens))
    else:
        datasets = datasets_from(spec, inv.data(ref.data), str(inv.docs / ref.data), ref.name)
        note = None
    return complete_spec(spec, datasets, chart_title(inv.models, ref, layer, head, note))


# --- files ---------------------------------------------------------------------------------------


def render_file(fmt: str, spec: dict[str, Any], page: "_Standalone | None",
                filename: str) -> bytes:
    """The bytes of one export format of a complete spec (`page`: what an HTML file inlines)."""
    if fmt == "json":
        return (canonical_json(spec) + "\n").encode("utf-8")
    if fmt == "html":
        if page is None:
            raise ValueError("the html format needs the page's bundle and scripts")
        return standalone_html(page.env, spec, page.bundle, page.scripts, filename).encode("utf-8")
    import vl_convert as vlc
    if fmt == "svg":
        return vlc.vegalite_to_svg(spec).encode("utf-8")
    return vlc.vegalite_to_png(spec, scale=PNG_SCALE)


def _check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise OptionError(f"--format {', '.join(bad) or '(none)'}: valid values are "
                          f"{_valid(FORMATS)}.")
    return tuple(dict.fromkeys(formats))


@dataclass
class _Standalone:
    """What every exported HTML file inlines: the site's Vega bundle and chart scripts."""
    env: Any
    bundle: str
    scripts: list[str]


def _standalone(docs_dir: Path) -> _Standalone:
    texts = []
    for rel in (layout.VENDOR_BUNDLE, *layout.EMBED_SCRIPTS):
        path = docs_dir / rel
        if not path.is_file():
            raise AtlasError(f"{path}: the built site has no {path.name}. Run `model-atlas build` "
                             f"again.")
        texts.append(path.read_text("utf-8"))
    return _Standalone(environment(), texts[0], texts[1:])


def export_charts(docs_dir: Path, out_dir: Path, model: str | None = None,
                  prompt: str | None = None, chart: str | None = None,
                  formats: Sequence[str] = FORMATS, log: Log = print, layer: int | None = None,
                  head: int | None = None) -> list[Path]:
    """Write the charts of the last build (narrowed by model, prompt, chart) as
    `out_dir/<scope>/<chart>.{html,vl.json,svg,png}`; return the files written."""
    formats = _check_formats(formats)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OptionError(f"--out {out_dir}: this is a file; give a directory for the charts.")
    inv = load_inventory(Path(docs_dir))
    refs = select_charts(inv, model, prompt, chart, layer, head)
    page = _standalone(inv.docs) if "html" in formats else None
    t0, written = time.perf_counter(), []
    for i, ref in enumerate(refs, 1):
        spec = chart_spec(inv, ref, layer or 0, head or 0)
        for fmt in formats:
            path = out_dir / f"{ref.file}{SUFFIXES[fmt]}"
            atomic_write_bytes(path, render_file(fmt, spec, page, ref.stem))
            written.append(path)
        if i % 50 == 0:
            log(f"export: {i} of {len(refs)} charts written")
    log(f"export: {len(refs)} charts ({len(written)} files: {', '.join(formats)}) written to "
        f"{out_dir} in {time.perf_counter() - t0:.1f}s")
    return written
