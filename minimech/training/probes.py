"""Hand-written probes of a shipped model, measured with plain hooks (run_with_cache and model.hooks only, no
minimech.analysis): IOI on sentence frames and names the corpus generator never wrote, the roles of its heads in
the IOI paper's vocabulary, facts in word orders never used for them, copying at long distances, unknown tokens.

The probe files live in tests/data/probes (written by hand, committed as test data); `load_probes` reads them.
benchmarks/story_model.py writes these figures into the card; tests/test_shipped.py recomputes them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch


def load_probes(folder: str | Path) -> dict:
    folder = Path(folder)
    return {"ioi": json.loads((folder / "ioi_frames.json").read_text()),
            "facts": json.loads((folder / "facts.json").read_text())}


@dataclass
class IOIBatch:
    """Prompts of one frame (names are single tokens, so one length) and where the names sit."""
    frame: str
    tokens: torch.Tensor  # [batch, pos]
    no_repeat: torch.Tensor  # [batch, pos]: S2 replaced by a third name that occurs nowhere else
    io: torch.Tensor  # [batch] token ids
    s: torch.Tensor
    io_pos: torch.Tensor  # [batch] first position of IO
    s1_pos: torch.Tensor  # [batch] first position of S
    s2_pos: torch.Tensor  # [batch] last position of S


def ioi_batches(model, frames: list[str], names: list[str], pairs: int = 8, seed: int = 0) -> list[IOIBatch]:
    """For each frame, `pairs` (IO, S, C) name triples, each as ABBA and as BABA (2 * pairs prompts)."""
    tok, rng = model.tokenizer, random.Random(seed)
    out = []
    for frame in frames:
        rows, no_rep, ios, ss = [], [], [], []
        for _ in range(pairs):
            io, s, c = rng.sample(names, 3)
            for a, b in ((io, s), (s, io)):
                rows.append(frame.format(A=a, B=b, S=s))
                no_rep.append(frame.format(A=a, B=b, S=c))
                ios.append(tok.to_single_token(" " + io))
                ss.append(tok.to_single_token(" " + s))
        tokens, no_repeat = model.to_tokens(rows), model.to_tokens(no_rep)
        io, s = torch.tensor(ios), torch.tensor(ss)
        # A name that opens the text has no leading space ("Amy", not " Amy"): either form marks the name.
        bare = lambda ids: torch.tensor([tok.from_gpt2(tok.encoding.encode_ordinary(tok.decode([i]).strip()))[0]
                                         for i in ids.tolist()])
        is_name = lambda ids: (tokens == ids[:, None]) | (tokens == bare(ids)[:, None])  # [batch, pos]
        first = lambda ids: is_name(ids).float().argmax(1)
        last = tokens.shape[1] - 1 - is_name(s).flip(1).float().argmax(1)
        out.append(IOIBatch(frame, tokens, no_repeat, io, s, first(io), first(s), last))
    return out


def _final_logit_diff(logits: torch.Tensor, b: IOIBatch) -> torch.Tensor:  # [batch]
    rows = torch.arange(len(b.io))
    return logits[rows, -1, b.io] - logits[rows, -1, b.s]


@torch.no_grad()
def ioi_scores(model, batches: list[IOIBatch]) -> dict:
    diffs, top1 = [], []
    for b in batches:
        logits = model(b.tokens)
        diffs.append(_final_logit_diff(logits, b))
        top1.append(logits[:, -1].argmax(-1) == b.io)
    d, t = torch.cat(diffs), torch.cat(top1)
    return {"logit_diff": d.mean().item(), "accuracy": (d > 0).float().mean().item(),
            "top1": t.float().mean().item(), "prompts": len(d)}


@torch.no_grad()
def head_roles(model, batches: list[IOIBatch]) -> dict:
    """Per head [layer][head], averaged over every prompt: attention from END to IO, S1 and S2; attention from S2
    to S1 (duplicate-token) and to S1 + 1 (induction); END -> S2 again on the no-repeat prompts (the S-inhibition
    control); each head's direct effect on logit(IO) - logit(S) (its output at END, centred, divided by
    ln_final's cached scale, times its weight, through the unembedding); and the change in the logit difference when the head's z is replaced by its mean over the
    frame's prompts (mean ablation)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    keys = ["end_to_io", "end_to_s1", "end_to_s2", "end_to_s2_no_repeat", "s2_to_s1", "s2_to_s1_plus_1",
            "direct_effect", "mean_ablation"]
    total = {k: torch.zeros(L, H) for k in keys}
    n = 0
    names = lambda x: x.endswith("hook_pattern") or x.endswith("hook_z") or x == "ln_final.hook_scale"
    for b in batches:
        rows, batch = torch.arange(len(b.io)), len(b.io)
        logits, cache = model.run_with_cache(b.tokens, names=names)
        _, cache_nr = model.run_with_cache(b.no_repeat, names=lambda x: x.endswith("hook_pattern"))
        base = _final_logit_diff(logits, b).mean()
        direction = model.W_U[:, b.io] - model.W_U[:, b.s]  # [d_model, batch]
        scale = cache["ln_final.hook_scale"][rows, -1]  # [batch, 1]
        for layer in range(L):
            p, p_nr = cache[f"blocks.{layer}.attn.hook_pattern"], cache_nr[f"blocks.{layer}.attn.hook_pattern"]
            at = lambda pat, q, k: pat[rows, :, q, k].sum(0)  # [head], summed over the batch
            total["end_to_io"][layer] += at(p, -1, b.io_pos)
            total["end_to_s1"][layer] += at(p, -1, b.s1_pos)
            total["end_to_s2"][layer] += at(p, -1, b.s2_pos)
            total["end_to_s2_no_repeat"][layer] += at(p_nr, -1, b.s2_pos)
            total["s2_to_s1"][layer] += at(p, b.s2_pos, b.s1_pos)
            total["s2_to_s1_plus_1"][layer] += at(p, b.s2_pos, b.s1_pos + 1)
            z = cache[f"blocks.{layer}.attn.hook_z"]  # [batch, pos, head, d_head]
            W_O = model.blocks[layer].attn.W_O  # [head, d_head, d_model]
            out_end = torch.einsum("bhd,hdm->bhm", z[:, -1], W_O)  # [batch, head, d_model]
            # through ln_final as the model reads it: centred, divided by the cached scale, times ln_final's weight
            out_end = (out_end - out_end.mean(-1, keepdim=True)) / scale[:, None] * model.ln_final.w
            total["direct_effect"][layer] += torch.einsum("bhm,mb->h", out_end, direction)
            # every head of this layer mean-ablated at once: the batch repeated H times, head h ablated in copy h
            mean_z = z.mean(0)  # [pos, head, d_head]

            def ablate(act, hook, mean_z=mean_z):
                act = act.clone().view(H, batch, *act.shape[1:])
                for h in range(H):
                    act[h, :, :, h] = mean_z[:, h]
                return act.view(H * batch, *act.shape[2:])
            with model.hooks([(f"blocks.{layer}.attn.hook_z", ablate)]):
                ablated = model(b.tokens.repeat(H, 1))[:, -1]  # [H * batch, d_vocab]
            rows_h = torch.arange(H * batch)
            diff = (ablated[rows_h, b.io.repeat(H)] - ablated[rows_h, b.s.repeat(H)]).view(H, batch)
            total["mean_ablation"][layer] += (diff.mean(1) - base) * batch
        n += batch
    return {k: (v / n) for k, v in total.items()}


def name_heads(roles: dict, n_heads: int) -> dict:
    """The IOI paper's classes from head_roles' figures (thresholds stated in the card's method):
    name movers attend END -> IO (>= 0.3) and write IO over S (direct effect >= 0.5); S-inhibition heads attend
    END -> S2 (>= 0.3) and their attention to S2 falls by half or more without a repeated name; duplicate-token
    heads attend S2 -> S1 (>= 0.3); induction heads S2 -> S1 + 1 (>= 0.3)."""
    label = lambda i: f"L{i // n_heads}H{i % n_heads}"
    flat = {k: v.flatten() for k, v in roles.items()}
    pick = lambda cond: [label(i) for i in range(len(cond)) if cond[i]]
    return {
        "name_movers": pick((flat["end_to_io"] >= 0.3) & (flat["direct_effect"] >= 0.5)),
        "s_inhibition": pick((flat["end_to_s2"] >= 0.3) & (flat["end_to_s2_no_repeat"] <= 0.5 * flat["end_to_s2"])),
        "duplicate_token": pick(flat["s2_to_s1"] >= 0.3),
        "induction": pick(flat["s2_to_s1_plus_1"] >= 0.3),
        "negative": pick(flat["direct_effect"] <= -0.5),
    }


@torch.no_grad()
def ablated_name_mover_attention(model, batches: list[IOIBatch], s_inhibition: list[str], movers: list[str]) -> dict:
    """The name movers' attention END -> IO and END -> S, clean and with the S-inhibition heads' z mean-ablated:
    if S-inhibition tells the name movers which name not to copy, ablating it moves their attention to S."""
    parse = lambda lab: (int(lab[1:].split("H")[0]), int(lab.split("H")[1]))
    inhib, movers = [parse(x) for x in s_inhibition], [parse(x) for x in movers]
    out = {"clean_to_io": 0.0, "clean_to_s": 0.0, "ablated_to_io": 0.0, "ablated_to_s": 0.0}
    n = 0
    for b in batches:
        rows = torch.arange(len(b.io))
        _, cache = model.run_with_cache(b.tokens, names=lambda x: x.endswith("hook_z"))
        hooks = []
        for layer, h in inhib:
            mean_z = cache[f"blocks.{layer}.attn.hook_z"].mean(0, keepdim=True)
            def ablate(act, hook, h=h, mean_z=mean_z):
                act = act.clone()
                act[:, :, h] = mean_z[:, :, h]
                return act
            hooks.append((f"blocks.{layer}.attn.hook_z", ablate))
        for key, hk in (("clean", []), ("ablated", hooks)):
            with model.hooks(hk):
                _, c = model.run_with_cache(b.tokens, names=lambda x: x.endswith("hook_pattern"))
            for layer, h in movers:
                p = c[f"blocks.{layer}.attn.hook_pattern"][rows, h, -1]  # [batch, pos]
                out[f"{key}_to_io"] += p[rows, b.io_pos].sum().item()
                out[f"{key}_to_s"] += (p[rows, b.s1_pos] + p[rows, b.s2_pos]).sum().item()
        n += len(b.io) * max(1, len(movers))
    return {k: v / n for k, v in out.items()}


@torch.no_grad()
def fact_probe_scores(model, corpus, phrasings: dict) -> dict:
    """Top-1 on the hand-written phrasings: "strict" uses, for each fact, only phrasings of the order class the
    corpus never used for that fact; "all" every phrasing."""
    from .stories import COUNTRY_RELATIONS, fact_prompt
    from . import lexicon as L
    strict, loose = [], []
    for relation, classes in phrasings.items():
        for row in L.COUNTRIES:
            subject, answer = row[0], " " + row[COUNTRY_RELATIONS[relation]]
            first = model.tokenizer.encode(answer)[0]
            held = corpus.heldout_order[(subject, relation)]
            for order, templates in classes.items():
                for t in templates:
                    item = (fact_prompt(t, subject), first)
                    loose.append(item)
                    if order == held:
                        strict.append(item)

    def top1(items):
        hits = 0
        for start in range(0, len(items), 64):
            chunk = items[start:start + 64]
            tokens, mask = model.tokenizer.to_tokens([p for p, _ in chunk], return_mask=True)
            logits = model(tokens)
            last = mask.long().sum(1) - 1
            pred = logits[torch.arange(len(chunk)), last].argmax(-1)
            hits += sum(int(p) == a for p, (_, a) in zip(pred, chunk))
        return hits / len(items)

    return {"strict_top1": top1(strict), "strict_prompts": len(strict), "all_top1": top1(loose),
            "all_prompts": len(loose)}


def unknown_share(tokenizer, text: str) -> float:
    ids = tokenizer.encode(text)
    return ids.count(tokenizer.unk_id) / len(ids)


@torch.no_grad()
def restoration(model, tokens: torch.Tensor, answer: int, noised: list[int], restore_at: int, samples: int = 10,
                seed: int = 0, noise: float | None = None) -> torch.Tensor:
    """[n_layers]: ROME's causal trace with plain hooks, normalised. Gaussian noise (3 x the std of W_E) is added to
    the token embeddings at `noised`; then, for each layer, that layer's clean MLP output at `restore_at` is put
    back. Returns (P_restored - P_noised) / (P_clean - P_noised) of the answer at the last position."""
    std = 3 * model.W_E.std().item() if noise is None else noise
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randn(samples, len(noised), model.cfg.d_model, generator=gen) * std
    batch = tokens.expand(samples, -1)

    def add_noise(act, hook):
        act = act.clone()
        act[:, noised] = act[:, noised] + draws
        return act

    names = [f"blocks.{l}.hook_mlp_out" for l in range(model.cfg.n_layers)]
    clean_logits, cache = model.run_with_cache(tokens, names=names)
    p_clean = clean_logits[0, -1].softmax(-1)[answer].item()
    prob = lambda logits: logits[:, -1].softmax(-1)[:, answer].mean().item()
    with model.hooks([("hook_embed", add_noise)]):
        p_noised = prob(model(batch))
    out = torch.zeros(model.cfg.n_layers)
    for layer, name in enumerate(names):
        clean = cache[name][:, restore_at]

        def restore(act, hook, clean=clean):
            act = act.clone()
            act[:, restore_at] = clean
            return act
        with model.hooks([("hook_embed", add_noise), (name, restore)]):
            out[layer] = prob(model(batch))
    return (out - p_noised) / max(p_clean - p_noised, 1e-6)


def _positions_of(model, tokens: torch.Tensor, text: str) -> list[int]:
    """Positions of the tokens of `text` (with a leading space, or at the start) inside tokens [1, pos]."""
    row = tokens[0].tolist()
    for piece in (" " + text, text):
        ids = model.tokenizer.encode(piece)
        for start in range(len(row) - len(ids) + 1):
            if row[start:start + len(ids)] == ids:
                return list(range(start, start + len(ids)))
    raise ValueError(f"{text!r} is not in the prompt")


RELATION_WORDS = {"capital": "capital", "language": "language", "continent": "continent", "town_country": "country",
                  "town_product": "product"}


@torch.no_grad()
def fact_tracing(model, facts, samples: int = 10) -> dict:
    """Per layer, mean normalised restoration over facts the model gets right: the MLP at the subject's last token
    with the subject noised ("subject_last"), the MLP at the last token with the subject noised ("last_token"), and
    the identity-restoration control: the relation word (" capital", ...) noised and its own MLP output restored
    ("control_relation_word"). Facts without their relation word in the prompt skip the control."""
    out = {"subject_last": [], "last_token": [], "control_relation_word": []}
    for f in facts:
        tokens = model.to_tokens(f.prompt)
        answer = model.tokenizer.encode(f.answer)[0]
        if int(model(tokens)[0, -1].argmax()) != answer:
            continue
        subject = _positions_of(model, tokens, f.subject)
        out["subject_last"].append(restoration(model, tokens, answer, subject, subject[-1], samples))
        out["last_token"].append(restoration(model, tokens, answer, subject, tokens.shape[1] - 1, samples))
        try:
            rel = _positions_of(model, tokens, RELATION_WORDS[f.relation])
        except ValueError:
            continue
        out["control_relation_word"].append(restoration(model, tokens, answer, rel, rel[-1], samples))
    result = {k: [round(x, 3) for x in torch.stack(v).mean(0).tolist()] if v else None for k, v in out.items()}
    result["facts_traced"] = len(out["subject_last"])
    result["facts_in_control"] = len(out["control_relation_word"])
    return result


@torch.no_grad()
def ioi_name_control(model, batches: list[IOIBatch], samples: int = 5, per_batch: int = 2) -> list[float]:
    """The identity-restoration control on IOI prompts: the IO's first mention noised and the MLP output at that
    token restored, per layer, normalised on P(IO). No fact is looked up there, so what MLPs restore is the name."""
    runs = []
    for b in batches:
        for i in range(min(per_batch, len(b.io))):
            tokens = b.tokens[i:i + 1]
            pos = int(b.io_pos[i])
            runs.append(restoration(model, tokens, int(b.io[i]), [pos], pos, samples))
    return [round(x, 3) for x in torch.stack(runs).mean(0).tolist()]
