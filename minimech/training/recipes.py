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
from .evaluate import copy_accuracy, fact_metrics, induction_metrics, ioi_metrics
from .spans import copy_spans
from .stories import StoryCorpus
from .report import mechanism_report
from .train import Phase, TrainLog, TrainSettings, train


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
    # Speed-ups of the phase change (see build_phases): train on rows this many tokens long for the first `steps`
    # steps, then on full rows; leave the unpredictable targets (fresh random chunk tokens) out of the loss; and
    # initialise attention weights with this std instead of GPT-2's 0.02 (tuned for d_model 768).
    short_rows: tuple | None = None  # (row_len, steps)
    short_batch: int | None = None  # rows per step while the rows are short (None: settings.batch_size)
    mask_fresh: bool = False
    attn_init_std: float | None = None
    pos_init_std: float | None = None  # and position embeddings with this std (see fresh_model)
    corpus: str = "templates"  # "templates": corpus.Corpus (mini-4l, attn-only-2l); "stories": stories.StoryCorpus
    copies: dict = field(default_factory=dict)  # fraction, chunk_len: repeated spans at log-uniform distances


RECIPES: dict[str, Recipe] = {}


def recipe(r: Recipe) -> Recipe:
    RECIPES[r.name] = r
    return r


recipe(Recipe(
    name="attn-only-2l",
    description="2 layers, attention only: induction heads from short chunks of random tokens, each copied once "
                "at a random gap, written into rows of simple English",
    config=dict(n_layers=2, d_model=64, n_heads=2, n_ctx=64, attn_only=True),  # 2 heads: induction is not split
    settings=TrainSettings(steps=12000, batch_size=32, lr=5e-3, min_lr_ratio=0.2, warmup=100, eval_every=250,
                           weight_decay=0.01, tie_embeddings=True),
    documents=40_000,
    mix={"ioi": 0.3, "facts": 0.2, "narrative": 0.5},
    induction_rows=-1,  # -1: write the chunks into every row of packed English (no separate random rows)
    induction=dict(chunk_len=(4, 10), n_chunks=(1, 1), gap=(0, 6)),
    metrics=("induction",),
    # The phase change comes after ~1,250 steps of 32 rows x 32 tokens (1.3 M tokens, ~40 s on 2 cores) instead of
    # ~22,000 steps of 8 x 64 (11 M tokens) with full rows, GPT-2's init and every target in the loss: see
    # build_phases and fresh_model.
    short_rows=(32, 4000),
    mask_fresh=True,
    attn_init_std=0.125,  # 1/sqrt(d_model)
    pos_init_std=0.06,
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

recipe(Recipe(
    name="story-4l",
    description="4 layers with MLPs, n_ctx 128, a 7k-token vocabulary: IOI in many sentence shapes, facts in several "
                "word orders, copying at every distance, on a corpus of stories and everyday English",
    config=dict(n_layers=4, d_model=128, n_heads=4, n_ctx=128),
    settings=TrainSettings(steps=10000, batch_size=16, lr=2.5e-3, warmup=150, eval_every=500, weight_decay=0.01,
                           tie_embeddings=True),
    documents=250_000,
    corpus="stories",
    mix={"ioi": 0.35, "story": 0.15, "facts": 0.3, "english": 0.2},
    random_names=0.2,
    copies=dict(fraction=1.0, chunk_len=(4, 10)),
    metrics=("induction", "copy", "ioi", "facts"),
    # Rows of 32 tokens, 32 per step, for the first 5,000 steps (a chunk copied in every row), then 16 rows of 128.
    # Attention weights at std 0.15, not 1/sqrt(d_model) = 0.088: with 0.088 the previous-token score stayed at 0.35
    # and induction crept to 0.17 by step 5,000. Peak lr 2.5e-3: with 5e-3 on an 11,000-step cosine the
    # previous-token head was still at 0.28 at step 4,000; 5e-3 on an 8,000-step one formed induction at the same
    # step as 2.5e-3 but with a higher loss (3.63 against 2.59 at step 3,500). 10,000 steps rather than 8,000: IOI
    # and facts come in the 128-token phase (8,000: IOI 3.16, hand-written frames 1.45; 10,000: 8.2 and 3.76).
    short_rows=(32, 5000),
    short_batch=32,
    mask_fresh=True,
    attn_init_std=0.15,
    pos_init_std=0.06,
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
    phases, tokenizer, corpus = build_phases(replace(r, short_rows=None, mask_fresh=False), seed)
    return phases[0].rows, tokenizer, corpus


def build_phases(r: Recipe, seed: int) -> tuple[list[Phase], Tokenizer, Corpus]:
    """The training data as phases: with r.short_rows = (row_len, steps), rows of row_len tokens for the first
    `steps` steps, then rows of n_ctx tokens; else one phase of n_ctx rows. The documents are generated once and
    packed into rows of n_ctx tokens; the short phase cuts those rows into pieces (cut_rows).

    Why short rows first: an induction head needs a previous-token head in layer 0 and a head in layer 1 that
    matches on what it wrote; neither pays without the other, and with uniform attention over L positions each is
    rewarded ~1/L of the time, so the plateau before the phase change grows roughly as L^2 (Musat et al. 2025,
    "On the emergence of induction heads for in-context learning"). Once the circuit exists, it carries over to
    positions the short rows never reached within a few hundred steps of full rows.

    With r.mask_fresh, each phase carries `targets`: False where the next token is a fresh random chunk token (or
    a copy's first token, which follows a random gap), so the loss counts only targets that can be predicted. The
    fresh tokens are noise by construction; their gradients slow the phase change ~2x. The price: the model never
    learns to hedge on random tokens, so it pays more than a uniform guess for them (attn-only-2l: 12.4 nats per
    token of a random sequence's first copy, against ln(1378) = 7.2). Training the full rows on every target instead
    cost the induction score (0.80-0.83 at 6,500 steps, below the 0.9 ordered; two seeds).
    """
    corpus = make_corpus(r)
    tokenizer = Tokenizer(build_vocab(corpus.vocab_texts(), load_encoding()))
    documents, packed = {}, {}

    def docs(n_docs: int, mix: dict, doc_seed: int) -> list[list[int]]:
        if doc_seed not in documents:
            pairs = corpus.generate(n_docs, seed=doc_seed, mix=mix)
            out = [tokenizer.encode(doc) for doc, _ in pairs]
            if r.random_names:
                kinds = [m["kind"] for _, m in pairs]
                out = randomise_names(out, kinds, corpus, tokenizer, r.random_names, doc_seed)
            documents[doc_seed] = out
        return documents[doc_seed]

    def phase(row_len: int, until: int | None, chunk_seed: int, batch_size: int | None = None) -> Phase:
        def pack(n_docs: int, mix: dict, doc_seed: int) -> torch.Tensor:  # rows of n_ctx, cut into row_len pieces
            if doc_seed not in packed:
                packed[doc_seed] = pack_documents(docs(n_docs, mix, doc_seed), r.config["n_ctx"], tokenizer.eot_id)
            return cut_rows(packed[doc_seed], row_len, tokenizer.bos_id)

        rows = pack(r.documents, r.mix, seed) if r.documents else None
        parts = []
        if r.copies:
            parts.append(copy_spans(rows, token_pool(tokenizer), chunk_seed, r.copies["fraction"],
                                    tuple(r.copies["chunk_len"])))
        elif r.induction_rows == -1:
            parts.append(with_chunks(rows, tokenizer, chunk_seed, r.induction))
        else:
            if rows is not None:
                parts.append((rows, [[] for _ in range(len(rows))]))
            if r.induction_rows:
                filler = pack(r.induction_rows * 2, {"narrative": 1.0}, seed + 10_000)[: r.induction_rows]
                parts.append(with_chunks(filler, tokenizer, chunk_seed + 1, r.induction))
        rows = torch.cat([p[0] for p in parts])
        spans = [s for p in parts for s in p[1]]
        return Phase(rows, fresh_targets_mask(spans, row_len) if r.mask_fresh else None, until, batch_size)

    phases = []
    if r.short_rows:
        row_len, steps = r.short_rows
        phases.append(phase(row_len, steps, seed + 20_000, r.short_batch))
    phases.append(phase(r.config["n_ctx"], None, seed))
    return phases, tokenizer, corpus


def make_corpus(r: Recipe):
    """The recipe's corpus. Its held-out split is fixed across training seeds (seed 0): the shipped evaluations
    depend on it."""
    return StoryCorpus(seed=0) if r.corpus == "stories" else Corpus(seed=0)


def cut_rows(rows: torch.Tensor, row_len: int, bos_id: int) -> torch.Tensor:
    """Rows [n, n_ctx] (BOS first) cut into rows [n * k, row_len]: each row's text after its BOS in pieces of
    row_len - 1 tokens, each after a BOS; a last piece that does not fill a row is dropped. Packed text is cut, not
    packed again at row_len, so the short rows hold the same running text, not only the beginnings of documents."""
    if row_len == rows.shape[1]:
        return rows
    body, width = rows[:, 1:], row_len - 1
    k = body.shape[1] // width
    pieces = body[:, : k * width].reshape(-1, width)  # [n * k, row_len - 1]
    return torch.cat([torch.full((len(pieces), 1), bos_id, dtype=rows.dtype), pieces], dim=1)


def fresh_targets_mask(spans: list[list[tuple]], row_len: int) -> torch.Tensor:
    """[n_rows, row_len - 1] bool, for the loss's targets (tokens 1..): False where the token is a fresh random
    chunk token or the first token of its copy (which follows a random gap), True elsewhere."""
    mask = torch.ones(len(spans), row_len, dtype=torch.bool)
    for r, row in enumerate(spans):
        for start, length, copy in row:
            mask[r, start: start + length] = False
            mask[r, copy] = False
    return mask[:, 1:]


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


def with_chunks(filler: torch.Tensor, tokenizer: Tokenizer, seed: int, induction: dict):
    """(rows with the chunks written in, each row's [(start, length, copy_start)])."""
    return induction_rows(len(filler), filler.shape[1], token_pool(tokenizer), seed=seed, bos_id=tokenizer.bos_id,
                          filler=filler, return_spans=True, **induction)


def token_pool(tokenizer: Tokenizer) -> torch.Tensor:
    """Every model id but <|endoftext|> and the unknown slot: what random-token rows and probes draw from."""
    special = {tokenizer.eot_id, tokenizer.unk_id}
    return torch.tensor([i for i in range(tokenizer.n_vocab) if i not in special])


def evaluator(r: Recipe, corpus: Corpus, tokenizer: Tokenizer):
    """metrics(model) -> dict of floats, on held-out data only (held-out names, frames and paraphrases)."""
    ioi = corpus.ioi_eval(200, seed=1) if "ioi" in r.metrics else None
    ioi_train_names = corpus.ioi_eval(100, seed=2, names="train") if "ioi" in r.metrics else None
    facts = corpus.fact_eval("heldout") if "facts" in r.metrics else None
    towns = corpus.fact_eval("heldout", subjects="towns")[::4] if "facts" in r.metrics and r.corpus == "stories" \
        else None
    pool = token_pool(tokenizer)
    filler = held_out_text_rows(corpus, tokenizer, r.config["n_ctx"], 32) if "copy" in r.metrics else None

    def metrics(model: GPT) -> dict[str, float]:
        out = induction_metrics(model, token_pool=pool) if "induction" in r.metrics else {}
        if filler is not None:
            out["copy_accuracy_d96"] = copy_accuracy(model, filler, 96, token_pool=pool, seed=5)
            out["copy_accuracy_d16"] = copy_accuracy(model, filler, 16, token_pool=pool, seed=6)
        if towns:
            out["town_facts_top1"] = fact_metrics(model, towns)["facts_top1"]
        if ioi:
            out.update(ioi_metrics(model, ioi))
            out["ioi_logit_diff_train_names"] = ioi_metrics(model, ioi_train_names)["ioi_logit_diff"]
        if facts:
            out.update(fact_metrics(model, facts))
        return out

    return metrics


def held_out_text_rows(corpus, tokenizer: Tokenizer, n_ctx: int, n_rows: int) -> torch.Tensor:
    """[n_rows, n_ctx - 1] model ids of corpus documents generated with a seed no training run uses (no BOS):
    running text to embed copy probes in."""
    docs = [tokenizer.encode(d) for d in corpus.training_documents(20 * n_rows, seed=99_999)]
    rows = pack_documents(docs, n_ctx, tokenizer.eot_id)  # [n, n_ctx], eot first
    return rows[:n_rows, 1:]


def fresh_model(r: Recipe, tokenizer: Tokenizer, seed: int) -> GPT:
    """The recipe's model at initialisation: GPT-2's init, except attention weights at r.attn_init_std and the
    position embeddings at r.pos_init_std, where set.

    Why: GPT-2's N(0, 0.02) was chosen for d_model 768, where it is ~0.55/sqrt(d_model); at d_model 64 it makes
    every attention product (QK, OV, and the two-head chains of an induction circuit) ~3.5x smaller per factor,
    which lengthens the plateau before the phase change. Larger position embeddings favour the classic circuit:
    with 0.02, half of attn-only-2l's seeds built induction without a previous-token head instead (a layer-0
    duplicate-token head and a positional shift in layer 1: Q-composition), which fails past the short rows."""
    model = GPT(GPTConfig(**r.config, d_vocab=tokenizer.n_vocab), tokenizer=tokenizer, seed=seed)
    if r.attn_init_std:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for block in model.blocks:
                for w in (block.attn.W_Q, block.attn.W_K, block.attn.W_V, block.attn.W_O):
                    w.normal_(0, r.attn_init_std, generator=gen)
    if r.pos_init_std:
        with torch.no_grad():
            model.pos_embed.W_pos.normal_(0, r.pos_init_std, generator=torch.Generator().manual_seed(seed + 2))
    return model


def tokens_seen(phases: list[Phase], settings: TrainSettings) -> int:
    seen, begin = 0, 0
    for p in phases:
        end = settings.steps if p.until is None else min(p.until, settings.steps)
        seen += max(0, end - begin) * (p.batch_size or settings.batch_size) * p.rows.shape[1]
        begin = max(begin, end)
    return seen


def train_recipe(name: str, steps: int | None = None, seed: int = 0, progress: bool = True,
                 threads: int | None = None, **overrides) -> tuple[GPT, dict]:
    """Train a recipe from scratch; returns the model and its card (without sha256, which save() adds).

    overrides: TrainSettings fields to change (e.g. eval_every=50); the card records the settings used."""
    r = get(name)
    if threads:
        torch.set_num_threads(threads)
    # Fewer steps than the recipe's run the recipe's first steps (same lr schedule), not a compressed recipe.
    settings = replace(r.settings, seed=seed, **({"steps": steps} if steps else {}), **overrides)
    if settings.steps < r.settings.steps and "schedule_steps" not in overrides:
        settings = replace(settings, schedule_steps=r.settings.steps)
    phases, tokenizer, corpus = build_phases(r, seed)
    model = fresh_model(r, tokenizer, seed)
    log: TrainLog = train(model, phases, settings, evaluator(r, corpus, tokenizer), progress=progress)
    card = {
        "name": r.name, "description": r.description,
        "recipe": {"name": r.name, "seed": seed, "settings": asdict(settings), "documents": r.documents,
                   "mix": r.mix, "random_names": r.random_names, "induction_rows": r.induction_rows,
                   "induction": {k: list(v) for k, v in r.induction.items()},
                   "corpus": r.corpus, "copies": {k: (list(v) if isinstance(v, tuple) else v)
                                                  for k, v in r.copies.items()},
                   "rows": [len(p.rows) for p in phases], "row_lengths": [p.rows.shape[1] for p in phases],
                   "short_rows": list(r.short_rows) if r.short_rows else None, "short_batch": r.short_batch,
                   "mask_fresh": r.mask_fresh,
                   "attn_init_std": r.attn_init_std, "pos_init_std": r.pos_init_std},
        "corpus": corpus.describe(),
        "training": {"steps": settings.steps, "tokens_seen": tokens_seen(phases, settings),
                     "wall_time_s": round(log.wall_time_s, 1), "cpu_time_s": round(log.cpu_time_s, 1),
                     "threads": torch.get_num_threads(),
                     "torch": torch.__version__, "python": platform.python_version(),
                     "date": time.strftime("%Y-%m-%d")},
        "history": log.history,
        "metrics": {k: v for k, v in log.history[-1].items() if k not in ("step", "lr")},
        "n_params": sum(p.numel() for p in model.parameters()),
        "mechanisms": mechanism_report(model, corpus, token_pool(tokenizer), r.metrics),
    }
    return model, card
