"""The main job: a one-minute tour of the shipped models, as text sections and PNG plots.

    minimech tour                      # prints the tour, writes ./minimech-out/*.png

It runs a prompt and shows the top predictions, a logit lens, the induction heads the detectors find, the IOI logit
difference on held-out prompts, and where causal tracing finds a fact. The computing is here; cli.py prints the
sections this returns (it is the only module that prints).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import plot
from .analysis import causal_trace, detector_scores, logit_lens, repeated_random_tokens
from .loading import load, shipped_models
from .training.corpora import corpus_for
from .training.evaluate import ioi_metrics, logit_diffs

IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"
FACT = ("France's capital is", " Paris", "France")


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)


@dataclass
class Tour:
    sections: list[Section] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    bar: object = None  # a tqdm progress bar over the sections, when run_tour(progress=True)

    def add(self, title: str) -> Section:
        if self.bar is not None:
            self.bar.update(len(self.sections) - self.bar.n)  # the sections before this one are done
            self.bar.set_description(title[:40])
        self.sections.append(Section(title))
        return self.sections[-1]


def top_predictions(model, prompt: str, k: int = 5) -> list[tuple[str, float]]:
    with torch.no_grad():
        probs = model(model.to_tokens(prompt))[0, -1].softmax(-1)  # [d_vocab]
    top = probs.topk(k)
    return [(model.tokenizer.id_to_str(i), p) for p, i in zip(top.values.tolist(), top.indices.tolist())]


def induction_section(tour: Tour, model, name: str, out: Path) -> None:
    s = tour.add(f"Induction heads in {name} (repeated random tokens, score = attention to the token after the "
                 "current token's earlier copy)")
    tokens = repeated_random_tokens(model, seq_len=min(20, (model.cfg.n_ctx - 1) // 2), batch=8, seed=0)
    scores = detector_scores(model, tokens)
    found = [(l, h, scores["induction"][l, h].item()) for l in range(1, model.cfg.n_layers)
             for h in range(model.cfg.n_heads) if scores["induction"][l, h] > 0.5]
    prev = [(0, h, scores["previous_token"][0, h].item()) for h in range(model.cfg.n_heads)
            if scores["previous_token"][0, h] > 0.5]
    s.lines += [f"induction heads (score > 0.5): " + (", ".join(f"L{l}H{h} {v:.2f}" for l, h, v in found) or "none")]
    s.lines += [f"previous-token heads in layer 0: " + (", ".join(f"L{l}H{h} {v:.2f}" for l, h, v in prev) or "none")]
    l, h = divmod(int(scores["induction"][1:].argmax()), model.cfg.n_heads)
    l += 1
    _, cache = model.run_with_cache(tokens[:1], names=f"blocks.{l}.attn.hook_pattern")
    labels = model.to_str_tokens(tokens[0], prepend_bos=False)
    tour.files.append(plot.attention(cache["pattern", l][0, h], labels, out / f"{name}-induction-L{l}H{h}.png",
                                     title=f"{name}: L{l}H{h} on repeated random tokens"))
    history = model.card.get("history")
    if history:
        keys = [k for k in ("loss", "induction_best", "prev_token_best_L0", "icl_loss_ratio", "ioi_logit_diff",
                            "facts_top1") if k in history[0]]
        tour.files.append(plot.curves(history, keys, out / f"{name}-training.png", title=f"{name}: training"))


def run_tour(out_dir: str | Path = "minimech-out", progress: bool = False) -> Tour:
    from .notebook import tqdm  # a widget in Jupyter, text elsewhere

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = 5 + ("attn-only-2l" in shipped_models())
    tour = Tour(bar=tqdm(total=sections, unit="section", leave=False, disable=not progress))
    model = load()
    name = model.card.get("name", "default")

    s = tour.add(f"Top next tokens of {name} after {IOI_PROMPT!r}")
    s.lines += [f"{p:7.2%}  {t!r}" for t, p in top_predictions(model, IOI_PROMPT)]

    lens = logit_lens(model, model.to_tokens(IOI_PROMPT), pos=None)
    s = tour.add("Logit lens at the last position (the residual stream read through the unembedding, layer by layer)")
    for label, top in zip(lens.labels, lens.top_k(3)):
        s.lines.append(f"{label:>8}  " + "  ".join(f"{t!r} {p:.2f}" for t, p in top[-1]))
    probs, text = lens.grid()
    tour.files.append(plot.lens(probs, lens.labels, model.to_str_tokens(IOI_PROMPT), out / f"{name}-logit-lens.png",
                                cell_text=text, title=f"{name}: logit lens"))

    for model_name in ["attn-only-2l"] if "attn-only-2l" in shipped_models() else []:
        induction_section(tour, load(model_name), model_name, out)
    induction_section(tour, model, name, out)

    corpus = corpus_for(model)
    examples = corpus.ioi_eval(4, seed=7, names="train", frames="heldout")
    s = tour.add("Indirect object identification in sentence frames never seen in training (logit IO - logit S)")
    for e, d in zip(examples, logit_diffs(model, [e.prompt for e in examples], [e.io for e in examples],
                                          [e.s for e in examples]).tolist()):
        s.lines.append(f"{d:+6.2f}  {e.prompt} [{e.io.strip()}]")
    for names, what in (("train", "names seen in training"), ("heldout", "held-out names (never in an IOI sentence)")):
        m = ioi_metrics(model, corpus.ioi_eval(100, seed=1, names=names, frames="heldout"))
        s.lines.append(f"100 prompts, held-out frames, {what}: mean logit diff {m['ioi_logit_diff']:.2f}, "
                       f"IO above S in {m['ioi_accuracy']:.0%}")

    prompt, answer, subject = FACT
    trace = causal_trace(model, prompt, answer, subject, samples=5, kinds=("mlp",))
    s = tour.add(f"A fact: {prompt!r} -> {top_predictions(model, prompt, 1)[0][0]!r}; where causal tracing finds it")
    layer, pos = trace.peak("mlp")
    s.lines += [f"P({answer!r}) clean {trace.clean_prob:.2f}, subject corrupted {trace.corrupt_prob:.2f}",
                f"restoring the MLP output at layer {layer}, token {trace.str_tokens[pos]!r} (position {pos}) "
                f"recovers the most: {trace.scores['mlp'][layer, pos]:.2f}"
                + (" - the subject's last token, as ROME found in GPT-2" if pos == max(trace.subject_positions)
                   else "")]
    subject_last = max(trace.subject_positions)
    if pos != subject_last:  # GPT-2's site is the subject's last token: say what this model does there
        at_subject = trace.scores["mlp"][:, subject_last]  # [n_layers]
        s.lines.append(f"at the subject's last token {trace.str_tokens[subject_last]!r} the best MLP (layer "
                       f"{int(at_subject.argmax())}) recovers {at_subject.max():.2f}")
        probes = (model.card.get("probes") or {}).get("fact_tracing")
        if probes:  # the card's average over many facts, beside the identity-restoration baseline
            s.lines.append(f"over {probes['facts_traced']} facts ({name}'s card): at most "
                           f"{max(probes['subject_last']):.3f} at the subject's last token, against "
                           f"{max(probes['control_relation_word']):.2f} for the identity-restoration control (a "
                           "non-subject token noised and its own MLP restored): no single-MLP site like GPT-2's")
    tour.files.append(plot.trace(trace, trace.str_tokens, out / f"{name}-causal-trace.png",
                                 subject_positions=trace.subject_positions, title=f"{name}: {prompt}{answer}"))
    tour.bar.update(tour.bar.total - tour.bar.n)
    tour.bar.close()
    return tour
