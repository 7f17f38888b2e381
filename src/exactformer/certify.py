"""Ball-arithmetic certificate for softmax models (docs/design.md §5, exact mode).

exp is not rational, so a softmax model cannot be run in fractions. It need not be: after
the collapse every token lies *exactly* on the line spanned by one vector (the projection
layer, or the collapse's rank-one value map, writes ``x = λ·a``), and every later layer is
a one-sided snap whose units read ``⟨w, x⟩``. The certificate therefore

1. runs the layers before the first softmax layer in the exact evaluator
   (:func:`exactformer.forward.run`, integer rows), and the softmax layer in ``arb`` ball
   arithmetic (python-flint), which gives a certified interval for each token's λ;
2. carries every token on through the snaps *symbolically*, as ``c + λ·a`` with exact
   rational c, a: a unit whose input interval lies strictly on one side of 0 is exactly
   on (adds an exact affine term) or exactly off. Tokens with equal ``(c, a)`` are carried
   as one group (docs/exact.md §6);
3. accepts when, at the end, ``a = 0`` (the output no longer depends on λ) and ``c`` equals
   the target — a proof that the output is exactly the target for every λ in the interval.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction

import flint
import numpy as np

from . import numeric as nm
from .model import Transformer
from .rational import QMatrix

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

    Every layer after it must be a feed-forward layer with η = 1 (the snaps), of width 0
    (``x ↦ η·x``: the rescale block), or the last snap with η = 2^e (data outside 2^±64
    scaled back in the last snap, docs/limits.md).
    """
    last = model.n_blocks - 1
    for l in range(last, -1, -1):
        b = model.blocks[l]
        if b.sa is None and b.ff is not None and b.ff.width == 0:
            continue
        if b.sa is not None:
            s = b.sa
            if s.rho == 0 and s.Vo is not None and s.Vo.shape[1] == 1:
                return l, "sa"
            return None
        if b.ff is not None and b.ff.eta != 1 and not (l == last and b.ff.eta != 0):
            if b.ff.eta == 0 and b.ff.width == 1:
                return l, "ff"
            return None
    return None


def _q_arb(X: QMatrix) -> np.ndarray:
    """Balls of the rationals of a QMatrix (each entry's arb enclosure)."""
    return _arb_of(X.num, np.broadcast_to(X.den[:, None], X.shape)).astype(object) \
        if X.size else np.empty(X.shape, dtype=object)


_arb_of = np.frompyfunc(lambda n, d: flint.arb(flint.fmpq(int(n), int(d))), 2, 1)


def _softmax_arb(X, segments, sa, tau):
    """One attention layer in ball arithmetic (softmax; uniform when rank 0). An exact
    state (QMatrix) has its products with Q, K, V formed exactly, then enclosed in balls."""
    if isinstance(X, QMatrix):
        def times(M):
            return _q_arb(X @ np.asarray(M).T)
        rho_x = _q_arb(X * sa.rho) if sa.rho != 0 else 0
    else:
        def times(M):
            return X @ _to_arb(np.asarray(M)).T
        rho_x = _arb(sa.rho) * X
    VX = times(sa.value_matrix())
    out = np.empty_like(VX)
    if sa.rank:
        q_all, k_all = times(sa.Q), times(sa.K)
    for s, e in zip(segments[:-1], segments[1:]):
        if sa.rank == 0:
            out[s:e] = VX[s:e].sum(axis=0) / (e - s)
            continue
        q, k = q_all[s:e], k_all[s:e]
        scores = q @ k.T
        shift = max(float(v.mid()) for v in scores.ravel())  # any constant shift is exact
        z = np.vectorize(lambda v, c=shift: ((v - c) / tau).exp(), otypes=[object])(scores)
        P = z / z.sum(axis=1, keepdims=True)
        out[s:e] = P @ VX[s:e]
    return rho_x + out


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
        first, X = _exact_prefix(exact, inputs, line_block, line_kind)
        balls = False  # after the first softmax layer the state is arb balls
        for l in range(first, line_block + 1):
            blk = exact.blocks[l]
            last = l == line_block
            if blk.ff is not None and l > first or (last and line_kind == "ff"):
                if last and line_kind == "ff":
                    if balls:
                        pre = (X @ _to_arb(blk.ff.U.T) + _to_arb(blk.ff.b))[:, 0]
                    else:
                        pre = (X @ blk.ff.U[:1].T + blk.ff.b[:1]).to_fractions()[:, 0]
                    return _snaps(exact, line_block + 1, pre, blk.ff.W[:, 0],
                                  segments, targets, True, not model.exact)
                X = _relu_ff(blk.ff, X, balls)
            if blk.sa is not None:
                if blk.sa.rank > 0 or balls:
                    if last:  # folded collapse: x = λ·Vo[:, 0] with λ = Σ P (Vi x)
                        sa = blk.sa
                        lam = _softmax_arb(X, segments, _rank1(sa), _arb(tau))[:, 0]
                        return _snaps(exact, line_block + 1, lam, sa.Vo[:, 0], segments,
                                      targets, False, not model.exact)
                    X, balls = _softmax_arb(X, segments, blk.sa, _arb(tau)), True
                else:
                    X = blk.sa(X, segments)
        return Certificate(False, "internal: the line layer was not reached")
    finally:
        flint.ctx.prec = old


def _exact_prefix(model: Transformer, inputs: list, line_block: int, line_kind: str):
    """``(l, X)``: the blocks before the first softmax layer (and block l's feed-forward
    layer unless it is the line layer) run by the exact evaluator of
    :func:`exactformer.forward.run` (integer rows, screened: docs/exact.md); X is the
    QMatrix of every token's exact state."""
    from .arithmetic import Rational
    from .forward import run
    from .model import Block
    from .rational import concatenate

    first = next((l for l, b in enumerate(model.blocks[:line_block])
                  if b.sa is not None and b.sa.rank > 0), line_block)
    blocks = list(model.blocks[:first])
    ff = model.blocks[first].ff
    if ff is not None and not (first == line_block and line_kind == "ff"):
        blocks.append(Block(ff))
    prefix = replace(model, blocks=blocks, info={})
    rows = run(prefix, inputs, arithmetic=Rational(), exact_rows=True)
    return first, concatenate(rows) if rows else QMatrix.zeros((0, model.d))


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


def _dyadic(x) -> Fraction:
    m, e = x.man_exp()
    m, e = int(m), int(e)
    return Fraction(m << e) if e >= 0 else Fraction(m, 1 << -e)


def _endpoints(v):
    """Exact ``(lo, hi)`` of a ball (or of an exact Fraction); ±inf when it is not finite."""
    if isinstance(v, Fraction):
        return v, v
    if not v.is_finite():
        return -np.inf, np.inf
    mid, rad = _dyadic(v.mid()), _dyadic(v.rad())
    return mid - rad, mid + rad


def _below(x) -> float:
    """A float64 ≤ the exact number x (x rounded to nearest, then one step down)."""
    try:
        return float(np.nextafter(float(x), -np.inf))
    except OverflowError:
        return -np.inf if x < 0 else float(np.finfo(np.float64).max)


def _above(x) -> float:
    try:
        return float(np.nextafter(float(x), np.inf))
    except OverflowError:
        return np.inf if x > 0 else -float(np.finfo(np.float64).max)


class _Line:
    """Every token's certified λ as an exact interval ``[lo, hi]`` with outward float64
    images, so that most comparisons with a threshold are decided in floats (a float test
    implies the exact one) and only tokens near it are compared exactly."""

    def __init__(self, lam):
        ends = [_endpoints(v) for v in lam]
        self.lo = np.array([e[0] for e in ends], dtype=object)
        self.hi = np.array([e[1] for e in ends], dtype=object)
        self.lo_f = np.array([_below(v) for v in self.lo], dtype=np.float64)
        self.hi_f = np.array([_above(v) for v in self.hi], dtype=np.float64)

    def side(self, idx: np.ndarray, p0: Fraction, p1: Fraction):
        """``(on, off)`` masks over tokens ``idx``: ``p0 + p1·λ`` is > 0, resp. ≤ 0, on all
        of the token's interval (neither: it straddles the threshold −p0/p1)."""
        if p1 == 0:
            on = np.full(len(idx), p0 > 0)
            return on, ~on
        theta = -p0 / p1
        lo_f, hi_f = self.lo_f[idx], self.hi_f[idx]
        if p1 > 0:  # > 0 iff λ > θ
            on, off = lo_f > _above(theta), hi_f <= _below(theta)
        else:  # > 0 iff λ < θ
            on, off = hi_f < _below(theta), lo_f >= _above(theta)
        for i in np.flatnonzero(~on & ~off):  # near the threshold: exact comparison
            lo, hi = self.lo[idx[i]], self.hi[idx[i]]
            on[i], off[i] = (lo > theta, hi <= theta) if p1 > 0 else (hi < theta, lo >= theta)
        return on, off


def _snaps(model, first_block, lam, direction, segments, targets, require_positive=False,
           from_float=False):
    """Carry ``x = λ·direction`` through the snap layers symbolically (see module doc).

    Tokens with the same symbolic state ``(c, a)`` (all of them at the line) form a group:
    a layer's pre-activations ``p0 + p1·λ`` are formed once per group, in Fractions, and
    each unit's threshold is compared with the λ intervals of all the group's tokens at once.
    """
    T = len(lam)
    d = len(direction)
    seq_of = np.repeat(np.arange(len(segments) - 1), np.diff(segments))

    def where(t):
        j = int(seq_of[t])
        return f"sequence {j}, token {t - int(segments[j])}"

    line = _Line(lam)
    if require_positive:
        bad = [t for t in np.flatnonzero(~(line.lo_f > 0)) if not line.lo[t] > 0]
        if len(bad):
            return Certificate(False, f"{where(bad[0])}: the projection's ReLU input is not "
                                      "certainly positive")
    zero = np.array([Fraction(0)] * d, dtype=object)
    groups = [(zero, np.array(direction, dtype=object), np.arange(T))]
    for l in range(first_block, model.n_blocks):
        ff = model.blocks[l].ff
        if ff is None or model.blocks[l].sa is not None:
            return Certificate(False, f"block {l} is not a snap layer")
        eta = Fraction(ff.eta)  # η ≠ 1: the rescale block, or a last snap that scales back
        if ff.width == 0:
            groups = [(eta * c, eta * a, idx) for c, a, idx in groups]  # x ↦ η·x
            continue
        new: dict = {}
        failed = None
        for c, a, idx in groups:
            p0 = ff.U @ c + ff.b
            p1 = ff.U @ a
            on = np.zeros((len(idx), ff.width), dtype=bool)
            for u in range(ff.width):
                on_u, off = line.side(idx, p0[u], p1[u])
                on[:, u] = on_u
                undecided = np.flatnonzero(~on_u & ~off)
                if len(undecided) and (failed is None or idx[undecided[0]] < failed[0]):
                    failed = (int(idx[undecided[0]]), u)
            if failed is not None:
                continue
            patterns, inverse = np.unique(on, axis=0, return_inverse=True)
            for k, pattern in enumerate(patterns):
                units = np.flatnonzero(pattern)
                c2, a2 = (c, a) if eta == 1 else (eta * c, eta * a)
                if len(units):
                    c2 = c2 + ff.W[:, units] @ p0[units]
                    a2 = a2 + ff.W[:, units] @ p1[units]
                key = (tuple(c2), tuple(a2))
                members = idx[inverse.ravel() == k]
                if key in new:
                    new[key] = (c2, a2, np.concatenate([new[key][2], members]))
                else:
                    new[key] = (c2, a2, members)
        if failed is not None:
            t, u = failed
            return Certificate(False, f"{where(t)}: in block {l} the interval of unit {u}"
                                      " straddles its threshold")
        groups = list(new.values())
    stuck = [int(idx.min()) for c, a, idx in groups if any(v != 0 for v in a)]
    if stuck:
        why = ("float weights cannot be certified exact" if from_float else
               "no snap covers its certified position on the line: the collapse left it "
               "too far from its destination")
        return Certificate(False, f"{where(min(stuck))}: the output still depends on the "
                                  f"collapse ({why})")
    out = np.empty((T, d), dtype=object)
    for c, _, idx in groups:
        out[idx] = c
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
