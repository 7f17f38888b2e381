"""The transformer of docs/design.md §1 in plain numpy: feed-forward + self-attention blocks.

Readable in one file (in the spirit of nanoGPT): each layer is its formula, a model is a
list of blocks. The evaluator that runs many sequences at once and skips rows a layer
provably leaves unchanged is :mod:`exactformer.forward`; the ``.safetensors`` format of
docs/design.md §2 is :mod:`exactformer.modelfile`.

Weights are float64 arrays, or object arrays of Fractions for models built in exact mode
(then the forward pass is exact rational arithmetic and the file also carries the
rationals, see :meth:`Transformer.save`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from . import numeric as nm
from .rational import QMatrix

FORMAT = "exactformer/1"
ATTENTIONS = ("hardmax", "softmax")


WIDE = 16  # exact mode: a layer this wide reading ≤ 4 directions is summed by direction


@dataclass
class FeedForward:
    """``x ↦ η·x + W·relu(U·x + b)`` per token (U: w×d, b: w, W: d×w)."""

    U: np.ndarray
    b: np.ndarray
    W: np.ndarray
    eta: object = 1.0

    @property
    def width(self) -> int:
        return int(self.U.shape[0])

    def pre_activations(self, X: np.ndarray) -> np.ndarray:
        return X @ self.U.T + self.b

    def __call__(self, X: np.ndarray, chunk_entries: int = 1 << 22) -> np.ndarray:
        if isinstance(X, QMatrix) and self.width >= WIDE:  # exact: same sum, by direction
            from .rational import units_by_direction

            units = units_by_direction(X, self.U, self.b, self.W)
            if units is not None:
                return self.eta * X + units
        rows = max(1, chunk_entries // max(1, self.width))
        if len(X) <= rows:
            return self.eta * X + nm.relu(self.pre_activations(X)) @ self.W.T
        # wide layers (compact mode): bounded memory, same arithmetic row by row
        return nm.concatenate([self(X[i:i + rows], chunk_entries)
                               for i in range(0, len(X), rows)])

    def tensors(self) -> dict[str, np.ndarray]:
        return {"eta": np.asarray(self.eta), "U": self.U, "b": self.b, "W": self.W}


def argmax_mask(scores: np.ndarray, rtol: float = 0.0) -> np.ndarray:
    """The argmax set of every row of scores (last axis = keys): hardmax attends to it.

    ``rtol = 0``, the model's rule (docs/design.md §1): exact ties only. ``rtol > 0`` (the
    float clustering dynamics, :mod:`exactformer.dynamics`): scores within ``rtol`` × the
    row's largest |score| of its top tie too, so ties that are exact in the geometry survive
    rounding.
    """
    top = scores.max(axis=-1, keepdims=True)
    if rtol:
        return scores >= top - rtol * np.abs(scores).max(axis=-1, keepdims=True)
    return scores == top


def attention_weights(scores: np.ndarray, attention: str = "hardmax",
                      temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(P, mask)`` from scores (last axis = keys): the attention of docs/design.md §1.

    hardmax: P uniform on the argmax set (exact 1/count for rational scores); softmax:
    ``softmax(s/τ)`` with the row maximum subtracted. ``mask`` is the argmax set (softmax:
    the keys of largest weight). Hardmax is written here once; the other evaluations say why
    they differ: the exact evaluator works on integer numerators
    (:func:`exactformer.rational.hardmax_mix`, same rule), the PyTorch twin on tensors with
    padding masks (:mod:`exactformer.torch`), the clustering dynamics with a tie tolerance
    (:func:`argmax_mask`), and the softmax temperature reads score gaps, not weights
    (:mod:`exactformer.compiler.temperature`).
    """
    if attention == "hardmax":
        mask = argmax_mask(scores)
        counts = mask.sum(axis=-1, keepdims=True)
        return mask * nm.reciprocal_counts(counts, nm.is_exact(scores)), mask
    z = scores / temperature
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    P = z / z.sum(axis=-1, keepdims=True)
    return P, P >= P.max(axis=-1, keepdims=True)


@dataclass
class SelfAttention:
    """``x_i ↦ ρ·x_i + Σ_j P_ij V x_j`` with scores ``⟨Q x_i, K x_j⟩`` (Q, K: h×d).

    ``V`` is either given whole or as the factor pair ``Vo @ Vi`` (rank-r value map).
    ``h = 0`` means all scores are 0, i.e. uniform attention in both modes.
    """

    Q: np.ndarray
    K: np.ndarray
    V: np.ndarray | None = None
    Vo: np.ndarray | None = None
    Vi: np.ndarray | None = None
    rho: object = 1.0

    @property
    def rank(self) -> int:
        return int(self.Q.shape[0])

    @property
    def uniform(self) -> bool:
        return self.rank == 0

    def values(self, X: np.ndarray) -> np.ndarray:
        """``V x_j`` for every token (row-wise)."""
        if self.V is not None:
            return X @ self.V.T
        return (X @ self.Vi.T) @ self.Vo.T

    def value_matrix(self) -> np.ndarray:
        return self.V if self.V is not None else self.Vo @ self.Vi

    def tensors(self) -> dict[str, np.ndarray]:
        t = {"rho": np.asarray(self.rho), "Q": self.Q, "K": self.K}
        if self.V is not None:
            t["V"] = self.V
        else:
            t["Vo"], t["Vi"] = self.Vo, self.Vi
        return t

    def __call__(self, X, segments, attention="hardmax", temperature=1.0, observe=None):
        """Apply to concatenated sequences; ``segments`` are the sequences' start offsets + end.

        ``observe(scores, mask, values, P)``, if given, sees every block of equal-length
        sequences (mask = argmax set; P = softmax weights or None): the evaluator's margins.
        """
        exact = nm.is_exact(X)
        out = self.rho * X
        if self.uniform:
            if isinstance(X, QMatrix):  # exact: mean(V x) = V·mean(x), N·d² products, not T·d²
                return out + (nm.segment_means(X, segments) @ self.value_matrix().T).repeat(
                    np.diff(segments))
            return out + nm.repeat_rows(nm.segment_means(self.values(X), segments),
                                        np.diff(segments))
        from .forward import attention_chunks

        QX, KX = X @ self.Q.T, X @ self.K.T
        if isinstance(X, QMatrix):  # exact hardmax: integer scores, the same formula
            if attention != "hardmax":
                raise ValueError("softmax attention has no exact rational forward pass")
            return out + _exact_hardmax(self, X, QX, KX, segments, observe)
        VX = self.values(X)
        mixed = nm.zeros(X.shape, exact)
        for keys, rows in attention_chunks(segments):  # long sequences: a few rows at a time
            queries = keys[:, rows]
            v = VX[keys]  # (B, n, ·)
            scores = QX[queries] @ np.swapaxes(KX[keys], 1, 2)  # (B, rows, n)
            if exact and attention != "hardmax":
                raise ValueError("softmax attention has no exact rational forward pass")
            P, mask = attention_weights(scores, attention, temperature)
            mixed[queries] = P @ v
            if observe is not None:
                observe(scores, mask, v, P if attention == "softmax" else None)
        return out + mixed


def _exact_hardmax(sa: SelfAttention, X: QMatrix, QX: QMatrix, KX: QMatrix, segments,
                   observe):
    """Σ_j P_ij V x_j for hardmax in exact arithmetic (:func:`exactformer.rational.hardmax_mix`).

    ``observe`` sees the float images of the scores and values (margins are a report, not a
    proof) and the exact argmax masks.
    """
    from .forward import length_buckets
    from .rational import concatenate, hardmax_mix

    order, parts = [], []
    Vf = None
    for idx in length_buckets(segments):
        mixed, mask = hardmax_mix(QX, KX, X, sa.values, idx)
        order.append(idx.ravel())
        parts.append(mixed)
        if observe is not None:
            if Vf is None:
                Vf = X.floats() @ nm.to_float(sa.value_matrix()).T
            q, k = QX.floats()[idx], KX.floats()[idx]
            observe(q @ np.swapaxes(k, 1, 2), mask, Vf[idx], None)
    dv = sa.value_matrix().shape[0]
    out = QMatrix.zeros((len(X), dv))
    if parts:
        out[np.concatenate(order)] = concatenate(parts)
    return out


@dataclass
class Block:
    """One block: a feed-forward layer then a self-attention layer (either may be identity)."""

    ff: FeedForward | None = None
    sa: SelfAttention | None = None
    kind: str = ""  # what the block does in the construction (for `info` and the figures)


@dataclass
class Transformer:
    """A list of blocks with one attention mode (hardmax or softmax with temperature τ)."""

    blocks: list[Block]
    d: int
    attention: str = "hardmax"
    temperature: float = 1.0
    info: dict = field(default_factory=dict)

    # -- structure -------------------------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def exact(self) -> bool:
        """True when every weight is a rational (built in exact mode): fail closed.

        A model with some float and some rational tensors is not exact; the evaluator runs
        it in floats (:func:`exactformer.forward.run`).
        """
        kinds = {nm.is_exact(np.asarray(t)) for _, t in self.named_tensors()}
        return kinds == {True}

    @property
    def width(self) -> int:
        return max((b.ff.width for b in self.blocks if b.ff is not None), default=0)

    @property
    def rank(self) -> int:
        return max((b.sa.rank for b in self.blocks if b.sa is not None), default=0)

    @property
    def n_params(self) -> int:
        return sum(int(np.asarray(t).size) for _, t in self.named_tensors())

    def __repr__(self) -> str:
        kinds: dict[str, int] = {}
        for b in self.blocks:
            kinds[b.kind or "block"] = kinds.get(b.kind or "block", 0) + 1
        summary = ", ".join(f"{k}×{v}" for k, v in kinds.items())
        tau = f", τ={self.temperature:.4g}" if self.attention == "softmax" else ""
        return (
            f"Transformer({self.attention}{tau}, d={self.d}, blocks={self.n_blocks}, "
            f"width={self.width}, rank={self.rank}, params={self.n_params}"
            f"{', exact' if self.exact else ''}; {summary})"
        )

    # -- forward ---------------------------------------------------------------------------
    def __call__(self, X) -> np.ndarray:
        """Outputs for one ``(n, d)`` sequence (exact if the model or X is rational)."""
        return self.run([X])[0]

    def run(self, sequences, stats: list | None = None, trace: list | None = None,
            exact_rows: bool = False, progress=None):
        """Outputs for many sequences at once: :func:`exactformer.forward.run`.

        ``stats`` (a list) receives one dict per attention layer with its score margin;
        ``trace`` (a list) receives the concatenated token states after every layer;
        ``exact_rows``: exact outputs as QMatrix (integer rows) instead of Fractions;
        ``progress(stage, done, total)`` hears of the blocks done.
        """
        from .forward import run

        return run(self, sequences, stats=stats, trace=trace, exact_rows=exact_rows,
                   progress=progress)

    # -- conversion --------------------------------------------------------------------------
    def _map(self, f) -> Transformer:
        blocks = []
        for b in self.blocks:
            ff = sa = None
            if b.ff is not None:
                ff = FeedForward(f(b.ff.U), f(b.ff.b), f(b.ff.W), f(np.array(b.ff.eta))[()])
            if b.sa is not None:
                s = b.sa
                sa = SelfAttention(
                    f(s.Q), f(s.K),
                    None if s.V is None else f(s.V),
                    None if s.Vo is None else f(s.Vo),
                    None if s.Vi is None else f(s.Vi),
                    f(np.array(s.rho))[()],
                )
            blocks.append(Block(ff, sa, b.kind))
        return replace(self, blocks=blocks, info=dict(self.info))

    def as_float(self) -> Transformer:
        return self._map(nm.to_float)

    @property
    def has_float_realisation(self) -> bool:
        """False when the compiler recorded that this exact model's float64 tensors do not
        certify as a float model (docs/verification.md): readers must not use them."""
        return not (self.exact and self.info.get("float_realisation") is False)

    def float_model(self) -> Transformer:
        """The float64 tensors as a model; refused (ModelFileError) without a float realisation."""
        if not self.has_float_realisation:
            from .errors import ModelFileError

            raise ModelFileError("this exact model has no float realisation: its float64 "
                                 "tensors do not certify as a float model (only its rational "
                                 "weights are proven); use `verify --exact` or recompile")
        return self.as_float() if self.exact else self

    def as_exact(self) -> Transformer:
        return self._map(nm.to_exact)

    # -- files (docs/design.md §2, :mod:`exactformer.modelfile`) ---------------------------
    def named_tensors(self):
        for l, b in enumerate(self.blocks):
            for prefix, layer in (("ff", b.ff), ("sa", b.sa)):
                if layer is not None:
                    for name, t in layer.tensors().items():
                        yield f"blocks.{l}.{prefix}.{name}", t

    def save(self, path) -> None:
        """Write ``.safetensors`` atomically (exact models keep their rationals too)."""
        from .modelfile import save

        save(self, path)

    @classmethod
    def load(cls, path) -> Transformer:
        """Read and check a model file; every problem is one ``ModelFileError`` line."""
        from .modelfile import load

        return load(path)
