"""Reference solutions for lesson 05 (toy models of superposition). Never imported by checks.py."""

from __future__ import annotations

import torch


def toy_forward(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x' = ReLU(W^T W x + b) for every instance at once: W [inst, n_hidden, n_features], b [inst, n_features],
    x [batch, inst, n_features] -> [batch, inst, n_features]."""
    hidden = torch.einsum("bin,imn->bim", x, W)  # [batch, inst, n_hidden]: h = W x, the compressed representation
    return torch.relu(torch.einsum("bim,imn->bin", hidden, W) + b)  # W^T h + b, then the ReLU


def generate_batch(batch_size: int, feature_probability: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """[batch, inst, n_features]: each entry is 0 with probability 1 - p (p = feature_probability [inst,
    n_features]), else uniform in [0, 1], independently of every other entry."""
    u = torch.rand((batch_size, *feature_probability.shape), generator=gen)  # [batch, inst, n_features]
    # present when u < p; given that, u / p is uniform in [0, 1]: one random number per entry does both jobs
    return torch.where(u < feature_probability, u / feature_probability, 0.0)


def importance_weighted_loss(x_hat: torch.Tensor, x: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    """[inst]: each instance's mean over the batch of sum_i I_i (x_i - x'_i)^2; x_hat, x [batch, inst, n_features],
    importance [inst, n_features]."""
    return (importance * (x - x_hat) ** 2).sum(-1).mean(0)


def train_toy_models(feature_probability: torch.Tensor, importance: torch.Tensor, n_hidden: int,
                     steps: int = 400, batch_size: int = 256, lr: float = 0.02, seed: int = 0) -> dict:
    """Train one toy model per row of feature_probability / importance [inst, n_features], all at once; returns
    {"W" [inst, n_hidden, n_features], "b" [inst, n_features], "losses" [steps, inst]}."""
    n_instances, n_features = feature_probability.shape
    gen = torch.Generator().manual_seed(seed)
    # A small start (std 0.1): with a larger random one, a feature that starts far behind can see its read-out pushed
    # below zero by the bias before it grows, and a ReLU that is off passes no gradient: the feature dies.
    W = (0.1 * torch.randn(n_instances, n_hidden, n_features, generator=gen)).requires_grad_()
    b = torch.zeros(n_instances, n_features, requires_grad=True)
    optimizer = torch.optim.Adam([W, b], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    losses = []
    for _ in range(steps):
        x = generate_batch(batch_size, feature_probability, gen)  # [batch, inst, n_features]
        loss = importance_weighted_loss(toy_forward(W, b, x), x, importance)  # [inst]
        optimizer.zero_grad()
        loss.sum().backward()  # the sum: each instance's gradient is its own loss's
        optimizer.step()
        schedule.step()
        losses.append(loss.detach())
    return {"W": W.detach(), "b": b.detach(), "losses": torch.stack(losses)}


def no_superposition_loss(importance: torch.Tensor, feature_probability: float, n_hidden: int) -> float:
    """The expected loss of the best model that gives each kept feature a dimension of its own: the n_hidden most
    important features reconstructed exactly, every other one replaced by its mean p / 2, which leaves its variance
    E[x^2] - E[x]^2 = p / 3 - p^2 / 4 times its importance."""
    p = float(feature_probability)
    dropped = importance.sort(descending=True).values[n_hidden:]  # [n_features - n_hidden]
    return float(dropped.sum() * (p / 3 - p * p / 4))


def feature_norms_and_interference(W: torch.Tensor) -> dict:
    """W [n_hidden, n_features] -> {"norms": [n], "interference": [n]}: ||W_i|| and sum_{j != i} (W^_i . W_j)^2."""
    norms = W.norm(dim=0)  # [n_features]: ||W_i||, how strongly feature i is represented
    directions = W / norms.clamp_min(1e-8)  # [n_hidden, n_features]: W_i / ||W_i|| (0 for a dead feature)
    overlaps = directions.T @ W  # [n_features, n_features]: entry [i, j] = W^_i . W_j
    off_diagonal = overlaps * (1 - torch.eye(W.shape[1]))  # j = i left out
    return {"norms": norms, "interference": (off_diagonal ** 2).sum(-1)}


def feature_dimensionality(W: torch.Tensor) -> dict:
    """W [n_hidden, n_features] -> {"dimensionality": [n], "dims_per_feature": float}: D_i = ||W_i||^2 /
    sum_j (W^_i . W_j)^2, and D* = n_hidden / ||W||_F^2."""
    norms = W.norm(dim=0)  # [n_features]
    overlaps = (W / norms.clamp_min(1e-8)).T @ W  # [n_features, n_features]: W^_i . W_j, diagonal ||W_i||
    dimensionality = norms ** 2 / (overlaps ** 2).sum(-1).clamp_min(1e-12)  # 0 for a dead feature
    return {"dimensionality": dimensionality, "dims_per_feature": (W.shape[0] / (W ** 2).sum()).item()}


def phase_of(W: torch.Tensor) -> str:
    """The n = 2, m = 1 model W [1, 2]: what it did with feature 1 (the one whose importance varies)."""
    kept = W[0].abs() > 0.5  # [2]: a represented feature has |W_i| near 1, whatever its sign
    if kept[0] and kept[1]:
        return "superposition"  # both in one dimension (with opposite signs: an antipodal pair)
    return "dedicated" if kept[1] else "not represented"
