"""Reference solutions for lesson 00 (GPT-2 from scratch). The checks never import this file."""

import math

import torch


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """x: [..., d_model]; w, b: [d_model] -> [..., d_model]."""
    x = x - x.mean(-1, keepdim=True)  # [..., d_model]
    scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()  # [..., 1]: the biased std, eps inside the root
    return x / scale * w + b


def attention_pattern(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q, k: [batch, pos, head, d_head] -> pattern [batch, head, q_pos, k_pos]."""
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(q.shape[-1])  # [batch, head, q_pos, k_pos]
    pos = q.shape[1]
    future = torch.triu(torch.ones(pos, pos, dtype=torch.bool, device=q.device), diagonal=1)  # k_pos > q_pos
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1)  # each query's row sums to 1


def attention(x, W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O) -> torch.Tensor:
    """x: [batch, pos, d_model]; W_Q/W_K/W_V: [head, d_model, d_head]; W_O: [head, d_head, d_model];
    b_Q/b_K/b_V: [head, d_head]; b_O: [d_model] -> attn_out [batch, pos, d_model]."""
    q = torch.einsum("bpm,hme->bphe", x, W_Q) + b_Q  # [batch, pos, head, d_head]
    k = torch.einsum("bpm,hme->bphe", x, W_K) + b_K  # [batch, pos, head, d_head]
    v = torch.einsum("bpm,hme->bphe", x, W_V) + b_V  # [batch, pos, head, d_head]
    pattern = attention_pattern(q, k)  # [batch, head, q_pos, k_pos]
    z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)  # [batch, pos, head, d_head]
    return torch.einsum("bqhe,hem->bqm", z, W_O) + b_O  # sum over heads of each head's write


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh approximation of GELU, elementwise."""
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x.pow(3))))


def mlp(x, W_in, b_in, W_out, b_out) -> torch.Tensor:
    """x: [batch, pos, d_model]; W_in: [d_model, d_mlp]; b_in: [d_mlp]; W_out: [d_mlp, d_model]; b_out: [d_model]."""
    post = gelu_new(x @ W_in + b_in)  # [batch, pos, d_mlp]
    return post @ W_out + b_out  # [batch, pos, d_model]


def block(resid_pre: torch.Tensor, params: dict) -> torch.Tensor:
    """resid_pre: [batch, pos, d_model]; params: one block's tensors ("ln1.w", "attn.W_Q", "mlp.W_in", ...)."""
    p = params
    attn_in = layer_norm(resid_pre, p["ln1.w"], p["ln1.b"])
    resid_mid = resid_pre + attention(attn_in, p["attn.W_Q"], p["attn.W_K"], p["attn.W_V"], p["attn.W_O"],
                                      p["attn.b_Q"], p["attn.b_K"], p["attn.b_V"], p["attn.b_O"])
    if "mlp.W_in" not in p:  # an attention-only model
        return resid_mid
    mlp_in = layer_norm(resid_mid, p["ln2.w"], p["ln2.b"])
    return resid_mid + mlp(mlp_in, p["mlp.W_in"], p["mlp.b_in"], p["mlp.W_out"], p["mlp.b_out"])


def gpt2_forward(tokens: torch.Tensor, params: dict) -> torch.Tensor:
    """tokens: [batch, pos] ids; params: minimech's names ("embed.W_E", "blocks.0.attn.W_Q", ...) -> logits
    [batch, pos, d_vocab]."""
    pos = tokens.shape[1]
    resid = params["embed.W_E"][tokens] + params["pos_embed.W_pos"][:pos]  # [batch, pos, d_model]
    n_layers = sum(1 for name in params if name.endswith(".ln1.w"))
    for layer in range(n_layers):
        prefix = f"blocks.{layer}."
        resid = block(resid, {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)})
    normalized = layer_norm(resid, params["ln_final.w"], params["ln_final.b"])  # [batch, pos, d_model]
    return normalized @ params["unembed.W_U"] + params["unembed.b_U"]  # [batch, pos, d_vocab]


def load_hf_state_dict(hf_sd: dict, n_heads: int) -> dict:
    """A Hugging Face GPT-2 state dict -> minimech's parameter names and layouts."""
    sd = {k.removeprefix("transformer."): v for k, v in hf_sd.items()}
    d_model = sd["wte.weight"].shape[1]
    d_head = d_model // n_heads
    out = {"embed.W_E": sd["wte.weight"], "pos_embed.W_pos": sd["wpe.weight"]}
    n_layers = sum(1 for k in sd if k.endswith(".ln_1.weight"))
    for l in range(n_layers):
        h, b = f"h.{l}.", f"blocks.{l}."
        # Conv1D weights are [in, out], already the x @ W orientation: no transpose.
        W_qkv = sd[h + "attn.c_attn.weight"].split(d_model, dim=1)  # 3 x [d_model, head * d_head]
        b_qkv = sd[h + "attn.c_attn.bias"].split(d_model)  # 3 x [head * d_head]
        for name, W, bias in zip("QKV", W_qkv, b_qkv):
            out[b + f"attn.W_{name}"] = W.reshape(d_model, n_heads, d_head).permute(1, 0, 2)  # [head, d_model, d_head]
            out[b + f"attn.b_{name}"] = bias.reshape(n_heads, d_head)
        out[b + "attn.W_O"] = sd[h + "attn.c_proj.weight"].reshape(n_heads, d_head, d_model)
        out[b + "attn.b_O"] = sd[h + "attn.c_proj.bias"]
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            out[b + f"{ours}.w"], out[b + f"{ours}.b"] = sd[h + theirs + ".weight"], sd[h + theirs + ".bias"]
        out[b + "mlp.W_in"], out[b + "mlp.b_in"] = sd[h + "mlp.c_fc.weight"], sd[h + "mlp.c_fc.bias"]
        out[b + "mlp.W_out"], out[b + "mlp.b_out"] = sd[h + "mlp.c_proj.weight"], sd[h + "mlp.c_proj.bias"]
    out["ln_final.w"], out["ln_final.b"] = sd["ln_f.weight"], sd["ln_f.bias"]
    out["unembed.W_U"] = sd.get("lm_head.weight", sd["wte.weight"]).T  # nn.Linear [d_vocab, d_model]: transpose
    out["unembed.b_U"] = torch.zeros(sd["wte.weight"].shape[0])  # GPT-2 has no unembedding bias
    return {k: v.contiguous() for k, v in out.items()}
