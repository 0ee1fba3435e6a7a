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
# Three interventions, each from a paper, on minimech's default model **mini-4l** (4 layers × 4 heads, d_model 64,
# d_mlp 256, trained on minimech's corpus of IOI sentences, country facts and short stories):
#
# 1. **Ablate a circuit** (Wang et al. 2022's IOI heads): mean-ablate the heads and measure IOI, facts, induction
#    and plain text before and after.
# 2. **Steer** with an activation difference (Turner et al. 2023, ActAdd): add "Spain minus France" to the residual
#    stream, find where it turns France's capital into Madrid, and watch other countries' facts break.
# 3. **Edit one fact** with a rank-one update (Meng et al. 2022, ROME): make "France's capital is" say " Rome" and
#    count the other facts that still come out right.
#
# **Working on it**: `minimech start 06` copies this file into your workspace; `minimech check 06` grades your
# functions; `minimech hint 06.2` gives one hint at a time. Run the file (`python lesson.py`; figures go to
# `./minimech-out/`) to see each piece at work; cells whose exercise is not written yet are skipped.

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
from minimech.training.corpus import Corpus

MAIN = __name__ == "__main__"
DEFAULT_MODEL = "mini-4l"
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
    torch.set_grad_enabled(False)  # we only read the model (rome_edit turns gradients on where it needs them)
    OUT.mkdir(exist_ok=True)
    model = minimech.load(args.model)
    print(model)
    corpus = Corpus(seed=0)
    facts_train, facts_heldout, facts_all = (corpus.fact_eval(s) for s in ("train", "heldout", "all"))
    print(f"   facts: {len(facts_train)} training paraphrases, {len(facts_heldout)} held out, e.g. "
          f"{facts_heldout[0].prompt!r} -> {facts_heldout[0].answer!r}")

# %% [markdown]
# # Part 1 · Knocking out a circuit
#
# Lesson 03 found mini-4l's IOI circuit; the model card lists its five most important heads,
# `card_heads(model, "ioi")`: L2H3, L1H2, L0H2, L1H0 and L2H1. If those heads *are* the IOI mechanism, removing
# them should remove IOI. **Mean ablation** removes what a head says about *this* prompt and keeps what it says about
# every prompt: its output `z` is replaced by its average over reference prompts, one average per position
# (position 0, the BOS, and position 10 carry very different typical activations). Zero ablation would instead
# hand the next layers a vector the head never outputs.
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
    ds = ioi_dataset(model, n=32)  # corpus prompts of one length (held-out frames); GPT-2: templates
    abc = ds.abc()  # the same prompts with three other names: the reference for the means
    metric = ds.logit_diff()  # mean logit(IO) - logit(S) at the last position
    heads = ioi_heads(model)
    with demo("06.1 mean-ablating the IOI heads"):
        logits = mean_ablated_logits(model, ds.tokens, heads, abc.tokens)  # [n, pos, d_vocab]
        captured = []
        ablation_damage(model, {"ioi": (ds.tokens, lambda lg: captured.append(lg) or metric(lg))}, heads=heads,
                        reference=abc.tokens)
        print(f"   max |yours - ablation_damage's logits| = {(logits - captured[-1]).abs().max():.2e}")
        print(f"   IOI logit difference: {metric(model(ds.tokens)):.2f} -> {metric(logits):.2f} without "
              f"{label(heads)}")
        top = heads[0]  # the head the card ranks first
        for name, zero in [(f"{label([top])} alone", [top]), (f"all but {label([top])}", heads[1:])]:
            if zero:
                print(f"   {name}: {metric(mean_ablated_logits(model, ds.tokens, zero, abc.tokens)):.2f}")

# %% [markdown]
# On mini-4l's 32 prompts the logit difference falls from about 9.9 to about 0.75: with its five heads gone, the
# model barely tells the indirect object from the subject (L2H3 alone takes it to about 6.9; the other four without
# L2H3, to about -0.7). Has IOI been *removed*, though, or has the model been broken? A surgeon who cuts out the wrong
# organ also stops the symptom.
#
# ## Exercise 06.2: The damage elsewhere
#
# > **Difficulty** ★★☆ · **Importance** ★★★★★ · about 15 minutes
#
# Measure every behaviour the model has, before and after the same ablation. A behaviour is a batch of tokens and a
# metric (`metric(logits)` → a scalar, higher is better); `shipped_behaviours(model)` gives four, all on data the
# model never trained on: `"ioi"` (the logit difference), `"facts"` (mean log P of the answer on held-out fact
# prompts), `"induction"` (minus the loss on the repeated half of repeated random tokens) and `"text"` (minus the
# loss on fresh corpus documents). Each behaviour's means come from **its own** tokens (a fact prompt's typical
# activations are not an IOI prompt's). Your 06.1 does the ablating.
#
# `damage_table(model, behaviours, heads)`: `behaviours` `{name: (tokens, metric)}` → `[n_behaviours, 2]`, one row
# per behaviour in the dict's order, columns (before, after).

# %%
def damage_table(model, behaviours: dict, heads: list) -> torch.Tensor:
    """-> [n_behaviours, 2]: each behaviour's metric before and after mean-ablating the heads (own-token means)."""
    # EXERCISE 06.2
    raise NotImplementedError("EXERCISE 06.2: per behaviour, metric(model(tokens)) and metric(your 06.1 with tokens)")


# %%
if MAIN:
    behaviours = shipped_behaviours(model)
    every = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    card = (model.card.get("mechanisms") or {}).get("ioi", {}).get("mean_ablation_heads")
    quiet = [every[int(i)] for i in torch.tensor(card).abs().flatten().argsort()[:len(heads)]] if card else []
    head_sets = {"IOI heads": heads, "IOI heads after layer 0": [h for h in heads if h[0] >= 1],
                 "quiet heads": quiet}
    head_sets = {k: v for k, v in head_sets.items() if v}
    with demo("06.2 the damage of each ablation on every behaviour"):
        changes = []
        for name, hs in head_sets.items():
            table = damage_table(model, behaviours, hs)  # [n_behaviours, 2]
            changes.append(table[:, 1] - table[:, 0])
            print(f"   {name} ({label(hs)}):")
            for (behaviour, _), (before, after) in zip(behaviours.items(), table.tolist()):
                print(f"      {behaviour:<10} {before:8.3f} -> {after:8.3f}  ({after - before:+.3f})")
            if name == "IOI heads":
                toolkit = ablation_damage(model, behaviours, heads=hs)
                print(f"      max |yours - ablation_damage| = "
                      f"{max(abs(table[i, 1].item() - toolkit.after[k]) for i, k in enumerate(behaviours)):.2e}")
        path = plot.heatmap(torch.stack(changes), list(head_sets), list(behaviours), OUT / "06_damage.png",
                            title="metric change, heads mean-ablated")
        print(f"   figure: {path}")

# %% [markdown]
# What mini-4l's table says (compare with your run):
#
# | heads ablated | IOI logit diff | facts mean log P | induction | text loss |
# |---|---|---|---|---|
# | none | 10.97 | -0.04 | -4.33 | 1.08 |
# | the five IOI heads | **2.33** | **-3.92** | **-7.48** | 2.48 |
# | L2H3, L1H2, L1H0, L2H1 | 3.89 | -1.87 | -7.52 | 1.60 |
# | five quiet heads (control) | 10.79 | -0.31 | -4.64 | 1.17 |
#
# The IOI heads are **not** an IOI module. Ablating them takes the model's facts down with IOI (mean log P of the
# right answer from -0.04 to -3.92: from about 96 % to about 2 %), wipes out induction (the loss on the repeated
# half rises from 4.33 to 7.48, worse than a uniform guess over 1 378 tokens, 7.23) and more than doubles the loss
# on ordinary text. Two heads do most of the collateral damage. L0H2, in layer 0, moves information about *which
# word came where*, which facts and text need as much as IOI does: without it in the set, the facts lose half as
# much and the text a third as much. And L2H3 is three things at once: IOI's main name mover, the model's strongest
# induction head, and the head that carries the country from the subject to the last token of a fact prompt (0.69
# of its attention there). Ablated alone it costs IOI 2.0, facts 1.6 and induction 2.2. So the four heads after
# layer 0 are not specific either: they still cost the facts 1.8 and take all of induction with them (L2H3 and L2H1
# are the induction heads, L1H0 the weak previous-token head they read).
#
# A circuit found by asking "what matters for IOI?" answers that question, not "what matters *only* for IOI?". To
# remove a behaviour, you want the components that are necessary for it and unnecessary for everything else, and
# that takes measuring everything else.

# %% [markdown]
# # Part 2 · Steering with a difference of means
#
# Turner et al. (2023) steer GPT-2 by adding an **activation difference** to the residual stream: run two prompts
# ("Love" and "Hate"), take the difference of their activations at one layer, and add it, scaled by a coefficient,
# during other forward passes. With many prompts per side the difference of the two means is more robust: what the
# two sets share cancels, and what tells them apart remains. Here: the training paraphrases of Spain's capital
# minus those of France's, read at each prompt's **last** token, where the answer is predicted.
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
    hook = f"blocks.{model.cfg.n_layers // 2}.hook_resid_pre"  # the middle of the model: blocks.2 for mini-4l
    positive, negative = capital_prompts(facts_train, "Spain"), capital_prompts(facts_train, "France")
    print(f"\n   {len(positive)} Spain prompts, e.g. {positive[:2]}; {len(negative)} France prompts")
    toolkit_vector = toolkit_steering_vector(model, positive, negative, hook=hook)  # [d_model]
    with demo("06.3 Spain minus France"):
        vector = steering_vector(model, positive, negative, hook)
        difference = (vector - toolkit_vector).abs().max()
        print(f"   |vector| = {vector.norm():.2f}; max |yours - toolkit's| = {difference:.2e}")

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
COEFFS = [0.0, 0.5, 0.75, 1.0, 1.5, 2.0]


def by_length(model, facts) -> list[list]:
    """The facts in groups of one token length, so that each group runs as one batch with pos=-1 its last token."""
    groups: dict[int, list] = {}
    for f in facts:
        groups.setdefault(model.to_tokens(f.prompt).shape[1], []).append(f)
    return list(groups.values())


def steered_accuracy(model, groups, hook, vector, coeff) -> tuple[float, float]:
    """(top-1 accuracy, share whose top-1 is ' Madrid') over groups of facts (by_length), with coeff * vector added
    at each prompt's last token."""
    right = madrid = total = 0
    for group in groups:
        logits = steered_logits(model, model.to_tokens([f.prompt for f in group]), hook, vector, coeff, pos=-1)
        top = logits[:, -1].argmax(-1)  # [n_group]
        right += sum(int(t) == token_id(model, f.answer) for t, f in zip(top, group))
        madrid += int((top == token_id(model, " Madrid")).sum())
        total += len(group)
    return right / total, madrid / total


if MAIN:
    france = [f for f in facts_heldout if f.subject == "France"]  # held-out phrasings: never seen in training
    others = [f for f in facts_heldout if f.subject not in ("France", "Spain")]
    groups = by_length(model, others)
    with demo("06.4 steering France towards Spain"):
        tokens = model.to_tokens(france[0].prompt)
        mine = steered_logits(model, tokens, hook, toolkit_vector, 1.0, pos=-1)
        with steer(model, hook, toolkit_vector, coeff=1.0, positions=-1):
            print(f"   max |yours - steer()'s logits| = {(mine - model(tokens)).abs().max():.2e}")
        print("   coeff  " + "  ".join(f"{f.prompt[:24]!r:>27}" for f in france))
        history = []
        for coeff in COEFFS:
            tops = [top_token(model, steered_logits(model, model.to_tokens(f.prompt), hook, toolkit_vector, coeff,
                                                    pos=-1)[0, -1]) for f in france]
            print(f"   {coeff:5.2f}  " + "  ".join(f"{t!r:>27}" for t in tops))
            accuracy, to_madrid = steered_accuracy(model, groups, hook, toolkit_vector, coeff)
            history.append({"coeff": coeff, "other facts right": accuracy, "other facts say Madrid": to_madrid})
        for h in history:
            print(f"   coeff {h['coeff']:4.2f}: {len(others)} other countries' facts right "
                  f"{h['other facts right']:.1%}, top-1 ' Madrid' {h['other facts say Madrid']:.1%}")
        path = plot.curves(history, ["other facts right", "other facts say Madrid"], OUT / "06_steering.png",
                           title=f"Spain - France at {hook}, added at the last token", x="coeff")
        print(f"   figure: {path}")

# %% [markdown]
# On mini-4l nothing moves: at every coefficient up to 2, France's six held-out prompts keep " Paris", " French"
# and " Europe", and the other 58 countries' facts stay 100 % right. At `blocks.2.hook_resid_pre` the last token
# does not know yet which country the prompt is about: layer 2's attention (mostly L2H3) brings it there. So Spain's
# prompts and France's look alike at that point (|vector| 1.6, against a residual norm of about 21), and a larger
# coefficient only garbles the prompt (at 16: " governed", " Asia", never " Madrid").
#
# Read and add the vector one layer later, at `blocks.3.hook_resid_pre` (change `hook` and run again): there the
# difference is about 21 long, and at coefficient 1 both held-out capital prompts for France say **" Madrid"**, one
# language prompt says " Spanish" (the other, at 2): the vector, built from capital prompts only, carries "Spain"
# more than "Madrid". The continent prompts stay " Europe" (Spain is in Europe too). Applied to the other countries'
# held-out facts at their last token, it halves their accuracy (100 % → 51 % at coefficient 1; their capitals fall
# to 59 %), yet only 0.6 % of the prompts turn into " Madrid". Steering writes a direction into the stream wherever
# you add it; it does not know which prompts are about France, and it only works where the stream already holds
# what it is meant to change. Used on France's prompts only, it is targeted by construction, but it is a change to
# the *forward pass*, not to what the model knows: run the model without the hook and Paris is back.

# %% [markdown]
# # Part 3 · Rewriting one fact: ROME
#
# Meng et al. (2022) edit the *weights* instead. Lesson 04 read an MLP as a key-value memory: the output matrix
# `W_out` (`[d_mlp, d_model]`) maps a **key**, the MLP's hidden activation `k = hook_post` (`[d_mlp]`), to a
# **value**, `k @ W_out` (`[d_model]`), added to the residual stream. At the subject's last token, the key says
# "France" and the value carries what the model then knows about France. ROME:
#
# 1. reads the key `k` at the subject's last token in the MLP layer that matters for facts
#    (`fact_layer(model)`: layer 0 for mini-4l, from the model card's causal traces);
# 2. finds a new value `v*` that makes the model say the new answer: gradient descent on the MLP's output at that
#    one position, so that P(" Rome") is high, with a penalty for changing what the model says about France in
#    general ("France is") and a cap on the change's size. This is the slow part; the toolkit does it for you;
# 3. changes `W_out` so that `k` maps to `v*` and other keys change as little as possible.
#
# Step 3 has a closed form. Among all `ΔW` with `k @ (W + ΔW) = v*`, take the one that changes the values of
# typical keys least: minimise `E‖k' ΔW‖²` over keys `k'` with second moment `C = E[k' k'ᵀ]` (measured on corpus
# text: `key_covariance(model, layer)`). The answer is a rank-one update:
#
# $$\Delta W = \frac{C^{-1} k \,(v^* - k W)^\top}{k^\top C^{-1} k}$$
#
# Check the two properties that define it: `k @ ΔW = v* - k W` (the key gets its new value exactly), and any key `k₂`
# with `k₂ᵀ C⁻¹ k = 0` gets `k₂ @ ΔW = 0`. With `C = I` it would be the smallest change in plain norm, which spends
# the change in directions that real keys use a lot.
#
# ## Exercise 06.5: ROME's rank-one update
#
# > **Difficulty** ★★★ · **Importance** ★★★★☆ · about 20 minutes
#
# Pure algebra. `W` is `[d_mlp, d_model]` (rows are values, as `W_out`), `key` `[d_mlp]`, `value` (v*)
# `[d_model]`, `cov` (C) `[d_mlp, d_mlp]`. Solve with `torch.linalg.solve(cov, key)` rather than inverting C.
#
# `rome_update(W, key, value, cov)` → `ΔW` `[d_mlp, d_model]`.

# %%
def rome_update(W: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """-> [d_mlp, d_model]: Delta W = C^-1 k (v* - k W)^T / (k^T C^-1 k), so that key @ (W + Delta W) = value."""
    # EXERCISE 06.5
    raise NotImplementedError("EXERCISE 06.5: C^-1 k by torch.linalg.solve, outer with (value - key @ W), / k.C^-1k")


# %%
PROMPT, SUBJECT, NEW = "France's capital is", "France", " Rome"

if MAIN:
    layer = fact_layer(model, PROMPT, SUBJECT)  # the card's choice for mini-4l (layer 0); GPT-2: a causal trace
    prompt_tokens = model.to_tokens(PROMPT)  # [1, pos]
    subject_pos = find_subject_positions(model, prompt_tokens, SUBJECT)[-1]
    _, cache = model.run_with_cache(prompt_tokens, names=[f"blocks.{layer}.mlp.hook_post"])
    key = cache[f"blocks.{layer}.mlp.hook_post"][0, subject_pos]  # [d_mlp]: the key of "France" there
    W_out = model.blocks[layer].mlp.W_out.detach()  # [d_mlp, d_model]
    cov = key_covariance(model, layer)  # [d_mlp, d_mlp]: E[k k^T] over corpus text, plus a small ridge
    print(f"\n   MLP{layer}, key at {model.to_str_tokens(prompt_tokens)[subject_pos]!r} (position {subject_pos}), "
          f"|k| = {key.norm():.2f}")
    result = rome_edit(model, PROMPT, SUBJECT, NEW, layer=layer)  # the toolkit's ROME: finds v* and edits a copy
    print(result)
    toolkit_update = result.model.blocks[layer].mlp.W_out.detach() - W_out  # [d_mlp, d_model]
    v_star = key @ (W_out + toolkit_update)  # [d_model]: the value the toolkit found, given to you
    delta = v_star - key @ W_out  # [d_model]: what the key's value has to gain
    with demo("06.5 the rank-one update"):
        update = rome_update(W_out, key, v_star, cov)  # [d_mlp, d_model]
        print(f"   max |yours - the toolkit's edit| = {(update - toolkit_update).abs().max():.2e}")
        print(f"   |key @ (W + dW) - v*| = {(key @ (W_out + update) - v_star).norm():.2e}; "
              f"rank {torch.linalg.matrix_rank(update, rtol=1e-5).item()}")
        plain = rome_update(W_out, key, v_star, torch.eye(len(key)))  # the same new value, with C = I
        print(f"   |dW| with C from the corpus {update.norm():.2f}, with C = I {plain.norm():.2f}")
        keys = cache[f"blocks.{layer}.mlp.hook_post"][0]  # [pos, d_mlp]: every position's key in the prompt
        for name, dw in [("C from the corpus", update), ("C = I", plain)]:
            shares = (keys @ dw) @ delta / delta.norm() ** 2  # [pos]: how much of the change each key receives
            print(f"   share of v* - kW each position gets, {name:<17}: "
                  + "  ".join(f"{t!r} {x:+.2f}" for t, x in zip(model.to_str_tokens(prompt_tokens), shares.tolist())))

# %% [markdown]
# ## Exercise 06.6: What else an edit changes
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
    # EXERCISE 06.6
    raise NotImplementedError("EXERCISE 06.6: deepcopy, W_out += update under no_grad, P(answer) at each last token")


# %%
def edit_report(model, layer, update, facts, new_id: int) -> dict:
    """(before, after) pairs from your 06.6: mean P(new) on the prompt and on its paraphrases; the share of the
    other facts whose answer keeps P > 0.5, for the subject's other relations and for every other subject."""
    same_fact = [f for f in facts if f.subject == SUBJECT and f.relation == "capital"]  # PROMPT and its paraphrases
    others = [f for f in facts if f not in same_fact]
    answers = torch.tensor([new_id] * len(same_fact) + [token_id(model, f.answer) for f in others])
    probs = edit_answer_probs(model, layer, update, [f.prompt for f in same_fact + others], answers)  # [2, n]
    new, rest = probs[:, :len(same_fact)], probs[:, len(same_fact):]
    is_prompt = torch.tensor([f.prompt == PROMPT for f in same_fact])
    same_subject = torch.tensor([f.subject == SUBJECT for f in others])
    kept = lambda mask: tuple((rest[:, mask] > 0.5).float().mean(1).tolist())  # noqa: E731
    return {"P(new) on the prompt": tuple(new[:, is_prompt].mean(1).tolist()),
            f"P(new) on {int((~is_prompt).sum())} paraphrases": tuple(new[:, ~is_prompt].mean(1).tolist()),
            f"{SUBJECT}'s {int(same_subject.sum())} other facts kept": kept(same_subject),
            f"{int((~same_subject).sum())} other subjects' facts kept": kept(~same_subject)}


if MAIN:
    with demo("06.6 the edit's effects, fact by fact"):
        new_id = token_id(model, NEW)
        # every phrasing of the subject's facts; for the other subjects, the held-out phrasings
        facts = [f for f in facts_all if f.subject == SUBJECT] + [f for f in facts_heldout if f.subject != SUBJECT]
        identity = toolkit_rank_one_update(key, delta, torch.eye(len(key)))  # the toolkit's edit, with C = I
        for name, dw in [("C from corpus text", toolkit_update), ("C = I", identity)]:
            print(f"   ROME with {name}:")
            for what, (before, after) in edit_report(model, layer, dw, facts, new_id).items():
                print(f"      {what:<30} {before:6.3f} -> {after:6.3f}")
        edited_top = top_token(model, result.model(PROMPT)[0, -1])
        print(f"   the toolkit's edited copy says {edited_top!r}; the original still says "
              f"{top_token(model, model(PROMPT)[0, -1])!r}")

# %% [markdown]
# What mini-4l shows (every phrasing of France's facts; the held-out phrasings of the other subjects):
#
# - The edit works on the prompt it was made for: P(" Rome") goes from 0.000 to 0.92.
# - It generalises partly: on France's seven other capital phrasings P(" Rome") rises from 0.001 to about 0.64 on
#   average.
# - It is specific to France, not to the relation. The other subjects' facts are mostly intact (answer above 0.5
#   on 94.4 % of them, from 100 %; the toolkit's top-1 count over all 1 252 other prompts: 100 % → 95.8 %), but
#   **France's other relations suffer**: its languages and continent keep their answer above 0.5 in 69 % of the
#   prompts, from 100 % (top-1 the same). The edit changed what *France's* key at layer 0 maps to, and everything
#   the model says about France reads from it.
# - With `C = I` the same new value does badly even on its own prompt (P(" Rome") 0.19), and almost every fact
#   loses its answer (none of France's others, 0.3 % of the other subjects'). The shares printed under 06.5 say why:
#   with `C = I` the keys of "'s", " capital" and " is" in the same prompt get 54-82 % of the change too (the BOS
#   38 %), because they point partly the same way as France's key in plain geometry; `C⁻¹k` is the direction that
#   typical keys do not share, and with it they get about 1 %. Every fact prompt is made of keys like those, so with
#   `C = I` the edit rewrites every fact's lookup at once instead of one fact.
#
# Compare the three interventions by where their damage went: the ablation damaged whole *behaviours* (facts,
# induction and text with IOI); the steering vector, once added where it worked, damaged whatever *prompts* it was
# added to; the edit damaged the *subject* whose key it rewrote. Each is targeted along one axis only.

# %% [markdown]
# ## With GPT-2's own weights
#
# `python lesson.py --model gpt2` runs everything on GPT-2 small (once `minimech fetch gpt2` has put its weights
# here): the IOI paper's main heads instead of the card's, the middle layer's residual stream for steering, and
# ROME at the layer a causal trace of "France's capital is" points to. Meng et al. edit GPT-2 XL at layer 17 (of
# 48) and report efficacy near 100 % with about 75 % specificity on neighbouring subjects (their "CounterFact"
# dataset); expect the same shape of result, not the same digits.
#
# ## What you found
#
# Knowing *where* a mechanism is lets you switch it off, push it, or rewrite it, and each time the damage elsewhere
# tells you how well you knew it. mini-4l's IOI heads are shared with its facts and its induction; its Spain
# direction exists at the last token only after layer 2, and there it carries Spain's language with its capital;
# its layer-0 key for France holds every France fact at once.
