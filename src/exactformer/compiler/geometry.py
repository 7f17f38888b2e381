"""Helpers of the passes: close pairs, trapezoid gaps, generic draws (docs/design.md §4).

Also the generic broadcast that separates sequences by their means and refines their
classes (:func:`broadcast_and_classify`), used by pass 2 (separate) and pass 3 (split).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .. import numeric as nm
from ..craft import broadcast
from ..rational import QMatrix, rounding_bound
from ..screen import pairs_above
from ..tolerances import (
    COPY,
    DISTINCT,
    GAP_CAP,
    GOOD_GAP,
    ISOLATION,
    MIN_GAP,
    PROJECTION_KEEP,
)


def close_pairs(points: np.ndarray, delta: float, rng: np.random.Generator) -> np.ndarray:
    """All pairs ``(i, j)``, i < j, of rows closer than ``delta`` (Euclidean), as a (k, 2) array.

    Sort along a random direction and compare only neighbours within ``delta`` there:
    near-linear for well-spread points instead of the quadratic all-pairs check.
    """
    n = len(points)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    r = rng.standard_normal(points.shape[1])
    r /= np.linalg.norm(r)
    t = points @ r
    order = np.argsort(t, kind="stable")
    ts = t[order]
    reach = np.searchsorted(ts, ts + delta, side="right") - np.arange(n) - 1
    first = np.repeat(np.arange(n), reach)
    second = first + 1 + (np.arange(len(first)) - np.repeat(np.cumsum(reach) - reach, reach))
    i, j = order[first], order[second]
    near = np.linalg.norm(points[i] - points[j], axis=1) < delta
    pairs = np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1)[near]
    return pairs


def exact_duplicates(points: np.ndarray) -> np.ndarray:
    """Pairs ``(i, j)``, i < j, of exactly equal rows (exact mode: distinct means unequal)."""
    seen: dict = {}
    pairs = []
    rows = points.row_keys() if isinstance(points, QMatrix) else map(tuple, points)
    for i, row in enumerate(rows):
        if row in seen:
            pairs.append((seen[row], i))
        else:
            seen[row] = i
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def representatives(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique ids, index of the first token carrying each)."""
    uniq, first = np.unique(ids, return_index=True)
    return uniq, first


@dataclass
class Trapezoid:
    """Where a point sits along a direction: its centre, the free gap around it, top or not."""

    v: np.ndarray  # direction (float64 or Fractions)
    center: object
    gap: object
    top: bool
    rows: np.ndarray | None = None  # float mode: the only tokens a unit can touch (t > a) …
    t_rows: np.ndarray | None = None  # … and their coordinate t = ⟨v, x⟩
    quality: float = 1.0  # gap / spread of all tokens along v (rounding above scales as 1/it)


KEEP_ROWS = 4096  # a trapezoid keeps its candidate rows for the simulation up to this many


def trapezoid_along(t: np.ndarray, mine: np.ndarray, v: np.ndarray,
                    min_ratio: float = MIN_GAP, floor=None, spread=None) -> Trapezoid | None:
    """Gap around the tokens ``mine`` (indices of one point's copies) given ``t = X·v``.

    Returns None when the gap is tiny against the spread of all tokens along v, or when the
    copies are not much closer to each other than to everything else (then another
    direction is needed). Exact mode computes everything in rationals (a proof).
    ``floor``: ``t`` lists only the tokens above it (a screen, see :class:`CandidateScreen`);
    every other token is at most ``floor``. ``spread``: a bound on the spread of all tokens.
    """
    tm = t[mine]
    lo, hi = tm.min(), tm.max()
    if floor is not None and lo <= floor:
        return None
    below = t[t < lo]
    above = t[t > hi]
    if len(below) + len(above) + len(tm) < len(t):  # another point inside the copies' range
        return None
    gaps = ([lo - max(below.max(), floor) if floor is not None else lo - below.max()]
            if len(below) else ([lo - floor] if floor is not None else []))
    gaps += [above.min() - hi] if len(above) else []
    g = min(gaps) if gaps else (abs(hi) if hi != 0 else 1)
    if nm.is_exact(t):  # any positive gap is a proof in rationals
        return Trapezoid(v, (lo + hi) / 2, g, len(above) == 0) if g > 0 else None
    if spread is None:
        spread = float(max(hi, above.max() if len(above) else hi) -
                       min(lo, below.min() if len(below) else lo))
    if float(g) < min_ratio * spread or float(hi - lo) * ISOLATION > float(g):
        return None
    center = (lo + hi) / 2
    quality = float(g) / max(spread, 1e-300)
    rows = np.flatnonzero(t > center - g / 2)
    if len(rows) > KEEP_ROWS:  # many tokens above: recompute later rather than hold them
        return Trapezoid(v, center, g, len(above) == 0, quality=quality)
    return Trapezoid(v, center, g, len(above) == 0, rows, t[rows], quality)


def find_trapezoid(X: np.ndarray, mine: np.ndarray, v: np.ndarray,
                   min_ratio: float = MIN_GAP) -> Trapezoid | None:
    """:func:`trapezoid_along` the direction ``v`` (exact mode: :func:`exact_trapezoid`)."""
    if isinstance(X, QMatrix):
        tf = X.floats() @ nm.to_float(v)
        floor = float(tf[mine[0]]) - GAP_CAP * float(tf.max() - tf.min())
        return exact_trapezoid(X, mine, v, floor, np.arange(len(X)), tf)
    return trapezoid_along(X @ v, mine, v, min_ratio)


def _rational(v: np.ndarray) -> np.ndarray:
    """A short dyadic direction close to the float one (keeps exact weights small)."""
    return nm.to_exact(dyadic_direction(v))


def dyadic_direction(v: np.ndarray) -> np.ndarray:
    """``v`` rounded to multiples of 2⁻¹⁰: floats that are exactly the rationals used."""
    return np.round(np.asarray(v, dtype=np.float64) * 1024) / 1024


def screen_slack(X: QMatrix, v: np.ndarray, rows=None):
    """Bound on ``|⟨v, x⟩ − fl(⟨v, fl(x)⟩)|`` for a dyadic float ``v``: over all tokens, or
    per token of ``rows`` (an array)."""
    Xf = X.floats() if rows is None else X.floats()[rows]
    if rows is None:
        xmax = float(np.abs(Xf).max()) if len(Xf) else 0.0
    else:
        xmax = np.abs(Xf).max(axis=1) if len(Xf) else np.zeros(0)
    return rounding_bound(xmax, float(np.abs(v).sum()), X.shape[1])


def exact_trapezoid(X: QMatrix, mine: np.ndarray, v, floor: float, rows: np.ndarray,
                    t_rows: np.ndarray) -> Trapezoid | None:
    """Exact mode: the trapezoid of ``X[mine]`` along the dyadic direction ``v``, as a proof.

    ``rows`` must hold every token whose exact ``⟨v, x⟩`` may exceed ``floor``, ``t_rows``
    their float coordinates (a screen of the float image; tokens left out are below
    ``floor`` by a rounding bound). Only rows above ``floor`` minus that bound are computed
    exactly. The gap is capped by ``floor`` (see :func:`trapezoid_along`), then centre and
    gap are rounded to short dyadics that keep the copies on the plateau and every other
    token off the support; ``rows`` of the result are the tokens the layer can touch.
    """
    vf = nm.to_float(v)
    keep = t_rows > floor - 2 * screen_slack(X, vf, np.asarray(rows))
    cand = np.asarray(rows)[keep]
    at = np.searchsorted(cand, mine)
    if np.any(at >= len(cand)) or np.any(cand[np.minimum(at, len(cand) - 1)] != mine):
        return None
    v = nm.to_exact(vf)
    t = (X[cand] @ v.reshape(-1, 1)).to_fractions()[:, 0]
    trap = trapezoid_along(t, at, v, floor=Fraction(floor))
    if trap is None:
        return None
    tz = t[at[0]]
    if np.all(t[at] == tz):  # copies coincide (always, in exact mode): short numbers
        gap = nm.dyadic_below(trap.gap, 1)  # a power of two in (gap/2, gap]
        step = gap / 8
        trap.center, trap.gap = round(tz / step) * step, gap
    on = t > trap.center - trap.gap / 2
    trap.rows, trap.t_rows = cand[on], t[on]
    return trap


def first_choice(Z: np.ndarray, reference: np.ndarray, away: np.ndarray | None = None):
    """Unit directions ``z − reference`` with the components along ``away`` removed.

    ``away`` (k×d, orthonormal columns' transpose): directions the moves should not read.
    The leader moves pass the collapse plane and the mean, so every destination (least-norm
    points, in the plane's span) and the mean sit at one level t = 0 along v, far below a
    point z at the top. Where the projection vanishes (d ≤ 3) the plain ``z − reference``.
    """
    V = np.atleast_2d(Z - reference)
    if away is not None and len(away) < V.shape[1] - 1:
        P = V - (V @ away.T) @ away
        keep = np.linalg.norm(P, axis=1) > PROJECTION_KEEP * np.linalg.norm(V, axis=1)
        V = np.where(keep[:, None], P, V)
    norms = np.linalg.norm(V, axis=1)
    return V / np.where(norms > 0, norms, 1.0)[:, None], norms > 0


def choose_trapezoid(X: np.ndarray, mine: np.ndarray, rng: np.random.Generator,
                     reference: np.ndarray | None = None, tries: int = 32,
                     away: np.ndarray | None = None) -> Trapezoid:
    """A direction along which the point ``X[mine]`` is well isolated (docs/design.md §4).

    First ``z - reference`` (``reference``: a mean of the tokens; puts z near the top; see
    :func:`first_choice` for ``away``), then that direction tilted by growing random
    amounts (z stays near the top, so few tokens lie above the trapezoid), then random
    directions; in exact mode the direction is a simple rational close to the float one,
    so weights stay small. A gap ≥ GOOD_GAP ×
    spread is taken at once; otherwise the widest of several directions (at least MIN_GAP ×
    spread), since rounding on the tokens above a trapezoid grows like spread / gap.
    """
    exact = nm.is_exact(X)
    Xf = X.floats() if isinstance(X, QMatrix) else X
    z = Xf[mine].mean(axis=0)
    if reference is None:
        reference = Xf.mean(axis=0)
    best = None
    V, ok = first_choice(z, reference, away)
    first = V[0] if ok[0] else None
    for attempt in range(tries):
        if attempt == 0:
            v = first
        else:  # the first choice tilted more and more: z stays near the top for a while
            v = rng.standard_normal(X.shape[1]) / np.sqrt(X.shape[1])
            tilt = 0.05 * attempt
            if first is not None and attempt < tries // 2:
                v = first + tilt * v
                if away is not None and len(away) < len(v) - 1:
                    v = v - (away @ v) @ away
            v = v / np.linalg.norm(v)
        if v is None:
            continue
        trap = find_trapezoid(X, mine, _rational(v) if exact else v)
        if trap is not None and (exact or trap.quality >= GOOD_GAP):
            return trap
        if trap is not None and (best is None or trap.quality > best.quality):
            best = trap
        if best is not None and attempt >= 8:
            return best
    if best is not None:
        return best
    from ..errors import CompileError

    raise CompileError(f"could not isolate a point along any of {tries} directions: two points "
                       "are closer than float64 layers can separate (e.g. copies of one value "
                       "in sequences whose means differ by ~1e-8 × scale); this is a limit of "
                       "float64, not of the data: compile with --exact (docs/limits.md)")


class CandidateScreen:
    """The tokens that can matter for several points' trapezoids along their first choices.

    One chunked product ``X·Vᵀ`` for all the points' directions keeps, per point, only the
    tokens above ``t_z − G`` (G = GAP_CAP × a bound on the spread): its trapezoid (gap capped
    at G) can touch no other token, and on the outermost points (the leaders) that is a
    handful of tokens instead of a pass over all of them per point. Rows changed after the
    screen (earlier moves of strict mode) are passed to :meth:`find`, which re-projects them.
    """

    def __init__(self, X: np.ndarray, mines: list, V: np.ndarray, spread: float):
        self.mines, self.V, self.spread = mines, V, spread
        self.exact = isinstance(X, QMatrix)
        if self.exact:  # float image, dyadic directions; keep rows a rounding bound lower
            self.V = V = dyadic_direction(V)
            Xq, X = X, X.floats()
        tz = np.array([float(np.mean(X[m] @ v)) for m, v in zip(mines, V)])
        self.floor = tz - GAP_CAP * spread
        low = self.floor
        if self.exact:
            xmax = float(np.abs(X).max()) if len(X) else 0.0
            low = self.floor - 2 * rounding_bound(xmax, np.abs(V).sum(axis=1), Xq.shape[1])
        rows, cols, _ = pairs_above(X, V, low)
        order = np.argsort(cols, kind="stable")
        cuts = np.searchsorted(cols[order], np.arange(len(mines) + 1))
        self.rows = [np.sort(rows[order[cuts[i]:cuts[i + 1]]]) for i in range(len(mines))]

    def find(self, i: int, X: np.ndarray, changed: np.ndarray | None = None) -> Trapezoid | None:
        """The trapezoid of point ``i`` along its direction (None: look elsewhere)."""
        rows = self.rows[i]
        if changed is not None and len(changed):
            rows = np.union1d(rows, changed)
        if len(rows) == 0:
            return None
        if self.exact:
            return exact_trapezoid(X, self.mines[i], self.V[i], self.floor[i], rows,
                                   X.floats()[rows] @ self.V[i])
        mine = np.searchsorted(rows, self.mines[i])
        if np.any(mine >= len(rows)) or np.any(rows[np.minimum(mine, len(rows) - 1)]
                                               != self.mines[i]):
            return None
        t = X[rows] @ self.V[i]
        keep = t > self.floor[i]  # changed rows may have dropped below the floor
        if not keep[mine].all():
            return None
        rows, t = rows[keep], t[keep]
        mine = np.searchsorted(rows, self.mines[i])
        trap = trapezoid_along(t, mine, self.V[i], floor=self.floor[i], spread=self.spread)
        if trap is not None and trap.rows is not None:
            trap.rows = rows[trap.rows]
        elif trap is not None:  # more rows above than kept: still known here
            on = t > trap.center - trap.gap / 2
            trap.rows, trap.t_rows = rows[on], t[on]
        return trap


def spread_bound(X: np.ndarray, reference: np.ndarray, *more: np.ndarray) -> float:
    """2 × the largest distance from ``reference``: bounds every spread along a unit v."""
    r = max(float(np.max(np.linalg.norm(Y - reference, axis=1))) for Y in (X, *more) if len(Y))
    return 2 * r


def choose_trapezoids(X: np.ndarray, mines: list, rng: np.random.Generator,
                      reference: np.ndarray, away: np.ndarray | None = None) -> list[Trapezoid]:
    """:func:`choose_trapezoid` for many points that all read the same X (compact mode).

    The first-choice directions are screened together (:class:`CandidateScreen`); points
    not well isolated along theirs fall back to :func:`choose_trapezoid`.
    """
    if not mines:
        return []
    Xf = X.floats() if isinstance(X, QMatrix) else X
    Z = np.stack([Xf[m].mean(axis=0) for m in mines])
    V, ok = first_choice(Z, reference, away)
    screen = CandidateScreen(X, mines, V, spread_bound(Xf, reference))
    out: list[Trapezoid] = []
    for i, mine in enumerate(mines):
        trap = screen.find(i, X) if ok[i] else None
        good = trap is not None and (screen.exact or trap.quality >= GOOD_GAP)
        out.append(trap if good else choose_trapezoid(X, mine, rng, reference, away=away))
    return out


def generic_positive(rng: np.random.Generator, d: int, exact: bool, low=0.5, high=1.5):
    """A generic vector with entries in [low, high] (small-denominator rationals in exact mode)."""
    if exact:
        ks = rng.integers(int(low * 64), int(high * 64) + 1, size=d)
        return np.array([Fraction(int(k), 64) for k in ks], dtype=object)
    return rng.uniform(low, high, size=d)


def generic_unit(rng: np.random.Generator, d: int, exact: bool) -> np.ndarray:
    """A generic direction: unit float vector, or small nonzero rationals in exact mode."""
    if exact:
        k = rng.integers(1, 9, size=d) * rng.choice([-1, 1], size=d)
        return np.array([Fraction(int(v), 8) for v in k], dtype=object)
    v = rng.standard_normal(d)
    return v / np.linalg.norm(v)


def least_norm_point(A: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """``Aᵀ(AAᵀ)⁻¹π``: the smallest point of R^d with ``A·x = π`` (A is 2×d)."""
    G = A @ A.T
    a, b, c, d = G[0, 0], G[0, 1], G[1, 0], G[1, 1]
    det = a * d - b * c
    sol = np.array([(d * pi[0] - b * pi[1]) / det, (a * pi[1] - c * pi[0]) / det],
                   dtype=A.dtype)
    return A.T @ sol


def _components(n: int, rows, cols) -> np.ndarray:
    """Connected components of the undirected graph on n nodes with edges (rows, cols)."""
    if len(rows) == 0:  # no edges (typical: all means apart): skip importing scipy (slow)
        return np.arange(n)
    from scipy.sparse import coo_matrix  # imported here: keeps CLI start-up short
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _classes(st, means: np.ndarray, tol, rng) -> np.ndarray:
    """Sequences sharing a value and (almost) the same mean form one class.

    Classes only split: the old class is part of the key, so this refines ``st.cls``.
    Graph nodes: the sequences, then one per (old class, mean cluster, value), numbered in
    lexicographic order of that triple. The triple is packed into one int64 (the first two
    are per sequence, ranked first), so the sort is 1-D instead of np.unique(axis=0) on
    (T, 3) rows.
    """
    N = st.n_sequences
    if st.exact:
        pairs = exact_duplicates(means)
    else:
        pairs = close_pairs(means, tol, rng)
    clusters = _components(N, pairs[:, 0], pairs[:, 1])
    per_seq = st.cls.astype(np.int64) * (int(clusters.max()) + 1) + clusters
    per_seq = np.unique(per_seq, return_inverse=True)[1].ravel()  # rank of (cls, cluster) < N
    key = per_seq[st.seq] * (int(st.value.max()) + 1) + st.value  # < N·T
    _, node = np.unique(key, return_inverse=True)
    node = node.ravel()
    lo = np.full(node.max() + 1, N)
    hi = np.full(node.max() + 1, -1)
    np.minimum.at(lo, node, st.seq)
    np.maximum.at(hi, node, st.seq)
    if np.all(lo == hi):  # no value node shared by two sequences: every class is one sequence
        return np.arange(N)
    labels = _components(N + node.max() + 1, st.seq, N + node)
    return np.unique(labels[:N], return_inverse=True)[1].ravel()


def _outcome(st, layer, keys: np.ndarray, rng):
    """Simulate a broadcast: new tokens, their scale, the classes (sequences whose ``keys``
    coincide within COPY × scale and that share a value), each point's first token, and the
    pairs of points closer than DISTINCT."""
    X_new = layer(st.X, st.segments)
    scale = max(nm.max_abs(X_new), st.scale)
    cls = _classes(st, keys, COPY * scale, rng)
    saved = st.cls
    st.cls = cls
    pid = st.point_ids()
    st.cls = saved
    _, first = representatives(pid)
    return X_new, scale, cls, first, _close_points(st, X_new[first], rng)


def _close_points(st, points: np.ndarray, rng) -> np.ndarray:
    """Pairs of points closer than DISTINCT × the inputs' scale (exact: equal points).

    Relative to the state's scale, not to the shifted magnitudes (≈ 4 × scale after the
    shift and broadcast): inputs accepted at DISTINCT × scale stay accepted when the
    broadcast moves them together; half of it leaves room for rounding.
    """
    if st.exact:
        return exact_duplicates(points)
    return close_pairs(points, 0.5 * DISTINCT * st.scale, rng)


def _centred_broadcast(st, M: np.ndarray, means: np.ndarray, rng):
    """Uniform attention that moves sequence j by ``c·M·C·μ_j`` with ``C·p = 0``.

    ``C = I − p·wᵀ/⟨w, p⟩`` (p the mean of the sequence means, w generic positive) removes
    the part common to all means, so ``c`` can grow until the *differences* of the means
    are about half a scale: means 1e-8 × scale apart end ~scale/2 apart instead of 1e-8 ×
    scale (nm2_1e-07 in tests/data/repro). Tokens stay positive (moves ≤ scale/2 from
    coordinates ≥ scale). None when all means coincide.
    """
    means = nm.to_float(means)
    p = means.mean(axis=0)
    w = generic_positive(rng, st.d, False)
    C = np.eye(st.d) - np.outer(p, w) / float(w @ p)
    V0 = M @ C
    spread = nm.max_abs(means @ V0.T)
    if not spread > 0:
        return None
    return broadcast((0.5 * st.scale / spread) * V0)


def _merge(cls: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    rows, cols = zip(*pairs) if pairs else ((), ())
    labels = _components(cls.max() + 1, np.array(rows, dtype=np.int64),
                         np.array(cols, dtype=np.int64))
    return np.unique(labels[cls], return_inverse=True)[1].ravel()


def broadcast_and_classify(builder, rng: np.random.Generator,
                           tries: int = 8) -> None:
    """Uniform attention ``V = c·M`` (fresh generic positive M), then refine the classes.

    The reference construction uses a rank-one ``V = c·e·uᵀ`` (docs/design.md §4 step 1
    argues the change); then copies of one value in two
    sequences end ``c·|⟨u, μ_A − μ_B⟩|·|e|`` apart, and over N sequences the smallest such
    projection shrinks like 1/N² (seen: 1e-8 × scale at N = 1000 on data drawn from a small
    vocabulary), below what a trapezoid can isolate. A generic positive M of full rank
    (well conditioned: I plus a small positive matrix) separates them by ~c·|μ_A − μ_B|.

    Check: distinct values must end ≥ 1e-7 × scale apart, else the draw was unlucky: redraw.
    Copies of one value in different classes may come closer (nearly equal means): they stay
    distinct points down to 1e-9 × scale; closer copies are merged into one class, and step 2
    then separates them on purpose.
    """
    st = builder.state
    d = st.d
    for _ in range(tries):
        # exact mode divides by a power of two ≥ d: M stays dyadic (short numbers)
        M = generic_positive(rng, d * d, st.exact, low=0.0, high=0.5).reshape(d, d) / (
            1 << (d - 1).bit_length() if st.exact else d)
        M = M + np.eye(d, dtype=M.dtype) * nm.like(1, st.exact)
        means = nm.segment_means(st.X, st.segments)
        c = st.scale / max(nm.max_abs(means @ M.T), 1e-300)  # shifts of about one scale
        c = Fraction(2) ** round(np.log2(c)) if st.exact else c
        layer = broadcast(c * M)
        X_new, scale, cls, first, pairs = _outcome(st, layer, means if st.exact else
                                                   nm.to_float(means), rng)
        if len(pairs) and not st.exact:  # copies between COPY and DISTINCT: amplify the means
            centred = _centred_broadcast(st, M, means, rng)
            if centred is not None:  # classes by the (amplified) moves, not by the means
                moves = nm.to_float(means) @ nm.to_float(centred.value_matrix()).T
                out = _outcome(st, centred, moves, rng)
                if not len(out[-1]):
                    layer, (X_new, scale, cls, first, pairs) = centred, out
        same_value = st.value[first[pairs[:, 0]]] == st.value[first[pairs[:, 1]]]
        if np.all(same_value):
            if len(pairs):  # copies that cannot be told apart: one point, split later
                a, b = X_new[first[pairs[:, 0]]], X_new[first[pairs[:, 1]]]
                gap = np.max(np.abs(nm.to_float(a - b)), axis=1)
                seqs = st.seq[first[pairs[gap < COPY * scale]]]
                cls = _merge(cls, [(cls[a], cls[b]) for a, b in seqs])
            st.cls = cls
            builder.add_sa(layer, "broadcast", X_new=X_new)
            return
    from ..errors import CompileError

    raise CompileError(f"no generic broadcast separated the sequences in {tries} draws: "
                       "distinct tokens of different sequences end closer than float64 can "
                       "keep apart (1e-7 × scale); compile with --exact (docs/limits.md)")
