"""Inputs a learner plausibly gives that once gave a silent wrong answer or a raw traceback: each now gets one clear
error (a MinimechError that names the problem and the way out), or the TransformerLens meaning."""

import pytest
import torch

import minimech
from minimech.analysis import causal_trace, detector_scores, logit_attribution, logit_diff, mean_ablate_heads
from minimech.errors import MinimechError

from conftest import ODD, random_model, random_tokens


@pytest.fixture(scope="module")
def mini():
    return minimech.load()


def test_a_word_outside_the_compact_vocabulary_is_refused_not_read_as_unk(mini):
    unk = mini.tokenizer.unk_id
    word = next(w for w in (" Hello", " Romeo", " xylophone", " quantum") if mini.tokenizer.encode(w) == [unk])
    with pytest.raises(MinimechError, match="not in this model's vocabulary"):
        mini.to_single_token(word)
    with pytest.raises(MinimechError, match="not in this model's vocabulary"):
        causal_trace(mini, "France's capital is", word, subject="France")
    assert mini.to_single_token(" Paris") != unk  # a word it knows still works


def test_prompts_of_different_lengths_are_refused_where_padding_would_be_read(mini):
    short, long = "Then Mary and John went home, John gave a book to", \
        "When Mary and John went to the store, John gave a drink to"
    assert len(mini.to_tokens(short)[0]) != len(mini.to_tokens(long)[0])
    with pytest.raises(MinimechError, match="different numbers of tokens"):
        logit_attribution(mini, [short, long], " Mary", " John")
    with pytest.raises(MinimechError, match="different numbers of tokens"):
        mini([short, long])
    same = mini([long, long.replace("Mary", "Anna")])  # equal lengths still batch
    assert same.shape[0] == 2


def test_model_call_arguments_are_checked():
    model = random_model(ODD)
    tokens = random_tokens(ODD, 2, 5)
    with pytest.raises(MinimechError, match="return_type"):
        model(tokens, return_type="probs")
    with pytest.raises(MinimechError, match="stop_at_layer"):
        model(tokens, stop_at_layer=99)
    with pytest.raises(MinimechError, match="at least 2 tokens"):
        model(tokens[:, :1], return_type="loss")
    with pytest.raises(MinimechError, match="batch >= 1"):
        model(torch.zeros(0, 3, dtype=torch.long))
    with pytest.raises(TypeError):  # still a TypeError for code that catches it, and a MinimechError
        model(tokens.float())
    with pytest.raises(MinimechError):
        model(tokens.float())
    assert model(tokens, stop_at_layer=-1).shape == (2, 5, ODD.d_model)


def test_out_of_range_ids_to_the_tokenizer_name_the_problem(mini):
    with pytest.raises(MinimechError, match="another model's tokenizer"):
        mini.to_str_tokens(torch.tensor([mini.cfg.d_vocab + 5]))
    with pytest.raises(MinimechError, match=r"\[0, "):
        mini.to_string(torch.tensor([-1]))


def test_mean_ablation_over_one_prompt_is_refused_not_a_silent_zero(mini):
    tokens = mini.to_tokens("When Mary and John went to the store, John gave a drink to")
    metric = logit_diff(mini.to_single_token(" Mary"), mini.to_single_token(" John"))
    with pytest.raises(MinimechError, match="more than one prompt"):
        mean_ablate_heads(mini, tokens, metric)
    assert mean_ablate_heads(mini, tokens, metric, zero_ablate=True).abs().max() > 0


def test_logit_diff_of_strings_says_to_pass_ids():
    with pytest.raises(MinimechError, match="to_single_token"):
        logit_diff(" Mary", " John")


def test_causal_trace_window_and_samples_must_be_positive(mini):
    for kwargs in ({"window": 0}, {"window": -2}, {"samples": 0}):
        with pytest.raises(MinimechError, match="window"):
            causal_trace(mini, "France's capital is", " Paris", subject="France", **kwargs)


def test_transformerlens_call_styles():
    model = random_model(ODD)
    tokens = random_tokens(ODD, 2, 5)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: "resid" in n)
    assert "blocks.0.hook_resid_pre" in cache and "blocks.0.attn.hook_pattern" not in cache
    # accumulated_resid(layer) as in TransformerLens: resid_pre of blocks 0..layer; -1 or None: all and the final
    assert cache.accumulated_resid(layer=1).labels == ["L0_pre", "L1_pre"]
    assert cache.accumulated_resid(layer=0).labels == ["L0_pre"]
    assert cache.accumulated_resid(layer=-1).labels == cache.accumulated_resid().labels == ["L0_pre", "L1_pre", "final"]
    with pytest.raises(MinimechError, match="layer=5"):
        cache.accumulated_resid(layer=5)
    # keys that name nothing are simply not in the cache; odd key types get a clear error
    assert ("patern", 1) not in cache and 0 not in cache
    with pytest.raises(MinimechError, match="cache keys are hook names"):
        cache[0]


def test_hook_arguments_in_the_shapes_people_write():
    model = random_model(ODD)
    tokens = random_tokens(ODD, 2, 5)
    seen = []
    model.run_with_hooks(tokens, ("blocks.0.hook_resid_pre", lambda act, hook: seen.append(hook.name)))
    assert seen == ["blocks.0.hook_resid_pre"]  # a lone (name, fn) pair, without the list around it
    _, cache = model.run_with_cache(tokens, names=("blocks.0.hook_resid_pre", "hook_embed"))
    assert set(cache.keys()) == {"blocks.0.hook_resid_pre", "hook_embed"}  # a tuple of names
    _, cache = model.run_with_cache(tokens, names=("pattern", 1))  # a (short, layer) key
    assert list(cache.keys()) == ["blocks.1.attn.hook_pattern"]
    assert all(not point.fns for point in model.hook_dict.values())


def test_detector_scores_default_fits_a_short_context():
    cfg = ODD  # n_ctx 19: 20 repeated tokens do not fit
    scores = detector_scores(random_model(cfg))
    assert scores["induction"].shape == (cfg.n_layers, cfg.n_heads)


def test_positions_outside_the_prompt_are_named(mini):
    from minimech.analysis import logit_lens, steer
    prompt = "France's capital is"
    n_pos = mini.to_tokens(prompt).shape[1]
    with pytest.raises(MinimechError, match=f"has {n_pos} positions"):
        logit_lens(mini, prompt, pos=n_pos + 3)
    with pytest.raises(MinimechError, match=f"has {n_pos} positions"):
        logit_diff(1, 2, pos=50)(mini(prompt))
    with pytest.raises(MinimechError, match="positions=99"):
        with steer(mini, "blocks.0.hook_resid_pre", torch.zeros(mini.cfg.d_model), positions=99):
            mini(prompt)
    assert all(not point.fns for point in mini.hook_dict.values())
    lens = logit_lens(mini, prompt)
    with pytest.raises(MinimechError, match="k=0"):
        lens.top_k(0)
    assert torch.equal(lens.rank_of(" Paris"), lens.rank_of(mini.to_single_token(" Paris")))


def test_a_prompt_with_unknown_words_warns(mini):
    with pytest.warns(UserWarning, match="read as <unk>"):
        mini.to_tokens("Once upon a xylophone quantum time")


def test_attribution_patching_needs_a_differentiable_metric_and_ablation_damage_takes_one_head():
    from minimech.analysis import ablation_damage, attribution_patch_resid
    model = random_model(ODD)
    clean, corrupt = random_tokens(ODD, 2, 5), random_tokens(ODD, 2, 5, seed=1)
    with pytest.raises(MinimechError, match="gradient"):
        attribution_patch_resid(model, clean, corrupt, lambda logits: logits[:, -1, 0].mean().detach())
    metric = logit_diff(1, 2)
    table = ablation_damage(model, {"x": (clean, metric)}, heads=(1, 2), how="zero")
    assert table.components == ["L1H2"]


def test_rank_one_update_in_half_precision_and_with_a_singular_covariance():
    from minimech.analysis.interventions import rank_one_update
    gen = torch.Generator().manual_seed(0)
    key, delta = torch.randn(6, generator=gen), torch.randn(4, generator=gen)
    a = torch.randn(6, 6, generator=gen)
    cov = a @ a.T + torch.eye(6)
    update = rank_one_update(key.bfloat16(), delta.bfloat16(), cov)
    assert update.dtype == torch.bfloat16
    assert torch.allclose((key @ update.float()), delta, atol=0.05)  # k @ dW = delta: the edit's defining identity
    with pytest.raises(MinimechError, match="cannot be inverted"):
        rank_one_update(key, delta, torch.zeros(6, 6))
