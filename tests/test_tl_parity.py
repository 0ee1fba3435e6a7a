"""The TransformerLens calls minimech offers, each against TransformerLens 2.18 itself on the same random weights.

Skipped unless the `peers` extra is installed (pip install -e ".[peers]", after torch==2.13.0). One random
transformers.GPT2LMHeadModel (every parameter random: biases and LayerNorms too) is converted by both libraries, with
no weight processing on TransformerLens's side, and both get GPT-2's tokenizer built from the files minimech ships.
"""

import importlib.resources
import tempfile

import pytest
import torch

transformer_lens = pytest.importorskip("transformer_lens")
transformers = pytest.importorskip("transformers")

import minimech  # noqa: E402
from minimech.loading import hf_to_minimech  # noqa: E402
from minimech.tokenizer import Tokenizer  # noqa: E402

PROMPT = "When Mary and John went to the store, John gave a drink to Mary"
ATOL = 2e-5


def close(ours, theirs, atol=ATOL):
    assert isinstance(ours, torch.Tensor) and ours.shape == theirs.shape, (getattr(ours, "shape", ours), theirs.shape)
    torch.testing.assert_close(ours.detach().float(), theirs.detach().float(), atol=atol, rtol=1e-4)


@pytest.fixture(scope="module")
def pair():
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(n_layer=3, n_embd=48, n_head=4, n_positions=64, vocab_size=50257)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    cfg = minimech.from_hf_config(hf_cfg.to_dict(), model_name="random")
    ours = minimech.GPT(cfg, tokenizer=Tokenizer(), init=False)
    ours.load_state_dict(hf_to_minimech(hf.state_dict(), cfg))
    data = importlib.resources.files("minimech") / "data" / "gpt2"
    with tempfile.TemporaryDirectory() as folder:  # TransformerLens re-loads its tokenizer by name: give it a folder
        transformers.GPT2TokenizerFast(vocab_file=str(data / "encoder.json"),
                                       merges_file=str(data / "vocab.bpe")).save_pretrained(folder)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        tl_cfg = HookedTransformerConfig(n_layers=3, d_model=48, n_ctx=64, n_heads=4, d_head=12, d_mlp=192,
                                         d_vocab=50257, act_fn="gelu_new", normalization_type="LN", eps=1e-5)
        tl = HookedTransformer(tl_cfg, tokenizer=tokenizer)
    tl.load_and_process_state_dict(convert_gpt2_weights(hf, tl_cfg), fold_ln=False, center_writing_weights=False,
                                   center_unembed=False, fold_value_biases=False)
    return ours.eval(), tl.eval()


@pytest.fixture(scope="module")
def caches(pair):
    ours, tl = pair
    tokens = ours.to_tokens([PROMPT, PROMPT.replace("Mary", "Alice").replace("John", "Bob")])
    assert torch.equal(tokens, tl.to_tokens([PROMPT, PROMPT.replace("Mary", "Alice").replace("John", "Bob")]))
    with torch.no_grad():
        logits, cache = ours.run_with_cache(tokens)
        tl_logits, tl_cache = tl.run_with_cache(tokens)
    close(logits, tl_logits)
    return tokens, cache, tl_cache


# ---- the model ------------------------------------------------------------------------------------------------------

def test_stacked_weights_and_biases(pair):
    ours, tl = pair
    for name in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "W_E",
                 "W_pos", "W_U", "b_U"):
        close(getattr(ours, name), getattr(tl, name))
    for circuit in ("OV", "QK"):
        ours_c, tl_c = getattr(ours, circuit), getattr(tl, circuit)
        assert ours_c.shape == tuple(tl_c.shape)
        close(ours_c.AB, tl_c.AB, atol=1e-4)
        close(ours_c[2, 1].AB, tl_c[2, 1].AB, atol=1e-4)


def nonzero_eigenvalues(values: torch.Tensor, keep: int) -> torch.Tensor:
    values = values.to(torch.complex128).flatten()
    return values[values.abs().argsort(descending=True)][:keep]


def test_factored_matrix_product_has_eigenvalues_as_transformer_lens(pair):
    ours, tl = pair
    product = ours.OV[0, 1] @ ours.QK[2, 3]  # a composition: d_model x d_model through two heads
    tl_product = tl.OV[0, 1] @ tl.QK[2, 3]
    close(product.AB, tl_product.AB, atol=1e-4)
    mine, theirs = product.eigenvalues(), tl_product.eigenvalues
    keep = ours.cfg.d_head  # the rank: every other eigenvalue is 0
    theirs = nonzero_eigenvalues(theirs, keep)
    for value in nonzero_eigenvalues(mine, keep):
        assert (theirs - value).abs().min() < 1e-4 * max(1.0, abs(value))


def test_config_n_params_device_dtype(pair):
    ours, tl = pair
    assert ours.cfg.n_params == tl.cfg.n_params
    assert ours.cfg.device == torch.device(tl.cfg.device) and ours.cfg.dtype == tl.cfg.dtype
    copy = minimech.GPT(ours.cfg.replace(n_layers=1), tokenizer=None).double()
    assert copy.cfg.dtype == torch.float64 and ours.cfg.dtype == torch.float32  # each model its own cfg


def test_forward_options(pair):
    ours, tl = pair
    with torch.no_grad():
        close(ours(PROMPT, return_type="loss", loss_per_token=True),
              tl(PROMPT, return_type="loss", loss_per_token=True))
        close(ours(PROMPT, prepend_bos=False), tl(PROMPT, prepend_bos=False))
        tokens = ours.to_tokens(PROMPT)
        resid = ours(tokens, stop_at_layer=1)
        close(resid, tl(tokens, stop_at_layer=1))
        close(ours(resid, start_at_layer=1), tl(resid, start_at_layer=1))
        close(ours(resid, start_at_layer=1, stop_at_layer=-1), tl(resid, start_at_layer=1, stop_at_layer=-1))
        close(ours(resid, start_at_layer=1, return_type="loss", tokens=tokens),
              tl(resid, start_at_layer=1, return_type="loss", tokens=tokens))


def test_token_helpers(pair):
    ours, tl = pair
    assert ours.to_single_str_token(15496) == tl.to_single_str_token(15496)
    for mode in ("first", "last"):
        assert ours.get_token_position(" John", PROMPT, mode=mode) == tl.get_token_position(" John", PROMPT, mode=mode)
        assert ours.get_token_position(" Mary", PROMPT, mode=mode, prepend_bos=False) == \
            tl.get_token_position(" Mary", PROMPT, mode=mode, prepend_bos=False)
        tokens = ours.to_tokens(PROMPT)
        assert ours.get_token_position(ours.to_single_token(" Mary"), tokens, mode=mode) == \
            tl.get_token_position(tl.to_single_token(" Mary"), tokens, mode=mode)
    with pytest.raises(minimech.MinimechError, match="does not occur"):
        ours.get_token_position(" Alice", PROMPT)
    ids = torch.tensor([[3, 50256, 17], [9, 9, 1000]])
    for tokens in (" Mary", 1000, torch.tensor(1000), torch.tensor([5, 7]), ids):
        close(ours.tokens_to_residual_directions(tokens), tl.tokens_to_residual_directions(tokens))
    for layer, mlp_input, include in ((0, False, True), (2, True, True), (3, False, False)):
        close(ours.accumulated_bias(layer, mlp_input, include), tl.accumulated_bias(layer, mlp_input, include))


# ---- the cache ------------------------------------------------------------------------------------------------------

def test_accumulated_resid_is_a_tensor_as_in_transformer_lens(pair, caches):
    ours, tl = pair
    _, cache, tl_cache = caches
    acc = cache.accumulated_resid()
    close(acc, tl_cache.accumulated_resid())
    assert acc.shape[0] == ours.cfg.n_layers + 1 and acc.labels[-1] == "final"
    close(acc @ ours.W_U, tl_cache.accumulated_resid() @ tl.W_U, atol=1e-4)  # the logit lens, TransformerLens-style
    close(acc[0], tl_cache.accumulated_resid()[0])
    close(acc["L1_pre"], tl_cache["resid_pre", 1])
    for kwargs in (dict(apply_ln=True), dict(layer=2, apply_ln=True), dict(layer=1, incl_mid=True, apply_ln=True),
                   dict(layer=2, mlp_input=True, apply_ln=True), dict(layer=-1, incl_mid=True, pos_slice=-1),
                   dict(apply_ln=True, pos_slice=-1), dict(layer=2, apply_ln=True, pos_slice=(1, 4))):
        mine, labels = cache.accumulated_resid(return_labels=True, **kwargs)
        theirs, tl_labels = tl_cache.accumulated_resid(return_labels=True, **kwargs)
        close(mine, theirs)
        assert labels == tl_labels, kwargs


def test_stack_head_results_and_apply_ln_to_stack(pair, caches):
    _, cache, tl_cache = caches
    for kwargs in (dict(), dict(layer=2), dict(layer=0), dict(incl_remainder=True), dict(layer=2, pos_slice=-1),
                   dict(apply_ln=True), dict(layer=1, apply_ln=True, pos_slice=-1, incl_remainder=True)):
        mine, labels = cache.stack_head_results(return_labels=True, **kwargs)
        theirs, tl_labels = tl_cache.stack_head_results(return_labels=True, **kwargs)
        close(mine, theirs)
        assert labels == tl_labels
    stack = cache.stack_head_results(layer=2, pos_slice=-1)
    for kwargs in (dict(), dict(layer=1), dict(layer=1, mlp_input=True), dict(layer=2, batch_slice=1),
                   dict(batch_slice=(0, 1))):
        close(cache.apply_ln_to_stack(stack, pos_slice=-1, **kwargs),
              tl_cache.apply_ln_to_stack(stack, pos_slice=-1, **kwargs))


def test_stack_activation(caches):
    _, cache, tl_cache = caches
    for name, layer, sub in (("pattern", -1, None), ("resid_pre", 2, None), ("scale", -1, "ln1"), ("z", 1, None),
                             ("post", -1, None)):
        close(cache.stack_activation(name, layer, sub), tl_cache.stack_activation(name, layer, sub))


def test_logit_attrs(pair, caches):
    ours, _ = pair
    tokens, cache, tl_cache = caches
    stack = cache.stack_head_results(pos_slice=-1)  # [components, batch, d_model]
    tl_stack = tl_cache.stack_head_results(pos_slice=-1)
    mary, john = ours.to_single_token(" Mary"), ours.to_single_token(" John")
    for correct, wrong in ((" Mary", None), (" Mary", " John"), (torch.tensor([mary, john]), torch.tensor([john, mary])),
                           (mary, john)):
        close(cache.logit_attrs(stack, correct, wrong, pos_slice=-1),
              tl_cache.logit_attrs(tl_stack, correct, wrong, pos_slice=-1))
    full = cache.accumulated_resid()  # [points, batch, pos, d_model]: one direction per (batch, pos)
    close(cache.logit_attrs(full, tokens), tl_cache.logit_attrs(tl_cache.accumulated_resid(), tokens), atol=1e-4)
    with pytest.raises(ValueError, match="same shape"):
        cache.logit_attrs(stack, torch.tensor([mary, john]), mary)


def test_get_full_resid_decomposition(caches):
    _, cache, tl_cache = caches
    for kwargs in (dict(), dict(expand_neurons=False), dict(layer=2, mlp_input=True), dict(layer=0),
                   dict(layer=1, expand_neurons=False, apply_ln=True, pos_slice=-1), dict(pos_slice=-1)):
        mine, labels = cache.get_full_resid_decomposition(return_labels=True, **kwargs)
        theirs, tl_labels = tl_cache.get_full_resid_decomposition(return_labels=True, **kwargs)
        close(mine, theirs, atol=1e-4)
        assert labels == tl_labels, kwargs
    total = cache.get_full_resid_decomposition(pos_slice=-1).sum(0)
    close(total, cache["resid_post", -1][:, -1], atol=1e-4)  # and the parts add up to the stream


# ---- optional hook points -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("switch", ["set_use_attn_in", "set_use_split_qkv_input", "set_use_hook_mlp_in",
                                   "set_use_attn_result"])
def test_optional_hook_points_cache_as_transformer_lens(pair, switch):
    ours, tl = pair
    tokens = ours.to_tokens(PROMPT)
    getattr(ours, switch)(True)
    getattr(tl, switch)(True)
    try:
        with torch.no_grad():
            _, cache = ours.run_with_cache(tokens)
            _, tl_cache = tl.run_with_cache(tokens)
        assert set(cache.keys()) == set(tl_cache.keys())
        for name in cache.keys():
            close(cache[name], tl_cache[name], atol=1e-4)

        def zero_head_2(x, hook):  # the same edit in both libraries: head 2's input (or the MLP's) at position 3
            x = x.clone()
            x[:, 3, 2] = 0
            return x

        hook = {"set_use_attn_in": "hook_attn_in", "set_use_split_qkv_input": "hook_k_input",
                "set_use_hook_mlp_in": "hook_mlp_in", "set_use_attn_result": "attn.hook_result"}[switch]
        name = f"blocks.1.{hook}"
        with torch.no_grad():
            close(ours.run_with_hooks(tokens, fwd_hooks=[(name, zero_head_2)]),
                  tl.run_with_hooks(tokens, fwd_hooks=[(name, zero_head_2)]), atol=1e-4)
    finally:
        getattr(ours, switch)(False)
        getattr(tl, switch)(False)
    assert not any(n.endswith(("_input", "attn_in", "mlp_in")) for n in ours.hook_names)
