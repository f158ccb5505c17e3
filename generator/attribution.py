"""Direct logit attribution, recorded during the compute stage's own forward passes (imports torch).

The residual stream before the final norm is a sum of what every component wrote:

    x = e + sum_l sum_h z_lh W_O^lh + sum_l b_O^l + sum_l m_l

(e the embeddings, token and position; z_lh head h's attention output in layer l, its value bias
included; W_O^lh its slice of the output projection; b_O^l that projection's bias; m_l layer l's
MLP output). With the final norm's scale frozen at this position (the standard direct effect), the
logit of token v is linear in x, so it splits into one term per component:

    LayerNorm:  logit_v = sum_c  c . u_v  +  b_f . W_U[v]  (+ b_U[v]),
                u_v = centre(w_f * W_U[v]) / sigma,  sigma = sqrt(var(x) + eps)
    RMSNorm:    logit_v = sum_c  c . u_v  (+ b_U[v]),   u_v = (w_f * W_U[v]) / rms,
                rms = sqrt(mean(x^2) + eps)

`centre` subtracts the mean over the hidden dimension: LayerNorm removes each component's mean, and
c . centre(u) = centre(c) . u. The contributions add up to the model's own logit; the "bias"
component holds b_O (all layers), the final norm's bias and the unembedding's bias. Query heads of
a grouped-query model are attributed one by one (each has its own slice of W_O).

`DlaRecorder` holds forward hooks on each layer's attention output projection (its input, z),
each MLP (its output), the first layer (its input, e) and the final norm (its input, x); it wraps
the same prefill and generation passes `extract.run_batch` already runs, so nothing is recomputed.
`direct_logit_attribution` turns what it recorded into [N, targets, components] with batched tensor
operations, one small matmul per layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .schema import dla_component_names as component_names  # noqa: F401 - the order used here


def _first_attr(obj: Any, names: tuple[str, ...], what: str) -> Any:
    for n in names:
        found = getattr(obj, n, None)
        if found is not None:
            return found
    raise ValueError(f"{type(obj).__name__}: cannot find the {what} for direct logit attribution "
                     f"(looked for {', '.join(names)}).")


class DlaRecorder:
    """Forward hooks that keep, for every pass of a model, what `direct_logit_attribution` needs.

    Per pass p and layer l (B rows, T_p positions in the pass):
      z[p][l]    [B, T_p, H * head_dim]  input of the attention output projection (heads concatenated)
      mlp[p][l]  [B, T_p, D]             MLP output
      embed[p]   [B, T_p, D]             input of the first layer
      resid[p]   [B, T_p, D]             input of the final norm
    Use as a context manager around the passes; the hooks are removed on exit.
    """

    def __init__(self, model: Any):
        from .models import final_norm
        base = model.base_model
        self.layers = list(_first_attr(base, ("h", "layers", "blocks"), "decoder layers"))
        self.attn = [_first_attr(layer, ("attn", "self_attn", "attention"), "attention")
                     for layer in self.layers]
        self.out_proj = [_first_attr(a, ("c_proj", "o_proj", "out_proj", "dense"),
                                     "attention output projection") for a in self.attn]
        self.mlps = [_first_attr(layer, ("mlp", "feed_forward"), "MLP") for layer in self.layers]
        self.norm = final_norm(model)
        self.unembed = model.get_output_embeddings()
        self.heads = int(getattr(self.attn[0], "num_heads", 0)
                         or getattr(model.config, "num_attention_heads", 0)
                         or model.config.n_head)
        self.z: list[list[torch.Tensor]] = []
        self.mlp: list[list[torch.Tensor]] = []
        self.embed: list[torch.Tensor] = []
        self.resid: list[torch.Tensor] = []
        self._handles: list[Any] = []
        self._in_pass = False

    def _new_pass(self, module: Any, args: tuple, kwargs: dict) -> None:
        self.z.append([None] * len(self.layers))
        self.mlp.append([None] * len(self.layers))
        self.embed.append(args[0] if args else kwargs["hidden_states"])
        self._in_pass = True

    def _final_norm_input(self, module: Any, args: tuple) -> None:
        # Only the model's own call: the logit lens applies the same norm module afterwards.
        if self._in_pass:
            self.resid.append(args[0])
            self._in_pass = False

    def __enter__(self) -> "DlaRecorder":
        reg = self._handles.append
        reg(self.layers[0].register_forward_pre_hook(self._new_pass, with_kwargs=True))
        for l, (proj, mlp) in enumerate(zip(self.out_proj, self.mlps)):
            reg(proj.register_forward_pre_hook(
                lambda m, args, l=l: self.z[-1].__setitem__(l, args[0])))
            reg(mlp.register_forward_hook(
                lambda m, args, out, l=l: self.mlp[-1].__setitem__(
                    l, out[0] if isinstance(out, tuple) else out)))
        reg(self.norm.register_forward_pre_hook(self._final_norm_input))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def out_weights(self, l: int) -> torch.Tensor:
        """W_O of layer l per query head: [H, head_dim, D]."""
        proj = self.out_proj[l]
        w = proj.weight
        # Conv1D (GPT-2) stores [in, out]; nn.Linear stores [out, in].
        w_in_out = w if type(proj).__name__ == "Conv1D" else w.T           # [H * hd, D]
        return w_in_out.reshape(self.heads, -1, w_in_out.shape[-1])


def _gather(steps: list[torch.Tensor], valid: torch.Tensor, device: Any) -> torch.Tensor:
    """Passes [B, T_p, X] concatenated over positions, then the valid rows -> [N, X] float32."""
    full = torch.cat([s.to(device) for s in steps], dim=1)            # [B, T, X]
    return full[valid.to(device)].float()


@torch.no_grad()
def direct_logit_attribution(rec: DlaRecorder, valid: torch.Tensor, targets: torch.Tensor,
                             final_hidden: torch.Tensor | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Direct contribution of every component to the logits of `targets`.

    valid: bool [B, T] (the analysed positions of the recorded passes, in order);
    targets: long [N, K] token ids per analysed position (-1: none, e.g. no next token);
    final_hidden: optional [N, D], the model's own final-normed hidden states, to check the sum.
    Returns (contributions float32 [N, K, C] in `component_names` order, NaN where the target is
    -1; relative error [N, K] of sum_c against the model's logit, |sum - logit| / max(|logit|, 1),
    or None without `final_hidden`).
    """
    dev = rec.unembed.weight.device
    L, H = len(rec.layers), rec.heads
    N, K = targets.shape
    resid = _gather(rec.resid, valid, dev)                            # [N, D]
    norm = rec.norm
    w_f = norm.weight.float()
    b_f = norm.bias.float() if getattr(norm, "bias", None) is not None else None
    eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-5)))
    layer_norm = isinstance(norm, torch.nn.LayerNorm)
    safe = targets.clamp_min(0).to(dev)
    W_U = rec.unembed.weight                                          # [V, D]
    rows = W_U[safe.reshape(-1)].float().view(N, K, -1)               # [N, K, D]
    u = rows * w_f                                                    # [N, K, D]
    if layer_norm:
        u = u - u.mean(-1, keepdim=True)
        scale = (resid.var(-1, unbiased=False) + eps).rsqrt()         # [N]
    else:
        scale = (resid.pow(2).mean(-1) + eps).rsqrt()
    u = u * scale[:, None, None]                                      # frozen norm folded in

    C = 1 + L * H + L + 1
    out = torch.empty((N, K, C), dtype=torch.float32, device=dev)
    out[:, :, 0] = torch.einsum("nd,nkd->nk", _gather(rec.embed, valid, dev), u)
    bias = torch.zeros(rows.shape[-1], dtype=torch.float32, device=dev)  # [D], sum of b_O
    for l in range(L):
        z = _gather([p[l] for p in rec.z], valid, dev).view(N, H, -1)  # [N, H, hd]
        W_O = rec.out_weights(l).to(dev).float()                        # [H, hd, D]
        # u projected back through each head's W_O: [N, K, H, hd]; then dot with z.
        back = torch.einsum("nkd,hed->nkhe", u, W_O)
        out[:, :, 1 + l * H:1 + (l + 1) * H] = torch.einsum("nkhe,nhe->nkh", back, z)
        out[:, :, 1 + L * H + l] = torch.einsum(
            "nd,nkd->nk", _gather([p[l] for p in rec.mlp], valid, dev), u)
        b_O = getattr(rec.out_proj[l], "bias", None)
        if b_O is not None:
            bias += b_O.to(dev).float()
    const = torch.einsum("d,nkd->nk", bias, u)
    if b_f is not None:
        const = const + rows @ b_f                                    # [N, K]
    b_U = getattr(rec.unembed, "bias", None)
    if b_U is not None:
        const = const + b_U.float()[safe]
    out[:, :, -1] = const
    none = targets.to(dev) < 0
    out[none] = float("nan")
    if final_hidden is None:
        return out, None
    logit = torch.einsum("nd,nkd->nk", final_hidden.to(dev).float(), rows)
    if b_U is not None:
        logit = logit + b_U.float()[safe]
    err = (out.sum(-1) - logit).abs() / logit.abs().clamp_min(1.0)
    err[none] = float("nan")
    return out, err


@torch.no_grad()
def rank_components(dla: torch.Tensor, k: int) -> tuple[Any, Any, Any]:
    """What the artifact keeps of the attribution, ranked on its device: per position and target
    the k components ranked by round(|contribution| x 1000) (their size in thousandths, as
    stored), largest first, ties by component index, lowest first (so float noise of another
    batch or padding cannot reorder near-equal ones; every component under 0.0005 ties at 0), and
    their values; and `rest`, the sum of all components less the listed values *rounded to 3
    decimals* (as the artifact stores them), so that sum(stored values) + rest, rest rounded to 3
    decimals in turn, is the sum of every contribution within 0.0005. dla: float32 [N, 2, C],
    NaN where there is no target -> host arrays int64 [N, 2, k], float32 [N, 2, k] and float64
    [N, 2] (NaN where there is no target)."""
    C = dla.shape[-1]
    k = min(k, C)
    full = torch.nan_to_num(dla.float())
    # One integer per component orders by |value| (in thousandths), then by index.
    key = torch.round(full.abs() * 1000).long() * C + (C - 1 - torch.arange(C, device=dla.device))
    index = torch.topk(key, k, dim=-1).indices                          # largest first
    value = full.gather(-1, index)
    total = full.sum(-1)                                                # [N, 2], every component
    missing = torch.isnan(dla).all(-1)
    value[missing], total[missing] = float("nan"), float("nan")
    value_h = value.cpu().numpy()
    listed = np.round(value_h.astype(np.float64), 3).sum(-1)           # as the artifact stores them
    return index.cpu().numpy(), value_h, total.cpu().numpy().astype(np.float64) - listed
