"""Checks for lesson 06: each exercise against minimech's intervention toolkit (minimech.analysis.interventions),
an algebraic identity or a plain loop, on the lesson's model and on small random GPTs whose every parameter is
random.

Ground truth: ablation_damage's own ablated forward (06.1, its metric captures the logits), ablation_damage with
each behaviour's reference prompts (06.2), steering_vector (06.3), steer (06.4), both at every layer (06.5), a plain
loop of outer products (06.6), the probability a delta reaches against Adam written out with the same budget (06.7:
any optimiser that gets as far passes), rank_one_update plus the update's defining properties (06.8: the key maps to
the new value, rank one, a C^-1-orthogonal key is unchanged) and a one-prompt-at-a-time loop over an edited copy of
the model (06.9). When an answer is wrong, the check recomputes the classic mistakes (zero instead of mean
ablation, means pooled over positions, the vector subtracted, the wrong position, C instead of C^-1, ...) and names
the one the learner's answer matches; the reference's values are never shown.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch

from minimech.analysis import (ablation_damage, card_heads, fact_layer, find_subject_positions, ioi_dataset,
                               key_covariance, rank_one_update, steer, steering_vector)
from minimech.analysis.memories import prompt_batch
from minimech.grading import Case, Exercise, close, expect_shape
from minimech.training.corpora import corpus_for

GPT2_IOI_HEADS = [(9, 9), (9, 6), (10, 0), (7, 3), (7, 9), (8, 6), (8, 10), (5, 5), (6, 9), (0, 1), (3, 0)]


# ---- inputs --------------------------------------------------------------------------------------------------------

def _gen(ctx, salt: int) -> torch.Generator:  # one stream per exercise: the order of exercises is irrelevant
    return torch.Generator().manual_seed(ctx.seed * 7919 + salt)


def _int(gen, lo: int, hi: int) -> int:  # uniform in [lo, hi]
    return int(torch.randint(lo, hi + 1, (), generator=gen))


def _pick(gen, items: list, k: int) -> list:
    return [items[int(i)] for i in torch.randperm(len(items), generator=gen)[:k]]


@contextmanager
def _one_thread():
    """Inputs made by a forward pass must be bitwise equal in the learner's process (one thread) and here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _name(model) -> str:
    return model.card.get("name") or model.cfg.model_name


def _random_gpt(ctx, gen, **fixed):
    cfg = dict(n_layers=_int(gen, 2, 3), n_heads=_int(gen, 2, 3), d_head=_int(gen, 3, 6), d_mlp=_int(gen, 8, 24),
               n_ctx=16, d_vocab=_int(gen, 20, 40))
    cfg.update(fixed)
    cfg.setdefault("d_model", cfg["n_heads"] * cfg["d_head"] + 1)  # d_model != n_heads * d_head on purpose
    return ctx.random_model(seed=_int(gen, 0, 10_000), **cfg)


def _ioi_heads(model) -> list[tuple[int, int]]:
    """The heads the model card names for IOI (GPT-2: the IOI paper's main heads)."""
    if (model.card.get("mechanisms") or {}).get("ioi"):
        return card_heads(model, "ioi")
    return [h for h in GPT2_IOI_HEADS if h[0] < model.cfg.n_layers and h[1] < model.cfg.n_heads]


def _layer_of_facts(model) -> int:
    """fact_layer from the card; a model without one (GPT-2) gets a layer a third of the way up, untraced."""
    if (model.card.get("mechanisms") or {}).get("facts"):
        return fact_layer(model)
    return model.cfg.n_layers // 3


def _near(a, b, tol: float) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
        return a.shape == b.shape and torch.allclose(a, b, atol=tol, rtol=tol)
    return abs(a - b) <= tol + tol * abs(b)


def _first_match(got, want, variants, tol: float) -> str | None:
    """The message of the first (fn() -> value, message) whose value `got` matches; a variant that equals want
    itself on this case explains nothing and is skipped."""
    for make, message in variants:
        value = make()
        if value is None or _near(value, want, tol):
            continue
        if isinstance(got, torch.Tensor) and isinstance(value, torch.Tensor) and got.shape == value.shape \
                and torch.allclose(got.detach().double(), value.double(), atol=tol, rtol=tol):
            return message
    return None


def _diagnosed(got, want, variants, atol: float, rtol: float, what: str, match_tol: float | None = None):
    """close()'s verdict, preceded by the first classic mistake that got matches (within match_tol)."""
    problem = close(got, want, atol=atol, rtol=rtol, what=what)
    if problem is None:
        return None
    hint = _first_match(got, want, variants, match_tol if match_tol is not None else max(atol, rtol) * 5)
    return f"{hint}. ({problem})" if hint else problem


def _logits(model, tokens, hooks=()) -> torch.Tensor:
    with torch.no_grad(), model.hooks(list(hooks)):
        return model(tokens)


# ---- 06.1 mean ablation of a set of heads -------------------------------------------------------------------------

def ablate_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 1), []
    model = ctx.model()
    ds = ioi_dataset(model, n=_int(gen, 4, 7), seed=_int(gen, 0, 10_000))
    every = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    cases.append(Case(dict(model=model, tokens=ds.tokens, heads=_ioi_heads(model), reference_tokens=ds.abc().tokens),
                      weight=2.0, label=f"{_name(model)}, the card's IOI heads, {len(ds)} IOI prompts, p_ABC means"))
    layer = _int(gen, 0, model.cfg.n_layers - 1)
    pair = sorted(_pick(gen, list(range(model.cfg.n_heads)), 2))
    heads = [(layer, pair[0]), (layer, pair[1])] + [h for h in _pick(gen, every, 2) if h[0] != layer][:1]
    cases.append(Case(dict(model=model, tokens=ds.tokens, heads=heads, reference_tokens=ds.tokens),
                      label=f"{_name(model)}, heads {heads}, means over the prompts themselves"))
    for batch, n_ref, pos in [(3, 5, 6), (2, 1, 9)]:
        rand = _random_gpt(ctx, gen)
        v = rand.cfg.d_vocab
        tokens = torch.randint(0, v, (batch, pos), generator=gen)
        reference = torch.randint(0, v, (n_ref, pos), generator=gen)
        every = [(l, h) for l in range(rand.cfg.n_layers) for h in range(rand.cfg.n_heads)]
        heads = sorted(_pick(gen, every, _int(gen, 1, 3)))
        cases.append(Case(dict(model=rand, tokens=tokens, heads=heads, reference_tokens=reference),
                          label=f"random GPT, tokens [{batch}, {pos}], {n_ref} reference prompts, heads {heads}"))
    return cases


def ablate_reference(model, tokens, heads, reference_tokens):
    captured = []

    def capture(logits):  # ablation_damage calls its metric before and after ablating: keep the logits
        captured.append(logits.detach().clone())
        return logits.sum()

    ablation_damage(model, {"x": (tokens, capture)}, heads=heads, reference=reference_tokens)
    return captured[-1]


def _ablated(model, tokens, heads, source, fill: str = "mean", whole_layer: bool = False) -> torch.Tensor:
    """Logits with the heads' z replaced by the mean over `source` (fill: "mean" per position, "pooled" over
    positions too, "zero"); whole_layer ablates every head of the heads' layers."""
    names = {l: f"blocks.{l}.attn.hook_z" for l, _ in heads}
    with torch.no_grad():
        _, cache = model.run_with_cache(source, names=list(names.values()))

    def hook(z, hook):  # z: [batch, pos, head, d_head]
        layer = int(hook.name.split(".")[1])
        chosen = list(range(model.cfg.n_heads)) if whole_layer else [h for l, h in heads if l == layer]
        z = z.clone()
        mean = cache[hook.name].mean((0, 1)) if fill == "pooled" else cache[hook.name].mean(0)
        for h in chosen:
            z[:, :, h] = 0.0 if fill == "zero" else mean[..., h, :]
        return z
    return _logits(model, tokens, [(n, hook) for n in names.values()])


def ablate_compare(got, want, case) -> str | None:
    a = case.args
    model, tokens, heads, reference = a["model"], a["tokens"], a["heads"], a["reference_tokens"]
    problem = expect_shape(got, want.shape, "your logits")
    if problem:
        return problem + " ([batch, pos, d_vocab]: the logits of the ablated run)"
    variants = [
        (lambda: _logits(model, tokens),
         "your logits equal the unablated run: the hook never changed anything (is it attached to "
         "blocks.{layer}.attn.hook_z, and do you return the hooked forward's logits?)"),
        (lambda: _ablated(model, tokens, heads, reference, fill="zero"),
         "you replaced z with zeros: mean ablation sets each head's z to its MEAN over reference_tokens (zero is a "
         "value a head never outputs)"),
        (lambda: _ablated(model, tokens, heads, reference, fill="pooled"),
         "you averaged over positions too: keep one mean per position, reference z .mean(0), [pos, head, d_head]"),
        (lambda: None if torch.equal(tokens, reference) else _ablated(model, tokens, heads, tokens),
         "you took the means over tokens, the run itself: take them over reference_tokens"),
        (lambda: _ablated(model, tokens, heads, reference, whole_layer=True),
         "you ablated every head of the layers listed: replace only z[:, :, head] of the listed heads"),
    ]
    return _diagnosed(got, want, variants, 2e-4, 1e-4, "your ablated logits", match_tol=1e-3)


# ---- 06.2 the damage elsewhere -------------------------------------------------------------------------------------

def _token_metric(token: int):
    return lambda logits: logits[:, -1, token].mean()  # mean logit of one token at the last position


def _minus_loss(tokens):
    def metric(logits):  # minus the mean next-token loss
        return -logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None]).mean()
    return metric


def _behaviours(model, gen) -> dict:
    """Small versions of shipped_behaviours' four, on held-out data: {name: (tokens, reference_tokens, metric)}, each
    reference other prompts of the same kind and width (IOI: the p_ABC prompts)."""
    corpus = corpus_for(model)
    ds = ioi_dataset(model, n=_int(gen, 4, 6), seed=_int(gen, 0, 10_000))
    facts = _pick(gen, corpus.fact_eval("heldout"), 24)
    both = model.to_tokens([f.prompt for f in facts])  # [24, pos], right-padded to one width
    fact_tokens, fact_reference, facts = both[:12], both[12:], facts[:12]
    last = torch.tensor([model.to_tokens(f.prompt).shape[1] - 1 for f in facts])  # [12]
    answers = torch.tensor([model.to_tokens(f.answer, prepend_bos=False)[0, 0].item() for f in facts])
    rows = torch.arange(len(facts))
    docs = corpus.training_documents(8, seed=90_000 + _int(gen, 0, 9_999))
    text, real = prompt_batch(model, docs, truncate=True)  # [8, pos] each, right-padded
    text = text[:, :min(24, int(real.sum(1).min()))]  # [8, width]: each document's first tokens, no padding
    return {"ioi": (ds.tokens, ds.abc().tokens, ds.logit_diff()),
            "facts": (fact_tokens, fact_reference,
                      lambda logits: logits[rows, last].log_softmax(-1)[rows, answers].mean()),
            "text": (text[:4], text[4:], _minus_loss(text[:4]))}


def damage_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 2), []
    model = ctx.model()
    behaviours = _behaviours(model, gen)
    every = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    cases.append(Case(dict(model=model, behaviours=behaviours, heads=_ioi_heads(model)), weight=2.0,
                      label=f"{_name(model)}, the card's IOI heads, behaviours {list(behaviours)}"))
    some = {k: behaviours[k] for k in _pick(gen, list(behaviours), 2)}
    heads = sorted(_pick(gen, every, 2))
    cases.append(Case(dict(model=model, behaviours=some, heads=heads),
                      label=f"{_name(model)}, heads {heads}, behaviours {list(some)}"))
    rand = _random_gpt(ctx, gen)
    v = rand.cfg.d_vocab
    first, second = torch.randint(0, v, (3, 6), generator=gen), torch.randint(0, v, (2, 9), generator=gen)
    own = {"token": (first, torch.randint(0, v, (4, 6), generator=gen), _token_metric(_int(gen, 0, v - 1))),
           "loss": (second, torch.randint(0, v, (3, 9), generator=gen), _minus_loss(second))}
    every = [(l, h) for l in range(rand.cfg.n_layers) for h in range(rand.cfg.n_heads)]
    heads = sorted(_pick(gen, every, 2))
    cases.append(Case(dict(model=rand, behaviours=own, heads=heads),
                      label=f"random GPT, behaviours on tokens [3, 6] and [2, 9] with references, heads {heads}"))
    return cases


def damage_reference(model, behaviours, heads):
    table = ablation_damage(model, {k: (t, m) for k, (t, _, m) in behaviours.items()}, heads=heads,
                            reference={k: r for k, (_, r, _) in behaviours.items()})
    return torch.tensor([[table.before[k], table.after[k]] for k in behaviours])


def _damage_variant(model, behaviours, heads, fill: str, own_tokens: bool = False) -> torch.Tensor:
    rows = []
    for tokens, reference, metric in behaviours.values():
        with torch.no_grad():
            before = float(metric(model(tokens)))
        source = tokens if own_tokens else reference
        rows.append([before, float(metric(_ablated(model, tokens, heads, source, fill=fill)))])
    return torch.tensor(rows)


def damage_compare(got, want, case) -> str | None:
    a = case.args
    problem = expect_shape(got, want.shape, "your table")
    if problem:
        return problem + f" ([n_behaviours, 2]: one row per behaviour, in the order of {list(a['behaviours'])}; " \
                         "columns before, after)"
    model, behaviours, heads = a["model"], a["behaviours"], a["heads"]
    variants = [
        (lambda: want.flip(1), "your columns are swapped: column 0 is the metric before ablation, column 1 after"),
        (lambda: torch.stack([want[:, 0], want[:, 1] - want[:, 0]], 1),
         "your column 1 is the change: return the metric after ablation itself (after - before is for the reader)"),
        (lambda: _damage_variant(model, behaviours, heads, "mean", own_tokens=True),
         "your means come from each behaviour's own tokens: take them over its reference_tokens (pass them to your "
         "06.1, and check that your 06.1 uses its reference_tokens)"),
        (lambda: _damage_variant(model, behaviours, heads, "zero"),
         "you ablated with zeros: replace each head's z with its mean over the behaviour's reference prompts"),
        (lambda: _damage_variant(model, behaviours, heads, "pooled"),
         "you averaged over positions too: take the means per position over each behaviour's reference prompts"),
        (lambda: torch.stack([want[:, 0], want[:, 0]], 1),
         "your 'after' column equals 'before': the ablation did not take effect (is the hook attached?)"),
    ]
    return _diagnosed(got, want, variants, 1e-3, 1e-3, "your damage table", match_tol=2e-3)


# ---- 06.3 a steering vector ----------------------------------------------------------------------------------------

def _prompts(facts, subject: str, relation: str | None = None) -> list[str]:
    return [f.prompt for f in facts if f.subject == subject and (relation is None or f.relation == relation)]


def vector_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 3), []
    model = ctx.model()
    facts = corpus_for(model).fact_eval("train")
    countries = sorted({f.subject for f in facts})
    n_layers = model.cfg.n_layers
    relation = ["capital", "language", "continent"][_int(gen, 0, 2)]
    a, b = _pick(gen, countries, 2)
    layer = _int(gen, 1, n_layers - 1)
    cases.append(Case(dict(model=model, positive=_prompts(facts, a, relation), negative=_prompts(facts, b, relation),
                           hook=f"blocks.{layer}.hook_resid_pre"), weight=2.0,
                      label=f"{_name(model)}, {a} minus {b} ({relation} prompts), blocks.{layer}.hook_resid_pre"))
    a, b, c = _pick(gen, countries, 3)
    positive = _pick(gen, _prompts(facts, a), 4)  # mixed relations: prompts of several lengths
    negative = _pick(gen, _prompts(facts, b) + _prompts(facts, c), 5)
    for kind in ("hook_mlp_out", "attn.hook_z"):
        hook = f"blocks.{_int(gen, 0, n_layers - 1)}.{kind}"
        cases.append(Case(dict(model=model, positive=positive, negative=negative, hook=hook),
                          label=f"{_name(model)}, {a} minus {b} and {c} (mixed relations), {hook}"))
    return cases


def vector_reference(model, positive, negative, hook):
    return steering_vector(model, positive, negative, hook=hook, pos=-1)


def _padded_mean(model, prompts, hook, where) -> torch.Tensor:
    """Mean of the activation over a right-padded batch: at position -1 (where="last") or every position ("all")."""
    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(prompts), names=[hook])
    act = cache[hook]  # [n, pos, *act_shape]
    return act[:, -1].mean(0) if where == "last" else act.mean((0, 1))


def vector_compare(got, want, case) -> str | None:
    a = case.args
    model, positive, negative, hook = a["model"], a["positive"], a["negative"], a["hook"]
    problem = expect_shape(got, want.shape, "your steering vector")
    if problem:
        return problem + " (the activation's shape after [batch, pos])"
    variants = [
        (lambda: -want, "the sign is flipped: positive minus negative (the vector points towards the positive "
                        "prompts)"),
        (lambda: _padded_mean(model, positive, hook, "last") - _padded_mean(model, negative, hook, "last"),
         "you read position -1 of a padded batch: a shorter prompt's last real token comes earlier (read each "
         "prompt's own last token, e.g. one prompt at a time)"),
        (lambda: steering_vector(model, positive, negative, hook=hook, pos=None),
         "you averaged over every position: read the activation at each prompt's last token"),
        (lambda: _padded_mean(model, positive, hook, "all") - _padded_mean(model, negative, hook, "all"),
         "you averaged over every position (padding included): read the activation at each prompt's last token"),
        (lambda: _last_acts(model, positive, hook).sum(0) - _last_acts(model, negative, hook).sum(0),
         "you summed over prompts: take the mean of each set (the sets have different sizes)"),
    ]
    return _diagnosed(got, want, variants, 1e-4, 1e-4, "your steering vector", match_tol=1e-3)


def _last_acts(model, prompts, hook) -> torch.Tensor:
    """[n, *act_shape]: the activation at each prompt's own last token, one prompt at a time."""
    acts = []
    for prompt in prompts:
        with torch.no_grad():
            _, cache = model.run_with_cache(model.to_tokens(prompt), names=[hook])
        acts.append(cache[hook][0, -1])
    return torch.stack(acts)


# ---- 06.4 adding it during a forward ------------------------------------------------------------------------------

def steer_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 4), []
    model = ctx.model()
    corpus_facts = corpus_for(model)
    train, heldout = corpus_facts.fact_eval("train"), corpus_facts.fact_eval("heldout")
    countries = sorted({f.subject for f in train})
    a, b = _pick(gen, countries, 2)
    hook = f"blocks.{model.cfg.n_layers - 1}.hook_resid_mid"  # where the vector moves the answer (see lesson.py)
    with _one_thread():
        vector = steering_vector(model, _prompts(train, a, "capital"), _prompts(train, b, "capital"), hook=hook)
    capitals = [f for f in heldout if f.relation == "capital"]
    phrasings = sorted({f.paraphrase for f in capitals})  # one phrasing, so that the prompts share a length
    phrasing = max(phrasings, key=lambda ph: sum(f.paraphrase == ph for f in capitals))
    prompts = [f.prompt for f in capitals if f.paraphrase == phrasing]
    by_length: dict[int, list[str]] = {}
    for p in _pick(gen, prompts, 12):
        by_length.setdefault(model.to_tokens(p).shape[1], []).append(p)
    same = max(by_length.values(), key=len)[:5]  # prompts of one length: position -1 is every prompt's last token
    tokens = model.to_tokens(same)
    cases.append(Case(dict(model=model, tokens=tokens, hook=hook, vector=vector, coeff=1.0, pos=-1), weight=2.0,
                      label=f"{_name(model)}, {a} minus {b} at {hook}, {len(same)} capital prompts, pos=-1"))
    mlp = f"blocks.{_int(gen, 0, model.cfg.n_layers - 1)}.hook_mlp_out"
    cases.append(Case(dict(model=model, tokens=tokens, hook=mlp, vector=torch.randn(model.cfg.d_model, generator=gen),
                           coeff=0.5, pos=None), label=f"{_name(model)}, a random vector at {mlp}, every position"))
    rand = _random_gpt(ctx, gen)
    cfg = rand.cfg
    for hook, shape, pos, coeff in [(f"blocks.{_int(gen, 0, cfg.n_layers - 1)}.attn.hook_z", (cfg.n_heads, cfg.d_head),
                                     _int(gen, 1, 4), -1.5),
                                    ("blocks.0.hook_resid_pre", (cfg.d_model,), None, 2.0)]:
        tokens = torch.randint(0, cfg.d_vocab, (2, 7), generator=gen)
        cases.append(Case(dict(model=rand, tokens=tokens, hook=hook, vector=torch.randn(shape, generator=gen),
                               coeff=coeff, pos=pos), label=f"random GPT, {hook}, vector {list(shape)}, pos={pos}, "
                                                            f"coeff={coeff}"))
    return cases


def steer_reference(model, tokens, hook, vector, coeff, pos):
    with torch.no_grad(), steer(model, hook, vector, coeff=coeff, positions=pos):
        return model(tokens)


def steer_compare(got, want, case) -> str | None:
    a = case.args
    model, tokens, hook, vector, coeff, pos = (a[k] for k in ("model", "tokens", "hook", "vector", "coeff", "pos"))
    problem = expect_shape(got, want.shape, "your logits")
    if problem:
        return problem + " ([batch, pos, d_vocab]: the steered run's logits)"
    steered = lambda c=coeff, p=pos: steer_reference(model, tokens, hook, vector, c, p)  # noqa: E731
    n_pos = tokens.shape[1]
    variants = [
        (lambda: _logits(model, tokens), "your logits equal the unsteered run: the vector was never added (is the "
                                         "hook attached, and are the logits computed inside the `with` block?)"),
        (lambda: steered(-coeff), "you subtracted the vector: steering ADDS coeff * vector"),
        (lambda: steered(1.0) if coeff != 1.0 else None, "you left out coeff: add coeff * vector"),
        (lambda: steered(coeff, None) if pos is not None else None,
         "you added the vector at every position: with pos given, add it only at that position"),
        (lambda: steered(coeff, 0) if pos not in (None, 0) else None,
         "you added the vector at position 0 (the BOS): add it at position pos"),
        (lambda: steered(coeff, (pos - 1) % n_pos) if pos is not None else None,
         "you added the vector one position too early: index act[:, pos]"),
        (lambda: steered(coeff, -1) if pos is None else None,
         "you added the vector at the last position only: with pos=None, add it at every position"),
    ]
    return _diagnosed(got, want, variants, 2e-4, 1e-4, "your steered logits", match_tol=1e-3)


# ---- 06.5 where steering works ---------------------------------------------------------------------------------------

def sweep_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 15), []
    model = ctx.model()
    corpus = corpus_for(model)
    train, heldout = corpus.fact_eval("train"), corpus.fact_eval("heldout")
    countries = sorted({f.subject for f in train})
    for relation, coeff in [("capital", 1.0), (["language", "continent"][_int(gen, 0, 1)], 1.5)]:
        a, b = _pick(gen, countries, 2)
        answer = lambda c: next(f.answer for f in train if f.subject == c and f.relation == relation)  # noqa: E731
        target, baseline = (int(model.to_tokens(answer(c), prepend_bos=False)[0, 0]) for c in (a, b))
        prompts = _prompts(heldout, b, relation)
        cases.append(Case(dict(model=model, positive=_pick(gen, _prompts(train, a, relation), 4),
                               negative=_pick(gen, _prompts(train, b, relation), 4), prompts=prompts, target=target,
                               baseline=baseline, coeff=coeff),
                          label=f"{_name(model)}, {a} minus {b} ({relation}), {len(prompts)} held-out {b} prompts, "
                                f"coeff {coeff}"))
    return cases


def _sweep(model, positive, negative, prompts, target, baseline, coeff, kind="hook_resid_mid", where=-1,
           read=lambda logits, t, b: logits[t] - logits[b]) -> torch.Tensor:
    out = []
    for layer in range(model.cfg.n_layers):
        hook = f"blocks.{layer}.{kind}"
        with torch.no_grad():
            vector = steering_vector(model, positive, negative, hook=hook, pos=-1)
        diffs = []
        for prompt in prompts:
            with torch.no_grad(), steer(model, hook, vector, coeff=coeff, positions=where):
                logits = model(model.to_tokens(prompt))[0, -1]
            diffs.append(read(logits, target, baseline))
        out.append(torch.stack(diffs).mean())
    return torch.stack(out)


def sweep_reference(model, positive, negative, prompts, target, baseline, coeff):
    return _sweep(model, positive, negative, prompts, target, baseline, coeff)


def sweep_compare(got, want, case) -> str | None:
    a = case.args
    args = [a[k] for k in ("model", "positive", "negative", "prompts", "target", "baseline", "coeff")]
    problem = expect_shape(got, want.shape, "your sweep")
    if problem:
        return problem + " ([n_layers]: one mean logit difference per layer)"
    variants = [
        (lambda: -want, "your differences have the wrong sign: logit(target) - logit(baseline)"),
        (lambda: _sweep(*args[:-1], 1.0) if a["coeff"] != 1.0 else None, "you left out coeff: steer with coeff"),
        (lambda: _sweep(*args, kind="hook_resid_post"),
         "you built and added the vector at hook_resid_post: use blocks.{l}.hook_resid_mid for layer l"),
        (lambda: _sweep(*args, kind="hook_resid_pre"),
         "you built and added the vector at hook_resid_pre: use blocks.{l}.hook_resid_mid for layer l (after the "
         "layer's attention, which may bring the country to the last token)"),
        (lambda: _sweep(*args, where=None), "you added the vector at every position: add it at the last token only "
                                            "(pos=-1)"),
        (lambda: _sweep(*args, read=lambda lg, t, b: lg.softmax(-1)[t] - lg.softmax(-1)[b]),
         "you compared probabilities: return the logit difference, logit(target) - logit(baseline)"),
        (lambda: torch.stack([_sweep(*args)[0]] * len(want)) if len(want) > 1 else None,
         "every layer gives the same number: build a new vector at each layer's resid_mid and steer there"),
    ]
    return _diagnosed(got, want, variants, 1e-3, 1e-3, "your sweep", match_tol=5e-3)


# ---- 06.6 the keys' second moment ------------------------------------------------------------------------------------

def moment_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 16), []
    model = ctx.model()
    docs = corpus_for(model).training_documents(6, seed=80_000 + _int(gen, 0, 9_999))
    tokens, mask = prompt_batch(model, docs, truncate=True)  # [6, pos] each, right-padded
    mask = mask.clone()
    mask[:, 0] = False
    layer = _int(gen, 0, model.cfg.n_layers - 1)
    cases.append(Case(dict(model=model, layer=layer, tokens=tokens, mask=mask), weight=2.0,
                      label=f"{_name(model)} MLP{layer}, 6 corpus documents [6, {tokens.shape[1]}], BOS and padding "
                            "masked out"))
    rand = _random_gpt(ctx, gen)
    tokens = torch.randint(0, rand.cfg.d_vocab, (3, 8), generator=gen)
    mask = torch.rand(3, 8, generator=gen) < 0.6
    mask[0, 1] = True
    layer = _int(gen, 0, rand.cfg.n_layers - 1)
    cases.append(Case(dict(model=rand, layer=layer, tokens=tokens, mask=mask),
                      label=f"random GPT MLP{layer}, tokens [3, 8], {int(mask.sum())} positions in the mask"))
    return cases


def _keys(model, layer, tokens) -> torch.Tensor:  # [batch, pos, d_mlp] in float64
    name = f"blocks.{layer}.mlp.hook_post"
    with torch.no_grad():
        return model.run_with_cache(tokens, names=[name])[1][name].double()


def moment_reference(model, layer, tokens, mask):
    keys = _keys(model, layer, tokens)
    total, count = torch.zeros(keys.shape[-1], keys.shape[-1], dtype=torch.float64), 0
    for b in range(tokens.shape[0]):
        for p in range(tokens.shape[1]):
            if mask[b, p]:
                total += torch.outer(keys[b, p], keys[b, p])
                count += 1
    return (total / count).float()


def moment_compare(got, want, case) -> str | None:
    a = case.args
    problem = expect_shape(got, want.shape, "your second moment")
    if problem:
        return problem + " ([d_mlp, d_mlp])"
    keys = _keys(a["model"], a["layer"], a["tokens"])
    kept = keys[a["mask"]]  # [n, d_mlp]
    every = keys.flatten(0, 1)
    centred = kept - kept.mean(0)
    variants = [
        (lambda: centred.T @ centred / len(kept), "you centred the keys (a covariance): ROME's C is the uncentred "
                                                 "second moment, E[k k^T], with the mean left in"),
        (lambda: every.T @ every / len(every), "you used every position: keep only the keys where mask is True"),
        (lambda: kept.T @ kept / a["tokens"].shape[0], "you divided by the number of rows: divide by the number of "
                                                       "keys kept (mask.sum())"),
        (lambda: kept.T @ kept / (len(kept) - 1) if len(kept) > 1 else None,
         "you divided by n - 1: the second moment is the mean, divide by n"),
        (lambda: kept.T @ kept, "you summed the outer products: take their mean"),
    ]
    return _diagnosed(got, want, variants, 1e-4, 1e-4, "your second moment", match_tol=1e-3)


# ---- 06.7 the new value v* -------------------------------------------------------------------------------------------

def delta_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 17), []
    model = ctx.model()
    layer = _layer_of_facts(model)
    facts = [f for f in corpus_for(model).fact_eval("train") if f.relation == "capital"]
    fact, other = _pick(gen, facts, 2)
    tokens = model.to_tokens(fact.prompt)
    subject_pos = find_subject_positions(model, tokens, fact.subject)[-1]
    target = int(model.to_tokens(other.answer, prepend_bos=False)[0, 0])
    with _one_thread(), torch.no_grad():
        name = f"blocks.{layer}.mlp.hook_post"
        key = model.run_with_cache(tokens, names=[name])[1][name][0, subject_pos]
        mlp = model.blocks[layer].mlp
        v_norm = (key @ mlp.W_out + mlp.b_out).norm().item()
    for max_norm, steps, label in [(round(1.5 * v_norm, 3), 60, "1.5 |v|"), (round(0.4 * v_norm, 3), 30, "0.4 |v|")]:
        cases.append(Case(dict(model=model, tokens=tokens, subject_pos=subject_pos, layer=layer, target=target,
                               steps=steps, lr=0.5, max_norm=max_norm),
                          label=f"{_name(model)} MLP{layer}: {fact.prompt!r} -> {other.answer!r}, {steps} steps, "
                                f"max_norm {label}"))
    rand = _random_gpt(ctx, gen)
    tokens = torch.randint(0, rand.cfg.d_vocab, (1, 6), generator=gen)
    cases.append(Case(dict(model=rand, tokens=tokens, subject_pos=_int(gen, 1, 3), layer=0,
                           target=_int(gen, 0, rand.cfg.d_vocab - 1), steps=40, lr=0.3, max_norm=3.0),
                      label="random GPT, tokens [1, 6], 40 steps, max_norm 3"))
    return cases


def _delta_prob(model, tokens, pos, layer, target, delta, hook="hook_mlp_out") -> float:
    """P(target) at the last position with delta added at blocks.{layer}.{hook}, position pos."""
    def add(act, hook):
        act = act.clone()
        act[:, pos] = act[:, pos] + delta
        return act
    with torch.no_grad(), model.hooks([(f"blocks.{layer}.{hook}", add)]):
        return model(tokens)[0, -1].softmax(-1)[target].item()


def delta_reference(model, tokens, subject_pos, layer, target, steps, lr, max_norm):
    """Adam written out (as minimech's rome_edit), |delta| clipped after each step."""
    delta = torch.zeros(model.cfg.d_model, requires_grad=True)
    m1, m2 = torch.zeros_like(delta), torch.zeros_like(delta)

    def add(act, hook):
        act = act.clone()
        act[:, subject_pos] = act[:, subject_pos] + delta
        return act
    for step in range(steps):
        with torch.enable_grad(), model.hooks([(f"blocks.{layer}.hook_mlp_out", add)]):
            loss = -model(tokens)[0, -1].log_softmax(-1)[target]
            (grad,) = torch.autograd.grad(loss, [delta])
        with torch.no_grad():
            m1.mul_(0.9).add_(0.1 * grad)
            m2.mul_(0.999).add_(0.001 * grad ** 2)
            delta -= lr * (m1 / (1 - 0.9 ** (step + 1))) / ((m2 / (1 - 0.999 ** (step + 1))).sqrt() + 1e-8)
            delta.mul_(min(1.0, max_norm / (delta.norm().item() + 1e-12)))
    return delta.detach()


def delta_compare(got, want, case) -> str | None:
    a = case.args
    model, tokens, pos, layer, target, max_norm = (a[k] for k in ("model", "tokens", "subject_pos", "layer",
                                                                 "target", "max_norm"))
    problem = expect_shape(got, want.shape, "your delta")
    if problem:
        return problem + " ([d_model]: added to the MLP's output at one position)"
    if not got.is_floating_point() or torch.isnan(got).any():
        return "your delta must be a float tensor without NaNs"
    got = got.detach().float()
    if got.abs().max() == 0:
        return ("your delta is all zeros: no step changed it (compute the loss inside torch.enable_grad(), with "
                "delta.requires_grad_(True), and step the optimiser)")
    norm = got.norm().item()
    if norm > max_norm * (1 + 1e-3) + 1e-5:
        return (f"|delta| = {norm:.4g} exceeds max_norm = {max_norm:.4g}: after each step, scale delta back to "
                "max_norm when it is longer")
    p_got = _delta_prob(model, tokens, pos, layer, target, got)
    p_want = _delta_prob(model, tokens, pos, layer, target, want)
    p_none = _delta_prob(model, tokens, pos, layer, target, torch.zeros_like(got))
    good = p_got >= 0.9 or torch.tensor(p_got).log() >= torch.tensor(p_want).log() - 0.5
    if good:
        return None
    base = (f"with your delta at position {pos}, P(target) = {p_got:.4f} (without it {p_none:.4f}); gradient descent "
            "with this budget gets it much higher")
    n_pos = tokens.shape[1]
    if pos != n_pos - 1 and _delta_prob(model, tokens, n_pos - 1, layer, target, got) > max(2 * p_got, 0.5):
        return base + ": you added delta at the last token; ROME adds it at the subject's last token, subject_pos"
    for other in (layer - 1, layer + 1):
        if 0 <= other < model.cfg.n_layers and _delta_prob(model, tokens, pos, other, target, got) > max(2 * p_got,
                                                                                                        0.5):
            return base + f": your delta works at layer {other}, not at blocks.{layer}.hook_mlp_out"
    if p_got < p_none:
        return base + ": your delta LOWERS P(target): minimise -log P(target) (step against the gradient)"
    return base + ": check the loss (-log_softmax at the last position, index target), the learning rate and the steps"


# ---- 06.8 the rank-one update --------------------------------------------------------------------------------------

def _covariance(gen, d: int) -> torch.Tensor:
    """[d, d]: a random positive definite second moment, like keys' E[k k^T] (anisotropic, well conditioned)."""
    keys = torch.randn(3 * d, d, generator=gen, dtype=torch.float64) * torch.linspace(0.3, 2.0, d, dtype=torch.float64)
    return keys.T @ keys / (3 * d) + 0.05 * torch.eye(d, dtype=torch.float64)


def update_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 5), []
    for d_mlp, d_model in [(7, 5), (4, 9), (6, 6)]:  # 6 x 6: a transposed update has the right shape there
        W = torch.randn(d_mlp, d_model, generator=gen, dtype=torch.float64)
        key = torch.randn(d_mlp, generator=gen, dtype=torch.float64)
        value = torch.randn(d_model, generator=gen, dtype=torch.float64) * 2
        cases.append(Case(dict(W=W, key=key, value=value, cov=_covariance(gen, d_mlp)),
                          label=f"random W [{d_mlp}, {d_model}], key [{d_mlp}], C [{d_mlp}, {d_mlp}] (float64)"))
    model = ctx.model()
    layer = _layer_of_facts(model)
    facts = [f for f in corpus_for(model).fact_eval("train") if f.relation == "capital"]
    fact = _pick(gen, facts, 1)[0]
    name = f"blocks.{layer}.mlp.hook_post"
    with _one_thread(), torch.no_grad():
        tokens = model.to_tokens(fact.prompt)
        subject_pos = find_subject_positions(model, tokens, fact.subject)[-1]
        _, cache = model.run_with_cache(tokens, names=[name], stop_at_layer=layer + 1)
        key = cache[name][0, subject_pos].double()  # [d_mlp]
        cov = key_covariance(model, layer, n_documents=40, seed=_int(gen, 0, 1000)).double()
    W = model.blocks[layer].mlp.W_out.detach().double()
    value = key @ W + torch.randn(model.cfg.d_model, generator=gen, dtype=torch.float64) * 3
    cases.append(Case(dict(W=W, key=key, value=value, cov=cov), weight=2.0,
                      label=f"{_name(model)} MLP{layer}: W_out, the key of {fact.subject!r} in {fact.prompt!r}, C "
                            "from corpus text (float64)"))
    return cases


def update_reference(W, key, value, cov):
    return rank_one_update(key, value - key @ W, cov)


def _orthogonal_key(key: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """[d_mlp]: a key k2 with k2^T C^-1 k = 0 (random, then the C^-1 k component projected out), |k2| = |k|."""
    c_inv_key = torch.linalg.solve(cov.double(), key.double())
    other = torch.randn(len(key), generator=torch.Generator().manual_seed(len(key)), dtype=torch.float64)
    other = other - (other @ c_inv_key) / (key.double() @ c_inv_key) * key.double()
    return other / other.norm() * key.double().norm()


def update_compare(got, want, case) -> str | None:
    a = case.args
    W, key, value, cov = (a[k].double() for k in ("W", "key", "value", "cov"))
    d_mlp, d_model = W.shape
    if isinstance(got, torch.Tensor) and tuple(got.shape) == (d_model, d_mlp) and d_mlp != d_model:
        return (f"your update has shape {list(got.shape)}: it is transposed. Delta W must have W's shape [d_mlp, "
                f"d_model] = [{d_mlp}, {d_model}] (rows are values: a key k is read as k @ W)")
    problem = expect_shape(got, W.shape, "your update")
    if problem or not got.is_floating_point() or torch.isnan(got).any():
        return close(got, want, what="your update")
    delta = value - key @ W  # [d_model]
    got = got.detach().double()
    scale = 1 + value.abs().max().item()
    mapped = key @ (W + got)  # [d_model]
    err = (mapped - value).abs().max().item()
    if err > 1e-6 * scale:
        if torch.allclose(mapped, key @ W + value, atol=1e-6 * scale):
            return (f"key @ (W + Delta W) comes out as key @ W + value (max error {err:.4g}): the update must add "
                    "what the key is missing, v* - W k = value - key @ W, not value itself")
        if d_mlp == d_model and torch.allclose(got.T, want.double(), atol=1e-6 * scale):
            return (f"key @ (W + Delta W) misses value by up to {err:.4g}: your update is transposed (W is [d_mlp, "
                    "d_model]; the outer product is C^-1 k (outer) (v* - W k), in that order)")
        return (f"key @ (W + Delta W) should equal value exactly, but it misses by up to {err:.4g} (your first "
                f"entries: {[round(x, 4) for x in mapped[:3].tolist()]}): check the denominator k^T C^-1 k, which "
                "makes key @ Delta W = v* - W k")
    singular = torch.linalg.svdvals(got)  # [min(d_mlp, d_model)]
    if len(singular) > 1 and singular[1] > 1e-6 * singular[0]:
        return (f"your update has rank {int((singular > 1e-6 * singular[0]).sum())}, not 1 (singular values "
                f"{[round(s, 4) for s in singular[:3].tolist()]}): it should be one outer product u v^T")
    other = _orthogonal_key(key, cov)
    leak = (other @ got).norm().item()
    if leak > 1e-6 * (1 + delta.norm().item()):
        base = f"a key k2 with k2^T C^-1 k = 0 must keep its value, but k2 @ Delta W has norm {leak:.4g}"
        c_key = cov @ key
        if torch.allclose(got, torch.outer(c_key, delta) / (key @ c_key), atol=1e-6 * scale):
            return base + ": you used C instead of its inverse (the direction is C^-1 k: torch.linalg.solve(C, k))"
        if torch.allclose(got, torch.outer(key, delta) / (key @ key), atol=1e-6 * scale):
            return base + (": your update is k (v* - W k)^T / (k^T k), as if C were the identity; use C^-1 k, "
                           "which spares the directions that keys often take")
        return base + ": the update's row direction should be C^-1 k"
    return close(got, want.double(), atol=1e-6, rtol=1e-5, what="your update")


# ---- 06.9 the edit's effect on facts -------------------------------------------------------------------------------

def edit_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 6), []
    model = ctx.model()
    facts = corpus_for(model).fact_eval("heldout")
    layer = _layer_of_facts(model)
    subject = _pick(gen, sorted({f.subject for f in facts}), 1)[0]
    own = [f for f in facts if f.subject == subject]
    chosen = own[:2] + _pick(gen, own[2:], 2) + _pick(gen, [f for f in facts if f.subject != subject], 6)
    answers = torch.tensor([model.to_tokens(f.answer, prepend_bos=False)[0, 0].item() for f in chosen])
    with _one_thread(), torch.no_grad():
        tokens = model.to_tokens(own[0].prompt)
        name = f"blocks.{layer}.mlp.hook_post"
        _, cache = model.run_with_cache(tokens, names=[name], stop_at_layer=layer + 1)
        key = cache[name][0, find_subject_positions(model, tokens, subject)[-1]]  # [d_mlp]
        cov = key_covariance(model, layer, n_documents=40)
        mlp = model.blocks[layer].mlp
        v_norm = (key @ mlp.W_out + mlp.b_out).norm()
        direction = torch.randn(model.cfg.d_model, generator=gen)
        update = rank_one_update(key, 1.5 * v_norm * direction / direction.norm(), cov)  # [d_mlp, d_model]
    cases.append(Case(dict(model=model, layer=layer, update=update, prompts=[f.prompt for f in chosen],
                           answers=answers), weight=2.0,
                      label=f"{_name(model)}, a rank-one edit of MLP{layer} at the key of {subject!r}, "
                            f"{len(chosen)} facts"))
    other = _int(gen, 0, model.cfg.n_layers - 1)
    update = torch.outer(torch.randn(model.cfg.d_mlp, generator=gen), torch.randn(model.cfg.d_model, generator=gen))
    some = _pick(gen, facts, 5)
    cases.append(Case(dict(model=model, layer=other, update=update * 0.05, prompts=[f.prompt for f in some],
                           answers=torch.tensor([model.to_tokens(f.answer, prepend_bos=False)[0, 0].item()
                                                 for f in some])),
                      label=f"{_name(model)}, a random rank-one change to MLP{other}, 5 facts"))
    return cases


def _answer_probs(model, prompts, answers, layer=None, update=None, sign: float = 1.0, pad: bool = False,
                  log: bool = False) -> torch.Tensor:
    """[n] P(answer) one prompt at a time (pad: one right-padded batch read at position -1), on a copy of the model
    with W_out of `layer` += sign * update."""
    if update is not None:
        model = copy.deepcopy(model)
        with torch.no_grad():
            model.blocks[layer].mlp.W_out += sign * update
    with torch.no_grad():
        if pad:
            last = model(model.to_tokens(prompts))[:, -1]  # [n, d_vocab]
        else:
            last = torch.stack([model(model.to_tokens(p))[0, -1] for p in prompts])  # [n, d_vocab]
    probs = last.log_softmax(-1) if log else last.softmax(-1)
    return probs[torch.arange(len(prompts)), answers]


def edit_reference(model, layer, update, prompts, answers):
    return torch.stack([_answer_probs(model, prompts, answers), _answer_probs(model, prompts, answers, layer, update)])


def edit_compare(got, want, case) -> str | None:
    a = case.args
    model, layer, update, prompts, answers = (a[k] for k in ("model", "layer", "update", "prompts", "answers"))
    problem = expect_shape(got, want.shape, "your probabilities")
    if problem:
        return problem + " ([2, n]: row 0 before the edit, row 1 after)"
    variants = [
        (lambda: want.flip(0), "your rows are swapped: row 0 is the original model, row 1 the edited one"),
        (lambda: torch.stack([want[0], want[0]]),
         "your second row equals the first: the edit did not take effect (add update to the copy's "
         "blocks[layer].mlp.W_out, and run the copy)"),
        (lambda: torch.stack([want[0], _answer_probs(model, prompts, answers, layer, update, sign=-1.0)]),
         "you subtracted the update: the edited W_out is W_out + update"),
        (lambda: torch.stack([_answer_probs(model, prompts, answers, pad=True),
                              _answer_probs(model, prompts, answers, layer, update, pad=True)]),
         "you read position -1 of a padded batch: a shorter prompt's last real token comes earlier"),
        (lambda: want.log(), "you returned log-probabilities: return probabilities (softmax)"),
    ]
    return _diagnosed(got, want, variants, 1e-4, 1e-3, "your probabilities", match_tol=1e-3)


EXERCISES = [
    Exercise(id="06.1", function="mean_ablated_logits", title="Mean-ablating a set of heads", cases=ablate_cases,
             reference=ablate_reference, compare=ablate_compare,
             library=("minimech.analysis.interventions.ablation_damage",
                      "minimech.analysis.ablation.mean_ablate_heads")),
    Exercise(id="06.2", function="damage_table", title="The damage elsewhere", cases=damage_cases,
             reference=damage_reference, compare=damage_compare, uses=("06.1",),
             library=("minimech.analysis.interventions.ablation_damage",)),
    Exercise(id="06.3", function="steering_vector", title="A steering vector from two sets of prompts",
             cases=vector_cases, reference=vector_reference, compare=vector_compare,
             library=("minimech.analysis.interventions.steering_vector",
                      "minimech.analysis.interventions.mean_activation")),
    Exercise(id="06.4", function="steered_logits", title="Steering a forward pass", cases=steer_cases,
             reference=steer_reference, compare=steer_compare,
             library=("minimech.analysis.interventions.steer",)),
    Exercise(id="06.5", function="steering_by_layer", title="Where steering works", cases=sweep_cases,
             reference=sweep_reference, compare=sweep_compare, uses=("06.3", "06.4"),
             library=("minimech.analysis.interventions.steering_vector", "minimech.analysis.interventions.steer")),
    Exercise(id="06.6", function="key_second_moment", title="The keys' second moment", cases=moment_cases,
             reference=moment_reference, compare=moment_compare,
             library=("minimech.analysis.interventions.key_covariance",)),
    Exercise(id="06.7", function="value_delta", title="The new value v*", cases=delta_cases,
             reference=delta_reference, compare=delta_compare,
             library=("minimech.analysis.interventions.rome_edit", "minimech.analysis.interventions._optimise_value")),
    Exercise(id="06.8", function="rome_update", title="ROME's rank-one update", cases=update_cases,
             reference=update_reference, compare=update_compare,
             library=("minimech.analysis.interventions.rank_one_update",)),
    Exercise(id="06.9", function="edit_answer_probs", title="What else an edit changes", cases=edit_cases,
             reference=edit_reference, compare=edit_compare,
             library=("minimech.analysis.interventions._fact_table",)),
]
