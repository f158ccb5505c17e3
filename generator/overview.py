"""Pooled overview images of stored attention, made at render time (numpy only, never torch).

A prompt page's "All heads at a glance" draws one thumbnail per layer and head. Drawn from the
full attention, it would fetch every layer (23 MB for a 790-token prompt on GPT-2); drawn from
these images, it fetches one small file per model and prompt (`layout.attention_thumbs`), at most
about 90 KB of bytes (118 KB base64) for Qwen2.5's 336 heads at any prompt length.

Each head's [T, T] pattern becomes an N x N image, N = min(T, THUMB_SIZE):

- each query row is first scaled to its largest weight, so that a head that spreads its attention
  thin (weights ~1/q) still shows its pattern instead of a blank square;
- then pooled by MAXIMUM over blocks of rows and columns (block i covers tokens
  floor(i T / N) .. floor((i + 1) T / N) - 1), so that one strong key stays visible however many
  weak ones share its pixel;
- then quantized to LEVELS + 1 grey levels (4 bits).

`thumbnails` pools each head's stored non-zero weights (`schema.decode_head`) directly, in time
linear in what is stored; `thumbnail_file` does the same from dense layers and is its reference.

Only the lower triangle with its diagonal is stored (a pixel above the diagonal pools queries
that all come before its keys, so it is 0): N(N+1)/2 values per head, in the order layer, head,
row, column (column <= row), two to a byte, the first in the high nibble; `data` is their base64.
thumbs.js (site_src/assets) reads it; `read_thumbnails` is the Python reader the tests use.
"""

from __future__ import annotations

import base64
from typing import Any, Iterable

import numpy as np

from .errors import ArtifactError
from .schema import decode_head

THUMB_SIZE = 32   # px per side: the thumbnails are 32 CSS px (charts.css), the pattern is what shows
LEVELS = 15       # 4 bits per pixel: a thumbnail is a sketch, not a measurement
ENCODING = "maxpool-rowscaled-nibble-tril"


def block_edges(length: int, size: int) -> np.ndarray:
    """The first token of each of `size` blocks over `length` tokens (size <= length), and the end."""
    return (np.arange(size + 1, dtype=np.int64) * length) // size


def pool_max(pattern: np.ndarray, size: int) -> np.ndarray:
    """[..., T, T] -> [..., size, size], each pixel the largest value of its block."""
    t = pattern.shape[-1]
    starts = block_edges(t, size)[:-1]
    rows = np.maximum.reduceat(pattern, starts, axis=-2)
    return np.maximum.reduceat(rows, starts, axis=-1)


def head_images(weights: np.ndarray, size: int) -> np.ndarray:
    """One layer's attention [heads, T, T] -> [heads, size, size] in 0..1: rows scaled to their
    largest weight, then max-pooled."""
    # Scaling a row by a positive number commutes with the maximum over its columns: pool the
    # columns first, scale the small [heads, T, size] result (a row's largest weight is the
    # largest of its pooled columns), then pool the rows. One pass over the full pattern.
    starts = block_edges(weights.shape[-1], size)[:-1]
    cols = np.maximum.reduceat(weights, starts, axis=-1)
    top = cols.max(axis=-1, keepdims=True)
    scaled = np.divide(cols, top, out=np.zeros_like(cols), where=top > 0)
    return np.maximum.reduceat(scaled, starts, axis=-2)


def sparse_head_image(row_start: np.ndarray, keys: np.ndarray, values: np.ndarray, length: int,
                      size: int) -> np.ndarray:
    """`head_images` of one head from its stored non-zero weights (`schema.decode_head`'s CSR),
    never making the [T, T] pattern: the same image, in time linear in what is stored."""
    rows = np.repeat(np.arange(length), np.diff(row_start))
    top = np.zeros(length, dtype=np.float32)
    np.maximum.at(top, rows, values.astype(np.float32))
    block = np.searchsorted(block_edges(length, size), np.arange(length), side="right") - 1
    image = np.zeros(size * size, dtype=np.float32)
    np.maximum.at(image, block[rows] * size + block[keys], values / top[rows])
    return image.reshape(size, size)


def thumbnails(artifact: dict[str, Any]) -> dict[str, Any]:
    """The thumbnail file of one model on one prompt (its content, for `Writer.json`)."""
    att = artifact["attention"]
    layers, heads, t = att["layers"], att["heads"], att["length"]
    size = min(t, THUMB_SIZE)
    images = np.stack([np.stack([sparse_head_image(*decode_head(artifact, layer, head), t, size)
                                 for head in range(heads)]) for layer in range(layers)])
    return image_file(images, t)


def thumbnail_file(layers: Iterable[np.ndarray], count: int, heads: int,
                   length: int) -> dict[str, Any]:
    """The thumbnail file of `count` layers given one by one as dense [heads, T, T] weights (the
    reference of `thumbnails`, which pools the stored sparse weights)."""
    size = min(length, THUMB_SIZE)
    images = []
    for weights in layers:
        if weights.shape != (heads, length, length):
            raise ArtifactError(f"attention layer {len(images)}: shape {weights.shape}, expected "
                                f"{(heads, length, length)}")
        images.append(head_images(weights, size))
    if len(images) != count:
        raise ArtifactError(f"{len(images)} attention layers, expected {count}")
    return image_file(np.stack(images), length)


def image_file(images: np.ndarray, length: int) -> dict[str, Any]:
    """[layers, heads, size, size] images in 0..1 -> the file: 4-bit levels of each lower
    triangle, two to a byte."""
    layers, heads, size, _ = images.shape
    rows, cols = np.tril_indices(size)
    flat = np.rint(images[:, :, rows, cols] * LEVELS).astype(np.uint8).reshape(-1)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    packed = (flat[0::2] << 4) | flat[1::2]
    return {"layers": layers, "heads": heads, "length": length, "size": size, "levels": LEVELS,
            "encoding": ENCODING, "data": base64.b64encode(packed.tobytes()).decode("ascii")}


def read_thumbnails(content: dict[str, Any]) -> np.ndarray:
    """A thumbnail file -> float32 [layers, heads, size, size] in 0..1 (zeros above the diagonal)."""
    if content.get("encoding") != ENCODING:
        raise ArtifactError(f"thumbnail file: encoding {content.get('encoding')!r}, expected "
                            f"{ENCODING!r}; rebuild the site with `model-atlas render`.")
    layers, heads, size = content["layers"], content["heads"], content["size"]
    tri = size * (size + 1) // 2
    packed = np.frombuffer(base64.b64decode(content["data"]), dtype=np.uint8)
    flat = np.empty(packed.size * 2, dtype=np.uint8)
    flat[0::2], flat[1::2] = packed >> 4, packed & 15
    count = layers * heads * tri
    if flat.size not in (count, count + 1):
        raise ArtifactError(f"thumbnail file: {packed.size} bytes, expected {(count + 1) // 2} for "
                            f"{layers} layers x {heads} heads of {size} px")
    out = np.zeros((layers, heads, size, size), dtype=np.float32)
    rows, cols = np.tril_indices(size)
    out[:, :, rows, cols] = flat[:count].reshape(layers, heads, tri) / content["levels"]
    return out
