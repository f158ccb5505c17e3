"""The head pages and the model page's scatter of heads (render stage, no torch).

`write_all` writes one page per query head of every model (`layout.head_page`, template
`templates/head.md.j2`): the aggregates of generator/heads.py, computed once per model from its
artifacts and its OV artifact (generator/ov.py, when the compute stage wrote one), drawn by
generator/headviews.py into the page itself. (The model page's scatter of every head draws from
the head atlas's data file, site_src/assets/heads.js.)
"""

from __future__ import annotations

import time
from typing import Any

from . import layout
from .headviews import bars_svg, metric_histograms, pattern_png
from .heads import POSITION_VALUE, model_heads, read_ov


def _ov_of(site: Any, m: Any) -> dict[str, Any] | None:
    """The model's OV artifact when it is of this model and revision, else None."""
    root = site.catalog.artifacts_dir
    if root is None:
        return None
    data = read_ov(layout.ov_path(root, m.slug))
    if data is None or data.get("model_id") != m.model_id or data.get("revision") != m.revision:
        return None
    return data


def write_all(site: Any) -> None:
    """Every head page of every model of `site` (render's `_Site`)."""
    for m in site.catalog.models:
        t0 = time.perf_counter()
        keys = list(m.prompts)
        heads = model_heads(keys, [site.catalog.artifacts[(m.slug, k)] for k in keys],
                            _ov_of(site, m))
        for n, h in enumerate(heads):
            for e in h["itself"]:
                e["png"] = pattern_png(e.pop("image"))
            labels = ["first"] + [b["label"] for b in h["distance"]]
            shares = [h["first_share"]] + [b["share"] for b in h["distance"]]
            last = max((k for k, s in enumerate(shares) if s >= 0.0005), default=1)
            peak = max(range(1, len(shares)), key=lambda k: shares[k])
            site.page(layout.head_page(m.slug, h["layer"], h["head"]), "head.md.j2",
                      model=m, head=h, prev=heads[n - 1] if n else None,
                      next=heads[n + 1] if n + 1 < len(heads) else None,
                      histograms=metric_histograms(h["metrics"]),
                      distance_svg=bars_svg(labels[:last + 1], shares[:last + 1], peak,
                                            f"{h['name']}: attention by query-key distance"),
                      position_value=POSITION_VALUE)
        site.log(f"render: {len(heads)} head pages of {m.slug} in {time.perf_counter() - t0:.1f}s")
