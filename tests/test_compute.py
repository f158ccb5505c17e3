"""Tests for the compute stage (generator/extract.py, generator/compute.py, generator/models.py) on
the offline demo's tiny models: what is stored must equal what the model itself computes.

Every reference value comes from the model run on one prompt alone, in float32, with the full
logits (`model(..., output_attentions=True, output_hidden_states=True)`), while the product runs
prompts of different lengths in one left-padded batch and keeps only top-k results. Artifacts hold
the prompt followed by the model's own greedy continuation; both are checked the same way.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from generator import codec, extract
from generator.attribution import rank_components
from generator.codec import tril_size
from generator.compute import Settings, artifact_path, run_compute
from generator.heads import read_ov
from generator.errors import ArtifactError, OptionError
from generator.extract import encode_on_device, quantize_attention, run_batch
from generator.models import architecture_facts, final_norm
from generator.prompts import Prompt, PromptSet
from generator.schema import (ATTENTION_MAX_ABS_ERROR, ATTENTION_SCALE, Attribution, Lens,
                              attention_path, decode_attention, decode_lens, read_artifact,
                              validate_artifact)
from generator.tokens import describe_tokens

SETTINGS = Settings(top_k=10, lens_top_k=5)
TEXTS = {
    "two": "Hello world",
    "induction": "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "mixed": "巴黎 and 巴 🙂 x = [1, 2, 3]",
    "one": "A",
}
SLUGS = {"gpt2_model": "tiny-random-gpt2", "qwen2_model": "tiny-random-qwen2"}
MODELS = list(SLUGS)
# The published configs of the two default models, committed in benchmarks/reference/ (a copy of
# the project's shared reference folder, whose README.md holds the verified table FULL_SIZE below
# is taken from). They are part of the checkout, so a missing one is a failure, not a skip.
REFERENCE_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "reference"


def prompt_set(texts: dict[str, str] = TEXTS) -> PromptSet:
    prompts = tuple(Prompt("tests", pid, text, f"note of {pid}") for pid, text in texts.items())
    return PromptSet("tests", "Tests", "Prompts of different lengths.", prompts, "tests.yaml")


def quiet(_: str) -> None:
    pass


@torch.no_grad()
def reference(model, ids: list[int]):
    """The model's own outputs for one prompt, unbatched: full logits, attentions, hidden states."""
    out = model(input_ids=torch.tensor([ids]), output_attentions=True, output_hidden_states=True,
                use_cache=False)
    return out


def capture(lm, model, seqs: list[list[int]], n_new: int, k: int = SETTINGS.top_k,
            lens_k: int = SETTINGS.lens_top_k):
    """extract.run_batch as the compute stage calls it (one left-padded batch)."""
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return run_batch(model, seqs, n_new, tok.eos_token_id, pad, k, lens_k)


def token_ids(lm, texts) -> list[list[int]]:
    return [describe_tokens(lm.tokenizer, t)[0] for t in texts]


@pytest.fixture(scope="module")
def computed(scratch, demo_dirs):
    """run_compute of TEXTS on both demo models: (artifacts dir, report, log lines)."""
    out = scratch("compute") / "artifacts"
    lines: list[str] = []
    report = run_compute([str(d) for d in demo_dirs], [prompt_set()], out, SETTINGS,
                         device="cpu", dtype="float32", log=lines.append)
    assert not report.failures, report.failures
    assert report.computed == 2 * len(TEXTS) and report.reused == 0
    return out, report, lines


def artifact(computed, model_fixture: str, pid: str) -> dict:
    return read_artifact(computed[0] / SLUGS[model_fixture] / "tests" / f"{pid}.json")


# --- helpers comparing stored top-k blocks with the model's full distribution -------------------


FLOAT16 = 2.0 ** -11  # relative rounding error of float16: the lens's log-probabilities


def check_block(block: dict, logits: torch.Tensor, ids: list[int], k: int,
                rtol: float = 0.0) -> None:
    """A stored top-k block (predictions or one lens layer) against full logits [T, V];
    log-probabilities within `rtol` (the lens stores them as float16: 2**-11)."""
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    T = len(ids)
    assert block["k"] == k
    assert len(block["ids"]) == len(block["probs"]) == T
    got_ids = torch.tensor(block["ids"])                                  # [T, k]
    got_probs = np.array(block["probs"])                                  # [T, k]
    top = torch.topk(logprobs, k + 1, dim=-1)
    values, top_ids = top.values.numpy(), top.indices.numpy()
    at_ids = logprobs.gather(-1, got_ids).numpy()
    # Probabilities sorted descending, and equal to softmax(logits) at those ids.
    assert np.all(np.diff(got_probs, axis=-1) <= 0), "probabilities not sorted descending"
    # float16 log-probabilities: exp(lp (1 + e)) = p exp(lp e), |e| <= rtol, then 6 decimals.
    tolerance = 1e-4 + np.exp(at_ids) * np.expm1(np.abs(at_ids) * rtol) + 5e-7
    assert np.all(np.abs(got_probs - np.exp(at_ids)) <= tolerance)
    # The same values as torch.topk, and the same ids wherever there is no near-tie.
    np.testing.assert_allclose(at_ids, values[:, :k], atol=1e-4)
    clear = np.abs(np.diff(values, axis=-1)).min(-1) > 1e-4               # [T]
    np.testing.assert_array_equal(got_ids.numpy()[clear], top_ids[clear, :k])
    # The actual next token: its log-probability and its rank (1 = top prediction).
    assert block["next_logprob"][-1] is None and block["next_rank"][-1] is None
    if T == 1:
        return
    targets = torch.tensor(ids[1:])
    expected_lp = logprobs[:-1].gather(-1, targets[:, None])[:, 0].numpy()
    np.testing.assert_allclose(np.array(block["next_logprob"][:-1], dtype=float), expected_lp,
                               atol=1.5e-4, rtol=rtol)
    row = logits[:-1].double()
    tv = row.gather(-1, targets[:, None])
    lo = 1 + (row > tv + 1e-4).sum(-1)
    hi = (row > tv - 1e-4).sum(-1)                   # counts the target itself
    exact = 1 + (row > tv).sum(-1)
    rank = torch.tensor(block["next_rank"][:-1])
    assert ((lo <= rank) & (rank <= hi)).all(), f"ranks {rank.tolist()} vs {exact.tolist()}"
    assert (rank[lo == hi] == exact[lo == hi]).all()


# --- run_batch: generation and capture in one pass --------------------------------------------


@pytest.mark.parametrize("model_fixture", MODELS)
@pytest.mark.parametrize("n_new", [0, 5])
def test_batched_capture_is_causal_complete_and_matches_the_model(request, model_fixture, n_new):
    """Prompts of different lengths in one left-padded batch, continued greedily: every stored row
    (prompt rows from the prefill, generated rows from the single-token steps) is within 1/256 of
    the model's own attention over the whole sequence, run alone."""
    lm = request.getfixturevalue(model_fixture)
    seqs = token_ids(lm, TEXTS.values())
    assert len({len(s) for s in seqs}) == len(seqs), "prompts need different lengths"
    out = capture(lm, lm.model, seqs, n_new)
    L, H = lm.facts["layers"], lm.facts["query_heads"]
    for seq, res in zip(seqs, out):
        n = len(res.ids)
        assert res.ids[:len(seq)] == seq and len(seq) < n <= len(seq) + n_new or n == len(seq)
        values = res.attention.values()
        assert values.dtype == np.uint8 and values.shape == (L, H, n, n)
        assert res.attention.index.shape == (L, H, 3)
        assert res.attention.data.size == codec.section_bytes(res.attention.index)
        np.testing.assert_array_equal(res.attention.index[..., 0], (values > 0).sum((2, 3)))
        att = res.square_attention()                                        # [L, H, n, n]
        assert att.any(), "no attention was captured"
        assert att.max() <= ATTENTION_SCALE
        ref = reference(lm.model, res.ids)
        expected = torch.stack(ref.attentions)[:, 0].numpy()              # [L, H, n, n]
        np.testing.assert_array_less(np.abs(att / ATTENTION_SCALE - expected),
                                     ATTENTION_MAX_ABS_ERROR + 1e-6)
        # The model's own attention rows sum to one, so the stored ones nearly do.
        np.testing.assert_allclose(expected.sum(-1), 1, atol=1e-5)
        assert np.abs(att.sum(-1) / ATTENTION_SCALE - 1).max() <= n / 256
        # Greedy: each generated token is the model's top prediction at the position before it.
        gen = res.ids[len(seq):]
        assert ref.logits[0, len(seq) - 1:n - 1].argmax(-1).tolist() == gen
        assert res.top_ids.shape == (n, SETTINGS.top_k)
        assert res.lens_ids.shape == (L, n, SETTINGS.lens_top_k)
        np.testing.assert_array_equal(res.lens_ids[-1], res.top_ids[:, :SETTINGS.lens_top_k])
        assert (res.next_rank[-1, len(seq) - 1:n - 1] == 1).all()
        assert np.isnan(res.next_logprob[:, -1]).all() and (res.next_rank[:, -1] == 0).all()


@pytest.mark.parametrize("model_fixture", MODELS)
def test_batched_results_equal_unbatched(request, model_fixture):
    """Left padding and batch neighbours must not change what is stored for a prompt."""
    lm = request.getfixturevalue(model_fixture)
    seqs = token_ids(lm, TEXTS.values())
    batch = capture(lm, lm.model, seqs, SETTINGS.continuation)
    for b, seq in enumerate(seqs):
        alone = capture(lm, lm.model, [seq], SETTINGS.continuation)[0]
        got = batch[b]
        assert got.ids == alone.ids
        diff = np.abs(got.attention.values().astype(int)                        # same n
                      - alone.attention.values().astype(int))
        # A float difference in the last bit may move a value across a rounding boundary.
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, f"prompt {b}: {int((diff > 0).sum())}"
        np.testing.assert_array_equal(got.top_ids, alone.top_ids)
        np.testing.assert_array_equal(got.lens_ids, alone.lens_ids)
        np.testing.assert_allclose(got.lens_logprobs, alone.lens_logprobs, atol=1e-4)
        np.testing.assert_allclose(got.next_logprob, alone.next_logprob, atol=1e-4)
        # Ranks deep in the vocabulary sit among near-ties (the demo's token codes have 32
        # numbers, 50k-152k of them): a last-bit difference may swap two neighbours.
        moved = got.next_rank != alone.next_rank
        assert np.abs(got.next_rank - alone.next_rank).max() <= 1 and moved.mean() < 0.05


def test_generation_stops_after_end_of_text(gpt2_model):
    """A row whose greedy continuation reaches end-of-text keeps it and nothing after it: here the
    second token the model generates for the first prompt is declared end-of-text."""
    lm = gpt2_model
    seqs = token_ids(lm, ["Hello world", "The quick brown fox jumps"])
    free = capture(lm, lm.model, seqs, 6)
    gen = free[0].ids[len(seqs[0]):]
    stop = gen[1]
    out = run_batch(lm.model, seqs, 6, stop, lm.tokenizer.eos_token_id, SETTINGS.top_k,
                    SETTINGS.lens_top_k)
    expected = seqs[0] + gen[:gen.index(stop) + 1]
    assert out[0].ids == expected and len(expected) < len(free[0].ids)
    n = len(expected)
    assert out[0].square_attention().shape[-1] == n and out[0].lens_ids.shape[1] == n
    np.testing.assert_array_equal(out[0].square_attention(),
                                  free[0].square_attention()[:, :, :n, :n])
    assert out[1].ids[:len(seqs[1])] == seqs[1]


@pytest.mark.parametrize("tiles, bias", [((1024, 4096), False), ((7, 512), True), ((7, 64), True),
                                         ((5, 16), False)],
                         ids=["default-tiles", "prefilter-and-merges", "narrow-blocks-bias",
                              "very-narrow-blocks"])
def test_lens_topk_equals_the_full_log_softmax(monkeypatch, tiles, bias):
    """The blocked top-k / log-sum-exp / rank against the full logits computed the plain way, with
    several row tiles, vocabulary blocks that do not divide the vocabulary, blocks too narrow for the
    top-k prefilter, candidate merges, rows without a target, and a logit bias."""
    from generator import extract
    monkeypatch.setattr(extract, "CPU_ROW_TILE", tiles[0])
    monkeypatch.setattr(extract, "CPU_COL_TILE", tiles[1])
    g = torch.Generator().manual_seed(3)
    R, D, V, k = 37, 24, 1999, 10
    h = torch.randn(R, D, generator=g)
    W = torch.randn(V, D, generator=g) * 0.5
    b = torch.randn(V, generator=g) if bias else None
    targets = torch.randint(0, V, (R,), generator=g)
    targets[::5] = -1
    ids, lps, t_lp, rank = extract.lens_topk(h, W, b, targets, k)
    logits = (h.double() @ W.double().T) + (b.double() if bias else 0)
    full = torch.log_softmax(logits, -1)
    ref = full.topk(k, -1)
    np.testing.assert_array_equal(ids.numpy(), ref.indices.numpy())
    np.testing.assert_allclose(lps.numpy(), ref.values.numpy(), atol=1e-4)
    has = targets >= 0
    safe = targets.clamp_min(0)[:, None]
    np.testing.assert_allclose(t_lp[has].numpy(), full.gather(1, safe)[:, 0][has].numpy(), atol=1e-4)
    assert torch.isnan(t_lp[~has]).all() and (rank[~has] == 0).all()
    expected_rank = 1 + (logits > logits.gather(1, safe)).sum(1)
    np.testing.assert_array_equal(rank[has].numpy(), expected_rank[has].numpy())


def test_quantize_attention_error_and_range():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        logits = torch.randn(64, 37, generator=g) * torch.rand(64, 1, generator=g) * 8
        p = torch.softmax(logits, -1).to(dtype)
        q = quantize_attention(p)
        assert q.dtype == torch.uint8 and int(q.max()) <= ATTENTION_SCALE
        err = (q.float() / ATTENTION_SCALE - p.float()).abs()
        assert err.max() <= ATTENTION_MAX_ABS_ERROR + 1e-7
    assert ATTENTION_MAX_ABS_ERROR < 1 / 255, "the format promises at most 1/255"
    one_hot = torch.zeros(3, 5)
    one_hot[:, 2] = 1
    assert quantize_attention(one_hot).tolist() == [[0, 0, 128, 0, 0]] * 3


# --- run_compute: artifacts against the model ---------------------------------------------------


@pytest.mark.parametrize("model_fixture", MODELS)
@pytest.mark.parametrize("pid", list(TEXTS))
def test_decoded_attention_matches_the_model(request, computed, model_fixture, pid):
    lm = request.getfixturevalue(model_fixture)
    a = artifact(computed, model_fixture, pid)
    ids = [t["id"] for t in a["tokens"]]
    ref = reference(lm.model, ids)
    assert len(ref.attentions) == a["attention"]["layers"] == lm.facts["layers"]
    for layer, att in enumerate(ref.attentions):
        decoded = decode_attention(a, layer)
        expected = att[0].float().numpy()
        assert decoded.shape == expected.shape == (lm.facts["query_heads"], len(ids), len(ids))
        err = np.abs(decoded - expected).max()
        assert err <= ATTENTION_MAX_ABS_ERROR + 1e-6, f"layer {layer}: error {err}"
        assert not np.triu(decoded, k=1).any()


@pytest.mark.parametrize("model_fixture", MODELS)
@pytest.mark.parametrize("pid", list(TEXTS))
def test_predictions_match_the_model_logits(request, computed, model_fixture, pid):
    lm = request.getfixturevalue(model_fixture)
    a = artifact(computed, model_fixture, pid)
    ids = [t["id"] for t in a["tokens"]]
    logits = reference(lm.model, ids).logits[0]
    check_block(a["predictions"], logits, ids, SETTINGS.top_k)
    # Every predicted id has a display entry.
    assert {str(i) for row in a["predictions"]["ids"] for i in row} <= a["vocab"].keys()


@pytest.mark.parametrize("model_fixture", MODELS)
@pytest.mark.parametrize("pid", list(TEXTS))
def test_logit_lens_matches_the_model(request, computed, model_fixture, pid):
    """Last lens layer = the model's own predictions; layer l = lm_head(final_norm(h[l + 1]))."""
    lm = request.getfixturevalue(model_fixture)
    a = artifact(computed, model_fixture, pid)
    ids = [t["id"] for t in a["tokens"]]
    ref = reference(lm.model, ids)
    L = lm.facts["layers"]
    assert len(a["lens"]) == L and len(ref.hidden_states) == L + 1
    check_block(a["lens"][-1], ref.logits[0], ids, SETTINGS.lens_top_k, FLOAT16)
    head, norm = lm.model.get_output_embeddings(), final_norm(lm.model)
    with torch.no_grad():
        for layer in range(L - 1):
            logits = head(norm(ref.hidden_states[layer + 1]))[0]
            check_block(a["lens"][layer], logits, ids, SETTINGS.lens_top_k, FLOAT16)
    # The last layer's top-k is the prefix of the stored predictions.
    assert a["lens"][-1]["ids"] == [row[:SETTINGS.lens_top_k] for row in a["predictions"]["ids"]]


def test_kv_cache_goes_through_the_current_argument(gpt2_model, monkeypatch):
    """The generation steps hand the KV cache over under the name this transformers takes:
    `cache` where the forward has it (5.24 warns that `past_key_values` goes in 5.40), else
    `past_key_values` (5.17). Feature-detected from the signature, never from a version."""
    import functools
    import inspect

    from generator.extract import cache_argument
    lm = gpt2_model
    model = copy.deepcopy(lm.model)
    real, seen = model.forward, []

    @functools.wraps(real)
    def spy(*a, **k):
        seen.append(set(k))
        return real(*a, **k)

    monkeypatch.setattr(model, "forward", spy)
    expected = "cache" if "cache" in inspect.signature(real).parameters else "past_key_values"
    capture(lm, model, token_ids(lm, ["Hello world"]), 3)
    steps = [k for k in seen if expected in k]
    assert len(steps) == 3, seen
    if expected == "cache":
        assert not any("past_key_values" in k for k in seen)

    class Old:  # the forward of transformers 5.17
        def forward(self, input_ids=None, past_key_values=None, use_cache=None): ...

    class New:
        def forward(self, input_ids=None, cache=None, use_cache=None): ...

    assert cache_argument(Old()) == "past_key_values" and cache_argument(New()) == "cache"
    # A forward wrapped on the instance (a profiler, a timer) does not hide the class's signature.
    monkeypatch.setattr(model, "forward", lambda *a, **k: real(*a, **k))
    assert cache_argument(model) == expected


def test_lens_top_k_reaches_the_device(gpt2_model, monkeypatch):
    """The lens ranks lens_top_k candidates for every layer but the output layer, whose top_k are
    the model's predictions: no layer computes top_k only for the artifact to drop most of them."""
    import generator.extract as X
    lm = gpt2_model
    calls, real = [], X.lens_topk

    def spy(h, weight, bias, targets, k):
        calls.append((h.shape[0], k))
        return real(h, weight, bias, targets, k)

    monkeypatch.setattr(X, "lens_topk", spy)
    seqs = token_ids(lm, TEXTS.values())
    out = capture(lm, lm.model, seqs, 2, k=7, lens_k=2)
    L, N = lm.facts["layers"], sum(len(r.ids) for r in out)
    assert sorted(calls) == sorted([(N, 7), ((L - 1) * N, 2)])
    for res in out:
        assert res.top_ids.shape[1] == 7 and res.lens_ids.shape[2] == 2


@pytest.mark.parametrize("model_fixture", MODELS)
def test_logit_lens_applies_the_final_norm_once(request, model_fixture):
    """With a final norm that is not (nearly) idempotent, applying it twice to the last layer or
    not at all to the others would show. The demo models' norms have unit weight, so perturb a copy."""
    lm = request.getfixturevalue(model_fixture)
    model = copy.deepcopy(lm.model)
    norm = final_norm(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(norm.weight.shape, generator=g) * 3 + 0.2)
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=g))
    k = SETTINGS.lens_top_k
    out = capture(lm, model, token_ids(lm, TEXTS.values()), 3, k, k)  # generated positions too
    head = model.get_output_embeddings()
    L = lm.facts["layers"]
    for res in out:
        ids = res.ids
        ref = reference(model, ids)
        with torch.no_grad():
            twice = torch.log_softmax(head(norm(ref.hidden_states[L]))[0].double(), -1)
        final = torch.log_softmax(ref.logits[0].double(), -1)
        assert (twice - final).abs().max() > 1e-2, "perturbation too weak to test anything"
        for layer in range(L):
            with torch.no_grad():
                logits = ref.logits[0] if layer == L - 1 else head(norm(ref.hidden_states[layer + 1]))[0]
            lp = torch.log_softmax(logits.double(), -1)
            got_ids, got_lp = res.lens_ids[layer], res.lens_logprobs[layer]
            expected = np.take_along_axis(lp.numpy(), got_ids, axis=-1)
            np.testing.assert_allclose(got_lp, expected, atol=1e-4, err_msg=f"layer {layer}")
            np.testing.assert_allclose(got_lp, torch.topk(lp, k).values.numpy(), atol=1e-4,
                                       err_msg=f"layer {layer}")


# --- artifacts on disk --------------------------------------------------------------------------


@pytest.mark.parametrize("model_fixture", MODELS)
def test_artifacts_validate_and_round_trip(request, computed, model_fixture):
    lm = request.getfixturevalue(model_fixture)
    out, report, _ = computed
    for pid, text in TEXTS.items():
        path = out / SLUGS[model_fixture] / "tests" / f"{pid}.json"
        assert path in report.artifacts
        raw = json.loads(path.read_text("utf-8"))
        assert validate_artifact(raw) == raw
        read = read_artifact(path)
        blob = attention_path(path).read_bytes()
        lens = raw["lens"]
        assert lens["offset"] + lens["bytes"] == len(blob) == raw["attention"]["bytes"]
        assert read["attention"].pop("data") == blob[:lens["offset"]]
        assert read.pop("lens") == decode_lens(lens, blob)
        assert len(decode_lens(lens, blob)) == raw["attention"]["layers"]
        assert read == {k: v for k, v in raw.items() if k != "lens"}
        ids, tokens = describe_tokens(lm.tokenizer, text)
        n = len(ids)
        # The prompt's tokens, then the model's own greedy continuation (analysed like the prompt).
        assert raw["tokens"][:n] == tokens
        generated = raw["tokens"][n:]
        assert raw["generation"] == {"prompt_tokens": n, "generated_tokens": len(generated),
                                     "method": "greedy"}
        assert 0 < len(generated) <= SETTINGS.continuation
        assert all(t["generated"] is True and t["start"] == t["end"] == len(text)
                   for t in generated)
        all_ids = [t["id"] for t in raw["tokens"]]
        logits = reference(lm.model, all_ids).logits[0]
        assert [int(i) for i in logits[n - 1:-1].argmax(-1)] == all_ids[n:], "not greedy"
        assert all(r == 1 for r in raw["predictions"]["next_rank"][n - 1:-1])
        assert raw["prompt"] == {"set": "tests", "id": pid, "text": text, "note": f"note of {pid}"}
        prov = raw["provenance"]
        assert prov["random_weights"] is True
        assert prov["model_slug"] == SLUGS[model_fixture]
        assert prov["revision"].startswith("sha256:")
        assert (prov["device"], prov["dtype"], prov["attn_implementation"]) == ("cpu", "float32",
                                                                                "eager")
        assert prov["settings"] == asdict(SETTINGS)
        assert raw["model"] == lm.facts
        att = raw["attention"]
        assert (att["layers"], att["heads"], att["length"]) == (
            lm.facts["layers"], lm.facts["query_heads"], len(all_ids))
        bin_path = attention_path(path)
        assert att["file"] == bin_path.name == f"{pid}.attention.bin"
        # Every head's digits (three values a byte), then overflow bytes, then runs.
        for name in ("nonzero", "overflow_bytes", "run_bytes"):
            assert [len(x) for x in att[name]] == [att["heads"]] * att["layers"]
        counts = np.array([att["nonzero"], att["overflow_bytes"], att["run_bytes"]])  # [3, L, H]
        assert raw["lens"]["offset"] == (-(-counts[0] // 3) + counts[1] + counts[2]).sum()
        # Then the lens: ids int32 and log-probabilities float16 [L, T, k], the next token's
        # log-probability float16 and rank int32 [L, T].
        k = SETTINGS.lens_top_k
        assert att["bytes"] == bin_path.stat().st_size == \
            raw["lens"]["offset"] + att["layers"] * len(all_ids) * (4 * k + 2 * k + 2 + 4)


def test_read_artifact_rejects_damaged_files(computed, tmp_path):
    src = computed[0] / "tiny-random-gpt2" / "tests" / "induction.json"
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(src.read_bytes()[:500])
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_artifact(truncated)
    data = json.loads(src.read_text("utf-8"))
    data["predictions"]["ids"] = data["predictions"]["ids"][:-1]
    with pytest.raises(ArtifactError, match="predictions.ids has"):
        validate_artifact(data, "edited")
    data = json.loads(src.read_text("utf-8"))
    data["schema_version"] = 999
    with pytest.raises(ArtifactError, match="schema_version 999"):
        validate_artifact(data, "future")


def test_unchanged_prompts_are_reused_and_a_changed_one_recomputed(computed, demo_dirs, tmp_path):
    out = tmp_path / "artifacts"
    shutil.copytree(computed[0], out)
    models = [str(d) for d in demo_dirs]
    per_model = ("tokenizer.json.gz", "ov.json.gz")  # one a model: tokenizer, OV circuits
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    before = {p: b for p, b in before.items() if p.name not in per_model}
    assert len(before) == 2 * 2 * len(TEXTS)  # JSON and attention file
    ov_before = {p: read_ov(p) for p in out.glob("*/ov.json.gz")}
    assert len(ov_before) == 2

    lines: list[str] = []
    again = run_compute(models, [prompt_set()], out, SETTINGS, device="cpu", dtype="float32",
                        log=lines.append)
    assert (again.computed, again.reused, again.failures) == (0, 2 * len(TEXTS), [])
    assert sum("model not loaded" in line for line in lines) == 2, lines
    assert {p: p.read_bytes() for p in out.rglob("*")
            if p.is_file() and p.name not in per_model} == before
    assert {p: read_ov(p) for p in out.glob("*/ov.json.gz")} == ov_before

    changed = dict(TEXTS, two="Hello there, world")
    lines = []
    third = run_compute(models, [prompt_set(changed)], out, SETTINGS, device="cpu",
                        dtype="float32", log=lines.append)
    assert (third.computed, third.reused, third.failures) == (2, 2 * (len(TEXTS) - 1), [])
    # The OV circuits are not recomputed: every row is kept as it was, and only the rows of
    # source tokens new among the prompts' most frequent ones are computed.
    for path, old in ov_before.items():
        new = read_ov(path)
        assert all(new["rows"][t] == row for t, row in old["rows"].items())
        added = len(new["rows"]) - len(old["rows"])
        made = [line for line in lines if f"{old['model_id']}: OV circuits of" in line]
        assert made == ([] if added == 0 else
                        [line for line in made if f"OV circuits of {added} source" in line]), made
    for path, content in before.items():
        if path.name in ("two.json", "two.attention.bin"):
            assert path.read_bytes() != content
            if path.suffix == ".json":
                assert read_artifact(path)["prompt"]["text"] == "Hello there, world"
        else:
            assert path.read_bytes() == content, f"{path} was rewritten"


def test_settings_are_checked():
    with pytest.raises(OptionError, match="--top-k 0"):
        Settings(top_k=0)
    with pytest.raises(OptionError, match="--lens-top-k 11"):
        Settings(top_k=10, lens_top_k=11)


def test_artifact_path_layout(tmp_path):
    p = Prompt("facts", "eiffel-tower", "x", "n")
    assert artifact_path(tmp_path, "gpt2", p) == tmp_path / "gpt2" / "facts" / "eiffel-tower.json"


# --- architecture facts of the full-size models ---------------------------------------------------

# GPT-2 small and Qwen2.5-0.5B: the table in benchmarks/reference/README.md (the published
# configs, copied beside it).
FULL_SIZE = {
    "gpt2": ("gpt2", {
        "architecture": "GPT2LMHeadModel", "model_type": "gpt2", "layers": 12, "query_heads": 12,
        "kv_heads": 12, "attention": "multi-head", "hidden_size": 768, "head_dim": 64,
        "intermediate_size": 3072, "vocab_size": 50257, "context_length": 1024,
        "position_encoding": "learned absolute (1024 positions)", "norm": "LayerNorm (eps 1e-05)",
        "attention_bias": True, "tied_embeddings": True, "parameters": 124_439_808,
        "parameters_without_embeddings": 124_439_808 - 50257 * 768 - 1024 * 768,
    }),
    "qwen2.5-0.5b": ("qwen2.5", {
        "architecture": "Qwen2ForCausalLM", "model_type": "qwen2", "layers": 24,
        "query_heads": 14, "kv_heads": 2, "attention": "grouped-query", "hidden_size": 896,
        "head_dim": 64, "intermediate_size": 4864, "vocab_size": 151936, "context_length": 32768,
        "position_encoding": "RoPE (theta 1,000,000)", "norm": "RMSNorm (eps 1e-06)",
        "attention_bias": True, "tied_embeddings": True, "parameters": 494_032_768,
        "parameters_without_embeddings": 494_032_768 - 151936 * 896,
    }),
}


def _full_size_model(config_dir: str, on_meta: bool):
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights
    config = AutoConfig.from_pretrained(REFERENCE_DIR / config_dir)
    if on_meta:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    # Real (uninitialized, so untouched and nearly free) memory; skipping initialization also
    # skips tying, which from_pretrained would do: tie as it does.
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()
    return model


@pytest.mark.parametrize("config_dir", list(FULL_SIZE))
def test_architecture_facts_of_the_full_size_models(config_dir):
    from generator.demo import load_real_tokenizer
    tokenizer_name, expected = FULL_SIZE[config_dir]
    model = _full_size_model(config_dir, on_meta=False)
    facts = architecture_facts(model, load_real_tokenizer(tokenizer_name))
    del model
    assert {k: facts[k] for k in expected} == expected
    assert facts["tokenizer_size"] <= facts["vocab_size"]
    if config_dir == "qwen2.5-0.5b":
        assert round(facts["parameters_without_embeddings"] / 1e9, 2) == 0.36
        assert facts["activation"] == "silu gated (SwiGLU-style)"


@pytest.mark.parametrize("config_dir", list(FULL_SIZE))
def test_architecture_facts_on_the_meta_device(config_dir):
    """Parameters on the meta device (as with from_pretrained(device_map=...) offloading) have no
    storage: every data_ptr() is 0. The facts must not depend on storage addresses."""
    from generator.demo import load_real_tokenizer
    tokenizer_name, expected = FULL_SIZE[config_dir]
    model = _full_size_model(config_dir, on_meta=True)
    facts = architecture_facts(model, load_real_tokenizer(tokenizer_name))
    assert {k: facts[k] for k in expected} == expected


def test_device_map_auto_gives_the_same_artifacts(computed, demo_dirs, scratch):
    """`--device-map auto` loads through accelerate (which places every layer itself; on this
    CPU-only machine all of them on the CPU) and must give the same numbers as a plain load.
    Spreading over several GPUs cannot be tried here."""
    out = scratch("device-map") / "artifacts"
    texts = {k: TEXTS[k] for k in ("two", "induction")}
    report = run_compute([str(demo_dirs[1])], [prompt_set(texts)], out, SETTINGS, device="cpu",
                         dtype="float32", log=quiet, device_map="auto")
    assert (report.computed, report.failures) == (2, [])
    for pid in texts:
        ours = read_artifact(out / SLUGS["qwen2_model"] / "tests" / f"{pid}.json")
        plain = artifact(computed, "qwen2_model", pid)
        assert ours["key"] == plain["key"] and ours["tokens"] == plain["tokens"]
        diff = np.abs(np.frombuffer(ours["attention"]["data"], np.uint8).astype(int)
                      - np.frombuffer(plain["attention"]["data"], np.uint8).astype(int))
        assert diff.max() <= 1
        np.testing.assert_allclose(ours["predictions"]["probs"], plain["predictions"]["probs"],
                                   atol=1e-5)


# --- issue 11: metrics from full precision, float32 softmax in every dtype, --dtype auto ---------


@pytest.mark.parametrize("model_fixture", MODELS)
def test_artifact_metrics_come_from_the_models_float32_attention(request, computed, model_fixture):
    """Every stored head and grouped-query metric equals metrics.py applied to the model's own
    float32 attention over the artifact's tokens (prompt and continuation), not to the stored
    1/128 grid, which drops weights under 1/256."""
    from generator.metrics import HEAD_METRICS, between_group_similarity, group_similarity, \
        layer_metrics
    lm = request.getfixturevalue(model_fixture)
    kv, H = lm.facts["kv_heads"], lm.facts["query_heads"]
    for pid in TEXTS:
        a = artifact(computed, model_fixture, pid)
        ids = [t["id"] for t in a["tokens"]]
        own = torch.stack(reference(lm.model, ids).attentions)[:, 0].double().numpy()  # [L,H,T,T]
        want = layer_metrics(own, ids)
        for name in HEAD_METRICS:
            got = np.array(a["metrics"][name], dtype=float)
            np.testing.assert_allclose(got, want[name], atol=2e-4, equal_nan=True,
                                       err_msg=f"{pid}: {name}")
        assert len(a["groups"]) == (lm.facts["layers"] if kv < H else 0)
        for layer, g in enumerate(a["groups"]):
            np.testing.assert_allclose(g["between"] if g["between"] is not None else np.nan,
                                       between_group_similarity(own[layer], kv), atol=2e-4,
                                       equal_nan=True)
            for stored, expected in zip(g["groups"], group_similarity(own[layer], kv)):
                assert stored["heads"] == expected["heads"]
                for key in ("similarity", "mean_js"):
                    value = np.nan if stored[key] is None else stored[key]
                    np.testing.assert_allclose(value, expected[key], atol=2e-4, equal_nan=True)


@pytest.mark.parametrize("model_fixture", MODELS)
def test_bfloat16_attention_is_the_float32_softmax_of_the_models_scores(request, model_fixture,
                                                                        monkeypatch):
    """The tiny models in bfloat16 on the CPU: every stored weight is within 1/255 of the float32
    (here float64) softmax of the scores the bfloat16 model computed in that same run, prefill
    and generation steps, in a left-padded batch. The probabilities the bfloat16 model goes on
    with (cast to bfloat16) would not keep that bound, which the test checks too."""
    from transformers import AttentionInterface

    import generator.extract as X
    lm = request.getfixturevalue(model_fixture)
    model = copy.deepcopy(lm.model).to(torch.bfloat16)
    calls = []
    real = X.float32_softmax_attention

    def spy(module, query, key, value, attention_mask, scaling=None, **kw):
        g = query.shape[1] // key.shape[1]
        k = key.repeat_interleave(g, dim=1)
        scores = torch.matmul(query, k.transpose(-1, -2)) * scaling       # bfloat16, as the model
        if attention_mask is not None:
            scores = scores + attention_mask[..., :k.shape[-2]]
        calls.append(torch.softmax(scores.double(), dim=-1))            # [B, H, Q, K]
        return real(module, query, key, value, attention_mask, scaling=scaling, **kw)

    monkeypatch.setitem(AttentionInterface._global_mapping, X.FLOAT32_SOFTMAX, spy)
    monkeypatch.setattr(X, "float32_softmax_attention", spy)
    seqs = token_ids(lm, [TEXTS["two"], TEXTS["induction"]])
    n_new = 4
    out = capture(lm, model, seqs, n_new)
    L, B, P = lm.facts["layers"], len(seqs), max(len(s) for s in seqs)
    assert model.dtype == torch.bfloat16 and len(calls) == L * (1 + n_new)
    S = P + n_new
    ref = torch.zeros((L, B, lm.facts["query_heads"], S, S), dtype=torch.float64)
    for l in range(L):
        ref[l, :, :, :P, :P] = calls[l]
        for s in range(n_new):
            ref[l, :, :, P + s, :P + s + 1] = calls[L * (1 + s) + l][:, :, 0]
    worst_cast = 0.0
    for b, (seq, res) in enumerate(zip(seqs, out)):
        n, st = len(res.ids), P - len(seq)
        want = ref[:, b, :, st:st + n, st:st + n].numpy()                 # [L, H, n, n]
        got = res.square_attention() / ATTENTION_SCALE
        assert np.abs(got - want).max() <= 1 / 255
        cast = torch.tensor(want).to(torch.bfloat16).float()
        worst_cast = max(worst_cast, float(np.abs(
            quantize_attention(cast).numpy() / ATTENTION_SCALE - want).max()))
    assert worst_cast > 1 / 255, "casting before capture would have kept the bound: test too weak"


def test_dtype_auto_is_float32_unless_the_weights_do_not_fit():
    from generator.models import auto_dtype, pick_dtype
    assert pick_dtype("auto", "cpu") == torch.float32
    assert pick_dtype("auto", "cuda") is None                          # decided per model at load
    assert pick_dtype("bfloat16", "cuda") == torch.bfloat16
    gib = 1 << 30
    # Qwen2.5-0.5B (0.49 G parameters, 2 GB in float32) and a 7.6 G model (30 GB) on a 139 GiB
    # H200: float32; a 7.6 G model on a 24 GiB GPU: bfloat16.
    assert auto_dtype(494_032_768, 139 * gib) == torch.float32
    assert auto_dtype(7_600_000_000, 139 * gib) == torch.float32
    assert auto_dtype(7_600_000_000, 24 * gib) == torch.bfloat16


def test_compute_reports_its_host_time(computed):
    _, report, _ = computed
    assert report.host_prompts == report.computed and report.host_seconds > 0
    # Both writer threads' CPU time: within the wall time of two threads.
    assert 0 < report.host_cpu_seconds <= 2 * report.host_seconds + 0.01


BLOCKED = ("jsonschema", "altair", "mkdocs", "material", "vl_convert", "jinja2")


def test_compute_stage_runs_without_the_render_stack(demo_dirs, tmp_path):
    """The GPU machines' image has torch and transformers but none of the render stack: the
    compute stage (and the benchmark's imports) must import and run without it. A fresh Python
    with those modules blocked computes one prompt on a demo model."""
    import subprocess
    import sys
    repo = Path(__file__).resolve().parent.parent
    script = f"""
import sys
class Absent:  # every finder wrapped: the blocked packages are not found, as if not installed
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            return None
        find = getattr(self.finder, "find_spec", None)
        return find(name, path, target) if find else None
    def __getattr__(self, attr):
        return getattr(self.finder, attr)
sys.meta_path[:] = [Absent(f) for f in sys.meta_path]
sys.path.insert(0, {str(repo)!r})
from pathlib import Path
from generator.compute import Settings, run_compute
from generator.prompts import Prompt, PromptSet
import benchmarks.bench
ps = PromptSet("t", "T", "d", (Prompt("t", "one", "Hello world", "n"),), "t.yaml")
r = run_compute([{str(demo_dirs[1])!r}], [ps], Path({str(tmp_path)!r}), Settings(continuation=2),
                device="cpu", dtype="auto", log=lambda s: None)
assert r.computed == 1 and not r.failures, r.failures
print("ok", sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=repo, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok []"


@torch.no_grad()
def all_layers_at_once(lm, seqs: list[list[int]], n_new: int):
    """The capture as it was before attention was reduced layer by layer: the model's
    `output_attentions` of the prefill and of every step in one float32 [L, B, H, S, S], the head
    metrics and the grouped-query comparison of all layers in one call, quantized all at once.
    -> per sequence (uint8 [L, H, n, n], metrics [5, L, H], groups [L, 1 + 2G] or None)."""
    from generator import device_metrics
    from generator.extract import cache_argument, kept_continuations, left_pad
    model, tok = lm.model, lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids, mask = left_pad(seqs, pad, model.device)
    B, P = ids.shape
    S = P + n_new
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    kw = dict(output_attentions=True, output_hidden_states=True, use_cache=n_new > 0,
              logits_to_keep=1)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, **kw)
    L, H = len(out.attentions), out.attentions[0].shape[1]
    att = torch.zeros((L, B, H, S, S))
    att[..., :P, :P] = torch.stack(out.attentions)
    new = []
    for s in range(n_new):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        new.append(nxt)
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        pos = pos[:, -1:] + 1
        out = model(input_ids=nxt, attention_mask=mask, position_ids=pos,
                    **{cache_argument(model): getattr(out, cache_argument(model))}, **kw)
        att[..., P + s, :P + s + 1] = torch.stack(out.attentions)[..., 0, :]
    kept = kept_continuations(torch.cat(new, dim=1), tok.eos_token_id)
    starts = [P - len(s) for s in seqs]
    analysed = [len(s) + len(k) for s, k in zip(seqs, kept)]
    valid = torch.zeros((B, S), dtype=torch.bool)
    for b in range(B):
        valid[b, starts[b]:starts[b] + analysed[b]] = True
    all_ids = torch.cat([ids, torch.cat(new, dim=1)], dim=1)
    at = device_metrics.Positions(torch.tensor(starts), valid, all_ids)
    metrics = device_metrics.head_metrics(att, at).numpy()                  # [5, L, B, H]
    kv = lm.facts["kv_heads"]
    groups = device_metrics.group_metrics(att, at, kv).numpy() if kv < H else None
    q = quantize_attention(att).numpy()                                     # [L, B, H, S, S]
    return [(q[:, b, :, st:st + n, st:st + n], metrics[:, :, b],
             None if groups is None else groups[:, b])
            for b, (st, n) in enumerate(zip(starts, analysed))]


@pytest.mark.parametrize("model_fixture", MODELS)
def test_layer_by_layer_stores_what_all_layers_at_once_stored(request, model_fixture,
                                                              monkeypatch):
    """Reducing the attention one layer at a time (kept prefill, or the prefill run again, each
    layer's attention alone from the first prefill's hidden states) stores the same bytes as the
    capture that held every layer at once: the same quantized values and bit for bit the same
    metrics, so artifacts of short prompts do not change. (The first prefill in eager here, as
    the kept one is: `test_a_prefill_in_sdpa_...` below covers the SDPA one.)"""
    import generator.extract as X
    monkeypatch.setattr(X, "UNKEPT_PREFILL", "eager")
    lm = request.getfixturevalue(model_fixture)
    seqs = token_ids(lm, TEXTS.values())
    before = all_layers_at_once(lm, seqs, SETTINGS.continuation)
    kept = capture(lm, lm.model, seqs, SETTINGS.continuation)
    tok = lm.tokenizer
    replayed = run_batch(lm.model, seqs, SETTINGS.continuation, tok.eos_token_id,
                         tok.eos_token_id, SETTINGS.top_k, SETTINGS.lens_top_k, prefill_budget=0)
    for (att, metrics, groups), x, y in zip(before, kept, replayed):
        assert x.ids == y.ids and len(x.ids) == att.shape[-1]
        np.testing.assert_array_equal(x.square_attention(), att)
        np.testing.assert_array_equal(x.attention.data, y.attention.data)
        np.testing.assert_array_equal(x.metrics, metrics)
        np.testing.assert_array_equal(y.metrics, metrics)
        if groups is not None:
            np.testing.assert_array_equal(x.groups, groups)
            np.testing.assert_array_equal(y.groups, groups)
        else:
            assert x.groups is None and y.groups is None
        np.testing.assert_array_equal(x.dla, y.dla)
        np.testing.assert_array_equal(x.lens_ids, y.lens_ids)


@pytest.mark.parametrize("model_fixture", MODELS)
def test_a_prefill_in_sdpa_stores_the_eager_attention_of_its_hidden_states(request,
                                                                           model_fixture):
    """Over the budget the first prefill runs in SDPA (no weights made) and each layer's eager
    attention is made again from its hidden states: within float rounding of an eager prefill's.
    Every stored weight within one step (1/128) of the eager capture's and so within 1/255 of
    the model's own, rows summing to one, the metrics, lens and continuation the same to float
    tolerance, and the model left in eager."""
    lm = request.getfixturevalue(model_fixture)
    seqs = token_ids(lm, TEXTS.values())
    before = all_layers_at_once(lm, seqs, SETTINGS.continuation)
    tok = lm.tokenizer
    over = run_batch(lm.model, seqs, SETTINGS.continuation, tok.eos_token_id, tok.eos_token_id,
                     SETTINGS.top_k, SETTINGS.lens_top_k, prefill_budget=0)
    assert lm.model.config._attn_implementation == "eager"
    for (att, metrics, groups), y in zip(before, over):
        assert len(y.ids) == att.shape[-1]
        stored = y.square_attention().astype(np.int16)
        assert np.abs(stored - att).max() <= 1
        sums = stored.sum(-1)[..., 1:] / ATTENTION_SCALE      # each row within its rounding
        assert np.all(np.abs(sums - 1) <= np.arange(2, stored.shape[-1] + 1) / 256 + 1e-6)
        np.testing.assert_allclose(y.metrics, metrics, rtol=1e-4, atol=1e-5)
        if groups is not None:
            np.testing.assert_allclose(y.groups, groups, rtol=1e-4, atol=1e-5)


def test_a_long_batch_reduces_each_layer_inside_the_forward(gpt2_model, monkeypatch):
    """Over the prefill budget, no layer's prefill attention is kept through the passes: the
    prefill runs again and each layer is reduced as soon as it is made, before the next layer
    runs, so memory holds one layer's [B, H, S, S] at a time."""
    import generator.extract as X
    events: list[tuple[str, int]] = []
    real_layer = X.AttentionReduction.layer
    monkeypatch.setattr(X.AttentionReduction, "layer",
                        lambda self, l, *a: (events.append(("reduce", l)),
                                             real_layer(self, l, *a))[1])
    real_generate = X.generate_with_capture
    kept_prefill = []

    def generate(*a, **k):
        passes = real_generate(*a, **k)
        kept_prefill.append(passes.prefill)
        return passes

    monkeypatch.setattr(X, "generate_with_capture", generate)
    lm = gpt2_model
    seqs = token_ids(lm, [TEXTS["induction"]])
    L, H = lm.facts["layers"], lm.facts["query_heads"]
    # The MLPs run in the first passes only: the prefill runs again for its attention alone.
    mlp_class = type(X.DlaRecorder(lm.model).mlps[0])
    mlp_runs: list[int] = []
    real_mlp = mlp_class.forward
    monkeypatch.setattr(mlp_class, "forward",
                        lambda self, *a, **k: (mlp_runs.append(1), real_mlp(self, *a, **k))[1])
    handles = [m.register_forward_pre_hook(lambda m, a, l=l: events.append(("run", l)))
               for l, m in enumerate(X.AttentionTap(lm.model, None).modules)]
    try:
        tok = lm.tokenizer
        S = len(seqs[0]) + 2
        need = X.prefill_bytes(L, 1, H, S)
        run_batch(lm.model, seqs, 2, tok.eos_token_id, tok.eos_token_id, 5,
                  prefill_budget=need - 1)
    finally:
        for h in handles:
            h.remove()
    assert kept_prefill == [None]
    assert len(mlp_runs) == L * (1 + 2), "an MLP ran while the prefill ran again"  # prefill, 2 steps
    assert all("forward" not in vars(m) for m in X.DlaRecorder(lm.model).mlps)      # put back
    reduced = [i for i, e in enumerate(events) if e[0] == "reduce"]
    assert [events[i][1] for i in reduced] == list(range(L))
    for i in reduced:                 # the layer just run is the one reduced, inside the forward
        assert events[i - 1] == ("run", events[i][1]), events


@pytest.mark.parametrize("way", ["dense", "sparse"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (2, 7), (4, 40), (2, 300)])
def test_the_device_encoder_writes_the_formats_bytes(monkeypatch, shape, way):
    """extract.encode_on_device (run on the CPU here, the same torch code as on a GPU) gives the
    bytes of the reference codec.encode_heads, in one call or a layer at a time
    (`encode_chunks`), and codec.decode_head reads every head back: values at and around the
    digit escape (5 + 1), the largest (128), all-zero and all-non-zero heads, runs longer than
    a varint byte (128+), and whatever lies above the diagonal ignored. Both ways: over every
    position (short maps) and from the non-zero weights (long ones)."""
    monkeypatch.setattr(extract, "SPARSE_ENCODE_FROM", 0 if way == "sparse" else 1 << 30)
    heads, t = shape
    rng = np.random.default_rng(sum(shape))
    q = rng.integers(1, ATTENTION_SCALE + 1, size=(heads, t, t)).astype(np.uint8)
    q[:, :, ::3] = rng.integers(0, 8, size=q[:, :, ::3].shape)         # small, like attention
    density = np.array([0.3, 0.02, 0.6, 0.05][:heads])[:, None, None]  # of non-zero weights
    q = np.where(rng.random((heads, t, t)) < density, q, 0).astype(np.uint8)
    q[0, -1, 0] = ATTENTION_SCALE
    if heads > 2:
        q[1] = 0                                                         # nothing stored
        q[2] = np.maximum(q[2], 1)                                       # every weight stored
    data, index = codec.encode_heads(q)
    *parts, device_index = encode_on_device(torch.from_numpy(q))
    assert b"".join(p.tobytes() for p in parts) == data
    np.testing.assert_array_equal(device_index, index)
    assert len(data) == codec.section_bytes(index)
    lower = np.tril(q)
    for head in range(heads):
        block = codec.head_block(data, index, head)
        np.testing.assert_array_equal(codec.dense_head(block, t), lower[head])
        row_start, keys, values = codec.decode_head(block, t)
        assert row_start[-1] == values.size == np.count_nonzero(lower[head]) == index[head, 0]
        assert all(np.all(np.diff(keys[a:b]) > 0) for a, b in zip(row_start[:-1], row_start[1:]))
    # As the compute stage calls it: [L, H, n, n], a layer at a time, the same bytes.
    monkeypatch.setattr(extract, "ENCODE_CHUNK", 1)
    layers = torch.from_numpy(np.stack([q, q[::-1]]))
    chunked, chunked_index = extract.encode_chunks(layers)
    assert (chunked.tobytes(), chunked_index.reshape(-1, 3).tolist()) == \
        (codec.encode_heads(layers.numpy())[0], codec.encode_heads(layers.numpy())[1].tolist())
    with pytest.raises(ArtifactError, match="runs"):
        codec.decode_head(codec.head_block(data, index, 0) + b"\1", t)


def test_a_heads_storage_grows_with_its_non_zero_weights():
    """A weight that rounds to 0 costs next to nothing: a long head with a few non-zero weights a
    row takes a few bytes a row, not the dense triangle's third of a byte a weight; a dense one
    costs what the base-6 digits cost and a few bytes of runs."""
    t = 1024
    sparse = np.zeros((t, t), dtype=np.uint8)
    sparse[:, 0] = 100                                                  # a sink
    rows = np.arange(t)
    sparse[rows, rows] = 28                                             # the token itself
    sparse[rows[5:], rows[5:] - 5] = 3                                  # a previous token
    data, index = codec.encode_heads(sparse[None])
    assert len(data) <= 8 * t, len(data)                               # not T(T+1)/2 / 3 = 175 K
    np.testing.assert_array_equal(codec.dense_head(codec.head_block(data, index, 0), t), sparse)
    dense = np.tril(np.full((64, 64), 2, dtype=np.uint8))
    assert len(codec.encode_heads(dense[None])[0]) <= tril_size(64) // 3 + 8


def test_the_lens_section_round_trips():
    """Lens.from_arrays -> decode_lens: ids and ranks exact, None where no token came next,
    log-probabilities within float16's rounding (probabilities to 6 decimals)."""
    rng = np.random.default_rng(0)
    L, T, k = 3, 5, 2
    ids = rng.integers(0, 150_000, size=(L, T, 4))
    logprobs = -np.sort(rng.exponential(5, size=(L, T, 4)), axis=-1).astype(np.float32)
    next_lp = -rng.exponential(5, size=(L, T)).astype(np.float32)
    next_lp[:, -1] = np.nan
    rank = rng.integers(1, 150_000, size=(L, T))
    rank[:, -1] = 0
    lens = Lens.from_arrays(ids, logprobs, next_lp, rank, k)
    assert len(lens.data) == L * T * (6 * k + 6)
    blob = b"prefix" + lens.data
    back = decode_lens(lens.to_dict(offset=6), blob)
    assert len(back) == L
    for layer, block in enumerate(back):
        assert block["k"] == k and block["ids"] == ids[layer, :, :k].tolist()
        assert block["next_rank"] == rank[layer, :-1].tolist() + [None]
        assert block["next_logprob"][-1] is None
        np.testing.assert_allclose(block["next_logprob"][:-1], next_lp[layer, :-1], rtol=2 ** -11,
                                   atol=5e-5)
        np.testing.assert_allclose(np.log(block["probs"]), logprobs[layer, :, :k], rtol=2 ** -10,
                                   atol=1e-5 / np.exp(logprobs[layer, :, :k]).min())
    with pytest.raises(ArtifactError, match="lens section"):
        decode_lens(lens.to_dict(offset=7), blob)


def test_attribution_is_ranked_like_the_stored_values():
    """attribution.rank_components (on the device) keeps the k largest |values| at 3 decimals,
    ties by component index, and a rest that makes the stored sum the total to 3 decimals (it
    takes in the rounding of the listed values); a row with no target is left out (None)."""
    dla = np.array([[[0.5, -2.0, 2.0004, 0.0001, 1.0],              # 2.000 ties -2.000: index 1
                     [np.nan] * 5]], dtype=np.float32)             # no next token
    index, value, rest = rank_components(torch.from_numpy(dla), 3)
    assert index[0, 0].tolist() == [1, 2, 4]
    np.testing.assert_allclose(value[0, 0], [-2.0, 2.0004, 1.0], rtol=1e-6)
    np.testing.assert_allclose(rest[0, 0], 0.5005, rtol=1e-5)      # 0.5 + 0.0001 + 0.0004
    assert np.isnan(value[0, 1]).all() and np.isnan(rest[0, 1])
    stored = Attribution.from_ranked(5, index, value, rest, np.zeros((1, 2)))
    assert stored.index == [[[1, 2, 4], None]] and stored.value == [[[-2.0, 2.0, 1.0], None]]
    total = float(dla[0, 0].astype(np.float64).sum())
    assert abs(sum(stored.value[0][0]) + stored.rest[0][0] - total) <= 0.0005 + 1e-6
    assert stored.rest[0][1] is None
