"""Measure a story-4l model on the hand-written probes (tests/data/probes) with plain hooks, and write the figures
into its card: IOI on held-out frames and names, the circuit in the IOI paper's classes with the S-inhibition
control, facts in held-out word orders, copying at long distances, causal tracing beside its identity-restoration
controls, ROME edits, and the unknown-token share of English the generator did not write.

    python benchmarks/story_model.py weights/story-4l            # prints, and writes card.json's "probes"
    python benchmarks/story_model.py path/to/trained-run --no-write

Takes a few minutes on one thread (ROME and the traces dominate).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import minimech
from minimech.training import probes as P
from minimech.training.corpora import corpus_for
from minimech.training.evaluate import copy_accuracy, fact_metrics, ioi_metrics
from minimech.training.recipes import held_out_text_rows, token_pool

PROBES = Path(__file__).resolve().parent.parent / "tests" / "data" / "probes"
ROME_EDITS = [("capital", "France", " Rome"), ("capital", "Japan", " Paris"), ("language", "Brazil", " German"),
              ("capital", "Egypt", " Tokyo"), ("continent", "Kenya", " Europe"), ("capital", "Peru", " Berlin")]


def english_rows(model, n_ctx: int) -> torch.Tensor:
    """Rows of the hand-written English texts (model ids, no BOS), for copy probes in text no generator wrote."""
    text = " ".join(" ".join((PROBES / f).read_text().splitlines()[i:]) for f, i in
                    (("everyday_english.txt", 0), ("everyday_english_2.txt", 1), ("everyday_english_3.txt", 1)))
    ids = model.tokenizer.encode(text)
    width = n_ctx - 1
    rows = [ids[s:s + width] for s in range(0, len(ids) - width, 37)]
    return torch.tensor(rows)


def measure(model, corpus, rome: bool = True) -> dict:
    torch.manual_seed(0)
    probes = P.load_probes(PROBES)
    tok = model.tokenizer
    out: dict = {}
    t0 = time.time()

    lines = (PROBES / "everyday_english_3.txt").read_text().splitlines()[1:]
    out["unknown_share_everyday_english_3"] = round(P.unknown_share(tok, " ".join(lines)), 4)

    batches = P.ioi_batches(model, probes["ioi"]["frames"], probes["ioi"]["names"], pairs=8, seed=0)
    out["ioi_hand_frames_heldout_names"] = P.ioi_scores(model, batches)
    out["ioi_corpus_heldout_frames_heldout_names"] = ioi_metrics(model, corpus.ioi_eval(300, seed=123))
    out["ioi_corpus_heldout_frames_train_names"] = ioi_metrics(model, corpus.ioi_eval(300, seed=123, names="train"))
    roles = P.head_roles(model, P.ioi_batches(model, probes["ioi"]["frames"], probes["ioi"]["names"], pairs=4,
                                              seed=1))
    named = P.name_heads(roles, model.cfg.n_heads)
    out["ioi_circuit"] = {"heads": named, "per_head": {k: [[round(x, 3) for x in row] for row in v.tolist()]
                                                       for k, v in roles.items()}}
    if named["s_inhibition"] and named["name_movers"]:
        out["ioi_circuit"]["name_movers_with_s_inhibition_ablated"] = {
            k: round(v, 3) for k, v in P.ablated_name_mover_attention(model, batches, named["s_inhibition"],
                                                                      named["name_movers"]).items()}
    print(f"IOI done {time.time() - t0:.0f}s", flush=True)

    out["facts_corpus_heldout_order_countries"] = fact_metrics(model, corpus.fact_eval("heldout"))["facts_top1"]
    out["facts_corpus_heldout_order_towns"] = fact_metrics(model, corpus.fact_eval("heldout", "towns"))["facts_top1"]
    out["facts_corpus_train_orders_countries"] = fact_metrics(model, corpus.fact_eval("train"))["facts_top1"]
    out["facts_hand_phrasings"] = P.fact_probe_scores(model, corpus, probes["facts"]["phrasings"])

    pool = token_pool(tok)
    filler = held_out_text_rows(corpus, tok, model.cfg.n_ctx, 64)
    english = english_rows(model, model.cfg.n_ctx)
    out["copy_accuracy_corpus_text"] = {d: round(copy_accuracy(model, filler, d, token_pool=pool, seed=d), 3)
                                        for d in (8, 16, 32, 64, 96, 112)}
    out["copy_accuracy_hand_english"] = {d: round(copy_accuracy(model, english, d, token_pool=pool, seed=d), 3)
                                         for d in (16, 64, 96, 112)}
    print(f"facts, copies done {time.time() - t0:.0f}s", flush=True)

    traced = corpus.fact_eval("heldout")[::5][:24]
    out["fact_tracing"] = P.fact_tracing(model, traced, samples=10)
    out["fact_tracing"]["control_ioi_name"] = P.ioi_name_control(model, batches, samples=5, per_batch=1)
    print(f"tracing done {time.time() - t0:.0f}s", flush=True)

    out["steering"] = steering_sweep(model)
    if rome:
        out["rome"] = rome_figures(model, corpus)
    print(f"all done {time.time() - t0:.0f}s", flush=True)
    return out


@torch.no_grad()
def steering_sweep(model) -> dict:
    """Spain-minus-France steering vectors (mean difference at the last token) added at the last position of each
    layer's resid_pre and resid_mid: logit(Madrid) - logit(Paris) after prompts about France never used to build
    the vector. Where the flip happens is where the country is read at the last token."""
    from minimech.analysis import steer, steering_vector

    build = (["Spain's capital is", "The capital of Spain is"], ["France's capital is", "The capital of France is"])
    tests = ["In France, the capital city is", "France's capital city is", "The capital city of France is"]
    madrid, paris = model.to_single_token(" Madrid"), model.to_single_token(" Paris")

    def diff():  # one prompt at a time, so position -1 is each prompt's last token
        logits = torch.stack([model(model.to_tokens(t))[0, -1] for t in tests])
        return round((logits[:, madrid] - logits[:, paris]).mean().item(), 2)

    out = {"unsteered": diff()}
    for layer in range(model.cfg.n_layers):
        for kind in ("hook_resid_pre", "hook_resid_mid"):
            hook = f"blocks.{layer}.{kind}"
            v = steering_vector(model, *build, hook=hook)
            with steer(model, hook, v, positions=-1):
                out[hook] = diff()
    return {"madrid_minus_paris": out, "method": "steering_vector(Spain prompts, France prompts) at each hook, "
            "added at each prompt's last token (coeff 1); mean logit(Madrid) - logit(Paris) over three France "
            "prompts"}


def rome_figures(model, corpus) -> dict:
    from minimech.analysis import rome_edit

    facts = corpus.fact_eval("all")
    edits = []
    for relation, subject, new in ROME_EDITS:
        prompt = next(f.prompt for f in facts if f.subject == subject and f.relation == relation
                      and f.paraphrase.endswith("/0") and "subject_first" in f.paraphrase)
        r = rome_edit(model, prompt, subject, new, facts=facts)  # layer: the card's traced fact layer
        edits.append({"prompt": prompt, "new": new, "layer": r.layer, "prompt_new": [round(x, 3) for x in r.prompt_new],
                      "paraphrase_top1": [round(x, 3) for x in r.paraphrase_top1],
                      "same_subject": [round(x, 3) for x in r.same_subject],
                      "other_subjects": [round(x, 3) for x in r.specificity]})
    return {"edits": edits, "method": "minimech.analysis.rome_edit at the card's fact layer, corpus key covariance; "
                                      "(before, after) pairs: P(new) on the prompt, top-1 share of the new answer on "
                                      "the fact's other phrasings, top-1 accuracy on the subject's other relations "
                                      "and on every other subject's facts"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--no-rome", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = minimech.load(args.model)
    figures = measure(model, corpus_for(model), rome=not args.no_rome)
    print(json.dumps(figures, indent=1))
    if not args.no_write:
        path = Path(args.model) / "card.json"
        card = json.loads(path.read_text())
        card["probes"] = figures
        path.write_text(json.dumps(card, indent=1))


if __name__ == "__main__":
    main()
