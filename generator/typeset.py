"""Formulas as HTML: the plain-text formulas of `metrics.METRIC_DEFINITIONS` typeset with <var>
and <sub>, so pages show a_ij as an italic a with subscript ij without a math renderer (no
script, no CDN, nothing to download; atlas.css sets them in a serif face).

The plain text stays the one definition (tests check it holds no LaTeX); this module only reads
its conventions: `x_ij` and `x_i,j` and `x_{...}` are subscripts, `log2` is log base 2, and a
single letter is a variable.
"""

from __future__ import annotations

import html
import re

import markupsafe

# An identifier with an optional subscript: a_ij, a_i,i−1, a_h′,i, Σ_{k∈S_i}, Σ_j, log2.
_TOKEN = re.compile(r"""
    (?P<entity>&[a-z]+;)
  | (?P<log>\blog2\b)
  | (?P<name>[A-Za-zΣ]+)(?P<prime>′*)
    (?:_(?:\{(?P<braced>[^{}]*)\}|(?P<plain>[A-Za-z0-9′]+(?:,[A-Za-z0-9′−+]+)?)))?
""", re.VERBOSE)

# Words of the formulas' prose and function names, set upright.
_UPRIGHT = {"mean", "over", "of", "and", "in", "a", "group", "pairs", "heads", "with", "log",
            "cos", "JS", "KL", "rows", "head", "flattened", "Σ"}


def _inline(text: str, in_sub: bool = False) -> str:
    """Typeset an already HTML-escaped fragment (in a subscript, `ij` is two indices)."""
    def one(m: re.Match) -> str:
        if m.group("entity"):      # &lt; &gt; &amp; of the escaping stay as they are
            return m.group("entity")
        if m.group("log"):
            return "log<sub>2</sub>"
        name, prime = m.group("name"), m.group("prime")
        # "a" is the attention weight when it carries a subscript, else the English article.
        var = len(name) == 1 and name != "Σ" and (name != "a" or m.group("braced") or
                                                   m.group("plain"))
        if name in _UPRIGHT and not var:
            out = name + prime
        elif len(name) == 1 or (in_sub and len(name) <= 3 and name.islower()):
            out = f"<var>{name}</var>{prime}"
        else:
            out = name + prime
        sub = m.group("braced") if m.group("braced") is not None else m.group("plain")
        if sub:
            out += f"<sub>{_inline(sub, in_sub=True)}</sub>"
        return out
    return _TOKEN.sub(one, text)


def formula_html(formula: str) -> markupsafe.Markup:
    """`mean over i≥1 of a_i,i−1` -> HTML with the variables in <var> and subscripts in <sub>."""
    return markupsafe.Markup(f'<span class="atlas-formula">{_inline(html.escape(formula))}</span>')
