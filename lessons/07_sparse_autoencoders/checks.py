"""Checks for lesson 07 (sparse autoencoders): each exercise against ground truth written independently of
solutions.py: minimech's own SparseAutoencoder (07.1, 07.6), the formulas written out in float64 (07.2, 07.4), a
training step spelled out in these checks (07.3), plain hooks (07.5), the toolkit's residual_direction (07.7) and
its splice intervention (07.8). Inputs are the lesson's model (its middle MLP) and small random GPTs whose sizes all
differ. When an answer is wrong, the check recomputes the classic mistakes and names the one it matches; the
reference's values are never shown.
"""

from __future__ import annotations

import torch

from minimech.grading import Case, Exercise, close
from minimech.sae import SAEConfig, SparseAutoencoder
from minimech.sae.features import document_tokens, residual_direction
from minimech.sae.interventions import splice
from minimech.sae.shipped import default_hook


# ---- inputs --------------------------------------------------------------------------------------------------------

def _gen(ctx, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(ctx.seed * 7919 + salt)


def _int(gen, lo: int, hi: int) -> int:  # uniform in [lo, hi]
    return int(torch.randint(lo, hi + 1, (), generator=gen))


def _weights(gen, d_in: int, d_sae: int, shift: float = -0.3) -> dict:
    """Random SAE tensors: unit decoder rows, biases that are not zero, thresholds that leave it sparse-ish."""
    W_dec = torch.randn(d_sae, d_in, generator=gen)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    return {"W_enc": torch.randn(d_in, d_sae, generator=gen) / d_in ** 0.5,
            "b_enc": 0.3 * torch.randn(d_sae, generator=gen) + shift,
            "W_dec": W_dec, "b_dec": 0.2 * torch.randn(d_in, generator=gen)}


def _sae(w: dict, hook: str = "hook") -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(w["W_enc"].shape[0], w["W_enc"].shape[1], hook), seed=None)
    with torch.no_grad():
        for name, value in w.items():
            getattr(sae, name).copy_(value)
    return sae.eval()


def _random_gpt(ctx, gen):
    return ctx.random_model(seed=_int(gen, 0, 10_000), n_layers=2, n_heads=2, d_head=4, d_model=9,
                            d_mlp=_int(gen, 12, 15), n_ctx=16, d_vocab=_int(gen, 20, 30))


def _rows(model, gen, n: int, length: int) -> torch.Tensor:
    """[n, length] held-out corpus documents, one per row, BOS first (the lesson's model)."""
    tokens, real = document_tokens(model, 120)
    rows = tokens[real.sum(1) >= length][:, :length]
    return rows[torch.randperm(len(rows), generator=gen)[:n]]


def _models(ctx, gen, n_rows: int = 6, length: int = 16):
    """(model, hook, tokens, label): the lesson's model at its middle MLP; a random GPT at one of its MLPs."""
    model = ctx.model()
    hook = default_hook(model)
    rand = _random_gpt(ctx, gen)
    tokens = torch.randint(0, rand.cfg.d_vocab, (3, _int(gen, 6, 12)), generator=gen)
    return [(model, hook, _rows(model, gen, n_rows, length), f"{hook} of the lesson's model"),
            (rand, "blocks.1.mlp.hook_post", tokens,
             f"random GPT (d_mlp {rand.cfg.d_mlp}), tokens {list(tokens.shape)}")]


def _width(model, hook: str) -> int:
    return model.cfg.d_mlp if hook.endswith("hook_post") else model.cfg.d_model


def _pair(got, n: int, what: str):
    if not isinstance(got, (tuple, list)) or len(got) != n:
        return f"return a tuple of {n} ({what}); got {type(got).__name__}" + (
            f" of length {len(got)}" if isinstance(got, (tuple, list)) else "")
    return None


def _matches(got, candidate, tol: float = 1e-4) -> bool:
    if isinstance(candidate, torch.Tensor):
        return (isinstance(got, torch.Tensor) and got.shape == candidate.shape
                and torch.allclose(got.double(), candidate.double(), atol=tol, rtol=tol))
    try:
        return abs(float(got) - float(candidate)) <= tol * max(1.0, abs(float(candidate)))
    except (TypeError, ValueError):
        return False


def _diagnose(got, want, problem: str, suspects) -> str:
    for make, message in suspects:
        candidate = make()
        if candidate is not None and not _matches(want, candidate) and _matches(got, candidate):
            return f"{message}. ({problem})"
    return problem


# ---- 07.1 the forward pass -----------------------------------------------------------------------------------------

def forward_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 1)
    cases = []
    for d_in, d_sae, lead in [(6, 10, [5]), (8, 8, [3, 4]), (5, 17, [2, 3]), (7, 12, [9])]:
        w = _weights(gen, d_in, d_sae)
        x = torch.randn(*lead, d_in, generator=gen) + 0.5
        cases.append(Case({"x": x, **w}, label=f"d_in {d_in}, d_sae {d_sae}, x {lead + [d_in]}"))
    return cases


def forward_reference(x, W_enc, b_enc, W_dec, b_dec):
    sae = _sae({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec})
    with torch.no_grad():
        f = sae.encode(x)
        return f, sae.decode(f)


def forward_compare(got, want, case):
    problem = _pair(got, 2, "f, x_hat")
    if problem:
        return problem
    x, W_enc, b_enc, W_dec, b_dec = (case.args[k].double() for k in ("x", "W_enc", "b_enc", "W_dec", "b_dec"))
    for name, g, w in (("f", got[0], want[0]), ("x_hat", got[1], want[1])):
        problem = close(g, w, atol=1e-4, rtol=1e-4, what=name)
        if problem is None:
            continue
        pre = (x - b_dec) @ W_enc + b_enc
        f = torch.relu(pre)
        square = W_enc.shape[0] == W_enc.shape[1]
        suspects = {"f": [(lambda: torch.relu(x @ W_enc + b_enc), "f must be computed from x - b_dec: subtract the "
                                                                   "decoder bias before encoding"),
                          (lambda: pre, "f has negative entries: apply the ReLU"),
                          (lambda: torch.relu((x - b_dec) @ W_enc.T + b_enc) if square else None,
                           "W_enc is [d_in, d_sae]: x @ W_enc, not x @ W_enc.T")],
                    "x_hat": [(lambda: f @ W_dec, "x_hat is missing the decoder bias: f @ W_dec + b_dec"),
                              (lambda: pre @ W_dec + b_dec, "decode the features after the ReLU"),
                              (lambda: f @ W_dec - b_dec, "add b_dec back after decoding (you subtracted it)"),
                              (lambda: f @ W_dec.T + b_dec if square else None,
                               "W_dec is [d_sae, d_in]: f @ W_dec, not f @ W_dec.T")]}[name]
        return _diagnose(g, w.double(), problem, suspects)
    return None


# ---- 07.2 the loss ---------------------------------------------------------------------------------------------------

def loss_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 2)
    cases = []
    for batch, d_in, d_sae, l1 in [(16, 6, 20, 0.5), (7, 9, 9, 3.0), (32, 4, 12, 0.0), (5, 11, 30, 1.7)]:
        x = torch.randn(batch, d_in, generator=gen)
        f = torch.relu(torch.randn(batch, d_sae, generator=gen) - 0.5)
        x_hat = x + 0.5 * torch.randn(batch, d_in, generator=gen)
        cases.append(Case({"x": x, "f": f, "x_hat": x_hat, "l1_coefficient": l1},
                          label=f"batch {batch}, d_in {d_in}, d_sae {d_sae}, l1 {l1}"))
    return cases


def loss_reference(x, f, x_hat, l1_coefficient):
    x, f, x_hat = x.double(), f.double(), x_hat.double()
    error = sum(((x_hat[t] - x[t]) ** 2).sum() for t in range(len(x))) / len(x)
    sparsity = sum(f[t].abs().sum() for t in range(len(f))) / len(f)
    return float(error + l1_coefficient * sparsity)


def loss_compare(got, want, case):
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            return f"your loss has shape {list(got.shape)}; return one number (a scalar tensor)"
        got = got.item()
    if not isinstance(got, (int, float)):
        return f"your loss is a {type(got).__name__}; return a scalar tensor"
    if _matches(got, want, 1e-5):
        return None
    x, f, x_hat = (case.args[k].double() for k in ("x", "f", "x_hat"))
    l1 = case.args["l1_coefficient"]
    sq = (x_hat - x) ** 2
    suspects = [(lambda: (sq.mean() + l1 * f.abs().sum(-1).mean()).item(),
                 "the squared error is summed over d_in and averaged over tokens (F.mse_loss's default averages "
                 "over d_in too)"),
                (lambda: (sq.mean() + l1 * f.abs().mean()).item(),
                 "both terms are sums over their last dimension (d_in, d_sae), averaged over tokens only"),
                (lambda: (sq.sum(-1).mean() + l1 * f.abs().sum()).item(),
                 "the L1 term is averaged over the tokens of the batch, like the squared error"),
                (lambda: sq.sum(-1).mean().item(), "the L1 penalty is missing: + l1_coefficient * |f| summed"),
                (lambda: (sq.sum(-1).mean() + l1 * x_hat.abs().sum(-1).mean()).item(),
                 "the L1 penalty is on the features f, not on the reconstruction"),
                (lambda: ((x_hat - x).abs().sum(-1).mean() + l1 * f.abs().sum(-1).mean()).item(),
                 "square the reconstruction error"),
                (lambda: (sq.sum(-1).sqrt().mean() + l1 * f.abs().sum(-1).mean()).item(),
                 "use the squared error, not its norm (no square root)")]
    return _diagnose(got, want, f"your loss is {got:.6g}, which is not the reconstruction error plus "
                                "l1_coefficient x the L1 norm of f", suspects)


# ---- 07.3 one training step ---------------------------------------------------------------------------------------

def step_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 3)
    cases = []
    for d_in, d_sae, batch, kind in [(6, 14, 32, "adam"), (8, 8, 16, "sgd"), (5, 11, 24, "adam")]:
        w = _weights(gen, d_in, d_sae, shift=0.0)
        params = {k: v.clone().requires_grad_() for k, v in w.items()}
        for p in params.values():  # stale gradients from an earlier step: the step must clear them
            p.grad = torch.randn(p.shape, generator=gen)
        optimizer = (torch.optim.Adam(params.values(), lr=0.05) if kind == "adam" else
                     torch.optim.SGD(params.values(), lr=0.1))
        x = torch.relu(torch.randn(batch, d_in, generator=gen)) + 0.1
        l1 = [0.3, 1.0, 0.0][len(cases)]
        cases.append(Case({"params": params, "optimizer": optimizer, "x": x, "l1_coefficient": l1},
                          label=f"{kind}, d_in {d_in}, d_sae {d_sae}, batch {batch}, l1 {l1}"))
    return cases


def _step(params, optimizer, x, l1, project=True, zero=True, normalize="after"):
    """The training step spelled out (and its classic variants, for the diagnosis); on copies when asked."""
    W_enc, b_enc, W_dec, b_dec = (params[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec"))
    if zero:
        optimizer.zero_grad()
    if normalize == "before":
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=-1, keepdim=True)
    f = torch.relu((x - b_dec) @ W_enc + b_enc)
    x_hat = f @ W_dec + b_dec
    loss = (x_hat - x).pow(2).sum(-1).mean() + l1 * f.sum(-1).mean()
    loss.backward()
    if project:
        with torch.no_grad():
            W_dec.grad -= (W_dec.grad * W_dec).sum(-1, keepdim=True) * W_dec
    optimizer.step()
    if normalize == "after":
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=-1, keepdim=True)
    return {k: v.detach().clone() for k, v in params.items()}


def _on_copies(params, optimizer, x, l1, **variant):
    """The step (or a variant) on copies of the case's tensors, stale gradients included, with a fresh optimiser of
    the same kind: the case's own inputs stay as they were, for the diagnosis."""
    copies = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    for p, q in zip(copies.values(), params.values()):
        p.grad = None if q.grad is None else q.grad.clone()
    return _step(copies, type(optimizer)(copies.values(), **optimizer.defaults), x, l1, **variant)


def _fresh(case, **variant):
    return _on_copies(case.args["params"], case.args["optimizer"], case.args["x"], case.args["l1_coefficient"],
                      **variant)


def step_reference(params, optimizer, x, l1_coefficient):
    return _on_copies(params, optimizer, x, l1_coefficient)


def step_compare(got, want, case):
    if not isinstance(got, dict) or set(got) != set(want):
        return f"return params, the dict of W_enc, b_enc, W_dec, b_dec; got {type(got).__name__}" + (
            f" with keys {sorted(got)}" if isinstance(got, dict) else "")
    if isinstance(got["W_dec"], torch.Tensor) and got["W_dec"].shape == want["W_dec"].shape:
        norms = got["W_dec"].double().norm(dim=-1)
        if (norms - 1).abs().max() > 1e-4:
            return (f"W_dec's rows have norms {[round(v, 4) for v in norms[:4].tolist()]}... after your step: scale "
                    "them back to unit norm after optimizer.step()")
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        problem = close(got[name], want[name], atol=1e-4, rtol=1e-3, what=name)
        if problem is None:
            continue
        suspects = [(lambda v=v: _fresh(case, **v)[name], m) for v, m in [
            ({"zero": False}, "the gradients were not zeroed first: call optimizer.zero_grad() before backward() "
                              "(the parameters came with stale gradients)"),
            ({"project": False}, "remove the radial part of W_dec's gradient before the step: "
                                 "grad -= (grad * W_dec).sum(-1, keepdim=True) * W_dec"),
            ({"normalize": "before"}, "renormalise W_dec after optimizer.step(), not before it")]]
        return _diagnose(got[name], want[name], problem, suspects)
    return None


# ---- 07.4 L0 and variance explained -------------------------------------------------------------------------------

def metric_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 4)
    cases = []
    for lead, d_in, d_sae in [([200], 6, 20), ([8, 25], 5, 15), ([60], 12, 12)]:
        offset = 3 * torch.randn(d_in, generator=gen)  # a mean far from zero: the variance is around it
        x = torch.randn(*lead, d_in, generator=gen) * torch.rand(d_in, generator=gen).add(0.3) + offset
        x_hat = x + 0.4 * torch.randn(*lead, d_in, generator=gen)
        f = torch.relu(torch.randn(*lead, d_sae, generator=gen) - 1.0)
        cases.append(Case({"x": x, "f": f, "x_hat": x_hat}, label=f"x {lead + [d_in]}, f {lead + [d_sae]}"))
    return cases


def metric_reference(x, f, x_hat):
    x, f, x_hat = (t.double().reshape(-1, t.shape[-1]) for t in (x, f, x_hat))
    n = len(x)
    l0 = sum(int((f[t] != 0).sum()) for t in range(n)) / n
    mean = x.sum(0) / n
    total = sum(float(((x[t] - mean) ** 2).sum()) for t in range(n)) / n
    residual = sum(float(((x[t] - x_hat[t]) ** 2).sum()) for t in range(n)) / n
    return l0, 1 - residual / total


def metric_compare(got, want, case):
    problem = _pair(got, 2, "l0, variance_explained")
    if problem:
        return problem
    x, f, x_hat = (case.args[k].double().reshape(-1, case.args[k].shape[-1]) for k in ("x", "f", "x_hat"))
    if not _matches(got[0], want[0], 1e-6):
        suspects = [(lambda: float((f != 0).sum()), "L0 is the mean over tokens of the number of active features, "
                                                    "not the total count"),
                    (lambda: float((f != 0).double().mean()), "L0 counts features per token (sum over d_sae), then "
                                                             "averages over tokens; you averaged over features too")]
        return _diagnose(got[0], want[0], f"your L0 is {got[0]!r}", suspects)
    if not _matches(got[1], want[1], 1e-5):
        rss = (x - x_hat).pow(2).sum(-1)
        suspects = [(lambda: float(1 - rss.mean() / x.pow(2).sum(-1).mean()),
                     "the variance is around the mean: E||x||^2 - ||E x||^2, not E||x||^2"),
                    (lambda: float((1 - rss / (x - x.mean(0)).pow(2).sum(-1)).mean()),
                     "that is SAELens's legacy per-token formula (averaging 1 - error / variance over tokens); "
                     "pool first: 1 - (mean error) / (mean variance)"),
                    (lambda: float((1 - (x - x_hat).pow(2).mean(0) / x.var(0, unbiased=False)).mean()),
                     "that is the R^2 of each dimension averaged; the SAE metric pools the dimensions: one ratio of "
                     "sums over d_in"),
                    (lambda: float(rss.mean() / (x - x.mean(0)).pow(2).sum(-1).mean()),
                     "that is the fraction of variance *unexplained*: 1 minus it")]
        return _diagnose(got[1], want[1], f"your variance explained is {got[1]!r}", suspects)
    return None


# ---- 07.5 CE loss recovered ----------------------------------------------------------------------------------------

def _noisy_identity(model, hook: str, gen) -> SparseAutoencoder:
    """An SAE that reconstructs x = ReLU(x) - ReLU(-x) exactly, with its dictionary then perturbed: the spliced
    loss lies between clean and zero-ablated, as a real SAE's does."""
    d = _width(model, hook)
    eye = torch.eye(d)
    w = {"W_enc": torch.cat([eye, -eye], 1), "b_enc": torch.zeros(2 * d),
         "W_dec": torch.cat([eye, -eye], 0) + 0.3 * torch.randn(2 * d, d, generator=gen), "b_dec": torch.zeros(d)}
    return _sae(w, hook)


def ce_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 5)
    return [Case({"model": model, "tokens": tokens, "hook": hook, "reconstruct": _noisy_identity(model, hook, gen)},
                 label=label) for model, hook, tokens, label in _models(ctx, gen, n_rows=8, length=20)]


def _ce(model, tokens, hook, reconstruct, keep_bos=True, skip_first=True, zero_bos=False):
    def splice_in(act, hook_point):
        new = reconstruct(act)
        return torch.cat([act[:, :1], new[:, 1:]], 1) if keep_bos else new

    def zero(act, hook_point):
        new = torch.zeros_like(act)
        return new if zero_bos or not keep_bos else torch.cat([act[:, :1], new[:, 1:]], 1)

    def loss(logits):
        nll = -logits[:, :-1].double().log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]  # [batch, pos - 1]
        return float((nll[:, 1:] if skip_first else nll).mean())

    with torch.no_grad():
        clean = loss(model(tokens))
        with model.hooks([(hook, splice_in)]):
            spliced = loss(model(tokens))
        with model.hooks([(hook, zero)]):
            ablated = loss(model(tokens))
    return clean, spliced, ablated, (ablated - spliced) / (ablated - clean)


def ce_reference(model, tokens, hook, reconstruct):
    return _ce(model, tokens, hook, reconstruct)


def _is_ratio_of(got) -> bool:
    """Whether got's recovered is (ablated - spliced) / (ablated - clean) of got's own three losses (each already
    matched to the reference). Where ablated - clean is small (GPT-2-shaped random weights: 0.02 nats), float32
    rounding of the losses, far inside their tolerance, moves the ratio by more than 1e-4 of itself."""
    try:
        clean, spliced, ablated, recovered = (float(v) for v in got)
    except (TypeError, ValueError):
        return False
    return ablated != clean and _matches(recovered, (ablated - spliced) / (ablated - clean), 1e-4)


def ce_compare(got, want, case):
    problem = _pair(got, 4, "clean, spliced, ablated, recovered")
    if problem:
        return problem
    names = ("clean", "spliced", "ablated", "recovered")
    args = [case.args[k] for k in ("model", "tokens", "hook", "reconstruct")]
    for i, name in enumerate(names):
        if _matches(got[i], want[i], 1e-4) or (name == "recovered" and _is_ratio_of(got)):
            continue
        suspects = [(lambda v=v: _ce(*args, **v)[i], m) for v, m in [
            ({"skip_first": False}, "leave out the prediction made at the BOS: average the per-token losses from "
                                    "column 1 on"),
            ({"keep_bos": False}, "position 0 (the BOS) keeps its own activation in the spliced and zeroed runs"),
            ({"keep_bos": False, "skip_first": False}, "leave out the BOS: keep its activation and leave out the "
                                                       "prediction made at it"),
            ({"zero_bos": True}, "in the zeroed run too, position 0 (the BOS) keeps its own activation")]]
        if name == "recovered":
            c, s, a, r = want
            suspects = [(lambda: 1 - r, "recovered is (ablated - spliced) / (ablated - clean): 1 when the "
                                        "reconstruction is as good as the real activations")]
        return _diagnose(got[i], want[i], f"your {name} is {got[i]!r}", suspects)
    return None


# ---- 07.6 a feature's activations ---------------------------------------------------------------------------------

def activation_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 6)
    cases = []
    for model, hook, tokens, label in _models(ctx, gen):
        d = _width(model, hook)
        w = _weights(gen, d, 3 * d, shift=0.0)
        feature = _int(gen, 0, 3 * d - 1)
        cases.append(Case({"model": model, "tokens": tokens, "hook": hook, "W_enc": w["W_enc"], "b_enc": w["b_enc"],
                           "b_dec": w["b_dec"], "feature": feature}, label=f"{label}, feature {feature}"))
    return cases


def activation_reference(model, tokens, hook, W_enc, b_enc, b_dec, feature):
    d_in, d_sae = W_enc.shape
    sae = _sae({"W_enc": W_enc, "b_enc": b_enc, "W_dec": torch.ones(d_sae, d_in), "b_dec": b_dec}, hook)
    with torch.no_grad():
        return sae.features[feature].activation(model.run_with_cache(tokens, names=[hook])[1])


def activation_compare(got, want, case):
    problem = close(got, want, atol=1e-4, rtol=1e-4, what="the feature's activations")
    if problem is None:
        return None
    model, tokens, hook, feature = (case.args[k] for k in ("model", "tokens", "hook", "feature"))
    W_enc, b_enc, b_dec = (case.args[k].double() for k in ("W_enc", "b_enc", "b_dec"))
    with torch.no_grad():
        x = model.run_with_cache(tokens, names=[hook])[1][hook].double()
    suspects = [(lambda: torch.relu(x @ W_enc[:, feature] + b_enc[feature]),
                 "subtract b_dec from the activations before encoding"),
                (lambda: (x - b_dec) @ W_enc[:, feature] + b_enc[feature], "apply the ReLU"),
                (lambda: x[..., feature % x.shape[-1]],
                 "those are a neuron's activations, read straight from the hook; encode the activations with the "
                 "SAE first")]
    return _diagnose(got, want.double(), problem, suspects)


# ---- 07.7 a feature's logit effect -------------------------------------------------------------------------------

def logit_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 7)
    cases = []
    model = ctx.model()
    rand = _random_gpt(ctx, gen)
    for m, label in ((model, "the lesson's model"), (model, "the lesson's model"), (rand, "random GPT")):
        layer = _int(gen, 0, m.cfg.n_layers - 1)
        direction = torch.randn(m.cfg.d_mlp, generator=gen)
        direction /= direction.norm()
        cases.append(Case({"model": m, "layer": layer, "direction": direction}, label=f"{label}, layer {layer}"))
    return cases


def logit_reference(model, layer, direction):
    return residual_direction(model, f"blocks.{layer}.mlp.hook_post", direction) @ model.W_U.detach()


def logit_compare(got, want, case):
    problem = close(got, want, atol=1e-4, rtol=1e-4, what="the logit effect")
    if problem is None:
        return None
    model, layer, d = case.args["model"], case.args["layer"], case.args["direction"]
    W_U = model.W_U.detach()
    mlp = lambda block: model.blocks[block].mlp  # noqa: E731
    suspects = [(lambda: (d @ mlp(layer).W_out.detach() + mlp(layer).b_out.detach()) @ W_U,
                 "leave out b_out: the MLP's bias is written whether or not the feature fires"),
                (lambda: d @ mlp(layer).W_in.detach().T @ W_U,
                 "the direction leaves the MLP through W_out [d_mlp, d_model], not back through W_in"),
                (lambda: d @ mlp((layer + 1) % model.cfg.n_layers).W_out.detach() @ W_U,
                 "use the W_out of block `layer`'s MLP")]
    return _diagnose(got, want, problem, suspects)


# ---- 07.8 ablating a feature ---------------------------------------------------------------------------------------

def ablate_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 8)
    cases = []
    for model, hook, tokens, label in _models(ctx, gen):
        d = _width(model, hook)
        w = _weights(gen, d, 2 * d, shift=0.0)
        with torch.no_grad():
            x = model.run_with_cache(tokens, names=[hook])[1][hook]
            fires = (_sae(w, hook).encode(x) > 0).float().mean((0, 1))
        feature = int(fires.argsort(descending=True)[_int(gen, 0, 4)])  # one that fires often
        cases.append(Case({"model": model, "tokens": tokens, "hook": hook, **w, "feature": feature},
                          label=f"{label}, feature {feature}"))
    return cases


def ablate_reference(model, tokens, hook, W_enc, b_enc, W_dec, b_dec, feature):
    sae = _sae({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, hook)
    with torch.no_grad(), splice(model, sae, ablate=[feature]):
        return model(tokens)


def ablate_compare(got, want, case):
    problem = close(got, want, atol=2e-4, rtol=1e-4, what="the logits")
    if problem is None:
        return None
    model, tokens, hook, feature = (case.args[k] for k in ("model", "tokens", "hook", "feature"))
    sae = _sae({k: case.args[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}, hook)

    def run(fn):
        with torch.no_grad(), model.hooks([(hook, fn)]):
            return model(tokens)

    def without_error(act, hook_point):
        f = sae.encode(act)
        f[..., feature] = 0
        return sae.decode(f)

    def zero_neuron(act, hook_point):
        act = act.clone()
        act[..., feature] = 0
        return act

    suspects = [(lambda: model(tokens).detach(), "your logits are the clean model's: nothing was removed (does your "
                                                 "hook return the new activation?)"),
                (lambda: run(without_error), "add the SAE's error term x - x_hat back: without it the run is the "
                                             "SAE's reconstruction, not the model with one feature removed"),
                (lambda: run(lambda act, hp: act - sae.encode(act)[..., feature, None] * sae.W_enc[:, feature]),
                 "a feature writes its decoder row W_dec[feature], not its encoder column"),
                (lambda: run(zero_neuron) if feature < _width(model, hook) else None,
                 "that zeroes neuron `feature` of the hook, not the SAE's feature")]
    return _diagnose(got, want, problem, suspects)


EXERCISES = [
    Exercise("07.1", "sae_forward", "The SAE's forward pass", forward_cases, forward_reference, forward_compare),
    Exercise("07.2", "sae_loss", "The SAE's loss", loss_cases, loss_reference, loss_compare),
    Exercise("07.3", "training_step", "One training step", step_cases, step_reference, step_compare,
             library=("minimech.sae.training.train_forward", "minimech.sae.training.train_sae"),
             uses=("07.1", "07.2")),
    Exercise("07.4", "l0_and_variance_explained", "L0 and variance explained", metric_cases, metric_reference,
             metric_compare),
    Exercise("07.5", "ce_loss_recovered", "CE loss recovered", ce_cases, ce_reference, ce_compare,
             library=("minimech.sae.metrics.evaluate_sae",)),
    Exercise("07.6", "feature_activations", "A feature's activations", activation_cases, activation_reference,
             activation_compare),
    Exercise("07.7", "feature_logit_effect", "A feature's logit effect", logit_cases, logit_reference, logit_compare,
             library=("minimech.sae.features.residual_direction",)),
    Exercise("07.8", "ablate_feature", "Ablating a feature", ablate_cases, ablate_reference, ablate_compare,
             library=("minimech.sae.interventions.splice", "minimech.sae.interventions.splice_hook",
                      "minimech.sae.interventions.feature_editor")),
]
