"""Tests for minimech.tokenizer: exact GPT-2 ids, offline, checked files, compact vocabs."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minimech.errors import MinimechError
from minimech.tokenizer import (
    SHA256,
    PromptTooLongError,
    Tokenizer,
    TokenizerError,
    TokenizerFileError,
    load_encoding,
)

DATA = Path(__file__).resolve().parents[1] / "minimech" / "data" / "gpt2"
IOI = "When Mary and John went to the store, John gave a drink to"
IOI_IDS = [2215, 5335, 290, 1757, 1816, 284, 262, 3650, 11, 1757, 2921, 257, 4144, 284]
VARIED = [
    "",
    "Hello world",
    " Hello world",
    "Hello, world! How's it going? I'm fine, you'll see, we've done, they're, he'd.",
    "  leading and trailing spaces   ",
    "tabs\tand\t\tnewlines\n\n\nand\r\nCRLF",
    "   \n  \t ",
    "numbers 1 12 123 1234 12345 3.14159 -42 1,000,000 2024-01-01",
    "unicode: café naïve Ünïcödé Straße",
    "中文字符 日本語のテキスト 한국어",
    "emoji 🤗🙂👩‍👩‍👧 and flags 🇫🇷",
    "Ελληνικά русский עברית العربية हिन्दी",
    "code: def f(x):\n    return x ** 2  # comment",
    "<|endoftext|>",
    "before<|endoftext|>after",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "\u00a0non-breaking\u2003em-space\u200bzero-width",
    "'s 't 're 've 'm 'll 'd 'S 'T",
    "!!!???...;;;:::---___===+++",
]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


@pytest.fixture(scope="module")
def hf():
    """transformers' GPT-2 tokenizer (Rust BPE, not tiktoken) built from the same two files."""
    transformers = pytest.importorskip("transformers")
    from transformers import GPT2Tokenizer

    if int(transformers.__version__.split(".")[0]) >= 5:
        # v5 ignores vocab_file/merges_file (silently: you get an empty vocab); pass contents.
        vocab = json.loads((DATA / "encoder.json").read_text(encoding="utf-8"))
        lines = (DATA / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
        h = GPT2Tokenizer(vocab=vocab, merges=[tuple(m.split()) for m in lines if m])
    else:
        h = GPT2Tokenizer(vocab_file=str(DATA / "encoder.json"), merges_file=str(DATA / "vocab.bpe"))
    assert len(h) == 50257
    return lambda text: h.encode(text, add_special_tokens=False)


def test_ioi_prompt_ids(tok):
    assert tok.encode(IOI) == IOI_IDS
    assert tok.to_tokens(IOI).tolist() == [[50256] + IOI_IDS]
    assert tok.to_tokens(IOI, prepend_bos=False).tolist() == [IOI_IDS]


def test_shipped_files_match_pinned_hashes():
    for name, digest in SHA256.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest


def test_attributes_and_repr(tok):
    assert tok.n_vocab == len(tok) == 50257
    assert tok.eot_id == tok.bos_id == 50256
    assert tok.unk_id is None
    assert "n_vocab=50257" in repr(tok)
    assert load_encoding() is load_encoding(None) is tok.encoding  # cached: built once
    assert tok.encoding.n_vocab == 50257


@pytest.mark.parametrize("text", VARIED)
def test_matches_transformers(tok, hf, text):
    assert tok.encode(text) == hf(text)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_matches_transformers_random_text(tok, hf, text):
    assert tok.encode(text) == hf(text)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(" \t\n'sdmtlvre0123456789aZé中🤗.,!")), max_size=40))
def test_matches_transformers_pattern_edge_cases(tok, hf, text):
    # A small alphabet hits the split regex's corner cases (space runs, contractions) often.
    assert tok.encode(text) == hf(text)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80))
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text
    if text:  # an empty prompt without BOS is an error, tested below
        assert tok.to_string(tok.to_tokens(text, prepend_bos=False)) == [text]


@pytest.mark.parametrize("text", VARIED)
def test_round_trip_varied(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_tampered_file_raises(tmp_path):
    bad = tmp_path / "gpt2"
    shutil.copytree(DATA, bad)
    data = bytearray((bad / "vocab.bpe").read_bytes())
    data[100] ^= 1
    (bad / "vocab.bpe").write_bytes(bytes(data))
    with pytest.raises(TokenizerFileError, match="sha256") as info:
        load_encoding(bad)
    msg = str(info.value)
    assert "vocab.bpe" in msg and SHA256["vocab.bpe"] in msg and "reinstall" in msg
    assert isinstance(info.value, MinimechError)


def test_missing_file_raises(tmp_path):
    bad = tmp_path / "gpt2"
    shutil.copytree(DATA, bad)
    (bad / "encoder.json").unlink()
    with pytest.raises(TokenizerFileError, match="encoder.json"):
        load_encoding(bad)


def test_batch_right_and_left_padding(tok):
    tokens, mask = tok.to_tokens(["Hi", "Hello there friend"], return_mask=True)
    assert tokens.dtype == torch.long and tokens.shape == (2, 4)
    assert tokens[0].tolist() == [50256, tok.encode("Hi")[0], 50256, 50256]
    assert mask.tolist() == [[True, True, False, False], [True] * 4]
    left = tok.to_tokens(["Hi", "Hello there friend"], padding_side="left")
    assert left[0].tolist() == [50256, 50256, 50256, tok.encode("Hi")[0]]
    with pytest.raises(ValueError, match="padding_side"):
        tok.to_tokens("x", padding_side="middle")


def test_empty_prompt(tok):
    assert tok.to_tokens("").tolist() == [[50256]]
    with pytest.raises(ValueError, match="empty prompt"):
        tok.to_tokens("", prepend_bos=False)


def test_prompt_too_long(tok):
    text = " a" * 1099
    with pytest.raises(PromptTooLongError) as info:
        tok.to_tokens(text, max_len=1024)
    assert "prompt is 1100 tokens, model context n_ctx is 1024: shorten the prompt" in str(info.value)
    assert isinstance(info.value, MinimechError)
    assert tok.to_tokens(text, prepend_bos=False, max_len=1099).shape == (1, 1099)


def test_str_tokens_and_strings(tok):
    assert tok.to_str_tokens("Hello world") == ["<|endoftext|>", "Hello", " world"]
    assert tok.to_str_tokens("Hello world", prepend_bos=False) == ["Hello", " world"]
    ids = tok.to_tokens("Hello world")
    assert tok.to_str_tokens(ids) == tok.to_str_tokens(ids[0]) == tok.to_str_tokens(ids[0].tolist())
    batch = tok.to_tokens(["a b", "c"], prepend_bos=False)
    assert tok.to_str_tokens(batch) == [["a", " b"], ["c", "<|endoftext|>"]]
    assert tok.to_string(ids[0]) == "<|endoftext|>Hello world"
    assert tok.to_string(batch) == ["a b", "c<|endoftext|>"]
    assert tok.id_to_str(50256) == "<|endoftext|>"


def test_single_token(tok):
    assert tok.to_single_token(" John") == 1757
    with pytest.raises(ValueError, match="not one") as info:
        tok.to_single_token(" Johnathan Smith")
    assert "' Smith'" in str(info.value)
    with pytest.raises(ValueError, match="0 tokens"):
        tok.to_single_token("")


def test_compact_vocab_with_unk():
    vocab = [50256, -1, 1757, 5335, 290, 284]  # eot, unk, " John", " Mary", " and", " to"
    tok = Tokenizer(vocab)
    assert (tok.n_vocab, tok.eot_id, tok.bos_id, tok.unk_id) == (6, 0, 0, 1)
    assert "compact" in repr(tok)
    ids = tok.encode(" Mary and John went to")
    assert ids == [3, 4, 2, 1, 5]
    assert tok.to_gpt2(ids) == [5335, 290, 1757, -1, 284]
    assert tok.from_gpt2([5335, 290, 1757, 1816, 284]) == ids
    t = torch.tensor([[3, 4, 2]])
    assert tok.to_gpt2(t).tolist() == [[5335, 290, 1757]]
    assert torch.equal(tok.from_gpt2(tok.to_gpt2(t)), t)
    assert tok.decode(ids) == " Mary and John<unk> to"
    assert tok.id_to_str(1) == "<unk>"
    assert tok.to_tokens(" John<|endoftext|>").tolist() == [[0, 2, 0]]
    assert tok.to_str_tokens(" Mary went") == ["<|endoftext|>", " Mary", "<unk>"]


def test_compact_vocab_without_unk():
    tok = Tokenizer([1757, 50256])
    assert (tok.eot_id, tok.unk_id) == (1, None)
    assert tok.encode(" John") == [0]
    with pytest.raises(TokenizerError, match="' Mary'.*not in this model's vocabulary"):
        tok.encode(" Mary")


@pytest.mark.parametrize("vocab", [[1, 2], [50256, -1, -1], [50256, 7, 7], [50256, 50257]])
def test_compact_vocab_validation(vocab):
    with pytest.raises(TokenizerError, match="compact vocab"):
        Tokenizer(vocab)
