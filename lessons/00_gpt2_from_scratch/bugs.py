"""Planted bugs for lesson 00: each is a classic mistake, and the checks must fail it with a message that names it."""

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from minimech.grading import Bug


def _solutions():  # the reference pieces the buggy functions are built from, loaded by path (no sys.path needed)
    spec = importlib.util.spec_from_file_location("lesson00_solutions", Path(__file__).with_name("solutions.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


S = _solutions()


# ---- 00.1 layer_norm ------------------------------------------------------------------------------------------------

def ln_unbiased_variance(x, w, b, eps=1e-5):
    return (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True) + eps).sqrt() * w + b  # torch.var: n - 1


def ln_without_eps(x, w, b, eps=1e-5):
    x = x - x.mean(-1, keepdim=True)
    return x / x.pow(2).mean(-1, keepdim=True).sqrt() * w + b


def ln_eps_on_std(x, w, b, eps=1e-5):
    x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * w + b


# ---- 00.2 attention_pattern and 00.3 attention -----------------------------------------------------------------------

def _attention(x, W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O, hide, softmax_dim=-1, scale=True):
    q = torch.einsum("bpm,hme->bphe", x, W_Q) + b_Q
    k = torch.einsum("bpm,hme->bphe", x, W_K) + b_K
    v = torch.einsum("bpm,hme->bphe", x, W_V) + b_V
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / (math.sqrt(q.shape[-1]) if scale else 1.0)
    pos = x.shape[1]
    pattern = scores.masked_fill(hide(pos), float("-inf")).softmax(dim=softmax_dim)
    z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
    return torch.einsum("bqhe,hem->bqm", z, W_O) + b_O


def _future(pos, diagonal=1):
    return torch.triu(torch.ones(pos, pos, dtype=torch.bool), diagonal=diagonal)


def attention_no_mask(x, W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O):
    return _attention(x, W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O, hide=lambda p: torch.zeros(p, p, dtype=torch.bool))


def attention_mask_off_by_one(x, W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O):
    return _attention(x, W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O, hide=lambda p: _future(p, diagonal=2))


def attention_mask_hides_diagonal(x, W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O):
    return _attention(x, W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O, hide=lambda p: _future(p, diagonal=0))


def attention_softmax_over_queries(x, W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O):
    return _attention(x, W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O, hide=_future, softmax_dim=-2)


def attention_unscaled(x, W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O):
    return _attention(x, W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O, hide=_future, scale=False)


def _pattern(q, k, hide, softmax_dim=-1, scale=True, fill=float("-inf")):
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / (math.sqrt(q.shape[-1]) if scale else 1.0)
    return scores.masked_fill(hide(q.shape[1]), fill).softmax(dim=softmax_dim)


def pattern_mask_off_by_one(q, k):
    return _pattern(q, k, hide=lambda p: _future(p, diagonal=2))


def pattern_softmax_over_queries(q, k):
    return _pattern(q, k, hide=_future, softmax_dim=-2)


def pattern_unscaled(q, k):
    return _pattern(q, k, hide=_future, scale=False)


def pattern_masked_with_zero(q, k):
    return _pattern(q, k, hide=_future, fill=0.0)


def pattern_head_axis_third(q, k):  # [batch, q_pos, head, k_pos]: the einsum's output in the wrong order
    return S.attention_pattern(q, k).transpose(1, 2)


# ---- 00.4 gelu_new ------------------------------------------------------------------------------------------------

def gelu_exact(x):
    return F.gelu(x)  # the default is the exact erf GELU


def gelu_square_term(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 2)))


def gelu_no_root(x):
    return 0.5 * x * (1 + torch.tanh(2 / math.pi * (x + 0.044715 * x ** 3)))


# ---- 00.5 mlp -------------------------------------------------------------------------------------------------------

def mlp_erf_gelu(x, W_in, b_in, W_out, b_out):
    return F.gelu(x @ W_in + b_in) @ W_out + b_out  # F.gelu's default is the exact erf GELU


def mlp_relu(x, W_in, b_in, W_out, b_out):
    return F.relu(x @ W_in + b_in) @ W_out + b_out


# ---- 00.6 block -----------------------------------------------------------------------------------------------------

def _attn(x, p):
    return S.attention(x, *(p["attn." + n] for n in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")))


def _mlp(x, p):
    return S.mlp(x, p["mlp.W_in"], p["mlp.b_in"], p["mlp.W_out"], p["mlp.b_out"])


def block_post_ln(resid_pre, params):
    p = params
    mid = S.layer_norm(resid_pre + _attn(resid_pre, p), p["ln1.w"], p["ln1.b"])
    if "mlp.W_in" not in p:
        return mid
    return S.layer_norm(mid + _mlp(mid, p), p["ln2.w"], p["ln2.b"])


def block_without_residual(resid_pre, params):
    p = params
    attn_out = _attn(S.layer_norm(resid_pre, p["ln1.w"], p["ln1.b"]), p)
    if "mlp.W_in" not in p:
        return attn_out
    return attn_out + _mlp(S.layer_norm(resid_pre + attn_out, p["ln2.w"], p["ln2.b"]), p)


def block_parallel(resid_pre, params):
    p = params
    attn_out = _attn(S.layer_norm(resid_pre, p["ln1.w"], p["ln1.b"]), p)
    if "mlp.W_in" not in p:
        return resid_pre + attn_out
    return resid_pre + attn_out + _mlp(S.layer_norm(resid_pre, p["ln2.w"], p["ln2.b"]), p)


# ---- 00.7 gpt2_forward ----------------------------------------------------------------------------------------------

def _forward(tokens, params, pos_embed=True, ln_final=True, tied=False):
    resid = params["embed.W_E"][tokens]
    if pos_embed:
        resid = resid + params["pos_embed.W_pos"][: tokens.shape[1]]
    for layer in range(sum(1 for k in params if k.endswith(".ln1.w"))):
        prefix = f"blocks.{layer}."
        resid = S.block(resid, {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)})
    if ln_final:
        resid = S.layer_norm(resid, params["ln_final.w"], params["ln_final.b"])
    W_U = params["embed.W_E"].T if tied else params["unembed.W_U"]
    return resid @ W_U + params["unembed.b_U"]


def forward_without_pos_embed(tokens, params):
    return _forward(tokens, params, pos_embed=False)


def forward_without_ln_final(tokens, params):
    return _forward(tokens, params, ln_final=False)


def forward_tied_unembed(tokens, params):
    return _forward(tokens, params, tied=True)


# ---- 00.8 load_hf_state_dict ----------------------------------------------------------------------------------------

def load_transposing_conv1d(hf_sd, n_heads):
    """nanoGPT's habit (its nn.Linear wants [out, in]), applied where minimech's x @ W wants [in, out] as stored."""
    out = S.load_hf_state_dict(hf_sd, n_heads)
    sd = {k.removeprefix("transformer."): v for k, v in hf_sd.items()}
    for l in range(sum(1 for k in out if k.endswith(".ln1.w"))):
        h, d = out[f"blocks.{l}.attn.W_O"].shape[0], out[f"blocks.{l}.attn.W_O"].shape[-1]
        out[f"blocks.{l}.attn.W_O"] = sd[f"h.{l}.attn.c_proj.weight"].T.reshape(h, d // h, d).contiguous()
        out[f"blocks.{l}.mlp.W_in"] = sd[f"h.{l}.mlp.c_fc.weight"].T.contiguous()
        out[f"blocks.{l}.mlp.W_out"] = sd[f"h.{l}.mlp.c_proj.weight"].T.contiguous()
    return out


def load_wrong_head_split(hf_sd, n_heads):
    out = S.load_hf_state_dict(hf_sd, n_heads)
    for name in [k for k in out if k.endswith(("W_Q", "W_K", "W_V"))]:
        right = out[name]  # [head, d_model, d_head]
        out[name] = right.permute(1, 0, 2).reshape(right.shape).contiguous()  # c_attn's third reshaped directly
    return out


def load_lm_head_untransposed(hf_sd, n_heads):
    out = S.load_hf_state_dict(hf_sd, n_heads)
    out["unembed.W_U"] = out["unembed.W_U"].T.contiguous()
    return out


def load_unembed_from_wte(hf_sd, n_heads):
    out = S.load_hf_state_dict(hf_sd, n_heads)
    out["unembed.W_U"] = out["embed.W_E"].T.contiguous()
    return out


BUGS = [
    Bug("00.1", ln_unbiased_variance, "unbiased"),
    Bug("00.1", ln_without_eps, "ignores eps"),
    Bug("00.1", ln_eps_on_std, "added eps to the standard deviation"),
    Bug("00.2", pattern_mask_off_by_one, "off by one"),
    Bug("00.2", pattern_softmax_over_queries, "softmax runs over the query axis"),
    Bug("00.2", pattern_unscaled, "sqrt(d_head)"),
    Bug("00.2", pattern_masked_with_zero, "-inf"),
    Bug("00.2", pattern_head_axis_third, "head axis second"),
    Bug("00.3", attention_no_mask, "looks at future positions"),
    Bug("00.3", attention_mask_off_by_one, "off by one"),
    Bug("00.3", attention_mask_hides_diagonal, "hides the diagonal"),
    Bug("00.3", attention_softmax_over_queries, "softmax runs over the query axis"),
    Bug("00.3", attention_unscaled, "sqrt(d_head)"),
    Bug("00.4", gelu_exact, "exact (erf) GELU"),
    Bug("00.4", gelu_square_term, "x^3"),
    Bug("00.4", gelu_no_root, "sqrt(2/pi)"),
    Bug("00.5", mlp_erf_gelu, "exact (erf) GELU"),
    Bug("00.5", mlp_relu, "ReLU"),
    Bug("00.6", block_post_ln, "post-LN"),
    Bug("00.6", block_without_residual, "residual connection"),
    Bug("00.6", block_parallel, "reads resid_pre"),
    Bug("00.7", forward_without_pos_embed, "positional embeddings"),
    Bug("00.7", forward_without_ln_final, "ln_final"),
    Bug("00.7", forward_tied_unembed, "W_E.T"),
    Bug("00.8", load_transposing_conv1d, "Conv1D weights are stored [in, out]"),
    Bug("00.8", load_wrong_head_split, "splits the heads"),
    Bug("00.8", load_lm_head_untransposed, "nn.Linear"),
    Bug("00.8", load_unembed_from_wte, "lm_head.weight"),
]
