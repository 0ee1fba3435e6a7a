"""Checks for lesson 05 (toy models of superposition).

Ground truth is independent of solutions.py: float64 loops and closed forms (a regular pentagon's dimensionality is
2/5), statistics with binomial tolerances for the random data, and, for the training loop, properties any correct
run has (the loss falls; at sparsity 0.95 five equal features in two dimensions end as a regular pentagon; dense
features keep the two most important ones, orthogonal; at sparsity 0.9 the loss on fresh data beats, by a margin,
the closed-form loss of the best model without superposition; instances train independently). When a result is
wrong, the check recomputes the classic mistakes from the case's inputs and names the one the learner's output
matches; the reference's values are never shown.
"""

from __future__ import annotations

import math

import torch

from minimech.grading import Case, Exercise, close, expect_shape


def _gen(ctx, salt: int) -> torch.Generator:  # one stream per exercise: the order the grader asks in is irrelevant
    return torch.Generator().manual_seed(ctx.seed * 7919 + salt)


def _matches(got, candidate: torch.Tensor, atol: float = 1e-5) -> bool:
    return (isinstance(got, torch.Tensor) and got.shape == candidate.shape
            and torch.allclose(got.double(), candidate.double(), atol=atol, rtol=1e-4))


def _show(t: torch.Tensor, k: int = 5) -> str:
    values = [round(v, 4) for v in t.detach().flatten()[:k].tolist()]
    return f"{values}{' ...' if t.numel() > k else ''}"


# ---- 05.1 the forward pass ------------------------------------------------------------------------------------------

def forward_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 1)
    cases = []
    for n_instances, n_features, n_hidden, batch in [(3, 5, 2, 7), (2, 20, 5, 3), (4, 4, 4, 6), (1, 3, 1, 9)]:
        W = torch.randn(n_instances, n_hidden, n_features, generator=gen)
        b = torch.randn(n_instances, n_features, generator=gen) - 0.3  # negative entries: the ReLU has work to do
        x = torch.rand(batch, n_instances, n_features, generator=gen)
        x = x * (torch.rand(batch, n_instances, n_features, generator=gen) < 0.6)
        cases.append(Case({"W": W, "b": b, "x": x},
                          label=f"inst={n_instances}, n={n_features}, m={n_hidden}, batch={batch}"))
    return cases


def forward_reference(W, b, x):
    W, b, x = W.double(), b.double(), x.double()
    out = torch.zeros_like(x)
    n_instances, n_hidden, n_features = W.shape
    for row in range(x.shape[0]):  # loops: h = W x, then x' = ReLU(W^T h + b), entry by entry, model by model
        for k in range(n_instances):
            hidden = [sum(W[k, h, j] * x[row, k, j] for j in range(n_features)) for h in range(n_hidden)]
            for i in range(n_features):
                out[row, k, i] = max(0.0, float(sum(W[k, h, i] * hidden[h] for h in range(n_hidden)) + b[k, i]))
    return out.float()


def forward_compare(got, want, case):
    W, b, x = (case.args[k].double() for k in ("W", "b", "x"))
    batch, n_instances = x.shape[:2]
    if isinstance(got, torch.Tensor) and got.shape == (batch, n_instances, W.shape[1]) and W.shape[1] != W.shape[2]:
        return f"your output has shape {list(got.shape)}, the hidden layer h = W x; map it back with W^T (and b, ReLU)"
    problem = close(got, want, atol=1e-4, rtol=1e-4, what="x'")
    if problem is None:
        return None
    pre = torch.einsum("bin,imn,imk->bik", x, W, W)  # [batch, inst, n]: W^T W x
    suspects = [(torch.relu(pre) + b, "the bias goes inside the ReLU: ReLU(W^T W x + b), not ReLU(W^T W x) + b"),
                (torch.relu(pre), "the bias b is missing: ReLU(W^T W x + b)"),
                (pre + b, "x' has no ReLU: the ReLU is missing"),
                (torch.relu(torch.einsum("bin,imn,ikn->bik", x, W, W) + b) if W.shape[1] == W.shape[2] else None,
                 "W W^T is not W^T W: h = W x, then x' = ReLU(W^T h + b)")]
    if n_instances > 1:  # every instance read through instance 0's weights, or instances mixed
        suspects.append((torch.relu(torch.einsum("bin,mn,mk->bik", x, W[0], W[0]) + b),
                         "every instance used instance 0's W: instance k of x goes through W[k] only"))
        suspects.append((torch.relu(torch.einsum("bjn,imn,imk->bik", x, W, W) + b),
                         "your output mixes instances (it sums h over every instance): instance k of x goes "
                         "through W[k] only; keep the inst axis in both einsums"))
    for candidate, message in suspects:
        if candidate is not None and candidate.shape == want.shape and _matches(got, candidate, 1e-4):
            return message
    if isinstance(got, torch.Tensor) and got.is_floating_point() and (got < -1e-6).any():
        return f"x' has negative entries ({got.min().item():.4g}): the ReLU is missing"
    return problem


# ---- 05.2 sparse synthetic data -------------------------------------------------------------------------------------

def data_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 2)
    seeds = torch.randint(0, 2**31 - 1, (5,), generator=gen).tolist()
    per_feature = 0.05 + 0.85 * torch.rand(2, 6, generator=gen)
    specs = [(20_000, torch.full((1, 5), 0.1)), (20_000, torch.full((3, 4), 0.3)), (20_000, per_feature),
             (3, torch.ones(2, 4)), (50, torch.zeros(1, 3))]
    return [Case({"batch_size": batch, "feature_probability": p, "gen": torch.Generator().manual_seed(seed)},
                 label=f"batch={batch}, p {list(p.shape)}" + (" (one per instance and feature)" if i == 2 else
                                                               f" all {p.flatten()[0].item():g}"))
            for i, ((batch, p), seed) in enumerate(zip(specs, seeds))]


def data_reference(batch_size, feature_probability, gen):
    """What the data should look like: the probability that each entry is present, [inst, n_features]."""
    return feature_probability.double().clone()


def data_compare(got, want, case):
    batch = case.args["batch_size"]
    problem = expect_shape(got, (batch, *want.shape), "your batch [batch, inst, n_features]")
    if problem:
        return problem
    if not got.is_floating_point():
        return f"your batch has dtype {got.dtype}; features are real numbers in [0, 1]"
    if (got < 0).any() or (got > 1).any():
        return (f"your batch has values outside [0, 1] (min {got.min().item():.3g}, max {got.max().item():.3g}): a "
                "present feature is uniform in [0, 1] (torch.rand, not torch.randn)")
    present = (got > 0).double()  # [batch, inst, n]
    frequency = present.mean(0)  # [inst, n]
    sigma = (want * (1 - want) / batch).sqrt()
    wrong = (frequency - want).abs() > 6 * sigma + 0.01
    if wrong.any():
        if 0 < want.min() and want.max() < 1 and ((frequency == 0) | (frequency == 1)).all():
            return (f"each feature is present in every example or in none ({_show(frequency)}): draw a separate "
                    "random number for every entry [batch, inst, n_features], not one per feature")
        if ((frequency - (1 - want)).abs() <= 6 * sigma + 0.01).all():
            return (f"features are present in a fraction {_show(frequency)} of examples: that is the sparsity "
                    "S = 1 - p; a feature must be present with probability p = feature_probability")
        k, i = (int(v) for v in wrong.nonzero()[0])
        return (f"feature {i} of instance {k} is present (non-zero) in a fraction {frequency[k, i].item():.4f} of "
                f"your {batch} examples, which is not its feature probability")
    values = got[got > 0].double()
    if values.numel() >= 1000:
        mean, var = values.mean().item(), values.var().item()
        if abs(mean - 0.5) > 6 * math.sqrt(1 / 12 / values.numel()) + 0.005 or abs(var - 1 / 12) > 0.01:
            return (f"the present features have mean {mean:.4f} and variance {var:.4f}: they should be uniform in "
                    "[0, 1] (mean 1/2, variance 1/12), e.g. torch.rand(...) * mask")
    entries = present.flatten(1)  # [batch, inst * n]
    if batch >= 1000 and entries.shape[1] > 1 and 0.02 < want.min() and want.max() < 0.98:
        corr = torch.corrcoef(entries.T)  # presence of one entry against another's
        worst = (corr - torch.eye(corr.shape[0], dtype=corr.dtype)).abs().max().item()
        if worst > 0.1:
            return (f"features are not independent: the presence of two entries has correlation {worst:.2f} in your "
                    "batch; draw one mask entry per example, instance and feature, not one per example")
    return None


# ---- 05.3 the importance-weighted loss ------------------------------------------------------------------------------

def loss_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 3)
    cases = []
    for batch, n_instances, n in [(7, 3, 5), (16, 2, 20), (3, 4, 11)]:
        x = torch.rand(batch, n_instances, n, generator=gen) * (torch.rand(batch, n_instances, n, generator=gen) < 0.5)
        x_hat = torch.rand(batch, n_instances, n, generator=gen)
        importance = 0.2 + torch.rand(n_instances, n, generator=gen)  # far from all-equal
        cases.append(Case({"x_hat": x_hat, "x": x, "importance": importance},
                          label=f"batch={batch}, inst={n_instances}, n={n}"))
    return cases


def loss_reference(x_hat, x, importance):
    batch, n_instances, n = x.shape
    out = []
    for k in range(n_instances):
        total = sum(float(importance[k, i]) * float(x[row, k, i] - x_hat[row, k, i]) ** 2
                    for row in range(batch) for i in range(n))
        out.append(total / batch)
    return torch.tensor(out)


def loss_compare(got, want, case):
    x_hat, x, importance = (case.args[k].double() for k in ("x_hat", "x", "importance"))
    errors = (x - x_hat) ** 2  # [batch, inst, n]
    weighted = importance * errors
    if isinstance(got, torch.Tensor) and got.numel() == 1 and want.numel() > 1:
        value = float(got)
        for total, how in [(weighted.sum(-1).mean(0).sum(), "summed"), (weighted.sum(-1).mean(), "averaged")]:
            if abs(value - total.item()) <= 1e-5 + 1e-4 * abs(total.item()):
                return (f"your loss is one number ({value:.4g}, the instances' losses {how}); return one loss per "
                        "instance, a tensor [inst] (training sums them)")
        return f"your loss has shape {list(got.shape)}; return one loss per instance, [inst]"
    problem = expect_shape(got, tuple(want.shape), "your losses [inst]")
    if problem:
        return problem
    problem = close(got, want, atol=1e-5, rtol=1e-4, what="your losses")
    if problem is None:
        return None
    suspects = [(errors.sum(-1).mean(0), "the importance is not applied: weight each feature's error by I_i"),
                (weighted.mean((0, 2)), "you averaged over the features too; sum over them, mean over the batch"),
                (weighted.sum((0, 2)), "you summed over the batch; take the mean over the batch"),
                (((importance * (x - x_hat)) ** 2).sum(-1).mean(0), "the importance is squared: I_i (x_i - x'_i)^2, "
                                                                   "not (I_i (x_i - x'_i))^2"),
                ((importance * (x - x_hat).abs()).sum(-1).mean(0), "the error is not squared")]
    for candidate, message in suspects:
        if _matches(got, candidate):
            return f"your losses are {_show(got)}: {message}"
    return problem


# ---- 05.4 the training loop -----------------------------------------------------------------------------------------

def _eval_loss(W, b, feature_probability: float, importance) -> float:
    """One model's loss on a fixed batch of 20 000 examples, computed here from W [m, n] and b [n]."""
    n = W.shape[1]
    gen = torch.Generator().manual_seed(2024)
    density = torch.full((20_000, n), float(feature_probability), dtype=torch.float64)
    x = torch.bernoulli(density, generator=gen) * torch.rand(20_000, n, generator=gen, dtype=torch.float64)
    x_hat = torch.relu(x @ W.double().T @ W.double() + b.double())
    return ((x - x_hat) ** 2 @ importance.double()).mean().item()


TRAIN_SETTINGS = dict(steps=500, batch_size=256, lr=0.04)  # 0 failures of the reference in 240 seeds
DENSE_IMPORTANCE = [1.0, 0.7, 0.1, 0.05, 0.02]


def train_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 4)
    seeds = torch.randint(0, 2**20, (2,), generator=gen).tolist()
    # instance 0: five equal features at density 0.05 (a pentagon); instance 1: dense, two important features
    five = Case({"feature_probability": torch.tensor([[0.05] * 5, [1.0] * 5]),
                 "importance": torch.tensor([[1.0] * 5, DENSE_IMPORTANCE]), "n_hidden": 2, **TRAIN_SETTINGS,
                 "seed": seeds[0]}, label="2 instances, n=5, m=2: [pentagon p=0.05, dense p=1]")
    twenty = Case({"feature_probability": torch.full((1, 20), 0.1), "importance": (0.7 ** torch.arange(20.0))[None],
                   "n_hidden": 5, **TRAIN_SETTINGS, "seed": seeds[1]},
                  label="1 instance, n=20, m=5, p=0.1, importance 0.7^i")
    return [five, twenty]


def _no_superposition(importance: torch.Tensor, p: float, n_hidden: int) -> float:
    """The loss of the best model WITHOUT superposition, in closed form (lesson text, section 6), by a loop."""
    kept = sorted(importance.tolist(), reverse=True)
    return sum(I * (p / 3 - p * p / 4) for I in kept[n_hidden:])


def train_reference(feature_probability, importance, n_hidden, steps, batch_size, lr, seed):
    """Per instance, the loss of the best model without superposition; the compare checks the rest."""
    return torch.tensor([_no_superposition(importance[k], float(feature_probability[k, 0]), n_hidden)
                         for k in range(importance.shape[0])])


def _pentagon_problem(W: torch.Tensor) -> "str | None":
    norms = W.norm(dim=0)  # [5]
    if norms.min() < 0.5:
        return (f"instance 0 (p = 0.05): only {int((norms >= 0.5).sum())} of the 5 features are represented (column "
                f"norms {_show(norms)}); at sparsity 0.95 all five should be (a pentagon)")
    if norms.max() / norms.min() > 1.2:
        return f"instance 0 (p = 0.05): the 5 column norms {_show(norms)} are not near-equal, as a pentagon's are"
    theta = torch.atan2(W[1], W[0]).sort().values
    gaps = torch.rad2deg(torch.diff(torch.cat([theta, theta[:1] + 2 * math.pi])))
    if (gaps - 72).abs().max() > 10:
        return (f"instance 0 (p = 0.05): the angles between neighbouring columns are {_show(gaps)} degrees; a regular "
                "pentagon's are 72")
    return None


def _dense_problem(W: torch.Tensor) -> "str | None":
    norms = W.norm(dim=0)  # [5]
    if norms[:2].min() < 0.85 or norms[2:].max() > 0.3:
        return (f"instance 1 (dense, p = 1): the model should keep the two most important features, with norm near "
                f"1, and shrink the rest; your column norms are {_show(norms)}")
    cos = (W[:, 0] @ W[:, 1] / (norms[0] * norms[1])).item()
    if abs(cos) > 0.2:
        return f"instance 1 (dense): the two kept features should be orthogonal; the cosine between them is {cos:.3f}"
    return None


def train_compare(got, want, case):
    p, importance = case.args["feature_probability"], case.args["importance"]
    n_instances, n = p.shape
    m, steps = case.args["n_hidden"], case.args["steps"]
    if not isinstance(got, dict) or not {"W", "b", "losses"} <= set(got):
        return "return a dict with keys 'W', 'b' and 'losses'"
    W, b, losses = got["W"], got["b"], got["losses"]
    for value, shape, what in [(W, (n_instances, m, n), "W [inst, n_hidden, n_features]"),
                               (b, (n_instances, n), "b [inst, n_features]"), (losses, (steps, n_instances),
                                                                              "losses [steps, inst]")]:
        problem = expect_shape(value, shape, what)
        if problem:
            return problem
    if not torch.isfinite(losses).all() or not torch.isfinite(W).all():
        return "your losses or W contain NaN or inf"
    if W.abs().max() < 1e-6:
        return "W is still all zeros: a W that starts at zero gets zero gradient; initialise it at random"
    first, last = losses[:50].mean(0), losses[-50:].mean(0)  # [inst]
    if (last > first).any():
        k = int((last > first).nonzero()[0])
        return (f"instance {k}'s loss rose from a mean of {first[k]:.4g} over the first 50 steps to {last[k]:.4g} "
                "over the last 50: are the gradients piling up across steps? call optimizer.zero_grad() every step")
    if not (last < 0.8 * first).all():
        return f"the loss did not fall: means {_show(first)} over the first 50 steps, {_show(last)} over the last 50"
    for k in range(n_instances):
        achieved = _eval_loss(W[k], b[k], float(p[k, 0]), importance[k])
        if float(p[k, 0]) < 1 and achieved > 0.8 * float(want[k]):
            return (f"instance {k}'s loss on fresh data is {achieved:.4g}, no better than a model without "
                    f"superposition (the {m} most important features, one dimension each): is the data drawn with "
                    "p = feature_probability, not the sparsity? is the importance used?")
    if n == 5:
        return _pentagon_problem(W[0]) or _dense_problem(W[1])
    return None


# ---- 05.5 the loss without superposition ----------------------------------------------------------------------------

def baseline_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 5)
    cases = []
    for n, m, p in [(5, 2, 0.05), (20, 5, 0.1), (7, 3, 0.6), (4, 4, 0.3)]:
        importance = torch.rand(n, generator=gen) + 0.05  # unsorted: the kept ones are the largest, wherever they are
        cases.append(Case({"importance": importance, "feature_probability": p, "n_hidden": m},
                          label=f"n={n}, m={m}, p={p}, importance in random order"))
    return cases


def baseline_reference(importance, feature_probability, n_hidden):
    return _no_superposition(importance, feature_probability, n_hidden)


def baseline_compare(got, want, case):
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if not isinstance(got, (int, float)) or isinstance(got, bool):
        return f"return a number (a float), got {type(got).__name__}"
    if math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-7):
        return None
    importance, p, m = case.args["importance"], case.args["feature_probability"], case.args["n_hidden"]
    ordered = sorted(importance.tolist(), reverse=True)
    suspects = [(sum(ordered[m:]) * p / 3, "you predicted each dropped feature as 0, which leaves E[x^2] = p/3; the "
                                           "best constant is its mean p/2, which leaves its variance p/3 - p^2/4"),
                (sum(ordered[m:]) * p / 12, "p/12 is the variance of a present feature only; a dropped feature is "
                                            "also absent (0) with probability 1 - p: its variance is p/3 - p^2/4"),
                (sum(ordered[:len(ordered) - m]) * (p / 3 - p * p / 4),
                 "you dropped the most important features: keep the n_hidden MOST important, drop the rest"),
                (sum(importance.tolist()[m:]) * (p / 3 - p * p / 4),
                 "you dropped the features after the first n_hidden in the given order; the importances are not "
                 "sorted: keep the n_hidden largest"),
                (sum(ordered) * (p / 3 - p * p / 4), "you counted every feature as dropped; n_hidden of them are kept")]
    for value, message in suspects:
        if math.isclose(got, value, rel_tol=1e-4, abs_tol=1e-7):
            return f"your loss is {got:.6g}: {message}"
    return f"your loss {got:.6g} is not the expected loss of the model that keeps the {m} most important features"


# ---- 05.6 norms and interference ------------------------------------------------------------------------------------

def _geometry_matrices(ctx, salt: int) -> list[Case]:
    gen = _gen(ctx, salt)
    angles = torch.arange(5) * 2 * math.pi / 5 + float(torch.rand((), generator=gen))
    pentagon = torch.stack([angles.cos(), angles.sin()]) * (0.5 + float(torch.rand((), generator=gen)))
    antipodal = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.7]])  # a pair sharing a dimension, one alone
    with_dead = torch.randn(3, 7, generator=gen)
    with_dead[:, 2] = 0.0
    return [Case({"W": pentagon}, label="regular pentagon, m=2, n=5"),
            Case({"W": antipodal}, label="antipodal pair + one orthogonal feature"),
            Case({"W": torch.randn(5, 20, generator=gen)}, label="random W, m=5, n=20"),
            Case({"W": with_dead}, label="random W with a zero column, m=3, n=7")]


def _geometry_loops(W):
    """(norms, interference, dimensionality, dims per feature) by loops over the columns, in float64."""
    W = W.double()
    m, n = W.shape
    columns = [W[:, i] for i in range(n)]
    norms = [math.sqrt(sum(v * v for v in c.tolist())) for c in columns]
    interference, dimensionality = [], []
    for i in range(n):
        if norms[i] < 1e-8:
            interference.append(0.0)
            dimensionality.append(0.0)
            continue
        overlaps = [float(columns[i] @ columns[j]) / norms[i] for j in range(n)]
        interference.append(sum(o * o for j, o in enumerate(overlaps) if j != i))
        dimensionality.append(norms[i] ** 2 / sum(o * o for o in overlaps))
    return torch.tensor(norms), torch.tensor(interference), torch.tensor(dimensionality), m / sum(v * v for v in norms)


def _per_feature_problem(got, keys, W) -> "str | None":
    m, n = W.shape
    if not isinstance(got, dict):
        return f"return a dict with keys {', '.join(map(repr, keys))}"
    for key in keys:
        value = got.get(key)
        if isinstance(value, torch.Tensor) and value.shape == (m,) and m != n:
            return f"{key} has shape [{m}] (one per row); the features are the columns of W: [n_features] = [{n}]"
        if isinstance(value, torch.Tensor) and torch.isnan(value).any():
            return f"{key} contains NaN: a dropped feature (a zero column) must give 0; divide by max(||W_i||, 1e-8)"
    return None


def interference_cases(ctx) -> list[Case]:
    return _geometry_matrices(ctx, 6)


def interference_reference(W):
    norms, interference, _, _ = _geometry_loops(W)
    return {"norms": norms.float(), "interference": interference.float()}


def interference_compare(got, want, case):
    W = case.args["W"].double()
    problem = _per_feature_problem(got, ("norms", "interference"), W)
    if problem:
        return problem
    problem = close(got, want, atol=1e-4, rtol=1e-4, what="your result")
    if problem is None:
        return None
    norms = W.norm(dim=0)
    gram = W.T @ W  # [n, n]
    off = gram * (1 - torch.eye(W.shape[1], dtype=W.dtype))
    interference = got.get("interference")
    if _matches(interference, ((gram / norms.clamp_min(1e-8)[:, None]) ** 2).sum(-1), 1e-4):
        return "your interference includes j = i (the feature's own ||W_i||^2); sum over j != i only"
    if _matches(interference, (off ** 2).sum(-1), 1e-4):
        return "your interference uses W_i, not the unit vector W_i / ||W_i||: normalise feature i's direction"
    if _matches(interference, (off / norms.clamp_min(1e-8)[:, None]).abs().sum(-1), 1e-4):
        return "your interference sums |W^_i . W_j|; the paper squares each overlap: sum of (W^_i . W_j)^2"
    return problem


# ---- 05.7 dimensionality --------------------------------------------------------------------------------------------

def dimensionality_cases(ctx) -> list[Case]:
    return _geometry_matrices(ctx, 7)


def dimensionality_reference(W):
    _, _, dimensionality, dims = _geometry_loops(W)
    return {"dimensionality": dimensionality.float(), "dims_per_feature": dims}


def dimensionality_compare(got, want, case):
    W = case.args["W"].double()
    m = W.shape[0]
    problem = _per_feature_problem(got, ("dimensionality", "dims_per_feature"), W)
    if problem:
        return problem
    dims = got.get("dims_per_feature")
    if isinstance(dims, torch.Tensor) and dims.numel() == 1:
        dims = dims.item()
    if isinstance(dims, (int, float)) and abs(dims - (W ** 2).sum().item() / m) < 1e-4 < abs(dims - want[
            "dims_per_feature"]):
        return f"dims_per_feature is {dims:.4g} = ||W||_F^2 / m: it is m / ||W||_F^2"
    problem = close(got, want, atol=1e-4, rtol=1e-4, what="your result")
    if problem is None:
        return None
    norms = W.norm(dim=0)
    gram = W.T @ W
    off = gram * (1 - torch.eye(W.shape[1], dtype=W.dtype))
    unit_overlaps = gram / norms.clamp_min(1e-8)[:, None]
    dimensionality = got.get("dimensionality")
    if _matches(dimensionality, norms ** 2 / (gram ** 2).sum(-1).clamp_min(1e-12), 1e-4):
        return "your dimensionality uses W_i . W_j, not the unit vector W_i / ||W_i|| dotted with W_j"
    if _matches(dimensionality, norms ** 2 / ((off / norms.clamp_min(1e-8)[:, None]) ** 2).sum(-1).clamp_min(1e-12),
                1e-3):
        return ("your dimensionality leaves j = i out of the denominator; the sum runs over every j, the feature's "
                "own ||W_i||^2 included (so a feature alone gets 1)")
    if _matches(dimensionality, norms / (unit_overlaps ** 2).sum(-1).sqrt().clamp_min(1e-12), 1e-4):
        return "your dimensionality is a ratio of norms; the paper's D_i divides the squared norm ||W_i||^2"
    return problem


# ---- 05.8 the phase of an n = 2, m = 1 model ------------------------------------------------------------------------

PHASE_NAMES = ("not represented", "dedicated", "superposition")


def phase_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 8)
    big = lambda: 0.8 + 0.4 * float(torch.rand((), generator=gen))  # noqa: E731 - a represented weight's size
    small = lambda: 0.1 * float(torch.rand((), generator=gen) - 0.5)  # noqa: E731 - a dropped one's
    sign = lambda: 1.0 if torch.rand((), generator=gen) < 0.5 else -1.0  # noqa: E731
    s = sign()
    shapes = [("superposition, feature 0 positive", [big(), -big()]),
              ("superposition, feature 0 negative", [-big(), big()]),
              ("feature 1 alone, positive", [small(), big()]),
              ("feature 1 alone, negative", [small(), -big()]),
              ("feature 0 alone", [s * big(), small()]),
              ("feature 0 alone, negative", [-big(), small()])]
    return [Case({"W": torch.tensor([w])}, label=f"W = [[{w[0]:.2f}, {w[1]:.2f}]] ({what})") for what, w in shapes]


def phase_reference(W):
    kept = [abs(float(v)) > 0.5 for v in W[0]]
    return "superposition" if kept[0] and kept[1] else "dedicated" if kept[1] else "not represented"


def phase_compare(got, want, case):
    if got == want:
        return None
    if not isinstance(got, str) or got not in PHASE_NAMES:
        return f"return one of {', '.join(map(repr, PHASE_NAMES))}; got {got!r}"
    w = case.args["W"][0].tolist()
    signed = [v > 0.5 for v in w]
    signed_answer = "superposition" if signed[0] and signed[1] else "dedicated" if signed[1] else "not represented"
    if got == signed_answer:
        return (f"for W = [[{w[0]:.2f}, {w[1]:.2f}]] you answered {got!r}: a feature stored with a negative weight "
                "is still represented; compare |W_i| with 0.5")
    swapped_kept = [abs(w[1]) > 0.5, abs(w[0]) > 0.5]
    swapped = ("superposition" if all(swapped_kept) else "dedicated" if swapped_kept[1] else "not represented")
    if got == swapped:
        return (f"for W = [[{w[0]:.2f}, {w[1]:.2f}]] you answered {got!r}: you read feature 0 as the one whose fate "
                "is asked; the phase is about feature 1, W[0, 1] (feature 0 has importance 1)")
    return f"for W = [[{w[0]:.2f}, {w[1]:.2f}]] you answered {got!r}, which is not what the model does with feature 1"


EXERCISES = [
    Exercise(id="05.1", function="toy_forward", title="The toy models' forward pass", cases=forward_cases,
             reference=forward_reference, compare=forward_compare),
    Exercise(id="05.2", function="generate_batch", title="Sparse synthetic data", cases=data_cases,
             reference=data_reference, compare=data_compare),
    Exercise(id="05.3", function="importance_weighted_loss", title="The importance-weighted loss", cases=loss_cases,
             reference=loss_reference, compare=loss_compare),
    Exercise(id="05.4", function="train_toy_models", title="The training loop", cases=train_cases,
             reference=train_reference, compare=train_compare, uses=("05.1", "05.2", "05.3")),
    Exercise(id="05.5", function="no_superposition_loss", title="The loss without superposition",
             cases=baseline_cases, reference=baseline_reference, compare=baseline_compare),
    Exercise(id="05.6", function="feature_norms_and_interference", title="Norms and interference",
             cases=interference_cases, reference=interference_reference, compare=interference_compare),
    Exercise(id="05.7", function="feature_dimensionality", title="Feature dimensionality", cases=dimensionality_cases,
             reference=dimensionality_reference, compare=dimensionality_compare),
    Exercise(id="05.8", function="phase_of", title="Reading the phase off W", cases=phase_cases,
             reference=phase_reference, compare=phase_compare),
]
