"""Planted bugs for lesson 05: each is one classic mistake, and the checks must name it."""

from __future__ import annotations


import torch

from minimech.grading import Bug


# ---- 05.1 ---------------------------------------------------------------------------------------------------------
def _pre(W, x):  # [batch, inst, n]: W^T W x per instance
    return torch.einsum("bim,imn->bin", torch.einsum("bin,imn->bim", x, W), W)


def forward_no_relu(W, b, x):
    return _pre(W, x) + b


def forward_bias_outside(W, b, x):
    return torch.relu(_pre(W, x)) + b


def forward_no_bias(W, b, x):
    return torch.relu(_pre(W, x))


def forward_instances_mixed(W, b, x):  # h summed over every instance: the inst axis dropped from the first einsum
    hidden = torch.einsum("bjn,imn->bim", x, W)
    return torch.relu(torch.einsum("bim,imn->bin", hidden, W) + b)


# ---- 05.2 ---------------------------------------------------------------------------------------------------------
def data_sparsity_inverted(batch_size, feature_probability, gen):
    shape = (batch_size, *feature_probability.shape)
    return torch.rand(shape, generator=gen) * (torch.rand(shape, generator=gen) < 1 - feature_probability)


def data_one_mask_per_example(batch_size, feature_probability, gen):
    shape = (batch_size, *feature_probability.shape)
    present = torch.rand(batch_size, 1, 1, generator=gen) < feature_probability
    return torch.rand(shape, generator=gen) * present


def data_normal_values(batch_size, feature_probability, gen):
    shape = (batch_size, *feature_probability.shape)
    return torch.randn(shape, generator=gen) * (torch.rand(shape, generator=gen) < feature_probability)


def data_no_magnitude(batch_size, feature_probability, gen):
    shape = (batch_size, *feature_probability.shape)
    return (torch.rand(shape, generator=gen) < feature_probability).float()


# ---- 05.3 ---------------------------------------------------------------------------------------------------------
def loss_no_importance(x_hat, x, importance):
    return ((x - x_hat) ** 2).sum(-1).mean(0)


def loss_mean_over_features(x_hat, x, importance):
    return (importance * (x - x_hat) ** 2).mean((0, 2))


def loss_importance_squared(x_hat, x, importance):
    return ((importance * (x - x_hat)) ** 2).sum(-1).mean(0)


def loss_one_number(x_hat, x, importance):  # the single-model habit: one scalar for the whole batch
    return (importance * (x - x_hat) ** 2).sum(-1).mean()


# ---- 05.4 ---------------------------------------------------------------------------------------------------------
def _train(feature_probability, importance, n_hidden, steps, batch_size, lr, seed, zero_init=False, invert=False,
           zero_grad=True):
    n_instances, n_features = feature_probability.shape
    gen = torch.Generator().manual_seed(seed)
    W = 0.1 * torch.randn(n_instances, n_hidden, n_features, generator=gen)
    W = (W * 0 if zero_init else W).requires_grad_()
    b = torch.zeros(n_instances, n_features, requires_grad=True)
    p = 1 - feature_probability if invert else feature_probability
    optimizer = torch.optim.Adam([W, b], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    losses = []
    for _ in range(steps):
        shape = (batch_size, n_instances, n_features)
        x = torch.rand(shape, generator=gen) * (torch.rand(shape, generator=gen) < p)
        x_hat = torch.relu(torch.einsum("bim,imn->bin", torch.einsum("bin,imn->bim", x, W), W) + b)
        loss = (importance * (x - x_hat) ** 2).sum(-1).mean(0)
        if zero_grad:
            optimizer.zero_grad()
        loss.sum().backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.detach())
    return {"W": W.detach(), "b": b.detach(), "losses": torch.stack(losses)}


def train_zero_init(feature_probability, importance, n_hidden, steps=400, batch_size=256, lr=0.02, seed=0):
    return _train(feature_probability, importance, n_hidden, steps, batch_size, lr, seed, zero_init=True)


def train_sparsity_inverted(feature_probability, importance, n_hidden, steps=400, batch_size=256, lr=0.02, seed=0):
    return _train(feature_probability, importance, n_hidden, steps, batch_size, lr, seed, invert=True)


def train_no_zero_grad(feature_probability, importance, n_hidden, steps=400, batch_size=256, lr=0.02, seed=0):
    return _train(feature_probability, importance, n_hidden, steps, batch_size, lr, seed, zero_grad=False)


# ---- 05.5 ---------------------------------------------------------------------------------------------------------
def _dropped(importance, n_hidden):
    return importance.sort(descending=True).values[n_hidden:]


def baseline_predicts_zero(importance, feature_probability, n_hidden):
    return float(_dropped(importance, n_hidden).sum() * feature_probability / 3)


def baseline_present_variance(importance, feature_probability, n_hidden):
    return float(_dropped(importance, n_hidden).sum() * feature_probability / 12)


def baseline_unsorted(importance, feature_probability, n_hidden):
    p = feature_probability
    return float(importance[n_hidden:].sum() * (p / 3 - p * p / 4))


# ---- 05.6 and 05.7 --------------------------------------------------------------------------------------------------
def _measures(W, rows=False, self_term=False, unnormalised=False):
    W = W.T if rows else W
    norms = W.norm(dim=0)
    unit = W if unnormalised else W / norms.clamp_min(1e-8)
    overlaps = unit.T @ W
    if not self_term:
        overlaps = overlaps * (1 - torch.eye(W.shape[1]))
    return norms, (overlaps ** 2).sum(-1)


def interference_rows_as_features(W):
    norms, interference = _measures(W, rows=True)
    return {"norms": norms, "interference": interference}


def interference_with_self(W):
    norms, interference = _measures(W, self_term=True)
    return {"norms": norms, "interference": interference}


def interference_unnormalised(W):
    norms, interference = _measures(W, unnormalised=True)
    return {"norms": norms, "interference": interference}


def dimensionality_inverted_dims(W):
    norms, interference = _measures(W)
    return {"dimensionality": norms ** 2 / (norms ** 2 + interference).clamp_min(1e-12),
            "dims_per_feature": (W ** 2).sum().item() / W.shape[0]}


def dimensionality_unnormalised(W):
    norms = W.norm(dim=0)
    return {"dimensionality": norms ** 2 / ((W.T @ W) ** 2).sum(-1).clamp_min(1e-12),
            "dims_per_feature": W.shape[0] / (W ** 2).sum().item()}


def dimensionality_without_self(W):
    norms, interference = _measures(W)
    return {"dimensionality": norms ** 2 / interference.clamp_min(1e-12),
            "dims_per_feature": W.shape[0] / (W ** 2).sum().item()}


# ---- 05.8 ---------------------------------------------------------------------------------------------------------
def phase_signed(W):  # "represented" read as W_i > 0.5: a negative weight counted as absent
    kept = W[0] > 0.5
    return "superposition" if kept[0] and kept[1] else "dedicated" if kept[1] else "not represented"


def phase_features_swapped(W):
    kept = W[0].abs() > 0.5
    return "superposition" if kept[0] and kept[1] else "dedicated" if kept[0] else "not represented"


BUGS = [
    Bug("05.1", forward_no_relu, "ReLU is missing"),
    Bug("05.1", forward_bias_outside, "bias goes inside the ReLU"),
    Bug("05.1", forward_no_bias, "bias b is missing"),
    Bug("05.1", forward_instances_mixed, "mixes instances"),
    Bug("05.2", data_sparsity_inverted, "sparsity"),
    Bug("05.2", data_one_mask_per_example, "not independent"),
    Bug("05.2", data_normal_values, "outside [0, 1]"),
    Bug("05.2", data_no_magnitude, "uniform in [0, 1]"),
    Bug("05.3", loss_no_importance, "importance is not applied"),
    Bug("05.3", loss_mean_over_features, "averaged over the features"),
    Bug("05.3", loss_importance_squared, "importance is squared"),
    Bug("05.3", loss_one_number, "one loss per instance"),
    Bug("05.4", train_zero_init, "all zeros"),
    Bug("05.4", train_sparsity_inverted, "sparsity"),
    Bug("05.4", train_no_zero_grad, "zero_grad"),
    Bug("05.5", baseline_predicts_zero, "best constant is its mean"),
    Bug("05.5", baseline_present_variance, "absent (0) with probability 1 - p"),
    Bug("05.5", baseline_unsorted, "not sorted"),
    Bug("05.6", interference_rows_as_features, "columns of W"),
    Bug("05.6", interference_with_self, "includes j = i"),
    Bug("05.6", interference_unnormalised, "unit vector"),
    Bug("05.7", dimensionality_inverted_dims, "m / ||W||_F^2"),
    Bug("05.7", dimensionality_unnormalised, "unit vector"),
    Bug("05.7", dimensionality_without_self, "leaves j = i out"),
    Bug("05.8", phase_signed, "negative weight"),
    Bug("05.8", phase_features_swapped, "feature 1"),
]
