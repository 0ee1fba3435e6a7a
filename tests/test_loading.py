"""minimech.loading: Hugging Face GPT-2 checkpoints load with parity, every broken input fails with one clear error,
minimech's own format round-trips, and fetch resumes and checks what it downloads (from a local HTTP server)."""

import hashlib
import http.server
import json
import shutil
import threading

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

import minimech  # noqa: E402
from minimech import GPT, GPTConfig, MinimechError, from_hf_config  # noqa: E402
from minimech import loading  # noqa: E402
from minimech.config import ConfigError  # noqa: E402
from minimech.loading import (ChecksumError, FetchError, WeightsError, WeightsNotFoundError,  # noqa: E402
                              hf_to_minimech, load)
from minimech.tokenizer import Tokenizer  # noqa: E402

ODD_A = dict(n_layer=3, n_head=3, n_embd=48, n_positions=37, vocab_size=101)
ODD_B = dict(n_layer=2, n_head=5, n_embd=40, n_inner=72, n_positions=19, vocab_size=67)
SMALL = dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257)
PARITY = {}  # name -> (max logit error, max hidden-state error), printed at the end with -s


def hf_model(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**kw)).eval()


def check_parity(hf, model, seq=None, label=None):
    """Logits and the hidden state after every block agree with HF's to 1e-4 (fp32)."""
    n_ctx, vocab, n_layer = hf.config.n_positions, hf.config.vocab_size, hf.config.n_layer
    tokens = torch.randint(0, vocab, (2, seq or n_ctx), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = hf(tokens, output_hidden_states=True)
    logits, cache = model.run_with_cache(tokens)
    hidden = out.hidden_states  # [embeddings, after block 0, ..., after block n-2, ln_f(after block n-1)]
    assert len(hidden) == n_layer + 1
    errs = [(hidden[0] - cache["blocks.0.hook_resid_pre"]).abs().max().item()]
    errs += [(hidden[l + 1] - cache[f"blocks.{l}.hook_resid_post"]).abs().max().item() for l in range(n_layer - 1)]
    errs.append((hidden[-1] - cache["ln_final.hook_normalized"]).abs().max().item())
    logit_err = (logits - out.logits).abs().max().item()
    assert logit_err < 1e-4 and max(errs) < 1e-4, (logit_err, errs)
    if label:
        PARITY[label] = (logit_err, max(errs))


def write_hf_dir(directory, hf, sd=None, fmt="safetensors"):
    """config.json plus the state dict `sd` (default: the model's own) as model.safetensors or pytorch_model.bin."""
    directory.mkdir(parents=True, exist_ok=True)
    hf.config.to_json_file(directory / "config.json")
    sd = {k: v.detach().clone().contiguous() for k, v in (sd if sd is not None else hf.state_dict()).items()}
    if fmt == "safetensors":
        save_file(sd, directory / "model.safetensors")  # clones: safetensors refuses tied (shared) tensors
    else:
        torch.save(sd, directory / "pytorch_model.bin")
    return directory


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No real weights can be found: HOME, caches and the shipped weights folder all point into tmp_path."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    for var in ("MINIMECH_WEIGHTS", "HF_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setattr(loading, "weights_dir", lambda: shipped)
    return tmp_path


# ----------------------------------------------------------------------------------------------------------------
# Parity with Hugging Face
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("kw", [ODD_A, ODD_B], ids=["3L3H48d", "2L5H40d-inner72"])
def test_parity_small_configs(tmp_path, kw, tied, fmt):
    hf = hf_model(**kw, tie_word_embeddings=tied)
    if fmt == "safetensors":
        hf.save_pretrained(tmp_path)  # what a user gets from transformers
    else:  # transformers 5 writes safetensors only: write the .bin the way older published checkpoints are
        write_hf_dir(tmp_path, hf, fmt="bin")
    model = load(tmp_path)
    assert model.cfg.d_mlp == kw.get("n_inner", 4 * kw["n_embd"]) and model.cfg.n_ctx == kw["n_positions"]
    assert model.tokenizer is None  # not the GPT-2 vocabulary
    assert not model.training and str(tmp_path) in model.source
    check_parity(hf, model, label=f"{kw['n_embd']}d tied={tied} {fmt}")


def test_parity_gpt2_small_size(tmp_path):
    hf = hf_model(**SMALL)
    hf.save_pretrained(tmp_path)
    model = load(tmp_path / "model.safetensors")  # a weights file next to its config.json
    assert isinstance(model.tokenizer, Tokenizer) and model.tokenizer.vocab is None
    check_parity(hf, model, seq=20, label="gpt2-small size")
    assert model.to_str_tokens("Hello world") == ["<|endoftext|>", "Hello", " world"]


def quirk_variants(hf):
    sd = hf.state_dict()
    n = hf.config.n_positions
    no_prefix = {k.removeprefix("transformer."): v for k, v in sd.items()}
    masks = dict(sd)
    for l in range(hf.config.n_layer):  # what files saved by older transformers versions carry
        masks[f"transformer.h.{l}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        masks[f"transformer.h.{l}.attn.masked_bias"] = torch.tensor(-1e4)
    return {"no_prefix": no_prefix, "no_lm_head": {k: v for k, v in sd.items() if k != "lm_head.weight"},
            "no_prefix_no_lm_head_masks": {k.removeprefix("transformer."): v for k, v in masks.items()
                                           if k != "lm_head.weight"},
            "mask_buffers": masks}


@pytest.mark.parametrize("variant", ["no_prefix", "no_lm_head", "no_prefix_no_lm_head_masks", "mask_buffers"])
def test_published_file_quirks(tmp_path, variant):
    hf = hf_model(**ODD_A)  # tied, so dropping lm_head.weight loses nothing
    sd = quirk_variants(hf)[variant]
    check_parity(hf, load(write_hf_dir(tmp_path / "st", hf, sd)), label=f"quirk {variant} safetensors")
    check_parity(hf, load(write_hf_dir(tmp_path / "bin", hf, sd, fmt="bin")))


def test_safetensors_preferred_over_bin(tmp_path):
    good, other = hf_model(**ODD_B), hf_model(seed=5, **ODD_B)
    write_hf_dir(tmp_path, other, fmt="bin")
    write_hf_dir(tmp_path, good)
    model = load(tmp_path)
    assert model.source.endswith("model.safetensors")
    check_parity(good, model)


def test_converted_weights_share_no_memory(tmp_path):
    hf = hf_model(**ODD_A)
    cfg = from_hf_config(hf.config.to_dict())
    params = hf_to_minimech(hf.state_dict(), cfg)
    model = GPT(cfg)
    model.load_state_dict(params)
    before = {k: v.clone() for k, v in params.items()}
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(1.0)  # editing the HF model must not change what was converted ...
        params["embed.W_E"].mul_(0)  # ... and W_U is a copy of W_E.T, not a view of it
    for k, v in params.items():
        if k != "embed.W_E":
            assert torch.equal(v, before[k]), k
    assert torch.equal(model.W_U, before["unembed.W_U"]) and torch.equal(before["unembed.W_U"], before["embed.W_E"].T)
    assert torch.count_nonzero(params["unembed.b_U"]) == 0


def test_dtype_and_eval(tmp_path):
    hf = hf_model(**ODD_B)
    hf.save_pretrained(tmp_path)
    model = load(tmp_path, dtype=torch.float64)
    assert model.W_E.dtype == torch.float64 and not model.training
    with pytest.raises(ValueError, match="floating"):
        load(tmp_path, dtype=torch.int64)


# ----------------------------------------------------------------------------------------------------------------
# Errors: one MinimechError naming the tensor or file and the fix
# ----------------------------------------------------------------------------------------------------------------

def broken(tmp_path, edit, fmt="safetensors"):
    hf = hf_model(**ODD_A)
    sd = dict(hf.state_dict())
    edit(sd)
    return write_hf_dir(tmp_path, hf, sd, fmt)


def test_missing_tensor(tmp_path):
    d = broken(tmp_path, lambda sd: sd.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(WeightsError, match=r"missing tensor 'h\.1\.mlp\.c_fc\.bias' \(expected shape \[192\]\)") as e:
        load(d)
    assert "model.safetensors" in str(e.value) and "download the checkpoint again" in str(e.value)


def test_unexpected_tensor(tmp_path):
    d = broken(tmp_path, lambda sd: sd.update({"score.weight": torch.zeros(2, 48)}), fmt="bin")
    with pytest.raises(WeightsError, match=r"unexpected tensor 'score\.weight' of shape \[2, 48\]") as e:
        load(d)
    assert "pytorch_model.bin" in str(e.value)


def test_wrong_shape_names_both_shapes(tmp_path):
    d = broken(tmp_path, lambda sd: sd.update({"transformer.h.2.attn.c_attn.weight": torch.zeros(144, 48)}))
    with pytest.raises(WeightsError, match=r"'h\.2\.attn\.c_attn\.weight' has shape \[144, 48\], expected \[48, 144\]"
                                           r" \(the transpose: an nn\.Linear-style checkpoint"):
        load(d)
    d = broken(tmp_path / "2", lambda sd: sd.update({"transformer.wpe.weight": torch.zeros(36, 48)}))
    with pytest.raises(WeightsError, match=r"'wpe\.weight' has shape \[36, 48\], expected \[37, 48\]"):
        load(d)


def test_truncated_and_garbage_safetensors(tmp_path):
    d = write_hf_dir(tmp_path, hf_model(**ODD_A))
    f = d / "model.safetensors"
    data = f.read_bytes()
    for bad in (data[: len(data) // 2], data[:5], b"\x00garbage" * 100):
        f.write_bytes(bad)
        with pytest.raises(WeightsError, match="truncated or corrupt") as e:
            load(d)
        assert str(f) in str(e.value) and "download or copy it again" in str(e.value)


def test_garbage_bin(tmp_path):
    d = write_hf_dir(tmp_path, hf_model(**ODD_A), fmt="bin")
    (d / "pytorch_model.bin").write_bytes(b"this is not a checkpoint" * 50)
    with pytest.raises(WeightsError, match="cannot read .*pytorch_model.bin as a PyTorch checkpoint"):
        load(d)


def test_bin_with_code_is_refused(tmp_path):
    d = write_hf_dir(tmp_path, hf_model(**ODD_A), fmt="bin")
    torch.save({"wte.weight": torch.zeros(1), "evil": shutil.rmtree}, d / "pytorch_model.bin")
    with pytest.raises(WeightsError, match=r"pytorch_model\.bin holds Python objects besides tensors "
                                           r"\(shutil\.rmtree\), which minimech refuses to unpickle"):
        load(d)


def test_missing_config_and_missing_weights(tmp_path):
    d = write_hf_dir(tmp_path / "a", hf_model(**ODD_A))
    (d / "config.json").unlink()
    with pytest.raises(WeightsNotFoundError, match=r"has no config\.json") as e:
        load(d)
    assert str(d) in str(e.value)
    d = write_hf_dir(tmp_path / "b", hf_model(**ODD_A))
    (d / "model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match=r"has a config\.json but no weights"):
        load(d)
    with pytest.raises(WeightsNotFoundError, match="neither an existing file or folder nor a model name"):
        load(tmp_path / "nowhere")


def test_non_gpt2_config(tmp_path):
    d = write_hf_dir(tmp_path, hf_model(**ODD_A))
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "llama"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="model_type='llama'") as e:
        load(d)
    assert str(d / "config.json") in str(e.value) and isinstance(e.value, MinimechError)


# ----------------------------------------------------------------------------------------------------------------
# Finding presets
# ----------------------------------------------------------------------------------------------------------------

def test_preset_not_found_lists_every_place(clean_env):
    with pytest.raises(WeightsNotFoundError) as e:
        load("gpt2")
    msg = str(e.value)
    assert "minimech fetch gpt2" in msg and "config.json + model.safetensors" in msg
    for place in (clean_env / "shipped" / "gpt2", clean_env / "home/.cache/minimech/gpt2",
                  clean_env / "hf_home/hub/models--gpt2/snapshots",
                  clean_env / "hf_home/hub/models--openai-community--gpt2/snapshots"):
        assert str(place) in msg, place
    assert isinstance(e.value, FileNotFoundError)


def test_preset_search_order(clean_env, monkeypatch):
    hf_cached, mine = hf_model(**ODD_A), hf_model(seed=3, **ODD_A)
    snapshot = clean_env / "hf_home/hub/models--openai-community--gpt2/snapshots/abc123"
    write_hf_dir(snapshot, hf_cached)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs/main").write_text("abc123")
    model = load("openai-community/gpt2")  # (d) the Hugging Face cache, under the new repo name
    assert model.source.startswith("gpt2: ") and "abc123" in model.source and model.cfg.model_name == "gpt2"
    check_parity(hf_cached, model)
    write_hf_dir(clean_env / "home/.cache/minimech/gpt2", mine)  # (c) fetch's folder beats the HF cache
    assert ".cache/minimech/gpt2" in load("gpt2").source
    monkeypatch.setenv("MINIMECH_WEIGHTS", str(clean_env / "mw"))
    write_hf_dir(clean_env / "mw/gpt2", mine)  # (b) $MINIMECH_WEIGHTS beats both
    assert str(clean_env / "mw/gpt2") in load("gpt2").source
    write_hf_dir(clean_env / "shipped/gpt2", mine)  # (a) shipped weights come first
    assert str(clean_env / "shipped/gpt2") in load("gpt2").source


def test_hf_hub_cache_env(clean_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(clean_env / "hubcache"))
    write_hf_dir(clean_env / "hubcache/models--distilgpt2/snapshots/r1", hf_model(**ODD_B))
    assert "models--distilgpt2" in load("distilgpt2").source


def test_default_model(clean_env):
    with pytest.raises(WeightsNotFoundError, match="no default model is shipped yet"):
        load()
    loading.save(GPT(GPTConfig(n_layers=1, n_heads=2, d_model=16, n_ctx=8, d_vocab=41)), clean_env / "shipped/tiny")
    (clean_env / "shipped/DEFAULT").write_text("tiny\n")
    assert load().cfg.d_model == 16 and "shipped with minimech" in load().source
    assert load("tiny").cfg.d_model == 16  # a shipped model by name
    (clean_env / "shipped/DEFAULT").write_text("gone\n")
    with pytest.raises(WeightsNotFoundError, match="names 'gone', which is not a shipped model folder"):
        load()


# ----------------------------------------------------------------------------------------------------------------
# minimech's own format
# ----------------------------------------------------------------------------------------------------------------

def tiny_model():
    vocab = list(range(39)) + [50256, -1]  # a compact vocabulary: 39 GPT-2 ids, <|endoftext|> and the unknown slot
    cfg = GPTConfig(n_layers=2, n_heads=3, d_model=24, d_mlp=40, n_ctx=11, d_vocab=len(vocab), model_name="tiny")
    return GPT(cfg, tokenizer=Tokenizer(vocab), seed=7)


def test_save_load_round_trip(tmp_path):
    model = tiny_model()
    d = loading.save(model, tmp_path / "tiny", card_extra={"trained_on": "unit test", "loss": 1.5})
    card = json.loads((d / "card.json").read_text())
    assert card["trained_on"] == "unit test" and card["vocab"] == model.tokenizer.vocab
    assert card["sha256"]["model.safetensors"] == hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
    assert (d / "model.safetensors").stat().st_mode & 0o444 == 0o444  # readable by everyone, like card.json
    loaded = load(d)
    assert loaded.cfg == model.cfg and loaded.tokenizer.vocab == model.tokenizer.vocab and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    tokens = torch.randint(0, 41, (2, 11))
    assert torch.equal(model(tokens), loaded(tokens))
    with pytest.raises(ValueError, match="may not set"):
        loading.save(model, tmp_path / "x", card_extra={"config": {}})


def test_tampered_weights_raise_checksum_error(tmp_path):
    d = loading.save(tiny_model(), tmp_path / "tiny")
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF  # one flipped byte inside a tensor: still a valid file, different numbers
    f.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as e:
        load(d)
    msg = str(e.value)
    assert str(f) in msg and "git checkout weights/" in msg and "expects" in msg
    assert hashlib.sha256(bytes(data)).hexdigest() in msg
    assert load(d, verify=False).cfg.d_model == 24  # the escape hatch


def test_card_tensor_mismatch(tmp_path):
    d = loading.save(tiny_model(), tmp_path / "tiny")
    card = json.loads((d / "card.json").read_text())
    card["config"]["d_mlp"] = 44
    (d / "card.json").write_text(json.dumps(card))
    with pytest.raises(WeightsError, match=r"'blocks\.0\.mlp\.W_in' has shape \[24, 40\], expected \[24, 44\]"):
        load(d)


# ----------------------------------------------------------------------------------------------------------------
# fetch, against a local HTTP server
# ----------------------------------------------------------------------------------------------------------------

class Server:
    """Serves `files` {url path: bytes} on 127.0.0.1 with HTTP Range support; records each request's Range."""

    def __init__(self, files, honour_range=True):
        self.files, self.ranges = files, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                start = int(rng.removeprefix("bytes=").rstrip("-")) if rng and honour_range else 0
                if start >= len(data) and rng:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def payload():
    data = torch.randint(0, 256, (300_000,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    data = data.numpy().tobytes()
    return data, hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("honour_range", [True, False])
def test_download_resumes_with_range(tmp_path, payload, honour_range):
    data, sha = payload
    server = Server({"/f.bin": data}, honour_range=honour_range)
    try:
        target = tmp_path / "f.bin"
        (tmp_path / "f.bin.part").write_bytes(data[:100_000])  # an interrupted earlier download
        loading.download(server.url + "/f.bin", target, size=len(data), sha256=sha, progress=False)
    finally:
        server.close()
    assert server.ranges == ["bytes=100000-"]
    assert target.read_bytes() == data and not (tmp_path / "f.bin.part").exists()


def test_download_checksum_mismatch_leaves_no_file(tmp_path, payload):
    data, _ = payload
    server = Server({"/f.bin": data})
    try:
        with pytest.raises(ChecksumError, match="the manifest expects 0000"):
            loading.download(server.url + "/f.bin", tmp_path / "f.bin", size=len(data), sha256="0" * 64,
                             progress=False)
        with pytest.raises(ChecksumError, match="gave 300000 bytes but the manifest says 1000"):
            loading.download(server.url + "/f.bin", tmp_path / "f.bin", size=1000, progress=False)
    finally:
        server.close()
    assert list(tmp_path.iterdir()) == []


def test_download_offline(tmp_path):
    server = Server({})
    url = server.url
    server.close()  # nothing listens there any more: a refused connection, like an offline machine
    with pytest.raises(FetchError, match="may be offline") as e:
        loading.download(url + "/f.bin", tmp_path / "f.bin", progress=False)
    assert "by hand" in str(e.value)


def test_fetch_end_to_end(clean_env, monkeypatch, capsys):
    hf = hf_model(**ODD_B)
    src = write_hf_dir(clean_env / "src", hf)
    files = {n: (src / n).read_bytes() for n in ("config.json", "model.safetensors")}
    manifest = {"_note": "test", "gpt2": {"repo": "openai-community/gpt2", "revision": "r1", "files": {
        "config.json": {"size": len(files["config.json"]), "sha256": None},  # unpublished: reported, not faked
        "model.safetensors": {"size": len(files["model.safetensors"]),
                              "sha256": hashlib.sha256(files["model.safetensors"]).hexdigest()}}}}
    (clean_env / "shipped/gpt2-manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("MINIMECH_WEIGHTS", str(clean_env / "mw"))
    server = Server({f"/openai-community/gpt2/resolve/r1/{n}": b for n, b in files.items()})
    try:
        with pytest.warns(UserWarning, match="config.json: unverified: no published checksum in the manifest"):
            dest = loading.fetch("gpt2", progress=False, base_url=server.url)
        assert dest == clean_env / "mw/gpt2"
        assert loading.fetch("gpt2", progress=False, base_url=server.url) == dest  # intact files are not fetched again
        assert len(server.ranges) == 2
    finally:
        server.close()
    check_parity(hf, load("gpt2"))
    with pytest.raises(FetchError, match="known: gpt2"):
        loading.fetch("gpt3")


def test_fetch_checks_git_blob_id(clean_env, monkeypatch):
    """config.json lives in git, not LFS: the Hub publishes git's blob id for it, which fetch checks."""
    config = b'{"model_type": "gpt2"}\n'
    blob_id = hashlib.sha1(b"blob %d\0" % len(config) + config).hexdigest()
    for good in (True, False):
        manifest = {"gpt2": {"repo": "r/gpt2", "_note": "test", "files": {
            "config.json": {"size": len(config), "sha256": None, "git_blob_sha1": blob_id if good else "1" * 40}}}}
        (clean_env / "shipped/gpt2-manifest.json").write_text(json.dumps(manifest))
        server = Server({"/r/gpt2/resolve/main/config.json": config})
        try:
            if good:
                assert (loading.fetch("gpt2", clean_env / "ok", progress=False, base_url=server.url)
                        / "config.json").read_bytes() == config
            else:
                with pytest.raises(ChecksumError, match="git blob id"):
                    loading.fetch("gpt2", clean_env / "bad", progress=False, base_url=server.url)
                assert not (clean_env / "bad").exists() and not (clean_env / "bad.partial").exists()
        finally:
            server.close()


def test_download_complete_part_without_size(tmp_path, payload):
    """A .part that already holds the whole file: the server answers 416 with the length, and nothing is re-sent."""
    data, sha = payload
    server = Server({"/f.bin": data})
    try:
        (tmp_path / "f.bin.part").write_bytes(data)
        loading.download(server.url + "/f.bin", tmp_path / "f.bin", sha256=sha, progress=False)
    finally:
        server.close()
    assert server.ranges == [f"bytes={len(data)}-"] and (tmp_path / "f.bin").read_bytes() == data


def test_shipped_manifest():
    manifest = json.loads((loading.weights_dir() / "gpt2-manifest.json").read_text())
    assert set(manifest) - {"_note"} == {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2"}
    for name, entry in manifest.items():
        if name != "_note":
            assert set(entry["files"]) == {"config.json", "model.safetensors"} and entry["_note"]
    st = manifest["gpt2"]["files"]["model.safetensors"]
    assert st == {"size": 548105171, "sha256": "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707"}
    # load() also checks the published pytorch_model.bin (fetch downloads only what "files" lists)
    assert manifest["gpt2"]["verified_files"]["pytorch_model.bin"]["size"] == 548118077 and manifest["gpt2"][
        "_verified_note"]


def test_fetch_offline_leaves_nothing_behind(clean_env, monkeypatch):
    """Offline, fetch leaves no folder (not even the parents it would have made); a partial transfer is kept in
    DEST.partial, never in DEST where load() looks, and load's error says how to resume it."""
    monkeypatch.setenv("MINIMECH_WEIGHTS", str(clean_env / "mw"))
    manifest = {"gpt2": {"repo": "r/gpt2", "_note": "test", "files": {"config.json": {"size": 5, "sha256": None}}}}
    (clean_env / "shipped/gpt2-manifest.json").write_text(json.dumps(manifest))
    server = Server({})
    url = server.url
    server.close()
    with pytest.raises(FetchError, match="needs the internet.*Nothing was left behind"):
        loading.fetch("gpt2", progress=False, base_url=url)
    assert not (clean_env / "mw").exists()
    config = b'{"model_type": "gpt2"}'
    manifest = {"gpt2": {"repo": "r/gpt2", "_note": "test", "files": {
        "config.json": {"size": len(config), "sha256": hashlib.sha256(config).hexdigest()},
        "model.safetensors": {"size": 1000, "sha256": "0" * 64}}}}
    (clean_env / "shipped/gpt2-manifest.json").write_text(json.dumps(manifest))
    server = Server({"/r/gpt2/resolve/main/config.json": config,
                     "/r/gpt2/resolve/main/model.safetensors": b"x" * 400})  # the transfer stops at 400 of 1000
    try:
        with pytest.raises(FetchError, match="stopped at 400 of 1000 bytes.*is kept; the next fetch resumes"):
            loading.fetch("gpt2", progress=False, base_url=server.url)
    finally:
        server.close()
    assert not (clean_env / "mw/gpt2").exists()
    assert (clean_env / "mw/gpt2.partial/model.safetensors.part").stat().st_size == 400
    with pytest.raises(WeightsNotFoundError, match="gpt2.partial holds it; `minimech fetch gpt2` resumes it"):
        load("gpt2")


def published_file(clean_env, monkeypatch, name="published"):
    """A small random checkpoint entered in a test manifest as if it were GPT-2 small's published file (name, size,
    sha256), with GPT-2 small's architecture made that checkpoint's (tests/test_gpt2_route.py does the same with a
    GPT-2-small-shaped one): the only way to test recognition offline."""
    hf = hf_model(**ODD_A)
    monkeypatch.setitem(minimech.config.PRESETS, "gpt2", from_hf_config(hf.config.to_dict(), model_name="gpt2"))
    directory = write_hf_dir(clean_env / name, hf)
    data = (directory / "model.safetensors").read_bytes()
    manifest = {"gpt2": {"repo": "openai-community/gpt2", "_note": "test", "files": {
        "config.json": {"size": None, "sha256": None},
        "model.safetensors": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}}}
    (clean_env / "shipped/gpt2-manifest.json").write_text(json.dumps(manifest))
    return directory, directory / "model.safetensors"


def test_published_file_is_checked_and_recognised(clean_env, monkeypatch):
    """GPT-2 small is known by its weights: a file the manifest lists (name and size) is hashed, and a flipped byte
    is a ChecksumError (verify=False skips it, and then the model is not recognised); a file the manifest does not
    list loads unchecked and unrecognised, whatever the name it was loaded by."""
    directory, weights = published_file(clean_env, monkeypatch)
    model = load(directory)
    identity = loading.identify_gpt2(model)
    assert identity.is_gpt2_small and loading.is_gpt2_small(model) and "sha256" in identity.reason
    with torch.no_grad():
        model.blocks[0].mlp.W_out[0, 0] += 1.0  # changed after loading: no longer the published weights
    assert not loading.is_gpt2_small(model) and "changed since loading" in loading.identify_gpt2(model).reason
    data = bytearray(weights.read_bytes())
    data[-100] ^= 1  # one flipped bit in the tensor data: the file still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="is damaged.*has the size of gpt2's published model.safetensors"):
        load(directory)
    unchecked = load(directory, verify=False)
    assert not loading.is_gpt2_small(unchecked) and loading.identify_gpt2(unchecked).checkpoint == "gpt2"
    other = write_hf_dir(clean_env / "gpt2", hf_model(seed=1, **ODD_A), fmt="bin")  # named like GPT-2, not its file
    identity = loading.identify_gpt2(load(other))
    assert not identity.is_gpt2_small and "does not list" in identity.reason
    assert loading.identify_gpt2(load(write_hf_dir(clean_env / "odd", hf_model(**ODD_B)))).checkpoint is None


def test_report_parity():
    """Not a check: prints the max parity errors measured above (pytest -s)."""
    for label, (logit_err, hidden_err) in PARITY.items():
        print(f"parity {label}: logits {logit_err:.2e}, hidden states {hidden_err:.2e}")
