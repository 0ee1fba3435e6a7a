"""Recipes for minimech's shipped models: which config, which data, how long, which metrics.

    minimech train attn-only-2l            # the recipe as shipped (seed 0)
    minimech train attn-only-2l --steps 600 --seed 1 --out models/m

A recipe is data, not code: `build_data` turns it into token rows, `evaluator` into the phenomenon metrics logged
during training, and `train_recipe` into a model saved with a card (config, vocabulary, corpus, seed, steps, wall
time, torch version, metrics over training and final, sha256). The same seed gives the same data and the same
initialisation; CPU float results can still differ across torch versions and thread counts.
"""

from __future__ import annotations

import platform
import random
import time
from dataclasses import asdict, dataclass, field, replace

import torch

from ..config import GPTConfig
from ..errors import MinimechError
from ..model import GPT
from ..tokenizer import Tokenizer, load_encoding
from .corpus import Corpus, build_vocab, induction_rows, pack_documents
from .evaluate import fact_metrics, induction_metrics, ioi_metrics
from .report import mechanism_report
from .train import TrainLog, TrainSettings, train


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    config: dict  # GPTConfig fields; d_vocab comes from the compact vocabulary
    settings: TrainSettings
    documents: int = 0  # corpus documents (IOI, facts, narrative), packed into rows of n_ctx tokens
    mix: dict = field(default_factory=dict)  # kinds of documents and their weights (see Corpus.training_documents)
    induction_rows: int = 0  # rows of English with chunks of random tokens copied once (-1: chunks in every row)
    induction: dict = field(default_factory=dict)  # chunk_len, n_chunks, gap for induction_rows
    metrics: tuple = ("induction",)  # which phenomenon metrics to log: induction, ioi, facts
    random_names: float = 0.0  # fraction of IOI documents whose names become random tokens (see build_data)


RECIPES: dict[str, Recipe] = {}


def recipe(r: Recipe) -> Recipe:
    RECIPES[r.name] = r
    return r


recipe(Recipe(
    name="attn-only-2l",
    description="2 layers, attention only: induction heads from short chunks of random tokens, each copied once "
                "at a random gap, written into rows of simple English",
    config=dict(n_layers=2, d_model=64, n_heads=2, n_ctx=64, attn_only=True),  # 2 heads: induction is not split
    settings=TrainSettings(steps=45000, batch_size=8, lr=2e-3, min_lr_ratio=0.2, warmup=100, eval_every=500,
                           weight_decay=0.01),
    documents=40_000,
    mix={"ioi": 0.3, "facts": 0.2, "narrative": 0.5},
    induction_rows=-1,  # -1: write the chunks into every row of packed English (no separate random rows)
    induction=dict(chunk_len=(4, 12), n_chunks=(2, 4), gap=(0, 20)),
    metrics=("induction",),
))

recipe(Recipe(
    name="mini-4l",
    description="4 layers with MLPs: IOI, factual recall and induction on one small English corpus",
    config=dict(n_layers=4, d_model=64, n_heads=4, n_ctx=64),
    # Tied embeddings (W_U = W_E^T, as GPT-2): copying a token then needs no per-token weights, so IOI carries over
    # to names never seen in an IOI sentence (untied, held-out names scored ~0 while training names scored 11).
    settings=TrainSettings(steps=30000, batch_size=8, lr=2e-3, warmup=200, eval_every=1000, weight_decay=0.01,
                           tie_embeddings=True),
    documents=150_000,
    mix={"ioi": 0.6, "facts": 0.2, "narrative": 0.2},
    random_names=0.5,
    induction_rows=40_000,  # rows of narrative English with chunks of random tokens copied at random gaps
    induction=dict(chunk_len=(4, 12), n_chunks=(2, 4), gap=(0, 20)),
    metrics=("induction", "ioi", "facts"),
))


def get(name: str) -> Recipe:
    if name not in RECIPES:
        raise MinimechError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def build_data(r: Recipe, seed: int) -> tuple[torch.Tensor, Tokenizer, Corpus]:
    """Token rows [n_rows, n_ctx] (shuffled by the trainer), the compact tokenizer and the corpus they came from.

    Induction rows are rows of packed narrative English into which chunks of random tokens (drawn from the whole
    vocabulary, held-out names included) are written and copied once at a random gap.
    induction_rows=-1 writes the chunks into every row of the packed documents instead.
    """
    corpus = Corpus(seed=0)  # the held-out split is fixed across seeds: the shipped evaluations depend on it
    tokenizer = Tokenizer(build_vocab(corpus.vocab_texts(), load_encoding()))
    n_ctx, parts = r.config["n_ctx"], []

    def packed(n_docs: int, mix: dict, doc_seed: int) -> torch.Tensor:
        pairs = corpus.generate(n_docs, seed=doc_seed, mix=mix)
        docs = [tokenizer.encode(doc) for doc, _ in pairs]
        if r.random_names:
            docs = randomise_names(docs, [m["kind"] for _, m in pairs], corpus, tokenizer, r.random_names, doc_seed)
        return pack_documents(docs, n_ctx, tokenizer.eot_id)

    rows = packed(r.documents, r.mix, seed) if r.documents else None
    if r.induction_rows == -1:
        return with_chunks(rows, tokenizer, seed, r.induction), tokenizer, corpus
    if rows is not None:
        parts.append(rows)
    if r.induction_rows:
        filler = packed(r.induction_rows * 2, {"narrative": 1.0}, seed + 10_000)[: r.induction_rows]
        parts.append(with_chunks(filler, tokenizer, seed + 1, r.induction))
    return torch.cat(parts), tokenizer, corpus


def randomise_names(docs: list[list[int]], kinds: list[str], corpus: Corpus, tokenizer: Tokenizer,
                    fraction: float, seed: int) -> list[list[int]]:
    """In `fraction` of the IOI documents, replace each name by a random token (the same token for every mention
    within the document), drawn from the whole vocabulary except the held-out names.

    Why: an IOI circuit that picks names by features only the training names have learned in IOI sentences cannot
    generalise to a held-out name (seen only in stories). With arbitrary tokens in the name slots, what pays is the
    algorithm: find the token that the sentence's structure marks as the indirect object and copy it. Held-out names
    still never occur in an IOI sentence.
    """
    rng = random.Random(seed)
    names = {tokenizer.to_single_token(" " + n.strip()) for n in corpus.names_train}
    held = {tokenizer.to_single_token(" " + n.strip()) for n in corpus.names_heldout}
    pool = [t for t in token_pool(tokenizer).tolist() if t not in held]
    out = []
    for doc, kind in zip(docs, kinds):
        if kind == "ioi" and rng.random() < fraction:
            mapping: dict[int, int] = {}
            doc = [mapping.setdefault(t, rng.choice(pool)) if t in names else t for t in doc]
        out.append(doc)
    return out


def with_chunks(filler: torch.Tensor, tokenizer: Tokenizer, seed: int, induction: dict) -> torch.Tensor:
    return induction_rows(len(filler), filler.shape[1], token_pool(tokenizer), seed=seed, bos_id=tokenizer.bos_id,
                          filler=filler, **induction)


def token_pool(tokenizer: Tokenizer) -> torch.Tensor:
    """Every model id but <|endoftext|> and the unknown slot: what random-token rows and probes draw from."""
    special = {tokenizer.eot_id, tokenizer.unk_id}
    return torch.tensor([i for i in range(tokenizer.n_vocab) if i not in special])


def evaluator(r: Recipe, corpus: Corpus, tokenizer: Tokenizer):
    """metrics(model) -> dict of floats, on held-out data only (held-out names, frames and paraphrases)."""
    ioi = corpus.ioi_eval(200, seed=1) if "ioi" in r.metrics else None
    ioi_train_names = corpus.ioi_eval(100, seed=2, names="train") if "ioi" in r.metrics else None
    facts = corpus.fact_eval("heldout") if "facts" in r.metrics else None
    pool = token_pool(tokenizer)

    def metrics(model: GPT) -> dict[str, float]:
        out = induction_metrics(model, token_pool=pool) if "induction" in r.metrics else {}
        if ioi:
            out.update(ioi_metrics(model, ioi))
            out["ioi_logit_diff_train_names"] = ioi_metrics(model, ioi_train_names)["ioi_logit_diff"]
        if facts:
            out.update(fact_metrics(model, facts))
        return out

    return metrics


def train_recipe(name: str, steps: int | None = None, seed: int = 0, progress: bool = True,
                 threads: int | None = None, **overrides) -> tuple[GPT, dict]:
    """Train a recipe from scratch; returns the model and its card (without sha256, which save() adds).

    overrides: TrainSettings fields to change (e.g. eval_every=50); the card records the settings used."""
    r = get(name)
    if threads:
        torch.set_num_threads(threads)
    settings = replace(r.settings, seed=seed, **({"steps": steps} if steps else {}), **overrides)
    data, tokenizer, corpus = build_data(r, seed)
    cfg = GPTConfig(**r.config, d_vocab=tokenizer.n_vocab)
    model = GPT(cfg, tokenizer=tokenizer, seed=seed)
    log: TrainLog = train(model, data, settings, evaluator(r, corpus, tokenizer), progress=progress)
    card = {
        "name": r.name, "description": r.description,
        "recipe": {"name": r.name, "seed": seed, "settings": asdict(settings), "documents": r.documents,
                   "mix": r.mix, "random_names": r.random_names, "induction_rows": r.induction_rows,
                   "induction": {k: list(v) for k, v in r.induction.items()}, "rows": len(data)},
        "corpus": corpus.describe(),
        "training": {"steps": settings.steps, "tokens_seen": settings.steps * settings.batch_size * cfg.n_ctx,
                     "wall_time_s": round(log.wall_time_s, 1), "threads": torch.get_num_threads(),
                     "torch": torch.__version__, "python": platform.python_version(),
                     "date": time.strftime("%Y-%m-%d")},
        "history": log.history,
        "metrics": {k: v for k, v in log.history[-1].items() if k not in ("step", "lr")},
        "n_params": sum(p.numel() for p in model.parameters()),
        "mechanisms": mechanism_report(model, corpus, token_pool(tokenizer), r.metrics),
    }
    return model, card
