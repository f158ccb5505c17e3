"""Altair chart specifications (no torch).

Each chart is an Altair spec whose data is a named dataset, left empty here: a page fills it from a
data file it fetches, so large data is never pasted into a page, and the same spec serves every
prompt and model. `chart_specs()` returns them as Vega-Lite dictionaries keyed by chart name.
"""

from __future__ import annotations

from typing import Any

import altair as alt

WIDTH = 340
SELECTED = "#ff6e40"      # the selected position (Material's deep orange accent), both schemes


def position_params() -> list[alt.Parameter]:
    """The params of a chart indexed by position (prompt and continuation counted together): the
    window the page shows, positions `win_lo` to `win_hi`, and the selected position `sel_pos`,
    outlined. atlas.js sets them as the reader chooses a token; unset (an embed page, a download)
    the chart shows every position and outlines none."""
    return [alt.param(name="win_lo", value=None), alt.param(name="win_hi", value=None),
            alt.param(name="sel_pos", value=None)]


def in_window(field: str) -> str:
    """The filter that keeps the rows of `field` (a position) inside the window."""
    return f"win_lo == null || (datum.{field} >= win_lo && datum.{field} <= win_hi)"


def _outline(field: str) -> dict[str, Any]:
    """Encodings that outline the selected position's marks."""
    selected = f"sel_pos != null && datum.{field} == sel_pos"
    return {"stroke": alt.condition(selected, alt.value(SELECTED), alt.value(None)),
            "strokeWidth": alt.condition(selected, alt.value(2), alt.value(0))}


def _tokens_sort(field: str) -> alt.EncodingSortField:
    return alt.EncodingSortField(field=field, op="min")


def attention_chart() -> alt.Chart:
    """Heatmap of one head: query position (row) attends to key position (column)."""
    return alt.Chart(alt.Data(name="attention")).mark_rect().encode(
        x=alt.X("kl:N", sort=_tokens_sort("k"), title="attended-to token (key)",
                axis=alt.Axis(labelAngle=-60, labelLimit=70, labelOverlap=True)),
        y=alt.Y("ql:N", sort=_tokens_sort("q"), title="reading token (query)",
                axis=alt.Axis(labelLimit=90, labelOverlap=True)),
        color=alt.Color("w:Q", title="weight", scale=alt.Scale(scheme="blues", domain=[0, 1])),
        tooltip=[alt.Tooltip("ql:N", title="query"), alt.Tooltip("kl:N", title="key"),
                 alt.Tooltip("w:Q", title="weight", format=".3f")],
    ).properties(width=WIDTH, height=WIDTH)


def predictions_chart() -> alt.LayerChart:
    """Top-k next-token predictions at every position in the window, coloured by probability."""
    base = alt.Chart(alt.Data(name="predictions")).transform_filter(in_window("pos")).encode(
        x=alt.X("rank:O", title="rank of prediction", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("pl:N", sort=_tokens_sort("pos"), title="after token",
                axis=alt.Axis(labelLimit=90)),
    )
    rect = base.mark_rect().encode(
        color=alt.Color("prob:Q", title="probability", scale=alt.Scale(scheme="greens",
                                                                        domain=[0, 1])),
        tooltip=[alt.Tooltip("pl:N", title="after"), alt.Tooltip("token:N", title="predicted"),
                 alt.Tooltip("prob:Q", title="probability", format=".4f"),
                 alt.Tooltip("actual:N", title="actual next token")],
        **_outline("pos"),
    )
    text = base.mark_text(fontSize=10, limit=64).encode(
        text="token:N",
        color=alt.condition("datum.prob > 0.5", alt.value("white"), alt.value("black")),
    )
    return alt.layer(rect, text).add_params(*position_params()).properties(width=WIDTH,
                                                                          height=alt.Step(16))


def surprisal_chart() -> alt.LayerChart:
    """Surprisal (bits) of the token that actually came next, at every position in the window; a
    band marks the selected position (its bar can be too short to see an outline). The axis and
    colour end at the `surprisal_max` param, which a prompt page sets to the larger of both
    models' maxima so that their charts compare (None: this chart's own maximum)."""
    top = alt.param(name="surprisal_max", value=None)
    scale = dict(domainMin=0, domainMax=alt.ExprRef(expr="surprisal_max"))
    base = alt.Chart(alt.Data(name="tokens")).transform_filter(
        "datum.surprisal != null").transform_filter(in_window("i")).encode(
        x=alt.X("label:N", sort=_tokens_sort("i"), title="token (predicting the next one)",
                axis=alt.Axis(labelAngle=-60, labelLimit=70, labelOverlap=True)))
    band = base.mark_rect(color=SELECTED, opacity=0.2).transform_filter(
        "sel_pos != null && datum.i == sel_pos")
    bars = base.mark_bar().encode(
        y=alt.Y("surprisal:Q", title="surprisal of actual next token (bits)",
                scale=alt.Scale(**scale)),
        color=alt.Color("surprisal:Q", scale=alt.Scale(scheme="orangered", **scale), legend=None),
        tooltip=[alt.Tooltip("label:N", title="token"), alt.Tooltip("next:N", title="next"),
                 # The data's own 3 decimals, not rounded again (issue 18).
                 alt.Tooltip("surprisal:Q", format=".3f", title="bits"),
                 alt.Tooltip("rank:Q", title="rank of next")],
    )
    return alt.layer(band, bars).add_params(top, *position_params()).properties(
        width=alt.Step(20), height=160)


# Probabilities as a reader reads them: 0.412, 0.031, then 3.2e-5 below a thousandth.
def _readable(field: str) -> str:
    return (f"datum.{field} == null ? 'n/a' : datum.{field} >= 0.001 || datum.{field} == 0 ? "
            f"format(datum.{field}, '.3f') : format(datum.{field}, '.1e')")


def lens_chart() -> alt.LayerChart:
    """Logit lens: layer x position, coloured by the rank of the token that actually came next
    (log scale, viridis: dark purple = rank 1, the right answer on top; yellow = far down), text =
    that layer's top prediction. Cells are wide enough for 10 px text; the chart grows with the
    prompt and scrolls in its own frame. The colour domain ends at the `lrank_max` param (both
    models' largest log10 rank on a prompt page; None: this chart's own)."""
    top = alt.param(name="lrank_max", value=None)
    base = alt.Chart(alt.Data(name="lens")).transform_filter(in_window("pos")).transform_calculate(
        p_text=_readable("p"), pnext_text=_readable("pnext")).encode(
        x=alt.X("pl:N", sort=_tokens_sort("pos"), title="position (predicting the next token)",
                axis=alt.Axis(labelAngle=-60, labelLimit=90, labelFontSize=11)),
        y=alt.Y("layer:O", sort="descending", title="layer", axis=alt.Axis(labelFontSize=11)),
    )
    tooltip = [alt.Tooltip("layer:O"), alt.Tooltip("pl:N", title="after"),
               alt.Tooltip("top:N", title="top prediction"),
               alt.Tooltip("p_text:N", title="its probability"),
               alt.Tooltip("runners:N", title="next in line"),
               alt.Tooltip("rank:Q", title="rank of actual next (1 = top)"),
               alt.Tooltip("pnext_text:N", title="p(actual next)")]
    rect = base.mark_rect().encode(
        color=alt.Color("lrank:Q", scale=alt.Scale(scheme="viridis", domainMin=0,
                                                    domainMax=alt.ExprRef(expr="lrank_max")),
                        legend=alt.Legend(title="rank of the actual next token", titleLimit=400,
                                          labelExpr="format(pow(10, datum.value), ',.0f')",
                                          orient="top", gradientLength=240)),
        tooltip=tooltip, **_outline("pos"),
    )
    # Light text on the dark (top-ranked) cells, dark text on the light ones. The text carries the
    # cell's tooltip too: it lies over the cell, and the pointer over it must show the same.
    text = base.mark_text(fontSize=10, limit=44).encode(
        text="top:N", tooltip=tooltip,
        color=alt.condition("datum.lrank == null || datum.lrank < 0.55 * (lrank_max || 6)",
                            alt.value("white"), alt.value("black")))
    return alt.layer(rect, text).add_params(top, *position_params()).properties(
        width=alt.Step(48), height=alt.Step(18))


def heads_chart() -> alt.Chart:
    """Model view: every layer x head's attention entropy; click a cell to open it in the heatmap.
    The colour domain is [entropy_min, entropy_max], both models' range on a prompt page."""
    return alt.Chart(alt.Data(name="heads")).mark_rect(cursor="pointer").encode(
        x=alt.X("head:O", title="head"),
        y=alt.Y("layer:O", sort="descending", title="layer"),
        color=alt.Color("entropy:Q", title="entropy (bits)", scale=alt.Scale(
            scheme="purples", reverse=True, domainMin=alt.ExprRef(expr="entropy_min"),
            domainMax=alt.ExprRef(expr="entropy_max"))),
        tooltip=[alt.Tooltip("name:N", title="head"), alt.Tooltip("group:Q", title="kv group"),
                 alt.Tooltip("entropy:Q", format=".2f"),
                 alt.Tooltip("prev_token:Q", format=".2f", title="previous-token"),
                 alt.Tooltip("first_token:Q", format=".2f", title="first-token (sink)"),
                 alt.Tooltip("distance:Q", format=".1f", title="mean distance"),
                 alt.Tooltip("induction:Q", format=".2f", title="induction")],
    ).add_params(alt.param(name="entropy_min", value=None),
                 alt.param(name="entropy_max", value=None)
                 ).properties(width=alt.Step(18), height=alt.Step(14))


def dla_chart() -> alt.LayerChart:
    """Direct logit attribution of one position: every layer x head, coloured by its direct
    contribution to the chosen logit (red raises it, blue lowers it); click a head to open its
    attention. Every layer and head stays on the axes, whatever the position: a faint grid of all
    cells under the coloured ones, so the heads outside the stored largest contributors (value
    null) are blank cells, not missing columns (issue 18)."""
    base = alt.Chart(alt.Data(name="dla")).encode(
        x=alt.X("head:O", title="head", sort="ascending"),
        y=alt.Y("layer:O", sort="descending", title="layer"),
    )
    cells = base.mark_rect(cursor="pointer", fill="transparent", stroke="#888888",
                           strokeOpacity=0.25, strokeWidth=0.5).encode(
        tooltip=[alt.Tooltip("name:N", title="head"),
                 alt.Tooltip("listed:N", title="direct contribution")],
    ).transform_calculate(listed="datum.value == null ? 'not among the largest' : "
                                 "format(datum.value, '+.3f')")
    # Coloured by value / max |value| at this position, so 0 is white and the scale symmetric.
    shares = base.mark_rect(cursor="pointer").encode(
        color=alt.Color("share:Q", title="contribution / largest",
                        scale=alt.Scale(scheme="redblue", reverse=True, domain=[-1, 1])),
        tooltip=[alt.Tooltip("name:N", title="head"),
                 alt.Tooltip("value:Q", format="+.3f", title="direct contribution")],
    ).transform_filter("datum.value != null")
    return alt.layer(cells, shares).properties(width=alt.Step(18), height=alt.Step(14))


def groups_chart() -> alt.Chart:
    """Grouped-query view: per layer, how alike the query heads sharing a key/value head attend."""
    return alt.Chart(alt.Data(name="groups")).mark_rect().encode(
        x=alt.X("layer:O", title="layer"),
        y=alt.Y("group:O", title="key/value group"),
        color=alt.Color("similarity:Q", title="within-group cosine",
                        scale=alt.Scale(scheme="teals", domain=[0, 1])),
        tooltip=[alt.Tooltip("layer:O"), alt.Tooltip("group:O", title="kv group"),
                 alt.Tooltip("heads:N", title="query heads"),
                 alt.Tooltip("similarity:Q", format=".3f", title="within-group cosine"),
                 alt.Tooltip("between:Q", format=".3f", title="between-group cosine"),
                 alt.Tooltip("mean_js:Q", format=".3f", title="within-group JS (bits)")],
    ).properties(width=alt.Step(18), height=alt.Step(22))


def cumulative_chart() -> alt.Chart:
    """Both models' cumulative surprisal along the same text (x = character offset)."""
    return alt.Chart(alt.Data(name="cumulative")).mark_line(point=True, interpolate="step-after"
                                                            ).encode(
        x=alt.X("char:Q", title="character offset in the prompt"),
        y=alt.Y("bits:Q", title="cumulative surprisal (bits)"),
        color=alt.Color("model:N", title="model"),
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("token:N"), alt.Tooltip("char:Q"),
                 alt.Tooltip("bits:Q", format=".1f")],
    ).properties(width=2 * WIDTH, height=200)


ATLAS_TOP = 20   # heads per head-atlas chart (fewer when the model has fewer)


def atlas_chart(metric: str, title: str) -> alt.Chart:
    """Head atlas: the ATLAS_TOP heads with the highest mean `metric` (lowest for entropy); a bar
    links to the prompt where that head shows the behaviour most clearly, opened at that layer
    and head (the row's `{metric}_href`, from generator/pagedata.py)."""
    order = "ascending" if metric == "entropy" else "descending"
    return alt.Chart(alt.Data(name="atlas")).transform_filter(
        f"isValid(datum.{metric})").transform_window(
        rank="row_number()", sort=[alt.SortField(metric, order=order)]).transform_filter(
        f"datum.rank <= {ATLAS_TOP}").mark_bar(cursor="pointer").encode(
        x=alt.X(f"{metric}:Q", title=title,
                axis=alt.Axis(labelOverlap=True, tickCount=5, labelFontSize=11, labelFlush=True)),
        y=alt.Y("name:N", sort=alt.EncodingSortField(field=metric, order=order), title="head",
                axis=alt.Axis(labelFontSize=11)),
        href=alt.Href(f"{metric}_href:N"),
        tooltip=[alt.Tooltip("name:N", title="head"), alt.Tooltip(f"{metric}:Q", format=".3f"),
                 alt.Tooltip(f"{metric}_best:N", title="clearest on prompt")],
    ).properties(width=WIDTH, height=alt.Step(17))


def tokenizers_chart() -> alt.Chart:
    """Mean tokens per character by script, one bar per model."""
    return alt.Chart(alt.Data(name="scripts")).mark_bar().encode(
        x=alt.X("per_char:Q", title="tokens per character (mean over prompts)"),
        y=alt.Y("script:N", title=None),
        yOffset="model:N",
        color=alt.Color("model:N", title="model"),
        tooltip=["script:N", "model:N", alt.Tooltip("per_char:Q", format=".3f"),
                 alt.Tooltip("per_word:Q", format=".2f"), "byte_pieces:Q", "prompts:Q"],
    ).properties(width=2 * WIDTH)


CHARTS = {
    "attention": attention_chart,
    "predictions": predictions_chart,
    "surprisal": surprisal_chart,
    "lens": lens_chart,
    "heads": heads_chart,
    "dla": dla_chart,
    "groups": groups_chart,
    "cumulative": cumulative_chart,
    "tokenizers": tokenizers_chart,
}


def _atlas_charts() -> dict[str, Any]:
    from .metrics import METRIC_DEFINITIONS
    return {f"atlas-{name}": (lambda n=name, d=d: atlas_chart(n, f"{d['title']} ({d['unit']})"))
            for name, d in METRIC_DEFINITIONS.items()}


CHARTS.update(_atlas_charts())


def chart_specs() -> dict[str, dict[str, Any]]:
    return {name: make().to_dict() for name, make in CHARTS.items()}
