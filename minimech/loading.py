"""Getting weights into a GPT: Hugging Face GPT-2 checkpoints and minimech's own saved models (downloads: fetching.py).

    load("gpt2")              # a preset name: looked for in the shipped weights, $MINIMECH_WEIGHTS, minimech's
                              # download folder and the local Hugging Face cache (never the network)
    load("path/to/dir")       # config.json + model.safetensors (or pytorch_model.bin), or a minimech card.json dir
    fetch("gpt2")             # download config.json + model.safetensors from the Hub, resumable, checksummed
    save(model, "dir")        # minimech's own format: model.safetensors with minimech's names + card.json

Every failure raises one MinimechError subclass that names the file and says what to do about it.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import re
from pathlib import Path

import torch

import minimech

from .config import PRESETS, ConfigError, GPTConfig, from_hf_config
from .errors import MinimechError, UsageError
from .model import GPT
from .tokenizer import GPT2_N_VOCAB, Tokenizer

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",  # in order of preference
                "pytorch_model.bin", "pytorch_model.bin.index.json")
ALIASES = {"openai-community/gpt2": "gpt2", "openai-community/gpt2-medium": "gpt2-medium",
           "openai-community/gpt2-large": "gpt2-large", "openai-community/gpt2-xl": "gpt2-xl",
           "distilbert/distilgpt2": "distilgpt2"}


class WeightsError(MinimechError):
    """A weights file that is unreadable, or whose tensors do not fit the model's config."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """No weights where minimech looked."""


class ChecksumError(WeightsError):
    """A file whose sha256 differs from the one recorded for it."""


def weights_dir() -> Path:
    """The folder of shipped weights: package data when installed, else the repository's top-level weights/."""
    shipped = importlib.resources.files("minimech") / "weights"
    if shipped.is_dir():
        return Path(str(shipped))
    return Path(minimech.__file__).resolve().parent.parent / "weights"


# ---- Hugging Face GPT-2 -> minimech --------------------------------------------------------------------------------

def _hf_shapes(cfg: GPTConfig) -> dict[str, tuple]:
    """Every tensor a Hugging Face GPT-2 checkpoint holds for `cfg` (without the `transformer.` prefix)."""
    d, m, v = cfg.d_model, cfg.d_mlp, cfg.d_vocab
    shapes = {"wte.weight": (v, d), "wpe.weight": (cfg.n_ctx, d), "ln_f.weight": (d,), "ln_f.bias": (d,),
              "lm_head.weight": (v, d)}
    for l in range(cfg.n_layers):
        shapes.update({f"h.{l}.{k}": s for k, s in {
            "ln_1.weight": (d,), "ln_1.bias": (d,), "ln_2.weight": (d,), "ln_2.bias": (d,),
            "attn.c_attn.weight": (d, 3 * d), "attn.c_attn.bias": (3 * d,),
            "attn.c_proj.weight": (d, d), "attn.c_proj.bias": (d,),
            "mlp.c_fc.weight": (d, m), "mlp.c_fc.bias": (m,), "mlp.c_proj.weight": (m, d), "mlp.c_proj.bias": (d,),
        }.items()})
    return shapes


def _check_tensors(found: dict, expected: dict[str, tuple], what: str, optional=()) -> None:
    """Raise one WeightsError listing every missing, unexpected and mis-shaped tensor."""
    problems = [f"missing tensor {k!r} (expected shape {list(s)})" for k, s in expected.items()
                if k not in found and k not in optional]
    problems += [f"unexpected tensor {k!r} of shape {list(found[k].shape)}" for k in found if k not in expected]
    for k, s in expected.items():
        if k in found and tuple(found[k].shape) != s:
            hint = ""
            if len(s) == 2 and tuple(found[k].shape) == s[::-1]:
                hint = " (the transpose: an nn.Linear-style checkpoint such as nanoGPT's; transpose it first)"
            problems.append(f"tensor {k!r} has shape {list(found[k].shape)}, expected {list(s)}{hint}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise WeightsError(f"{what} does not match its config: " + "; ".join(problems[:5]) + more
                           + ". Check that the config (n_layer, n_embd, n_head, n_inner, n_positions, vocab_size) "
                           "belongs to these weights, or download the checkpoint again.")


def hf_to_minimech(state_dict: dict, cfg: GPTConfig, what: str = "the state dict") -> dict[str, torch.Tensor]:
    """Convert a Hugging Face GPT-2 state dict (GPT2LMHeadModel or GPT2Model) to minimech's parameter names.

    The result holds fresh tensors (never views of `state_dict`), so editing one model cannot change the other.
    """
    if cfg.attn_only or cfg.n_heads * cfg.d_head != cfg.d_model:
        raise WeightsError(f"{what}: Hugging Face GPT-2 has MLPs and n_heads * d_head == d_model; cfg has neither")
    sd = {}
    for key, tensor in state_dict.items():
        # GPT2LMHeadModel prefixes the body with `transformer.`; GPT2Model and some published files do not.
        key = key.removeprefix("transformer.")
        # Older files carry the causal mask as buffers (`h.0.attn.bias` [1, 1, n_ctx, n_ctx], `attn.masked_bias`):
        # they are not weights (minimech builds its own mask). Note `attn.c_attn.bias` IS a weight.
        if key.split(".")[-2:] in (["attn", "bias"], ["attn", "masked_bias"]):
            continue
        sd[key] = tensor
    _check_tensors(sd, _hf_shapes(cfg), what, optional=("lm_head.weight",))

    def new(t: torch.Tensor) -> torch.Tensor:  # a contiguous copy that owns its memory
        return t.detach().clone(memory_format=torch.contiguous_format)

    h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
    out = {"embed.W_E": new(sd["wte.weight"]), "pos_embed.W_pos": new(sd["wpe.weight"])}
    for l in range(cfg.n_layers):
        p, b = f"h.{l}.", f"blocks.{l}."
        # HF's GPT-2 uses Conv1D, whose weight is stored [in, out]: the transpose of nn.Linear's [out, in]. That is
        # minimech's `x @ W` orientation, so c_attn, c_proj and c_fc weights are taken as they are, untransposed
        # (nanoGPT transposes them because it uses nn.Linear).
        # c_attn fuses Q, K and V: [d_model, 3 * d_model] = [W_Q | W_K | W_V] side by side, and in each third the
        # columns run head by head: columns h*d_head .. (h+1)*d_head - 1 are head h's. Split, then move the head axis
        # first: [d_model, head, d_head] -> [head, d_model, d_head].
        qkv_w, qkv_b = sd[p + "attn.c_attn.weight"].split(d, dim=1), sd[p + "attn.c_attn.bias"].split(d)
        for name, w, bias in zip("QKV", qkv_w, qkv_b):
            out[b + f"attn.W_{name}"] = new(w.reshape(d, h, e).permute(1, 0, 2))
            out[b + f"attn.b_{name}"] = new(bias.reshape(h, e))
        # c_proj's rows take the heads' z concatenated, so they split per head: [head*d_head, d] -> [head, d_head, d].
        out[b + "attn.W_O"] = new(sd[p + "attn.c_proj.weight"].reshape(h, e, d))
        out[b + "attn.b_O"] = new(sd[p + "attn.c_proj.bias"])
        for ln, hf_ln in (("ln1", "ln_1"), ("ln2", "ln_2")):
            out[b + f"{ln}.w"], out[b + f"{ln}.b"] = new(sd[p + hf_ln + ".weight"]), new(sd[p + hf_ln + ".bias"])
        out[b + "mlp.W_in"], out[b + "mlp.b_in"] = new(sd[p + "mlp.c_fc.weight"]), new(sd[p + "mlp.c_fc.bias"])
        out[b + "mlp.W_out"], out[b + "mlp.b_out"] = new(sd[p + "mlp.c_proj.weight"]), new(sd[p + "mlp.c_proj.bias"])
    out["ln_final.w"], out["ln_final.b"] = new(sd["ln_f.weight"]), new(sd["ln_f.bias"])
    # lm_head IS an nn.Linear, stored [d_vocab, d_model]: transpose it into W_U [d_model, d_vocab]. GPT-2 ties it to
    # wte, and files saved with tied weights leave it out: then W_U is a copy of W_E.T (a copy, so they can diverge).
    out["unembed.W_U"] = new(sd.get("lm_head.weight", sd["wte.weight"]).T)
    out["unembed.b_U"] = torch.zeros(cfg.d_vocab, dtype=out["embed.W_E"].dtype)  # GPT-2 has no unembedding bias
    return out


# ---- Reading files -------------------------------------------------------------------------------------------------

LFS_POINTER = b"version https://git-lfs"  # what a clone without git-lfs holds in place of each large file


def _missing(path: Path) -> WeightsNotFoundError:
    return WeightsNotFoundError(f"{path} does not exist: the checkpoint is incomplete; download it again")


def _refuse_lfs_pointer(path: Path) -> None:
    """Raise if `path` is a Git LFS pointer: without this, it reads as a corrupt (or tampered) weights file."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(LFS_POINTER))
    except OSError:
        return  # the reader that follows reports it
    if head == LFS_POINTER:
        raise WeightsError(f"{path} is a Git LFS pointer, not the weights: run `git lfs pull` in that repository "
                           "(or download the file)")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A .safetensors or .bin file (or a sharded checkpoint's .index.json) as {name: tensor}."""
    if path.name.endswith(".index.json"):  # sharded: {"weight_map": {tensor: shard file}}
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise WeightsError(f"{path} is not a valid shard index ({e}): download the checkpoint again") from None
        return {k: v for shard in shards for k, v in _read_tensors(path.parent / shard).items()}
    if not path.is_file():
        raise _missing(path)
    _refuse_lfs_pointer(path)
    fix = "it is truncated or corrupt: download or copy it again (for a preset: minimech fetch <name>)"
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(path)  # memory-mapped: tensors are read from the file, no unpickling
        except Exception as e:  # SafetensorError, OSError, ...: all mean the same thing to the user
            raise WeightsError(f"cannot read {path} as safetensors ({type(e).__name__}: {e}); {fix}") from None
    try:
        try:  # weights_only: unpickle tensors and plain containers only, never arbitrary code
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            sd = torch.load(path, map_location="cpu", weights_only=True)  # old (pre-zip) format: no mmap
    except Exception as e:
        # Only "Unsupported global" means a well-formed pickle that names code or arbitrary objects. Torch's other
        # weights-only failures ("Unsupported operand 118", ...) come from bytes that are no pickle at all.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found:
            raise WeightsError(f"{path} holds Python objects besides tensors ({found[1]}), which minimech refuses "
                               "to unpickle: unpickling them could run code. If you trust the file, convert it to a "
                               "state dict of tensors in safetensors format") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))  # torch's own advice would mislead here
        detail = detail[1].strip() if detail else str(e)[:200]
        raise WeightsError(f"cannot read {path} as a PyTorch checkpoint ({type(e).__name__}: {detail}): the file is "
                           f"corrupt or not a PyTorch checkpoint; {fix}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path} holds a {type(sd).__name__}, not a state dict of tensors: save the state dict")
    return sd


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _weights_file(directory: Path) -> Path | None:
    return next((directory / f for f in WEIGHT_FILES if (directory / f).is_file()), None)  # safetensors first


def _is_model_dir(directory: Path) -> bool:
    minimech_format = (directory / "card.json").is_file() and (directory / "model.safetensors").is_file()
    return minimech_format or ((directory / "config.json").is_file() and _weights_file(directory) is not None)


def _load_hf(directory: Path, weights: Path, model_name: str, verify: bool, device, dtype) -> GPT:
    config = directory / "config.json"
    try:
        cfg = from_hf_config(config, model_name=model_name)
    except ConfigError as e:
        raise e if str(config) in str(e) else ConfigError(f"{config}: {e}") from None
    except TypeError as e:  # e.g. a string where a number belongs
        raise ConfigError(f"{config} has a malformed field ({e}): restore the original config.json") from None
    published = check_published(weights) if verify else None  # before reading it: a damaged file fails here
    params = hf_to_minimech(_read_tensors(weights), cfg, what=str(weights))
    model = GPT(cfg, tokenizer=Tokenizer() if cfg.d_vocab == GPT2_N_VOCAB else None, init=False)
    model.load_state_dict(params)
    model.source = str(weights)
    model = model.to(device=device, dtype=dtype).eval()
    if published is not None:  # identify_gpt2 reads these: which published checkpoint, and the weights it loaded
        model.published_as, model.published_fingerprint = published, fingerprint(model)
    return model


def _load_card(directory: Path, verify: bool, device, dtype) -> GPT:
    """minimech's own format: card.json + model.safetensors with minimech's parameter names."""
    card_path, weights = directory / "card.json", directory / "model.safetensors"
    try:
        card = json.loads(card_path.read_text())
        cfg = GPTConfig.from_dict(card["config"])
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as e:
        raise WeightsError(f"{card_path} is not a valid model card ({type(e).__name__}: {e}): restore it "
                           "(git checkout weights/..., or reinstall minimech)") from None
    if not weights.is_file():
        raise _missing(weights)  # before hashing it, which would raise a bare FileNotFoundError
    _refuse_lfs_pointer(weights)  # before the checksum, which would call it damaged
    if verify:
        expected = (card.get("sha256") or {}).get("model.safetensors")
        if expected is None:
            raise ChecksumError(f"{card_path} records no sha256 for model.safetensors: re-save the model with "
                                "minimech.loading.save, or pass verify=False to load it unchecked")
        actual = sha256_file(weights)
        if actual != expected:
            raise ChecksumError(
                f"{weights} is damaged or was changed: its sha256 is {actual} but {card_path.name} expects {expected}."
                " Restore the file (`git checkout weights/...` in a source checkout, or pip install --force-reinstall"
                " minimech), or re-save it with minimech.loading.save if you changed it on purpose.")
    params = _read_tensors(weights)
    model = GPT(cfg, tokenizer=_card_tokenizer(card.get("vocab"), cfg, card_path), init=False)
    _check_tensors(params, {k: tuple(v.shape) for k, v in model.state_dict().items()}, str(weights))
    model.load_state_dict(params)
    model.source = str(directory)
    model.card = card  # what it was trained on, how, and what it does (see weights/README.md)
    return model.to(device=device, dtype=dtype).eval()


def _card_tokenizer(vocab, cfg: GPTConfig, card_path: Path):
    if vocab is None:
        return Tokenizer() if cfg.d_vocab == GPT2_N_VOCAB else None
    if len(vocab) != cfg.d_vocab:
        raise WeightsError(f"{card_path}: vocab lists {len(vocab)} ids but d_vocab is {cfg.d_vocab}: restore the card")
    return Tokenizer(vocab)


def _load_dir(path: Path, model_name: str | None, verify: bool, device, dtype) -> GPT:
    """Load a directory, or a weights file whose directory holds the config."""
    directory, weights = (path.parent, path) if path.is_file() else (path, None)
    if weights is not None and weights.name in ("config.json", "card.json"):
        weights = None  # the config's own path: load its folder
    if (directory / "card.json").is_file() and not (directory / "config.json").is_file():
        return _load_card(directory, verify, device, dtype)
    if not (directory / "config.json").is_file():
        raise WeightsNotFoundError(
            f"{directory} has no config.json (Hugging Face format) or card.json (minimech format): copy the "
            "checkpoint's config.json next to its weights (save_pretrained writes both)")
    weights = weights or _weights_file(directory)
    if weights is None:
        raise WeightsNotFoundError(f"{directory} has a config.json but no weights ({', '.join(WEIGHT_FILES)}): "
                                   "copy model.safetensors into it, or run `minimech fetch` again to finish a download")
    return _load_hf(directory, weights, model_name or directory.resolve().name, verify, device, dtype)


# ---- Finding a preset's weights ------------------------------------------------------------------------------------

def download_dir(name: str) -> Path:
    """Where fetch puts `name`: $MINIMECH_WEIGHTS/<name> if set, else ~/.cache/minimech/<name>."""
    root = os.environ.get("MINIMECH_WEIGHTS")
    return Path(root) / name if root else Path.home() / ".cache" / "minimech" / name


def _hf_hub_cache() -> Path:
    """The Hugging Face cache where huggingface_hub puts it: $HF_HUB_CACHE, else $HF_HOME/hub, else
    $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("HF_HOME") or Path(cache) / "huggingface") / "hub"


def candidate_dirs(name: str) -> list[Path]:
    """Every folder `load(name)` looks in, in order."""
    dirs = [weights_dir() / name]
    if os.environ.get("MINIMECH_WEIGHTS"):
        dirs.append(Path(os.environ["MINIMECH_WEIGHTS"]) / name)
    dirs.append(Path.home() / ".cache" / "minimech" / name)
    hub = _hf_hub_cache()
    repos = [f"models--{name}"] + [f"models--{r.replace('/', '--')}" for r, n in ALIASES.items() if n == name]
    for repo in repos:
        snapshots = hub / repo / "snapshots"
        ref = hub / repo / "refs" / "main"  # the snapshot `main` pointed to when last downloaded comes first
        main = ref.read_text().strip() if ref.is_file() else None
        found = sorted(snapshots.glob("*"), key=lambda p: (p.name != main, -p.stat().st_mtime))
        dirs += found or [snapshots / "<revision>"]
    return dirs


def _load_name(name: str, verify: bool, device, dtype) -> GPT:
    looked = candidate_dirs(name)
    for d in looked:
        if _is_model_dir(d):
            model = _load_dir(d, name, verify, device, dtype)
            model.source = f"{name}: {model.source}"
            return model
    # One line, like every MinimechError (the CLI prints it as `minimech: error: ...`).
    places = "; ".join(f"{d}" + (" (exists, but has no config.json + model.safetensors)" if d.is_dir() else "")
                       for d in looked)
    partial = download_dir(name).with_name(name + ".partial")
    if partial.is_dir():
        places += f". A fetch of {name} stopped part way: {partial} holds it; `minimech fetch {name}` resumes it"
    raise WeightsNotFoundError(
        f"no weights for {name!r} on this machine (minimech never downloads on its own). Looked in: {places}. "
        f"To get them: run `minimech fetch {name}` (on a machine with internet; it writes to {download_dir(name)}), "
        "or copy config.json + model.safetensors of the Hugging Face checkpoint into one of those folders "
        "(set MINIMECH_WEIGHTS=/some/folder to add <folder>/" + name + "), or pass a path to load().")


def load(name_or_path=None, *, device="cpu", dtype: torch.dtype = torch.float32, verify: bool | None = None) -> GPT:
    """Load a model, in eval mode, on `device` in `dtype`.

    name_or_path: a preset name ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2"); a directory
    (Hugging Face format: config.json + model.safetensors or pytorch_model.bin; or minimech's card.json +
    model.safetensors); a weights file next to its config.json; or None for the default shipped model.
    verify: check minimech-format files against the sha256 in their card, and Hugging Face files that
    weights/gpt2-manifest.json lists (same name and size) against its sha256; the model then knows it is that
    published checkpoint (identify_gpt2). Default: True, unless $MINIMECH_NO_VERIFY=1 (the CLI's --no-verify).
    """
    _check_load_arguments(name_or_path, device, dtype)
    if verify is None:
        verify = os.environ.get("MINIMECH_NO_VERIFY", "") in ("", "0")
    if name_or_path is None:
        default = weights_dir() / "DEFAULT"
        if not default.is_file():
            raise WeightsNotFoundError(f"no default model is shipped yet ({default} does not exist): pass a preset "
                                       f"name such as load('gpt2') or a path to load(); presets: {', '.join(PRESETS)}")
        name_or_path = default.read_text().strip()
        if name_or_path not in shipped_models():
            raise WeightsNotFoundError(f"{default} names {name_or_path!r}, which is not a shipped model folder in "
                                       f"{weights_dir()}: reinstall minimech")
    path = Path(name_or_path)
    name = ALIASES.get(str(name_or_path), str(name_or_path))
    if path.exists() and (path.is_file() or _is_model_dir(path)):
        return _load_dir(path, None, verify, device, dtype)
    if name in PRESETS:
        return _load_name(name, verify, device, dtype)
    if name in shipped_models():
        model = _load_dir(weights_dir() / name, name, verify, device, dtype)
        model.source = f"{name} (shipped with minimech): {model.source}"
        return model
    if path.exists():
        return _load_dir(path, None, verify, device, dtype)  # raises, saying what the folder lacks
    raise WeightsNotFoundError(f"{str(name_or_path)!r} is neither an existing file or folder nor a model name: "
                               f"shipped models: {', '.join(shipped_models()) or 'none'}; presets: "
                               f"{', '.join(PRESETS)}")


def _check_load_arguments(name_or_path, device, dtype) -> None:
    """Raise UsageError for an argument load() cannot use, before any file is read."""
    if name_or_path is not None and not isinstance(name_or_path, (str, os.PathLike)):
        raise UsageError(f"name_or_path must be a model name or a path (str or pathlib.Path), got "
                         f"{type(name_or_path).__name__} {name_or_path!r}")
    if isinstance(name_or_path, str) and not name_or_path.strip():
        # Path("") is the current folder: loading whatever happens to be there is never what was meant.
        raise UsageError(f"name_or_path is empty ({name_or_path!r}): pass a preset name such as 'gpt2', a path "
                         "('.' for the current folder), or nothing for the default shipped model")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:0', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device={device!r}, but this torch sees no CUDA GPU (torch.cuda.is_available() is False): "
                         "use device='cpu'")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        named = isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype)
        hint = f" (did you mean torch.{dtype}?)" if named else ""
        raise UsageError(f"dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}{hint}")


def shipped_models() -> list[str]:
    """Names of the small models shipped in weights/ (each a folder with card.json + model.safetensors)."""
    root = weights_dir()
    return sorted(d.name for d in root.iterdir() if d.is_dir() and (d / "card.json").is_file()) if root.is_dir() else []


# ---- minimech's own format -----------------------------------------------------------------------------------------

SAVE_WRITES = {"config", "vocab", "sha256"}  # card keys save() computes itself


def _as_json(value):
    """`value` as it reads back from card.json (tuples become lists), for comparing a card's value with a fresh one."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return value


def save(model: GPT, directory, card_extra: dict | None = None) -> Path:
    """Write `model` as directory/model.safetensors (minimech's names) + directory/card.json; returns the folder.

    card.json: the model's own card (model.card: what it was trained on, its metrics and mechanisms), updated with
    card_extra, plus the keys save() writes itself: {"config": GPTConfig.to_dict(), "vocab": the compact vocab
    (GPT-2 ids) or null, "sha256": {"model.safetensors": hex}}. load(directory) reads it back.
    card_extra may repeat those keys only with the values save() writes (or the model's card holds, as in
    save(model, d, card_extra=model.card)); any sha256 in it is replaced by the new file's.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory} is a file: save() writes a folder (model.safetensors + card.json)")
    tokenizer = getattr(model, "tokenizer", None)
    written = {"config": model.cfg.to_dict(), "vocab": getattr(tokenizer, "vocab", None)}
    own = getattr(model, "card", None) or {}
    extra = dict(card_extra or {})
    for key in set(extra) & SAVE_WRITES:
        # A sha256 from elsewhere describes some other file: the card must carry this file's, or it fails verify.
        value = _as_json(extra[key])
        if key == "sha256" or value == _as_json(written[key]) or key in own and value == _as_json(own[key]):
            del extra[key]
    if conflicting := sorted(set(extra) & SAVE_WRITES):
        raise UsageError(f"card_extra may not set {conflicting} to values other than the model's: save() writes "
                         "those itself (config from model.cfg, vocab from model.tokenizer)")
    card = {**{k: v for k, v in own.items() if k not in SAVE_WRITES}, **extra, **written}
    try:  # before the weights are written: a card that cannot be saved should leave nothing behind
        json.dumps(card)
    except (TypeError, ValueError) as e:
        raise UsageError(f"the model card cannot be written as JSON ({e}): pass card_extra values that are "
                         "numbers, strings, lists and dicts") from None
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, directory / "model.safetensors", metadata={"format": "pt", "minimech": minimech.__version__})
    os.chmod(directory / "model.safetensors", 0o644)  # safetensors creates it owner-only; weights are for sharing
    card["sha256"] = {"model.safetensors": sha256_file(directory / "model.safetensors")}
    tmp = directory / "card.json.tmp"
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp, directory / "card.json")  # a reader never sees half a card
    return directory


# Downloading lives in fetching.py, the manifest and knowing GPT-2 small in published.py; these names stay importable.
from .fetching import FetchError, HF_BASE_URL, download, fetch  # noqa: E402,F401
from .published import (GPT2Identity, check_published, fingerprint, identify_gpt2, is_gpt2_small,  # noqa: E402,F401
                        read_manifest)
