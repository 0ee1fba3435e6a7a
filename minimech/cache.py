"""ActivationCache: the activations of one forward pass, by hook name, and the residual stream taken apart.

    logits, cache = model.run_with_cache(tokens)
    cache["blocks.3.hook_resid_pre"]      # full name
    cache["resid_pre", 3]                 # short form, as TransformerLens's cache["resid_pre", 3]
    cache.decompose_resid(3, "pre")       # embed + pos_embed + every earlier head, attention bias and MLP
    cache.accumulated_resid()             # the logit lens's points, a tensor with .labels

TransformerLens's stacks keep its names, arguments and meanings: stack_head_results, stack_neuron_results,
stack_activation, apply_ln_to_stack, logit_attrs, get_full_resid_decomposition (tests/test_tl_parity.py).
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

    Returned by decompose_resid (components that add up to a residual stream); `.sum()` adds the components up.
    (accumulated_resid returns a LabelledTensor, a tensor with the same `.labels`, `.tensor` and `[label]`.)
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


class LabelledTensor(torch.Tensor):
    """A plain tensor [component, ...] whose components have names: `x.labels[i]` names x[i], and `x["L3_pre"]` is
    that component. Everything else is torch's: `x @ W_U`, `x.shape`, `x[0]`, `x.sum()` (of every element) give
    plain tensors. `x.tensor` is the same data as a plain tensor (what the older Components object held).

    Returned by cache.accumulated_resid (the logit lens's points).
    """

    __torch_function__ = torch._C._disabled_torch_function_impl  # every operation returns a plain torch.Tensor

    @staticmethod
    def __new__(cls, tensor: torch.Tensor, labels: list[str]):
        if len(labels) != tensor.shape[0]:
            raise ValueError(f"{len(labels)} labels for {tensor.shape[0]} components")
        obj = tensor.as_subclass(cls)
        obj.labels = list(labels)
        return obj

    @property
    def tensor(self) -> torch.Tensor:
        return self.as_subclass(torch.Tensor)

    def __getitem__(self, key):
        if isinstance(key, str):
            try:
                return self.tensor[self.labels.index(key)]
            except ValueError:
                close = difflib.get_close_matches(key, self.labels, n=3)
                raise CacheKeyError(f"no component {key!r}; did you mean {close}? (all: .labels)") from None
        return self.tensor[key]

    def items(self):
        return zip(self.labels, self.tensor)

    def norms(self) -> torch.Tensor:  # [component, ...]: the L2 norm of each over d_model
        return self.tensor.norm(dim=-1)

    def __deepcopy__(self, memo):
        return LabelledTensor(self.tensor.clone(), self.labels)

    def __reduce_ex__(self, protocol):  # pickled (torch.save) as the plain tensor, so weights_only loading reads it
        return self.tensor.__reduce_ex__(protocol)

    def __repr__(self, **kwargs) -> str:
        shown = ", ".join(self.labels[:6]) + (", ..." if len(self.labels) > 6 else "")
        return f"LabelledTensor [{shown}] {self.tensor!r}"


def _pos_slice(x: torch.Tensor, pos_slice, dim: int = -2) -> torch.Tensor:
    """TransformerLens's Slice on one dimension: None keeps all, an int keeps one (dropping the dimension), a tuple
    is slice(*tuple), a slice, list or tensor of positions indexes. (Also used for batch slices, on dim 0 or 1.)"""
    if pos_slice is None:
        return x
    if dim == -2 and not isinstance(pos_slice, tuple):
        check_positions(pos_slice, x.shape[dim], "pos_slice")
    if isinstance(pos_slice, int):
        return x.select(dim, pos_slice)
    if isinstance(pos_slice, tuple):
        pos_slice = slice(*pos_slice)
    index = [slice(None)] * x.ndim
    index[dim] = pos_slice if isinstance(pos_slice, slice) else torch.as_tensor(pos_slice, device=x.device)
    return x[tuple(index)]


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

    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
                          pos_slice=None, mlp_input: bool = False, return_labels: bool = False, *, pos=None):
        """The residual stream before each block up to and including block `layer`'s (TransformerLens's meaning);
        layer None, -1 or n_layers: before every block and the final stream. [n_points, batch, (pos,) d_model].

        A LabelledTensor: a tensor (`acc @ model.W_U` works) whose `.labels` are "L0_pre", ("L0_mid",) "L1_pre", ...,
        "final"; `acc["L3_pre"]` is one point. incl_mid adds resid_mid of the blocks before `layer`, mlp_input
        resid_mid of block `layer` itself. pos (minimech's) or pos_slice (TransformerLens's) selects positions.
        As in TransformerLens 2.18: apply_ln applies ln_final to each point with its own statistics when `layer` is
        the final stream, else divides each by block `layer`'s cached ln1 (ln2 with mlp_input) scale after centring
        (no weights); return_labels=True returns (tensor, TransformerLens's labels "0_pre", ..., "final_post").
        """
        n = self.model.cfg.n_layers
        top = n if layer is None or layer == -1 else layer
        if not isinstance(top, int) or not 0 <= top <= n:
            raise CacheKeyError(f"layer={layer!r}: use 0 .. {n} (the stream before that block), or None / -1 for "
                                "every block and the final stream")
        if pos is not None and pos_slice is not None:
            raise CacheKeyError("give pos or pos_slice (the same argument under minimech's and TransformerLens's "
                                "names), not both")
        pos_slice = pos if pos_slice is None else pos_slice
        names, labels, tl_labels = [], [], []
        for l in range(top + 1):
            if l == n:
                names.append(f"blocks.{n - 1}.hook_resid_post")
                labels.append("final")
                tl_labels.append("final_post")
                continue
            names.append(f"blocks.{l}.hook_resid_pre")
            labels.append(f"L{l}_pre")
            tl_labels.append(f"{l}_pre")
            if not self.model.cfg.attn_only and ((incl_mid and l < top) or (mlp_input and l == top)):
                names.append(f"blocks.{l}.hook_resid_mid")
                labels.append(f"L{l}_mid")
                tl_labels.append(f"{l}_mid")
        stack = torch.stack([_pos_slice(self[name], pos_slice) for name in names])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, top, mlp_input=mlp_input, pos_slice=pos_slice,
                                           recompute_ln=top == n)
        return (stack, tl_labels) if return_labels else LabelledTensor(stack, labels)

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

    # ---- TransformerLens's stacks (its meanings and argument names; tests/test_tl_parity.py) -----------------------
    def apply_ln_to_stack(self, residual_stack: torch.Tensor, layer: int | None = None, mlp_input: bool = False,
                          pos_slice=None, batch_slice=None, has_batch_dim: bool = True,
                          recompute_ln: bool = False) -> torch.Tensor:
        """Components [component, batch, (pos,) d_model] as the input of block `layer`'s ln1 (ln2 with mlp_input), or
        of ln_final (layer None, -1 or n_layers), saw them: centred and divided by that LayerNorm's cached scale, a
        linear map, so the parts still add up (TransformerLens's convention: no LayerNorm weights, which fold_ln puts
        into W_U). recompute_ln with the final layer: ln_final itself, weights included, with each component's own
        statistics (the logit lens). pos_slice / batch_slice: what was already taken of the stack's positions and
        batch rows (the scale is sliced to match).
        """
        n = self.model.cfg.n_layers
        layer = n if layer is None or layer == -1 else layer
        if not 0 <= layer <= n or (mlp_input and (layer == n or self.model.cfg.attn_only)):
            raise CacheKeyError(f"layer={layer}: use 0 .. {n} (n or None: ln_final); mlp_input=True needs a block "
                                "with an MLP")
        if has_batch_dim and batch_slice is not None:
            residual_stack = _pos_slice(residual_stack, batch_slice, dim=1)
        if recompute_ln and layer == n:
            ln = self.model.ln_final
            x = residual_stack - residual_stack.mean(-1, keepdim=True)
            return x / (x.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt() * ln.w + ln.b
        residual_stack = residual_stack - residual_stack.mean(-1, keepdim=True)
        name = "ln_final.hook_scale" if layer == n else f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale"
        scale = _pos_slice(self[name], pos_slice)  # [batch, (pos,) 1]
        if batch_slice is not None:
            scale = _pos_slice(scale, batch_slice, dim=0)
        return residual_stack / scale

    def stack_head_results(self, layer: int | None = -1, return_labels: bool = False, incl_remainder: bool = False,
                           pos_slice=None, apply_ln: bool = False):
        """Every head's write to the residual stream in the layers before `layer` (None, -1: all of them):
        [layer * n_heads, batch, (pos,) d_model], labels "L0H0", "L0H1", ... (computed from hook_z when hook_result
        was not cached). incl_remainder adds the rest of resid_post of block layer - 1 ("remainder"); apply_ln
        passes the stack through apply_ln_to_stack(layer)."""
        n = self.model.cfg.n_layers
        layer = n if layer is None or layer == -1 else layer
        if not 0 <= layer <= n:
            raise CacheKeyError(f"layer={layer}: use 0 .. {n} (or None / -1 for every layer)")
        parts = [_pos_slice(self.head_results(l), pos_slice) for l in range(layer)]  # [head, batch, (pos,) d_model]
        labels = [f"L{l}H{h}" for l in range(layer) for h in range(self.model.cfg.n_heads)]
        template = _pos_slice(self["hook_embed"], pos_slice)
        stack = torch.cat(parts) if parts else template.new_zeros((0, *template.shape))
        if incl_remainder:
            total = _pos_slice(self[f"blocks.{layer - 1}.hook_resid_post"], pos_slice) if layer else template
            stack = torch.cat([stack, (total - stack.sum(0))[None]])
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_neuron_results(self, layer: int | None = -1, pos_slice=None, return_labels: bool = False,
                             apply_ln: bool = False):
        """Every MLP neuron's write (activation x its W_out row) in the layers before `layer`:
        [layer * d_mlp, batch, (pos,) d_model], labels "L0N0", ... Large: d_mlp components per layer."""
        n = self.model.cfg.n_layers
        layer = n if layer is None or layer == -1 else layer
        if self.model.cfg.attn_only or not 0 <= layer <= n:
            raise CacheKeyError(f"layer={layer}: use 0 .. {n}, on a model with MLPs")
        parts = []
        for l in range(layer):
            post = _pos_slice(self[f"blocks.{l}.mlp.hook_post"], pos_slice)  # [batch, (pos,) d_mlp]
            parts.append((post[..., None] * self.model.blocks[l].mlp.W_out).movedim(-2, 0))  # [d_mlp, ..., d_model]
        template = _pos_slice(self["hook_embed"], pos_slice)
        stack = torch.cat(parts) if parts else template.new_zeros((0, *template.shape))
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        labels = [f"L{l}N{i}" for l in range(layer) for i in range(self.model.cfg.d_mlp)]
        return (stack, labels) if return_labels else stack

    def stack_activation(self, activation_name: str, layer: int | None = -1, sublayer_type: str | None = None):
        """One activation of every layer before `layer` stacked: stack_activation("pattern") is
        [n_layers, batch, head, q_pos, k_pos]. sublayer_type: "ln1" / "ln2" for "scale" and "normalized"."""
        n = self.model.cfg.n_layers
        layer = n if layer is None or layer == -1 else layer
        if not 0 < layer <= n:
            raise CacheKeyError(f"layer={layer}: use 1 .. {n} (or None / -1 for every layer)")
        return torch.stack([self[(activation_name, l, sublayer_type)] for l in range(layer)])

    def logit_attrs(self, residual_stack: torch.Tensor, tokens, incorrect_tokens=None, pos_slice=None,
                    batch_slice=None, has_batch_dim: bool = True) -> torch.Tensor:
        """How much each component [component, batch, (pos,) d_model] adds to the logit of `tokens` (minus
        `incorrect_tokens`'): apply_ln_to_stack (ln_final's cached scale) then the dot product with the tokens'
        unembedding columns. tokens: a one-token string, an id, or ids [batch] / [batch, pos]."""
        directions = self.model.tokens_to_residual_directions(tokens)  # [(batch, (pos,)) d_model]
        if incorrect_tokens is not None:
            if torch.as_tensor(self._ids(tokens)).shape != torch.as_tensor(self._ids(incorrect_tokens)).shape:
                raise ValueError(f"tokens and incorrect_tokens must have the same shape, got "
                                 f"{list(torch.as_tensor(self._ids(tokens)).shape)} and "
                                 f"{list(torch.as_tensor(self._ids(incorrect_tokens)).shape)}")
            directions = directions - self.model.tokens_to_residual_directions(incorrect_tokens)
        scaled = self.apply_ln_to_stack(residual_stack, -1, pos_slice=pos_slice, batch_slice=batch_slice,
                                        has_batch_dim=has_batch_dim)
        return (scaled * directions).sum(-1)

    def _ids(self, tokens):
        return self.model.to_single_token(tokens) if isinstance(tokens, str) else tokens

    def get_full_resid_decomposition(self, layer: int | None = None, mlp_input: bool = False,
                                     expand_neurons: bool = True, apply_ln: bool = False, pos_slice=None,
                                     return_labels: bool = False):
        """The residual stream into block `layer` (None, -1: the final stream) taken apart as TransformerLens does:
        every head ("L0H0" ...), every neuron ("L0N0" ...; or each MLP's output "0_mlp_out" with
        expand_neurons=False), "embed", "pos_embed" and "bias" (the b_O and b_out that belong to no head or neuron).
        They sum to the residual stream there."""
        n = self.model.cfg.n_layers
        layer = n if layer is None or layer == -1 else layer
        heads, labels = self.stack_head_results(layer + mlp_input, pos_slice=pos_slice, return_labels=True)
        parts = [heads]
        if not self.model.cfg.attn_only and layer > 0:
            if expand_neurons:
                neurons, neuron_labels = self.stack_neuron_results(layer, pos_slice=pos_slice, return_labels=True)
                parts.append(neurons)
                labels += neuron_labels
            else:
                parts.append(torch.stack([_pos_slice(self[f"blocks.{l}.hook_mlp_out"], pos_slice)
                                          for l in range(layer)]))
                labels += [f"{l}_mlp_out" for l in range(layer)]
        parts += [_pos_slice(self["hook_embed"], pos_slice)[None], _pos_slice(self["hook_pos_embed"], pos_slice)[None]]
        bias = self.model.accumulated_bias(layer, mlp_input, include_mlp_biases=expand_neurons)
        parts.append(bias.expand(parts[-1].shape))
        labels += ["embed", "pos_embed", "bias"]
        stack = torch.cat(parts)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack
