"""Altair chart specifications (no torch).

Each chart is an Altair spec whose data is a named dataset, left empty here: a page fills it from a
data file it fetches, so large data is never pasted into a page, and the same spec serves every
prompt and model. `chart_specs()` returns them as Vega-Lite dictionaries keyed by chart name.
"""

from __future__ import annotations

from typing import Any

import altair as alt

WIDTH = 340


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
    """Top-k next-token predictions at every position, coloured by probability."""
    base = alt.Chart(alt.Data(name="predictions")).encode(
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
    )
    text = base.mark_text(fontSize=10, limit=64).encode(
        text="token:N",
        color=alt.condition("datum.prob > 0.5", alt.value("white"), alt.value("black")),
    )
    return alt.layer(rect, text).properties(width=WIDTH, height=alt.Step(16))


def surprisal_chart() -> alt.Chart:
    """Surprisal (bits) of the token that actually came next, at every position."""
    return alt.Chart(alt.Data(name="tokens")).transform_filter(
        "datum.surprisal != null").mark_bar().encode(
        x=alt.X("label:N", sort=_tokens_sort("i"), title="token (predicting the next one)",
                axis=alt.Axis(labelAngle=-60, labelLimit=70, labelOverlap=True)),
        y=alt.Y("surprisal:Q", title="surprisal of actual next token (bits)"),
        color=alt.Color("surprisal:Q", scale=alt.Scale(scheme="orangered"), legend=None),
        tooltip=[alt.Tooltip("label:N", title="token"), alt.Tooltip("next:N", title="next"),
                 alt.Tooltip("surprisal:Q", format=".2f", title="bits"),
                 alt.Tooltip("rank:Q", title="rank of next")],
    ).properties(width=WIDTH, height=160)


CHARTS = {
    "attention": attention_chart,
    "predictions": predictions_chart,
    "surprisal": surprisal_chart,
}


def chart_specs() -> dict[str, dict[str, Any]]:
    return {name: make().to_dict() for name, make in CHARTS.items()}
