"""The arithmetics of the one forward pass (:func:`exactformer.forward.run`).

* :class:`Float` — float64, each layer's own formula, screened feed-forward runs;
* :class:`Rational` — exact rationals (object arrays of Fractions), every layer dense;
* :class:`Interval` — the float64 pass plus a certified enclosure of the *true* state: the
  model's float64 weights and inputs are dyadic rationals, so the model has one exact real
  output per token, and this arithmetic proves how far it can be from the computed one
  (docs/verification.md).

An arithmetic holds the state ``X`` of all tokens (concatenated) and applies layers to it:
``ff_dense(ff)`` (every row), ``ff_rows(ff, rows)`` (η = 1 FFs on the rows a screen could
not prove off; returns the rows it may have changed), ``ff_wide(ff, screen, xmax)`` (a
compact layer reading many directions), ``attention(sa, segments, mode, τ, stats)``.
The exact backend's number type is :class:`~exactformer.rational.QMatrix`; another one plugs
in as another class with the same methods.

**The interval enclosure.** Per token the true state is ``x = X + ξ·a + e`` with ``X`` the
float64 state, ``e`` in the box ``|e| ≤ R`` (componentwise), and an optional *line part*:
a scalar ``|ξ| ≤ xi`` times a vector ``a`` in ``A ± RA``. The line part appears where a
layer's true output lies exactly on a line (the projection, ``x ↦ relu(p)·w``, or a rank-one
collapse with ρ = 0, ``x ↦ Vo·λ``): the snaps after it map a whole stretch of that line onto
one target, and the enclosure keeps that cancellation (``a`` shrinks to ~0) where a box
alone would carry the collapse's uncertainty to the outputs.

Rounding is bounded a priori per layer (Higham, *Accuracy and Stability*, §3.1:
``|fl(Σ aᵢbᵢ) − Σ aᵢbᵢ| ≤ γₙ·Σ|aᵢ||bᵢ|``, γₙ = nu/(1−nu)), and every radius is itself computed
in float64 and inflated by ``SAFE`` (a sum of k ≤ 10⁶ non-negative terms is off by < γ_k)
plus ``TINY`` (underflow). A ReLU unit whose pre-activation enclosure is > 0 is *on*, ≤ 0
*off* (then it contributes exactly 0, as in the float pass), else *undecided*: relu is
1-Lipschitz, so it contributes its pre-activation's radius times |W|. On-units reading the
same direction c are summed first (``S_c = Σ W_u``): a trapezoid's plateau or a snap has
``S_c`` ≈ 0 or ``−w/|w|²``, so the steep ramps do not amplify the radius. In an η = 1 layer
the on-units of a (token, direction) pair whose units are all decided are a prefix in
threshold order, and the pair adds exactly ``S_p·t + B_p`` (prefix sums of W and W·b in
double-double): a token on the plateaus of steep trapezoids (compact point moves, weights
~1e7 that cancel) then carries neither their rounding in its value nor in its radius.

Hardmax: a token's argmax set is *decided* when its top score beats every other by more
than twice the score radius; otherwise all candidates within the radius are kept and their
values' spread enters the radius. Softmax: the weight off the argmax set is bounded by
``(n − |S|)·exp(Δ/τ)`` with Δ the largest possible score gap (token by token,
``Σ exp(Δ_j/τ)·|v_j − m|``, where that bound is not small: a near-copy just off S), the
exponential bounded above in ball arithmetic (python-flint ``arb``) on a grid of 1/16.
"""

from __future__ import annotations

import math

import numpy as np

from . import numeric as nm
from .forward import (
    _apply_wide_ff,
    _apply_wide_ff_exact,
    _positive,
    _slack,
    length_buckets,
    record_margins,
)

U = 2.0 ** -53  # unit roundoff of float64
SAFE = 1 + 1e-9  # inflation of every computed radius (covers its own rounding)
TINY = 1e-318  # absolute term: underflow (≤ 2⁻¹⁰⁷⁵ per product; ~2·10⁵ products per term)
EXP_GRID = 16  # softmax: exp bounded at ceil(16·z)/16


def gamma(n) -> float:
    """Higham's γₙ = nu / (1 − nu)."""
    return n * U / (1 - n * U)


class Float:
    """float64, each layer's own formula; η = 1 FFs screened (docs/design.md §3)."""

    name = "float64"
    screened = True
    block = -1

    def convert(self, x) -> np.ndarray:
        return np.asarray(nm.to_float(np.asarray(x)) if nm.is_exact(np.asarray(x)) else x,
                          dtype=np.float64)

    def model(self, model):
        if any(nm.is_exact(np.asarray(t)) for _, t in model.named_tensors()):
            return model.as_float()  # some rational tensors (or all): their float images
        return model

    def begin(self, X: np.ndarray) -> None:
        self.X = np.array(X, dtype=np.float64, order="C")  # owned: runs work in place

    def floats(self) -> np.ndarray:
        """The state's float image (what the screens read; kept in sync by row updates)."""
        return self.X

    def ff_dense(self, ff) -> None:
        self.X = ff(self.X)

    def run_slack(self, ffs: list, xmax: float) -> np.ndarray:
        return _slack(ffs, xmax)

    def ff_rows(self, ff, rows: np.ndarray) -> np.ndarray:
        X = self.X
        x = X[rows]
        pre = x @ ff.U.T + ff.b
        on = _positive(pre).any(axis=1)
        if not on.any():
            return rows[:0]
        r = rows[on]
        X[r] = x[on] + nm.relu(pre[on]) @ ff.W.T
        return r

    def screen_holds(self, rows: np.ndarray) -> bool:
        return True

    def ff_wide(self, ff, sc, xmax: float) -> None:
        _apply_wide_ff(self.X, ff, sc)

    def attention(self, sa, segments, attention: str, temperature: float, stats) -> None:
        observe = None if stats is None else (lambda *a: record_margins(stats, *a))
        self.X = sa(self.X, segments, attention, temperature, observe=observe)


class Rational(Float):
    """Exact rationals: token states as a :class:`~exactformer.rational.QMatrix` (integer
    numerators over one denominator per row), screened by their float image (docs/exact.md)."""

    name = "exact rational"

    def convert(self, x) -> np.ndarray:
        return np.asarray(x)

    def model(self, model):
        return model if model.exact else model.as_exact()

    def begin(self, X) -> None:
        self.X = nm.exact_rows(X)

    def floats(self) -> np.ndarray:
        return self.X.floats()

    def ff_rows(self, ff, rows: np.ndarray) -> np.ndarray:
        """The layer's formula on ``rows`` (wide snaps summed by direction,
        :func:`exactformer.rational.units_by_direction`); returns the rows whose value
        changed (reduced rows: equal values have equal integers)."""
        X = self.X
        x = X[rows]
        new = ff(x)
        on = np.any(new.num != x.num, axis=1) | (new.den != x.den)
        r = rows[on]
        if len(r):
            X[r] = new[on]
        return r

    def ff_wide(self, ff, sc, xmax: float) -> None:
        _apply_wide_ff_exact(self.X, ff, xmax, sc)


class Interval(Float):
    """The float64 pass with a certified enclosure of the true state (module docstring)."""

    name = "interval"

    def begin(self, X: np.ndarray) -> None:
        super().begin(X)
        T, d = self.X.shape
        self.R = np.zeros((T, d))
        self.xi = None  # line part: |ξ| ≤ xi (T,), a ∈ A ± RA (T, d)
        self.A = self.RA = None
        self.blame = np.full(T, -1, dtype=np.int64)  # block of each row's largest growth
        self.growth = np.zeros(T)
        self.eff = np.zeros(T)  # max-norm radius of each row's enclosure (kept current)

    # -- bookkeeping -----------------------------------------------------------------------
    def effective(self, rows=None) -> np.ndarray:
        """Max-norm radius of each row's enclosure (box + line part), computed afresh."""
        sel = slice(None) if rows is None else rows
        eff = self.R[sel].max(axis=1) if self.R.shape[1] else np.zeros(len(self.R[sel]))
        if self.xi is not None:
            eff = eff + self.xi[sel] * (np.abs(self.A[sel]).max(axis=1) + self.RA[sel].max(axis=1))
        return eff

    def radii(self) -> np.ndarray:
        """Componentwise radius of every token's enclosure around ``X``."""
        R = self.R.copy()
        if self.xi is not None:
            R += self.xi[:, None] * (np.abs(self.A) + self.RA)
        return R * SAFE + TINY

    def _note(self, rows) -> None:
        """Refresh the rows' effective radius and remember the block where it grew most."""
        sel = np.arange(len(self.X)) if isinstance(rows, slice) else rows
        new = self.effective(rows)
        grew = new - self.eff[sel]
        self.eff[sel] = new
        more = grew > self.growth[sel]
        self.growth[sel[more]] = grew[more]
        self.blame[sel[more]] = self.block

    def _to_box(self) -> None:
        """Fold the line part into the box (before layers that mix or rescale tokens)."""
        if self.xi is not None:
            self.R = self.radii()
            self.xi = self.A = self.RA = None

    # -- feed-forward layers ---------------------------------------------------------------
    def ff_dense(self, ff) -> None:
        if float(ff.eta) == 0 and ff.width == 1:
            self._line_ff(ff)
        else:
            self._ff_on(ff, np.arange(len(self.X)))
        self._note(slice(None))

    def run_slack(self, ffs: list, xmax: float) -> np.ndarray:
        """The float screen's slack plus the enclosures' radii and the rounding of t."""
        n1 = np.array([float(np.abs(ff.U).sum(axis=1).max()) for ff in ffs])
        bmax = np.array([float(np.abs(ff.b).max()) for ff in ffs])
        self._rb = 2 * float(self.eff.max(initial=0.0)) + TINY  # rows may grow up to this
        self._xb = 2 * xmax
        d = self.X.shape[1]
        extra = n1 * self._rb + gamma(d + 2) * (n1 * self._xb + bmax)
        return (_slack(ffs, xmax) + extra) * SAFE

    def screen_holds(self, rows: np.ndarray) -> bool:
        return bool(self.eff[rows].max(initial=0.0) <= self._rb
                    and np.abs(self.X[rows]).max(initial=0.0) <= self._xb)

    def ff_rows(self, ff, rows: np.ndarray) -> np.ndarray:
        r = rows[self._ff_on(ff, rows)]
        self._note(r)
        return r

    def ff_wide(self, ff, sc, xmax: float) -> None:
        from .screen import chunks_above

        sc.pair_thr = sc.pair_thr - self.run_slack([ff], xmax)[0]
        sc.prepare()
        found = [r for r, _, _ in chunks_above(self.X, sc.cols, sc.col_thr)]
        rows = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
        if len(rows):
            self.ff_rows(ff, rows)

    def _line_ff(self, ff) -> None:
        """η = 0, width 1: the true output is exactly ``w·relu(p)`` — a line part."""
        rows = np.arange(len(self.X))
        x = self.X
        pre, rp, on, off, h, *_ = _pre_activations(ff, *_distinct_columns(ff), x, self.R,
                                                   self.xi, self.A, self.RA)
        w = ff.W[:, 0]
        y = ff(x)
        self.X = y
        self.xi = np.where(off[:, 0], 0.0, rp[:, 0]) * SAFE
        self.A = np.broadcast_to(w, y.shape).copy()
        self.RA = np.zeros_like(y)
        self.R = (np.abs(y - h[:, :1] * w) + U * np.abs(y)) * SAFE + TINY
        del rows, pre, on

    def _ff_on(self, ff, rows: np.ndarray) -> np.ndarray:
        """Apply ``ff`` to ``rows`` (mid and enclosure); returns which rows may have changed."""
        cols, cu = _distinct_columns(ff)
        if float(ff.eta) == 1 and len(cols):
            if len(cols) == 1:
                touched, mixed = self._one_direction(ff, cols[0], rows)
            else:
                touched, mixed = self._by_columns(ff, cols, cu, rows)
            if not len(mixed):
                return touched
            rest = np.zeros(len(rows), dtype=bool)
            rest[mixed] = True
            return touched | self._ff_units(ff, cols, cu, rows, rest)
        return self._ff_units(ff, cols, cu, rows, np.ones(len(rows), dtype=bool))

    def _rebalance(self, rows: np.ndarray) -> None:
        """Write the line part ξ·a of ``rows`` as (ξ·2^k)·(a/2^k), k per row bringing max|A|
        to ~1. Exact (powers of two) where every entry stays a normal float, else the row is
        left as it is. A layer with a large η (the last snap scaled back by 2^e, docs/limits.md)
        multiplies A: a long A (~1e199 beside ξ ~1e-135) overflowed to inf and the
        certificate failed for a correct model (inputs 1 beside targets 1e200)."""
        A, RA, xi = self.A[rows], self.RA[rows], self.xi[rows]
        big = np.abs(A).max(axis=1, initial=0.0)
        k = np.where(big > 1, np.frexp(big)[1], 0)
        As, RAs, xis = np.ldexp(A, -k[:, None]), np.ldexp(RA, -k[:, None]), np.ldexp(xi, k)
        tiny = np.finfo(np.float64).tiny
        normal = (np.all((A == 0) | (np.abs(As) >= tiny), axis=1)
                  & np.all((RA == 0) | (RAs >= tiny), axis=1)
                  & np.isfinite(xis) & ((xi == 0) | (xis >= tiny)))
        ok = np.flatnonzero(normal & (k > 0))
        if len(ok):
            at = np.asarray(rows)[ok]
            self.A[at], self.RA[at], self.xi[at] = As[ok], RAs[ok], xis[ok]

    def _one_direction(self, ff, c, rows):
        """An η = 1 layer whose units all read one direction c (snaps, point moves).

        For a row whose units are all decided, the on-units are those whose threshold lies
        below its ``t = ⟨c, x⟩``: a prefix in threshold order, so the layer is the affine map
        ``x + S_p·t + B_p`` with ``S_p = Σ W_u`` and ``B_p = Σ W_u b_u`` over the prefix,
        precomputed in double-double and rounded once. The steep weights cancel in these
        sums (a snap's S_p ≈ −c/|c|², a plateau's 0), so neither the mid nor its radius
        carries the rounding of the large terms. Returns (touched rows, rows with an
        undecided unit: those take the unit-by-unit formula).
        """
        tab = _prefix_table(ff)
        x, R = self.X[rows], self.R[rows]
        d = x.shape[1]
        ac = np.abs(c)
        t = x @ c
        et = gamma(d) * (np.abs(x) @ ac)
        rtR = R @ ac
        rt = rtR + et
        line = self.xi is not None
        if line:
            A, RA, xi = self.A[rows], self.RA[rows], self.xi[rows]
            tA = A @ c
            rt = rt + xi * (np.abs(tA) + RA @ ac + gamma(d) * (np.abs(A) @ ac))
        slack = (rt + U * np.abs(t)) * SAFE + TINY
        p_on = np.searchsorted(tab.key_on, t - slack, side="left")
        p_off = np.searchsorted(tab.key_off, t + slack, side="left")
        mixed = np.flatnonzero(p_on != p_off)
        touched = p_off > 0
        go = np.flatnonzero(touched & (p_on == p_off))
        if len(go):
            p = p_on[go]
            S, eS, B, eB = tab.S[p], tab.eS[p], tab.B[p], tab.eB[p]
            tg, xg = t[go], x[go]
            St = S * tg[:, None]
            y = xg + St
            y += B
            # radius: rounding (γ₃ of the three terms), the sums' own error, then what the
            # input's radius and the rounding of t do through S (fewest temporaries: this
            # runs on every token of a compact snap)
            R2 = np.abs(xg)
            R2 += np.abs(St)
            R2 += np.abs(B)
            R2 *= gamma(3)
            R2 += R[go]
            R2 += eB
            w = eS * np.abs(tg)[:, None]
            R2 += w
            spread = rtR[go] + et[go]
            if spread.any():
                np.abs(S, out=w)
                w += eS
                w *= spread[:, None]
                R2 += w
            R2 *= SAFE
            R2 += TINY
            r = rows[go]
            self.X[r], self.R[r] = y, R2
            if line:
                Ag, RAg, tAg = A[go], RA[go], tA[go]
                absS = np.abs(S) + eS
                SA = S * tAg[:, None]
                self.A[r] = Ag + SA
                self.RA[r] = (RAg + absS * ((RAg @ ac) + gamma(d) * (np.abs(Ag) @ ac))[:, None]
                              + eS * np.abs(tAg)[:, None]
                              + gamma(2) * (np.abs(Ag) + np.abs(SA))) * SAFE
        touched[mixed] = False
        return touched, mixed

    def _by_columns(self, ff, cols, cu, rows):
        """An η = 1 layer reading many directions (compact point moves), column by column.

        :meth:`_one_direction` per column: for a (row, column) pair whose units are all
        decided, the on-units of the column are a prefix p in its threshold order, so their
        sum is exactly ``S_p·t + B_p`` (double-double prefix sums, :class:`_PrefixTable`).
        A trapezoid's plateau has S_p ≈ 0: its steep weights (|W| up to ~1e7) cancel before
        rounding, where the unit-by-unit formula charged γ·Σ|h||W| to the radius. A row
        whose pairs are all decided is ``x + Σ_pairs (S_p·t + B_p)``; rows with an undecided
        pair are returned (second value) for the unit-by-unit formula, as in
        :meth:`_one_direction`. Returns (touched rows, rows with an undecided unit).
        """
        tab = _prefix_table(ff, cu)
        d = self.X.shape[1]
        C = len(cols)
        absc = np.abs(cols)
        touched = np.zeros(len(rows), dtype=bool)
        mixed = []
        line = self.xi is not None
        step = max(1, (1 << 20) // (C * max(d, 4)))
        for s0 in range(0, len(rows), step):
            rr = rows[s0:s0 + step]
            x, R = self.X[rr], self.R[rr]
            t = x @ cols.T
            et = gamma(d) * (np.abs(x) @ absc.T)  # rounding of t (any summation order)
            spread = R @ absc.T
            spread += et  # |⟨c, X + e⟩ − t| ≤ R·|c| + et: the box part of t's error
            rt = spread
            if line:
                A, RA, xi = self.A[rr], self.RA[rr], self.xi[rr]
                tA = A @ cols.T
                spreadA = RA @ absc.T + gamma(d) * (np.abs(A) @ absc.T)  # |⟨c, a⟩ − tA|
                rt = spread + xi[:, None] * (np.abs(tA) + spreadA)  # + |ξ⟨c, a⟩|
            slack = (rt + U * np.abs(t)) * SAFE + TINY
            # pairs that may have an on-unit (t + slack above the column's lowest key_off);
            # every other pair of these rows is proven off: it adds exactly 0
            ri, ci = np.nonzero(t + slack > tab.first_off)
            if not len(ri):
                continue
            tp, sp = t[ri, ci], slack[ri, ci]
            p_on = tab.count_below(tab.key_on, ci, tp - sp)  # units proven on: a prefix
            p_off = tab.count_below(tab.key_off, ci, tp + sp)  # units not proven off
            bad = np.zeros(len(rr), dtype=bool)
            bad[ri[p_on != p_off]] = True
            mixed.append(s0 + np.flatnonzero(bad))
            ok = ~bad[ri]
            ri, ci, tp = ri[ok], ci[ok], tp[ok]
            if not len(ri):
                continue
            j = tab.pstart[ci] + p_on[ok]
            S, eS, B, eB = tab.S[j], tab.eS[j], tab.B[j], tab.eB[j]
            first = np.flatnonzero(np.r_[True, ri[1:] != ri[:-1]])  # ri is sorted
            g = ri[first]
            k = np.diff(np.r_[first, len(ri)])  # pairs per row
            St = S * tp[:, None]
            v = St + B
            y = x[g] + np.add.reduceat(v, first, axis=0)
            # rounding: each pair's S·t (1) + B (1), k − 1 additions over the row's pairs in
            # any order, then + x (1): every term passes ≤ k + 2 roundings (γ_{k+2}); then
            # the prefix sums' own error (eS, eB) and what t's error does through
            # S_p + σ, |σ| ≤ eS: (S + σ)(t + τ) − S·t = S·τ + σ·t + σ·τ
            np.abs(St, out=St)
            St += np.abs(B)
            St *= gamma(k + 2)[np.repeat(np.arange(len(k)), k)][:, None]
            absS = np.abs(S) + eS
            St += eB
            St += eS * np.abs(tp)[:, None]
            St += absS * spread[ri, ci][:, None]
            Rn = R[g] + gamma(k + 2)[:, None] * np.abs(x[g]) + np.add.reduceat(St, first, axis=0)
            r = rr[g]
            self.X[r], self.R[r] = y, Rn * SAFE + TINY
            touched[s0 + g] = True
            if line:
                # the line part through the same affine map: a ↦ a + Σ (S_p + σ)·⟨c, a⟩,
                # ⟨c, a⟩ = tA + τA with |τA| ≤ spreadA; rounding γ_{k+2} as above
                tAp = tA[ri, ci]
                SA = S * tAp[:, None]
                Ag = A[g]
                self.A[r] = Ag + np.add.reduceat(SA, first, axis=0)
                eA = (absS * spreadA[ri, ci][:, None] + eS * np.abs(tAp)[:, None]
                      + gamma(k + 2)[np.repeat(np.arange(len(k)), k)][:, None] * np.abs(SA))
                self.RA[r] = (RA[g] + gamma(k + 2)[:, None] * np.abs(Ag)
                              + np.add.reduceat(eA, first, axis=0)) * SAFE
        mixed = np.concatenate(mixed) if mixed else np.zeros(0, dtype=np.int64)
        return touched, mixed

    def _ff_units(self, ff, cols, cu, rows: np.ndarray, which: np.ndarray) -> np.ndarray:
        """Unit by unit (module docstring) on ``rows[which]``; returns the touched mask."""
        touched = np.zeros(len(rows), dtype=bool)
        rows = rows[which]
        idx = np.flatnonzero(which)
        d = self.X.shape[1]
        step = max(1, (1 << 21) // max(1, ff.width * d))
        for s in range(0, len(rows), step):
            r = rows[s:s + step]
            line = self.xi is not None
            if line and abs(float(ff.eta)) > 1:
                self._rebalance(r)
            out = _ff_interval(ff, cols, cu, self.X[r], self.R[r],
                               self.xi[r] if line else None, self.A[r] if line else None,
                               self.RA[r] if line else None)
            y, R, A, RA, t = out
            self.X[r], self.R[r] = y, R
            if line:
                self.A[r], self.RA[r] = A, RA
            touched[idx[s:s + step]] = t
        return touched

    # -- attention -------------------------------------------------------------------------
    def attention(self, sa, segments, attention: str, temperature: float, stats) -> None:
        self._to_box()
        X, R = self.X, self.R
        d = X.shape[1]
        rho = float(sa.rho)
        aX = np.abs(X)
        line = rho == 0 and sa.V is None and sa.Vo.shape[1] == 1
        if sa.V is not None:
            VX = X @ sa.V.T
            rV = R @ np.abs(sa.V).T + gamma(d) * (aX @ np.abs(sa.V).T)
        else:
            L = X @ sa.Vi.T
            rL = (R @ np.abs(sa.Vi).T + gamma(d) * (aX @ np.abs(sa.Vi).T)) * SAFE
            VX = L @ sa.Vo.T
            rV = rL @ np.abs(sa.Vo).T + gamma(sa.Vo.shape[1]) * (np.abs(L) @ np.abs(sa.Vo).T)
        rV = rV * SAFE + TINY
        out = sa(X, segments, attention, temperature,
                 observe=self._observer(sa, segments, attention, temperature, stats, VX, rV,
                                        L if line else None, rL if line else None)
                 if not sa.uniform else None)
        counts = np.diff(segments)
        if sa.uniform:
            mean = _segment_mean(VX, segments)
            radm = _segment_mean(rV, segments) + gamma(int(counts.max(initial=1)) + 3) * \
                _segment_mean(np.abs(VX), segments)
            mbar = np.repeat(mean, counts, axis=0)
            radm = np.repeat(radm, counts, axis=0)
            lam = None
        else:
            mbar, radm, lam, lam_rad = self._mix
        if line:
            # true output = Vo·λ exactly: the line part carries λ's uncertainty
            vo = sa.Vo[:, 0]
            self.xi = lam_rad * SAFE + TINY
            self.A = np.broadcast_to(vo, out.shape).copy()
            self.RA = np.zeros_like(out)
            self.R = (np.abs(out - lam[:, None] * vo) + U * np.abs(out)
                      + gamma(int(counts.max(initial=1)) + 3) * self._lam_abs[:, None]
                      * np.abs(vo)) * SAFE + TINY
        else:
            rx = rho * X
            self.R = (abs(rho) * R + radm + np.abs(rx + mbar - out)
                      + gamma(3) * (np.abs(rx) + np.abs(mbar) + np.abs(out))) * SAFE + TINY
        self.X = out
        self._note(slice(None))

    def _observer(self, sa, segments, attention, tau, stats, VX, rV, L, rL):
        """Per bucket of equal-length sequences: the certified mix of every row.

        Sets ``self._mix = (m̄, radius of the true mix around m̄, λ̃, radius of λ)`` where m̄ is
        the mean value of the float argmax set (λ̃: the float mix of the line coordinate).
        """
        X, R = self.X, self.R
        T, d = X.shape
        h = sa.Q.shape[0]
        aQ, aK = np.abs(sa.Q), np.abs(sa.K)
        aX = np.abs(X)
        q, k = X @ sa.Q.T, X @ sa.K.T
        eq = ((R @ aQ.T + gamma(d) * (aX @ aQ.T)).sum(axis=1)) * SAFE  # ≥ ‖q − q̃‖₂
        ek = ((R @ aK.T + gamma(d) * (aX @ aK.T)).sum(axis=1)) * SAFE
        nq = np.sqrt((q * q).sum(axis=1)) * SAFE
        nk = np.sqrt((k * k).sum(axis=1)) * SAFE
        counts = np.diff(segments)
        kmax = np.repeat(np.maximum.reduceat(nk, segments[:-1]) if T else nk, counts)
        ekmax = np.repeat(np.maximum.reduceat(ek, segments[:-1]) if T else ek, counts)
        rs = (eq * (kmax + ekmax) + nq * ekmax + gamma(h + 1) * nq * kmax) * SAFE + TINY
        dv = VX.shape[1]
        mbar = np.zeros((T, dv))
        radm = np.zeros((T, dv))
        lam = np.zeros(T) if L is not None else None
        lam_rad = np.zeros(T) if L is not None else None
        self._lam_abs = np.zeros(T)
        self._mix = (mbar, radm, lam, lam_rad)
        buckets = iter(length_buckets(segments))
        softmax = attention == "softmax"
        cur = {"idx": None, "row": 0}  # a long sequence's bucket comes in query chunks

        def observe(scores, mask, values, P):
            if cur["idx"] is None or cur["row"] == cur["idx"].shape[1]:
                cur["idx"], cur["row"] = next(buckets), 0
            idx = cur["idx"]
            B, n = idx.shape
            rows = slice(cur["row"], cur["row"] + scores.shape[1])  # query rows of this call
            cur["row"] = rows.stop
            qidx = idx[:, rows]
            if stats is not None:
                record_margins(stats, scores, mask, values, P)
            top = scores.max(axis=2)
            r = rs[qidx]
            if softmax:  # S = every token whose true score may be the top: spread covers it
                mask = scores >= (top - 2 * r * SAFE)[..., None]
            second = np.where(mask, -np.inf, scores).max(axis=2)
            cnt = mask.sum(axis=2)
            span = np.maximum(top - second, 0.0) if n > 1 else np.full_like(top, np.inf)
            decided = span > 2 * r * SAFE
            mixes = [(VX, rV, mbar, radm)]
            if L is not None:
                mixes.append((L, rL, None, None))
            if softmax:
                gap_up = (second - top) + 2 * r  # ≥ true score gap to any token off S
                with np.errstate(invalid="ignore"):
                    z = np.where(np.isfinite(second), gap_up / tau, -np.inf)
                off = np.minimum(1.0, (n - cnt) * _exp_upper(z) * SAFE)
                if stats is not None:
                    stats["certified_leak"] = max(stats.get("certified_leak", 0.0),
                                                  float(off.max(initial=0.0)))
            for which, (vals, rvals, mb_out, rm_out) in enumerate(mixes):
                v = vals[idx]  # (B, n, k)
                rvv = rvals[idx]
                j0 = scores.argmax(axis=2)
                bi = np.arange(B)[:, None]
                m = v[bi, j0]  # argmax set of one: its value
                rad = rvv[bi, j0]
                multi = ~decided | (cnt > 1)
                if multi.any():
                    b_, i_ = np.nonzero(multi)
                    cand = scores[b_, i_] >= (top[b_, i_] - 2 * r[b_, i_] * SAFE)[:, None]
                    cand |= mask[b_, i_]
                    msk = mask[b_, i_]
                    mm = (msk[:, :, None] * v[b_]).sum(axis=1) / msk.sum(axis=1)[:, None]
                    spread = np.where(cand[:, :, None], np.abs(v[b_] - mm[:, None]) + rvv[b_],
                                      0.0).max(axis=1)
                    vmax = np.where(cand[:, :, None], np.abs(v[b_]), 0.0).max(axis=1)
                    m[b_, i_] = mm
                    rad[b_, i_] = spread + gamma(n + 2) * vmax
                if softmax:
                    # weight off the argmax set times the farthest value of the sequence
                    lo = (v - rvv).min(axis=1, keepdims=True)
                    hi = (v + rvv).max(axis=1, keepdims=True)
                    leak = off[..., None] * np.maximum(hi - m, m - lo)
                    # rows where a token off S keeps a real weight (a near-copy just below
                    # the top): bound token by token, Σ exp(Δ_j/τ)·|v_j − m| instead
                    b_, i_ = np.nonzero(off > 1e-9)
                    if len(b_):
                        zj = (scores[b_, i_] - (top[b_, i_] - 2 * r[b_, i_])[:, None]) / tau
                        wj = np.where(mask[b_, i_], 0.0, _exp_upper(zj) * SAFE)
                        dist = np.abs(v[b_] - m[b_, i_][:, None, :]) + rvv[b_]
                        leak[b_, i_] = np.minimum(leak[b_, i_],
                                                  np.einsum("rj,rjk->rk", wj, dist) * SAFE)
                    rad = rad + leak
                    if which == 1:
                        mix = np.matmul(P, v)  # the float mix of λ (centre of the line part)
                        rad = rad + np.abs(mix - m) + gamma(n + 2) * np.abs(v).max(axis=1,
                                                                                    keepdims=True)
                        m = mix
                if which == 0:
                    mb_out[qidx] = m
                    rm_out[qidx] = rad * SAFE
                else:
                    lam[qidx] = m[..., 0]
                    lam_rad[qidx] = rad[..., 0] * SAFE
                    self._lam_abs[qidx] = np.abs(v[..., 0]).max(axis=1, keepdims=True)

        return observe


def _segment_mean(V: np.ndarray, segments: np.ndarray) -> np.ndarray:
    if len(V) == 0:
        return V
    return np.add.reduceat(V, segments[:-1], axis=0) / np.diff(segments)[:, None]


def _distinct_columns(ff):
    """Distinct rows of U and the column of every unit (cached on the layer)."""
    cached = getattr(ff, "_columns", None)
    if cached is None or cached[0] is not ff.U:
        if len(ff.U) and (ff.U == ff.U[0]).all():
            cached = (ff.U, ff.U[:1], np.zeros(len(ff.U), dtype=np.int64))
        else:
            cols, cu = np.unique(ff.U, axis=0, return_inverse=True)
            cached = (ff.U, cols, cu.reshape(-1))
        try:
            ff._columns = cached
        except AttributeError:
            pass
    return cached[1], cached[2]


def _pre_activations(ff, cols, cu, x, R, xi, A, RA):
    """Pre-activations, their radius and the on/off/undecided split (module docstring)."""
    d = x.shape[1]
    absc = np.abs(cols)
    t = x @ cols.T
    et = gamma(d) * (np.abs(x) @ absc.T)  # rounding of t (any summation order)
    rtR = R @ absc.T
    rt = rtR + et
    tA = None
    if xi is not None:
        tA = A @ cols.T
        rt = rt + xi[:, None] * (np.abs(tA) + RA @ absc.T + gamma(d) * (np.abs(A) @ absc.T))
    pre = t[:, cu] + ff.b
    rp = (rt[:, cu] + U * np.abs(pre)) * SAFE + TINY
    on = pre - rp > 0
    off = pre + rp <= 0
    h = nm.relu(pre)
    return pre, rp, on, off, h, t, et, rtR, tA, absc


def _ff_interval(ff, cols, cu, x, R, xi, A, RA):
    """One FF on some rows in interval arithmetic: (mid, box radius, A, RA, touched)."""
    pre, rp, on, off, h, t, et, rtR, tA, absc = _pre_activations(ff, cols, cu, x, R, xi, A, RA)
    eta = float(ff.eta)
    W = ff.W
    absW = np.abs(W)
    und = ~(on | off)
    y = ff.eta * x + h @ W.T  # the layer's formula (η = 1, all off: x + 0 = x exactly)
    C = len(cols)
    # S_c = Σ W_u over the on-units of column c, per row: sparse (a row has few on-units
    # in a layer reading many directions), grouped by (row, column)
    ri, ui = np.nonzero(on)
    key = ri * C + cu[ui]
    order = np.argsort(key, kind="stable")
    ri, ui, key = ri[order], ui[order], key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else key
    Wp = W.T[ui]  # (pairs, d)
    S = np.add.reduceat(Wp, starts, axis=0) if len(key) else np.zeros((0, W.shape[0]))
    # rounding counts only the nonzero terms of a sum (adding an exact 0 is exact): the
    # units of a group, and a row's units with h ≠ 0 — a few out of the thousands of a
    # compact layer, whose γ_w made the radius ~1e3× too wide to decide a collapse
    n_terms = np.diff(np.r_[starts, len(key)]) if len(key) else np.zeros(0, dtype=np.int64)
    eS = gamma(n_terms)[:, None] * (np.add.reduceat(np.abs(Wp), starts, axis=0)
                                    if len(key) else S)
    g_row, g_col = ri[starts], cu[ui[starts]]
    absS = np.abs(S) + eS
    hW = h @ absW.T
    k = np.count_nonzero(h, axis=1)[:, None]
    Rn = (abs(eta) * R + (rp * und) @ absW.T + gamma(k + 2) * (abs(eta) * np.abs(x) + hW)
          + U * hW)
    if len(g_row):
        np.add.at(Rn, g_row, absS * (rtR + et)[g_row, g_col][:, None])
    Rn = Rn * SAFE + TINY
    An = RAn = None
    if xi is not None:
        An = eta * A
        g2 = gamma(np.bincount(g_row, minlength=len(x)) + 2)  # eta·A plus a row's groups
        RAn = abs(eta) * RA + g2[:, None] * abs(eta) * np.abs(A)
        if len(g_row):
            tAg = tA[g_row, g_col][:, None]
            np.add.at(An, g_row, S * tAg)
            spread = (RA @ absc.T + gamma(x.shape[1]) * (np.abs(A) @ absc.T))[g_row, g_col]
            np.add.at(RAn, g_row, absS * spread[:, None] + eS * np.abs(tAg)
                      + g2[g_row][:, None] * np.abs(S * tAg))
        RAn = RAn * SAFE
    touched = ~off.all(axis=1) if eta == 1 else np.ones(len(x), dtype=bool)
    if eta == 1 and not touched.all():  # rows with every unit off: exactly unchanged
        keep = ~touched
        Rn[keep] = R[keep]
        y[keep] = x[keep]
        if xi is not None:
            An[keep], RAn[keep] = A[keep], RA[keep]
    return y, Rn, An, RAn, touched


class _PrefixTable:
    """Per η = 1 layer: each column's units (``cu``: the column of every unit) in threshold
    order, with prefix sums of W and W·b in double-double (:func:`_dd_prefix`).

    Unit keys are flat, column by column (column c's units at ``ustart[c]:ustart[c+1]``);
    column c's prefix sums (0, 1, …, all of its units) at ``pstart[c] + p``.
    """

    def __init__(self, ff, cu):
        theta = -np.asarray(ff.b, dtype=np.float64)
        cu = np.asarray(cu, dtype=np.int64)
        order = np.lexsort((theta, cu))  # by column, then threshold (stable)
        th = theta[order]
        # unit u (in order) is on when t − slack > θ_u(1 + u), off when t + slack ≤ θ_u(1 − u)
        self.key_on = th + U * np.abs(th) * 2
        self.key_off = th - U * np.abs(th) * 2
        C = int(cu.max(initial=-1)) + 1
        self.ustart = np.searchsorted(cu[order], np.arange(C + 1))
        self.pstart = self.ustart[:-1] + np.arange(C)
        self.first_off = self.key_off[np.minimum(self.ustart[:-1], max(len(th) - 1, 0))]
        self.longest = int(np.diff(self.ustart).max(initial=0))
        Wt = np.ascontiguousarray(ff.W.T[order])  # (w, d)
        bt = np.asarray(ff.b, dtype=np.float64)[order][:, None]
        self.S, self.eS = _dd_prefix(Wt, np.zeros_like(Wt), np.abs(Wt), self.ustart)
        hi, lo = _two_product(Wt, np.broadcast_to(bt, Wt.shape))
        self.B, self.eB = _dd_prefix(hi, lo, np.abs(Wt) * np.abs(bt), self.ustart)

    def count_below(self, keys: np.ndarray, col: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Per pair: how many of column ``col``'s keys are < ``v`` (a binary search each)."""
        lo, hi = self.ustart[col], self.ustart[col + 1]
        base = lo
        last = len(keys) - 1
        for _ in range(self.longest.bit_length()):
            live = lo < hi
            mid = (lo + hi) >> 1
            right = live & (keys[np.minimum(mid, last)] < v)
            lo = np.where(right, mid + 1, lo)
            hi = np.where(live & ~right, mid, hi)
        return lo - base


def _prefix_table(ff, cu=None) -> _PrefixTable:
    """The layer's :class:`_PrefixTable` (cached); ``cu`` None: every unit in one column."""
    tab = getattr(ff, "_prefix", None)
    if tab is None or tab[0] is not ff.W or tab[1] is not ff.b or tab[2] is not ff.U:
        if cu is None:
            cu = np.zeros(len(ff.b), dtype=np.int64)
        tab = (ff.W, ff.b, ff.U, _PrefixTable(ff, cu))
        try:
            ff._prefix = tab
        except AttributeError:
            pass
    return tab[3]


def _two_product(a: np.ndarray, b: np.ndarray):
    """a·b = hi + lo exactly (Dekker's product; no overflow for |a|, |b| < 1e290)."""
    hi = a * b
    split = 134217729.0  # 2^27 + 1
    ca, cb = split * a, split * b
    a1 = ca - (ca - a)
    b1 = cb - (cb - b)
    a2, b2 = a - a1, b - b1
    lo = ((a1 * b1 - hi) + a1 * b2 + a2 * b1) + a2 * b2
    return hi, lo


def _dd_prefix(hi: np.ndarray, lo: np.ndarray, size: np.ndarray, starts: np.ndarray):
    """Per segment ``starts[c]:starts[c+1]`` of rows: prefix sums (0, x₀, x₀+x₁, …) of the
    exact values hi + lo, rounded to float64 (segment c's at ``starts[c] + c + p``).

    Returns (sums, bound on |exact − sum|): double-double accumulation (TwoSum) loses at
    most ~4u²·Σ|x| (bounded here by 8u²·Σ size + 2u²·Σ|x|), then one rounding u·|sum|.
    All segments advance together, longest first (the live ones are a leading slice).
    """
    k, d = hi.shape
    C = len(starts) - 1
    lens = np.diff(starts)
    by_len = np.argsort(-lens, kind="stable")
    src0 = starts[:-1][by_len]
    dst0 = (starts[:-1] + np.arange(C))[by_len]
    live = np.searchsorted(-lens[by_len], -np.arange(int(lens.max(initial=0))), side="left")
    out = np.zeros((k + C, d))
    err = np.zeros((k + C, d))
    s_hi = np.zeros((C, d))
    s_lo = np.zeros((C, d))
    acc = np.zeros((C, d))
    for i, n in enumerate(live):  # n segments have more than i rows
        src = src0[:n] + i
        a = hi[src]
        sh = s_hi[:n]
        s = sh + a
        bb = s - sh
        e = (sh - (s - bb)) + (a - bb)  # TwoSum: s_hi + a = s + e exactly
        sl = s_lo[:n] + (e + lo[src])
        sh = s + sl  # renormalise
        s_lo[:n] = sl - (sh - s)
        s_hi[:n] = sh
        acc[:n] += size[src] + np.abs(a)
        o = sh + s_lo[:n]
        dst = dst0[:n] + i + 1
        out[dst] = o
        err[dst] = U * np.abs(o) + 16 * U * U * acc[:n]
    return out, err * SAFE + TINY


_EXP_CACHE: dict[int, float] = {}


def _exp_upper(z: np.ndarray) -> np.ndarray:
    """Certified upper bounds of exp(z): exp(⌈16 z⌉/16) in arb ball arithmetic, rounded up."""
    out = np.zeros(z.shape)
    fin = np.isfinite(z)
    out[np.isposinf(z)] = np.inf
    if not fin.any():
        return out
    # clipped first: beyond ±800 the bound is inf / 5e-324 anyway, and a cast of z·16 above
    # 2^63 gives INT64_MIN (a bound of 5e-324 for exp of a huge z: unsound)
    k = np.ceil(np.clip(z[fin], -800.0, 800.0) * EXP_GRID).astype(np.int64)
    keys, inv = np.unique(k, return_inverse=True)
    vals = np.array([_exp_grid(int(key)) for key in keys])
    out[fin] = vals[inv.reshape(-1)]
    return out


def _exp_grid(key: int) -> float:
    if key not in _EXP_CACHE:
        if key > 700 * EXP_GRID:
            _EXP_CACHE[key] = math.inf
        elif key < -740 * EXP_GRID:
            _EXP_CACHE[key] = 5e-324  # exp < 1e-321: the smallest positive float is above it
        else:
            import flint

            ball = flint.arb(flint.fmpq(key, EXP_GRID)).exp()
            upper = float(ball.mid() + ball.rad())
            _EXP_CACHE[key] = math.nextafter(math.nextafter(upper, math.inf), math.inf)
    return _EXP_CACHE[key]
