"""Checks for lesson 05 (toy models of superposition).

Ground truth is independent of solutions.py: float64 loops and closed forms (a regular pentagon's dimensionality is
2/5), statistics with binomial tolerances for the random data, and, for the training loop, properties any correct
run has (the loss falls; at sparsity 0.95 five equal features in two dimensions end as a regular pentagon; dense
features keep the two most important ones, orthogonal; at sparsity 0.9 the loss on fresh data beats, by a margin,
the closed-form loss of the best model without superposition). The training settings were checked on 1000 seeds:
none failed. When a result is wrong, the check recomputes the classic mistakes from the case's
inputs and names the one the learner's output matches; the reference's values are never shown.
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
    for n_features, n_hidden, batch in [(5, 2, 7), (20, 5, 3), (4, 4, 6), (3, 1, 9)]:
        W = torch.randn(n_hidden, n_features, generator=gen)
        b = torch.randn(n_features, generator=gen) - 0.3  # negative entries: the ReLU has work to do
        x = torch.rand(batch, n_features, generator=gen) * (torch.rand(batch, n_features, generator=gen) < 0.6)
        cases.append(Case({"W": W, "b": b, "x": x}, label=f"n={n_features}, m={n_hidden}, batch={batch}"))
    return cases


def forward_reference(W, b, x):
    W, b, x = W.double(), b.double(), x.double()
    out = torch.zeros_like(x)
    for row in range(x.shape[0]):  # a loop over examples: h = W x, then x' = ReLU(W^T h + b), entry by entry
        hidden = [sum(W[k, j] * x[row, j] for j in range(W.shape[1])) for k in range(W.shape[0])]
        for i in range(W.shape[1]):
            out[row, i] = max(0.0, float(sum(W[k, i] * hidden[k] for k in range(W.shape[0])) + b[i]))
    return out.float()


def forward_compare(got, want, case):
    W, b, x = (case.args[k].double() for k in ("W", "b", "x"))
    if isinstance(got, torch.Tensor) and got.shape == (x.shape[0], W.shape[0]) and W.shape[0] != W.shape[1]:
        return f"your output has shape {list(got.shape)}, the hidden layer h = W x; map it back with W^T (and b, ReLU)"
    problem = close(got, want, atol=1e-4, rtol=1e-4, what="x'")
    if problem is None:
        return None
    pre = x @ W.T @ W  # [batch, n]
    suspects = [(torch.relu(pre) + b, "the bias goes inside the ReLU: ReLU(W^T W x + b), not ReLU(W^T W x) + b"),
                (torch.relu(pre), "the bias b is missing: ReLU(W^T W x + b)"),
                (torch.relu(x @ W + b), "you multiplied by W once; the model goes to the hidden layer and back, W^T W"),
                (torch.relu(x @ W.T + b), "you multiplied by W once; the model goes to the hidden layer and back, "
                                          "W^T W"),
                (torch.relu(x @ W @ W.T + b), "W W^T is not W^T W: h = x W^T, then x' = ReLU(h W + b)")]
    for candidate, message in suspects:
        if candidate.shape == want.shape and _matches(got, candidate, 1e-4):
            return message
    if isinstance(got, torch.Tensor) and got.is_floating_point() and (got < -1e-6).any():
        return f"x' has negative entries ({got.min().item():.4g}): the ReLU is missing"
    return problem


# ---- 05.2 sparse synthetic data -------------------------------------------------------------------------------------

def data_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 2)
    seeds = torch.randint(0, 2**31 - 1, (5,), generator=gen).tolist()
    per_feature = (0.05 + 0.85 * torch.rand(6, generator=gen)).tolist()
    specs = [(20_000, 5, 0.1), (20_000, 8, 0.3), (20_000, 6, per_feature), (3, 4, 1.0), (50, 3, 0.0)]
    return [Case({"batch_size": batch, "n_features": n, "feature_probability": p,
                  "gen": torch.Generator().manual_seed(seed)},
                 label=f"batch={batch}, n={n}, p={'per feature' if isinstance(p, list) else p}")
            for (batch, n, p), seed in zip(specs, seeds)]


def data_reference(batch_size, n_features, feature_probability, gen):
    """What the data should look like: the probability that each feature is present, [n_features]."""
    if isinstance(feature_probability, list):
        return torch.tensor(feature_probability, dtype=torch.float64)
    return torch.full((n_features,), float(feature_probability), dtype=torch.float64)


def data_compare(got, want, case):
    batch, n = case.args["batch_size"], case.args["n_features"]
    problem = expect_shape(got, (batch, n), "your batch")
    if problem:
        return problem
    if not got.is_floating_point():
        return f"your batch has dtype {got.dtype}; features are real numbers in [0, 1]"
    if (got < 0).any() or (got > 1).any():
        return (f"your batch has values outside [0, 1] (min {got.min().item():.3g}, max {got.max().item():.3g}): a "
                "present feature is uniform in [0, 1] (torch.rand, not torch.randn)")
    present = (got > 0).double()  # [batch, n]
    frequency = present.mean(0)  # [n]
    sigma = (want * (1 - want) / batch).sqrt()
    wrong = (frequency - want).abs() > 6 * sigma + 0.01
    if wrong.any():
        if 0 < want.min() and want.max() < 1 and ((frequency == 0) | (frequency == 1)).all():
            return (f"each feature is present in every example or in none ({_show(frequency)}): draw a separate "
                    "random number for every entry [batch, n_features], not one per feature")
        if (frequency - (1 - want)).abs().max() <= (6 * sigma + 0.01).max():
            return (f"features are present in a fraction {_show(frequency)} of examples: that is the sparsity "
                    "S = 1 - p; a feature must be present with probability p = feature_probability")
        i = int(wrong.nonzero()[0])
        return (f"feature {i} is present (non-zero) in a fraction {frequency[i].item():.4f} of your {batch} "
                "examples, which is not its feature probability")
    values = got[got > 0].double()
    if values.numel() >= 1000:
        mean, var = values.mean().item(), values.var().item()
        if abs(mean - 0.5) > 6 * math.sqrt(1 / 12 / values.numel()) + 0.005 or abs(var - 1 / 12) > 0.01:
            return (f"the present features have mean {mean:.4f} and variance {var:.4f}: they should be uniform in "
                    "[0, 1] (mean 1/2, variance 1/12), e.g. torch.rand(...) * mask")
    if batch >= 1000 and n > 1 and 0.02 < want.min() and want.max() < 0.98:
        corr = torch.corrcoef(present.T)  # [n, n]: presence of feature i against feature j
        worst = (corr - torch.eye(n, dtype=corr.dtype)).abs().max().item()
        if worst > 0.1:
            return (f"features are not independent: the presence of two features has correlation {worst:.2f} in your "
                    "batch; draw one mask entry per feature and example, not one per example")
    return None


# ---- 05.3 the importance-weighted loss ------------------------------------------------------------------------------

def loss_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 3)
    cases = []
    for batch, n in [(7, 5), (16, 20), (3, 11)]:
        x = torch.rand(batch, n, generator=gen) * (torch.rand(batch, n, generator=gen) < 0.5)
        x_hat = torch.rand(batch, n, generator=gen)
        importance = 0.2 + torch.rand(n, generator=gen)  # [n], far from all-equal
        cases.append(Case({"x_hat": x_hat, "x": x, "importance": importance}, label=f"batch={batch}, n={n}"))
    return cases


def loss_reference(x_hat, x, importance):
    total = 0.0
    for row in range(x.shape[0]):
        total += sum(float(importance[i]) * float(x[row, i] - x_hat[row, i]) ** 2 for i in range(x.shape[1]))
    return total / x.shape[0]


def loss_compare(got, want, case):
    if isinstance(got, torch.Tensor) and got.numel() != 1:
        return f"your loss has shape {list(got.shape)}; return a scalar (sum over features, mean over the batch)"
    problem = close(got, want, atol=1e-5, rtol=1e-4, what="your loss")
    if problem is None:
        return None
    value = float(got)
    x_hat, x, importance = (case.args[k].double() for k in ("x_hat", "x", "importance"))
    errors = (x - x_hat) ** 2  # [batch, n]
    batch, n = x.shape
    suspects = [(errors.sum(-1).mean(), "the importance is not applied: weight each feature's error by importance_i"),
                (errors.mean(), "the importance is not applied: weight each feature's error by importance_i"),
                ((importance * errors).mean(), "you averaged over the features too; sum over them, mean over the "
                                               "batch"),
                ((importance * errors).sum(), "you summed over the batch; take the mean over the batch"),
                (((importance * (x - x_hat)) ** 2).sum(-1).mean(), "the importance is squared: I_i (x_i - x'_i)^2, "
                                                                   "not (I_i (x_i - x'_i))^2"),
                ((importance * (x - x_hat).abs()).sum(-1).mean(), "the error is not squared")]
    for candidate, message in suspects:
        if abs(value - candidate.item()) <= 1e-5 + 1e-4 * abs(candidate.item()):
            return f"your loss is {value:.6g}: {message}"
    return problem


# ---- 05.4 the training loop -----------------------------------------------------------------------------------------

def _eval_loss(W, b, feature_probability, importance) -> float:
    """Loss on a fixed batch of 20 000 examples, computed here from W and b."""
    n = W.shape[1]
    gen = torch.Generator().manual_seed(2024)
    density = torch.as_tensor(feature_probability, dtype=torch.float64).expand(20_000, n)
    x = torch.bernoulli(density, generator=gen) * torch.rand(20_000, n, generator=gen, dtype=torch.float64)
    x_hat = torch.relu(x @ W.double().T @ W.double() + b.double())
    return ((x - x_hat) ** 2 @ importance.double()).mean().item()


TRAIN_SETTINGS = dict(steps=300, batch_size=256, lr=0.03)


def train_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 4)
    seeds = torch.randint(0, 2**20, (3,), generator=gen).tolist()
    specs = [("pentagon", 5, 2, 0.05, torch.ones(5)),
             ("dense", 5, 2, 1.0, torch.tensor([1.0, 0.7, 0.1, 0.05, 0.02])),
             ("sparse sweep point", 20, 5, 0.1, 0.7 ** torch.arange(20.0))]
    return [Case({"n_features": n, "n_hidden": m, "feature_probability": p, "importance": importance,
                  **TRAIN_SETTINGS, "seed": seed}, label=f"{name}: n={n}, m={m}, p={p}")
            for (name, n, m, p, importance), seed in zip(specs, seeds)]


def train_reference(n_features, n_hidden, feature_probability, importance, steps, batch_size, lr, seed):
    """The loss of the best model WITHOUT superposition, in closed form: the n_hidden most important features kept
    exactly (orthonormal columns), every other feature dropped and predicted by its best constant, b_i = E[x_i] = p/2,
    which leaves its variance p/3 - p^2/4. A model in superposition beats it. None for the pentagon and the dense
    case, where the compare checks the geometry instead."""
    if n_features == 5:
        return None
    p = float(feature_probability)
    dropped = importance.double().sort(descending=True).values[n_hidden:]
    return (dropped.sum() * (p / 3 - p * p / 4)).item()


def _pentagon_problem(W: torch.Tensor) -> "str | None":
    norms = W.norm(dim=0)  # [5]
    if norms.min() < 0.5:
        return (f"only {int((norms >= 0.5).sum())} of the 5 features are represented (column norms {_show(norms)}); "
                "at sparsity 0.95 all five should be (a pentagon)")
    if norms.max() / norms.min() > 1.2:
        return f"the 5 column norms {_show(norms)} are not near-equal, as a pentagon's are"
    theta = torch.atan2(W[1], W[0]).sort().values
    gaps = torch.rad2deg(torch.diff(torch.cat([theta, theta[:1] + 2 * math.pi])))
    if (gaps - 72).abs().max() > 10:
        return f"the angles between neighbouring columns are {_show(gaps)} degrees; a regular pentagon's are 72"
    return None


def _dense_problem(W: torch.Tensor) -> "str | None":
    norms = W.norm(dim=0)  # [5]
    if norms[:2].min() < 0.85 or norms[2:].max() > 0.3:
        return (f"with dense features (p = 1) the model should keep the two most important features, with norm near "
                f"1, and shrink the rest; your column norms are {_show(norms)}")
    cos = (W[:, 0] @ W[:, 1] / (norms[0] * norms[1])).item()
    if abs(cos) > 0.2:
        return f"the two kept features should be orthogonal; the cosine between them is {cos:.3f}"
    return None


def train_compare(got, want, case):
    n, m, steps = case.args["n_features"], case.args["n_hidden"], case.args["steps"]
    if not isinstance(got, dict) or not {"W", "b", "losses"} <= set(got):
        return "return a dict with keys 'W', 'b' and 'losses'"
    W, b, losses = got["W"], got["b"], got["losses"]
    for value, shape, what in [(W, (m, n), "W"), (b, (n,), "b"), (losses, (steps,), "losses")]:
        problem = expect_shape(value, shape, what)
        if problem:
            return problem
    if not torch.isfinite(losses).all() or not torch.isfinite(W).all():
        return "your losses or W contain NaN or inf"
    if W.abs().max() < 1e-6:
        return "W is still all zeros: a W that starts at zero gets zero gradient; initialise it at random"
    first, last = losses[:50].mean().item(), losses[-50:].mean().item()
    if last > first:
        return (f"the loss rose from a mean of {first:.4g} over the first 50 steps to {last:.4g} over the last 50: "
                "are the gradients piling up across steps? call optimizer.zero_grad() every step")
    if not last < 0.8 * first:
        return f"the loss did not fall: mean {first:.4g} over the first 50 steps, {last:.4g} over the last 50"
    importance, p = case.args["importance"], case.args["feature_probability"]
    achieved = _eval_loss(W, b, p, importance)
    if want is not None and achieved > 0.8 * want:
        return (f"your trained model's loss on fresh data is {achieved:.4g}, no better than a model without "
                f"superposition (the {m} most important features, one dimension each) would do: is the data drawn with "
                "p = feature_probability, not the sparsity? is the importance used?")
    if case.label.startswith("pentagon"):
        return _pentagon_problem(W)
    if case.label.startswith("dense"):
        return _dense_problem(W)
    return None


# ---- 05.5 feature geometry ------------------------------------------------------------------------------------------

def geometry_cases(ctx) -> list[Case]:
    gen = _gen(ctx, 5)
    angles = torch.arange(5) * 2 * math.pi / 5 + float(torch.rand((), generator=gen))
    pentagon = torch.stack([angles.cos(), angles.sin()]) * (0.5 + float(torch.rand((), generator=gen)))
    antipodal = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.7]])  # a pair sharing a dimension, one alone
    with_dead = torch.randn(3, 7, generator=gen)
    with_dead[:, 2] = 0.0
    return [Case({"W": pentagon}, label="regular pentagon, m=2, n=5"),
            Case({"W": antipodal}, label="antipodal pair + one orthogonal feature"),
            Case({"W": torch.randn(5, 20, generator=gen)}, label="random W, m=5, n=20"),
            Case({"W": with_dead}, label="random W with a zero column, m=3, n=7")]


def geometry_reference(W):
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
    frobenius_sq = sum(v * v for v in norms)
    return {"norms": torch.tensor(norms), "interference": torch.tensor(interference),
            "dimensionality": torch.tensor(dimensionality), "dims_per_feature": m / frobenius_sq}


def geometry_compare(got, want, case):
    W = case.args["W"].double()
    m, n = W.shape
    if not isinstance(got, dict):
        return "return a dict with keys 'norms', 'interference', 'dimensionality' and 'dims_per_feature'"
    for key in ("norms", "interference", "dimensionality"):
        value = got.get(key)
        if isinstance(value, torch.Tensor) and value.shape == (m,) and m != n:
            return f"{key} has shape [{m}] (one per row); the features are the columns of W: [n_features] = [{n}]"
        if isinstance(value, torch.Tensor) and torch.isnan(value).any():
            return (f"{key} contains NaN: a dropped feature (a zero column) must give 0; divide by "
                    "max(||W_i||, 1e-8)")
    problem = close(got, want, atol=1e-4, rtol=1e-4, what="your result")
    if problem is None:
        return None
    norms = W.norm(dim=0)
    gram = W.T @ W  # [n, n]
    off = gram * (1 - torch.eye(n, dtype=W.dtype))
    directions = norms.clamp_min(1e-8)[:, None]
    dims = got.get("dims_per_feature")
    if isinstance(dims, (int, float)) and abs(dims - (W ** 2).sum().item() / m) < 1e-4:
        return f"dims_per_feature is {dims:.4g} = ||W||_F^2 / m: it is m / ||W||_F^2"
    interference = got.get("interference")
    if _matches(interference, ((gram / directions) ** 2).sum(-1), 1e-4):
        return "your interference includes j = i (the feature's own ||W_i||^2); sum over j != i only"
    if _matches(interference, (off ** 2).sum(-1), 1e-4):
        return "your interference uses W_i, not the unit vector W_i / ||W_i||: normalise feature i's direction"
    dimensionality = got.get("dimensionality")
    if _matches(dimensionality, norms ** 2 / (gram ** 2).sum(-1).clamp_min(1e-12), 1e-4):
        return "your dimensionality uses W_i . W_j, not the unit vector W_i / ||W_i|| dotted with W_j"
    return problem


EXERCISES = [
    Exercise(id="05.1", function="toy_forward", title="The toy model's forward pass", cases=forward_cases,
             reference=forward_reference, compare=forward_compare),
    Exercise(id="05.2", function="generate_batch", title="Sparse synthetic data", cases=data_cases,
             reference=data_reference, compare=data_compare),
    Exercise(id="05.3", function="importance_weighted_loss", title="The importance-weighted loss", cases=loss_cases,
             reference=loss_reference, compare=loss_compare),
    Exercise(id="05.4", function="train_toy_model", title="The training loop", cases=train_cases,
             reference=train_reference, compare=train_compare),
    Exercise(id="05.5", function="feature_geometry", title="Feature geometry", cases=geometry_cases,
             reference=geometry_reference, compare=geometry_compare),
]
