"""Activation patching: run the corrupted prompt, paste in one activation from the clean run, score the result.

If pasting a component's clean activation restores the clean behaviour, that component (at that position) carries
the information that distinguishes the two prompts. As in TransformerLens's `patching` module, each clean
activation is patched into the corrupted run and the result is metric(patched run); `reverse=True` patches each
corrupted activation into the clean run instead. normalise=True rescales to

    (metric(patched) - metric(corrupt)) / (metric(clean) - metric(corrupt))

so 1 means "behaves like the clean run" and 0 "like the corrupted run", in either direction.

Two ways to compute the same numbers:
- method="naive": one full forward per patch, with a hook that overwrites the activation (what TransformerLens,
  nnsight and raw hooks do). Slow, obviously right; tests hold the fast path to it.
- method="fast" (default): reuse the corrupted run below the patched layer and before the patched position, batch
  the patches, and compute only the logits the metric reads (see fastpatch.py). Build the metric with
  `logit_diff(correct, wrong)` to get the last saving; any other function of the logits works too.
Clean and corrupted prompts must have the same shape, since activations are swapped position by position.
"""

from __future__ import annotations

import torch

from ..errors import MinimechError
from .ablation import Metric, metric_value, require_mlps
from .fastpatch import FastBlock, Suffix, Target, finish_mlp, run_suffixes

RESID_HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
HEAD_COMPONENTS = {"z": "attn.hook_z", "result": "attn.hook_z", "q": "attn.hook_q", "k": "attn.hook_k",
                   "v": "attn.hook_v", "pattern": "attn.hook_pattern"}


class PatchingError(MinimechError, ValueError):
    """Prompts, hooks or metric values that activation patching cannot use."""


class _Setup:
    """Checked prompts, who patches into whom, and the two runs every patch starts from: the source run (cached at
    source_names) and the target run (a Target for the fast path, cached also at target_names; None: logits only).
    The metric on the clean and corrupted runs comes from these two forwards' logits."""

    def __init__(self, model, clean, corrupt, metric, normalise: bool, reverse: bool, source_names,
                 target_names=None):
        clean, corrupt = model.check_tokens(clean), model.check_tokens(corrupt)  # [batch, pos] each
        if clean.shape != corrupt.shape:
            raise PatchingError(f"clean tokens have shape {tuple(clean.shape)} but corrupted tokens have shape "
                                f"{tuple(corrupt.shape)}: patching swaps activations position by position, so "
                                "they must match (choose prompts with the same number of tokens)")
        self.source, self.target = (corrupt, clean) if reverse else (clean, corrupt)
        source_logits, self.source_cache = model.run_with_cache(self.source, names=source_names)
        if target_names is None:
            self.target_run, target_logits = None, model(self.target)
        else:
            self.target_run = Target(model, self.target, extra_names=target_names)
            target_logits = self.target_run.logits
        m_source, m_target = metric_value(metric, source_logits), metric_value(metric, target_logits)
        self.m_clean, self.m_corrupt = (m_target, m_source) if reverse else (m_source, m_target)
        if normalise and self.m_clean == self.m_corrupt:
            raise PatchingError(f"the metric is {self.m_clean:.6g} on both the clean and the corrupted prompt, so "
                                "the normalised score (m - m_corrupt) / (m_clean - m_corrupt) is undefined: choose "
                                "prompts the metric tells apart, or pass normalise=False")
        self.normalise = normalise

    def score(self, values: torch.Tensor) -> torch.Tensor:
        if not self.normalise:
            return values
        return (values - self.m_corrupt) / (self.m_clean - self.m_corrupt)


def _check_method(method: str) -> None:
    if method not in ("fast", "naive"):
        raise PatchingError(f"method={method!r}: choose 'fast' (batched, exact) or 'naive' (one forward per patch)")


def _naive_patch(model, target, metric, name: str, source_act: torch.Tensor, index) -> float:
    """metric of the target run with act[index] replaced by source_act[index] at hook `name`."""
    def hook(act, hook):
        act = act.clone()
        act[index] = source_act[index]
        return act

    with model.hooks([(name, hook)]):
        return metric_value(metric, model(target))


def _hook_name(model, hook: str, layer: int) -> str:
    if hook not in RESID_HOOKS:
        raise PatchingError(f"hook={hook!r}: choose one of {', '.join(RESID_HOOKS)}")
    if model.cfg.attn_only and hook in ("resid_mid", "mlp_out"):
        require_mlps(model, f"patching {hook}")
    return f"blocks.{layer}.hook_{hook}"


def _position_suffixes(model, target: Target, source_cache, hook: str, target_cache) -> list[Suffix]:
    """A Suffix for every (layer, position): the target's stream with one position of `hook` from the source.

    Patching any of the stream's hooks at (layer, p) changes the residual stream at position p only, until the next
    block's attention spreads it; so each patch is "resid_pre of some block differs at position p".
    """
    suffixes = []
    for layer, block in enumerate(model.blocks):
        name = _hook_name(model, hook, layer)
        for p in range(target.n_pos):
            if hook == "resid_pre":
                start, new = layer, source_cache[name][:, p]  # [batch, d_model]
            else:
                start = layer + 1
                if hook == "resid_post":
                    new = source_cache[name][:, p]
                elif hook == "mlp_out":
                    new = target_cache[f"blocks.{layer}.hook_resid_mid"][:, p] + source_cache[name][:, p]
                else:  # the stream after attention is patched, then this block's MLP runs on it
                    mid = (source_cache[name][:, p] if hook == "resid_mid" else
                           target_cache[f"blocks.{layer}.hook_resid_pre"][:, p] + source_cache[name][:, p])
                    new = finish_mlp(block, mid)
            rest = (target.resid_pre(start)[:, p + 1:] if start < model.cfg.n_layers
                    else target_cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"][:, p + 1:])
            suffixes.append(Suffix((layer, p), start, p, torch.cat([new[:, None], rest], dim=1)))
    return suffixes


@torch.no_grad()
def patch_resid(model, clean_tokens, corrupted_tokens, metric: Metric, hook: str = "resid_pre",
                normalise: bool = False, reverse: bool = False, method: str = "fast") -> torch.Tensor:
    """[n_layers, pos]: metric with the clean `hook` activation of one (layer, position) patched into the corrupted
    run. hook: resid_pre, resid_mid, resid_post, attn_out or mlp_out (all heads of the layer at once)."""
    _check_method(method)
    n_layers = model.cfg.n_layers
    names = [_hook_name(model, hook, l) for l in range(n_layers)]
    extra = [f"blocks.{l}.hook_{h}" for l in range(n_layers) for h in ("resid_pre", "resid_mid", "resid_post")
             if not (model.cfg.attn_only and h == "resid_mid")]
    setup = _Setup(model, clean_tokens, corrupted_tokens, metric, normalise, reverse, source_names=names,
                   target_names=extra if method == "fast" else None)
    source_cache, n_pos = setup.source_cache, setup.target.shape[1]
    out = torch.zeros(n_layers, n_pos)
    if method == "naive":
        for layer, name in enumerate(names):
            for p in range(n_pos):  # index (all batch rows, position p) of an activation [batch, pos, ...]
                out[layer, p] = _naive_patch(model, setup.target, metric, name, source_cache[name], (slice(None), p))
        return setup.score(out)
    target = setup.target_run
    target_cache = target.cache
    results = run_suffixes(model, target, _position_suffixes(model, target, source_cache, hook, target_cache), metric)
    for (layer, p), value in results.items():
        out[layer, p] = value
    return setup.score(out)


def patch_mlps(model, clean_tokens, corrupted_tokens, metric: Metric, **kwargs) -> torch.Tensor:
    """[n_layers, pos]: patch_resid at hook_mlp_out (each layer's MLP output at one position)."""
    require_mlps(model, "patch_mlps")
    return patch_resid(model, clean_tokens, corrupted_tokens, metric, hook="mlp_out", **kwargs)


def patch_attn(model, clean_tokens, corrupted_tokens, metric: Metric, **kwargs) -> torch.Tensor:
    """[n_layers, pos]: patch_resid at hook_attn_out (all heads of a layer together, at one position)."""
    return patch_resid(model, clean_tokens, corrupted_tokens, metric, hook="attn_out", **kwargs)


def _head_suffixes(model, target: Target, source_z, target_cache, positions) -> list[Suffix]:
    """Suffixes for patching hook_z of one head: at every position (positions=None) or at each given one."""
    suffixes = []
    for layer, block in enumerate(model.blocks):
        mid = target_cache[f"blocks.{layer}.hook_resid_mid" if not model.cfg.attn_only
                           else f"blocks.{layer}.hook_resid_post"]  # [batch, pos, d_model]
        delta_z = source_z[layer] - target_cache[f"blocks.{layer}.attn.hook_z"]  # [batch, pos, head, d_head]
        # each head's change of attn_out: [head, batch, pos, d_model]
        deltas = torch.einsum("bphe,hem->hbpm", delta_z, block.attn.W_O)
        fast = FastBlock(block)
        for p in positions:
            if p is None:  # every position patched: the suffix starts at position 0
                first, delta = 0, deltas
            else:  # only position p changes in this block; later positions change only through later attention
                first, delta = p, torch.zeros_like(deltas[:, :, p:])
                delta[:, :, 0] = deltas[:, :, p]
            new = fast.finish_mlp(mid[None, :, first:] + delta)  # [head, batch, pos - first, d_model]
            for head in range(model.cfg.n_heads):
                key = (layer, head) if p is None else (layer, head, p)
                suffixes.append(Suffix(key, layer + 1, first, new[head]))
    return suffixes


@torch.no_grad()
def patch_heads(model, clean_tokens, corrupted_tokens, metric: Metric, component: str = "z", pos=None,
                normalise: bool = False, reverse: bool = False, method: str = "fast") -> torch.Tensor:
    """[n_layers, n_heads]: metric with one head's clean activation patched into the corrupted run.

    component: z (= result: the head's output), q, k, v or pattern. pos: None patches every position at once (as
    TransformerLens's get_act_patch_attn_head_out_all_pos), an int patches that position only, and "each" gives
    [n_layers, n_heads, pos], one patch per position.
    """
    _check_method(method)
    if component not in HEAD_COMPONENTS:
        raise PatchingError(f"component={component!r}: choose one of {', '.join(HEAD_COMPONENTS)}")
    cfg = model.cfg
    clean_tokens, corrupted_tokens = model.check_tokens(clean_tokens), model.check_tokens(corrupted_tokens)
    n_pos = clean_tokens.shape[-1]
    if pos == "each":
        positions = list(range(n_pos))
    elif pos is None:
        positions = [None]
    elif isinstance(pos, int) and -n_pos <= pos < n_pos:
        positions = [pos % n_pos]
    else:
        raise PatchingError(f"pos={pos!r}: use None (all positions at once), 'each', or a position in "
                            f"[{-n_pos}, {n_pos})")
    names = [f"blocks.{l}.{HEAD_COMPONENTS[component]}" for l in range(cfg.n_layers)]
    fast = method == "fast" and component in ("z", "result")
    extra = [f"blocks.{l}.{h}" for l in range(cfg.n_layers)
             for h in ("attn.hook_z", "hook_resid_post" if cfg.attn_only else "hook_resid_mid")]
    setup = _Setup(model, clean_tokens, corrupted_tokens, metric, normalise, reverse, source_names=names,
                   target_names=extra if fast else None)
    source_cache = setup.source_cache
    shape = (cfg.n_layers, cfg.n_heads) + ((n_pos,) if pos == "each" else ())
    out = torch.zeros(shape)
    if not fast:
        for layer, name in enumerate(names):
            for head in range(cfg.n_heads):
                for p in positions:
                    where = slice(None) if p is None else p
                    # hook_pattern is [batch, head, q_pos, k_pos]; the others are [batch, pos, head, d]
                    index = (slice(None), head, where) if component == "pattern" else (slice(None), where, head)
                    key = (layer, head) if pos != "each" else (layer, head, p)
                    out[key] = _naive_patch(model, setup.target, metric, name, source_cache[name], index)
        return setup.score(out)
    target = setup.target_run
    target_cache = target.cache
    source_z = [source_cache[n] for n in names]
    for key, value in run_suffixes(model, target, _head_suffixes(model, target, source_z, target_cache, positions),
                                   metric).items():
        out[key if pos == "each" else key[:2]] = value
    return setup.score(out)
