"""GPT-2's byte-level BPE tokenizer, built offline with tiktoken.

`tiktoken.get_encoding("gpt2")` downloads `vocab.bpe` and `encoder.json` on
first use; minimech ships both files (see data/gpt2/LICENSE-NOTE.md), checks
their sha256, and builds the identical `tiktoken.Encoding` from them.

BOS handling — read this, it changes results. GPT-2 has no BOS token of its
own; it was trained on documents separated by `<|endoftext|>` (id 50256), so
that token plays the BOS role. Like TransformerLens, `to_tokens` and
`to_str_tokens` default to `prepend_bos=True`: "Hello" becomes
[50256, 15496], not [15496]. Every position then has a fixed "attention sink"
to look at, and logits, attention patterns and activations differ from the
un-prefixed prompt. Pass `prepend_bos=False` to get the raw tokens; `encode`
never adds one.

Model ids vs GPT-2 ids: with the full vocabulary (`Tokenizer()`) they are the
same. Small shipped models may use a compact vocabulary, `Tokenizer(vocab)`,
where `vocab[i]` is the GPT-2 id of model token i and -1 marks the
unknown-token slot; `to_gpt2` / `from_gpt2` convert between the two.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
from pathlib import Path

import tiktoken
import torch

from minimech.errors import MinimechError

EOT_TEXT = "<|endoftext|>"
GPT2_EOT_ID = 50256
GPT2_N_VOCAB = 50257
SHA256 = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
try:  # tiktoken's own gpt2 pattern: a faster (possessive) form of the original
    from tiktoken_ext.openai_public import r50k_pat_str as PAT_STR
except ImportError:  # older tiktoken: the original, as in OpenAI's GPT-2 encoder.py
    PAT_STR = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class TokenizerFileError(MinimechError):
    """A shipped tokenizer file is missing or not byte-identical to GPT-2's."""


class TokenizerError(MinimechError, ValueError):
    """Text or ids that this tokenizer cannot handle as asked."""


class TokenTypeError(MinimechError, TypeError):
    """Something given as token ids that is not an integer tensor or a string."""


class PromptTooLongError(TokenizerError):
    """A prompt has more tokens than the model's context window."""


def _read_checked(path) -> bytes:  # a Path or an importlib.resources Traversable
    fix = "reinstall minimech (pip install --force-reinstall minimech) to restore it"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TokenizerFileError(f"tokenizer file {path} cannot be read ({e}): {fix}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != SHA256[path.name]:
        raise TokenizerFileError(
            f"tokenizer file {path} is corrupted: expected sha256 {SHA256[path.name]}, "
            f"got {actual}; {fix}"
        )
    return data


def _ranks_from(vocab_bpe: bytes, encoder_json: bytes) -> dict[bytes, int]:
    # Same conversion as tiktoken.load.data_gym_to_mergeable_bpe_ranks, which we
    # don't call: it reads files through a download cache in the temp dir.
    # GPT-2 files spell each byte as a printable character: printable latin-1
    # bytes stand for themselves, the other 68 are shifted to chr(256 + n).
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    byte_of = {chr(b): b for b in printable}
    shifted = [b for b in range(256) if b not in byte_of.values()]
    byte_of.update({chr(256 + n): b for n, b in enumerate(shifted)})

    def to_bytes(s: str) -> bytes:
        return bytes(byte_of[c] for c in s)

    # Ranks 0..255 are the single bytes, in this (printable-first) order;
    # each merge line of vocab.bpe then adds one token, in priority order.
    ranks = {bytes([b]): i for i, b in enumerate(printable + shifted)}
    for line in vocab_bpe.decode("utf-8").split("\n")[1:-1]:  # skip "#version" header
        first, second = line.split()
        ranks[to_bytes(first) + to_bytes(second)] = len(ranks)
    # tiktoken assumes rank == id; encoder.json is the authority on ids.
    encoder = {to_bytes(k): v for k, v in json.loads(encoder_json).items() if k != EOT_TEXT}
    if ranks != encoder:
        raise TokenizerFileError("vocab.bpe and encoder.json disagree: reinstall minimech")
    return ranks


def load_encoding(data_dir: str | Path | None = None) -> tiktoken.Encoding:
    """The GPT-2 `tiktoken.Encoding`, from the shipped files (or `data_dir`). Cached."""
    # Normalise first so load_encoding() and load_encoding(None) share one cache entry.
    return _build_encoding(None if data_dir is None else Path(data_dir).resolve())


@functools.lru_cache(maxsize=4)  # building takes ~0.3-1 s; every model shares the result
def _build_encoding(data_dir: Path | None) -> tiktoken.Encoding:
    if data_dir is None:
        # importlib.resources, not __file__, so a zipped or non-editable install works.
        data_dir = importlib.resources.files("minimech") / "data" / "gpt2"
    vocab_bpe = _read_checked(data_dir / "vocab.bpe")
    encoder_json = _read_checked(data_dir / "encoder.json")
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=PAT_STR,
        mergeable_ranks=_ranks_from(vocab_bpe, encoder_json),
        special_tokens={EOT_TEXT: GPT2_EOT_ID},
        explicit_n_vocab=GPT2_N_VOCAB,
    )


class Tokenizer:
    """Text <-> model token ids. `vocab=None`: full GPT-2; else `vocab[i]` is model token i's GPT-2 id."""

    def __init__(self, vocab: list[int] | None = None, data_dir: str | Path | None = None):
        self.encoding = load_encoding(data_dir)
        self.vocab = None if vocab is None else [int(v) for v in vocab]
        self.unk_id: int | None = None
        if self.vocab is None:
            self.eot_id = GPT2_EOT_ID
            return
        v = self.vocab
        bad = [x for x in v if not -1 <= x < GPT2_N_VOCAB]
        if bad or v.count(-1) > 1 or len(set(v)) != len(v) or GPT2_EOT_ID not in v:
            raise TokenizerError(
                "a compact vocab must list distinct GPT-2 ids in [0, 50256], include 50256 "
                f"(<|endoftext|>) and at most one -1 (unknown slot); got bad ids {bad[:5]}"
            )
        self.eot_id = v.index(GPT2_EOT_ID)
        self.unk_id = v.index(-1) if -1 in v else None
        # -1 in _from means "not in this vocab"; _to maps the unk slot to -1 as given.
        self._to = torch.tensor(v, dtype=torch.long)
        self._from = torch.full((GPT2_N_VOCAB,), -1, dtype=torch.long)
        known = self._to >= 0
        self._from[self._to[known]] = torch.arange(len(v))[known]

    @property
    def n_vocab(self) -> int:
        return GPT2_N_VOCAB if self.vocab is None else len(self.vocab)

    @property
    def bos_id(self) -> int:
        return self.eot_id  # GPT-2 has no BOS of its own; see the module docstring.

    def __len__(self) -> int:
        return self.n_vocab

    def __repr__(self) -> str:
        if self.vocab is None:
            return f"Tokenizer(gpt2, n_vocab={self.n_vocab})"
        return f"Tokenizer(compact, n_vocab={self.n_vocab}, eot_id={self.eot_id}, unk_id={self.unk_id})"

    # -- id mapping -------------------------------------------------------------
    def to_gpt2(self, ids):
        """Model ids -> GPT-2 ids (list or tensor, same kind back). The unk slot maps to -1."""
        if self.vocab is None:
            return ids
        if isinstance(ids, torch.Tensor):
            return self._to.to(ids.device)[ids]
        return [self.vocab[i] for i in ids]

    def from_gpt2(self, ids):
        """GPT-2 ids -> model ids (list or tensor). Missing tokens become unk, or raise."""
        if self.vocab is None:
            return ids
        as_list = not isinstance(ids, torch.Tensor)
        t = torch.as_tensor(ids, dtype=torch.long)
        out = self._from.to(t.device)[t]
        missing = out < 0
        if missing.any():
            if self.unk_id is None:
                gid = int(t[missing].flatten()[0])
                raise TokenizerError(
                    f"token {self.encoding.decode([gid])!r} (GPT-2 id {gid}) is not in this "
                    "model's vocabulary, and the vocabulary has no unknown token"
                )
            out[missing] = self.unk_id
        return out.tolist() if as_list else out

    # -- text <-> ids -----------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Model ids of `text`, no BOS added. `<|endoftext|>` in the text becomes the eot token."""
        return self.from_gpt2(self.encoding.encode(text, allowed_special={EOT_TEXT}))

    def decode(self, ids) -> str:
        """Text of a 1-D list/tensor of model ids; the unknown token shows as "<unk>"."""
        ids = _as_int_list(ids, self.n_vocab)
        # Decode runs of known tokens together: one character can span several tokens.
        out, run = [], []
        for i in ids:
            if i == self.unk_id:
                out += [self.encoding.decode(self.to_gpt2(run)), "<unk>"]
                run = []
            else:
                run.append(i)
        return "".join(out) + self.encoding.decode(self.to_gpt2(run))

    def id_to_str(self, id: int) -> str:
        """One token's text (a partial UTF-8 character shows as U+FFFD)."""
        return self.decode([int(id)])

    def to_single_token(self, text: str) -> int:
        """The model id of `text`, which must be exactly one token."""
        ids = self.encode(text)
        if len(ids) != 1:
            split = [self.id_to_str(i) for i in ids]
            raise TokenizerError(f"{text!r} is {len(ids)} tokens, not one: {split}")
        if self.unk_id is not None and ids[0] == self.unk_id:
            # one GPT-2 token that the compact vocabulary lacks: answering with the unknown slot would silently
            # measure '<unk>' instead of the word
            raise TokenizerError(f"{text!r} is not in this model's vocabulary (it maps to the unknown token "
                                 f"<unk>): choose a word the model knows, e.g. one from model.to_str_tokens of a "
                                 "prompt it reads well")
        return ids[0]

    def to_tokens(self, text, prepend_bos: bool = True, padding_side: str = "right",
                  max_len: int | None = None, return_mask: bool = False):
        """Token ids as a LongTensor [batch, pos]; a str gives batch 1.

        A list of strings is padded to the longest with the eot id, which is
        also the BOS: so padding is invisible in the ids. Compare lengths, or
        pass `return_mask=True` to get `(tokens, mask)` with mask True on real
        tokens. `max_len` (usually the model's n_ctx) raises PromptTooLongError.
        """
        if padding_side not in ("right", "left"):
            raise TokenizerError(f"padding_side must be 'right' or 'left', not {padding_side!r}")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise TokenizerError("to_tokens got an empty list of prompts")
        rows = [([self.bos_id] if prepend_bos else []) + self.encode(t) for t in texts]
        for t, row in zip(texts, rows):
            if not row:
                raise TokenizerError("empty prompt with prepend_bos=False gives zero tokens")
            if max_len is not None and len(row) > max_len:
                raise PromptTooLongError(
                    f"prompt is {len(row)} tokens, model context n_ctx is {max_len}: "
                    f"shorten the prompt (it starts {t[:40]!r})"
                )
        width = max(map(len, rows))
        tokens = torch.full((len(rows), width), self.eot_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for b, row in enumerate(rows):
            span = slice(0, len(row)) if padding_side == "right" else slice(width - len(row), width)
            tokens[b, span] = torch.tensor(row, dtype=torch.long)
            mask[b, span] = True
        return (tokens, mask) if return_mask else tokens

    def to_str_tokens(self, x, prepend_bos: bool = True):
        """Each token's text. A str (BOS added per prepend_bos), 1-D ids, or [1, pos] -> list[str];
        a list of strs or [batch>1, pos] -> list[list[str]]. prepend_bos only applies to text."""
        if isinstance(x, str):
            x = self.to_tokens(x, prepend_bos=prepend_bos)[0]
        elif isinstance(x, (list, tuple)) and x and isinstance(x[0], str):
            return [self.to_str_tokens(t, prepend_bos) for t in x]
        t = torch.as_tensor(x, dtype=torch.long)
        if t.dim() == 2:
            if t.shape[0] != 1:
                return [self.to_str_tokens(row) for row in t]
            t = t[0]
        return [self.id_to_str(i) for i in t.tolist()]

    def to_string(self, tokens):
        """Decode ids: 1-D -> str, 2-D [batch, pos] -> list[str] (padding is decoded too)."""
        t = torch.as_tensor(tokens, dtype=torch.long)
        if t.dim() == 2:
            return [self.decode(row) for row in t]
        return self.decode(t)


def _as_int_list(ids, n_vocab: int | None = None) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise TokenizerError(f"expected a 1-D tensor of ids, got shape {tuple(ids.shape)}")
        ids = ids.tolist()
    ids = [int(i) for i in ids]
    bad = [i for i in ids if i < 0 or (n_vocab is not None and i >= n_vocab)]
    if bad:
        raise TokenizerError(f"token ids must lie in [0, {n_vocab}), got {bad[:5]}: were they made by another "
                             "model's tokenizer (a GPT-2 id given to a compact-vocabulary model)?")
    return ids
