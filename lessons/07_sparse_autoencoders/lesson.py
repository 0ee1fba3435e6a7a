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
# # Lesson 07 · Sparse autoencoders
#
# Lesson 05 ended with a toy model that stores more features than it has dimensions, at the price of neurons that
# mean several things at once. If a real model does the same, reading it neuron by neuron will keep failing. The
# way out that today's interpretability uses is **dictionary learning**: train a *sparse autoencoder* (SAE) on one
# layer's activations, with many more latent units than the layer has dimensions and a penalty that keeps only a
# few of them active per token. If the model stores sparse features in superposition, the SAE's units ("features")
# can line up with them (Bricken et al. 2023, *Towards Monosemanticity*; Templeton et al. 2024, *Scaling
# Monosemanticity*; Gao et al. 2024, *Scaling and evaluating sparse autoencoders*).
#
# You will write the SAE and its training step, train one on the middle MLP of minimech's default model in well
# under two minutes, judge it with the field's three numbers (L0, variance explained, CE loss recovered), read
# features by their top contexts and logit effects, compare them with neurons, and use one to intervene.
#
# **Working on it**: `minimech start 07`, fill in each `# EXERCISE 07.k`, `python lesson.py` (figures go to
# `./minimech-out/`), `minimech check 07`, `minimech hint 07.k`. Where a cell asks for a prediction, write it down
# before you run the measurement that follows.

# %%
import argparse
import math
import os
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch

import minimech
from minimech.notebook import forward_progress, show, tqdm
from minimech.sae import SAEConfig, SparseAutoencoder, collect_activations, corpus_rows, evaluate_sae
from minimech.sae.activations import corpus_kind
from minimech.sae.features import context_diversity, context_kind, document_tokens, top_contexts
from minimech.sae.interventions import splice
from minimech.sae.shipped import default_hook, sae_for

MAIN = __name__ == "__main__"
DEFAULT_MODEL = "story-4l"
OUT = Path("minimech-out")
# Training steps of your small SAE, held-out documents read for features and for the SAEs' metrics, and documents
# ablated in section 6. MINIMECH_QUICK=1 (the test suite's smoke run) takes 40 steps and fewer documents: the script
# runs top to bottom, but the SAE is then too young for the figures the lesson discusses.
QUICK = bool(os.environ.get("MINIMECH_QUICK"))
STEPS, TRAIN_DOCS, READ_DOCS, EVAL_DOCS, ABLATE_DOCS = (40, 300, 100, 30, 40) if QUICK else (200, 1000, 300, 100, 120)
HELD_OUT_DOCS, BATCH, CE_ROWS = 200, 1024, 64  # documents of held-out activations; SAE batch; rows for 07.5


def parse_args():
    parser = argparse.ArgumentParser(description="Lesson 07: sparse autoencoders", allow_abbrev=False)
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


if MAIN:
    args = parse_args()
    torch.manual_seed(0)
    OUT.mkdir(exist_ok=True)
    model = minimech.load(args.model)
    if model.cfg.d_model <= 256:
        torch.set_num_threads(1)  # a small model's matrices are tiny: a second thread costs more than it saves
    # GPT-2-sized (3,072 neurons, 6,144 features, 50,257-token logits): fewer documents, steps and rows, so that the
    # script runs in minutes on two cores with no step above a few GB (one SAE step on 256 tokens takes ~2 s there,
    # 300 documents' logits would be 5 GB), and a progress bar on every stretch longer than a few seconds
    LARGE = model.cfg.d_model > 256
    if LARGE:
        STEPS, BATCH, TRAIN_DOCS, HELD_OUT_DOCS, CE_ROWS = min(STEPS, 60), 128, 100, 50, 16
        READ_DOCS, EVAL_DOCS, ABLATE_DOCS = 32, min(EVAL_DOCS, 40), 12
    if model.cfg.attn_only:
        raise SystemExit(f"lesson 07 reads an MLP layer and {args.model} has none: use a model with MLPs "
                         f"(--model {DEFAULT_MODEL}, or gpt2)")
    HOOK = default_hook(model)  # the middle MLP's neurons, after the GELU: blocks.{n_layers // 2}.mlp.hook_post
    LAYER = int(HOOK.split(".")[1])
    print(model)
    print(f"the SAE will read {HOOK}: {model.cfg.d_mlp} neurons per token")

# %% [markdown]
# ## 1. The autoencoder
#
# One activation vector x (`[d_in]`: here the MLP's `d_mlp` neurons at one token) is rewritten as a sparse sum of
# `d_sae` learned directions, with `d_sae` several times `d_in`:
#
#     f     = ReLU((x - b_dec) @ W_enc + b_enc)      [d_sae]   feature activations, mostly zero
#     x_hat = f @ W_dec + b_dec                      [d_in]    the reconstruction
#
# `W_enc` is `[d_in, d_sae]` (column i reads feature i), `W_dec` is `[d_sae, d_in]` (row i is feature i's
# direction, kept at unit length), `b_dec` is subtracted before encoding and added back after decoding (the
# activations' typical offset, which no feature should have to explain), and `b_enc` is a threshold per feature.
# These are SAELens's names and shapes, so everything you write here reads SAELens checkpoints too.
#
# ### Exercise 07.1: the forward pass
#
# > **Difficulty** ★☆☆ · **Importance** ★★★★★ · about 5 minutes
#
# `sae_forward(x, W_enc, b_enc, W_dec, b_dec)` → `(f, x_hat)`. `x` may have any leading dimensions
# (`[batch, d_in]` or `[batch, pos, d_in]`).

# %%
def sae_forward(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor,
                b_dec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (f [..., d_sae], x_hat [..., d_in])"""
    # EXERCISE 07.1
    raise NotImplementedError("EXERCISE 07.1: f = ReLU((x - b_dec) @ W_enc + b_enc); x_hat = f @ W_dec + b_dec")


# %% [markdown]
# ### Exercise 07.2: the loss
#
# > **Difficulty** ★☆☆ · **Importance** ★★★★☆ · about 5 minutes
#
# Two terms, as SAELens computes them: the squared error **summed over `d_in`** and averaged over the tokens of the
# batch, plus `l1_coefficient` times the L1 norm of `f` (summed over features, averaged over tokens). The L1 term
# is what buys sparsity: every active feature costs its activation. (SAELens multiplies each activation by its
# decoder row's norm; with unit rows that factor is 1.)
#
# `sae_loss(x, f, x_hat, l1_coefficient)` → a scalar tensor (keep it differentiable).

# %%
def sae_loss(x: torch.Tensor, f: torch.Tensor, x_hat: torch.Tensor, l1_coefficient: float) -> torch.Tensor:
    """-> [] the reconstruction error plus l1_coefficient x the L1 norm of f, each averaged over tokens."""
    # EXERCISE 07.2
    raise NotImplementedError("EXERCISE 07.2: ((x_hat - x)^2 summed over d_in) + l1 * (|f| summed), mean over tokens")


# %%
if MAIN:
    with demo("07.1 and 07.2 on a random SAE"):
        d_in, d_sae = model.cfg.d_mlp, 2 * model.cfg.d_mlp
        W_dec = torch.randn(d_sae, d_in)
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        x = torch.relu(torch.randn(8, d_in))
        f, x_hat = sae_forward(x, W_dec.T.clone(), torch.zeros(d_sae), W_dec, torch.zeros(d_in))
        print(f"   f {list(f.shape)}, x_hat {list(x_hat.shape)}; active features per token {(f > 0).sum(-1).tolist()}")
        print(f"   loss with l1 0: {sae_loss(x, f, x_hat, 0.0):.2f}, with l1 1: {sae_loss(x, f, x_hat, 1.0):.2f}")

# %% [markdown]
# ## 2. Training
#
# Two details from *Towards Monosemanticity* keep the dictionary honest. The decoder rows stay at **unit norm**:
# otherwise the L1 penalty could be dodged by shrinking `f` and growing `W_dec` to match. And since only the
# direction of a row matters, the part of its gradient that points along the row (which would only change its
# length) is removed before the optimiser step: for each row `w` with gradient `g`, `g ← g - (g·w) w`.
#
# ### Exercise 07.3: one training step
#
# > **Difficulty** ★★☆ · **Importance** ★★★★☆ · about 15 minutes
#
# `params` holds `W_enc`, `b_enc`, `W_dec`, `b_dec` (leaf tensors that require gradients) and `optimizer` is a
# torch optimiser over them. Do one step: zero the gradients, the forward pass and loss (your 07.1 and 07.2), the
# backward pass, remove the radial part of `W_dec`'s gradient, `optimizer.step()`, then scale `W_dec`'s rows back
# to unit norm (without autograd: `with torch.no_grad():`). Return `params`.

# %%
def training_step(params: dict, optimizer, x: torch.Tensor, l1_coefficient: float) -> dict:
    """One optimiser step on a batch x [batch, d_in]; returns params (updated in place)."""
    # EXERCISE 07.3
    raise NotImplementedError("EXERCISE 07.3: zero_grad, loss, backward, project W_dec's grad, step, renormalise")


# %% [markdown]
# Now the data: the middle MLP's activations at every token of some of minimech's corpus (documents the model was
# trained on, generated afresh), <|endoftext|> positions left out. Activations are scaled so that their mean norm
# is sqrt(d_in), which makes one L1 coefficient fit any layer; the scale is undone at the end.

# %%
def train_small_sae(acts: torch.Tensor, d_sae: int, steps: int, batch: int = 1024, lr: float = 4e-3,
                    l1_coefficient: float = 3.0, seed: int = 0, progress: bool = False) -> dict:
    """Your training_step in a loop, with Adam; the L1 coefficient ramps up over the first 10 % of the steps;
    progress: a bar over the steps."""
    gen = torch.Generator().manual_seed(seed)
    d_in = acts.shape[1]
    scale = (d_in ** 0.5 / acts.norm(dim=-1).mean()).item()
    W_dec = torch.randn(d_sae, d_in, generator=gen)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    params = {"W_enc": W_dec.T.clone().requires_grad_(), "b_enc": torch.zeros(d_sae, requires_grad=True),
              "W_dec": W_dec.requires_grad_(), "b_dec": (acts[:4096].mean(0) * scale).requires_grad_()}
    optimizer = torch.optim.Adam(params.values(), lr=lr)
    for step in tqdm(range(steps), desc="training steps", disable=not progress, leave=False):
        x = acts[torch.randint(len(acts), (batch,), generator=gen)] * scale
        training_step(params, optimizer, x, l1_coefficient * min(1.0, (step + 1) / (0.1 * steps)))
        if step % (steps // 4) == 0 or step == steps - 1:
            with torch.no_grad():
                f, x_hat = sae_forward(x, *(params[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")))
                print(f"   step {step:4d}: squared error {(x_hat - x).pow(2).sum(-1).mean():8.2f}, "
                      f"active features per token {(f > 0).sum(-1).float().mean():6.1f}")
    with torch.no_grad():  # trained on x * scale: dividing both biases by scale makes it read raw activations
        return {"W_enc": params["W_enc"].detach(), "b_enc": params["b_enc"].detach() / scale,
                "W_dec": params["W_dec"].detach(), "b_dec": params["b_dec"].detach() / scale}


if MAIN:
    with forward_progress(model, desc="the activations' forwards", disable=not LARGE):  # GPT-2: a row at a time
        acts = collect_activations(model, HOOK, corpus_rows(model, TRAIN_DOCS, seed=1), batch_size=1 if LARGE else 64)
        held_out = collect_activations(model, HOOK, corpus_rows(model, HELD_OUT_DOCS, seed=2),
                                       batch_size=1 if LARGE else 64)
    print(f"\n{len(acts):,} training activations of {acts.shape[1]} neurons; {len(held_out):,} held out")
    mine = None
    with demo("07.3 training a small SAE with your training step"):
        start = time.perf_counter()
        mine = train_small_sae(acts, d_sae=2 * acts.shape[1], steps=STEPS, batch=BATCH, progress=LARGE)
        print(f"   trained in {time.perf_counter() - start:.0f} s")

# %% [markdown]
# ## 3. Is it any good?
#
# Three numbers summarise an SAE, and you need all three: any one alone is easy to game.
#
# * **L0**: the mean number of active features per token. Lower is sparser (easier to read).
# * **Variance explained**: 1 − E‖x − x̂‖² / (E‖x‖² − ‖E x‖²), over all tokens at once. The denominator is the
#   total variance of the activations around their mean.
# * **CE loss recovered**: replace the MLP's activations by the SAE's reconstruction during the forward pass and
#   measure the model's next-token loss. With `clean` the normal loss and `ablated` the loss with the activations
#   set to zero, the score is (ablated − spliced) / (ablated − clean): 1 if the reconstruction is as good as the real
#   thing for the model, 0 if it is no better than nothing. A reconstruction can explain most of the variance and
#   still miss what the model needs, which is why this one is measured through the model.
#
# These are SAELens's definitions (`sae_lens/evals.py`).
#
# **Prediction 1.** How many of your SAE's features will be active on a typical token (L0)? Its dictionary has
# twice as many features as the MLP has neurons. (A number.)

# %%
prediction_1 = None  # your guess: mean number of active features per token, e.g. 40

# %% [markdown]
# **Prediction 2.** What will its CE loss recovered be? (A number between 0 and 1.)

# %%
prediction_2 = None  # your guess: CE loss recovered of your small SAE, e.g. 0.7

# %% [markdown]
# ### Exercise 07.4: L0 and variance explained
#
# > **Difficulty** ★☆☆ · **Importance** ★★★★☆ · about 10 minutes
#
# `l0_and_variance_explained(x, f, x_hat)` → `(l0, variance_explained)`, two floats over every token (any leading
# dimensions: treat them all as tokens).

# %%
def l0_and_variance_explained(x: torch.Tensor, f: torch.Tensor, x_hat: torch.Tensor) -> tuple[float, float]:
    """-> (mean active features per token, 1 - E||x - x_hat||^2 / (E||x||^2 - ||E x||^2))"""
    # EXERCISE 07.4
    raise NotImplementedError("EXERCISE 07.4: count non-zeros per token (mean); pooled variance explained")


# %% [markdown]
# ### Exercise 07.5: CE loss recovered
#
# > **Difficulty** ★★☆ · **Importance** ★★★★★ · about 15 minutes
#
# `ce_loss_recovered(model, tokens, hook, reconstruct)` → `(clean, spliced, ablated, recovered)`, four floats.
# `reconstruct` maps activations `[batch, pos, d_in]` to their reconstruction. Position 0 of every row is the BOS
# (`<|endoftext|>`), which SAELens leaves out: keep its own activation in the spliced and ablated runs, and leave
# out the prediction made *at* it. `model.loss(logits, tokens, per_token=True)` gives `[batch, pos - 1]`, the
# loss of the prediction made at each position but the last; average its columns 1 onwards.

# %%
def ce_loss_recovered(model, tokens: torch.Tensor, hook: str, reconstruct) -> tuple[float, float, float, float]:
    """-> (clean loss, loss with the reconstruction spliced in, loss with the activations zeroed, recovered)"""
    # EXERCISE 07.5
    raise NotImplementedError("EXERCISE 07.5: three forwards (clean, spliced, zeroed) at every position but 0")


# %%
def as_sae(params: dict, hook: str) -> SparseAutoencoder:
    """Your SAE's tensors in minimech's SparseAutoencoder (the toolkit's own class), bound to the model."""
    d_sae, d_in = params["W_dec"].shape
    sae = SparseAutoencoder(SAEConfig(d_in, d_sae, hook), seed=None)
    with torch.no_grad():
        for name, value in params.items():
            getattr(sae, name).copy_(value)
    return sae.bind(model).eval()


def document_rows(model, n: int, length: int) -> torch.Tensor:
    """[<=n, length]: held-out documents, one per row (BOS first), those with at least `length` tokens, cut."""
    tokens, real = document_tokens(model, 4 * n)
    rows = tokens[real.sum(1) >= length][:n, :length]
    return rows


if MAIN and mine is not None:
    with demo("07.4 L0 and variance explained of your SAE (held-out activations)"):
        with torch.no_grad():
            f, x_hat = sae_forward(held_out, *(mine[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")))
        l0, explained = l0_and_variance_explained(held_out, f, x_hat)
        print(f"   L0 {l0:.1f} (your prediction: {prediction_1}); variance explained {explained:.3f}")
    with demo("07.5 CE loss recovered of your SAE"), forward_progress(model, desc="07.5", disable=not LARGE):
        rows = document_rows(model, CE_ROWS, 24)
        sae_mine = as_sae(mine, HOOK)
        clean, spliced, ablated, recovered = ce_loss_recovered(model, rows, HOOK, sae_mine)
        print(f"   clean {clean:.3f}, spliced {spliced:.3f}, zeroed {ablated:.3f}: recovered {recovered:.3f} "
              f"(your prediction: {prediction_2})")

# %% [markdown]
# Compare with your predictions. Is the SAE sparser or denser than you expected, and does a high variance explained
# go with a high CE loss recovered? Zeroing a middle MLP is a blunt baseline: note how far apart `clean` and
# `zeroed` are before you read much into the ratio.
#
# **In practice**: `minimech.sae.evaluate_sae(model, sae)` measures all of these (and dead and dense feature
# fractions and the feature density histogram) on held-out corpus text, and `minimech.sae.train_sae` trains with
# resampling of dead features and a faster training step. The SAE shipped beside the model was trained that way
# (`minimech sae train --ship`, its card is `sae.json`), on many more tokens.

# %%
if MAIN:
    shipped = None
    try:
        shipped = sae_for(model, HOOK)
    except minimech.MinimechError as e:
        print(f"\nno SAE shipped for this model ({e}); the rest of the lesson uses yours")
    eval_rows = corpus_rows(model, EVAL_DOCS, seed=3)
    for name, sae in (("yours", as_sae(mine, HOOK) if mine is not None else None), ("shipped", shipped)):
        if sae is not None:
            print(f"   {name:8} {sae.cfg.d_sae:5} features: {evaluate_sae(model, sae, eval_rows, progress=LARGE)}")
    sae = shipped if shipped is not None else as_sae(mine, HOOK) if mine is not None else None

# %% [markdown]
# ## 4. Reading features
#
# A feature is read the way lesson 04 read a neuron: by **where it fires** (its top-activating contexts in text the
# SAE never trained on) and by **what it writes** (its decoder direction, pushed through `W_out` into the residual
# stream and through the unembedding, as a direct effect on the logits).
#
# ### Exercise 07.6: a feature's activations
#
# > **Difficulty** ★☆☆ · **Importance** ★★★☆☆ · about 5 minutes
#
# `feature_activations(model, tokens, hook, W_enc, b_enc, b_dec, feature)` → `[batch, pos]`: run the model, read
# the hook's activations, and encode them; you need only one column of `W_enc`.

# %%
def feature_activations(model, tokens: torch.Tensor, hook: str, W_enc: torch.Tensor, b_enc: torch.Tensor,
                        b_dec: torch.Tensor, feature: int) -> torch.Tensor:
    """-> [batch, pos]: feature `feature`'s activation at every position of tokens [batch, pos]."""
    # EXERCISE 07.6
    raise NotImplementedError("EXERCISE 07.6: cache the hook, then ReLU((x - b_dec) @ W_enc[:, feature] + b_enc[f])")


# %% [markdown]
# ### Exercise 07.7: a feature's logit effect
#
# > **Difficulty** ★★☆ · **Importance** ★★★★☆ · about 10 minutes
#
# A feature of an MLP's `hook_post` writes `direction` (`[d_mlp]`, its decoder row) into the MLP's neurons; the
# MLP's `W_out` (`[d_mlp, d_model]`) carries that into the residual stream, and `model.W_U` reads the stream as
# logits. `feature_logit_effect(model, layer, direction)` → `[d_vocab]`, the direct effect per unit of activation
# (ignoring the final LayerNorm's scale, as lesson 04 did for memories).

# %%
def feature_logit_effect(model, layer: int, direction: torch.Tensor) -> torch.Tensor:
    """-> [d_vocab]: direction [d_mlp] through block `layer`'s W_out, then the unembedding."""
    # EXERCISE 07.7
    raise NotImplementedError("EXERCISE 07.7: direction @ W_out of that MLP @ model.W_U")


# %%
def all_feature_activations(model, sae, n_documents: int = READ_DOCS, batch_size: int | None = None):
    """(tokens [n, pos], features [n, pos, d_sae], neurons [n, pos, d_in], real [n, pos]) over held-out documents,
    batch_size documents per forward (None: all at once); real is False at the BOS and on the padding, where both
    activations are set to 0."""
    tokens, real = document_tokens(model, n_documents)
    real = real.clone()
    real[:, 0] = False
    features, neurons = [], []
    for rows in tqdm(range(0, len(tokens), batch_size or len(tokens)), desc="features", disable=batch_size is None,
                     leave=False):
        part = slice(rows, rows + (batch_size or len(tokens)))
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens[part], names=[sae.hook], stop_at_layer=LAYER + 1)
            mask = real[part, :, None]
            features.append(sae.encode(cache[sae.hook]) * mask)
            neurons.append(cache[sae.hook] * mask)
    return tokens, torch.cat(features), torch.cat(neurons), real


def kinds(tokens: torch.Tensor, acts: torch.Tensor, top: int = 20) -> Counter:
    """The kinds of context (minimech.sae.features.context_kind) at one unit's `top` highest positive activations."""
    values, flat = acts.flatten().topk(top)
    corpus = corpus_kind(model)  # the word lists of the corpus the model was trained on
    return Counter(context_kind(model.tokenizer.id_to_str(int(t)), corpus)
                   for t in tokens.flatten()[flat[values > 0]])


def effective(counter: Counter) -> float:
    """exp(entropy) of the kinds' shares: 1 for one kind, n for n kinds in equal shares."""
    n = sum(counter.values())
    return math.exp(-sum(c / n * math.log(c / n) for c in counter.values())) if n else 0.0


if MAIN and sae is not None:
    doc_tokens, doc_f, doc_neurons, doc_real = all_feature_activations(model, sae, READ_DOCS, 10 if LARGE else None)
    density = (doc_f > 0).sum((0, 1)) / doc_real.sum()  # [d_sae]: fraction of real tokens each feature fires on
    by_density = density.argsort(descending=True).tolist()
    candidates = [i for i in by_density if density[i] > 0.005][:150] or by_density[:150]
    chosen, seen = [], set()
    for i in candidates:  # frequent features whose top contexts are of one kind, one feature per kind
        counter = kinds(doc_tokens, doc_f[..., i])
        main_kind = counter.most_common(1)[0][0] if counter else None
        if counter and effective(counter) < 1.5 and main_kind not in seen:
            chosen.append(i)
            seen.add(main_kind)
        if len(chosen) == 4:
            break
    chosen += [i for i in candidates if i not in chosen][:4 - len(chosen)]  # too few of one kind: the most frequent
    with demo("07.6 and 07.7: four features, by their contexts and logit effects"), \
            forward_progress(model, desc="07.6 and the dashboard", disable=not LARGE):
        probe = doc_tokens[:8]
        yours = feature_activations(model, probe, HOOK, sae.W_enc.detach(), sae.b_enc.detach(), sae.b_dec.detach(),
                                    chosen[0])
        toolkit = sae.features[chosen[0]].activation(model.run_with_cache(probe, names=[HOOK])[1])
        print(f"   07.6: max |yours - Feature.activation| = {(yours - toolkit).abs().max():.2e}")
        for i in chosen:
            effect = feature_logit_effect(model, LAYER, sae.W_dec[i].detach())  # [d_vocab]
            promoted = [model.tokenizer.id_to_str(t) for t in effect.topk(6).indices.tolist()]
            print(f"\n   feature {i}: fires on {density[i]:.1%} of tokens; promotes {promoted}")
            for context in top_contexts(model, doc_tokens, doc_f[..., i], 5):
                print(f"      {context.activation:6.2f}  {context.marked(50)!r}")
        path = show(sae.features[chosen[0]].dashboard(OUT / "07_feature_dashboard.png", n_documents=READ_DOCS))
        print(f"\n   a dashboard (histogram, contexts, logit effects): {path}")

# %% [markdown]
# Name each of the four features in the cell below, from its contexts first and its logit effect second. A good
# name predicts where the feature fires on text you have not looked at yet: try it on a sentence of your own with
# `feature_activations`.

# %%
my_feature_names = {}  # e.g. {123: "the object slot after 'gave the'"}

# %% [markdown]
# ## 5. A neuron and a feature
#
# How many *kinds* of context make a unit fire? Take its 20 strongest activations on held-out text and classify
# each by the token where it fires: a word class of the corpus (name, country, capital, place, object, ...) when
# the token is such a word, else the token itself (`' to'`, `','`). The **effective number of kinds** is
# exp(entropy) of the kinds' shares: 1 for a unit that fires on one kind only, n for n kinds in equal shares.
# (`minimech.sae.features.context_diversity` computes it for a Feature or a Memory.)
#
# **Prediction 3.** Over the whole layer, which has the lower median effective number of kinds: the MLP's
# neurons, or the SAE's features? And by how much? (neurons / features, and a guess of both medians.)

# %%
prediction_3 = None  # your guess: e.g. "features: 1.5 against 3 for the neurons"

# %%
if MAIN and sae is not None:
    alive = [i for i in range(sae.cfg.d_sae) if doc_f[..., i].max() > 0]
    feature_kinds = torch.tensor([effective(kinds(doc_tokens, doc_f[..., i]))
                                  for i in tqdm(alive, desc="features' kinds", disable=not LARGE, leave=False)])
    neuron_kinds = torch.tensor([effective(kinds(doc_tokens, doc_neurons[..., j]))
                                 for j in tqdm(range(model.cfg.d_mlp), desc="neurons' kinds", disable=not LARGE,
                                               leave=False) if doc_neurons[..., j].max() > 0])
    print(f"\nmedian effective kinds of context: features {feature_kinds.median():.2f} ({len(alive)} that fire), "
          f"neurons {neuron_kinds.median():.2f} ({len(neuron_kinds)}); your prediction: {prediction_3}")
    print(f"   units with a single kind: features {(feature_kinds < 1.01).float().mean():.0%}, "
          f"neurons {(neuron_kinds < 1.01).float().mean():.0%}")
    if chosen:  # (GPT-2: each reads its documents again, a forward of some seconds)
        feature = sae.features[chosen[0]]
        neuron = int(sae.W_dec[chosen[0]].abs().argmax())  # the neuron that carries most of its direction
        print(f"   {context_diversity(feature, model, n_documents=READ_DOCS)}")
        print(f"   {context_diversity(model.blocks[LAYER].mlp.memories[neuron], n_documents=READ_DOCS)} (the neuron "
              f"carrying most of feature {chosen[0]}'s decoder direction)")

# %% [markdown]
# Look at the neuron's contexts (`top_contexts(model, doc_tokens, doc_neurons[..., neuron], 20)`) next to the
# feature's. The measure is crude: a "kind" is one token class, so a neuron that fires on `' the'` in two different
# constructions counts once, and a feature for "the second name of a pair" counts as the kind "name". Decide for
# yourself whether the numbers above agree with what you read.
#
# ## 6. Intervening with a feature
#
# A feature is useful only if the model uses it. To test that, remove it during the forward pass and leave
# everything else as it was: encode the activation, set the feature to zero, decode, and **add back the SAE's
# error** x − x̂, so that the only change to the activation is −f_i · W_dec[i]. Without the error term you would also
# be replacing the activation by its reconstruction everywhere, and measure the SAE's imperfection instead.
#
# ### Exercise 07.8: ablating a feature
#
# > **Difficulty** ★★☆ · **Importance** ★★★★★ · about 15 minutes
#
# `ablate_feature(model, tokens, hook, W_enc, b_enc, W_dec, b_dec, feature)` → logits `[batch, pos, d_vocab]` of a
# forward in which, at `hook`, every position's activation is replaced by decode(f with feature set to 0) + (x −
# decode(f)).

# %%
def ablate_feature(model, tokens: torch.Tensor, hook: str, W_enc: torch.Tensor, b_enc: torch.Tensor,
                   W_dec: torch.Tensor, b_dec: torch.Tensor, feature: int) -> torch.Tensor:
    """-> [batch, pos, d_vocab]: logits with `feature` removed at `hook` (the SAE's error term kept)."""
    # EXERCISE 07.8
    raise NotImplementedError("EXERCISE 07.8: a hook: encode, zero the feature, decode, add the error x - x_hat")


# %% [markdown]
# Which feature? The one whose removal, by a first-order estimate, would hurt the model's own predictions most
# where it fires. Splice the SAE in with the error term (the forward is unchanged), make the feature activations f a
# leaf tensor, and backpropagate the sum of log p(top token) over all positions: f_i · ∂/∂f_i is then the
# first-order change when feature i is set to zero at that position, through every later layer (attribution
# patching, as Marks et al. 2024 use it to find features). The next cell averages it over each frequent feature's
# firing positions, takes the largest, and shows where that feature fires and what it promotes.

# %%
def removal_estimates(model, sae, tokens: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """[batch, pos, d_sae]: f_i x d(sum of log p(top token))/d f_i, the first-order fall in the model's top-token
    log-probabilities if feature i were removed at that position (0 at positions where real is False)."""
    _, cache = model.run_with_cache(tokens, names=[sae.hook])
    x = cache[sae.hook]
    with torch.no_grad():
        f0 = sae.encode(x)
        error = x - sae.decode(f0)
    f = f0.clone().requires_grad_()
    with model.hooks([(sae.hook, lambda act, hook: sae.decode(f) + error)]):
        log_probs = model(tokens).log_softmax(-1)  # [batch, pos, d_vocab]
    top = log_probs.detach().argmax(-1, keepdim=True)
    (grad,) = torch.autograd.grad((log_probs.gather(-1, top)[..., 0] * real).sum(), f)  # the model's .grad untouched
    return (f * grad).detach() * real[..., None]


if MAIN and sae is not None:
    rows = slice(0, ABLATE_DOCS)
    # GPT-2: 3 documents per backward pass (12 documents' logits, their gradients and every layer's activations
    # kept for the backward would take several GB at once)
    step = 3 if LARGE else ABLATE_DOCS
    estimate = torch.cat([removal_estimates(model, sae, doc_tokens[i:i + step], doc_real[i:i + step])
                          for i in tqdm(range(0, ABLATE_DOCS, step), desc="estimates", disable=not LARGE,
                                        leave=False)])  # [<=120, pos, d_sae]
    fires = doc_f[rows] > 0
    score = estimate.sum((0, 1)) / fires.sum((0, 1)).clamp_min(1)  # mean over firing positions
    score[density < min(0.01, float(density.max()))] = -float("inf")  # frequent enough to measure
    target = int(score.argmax())
    print(f"\nfeature {target}: fires on {density[target]:.1%} of tokens; removing it should lower the log-probability "
          f"of the model's top token by about {score[target]:.3f} nats where it fires (first order); promotes "
          f"{[t for t, _ in sae.features[target].top_tokens(6)]}")
    for context in top_contexts(model, doc_tokens, doc_f[..., target], 4):
        print(f"   {context.activation:6.2f}  {context.marked(50)!r}")

# %% [markdown]
# **Prediction 4.** Ablate that feature for real. At the positions where it fires, how much will the log-probability
# of the model's original top token fall, on average (in nats): more or less than the first-order estimate? And at
# positions where it does not fire? (Two numbers.)

# %%
prediction_4 = None  # your guess: e.g. "1.5 nats where it fires, 0.1 elsewhere"

# %%
if MAIN and sae is not None:
    with demo("07.8 ablating the feature"), forward_progress(model, desc="07.8", disable=not LARGE):
        rows = doc_tokens[:ABLATE_DOCS]
        with torch.no_grad():
            clean = model(rows).log_softmax(-1)  # [120, pos, d_vocab]
        ablated = ablate_feature(model, rows, HOOK, sae.W_enc.detach(), sae.b_enc.detach(), sae.W_dec.detach(),
                                 sae.b_dec.detach(), target).log_softmax(-1)
        top = clean.argmax(-1, keepdim=True)  # [n, pos, 1]
        drop = (clean.gather(-1, top) - ablated.gather(-1, top))[..., 0]  # [n, pos]
        here = doc_f[:len(rows), :, target] > 0
        print(f"   log-prob of the top token falls by {drop[here].mean():.3f} nats where the feature fires "
              f"({int(here.sum())} positions) and {drop[doc_real[:len(rows)] & ~here].mean():.3f} elsewhere; "
              f"your prediction: {prediction_4}")
        with splice(model, sae, ablate=[target]), torch.no_grad():
            toolkit = model(rows).log_softmax(-1)
        print(f"   max |yours - minimech.sae.interventions.splice| = {(toolkit - ablated).abs().max():.2e}")

# %% [markdown]
# Compare the measured fall with the first-order estimate the feature was chosen by, and with your prediction. A
# first-order estimate is exact only for small changes; removing a feature whose activation is large is not small,
# and the later layers (LayerNorms, GELUs, attention) respond non-linearly. At positions where the feature does not
# fire, any change came through attention from earlier positions where it did. Read the contexts again: what
# behaviour of the model did you just damage?
#
# ## With GPT-2's own weights
#
# `python lesson.py --model gpt2` runs the same steps on GPT-2 small's middle MLP (3,072 neurons; the SAE then has
# 6,144 features and one training step costs some fifty times more). So that it runs in minutes on a laptop, it then
# reads fewer documents throughout and trains 60 steps of 128 tokens. No SAE is shipped for GPT-2, so the second
# half reads yours: it will be much less clean than the published ones, which were trained on hundreds of millions
# of tokens; train longer (`train_small_sae(acts, ..., steps=...)`, or `minimech.sae.train_sae`) before you read
# much into its features.
#
# What was found on minimech's default model, and what it means, is at the end of this lesson's README.
