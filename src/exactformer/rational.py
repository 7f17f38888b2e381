"""Exact rational matrices at integer speed: the arithmetic of exact mode (docs/exact.md).

A :class:`QMatrix` holds row ``i`` as ``num[i, :] / den[i]``: Python integers in numpy
object arrays, one positive denominator per row. Sums, products and comparisons are
then integer operations that numpy loops over (≈50× faster than ``Fraction`` objects,
which normalise every entry by a gcd after every operation), while numpy's indexing,
``reduceat`` and ``matmul`` work unchanged on the numerators. Every value is exact: the
float64 image (:meth:`QMatrix.floats`, correctly rounded) only *screens* (decides which
rows a layer can change, with a proven bound), it never replaces a rational.

Weights stay ``Fraction`` object arrays (the model's tensors); :func:`common_form` turns
one into integers over one common denominator when a layer is applied. The layer
formulas of :mod:`exactformer.model` run on a ``QMatrix`` unchanged (``X @ U.T + b``,
``relu``, ``η·X``); the attention formulas call :func:`segment_means` and
:func:`hardmax_mix`.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

_U = float(np.finfo(np.float64).eps) / 2  # unit roundoff of float64

_numerator = np.frompyfunc(lambda f: f.numerator, 1, 1)
_denominator = np.frompyfunc(lambda f: f.denominator, 1, 1)
_fraction = np.frompyfunc(Fraction, 2, 1)
_to_fraction = np.frompyfunc(Fraction, 1, 1)


def _float_or_inf(n: int, d: int) -> float:
    try:
        return n / d
    except OverflowError:
        return float("inf") if n > 0 else float("-inf")


_float_of = np.frompyfunc(_float_or_inf, 2, 1)


def _float_parts(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``(numerator, denominator)`` object arrays of a float64 array (dyadic rationals)."""
    a = np.asarray(a, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError("exact arithmetic needs finite numbers")
    m, e = np.frexp(a)  # a = m·2^e, |m| in [0.5, 1)
    mant = (m * 2.0**53).astype(np.int64)
    e = e.astype(np.int64) - 53
    tz = np.zeros_like(mant)  # strip trailing zero bits: small, already reduced parts
    nz = mant != 0
    low = mant[nz] & -mant[nz]
    tz[nz] = np.log2(low.astype(np.float64)).astype(np.int64)
    mant = np.where(nz, mant >> tz, 0)
    e = np.where(nz, e + tz, 0)
    one = np.ones(a.shape, dtype=object)
    num = mant.astype(object) * np.left_shift(one, np.maximum(e, 0).astype(object))
    den = np.left_shift(one, np.maximum(-e, 0).astype(object))
    return num, den


def parts(a) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``(numerator, denominator)`` object arrays of an array of numbers (any shape)."""
    a = np.asarray(a)
    if a.dtype != object:
        if a.dtype.kind in "iub":
            return a.astype(object), np.ones(a.shape, dtype=object)
        return _float_parts(a)
    if a.size == 0:
        return a.astype(object), np.ones(a.shape, dtype=object)
    a = _to_fraction(a) if not all(isinstance(v, Fraction) for v in a.flat) else a
    return _numerator(a).astype(object), _denominator(a).astype(object)


def common_form(a) -> tuple[np.ndarray, int]:
    """``(integers, D)`` with ``a = integers / D`` entrywise, D the lcm of the denominators."""
    num, den = parts(a)
    D = int(np.lcm.reduce(den.ravel())) if den.size else 1
    if D == 1:
        return num, 1
    return num * (D // den), D


def _row_lcm(den: np.ndarray) -> np.ndarray:
    return np.lcm.reduce(den, axis=1) if den.shape[1] else np.ones(len(den), dtype=object)


class QMatrix:
    """A 2-D array of exact rationals: row i is ``num[i] / den[i]`` (see module doc).

    Rows are kept reduced (gcd of a row's numerators and its denominator is 1) by every
    operation that can grow them, so equal rows have equal representations
    (:meth:`row_keys`) and numbers stay as short as the values allow.
    """

    __array_ufunc__ = None  # ndarray ⊕ QMatrix defers to QMatrix's reflected operators
    __slots__ = ("num", "den", "_floats")

    def __init__(self, num: np.ndarray, den: np.ndarray, floats: np.ndarray | None = None):
        self.num = num
        self.den = den
        self._floats = floats

    # -- construction and conversion ---------------------------------------------------
    @classmethod
    def of(cls, a) -> QMatrix:
        """Exact copy of a 2-D array of floats, ints or Fractions (or a QMatrix)."""
        if isinstance(a, QMatrix):
            return a.copy()
        a = np.asarray(a)
        if a.ndim == 1:
            a = a.reshape(1, -1)
        num, den = parts(a)
        if a.shape[1] == 0:
            return cls(num, np.ones(len(a), dtype=object))
        L = _row_lcm(den)
        return cls(num * (L[:, None] // den), L)

    @classmethod
    def zeros(cls, shape) -> QMatrix:
        r, c = shape
        return cls(np.zeros((r, c), dtype=object), np.ones(r, dtype=object))

    @property
    def shape(self) -> tuple[int, int]:
        return self.num.shape

    @property
    def ndim(self) -> int:
        return 2

    @property
    def size(self) -> int:
        return self.num.size

    def __len__(self) -> int:
        return len(self.num)

    def floats(self) -> np.ndarray:
        """The float64 image (each entry correctly rounded), cached; do not modify it."""
        if self._floats is None:
            if self.num.size == 0:
                self._floats = np.zeros(self.shape)
            else:
                try:
                    self._floats = (self.num / self.den[:, None]).astype(np.float64)
                except OverflowError:  # beyond float64: ±inf (screens then go dense)
                    self._floats = _float_of(self.num, np.broadcast_to(
                        self.den[:, None], self.shape)).astype(np.float64)
        return self._floats

    def to_fractions(self) -> np.ndarray:
        """Object array of (normalised) Fractions."""
        if self.num.size == 0:
            return np.empty(self.shape, dtype=object)
        return _fraction(self.num, np.broadcast_to(self.den[:, None], self.shape)).astype(object)

    def row(self, i: int) -> np.ndarray:
        """Row ``i`` as a 1-D array of Fractions."""
        d = int(self.den[i])
        return np.array([Fraction(int(v), d) for v in self.num[i]], dtype=object)

    def copy(self) -> QMatrix:
        f = None if self._floats is None else self._floats.copy()
        return QMatrix(self.num.copy(), self.den.copy(), f)

    def normalized(self) -> QMatrix:
        """Rows reduced by the gcd of their numerators and denominator (in place; returns self)."""
        if self.num.size == 0:
            return self
        g = np.gcd(np.gcd.reduce(self.num, axis=1), self.den)
        big = np.flatnonzero(g != 1)
        if len(big):
            self.num[big] //= g[big, None]
            self.den[big] //= g[big]
        return self

    def row_keys(self) -> list:
        """One hashable key per row, equal exactly when the rows are equal."""
        return [(int(d), *row) for d, row in zip(self.normalized().den, self.num.tolist())]

    def bit_length(self) -> int:
        """Largest bit length of a numerator or denominator."""
        if self.num.size == 0:
            return 0
        top = max(int(np.max(self.num)), -int(np.min(self.num)))  # comparisons run in C
        return max(top.bit_length(), int(np.max(self.den)).bit_length())

    # -- indexing ------------------------------------------------------------------------
    def __getitem__(self, key) -> QMatrix:
        """Rows (int array, slice, mask), or ``[rows, cols]``; always a QMatrix."""
        if isinstance(key, tuple):
            rows, cols = key
            if isinstance(cols, (int, np.integer)):
                cols = [int(cols)]
            sub = self[rows]
            f = None if sub._floats is None else sub._floats[:, cols]
            return QMatrix(sub.num[:, cols], sub.den.copy(), f).normalized()
        if isinstance(key, (int, np.integer)):
            key = [int(key)]
        f = None if self._floats is None else self._floats[key]
        return QMatrix(self.num[key], self.den[key], f)

    def __setitem__(self, key, value: QMatrix) -> None:
        if not isinstance(value, QMatrix):
            value = QMatrix.of(value)
        self.num[key] = value.num
        self.den[key] = value.den
        if self._floats is not None:
            self._floats[key] = value.floats()

    # -- arithmetic ----------------------------------------------------------------------
    def _add(self, other, sign: int) -> QMatrix:
        if isinstance(other, QMatrix):
            if not other.num.any():  # x + 0 (e.g. ρ = 0, inactive units): no arithmetic
                return self.copy()
            if not self.num.any():
                return other.copy() if sign == 1 else -other
            L = np.lcm(self.den, other.den)
            num = self.num * (L // self.den)[:, None] + sign * other.num * (L // other.den)[:, None]
            return QMatrix(num, L).normalized()
        other = np.asarray(other)
        if other.ndim == 2:
            return self._add(QMatrix.of(other), sign)
        bn, D = common_form(other)  # a scalar or one row, broadcast over the rows
        L = np.lcm(self.den, D)
        num = self.num * (L // self.den)[:, None] + sign * bn * (L // D)[:, None]
        return QMatrix(num, L).normalized()

    def __add__(self, other) -> QMatrix:
        return self._add(other, 1)

    __radd__ = __add__

    def __sub__(self, other) -> QMatrix:
        return self._add(other, -1)

    def __rsub__(self, other) -> QMatrix:
        return (-self)._add(other, 1)

    def __neg__(self) -> QMatrix:
        f = None if self._floats is None else -self._floats
        return QMatrix(-self.num, self.den.copy(), f)

    def __mul__(self, other) -> QMatrix:
        """Times a scalar, or times a column ``(rows, 1)`` of per-row rationals."""
        other = np.asarray(other)
        if other.ndim == 0:
            f = Fraction(other[()]) if other.dtype != object else Fraction(other[()])
            if f == 1:
                return self.copy()
            if f == 0:
                return QMatrix.zeros(self.shape)
            return QMatrix(self.num * f.numerator, self.den * f.denominator).normalized()
        if other.ndim == 2 and other.shape[1] == 1:
            n, d = parts(other[:, 0])
            return QMatrix(self.num * n[:, None], self.den * d).normalized()
        raise TypeError(f"QMatrix * array of shape {other.shape} is not supported")

    __rmul__ = __mul__

    def __matmul__(self, M) -> QMatrix:
        """``self @ M`` for a matrix M of numbers (weights: one common denominator)."""
        if isinstance(M, QMatrix):
            M = M.to_fractions()
        Mn, D = common_form(M)
        if Mn.ndim == 1:
            raise TypeError("QMatrix @ 1-D array: reshape the vector to a column")
        if self.num.shape[0] == 0 or Mn.shape[1] == 0 or Mn.shape[0] == 0:
            return QMatrix.zeros((self.shape[0], Mn.shape[1]))
        return QMatrix(self.num @ Mn, self.den * D).normalized()

    def relu(self) -> QMatrix:
        num = np.where(self.num > 0, self.num, 0).astype(object)
        return QMatrix(num, self.den.copy()).normalized()

    def positive(self) -> np.ndarray:
        """Boolean array: which entries are > 0 (exactly)."""
        return self.num > 0

    def repeat(self, counts) -> QMatrix:
        return QMatrix(np.repeat(self.num, counts, axis=0), np.repeat(self.den, counts))


def concatenate(parts_: list) -> QMatrix:
    """Rows of several QMatrix one after the other."""
    parts_ = [p if isinstance(p, QMatrix) else QMatrix.of(p) for p in parts_]
    return QMatrix(np.concatenate([p.num for p in parts_]),
                   np.concatenate([p.den for p in parts_]))


def segment_means(X: QMatrix, segments: np.ndarray) -> QMatrix:
    """Mean row of every segment ``[segments[k], segments[k+1])`` (non-empty), exactly."""
    starts = np.asarray(segments[:-1])
    counts = np.diff(segments)
    L = np.lcm.reduceat(X.den, starts)
    scaled = X.num * (np.repeat(L, counts) // X.den)[:, None]
    sums = np.add.reduceat(scaled, starts, axis=0)
    return QMatrix(sums, L * counts.astype(object)).normalized()


def hardmax_mix(QX: QMatrix, KX: QMatrix, X: QMatrix, values, idx: np.ndarray):
    """Hardmax attention on a bucket of equal-length sequences (token indices ``idx`` (B, n)).

    Returns the mean of ``V x_j`` over each token's argmax set (rows in ``idx`` order, a
    QMatrix) and the argmax mask (B, n, n); ``values(rows)`` is ``V x`` for those rows.
    The float images screen: a key whose float score is below the row's best float score
    by more than twice a bound on the scores' rounding cannot be in the argmax set. The
    others are compared exactly, as integers: each sequence's keys are brought to one
    denominator, and a query's positive denominator does not change its argmax. ``V x_j``
    is computed for the members of some argmax set only (in exact arithmetic the order of
    a sum does not change its value).
    """
    B, n = idx.shape
    flat = idx.ravel()
    q = QX.floats()[idx]  # (B, n, h)
    k = KX.floats()[idx]
    scores = q @ np.swapaxes(k, 1, 2)  # (B, n, n) float images
    h = q.shape[2]
    kmax = np.abs(k).sum(axis=2).max(axis=1)  # (B,) largest |k|₁ of each sequence
    err = rounding_bound(np.abs(q).max(axis=2), kmax[:, None], h)  # (B, n)
    top = scores.max(axis=2)
    with np.errstate(invalid="ignore"):
        cand = scores >= (top - 2 * err)[:, :, None]
    bad = ~np.isfinite(top - 2 * err)  # images overflowed: every key is a candidate
    cand[bad] = True
    b, i, j = np.nonzero(cand)  # lexicographic: grouped by (b, i)
    rows = b * n + i
    first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    single = np.diff(np.r_[first, len(rows)]) == 1
    keep = np.ones(len(rows), dtype=bool)
    if not np.all(single):  # exact integer scores for rows with several candidates
        several = np.repeat(~single, np.diff(np.r_[first, len(rows)]))
        bs, is_, js = b[several], i[several], j[several]
        kd = KX.den[flat].reshape(B, n)
        L = np.lcm.reduce(kd, axis=1)  # per sequence: one denominator for the keys
        qn = QX.num[flat[bs * n + is_]]
        kn = KX.num[flat[bs * n + js]] * (L[bs] // kd[bs, js])[:, None]
        exact = (qn * kn).sum(axis=1)
        r = rows[several]
        starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
        best = np.maximum.reduceat(exact, starts)
        keep[several] = exact == np.repeat(best, np.diff(np.r_[starts, len(r)]))
    b, i, j, rows = b[keep], i[keep], j[keep], rows[keep]
    mask = np.zeros((B, n, n), dtype=bool)
    mask[b, i, j] = True
    members, at = np.unique(flat[b * n + j], return_inverse=True)
    V = values(X[members])  # QMatrix (members, dv)
    first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    counts = np.diff(np.r_[first, len(rows)])
    if np.all(counts == 1):
        return V[at], mask
    vd = V.den[at]
    L = np.lcm.reduceat(vd, first)
    vn = V.num[at] * (np.repeat(L, counts) // vd)[:, None]
    sums = np.add.reduceat(vn, first, axis=0)
    return QMatrix(sums, L * counts.astype(object)).normalized(), mask


class DirectionTable:
    """The units ``W·relu(U·x + b)`` of one FF grouped by their U row (direction), exactly.

    Units reading one direction u are on where ``t = ⟨u, x⟩`` exceeds their threshold
    ``θ_k = −b_k``: sorted by θ, the units on at t are a prefix, so their sum is
    ``t·S1[p] − S2[p]`` with the prefix sums ``S1 = Σ W_k``, ``S2 = Σ θ_k·W_k`` and p the number
    of thresholds below t. That is the layer's formula summed in another order (the same
    rational) at O(d) per (row, direction) pair instead of O(units·d).
    """

    def __init__(self, U, b, W):
        Un, self.DU = common_form(U)
        keys: dict = {}
        self.col_of_unit = np.array([keys.setdefault(tuple(r), len(keys))
                                     for r in Un.tolist()], dtype=np.int64)
        self.cols = np.array([list(k) for k in keys], dtype=object).reshape(len(keys), -1)
        theta = -_to_fraction(np.asarray(b, dtype=object)) if len(b) else np.zeros(0, object)
        Wf = np.asarray(W, dtype=object)
        self.thresholds, S1, S2, self.offset = [], [], [], [0]
        zero = np.zeros((1, Wf.shape[0]), dtype=object) + Fraction(0)
        for c in range(len(keys)):
            units = np.flatnonzero(self.col_of_unit == c)
            units = np.array(sorted(units, key=lambda k: theta[k]), dtype=np.int64)
            th = theta[units]
            Wc = Wf[:, units].T  # (k, d)
            S1.append(np.concatenate([zero, np.cumsum(Wc, axis=0)]))
            S2.append(np.concatenate([zero, np.cumsum(Wc * th[:, None], axis=0)]))
            self.thresholds.append(list(th))
            self.offset.append(self.offset[-1] + len(units) + 1)
        self.S1 = QMatrix.of(np.concatenate(S1)) if S1 else None
        self.S2 = QMatrix.of(np.concatenate(S2)) if S2 else None

    @property
    def n_directions(self) -> int:
        return len(self.cols)

    def pair_sums(self, X: QMatrix, rows: np.ndarray, cols: np.ndarray):
        """``(rows, Σ over the pairs of each row)`` for (row, direction) pairs: every unit
        on a direction not listed for a row must be off there (the caller's proof)."""
        from bisect import bisect_left

        order = np.lexsort((cols, rows))
        rows, cols = rows[order], cols[order]
        tn = (X.num[rows] * self.cols[cols]).sum(axis=1)
        t = _fraction(tn, X.den[rows] * self.DU)
        idx = np.array([self.offset[c] + bisect_left(self.thresholds[c], v)
                        for c, v in zip(cols.tolist(), t)], dtype=np.int64)
        part = self.S1[idx] * np.asarray(t, dtype=object)[:, None] - self.S2[idx]
        first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        counts = np.diff(np.r_[first, len(rows)])
        L = np.lcm.reduceat(part.den, first)
        num = part.num * (np.repeat(L, counts) // part.den)[:, None]
        return rows[first], QMatrix(np.add.reduceat(num, first, axis=0), L).normalized()


def units_by_direction(X: QMatrix, U, b, W, max_directions: int = 4) -> QMatrix | None:
    """``W·relu(U·x + b)`` for every row of X (:class:`DirectionTable`), or None when U has
    more than ``max_directions`` distinct rows (then the plain formula is as fast)."""
    table = DirectionTable(U, b, W)
    if table.n_directions > max_directions or len(X) == 0:
        return None
    C = table.n_directions
    rows = np.repeat(np.arange(len(X)), C)
    _, sums = table.pair_sums(X, rows, np.tile(np.arange(C), len(X)))
    return sums


def exact_errors(out, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distances of exact outputs to their targets, 0.0 exactly when a row is its target.

    ``out`` (n, d): one sequence's outputs (QMatrix or Fractions); ``targets`` (m, d).
    Returns the max-norm error of each of the first m rows against its own target, and for
    every later row the error to its nearest target and that target's index. Equality is
    decided on reduced integer rows; distances are computed in Fractions only for rows
    that differ (a failing model), else they are 0. A row that differs never reports 0: a
    difference below float64's range (< 2⁻¹⁰⁷⁵) reports the smallest positive float.
    """
    Q = out if isinstance(out, QMatrix) else QMatrix.of(out)
    Y = QMatrix.of(targets)
    m = len(Y)
    keys = Q.row_keys()
    ykeys = Y.row_keys()
    prefix = np.zeros(m)
    for k in range(min(m, len(Q))):
        if keys[k] != ykeys[k]:
            prefix[k] = _nonzero(np.max(np.abs(Q.row(k) - Y.row(k))))
    index = {key: t for t, key in reversed(list(enumerate(ykeys)))}
    rest = np.zeros(max(len(Q) - m, 0))
    near = np.zeros(len(rest), dtype=np.int64)
    for k in range(m, len(Q)):
        t = index.get(keys[k])
        if t is None:
            dist = [_nonzero(np.max(np.abs(Q.row(k) - Y.row(i)))) for i in range(m)]
            t = int(np.argmin(dist)) if dist else 0
            rest[k - m] = dist[t] if dist else np.inf
        near[k - m] = t
    return prefix, rest, near


def _nonzero(distance) -> float:
    """A positive exact distance as a float that is not 0 (underflow would read as equal)."""
    return max(float(distance), 5e-324)


def rounding_bound(xmax: float, weight_l1: float, d: int) -> float:
    """Bound on ``|⟨u, x⟩ − fl(⟨fl(u), fl(x)⟩)|`` for rationals u, x with float images.

    ``xmax`` ≥ max |fl(x_k)|, ``weight_l1`` ≥ Σ |fl(u_k)|: the images are within relative
    u of the rationals and a float64 dot product of length d errs by γ_d (Higham, *Accuracy
    and Stability*, §3.1); 2(d + 3)·u covers both with room. Near underflow an image is only
    within an absolute 2⁻¹⁰⁷⁵ (a weight below 2⁻¹⁰⁷⁵ has image 0, whatever x it multiplies):
    the absolute terms cover that for both factors, ``d·2⁻¹⁰⁷⁰·xmax`` the weights'.
    """
    return (2 * (d + 3) * _U * (xmax * weight_l1) * (1 + 1e-6) + 1e-300 * (1 + weight_l1)
            + d * 2.0 ** -1070 * xmax)


__all__ = ["DirectionTable", "QMatrix", "common_form", "concatenate", "exact_errors",
           "hardmax_mix", "parts", "rounding_bound", "segment_means", "units_by_direction"]
