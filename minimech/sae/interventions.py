"""Interventions with features: edit the SAE's features during a forward, or steer along a decoder direction.

At the SAE's hook, `splice` replaces the activation x with

    decode(edit(f)) + (x - decode(f))          f = encode(x); the second term is the SAE's error

so that with no edit the model runs as without the SAE (the reconstruction error is added back, as SAELens's
use_error_term), and an edit changes the activation by decode(f') - decode(f) = (f' - f) @ W_dec: only along the
edited features' decoder directions. The hook computes it in that last form, x + (f' - f) @ W_dec, which is the same
sum with b_dec cancelled, and leaves x bit for bit unchanged where no feature was edited. (Without the error term,
the run would be the SAE's reconstruction, whose loss evaluate_sae reports as ce_loss_with_sae.)

    with splice(model, sae, ablate=[123]): model(tokens)             # feature 123 set to 0
    with splice(model, sae, clamp={123: 5.0}): model(tokens)         # ... set to 5 wherever ...
    with splice(model, sae, scale={123: 2.0}, positions=-1): ...     # doubled, at the last position only
    with steer_feature(model, sae, 123, 4.0): model(tokens)          # 4 x its decoder direction added, no SAE
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .activations import check_hook, per_token
from .autoencoder import SAEError, SparseAutoencoder


def _indices(sae: SparseAutoencoder, features, what: str) -> list[int]:
    out = []
    for i in features:
        if isinstance(i, torch.Tensor) and i.numel() == 1:
            i = int(i)
        if isinstance(i, bool) or not isinstance(i, int) or not -sae.cfg.d_sae <= i < sae.cfg.d_sae:
            raise SAEError(f"{what}: {i!r} is not a feature index of this SAE (0 .. {sae.cfg.d_sae - 1})")
        out.append(i % sae.cfg.d_sae)
    return out


def _position_mask(positions, n_pos: int, device) -> torch.Tensor:
    """[pos] bool: where edits apply (None: everywhere; an int, a list of ints, or a slice)."""
    mask = torch.zeros(n_pos, dtype=torch.bool, device=device)
    if positions is None:
        mask[:] = True
        return mask
    if isinstance(positions, int):
        positions = [positions]
    if isinstance(positions, slice):
        mask[positions] = True
        return mask
    for p in positions:
        if not -n_pos <= int(p) < n_pos:
            raise SAEError(f"position {p} is outside the prompt, which has {n_pos} positions")
        mask[int(p)] = True
    return mask


def feature_editor(sae: SparseAutoencoder, ablate=(), clamp: dict | None = None, scale: dict | None = None,
                   edit=None):
    """A function f [..., d_sae] -> f' [..., d_sae] applying, in order: ablate (set to 0), clamp (set to a value),
    scale (multiply), then edit (any function of f, for what the others cannot say)."""
    ablate = _indices(sae, ablate, "ablate")
    clamp = dict(zip(_indices(sae, (clamp or {}).keys(), "clamp"), (clamp or {}).values()))
    scale = dict(zip(_indices(sae, (scale or {}).keys(), "scale"), (scale or {}).values()))

    def apply(f: torch.Tensor) -> torch.Tensor:
        f = f.clone()
        if ablate:
            f[..., ablate] = 0.0
        for i, value in clamp.items():
            f[..., i] = value
        for i, factor in scale.items():
            f[..., i] *= factor
        if edit is not None:
            out = edit(f)
            if not isinstance(out, torch.Tensor) or out.shape != f.shape:
                raise SAEError(f"edit must return a tensor of the features' shape {tuple(f.shape)}")
            f = out
        return f
    return apply


def splice_hook(sae: SparseAutoencoder, editor=None, positions=None):
    """The hook splice attaches: x -> decode(editor(f)) + (x - decode(f)) = x + (editor(f) - f) @ W_dec at
    `positions` (x elsewhere)."""
    def hook(activation, hook_point):
        x = per_token(activation)  # [batch, pos, d_in]
        f = sae.encode(x)
        edited = f if editor is None else editor(f)
        change = (edited - f) @ sae.W_dec  # [batch, pos, d_in]: zero where no feature changed
        where = _position_mask(positions, x.shape[1], x.device)
        out = x + change.to(x.dtype) * where[None, :, None]
        return out.reshape(activation.shape)
    return hook


@contextmanager
def splice(model, sae: SparseAutoencoder, ablate=(), clamp: dict | None = None, scale: dict | None = None,
           edit=None, positions=None):
    """Run the model with the SAE spliced in at its hook (error term added back) and features edited: ablate
    [indices], clamp {index: value}, scale {index: factor}, edit f -> f'; at `positions` (default all)."""
    hook = check_hook(model, sae.hook)
    editor = feature_editor(sae, ablate, clamp, scale, edit)
    with model.hooks([(hook, splice_hook(sae, editor, positions))]):
        yield model


@contextmanager
def steer_feature(model, sae: SparseAutoencoder, feature: int, coefficient: float, positions=None):
    """Add coefficient x the feature's decoder direction to the SAE's hook at `positions` (default all), without
    encoding anything: steering with a feature (Templeton et al. 2024 clamp; this adds)."""
    (index,) = _indices(sae, [feature], "steer_feature")
    hook = check_hook(model, sae.hook)
    direction = sae.W_dec[index].detach()

    def add(activation, hook_point):
        x = per_token(activation)
        where = _position_mask(positions, x.shape[1], x.device)
        out = x + coefficient * direction.to(x.dtype) * where[None, :, None]
        return out.reshape(activation.shape)
    with model.hooks([(hook, add)]):
        yield model
