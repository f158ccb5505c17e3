"""The one Jinja environment of the site (no torch): `templates/`, autoescape on, the page filters.

Render draws every page and embed page through it, and `model-atlas export` its self-contained
HTML files (generator/embed.py). Autoescaping is on for every template: prompt text, tokens and
model names only ever enter a page as escaped values, never as template source; undefined values
are errors, not empty strings.
"""

from __future__ import annotations

import jinja2

from . import pagedata as pd
from .resources import resource_path


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(resource_path("templates")),
        autoescape=True, trim_blocks=True, lstrip_blocks=True,
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["show_token"] = lambda t: pd.show_token(t["text"], t["bytes"], t["id"])
    env.filters["thousands"] = lambda n: f"{n:,}" if isinstance(n, int) else n
    env.filters["surprisal_style"] = surprisal_style
    env.filters["char_style"] = lambda b: surprisal_style(None if b is None else 4 * b)
    return env


def surprisal_style(bits: float | None) -> str:
    """Background colour for a token chip: white (expected) to deep orange (surprising)."""
    if bits is None:
        return "background: transparent"
    level = min(bits / 16.0, 1.0)
    return f"background: hsl(24, 95%, {98 - 48 * level:.0f}%)"
