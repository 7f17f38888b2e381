"""Pass 5 — project onto a line and snap every cluster onto its target (docs/design.md §4 step 4).

After the collapse every token is a copy of its destination. A width-1 layer maps them onto
the line spanned by ``w``, just above the targets; then, from the highest cluster down,
one-sided ReLU layers send the whole half-line above a threshold onto a target. Lower
points (other clusters, finished outputs) have every ReLU exactly 0, so finished outputs
are never disturbed. Compact mode puts many clusters in one layer, split by an error budget.

The simulation of a snap layer touches only its own clusters' tokens (O(cluster), not
O(tokens) per layer): see :func:`snap_all` for why every other token is exactly unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .. import numeric as nm
from ..craft import line_projection, snap
from ..errors import InternalError
from ..tolerances import ISOLATION, LANDING, SNAP_BUDGET
from .geometry import generic_unit
from .state import ModelBuilder
from .types import Cluster, Destinations, Line

EPS = float(np.finfo(np.float64).eps)


def plan_line(dest: Destinations, targets: np.ndarray, scale: float, exact: bool, rng,
              fold: bool) -> Line:
    """Direction, scale and offset of the line; its points lie just above the targets.

    ``v = Aᵀ(cos φ, sin φ)`` with φ = -2·atan(1/5) ≈ -22.6° ∈ (-π/4, 0): the line coordinate
    is monotone along the main ray and along the satellite arc, so destinations stay spread.
    Exact mode takes short dyadics instead (docs/exact.md): the direction ``(1, -1/2)``
    (φ ≈ -26.6°), ``w`` with entries ±1, α and β rounded up to a few bits (α only grows
    the line's spacing, β only lifts it further above the targets).
    """
    if exact:
        direction = nm.asarray([1, Fraction(-1, 2)], exact)
        w = nm.asarray(rng.choice([-1, 1], size=dest.A.shape[1]), exact)  # |w|² = d ≥ 1
    else:
        t0 = 0.2
        direction = nm.asarray([(1 - t0 * t0) / (1 + t0 * t0), -2 * t0 / (1 + t0 * t0)], exact)
    v = dest.A.T @ direction
    sigma = dest.pi @ direction
    if not exact:
        w = generic_unit(rng, dest.A.shape[1], exact)
    top = max(max(targets @ w), 0)
    sc = nm.like(scale, exact)
    if exact:
        sc = (nm.dyadic_above(sc) if sc > 0 else 0) + 1
    lo, hi = min(sigma), max(sigma)
    if fold:  # main ray only: every σ > 0, λ = α σ with β = 0
        alpha = (top + sc) / lo
        alpha = nm.dyadic_above(alpha) if exact else alpha
        return Line(v, w, alpha, nm.like(0, exact), True)
    span = 2 * sc
    spacing = span / max(len(sigma), 1)
    alpha = span / (hi - lo) if hi != lo else nm.like(0, exact)
    if exact and alpha > 0:
        alpha = nm.dyadic_above(alpha)
    beta = top + spacing - alpha * lo
    if exact:
        beta = nm.dyadic_in(beta, beta + spacing / 2)
    return Line(v, w, alpha, beta, False)


def project(builder: ModelBuilder, line: Line) -> None:
    builder.add_ff(line_projection(line.v, line.alpha, line.beta, line.w), "projection")


def _clusters(builder: ModelBuilder, dest: Destinations, targets: np.ndarray,
              w: np.ndarray, widen: bool = False, s: np.ndarray | None = None
              ) -> tuple[list[Cluster], object, list[np.ndarray]]:
    """Line intervals of the destination clusters (ascending), the highest target, and the
    token indices of each cluster (same order).

    ``s``: the line coordinates ``X·w`` when the caller already has them.
    ``widen``: the simulated positions are ideal (exact softmax); every interval is widened
    by 1/ISOLATION of the smallest spacing, far more than the softmax collapse can move a token.
    """
    st = builder.state
    if s is None:
        s = st.X @ w
    order = np.argsort(dest.token_dest, kind="stable")
    ids, starts = np.unique(dest.token_dest[order], return_index=True)
    tokens = np.split(order, starts[1:])
    so = s[order]
    lows = np.minimum.reduceat(so, starts)
    highs = np.maximum.reduceat(so, starts)
    rank = np.argsort(nm.to_float(lows), kind="stable")
    top_target = max(targets @ w)
    if widen:
        levels = sorted([top_target] + list(lows))
        margin = min(b - a for a, b in zip(levels[:-1], levels[1:])) / ISOLATION
        lows, highs = lows - margin, highs + margin
    clusters = [Cluster(lows[i], highs[i], targets[dest.target[ids[i]]]) for i in rank]
    tokens = [tokens[i] for i in rank]
    below = top_target
    for i, c in enumerate(clusters):
        gap = float(c.low - below)
        width = float(c.high - c.low)
        if gap <= 0 or (not st.exact and width * ISOLATION > gap):
            which = "the targets" if i == 0 else "the next lower cluster"
            raise InternalError(
                f"internal: cluster {i} on the line (width {width:.3g}) is not well apart "
                f"from {which} (gap {gap:.3g})"
            )
        below = c.high
    return clusters, top_target, tokens


def _unit_costs(w: np.ndarray, floors: list, clusters: list[Cluster]) -> dict:
    """Per cluster, what the rounding estimate of a compact snap layer needs, for all at once.

    Head units of a layer whose lowest cluster is k (floor ``floors[k]``): thresholds
    ``b1, b2`` and ``max|c1|, max|c2|``; ramp from cluster k-1 to k: thresholds ``a, e`` and
    ``max|jump|``. Same float operations as :func:`~exactformer.craft.snap`, elementwise, so
    the values are bit-for-bit those of the built layers, without building one ``snap`` per
    cluster.
    """
    lows = np.array([c.low for c in clusters], dtype=np.float64)
    highs = np.array([c.high for c in clusters], dtype=np.float64)
    Y = np.stack([c.target for c in clusters]).astype(np.float64)
    fl = np.array(floors, dtype=np.float64)
    unit = w / (w @ w)
    b1 = fl + (lows - fl) / 3
    b2 = fl + 2 * (lows - fl) / 3
    c1 = (Y - b2[:, None] * unit) / (b2 - b1)[:, None]
    c2 = -unit - c1
    a = highs[:-1] + (lows[1:] - highs[:-1]) / 3
    e = highs[:-1] + 2 * (lows[1:] - highs[:-1]) / 3
    jump = (Y[1:] - Y[:-1]) / (e - a)[:, None]
    # ⟨U_u, w⟩ as the layer's rows compute it (head: rows 0-1 of 2, ramp: rows 2-3 of 4)
    qh = np.stack([w] * 2) @ w
    qr = np.stack([w] * 4)[2:4] @ w
    return {"b1": b1.tolist(), "b2": b2.tolist(), "h1": np.max(np.abs(c1), axis=1).tolist(),
            "h2": np.max(np.abs(c2), axis=1).tolist(), "a": [0.0] + a.tolist(),
            "e": [0.0] + e.tolist(), "r": [0.0] + np.max(np.abs(jump), axis=1).tolist(),
            "qh": qh.tolist(), "qr": qr.tolist(), "ww": float(w @ w)}


def _chunk_start(costs: dict, clusters: list[Cluster], hi: int, budget: float) -> int:
    """Lowest cluster index of the compact snap layer that ends at cluster ``hi - 1``.

    First-order rounding estimate of the layer at its top point: eps · Σ |W_u|·relu(pre_u)
    (docs/design.md §4 compact mode). Growing the layer downward by one cluster adds one ramp and
    moves the two head units, so the estimate is updated in O(1) per cluster.
    """
    s_top = float(clusters[hi - 1].high)
    (qh0, qh1), (qr0, qr1), ww = costs["qh"], costs["qr"], costs["ww"]
    lo, ramps = hi - 1, 0.0
    while lo > 0:
        k = lo - 1
        ramp = (costs["r"][lo] * max(qr0 * s_top / ww + -costs["a"][lo], 0.0)
                + costs["r"][lo] * max(qr1 * s_top / ww + -costs["e"][lo], 0.0))
        head = (costs["h1"][k] * max(qh0 * s_top / ww + -costs["b1"][k], 0.0)
                + costs["h2"][k] * max(qh1 * s_top / ww + -costs["b2"][k], 0.0))
        if EPS * (ramps + ramp + head) > budget:
            break
        ramps += ramp
        lo -= 1
    return lo


@dataclass
class _Rows:
    """Candidate rows of a snap layer and their coordinate ``t = ⟨w, x⟩`` (the units' U rows
    are all ``w``): the ``where`` of :meth:`ModelBuilder.add_units`."""

    rows: np.ndarray
    t_rows: np.ndarray


def snap_all(builder: ModelBuilder, dest: Destinations, targets: np.ndarray, line: Line,
             compact: bool, progress=None, widen: bool = False) -> int:
    """Snap layers from the highest cluster down; returns the number of snap layers.

    Each layer is simulated on its own clusters' tokens only (docs/design.md §4 step 4),
    with ``s = X·w`` computed once. Every other token has all ReLUs exactly 0, so ``x + 0``
    leaves it bit-for-bit unchanged:

    * lower clusters (not yet snapped) still sit on the line at ``s ≤ floor``, and every
      threshold of the layer is above ``floor`` by at least a third of the gap (this holds
      by construction: the intervals come from the same ``s``);
    * higher clusters were snapped onto targets, at ``s ≈ ⟨w, y⟩ ≤ top target``, below the
      lowest threshold of every snap layer (``floor₀ + gap₀/3``).

    The second point depends on the rounding of the earlier snaps. One pass ``X·w`` at the
    end checks it: every token must end below halfway to the lowest threshold. Tokens of a
    cluster are untouched until their own layer, so the precomputed ``s`` is still exact there.
    In exact mode there is no rounding and the argument is a proof: no check is needed.
    """
    st = builder.state
    if st.exact:
        s = (st.X @ line.w.reshape(-1, 1)).to_fractions()[:, 0]
    else:
        s = st.X @ line.w
    clusters, top_target, tokens = _clusters(builder, dest, targets, line.w, widen, s)
    floors = [top_target] + [c.high for c in clusters[:-1]]
    chunks: list[tuple[int, int]] = []  # [i, j) cluster ranges, top chunk first
    hi = len(clusters)
    out_scale = max(st.scale, nm.max_abs(targets))  # outputs may lie far from the inputs
    # exact mode has no rounding, but one layer for all clusters costs tokens × clusters:
    # it takes the float mode's layers (the same block count), from float images
    costs = _unit_costs(nm.to_float(line.w), [float(f) for f in floors],
                        clusters) if compact and hi else None
    while hi > 0:
        if not compact:
            lo = hi - 1
        else:
            lo = _chunk_start(costs, clusters, hi, SNAP_BUDGET * out_scale)
        chunks.append((lo, hi))
        hi = lo
    for n, (lo, hi) in enumerate(chunks):
        group = [(c.low, c.high, c.target) for c in clusters[lo:hi]]
        rows = tokens[lo] if hi == lo + 1 else np.concatenate(tokens[lo:hi])
        builder.add_units([snap(line.w, floors[lo], group, st.exact)], "snap",
                          [_Rows(rows, s[rows])])
        if progress is not None and (n % 16 == 0 or n + 1 == len(chunks)):
            progress("snap", n + 1, len(chunks))
    if not st.exact and clusters:
        _check_landed(st.X @ line.w, top_target, clusters[0].low)
    return len(chunks)


def _check_landed(s: np.ndarray, top_target, low0) -> None:
    """Every token ended below every snap threshold, with room for another rounding order.

    The lowest threshold of all snap layers is ``top + (low₀ − top)/3``; require
    ``s < top + (low₀ − top)/LANDING`` (a sixth), so every skipped ReLU was off by a sixth
    of a gap at least.
    """
    limit = top_target + (low0 - top_target) / LANDING
    worst = int(np.argmax(s))
    if s[worst] >= limit:
        raise InternalError(
            f"internal: token {worst} ended at {s[worst]:.17g} on the line, above the snap "
            f"limit {limit:.17g} (a snap layer missed it)"
        )
