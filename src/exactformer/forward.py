"""The model's evaluator: the forward pass of :mod:`exactformer.model`, screened.

One forward pass for every arithmetic: float64 arrays, or object arrays of Fractions
(exact mode). It applies each layer's own formula (``FeedForward.__call__``,
``SelfAttention.__call__``), with one saving in float mode: an FF with η = 1 leaves every
row whose ReLUs are all off bit-for-bit unchanged, and the construction's FFs (point
moves, snaps) are active on a few tokens each. A run of consecutive such FFs is screened
once (:mod:`exactformer.screen`: one float32 product with the distinct rows of their U,
survivors recomputed in float64); each FF is then evaluated with its own formula on its
candidate rows only. Rows that an FF of the run changes are screened again for the FFs
after it (a stale screen never hides an active ReLU). A wide FF (compact mode) is a run by
itself and is evaluated unit by unit from the screen: its units read a few directions
each, and a token is above few of them. The plain dense formula (every layer on every
token) is the reference the tests compare against (docs/design.md §1).

Attention layers can report, per layer, the smallest relative score margin between a
token's argmax set and the distinct tokens (and for softmax the weight off the argmax
set): :func:`record_margins`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import numeric as nm
from .rational import QMatrix
from .screen import chunks_above
from .tolerances import MARGIN_COPY, SCREEN_SLACK


def length_buckets(segments: np.ndarray, max_entries: int = 2_000_000):
    """Index arrays ``(B, n)`` grouping sequences of equal length, in chunks of bounded size."""
    starts, lengths = segments[:-1], np.diff(segments)
    for n in np.unique(lengths):
        chosen = starts[lengths == n]
        step = max(1, max_entries // max(1, n * n))
        for c in range(0, len(chosen), step):
            s = chosen[c : c + step]
            yield s[:, None] + np.arange(n)[None, :]


def query_chunks(idx: np.ndarray, max_entries: int = 2_000_000):
    """Slices of the query positions of a bucket ``idx`` (B, n) with at most ``max_entries``
    scores each (B × rows × n): one sequence of 10⁵ tokens is attended 20 rows at a time
    (16 MB of scores) instead of as one 10⁵ × 10⁵ matrix (80 GB). Rows are independent, so
    the result is the same arithmetic (docs/limits.md)."""
    B, n = idx.shape
    rows = max(1, max_entries // max(1, B * n))
    for r in range(0, n, rows):
        yield slice(r, min(n, r + rows))


def attention_chunks(segments: np.ndarray):
    """``(keys, rows)`` in the order SelfAttention evaluates (and reports to ``observe``):
    ``keys`` a bucket (B, n) of :func:`length_buckets`, ``rows`` a slice of its query
    positions from :func:`query_chunks`; the queries are ``keys[:, rows]``."""
    for keys in length_buckets(segments):
        for rows in query_chunks(keys):
            yield keys, rows


def record_margins(stats, scores, mask, values, P) -> None:
    """Smallest relative score margin between a token's argmax set and the distinct tokens.

    docs/design.md §3: margins are measured between points meant to be distinct, so tokens whose
    value equals (to MARGIN_COPY = 1e-9 relative) the mean value of the argmax set are left out.

    The rival of a token is the best-scoring distinct token. For hardmax: the top score if a
    member of the argmax set is itself distinct (a tie: margin 0), else the best score
    outside the set if that token is distinct (then no lower score can be the rival), else
    (a near-copy just below the top, rare) the best over all distinct tokens of that row.
    This avoids a (B, n, n, d) distance array (1.3 GB per 10⁵ tokens).
    """
    s = nm.to_float(scores)
    v = nm.to_float(values)
    m = mask
    count = m.sum(axis=2, keepdims=True)
    target = (m.astype(np.float64) @ v) / count  # (B, n, dv): mean value of the argmax set
    scale_v = max(float(np.max(np.abs(v))) if v.size else 0.0, 1e-300)
    tol = MARGIN_COPY * scale_v
    scale_s = np.max(np.abs(s), axis=2)
    top = s.max(axis=2)
    B, n = s.shape[:2]

    def distinct_in(bi, ii):  # (rows, n): which tokens of these rows are distinct
        return np.max(np.abs(v[bi] - target[bi, ii][:, None, :]), axis=2) > tol

    if P is None:
        outside = np.where(m, -np.inf, s)
        j2 = outside.argmax(axis=2)  # (B, n): best token outside the argmax set
        second = np.take_along_axis(outside, j2[..., None], 2)[..., 0]
        v2 = v[np.arange(B)[:, None], j2]  # (B, n, dv)
        near_copy = np.max(np.abs(v2 - target), axis=2) <= tol
        rival = np.where(near_copy, -np.inf, second)
        bi, ii = np.nonzero(near_copy & np.isfinite(second))
        if len(bi):
            rival[bi, ii] = np.where(distinct_in(bi, ii), s[bi, ii], -np.inf).max(axis=1)
        bi, ii = np.nonzero(count[..., 0] > 1)  # a tie of distinct tokens has margin 0
        if len(bi):
            tie = (distinct_in(bi, ii) & m[bi, ii]).any(axis=1)
            rival[bi[tie], ii[tie]] = top[bi[tie], ii[tie]]
    else:
        dist = np.max(np.abs(v[:, None, :, :] - target[:, :, None, :]), axis=3)  # (B, n, n)
        distinct = dist > tol
        rival = np.where(distinct, s, -np.inf).max(axis=2)
    ok = np.isfinite(rival) & (scale_s > 0)
    if np.any(ok):
        margin = float(np.min((top[ok] - rival[ok]) / scale_s[ok]))
        stats["margin"] = min(stats.get("margin", np.inf), margin)
    if P is not None:
        leak = float(np.max(np.where(distinct, P, 0.0).sum(axis=2))) if P.size else 0.0
        stats["leak"] = max(stats.get("leak", 0.0), leak)



_RUN_FFS = 128  # FFs per screened run
_RUN_COLUMNS = 128  # distinct U rows per screened run
# units per run: an FF's candidates include the rows of the FFs before it in the run that
# read its direction (compact snaps: ~7000 rows each), so long runs of wide FFs hold a
# quadratic number of candidates (2.7 GB at 10⁶ tokens with 128 compact snaps in one run)
_RUN_UNITS = 1024
_DENSE_SHARE = 0.25  # wide FF: candidate rows with more active units than this go dense


def _sparse_ok(ff) -> bool:
    """η = 1: inactive rows are unchanged, so only active rows need the layer (any arithmetic)."""
    return ff.eta == 1 and ff.width > 0


def _ff_groups(blocks, single: bool = False) -> dict[int, list]:
    """Block index → run of FFs to apply there ([] for blocks applied by an earlier run).

    A run is consecutive blocks with sparse-ready FFs and no attention in between (the
    attention of a run's last block comes after the run), at most ``_RUN_FFS`` FFs with at
    most ``_RUN_UNITS`` units reading at most ``_RUN_COLUMNS`` distinct directions; an FF
    reading more (the compact point moves) forms a run by itself.
    ``single`` (tracing) makes every FF its own run so each layer's output can be recorded.
    """
    groups: dict[int, list] = {}
    run: list = []
    columns: set = set()
    units = 0
    for l, blk in enumerate(blocks):
        ok = blk.ff is not None and _sparse_ok(blk.ff)
        if ok:
            cols = {r.tobytes() for r in _float_image(blk.ff.U)}
            many = len(cols) > _RUN_COLUMNS
            full = (single or many or len(run) >= _RUN_FFS or units + blk.ff.width > _RUN_UNITS
                    or len(columns | cols) > _RUN_COLUMNS)
            if not run or full:
                run, columns, units = [], set(), 0
                groups[l] = run
            else:
                groups[l] = []
            run.append(blk.ff)
            columns |= cols
            units += blk.ff.width
            if many:
                run, columns, units = [], set(), 0
        if not ok or blk.sa is not None:
            run, columns, units = [], set(), 0
    return groups


class _Members:
    """Items grouped by an owner index (CSR layout): ``expand`` lists the items of owners."""

    def __init__(self, owner: np.ndarray, n_owners: int):
        self.order = np.argsort(owner, kind="stable")
        self.ptr = np.searchsorted(owner[self.order], np.arange(n_owners + 1))
        self.count = np.diff(self.ptr)

    def expand(self, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in ``owners``, item) for every item of every listed owner."""
        reps = self.count[owners]
        at = np.repeat(np.arange(len(owners)), reps)
        first = np.repeat(self.ptr[owners] - np.cumsum(reps) + reps, reps)
        return at, self.order[first + np.arange(len(at))]


@dataclass
class _Screen:
    """The distinct rows (columns) of some FFs' stacked U and who reads them.

    A unit k on column c is on where ``t_c > −b_k``. Per (FF, column) pair the lowest such
    threshold, per column the lowest over its pairs: a token below every column threshold
    has every ReLU off, and one product ``X·colsᵀ`` per token chunk finds the others.
    """

    cols: np.ndarray  # (C, d)
    col_of_unit: np.ndarray  # (units,)
    pair_ff: np.ndarray  # (P,) FF of each (FF, column) pair
    pair_col: np.ndarray  # (P,)
    pair_thr: np.ndarray  # (P,) lowest unit threshold of the pair (plus the caller's slack)

    @classmethod
    def of(cls, ffs: list) -> _Screen:
        Us = np.concatenate([_float_image(ff.U) for ff in ffs])
        cols, col_of_unit = np.unique(Us, axis=0, return_inverse=True)
        col_of_unit = col_of_unit.reshape(-1)
        ff_of_unit = np.repeat(np.arange(len(ffs)), [ff.width for ff in ffs])
        pairs, pair_of_unit = np.unique(ff_of_unit * len(cols) + col_of_unit,
                                        return_inverse=True)
        pair_of_unit = pair_of_unit.reshape(-1)
        pair_thr = np.full(len(pairs), np.inf)
        np.minimum.at(pair_thr, pair_of_unit, -np.concatenate([_float_image(ff.b) for ff in ffs]))
        return cls(cols, col_of_unit, pairs // len(cols), pairs % len(cols), pair_thr)

    def prepare(self) -> None:
        self.col_pairs = _Members(self.pair_col, len(self.cols))
        self.col_thr = np.full(len(self.cols), np.inf)
        np.minimum.at(self.col_thr, self.pair_col, self.pair_thr)

    def hits(self, r: np.ndarray, c: np.ndarray, t: np.ndarray):
        """(row, pair) for the pairs whose threshold a (row, column, t) hit exceeds."""
        at, pair = self.col_pairs.expand(c)
        keep = t[at] > self.pair_thr[pair]
        return r[at][keep], pair[keep]


def _float_image(a) -> np.ndarray:
    a = np.asarray(a)
    return nm.to_float(a) if a.dtype == object else a


def _apply_sparse_ffs(arith, ffs: list) -> None:
    """Apply consecutive η = 1 FFs to ``arith.X`` in place, touching only rows that may be active.

    ``arith`` is the arithmetic (:mod:`exactformer.arithmetic`): it evaluates an FF on the
    candidate rows and says how much slack the screen needs. The screens read the float
    image of the state (exact mode: a :class:`~exactformer.rational.QMatrix`); the slack is
    far above the distance between an exact pre-activation and its float64 evaluation
    (:func:`exactformer.rational.rounding_bound`), and in interval arithmetic it also
    covers the enclosures' radii, so a skipped row is exactly unchanged.
    """
    X = arith.X
    if len(X) == 0:
        return
    xmax = float(np.abs(arith.floats()).max())
    if not np.isfinite(xmax):  # let the reference formula propagate inf/nan
        for ff in ffs:
            arith.ff_dense(ff)
        return
    sc = _Screen.of(ffs)
    if len(ffs) == 1 and len(sc.cols) > _RUN_COLUMNS:
        arith.ff_wide(ffs[0], sc, xmax)
        return
    done = _apply_ff_run(arith, ffs, xmax, sc)
    if done < len(ffs):  # the arithmetic asked for a fresh screen (radii grew): the rest
        _apply_sparse_ffs(arith, ffs[done:])


def _slack(ffs: list, xmax: float) -> np.ndarray:
    """Per FF, a screen slack far above rounding (and the rationals' float images; a
    rational weight below 2⁻¹⁰⁷⁵ has image 0: ``d·2⁻¹⁰⁷⁰·xmax`` covers what it adds)."""
    n1 = np.array([float(np.abs(_float_image(ff.U)).sum(axis=1).max())
                   for ff in ffs])  # |U·Δ| ≤ n1·|Δ|∞
    bmax = np.array([float(np.abs(_float_image(ff.b)).max()) for ff in ffs])
    d = ffs[0].U.shape[1] if ffs else 0
    return SCREEN_SLACK * (n1 * xmax + bmax) + 1e-300 * (1 + n1) + d * 2.0 ** -1070 * xmax


def _apply_ff_run(arith, ffs: list, xmax: float, sc: _Screen) -> int:
    """A run of narrow FFs: one screen, then each FF's formula on its candidates.

    A row is skipped by FF g only when a screen (with the arithmetic's slack) proves all its
    pre-activations ≤ 0: the run's screen, or for a row that an earlier FF of the run
    changed, a new screen of that row right after the change. Then the formula leaves it
    unchanged, so results agree with the dense pass up to BLAS summation order (exactly,
    in exact mode). Returns the number of FFs applied (all, unless the arithmetic asks for
    a new screen).
    """
    X = arith.X
    Xf = arith.floats()  # kept in sync by the arithmetic's row updates
    delta = arith.run_slack(ffs, xmax)
    sc.pair_thr = sc.pair_thr - delta[sc.pair_ff]
    sc.prepare()
    found_rows, found_ff = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for r, c, t in chunks_above(Xf, sc.cols, sc.col_thr):
        r, pair = sc.hits(r, c, t)
        found_rows.append(r)
        found_ff.append(sc.pair_ff[pair])
    candidates = _Members(np.concatenate(found_ff), len(ffs))
    rows_all = np.concatenate(found_rows)
    pending: list[list] = [[] for _ in ffs]  # rows found by screens of changed rows
    changed = np.zeros(len(X), dtype=bool)  # rows an FF of the run changed: screened again
    for g, ff in enumerate(ffs):
        rows = rows_all[candidates.expand(np.array([g]))[1]]
        rows = np.unique(np.concatenate([rows[~changed[rows]], *pending[g]]))
        if len(rows) == 0:
            continue
        r = arith.ff_rows(ff, rows)
        if len(r) == 0:
            continue
        changed[r] = True
        if g + 1 < len(ffs):
            if not arith.screen_holds(r):
                return g + 1
            t = Xf[r] @ sc.cols.T  # changed rows: screened again for the FFs still to come
            i, c = np.nonzero(t > sc.col_thr)
            hit, pair = sc.hits(r[i], c, t[i, c])
            later = sc.pair_ff[pair] > g
            for h, rows_h in _by_owner(hit[later], sc.pair_ff[pair[later]]):
                pending[h].append(rows_h)
    return len(ffs)


def _by_owner(items: np.ndarray, owner: np.ndarray):
    """(owner, its items) for every owner present."""
    if len(items) == 0:
        return []
    o = np.argsort(owner, kind="stable")
    owners, starts = np.unique(owner[o], return_index=True)
    return zip(owners.tolist(), np.split(items[o], starts[1:]))


def _apply_wide_ff(X: np.ndarray, ff, sc: _Screen) -> None:
    """An η = 1 FF reading many directions (compact point moves), unit by unit.

    The screen gives the float64 ``t = ⟨x, c⟩`` of every (token, column) pair above the
    column's lowest threshold; unit k's pre-activation is ``t + b_k`` for its column (its U
    row *is* that column, so this is the layer's own formula with one product per distinct
    row of U). Only (token, unit) pairs with a positive pre-activation are summed, in unit
    order; every other pair is proven off by the screen. Rows where most units are on (a
    dense layer) take one dense product instead.
    """
    sc.prepare()
    units_of_col = _Members(sc.col_of_unit, len(sc.cols))
    WT = np.ascontiguousarray(ff.W.T)
    for r, c, t in chunks_above(X, sc.cols, sc.col_thr):
        at, units = units_of_col.expand(c)
        rr, pre = r[at], t[at] + ff.b[units]
        on = pre > 0
        rr, units, pre = rr[on], units[on], pre[on]
        if len(rr) == 0:
            continue
        key = np.lexsort((units, rr))  # per row, in unit order
        rr, units, pre = rr[key], units[key], pre[key]
        rows, first = np.unique(rr, return_index=True)
        if len(rr) > _DENSE_SHARE * len(rows) * ff.width:
            x = X[rows]
            X[rows] = x + nm.relu(x @ ff.U.T + ff.b) @ WT
            continue
        X[rows] += np.add.reduceat(pre[:, None] * WT[units], first, axis=0)


def _positive(a) -> np.ndarray:
    return a.positive() if isinstance(a, QMatrix) else a > 0


def _apply_wide_ff_exact(X: QMatrix, ff, xmax: float, sc: _Screen) -> None:
    """Exact mode's wide FF (compact point moves): its formula, exactly, per (row, direction)
    pair that the screen cannot rule out (:class:`exactformer.rational.DirectionTable`)."""
    from .rational import DirectionTable

    sc.pair_thr = sc.pair_thr - _slack([ff], xmax)[0]
    sc.prepare()
    table = DirectionTable(ff.U, ff.b, ff.W)
    link = np.unique(np.stack([sc.col_of_unit, table.col_of_unit], axis=1), axis=0)
    exact_of = _Members(link[:, 0], len(sc.cols))  # float column → its exact directions
    rows, cols = [], []
    for r, c, _ in chunks_above(X.floats(), sc.cols, sc.col_thr):
        at, k = exact_of.expand(c)
        rows.append(r[at])
        cols.append(link[k, 1])
    if rows:
        pairs = np.unique(np.stack([np.concatenate(rows), np.concatenate(cols)], axis=1), axis=0)
        if len(pairs):
            rr, sums = table.pair_sums(X, pairs[:, 0], pairs[:, 1])
            X[rr] = X[rr] + sums


def run(model, sequences, stats: list | None = None, trace: list | None = None,
        exact_rows: bool = False, progress=None, arithmetic=None) -> list:
    """Outputs of ``model`` for many sequences at once (concatenated internally).

    ``arithmetic`` (:mod:`exactformer.arithmetic`): ``None`` picks exact rationals when the
    model or an input is rational (a model with some rational tensors only is not exact and
    runs in floats), float64 otherwise; an :class:`~exactformer.arithmetic.Interval`
    keeps certified radii beside the float64 pass. Exact outputs are Fraction arrays, or
    with ``exact_rows`` one QMatrix per sequence.
    ``stats`` (a list) receives one dict per non-uniform attention layer with its score
    margin (and softmax leak); ``trace`` (a list) receives ``(name, states)`` after every
    layer, with every FF evaluated on its own (no runs).
    """
    from .arithmetic import Float, Rational

    if arithmetic is None:
        exact = model.exact or any(nm.is_exact(np.asarray(x)) for x in sequences)
        arithmetic = Rational() if exact else Float()
    arith = arithmetic
    xs = [arith.convert(x) for x in sequences]
    for j, x in enumerate(xs):
        if x.ndim != 2 or x.shape[1] != model.d:
            raise ValueError(f"sequence {j}: expected shape (n, {model.d}), got {x.shape}")
    lengths = np.array([len(x) for x in xs], dtype=np.int64)
    segments = np.concatenate([[0], np.cumsum(lengths)])
    model = arith.model(model)
    arith.begin(np.concatenate(xs) if xs else np.zeros((0, model.d)))
    if trace is not None:
        trace.append(("input", _snapshot(arith.X, trace)))
    groups = _ff_groups(model.blocks, single=trace is not None) if arith.screened else {}
    for l, blk in enumerate(model.blocks):
        arith.block = l
        if blk.ff is not None:
            if l not in groups:
                arith.ff_dense(blk.ff)
            elif groups[l]:  # first block of a run of sparse FFs: apply the whole run
                _apply_sparse_ffs(arith, groups[l])
            if trace is not None:
                trace.append((f"block {l} ff", _snapshot(arith.X, trace)))
        if blk.sa is not None:
            st = None
            if stats is not None and not blk.sa.uniform:
                st = {"block": l}
                stats.append(st)
            arith.attention(blk.sa, segments, model.attention, model.temperature, st)
            if trace is not None:
                trace.append((f"block {l} sa", _snapshot(arith.X, trace)))
        if progress is not None and ((l + 1) % 64 == 0 or l + 1 == len(model.blocks)):
            progress("verify", l + 1, len(model.blocks))
    arith.segments = segments
    X = arith.X
    if isinstance(X, QMatrix):
        if exact_rows:
            return [X[segments[j]:segments[j + 1]] for j in range(len(segments) - 1)]
        X = X.to_fractions()
    return np.split(X, segments[1:-1])


def _snapshot(X, trace) -> np.ndarray:
    """A copy of the states for ``trace``: Fractions in exact mode, or the QMatrix itself
    when the trace says ``exact_rows = True`` (integer rows compare ~100× faster)."""
    if isinstance(X, QMatrix):
        return X.copy() if getattr(trace, "exact_rows", False) else X.to_fractions()
    return X.copy()


@dataclass
class CertifiedRun:
    """Outputs of the float64 pass and the certified radius around each (docs/verification.md)."""

    outputs: list  # per sequence (n, d) float64
    radii: list  # per sequence (n, d): |true output − output| ≤ radius, componentwise
    blame: np.ndarray  # (T,) block where each token's enclosure grew most (-1: none)
    segments: np.ndarray

    def blame_block(self, sequence: int, token: int) -> int | None:
        b = int(self.blame[self.segments[sequence] + token])
        return None if b < 0 else b


def run_certified(model, sequences, stats: list | None = None, progress=None) -> CertifiedRun:
    """The float64 forward pass with a certified enclosure of the true outputs.

    The stored float64 weights and the inputs are rationals; the true outputs are those of
    exact real arithmetic (exp included). :class:`~exactformer.arithmetic.Interval`.
    """
    from .arithmetic import Interval

    arith = Interval()
    outputs = run(model, sequences, stats=stats, arithmetic=arith, progress=progress)
    radii = arith.radii()
    bad = ~np.all(np.isfinite(radii), axis=1) | ~np.all(np.isfinite(arith.X), axis=1)
    radii[bad] = np.inf
    return CertifiedRun(outputs, np.split(radii, arith.segments[1:-1]), arith.blame,
                        arith.segments)
