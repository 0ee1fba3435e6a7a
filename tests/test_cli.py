"""The command line, on a tiny Hugging Face GPT-2 saved to disk: output checked against transformers' own logits."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minimech import GPT, GPTConfig, MinimechError
from minimech import cli
from minimech.cli import main
from minimech.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random GPT-2 in Hugging Face format, with GPT-2's vocabulary so the real tokenizer applies."""
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64))
    path = tmp_path_factory.mktemp("tiny-hf")
    hf.save_pretrained(path)
    return path, hf.eval()


def hf_last_logits(hf, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(tokens, use_cache=False).logits[0, -1]


def table(out: str, header_start: str) -> list[list[str]]:
    """The rows of the table whose header line starts with header_start; cells split on 2+ spaces."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(header_start))
    rows = []
    for line in lines[start + 1:]:
        if not re.match(r"^\s+\d", line):
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def assert_one_error_line(err: str) -> None:
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("minimech: error: ") and "Traceback" not in err


# ---- info -----------------------------------------------------------------------------------------------------

def test_info_on_a_hf_dir(hf_dir, capsys):
    path, hf = hf_dir
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    cfg = GPTConfig(n_layers=2, n_heads=2, d_model=32, n_ctx=64)
    for field, value in cfg.to_dict().items():
        if field != "model_name":
            assert re.search(rf"^\s+{field}\s+{re.escape(str(value))}$", out, re.M), field
    # Hugging Face's own count (tied W_U once); minimech also stores W_U apart from W_E and a zero b_U
    assert f"parameters: {hf.num_parameters():,} (W_U is W_E transposed, counted once; b_U is zero" in out
    assert f"TransformerLens's cfg.n_params: {2 * (4 * 32 * 32 + 2 * 32 * 128):,} " in out
    stored = sum(p.numel() for p in hf.parameters()) + cfg.d_vocab * cfg.d_model + cfg.d_vocab
    assert f"stored by minimech: {stored:,} " in out
    assert str(path) in out  # where the weights came from
    assert "full vocabulary of 50,257 tokens" in out


def test_info_compact_vocab_and_no_tokenizer(monkeypatch, capsys):
    cfg = GPTConfig(n_layers=1, n_heads=1, d_model=8, n_ctx=8, d_vocab=4)
    model = GPT(cfg, tokenizer=Tokenizer([50256, 464, 3797, -1]))
    monkeypatch.setattr(cli, "load_model", lambda name: model)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "compact vocabulary of 4 of GPT-2's 50,257 tokens (<|endoftext|> = 0, unknown token = 3)" in out
    assert "weights from: random init" in out
    model.tokenizer = None
    assert main(["info", "whatever"]) == 0
    assert "tokenizer: none" in capsys.readouterr().out


# ---- run ------------------------------------------------------------------------------------------------------

def test_run_tokens_and_top_k_match_transformers(hf_dir, capsys):
    path, hf = hf_dir
    prompt = "The cat sat on the"
    assert main(["run", prompt, "--model", str(path), "-k", "7"]) == 0
    out = capsys.readouterr().out
    tok = Tokenizer()
    tokens = tok.to_tokens(prompt)  # BOS first

    token_rows = table(out, "pos")
    assert [int(r[1]) for r in token_rows] == tokens[0].tolist()
    assert [r[2] for r in token_rows] == [repr(tok.id_to_str(t)) for t in tokens[0].tolist()]
    assert token_rows[-1][2] == "' the'"  # repr makes the leading space visible

    rows = table(out, "rank")
    assert len(rows) == 7
    probs = hf_last_logits(hf, tokens).softmax(-1)
    top = probs.topk(7)
    assert [int(r[3]) for r in rows] == top.indices.tolist()
    shown = torch.tensor([float(r[1]) for r in rows])
    torch.testing.assert_close(shown, top.values, atol=2e-6, rtol=0)  # printed with 6 decimals
    assert (shown[:-1] >= shown[1:]).all() and 0 < shown.sum() <= 1
    assert [r[4] for r in rows] == [repr(tok.id_to_str(i)) for i in top.indices.tolist()]
    assert f"(these 7 hold {top.values.sum():.4f} of the probability)" in out


def test_run_no_bos(hf_dir, capsys):
    path, hf = hf_dir
    assert main(["run", "Hello world", "--model", str(path), "--no-bos", "-k", "3"]) == 0
    out = capsys.readouterr().out
    tokens = Tokenizer().to_tokens("Hello world", prepend_bos=False)
    assert [int(r[1]) for r in table(out, "pos")] == tokens[0].tolist() and "(2 tokens)" in out
    top = hf_last_logits(hf, tokens).softmax(-1).topk(3)
    assert [int(r[3]) for r in table(out, "rank")] == top.indices.tolist()


def test_run_generate_is_greedy(hf_dir, capsys):
    path, hf = hf_dir
    assert main(["run", "Once upon a time", "--model", str(path), "--generate", "6"]) == 0
    out = capsys.readouterr().out
    tok = Tokenizer()
    tokens = tok.to_tokens("Once upon a time")
    for _ in range(6):  # the reference: transformers' argmax, token by token
        tokens = torch.cat([tokens, hf_last_logits(hf, tokens).argmax().view(1, 1)], dim=1)
        if tokens[0, -1] == tok.eot_id:
            tokens = tokens[:, :-1]
            break
    assert out.rstrip("\n").endswith("\n" + tok.decode(tokens[0, 1:]))


# ---- fetch ----------------------------------------------------------------------------------------------------

def test_fetch_calls_loading_fetch(monkeypatch, capsys, tmp_path):
    import minimech.loading

    calls = []
    monkeypatch.setattr(minimech.loading, "fetch", lambda name, dest=None, progress=True: calls.append(
        (name, dest, progress)) or tmp_path / name)
    assert main(["fetch", "gpt2", "--dest", str(tmp_path)]) == 0
    assert calls == [("gpt2", str(tmp_path), True)]
    assert capsys.readouterr().out.strip() == str(tmp_path / "gpt2")


def test_fetch_unknown_name_is_one_error_line(capsys):
    assert main(["fetch", "no-such-model"]) == 1
    captured = capsys.readouterr()
    assert_one_error_line(captured.err)
    assert "no-such-model" in captured.err and captured.out == ""


# ---- errors ---------------------------------------------------------------------------------------------------

def test_missing_model_is_one_error_line(capsys, monkeypatch):
    monkeypatch.delenv("MINIMECH_DEBUG", raising=False)
    assert main(["run", "x", "--model", "/nonexistent"]) == 1
    captured = capsys.readouterr()
    assert_one_error_line(captured.err)
    assert "/nonexistent" in captured.err and captured.out == ""


def test_multi_line_messages_become_one_line(monkeypatch, capsys):
    def fail(name):
        raise MinimechError("first line\n  second line\n")

    monkeypatch.setattr(cli, "load_model", fail)
    assert main(["info"]) == 1
    assert capsys.readouterr().err == "minimech: error: first line second line\n"


@pytest.mark.parametrize("exc, text", [(FileNotFoundError(2, "No such file or directory", "/x/y"), "/x/y"),
                                       (KeyboardInterrupt(), "interrupted")])
def test_file_not_found_and_ctrl_c(monkeypatch, capsys, exc, text):
    def fail(name):
        raise exc

    monkeypatch.setattr(cli, "load_model", fail)
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert text in err


def test_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("MINIMECH_DEBUG", "1")
    with pytest.raises(MinimechError):
        main(["run", "x", "--model", "/nonexistent"])


def test_bad_option_values(capsys):
    assert main(["run", "x", "-k", "0"]) == 1
    assert_one_error_line(capsys.readouterr().err)
    assert main(["run", "x", "--generate", "-1"]) == 1
    assert_one_error_line(capsys.readouterr().err)


def test_usage_errors_are_argparse_status_2(capsys):
    assert main([]) == 2
    assert main(["no-such-command"]) == 2
    assert main(["run"]) == 2  # the prompt is missing
    assert main(["run", "x", "-k", "many"]) == 2
    assert "usage: minimech" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "info" in capsys.readouterr().out and main(["--version"]) == 0


def test_a_new_subcommand_is_one_decorated_function(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))  # registered only for this test

    @cli.command("hello", "say hello", cli.arg("--name", default="world"))
    def cmd_hello(args):
        print(f"hello {args.name}")

    assert main(["hello", "--name", "there"]) == 0
    assert capsys.readouterr().out == "hello there\n"


# ---- the installed console script -----------------------------------------------------------------------------

def console_script() -> str:
    found = shutil.which("minimech") or str(Path(sys.executable).parent / "minimech")
    if not Path(found).is_file():
        pytest.skip("the minimech console script is not installed (pip install -e .)")
    return found


def test_console_script_error_exit_code_and_no_traceback():
    env = {k: v for k, v in os.environ.items() if k != "MINIMECH_DEBUG"}
    result = subprocess.run([console_script(), "run", "x", "--model", "/nonexistent"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    assert_one_error_line(result.stderr)
    assert result.stdout == ""
    usage = subprocess.run([console_script(), "no-such-command"], capture_output=True, text=True, env=env, timeout=120)
    assert usage.returncode == 2 and "usage: minimech" in usage.stderr and "Traceback" not in usage.stderr
