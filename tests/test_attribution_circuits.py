"""Direct logit attribution and weight-based circuit analyses, each checked against ground truth computed another way:
the model's own logits, a forward pass with one component removed from the final stream, dense matrices and
torch.linalg on them, a layer-0 forward pass whose scores come from positions or tokens alone, naive loops."""

import pytest
import torch

import minimech
from conftest import ODD, assert_unchanged, random_model, random_tokens, snapshot
from minimech import GPTConfig, MinimechError
from minimech.analysis.attribution import attribution_hooks, direct_logit_attribution, logit_attribution
from minimech.analysis.circuits import (composition_scores, copied_logits, copying_score, copying_scores,
                                        positional_qk, resolve_head, token_qk, top_copied_tokens)
from minimech.analysis.heads import head_scores
from minimech.training.recipes import token_pool

ATTN_ONLY = GPTConfig(n_layers=2, n_heads=3, d_head=5, d_model=11, n_ctx=19, d_vocab=17, attn_only=True)
THREE = GPTConfig(n_layers=3, n_heads=2, d_head=5, d_model=11, d_mlp=13, n_ctx=19, d_vocab=17)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: thread hand-offs on a busy machine cost more than the maths."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def attn_only_2l():
    return minimech.load("attn-only-2l")


def card_heads(model, key: str) -> list[tuple[int, int]]:
    """Heads a shipped model's card names, e.g. "L1H2 0.78" -> (1, 2)."""
    labels = [entry.split()[0] for entry in model.card["mechanisms"]["induction"][key]]
    return [(resolve_head(model, label).layer, resolve_head(model, label).index) for label in labels]


# ---- direct logit attribution -------------------------------------------------------------------------------------
@pytest.mark.parametrize("pos", [-1, 3, [6, 2, 4]])
@pytest.mark.parametrize("with_wrong", [True, False])
def test_components_sum_to_the_models_logit_difference(odd_model, pos, with_wrong):
    tokens = random_tokens(ODD, batch=3, pos=7)
    correct, wrong = torch.tensor([1, 5, 9]), (4 if with_wrong else None)
    before = snapshot(odd_model)
    logits, cache = odd_model.run_with_cache(tokens)
    attr = direct_logit_attribution(odd_model, cache, correct, wrong, pos=pos)
    rows, at = torch.arange(3), torch.as_tensor(pos).expand(3)
    expected = logits[rows, at, correct] - (logits[rows, at, 4] if with_wrong else 0)  # [batch]
    torch.testing.assert_close(attr.total, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(attr.per_prompt.sum(0), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(attr.values, attr.per_prompt.mean(1))
    n_components = 2 + ODD.n_layers * (ODD.n_heads + 2) + 2  # embeds, heads + attn bias + MLP per layer, 2 biases
    assert attr.per_prompt.shape == (n_components, 3) and attr.labels[-2:] == ["ln_final.b", "b_U"]
    assert_unchanged(odd_model, before)


def test_each_attribution_is_the_change_from_removing_that_write_with_ln_frozen(odd_model):
    """Ground truth: subtract one component's write from the final stream at pos, keep ln_final's scale as it was
    (that is what makes the attribution linear), and see how far the model's logit difference moves."""
    tokens, pos, last = random_tokens(ODD, batch=2, pos=6, seed=1), 4, ODD.n_layers - 1
    names = [f"blocks.{l}.attn.hook_result" for l in range(ODD.n_layers)] + attribution_hooks(odd_model)
    logits, cache = odd_model.run_with_cache(tokens, names=names)
    attr = direct_logit_attribution(odd_model, cache, 3, 8, pos=pos)
    writes = {"embed": cache["hook_embed"], "L1MLP": cache["blocks.1.hook_mlp_out"],
              "L0H2": cache["blocks.0.attn.hook_result"][:, :, 2], "L1H0": cache["blocks.1.attn.hook_result"][:, :, 0]}
    for label, write in writes.items():
        def remove(resid, hook, write=write):
            resid = resid.clone()
            resid[:, pos] -= write[:, pos]
            return resid
        frozen = lambda scale, hook: cache["ln_final.hook_scale"]
        with torch.no_grad(), odd_model.hooks([(f"blocks.{last}.hook_resid_post", remove),
                                               ("ln_final.hook_scale", frozen)]):
            removed = odd_model(tokens)
        moved = (logits - removed)[:, pos, 3] - (logits - removed)[:, pos, 8]  # [batch]
        torch.testing.assert_close(attr.per_prompt[attr.labels.index(label)], moved, atol=1e-4, rtol=0)


def test_shipped_model_ioi_prompt_sums_and_convenience_matches():
    model = minimech.load()
    before = snapshot(model)
    prompts = ["When Mary and John went to the store, John gave a drink to",
               "When John and Mary went to the park, Mary gave a book to"]
    tokens = model.to_tokens(prompts)
    assert tokens.shape[1] == model.to_tokens(prompts[0]).shape[1], "the two prompts should have equal lengths"
    logits, cache = model.run_with_cache(tokens)  # everything cached: the general path
    attr = direct_logit_attribution(model, cache, [" Mary", " John"], [" John", " Mary"])
    ids = torch.tensor([[model.to_single_token(" Mary"), model.to_single_token(" John")]])
    expected = logits[:, -1].gather(1, torch.cat([ids, ids.flip(1)]))  # [batch, 2]: correct, wrong
    torch.testing.assert_close(attr.total, expected[:, 0] - expected[:, 1], atol=1e-4, rtol=0)
    torch.testing.assert_close(attr.per_prompt.sum(0), attr.total, atol=1e-4, rtol=0)
    quick = logit_attribution(model, tokens, [" Mary", " John"], [" John", " Mary"])
    torch.testing.assert_close(quick.per_prompt, attr.per_prompt, atol=1e-5, rtol=0)
    heads, mlps = attr.by_head(), attr.by_mlp()  # [n_layers, n_heads], [n_layers]
    assert heads.shape == (4, 4) and mlps.shape == (4,)
    assert heads[3, 1] == attr["L3H1"] and mlps[2] == attr["L2MLP"]
    assert attr.by_head(per_prompt=True).shape == (4, 4, 2)
    top = attr.top(5)
    assert [abs(v) for _, v in top] == sorted((abs(v) for _, v in top), reverse=True)
    assert max(attr.values.abs()).item() == pytest.approx(abs(top[0][1]))
    text = repr(attr)
    assert "' Mary' - ' John'" not in text and "each prompt's own answer pair" in text and top[0][0] in text
    assert_unchanged(model, before)


def test_attention_only_model_and_repr(attn_only_2l):
    tokens = attn_only_2l.to_tokens(" wind two rabbit wind two")
    attr = logit_attribution(attn_only_2l, tokens, " rabbit")
    assert "L0MLP" not in attr.labels and attr.by_head().shape == (2, attn_only_2l.cfg.n_heads)
    torch.testing.assert_close(attr.per_prompt.sum(0), attr.total, atol=1e-4, rtol=0)
    assert "logit ' rabbit'" in repr(attr)
    with pytest.raises(MinimechError, match="attention-only"):
        attr.by_mlp()


def test_attribution_errors(odd_model):
    tokens = random_tokens(ODD, batch=2, pos=5)
    _, patterns_only = odd_model.run_with_cache(tokens, names=lambda n: n.endswith("hook_pattern"))
    with pytest.raises(MinimechError, match="attribution_hooks"):
        direct_logit_attribution(odd_model, patterns_only, 1, 2)
    _, cache = odd_model.run_with_cache(tokens)
    with pytest.raises(MinimechError, match="3 answers but the cache has 2 prompts"):
        direct_logit_attribution(odd_model, cache, [1, 2, 3], 4)
    with pytest.raises(MinimechError, match=r"\[0, 17\)"):
        direct_logit_attribution(odd_model, cache, 17)
    with pytest.raises(MinimechError, match="outside"):
        direct_logit_attribution(odd_model, cache, 1, pos=5)
    with pytest.raises(MinimechError, match="pos must be"):
        direct_logit_attribution(odd_model, cache, 1, pos=1.5)
    with pytest.raises(MinimechError, match="labels are"):
        direct_logit_attribution(odd_model, cache, 1)["L9H9"]


def test_answers_that_are_not_one_known_token_are_refused(attn_only_2l):
    tokens = attn_only_2l.to_tokens(" wind two")
    with pytest.raises(MinimechError, match="not one"):
        logit_attribution(attn_only_2l, tokens, " wind two")
    with pytest.raises(MinimechError, match="not in this model's vocabulary"):
        logit_attribution(attn_only_2l, tokens, " three")


# ---- composition scores -------------------------------------------------------------------------------------------
def naive_composition(model, mode: str) -> torch.Tensor:
    """Dense d_model x d_model matrices per head and torch.linalg.norm, pair by pair."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    scores = torch.zeros(L, H, L, H, dtype=torch.float64)
    for l1 in range(L):
        for h1 in range(H):
            a = model.blocks[l1].attn
            ov = (a.W_V[h1] @ a.W_O[h1]).double()
            for l2 in range(l1 + 1, L):
                for h2 in range(H):
                    b = model.blocks[l2].attn
                    qk = (b.W_Q[h2] @ b.W_K[h2].T).double()
                    receiver = {"Q": qk, "K": qk.T, "V": (b.W_V[h2] @ b.W_O[h2]).double()}[mode]
                    fro = lambda m: torch.linalg.norm(m, "fro")
                    scores[l1, h1, l2, h2] = fro(ov @ receiver) / (fro(ov) * fro(receiver))
    return scores


@pytest.mark.parametrize("mode", ["Q", "K", "V"])
def test_composition_scores_match_dense_matrices(mode):
    model = random_model(THREE, seed=5)
    before = snapshot(model)
    with torch.no_grad():
        scores = composition_scores(model, mode.lower() if mode == "V" else mode)
    assert scores.shape == (3, 2, 3, 2)
    torch.testing.assert_close(scores.double(), naive_composition(model, mode), atol=1e-5, rtol=0)
    later = torch.arange(3)[:, None, None, None] < torch.arange(3)[None, None, :, None]
    assert (scores[~later.expand_as(scores)] == 0).all() and (scores[later.expand_as(scores)] > 0).all()
    assert_unchanged(model, before)


def test_engineered_k_composition_stands_out():
    model = random_model(GPTConfig(n_layers=2, n_heads=3, d_head=4, d_model=16, n_ctx=8, d_vocab=10,
                                   attn_only=True), seed=2)
    with torch.no_grad():  # receiver L1H2's keys read exactly what sender L0H1 writes
        model.blocks[1].attn.W_K[2] = model.blocks[0].attn.W_O[1].T
    k_scores = composition_scores(model, "K")[0, :, 1]  # [sender head, receiver head]
    assert k_scores.argmax().item() == 1 * 3 + 2
    assert k_scores[1, 2] > 1.5 * k_scores.flatten().topk(2).values[1]
    for other in ("Q", "V"):
        assert k_scores[1, 2] > 1.5 * composition_scores(model, other)[0, 1, 1, 2]


def test_previous_token_head_k_composes_with_the_induction_heads(attn_only_2l):
    (prev_layer, prev_head), = card_heads(attn_only_2l, "previous_token_heads")
    k_scores = composition_scores(attn_only_2l, "K")
    for layer, head in card_heads(attn_only_2l, "induction_heads"):
        senders = k_scores[:layer, :, layer, head]  # [earlier layer, head]
        assert senders.flatten().argmax().item() == prev_layer * attn_only_2l.cfg.n_heads + prev_head


# ---- OV circuit: copying ------------------------------------------------------------------------------------------
def dense_full_ov(model, layer: int, head: int, ln: bool, center_vocab: bool) -> torch.Tensor:
    centre = lambda m: m - m.mean(-1, keepdim=True)
    a = model.blocks[layer].attn
    W_E, W_U, W_O = model.W_E.detach().double(), model.W_U.detach().double(), a.W_O[head].detach().double()
    if ln:
        W_E = centre(W_E) * model.blocks[layer].ln1.w.detach().double()
        W_O = centre(W_O) * model.ln_final.w.detach().double()
    if center_vocab:
        W_U = W_U - W_U.mean(1, keepdim=True)
    return W_E @ a.W_V[head].detach().double() @ W_O @ W_U  # [d_vocab, d_vocab]


@pytest.mark.parametrize("ln,center_vocab", [(True, True), (False, False), (True, False)])
def test_copying_score_and_diagonal_match_dense_eigenvalues(odd_model, ln, center_vocab):
    before = snapshot(odd_model)
    for layer, head in [(0, 1), (1, 2)]:
        dense = dense_full_ov(odd_model, layer, head, ln, center_vocab)
        eig = torch.linalg.eigvals(dense)
        expected = (eig.real.sum() / eig.abs().sum()).item()
        assert copying_score(odd_model, (layer, head), ln, center_vocab) == pytest.approx(expected, abs=1e-4)
        torch.testing.assert_close(copied_logits(odd_model, f"L{layer}H{head}", ln, center_vocab).double(),
                                   dense.diagonal(), atol=1e-4, rtol=1e-4)
        top = top_copied_tokens(odd_model, (layer, head), k=3, ln=ln, center_vocab=center_vocab)
        assert [int(t) for t, _ in top] == dense.diagonal().topk(3).indices.tolist()
    assert copying_scores(odd_model, ln, center_vocab)[1, 2].item() == pytest.approx(
        copying_score(odd_model, (1, 2), ln, center_vocab))
    assert_unchanged(odd_model, before)


def test_copying_score_is_plus_one_for_a_copier_and_minus_one_for_its_negation():
    """W_U = W_E^T and W_O = W_V^T make the full OV circuit W_E W_V W_V^T W_E^T: symmetric positive semidefinite."""
    model = random_model(ATTN_ONLY, seed=4)
    with torch.no_grad():
        model.unembed.W_U.copy_(model.W_E.T)
        model.blocks[1].attn.W_O[0] = model.blocks[1].attn.W_V[0].T
    assert copying_score(model, (1, 0), ln=False, center_vocab=False) == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        model.blocks[1].attn.W_O[0] *= -1
    assert copying_score(model, (1, 0), ln=False, center_vocab=False) == pytest.approx(-1.0, abs=1e-5)


def test_induction_heads_are_the_copiers(attn_only_2l):
    """Functionally: on the repeat of random tokens, an induction head's own write (through ln_final's scale and
    W_U, from the cache) raises the correct next token far above the mean logit; no other head does. In the
    weights: its OV circuit raises most tokens' own logits (copied_logits > 0) and its eigenvalues sum positive.
    (Elhage et al.'s copying score is only ~0.3 for this model's induction head, 0.9+ for the untied model shipped
    before: see weights/README.md.)"""
    from minimech.analysis.heads import repeated_random_tokens

    model, n = attn_only_2l, 20
    tokens = repeated_random_tokens(model, n, batch=16, seed=0, token_pool=token_pool(model.tokenizer))
    _, cache = model.run_with_cache(tokens, names=lambda name: name.endswith(("hook_result", "hook_scale")))
    targets = tokens[:, n + 2:]  # the repeat's tokens after its first, predicted at positions n + 1 ..
    effect = {}
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            write = cache[f"blocks.{layer}.attn.hook_result"][:, n + 1: -1, head]  # [batch, pos, d_model]
            logits = cache.apply_ln_final(write, pos=slice(n + 1, -1)) @ model.unembed.W_U  # [batch, pos, d_vocab]
            effect[layer, head] = (logits.gather(-1, targets[..., None])[..., 0] - logits.mean(-1)).mean().item()
    induction = card_heads(model, "induction_heads")
    others = [abs(v) for lh, v in effect.items() if lh not in induction]
    scores = copying_scores(model)  # [n_layers, n_heads]
    for layer, head in induction:
        assert effect[layer, head] > 5 and effect[layer, head] > 10 * max(others), effect
        assert scores[layer, head] > 0
        assert (copied_logits(model, (layer, head)) > 0).float().mean() > 0.75
    assert len(top_copied_tokens(model, induction[0], k=5)) == 5


# ---- QK circuit: positions and tokens ------------------------------------------------------------------------------
def layer0_reads_only(model, keep: str):
    """Zero the other embedding, ln1's bias and the query/key biases, so layer 0's scores are
    (circuit score) / (scale_q * scale_k) exactly."""
    with torch.no_grad():
        (model.pos_embed.W_pos if keep == "tokens" else model.embed.W_E).zero_()
        model.blocks[0].ln1.b.zero_()
        model.blocks[0].attn.b_Q.zero_()
        model.blocks[0].attn.b_K.zero_()
    return model


def test_positional_qk_is_layer0_scores_without_tokens():
    model = layer0_reads_only(random_model(ODD, seed=6), keep="positions")
    tokens = random_tokens(ODD, batch=1, pos=9)
    _, cache = model.run_with_cache(tokens, names=["blocks.0.attn.hook_attn_scores", "blocks.0.ln1.hook_scale"])
    scale = cache["blocks.0.ln1.hook_scale"][0, :, 0]  # [pos]
    for head in range(ODD.n_heads):
        pos_qk = positional_qk(model, (0, head))  # [n_ctx, n_ctx]
        assert pos_qk.shape == (19, 19) and torch.isinf(pos_qk[2, 3]) and not torch.isinf(pos_qk[3, 2])
        actual = cache["blocks.0.attn.hook_attn_scores"][0, head] * scale[:, None] * scale[None, :]
        lower = torch.tril(torch.ones(9, 9, dtype=torch.bool))
        torch.testing.assert_close(actual[lower], pos_qk[:9, :9][lower], atol=1e-4, rtol=1e-4)


def test_token_qk_is_layer0_scores_without_positions():
    model = layer0_reads_only(random_model(ODD, seed=7), keep="tokens")
    tokens = random_tokens(ODD, batch=1, pos=9, seed=3)
    _, cache = model.run_with_cache(tokens, names=["blocks.0.attn.hook_attn_scores", "blocks.0.ln1.hook_scale"])
    scale = cache["blocks.0.ln1.hook_scale"][0, :, 0]  # [pos]
    ids = tokens[0]
    full = token_qk(model, (0, 1))  # [d_vocab, d_vocab]
    subset = token_qk(model, (0, 1), query_tokens=ids.tolist(), key_tokens=ids)  # [pos, pos]
    torch.testing.assert_close(subset, full[ids][:, ids])
    actual = cache["blocks.0.attn.hook_attn_scores"][0, 1] * scale[:, None] * scale[None, :]
    lower = torch.tril(torch.ones(9, 9, dtype=torch.bool))
    torch.testing.assert_close(actual[lower], subset[lower], atol=1e-4, rtol=1e-4)


def test_previous_token_head_has_a_positional_stripe(attn_only_2l):
    (layer, head), = card_heads(attn_only_2l, "previous_token_heads")
    pos_qk = positional_qk(attn_only_2l, (layer, head))  # [n_ctx, n_ctx]
    offsets = pos_qk.argmax(1) - torch.arange(len(pos_qk))  # [q_pos]: best key minus query
    # measured: 0.95 on the 4-head model, 0.83 on the 2-head one (the last ~10 positions, rarely trained, drift)
    assert (offsets[1:] == -1).float().mean() > 0.75


def test_circuit_errors(odd_model):
    with pytest.raises(MinimechError, match="mode"):
        composition_scores(odd_model, "X")
    with pytest.raises(MinimechError, match="no head L2H0"):
        copying_score(odd_model, "L2H0")
    with pytest.raises(MinimechError, match="form"):
        positional_qk(odd_model, "head 1")
    with pytest.raises(MinimechError, match=r"\[0, 17\)"):
        token_qk(odd_model, (0, 0), query_tokens=[3, 17])


# ---- duplicate-token detector on a constructed case ----------------------------------------------------------------
def test_duplicate_token_score_on_constructed_patterns():
    tokens = torch.tensor([[0, 5, 6, 5, 7, 6, 5]])  # duplicates: q3 -> k1; q5 -> k2; q6 -> k1, k3
    pos = tokens.shape[1]
    exact = torch.zeros(1, 1, 1, pos, pos)  # [layer, batch, head, q, k]: all mass on earlier copies, shared evenly
    for q, keys in {3: [1], 5: [2], 6: [1, 3]}.items():
        exact[0, 0, 0, q, keys] = 1 / len(keys)
    assert head_scores(exact, tokens, "duplicate_token").item() == pytest.approx(1.0)
    causal = torch.tril(torch.rand(pos, pos, generator=torch.Generator().manual_seed(0)))
    random_pattern = (causal / causal.sum(-1, keepdim=True))[None, None, None]
    naive = sum(sum(random_pattern[0, 0, 0, q, k].item() for k in range(1, q) if tokens[0, k] == tokens[0, q])
                for q in (3, 5, 6)) / 3  # mass on earlier copies, averaged over the queries that have one
    assert head_scores(random_pattern, tokens, "duplicate_token").item() == pytest.approx(naive, abs=1e-6)
