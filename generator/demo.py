"""The offline demo's tiny models with constructed weights, written as ordinary checkpoint directories.

No weights can be downloaded here, so the demo builds two tiny models, one of the GPT-2 architecture
(learned positions, LayerNorm) and one of the Qwen2 architecture (rotary positions, RMSNorm,
grouped-query attention with q/k/v biases), and writes their weights in code, seeded, in a second
or two: named heads implement known mechanisms (Tracr-style, Lindner et al. 2023), every other head
and every MLP stays random for contrast. Each is saved with `save_pretrained` together with the
genuine GPT-2 or Qwen2.5 tokenizer shipped in `generator/assets/tokenizers/` and loaded through the
same `from_pretrained` path as hub models. A `model_atlas_demo.json` marker in each directory makes
every page built from them say that the weights are constructed, not learned; the planted heads are
also stored in the checkpoint's config (`model_atlas_planted_heads`), from where
`models.architecture_facts` carries them into every artifact.

How the circuits work. The residual stream (d = 128) is cut into four 32-dimensional subspaces:

    C [0, 32)    output code: what the unembedding reads
    A [32, 64)   input code: the current token
    B [64, 96)   previous-token code, written by the previous-token head
    R [96, 128)  the rest: GPT-2's learned positions and first-token flag; writes of random heads/MLPs

Every token v gets a random unit code c_v (32 numbers, mean 0). Its embedding row is c_v in C and
again in A. The embeddings are tied, so the unembedding row of v is that same vector; the final
norm's weight is +s(1 + e_d) on C and -(1 - LEAK) s(1 + e_d) on A, so a token's own embedding adds
only LEAK s' c_v . c_t to the logits (the C and A halves nearly cancel: the logit lens of the early
layers predicts the current token, as in trained models, and no two logits tie) and the rest is
s' c_v . (what heads wrote into C). Codes of 32 numbers for 50k/152k tokens: the best wrong token's cosine is about 0.75,
so a clean copy of c_t still makes t the top prediction by a wide margin.

- previous-token head (layer 0): a query/key pair that depends on position only, largest at offset
  1 (GPT-2: a rotation of the sinusoidal position code; Qwen2: constant q/k biases that RoPE turns
  into sum_k cos((i - j - 1) theta_k)); its value is A (the attended token's code), written to B.
- first-token (sink) head: GPT-2: the key reads a flag only position 0 carries; Qwen2: constant
  q/k biases at a quarter turn on a slow rotary frequency, so the score sin((i - j) theta) grows with
  distance and peaks at j = 0.
- induction head (layer 2): query = A (current token), key = B (the token before j), so it attends
  to the j whose previous token is the current one; its value is A at j, written to C: it copies the
  token that followed the earlier occurrence into the output. In Qwen2 the match uses only the slow
  rotary frequencies, where 100 positions turn a vector by under 0.1 rad.
- in Qwen2, layer 0's two query heads of key/value group 1 are both previous-token heads (they share
  keys and values and differ only in the scale of their queries, the second a little softer), so
  the grouped-query view shows a pair that behaves alike.
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

ASSETS = Path(__file__).parent / "assets" / "tokenizers"
DEMO_VERSION = 5  # bump to rebuild the demo checkpoints

D, CODE = 128, 32                 # residual width; width of each subspace
C, A, B, R = (slice(i * CODE, (i + 1) * CODE) for i in range(4))
SEED = 0
LEAK = 0.15                       # share of the direct path (embedding -> logits) left in

# What each planted head does, in the words the model page shows, keyed by the head metric of
# `metrics.HEAD_METRICS` that must rank it first.
MECHANISMS = {
    "prev_token": "previous-token head: attends from each token to the one just before it and "
                  "writes the code of that token into the residual stream for the induction head",
    "first_token": "first-token (sink) head: attends from every position to the first token",
    "induction": "induction head: attends to the token that followed the previous occurrence of "
                 "the current token (its keys come from the output of the previous-token head) and copies it "
                 "to the output",
}

# Each entry builds its own config object: `from_config(cfg, attn_implementation=...)` writes into
# `cfg`, so sharing one between models would leak settings from one to the other.
DEMO_SPECS: dict[str, dict[str, Any]] = {
    "tiny-random-gpt2": {
        "model_type": "gpt2", "tokenizer": "gpt2", "mirrors": "gpt2",
        "config": {"n_layer": 4, "n_head": 4, "n_embd": D, "n_inner": 256, "n_positions": 4096,
                   "vocab_size": 50257, "bos_token_id": 50256, "eos_token_id": 50256,
                   "tie_word_embeddings": True},
        "planted": [(0, 1, "prev_token"), (1, 3, "first_token"), (2, 2, "induction")],
    },
    "tiny-random-qwen2": {
        "model_type": "qwen2", "tokenizer": "qwen2.5", "mirrors": "Qwen/Qwen2.5-0.5B",
        # head_dim 64 (as in Qwen2.5-0.5B): 32 rotary frequencies, the slow half for content.
        "config": {"num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "hidden_size": D, "head_dim": 64, "intermediate_size": 64,
                   "vocab_size": 151936, "max_position_embeddings": 4096, "rope_theta": 1000000.0,
                   "tie_word_embeddings": True, "bos_token_id": 151643, "eos_token_id": 151643},
        # Layer 0's first key/value group stays random: head L0.H0 is the one a page opens first.
        "planted": [(0, 2, "prev_token"), (0, 3, "prev_token"), (1, 2, "first_token"),
                    (2, 1, "induction")],
    },
}


def _unpack(name: str, dest: Path) -> None:
    for gz in sorted((ASSETS / name).glob("*.gz")):
        (dest / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))


def load_real_tokenizer(name: str) -> Any:
    """The genuine GPT-2 ('gpt2') or Qwen2.5 ('qwen2.5') tokenizer from the package's assets."""
    from transformers import GPT2TokenizerFast, PreTrainedTokenizerFast
    with tempfile.TemporaryDirectory() as tmp:
        _unpack(name, Path(tmp))
        if name == "gpt2":
            # transformers 5: GPT2TokenizerFast(vocab_file=...) silently builds an empty tokenizer.
            tok = GPT2TokenizerFast.from_pretrained(tmp, trust_remote_code=False)
        else:
            tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(tmp) / "tokenizer.json"),
                                          eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    if len(tok) < 50000:
        raise RuntimeError(f"tokenizer {name} loaded with only {len(tok)} entries")
    return tok


def planted_heads(name: str) -> list[dict[str, Any]]:
    """The planted heads of demo model `name`: [{layer, head, name, metric, mechanism}]."""
    return [{"layer": l, "head": h, "name": f"L{l}.H{h}", "metric": m, "mechanism": MECHANISMS[m]}
            for l, h, m in DEMO_SPECS[name]["planted"]]


# --- weight construction ---------------------------------------------------------------------------

class _Rng:
    """Seeded normal draws (one generator per model, so the two models do not depend on each other)."""

    def __init__(self, seed: int):
        import torch
        self.g = torch.Generator().manual_seed(seed)

    def normal(self, *shape: int, std: float = 1.0):
        import torch
        return torch.randn(*shape, generator=self.g) * std


def token_codes(vocab: int, rng: _Rng):
    """[V, CODE] random unit vectors with mean 0 (so LayerNorm's centring leaves them alone)."""
    c = rng.normal(vocab, CODE)
    c -= c.mean(1, keepdim=True)
    return c / c.norm(dim=1, keepdim=True)


def _final_norm_weight(rng: _Rng, scale: float):
    """+scale(1 + e) on C, -(1 - LEAK) scale(1 + e) on A (the same e), random elsewhere: see the
    module docstring."""
    import torch
    e = 1 + rng.normal(CODE, std=0.15).clamp(-0.4, 0.4)
    w = 1 + rng.normal(D, std=0.3)
    w[C], w[A] = scale * e, -(1 - LEAK) * scale * e
    return w.to(torch.float32)


def _random_junk_writer(rng: _Rng, rows: int, std: float):
    """[rows, D] output weights of a random head or MLP: random, but only into subspace R."""
    import torch
    w = torch.zeros(rows, D)
    w[:, R] = rng.normal(rows, CODE, std=std)
    return w


def _build_gpt2(model: Any, rng: _Rng) -> None:
    import torch
    cfg = model.config
    H, hd, V, P = cfg.n_head, D // cfg.n_head, cfg.vocab_size, cfg.n_positions
    tr = model.transformer
    codes = token_codes(V, rng)
    wte = torch.zeros(V, D)
    wte[:, C], wte[:, A] = codes, codes
    # Positions: 12 sinusoid pairs (unit norm in all) in R[0:24], the first-token flag at R[24],
    # R[25:32] is where random heads and MLPs write.
    n_freq, flag, junk = 12, R.start + 24, slice(R.start + 25, D)
    omega = torch.tensor([0.9 * (0.012 / 0.9) ** (k / (n_freq - 1)) for k in range(n_freq)])
    pos = torch.arange(P, dtype=torch.float32)[:, None] * omega[None, :]          # [P, F]
    wpe = torch.zeros(P, D)
    wpe[:, R.start:R.start + 2 * n_freq:2] = pos.cos() / math.sqrt(n_freq)
    wpe[:, R.start + 1:R.start + 2 * n_freq:2] = pos.sin() / math.sqrt(n_freq)
    # The flag lengthens x_0, which LayerNorm would pay for by shrinking position 0's code (and the
    # previous-token head at position 1 would then prefer itself): scale that code up to match.
    # |x_0|^2 = 2 + s^2 + 1 (two token codes, position code, flag); s / |x_0| = 1 / sqrt(3).
    wpe[0, flag] = 1.0
    wpe[0, R.start:R.start + 2 * n_freq] *= math.sqrt(1.5)
    with torch.no_grad():
        tr.wte.weight.copy_(wte)
        tr.wpe.weight.copy_(wpe)
    # LayerNorm of a residual of norm ~2 scales it by sqrt(128)/2 ~ 5.7: the factors below are set
    # for that, and measured in tests/test_demo.py, not assumed.
    norm_gain = math.sqrt(D) / 1.8
    planted = {(l, h): m for l, h, m in DEMO_SPECS["tiny-random-gpt2"]["planted"]}
    for l, block in enumerate(tr.h):
        Wqkv = torch.zeros(D, 3 * D)          # Conv1D: x [.., D] @ W [D, 3D] -> [q | k | v]
        bqkv = torch.zeros(3 * D)
        Wo = torch.zeros(D, D)                # concatenated heads [.., D] @ Wo -> residual
        for h in range(H):
            q, k, v = (slice(part * D + h * hd, part * D + (h + 1) * hd) for part in range(3))
            o = slice(h * hd, (h + 1) * hd)
            kind = planted.get((l, h))
            if kind == "prev_token":
                # q_i = the position code rotated back by one step: q_i . k_j = sum cos(w (i-1-j)).
                beta = 18.0 / norm_gain ** 2 * math.sqrt(hd) * n_freq
                for f in range(n_freq):
                    x, y = R.start + 2 * f, R.start + 2 * f + 1
                    c, s = math.cos(omega[f]), math.sin(omega[f])
                    # rotate (cos wi, sin wi) by -w: (c cos + s sin, -s cos + c sin)
                    Wqkv[x, q.start + 2 * f] = c * math.sqrt(beta)
                    Wqkv[y, q.start + 2 * f] = s * math.sqrt(beta)
                    Wqkv[x, q.start + 2 * f + 1] = -s * math.sqrt(beta)
                    Wqkv[y, q.start + 2 * f + 1] = c * math.sqrt(beta)
                    Wqkv[x, k.start + 2 * f] = math.sqrt(beta)
                    Wqkv[y, k.start + 2 * f + 1] = math.sqrt(beta)
                Wqkv[A, v] = torch.eye(CODE) / norm_gain
                Wo[o, B] = torch.eye(CODE)
            elif kind == "first_token":
                bqkv[q.start] = 1.0
                Wqkv[flag, k.start] = 14.0 * math.sqrt(hd) / norm_gain
                Wqkv[:, v] = rng.normal(D, hd, std=0.1)
                Wo[o, :] = _random_junk_writer(rng, hd, 0.02)
            elif kind == "induction":
                # Query: the current token's code; key: the previous token's code (from B); 31
                # dimensions of the 32-dim code (a random rotation), the last one keeps the
                # first position out: it carries the first token's own code in B.
                rot = torch.linalg.qr(rng.normal(CODE, CODE))[0][:, :hd - 1]     # [CODE, hd-1]
                beta = 40.0 / norm_gain ** 2 * math.sqrt(hd)
                Wqkv[A, q.start:q.stop - 1] = rot * math.sqrt(beta)
                Wqkv[B, k.start:k.stop - 1] = rot * math.sqrt(beta)
                bqkv[q.stop - 1] = 1.0
                Wqkv[flag, k.stop - 1] = -60.0 * math.sqrt(hd)
                Wqkv[A, v] = torch.eye(CODE) / norm_gain
                Wo[o, C] = 3.0 * torch.eye(CODE)
            else:
                Wqkv[:, q] = rng.normal(D, hd, std=0.15)
                Wqkv[:, k] = rng.normal(D, hd, std=0.15)
                Wqkv[:, v] = rng.normal(D, hd, std=0.1)
                Wo[o, :] = _random_junk_writer(rng, hd, 0.02)
        Wo[:, R.start:junk.start] = 0.0       # keep positions and the flag clean
        with torch.no_grad():
            block.attn.c_attn.weight.copy_(Wqkv)
            block.attn.c_attn.bias.copy_(bqkv)
            block.attn.c_proj.weight.copy_(Wo)
            block.attn.c_proj.bias.zero_()
            inner = block.mlp.c_fc.weight.shape[1]
            block.mlp.c_fc.weight.copy_(rng.normal(D, inner, std=0.1))
            block.mlp.c_fc.bias.copy_(rng.normal(inner, std=0.1))
            w = torch.zeros(inner, D)
            w[:, junk] = rng.normal(inner, junk.stop - junk.start, std=0.01)
            block.mlp.c_proj.weight.copy_(w)
            block.mlp.c_proj.bias.zero_()
            for ln in (block.ln_1, block.ln_2):
                ln.weight.fill_(1.0)
                ln.bias.zero_()
        with torch.no_grad():
            tr.ln_f.weight.copy_(_final_norm_weight(rng, 2.2))
            b = rng.normal(D, std=0.1)
            b[A] = -b[C]                       # any bias on C is cancelled on A
            tr.ln_f.bias.copy_(b)


def _build_qwen2(model: Any, rng: _Rng) -> None:
    import torch
    cfg = model.config
    H, KV, hd, V = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size
    theta = float(cfg.rope_parameters["rope_theta"])
    half = hd // 2
    freqs = [theta ** (-2 * k / hd) for k in range(half)]   # rotary pair k = dims (k, k + half)
    base = model.model
    codes = token_codes(V, rng)
    emb = torch.zeros(V, D)
    emb[:, C], emb[:, A] = codes, codes
    with torch.no_grad():
        base.embed_tokens.weight.copy_(emb)
    norm_gain = math.sqrt(D) / 1.8          # RMSNorm of a residual of norm ~1.8
    scaling = math.sqrt(hd)                 # scores are q.k / sqrt(head_dim)
    planted = {(l, h): m for l, h, m in DEMO_SPECS["tiny-random-qwen2"]["planted"]}
    group = H // KV
    fast, sink_pair = range(0, 6), 10                     # 1 .. 0.115 rad/step; 0.0133 rad/step
    slow = list(range(half // 2, half))                   # <= 1e-3 rad/step: content pairs

    def pair_dims(ks):
        return [k for k in ks] + [k + half for k in ks]

    for l, layer in enumerate(base.layers):
        at = layer.self_attn
        Wq, bq = torch.zeros(H * hd, D), torch.zeros(H * hd)
        Wk, bk = torch.zeros(KV * hd, D), torch.zeros(KV * hd)
        Wv, bv = torch.zeros(KV * hd, D), torch.zeros(KV * hd)
        Wo = torch.zeros(D, H * hd)
        kinds = {h: planted.get((l, h)) for h in range(H)}
        for g in range(KV):
            ks, vs = slice(g * hd, (g + 1) * hd), slice(g * hd, (g + 1) * hd)
            members = range(g * group, (g + 1) * group)
            kind = next((kinds[h] for h in members if kinds[h]), None)
            if kind == "prev_token":
                beta = 15.0 * scaling
                for k in fast:       # key (1, 0) on each fast pair; queries rotated by -theta_k
                    bk[ks.start + k] = math.sqrt(beta)
                Wv[vs.start:vs.start + CODE, A] = torch.eye(CODE) / norm_gain
            elif kind == "first_token":
                bk[ks.start + sink_pair] = 1.0
                Wk[ks.start:ks.stop, :] = rng.normal(hd, D, std=0.15)
                Wk[ks.start + sink_pair, :] = 0.0
                Wk[ks.start + sink_pair + half, :] = 0.0
                Wv[vs, :] = rng.normal(hd, D, std=0.03)
            elif kind == "induction":
                beta = 40.0 / norm_gain ** 2 * scaling
                dims = pair_dims(slow)                        # CODE dims, the slow pairs
                Wk[[ks.start + d for d in dims], B] = torch.eye(CODE) * math.sqrt(beta)
                Wv[vs.start:vs.start + CODE, A] = torch.eye(CODE) / norm_gain
            else:
                Wk[ks, :] = rng.normal(hd, D, std=0.15)
                Wv[vs, :] = rng.normal(hd, D, std=0.03)
            for h in members:
                qs, os_ = slice(h * hd, (h + 1) * hd), slice(h * hd, (h + 1) * hd)
                mine = kinds[h]
                if mine == "prev_token":
                    # The second head of the pair is softer (q scaled by sqrt(0.1): about 0.96 on
                    # the previous token):
                    # alike, not identical.
                    beta = 15.0 * scaling * (1.0 if h == members[0] else 0.1)
                    for k in fast:
                        bq[qs.start + k] = math.cos(-freqs[k]) * math.sqrt(beta)
                        bq[qs.start + k + half] = math.sin(-freqs[k]) * math.sqrt(beta)
                    Wo[B, os_.start:os_.start + CODE] = 0.5 * torch.eye(CODE)
                elif mine == "first_token":
                    # quarter turn: score = sin((i - j) theta), largest at the farthest key j = 0
                    # 10 nats per step of distance near the diagonal
                    bq[qs.start + sink_pair + half] = -10.0 * scaling / freqs[sink_pair]
                    Wo[:, os_] = _random_junk_writer(rng, hd, 0.02).T
                elif mine == "induction":
                    dims = pair_dims(slow)
                    Wq[[qs.start + d for d in dims], A] = torch.eye(CODE) * math.sqrt(beta)
                    Wo[C, os_.start:os_.start + CODE] = 3.0 * torch.eye(CODE)
                else:
                    Wq[qs, :] = rng.normal(hd, D, std=0.15)
                    if kind in ("first_token",):
                        Wq[qs.start + sink_pair, :] = 0.0
                        Wq[qs.start + sink_pair + half, :] = 0.0
                    Wo[:, os_] = _random_junk_writer(rng, hd, 0.02).T
        with torch.no_grad():
            at.q_proj.weight.copy_(Wq)
            at.q_proj.bias.copy_(bq)
            at.k_proj.weight.copy_(Wk)
            at.k_proj.bias.copy_(bk)
            at.v_proj.weight.copy_(Wv)
            at.v_proj.bias.copy_(bv)
            at.o_proj.weight.copy_(Wo)
            inner = layer.mlp.gate_proj.weight.shape[0]
            layer.mlp.gate_proj.weight.copy_(rng.normal(inner, D, std=0.1))
            layer.mlp.up_proj.weight.copy_(rng.normal(inner, D, std=0.1))
            layer.mlp.down_proj.weight.copy_(_random_junk_writer(rng, inner, 0.01).T)
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
    with torch.no_grad():
        base.norm.weight.copy_(_final_norm_weight(rng, 2.2))


def construct_model(name: str) -> Any:
    """Demo model `name` with its constructed weights, in memory (float32, eval mode)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    spec = DEMO_SPECS[name]
    config = AutoConfig.for_model(spec["model_type"], **spec["config"],
                                  model_atlas_planted_heads=planted_heads(name))
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config)
    rng = _Rng(SEED)
    (_build_gpt2 if spec["model_type"] == "gpt2" else _build_qwen2)(model, rng)
    model.tie_weights()
    return model.eval()


def build_demo_model(name: str, dest: Path) -> Path:
    spec = DEMO_SPECS[name]
    model = construct_model(name)
    tok = load_real_tokenizer(spec["tokenizer"])
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=dest.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        shutil.copy(ASSETS / "PROVENANCE.md", tmp / "TOKENIZER_PROVENANCE.md")
        (tmp / "model_atlas_demo.json").write_text(json.dumps({
            "demo_version": DEMO_VERSION, "random_weights": True, "constructed_weights": True,
            "mirrors": spec["mirrors"], "planted_heads": planted_heads(name),
            "description": f"Tiny {spec['model_type']} model whose weights are constructed in code "
                           f"(seed {SEED}) for the offline demo, not learned: the planted heads "
                           f"implement known mechanisms, every other head and every MLP is "
                           f"random; real {spec['tokenizer']} tokenizer.",
        }, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def ensure_demo_models(root: Path, log: Callable[[str], None] = lambda s: None) -> list[Path]:
    """Build (once) and return the demo checkpoint directories under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for name in DEMO_SPECS:
        dest = root / name
        marker = dest / "model_atlas_demo.json"
        current = marker.is_file() and json.loads(marker.read_text()).get("demo_version") == DEMO_VERSION
        if not current:
            log(f"building demo checkpoint {name} (constructed weights) in {dest}")
            build_demo_model(name, dest)
        out.append(dest)
    return out
