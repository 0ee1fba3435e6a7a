"""Logit lens, ablation, activation patching and causal tracing, each checked against a ground truth computed another
way: the model's own output, a model with weights zeroed, a corrupt prompt with one token swapped back."""

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import ODD, assert_unchanged, random_model, random_tokens, snapshot
from minimech import GPT, GPTConfig, MinimechError
from minimech.analysis import (PatchingError, TracingError, causal_trace, find_subject_positions, logit_lens,
                               mean_ablate_heads, mean_ablate_mlps, patch_heads, patch_mlps, patch_resid)
from minimech.tokenizer import Tokenizer

ATTN_ONLY = GPTConfig(n_layers=2, n_heads=3, d_head=5, d_model=11, n_ctx=19, d_vocab=17, attn_only=True)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: with several intra-op threads on a busy machine, thread hand-offs cost far more than
    the maths (the tracing tests ran 4 s instead of 0.06 s), so run this module on one thread and restore after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def no_hooks_left(model) -> bool:
    return all(not point.fns for point in model.hook_dict.values())


def logit_metric(token: int = 3):
    return lambda logits: logits[:, -1, token].mean()  # mean logit of one token at the last position


# ---- logit lens ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ln", ["recompute", "cached"])
@pytest.mark.parametrize("pos", [-1, 2, None])
def test_lens_final_point_is_the_models_prediction(odd_model, ln, pos):
    tokens = random_tokens(ODD, 2, 7)
    before = snapshot(odd_model)
    result = logit_lens(odd_model, tokens, pos=pos, ln=ln)
    expected = odd_model(tokens).log_softmax(-1)  # [batch, pos, d_vocab]
    expected = expected if pos is None else expected[:, pos]
    assert result.labels == ["L0_pre", "L1_pre", "final"]
    torch.testing.assert_close(result.log_probs[-1], expected, atol=1e-5, rtol=0)
    assert_unchanged(odd_model, before)
    assert no_hooks_left(odd_model)


def test_lens_first_point_is_the_embedding_read_by_the_unembedding(odd_model):
    tokens = random_tokens(ODD, 2, 7)
    m = odd_model
    resid = m.W_E[tokens] + m.W_pos[:7]  # [batch, pos, d_model]
    normed = F.layer_norm(resid, (ODD.d_model,), m.ln_final.w, m.ln_final.b, eps=ODD.eps)
    expected = (normed @ m.W_U + m.b_U).log_softmax(-1)[:, -1]  # [batch, d_vocab]
    torch.testing.assert_close(logit_lens(m, tokens).log_probs[0], expected, atol=1e-5, rtol=0)


def test_lens_top_k_rank_and_repr(odd_model):
    tokens = random_tokens(ODD, 2, 7)
    result = logit_lens(odd_model, tokens, k=3)
    top = result.top_k(4)
    assert len(top) == 3 and all(len(row) == 4 for row in top)
    probs = [p for _, p in top[1]]
    assert probs == sorted(probs, reverse=True)
    best = result.log_probs[1, 0].argmax()
    assert top[1][0] == (str(int(best)), pytest.approx(result.log_probs[1, 0, best].exp().item()))
    ranks = result.rank_of(best)  # [n_points, batch]
    assert ranks.shape == (3, 2) and ranks[1, 0] == 0
    order = result.log_probs[:, 1].argsort(-1, descending=True)  # [n_points, d_vocab]
    assert ranks[:, 1].tolist() == (order == best).nonzero()[:, 1].tolist()
    assert "final" in repr(result) and "L1_pre" in repr(result)


def test_lens_attention_only_and_grid():
    model = random_model(ATTN_ONLY)
    tokens = random_tokens(ATTN_ONLY, 1, 6)
    result = logit_lens(model, tokens, pos=None, incl_mid=True)  # incl_mid: no resid_mid, so no extra points
    assert result.log_probs.shape == (3, 1, 6, ATTN_ONLY.d_vocab)
    probs, strs = result.grid()
    assert probs.shape == (3, 6) and len(strs) == 3 and len(strs[0]) == 6
    torch.testing.assert_close(probs[-1], model(tokens)[0].softmax(-1).max(-1).values, atol=1e-5, rtol=0)


# ---- ablation -----------------------------------------------------------------------------------------------------
def test_mean_ablating_one_head_matches_a_hand_written_hook(odd_model):
    tokens, reference = random_tokens(ODD, 2, 7), random_tokens(ODD, 4, 5, seed=1)
    metric = logit_metric()
    _, cache = odd_model.run_with_cache(reference)
    mean = cache["z", 1].mean((0, 1))[2]  # [d_head]: reference is shorter, so over batch and positions

    def hook(z, hook):
        z = z.clone()
        z[:, :, 2] = mean
        return z

    expected = metric(odd_model.run_with_hooks(tokens, [("blocks.1.attn.hook_z", hook)])) - metric(odd_model(tokens))
    result = mean_ablate_heads(odd_model, tokens, metric, reference=reference)
    assert result.shape == (2, 3)
    assert result[1, 2].item() == pytest.approx(expected.item(), abs=1e-5)
    assert no_hooks_left(odd_model)


def test_zero_ablating_each_head_equals_zeroing_its_W_O():
    cfg = ATTN_ONLY.replace(n_layers=1)
    model = random_model(cfg)
    tokens, metric = random_tokens(cfg, 3, 6), logit_metric(5)
    result = mean_ablate_heads(model, tokens, metric, zero_ablate=True)
    clean = metric(model(tokens)).item()
    for head in range(cfg.n_heads):
        zeroed = copy.deepcopy(model)
        with torch.no_grad():
            zeroed.blocks[0].attn.W_O[head] = 0
        assert result[0, head].item() == pytest.approx(metric(zeroed(tokens)).item() - clean, abs=1e-5)
    assert result.abs().max() > 1e-4  # the heads do matter, so the comparison above means something


def test_zero_ablating_an_mlp_equals_zeroing_its_output_weights(odd_model):
    tokens, metric = random_tokens(ODD, 2, 7), logit_metric()
    before = snapshot(odd_model)
    result = mean_ablate_mlps(odd_model, tokens, metric, zero_ablate=True)
    zeroed = copy.deepcopy(odd_model)
    with torch.no_grad():
        zeroed.blocks[0].mlp.W_out.zero_()
        zeroed.blocks[0].mlp.b_out.zero_()
    expected = metric(zeroed(tokens)) - metric(odd_model(tokens))
    assert result.shape == (2,) and result[0].item() == pytest.approx(expected.item(), abs=1e-5)
    assert_unchanged(odd_model, before)
    # the mean over a one-prompt batch is that prompt itself: refused rather than a silent "no effect"
    with pytest.raises(MinimechError, match="more than one prompt"):
        mean_ablate_mlps(odd_model, tokens[:1], metric)
    assert mean_ablate_mlps(odd_model, tokens[:1], metric, reference=tokens).abs().max() > 0


def test_ablation_errors():
    model = random_model(ATTN_ONLY)
    tokens = random_tokens(ATTN_ONLY, 2, 4)
    with pytest.raises(MinimechError, match="attention-only"):
        mean_ablate_mlps(model, tokens, logit_metric())
    with pytest.raises(MinimechError, match="scalar"):
        mean_ablate_heads(model, tokens, lambda logits: logits[:, -1, 0])


# ---- activation patching -----------------------------------------------------------------------------------------
def swapped_pair(cfg, pos=7, where=3):
    """Clean and corrupt tokens [2, pos] that differ at position `where` only."""
    clean = random_tokens(cfg, 2, pos)
    corrupt = clean.clone()
    corrupt[:, where] = (clean[:, where] + 1) % cfg.d_vocab
    return clean, corrupt


def test_patch_resid_layer_0_is_swapping_the_token_back(odd_model):
    # resid_pre of layer 0 is embed + pos_embed of that token: patching it = the corrupt prompt with that token clean
    clean, corrupt = random_tokens(ODD, 2, 7, seed=1), random_tokens(ODD, 2, 7, seed=2)
    metric = logit_metric()
    m_clean, m_corrupt = metric(odd_model(clean)).item(), metric(odd_model(corrupt)).item()
    result = patch_resid(odd_model, clean, corrupt, metric, normalise=True)
    assert result.shape == (2, 7)
    for p in range(7):
        mixed = corrupt.clone()
        mixed[:, p] = clean[:, p]
        expected = (metric(odd_model(mixed)).item() - m_corrupt) / (m_clean - m_corrupt)
        assert result[0, p].item() == pytest.approx(expected, abs=1e-4)
    assert no_hooks_left(odd_model)


def test_patching_respects_causality(odd_model):
    clean, corrupt = swapped_pair(ODD, where=3)
    metric = logit_metric()
    resid = patch_resid(odd_model, clean, corrupt, metric, normalise=True)
    mlps = patch_mlps(odd_model, clean, corrupt, metric, normalise=True)
    # before position 3 both runs are identical, so patching there changes nothing
    assert resid[:, :3].abs().max() < 1e-4 and mlps[:, :3].abs().max() < 1e-4
    assert resid[0, 3].item() == pytest.approx(1.0, abs=1e-4)  # the only differing token, patched back
    raw = patch_resid(odd_model, clean, corrupt, metric, normalise=False)
    assert raw[0, 3].item() == pytest.approx(metric(odd_model(clean)).item(), abs=1e-4)


def test_patching_one_head_everywhere_equals_patching_attn_out():
    cfg = ATTN_ONLY.replace(n_heads=1, d_head=4)  # one head: its hook_z decides the whole hook_attn_out
    model = random_model(cfg)
    clean, corrupt = swapped_pair(cfg, pos=6, where=2)
    metric = logit_metric()
    _, cache = model.run_with_cache(clean)
    m_clean, m_corrupt = metric(model(clean)).item(), metric(model(corrupt)).item()
    result = patch_heads(model, clean, corrupt, metric, normalise=True)
    for layer in range(cfg.n_layers):
        hook = (f"blocks.{layer}.hook_attn_out", lambda act, hook: cache[hook.name])
        patched = metric(model.run_with_hooks(corrupt, [hook])).item()
        assert result[layer, 0].item() == pytest.approx((patched - m_corrupt) / (m_clean - m_corrupt), abs=1e-4)
    at_pos = patch_heads(model, clean, corrupt, metric, pos=1, normalise=True)  # before the differing token: no effect
    assert at_pos.abs().max() < 1e-4


def test_patching_errors(odd_model):
    clean, corrupt = swapped_pair(ODD)
    with pytest.raises(PatchingError, match=r"\(2, 7\).*\(2, 6\)"):
        patch_resid(odd_model, clean, corrupt[:, :6], logit_metric())
    with pytest.raises(PatchingError, match="both"):
        patch_heads(odd_model, clean, clean, logit_metric(), normalise=True)
    with pytest.raises(MinimechError, match="attention-only"):
        patch_mlps(random_model(ATTN_ONLY), clean, corrupt, logit_metric())
    assert no_hooks_left(odd_model)


# ---- causal tracing -----------------------------------------------------------------------------------------------
PROMPT = "The Eiffel Tower is located in the city of"


@pytest.fixture(scope="module")
def fact_model():
    """A random model with a compact vocabulary that covers the prompt, so it takes strings."""
    tok = Tokenizer()
    gpt2_ids = set(tok.encode(PROMPT + " Paris Tower Eiffel")) | {50256}
    tokenizer = Tokenizer(sorted(gpt2_ids) + [-1])
    cfg = GPTConfig(n_layers=3, n_heads=2, d_model=16, n_ctx=32, d_vocab=len(tokenizer), model_name="fact")
    model = random_model(cfg, seed=4)
    model.tokenizer = tokenizer
    return model


def test_trace_without_noise_is_the_clean_run(fact_model):
    result = causal_trace(fact_model, PROMPT, " Paris", "Eiffel Tower", noise=0.0, samples=3)
    clean = fact_model(PROMPT)[0, -1].softmax(-1)[fact_model.to_single_token(" Paris")].item()
    assert result.clean_prob == pytest.approx(clean, abs=1e-6)
    assert result.corrupt_prob == pytest.approx(clean, abs=1e-5)
    for kind in ("resid", "mlp", "attn"):
        assert result.scores[kind].shape == (3, len(result.str_tokens))
        torch.testing.assert_close(result.scores[kind], torch.full_like(result.scores[kind], clean), atol=1e-5,
                                   rtol=0)
    assert no_hooks_left(fact_model)


def test_trace_restoring_states(fact_model):
    before = snapshot(fact_model)
    result = causal_trace(fact_model, PROMPT, " Paris", "Eiffel Tower", samples=4, seed=1)
    assert result.str_tokens[result.subject_positions[0]] == " E"  # " Eiffel Tower" with its leading space
    assert abs(result.corrupt_prob - result.clean_prob) > 1e-4  # the noise matters
    resid = result.scores["resid"]  # [n_layers, pos]
    # the last layer's output at the last position is all the logits read: restoring it restores the answer
    assert resid[-1, -1].item() == pytest.approx(result.clean_prob, abs=1e-5)
    assert result.peak("resid") == divmod(int(resid.argmax()), resid.shape[1])
    # positions before the subject never see the noise: restoring them changes nothing
    first = result.subject_positions[0]
    torch.testing.assert_close(resid[:, :first], torch.full_like(resid[:, :first], result.corrupt_prob), atol=1e-5,
                               rtol=0)
    assert_unchanged(fact_model, before)
    assert no_hooks_left(fact_model)


def test_trace_noise_is_three_embedding_stds(fact_model):
    result = causal_trace(fact_model, PROMPT, " Paris", "Eiffel Tower", samples=5, seed=2, kinds=("attn",))
    positions, d_model = result.subject_positions, fact_model.cfg.d_model
    noise = torch.randn(5, len(positions), d_model, generator=torch.Generator().manual_seed(2))
    noise = noise * 3 * fact_model.W_E.detach().std()

    def add_noise(embed, hook):
        embed = embed.clone()
        embed[:, positions] += noise
        return embed

    tokens = fact_model.to_tokens(PROMPT).expand(5, -1)
    logits = fact_model.run_with_hooks(tokens, [("hook_embed", add_noise)])
    expected = logits[:, -1].softmax(-1)[:, result.answer].mean().item()
    assert result.corrupt_prob == pytest.approx(expected, abs=1e-6)
    assert list(result.scores) == ["attn"]



def test_trace_equals_full_runs_one_cell_at_a_time(fact_model):
    """causal_trace's restored runs start at the first restored layer (from the noised runs' stream there) and
    unembed only the last position: the numbers must be those of full runs from the embeddings, one cell at a time,
    for the stream and for windowed MLPs and attention (window 2: the first restored layer is below the cell's)."""
    result = causal_trace(fact_model, PROMPT, " Paris", "Eiffel Tower", samples=3, seed=5, window=2)
    tokens, positions, n_layers = fact_model.to_tokens(PROMPT), result.subject_positions, fact_model.cfg.n_layers
    noise = torch.randn(3, len(positions), fact_model.cfg.d_model, generator=torch.Generator().manual_seed(5))
    noise = noise * result.noise

    def add_noise(embed, hook):
        embed = embed.clone()
        embed[:, positions] += noise
        return embed

    _, clean = fact_model.run_with_cache(tokens)
    for kind, name in [("resid", "hook_resid_post"), ("mlp", "hook_mlp_out"), ("attn", "hook_attn_out")]:
        for layer in range(n_layers):
            width = 1 if kind == "resid" else 2
            layers = range(max(0, layer - width // 2), min(n_layers, layer + (width + 1) // 2))
            for pos in range(tokens.shape[1]):
                def restore(act, hook, pos=pos):
                    act = act.clone()
                    act[:, pos] = clean[hook.name][0, pos]
                    return act

                hooks = [("hook_embed", add_noise)] + [(f"blocks.{l}.{name}", restore) for l in layers]
                logits = fact_model.run_with_hooks(tokens.expand(3, -1), hooks)  # [3, pos, d_vocab]
                expected = logits[:, -1].softmax(-1)[:, result.answer].mean().item()
                assert result.scores[kind][layer, pos].item() == pytest.approx(expected, abs=1e-6), (kind, layer, pos)
    assert no_hooks_left(fact_model)

def test_find_subject_positions(fact_model):
    tokens = fact_model.to_tokens("The Tower is the Tower")
    last = find_subject_positions(fact_model, tokens, "Tower")  # no leading space in the text: found with one
    assert last == [5]
    assert find_subject_positions(fact_model, tokens, [int(tokens[0, 3])]) == [3]  # token ids: ' is'
    with pytest.raises(TracingError, match=r"'Paris'.*' Tower'"):
        find_subject_positions(fact_model, tokens, "Paris")
    with pytest.raises(TracingError, match="Paris"):
        causal_trace(fact_model, "The Tower is", " Paris", "Paris")
    # an out-of-vocabulary subject encodes as the unknown token, which must not match the prompt's unknown tokens
    with pytest.warns(UserWarning, match="<unk>"):  # to_tokens says so too
        louvre = fact_model.to_tokens("The Louvre is")
    with pytest.raises(TracingError, match="outside the vocabulary"):
        find_subject_positions(fact_model, louvre, "Louvre")
    assert no_hooks_left(fact_model)


def test_trace_on_token_ids_and_attention_only():
    model = random_model(ATTN_ONLY)
    tokens = random_tokens(ATTN_ONLY, 1, 6)
    result = causal_trace(model, tokens, 4, subject=tokens[0, 1:3].tolist(), kinds=("resid", "attn"), samples=2)
    assert result.subject_positions == [1, 2] and result.str_tokens == [str(t) for t in tokens[0].tolist()]
    assert "peak" in repr(result)
    with pytest.raises(TracingError, match="attention-only"):
        causal_trace(model, tokens, 4, subject=tokens[0, 1:3].tolist())
