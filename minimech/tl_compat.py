"""What a TransformerLens user reaches for on a HookedTransformer, with TransformerLens's meaning, kept out of model.py.

GPT inherits TransformerLensMixin, so `model.W_Q`, `model.b_O`, `model.OV`, `model.to_single_str_token(...)`,
`model.tokens_to_residual_directions(...)`, `model.set_use_split_qkv_input(True)` ... behave as in TransformerLens
2.18 (tests/test_tl_parity.py compares each with TransformerLens on the same random weights).

The optional input hook points, as TransformerLens's flags add them (off by default, so caches and speed are unchanged):
    set_use_attn_in(True)          blocks.L.hook_attn_in   [batch, pos, head, d_model]: each head's own copy of
                                   resid_pre, before ln1 (editing one head's copy changes that head only)
    set_use_split_qkv_input(True)  blocks.L.hook_q_input / hook_k_input / hook_v_input [batch, pos, head, d_model]:
                                   separate copies for the queries, keys and values of each head
    set_use_hook_mlp_in(True)      blocks.L.hook_mlp_in    [batch, pos, d_model]: the MLP's input, before ln2
    set_use_attn_result(True)      run_with_cache() caches blocks.L.attn.hook_result by default
With per-head inputs, ln1 runs on [batch, pos, head, d_model], so ln1.hook_scale is [batch, pos, head, 1] and
ln1.hook_normalized [batch, pos, head, d_model], as in TransformerLens.
"""

from __future__ import annotations

import operator
import warnings

import torch

from .errors import MinimechError, UsageError
from .hooks import HookPoint
from .objects import FactoredMatrix

INPUT_HOOKS = {"use_attn_in": ("hook_attn_in",), "use_split_qkv_input": ("hook_q_input", "hook_k_input",
                                                                          "hook_v_input"),
               "use_hook_mlp_in": ("hook_mlp_in",)}


def _stack(name: str, module: str):
    """A property stacking one parameter over layers, e.g. W_Q: [layer, head, d_model, d_head]."""
    return property(lambda self: torch.stack([getattr(getattr(b, module), name) for b in self.blocks]),
                    doc=f"blocks[l].{module}.{name} stacked over layers (a new tensor, as in TransformerLens)")


def split_attention_inputs(block, resid_pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The query, key and value inputs of every head, [batch, pos, head, d_model] each, through the hook points
    set_use_attn_in / set_use_split_qkv_input added. Each is a copy, so a hook that edits one head's input in place
    changes that head alone (TransformerLens's repeat_along_head_dimension)."""
    def per_head():
        return resid_pre[:, :, None, :].repeat(1, 1, block.cfg.n_heads, 1)  # [batch, pos, head, d_model]

    attn_in = block.hook_attn_in(per_head()) if block.cfg.use_attn_in else None
    if block.cfg.use_split_qkv_input:  # as in TransformerLens, these read resid_pre itself, not hook_attn_in
        return block.hook_q_input(per_head()), block.hook_k_input(per_head()), block.hook_v_input(per_head())
    return attn_in, attn_in, attn_in


class TransformerLensMixin:
    """HookedTransformer's attributes and helpers that GPT lacks on its own (see the module docstring)."""

    # Weights under TransformerLens's short names, stacked over layers: model.W_Q is [layer, head, d_model, d_head].
    W_E = property(lambda self: self.embed.W_E)  # [d_vocab, d_model]
    W_pos = property(lambda self: self.pos_embed.W_pos)  # [n_ctx, d_model]
    W_U = property(lambda self: self.unembed.W_U)  # [d_model, d_vocab]
    b_U = property(lambda self: self.unembed.b_U)  # [d_vocab]
    W_Q, W_K, W_V = _stack("W_Q", "attn"), _stack("W_K", "attn"), _stack("W_V", "attn")  # [layer, head, d_model, d_head]
    W_O = _stack("W_O", "attn")  # [layer, head, d_head, d_model]
    b_Q, b_K, b_V = _stack("b_Q", "attn"), _stack("b_K", "attn"), _stack("b_V", "attn")  # [layer, head, d_head]
    b_O = _stack("b_O", "attn")  # [layer, d_model]
    W_in, b_in = _stack("W_in", "mlp"), _stack("b_in", "mlp")  # [layer, d_model, d_mlp], [layer, d_mlp]
    W_out, b_out = _stack("W_out", "mlp"), _stack("b_out", "mlp")  # [layer, d_mlp, d_model], [layer, d_model]

    @property
    def OV(self) -> FactoredMatrix:
        """Every head's OV circuit, [layer, head, d_model, d_model] (model.OV[l, h] is head LlHh's)."""
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self) -> FactoredMatrix:
        """Every head's QK circuit, [layer, head, d_model, d_model]: W_Q @ W_K^T (before the 1/sqrt(d_head))."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    def all_head_labels(self) -> list[str]:
        return [f"L{l}H{h}" for l in range(self.cfg.n_layers) for h in range(self.cfg.n_heads)]

    # ---- tokens ------------------------------------------------------------------------------------------------
    def check_resid(self, resid, start_at_layer: int) -> torch.Tensor:
        """The residual stream handed to forward(start_at_layer=...), [batch, pos, d_model], or one clear error."""
        if not (isinstance(resid, torch.Tensor) and resid.is_floating_point() and resid.ndim == 3
                and resid.shape[-1] == self.cfg.d_model and 0 < resid.shape[1] <= self.cfg.n_ctx):
            got = f"shape {list(resid.shape)} of {resid.dtype}" if isinstance(resid, torch.Tensor) else repr(resid)
            raise UsageError(f"with start_at_layer={start_at_layer} the input is the residual stream before that "
                             f"block, a float tensor [batch, pos <= {self.cfg.n_ctx}, {self.cfg.d_model}]; got {got}")
        return resid

    def _tok(self):
        if self.tokenizer is None:
            raise MinimechError("this model has no tokenizer: pass token ids, or build it with a Tokenizer")
        return self.tokenizer

    def to_tokens(self, text, prepend_bos: bool | None = True, return_mask: bool = False):
        prepend_bos = self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos  # None: as TL, the default
        tokens, mask = self._tok().to_tokens(text, prepend_bos=prepend_bos, max_len=self.cfg.n_ctx, return_mask=True)
        unk = getattr(self.tokenizer, "unk_id", None)
        if unk is not None and bool((tokens == unk).any()):  # a word the compact vocabulary never saw: say so
            warnings.warn(f"{int((tokens == unk).sum())} token(s) of {text!r} are not in this model's "
                          "vocabulary and read as <unk>: model.to_str_tokens(prompt) shows which", stacklevel=2)
        return (tokens, mask) if return_mask else tokens

    def to_str_tokens(self, x, prepend_bos: bool | None = True) -> list:
        prepend_bos = self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        return self._tok().to_str_tokens(x, prepend_bos=prepend_bos)

    def to_string(self, tokens):
        return self._tok().to_string(tokens)

    def to_single_token(self, text: str) -> int:
        return self._tok().to_single_token(text)

    def to_single_str_token(self, int_token: int) -> str:
        """The text of one token id."""
        try:
            token = operator.index(int_token)
        except TypeError:
            raise UsageError(f"to_single_str_token takes one integer token id, got {type(int_token).__name__} "
                             f"{int_token!r}: use to_str_tokens for several") from None
        if not 0 <= token < self.cfg.d_vocab:
            raise UsageError(f"token id {token} is outside this model's vocabulary [0, {self.cfg.d_vocab})")
        return self._tok().id_to_str(token)

    def get_token_position(self, single_token, input, mode: str = "first", prepend_bos: bool | None = None) -> int:
        """Where `single_token` (a string of one token, or an id) occurs in `input` (a string, tokenized with BOS per
        prepend_bos, or token ids [pos] / [1, pos]): its first occurrence, or its last with mode="last"."""
        if mode not in ("first", "last"):
            raise UsageError(f"mode must be 'first' or 'last', not {mode!r}")
        if isinstance(input, str):
            bos = self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
            tokens = self.to_tokens(input, prepend_bos=bos)
        else:
            tokens = torch.as_tensor(input)
        if tokens.ndim == 2:
            if tokens.shape[0] != 1:
                raise UsageError(f"get_token_position reads one sequence: give tokens [pos] or [1, pos], not "
                                 f"{list(tokens.shape)}")
            tokens = tokens[0]
        if isinstance(single_token, str):
            single_token = self.to_single_token(single_token)
        token = int(single_token)
        found = (tokens == token).nonzero().flatten()
        if len(found) == 0:
            raise MinimechError(f"token {self._tok().id_to_str(token)!r} (id {token}) does not occur in the input "
                                "(with prepend_bos=False a prompt has no BOS at position 0)")
        return int(found[0] if mode == "first" else found[-1])

    def tokens_to_residual_directions(self, tokens) -> torch.Tensor:
        """The unembedding column of each token, the residual direction its logit reads: W_U[:, token].

        tokens: a string of one token, an id, or ids of any shape -> [..., d_model]. As TransformerLens warns, without
        fold_ln these directions ignore ln_final's weights (cache.logit_attrs divides by its cached scale only).
        """
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        ids = torch.as_tensor(tokens, device=self.W_U.device)
        if ids.dtype not in (torch.int64, torch.int32):
            raise UsageError(f"tokens must be token ids or a one-token string, got {ids.dtype}")
        if ids.numel() == 1:
            ids = ids.reshape(())
        return self.W_U[:, ids].movedim(0, -1)  # [..., d_model]

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> torch.Tensor:
        """[d_model]: the b_O (and b_out) of every layer before `layer` (0 .. n_layers), and with mlp_input layer's
        own b_O: the bias part of the residual stream there."""
        if not 0 <= layer <= self.cfg.n_layers or (mlp_input and layer == self.cfg.n_layers):
            raise UsageError(f"layer={layer}: use 0 .. {self.cfg.n_layers} ({self.cfg.n_layers - 1} at most with "
                             "mlp_input=True)")
        bias = torch.zeros(self.cfg.d_model, device=self.W_U.device, dtype=self.W_U.dtype)
        for block in self.blocks[:layer]:
            bias = bias + block.attn.b_O
            if include_mlp_biases and not self.cfg.attn_only:
                bias = bias + block.mlp.b_out
        if mlp_input:
            bias = bias + self.blocks[layer].attn.b_O
        return bias

    # ---- TransformerLens's switches ----------------------------------------------------------------------------
    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Cache every head's result (blocks.L.attn.hook_result) by default in run_with_cache."""
        self._set_flag("use_attn_result", use_attn_result)

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """Add (True) or remove (False) the hook points blocks.L.hook_attn_in: each head's own copy of resid_pre."""
        self._set_flag("use_attn_in", use_attn_in)

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Add or remove blocks.L.hook_q_input / hook_k_input / hook_v_input: per-head query, key, value inputs."""
        self._set_flag("use_split_qkv_input", use_split_qkv_input)

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """Add or remove blocks.L.hook_mlp_in: the MLP's input (resid_mid, before ln2)."""
        if use_hook_mlp_in and self.cfg.attn_only:
            raise UsageError("an attention-only model has no MLP, so no hook_mlp_in")
        self._set_flag("use_hook_mlp_in", use_hook_mlp_in)

    def _set_flag(self, flag: str, on) -> None:
        if not isinstance(on, bool):
            raise UsageError(f"set_{flag} takes True or False, got {on!r}")
        object.__setattr__(self.cfg, flag, on)  # a runtime setting on this model's own config, not a field
        for block in self.blocks:
            for name in INPUT_HOOKS.get(flag, ()):
                if on and not hasattr(block, name):
                    setattr(block, name, HookPoint())
                elif not on and hasattr(block, name):
                    delattr(block, name)
        self.setup_hooks()  # the hook points' names, and hook_dict, follow

    def _apply(self, fn, *args, **kwargs):
        """nn.Module.to / .cuda / .double ... all pass here: keep cfg.device and cfg.dtype telling the truth."""
        module = super()._apply(fn, *args, **kwargs)
        object.__setattr__(self.cfg, "device", self.embed.W_E.device)
        object.__setattr__(self.cfg, "dtype", self.embed.W_E.dtype)
        return module

    def generate(self, prompt, max_new_tokens: int = 20, **kwargs):
        from .sampling import generate

        return generate(self, prompt, max_new_tokens=max_new_tokens, **kwargs)
