"""The thumbnails' pooled images (generator/overview.py): max-pooling, the file's size and its
round trip through the Python reader (the browser's, thumbs.js, is checked against it in
tests/test_browser.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from generator import overview
from generator.errors import ArtifactError


def causal_softmax(rng, heads: int, t: int) -> np.ndarray:
    scores = rng.normal(size=(heads, t, t)).astype(np.float32) * 3
    scores[:, np.triu_indices(t, 1)[0], np.triu_indices(t, 1)[1]] = -np.inf
    w = np.exp(scores - scores.max(-1, keepdims=True))
    return w / w.sum(-1, keepdims=True)


def naive_pool(x: np.ndarray, size: int) -> np.ndarray:
    t = x.shape[-1]
    edges = overview.block_edges(t, size)
    out = np.zeros(x.shape[:-2] + (size, size), dtype=x.dtype)
    for i in range(size):
        for j in range(size):
            out[..., i, j] = x[..., edges[i]:edges[i + 1], edges[j]:edges[j + 1]].max(axis=(-2, -1))
    return out


@pytest.mark.parametrize("t,size", [(32, 32), (33, 32), (100, 32), (2048, 32), (7, 7)])
def test_pool_max_is_the_largest_value_of_each_block(t, size):
    rng = np.random.default_rng(t)
    x = rng.random((2, t, t)).astype(np.float32)
    assert np.array_equal(overview.pool_max(x, size), naive_pool(x, size))
    edges = overview.block_edges(t, size)
    assert edges[0] == 0 and edges[-1] == t and (np.diff(edges) >= 1).all()


def test_one_strong_key_stays_visible_and_rows_are_scaled():
    """A single weight among 2,048 keys survives pooling; a row spread thin (1/q) shows at full
    strength after row scaling; nothing is drawn above the diagonal."""
    t = 2048
    w = np.zeros((1, t, t), dtype=np.float32)
    q = np.arange(t)
    w[0, q[:, None] >= q[None, :]] = 0
    w[0] = np.tril(np.ones((t, t), dtype=np.float32)) / (q[:, None] + 1)   # uniform, 1/(q+1)
    w[0, 1500] = 0
    w[0, 1500, 700] = 1.0                                                  # one strong key
    images = overview.read_thumbnails(overview.thumbnail_file([w], 1, 1, t))
    img = images[0, 0]
    assert img.shape == (32, 32)
    block = lambda i: int(i * 32 // t)
    assert img[block(1500), block(700)] == 1.0
    assert img[block(2000), block(10)] == 1.0, "a uniform row, scaled to its largest weight"
    assert not np.triu(img, 1).any(), "nothing above the diagonal"


def test_round_trip_and_quantization_within_half_a_level():
    rng = np.random.default_rng(0)
    layers = [causal_softmax(rng, 3, 50) for _ in range(2)]
    content = overview.thumbnail_file(iter(layers), 2, 3, 50)
    back = overview.read_thumbnails(json.loads(json.dumps(content)))
    expect = np.stack([overview.head_images(w, 32) for w in layers])
    assert back.shape == (2, 3, 32, 32)
    assert np.abs(back - expect).max() <= 0.5 / overview.LEVELS + 1e-6


def test_short_prompt_keeps_one_pixel_per_token():
    rng = np.random.default_rng(1)
    w = causal_softmax(rng, 2, 9)
    content = overview.thumbnail_file([w], 1, 2, 9)
    assert content["size"] == 9
    back = overview.read_thumbnails(content)[0]
    top = w.max(-1, keepdims=True)
    assert np.abs(back - w / top).max() <= 0.5 / overview.LEVELS + 1e-6


def test_qwen25_at_2048_tokens_costs_at_most_300_kb():
    """24 layers x 14 heads: the file's size does not grow with the prompt past THUMB_SIZE tokens,
    so a 40-token pattern gives the 2,048-token file's size exactly."""
    layers, heads = 24, 14
    one = np.tril(np.ones((40, 40), dtype=np.float32))
    content = overview.thumbnail_file((np.broadcast_to(one, (heads, 40, 40)) for _ in range(layers)),
                                      layers, heads, 40)
    size = len(json.dumps(content))
    assert size <= 300_000, size
    assert size == pytest.approx(4 / 3 * layers * heads * 32 * 33 / 4, rel=0.01)


def test_bad_files_name_the_problem():
    with pytest.raises(ArtifactError, match="expected"):
        overview.thumbnail_file([np.zeros((2, 5, 5), np.float32)], 1, 3, 5)
    content = overview.thumbnail_file([np.zeros((1, 5, 5), np.float32)], 1, 1, 5)
    with pytest.raises(ArtifactError, match="encoding"):
        overview.read_thumbnails(dict(content, encoding="other"))
    with pytest.raises(ArtifactError, match="bytes"):
        overview.read_thumbnails(dict(content, layers=2))


@pytest.mark.parametrize("t", [9, 50, 300])
def test_sparse_pooling_matches_the_dense_reference(t):
    """`thumbnails` pools the stored non-zero weights (CSR) without making the [T, T] pattern;
    it gives the dense reference's image, zeros (weights rounded away) included."""
    rng = np.random.default_rng(t)
    w = causal_softmax(rng, 1, t)[0]
    stored = np.rint(w * 128).astype(np.uint8)                 # as the artifact stores them
    stored[5 % t] = 0                                            # a row with nothing stored
    rows, keys = np.nonzero(stored)
    row_start = np.searchsorted(rows, np.arange(t + 1))
    size = min(t, overview.THUMB_SIZE)
    sparse = overview.sparse_head_image(row_start, keys, stored[rows, keys], t, size)
    dense = overview.head_images(stored[None].astype(np.float32), size)[0]
    assert np.allclose(sparse, dense, atol=1e-6)
