"""Training an SAE on one hook of a (frozen) model, with a remedy for dead features.

    sae = train_sae(model, "blocks.2.mlp.hook_post")                       # ReLU + L1, 4 x d_in features
    sae = train_sae(model, "blocks.1.hook_resid_pre", activation="topk", k=8)

Each step: a batch of activations from an ActivationStream, scaled so that E||x|| = sqrt(d_in) (SAELens's
"expected_average_only_in"; the scale is folded into the biases at the end, so the saved SAE reads raw activations
and its feature activations are in the hook's own units); Adam on the loss (squared error, plus the L1 penalty for
ReLU); gradient clipping at norm 1 (as SAELens); the decoder's rows kept at unit norm (the gradient's radial part
removed, then renormalised).

Dead features (never firing, so never getting a gradient) waste the dictionary. The remedies, each documented where
it acts:
  * ReLU: resampling (Bricken et al. 2023, "Towards Monosemanticity", appendix): every `resample_every` steps,
    features that have not fired for `dead_window` steps are re-initialised towards inputs the SAE reconstructs
    badly (drawn with probability proportional to their squared loss), with their Adam state reset;
  * TopK: the AuxK loss (Gao et al. 2024, as SAELens implements it): the dead features' top d_in / 2 pre-activations
    are asked to reconstruct what the live ones missed, with weight `aux_k_coefficient`.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from .activations import TRAIN_SEED, ActivationStream, check_hook, hook_width, model_corpus
from .autoencoder import SAEConfig, SAEError, SparseAutoencoder


@dataclass
class SAETrainSettings:
    """Everything that shapes a training run; stored in the SAE's config (cfg.training["settings"])."""

    expansion: int = 4  # d_sae = expansion x d_in, unless d_sae is given
    d_sae: int | None = None
    activation: str = "relu"
    k: int | None = None  # TopK: features kept per token
    l1_coefficient: float = 5.0  # ReLU: weight of the L1 penalty (on activations scaled to E||x|| = sqrt(d_in))
    lr: float = 1e-3
    batch_size: int = 4096
    training_tokens: int = 2_000_000
    l1_warmup_fraction: float = 0.05  # the L1 weight grows linearly from 0 over this share of the steps
    lr_decay_fraction: float = 0.2  # the learning rate falls linearly to 0 over the last share of the steps
    dead_window: int = 200  # steps without firing after which a feature counts as dead (SAELens: dead_feature_window)
    resample_every: int = 500  # ReLU: steps between resamplings (none during the lr decay); 0: never
    aux_k_coefficient: float = 1 / 32  # TopK: weight of the AuxK loss (Gao et al.); 0: none
    normalize: bool = True  # scale activations to E||x|| = sqrt(d_in) while training
    buffer_size: int = 65536  # activations held for shuffling
    seed: int = 0

    def __post_init__(self):
        positive = {"expansion": self.expansion, "lr": self.lr, "batch_size": self.batch_size,
                    "training_tokens": self.training_tokens, "dead_window": self.dead_window}
        bad = {k: v for k, v in positive.items() if not v > 0}
        if bad:
            raise SAEError(f"these settings must be positive: {bad}")
        if self.training_tokens < self.batch_size:
            raise SAEError(f"training_tokens={self.training_tokens} is less than one batch ({self.batch_size})")
        for name in ("l1_warmup_fraction", "lr_decay_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise SAEError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.l1_coefficient < 0 or self.aux_k_coefficient < 0 or self.resample_every < 0:
            raise SAEError("l1_coefficient, aux_k_coefficient and resample_every must not be negative")

    @property
    def steps(self) -> int:
        return self.training_tokens // self.batch_size


class _Encoder(torch.autograd.Function):
    """pre = (x - b_dec) @ W_enc + b_enc, with a backward that exploits sparse gradients.

    Once the SAE is sparse, the gradient reaching the pre-activations is zero wherever a feature did not fire (the
    ReLU / TopK passes nothing back there), so W_enc's gradient, (x - b_dec)^T @ grad_pre, is a sum over the few
    (token, feature) pairs that fired: n_active x d_in multiply-adds instead of batch x d_sae x d_in. b_dec's
    gradient needs only grad_pre summed over the batch (-W_enc @ that sum), not the per-token gradient of x. The
    inputs x get no gradient (they are data). Dense gradients (early in training; AuxK) take the plain matmul.
    """

    @staticmethod
    def forward(ctx, x, b_dec, W_enc, b_enc):
        centered = x - b_dec  # [batch, d_in]
        ctx.save_for_backward(centered, W_enc)
        return torch.addmm(b_enc, centered, W_enc)  # [batch, d_sae]

    @staticmethod
    def backward(ctx, grad_pre):
        centered, W_enc = ctx.saved_tensors
        grad_b_enc = grad_pre.sum(0)  # [d_sae]
        grad_b_dec = -(W_enc @ grad_b_enc)  # [d_in]
        nonzero = grad_pre.nonzero(as_tuple=True) if grad_pre.count_nonzero() * 32 < grad_pre.numel() else None
        if nonzero is None:
            grad_W_enc = centered.T @ grad_pre  # [d_in, d_sae]
        else:
            rows, cols = nonzero
            contributions = centered[rows] * grad_pre[rows, cols, None]  # [n, d_in]
            grad_W_enc = torch.zeros(W_enc.shape[1], W_enc.shape[0], dtype=W_enc.dtype, device=W_enc.device)
            grad_W_enc = grad_W_enc.index_add_(0, cols, contributions).T  # [d_in, d_sae]
        return None, grad_b_dec, grad_W_enc, grad_b_enc


@dataclass
class StepForward:
    """One training forward: the reconstruction, the L1 term and the pre-activations (with gradients), and which
    features fired."""
    x_hat: torch.Tensor  # [batch, d_in]
    l1: torch.Tensor  # []: mean over the batch of sum_i f_i
    pre: torch.Tensor  # [batch, d_sae]
    active: torch.Tensor  # [batch, d_sae] bool


def train_forward(sae: SparseAutoencoder, x: torch.Tensor, sparse_below: float = 1 / 32) -> StepForward:
    """The training forward on a batch x [batch, d_in]: the same maths as sae.decode(sae.encode(x)), and the same
    gradients, computed the cheap way once few features fire (TopK always; ReLU when the active fraction is under
    sparse_below): the decoder then reads only the active rows of W_dec per token, as an embedding bag, and the
    encoder's backward sums over active pairs only (_Encoder). A dense step costs ~5 x batch x d_sae x d_in
    multiply-adds (encoder and decoder, forward and backward); a sparse one ~1 x, the encoder's forward."""
    pre = _Encoder.apply(x, sae.b_dec, sae.W_enc, sae.b_enc)  # [batch, d_sae]
    batch = len(x)
    if sae.cfg.activation == "relu":
        f = torch.relu(pre)
        active = f > 0
        if int(active.sum()) > sparse_below * active.numel():  # early in training: most features fire
            return StepForward(torch.addmm(sae.b_dec, f, sae.W_dec), f.sum(-1).mean(), pre, active)
        rows, cols = active.nonzero(as_tuple=True)  # sorted by row
        counts = torch.bincount(rows, minlength=batch)
        values = f[rows, cols]  # [n]
        x_hat = F.embedding_bag(cols, sae.W_dec, counts.cumsum(0) - counts, per_sample_weights=values, mode="sum")
        return StepForward(x_hat + sae.b_dec, values.sum() / batch, pre, active)
    top = pre.topk(sae.cfg.k, dim=-1, sorted=False)
    values = top.values.relu()  # [batch, k]
    active = torch.zeros_like(pre, dtype=torch.bool).scatter_(-1, top.indices, values > 0)
    x_hat = F.embedding_bag(top.indices, sae.W_dec, per_sample_weights=values, mode="sum") + sae.b_dec
    return StepForward(x_hat, values.sum() / batch, pre, active)


def aux_k_loss(sae: SparseAutoencoder, x: torch.Tensor, step: StepForward, dead: torch.Tensor) -> torch.Tensor:
    """Gao et al.'s AuxK, as SAELens computes it: the top min(d_in / 2, n_dead) pre-activations among dead
    features (not ReLU'd) reconstruct the residual x - x_hat; scaled by min(n_dead / (d_in / 2), 1)."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return x.new_zeros(())
    k_aux = x.shape[-1] // 2
    scale, k_aux = min(n_dead / k_aux, 1.0), min(k_aux, n_dead)
    residual = (x - step.x_hat).detach()
    top = torch.where(dead, step.pre, -torch.inf).topk(k_aux, dim=-1, sorted=False)
    recons = F.embedding_bag(top.indices, sae.W_dec, per_sample_weights=top.values, mode="sum")
    return scale * (recons - residual).pow(2).sum(-1).mean()


@torch.no_grad()
def resample_dead(sae: SparseAutoencoder, optimizer: torch.optim.Adam, x: torch.Tensor, x_hat: torch.Tensor,
                  dead: torch.Tensor, gen: torch.Generator) -> int:
    """Bricken et al.'s resampling: each dead feature gets the direction of an input drawn with probability
    proportional to its squared reconstruction loss (minus b_dec, unit norm) as its decoder row; its encoder column
    is that direction x 0.2 x the mean norm of live encoder columns, its bias 0, its Adam moments 0."""
    dead_ids = dead.nonzero().flatten()
    if len(dead_ids) == 0:
        return 0
    loss = (x - x_hat).pow(2).sum(-1)  # [batch]
    if not bool((loss > 0).any()):
        return 0
    picks = torch.multinomial(loss.pow(2).cpu(), len(dead_ids), replacement=True, generator=gen).to(x.device)
    directions = x[picks] - sae.b_dec
    directions /= directions.norm(dim=-1, keepdim=True).clamp_min(1e-8)  # [n_dead, d_in]
    alive = ~dead
    enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if bool(alive.any()) else torch.tensor(1.0)
    sae.W_dec[dead_ids] = directions
    sae.W_enc[:, dead_ids] = directions.T * 0.2 * enc_norm
    sae.b_enc[dead_ids] = 0.0
    for param, rows in ((sae.W_dec, (dead_ids,)), (sae.W_enc, (slice(None), dead_ids)), (sae.b_enc, (dead_ids,))):
        state = optimizer.state.get(param, {})
        for moment in ("exp_avg", "exp_avg_sq"):
            if moment in state:
                state[moment][rows] = 0.0
    return len(dead_ids)


@torch.no_grad()
def fold_input_scale(sae: SparseAutoencoder, scale: float) -> None:
    """An SAE trained on x * scale, rewritten to read raw x: f(x) = f'(x * scale) / scale and x_hat(x) =
    x_hat'(x * scale) / scale, by dividing both biases by scale. (ReLU and TopK commute with a positive scale.) The
    weights stay as trained, so W_dec keeps unit rows and activations come out in the hook's own units."""
    sae.b_dec /= scale
    sae.b_enc /= scale


def _schedule(settings: SAETrainSettings):
    steps = settings.steps
    decay_start = int(steps * (1 - settings.lr_decay_fraction))
    warmup = max(1, int(steps * settings.l1_warmup_fraction))

    def lr_factor(step: int) -> float:
        return 1.0 if step < decay_start else max(0.0, (steps - step) / max(1, steps - decay_start))

    def l1_factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup)

    return lr_factor, l1_factor, decay_start


def train_sae(model, hook: str, settings: SAETrainSettings | None = None, tokens: torch.Tensor | None = None,
              progress: bool = True, stream: ActivationStream | None = None, **overrides) -> SparseAutoencoder:
    """Train an SAE on `hook` of `model` (frozen; its parameters never change) and return it, bound to the model.

    settings: SAETrainSettings (keyword overrides, e.g. training_tokens=500_000, activation="topk", k=8, replace
    single fields). tokens: token rows [rows, pos] to take activations from instead of the corpus (needed for a
    model without a tokenizer). stream: any iterator of activation batches [batch, d_in] (e.g. cached activations).
    The config records the settings, the data, the wall time and a short history (loss, L0, dead fraction).
    """
    from ..analysis.tuned_lens import model_sha256
    from ..notebook import tqdm  # a widget in Jupyter, text elsewhere

    settings = replace(settings or SAETrainSettings(), **overrides)
    if settings.activation == "topk" and settings.k is None:
        raise SAEError("a TopK SAE needs k (features kept per token), e.g. train_sae(model, hook, "
                       "activation='topk', k=16)")
    hook = check_hook(model, hook)
    d_in = hook_width(model, hook)
    d_sae = settings.d_sae or settings.expansion * d_in
    device = model.W_E.device
    if stream is None:
        stream = ActivationStream(model, hook, settings.batch_size, settings.buffer_size, settings.seed, tokens)
    card = getattr(model, "card", None) or {}
    cfg = SAEConfig(d_in, d_sae, hook, settings.activation, settings.k if settings.activation == "topk" else None,
                    model_name=card.get("name") or model.cfg.model_name, model_sha256=model_sha256(model))
    sae = SparseAutoencoder(cfg, seed=settings.seed).to(device)

    start = time.perf_counter()
    first = [next(stream) for _ in range(max(1, min(8, settings.steps)))]
    sample = torch.cat(first)  # [n, d_in]
    scale = (d_in ** 0.5 / sample.norm(dim=-1).mean()).item() if settings.normalize else 1.0
    with torch.no_grad():
        sae.b_dec.copy_((sample * scale).mean(0))  # start at the data's mean: features then encode deviations
    history = _fit(sae, stream, first, scale, settings, progress, tqdm)
    fold_input_scale(sae, scale)
    tokens_note = ("token rows passed to train_sae" if tokens is not None else
                   f"{type(model_corpus(model)).__name__}(seed=0) documents in chunks of "
                   f"{getattr(stream, 'chunk_documents', '?')} from corpus seed "
                   f"{TRAIN_SEED} + 1000 x seed + chunk, mixed as the model's recipe, packed into rows of n_ctx; "
                   "<|endoftext|> positions and the held-out eval documents left out")
    sae.cfg.training = {"settings": asdict(settings) | {"d_sae": d_sae}, "steps": settings.steps,
                        "tokens": settings.steps * settings.batch_size, "data": tokens_note,
                        "activation_scale": scale, "wall_time_s": round(time.perf_counter() - start, 1),
                        "threads": torch.get_num_threads(), "torch": torch.__version__,
                        "python": platform.python_version(), "history": history}
    return sae.bind(model).eval()


def _fit(sae: SparseAutoencoder, stream, first: list, scale: float, settings: SAETrainSettings, progress: bool,
         tqdm) -> list[dict]:
    """The training loop; returns a short history (every ~10 % of the steps)."""
    optimizer = torch.optim.Adam(sae.parameters(), lr=settings.lr)
    lr_factor, l1_factor, decay_start = _schedule(settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    since_fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=sae.W_dec.device)  # steps since each fired
    gen = torch.Generator().manual_seed(settings.seed + 1)
    relu = settings.activation == "relu"
    history, every, resampled = [], max(1, settings.steps // 10), 0
    sae.train()
    bar = tqdm(range(settings.steps), desc=f"SAE {sae.cfg.hook}", disable=not progress)
    for step in bar:
        x = (first[step] if step < len(first) else next(stream)) * scale  # [batch, d_in]
        out = train_forward(sae, x)
        mse = (out.x_hat - x).pow(2).sum(-1).mean()
        since_fired += 1
        since_fired[out.active.any(0)] = 0
        dead = since_fired >= settings.dead_window
        if relu:  # ||W_dec[i]|| = 1, so SAELens's decoder-norm-weighted L1 is the plain sum of activations
            extra = settings.l1_coefficient * l1_factor(step) * out.l1
        else:
            extra = settings.aux_k_coefficient * aux_k_loss(sae, x, out, dead) \
                if settings.aux_k_coefficient else mse.new_zeros(())
        optimizer.zero_grad(set_to_none=True)
        (mse + extra).backward()
        sae.remove_parallel_gradient()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        sae.normalize_decoder()
        if relu and settings.resample_every and step and step % settings.resample_every == 0 and step < decay_start:
            resampled += resample_dead(sae, optimizer, x, out.x_hat.detach(), dead, gen)
            since_fired[dead] = 0
        if step % every == 0 or step == settings.steps - 1:
            l0 = out.active.sum(-1).float().mean().item()
            history.append({"step": step, "mse": round(mse.item(), 5), "l0": round(l0, 3),
                            "dead_fraction": round(dead.float().mean().item(), 4), "resampled": resampled})
            bar.set_postfix(mse=f"{mse.item():.3f}", l0=f"{l0:.1f}", dead=f"{dead.float().mean().item():.2f}")
    return history
