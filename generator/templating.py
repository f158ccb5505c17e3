"""The one Jinja environment of the site (no torch): `templates/`, autoescape on, the page filters.

Render draws every page and embed page through it, and `model-atlas export` its self-contained
HTML files (generator/embed.py). Autoescaping is on for every template: prompt text, tokens and
model names only ever enter a page as escaped values, never as template source; undefined values
are errors, not empty strings.
"""

from __future__ import annotations

import html
import json

import jinja2
import markupsafe

from . import pagedata as pd
from . import typeset
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
    env.filters["prompt_title"] = lambda p: pd.prompt_title(p.text)
    env.filters["front_matter"] = front_matter_string
    env.filters["excerpt"] = excerpt
    env.filters["typeset"] = typeset.formula_html
    env.globals["token_counts"] = pd.token_counts
    return env


def front_matter_string(value: str) -> markupsafe.Markup:
    """A page title for the YAML front matter: MkDocs and Material write `page.meta.title` into
    <title> and the header unescaped, so it is HTML-escaped here, then quoted as a JSON string
    (valid YAML) so that quotes, colons and braces in a prompt's text stay text."""
    return markupsafe.Markup(json.dumps(html.escape(value, quote=False), ensure_ascii=False))


def surprisal_style(bits: float | None) -> str:
    """A token chip's heat, 0 (expected) to 1 (16 bits or more), as the CSS variable --atlas-s.

    atlas.css turns it into a colour laid over the page (pale to deep orange in the light scheme,
    dark to orange in the dark one), so one page reads in both. No surprisal: no heat."""
    if bits is None:
        return ""
    level = min(max(bits, 0.0) / 16.0, 1.0)
    return f"--atlas-s: {0.06 + 0.94 * level:.2f}"


EXCERPT_CHARS = 300   # a set page's table shows a long prompt's first characters (its page has all)


def excerpt(text: str) -> str:
    """A long prompt's opening for the set page's table (the long-context set's run to thousands
    of characters), with how long the whole is; a short prompt whole."""
    if len(text) <= EXCERPT_CHARS + 100:
        return text
    return f"{text[:EXCERPT_CHARS]}… ({len(text):,} characters)"
