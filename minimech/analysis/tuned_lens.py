"""The tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the Tuned Lens").

The logit lens reads the residual stream before block l as if it were the final one. But each layer's stream lives in
a slightly different basis (later blocks rotate, rescale and shift it), so early points read badly. The tuned lens
learns, for each layer l, an affine *translator* x -> x A_l + b_l into the final stream's basis, then reads it with
the model's own ln_final and unembedding, which stay frozen:

    tuned = train_tuned_lens(model)                      # A_l = identity, b_l = 0 at the start: the logit lens
    logit_lens(model, tokens, lens=tuned)                # a LensResult, like the logit lens (plots work for both)
    lens_kl(model, tokens), lens_kl(model, tokens, lens=tuned)   # [n_layers + 1] mean KL(final || point), nats

Each translator is trained to minimise KL(final || translated) averaged over positions of text from minimech's own
corpus (training/corpus.py), with AdamW; the held-out text is generated with other seeds and shares no document with
the training text. The final point needs no translator (it is the final stream). A_l is stored as A_l - I (`W`), as
in the paper's code (a residual translator x + x W + b), so weight decay pulls it towards the logit lens.

Saved as NAME.safetensors (W [layer, d_model, d_model], b [layer, d_model]) + NAME.json: layer count, d_model, the
sha256 of the model's weights (model_sha256() below) and the training figures. load() refuses another model's lens.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn

from ..errors import MinimechError
from .lens import LensResult, final_points, kl_to, lens_kl, logit_lens, positions_per_chunk, read_points

FORMAT = "minimech-tuned-lens"
LENS_DOCS, HELDOUT_DOCS = 800, 400  # corpus documents for training and measuring (~570 and ~280 rows of 64)
FIGURE_TOKENS = 8192  # tokens of training and of held-out text the KL figures in the JSON are measured on
FILE = "tuned_lens.safetensors"  # the name beside a shipped model: weights/NAME/tuned_lens.safetensors (+ .json)


class TunedLensError(MinimechError, ValueError):
    """A tuned lens that is missing, unreadable, or belongs to another model."""


def model_sha256(model) -> str:
    """sha256 of a model's weights as float32 (names, shapes and values, in name order): what a lens was trained for.

    float32, so the same weights loaded in float64 match; fold_ln and other transforms change it, as they should
    (they change the residual stream the translators were fitted to).
    """
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{list(data.shape)};".encode())
        h.update(data.numpy().tobytes())
    return h.hexdigest()


def _sha256_file(path: Path) -> str:
    from ..loading import sha256_file

    return sha256_file(path)


class TunedLens(nn.Module):
    """One affine translator per layer, for the points L0_pre .. L{n-1}_pre; the final point passes unchanged."""

    def __init__(self, n_layers: int, d_model: int, model_sha256: str | None = None, info: dict | None = None):
        super().__init__()
        if n_layers < 1 or d_model < 1:
            raise ValueError(f"n_layers and d_model must be positive, got {n_layers} and {d_model}")
        self.n_layers, self.d_model = n_layers, d_model
        self.W = nn.Parameter(torch.zeros(n_layers, d_model, d_model))  # [layer, d_model, d_model]: A_l - identity
        self.b = nn.Parameter(torch.zeros(n_layers, d_model))  # [layer, d_model]
        self.model_sha256 = model_sha256
        self.info = dict(info or {})  # training settings and figures, written to the JSON

    @classmethod
    def for_model(cls, model) -> "TunedLens":
        """An untrained lens for `model` (identity translators: it reads exactly like the logit lens)."""
        return cls(model.cfg.n_layers, model.cfg.d_model, model_sha256(model))

    @property
    def A(self) -> torch.Tensor:  # [layer, d_model, d_model]: translated = x @ A[l] + b[l]
        return self.W + torch.eye(self.d_model, device=self.W.device, dtype=self.W.dtype)

    def translate(self, points: torch.Tensor) -> torch.Tensor:
        """points [n_layers + 1, batch, (pos,) d_model], as cache.accumulated_resid stacks them -> the same shape."""
        if points.shape[0] != self.n_layers + 1 or points.shape[-1] != self.d_model:
            raise TunedLensError(f"expected points [{self.n_layers + 1}, ..., {self.d_model}] (L0_pre .. final), got "
                                 f"{list(points.shape)}: pass cache.accumulated_resid(incl_mid=False).tensor")
        early = points[:-1]  # [layer, batch, (pos,) d_model]
        flat = early.reshape(self.n_layers, -1, self.d_model)  # [layer, batch * (pos), d_model]
        moved = flat + flat @ self.W.to(points.dtype) + self.b.to(points.dtype)[:, None]  # x A_l + b_l, A_l = I + W_l
        return torch.cat([moved.reshape(early.shape), points[-1:]])

    forward = translate

    def check_model(self, model) -> None:
        """Raise TunedLensError unless the lens has `model`'s shape (load() also checks the weights' sha256)."""
        if (model.cfg.n_layers, model.cfg.d_model) != (self.n_layers, self.d_model):
            raise TunedLensError(f"this tuned lens is for a model with {self.n_layers} layers and d_model "
                                 f"{self.d_model}, but the model has {model.cfg.n_layers} and {model.cfg.d_model}: "
                                 "train one for this model with train_tuned_lens(model)")

    def lens(self, model, tokens, pos: int | None = -1, k: int = 5) -> LensResult:
        """The tuned lens of `tokens`: logit_lens(model, tokens, pos, k, lens=self)."""
        return logit_lens(model, tokens, pos=pos, k=k, lens=self)

    def extra_repr(self) -> str:
        sha = (self.model_sha256 or "unknown")[:12]
        return f"{self.n_layers} translators, d_model {self.d_model}, for model sha256 {sha}..."

    # ---- files -----------------------------------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write path (a .safetensors file, or a folder: folder/tuned_lens.safetensors) and the .json beside it."""
        from safetensors.torch import save_file

        path = _lens_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"W": self.W.detach().cpu().float().contiguous(), "b": self.b.detach().cpu().float().contiguous()}
        save_file(tensors, path, metadata={"format": FORMAT})
        os.chmod(path, 0o644)  # safetensors creates it owner-only
        meta = {"format": FORMAT, "version": 1, "n_layers": self.n_layers, "d_model": self.d_model,
                "model_sha256": self.model_sha256, "file_sha256": _sha256_file(path), **self.info}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, path.with_suffix(".json"))
        return path

    @classmethod
    def load(cls, path, model) -> "TunedLens":
        """Read a lens saved by save() and check that it was trained for `model` (same shape, same weights)."""
        from safetensors.torch import load_file

        path = _lens_path(path)
        meta_path, retrain = path.with_suffix(".json"), "train a new one with train_tuned_lens(model).save(path)"
        if not path.is_file() or not meta_path.is_file():
            missing = path if not path.is_file() else meta_path
            raise TunedLensError(f"no tuned lens at {path}: {missing} does not exist; {retrain}")
        try:
            meta = json.loads(meta_path.read_text())
            n_layers, d_model = int(meta["n_layers"]), int(meta["d_model"])
            if meta["format"] != FORMAT:
                raise ValueError(f"format is {meta['format']!r}, not {FORMAT!r}")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TunedLensError(f"{meta_path} is not a tuned lens description ({type(e).__name__}: {e}); "
                                 f"{retrain}") from None
        if meta.get("file_sha256") != _sha256_file(path):
            raise TunedLensError(f"{path} is damaged or was changed: its sha256 differs from the one in "
                                 f"{meta_path.name}; restore it or {retrain}")
        lens = cls(n_layers, d_model, meta.get("model_sha256"),
                   {k: v for k, v in meta.items() if k not in ("format", "version", "n_layers", "d_model",
                                                               "model_sha256", "file_sha256")})
        lens.check_model(model)
        tensors = load_file(path)
        if set(tensors) != {"W", "b"} or tensors["W"].shape != lens.W.shape or tensors["b"].shape != lens.b.shape:
            raise TunedLensError(f"{path} holds {({k: list(v.shape) for k, v in tensors.items()})}, expected W "
                                 f"{list(lens.W.shape)} and b {list(lens.b.shape)}; {retrain}")
        actual = model_sha256(model)
        if lens.model_sha256 != actual:
            raise TunedLensError(f"{path} was trained for other weights (model sha256 {lens.model_sha256}) than this "
                                 f"model's ({actual}): a lens fits one model's residual stream, and transforms such "
                                 f"as fold_ln change it. Load it with the model it was made for, or {retrain}")
        with torch.no_grad():
            lens.W.copy_(tensors["W"])
            lens.b.copy_(tensors["b"])
        return lens.to(device=model.W_U.device)


def _lens_path(path) -> Path:
    path = Path(path)
    return path / FILE if path.is_dir() or not path.suffix else path.with_suffix(".safetensors")


def tuned_lens_path(model) -> Path:
    """Where a model's tuned lens lives: beside a shipped model, weights/NAME/tuned_lens.safetensors (NAME from the
    model card); for any other model, ./minimech-out/tuned-lens/NAME.safetensors (NAME: cfg.model_name, e.g. gpt2),
    where `minimech tuned-lens MODEL` saves it and `minimech lens --tuned --model MODEL` finds it."""
    from ..loading import shipped_models, weights_dir

    name = (getattr(model, "card", None) or {}).get("name")
    if name is not None and name in shipped_models():
        return weights_dir() / name / FILE
    name = name or model.cfg.model_name
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".") or "model"
    return Path("minimech-out") / "tuned-lens" / f"{safe}.safetensors"


def tuned_lens_for(model) -> TunedLens:
    """The tuned lens saved for this model where tuned_lens_path says (shipped beside a shipped model; for another
    model, where `minimech tuned-lens` saved it), checked against the model's weights."""
    path = tuned_lens_path(model)
    if not path.is_file():
        name = (getattr(model, "card", None) or {}).get("name") or model.cfg.model_name
        raise TunedLensError(f"no tuned lens saved for {name!r} ({path} does not exist): train one with "
                             f"`minimech tuned-lens {name}` (it saves there; --out FILE elsewhere, then `minimech lens "
                             f"--lens-file FILE`), or in Python train_tuned_lens(model).save({str(path)!r})")
    return TunedLens.load(path, model)


# ---- training ------------------------------------------------------------------------------------------------------

def lens_data(model, seed: int = 0, train_docs: int | None = None, heldout_docs: int | None = None):
    """Token rows (train [rows, n_ctx], held-out [rows, n_ctx]) of corpus text, packed like the training data.

    The documents mix kinds as the model's recipe did (the corpus default otherwise); held-out documents come from
    other corpus seeds and any that also occur in the training text are dropped.
    """
    from ..training.corpora import corpus_for
    from ..training.corpus import pack_documents

    train_docs = LENS_DOCS if train_docs is None else train_docs
    heldout_docs = HELDOUT_DOCS if heldout_docs is None else heldout_docs

    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "encode"):
        raise TunedLensError("the model has no tokenizer to encode corpus text with: pass tokens= and heldout= "
                             "(token rows [batch, pos]) to train_tuned_lens")
    mix = ((getattr(model, "card", None) or {}).get("recipe") or {}).get("mix") or None
    corpus = corpus_for(model)  # the model's own corpus (stories for story-4l)
    train = corpus.training_documents(train_docs, seed=1_000 + seed, mix=mix)
    seen = set(train)
    heldout = [d for d in corpus.training_documents(heldout_docs, seed=2_000 + seed, mix=mix) if d not in seen]
    n_ctx = model.cfg.n_ctx
    return tuple(pack_documents([tokenizer.encode(d) for d in docs], n_ctx, tokenizer.eot_id)
                 for docs in (train, heldout))


@torch.no_grad()
def collect_points(model, tokens: torch.Tensor, batch_size: int | None = None, progress: bool = False) -> torch.Tensor:
    """The lens points of every position: [n_layers + 1, rows * pos, d_model] (L0_pre .. final), run once, so that
    training steps cost a readout only, not a forward pass."""
    return final_points(model, tokens, batch_size, progress)


def _step_loss(model, lens: TunedLens, points: torch.Tensor) -> float:
    """Backpropagates the sum over layers of the mean KL(final || translated point) over points [n_points, n, d_model]
    into the lens (the model's weights are read detached), in chunks of positions whose log-probs fit
    lens.LOGITS_BYTES: the gradient of the whole batch, accumulated, in bounded memory. Returns the loss."""
    total = 0.0
    for chunk in points.split(positions_per_chunk(model, points.shape[0]), dim=1):
        log_probs = read_points(model, lens.translate(chunk))  # [n_points, chunk, d_vocab]
        kl = kl_to(log_probs[-1].detach(), log_probs[:-1])  # [n_layers, chunk]
        loss = kl.sum(1).sum() / points.shape[1]  # this chunk's share of the mean over positions
        loss.backward()
        total += loss.item()
    return total


def _kl_figures(model, lens: TunedLens, train: torch.Tensor, heldout: torch.Tensor, progress: bool) -> dict:
    # the same number of training and held-out tokens, FIGURE_TOKENS at most: on GPT-2 each token's figures cost
    # 13 x 50,257 log-probs per lens, so the whole held-out set would take longer than the training
    rows = max(1, FIGURE_TOKENS // train.shape[1])
    train, heldout = train[:rows], heldout[:rows]

    def rounded(t):
        return [round(x, 5) for x in t.tolist()]

    def kl(tokens, lens=None):
        return rounded(lens_kl(model, tokens, lens, progress=progress))

    return {"labels": [f"L{l}_pre" for l in range(lens.n_layers)] + ["final"],
            "logit_lens": {"train": kl(train), "heldout": kl(heldout)},
            "tuned_lens": {"train": kl(train, lens), "heldout": kl(heldout, lens)}}


def _fit(model, lens: TunedLens, points: torch.Tensor, steps: int, lr: float, weight_decay: float, batch_size: int,
         seed: int, progress: bool) -> None:
    """AdamW on the lens's translators, batch_size positions of points [n_points, n, d_model] a step."""
    from ..notebook import tqdm  # a widget in Jupyter, text elsewhere

    optimizer = torch.optim.AdamW(lens.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / steps)  # linear decay to 0
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc="tuned lens", disable=not progress)
    for _ in bar:
        # Positions drawn across all rows: less correlated than whole rows, so each step's gradient carries more
        picks = torch.randint(points.shape[1], (batch_size,), generator=gen).to(points.device)  # [batch]
        optimizer.zero_grad(set_to_none=True)
        loss = _step_loss(model, lens, points[:, picks])
        optimizer.step()
        schedule.step()
        bar.set_postfix(kl_sum=f"{loss:.3f}")


def train_tuned_lens(model, steps: int = 300, seed: int = 0, lr: float = 1e-2, batch_size: int = 256,
                     weight_decay: float = 1e-3, tokens: torch.Tensor | None = None,
                     heldout: torch.Tensor | None = None, progress: bool = True, save_to=None,
                     docs: int | None = None) -> TunedLens:
    """Fit one affine translator per layer of `model` (frozen) to minimise KL(final || translated), with AdamW.

    batch_size: positions per step, drawn from all training rows. tokens / heldout: token rows [rows, pos] to train
    on and to measure on; default lens_data(model, seed).
    Deterministic given seed (batches are drawn from a seeded generator; translators start at the identity).
    The lens's info holds the settings, wall time and KL per layer (train/held-out, logit and tuned lens).
    save_to: a path to save the lens to as soon as it is trained (before the KL figures, which take a while on a
    large model), and again with them. docs: corpus documents for lens_data (default LENS_DOCS, HELDOUT_DOCS;
    docs=N uses N and N // 2). Memory stays bounded on GPT-2-sized models (lens.LOGITS_BYTES, FORWARD_TOKENS).
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be at least 1, got {steps} and {batch_size}")
    if (tokens is None) != (heldout is None):
        raise ValueError("pass both tokens= and heldout= (train and held-out token rows), or neither")
    data = "token rows passed to train_tuned_lens"
    if tokens is None:
        train_docs, heldout_docs = (LENS_DOCS, HELDOUT_DOCS) if docs is None else (docs, max(1, docs // 2))
        tokens, heldout = lens_data(model, seed, train_docs, heldout_docs)
        data = (f"lens_data(model, seed={seed}): the model's corpus (corpus_for) documents, {train_docs} with corpus "
                f"seed {1_000 + seed} (train) and {heldout_docs} with seed {2_000 + seed} (held-out, minus any training "
                "document), mixed as the model's recipe, packed into rows of n_ctx tokens")
    tokens, heldout = model.check_tokens(tokens), model.check_tokens(heldout)  # [rows, pos]
    start = time.perf_counter()
    points = collect_points(model, tokens.to(model.W_U.device), progress=progress)  # [n_points, rows * pos, d_model]
    lens = TunedLens.for_model(model).to(model.W_U.device)
    _fit(model, lens, points, steps, lr, weight_decay, batch_size, seed, progress)
    card = getattr(model, "card", None) or {}
    lens.info = {"model_name": card.get("name"),
                 "model_file_sha256": (card.get("sha256") or {}).get("model.safetensors"),
                 "training": {"data": data, "steps": steps, "seed": seed, "lr": lr, "weight_decay": weight_decay,
                              "optimizer": "AdamW, linear decay to 0", "batch_positions": batch_size,
                              "train_rows": len(tokens), "heldout_rows": len(heldout), "pos": tokens.shape[1],
                              "wall_time_s": round(time.perf_counter() - start, 2),
                              "threads": torch.get_num_threads(), "torch": torch.__version__,
                              "python": platform.python_version()}}
    del points  # [n_points, rows * pos, d_model]: the largest tensor here; the figures need other memory
    if save_to is not None:
        lens.save(save_to)
    lens.info["kl_nats"] = _kl_figures(model, lens, tokens, heldout, progress)
    if save_to is not None:
        lens.save(save_to)
    return lens.eval()
