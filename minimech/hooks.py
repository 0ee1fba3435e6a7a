"""Hook points: named places in the forward pass where an activation can be read or replaced.

Every activation of the model passes through a `HookPoint`. With no hook attached, a HookPoint returns its input
untouched (one list check), so a plain forward costs what a model without hook points costs. A hook is a function
`fn(activation, hook) -> None | Tensor`: returning None only reads; returning a tensor replaces the activation
(it must keep the shape). Hooks are attached for the duration of a `with model.hooks([...]):` block and removed when
it exits, also when a hook or the forward raises.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Callable, Iterable

import torch
from torch import nn

from .errors import MinimechError

HookFn = Callable[[torch.Tensor, "HookPoint"], "torch.Tensor | None"]
NameFilter = "str | Iterable[str] | Callable[[str], bool] | None"


# TransformerLens's optional hook points and the switch that adds each (tl_compat.py)
OPTIONAL_HOOKS = {"hook_attn_in": "set_use_attn_in", "hook_q_input": "set_use_split_qkv_input",
                  "hook_k_input": "set_use_split_qkv_input", "hook_v_input": "set_use_split_qkv_input",
                  "hook_mlp_in": "set_use_hook_mlp_in"}


class UnknownHookError(MinimechError, KeyError):
    def __str__(self):  # KeyError would quote the message; show it as a sentence
        return self.args[0]


class HookShapeError(MinimechError):
    """A hook returned a tensor whose shape differs from the activation it replaces."""


class HookPoint(nn.Module):
    """The identity, plus the hooks attached to one named activation."""

    def __init__(self):
        super().__init__()
        self.name: str = ""  # set by the model to the attribute path, e.g. "blocks.3.attn.hook_z"
        self.fns: list[HookFn] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fns:
            return x
        for fn in list(self.fns):
            out = fn(x, self)
            if out is None:
                continue
            if not isinstance(out, torch.Tensor):
                raise HookShapeError(f"hook on {self.name} returned {type(out).__name__}; return a Tensor or None")
            if out.shape != x.shape:
                raise HookShapeError(
                    f"hook on {self.name} returned shape {tuple(out.shape)} but the activation has shape "
                    f"{tuple(x.shape)}: return a tensor of the same shape (or None to only read)"
                )
            x = out
        return x

    @property
    def is_hooked(self) -> bool:
        return bool(self.fns)

    def extra_repr(self) -> str:
        return f"{self.name!r}, {len(self.fns)} hook(s)" if self.fns else repr(self.name)


# Short names as in TransformerLens's utils.get_act_name: ("resid_pre", 3) -> "blocks.3.hook_resid_pre".
_BLOCK_SHORT = {
    "resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
    "q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "z": "attn.hook_z", "result": "attn.hook_result",
    "attn_scores": "attn.hook_attn_scores", "scores": "attn.hook_attn_scores",
    "pattern": "attn.hook_pattern", "attn": "attn.hook_pattern",
    "pre": "mlp.hook_pre", "post": "mlp.hook_post", "mlp_pre": "mlp.hook_pre", "mlp_post": "mlp.hook_post",
}


def act_name(short: str, layer: int | None = None, sub: str | None = None, n_layers: int | None = None) -> str:
    """Full hook name from a short form: act_name("pattern", 1) -> "blocks.1.attn.hook_pattern".

    ("scale", 3, "ln1") names blocks.3.ln1.hook_scale; "scale" with no layer is ln_final's. A negative layer counts
    from the end when n_layers is given.
    """
    if short in ("embed", "pos_embed"):
        return f"hook_{short}"
    if short in ("scale", "normalized"):
        if layer is None:
            return f"ln_final.hook_{short}"
        if sub not in ("ln1", "ln2"):
            raise UnknownHookError(f"({short!r}, {layer}) needs 'ln1' or 'ln2' as a third part, e.g. ('scale', {layer}, 'ln1')")
    elif short not in _BLOCK_SHORT:
        close = difflib.get_close_matches(short, list(_BLOCK_SHORT) + ["embed", "pos_embed", "scale", "normalized"])
        raise UnknownHookError(f"unknown short activation name {short!r}; did you mean {close}?")
    if layer is None:
        raise UnknownHookError(f"{short!r} is per block: give a layer, e.g. ({short!r}, 0)")
    if layer < 0 and n_layers is not None:
        layer += n_layers
    if short in ("scale", "normalized"):
        return f"blocks.{layer}.{sub}.hook_{short}"
    return f"blocks.{layer}.{_BLOCK_SHORT[short]}"


class HookedModule(nn.Module):
    """Mixin for the root model: finds its HookPoints by name and attaches hooks for the length of a block."""

    def setup_hooks(self) -> None:
        """Name every HookPoint by its attribute path; call once at the end of __init__."""
        self.hook_dict: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    @property
    def hook_names(self) -> list[str]:
        return list(self.hook_dict)

    def resolve_hook_names(self, names) -> list[str]:
        """Hook names selected by a name, a (short, layer) tuple, a list of those, or a predicate on names."""
        if names is None:
            return self.hook_names
        if callable(names):
            return [n for n in self.hook_dict if names(n)]
        if isinstance(names, str) or _is_short_key(names):
            names = [names]
        resolved = []
        for name in names:
            if isinstance(name, tuple):
                name = act_name(*name, n_layers=self.cfg.n_layers)
            if name not in self.hook_dict:
                close = difflib.get_close_matches(name, self.hook_dict, n=3, cutoff=0.5)
                hint = f"; did you mean {', '.join(close)}?" if close else "; see model.hook_names for all"
                switch = next((f for suffix, f in OPTIONAL_HOOKS.items() if name.endswith(suffix)), None)
                if switch:  # one of TransformerLens's optional input hooks, not switched on
                    hint = f": it exists after model.{switch}(True), as in TransformerLens"
                raise UnknownHookError(f"no hook point named {name!r} in this model{hint}")
            resolved.append(name)
        return resolved

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[object, HookFn]] = ()):
        """Attach `(name, fn)` hooks inside the block; `name` may also be a predicate or a (short, layer) tuple."""
        attached: list[tuple[HookPoint, HookFn]] = []
        if isinstance(fwd_hooks, tuple) and len(fwd_hooks) == 2 and callable(fwd_hooks[1]):
            fwd_hooks = [fwd_hooks]  # one (name, fn) pair given without the list around it
        try:
            for name, fn in fwd_hooks:
                if not callable(fn):
                    raise TypeError(f"the hook for {name!r} is {type(fn).__name__}, not a function fn(activation, hook)")
                for resolved in self.resolve_hook_names(name):
                    point = self.hook_dict[resolved]
                    point.fns.append(fn)
                    attached.append((point, fn))
            yield self
        finally:
            for point, fn in reversed(attached):
                point.fns.remove(fn)

    def run_with_hooks(self, tokens, fwd_hooks=(), **forward_kwargs):
        with self.hooks(fwd_hooks):
            return self(tokens, **forward_kwargs)

    def reset_hooks(self) -> None:
        """Remove every hook from every hook point (for hooks attached by hand to `hook.fns`)."""
        for point in self.hook_dict.values():
            point.fns.clear()

    def run_with_cache(self, tokens, names=None, *, grad: bool = False, names_filter=None, **forward_kwargs):
        """Run the model and keep the activations selected by `names` (all of them by default).

        Returns (logits, ActivationCache). `hook_result` (each head's output in d_model) is computed only when it is
        named explicitly (or after model.set_use_attn_result(True)), as it costs n_heads times the attention output's
        memory. Activations are detached unless
        grad=True; the forward runs without autograd unless grad=True.
        """
        from .cache import ActivationCache
        from .memory import default_on_first_cache

        default_on_first_cache()  # a cache needs fresh memory each run: let malloc keep what the last one freed
        if names_filter is not None:  # TransformerLens's name for the same argument
            if names is not None:
                raise UnknownHookError("give names or names_filter (the same argument), not both")
            names = names_filter
        if names is None:  # hook_result too after model.set_use_attn_result(True), as in TransformerLens
            keep_result = getattr(self.cfg, "use_attn_result", False)
            selected = [n for n in self.hook_names if keep_result or not n.endswith("hook_result")]
        else:
            selected = self.resolve_hook_names(names)
        store: dict[str, torch.Tensor] = {}

        def save(x, hook):
            store[hook.name] = x if grad else x.detach()

        with torch.set_grad_enabled(grad and torch.is_grad_enabled()), self.hooks([(n, save) for n in selected]):
            out = self(tokens, **forward_kwargs)
        return out, ActivationCache(store, self)


def _is_short_key(names) -> bool:
    """A (short name, layer, ...) tuple such as ("pattern", 1), as opposed to a tuple of hook names."""
    return isinstance(names, tuple) and len(names) >= 2 and isinstance(names[0], str) and isinstance(names[1], int)
