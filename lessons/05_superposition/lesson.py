# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 05: Toy models of superposition
#
# A layer with m neurons can hold m independent directions. Yet language models seem to represent far more
# features than they have dimensions: a neuron fires for several unrelated things, and a feature is spread over
# several neurons. Elhage et al. (2022), *Toy Models of Superposition*, showed the simplest model where this
# happens and why: when features are **sparse** (rarely active), a model can store more of them than it has
# dimensions, at the price of a little interference between them, and a ReLU filters most of that price away.
#
# You will build that model from scratch, train it in seconds, and watch five features arrange themselves as a
# regular pentagon in a two-dimensional space. Then you will sweep the sparsity and measure how many dimensions
# each feature gets. No transformer is needed: the whole lesson is a few small matrices.
#
# Run it as a script (`python lesson.py`; figures go to `./minimech-out/`) or open it as a notebook.

# %%
import argparse
import math
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # a script writes PNGs; a notebook shows the figures inline
import matplotlib.pyplot as plt
import torch

MAIN = __name__ == "__main__"
DEFAULT_MODEL = "none"  # this lesson trains its own toy models; it never loads a transformer
OUT = Path("minimech-out")

if MAIN:
    parser = argparse.ArgumentParser(description="Lesson 05: toy models of superposition")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="ignored: this lesson uses no transformer")
    args, _ = parser.parse_known_args()  # known args only: a notebook kernel passes its own
    if args.model != DEFAULT_MODEL:
        print(f"lesson 05 uses no transformer; --model {args.model} is ignored")
    OUT.mkdir(exist_ok=True)
    torch.set_num_threads(1)  # the matrices are tiny: more threads cost more than they save

# %% [markdown]
# ## 1. The model
#
# There are n features x_1 ... x_n, each a number in [0, 1]. The model must squeeze them into m < n hidden
# dimensions and get them back:
#
#     h  = W x                  W is [m, n]: column W_i is the direction feature i gets in the hidden space
#     x' = ReLU(Wᵀ h + b)       the same matrix reads the features back out; b [n] is a bias per feature
#
# So x' = ReLU(WᵀW x + b). Entry (WᵀW)_ij = W_i · W_j says how much feature j leaks into the read-out of
# feature i. If the columns were orthogonal there would be no leak, but only m columns can be orthogonal. The
# bias and the ReLU are what make superposition pay: a small leak is pushed below zero by a negative bias and the
# ReLU cuts it off, while a truly active feature stands well above it.
#
# We work with batches of row vectors, as PyTorch does: x is [batch, n], so h = x Wᵀ and x' = ReLU(h W + b).

# %% [markdown]
# ### Exercise 05.1: the forward pass
#
# > **Difficulty** ★☆☆ · **Importance** ★★★ · **Time** 5 minutes
#
# Compute x' = ReLU(WᵀW x + b) for a batch. Shapes: `W` [n_hidden, n_features], `b` [n_features],
# `x` [batch, n_features]; return [batch, n_features].

# %%
def toy_forward(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # EXERCISE 05.1
    raise NotImplementedError("EXERCISE 05.1: return ReLU(W^T W x + b) for the batch of row vectors x")


# %% [markdown]
# A quick sanity check: with as many hidden dimensions as features and W the identity, the model passes any input
# in [0, 1] through unchanged.

# %%
if MAIN:
    x = torch.rand(4, 3)
    assert torch.allclose(toy_forward(torch.eye(3), torch.zeros(3), x), x)
    print("identity model reconstructs its input: ok")

# %% [markdown]
# ## 2. Sparse features
#
# The paper's data is synthetic, which is what makes the model's choices legible. Each feature is, independently,
# *absent* (exactly 0) with probability S, the **sparsity**, and otherwise uniform in [0, 1]. We will mostly talk
# about the **feature probability** p = 1 - S, the chance that a feature is present. At S = 0 every feature is
# present in every example (dense); at S = 0.99 a feature shows up once in a hundred examples.
#
# Be careful with the two names: sparsity and feature probability point in opposite directions, and mixing them
# up is the most common mistake in this lesson.

# %% [markdown]
# ### Exercise 05.2: sparse synthetic data
#
# > **Difficulty** ★☆☆ · **Importance** ★★☆ · **Time** 10 minutes
#
# Return a [batch_size, n_features] tensor. Each entry is present with probability `feature_probability` (a number,
# or a tensor [n_features] with one probability per feature), independently of every other entry; a present entry
# is uniform in [0, 1], an absent one is 0. Draw every random number from `gen` (`torch.rand(..., generator=gen)`),
# so that a seed reproduces a run.

# %%
def generate_batch(batch_size: int, n_features: int, feature_probability, gen: torch.Generator) -> torch.Tensor:
    # EXERCISE 05.2
    raise NotImplementedError("EXERCISE 05.2: sample sparse features: 0 with probability 1 - p, else uniform [0, 1]")


# %%
if MAIN:
    sample = generate_batch(10_000, 5, 0.1, torch.Generator().manual_seed(0))
    print(f"fraction of features present (p = 0.1): {(sample > 0).float().mean():.3f}")
    print(f"mean of a present feature (uniform [0, 1]: 0.5): {sample[sample > 0].mean():.3f}")

# %% [markdown]
# ## 3. Importance
#
# Not every feature is worth the same to the model. Each feature i has an **importance** I_i, and the loss is the
# importance-weighted squared error, averaged over the data:
#
#     L = E_x [ Σ_i I_i (x_i − x'_i)² ]
#
# In a batch, the expectation is the mean over examples; the sum over features is a sum. (Dividing by n as well
# would only rescale the loss, but the checks follow the paper's formula.) With importance decaying as 0.7^i,
# feature 0 matters most and feature 19 almost not at all: the model has to decide which features to keep.

# %% [markdown]
# ### Exercise 05.3: the importance-weighted loss
#
# > **Difficulty** ★☆☆ · **Importance** ★★☆ · **Time** 5 minutes
#
# `x_hat` and `x` are [batch, n_features], `importance` is [n_features]; return a scalar tensor (it must stay
# differentiable: you will call `.backward()` on it).

# %%
def importance_weighted_loss(x_hat: torch.Tensor, x: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    # EXERCISE 05.3
    raise NotImplementedError("EXERCISE 05.3: mean over the batch of sum_i importance_i * (x_i - x_hat_i)^2")


# %% [markdown]
# ## 4. Training
#
# Now put the pieces together. Initialise W [n_hidden, n_features] with normal entries of standard deviation 0.1,
# drawn from a generator seeded with `seed`, and b with zeros. At each of `steps` steps, draw a fresh batch with
# your `generate_batch` (from the same generator), compute the loss with your `toy_forward` and
# `importance_weighted_loss`, and take an Adam step on W and b (learning rate `lr`).
#
# The initialisation matters in two ways. A W that starts at exactly zero never moves: every gradient of the loss
# with respect to W passes through W itself. And a large random start is risky: a feature that starts far behind
# the others can have its read-out pushed below zero by a negative bias before it grows, and a ReLU that is off
# passes no gradient, so the feature dies for good. (Five equally important features at S = 0.95, 300 steps: with
# Xavier-normal starts, std sqrt(2 / (m + n)), about 4 runs in 100 ended with a dead feature; with std 0.1, none of
# the 1000 we tried.)

# %% [markdown]
# ### Exercise 05.4: the training loop
#
# > **Difficulty** ★★☆ · **Importance** ★★★ · **Time** 15 minutes
#
# Return a dict: `"W"` [n_hidden, n_features] and `"b"` [n_features] (detached), and `"losses"`, a tensor [steps]
# with the training loss at each step. `importance` is a tensor [n_features]; `feature_probability` is a number or
# a tensor [n_features].

# %%
def train_toy_model(n_features: int, n_hidden: int, feature_probability, importance: torch.Tensor,
                    steps: int = 300, batch_size: int = 256, lr: float = 0.03, seed: int = 0) -> dict:
    # EXERCISE 05.4
    raise NotImplementedError("EXERCISE 05.4: train W and b with Adam on fresh sparse batches; return W, b, losses")


# %% [markdown]
# ### Five features in two dimensions
#
# Train n = 5 features into m = 2 dimensions, with importance 0.8^i (feature 0 matters most), at four sparsities,
# and draw the five columns of W as arrows in the plane. Dense data (S = 0) leaves no room for tricks: the model
# keeps the two most important features on orthogonal axes and drops the other three (their arrows shrink to
# nothing). As the features get sparser, interference costs less, since two features are rarely active at once:
# at moderate sparsity four features come in, as two antipodal pairs (a feature and its opposite share a line, and
# the ReLU tells them apart), and at high sparsity all five, as a pentagon: five near-equal arrows, 72° apart.

# %%
def plot_columns(results: dict, path: Path) -> None:
    """One panel per sparsity: the columns of W [2, n] as arrows from the origin."""
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.4))
    for ax, (sparsity, W) in zip(axes, results.items()):
        for i in range(W.shape[1]):
            ax.arrow(0, 0, W[0, i].item(), W[1, i].item(), width=0.02, length_includes_head=True, color=f"C{i}")
        ax.set(xlim=(-1.5, 1.5), ylim=(-1.5, 1.5), aspect="equal", title=f"S = {sparsity}")
        ax.axhline(0, color="0.85", lw=0.5)
        ax.axvline(0, color="0.85", lw=0.5)
    fig.suptitle("Columns of W: 5 features in 2 dimensions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if MAIN:
    pentagon = {}
    for sparsity in (0.0, 0.5, 0.8, 0.95):
        run = train_toy_model(5, 2, 1 - sparsity, 0.8 ** torch.arange(5.0), steps=600, seed=0)
        pentagon[sparsity] = run["W"]
        norms = run["W"].norm(dim=0)
        print(f"S = {sparsity:4}: column norms {[round(v, 2) for v in norms.tolist()]}, "
              f"final loss {run['losses'][-50:].mean():.4f}")
    plot_columns(pentagon, OUT / "05_pentagon.png")

# %% [markdown]
# ## 5. Measuring superposition
#
# Pictures work for two dimensions. For more, the paper measures a few numbers from W alone. For each feature i:
#
# - its **norm** ||W_i||: about 1 if the model represents the feature, about 0 if it dropped it;
# - its **interference** Σ_{j≠i} (Ŵ_i · W_j)², where Ŵ_i = W_i / ||W_i||: how much the other features project
#   onto feature i's direction. Zero means feature i has a dimension to itself;
# - its **dimensionality** D_i = ||W_i||² / Σ_j (Ŵ_i · W_j)² (the sum includes j = i, which contributes ||W_i||²):
#   the fraction of a dimension the feature gets. A feature alone in its direction has D_i = 1; two antipodal
#   features share one dimension, 1/2 each; the pentagon's features get 2/5 each. A dropped feature gets 0.
#
# And for the whole model, the **dimensions per feature** D* = m / ||W||_F²: since ||W||_F² = Σ_i ||W_i||²
# counts (roughly) how many features are represented, D* is how many dimensions each of them gets on average.

# %% [markdown]
# ### Exercise 05.5: feature geometry
#
# > **Difficulty** ★★☆ · **Importance** ★★★ · **Time** 15 minutes
#
# From `W` [n_hidden, n_features], return a dict with `"norms"`, `"interference"` and `"dimensionality"`, each a
# tensor [n_features], and `"dims_per_feature"`, a float. Features are the **columns** of W. A column of zeros
# (a dropped feature) has interference 0 and dimensionality 0: divide by max(||W_i||, 1e-8), not by ||W_i||.

# %%
def feature_geometry(W: torch.Tensor) -> dict:
    # EXERCISE 05.5
    raise NotImplementedError("EXERCISE 05.5: norms, interference and dimensionality of W's columns; m / ||W||_F^2")


# %%
if MAIN:
    angles = torch.arange(5) * 2 * math.pi / 5
    regular_pentagon = torch.stack([angles.cos(), angles.sin()])  # [2, 5]: unit columns 72° apart
    geometry = feature_geometry(regular_pentagon)
    print("a regular pentagon: dimensionality", [round(v, 3) for v in geometry["dimensionality"].tolist()],
          f"(2/5 = 0.4), dims per feature {geometry['dims_per_feature']:.3f}")
    trained = feature_geometry(pentagon[0.95])
    print("the trained model at S = 0.95: dimensionality", [round(v, 3) for v in trained["dimensionality"].tolist()])

# %% [markdown]
# ## 6. The sparsity sweep
#
# The paper's main experiment: n = 20 features into m = 5 dimensions, importance I_i = 0.7^i, and a range of
# sparsities. For each trained model we draw WᵀW (which features share directions, and with what sign) and the
# column norms, coloured by interference (dark: a dimension to itself; light: shared). Dense, the model keeps the
# five most important features, orthogonally, like PCA. Sparser, more and more features come in, first in
# antipodal pairs (D_i = 1/2), later in pentagons and other polytopes.

# %%
SPARSITIES = (0.0, 0.7, 0.9, 0.97, 0.99)


def plot_sweep(runs: dict, path: Path) -> None:
    """Per sparsity: W^T W as a heatmap above a bar chart of the column norms coloured by interference."""
    fig, axes = plt.subplots(2, len(runs), figsize=(2.6 * len(runs), 5.2), gridspec_kw={"height_ratios": [1, 1]})
    for col, (sparsity, W) in enumerate(runs.items()):
        geometry = feature_geometry(W)
        axes[0, col].imshow((W.T @ W).numpy(), cmap="RdBu", vmin=-1, vmax=1)
        axes[0, col].set(title=f"S = {sparsity}", xticks=[], yticks=[])
        shade = 1 - geometry["interference"].clamp(0, 1).numpy()  # 1: a dimension of its own
        axes[1, col].barh(range(W.shape[1]), geometry["norms"].numpy(), color=plt.cm.viridis(shade))
        axes[1, col].set(xlim=(0, 1.5), ylim=(W.shape[1] - 0.5, -0.5), yticks=[],
                         xlabel=f"||W_i||; D* = {geometry['dims_per_feature']:.2f}")
    axes[0, 0].set_ylabel("Wᵀ W")
    axes[1, 0].set_ylabel("features, most important on top")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_dimensionality(runs: dict, path: Path) -> None:
    """Dimensions per feature against 1 / (1 - S), with each feature's dimensionality as a dot."""
    fig, ax = plt.subplots(figsize=(6, 4))
    inverse_density = [1 / (1 - s) for s in runs]
    geometries = [feature_geometry(W) for W in runs.values()]
    ax.plot(inverse_density, [g["dims_per_feature"] for g in geometries], "k-o", label="m / ||W||_F²")
    for x, g in zip(inverse_density, geometries):
        kept = g["norms"] > 0.5  # represented features only
        ax.scatter([x] * int(kept.sum()), g["dimensionality"][kept], color="C1", alpha=0.5, s=14)
    for fraction in (1, 3 / 4, 2 / 3, 1 / 2, 2 / 5, 1 / 3):
        ax.axhline(fraction, color="0.85", lw=0.7, zorder=0)
    ax.set(xscale="log", xlabel="1 / (1 - S)", ylabel="dimensions per feature", ylim=(0, 1.1))
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if MAIN:
    importance = 0.7 ** torch.arange(20.0)
    sweep = {}
    for sparsity in SPARSITIES:
        sweep[sparsity] = train_toy_model(20, 5, 1 - sparsity, importance, steps=600, lr=0.02, seed=0)["W"]
        g = feature_geometry(sweep[sparsity])
        print(f"S = {sparsity:5}: {int((g['norms'] > 0.5).sum()):2d} of 20 features represented, "
              f"dims per feature {g['dims_per_feature']:.3f}")
    plot_sweep(sweep, OUT / "05_sparsity_sweep.png")
    plot_dimensionality(sweep, OUT / "05_dimensions_per_feature.png")
    print(f"figures written to {OUT.resolve()}")

# %% [markdown]
# ## What you found
#
# With dense features the toy model behaves like PCA: it keeps the m most important features on orthogonal axes and
# ignores the rest. With sparse features it stores more features than it has dimensions, in superposition, and it
# does so in a structured way: features come in at fractions of a dimension (1, 1/2, 2/5, 1/3 ...) that match
# regular polytopes, with sudden transitions between them as the sparsity changes. The ReLU and the negative bias
# are essential: they absorb the small interference that superposition creates.
#
# This is the leading explanation for polysemantic neurons in real networks, and the reason sparse dictionary
# learning (sparse autoencoders) is used to pull features back out of activations.
