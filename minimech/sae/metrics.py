"""How good is an SAE? The field's metrics, with SAELens's definitions (sae_lens 6.54, `sae_lens/evals.py`):

  l0                    mean over tokens of the number of non-zero features (get_sparsity_and_variance_metrics)
  explained_variance    1 - E||x - x_hat||^2 / (E||x||^2 - ||E x||^2), pooled over every token (its
                        ExplainedVarianceCalculator: the variance is the total over dimensions around the mean)
  mse                   E||x - x_hat||^2 (summed over d_in, averaged over tokens)
  ce_loss_without_sae   the model's next-token cross-entropy, clean
  ce_loss_with_sae      ... with x_hat spliced in at the hook (no error term)
  ce_loss_with_ablation ... with the hook's activation set to zero
  ce_loss_score         "CE loss recovered": (ablation - with_sae) / (ablation - without_sae); 1 is perfect
  feature_density       per feature, the fraction of tokens on which it is non-zero
and two of ours over that density: dead_fraction (features that never fired on the eval tokens) and
dense_fraction (features firing on more than DENSE_THRESHOLD of them; SAELens logs the density histogram but
names no threshold; 0.1 is a common choice, e.g. in SAEBench).

Tokens: as SAELens's run_evals with exclude_special_tokens=True, positions holding <|endoftext|> (BOS, document
separators, padding) are left out of every figure; for the CE losses, the prediction made *at* such a position is
left out, and the spliced run keeps the original activation there. Measured on held-out corpus documents
(activations.eval_rows) unless tokens are given.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import torch

from .activations import check_hook, eval_rows, per_token, special_mask
from .autoencoder import SAEError, SparseAutoencoder

DENSE_THRESHOLD = 0.1
SCALARS = ("l0", "explained_variance", "mse", "ce_loss_without_sae", "ce_loss_with_sae", "ce_loss_with_ablation",
           "ce_loss_score", "dead_fraction", "dense_fraction", "tokens")


@dataclass
class SAEMetrics:
    l0: float
    explained_variance: float
    mse: float
    ce_loss_without_sae: float
    ce_loss_with_sae: float
    ce_loss_with_ablation: float
    ce_loss_score: float
    dead_fraction: float
    dense_fraction: float
    tokens: int
    feature_density: torch.Tensor = field(repr=False)  # [d_sae]

    def scalars(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k in SCALARS}

    def log10_density(self, eps: float = 1e-10) -> torch.Tensor:
        """[d_sae]: log10(density + 1e-10), the feature density histogram's values (as SAELens logs them)."""
        return torch.log10(self.feature_density + eps)

    def __repr__(self) -> str:
        return (f"SAEMetrics over {self.tokens:,} tokens: L0 {self.l0:.2f}, variance explained "
                f"{self.explained_variance:.3f}, CE loss recovered {self.ce_loss_score:.3f} (clean "
                f"{self.ce_loss_without_sae:.3f}, with SAE {self.ce_loss_with_sae:.3f}, zero-ablated "
                f"{self.ce_loss_with_ablation:.3f}), dead {self.dead_fraction:.1%}, dense {self.dense_fraction:.1%}")


def replace_hook(sae: SparseAutoencoder, keep: torch.Tensor | None = None, zero: bool = False):
    """A hook that swaps the activation for its reconstruction (or zeros), except where keep [batch, pos] is True."""
    def hook(activation, hook_point):
        flat = per_token(activation)  # [batch, pos, d_in]
        new = torch.zeros_like(flat) if zero else sae(flat).to(flat.dtype)
        if keep is not None:
            new = torch.where(keep[..., None], flat, new)
        return new.reshape(activation.shape)
    return hook


def _shared_prefix_layer(hook: str) -> int | None:
    """The block a hook sits in (blocks.L.*: L), whose residual stream before it is the same in every run that edits
    the hook; None for hooks outside the blocks (embeddings, final LayerNorm), where runs share nothing."""
    match = re.match(r"blocks\.(\d+)\.", hook)
    return int(match.group(1)) if match and int(match.group(1)) > 0 else None


LOGITS_BUDGET = 128 * 2**20  # bytes: the float32 logits one unembedding call may produce (~128 MiB)


def auto_batch_size(model, n_pos: int) -> int:
    """Rows per batch when evaluate_sae is given none: as many as keep one forward's logits [rows, pos, d_vocab]
    within LOGITS_BUDGET, at most 32 (the shipped models: 32 rows of 128 positions, 116 MB; GPT-2: one row of
    1,024 positions is already 206 MB, so 1 row, its logits then made a chunk of positions at a time)."""
    return max(1, min(32, LOGITS_BUDGET // (n_pos * model.cfg.d_vocab * 4)))


def _losses(model, inputs, tokens: torch.Tensor, prefix: dict, edits, chunk: int) -> torch.Tensor:
    """[batch, pos - 1]: the loss of each next-token prediction of a forward from inputs (token ids, or the residual
    stream before block prefix["start_at_layer"]), with the hooks edits(positions) gives attached. The blocks run on
    every position at once (attention mixes them); the final LayerNorm and the unembedding, which act on each
    position alone, run `chunk` positions at a time, so no logits larger than [batch, chunk, d_vocab] ever exist."""
    with model.hooks(edits(slice(None))):
        resid = model(inputs, stop_at_layer=model.cfg.n_layers, **prefix)  # [batch, pos, d_model]
    targets = tokens.roll(-1, dims=1)  # [batch, pos]: the next token (the last column wraps round; it is dropped)
    out = []
    for start in range(0, tokens.shape[1], chunk):
        span = slice(start, start + chunk)
        with model.hooks(edits(span)):  # an SAE on ln_final.hook_normalized edits here, a chunk at a time
            logits = model.unembed(model.ln_final(resid[:, span]))  # [batch, chunk, d_vocab]
        out.append(-logits.log_softmax(-1).gather(-1, targets[:, span, None])[..., 0])  # [batch, chunk], as model.loss
    return torch.cat(out, 1)[:, :-1]


@torch.no_grad()
def evaluate_sae(model, sae: SparseAutoencoder, tokens: torch.Tensor | None = None, batch_size: int | None = None,
                 exclude_special: bool = True, progress: bool = False) -> SAEMetrics:
    """Every metric above, over tokens [rows, pos] (default: eval_rows(model), held-out documents); batch_size: rows
    per batch (None: auto_batch_size, which bounds each forward's logits; the unembedding is chunked by position
    too, so an explicit batch_size bounds only the activations); progress: a tqdm bar counting the forwards (three
    a batch: clean, spliced, zero-ablated)."""
    from ..notebook import tqdm

    hook = check_hook(model, sae.hook)
    if tokens is None:
        tokens = eval_rows(model)
    tokens = model.check_tokens(tokens)
    batch_size = auto_batch_size(model, tokens.shape[1]) if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise SAEError(f"batch_size must be at least 1 (or None: sized automatically), got {batch_size}")
    chunk = max(1, LOGITS_BUDGET // (min(batch_size, len(tokens)) * model.cfg.d_vocab * 4))  # positions per unembed
    sums = {"sq_norm": 0.0, "sq_residual": 0.0, "l0": 0.0, "n": 0, "ce": torch.zeros(3, dtype=torch.float64),
            "n_ce": 0}
    sum_x = torch.zeros(sae.cfg.d_in, dtype=torch.float64)
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    batches = tokens.split(batch_size)
    with tqdm(total=3 * len(batches), desc=f"evaluating the SAE on {sae.hook}", unit=" forwards",
                disable=not progress) as bar:
        for rows in batches:
            special = special_mask(model, rows) if exclude_special else torch.zeros_like(rows, dtype=torch.bool)
            keep = ~special  # [batch, pos]
            # The three forwards (clean, spliced, zeroed) agree up to the hook's block: run that part once
            start = _shared_prefix_layer(hook)
            prefix = {} if start is None else {"start_at_layer": start}
            inputs = rows if start is None else model(rows, stop_at_layer=start)  # [batch, pos] or [..., d_model]
            seen = []  # the clean activations at the hook (in chunks of positions for a hook after the blocks)
            runs = (lambda span: [(hook, lambda act, hook_point: seen.append(act))],  # clean: the hook only reads
                    lambda span: [(hook, replace_hook(sae, keep=special[:, span]))],  # spliced, specials kept
                    lambda span: [(hook, replace_hook(sae, zero=True))])  # zero-ablated
            counted = keep[:, :-1]  # the prediction made at a special position is left out
            for i, edits in enumerate(runs):
                sums["ce"][i] += _losses(model, inputs, rows, prefix, edits, chunk)[counted].double().sum().cpu()
                bar.update(1)
            sums["n_ce"] += int(counted.sum())
            x = per_token(torch.cat(seen, 1))[keep]  # [n, d_in]
            if x.shape[-1] != sae.cfg.d_in:
                raise SAEError(f"{hook} has width {x.shape[-1]} here but the SAE reads d_in={sae.cfg.d_in}")
            f = sae.encode(x)
            x_hat = sae.decode(f)
            xd = x.double()
            sum_x += xd.sum(0).cpu()
            sums["sq_norm"] += xd.pow(2).sum().item()
            sums["sq_residual"] += (xd - x_hat.double()).pow(2).sum().item()
            sums["l0"] += (f != 0).sum().item()
            sums["n"] += len(x)
            fired += (f != 0).sum(0).double().cpu()
    if sums["n"] == 0 or sums["n_ce"] == 0:
        raise SAEError("the tokens hold no position to measure (only <|endoftext|>, or a single position)")
    n = sums["n"]
    variance = sums["sq_norm"] / n - (sum_x / n).pow(2).sum().item()
    mse = sums["sq_residual"] / n
    clean, with_sae, ablation = (sums["ce"] / sums["n_ce"]).tolist()
    density = (fired / n).float()
    return SAEMetrics(
        l0=sums["l0"] / n,
        explained_variance=(1.0 if mse < 1e-10 else 0.0) if variance < 1e-10 else 1 - mse / variance,
        mse=mse, ce_loss_without_sae=clean, ce_loss_with_sae=with_sae, ce_loss_with_ablation=ablation,
        ce_loss_score=(ablation - with_sae) / (ablation - clean) if ablation != clean else float("nan"),
        dead_fraction=(density == 0).float().mean().item(),
        dense_fraction=(density > DENSE_THRESHOLD).float().mean().item(),
        tokens=n, feature_density=density)


def record(sae: SparseAutoencoder, metrics: SAEMetrics) -> None:
    """Keep the metrics with the SAE: the scalars in its config (saved in sae.json), the density in the weights file."""
    sae.cfg.metrics = {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.scalars().items()}
    sae.cfg.metrics["definitions"] = "sae_lens 6.54 evals.py; special tokens excluded; dense: density > 0.1"
    sae.feature_density.copy_(metrics.feature_density.to(sae.feature_density.device))
