"""Charts standing alone: complete Vega-Lite specs (data inlined, a title), embed pages and
self-contained HTML files (no torch).

Each chart of the site is an Altair spec with empty named datasets (generator/charts.py) plus the
rows that fill them. Render fills them from the rows it holds in memory and writes, per chart, a
download (`downloads/<scope>/<chart>.vl.json`) and an embed page for an <iframe>
(`embed/<scope>/<chart>.html`, see `write_chart`); `model-atlas export` (generator/export.py)
fills them from the data files the manifest lists. Both go through `complete_spec`, so a download
and an export of the same chart are the same bytes.

`ChartRef` names one chart and the files it is made from; `ModelInfo` is what a title needs of a
model. Both are written into the manifest by render and read back from it by export
(generator/manifest.py). An attention chart shows one head of one layer, decoded from the artifact
by `schema.decode_head`; layer 0 head 0 unless asked.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

import jinja2
import numpy as np
from markupsafe import Markup

from . import layout
from .errors import ArtifactError
from .schema import ATTENTION_SCALE, decode_head
from .store import canonical_json

# Charts of one model on one prompt and the data file (layout function) that fills each.
PROMPT_CHARTS: dict[str, Callable[[str, str], str]] = {
    "attention": layout.prompt_data, "predictions": layout.prompt_data,
    "surprisal": layout.prompt_data, "lens": layout.prompt_lens, "heads": layout.prompt_heads,
    "groups": layout.prompt_heads}
LABELS = {"predictions": "top next-token predictions", "surprisal": "surprisal per token",
          "lens": "logit lens", "heads": "attention entropy of every head",
          "groups": "key/value groups", "cumulative": "cumulative surprisal",
          "tokenizers": "tokens per character by script"}
TEMPLATE = "embed.html.j2"
CONSTRUCTED = "constructed weights"   # a title's subtitle on the demo's models


@dataclass(frozen=True)
class ModelInfo:
    """What the charts need of one model: its names, its shape, whether its weights are random."""
    slug: str
    model_id: str
    layers: int
    query_heads: int
    kv_heads: int
    random_weights: bool
    prompts: tuple[str, ...] = field(default=())   # prompt keys, in the site's order

    @property
    def grouped(self) -> bool:
        return self.kv_heads < self.query_heads


@dataclass(frozen=True)
class ChartRef:
    """One chart of the site: its kind, what it shows, where it is drawn and what fills it.
    Paths are docs paths (generator/layout.py)."""
    name: str                  # chart kind: layout.chart_spec(name)
    scope: str                 # what it shows: layout.prompt_scope, compare_scope, ... SITE_SCOPE
    stem: str                  # file name without suffix (attention-L<l>-H<h> off layer 0 head 0)
    page: str                  # the page of the site that draws it
    data: str                  # the data file a page fetches for it
    model: str | None = None   # model slug, None for charts of every model
    prompt: str | None = None  # prompt key, None for model- and site-level charts
    heads: str | None = None   # attention: the per-head files a page fetches (layout.LAYER, HEAD)
    artifact: str | None = None  # attention: the artifact copy the export decodes heads from

    @property
    def file(self) -> str:
        return layout.chart_file(self.scope, self.stem)

    def with_head(self, layer: int, head: int) -> "ChartRef":
        """The same attention chart for another head."""
        return replace(self, stem=layout.attention_stem(layer, head))


# --- which charts the site has --------------------------------------------------------------------


def prompt_charts(m: ModelInfo, key: str, kinds: Iterable[str]) -> dict[str, ChartRef]:
    """The charts of model `m` on prompt `key` (groups only for grouped-query models)."""
    scope, page = layout.prompt_scope(m.slug, key), layout.prompt_page(key)
    refs = {}
    for name, data in PROMPT_CHARTS.items():
        if name not in kinds or (name == "groups" and not m.grouped):
            continue
        extra = {"heads": layout.attention_heads(m.slug, key),
                 "artifact": layout.artifact_copy(m.slug, key)} if name == "attention" else {}
        refs[name] = ChartRef(name, scope, layout.attention_stem(0, 0) if name == "attention"
                              else name, page, data(m.slug, key), m.slug, key, **extra)
    return refs


def compare_chart(key: str) -> ChartRef:
    return ChartRef("cumulative", layout.compare_scope(key), "cumulative",
                    layout.prompt_page(key), layout.compare_data(key), None, key)


def atlas_charts(m: ModelInfo, kinds: Iterable[str]) -> dict[str, ChartRef]:
    return {name: ChartRef(name, layout.model_scope(m.slug), name, layout.model_page(m.slug),
                           layout.atlas_data(m.slug), m.slug)
            for name in kinds if name.startswith("atlas-")}


def tokenizers_chart() -> ChartRef:
    return ChartRef("tokenizers", layout.SITE_SCOPE, "tokenizers", layout.TOKENIZERS_PAGE,
                    layout.tokenizers_data())


# --- complete specs ------------------------------------------------------------------------------


# A standalone attention chart has at most this many rows and columns of cells. A longer prompt's
# chart pools blocks of tokens by their maximum, as the page's overview does: a chart of a
# 2,048-token prompt cell by cell would hold two million cells (about 100 MB of JSON), and its
# labels could not be read.
ATTENTION_SIDE = 128


def attention_block(length: int) -> int:
    """Tokens per row and column of a standalone attention chart of `length` tokens (1: each
    token its own). The same rule as attention-codec.js `blockOf`."""
    return max(1, -(-length // ATTENTION_SIDE))


def block_label(tokens: Sequence[Mapping[str, Any]], start: int, stop: int) -> str:
    """Axis label of tokens start..stop-1 (token rows, `pagedata.token_rows`): their positions
    and the first one's text, "24–29: ␣the"."""
    return f"{start}–{stop - 1}: {tokens[start]['text']}"


def attention_rows(artifact: dict[str, Any], layer: int, head: int,
                   tokens: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One head of one layer as heatmap rows (q, k, weight, their labels), k <= q, as the page's
    codec (site_src/assets/attention-codec.js `chartRows`) draws it with "hide first token" off;
    `tokens`: the artifact's token rows (`pagedata.token_rows`: label, text).

    Past ATTENTION_SIDE tokens, q and k number blocks of `attention_block(T)` tokens, w is the
    largest weight in the block and the labels are `block_label`'s."""
    t = artifact["attention"]["length"]
    if not 0 <= head < artifact["attention"]["heads"]:
        raise ArtifactError(f"attention layer {layer}: no head {head} of "
                            f"{artifact['attention']['heads']} heads.")
    row_start, keys, values = decode_head(artifact, layer, head)
    w = np.zeros((t, t), dtype=np.float32)                 # [T, T]
    w[np.repeat(np.arange(t), np.diff(row_start)), keys] = values.astype(np.float32) / ATTENTION_SCALE
    b = attention_block(t)
    if b > 1:
        n = -(-t // b)
        padded = np.zeros((n * b, n * b), dtype=np.float32)
        padded[:t, :t] = w
        w = padded.reshape(n, b, n, b).max(axis=(1, 3))    # [n, n]
        labels = [block_label(tokens, i * b, min(t, (i + 1) * b)) for i in range(n)]
        t = n
    else:
        labels = [tok["label"] for tok in tokens]
    return [{"q": q, "k": k, "w": float(w[q, k]), "ql": labels[q], "kl": labels[k]}
            for q in range(t) for k in range(q + 1)]


def pooled_note(length: int) -> str | None:
    """The subtitle line of a pooled attention chart (None when each token has its own cells)."""
    b = attention_block(length)
    if b == 1:
        return None
    return (f"{length:,} tokens in blocks of {b}: each cell is the largest weight of a block "
            f"of queries on a block of keys")


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


def datasets_from(spec: dict[str, Any], data: Mapping[str, Any], source: str,
                  name: str) -> dict[str, Any]:
    """The named datasets of `spec`, taken from a data file's content (`source` names the file)."""
    missing = [n for n in dataset_names(spec) if n not in data]
    if missing:
        raise ArtifactError(f"{source}: has no {', '.join(missing)} for chart {name}. Run "
                            f"`model-atlas render` again.")
    return {n: data[n] for n in dataset_names(spec)}


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


def chart_title(models: Mapping[str, ModelInfo], ref: ChartRef, layer: int = 0,
                head: int = 0, note: str | None = None) -> dict[str, Any]:
    """Title naming model, prompt and chart (layer and head for attention); subtitle
    "constructed weights" when it shows the demo's models (weights constructed in code, not
    learned), and `note` (a pooled attention chart's `pooled_note`) as a line of its own."""
    parts = [models[ref.model].model_id] if ref.model else []
    parts += [ref.prompt] if ref.prompt else []
    parts.append(_label(ref.name, layer, head))
    title: dict[str, Any] = {"text": " · ".join(parts), "anchor": "start"}
    slugs = [ref.model] if ref.model else [s for s, m in models.items()
                                           if ref.prompt is None or ref.prompt in m.prompts]
    random = [s for s in slugs if models[s].random_weights]
    if random and (ref.model or len(random) == len(slugs)):
        title["subtitle"] = CONSTRUCTED
    elif random:
        title["subtitle"] = f"{CONSTRUCTED}: " + ", ".join(models[s].model_id for s in random)
    if note:
        title["subtitle"] = [title["subtitle"], note] if "subtitle" in title else note
    return title


def constructed(title: dict[str, Any]) -> bool:
    """Whether a chart title (`chart_title`) says its weights are constructed."""
    sub = title.get("subtitle", [])
    return any(line.startswith(CONSTRUCTED) for line in ([sub] if isinstance(sub, str) else sub))


def complete_spec(spec: dict[str, Any], datasets: dict[str, Any],
                  title: dict[str, Any]) -> dict[str, Any]:
    """A chart's spec (left unchanged) with its named datasets filled, links dropped and a title."""
    out = copy.deepcopy(spec)
    _drop_links(out)
    out["datasets"] = datasets
    out["title"] = title
    return out


# --- files ---------------------------------------------------------------------------------------


def script_json(obj: Any) -> str:
    """JSON safe inside an HTML <script>: no "</script>", "<!--" or line separators."""
    text = json.dumps(obj, ensure_ascii=False, sort_keys=True, allow_nan=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _inline_script(source: str) -> Markup:
    return Markup(source.replace("</script", "<\\/script"))


def standalone_html(env: jinja2.Environment, spec: dict[str, Any], bundle: str,
                    scripts: Sequence[str], filename: str) -> str:
    """One HTML file with the Vega bundle, the chart's script and the spec inlined: it opens from
    file://, offline. `scripts` are the sources of `layout.EMBED_SCRIPTS`."""
    return env.get_template(TEMPLATE).render(
        mode="standalone", title=spec["title"]["text"], filename=filename,
        random=constructed(spec["title"]), bundle=_inline_script(bundle),
        script=_inline_script("\n".join(scripts)), spec_json=Markup(script_json(spec)))


def embed_page(env: jinja2.Environment, models: Mapping[str, ModelInfo], ref: ChartRef,
               spec: dict[str, Any]) -> str:
    """The minimal page of one chart, `layout.embed_page(scope, stem)`, for an <iframe>."""
    urls = layout.Urls(layout.embed_page(ref.scope, ref.stem))
    model = models.get(ref.model or "")
    attention = {"tokens": urls.to(ref.data), "heads": urls.to(ref.heads),
                 "nlayers": model.layers, "nheads": model.query_heads, "side": ATTENTION_SIDE} \
        if ref.name == "attention" and model and ref.heads else None
    return env.get_template(TEMPLATE).render(
        mode="embed", title=spec["title"]["text"], filename=ref.file.replace("/", "-"),
        random=constructed(spec["title"]), attention=attention,
        bundle_url=urls.to(layout.VENDOR_BUNDLE),
        script_urls=[urls.to(s) for s in layout.EMBED_SCRIPTS],
        spec_url=urls.download(ref.scope, ref.stem), page_url=urls.to(ref.page))


def write_chart(write: Callable[[str, str], None], env: jinja2.Environment,
                models: Mapping[str, ModelInfo], ref: ChartRef, spec: dict[str, Any],
                datasets: dict[str, Any], note: str | None = None) -> None:
    """Write one chart's download and embed page through `write(docs_path, text)`."""
    full = complete_spec(spec, datasets, chart_title(models, ref, note=note))
    write(layout.download(ref.scope, ref.stem), canonical_json(full) + "\n")
    write(layout.embed_page(ref.scope, ref.stem), embed_page(env, models, ref, full))
