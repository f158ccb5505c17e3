"""The manifest of a built docs tree: what render wrote, for `model-atlas export` (no torch).

Render records in `layout.MANIFEST` every model (names, shape, random weights, prompts), the chart
kinds, and every chart of the site with the files it is drawn from (`embed.ChartRef`). Export reads
this record and the files it lists, never render's code or its temporary folder. The record is
checked on read against `MANIFEST_SCHEMA`, and every path in it must stay inside the docs tree.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Sequence

import jsonschema

from . import layout
from .embed import ChartRef, ModelInfo
from .errors import AtlasError

FORMAT = "model-atlas-manifest"
VERSION = 1

_str_or_null = {"type": ["string", "null"]}
_PATH_FIELDS = ("page", "data", "heads", "artifact")
MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["format", "version", "kinds", "models", "charts"],
    "properties": {
        "format": {"const": FORMAT},
        "version": {"const": VERSION},
        "kinds": {"type": "array", "items": {"type": "string"}},
        "models": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False,
            "required": [f.name for f in fields(ModelInfo)],
            "properties": {"slug": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]*$"},
                           "model_id": {"type": "string"},
                           "layers": {"type": "integer", "minimum": 1},
                           "query_heads": {"type": "integer", "minimum": 1},
                           "kv_heads": {"type": "integer", "minimum": 1},
                           "random_weights": {"type": "boolean"},
                           "prompts": {"type": "array", "items": {"type": "string"}}}}},
        "charts": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["name", "scope", "stem", "page", "data"],
            "properties": {"name": {"type": "string"}, "scope": {"type": "string"},
                           "stem": {"type": "string"}, "page": {"type": "string"},
                           "data": {"type": "string"}, "model": _str_or_null,
                           "prompt": _str_or_null, "heads": _str_or_null,
                           "artifact": _str_or_null}}},
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(MANIFEST_SCHEMA)


def manifest_data(models: Sequence[ModelInfo], kinds: Sequence[str],
                  charts: Sequence[ChartRef]) -> dict[str, Any]:
    """The manifest's content (JSON-ready)."""
    return {"format": FORMAT, "version": VERSION, "kinds": sorted(kinds),
            "models": [{**asdict(m), "prompts": list(m.prompts)} for m in models],
            "charts": [asdict(c) for c in charts]}


class Manifest:
    """A validated manifest: models by slug (in the site's order), chart kinds, charts."""

    def __init__(self, docs: Path, data: dict[str, Any]):
        self.docs = docs
        self.kinds: list[str] = data["kinds"]
        self.models = {m["slug"]: ModelInfo(**{**m, "prompts": tuple(m["prompts"])})
                       for m in data["models"]}
        self.charts = [ChartRef(**c) for c in data["charts"]]
        self.prompts = sorted({k for m in self.models.values() for k in m.prompts})


def _fail(path: Path, problem: str) -> AtlasError:
    return AtlasError(f"{path}: {problem}. Run `model-atlas render` (or `model-atlas build`) "
                      f"again to rewrite it.")


def read_manifest(docs_dir: Path) -> Manifest:
    """The manifest of a built docs tree (`<build-dir>/docs`), checked."""
    path = Path(docs_dir) / layout.MANIFEST
    if not path.is_file():
        raise AtlasError(f"{docs_dir}: no built site here (no {layout.MANIFEST}). Run "
                         f"`model-atlas build` first, or give the --build-dir of that build.")
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _fail(path, f"cannot read it ({e})") from None
    error = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise _fail(path, f"invalid field {where}: {error.message}")
    for i, chart in enumerate(data["charts"]):
        values = {name: chart.get(name) for name in _PATH_FIELDS}
        values["scope, stem"] = layout.chart_file(chart["scope"], chart["stem"])
        for name, value in values.items():
            if value is not None and not layout.is_docs_path(value):
                raise _fail(path, f"invalid field {name} of chart {i}: {value!r} is not a path "
                                  f"inside the docs tree")
        if chart.get("model") is not None and chart["model"] not in {
                m["slug"] for m in data["models"]}:
            raise _fail(path, f"invalid field model of chart {i}: {chart['model']!r} is not a "
                              f"model of the manifest")
    return Manifest(Path(docs_dir), data)
