"""Resample and memory ablation, memories' top activations, steering, circuit damage and ROME edits, each checked
against a ground truth computed another way: a hand-written hook or loop, a model with weights changed by hand, an
algebraic identity, or a measured effect on the shipped model."""

import copy

import pytest
import torch

import minimech
from conftest import ODD, assert_unchanged, random_model, random_tokens, snapshot
from minimech import GPTConfig, MinimechError
from minimech.analysis.ablation import (ablate_memories, resample_ablate_heads, resample_ablate_mlps,
                                        resample_indices)
from minimech.analysis.interventions import (InterventionError, ablation_damage, rank_one_update, rome_edit,
                                             shipped_behaviours, steer, steering_vector)
from minimech.analysis.ioi import card_heads
from minimech.analysis.memories import memory_logits, search_corpus, top_activating
from minimech.training.corpora import corpus_for
from minimech.training.corpus import Corpus

ATTN_ONLY = GPTConfig(n_layers=2, n_heads=3, d_head=5, d_model=11, n_ctx=19, d_vocab=17, attn_only=True)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: thread hand-offs cost more than the maths on a busy machine (see test_analysis.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mini():
    return minimech.load()


@pytest.fixture(scope="module")
def mini_4l():
    """ROME's tests run on mini-4l: its causal trace has the single-MLP site ROME edits (MLP0 at the subject's last
    token); the default, story-4l, has none (its card: at most 0.004 restored by any MLP there), and its ROME edits'
    figures are checked against issue 12's thresholds in test_shipped.py."""
    return minimech.load("mini-4l")


def no_hooks_left(model) -> bool:
    return all(not point.fns for point in model.hook_dict.values())


def logit_metric(token: int = 3):
    return lambda logits: logits[:, -1, token].mean()


def replacing(index, value):
    """A hook that sets act[index] = value."""
    def hook(act, hook):
        act = act.clone()
        act[index] = value
        return act
    return hook


# ---- resample ablation --------------------------------------------------------------------------------------------
def test_resample_ablation_matches_a_naive_loop(odd_model):
    tokens, reference = random_tokens(ODD, 2, 7), random_tokens(ODD, 4, 7, seed=1)
    metric, before = logit_metric(), snapshot(odd_model)
    heads = resample_ablate_heads(odd_model, tokens, metric, reference=reference, n_samples=3, seed=5)
    mlps = resample_ablate_mlps(odd_model, tokens, metric, reference=reference, n_samples=3, seed=5)
    rows = torch.randint(4, (3, 2), generator=torch.Generator().manual_seed(5))  # the documented draws
    _, cache = odd_model.run_with_cache(reference)
    clean = metric(odd_model(tokens)).item()
    for layer in range(2):
        for head in range(3):
            name, index = f"blocks.{layer}.attn.hook_z", (slice(None), slice(None), head)
            runs = [metric(odd_model.run_with_hooks(tokens, [(name, replacing(index, cache[name][r][index]))]))
                    for r in rows]
            assert heads[layer, head].item() == pytest.approx(torch.stack(runs).mean().item() - clean, abs=1e-5)
        name = f"blocks.{layer}.hook_mlp_out"
        runs = [metric(odd_model.run_with_hooks(tokens, [(name, replacing(..., cache[name][r]))])) for r in rows]
        assert mlps[layer].item() == pytest.approx(torch.stack(runs).mean().item() - clean, abs=1e-5)
    assert heads.abs().max() > 1e-3  # resampling does move the metric, so the comparisons mean something
    assert_unchanged(odd_model, before)
    assert no_hooks_left(odd_model)


def test_resampling_from_the_same_prompt_changes_nothing(odd_model):
    tokens = random_tokens(ODD, 1, 7)
    for reference in (tokens.expand(3, -1), None):
        batch = tokens if reference is not None else tokens.expand(3, -1)  # None: the other rows, all the same
        heads = resample_ablate_heads(odd_model, batch, logit_metric(), reference=reference, n_samples=2)
        mlps = resample_ablate_mlps(odd_model, batch, logit_metric(), reference=reference, n_samples=2)
        assert heads.abs().max() < 1e-5 and mlps.abs().max() < 1e-5
    other = resample_ablate_heads(odd_model, tokens, logit_metric(), reference=random_tokens(ODD, 3, 7, seed=9))
    assert other.abs().max() > 1e-3


def test_resampling_a_pair_swaps_the_two_prompts(odd_model):
    # with two prompts and reference=None each must take the other's activation, whatever the draws
    tokens, metric = random_tokens(ODD, 2, 7, seed=3), logit_metric(5)
    result = resample_ablate_heads(odd_model, tokens, metric, n_samples=4, seed=11)
    _, cache = odd_model.run_with_cache(tokens)
    name, index = "blocks.0.attn.hook_z", (slice(None), slice(None), 1)
    swapped = cache[name][[1, 0]][index]
    expected = metric(odd_model.run_with_hooks(tokens, [(name, replacing(index, swapped))])) - metric(odd_model(tokens))
    assert result[0, 1].item() == pytest.approx(expected.item(), abs=1e-5)
    draws = resample_indices(5, 5, 50, seed=0, exclude_self=True)
    assert not (draws == torch.arange(5)).any() and set(draws.flatten().tolist()) == set(range(5))


def test_resample_errors(odd_model):
    tokens = random_tokens(ODD, 2, 7)
    with pytest.raises(MinimechError, match="one prompt"):
        resample_ablate_heads(odd_model, tokens[:1], logit_metric())
    with pytest.raises(MinimechError, match="same length"):
        resample_ablate_mlps(odd_model, tokens, logit_metric(), reference=random_tokens(ODD, 2, 5))
    with pytest.raises(MinimechError, match="n_samples"):
        resample_ablate_heads(odd_model, tokens, logit_metric(), n_samples=0)
    with pytest.raises(MinimechError, match="attention-only"):
        resample_ablate_mlps(random_model(ATTN_ONLY), random_tokens(ATTN_ONLY, 2, 4), logit_metric())


# ---- memory ablation ----------------------------------------------------------------------------------------------
def test_zero_ablating_memories_equals_zeroing_their_values(odd_model):
    tokens, metric, before = random_tokens(ODD, 2, 7), logit_metric(), snapshot(odd_model)
    memories = [(0, 4), (1, 9), odd_model.blocks[1].mlp.memories[2]]
    alone = ablate_memories(odd_model, tokens, metric, memories)
    together = ablate_memories(odd_model, tokens, metric, memories, together=True)
    clean = metric(odd_model(tokens)).item()
    zeroed_all = copy.deepcopy(odd_model)
    for k, (layer, index) in enumerate([(0, 4), (1, 9), (1, 2)]):
        zeroed = copy.deepcopy(odd_model)
        with torch.no_grad():
            zeroed.blocks[layer].mlp.W_out[index] = 0  # the value row: the neuron then writes nothing
            zeroed_all.blocks[layer].mlp.W_out[index] = 0
        assert alone[k].item() == pytest.approx(metric(zeroed(tokens)).item() - clean, abs=1e-5)
    assert together.item() == pytest.approx(metric(zeroed_all(tokens)).item() - clean, abs=1e-5)
    assert alone.abs().min() > 1e-5
    assert_unchanged(odd_model, before)
    assert no_hooks_left(odd_model)


def test_mean_ablating_a_memory_equals_moving_its_mean_into_the_bias(odd_model):
    tokens, reference, metric = random_tokens(ODD, 2, 7), random_tokens(ODD, 4, 5, seed=2), logit_metric()
    _, cache = odd_model.run_with_cache(reference)
    mean = cache["post", 1][..., 6].mean()  # reference is shorter: one mean over batch and positions
    moved = copy.deepcopy(odd_model)
    with torch.no_grad():
        mlp = moved.blocks[1].mlp
        mlp.b_out += mean * mlp.W_out[6]  # the neuron's output is now always mean * value
        mlp.W_out[6] = 0
    expected = metric(moved(tokens)) - metric(odd_model(tokens))
    result = ablate_memories(odd_model, tokens, metric, [(1, 6)], how="mean", reference=reference)
    assert result.shape == (1,) and result[0].item() == pytest.approx(expected.item(), abs=1e-5)


def test_memory_errors(odd_model):
    tokens = random_tokens(ODD, 2, 7)
    for bad, match in [([(2, 0)], "outside"), ([(0, 13)], "outside"), ([odd_model.blocks[0].attn.heads[0]], "pair"),
                       ([], "empty")]:
        with pytest.raises(MinimechError, match=match):
            ablate_memories(odd_model, tokens, logit_metric(), bad)
    with pytest.raises(MinimechError, match="'zero' or 'mean'"):
        ablate_memories(odd_model, tokens, logit_metric(), [(0, 1)], how="resample")
    with pytest.raises(MinimechError, match="attention-only"):
        ablate_memories(random_model(ATTN_ONLY), random_tokens(ATTN_ONLY, 1, 4), logit_metric(), [(0, 1)])


# ---- memories: top activations and value logits -------------------------------------------------------------------
def test_top_activating_matches_a_per_prompt_loop(mini):
    prompts = ["France's capital is Paris.", "When Mary and John went to the store, John gave a drink to Mary.",
               "In Spain, people speak Spanish.", "Tom saw a dog near the park."]
    memory, before = (1, 37), snapshot(mini)
    result = top_activating(memory, mini, prompts, k=6, batch_size=3)
    everything = top_activating(memory, mini, prompts, k=1000, batch_size=3)  # k above the count: every position
    found = []
    for b, prompt in enumerate(prompts):  # one prompt at a time, full cache, no padding to get wrong
        _, cache = mini.run_with_cache(prompt)
        acts = cache["post", 1][0, :, 37]  # [pos]
        found += [(acts[p].item(), b, p) for p in range(1, len(acts))]  # position 0 is the BOS
    got, want = sorted((r.prompt, r.position, r.activation) for r in everything), sorted((b, p, a) for a, b, p in found)
    assert [g[:2] for g in got] == [w[:2] for w in want]  # every real position but the BOS, none of the padding
    assert [g[2] for g in got] == pytest.approx([w[2] for w in want], abs=1e-5)
    expected = sorted(found, reverse=True)[:6]
    assert [(r.prompt, r.position) for r in result] == [(b, p) for _, b, p in expected]
    assert [r.activation for r in result] == pytest.approx([a for a, _, _ in expected], abs=1e-5)
    top = result[0]
    assert top.token == mini.to_str_tokens(prompts[top.prompt])[top.position]
    assert prompts[top.prompt].startswith(top.context.strip()[:5])
    assert_unchanged(mini, before)
    assert no_hooks_left(mini)


def test_top_activating_on_tokens_and_errors(odd_model):
    tokens = random_tokens(ODD, 3, 7)
    result = top_activating(odd_model.blocks[0].mlp.memories[5], odd_model, tokens, k=4)
    acts = odd_model.run_with_cache(tokens)[1]["post", 0][..., 5]  # [batch, pos]
    assert [r.activation for r in result] == pytest.approx(acts.flatten().topk(4).values.tolist(), abs=1e-5)
    with pytest.raises(MinimechError, match="list"):
        top_activating((0, 5), odd_model, "one prompt")
    with pytest.raises(MinimechError, match="outside"):
        top_activating((0, 99), odd_model, tokens)


def test_search_corpus_and_memory_logits(mini):
    result, prompts = search_corpus((0, 5), mini, n_documents=60, k=5)
    assert len(result) == 5 and [r.activation for r in result] == sorted((r.activation for r in result), reverse=True)
    for r in result[:2]:  # each hit recomputed from its prompt alone
        tokens = mini.tokenizer.to_tokens(prompts[r.prompt])[:, :mini.cfg.n_ctx]  # documents can exceed n_ctx
        assert mini.run_with_cache(tokens)[1]["post", 0][0, r.position, 5].item() == pytest.approx(r.activation,
                                                                                                 abs=1e-5)
    logits = memory_logits((2, 17), mini, k=3)
    expected = mini.blocks[2].mlp.W_out[17].detach() @ mini.W_U.detach()  # [d_vocab]
    torch.testing.assert_close(logits.logits, expected)
    assert [t for t, _ in logits.top] == [mini.tokenizer.id_to_str(i) for i in expected.topk(3).indices.tolist()]
    assert [t for t, _ in logits.bottom] == [mini.tokenizer.id_to_str(i) for i in (-expected).topk(3).indices.tolist()]
    assert "L2M17" in repr(logits) and memory_logits(mini.blocks[2].mlp.memories[17]).name == "L2M17"
    with pytest.raises(MinimechError, match="needs the model"):
        memory_logits((2, 17))


# ---- steering -----------------------------------------------------------------------------------------------------
def test_zero_steering_changes_nothing_and_the_hook_goes(odd_model):
    tokens, before = random_tokens(ODD, 2, 7), snapshot(odd_model)
    clean = odd_model(tokens)
    with steer(odd_model, "blocks.1.hook_resid_pre", torch.zeros(ODD.d_model)):
        torch.testing.assert_close(odd_model(tokens), clean, atol=0, rtol=0)
    with pytest.raises(RuntimeError, match="boom"):
        with steer(odd_model, ("resid_mid", 0), torch.ones(ODD.d_model)):
            raise RuntimeError("boom")
    with pytest.raises(InterventionError, match=r"shape \(5,\)"):
        with steer(odd_model, "blocks.0.hook_resid_pre", torch.ones(5)):
            odd_model(tokens)
    assert no_hooks_left(odd_model)
    assert_unchanged(odd_model, before)


@pytest.mark.parametrize("positions", [None, 3, [1, 4]])
def test_steering_resid_pre_0_equals_adding_to_the_embeddings(odd_model, positions):
    tokens, vector = random_tokens(ODD, 2, 7), torch.randn(ODD.d_model, generator=torch.Generator().manual_seed(0))
    shifted = copy.deepcopy(odd_model)
    with torch.no_grad():  # resid_pre of layer 0 is embed + pos_embed: shift the position embeddings instead
        shifted.pos_embed.W_pos[slice(0, 7) if positions is None else positions] += 0.5 * vector
    with steer(odd_model, "blocks.0.hook_resid_pre", vector, coeff=0.5, positions=positions):
        steered = odd_model(tokens)
    torch.testing.assert_close(steered, shifted(tokens), atol=1e-5, rtol=0)
    assert (steered - odd_model(tokens)).abs().max() > 1e-3


def test_steering_vector_is_a_difference_of_means(mini):
    positive, negative = ["Spain's capital is", "In Spain, the capital is"], ["France's capital is"]
    name = "blocks.2.hook_resid_pre"
    last = lambda p: mini.run_with_cache(p, names=[name])[1][name][0, -1]  # [d_model] at the prompt's last token
    expected = (last(positive[0]) + last(positive[1])) / 2 - last(negative[0])
    torch.testing.assert_close(steering_vector(mini, positive, negative, hook=name), expected, atol=1e-5, rtol=0)
    everywhere = lambda p: mini.run_with_cache(p, names=[name])[1][name][0, 1:].mean(0)
    expected = (everywhere(positive[0]) + everywhere(positive[1])) / 2 - everywhere(negative[0])
    torch.testing.assert_close(steering_vector(mini, positive, negative, hook=name, pos=None), expected,
                               atol=1e-5, rtol=0)
    with pytest.raises(InterventionError, match="position first"):
        steering_vector(mini, positive, negative, hook="blocks.0.attn.hook_pattern")
    with pytest.raises(InterventionError, match="outside"):
        steering_vector(mini, positive, negative, hook=name, pos=9)


def test_a_steering_vector_moves_a_fact_on_the_shipped_model(mini):
    # Spain-minus-France from the training phrasings, added on the held-out ones (the model's own corpus; story-4l:
    # the word-order class never used for France's capital): Paris gives way to Madrid
    facts = {split: corpus_for(mini).fact_eval(split) for split in ("train", "heldout")}
    prompts = lambda split, s: [f.prompt for f in facts[split] if f.subject == s and f.relation == "capital"]
    hook = "blocks.3.hook_resid_mid"  # the fact reaches the last position only through layer 3's attention
    vector = steering_vector(mini, prompts("train", "Spain"), prompts("train", "France"), hook=hook)
    madrid, paris = mini.to_single_token(" Madrid"), mini.to_single_token(" Paris")
    for prompt in prompts("heldout", "France"):
        diffs = []
        for coeff in (0.0, 0.5, 1.0):
            with steer(mini, hook, vector, coeff=coeff, positions=-1):
                logits = mini(prompt)[0, -1]
            diffs.append((logits[madrid] - logits[paris]).item())
        # measured on story-4l: -8.1 / -8.3 -> -0.7 / -0.9 -> 7.1 / 7.0 (mini-4l: -9.4 / -10.3 -> 11.3 / 6.8); at
        # blocks.3.hook_resid_pre and earlier the same vector moves nothing (-8.0): the card's steering sweep
        assert diffs[0] < -5 and diffs[0] < diffs[1] < diffs[2]
        assert diffs[2] > 5 and logits.argmax().item() == madrid
    assert no_hooks_left(mini)


# ---- circuit ablation and damage ----------------------------------------------------------------------------------
def test_ablation_damage_equals_zeroed_weights(odd_model):
    tokens, metric = random_tokens(ODD, 2, 7), logit_metric()
    table = ablation_damage(odd_model, {"a": (tokens, metric), "b": (tokens[:1], logit_metric(7))},
                            heads=[(0, 1), "L1H2"], mlps=[1], how="zero")
    zeroed = copy.deepcopy(odd_model)
    with torch.no_grad():
        zeroed.blocks[0].attn.W_O[1] = 0
        zeroed.blocks[1].attn.W_O[2] = 0
        zeroed.blocks[1].mlp.W_out.zero_()
        zeroed.blocks[1].mlp.b_out.zero_()
    assert table.before["a"] == pytest.approx(metric(odd_model(tokens)).item(), abs=1e-6)
    assert table.after["a"] == pytest.approx(metric(zeroed(tokens)).item(), abs=1e-5)
    assert table.after["b"] == pytest.approx(logit_metric(7)(zeroed(tokens[:1])).item(), abs=1e-5)
    assert table.components == ["L0H1", "L1H2", "MLP1"] and "change" in repr(table)
    assert no_hooks_left(odd_model)


def test_mean_ablation_damage_matches_hand_written_hooks(odd_model):
    tokens, reference, metric = random_tokens(ODD, 2, 7), random_tokens(ODD, 3, 4, seed=4), logit_metric()
    table = ablation_damage(odd_model, {"a": (tokens, metric)}, heads=[(1, 0)], mlps=[0], reference=reference)
    _, cache = odd_model.run_with_cache(reference)
    z_mean, mlp_mean = cache["z", 1].mean((0, 1))[0], cache["mlp_out", 0].mean((0, 1))  # [d_head], [d_model]
    hooks = [("blocks.1.attn.hook_z", replacing((slice(None), slice(None), 0), z_mean)),
             ("blocks.0.hook_mlp_out", replacing(..., mlp_mean))]
    assert table.after["a"] == pytest.approx(metric(odd_model.run_with_hooks(tokens, hooks)).item(), abs=1e-5)
    with pytest.raises(InterventionError, match="nothing to ablate"):
        ablation_damage(odd_model, {"a": (tokens, metric)})
    with pytest.raises(MinimechError, match="does not exist"):
        ablation_damage(odd_model, {"a": (tokens, metric)}, heads=[(5, 0)])


def test_ioi_heads_of_the_card_damage_ioi_most(mini):
    behaviours, before = shipped_behaviours(mini), snapshot(mini)
    heads = card_heads(mini, "ioi")  # the heads the card lists for IOI
    card = torch.tensor(mini.card["mechanisms"]["ioi"]["mean_ablation_heads"])  # [n_layers, n_heads]
    quiet = card.abs().flatten().argsort()[:len(heads)]  # control: as many heads, those whose ablation mattered least
    table = ablation_damage(mini, behaviours, heads=heads)
    control = ablation_damage(mini, behaviours, heads=[divmod(int(i), 4) for i in quiet])
    # measured: IOI logit diff 11.19 -> 1.24, facts log P -0.09 -> -3.99, text loss 1.11 -> 1.46; control -0.07
    assert table.after["ioi"] < 0.3 * table.before["ioi"]
    assert abs(control.change("ioi")) < 0.1 * table.before["ioi"]
    assert table.change("ioi") < table.change("facts") < 0 and table.change("text") < 0
    assert_unchanged(mini, before)



def test_fewer_facts_are_spread_over_every_relation_and_scored_the_same(mini):
    """n_facts (for GPT-2-sized models) keeps that many held-out facts, as many of each relation, over many
    subjects; its metric is the same mean log P(answer) as one computed prompt by prompt on those facts."""
    from minimech.analysis.interventions import spread_facts

    every = corpus_for(mini).fact_eval("heldout")  # story-4l: 446 phrasings (mini-4l: 360)
    full, some = shipped_behaviours(mini)["facts"], shipped_behaviours(mini, n_facts=60)["facts"]
    kept = spread_facts(every, 60)
    assert len(full[0]) == len(every) > 300 and len(some[0]) == len(kept) == 60
    relations = [f.relation for f in kept]
    kinds = {f.relation for f in every}
    assert len(kinds) >= 3 and all(relations.count(r) == 60 // len(kinds) for r in kinds)
    assert len({f.subject for f in kept}) >= 20 and spread_facts(every, len(every)) == every
    with torch.no_grad():
        logits = mini(some[0])  # [60, pos, d_vocab]
        by_hand = torch.stack([mini(mini.to_tokens(f.prompt))[0, -1].log_softmax(-1)[
            mini.to_tokens(f.answer, prepend_bos=False)[0, 0]] for f in kept]).mean()
    assert some[1](logits).item() == pytest.approx(by_hand.item(), abs=1e-4)

# ---- ROME ---------------------------------------------------------------------------------------------------------
def test_rank_one_update_algebra():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(13, 13, generator=gen)
    cov = a @ a.T + 0.1 * torch.eye(13)  # [d_mlp, d_mlp], positive definite
    key, delta, W = torch.randn(13, generator=gen), torch.randn(11, generator=gen), torch.randn(13, 11, generator=gen)
    update = rank_one_update(key, delta, cov)  # [d_mlp, d_model]
    torch.testing.assert_close(key @ (W + update), key @ W + delta, atol=1e-4, rtol=0)
    assert torch.linalg.matrix_rank(update) == 1
    other = torch.randn(13, generator=gen)
    other -= (other @ torch.linalg.solve(cov, key)) / (key @ torch.linalg.solve(cov, key)) * key  # C^-1-orthogonal
    torch.testing.assert_close(other @ update, torch.zeros(11), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def france_to_rome(mini_4l):
    before = snapshot(mini_4l)
    return rome_edit(mini_4l, "France's capital is", "France", " Rome"), before


def test_rome_edit_makes_the_new_target_top_1(mini_4l, france_to_rome):
    mini = mini_4l
    result, _ = france_to_rome
    edited, rome, paris = result.model, mini.to_single_token(" Rome"), mini.to_single_token(" Paris")
    assert edited(result.prompt)[0, -1].argmax().item() == rome
    assert mini(result.prompt)[0, -1].argmax().item() == paris
    effects = mini.card["mechanisms"]["facts"]["mlp_effect_by_layer_at_subject_last_token"]
    assert result.layer == max(range(4), key=effects.__getitem__) and result.old_target == " Paris"
    assert result.prompt_new[1] > 0.5 > result.prompt_old[1] and result.prompt_old[0] > 0.5  # measured 0.86, 0.04
    # held-out paraphrases move too (measured: mean P(Rome) 0.002 -> 0.45, one of two top-1)
    assert len(result.paraphrases) == 2 and result.paraphrase_new[1] > 10 * result.paraphrase_new[0] + 0.1
    assert "other facts" in repr(result)


def test_rome_edit_is_a_rank_one_change_to_a_copy(mini_4l, france_to_rome):
    mini = mini_4l
    result, before = france_to_rome
    assert_unchanged(mini, before)  # the original's parameters never change
    changed = [k for k, v in result.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == [f"blocks.{result.layer}.mlp.W_out"]
    update = result.model.blocks[result.layer].mlp.W_out.detach() - before[changed[0]]
    assert torch.linalg.matrix_rank(update, rtol=1e-4) == 1
    assert result.model.blocks[0].mlp.memories[0].mlp.root() is result.model
    assert no_hooks_left(mini) and all(p.grad is None for p in mini.parameters())


def test_rome_edit_leaves_other_facts_mostly_intact(france_to_rome):
    result, _ = france_to_rome
    # measured on the shipped mini-4l: 100% -> 95.8% on the other facts (over 12 edits: -5.2 points on average, -13
    # at most); a rank-one edit of MLP0 touches every subject whose key resembles France's (see README)
    facts = Corpus(seed=0).fact_eval("all")
    same_fact = [f for f in facts if f.subject == "France" and f.relation == "capital"]
    assert result.n_other_facts == len(facts) - len(same_fact) and result.specificity[0] > 0.99
    assert result.specificity[0] - result.specificity[1] < 0.06


def test_rome_errors(mini):
    with pytest.raises(MinimechError, match="not found"):
        rome_edit(mini, "France's capital is", "Spain", " Rome", steps=1)
    with pytest.raises(MinimechError, match="not one"):
        rome_edit(mini, "France's capital is", "France", " Rome Paris", steps=1)
    with pytest.raises(InterventionError, match="covariance"):
        rome_edit(mini, "France's capital is", "France", " Rome", steps=1, covariance="diagonal")
    with pytest.raises(MinimechError, match="attention-only"):
        rome_edit(random_model(ATTN_ONLY), "x", "x", "x")


def test_rome_edit_on_a_model_without_a_card():
    from minimech.tokenizer import Tokenizer
    from minimech.training.corpus import FactExample

    text = "The Eiffel Tower is in Paris. The Colosseum is in Rome."
    tokenizer = Tokenizer(sorted(set(Tokenizer().encode(text)) | {50256}) + [-1])
    cfg = GPTConfig(n_layers=2, n_heads=2, d_model=16, d_mlp=32, n_ctx=24, d_vocab=len(tokenizer), model_name="edit")
    model = random_model(cfg, seed=6)
    model.tokenizer, before = tokenizer, snapshot(model)
    facts = [FactExample("The Eiffel Tower is in", " Paris", "Eiffel Tower", "city", "city/0"),
             FactExample("The Colosseum is in", " Rome", "Colosseum", "city", "city/0")]
    result = rome_edit(model, facts[0].prompt, "Eiffel Tower", " Rome", covariance="identity", facts=facts,
                       steps=100, stop_prob=0.99)
    top = int(model(facts[0].prompt)[0, -1].argmax())
    trace = minimech.analysis.causal_trace(model, facts[0].prompt, top, "Eiffel Tower", kinds=("mlp",))
    assert result.layer == int(trace.scores["mlp"][:, trace.subject_positions[-1]].argmax())  # no card: traced
    assert result.prompt_new[1] > result.prompt_new[0] and result.n_other_facts == 1 and result.paraphrases == []
    assert result.covariance == "identity" and result.model.card == model.card
    assert_unchanged(model, before)
    with pytest.raises(InterventionError, match=r"\[32, 32\]"):
        rome_edit(model, facts[0].prompt, "Eiffel Tower", " Rome", layer=0, covariance=torch.eye(5))
