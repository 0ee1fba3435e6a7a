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
# # Lesson 04 · MLP memories and factual recall
#
# "France's capital city is" → " Paris". Where in the network does that fact sit? Two ideas frame this lesson.
# Geva et al. (2021) read an MLP layer as a **key-value memory**: each neuron's input weights (its *key*) match a
# pattern in the residual stream, and when the neuron fires it adds its output weights (its *value*) to the
# stream. Meng et al. (2022, ROME) located facts with **causal tracing**: blur the subject's embeddings with noise so
# the model forgets which country it is, then restore one clean hidden state at a time and watch which one brings
# the answer back.
#
# Causal tracing has a trap, and you will measure it: restoring a state at a noised token also restores *which
# token it was*, whatever the task. So every trace needs a **control** beside it, the same restoration at a noised
# token that is not a fact's subject. Only where the fact's trace beats the control does it show a fact being
# looked up rather than a token being recognised.
#
# You work on minimech's default shipped model, on fact prompts phrased in ways it never saw in training. Before
# each measurement you write down a prediction (`prediction_1 = ...`); the checks record that you made one, never
# whether it was right. Figures go to `./minimech-out/` (inline in a notebook: `minimech start 04 --notebook`).
#
# **Working on it**: `minimech start 04`, fill in each `# EXERCISE 04.k`, `python lesson.py`, `minimech check 04`,
# `minimech hint 04.k`. `--model gpt2` runs it on GPT-2 small when its weights are on this machine.

# %%
import argparse
from contextlib import contextmanager
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import minimech
from minimech import plot
from minimech.analysis import causal_trace, find_subject_positions, ioi_dataset
from minimech.analysis.memories import memory_logits, search_corpus, top_activating
from minimech.notebook import forward_progress, show, tqdm
from minimech.training.corpora import corpus_for

MAIN = __name__ == "__main__"
DEFAULT_MODEL = "story-4l"
OUT = Path("minimech-out")
KIND_HOOKS = {"resid": "hook_resid_post", "mlp": "hook_mlp_out", "attn": "hook_attn_out"}  # what each kind restores


def parse_args():
    parser = argparse.ArgumentParser(description="Lesson 04: MLP memories and factual recall", allow_abbrev=False)
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


def first_token(model, text: str) -> int:
    return int(model.to_tokens(text, prepend_bos=False)[0, 0])


def top_token(model, prompt: str) -> int:
    """The model's most likely next token after prompt."""
    return int(model(model.to_tokens(prompt))[0, -1].argmax())


def known_facts(model, facts) -> list:
    """The facts whose answer's first token is the model's top token, prompts of one token length run as one batch
    (360 prompts: one forward each would take GPT-2 a minute), unembedding only the last position (GPT-2's logits at
    every position would be a third of the work)."""
    groups: dict[int, list] = {}
    for f in facts:
        groups.setdefault(model.to_tokens(f.prompt).shape[1], []).append(f)
    right = set()
    for group in groups.values():
        for start in range(0, len(group), 64):
            chunk = group[start:start + 64]
            resid = model(model.to_tokens([f.prompt for f in chunk]), stop_at_layer=model.cfg.n_layers)  # [n, pos, d]
            top = model.unembed(model.ln_final(resid[:, -1:]))[:, 0].argmax(-1)  # [n_chunk]: the last position's
            right.update(id(f) for f, t in zip(chunk, top.tolist()) if t == first_token(model, f.answer))
    return [f for f in facts if id(f) in right]


if MAIN:
    args = parse_args()
    torch.set_grad_enabled(False)
    model = minimech.load(args.model)
    if model.cfg.d_model <= 256:
        torch.set_num_threads(1)  # a small model's matrices are tiny: more threads cost more than they save
    # GPT-2-sized (d_model 768): fewer noise samples, traced facts and documents, so the script takes minutes
    LARGE = model.cfg.d_model > 256
    SAMPLES = 3 if LARGE else 10  # noise samples per causal trace
    print(model)
    corpus = corpus_for(model)  # the corpus the shipped models were trained on
    facts = corpus.fact_eval("heldout")  # held-out phrasings: word orders never used for these facts in training
    known = known_facts(model, facts)
    print(f"{len(facts)} held-out fact prompts; the model's top token is the answer's first token on {len(known)}")
    for f in facts[:3]:
        print(f"   {f.prompt!r} -> {f.answer!r} ({f.relation}, subject {f.subject!r})")

# %% [markdown]
# ## Memories
#
# MLP layer `l` computes `GELU(LN(resid_mid) @ W_in + b_in) @ W_out + b_out`. Take it apart neuron by neuron:
# neuron `i` has a **key**, column `W_in[:, i]` (`[d_model]`), and a **value**, row `W_out[i]` (`[d_model]`). Its
# activation is `a_i = GELU(LN(x) · key + b_in[i])`, and the layer's output is `Σ_i a_i · value_i + b_out`: a sum of
# values, each weighted by how well its key matched. minimech gives each neuron a view:
# `model.blocks[l].mlp.memories[i]`, with `.key`, `.value`, `.activation(cache)` and `.top_tokens(k)`.
#
# ## Exercise 04.1: A memory's value through the unembedding
#
# > **Difficulty** ★☆☆ · **Importance** ★★★☆☆ · about 5 minutes
#
# What does a memory write? Its value is a direction in the residual stream; multiplying it by the unembedding
# `W_U` (`[d_model, d_vocab]`) says which next tokens that direction promotes, as Geva et al. read GPT-2's values
# (without the final LayerNorm, which only rescales at the end).
#
# `memory_value_logits(model, layer, index)` → `[d_vocab]`.

# %%
def memory_value_logits(model, layer: int, index: int) -> torch.Tensor:
    """-> [d_vocab]: the memory's value (row `index` of W_out) read through the unembedding."""
    # EXERCISE 04.1
    raise NotImplementedError("EXERCISE 04.1: the row W_out[index] of block `layer`'s MLP, @ model.W_U")


# %%
if MAIN:
    mem = model.blocks[0].mlp.memories[0]
    print(mem)
    with demo("04.1 a memory's value through the unembedding"):
        mine = memory_value_logits(model, 0, 0)  # [d_vocab]
        print(f"   max |yours - Memory.value_logits()| = {(mine - mem.value_logits()).abs().max():.2e}")
        top = mine.topk(8).indices
        print(f"   L0M0 promotes {[model.to_string(t.reshape(1)) for t in top]}")
        print(f"   toolkit: {memory_logits(mem, k=6)}")

# %% [markdown]
# ## Exercise 04.2: A neuron's activation, by hand
#
# > **Difficulty** ★★☆ · **Importance** ★★★★☆ · about 10 minutes
#
# Recompute neuron `index` of MLP `layer` from the residual stream the MLP reads, `blocks.{layer}.hook_resid_mid`
# (after the block's attention wrote to it): LayerNorm with `ln2`'s `w` and `b`, then the key, the bias, and
# GPT-2's GELU, the tanh approximation
# $\tfrac12 x\,(1 + \tanh(\sqrt{2/\pi}\,(x + 0.044715\,x^3)))$. The cache you get holds the residual streams only.
#
# `neuron_activation(model, cache, layer, index)` → `[batch, pos]`.

# %%
def neuron_activation(model, cache, layer: int, index: int) -> torch.Tensor:
    """-> [batch, pos]: neuron `index` of MLP `layer`, recomputed from the cached resid_mid of that layer."""
    # EXERCISE 04.2
    raise NotImplementedError("EXERCISE 04.2: ln2(resid_mid) @ W_in[:, index] + b_in[index], then GPT-2's GELU")


# %%
if MAIN:
    tokens = model.to_tokens(facts[0].prompt)  # [1, pos]
    _, cache = model.run_with_cache(tokens)
    with demo("04.2 a neuron's activation by hand"):
        mine = neuron_activation(model, cache, 0, 0)  # [1, pos]
        print(f"   max |yours - Memory.activation(cache)| = {(mine - mem.activation(cache)).abs().max():.2e}")
        print(f"   L0M0 on {model.to_str_tokens(tokens)}: {[round(x, 2) for x in mine[0].tolist()]}")

# %% [markdown]
# ## Exercise 04.3: Where does a neuron fire?
#
# > **Difficulty** ★★☆ · **Importance** ★★★☆☆ · about 10 minutes
#
# A key is easiest to read through the contexts that match it best. Run the model over many prompts, read the
# neuron's activation everywhere (`blocks.{layer}.mlp.hook_post[..., index]`), and return the `k` highest, best
# first, with where they are. Leave out position 0: it always holds the BOS token, whose activation is the same in
# every prompt and would fill the list with copies.
#
# `top_activating_positions(model, layer, index, tokens, k)`: `tokens` `[n, pos]` →
# `(values [k], prompt indices [k], positions [k])`, positions counted in `tokens` (the BOS is position 0).

# %%
def top_activating_positions(model, layer: int, index: int, tokens: torch.Tensor, k: int):
    """-> (values [k], prompt indices [k], positions [k]): the neuron's k highest activations, never at position 0."""
    # EXERCISE 04.3
    raise NotImplementedError("EXERCISE 04.3: hook_post[..., index] over tokens, position 0 masked, topk, unravel")


# %%
if MAIN:
    tok = model.tokenizer
    rows = [[tok.bos_id] + tok.encode(d) for d in corpus.training_documents(200, seed=1)]
    doc_tokens = torch.tensor([r[:24] for r in rows if len(r) >= 24][:64])  # [64, 24]: BOS + 23 tokens each
    with demo("04.3 where L0M0 fires"):
        values, prompt_ids, positions = top_activating_positions(model, 0, 0, doc_tokens, 5)
        toolkit = torch.tensor([t.activation for t in top_activating((0, 0), model, doc_tokens, k=5)])
        print(f"   max |your values - toolkit's| = {(values - toolkit).abs().max():.2e}")
        for v, b, p in zip(values.tolist(), prompt_ids.tolist(), positions.tolist()):
            print(f"   {v:5.2f}  ...{model.to_string(doc_tokens[b, max(1, p - 7):p + 1])!r}")

# %% [markdown]
# ## Where are the facts? Causal tracing
#
# ROME's recipe has three runs. (1) The **clean** run: P(answer) at the last position. (2) **Noised** runs: Gaussian
# noise (3 × the standard deviation of the embeddings) added to the subject's token embeddings, several samples; the
# model no longer knows which country it reads about, and P(answer) falls. (3) **Restored** runs: the noised runs
# again, with one hidden state (one layer, one position) set back to its clean value. Where restoring brings
# P(answer) back, that state carries what the model needs to know about the subject.
#
# ## Exercise 04.4: Noising the subject
#
# > **Difficulty** ★★☆ · **Importance** ★★★★☆ · about 10 minutes
#
# Run the prompt once per noise sample (`tokens.expand(samples, -1)`) with `noise[s]` added to the token embeddings
# (`hook_embed`, `[batch, pos, d_model]`) at `subject_positions` in run `s`, and return each run's probability of
# the answer at the last position. `minimech.analysis.find_subject_positions(model, tokens, "France")` finds the
# subject's tokens (a name can be several tokens).
#
# `noised_answer_probs(model, tokens, subject_positions, answer, noise)`: `tokens` `[1, pos]`, `answer` a token id,
# `noise` `[samples, n_subject, d_model]` → `[samples]`.

# %%
def noised_answer_probs(model, tokens: torch.Tensor, subject_positions: list, answer: int,
                        noise: torch.Tensor) -> torch.Tensor:
    """-> [samples]: P(answer) at the last position, noise[s] added to the subject's embeddings in run s."""
    # EXERCISE 04.4
    raise NotImplementedError("EXERCISE 04.4: a hook_embed hook adding noise at subject_positions; softmax at -1")


# %%
if MAIN:
    usable = known or facts  # facts the model gets right (a model that knows none: all of them, for the code's sake)
    fact = next((f for f in usable if f.relation == "capital"), usable[0])  # a capital the model gets right
    tokens = model.to_tokens(fact.prompt)  # [1, pos]
    str_tokens = model.to_str_tokens(tokens)
    answer = first_token(model, fact.answer)
    subject = find_subject_positions(model, tokens, fact.subject)
    std = 3 * model.W_E.std().item()  # ROME's noise scale
    noise = torch.randn(SAMPLES, len(subject), model.cfg.d_model, generator=torch.Generator().manual_seed(0)) * std
    clean_prob = model(tokens)[0, -1].softmax(-1)[answer].item()
    print(f"\n{fact.prompt!r} -> {fact.answer!r}: clean P = {clean_prob:.3f}; subject {fact.subject!r} at positions "
          f"{subject} of {str_tokens}")

# %% [markdown]
# Before running it: with the subject's embeddings drowned in noise three times their own size, how much of the clean
# P(answer) printed above will be left?

# %%
prediction_1 = None  # your guess: the mean P(answer) over the noised runs, e.g. 0.3

# %%
if MAIN:
    with demo("04.4 noising the subject"):
        noised = noised_answer_probs(model, tokens, subject, answer, noise)  # [SAMPLES]
        print(f"   noised: P = {noised.mean():.3f} (samples from {noised.min():.3f} to {noised.max():.3f}); "
              f"clean {clean_prob:.3f}")

# %% [markdown]
# Compare with your guess. If the noised P is close to zero, the model depends on *which* subject it reads, and
# the trace below has a wide range to recover; if it stays high, the answer is guessable without the subject (a
# relation with few possible answers), and a trace would show little.
#
# ## Exercise 04.5: Restoring one state
#
# > **Difficulty** ★★☆ · **Importance** ★★★★★ · about 15 minutes
#
# One cell of the causal trace. Cache the clean run's state, then run the noised batch with two hooks: the noise,
# and one that writes the clean state back at one position. The kinds, as in ROME: `"resid"` restores the output of
# layer `l` (`blocks.{l}.hook_resid_post`), `"mlp"` the MLP's output (`hook_mlp_out`), `"attn"` the attention
# output (`hook_attn_out`); `KIND_HOOKS` above maps them. Return the mean of P(answer) over the samples.
#
# `restored_answer_prob(model, tokens, subject_positions, answer, noise, kind, layer, pos)` → a float.

# %%
def restored_answer_prob(model, tokens: torch.Tensor, subject_positions: list, answer: int, noise: torch.Tensor,
                         kind: str, layer: int, pos: int) -> float:
    """Mean P(answer) over the noised runs with one clean state (kind, layer, pos) restored."""
    # EXERCISE 04.5
    raise NotImplementedError("EXERCISE 04.5: noise hook + a hook writing the clean state at (layer, pos)")


# %%
if MAIN:
    last = tokens.shape[1] - 1
    with demo("04.5 restoring one state"):
        for kind, layer, pos in [("mlp", 0, subject[-1]), ("mlp", 0, last), ("resid", 0, subject[-1]),
                                 ("attn", model.cfg.n_layers - 1, last)]:
            p = restored_answer_prob(model, tokens, subject, answer, noise, kind, layer, pos)
            print(f"   restore {kind:5} of layer {layer} at position {pos} ({str_tokens[pos]!r}): P = {p:.3f}")

# %% [markdown]
# ## Exercise 04.6: The whole trace
#
# > **Difficulty** ★★★ · **Importance** ★★★★☆ · about 15 minutes
#
# Now every layer and every position. ROME restores a **window** of layers around `l` for MLPs and attention (10 in
# GPT-2 XL), because one MLP's output alone is a small part of the stream: for window `w` and kind `"mlp"` or
# `"attn"`, restore layers `max(0, l - w // 2)` up to `l + ceil(w / 2)` (exclusive, and clipped to the model), all
# at the same position. With `w = 1` that is layer `l` alone. The residual stream is **never** windowed: its state
# after layer `l` already contains every earlier layer's output, so `"resid"` restores layer `l` alone whatever the
# window. One forward per cell is fine; restoring every position at once in a batch of `pos × samples` rows is how
# `minimech.analysis.causal_trace` does it.
#
# `causal_trace_grid(model, tokens, subject_positions, answer, noise, kind, window=1)` → `[n_layers, pos]`, the
# mean P(answer) of each restored run.

# %%
def causal_trace_grid(model, tokens: torch.Tensor, subject_positions: list, answer: int, noise: torch.Tensor,
                      kind: str, window: int = 1) -> torch.Tensor:
    """-> [n_layers, pos]: mean P(answer) with the clean state restored at each (layer, position)."""
    # EXERCISE 04.6
    raise NotImplementedError("EXERCISE 04.6: restored P(answer) for every layer (window: mlp/attn) and position")


# %% [markdown]
# Before the trace: restoring which MLP brings the answer back most, and at which token: one of the subject's tokens,
# the last token, or somewhere else? (ROME's answer for GPT-2 XL: early-middle MLPs at the subject's last token.)

# %%
prediction_2 = None  # your guess: the MLP layer and the token where restoring works best, e.g. (1, "subject's last")

# %%
def where(pos: int, subject_positions: list, n_pos: int) -> str:
    """A position in words: the subject's last token, another subject token, the last token, or elsewhere."""
    if pos == subject_positions[-1]:
        return "the subject's last token"
    if pos in subject_positions:
        return "another subject token"
    return "the last token" if pos == n_pos - 1 else "a token after the subject" if pos > subject_positions[-1] \
        else "a token before the subject"


if MAIN:
    traced = ("resid", "mlp") if LARGE else tuple(KIND_HOOKS)  # GPT-2: attention's trace left out (a minute more)
    with demo(f"04.6 the causal trace: {', '.join(traced)}"):
        # GPT-2: a minute or so per trace in your loop: the bar counts the model's runs (one or two a layer and token)
        with forward_progress(model, desc="04.6 your traces' runs", disable=not LARGE):
            grids = {kind: causal_trace_grid(model, tokens, subject, answer, noise, kind) for kind in traced}
        with forward_progress(model, desc="04.6 causal_trace's runs", disable=not LARGE):
            toolkit = causal_trace(model, tokens, answer, fact.subject, noise=std, samples=SAMPLES, seed=0,
                                   kinds=traced)
        print(f"   max |yours - causal_trace| = {max((grids[k] - toolkit.scores[k]).abs().max() for k in grids):.2e}")
        for kind, grid in grids.items():
            layer, pos = divmod(int(grid.argmax()), grid.shape[1])
            print(f"   {kind:5}: peak P = {grid.max():.3f} at layer {layer}, position {pos} ({str_tokens[pos]!r}, "
                  f"{where(pos, subject, len(str_tokens))})")
        show(plot.trace(grids, str_tokens, OUT / "04_causal_trace.png", subject_positions=subject,
                        title=f"{fact.prompt!r} -> {fact.answer!r}"))

# %% [markdown]
# Read the three panels against your guess. In the residual stream the answer can come back at the subject only up
# to the layer whose attention moves the subject's information to the last token; after that, only the last token's
# stream restores it. The MLP and attention panels say which components carry it. But a bright cell at the subject
# is not yet evidence of a *fact*: the next section asks what the same restoration does when nothing is looked up.
#
# ## The control: restoring a token's identity
#
# Noise a token, restore the clean MLP output at that token, and the network learns again *which token it was*, for
# any task that needs that token. A fair comparison noises a token whose identity the answer needs but which is not
# a fact's subject: in an IOI prompt ("When Mary and John went to the store, John gave a drink to"), the indirect
# object's name. The model must copy that name to answer; no fact about Mary is looked up. If restoring an MLP at
# the noised name recovers as much as restoring it at the fact's subject, the fact's trace there shows identity
# restoration, not recall.
#
# Probabilities are not comparable across prompts (the clean P differs), so compare the **fraction of the lost
# probability a restoration recovers**: (P_restored − P_noised) / (P_clean − P_noised), 1 for a full recovery, 0
# for none.
#
# ## Exercise 04.7: The fraction recovered
#
# > **Difficulty** ★☆☆ · **Importance** ★★★★☆ · about 10 minutes
#
# Use your 04.4 and 04.6: the clean P(answer) (one run without noise), the noised P(answer) (the mean over your
# 04.4's samples), and your 04.6's grid; return (grid − P_noised) / (P_clean − P_noised).
#
# `recovered_fraction_grid(model, tokens, noised_positions, answer, noise, kind, window=1)` → `[n_layers, pos]`.

# %%
def recovered_fraction_grid(model, tokens: torch.Tensor, noised_positions: list, answer: int, noise: torch.Tensor,
                            kind: str, window: int = 1) -> torch.Tensor:
    """-> [n_layers, pos]: (P_restored - P_noised) / (P_clean - P_noised) from your 04.4 and 04.6."""
    # EXERCISE 04.7
    raise NotImplementedError("EXERCISE 04.7: clean P, noised P (your 04.4, mean), your 04.6 grid; normalise")


# %%
if MAIN:
    # An IOI prompt the model gets right, with the indirect object's name noised (not a subject of any fact).
    ioi = ioi_dataset(model, n=8)
    right = [i for i in range(len(ioi)) if int(model(ioi.tokens[i:i + 1])[0, -1].argmax()) == int(ioi.io_tokens[i])]
    pick = right[0] if right else 0
    ioi_tokens, io_pos = ioi.tokens[pick:pick + 1], [int(ioi.io_pos[pick])]
    ioi_answer, ioi_str = int(ioi.io_tokens[pick]), model.to_str_tokens(ioi.tokens[pick])
    ioi_noise = torch.randn(SAMPLES, 1, model.cfg.d_model, generator=torch.Generator().manual_seed(1)) * std
    print(f"\n   control prompt {ioi.prompts[pick]!r}: the name {ioi_str[io_pos[0]]!r} at position {io_pos[0]} noised")

# %% [markdown]
# Before measuring: at its best, will restoring one MLP at the noised IOI name recover a larger or a smaller fraction
# than the best MLP restoration at the fact's subject?

# %%
prediction_3 = None  # your guess: the best MLP fraction for the fact and for the IOI name, e.g. (0.4, 0.1)

# %%
if MAIN:
    with demo("04.7 the fact's trace beside the control's"), \
            forward_progress(model, desc="04.7 the control's runs", disable=not LARGE):  # GPT-2: seconds
        if not LARGE:
            fact_frac = recovered_fraction_grid(model, tokens, subject, answer, noise, "mlp")  # [n_layers, pos]
            control_frac = recovered_fraction_grid(model, ioi_tokens, io_pos, ioi_answer, ioi_noise, "mlp")
        else:  # GPT-2: the numbers your 04.7 would give, without its minutes of runs. The fact's from your 04.6 grid
            #    and 04.4's noised runs; the control's 12 x 17 cells by causal_trace, whose draws for seed 1 are
            #    ioi_noise (its runs start at the restored layer, batched)
            fact_frac = (grids["mlp"] - noised.mean()) / (clean_prob - noised.mean())  # [n_layers, pos]
            control = causal_trace(model, ioi_tokens, ioi_answer, ioi_tokens[0, io_pos].tolist(), noise=std,
                                   samples=SAMPLES, seed=1, kinds=("mlp",))
            control_frac = (control.scores["mlp"] - control.corrupt_prob) / (control.clean_prob - control.corrupt_prob)
        at_subject = fact_frac[:, subject[-1]]  # [n_layers]: MLP l restored at the subject's last token
        at_name = control_frac[:, io_pos[0]]  # [n_layers]: MLP l restored at the noised name
        for layer in range(model.cfg.n_layers):
            print(f"   MLP {layer}: fact, at the subject's last token {at_subject[layer]:+.2f}; control, at the noised "
                  f"name {at_name[layer]:+.2f}; fact, at the last token {fact_frac[layer, -1]:+.2f}")
        # The same comparison for each layer's attention output: a token's identity can come back through a head
        # that attends to its own position as well as through an MLP. (GPT-2: left out, two more traces.)
        if not LARGE:
            attn_fact = recovered_fraction_grid(model, tokens, subject, answer, noise, "attn")  # [n_layers, pos]
            attn_control = recovered_fraction_grid(model, ioi_tokens, io_pos, ioi_answer, ioi_noise, "attn")
            for layer in range(model.cfg.n_layers):
                print(f"   attention {layer}: fact, at the subject's last token {attn_fact[layer, subject[-1]]:+.2f}; "
                      f"control, at the noised name {attn_control[layer, io_pos[0]]:+.2f}; fact, at the last token "
                      f"{attn_fact[layer, -1]:+.2f}")
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
        for ax, grid, labels, marked, title in [
                (axes[0], fact_frac, str_tokens, subject, f"fact: {fact.prompt!r}"),
                (axes[1], control_frac, ioi_str, io_pos, "control: an IOI name noised")]:
            image = ax.imshow(grid.T.numpy(), cmap="Purples", vmin=0, vmax=1, aspect="auto")
            ax.set_yticks(range(len(labels)), [f"{t!r}*" if p in marked else repr(t) for p, t in enumerate(labels)],
                          fontsize=7)
            ax.set_xticks(range(model.cfg.n_layers))
            ax.set(xlabel="MLP restored (layer)", ylabel="position restored (token; * noised)", title=title)
        # the label in two lines: in one it is longer than the bar and its ends fall outside the figure
        fig.colorbar(image, ax=axes, label="fraction of the lost P(answer) recovered\n(0 = noised, 1 = clean)")
        show(fig, OUT / "04_trace_and_control.png")

# %% [markdown]
# Compare the two columns layer by layer, for the MLPs and then for attention. Where the control recovers as much as
# the fact (or more), restoring that component at the noised token gives back the token, not a fact: it cannot count
# as the place of recall. What is left is
# the difference: an MLP whose restoration at the subject recovers clearly more than the same restoration at a
# noised name is doing something for facts that it does not do for any token. GPT-2's answer in ROME is a band of
# early-middle MLPs at the subject's last token; a small model may have no such band, or have it at the last token
# instead. The toolkit's `causal_trace(...)` with its `indirect_effect` is how you would run traces in practice.
#
# ## Is that true of every fact?
#
# One prompt proves little. Trace many held-out facts the model gets right and count where the MLP trace peaks.

# %% [markdown]
# Before the survey: on what share of facts will the MLP trace peak at the subject's last token?

# %%
prediction_4 = None  # your guess: the share of facts whose MLP peak is at the subject's last token, e.g. 0.5

# %%
if MAIN:
    relations = sorted({f.relation for f in usable})
    surveyed = 3 if LARGE else 12
    survey = []  # up to 12 facts (GPT-2: 3), spread over the relations and the subjects
    for relation in relations:
        some = [f for f in usable if f.relation == relation]
        survey += some[:: max(1, len(some) // max(1, surveyed // len(relations)))][: max(1, surveyed // len(relations))]
    peaks = {}
    # GPT-2: seconds a fact; the bar counts the model's runs (a batched one per layer, and two more, per fact)
    with forward_progress(model, desc=f"tracing {len(survey)} facts", disable=not LARGE):
        for f in survey:
            toks = model.to_tokens(f.prompt)
            trace = causal_trace(model, toks, first_token(model, f.answer), f.subject, samples=SAMPLES if LARGE else 5,
                                 kinds=("mlp",))
            layer, pos = trace.peak("mlp")
            key = (layer, where(pos, trace.subject_positions, toks.shape[1]))
            peaks[key] = peaks.get(key, 0) + 1
    print(f"\n   MLP trace peaks over {len(survey)} facts ({len({f.relation for f in survey})} relations): "
          + ", ".join(f"MLP {l} at {w}: {n}" for (l, w), n in sorted(peaks.items())))

# %% [markdown]
# Compare the counts with your guess, and with the control above: a peak at a subject token in a layer where the
# control recovers as much is identity restoration; a peak at the last token is the answer being written where it
# is read. Which relations peak where is printed in the survey's facts (`survey`); continents, with only a handful
# of possible answers, need less from the subject than capitals do.
#
# ## Which memories?
#
# Which neurons carry what the trace found? A first cut: the neurons whose activation the noise changes most, read
# at one position, their values through the unembedding, and the contexts where they fire most.
#
# ## Exercise 04.8: The neurons the noise moves
#
# > **Difficulty** ★★☆ · **Importance** ★★★☆☆ · about 10 minutes
#
# Cache `blocks.{layer}.mlp.hook_post` on a clean run and on the noised runs (the noise added as in 04.4), read both
# at the one position `pos`, and return the `k` neurons whose clean activation differs most (in absolute value) from
# the mean over the noised runs, largest change first, with the two activations at `pos`.
#
# `noise_sensitive_neurons(model, tokens, noised_positions, noise, layer, pos, k)` →
# `(indices [k], clean activations [k], mean noised activations [k])`.

# %%
def noise_sensitive_neurons(model, tokens: torch.Tensor, noised_positions: list, noise: torch.Tensor, layer: int,
                            pos: int, k: int):
    """-> (indices [k], clean [k], noised mean [k]) at position pos, by |clean - noised mean|, largest first."""
    # EXERCISE 04.8
    raise NotImplementedError("EXERCISE 04.8: hook_post at pos, clean and noised (mean over samples); top-k |change|")


# %%
if MAIN:
    with demo("04.8 the neurons the noise moves most"):
        mlp_layer = int(grids["mlp"][:, subject[-1]].argmax())  # the MLP whose restoration at the subject helps most
        at = subject[-1]
        indices, clean_acts, noised_acts = noise_sensitive_neurons(model, tokens, subject, noise, mlp_layer, at, 2)
        print(f"   MLP {mlp_layer} at position {at} ({str_tokens[at]!r}), the subject's last token; both activations "
              "are read there")
        for index, c, n in zip(indices.tolist(), clean_acts.tolist(), noised_acts.tolist()):
            memory = model.blocks[mlp_layer].mlp.memories[index]
            found, _ = search_corpus(memory, model, n_documents=40 if LARGE else 150, k=3)
            print(f"\n   {memory.name}: activation {c:+.2f} clean, {n:+.2f} noised (mean); promotes "
                  f"{[t for t, _ in memory.top_tokens(6)]}")
            for hit in found:
                print(f"      fires {hit.activation:.2f} at ...{hit.context[-50:]!r}")

# %% [markdown]
# Expect a mixed picture: the neurons that move most are rarely "France neurons". Their values promote a handful of
# unrelated tokens, and they fire in several kinds of text. An MLP at the subject writes to the subject's position,
# not to the answer's: its effect on the answer is *indirect*, through the heads that later read that position, and
# it is spread over many neurons. Superposition (lesson 05) is the usual explanation for neurons that mean several
# things at once. (Try `pos = -1`, the last token, to see what the noise does to the neurons there.)
#
# ## With GPT-2's own weights
#
# `python lesson.py --model gpt2` traces the same held-out prompts on GPT-2 small. ROME's figures are for GPT-2 XL
# (and GPT-J), where MLP restoration peaks at the subject's last token in early-middle layers; on GPT-2 small the
# same trend is reported, weaker. The cell below prints where your trace puts each fact's MLP peak.

# %%
if MAIN:
    with demo("GPT-2 small against ROME's picture"):
        if not minimech.loading.is_gpt2_small(model):  # known by its weights, not by the name given
            print(f"   skipped: {minimech.loading.identify_gpt2(model).reason}. Run with --model gpt2 once its weights "
                  "are here (minimech fetch gpt2)")
        else:
            with forward_progress(model, desc="GPT-2 traces: your loop's runs"):  # minutes: show each run
                for f in usable[:2]:  # two facts: a window-5 trace of one takes your loop a minute or more
                    toks = model.to_tokens(f.prompt)
                    sp = find_subject_positions(model, toks, f.subject)
                    draws = torch.randn(3, len(sp), model.cfg.d_model, generator=torch.Generator().manual_seed(0))
                    grid = causal_trace_grid(model, toks, sp, first_token(model, f.answer), draws * std, "mlp",
                                             window=5)
                    layer, pos = divmod(int(grid.argmax()), grid.shape[1])
                    print(f"   {f.prompt!r}: MLP peak at layer {layer}, {where(pos, sp, toks.shape[1])}")

# %% [markdown]
# ## What you found
#
# An MLP neuron is a key-value pair you can read: its value through the unembedding, its key through the contexts
# that make it fire. Causal tracing finds where a clean state is *sufficient* to bring an answer back, and the
# control tells you how much of that is only the token's identity coming back. The README's summary (read it now)
# gives the figures measured on the shipped model.

if MAIN:
    print(f"\nfigures written to {OUT.resolve()}")
