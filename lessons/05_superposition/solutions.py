"""Reference solutions for lesson 05 (toy models of superposition). Never imported by checks.py."""

from __future__ import annotations

import torch


def toy_forward(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x' = ReLU(W^T W x + b) for a batch of row vectors x [batch, n_features]; W [n_hidden, n_features]."""
    hidden = x @ W.T  # [batch, n_hidden]: h = W x, the compressed representation
    return torch.relu(hidden @ W + b)  # [batch, n_features]: W^T h + b, then the ReLU


def generate_batch(batch_size: int, n_features: int, feature_probability, gen: torch.Generator) -> torch.Tensor:
    """[batch, n_features]: each feature is 0 with probability 1 - p (p = feature_probability, a number or [n]),
    else uniform in [0, 1], independently of every other feature and example."""
    p = torch.as_tensor(feature_probability, dtype=torch.float32).expand(n_features)  # [n_features]
    present = torch.rand(batch_size, n_features, generator=gen) < p  # [batch, n_features]
    values = torch.rand(batch_size, n_features, generator=gen)  # [batch, n_features]
    return values * present


def importance_weighted_loss(x_hat: torch.Tensor, x: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    """Scalar: the mean over the batch of sum_i I_i (x_i - x'_i)^2; x_hat, x [batch, n_features], importance [n]."""
    return (importance * (x - x_hat) ** 2).sum(-1).mean()


def train_toy_model(n_features: int, n_hidden: int, feature_probability, importance: torch.Tensor,
                    steps: int = 300, batch_size: int = 256, lr: float = 0.03, seed: int = 0) -> dict:
    """Train W [n_hidden, n_features] and b [n_features] with Adam; returns {"W", "b", "losses" [steps]}."""
    gen = torch.Generator().manual_seed(seed)
    # A small start (std 0.1): with a larger random one, a feature that starts far behind can see its read-out pushed
    # below zero by the bias before it grows, and a ReLU that is off passes no gradient: the feature dies.
    W = (0.1 * torch.randn(n_hidden, n_features, generator=gen)).requires_grad_()
    b = torch.zeros(n_features, requires_grad=True)
    optimizer = torch.optim.Adam([W, b], lr=lr)
    losses = []
    for _ in range(steps):
        x = generate_batch(batch_size, n_features, feature_probability, gen)  # [batch, n_features]
        loss = importance_weighted_loss(toy_forward(W, b, x), x, importance)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return {"W": W.detach(), "b": b.detach(), "losses": torch.tensor(losses)}


def feature_geometry(W: torch.Tensor) -> dict:
    """How W [n_hidden, n_features] packs its features: norms [n], interference [n], dimensionality [n] and
    dims_per_feature (a number)."""
    norms = W.norm(dim=0)  # [n_features]: ||W_i||, how strongly feature i is represented
    directions = W / norms.clamp_min(1e-8)  # [n_hidden, n_features]: W_i / ||W_i|| (0 for a dead feature)
    overlaps = directions.T @ W  # [n_features, n_features]: entry [i, j] = W^_i . W_j
    off_diagonal = overlaps * (1 - torch.eye(W.shape[1]))  # [n_features, n_features]: j = i left out
    interference = (off_diagonal ** 2).sum(-1)  # [n_features]: sum over j != i of (W^_i . W_j)^2
    dimensionality = norms ** 2 / (norms ** 2 + interference).clamp_min(1e-12)  # [n_features]
    return {"norms": norms, "interference": interference, "dimensionality": dimensionality,
            "dims_per_feature": (W.shape[0] / (W ** 2).sum()).item()}
