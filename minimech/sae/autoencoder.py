"""The sparse autoencoder: a wide dictionary of directions, each used by only a few tokens at a time.

An SAE rewrites one activation x [d_in] (a hook's value at one position) as a sparse sum of learned directions:

    f     = act((x - b_dec) @ W_enc + b_enc)     [d_sae]   the feature activations; act is ReLU or TopK
    x_hat = f @ W_dec + b_dec                    [d_in]    W_dec's rows (the dictionary) have unit norm

Trained to reconstruct x while keeping f sparse (Bricken et al. 2023, "Towards Monosemanticity"; Templeton et al.
2024, "Scaling Monosemanticity"): ReLU with an L1 penalty on f, or TopK (Gao et al. 2024, "Scaling and evaluating
sparse autoencoders"), which keeps the k largest pre-activations and needs no penalty.

Shapes and formulas are SAELens's (W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_dec subtracted before encoding,
TopK = the k largest pre-activations, then ReLU): the same four tensors load into sae_lens.StandardSAE /
TopKSAE and encode and decode alike (tests/test_sae_peers.py). In Anthropic's notation the decoder is [d_in, d_sae]
with unit-norm columns; here those columns are W_dec's rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import MinimechError

FORMAT = "minimech-sae"
WEIGHTS_FILE, CONFIG_FILE = "sae.safetensors", "sae.json"
ACTIVATIONS = ("relu", "topk")


class SAEError(MinimechError, ValueError):
    """An SAE that is missing, damaged, made for another model or hook, or asked something it cannot do."""


@dataclass
class SAEConfig:
    """What an SAE is: sizes, the hook it reads, its activation, and the model it was trained on."""

    d_in: int
    d_sae: int
    hook: str  # the hook point whose activations it encodes, e.g. "blocks.2.mlp.hook_post"
    activation: str = "relu"  # "relu" (trained with an L1 penalty) or "topk"
    k: int | None = None  # TopK only: features kept per token
    model_name: str | None = None
    model_sha256: str | None = None  # minimech.analysis.model_sha256 of the model it was trained on
    training: dict = field(default_factory=dict)  # settings, data, wall time (train_sae fills it)
    metrics: dict = field(default_factory=dict)  # evaluate_sae's scalar figures, when measured

    def __post_init__(self):
        if not (isinstance(self.d_in, int) and isinstance(self.d_sae, int) and self.d_in > 0 and self.d_sae > 0):
            raise SAEError(f"d_in and d_sae must be positive integers, got {self.d_in!r} and {self.d_sae!r}")
        if self.activation not in ACTIVATIONS:
            raise SAEError(f"activation={self.activation!r}: choose 'relu' (with an L1 penalty) or 'topk'")
        if self.activation == "topk":
            if not isinstance(self.k, int) or not 1 <= self.k <= self.d_sae:
                raise SAEError(f"a TopK SAE needs k between 1 and d_sae={self.d_sae}, got k={self.k!r}")
        elif self.k is not None:
            raise SAEError(f"k={self.k} is for activation='topk'; a ReLU SAE's sparsity comes from its L1 penalty")


class SparseAutoencoder(nn.Module):
    """x [..., d_in] -> feature activations f [..., d_sae] -> reconstruction x_hat [..., d_in].

    sae.features[i] is feature i as an object (encoder and decoder directions, activations, top contexts, logit
    effects); minimech.sae.train_sae makes one, SparseAutoencoder.load reads one, evaluate_sae measures one.
    """

    def __init__(self, cfg: SAEConfig, seed: int | None = 0):
        super().__init__()
        self.cfg = cfg
        d_in, d_sae = cfg.d_in, cfg.d_sae
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        W_dec = torch.empty(d_sae, d_in)
        # Random unit directions (SAELens: kaiming-uniform, then normalised); the encoder starts as the decoder's
        # transpose, so each feature first reads along the direction it writes.
        bound = (6 / d_in) ** 0.5
        W_dec.uniform_(-bound, bound, generator=gen)
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        self.W_enc = nn.Parameter(W_dec.T.clone().contiguous())  # [d_in, d_sae]: column i reads feature i
        self.b_enc = nn.Parameter(torch.zeros(d_sae))  # [d_sae]
        self.W_dec = nn.Parameter(W_dec)  # [d_sae, d_in]: row i is feature i's direction (unit norm)
        self.b_dec = nn.Parameter(torch.zeros(d_in))  # [d_in]: subtracted before encoding, added after decoding
        self.register_buffer("feature_density", torch.full((d_sae,), float("nan")), persistent=False)  # [d_sae]
        self.model_ref = lambda: None  # the model it reads (a weak reference), for features' contexts and logits

    # ---- the forward pass ------------------------------------------------------------------------------------------
    @property
    def hook(self) -> str:
        return self.cfg.hook

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:  # [..., d_in] -> [..., d_sae]
        self._check_input(x)
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:  # [..., d_sae] -> [..., d_sae]
        if self.cfg.activation == "relu":
            return torch.relu(pre)
        top = pre.topk(self.cfg.k, dim=-1, sorted=False)  # the k largest pre-activations, then ReLU (as SAELens)
        return torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d_in] -> feature activations [..., d_sae] (non-negative; at most k non-zero for TopK)."""
        return self.activate(self.pre_activations(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """[..., d_sae] -> [..., d_in]: sum_i f_i W_dec[i] + b_dec."""
        if f.shape[-1] != self.cfg.d_sae:
            raise SAEError(f"feature activations must end in d_sae={self.cfg.d_sae}, got shape {tuple(f.shape)}")
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., d_in] -> [..., d_in]
        return self.decode(self.encode(x))

    def loss(self, x: torch.Tensor, l1_coefficient: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, parts) on a batch x [batch, d_in]: squared error summed over d_in and averaged over the batch
        (SAELens's mse_loss), plus, for ReLU, l1_coefficient x the mean over the batch of sum_i f_i ||W_dec[i]||
        (SAELens's l1_loss; ||W_dec[i]|| = 1 while training keeps the rows unit norm)."""
        f = self.encode(x)
        mse = (self.decode(f) - x).pow(2).sum(-1).mean()
        parts = {"mse": mse}
        if self.cfg.activation == "relu":
            parts["l1"] = l1_coefficient * (f * self.W_dec.norm(dim=-1)).sum(-1).mean()
        return sum(parts.values()), parts

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise SAEError(f"an SAE encodes a tensor [..., d_in={self.cfg.d_in}], got {type(x).__name__}")
        if x.ndim == 0 or x.shape[-1] != self.cfg.d_in:
            raise SAEError(f"this SAE reads {self.cfg.hook} activations of size d_in={self.cfg.d_in}, got shape "
                           f"{tuple(x.shape)}: pass cache[{self.cfg.hook!r}] (or a [batch, d_in] tensor of them)")
        if not x.is_floating_point():
            raise SAEError(f"activations must be floating point, got {x.dtype}")

    # ---- the unit-norm dictionary ----------------------------------------------------------------------------------
    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Scale W_dec's rows back to unit norm (after an optimiser step): with them free, the L1 penalty could be
        dodged by shrinking f and growing W_dec."""
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """Take out of W_dec's gradient the part along each row (Bricken et al.): on the unit sphere only the
        tangent part moves the direction; the radial part would be undone by normalize_decoder anyway."""
        if self.W_dec.grad is not None:
            along = (self.W_dec.grad * self.W_dec).sum(-1, keepdim=True)  # [d_sae, 1]
            self.W_dec.grad -= along * self.W_dec

    # ---- features as objects ---------------------------------------------------------------------------------------
    @property
    def features(self):
        from .features import Features

        return Features(self)

    @property
    def model(self):
        """The model this SAE was bound to (by train_sae, load(path, model) or bind(model)), or None."""
        return self.model_ref()

    def bind(self, model) -> "SparseAutoencoder":
        """Attach the model whose activations this SAE reads (kept as a weak reference); checks the hook exists
        and has this SAE's width. Returns self."""
        import weakref

        from .activations import hook_width

        width = hook_width(model, self.cfg.hook)
        if width != self.cfg.d_in:
            raise SAEError(f"{self.cfg.hook} has width {width} in this model but the SAE reads d_in={self.cfg.d_in}: "
                           "it was trained on another model")
        self.model_ref = weakref.ref(model)
        return self

    # ---- files -----------------------------------------------------------------------------------------------------
    def save(self, directory) -> Path:
        """Write directory/sae.safetensors (W_enc, b_enc, W_dec, b_dec, feature_density when measured) and
        directory/sae.json (the config: hook, sizes, training settings, metrics; and the weights' sha256)."""
        from safetensors.torch import save_file

        from ..loading import sha256_file

        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise SAEError(f"an SAE is saved into a folder, and {directory} is a file")
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {name: p.detach().cpu().float().contiguous() for name, p in self.named_parameters()}
        if not torch.isnan(self.feature_density).all():
            tensors["feature_density"] = self.feature_density.detach().cpu().float().contiguous()
        path = directory / WEIGHTS_FILE
        save_file(tensors, path, metadata={"format": FORMAT})
        os.chmod(path, 0o644)  # safetensors creates it owner-only
        meta = {"format": FORMAT, "version": 1, **asdict(self.cfg), "file_sha256": sha256_file(path)}
        tmp = directory / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, directory / CONFIG_FILE)
        return directory

    @classmethod
    def load(cls, directory, model=None) -> "SparseAutoencoder":
        """Read an SAE saved by save(). With `model`, also check it was trained on these weights (the sha256 in its
        config) and bind it, so features can find contexts and read logits."""
        from safetensors.torch import load_file

        from ..loading import sha256_file

        directory = Path(directory)
        weights, config = directory / WEIGHTS_FILE, directory / CONFIG_FILE
        if not weights.is_file() or not config.is_file():
            missing = weights if not weights.is_file() else config
            raise SAEError(f"no SAE at {directory}: {missing} does not exist (train one with "
                           "`minimech sae train --out DIR` or minimech.sae.train_sae(model, hook).save(DIR))")
        try:
            meta = json.loads(config.read_text())
            if meta.get("format") != FORMAT:
                raise ValueError(f"format is {meta.get('format')!r}, not {FORMAT!r}")
            fields = {k: meta[k] for k in ("d_in", "d_sae", "hook")}
            fields.update({k: meta[k] for k in ("activation", "k", "model_name", "model_sha256", "training",
                                                "metrics") if k in meta})
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SAEError(f"{config} is not an SAE config ({type(e).__name__}: {e})") from None
        if meta.get("file_sha256") != sha256_file(weights):
            raise SAEError(f"{weights} is damaged or was changed: its sha256 differs from the one in {config.name}; "
                           "restore it or retrain the SAE")
        sae = cls(SAEConfig(**fields), seed=None)
        tensors = load_file(weights)
        expected = {name: tuple(p.shape) for name, p in sae.named_parameters()}
        found = {name: tuple(t.shape) for name, t in tensors.items() if name != "feature_density"}
        if found != expected:
            raise SAEError(f"{weights} holds {found}, but its config needs {expected}")
        with torch.no_grad():
            for name, p in sae.named_parameters():
                p.copy_(tensors[name])
            if "feature_density" in tensors:
                sae.feature_density.copy_(tensors["feature_density"])
        if model is not None:
            sae.check_model(model)
            sae.bind(model)
            sae.to(model.W_U.device)
        return sae.eval()

    def check_model(self, model) -> None:
        """One clear error unless `model` has the weights this SAE was trained on (by model_sha256)."""
        from ..analysis.tuned_lens import model_sha256

        if self.cfg.model_sha256 is not None and model_sha256(model) != self.cfg.model_sha256:
            raise SAEError(f"this SAE was trained on other weights (model {self.cfg.model_name!r}, sha256 "
                           f"{self.cfg.model_sha256[:12]}...) than this model's: a feature is a direction in one "
                           "model's activations. Load it with the model it was made for, or train one for this "
                           "model (`minimech sae train`)")

    def extra_repr(self) -> str:
        kind = f"TopK k={self.cfg.k}" if self.cfg.activation == "topk" else "ReLU + L1"
        return f"{self.cfg.hook}: d_in {self.cfg.d_in} -> d_sae {self.cfg.d_sae} ({kind})"
