"""The fast patching path (batched suffixes, KV-cached prefixes, metric-only logits) equals one hooked forward per
patch, for every hook, both directions, LogitDiff and arbitrary metrics, with and without MLPs."""

import pytest
import torch

import minimech
from minimech.analysis import PatchingError, logit_diff, patch_heads, patch_resid
from minimech.analysis.fastpatch import Suffix, Target, run_suffixes

CFG = minimech.GPTConfig(n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=48, n_ctx=16, d_vocab=50)


def pair(batch=3, pos=9, seed=0):
    """Clean and corrupted prompts that differ at two positions (3 and 6), like name swaps."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(50, (batch, pos), generator=g)
    corrupt = clean.clone()
    corrupt[:, 3] = (corrupt[:, 3] + 7) % 50
    corrupt[:, 6] = (corrupt[:, 6] + 11) % 50
    return clean, corrupt


def other_metric(logits):  # not a LogitDiff: reads log-probs at two positions, so the fast path needs full logits
    return logits[:, -2].log_softmax(-1)[:, 3].mean() + logits[:, 4, 7].mean()


METRICS = {"logit_diff": logit_diff([1, 2, 3], [4, 5, 6]), "logit_diff_mid": logit_diff(1, 4, pos=5),
           "other": other_metric}


@pytest.fixture(scope="module", params=[False, True], ids=["mlp", "attn_only"])
def model(request):
    return minimech.GPT(CFG.replace(attn_only=request.param), seed=1)


def fingerprint(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("metric, reverse", [("logit_diff", False), ("other", True), ("logit_diff_mid", True)])
def test_resid_sweeps_equal_the_naive_loop(model, metric, reverse):
    metric = METRICS[metric]
    clean, corrupt = pair()
    before = fingerprint(model)
    hooks = ["resid_pre", "resid_post", "attn_out"] + ([] if model.cfg.attn_only else ["resid_mid", "mlp_out"])
    for hook in hooks:
        fast = patch_resid(model, clean, corrupt, metric, hook=hook, reverse=reverse)
        naive = patch_resid(model, clean, corrupt, metric, hook=hook, reverse=reverse, method="naive")
        assert fast.shape == (CFG.n_layers, clean.shape[1])
        assert torch.allclose(fast, naive, atol=1e-5), (hook, (fast - naive).abs().max())
    assert all(torch.equal(a, b) for a, b in zip(before, fingerprint(model)))


@pytest.mark.parametrize("metric, positions", [("logit_diff", (None, 4, "each")), ("other", (None, -1))])
def test_head_sweeps_equal_the_naive_loop(model, metric, positions):
    metric = METRICS[metric]
    clean, corrupt = pair()
    for pos in positions:
        fast = patch_heads(model, clean, corrupt, metric, pos=pos)
        naive = patch_heads(model, clean, corrupt, metric, pos=pos, method="naive")
        assert torch.allclose(fast, naive, atol=1e-5), (pos, (fast - naive).abs().max())
    assert patch_heads(model, clean, corrupt, metric, pos="each").shape == (CFG.n_layers, CFG.n_heads, 9)


def test_patching_clean_into_clean_changes_nothing(model):
    clean, _ = pair()
    metric = METRICS["logit_diff"]
    m_clean = metric(model(clean)).item()
    for grid in (patch_resid(model, clean, clean, metric), patch_heads(model, clean, clean, metric),
                 patch_resid(model, clean, clean, metric, hook="attn_out")):
        assert torch.allclose(grid, torch.full_like(grid, m_clean), atol=1e-5)


def test_patching_the_whole_stream_recovers_the_other_run(model):
    # A suffix that replaces every position of resid_pre[0] with the clean run's is the clean run.
    clean, corrupt = pair()
    metric = METRICS["other"]
    target = Target(model, corrupt)
    _, cache = model.run_with_cache(clean, names=["blocks.0.hook_resid_pre"])
    sfx = Suffix("all", 0, 0, cache["blocks.0.hook_resid_pre"])
    assert run_suffixes(model, target, [sfx], metric)["all"] == pytest.approx(metric(model(clean)).item(), abs=1e-5)


def test_before_the_first_difference_nothing_changes(model):
    clean, corrupt = pair()
    metric = METRICS["logit_diff"]
    grid = patch_resid(model, clean, corrupt, metric)
    assert torch.allclose(grid[:, :3], torch.full((CFG.n_layers, 3), metric(model(corrupt)).item()), atol=1e-5)


def test_small_memory_budget_splits_the_batch_without_changing_results(model):
    clean, corrupt = pair()
    metric = METRICS["other"]
    target = Target(model, corrupt)
    _, cache = model.run_with_cache(clean, names=[f"blocks.{l}.hook_resid_pre" for l in range(CFG.n_layers)])
    sfx = [Suffix((l, p), l, p, torch.cat([cache[f"blocks.{l}.hook_resid_pre"][:, p:p + 1],
                                           target.resid_pre(l)[:, p + 1:]], 1))
           for l in range(CFG.n_layers) for p in range(9)]
    big, small = run_suffixes(model, target, sfx, metric), run_suffixes(model, target, sfx, metric, max_tokens=1)
    assert big.keys() == small.keys() and all(abs(big[k] - small[k]) < 1e-5 for k in big)


def test_bad_arguments_get_clear_errors(model):
    clean, corrupt = pair()
    metric = METRICS["logit_diff"]
    with pytest.raises(PatchingError, match="resid_pre"):
        patch_resid(model, clean, corrupt, metric, hook="resid_middle")
    with pytest.raises(PatchingError, match="fast"):
        patch_resid(model, clean, corrupt, metric, method="quick")
    with pytest.raises(PatchingError, match="component"):
        patch_heads(model, clean, corrupt, metric, component="out")
    with pytest.raises(PatchingError, match="pos="):
        patch_heads(model, clean, corrupt, metric, pos=99)
    with pytest.raises(minimech.errors.MinimechError, match="2 answer pairs"):
        patch_resid(model, clean, corrupt, logit_diff([1, 2], [3, 4]))
