"""GPTConfig: every size of a GPT-2-architecture model, with TransformerLens's field names.

The names are TransformerLens's (n_layers, n_heads, d_model, d_head, d_mlp, n_ctx, d_vocab, eps, attn_only, act_fn,
...) so that ARENA-style snippets such as `model.cfg.n_heads` run unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import MinimechError


class ConfigError(MinimechError):
    """A configuration that minimech cannot build a model from."""


ACTIVATIONS = ("gelu_new", "gelu", "relu")  # gelu_new is GPT-2's tanh approximation


@dataclass(frozen=True)
class GPTConfig:
    n_layers: int = 12
    n_heads: int = 12
    d_model: int = 768
    d_head: int = 0  # 0 means d_model // n_heads
    d_mlp: int = 0  # 0 means 4 * d_model; ignored when attn_only
    n_ctx: int = 1024
    d_vocab: int = 50257
    eps: float = 1e-5  # LayerNorm epsilon (HF: layer_norm_epsilon)
    attn_only: bool = False
    act_fn: str = "gelu_new"
    model_name: str = "custom"
    # Fixed for GPT-2; kept so TransformerLens users find the fields they look for.
    normalization_type: str = "LN"
    positional_embedding_type: str = "standard"
    default_prepend_bos: bool = True

    def __post_init__(self):
        if self.d_head == 0:
            if self.d_model % self.n_heads:
                raise ConfigError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}: set d_head explicitly"
                )
            object.__setattr__(self, "d_head", self.d_model // self.n_heads)
        if self.d_mlp == 0 and not self.attn_only:
            object.__setattr__(self, "d_mlp", 4 * self.d_model)
        if self.act_fn not in ACTIVATIONS:
            raise ConfigError(f"act_fn={self.act_fn!r} is not supported; choose one of {ACTIVATIONS}")
        for field in ("n_layers", "n_heads", "d_model", "d_head", "n_ctx", "d_vocab"):
            if getattr(self, field) <= 0:
                raise ConfigError(f"{field} must be positive, got {getattr(self, field)}")

    @property
    def d_vocab_out(self) -> int:
        return self.d_vocab

    # Where the model's weights live, as TransformerLens's cfg.device and cfg.dtype say it. Not fields: they describe
    # one model's placement, not its architecture (to_dict leaves them out); the GPT that owns this config updates
    # them whenever it moves (tl_compat.TransformerLensMixin._apply).
    device = torch.device("cpu")
    dtype = torch.float32
    # TransformerLens's optional hook points, switched per model with model.set_use_attn_in(True) etc. (tl_compat.py)
    use_attn_result = use_attn_in = use_split_qkv_input = use_hook_mlp_in = False

    @property
    def n_params(self) -> int:
        """TransformerLens's cfg.n_params: the weights of attention (W_Q, W_K, W_V, W_O) and MLPs (W_in, W_out) only,
        without embeddings, biases or LayerNorms (84,934,656 for GPT-2 small). param_count() counts everything."""
        attention = 4 * self.d_model * self.d_head * self.n_heads
        mlp = 0 if self.attn_only else 2 * self.d_model * self.d_mlp
        return self.n_layers * (attention + mlp)

    def param_count(self, embeddings: bool = True, tied: bool = True) -> int:
        """Every parameter, as Hugging Face's num_parameters() counts GPT-2 (124,439,808 for GPT-2 small): with
        tied=True the unembedding W_U counts as the embedding W_E it is tied to; tied=False counts it apart (and
        b_U, which GPT-2 lacks and minimech keeps at zero), as minimech stores them. embeddings=False leaves out
        W_E, W_pos, W_U and b_U."""
        hd = self.n_heads * self.d_head
        per_block = 4 * hd * self.d_model + 3 * hd + self.d_model + 2 * self.d_model  # attention + its biases + ln1
        if not self.attn_only:
            per_block += 2 * self.d_model * self.d_mlp + self.d_mlp + self.d_model + 2 * self.d_model  # mlp + ln2
        total = self.n_layers * per_block + 2 * self.d_model  # + ln_final
        if embeddings:
            total += self.d_vocab * self.d_model + self.n_ctx * self.d_model
            total += 0 if tied else self.d_vocab * self.d_model + self.d_vocab
        return total

    def replace(self, **changes) -> "GPTConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown GPTConfig fields {sorted(unknown)}; known fields: {sorted(known)}")
        return cls(**d)


PRESETS = {
    "gpt2": GPTConfig(n_layers=12, n_heads=12, d_model=768, model_name="gpt2"),
    "gpt2-medium": GPTConfig(n_layers=24, n_heads=16, d_model=1024, model_name="gpt2-medium"),
    "gpt2-large": GPTConfig(n_layers=36, n_heads=20, d_model=1280, model_name="gpt2-large"),
    "gpt2-xl": GPTConfig(n_layers=48, n_heads=25, d_model=1600, model_name="gpt2-xl"),
    "distilgpt2": GPTConfig(n_layers=6, n_heads=12, d_model=768, model_name="distilgpt2"),
}


def from_hf_config(hf: dict | str | Path, model_name: str | None = None) -> GPTConfig:
    """Convert a Hugging Face GPT-2 `config.json` (a dict, or a path to the file) to a GPTConfig."""
    if not isinstance(hf, dict):
        path = Path(hf)
        try:
            hf = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"no config.json at {path}: a GPT-2 directory needs one (save_pretrained writes it)")
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}): the file is corrupt; download it again")
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ConfigError(f"config.json says model_type={model_type!r}; minimech reads GPT-2 models only")
    # Options HF supports for GPT-2 that change the computation; refuse them rather than be silently wrong.
    if hf.get("scale_attn_by_inverse_layer_idx"):
        raise ConfigError("scale_attn_by_inverse_layer_idx=True is not supported by minimech")
    if hf.get("scale_attn_weights") is False:
        raise ConfigError("scale_attn_weights=False is not supported by minimech")
    if hf.get("add_cross_attention"):
        raise ConfigError("add_cross_attention=True is not supported by minimech")
    act = hf.get("activation_function", "gelu_new")
    act = {"gelu_pytorch_tanh": "gelu_new", "gelu_fast": "gelu_new"}.get(act, act)
    n_embd = hf.get("n_embd", 768)
    return GPTConfig(
        n_layers=hf.get("n_layer", 12),
        n_heads=hf.get("n_head", 12),
        d_model=n_embd,
        d_mlp=hf.get("n_inner") or 4 * n_embd,
        n_ctx=hf.get("n_positions", hf.get("n_ctx", 1024)),
        d_vocab=hf.get("vocab_size", 50257),
        eps=hf.get("layer_norm_epsilon", 1e-5),
        act_fn=act,
        model_name=model_name or hf.get("_name_or_path") or "custom",
    )
