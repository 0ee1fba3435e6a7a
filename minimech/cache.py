"""ActivationCache: the activations of one forward pass, by hook name, and the residual stream taken apart.

    logits, cache = model.run_with_cache(tokens)
    cache["blocks.3.hook_resid_pre"]      # full name
    cache["resid_pre", 3]                 # short form, as TransformerLens's cache["resid_pre", 3]
    cache.decompose_resid(3, "pre")       # embed + pos_embed + every earlier head, attention bias and MLP
"""

from __future__ import annotations

import difflib

import torch

from .errors import MinimechError, check_positions
from .hooks import act_name


class CacheKeyError(MinimechError, KeyError):
    def __str__(self):
        return self.args[0]


class Components:
    """A labelled stack of tensors: `tensor` is [component, ...] and `labels[i]` names component i.

    Returned by decompose_resid (components that add up to a residual stream) and accumulated_resid (the residual
    stream after each layer, for the logit lens).
    """

    def __init__(self, labels: list[str], tensor: torch.Tensor):
        if len(labels) != tensor.shape[0]:
            raise ValueError(f"{len(labels)} labels for {tensor.shape[0]} components")
        self.labels, self.tensor = list(labels), tensor

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, label: str) -> torch.Tensor:
        try:
            return self.tensor[self.labels.index(label)]
        except ValueError:
            close = difflib.get_close_matches(label, self.labels, n=3)
            raise CacheKeyError(f"no component {label!r}; did you mean {close}? (all: .labels)") from None

    def items(self):
        return zip(self.labels, self.tensor)

    def sum(self) -> torch.Tensor:
        return self.tensor.sum(0)

    def norms(self) -> torch.Tensor:  # [component, ...]: the L2 norm of each over d_model
        return self.tensor.norm(dim=-1)

    def __repr__(self) -> str:
        shown = ", ".join(self.labels[:6]) + (", ..." if len(self) > 6 else "")
        return f"Components: {len(self)} of shape {tuple(self.tensor.shape[1:])} [{shown}]"


class ActivationCache:
    def __init__(self, store: dict[str, torch.Tensor], model):
        self.store, self.model = store, model

    # ---- access by name -------------------------------------------------------------------------------------
    def _name(self, key) -> str:
        if isinstance(key, tuple):
            return act_name(*key, n_layers=self.model.cfg.n_layers)
        if not isinstance(key, str):
            raise CacheKeyError(f"cache keys are hook names ('blocks.0.attn.hook_pattern') or (short name, layer) "
                                f"tuples (('pattern', 0)), not {type(key).__name__} {key!r}")
        return key

    def __getitem__(self, key) -> torch.Tensor:
        name = self._name(key)
        if name in self.store:
            return self.store[name]
        if name in self.model.hook_dict:
            raise CacheKeyError(f"{name} was not cached: run_with_cache(tokens, names=...) left it out; "
                                "add it to names (hook_result is cached only when named)")
        close = difflib.get_close_matches(name, self.store, n=3, cutoff=0.5)
        raise CacheKeyError(f"no activation named {name!r} in this model; did you mean {close}?")

    def __contains__(self, key) -> bool:
        try:
            return self._name(key) in self.store
        except (MinimechError, ValueError, KeyError, TypeError):  # a key that names nothing is simply not cached
            return False

    def __len__(self) -> int:
        return len(self.store)

    def __iter__(self):
        return iter(self.store)

    def keys(self):
        return self.store.keys()

    def items(self):
        return self.store.items()

    def to(self, device) -> "ActivationCache":
        return ActivationCache({k: v.to(device) for k, v in self.store.items()}, self.model)

    def __repr__(self) -> str:
        return f"ActivationCache with {len(self)} activations of {self.model.cfg.model_name!r}"

    # ---- the residual stream taken apart ---------------------------------------------------------------------
    def _select(self, x: torch.Tensor, pos) -> torch.Tensor:  # x: [batch, pos, ...]
        check_positions(pos, x.shape[1])
        return x if pos is None else x[:, pos]

    def head_results(self, layer: int, pos=None) -> torch.Tensor:  # [head, batch, (pos,) d_model]
        """Every head's write of this layer, from hook_result if cached, else from hook_z and W_O."""
        name = f"blocks.{layer}.attn.hook_result"
        if name in self.store:
            result = self.store[name]  # [batch, pos, head, d_model]
        else:
            z = self[f"blocks.{layer}.attn.hook_z"]  # [batch, pos, head, d_head]
            result = torch.einsum("bphe,hem->bphm", z, self.model.blocks[layer].attn.W_O.detach())
        return self._select(result, pos).movedim(-2, 0)

    def decompose_resid(self, layer: int | None = None, where: str = "pre", pos=None,
                        split_heads: bool = True) -> Components:
        """The residual stream at blocks.{layer}.hook_resid_{where} as the sum of what wrote it.

        Components: embed, pos_embed, then per earlier layer l: L{l}H{h} for each head (or L{l}ATTN with
        split_heads=False), L{l}attn_bias (b_O, which belongs to no head), L{l}MLP. layer=None or n_layers with
        where="pre" means the final residual stream (resid_post of the last block). pos selects positions.
        They sum to cache[resid_{where}, layer] up to float rounding.
        """
        n = self.model.cfg.n_layers
        layer = n if layer is None else (layer + n if layer < 0 else layer)
        if where not in ("pre", "mid", "post"):
            raise ValueError(f"where must be 'pre', 'mid' or 'post', got {where!r}")
        if not 0 <= layer <= n or (layer == n and where != "pre"):
            raise ValueError(f"layer must lie in [0, {n - 1}] (or be {n} with where='pre' for the final stream)")
        if where == "mid" and self.model.cfg.attn_only:
            raise ValueError("attention-only models have no resid_mid; use where='pre' or 'post'")
        labels = ["embed", "pos_embed"]
        parts = [self._select(self["hook_embed"], pos), self._select(self["hook_pos_embed"], pos)]
        full_layers = layer + (where == "post")
        for l in range(full_layers + (where == "mid")):
            attn = self.model.blocks[l].attn
            if split_heads:
                labels += [f"L{l}H{h}" for h in range(attn.cfg.n_heads)]
                parts += list(self.head_results(l, pos))
                labels.append(f"L{l}attn_bias")
                parts.append(attn.b_O.detach().expand_as(parts[0]))
            else:
                labels.append(f"L{l}ATTN")
                parts.append(self._select(self[f"blocks.{l}.hook_attn_out"], pos))
            if l < full_layers and not self.model.cfg.attn_only:
                labels.append(f"L{l}MLP")
                parts.append(self._select(self[f"blocks.{l}.hook_mlp_out"], pos))
        return Components(labels, torch.stack(parts))

    def resid(self, layer: int | None = None, where: str = "pre") -> torch.Tensor:
        """The residual stream itself; layer=None or n_layers with 'pre' is the final one (resid_post of the last)."""
        n = self.model.cfg.n_layers
        if layer is None or layer == n:
            return self[f"blocks.{n - 1}.hook_resid_post"]
        return self[f"resid_{where}", layer]

    def accumulated_resid(self, layer: int | None = None, pos=None, incl_mid: bool = False) -> Components:
        """The residual stream before each block up to and including block `layer`'s (TransformerLens's meaning);
        layer None, -1 or n_layers: before every block and the final stream.

        Labels: "L0_pre", ("L0_mid",) "L1_pre", ..., "final". The logit lens reads each through ln_final and W_U.
        """
        n = self.model.cfg.n_layers
        top = n if layer is None or layer == -1 else layer
        if not isinstance(top, int) or not 0 <= top <= n:
            raise CacheKeyError(f"layer={layer!r}: use 0 .. {n} (the stream before that block), or None / -1 for "
                                "every block and the final stream")
        labels, parts = [], []
        for l in range(min(top + 1, n)):
            labels.append(f"L{l}_pre")
            parts.append(self[f"blocks.{l}.hook_resid_pre"])
            if incl_mid and not self.model.cfg.attn_only and l < top:
                labels.append(f"L{l}_mid")
                parts.append(self[f"blocks.{l}.hook_resid_mid"])
        if top >= n:
            labels.append("final")
            parts.append(self[f"blocks.{n - 1}.hook_resid_post"])
        return Components(labels, torch.stack([self._select(p, pos) for p in parts]))

    def apply_ln_final(self, x: torch.Tensor, pos=None, recompute: bool = False) -> torch.Tensor:
        """ln_final applied to x [..., batch, pos, d_model] (or [..., batch, d_model] when pos selects one).

        By default it is the *linear* map the final LayerNorm applied in this run: centre, divide by the cached
        ln_final.hook_scale, multiply by w. It leaves out the bias b, a constant that belongs to no component, so
        that it distributes over sums: sum of apply_ln_final(component) + ln_final.b = ln_final(resid).
        recompute=True normalizes x by its own statistics and adds b (the plain logit lens of a residual stream).
        """
        ln = self.model.ln_final
        x = x - x.mean(-1, keepdim=True)
        if recompute:
            return x / (x.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt() * ln.w.detach() + ln.b.detach()
        scale = self._select(self["ln_final.hook_scale"], pos)  # [batch, pos, 1] or [batch, 1]
        if x.shape[-scale.ndim:-1] != scale.shape[:-1]:
            raise ValueError(f"x has shape {tuple(x.shape)}; its trailing dims must match the cached scale's "
                             f"{tuple(scale.shape[:-1])} + [d_model]: pass the same pos you used to select x")
        return x / scale * ln.w.detach()
