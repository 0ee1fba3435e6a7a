"""The plain-hook probes (minimech/training/probes.py, evaluate.copy_accuracy) against independent ground truth:
one head ablated at a time in a loop, ROME's causal trace as minimech.analysis computes it, hand-placed name
positions, and a model that copies perfectly by construction."""

import json
from pathlib import Path

import pytest
import torch

from minimech import GPT, GPTConfig
from minimech.tokenizer import Tokenizer, load_encoding
from minimech.training import probes as P
from minimech.training.corpus import build_vocab
from minimech.training.stories import StoryCorpus

PROBES = Path(__file__).parent / "data" / "probes"


@pytest.fixture(scope="module")
def model():
    corpus = StoryCorpus(seed=0)
    tok = Tokenizer(build_vocab(corpus.vocab_texts(), load_encoding()))
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layers=2, n_heads=3, d_model=24, d_mlp=32, n_ctx=128, d_vocab=tok.n_vocab), tokenizer=tok,
            seed=0)
    with torch.no_grad():  # larger weights than GPT-2's init, so every head and MLP matters
        for name, p in m.named_parameters():
            if name.split(".")[-1].startswith("W_"):
                p.normal_(0, 0.3)
    return m.eval()


@pytest.fixture(scope="module")
def batches(model):
    frames = json.loads((PROBES / "ioi_frames.json").read_text())
    return P.ioi_batches(model, frames["frames"][:4], frames["names"], pairs=2, seed=0)  # frame 1 opens with {A}


def test_ioi_batches_put_the_names_where_the_text_has_them(model, batches):
    for b in batches:
        for row, io, s, i, s1, s2 in zip(b.tokens, b.io, b.s, b.io_pos, b.s1_pos, b.s2_pos):
            words = model.tokenizer.to_str_tokens(row, prepend_bos=False)
            name = lambda t: words[int(t)].strip()
            io_name, s_name = model.tokenizer.decode([int(io)]).strip(), model.tokenizer.decode([int(s)]).strip()
            assert name(i) == io_name and name(s1) == s_name and name(s2) == s_name and s1 < s2, words
            assert sum(w.strip() == io_name for w in words) == 1 and sum(w.strip() == s_name for w in words) == 2
        changed = (b.tokens != b.no_repeat).nonzero()
        assert torch.equal(changed[:, 1], b.s2_pos)  # only S2 differs in the no-repeat control ...
        assert not (b.no_repeat[torch.arange(len(b.io)), b.s2_pos][:, None] == b.no_repeat[:, :-1]).sum(1).gt(1).any()


def test_batched_head_ablation_equals_one_head_at_a_time(model, batches):
    roles = P.head_roles(model, batches)
    expected, n = torch.zeros(model.cfg.n_layers, model.cfg.n_heads), 0
    with torch.no_grad():
        for b in batches:
            _, cache = model.run_with_cache(b.tokens, names=lambda x: x.endswith("hook_z"))
            base = P._final_logit_diff(model(b.tokens), b).mean()
            for layer in range(model.cfg.n_layers):
                mean_z = cache[f"blocks.{layer}.attn.hook_z"].mean(0, keepdim=True)
                for h in range(model.cfg.n_heads):
                    def ablate(act, hook, h=h):
                        act = act.clone()
                        act[:, :, h] = mean_z[:, :, h]
                        return act
                    with model.hooks([(f"blocks.{layer}.attn.hook_z", ablate)]):
                        diff = P._final_logit_diff(model(b.tokens), b).mean()
                    expected[layer, h] += (diff - base) * len(b.io)
            n += len(b.io)
    torch.testing.assert_close(roles["mean_ablation"], expected / n, atol=1e-5, rtol=0)
    assert expected.abs().max() > 1e-3  # the heads matter, so the comparison means something


def test_direct_effects_and_every_other_component_sum_to_the_logit_difference(model, batches):
    """Direct effects are a decomposition: the heads' (from head_roles) plus the embeddings', MLPs', attention
    biases', ln_final's bias and the unembedding bias add up to the final logit difference."""
    roles = P.head_roles(model, batches)
    heads = roles["direct_effect"].sum().item()
    rest, total, n = 0.0, 0.0, 0
    with torch.no_grad():
        for b in batches:
            rows = torch.arange(len(b.io))
            names = lambda x: x.endswith(("hook_mlp_out", "hook_embed", "hook_pos_embed")) or x == "ln_final.hook_scale"
            logits, cache = model.run_with_cache(b.tokens, names=names)
            direction = model.W_U[:, b.io] - model.W_U[:, b.s]  # [d_model, batch]
            pieces = cache["hook_embed"][:, -1] + cache["hook_pos_embed"][:, -1]
            for layer in range(model.cfg.n_layers):
                pieces = pieces + model.blocks[layer].attn.b_O + cache[f"blocks.{layer}.hook_mlp_out"][:, -1]
            read = (pieces - pieces.mean(-1, keepdim=True)) / cache["ln_final.hook_scale"][rows, -1] * model.ln_final.w
            rest += (torch.einsum("bm,mb->b", read, direction) + model.ln_final.b @ direction
                     + model.b_U[b.io] - model.b_U[b.s]).sum().item()
            total += P._final_logit_diff(logits, b).sum().item()
            n += len(b.io)
    assert heads + rest / n == pytest.approx(total / n, abs=1e-3)
    assert abs(heads) > 1e-2


def test_restoration_matches_analysis_causal_trace(model):
    from minimech.analysis import causal_trace

    prompt, subject = "The capital of France is", "France"
    tokens = model.to_tokens(prompt)
    answer = int(model(tokens)[0, -1].argmax())
    positions = P._positions_of(model, tokens, subject)
    ours = P.restoration(model, tokens, answer, positions, positions[-1], samples=4, seed=3)
    trace = causal_trace(model, prompt, answer, subject, samples=4, seed=3, kinds=("mlp",))
    theirs = (trace.scores["mlp"][:, positions[-1]] - trace.corrupt_prob) / (trace.clean_prob - trace.corrupt_prob)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-3)


class _Copier:
    """Predicts, at every position, the token that followed the previous occurrence of the current token: perfect
    copying of any repeated chunk whose tokens are distinct from the text around it."""

    def __init__(self, model):
        self.cfg, self.tokenizer = model.cfg, model.tokenizer

    def __call__(self, tokens):
        logits = torch.zeros(*tokens.shape, self.cfg.d_vocab)
        for b in range(tokens.shape[0]):
            last_seen = {}
            for t in range(tokens.shape[1]):
                tok = int(tokens[b, t])
                if tok in last_seen and last_seen[tok] + 1 < tokens.shape[1]:
                    logits[b, t, int(tokens[b, last_seen[tok] + 1])] = 1.0
                last_seen[tok] = t
        return logits


def test_copy_accuracy_of_a_perfect_copier_is_one_and_of_a_constant_zero(model):
    from minimech.training.evaluate import copy_accuracy

    filler = torch.full((4, 127), 5)  # a text of one repeated token, distinct from the chunk's pool
    pool = torch.arange(100, 7000)  # wide: a chunk with a repeated token would be ambiguous even to this copier
    for distance in (16, 96, 112):
        assert copy_accuracy(_Copier(model), filler, distance, token_pool=pool, seed=distance) == 1.0

    class Constant(_Copier):
        def __call__(self, tokens):
            return torch.zeros(*tokens.shape, self.cfg.d_vocab)
    assert copy_accuracy(Constant(model), filler, 96, token_pool=pool) == 0.0
    with pytest.raises(ValueError, match="exceeds n_ctx"):
        copy_accuracy(_Copier(model), filler, 120, token_pool=pool)
