#!/usr/bin/env python
"""Write full-size GPT-2 and Qwen2.5-0.5B checkpoints with RANDOM weights, for page-weight and
timing measurements of real-size sites (no download: built from benchmarks/reference/ configs).

    python benchmarks/reference_checkpoints.py OUT_DIR

Each directory is an ordinary checkpoint (save_pretrained + the real tokenizer) carrying the
`model_atlas_demo.json` marker, so every page built from it says the weights are random. Build a
site from them with `model-atlas build --model OUT_DIR/gpt2-random --model
OUT_DIR/qwen2.5-0.5b-random`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

MODELS = {"gpt2-random": ("gpt2", "gpt2"), "qwen2.5-0.5b-random": ("qwen2.5-0.5b", "qwen2.5")}


def main(out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from generator.demo import load_real_tokenizer
    for name, (config_dir, tokenizer) in MODELS.items():
        dest = out / name
        if (dest / "model_atlas_demo.json").is_file():
            print(f"{dest}: exists", file=sys.stderr)
            continue
        config = AutoConfig.from_pretrained(HERE / "reference" / config_dir)  # fresh per model
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(dest)
        load_real_tokenizer(tokenizer).save_pretrained(dest)
        (dest / "model_atlas_demo.json").write_text(json.dumps({
            "random_weights": True, "mirrors": config_dir,
            "description": f"Full-size {config_dir} architecture with random weights (seed 0), "
                           f"for measurements only: no learned behaviour."}, indent=2) + "\n")
        print(f"{dest}: written", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "build/reference-models"))
