"""Checks for lesson 03: each exercise against minimech's IOI toolkit (minimech.analysis), run on the lesson's model
and on small random GPTs whose every parameter is random.

Ground truth: logit differences by plain indexing (03.1), direct_logit_attribution (03.2), patch_heads (03.3),
patch_resid (03.4), path_patch (03.5) and circuit_faithfulness (03.6). When an answer is wrong, the check recomputes
the classic mistakes (sign flipped, wrong position, patching corrupt into corrupt, zero ablation, ...) and names the
one the learner's answer matches; the reference's values are never shown.

With --model gpt2 the cases run on GPT-2 small with GPT-2-style templates, and two extra cases hold the learner's
answers to the IOI paper's figures (Wang et al. 2022): mean logit difference about 3.55, name movers 9.9 and 9.6
among the heads with the largest direct effect. These run only on GPT-2 small itself, known by its weights however it
was named (minimech.loading.identify_gpt2); other GPT-2 checkpoints run without them, and their case labels say so.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from minimech.analysis import (card_heads, circuit_faithfulness, direct_logit_attribution, ioi_dataset, logit_diff,
                               patch_heads, patch_resid, path_patch)
from minimech.grading import Case, Exercise, close, expect_shape
from minimech.loading import identify_gpt2

GPT2_CIRCUIT = [(9, 9), (9, 6), (10, 0), (7, 3), (7, 9), (8, 6), (8, 10), (5, 5), (6, 9), (0, 1), (3, 0)]
GPT2_LOGIT_DIFF_RANGE = (2.5, 4.6)  # the paper's 3.55 on its own prompts; ours are GPT-2-style templates


# ---- inputs --------------------------------------------------------------------------------------------------------

def _gen(ctx, salt: int) -> torch.Generator:  # one stream per exercise: the order of exercises is irrelevant
    return torch.Generator().manual_seed(ctx.seed * 7919 + salt)


def _int(gen, lo: int, hi: int) -> int:  # uniform in [lo, hi]
    return int(torch.randint(lo, hi + 1, (), generator=gen))


@contextmanager
def _one_thread():
    """Inputs made by a forward pass must be bitwise equal in the learner's process (one thread) and here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _is_gpt2(ctx) -> bool:  # an official GPT-2 checkpoint's shape (known by its config): 4 prompts a case
    return identify_gpt2(ctx.model()).checkpoint is not None


def _is_gpt2_small(ctx) -> bool:  # GPT-2 small itself, known by its weights, whatever its name: the paper's figures
    return identify_gpt2(ctx.model()).is_gpt2_small


def _paper_note(ctx) -> str:  # says so when a GPT-2 runs without the GPT-2-small paper checks
    identity = identify_gpt2(ctx.model())
    return "" if identity.checkpoint is None or identity.is_gpt2_small else \
        f" (the IOI paper's GPT-2-small figures are not checked: {identity.reason})"


def _dataset(ctx, gen, lo: int = 5, hi: int = 9):
    """(model, clean dataset, its p_ABC corruption): a few IOI prompts of one length (corpus or templates)."""
    model = ctx.model()
    n = _int(gen, lo, hi) if not _is_gpt2(ctx) else 4
    ds = ioi_dataset(model, n=n, seed=_int(gen, 0, 10_000))
    return model, ds, ds.abc()


def _circuit(model) -> list[tuple[int, int]]:
    """The heads the model card names for IOI (GPT-2: the paper's main heads)."""
    if model.card.get("mechanisms", {}).get("ioi"):
        return card_heads(model)
    return [h for h in GPT2_CIRCUIT if h[0] < model.cfg.n_layers and h[1] < model.cfg.n_heads]


def _random_gpt(ctx, gen, **fixed):
    cfg = dict(n_layers=_int(gen, 2, 3), n_heads=_int(gen, 2, 3), d_head=_int(gen, 3, 6), d_mlp=_int(gen, 8, 24),
               n_ctx=16, d_vocab=_int(gen, 20, 40), **fixed)
    cfg["d_model"] = cfg["n_heads"] * cfg["d_head"] + 1
    return ctx.random_model(seed=_int(gen, 0, 10_000), **cfg)


def _random_prompts(model, gen, batch: int, pos: int):
    """(clean, corrupt) [batch, pos] each, corrupt differing from clean at a few positions, and io, s [batch]."""
    v = model.cfg.d_vocab
    clean = torch.randint(0, v, (batch, pos), generator=gen)
    corrupt = clean.clone()
    where = torch.rand(batch, pos, generator=gen) < 0.4
    corrupt[where] = torch.randint(0, v, (int(where.sum()),), generator=gen)
    io = torch.randint(0, v, (batch,), generator=gen)
    s = (io + torch.randint(1, v, (batch,), generator=gen)) % v  # never equal to io
    return clean, corrupt, io, s


def _metric_of(model, tokens, io, s, hooks=()) -> float:
    rows = torch.arange(len(io))
    with torch.no_grad(), model.hooks(list(hooks)):
        logits = model(tokens)
    return (logits[rows, -1, io] - logits[rows, -1, s]).mean().item()


def _near(a, b, atol: float, rtol: float) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
        return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=rtol)
    return abs(a - b) <= atol + rtol * abs(b)


def _first_match(got, want, variants, atol: float, rtol: float) -> str | None:
    """The message of the first (fn() -> value, message) whose value `got` matches, else None. A variant that
    equals want itself on this case explains nothing and is skipped."""
    for make, message in variants:
        value = make()
        if value is None or _near(value, want, atol, rtol):
            continue
        if isinstance(value, torch.Tensor):
            if isinstance(got, torch.Tensor) and got.shape == value.shape and torch.allclose(
                    got.detach().double(), value.double(), atol=atol, rtol=rtol):
                return message
        elif isinstance(got, (int, float)) and abs(got - value) <= atol + rtol * abs(value):
            return message
    return None


def _as_float(got):
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        return got.item()
    return got


def _diagnosed(got, want, variants, atol, rtol, what, match_tol: float | None = None) -> str | None:
    """close()'s verdict, preceded by the first classic mistake that got matches (within match_tol)."""
    problem = close(got, want, atol=atol, rtol=rtol, what=what)
    if problem is None:
        return None
    if not isinstance(want, torch.Tensor):
        got = _as_float(got)
    tol = match_tol if match_tol is not None else max(atol, 1e-4) * 5
    hint = _first_match(got, want, variants, atol=tol, rtol=tol)
    return f"{hint}. ({problem})" if hint else problem


# ---- 03.1 logit difference ------------------------------------------------------------------------------------------

def ld_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 1), []
    for batch, pos, vocab in [(3, 6, 11), (5, 9, 30), (1, 4, 7)]:
        logits = torch.randn(batch, pos, vocab, generator=gen) * 3
        io = torch.randint(0, vocab, (batch,), generator=gen)
        s = (io + torch.randint(1, vocab, (batch,), generator=gen)) % vocab
        end = torch.randint(1, pos - 1, (batch,), generator=gen)  # prompts padded on the right
        cases.append(Case(dict(logits=logits, io_tokens=io, s_tokens=s, end_pos=end),
                          label=f"random logits [{batch}, {pos}, {vocab}], padded prompts (END before the end)"))
    model, ds, _ = _dataset(ctx, gen)
    with _one_thread(), torch.no_grad():
        logits = model(ds.tokens)
    cases.append(Case(dict(logits=logits, io_tokens=ds.io_tokens, s_tokens=ds.s_tokens, end_pos=ds.end_pos),
                      weight=2.0, label=f"{_name(model)} on {len(ds)} IOI prompts{_paper_note(ctx)}"))
    if _is_gpt2_small(ctx):
        big = ioi_dataset(model, n=24, seed=_int(gen, 0, 10_000))
        with _one_thread(), torch.no_grad():
            logits = model(big.tokens)
        cases.append(Case(dict(logits=logits, io_tokens=big.io_tokens, s_tokens=big.s_tokens, end_pos=big.end_pos),
                          label="GPT-2 small on 24 IOI prompts: the paper's mean logit difference (3.55)"))
    return cases


def _name(model) -> str:
    return model.card.get("name") or model.cfg.model_name


def ld_reference(logits, io_tokens, s_tokens, end_pos):
    out = torch.empty(len(io_tokens))
    for b in range(len(io_tokens)):  # one prompt at a time: nothing clever to get wrong
        out[b] = logits[b, end_pos[b], io_tokens[b]] - logits[b, end_pos[b], s_tokens[b]]
    return out


def ld_compare(got, want, case) -> str | None:
    a = case.args
    if isinstance(got, torch.Tensor) and got.ndim == 0:
        return "your logit_diff returned one number: return one logit difference per prompt, shape [batch]"
    rows = torch.arange(len(want))
    variants = [
        (lambda: -want, "the sign is flipped: the metric is logit(IO) - logit(S), the right answer minus the "
                        "wrong one"),
        (lambda: a["logits"][rows, -1, a["io_tokens"]] - a["logits"][rows, -1, a["s_tokens"]],
         "you read the logits at the last position: read them at each prompt's end_pos (prompts can be padded)"),
        (lambda: a["logits"][rows, a["end_pos"], a["io_tokens"]],
         "you returned logit(IO) alone: subtract logit(S)"),
    ]
    problem = _diagnosed(got, want, variants, 1e-5, 1e-5, "your logit differences")
    if problem is None and "3.55" in case.label:
        mean = got.mean().item()
        lo, hi = GPT2_LOGIT_DIFF_RANGE
        if not lo <= mean <= hi:
            return f"on GPT-2 small your mean logit difference is {mean:.3f}; the IOI paper measures 3.55"
    return problem


# ---- 03.2 direct logit attribution by head --------------------------------------------------------------------------

def dla_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 2), []
    model, ds, _ = _dataset(ctx, gen)
    _, cache = model.run_with_cache(ds.tokens)
    cases.append(Case(dict(model=model, cache=cache, io_tokens=ds.io_tokens, s_tokens=ds.s_tokens), weight=2.0,
                      label=f"{_name(model)} on {len(ds)} IOI prompts{_paper_note(ctx)}"))
    for batch, pos in [(3, 7), (2, 5)]:
        rand = _random_gpt(ctx, gen)
        clean, _, io, s = _random_prompts(rand, gen, batch, pos)
        _, cache = rand.run_with_cache(clean)
        cases.append(Case(dict(model=rand, cache=cache, io_tokens=io, s_tokens=s),
                          label=f"random GPT {rand.cfg.n_layers}x{rand.cfg.n_heads} heads, tokens [{batch}, {pos}]"))
    if _is_gpt2_small(ctx):
        big = ioi_dataset(model, n=16, seed=_int(gen, 0, 10_000))
        _, cache = model.run_with_cache(big.tokens)
        cases.append(Case(dict(model=model, cache=cache, io_tokens=big.io_tokens, s_tokens=big.s_tokens),
                          label="GPT-2 small on 16 IOI prompts: the paper's name movers 9.9, 9.6, 10.0"))
    return cases


def dla_reference(model, cache, io_tokens, s_tokens):
    return direct_logit_attribution(model, cache, io_tokens, s_tokens, pos=-1).by_head().float()


def _dla_variant(model, cache, io, s, scale=True, centre=True, w=True, pos=-1, reduce="mean"):
    """[n_layers, n_heads] in float64 with one of the classic mistakes switched on."""
    direction = (model.W_U[:, io] - model.W_U[:, s]).detach().double()  # [d_model, batch]
    sc = cache["ln_final.hook_scale"][:, pos].double() if scale else 1.0  # [batch, 1]
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.float64)
    for l in range(model.cfg.n_layers):
        r = torch.einsum("bhe,hem->bhm", cache["z", l][:, pos].double(), model.blocks[l].attn.W_O.detach().double())
        if centre:
            r = r - r.mean(-1, keepdim=True)
        r = r / (sc[:, None] if scale else 1.0) * (model.ln_final.w.detach().double() if w else 1.0)
        per_prompt = torch.einsum("bhm,mb->hb", r, direction)
        out[l] = per_prompt.mean(-1) if reduce == "mean" else per_prompt.sum(-1)
    return out


def dla_compare(got, want, case) -> str | None:
    a = case.args
    model = a["model"]
    shape = (model.cfg.n_layers, model.cfg.n_heads)
    problem = expect_shape(got, shape, "your attribution")
    if problem:
        return problem + " ([n_layers, n_heads])"
    v = lambda **kw: (lambda: _dla_variant(model, a["cache"], a["io_tokens"], a["s_tokens"], **kw))
    variants = [
        (v(scale=False), "you forgot the final LayerNorm's scale: divide each head's (centred) write by the cached "
                         "ln_final.hook_scale at that position, as ln_final did in this run"),
        (v(w=False), "you left out ln_final.w: after centring and dividing by the scale, multiply by ln_final.w"),
        (v(centre=False), "you did not centre the head's write: ln_final subtracts the mean over d_model first"),
        (v(pos=0), "you read position 0: the answer is predicted at the last position (-1)"),
        (v(reduce="sum"), "you summed over prompts: average over them"),
        (lambda: -want, "the sign is flipped: project onto W_U[:, IO] - W_U[:, S]"),
    ]
    problem = _diagnosed(got, want, variants, 1e-4, 1e-3, "your attribution")
    if problem is None and "name movers" in case.label:
        order = [divmod(int(i), shape[1]) for i in got.flatten().argsort(descending=True)]
        if not {(9, 9), (9, 6)} <= set(order[:4]):
            return f"on GPT-2 small your four largest heads are {order[:4]}; the paper's name movers 9.9 and 9.6 lead"
    return problem


# ---- 03.3 activation patching of one head ---------------------------------------------------------------------------

def head_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 3), []
    model, ds, abc = _dataset(ctx, gen)
    base = dict(model=model, clean_tokens=ds.tokens, corrupt_tokens=abc.tokens, io_tokens=ds.io_tokens,
                s_tokens=ds.s_tokens)
    circuit = _circuit(model)
    first = circuit[_int(gen, 0, min(2, len(circuit) - 1))]
    early = min(circuit)  # in an early layer, where the position patched matters
    s2 = int(ds.s2_pos.mode().values)  # the most common S2 position
    for (layer, head), pos, w in [(first, None, 2.0), (early, -1, 1.0), (early, s2, 1.0)]:
        cases.append(Case(dict(base, layer=layer, head=head, pos=pos), weight=w,
                          label=f"{_name(model)}, L{layer}H{head}, pos={pos}, {len(ds)} prompts (p_ABC corruption)"))
    rand = _random_gpt(ctx, gen)
    clean, corrupt, io, s = _random_prompts(rand, gen, 3, 8)
    cases.append(Case(dict(model=rand, clean_tokens=clean, corrupt_tokens=corrupt, io_tokens=io, s_tokens=s,
                           layer=0, head=_int(gen, 0, rand.cfg.n_heads - 1), pos=None), label="random GPT, layer 0"))
    return cases


def head_reference(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, layer, head, pos):
    scores = patch_heads(model, clean_tokens, corrupt_tokens, logit_diff(io_tokens, s_tokens), pos=pos)
    return scores[layer, head].item()


def _z_paste(source_z, heads, where):
    def hook(z, hook):
        z = z.clone()
        z[:, where, heads] = source_z[:, where, heads]
        return z
    return hook


def _patched(model, source, target, io, s, layer, heads, where) -> float:
    name = f"blocks.{layer}.attn.hook_z"
    with torch.no_grad():
        _, cache = model.run_with_cache(source, names=[name])
    return _metric_of(model, target, io, s, [(name, _z_paste(cache[name], heads, where))])


def head_compare(got, want, case) -> str | None:
    a = case.args
    got = _as_float(got)
    if not isinstance(got, (int, float)):
        return close(got, want, what="your patched logit difference") + " (return a float: .item())"
    model, clean, corrupt, io, s = (a[k] for k in ("model", "clean_tokens", "corrupt_tokens", "io_tokens", "s_tokens"))
    layer, head, pos = a["layer"], a["head"], a["pos"]
    where = slice(None) if pos is None else pos
    unchanged = ("your result equals the unpatched corrupted run: you pasted the corrupted run's own z (corrupt into "
                 "corrupt), or your hook never ran; cache z from the CLEAN prompt and paste it into the corrupted run")
    if pos is not None:
        unchanged += " (or you patched the wrong position: check that you index z[:, pos, head])"
    variants = [
        (lambda: _metric_of(model, corrupt, io, s), unchanged),
        (lambda: _patched(model, corrupt, clean, io, s, layer, [head], where),
         "you patched in the wrong direction: the corrupted z into the clean run. Paste the clean z into the "
         "corrupted run"),
        (lambda: _patched(model, clean, corrupt, io, s, layer, list(range(model.cfg.n_heads)), where),
         "you patched every head of the layer: paste only z[:, :, head]"),
        (lambda: None if pos is None else _patched(model, clean, corrupt, io, s, layer, [head], slice(None)),
         "you patched every position: with pos given, paste z only at that position"),
        (lambda: None if pos is None else _patched(model, clean, corrupt, io, s, layer, [head], pos - 1),
         "you patched the wrong position (one before pos): index z[:, pos, head]"),
        (lambda: _metric_of(model, clean, io, s),
         "your result equals the clean run: did you run the clean prompt instead of the corrupted one?"),
    ]
    return _diagnosed(got, want, variants, 1e-4, 1e-4, "your patched logit difference")


# ---- 03.4 residual stream sweep -------------------------------------------------------------------------------------

def sweep_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 4), []
    model, ds, abc = _dataset(ctx, gen, 3, 5)
    cases.append(Case(dict(model=model, clean_tokens=ds.tokens, corrupt_tokens=abc.tokens, io_tokens=ds.io_tokens,
                           s_tokens=ds.s_tokens), weight=2.0, label=f"{_name(model)}, {len(ds)} prompts (p_ABC)"))
    rand = _random_gpt(ctx, gen)
    clean, corrupt, io, s = _random_prompts(rand, gen, 2, 6)
    cases.append(Case(dict(model=rand, clean_tokens=clean, corrupt_tokens=corrupt, io_tokens=io, s_tokens=s),
                      label=f"random GPT {rand.cfg.n_layers} layers, tokens [2, 6]"))
    return cases


def sweep_reference(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens):
    return patch_resid(model, clean_tokens, corrupt_tokens, logit_diff(io_tokens, s_tokens), normalise=True)


def sweep_compare(got, want, case) -> str | None:
    a = case.args
    model = a["model"]
    problem = expect_shape(got, want.shape, "your sweep")
    if problem:
        return problem + " ([n_layers, pos])"
    args = (model, a["clean_tokens"], a["corrupt_tokens"])
    m_clean, m_corrupt = (_metric_of(model, t, a["io_tokens"], a["s_tokens"]) for t in args[1:])
    shifted = lambda x, k: torch.cat([x[:, k:], x[:, :k]], dim=1)  # noqa: E731
    variants = [
        (lambda: m_corrupt + want * (m_clean - m_corrupt),
         "your values are raw logit differences: normalise, (m - m_corrupt) / (m_clean - m_corrupt)"),
        (lambda: -want, "your normalisation has the wrong sign: 1 should mean 'as good as the clean run'"),
        (lambda: patch_resid(*args, logit_diff(a["io_tokens"], a["s_tokens"]), normalise=True, reverse=True),
         "you patched in the wrong direction (corrupted activations into the clean run): paste the clean "
         "resid_pre into the corrupted run"),
        (lambda: torch.cat([want[1:], torch.ones_like(want[:1])]),
         "your layer l looks like the reference's layer l + 1: patch blocks.{l}.hook_resid_pre, not resid_post"),
        (lambda: shifted(want, 1), "your positions are shifted by one: patch resid[:, p] for position p"),
        (lambda: shifted(want, -1), "your positions are shifted by one: patch resid[:, p] for position p"),
        (lambda: torch.zeros_like(want), "every entry is 0: you pasted corrupted activations into the corrupted "
                                         "run (corrupt into corrupt); cache the CLEAN run"),
    ]
    return _diagnosed(got, want, variants, 1e-3, 1e-3, "your sweep")


# ---- 03.5 path patching to the logits -------------------------------------------------------------------------------

def path_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 5), []
    model, ds, abc = _dataset(ctx, gen)
    base = dict(model=model, clean_tokens=ds.tokens, corrupt_tokens=abc.tokens, io_tokens=ds.io_tokens,
                s_tokens=ds.s_tokens)
    circuit = _circuit(model)
    early = min(circuit)  # the earliest circuit head: its effect can go through later heads and MLPs
    other = circuit[_int(gen, 0, len(circuit) - 1)]
    for sender, freeze, w in [(early, False, 2.0), (early, True, 1.0), (other, bool(_int(gen, 0, 1)), 1.0)]:
        cases.append(Case(dict(base, sender=sender, freeze_mlps=freeze), weight=w,
                          label=f"{_name(model)}, sender L{sender[0]}H{sender[1]}, freeze_mlps={freeze}"))
    rand = _random_gpt(ctx, gen)
    clean, corrupt, io, s = _random_prompts(rand, gen, 3, 7)
    for freeze in (False, True):
        cases.append(Case(dict(model=rand, clean_tokens=clean, corrupt_tokens=corrupt, io_tokens=io, s_tokens=s,
                               sender=(0, _int(gen, 0, rand.cfg.n_heads - 1)), freeze_mlps=freeze),
                          label=f"random GPT, sender in layer 0, freeze_mlps={freeze}"))
    return cases


def path_reference(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, sender, freeze_mlps):
    return path_patch(model, clean_tokens, corrupt_tokens, logit_diff(io_tokens, s_tokens), senders=[sender],
                      freeze_mlps=freeze_mlps)


def _path_variant(model, base, source, io, s, sender, freeze_heads: bool, freeze_mlps: bool) -> float:
    """The base run with the sender's z from `source`; freeze_heads: every other head's z frozen at base's;
    freeze_mlps: every MLP output frozen at base's."""
    names = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]
    mlps = [f"blocks.{l}.hook_mlp_out" for l in range(model.cfg.n_layers)] if freeze_mlps else []
    with torch.no_grad():
        _, base_cache = model.run_with_cache(base, names=names + mlps)
        _, source_cache = model.run_with_cache(source, names=names)
    layer, head = sender

    def hook(z, hook):
        out = base_cache[hook.name].clone() if freeze_heads else z.clone()
        if hook.name == names[layer]:
            out[:, :, head] = source_cache[hook.name][:, :, head]
        return out
    frozen = [(n, lambda act, hook: base_cache[hook.name]) for n in mlps]
    return _metric_of(model, base, io, s, [(n, hook) for n in names] + frozen)


def path_compare(got, want, case) -> str | None:
    a = case.args
    got = _as_float(got)
    if not isinstance(got, (int, float)):
        return close(got, want, what="your path-patched logit difference") + " (return a float: .item())"
    model, clean, corrupt, io, s, sender = (a[k] for k in ("model", "clean_tokens", "corrupt_tokens", "io_tokens",
                                                          "s_tokens", "sender"))
    metric = logit_diff(io, s)
    variants = [
        (lambda: path_patch(model, clean, corrupt, metric, senders=[sender], freeze_mlps=not a["freeze_mlps"]),
         f"your answer matches freeze_mlps={not a['freeze_mlps']}: freeze every hook_mlp_out at its clean value "
         "exactly when freeze_mlps is True (an MLP path is a path through the MLP)"),
        (lambda: _path_variant(model, clean, corrupt, io, s, sender, False, a["freeze_mlps"]),
         "you did not freeze the other heads: with only the sender corrupted and everything else recomputed, the "
         "corrupted signal also travels through later heads. Freeze every other head's z at its clean value"),
        (lambda: _path_variant(model, corrupt, clean, io, s, sender, True, a["freeze_mlps"]),
         "you patched in the wrong direction: the base run is the CLEAN prompt, and the sender's z comes from "
         "the corrupted one"),
        (lambda: _metric_of(model, clean, io, s),
         "your result equals the clean run: the sender's z was never replaced by its corrupted value"),
    ]
    return _diagnosed(got, want, variants, 1e-4, 1e-4, "your path-patched logit difference")


# ---- 03.6 circuit faithfulness --------------------------------------------------------------------------------------

class _Prompts:
    """What circuit_faithfulness reads of a dataset when given a metric and reference tokens: tokens and a length."""

    def __init__(self, tokens):
        self.tokens = tokens

    def __len__(self):
        return self.tokens.shape[0]


def faith_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 6), []
    model, ds, abc = _dataset(ctx, gen)
    base = dict(model=model, tokens=ds.tokens, reference_tokens=abc.tokens, io_tokens=ds.io_tokens,
                s_tokens=ds.s_tokens)
    every = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    card = _circuit(model)
    picks = torch.randperm(len(every), generator=gen)
    for circuit, label, w in [(card, "the card's IOI heads", 2.0),
                              (sorted(every[int(i)] for i in picks[:3]), "three random heads", 1.0),
                              (sorted(set(every) - {card[0]}), "every head but the card's first", 1.0)]:
        cases.append(Case(dict(base, circuit=circuit), weight=w, label=f"{_name(model)}, {label}, {len(ds)} prompts"))
    rand = _random_gpt(ctx, gen)
    clean, corrupt, io, s = _random_prompts(rand, gen, 4, 6)
    cases.append(Case(dict(model=rand, tokens=clean, reference_tokens=corrupt, io_tokens=io, s_tokens=s,
                           circuit=[(0, 0), (rand.cfg.n_layers - 1, rand.cfg.n_heads - 1)]), label="random GPT"))
    return cases


def faith_reference(model, tokens, reference_tokens, io_tokens, s_tokens, circuit):
    return circuit_faithfulness(model, _Prompts(tokens), circuit, reference=reference_tokens,
                                metric=logit_diff(io_tokens, s_tokens), mean_over="position").ratio


def _ablated_ratio(model, tokens, reference, io, s, circuit, fill: str) -> float:
    """The ratio with the heads outside `circuit` replaced by zeros (fill="zero") or their mean over positions too."""
    names = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(reference, names=names)

    def hook_for(layer):
        keep = [h for l, h in circuit if l == layer]

        def hook(z, hook):
            mean = cache[hook.name].mean((0, 1)) if fill == "all_positions" else cache[hook.name].mean(0)
            out = torch.zeros_like(z) if fill == "zero" else mean.expand_as(z).clone()
            out[:, :, keep] = z[:, :, keep]
            return out
        return hook
    return _metric_of(model, tokens, io, s, [(n, hook_for(l)) for l, n in enumerate(names)]) / \
        _metric_of(model, tokens, io, s)


def faith_compare(got, want, case) -> str | None:
    a = case.args
    got = _as_float(got)
    if not isinstance(got, (int, float)):
        return close(got, want, what="your faithfulness") + " (return a float: the ratio)"
    model, tokens, ref, io, s, circuit = (a[k] for k in ("model", "tokens", "reference_tokens", "io_tokens",
                                                        "s_tokens", "circuit"))
    every = {(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)}
    rest = sorted(every - set(map(tuple, circuit)))
    metric = logit_diff(io, s)
    variants = [
        (lambda: _ablated_ratio(model, tokens, ref, io, s, circuit, "zero"),
         "you ablated with zeros: replace each outside head's z with its MEAN over the reference prompts (zero is "
         "a value a head never outputs, so zero ablation measures more than the head's absence)"),
        (lambda: circuit_faithfulness(model, _Prompts(tokens), rest, reference=ref, metric=metric,
                                      mean_over="position").ratio if rest else None,
         "you ablated the circuit's heads and kept the others: mean-ablate every head NOT in the circuit"),
        (lambda: circuit_faithfulness(model, _Prompts(tokens), circuit, reference=tokens, metric=metric,
                                      mean_over="position").ratio,
         "you took the means over the clean prompts: take them over reference_tokens (the p_ABC prompts)"),
        (lambda: _ablated_ratio(model, tokens, ref, io, s, circuit, "all_positions"),
         "you averaged over positions too: keep one mean per position ([pos, head, d_head], averaged over prompts)"),
        (lambda: 1 / want if want else None, "your ratio is upside down: circuit / full model"),
    ]
    return _diagnosed(got, want, variants, 1e-3, 1e-3, "your faithfulness", match_tol=2e-4)


EXERCISES = [
    Exercise(id="03.1", function="logit_diff", title="The logit difference", cases=ld_cases,
             reference=ld_reference, compare=ld_compare,
             library=("minimech.analysis.metrics.logit_diff",)),
    Exercise(id="03.2", function="head_logit_attribution", title="Direct logit attribution by head",
             cases=dla_cases, reference=dla_reference, compare=dla_compare,
             library=("minimech.analysis.attribution.direct_logit_attribution",
                      "minimech.analysis.attribution.logit_attribution")),
    Exercise(id="03.3", function="patch_head_z", title="Activation patching of one head", cases=head_cases,
             reference=head_reference, compare=head_compare,
             library=("minimech.analysis.patching.patch_heads",)),
    Exercise(id="03.4", function="resid_patching_sweep", title="A residual-stream patching sweep",
             cases=sweep_cases, reference=sweep_reference, compare=sweep_compare,
             library=("minimech.analysis.patching.patch_resid",)),
    Exercise(id="03.5", function="path_patch_to_logits", title="Path patching to the logits", cases=path_cases,
             reference=path_reference, compare=path_compare,
             library=("minimech.analysis.path_patching.path_patch",
                      "minimech.analysis.path_patching.path_patch_heads")),
    Exercise(id="03.6", function="circuit_faithfulness_ratio", title="Circuit faithfulness", cases=faith_cases,
             reference=faith_reference, compare=faith_compare,
             library=("minimech.analysis.ioi.circuit_faithfulness", "minimech.analysis.interventions.ablation_damage")),
]
