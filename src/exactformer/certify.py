"""Ball-arithmetic certificate for softmax models (docs/design.md §5, exact mode).

exp is not rational, so a softmax model cannot be run in fractions. It need not be: after
the collapse every token lies *exactly* on the line spanned by one vector (the projection
layer, or the collapse's rank-one value map, writes ``x = λ·a``), and every later layer is
a one-sided snap whose units read ``⟨w, x⟩``. The certificate therefore

1. runs the layers before the line in exact rationals, and the softmax layer in ``arb``
   ball arithmetic (python-flint), which gives a certified interval for each token's λ;
2. carries every token on through the snaps *symbolically*, as ``c + λ·a`` with exact
   rational c, a: a unit whose input interval lies strictly on one side of 0 is exactly
   on (adds an exact affine term) or exactly off;
3. accepts when, at the end, ``a = 0`` (the output no longer depends on λ) and ``c`` equals
   the target — a proof that the output is exactly the target for every λ in the interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import flint
import numpy as np

from . import numeric as nm
from .model import Transformer

PRECISION = 256  # bits of the arb balls


@dataclass
class Certificate:
    passed: bool
    message: str
    outputs: list | None = None  # exact outputs (Fractions) when every token is certified


def _arb(x):
    if isinstance(x, Fraction):
        return flint.arb(flint.fmpq(x.numerator, x.denominator))
    return flint.arb(x)


def _to_arb(a: np.ndarray) -> np.ndarray:
    return np.vectorize(_arb, otypes=[object])(a) if a.size else a.astype(object)


def _line_layer(model: Transformer):
    """(block, 'ff'|'sa') of the layer that puts every token on a line, or None.

    Every layer after it must be a feed-forward layer with η = 1 (the snaps) or of width 0
    (``x ↦ η·x``: the rescale block of data outside 2^±64, docs/limits.md).
    """
    for l in range(model.n_blocks - 1, -1, -1):
        b = model.blocks[l]
        if b.sa is None and b.ff is not None and b.ff.width == 0:
            continue
        if b.sa is not None:
            s = b.sa
            if s.rho == 0 and s.Vo is not None and s.Vo.shape[1] == 1:
                return l, "sa"
            return None
        if b.ff is not None and b.ff.eta != 1:
            if b.ff.eta == 0 and b.ff.width == 1:
                return l, "ff"
            return None
    return None


def _softmax_arb(X, segments, sa, tau):
    """One attention layer in ball arithmetic (softmax; uniform when rank 0)."""
    VX = X @ _to_arb(np.asarray(sa.value_matrix())).T
    Q, K = _to_arb(sa.Q), _to_arb(sa.K)
    out = np.empty_like(VX)
    for s, e in zip(segments[:-1], segments[1:]):
        if sa.rank == 0:
            out[s:e] = VX[s:e].sum(axis=0) / (e - s)
            continue
        q, k = X[s:e] @ Q.T, X[s:e] @ K.T
        scores = q @ k.T
        shift = max(float(v.mid()) for v in scores.ravel())  # any constant shift is exact
        z = np.vectorize(lambda v, c=shift: ((v - c) / tau).exp(), otypes=[object])(scores)
        P = z / z.sum(axis=1, keepdims=True)
        out[s:e] = P @ VX[s:e]
    return _arb(sa.rho) * X + out


def certify(model: Transformer, inputs: list, targets: list) -> Certificate:
    """Prove (or fail to prove) that the softmax model maps every input exactly onto its targets."""
    found = _line_layer(model)
    if found is None:
        return Certificate(False, "no line layer followed only by snap layers: the "
                                  "certificate applies to compiled softmax models")
    line_block, line_kind = found
    exact = model if model.exact else model.as_exact()
    tau = Fraction(model.temperature)  # the float in the file, read exactly
    old = flint.ctx.prec
    flint.ctx.prec = PRECISION
    try:
        lengths = [len(x) for x in inputs]
        segments = np.concatenate([[0], np.cumsum(lengths)])
        X = np.concatenate([nm.to_exact(x) for x in inputs])
        balls = False  # after the first softmax layer the state is arb balls
        for l, blk in enumerate(exact.blocks[: line_block + 1]):
            last = l == line_block
            if blk.ff is not None:
                if last and line_kind == "ff":
                    if balls:
                        pre = X @ _to_arb(blk.ff.U.T) + _to_arb(blk.ff.b)
                    else:
                        pre = X @ blk.ff.U.T + blk.ff.b
                    return _snaps(exact, line_block + 1, pre[:, 0], blk.ff.W[:, 0],
                                  segments, targets, True, not model.exact)
                X = _relu_ff(blk.ff, X, balls)
            if blk.sa is not None:
                if blk.sa.rank > 0 or balls:
                    Xa = X if balls else _to_arb(X)
                    if last:  # folded collapse: x = λ·Vo[:, 0] with λ = Σ P (Vi x)
                        sa = blk.sa
                        lam = _softmax_arb(Xa, segments, _rank1(sa), _arb(tau))[:, 0]
                        return _snaps(exact, line_block + 1, lam, sa.Vo[:, 0], segments,
                                      targets, False, not model.exact)
                    X, balls = _softmax_arb(Xa, segments, blk.sa, _arb(tau)), True
                else:
                    X = blk.sa(X, segments)
        return Certificate(False, "internal: the line layer was not reached")
    finally:
        flint.ctx.prec = old


def _rank1(sa):
    """The folded collapse with value map Vi only (λ = Σ_j P_ij ⟨Vi, x_j⟩)."""
    from .model import SelfAttention

    return SelfAttention(sa.Q, sa.K, V=None, Vo=np.array([[Fraction(1)]], dtype=object),
                         Vi=sa.Vi, rho=Fraction(0))


def _relu_ff(ff, X, balls):
    if not balls:
        return ff(X)
    pre = X @ _to_arb(ff.U.T) + _to_arb(ff.b)
    relu = np.vectorize(lambda v: v if v > 0 else (_arb(0) if v <= 0 else _arb(0).union(v)),
                        otypes=[object])
    return _arb(ff.eta) * X + relu(pre) @ _to_arb(ff.W.T)


def _snaps(model, first_block, lam, direction, segments, targets, require_positive=False,
           from_float=False):
    """Carry ``x = λ·direction`` through the snap layers symbolically (see module doc)."""
    outputs = []
    T = len(lam)
    d = len(direction)
    seq_of = np.repeat(np.arange(len(segments) - 1), np.diff(segments))
    for t in range(T):
        j = int(seq_of[t])
        where = f"sequence {j}, token {t - int(segments[j])}"
        lam_t = lam[t]
        if require_positive:
            if not lam_t > 0:
                return Certificate(False, f"{where}: the projection's ReLU input is not "
                                          "certainly positive")
        c = np.array([Fraction(0)] * d, dtype=object)
        a = np.array(direction, dtype=object)
        for l in range(first_block, model.n_blocks):
            ff = model.blocks[l].ff
            if ff is not None and model.blocks[l].sa is None and ff.width == 0:
                c, a = ff.eta * c, ff.eta * a  # x ↦ η·x exactly (a rescale block)
                continue
            if ff is None or model.blocks[l].sa is not None or ff.eta != 1:
                return Certificate(False, f"block {l} is not a snap layer")
            p0 = ff.U @ c + ff.b
            p1 = ff.U @ a
            dc = np.array([Fraction(0)] * d, dtype=object)
            da = np.array([Fraction(0)] * d, dtype=object)
            for u in range(ff.width):
                pre = _arb(p0[u]) + _arb(p1[u]) * lam_t
                if p1[u] == 0:
                    on = p0[u] > 0
                elif pre > 0:
                    on = True
                elif pre <= 0:
                    on = False
                else:
                    return Certificate(False, f"{where}: in block {l} the interval of unit {u}"
                                              " straddles its threshold")
                if on:
                    dc = dc + ff.W[:, u] * p0[u]
                    da = da + ff.W[:, u] * p1[u]
            c, a = c + dc, a + da
        if any(v != 0 for v in a):
            why = ("float weights cannot be certified exact" if from_float else
                   "no snap covers its certified position on the line: the collapse left it "
                   "too far from its destination")
            return Certificate(False, f"{where}: the output still depends on the collapse ({why})")
        outputs.append(c)
    out = np.stack(outputs)
    per_seq = np.split(out, segments[1:-1])
    for j, (o, y) in enumerate(zip(per_seq, targets)):
        yy = nm.to_exact(y)
        m = len(y)
        if not (o[:m] == yy).all():
            return Certificate(False, f"sequence {j}: the certified read-out differs from the "
                                      "targets")
        for k in range(m, len(o)):
            if not any((o[k] == row).all() for row in yy):
                return Certificate(False, f"sequence {j}, token {k}: the certified output is not"
                                          " one of the targets")
    return Certificate(True, "every token's certified interval lies strictly on one side of "
                             "every snap threshold: the outputs equal the targets exactly",
                       per_seq)
