"""Attribution patching is the directional derivative of the metric along (clean - corrupt): checked against finite
differences through hooks, and against exact patching on the shipped model's IOI prompts."""

import pytest
import torch

import minimech
from minimech.analysis import logit_diff, patch_heads, patch_resid
from minimech.analysis.attribution_patching import (agreement, attribution_patch_heads,
                                                    attribution_patch_resid)

CFG = minimech.GPTConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=12, d_vocab=30)


def finite_difference(model, corrupt, metric, name, delta, index, eps=1e-3):
    """(metric(corrupt with act[index] += eps * delta[index]) - metric(corrupt)) / eps, in float64."""
    def nudge(act, hook):
        act = act.clone()
        act[index] += eps * delta[index]
        return act
    with torch.no_grad():
        base = metric(model(corrupt)).item()
        with model.hooks([(name, nudge)]):
            return (metric(model(corrupt)).item() - base) / eps


@pytest.fixture(scope="module")
def setup():
    model = minimech.GPT(CFG, seed=3).double()
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(30, (2, 7), generator=g)
    corrupt = clean.clone()
    corrupt[:, 2] = (corrupt[:, 2] + 5) % 30
    return model, clean, corrupt, logit_diff([1, 2], [3, 4])


def test_resid_grid_is_the_directional_derivative(setup):
    model, clean, corrupt, metric = setup
    before = [p.clone() for p in model.parameters()]
    grid = attribution_patch_resid(model, clean, corrupt, metric, hook="resid_mid")
    _, c = model.run_with_cache(clean, names=lambda n: n.endswith("resid_mid"))
    _, k = model.run_with_cache(corrupt, names=lambda n: n.endswith("resid_mid"))
    for layer in range(2):
        name = f"blocks.{layer}.hook_resid_mid"
        for p in (2, 4, 6):
            expected = finite_difference(model, corrupt, metric, name, c[name] - k[name], (slice(None), p))
            assert grid[layer, p].item() == pytest.approx(expected, rel=1e-3, abs=1e-6)
    assert grid[:, :2].abs().max() == 0  # before the first differing token the runs are identical
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_heads_grid_is_the_directional_derivative(setup):
    model, clean, corrupt, metric = setup
    grid = attribution_patch_heads(model, clean, corrupt, metric)
    _, c = model.run_with_cache(clean, names=lambda n: n.endswith("hook_z"))
    _, k = model.run_with_cache(corrupt, names=lambda n: n.endswith("hook_z"))
    for layer in range(2):
        name = f"blocks.{layer}.attn.hook_z"
        for head in range(2):
            expected = finite_difference(model, corrupt, metric, name, c[name] - k[name],
                                         (slice(None), slice(None), head))
            assert grid[layer, head].item() == pytest.approx(expected, rel=1e-3, abs=1e-6)


def test_agreement_with_exact_patching_on_the_shipped_model():
    from minimech.analysis import ioi_dataset

    model = minimech.load()
    ds = ioi_dataset(model, n=16, seed=0)
    clean, corrupt, metric = ds.tokens, ds.abc().tokens, ds.logit_diff()
    base = metric(model(corrupt)).item()
    exact = patch_resid(model, clean, corrupt, metric) - base
    estimate = attribution_patch_resid(model, clean, corrupt, metric)
    report = agreement(estimate, exact)
    assert report["correlation"] > 0.9, report  # measured 0.99 (64 prompts): the first order carries it
    heads = agreement(attribution_patch_heads(model, clean, corrupt, metric),
                      patch_heads(model, clean, corrupt, metric) - base)
    assert heads["correlation"] > 0.8, heads  # measured 0.98 (64 prompts)
