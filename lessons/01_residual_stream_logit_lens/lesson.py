# %% [markdown]
# # Lesson 01 · The residual stream and the logit lens
#
# Lesson 00 showed that GPT-2 never overwrites its residual stream: the embeddings start it and every attention head
# and MLP adds one term. So the stream at any point is a **sum of components**, and the logits are, up to the final
# LayerNorm, a linear read-out of that sum. This lesson uses both facts.
#
# 1. Read the stream before every block from a cache of activations.
# 2. Take it apart into the components that wrote it, and check that they add up.
# 3. Read each layer's stream through the unembedding as if it were the last: the **logit lens**, and measure how
#    far each layer's reading is from the final one.
# 4. Find the layer where the model's final answer first becomes, and stays, its top prediction.
# 5. Split a logit difference into the direct contribution of each head, then of every component:
#    **direct logit attribution**.
#
# The running example is indirect object identification (IOI): "When Mary and John went to the store, John gave a
# drink to" → " Mary". The metric is the logit difference between the indirect object (" Mary") and the subject
# (" John"). Before each measurement you write down a prediction (`prediction_1 = ...`); the checks record that you
# made one, never whether it was right. Figures go to `./minimech-out/` (inline in a notebook: `minimech start 01
# --notebook`).
#
# **Caches.** `model.run_with_cache(tokens)` returns the logits and every activation, by hook name:
# `cache["blocks.2.hook_resid_pre"]` is the stream before block 2, `[batch, pos, d_model]`. The checks hand your
# functions a plain dict of the same names, so index with full names (the table is `minimech.HOOK_SHAPES`).
#
# **Working on it**: `minimech start 01`, then `minimech check 01` and `minimech hint 01.k`. Run the file
# (`python lesson.py`, or `--model gpt2` with GPT-2's weights) to see each result on a real model.

# %%
import argparse
import re
from contextlib import contextmanager
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import minimech
from minimech import plot
from minimech.notebook import show
from minimech.training.corpora import corpus_for

MAIN = __name__ == "__main__"
DEFAULT_MODEL = "story-4l"
OUT = Path("minimech-out")
IOI = [  # (prompt, indirect object, subject), all of one token length
    ("When Mary and John went to the store, John gave a drink to", " Mary", " John"),
    ("When Mary and John went to the store, Mary gave a drink to", " John", " Mary"),
    ("When Tom and James went to the park, James gave the ball to", " Tom", " James"),
    ("When Tom and James went to the park, Tom gave the ball to", " James", " Tom"),
]


def parse_args():
    parser = argparse.ArgumentParser(description="Lesson 01: the residual stream and the logit lens",
                                     allow_abbrev=False)
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


def point_labels(n_layers: int) -> list[str]:
    return [f"before block {l}" for l in range(n_layers)] + ["final"]


if MAIN:
    args = parse_args()
    torch.set_grad_enabled(False)
    model = minimech.load(args.model)
    if model.cfg.d_model <= 256:
        torch.set_num_threads(1)  # a small model's matrices are tiny: more threads cost more than they save
    print(model)
    tokens = torch.cat([model.to_tokens(prompt) for prompt, _, _ in IOI])  # [batch, pos], BOS first
    io = torch.tensor([model.to_single_token(name) for _, name, _ in IOI])  # [batch]
    s = torch.tensor([model.to_single_token(name) for _, _, name in IOI])  # [batch]
    logits, cache = model.run_with_cache(tokens)
    rows = torch.arange(len(IOI))
    logit_diff = logits[rows, -1, io] - logits[rows, -1, s]  # [batch]
    print(f"IOI logit difference (IO - S) per prompt: {[round(x, 2) for x in logit_diff.tolist()]}")

# %% [markdown]
# ## Exercise 01.1: The residual stream at every layer
#
# > **Difficulty** ★☆☆ · **Importance** ★★★☆☆ · about 5 minutes
#
# The stream has `n_layers + 1` natural points: before block 0 (the embeddings alone), before block 1, ..., before
# block `n_layers - 1`, and the final stream after the last block, which `ln_final` and the unembedding turn into
# logits. They are `blocks.{l}.hook_resid_pre` for `l < n_layers` and `blocks.{n_layers - 1}.hook_resid_post`.
#
# `residual_stack(cache, n_layers)` → `[n_layers + 1, batch, pos, d_model]`.

# %%
def residual_stack(cache, n_layers: int) -> torch.Tensor:
    """The stream before each block and after the last: [n_layers + 1, batch, pos, d_model]."""
    # EXERCISE 01.1
    raise NotImplementedError("EXERCISE 01.1: stack resid_pre of every block, then the last block's resid_post")


# %% [markdown]
# Before measuring: every block *adds* to the stream. How will its norm at the last position change from the
# embeddings to the final stream: about the same, a few times larger, tens of times larger? Does every block add as
# much?

# %%
prediction_1 = None  # your guess: the norm of the embeddings and of the final stream at the last position, e.g. (2, 10)

# %%
if MAIN:
    with demo("01.1 the stream's norm at the last position, layer by layer"):
        stack = residual_stack(cache, model.cfg.n_layers)  # [n_points, batch, pos, d_model]
        norms = stack[:, :, -1].norm(dim=-1).mean(-1)  # [n_points]
        print("   " + ", ".join(f"{label} {n:.1f}" for label, n in zip(point_labels(model.cfg.n_layers),
                                                                         norms.tolist())))
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(range(len(norms)), norms.numpy(), marker="o")
        ax.set_xticks(range(len(norms)), point_labels(model.cfg.n_layers), rotation=20, fontsize=8)
        ax.set(ylabel="|resid| at the last position", title="The residual stream's norm, layer by layer")
        fig.tight_layout()
        show(fig, OUT / "01_resid_norm.png")

# %% [markdown]
# Compare with your guess. Since the blocks only add, a growing norm means later blocks write larger vectors; the
# steps between points say which blocks write the most. (LayerNorm, before every block and the unembedding, makes the
# size itself harmless: each reader sees a normalised stream.)
#
# ## Exercise 01.2: Taking the stream apart
#
# > **Difficulty** ★★☆ · **Importance** ★★★★★ · about 20 minutes
#
# Before block `layer`, the stream at position `pos` is exactly
#
#     embed + pos_embed + Σ_{l < layer} ( Σ_h head_result[l, h] + b_O[l] + mlp_out[l] )
#
# where head `h`'s write is its `z` times its own slice of `W_O`: `z[:, pos, h] @ W_O[h]`, `[batch, d_model]`. The
# attention bias `b_O` is added once per layer and belongs to no head, so it is a component of its own.
#
# Return a dict from label to `[batch, d_model]`, with the labels minimech's `cache.decompose_resid` uses:
# `"embed"`, `"pos_embed"`, then for each `l < layer`: `"L{l}H{h}"` for every head, `"L{l}attn_bias"`, and
# `"L{l}MLP"` (models with MLPs only). `layer = n_layers` means the final stream. Read `z` from
# `blocks.{l}.attn.hook_z` `[batch, pos, head, d_head]` and `W_O` from `model.blocks[l].attn.W_O`
# `[head, d_head, d_model]`.
#
# `decompose_resid(model, cache, layer, pos)` → `{label: [batch, d_model]}`.

# %%
def decompose_resid(model, cache, layer: int, pos: int) -> dict:
    """The components that wrote the stream before block `layer` (n_layers: the final stream), at position pos."""
    # EXERCISE 01.2
    raise NotImplementedError("EXERCISE 01.2: embed, pos_embed, and every earlier head, attention bias and MLP")


# %%
if MAIN:
    with demo("01.2 the final stream at the last position, taken apart"):
        n = model.cfg.n_layers
        parts = decompose_resid(model, cache, n, -1)  # {label: [batch, d_model]}
        total = sum(parts.values())
        error = (total - cache[f"blocks.{n - 1}.hook_resid_post"][:, -1]).abs().max().item()
        print(f"   {len(parts)} components; max |sum - stream| = {error:.1e}")
        norms = {label: t.norm(dim=-1).mean().item() for label, t in parts.items()}
        print("   largest: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(norms.items(), key=lambda kv: -kv[1])[:6]))

# %% [markdown]
# ## Exercise 01.3: The logit lens
#
# > **Difficulty** ★★☆ · **Importance** ★★★★☆ · about 15 minutes
#
# The unembedding reads only the final stream. But every earlier point of the stream lives in the same space, so we
# can read it the same way: apply `ln_final` to it (with *its own* mean and variance, as the model would if the
# remaining blocks added nothing), then `W_U` and `b_U`, then `log_softmax`. nostalgebraist (2020) called this the
# logit lens.
#
# Run the model yourself (`model.run_with_cache(tokens)`), use `residual_stack`, select position `pos`.
# `model.ln_final.w`, `.b`, `model.cfg.eps`, `model.W_U` `[d_model, d_vocab]` and `model.b_U` `[d_vocab]` hold the
# rest.
#
# `logit_lens(model, tokens, pos)`: `tokens` `[batch, pos]` → log-probs `[n_layers + 1, batch, d_vocab]`.

# %%
def logit_lens(model, tokens: torch.Tensor, pos: int = -1) -> torch.Tensor:
    """Log-probs [n_layers + 1, batch, d_vocab] read from the stream before each block and after the last."""
    # EXERCISE 01.3
    raise NotImplementedError("EXERCISE 01.3: each point of the stream through ln_final, W_U, b_U, log_softmax")


# %% [markdown]
# Before reading it: on the IOI prompts, from which point on will the IO's name be the lens's top token? Before the
# last block, or only in the final stream?

# %%
prediction_2 = None  # your guess: the first point where the IO is the lens's top token, e.g. "before block 2"

# %%
if MAIN:
    with demo("01.3 the logit lens on the IOI prompts"):
        lens = logit_lens(model, tokens, -1)  # [n_points, batch, d_vocab]
        labels = point_labels(model.cfg.n_layers)
        for label, row in zip(labels, lens[:, 0]):
            top = row.argmax().item()
            print(f"   {label:>15}: top {model.to_string(torch.tensor([top]))!r:>10} ({row[top].exp():.2f}), "
                  f"P(IO) {row[io[0]].exp():.2f}, P(S) {row[s[0]].exp():.2f}   (the first prompt)")
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(labels, lens[:, rows, io].exp().mean(1).numpy(), marker="o", label="P(IO)")
        ax.plot(labels, lens[:, rows, s].exp().mean(1).numpy(), marker="o", label="P(S)")
        ax.set(ylabel="probability (mean over prompts)", title="The logit lens at the last position")
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.legend()
        fig.tight_layout()
        show(fig, OUT / "01_logit_lens.png")

# %% [markdown]
# Compare with your guess. If the IO becomes the top token only in the final stream, the last block writes the
# answer; if it leads earlier, later blocks only sharpen it. P(S) beside P(IO) shows whether the model first
# considers both names, and when it decides against the subject. (On GPT-2, nostalgebraist saw the answer take
# shape in the middle layers and sharpen towards the end.)
#
# ## Exercise 01.4: Where the prediction forms
#
# > **Difficulty** ★☆☆ · **Importance** ★★★☆☆ · about 10 minutes
#
# Given the lens's log-probs, find for each prompt the first point from which the model's final top-1 token is the
# top-1 token *at every later point*. Point 0 means the embeddings already predict it; `n_layers` means only the
# final stream does. "Stays" matters: a token can lead at one layer, lose the lead, and win it back.
#
# `prediction_forms_at(log_probs)`: `[n_points, batch, d_vocab]` → `[batch]` integer point indices.

# %%
def prediction_forms_at(log_probs: torch.Tensor) -> torch.Tensor:
    """[n_points, batch, d_vocab] -> [batch]: the first point from which the final top-1 token stays top-1."""
    # EXERCISE 01.4
    raise NotImplementedError("EXERCISE 01.4: the first point of the final run where argmax == the final argmax")


# %%
FACTS = ["Japan's capital is Tokyo. France's capital is", "Germany is a country located in",
         "When Mary and John went to the store, John gave a drink to"]

if MAIN:
    with demo("01.4 where each prediction forms"):
        labels = point_labels(model.cfg.n_layers)
        for prompt in FACTS:
            lens = logit_lens(model, model.to_tokens(prompt), -1)  # [n_points, 1, d_vocab]
            point = int(prediction_forms_at(lens)[0])
            answer = model.to_string(lens[-1, 0].argmax().reshape(1))
            print(f"   {prompt!r} -> {answer!r}: top-1 from {labels[point]} on")

# %% [markdown]
# ## Exercise 01.5: How far is each layer from the answer?
#
# > **Difficulty** ★☆☆ · **Importance** ★★★☆☆ · about 10 minutes
#
# The top-1 token says little about the rest of the distribution. A finer measure of how far the lens at one point
# is from the model's final prediction is the KL divergence from the final distribution to that point's:
#
#     KL(P_final ‖ P_point) = Σ_v P_final(v) (log P_final(v) − log P_point(v))
#
# zero at the final point, large where the lens is far off. (This is the measure the tuned lens of Belrose et al.
# 2023 is trained to shrink.)
#
# `lens_kl(log_probs)`: `[n_points, batch, d_vocab]` log-probs (the last point is the final stream) →
# `[n_points, batch]` in nats.

# %%
def lens_kl(log_probs: torch.Tensor) -> torch.Tensor:
    """[n_points, batch, d_vocab] -> [n_points, batch]: KL(final point || each point), in nats."""
    # EXERCISE 01.5
    raise NotImplementedError("EXERCISE 01.5: sum over d_vocab of p_final * (log p_final - log p_point)")


# %% [markdown]
# Before measuring: on ordinary text, which point will already be close to the final distribution (say, within a
# nat), and how far off will the embeddings alone be?

# %%
prediction_3 = None  # your guess: the mean KL (nats) at each point, e.g. [8, 4, 2, 1, 0]

# %%
if MAIN:
    # ordinary text: the first 16 tokens of three documents of the model's corpus, drawn with a seed training never used
    text = [row[:16] for row in (model.to_tokens(d)[0] for d in corpus_for(model).training_documents(3, seed=77_777))]
    with demo("01.5 the lens's distance from the final distribution"):
        kl = torch.cat([lens_kl(logit_lens(model, row[None], p)) for row in text for p in range(1, len(row))],
                       dim=1)  # [n_points, n_positions]
        labels = point_labels(model.cfg.n_layers)
        print(f"   KL(final || point) over {kl.shape[1]} positions of {len(text)} documents: "
              + ", ".join(f"{label} {v:.2f}" for label, v in zip(labels, kl.mean(1).tolist())))
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(labels, kl.mean(1).numpy(), marker="o")
        ax.set(ylabel="KL (nats)", title="The logit lens's distance from the final prediction")
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        fig.tight_layout()
        show(fig, OUT / "01_lens_kl.png")

# %% [markdown]
# Compare with your guess. A large KL at an early point does not mean that the information is absent there: the
# final LayerNorm and unembedding were trained to read the *last* layer's stream, and an earlier layer may hold the
# answer in a direction they cannot read. The tuned lens learns one affine map per layer to correct for that
# (`minimech.analysis.tuned_lens`; the shipped models come with one).
#
# ## Exercise 01.6: Direct logit attribution of heads
#
# > **Difficulty** ★★★ · **Importance** ★★★★★ · about 25 minutes
#
# The logit difference is `(ln_final(resid) @ (W_U[:, IO] - W_U[:, S]))` at the last position. `ln_final` is not
# linear, but in *this* run it divided the stream by one known number, the cached `ln_final.hook_scale` `[batch, pos,
# 1]`. Fixing that number makes it linear: `x ↦ (x - mean(x)) / scale * w`, plus the bias `b`, which belongs to no
# component. Push each component through that map and the direction `W_U[:, correct] - W_U[:, wrong]`, and the
# results add up to the logit difference (with one term for `ln_final.b` and one for `b_U`).
#
# For every head: its write at `pos` (`z @ W_O[h]`), centred over `d_model`, divided by the cached scale at `pos`,
# times `ln_final.w`, dotted with the prompt's own direction; then the mean over prompts. This is a **direct**
# effect: a head that works by changing what later heads attend to shows up small here (ablations in later lessons
# measure the total effect).
#
# `head_logit_attribution(model, cache, correct, wrong, pos)`: `correct`, `wrong` `[batch]` token ids →
# `[n_layers, n_heads]`.

# %%
def head_logit_attribution(model, cache, correct: torch.Tensor, wrong: torch.Tensor, pos: int = -1) -> torch.Tensor:
    """Each head's direct effect on logit[correct] - logit[wrong] at pos, averaged over prompts: [n_layers, n_heads]."""
    # EXERCISE 01.6
    raise NotImplementedError("EXERCISE 01.6: each head's write through ln_final's cached scale and W_U[c] - W_U[w]")


# %% [markdown]
# Before measuring: which head writes the IO's advantage most directly, and in which layer?

# %%
prediction_4 = None  # your guess: the head with the largest direct effect on logit(IO) - logit(S), e.g. "L3H0"

# %%
def top_heads(attribution: torch.Tensor, k: int = 5) -> list[str]:
    """The k heads with the largest |attribution|, as 'L{l}H{h} value'."""
    n_heads = attribution.shape[1]
    order = attribution.flatten().abs().argsort(descending=True)[:k].tolist()
    return [f"L{i // n_heads}H{i % n_heads} {attribution.flatten()[i]:+.2f}" for i in order]


if MAIN:
    with demo("01.6 which heads write the IOI answer directly"):
        dla = head_logit_attribution(model, cache, io, s, -1)  # [n_layers, n_heads]
        print(f"   largest direct effects: {', '.join(top_heads(dla))}")
        print(f"   all heads together: {dla.sum():.2f} of a logit difference of {logit_diff.mean():.2f}")
        show(plot.heatmap(dla, [f"L{l}" for l in range(model.cfg.n_layers)],
                          [f"H{h}" for h in range(model.cfg.n_heads)], OUT / "01_dla_by_head.png",
                          title="direct effect on logit(IO) - logit(S)", xlabel="head", ylabel="layer",
                          cbar_label="direct effect on logit(IO) - logit(S) (logits, mean over prompts)"))
        ioi_card = model.card.get("mechanisms", {}).get("ioi", {})
        if ioi_card:
            ranking = ioi_card["heads_that_matter_most"][:4]
            heads = [tuple(int(x) for x in re.match(r"L(\d+)H(\d+)", h).groups()) for h in ranking]
            direct = [f"L{l}H{h} {dla[l, h]:+.2f}" for l, h in heads]
            print(f"   the model card's mean-ablation ranking (total effects): {ranking}; their direct effects: "
                  f"{', '.join(direct)}")

# %% [markdown]
# Compare with your guess, and the direct effects with the card's ranking by total effect (what mean-ablating each
# head costs). A head that matters a great deal when removed but writes almost nothing itself works through later
# heads, which direct attribution, by construction, does not see.
#
# ## Exercise 01.7: Every component's share
#
# > **Difficulty** ★★☆ · **Importance** ★★★★☆ · about 15 minutes
#
# The heads are only part of the sum. Take the final stream at `pos` apart with your 01.2, push every component
# through the same linearised `ln_final` and the direction, and add the two terms that belong to no component:
# `"ln_final.b"` (the LayerNorm's bias dotted with the direction) and `"b_U"` (`b_U[correct] - b_U[wrong]`). The
# values then add up, prompt by prompt, to the logit difference itself: check it.
#
# `component_logit_attribution(model, cache, correct, wrong, pos)` → `{label: [batch]}`, your 01.2's labels plus
# `"ln_final.b"` and `"b_U"`.

# %%
def component_logit_attribution(model, cache, correct: torch.Tensor, wrong: torch.Tensor, pos: int = -1) -> dict:
    """{label: [batch]}: each component's direct effect on logit[correct] - logit[wrong] at pos, plus ln_final.b
    and b_U, summing to the logit difference."""
    # EXERCISE 01.7
    raise NotImplementedError("EXERCISE 01.7: your 01.2 at the final stream, each part through ln_final's linear map")


# %% [markdown]
# Before measuring: which kind of component writes most of the logit difference: the heads, the MLPs, or the
# embeddings?

# %%
prediction_5 = None  # your guess: the shares of heads, MLPs and everything else, e.g. (0.6, 0.3, 0.1)

# %%
if MAIN:
    with demo("01.7 every component's share of the logit difference"):
        shares = component_logit_attribution(model, cache, io, s, -1)  # {label: [batch]}
        total = sum(shares.values())  # [batch]
        print(f"   components sum to {[round(x, 3) for x in total.tolist()]}; the logit differences are "
              f"{[round(x, 3) for x in logit_diff.tolist()]}")
        kinds = {"heads": [k for k in shares if "H" in k and k[0] == "L"], "MLPs": [k for k in shares if "MLP" in k]}
        kinds["everything else"] = [k for k in shares if k not in kinds["heads"] + kinds["MLPs"]]
        print("   " + ", ".join(f"{kind} {sum(shares[k].mean() for k in keys):+.2f}" for kind, keys in kinds.items()))
        top = sorted(shares, key=lambda k: -shares[k].mean().abs())[:10]
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.bar(top, [shares[k].mean().item() for k in top])
        ax.set(ylabel="logit difference", title="The ten largest direct effects (mean over prompts)")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        fig.tight_layout()
        show(fig, OUT / "01_component_attribution.png")

# %% [markdown]
# Compare with your guess. The sum is exact because, in this run, `ln_final` *was* this linear map; only the split
# between components is a choice (for example, giving each head its own share of a bias would change it). MLPs that
# write a large share directly, after heads that wrote the name, are usually amplifying what the heads wrote:
# direct attribution cannot tell "wrote it first" from "made it louder".
#
# ## On GPT-2 small
#
# With `--model gpt2`, the same code runs on the prompts of TransformerLens's *Exploratory Analysis Demo*
# (eight IOI prompts, BOS prepended), whose published figures are: a mean logit difference of **3.55**, and, by direct
# logit attribution, heads **9.9, 9.6 and 10.0** on top (name movers), with **10.7 and 11.10** pushing the other way
# (negative name movers). Wang et al. (2022) find the same heads by path patching. These figures come from the papers
# and could not be verified on the machines minimech is built on (they have no internet, so no GPT-2 weights).

# %%
GPT2_IOI = [  # TransformerLens's Exploratory Analysis Demo: 4 templates x 2 name orders
    ("When John and Mary went to the shops,{} gave the bag to", " Mary", " John"),
    ("When Tom and James went to the park,{} gave the ball to", " Tom", " James"),
    ("When Dan and Sid went to the shops,{} gave an apple to", " Dan", " Sid"),
    ("After Martin and Amy went to the park,{} gave a drink to", " Martin", " Amy"),
]
GPT2_LOGIT_DIFF = 3.55  # mean over the 8 prompts (TransformerLens's demo: 3.552)
GPT2_NAME_MOVERS = {"L9H9", "L9H6", "L10H0"}
GPT2_NEGATIVE_NAME_MOVERS = {"L10H7", "L11H10"}

if MAIN:
    with demo("GPT-2 small's IOI figures"):
        if not minimech.loading.is_gpt2_small(model):  # known by its weights, not by the name given
            print(f"   skipped: {minimech.loading.identify_gpt2(model).reason}. Run with --model gpt2 once its weights "
                  "are here (minimech fetch gpt2)")
        else:
            prompts, correct, wrong = [], [], []
            for template, a, b in GPT2_IOI:
                for io_name, s_name in ((a, b), (b, a)):  # the subject repeats; the other name is the answer
                    prompts.append(template.format(s_name))
                    correct.append(model.to_single_token(io_name))
                    wrong.append(model.to_single_token(s_name))
            gpt2_tokens = torch.cat([model.to_tokens(p) for p in prompts])
            correct, wrong = torch.tensor(correct), torch.tensor(wrong)
            gpt2_logits, gpt2_cache = model.run_with_cache(gpt2_tokens)
            r = torch.arange(len(prompts))
            diff = (gpt2_logits[r, -1, correct] - gpt2_logits[r, -1, wrong]).mean().item()
            print(f"   mean logit difference {diff:.3f}; published {GPT2_LOGIT_DIFF} "
                  f"({'matches' if abs(diff - GPT2_LOGIT_DIFF) < 0.05 else 'DOES NOT match'})")
            dla = head_logit_attribution(model, gpt2_cache, correct, wrong, -1)
            flat = dla.flatten()
            name = lambda i: f"L{i // dla.shape[1]}H{i % dla.shape[1]}"  # noqa: E731
            top3 = {name(i) for i in flat.argsort(descending=True)[:3].tolist()}
            bottom2 = {name(i) for i in flat.argsort()[:2].tolist()}
            print(f"   top 3 heads {sorted(top3)}: {'match' if top3 == GPT2_NAME_MOVERS else 'DO NOT match'} the name "
                  f"movers {sorted(GPT2_NAME_MOVERS)}")
            verdict = "match" if bottom2 == GPT2_NEGATIVE_NAME_MOVERS else "DO NOT match"
            print(f"   most negative {sorted(bottom2)}: {verdict} {sorted(GPT2_NEGATIVE_NAME_MOVERS)}")
            forms = prediction_forms_at(logit_lens(model, gpt2_tokens, -1))
            print(f"   the answer becomes top-1 and stays from point {forms.tolist()} (of {model.cfg.n_layers})")

# %% [markdown]
# ## What you found
#
# The stream is a sum you can audit: its components add up to it to float precision, and so do their direct effects
# on a logit difference. The logit lens shows *when* the answer appears, its KL *how far* each layer is from the
# final prediction; direct logit attribution shows *who* writes it. The README's summary (read it now) gives the
# figures measured on the shipped model.

if MAIN:
    print(f"\nfigures written to {OUT.resolve()}")
