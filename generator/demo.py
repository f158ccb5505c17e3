"""The offline demo's tiny random-weight models, written as ordinary checkpoint directories.

No weights can be downloaded here, so the demo builds two tiny models from config, one of the GPT-2
architecture and one of the Qwen2 architecture (with grouped-query attention: more query heads than
key/value heads), seeds their random weights, and saves each with `save_pretrained` together with
the genuine GPT-2 or Qwen2.5 tokenizer shipped in `generator/assets/tokenizers/`. They are then
loaded through the same `from_pretrained` path as hub models. A `model_atlas_demo.json` marker in
each directory makes every page built from them say that the weights are random.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

ASSETS = Path(__file__).parent / "assets" / "tokenizers"
DEMO_VERSION = 1  # bump to rebuild the demo checkpoints

# Each entry builds its own config object: `from_config(cfg, attn_implementation=...)` writes into
# `cfg`, so sharing one between models would leak settings from one to the other.
DEMO_SPECS: dict[str, dict[str, Any]] = {
    "tiny-random-gpt2": {
        "model_type": "gpt2", "tokenizer": "gpt2", "mirrors": "gpt2",
        "config": {"n_layer": 4, "n_head": 4, "n_embd": 64, "n_positions": 512, "vocab_size": 50257,
                   "bos_token_id": 50256, "eos_token_id": 50256, "initializer_range": 0.2},
    },
    "tiny-random-qwen2": {
        "model_type": "qwen2", "tokenizer": "qwen2.5", "mirrors": "Qwen/Qwen2.5-0.5B",
        "config": {"num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "hidden_size": 64, "intermediate_size": 128, "vocab_size": 151936,
                   "max_position_embeddings": 512, "rope_theta": 1000000.0,
                   "tie_word_embeddings": True, "bos_token_id": 151643, "eos_token_id": 151643,
                   "initializer_range": 0.2},
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


def build_demo_model(name: str, dest: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    spec = DEMO_SPECS[name]
    config = AutoConfig.for_model(spec["model_type"], **spec["config"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    tok = load_real_tokenizer(spec["tokenizer"])
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=dest.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        shutil.copy(ASSETS / "PROVENANCE.md", tmp / "TOKENIZER_PROVENANCE.md")
        (tmp / "model_atlas_demo.json").write_text(json.dumps({
            "demo_version": DEMO_VERSION, "random_weights": True, "mirrors": spec["mirrors"],
            "description": f"Tiny {spec['model_type']} model with random weights (seed 0), built "
                           f"from config for the offline demo; real {spec['tokenizer']} tokenizer. "
                           f"Its attention and predictions show no learned behaviour.",
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
            log(f"building demo checkpoint {name} (random weights) in {dest}")
            build_demo_model(name, dest)
        out.append(dest)
    return out
