"""The artifact format: the one contract between the compute and render stages.

One artifact is one JSON file per (model, prompt). `ARTIFACT_SCHEMA` is its JSON Schema; it is
checked on write (compute) and on read (render), together with the cross-field rules JSON Schema
cannot express (every per-position list has one entry per token). `site_src/artifact-format.md`
documents it for people who use the JSON directly.

Attention (`nonzero-runs-base6`, `codec.py`) is stored beside the JSON, in
`<prompt>.attention.bin`, as raw bytes: JSON would carry them as base64, a third larger and a fifth
worse under gzip. Each weight is rounded to the nearest 1/128 (an integer q in 0..128 meaning
q/128), which keeps every weight, stored or rounded to 0, within 1/256 of the model's own
(`ATTENTION_MAX_ABS_ERROR`, under the format's promise of 1/255). Only the non-zero values are
stored (base-6 digits three to a byte, with overflow bytes), with the runs of zero and non-zero
positions between them, so the file grows with what is non-zero, not with the square of the
prompt's length: a row holds at most 256 non-zero weights. The JSON records each head's counts
(`nonzero`, `overflow_bytes`, `run_bytes`), so one head can be read, or served, alone. The logit
lens follows in the same file (`Lens`: int32 ids, float16 log-probabilities), not in the JSON,
where its numbers were half the text and most of the time spent writing it. The JSON records the
file's name, size and SHA-256 and where the lens starts; readers check the file, so an artifact
never pairs with another build's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import codec
from .codec import byte_planes, from_byte_planes, tril_size
from .errors import ArtifactError
from .store import artifact_json, atomic_write_bytes, sha256_bytes

# 3: metrics from full-precision attention; provenance states the softmax.
# 4: direct logit attribution (`attribution`, metrics.direct_logit). A new version, not an edit of
# 3: the version is part of every content key, so schema-3 artifacts (no attribution) are
# recomputed rather than taken as current.
# 5: attention as base-6 digits with overflow bytes (`base6-tril-by-key`, `overflow_bytes`); the
# logit lens in the same binary file, after the attention (`lens`: LENS_ENCODING).
# 6: sparse attention (`nonzero-runs-base6`): each head's non-zero values and the runs between
# them (`nonzero`, `overflow_bytes`, `run_bytes` per head); the site serves one file per head.
SCHEMA_VERSION = 6
ATTENTION_ENCODING = "nonzero-runs-base6"
ATTENTION_SCALE = codec.SCALE
ATTENTION_MAX_ABS_ERROR = 1 / 256    # rounding to the nearest 1/128; the format promises <= 1/255
ATTENTION_SUFFIX = ".attention.bin"
LENS_ENCODING = "int32-ids-float16-logprobs-byte-planes"
DLA_TOP_K = 16        # attribution components stored per position and target; the rest are summed
DLA_TARGETS = ("top1", "next")


def dla_component_names(layers: int, heads: int) -> list[str]:
    """Names of the attribution's components, in the order of its last axis: embed,
    L0.H0 .. L{L-1}.H{H-1} (layer-major), L0.MLP .. L{L-1}.MLP, bias."""
    return (["embed"] + [f"L{l}.H{h}" for l in range(layers) for h in range(heads)]
            + [f"L{l}.MLP" for l in range(layers)] + ["bias"])

_int_list = {"type": "array", "items": {"type": "integer"}}
_per_head = {"type": "array", "items": {"type": "array", "items": {"type": "integer",
                                                                  "minimum": 0}}}  # [L][H]
INDEX_FIELDS = ("nonzero", "overflow_bytes", "run_bytes")   # codec's index columns, in order
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
                 "predictions", "lens", "attention", "vocab", "generation", "metrics", "groups",
                 "attribution"],
    "properties": {
        "format": {"const": "model-atlas-artifact"},
        "schema_version": {"type": "integer"},
        "key": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "provenance": {
            "type": "object",
            "required": ["model_id", "model_slug", "revision", "random_weights", "prompt_sha256",
                         "device", "dtype", "attn_implementation", "attention_softmax",
                         "attention_error_bound", "libraries", "settings"],
            "properties": {
                "model_id": {"type": "string"},
                "model_slug": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]*$"},
                "revision": {"type": "string"},
                "random_weights": {"type": "boolean"},
                "prompt_sha256": {"type": "string"},
                "device": {"type": "string"},
                "dtype": {"type": "string"},
                "attn_implementation": {"const": "eager"},
                "attention_softmax": {"const": "float32"},
                "attention_error_bound": {"type": "number", "exclusiveMinimum": 0,
                                          "maximum": 1 / 255},
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
        "lens": {
            "type": "object",
            "required": ["encoding", "k", "layers", "length", "offset", "bytes"],
            "properties": {
                "encoding": {"const": LENS_ENCODING},
                "k": {"type": "integer", "minimum": 1},
                "layers": {"type": "integer", "minimum": 1},
                "length": {"type": "integer", "minimum": 1},
                "offset": {"type": "integer", "minimum": 1},
                "bytes": {"type": "integer", "minimum": 1},
            },
        },
        "attention": {
            "type": "object",
            "required": ["encoding", "scale", "layers", "heads", "length", "file", "bytes",
                         "sha256", "nonzero", "overflow_bytes", "run_bytes"],
            "properties": {
                "encoding": {"const": ATTENTION_ENCODING},
                "scale": {"const": ATTENTION_SCALE},
                "layers": {"type": "integer", "minimum": 1},
                "heads": {"type": "integer", "minimum": 1},
                "length": {"type": "integer", "minimum": 1},
                "file": {"type": "string", "pattern": "^[^/\\\\]+\\.attention\\.bin$"},
                "bytes": {"type": "integer", "minimum": 1},
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "nonzero": _per_head, "overflow_bytes": _per_head, "run_bytes": _per_head,
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
        "attribution": {
            "type": "object",
            "required": ["components", "top_k", "targets", "index", "value", "rest",
                         "max_rel_error"],
            "properties": {
                "components": {"type": "integer", "minimum": 3},
                "top_k": {"type": "integer", "minimum": 1},
                "targets": {"const": list(DLA_TARGETS)},
                "index": {"type": "array", "items": {"type": "array", "items": {
                    "type": ["array", "null"], "items": {"type": "integer", "minimum": 0}}}},
                "value": {"type": "array", "items": {"type": "array", "items": {
                    "type": ["array", "null"], "items": {"type": "number"}}}},
                "rest": {"type": "array", "items": {"type": "array", "items": _num_or_null}},
                "max_rel_error": {"type": "number", "minimum": 0},
            },
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


# --- the typed constructor: the compute stage supplies values, these classes write the fields ---

def _rounded_array(x: np.ndarray, digits: int) -> list:
    values = np.round(x.astype(np.float64), digits)
    out = values.tolist()
    nan = np.isnan(values)
    if nan.any():
        for idx in zip(*np.nonzero(nan)):                      # NaN -> None, in place
            row = out
            for i in idx[:-1]:
                row = row[i]
            row[idx[-1]] = None
    return out


@dataclass(frozen=True)
class TopK:
    """Per-position top-k predictions of one layer (the lens) or of the model's output.

    Built by the compute stage, `ids`, `probs` and `next_logprob` are numpy arrays, written to
    JSON as they are (`store.artifact_json`: NaN as null); read back, they are lists."""
    k: int
    ids: Any                            # [T][k] token ids, most likely first
    probs: Any                          # [T][k] probabilities, 6 decimals
    next_logprob: Any                   # [T] log-probability of the token that came next; None last
    next_rank: list[int | None]         # [T] its rank (1 = top prediction); None where none came

    @classmethod
    def from_arrays(cls, ids: np.ndarray, logprobs: np.ndarray, next_logprob: np.ndarray,
                    next_rank: np.ndarray, k: int) -> "TopK":
        """ids, logprobs: [T, >=k]; next_logprob: [T] (NaN = no next token); next_rank: [T]
        (0 = no next token)."""
        return cls.layers_from_arrays(ids[None], logprobs[None], next_logprob[None],
                                      next_rank[None], k)[0]

    @classmethod
    def layers_from_arrays(cls, ids: np.ndarray, logprobs: np.ndarray, next_logprob: np.ndarray,
                           next_rank: np.ndarray, k: int) -> list["TopK"]:
        """One TopK per layer from stacked arrays, each converted in one bulk operation:
        ids, logprobs: [L, T, >=k]; next_logprob, next_rank: [L, T]."""
        ids_l = np.ascontiguousarray(ids[:, :, :k], dtype=np.int64)
        probs_l = np.round(np.exp(logprobs[:, :, :k].astype(np.float64)), 6)
        nlp_l = np.round(next_logprob.astype(np.float64), 4)
        rank_l = next_rank.tolist()                          # ints: None where 0
        for l, t in zip(*np.nonzero(next_rank == 0)):
            rank_l[l][t] = None
        return [cls(k, ids_l[l], probs_l[l], nlp_l[l], rank_l[l]) for l in range(len(ids_l))]

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "ids": self.ids, "probs": self.probs,
                "next_logprob": self.next_logprob, "next_rank": self.next_rank}


def lens_bytes(layers: int, length: int, k: int) -> int:
    """Size of the lens section: ids int32 and log-probabilities float16 [L, T, k], the next
    token's log-probability float16 and rank int32 [L, T]."""
    return layers * length * (6 * k + 6)


@dataclass(frozen=True)
class Lens:
    """The logit lens of every layer, stored after the attention in the binary file beside the
    JSON (`LENS_ENCODING`): `read_artifact` turns it back into one `TopK` dict per layer."""
    k: int
    layers: int
    length: int
    data: bytes = field(repr=False)

    @classmethod
    def from_arrays(cls, ids: np.ndarray, logprobs: np.ndarray, next_logprob: np.ndarray,
                    next_rank: np.ndarray, k: int) -> "Lens":
        """ids, logprobs: [L, T, >=k]; next_logprob: [L, T] (NaN: no next token); next_rank:
        [L, T] (0: no next token). Little-endian, one bulk conversion per array; all but the ids
        in byte planes (`byte_planes`)."""
        L, T = next_rank.shape
        data = b"".join([np.ascontiguousarray(ids[:, :, :k], dtype="<i4").tobytes(),
                         byte_planes(logprobs[:, :, :k].astype("<f2")),
                         byte_planes(next_logprob.astype("<f2")),
                         byte_planes(next_rank.astype("<i4"))])
        return cls(k, L, T, data)

    def to_dict(self, offset: int) -> dict[str, Any]:
        return {"encoding": LENS_ENCODING, "k": self.k, "layers": self.layers,
                "length": self.length, "offset": offset, "bytes": len(self.data)}


def decode_lens(lens: dict[str, Any], blob: bytes | memoryview) -> list[dict[str, Any]]:
    """The lens section of an artifact's binary file -> one dict per layer, as `TopK.to_dict`
    writes them: ids [T][k], probs [T][k] (6 decimals), next_logprob [T] (4 decimals) and
    next_rank [T], None where no token came next."""
    L, T, k = lens["layers"], lens["length"], lens["k"]
    raw = memoryview(blob)[lens["offset"]:lens["offset"] + lens["bytes"]]
    if raw.nbytes != lens_bytes(L, T, k):
        raise ArtifactError(f"the lens section holds {raw.nbytes} bytes, expected "
                            f"{lens_bytes(L, T, k)} for {L} layers x {T} tokens x k={k}")
    n = L * T * k
    ids = np.frombuffer(raw, "<i4", n, 0).reshape(L, T, k)
    logprobs = from_byte_planes(raw, "<f2", n, 4 * n).reshape(L, T, k)
    next_lp = from_byte_planes(raw, "<f2", L * T, 6 * n)
    rank = from_byte_planes(raw, "<i4", L * T, 6 * n + 2 * L * T).reshape(L, T)
    out = []
    for b in TopK.layers_from_arrays(ids, logprobs, next_lp.reshape(L, T), rank, k):
        d = b.to_dict()
        d["ids"], d["probs"] = d["ids"].tolist(), d["probs"].tolist()
        d["next_logprob"] = _rounded_array(d["next_logprob"], 4)      # NaN: None
        out.append(d)
    return out


@dataclass(frozen=True)
class Provenance:
    """Where the numbers come from; documented in `site_src/artifact-format.md`."""
    model_id: str
    model_slug: str
    revision: str
    random_weights: bool
    prompt_sha256: str
    device: str                         # "cpu", "cuda", "mps" (no device index)
    dtype: str                          # the weights' dtype the model ran in
    libraries: dict[str, str]
    settings: dict[str, Any]
    attn_implementation: str = "eager"   # the eager computation (float32 softmax kept in any dtype)
    # Stored weights are within ATTENTION_MAX_ABS_ERROR of the float32 softmax of the scores the
    # model computed in `dtype` (in float32: of the float32 model's attention itself).
    attention_softmax: str = "float32"
    attention_error_bound: float = ATTENTION_MAX_ABS_ERROR

    def to_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "model_slug": self.model_slug,
                "revision": self.revision, "random_weights": self.random_weights,
                "prompt_sha256": self.prompt_sha256, "device": self.device, "dtype": self.dtype,
                "attn_implementation": self.attn_implementation,
                "attention_softmax": self.attention_softmax,
                "attention_error_bound": self.attention_error_bound,
                "libraries": dict(self.libraries), "settings": dict(self.settings)}


@dataclass(frozen=True)
class PromptInfo:
    set: str
    id: str
    text: str
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {"set": self.set, "id": self.id, "text": self.text, "note": self.note}


@dataclass(frozen=True)
class Attention:
    """The stored attention: `data` is the `nonzero-runs-base6` bytes written beside the JSON
    (every head's digits, then overflow bytes, then runs: `codec.encode_heads`), `index` int64
    [L, H, 3] each head's count of non-zero values, of overflow bytes, and its runs' size."""
    layers: int
    heads: int
    length: int
    file: str                           # <prompt id> + ATTENTION_SUFFIX, beside the JSON
    data: bytes | memoryview = field(repr=False)  # the stored bytes (written as they are)
    index: np.ndarray = field(repr=False, default=None)
    sha256: str | None = None           # of the file (`data`, then the lens), if hashed already

    @classmethod
    def from_encoded(cls, data: np.ndarray, index: np.ndarray, heads: int, length: int,
                     prompt_id: str, sha256: str | None = None) -> "Attention":
        """data: uint8, the bytes as `extract.encode_on_device` encodes them on the device;
        index: [L, H, 3]; sha256: the file's hash, if known (`write_binary_file` returns it)."""
        data = memoryview(np.ascontiguousarray(data, dtype=np.uint8).reshape(-1))
        index = np.asarray(index, dtype=np.int64)
        expected = codec.section_bytes(index)
        if data.nbytes != expected or index.shape[1:] != (heads, 3):
            raise ValueError(f"{data.nbytes} attention bytes, expected {expected} for an index "
                             f"of {heads} heads a layer")
        return cls(len(index), heads, length, prompt_id + ATTENTION_SUFFIX, data, index, sha256)

    @classmethod
    def from_quantized(cls, q: np.ndarray, prompt_id: str) -> "Attention":
        """q: uint8 [L, H, T, T], q / ATTENTION_SCALE, zero above the diagonal."""
        L, H, T, _ = q.shape
        data, index = codec.encode_heads(q)
        return cls(L, H, T, prompt_id + ATTENTION_SUFFIX, data, index.reshape(L, H, 3))

    def to_dict(self, *after: bytes) -> dict[str, Any]:
        """The JSON fields; `data`: the attention bytes. The file holds them and then `after`
        (the lens): `bytes` and `sha256` are the whole file's."""
        size = memoryview(self.data).nbytes + sum(len(part) for part in after)
        return {"encoding": ATTENTION_ENCODING, "scale": ATTENTION_SCALE, "layers": self.layers,
                "heads": self.heads, "length": self.length, "file": self.file,
                "bytes": size, "sha256": self.sha256 or sha256_bytes(self.data, *after),
                **{name: self.index[..., i].tolist() for i, name in enumerate(INDEX_FIELDS)},
                "data": self.data}


@dataclass(frozen=True)
class Generation:
    prompt_tokens: int
    generated_tokens: int
    method: str = "greedy"

    def to_dict(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "generated_tokens": self.generated_tokens,
                "method": self.method}


@dataclass(frozen=True)
class KVGroup:
    """Within-group comparison of the query heads sharing key/value head `group` (4 decimals;
    None: undefined)."""
    group: int
    heads: list[int]
    similarity: float | None
    mean_js: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "heads": list(self.heads),
                "similarity": self.similarity, "mean_js": self.mean_js}


@dataclass(frozen=True)
class LayerGroups:
    """One layer's grouped-query comparison: `between` is the baseline across groups."""
    between: float | None
    groups: list[KVGroup]

    @classmethod
    def layers_from_array(cls, values: np.ndarray, members: list[list[int]]) -> list["LayerGroups"]:
        """values: float [L, 1 + 2G] (between, then each group's similarity and mean JS, NaN:
        undefined), rounded to 4 decimals in one operation; members: each group's heads."""
        rows = _rounded_array(values, 4)                            # [L][1 + 2G]
        return [cls(row[0], [KVGroup(g, heads, row[1 + 2 * g], row[2 + 2 * g])
                             for g, heads in enumerate(members)])
                for row in rows]

    def to_dict(self) -> dict[str, Any]:
        return {"between": self.between, "groups": [g.to_dict() for g in self.groups]}


@dataclass(frozen=True)
class Attribution:
    """Direct logit attribution (generator/attribution.py) at every position, to the logit of the
    model's top-1 prediction and of the token that came next (`DLA_TARGETS`): per position and
    target the `top_k` components with the largest |contribution| (indices in
    `dla_component_names` order, largest first), their values, and the sum of all the
    others plus the rounding of the listed values, so that sum(value) + rest is the logit within
    0.0005 (`attribution.rank_components`). None where there is no target (no next token
    after the last position)."""
    components: int
    top_k: int
    index: list[list[list[int] | None]]       # [T][2][top_k]
    value: list[list[list[float] | None]]     # [T][2][top_k], 3 decimals
    rest: list[list[float | None]]            # [T][2]
    max_rel_error: float                      # max |sum - logit| / max(|logit|, 1) at this prompt

    @classmethod
    def from_ranked(cls, components: int, index: np.ndarray, value: np.ndarray, rest: np.ndarray,
                    error: np.ndarray) -> "Attribution":
        """index int [T, 2, k], value float [T, 2, k], rest float [T, 2] (NaN: no target), as
        `attribution.rank_components` ranks them on the device; error float [T, 2]."""
        missing = np.isnan(rest)
        index_l = index.tolist()
        value_l = np.round(np.nan_to_num(value).astype(np.float64), 3).tolist()
        rest_l = np.round(np.nan_to_num(rest).astype(np.float64), 3).tolist()
        for t, j in zip(*np.nonzero(missing)):
            index_l[t][j] = value_l[t][j] = rest_l[t][j] = None
        err = error[np.isfinite(error)]
        return cls(components, index.shape[-1], index_l, value_l, rest_l,
                   float(err.max()) if err.size else 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"components": self.components, "top_k": self.top_k, "targets": list(DLA_TARGETS),
                "index": self.index, "value": self.value, "rest": self.rest,
                "max_rel_error": float(f"{self.max_rel_error:.3g}")}


@dataclass(frozen=True)
class Artifact:
    """One (model, prompt) artifact in memory. `to_dict()` is the JSON object of ARTIFACT_SCHEMA,
    with the attention bytes in `["attention"]["data"]` and the lens's in `["lens"]["data"]`
    (`write_artifact` puts them beside it, in one file)."""
    key: str
    provenance: Provenance
    model: dict[str, Any]               # models.architecture_facts
    prompt: PromptInfo
    tokens: list[dict[str, Any]]        # tokens.describe_tokens / describe_ids records
    predictions: TopK                   # the output layer, top_k
    lens: Lens                          # every layer, lens_top_k
    attention: Attention
    vocab: dict[str, dict[str, Any]]    # tokens.vocab_entries of every id in predictions and lens
    generation: Generation
    metrics: dict[str, Any]             # name -> [L][H] floats (NaN allowed: stored as null)
    groups: list[LayerGroups]           # per layer; empty for multi-head attention
    attribution: Attribution

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "model-atlas-artifact",
            "schema_version": SCHEMA_VERSION,
            "key": self.key,
            "provenance": self.provenance.to_dict(),
            "model": self.model,
            "prompt": self.prompt.to_dict(),
            "tokens": self.tokens,
            "predictions": self.predictions.to_dict(),
            "lens": {**self.lens.to_dict(offset=memoryview(self.attention.data).nbytes),
                     "data": self.lens.data},
            "attention": self.attention.to_dict(self.lens.data),
            "vocab": self.vocab,
            "generation": self.generation.to_dict(),
            "metrics": {name: np.round(np.asarray(v, dtype=np.float64), 4)   # NaN: null
                        for name, v in sorted(self.metrics.items())},
            "groups": [g.to_dict() for g in self.groups],
            "attribution": self.attribution.to_dict(),
        }


_VALIDATOR: Any = None  # compiled once, on the first full validation
_FAST_VALIDATOR: Any = None  # the same, in jsonschema-rs


def _validator() -> Any:
    # jsonschema is imported here, not at the top: the compute stage builds and checks artifacts
    # without it (`full=False`), so a GPU machine without jsonschema can run it.
    global _VALIDATOR
    if _VALIDATOR is None:
        import jsonschema
        _VALIDATOR = jsonschema.Draft202012Validator(ARTIFACT_SCHEMA)
    return _VALIDATOR


def _fast_validator() -> Any:
    """The same schema in jsonschema-rs: whether an artifact is valid, in a few milliseconds
    where jsonschema's walk of a long prompt's arrays takes a second."""
    global _FAST_VALIDATOR
    if _FAST_VALIDATOR is None:
        import jsonschema_rs
        _FAST_VALIDATOR = jsonschema_rs.Draft202012Validator(ARTIFACT_SCHEMA)
    return _FAST_VALIDATOR


def _is_matrix(x: Any, rows: int, cols: int) -> bool:
    """Whether `x` (an array built in memory, or lists read back) is [rows][cols]."""
    if isinstance(x, np.ndarray):
        return x.shape == (rows, cols)
    return len(x) == rows and all(len(r) == cols for r in x)


def _check_cross_fields(a: dict[str, Any]) -> None:
    t = len(a["tokens"])
    att = a["attention"]
    if att["length"] != t:
        raise ValueError(f"attention.length is {att['length']} but there are {t} tokens")
    for name in INDEX_FIELDS:
        if len(att[name]) != att["layers"] or any(len(x) != att["heads"] for x in att[name]):
            raise ValueError(f"attention.{name} must hold one count per head ({att['heads']}) "
                             f"for every layer ({att['layers']})")
    index = attention_index(att)
    if (index[..., 0] > tril_size(t)).any():
        raise ValueError(f"attention.nonzero must be at most T(T+1)/2 = {tril_size(t)}")
    lens = a["lens"]
    section = codec.section_bytes(index)
    if lens["offset"] != section:
        raise ValueError(f"lens.offset is {lens['offset']}, but the attention takes the sum of "
                         f"ceil(nonzero / 3) + overflow_bytes + run_bytes = {section}")
    if (lens["layers"], lens["length"]) != (att["layers"], t) \
            or lens["bytes"] != lens_bytes(att["layers"], t, lens["k"]):
        raise ValueError(f"lens must cover {att['layers']} layers x {t} tokens in "
                         f"{lens_bytes(att['layers'], t, lens['k'])} bytes")
    if att["bytes"] != section + lens["bytes"]:
        raise ValueError(f"attention.bytes is {att['bytes']}, expected the attention and the "
                         f"lens: {section + lens['bytes']}")
    if att["layers"] != a["model"]["layers"] or att["heads"] != a["model"]["query_heads"]:
        raise ValueError("attention layers/heads disagree with the model's architecture")
    pred = a["predictions"]
    for field in ("ids", "probs", "next_logprob", "next_rank"):
        if len(pred[field]) != t:
            raise ValueError(f"predictions.{field} has {len(pred[field])} entries for {t} tokens")
    for field in ("ids", "probs"):
        if not _is_matrix(pred[field], t, pred["k"]):
            raise ValueError(f"predictions.{field} rows must have k={pred['k']} entries")
    for name, values in a["metrics"].items():
        if not _is_matrix(values, att["layers"], att["heads"]):
            raise ValueError(f"metrics.{name} must be [layers][heads]")
    dla = a["attribution"]
    if dla["components"] != 2 + att["layers"] * (att["heads"] + 1):
        raise ValueError("attribution.components must be 1 + layers x heads + layers + 1")
    for field in ("index", "value", "rest"):
        if len(dla[field]) != t or set(map(len, dla[field])) - {len(DLA_TARGETS)}:
            raise ValueError(f"attribution.{field} must be [tokens][{len(DLA_TARGETS)}]")
    if a["generation"]["prompt_tokens"] + a["generation"]["generated_tokens"] != t:
        raise ValueError("generation.prompt_tokens + generated_tokens must equal the token count")
    undecodable = [tid for tid, v in a["vocab"].items() if v["text"] is None and "bytes" not in v]
    if undecodable:
        raise ValueError(f"vocab[{undecodable[0]}] has no text, so it needs its bytes")
    missing = set(map(str, np.unique(np.asarray(a["predictions"]["ids"])).tolist())) \
        - a["vocab"].keys()
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
    if not full and isinstance(a, dict):
        try:
            missing = [k for k in ARTIFACT_SCHEMA["required"] if k not in a]
            if missing:
                raise ValueError(f"missing fields {missing}")
            _check_cross_fields(a)
        except ValueError as e:
            raise ArtifactError(f"{source}: {e}. Delete the file and run `model-atlas compute` "
                                f"to recompute it.") from None
        return a
    import jsonschema
    try:
        # jsonschema-rs decides; jsonschema words what is wrong (its best_match), and only then.
        if not _fast_validator().is_valid(a):
            error = jsonschema.exceptions.best_match(_validator().iter_errors(a))
            if error is None:   # the two disagree: say what jsonschema-rs found
                error = next(iter(_fast_validator().iter_errors(a)))
                raise ValueError(f"invalid field {'/'.join(map(str, error.instance_path))}: "
                                 f"{error.message}")
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


def read_artifact(path: Path | str, full: bool = True) -> dict[str, Any]:
    """Read, validate and return an artifact, its attention bytes in `["attention"]["data"]`.

    `full=False` (see `validate_artifact`) is for a reader without jsonschema installed: the
    benchmark on a GPU machine reading the artifacts it has just computed."""
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
    a = validate_artifact(data, str(path), full=full)
    blob = memoryview(read_attention(path, a))
    a["attention"]["data"] = blob[:a["lens"]["offset"]]
    a["lens"] = decode_lens(a["lens"], blob)
    return a


def read_attention(path: Path, a: dict[str, Any]) -> bytes:
    """The binary file of the artifact at `path` (the attention, then the lens), checked against
    its size and SHA-256."""
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


def write_binary_file(path: Path, attention: bytes | memoryview, lens: bytes) -> str:
    """Write the binary file beside the artifact at `path` (atomically): the attention bytes, then
    the lens's; return its SHA-256, which the JSON records. Both release the GIL, so the compute
    stage runs this on an I/O thread while it builds the JSON. Not fsynced (see
    `store.atomic_write_bytes`): every reader checks the pair, and a pair that a power loss tore
    is recomputed."""
    digest = sha256_bytes(attention, lens)
    atomic_write_bytes(attention_path(path), (attention, lens), durable=False)
    return digest


def write_artifact_json(path: Path, a: dict[str, Any]) -> None:
    """Write an artifact's JSON (the bytes in `["attention"]["data"]` and `["lens"]["data"]`, if
    there, left out), after its binary file: a build killed in between leaves a JSON that does
    not match the new binary file, and it is recomputed."""
    att = {k: v for k, v in a["attention"].items() if k != "data"}
    lens = {k: v for k, v in a["lens"].items() if k != "data"}
    if att["file"] != attention_path(path).name:
        raise ValueError(f"attention.file {att['file']!r} does not sit beside {path.name}")
    atomic_write_bytes(path, artifact_json({**a, "attention": att, "lens": lens}), durable=False)


def write_artifact(path: Path, a: "Artifact | dict[str, Any]") -> None:
    """Write an artifact built in memory (`Artifact.to_dict`): first the binary file, then the
    JSON that records its size and hash, each atomically."""
    if isinstance(a, Artifact):
        a = a.to_dict()
    if a["attention"]["file"] != attention_path(path).name:
        raise ValueError(f"attention.file {a['attention']['file']!r} does not sit beside "
                         f"{path.name}")
    write_binary_file(path, a["attention"]["data"], a["lens"]["data"])
    write_artifact_json(path, a)


def attention_index(att: dict[str, Any]) -> np.ndarray:
    """int64 [L, H, 3]: each head's `nonzero`, `overflow_bytes`, `run_bytes`."""
    return np.stack([np.asarray(att[name], dtype=np.int64).reshape(att["layers"], att["heads"])
                     for name in INDEX_FIELDS], axis=-1)


def attention_head(artifact: dict[str, Any], layer: int, head: int) -> bytes:
    """The stored block of one head of an artifact (`codec.head_block`), as the site's per-head
    files carry it."""
    att = artifact["attention"]
    if not (0 <= layer < att["layers"] and 0 <= head < att["heads"]):
        raise ArtifactError(f"attention layer {layer}, head {head}: valid layers are 0 to "
                            f"{att['layers'] - 1}, heads 0 to {att['heads'] - 1}")
    return codec.head_block(att["data"], attention_index(att), layer * att["heads"] + head)


def decode_head(artifact: dict[str, Any], layer: int,
                head: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One head's stored weights, sparse (`codec.decode_head`): row_start [T + 1], keys [n],
    values uint8 [n]; weight = value / ATTENTION_SCALE, every weight not listed 0."""
    return codec.decode_head(attention_head(artifact, layer, head),
                             artifact["attention"]["length"])


def decode_attention(artifact: dict[str, Any], layer: int) -> np.ndarray:
    """Attention of one layer as float32 [heads, T, T] (zeros above the diagonal)."""
    att = artifact["attention"]
    h, t = att["heads"], att["length"]
    out = np.zeros((h, t, t), dtype=np.float32)
    for head in range(h):
        row_start, keys, values = decode_head(artifact, layer, head)
        rows = np.repeat(np.arange(t), np.diff(row_start))
        out[head, rows, keys] = values.astype(np.float32) / ATTENTION_SCALE
    return out
