"""Checks for lesson 04: each exercise against minimech's own views and toolkit, on the lesson's model and on small
random GPTs whose every parameter is random.

Ground truth: Memory.value_logits (04.1), Memory.activation on a full cache (04.2), minimech.analysis.memories.
top_activating (04.3, a plain loop for models without a tokenizer), a forward pass written out block by block with
the noise added to the embeddings directly (04.4), causal_trace (04.5, 04.6, and its clean and corrupted P for
04.7's fractions), and a plain sort of cached activations (04.8). causal_trace draws its own noise
from a seed, so the cases make their noise tensors with exactly its recipe and remember, by content, which seed and
scale made each one. When an answer is wrong, the check recomputes the classic mistakes (the key instead of the
value, no GELU, the wrong tokens noised, the wrong layer restored, ...) and names the one the answer matches.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from minimech.analysis import causal_trace, find_subject_positions, ioi_dataset
from minimech.analysis.memories import top_activating
from minimech.grading import Case, Exercise, close, expect_shape
from minimech.training.corpora import corpus_for

KIND_HOOKS = {"resid": "hook_resid_post", "mlp": "hook_mlp_out", "attn": "hook_attn_out"}
SAMPLES = 3


# ---- inputs --------------------------------------------------------------------------------------------------------

def _gen(ctx, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(ctx.seed * 7919 + salt)


def _int(gen, lo: int, hi: int) -> int:  # uniform in [lo, hi]
    return int(torch.randint(lo, hi + 1, (), generator=gen))


def _name(model) -> str:
    return model.card.get("name") or model.cfg.model_name


def _random_gpt(ctx, gen, **fixed):
    cfg = dict(n_layers=_int(gen, 2, 3), n_heads=2, d_head=_int(gen, 3, 6), d_mlp=_int(gen, 8, 24), n_ctx=16,
               d_vocab=_int(gen, 20, 40))
    cfg.update(fixed)
    cfg.setdefault("d_model", cfg["n_heads"] * cfg["d_head"] + 1)  # d_model != n_heads * d_head on purpose
    return ctx.random_model(seed=_int(gen, 0, 10_000), **cfg)


def _facts(model, gen, count: int):
    """count (tokens [1, pos], subject positions, answer id, label) from the held-out fact prompts."""
    facts = corpus_for(model).fact_eval("heldout")
    order = torch.randperm(len(facts), generator=gen).tolist()
    out = []
    for i in order[:count]:
        fact = facts[i]
        tokens = model.to_tokens(fact.prompt)  # [1, pos]
        answer = int(model.to_tokens(fact.answer, prepend_bos=False)[0, 0])  # the answer's first token
        positions = find_subject_positions(model, tokens, fact.subject)
        out.append((tokens, positions, answer, f"{fact.prompt!r} -> {fact.answer!r}"))
    return out


# noise tensors made by _noise (by content) -> the (seed, std) that made them, for the causal_trace reference
_NOISE_SOURCES: dict[str, tuple[int, float]] = {}


def _digest(t: torch.Tensor) -> str:
    return hashlib.blake2b(t.contiguous().numpy().tobytes() + str(list(t.shape)).encode(), digest_size=12).hexdigest()


def _noise(model, n_subject: int, seed: int) -> torch.Tensor:
    """[SAMPLES, n_subject, d_model]: causal_trace's own draws for this seed (std 3 x the std of W_E's entries)."""
    std = 3 * model.W_E.detach().std().item()
    noise = torch.randn(SAMPLES, n_subject, model.cfg.d_model, generator=torch.Generator().manual_seed(seed)) * std
    _NOISE_SOURCES[_digest(noise)] = (seed, std)
    return noise


def _trace_inputs(ctx, gen, n_facts: int):
    """Trace inputs: n_facts held-out facts on the lesson's model, one random GPT with a random subject span."""
    model, items = ctx.model(), []
    for tokens, positions, answer, label in _facts(model, gen, n_facts):
        seed = _int(gen, 0, 10_000)
        items.append((model, tokens, positions, answer, _noise(model, len(positions), seed), f"{_name(model)} {label}"))
    rand = _random_gpt(ctx, gen)
    tokens = torch.randint(0, rand.cfg.d_vocab, (1, _int(gen, 5, 8)), generator=gen)
    start = _int(gen, 1, tokens.shape[1] - 3)
    positions = find_subject_positions(rand, tokens, tokens[0, start:start + 2].tolist())
    answer = _int(gen, 0, rand.cfg.d_vocab - 1)
    items.append((rand, tokens, positions, answer, _noise(rand, len(positions), _int(gen, 0, 10_000)),
                  f"random GPT, tokens [1, {tokens.shape[1]}], subject at {positions}"))
    return items


def _trace(model, tokens, subject_positions, answer, noise, kind, window=1):
    seed, std = _NOISE_SOURCES[_digest(noise)]
    subject = tokens[0, subject_positions].tolist()
    return causal_trace(model, tokens, answer, subject, noise=std, samples=noise.shape[0], seed=seed, kinds=(kind,),
                        window=window)


def _first_match(got, want, variants, tol: float) -> str | None:
    """The message of the first (fn() -> value, message) whose value got matches; a variant that equals want
    itself on this case explains nothing and is skipped."""
    for make, message in variants:
        value = make()
        if value is None or _near(value, want, tol):
            continue
        if isinstance(value, torch.Tensor):
            if isinstance(got, torch.Tensor) and got.shape == value.shape and torch.allclose(
                    got.detach().double(), value.double(), atol=tol, rtol=tol):
                return message
        elif isinstance(got, (int, float)) and abs(got - value) <= tol + tol * abs(value):
            return message
    return None


def _near(a, b, tol: float) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
        return a.shape == b.shape and torch.allclose(a, b, atol=tol, rtol=tol)
    return abs(a - b) <= tol + tol * abs(b)


def _diagnosed(got, want, variants, atol, rtol, what, match_tol=None) -> str | None:
    problem = close(got, want, atol=atol, rtol=rtol, what=what)
    if problem is None:
        return None
    if not isinstance(want, torch.Tensor) and isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    hint = _first_match(got, want, variants, match_tol if match_tol is not None else atol * 5)
    return f"{hint}. ({problem})" if hint else problem


# ---- 04.1 a memory's value through the unembedding ------------------------------------------------------------------

def value_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 1), []
    model = ctx.model()
    for _ in range(2):
        layer, index = _int(gen, 0, model.cfg.n_layers - 1), _int(gen, 0, model.cfg.d_mlp - 1)
        cases.append(Case(dict(model=model, layer=layer, index=index), label=f"{_name(model)} L{layer}M{index}"))
    for fixed in ({}, {"d_mlp": 9, "d_head": 4}):  # d_mlp = d_model = 9: W_out's rows and columns have one length
        rand = _random_gpt(ctx, gen, **fixed)
        layer, index = _int(gen, 0, rand.cfg.n_layers - 1), _int(gen, 0, rand.cfg.d_mlp - 1)
        cases.append(Case(dict(model=rand, layer=layer, index=index),
                          label=f"random GPT d_model {rand.cfg.d_model}, d_mlp {rand.cfg.d_mlp}, L{layer}M{index}"))
    return cases


def value_reference(model, layer, index):
    return model.blocks[layer].mlp.memories[index].value_logits()


def value_compare(got, want, case) -> str | None:
    model, layer, index = case.args["model"], case.args["layer"], case.args["index"]
    mlp = model.blocks[layer].mlp
    W_U = model.W_U.detach()
    variants = [
        (lambda: mlp.W_in[:, index].detach() @ W_U,
         "you read the memory's key (a column of W_in): its value is row `index` of W_out"),
        (lambda: mlp.W_out[:, index].detach() @ W_U if mlp.W_out.shape[0] == model.cfg.d_model else None,
         "you read a column of W_out: W_out is [d_mlp, d_model], so the value of memory i is the row W_out[i]"),
        (lambda: mlp.W_out[index].detach() @ model.W_E.detach().T,
         "you read the value through the embedding W_E: read it through the unembedding W_U"),
    ]
    return _diagnosed(got, want, variants, 1e-5, 1e-4, "your value logits")


# ---- 04.2 a neuron's activation, by hand --------------------------------------------------------------------------

def act_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 2), []
    model = ctx.model()
    facts = _facts(model, gen, 2)
    keep = lambda n: n.endswith(("hook_resid_pre", "hook_resid_mid"))  # noqa: E731 - not the MLP's own hooks
    for tokens, _, _, label in facts:
        layer, index = _int(gen, 0, model.cfg.n_layers - 1), _int(gen, 0, model.cfg.d_mlp - 1)
        _, cache = model.run_with_cache(tokens, names=keep)
        cases.append(Case(dict(model=model, cache=cache, layer=layer, index=index),
                          label=f"{_name(model)} L{layer}M{index} on {label}"))
    for fixed in ({}, {"d_mlp": 9, "d_head": 4}):
        rand = _random_gpt(ctx, gen, **fixed)
        tokens = torch.randint(0, rand.cfg.d_vocab, (2, _int(gen, 3, 9)), generator=gen)
        _, cache = rand.run_with_cache(tokens, names=keep)
        layer, index = _int(gen, 0, rand.cfg.n_layers - 1), _int(gen, 0, rand.cfg.d_mlp - 1)
        cases.append(Case(dict(model=rand, cache=cache, layer=layer, index=index),
                          label=f"random GPT d_model {rand.cfg.d_model}, d_mlp {rand.cfg.d_mlp}, L{layer}M{index}, "
                                f"tokens {list(tokens.shape)}"))
    return cases


def act_reference(model, cache, layer, index):
    """The model's own ln2 and MLP modules on the cached resid_mid; hook_post is what Memory.activation reads."""
    seen = {}

    def grab(post, hook):  # [batch, pos, d_mlp]
        seen["post"] = post

    block = model.blocks[layer]
    with torch.no_grad(), model.hooks([(f"blocks.{layer}.mlp.hook_post", grab)]):
        block.mlp(block.ln2(cache[f"blocks.{layer}.hook_resid_mid"]))
    return seen["post"][..., index]


def _ln_by_hand(x, ln):  # x: [..., d_model] in float64
    x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt() * ln.w.detach().double() + ln.b.detach().double()


ACTIVATIONS = {"tanh": lambda x: F.gelu(x, approximate="tanh"), "erf": F.gelu, "none": lambda x: x, "relu": F.relu}


def _act_variant(model, cache, layer, index, source="hook_resid_mid", ln=True, act="tanh", key="column", bias=True):
    """[batch, pos] in float64 with one classic mistake switched on (None when it cannot apply to this model)."""
    block = model.blocks[layer]
    x = cache[f"blocks.{layer}.{source}"].double()  # [batch, pos, d_model]
    x = _ln_by_hand(x, block.ln2) if ln else x
    W_in = block.mlp.W_in.detach().double()  # [d_model, d_mlp]
    if key == "row":
        if W_in.shape[0] != W_in.shape[1]:
            return None
        k = W_in[index]
    else:
        k = W_in[:, index]
    pre = x @ k + (block.mlp.b_in[index].detach().double() if bias else 0.0)
    return ACTIVATIONS[act](pre)


def act_compare(got, want, case) -> str | None:
    a = case.args
    v = lambda **kw: (lambda: _act_variant(a["model"], a["cache"], a["layer"], a["index"], **kw))  # noqa: E731
    variants = [
        (v(act="none"), "you forgot the GELU: the neuron's activation is GELU(pre), not pre itself"),
        (v(act="erf"), "you used the exact (erf) GELU: GPT-2's is the tanh approximation, "
                       "F.gelu(x, approximate='tanh')"),
        (v(act="relu"), "you used ReLU: GPT-2's MLPs use GELU (the tanh approximation)"),
        (v(key="row"), "you read a row of W_in: W_in is [d_model, d_mlp], so neuron i's key is the column W_in[:, i]"),
        (v(source="hook_resid_pre"), "you started from resid_pre: the MLP reads resid_mid (after this block's "
                                     "attention has written)"),
        (v(ln=False), "you skipped ln2: the MLP reads LayerNorm(resid_mid), with ln2's w and b"),
        (v(bias=False), "you left out the bias b_in[index]"),
    ]
    return _diagnosed(got, want, variants, 1e-5, 1e-4, "your activations")


# ---- 04.3 top-activating positions ----------------------------------------------------------------------------------

def _documents(model, gen, n: int, length: int) -> torch.Tensor:
    """[n, length] tokens: training documents with BOS first, cut to one length."""
    rows, tok = [], model.tokenizer
    for doc in corpus_for(model).training_documents(4 * n, seed=_int(gen, 0, 10_000)):
        ids = [tok.bos_id] + tok.encode(doc)  # long documents are cut below, not refused
        if len(ids) >= length:
            rows.append(torch.tensor(ids[:length]))
        if len(rows) == n:
            break
    return torch.stack(rows)


def top_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 3), []
    model = ctx.model()
    tokens = _documents(model, gen, 12, 16)
    layer, index, k = _int(gen, 0, model.cfg.n_layers - 1), _int(gen, 0, model.cfg.d_mlp - 1), _int(gen, 3, 8)
    cases.append(Case(dict(model=model, layer=layer, index=index, tokens=tokens, k=k), weight=1.5,
                      label=f"{_name(model)} L{layer}M{index}, 12 documents x 16 tokens, k={k}"))
    layer = _int(gen, 0, model.cfg.n_layers - 1)
    index = _bos_neuron(model, layer, tokens)
    cases.append(Case(dict(model=model, layer=layer, index=index, tokens=tokens, k=4), weight=1.5,
                      label=f"{_name(model)} L{layer}M{index} (fires most at the BOS), 12 documents x 16 tokens, k=4"))
    rand = _random_gpt(ctx, gen)
    tokens = torch.randint(0, rand.cfg.d_vocab, (5, 7), generator=gen)
    layer, index = _int(gen, 0, rand.cfg.n_layers - 1), _int(gen, 0, rand.cfg.d_mlp - 1)
    cases.append(Case(dict(model=rand, layer=layer, index=index, tokens=tokens, k=6),
                      label=f"random GPT L{layer}M{index}, tokens [5, 7], k=6"))
    return cases


def _bos_neuron(model, layer: int, tokens) -> int:
    """The neuron whose activation at position 0 most exceeds its best elsewhere: a list that forgets to leave
    out the BOS shows it."""
    with torch.no_grad():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the same float rounding in both processes: the index must be the same
        try:
            acts = _activations(model, layer, tokens)  # [n, pos, d_mlp]
        finally:
            torch.set_num_threads(threads)
    margin = acts[:, 0].min(0).values - acts[:, 1:].flatten(0, 1).max(0).values  # [d_mlp]
    return int(margin.argmax())


def _activations(model, layer, tokens, name="hook_post") -> torch.Tensor:  # [n, pos, d_mlp]
    hook = f"blocks.{layer}.mlp.{name}"
    with torch.no_grad():
        return model.run_with_cache(tokens, names=[hook])[1][hook]


def top_reference(model, layer, index, tokens, k):
    if model.tokenizer is not None:  # the toolkit: it skips position 0 where it holds the BOS
        found = top_activating((layer, index), model, tokens, k=k)
        return (torch.tensor([f.activation for f in found]), torch.tensor([f.prompt for f in found]),
                torch.tensor([f.position for f in found]))
    triples = [(_activations(model, layer, tokens)[b, p, index].item(), b, p)
               for b in range(tokens.shape[0]) for p in range(1, tokens.shape[1])]  # a plain loop, position 0 left out
    triples.sort(key=lambda t: -t[0])
    return tuple(torch.tensor(column) for column in zip(*triples[:k]))


def top_compare(got, want, case) -> str | None:
    a = case.args
    k = a["k"]
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        return "return a tuple of three tensors: (values [k], prompt indices [k], positions [k])"
    values, prompts, positions = got
    for t, what in ((values, "values"), (prompts, "prompt indices"), (positions, "positions")):
        problem = expect_shape(t, (k,), f"your {what}")
        if problem:
            return problem
    if prompts.is_floating_point() or positions.is_floating_point():
        return "your prompt indices and positions must be integer tensors (use // and %, not /)"
    acts = _activations(a["model"], a["layer"], a["tokens"])[..., a["index"]]  # [n, pos]
    pre = _activations(a["model"], a["layer"], a["tokens"], "hook_pre")[..., a["index"]]
    every = lambda x: x.flatten().topk(k).values  # noqa: E731
    variants = [
        (lambda: every(acts), "your list includes position 0: skip the BOS position, where every prompt has the "
                              "same activation"),
        (lambda: (-acts[:, 1:]).flatten().topk(k).values.neg(), "you returned the lowest activations: take the "
                                                                "highest (largest first)"),
        (lambda: pre[:, 1:].flatten().topk(k).values, "you ranked hook_pre, before the GELU: rank the activation, "
                                                      "hook_post"),
    ]
    problem = _diagnosed(values, want[0], variants, 1e-4, 1e-4, "your values")
    if problem:
        return problem
    n, n_pos = acts.shape
    in_range = bool(((prompts >= 0) & (prompts < n) & (positions >= 0) & (positions < n_pos - 1)).all())
    pointed = acts[prompts, positions] if in_range else None
    if in_range and not torch.allclose(pointed.double(), values.detach().double(), atol=1e-4, rtol=1e-4) \
            and torch.allclose(acts[prompts, positions + 1].double(), values.detach().double(), atol=1e-4, rtol=1e-4):
        return ("your values are right and each position is one too small: you ranked acts[:, 1:] (BOS left out), "
                "whose column j is position j + 1 of tokens; add 1 to the positions you unravel from it")
    if bool((positions == 0).any()):
        return "one of your positions is 0, the BOS: leave position 0 out"
    if bool(((prompts < 0) | (prompts >= n) | (positions < 0) | (positions >= n_pos)).any()):
        return f"your indices point outside tokens [{n}, {n_pos}]: a flat index i is prompt i // pos, position i % pos"
    pointed = acts[prompts, positions]
    if not torch.allclose(pointed.double(), values.detach().double(), atol=1e-4, rtol=1e-4):
        return ("your values are right, but your (prompt, position) pairs do not point at them: a flat index i over "
                "[n, pos] is prompt i // pos, position i % pos")
    if len({(int(b), int(p)) for b, p in zip(prompts, positions)}) < k:
        return "your (prompt, position) pairs repeat: each place should appear once"
    return None


# ---- 04.4 noising the subject -------------------------------------------------------------------------------------

def noise_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 4)
    return [Case(dict(model=m, tokens=t, subject_positions=sp, answer=ans, noise=nz), label=label)
            for m, t, sp, ans, nz, label in _trace_inputs(ctx, gen, 2)]


def _noised_forward(model, tokens, positions, answer, noise, read="prob", last=True) -> torch.Tensor:
    """[samples] written out block by block, the noise added to the token embeddings themselves (no hooks)."""
    with torch.no_grad():
        batch = tokens.expand(noise.shape[0], -1)  # [samples, pos]
        embed = model.embed(batch).clone()  # [samples, pos, d_model]
        embed[:, positions] = embed[:, positions] + noise
        resid = embed + model.pos_embed(batch)
        for block in model.blocks:
            resid = block(resid)
        logits = model.unembed(model.ln_final(resid))[:, -1 if last else 0]  # [samples, d_vocab]
    return {"prob": logits.softmax(-1), "logit": logits, "logprob": logits.log_softmax(-1)}[read][:, answer]


def noise_reference(model, tokens, subject_positions, answer, noise):
    return _noised_forward(model, tokens, subject_positions, answer, noise)


def noise_compare(got, want, case) -> str | None:
    a = case.args
    model, tokens, sp, answer, noise = (a[k] for k in ("model", "tokens", "subject_positions", "answer", "noise"))
    problem = expect_shape(got, want.shape, "your probabilities")
    if problem:
        return problem + " ([samples]: one P(answer) per noise sample)"
    n_pos = tokens.shape[1]
    shifted = [min(p + 1, n_pos - 1) for p in sp]
    variants = [
        (lambda: _noised_forward(model, tokens, shifted, answer, noise) if shifted != sp else None,
         "you noised the wrong tokens (one after the subject): add the noise at subject_positions"),
        (lambda: _noised_forward(model, tokens, [p - 1 for p in sp], answer, noise),
         "you noised the wrong tokens (one before the subject): add the noise at subject_positions"),
        (lambda: _noised_forward(model, tokens, sp, answer, noise, read="logit"),
         "you returned logits: return probabilities, the softmax over the vocabulary"),
        (lambda: _noised_forward(model, tokens, sp, answer, noise, read="logprob"),
         "you returned log-probabilities: return probabilities"),
        (lambda: _noised_forward(model, tokens, sp, answer, torch.zeros_like(noise)),
         "your runs are not noised: add noise[s] to the subject's token embeddings (hook_embed) in run s"),
        (lambda: _noised_forward(model, tokens, sp, answer, noise, last=False),
         "you read position 0: read P(answer) at the last position"),
    ]
    return _diagnosed(got, want, variants, 1e-5, 1e-4, "your probabilities")


# ---- 04.5 restoring one state ---------------------------------------------------------------------------------------

def restore_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 5), []
    items = _trace_inputs(ctx, gen, 2)
    for i, (m, t, sp, ans, nz, label) in enumerate(items):
        n_layers, last = m.cfg.n_layers, t.shape[1] - 1
        # layer 0 at the subject, where the token's identity comes back (story-4l: through layer 0's attention, whose
        # L0H2 attends to its own position; the MLP restores little), and the stream there
        picks = [("mlp", 0, sp[-1]), ("attn", 0, sp[-1]), ("resid", 0, sp[-1])] if i == 0 else []
        picks.append((["resid", "mlp", "attn"][_int(gen, 0, 2)], _int(gen, 0, n_layers - 1), sp[-1]))
        if i == len(items) - 1:
            picks.append(("resid", _int(gen, 0, n_layers - 2), _int(gen, sp[-1], last)))
        for kind, layer, pos in picks:
            cases.append(Case(dict(model=m, tokens=t, subject_positions=sp, answer=ans, noise=nz, kind=kind,
                                   layer=layer, pos=pos), label=f"{label}: restore {kind} of layer {layer} at {pos}"))
    return cases


def restore_reference(model, tokens, subject_positions, answer, noise, kind, layer, pos):
    return _trace(model, tokens, subject_positions, answer, noise, kind).scores[kind][layer, pos].item()


def _restore_variant(model, tokens, sp, answer, noise, hook_names, pos, source="clean", noised=True) -> float:
    """Mean P(answer) of the noised runs with the activations at hook_names restored at pos (slice: all)."""
    def add_noise(embed, hook):
        embed = embed.clone()
        embed[:, sp] = embed[:, sp] + noise
        return embed

    batch = tokens.expand(noise.shape[0], -1)
    noise_hooks = [("hook_embed", add_noise)] if noised else []
    with torch.no_grad():
        if source == "clean":
            _, cache = model.run_with_cache(tokens, names=hook_names)
            saved = {n: cache[n][0] for n in hook_names}  # [pos, d_model]
        else:  # the noised runs' own activations
            with model.hooks(noise_hooks):
                _, cache = model.run_with_cache(batch, names=hook_names)
            saved = {n: cache[n] for n in hook_names}

        def restore(act, hook):
            act = act.clone()
            act[:, pos] = saved[hook.name][..., pos, :] if source == "clean" else saved[hook.name][:, pos]
            return act

        with model.hooks(noise_hooks + [(n, restore) for n in hook_names]):
            logits = model(batch)
    return logits[:, -1].softmax(-1)[:, answer].mean().item()


def restore_compare(got, want, case) -> str | None:
    a = case.args
    model, tokens, sp, answer, noise = (a[k] for k in ("model", "tokens", "subject_positions", "answer", "noise"))
    kind, layer, pos = a["kind"], a["layer"], a["pos"]
    n_layers = model.cfg.n_layers
    name = lambda l, k=kind: f"blocks.{l}.{KIND_HOOKS[k]}"  # noqa: E731
    run = lambda names, p=pos, **kw: _restore_variant(model, tokens, sp, answer, noise, names, p, **kw)  # noqa: E731
    variants = [
        (lambda: run([]), "your result equals the noised runs with nothing restored: restore the CLEAN run's state "
                          "(cache it from a run without noise), at blocks.{layer}.<hook> and position pos"),
        (lambda: run([name(layer)], source="noised"), "you restored the noised run's own state: cache the state from "
                                                      "a CLEAN run (no noise) and paste that in"),

        (lambda: run([name(layer + 1)]) if layer + 1 < n_layers else None,
         "you restored the wrong layer (layer + 1): restore blocks.{layer}.<hook>"),
        (lambda: run([name(layer - 1)]) if layer > 0 else None,
         "you restored the wrong layer (layer - 1; resid_pre of a block is resid_post of the one before): restore "
         "blocks.{layer}.hook_resid_post for 'resid'"),
        (lambda: run([f"blocks.{layer}.hook_resid_pre"]) if kind == "resid" else None,
         "you restored hook_resid_pre: kind 'resid' is the output of layer l, blocks.{l}.hook_resid_post"),
        (lambda: run([name(layer)], p=slice(None)), "you restored every position: restore position pos only"),
        (lambda: run([], noised=False), "your result equals the clean run's: are your runs noised? Add the noise "
                                        "to the subject's embeddings, then restore one state at one position"),
    ]
    return _diagnosed(got, want, variants, 1e-4, 1e-3, "your restored P(answer)", match_tol=2e-4)


# ---- 04.6 the causal trace grid -------------------------------------------------------------------------------------

def grid_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 6), []
    items = _trace_inputs(ctx, gen, 1)
    (m, t, sp, ans, nz, label), (rm, rt, rsp, rans, rnz, rlabel) = items
    for kind, window, w in [("mlp", 1, 1.5), ("attn", 3, 1.0), ("resid", 3, 1.0)]:
        cases.append(Case(dict(model=m, tokens=t, subject_positions=sp, answer=ans, noise=nz, kind=kind,
                               window=window), weight=w, label=f"{label}: {kind}, window {window}"))
    for kind, window in [("resid", 1), ("mlp", 2)]:
        cases.append(Case(dict(model=rm, tokens=rt, subject_positions=rsp, answer=rans, noise=rnz, kind=kind,
                               window=window), label=f"{rlabel}: {kind}, window {window}"))
    return cases


def _windowed_resid(model, tokens, sp, answer, noise, window: int) -> torch.Tensor | None:
    """[n_layers, pos]: the resid grid with a window of layers restored (the mistake: resid is never windowed)."""
    n_layers, n_pos = model.cfg.n_layers, tokens.shape[1]
    if window == 1:
        return None
    out = torch.zeros(n_layers, n_pos)
    for layer in range(n_layers):
        names = [f"blocks.{l}.hook_resid_post" for l in
                 range(max(0, layer - window // 2), min(n_layers, layer + (window + 1) // 2))]
        for pos in range(n_pos):
            out[layer, pos] = _restore_variant(model, tokens, sp, answer, noise, names, pos)
    return out


def grid_reference(model, tokens, subject_positions, answer, noise, kind, window):
    return _trace(model, tokens, subject_positions, answer, noise, kind, window).scores[kind]


def grid_compare(got, want, case) -> str | None:
    a = case.args
    model, tokens, sp, answer, noise, kind = (a[k] for k in ("model", "tokens", "subject_positions", "answer",
                                                            "noise", "kind"))
    if isinstance(got, torch.Tensor) and got.shape == want.shape[::-1] and want.shape[0] != want.shape[1]:
        return f"your grid has shape {list(got.shape)}, [pos, n_layers]: it is transposed; return [n_layers, pos]"
    problem = expect_shape(got, want.shape, "your grid")
    if problem:
        return problem + " ([n_layers, pos])"
    trace = lambda w: _trace(model, tokens, sp, answer, noise, kind, w)  # noqa: E731
    variants = [
        (lambda: _windowed_resid(model, tokens, sp, answer, noise, a["window"]) if kind == "resid" else None,
         "you restored a window of layers for 'resid': the residual stream after layer l already holds every "
         "earlier layer's output, so ROME restores it one layer at a time; windows are for 'mlp' and 'attn' only"),
        (lambda: want - trace(a["window"]).corrupt_prob, "you returned the indirect effect, P(answer) minus the "
                                                         "corrupted P(answer): return the restored P(answer) itself"),
        (lambda: trace(1).scores[kind] if a["window"] != 1 else None,
         "your grid ignores the window: restore layers max(0, l - window // 2) up to l + ceil(window / 2) "
         "(exclusive) together"),
        (lambda: torch.cat([want[1:], want[-1:]]), "your layer l looks like the reference's layer l + 1: restore "
                                                   "the state of layer l itself"),
    ]
    return _diagnosed(got, want, variants, 1e-4, 1e-3, "your grid", match_tol=2e-4)


# ---- 04.7 the fraction recovered -----------------------------------------------------------------------------------

def fraction_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 7), []
    (m, t, sp, ans, nz, label), (rm, rt, rsp, rans, rnz, rlabel) = _trace_inputs(ctx, gen, 1)
    cases.append(Case(dict(model=m, tokens=t, noised_positions=sp, answer=ans, noise=nz, kind="mlp", window=1),
                      weight=1.5, label=f"{label}: mlp"))
    ds = ioi_dataset(m, n=4, seed=_int(gen, 0, 10_000))
    i = _int(gen, 0, len(ds) - 1)
    io_pos = [int(ds.io_pos[i])]
    cases.append(Case(dict(model=m, tokens=ds.tokens[i:i + 1], noised_positions=io_pos, answer=int(ds.io_tokens[i]),
                           noise=_noise(m, 1, _int(gen, 0, 10_000)), kind="mlp", window=1),
                      label=f"{_name(m)} IOI prompt {ds.prompts[i]!r}, the IO's name (position {io_pos[0]}) noised: "
                            "mlp"))
    cases.append(Case(dict(model=rm, tokens=rt, noised_positions=rsp, answer=rans, noise=rnz, kind="attn", window=2),
                      label=f"{rlabel}: attn, window 2"))
    return cases


def fraction_reference(model, tokens, noised_positions, answer, noise, kind, window):
    trace = _trace(model, tokens, noised_positions, answer, noise, kind, window)
    return (trace.scores[kind] - trace.corrupt_prob) / (trace.clean_prob - trace.corrupt_prob)


def fraction_compare(got, want, case) -> str | None:
    a = case.args
    problem = expect_shape(got, want.shape, "your fractions")
    if problem:
        return problem + " ([n_layers, pos], like your 04.6's grid)"
    trace = _trace(a["model"], a["tokens"], a["noised_positions"], a["answer"], a["noise"], a["kind"], a["window"])
    grid, clean, noised = trace.scores[a["kind"]], trace.clean_prob, trace.corrupt_prob
    first = _noised_forward(a["model"], a["tokens"], a["noised_positions"], a["answer"], a["noise"])[0].item()
    variants = [
        (lambda: grid / clean, "you divided P_restored by P_clean: subtract P_noised first, from the restored P and "
                               "from P_clean, so that 0 means 'nothing recovered' and 1 'all of it'"),
        (lambda: grid - noised, "you subtracted P_noised but did not divide by P_clean - P_noised: the fraction is "
                                "relative to what the noise took away"),
        (lambda: (grid - noised) / clean, "you divided by P_clean: divide by what the noise took away, "
                                          "P_clean - P_noised"),
        (lambda: grid, "you returned the restored P itself (your 04.6): normalise it, (P - P_noised) / (P_clean - "
                       "P_noised)"),
        (lambda: (grid - first) / (clean - first), "your P_noised is one noised run's: take the mean over all the "
                                                   "samples (your 04.4 returns one P per sample)"),
        (lambda: (grid - clean) / (clean - noised), "you subtracted P_clean: the fraction is (P_restored - "
                                                    "P_noised) / (P_clean - P_noised)"),
    ]
    return _diagnosed(got, want, variants, 2e-3, 2e-3, "your fractions", match_tol=5e-3)


# ---- 04.8 the neurons the noise moves -------------------------------------------------------------------------------

def neuron_cases(ctx) -> list[Case]:
    gen, cases = _gen(ctx, 8), []
    items = _trace_inputs(ctx, gen, 2)
    for i, (m, t, sp, ans, nz, label) in enumerate(items):
        layer = _int(gen, 0, m.cfg.n_layers - 1)
        pos = [sp[-1], t.shape[1] - 1][i % 2]  # the subject's last token, or the last token
        k = _int(gen, 2, 6)
        cases.append(Case(dict(model=m, tokens=t, noised_positions=sp, noise=nz, layer=layer, pos=pos, k=k),
                          label=f"{label}: MLP {layer} at position {pos}, k={k}"))
    return cases


def _neuron_acts(model, tokens, positions, noise, layer, name="hook_post"):
    """(clean [pos, d_mlp], noised [samples, pos, d_mlp]) activations of MLP `layer`."""
    hook = f"blocks.{layer}.mlp.{name}"

    def add_noise(embed, hook):
        embed = embed.clone()
        embed[:, positions] = embed[:, positions] + noise
        return embed

    with torch.no_grad():
        clean = model.run_with_cache(tokens, names=[hook])[1][hook][0]
        with model.hooks([("hook_embed", add_noise)]):
            noised = model.run_with_cache(tokens.expand(noise.shape[0], -1), names=[hook])[1][hook]
    return clean, noised


def neuron_reference(model, tokens, noised_positions, noise, layer, pos, k):
    clean, noised = _neuron_acts(model, tokens, noised_positions, noise, layer)
    change = clean[pos] - noised[:, pos].mean(0)  # [d_mlp]
    order = sorted(range(len(change)), key=lambda i: -abs(change[i].item()))[:k]  # a plain sort
    indices = torch.tensor(order)
    return indices, clean[pos, indices], noised[:, pos].mean(0)[indices]


def neuron_compare(got, want, case) -> str | None:
    a = case.args
    k, pos = a["k"], a["pos"]
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        return "return a tuple of three tensors: (indices [k], clean activations [k], mean noised activations [k])"
    indices, clean_acts, noised_acts = got
    for t, what in ((indices, "indices"), (clean_acts, "clean activations"), (noised_acts, "noised activations")):
        problem = expect_shape(t, (k,), f"your {what}")
        if problem:
            return problem
    if indices.is_floating_point():
        return "your indices must be an integer tensor (topk(...).indices)"
    clean, noised = _neuron_acts(a["model"], a["tokens"], a["noised_positions"], a["noise"], a["layer"])
    n_pos = clean.shape[0]

    def ranked(change):
        return change.abs().topk(k).indices
    variants = [
        (lambda: (clean[pos] - noised[:, pos].mean(0)).topk(k).indices,
         "you ranked the signed change: rank by its absolute value, |clean - noised mean| (a neuron the noise "
         "switches ON moves as much as one it switches off)"),
        (lambda: ranked(clean[pos] - noised[:, -1].mean(0)) if pos % n_pos != n_pos - 1 else
         ranked(clean[pos] - noised[:, a["noised_positions"][-1]].mean(0)),
         "you read the clean and the noised activations at different positions: read both at `pos`"),
        (lambda: ranked(clean[-1] - noised[:, pos].mean(0)) if pos % n_pos != n_pos - 1 else None,
         "you read the clean activations at the last token and the noised ones at `pos`: read both at `pos`"),
        (lambda: ranked(clean[pos] - noised[0, pos]),
         "you compared with one noised run: take the mean over the noised runs (dim 0)"),
        (lambda: ranked(_neuron_acts(a["model"], a["tokens"], a["noised_positions"], a["noise"], a["layer"],
                                     "hook_pre")[0][pos]
                        - _neuron_acts(a["model"], a["tokens"], a["noised_positions"], a["noise"], a["layer"],
                                       "hook_pre")[1][:, pos].mean(0)),
         "you read hook_pre, before the GELU: the activation is hook_post"),
    ]
    if not torch.equal(indices.long(), want[0]):
        for make, message in variants:
            value = make()
            if value is not None and not torch.equal(value, want[0]) and torch.equal(indices.long(), value):
                return message
        return (f"your neurons {indices.tolist()} are not the {k} whose activation at position {pos} changes most "
                "(|clean - mean noised|, largest first)")
    if close(clean_acts, want[1], atol=1e-4, rtol=1e-4) is not None:
        return ("your neurons are right, but your clean activations are not theirs at `pos` (clean run, "
                "hook_post[0, pos, indices])")
    if close(noised_acts, want[2], atol=1e-4, rtol=1e-4) is not None:
        return ("your neurons are right, but your noised activations are not their mean over the noised runs at "
                "`pos` (hook_post[:, pos, indices].mean(0))")
    return None


EXERCISES = [
    Exercise(id="04.1", function="memory_value_logits", title="A memory's value through the unembedding",
             cases=value_cases, reference=value_reference, compare=value_compare,
             library=("minimech.analysis.memories.memory_logits",)),
    Exercise(id="04.2", function="neuron_activation", title="A neuron's activation by hand", cases=act_cases,
             reference=act_reference, compare=act_compare),
    Exercise(id="04.3", function="top_activating_positions", title="Top-activating positions", cases=top_cases,
             reference=top_reference, compare=top_compare,
             library=("minimech.analysis.memories.top_activating",)),
    Exercise(id="04.4", function="noised_answer_probs", title="Noising the subject", cases=noise_cases,
             reference=noise_reference, compare=noise_compare),
    Exercise(id="04.5", function="restored_answer_prob", title="Restoring one state", cases=restore_cases,
             reference=restore_reference, compare=restore_compare,
             library=("minimech.analysis.tracing.causal_trace",)),
    Exercise(id="04.6", function="causal_trace_grid", title="The causal trace", cases=grid_cases,
             reference=grid_reference, compare=grid_compare,
             library=("minimech.analysis.tracing.causal_trace",)),
    Exercise(id="04.7", function="recovered_fraction_grid", title="The fraction recovered", cases=fraction_cases,
             reference=fraction_reference, compare=fraction_compare, uses=("04.4", "04.6"),
             library=("minimech.analysis.tracing.causal_trace",)),
    Exercise(id="04.8", function="noise_sensitive_neurons", title="The neurons the noise moves", cases=neuron_cases,
             reference=neuron_reference, compare=neuron_compare),
]
