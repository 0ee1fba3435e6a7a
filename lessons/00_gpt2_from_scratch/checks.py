"""Checks for lesson 00: each exercise against minimech's own modules (or torch, or Hugging Face's GPT-2).

Inputs come from the lesson's model (real weights, real activations) and from random GPT-2 configs whose every
parameter is random (biases and LayerNorm weights too), with sizes drawn from the context's seed. When a result is
wrong, the check recomputes the classic mistakes (no causal mask, softmax over the wrong axis, erf GELU, ...) in
float64 and names the one the learner's output matches; the reference's values are never shown.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from minimech import GPT, GPTConfig
from minimech.grading import Case, Exercise, close, expect_shape
from minimech.loading import hf_to_minimech
from minimech.model import MLP, Attention, Block

PROMPTS = [  # sentences the shipped models' vocabularies cover (and GPT-2's)
    "When Mary and John went to the store, John gave a drink to",
    "Yesterday Nathan and Frank were at the school. Frank lent the book to",
    "The capital of Japan is Tokyo. The capital of France is",
    "Germany is a country located in",
]


# ---- inputs --------------------------------------------------------------------------------------------------------

def _gen(ctx, salt: int) -> torch.Generator:  # one stream per exercise, so the order the grader asks in is irrelevant
    return torch.Generator().manual_seed(ctx.seed * 7919 + salt)


def _int(gen, lo: int, hi: int) -> int:  # uniform in [lo, hi]
    return int(torch.randint(lo, hi + 1, (), generator=gen))


def _random_cfg(gen, **fixed) -> dict:
    """A small GPT-2 config with every size drawn at random (d_model = n_heads * d_head, as in GPT-2)."""
    cfg = dict(n_layers=_int(gen, 1, 3), n_heads=_int(gen, 1, 4), d_head=_int(gen, 3, 7), d_mlp=_int(gen, 5, 40),
               n_ctx=_int(gen, 9, 20), d_vocab=_int(gen, 13, 40))
    cfg.update(fixed)
    cfg.setdefault("d_model", cfg["n_heads"] * cfg["d_head"])
    return cfg


@torch.no_grad()
def _random_model(ctx, gen, **cfg) -> GPT:
    """ctx.random_model, then every parameter random: GPT-2's init leaves biases at 0 and LayerNorm w at 1, which
    would hide a forgotten bias."""
    model = ctx.random_model(**cfg)
    for name, p in model.named_parameters():
        if name.endswith(".w"):
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
        elif p.ndim == 1 or name.split(".")[-1].startswith("b_"):
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        else:  # a weight: unit-scale outputs for unit-scale inputs (fan-in is the second-to-last axis)
            p.copy_(torch.randn(p.shape, generator=gen) * 1.5 / math.sqrt(p.shape[-2]))
    return model.eval()


def _params(model: GPT) -> dict:  # minimech's names -> fresh tensors (the learner may not touch the model's own)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _sub(params: dict, prefix: str) -> dict:
    return {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}


def _prompt(model: GPT, gen) -> torch.Tensor:  # [1, pos]
    return model.to_tokens(PROMPTS[_int(gen, 0, len(PROMPTS) - 1)])


@contextmanager
def _one_thread():
    """Inputs computed by a forward pass must be bitwise equal in both processes (the grader compares digests);
    the learner's process runs torch on one thread, so compute them on one thread here too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def _cache(model: GPT, tokens: torch.Tensor):
    with _one_thread():
        return model.run_with_cache(tokens)[1]


def _name(model: GPT) -> str:  # the shipped models' configs say "custom"; their cards know their names
    return model.card.get("name") or model.cfg.model_name


def _describe(cfg: dict, attention_only: bool = False) -> str:
    heads = f"{cfg['n_heads']} heads x d_head {cfg['d_head']}, d_model {cfg['d_model']}"
    if attention_only:
        return f"random attention: {heads}"
    return f"random GPT: {cfg['n_layers']} layers, {heads}, d_mlp {cfg['d_mlp']}, d_vocab {cfg['d_vocab']}"


def _diagnose(got, want, variants, atol: float, rtol: float, what: str) -> str | None:
    """None when got matches want. Otherwise the message of the first classic mistake that got matches (variants:
    (fn() -> tensor, message) pairs, computed only when needed), followed by close()'s note on got's values."""
    msg = close(got, want, atol=atol, rtol=rtol, what=what)
    if msg is None:
        return None
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return msg
    got64 = got.detach().double()
    for make, text in variants:
        alt = make()
        same_nan = torch.equal(torch.isnan(got64), torch.isnan(alt))
        if same_nan and torch.allclose(got64.nan_to_num(), alt.nan_to_num(), atol=atol * 10, rtol=rtol * 10):
            return f"{text}. ({msg})"
    return msg


# ---- the check's own float64 pieces, with switches for the classic mistakes ------------------------------------------

def _ln(x, w, b, eps=1e-5, var="biased", eps_at="variance", centre=True):
    x = x.double()
    if centre:
        x = x - x.mean(-1, keepdim=True)
    v = x.pow(2).mean(-1, keepdim=True) if var == "biased" else x.var(-1, keepdim=True, unbiased=True)
    std = (v + eps).sqrt() if eps_at == "variance" else v.sqrt() + eps if eps_at == "std" else v.sqrt()
    return x / std * w.double() + b.double()


def _attn(x, W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O, mask="causal", softmax_dim=-1, scale="sqrt", biases=True):
    x, W_Q, W_K, W_V, W_O = (t.double() for t in (x, W_Q, W_K, W_V, W_O))
    on = 1.0 if biases else 0.0
    q = torch.einsum("bpm,hme->bphe", x, W_Q) + on * b_Q.double()  # [batch, pos, head, d_head]
    k = torch.einsum("bpm,hme->bphe", x, W_K) + on * b_K.double()
    v = torch.einsum("bpm,hme->bphe", x, W_V) + on * b_V.double()
    pattern = _pattern(q, k, mask, softmax_dim, scale, d_model=x.shape[-1])
    z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)  # [batch, pos, head, d_head]
    return torch.einsum("bqhe,hem->bqm", z, W_O) + on * b_O.double()


def _pattern(q, k, mask="causal", softmax_dim=-1, scale="sqrt", d_model=None):
    """[batch, head, q_pos, k_pos] from q, k [batch, pos, head, d_head], in float64, with a classic mistake's switch."""
    q, k = q.double(), k.double()
    d_head, pos = q.shape[-1], q.shape[1]
    factor = {"sqrt": 1 / math.sqrt(d_head), "none": 1.0, "d_head": 1 / d_head,
              "d_model": 1 / math.sqrt(d_model or d_head)}
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * factor[scale]  # [batch, head, q_pos, k_pos]
    q_i, k_i = torch.arange(pos)[:, None], torch.arange(pos)[None, :]
    hidden = {"causal": k_i > q_i, "none": k_i < -1, "shift": k_i > q_i + 1, "strict": k_i >= q_i,
              "zero": k_i > q_i, "after": k_i > q_i, "upper": k_i < q_i}[mask]
    if mask == "zero":  # masked scores set to 0 instead of -inf
        pattern = scores.masked_fill(hidden, 0.0).softmax(softmax_dim)
    elif mask == "after":  # softmax over every key, then the future zeroed without renormalising
        pattern = scores.softmax(softmax_dim).masked_fill(hidden, 0.0)
    else:
        pattern = scores.masked_fill(hidden, float("-inf")).softmax(softmax_dim)
    return pattern


GELUS = {"tanh": lambda x: F.gelu(x, approximate="tanh"), "erf": F.gelu, "relu": F.relu,
         "sigmoid": lambda x: x * torch.sigmoid(1.702 * x), "none": lambda x: x,
         "square": lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 2))),
         "no_half": lambda x: x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
         "no_root": lambda x: 0.5 * x * (1 + torch.tanh(2 / math.pi * (x + 0.044715 * x ** 3))),
         "no_x": lambda x: 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))}


def _mlp(x, W_in, b_in, W_out, b_out, act="tanh", b_in_on=1.0, b_out_on=1.0):
    pre = x.double() @ W_in.double() + b_in_on * b_in.double()  # [batch, pos, d_mlp]
    return GELUS[act](pre) @ W_out.double() + b_out_on * b_out.double()


def _block(x, p, order="pre_ln", ln2="ln2"):
    x = x.double()
    attn = lambda h: _attn(h, *(p["attn." + n] for n in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")))
    mlp = lambda h: _mlp(h, p["mlp.W_in"], p["mlp.b_in"], p["mlp.W_out"], p["mlp.b_out"])
    ln1 = lambda h: _ln(h, p["ln1.w"], p["ln1.b"])
    ln_2 = lambda h: _ln(h, p[ln2 + ".w"], p[ln2 + ".b"])
    if order == "post_ln":  # the original Transformer: normalise after adding
        mid = ln1(x + attn(x))
        return ln_2(mid + mlp(mid))
    if order == "parallel":  # attention and MLP both read resid_pre (GPT-J), not GPT-2
        return x + attn(ln1(x)) + mlp(ln_2(x))
    mid = x + attn(ln1(x))
    if "mlp.W_in" not in p:  # attention-only
        return mid
    if order == "no_residual":
        return attn(ln1(x)) + mlp(ln_2(mid))
    return mid + mlp(ln_2(mid))


def _forward(tokens, p, pos_embed=True, ln_final=True, unembed="W_U", b_U=True, skip_last=False):
    n_layers = sum(1 for k in p if k.endswith(".ln1.w"))
    resid = p["embed.W_E"].double()[tokens]
    if pos_embed:
        resid = resid + p["pos_embed.W_pos"].double()[: tokens.shape[1]]
    for l in range(n_layers - skip_last):
        resid = _block(resid, _sub(p, f"blocks.{l}."))
    if ln_final:
        resid = _ln(resid, p["ln_final.w"], p["ln_final.b"])
    W_U = p["unembed.W_U"] if unembed == "W_U" else p["embed.W_E"].T
    return resid @ W_U.double() + (p["unembed.b_U"].double() if b_U else 0.0)


# ---- 00.1 LayerNorm -------------------------------------------------------------------------------------------------

def ln_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 1), []
    for shape, spread, eps in [((2, 5, 7), 1.0, 1e-5), ((3, 4), 3.0, 1e-5), ((2, 1, 3, 6), 1.0, 0.1),
                               ((1, 6, 16), 1e-3, 1e-5)]:
        d = shape[-1]
        x = (torch.randn(shape, generator=gen) + torch.randn(shape[:-1] + (1,), generator=gen)) * spread
        w, b = 1 + 0.3 * torch.randn(d, generator=gen), 0.3 * torch.randn(d, generator=gen)
        label = f"x {list(shape)}, eps {eps}" + (", x nearly constant" if spread < 1 else "")
        cases.append(Case(dict(x=x, w=w, b=b, eps=eps), label=label))
    model = ctx.model()
    layer = _int(gen, 0, model.cfg.n_layers - 1)
    resid = _cache(model, _prompt(model, gen))[f"blocks.{layer}.hook_resid_pre"]  # [1, pos, d_model]
    ln = model.blocks[layer].ln1
    cases.append(Case(dict(x=resid.clone(), w=ln.w.detach().clone(), b=ln.b.detach().clone(), eps=model.cfg.eps),
                      weight=2.0, label=f"{_name(model)} ln1 of block {layer} on a prompt"))
    return cases


def ln_reference(x, w, b, eps):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def ln_compare(got, want, case) -> str | None:
    a = case.args
    variants = [
        (lambda: _ln(a["x"], a["w"], a["b"], a["eps"], var="unbiased"),
         "you divided by the unbiased standard deviation (n - 1): LayerNorm uses the biased variance, the mean of "
         "the squared deviations over d_model (torch.var(..., unbiased=False))"),
        (lambda: _ln(a["x"], a["w"], a["b"], a["eps"], eps_at="none"),
         "your output ignores eps: add eps to the variance, inside the square root"),
        (lambda: _ln(a["x"], a["w"], a["b"], a["eps"], eps_at="std"),
         "you added eps to the standard deviation; LayerNorm adds it to the variance, inside the square root"),
        (lambda: _ln(a["x"], a["w"], a["b"], a["eps"], centre=False),
         "you did not subtract the mean over d_model before dividing (that is RMSNorm, not LayerNorm)"),
        (lambda: _ln(a["x"], torch.ones_like(a["w"]), torch.zeros_like(a["b"]), a["eps"]),
         "you normalised but did not apply w and b: multiply by w, then add b"),
        (lambda: _ln(a["x"], a["b"], a["w"], a["eps"]), "you swapped w and b: x_normalised * w + b"),
    ]
    return _diagnose(got, want, variants, 1e-5, 1e-4, "layer_norm's output")


# ---- 00.2 the attention pattern -------------------------------------------------------------------------------------

def pattern_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 12), []
    model = ctx.model()
    layer = _int(gen, 0, model.cfg.n_layers - 1)
    cache = _cache(model, _prompt(model, gen))
    q, k = cache[f"blocks.{layer}.attn.hook_q"], cache[f"blocks.{layer}.attn.hook_k"]
    cases.append(Case(dict(q=q.clone(), k=k.clone()),
                      weight=2.0, label=f"{_name(model)} layer {layer}'s q and k on a prompt"))
    for batch, pos, heads, d_head in [(2, 7, 3, 5), (1, 12, 1, 8), (3, 1, 2, 4)]:
        q = torch.randn(batch, pos, heads, d_head, generator=gen) * 1.5
        k = torch.randn(batch, pos, heads, d_head, generator=gen) * 1.5
        cases.append(Case(dict(q=q, k=k), label=f"random q, k [{batch}, {pos}, {heads}, {d_head}]"))
    return cases


def pattern_reference(q, k):
    """torch's own attention with the identity as values returns the pattern itself: softmax(...) @ I."""
    batch, pos, heads, _ = q.shape
    eye = torch.eye(pos, dtype=torch.float64).expand(batch, heads, pos, pos)
    return F.scaled_dot_product_attention(q.double().transpose(1, 2), k.double().transpose(1, 2), eye,
                                          is_causal=True).float()


def pattern_compare(got, want, case) -> str | None:
    q, k = case.args["q"], case.args["k"]
    shape = expect_shape(got, tuple(want.shape), "the pattern [batch, head, q_pos, k_pos]")
    if shape:
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (q.shape[0], q.shape[1], q.shape[2], q.shape[1]):
            return (f"your pattern has shape {list(got.shape)}, [batch, q_pos, head, k_pos]: put the head axis second, "
                    "torch.einsum('bqhe,bkhe->bhqk', q, k)")
        return shape
    if isinstance(got, torch.Tensor) and got.shape[-1] > 1:
        nan_rows = torch.isnan(got).any(-1).any(0).any(0)  # [q_pos]
        if nan_rows[0] and not nan_rows[1:].all():
            return ("your pattern is NaN at query 0 only: your mask hides the diagonal too, so query 0 sees nothing. "
                    "A position attends to itself and the past: keys 0..q are allowed")
    v = lambda **kw: (lambda: _pattern(q, k, **kw))
    variants = [
        (v(mask="none"), "your pattern looks at future positions (no causal mask): query q may only see keys 0..q"),
        (v(mask="shift"), "your pattern lets each query see one future key: the causal mask is off by one (hide "
                          "torch.triu(..., diagonal=1), the keys after the query)"),
        (v(mask="strict"), "your mask hides the diagonal: a position must attend to itself"),
        (v(mask="upper"), "your mask hides the past and shows the future: it is transposed"),
        (v(softmax_dim=-2), "your softmax runs over the query axis: normalise over the keys (the last axis) so that "
                            "each query's row sums to 1"),
        (v(scale="none"), "your scores are not scaled: divide q . k by sqrt(d_head) before the softmax"),
        (v(scale="d_head"), "you divided the scores by d_head: divide by sqrt(d_head)"),
        (v(mask="zero"), "you set the masked scores to 0: set them to -inf so that they get zero attention"),
        (v(mask="after"), "you zeroed the future after the softmax without renormalising: mask the scores with "
                          "-inf before the softmax"),
    ]
    found = _diagnose(got, want, variants, 1e-5, 1e-4, "your pattern")
    if found and not any(text in found for _, text in variants) and got.is_floating_point():
        rows = got.double().sum(-1)  # [batch, head, q_pos]
        if not torch.isnan(rows).any() and (rows - 1).abs().max() > 1e-3:
            return (f"your pattern's rows sum to {_show_values(rows)}, not 1: mask the future keys with -inf, then "
                    f"softmax over the keys (dim=-1). ({found})")
    return found


def _show_values(t, k: int = 3) -> str:
    values = [round(v, 4) for v in t.flatten()[:k].tolist()]
    return f"{values}{' ...' if t.numel() > k else ''}"



# ---- 00.3 attention -------------------------------------------------------------------------------------------------

ATTN_ARGS = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")


def _attn_args(model: GPT, layer: int, x: torch.Tensor) -> dict:
    attn = model.blocks[layer].attn
    return dict(x=x.detach().clone(), **{n: getattr(attn, n).detach().clone() for n in ATTN_ARGS})


def attn_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 2), []
    model = ctx.model()
    layer = _int(gen, 0, model.cfg.n_layers - 1)
    x = _cache(model, _prompt(model, gen))[f"blocks.{layer}.ln1.hook_normalized"]
    cases.append(Case(_attn_args(model, layer, x), weight=2.0, label=f"{_name(model)} block {layer}"))
    for batch, pos, fixed in [(2, 7, {}), (1, 12, {"n_heads": 1}), (3, 5, {}), (2, 1, {})]:
        cfg = _random_cfg(gen, n_layers=1, **fixed)
        if pos == 7:  # d_model need not be n_heads * d_head: the weights carry the head axis
            cfg["d_model"] = cfg["n_heads"] * cfg["d_head"] + 3
        rand = _random_model(ctx, gen, **cfg)
        x = torch.randn(batch, pos, cfg["d_model"], generator=gen)
        label = f"{_describe(cfg, True)}; x [{batch}, {pos}, {cfg['d_model']}]"
        cases.append(Case(_attn_args(rand, 0, x), label=label))
    return cases


@torch.no_grad()
def attn_reference(x, W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O):
    n_heads, d_model, d_head = W_Q.shape
    cfg = GPTConfig(n_layers=1, n_heads=n_heads, d_model=d_model, d_head=d_head, n_ctx=x.shape[1], d_vocab=1,
                    attn_only=True)
    module = Attention(cfg, 0)  # minimech's attention (torch's fused kernel when nothing reads the pattern)
    module.load_state_dict(dict(W_Q=W_Q, W_K=W_K, W_V=W_V, W_O=W_O, b_Q=b_Q, b_K=b_K, b_V=b_V, b_O=b_O))
    return module(x)


def attn_compare(got, want, case) -> str | None:
    a = case.args
    if isinstance(got, torch.Tensor) and got.shape == want.shape and got.shape[1] > 1:
        nan_rows = torch.isnan(got).any(-1).any(0)  # [pos]
        if nan_rows[0] and not nan_rows[1:].all():
            return ("your output is NaN at query position 0 only: your mask hides the diagonal too, so position 0 "
                    "sees nothing. A position attends to itself and the past: keys 0..q are allowed")
    v = lambda **kw: (lambda: _attn(**a, **kw))
    variants = [
        (v(mask="none"), "your attention looks at future positions (the output matches attention with no causal "
                         "mask): check the causal mask, query q may only see keys 0..q"),
        (v(mask="shift"), "your attention lets each query see one future position: the causal mask is off by one "
                          "(use torch.triu(..., diagonal=1) for the hidden entries)"),
        (v(mask="strict"), "your mask hides the diagonal: a position must attend to itself"),
        (v(mask="upper"), "your mask hides the past and shows the future: it is transposed"),
        (v(softmax_dim=-2), "your softmax runs over the query axis: normalise over the keys (the last axis of "
                            "[batch, head, q_pos, k_pos]) so that each query's pattern sums to 1"),
        (v(mask="none", softmax_dim=-2), "your softmax runs over the query axis and there is no causal mask"),
        (v(scale="none"), "your scores are not scaled: divide q . k by sqrt(d_head) before the softmax"),
        (v(scale="d_head"), "you divided the scores by d_head: divide by sqrt(d_head)"),
        (v(scale="d_model"), "you divided the scores by sqrt(d_model): divide by sqrt(d_head)"),
        (v(mask="zero"), "you set the masked scores to 0: set them to -inf so that they get zero attention"),
        (v(mask="after"), "you zeroed the future after the softmax without renormalising: mask the scores with "
                          "-inf before the softmax"),
        (v(biases=False), "you left out the biases (b_Q, b_K, b_V, b_O)"),
    ]
    return _diagnose(got, want, variants, 2e-5, 1e-4, "attention's output")


# ---- 00.4 GELU -----------------------------------------------------------------------------------------------------

def gelu_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 13)
    return [Case(dict(x=torch.linspace(-6, 6, 241)), weight=2.0, label="x = 241 points on [-6, 6]"),
            Case(dict(x=3 * torch.randn(2, 3, 7, generator=gen)), label="random x [2, 3, 7]"),
            Case(dict(x=torch.tensor([[-20.0, -3.0, 0.0], [0.5, 3.0, 20.0]])), label="x with large |x| [2, 3]")]


def gelu_reference(x):
    return F.gelu(x.double(), approximate="tanh").float()


def gelu_compare(got, want, case) -> str | None:
    x = case.args["x"].double()
    shape = expect_shape(got, tuple(want.shape), "gelu_new's output (the same shape as x)")
    if shape:
        return shape
    variants = [
        (lambda: GELUS["erf"](x), "this is the exact (erf) GELU, x * Phi(x), which F.gelu computes by default; GPT-2 "
                                  "uses the tanh approximation: write the formula, or F.gelu(x, approximate='tanh')"),
        (lambda: GELUS["sigmoid"](x), "this is the sigmoid approximation x * sigmoid(1.702 x); GPT-2 uses the tanh "
                                      "one"),
        (lambda: GELUS["relu"](x), "this is ReLU; GELU is smooth and slightly negative for negative x"),
        (lambda: GELUS["square"](x), "the cubic term is 0.044715 x^3, not x^2"),
        (lambda: GELUS["no_half"](x), "the factor 1/2 is missing: 0.5 x (1 + tanh(...))"),
        (lambda: GELUS["no_root"](x), "the factor inside tanh is sqrt(2/pi), not 2/pi"),
        (lambda: GELUS["no_x"](x), "you left out the leading x: 0.5 * x * (1 + tanh(...))"),
    ]
    return _diagnose(got, want, variants, 1e-6, 1e-5, "gelu_new's output")


# ---- 00.5 MLP -------------------------------------------------------------------------------------------------------

MLP_ARGS = ("W_in", "b_in", "W_out", "b_out")


def mlp_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 3), []
    model = ctx.model()
    if not model.cfg.attn_only:
        layer = _int(gen, 0, model.cfg.n_layers - 1)
        x = _cache(model, _prompt(model, gen))[f"blocks.{layer}.ln2.hook_normalized"]
        mlp = model.blocks[layer].mlp
        cases.append(Case(dict(x=x.clone(), **{n: getattr(mlp, n).detach().clone() for n in MLP_ARGS}),
                          weight=2.0, label=f"{_name(model)} MLP {layer}"))
    for batch, pos in [(2, 6), (1, 9), (3, 4)]:
        d_model, d_mlp = _int(gen, 3, 16), _int(gen, 5, 48)
        W_in = torch.randn(d_model, d_mlp, generator=gen) * 2 / math.sqrt(d_model)
        W_out = torch.randn(d_mlp, d_model, generator=gen) / math.sqrt(d_mlp)
        b_in, b_out = 0.5 * torch.randn(d_mlp, generator=gen), 0.2 * torch.randn(d_model, generator=gen)
        x = torch.randn(batch, pos, d_model, generator=gen)
        cases.append(Case(dict(x=x, W_in=W_in, b_in=b_in, W_out=W_out, b_out=b_out),
                          label=f"random: d_model {d_model}, d_mlp {d_mlp}, x [{batch}, {pos}, {d_model}]"))
    # W_in = 3 I and W_out = I: the output is the activation itself on [-6, 6], where erf and tanh GELU differ.
    d = 12
    x = torch.linspace(-2, 2, 2 * 5 * d).reshape(2, 5, d)
    cases.append(Case(dict(x=x, W_in=3 * torch.eye(d), b_in=torch.zeros(d), W_out=torch.eye(d), b_out=torch.zeros(d)),
                      label="identity weights: the output is the activation function itself on [-6, 6]"))
    return cases


@torch.no_grad()
def mlp_reference(x, W_in, b_in, W_out, b_out):
    d_model, d_mlp = W_in.shape
    module = MLP(GPTConfig(n_layers=1, n_heads=1, d_model=d_model, d_mlp=d_mlp, d_vocab=1, act_fn="gelu_new"), 0)
    module.load_state_dict(dict(W_in=W_in, b_in=b_in, W_out=W_out, b_out=b_out))
    return module(x)


def mlp_compare(got, want, case) -> str | None:
    a = case.args
    v = lambda **kw: (lambda: _mlp(**a, **kw))
    variants = [
        (v(act="erf"), "your activation is the exact (erf) GELU; GPT-2 uses the tanh approximation: "
                       "0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), or F.gelu(x, approximate='tanh')"),
        (v(act="sigmoid"), "your activation is the sigmoid approximation x * sigmoid(1.702 x); GPT-2 uses the tanh "
                           "approximation"),
        (v(act="relu"), "your activation is ReLU; GPT-2 uses GELU (the tanh approximation)"),
        (v(act="none"), "your MLP has no activation function between the two layers: apply GELU (tanh)"),
        (v(b_in_on=0.0), "you left out b_in"),
        (v(b_out_on=0.0), "you left out b_out"),
    ]
    return _diagnose(got, want, variants, 1e-5, 1e-4, "mlp's output")


# ---- 00.6 block -----------------------------------------------------------------------------------------------------

def block_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 4), []
    model = ctx.model()
    layer = _int(gen, 0, model.cfg.n_layers - 1)
    resid = _cache(model, _prompt(model, gen))[f"blocks.{layer}.hook_resid_pre"]
    cases.append(Case(dict(resid_pre=resid.clone(), params=_sub(_params(model), f"blocks.{layer}.")), weight=2.0,
                      label=f"{_name(model)} block {layer}"))
    for batch, pos, attn_only in [(2, 6, False), (1, 10, False), (2, 5, True)]:
        cfg = _random_cfg(gen, n_layers=1, attn_only=attn_only)
        rand = _random_model(ctx, gen, **cfg)
        x = torch.randn(batch, pos, cfg["d_model"], generator=gen)
        label = _describe(cfg) + ("; attention only (no ln2 or mlp in params)" if attn_only else "")
        cases.append(Case(dict(resid_pre=x, params=_sub(_params(rand), "blocks.0.")), weight=0.5 if attn_only else 1,
                          label=label))
    return cases


@torch.no_grad()
def block_reference(resid_pre, params):
    n_heads, d_model, d_head = params["attn.W_Q"].shape
    attn_only = "mlp.W_in" not in params
    cfg = GPTConfig(n_layers=1, n_heads=n_heads, d_model=d_model, d_head=d_head, n_ctx=resid_pre.shape[1],
                    d_vocab=1, attn_only=attn_only, d_mlp=0 if attn_only else params["mlp.W_in"].shape[1])
    module = Block(cfg, 0)
    module.load_state_dict(params)
    return module(resid_pre)


def block_compare(got, want, case) -> str | None:
    a = case.args
    if "mlp.W_in" not in a["params"]:
        return close(got, want, atol=1e-4, rtol=1e-4, what="block's output (an attention-only block: there is no "
                     "MLP, so resid_post = resid_mid)")
    v = lambda **kw: (lambda: _block(a["resid_pre"], a["params"], **kw))
    variants = [
        (v(order="post_ln"), "you normalised after adding (post-LN, as in the original Transformer); GPT-2 is pre-LN: "
                             "resid_mid = resid_pre + attn(ln1(resid_pre))"),
        (v(order="no_residual"), "you dropped the residual connection: each sublayer's output is added to the "
                                 "residual stream, not returned in its place"),
        (v(order="parallel"), "your MLP reads resid_pre; in GPT-2 it reads resid_mid, the stream after attention "
                              "wrote to it"),
        (v(ln2="ln1"), "you used ln1's weights before the MLP: the MLP has its own LayerNorm, ln2"),
    ]
    return _diagnose(got, want, variants, 1e-4, 1e-4, "block's output (resid_post)")


# ---- 00.7 the forward pass ------------------------------------------------------------------------------------------

def forward_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 5), []
    model = ctx.model()
    cases.append(Case(dict(tokens=_prompt(model, gen), params=_params(model)), weight=2.0,
                      label=f"{_name(model)} on a prompt"))
    for batch, fixed in [(2, {}), (1, {"n_layers": 3}), (3, {"n_heads": 1})]:
        cfg = _random_cfg(gen, **fixed)
        rand = _random_model(ctx, gen, **cfg)
        pos = cfg["n_ctx"] if batch == 1 else _int(gen, 2, cfg["n_ctx"] - 1)
        tokens = torch.randint(0, cfg["d_vocab"], (batch, pos), generator=gen)
        cases.append(Case(dict(tokens=tokens, params=_params(rand)),
                          label=f"{_describe(cfg)}; tokens [{batch}, {pos}]" + (" (the full context)" if batch == 1
                                                                                 else "")))
    return cases


@torch.no_grad()
def forward_reference(tokens, params):
    n_heads, d_model, d_head = params["blocks.0.attn.W_Q"].shape
    attn_only = "blocks.0.mlp.W_in" not in params
    cfg = GPTConfig(n_layers=sum(1 for k in params if k.endswith(".ln1.w")), n_heads=n_heads, d_model=d_model,
                    d_head=d_head, d_mlp=0 if attn_only else params["blocks.0.mlp.W_in"].shape[1],
                    n_ctx=params["pos_embed.W_pos"].shape[0], d_vocab=params["embed.W_E"].shape[0], attn_only=attn_only)
    model = GPT(cfg, init=False)
    model.load_state_dict(params)
    return model.eval()(tokens)


def forward_compare(got, want, case) -> str | None:
    a = case.args
    v = lambda **kw: (lambda: _forward(a["tokens"], a["params"], **kw))
    variants = [
        (v(pos_embed=False), "you left out the positional embeddings: resid = W_E[tokens] + W_pos[:pos]"),
        (v(ln_final=False), "you unembedded the residual stream without the final LayerNorm (ln_final)"),
        (v(unembed="W_E"), "you unembedded with W_E.T: this model's unembedding is its own matrix, unembed.W_U"),
        (v(b_U=False), "you left out the unembedding bias unembed.b_U"),
        (v(skip_last=True), "you ran one block too few: every layer's block runs, 0 .. n_layers - 1"),
    ]
    shape = expect_shape(got, tuple(want.shape), "logits [batch, pos, d_vocab]")
    return shape or _diagnose(got, want, variants, 1e-4, 1e-4, "gpt2_forward's logits")


# ---- 00.8 loading Hugging Face weights ------------------------------------------------------------------------------

def _to_hf(params: dict, n_heads: int, prefix: str = "transformer.", lm_head: bool = True) -> dict:
    """minimech names -> a Hugging Face GPT-2 state dict (Conv1D [in, out] weights, fused c_attn)."""
    hf = {prefix + "wte.weight": params["embed.W_E"], prefix + "wpe.weight": params["pos_embed.W_pos"],
          prefix + "ln_f.weight": params["ln_final.w"], prefix + "ln_f.bias": params["ln_final.b"]}
    for l in range(sum(1 for k in params if k.endswith(".ln1.w"))):
        p, h = _sub(params, f"blocks.{l}."), f"{prefix}h.{l}."
        per_head = lambda W: torch.cat(list(W), dim=-1)  # [head, d_model, d_head] -> [d_model, head * d_head]
        hf[h + "attn.c_attn.weight"] = torch.cat([per_head(p[f"attn.W_{n}"]) for n in "QKV"], dim=1)
        hf[h + "attn.c_attn.bias"] = torch.cat([p[f"attn.b_{n}"].flatten() for n in "QKV"])
        hf[h + "attn.c_proj.weight"], hf[h + "attn.c_proj.bias"] = p["attn.W_O"].flatten(0, 1), p["attn.b_O"]
        hf[h + "mlp.c_fc.weight"], hf[h + "mlp.c_fc.bias"] = p["mlp.W_in"], p["mlp.b_in"]
        hf[h + "mlp.c_proj.weight"], hf[h + "mlp.c_proj.bias"] = p["mlp.W_out"], p["mlp.b_out"]
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            hf[h + theirs + ".weight"], hf[h + theirs + ".bias"] = p[ours + ".w"], p[ours + ".b"]
    if lm_head:
        hf["lm_head.weight"] = params["unembed.W_U"].T
    return {k: v.detach().clone().contiguous() for k, v in hf.items()}


def load_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 6), []
    model = ctx.model()
    if model.cfg.d_model <= 256 and not model.cfg.attn_only:  # GPT-2 itself is checked by lesson.py --model gpt2
        cases.append(Case(dict(hf_sd=_to_hf(_params(model), model.cfg.n_heads), n_heads=model.cfg.n_heads),
                          weight=2.0, label=f"{_name(model)} in Hugging Face's layout (untied lm_head)"))
    for fixed, prefix, lm_head in [({}, "transformer.", True), ({"d_mlp": None}, "transformer.", True),
                                   ({}, "", False)]:
        cfg = _random_cfg(gen, n_layers=_int(gen, 1, 2), n_heads=_int(gen, 2, 4))
        if "d_mlp" in fixed:  # square MLP weights: transposing c_fc would keep the shape and change the values
            cfg["d_mlp"] = cfg["d_model"]
        params = _params(_random_model(ctx, gen, **cfg))
        if not lm_head:  # a GPT2Model file with tied embeddings: no lm_head.weight, W_U is wte's transpose
            params["unembed.W_U"] = params["embed.W_E"].T.clone()
        params["unembed.b_U"] = torch.zeros_like(params["unembed.b_U"])
        label = _describe(cfg) + ("" if lm_head else "; no 'transformer.' prefix and no lm_head.weight (tied)")
        cases.append(Case(dict(hf_sd=_to_hf(params, cfg["n_heads"], prefix, lm_head), n_heads=cfg["n_heads"]),
                          label=label))
    return cases


def _hf_sizes(hf_sd: dict, n_heads: int) -> dict:
    sd = {k.removeprefix("transformer."): v for k, v in hf_sd.items()}
    d_vocab, d_model = sd["wte.weight"].shape
    return dict(n_layer=sum(1 for k in sd if k.endswith("ln_1.weight")), n_head=n_heads, n_embd=d_model,
                n_inner=sd["h.0.mlp.c_fc.weight"].shape[1], n_positions=sd["wpe.weight"].shape[0], vocab_size=d_vocab)


def _probe_tokens(sizes: dict) -> torch.Tensor:  # [2, pos]: fixed tokens both processes agree on
    pos = min(sizes["n_positions"], 9)
    row = (torch.arange(pos) * 7 + 3) % sizes["vocab_size"]
    return torch.stack([row, row.flip(0)])


@torch.no_grad()
def load_reference(hf_sd, n_heads):
    """Hugging Face's own GPT2LMHeadModel with these weights: its logits on fixed tokens.

    transformers is a test extra; without it, minimech's own loader (held to transformers' logits by minimech's
    test suite) stands in."""
    sizes = _hf_sizes(hf_sd, n_heads)
    sd = {("" if k == "lm_head.weight" or k.startswith("transformer.") else "transformer.") + k: v
          for k, v in hf_sd.items()}
    sd.setdefault("lm_head.weight", sd["transformer.wte.weight"])  # tied files leave it out
    tokens = _probe_tokens(sizes)
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        from minimech import GPT
        from minimech.loading import hf_to_minimech

        cfg = _minimech_cfg(sizes)
        model = GPT(cfg, init=False)
        model.load_state_dict(hf_to_minimech(sd, cfg))
        return {"logits": model(tokens), "tokens": tokens}
    hf = GPT2LMHeadModel(GPT2Config(**sizes, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)).eval()
    hf.load_state_dict(sd)
    return {"logits": hf(tokens).logits, "tokens": tokens}


def _minimech_cfg(sizes: dict) -> GPTConfig:
    return GPTConfig(n_layers=sizes["n_layer"], n_heads=sizes["n_head"], d_model=sizes["n_embd"],
                     d_mlp=sizes["n_inner"], n_ctx=sizes["n_positions"], d_vocab=sizes["vocab_size"])


def _name_the_wrong_tensor(name: str, got: torch.Tensor, right: torch.Tensor) -> str:
    what = f"{name} (you gave shape {list(got.shape)})"
    if got.ndim == 2 and got.shape == right.shape[::-1] and got.shape != right.shape:
        if name == "unembed.W_U":
            return (f"{what}: lm_head is an nn.Linear, stored [d_vocab, d_model]: transpose it into W_U "
                    "[d_model, d_vocab]")
        return (f"{what} is transposed: Conv1D weights are stored [in, out], already the x @ W orientation that "
                "minimech uses; take them as they are")
    if got.shape != right.shape:
        return f"{what}: expected shape {list(right.shape)}"
    if name.endswith(("W_O", "W_in", "W_out")):
        if got.ndim == 2 and torch.allclose(got.T, right) or got.ndim == 3 and torch.allclose(
                got.flatten(0, 1).T.reshape(got.shape), right):
            return (f"{name} is transposed (square, so the shape did not warn you): Conv1D weights are stored "
                    "[in, out], already the x @ W orientation; take them as they are")
    if name.endswith(("W_Q", "W_K", "W_V")):
        if torch.allclose(got.reshape(-1), right.permute(1, 0, 2).reshape(-1)):
            return (f"{name} splits the heads wrongly: c_attn's third is [d_model, head * d_head] with head h in "
                    "columns h*d_head .. (h+1)*d_head - 1; reshape to [d_model, head, d_head], then move head first")
        return (f"{name}'s values are wrong: c_attn holds Q, K and V side by side, in that order, each "
                "[d_model, d_model]")
    if name == "unembed.W_U":
        return f"{name}: take it from lm_head.weight (transposed) when the file has one; only tied files leave it out"
    return f"{name}'s values are wrong"


def load_compare(got, want, case) -> str | None:
    if not isinstance(got, dict):
        return f"load_hf_state_dict should return a dict of minimech names -> tensors, got {type(got).__name__}"
    sizes = _hf_sizes(case.args["hf_sd"], case.args["n_heads"])
    # Only to name the tensor a wrong answer got wrong (never shown): minimech's converter, which tests/test_loading.py
    # holds to Hugging Face. Right or wrong is decided by Hugging Face's own logits, below.
    right = hf_to_minimech(case.args["hf_sd"], _minimech_cfg(sizes))
    missing, extra = sorted(set(right) - set(got)), sorted(set(got) - set(right))
    if missing or extra:
        hint = " (GPT-2 has no unembedding bias: use zeros of [d_vocab])" if "unembed.b_U" in missing else ""
        return (f"wrong keys: missing {missing[:4]}{'...' if len(missing) > 4 else ''}{hint}; unexpected "
                f"{extra[:4]}{'...' if len(extra) > 4 else ''}. Use minimech's names (see model.state_dict().keys())")
    shapes = [_name_the_wrong_tensor(k, got[k], right[k]) for k in right if tuple(got[k].shape) != right[k].shape]
    if shapes:
        return shapes[0]
    model = GPT(_minimech_cfg(sizes), init=False)
    model.load_state_dict({k: v.float() for k, v in got.items()})
    with torch.no_grad():
        logits = model.eval()(want["tokens"])
    if close(logits, want["logits"], atol=1e-4, rtol=1e-4) is None:
        return None
    wrong = [k for k in right if not torch.allclose(got[k].float(), right[k].float(), atol=1e-6)]
    note = _name_the_wrong_tensor(wrong[0], got[wrong[0]], right[wrong[0]]) if wrong else "check every tensor"
    return f"a GPT loaded with your tensors does not reproduce Hugging Face's logits: {note}"


EXERCISES = [
    Exercise(id="00.1", function="layer_norm", title="LayerNorm", cases=ln_cases, reference=ln_reference,
             compare=ln_compare,
             library=("torch.nn.functional.layer_norm", "torch.layer_norm", "torch.native_layer_norm")),
    Exercise(id="00.2", function="attention_pattern", title="The attention pattern", cases=pattern_cases,
             reference=pattern_reference, compare=pattern_compare,
             library=("torch.nn.functional.scaled_dot_product_attention",)),
    Exercise(id="00.3", function="attention", title="Causal self-attention", cases=attn_cases,
             reference=attn_reference, compare=attn_compare, uses=("00.2",),
             library=("torch.nn.functional.scaled_dot_product_attention",
                      "torch.nn.functional.multi_head_attention_forward")),
    Exercise(id="00.4", function="gelu_new", title="GPT-2's GELU", cases=gelu_cases, reference=gelu_reference,
             compare=gelu_compare),
    Exercise(id="00.5", function="mlp", title="The MLP", cases=mlp_cases, reference=mlp_reference,
             compare=mlp_compare, uses=("00.4",)),
    Exercise(id="00.6", function="block", title="A transformer block", cases=block_cases, reference=block_reference,
             compare=block_compare, uses=("00.1", "00.3", "00.5")),
    Exercise(id="00.7", function="gpt2_forward", title="The whole forward pass", cases=forward_cases,
             reference=forward_reference, compare=forward_compare, uses=("00.1", "00.6")),
    Exercise(id="00.8", function="load_hf_state_dict", title="Loading GPT-2's weights", cases=load_cases,
             reference=load_reference, compare=load_compare,
             library=("minimech.loading.hf_to_minimech",)),
]
