"""Checks for lesson 01: the residual stream read from a cache, taken apart, and read through the unembedding.

Ground truth: algebraic identities (the stream is the running sum of what the blocks wrote), minimech's
ActivationCache.decompose_resid, minimech.analysis.logit_lens and direct_logit_attribution, and a naive loop.
Inputs: the lesson's model on IOI and fact prompts, and random GPT-2s (every parameter random) of varied sizes. The
learner gets the cache as a plain dict of hook name -> tensor (what run_with_cache stores), so the work is theirs.
When an answer is wrong, the check recomputes the classic mistakes in float64 and names the one it matches.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from minimech import GPT
from minimech.analysis.attribution import direct_logit_attribution
from minimech.analysis.lens import logit_lens as minimech_logit_lens
from minimech.cache import ActivationCache
from minimech.grading import Case, Exercise, close, expect_shape

IOI = [  # (prompt, indirect object, subject): the shipped models' vocabularies cover them, and GPT-2's
    ("When Mary and John went to the store, John gave a drink to", " Mary", " John"),
    ("When Mary and John went to the store, Mary gave a drink to", " John", " Mary"),
    ("When Tom and James went to the park, James gave the ball to", " Tom", " James"),
    ("When Tom and James went to the park, Tom gave the ball to", " James", " Tom"),
    ("After Sarah and David went to the school, David handed the book to", " Sarah", " David"),
    ("After Sarah and David went to the school, Sarah handed the book to", " David", " Sarah"),
]
FACTS = ["Japan's capital is Tokyo. France's capital is", "Germany is a country located in",
         "In Brazil, people speak"]


# ---- inputs --------------------------------------------------------------------------------------------------------

def _gen(ctx, salt: int) -> torch.Generator:  # one stream per exercise: the order the grader asks in is irrelevant
    return torch.Generator().manual_seed(ctx.seed * 7919 + salt)


def _int(gen, lo: int, hi: int) -> int:  # uniform in [lo, hi]
    return int(torch.randint(lo, hi + 1, (), generator=gen))


@contextmanager
def _one_thread():
    """Activations must be bitwise equal in both processes; the learner's runs torch on one thread, so do we."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def _run(model: GPT, tokens: torch.Tensor) -> dict:
    """Every activation of one run, as the plain dict {hook name: tensor} the learner gets."""
    with _one_thread():
        _, cache = model.run_with_cache(tokens)
    return dict(cache.items())


@torch.no_grad()
def _random_model(ctx, gen, **cfg) -> GPT:
    """A random GPT whose parameters are all random, at GPT-2-like scales (a LayerNorm weight near 1)."""
    model = ctx.random_model(**cfg)
    for name, p in model.named_parameters():
        if name.endswith(".w"):
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
        elif p.ndim == 1 or name.split(".")[-1].startswith("b_"):
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(torch.randn(p.shape, generator=gen) * 1.5 / math.sqrt(p.shape[-2]))
    return model.eval()


def _random_cfg(gen, **fixed) -> dict:
    cfg = dict(n_layers=_int(gen, 1, 3), n_heads=_int(gen, 1, 4), d_head=_int(gen, 3, 6), d_mlp=_int(gen, 5, 30),
               n_ctx=_int(gen, 8, 16), d_vocab=_int(gen, 13, 40))
    cfg.update(fixed)
    cfg.setdefault("d_model", cfg["n_heads"] * cfg["d_head"])
    return cfg


def _describe(cfg: dict) -> str:
    kind = "attention-only" if cfg.get("attn_only") else f"d_mlp {cfg['d_mlp']}"
    return (f"random GPT: {cfg['n_layers']} layers x {cfg['n_heads']} heads, d_model {cfg['d_model']}, {kind}, "
            f"d_vocab {cfg['d_vocab']}")


def _name(model: GPT) -> str:
    return model.card.get("name") or model.cfg.model_name


def _ioi_batch(model: GPT, gen, batch: int):
    """(tokens [batch, pos], io ids [batch], s ids [batch]): IOI prompts of one token length."""
    start = _int(gen, 0, len(IOI) - 1)
    chosen = [IOI[(start + i) % len(IOI)] for i in range(len(IOI))]
    rows = [model.to_tokens(p)[0] for p, _, _ in chosen]
    keep = [i for i, r in enumerate(rows) if len(r) == len(rows[0])][:batch]
    tokens = torch.stack([rows[i] for i in keep])
    io = torch.tensor([model.to_single_token(chosen[i][1]) for i in keep])
    s = torch.tensor([model.to_single_token(chosen[i][2]) for i in keep])
    return tokens, io, s


def _fact_tokens(model: GPT, gen) -> torch.Tensor:  # [1, pos]
    return model.to_tokens(FACTS[_int(gen, 0, len(FACTS) - 1)])


def _diagnose(got, want, variants, atol: float, rtol: float, what: str) -> str | None:
    """None when got matches want; else the first classic mistake got matches (variants: (fn() -> tensor, text),
    computed only when needed), followed by close()'s note on got's values."""
    msg = close(got, want, atol=atol, rtol=rtol, what=what)
    if msg is None or not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return msg
    got64 = got.detach().double()
    for make, text in variants:
        alt = make()
        if alt.shape == got.shape and torch.allclose(got64, alt, atol=atol * 10, rtol=rtol * 10):
            return f"{text}. ({msg})"
    return msg


def _ln_final64(model: GPT, x: torch.Tensor, bias: bool = True) -> torch.Tensor:  # recomputed per point, float64
    ln = model.ln_final
    x = x.double() - x.double().mean(-1, keepdim=True)
    out = x / (x.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt() * ln.w.detach().double()
    return out + ln.b.detach().double() if bias else out


# ---- 01.1 the residual stream at every layer ------------------------------------------------------------------------

def stack_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 1)
    model = ctx.model()
    tokens, _, _ = _ioi_batch(model, gen, 2)
    cases = [Case(dict(cache=_run(model, tokens), n_layers=model.cfg.n_layers), weight=2.0,
                  label=f"{_name(model)} on {tokens.shape[0]} IOI prompts")]
    for attn_only in (False, True):
        cfg = _random_cfg(gen, attn_only=attn_only)
        tokens = torch.randint(0, cfg["d_vocab"], (_int(gen, 1, 3), _int(gen, 2, cfg["n_ctx"])), generator=gen)
        cases.append(Case(dict(cache=_run(_random_model(ctx, gen, **cfg), tokens), n_layers=cfg["n_layers"]),
                          label=f"{_describe(cfg)}; tokens {list(tokens.shape)}"))
    return cases


def stack_reference(cache, n_layers):
    """The identity the stream obeys: it starts as embed + pos_embed and each block adds its attention and MLP
    outputs. Running sums of those writes, not the cached resid hooks."""
    stream = cache["hook_embed"] + cache["hook_pos_embed"]  # [batch, pos, d_model]
    points = [stream]
    for l in range(n_layers):
        stream = stream + cache[f"blocks.{l}.hook_attn_out"]
        if f"blocks.{l}.hook_mlp_out" in cache:
            stream = stream + cache[f"blocks.{l}.hook_mlp_out"]
        points.append(stream)
    return torch.stack(points)


def stack_compare(got, want, case) -> str | None:
    c, n = case.args["cache"], case.args["n_layers"]
    if isinstance(got, torch.Tensor) and got.ndim == 4 and got.shape[0] == n:
        return (f"you returned {n} point(s); there are n_layers + 1 = {n + 1}: the stream before each block, and the "
                f"final stream after the last block (blocks.{n - 1}.hook_resid_post)")
    final = f"blocks.{n - 1}.hook_resid_post"
    variants = [
        (lambda: torch.stack([c[f"blocks.{l}.hook_resid_post"] for l in range(n)] + [c[final]]).double(),
         "your first point already includes block 0's output: the stream before block l is "
         "blocks.{l}.hook_resid_pre, and the first point is the embeddings"),
        (lambda: torch.stack([c[f"blocks.{l}.hook_resid_pre"] for l in range(n)] + [c["ln_final.hook_normalized"]]
                             ).double(),
         f"your last point is ln_final's output; the last point is the stream itself, {final}"),
    ]
    return expect_shape(got, tuple(want.shape), "residual_stack's output [n_layers + 1, batch, pos, d_model]") or \
        _diagnose(got, want, variants, 1e-5, 1e-5, "residual_stack's output")


# ---- 01.2 decomposing the stream ----------------------------------------------------------------------------------

def decompose_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 2), []
    model = ctx.model()
    tokens, _, _ = _ioi_batch(model, gen, 3)
    cache = _run(model, tokens)
    for layer, pos in [(model.cfg.n_layers, -1), (_int(gen, 1, model.cfg.n_layers - 1), _int(gen, 0, 5))]:
        cases.append(Case(dict(model=model, cache=cache, layer=layer, pos=pos), weight=2.0,
                          label=f"{_name(model)}, {tokens.shape[0]} IOI prompts, before block {layer}, pos {pos}"))
    for attn_only, layer in ((False, 0), (False, None), (True, None)):
        cfg = _random_cfg(gen, n_layers=_int(gen, 2, 3), attn_only=attn_only)
        rand = _random_model(ctx, gen, **cfg)
        tokens = torch.randint(0, cfg["d_vocab"], (2, _int(gen, 3, cfg["n_ctx"])), generator=gen)
        layer = _int(gen, 1, cfg["n_layers"]) if layer is None else layer
        pos = _int(gen, -tokens.shape[1], tokens.shape[1] - 1)
        cases.append(Case(dict(model=rand, cache=_run(rand, tokens), layer=layer, pos=pos),
                          weight=0.5 if layer == 0 else 1.0,
                          label=f"{_describe(cfg)}; before block {layer}, pos {pos}"))
    return cases


@torch.no_grad()
def decompose_reference(model, cache, layer, pos):
    parts = ActivationCache(cache, model).decompose_resid(layer, "pre", pos=pos)
    return {label: t for label, t in parts.items()}


def _resid(model, cache, layer) -> str:
    n = model.cfg.n_layers
    return f"blocks.{n - 1}.hook_resid_post" if layer == n else f"blocks.{layer}.hook_resid_pre"


def decompose_compare(got, want, case) -> str | None:
    a = case.args
    model, layer = a["model"], a["layer"]
    if not isinstance(got, dict):
        return f"decompose_resid should return a dict {{label: tensor [batch, d_model]}}, got {type(got).__name__}"
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if any(k.startswith(f"L{layer}") for k in extra):
        earlier = f"what blocks 0..{layer - 1} wrote" if layer else "the embeddings (embed and pos_embed)"
        return (f"you included block {layer}'s own components (e.g. {extra[0]!r}): the stream before block {layer} "
                f"holds only {earlier}")
    if any(k.endswith("attn_bias") for k in missing):
        return ("you left out the attention biases: each layer's b_O belongs to no head, so it is its own component "
                f"'L{{l}}attn_bias' (missing {[k for k in missing if k.endswith('attn_bias')][:3]})")
    if missing or extra:
        return f"wrong labels: missing {missing[:5]}, unexpected {extra[:5]} (see the lesson for the labels)"
    for label in want:
        problem = expect_shape(got[label], tuple(want[label].shape), f"component {label!r}")
        if problem:
            return problem + " (select position pos: each component is [batch, d_model])"
    resid = a["cache"][_resid(model, a["cache"], layer)][:, a["pos"]].double()  # [batch, d_model]
    total = sum(t.double() for t in got.values())
    gap = (total - resid).norm(dim=-1).max().item()
    for label in want:
        problem = close(got[label], want[label], atol=1e-5, rtol=1e-4, what=f"component {label!r}")
        if problem is None:
            continue
        if label.startswith("L") and "H" in label:
            l = int(label[1:label.index("H")])
            b_O = model.blocks[l].attn.b_O.detach()
            if torch.allclose(got[label].double() - b_O.double(), want[label].double(), atol=1e-4, rtol=1e-4):
                return (f"{label} includes b_O: a head's write is z_h @ W_O[h]; b_O is added once per layer, as "
                        f"'L{l}attn_bias'. ({problem})")
        return (f"{problem}. Your components sum to the residual stream with an error of {gap:.3g} (max norm over "
                "the batch)")
    return None


# ---- 01.3 the logit lens ------------------------------------------------------------------------------------------

def lens_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 3), []
    model = ctx.model()
    tokens, _, _ = _ioi_batch(model, gen, 2)
    cases.append(Case(dict(model=model, tokens=tokens, pos=-1), weight=2.0,
                      label=f"{_name(model)}, IOI, last position"))
    tokens = _fact_tokens(model, gen)
    cases.append(Case(dict(model=model, tokens=tokens, pos=_int(gen, 1, tokens.shape[1] - 1)),
                      label=f"{_name(model)}, a fact prompt, a middle position"))
    for fixed in ({}, {"attn_only": True}):
        cfg = _random_cfg(gen, **fixed)
        tokens = torch.randint(0, cfg["d_vocab"], (_int(gen, 1, 3), _int(gen, 2, cfg["n_ctx"])), generator=gen)
        cases.append(Case(dict(model=_random_model(ctx, gen, **cfg), tokens=tokens, pos=-1),
                          label=f"{_describe(cfg)}; tokens {list(tokens.shape)}"))
    return cases


def lens_reference(model, tokens, pos):
    return minimech_logit_lens(model, tokens, pos=pos).log_probs  # [n_points, batch, d_vocab]


@torch.no_grad()
def _lens_variant(model, tokens, pos, points="pre", ln="recompute", out="log_probs"):
    cache = _run(model, tokens)
    n = model.cfg.n_layers
    where = [f"blocks.{l}.hook_resid_{points}" for l in range(n)] + [f"blocks.{n - 1}.hook_resid_post"]
    x = torch.stack([cache[w][:, pos] for w in where]).double()  # [n_points, batch, d_model]
    if ln == "none":
        normed = x
    elif ln == "cached":  # every point divided by the final stream's scale
        centred = x - x.mean(-1, keepdim=True)
        normed = centred / cache["ln_final.hook_scale"][:, pos].double() * model.ln_final.w.double() \
            + model.ln_final.b.double()
    else:
        normed = _ln_final64(model, x, bias=(ln != "no_bias"))
    logits = normed @ model.W_U.detach().double() + model.b_U.detach().double()
    return {"log_probs": logits.log_softmax(-1), "logits": logits, "probs": logits.softmax(-1)}[out]


def lens_compare(got, want, case) -> str | None:
    a = case.args
    v = lambda **kw: (lambda: _lens_variant(a["model"], a["tokens"], a["pos"], **kw))
    variants = [
        (v(ln="none"), "you unembedded the stream without the final LayerNorm: apply ln_final (with each point's own "
                       "mean and variance) before W_U"),
        (v(ln="cached"), "you divided every point by the final stream's cached ln_final scale; the logit lens "
                         "normalises each point by its own statistics, as if it were the final stream"),
        (v(ln="no_bias"), "you left out ln_final's bias b"),
        (v(points="post"), "your first point already includes block 0's output: read the stream *before* each block "
                           "(hook_resid_pre), then the final stream"),
        (v(out="logits"), "you returned logits; return log-probabilities (log_softmax over d_vocab)"),
        (v(out="probs"), "you returned probabilities; return log-probabilities (log_softmax over d_vocab)"),
    ]
    shape = expect_shape(got, tuple(want.shape), "logit_lens's output [n_layers + 1, batch, d_vocab]")
    return shape or _diagnose(got, want, variants, 1e-4, 1e-4, "logit_lens's log-probs")


# ---- 01.4 where the prediction forms --------------------------------------------------------------------------------

def _flickering_log_probs(gen, n_points: int, batch: int, d_vocab: int) -> torch.Tensor:
    """Random log-probs where each row's final answer becomes top-1 at a random point, and in some rows is briefly
    top-1 earlier too, then loses it (so "first top-1" and "top-1 from here on" differ)."""
    logits = torch.randn(n_points, batch, d_vocab, generator=gen)
    for b in range(batch):
        answer, forms = _int(gen, 0, d_vocab - 1), _int(gen, 0, n_points - 1)
        logits[forms:, b, answer] = logits[forms:, b].max(-1).values + 0.5 + torch.rand(n_points - forms, generator=gen)
        if forms >= 2:
            logits[forms - 1, b, answer] = logits[forms - 1, b].min() - 1  # not top-1 just before it forms
            if b % 2 == 0:  # a flicker: top-1 once, earlier
                early = _int(gen, 0, forms - 2)
                logits[early, b, answer] = logits[early, b].max() + 1
    return logits.log_softmax(-1)


@torch.no_grad()
def _model_lens(model: GPT, tokens: torch.Tensor) -> torch.Tensor:  # [n_points, batch, d_vocab] at the last position
    cache = _run(model, tokens)
    n = model.cfg.n_layers
    x = torch.stack([cache[f"blocks.{l}.hook_resid_pre"][:, -1] for l in range(n)]
                    + [cache[f"blocks.{n - 1}.hook_resid_post"][:, -1]])
    return (_ln_final64(model, x) @ model.W_U.double() + model.b_U.double()).float().log_softmax(-1)


def forms_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 4)
    cases = [Case(dict(log_probs=_flickering_log_probs(gen, n, b, v)), label=f"random log-probs [{n}, {b}, {v}]")
             for n, b, v in ((5, 6, 9), (13, 8, 30), (2, 3, 7))]
    model = ctx.model()
    tokens, _, _ = _ioi_batch(model, gen, 4)
    cases.append(Case(dict(log_probs=_model_lens(model, tokens)), weight=2.0,
                      label=f"the logit lens of {_name(model)} on {tokens.shape[0]} IOI prompts"))
    return cases


def forms_reference(log_probs):
    """A plain loop: walk back from the final point while its top-1 token is still the final one."""
    top = log_probs.argmax(-1).tolist()  # [n_points][batch]
    n_points, batch = len(top), len(top[0])
    answer = []
    for b in range(batch):
        point = n_points - 1
        while point > 0 and top[point - 1][b] == top[-1][b]:
            point -= 1
        answer.append(point)
    return torch.tensor(answer)


def forms_compare(got, want, case) -> str | None:
    if isinstance(got, torch.Tensor) and got.is_floating_point():
        got = got.round()
    msg = close(got, want, atol=0, rtol=0, what="prediction_forms_at's output")
    if msg is None:
        return None
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return msg
    top = case.args["log_probs"].argmax(-1)  # [n_points, batch]
    agrees = top == top[-1]
    first = agrees.long().argmax(0)  # first point where it is top-1, even if it is lost again later
    if torch.equal(got.long(), first) and not torch.equal(first, want):
        return ("you returned the first point where the final answer is top-1, but in some rows it loses the top spot "
                "again at a later point: the prediction has formed where it becomes top-1 *and stays* top-1 to the "
                f"end. ({msg})")
    if torch.equal(got.long(), want - 1):
        return f"your points are off by one: return the first point of the final run of agreement ({msg})"
    return msg


# ---- 01.5 the lens's KL from the final distribution ------------------------------------------------------------------

def kl_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 6)
    cases = []
    for n, b, v, sharp in ((4, 3, 11, 1.0), (6, 2, 50, 4.0)):
        logits = torch.randn(n, b, v, generator=gen) * sharp
        cases.append(Case(dict(log_probs=logits.log_softmax(-1)), label=f"random log-probs [{n}, {b}, {v}]"))
    model = ctx.model()
    tokens, _, _ = _ioi_batch(model, gen, 3)
    cases.append(Case(dict(log_probs=_model_lens(model, tokens)), weight=2.0,
                      label=f"the logit lens of {_name(model)} on {tokens.shape[0]} IOI prompts"))
    return cases


def kl_reference(log_probs):
    """A plain loop in float64 over points, prompts and the vocabulary."""
    lp = log_probs.double()
    n_points, batch, d_vocab = lp.shape
    out = torch.zeros(n_points, batch, dtype=torch.float64)
    for i in range(n_points):
        for b in range(batch):
            out[i, b] = sum(math.exp(lp[-1, b, v]) * (lp[-1, b, v] - lp[i, b, v]) for v in range(d_vocab))
    return out.float()


def kl_compare(got, want, case) -> str | None:
    lp = case.args["log_probs"].double()
    final = lp[-1:]
    variants = [
        (lambda: (lp.exp() * (lp - final)).sum(-1), "you computed KL(point || final): the divergence is from the "
                                                    "final distribution, sum of P_final * (log P_final - log P_point)"),
        (lambda: (final.exp() * (final - lp)).mean(-1), "you averaged over the vocabulary: KL sums over it"),
        (lambda: (final - lp).sum(-1), "you left out the weights: each term is P_final(v) * (log P_final(v) - "
                                       "log P_point(v))"),
        (lambda: (lp[:1].exp() * (lp[:1] - lp)).sum(-1), "you compared with the first point: compare with the final "
                                                         "point (the last), the model's own prediction"),
        (lambda: (final * (final - lp)).sum(-1), "you weighted by log P_final: weight by P_final = exp(log P_final)"),
    ]
    shape = expect_shape(got, tuple(lp.shape[:2]), "lens_kl's output [n_points, batch]")
    return shape or _diagnose(got, want, variants, 1e-4, 1e-4, "lens_kl's output")


# ---- 01.6 direct logit attribution of heads -----------------------------------------------------------------------

def dla_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 5), []
    model = ctx.model()
    tokens, io, s = _ioi_batch(model, gen, 4)
    cases.append(Case(dict(model=model, cache=_run(model, tokens), correct=io, wrong=s, pos=-1), weight=2.0,
                      label=f"{_name(model)}, {tokens.shape[0]} IOI prompts, IO - S"))
    for fixed in ({}, {"attn_only": True}):
        cfg = _random_cfg(gen, n_layers=_int(gen, 2, 3), **fixed)
        rand = _random_model(ctx, gen, **cfg)
        batch = _int(gen, 1, 3)
        tokens = torch.randint(0, cfg["d_vocab"], (batch, _int(gen, 3, cfg["n_ctx"])), generator=gen)
        correct = torch.randint(0, cfg["d_vocab"], (batch,), generator=gen)
        wrong = (correct + 1 + torch.randint(0, cfg["d_vocab"] - 1, (batch,), generator=gen)) % cfg["d_vocab"]
        pos = _int(gen, 0, tokens.shape[1] - 1)
        cases.append(Case(dict(model=rand, cache=_run(rand, tokens), correct=correct, wrong=wrong, pos=pos),
                          label=f"{_describe(cfg)}; batch {batch}, pos {pos}"))
    return cases


def dla_reference(model, cache, correct, wrong, pos):
    return direct_logit_attribution(model, ActivationCache(cache, model), correct, wrong, pos=pos).by_head()


@torch.no_grad()
def _dla_variant(model, cache, correct, wrong, pos, scale="cached", centre=True, w=True, diff=True, sign=1.0,
                 reduce="mean"):
    W_U = model.W_U.detach().double()
    direction = W_U[:, correct] - (W_U[:, wrong] if diff else 0.0)  # [d_model, batch]
    rows = []
    for l in range(model.cfg.n_layers):
        z = cache[f"blocks.{l}.attn.hook_z"][:, pos].double()  # [batch, head, d_head]
        x = torch.einsum("bhe,hem->bhm", z, model.blocks[l].attn.W_O.detach().double())  # [batch, head, d_model]
        if centre:
            x = x - x.mean(-1, keepdim=True)
        if scale == "cached":
            x = x / cache["ln_final.hook_scale"][:, pos].double()[:, None]
        elif scale == "own":  # each head normalised by its own statistics
            x = x / (x.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
        if w:
            x = x * model.ln_final.w.detach().double()
        per_prompt = sign * torch.einsum("bhm,mb->bh", x, direction)
        rows.append(per_prompt.mean(0) if reduce == "mean" else per_prompt.sum(0))
    return torch.stack(rows)


def dla_compare(got, want, case) -> str | None:
    a = case.args
    v = lambda **kw: (lambda: _dla_variant(**a, **kw))
    variants = [
        (v(scale="none"), "you did not divide by the final LayerNorm's scale: divide each head's (centred) write by "
                          "cache['ln_final.hook_scale'] at pos, the divisor ln_final used in this run"),
        (v(scale="own"), "you normalised each head's write by its own standard deviation: ln_final divided the whole "
                         "stream by one number, the cached ln_final.hook_scale; use it for every head"),
        (v(centre=False), "you did not centre each head's write: ln_final subtracts the mean over d_model first"),
        (v(w=False), "you left out ln_final.w: after dividing by the scale, multiply by the LayerNorm's weight"),
        (v(diff=False), "you attributed the correct token's logit alone; the metric is the logit difference: use "
                        "W_U[:, correct] - W_U[:, wrong]"),
        (v(sign=-1.0), "your signs are flipped: the difference is logit[correct] - logit[wrong]"),
        (v(reduce="sum"), "you summed over the prompts; take the mean"),
    ]
    shape = expect_shape(got, tuple(want.shape), "head_logit_attribution's output [n_layers, n_heads]")
    return shape or _diagnose(got, want, variants, 1e-4, 1e-4, "head_logit_attribution's output")


# ---- 01.7 every component's share -------------------------------------------------------------------------------

def comp_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 7), []
    model = ctx.model()
    tokens, io, s = _ioi_batch(model, gen, 4)
    cases.append(Case(dict(model=model, cache=_run(model, tokens), correct=io, wrong=s, pos=-1), weight=2.0,
                      label=f"{_name(model)}, {tokens.shape[0]} IOI prompts, IO - S"))
    for fixed in ({}, {"attn_only": True}):
        cfg = _random_cfg(gen, n_layers=_int(gen, 1, 2), **fixed)
        rand = _random_model(ctx, gen, **cfg)
        batch = _int(gen, 1, 3)
        tokens = torch.randint(0, cfg["d_vocab"], (batch, _int(gen, 3, cfg["n_ctx"])), generator=gen)
        correct = torch.randint(0, cfg["d_vocab"], (batch,), generator=gen)
        wrong = (correct + 1 + torch.randint(0, cfg["d_vocab"] - 1, (batch,), generator=gen)) % cfg["d_vocab"]
        pos = _int(gen, 0, tokens.shape[1] - 1)
        cases.append(Case(dict(model=rand, cache=_run(rand, tokens), correct=correct, wrong=wrong, pos=pos),
                          label=f"{_describe(cfg)}; batch {batch}, pos {pos}"))
    return cases


def comp_reference(model, cache, correct, wrong, pos):
    result = direct_logit_attribution(model, ActivationCache(cache, model), correct, wrong, pos=pos)
    return {label: result.per_prompt[i] for i, label in enumerate(result.labels)}


def comp_compare(got, want, case) -> str | None:
    a = case.args
    if not isinstance(got, dict):
        return f"return a dict {{label: [batch]}}, got {type(got).__name__}"
    missing, extra = [k for k in want if k not in got], [k for k in got if k not in want]
    if missing or extra:
        hint = ""
        if "ln_final.b" in missing or "b_U" in missing:
            hint = (": the two terms that belong to no component are 'ln_final.b' (ln_final's bias dotted with the "
                    "direction) and 'b_U' (b_U[correct] - b_U[wrong])")
        return f"your labels differ: missing {missing[:4]}, unexpected {extra[:4]}{hint}"
    pos, rows = a["pos"], torch.arange(len(a["correct"]))
    model, cache = a["model"], a["cache"]
    W_U = model.W_U.detach().double()
    direction = W_U[:, a["correct"]] - W_U[:, a["wrong"]]  # [d_model, batch]
    total = (cache["ln_final.hook_normalized"][:, pos].double() @ W_U + model.b_U.detach().double())
    logit_diff = total[rows, a["correct"]] - total[rows, a["wrong"]]
    for label, value in want.items():
        problem = close(got[label], value, atol=1e-4, rtol=1e-4, what=f"your {label!r}")
        if problem is None:
            continue
        mine = got[label].detach().double() if isinstance(got[label], torch.Tensor) else None
        if label == "ln_final.b" and mine is not None and mine.shape == value.shape:
            if torch.allclose(mine, torch.zeros_like(mine), atol=1e-6) and value.abs().max() > 1e-4:
                return "your 'ln_final.b' is zero: it is ln_final.b (the bias, not rescaled) dotted with the direction"
        if label not in ("ln_final.b", "b_U") and mine is not None and mine.shape == value.shape:
            unscaled = value.double() * cache["ln_final.hook_scale"][:, pos, 0].double()
            if torch.allclose(mine, unscaled, atol=1e-3, rtol=1e-3):
                return (f"your {label!r} is not divided by the final LayerNorm's scale: divide each component by "
                        "cache['ln_final.hook_scale'] at pos, as in 01.6")
        if isinstance(got[label], torch.Tensor) and got[label].ndim == 0:
            return f"your {label!r} is one number: return one value per prompt, [batch]"
        return problem
    summed = sum(v.detach().double() for v in got.values())
    if not torch.allclose(summed, logit_diff, atol=1e-3, rtol=1e-3):
        return f"your components sum to {summed.tolist()[:3]}, not to the logit differences"
    return None


EXERCISES = [
    Exercise(id="01.1", function="residual_stack", title="The residual stream at every layer", cases=stack_cases,
             reference=stack_reference, compare=stack_compare),
    Exercise(id="01.2", function="decompose_resid", title="Taking the stream apart", cases=decompose_cases,
             reference=decompose_reference, compare=decompose_compare),
    Exercise(id="01.3", function="logit_lens", title="The logit lens", cases=lens_cases, reference=lens_reference,
             compare=lens_compare,
             library=("minimech.analysis.lens.logit_lens", "minimech.analysis.lens.read_points")),
    Exercise(id="01.4", function="prediction_forms_at", title="Where the prediction forms", cases=forms_cases,
             reference=forms_reference, compare=forms_compare),
    Exercise(id="01.5", function="lens_kl", title="How far is each layer from the answer?", cases=kl_cases,
             reference=kl_reference, compare=kl_compare,
             library=("minimech.analysis.lens.kl_to", "minimech.analysis.lens.lens_kl")),
    Exercise(id="01.6", function="head_logit_attribution", title="Direct logit attribution of heads",
             cases=dla_cases, reference=dla_reference, compare=dla_compare,
             library=("minimech.analysis.attribution.direct_logit_attribution",
                      "minimech.analysis.attribution.logit_attribution")),
    Exercise(id="01.7", function="component_logit_attribution", title="Every component's share", cases=comp_cases,
             reference=comp_reference, compare=comp_compare, uses=("01.2",),
             library=("minimech.analysis.attribution.direct_logit_attribution",
                      "minimech.analysis.attribution.logit_attribution")),
]
