"""Reuse of charts: every chart of a built site as standalone files, and the site's embed pages.

A built docs tree (`build/docs`) holds each chart twice over: an Altair spec with an empty named
dataset (`charts/<name>.vl.json`) and the data files that fill it (`data/...`). This module joins
them into complete Vega-Lite specs with the data inlined, for

- `export_charts` (the `model-atlas export` command): per chart a self-contained HTML file (the
  vendored Vega bundle and the spec inlined, so it opens from file:// with no network), the spec as
  `.vl.json`, an SVG and a PNG (vl-convert), under `<out>/<scope>/<chart>.<ext>`;
- `write_embed_pages` (called by the render stage): `downloads/<scope>/<chart>.vl.json` and a
  minimal page per chart, `embed/<scope>/<chart>.html`, for an `<iframe>`. It loads the site's
  vendored Vega bundle and `embed/embed.js`, and fetches its spec, all by relative URLs, so it
  works under any sub-path of any static host and calls no CDN.

A chart's scope is `<slug>/<set>/<prompt>` (one model on one prompt), `compare/<set>/<prompt>`
(both models on one prompt: `cumulative`), `<slug>` (the head atlas of one model: `atlas-*`) or
`site` (`tokenizers`). The attention chart is one head of one layer, decoded from the stored
uint8 layer exactly as the page script's `attentionRows` does; layer 0 head 0 unless asked.
No torch here.
"""

from __future__ import annotations

import base64
import copy
import json
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .errors import ArtifactError, AtlasError, OptionError
from .schema import tril_by_key
from .store import atomic_write_bytes, atomic_write_text, canonical_json

Log = Callable[[str], None]
FORMATS = ("html", "json", "svg", "png")
SUFFIXES = {"html": ".html", "json": ".vl.json", "svg": ".svg", "png": ".png"}
PNG_SCALE = 2
# Charts of one model on one prompt, and the data file each reads (data/<slug>/<set>/<prompt>...).
PROMPT_SOURCES = {"attention": ".json", "predictions": ".json", "surprisal": ".json",
                  "lens": ".lens.json", "heads": ".heads.json", "groups": ".heads.json"}
LABELS = {"predictions": "top next-token predictions", "surprisal": "surprisal per token",
          "lens": "logit lens", "heads": "attention entropy of every head",
          "groups": "key/value groups", "cumulative": "cumulative surprisal",
          "tokenizers": "tokens per character by script"}


@dataclass
class ModelInfo:
    """What the export needs of one model, read from its first artifact."""
    slug: str
    model_id: str
    layers: int
    query_heads: int
    kv_heads: int
    prompts: list[str]

    @property
    def grouped(self) -> bool:
        return self.kv_heads < self.query_heads


@dataclass(frozen=True)
class ChartRef:
    """One chart of the site: its kind, where it lives, and the data files that fill it."""
    name: str                  # chart kind: charts/<name>.vl.json
    scope: str                 # <slug>/<set>/<prompt>, compare/<set>/<prompt>, <slug> or site
    model: str | None          # model slug, None for charts of every model
    prompt: str | None         # set/prompt key, None for model- and site-level charts
    sources: tuple[str, ...]   # data files, relative to the docs tree
    stem: str                  # file name without suffix (attention-L<l>-H<h> off layer 0 head 0)

    @property
    def rel(self) -> str:
        return f"{self.scope}/{self.stem}"


@dataclass
class Inventory:
    """The charts, models and prompts of one built docs tree."""
    docs: Path
    models: dict[str, ModelInfo]
    prompts: list[str]
    kinds: list[str]
    _provenance: dict[Path, dict[str, Any]] = field(default_factory=dict)

    def spec(self, name: str) -> dict[str, Any]:
        return copy.deepcopy(_read_json(self.docs / "charts" / f"{name}.vl.json"))

    def data(self, rel: str) -> dict[str, Any]:
        path = self.docs / rel
        if not path.is_file():
            raise ArtifactError(f"{path}: missing data file of the last build. Run "
                                f"`model-atlas render` (or `model-atlas build`) again.")
        return _read_json(path)

    def provenance(self, slug: str, prompt: str) -> dict[str, Any]:
        path = self.docs / "artifacts" / slug / f"{prompt}.json"
        if path not in self._provenance:
            self._provenance[path] = _read_json(path)["provenance"]
        return self._provenance[path]

    def random_weights(self, slug: str, prompt: str | None = None) -> bool:
        prompts = [prompt] if prompt else self.models[slug].prompts[:1]
        return any(self.provenance(slug, p).get("random_weights") for p in prompts)


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
    """Models, prompts and chart kinds of a built docs tree (`<build-dir>/docs`)."""
    docs_dir = Path(docs_dir)
    if not (docs_dir / "charts").is_dir() or not (docs_dir / "artifacts").is_dir():
        raise AtlasError(f"{docs_dir}: no built site here (no charts/ and artifacts/). Run "
                         f"`model-atlas build` first, or give the --build-dir of that build.")
    kinds = sorted(p.name[: -len(".vl.json")] for p in (docs_dir / "charts").glob("*.vl.json"))
    models: dict[str, ModelInfo] = {}
    prompts: list[str] = []
    for model_dir in sorted(p for p in (docs_dir / "artifacts").iterdir() if p.is_dir()):
        keys = sorted(f"{p.parent.name}/{p.name[:-5]}" for p in model_dir.glob("*/*.json"))
        if not keys:
            continue
        facts = _read_json(model_dir / f"{keys[0]}.json")
        f, prov = facts["model"], facts["provenance"]
        models[model_dir.name] = ModelInfo(model_dir.name, prov.get("model_id", model_dir.name),
                                           f["layers"], f["query_heads"], f["kv_heads"], keys)
        prompts += [k for k in keys if k not in prompts]
    if not models:
        raise AtlasError(f"{docs_dir}: the built site has no artifacts. Run `model-atlas build` "
                         f"first.")
    return Inventory(docs_dir, models, sorted(prompts), kinds)


def _attention_stem(layer: int, head: int) -> str:
    return "attention" if (layer, head) == (0, 0) else f"attention-L{layer}-H{head}"


def all_charts(inv: Inventory, layer: int = 0, head: int = 0) -> list[ChartRef]:
    """Every chart of the site, per model and prompt first, then per prompt, model and site."""
    refs = []
    for m in inv.models.values():
        for key in m.prompts:
            base = f"data/{m.slug}/{key}"
            for name, suffix in PROMPT_SOURCES.items():
                if name not in inv.kinds or (name == "groups" and not m.grouped):
                    continue
                stem = _attention_stem(layer, head) if name == "attention" else name
                sources = (base + suffix, f"{base}/L{layer}.json") if name == "attention" \
                    else (base + suffix,)
                refs.append(ChartRef(name, f"{m.slug}/{key}", m.slug, key, sources, stem))
    for key in inv.prompts:
        if "cumulative" in inv.kinds and (inv.docs / f"data/compare/{key}.json").is_file():
            refs.append(ChartRef("cumulative", f"compare/{key}", None, key,
                                 (f"data/compare/{key}.json",), "cumulative"))
    for m in inv.models.values():
        if (inv.docs / f"data/{m.slug}/atlas.json").is_file():
            refs += [ChartRef(name, m.slug, m.slug, None, (f"data/{m.slug}/atlas.json",), name)
                     for name in inv.kinds if name.startswith("atlas-")]
    if "tokenizers" in inv.kinds and (inv.docs / "data/compare/tokenizers.json").is_file():
        refs.append(ChartRef("tokenizers", "site", None, None, ("data/compare/tokenizers.json",),
                             "tokenizers"))
    return refs


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


def attention_rows(layer_file: dict[str, Any], head: int,
                   labels: Sequence[str]) -> list[dict[str, Any]]:
    """One head of one stored layer as heatmap rows, as atlas.js `attentionRows` (hideFirst off):
    uint8 [heads, T*(T+1)/2], the lower triangle key by key (uint8-tril-by-key), weight =
    value / scale."""
    t = layer_file["length"]
    tri = t * (t + 1) // 2
    raw = base64.b64decode(layer_file["data"])
    if len(raw) != layer_file["heads"] * tri or not 0 <= head < layer_file["heads"]:
        raise ArtifactError(f"attention layer {layer_file.get('layer')}: {len(raw)} bytes do not "
                            f"hold head {head} of {layer_file['heads']} heads of {t} tokens. "
                            f"Run `model-atlas render` again.")
    queries, keys = tril_by_key(t)
    weights = np.zeros((t, t))
    weights[queries, keys] = np.frombuffer(raw, np.uint8)[head * tri:(head + 1) * tri]
    weights /= layer_file["scale"]
    return [{"q": q, "k": k, "w": float(weights[q, k]), "ql": labels[q], "kl": labels[k]}
            for q in range(t) for k in range(q + 1)]


def dataset_names(spec: Any) -> list[str]:
    """Names of the named datasets a spec reads ({"data": {"name": ...}} anywhere in it)."""
    found: list[str] = []
    if isinstance(spec, dict):
        data = spec.get("data")
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            found.append(data["name"])
        for value in spec.values():
            found += [n for n in dataset_names(value) if n not in found]
    elif isinstance(spec, list):
        for value in spec:
            found += [n for n in dataset_names(value) if n not in found]
    return found


def _drop_links(spec: Any) -> None:
    """Standalone charts have no site to link into: no href channel, no pointer cursor."""
    if isinstance(spec, dict):
        enc = spec.get("encoding")
        if isinstance(enc, dict):
            enc.pop("href", None)
        mark = spec.get("mark")
        if isinstance(mark, dict) and mark.get("cursor") == "pointer":
            mark.pop("cursor")
        for value in spec.values():
            _drop_links(value)
    elif isinstance(spec, list):
        for value in spec:
            _drop_links(value)


def _label(name: str, layer: int, head: int) -> str:
    if name == "attention":
        return f"attention, layer {layer}, head {head}"
    if name.startswith("atlas-"):
        from .metrics import METRIC_DEFINITIONS
        d = METRIC_DEFINITIONS.get(name[len("atlas-"):])
        return f"{d['title']} by head (top 20)" if d else name
    return LABELS.get(name, name)


def chart_title(inv: Inventory, ref: ChartRef, layer: int = 0, head: int = 0) -> dict[str, Any]:
    """Title naming model, prompt and chart (layer and head for attention); subtitle "random
    weights" when the artifacts say the weights were random."""
    parts = [inv.models[ref.model].model_id] if ref.model else []
    parts += [ref.prompt] if ref.prompt else []
    parts.append(_label(ref.name, layer, head))
    title: dict[str, Any] = {"text": " · ".join(parts), "anchor": "start"}
    slugs = [ref.model] if ref.model else [s for s, m in inv.models.items()
                                           if ref.prompt is None or ref.prompt in m.prompts]
    random = [s for s in slugs if inv.random_weights(s, ref.prompt)]
    if random and (ref.model or len(random) == len(slugs)):
        title["subtitle"] = "random weights"
    elif random:
        title["subtitle"] = "random weights: " + ", ".join(inv.models[s].model_id for s in random)
    return title


def chart_spec(inv: Inventory, ref: ChartRef, layer: int = 0, head: int = 0) -> dict[str, Any]:
    """The complete Vega-Lite spec of one chart: its named datasets filled, a title added."""
    spec = inv.spec(ref.name)
    if ref.name == "attention":
        tokens = inv.data(ref.sources[0])["tokens"]
        rows = attention_rows(inv.data(ref.sources[1]), head, [t["label"] for t in tokens])
        datasets = {"attention": rows}
    else:
        data: dict[str, Any] = {}
        for rel in ref.sources:
            data.update(inv.data(rel))
        missing = [n for n in dataset_names(spec) if n not in data]
        if missing:
            raise ArtifactError(f"{inv.docs / ref.sources[0]}: has no {', '.join(missing)} for "
                                f"chart {ref.name}. Run `model-atlas render` again.")
        datasets = {n: data[n] for n in dataset_names(spec)}
    _drop_links(spec)
    spec["datasets"] = datasets
    spec["title"] = chart_title(inv, ref, layer, head)
    return spec


# --- files ---------------------------------------------------------------------------------------


def script_json(obj: Any) -> str:
    """JSON safe inside an HTML <script>: no "</script>", "<!--" or line separators."""
    text = json.dumps(obj, ensure_ascii=False, sort_keys=True, allow_nan=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


@lru_cache(maxsize=1)
def _template() -> Any:
    import jinja2

    from .resources import resource_path
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(resource_path("templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    return env.get_template("embed.html.j2")


def standalone_html(spec: dict[str, Any], bundle: str, filename: str) -> str:
    """One HTML file with the Vega bundle and the spec inlined: opens from file://, offline."""
    from markupsafe import Markup
    return _template().render(
        mode="standalone", title=spec["title"]["text"], filename=filename,
        random="subtitle" in spec["title"], bundle=Markup(bundle.replace("</script", "<\\/script")),
        spec_json=Markup(script_json(spec)))


def render_file(fmt: str, spec: dict[str, Any], bundle: str, filename: str) -> bytes:
    """The bytes of one export format of a complete spec."""
    if fmt == "json":
        return (canonical_json(spec) + "\n").encode("utf-8")
    if fmt == "html":
        return standalone_html(spec, bundle, filename).encode("utf-8")
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


def _bundle(docs_dir: Path) -> str:
    path = docs_dir / "assets" / "vendor" / "vega-bundle.js"
    if not path.is_file():
        raise AtlasError(f"{path}: the built site has no Vega bundle. Run `model-atlas build` "
                         f"again.")
    return path.read_text("utf-8")


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
    bundle = _bundle(inv.docs) if "html" in formats else ""
    t0, written = time.perf_counter(), []
    for i, ref in enumerate(refs, 1):
        spec = chart_spec(inv, ref, layer or 0, head or 0)
        for fmt in formats:
            path = out_dir / f"{ref.rel}{SUFFIXES[fmt]}"
            atomic_write_bytes(path, render_file(fmt, spec, bundle, ref.stem))
            written.append(path)
        if i % 50 == 0:
            log(f"export: {i} of {len(refs)} charts written")
    log(f"export: {len(refs)} charts ({len(written)} files: {', '.join(formats)}) written to "
        f"{out_dir} in {time.perf_counter() - t0:.1f}s")
    return written


# --- the site: downloads and embed pages ---------------------------------------------------------


class _Target:
    """Where the render stage's extra files go: its Writer (counted, swapped in at commit) or a
    docs directory written in place."""

    def __init__(self, target: Any):
        self.writer = target if hasattr(target, "tmp") and hasattr(target, "text") else None
        self.root = Path(self.writer.tmp if self.writer else target)

    def text(self, rel: str, content: str) -> None:
        if self.writer is not None:
            self.writer.text(rel, content)
        else:
            atomic_write_text(self.root / rel, content)


def embed_page(inv: Inventory, ref: ChartRef, spec: dict[str, Any]) -> str:
    """The minimal page of one chart, `embed/<scope>/<chart>.html`, for an <iframe>."""
    root = "../" * (1 + ref.scope.count("/") + 1)
    model = inv.models.get(ref.model or "")
    attn = {"tokens": f"{root}{ref.sources[0]}", "layers": f"{root}data/{ref.scope}/L",
            "nlayers": model.layers, "nheads": model.query_heads} \
        if ref.name == "attention" and model else None
    if ref.prompt:
        page = f"prompts/{ref.prompt}.html"
    elif ref.model:
        page = f"models/{ref.model}.html"
    else:
        page = "compare/tokenizers.html"
    return _template().render(
        mode="embed", title=spec["title"]["text"], filename=ref.rel.replace("/", "-"),
        random="subtitle" in spec["title"], root=root, chart=ref.name,
        spec_url=f"{root}downloads/{ref.rel}.vl.json", page_url=root + page, attention=attn)


def write_embed_pages(target: Any, log: Log = print) -> int:
    """Write `downloads/<scope>/<chart>.vl.json` (data inlined) and `embed/<scope>/<chart>.html`
    (plus their script, `embed/embed.js`) for every chart of a docs tree: the render stage's
    Writer before its commit, or a docs dir.
    Returns the number of charts."""
    t0 = time.perf_counter()
    out = _Target(target)
    if not any((out.root / "artifacts").glob("*/*/*.json")):
        return 0
    inv = load_inventory(out.root)
    refs = all_charts(inv)
    out.text("embed/embed.js", _template().render(mode="script"))
    for ref in refs:
        spec = chart_spec(inv, ref)
        out.text(f"downloads/{ref.rel}.vl.json", canonical_json(spec) + "\n")
        out.text(f"embed/{ref.rel}.html", embed_page(inv, ref, spec))
    log(f"render: {len(refs)} charts given embed pages and downloads in "
        f"{time.perf_counter() - t0:.1f}s")
    return len(refs)
