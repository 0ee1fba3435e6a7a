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
# You will do both on minimech's default model, **mini-4l** (4 layers, d_mlp 256, trained on minimech's corpus, whose
# fact documents state capitals, languages and continents of 60 countries), on prompts phrased in ways it never saw
# in training. The finding resembles ROME's picture of GPT-2, with instructive differences.
#
# **Working on it**: `minimech start 04`, fill in each `# EXERCISE 04.k`, `python lesson.py` (figures go to
# `./minimech-out/`), `minimech check 04`, `minimech hint 04.k`. `--model gpt2` runs it on GPT-2 small when its
# weights are on this machine.

# %%
import argparse
from contextlib import contextmanager
from pathlib import Path

import torch

import minimech
from minimech import plot
from minimech.analysis import causal_trace, find_subject_positions
from minimech.analysis.memories import memory_logits, search_corpus, top_activating
from minimech.training.corpus import Corpus

MAIN = __name__ == "__main__"
DEFAULT_MODEL = "mini-4l"
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


def first_token(model, text: str) -> int:
    return int(model.to_tokens(text, prepend_bos=False)[0, 0])


def top_token(model, prompt: str) -> int:
    """The model's most likely next token after prompt."""
    return int(model(model.to_tokens(prompt))[0, -1].argmax())


if MAIN:
    args = parse_args()
    torch.set_grad_enabled(False)
    OUT.mkdir(exist_ok=True)
    model = minimech.load(args.model)
    print(model)
    facts = Corpus(seed=0).fact_eval("heldout")  # held-out paraphrases: phrasings never seen in training
    known = [f for f in facts if top_token(model, f.prompt) == first_token(model, f.answer)]
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
# `(values [k], prompt indices [k], positions [k])`.

# %%
def top_activating_positions(model, layer: int, index: int, tokens: torch.Tensor, k: int):
    """-> (values [k], prompt indices [k], positions [k]): the neuron's k highest activations, never at position 0."""
    # EXERCISE 04.3
    raise NotImplementedError("EXERCISE 04.3: hook_post[..., index] over tokens, position 0 masked, topk, unravel")


# %%
if MAIN:
    tok = model.tokenizer
    rows = [[tok.bos_id] + tok.encode(d) for d in Corpus(seed=0).training_documents(200, seed=1)]
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
# subject's tokens (a country can be several tokens: 'G', 'ree', 'ce').
#
# `noised_answer_probs(model, tokens, subject_positions, answer, noise)`: `tokens` `[1, pos]`, `answer` a token id,
# `noise` `[samples, n_subject, d_model]` → `[samples]`.

# %%
def noised_answer_probs(model, tokens: torch.Tensor, subject_positions: list, answer: int,
                        noise: torch.Tensor) -> torch.Tensor:
    """-> [samples]: P(answer) at the last position, noise[s] added to the subject's embeddings in run s."""
    # EXERCISE 04.4
    raise NotImplementedError("EXERCISE 04.4: a hook_embed hook adding noise at subject_positions; softmax at -1")


# %% [markdown]
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


# %% [markdown]
# ## Exercise 04.6: The whole trace
#
# > **Difficulty** ★★★ · **Importance** ★★★★☆ · about 15 minutes
#
# Now every layer and every position. ROME restores a **window** of layers around `l` for MLPs and attention (10 in
# GPT-2 XL), because one MLP's output alone is a small part of the stream: for window `w`, restore layers
# `max(0, l - w // 2)` up to `l + ceil(w / 2)` (exclusive, and clipped to the model), all at the same position.
# With `w = 1` that is layer `l` alone. One forward per cell is fine; restoring every position at once in a batch
# of `pos × samples` rows is how `minimech.analysis.causal_trace` does it.
#
# `causal_trace_grid(model, tokens, subject_positions, answer, noise, kind, window=1)` → `[n_layers, pos]`, the
# mean P(answer) of each restored run.

# %%
def causal_trace_grid(model, tokens: torch.Tensor, subject_positions: list, answer: int, noise: torch.Tensor,
                      kind: str, window: int = 1) -> torch.Tensor:
    """-> [n_layers, pos]: mean P(answer) with the clean state restored at each (layer, position)."""
    # EXERCISE 04.6
    raise NotImplementedError("EXERCISE 04.6: restored P(answer) for every layer (with its window) and position")


# %%
if MAIN:
    usable = known or facts  # facts the model gets right (a model that knows none: all of them, for the code's sake)
    fact = next((f for f in usable if f.relation == "capital"), usable[0])  # a capital the model gets right
    tokens = model.to_tokens(fact.prompt)  # [1, pos]
    answer = first_token(model, fact.answer)
    subject = find_subject_positions(model, tokens, fact.subject)
    std = 3 * model.W_E.std().item()  # ROME's noise scale
    noise = torch.randn(10, len(subject), model.cfg.d_model, generator=torch.Generator().manual_seed(0)) * std
    clean_prob = model(tokens)[0, -1].softmax(-1)[answer].item()
    print(f"\n{fact.prompt!r} -> {fact.answer!r}: P = {clean_prob:.3f}; subject {fact.subject!r} at {subject}")
    with demo("04.4 noising the subject"):
        noised = noised_answer_probs(model, tokens, subject, answer, noise)  # [10]
        print(f"   noised: P = {noised.mean():.3f} (samples from {noised.min():.3f} to {noised.max():.3f})")
    last = tokens.shape[1] - 1
    with demo("04.5 restoring one state"):
        for kind, layer, pos in [("mlp", 0, subject[-1]), ("mlp", 0, last), ("resid", 0, subject[-1]),
                                 ("attn", 0, last)]:
            p = restored_answer_prob(model, tokens, subject, answer, noise, kind, layer, pos)
            print(f"   restore {kind:5} of layer {layer} at {model.to_str_tokens(tokens)[pos]!r:10}: P = {p:.3f}")
    with demo("04.6 the causal trace, every kind"):
        grids = {kind: causal_trace_grid(model, tokens, subject, answer, noise, kind) for kind in KIND_HOOKS}
        toolkit = causal_trace(model, tokens, answer, fact.subject, noise=std, samples=10, seed=0)
        print(f"   max |yours - causal_trace| = {max((grids[k] - toolkit.scores[k]).abs().max() for k in grids):.2e}")
        for kind, grid in grids.items():
            layer, pos = divmod(int(grid.argmax()), grid.shape[1])
            print(f"   {kind:5}: peak P = {grid.max():.3f} at layer {layer}, {model.to_str_tokens(tokens)[pos]!r}")
        path = plot.trace(grids, model.to_str_tokens(tokens), OUT / "04_causal_trace.png", subject_positions=subject,
                          title=f"{fact.prompt!r} -> {fact.answer!r}")
        print(f"   figure: {path}")

# %% [markdown]
# On mini-4l the answer comes back when the **MLP of layer 0 at the subject** is restored (P about 0.14 of 0.87 on
# this prompt, against 0.000 noised), not at the end: restoring MLP 0, or layer 0's attention, at the last token
# gives nothing (0.000). The whole residual stream at the subject after layer 0 does better (0.37), and still helps
# after layer 1 (0.22, in the figure) but not after layer 2: layer 2's attention is what reads the subject from its
# own position. No single attention layer at the last token restores much (0.03 at layer 3), but layers 2 and 3
# together do (0.30: try `causal_trace_grid(..., "attn", window=2)`). The picture: MLP 0 works on the subject at
# its own token, late attention carries the result to the last token, and the MLPs there (MLP 3 most) write most of
# the answer's logit.
#
# ## Is that true of every fact?
#
# One prompt proves little. Trace many held-out facts the model gets right and count where the MLP trace peaks.

# %%
if MAIN:
    survey = usable[:: max(1, len(usable) // 12)][:12]
    peaks = {}
    for f in survey:
        toks = model.to_tokens(f.prompt)
        trace = causal_trace(model, toks, first_token(model, f.answer), f.subject, samples=5, kinds=("mlp",))
        layer, pos = trace.peak("mlp")
        where = ("last token" if pos == toks.shape[1] - 1 else "subject's last token"
                 if pos == trace.subject_positions[-1] else "another token")
        peaks[(layer, where)] = peaks.get((layer, where), 0) + 1
    print(f"\n   MLP trace peaks over {len(survey)} facts: "
          + ", ".join(f"layer {l}, {w}: {n}" for (l, w), n in sorted(peaks.items())))

# %% [markdown]
# The survey is one phrasing, "X's capital city is", for 12 countries. On mini-4l ten of them peak in MLP 0 on the
# subject: at its last token for countries of one token (France, China, ...), often at an earlier token for longer
# ones ('ree' in 'G', 'ree', 'ce'; the cell counts those as "another token"), where no one restored MLP brings back much
# (at most 0.06). Two (Denmark, Zimbabwe) peak in MLP 3 at the last token, with almost nothing recovered anywhere.
# Over all 360 held-out facts: 205 peak in MLP 0 on a subject token, 140 in MLP 3 at the last token, 81 of those
# continents (the model card's 24 capitals and languages: 10 at the subject's last token, 7 elsewhere in layer 0).
# In ROME's GPT-2 XL traces the MLP effect peaks in early-middle layers at the **subject's last token**, and
# attention carries the result to the end later. mini-4l keeps that order in four layers: the lookup is in its very
# first MLP, and continents, with only six possible answers, are mostly settled at the end by its last MLP.
#
# ## Which memories?
#
# Which of MLP 0's 256 neurons do the work? A first cut: the neurons whose activation the noise changes most, their
# values through the unembedding, and the contexts where they fire most. The cell reads them at the subject's last
# token, where the trace says MLP 0 matters (try the last token, `-1`, too: the noise moves MLP 0's neurons about
# three times less there).

# %%
if MAIN:
    names = ["blocks.0.mlp.hook_post"]
    _, clean_cache = model.run_with_cache(tokens, names=names)

    def add_noise(embed, hook):
        embed = embed.clone()
        embed[:, subject] = embed[:, subject] + noise
        return embed

    with model.hooks([("hook_embed", add_noise)]):
        _, noised_cache = model.run_with_cache(tokens.expand(len(noise), -1), names=names)
    at = subject[-1]
    change = clean_cache[names[0]][0, at] - noised_cache[names[0]][:, at].mean(0)  # [d_mlp]
    for index in change.abs().topk(2).indices.tolist():
        memory = model.blocks[0].mlp.memories[index]
        found, _ = search_corpus(memory, model, n_documents=150, k=3)
        print(f"\n   {memory.name}: activation {clean_cache[names[0]][0, -1, index]:+.2f} clean, "
              f"{change[index]:+.2f} above the noised runs; promotes {[t for t, _ in memory.top_tokens(6)]}")
        for hit in found:
            print(f"      fires {hit.activation:.2f} at ...{hit.context[-50:]!r}")

# %% [markdown]
# Expect a mixed picture, at either position: the neurons that move most are not "France neurons". Their values
# promote a handful of unrelated tokens, and they fire in several kinds of text. MLP 0's contribution to the answer
# is *indirect* (at the subject it writes to another position than the answer's; MLPs 1 to 3 at the last token write
# the answer), and spread over many neurons: superposition (lesson 05) is the usual explanation for neurons that mean
# several things at once.
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
            for f in usable[:4]:
                toks = model.to_tokens(f.prompt)
                sp = find_subject_positions(model, toks, f.subject)
                draws = torch.randn(3, len(sp), model.cfg.d_model, generator=torch.Generator().manual_seed(0))
                grid = causal_trace_grid(model, toks, sp, first_token(model, f.answer), draws * std, "mlp", window=5)
                layer, pos = divmod(int(grid.argmax()), grid.shape[1])
                last = toks.shape[1] - 1
                where = "subject's last token" if pos == sp[-1] else "last token" if pos == last else "elsewhere"
                print(f"   {f.prompt!r}: MLP peak at layer {layer}, {where}")

# %% [markdown]
# ## What you found
#
# An MLP neuron is a key-value pair you can read: its value through the unembedding, its key through the contexts
# that make it fire. Causal tracing finds *where* a fact is needed; on mini-4l, as in GPT-2, that is an early MLP at
# the subject (MLP 0, before attention has moved anything), with late attention carrying the result to the end;
# continents are mostly settled at the end by MLP 3. Reading single neurons gives no clean "France → Paris" memory:
# the lookup is spread across many of them.
