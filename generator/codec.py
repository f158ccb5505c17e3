"""The artifact's binary encodings: the sparse attention of one head, and byte planes.

The contract (which fields, which version) is `schema.py`'s; this module only turns arrays into
bytes and back, in numpy. `extract.encode_on_device` writes the same attention bytes with torch
on the device; this module's `encode_heads` is its reference (a test compares the two), and
`decode_head` is the one Python decoder (`site_src/assets/attention-codec.js` the browser's).

**Attention, `nonzero-runs-base6`.** A weight p is stored as q = round(128 p), 0..128, so
q / 128 is within 1/256 of p; a weight under 1/256 rounds to 0. The lower triangle of one head
(T query rows, row r holding keys 0..r: N = T(T+1)/2 positions, row by row) is stored as its
non-zero values and where they are, in one self-contained block:

1. a varint: n, the count of non-zero values;
2. the values, as base-6 digits three to a byte: digit min(q, 6) - 1 (0..5), byte
   36 d0 + 6 d1 + d2 (<= 215; the last byte padded with 0 digits): ceil(n / 3) bytes;
3. one overflow byte, q - 6, for each digit 5, in order;
4. the runs: varints of the lengths of alternating runs of zero and non-zero positions over the
   N positions row by row, starting with a zero run (0 if position 0 is non-zero); every later
   length is at least 1 and the lengths sum to N.

Varints are unsigned LEB128 (7 bits a byte, low bits first, the high bit set on all but the last
byte). A weight that rounds to 0 costs nothing but the run it lies in, so a head's block grows
with its non-zero weights: a row holds at most 256 of them (each at least 1/256, summing to 1),
so a head takes at most about 256 T values. A dense head costs what the base-6 digits cost and a
few bytes of runs (one run can span many rows).
"""

from __future__ import annotations

import numpy as np

from .errors import ArtifactError

DIGIT_BASE = 6            # three digits a byte: 6**3 = 216 codes
DIGIT_ESCAPE = 5          # digit 5: the value is 6 + the next overflow byte
SCALE = 128               # q / SCALE is the weight


def tril_size(n: int) -> int:
    return n * (n + 1) // 2


def row_starts(t: int) -> np.ndarray:
    """int64 [T + 1]: where each row of the lower triangle starts among its N positions (row r
    at r(r+1)/2), and N last."""
    r = np.arange(t + 1, dtype=np.int64)
    return r * (r + 1) // 2


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


# --- attention: one head's block ---------------------------------------------------------------

def encode_head(q: np.ndarray) -> bytes:
    """uint8 [T, T] (q / 128; only the lower triangle is read) -> the head's block. The
    reference of `extract.encode_on_device`."""
    t = q.shape[-1]
    rows, keys = np.tril_indices(t)                                  # row by row, keys ascending
    flat = np.asarray(q, dtype=np.uint8)[rows, keys]                 # [N]
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
    runs = np.diff(points)
    return b"".join([varint_bytes([n]).tobytes(), codes.astype(np.uint8).tobytes(),
                     over.astype(np.uint8).tobytes(), varint_bytes(runs).tobytes()])


def encode_heads(q: np.ndarray) -> tuple[bytes, list[int]]:
    """uint8 [..., T, T] -> every head's block, in order, and each block's size (flat)."""
    q = np.asarray(q, dtype=np.uint8)
    blocks = [encode_head(h) for h in q.reshape(-1, *q.shape[-2:])]
    return b"".join(blocks), [len(b) for b in blocks]


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
    starts = row_starts(length)
    rows = np.searchsorted(starts, positions, side="right") - 1
    return np.searchsorted(positions, starts), positions - starts[rows], values


def dense_head(block: bytes | memoryview | np.ndarray, length: int) -> np.ndarray:
    """One head's block -> uint8 [T, T] (zero above the diagonal and wherever nothing is
    stored)."""
    row_start, keys, values = decode_head(block, length)
    out = np.zeros((length, length), dtype=np.uint8)
    rows = np.repeat(np.arange(length), np.diff(row_start))
    out[rows, keys] = values
    return out


def split_blocks(data: bytes | memoryview, sizes: list[int]) -> list[memoryview]:
    """Split concatenated blocks by their sizes."""
    view = memoryview(data).cast("B")
    ends = np.cumsum([0] + list(sizes)).tolist()
    if ends[-1] > view.nbytes:
        raise ArtifactError(f"the attention blocks need {ends[-1]} bytes, the data holds "
                            f"{view.nbytes}")
    return [view[a:b] for a, b in zip(ends[:-1], ends[1:])]


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
