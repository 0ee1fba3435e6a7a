"""generate() against hand-written loops over model(tokens), and its argument checks."""

import pytest
import torch

from minimech import GPT, GPTConfig, MinimechError
from minimech.sampling import SamplingError, generate, sample_next
from minimech.tokenizer import Tokenizer

from conftest import assert_unchanged, random_tokens, snapshot

# GPT-2's vocabulary (so the real tokenizer works) on a tiny body; GPT-2 init makes the next-token distribution
# nearly uniform over 50257 tokens, so two different seeds almost surely sample different text.
TINY = GPTConfig(n_layers=2, n_heads=2, d_model=32, n_ctx=16, d_vocab=50257, model_name="tiny")


@pytest.fixture(scope="module")
def model():
    return GPT(TINY, tokenizer=Tokenizer(), seed=0)


@pytest.fixture(scope="module")
def bare_model():  # no tokenizer: token prompts only
    return GPT(TINY, seed=1)


def hand_greedy(model, tokens, n):
    """The reference: argmax of model(last n_ctx tokens) at the last position, n times."""
    for _ in range(n):
        logits = model(tokens[:, -model.cfg.n_ctx:])[:, -1]
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    return tokens


def test_greedy_equals_a_hand_argmax_loop(bare_model):
    prompt = random_tokens(TINY, 2, 5, seed=4)
    with torch.no_grad():
        want = hand_greedy(bare_model, prompt, 6)
    for kwargs in ({"temperature": 0}, {"greedy": True}, {"greedy": True, "temperature": 3.0}):
        got = generate(bare_model, prompt, 6, return_tokens=True, stop_at_eos=False, **kwargs)
        assert torch.equal(got, want), kwargs


def test_greedy_text_is_prompt_plus_decoded_continuation(model):
    prompt = "The cat sat on the"
    tokens = generate(model, prompt, 5, temperature=0, stop_at_eos=False, return_tokens=True)
    assert tokens.shape == (1, 1 + 5 + 5) and tokens[0, 0] == model.tokenizer.bos_id
    with torch.no_grad():
        assert torch.equal(tokens, hand_greedy(model, model.to_tokens(prompt), 5))
    text = generate(model, prompt, 5, temperature=0, stop_at_eos=False)
    assert text == model.tokenizer.decode(tokens[0, 1:])  # without the BOS
    assert text.startswith(prompt)
    assert model.generate(prompt, 5, temperature=0, stop_at_eos=False) == text  # GPT.generate delegates


def test_zero_new_tokens_returns_the_prompt(model):
    assert generate(model, "Hello world", 0) == "Hello world"
    assert generate(model, "Hello world", 0, prepend_bos=False) == "Hello world"
    toks = model.to_tokens("Hello world")
    assert torch.equal(generate(model, toks, 0, return_tokens=True), toks)
    assert generate(model, toks, 0) == "Hello world"  # a leading BOS in a token prompt is dropped from the text


@pytest.mark.parametrize("temperature", [0.1, 1.0, 10.0])
def test_top_k_1_is_greedy_at_any_temperature(bare_model, temperature):
    prompt = random_tokens(TINY, 2, 4, seed=5)
    greedy = generate(bare_model, prompt, 5, temperature=0, return_tokens=True, stop_at_eos=False)
    top1 = generate(bare_model, prompt, 5, temperature=temperature, top_k=1, seed=7, return_tokens=True,
                    stop_at_eos=False)
    assert torch.equal(top1, greedy)


def test_tiny_top_p_is_greedy(bare_model):
    prompt = random_tokens(TINY, 1, 4, seed=6)
    greedy = generate(bare_model, prompt, 5, temperature=0, return_tokens=True, stop_at_eos=False)
    assert torch.equal(generate(bare_model, prompt, 5, top_p=1e-9, seed=3, return_tokens=True,
                                stop_at_eos=False), greedy)


def test_seed_reproducible_different_seeds_differ_global_rng_untouched(model):
    state = torch.get_rng_state()
    a = generate(model, "Once upon a time", 8, seed=123, stop_at_eos=False)
    b = generate(model, "Once upon a time", 8, seed=123, stop_at_eos=False)
    c = generate(model, "Once upon a time", 8, seed=124, stop_at_eos=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert a == b
    assert a != c
    assert a.startswith("Once upon a time") and c.startswith("Once upon a time")


def test_no_seed_uses_the_global_rng(bare_model):
    prompt = random_tokens(TINY, 1, 3)
    torch.manual_seed(0)
    a = generate(bare_model, prompt, 6, return_tokens=True, stop_at_eos=False)
    torch.manual_seed(0)
    b = generate(bare_model, prompt, 6, return_tokens=True, stop_at_eos=False)
    assert torch.equal(a, b)


def test_top_k_and_top_p_keep_only_the_allowed_tokens():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])  # sorted: 1 (0.5), 3 (0.3), 2 (0.15), 0 (0.05)
    logits = probs.log().expand(4000, 4)
    gen = torch.Generator().manual_seed(0)
    # top_p=0.7: token 1 alone has 0.5 < 0.7, so token 3 joins; together 0.8 >= 0.7, so nothing more.
    seen = sample_next(logits, top_p=0.7, generator=gen)
    assert set(seen.tolist()) == {1, 3}
    assert abs((seen == 1).float().mean() - 0.5 / 0.8) < 0.03  # renormalised over the kept tokens
    assert set(sample_next(logits, top_k=3, generator=gen).tolist()) == {1, 3, 2}
    assert set(sample_next(logits, top_k=3, top_p=0.6, generator=gen).tolist()) == {1, 3}
    assert set(sample_next(logits, top_p=1.0, generator=gen).tolist()) == {0, 1, 2, 3}
    assert set(sample_next(logits, top_k=100, generator=gen).tolist()) == {0, 1, 2, 3}  # k > d_vocab: no limit
    # Temperature: high flattens towards uniform, low sharpens towards the argmax.
    hot = sample_next(logits, temperature=100.0, generator=gen)
    cold = sample_next(logits, temperature=0.01, generator=gen)
    assert (hot == 0).float().mean() > 0.2 and (cold == 1).all()


def test_window_slides_past_n_ctx(bare_model):
    n_ctx = TINY.n_ctx
    prompt = random_tokens(TINY, 2, n_ctx - 3, seed=8)
    out = generate(bare_model, prompt, 10, temperature=0, return_tokens=True, stop_at_eos=False)
    assert out.shape == (2, n_ctx - 3 + 10)
    with torch.no_grad():
        assert torch.equal(out, hand_greedy(bare_model, prompt, 10))
    # A prompt longer than the context is accepted too: the model sees its last n_ctx tokens.
    long_prompt = random_tokens(TINY, 1, n_ctx + 5, seed=9)
    out = generate(bare_model, long_prompt, 3, seed=0, return_tokens=True, stop_at_eos=False)
    assert out.shape == (1, n_ctx + 8) and torch.equal(out[:, :n_ctx + 5], long_prompt)


def test_window_slides_with_text(model):
    text = generate(model, "a b c d e f g h i j k l", 12, seed=0, stop_at_eos=False)
    assert text.startswith("a b c d e f g h i j k l")


def test_model_is_unchanged(model):
    before = snapshot(model)
    grad_enabled = torch.is_grad_enabled()
    generate(model, "Hello", 5, seed=0)
    generate(model, "Hello", 5, temperature=0.7, top_k=50, top_p=0.9, seed=0)
    assert_unchanged(model, before)
    assert torch.is_grad_enabled() == grad_enabled
    assert all(p.grad is None for p in model.parameters())
    assert not model.hook_dict["blocks.0.hook_resid_pre"].fns


def eot_loving(model):
    """A copy of the tokenizer model whose unembedding bias makes <|endoftext|> the top token everywhere."""
    m = GPT(TINY, tokenizer=model.tokenizer, seed=0)
    with torch.no_grad():
        m.unembed.b_U[m.tokenizer.eot_id] = 100.0
    return m


def test_stops_at_eos(model):
    m = eot_loving(model)
    tokens = generate(m, "Hi there", 10, temperature=0, return_tokens=True)
    assert tokens.shape[1] == len(m.to_tokens("Hi there")[0]) + 1 and tokens[0, -1] == m.tokenizer.eot_id
    assert generate(m, "Hi there", 10, temperature=0) == "Hi there"  # the eot is cut from the text
    assert generate(m, "Hi there", 10, temperature=0, stop_at_eos=False, return_tokens=True).shape[1] == 3 + 10
    assert generate(m, "Hi there", 10, temperature=0, stop_at_eos=False).endswith("<|endoftext|>" * 10)


def test_batch_matches_row_by_row(model):
    prompts = model.to_tokens(["one two three", "four five six"])  # both 4 tokens: no padding
    assert prompts.shape == (2, 4)
    batch = generate(model, prompts, 4, temperature=0, stop_at_eos=False)
    rows = [generate(model, prompts[i:i + 1], 4, temperature=0, stop_at_eos=False) for i in range(2)]
    assert batch == rows


def test_batch_rows_that_finish_early_are_padded_with_eot():
    # Token 0 is the eot; the bias makes it top unless the last input token is 1, whose embedding pushes token 2.
    cfg = GPTConfig(n_layers=1, n_heads=1, d_model=8, n_ctx=16, d_vocab=5, model_name="eot")
    m = GPT(cfg, tokenizer=None, seed=0)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.ln_final.w.fill_(1.0)
        m.embed.W_E[1, 0] = 1.0  # direction 0 survives the LayerNorm as +/- sqrt(d_model) scaled
        m.embed.W_E[1, 1] = -1.0
        m.unembed.W_U[0, 2] = 50.0  # token 1 -> logit of token 2 is high
        m.unembed.b_U[0] = 10.0  # otherwise token 0

    class Tok:  # the minimum generate needs: an eot id
        eot_id = bos_id = 0

    m.tokenizer = Tok()
    out = generate(m, torch.tensor([[3, 1], [3, 4]]), 5, temperature=0, return_tokens=True)
    # Row 0: 1 -> 2 -> 0 (stops); row 1: 4 -> 0 (stops at once, then padded with 0 until row 0 stops).
    assert out.tolist() == [[3, 1, 2, 0], [3, 4, 0, 0]]


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_k": 0}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": -0.1}, "top_p"),
    ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"greedy": False, "temperature": 0}, "greedy"),
])
def test_bad_arguments_raise_clear_errors(model, kwargs, match):
    with pytest.raises(SamplingError, match=match) as info:
        generate(model, "Hello", **kwargs)
    assert isinstance(info.value, MinimechError) and isinstance(info.value, ValueError)


def test_bad_prompts(model, bare_model):
    with pytest.raises(SamplingError, match="integer ids"):
        generate(bare_model, torch.zeros(1, 3), 2, return_tokens=True)
    with pytest.raises(SamplingError, match="pos >= 1"):
        generate(bare_model, torch.zeros(1, 0, dtype=torch.long), 2, return_tokens=True)
    with pytest.raises(SamplingError, match="one text prompt at a time"):
        generate(model, ["a b", "c"], 2)
    with pytest.raises(MinimechError, match="no tokenizer"):
        generate(bare_model, random_tokens(TINY, 1, 3), 2)  # cannot decode to text
    with pytest.raises(MinimechError, match="no tokenizer"):
        generate(bare_model, "text", 2, return_tokens=True)


def test_verbose_shows_progress(model, capsys):
    generate(model, "Hi", 3, seed=0, verbose=True, stop_at_eos=False)
    assert "generate" in capsys.readouterr().err
