"""Activation patching: run the corrupted prompt, paste in one activation from the clean run, score the result.

If pasting a component's clean activation restores the clean behaviour, that component (at that position) carries
the information that distinguishes the two prompts. Scores are normalised:

    (metric(patched) - metric(corrupt)) / (metric(clean) - metric(corrupt))

so 1 means "restores the clean metric fully" and 0 means "no effect". normalise=False gives metric(patched) itself.
Clean and corrupt prompts must have the same shape, since activations are swapped position by position.
"""

from __future__ import annotations

import torch

from ..errors import MinimechError
from .ablation import Metric, metric_value, require_mlps


class PatchingError(MinimechError, ValueError):
    """Prompts or metric values that activation patching cannot use."""


def _setup(model, clean, corrupt, metric, names, normalise: bool):
    """Check the prompts; return (clean tokens, corrupt tokens, clean cache, score function)."""
    clean, corrupt = model.check_tokens(clean), model.check_tokens(corrupt)  # [batch, pos] each
    if clean.shape != corrupt.shape:
        raise PatchingError(f"clean tokens have shape {tuple(clean.shape)} but corrupt tokens have shape "
                            f"{tuple(corrupt.shape)}: patching swaps activations position by position, so they "
                            "must match (choose prompts with the same number of tokens)")
    clean_logits, cache = model.run_with_cache(clean, names=names)
    m_clean, m_corrupt = metric_value(metric, clean_logits), metric_value(metric, model(corrupt))
    if normalise and m_clean == m_corrupt:
        raise PatchingError(f"the metric is {m_clean:.6g} on both the clean and the corrupt prompt, so the "
                            "normalised score (m - m_corrupt) / (m_clean - m_corrupt) is undefined: choose prompts "
                            "the metric tells apart, or pass normalise=False")
    span = m_clean - m_corrupt
    score = (lambda m: (m - m_corrupt) / span) if normalise else (lambda m: m)
    return clean, corrupt, cache, score


def _patched_metric(model, corrupt, metric, name: str, clean_act: torch.Tensor, index) -> float:
    """metric of the corrupt run with act[index] replaced by clean_act[index] at hook `name`."""
    def hook(act, hook):
        act = act.clone()
        act[index] = clean_act[index]
        return act

    with model.hooks([(name, hook)]):
        return metric_value(metric, model(corrupt))


def _patch_positions(model, clean, corrupt, metric, name_of, normalise) -> torch.Tensor:
    """[n_layers, pos]: patch the activation at hook name_of(l), one (layer, position) at a time."""
    n_layers = model.cfg.n_layers
    names = [name_of(l) for l in range(n_layers)]
    clean, corrupt, cache, score = _setup(model, clean, corrupt, metric, names, normalise)
    out = torch.zeros(n_layers, clean.shape[1])
    for layer, name in enumerate(names):
        for p in range(clean.shape[1]):
            # index (all batch rows, position p) of an activation [batch, pos, ...]
            out[layer, p] = score(_patched_metric(model, corrupt, metric, name, cache[name], (slice(None), p)))
    return out


@torch.no_grad()
def patch_resid(model, clean_tokens, corrupt_tokens, metric: Metric, normalise: bool = True) -> torch.Tensor:
    """[n_layers, pos]: clean blocks.{l}.hook_resid_pre at one position patched into the corrupt run."""
    return _patch_positions(model, clean_tokens, corrupt_tokens, metric, lambda l: f"blocks.{l}.hook_resid_pre",
                            normalise)


@torch.no_grad()
def patch_mlps(model, clean_tokens, corrupt_tokens, metric: Metric, normalise: bool = True) -> torch.Tensor:
    """[n_layers, pos]: clean blocks.{l}.hook_mlp_out at one position patched into the corrupt run."""
    require_mlps(model, "patch_mlps")
    return _patch_positions(model, clean_tokens, corrupt_tokens, metric, lambda l: f"blocks.{l}.hook_mlp_out",
                            normalise)


@torch.no_grad()
def patch_attn(model, clean_tokens, corrupt_tokens, metric: Metric, normalise: bool = True) -> torch.Tensor:
    """[n_layers, pos]: clean blocks.{l}.hook_attn_out (all heads of a layer) at one position patched in."""
    return _patch_positions(model, clean_tokens, corrupt_tokens, metric, lambda l: f"blocks.{l}.hook_attn_out",
                            normalise)


@torch.no_grad()
def patch_heads(model, clean_tokens, corrupt_tokens, metric: Metric, pos: int | None = None,
                normalise: bool = True) -> torch.Tensor:
    """[n_layers, n_heads]: one head's clean hook_z patched into the corrupt run, at every position or at `pos`."""
    cfg = model.cfg
    names = [f"blocks.{l}.attn.hook_z" for l in range(cfg.n_layers)]
    clean, corrupt, cache, score = _setup(model, clean_tokens, corrupt_tokens, metric, names, normalise)
    if pos is not None and not -clean.shape[1] <= pos < clean.shape[1]:
        raise PatchingError(f"pos={pos} is outside the prompt's {clean.shape[1]} positions")
    where = slice(None) if pos is None else pos
    out = torch.zeros(cfg.n_layers, cfg.n_heads)
    for layer, name in enumerate(names):
        for head in range(cfg.n_heads):
            index = (slice(None), where, head)  # of hook_z [batch, pos, head, d_head]
            out[layer, head] = score(_patched_metric(model, corrupt, metric, name, cache[name], index))
    return out
