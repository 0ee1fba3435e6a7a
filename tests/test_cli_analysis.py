"""The analysis subcommands on the shipped models: each prints what it found and writes readable PNGs; the numbers
they print are the analysis functions' (checked against them here), and bad input is one error line."""

import pytest
import torch
from PIL import Image

import minimech
from minimech.analysis import detector_scores, ioi_dataset, logit_lens, patch_heads, repeated_random_tokens
from minimech.cli import main

PROMPT = "When Mary and John went to the store, John gave a drink to"


def png_size(path):
    with Image.open(path) as image:
        return image.size


def test_lens_prints_the_lens_table_and_writes_a_png(tmp_path, capsys):
    assert main(["lens", PROMPT, "--out", str(tmp_path / "lens.png"), "-k", "2"]) == 0
    out = capsys.readouterr().out
    model = minimech.load()
    expected = logit_lens(model, PROMPT, pos=-1, k=2).top_k(2)
    final_row = next(line for line in out.splitlines() if line.strip().startswith("final"))
    assert repr(expected[-1][0][0]) in final_row
    width, height = png_size(tmp_path / "lens.png")
    assert width > 200 and height > 100


def test_heads_finds_the_cards_heads(tmp_path, capsys):
    assert main(["heads", "--model", "attn-only-2l", "--out", str(tmp_path / "heads.png")]) == 0
    out = capsys.readouterr().out
    model = minimech.load("attn-only-2l")
    scores = detector_scores(model, repeated_random_tokens(model, seq_len=20))
    best = scores["induction"].flatten().argmax().item()
    n_heads = model.cfg.n_heads
    induction_row = next(line for line in out.splitlines() if line.strip().startswith("induction"))
    assert f"L{best // n_heads}H{best % n_heads}" in induction_row.split()[1]
    assert f"L{best // n_heads}H{best % n_heads}" in model.card["mechanisms"]["induction"]["induction_heads"][0]
    assert (tmp_path / "heads.png").stat().st_size > 1000


def test_attention_and_its_errors(tmp_path, capsys):
    assert main(["attention", PROMPT, "--head", "L1H2", "--out", str(tmp_path / "a.png")]) == 0
    assert "L1H2" in capsys.readouterr().out and (tmp_path / "a.png").exists()
    assert main(["attention", PROMPT, "--head", "L9H2", "--out", str(tmp_path / "b.png")]) == 1
    assert "L9H2" in capsys.readouterr().err and not (tmp_path / "b.png").exists()


def test_patch_uses_an_ioi_pair_and_prints_patch_heads(tmp_path, capsys):
    assert main(["patch", "--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    model = minimech.load()
    ds = ioi_dataset(model, n=1, seed=0)
    heads = patch_heads(model, ds.tokens, ds.abc().tokens, ds.logit_diff(), normalise=True)
    top = heads.flatten().abs().argmax().item()
    name = f"L{top // heads.shape[1]}H{top % heads.shape[1]}"
    row = next(line for line in out.splitlines() if line.strip().startswith(name))
    assert float(row.split()[-1]) == pytest.approx(heads.flatten()[top].item(), abs=0.01)
    assert (tmp_path / "p_resid.png").exists() and (tmp_path / "p_heads.png").exists()
    assert main(["patch", "--clean", PROMPT]) == 1  # a partial pair is refused
    assert "--corrupt" in capsys.readouterr().err


def test_lens_file_is_the_tuned_lens_and_refuses_another_models(tmp_path, capsys):
    """--lens-file FILE reads a lens saved anywhere (as `minimech tuned-lens MODEL --out FILE` writes it): the same
    table as --tuned for the lens shipped beside the model; another model's lens is one clear error."""
    from minimech.analysis.tuned_lens import tuned_lens_path

    model = minimech.load("attn-only-2l")
    shipped = tuned_lens_path(model)
    assert main(["lens", PROMPT, "--model", "attn-only-2l", "--tuned", "--out", str(tmp_path / "a.png")]) == 0
    tuned = capsys.readouterr().out
    assert main(["lens", PROMPT, "--model", "attn-only-2l", "--lens-file", str(shipped),
                 "--out", str(tmp_path / "b.png")]) == 0
    from_file = capsys.readouterr().out
    assert "tuned lens at the last position" in tuned and tuned.split("wrote")[0] == from_file.split("wrote")[0]
    assert main(["lens", PROMPT, "--lens-file", str(shipped), "--out", str(tmp_path / "c.png")]) == 1
    err = capsys.readouterr().err
    assert "minimech: error:" in err and ("train one" in err or "other weights" in err)
