"""The artifact format: the one contract between the compute and render stages.

One artifact is one JSON file per (model, prompt). `ARTIFACT_SCHEMA` is its JSON Schema; it is
checked on write (compute) and on read (render), together with the cross-field rules JSON Schema
cannot express (every per-position list has one entry per token). `site_src/artifact-format.md`
documents it for people who use the JSON directly.

Attention (`base6-tril-by-key`) is stored beside the JSON, in `<prompt>.attention.bin`, as raw
bytes: JSON would carry them as base64, a third larger and a fifth worse under gzip. For every layer
and head, the causal lower triangle key by key (key j holds queries j..T-1), each weight as an
integer q in 0..128 meaning q/128: rounding to the nearest 1/128 keeps every stored weight within
1/256 of the model's own (`ATTENTION_MAX_ABS_ERROR`, under the format's promise of 1/255). The
values are written three to a byte, as the digits of a base-6 number (5 and above as 5, the rest,
q - 5, in an overflow byte): most weights are small (over 80 % below 5/128 in a 72-token Qwen2.5
prompt), so the file takes about half of one byte per weight, and compresses 7 to 9 % better under
gzip (which sees triples). The logit lens follows in the same file (`Lens`: int32 ids, float16
log-probabilities), not in the JSON, where its numbers were half the text and most of the time
spent writing it. The JSON records the file's name, size, SHA-256, each layer's count of overflow
bytes and where the lens starts; readers check the file, so an artifact never pairs with another
build's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError
from .store import artifact_json, atomic_write_bytes, sha256_bytes

# 3: metrics from full-precision attention; provenance states the softmax.
# 4: direct logit attribution (`attribution`, metrics.direct_logit). A new version, not an edit of
# 3: the version is part of every content key, so schema-3 artifacts (no attribution) are
# recomputed rather than taken as current.
# 5: attention as base-6 digits with overflow bytes (`base6-tril-by-key`, `overflow_bytes`); the
# logit lens in the same binary file, after the attention (`lens`: LENS_ENCODING).
SCHEMA_VERSION = 5
ATTENTION_ENCODING = "base6-tril-by-key"
DIGIT_BASE = 6            # three values a byte: 6**3 = 216 codes
DIGIT_ESCAPE = 5          # a digit of 5 means 5 + the layer's next overflow byte
ATTENTION_SCALE = 128
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
                         "sha256", "overflow_bytes"],
            "properties": {
                "encoding": {"const": ATTENTION_ENCODING},
                "scale": {"const": ATTENTION_SCALE},
                "layers": {"type": "integer", "minimum": 1},
                "heads": {"type": "integer", "minimum": 1},
                "length": {"type": "integer", "minimum": 1},
                "file": {"type": "string", "pattern": "^[^/\\\\]+\\.attention\\.bin$"},
                "bytes": {"type": "integer", "minimum": 1},
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "overflow_bytes": {"type": "array", "items": {"type": "integer", "minimum": 0}},
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


def byte_planes(values: np.ndarray) -> bytes:
    """n values of w bytes -> w planes of n bytes, plane j holding byte j of every value (the
    "shuffle" of HDF5 and Blosc): the high bytes of nearby log-probabilities and ranks repeat,
    which gzip finds once they sit together (13 % smaller lens sections here)."""
    flat = np.ascontiguousarray(values).reshape(-1)
    return np.ascontiguousarray(flat.view(np.uint8).reshape(flat.size, -1).T).tobytes()


def from_byte_planes(raw: memoryview, dtype: str, count: int, offset: int) -> np.ndarray:
    """The `count` values of `dtype` stored as byte planes at `offset` of `raw`."""
    width = np.dtype(dtype).itemsize
    planes = np.frombuffer(raw, np.uint8, count * width, offset).reshape(width, count)
    return np.ascontiguousarray(planes.T).view(dtype).reshape(-1)


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
    """The stored attention: `data` is the `base6-tril-by-key` bytes written beside the JSON,
    `overflow` each layer's count of overflow bytes (`encode_attention`)."""
    layers: int
    heads: int
    length: int
    file: str                           # <prompt id> + ATTENTION_SUFFIX, beside the JSON
    data: bytes | memoryview = field(repr=False)  # the stored bytes (written as they are)
    overflow: list[int] = field(default_factory=list)
    sha256: str | None = None           # of the file (`data`, then the lens), if hashed already

    @classmethod
    def from_encoded(cls, data: np.ndarray, overflow: list[int], heads: int, length: int,
                     prompt_id: str, sha256: str | None = None) -> "Attention":
        """data: uint8, the stored bytes as `extract.pack_attention` encodes them on the device;
        sha256: the file's hash, if known (`write_binary_file` returns it)."""
        data = memoryview(np.ascontiguousarray(data, dtype=np.uint8).reshape(-1))
        expected = len(overflow) * digit_bytes(heads * tril_size(length)) + sum(overflow)
        if data.nbytes != expected:
            raise ValueError(f"{data.nbytes} attention bytes, expected {expected}")
        return cls(len(overflow), heads, length, prompt_id + ATTENTION_SUFFIX, data,
                   list(overflow), sha256)

    @classmethod
    def from_quantized(cls, q: np.ndarray, prompt_id: str) -> "Attention":
        """q: uint8 [L, H, T, T], q / ATTENTION_SCALE, zero above the diagonal."""
        L, H, T, _ = q.shape
        queries, keys = tril_by_key(T)
        data, overflow = encode_attention(q[:, :, queries, keys])
        return cls(L, H, T, prompt_id + ATTENTION_SUFFIX, data, overflow)

    def to_dict(self, *after: bytes) -> dict[str, Any]:
        """The JSON fields; `data`: the attention bytes. The file holds them and then `after`
        (the lens): `bytes` and `sha256` are the whole file's."""
        size = memoryview(self.data).nbytes + sum(len(part) for part in after)
        return {"encoding": ATTENTION_ENCODING, "scale": ATTENTION_SCALE, "layers": self.layers,
                "heads": self.heads, "length": self.length, "file": self.file,
                "bytes": size, "sha256": self.sha256 or sha256_bytes(self.data, *after),
                "overflow_bytes": list(self.overflow), "data": self.data}


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


def _validator() -> Any:
    # jsonschema is imported here, not at the top: the compute stage builds and checks artifacts
    # without it (`full=False`), so a GPU machine without jsonschema can run it.
    global _VALIDATOR
    if _VALIDATOR is None:
        import jsonschema
        _VALIDATOR = jsonschema.Draft202012Validator(ARTIFACT_SCHEMA)
    return _VALIDATOR


def tril_size(n: int) -> int:
    return n * (n + 1) // 2


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
    over, values = att["overflow_bytes"], att["heads"] * tril_size(t)
    if len(over) != att["layers"] or any(not 0 <= n <= values for n in over):
        raise ValueError(f"attention.overflow_bytes must hold one count per layer "
                         f"({att['layers']}), each at most heads x T(T+1)/2 = {values}")
    lens = a["lens"]
    section = att["layers"] * digit_bytes(values) + sum(over)
    if lens["offset"] != section:
        raise ValueError(f"lens.offset is {lens['offset']}, but the attention takes layers x "
                         f"ceil(heads x T(T+1)/2 / 3) + the overflow bytes = {section}")
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
        error = jsonschema.exceptions.best_match(_validator().iter_errors(a))
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


def tril_by_key(t: int) -> tuple[np.ndarray, np.ndarray]:
    """(query, key) index arrays of the causal lower triangle in stored order: key by key."""
    keys, queries = np.triu_indices(t)
    return queries, keys


def digit_bytes(values: int) -> int:
    """Bytes of the base-6 part of a layer of `values` values: three to a byte."""
    return -(-values // 3)


def encode_attention(values: np.ndarray) -> tuple[bytes, list[int]]:
    """uint8 [L, ...] stored values (each layer's heads' lower triangles, key by key) -> the stored
    bytes and each layer's count of overflow bytes. Every layer's V values, min(value, 5) each,
    three to a byte as base-6 digits (36 a + 6 b + c; the last byte padded with 0), layer after
    layer; then every layer's overflow bytes, value - 5 of each value of 5 or more, in order. The
    reference of `extract.encode_on_device`, which does the same on the device."""
    v = np.asarray(values, dtype=np.uint8).reshape(len(values), -1)
    L, V = v.shape
    d = np.zeros((L, 3 * digit_bytes(V)), dtype=np.uint8)
    d[:, :V] = np.minimum(v, DIGIT_ESCAPE)
    d = d.reshape(L, -1, 3)
    codes = d[..., 0] * 36 + d[..., 1] * 6 + d[..., 2]                  # <= 215
    escaped = v >= DIGIT_ESCAPE
    over = v[escaped] - DIGIT_ESCAPE                                     # layer by layer
    return (np.concatenate([codes.reshape(-1), over]).astype(np.uint8).tobytes(),
            escaped.sum(1).tolist())


def decode_values(block: bytes | memoryview | np.ndarray, count: int) -> np.ndarray:
    """One layer's bytes (its base-6 part, then its overflow bytes: `attention_layer`) -> its
    `count` values (uint8)."""
    raw = np.frombuffer(block, dtype=np.uint8)
    n = digit_bytes(count)
    if raw.size < n or (raw[:n] >= DIGIT_BASE ** 3).any():
        raise ArtifactError(f"an attention layer of {count} values needs {n} bytes below 216 "
                            f"before its overflow bytes")
    codes = raw[:n]
    values = np.stack([codes // 36, codes // 6 % 6, codes % 6], axis=1).reshape(-1)[:count]
    escaped = values == DIGIT_ESCAPE
    over = raw[n:]
    if int(escaped.sum()) != over.size:
        raise ArtifactError(f"an attention layer has {int(escaped.sum())} values of 5 or more "
                            f"but {over.size} overflow bytes")
    values[escaped] += over
    return values


def decode_attention(artifact: dict[str, Any], layer: int) -> np.ndarray:
    """Attention of one layer as float32 [heads, T, T] (zeros above the diagonal)."""
    att = artifact["attention"]
    h, t = att["heads"], att["length"]
    flat = decode_values(attention_layer(artifact, layer), h * tril_size(t))
    out = np.zeros((h, t, t), dtype=np.float32)
    queries, keys = tril_by_key(t)
    out[:, queries, keys] = flat.reshape(h, -1).astype(np.float32) / ATTENTION_SCALE
    return out


def layer_block(data: bytes | memoryview | np.ndarray, overflow: list[int], count: int,
                layer: int) -> bytes:
    """The bytes of one layer of `count` values out of a file's attention (`encode_attention`):
    its base-6 digits, then its overflow bytes, as `decode_values` and the per-layer page files
    take them."""
    n = digit_bytes(count)
    start = len(overflow) * n + sum(overflow[:layer])
    data = memoryview(data).cast("B")
    return bytes(data[layer * n:(layer + 1) * n]) + bytes(data[start:start + overflow[layer]])


def attention_layer(artifact: dict[str, Any], layer: int) -> bytes:
    """The bytes of one layer of an artifact (`layer_block`)."""
    att = artifact["attention"]
    return layer_block(att["data"], att["overflow_bytes"],
                       att["heads"] * tril_size(att["length"]), layer)
