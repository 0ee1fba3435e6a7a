"""Shared helpers: small random models whose every parameter (biases and LayerNorms included) is random."""

import pytest
import torch

from minimech import GPT, GPTConfig

# Every dimension differs, so a transposed or mislabelled axis cannot hide: batch 2, pos 7, head 3, d_head 5,
# d_model 11, d_mlp 13, d_vocab 17 (and n_ctx 19, n_layers 2).
ODD = GPTConfig(n_layers=2, n_heads=3, d_head=5, d_model=11, d_mlp=13, n_ctx=19, d_vocab=17, model_name="odd")
ODD_DIMS = {"batch": 2, "pos": 7, "head": 3, "d_head": 5, "d_model": 11, "d_mlp": 13, "d_vocab": 17}


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The suite's models are small: with several intra-op threads on a shared 2-core machine, thread hand-offs cost
    far more than the maths (5-15x slower under load). Lesson checks run their learner processes on one thread too,
    and inputs built by a forward pass must match bit for bit across the two processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_model(cfg: GPTConfig, seed: int = 0) -> GPT:
    """A model with every parameter random (biases and LN weights too, which GPT-2's init leaves at 0 and 1)."""
    model = GPT(cfg, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".w",)):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif not name.split(".")[-1].startswith("W_"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-2] ** 0.5 if p.ndim > 1 else p)
    return model.eval()


def random_tokens(cfg: GPTConfig, batch: int, pos: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, cfg.d_vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))


def snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before: dict) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"parameter {k} changed"


@pytest.fixture
def odd_model():
    return random_model(ODD, seed=3)


def swap(source: str, function: str, body: str) -> str:
    """A lesson source with `function`'s body (after the def line) replaced by `body` (for fake submissions)."""
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"def {function}("))
    end = next(i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith((" ", "\t")))
    indented = ["    " + line for line in body.strip("\n").splitlines()]
    return "\n".join(lines[:start + 1] + indented + [""] + lines[end:]) + "\n"
