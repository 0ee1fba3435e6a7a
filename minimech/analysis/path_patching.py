"""Path patching (Wang et al. 2022, section 3.1): how much of a behaviour flows along the path sender -> receiver.

Activation patching asks "does this head matter?"; path patching asks "does it matter *because of what it tells
these receivers*?". Direction (as in TransformerLens / ARENA): the base run is the CLEAN prompt, and the senders'
outputs come from the CORRUPT prompt, so the result says how far the metric falls when only the senders' effect on
the receivers is corrupted. Two runs on the clean tokens:

1. Senders' hook_z are set to their corrupt values; every other head's hook_z is frozen at its clean value, so the
   corrupt signal cannot travel through other heads. MLPs and LayerNorms are recomputed (paths through MLPs count
   as direct, as in the paper; freeze_mlps=True freezes them at their clean values too). Record the receivers'
   inputs: their hook_q / hook_k / hook_v, or, with receivers=None, the final residual stream ("to the logits").
2. A normal clean run, except that the receivers' inputs (at `positions`) are replaced by the values recorded in 1.
   Everything downstream of the receivers is recomputed; the metric is read from this run.

With identical clean and corrupt prompts nothing changes; with one sender in the last layer and receivers=None the
result equals plain activation patching of that head's z (both tested).
"""

from __future__ import annotations

import re

import torch

from .ablation import Metric, metric_value
from .patching import PatchingError

RECEIVER_INPUTS = ("q", "k", "v")


class PathPatchingError(PatchingError):
    """Senders, receivers or positions that path patching cannot use."""


def parse_heads(model, heads) -> list[tuple[int, int]]:
    """(layer, head) pairs from (layer, head) tuples, "L1H2" strings or Head objects, checked against the model."""
    one_pair = isinstance(heads, tuple) and len(heads) == 2 and all(isinstance(x, int) for x in heads)
    if isinstance(heads, str) or one_pair or hasattr(heads, "layer"):
        heads = [heads]  # one head given on its own
    cfg, out = model.cfg, []
    for h in heads:
        if isinstance(h, str):
            match = re.fullmatch(r"\s*L(\d+)H(\d+)\s*", h)
            if not match:
                raise PathPatchingError(f"cannot read {h!r} as a head: write it as 'L1H2' (layer 1, head 2)")
            layer, head = map(int, match.groups())
        elif hasattr(h, "layer") and hasattr(h, "index"):
            layer, head = h.layer, h.index
        else:
            try:
                layer, head = (int(x) for x in h)
            except (TypeError, ValueError):
                raise PathPatchingError(f"cannot read {h!r} as a head: give (layer, head) or 'L1H2'") from None
        if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
            raise PathPatchingError(f"head L{layer}H{head} does not exist: this model has {cfg.n_layers} layers x "
                                    f"{cfg.n_heads} heads (L0H0 ... L{cfg.n_layers - 1}H{cfg.n_heads - 1})")
        out.append((layer, head))
    return list(dict.fromkeys(out))


def _by_layer(heads: list[tuple[int, int]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, head in heads:
        out.setdefault(layer, []).append(head)
    return out


def _position_mask(positions, batch: int, n_pos: int) -> torch.Tensor:
    """[batch, pos] bool: where receivers' inputs are patched. None: everywhere; an int: that position in every
    prompt; a 1-d tensor/list of length batch: one position per prompt (e.g. an IOIDataset's end_pos)."""
    mask = torch.zeros(batch, n_pos, dtype=torch.bool)
    if positions is None:
        return mask.fill_(True)
    where = torch.as_tensor(positions)
    if where.dtype not in (torch.int64, torch.int32) or where.ndim > 1 or (where.ndim == 1 and len(where) != batch):
        raise PathPatchingError(f"positions must be None, an int, or one int per prompt ({batch}), got "
                                f"{positions!r}")
    if ((where < -n_pos) | (where >= n_pos)).any():
        raise PathPatchingError(f"positions {where.tolist()} lie outside the prompts' {n_pos} positions")
    mask[torch.arange(batch), where.expand(batch) % n_pos] = True
    return mask


def _check_receivers(model, senders, receivers, receiver_input):
    """(receiver heads by layer or None, tuple of receiver inputs), with one clear error per misuse."""
    if receivers is None:
        if receiver_input not in (None, "resid"):
            raise PathPatchingError(f"receiver_input={receiver_input!r} needs receiver heads; with receivers=None "
                                    "the path ends at the final residual stream (receiver_input='resid')")
        return None, ("resid",)
    if receiver_input == "resid":
        raise PathPatchingError("receiver_input='resid' means the final residual stream: pass receivers=None, or "
                                "name the heads' input to patch ('q', 'k' or 'v')")
    inputs = (receiver_input,) if isinstance(receiver_input, str) else tuple(receiver_input or ())
    if not inputs or set(inputs) - set(RECEIVER_INPUTS):
        raise PathPatchingError(f"receiver_input must be 'q', 'k', 'v' (or several of them) for receiver heads, "
                                f"got {receiver_input!r}")
    heads = parse_heads(model, receivers)
    if not heads:
        raise PathPatchingError("receivers is empty: give receiver heads, or receivers=None for the logits")
    last = max(layer for layer, _ in heads)
    late = [f"L{l}H{h}" for l, h in senders if l >= last]
    if late:
        raise PathPatchingError(f"senders {late} are not before any receiver (the latest is in layer {last}): a "
                                "head can only send to heads in later layers")
    return _by_layer(heads), inputs


def _record_hooks(model, receivers, inputs, store: dict):
    """Hooks that save the receivers' inputs (or the final residual stream) of the run they are attached to."""
    def save(act, hook):
        store[hook.name] = act.clone()

    if receivers is None:
        return [(f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", save)]
    return [(f"blocks.{l}.attn.hook_{x}", save) for l in receivers for x in inputs]


def _patch_hooks(model, receivers, inputs, store: dict, mask: torch.Tensor):
    """Hooks that write the stored receiver inputs back, at the receiver heads and the masked positions only."""
    def patch_resid(act, hook):  # [batch, pos, d_model]
        return torch.where(mask[..., None], store[hook.name], act)

    def patch_heads(heads):
        def hook(act, hook):  # [batch, pos, head, d_head]
            act = act.clone()
            act[:, :, heads] = torch.where(mask[..., None, None], store[hook.name][:, :, heads], act[:, :, heads])
            return act
        return hook

    if receivers is None:
        return [(f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", patch_resid)]
    return [(f"blocks.{l}.attn.hook_{x}", patch_heads(hs)) for l, hs in receivers.items() for x in inputs]


def _freeze_hooks(model, senders: dict[int, list[int]], clean_cache, corrupt_cache, freeze_mlps: bool):
    """Step 1's hooks: every head's z clean except the senders' (corrupt); optionally every MLP output clean."""
    def z_hook(layer):
        def hook(z, hook):  # [batch, pos, head, d_head]
            z = clean_cache[hook.name].clone()
            z[:, :, senders.get(layer, [])] = corrupt_cache[hook.name][:, :, senders.get(layer, [])]
            return z
        return hook

    hooks = [(f"blocks.{l}.attn.hook_z", z_hook(l)) for l in range(model.cfg.n_layers)]
    if freeze_mlps and not model.cfg.attn_only:
        hooks += [(f"blocks.{l}.hook_mlp_out", lambda act, hook: clean_cache[hook.name])
                  for l in range(model.cfg.n_layers)]
    return hooks


def _caches(model, clean, corrupt, freeze_mlps: bool):
    clean, corrupt = model.check_tokens(clean), model.check_tokens(corrupt)  # [batch, pos] each
    if clean.shape != corrupt.shape:
        raise PathPatchingError(f"clean tokens have shape {tuple(clean.shape)} but corrupt tokens "
                                f"{tuple(corrupt.shape)}: path patching swaps activations position by position, "
                                "so they must match")
    names = lambda n: n.endswith("attn.hook_z") or (freeze_mlps and n.endswith("hook_mlp_out"))
    clean_logits, clean_cache = model.run_with_cache(clean, names=names)
    corrupt_logits, corrupt_cache = model.run_with_cache(corrupt, names=lambda n: n.endswith("attn.hook_z"))
    return clean, clean_logits, clean_cache, corrupt_logits, corrupt_cache


def _path_patch(model, clean, caches, metric, senders, receivers, inputs, mask, freeze_mlps) -> float:
    clean_cache, corrupt_cache = caches
    store: dict[str, torch.Tensor] = {}
    step1 = _freeze_hooks(model, _by_layer(senders), clean_cache, corrupt_cache, freeze_mlps)
    with model.hooks(step1 + _record_hooks(model, receivers, inputs, store)):
        model(clean, return_type=None)
    with model.hooks(_patch_hooks(model, receivers, inputs, store, mask)):
        return metric_value(metric, model(clean))


@torch.no_grad()
def path_patch(model, clean_tokens, corrupt_tokens, metric: Metric, senders, receivers=None,
               receiver_input=None, positions=None, freeze_mlps: bool = False) -> float:
    """metric after patching the path senders -> receivers with the senders' corrupt outputs (see module doc).

    senders, receivers: (layer, head) pairs or "L1H2" strings. receivers=None: the path ends at the logits (the
    final residual stream). receiver_input: "q", "k" or "v" (or several, e.g. ("k", "v")) for receiver heads.
    positions: where receivers' inputs are patched: None (all), an int, or one position per prompt.
    """
    senders = parse_heads(model, senders)
    if not senders:
        raise PathPatchingError("senders is empty: give at least one sender head, e.g. ['L0H1']")
    receivers, inputs = _check_receivers(model, senders, receivers, receiver_input)
    clean, _, clean_cache, _, corrupt_cache = _caches(model, clean_tokens, corrupt_tokens, freeze_mlps)
    mask = _position_mask(positions, *clean.shape)  # [batch, pos]
    return _path_patch(model, clean, (clean_cache, corrupt_cache), metric, senders, receivers, inputs, mask,
                       freeze_mlps)


@torch.no_grad()
def path_patch_heads(model, clean_tokens, corrupt_tokens, metric: Metric, receivers=None, receiver_input=None,
                     positions=None, normalise: bool = False, freeze_mlps: bool = False) -> torch.Tensor:
    """[n_layers, n_heads]: path_patch with each head as the only sender; NaN for heads in layers at or after the
    earliest receiver (they cannot send to it).

    normalise=False: the metric itself (as patch_heads). normalise=True: (m - m_clean) / (m_clean - m_corrupt), so
    0 = the path carries nothing and -1 = corrupting this one path costs as much as corrupting the whole prompt
    (ARENA's convention for path patching; it is patching.py's normalised score minus 1).
    """
    clean, clean_logits, clean_cache, corrupt_logits, corrupt_cache = _caches(model, clean_tokens, corrupt_tokens,
                                                                              freeze_mlps)
    cfg = model.cfg
    first = cfg.n_layers
    if receivers is not None:
        first = min(layer for layer, _ in parse_heads(model, receivers)) if receivers else 0
    receivers_by_layer, inputs = _check_receivers(model, [], receivers, receiver_input)
    m_clean, m_corrupt = metric_value(metric, clean_logits), metric_value(metric, corrupt_logits)
    if normalise and m_clean == m_corrupt:
        raise PathPatchingError(f"the metric is {m_clean:.6g} on both prompts, so the normalised score is "
                                "undefined: choose prompts the metric tells apart, or pass normalise=False")
    mask = _position_mask(positions, *clean.shape)  # [batch, pos]
    out = torch.full((cfg.n_layers, cfg.n_heads), float("nan"))
    for layer in range(first):
        for head in range(cfg.n_heads):
            m = _path_patch(model, clean, (clean_cache, corrupt_cache), metric, [(layer, head)], receivers_by_layer,
                            inputs, mask, freeze_mlps)
            out[layer, head] = (m - m_clean) / (m_clean - m_corrupt) if normalise else m
    return out
