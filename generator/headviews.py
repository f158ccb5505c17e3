"""The head pages' small pictures, drawn at render time: inline SVG and PNG data URIs (no script).

A head page draws everything it shows into its own HTML, so its first chart needs no data file and
no chart library. Shapes take their colour from the text (`currentColor`) or from Material's
primary colour, so they read in light and dark. Every picture has a text alternative, and every
number it shows is also printed on the page (generator/heads.py computes them).
"""

from __future__ import annotations

import base64
import html
import struct
import zlib
from typing import Any, Sequence

import markupsafe
import numpy as np

ACCENT = "var(--md-primary-fg-color, #3f51b5)"
# Material's slate (dark) scheme keeps indigo for the header; on a dark page a lighter blue reads.
PATTERN_RGB = (74, 108, 230)     # a blue that reads on white and on the dark scheme (alpha: weight)


def _fmt(x: float) -> str:
    """An axis end, short: 2 decimals at most, no "-0"."""
    text = f"{x:.2f}".rstrip("0").rstrip(".") if abs(x) < 1e6 else f"{x:.3g}"
    return "0" if text in ("-0", "") else text


def histogram_svg(edges: Sequence[float], head: Sequence[int], everyone: Sequence[int],
                  mean: float | None, label: str, width: int = 320, height: int = 64
                  ) -> markupsafe.Markup:
    """Two histograms over the same bins: the head's value on each prompt (filled, accent) over
    the means of every head of the model (outline, text colour), and the head's mean (a line)."""
    n = len(head)
    top = max(max(head, default=0), 1)
    top_all = max(max(everyone, default=0), 1)
    lo, hi = edges[0], edges[-1]
    span = (hi - lo) or 1.0
    bw = (width - 2) / n
    base = height - 14
    parts = [f'<svg class="atlas-mini" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="{html.escape(label)}">']
    for k in range(n):
        x = 1 + k * bw
        h_all = (base - 4) * everyone[k] / top_all
        if everyone[k]:
            parts.append(f'<rect x="{x:.1f}" y="{base - h_all:.1f}" width="{bw - 1:.1f}" '
                         f'height="{h_all:.1f}" fill="none" stroke="currentColor" '
                         f'stroke-opacity="0.45"/>')
        h = (base - 4) * head[k] / top
        if head[k]:
            parts.append(f'<rect x="{x + 2:.1f}" y="{base - h:.1f}" width="{max(bw - 5, 1):.1f}" '
                         f'height="{h:.1f}" style="fill:{ACCENT}"/>')
    parts.append(f'<line x1="0" y1="{base}" x2="{width}" y2="{base}" stroke="currentColor" '
                 f'stroke-opacity="0.5"/>')
    if mean is not None:
        x = 1 + (width - 2) * (mean - lo) / span
        parts.append(f'<line x1="{x:.1f}" y1="2" x2="{x:.1f}" y2="{base}" stroke="currentColor" '
                     f'stroke-width="2" stroke-dasharray="3 2"/>')
    parts.append(f'<text x="1" y="{height - 2}" font-size="10" fill="currentColor">{_fmt(lo)}'
                 f'</text>')
    parts.append(f'<text x="{width - 1}" y="{height - 2}" font-size="10" text-anchor="end" '
                 f'fill="currentColor">{_fmt(hi)}</text>')
    parts.append("</svg>")
    # Markup: every text in it is escaped here (labels) or a number.
    return markupsafe.Markup("".join(parts))


def bars_svg(labels: Sequence[str], shares: Sequence[float], highlight: int | None,
             label: str, width: int = 360, height: int = 120) -> markupsafe.Markup:
    """Vertical bars of shares (0..1) with their labels under them; bar `highlight` in the accent
    colour, the others in the text colour."""
    n = len(labels)
    top = max(max(shares, default=0.0), 1e-9)
    bw = width / n
    base = height - 16
    parts = [f'<svg class="atlas-mini" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="{html.escape(label)}">']
    for k, (name, s) in enumerate(zip(labels, shares)):
        x = k * bw
        h = (base - 12) * s / top
        style = f'style="fill:{ACCENT}"' if k == highlight else \
            'fill="currentColor" fill-opacity="0.55"'
        parts.append(f'<rect x="{x + 1:.1f}" y="{base - h:.1f}" width="{bw - 2:.1f}" '
                     f'height="{h:.1f}" {style}/>')
        if s >= 0.005:
            parts.append(f'<text x="{x + bw / 2:.1f}" y="{base - h - 2:.1f}" font-size="9" '
                         f'text-anchor="middle" fill="currentColor">{round(s * 100)}</text>')
        parts.append(f'<text x="{x + bw / 2:.1f}" y="{height - 3}" font-size="9" '
                     f'text-anchor="middle" fill="currentColor">{html.escape(name)}</text>')
    parts.append("</svg>")
    # Markup: every text in it is escaped here (labels) or a number.
    return markupsafe.Markup("".join(parts))


def _png(rgba: np.ndarray) -> bytes:
    """A PNG of an RGBA uint8 image [h, w, 4] (zlib, one filter byte per row)."""
    h, w, _ = rgba.shape
    raw = b"".join(b"\x00" + rgba[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def pattern_png(cells: np.ndarray) -> str:
    """A data URI of an attention pattern: one pixel per cell, indigo, opaque where the weight is
    1 and clear where it is 0 (square root: weights of a few percent still show)."""
    a = np.sqrt(np.clip(np.nan_to_num(cells), 0.0, 1.0))
    rgba = np.zeros(a.shape + (4,), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = PATTERN_RGB
    rgba[..., 3] = np.round(a * 255).astype(np.uint8)
    return "data:image/png;base64," + base64.b64encode(_png(rgba)).decode("ascii")


def metric_histograms(metrics: dict[str, Any], bins: int = 16) -> dict[str, markupsafe.Markup]:
    """Per metric the histogram SVG of `heads.model_heads` values (one head's `metrics`)."""
    out = {}
    for name, m in metrics.items():
        mine = [v for v in m["per_prompt"] if v is not None]
        everyone = [v for v in m["all_means"] if v is not None]
        both = mine + everyone
        if not both:
            continue
        lo, hi = min(both), max(both)
        if hi == lo:
            hi = lo + 1.0
        edges = np.linspace(lo, hi, bins + 1)
        head = np.histogram(mine, edges)[0].tolist()
        all_h = np.histogram(everyone, edges)[0].tolist()
        out[name] = histogram_svg(edges.tolist(), head, all_h, m["mean"],
                                  f"{name}: this head on each prompt, against every head's mean")
    return out
