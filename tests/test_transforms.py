"""Tests for minimech.transforms: each transform keeps log-probs, and keeps exactly what its docstring says."""

import pytest
import torch
from conftest import assert_unchanged, random_model, random_tokens, snapshot
from hypothesis import given, settings
from hypothesis import strategies as st

from minimech import GPTConfig
from minimech.transforms import ORDER, TRANSFORMS, _writers, center_writing_weights, fold_ln, fold_value_biases, process

CONFIGS = [
    GPTConfig(n_layers=3, n_heads=4, d_model=32, d_mlp=80, n_ctx=16, d_vocab=50),
    GPTConfig(n_layers=2, n_heads=3, d_head=5, d_model=11, d_mlp=13, n_ctx=19, d_vocab=17, act_fn="relu"),
    GPTConfig(n_layers=2, n_heads=2, d_model=12, n_ctx=9, d_vocab=23, attn_only=True),
    GPTConfig(n_layers=1, n_heads=1, d_head=7, d_model=6, n_ctx=8, d_vocab=5, attn_only=True),
]
TOL = 1e-4


def offset_model(cfg, seed):
    """random_model, plus a random component along the all-ones direction in every writing weight (so centring
    has something to remove) and a random b_U."""
    model = random_model(cfg, seed)
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for p in _writers(model):
            p.add_(0.5 * torch.randn(p.shape[:-1] + (1,), generator=gen))
        model.unembed.b_U.copy_(torch.randn(cfg.d_vocab, generator=gen))
    return model


def resid_names(cfg):
    names = ["hook_embed", "hook_pos_embed"]
    for l in range(cfg.n_layers):
        names += [f"blocks.{l}.hook_resid_pre", f"blocks.{l}.hook_attn_out", f"blocks.{l}.hook_resid_post"]
        if not cfg.attn_only:
            names += [f"blocks.{l}.hook_resid_mid", f"blocks.{l}.hook_mlp_out"]
    return names


MAX_DIFF = {}  # the largest log-prob difference seen, by transform set (printed with pytest -s)


@settings(max_examples=40, deadline=None)
@given(cfg=st.sampled_from(CONFIGS), seed=st.integers(0, 10_000), flags=st.tuples(*[st.booleans()] * 4),
       batch=st.integers(1, 3), pos=st.integers(1, 8))
def test_logprobs_kept_and_logits_shift_by_a_constant(cfg, seed, flags, batch, pos):
    model = offset_model(cfg, seed)
    tokens = random_tokens(cfg, batch, min(pos, cfg.n_ctx), seed)
    chosen = dict(zip(ORDER, flags))
    before = snapshot(model)
    new = process(model, **chosen)
    assert_unchanged(model, before)  # the input model is bit-identical
    assert new is not model and getattr(new, "transforms", []) == [n for n in ORDER if chosen[n]]
    old_logits, new_logits = model(tokens), new(tokens)
    diff = (new_logits.log_softmax(-1) - old_logits.log_softmax(-1)).abs().max().item()
    key = "+".join(n for n in ORDER if chosen[n]) or "none"
    MAX_DIFF[key] = max(MAX_DIFF.get(key, 0.0), diff)
    assert diff < TOL
    shift = new_logits - old_logits  # [batch, pos, d_vocab]: constant along the vocab axis
    assert (shift - shift[..., :1]).abs().max() < TOL
    if not chosen["center_unembed"]:  # only center_unembed moves raw logits
        assert shift.abs().max() < TOL
    else:  # ... and then to mean zero over the vocab
        assert new_logits.mean(-1).abs().max() < TOL


@pytest.mark.parametrize("cfg", CONFIGS)
def test_fold_ln(cfg):
    model, tokens = offset_model(cfg, 1), random_tokens(cfg, 2, min(6, cfg.n_ctx), 1)
    before = snapshot(model)
    new = fold_ln(model)
    assert_unchanged(model, before)
    lns = [new.ln_final] + [b.ln1 for b in new.blocks] + ([] if cfg.attn_only else [b.ln2 for b in new.blocks])
    for ln in lns:
        assert torch.equal(ln.w, torch.ones_like(ln.w)) and torch.equal(ln.b, torch.zeros_like(ln.b))
    readers = [(new.unembed.W_U, 0)] + [(getattr(b.attn, W), 1) for b in new.blocks for W in ("W_Q", "W_K", "W_V")]
    readers += [] if cfg.attn_only else [(b.mlp.W_in, 0) for b in new.blocks]
    for W, dim in readers:  # centred along d_model
        assert W.mean(dim).abs().max() < 1e-6
    _, old_cache = model.run_with_cache(tokens)
    _, new_cache = new.run_with_cache(tokens)
    for name in resid_names(cfg) + [f"blocks.{l}.attn.hook_{x}" for l in range(cfg.n_layers) for x in "qkv"]:
        torch.testing.assert_close(new_cache[name], old_cache[name], atol=TOL, rtol=0, msg=name)
    twice = fold_ln(new)  # harmless: nothing left to fold, recorded once
    for k, v in new.state_dict().items():
        torch.testing.assert_close(twice.state_dict()[k], v, atol=1e-6, rtol=0)
    assert twice.transforms == ["fold_ln"] and twice.source == "random init + fold_ln"
    assert "random init + fold_ln" in repr(twice)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_center_writing_weights(cfg):
    model, tokens = offset_model(cfg, 2), random_tokens(cfg, 2, min(7, cfg.n_ctx), 2)
    before = snapshot(model)
    new = center_writing_weights(model)
    assert_unchanged(model, before)
    for p in _writers(new):
        assert p.mean(-1).abs().max() < 1e-6
    assert any(p.mean(-1).abs().max() > 0.05 for p in _writers(model))  # there was a mean to remove
    _, old_cache = model.run_with_cache(tokens)
    _, new_cache = new.run_with_cache(tokens)
    for name in resid_names(cfg):  # every residual stream (and every write to it) is the old one, centred
        old = old_cache[name]
        torch.testing.assert_close(new_cache[name], old - old.mean(-1, keepdim=True), atol=TOL, rtol=0, msg=name)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_fold_value_biases(cfg):
    model, tokens = offset_model(cfg, 3), random_tokens(cfg, 3, min(5, cfg.n_ctx), 3)
    before = snapshot(model)
    new = fold_value_biases(model)
    assert_unchanged(model, before)
    assert all(torch.equal(b.attn.b_V, torch.zeros_like(b.attn.b_V)) for b in new.blocks)
    assert any(b.attn.b_V.abs().max() > 0 for b in model.blocks)
    _, old_cache = model.run_with_cache(tokens)
    _, new_cache = new.run_with_cache(tokens)
    for l in range(cfg.n_layers):
        name = f"blocks.{l}.hook_attn_out"
        torch.testing.assert_close(new_cache[name], old_cache[name], atol=TOL, rtol=0, msg=name)


@pytest.mark.parametrize("name", ORDER)
def test_copy_vs_inplace(name):
    cfg = CONFIGS[0]
    model = offset_model(cfg, 4)
    model.tokenizer = object()  # stands in for a real Tokenizer: shared, not deep-copied
    before = snapshot(model)
    new = TRANSFORMS[name](model)
    assert_unchanged(model, before)
    assert new.tokenizer is model.tokenizer and new.blocks[0].mlp.root() is new  # Memory views see the copy
    assert not hasattr(model, "transforms") and model.source == "random init"
    assert new.transforms == [name] and new.source == f"random init + {name}"
    same = TRANSFORMS[name](model, inplace=True)
    assert same is model and model.transforms == [name]
    for k, v in new.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_process_defaults_and_order():
    model = offset_model(CONFIGS[1], 5)
    before = snapshot(model)
    plain = process(model)
    assert plain is not model and getattr(plain, "transforms", []) == [] and plain.source == "random init"
    for k, v in before.items():
        assert torch.equal(plain.state_dict()[k], v)
    full = process(model, fold_value_biases=True, center_unembed=True, center_writing_weights=True, fold_ln=True)
    assert_unchanged(model, before)
    assert full.transforms == list(ORDER)
    assert repr(full).endswith("(random init + fold_ln + center_writing_weights + center_unembed + fold_value_biases)")


def test_report_max_diffs():  # runs last in this file: prints what the hypothesis test measured
    print("\nmax |log-prob difference| by transforms:", {k: f"{v:.2e}" for k, v in sorted(MAX_DIFF.items())})
