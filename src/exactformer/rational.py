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
_bit_length = np.frompyfunc(lambda v: v.bit_length(), 1, 1)


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
                self._floats = (self.num / self.den[:, None]).astype(np.float64)
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
        return int(max(np.max(_bit_length(np.abs(self.num))), np.max(_bit_length(self.den))))

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


def hardmax_mix(QX: QMatrix, KX: QMatrix, VX: QMatrix, idx: np.ndarray):
    """Hardmax attention on a bucket of equal-length sequences (token indices ``idx`` (B, n)).

    Returns the mean of ``V x_j`` over each token's argmax set (rows in ``idx`` order, a
    QMatrix) and the argmax mask (B, n, n). Scores ``⟨q_i, k_j⟩`` are compared as integers:
    each sequence's keys are brought to one denominator, and a query's positive
    denominator does not change its argmax.
    """
    B, n = idx.shape
    flat = idx.ravel()
    seq_starts = np.arange(0, B * n, n)

    def per_sequence_common(M: QMatrix) -> tuple[np.ndarray, np.ndarray]:
        den = M.den[flat]
        L = np.lcm.reduceat(den, seq_starts)
        return M.num[flat] * (np.repeat(L, n) // den)[:, None], L

    qn = QX.num[flat].reshape(B, n, -1)
    kn, _ = per_sequence_common(KX)
    scores = qn @ np.swapaxes(kn.reshape(B, n, -1), 1, 2)  # (B, n, n) integers
    top = scores.max(axis=2, keepdims=True)
    mask = scores == top
    vn, Lv = per_sequence_common(VX)
    b, i, j = np.nonzero(mask)  # lexicographic: grouped by (b, i)
    rows = b * n + i
    first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    sums = np.add.reduceat(vn[b * n + j], first, axis=0)
    counts = np.diff(np.r_[first, len(rows)]).astype(object)
    mixed = QMatrix(sums, Lv[b[first]] * counts).normalized()
    return mixed, mask


def is_q(a) -> bool:
    return isinstance(a, QMatrix)


def rounding_bound(xmax: float, weight_l1: float, d: int) -> float:
    """Bound on ``|⟨u, x⟩ − fl(⟨fl(u), fl(x)⟩)|`` for rationals u, x with float images.

    ``xmax`` ≥ max |fl(x_k)|, ``weight_l1`` ≥ Σ |fl(u_k)|: the images are within relative
    u of the rationals and a float64 dot product of length d errs by γ_d (Higham, *Accuracy
    and Stability*, §3.1); 2(d + 3)·u covers both with room, the absolute term underflow.
    """
    return 2 * (d + 3) * _U * (xmax * weight_l1) * (1 + 1e-6) + 1e-300 * (1 + weight_l1)


__all__ = ["QMatrix", "common_form", "concatenate", "hardmax_mix", "parts", "rounding_bound",
           "segment_means"]
