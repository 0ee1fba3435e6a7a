"""Every plot writes a real PNG and returns its path; labels that do not fit the values raise."""

import numpy as np
import pytest
import torch

from minimech import plot
from minimech.plot import PlotError

PNG = b"\x89PNG\r\n\x1a\n"
TOKENS = ["<bos>", "The", " cat", " sat"]


def assert_png(path, expected):
    assert path == expected
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 1000


def test_attention(tmp_path):
    pattern = torch.tril(torch.rand(4, 4))
    pattern = pattern / pattern.sum(-1, keepdim=True)  # [q, k]
    assert_png(plot.attention(pattern, TOKENS, tmp_path / "a.png", title="L0H0"), tmp_path / "a.png")
    with pytest.raises(PlotError, match="3 str_tokens for 4"):
        plot.attention(pattern, TOKENS[:3], tmp_path / "bad.png")
    with pytest.raises(PlotError, match="2 dimensions"):
        plot.attention(pattern[None], TOKENS, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_heatmap(tmp_path):
    values = np.array([[0.5, -1.0, 0.0], [2.0, np.nan, 0.1]])  # a nan (e.g. an undefined score) must not break it
    path = plot.heatmap(values, ["L0", "L1"], ["a", "b", "c"], tmp_path / "sub" / "h.png", title="t")
    assert_png(path, tmp_path / "sub" / "h.png")
    assert_png(plot.heatmap(np.zeros((2, 3)), ["L0", "L1"], ["a", "b", "c"], tmp_path / "z.png"), tmp_path / "z.png")
    with pytest.raises(PlotError, match="col_labels"):
        plot.heatmap(values, ["L0", "L1"], ["a", "b"], tmp_path / "bad.png")
    with pytest.raises(PlotError, match="row_labels"):
        plot.heatmap(values, ["L0"], ["a", "b", "c"], tmp_path / "bad.png")


def test_lens(tmp_path):
    probs = torch.rand(3, 4)  # [n_points, pos]
    text = [["a", "b\n", "c", "d"]] * 3
    path = plot.lens(probs, ["L0_pre", "L1_pre", "final"], TOKENS, tmp_path / "l.png", cell_text=text)
    assert_png(path, tmp_path / "l.png")
    with pytest.raises(PlotError, match="cell_text"):
        plot.lens(probs, ["L0_pre", "L1_pre", "final"], TOKENS, tmp_path / "bad.png", cell_text=[["a"] * 3] * 3)
    with pytest.raises(PlotError, match="row_labels"):
        plot.lens(probs, ["L0_pre"], TOKENS, tmp_path / "bad.png")


def test_curves(tmp_path):
    history = [{"step": i, "loss": 3 - 0.1 * i, "acc": 0.1 * i} for i in range(10)] + [{"step": 10, "loss": 1.5}]
    assert_png(plot.curves(history, ["loss", "acc"], tmp_path / "c.png", title="run"), tmp_path / "c.png")
    assert_png(plot.curves([{"loss": 2.0}, {"loss": 1.0}], ["loss"], tmp_path / "i.png"), tmp_path / "i.png")
    with pytest.raises(PlotError, match="'lr'.*'acc'"):
        plot.curves(history, ["lr"], tmp_path / "bad.png")


def test_trace(tmp_path):
    scores = {kind: torch.rand(2, 4) for kind in ("resid", "mlp", "attn")}  # [n_layers, pos]
    assert_png(plot.trace(scores, TOKENS, tmp_path / "t.png", subject_positions=[2]), tmp_path / "t.png")

    class Result:  # what a TraceResult offers
        subject_positions = [1, 2]

    Result.scores = scores
    assert_png(plot.trace(Result(), TOKENS, tmp_path / "r.png"), tmp_path / "r.png")
    with pytest.raises(PlotError, match="str_tokens"):
        plot.trace(scores, TOKENS[:3], tmp_path / "bad.png")
    with pytest.raises(PlotError, match="mlp"):
        plot.trace({"resid": torch.rand(2, 4), "mlp": torch.rand(3, 4)}, TOKENS, tmp_path / "bad.png")


def test_every_grid_has_titled_axes_and_a_labelled_colour_bar(tmp_path, monkeypatch):
    """What the CLI draws (lens, attention, heads and patching grids, causal traces): each grid's axes say what the
    rows and columns are, and each colour bar what its colours measure, with units."""
    seen = []

    def capture(fig, path):  # read the figure before _save clears it
        grids = [ax for ax in fig.axes if ax.images]
        bars = [ax for ax in fig.axes if not ax.images]
        seen.append(([(ax.get_xlabel(), ax.get_ylabel()) for ax in grids], [ax.get_ylabel() for ax in bars]))
        return path

    monkeypatch.setattr(plot, "_save", capture)
    grid = np.random.default_rng(0).random((3, 4))
    plot.attention(grid[:, :3].T @ grid[:, :3] / 3, TOKENS[:3], tmp_path / "a.png")
    plot.lens(grid, ["L0_pre", "L1_pre", "final"], TOKENS, tmp_path / "l.png")
    plot.trace({"mlp": grid, "attn": grid}, TOKENS, tmp_path / "t.png")
    plot.heatmap(grid, ["L0", "L1", "L2"], ["H0", "H1", "H2", "H3"], tmp_path / "h.png", xlabel="head",
                 ylabel="layer", cbar_label="logit difference (nats)")
    for axes, bars in seen:
        assert axes and all(x and y for x, y in axes) and len(bars) == len(axes) and all(bars), (axes, bars)
