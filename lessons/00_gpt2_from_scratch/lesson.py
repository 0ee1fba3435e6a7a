# %% [markdown]
# # Lesson 00 · GPT-2 from scratch
#
# GPT-2 fits on a page. Token and position embeddings are added into a vector per position, the **residual stream**.
# Then each of `n_layers` blocks reads the stream and adds to it, twice: causal self-attention moves information
# between positions, an MLP transforms each position on its own. A final LayerNorm and the unembedding turn the
# stream into logits over the vocabulary.
#
# You will write that forward pass as functions over plain tensors, as in picoGPT, and then load GPT-2's published
# weights into it. The checks compare every function with minimech's own model (`minimech/model.py`, which reads
# top to bottom like this lesson) on the shipped model and on random GPT-2s of odd sizes.
#
# **Dimension names** (used in every shape comment): `batch`, `pos`, `head`, `d_head`, `d_model`, `d_mlp`,
# `d_vocab`. Weights are stored the way the maths reads: `x @ W`, so `W_in` is `[d_model, d_mlp]`.
#
# **Working on it**: `minimech start 00` copies this file into your workspace (`--notebook` makes it a Jupyter
# notebook); `minimech check 00` grades your functions; `minimech hint 00.2` gives one hint at a time. Run the file
# (`python lesson.py`, or `--model gpt2` when you have GPT-2's weights) to see each piece at work; cells whose
# exercise is not written yet are skipped. Before a measurement the lesson asks you to write down a prediction
# (`prediction_1 = ...`): the checks record that you made one, never whether it was right.

# %%
import argparse
from contextlib import contextmanager
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import minimech
from minimech import plot
from minimech.published import identify_gpt2  # not minimech.loading: this lesson has you write the loader
from minimech.notebook import show

MAIN = __name__ == "__main__"
DEFAULT_MODEL = "story-4l"
OUT = Path("minimech-out")
PROMPT = "When Mary and John went to the store, John gave a drink to"


def parse_args():
    parser = argparse.ArgumentParser(description="Lesson 00: GPT-2 from scratch", allow_abbrev=False)
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


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


if MAIN:
    args = parse_args()
    torch.set_grad_enabled(False)  # we only read the model
    model = minimech.load(args.model)
    print(model)
    tokens = model.to_tokens(PROMPT)  # [1, pos], <|endoftext|> first
    logits, cache = model.run_with_cache(tokens)  # minimech's activations: what your functions should reproduce
    params = {name: p.detach() for name, p in model.state_dict().items()}  # minimech's names -> tensors
    print(f"{len(params)} tensors, e.g. {list(params)[:4]}")

# %% [markdown]
# ## Exercise 00.1: LayerNorm
#
# > **Difficulty** ★☆☆ · **Importance** ★★★☆☆ · about 10 minutes
#
# LayerNorm normalises each position's vector on its own: subtract its mean over `d_model`, divide by its standard
# deviation, then scale and shift each feature by learned `w` and `b`:
#
# $$\mathrm{LN}(x) = \frac{x - \bar x}{\sqrt{\mathrm{Var}(x) + \epsilon}} \odot w + b$$
#
# The variance is the *biased* one (the mean of the squared deviations, dividing by `d_model`), and `eps`
# (1e-5 in GPT-2) is added to the variance, inside the root. Both details are visible in the output: the checks
# use a nearly constant `x` and a large `eps` to see them.
#
# `layer_norm(x, w, b, eps)`: `x` `[..., d_model]`, `w` and `b` `[d_model]` → `[..., d_model]`.

# %%
def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """x: [..., d_model]; w, b: [d_model] -> [..., d_model]."""
    # EXERCISE 00.1
    raise NotImplementedError("EXERCISE 00.1: normalise x over its last axis, then scale by w and shift by b")


# %%
if MAIN:
    with demo("00.1 layer_norm against block 0's ln1"):
        ln1 = model.blocks[0].ln1
        mine = layer_norm(cache["blocks.0.hook_resid_pre"], ln1.w, ln1.b, model.cfg.eps)  # [1, pos, d_model]
        print(f"   max |yours - minimech's| = {max_diff(mine, cache['blocks.0.ln1.hook_normalized']):.2e}")

# %% [markdown]
# ## Exercise 00.2: The attention pattern
#
# > **Difficulty** ★★☆ · **Importance** ★★★★★ · about 15 minutes
#
# Each head `h` reads the (normalised) stream `x` three ways: queries `q = x @ W_Q[h] + b_Q[h]`, keys `k` and
# values `v` alike, each `[batch, pos, d_head]` per head. Query position `i` scores key position `j` by
# `q_i · k_j / sqrt(d_head)`; the scaling keeps the scores' spread independent of `d_head`. The model predicts the
# next token, so position `i` must not see positions after it: scores with `j > i` are set to `-inf` before a softmax
# over `j`. The result, the **attention pattern** `[batch, head, q_pos, k_pos]`, has rows that sum to 1: row `i`
# says how much query `i` reads from each key.
#
# `torch.einsum` keeps the head axis readable: `torch.einsum("bqhe,bkhe->bhqk", q, k)` is every head's scores.
#
# `attention_pattern(q, k)`: `q`, `k` `[batch, pos, head, d_head]` → `[batch, head, q_pos, k_pos]`.

# %%
def attention_pattern(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q, k: [batch, pos, head, d_head] -> pattern [batch, head, q_pos, k_pos], causal, rows summing to 1."""
    # EXERCISE 00.2
    raise NotImplementedError("EXERCISE 00.2: scaled scores q.k / sqrt(d_head), future keys -inf, softmax over keys")


# %% [markdown]
# Before you look at a real pattern: in the first layer of a trained model, on an ordinary sentence, where do you
# expect a head to look? (Every query can see the first token, `<|endoftext|>`, and itself.)

# %%
prediction_1 = None  # your guess: where layer 0's heads put most of their attention, e.g. "on the previous token"

# %%
if MAIN:
    with demo("00.2 attention_pattern against block 0's hook_pattern"):
        q, k = cache["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_k"]  # [1, pos, head, d_head]
        mine = attention_pattern(q, k)  # [1, head, q_pos, k_pos]
        print(f"   max |yours - minimech's pattern| = {max_diff(mine, cache['blocks.0.attn.hook_pattern']):.2e}")
        str_tokens = [repr(t)[1:-1] for t in model.to_str_tokens(tokens[0])]
        show(plot.attention(mine[0, 0], str_tokens, OUT / "00_pattern_L0H0.png", title="your pattern, layer 0 head 0"))
        to_first = mine[0, :, 1:, 0].mean(-1)  # [head]: mean attention on <|endoftext|> (queries after it)
        to_self = mine[0].diagonal(dim1=-2, dim2=-1)[:, 1:].mean(-1)  # [head]
        to_previous = mine[0].diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)  # [head]
        for head in range(model.cfg.n_heads):
            print(f"   L0H{head}: on <|endoftext|> {to_first[head]:.2f}, on itself {to_self[head]:.2f}, "
                  f"on the previous token {to_previous[head]:.2f}")

# %% [markdown]
# Compare with your prediction. Heads often park attention on the first token when nothing else is useful to them
# (it is visible to every query and carries no information of its own); others look at the current or the previous
# token. Lesson 02 turns "where does a head look" into a score and finds heads by it.

# %% [markdown]
# ## Exercise 00.3: Causal self-attention
#
# > **Difficulty** ★★☆ · **Importance** ★★★★★ · about 15 minutes
#
# With the pattern in hand, each head mixes the values, `z_i = Σ_j pattern_ij v_j`, and writes `z @ W_O[h]` back
# to the stream. The heads' writes add up, plus one bias `b_O`:
#
# $$\mathrm{attn}(x) = \sum_h \mathrm{softmax}\Big(\frac{q^h {k^h}^\top}{\sqrt{d_{head}}} + \text{mask}\Big)\, v^h\,
# W_O^h + b_O$$
#
# Call your `attention_pattern`: `torch.einsum("bpm,hme->bphe", x, W_Q)` gives `q` for every head at once.
#
# `attention(x, W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O)`: `x` `[batch, pos, d_model]`; `W_Q`, `W_K`, `W_V`
# `[head, d_model, d_head]`; `W_O` `[head, d_head, d_model]`; `b_Q`, `b_K`, `b_V` `[head, d_head]`; `b_O`
# `[d_model]` → `[batch, pos, d_model]`. (`d_model` need not equal `head * d_head`: the weights carry the head axis.)

# %%
def attention(x, W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O) -> torch.Tensor:
    """x: [batch, pos, d_model] -> attn_out [batch, pos, d_model], summed over heads plus b_O."""
    # EXERCISE 00.3
    raise NotImplementedError("EXERCISE 00.3: q, k, v per head, your attention_pattern, mix the values, W_O, + b_O")


# %% [markdown]
# Causality, seen from outside: if you change the input at the last position, by how much should the outputs at
# the earlier positions move?

# %%
prediction_2 = None  # your guess: the largest change at an earlier position, e.g. 0.1

# %%
if MAIN:
    with demo("00.3 attention against block 0's attention"):
        attn = model.blocks[0].attn
        mine = attention(cache["blocks.0.ln1.hook_normalized"], attn.W_Q, attn.W_K, attn.W_V, attn.W_O,
                         attn.b_Q, attn.b_K, attn.b_V, attn.b_O)  # [1, pos, d_model]
        print(f"   max |yours - minimech's attn_out| = {max_diff(mine, cache['blocks.0.hook_attn_out']):.2e}")
        x = cache["blocks.0.ln1.hook_normalized"].clone()
        x[:, -1] = torch.randn(x.shape[-1])
        changed = attention(x, attn.W_Q, attn.W_K, attn.W_V, attn.W_O, attn.b_Q, attn.b_K, attn.b_V, attn.b_O)
        moved = max_diff(changed[:, :-1], mine[:, :-1])
        print(f"   after changing the last position, earlier outputs moved by {moved:.1e}; "
              f"the last position's by {max_diff(changed[:, -1], mine[:, -1]):.1e}")

# %% [markdown]
# Zero (exactly, or at float rounding): the mask hides every later key from every query, so nothing later can reach
# an earlier position. That is what lets a model be trained on every position of a sequence at once.

# %% [markdown]
# ## Exercise 00.4: GPT-2's GELU
#
# > **Difficulty** ★☆☆ · **Importance** ★★★☆☆ · about 5 minutes
#
# The MLP's non-linearity is GELU, x Φ(x) with Φ the standard normal CDF. GPT-2 was trained with a tanh
# approximation of it, and its weights expect exactly that approximation:
#
# $$\mathrm{GELU}(x) \approx \tfrac12\, x\,\Big(1 + \tanh\big(\sqrt{2/\pi}\,(x + 0.044715\,x^3)\big)\Big)$$
#
# `torch.nn.functional.gelu` computes the exact x Φ(x) by default. Write the approximation from the formula.
#
# `gelu_new(x)`: any shape → the same shape.

# %%
def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh approximation of GELU, elementwise."""
    # EXERCISE 00.4
    raise NotImplementedError("EXERCISE 00.4: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))")


# %% [markdown]
# How far is the approximation from the exact GELU? Float32 rounds at about 1e-7 near 1; a difference far above that
# would change a model's outputs visibly.

# %%
prediction_3 = None  # your guess: the largest |gelu_new(x) - exact GELU(x)| for x in [-6, 6], e.g. 1e-2

# %%
if MAIN:
    with demo("00.4 gelu_new against the exact GELU"):
        grid = torch.linspace(-6, 6, 2001)
        gap = (gelu_new(grid) - torch.nn.functional.gelu(grid)).abs()
        print(f"   max |tanh GELU - exact GELU| on [-6, 6] = {gap.max():.1e}, at x = {grid[gap.argmax()]:.2f}")
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(grid.numpy(), (gelu_new(grid) - torch.nn.functional.gelu(grid)).numpy())
        ax.set(xlabel="x", ylabel="tanh GELU - exact GELU", title="GPT-2's GELU minus the exact one")
        fig.tight_layout()
        show(fig, OUT / "00_gelu_difference.png")

# %% [markdown]
# A few times 1e-4 at most: small, but thousands of times float32's rounding, and it passes through every MLP of
# every layer, so a model run with the exact GELU is not quite the model that was trained; a check at 1e-5 tells the
# two apart. The approximation is part of the model.

# %% [markdown]
# ## Exercise 00.5: The MLP
#
# > **Difficulty** ★☆☆ · **Importance** ★★★☆☆ · about 5 minutes
#
# The MLP acts on each position separately: `gelu_new(x @ W_in + b_in) @ W_out + b_out`, with `d_mlp` (4 ×
# `d_model` in GPT-2) neurons in between. Use your `gelu_new`.
#
# `mlp(x, W_in, b_in, W_out, b_out)`: `x` `[batch, pos, d_model]`, `W_in` `[d_model, d_mlp]`, `b_in` `[d_mlp]`,
# `W_out` `[d_mlp, d_model]`, `b_out` `[d_model]` → `[batch, pos, d_model]`.

# %%
def mlp(x, W_in, b_in, W_out, b_out) -> torch.Tensor:
    """x: [batch, pos, d_model] -> [batch, pos, d_model]."""
    # EXERCISE 00.5
    raise NotImplementedError("EXERCISE 00.5: x @ W_in + b_in, your gelu_new, then @ W_out + b_out")


# %%
if MAIN and not model.cfg.attn_only:
    with demo("00.5 mlp against block 0's MLP"):
        m = model.blocks[0].mlp
        mine = mlp(cache["blocks.0.ln2.hook_normalized"], m.W_in, m.b_in, m.W_out, m.b_out)  # [1, pos, d_model]
        print(f"   max |yours - minimech's mlp_out| = {max_diff(mine, cache['blocks.0.hook_mlp_out']):.2e}")

# %% [markdown]
# ## Exercise 00.6: A block
#
# > **Difficulty** ★☆☆ · **Importance** ★★★★☆ · about 10 minutes
#
# GPT-2 is *pre-LN*: each sublayer reads a normalised copy of the stream and **adds** its output to the stream.
#
#     resid_mid  = resid_pre + attention(ln1(resid_pre))
#     resid_post = resid_mid + mlp(ln2(resid_mid))
#
# Nothing ever overwrites the stream; every component's write stays in it, which is why lesson 01 can take the
# stream apart into the sum of what each head and MLP wrote. (The original Transformer normalised *after* adding;
# GPT-2 moved the LayerNorms to the inputs.)
#
# `params` holds one block's tensors under minimech's names without the `blocks.{l}.` prefix: `"ln1.w"`, `"ln1.b"`,
# `"attn.W_Q"` ... `"attn.b_O"`, `"ln2.w"`, `"ln2.b"`, `"mlp.W_in"` ... `"mlp.b_out"`. An attention-only model's
# blocks have no `ln2` or `mlp` entries: then `resid_post = resid_mid`.
#
# `block(resid_pre, params)`: `resid_pre` `[batch, pos, d_model]` → `resid_post` `[batch, pos, d_model]`.

# %%
def block(resid_pre: torch.Tensor, params: dict) -> torch.Tensor:
    """resid_pre: [batch, pos, d_model]; params: one block's tensors -> resid_post [batch, pos, d_model]."""
    # EXERCISE 00.6
    raise NotImplementedError("EXERCISE 00.6: resid_mid = resid_pre + attention(ln1(...)); then the MLP likewise")


# %%
def block_params(params: dict, layer: int) -> dict:
    """Block `layer`'s tensors from a whole model's params, without the 'blocks.{layer}.' prefix."""
    prefix = f"blocks.{layer}."
    return {name.removeprefix(prefix): t for name, t in params.items() if name.startswith(prefix)}


if MAIN:
    with demo("00.6 block against every block of the model"):
        for layer in range(model.cfg.n_layers):
            mine = block(cache[f"blocks.{layer}.hook_resid_pre"], block_params(params, layer))
            print(f"   block {layer}: max |yours - resid_post| = "
                  f"{max_diff(mine, cache[f'blocks.{layer}.hook_resid_post']):.2e}")

# %% [markdown]
# Every block adds to the stream and nothing normalises the stream itself (only the copies the sublayers read). So
# what happens to the stream's size as it goes through the blocks?

# %%
prediction_4 = None  # your guess: how the residual stream's norm changes from the embeddings to the last block

# %%
if MAIN:
    with demo("00.6 the residual stream's norm, block by block (your blocks)"):
        resid = cache["blocks.0.hook_resid_pre"]  # [1, pos, d_model]: the embeddings
        norms = [resid[0, 1:].norm(dim=-1).mean().item()]  # position 0 (<|endoftext|>) left out: it is an outlier
        for layer in range(model.cfg.n_layers):
            resid = block(resid, block_params(params, layer))
            norms.append(resid[0, 1:].norm(dim=-1).mean().item())
        print("   mean norm per position: " + ", ".join(f"{v:.1f}" for v in norms))
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot(range(len(norms)), norms, marker="o")
        ax.set(xlabel="blocks applied", ylabel="mean ||resid||", title=f"{args.model}: the residual stream's norm",
               xticks=range(len(norms)))
        fig.tight_layout()
        show(fig, OUT / "00_residual_norm.png")

# %% [markdown]
# The stream only accumulates: each block adds a vector, and the norm tends to grow with depth (run the cell with
# `--model gpt2` to see GPT-2 small's twelve blocks). A sublayer reads a LayerNorm'd copy, so it sees the stream's
# direction, never its size: for a late write to matter, it must be large compared with what is already there.

# %% [markdown]
# ## Exercise 00.7: The whole forward pass
#
# > **Difficulty** ★★☆ · **Importance** ★★★★★ · about 15 minutes
#
#     resid  = W_E[tokens] + W_pos[:pos]                # [batch, pos, d_model]
#     resid  = block(resid, block 0's params) ... through block n_layers - 1
#     logits = ln_final(resid) @ W_U + b_U              # [batch, pos, d_vocab]
#
# `params` uses minimech's names: `"embed.W_E"` `[d_vocab, d_model]`, `"pos_embed.W_pos"` `[n_ctx, d_model]`,
# `"blocks.{l}...."`, `"ln_final.w"`, `"ln_final.b"`, `"unembed.W_U"` `[d_model, d_vocab]`, `"unembed.b_U"`
# `[d_vocab]` (zeros in GPT-2). Count the layers from the keys. GPT-2 *ties* the unembedding to the embedding
# (`W_U` is `W_E.T`, one matrix used twice); other models train a separate `W_U`, so always read `"unembed.W_U"`:
# it is right either way. `block_params` above slices one block out.
#
# `gpt2_forward(tokens, params)`: `tokens` `[batch, pos]` (integer ids) → logits `[batch, pos, d_vocab]`.

# %%
def gpt2_forward(tokens: torch.Tensor, params: dict) -> torch.Tensor:
    """tokens: [batch, pos] -> logits [batch, pos, d_vocab]."""
    # EXERCISE 00.7
    raise NotImplementedError("EXERCISE 00.7: embed + pos_embed, every block, ln_final, then unembed")


# %%
def greedy(forward, params: dict, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """Append the most likely next token n times, using your forward pass: [1, pos] -> [1, pos + n]."""
    for _ in range(n):
        next_token = forward(tokens, params)[:, -1].argmax(-1, keepdim=True)  # [1, 1]
        tokens = torch.cat([tokens, next_token], dim=1)
    return tokens


# %% [markdown]
# Two questions before running your forward pass on the model: does this model tie `W_U` to `W_E.T`, as GPT-2
# does? And what will it predict after the prompt "When Mary and John went to the store, John gave a drink to"?

# %%
prediction_5 = None  # your guess: does the loaded model tie W_U to W_E.T? (True / False)
prediction_6 = None  # your guess: the model's most likely next token after the prompt, e.g. " John"

# %%
if MAIN:
    tied = torch.equal(params["unembed.W_U"], params["embed.W_E"].T)
    print(f"\n== {args.model}: W_U {'IS' if tied else 'is NOT'} W_E.T (tied: {tied})")
    with demo("00.7 gpt2_forward against the model's logits"):
        mine = gpt2_forward(tokens, params)  # [1, pos, d_vocab]
        print(f"   max |yours - minimech's logits| = {max_diff(mine, logits):.2e}")
        top = mine[0, -1].softmax(-1).topk(3)
        print("   after the prompt: " + ", ".join(f"{model.to_string(i.reshape(1))!r} {p:.2f}"
                                                   for p, i in zip(top.values, top.indices)))
        print(f"   greedy: {model.to_string(greedy(gpt2_forward, params, model.to_tokens('Germany is'), 6)[0])!r}")

# %% [markdown]
# The prompt is lesson 03's indirect-object task: a model that has learned it names the person who was *not* the
# subject of the last clause (" Mary"). Your six functions, run on the model's weights, make that prediction.

# %% [markdown]
# ## Exercise 00.8: Loading GPT-2's weights
#
# > **Difficulty** ★★☆ · **Importance** ★★★☆☆ · about 20 minutes
#
# GPT-2's published weights (Hugging Face's `model.safetensors`) use other names and, in places, other layouts:
#
# | Hugging Face (`transformer.` prefix, optional) | shape | minimech |
# |---|---|---|
# | `wte.weight`, `wpe.weight` | `[d_vocab, d_model]`, `[n_ctx, d_model]` | `embed.W_E`, `pos_embed.W_pos` |
# | `h.{l}.ln_1.weight` / `.bias`, `h.{l}.ln_2.*` | `[d_model]` | `blocks.{l}.ln1.w` / `.b`, `ln2.*` |
# | `h.{l}.attn.c_attn.weight`, `.bias` | `[d_model, 3 d_model]`, `[3 d_model]` | `attn.W_Q`, `W_K`, `W_V`, `b_Q` ... |
# | `h.{l}.attn.c_proj.weight`, `.bias` | `[d_model, d_model]`, `[d_model]` | `attn.W_O`, `attn.b_O` |
# | `h.{l}.mlp.c_fc.weight`, `.bias` | `[d_model, d_mlp]`, `[d_mlp]` | `mlp.W_in`, `mlp.b_in` |
# | `h.{l}.mlp.c_proj.weight`, `.bias` | `[d_mlp, d_model]`, `[d_model]` | `mlp.W_out`, `mlp.b_out` |
# | `ln_f.weight`, `ln_f.bias` | `[d_model]` | `ln_final.w`, `ln_final.b` |
# | `lm_head.weight` (absent when tied to `wte`) | `[d_vocab, d_model]` | `unembed.W_U` `[d_model, d_vocab]` |
# | (none: GPT-2 has no unembedding bias) | | `unembed.b_U`, zeros `[d_vocab]` |
#
# Three things to get right:
#
# 1. `c_attn`, `c_proj` and `c_fc` are `Conv1D` modules, which store weights as `[in, out]`: the transpose of
#    `nn.Linear`'s `[out, in]`, and already the `x @ W` orientation minimech uses. Take them as they are. (nanoGPT
#    transposes them because it uses `nn.Linear`.) `c_proj` of attention is square, so a wrong transpose keeps the
#    shape and only the values go wrong.
# 2. `c_attn` fuses the three projections: its columns are `[Q | K | V]`, each `d_model` wide, and inside each
#    third, head `h` owns columns `h*d_head ... (h+1)*d_head - 1`. `W_O`'s rows split by head the same way.
# 3. `lm_head` *is* an `nn.Linear`, `[d_vocab, d_model]`: transpose it into `W_U`.
#
# `load_hf_state_dict(hf_sd, n_heads)`: a dict of Hugging Face names → tensors, and the number of heads (the only
# size the tensors do not tell) → a dict of minimech's names → tensors, ready for `gpt2_forward`.

# %%
def load_hf_state_dict(hf_sd: dict, n_heads: int) -> dict:
    """Hugging Face GPT-2 names and layouts -> minimech's names and layouts (see the table above)."""
    # EXERCISE 00.8
    raise NotImplementedError("EXERCISE 00.8: rename, split c_attn into per-head W_Q/W_K/W_V, transpose lm_head")


# %%
def random_hf_state_dict(n_layers=2, n_heads=3, d_model=12, d_mlp=20, n_ctx=16, d_vocab=50, seed=0) -> dict:
    """A random GPT-2 in Hugging Face's layout: the names and shapes of the table above."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"wte.weight": (d_vocab, d_model), "wpe.weight": (n_ctx, d_model), "ln_f.weight": (d_model,),
              "ln_f.bias": (d_model,), "lm_head.weight": (d_vocab, d_model)}
    for l in range(n_layers):
        shapes.update({f"h.{l}.ln_1.weight": (d_model,), f"h.{l}.ln_1.bias": (d_model,),
                       f"h.{l}.attn.c_attn.weight": (d_model, 3 * d_model), f"h.{l}.attn.c_attn.bias": (3 * d_model,),
                       f"h.{l}.attn.c_proj.weight": (d_model, d_model), f"h.{l}.attn.c_proj.bias": (d_model,),
                       f"h.{l}.ln_2.weight": (d_model,), f"h.{l}.ln_2.bias": (d_model,),
                       f"h.{l}.mlp.c_fc.weight": (d_model, d_mlp), f"h.{l}.mlp.c_fc.bias": (d_mlp,),
                       f"h.{l}.mlp.c_proj.weight": (d_mlp, d_model), f"h.{l}.mlp.c_proj.bias": (d_model,)})
    return {("" if name == "lm_head.weight" else "transformer.") + name: torch.randn(shape, generator=gen) * 0.3
            for name, shape in shapes.items()}


if MAIN:
    with demo("00.8 load_hf_state_dict: a random GPT-2 in Hugging Face's layout"):
        from minimech.loading import hf_to_minimech  # minimech's own converter, to compare with (tests/test_loading.py
        #                                              holds it to Hugging Face's GPT2LMHeadModel)
        hf_sd = random_hf_state_dict()
        cfg = minimech.GPTConfig(n_layers=2, n_heads=3, d_model=12, d_mlp=20, n_ctx=16, d_vocab=50)
        reference = minimech.GPT(cfg, init=False)
        reference.load_state_dict(hf_to_minimech(hf_sd, cfg))
        probe = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
        mine = gpt2_forward(probe, load_hf_state_dict(hf_sd, n_heads=3))  # your loader, then your forward pass
        print(f"   max |yours - minimech's logits| = {max_diff(mine, reference(probe)):.2e}")

# %% [markdown]
# ## With GPT-2's own weights
#
# Run `python lesson.py --model gpt2` once GPT-2's weights are on this machine (`minimech fetch gpt2` on a machine
# with internet, see the README). Your loader then reads the real file and your forward pass runs GPT-2 small.
# TransformerLens pins GPT-2 small's loss on `"Hello world!"` (with `<|endoftext|>` prepended) at **5.3318557**;
# your two functions should reproduce it to about 1e-4.

# %%
GPT2_HELLO_WORLD_LOSS = 5.3318557  # TransformerLens's test value; BOS prepended


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> float:
    """Mean cross-entropy of predicting tokens[:, 1:] from logits[:, :-1]."""
    log_probs = logits[:, :-1].log_softmax(-1)  # [batch, pos - 1, d_vocab]
    return -log_probs.gather(-1, tokens[:, 1:, None]).mean().item()


if MAIN:
    with demo("GPT-2 small's figures"):
        identity = identify_gpt2(model)  # decided by the weights (config + manifest sha256), not the name given
        if not identity.is_gpt2_small:
            print(f"   skipped: {identity.reason}; the figures are GPT-2 small's. Run with --model gpt2 "
                  "once its weights are here (minimech fetch gpt2)")
        else:
            from pathlib import Path

            from safetensors.torch import load_file

            source = Path(model.source.partition(": ")[2] or model.source)  # "gpt2: /path/model.safetensors"
            gpt2_params = params
            if source.suffix == ".safetensors":  # the published file itself, through your loader
                gpt2_params = load_hf_state_dict(load_file(source), n_heads=model.cfg.n_heads)
                print(f"   loaded {source} with your loader")
            hello = model.to_tokens("Hello world!")  # [1, 4]: <|endoftext|>, Hello, world, !
            loss = next_token_loss(gpt2_forward(hello, gpt2_params), hello)
            verdict = "matches" if abs(loss - GPT2_HELLO_WORLD_LOSS) < 1e-4 else "DOES NOT match"
            print(f"   loss on 'Hello world!' = {loss:.7f}; TransformerLens: {GPT2_HELLO_WORLD_LOSS} ({verdict})")

# %% [markdown]
# ## What you built
#
# Every number GPT-2 computes passed through your functions. Two facts to carry into the next lessons: the
# residual stream is a sum (each block only adds to it), and each attention head is a separate term of that sum,
# with its own `W_Q`, `W_K`, `W_V`, `W_O`. Lesson 01 takes the stream apart along exactly those terms.
