"""The artifact's binary encodings: the sparse attention of each head, and byte planes.

The contract (which fields, which version) is `schema.py`'s; this module only turns arrays into
bytes and back, in numpy. `extract.encode_on_device` writes the same attention bytes with torch
on the device; this module's `encode_heads` is its reference (a test compares the two), and
`decode_head` is the one Python decoder (`site_src/assets/attention-codec.js` the browser's).

**Attention, `nonzero-runs-base6`.** A weight p is stored as q = round(128 p), 0..128, so
q / 128 is within 1/256 of p; a weight under 1/256 rounds to 0 and is not stored. The N = T(T+1)/2
positions of one head's lower triangle are taken **key by key** (key k holds queries k..T-1: the
weights on one key from successive queries are alike, which gzip finds), and the head is stored
in three parts:

- its digits: the n non-zero values as base-6 digits three to a byte, digit min(q, 6) - 1
  (0..5), byte 36 d0 + 6 d1 + d2 (<= 215; the last byte padded with 0 digits): ceil(n / 3) bytes;
- its overflow bytes: q - 6 for each digit 5, in order;
- its runs: varints (unsigned LEB128: 7 bits a byte, low bits first, the high bit set on all but
  the last byte) of the lengths of alternating runs of zero and non-zero positions, starting with
  a zero run (0 if position 0 is non-zero); every later length is at least 1, all sum to N.

An artifact's file holds every head's digits, then every head's overflow bytes, then every head's
runs (`encode_heads`: gzip compresses like with like); the JSON records each head's n, overflow
count and runs size, so one head's parts can be found alone. A head on its own (the site's
per-head files, `head_block`) is one **block**: the varint n, its digits, its overflow bytes, its
runs. A weight that rounds to 0 costs nothing but the run it lies in, so a head grows with its
non-zero weights: a row holds at most 256 of them (each at least 1/256, summing to 1), a head at
most about 256 T.
"""

from __future__ import annotations

import numpy as np

from .errors import ArtifactError

DIGIT_BASE = 6            # three digits a byte: 6**3 = 216 codes
DIGIT_ESCAPE = 5          # digit 5: the value is 6 + the next overflow byte
SCALE = 128               # q / SCALE is the weight


def tril_size(n: int) -> int:
    return n * (n + 1) // 2


def column_starts(t: int) -> np.ndarray:
    """int64 [T + 1]: where each key's positions start in stored order (key k holds T - k
    positions), and N last."""
    k = np.arange(t + 1, dtype=np.int64)
    return k * t - k * (k - 1) // 2


# --- varints ---------------------------------------------------------------------------------

def varint_bytes(values: np.ndarray) -> np.ndarray:
    """Unsigned LEB128 of each value, concatenated: uint8."""
    v = np.asarray(values, dtype=np.uint64).reshape(-1)
    width = 1
    while v.size and (v >> np.uint64(7 * width)).any():
        width += 1
    shifts = np.arange(width, dtype=np.uint64) * np.uint64(7)
    groups = (v[:, None] >> shifts[None, :]) & np.uint64(0x7F)                  # [n, width]
    used = np.ones((v.size, width), dtype=bool)                                  # byte 0 always
    used[:, 1:] = (v[:, None] >> shifts[None, 1:]) > 0
    more = np.zeros_like(used)
    more[:, :-1] = used[:, 1:]                                                   # a byte follows
    return (groups | (more.astype(np.uint64) << np.uint64(7))).astype(np.uint8)[used]


def read_varint(raw: np.ndarray, at: int) -> tuple[int, int]:
    """The varint at `at` of `raw` and where the next field starts."""
    value, shift = 0, 0
    while True:
        if at >= raw.size or shift > 56:
            raise ArtifactError("an attention block ends inside a varint")
        b = int(raw[at])
        value |= (b & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if b < 0x80:
            return value, at


def read_varints(raw: np.ndarray) -> np.ndarray:
    """Every varint of `raw`, which holds nothing else: int64."""
    if raw.size == 0:
        return np.zeros(0, dtype=np.int64)
    last = raw < 0x80
    if not last[-1]:
        raise ArtifactError("an attention block's runs end inside a varint")
    ends = np.flatnonzero(last)
    starts = np.concatenate([[0], ends[:-1] + 1])
    if (ends - starts).max() > 8:
        raise ArtifactError("an attention block has a run length of more than 8 bytes")
    index = np.arange(raw.size) - np.repeat(starts, ends - starts + 1)          # byte of its varint
    parts = (raw & 0x7F).astype(np.int64) << (7 * index)
    return np.add.reduceat(parts, starts)


# --- attention -------------------------------------------------------------------------------

def key_order(t: int) -> tuple[np.ndarray, np.ndarray]:
    """(query, key) of a head's N positions in stored order: key by key, queries ascending."""
    keys, queries = np.triu_indices(t)
    return queries, keys


def encode_head(q: np.ndarray) -> tuple[int, bytes, bytes, bytes]:
    """uint8 [T, T] (q / 128; only the lower triangle is read) -> (n, digits, overflow bytes,
    runs): the head's parts."""
    queries, keys = key_order(q.shape[-1])
    flat = np.asarray(q, dtype=np.uint8)[queries, keys]              # [N], key by key
    nonzero = flat > 0
    values = flat[nonzero]
    n = values.size
    digits = np.zeros(3 * -(-n // 3), dtype=np.uint8)
    digits[:n] = np.minimum(values, DIGIT_ESCAPE + 1) - 1
    triples = digits.reshape(-1, 3)
    codes = triples[:, 0] * 36 + triples[:, 1] * 6 + triples[:, 2]    # <= 215
    over = values[values > DIGIT_ESCAPE] - (DIGIT_ESCAPE + 1)
    changes = np.flatnonzero(nonzero[1:] != nonzero[:-1]) + 1         # where a new run starts
    points = np.concatenate([[0, 0] if nonzero[0] else [0], changes, [flat.size]])
    return (n, codes.astype(np.uint8).tobytes(), over.astype(np.uint8).tobytes(),
            varint_bytes(np.diff(points)).tobytes())


def encode_heads(q: np.ndarray) -> tuple[bytes, np.ndarray]:
    """uint8 [..., T, T] -> (every head's digits, then every head's overflow bytes, then every
    head's runs; the index: int64 [heads, 3], each head's n, overflow count and runs size). The
    reference of `extract.encode_on_device`."""
    q = np.asarray(q, dtype=np.uint8)
    parts = [encode_head(h) for h in q.reshape(-1, *q.shape[-2:])]
    data = b"".join(b"".join(p[i] for p in parts) for i in (1, 2, 3))
    index = np.array([[p[0], len(p[2]), len(p[3])] for p in parts], dtype=np.int64).reshape(-1, 3)
    return data, index


def section_bytes(index: np.ndarray) -> int:
    """Bytes of the attention of heads with this index ([heads, 3]: n, overflow, runs)."""
    index = np.asarray(index, dtype=np.int64).reshape(-1, 3)
    return int((-(-index[:, 0] // 3)).sum() + index[:, 1].sum() + index[:, 2].sum())


def head_block(data: bytes | memoryview, index: np.ndarray, i: int) -> bytes:
    """Head i's block (the varint n, its digits, overflow bytes and runs) out of the attention
    of heads with this index ([heads, 3]: n, overflow, runs): each part starts after the same
    part of every head before it."""
    index = np.asarray(index, dtype=np.int64).reshape(-1, 3)
    sizes = np.stack([-(-index[:, 0] // 3), index[:, 1], index[:, 2]])   # [3, heads]
    ends = np.cumsum(sizes.reshape(-1)).reshape(3, -1)
    view = memoryview(data).cast("B")
    if ends[-1, -1] > view.nbytes:
        raise ArtifactError(f"the attention needs {int(ends[-1, -1])} bytes, the data holds "
                            f"{view.nbytes}")
    return b"".join([varint_bytes([index[i, 0]]).tobytes()] + [
        bytes(view[ends[p, i] - sizes[p, i]:ends[p, i]]) for p in range(3)])


def decode_head(block: bytes | memoryview | np.ndarray,
                length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One head's block of a `length`-token prompt -> its CSR: row_start int64 [T + 1], keys
    int64 [n] (ascending within a row) and values uint8 [n] (weight = value / 128); every
    position not listed is 0. Checks that the block is whole and consistent."""
    raw = np.frombuffer(block, dtype=np.uint8) if not isinstance(block, np.ndarray) else block
    n, at = read_varint(raw, 0)
    size = tril_size(length)
    if n > size:
        raise ArtifactError(f"an attention block claims {n} non-zero values of {size} positions")
    nd = -(-n // 3)
    codes = raw[at:at + nd]
    if codes.size != nd or (codes >= DIGIT_BASE ** 3).any():
        raise ArtifactError(f"an attention block of {n} values needs {nd} bytes below 216 after "
                            f"its count")
    digits = np.stack([codes // 36, codes // 6 % 6, codes % 6], axis=1).reshape(-1)[:n]
    values = digits + np.uint8(1)
    escaped = digits == DIGIT_ESCAPE
    ne = int(escaped.sum())
    over = raw[at + nd:at + nd + ne]
    if over.size != ne or (over > SCALE - DIGIT_ESCAPE - 1).any():
        raise ArtifactError(f"an attention block needs {ne} overflow bytes of at most "
                            f"{SCALE - DIGIT_ESCAPE - 1} (values up to {SCALE})")
    values[escaped] = over + np.uint8(DIGIT_ESCAPE + 1)
    runs = read_varints(raw[at + nd + ne:])
    if runs.sum() != size or runs[1::2].sum() != n or (runs[1:] < 1).any():
        raise ArtifactError(f"an attention block's runs must cover the {size} positions of "
                            f"{length} rows, {n} of them non-zero, every run after the first "
                            f"at least 1 long")
    ends = np.cumsum(runs)
    lengths = runs[1::2]                                             # the non-zero runs
    first = ends[1::2] - lengths                                     # where each starts
    positions = np.repeat(first - (np.cumsum(lengths) - lengths), lengths) + np.arange(n)
    starts = column_starts(length)                                   # key k's first position
    keys = np.searchsorted(starts, positions, side="right") - 1
    queries = keys + positions - starts[keys]
    order = np.argsort(queries, kind="stable")                       # row by row, keys ascending
    rows = queries[order]
    return np.searchsorted(rows, np.arange(length + 1)), keys[order], values[order]


def dense_head(block: bytes | memoryview | np.ndarray, length: int) -> np.ndarray:
    """One head's block -> uint8 [T, T] (zero above the diagonal and wherever nothing is
    stored)."""
    row_start, keys, values = decode_head(block, length)
    out = np.zeros((length, length), dtype=np.uint8)
    rows = np.repeat(np.arange(length), np.diff(row_start))
    out[rows, keys] = values
    return out


# --- byte planes (the lens) -------------------------------------------------------------------

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
