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
# # Lesson 02: Induction heads
#
# Show a language model a sequence of random tokens, then show it the same sequence again. The first time round it
# can only guess; the second time it predicts almost every token. Nothing in its weights knows these tokens belong
# together: it learns the pattern from the context, on the fly. This is the simplest case of **in-context learning**,
# and in small attention-only transformers it is done by a two-head circuit, the **induction head** (Elhage et al.
# 2021; Olsson et al. 2022):
#
# - a **previous-token head** in an early layer copies, into each position, which token came just before it;
# - an **induction head** in a later layer, sitting on a token A, looks for an earlier position whose previous token
#   was A, and copies the token found there. After `... A B ... A`, it predicts `B`.
#
# You will measure the effect (the loss on the repeated half), find both heads from their attention patterns, see in
# the weights how they are wired together (K-composition), break the circuit by ablation, and watch it appear during
# training as a sudden phase change. Everything runs on `attn-only-2l`, a 2-layer attention-only model shipped with
# minimech, in seconds; with `--model gpt2` (when its weights are on your machine) the same code finds GPT-2's
# induction heads. Before each measurement you write down a prediction (`prediction_1 = ...`); the checks record
# that you made one, never whether it was right. Figures go to `./minimech-out/` (inline in a notebook:
# `minimech start 02 --notebook`).

# %%
import argparse
import os
import time
from contextlib import contextmanager
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import minimech
import minimech.analysis  # the toolkit: its versions of this lesson's exercises, "in practice", after each one
from minimech import plot
from minimech.loading import WeightsNotFoundError, is_gpt2_small
from minimech.notebook import show, tqdm

MAIN = __name__ == "__main__"
DEFAULT_MODEL = "attn-only-2l"
OUT = Path("minimech-out")


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


if MAIN:
    parser = argparse.ArgumentParser(description="Lesson 02: induction heads")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a shipped model, or gpt2 when its weights exist")
    parser.add_argument("--recipe-steps", type=int, default=0,
                        help="steps of the short training run (default 200; the phase change comes after ~1 000-2 000)")
    args, _ = parser.parse_known_args()  # known args only: a notebook kernel passes its own
    torch.manual_seed(0)
    try:
        model = minimech.load(args.model)
    except WeightsNotFoundError as error:
        print(f"GPT-2 checks skipped: no weights for {args.model!r} here ({str(error)[:160]}...); "
              f"running on {DEFAULT_MODEL} instead")
        model = minimech.load(DEFAULT_MODEL)
    IS_GPT2 = is_gpt2_small(model)  # by its weights (config + the manifest's sha256), whatever name loaded it
    LARGE = model.cfg.d_model > 256  # GPT-2-sized: 144 heads, so the printed tables keep the ten largest entries
    if model.cfg.d_model <= 128:
        torch.set_num_threads(1)  # a small model's matrices are tiny: more threads cost more than they save
    print(model)

# %% [markdown]
# ## 1. Repeated random tokens
#
# Our probe is a batch of sequences `[BOS, r_1 ... r_n, r_1 ... r_n]`: a beginning-of-sequence token, n tokens
# drawn uniformly at random from the vocabulary, and the same n tokens again. Random tokens carry no meaning and no
# grammar, so the only way to predict the second half is to have read the first. Position 0 is BOS, positions
# 1..n the first copy, n+1..2n the second.

# %% [markdown]
# ### Exercise 02.1: the probe
#
# > **Difficulty** ★☆☆ · **Importance** ★★☆ · **Time** 5 minutes
#
# `token_pool` is a 1-D tensor of the token ids to draw from (the vocabulary without BOS). Return [batch, 1 + 2 n]
# (n = `seq_len`): `bos_id`, then n ids drawn uniformly (with replacement) from the pool, then the same n ids again.
# Draw with `torch.randint(..., generator=gen)`, a new draw for every row.

# %%
def repeated_tokens(token_pool: torch.Tensor, bos_id: int, seq_len: int, batch: int,
                    gen: torch.Generator) -> torch.Tensor:
    # EXERCISE 02.1
    raise NotImplementedError("EXERCISE 02.1: [BOS, r_1..r_n, r_1..r_n] per row, the r_i drawn from token_pool")


# %%
SEQ_LEN = 25


def token_pool(model) -> torch.Tensor:
    """Every id of the model's vocabulary but BOS (and <unk>, where the vocabulary has one)."""
    tok = model.tokenizer
    special = {tok.bos_id if tok is not None else 0} | ({tok.unk_id} if tok is not None and tok.unk_id is not None
                                                         else set())
    return torch.tensor([i for i in range(model.cfg.d_vocab) if i not in special])


if MAIN:
    with demo("02.1 the probe"):
        bos_id = model.tokenizer.bos_id if model.tokenizer is not None else 0
        tokens = repeated_tokens(token_pool(model), bos_id, SEQ_LEN, 16, torch.Generator().manual_seed(0))
        print(f"   tokens {list(tokens.shape)}: {model.to_str_tokens(tokens[0])[:6]} ...")

# %% [markdown]
# ## 2. The in-context loss
#
# A language model's loss is the cross-entropy of each next token: at position i, the logits predict the token at
# position i + 1. So a sequence of `pos` tokens gives `pos - 1` predictions, and the logits at the last position
# predict nothing we can check. Getting this shift right is the first thing to do in any interpretability work on
# language models; getting it wrong is quietly catastrophic, because the numbers still look like losses.

# %% [markdown]
# ### Exercise 02.2: per-token loss
#
# > **Difficulty** ★☆☆ · **Importance** ★★★ · **Time** 10 minutes
#
# From `logits` [batch, pos, d_vocab] and `tokens` [batch, pos], return [batch, pos - 1] where entry [b, i] is
# −log p(tokens[b, i + 1]), the probability read from the logits at position i.

# %%
def per_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    # EXERCISE 02.2
    raise NotImplementedError("EXERCISE 02.2: minus the log-probability of each next token, [batch, pos - 1]")


# %% [markdown]
# ### Exercise 02.3: the loss on each half
#
# > **Difficulty** ★☆☆ · **Importance** ★★★ · **Time** 10 minutes
#
# Run `model` on `tokens` = `[BOS, r_1..r_n, r_1..r_n]` (n = `seq_len`) and return a tensor [2]: the mean loss of
# predicting r_2..r_n in the first copy, and the mean loss of predicting r_2..r_n in the second copy. Both halves
# thus predict the same tokens; r_1 is left out of both, because nothing before it (BOS in the first copy, r_n in
# the second) says what it will be. Use your `per_token_loss`, and `torch.no_grad()`.

# %%
def in_context_losses(model, tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    # EXERCISE 02.3
    raise NotImplementedError("EXERCISE 02.3: [mean loss predicting r_2..r_n in the first copy, in the second]")


# %% [markdown]
# Before measuring: a uniform guess among the model's `d_vocab` tokens costs log(d_vocab) nats (7.2 for
# attn-only-2l's 1 378 tokens). What will the model pay on the first copy, and on the repeat?

# %%
prediction_1 = None  # your guess: the mean loss (nats) on the first copy and on the repeat, e.g. (7.0, 3.0)

# %%
def plot_loss_by_position(losses: torch.Tensor, seq_len: int, path: Path) -> None:
    """The mean loss of each prediction, position by position, with the start of the repeat marked."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(range(1, losses.shape[1] + 1), losses.mean(0).numpy(), marker=".")
    ax.axvline(seq_len + 1, color="C3", ls="--", label="the repeat begins")
    ax.set(xlabel="position of the predicted token", ylabel="loss (nats)", title="Loss on repeated random tokens")
    ax.legend()
    fig.tight_layout()
    show(fig, path)


if MAIN:
    with demo("02.3 the loss on each half"):
        first, repeated = in_context_losses(model, tokens, SEQ_LEN).tolist()
        print(f"   loss on the first copy {first:.3f}, on the repeat {repeated:.3f} (ratio {repeated / first:.2f}); "
              f"a uniform guess: {torch.tensor(float(model.cfg.d_vocab)).log():.2f}")
        with torch.no_grad():
            plot_loss_by_position(per_token_loss(model(tokens), tokens), SEQ_LEN, OUT / "02_loss_by_position.png")

# %% [markdown]
# Compare with your guess. On the first copy the model can only guess, and a model trained on English guesses
# English words, so it can pay *more* than a uniform guess would. On the repeat the loss falls to a small fraction
# of that: something reads the first copy.

# %% [markdown]
# ## 3. Finding the heads from their attention
#
# Each head's attention pattern, `hook_pattern` [batch, head, q_pos, k_pos], says how much each query position reads
# from each key position (rows sum to 1). On our probe the two kinds of head have unmistakable signatures:
#
# - a **previous-token head** puts its attention at key q − 1, the sub-diagonal;
# - an **induction head**, at a query in the second copy holding r_i (position q = n + i), attends to r_{i+1} in the
#   first copy, at key i + 1 = q − n + 1: the token *after* the earlier copy of the current token, which is the one
#   it is about to predict. The diagonal at q − n (the earlier copy itself) is a different kind of head, a
#   duplicate-token head.
#
# A head's **score** is its average attention on its target: over the batch and the queries that have one.

# %% [markdown]
# ### Exercise 02.4: previous-token and induction scores
#
# > **Difficulty** ★★☆ · **Importance** ★★★ · **Time** 20 minutes
#
# Run the model with a cache of every `hook_pattern` (`model.run_with_cache(tokens, names=...)`; the pattern of
# layer l is `cache["pattern", l]`). Return a dict of two [n_layers, n_heads] tensors:
#
# - `"previous_token"`: the mean over the batch and the queries q = 2..2n of pattern[q, q − 1] (query 1 is left
#   out: its previous token is BOS, where heads rest when they have nothing to do);
# - `"induction"`: the mean over the batch and the queries q = n+1..2n of pattern[q, q − n + 1].
#
# `torch.diagonal(x, offset, dim1=-2, dim2=-1)` extracts such off-diagonals in one call, but a loop is fine too.

# %%
def detector_scores(model, tokens: torch.Tensor, seq_len: int) -> dict:
    # EXERCISE 02.4
    raise NotImplementedError("EXERCISE 02.4: mean attention at key q-1 (queries 2..2n) and q-n+1 (queries n+1..2n)")


# %% [markdown]
# The model has two layers of two heads. Which of the four do you expect to be a previous-token head, and which an
# induction head? (Think about which layer each must be in for the circuit to work.)

# %%
prediction_2 = None  # your guess: the previous-token head and the induction head, e.g. ("L0H1", "L1H1")

# %%
def head_labels(model) -> tuple[list[str], list[str]]:
    return [f"L{l}" for l in range(model.cfg.n_layers)], [f"H{h}" for h in range(model.cfg.n_heads)]


if MAIN:
    with demo("02.4 detector scores"):
        scores = detector_scores(model, tokens, SEQ_LEN)
        rows, cols = head_labels(model)
        for kind, values in scores.items():
            show(plot.heatmap(values, rows, cols, OUT / f"02_{kind}_scores.png", title=f"{kind} score", cmap="Blues",
                              center=None, xlabel="head", ylabel="layer",
                              cbar_label=f"{kind} score (mean attention, 0..1)"))
            shown = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
            if LARGE:
                shown = sorted(shown, key=lambda lh: -float(values[lh]))[:10]
            print(f"   {kind:14s} {'(the ten highest) ' if LARGE else ''}"
                  + "  ".join(f"L{l}H{h} {values[l, h]:.2f}" for l, h in shown))
        n_heads = model.cfg.n_heads
        # the previous-token head must sit in an earlier layer than the induction head it serves
        later = scores["induction"].clone()
        later[0] = -1
        best = int(later.argmax())
        induction_head = (best // n_heads, best % n_heads)
        earlier = scores["previous_token"][: induction_head[0]]
        prev_head = (int(earlier.argmax()) // n_heads, int(earlier.argmax()) % n_heads)
        induction_heads = [(l, h) for l in range(1, model.cfg.n_layers) for h in range(n_heads)
                           if scores["induction"][l, h] > 0.4]
        print(f"   previous-token head L{prev_head[0]}H{prev_head[1]}; induction heads (score > 0.4): "
              + ", ".join(f"L{l}H{h}" for l, h in induction_heads))
        _, cache = model.run_with_cache(tokens[:1], names=lambda n: n.endswith("hook_pattern"))
        head = model.blocks[induction_head[0]].attn.heads[induction_head[1]]
        show(plot.attention(head.pattern(cache)[0], [repr(t)[1:-1] for t in model.to_str_tokens(tokens[0])],
                            OUT / "02_induction_head_pattern.png", title=f"{head.name} on a repeated sequence"))

# %% [markdown]
# In the induction head's pattern the second copy's rows light up on a stripe n − 1 positions left of the diagonal;
# in the first copy, where nothing has happened before, the head rests on BOS. In practice, minimech's
# `minimech.analysis.heads.detector_scores(model, tokens)` computes these and other detectors (duplicate
# token, BOS) in one call.

# %% [markdown]
# ## 4. How the two heads are wired: K-composition
#
# An induction head must find "the position whose *previous* token equals my token". Its key at that position has
# to contain the previous token, and that is what the previous-token head wrote there. So the induction head's
# keys read the previous-token head's output: **K-composition**.
#
# Elhage et al. measure it from the weights alone. The sender's OV circuit W_OV = W_V W_O [d_model, d_model] maps
# what it reads to what it writes. The receiver's QK circuit W_QK = W_Q W_Kᵀ scores a query x_q against a key x_k as
# x_q W_QK x_kᵀ. If the key is the sender's output y W_OV, the score is x_q W_QK W_OVᵀ yᵀ, so the product that
# matters is W_OV W_QKᵀ (in the row-vector convention used here; the paper writes W_QKᵀ W_OV for column vectors).
# The composition score is its size relative to the sizes of the two parts:
#
#     score = ||W_OV W_QKᵀ||_F / (||W_OV||_F ||W_QK||_F)
#
# `model.blocks[l].attn.heads[h]` is a Head with `.OV` and `.QK`, factored matrices whose `.AB` is the product.

# %% [markdown]
# ### Exercise 02.5: K-composition scores
#
# > **Difficulty** ★★☆ · **Importance** ★★☆ · **Time** 15 minutes
#
# Return [n_heads, n_heads]: entry [s, r] is the K-composition score of sender head s in `sender_layer` into
# receiver head r in `receiver_layer`. Ignore LayerNorms and biases, as the paper does.

# %%
def k_composition_scores(model, sender_layer: int, receiver_layer: int) -> torch.Tensor:
    # EXERCISE 02.5
    raise NotImplementedError("EXERCISE 02.5: ||W_OV^s W_QK^r.T||_F / (||W_OV^s||_F ||W_QK^r||_F) for every pair")


# %% [markdown]
# A score means little without a baseline: two unrelated matrices also have a product of some size. What score do
# two heads get whose weights are random, with the same shapes? Each W_OV is a product W_V W_O of a
# [d_model, d_head] and a [d_head, d_model] matrix, so it has rank d_head at most, and so has each W_QK; sample
# them that way (Gaussian entries: the score does not depend on their scale).
#
# ### Exercise 02.6: a random baseline
#
# > **Difficulty** ★★☆ · **Importance** ★★★ · **Time** 10 minutes
#
# Return a tensor [n_samples]: the K-composition score of `n_samples` pairs of random heads, each with W_V, W_O,
# W_Q and W_K drawn with `torch.randn(..., generator=gen)` in the shapes [d_model, d_head], [d_head, d_model],
# [d_model, d_head] and [d_model, d_head].

# %%
def composition_baseline(d_model: int, d_head: int, n_samples: int, gen: torch.Generator) -> torch.Tensor:
    # EXERCISE 02.6
    raise NotImplementedError("EXERCISE 02.6: the K-composition score of n_samples random pairs of heads")


# %% [markdown]
# The induction head's *queries* matter too: it must ask "where was my current token?", and in a model whose layer-0
# heads rewrite the current token, the query may read what one of them wrote (**Q-composition**). And what a head
# copies may come from an earlier head's output (**V-composition**). Same score, other receiver matrix: W_QK itself
# for Q-composition (the sender feeds the query side, x_q = y W_OV), and the receiver's W_OV for V-composition.
#
# ### Exercise 02.7: Q- and V-composition
#
# > **Difficulty** ★★☆ · **Importance** ★★☆ · **Time** 10 minutes
#
# Return `{"Q": [n_heads, n_heads], "V": [n_heads, n_heads]}`, rows senders, columns receivers:
# ||W_OV^s W_QK^r||_F / (||W_OV^s||_F ||W_QK^r||_F) and ||W_OV^s W_OV^r||_F / (||W_OV^s||_F ||W_OV^r||_F).

# %%
def q_and_v_composition_scores(model, sender_layer: int, receiver_layer: int) -> dict:
    # EXERCISE 02.7
    raise NotImplementedError("EXERCISE 02.7: the same ratio with W_QK^r (Q) and with W_OV^r (V) as the receiver")


# %% [markdown]
# Before measuring: which sender → receiver pair has the largest K-composition, and how far above the random
# baseline will it be?

# %%
prediction_3 = None  # your guess: the strongest K pair, its score, the baseline, e.g. ("L0H0->L1H0", 0.5, 0.1)

# %%
if MAIN:
    with demo("02.5-02.7 composition scores against a random baseline"):
        receiver_layer = induction_head[0]
        senders = [f"L{prev_head[0]}H{h}" for h in range(n_heads)]
        receivers = [f"L{receiver_layer}H{h}" for h in range(n_heads)]
        tables = {"K": k_composition_scores(model, prev_head[0], receiver_layer)}
        tables.update(q_and_v_composition_scores(model, prev_head[0], receiver_layer))
        baseline = composition_baseline(model.cfg.d_model, model.cfg.d_head, 200, torch.Generator().manual_seed(0))
        mean, std = baseline.mean().item(), baseline.std().item()
        print(f"   random heads of these shapes: {mean:.3f} +- {std:.3f} (mean +- std of 200 pairs)")
        for kind, table in tables.items():
            pairs = [(i, j) for i in range(len(senders)) for j in range(len(receivers))]
            if LARGE:  # 144 pairs: the ten strongest
                pairs = sorted(pairs, key=lambda ij: -float(table[ij]))[:10]
            cells = [f"{senders[i]}->{receivers[j]} {table[i, j]:.3f} ({(table[i, j] - mean) / std:+.0f} std)"
                     for i, j in pairs]
            print(f"   {kind}-composition{' (the ten strongest pairs)' if LARGE else ''}: " + ", ".join(cells))
            show(plot.heatmap(table, senders, receivers, OUT / f"02_{kind.lower()}_composition.png",
                              title=f"{kind}-composition", cmap="Blues", center=None,
                              xlabel=f"receiver (a head of layer {receiver_layer})",
                              ylabel=f"sender (a head of layer {prev_head[0]})",
                              cbar_label="composition score (ratio of Frobenius norms)"))

# %% [markdown]
# Read the numbers against the baseline, not against each other. A pair many standard deviations above the random
# level is wired on purpose; a pair at the random level tells you nothing; a pair below it means the two heads'
# subspaces avoid each other. Even the strongest pair may be a modest *ratio* above the baseline: trained weights
# are far from random matrices, and weight-based scores ignore LayerNorm and what the residual stream actually
# holds. They suggest a circuit; the ablations below test it. (In practice: `minimech.analysis.circuits.
# composition_scores(model, "K")` returns every pair of layers at once.)

# %% [markdown]
# ## 5. Ablation: is the circuit necessary?
#
# Scores and weights show what heads *could* do. To see what the model *needs*, knock a head out and measure the
# in-context loss again. Setting a head's output `hook_z` to zero is the crudest way, but zero is a value the head
# may never produce, so the rest of the network sees something unusual. **Mean ablation** replaces the head's
# output with its average over the batch, position by position: the head still says "something typical for this
# position", but no longer anything about this particular sequence.

# %% [markdown]
# ### Exercise 02.8: ablating heads
#
# > **Difficulty** ★★☆ · **Importance** ★★★ · **Time** 20 minutes
#
# `heads` is a list of `[layer, head]` pairs. With `how="mean"`, replace each listed head's `hook_z` [batch, pos,
# head, d_head] by its mean over the batch at each position (from a clean run on the same tokens); with
# `how="zero"`, by zero. Return your `in_context_losses` of the ablated model. Attach the hooks with
# `with model.hooks([(name, fn), ...]):` so they are removed afterwards, and never change the model's weights.

# %%
def ablated_in_context_losses(model, tokens: torch.Tensor, seq_len: int, heads: list,
                              how: str = "mean") -> torch.Tensor:
    # EXERCISE 02.8
    raise NotImplementedError("EXERCISE 02.8: replace the heads' hook_z by their batch mean (or 0); in-context losses")


# %% [markdown]
# Before the experiment: which single head, mean-ablated, will cost the most of the in-context gain? And will the
# layer-0 head that no detector flags matter?

# %%
prediction_4 = None  # your guess: the repeat's loss after ablating each head, or just which heads matter, e.g. ["L1H0"]

# %%
if MAIN:
    with demo("02.8 mean ablation"):
        # A control: a head no detector flags, from the last layer (whose output only the unembedding reads).
        others = [(l, h) for l in range(model.cfg.n_layers) for h in range(n_heads)
                  if (l, h) != prev_head and (l, h) not in induction_heads]
        control = max(others, key=lambda lh: lh[0])
        experiments = {"nothing": [], "the induction heads": [list(h) for h in induction_heads],
                       f"the previous-token head L{prev_head[0]}H{prev_head[1]}": [list(prev_head)],
                       f"a control head L{control[0]}H{control[1]}": [list(control)]}
        experiments.update({f"layer-0 head L{l}H{h}": [[l, h]] for l, h in others if l == 0})
        results = {}
        for name, heads in tqdm(experiments.items(), desc="02.8 ablations", disable=not LARGE):  # GPT-2: 4 s a run
            results[name] = (ablated_in_context_losses(model, tokens, SEQ_LEN, heads) if heads
                             else in_context_losses(model, tokens, SEQ_LEN))
        for name, (first_half, repeat) in results.items():
            print(f"   mean-ablating {name:36s} first copy {first_half:.3f}, repeat {repeat:.3f}")
        fig, ax = plt.subplots(figsize=(7, 3.2))
        width = 0.38
        for i, (name, values) in enumerate(results.items()):
            ax.bar([i - width / 2, i + width / 2], values.tolist(), width, color=["C0", "C1"],
                   label=["first copy", "repeat"] if i == 0 else None)
        ax.set_xticks(range(len(results)), [n.replace(" head ", "\nhead ") for n in results], fontsize=8)
        ax.set(ylabel="loss (nats)", title="Mean ablation of single heads")
        ax.legend()
        fig.tight_layout()
        show(fig, OUT / "02_ablation.png")

# %% [markdown]
# Compare the repeat's loss in each row with the clean run ("nothing") and with the first copy. A head whose
# ablation sends the repeat back up towards the first copy's loss is necessary for the in-context gain; a head whose
# ablation changes little is not. Check whether the heads that matter are exactly the ones the detectors found: a
# head with no recognisable pattern can still be needed (for example one that writes the current token for the
# induction head's queries to read, which Q-composition would show). Detector scores find heads with a
# recognisable pattern; only an intervention finds all the heads a behaviour needs.

# %% [markdown]
# ## 6. The phase change
#
# Olsson et al. found that induction heads form abruptly during training, and that at the same moment the model's
# in-context learning improves and the training loss, after a plateau, falls again (a visible bump in the loss
# curve): a **phase change**. `attn-only-2l`'s model card
# keeps its training history: one record per evaluation, with the step, the training loss, `induction_best` (the
# best induction score), `prev_token_best_L0` and `icl_loss_ratio` (repeat loss / first-copy loss).
#
# A simple way to date a transition in a noisy curve: the first evaluation at which the metric has covered half of
# its total change, from its first value to its last. Measured as a fraction, (value − first) / (last − first), this
# works the same for a metric that rises and for one that falls.

# %% [markdown]
# ### Exercise 02.9: dating the phase change
#
# > **Difficulty** ★☆☆ · **Importance** ★★☆ · **Time** 10 minutes
#
# `history` is a list of dicts, each with a `"step"` and the metric `key`. Return the `"step"` (an int) of the first
# record whose value has covered at least half of the change from the first record's value to the last record's.

# %%
def phase_change_step(history: list, key: str) -> int:
    # EXERCISE 02.9
    raise NotImplementedError("EXERCISE 02.9: the step of the first record with (v - first) / (last - first) >= 0.5")


# %% [markdown]
# Before you date it: do the previous-token score, the induction score and the in-context ratio change together, or
# one after the other? And when, in a run of 12 000 steps?

# %%
prediction_5 = None  # your guess: the step at which each metric is half-way, or "together at step ..."

# %%
if MAIN:
    with demo("02.9 dating the phase change in attn-only-2l's training history"):
        history = minimech.load(DEFAULT_MODEL).card["history"]
        keys = ["loss", "icl_loss_ratio", "induction_best", "prev_token_best_L0"]
        for key in keys:
            print(f"   {key:20s} half-way at step {phase_change_step(history, key)}")
        show(plot.curves(history, keys, OUT / "02_phase_change.png", title="attn-only-2l: training history"))

# %% [markdown]
# Look at the curves around the steps you found: evaluations are 250 steps apart, so metrics that cross half-way at
# the same evaluation changed within the same few hundred steps. If the induction score and the in-context ratio
# jump together, after a plateau of the loss, the circuit formed as one piece, and the in-context learning came
# with it: Olsson et al.'s phase change.
#
# ### A short training run
#
# Where does that history come from? `minimech.training.recipes` holds the recipe `attn-only-2l` was trained with:
# the config, English sentences from minimech's generated corpus with chunks of random tokens copied into them (the
# only text where copying pays), and the optimiser settings. Its first steps use short rows (the plateau before the
# phase change grows with the context length), keep fresh random tokens out of the loss, and start attention
# weights larger than GPT-2's 0.02. Below, the same recipe runs its first 200 steps on a small slice of the corpus
# (the full run is `minimech train attn-only-2l`: 12 000 steps); `--recipe-steps 2000` runs further (about a minute
# and a half on a laptop CPU). Where in the history above do 200 steps end?

# %%
def short_training_run(steps: int = 200, seed: int = 0) -> list:
    """The first `steps` steps of attn-only-2l's recipe, on as many corpus documents as they need; returns the
    training history."""
    import dataclasses

    from minimech.training import recipes
    from minimech.training.train import train

    recipe = recipes.get(DEFAULT_MODEL)
    documents = min(recipe.documents, max(1500, steps * recipe.settings.batch_size))  # a slice, for speed
    recipe = dataclasses.replace(recipe, documents=documents)
    phases, tokenizer, corpus = recipes.build_phases(recipe, seed=seed)  # rows of 32 tokens first, then 64
    fresh = recipes.fresh_model(recipe, tokenizer, seed)
    settings = dataclasses.replace(recipe.settings, steps=steps, eval_every=max(1, steps // 8), seed=seed,
                                   schedule_steps=recipe.settings.steps)  # the full run's first steps, same lr
    return train(fresh, phases, settings, recipes.evaluator(recipe, corpus, tokenizer), progress=False).history


if MAIN and os.environ.get("MINIMECH_QUICK"):  # the test suite's smoke run: building the corpus alone takes seconds
    print("\n== a short training run\n   skipped: MINIMECH_QUICK is set")
elif MAIN:
    with demo("a short training run"):
        start = time.perf_counter()
        run_history = short_training_run(steps=args.recipe_steps or 200)
        last = run_history[-1]
        print(f"   short run ({time.perf_counter() - start:.0f} s): loss {run_history[0]['loss']:.2f} -> "
              f"{last['loss']:.2f}, induction score {last['induction_best']:.2f}, in-context ratio "
              f"{last['icl_loss_ratio']:.2f}")
        show(plot.curves(run_history, ["loss", "icl_loss_ratio", "induction_best", "prev_token_best_L0"],
                         OUT / "02_short_training_run.png", title="attn-only-2l's recipe, the first steps"))

# %% [markdown]
# In 200 steps the loss falls fast (the model learns which words are common), while the induction score and the
# in-context ratio stay where they started: this is the plateau before the phase change.

# %% [markdown]
# ## 7. GPT-2 (only with `--model gpt2`)
#
# On GPT-2 small, the induction heads found on repeated random tokens are 5.1, 5.5, 6.9, 7.2 and 7.10 (Olsson et
# al. 2022; TransformerLens's and ARENA's figures). Your `detector_scores` should find all five among its ten
# highest-scoring heads. (Not checked here unless GPT-2's weights are on this machine: `minimech fetch gpt2`.)

# %%
GPT2_INDUCTION_HEADS = [(5, 1), (5, 5), (6, 9), (7, 2), (7, 10)]

if MAIN and IS_GPT2:
    with demo("GPT-2 small's induction heads"):
        gpt2_tokens = repeated_tokens(token_pool(model), model.tokenizer.bos_id, 50, 8,
                                      torch.Generator().manual_seed(0))
        gpt2_scores = detector_scores(model, gpt2_tokens, 50)["induction"]  # [12, 12]
        top10 = [(int(i) // 12, int(i) % 12) for i in gpt2_scores.flatten().topk(10).indices]
        missing = [f"{l}.{h}" for l, h in GPT2_INDUCTION_HEADS if (l, h) not in top10]
        if missing:  # not a crash: the rest of the lesson still runs (and says what was found instead)
            print(f"   NOT FOUND: GPT-2 small's induction heads {', '.join(missing)} are not among the ten highest by "
                  f"your induction score ({', '.join(f'{l}.{h}' for l, h in top10)}); with GPT-2 small's own weights "
                  "all five are. Check your detector_scores (02.4), or the weights (minimech info gpt2)")
        else:
            print("   GPT-2: 5.1, 5.5, 6.9, 7.2 and 7.10 are all among the ten strongest induction heads")
elif MAIN:
    print("GPT-2 checks skipped: they run with --model gpt2 when GPT-2's weights are on this machine")

# %% [markdown]
# ## What you found
#
# A two-layer attention-only model predicts repeated random tokens almost perfectly, and it does so with a circuit
# you can point to: a previous-token head in layer 0 writes "the token before me" into each position, and induction
# heads in layer 1 use that as their keys (K-composition, visible in the weights against a random baseline) to attend
# to the token after the earlier copy and copy it. Ablations show which heads the behaviour needs, including one no
# detector flags, and the training history shows the parts forming together, abruptly. Olsson et al. argue that the
# same mechanism, in fuzzier forms, underlies much of the in-context learning of large models.

if MAIN:
    print(f"figures written to {OUT.resolve()}")
