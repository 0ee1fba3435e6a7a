"""Pictures of SAE features and SAEs (PNG, matplotlib). They draw what they are given and compute nothing, as in
minimech/plot.py (whose helpers they use: an Agg canvas, never pyplot's global figures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..plot import _array, _figure, _save


def draw_feature(path, title: str, activations, contexts: list, promoted: list, suppressed: list) -> Path:
    """One feature's dashboard: the histogram of its non-zero activations, its top contexts with the token marked
    in colour, and the tokens its decoder direction promotes and suppresses through the unembedding."""
    fig = _figure(10, 30)
    fig.set_size_inches(13, 7.5)
    grid = fig.add_gridspec(2, 2, width_ratios=[1, 1.6], height_ratios=[1, 1.25])
    ax = fig.add_subplot(grid[0, 0])
    values = _array(activations, "activations", 1)
    if len(values):
        ax.hist(values, bins=40, color="tab:blue")
    ax.set_title(f"non-zero activations on held-out text ({len(values):,} tokens)", fontsize=9)
    ax.set_xlabel("activation")
    ax.set_ylabel("tokens")

    ax = fig.add_subplot(grid[1, 0])
    tokens = [repr(t) for t, _ in promoted] + [repr(t) for t, _ in suppressed]
    logits = [v for _, v in promoted] + [v for _, v in suppressed]
    y = np.arange(len(tokens))[::-1]
    ax.barh(y, logits, color=["tab:green"] * len(promoted) + ["tab:red"] * len(suppressed))
    ax.set_yticks(y, tokens, fontsize=8)
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_title("logit effect of the decoder direction (direct, per unit activation)", fontsize=9)

    ax = fig.add_subplot(grid[:, 1])
    ax.axis("off")
    ax.set_title("top activating contexts (held-out corpus text)", fontsize=9)
    for i, context in enumerate(contexts):
        top = 1 - (i + 0.7) / max(len(contexts), 12)
        before = context.before if len(context.before) <= 55 else "..." + context.before[-55:]
        line = ax.text(0.0, top, f"{context.activation:6.2f}  {before}", fontsize=8, family="monospace",
                       transform=ax.transAxes)
        # the token right after the text before it, then what follows: each placed at draw time against the
        # previous piece's box (matplotlib's "rainbow text" recipe), so the layout engine cannot misplace them
        token = ax.annotate(context.token, xy=(1, 0), xycoords=line, xytext=(2, 0), textcoords="offset points",
                            va="bottom", fontsize=8, family="monospace", weight="bold", color="white",
                            bbox=dict(facecolor="tab:orange", edgecolor="none", pad=1))
        ax.annotate(context.after[:25], xy=(1, 0), xycoords=token, xytext=(2, 0), textcoords="offset points",
                    va="bottom", fontsize=8, family="monospace", color="gray")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def draw_density(path, log10_density, title: str = "") -> Path:
    """The feature density histogram: log10(fraction of tokens each feature fires on), dead features at -10."""
    values = _array(log10_density, "log10_density", 1)
    fig = _figure(5, 12)
    ax = fig.add_subplot()
    ax.hist(values, bins=50, color="tab:purple")
    ax.set_xlabel("log10 feature density (dead features sit at -10)")
    ax.set_ylabel("features")
    ax.set_title(title or "feature density", fontsize=10)
    return _save(fig, path)
