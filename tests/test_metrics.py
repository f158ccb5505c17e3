"""Tests for generator/metrics.py: every metric against small hand-built attention patterns whose
values are known exactly, plus the grouped-query comparisons and the sink toggle."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from generator.metrics import (
    ATLAS_METRICS,
    GROUP_METRIC_DEFINITIONS,
    HEAD_METRICS,
    METRIC_DEFINITIONS,
    aggregate,
    between_group_similarity,
    group_similarity,
    head_metrics,
    induction,
    induction_targets,
    js_divergence,
    kv_groups,
    layer_metrics,
    renormalize_without_first,
    row_entropy,
)

REPO = Path(__file__).resolve().parent.parent
DOC_PAGE = REPO / "site_src" / "metrics.md"


# --- hand-built heads ----------------------------------------------------------------------------

def uniform(t: int) -> np.ndarray:
    """Uniform causal attention: a_ij = 1/(i+1) for j ≤ i -> [T, T]."""
    a = np.tril(np.ones((t, t)))
    return a / a.sum(axis=1, keepdims=True)


def previous_token(t: int) -> np.ndarray:
    """Every row i ≥ 1 puts all its mass on i−1; row 0 on itself -> [T, T]."""
    a = np.zeros((t, t))
    a[0, 0] = 1.0
    a[np.arange(1, t), np.arange(t - 1)] = 1.0
    return a


def sink(t: int) -> np.ndarray:
    """Every row puts all its mass on key 0 -> [T, T]."""
    a = np.zeros((t, t))
    a[:, 0] = 1.0
    return a


def self_attention(t: int) -> np.ndarray:
    """Every row attends only to itself (the diagonal) -> [T, T]."""
    return np.eye(t)


REPEATED = [5, 6, 7, 5, 6, 7]


def perfect_induction() -> np.ndarray:
    """For ids [5,6,7,5,6,7]: rows 3, 4, 5 attend to 1, 2, 3; other rows to the previous token."""
    a = previous_token(6)
    for i, k in [(3, 1), (4, 2), (5, 3)]:
        a[i] = 0.0
        a[i, k] = 1.0
    return a


def half_induction() -> np.ndarray:
    """Rows 3, 4, 5 put half their mass on the induction target, half on the first token."""
    a = perfect_induction()
    for i, k in [(3, 1), (4, 2), (5, 3)]:
        a[i] = 0.0
        a[i, k] = 0.5
        a[i, 0] = 0.5
    return a


def stack(*heads: np.ndarray) -> np.ndarray:
    return np.stack(heads)                               # [H, T, T]


# --- head metrics --------------------------------------------------------------------------------

def test_uniform_row_entropy_is_log2_of_row_length():
    ent = row_entropy(stack(uniform(4)))[0]
    np.testing.assert_allclose(ent, np.log2([1, 2, 3, 4]), atol=1e-12)


def test_uniform_head_metrics():
    m = head_metrics(stack(uniform(4)), [1, 2, 3, 4])
    np.testing.assert_allclose(m["entropy"], [np.mean(np.log2([2, 3, 4]))])
    np.testing.assert_allclose(m["prev_token"], [np.mean([1 / 2, 1 / 3, 1 / 4])])
    np.testing.assert_allclose(m["first_token"], [np.mean([1 / 2, 1 / 3, 1 / 4])])
    # row i: Σ_j (i − j)/(i+1) = i/2 -> mean of 0.5, 1, 1.5
    np.testing.assert_allclose(m["distance"], [1.0])
    assert np.isnan(m["induction"][0])


def test_previous_token_head():
    m = head_metrics(stack(previous_token(6)), REPEATED)
    assert m["prev_token"][0] == pytest.approx(1.0)
    assert m["distance"][0] == pytest.approx(1.0)
    assert m["entropy"][0] == pytest.approx(0.0)
    assert m["first_token"][0] == pytest.approx(1 / 5)  # only row 1's previous token is key 0
    assert m["induction"][0] == pytest.approx(0.0)


def test_sink_head():
    m = head_metrics(stack(sink(5)), [1, 2, 3, 4, 5])
    assert m["first_token"][0] == pytest.approx(1.0)
    assert m["entropy"][0] == pytest.approx(0.0)
    assert m["distance"][0] == pytest.approx(np.mean([1, 2, 3, 4]))
    assert m["prev_token"][0] == pytest.approx(1 / 4)  # row 1's previous token is key 0


def test_self_attention_head_has_zero_distance():
    m = head_metrics(stack(self_attention(4)), [1, 2, 3, 4])
    assert m["distance"][0] == 0.0
    assert m["prev_token"][0] == 0.0
    assert m["first_token"][0] == 0.0


def test_metrics_are_per_head():
    m = head_metrics(stack(uniform(4), previous_token(4), sink(4)), [1, 2, 3, 4])
    for name in HEAD_METRICS:
        assert m[name].shape == (3,)
    np.testing.assert_allclose(m["first_token"][2], 1.0)
    np.testing.assert_allclose(m["prev_token"][1], 1.0)


def test_induction_targets_of_repeated_sequence():
    mask = induction_targets(REPEATED)
    assert sorted(zip(*np.nonzero(mask))) == [(3, 1), (4, 2), (5, 3)]


def test_induction_targets_collect_every_earlier_occurrence_and_skip_the_query():
    # ids: a b a a  -> i=2: j=0 -> {1}; i=3: j=0 -> 1, j=2 -> 3 = i (excluded) -> {1}
    mask = induction_targets([1, 2, 1, 1])
    assert sorted(zip(*np.nonzero(mask))) == [(2, 1), (3, 1)]
    # ids: a b a c a -> i=4: j=0 -> 1, j=2 -> 3 -> {1, 3}
    mask = induction_targets([1, 2, 1, 3, 1])
    assert sorted(zip(*np.nonzero(mask))) == [(2, 1), (4, 1), (4, 3)]


def test_perfect_induction_head_scores_one():
    assert induction(stack(perfect_induction()), REPEATED)[0] == pytest.approx(1.0)


def test_half_induction_head_scores_half():
    assert induction(stack(half_induction()), REPEATED)[0] == pytest.approx(0.5)


def test_induction_sums_over_all_targets():
    # i=4 of [a b a c a] has targets {1, 3}: 0.3 + 0.4 = 0.7; i=2 has target {1}: 0.2
    a = uniform(5)
    a[2] = [0.8, 0.2, 0, 0, 0]
    a[4] = [0.3, 0.3, 0, 0.4, 0]
    assert induction(stack(a), [1, 2, 1, 3, 1])[0] == pytest.approx((0.2 + 0.7) / 2)


def test_induction_is_nan_without_repeats():
    m = head_metrics(stack(uniform(6), perfect_induction()), [1, 2, 3, 4, 5, 6])
    assert np.isnan(m["induction"]).all()


def test_single_token_metrics_are_nan():
    m = head_metrics(np.ones((2, 1, 1)), [7])
    for name in HEAD_METRICS:
        assert np.isnan(m[name]).all()


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="heads, T, T"):
        head_metrics(np.ones((4, 4)), [1, 2, 3, 4])
    with pytest.raises(ValueError, match="token ids"):
        head_metrics(stack(uniform(4)), [1, 2, 3])
    with pytest.raises(ValueError, match="layers"):
        layer_metrics(stack(uniform(4)), [1, 2, 3, 4])


def test_layer_metrics_shape_and_values():
    layers = np.stack([stack(perfect_induction(), sink(6)),
                       stack(previous_token(6), half_induction())])  # [L=2, H=2, T, T]
    m = layer_metrics(layers.astype(np.float32), REPEATED)
    for name in HEAD_METRICS:
        assert m[name].shape == (2, 2)
    np.testing.assert_allclose(m["induction"], [[1.0, 0.0], [0.0, 0.5]], atol=1e-7)
    np.testing.assert_allclose(m["prev_token"][1, 0], 1.0)


def test_aggregate_is_nanmean_over_prompts():
    a = {"induction": np.array([np.nan, 1.0]), "entropy": np.array([1.0, 2.0])}
    b = {"induction": np.array([np.nan, 0.0]), "entropy": np.array([3.0, 4.0])}
    c = {"induction": np.array([0.5, np.nan]), "entropy": np.array([2.0, 3.0])}
    agg = aggregate([a, b, c])
    np.testing.assert_allclose(agg["induction"], [0.5, 0.5])
    np.testing.assert_allclose(agg["entropy"], [2.0, 3.0])


def test_aggregate_keeps_all_nan_heads_nan_without_warning():
    with_warnings = [{"induction": np.array([[np.nan, 1.0]])}, {"induction": np.array([[np.nan, 0.0]])}]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        agg = aggregate(with_warnings)
    assert agg["induction"].shape == (1, 2)
    assert np.isnan(agg["induction"][0, 0]) and agg["induction"][0, 1] == 0.5


def test_aggregate_rejects_mismatched_or_empty_input():
    with pytest.raises(ValueError):
        aggregate([])
    with pytest.raises(ValueError, match="differ"):
        aggregate([{"entropy": np.zeros(2)}, {"distance": np.zeros(2)}])


# --- grouped-query attention ---------------------------------------------------------------------

def test_kv_groups_follow_repeat_kv_order():
    assert kv_groups(4, 2) == [[0, 1], [2, 3]]
    assert kv_groups(14, 2) == [list(range(7)), list(range(7, 14))]
    with pytest.raises(ValueError):
        kv_groups(6, 4)


def test_identical_heads_in_one_group():
    (g,) = group_similarity(stack(uniform(5), uniform(5)), kv_heads=1)
    assert g["group"] == 0 and g["heads"] == [0, 1]
    assert g["similarity"] == pytest.approx(1.0)
    assert g["mean_js"] == pytest.approx(0.0, abs=1e-12)


def test_orthogonal_heads_have_zero_cosine_and_one_bit_js():
    # previous-token and self-attention never share a key on rows i ≥ 1
    (g,) = group_similarity(stack(previous_token(5), self_attention(5)), kv_heads=1)
    assert g["similarity"] == pytest.approx(0.0)
    assert g["mean_js"] == pytest.approx(1.0)


def test_js_divergence_known_value():
    # p = [1, 0], q = [0.5, 0.5]: m = [0.75, 0.25];
    # JS = H(m) − ½ H(p) − ½ H(q) = H(0.75) − 0.5
    h_m = -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25))
    assert js_divergence(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(h_m - 0.5)


def test_groups_and_between_group_similarity():
    att = stack(previous_token(5), previous_token(5), self_attention(5), self_attention(5))
    groups = group_similarity(att, kv_heads=2)
    assert [g["heads"] for g in groups] == [[0, 1], [2, 3]]
    assert all(g["similarity"] == pytest.approx(1.0) for g in groups)
    assert between_group_similarity(att, kv_heads=2) == pytest.approx(0.0)
    assert np.isnan(between_group_similarity(att, kv_heads=1))


def test_multi_head_attention_has_no_within_group_similarity():
    att = stack(uniform(4), previous_token(4), sink(4))
    groups = group_similarity(att, kv_heads=3)
    assert [g["heads"] for g in groups] == [[0], [1], [2]]
    assert all(np.isnan(g["similarity"]) and np.isnan(g["mean_js"]) for g in groups)
    assert np.isfinite(between_group_similarity(att, kv_heads=3))


# --- attention-sink toggle -----------------------------------------------------------------------

def test_renormalize_without_first_rows_sum_to_one():
    att = stack(uniform(5), self_attention(5)).astype(np.float32)
    out = renormalize_without_first(att)
    assert out.shape == att.shape and out.dtype == np.float32
    assert (out[:, :, 0] == 0).all()
    assert (out[:, 0, :] == 0).all()
    np.testing.assert_allclose(out[:, 1:, :].sum(axis=2), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[0, 3], [0, 1 / 3, 1 / 3, 1 / 3, 0], rtol=1e-6)
    assert (np.triu(out[0], k=1) == 0).all()


def test_renormalize_without_first_pure_sink_rows_become_zero():
    out = renormalize_without_first(stack(sink(4)))
    assert (out == 0).all() and not np.isnan(out).any()


def test_renormalize_without_first_handles_all_layers():
    layers = np.stack([stack(uniform(4)), stack(previous_token(4))])  # [L, H, T, T]
    out = renormalize_without_first(layers)
    assert out.shape == layers.shape
    np.testing.assert_allclose(out[1, 0, 2:], previous_token(4)[2:])


# --- definitions and docs ------------------------------------------------------------------------

def test_every_metric_is_defined():
    assert set(METRIC_DEFINITIONS) == set(ATLAS_METRICS) > set(HEAD_METRICS)
    for d in [*METRIC_DEFINITIONS.values(), *GROUP_METRIC_DEFINITIONS.values()]:
        assert set(d) == {"title", "unit", "formula", "meaning"}
        assert all(isinstance(v, str) and v for v in d.values())
        assert "\\" not in d["formula"]  # plain text, no LaTeX


def test_module_imports_only_numpy_and_stdlib():
    tree = ast.parse((REPO / "generator" / "metrics.py").read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    assert roots <= {"__future__", "collections", "itertools", "warnings", "numpy"}


def test_reference_page_covers_every_metric():
    text = DOC_PAGE.read_text()
    for d in [*METRIC_DEFINITIONS.values(), *GROUP_METRIC_DEFINITIONS.values()]:
        assert d["title"] in text
