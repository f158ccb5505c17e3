"""Finding, loading and describing causal language models (imports torch).

Every model, the offline demo's tiny ones included, is loaded by `load_model` through
`AutoModelForCausalLM.from_pretrained` with eager attention: with SDPA transformers returns no
attention maps at all. `trust_remote_code` is never enabled. Where a hub model's weights are neither
cached nor downloadable, loading fails at once with a message naming the offline demo; it never
falls back to another model.

Architecture facts are read from the loaded config and weights (`architecture_facts`), never typed
by hand.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import torch

from .errors import ModelLoadError, OptionError
from .store import is_hub_id, model_slug, sha256_file

DEMO_MARKER = "model_atlas_demo.json"   # beside a demo checkpoint (weights constructed, not learned)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ModelRef:
    """A model as the user named it, resolved to where its files are."""
    model_id: str          # what the user typed (hub id or path); shown on pages
    slug: str              # file-system and URL name
    local_dir: Path | None # set for local checkpoints
    revision: str          # hub commit, or "sha256:<weights hash>" for local checkpoints
    random_weights: bool


def pick_device(requested: str = "auto") -> str:
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind = requested.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise OptionError(f"--device {requested!r} is not a device. Valid: auto, cpu, cuda, "
                          f"cuda:N, mps.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"--device {requested}: no CUDA GPU is visible. Use --device cpu or auto.")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise OptionError("--device mps: Apple's MPS backend is not available. Use --device cpu.")
    return requested


def pick_dtype(name: str, device: str) -> torch.dtype | None:
    """The dtype to load weights in; None = decide per model at load time (`auto_dtype`).

    `auto` is float32 wherever the weights fit comfortably, so that the stored attention is
    within 1/255 of what the weights give in float32: always on the CPU and MPS, and on a GPU
    unless the model is too large for its memory (decided per model by `auto_dtype`)."""
    if name == "auto":
        return None if device.startswith("cuda") else torch.float32
    if name not in DTYPES:
        raise OptionError(f"--dtype {name!r} is not supported. Valid: auto, {', '.join(DTYPES)}.")
    return DTYPES[name]


# float32 weights may take up to this share of a GPU's free memory under `--dtype auto`; the rest
# is for the batch's captured attention (2 GiB, `compute.default_budget`), activations and the cache.
AUTO_FLOAT32_SHARE = 0.5


def auto_dtype(parameters: int, free_bytes: int) -> torch.dtype:
    """`--dtype auto` on a GPU: float32 when the float32 weights take at most AUTO_FLOAT32_SHARE
    of the free memory, else bfloat16 (the reduced precision the model then needs)."""
    return torch.float32 if 4 * parameters <= AUTO_FLOAT32_SHARE * free_bytes else torch.bfloat16


def _auto_dtype_for(config: Any, device: str) -> torch.dtype:
    """`auto_dtype` for the model of `config` on `device`: parameters counted on the meta device
    (no memory), free memory as the GPU reports it."""
    from transformers import AutoModelForCausalLM
    import copy
    with torch.device("meta"):
        shell = AutoModelForCausalLM.from_config(copy.deepcopy(config))
    parameters = sum(p.numel() for p in {id(p): p for p in shell.parameters()}.values())
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return auto_dtype(parameters, free)


def _weights_fingerprint(directory: Path) -> str:
    files = sorted(p for p in directory.iterdir()
                   if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        raise ModelLoadError(f"{directory}: no weights (*.safetensors or *.bin) in this directory. "
                             f"Point --model at a checkpoint saved with save_pretrained().")
    import hashlib
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + sha256_file(f).encode())
    return "sha256:" + h.hexdigest()[:16]


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached_revision(model_id: str, revision: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache
    found = try_to_load_from_cache(model_id, "config.json", revision=revision)
    if isinstance(found, str):
        return Path(found).parent.name  # .../snapshots/<commit>/config.json
    return None


def resolve_model(model_id: str, revision: str = "main") -> ModelRef:
    """Check `model_id` and find its files, fast: a missing model fails here, not after retries."""
    path = Path(model_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"--model {model_id}: this is a file; a local model is a directory "
                                 f"with config.json and weights (save_pretrained output).")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"--model {model_id}: no config.json in this directory. Point "
                                 f"--model at a checkpoint saved with save_pretrained().")
        marker = path / DEMO_MARKER
        # Named by its directory, not its absolute path, so artifacts do not depend on where the
        # checkout lives; the weights hash is the revision.
        return ModelRef(path.resolve().name, model_slug(str(path), local_dir=True), path.resolve(),
                        _weights_fingerprint(path), random_weights=marker.is_file())
    if not is_hub_id(model_id):
        raise ModelLoadError(f"--model {model_id!r}: neither an existing directory nor a valid "
                             f"Hugging Face model id (like 'gpt2' or 'Qwen/Qwen2.5-0.5B').")
    commit = _cached_revision(model_id, revision)
    if commit is None and not _hub_reachable():
        raise ModelLoadError(
            f"Cannot get the weights of {model_id!r}: the Hugging Face hub is unreachable from this "
            f"machine and the model is not in the local cache. Connect to the network (or set "
            f"HF_HOME to a cache that holds it), or build the offline demo (tiny models with "
            f"constructed weights): `model-atlas build --demo`.")
    if commit is None:
        try:
            from huggingface_hub import HfApi
            commit = HfApi().model_info(model_id, revision=revision).sha or revision
        except Exception as e:  # noqa: BLE001 - hub errors come in many classes
            raise ModelLoadError(f"--model {model_id!r}: not found on the Hugging Face hub or not "
                                 f"accessible ({type(e).__name__}: {e}).") from None
    return ModelRef(model_id, model_slug(model_id, local_dir=False), None, commit,
                    random_weights=False)


def _from_pretrained_args(ref: ModelRef) -> tuple[str, dict[str, Any]]:
    """Where `from_pretrained` reads a model (its directory or hub id) and the arguments it gets:
    never remote code; a hub model at its resolved revision, from the cache when offline."""
    source = str(ref.local_dir) if ref.local_dir else ref.model_id
    kwargs: dict[str, Any] = {"trust_remote_code": False}
    if ref.local_dir is None:
        kwargs["revision"] = ref.revision
        if not _hub_reachable():
            kwargs["local_files_only"] = True
    return source, kwargs


def load_tokenizer(ref: ModelRef) -> Any:
    """Only the tokenizer of a model, as `load_model` loads it (no weights): for a build whose
    artifacts are all current but whose tokenizer was not saved yet."""
    from transformers import AutoTokenizer
    source, kwargs = _from_pretrained_args(ref)
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"--model {ref.model_id}: cannot load its tokenizer: {e}") from None


@dataclass
class LoadedModel:
    ref: ModelRef
    model: Any
    tokenizer: Any
    device: str
    dtype: str
    facts: dict[str, Any]


def load_model(ref: ModelRef, device: str, dtype: torch.dtype | None,
               log: Callable[[str], None] = lambda s: None, device_map: str | None = None) -> LoadedModel:
    """Load weights and tokenizer with eager attention, ready for capture. dtype None: `--dtype
    auto` on a GPU, decided here from the model's size (`auto_dtype`)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    source, kwargs = _from_pretrained_args(ref)
    t0 = time.perf_counter()
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
        if dtype is None:
            dtype = _auto_dtype_for(config, device)
        log(f"loading {ref.model_id} ({'constructed demo weights, ' if ref.random_weights else ''}"
            f"{ref.revision[:19]}) on {device} as {str(dtype).replace('torch.', '')}")
        if getattr(config, "is_decoder", None) is False:  # BERT-style: the flag exists and is off
            raise ModelLoadError(
                f"--model {ref.model_id}: not a causal language model: its config "
                f"({config.model_type}) is an encoder (is_decoder is false), which attends in both "
                f"directions. Use a decoder-only causal LM, like gpt2 or Qwen/Qwen2.5-0.5B.")
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        if not tokenizer("Hello world", add_special_tokens=False)["input_ids"]:
            # transformers builds an empty tokenizer, without an error, when its files are missing.
            raise ModelLoadError(
                f"--model {ref.model_id}: its tokenizer is empty: the tokenizer files (tokenizer.json, "
                f"or vocab.json and merges.txt, and tokenizer_config.json) are missing from "
                f"{source}. Save them there with tokenizer.save_pretrained().")
        model = AutoModelForCausalLM.from_pretrained(
            source, config=config, attn_implementation="eager", dtype=dtype,
            device_map=device_map, **kwargs)
    except ValueError as e:
        if "Unrecognized configuration class" in str(e) or "AutoModelForCausalLM" in str(e):
            raise ModelLoadError(f"--model {ref.model_id}: not a causal language model "
                                 f"(AutoModelForCausalLM cannot load it): "
                                 f"{str(e).splitlines()[0]}") from None
        raise ModelLoadError(f"--model {ref.model_id}: cannot load: {e}") from None
    except OSError as e:
        raise ModelLoadError(f"--model {ref.model_id}: cannot load its files: {e}") from None
    if getattr(model.config, "_attn_implementation", None) != "eager":
        raise ModelLoadError(f"--model {ref.model_id}: attention cannot be captured: transformers "
                             f"loaded it with {model.config._attn_implementation!r}, not 'eager'.")
    if device_map is None:
        model.to(device)
    model.eval()
    log(f"loaded {ref.model_id} in {time.perf_counter() - t0:.1f}s")
    return LoadedModel(ref, model, tokenizer, device, str(dtype).replace("torch.", ""),
                       architecture_facts(model, tokenizer))


def final_norm(model: Any) -> torch.nn.Module:
    base = model.base_model
    for name in ("norm", "ln_f", "final_layer_norm", "final_layernorm"):
        module = getattr(base, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise ModelLoadError(f"{type(model).__name__}: cannot find the final norm (looked for norm, "
                         f"ln_f, final_layer_norm); the logit lens needs it.")


def _first(config: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def _storage(p: torch.Tensor) -> int:
    """Identity of a tensor's storage; meta tensors (device_map offloading, empty models) all
    report data_ptr() 0, so they are told apart by object."""
    return id(p) if p.device.type == "meta" else p.data_ptr()


def _parameter_counts(model: Any) -> tuple[int, int, bool]:
    """(parameters, parameters without token and position embeddings, tied embeddings), each
    shared tensor counted once."""
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    tied = out is not None and (out.weight is emb or _storage(out.weight) == _storage(emb))
    unique: dict[int, torch.Tensor] = {}
    for p in model.parameters():
        unique.setdefault(_storage(p), p)
    total = sum(p.numel() for p in unique.values())
    embedding = emb.numel() + (0 if tied or out is None else out.weight.numel())
    pos_params = sum(m.weight.numel() for m in _positional(model) if hasattr(m, "weight"))
    return int(total), int(total - embedding - pos_params), bool(tied)


def _positional(model: Any) -> list[torch.nn.Module]:
    """Learned position embeddings (GPT-2's wpe); empty for rotary models."""
    return [m for n, m in model.named_modules() if n.endswith("wpe") or n.endswith("embed_positions")]


def _position_encoding(model: Any) -> str:
    cfg = model.config
    positional = _positional(model)
    rope = _first(cfg, "rope_theta")
    rope_params = getattr(cfg, "rope_parameters", None)
    if rope is None and isinstance(rope_params, dict):
        rope = rope_params.get("rope_theta")
    if positional:
        return f"learned absolute ({positional[0].weight.shape[0]} positions)"
    if rope is not None:
        return f"RoPE (theta {float(rope):,.0f})"
    return "unknown"


def _module_ending(model: Any, *suffixes: str) -> torch.nn.Module | None:
    return next((m for n, m in model.named_modules() if n.endswith(suffixes)), None)


def architecture_facts(model: Any, tokenizer: Any) -> dict[str, Any]:
    """What the model is, read from its config and the shapes of its weights."""
    cfg = model.config
    emb = model.get_input_embeddings().weight
    total, without_embeddings, tied = _parameter_counts(model)
    heads = int(_first(cfg, "num_attention_heads", "n_head"))
    kv_heads = int(_first(cfg, "num_key_value_heads", default=heads))
    hidden = int(_first(cfg, "hidden_size", "n_embd"))
    head_dim = int(_first(cfg, "head_dim", default=hidden // heads))
    # Key/value heads read off the weights where the projection is separate (Qwen2, Llama).
    k_proj = _module_ending(model, "k_proj")
    if k_proj is not None and hasattr(k_proj, "weight"):
        kv_heads = k_proj.weight.shape[0] // head_dim
    norm = final_norm(model)
    act = _first(cfg, "activation_function", "hidden_act", default="unknown")
    gated = _module_ending(model, "gate_proj") is not None
    q_proj = _module_ending(model, "q_proj", "c_attn")
    return {
        "architecture": type(model).__name__,
        "model_type": cfg.model_type,
        "layers": int(_first(cfg, "num_hidden_layers", "n_layer")),
        "query_heads": heads,
        "kv_heads": kv_heads,
        "attention": "grouped-query" if kv_heads < heads else "multi-head",
        "hidden_size": hidden,
        "head_dim": head_dim,
        "intermediate_size": _first(cfg, "intermediate_size", "n_inner", default=4 * hidden),
        "vocab_size": int(emb.shape[0]),
        "tokenizer_size": len(tokenizer),
        "context_length": _first(cfg, "max_position_embeddings", "n_positions"),
        "position_encoding": _position_encoding(model),
        "norm": f"{'RMSNorm' if 'RMS' in type(norm).__name__ else type(norm).__name__}"
                f" (eps {getattr(norm, 'eps', getattr(norm, 'variance_epsilon', '?'))})",
        "activation": f"{act}{' gated (SwiGLU-style)' if gated else ''}",
        "attention_bias": bool(getattr(q_proj, "bias", None) is not None),
        "tied_embeddings": tied,
        "parameters": total,
        "parameters_without_embeddings": without_embeddings,
        "weights_dtype": str(emb.dtype).replace("torch.", ""),
        # The offline demo's models say which heads were written by hand (generator/demo.py).
        **({"planted_heads": list(cfg.model_atlas_planted_heads)}
           if getattr(cfg, "model_atlas_planted_heads", None) else {}),
    }
