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
# # Lesson 03 · Indirect object identification
#
# "When Mary and John went to the store, John gave a drink to" → " Mary". To finish the sentence a model must find
# the two names, notice which one is repeated (the subject, S), and say the other one (the indirect object, IO).
# Wang et al. (2022) traced how GPT-2 small does it and found a circuit of 26 heads in named classes: duplicate-token
# and induction heads notice the repeat, S-inhibition heads pass "not that name" to the end, and name mover heads
# copy the remaining name into the logits.
#
# You will run their methods on minimech's default model, **mini-4l** (4 layers × 4 heads, d_model 64, with MLPs,
# trained on minimech's own corpus, which teaches IOI), write each method yourself and compare your numbers with
# minimech's toolkit: the logit difference, direct logit attribution, activation patching, path patching and
# circuit faithfulness. Along the way you will find that this small model solves the task with a smaller circuit
# than GPT-2's, and that some of the paper's head classes simply do not exist in it.
#
# **Working on it**: `minimech start 03` copies this file into your workspace; `minimech check 03` grades your
# functions; `minimech hint 03.2` gives one hint at a time. Run the file (`python lesson.py`; figures go to
# `./minimech-out/`) to see each piece at work; cells whose exercise is not written yet are skipped.
# `--model gpt2` runs everything on GPT-2 small (when its weights are on this machine) and compares your numbers
# with the paper's.

# %%
import argparse
from contextlib import contextmanager
from pathlib import Path

import torch

import minimech
from minimech import plot
from minimech.analysis import (card_heads, circuit_faithfulness, copying_scores, detector_scores,
                               direct_logit_attribution, ioi_dataset, logit_diff as toolkit_logit_diff, patch_heads,
                               patch_resid, path_patch)
from minimech.training.corpus import Corpus

MAIN = __name__ == "__main__"
DEFAULT_MODEL = "mini-4l"
OUT = Path("minimech-out")
GPT2_CIRCUIT = [(9, 9), (9, 6), (10, 0), (7, 3), (7, 9), (8, 6), (8, 10), (5, 5), (6, 9), (0, 1), (3, 0)]


def parse_args():
    parser = argparse.ArgumentParser(description="Lesson 03: indirect object identification", allow_abbrev=False)
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


def circuit_heads(model) -> list[tuple[int, int]]:
    """The heads the model's card names for IOI; for GPT-2 (no card), the paper's main heads."""
    if (model.card.get("mechanisms") or {}).get("ioi"):
        return card_heads(model)
    return GPT2_CIRCUIT


def label(head) -> str:
    return f"L{head[0]}H{head[1]}"


if MAIN:
    args = parse_args()
    torch.set_grad_enabled(False)  # we only read the model
    OUT.mkdir(exist_ok=True)
    model = minimech.load(args.model)
    print(model)
    ds = ioi_dataset(model, n=32)  # corpus prompts (held-out frames) for a shipped model, templates for GPT-2
    abc = ds.abc()  # the same prompts with IO, S1 and S2 replaced by three other names
    print(ds)
    for prompt, io, s in list(zip(ds.prompts, ds.io_tokens, ds.s_tokens))[:3]:
        print(f"   {prompt!r} -> IO {model.to_string(io.reshape(1))!r}, S {model.to_string(s.reshape(1))!r}")
    print(f"   p_ABC: {abc.prompts[0]!r}")
    print(f"   IO at {ds.io_pos[:6].tolist()}, S1 at {ds.s1_pos[:6].tolist()}, S2 at {ds.s2_pos[:6].tolist()}, "
          f"END at {ds.end_pos[:6].tolist()} ...")

# %% [markdown]
# ## The dataset
#
# `minimech.analysis.ioi_dataset(model, n)` builds `n` prompts of **one token length**, so that two runs line up
# position by position (patching needs that). For the shipped models it draws them from the model's own corpus,
# in sentence frames held out of training, with names the model was trained on; for GPT-2 it fills GPT-2-style
# templates. Half the prompts are ABBA ("Mary and John ... John"), half BABA ("John and Mary ... John").
# The dataset knows where the names are (`io_pos`, `s1_pos`, `s2_pos`, `end_pos`) and which tokens are the answers
# (`io_tokens`, `s_tokens`).
#
# `ds.abc()` is the **p_ABC** corruption: the same sentences with IO, S1 and S2 replaced by three other names. It
# keeps the grammar and erases the only information that solves the task, which names repeat. Activation and path
# patching move activations between the two.
#
# ## Exercise 03.1: The logit difference
#
# > **Difficulty** ★☆☆ · **Importance** ★★★★☆ · about 5 minutes
#
# The paper's metric is `logit(IO) - logit(S)` at the last prompt position (END): positive when the model prefers
# the right name, and, unlike a probability, a linear function of the final residual stream, so every component's
# share of it adds up (exercise 03.2 uses that). Read it at each prompt's own `end_pos`: in a batch of prompts of
# different lengths, padded on the right, the last position is not END.
#
# `logit_diff(logits, io_tokens, s_tokens, end_pos)`: `logits` `[batch, pos, d_vocab]`; `io_tokens`, `s_tokens`,
# `end_pos` `[batch]` → `[batch]`, one logit difference per prompt.

# %%
def logit_diff(logits: torch.Tensor, io_tokens: torch.Tensor, s_tokens: torch.Tensor,
               end_pos: torch.Tensor) -> torch.Tensor:
    """logits [batch, pos, d_vocab]; io_tokens, s_tokens, end_pos [batch] -> [batch]: logit(IO) - logit(S) at END."""
    # EXERCISE 03.1
    raise NotImplementedError("EXERCISE 03.1: index each prompt's logits at end_pos, then logit(IO) - logit(S)")


# %%
if MAIN:
    with demo("03.1 the logit difference"):
        clean_diffs = logit_diff(model(ds.tokens), ds.io_tokens, ds.s_tokens, ds.end_pos)  # [n]
        abc_diffs = logit_diff(model(abc.tokens), ds.io_tokens, ds.s_tokens, abc.end_pos)
        print(f"   clean: mean {clean_diffs.mean():.3f}, IO preferred in {(clean_diffs > 0).float().mean():.0%} "
              f"(toolkit: {ds.metric_values(model).mean():.3f}, accuracy {ds.accuracy(model):.0%})")
        print(f"   p_ABC, scored with the clean names: {abc_diffs.mean():.3f}")

# %% [markdown]
# On mini-4l (32 prompts) the mean logit difference is about 9.9 and the IO wins on every prompt; GPT-2 small's is
# 3.55 on the paper's prompts. A logit difference of 9.9 means odds of e^9.9 (about 20 000 to 1) for IO over S.
# On the p_ABC prompts the clean names are gone and the difference drops to about -0.6, a little below zero.
#
# ## Exercise 03.2: Direct logit attribution, head by head
#
# > **Difficulty** ★★☆ · **Importance** ★★★★★ · about 20 minutes
#
# The final residual stream at END is a sum of what every component wrote: embeddings, each head's `z @ W_O`, each
# MLP, the biases. The logits are `ln_final(resid) @ W_U`. `ln_final` is not linear, but in one run it divided by
# one known number per position, the cached `ln_final.hook_scale`: for that run it *is* the linear map
# `x ↦ (x - mean(x)) / scale * w` (plus a bias `b`, which belongs to no component). So each head's direct share of
# the logit difference is
#
# $$\mathrm{DLA}_{l,h} = \frac{\mathrm{centre}(z^{l,h}_{END}\, W_O^{l,h})}{\mathrm{scale}_{END}} \odot w_{ln} \cdot
# \big(W_U[:, IO] - W_U[:, S]\big)$$
#
# averaged over prompts. "Direct" means only this head's own write to the logits: an effect it has by changing what
# a later head or MLP does is not counted. Forgetting the scale is the classic mistake: it leaves every head's number
# off by a factor that differs from prompt to prompt.
#
# `head_logit_attribution(model, cache, io_tokens, s_tokens)`: a cache of a full run on prompts whose answer is at
# the last position; `io_tokens`, `s_tokens` `[batch]` → `[n_layers, n_heads]`.

# %%
def head_logit_attribution(model, cache, io_tokens: torch.Tensor, s_tokens: torch.Tensor) -> torch.Tensor:
    """-> [n_layers, n_heads]: each head's direct effect on logit(IO) - logit(S) at the last position, averaged."""
    # EXERCISE 03.2
    raise NotImplementedError("EXERCISE 03.2: z @ W_O at END, centred, / ln_final scale, * w, . W_U[:, IO] - W_U[:, S]")


# %%
if MAIN:
    _, cache = model.run_with_cache(ds.tokens)
    attribution = direct_logit_attribution(model, cache, ds.io_tokens, ds.s_tokens)  # the toolkit's, every component
    print(attribution)
    with demo("03.2 direct logit attribution by head"):
        mine = head_logit_attribution(model, cache, ds.io_tokens, ds.s_tokens)  # [n_layers, n_heads]
        print(f"   max |yours - toolkit's| = {(mine - attribution.by_head()).abs().max():.2e}")
        heads = [f"H{h}" for h in range(model.cfg.n_heads)]
        layers = [f"L{l}" for l in range(model.cfg.n_layers)]
        path = plot.heatmap(mine, layers, heads, OUT / "03_dla_by_head.png",
                            title="direct effect on logit(IO) - logit(S)")
        print(f"   figure: {path}")

# %% [markdown]
# On mini-4l (32 prompts) one head writes most of the heads' direct share: **L2H3** (about +2.1), then L3H0 (+0.93),
# L3H1 (+0.70) and L2H1 (+0.67). The late MLPs write more than any head (L3MLP +2.9, L2MLP +2.5); MLP0 writes nothing
# directly (-0.02), yet mean-ablating it leaves a logit difference of about 0.1. The heads the card ranks next after
# L2H3, **L1H2** and **L0H2**, have direct effects of only +0.13 and -0.01: whatever they do, they do through later
# components. Direct attribution alone would have missed them. That is what patching is for.
#
# ## Exercise 03.3: Activation patching of one head
#
# > **Difficulty** ★★☆ · **Importance** ★★★★★ · about 15 minutes
#
# Run the **corrupted** prompts, but paste in one head's `z` from the **clean** run. If the logit difference comes
# back, that head carries information that tells the two prompts apart. Write the hook yourself: a function
# `hook(activation, hook)` that returns the edited activation, attached for one forward with
# `with model.hooks([(name, hook)]):` (it is removed when the block ends, even on an error). `hook_z` is
# `[batch, pos, head, d_head]`; clone it before editing, and never edit the model.
#
# `patch_head_z(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, layer, head, pos=None)`: tokens
# `[batch, pos]`; paste `z[:, pos, head]` (every position when `pos` is None) → the patched run's mean logit
# difference at the last position, a float.

# %%
def patch_head_z(model, clean_tokens: torch.Tensor, corrupt_tokens: torch.Tensor, io_tokens: torch.Tensor,
                 s_tokens: torch.Tensor, layer: int, head: int, pos=None) -> float:
    """The corrupted run with one head's clean z pasted in (at pos, or everywhere): its mean logit difference."""
    # EXERCISE 03.3
    raise NotImplementedError("EXERCISE 03.3: cache the clean z, hook blocks.{layer}.attn.hook_z in the corrupted run")


# %%
if MAIN:
    metric = toolkit_logit_diff(ds.io_tokens, ds.s_tokens)  # mean logit(IO) - logit(S) at the last position
    m_clean, m_abc = metric(model(ds.tokens)).item(), metric(model(abc.tokens)).item()
    scores = patch_heads(model, ds.tokens, abc.tokens, metric, normalise=True)  # [n_layers, n_heads], every position
    layers, heads = [f"L{l}" for l in range(model.cfg.n_layers)], [f"H{h}" for h in range(model.cfg.n_heads)]
    path = plot.heatmap(scores, layers, heads, OUT / "03_patch_heads.png",
                        title="clean z patched into p_ABC (1 = clean)")
    print(f"\n   patch_heads (toolkit), normalised: figure {path}")
    with demo("03.3 your patching of the card's heads, every position"):
        for head in circuit_heads(model)[:5]:
            value = patch_head_z(model, ds.tokens, abc.tokens, ds.io_tokens, ds.s_tokens, *head)
            print(f"   {label(head)}: {(value - m_abc) / (m_clean - m_abc):+.3f} of the way back "
                  f"(toolkit {scores[head].item():+.3f})")
        end = patch_head_z(model, ds.tokens, abc.tokens, ds.io_tokens, ds.s_tokens, *circuit_heads(model)[0], pos=-1)
        print(f"   {label(circuit_heads(model)[0])} at END only: {(end - m_abc) / (m_clean - m_abc):+.3f}")

# %% [markdown]
# On mini-4l one head brings back more than half: **L2H3**, about 0.59 of the way, nearly all of it from END alone
# (0.59). Its clean output at END is a copy of the clean IO's name: pasting it writes the answer itself. The other
# card heads bring back little (L2H1 0.14, L1H2 0.12, L0H2 0.10, L1H0 0.01): p_ABC changes every name, so an early
# head's clean output reaches later heads that still read the wrong names. Patching answers "is this activation
# *sufficient* to restore the behaviour?", which is a stricter question than "is it needed?": mean-ablated, L1H2
# alone costs about 2.7 of the 9.9.
#
# ## Exercise 03.4: A residual-stream sweep
#
# > **Difficulty** ★★☆ · **Importance** ★★★★☆ · about 15 minutes
#
# Where does the information live, layer by layer and position by position? Patch the clean `resid_pre` of block `l`
# at position `p` into the corrupted run, for every `(l, p)`, and score each run by how far it gets back:
# `(m - m_corrupt) / (m_clean - m_corrupt)`, 1 for "as good as clean", 0 for "no better than corrupted". A plain
# loop, one forward per cell, is fine (the toolkit's `patch_resid` batches them).
#
# `resid_patching_sweep(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens)` → `[n_layers, pos]`.

# %%
def resid_patching_sweep(model, clean_tokens: torch.Tensor, corrupt_tokens: torch.Tensor, io_tokens: torch.Tensor,
                         s_tokens: torch.Tensor) -> torch.Tensor:
    """-> [n_layers, pos]: clean resid_pre of block l at position p pasted into the corrupted run, normalised."""
    # EXERCISE 03.4
    raise NotImplementedError("EXERCISE 03.4: for each layer and position, paste clean resid_pre; normalise the metric")


# %%
if MAIN:
    # One sentence frame, so that every prompt has its names at the same positions and the sweep's columns line up.
    frame = "When {A} and {B} went to the {place}, {S} gave a {object} to"
    names = Corpus(seed=0).names_train if model.card.get("corpus") else None  # the names mini-4l was trained on
    one = ioi_dataset(model, n=8, templates=[frame], names=names)
    one_abc = one.abc()
    with demo("03.4 residual stream sweep on one frame"):
        sweep = resid_patching_sweep(model, one.tokens, one_abc.tokens, one.io_tokens, one.s_tokens)  # [n_layers, pos]
        toolkit = patch_resid(model, one.tokens, one_abc.tokens, one.logit_diff(), normalise=True)
        print(f"   max |yours - patch_resid| = {(sweep - toolkit).abs().max():.2e}")
        columns = [repr(t) for t in model.to_str_tokens(one.tokens[0])]
        path = plot.heatmap(sweep, [f"resid_pre {l}" for l in range(model.cfg.n_layers)], columns,
                            OUT / "03_resid_sweep.png", title="clean resid_pre patched into p_ABC (1 = clean)")
        print(f"   figure: {path}")
        for l in range(model.cfg.n_layers):
            best = sweep[l].argmax().item()
            print(f"   layer {l}: strongest at {columns[best]} ({sweep[l, best]:.2f})")

# %% [markdown]
# Read the figure from top to bottom. Before block 0 the information sits at S2, the repeated name (about 0.25 on
# these 8 prompts; IO and S1 alone restore almost nothing): the clean S2 says "this name is the subject". Before
# block 1 it is split between S2 (0.14) and END (0.12); from block 2 on it is at END (about 0.23 and 0.82 in blocks 2
# and 3), where the answer is read. Attention heads in layers 0 and 1 carried it from S2 to END. Block 2's 0.23 is
# low because its name movers still fetch the name from the names' own positions, which hold other names in the
# corrupted run; after block 2 the name has been copied to END.
#
# ## Exercise 03.5: Path patching to the logits
#
# > **Difficulty** ★★★ · **Importance** ★★★★☆ · about 20 minutes
#
# Activation patching asks whether a head matters; **path patching** asks whether it matters *through a given path*.
# For the path "sender → logits": run the **clean** prompt with the sender's `z` replaced by its **corrupted** value,
# and every *other* head's `z` frozen at its clean value, so the corrupted signal cannot travel on through later
# heads. MLPs and LayerNorms are recomputed, so the path through the MLPs still counts, unless `freeze_mlps`, which
# freezes every `hook_mlp_out` at its clean value too and leaves only the head's own write. The result is that
# run's mean logit difference: the further it falls from the clean value, the more the path carries.
#
# `path_patch_to_logits(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, sender, freeze_mlps=False)`:
# `sender` is `(layer, head)` → a float.

# %%
def path_patch_to_logits(model, clean_tokens: torch.Tensor, corrupt_tokens: torch.Tensor, io_tokens: torch.Tensor,
                         s_tokens: torch.Tensor, sender: tuple, freeze_mlps: bool = False) -> float:
    """Clean run; sender's z from the corrupted run; other heads' z (and MLPs if freeze_mlps) frozen clean."""
    # EXERCISE 03.5
    raise NotImplementedError("EXERCISE 03.5: freeze every hook_z at clean except the sender's (corrupted)")


# %%
if MAIN:
    with demo("03.5 path patching: each card head -> logits, normalised (0 = nothing, -1 = everything)"):
        for head in circuit_heads(model)[:5]:
            through = path_patch_to_logits(model, ds.tokens, abc.tokens, ds.io_tokens, ds.s_tokens, head)
            direct = path_patch_to_logits(model, ds.tokens, abc.tokens, ds.io_tokens, ds.s_tokens, head,
                                          freeze_mlps=True)
            norm = lambda m: (m - m_clean) / (m_clean - m_abc)  # noqa: E731
            print(f"   {label(head)}: {norm(through):+.3f} with MLPs recomputed, {norm(direct):+.3f} with MLPs frozen")
    if len(circuit_heads(model)) >= 5 and model.cfg.n_layers >= 3:
        movers = [h for h in circuit_heads(model) if h[0] >= model.cfg.n_layers - 2]  # late heads: name movers here
        for sender in [h for h in circuit_heads(model) if h[0] < min(m[0] for m in movers)][:3]:
            m = path_patch(model, ds.tokens, abc.tokens, metric, senders=[sender], receivers=movers,
                           receiver_input="q", positions=ds.end_pos)
            print(f"   toolkit: {label(sender)} -> queries of {[label(h) for h in movers]} at END: "
                  f"{(m - m_clean) / (m_clean - m_abc):+.3f}")

# %% [markdown]
# On mini-4l, L2H3's path to the logits is the strongest (about -0.44 of the whole effect) and keeps -0.15 once the
# MLPs are frozen: it writes the name to the logits itself, and the MLPs after it (layers 2 and 3) carry the other
# two thirds. L1H2 and L0H2 have little path to the logits (-0.07 and -0.05; -0.02 and 0.00 with the MLPs frozen),
# but a strong one into the name movers' queries at END (about -0.23 and -0.18 of the effect through that path
# alone): like GPT-2's S-inhibition heads, they tell the name movers which name *not* to copy.
#
# ## Classes of heads: which of the paper's exist here?
#
# The paper sorts its 26 heads into classes by where they attend and what they write. Measure the same things on
# this model: attention from END to IO, S1 and S2; attention from S2 back to S1 (a duplicate-token head's signature);
# the detectors of lesson 02 on repeated random tokens; and each head's copying score (does its OV circuit copy the
# token it attends to?).

# %%
if MAIN:
    rows = torch.arange(len(ds))
    print("\n   head   END->IO END->S1 END->S2  S2->S1   prev-tok dup-tok induct  copying")
    detectors = detector_scores(model)  # on repeated random tokens
    copying = copying_scores(model)
    for l in range(model.cfg.n_layers):
        pattern = cache["pattern", l]  # [batch, head, q_pos, k_pos]
        for h in range(model.cfg.n_heads):
            end, s2 = pattern[rows, h, ds.end_pos], pattern[rows, h, ds.s2_pos]  # [batch, k_pos] each
            cells = [end[rows, ds.io_pos], end[rows, ds.s1_pos], end[rows, ds.s2_pos], s2[rows, ds.s1_pos]]
            extra = [detectors[k][l, h] for k in ("previous_token", "duplicate_token", "induction")]
            print(f"   L{l}H{h}  " + "  ".join(f"{c.mean():6.2f}" for c in cells) + "   "
                  + "  ".join(f"{e:6.2f}" for e in extra) + f"   {copying[l, h]:+.2f}")

# %% [markdown]
# What the table says for mini-4l (compare it with your own run):
#
# * **Name movers exist**: L2H3 and L2H1 attend from END to the IO (about 0.79 and 0.78 of their attention, against
#   0.20 and 0.21 to S1), and so, more weakly in effect, do L3H0 and L3H1 (0.85, 0.89); all four write the IO's
#   logit directly. The copying column is negative for *every* head, name movers included: it reads the raw token
#   embeddings, and here MLP0 rewrites each token before layer 2 reads it. Read through the residual stream as
#   layer 2 sees it at the IO's position, L2H3's OV circuit ranks the IO's own logit first among 67 names on 94 % of
#   prompts: it copies.
# * **The name movers are the induction heads**: L2H3 and L2H1 are also this model's induction heads (induction
#   scores 0.79 and 0.45). In GPT-2, induction heads work at S2 and flag the repeat for later heads; here they put no
#   attention (0.01 or less) from S2 on the token after S1, and they sit *after* the S-inhibition-like heads: the
#   model reuses them to copy the name at END.
# * **S-inhibition-like heads exist, in layers 0 and 1**: L1H2 (0.89) and L0H2 (0.70) attend from END to S2 and
#   feed the name movers' queries (path patching above). Mean-ablated together they take the logit difference to
#   about -0.2, though each alone costs only 1.4-2.7: they back each other up. In GPT-2 these heads sit in layers
#   7-8 and read a "duplicate" flag that earlier heads wrote at S2; here they need no such flag (L0H2 reads only the
#   embeddings): in the corpus's frames S2 is always the first name of the second clause, so *where* it is suffices.
# * **No duplicate-token heads, no clear previous-token head**: no head attends from S2 to S1 with more than 0.07 and
#   the duplicate-token scores stay below 0.03. The strongest previous-token score is L1H0's 0.39, under the card's
#   threshold of 0.5; L1H0 matters for induction, but little for IOI.
# * **Negative name movers**: none of this model's heads has a clearly negative direct effect (the smallest is
#   L2H0's, about -0.07).
#
# ## Exercise 03.6: Circuit faithfulness
#
# > **Difficulty** ★★☆ · **Importance** ★★★★☆ · about 15 minutes
#
# Is the circuit the whole story? Keep its heads, **mean-ablate** every other head (replace its `z` by the mean of
# its `z` over reference prompts, the p_ABC ones), and compare the logit difference with the full model's:
# F(circuit) / F(model). Mean ablation keeps each head's output in its usual range but removes what it says about
# *this* prompt; zero ablation would instead feed the model a vector it never sees. Take one mean per position
# (`[pos, head, d_head]`, averaged over the reference prompts): position 0 and position 10 carry very different
# typical activations. (The paper goes one step further and averages only over prompts of the same template; the
# toolkit's `circuit_faithfulness` does that by default.)
#
# `circuit_faithfulness_ratio(model, tokens, reference_tokens, io_tokens, s_tokens, circuit)`: `circuit` a list of
# `(layer, head)` → a float.

# %%
def circuit_faithfulness_ratio(model, tokens: torch.Tensor, reference_tokens: torch.Tensor, io_tokens: torch.Tensor,
                               s_tokens: torch.Tensor, circuit: list) -> float:
    """Mean-ablate (per position, over reference_tokens) every head not in circuit: F(circuit) / F(model)."""
    # EXERCISE 03.6
    raise NotImplementedError("EXERCISE 03.6: hook every hook_z: the mean over the reference for heads outside circuit")


# %%
if MAIN:
    with demo("03.6 circuit faithfulness"):
        heads = circuit_heads(model)
        ratio = circuit_faithfulness_ratio(model, ds.tokens, abc.tokens, ds.io_tokens, ds.s_tokens, heads)
        toolkit = circuit_faithfulness(model, ds, heads, reference=abc.tokens, mean_over="position")
        print(f"   {[label(h) for h in heads]}: {ratio:.1%} (toolkit {toolkit.ratio:.1%}; with the paper's "
              f"per-template means {circuit_faithfulness(model, ds, heads).ratio:.1%})")
        for drop in heads[:5]:
            less = [h for h in heads if h != drop]
            print(f"   without {label(drop)}: "
                  f"{circuit_faithfulness_ratio(model, ds.tokens, abc.tokens, ds.io_tokens, ds.s_tokens, less):.1%}")

# %% [markdown]
# The card's five heads keep about 93 % of mini-4l's logit difference with per-position means (87 % with the
# paper's per-template means); the paper's circuit keeps 87 % of GPT-2's. Dropping L2H3 costs the most (53 % left),
# then L1H2 and L0H2 (66 %, 70 %); dropping L2H1 costs least (90 %). (The MLPs are never ablated here: the circuit
# is "these heads plus every MLP".)
#
# ## With GPT-2's own weights
#
# `python lesson.py --model gpt2` runs your functions on GPT-2 small with GPT-2-style templates and compares them
# with the paper's figures (Wang et al. 2022): mean logit difference 3.55 (IO preferred on 99.3 % of prompts); name
# movers 9.9, 9.6, 10.0 with the largest direct effects; negative name movers 10.7 and 11.10; circuit faithfulness
# 87 %. Our templates and per-position means differ from the paper's, so expect the same picture, not the same
# digits.

# %%
PAPER = {"logit_diff": 3.55, "name_movers": [(9, 9), (9, 6), (10, 0)], "negative": [(10, 7), (11, 10)],
         "faithfulness": 0.87}

if MAIN:
    with demo("GPT-2 small against the IOI paper"):
        if not minimech.loading.is_gpt2_small(model):  # known by its weights, not by the name given
            print(f"   skipped: {minimech.loading.identify_gpt2(model).reason}. Run with --model gpt2 once its weights "
                  "are here (minimech fetch gpt2)")
        else:
            diffs = logit_diff(model(ds.tokens), ds.io_tokens, ds.s_tokens, ds.end_pos)
            print(f"   mean logit difference {diffs.mean():.2f} (paper {PAPER['logit_diff']}), "
                  f"IO preferred on {(diffs > 0).float().mean():.1%} (paper 99.3 %)")
            dla = head_logit_attribution(model, cache, ds.io_tokens, ds.s_tokens)
            order = [divmod(int(i), model.cfg.n_heads) for i in dla.flatten().argsort(descending=True)]
            labels = lambda hs: [label(h) for h in hs]  # noqa: E731
            print(f"   largest direct effects {labels(order[:3])} (paper {labels(PAPER['name_movers'])})")
            print(f"   most negative {labels(order[-2:][::-1])} (paper {labels(PAPER['negative'])})")
            ratio = circuit_faithfulness_ratio(model, ds.tokens, abc.tokens, ds.io_tokens, ds.s_tokens, GPT2_CIRCUIT)
            print(f"   faithfulness of {len(GPT2_CIRCUIT)} of the paper's heads: {ratio:.0%} (paper, all 26: 87 %)")

# %% [markdown]
# ## What you found
#
# mini-4l solves IOI with about five heads and its MLPs, laid out more like GPT-2's circuit than its size suggests:
# heads in layers 0-1 find the repeated name from END and tell the name movers' queries which name not to copy, the
# name movers of layers 2-3 (led by L2H3, also an induction head) copy the other name, and the late MLPs amplify it.
# Each method saw a different part: direct attribution saw the name movers and missed L1H2 and L0H2; activation
# patching showed that only L2H3's output suffices on its own; path patching separated "writes to the logits" from
# "feeds the name movers' queries"; faithfulness measured how much the named heads explain. Lesson 04 opens the MLPs.
