"""Ablation: knock one component out and see how much a metric moves.

Mean ablation replaces a component's output with its average over reference inputs, which keeps the activation in
its usual range (zero is rarely a value a head ever outputs, so zero ablation also measures "the stream got a vector
it never sees"). Heads are ablated at hook_z, where each head has its own slice; MLPs at hook_mlp_out.

A metric is `metric(logits) -> scalar tensor`, e.g. the logit difference between two answers at the last position.
Results are metric(ablated) - metric(clean): negative means the component helped the metric.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import MinimechError

Metric = Callable[[torch.Tensor], torch.Tensor]


def metric_value(metric: Metric, logits: torch.Tensor) -> float:
    """metric(logits) as a float, with a clear error when the metric does not return a scalar."""
    value = metric(logits)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise MinimechError(f"the metric returned a tensor of shape {tuple(value.shape)}; it must return a "
                                "scalar (e.g. average over the batch with .mean())")
        return value.item()
    return float(value)


def _reference_mean(model, tokens: torch.Tensor, reference, name_of, layers) -> dict[str, torch.Tensor]:
    """Mean of each layer's activation over the reference batch: [pos, ...] when the lengths match, else [...]."""
    reference = tokens if reference is None else model.check_tokens(reference)  # [batch_ref, pos_ref]
    names = [name_of(l) for l in layers]
    _, cache = model.run_with_cache(reference, names=names)
    same_length = reference.shape[1] == tokens.shape[1]
    # Per position when possible: position 0 (BOS) and later positions have very different typical activations
    return {n: cache[n].mean(0) if same_length else cache[n].mean((0, 1)) for n in names}


def _ablate(model, tokens, metric, name: str, replace) -> float:
    """metric of a forward pass where `replace(act)` edits the activation at hook `name` in place."""
    def hook(act, hook):
        act = act.clone()
        replace(act)
        return act

    with model.hooks([(name, hook)]):
        return metric_value(metric, model(tokens))


@torch.no_grad()
def mean_ablate_heads(model, tokens, metric: Metric, reference=None, zero_ablate: bool = False) -> torch.Tensor:
    """[n_layers, n_heads]: metric(ablated) - metric(clean) with each head's hook_z set to its reference mean.

    reference: tokens to average over (default: tokens themselves). The mean is per position when reference has as
    many positions as tokens, else over batch and positions. zero_ablate=True sets hook_z to zero instead.
    """
    tokens = model.check_tokens(tokens)  # [batch, pos]
    cfg = model.cfg
    name_of = lambda l: f"blocks.{l}.attn.hook_z"
    means = {} if zero_ablate else _reference_mean(model, tokens, reference, name_of, range(cfg.n_layers))
    clean = metric_value(metric, model(tokens))
    out = torch.zeros(cfg.n_layers, cfg.n_heads)
    for layer in range(cfg.n_layers):
        name = name_of(layer)
        for head in range(cfg.n_heads):
            def replace(z, head=head, name=name):  # z: [batch, pos, head, d_head]
                z[:, :, head] = 0.0 if zero_ablate else means[name][..., head, :]
            out[layer, head] = _ablate(model, tokens, metric, name, replace) - clean
    return out


def require_mlps(model, what: str) -> None:
    if model.cfg.attn_only:
        raise MinimechError(f"{what}: this model is attention-only (cfg.attn_only=True), so it has no MLPs and "
                            "no hook_mlp_out; ablate or patch its heads instead")


@torch.no_grad()
def mean_ablate_mlps(model, tokens, metric: Metric, reference=None, zero_ablate: bool = False) -> torch.Tensor:
    """[n_layers]: metric(ablated) - metric(clean) with each layer's hook_mlp_out set to its reference mean.

    reference and zero_ablate as in mean_ablate_heads.
    """
    require_mlps(model, "mean_ablate_mlps")
    tokens = model.check_tokens(tokens)  # [batch, pos]
    n_layers = model.cfg.n_layers
    name_of = lambda l: f"blocks.{l}.hook_mlp_out"
    means = {} if zero_ablate else _reference_mean(model, tokens, reference, name_of, range(n_layers))
    clean = metric_value(metric, model(tokens))
    out = torch.zeros(n_layers)
    for layer in range(n_layers):
        name = name_of(layer)
        def replace(x, name=name):  # x: [batch, pos, d_model]
            x[...] = 0.0 if zero_ablate else means[name]
        out[layer] = _ablate(model, tokens, metric, name, replace) - clean
    return out
