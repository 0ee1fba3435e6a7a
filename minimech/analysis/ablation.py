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
from ..objects import Memory

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
    if reference is None and tokens.shape[0] == 1:
        raise MinimechError("mean ablation over the prompts themselves needs more than one prompt: the mean over one "
                            "prompt is that prompt, so nothing would be ablated. Pass reference=... (a batch of "
                            "prompts of the same kind), or use zero ablation")
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


# ---- resample ablation ---------------------------------------------------------------------------------------------
# Mean ablation still hands the next layer a vector no real prompt produced; resample ablation (as in causal scrubbing,
# Chan et al. 2022) replaces a component's output on prompt b with its output on another real prompt, so the
# downstream layers see an in-distribution activation that merely lacks this prompt's information. One draw is
# noisy, so the metric is averaged over n_samples seeded draws.

def resample_indices(n_reference: int, batch: int, n_samples: int, seed: int, exclude_self: bool) -> torch.Tensor:
    """[n_samples, batch]: which reference row replaces each prompt in each draw.

    torch.Generator().manual_seed(seed); exclude_self=False draws torch.randint(n_reference, (n_samples, batch));
    exclude_self=True (reference is the batch itself) draws offsets randint(1, n_reference) and takes
    (b + offset) % n_reference, so prompt b never gets its own activation back.
    """
    gen = torch.Generator().manual_seed(seed)
    if not exclude_self:
        return torch.randint(n_reference, (n_samples, batch), generator=gen)
    offsets = torch.randint(1, n_reference, (n_samples, batch), generator=gen)
    return (torch.arange(batch) + offsets) % n_reference


def _resample_reference(model, tokens: torch.Tensor, reference, n_samples: int):
    """(reference tokens [batch_ref, pos], exclude_self) with clear errors for what resampling cannot use."""
    if n_samples < 1:
        raise MinimechError(f"n_samples={n_samples}: resample ablation needs at least one draw")
    if reference is None:
        if tokens.shape[0] < 2:
            raise MinimechError("resample ablation with reference=None draws from the other prompts of the batch, "
                                "but the batch has one prompt: pass reference=<tokens of other prompts>")
        return tokens, True
    reference = model.check_tokens(reference)  # [batch_ref, pos]
    if reference.shape[1] != tokens.shape[1]:
        raise MinimechError(f"reference has {reference.shape[1]} positions but tokens have {tokens.shape[1]}: "
                            "resampling swaps activations position by position, so use prompts of the same length")
    return reference, False


@torch.no_grad()
def _resample_sweep(model, tokens, metric, reference, n_samples, seed, name_of, units) -> torch.Tensor:
    """[n_layers, len(units)]: mean over draws of metric(resampled) - metric(clean); units index the activation."""
    tokens = model.check_tokens(tokens)  # [batch, pos]
    reference, exclude_self = _resample_reference(model, tokens, reference, n_samples)
    names = [name_of(l) for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(reference, names=names)
    draws = resample_indices(reference.shape[0], tokens.shape[0], n_samples, seed, exclude_self)  # [n_samples, batch]
    clean = metric_value(metric, model(tokens))
    out = torch.zeros(len(names), len(units))
    for layer, name in enumerate(names):
        for j, index in enumerate(units):
            total = 0.0
            for rows in draws:  # rows: [batch] reference row for each prompt
                def replace(act, name=name, index=index, rows=rows):
                    act[index] = cache[name][rows][index]
                total += _ablate(model, tokens, metric, name, replace)
            out[layer, j] = total / n_samples - clean
    return out


def resample_ablate_heads(model, tokens, metric: Metric, reference=None, n_samples: int = 5,
                          seed: int = 0) -> torch.Tensor:
    """[n_layers, n_heads]: metric(resampled) - metric(clean), each head's hook_z on prompt b replaced by its hook_z
    on a reference prompt (drawn by resample_indices), averaged over n_samples draws.

    reference: tokens [batch_ref, pos] of the same length as tokens; default: the other prompts of the batch.
    """
    units = [(slice(None), slice(None), head) for head in range(model.cfg.n_heads)]  # z: [batch, pos, head, d_head]
    return _resample_sweep(model, tokens, metric, reference, n_samples, seed, lambda l: f"blocks.{l}.attn.hook_z",
                           units)


def resample_ablate_mlps(model, tokens, metric: Metric, reference=None, n_samples: int = 5,
                         seed: int = 0) -> torch.Tensor:
    """[n_layers]: as resample_ablate_heads, for each layer's hook_mlp_out [batch, pos, d_model]."""
    require_mlps(model, "resample_ablate_mlps")
    return _resample_sweep(model, tokens, metric, reference, n_samples, seed, lambda l: f"blocks.{l}.hook_mlp_out",
                           [(Ellipsis,)])[:, 0]


# ---- memories (single MLP neurons) ---------------------------------------------------------------------------------
def memory_address(model, memory) -> tuple[int, int]:
    """(layer, index) of a Memory or of a (layer, index) pair, checked against the model."""
    if isinstance(memory, Memory):
        memory = (memory.layer, memory.index)
    if not (isinstance(memory, (tuple, list)) and len(memory) == 2 and all(isinstance(x, int) for x in memory)):
        raise MinimechError(f"a memory is a Memory (model.blocks[l].mlp.memories[i]) or a (layer, index) pair of "
                            f"ints, got {memory!r}")
    require_mlps(model, "memories")
    layer, index = memory
    cfg = model.cfg
    if not (0 <= layer < cfg.n_layers and 0 <= index < cfg.d_mlp):
        raise MinimechError(f"memory (layer {layer}, index {index}) is outside this model: layers 0..{cfg.n_layers - 1}"
                            f", neurons 0..{cfg.d_mlp - 1}")
    return layer, index


@torch.no_grad()
def ablate_memories(model, tokens, metric: Metric, memories, how: str = "zero", reference=None,
                    together: bool = False) -> torch.Tensor:
    """metric(ablated) - metric(clean) with single MLP neurons knocked out at blocks.{l}.mlp.hook_post[..., i].

    memories: [(layer, index), ...] or Memory objects. how: "zero" sets the activation to 0 (the neuron writes
    nothing: its value is never added); "mean" sets it to its mean over reference (as in mean_ablate_mlps).
    Returns [n_memories], each ablated alone, or with together=True a 0-d tensor for all of them at once.
    """
    if how not in ("zero", "mean"):
        raise MinimechError(f"how={how!r}: choose 'zero' or 'mean'")
    tokens = model.check_tokens(tokens)  # [batch, pos]
    addresses = [memory_address(model, m) for m in memories]
    if not addresses:
        raise MinimechError("memories is empty: give at least one (layer, index)")
    name_of = lambda l: f"blocks.{l}.mlp.hook_post"
    layers = sorted({l for l, _ in addresses})
    means = _reference_mean(model, tokens, reference, name_of, layers) if how == "mean" else {}
    value = lambda l, i: 0.0 if how == "zero" else means[name_of(l)][..., i]  # [] or [pos]

    def hooks_for(group):
        def replace(post, hook):  # post: [batch, pos, d_mlp]
            post = post.clone()
            for l, i in group:
                if name_of(l) == hook.name:
                    post[..., i] = value(l, i)
            return post
        return [(name_of(l), replace) for l in sorted({l for l, _ in group})]

    clean = metric_value(metric, model(tokens))
    groups = [addresses] if together else [[a] for a in addresses]
    out = []
    for group in groups:
        with model.hooks(hooks_for(group)):
            out.append(metric_value(metric, model(tokens)) - clean)
    return torch.tensor(out[0]) if together else torch.tensor(out)
