"""Planted bugs for lesson 05: each is one classic mistake, and the checks must name it."""

from __future__ import annotations

import torch

from minimech.grading import Bug


# ---- 05.1 ---------------------------------------------------------------------------------------------------------
def forward_no_relu(W, b, x):
    return x @ W.T @ W + b


def forward_bias_outside(W, b, x):
    return torch.relu(x @ W.T @ W) + b


def forward_w_once(W, b, x):
    return torch.relu(x @ W.T + b) if W.shape[0] == W.shape[1] else x @ W.T


def forward_no_bias(W, b, x):
    return torch.relu(x @ W.T @ W)


# ---- 05.2 ---------------------------------------------------------------------------------------------------------
def _p(feature_probability, n):
    return torch.as_tensor(feature_probability, dtype=torch.float32).expand(n)


def data_sparsity_inverted(batch_size, n_features, feature_probability, gen):
    present = torch.rand(batch_size, n_features, generator=gen) < 1 - _p(feature_probability, n_features)
    return torch.rand(batch_size, n_features, generator=gen) * present


def data_one_mask_per_example(batch_size, n_features, feature_probability, gen):
    present = torch.rand(batch_size, 1, generator=gen) < _p(feature_probability, n_features)
    return torch.rand(batch_size, n_features, generator=gen) * present


def data_normal_values(batch_size, n_features, feature_probability, gen):
    present = torch.rand(batch_size, n_features, generator=gen) < _p(feature_probability, n_features)
    return torch.randn(batch_size, n_features, generator=gen) * present


def data_no_magnitude(batch_size, n_features, feature_probability, gen):
    return (torch.rand(batch_size, n_features, generator=gen) < _p(feature_probability, n_features)).float()


# ---- 05.3 ---------------------------------------------------------------------------------------------------------
def loss_no_importance(x_hat, x, importance):
    return ((x - x_hat) ** 2).sum(-1).mean()


def loss_mean_over_features(x_hat, x, importance):
    return (importance * (x - x_hat) ** 2).mean()


def loss_importance_squared(x_hat, x, importance):
    return ((importance * (x - x_hat)) ** 2).sum(-1).mean()


# ---- 05.4 ---------------------------------------------------------------------------------------------------------
def _train(n_features, n_hidden, feature_probability, importance, steps, batch_size, lr, seed,
           zero_init=False, invert=False, zero_grad=True):
    gen = torch.Generator().manual_seed(seed)
    W = 0.1 * torch.randn(n_hidden, n_features, generator=gen)
    W = (W * 0 if zero_init else W).requires_grad_()
    b = torch.zeros(n_features, requires_grad=True)
    p = _p(feature_probability, n_features)
    p = 1 - p if invert else p
    optimizer = torch.optim.Adam([W, b], lr=lr)
    losses = []
    for _ in range(steps):
        x = torch.rand(batch_size, n_features, generator=gen) * (torch.rand(batch_size, n_features, generator=gen) < p)
        loss = (importance * (x - torch.relu(x @ W.T @ W + b)) ** 2).sum(-1).mean()
        if zero_grad:
            optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return {"W": W.detach(), "b": b.detach(), "losses": torch.tensor(losses)}


def train_zero_init(n_features, n_hidden, feature_probability, importance, steps=300, batch_size=256, lr=0.03,
                    seed=0):
    return _train(n_features, n_hidden, feature_probability, importance, steps, batch_size, lr, seed, zero_init=True)


def train_sparsity_inverted(n_features, n_hidden, feature_probability, importance, steps=300, batch_size=256,
                            lr=0.03, seed=0):
    return _train(n_features, n_hidden, feature_probability, importance, steps, batch_size, lr, seed, invert=True)


def train_no_zero_grad(n_features, n_hidden, feature_probability, importance, steps=300, batch_size=256, lr=0.03,
                       seed=0):
    return _train(n_features, n_hidden, feature_probability, importance, steps, batch_size, lr, seed, zero_grad=False)


# ---- 05.5 ---------------------------------------------------------------------------------------------------------
def _geometry(W, rows=False, self_term=False, unnormalised=False, inverted=False):
    W = W.T if rows else W
    norms = W.norm(dim=0)
    unit = W if unnormalised else W / norms.clamp_min(1e-8)
    overlaps = unit.T @ W
    if not self_term:
        overlaps = overlaps * (1 - torch.eye(W.shape[1]))
    interference = (overlaps ** 2).sum(-1)
    dimensionality = norms ** 2 / (norms ** 2 * (not self_term) + interference).clamp_min(1e-12)
    frobenius_sq = (W ** 2).sum().item()
    dims = frobenius_sq / W.shape[0] if inverted else W.shape[0] / frobenius_sq
    return {"norms": norms, "interference": interference, "dimensionality": dimensionality, "dims_per_feature": dims}


def geometry_rows_as_features(W):
    return _geometry(W, rows=True)


def geometry_self_interference(W):
    return _geometry(W, self_term=True)


def geometry_unnormalised(W):
    return _geometry(W, unnormalised=True)


def geometry_dims_inverted(W):
    return _geometry(W, inverted=True)


BUGS = [
    Bug("05.1", forward_no_relu, "ReLU is missing"),
    Bug("05.1", forward_bias_outside, "bias goes inside the ReLU"),
    Bug("05.1", forward_w_once, "W^T W"),
    Bug("05.1", forward_no_bias, "bias b is missing"),
    Bug("05.2", data_sparsity_inverted, "sparsity"),
    Bug("05.2", data_one_mask_per_example, "not independent"),
    Bug("05.2", data_normal_values, "outside [0, 1]"),
    Bug("05.2", data_no_magnitude, "uniform in [0, 1]"),
    Bug("05.3", loss_no_importance, "importance is not applied"),
    Bug("05.3", loss_mean_over_features, "averaged over the features"),
    Bug("05.3", loss_importance_squared, "importance is squared"),
    Bug("05.4", train_zero_init, "all zeros"),
    Bug("05.4", train_sparsity_inverted, "sparsity"),
    Bug("05.4", train_no_zero_grad, "zero_grad"),
    Bug("05.5", geometry_rows_as_features, "columns of W"),
    Bug("05.5", geometry_self_interference, "includes j = i"),
    Bug("05.5", geometry_unnormalised, "unit vector"),
    Bug("05.5", geometry_dims_inverted, "m / ||W||_F^2"),
]
