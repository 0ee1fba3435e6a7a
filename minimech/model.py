"""The readable GPT-2. Read it top to bottom: embeddings, LayerNorm, attention, MLP, block, the whole model.

Every activation passes through a HookPoint whose name is its attribute path, as in TransformerLens
(`blocks.3.attn.hook_pattern`), and the local variable in each forward has the hook's name. Weights are stored the
way the maths reads: W_Q is [head, d_model, d_head], W_in is [d_model, d_mlp], and `x @ W` applies them.
Hugging Face stores the same weights differently (Conv1D, one fused qkv matrix); loading.py converts them.
"""

from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .config import GPTConfig
from .errors import UsageError
from .hooks import HookedModule, HookPoint
from .objects import Heads, Memories
from .tl_compat import TransformerLensMixin, split_attention_inputs
from .tokenizer import PromptTooLongError, TokenizerError, TokenTypeError

# Every hook's shape, by name; "{l}" is any layer. tests/test_model.py runs a model whose sizes all differ and checks
# each cached activation against this table. hook_result exists only when asked for (it is n_heads x attn_out); the
# input hooks exist only after model.set_use_attn_in / set_use_split_qkv_input / set_use_hook_mlp_in (tl_compat.py).
HOOK_SHAPES = {
    "hook_embed": ("batch", "pos", "d_model"),
    "hook_pos_embed": ("batch", "pos", "d_model"),
    "blocks.{l}.hook_resid_pre": ("batch", "pos", "d_model"),
    "blocks.{l}.hook_attn_in": ("batch", "pos", "head", "d_model"),  # optional, as the next three
    "blocks.{l}.hook_q_input": ("batch", "pos", "head", "d_model"),
    "blocks.{l}.hook_k_input": ("batch", "pos", "head", "d_model"),
    "blocks.{l}.hook_v_input": ("batch", "pos", "head", "d_model"),
    "blocks.{l}.ln1.hook_scale": ("batch", "pos", 1),
    "blocks.{l}.ln1.hook_normalized": ("batch", "pos", "d_model"),
    "blocks.{l}.attn.hook_q": ("batch", "pos", "head", "d_head"),
    "blocks.{l}.attn.hook_k": ("batch", "pos", "head", "d_head"),
    "blocks.{l}.attn.hook_v": ("batch", "pos", "head", "d_head"),
    "blocks.{l}.attn.hook_attn_scores": ("batch", "head", "pos", "pos"),  # [batch, head, q_pos, k_pos]
    "blocks.{l}.attn.hook_pattern": ("batch", "head", "pos", "pos"),
    "blocks.{l}.attn.hook_z": ("batch", "pos", "head", "d_head"),
    "blocks.{l}.attn.hook_result": ("batch", "pos", "head", "d_model"),
    "blocks.{l}.hook_attn_out": ("batch", "pos", "d_model"),
    "blocks.{l}.hook_resid_mid": ("batch", "pos", "d_model"),  # not in attention-only models
    "blocks.{l}.hook_mlp_in": ("batch", "pos", "d_model"),  # optional
    "blocks.{l}.ln2.hook_scale": ("batch", "pos", 1),  # ln2 and mlp: not in attention-only models
    "blocks.{l}.ln2.hook_normalized": ("batch", "pos", "d_model"),
    "blocks.{l}.mlp.hook_pre": ("batch", "pos", "d_mlp"),
    "blocks.{l}.mlp.hook_post": ("batch", "pos", "d_mlp"),
    "blocks.{l}.hook_mlp_out": ("batch", "pos", "d_model"),
    "blocks.{l}.hook_resid_post": ("batch", "pos", "d_model"),
    "ln_final.hook_scale": ("batch", "pos", 1),
    "ln_final.hook_normalized": ("batch", "pos", "d_model"),
}


class Embed(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))  # [d_vocab, d_model]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [batch, pos] -> [batch, pos, d_model]
        return self.W_E[tokens]


class PosEmbed(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))  # [n_ctx, d_model]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [batch, pos] -> [batch, pos, d_model]
        batch, pos = tokens.shape
        return self.W_pos[:pos].unsqueeze(0).expand(batch, pos, -1)


class LayerNorm(nn.Module):
    """Centre, divide by the standard deviation (hook_scale), then scale and shift per feature."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.eps = cfg.eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))  # [d_model]
        self.b = nn.Parameter(torch.zeros(cfg.d_model))  # [d_model]
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(-1, keepdim=True)  # [batch, pos, d_model]
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())  # [batch, pos, 1]
        normalized = self.hook_normalized(x / scale * self.w + self.b)  # [batch, pos, d_model]
        return normalized


class Attention(nn.Module):
    """Causal self-attention, one head at a time in the maths, all heads at once in the tensors."""

    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, d, e))  # [head, d_model, d_head]
        self.W_K = nn.Parameter(torch.empty(h, d, e))
        self.W_V = nn.Parameter(torch.empty(h, d, e))
        self.W_O = nn.Parameter(torch.empty(h, e, d))  # [head, d_head, d_model]
        self.b_Q = nn.Parameter(torch.zeros(h, e))  # [head, d_head]
        self.b_K = nn.Parameter(torch.zeros(h, e))
        self.b_V = nn.Parameter(torch.zeros(h, e))
        self.b_O = nn.Parameter(torch.zeros(d))  # [d_model]
        # True above the diagonal: key positions after the query, which a causal model must not see.
        self.register_buffer("mask", torch.triu(torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool), 1), persistent=False)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()  # [batch, pos, head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, q_pos, k_pos]
        self.hook_pattern = HookPoint()  # [batch, head, q_pos, k_pos]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        self.hook_result = HookPoint()  # [batch, pos, head, d_model]

    @property
    def heads(self) -> Heads:
        return Heads(self)

    def forward(self, x: torch.Tensor, x_k: torch.Tensor | None = None, x_v: torch.Tensor | None = None):
        # x: [batch, pos, d_model] after ln1. With TransformerLens's per-head inputs (tl_compat.py), x, x_k and x_v are
        # the queries', keys' and values' own inputs, [batch, pos, head, d_model] each.
        x_k, x_v = (x if x_k is None else x_k), (x if x_v is None else x_v)
        eq = "bpm,hme->bphe" if x.ndim == 3 else "bphm,hme->bphe"
        q = self.hook_q(torch.einsum(eq, x, self.W_Q) + self.b_Q)  # [batch, pos, head, d_head]
        k = self.hook_k(torch.einsum(eq, x_k, self.W_K) + self.b_K)  # [batch, pos, head, d_head]
        v = self.hook_v(torch.einsum(eq, x_v, self.W_V) + self.b_V)  # [batch, pos, head, d_head]
        if self.hook_attn_scores.is_hooked or self.hook_pattern.is_hooked:
            pos = x.shape[1]
            attn_scores = torch.einsum("bqhe,bkhe->bhqk", q / math.sqrt(self.cfg.d_head), k)  # [batch, head, q, k]
            attn_scores = self.hook_attn_scores(attn_scores.masked_fill_(self.mask[:pos, :pos], float("-inf")))
            pattern = self.hook_pattern(attn_scores.softmax(dim=-1))  # [batch, head, q_pos, k_pos]
            z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)  # [batch, pos, head, d_head]
        else:  # nobody reads the pattern: the same maths fused by torch, never holding a [q_pos, k_pos] tensor
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [batch, head, pos, d_head]
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)  # [batch, pos, head, d_head]
        z = self.hook_z(z)
        if self.hook_result.is_hooked:  # each head's own write to the residual stream, only when asked for
            result = self.hook_result(torch.einsum("bqhe,hem->bqhm", z, self.W_O))  # [batch, pos, head, d_model]
            return result.sum(dim=2) + self.b_O
        # The same sum over heads, as one matmul: [batch, pos, head * d_head] @ [head * d_head, d_model]
        return z.flatten(2) @ self.W_O.flatten(0, 1) + self.b_O  # [batch, pos, d_model]


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    # GPT-2 was trained with the tanh approximation of GELU; the exact erf GELU differs by up to ~1e-3.
    return F.gelu(x, approximate="tanh")


class MLP(nn.Module):
    """Two layers with a GELU between. Each of the d_mlp neurons is a key-value memory (see objects.Memory)."""

    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))  # [d_model, d_mlp]: columns are keys
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))  # [d_mlp]
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))  # [d_mlp, d_model]: rows are values
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))  # [d_model]
        self.act = {"gelu_new": gelu_new, "gelu": F.gelu, "relu": F.relu}[cfg.act_fn]
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]
        self.root = lambda: None  # the GPT that owns this MLP (a weak reference), for Memory.top_tokens

    @property
    def memories(self) -> Memories:
        return Memories(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [batch, pos, d_model], after ln2
        pre = self.hook_pre(x @ self.W_in + self.b_in)  # [batch, pos, d_mlp]
        post = self.hook_post(self.act(pre))  # [batch, pos, d_mlp]
        return post @ self.W_out + self.b_out  # [batch, pos, d_model]


class Block(nn.Module):
    """resid_mid = resid_pre + attn(ln1(resid_pre)); resid_post = resid_mid + mlp(ln2(resid_mid))."""

    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.ln1 = LayerNorm(cfg)
        self.attn = Attention(cfg, layer)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]
        if not cfg.attn_only:
            self.ln2 = LayerNorm(cfg)
            self.mlp = MLP(cfg, layer)
            self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
            self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]

    def forward(self, resid_pre: torch.Tensor) -> torch.Tensor:
        resid_pre = self.hook_resid_pre(resid_pre)  # [batch, pos, d_model]
        if self.cfg.use_attn_in or self.cfg.use_split_qkv_input:  # TransformerLens's per-head inputs (tl_compat.py)
            attn_out = self.attn(*(self.ln1(x) for x in split_attention_inputs(self, resid_pre)))
        else:
            attn_out = self.attn(self.ln1(resid_pre))
        attn_out = self.hook_attn_out(attn_out)  # [batch, pos, d_model]
        if self.cfg.attn_only:
            return self.hook_resid_post(resid_pre + attn_out)
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)  # [batch, pos, d_model]
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if self.cfg.use_hook_mlp_in else resid_mid  # optional hook
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(mlp_in)))  # [batch, pos, d_model]
        return self.hook_resid_post(resid_mid + mlp_out)  # [batch, pos, d_model]


class Unembed(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))  # [d_model, d_vocab]
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))  # [d_vocab]; GPT-2 has none (zeros), fold_ln fills it

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [batch, pos, d_model] -> [batch, pos, d_vocab]
        return x @ self.W_U + self.b_U


class GPT(TransformerLensMixin, HookedModule):
    """GPT-2: embed + pos_embed -> n_layers blocks -> ln_final -> unembed.

    `model(tokens)` gives logits [batch, pos, d_vocab]; a string is tokenized first (with BOS, see tokenizer.py).
    TransformerLens's stacked weights (model.W_Q, model.b_O, model.OV ...) and helpers come from tl_compat.py.
    """

    def __init__(self, cfg: GPTConfig, tokenizer=None, seed: int | None = 0, init: bool = True):
        super().__init__()
        self.cfg = cfg = cfg.replace()  # this model's own copy: its device, dtype and hook switches are its own
        self.tokenizer = tokenizer
        self.source = "random init"  # where the weights came from; loading.py sets it
        self.card: dict = {}  # a shipped model's card (training, metrics, mechanisms); loading.py fills it
        self.embed = Embed(cfg)
        self.pos_embed = PosEmbed(cfg)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        self.blocks = nn.ModuleList([Block(cfg, layer) for layer in range(cfg.n_layers)])
        self.ln_final = LayerNorm(cfg)
        self.unembed = Unembed(cfg)
        for block in self.blocks:
            if not cfg.attn_only:
                block.mlp.root = weakref.ref(self)
        if init:  # loading passes init=False: the weights are about to be overwritten
            self.init_weights(seed)
        self.setup_hooks()

    @torch.no_grad()
    def init_weights(self, seed: int | None = 0) -> None:
        """GPT-2's initialisation: N(0, 0.02), output projections scaled by 1/sqrt(2 n_layers), biases zero."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for name, p in self.named_parameters():
            if name.endswith(("W_O", "W_out")):
                p.normal_(0, 0.02 / math.sqrt(2 * self.cfg.n_layers), generator=gen)
            elif name.split(".")[-1].startswith("W_"):
                p.normal_(0, 0.02, generator=gen)

    def forward(self, input, return_type: str | None = "logits", loss_per_token: bool = False,
                prepend_bos: bool | None = None, start_at_layer: int | None = None, stop_at_layer: int | None = None,
                tokens: torch.Tensor | None = None):
        """input: [batch, pos] ids, or text (tokenized with BOS unless prepend_bos=False). As in TransformerLens:
        return_type "logits", "loss" (loss_per_token: [batch, pos - 1]), "both" or None; stop_at_layer=l returns the
        residual stream before block l; start_at_layer=l takes that stream [batch, pos, d_model] as input and runs
        blocks l.. (a loss then needs tokens=). Layers may count from the end (-1 is the last block).
        """
        if return_type not in ("logits", "loss", "both", None):
            raise UsageError(f"return_type={return_type!r}: choose 'logits', 'loss', 'both' or None")
        for name, layer in (("start_at_layer", start_at_layer), ("stop_at_layer", stop_at_layer)):
            if layer is not None and not -self.cfg.n_layers <= layer <= self.cfg.n_layers:
                raise UsageError(f"{name}={layer}: use {-self.cfg.n_layers} .. {self.cfg.n_layers}")
        if start_at_layer is None:
            tokens = self.check_tokens(input, prepend_bos)
            embed = self.hook_embed(self.embed(tokens))  # [batch, pos, d_model]
            pos_embed = self.hook_pos_embed(self.pos_embed(tokens))  # [batch, pos, d_model]
            resid = embed + pos_embed  # [batch, pos, d_model]
        else:
            resid = self.check_resid(input, start_at_layer)  # [batch, pos, d_model]
            tokens = None if tokens is None else self.check_tokens(tokens)
        for block in self.blocks[start_at_layer:stop_at_layer]:
            resid = block(resid)
        if stop_at_layer is not None:
            return resid
        normalized = self.ln_final(resid)  # [batch, pos, d_model]
        if return_type is None:  # as TransformerLens: ln_final's hooks run, the unembedding does not
            return None
        logits = self.unembed(normalized)  # [batch, pos, d_vocab]
        if return_type == "logits":
            return logits
        if tokens is None:
            raise UsageError(f"return_type={return_type!r} with start_at_layer needs the token ids: pass tokens=")
        loss = self.loss(logits, tokens, per_token=loss_per_token)
        return loss if return_type == "loss" else (logits, loss)

    @staticmethod
    def loss(logits: torch.Tensor, tokens: torch.Tensor, per_token: bool = False) -> torch.Tensor:
        """Cross-entropy of predicting tokens[:, 1:] from logits[:, :-1]; per_token gives [batch, pos - 1]."""
        if tokens.shape[1] < 2:
            raise TokenizerError(f"the loss needs at least 2 tokens (it predicts each from the ones before), got "
                                 f"{tokens.shape[1]}: give a longer prompt")
        log_probs = logits[:, :-1].log_softmax(-1)  # [batch, pos - 1, d_vocab]
        nll = -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]  # [batch, pos - 1]
        return nll if per_token else nll.mean()

    def check_tokens(self, tokens, prepend_bos: bool | None = None) -> torch.Tensor:
        """tokens as a LongTensor [batch, pos], or one clear error: text is tokenized (BOS first unless prepend_bos
        is False); prompts of different lengths are refused, since padding would be read as if it were text."""
        if isinstance(tokens, (str, list)) and (isinstance(tokens, str) or (tokens and isinstance(tokens[0], str))):
            bos = self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
            tokens, mask = self.to_tokens(tokens, prepend_bos=bos, return_mask=True)
            if not bool(mask.all()):
                raise TokenizerError(f"the prompts have different numbers of tokens {mask.sum(1).tolist()}, so a "
                                     "batch of them is padded and position -1 would read padding: give prompts of "
                                     "one length, run them one at a time, or use model.to_tokens(prompts, "
                                     "return_mask=True) and read each prompt at its own last position")
        if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.int64, torch.int32):
            raise TokenTypeError(f"tokens must be an integer tensor [batch, pos] or a string, got "
                                 f"{type(tokens).__name__}"
                                 + (f" of {tokens.dtype}" if isinstance(tokens, torch.Tensor) else "")
                                 + (" (an empty list)" if isinstance(tokens, list) and not tokens else ""))
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise TokenizerError(f"tokens must have shape [batch, pos] with batch >= 1 and pos >= 1, got "
                                 f"{tuple(tokens.shape)}")
        if tokens.shape[1] > self.cfg.n_ctx:
            raise PromptTooLongError(f"the input has {tokens.shape[1]} positions but the model's context is n_ctx="
                                     f"{self.cfg.n_ctx}: shorten the prompt or split it")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.cfg.d_vocab:
            raise TokenizerError(f"token ids must lie in [0, {self.cfg.d_vocab}), got ids from {lo} to {hi}: "
                                 "were they made by another model's tokenizer?")
        return tokens

    def __repr__(self) -> str:
        c = self.cfg
        kind = "attention-only " if c.attn_only else ""
        return (f"GPT {c.model_name!r}: {kind}{c.n_layers} layers x {c.n_heads} heads, d_model {c.d_model}, "
                f"d_head {c.d_head}" + ("" if c.attn_only else f", d_mlp {c.d_mlp}")
                + f", n_ctx {c.n_ctx}, d_vocab {c.d_vocab} ({self.source})")
