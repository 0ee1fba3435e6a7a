"""Broken inputs to loading and the command line each end in one clear MinimechError (or a quiet exit), never a raw
torch or OS error. Every file written here is in tmp_path: the shipped weights are copied, never changed."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import minimech
from minimech import GPT, GPTConfig, MinimechError
from minimech import loading
from minimech.cli import main
from minimech.loading import ChecksumError, WeightsError, WeightsNotFoundError, load
from minimech.tokenizer import Tokenizer

TINY_HF_CONFIG = {"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 8, "n_positions": 16, "vocab_size": 20}
LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 1533408\n")


def hf_dir_with(tmp_path, filename, content: bytes):
    """A Hugging Face-style folder: a valid config.json next to a weights file holding `content`."""
    (tmp_path / "config.json").write_text(json.dumps(TINY_HF_CONFIG))
    (tmp_path / filename).write_bytes(content)
    return tmp_path


def shipped_copy(tmp_path, with_weights=True):
    """The default shipped model's card (and weights) copied into tmp_path."""
    source = loading.weights_dir() / (loading.weights_dir() / "DEFAULT").read_text().strip()
    target = tmp_path / source.name
    target.mkdir()
    shutil.copy(source / "card.json", target / "card.json")
    if with_weights:
        shutil.copy(source / "model.safetensors", target / "model.safetensors")
    return target


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minimech: error: ") and "Traceback" not in err, err
    return lines[0]


# ---- unreadable weights files --------------------------------------------------------------------------------------

def test_garbage_bin_is_called_corrupt_not_unsafe(tmp_path):
    # Starts like a pickle, so torch's weights-only unpickler is what rejects it ("Unsupported operand").
    d = hf_dir_with(tmp_path, "pytorch_model.bin", b"\x80\x02garbage\xff\xfe" * 40)
    with pytest.raises(WeightsError) as e:
        load(d)
    msg = str(e.value)
    assert "corrupt or not a PyTorch checkpoint" in msg and str(d / "pytorch_model.bin") in msg
    assert "download or copy it again" in msg
    assert "Python objects" not in msg and "run code" not in msg and "\n" not in msg


@pytest.mark.parametrize("filename", ["pytorch_model.bin", "model.safetensors"])
def test_git_lfs_pointer_is_named(tmp_path, filename):
    d = hf_dir_with(tmp_path, filename, LFS_POINTER)
    with pytest.raises(WeightsError, match=r"is a Git LFS pointer, not the weights: run `git lfs pull`") as e:
        load(d)
    assert str(d / filename) in str(e.value)


def test_git_lfs_pointer_in_a_card_folder_is_not_called_tampered(tmp_path):
    d = shipped_copy(tmp_path)
    (d / "model.safetensors").write_bytes(LFS_POINTER)
    with pytest.raises(WeightsError, match="Git LFS pointer") as e:
        load(d)
    assert not isinstance(e.value, ChecksumError)


@pytest.mark.parametrize("verify", [True, False])
def test_card_without_weights_is_weights_not_found(tmp_path, verify):
    d = shipped_copy(tmp_path, with_weights=False)
    with pytest.raises(WeightsNotFoundError, match="does not exist: the checkpoint is incomplete") as e:
        load(d, verify=verify)
    assert str(d / "model.safetensors") in str(e.value)


# ---- save keeps the card -------------------------------------------------------------------------------------------

def test_save_keeps_the_models_card(tmp_path):
    model = load()
    d = loading.save(model, tmp_path / "copy")
    again = load(d)  # verify=True: the card's sha256 is the new file's
    for key in ("name", "mechanisms", "metrics", "corpus", "recipe"):
        assert again.card[key] == model.card[key], key
    assert again.card["sha256"]["model.safetensors"] == loading.sha256_file(d / "model.safetensors")
    tokens = model.to_tokens("When Mary and John went to the store")
    assert torch.equal(model(tokens), again(tokens))


def test_save_accepts_the_models_own_card_as_card_extra(tmp_path):
    model = load()
    d = loading.save(model, tmp_path / "copy", card_extra={**model.card, "note": "re-saved"})
    card = json.loads((d / "card.json").read_text())
    assert card["note"] == "re-saved" and card["mechanisms"] == model.card["mechanisms"]
    assert card["config"] == model.cfg.to_dict() and card["vocab"] == model.tokenizer.vocab
    load(d)  # the checksum verifies


def test_save_reserved_keys(tmp_path):
    vocab = list(range(20)) + [50256, -1]
    cfg = GPTConfig(n_layers=1, n_heads=2, d_model=8, d_mlp=16, n_ctx=9, d_vocab=len(vocab), model_name="t")
    model = GPT(cfg, tokenizer=Tokenizer(vocab), seed=0)
    # What save() writes anyway, and a stale checksum, are dropped rather than refused.
    d = loading.save(model, tmp_path / "same", card_extra={"config": cfg.to_dict(), "vocab": vocab,
                                                            "sha256": {"model.safetensors": "0" * 64}})
    assert load(d).card["config"] == cfg.to_dict()
    with pytest.raises(MinimechError, match=r"may not set \['config'\]") as e:
        loading.save(model, tmp_path / "other", card_extra={"config": {"n_layers": 7}})
    assert isinstance(e.value, ValueError) and not (tmp_path / "other").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(MinimechError, match="is a file: save"):
        loading.save(model, tmp_path / "file")


# ---- load's arguments ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "   "])
def test_empty_name_is_an_error_not_the_current_folder(tmp_path, monkeypatch, name):
    monkeypatch.chdir(shipped_copy(tmp_path))  # a loadable model in the current folder must not be picked up
    with pytest.raises(MinimechError, match="name_or_path is empty"):
        load(name)


@pytest.mark.parametrize("kwargs, named", [({"name_or_path": 3}, "name_or_path"), ({"device": "gpu"}, "device"),
                                           ({"dtype": "float32"}, "dtype"), ({"dtype": torch.int64}, "dtype")])
def test_bad_load_arguments_are_value_errors_naming_the_argument(kwargs, named):
    with pytest.raises(MinimechError, match=rf"^{named}\b") as e:
        load(**kwargs)
    assert isinstance(e.value, ValueError)


# ---- the command line ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", ["vocab + 1", "-1", "0"])
def test_lens_k_out_of_range(tmp_path, capsys, k):
    if k == "vocab + 1":  # one more than the default model's vocabulary (story-4l: 7,058 tokens)
        k = str(load().cfg.d_vocab + 1)
    assert main(["lens", "When Mary", "-k", k, "--out", str(tmp_path / "lens.png")]) == 1
    assert "-k must be" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "lens.png").exists()


@pytest.mark.parametrize("seq_len", ["-3", "0", "32"])  # attn-only-2l: n_ctx 64, so at most 31
def test_heads_seq_len_out_of_range(tmp_path, capsys, seq_len):
    n_ctx = load("attn-only-2l").cfg.n_ctx
    assert main(["heads", "--model", "attn-only-2l", "--seq-len", seq_len, "--out", str(tmp_path / "h.png")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "--seq-len must be" in line and (int(seq_len) < 1 or f"between 1 and {(n_ctx - 1) // 2}" in line)


def test_heads_longest_seq_len_runs(tmp_path, capsys):
    longest = (load("attn-only-2l").cfg.n_ctx - 1) // 2
    assert main(["heads", "--model", "attn-only-2l", "--seq-len", str(longest), "--out", str(tmp_path / "h.png")]) == 0
    assert (tmp_path / "h.png").exists()


def test_folder_options_that_name_a_file(tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("not a folder")
    for argv in (["tour", "--out", str(f)], ["fetch", "gpt2", "--dest", str(f)],
                 ["train", "attn-only-2l", "--out", str(f)]):
        assert main(argv) == 1
        assert f"must be a folder, {f} is a file" in one_error_line(capsys.readouterr().err), argv
    # A PNG path below a file: the folder plot.py makes cannot be made.
    assert main(["lens", "When Mary", "--out", str(f / "lens.png")]) == 1
    assert f"{f} is a file, where a folder is needed" in one_error_line(capsys.readouterr().err)
    assert f.read_text() == "not a folder"


def test_closed_stdout_pipe_is_quiet(tmp_path):
    """`minimech info | head -1` where head has already gone: no "Broken pipe" error line, no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to stdout now fails with EPIPE
    env = {k: v for k, v in os.environ.items() if k != "MINIMECH_DEBUG"}
    try:
        result = subprocess.run([sys.executable, "-c", "import sys; from minimech.cli import main; "
                                 "sys.exit(main(sys.argv[1:]))", "info"],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                                timeout=120)
    finally:
        os.close(write_end)
    assert result.returncode == 1  # Python's documented recipe ("Note on SIGPIPE")
    assert "Broken pipe" not in result.stderr and "Traceback" not in result.stderr
    assert "minimech: error" not in result.stderr and "Exception ignored" not in result.stderr
