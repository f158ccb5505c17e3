"""Where the package's non-Python files are: the checkout's, else the copies installed with it.

`templates/`, `site_src/`, `prompt_sets/` and `mkdocs.yml` live at the repository root (the
project's fixed layout). A wheel cannot install files outside its packages, so the build copies
them into `generator/_data/` (see `setup.py`, which reads `PACKAGED` from this file). A checkout
(editable install, or `PYTHONPATH` pointing at it) uses the root copies, so an edit to a template
shows in the next build without reinstalling; an installed wheel uses `_data/`.

This module imports nothing from the package: `setup.py` loads it by path at build time.
"""

from __future__ import annotations

from pathlib import Path

# Every resource the package reads at run time, as a path relative to the repository root.
PACKAGED = ("templates", "site_src", "prompt_sets", "mkdocs.yml")
DATA_DIR = "_data"   # inside the package, where the build puts the copies

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent


def _in_checkout() -> bool:
    # An installed package's parent is site-packages, where another distribution may well have
    # put a top-level templates/ directory: only a checkout has our pyproject.toml beside us.
    return (_CHECKOUT / "pyproject.toml").is_file()


def resource_path(name: str) -> Path:
    """The checkout's `name` (a directory or file of `PACKAGED`), else the installed copy."""
    if name not in PACKAGED:
        raise ValueError(f"{name!r} is not a packaged resource; known: {', '.join(PACKAGED)}")
    candidates = ([_CHECKOUT / name] if _in_checkout() else []) + [_PACKAGE / DATA_DIR / name]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"cannot find {name} of Model Atlas: neither {_CHECKOUT / name} (a checkout) nor "
        f"{_PACKAGE / DATA_DIR / name} (an installed wheel) exists. Reinstall the package "
        f"(`pip install model-atlas` or `pip install -e .` in a checkout).")
