"""The artifact format: the one contract between the compute and render stages.

One artifact is one JSON file per (model, prompt). `ARTIFACT_SCHEMA` is its JSON Schema; it is
checked on write (compute) and on read (render), together with the cross-field rules JSON Schema
cannot express (every per-position list has one entry per token). `site_src/artifact-format.md`
documents it for people who use the JSON directly.

Attention (`uint8-tril-by-key`) is stored beside the JSON, in `<prompt>.attention.bin`, as raw
bytes: JSON would carry them as base64, a third larger and a fifth worse under gzip. For every layer
and head, the causal lower triangle key by key (key j holds queries j..T-1: weights down one column
vary slowly, which compresses better than row order), each weight as an integer q in 0..128 meaning
q/128. Rounding to the nearest 1/128 keeps every stored weight within 1/256 of the model's own
(`ATTENTION_MAX_ABS_ERROR`, under the format's promise of 1/255) with half the levels of q/255,
which saves a third of the compressed size. The JSON records the file's name, size and SHA-256;
readers check both, so an artifact never pairs with another build's attention.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from .errors import ArtifactError
from .store import atomic_write_bytes, atomic_write_json, sha256_bytes

SCHEMA_VERSION = 2
ATTENTION_ENCODING = "uint8-tril-by-key"
ATTENTION_SCALE = 128
ATTENTION_MAX_ABS_ERROR = 1 / 256    # rounding to the nearest 1/128; the format promises <= 1/255
ATTENTION_SUFFIX = ".attention.bin"

_int_list = {"type": "array", "items": {"type": "integer"}}
_num_or_null = {"type": ["number", "null"]}
_top_k_block = {
    "type": "object",
    "required": ["k", "ids", "probs", "next_logprob", "next_rank"],
    "properties": {
        "k": {"type": "integer", "minimum": 1},
        "ids": {"type": "array", "items": _int_list},
        "probs": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
        "next_logprob": {"type": "array", "items": _num_or_null},
        "next_rank": {"type": "array", "items": {"type": ["integer", "null"]}},
    },
}

ARTIFACT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Model Atlas artifact",
    "type": "object",
    "required": ["format", "schema_version", "key", "provenance", "model", "prompt", "tokens",
                 "predictions", "lens", "attention", "vocab", "generation", "metrics", "groups"],
    "properties": {
        "format": {"const": "model-atlas-artifact"},
        "schema_version": {"type": "integer"},
        "key": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "provenance": {
            "type": "object",
            "required": ["model_id", "model_slug", "revision", "random_weights", "prompt_sha256",
                         "device", "dtype", "attn_implementation", "libraries", "settings"],
            "properties": {
                "model_id": {"type": "string"},
                "model_slug": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]*$"},
                "revision": {"type": "string"},
                "random_weights": {"type": "boolean"},
                "prompt_sha256": {"type": "string"},
                "device": {"type": "string"},
                "dtype": {"type": "string"},
                "attn_implementation": {"const": "eager"},
                "libraries": {"type": "object", "additionalProperties": {"type": "string"}},
                "settings": {"type": "object"},
            },
        },
        "model": {
            "type": "object",
            "required": ["architecture", "model_type", "layers", "query_heads", "kv_heads",
                         "hidden_size", "head_dim", "vocab_size", "parameters"],
        },
        "prompt": {
            "type": "object",
            "required": ["set", "id", "text", "note"],
            "properties": {"text": {"type": "string", "minLength": 1}},
        },
        "tokens": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "text", "bytes", "start", "end", "special"],
                "properties": {
                    "id": {"type": "integer"}, "text": {"type": ["string", "null"]},
                    "bytes": {"type": "string", "pattern": "^([0-9a-f]{2})*$"},
                    "start": {"type": "integer"}, "end": {"type": "integer"},
                    "special": {"type": "boolean"}, "generated": {"type": "boolean"},
                },
            },
        },
        "predictions": _top_k_block,
        "lens": {"type": "array", "items": _top_k_block},
        "attention": {
            "type": "object",
            "required": ["encoding", "scale", "layers", "heads", "length", "file", "bytes",
                         "sha256"],
            "properties": {
                "encoding": {"const": ATTENTION_ENCODING},
                "scale": {"const": ATTENTION_SCALE},
                "layers": {"type": "integer", "minimum": 1},
                "heads": {"type": "integer", "minimum": 1},
                "length": {"type": "integer", "minimum": 1},
                "file": {"type": "string", "pattern": "^[^/\\\\]+\\.attention\\.bin$"},
                "bytes": {"type": "integer", "minimum": 1},
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            },
        },
        "generation": {
            "type": "object", "required": ["prompt_tokens", "generated_tokens", "method"],
            "properties": {"prompt_tokens": {"type": "integer", "minimum": 1},
                           "generated_tokens": {"type": "integer", "minimum": 0}},
        },
        "metrics": {
            "type": "object",
            "required": ["entropy", "prev_token", "first_token", "distance", "induction"],
            "additionalProperties": {"type": "array", "items": {"type": "array",
                                                                "items": _num_or_null}},
        },
        "groups": {"type": "array", "items": {
            "type": "object", "required": ["between", "groups"],
            "properties": {"between": _num_or_null, "groups": {"type": "array"}}}},
        "vocab": {
            "type": "object",
            "additionalProperties": {
                "type": "object", "required": ["text"],
                "properties": {"text": {"type": ["string", "null"]},
                               "bytes": {"type": "string", "pattern": "^([0-9a-f]{2})+$"}},
            },
        },
    },
}


_VALIDATOR = jsonschema.Draft202012Validator(ARTIFACT_SCHEMA)  # compiled once, not per artifact


def tril_size(n: int) -> int:
    return n * (n + 1) // 2


def _check_cross_fields(a: dict[str, Any]) -> None:
    t = len(a["tokens"])
    att = a["attention"]
    if att["length"] != t:
        raise ValueError(f"attention.length is {att['length']} but there are {t} tokens")
    if att["bytes"] != att["layers"] * att["heads"] * tril_size(t):
        raise ValueError(f"attention.bytes is {att['bytes']}, expected layers x heads x "
                         f"T(T+1)/2 = {att['layers'] * att['heads'] * tril_size(t)}")
    if len(a["lens"]) != att["layers"]:
        raise ValueError("lens needs one entry per layer")
    if att["layers"] != a["model"]["layers"] or att["heads"] != a["model"]["query_heads"]:
        raise ValueError("attention layers/heads disagree with the model's architecture")
    for name, block in [("predictions", a["predictions"])] + [
            (f"lens[{i}]", b) for i, b in enumerate(a["lens"])]:
        for field in ("ids", "probs", "next_logprob", "next_rank"):
            if len(block[field]) != t:
                raise ValueError(f"{name}.{field} has {len(block[field])} entries for {t} tokens")
        for field in ("ids", "probs"):
            if any(len(row) != block["k"] for row in block[field]):
                raise ValueError(f"{name}.{field} rows must have k={block['k']} entries")
    for name, values in a["metrics"].items():
        if len(values) != att["layers"] or any(len(v) != att["heads"] for v in values):
            raise ValueError(f"metrics.{name} must be [layers][heads]")
    if a["generation"]["prompt_tokens"] + a["generation"]["generated_tokens"] != t:
        raise ValueError("generation.prompt_tokens + generated_tokens must equal the token count")
    undecodable = [tid for tid, v in a["vocab"].items() if v["text"] is None and "bytes" not in v]
    if undecodable:
        raise ValueError(f"vocab[{undecodable[0]}] has no text, so it needs its bytes")
    missing = {str(i) for row in a["predictions"]["ids"] for i in row} - a["vocab"].keys()
    if missing:
        raise ValueError(f"vocab lacks {len(missing)} predicted ids, e.g. {sorted(missing)[0]}")


def validate_artifact(a: Any, source: str = "artifact", full: bool = True) -> dict[str, Any]:
    """Raise `ArtifactError` naming `source` and the offending field unless `a` is a valid artifact.

    `full=False` checks the top-level fields and the cross-field rules only: the compute stage
    uses it for artifacts it has just built itself (the full JSON Schema walk costs tens of
    milliseconds per artifact); every reader validates in full.
    """
    if isinstance(a, dict) and a.get("schema_version") not in (None, SCHEMA_VERSION):
        raise ArtifactError(
            f"{source}: schema_version {a.get('schema_version')!r} is not the supported version "
            f"{SCHEMA_VERSION}. Recompute it with `model-atlas compute` (it is recomputed "
            f"automatically), or use the Model Atlas release that wrote it.")
    try:
        if not full and isinstance(a, dict):
            missing = [k for k in ARTIFACT_SCHEMA["required"] if k not in a]
            if missing:
                raise ValueError(f"missing fields {missing}")
            _check_cross_fields(a)
            return a
        error = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(a))
        if error is not None:
            raise error
        _check_cross_fields(a)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ArtifactError(f"{source}: invalid field {where}: {e.message}. Delete the file and "
                            f"run `model-atlas compute` to recompute it.") from None
    except ValueError as e:
        raise ArtifactError(f"{source}: {e}. Delete the file and run `model-atlas compute` to "
                            f"recompute it.") from None
    return a


def attention_path(path: Path | str) -> Path:
    """`<prompt>.json` -> `<prompt>.attention.bin`, the file beside it holding the attention."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".json") + ATTENTION_SUFFIX)


def read_artifact(path: Path | str) -> dict[str, Any]:
    """Read, validate and return an artifact, its attention bytes in `["attention"]["data"]`."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{path}: artifact not found. Run `model-atlas compute` first.") from None
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{path}: not UTF-8 (byte {e.start}). Delete it and run "
                            f"`model-atlas compute` to recompute it.") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                            f"the file is truncated or was edited. Delete it and run "
                            f"`model-atlas compute` to recompute it.") from None
    a = validate_artifact(data, str(path))
    a["attention"]["data"] = read_attention(path, a)
    return a


def read_attention(path: Path, a: dict[str, Any]) -> bytes:
    """The attention bytes of the artifact at `path`, checked against its size and SHA-256."""
    att = a["attention"]
    bin_path = path.with_name(att["file"])
    fix = "Delete the artifact and run `model-atlas compute` to recompute it."
    try:
        blob = bin_path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: its attention file {bin_path.name} is missing. {fix}") from None
    if len(blob) != att["bytes"] or sha256_bytes(blob) != att["sha256"]:
        raise ArtifactError(f"{bin_path}: {len(blob)} bytes that do not match attention.bytes "
                            f"({att['bytes']}) and attention.sha256 of {path.name}: the two files "
                            f"come from different builds or one was damaged. {fix}")
    return blob


def current_attention(path: Path, a: dict[str, Any]) -> bool:
    """Whether the attention file beside the artifact at `path` is the one it records."""
    try:
        read_attention(path, a)
        return True
    except (ArtifactError, KeyError, TypeError, OSError):
        return False


def write_artifact(path: Path, a: dict[str, Any]) -> None:
    """Write an artifact built in memory (attention bytes in `["attention"]["data"]`): first the
    attention file, then the JSON that records its size and hash, each atomically. A build killed
    in between leaves a JSON that does not match the new attention file: it is recomputed."""
    att = dict(a["attention"])
    data = att.pop("data")
    if att["file"] != attention_path(path).name:
        raise ValueError(f"attention.file {att['file']!r} does not sit beside {path.name}")
    atomic_write_bytes(attention_path(path), data)
    atomic_write_json(path, {**a, "attention": att})


def tril_by_key(t: int) -> tuple[np.ndarray, np.ndarray]:
    """(query, key) index arrays of the causal lower triangle in stored order: key by key."""
    keys, queries = np.triu_indices(t)
    return queries, keys


def encode_attention(att: np.ndarray) -> bytes:
    """uint8 [L, H, T, T] -> the stored bytes: every layer and head's lower triangle, key by key."""
    queries, keys = tril_by_key(att.shape[-1])
    return np.ascontiguousarray(att[:, :, queries, keys], dtype=np.uint8).tobytes()


def decode_attention(artifact: dict[str, Any], layer: int) -> np.ndarray:
    """Attention of one layer as float32 [heads, T, T] (zeros above the diagonal)."""
    att = artifact["attention"]
    h, t = att["heads"], att["length"]
    flat = np.frombuffer(attention_layer(artifact, layer), dtype=np.uint8)
    if flat.size != h * tril_size(t):
        raise ArtifactError(f"attention layer {layer} holds {flat.size} values, expected "
                            f"{h * tril_size(t)}")
    out = np.zeros((h, t, t), dtype=np.float32)
    queries, keys = tril_by_key(t)
    out[:, queries, keys] = flat.reshape(h, -1).astype(np.float32) / ATTENTION_SCALE
    return out


def attention_layer(artifact: dict[str, Any], layer: int) -> bytes:
    """The stored bytes of one layer: [heads, T(T+1)/2], key by key."""
    att = artifact["attention"]
    size = att["heads"] * tril_size(att["length"])
    return att["data"][layer * size:(layer + 1) * size]
