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
               n_ctx=16, d_vocab=_int(gen, 20, 40))
    cfg.update(fixed)
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


# ---- 03.6 attention between roles ----------------------------------------------------------------------------------

def role_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 7), []
    model, ds, _ = _dataset(ctx, gen)
    for (q, k), label in [((ds.end_pos, ds.io_pos), "END -> IO"), ((ds.s2_pos, ds.s1_pos), "S2 -> S1")]:
        cases.append(Case(dict(model=model, tokens=ds.tokens, query_pos=q, key_pos=k), weight=1.5,
                          label=f"{_name(model)}, {len(ds)} IOI prompts, {label}"))
    rand = _random_gpt(ctx, gen)
    tokens = torch.randint(0, rand.cfg.d_vocab, (4, 9), generator=gen)
    q = torch.randint(3, 9, (4,), generator=gen)
    k = (q - torch.randint(1, 3, (4,), generator=gen)).clamp(min=0)
    cases.append(Case(dict(model=rand, tokens=tokens, query_pos=q, key_pos=k),
                      label=f"random GPT, tokens [4, 9], queries {q.tolist()}, keys {k.tolist()}"))
    return cases


def _patterns(model, tokens) -> list[torch.Tensor]:  # per layer [batch, head, q_pos, k_pos]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names=lambda n: n.endswith("hook_pattern"))
    return [cache[f"blocks.{l}.attn.hook_pattern"] for l in range(model.cfg.n_layers)]


def role_reference(model, tokens, query_pos, key_pos):
    patterns = _patterns(model, tokens)
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for l, pattern in enumerate(patterns):  # a plain loop over prompts
        for h in range(model.cfg.n_heads):
            out[l, h] = sum(pattern[b, h, query_pos[b], key_pos[b]].item() for b in range(len(tokens))) / len(tokens)
    return out


def role_compare(got, want, case) -> str | None:
    a = case.args
    model, tokens, q, k = a["model"], a["tokens"], a["query_pos"], a["key_pos"]
    problem = expect_shape(got, want.shape, "your attention table")
    if problem:
        return problem + " ([n_layers, n_heads])"
    patterns = _patterns(model, tokens)
    rows = torch.arange(len(tokens))
    table = lambda f: torch.stack([f(p) for p in patterns])  # noqa: E731
    variants = [
        (lambda: table(lambda p: p[rows, :, k, q].mean(0)),
         "you swapped queries and keys: the pattern is [batch, head, q_pos, k_pos]; index [b, :, query_pos[b], "
         "key_pos[b]]"),
        (lambda: table(lambda p: p[:, :, q, k].mean((0, 2))),
         "you took every prompt's query and key positions for every prompt (pattern[:, :, query_pos, key_pos] "
         "pairs each prompt with all the others' positions): index prompt b with its own positions, "
         "pattern[torch.arange(batch), :, query_pos, key_pos]"),
        (lambda: table(lambda p: p[:, :, q[0], k[0]].mean(0)),
         "you used the first prompt's positions for every prompt: each prompt has its own query_pos[b], key_pos[b]"),
        (lambda: table(lambda p: p[rows, :, q, k].sum(0)), "you summed over prompts: take the mean"),
    ]
    return _diagnosed(got, want, variants, 1e-5, 1e-4, "your attention table", match_tol=1e-4)


# ---- 03.7 the S-inhibition control -----------------------------------------------------------------------------------

def control_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 8), []
    model, ds, abc = _dataset(ctx, gen)
    rows = torch.arange(len(ds))
    cases.append(Case(dict(model=model, tokens=ds.tokens, s2_pos=ds.s2_pos, end_pos=ds.end_pos,
                           replacement=abc.tokens[rows, ds.s2_pos]), weight=2.0,
                      label=f"{_name(model)}, {len(ds)} IOI prompts, S2 replaced by p_ABC's third name"))
    rand = _random_gpt(ctx, gen)
    tokens = torch.randint(0, rand.cfg.d_vocab, (3, 8), generator=gen)
    s1 = torch.randint(1, 3, (3,), generator=gen)
    s2 = torch.randint(4, 6, (3,), generator=gen)
    tokens[torch.arange(3), s2] = tokens[torch.arange(3), s1]  # a repeated token, as S2 repeats S1
    cases.append(Case(dict(model=rand, tokens=tokens, s2_pos=s2, end_pos=torch.full((3,), 7),
                           replacement=torch.randint(0, rand.cfg.d_vocab, (3,), generator=gen)),
                      label=f"random GPT, tokens [3, 8], S2 at {s2.tolist()}"))
    return cases


def _replaced(tokens, where, replacement):
    out = tokens.clone()
    out[torch.arange(len(tokens)), where] = replacement
    return out


def control_reference(model, tokens, s2_pos, end_pos, replacement):
    return torch.stack([role_reference(model, tokens, end_pos, s2_pos),
                        role_reference(model, _replaced(tokens, s2_pos, replacement), end_pos, s2_pos)], dim=-1)


def control_compare(got, want, case) -> str | None:
    a = case.args
    model, tokens, s2, end, new = (a[k] for k in ("model", "tokens", "s2_pos", "end_pos", "replacement"))
    problem = expect_shape(got, want.shape, "your control")
    if problem:
        return problem + " ([n_layers, n_heads, 2]: END->S2 with the repeated name, then without)"
    s1 = torch.tensor([int((tokens[b, :s2[b]] == tokens[b, s2[b]]).nonzero()[0]) if (tokens[b, :s2[b]] == tokens[
        b, s2[b]]).any() else int(s2[b]) for b in range(len(tokens))])
    variants = [
        (lambda: want.flip(-1), "your two columns are swapped: column 0 is the prompts as given (with the repeat), "
                                "column 1 the control"),
        (lambda: torch.stack([want[..., 0], want[..., 0]], -1),
         "your two columns are equal: the control prompts must have S2 replaced (tokens[b, s2_pos[b]] = "
         "replacement[b], on a copy)"),
        (lambda: torch.stack([want[..., 1], want[..., 1]], -1),
         "both your columns are the control: you changed `tokens` in place before measuring the prompts; clone it "
         "first"),
        (lambda: torch.stack([want[..., 0], role_reference(model, _replaced(tokens, s1, new), end, s2)], -1)
         if not torch.equal(s1, s2) else None,
         "your control replaced S1 (the first occurrence of the name): replace S2, at s2_pos"),
        (lambda: torch.stack([want[..., 0], role_reference(model, _replaced(tokens, s2, new), end, s1)], -1)
         if not torch.equal(s1, s2) else None,
         "your control measures attention to S1: measure END -> S2 (the same position as in column 0)"),
    ]
    return _diagnosed(got, want, variants, 1e-5, 1e-4, "your control", match_tol=1e-4)


# ---- 03.8 path patching into the name movers' queries -------------------------------------------------------------

def query_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 9), []
    model, ds, abc = _dataset(ctx, gen)
    base = dict(model=model, clean_tokens=ds.tokens, corrupt_tokens=abc.tokens, io_tokens=ds.io_tokens,
                s_tokens=ds.s_tokens, end_pos=ds.end_pos)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    circuit = _circuit(model)  # the card's heads: late ones as receivers, earlier ones as senders (they matter)
    receivers = sorted([h for h in circuit if h[0] >= n_layers // 2][:2]) or [(n_layers - 1, 0)]
    first = min(l for l, _ in receivers)
    before = [h for h in circuit if h[0] < first] or [(0, h) for h in range(n_heads)]
    anyone = [(l, h) for l in range(first) for h in range(n_heads)]
    for sender in [before[_int(gen, 0, len(before) - 1)], anyone[_int(gen, 0, len(anyone) - 1)]]:
        cases.append(Case(dict(base, sender=sender, receivers=receivers), weight=1.5,
                          label=f"{_name(model)}, L{sender[0]}H{sender[1]} -> queries of "
                                f"{[f'L{l}H{h}' for l, h in receivers]} at END"))
    rand = _random_gpt(ctx, gen, n_layers=3)
    clean, corrupt, io, s = _random_prompts(rand, gen, 3, 7)
    end = torch.randint(4, 7, (3,), generator=gen)
    receivers = [(2, 0), (1, rand.cfg.n_heads - 1)]
    cases.append(Case(dict(model=rand, clean_tokens=clean, corrupt_tokens=corrupt, io_tokens=io, s_tokens=s,
                           sender=(0, _int(gen, 0, rand.cfg.n_heads - 1)), receivers=receivers, end_pos=end),
                      label=f"random GPT, receivers {receivers}, END at {end.tolist()}"))
    return cases


def query_reference(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, sender, receivers, end_pos):
    return path_patch(model, clean_tokens, corrupt_tokens, logit_diff(io_tokens, s_tokens), senders=[sender],
                      receivers=receivers, receiver_input="q", positions=end_pos)


def query_compare(got, want, case) -> str | None:
    a = case.args
    got = _as_float(got)
    if not isinstance(got, (int, float)):
        return close(got, want, what="your path-patched logit difference") + " (return a float: .item())"
    model, clean, corrupt, io, s = (a[k] for k in ("model", "clean_tokens", "corrupt_tokens", "io_tokens",
                                                   "s_tokens"))
    sender, receivers, end = a["sender"], a["receivers"], a["end_pos"]
    metric = logit_diff(io, s)
    pp = lambda **kw: (lambda: path_patch(model, clean, corrupt, metric, senders=[sender], **kw))  # noqa: E731
    variants = [
        (lambda: _queries_unfrozen(model, clean, corrupt, io, s, sender, receivers, end),
         "in run 1 you did not freeze the other heads: only the sender's z is corrupted, every other head's z stays "
         "at its clean value"),
        (pp(receivers=receivers, receiver_input="q", positions=None),
         "you pasted the receivers' queries at every position: paste them only at end_pos[b]"),
        (pp(receivers=receivers, receiver_input="k", positions=end),
         "you patched the receivers' keys: patch their queries (hook_q)"),
        (pp(receivers=receivers, receiver_input="v", positions=end),
         "you patched the receivers' values: patch their queries (hook_q)"),
        (lambda: _queries_whole_layer(model, clean, corrupt, io, s, sender, receivers, end),
         "you pasted the queries of every head in the receivers' layers: paste only the receiver heads'"),
        (pp(), "your result is the path to the logits (03.5): record the receivers' hook_q in the frozen run and "
               "paste only those, at END, into a clean run"),
        (lambda: _metric_of(model, clean, io, s),
         "your result equals the clean run: the recorded queries were never pasted (or run 1 was not corrupted)"),
    ]
    return _diagnosed(got, want, variants, 1e-4, 1e-4, "your path-patched logit difference", match_tol=5e-5)


def _queries_run(model, clean, corrupt, io, s, sender, receivers, end, freeze: bool, whole_layer: bool) -> float:
    """Run 1 (sender corrupted, other heads frozen clean unless freeze=False) records hook_q; run 2 pastes it."""
    z_names = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names=z_names)
        _, corrupt_cache = model.run_with_cache(corrupt, names=z_names)
    layer, head = sender

    def z_hook(z, hook):
        out = clean_cache[hook.name].clone() if freeze else z.clone()
        if hook.name == z_names[layer]:
            out[:, :, head] = corrupt_cache[hook.name][:, :, head]
        return out
    q_names = sorted({f"blocks.{l}.attn.hook_q" for l, _ in receivers})
    with torch.no_grad(), model.hooks([(n, z_hook) for n in z_names]):
        _, recorded = model.run_with_cache(clean, names=q_names)
    rows = torch.arange(len(clean))

    def q_hook(q, hook):
        q = q.clone()
        heads = range(q.shape[2]) if whole_layer else [h for l, h in receivers if f"blocks.{l}.attn.hook_q" ==
                                                       hook.name]
        for h in heads:
            q[rows, end, h] = recorded[hook.name][rows, end, h]
        return q
    return _metric_of(model, clean, io, s, [(n, q_hook) for n in q_names])


def _queries_unfrozen(*args) -> float:
    return _queries_run(*args, freeze=False, whole_layer=False)


def _queries_whole_layer(*args) -> float:
    return _queries_run(*args, freeze=True, whole_layer=True)


# ---- 03.9 do the name movers copy names? -----------------------------------------------------------------------------

def copy_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 10), []
    model, ds, _ = _dataset(ctx, gen)
    with _one_thread(), torch.no_grad():
        _, cache = model.run_with_cache(ds.tokens, names=lambda n: n.endswith("hook_resid_pre"))
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    for layer in (_int(gen, n_layers // 2, n_layers - 1), _int(gen, 1, n_layers - 1)):
        head = _int(gen, 0, n_heads - 1)
        cases.append(Case(dict(model=model, cache=cache, layer=layer, head=head, io_pos=ds.io_pos,
                               io_tokens=ds.io_tokens, name_tokens=ds.name_pool), weight=1.5,
                          label=f"{_name(model)}, L{layer}H{head}, {len(ds)} IOI prompts, {len(ds.name_pool)} names"))
    rand = _random_gpt(ctx, gen)
    clean, _, io, _ = _random_prompts(rand, gen, 4, 7)
    io_pos = torch.randint(1, 6, (4,), generator=gen)
    io = clean[torch.arange(4), io_pos]
    names = torch.unique(torch.cat([io, torch.randint(0, rand.cfg.d_vocab, (6,), generator=gen)]))
    with torch.no_grad():
        _, cache = rand.run_with_cache(clean, names=lambda n: n.endswith("hook_resid_pre"))
    layer = _int(gen, 1, rand.cfg.n_layers - 1)
    cases.append(Case(dict(model=rand, cache=cache, layer=layer, head=_int(gen, 0, rand.cfg.n_heads - 1),
                           io_pos=io_pos, io_tokens=io, name_tokens=names),
                      label=f"random GPT, layer {layer}, tokens [4, 7], {len(names)} names"))
    return cases


def _copy_logits(model, cache, layer, head, io_pos, source="resid_pre", ln=True, bias=True, at=None):
    """[batch, d_vocab] in float64: the head's OV output for the stream at io_pos, through W_U (variants switchable)."""
    rows = torch.arange(len(io_pos))
    attn = model.blocks[layer].attn
    if source == "embed":
        x = model.W_E.detach()[at].double()  # the raw token embeddings of the given tokens
    else:
        x = cache[f"blocks.{layer}.hook_resid_pre"][rows, io_pos].double()  # [batch, d_model]
    if ln:
        ln1 = model.blocks[layer].ln1
        x = x - x.mean(-1, keepdim=True)
        x = x / (x.pow(2).mean(-1, keepdim=True) + ln1.eps).sqrt() * ln1.w.detach().double() + ln1.b.detach().double()
    v = x @ attn.W_V.detach()[head].double() + (attn.b_V.detach()[head].double() if bias else 0)
    return v @ attn.W_O.detach()[head].double() @ model.W_U.detach().double()


def _ranks(logits, io_tokens, name_tokens) -> torch.Tensor:
    rows = torch.arange(len(io_tokens))
    return (logits[:, name_tokens] > logits[rows, io_tokens][:, None]).sum(-1)


def copy_reference(model, cache, layer, head, io_pos, io_tokens, name_tokens):
    return _ranks(_copy_logits(model, cache, layer, head, io_pos), io_tokens, name_tokens)


def copy_compare(got, want, case) -> str | None:
    a = case.args
    model, cache, layer, head, io_pos, io, names = (a[k] for k in ("model", "cache", "layer", "head", "io_pos",
                                                                   "io_tokens", "name_tokens"))
    problem = expect_shape(got, want.shape, "your ranks")
    if problem:
        return problem + " ([batch]: one rank per prompt)"
    if got.is_floating_point():
        return "your ranks must be integers (a count of names with a larger logit: .sum() of a bool tensor)"
    if torch.equal(got.long(), want):
        return None
    logits = lambda **kw: _copy_logits(model, cache, layer, head, io_pos, **kw)  # noqa: E731
    rows = torch.arange(len(io))
    variants = [
        (lambda: _ranks(logits(ln=False), io, names), "you left out ln1: the head reads ln1(resid_pre), not the raw "
                                                      "stream"),
        (lambda: _ranks(logits(source="embed", at=io), io, names),
         "you read the IO's raw token embedding: use the stream the head reads at io_pos, "
         "blocks.{layer}.hook_resid_pre"),
        (lambda: _ranks(logits(bias=False), io, names), "you left out b_V: the value is ln1(x) @ W_V + b_V"),
        (lambda: (logits()[rows] > logits()[rows, io][:, None]).sum(-1),
         "you ranked the IO among the whole vocabulary: rank it among name_tokens only"),
        (lambda: (logits()[:, names] < logits()[rows, io][:, None]).sum(-1),
         "your ranks count the names BELOW the IO: the rank is the number of names with a larger logit (0 = first)"),
    ]
    for make, message in variants:
        value = make()
        if not torch.equal(value, want) and torch.equal(got.long(), value):
            return message
    wrong = int((got.long() != want).sum())
    return f"your ranks differ on {wrong} of {len(want)} prompts (yours start {got[:6].tolist()})"


# ---- 03.10 circuit faithfulness --------------------------------------------------------------------------------------

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
    Exercise(id="03.6", function="role_attention", title="Attention between roles", cases=role_cases,
             reference=role_reference, compare=role_compare,
             library=("minimech.analysis.heads.detector_scores",)),
    Exercise(id="03.7", function="s2_attention_control", title="The S-inhibition control", cases=control_cases,
             reference=control_reference, compare=control_compare, uses=("03.6",)),
    Exercise(id="03.8", function="path_patch_to_queries", title="Path patching into the name movers' queries",
             cases=query_cases, reference=query_reference, compare=query_compare,
             library=("minimech.analysis.path_patching.path_patch",
                      "minimech.analysis.path_patching.path_patch_heads")),
    Exercise(id="03.9", function="name_copying_ranks", title="Do the name movers copy names?", cases=copy_cases,
             reference=copy_reference, compare=copy_compare,
             library=("minimech.analysis.circuits.copying_scores",)),
    Exercise(id="03.10", function="circuit_faithfulness_ratio", title="Circuit faithfulness", cases=faith_cases,
             reference=faith_reference, compare=faith_compare,
             library=("minimech.analysis.ioi.circuit_faithfulness", "minimech.analysis.interventions.ablation_damage")),
]
