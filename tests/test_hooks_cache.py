"""Hooks (reading, editing, removal on errors), the cache's names and errors, Head and Memory against algebra."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

import minimech
from minimech.cache import CacheKeyError
from minimech.hooks import HookShapeError, UnknownHookError
from minimech.objects import FactoredMatrix

from conftest import ODD, assert_unchanged, random_model, random_tokens, snapshot


def hooks_left(model) -> int:
    return sum(len(p.fns) for p in model.hook_dict.values())


def test_hook_can_edit_an_activation(odd_model):
    tokens = random_tokens(ODD, 2, 6)
    _, clean = odd_model.run_with_cache(tokens)

    def zero_head_1(z, hook):
        z = z.clone()
        z[:, :, 1] = 0
        return z

    with odd_model.hooks([("blocks.1.attn.hook_z", zero_head_1)]):
        _, ablated = odd_model.run_with_cache(tokens)
    head = odd_model.blocks[1].attn.heads[1]
    # Zeroing a head's z removes exactly its result from attn_out.
    torch.testing.assert_close(ablated["attn_out", 1], clean["attn_out", 1] - head.result(clean), atol=1e-5, rtol=0)
    assert hooks_left(odd_model) == 0


def test_hooks_accept_short_names_and_predicates(odd_model):
    seen = []
    with odd_model.hooks([(("pattern", -1), lambda x, hook: seen.append(hook.name)),
                          (lambda n: n.endswith("hook_scale"), lambda x, hook: seen.append(hook.name))]):
        odd_model(random_tokens(ODD, 1, 3))
    assert seen == ["blocks.0.ln1.hook_scale", "blocks.0.ln2.hook_scale", "blocks.1.ln1.hook_scale",
                    "blocks.1.attn.hook_pattern", "blocks.1.ln2.hook_scale", "ln_final.hook_scale"]


def test_no_hook_survives_a_hook_that_raises(odd_model):
    def boom(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with odd_model.hooks([("blocks.0.hook_resid_pre", lambda x, h: None), ("blocks.1.attn.hook_z", boom)]):
            odd_model(random_tokens(ODD, 1, 3))
    assert hooks_left(odd_model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        odd_model.run_with_cache(random_tokens(ODD, 1, 3)) if False else odd_model.run_with_hooks(
            random_tokens(ODD, 1, 3), fwd_hooks=[("hook_embed", boom)])
    assert hooks_left(odd_model) == 0


def test_no_hook_survives_a_failing_forward_or_a_bad_name(odd_model):
    with pytest.raises(minimech.MinimechError):
        odd_model.run_with_cache(torch.zeros(1, 99, dtype=torch.long))  # longer than n_ctx
    assert hooks_left(odd_model) == 0
    with pytest.raises(UnknownHookError):
        with odd_model.hooks([("hook_embed", lambda x, h: None), ("blocks.0.attn.hook_patern", lambda x, h: None)]):
            pass
    assert hooks_left(odd_model) == 0


def test_unknown_hook_name_suggests_close_matches(odd_model):
    with pytest.raises(UnknownHookError, match="blocks.0.attn.hook_pattern"):
        odd_model.run_with_cache(random_tokens(ODD, 1, 3), names=["blocks.0.attn.hook_patern"])
    with pytest.raises(UnknownHookError, match="resid_pre"):
        minimech.act_name("resid_per", 0)


def test_wrong_shape_from_a_hook_names_the_hook_and_both_shapes(odd_model):
    with pytest.raises(HookShapeError) as err:
        odd_model.run_with_hooks(random_tokens(ODD, 2, 4),
                                 fwd_hooks=[("blocks.1.hook_mlp_out", lambda x, h: x[:, :-1])])
    msg = str(err.value)
    assert "blocks.1.hook_mlp_out" in msg and "(2, 3, 11)" in msg and "(2, 4, 11)" in msg
    assert hooks_left(odd_model) == 0


def test_cache_short_names_and_missing_keys(odd_model):
    _, cache = odd_model.run_with_cache(random_tokens(ODD, 1, 4), names=lambda n: "resid" in n or "ln1" in n)
    assert cache["resid_pre", 1] is cache["blocks.1.hook_resid_pre"]
    assert cache["resid_post", -1] is cache["blocks.1.hook_resid_post"]
    assert cache["scale", 0, "ln1"] is cache["blocks.0.ln1.hook_scale"]
    with pytest.raises(CacheKeyError, match="not cached"):
        cache["pattern", 0]
    with pytest.raises(CacheKeyError, match="did you mean"):
        cache["blocks.0.hook_resid_per"]


def test_cache_is_detached_and_grad_mode_keeps_graph(odd_model):
    tokens = random_tokens(ODD, 1, 4)
    _, cache = odd_model.run_with_cache(tokens)
    assert not cache["resid_post", 1].requires_grad
    logits, cache = odd_model.run_with_cache(tokens, grad=True)
    logits[0, -1, 0].backward()
    assert odd_model.embed.W_E.grad is not None
    odd_model.zero_grad(set_to_none=True)


def test_head_views_equal_model_weights_and_cache(odd_model):
    _, cache = odd_model.run_with_cache(random_tokens(ODD, 2, 5), names=lambda n: True)
    attn = odd_model.blocks[1].attn
    heads = attn.heads
    assert len(heads) == 3 and [h.name for h in heads] == ["L1H0", "L1H1", "L1H2"] and heads[-1].index == 2
    assert repr(heads[2]).startswith("Head L1H2")
    h = heads[2]
    assert torch.equal(h.W_Q, attn.W_Q[2]) and h.W_O.shape == (5, 11) and h.b_V.shape == (5,)
    torch.testing.assert_close(h.result(cache), cache["result", 1][:, :, 2])
    torch.testing.assert_close(h.pattern(cache), cache["pattern", 1][:, 2])
    torch.testing.assert_close(h.OV.AB, attn.W_V[2] @ attn.W_O[2])
    # QK is the bilinear form behind the scores: (x_q W_Q + b_Q)(x_k W_K + b_K)^T with b = 0 reduces to x_q QK x_k^T
    x = cache["normalized", 1, "ln1"][0]
    scores = (x @ h.QK.AB @ x.T) / 5**0.5
    bias_free = ((x @ h.W_Q) @ (x @ h.W_K).T) / 5**0.5
    torch.testing.assert_close(scores, bias_free, atol=1e-5, rtol=1e-5)
    with pytest.raises(IndexError, match="has 3"):
        heads[3]


@settings(max_examples=10, deadline=None)
@given(d_in=st.integers(2, 12), inner=st.integers(1, 5), seed=st.integers(0, 1000))
def test_factored_matrix_against_dense(d_in, inner, seed):
    g = torch.Generator().manual_seed(seed)
    A, B = torch.randn(d_in, inner, generator=g, dtype=torch.float64), torch.randn(inner, d_in, generator=g, dtype=torch.float64)
    fm = FactoredMatrix(A, B)
    dense = A @ B
    U, S, Vh = fm.svd()
    torch.testing.assert_close(U @ torch.diag(S) @ Vh, dense)
    torch.testing.assert_close(S, torch.linalg.svdvals(dense)[: len(S)])
    ev = fm.eigenvalues().to(torch.complex128)
    dense_ev = torch.linalg.eigvals(dense)
    for e in ev:  # every eigenvalue of BA is one of AB's
        assert (dense_ev - e).abs().min() < 1e-4 * max(1.0, e.abs().item())
    torch.testing.assert_close(fm.norm(), torch.linalg.norm(dense))
    # a product of two factored matrices (a composition circuit) is one whose eigenvalues work, against the dense one
    C, D = torch.randn(d_in, inner + 1, generator=g, dtype=torch.float64), torch.randn(inner + 1, d_in, generator=g,
                                                                                       dtype=torch.float64)
    product = fm @ FactoredMatrix(C, D)
    torch.testing.assert_close(product.AB, dense @ C @ D)
    assert product.A.shape[-1] == inner  # it keeps the narrower inner dimension
    dense_ev = torch.linalg.eigvals(dense @ C @ D)
    for e in product.eigenvalues().to(torch.complex128):
        assert (dense_ev - e).abs().min() < 1e-4 * max(1.0, e.abs().item())
    vector = torch.randn(d_in, generator=g, dtype=torch.float64)
    torch.testing.assert_close(fm @ vector, dense @ vector)
    torch.testing.assert_close(vector @ fm, vector @ dense)
    stacked = FactoredMatrix(torch.stack([A, 2 * A]), B)  # leading dimensions broadcast, as model.OV's [layer, head]
    assert stacked.shape == (2, d_in, d_in)
    torch.testing.assert_close(stacked[1].AB, 2 * dense)
    torch.testing.assert_close(stacked.norm(), torch.stack([torch.linalg.norm(dense), torch.linalg.norm(2 * dense)]))


def test_memories_are_key_value_pairs(odd_model):
    _, cache = odd_model.run_with_cache(random_tokens(ODD, 2, 6))
    mlp = odd_model.blocks[0].mlp
    mems = mlp.memories
    assert len(mems) == 13 and len(mems[2:5]) == 3 and [m.index for m in mems][-1] == 12
    m = mems[4]
    assert m.name == "L0M4" and "key = W_in[:, 4]" in repr(m)
    assert torch.equal(m.key, mlp.W_in[:, 4]) and torch.equal(m.value, mlp.W_out[4])
    x = cache["normalized", 0, "ln2"]
    torch.testing.assert_close(m.pre_activation(cache), x @ m.key + m.key_bias)
    # The MLP's output is the sum over memories of activation x value, plus b_out.
    recon = sum(mem.activation(cache)[..., None] * mem.value for mem in mems) + mlp.b_out
    torch.testing.assert_close(recon, cache["mlp_out", 0], atol=1e-5, rtol=1e-5)
    top = m.top_tokens(3)
    logits = m.value @ odd_model.W_U
    assert [v for _, v in top] == pytest.approx(logits.topk(3).values.tolist())
    assert [v for _, v in m.top_tokens(2, bottom=True)] == pytest.approx((-(-logits).topk(2).values).tolist())


def test_analysis_calls_leave_parameters_bit_identical():
    model = random_model(ODD, seed=5)
    before = snapshot(model)
    tokens = random_tokens(ODD, 2, 6)
    _, cache = model.run_with_cache(tokens, names=lambda n: True)
    cache.decompose_resid(1, "post"); cache.accumulated_resid(); cache.apply_ln_final(cache.resid())
    for head in model.blocks[1].attn.heads:
        head.OV.svd(); head.QK.eigenvalues(); head.result(cache)
    for mem in model.blocks[1].mlp.memories[:3]:
        mem.top_tokens(3); mem.activation(cache)
    model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, h: x * 0)])
    model(tokens, return_type="both")
    assert_unchanged(model, before)


def test_accumulated_resid_is_a_tensor_with_labels(odd_model):
    """TransformerLens code does `acc @ W_U`, `acc.shape`, `acc[0]`; minimech code reads .labels, .tensor and
    acc["L1_pre"]. Both work, on the cached residual streams themselves."""
    _, cache = odd_model.run_with_cache(random_tokens(ODD, 2, 7))
    acc = cache.accumulated_resid()
    assert isinstance(acc, torch.Tensor) and acc.shape == (3, 2, 7, 11) and acc.labels == ["L0_pre", "L1_pre", "final"]
    assert torch.equal(acc[0], cache["resid_pre", 0]) and torch.equal(acc["final"], cache["resid_post", 1])
    assert torch.equal(acc @ odd_model.W_U, torch.stack([cache["resid_pre", 0], cache["resid_pre", 1],
                                                         cache["resid_post", 1]]) @ odd_model.W_U)
    assert type(acc @ odd_model.W_U) is torch.Tensor and type(acc.tensor) is torch.Tensor
    assert [label for label, _ in acc.items()] == acc.labels and acc.norms().shape == (3, 2, 7)
    ln, labels = cache.accumulated_resid(apply_ln=True, return_labels=True, pos_slice=-1)
    assert labels == ["0_pre", "1_pre", "final_post"]  # TransformerLens's labels in TransformerLens's tuple form
    torch.testing.assert_close(ln[-1], odd_model.ln_final(cache["resid_post", 1])[:, -1])  # ln_final, recomputed
    with pytest.raises(CacheKeyError, match="no component"):
        acc["L7_pre"]
