"""The views a learner holds: a Head, a Memory (one MLP neuron as a key-value pair), and low-rank circuits.

They hold no copy of the weights: each reads its slice of the model's parameters (detached, so analysis cannot
train the model by accident) and its activations from an ActivationCache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .cache import ActivationCache


class FactoredMatrix:
    """A d_in x d_out matrix kept as A @ B with a small inner dimension (a head's OV or QK circuit).

    Never materialises the full product unless asked (`.AB`): eigenvalues and singular values come from the small
    factors, which matters when A @ B would be d_vocab x d_vocab. Leading dimensions broadcast, as in
    TransformerLens: model.OV is [n_layers, n_heads, d_model, d_model] and model.OV[5, 1] one head's circuit.
    """

    def __init__(self, A: torch.Tensor, B: torch.Tensor):
        if not (isinstance(A, torch.Tensor) and isinstance(B, torch.Tensor)) or A.ndim < 2 or B.ndim < 2:
            raise ValueError(f"a FactoredMatrix needs two tensors of at least 2 dimensions, got "
                             f"{_describe(A)} and {_describe(B)}")
        if A.shape[-1] != B.shape[-2]:
            raise ValueError(f"inner dimensions differ: A is {tuple(A.shape)}, B is {tuple(B.shape)}")
        self.A, self.B = A, B  # [..., d_in, d_inner], [..., d_inner, d_out]

    @property
    def shape(self) -> tuple[int, ...]:  # [..., d_in, d_out]
        return tuple(torch.broadcast_shapes(self.A.shape[:-2], self.B.shape[:-2])) + (self.A.shape[-2],
                                                                                      self.B.shape[-1])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def AB(self) -> torch.Tensor:  # [..., d_in, d_out]
        return self.A @ self.B

    @property
    def BA(self) -> torch.Tensor:  # [..., d_inner, d_inner]: same non-zero eigenvalues as AB
        return self.B @ self.A

    @property
    def T(self) -> "FactoredMatrix":
        return FactoredMatrix(self.B.transpose(-1, -2), self.A.transpose(-1, -2))

    def __matmul__(self, other):
        """self @ other: a FactoredMatrix for a matrix or another FactoredMatrix (the product keeps the narrower inner
        dimension), a plain tensor for a vector."""
        if isinstance(other, FactoredMatrix):
            if self.A.shape[-1] <= other.A.shape[-1]:
                return FactoredMatrix(self.A, self.B @ other.A @ other.B)
            return FactoredMatrix(self.A @ self.B @ other.A, other.B)
        if isinstance(other, torch.Tensor) and other.ndim == 1:
            return self.A @ (self.B @ other)  # [..., d_in]
        return FactoredMatrix(self.A, self.B @ other)

    def __rmatmul__(self, other):
        if isinstance(other, torch.Tensor) and other.ndim == 1:
            return (other @ self.A) @ self.B  # [..., d_out]
        return FactoredMatrix(other @ self.A, self.B)

    def __mul__(self, scalar) -> "FactoredMatrix":
        return FactoredMatrix(self.A * scalar, self.B)

    __rmul__ = __mul__

    def __getitem__(self, index) -> "FactoredMatrix":
        """Index the leading dimensions only: model.OV[5] is layer 5's heads, model.OV[5, 1] head L5H1."""
        index = index if isinstance(index, tuple) else (index,)
        if len(index) > self.ndim - 2:
            raise IndexError(f"a FactoredMatrix of shape {self.shape} takes at most {self.ndim - 2} indices (its "
                             "leading dimensions); use .AB for entries of the product")
        A = self.A.expand(*self.shape[:-2], *self.A.shape[-2:])
        B = self.B.expand(*self.shape[:-2], *self.B.shape[-2:])
        return FactoredMatrix(A[index], B[index])

    def eigenvalues(self) -> torch.Tensor:
        """Eigenvalues of A @ B (complex in general). AB and BA share their non-zero eigenvalues, so when the inner
        dimension is the smaller one they come from the small d_inner x d_inner matrix B @ A."""
        if self.shape[-2] != self.shape[-1]:
            raise ValueError(f"eigenvalues need a square matrix; this one is {self.shape}")
        small = self.BA if self.A.shape[-1] <= self.shape[-1] else self.AB
        complex_dtype = torch.complex128 if small.dtype == torch.float64 else torch.complex64
        return torch.linalg.eigvals(small.double()).to(complex_dtype)

    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """U, S, Vh of A @ B with only the d_inner non-trivial singular vectors, computed from QR of the factors."""
        qa, ra = torch.linalg.qr(self.A)  # A = qa ra
        qb, rb = torch.linalg.qr(self.B.transpose(-1, -2))  # B = rb^T qb^T
        u, s, vh = torch.linalg.svd(ra @ rb.transpose(-1, -2))
        return qa @ u, s, vh @ qb.transpose(-1, -2)

    def singular_values(self) -> torch.Tensor:
        return self.svd()[1]

    def norm(self) -> torch.Tensor:
        """Frobenius norm of A @ B (one per matrix when there are leading dimensions)."""
        return self.singular_values().pow(2).sum(-1).sqrt()

    def __repr__(self) -> str:
        return f"FactoredMatrix {'x'.join(map(str, self.shape))} of rank <= {self.A.shape[-1]}"


def _describe(x) -> str:
    return f"a tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


class Head:
    """One attention head: where it reads (QK), what it moves (OV), and its activations in a cache."""

    def __init__(self, attn, index: int):
        self.attn, self.layer, self.index = attn, attn.layer, index

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.index}"

    def _w(self, name: str) -> torch.Tensor:
        return getattr(self.attn, name)[self.index].detach()

    W_Q = property(lambda self: self._w("W_Q"))  # [d_model, d_head]
    W_K = property(lambda self: self._w("W_K"))  # [d_model, d_head]
    W_V = property(lambda self: self._w("W_V"))  # [d_model, d_head]
    W_O = property(lambda self: self._w("W_O"))  # [d_head, d_model]
    b_Q = property(lambda self: self._w("b_Q"))  # [d_head]
    b_K = property(lambda self: self._w("b_K"))  # [d_head]
    b_V = property(lambda self: self._w("b_V"))  # [d_head]

    @property
    def OV(self) -> FactoredMatrix:
        """[d_model, d_model]: what a source position's (normalized) residual writes, x @ W_V @ W_O."""
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self) -> FactoredMatrix:
        """[d_model, d_model]: the bilinear form of attention scores, x_q @ W_Q @ W_K^T @ x_k^T (before 1/sqrt(d_head))."""
        return FactoredMatrix(self.W_Q, self.W_K.T)

    def _act(self, cache: "ActivationCache", hook: str) -> torch.Tensor:
        return cache[f"blocks.{self.layer}.attn.{hook}"]

    def pattern(self, cache: "ActivationCache") -> torch.Tensor:  # [batch, q_pos, k_pos]
        return self._act(cache, "hook_pattern")[:, self.index]

    def attn_scores(self, cache: "ActivationCache") -> torch.Tensor:  # [batch, q_pos, k_pos]
        return self._act(cache, "hook_attn_scores")[:, self.index]

    def q(self, cache):  # [batch, pos, d_head]
        return self._act(cache, "hook_q")[:, :, self.index]

    def k(self, cache):  # [batch, pos, d_head]
        return self._act(cache, "hook_k")[:, :, self.index]

    def v(self, cache):  # [batch, pos, d_head]
        return self._act(cache, "hook_v")[:, :, self.index]

    def z(self, cache: "ActivationCache") -> torch.Tensor:  # [batch, pos, d_head]
        return self._act(cache, "hook_z")[:, :, self.index]

    def result(self, cache: "ActivationCache") -> torch.Tensor:  # [batch, pos, d_model]
        """This head's write into the residual stream (without b_O, which belongs to no head)."""
        name = f"blocks.{self.layer}.attn.hook_result"
        if name in cache:
            return cache[name][:, :, self.index]
        return self.z(cache) @ self.W_O

    def __repr__(self) -> str:
        c = self.attn.cfg
        return (f"Head {self.name} (layer {self.layer} of {c.n_layers}, head {self.index} of {c.n_heads}): "
                f"reads d_model {c.d_model} through d_head {c.d_head}")


class Memory:
    """One MLP neuron as a key-value memory (Geva et al. 2021).

    The neuron fires when the residual stream matches its key (a column of W_in) and then adds its value (a row of
    W_out), scaled by its activation, to the residual stream. Reading the value through the unembedding shows which
    next tokens it promotes.
    """

    def __init__(self, mlp, index: int):
        self.mlp, self.layer, self.index = mlp, mlp.layer, index

    @property
    def name(self) -> str:
        return f"L{self.layer}M{self.index}"

    key = property(lambda self: self.mlp.W_in[:, self.index].detach())  # [d_model]
    key_bias = property(lambda self: self.mlp.b_in[self.index].detach())  # []
    value = property(lambda self: self.mlp.W_out[self.index].detach())  # [d_model]

    def pre_activation(self, cache: "ActivationCache") -> torch.Tensor:  # [batch, pos]
        return cache[f"blocks.{self.layer}.mlp.hook_pre"][..., self.index]

    def activation(self, cache: "ActivationCache") -> torch.Tensor:  # [batch, pos]
        return cache[f"blocks.{self.layer}.mlp.hook_post"][..., self.index]

    def value_logits(self) -> torch.Tensor:  # [d_vocab]
        model = self.mlp.root()
        return self.value @ model.unembed.W_U.detach()

    def top_tokens(self, k: int = 10, bottom: bool = False) -> list[tuple[str, float]]:
        """The k tokens whose logits the value raises most (or lowers most with bottom=True), with those logits."""
        logits = self.value_logits()
        vals, ids = logits.topk(min(k, logits.numel()), largest=not bottom)
        tok = self.mlp.root().tokenizer
        names = [tok.id_to_str(int(i)) if tok is not None else str(int(i)) for i in ids]
        return list(zip(names, vals.tolist()))

    def __repr__(self) -> str:
        c = self.mlp.cfg
        return (f"Memory {self.name} (neuron {self.index} of {c.d_mlp} in layer {self.layer}): "
                f"key = W_in[:, {self.index}], value = W_out[{self.index}], both of size d_model {c.d_model}")


class _Views:
    """A read-only sequence of views (heads of an attention layer, memories of an MLP): len, iteration, slicing."""

    kind = ""

    def __init__(self, module, count: int, make):
        self.module, self.count, self.make = module, count, make

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.make(self.module, j) for j in range(*i.indices(self.count))]
        if not isinstance(i, int):
            raise TypeError(f"{self.kind} indices are integers or slices, not {type(i).__name__}")
        if not -self.count <= i < self.count:
            raise IndexError(f"{self.kind} index {i} out of range: layer {self.module.layer} has {self.count}")
        return self.make(self.module, i % self.count)

    def __iter__(self):
        return (self.make(self.module, j) for j in range(self.count))

    def __repr__(self) -> str:
        return f"{self.count} {self.kind}s of layer {self.module.layer}"


class Heads(_Views):
    kind = "head"

    def __init__(self, attn):
        super().__init__(attn, attn.cfg.n_heads, Head)


class Memories(_Views):
    kind = "memory"

    def __init__(self, mlp):
        super().__init__(mlp, mlp.cfg.d_mlp, Memory)

    def __repr__(self) -> str:
        return f"{self.count} memories of layer {self.module.layer}"
