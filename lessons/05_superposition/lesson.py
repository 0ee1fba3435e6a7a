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
# several neurons. Elhage et al. (2022), *Toy Models of Superposition*, built the simplest model in which this can
# happen, and asked when it does.
#
# You will build that model, train hundreds of copies of it at once, and find out for yourself what it does with
# more features than dimensions: which features it keeps, how it arranges them, and what decides it. Before each
# measurement the lesson asks you to write down a prediction (`prediction_1 = ...`); the checks record that you
# made one, never whether it was right.
#
# Run it as a script (`python lesson.py`: figures go to `./minimech-out/`) or as a notebook
# (`minimech start 05 --notebook`: figures show inline).

# %%
import argparse
import math
import os
from contextlib import contextmanager
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from minimech.notebook import show

MAIN = __name__ == "__main__"
DEFAULT_MODEL = "none"  # this lesson trains its own toy models; it never loads a transformer
OUT = Path("minimech-out")
# Training steps of the experiments. MINIMECH_QUICK=1 (the test suite's smoke run) takes 60: the script runs top
# to bottom in seconds, but the models are then too little trained to show the paper's results.
STEPS = 60 if os.environ.get("MINIMECH_QUICK") else 2000


@contextmanager
def demo(what: str):
    """Run a demo cell; if it needs an exercise that is not written yet, say so and go on."""
    print(f"\n== {what}")
    try:
        yield
    except NotImplementedError as e:
        print(f"   skipped: {e}")
    except NameError as e:  # a result an earlier, skipped cell would have made
        print(f"   skipped: {e} (an earlier cell was skipped)")


if MAIN:
    parser = argparse.ArgumentParser(description="Lesson 05: toy models of superposition")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="ignored: this lesson uses no transformer")
    args, _ = parser.parse_known_args()  # known args only: a notebook kernel passes its own
    if args.model != DEFAULT_MODEL:
        print(f"lesson 05 uses no transformer; --model {args.model} is ignored")
    torch.set_num_threads(1)  # the matrices are small: more threads cost more than they save

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
# feature i. If the columns were orthogonal there would be no leak, but only m columns can be orthogonal.
#
# Each model is tiny, so we train many at once, as independent **instances**: W is [inst, m, n], b is [inst, n],
# and a batch x is [batch, inst, n] (instance k of every example goes through model k only). `torch.einsum`
# keeps the axes readable: `torch.einsum("bin,imn->bim", x, W)` is h for every instance.

# %% [markdown]
# ### Exercise 05.1: the forward pass
#
# > **Difficulty** ★☆☆ · **Importance** ★★★ · **Time** 5 minutes
#
# Compute x' = ReLU(WᵀW x + b) for every instance. Shapes: `W` [inst, n_hidden, n_features], `b` [inst,
# n_features], `x` [batch, inst, n_features]; return [batch, inst, n_features].

# %%
def toy_forward(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # EXERCISE 05.1
    raise NotImplementedError("EXERCISE 05.1: return ReLU(W^T W x + b) for every instance and example")


# %% [markdown]
# A quick sanity check: with as many hidden dimensions as features and W the identity, the model passes any input
# in [0, 1] through unchanged.

# %%
if MAIN:
    with demo("05.1 the identity model"):
        x = torch.rand(4, 2, 3)  # [batch 4, 2 instances, 3 features]
        assert torch.allclose(toy_forward(torch.eye(3).expand(2, 3, 3), torch.zeros(2, 3), x), x)
        print("   the identity model reconstructs its input: ok")

# %% [markdown]
# ## 2. Sparse features
#
# The paper's data is synthetic, which is what makes the model's choices legible. Each feature is, independently,
# *absent* (exactly 0) with probability S, the **sparsity**, and otherwise uniform in [0, 1]. We mostly use the
# **feature probability** (or density) p = 1 − S, the chance that a feature is present. At S = 0 every feature is
# present in every example (dense); at S = 0.99 a feature shows up once in a hundred examples.
#
# Sparsity and feature probability point in opposite directions: mixing them up is the most common mistake here.

# %% [markdown]
# ### Exercise 05.2: sparse synthetic data
#
# > **Difficulty** ★☆☆ · **Importance** ★★☆ · **Time** 10 minutes
#
# `feature_probability` is [inst, n_features] (each instance may have its own densities). Return a [batch_size,
# inst, n_features] tensor whose entries are independent: present with probability p, then uniform in [0, 1];
# absent (0) otherwise. Draw every random number from `gen` (`torch.rand(..., generator=gen)`), so that a seed
# reproduces a run. (One random number per entry is enough: if u < p, then u / p is uniform in [0, 1].)

# %%
def generate_batch(batch_size: int, feature_probability: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # EXERCISE 05.2
    raise NotImplementedError("EXERCISE 05.2: sample sparse features: 0 with probability 1 - p, else uniform [0, 1]")


# %%
if MAIN:
    with demo("05.2 a sparse batch"):
        sample = generate_batch(10_000, torch.tensor([[0.1] * 5]), torch.Generator().manual_seed(0))
        print(f"   fraction of features present (p = 0.1): {(sample > 0).float().mean():.3f}")
        print(f"   mean of a present feature (uniform [0, 1]: 0.5): {sample[sample > 0].mean():.3f}")

# %% [markdown]
# ## 3. Importance
#
# Not every feature is worth the same. Each feature i has an **importance** I_i, and the loss is the
# importance-weighted squared error, averaged over the data:
#
#     L = E_x [ Σ_i I_i (x_i − x'_i)² ]
#
# In a batch, the expectation is the mean over examples; the sum over features is a sum. Each instance has its own
# loss: training adds them up, and since no instance's loss depends on another's weights, each model learns as if
# it were alone.

# %% [markdown]
# ### Exercise 05.3: the importance-weighted loss
#
# > **Difficulty** ★☆☆ · **Importance** ★★☆ · **Time** 5 minutes
#
# `x_hat` and `x` are [batch, inst, n_features], `importance` is [inst, n_features]; return each instance's loss,
# a tensor [inst] (it must stay differentiable).

# %%
def importance_weighted_loss(x_hat: torch.Tensor, x: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    # EXERCISE 05.3
    raise NotImplementedError("EXERCISE 05.3: per instance, mean over the batch of sum_i importance_i * (x_i - x'_i)^2")


# %% [markdown]
# ## 4. Training
#
# Initialise W [inst, n_hidden, n_features] with normal entries of standard deviation 0.1, drawn from a generator
# seeded with `seed`, and b [inst, n_features] with zeros. At each of `steps` steps draw a fresh batch with your
# `generate_batch` (from the same generator), compute each instance's loss with your `toy_forward` and
# `importance_weighted_loss`, and take an Adam step (learning rate `lr`) on the **sum** of the instances' losses.
# Let the learning rate decay to zero along a cosine, `torch.optim.lr_scheduler.CosineAnnealingLR(optimizer,
# T_max=steps)` (call its `.step()` after the optimizer's): the last steps then settle instead of jittering.
#
# Why a small start? A W that starts at exactly zero never moves (every gradient with respect to W passes through
# W itself), and a large random start can kill a feature: one that starts far behind has its read-out pushed below
# zero by a negative bias before it grows, and a ReLU that is off passes no gradient.

# %% [markdown]
# ### Exercise 05.4: the training loop
#
# > **Difficulty** ★★☆ · **Importance** ★★★ · **Time** 15 minutes
#
# `feature_probability` and `importance` are [inst, n_features]. Return a dict: `"W"` [inst, n_hidden,
# n_features] and `"b"` [inst, n_features] (detached), and `"losses"` [steps, inst], each instance's loss at
# each step.

# %%
def train_toy_models(feature_probability: torch.Tensor, importance: torch.Tensor, n_hidden: int,
                     steps: int = 400, batch_size: int = 256, lr: float = 0.02, seed: int = 0) -> dict:
    # EXERCISE 05.4
    raise NotImplementedError("EXERCISE 05.4: train every instance's W and b with Adam; return W, b, losses")


# %% [markdown]
# A training run can end in a poor local minimum (a feature whose ReLU died early never comes back), so for every
# setting we train a few instances from different random starts and keep the one with the lowest final loss, as
# Elhage et al. do. `best_of` does that bookkeeping.

# %%
def best_of(run: dict, n_inits: int) -> dict:
    """Instances are laid out as [setting 0's inits ..., setting 1's inits ...]: per setting, the instance with the
    lowest loss over the last tenth of training. Returns W [settings, m, n], b [settings, n], final loss [settings]."""
    tail = max(1, run["losses"].shape[0] // 10)
    final = run["losses"][-tail:].mean(0).view(-1, n_inits)  # [settings, inits]
    best = final.argmin(1) + torch.arange(final.shape[0]) * n_inits  # [settings]: the winning instance
    return {"W": run["W"][best], "b": run["b"][best], "loss": final.min(1).values}


def settings(values: list, n_features: int, n_inits: int) -> torch.Tensor:
    """[len(values) * n_inits, n_features]: each value repeated n_inits times, for every feature."""
    return torch.tensor(values, dtype=torch.float32).repeat_interleave(n_inits)[:, None].expand(-1, n_features)


# %% [markdown]
# ## 5. Five features in two dimensions
#
# Train n = 5 features into m = 2 dimensions, with importance 0.8^i (feature 0 matters most), at four sparsities
# S = 0, 0.5, 0.8 and 0.95, and draw the five columns of W as arrows in the plane.
#
# A PCA-like model would keep the two most important features, on orthogonal axes, whatever the sparsity. Does the
# toy model do that?

# %%
prediction_1 = None  # your guess: how many of the 5 features the model represents at S = 0 and at S = 0.95, e.g. (2, 3)

# %%
PENTAGON_SPARSITIES = (0.0, 0.5, 0.8, 0.95)
N_INITS = 3


def plot_columns(results: dict, path: Path) -> None:
    """One panel per sparsity: the columns of W [2, n] as arrows from the origin."""
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.4))
    for ax, (sparsity, W) in zip(axes, results.items()):
        for i in range(W.shape[1]):
            ax.arrow(0, 0, W[0, i].item(), W[1, i].item(), width=0.02, length_includes_head=True, color=f"C{i}")
        ax.set(xlim=(-1.5, 1.5), ylim=(-1.5, 1.5), aspect="equal", title=f"S = {sparsity}")
        ax.axhline(0, color="0.85", lw=0.5)
        ax.axvline(0, color="0.85", lw=0.5)
    fig.suptitle("Columns of W: 5 features in 2 dimensions (colour: feature 0 = most important)")
    fig.tight_layout()
    show(fig, path)


if MAIN:
    with demo("5 features in 2 dimensions"):
        density = settings([1 - s for s in PENTAGON_SPARSITIES], 5, N_INITS)  # [4 * 3, 5]
        importance_5 = (0.8 ** torch.arange(5.0)).expand(len(density), -1)
        five = best_of(train_toy_models(density, importance_5, 2, steps=STEPS, batch_size=512, seed=0), N_INITS)
        pentagon = dict(zip(PENTAGON_SPARSITIES, five["W"]))
        for sparsity, W in pentagon.items():
            print(f"   S = {sparsity:4}: column norms {[round(v, 2) for v in W.norm(dim=0).tolist()]}")
        plot_columns(pentagon, OUT / "05_pentagon.png")

# %% [markdown]
# Read the norms and the arrows before going on. A feature the model dropped has a column near 0; a kept one has
# norm near 1. Where two kept features point in opposite directions they share a line (an **antipodal pair**); the
# ReLU tells them apart, because x_i and −x_i cannot both be positive. Five equal arrows 72° apart would share the
# plane evenly (section 7 measures how much of a dimension each then gets). Which of these did you get at each
# sparsity, and was your prediction right?
#
# The denser the data, the more often two features are active together and interfere; the sparser, the rarer
# those collisions, and the cheaper it is to share directions.

# %% [markdown]
# ## 6. Is superposition worth it?
#
# Compare with the best a model can do *without* superposition: give the m most important features a dimension
# each (reconstructed exactly) and drop the others. For a dropped feature the best the bias can do is predict its
# mean, E[x_i] = p/2, which leaves its variance, E[x_i²] − E[x_i]² = p/3 − p²/4 (a present feature is uniform in
# [0, 1]: E[x²] = 1/3 given present). So that model's expected loss is Σ over the dropped features of
# I_i (p/3 − p²/4).

# %% [markdown]
# ### Exercise 05.5: the loss without superposition
#
# > **Difficulty** ★☆☆ · **Importance** ★★☆ · **Time** 10 minutes
#
# `importance` [n_features], a number `feature_probability` (the same for every feature) and `n_hidden`; return
# the expected loss (a float) of the model that keeps the `n_hidden` most important features exactly and predicts
# every other one by its mean.

# %%
def no_superposition_loss(importance: torch.Tensor, feature_probability: float, n_hidden: int) -> float:
    # EXERCISE 05.5
    raise NotImplementedError("EXERCISE 05.5: sum over the dropped features of I_i (p/3 - p^2/4)")


# %% [markdown]
# Now compare the models you trained in section 5 with this baseline. At S = 0.95, what fraction of the
# no-superposition loss do you expect the trained model to pay?

# %%
prediction_2 = None  # your guess: at S = 0.95, the trained model's loss divided by the no-superposition loss, e.g. 0.9

# %%
if MAIN:
    with demo("trained loss against the loss without superposition"):
        for sparsity, loss in zip(PENTAGON_SPARSITIES, five["loss"].tolist()):
            baseline = no_superposition_loss(0.8 ** torch.arange(5.0), 1 - sparsity, 2)
            print(f"   S = {sparsity:4}: trained {loss:.4f}, without superposition {baseline:.4f} "
                  f"(ratio {loss / baseline:.2f})")

# %% [markdown]
# At S = 0 the trained model should match the baseline (it *is* that model); the sparser the data, the further
# below it the trained model gets. Superposition is not a curiosity of the geometry: it is what minimises the loss.

# %% [markdown]
# ## 7. Measuring superposition
#
# Pictures work for two dimensions. For more, the paper measures a few numbers from W alone. For each feature i:
#
# - its **norm** ||W_i||: about 1 if the model represents the feature, about 0 if it dropped it;
# - its **interference** Σ_{j≠i} (Ŵ_i · W_j)², where Ŵ_i = W_i / ||W_i||: how much the other features project
#   onto feature i's direction. Zero means feature i has a dimension to itself;
# - its **dimensionality** D_i = ||W_i||² / Σ_j (Ŵ_i · W_j)² (the sum includes j = i, which contributes
#   ||W_i||²): the fraction of a dimension the feature gets;
# - and for the whole model the **dimensions per feature** D* = m / ||W||_F²: ||W||_F² = Σ_i ||W_i||² counts
#   (roughly) how many features are represented, so D* is the dimensions each gets on average.

# %% [markdown]
# ### Exercise 05.6: norms and interference
#
# > **Difficulty** ★★☆ · **Importance** ★★★ · **Time** 10 minutes
#
# From one model's `W` [n_hidden, n_features], return `{"norms": [n_features], "interference": [n_features]}`.
# Features are the **columns** of W. A column of zeros (a dropped feature) has interference 0: divide by
# max(||W_i||, 1e-8), not by ||W_i||.

# %%
def feature_norms_and_interference(W: torch.Tensor) -> dict:
    # EXERCISE 05.6
    raise NotImplementedError("EXERCISE 05.6: ||W_i|| and sum over j != i of (W_i/||W_i|| . W_j)^2, per column")


# %% [markdown]
# ### Exercise 05.7: dimensionality
#
# > **Difficulty** ★★☆ · **Importance** ★★★ · **Time** 10 minutes
#
# From `W` [n_hidden, n_features], return `{"dimensionality": [n_features], "dims_per_feature": float}`. A dropped
# feature has dimensionality 0.

# %%
def feature_dimensionality(W: torch.Tensor) -> dict:
    # EXERCISE 05.7
    raise NotImplementedError("EXERCISE 05.7: D_i = ||W_i||^2 / sum_j (W^_i . W_j)^2; D* = m / ||W||_F^2")


# %% [markdown]
# Before running them on shapes you know: what dimensionality D_i does a feature get in an antipodal pair, and in
# a regular pentagon?

# %%
prediction_3 = None  # your guess: a feature's dimensionality in an antipodal pair, and in a regular pentagon

# %%
if MAIN:
    with demo("dimensionality of an antipodal pair and of a regular pentagon"):
        angles = torch.arange(5) * 2 * math.pi / 5
        shapes = {"antipodal pair": torch.tensor([[1.0, -1.0]]),
                  "regular pentagon": torch.stack([angles.cos(), angles.sin()])}
        for name, W in shapes.items():
            dims = [round(v, 3) for v in feature_dimensionality(W)["dimensionality"].tolist()]
            interference = [round(v, 3) for v in feature_norms_and_interference(W)["interference"].tolist()]
            print(f"   {name}: dimensionality {dims}, interference {interference}")
        trained = feature_dimensionality(pentagon[0.95])
        print(f"   the trained model at S = 0.95: {[round(v, 2) for v in trained['dimensionality'].tolist()]}")

# %% [markdown]
# ## 8. The sparsity sweep
#
# The paper's main experiment: n = 20 features into m = 5 dimensions, importance 0.7^i, and sparsities from 0 to
# 0.995. For each trained model we draw WᵀW (which features share directions, and with what sign) and the column
# norms coloured by interference, then the dimensions per feature D* and every kept feature's D_i against
# 1 / (1 − S).

# %%
prediction_4 = None  # your guess: D* (dims per feature) at S = 0 and at S = 0.99, and the values the D_i cluster at

# %%
SWEEP_SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)
FRACTIONS = (1, 3 / 4, 2 / 3, 1 / 2, 2 / 5, 1 / 3)


def plot_sweep(runs: dict, path: Path) -> None:
    """Per sparsity: W^T W as a heatmap above a bar chart of the column norms coloured by interference."""
    fig, axes = plt.subplots(2, len(runs), figsize=(2.2 * len(runs), 5.0))
    for col, (sparsity, W) in enumerate(runs.items()):
        measures = feature_norms_and_interference(W)
        image = axes[0, col].imshow((W.T @ W).numpy(), cmap="RdBu", vmin=-1, vmax=1)
        axes[0, col].set(title=f"S = {sparsity}", xticks=[], yticks=[], xlabel="feature j")
        shade = 1 - measures["interference"].clamp(0, 1).numpy()  # 1: a dimension of its own
        axes[1, col].barh(range(W.shape[1]), measures["norms"].numpy(), color=plt.cm.viridis(shade))
        axes[1, col].set(xlim=(0, 1.5), ylim=(W.shape[1] - 0.5, -0.5), yticks=[],
                         xlabel=f"D* = {feature_dimensionality(W)['dims_per_feature']:.2f}")
    axes[0, 0].set_ylabel("Wᵀ W: feature i")
    axes[1, 0].set_ylabel("||W_i||, most important on top")
    fig.tight_layout()
    fig.colorbar(image, ax=axes[0].tolist(), label="W_i · W_j (dot product; colours clipped at ±1)")
    show(fig, path)


def plot_dimensionality(runs: dict, path: Path) -> None:
    """Dimensions per feature against 1 / (1 - S), with each kept feature's dimensionality as a dot."""
    fig, ax = plt.subplots(figsize=(6, 4))
    inverse_density = [1 / (1 - s) for s in runs]
    dims = [feature_dimensionality(W) for W in runs.values()]
    ax.plot(inverse_density, [d["dims_per_feature"] for d in dims], "k-o", label="D* = m / ||W||_F²")
    for x, W, d in zip(inverse_density, runs.values(), dims):
        kept = W.norm(dim=0) > 0.5  # represented features only
        ax.scatter([x] * int(kept.sum()), d["dimensionality"][kept], color="C1", alpha=0.5, s=14)
    for fraction in FRACTIONS:
        ax.axhline(fraction, color="0.85", lw=0.7, zorder=0)
    ax.set(xscale="log", xlabel="1 / (1 - S)", ylabel="dimensions per feature", ylim=(0, 1.1))
    ax.legend(loc="upper right")
    fig.tight_layout()
    show(fig, path)


if MAIN:
    with demo("n = 20 features in m = 5 dimensions, sparsity sweep"):
        density = settings([1 - s for s in SWEEP_SPARSITIES], 20, 2)  # two starts per sparsity
        importance_20 = (0.7 ** torch.arange(20.0)).expand(len(density), -1)
        sweep = dict(zip(SWEEP_SPARSITIES, best_of(
            train_toy_models(density, importance_20, 5, steps=STEPS, batch_size=512, seed=1), 2)["W"]))
        for sparsity, W in sweep.items():
            kept = W.norm(dim=0) > 0.5
            d = feature_dimensionality(W)
            print(f"   S = {sparsity:5}: {int(kept.sum()):2d} of 20 features represented, "
                  f"D* {d['dims_per_feature']:.2f}"
                  f"; their D_i: {sorted(round(v, 2) for v in d['dimensionality'][kept].tolist())}")
        plot_sweep(sweep, OUT / "05_sparsity_sweep.png")
        plot_dimensionality(sweep, OUT / "05_dimensions_per_feature.png")

# %% [markdown]
# Dense, the model behaves like PCA: five features, one dimension each (D* = 1). As the data get sparser, more
# features come in and D* falls, but the features do not share the space evenly: their D_i stick at a few fractions
# of a dimension (the grey lines). Here they sit at 1 and at 1/2 (antipodal pairs) over most of the sweep, and at the
# sparsest setting they spread down towards 2/5, the pentagon of section 5. Elhage et al., with more features and
# longer training, find the same sticky fractions: features organise into regular polytopes, with sudden
# transitions between them.

# %% [markdown]
# ## 9. A phase diagram: two features, one dimension
#
# The smallest case shows all the model's options at once: n = 2 features, m = 1 dimension. Feature 0 has
# importance 1; feature 1 has importance r, the **relative importance**. Both have density p. The model can
#
# - keep feature 0 and drop feature 1 (**not represented**),
# - give the dimension to feature 1 and drop feature 0 (**dedicated**),
# - keep both, with opposite signs on the one dimension (**superposition**, an antipodal pair).
#
# Sweep r from 0.1 to 10 and p from 0.02 to 1, train every cell (from eight starts, keeping the best), and colour
# each cell by what the model did with feature 1.

# %% [markdown]
# ### Exercise 05.8: reading the phase off W
#
# > **Difficulty** ★☆☆ · **Importance** ★★☆ · **Time** 5 minutes
#
# `W` is one trained model's [1, 2]. A feature is represented when |W_i| > 0.5 (whatever its sign). Return
# `"superposition"` when both are, `"dedicated"` when only feature 1 is, and `"not represented"` when feature 1
# is not.

# %%
def phase_of(W: torch.Tensor) -> str:
    # EXERCISE 05.8
    raise NotImplementedError("EXERCISE 05.8: 'superposition', 'dedicated' or 'not represented' for feature 1")


# %% [markdown]
# Where in the (relative importance, density) plane do you expect the model to put both features in its one
# dimension? Sketch the three regions before you look.

# %%
prediction_5 = None  # your guess: where superposition appears in the (relative importance, density) plane

# %%
PHASES = ("not represented", "dedicated", "superposition")
RELATIVE_IMPORTANCE = torch.logspace(-1, 1, 9)  # 0.1 ... 10
DENSITIES = torch.logspace(-1.7, 0, 8)  # 0.02 ... 1
PHASE_INITS = 8  # starts per cell: from about 2 starts in 3, sparse cells end in a local minimum (a dead feature)


def plot_phases(phases: torch.Tensor, path: Path) -> None:
    """phases [densities, importances] of indices into PHASES, as coloured cells on log axes."""
    from matplotlib.colors import ListedColormap

    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    colours = ListedColormap(["#c7c7c7", "#4c72b0", "#dd5555"])
    ax.pcolormesh(RELATIVE_IMPORTANCE.numpy(), DENSITIES.numpy(), phases.numpy(), cmap=colours, vmin=-0.5,
                  vmax=2.5, shading="nearest")
    ax.set(xscale="log", yscale="log", xlabel="relative importance of feature 1 (r)", ylabel="feature density p",
           title="n = 2, m = 1: what the model does with feature 1")
    for colour, name in zip(colours.colors, PHASES):
        ax.scatter([], [], color=colour, marker="s", label=name)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    show(fig, path)


if MAIN:
    with demo("the phase diagram of n = 2, m = 1"):
        r, p = torch.meshgrid(RELATIVE_IMPORTANCE, DENSITIES, indexing="xy")  # [densities, importances] each
        cells = r.numel()
        density = p.flatten().repeat_interleave(PHASE_INITS)[:, None].expand(-1, 2)  # [cells * starts, 2 features]
        importance = torch.stack([torch.ones(PHASE_INITS * cells), r.flatten().repeat_interleave(PHASE_INITS)], -1)
        grid = best_of(train_toy_models(density, importance, 1, steps=STEPS, batch_size=128, seed=2), PHASE_INITS)
        phases = torch.tensor([PHASES.index(phase_of(W)) for W in grid["W"]]).view(r.shape)
        for row, density_value in zip(phases.tolist(), DENSITIES.tolist()):
            print(f"   p = {density_value:5.3f}: " + " ".join("NDS"[k] for k in row))
        print("   (columns: r from 0.1 to 10; N not represented, D dedicated, S superposition)")
        plot_phases(phases, OUT / "05_phase_diagram.png")

# %% [markdown]
# Three regions, as in Elhage et al.'s figure. Dense data (the top of the figure; the last rows printed) never pay
# for superposition: the dimension goes to the more important feature, feature 0 on the left (r < 1, feature 1 not
# represented) and feature 1 on the right (r > 1, dedicated). Sparse data put both features in the one dimension,
# and the superposition region widens as the density falls: the rarer the features, the more unequal their
# importances may be and still share. A few cells near the boundaries can land on either side from one run to the
# next: there the two options cost nearly the same.

# %% [markdown]
# ## What you found
#
# With dense features the toy model behaves like PCA: it keeps the m most important features on orthogonal axes and
# ignores the rest. With sparse features it stores more features than it has dimensions, in superposition, because
# that lowers the loss below anything a model with one dimension per feature can reach. It does so in a structured
# way: features come in at fractions of a dimension (1, 1/2, 2/5 ...) that match regular polytopes, and even the
# smallest model shows sharp phases decided by sparsity and relative importance. The ReLU and the negative bias are
# essential: they absorb the small interference that superposition creates.
#
# This is the leading explanation for polysemantic neurons in real networks, and the reason sparse dictionary
# learning (sparse autoencoders, lesson 07) is used to pull features back out of activations.

if MAIN:
    print(f"\nfigures written to {OUT.resolve()}")
