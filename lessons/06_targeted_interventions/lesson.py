# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 06 · Targeted interventions
#
# Lessons 02-05 found mechanisms: heads that solve IOI, MLP layers that recall facts. If we really understand a
# mechanism, we should be able to *use* it: switch a behaviour off, push the model towards another answer, rewrite
# one fact. And because a model's components serve many behaviours at once, every intervention comes with a second
# question, which this lesson asks each time: **what else did it change?**
#
# Three interventions, each from a paper, on minimech's default shipped model:
#
# 1. **Ablate a circuit** (Wang et al. 2022's IOI heads): mean-ablate the heads and measure IOI, facts, induction
#    and plain text before and after.
# 2. **Steer** with an activation difference (Turner et al. 2023, ActAdd): add "Spain minus France" to the residual
#    stream, find the layer where it turns France's capital into Madrid, and watch other countries' facts.
# 3. **Edit one fact** with a rank-one update (Meng et al. 2022, ROME): you write every step, the keys' statistics,
#    the new value v* and the update, make "France's capital is" say " Rome", and count the facts that survive.
#
# Before each measurement you write down a prediction (`prediction_1 = ...`); the checks record that you made one,
# never whether it was right. Figures go to `./minimech-out/` (inline in a notebook: `minimech start 06
# --notebook`).
#
# **Working on it**: `minimech start 06` copies this file into your workspace; `minimech check 06` grades your
# functions; `minimech hint 06.2` gives one hint at a time. Cells whose exercise is not written yet are skipped.

# %%
import argparse
from contextlib import contextmanager
from pathlib import Path

import torch

import minimech
from minimech import plot
from minimech.analysis import (ablation_damage, card_heads, fact_layer, find_subject_positions, ioi_dataset,
                               key_covariance, rank_one_update as toolkit_rank_one_update, rome_edit,
                               shipped_behaviours, steer, steering_vector as toolkit_steering_vector)
from minimech.analysis.interventions import spread_facts
from minimech.analysis.memories import prompt_batch
from minimech.notebook import forward_progress, show, tqdm
from minimech.training.corpora import corpus_for

MAIN = __name__ == "__main__"
DEFAULT_MODEL = "story-4l"
OUT = Path("minimech-out")
GPT2_IOI_HEADS = [(9, 9), (9, 6), (10, 0), (7, 3), (7, 9), (8, 6), (8, 10), (5, 5), (6, 9), (0, 1), (3, 0)]


def parse_args():
    parser = argparse.ArgumentParser(description="Lesson 06: targeted interventions", allow_abbrev=False)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a shipped model, gpt2, or a GPT-2 folder")
    return parser.parse_known_args()[0]  # known args only: a notebook kernel passes arguments of its own


@contextmanager
def demo(what: str):
    """Run a demo cell; if it needs an exercise that is not written yet, say so and go on."""
    print(f"\n== {what}")
    try:
        yield
    except NotImplementedError as e:
        print(f"   skipped: {e}")
    except NameError as e:  # a result an earlier, skipped cell would have made
        print(f"   skipped: {e} (an earlier cell was skipped)")


def ioi_heads(model) -> list[tuple[int, int]]:
    """The heads the model's card names for IOI; for GPT-2 (no card), the IOI paper's main heads."""
    if (model.card.get("mechanisms") or {}).get("ioi"):
        return card_heads(model, "ioi")
    return GPT2_IOI_HEADS


def label(heads) -> str:
    return "+".join(f"L{l}H{h}" for l, h in heads)


def token_id(model, text: str) -> int:
    """The first token of text (an answer like ' Paris' is one token for the shipped models)."""
    return int(model.to_tokens(text, prepend_bos=False)[0, 0])


def top_token(model, logits_row: torch.Tensor) -> str:
    return model.to_string(logits_row.argmax().reshape(1))


if MAIN:
    args = parse_args()
    torch.set_grad_enabled(False)  # we only read the model (06.7 turns gradients on where it needs them)
    OUT.mkdir(exist_ok=True)
    model = minimech.load(args.model)
    if model.cfg.d_model <= 256:
        torch.set_num_threads(1)  # a small model's matrices are tiny: more threads cost more than they save
    # GPT-2-sized (d_model 768): fewer prompts, documents and facts in the demos, so the script takes minutes
    LARGE = model.cfg.d_model > 256
    print(model)
    corpus = corpus_for(model)  # the corpus the shipped models were trained on
    facts_train, facts_heldout, facts_all = (corpus.fact_eval(s) for s in ("train", "heldout", "all"))
    print(f"   facts: {len(facts_train)} training phrasings, {len(facts_heldout)} held out, e.g. "
          f"{facts_heldout[0].prompt!r} -> {facts_heldout[0].answer!r}")

# %% [markdown]
# # Part 1 · Knocking out a circuit
#
# Lesson 03 found the default model's IOI circuit; the model card lists its most important heads,
# `card_heads(model, "ioi")`. If those heads *are* the IOI mechanism, removing them should remove IOI. **Mean
# ablation** removes what a head says about *this* prompt and keeps what it says about every prompt: its output `z`
# is replaced by its average over reference prompts, one average per position (position 0, the BOS, and position
# 10 carry very different typical activations). Zero ablation would instead hand the next layers a vector the head
# never outputs.
#
# ## Exercise 06.1: Mean-ablating a set of heads
#
# > **Difficulty** ★★☆ · **Importance** ★★★★☆ · about 15 minutes
#
# Run `tokens` with each listed head's `z` (`blocks.{layer}.attn.hook_z`, `[batch, pos, head, d_head]`) replaced by
# its mean over `reference_tokens`, **per position**: `[pos, head, d_head]`, averaged over the reference prompts
# (which have as many positions as `tokens`). Several heads can share a layer; heads of one layer go in one hook.
# Clone the activation before you edit it, and attach hooks with `with model.hooks([...]):`.
#
# `mean_ablated_logits(model, tokens, heads, reference_tokens)`: `tokens` `[batch, pos]`; `heads` a list of
# `(layer, head)`; `reference_tokens` `[n_ref, pos]` → logits `[batch, pos, d_vocab]`.

# %%
def mean_ablated_logits(model, tokens: torch.Tensor, heads: list, reference_tokens: torch.Tensor) -> torch.Tensor:
    """-> [batch, pos, d_vocab]: logits with each listed head's z replaced by its per-position reference mean."""
    # EXERCISE 06.1
    raise NotImplementedError("EXERCISE 06.1: cache hook_z on reference_tokens, .mean(0), paste it for listed heads")


# %%
if MAIN:
    ds = ioi_dataset(model, n=16 if LARGE else 32)  # corpus prompts of one length (held-out frames); GPT-2: templates
    abc = ds.abc()  # the same prompts with three other names: the reference for the means
    metric = ds.logit_diff()  # mean logit(IO) - logit(S) at the last position
    heads = ioi_heads(model)
    print(f"\n   the card's IOI heads: {label(heads)}; IOI logit difference {metric(model(ds.tokens)):.2f} on "
          f"{len(ds)} prompts")

# %% [markdown]
# Before ablating: with those heads mean-ablated, what will the logit difference printed above become?

# %%
prediction_1 = None  # your guess: the IOI logit difference with the card's heads mean-ablated, e.g. 1.0

# %%
if MAIN:
    with demo("06.1 mean-ablating the IOI heads"):
        logits = mean_ablated_logits(model, ds.tokens, heads, abc.tokens)  # [n, pos, d_vocab]
        captured = []
        ablation_damage(model, {"ioi": (ds.tokens, lambda lg: captured.append(lg) or metric(lg))}, heads=heads,
                        reference=abc.tokens)
        print(f"   max |yours - ablation_damage's logits| = {(logits - captured[-1]).abs().max():.2e}")
        print(f"   IOI logit difference: {metric(model(ds.tokens)):.2f} -> {metric(logits):.2f} without "
              f"{label(heads)}")
        top = heads[0]  # the head the card ranks first
        for name, ablated in [(f"{label([top])} alone", [top]), (f"all but {label([top])}", heads[1:])]:
            if ablated:
                print(f"   {name}: {metric(mean_ablated_logits(model, ds.tokens, ablated, abc.tokens)):.2f}")

# %% [markdown]
# Compare with your guess, and between the last two lines: is the first head alone most of the effect, or do the
# others carry as much without it? Has IOI been *removed*, though, or has the model been broken? A surgeon who cuts
# out the wrong organ also stops the symptom.
#
# ## Exercise 06.2: The damage elsewhere
#
# > **Difficulty** ★★☆ · **Importance** ★★★★★ · about 15 minutes
#
# Measure every behaviour the model has, before and after the same ablation. A behaviour is a batch of tokens, the
# reference prompts its means come from (prompts of the same kind, with as many positions), and a metric
# (`metric(logits)` → a scalar, higher is better). `shipped_behaviours(model)` gives four, all on data the model
# never trained on: `"ioi"` (the logit difference), `"facts"` (mean log P of the answer on held-out fact prompts),
# `"induction"` (minus the loss on the repeated half of repeated random tokens) and `"text"` (minus the loss on
# fresh corpus documents). Use your 06.1 for the ablated run.
#
# `damage_table(model, behaviours, heads)`: `behaviours` `{name: (tokens, reference_tokens, metric)}` →
# `[n_behaviours, 2]`, one row per behaviour in the dict's order, columns (before, after).

# %%
def damage_table(model, behaviours: dict, heads: list) -> torch.Tensor:
    """-> [n_behaviours, 2]: each behaviour's metric before and after mean-ablating the heads (your 06.1)."""
    # EXERCISE 06.2
    raise NotImplementedError("EXERCISE 06.2: per behaviour, metric(model(tokens)) and metric(your 06.1's logits)")


# %% [markdown]
# Before measuring: which of facts, induction and plain text will the IOI heads' ablation damage, and how much,
# against a control set of the same number of heads that matter least for IOI?

# %%
prediction_2 = None  # your guess: the behaviours the IOI heads' ablation damages, e.g. ["ioi", "induction"]

# %%
if MAIN:
    # each behaviour's means over its own prompts (they are many, and of one kind)
    # GPT-2: fewer prompts of each behaviour (360 facts' logits alone are 0.9 GB; every prompt runs thrice a set)
    sizes = dict(n_ioi=8, n_text=5, n_facts=30, n_induction=8) if LARGE else {}
    behaviours = {name: (tokens, tokens, m) for name, (tokens, m) in shipped_behaviours(model, **sizes).items()}
    every = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    card = (model.card.get("mechanisms") or {}).get("ioi", {}).get("mean_ablation_heads")
    quiet = [every[int(i)] for i in torch.tensor(card).abs().flatten().argsort()[:len(heads)]] if card else []
    head_sets = {"IOI heads": heads, "IOI heads after layer 0": [h for h in heads if h[0] >= 1],
                 "quiet heads": quiet}
    head_sets = {k: v for k, v in head_sets.items() if v}
    with demo("06.2 the damage of each ablation on every behaviour"), \
            forward_progress(model, desc="06.2 the head sets' runs", disable=not LARGE):  # GPT-2: 20 s a set
        changes = []
        for name, hs in head_sets.items():
            table = damage_table(model, behaviours, hs)  # [n_behaviours, 2]
            changes.append(table[:, 1] - table[:, 0])
            print(f"   {name} ({label(hs)}):")
            for (behaviour, _), (before, after) in zip(behaviours.items(), table.tolist()):
                print(f"      {behaviour:<10} {before:8.3f} -> {after:8.3f}  ({after - before:+.3f})")
            if name == "IOI heads":
                toolkit = ablation_damage(model, {k: (t, m) for k, (t, _, m) in behaviours.items()}, heads=hs,
                                          reference={k: r for k, (_, r, _) in behaviours.items()})
                print(f"      max |yours - ablation_damage| = "
                      f"{max(abs(table[i, 1].item() - toolkit.after[k]) for i, k in enumerate(behaviours)):.2e}")
        show(plot.heatmap(torch.stack(changes), list(head_sets), list(behaviours), OUT / "06_damage.png",
                          title="metric change, heads mean-ablated", xlabel="behaviour (its own metric)",
                          ylabel="heads mean-ablated",
                          cbar_label="metric after - before (logits for ioi, nats for the others; higher is better)"))

# %% [markdown]
# Read the table row by row against your guess. Each behaviour's metric is in its own units (a logit difference,
# a mean log-probability, minus a loss), so compare each change with the control row, not with the other columns.
# If the IOI heads' row damages facts, induction or text as much as IOI, the heads are not an IOI module: small
# models reuse their heads. The heads ranked first for IOI may do work that every task needs: a head that attends
# to each token itself and carries its identity, a previous-token head, an induction head (look them up in lesson
# 03's role table and lesson 02's detectors). Leaving out the layer-0 heads, which move "which word came where" for
# every task, shows how much of the collateral damage is theirs.
#
# A circuit found by asking "what matters for IOI?" answers that question, not "what matters *only* for IOI?". To
# remove a behaviour you want the components that are necessary for it and unnecessary for everything else, and
# that takes measuring everything else.

# %% [markdown]
# # Part 2 · Steering with a difference of means
#
# Turner et al. (2023) steer GPT-2 by adding an **activation difference** to the residual stream: run two prompts
# ("Love" and "Hate"), take the difference of their activations at one layer, and add it, scaled by a coefficient,
# during other forward passes. With many prompts per side the difference of the two means is more robust: what the
# two sets share cancels, and what tells them apart remains. Here: the training phrasings of Spain's capital minus
# those of France's, read at each prompt's **last** token, where the answer is predicted.
#
# ## Exercise 06.3: A steering vector
#
# > **Difficulty** ★☆☆ · **Importance** ★★★★☆ · about 10 minutes
#
# The mean over `positive` of the activation at `hook` at each prompt's last token, minus the same mean over
# `negative`. Prompts are strings of different lengths; `model.to_tokens(list)` pads the shorter ones on the right,
# so in a batch the last position is not every prompt's last token. One prompt at a time is simplest.
#
# `steering_vector(model, positive, negative, hook)`: two lists of strings and a hook name → the activation's shape
# after `[batch, pos]` (`[d_model]` for a residual hook, `[head, d_head]` for `hook_z`).

# %%
def steering_vector(model, positive: list, negative: list, hook: str) -> torch.Tensor:
    """-> [*act_shape]: mean activation at `hook` at each positive prompt's last token minus the negative mean."""
    # EXERCISE 06.3
    raise NotImplementedError("EXERCISE 06.3: cache `hook` per prompt, take [0, -1], mean per set, subtract")


# %%
def capital_prompts(facts, subject: str) -> list[str]:
    return [f.prompt for f in facts if f.subject == subject and f.relation == "capital"]


if MAIN:
    hook = f"blocks.{model.cfg.n_layers // 2}.hook_resid_pre"  # the middle of the model
    positive, negative = capital_prompts(facts_train, "Spain"), capital_prompts(facts_train, "France")
    if LARGE:  # GPT-2: three prompts a side (06.5 builds a vector at every layer)
        positive, negative = positive[:3], negative[:3]
    print(f"\n   {len(positive)} Spain prompts, e.g. {positive[:2]}; {len(negative)} France prompts")
    with demo("06.3 Spain minus France"):
        vector = steering_vector(model, positive, negative, hook)
        difference = (vector - toolkit_steering_vector(model, positive, negative, hook=hook)).abs().max()
        print(f"   at {hook}: |vector| = {vector.norm():.2f}; max |yours - toolkit's| = {difference:.2e}")

# %% [markdown]
# ## Exercise 06.4: Steering a forward pass
#
# > **Difficulty** ★★☆ · **Importance** ★★★★☆ · about 10 minutes
#
# Write the hook that steers: during the forward pass, add `coeff * vector` to the activation at `hook`, at
# position `pos` (an int; negative counts from the end) or at every position when `pos` is None. The vector has the
# activation's shape after `[batch, pos]`, so it broadcasts over the batch.
#
# `steered_logits(model, tokens, hook, vector, coeff, pos=None)`: `tokens` `[batch, pos]` → `[batch, pos, d_vocab]`.

# %%
def steered_logits(model, tokens: torch.Tensor, hook: str, vector: torch.Tensor, coeff: float,
                   pos=None) -> torch.Tensor:
    """-> [batch, pos, d_vocab]: logits of a run with coeff * vector added at `hook` (at pos, or everywhere)."""
    # EXERCISE 06.4
    raise NotImplementedError("EXERCISE 06.4: a hook that returns act + coeff * vector at act[:, pos]")


# %%
if MAIN:
    france = [f for f in facts_heldout if f.subject == "France"]  # held-out phrasings: never seen in training
    madrid, paris = token_id(model, " Madrid"), token_id(model, " Paris")
    with demo("06.4 steering France towards Spain, at the middle of the model"):
        tokens = model.to_tokens(france[0].prompt)
        mine = steered_logits(model, tokens, hook, vector, 1.0, pos=-1)
        with steer(model, hook, vector, coeff=1.0, positions=-1):
            print(f"   max |yours - steer()'s logits| = {(mine - model(tokens)).abs().max():.2e}")
        for f in france:
            tops = [top_token(model, steered_logits(model, model.to_tokens(f.prompt), hook, vector, c, pos=-1)[0, -1])
                    for c in (0.0, 1.0, 2.0)]
            print(f"   {f.prompt!r:40} coeff 0, 1, 2: {tops}")

# %% [markdown]
# Did France's held-out prompts turn into Madrid at the middle layer? If they did not, the vector may be added where
# the last token does not yet hold the country at all: a difference of means is only as good as the place it was
# read. The way to find the place is to try every layer.
#
# ## Exercise 06.5: Where steering works
#
# > **Difficulty** ★★☆ · **Importance** ★★★★☆ · about 15 minutes
#
# For each layer `l`: build the vector at `blocks.{l}.hook_resid_mid` (the stream after layer `l`'s attention, before
# its MLP) with your 06.3, add it (coefficient `coeff`) at the last token of each test prompt with your 06.4, one
# prompt at a time (they have different lengths), and return the mean over the prompts of
# `logit(target) − logit(baseline)` at the last token.
#
# `steering_by_layer(model, positive, negative, prompts, target, baseline, coeff=1.0)` → `[n_layers]`.

# %%
def steering_by_layer(model, positive: list, negative: list, prompts: list, target: int, baseline: int,
                      coeff: float = 1.0) -> torch.Tensor:
    """-> [n_layers]: mean logit(target) - logit(baseline) over prompts, steered at resid_mid of each layer."""
    # EXERCISE 06.5
    raise NotImplementedError("EXERCISE 06.5: per layer, your 06.3 at resid_mid, your 06.4 at pos=-1, logit diff")


# %% [markdown]
# Before the sweep: from which layer on will the Spain-minus-France vector, added at the last token, make France's
# prompts prefer " Madrid" to " Paris"?

# %%
prediction_3 = None  # your guess: the first layer where logit(Madrid) - logit(Paris) turns positive, e.g. 2

# %%
def by_length(model, facts) -> list[list]:
    """The facts in groups of one token length, so that each group runs as one batch with pos=-1 its last token."""
    groups: dict[int, list] = {}
    for f in facts:
        groups.setdefault(model.to_tokens(f.prompt).shape[1], []).append(f)
    return list(groups.values())


def steered_accuracy(model, groups, hook, vector, coeff) -> tuple[float, float]:
    """(top-1 accuracy, share whose top-1 is ' Madrid') over groups of facts (by_length), with coeff * vector added
    at each prompt's last token (your 06.4)."""
    right = to_madrid = total = 0
    for group in groups:
        logits = steered_logits(model, model.to_tokens([f.prompt for f in group]), hook, vector, coeff, pos=-1)
        top = logits[:, -1].argmax(-1)  # [n_group]
        right += sum(int(t) == token_id(model, f.answer) for t, f in zip(top, group))
        to_madrid += int((top == madrid).sum())
        total += len(group)
    return right / total, to_madrid / total


if MAIN:
    with demo("06.5 steering at each layer"):
        france_capital = [f.prompt for f in france if f.relation == "capital"]
        with forward_progress(model, desc="06.5 the sweep's runs", disable=not LARGE):  # GPT-2: 30 s or more
            sweep = steering_by_layer(model, positive, negative, france_capital, madrid, paris)  # [n_layers]
        unsteered = torch.stack([model(model.to_tokens(p))[0, -1] for p in france_capital])
        print(f"   logit(Madrid) - logit(Paris) on {len(france_capital)} held-out France capital prompts: unsteered "
              f"{(unsteered[:, madrid] - unsteered[:, paris]).mean():+.2f}; steered at resid_mid of layer "
              + ", ".join(f"{l} {x:+.2f}" for l, x in enumerate(sweep.tolist())))
        best = int(sweep.argmax())
        best_hook = f"blocks.{best}.hook_resid_mid"
        best_vector = steering_vector(model, positive, negative, best_hook)
        others = [f for f in facts_heldout if f.subject not in ("France", "Spain")]
        others = spread_facts(others, 30) if LARGE else others  # GPT-2: 30 of them, 10 of each relation
        groups = by_length(model, others)
        history = []
        with forward_progress(model, desc="06.5 5 coefficients' runs", disable=not LARGE):
            for coeff in (0.0, 0.5, 1.0, 1.5, 2.0):
                tops = [top_token(model, steered_logits(model, model.to_tokens(f.prompt), best_hook, best_vector,
                                                        coeff, pos=-1)[0, -1]) for f in france]
                accuracy, to_madrid = steered_accuracy(model, groups, best_hook, best_vector, coeff)
                history.append({"coeff": coeff, "other facts right": accuracy, "other facts say Madrid": to_madrid})
                print(f"   at {best_hook}, coeff {coeff:3.1f}: France's prompts say {tops}; {len(others)} other "
                      f"countries' facts right {accuracy:.1%}, ' Madrid' {to_madrid:.1%}")
        show(plot.curves(history, ["other facts right", "other facts say Madrid"], OUT / "06_steering.png",
                         title=f"Spain - France at {best_hook}, added at the last token", x="coeff"))

# %% [markdown]
# Compare the sweep with your guess. Before the layer whose attention brings the country to the last token, the
# vector is built from states that barely differ between Spain and France, and adding it changes little; after it,
# the vector carries "Spain", so it moves the capital, and also the language (it was built from capital prompts,
# yet it says *Spain*, not *Madrid*). Added to other countries' facts it damages them too: steering writes a
# direction into the stream wherever you add it, and it is a change to the *forward pass*, not to what the model
# knows. Run the model without the hook and Paris is back. (In practice: `steering_vector(...)` and `with steer(...)`
# from `minimech.analysis`.)

# %% [markdown]
# # Part 3 · Rewriting one fact: ROME
#
# Meng et al. (2022) edit the *weights* instead. Lesson 04 read an MLP as a key-value memory: the output matrix
# `W_out` (`[d_mlp, d_model]`) maps a **key**, the MLP's hidden activation `k = hook_post` (`[d_mlp]`), to a
# **value**, `k @ W_out` (`[d_model]`), added to the residual stream. At the subject's last token, the key says
# "France" and the value carries what the model then knows about France. ROME:
#
# 1. reads the key `k` at the subject's last token in the MLP layer that matters for facts (`fact_layer(model)`,
#    from the model card's causal traces);
# 2. finds a new value `v* = k W + δ` that makes the model say the new answer: gradient descent on δ, added to the
#    MLP's output at that one position;
# 3. changes `W_out` so that `k` maps to `v*` and other keys change as little as possible, where "as little as
#    possible" is measured over typical keys, whose second moment `C = E[k kᵀ]` comes from ordinary text.
#
# You write all three: C, δ, and the update.
#
# ## Exercise 06.6: The keys' second moment
#
# > **Difficulty** ★☆☆ · **Importance** ★★★☆☆ · about 10 minutes
#
# Run `tokens` (`[batch, pos]`, right-padded text) and collect MLP `layer`'s keys, `blocks.{layer}.mlp.hook_post`
# (`[batch, pos, d_mlp]`), at the positions where `mask` (`[batch, pos]`, bool) is True; return `C = E[k kᵀ]`, the
# mean over those keys of their outer product. Not centred: ROME's C is the uncentred second moment (a key's size
# matters, not only its direction from the mean).
#
# `key_second_moment(model, layer, tokens, mask)` → `[d_mlp, d_mlp]`.

# %%
def key_second_moment(model, layer: int, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """-> [d_mlp, d_mlp]: the mean of k k^T over the keys (hook_post of MLP `layer`) at the masked positions."""
    # EXERCISE 06.6
    raise NotImplementedError("EXERCISE 06.6: hook_post of `layer`, keep the masked positions [n, d_mlp], K.T @ K / n")


# %%
PROMPT, SUBJECT, NEW = "France's capital is", "France", " Rome"

if MAIN:
    layer = fact_layer(model, PROMPT, SUBJECT, samples=3 if LARGE else 10)  # the card's layer; GPT-2: a causal trace
    prompt_tokens = model.to_tokens(PROMPT)  # [1, pos]
    subject_pos = find_subject_positions(model, prompt_tokens, SUBJECT)[-1]
    _, cache = model.run_with_cache(prompt_tokens, names=[f"blocks.{layer}.mlp.hook_post"])
    key = cache[f"blocks.{layer}.mlp.hook_post"][0, subject_pos]  # [d_mlp]: the key of "France" there
    W_out = model.blocks[layer].mlp.W_out.detach()  # [d_mlp, d_model]
    print(f"\n   MLP{layer}, key at {model.to_str_tokens(prompt_tokens)[subject_pos]!r} (position {subject_pos}), "
          f"|k| = {key.norm():.2f}")
    n_documents = 40 if LARGE else 300  # GPT-2: 300 documents' logits would be 2 GB
    text_tokens, text_mask = prompt_batch(model, corpus.training_documents(n_documents, seed=1), truncate=True)
    text_mask[:, 0] = False  # the BOS is no text
    toolkit_cov = key_covariance(model, layer, n_documents)  # the same documents, plus a small ridge
    with demo("06.6 the keys' second moment"):
        second_moment = key_second_moment(model, layer, text_tokens, text_mask)  # [d_mlp, d_mlp]
        cov = second_moment + 1e-3 * second_moment.diagonal().mean() * torch.eye(len(key))  # a ridge: C inverts
        difference = (cov - toolkit_cov).abs().max()
        print(f"   {int(text_mask.sum())} keys; max |yours + ridge - key_covariance| = {difference:.2e}")

# %% [markdown]
# ## Exercise 06.7: The new value v*
#
# > **Difficulty** ★★★ · **Importance** ★★★★★ · about 25 minutes
#
# Find `δ` (`[d_model]`) such that adding it to `blocks.{layer}.hook_mlp_out` at `subject_pos` makes the model
# predict `target` at the last position: gradient descent on `−log P(target)`, starting from `δ = 0`, for `steps`
# steps of Adam (`torch.optim.Adam([delta], lr=lr)`), and after each step scale `δ` back to `max_norm` if it grew
# longer (ROME caps the change to keep the edit local). The lesson runs with gradients off: compute the loss inside
# `with torch.enable_grad():`, and take the gradient with respect to `δ` only (`delta.requires_grad_(True)`; the
# model's weights must not change). Return `δ` detached. (ROME adds a penalty that keeps what the model says about the
# subject in general, and stops early; the toolkit's `rome_edit` does both.)
#
# `value_delta(model, tokens, subject_pos, layer, target, steps=60, lr=0.5, max_norm=...)`: `tokens` `[1, pos]` →
# `[d_model]`.

# %%
def value_delta(model, tokens: torch.Tensor, subject_pos: int, layer: int, target: int, steps: int = 60,
                lr: float = 0.5, max_norm: float = 10.0) -> torch.Tensor:
    """-> [d_model]: delta added to hook_mlp_out of `layer` at subject_pos, trained to make target the answer."""
    # EXERCISE 06.7
    raise NotImplementedError("EXERCISE 06.7: Adam on -log P(target), a hook adding delta; clip |delta| to max_norm")


# %%
if MAIN:
    new_id = token_id(model, NEW)
    mlp = model.blocks[layer].mlp
    v_norm = (key @ mlp.W_out + mlp.b_out).norm().item()  # the size of the value at the subject
    with demo("06.7 the new value"):
        with forward_progress(model, desc="06.7 your steps' runs", disable=not LARGE):  # GPT-2: ROME's 20 steps
            delta = value_delta(model, prompt_tokens, subject_pos, layer, new_id, steps=20 if LARGE else 60,
                                max_norm=1.5 * v_norm)  # [d_model]

        def with_delta(act, hook):
            act = act.clone()
            act[:, subject_pos] = act[:, subject_pos] + delta
            return act

        with model.hooks([(f"blocks.{layer}.hook_mlp_out", with_delta)]):
            p_new = model(prompt_tokens)[0, -1].softmax(-1)[new_id].item()
        print(f"   |delta| = {delta.norm():.2f} (|v| = {v_norm:.2f}); with it, P({NEW!r}) = {p_new:.3f} "
              f"(before: {model(prompt_tokens)[0, -1].softmax(-1)[new_id]:.3f})")
        v_star = key @ W_out + delta  # [d_model]: the value the key should now have (b_out is added either way)

# %% [markdown]
# ## Exercise 06.8: ROME's rank-one update
#
# > **Difficulty** ★★★ · **Importance** ★★★★☆ · about 20 minutes
#
# Step 3 has a closed form. Among all `ΔW` with `k @ (W + ΔW) = v*`, take the one that changes the values of
# typical keys least: minimise `E‖k' ΔW‖²` over keys `k'` with second moment `C`. The answer is a rank-one update:
#
# $$\Delta W = \frac{C^{-1} k \,(v^* - k W)^\top}{k^\top C^{-1} k}$$
#
# It has two defining properties: `k @ ΔW = v* − k W` (the key gets its new value exactly), and any key `k₂` with
# `k₂ᵀ C⁻¹ k = 0` gets `k₂ @ ΔW = 0`. With `C = I` it would be the smallest change in plain norm, which spends the
# change in directions that real keys use a lot. Pure algebra: `W` is `[d_mlp, d_model]` (rows are values, as
# `W_out`), `key` `[d_mlp]`, `value` (v*) `[d_model]`, `cov` (C) `[d_mlp, d_mlp]`. Solve with
# `torch.linalg.solve(cov, key)` rather than inverting C.
#
# `rome_update(W, key, value, cov)` → `ΔW` `[d_mlp, d_model]`.

# %%
def rome_update(W: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """-> [d_mlp, d_model]: Delta W = C^-1 k (v* - k W)^T / (k^T C^-1 k), so that key @ (W + Delta W) = value."""
    # EXERCISE 06.8
    raise NotImplementedError("EXERCISE 06.8: C^-1 k by torch.linalg.solve, outer with (value - key @ W), / k.C^-1k")


# %%
if MAIN:
    with demo("06.8 the rank-one update"):
        update = rome_update(W_out, key, v_star, cov)  # [d_mlp, d_model]
        toolkit_update = toolkit_rank_one_update(key, v_star - key @ W_out, toolkit_cov)
        print(f"   max |yours - the toolkit's rank_one_update| = {(update - toolkit_update).abs().max():.2e}")
        print(f"   |key @ (W + dW) - v*| = {(key @ (W_out + update) - v_star).norm():.2e}; "
              f"rank {torch.linalg.matrix_rank(update, rtol=1e-5).item()}")
        plain = rome_update(W_out, key, v_star, torch.eye(len(key)))  # the same new value, with C = I
        print(f"   |dW| with C from text {update.norm():.2f}, with C = I {plain.norm():.2f}")
        keys = cache[f"blocks.{layer}.mlp.hook_post"][0]  # [pos, d_mlp]: every position's key in the prompt
        change = v_star - key @ W_out
        for name, dw in [("C from text", update), ("C = I", plain)]:
            shares = (keys @ dw) @ change / change.norm() ** 2  # [pos]: how much of the change each key receives
            print(f"   share of v* - kW each position's key receives, {name:<11}: "
                  + "  ".join(f"{t!r} {x:+.2f}" for t, x in zip(model.to_str_tokens(prompt_tokens), shares.tolist())))

# %% [markdown]
# Read the two rows of shares: the subject's own key receives all of the change (share 1) in both, by
# construction. What the other keys of the same prompt receive is what the edit does to them wherever they occur:
# with `C = I` every key that points partly the same way as France's gets part of the change; `C⁻¹k` is the
# direction that typical keys share least with France's, so with C from text the other keys should receive less.
# Check each position's number rather than taking that on trust: a key can still receive a share of either sign.
#
# ## Exercise 06.9: What else an edit changes
#
# > **Difficulty** ★★☆ · **Importance** ★★★★★ · about 15 minutes
#
# An edit is only good if it is **specific**: the edited fact changes, its paraphrases change with it (it
# *generalises*), and every other fact stays as it was. Measure it: the probability of each prompt's answer before
# and after adding `update` to `blocks[layer].mlp.W_out`, on a copy of the model (`copy.deepcopy`; change a copy's
# weights inside `torch.no_grad()`). The model you are given must come back unchanged. The prompts have different
# lengths: read each at its own last token.
#
# `edit_answer_probs(model, layer, update, prompts, answers)`: `update` `[d_mlp, d_model]`; `prompts` n strings;
# `answers` `[n]` token ids → `[2, n]`: P(answer) before (row 0) and after (row 1).

# %%
def edit_answer_probs(model, layer: int, update: torch.Tensor, prompts: list, answers: torch.Tensor) -> torch.Tensor:
    """-> [2, n]: P(answers[i]) after prompts[i], before and after W_out of `layer` += update (on a copy)."""
    # EXERCISE 06.9
    raise NotImplementedError("EXERCISE 06.9: deepcopy, W_out += update under no_grad, P(answer) at each last token")


# %%
def edit_report(model, layer, update, facts, new_id: int) -> dict:
    """(before, after) pairs from your 06.9: P(new) on PROMPT and its mean over the edited fact's other phrasings;
    the share of the other facts whose answer keeps P > 0.5, for the subject's other relations and for every other
    subject."""
    paraphrases = [f for f in facts if f.subject == SUBJECT and f.relation == "capital" and f.prompt != PROMPT]
    others = [f for f in facts if f.subject != SUBJECT or f.relation != "capital"]
    prompts = [PROMPT] + [f.prompt for f in paraphrases + others]
    answers = torch.tensor([new_id] * (1 + len(paraphrases)) + [token_id(model, f.answer) for f in others])
    probs = edit_answer_probs(model, layer, update, prompts, answers)  # [2, n]
    new, rest = probs[:, 1:1 + len(paraphrases)], probs[:, 1 + len(paraphrases):]
    same_subject = torch.tensor([f.subject == SUBJECT for f in others])
    kept = lambda mask: tuple((rest[:, mask] > 0.5).float().mean(1).tolist())  # noqa: E731
    return {"P(new) on the prompt": tuple(probs[:, 0].tolist()),
            f"P(new) on {len(paraphrases)} paraphrases": tuple(new.mean(1).tolist()),
            f"{SUBJECT}'s {int(same_subject.sum())} other facts kept": kept(same_subject),
            f"{int((~same_subject).sum())} other subjects' facts kept": kept(~same_subject)}


# %% [markdown]
# Before measuring: after the edit, what share of France's *other* facts (its language, its continent) will keep
# their answer, and what share of other countries' facts?

# %%
prediction_4 = None  # your guess: the share of France's other facts kept, and of other subjects' facts, e.g. (0.9, 1.0)

# %%
if MAIN:
    with demo("06.9 the edit's effects, fact by fact"):
        # every phrasing of the subject's facts (PROMPT among them); for the other subjects, the held-out phrasings
        others = [f for f in facts_heldout if f.subject != SUBJECT]
        others = spread_facts(others, 30) if LARGE else others  # GPT-2: 30 of them, 10 of each relation
        facts = [f for f in facts_all if f.subject == SUBJECT] + others
        for name, dw in [("C from text", update), ("C = I", plain)]:
            print(f"   ROME with {name}:")
            for what, (before, after) in edit_report(model, layer, dw, facts, new_id).items():
                print(f"      {what:<32} {before:6.3f} -> {after:6.3f}")
        # GPT-2: ROME's 20 steps, and 06.6's C (40 documents: rome_edit's own would read 300)
        fewer = dict(steps=20, covariance=toolkit_cov) if LARGE else {}
        with forward_progress(model, desc="06.9 rome_edit's runs", disable=not LARGE):
            result = rome_edit(model, PROMPT, SUBJECT, NEW, layer=layer, facts=facts, **fewer)  # all three steps
        print(f"   in practice, minimech.analysis.rome_edit:\n{result}")

# %% [markdown]
# Read the report against your guess, in three parts: **efficacy** (the prompt itself), **generalisation** (the
# same fact in other words) and **specificity** (everything else). An edit at the subject changes what *the
# subject's key* maps to, so every fact the model reads from that key can move with it: compare the subject's other
# facts with the other subjects'. With `C = I` the same new value reaches keys of other words as well; compare its
# rows with those of C from text.
#
# Compare the three interventions by where their damage went: the ablation damaged whole *behaviours* (whatever
# shares the heads), the steering vector damaged whatever *prompts* it was added to, the edit damaged what shares
# its *key*. Each is targeted along one axis only.

# %% [markdown]
# ## With GPT-2's own weights
#
# `python lesson.py --model gpt2` runs everything on GPT-2 small (once `minimech fetch gpt2` has put its weights
# here): the IOI paper's main heads instead of the card's, and ROME at the layer a causal trace of "France's capital
# is" points to. Meng et al. edit GPT-2 XL at layer 17 (of 48) and report efficacy near 100 % with about 75 %
# specificity on neighbouring subjects (their "CounterFact" dataset); expect the same shape of result, not the
# same digits.
#
# ## What you found
#
# Knowing *where* a mechanism is lets you switch it off, push it, or rewrite it, and each time the damage elsewhere
# tells you how well you knew it. The README's summary (read it now) gives the figures measured on the shipped
# model.

if MAIN:
    print(f"\nfigures written to {OUT.resolve()}")
