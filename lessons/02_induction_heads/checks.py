"""Checks for lesson 02 (induction heads).

Ground truth is independent of solutions.py: float64 log-sum-exp loops for the loss, F.cross_entropy for the
in-context losses, loops over (query, key) pairs of the cached attention patterns for the detectors, minimech's
analysis.circuits.composition_scores (or, where it is missing, a dense float64 formula) for K-composition, an
ablation done at hook_attn_out (subtracting the head's write and adding its mean write) instead of at hook_z, and a
plain loop for the phase change. Inputs: the lesson's model and small random attention-only models with odd sizes,
on repeated random tokens drawn from the context's seed. When a result is wrong, the check recomputes the classic
mistakes and names the one the learner's output matches; the reference's values are never shown.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from minimech.grading import Case, Exercise, close, expect_shape


def _gen(ctx, salt: int) -> torch.Generator:  # one stream per exercise: the order the grader asks in is irrelevant
    return torch.Generator().manual_seed(ctx.seed * 7919 + salt)


def _int(gen, lo: int, hi: int) -> int:  # uniform in [lo, hi]
    return int(torch.randint(lo, hi + 1, (), generator=gen))


def _random_model(ctx, gen, n_layers: int = 2):
    """A random attention-only model with sizes that all differ (head 3, d_head 7, d_model 20, ...)."""
    return ctx.random_model(seed=_int(gen, 0, 10**6), n_layers=n_layers, n_heads=3, d_head=7, d_model=20, n_ctx=40,
                            d_vocab=53, attn_only=True)


def _repeated_tokens(model, gen, batch: int, seq_len: int) -> torch.Tensor:
    """[batch, 1 + 2 seq_len]: BOS, then seq_len random tokens, then the same tokens again."""
    tok = model.tokenizer
    bos = tok.bos_id if tok is not None else 0
    special = {bos} | ({tok.unk_id} if tok is not None and tok.unk_id is not None else set())
    vocab = torch.arange(model.cfg.d_vocab)
    pool = vocab[~torch.isin(vocab, torch.tensor(sorted(special)))]
    first = pool[torch.randint(len(pool), (batch, seq_len), generator=gen)]
    return torch.cat([torch.full((batch, 1), bos), first, first], dim=1)


def _token_cases(ctx, salt: int) -> list[Case]:
    """Repeated random tokens on the lesson's model (two sizes) and on two random models."""
    gen = _gen(ctx, salt)
    cases = []
    model = ctx.model()
    for batch, seq_len in [(4, _int(gen, 10, 20)), (2, _int(gen, 5, 9))]:
        tokens = _repeated_tokens(model, gen, batch, seq_len)
        cases.append(Case({"model": model, "tokens": tokens, "seq_len": seq_len},
                          label=f"{ctx.model_name}, batch={batch}, seq_len={seq_len}"))
    for n_layers in (2, 3):
        random_model = _random_model(ctx, gen, n_layers)
        seq_len = _int(gen, 6, 15)
        tokens = _repeated_tokens(random_model, gen, 3, seq_len)
        cases.append(Case({"model": random_model, "tokens": tokens, "seq_len": seq_len},
                          label=f"random {n_layers}-layer model, batch=3, seq_len={seq_len}"))
    return cases


def _matches(got, candidate: torch.Tensor, atol: float = 1e-4) -> bool:
    return (isinstance(got, torch.Tensor) and got.shape == candidate.shape
            and torch.allclose(got.double(), candidate.double(), atol=atol, rtol=1e-4))


def _show(t, k: int = 4) -> str:
    values = [round(v, 4) for v in torch.as_tensor(t).detach().flatten()[:k].tolist()]
    return f"{values}{' ...' if torch.as_tensor(t).numel() > k else ''}"


# ---- 02.1 the probe -------------------------------------------------------------------------------------------------

def probe_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 11)
    cases = []
    for pool_size, bos_id, seq_len, batch in [(50, 0, 7, 4), (1000, 999, 20, 16), (3, 7, 12, 5), (40, 40, 1, 3)]:
        offset = _int(gen, 1, 100)
        pool = torch.arange(offset, offset + pool_size)  # ids that are not 0..size-1: an index is not an id
        pool = pool[pool != bos_id]
        cases.append(Case({"token_pool": pool, "bos_id": bos_id, "seq_len": seq_len, "batch": batch,
                           "gen": torch.Generator().manual_seed(_int(gen, 0, 10**6))},
                          label=f"pool of {len(pool)} ids from {offset}, BOS {bos_id}, seq_len={seq_len}, "
                                f"batch={batch}"))
    return cases


def probe_reference(token_pool, bos_id, seq_len, batch, gen):
    """Only the shape is fixed (the draws are the learner's); the compare checks the properties."""
    return torch.tensor([batch, 1 + 2 * seq_len])


def probe_compare(got, want, case):
    a = case.args
    batch, n, bos, pool = a["batch"], a["seq_len"], a["bos_id"], a["token_pool"]
    if not isinstance(got, torch.Tensor):
        return f"return a tensor of token ids, got {type(got).__name__}"
    if got.shape == (batch, 2 * n):
        return f"your tokens have shape {list(got.shape)}: BOS is missing at position 0 ([batch, 1 + 2 seq_len])"
    problem = expect_shape(got, tuple(want.tolist()), "your tokens [batch, 1 + 2 seq_len]")
    if problem:
        return problem
    if got.is_floating_point():
        return f"your tokens have dtype {got.dtype}: token ids are integers (torch.randint gives int64)"
    if not (got[:, 0] == bos).all():
        return f"position 0 must be bos_id = {bos} in every row; yours starts {got[:, 0].tolist()[:4]}"
    first, second = got[:, 1:n + 1], got[:, n + 1:]
    if not torch.isin(first, pool).all():
        if (first >= 0).all() and (first < len(pool)).all():
            return ("your tokens are indices into token_pool (0 .. len - 1), not the ids it holds: index the pool "
                    "with them, token_pool[torch.randint(len(token_pool), ...)]")
        return "your tokens include ids that are not in token_pool"
    if not torch.equal(first, second):
        if n > 1 and torch.equal(first[:, 1:], second[:, :-1]):
            return "your second copy is shifted by one position: positions n+1..2n repeat positions 1..n exactly"
        return "your second half is not a copy of the first: draw r_1..r_n once and repeat the same tensor"
    if batch > 1 and n >= 3 and len(pool) >= 10 and (first == first[:1]).all():
        return "every row holds the same sequence: draw a new sequence for every row, shape [batch, seq_len]"
    if n * batch >= 100 and len(pool) >= 10 and first.unique().numel() < min(len(pool), n * batch) // 4:
        return f"your {n * batch} draws use only {first.unique().numel()} distinct ids: draw uniformly from the pool"
    return None


# ---- 02.2 per-token loss --------------------------------------------------------------------------------------------

def loss_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 1)
    cases = []
    for batch, pos, d_vocab in [(2, 7, 11), (3, 5, 40), (1, 12, 6)]:
        logits = 3 * torch.randn(batch, pos, d_vocab, generator=gen)
        tokens = torch.randint(0, d_vocab, (batch, pos), generator=gen)
        cases.append(Case({"logits": logits, "tokens": tokens}, label=f"batch={batch}, pos={pos}, d_vocab={d_vocab}"))
    return cases


def loss_reference(logits, tokens):
    batch, pos, _ = logits.shape
    out = torch.zeros(batch, pos - 1, dtype=torch.float64)
    for b in range(batch):
        for i in range(pos - 1):  # position i predicts the token at i + 1
            row = [float(v) for v in logits[b, i]]
            top = max(row)
            log_sum = top + math.log(sum(math.exp(v - top) for v in row))
            out[b, i] = log_sum - row[int(tokens[b, i + 1])]
    return out.float()


def loss_compare(got, want, case):
    logits, tokens = case.args["logits"].double(), case.args["tokens"]
    batch, pos, _ = logits.shape
    if isinstance(got, torch.Tensor) and got.shape == (batch, pos):
        return (f"your loss has shape {list(got.shape)}: the last position has no next token to predict, so there "
                f"are pos - 1 = {pos - 1} losses per sequence (don't roll or pad the targets)")
    problem = close(got, want, atol=1e-4, rtol=1e-4, what="your per-token loss")
    if problem is None:
        return None
    if isinstance(got, torch.Tensor) and got.is_floating_point() and (got < -1e-6).any():
        return f"your loss has negative entries ({got.min().item():.4g}): it is minus the log-probability"
    unshifted = -logits[:, 1:].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
    if _matches(got, unshifted):
        return ("your loss is not shifted: position i's logits predict the token at i + 1, so pair logits[:, :-1] "
                "with tokens[:, 1:]")
    wrong_axis = -logits[:, :-1].log_softmax(0).gather(-1, tokens[:, 1:, None])[..., 0]
    wrong_axis_pos = -logits[:, :-1].log_softmax(1).gather(-1, tokens[:, 1:, None])[..., 0]
    if _matches(got, wrong_axis) or _matches(got, wrong_axis_pos):
        return "your log-softmax runs over the wrong axis: normalise over the vocabulary (dim=-1)"
    return problem


# ---- 02.3 in-context losses -----------------------------------------------------------------------------------------

@torch.no_grad()
def _losses(model, tokens) -> torch.Tensor:  # [batch, pos - 1], by torch's cross-entropy in float64
    logits = model(tokens).double()
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none").view(
        tokens.shape[0], -1)


def icl_cases(ctx) -> list[Case]:
    return _token_cases(ctx, 2)


def icl_reference(model, tokens, seq_len):
    losses = _losses(model, tokens)  # [batch, 2n]
    first = [losses[:, i - 1] for i in range(2, seq_len + 1)]  # the losses of predicting tokens 2..n
    repeated = [losses[:, i - 1] for i in range(seq_len + 2, 2 * seq_len + 1)]  # tokens n+2..2n
    return torch.tensor([torch.stack(first).mean().item(), torch.stack(repeated).mean().item()])


def _icl_message(got, want, case, what: str = "your [first, repeated] losses"):
    problem = expect_shape(got, (2,), what)
    if problem:
        return problem
    problem = close(got, want, atol=1e-4, rtol=1e-4, what=what)
    if problem is None:
        return None
    losses, n = _losses(case.args["model"], case.args["tokens"]), case.args["seq_len"]
    g = got.double()
    for first, note in [(losses[:, :n].mean(), "predicting r_1 (from BOS), which no context can help with"),
                        (losses[:, 1:n + 1].mean(), "predicting the first token of the repeat, r_1 at n + 1")]:
        if abs(g[0] - first) < 1e-4:
            return f"your first-half loss {g[0]:.4f} includes {note}: average the predictions of tokens 2..n"
    for repeated, note in [(losses[:, n:].mean(), "predicting r_1 at position n + 1, which nothing in context "
                                                  "predicts"),
                           (losses[:, n + 1:2 * n - 1].mean(), "too few positions: the last prediction is of r_n")]:
        if abs(g[1] - repeated) < 1e-4:
            return f"your repeated-half loss {g[1]:.4f} is off by one position ({note}); average tokens n+2..2n"
    return problem


def icl_compare(got, want, case):
    return _icl_message(got, want, case)


# ---- 02.4 detector scores -------------------------------------------------------------------------------------------

def detector_cases(ctx) -> list[Case]:
    return _token_cases(ctx, 3)


@torch.no_grad()
def _patterns(model, tokens) -> torch.Tensor:  # [layer, batch, head, q, k]
    _, cache = model.run_with_cache(tokens, names=lambda n: n.endswith("hook_pattern"))
    return torch.stack([cache[f"blocks.{l}.attn.hook_pattern"] for l in range(model.cfg.n_layers)]).double()


def detector_reference(model, tokens, seq_len):
    patterns = _patterns(model, tokens)
    n = seq_len
    previous = torch.stack([patterns[..., q, q - 1] for q in range(2, 2 * n + 1)], -1)  # [layer, batch, head, q]
    induction = torch.stack([patterns[..., q, q - n + 1] for q in range(n + 1, 2 * n + 1)], -1)
    return {"previous_token": previous.mean((1, 3)).float(), "induction": induction.mean((1, 3)).float()}


def detector_compare(got, want, case):
    if not isinstance(got, dict) or set(got) != {"previous_token", "induction"}:
        return "return a dict with keys 'previous_token' and 'induction'"
    cfg = case.args["model"].cfg
    for key in got:
        problem = expect_shape(got[key], (cfg.n_layers, cfg.n_heads), f"your {key} scores")
        if problem:
            return problem
    patterns, n = _patterns(case.args["model"], case.args["tokens"]), case.args["seq_len"]
    transposed = patterns.transpose(-1, -2)
    score = lambda p, queries, offset: torch.stack([p[..., q, q - offset] for q in queries], -1).mean((1, 3))
    problem = close(got["previous_token"], want["previous_token"], atol=1e-4, what="your previous_token scores")
    if problem:
        g = got["previous_token"]
        if _matches(g, score(transposed, range(2, 2 * n + 1), 1)) or _matches(g, torch.zeros_like(g), 1e-6):
            return ("your previous_token scores read pattern[k, q]: hook_pattern is [batch, head, q_pos, k_pos], "
                    "query first")
        if _matches(g, score(patterns, range(1, 2 * n + 1), 1)):
            return ("your previous_token scores include query 1, whose previous token is BOS (where heads rest): "
                    "average over queries 2..2n")
        return _query_range(g, patterns, n, 1, (2, 2 * n), "previous_token", "2..2n") or problem
    problem = close(got["induction"], want["induction"], atol=1e-4, what="your induction scores")
    if problem:
        g = got["induction"]
        queries = range(n + 1, 2 * n + 1)
        if _matches(g, score(patterns, queries, n)):
            return ("your induction scores measure attention to the token itself (key q - n, its earlier copy): an "
                    "induction head attends to the token AFTER the earlier copy, key q - n + 1")
        if _matches(g, score(patterns, queries, n - 2)):
            return "your induction scores are off by one: the target key is q - n + 1, the token after the earlier copy"
        if _matches(g, score(transposed, queries, n - 1)) or _matches(g, torch.zeros_like(g), 1e-6):
            return "your induction scores read pattern[k, q]: hook_pattern is [batch, head, q_pos, k_pos], query first"
        return _query_range(g, patterns, n, n - 1, (n + 1, 2 * n), "induction", "n+1..2n") or problem
    return None


def _query_range(got, patterns, n: int, offset: int, right: tuple, key: str, right_text: str) -> "str | None":
    """Which query range, off by one at either end, the learner averaged over (target key q - offset)."""
    pos = patterns.shape[-1]
    lo, hi = right
    name = lambda q: {0: "0", 1: "1", n - 1: "n-1", n: "n", n + 1: "n+1", n + 2: "n+2", 2 * n - 1: "2n-1",
                      2 * n: "2n"}.get(q, str(q))
    for start in (lo - 1, lo, lo + 1):
        for end in (hi - 1, hi, hi + 1):
            if (start, end) == right or start - offset < 0 or end >= pos or start > end:
                continue
            candidate = torch.stack([patterns[..., q, q - offset] for q in range(start, end + 1)], -1).mean((1, 3))
            if _matches(got, candidate):
                return (f"your {key} scores average queries {name(start)}..{name(end)}; the queries with a target are "
                        f"{right_text} (n = seq_len; position 0 is BOS): an off-by-one in the query range")
    return None


# ---- 02.5 K-composition ---------------------------------------------------------------------------------------------

def composition_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 4)
    model = ctx.model()
    cases = [Case({"model": model, "sender_layer": 0, "receiver_layer": 1}, label=f"{ctx.model_name}, 0 -> 1")]
    random_model = _random_model(ctx, gen, n_layers=3)
    for sender, receiver in [(0, 2), (1, 2), (0, 1)]:
        cases.append(Case({"model": random_model, "sender_layer": sender, "receiver_layer": receiver},
                          label=f"random 3-layer model, {sender} -> {receiver}"))
    return cases


def _dense(model, layer: int):
    """Every head's OV = W_V W_O and QK = W_Q W_K^T, [n_heads, d_model, d_model], in float64."""
    attn = model.blocks[layer].attn
    W_Q, W_K, W_V, W_O = (getattr(attn, n).detach().double() for n in ("W_Q", "W_K", "W_V", "W_O"))
    return W_V @ W_O, W_Q @ W_K.transpose(-1, -2)


def _frobenius_ratio(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """[senders, receivers]: ||L_s R_r||_F / (||L_s||_F ||R_r||_F)."""
    product = torch.einsum("sij,rjk->srik", left, right)
    return product.pow(2).sum((-1, -2)).sqrt() / (left.pow(2).sum((-1, -2)).sqrt()[:, None]
                                                  * right.pow(2).sum((-1, -2)).sqrt()[None, :])


def composition_reference(model, sender_layer, receiver_layer):
    try:
        from minimech.analysis.circuits import composition_scores
    except ImportError:  # an older minimech: the same formula from the dense matrices
        ov, _ = _dense(model, sender_layer)
        _, qk = _dense(model, receiver_layer)
        return _frobenius_ratio(ov, qk.transpose(-1, -2)).float()
    return composition_scores(model, "K")[sender_layer, :, receiver_layer, :].float()


def composition_compare(got, want, case):
    model = case.args["model"]
    problem = expect_shape(got, (model.cfg.n_heads, model.cfg.n_heads), "your K-composition scores")
    if problem:
        return problem
    problem = close(got, want, atol=1e-4, rtol=1e-3, what="your K-composition scores")
    if problem is None:
        return None
    ov, _ = _dense(model, case.args["sender_layer"])
    ov_r, qk = _dense(model, case.args["receiver_layer"])
    norms = ov.pow(2).sum((-1, -2)).sqrt()[:, None] * qk.pow(2).sum((-1, -2)).sqrt()[None, :]
    if _matches(got, _frobenius_ratio(ov, qk), 1e-4):
        return ("your scores use W_QK, which is Q-composition (the sender feeding the receiver's queries); "
                "K-composition feeds the keys: use W_QK transposed, ||W_OV W_QK^T||_F")
    if _matches(got, _frobenius_ratio(ov, qk.transpose(-1, -2)).T, 1e-4):
        return "your table is transposed: rows are the sender's heads, columns the receiver's"
    if _matches(got, _frobenius_ratio(ov, qk.transpose(-1, -2)) * norms, 1e-3):
        return "your scores are not normalised: divide by ||W_OV||_F ||W_QK||_F"
    if _matches(got, _frobenius_ratio(ov, ov_r), 1e-4):
        return "your scores use the receiver's OV circuit, which is V-composition; K-composition uses its QK circuit"
    return problem


# ---- 02.6 a random baseline -----------------------------------------------------------------------------------------

def baseline_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 16)
    return [Case({"d_model": d_model, "d_head": d_head, "n_samples": n_samples,
                  "gen": torch.Generator().manual_seed(_int(gen, 0, 10**6))},
                 label=f"d_model={d_model}, d_head={d_head}, {n_samples} samples")
            for d_model, d_head, n_samples in [(20, 5, 400), (32, 32, 200), (48, 6, 300)]]


def _random_scores(d_model: int, d_head: int, n_samples: int, seed: int, full_rank: bool = False) -> torch.Tensor:
    """K-composition scores of random heads, all samples in one batch of float64 matrices, norms from traces."""
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(n_samples, *shape, generator=gen, dtype=torch.float64)  # noqa: E731
    if full_rank:
        ov, qk = randn(d_model, d_model), randn(d_model, d_model)
    else:
        ov, qk = randn(d_model, d_head) @ randn(d_head, d_model), randn(d_model, d_head) @ randn(d_head, d_model)
    square_norm = lambda m: torch.einsum("nij,nij->n", m, m)  # noqa: E731 - trace(M M^T), ||M||_F^2
    return (square_norm(ov @ qk.transpose(-1, -2)) / (square_norm(ov) * square_norm(qk))).sqrt()


def baseline_reference(d_model, d_head, n_samples, gen):
    """Statistics of an independent sample (the learner's draws differ, so their statistics are compared)."""
    scores = _random_scores(d_model, d_head, 2000, seed=12345)
    return torch.stack([scores.mean(), scores.std()]).float()


def baseline_compare(got, want, case):
    a = case.args
    problem = expect_shape(got, (a["n_samples"],), "your baseline scores [n_samples]")
    if problem:
        if isinstance(got, torch.Tensor) and got.numel() in (1, 2):
            return f"return every sample's score, a tensor [n_samples], not a summary ({_show(got)})"
        return problem
    got = got.double()
    if not torch.isfinite(got).all():
        return "your scores contain NaN or inf"
    mean, std = float(want[0]), float(want[1])
    if got.std() < 1e-9:
        return f"every sample has the same score ({got[0]:.4f}): draw new random matrices for every sample"
    spread_ok = 0.6 * std < got.std() < 1.6 * std
    mean_ok = abs(got.mean() - mean) < 5 * std / math.sqrt(a["n_samples"]) + 0.002
    if mean_ok and spread_ok:
        return None
    full = _random_scores(a["d_model"], a["d_head"], 1000, seed=999, full_rank=True)
    if a["d_head"] < a["d_model"] and abs(got.std() - full.std()) < 0.35 * full.std() and not spread_ok:
        return (f"your scores spread as random FULL-rank [d_model, d_model] matrices do (std {got.std():.4f}): each "
                "head's W_OV = W_V W_O and W_QK = W_Q W_K^T have rank d_head; build them from the four factors")
    if got.mean() > 1.5:
        return (f"your scores have mean {got.mean():.3g}: divide ||W_OV W_QK^T||_F by ||W_OV||_F ||W_QK||_F, which "
                "makes the score independent of the matrices' scale")
    return (f"your scores have mean {got.mean():.4f} and std {got.std():.4f}; random heads of these shapes should "
            "give a different distribution: the score is ||W_OV W_QK^T||_F / (||W_OV||_F ||W_QK||_F) with W_OV = "
            "W_V W_O and W_QK = W_Q W_K^T")


# ---- 02.7 Q- and V-composition ---------------------------------------------------------------------------------------

def qv_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 17)
    model = ctx.model()
    cases = [Case({"model": model, "sender_layer": 0, "receiver_layer": 1}, label=f"{ctx.model_name}, 0 -> 1")]
    random_model = _random_model(ctx, gen, n_layers=3)
    for sender, receiver in [(0, 2), (1, 2)]:
        cases.append(Case({"model": random_model, "sender_layer": sender, "receiver_layer": receiver},
                          label=f"random 3-layer model, {sender} -> {receiver}"))
    return cases


def qv_reference(model, sender_layer, receiver_layer):
    try:
        from minimech.analysis.circuits import composition_scores
    except ImportError:  # an older minimech: the same formula from the dense matrices
        ov, _ = _dense(model, sender_layer)
        ov_r, qk = _dense(model, receiver_layer)
        return {"Q": _frobenius_ratio(ov, qk).float(), "V": _frobenius_ratio(ov, ov_r).float()}
    return {kind: composition_scores(model, kind)[sender_layer, :, receiver_layer, :].float() for kind in "QV"}


def qv_compare(got, want, case):
    model = case.args["model"]
    if not isinstance(got, dict) or set(got) != {"Q", "V"}:
        return "return a dict with keys 'Q' and 'V'"
    n = model.cfg.n_heads
    for kind in "QV":
        problem = expect_shape(got[kind], (n, n), f"your {kind}-composition scores")
        if problem:
            return problem
    ov, _ = _dense(model, case.args["sender_layer"])
    ov_r, qk = _dense(model, case.args["receiver_layer"])
    for kind in "QV":
        problem = close(got[kind], want[kind], atol=1e-4, rtol=1e-3, what=f"your {kind}-composition scores")
        if problem is None:
            continue
        g = got[kind]
        if kind == "Q" and _matches(g, _frobenius_ratio(ov, qk.transpose(-1, -2)), 1e-4):
            return ("your Q scores use W_QK transposed, which is K-composition; the sender feeds the receiver's "
                    "queries through W_QK itself: ||W_OV W_QK||_F")
        if kind == "V" and _matches(g, _frobenius_ratio(ov, qk), 1e-4):
            return "your V scores use the receiver's QK circuit; V-composition uses its OV circuit"
        if kind == "Q" and _matches(g, _frobenius_ratio(ov, ov_r), 1e-4):
            return "your Q and V tables are swapped: Q uses the receiver's W_QK, V its W_OV"
        if _matches(g, want[kind].T, 1e-4):
            return f"your {kind} table is transposed: rows are the sender's heads, columns the receiver's"
        return problem
    return None


# ---- 02.8 ablation --------------------------------------------------------------------------------------------------

def _heads_for(model, gen) -> dict:
    """One or two heads to ablate, drawn at random: [[layer, head], ...]."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    chosen = {(_int(gen, 0, n_layers - 1), _int(gen, 0, n_heads - 1)) for _ in range(_int(gen, 1, 2))}
    return sorted(chosen)


def _card_induction_heads(model) -> list:
    """The induction heads a shipped model's card records ("L1H0 0.89" -> [1, 0]); [] without a card."""
    named = getattr(model, "card", {}).get("mechanisms", {}).get("induction", {}).get("induction_heads", [])
    return [[int(x) for x in label.split()[0][1:].split("H")] for label in named]


def ablation_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 5)
    cases = []
    model = ctx.model()
    seq_len = _int(gen, 10, 20)
    tokens = _repeated_tokens(model, gen, 4, seq_len)
    default_heads = _card_induction_heads(model) or [list(h) for h in _heads_for(model, gen)]
    for heads, how in [(default_heads, "mean"), ([list(h) for h in _heads_for(model, gen)], "zero")]:
        cases.append(Case({"model": model, "tokens": tokens, "seq_len": seq_len, "heads": heads, "how": how},
                          label=f"{ctx.model_name}, heads {heads}, {how}"))
    for n_layers, how in [(2, "mean"), (3, "mean"), (3, "zero")]:
        random_model = _random_model(ctx, gen, n_layers)
        seq_len = _int(gen, 6, 15)
        heads = [list(h) for h in _heads_for(random_model, gen)]
        cases.append(Case({"model": random_model, "tokens": _repeated_tokens(random_model, gen, 3, seq_len),
                           "seq_len": seq_len, "heads": heads, "how": how},
                          label=f"random {n_layers}-layer model, heads {heads}, {how}"))
    return cases


@torch.no_grad()
def _ablated(model, tokens, seq_len, heads, how, over_positions: bool = False) -> torch.Tensor:
    """The in-context losses with heads ablated, done at hook_attn_out: subtract each head's write (z @ W_O, read
    in this very run) and add the write of its replacement."""
    layers = sorted({l for l, _ in heads})
    if not layers:
        losses = _losses(model, tokens)
        return torch.stack([losses[:, 1:seq_len].mean(), losses[:, seq_len + 1:].mean()]).float()
    _, clean = model.run_with_cache(tokens, names=[f"blocks.{l}.attn.hook_z" for l in layers])
    current, hooks = {}, []
    for layer in layers:
        W_O = model.blocks[layer].attn.W_O  # [head, d_head, d_model]
        z_clean = clean[f"blocks.{layer}.attn.hook_z"]  # [batch, pos, head, d_head]
        mean_z = z_clean.mean((0, 1), keepdim=True) if over_positions else z_clean.mean(0, keepdim=True)
        chosen = [h for l, h in heads if l == layer]

        def read(z, hook, layer=layer):
            current[layer] = z  # the z of this (partly ablated) run
            return None

        def rewrite(attn_out, hook, layer=layer, chosen=chosen, mean_z=mean_z, W_O=W_O):
            for h in chosen:
                replacement = torch.zeros_like(mean_z[..., h, :]) if how == "zero" else mean_z[..., h, :]
                attn_out = attn_out + (replacement - current[layer][..., h, :]) @ W_O[h]
            return attn_out

        hooks += [(f"blocks.{layer}.attn.hook_z", read), (f"blocks.{layer}.hook_attn_out", rewrite)]
    with model.hooks(hooks):
        losses = _losses(model, tokens)
    return torch.stack([losses[:, 1:seq_len].mean(), losses[:, seq_len + 1:].mean()]).float()


def ablation_reference(model, tokens, seq_len, heads, how):
    return _ablated(model, tokens, seq_len, heads, how)


def ablation_compare(got, want, case):
    what = "your [first, repeated] losses after ablation"
    problem = expect_shape(got, (2,), what)
    if problem:
        return problem
    problem = close(got, want, atol=2e-4, rtol=1e-4, what=what)
    if problem is None:
        return None
    args = dict(case.args)
    model, heads, how = args["model"], args["heads"], args["how"]
    g = got.double()
    near = lambda other: (g - other.double()).abs().max() < 2e-4
    clean = _ablated(model, args["tokens"], args["seq_len"], [], how)
    if near(clean):
        return f"your losses {_show(g)} are the clean model's: the ablation did nothing (was the hook attached?)"
    other_how = "zero" if how == "mean" else "mean"
    if near(_ablated(model, args["tokens"], args["seq_len"], heads, other_how)):
        return f"you ablated with the {other_how} instead of the {how} (how={how!r})"
    if how == "mean" and near(_ablated(model, args["tokens"], args["seq_len"], heads, how, over_positions=True)):
        return "your mean is over the batch and the positions; take it over the batch only, one mean per position"
    n_heads = model.cfg.n_heads
    for shifted in ([[l, (h + 1) % n_heads] for l, h in heads], [[l, (h - 1) % n_heads] for l, h in heads]):
        if near(_ablated(model, args["tokens"], args["seq_len"], shifted, how)):
            return f"you ablated the wrong head: your losses match ablating {shifted}, not {heads}"
    return f"{problem} (ablating {heads} with the {how})"


# ---- 02.9 the phase change ------------------------------------------------------------------------------------------

def _synthetic_history(gen, increasing: bool) -> list[dict]:
    """A noisy sigmoid over uneven steps: a metric that jumps at a random point of training."""
    n = _int(gen, 20, 60)
    steps = torch.cumsum(torch.randint(50, 400, (n,), generator=gen), 0).tolist()
    centre, width = steps[_int(gen, n // 4, 3 * n // 4)], 200 + 1000 * float(torch.rand((), generator=gen))
    low, high = 0.05 + 0.2 * float(torch.rand((), generator=gen)), 0.6 + 0.35 * float(torch.rand((), generator=gen))
    values = []
    for step in steps:
        level = low + (high - low) / (1 + math.exp(-(step - centre) / width))
        level += 0.02 * float(torch.randn((), generator=gen))
        values.append(level if increasing else 1.2 - level)
    return [{"step": s, "metric": v, "lr": 1e-3} for s, v in zip(steps, values)]


def phase_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 6)
    history = ctx.model("attn-only-2l").card["history"]
    cases = [Case({"history": history, "key": key}, label=f"attn-only-2l's training, {key}")
             for key in ("induction_best", "icl_loss_ratio", "loss")]
    cases += [Case({"history": _synthetic_history(gen, increasing), "key": "metric"},
                   label=f"a synthetic {'rising' if increasing else 'falling'} metric")
              for increasing in (True, False, True)]
    return cases


def phase_reference(history, key):
    start, end = history[0][key], history[-1][key]
    for record in history:
        covered = (record[key] - start) / (end - start)  # 0 at the start, 1 at the end, whichever way it moves
        if covered >= 0.5:
            return int(record["step"])
    return int(history[-1]["step"])


def phase_compare(got, want, case):
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, float) and got.is_integer():
        got = int(got)
    if not isinstance(got, int) or isinstance(got, bool):
        return f"your answer is {got!r}; return the step (an int) of the record where the change is half done"
    if got == want:
        return None
    history, key = case.args["history"], case.args["key"]
    steps = [r["step"] for r in history]
    if got not in steps and 0 <= got < len(history):
        return f"you returned {got}, which looks like an index into the history; return that record's 'step'"
    if got == steps[0]:
        return (f"you returned the first step ({got}): is the metric falling? measure progress as "
                "(value - first) / (last - first), which is positive whichever way it moves")
    jumps = [abs(history[i][key] - history[i - 1][key]) for i in range(1, len(history))]
    if got == steps[1 + max(range(len(jumps)), key=jumps.__getitem__)]:
        return (f"you returned {got}, the step with the largest single jump; the check asks for the first record "
                "where half of the total change is done")
    return f"step {got} is not the first record where {key!r} has covered half of its change from the first record"


EXERCISES = [
    Exercise(id="02.1", function="repeated_tokens", title="The probe: repeated random tokens", cases=probe_cases,
             reference=probe_reference, compare=probe_compare,
             library=("minimech.analysis.heads.repeated_random_tokens",)),
    Exercise(id="02.2", function="per_token_loss", title="Per-token loss", cases=loss_cases,
             reference=loss_reference, compare=loss_compare),
    Exercise(id="02.3", function="in_context_losses", title="In-context losses", cases=icl_cases,
             reference=icl_reference, compare=icl_compare, uses=("02.2",)),
    Exercise(id="02.4", function="detector_scores", title="Previous-token and induction scores",
             cases=detector_cases, reference=detector_reference, compare=detector_compare,
             library=("minimech.analysis.heads.detector_scores", "minimech.analysis.heads.head_scores")),
    Exercise(id="02.5", function="k_composition_scores", title="K-composition", cases=composition_cases,
             reference=composition_reference, compare=composition_compare,
             library=("minimech.analysis.circuits.composition_scores",)),
    Exercise(id="02.6", function="composition_baseline", title="A random baseline for composition",
             cases=baseline_cases, reference=baseline_reference, compare=baseline_compare),
    Exercise(id="02.7", function="q_and_v_composition_scores", title="Q- and V-composition", cases=qv_cases,
             reference=qv_reference, compare=qv_compare, library=("minimech.analysis.circuits.composition_scores",)),
    Exercise(id="02.8", function="ablated_in_context_losses", title="Ablating heads", cases=ablation_cases,
             reference=ablation_reference, compare=ablation_compare, uses=("02.3",),
             library=("minimech.analysis.interventions.ablation_damage",
                      "minimech.analysis.ablation.mean_ablate_heads")),
    Exercise(id="02.9", function="phase_change_step", title="Finding the phase change", cases=phase_cases,
             reference=phase_reference, compare=phase_compare),
]
