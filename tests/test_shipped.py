"""The shipped models: their files are intact, and every metric their cards claim holds, recomputed here from
held-out data (held-out names, sentence frames and fact paraphrases) against the thresholds of the issue that
ordered them, not against the card's own figures."""

import json
import shutil

import pytest
import torch

import minimech
from minimech.loading import ChecksumError, shipped_models, weights_dir
from minimech.training.corpus import Corpus
from minimech.training.evaluate import fact_metrics, induction_metrics, ioi_metrics
from minimech.training.recipes import token_pool

SHIPPED = shipped_models()
DEFAULT = (weights_dir() / "DEFAULT").read_text().strip() if (weights_dir() / "DEFAULT").is_file() else None


def test_something_is_shipped():
    assert "attn-only-2l" in SHIPPED and DEFAULT in SHIPPED


@pytest.fixture(scope="module")
def corpus():
    return Corpus(seed=0)


@pytest.mark.parametrize("name", SHIPPED)
def test_card_and_size(name):
    folder = weights_dir() / name
    card = json.loads((folder / "card.json").read_text())
    assert (folder / "model.safetensors").stat().st_size <= 20 * 2**20
    for key in ("config", "vocab", "sha256", "recipe", "corpus", "training", "history", "metrics"):
        assert key in card, f"{name}'s card lacks {key}"
    assert card["training"]["wall_time_s"] <= 30 * 60
    model = minimech.load(name)
    assert model.card["name"] == name and model.cfg.d_vocab == len(card["vocab"])


def test_attn_only_2l_induction():
    model = minimech.load("attn-only-2l")
    assert model.cfg.attn_only and model.cfg.n_layers == 2
    m = induction_metrics(model, token_pool=token_pool(model.tokenizer))
    assert m["induction_best"] >= 0.9
    assert m["prev_token_best_L0"] >= 0.5
    assert m["icl_loss_ratio"] <= 0.2


def test_default_model_ioi_facts_induction(corpus):
    model = minimech.load()
    assert model.card["name"] == DEFAULT and not model.cfg.attn_only
    ioi = ioi_metrics(model, corpus.ioi_eval(300, seed=123, names="heldout", frames="heldout"))
    assert ioi["ioi_accuracy"] >= 0.95 and ioi["ioi_logit_diff"] >= 3.0, ioi
    facts = fact_metrics(model, corpus.fact_eval("heldout"))
    assert facts["facts_top1"] >= 0.95, facts
    assert induction_metrics(model, token_pool=token_pool(model.tokenizer))["induction_best"] >= 0.8


def test_a_tampered_shipped_file_is_refused(tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(weights_dir() / "attn-only-2l", copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="damaged or was changed"):
        minimech.load(copy)


def test_loading_a_shipped_model_leaves_no_trace_on_weights():
    model = minimech.load("attn-only-2l")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    induction_metrics(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
