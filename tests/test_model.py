"""The model against independent ground truth: the hook shape table, naive per-head loops, algebraic identities."""

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import minimech
from minimech import GPT, GPTConfig, HOOK_SHAPES
from minimech.config import ConfigError
from minimech.tokenizer import PromptTooLongError

from conftest import ODD, ODD_DIMS, random_model, random_tokens


def template(name: str) -> str:
    return re.sub(r"^blocks\.\d+\.", "blocks.{l}.", name)


OPTIONAL_HOOKS = ("hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_in")  # TL's flags


def expected_hook_names(cfg: GPTConfig, optional: bool = False) -> set[str]:
    no_mlp = ("hook_resid_mid", "ln2.", "mlp.", "hook_mlp_out", "hook_mlp_in")
    names = set()
    for t in HOOK_SHAPES:
        if cfg.attn_only and any(s in t for s in no_mlp) or not optional and t.endswith(OPTIONAL_HOOKS):
            continue
        names |= {t.format(l=l) for l in range(cfg.n_layers)} if "{l}" in t else {t}
    return names


def test_every_hook_has_the_shape_in_the_table(odd_model):
    tokens = random_tokens(ODD, ODD_DIMS["batch"], ODD_DIMS["pos"])
    _, cache = odd_model.run_with_cache(tokens, names=lambda n: True)
    assert set(cache.keys()) == expected_hook_names(ODD) == set(odd_model.hook_names)
    for name, act in cache.items():
        dims = HOOK_SHAPES[template(name)]
        want = tuple(d if isinstance(d, int) else ODD_DIMS[d] for d in dims)
        assert tuple(act.shape) == want, f"{name}: {tuple(act.shape)} != {dims}"


def test_optional_input_hooks_appear_with_the_table_shapes_and_leave_the_logits_alone(odd_model):
    """TransformerLens's use_attn_in / use_split_qkv_input / use_hook_mlp_in: the hook points exist only when switched
    on; ln1 then runs per head (its hooks gain a head axis, as in TransformerLens); the logits do not change."""
    tokens = random_tokens(ODD, ODD_DIMS["batch"], ODD_DIMS["pos"])
    before = odd_model(tokens)
    for switch in (odd_model.set_use_attn_in, odd_model.set_use_split_qkv_input, odd_model.set_use_hook_mlp_in):
        switch(True)
    _, cache = odd_model.run_with_cache(tokens, names=lambda n: True)
    assert set(cache.keys()) == expected_hook_names(ODD, optional=True) == set(odd_model.hook_names)
    per_head = {"ln1.hook_scale": ("batch", "pos", "head", 1), "ln1.hook_normalized": ("batch", "pos", "head", "d_model")}
    for name, act in cache.items():
        dims = next((d for k, d in per_head.items() if name.endswith(k)), HOOK_SHAPES[template(name)])
        want = tuple(d if isinstance(d, int) else ODD_DIMS[d] for d in dims)
        assert tuple(act.shape) == want, f"{name}: {tuple(act.shape)} != {dims}"
    torch.testing.assert_close(odd_model(tokens), before, atol=1e-5, rtol=1e-5)
    for switch in (odd_model.set_use_attn_in, odd_model.set_use_split_qkv_input, odd_model.set_use_hook_mlp_in):
        switch(False)
    assert set(odd_model.hook_names) == expected_hook_names(ODD)
    with pytest.raises(minimech.MinimechError, match=r"exists after model.set_use_split_qkv_input\(True\)"):
        odd_model.run_with_cache(tokens, names="blocks.0.hook_k_input")


def test_hook_names_equal_attribute_paths(odd_model):
    for name, point in odd_model.hook_dict.items():
        assert odd_model.get_submodule(name) is point and point.name == name


def test_attention_only_model_has_no_mlp_hooks():
    cfg = GPTConfig(n_layers=2, n_heads=2, d_model=8, n_ctx=6, d_vocab=10, attn_only=True)
    model = random_model(cfg)
    assert set(model.hook_names) == expected_hook_names(cfg)
    _, cache = model.run_with_cache(random_tokens(cfg, 2, 5))
    torch.testing.assert_close(cache["resid_post", 0], cache["resid_pre", 0] + cache["attn_out", 0])


def test_default_cache_leaves_out_result_and_named_result_is_cached(odd_model):
    tokens = random_tokens(ODD, 2, 7)
    _, cache = odd_model.run_with_cache(tokens)
    assert not any(n.endswith("hook_result") for n in cache.keys())
    _, cache = odd_model.run_with_cache(tokens, names=[("result", 1), "blocks.1.hook_attn_out"])
    assert set(cache.keys()) == {"blocks.1.attn.hook_result", "blocks.1.hook_attn_out"}


def naive_attention(model, cache, layer):
    """One head, one query position at a time, in plain loops: the z and pattern the model should produce."""
    attn, x = model.blocks[layer].attn, cache["normalized", layer, "ln1"]
    batch, pos, _ = x.shape
    z = torch.zeros(batch, pos, attn.cfg.n_heads, attn.cfg.d_head)
    pattern = torch.zeros(batch, attn.cfg.n_heads, pos, pos)
    for b in range(batch):
        for h in range(attn.cfg.n_heads):
            for i in range(pos):
                q = x[b, i] @ attn.W_Q[h] + attn.b_Q[h]
                scores = torch.stack([(q @ (x[b, j] @ attn.W_K[h] + attn.b_K[h])) / math.sqrt(attn.cfg.d_head)
                                      for j in range(i + 1)])  # only keys at or before the query
                weights = torch.exp(scores - scores.max()) / torch.exp(scores - scores.max()).sum()
                pattern[b, h, i, : i + 1] = weights
                z[b, i, h] = sum(weights[j] * (x[b, j] @ attn.W_V[h] + attn.b_V[h]) for j in range(i + 1))
    return z, pattern


@torch.no_grad()
def test_attention_equals_a_naive_loop(odd_model):
    _, cache = odd_model.run_with_cache(random_tokens(ODD, 2, 7, seed=1))
    for layer in range(ODD.n_layers):
        z, pattern = naive_attention(odd_model, cache, layer)
        torch.testing.assert_close(cache["pattern", layer], pattern, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(cache["z", layer], z, atol=1e-5, rtol=1e-5)
        scores = cache["attn_scores", layer]
        assert torch.isinf(scores[..., 0, 1:]).all() and not torch.isinf(scores.tril()).any()


@torch.no_grad()
def test_layernorm_and_mlp_equal_torch_reference(odd_model):
    _, cache = odd_model.run_with_cache(random_tokens(ODD, 2, 7))
    block = odd_model.blocks[1]
    ln2 = F.layer_norm(cache["resid_mid", 1], (ODD.d_model,), block.ln2.w, block.ln2.b, eps=ODD.eps)
    torch.testing.assert_close(cache["normalized", 1, "ln2"], ln2, atol=1e-5, rtol=1e-5)
    pre = ln2 @ block.mlp.W_in + block.mlp.b_in
    gelu_tanh = 0.5 * pre * (1 + torch.tanh(math.sqrt(2 / math.pi) * (pre + 0.044715 * pre**3)))  # GPT-2's GELU
    torch.testing.assert_close(cache["post", 1], gelu_tanh, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache["mlp_out", 1], gelu_tanh @ block.mlp.W_out + block.mlp.b_out,
                               atol=1e-5, rtol=1e-5)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 3), pos=st.integers(1, ODD.n_ctx))
def test_residual_identities(seed, batch, pos):
    model = random_model(ODD, seed=seed % 7)
    tokens = random_tokens(ODD, batch, pos, seed=seed)
    _, cache = model.run_with_cache(tokens, names=lambda n: True)
    close = lambda a, b: torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for l in range(ODD.n_layers):
        close(cache["resid_mid", l], cache["resid_pre", l] + cache["attn_out", l])
        close(cache["resid_post", l], cache["resid_mid", l] + cache["mlp_out", l])
        close(cache["attn_out", l], cache["result", l].sum(2) + model.blocks[l].attn.b_O)
        for where in ("pre", "mid", "post"):
            close(cache.decompose_resid(l, where).sum(), cache[f"resid_{where}", l])
            close(cache.decompose_resid(l, where, split_heads=False).sum(), cache[f"resid_{where}", l])
    final = cache.decompose_resid(pos=-1)
    close(final.sum(), cache["resid_post", -1][:, -1])
    # The final LayerNorm as a linear map with the cached scale distributes over the components.
    ln = cache.apply_ln_final(final.tensor, pos=-1).sum(0) + model.ln_final.b
    close(ln, cache["ln_final.hook_normalized"][:, -1])
    close(cache.apply_ln_final(cache.resid(), recompute=True), cache["ln_final.hook_normalized"])


def test_decomposition_labels(odd_model):
    _, cache = odd_model.run_with_cache(random_tokens(ODD, 1, 4))
    comps = cache.decompose_resid(1, "mid")
    assert comps.labels == ["embed", "pos_embed", "L0H0", "L0H1", "L0H2", "L0attn_bias", "L0MLP",
                            "L1H0", "L1H1", "L1H2", "L1attn_bias"]
    torch.testing.assert_close(comps["L0MLP"], cache["mlp_out", 0])
    acc = cache.accumulated_resid()
    assert acc.labels == ["L0_pre", "L1_pre", "final"]
    torch.testing.assert_close(acc["final"], cache["resid_post", 1])


def test_loss_equals_cross_entropy(odd_model):
    tokens = random_tokens(ODD, 3, 9)
    logits, loss = odd_model(tokens, return_type="both")
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, ODD.d_vocab), tokens[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, ref)


def test_stop_at_layer_returns_resid_pre(odd_model):
    tokens = random_tokens(ODD, 2, 5)
    _, cache = odd_model.run_with_cache(tokens)
    torch.testing.assert_close(odd_model(tokens, stop_at_layer=1), cache["resid_pre", 1])


def test_bad_tokens_get_clear_errors(odd_model):
    with pytest.raises(PromptTooLongError, match="n_ctx=19"):
        odd_model(torch.zeros(1, 20, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 17\)"):
        odd_model(torch.tensor([[1, 17]]))
    with pytest.raises(TypeError, match="integer tensor"):
        odd_model(torch.zeros(1, 3))
    with pytest.raises(minimech.MinimechError, match="no tokenizer"):
        odd_model("hello")


def test_config_presets_and_parameter_count():
    for name, cfg in minimech.PRESETS.items():
        assert cfg.d_head * cfg.n_heads == cfg.d_model and cfg.d_mlp == 4 * cfg.d_model, name
    # tied=False counts what minimech stores (W_U apart from W_E, and b_U)
    assert ODD.param_count(tied=False) == sum(p.numel() for p in GPT(ODD).parameters())
    attn_only = GPTConfig(n_layers=2, n_heads=2, d_model=8, n_ctx=6, d_vocab=10, attn_only=True)
    assert attn_only.param_count(tied=False) == sum(p.numel() for p in GPT(attn_only).parameters())
    # TransformerLens's n_params: attention and MLP weight matrices only (84,934,656 for GPT-2 small)
    assert ODD.n_params == sum(p.numel() for n, p in GPT(ODD).named_parameters() if n.endswith(
        ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out")))
    with pytest.raises(ConfigError, match="not divisible"):
        GPTConfig(d_model=10, n_heads=3)
    with pytest.raises(ConfigError, match="act_fn"):
        GPTConfig(act_fn="swish")


def test_parameter_count_is_hugging_faces():
    """param_count() is what Hugging Face reports (tied W_U counted once): 124,439,808 for GPT-2 small."""
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.GPT2Config(n_layer=2, n_embd=24, n_head=3, n_positions=16, vocab_size=50)
    hf = transformers.GPT2LMHeadModel(hf_cfg)
    cfg = minimech.from_hf_config(hf_cfg.to_dict())
    assert cfg.param_count() == hf.num_parameters()
    assert cfg.param_count(embeddings=False) == hf.num_parameters(exclude_embeddings=True)


def test_from_hf_config_matches_transformers():
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2Config(n_layer=3, n_head=4, n_embd=32, n_positions=21, vocab_size=99, n_inner=50)
    cfg = minimech.from_hf_config(hf.to_dict())
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp, cfg.n_ctx, cfg.d_vocab) == \
        (3, 4, 32, 8, 50, 21, 99)
    assert minimech.from_hf_config(transformers.GPT2Config().to_dict()).replace(model_name="gpt2") == \
        minimech.PRESETS["gpt2"]
    with pytest.raises(ConfigError, match="model_type"):
        minimech.from_hf_config({"model_type": "llama"})
    with pytest.raises(ConfigError, match="scale_attn_by_inverse_layer_idx"):
        minimech.from_hf_config({"scale_attn_by_inverse_layer_idx": True})


def test_model_file_stays_readable():
    lines = (Path(minimech.__file__).parent / "model.py").read_text().splitlines()
    assert len(lines) <= 350, f"model.py has {len(lines)} lines; the budget is 350 (move helpers elsewhere)"


@torch.no_grad()
def test_fused_attention_path_equals_explicit_pattern_path(odd_model):
    """With no hook on the scores or pattern the model uses torch's fused attention; both paths must agree."""
    tokens = random_tokens(ODD, 2, 7, seed=4)
    plain = odd_model(tokens)
    zs = {}
    with odd_model.hooks([(("z", 1), lambda z, hook: zs.setdefault("fused", z))]):
        odd_model(tokens)
    logits, cache = odd_model.run_with_cache(tokens)  # caches the pattern: the explicit path
    torch.testing.assert_close(plain, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(zs["fused"], cache["z", 1], atol=1e-5, rtol=1e-5)
