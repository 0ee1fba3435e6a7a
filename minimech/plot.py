"""Pictures of what minimech.analysis computes. Each function draws, saves a PNG and returns its Path; none computes.

Figures are built with matplotlib's object-oriented API on an Agg canvas, never through pyplot: pyplot keeps every
figure alive in a global registry until closed, and choosing a backend with matplotlib.use() would change the
caller's (e.g. a notebook's) backend. A Figure that pyplot never saw is freed like any object; we still clear it.
Inputs may be torch tensors or numpy arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .errors import MinimechError

TRACE_CMAPS = {"resid": "Purples", "mlp": "Greens", "attn": "Reds"}  # ROME's colours


class PlotError(MinimechError, ValueError):
    """Values and labels that do not fit together."""


def _array(x, name: str, ndim: int) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=float)
    if x.ndim != ndim:
        raise PlotError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    return x


def _check_labels(labels, n: int, what: str, name: str) -> list[str]:
    labels = [str(s) for s in labels]
    if len(labels) != n:
        raise PlotError(f"{len(labels)} {name} for {n} {what}: give one label per {what[:-1]}")
    return labels


def _figure(n_rows: int, n_cols: int, panels: int = 1) -> Figure:
    """A figure sized to its grid (0.35 inch per cell, within readable limits)."""
    width = min(max(4.0, 0.35 * n_cols + 2.5), 30.0) * panels
    height = min(max(3.0, 0.35 * n_rows + 1.5), 30.0)
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    fig.clear()
    return path


def _grid(ax, values, row_labels, col_labels, cmap, vmin, vmax, title="", xlabel="", ylabel=""):
    """One labelled heatmap on ax, its axes titled; returns the image for a colorbar."""
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=90, fontsize=8)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
    fig = ax.get_figure()
    ax.set_title(_wrap(title, fig.get_figwidth() / len(fig.axes), 11), fontsize=11)
    ax.set_xlabel(_wrap(xlabel, fig.get_figwidth() / len(fig.axes), 8), fontsize=8)
    ax.set_ylabel(_wrap(ylabel, fig.get_figheight(), 8), fontsize=8)
    return image


def _wrap(text: str, inches: float, fontsize: float) -> str:
    """text in lines that fit `inches` at `fontsize` points (a character is about 0.6 em wide), so that a small
    figure shows its whole title and labels."""
    import textwrap

    width = max(12, int(inches * 72 / (0.6 * fontsize)) - 8)
    return textwrap.fill(text, width) if text else text


def _colorbar(fig, image, ax, label: str) -> None:
    """A colour bar that says what its colours measure, and in what units."""
    fig.colorbar(image, ax=ax).set_label(_wrap(label, fig.get_figheight(), 8), fontsize=8)


def attention(pattern, str_tokens, path, title: str = "") -> Path:
    """One head's pattern [q_pos, k_pos]: row = the query token, column = the key token it reads."""
    pattern = _array(pattern, "pattern", 2)
    labels = _check_labels(str_tokens, pattern.shape[1], "key positions", "str_tokens")
    _check_labels(str_tokens, pattern.shape[0], "query positions", "str_tokens")
    fig = _figure(*pattern.shape)
    ax = fig.add_subplot()
    image = _grid(ax, pattern, labels, labels, "Blues", 0.0, 1.0, title, xlabel="key: the token attended to",
                  ylabel="query: the token attending")
    _colorbar(fig, image, ax, "attention probability (0 to 1; each row sums to 1)")
    return _save(fig, path)


def heatmap(values, row_labels, col_labels, path, title: str = "", cmap: str = "RdBu",
            center: float | None = 0, *, xlabel: str = "", ylabel: str = "", cbar_label: str = "") -> Path:
    """values [rows, cols]; with center set, the colour scale is symmetric around it (so center is white in RdBu).
    xlabel / ylabel title the axes (what the columns and rows are); cbar_label says what the colours measure and in
    what units (e.g. "logit difference (nats)")."""
    values = _array(values, "values", 2)
    rows = _check_labels(row_labels, values.shape[0], "rows", "row_labels")
    cols = _check_labels(col_labels, values.shape[1], "columns", "col_labels")
    vmin = vmax = None
    if center is not None:
        finite = values[np.isfinite(values)]
        reach = float(np.abs(finite - center).max()) if finite.size else 1.0
        reach = reach or 1.0  # all values equal center: any non-empty range
        vmin, vmax = center - reach, center + reach
    fig = _figure(*values.shape)
    ax = fig.add_subplot()
    _colorbar(fig, _grid(ax, values, rows, cols, cmap, vmin, vmax, title, xlabel, ylabel), ax, cbar_label)
    return _save(fig, path)


def lens(probs, row_labels, col_labels, path, cell_text=None, title: str = "",
         cbar_label: str = "probability of the top token (0 to 1)") -> Path:
    """A logit-lens grid: probs [n_points, pos] (rows = points/layers, columns = positions) coloured 0..1, and
    cell_text [n_points][pos] (e.g. each cell's top token) written in the cells. LensResult.grid() gives both
    (grid(target=id) gives one token's probability: say so in cbar_label)."""
    probs = _array(probs, "probs", 2)
    rows = _check_labels(row_labels, probs.shape[0], "rows", "row_labels")
    cols = _check_labels(col_labels, probs.shape[1], "columns", "col_labels")
    if cell_text is not None:
        _check_labels(cell_text, probs.shape[0], "rows", "rows of cell_text")
        for row in cell_text:
            _check_labels(row, probs.shape[1], "columns", "cells in a row of cell_text")
    fig = _figure(probs.shape[0], probs.shape[1] * 2)  # wider cells: they hold text
    ax = fig.add_subplot()
    image = _grid(ax, probs, rows, cols, "Blues", 0.0, 1.0, title, xlabel="position: the input token",
                  ylabel="residual stream (before block L)")
    if cell_text is not None:
        for i, row in enumerate(cell_text):
            for j, text in enumerate(row):
                colour = "white" if probs[i, j] > 0.5 else "black"  # readable on dark and light cells
                ax.text(j, i, repr(str(text))[1:-1][:8], ha="center", va="center", fontsize=7, color=colour)
    _colorbar(fig, image, ax, cbar_label)
    return _save(fig, path)


def curves(history: list[dict], keys: list[str], path, title: str = "", x: str = "step") -> Path:
    """One subplot per key of a training history (a list of dicts, e.g. one per eval); x from each record's
    `x` entry, or the record's index when it has none. Records without a key are skipped for that key."""
    if not keys:
        raise PlotError("curves needs at least one key to plot")
    for key in keys:
        if not any(key in record for record in history):
            seen = sorted({k for record in history for k in record})
            raise PlotError(f"no record in the history has {key!r}; keys present: {seen}")
    fig = Figure(figsize=(4.0 * len(keys), 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        points = [(record.get(x, i), record[key]) for i, record in enumerate(history) if key in record]
        xs, ys = zip(*points)
        ax.plot([float(v) for v in xs], [float(v) for v in ys], marker="." if len(points) < 50 else None)
        ax.set_xlabel(x)
        ax.set_title(key)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def trace(scores, str_tokens, path, subject_positions=(), title: str = "",
          cbar_label: str = "P(answer) after restoring (0 to 1)") -> Path:
    """Causal-trace heatmaps, one per kind: scores {kind: [n_layers, pos]} drawn with rows = tokens, columns =
    layers, as in ROME; subject rows are marked with '*'. A TraceResult may be passed as scores."""
    if hasattr(scores, "scores"):  # a TraceResult: unpack, nothing computed
        subject_positions = subject_positions or scores.subject_positions
        scores = scores.scores
    if not scores:
        raise PlotError("trace needs at least one kind of scores")
    arrays = {kind: _array(s, f"scores[{kind!r}]", 2) for kind, s in scores.items()}
    n_layers, n_pos = next(iter(arrays.values())).shape
    rows = _check_labels(str_tokens, n_pos, "positions", "str_tokens")
    marked = set(subject_positions)
    rows = [f"{s!r}*" if p in marked else repr(s) for p, s in enumerate(rows)]
    fig = _figure(n_pos, n_layers, panels=len(arrays))
    axes = fig.subplots(1, len(arrays), squeeze=False)[0]
    for ax, (kind, values) in zip(axes, arrays.items()):
        if values.shape != (n_layers, n_pos):
            raise PlotError(f"scores[{kind!r}] has shape {values.shape}, the others {(n_layers, n_pos)}")
        image = _grid(ax, values.T, rows, [str(l) for l in range(n_layers)], TRACE_CMAPS.get(kind, "Blues"),
                      None, None, f"restoring {kind}", xlabel="layer restored", ylabel="token (* subject)")
        _colorbar(fig, image, ax, cbar_label)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
