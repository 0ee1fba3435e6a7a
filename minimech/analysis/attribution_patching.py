"""Attribution patching (Nanda 2023): activation patching's grids from one forward and one backward pass.

Patching a clean activation into the corrupted run changes the metric by about the first-order term

    metric(patched) - metric(corrupt)  ~  grad_act metric(corrupt) . (act_clean - act_corrupt)

so one backward pass of the corrupted run gives every cell of a grid at once. It is exact for a metric linear in
the activation and drifts where the model is far from linear between the two runs (LayerNorm, attention softmax,
GELU): `agreement` measures how far, against the exact grids of patching.py. Results are raw metric changes (add
metric(corrupt) to compare with patch_resid(..., normalise=False)).
"""

from __future__ import annotations

import torch

from ..errors import MinimechError
from .ablation import Metric
from .patching import PatchingError, _hook_name


def _grads_and_deltas(model, clean, corrupt, metric: Metric, names: list[str]):
    """(grads, deltas): d metric / d act on the corrupted run, and act_clean - act_corrupt, per hook name."""
    clean, corrupt = model.check_tokens(clean), model.check_tokens(corrupt)  # [batch, pos] each
    if clean.shape != corrupt.shape:
        raise PatchingError(f"clean tokens have shape {tuple(clean.shape)} but corrupted tokens have shape "
                            f"{tuple(corrupt.shape)}: give prompts with the same number of tokens")
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names=names)
    saved = {}

    def keep(act, hook):
        act.retain_grad()
        saved[hook.name] = act
        return act

    was_training = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():  # gradients for the activations only; the weights stay untouched
            p.requires_grad_(False)
        with torch.enable_grad(), model.hooks([(n, keep) for n in names]):
            embed_grad = [("hook_embed", lambda act, hook: act.requires_grad_(True))]
            with model.hooks(embed_grad):
                value = metric(model(corrupt))
            if not (isinstance(value, torch.Tensor) and value.numel() == 1 and value.requires_grad):
                raise MinimechError("attribution patching needs the metric's gradient: metric(logits) must return "
                                    "a one-element tensor computed from the logits with torch operations (not "
                                    ".item(), float() or numpy), e.g. logit_diff(correct, wrong)")
            value.backward()
    finally:
        for p, flag in zip(model.parameters(), was_training):
            p.requires_grad_(flag)
    grads = {n: saved[n].grad.detach() for n in names}
    deltas = {n: clean_cache[n] - saved[n].detach() for n in names}
    return grads, deltas


def attribution_patch_resid(model, clean_tokens, corrupted_tokens, metric: Metric,
                            hook: str = "resid_pre") -> torch.Tensor:
    """[n_layers, pos]: first-order estimate of metric(patched) - metric(corrupt) for patch_resid's grid."""
    names = [_hook_name(model, hook, l) for l in range(model.cfg.n_layers)]
    grads, deltas = _grads_and_deltas(model, clean_tokens, corrupted_tokens, metric, names)
    # sum over batch (the metric's own averaging is in the gradient) and d_model
    return torch.stack([(grads[n] * deltas[n]).sum((0, 2)) for n in names])  # [n_layers, pos]


def attribution_patch_heads(model, clean_tokens, corrupted_tokens, metric: Metric) -> torch.Tensor:
    """[n_layers, n_heads]: first-order estimate of patch_heads' grid (each head's hook_z at every position)."""
    names = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]
    grads, deltas = _grads_and_deltas(model, clean_tokens, corrupted_tokens, metric, names)
    return torch.stack([(grads[n] * deltas[n]).sum((0, 1, 3)) for n in names])  # [n_layers, n_heads]


def agreement(estimate: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    """How well an attribution-patching grid matches exact patching's (both as metric changes):
    Pearson correlation, the largest absolute error, and whether the top cell is the same."""
    if estimate.shape != exact.shape:
        raise MinimechError(f"the grids have shapes {tuple(estimate.shape)} and {tuple(exact.shape)}: compare grids "
                            "of the same sweep (same hook, prompts and positions)")
    a, b = estimate.flatten().double(), exact.flatten().double()
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item() if a.std() > 0 and b.std() > 0 else float("nan")
    return {"correlation": corr, "max_abs_error": (a - b).abs().max().item(),
            "same_top_cell": bool(a.abs().argmax() == b.abs().argmax())}
