"""Pass 5 — project onto a line and snap every cluster onto its target (DESIGN.md §4 step 4).

After the collapse every token is a copy of its destination. A width-1 layer maps them onto
the line spanned by ``w``, just above the targets; then, from the highest cluster down,
one-sided ReLU layers send the whole half-line above a threshold onto a target. Lower
points (other clusters, finished outputs) have every ReLU exactly 0, so finished outputs
are never disturbed. Compact mode puts many clusters in one layer, split by an error budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .. import numeric as nm
from ..craft import line_projection, snap
from ..errors import CompileError
from .geometry import generic_unit
from .leaders import Destinations
from .state import ModelBuilder

EPS = float(np.finfo(np.float64).eps)
# compact mode: estimated relative rounding per snap layer. Another evaluation order (the
# torch twin's matmul) measured ~1.1× the numpy error: 2e-12 keeps both within 1e-12 of each
# other and 300× under the 1e-10 promise (N = 1000, 1000 targets: 13 snap layers, 3.5e-13).
SNAP_BUDGET = 2e-12


@dataclass
class Line:
    """``λ(x) = α⟨v,x⟩ + β`` and the line direction ``w`` (DESIGN.md §4 step 4)."""

    v: np.ndarray
    w: np.ndarray
    alpha: object
    beta: object
    folded: bool  # projection folded into the collapse (then β = 0)


def plan_line(dest: Destinations, targets: np.ndarray, scale: float, exact: bool, rng,
              fold: bool) -> Line:
    """Direction, scale and offset of the line; its points lie just above the targets.

    ``v = Aᵀ(cos φ, sin φ)`` with φ = -2·atan(1/5) ≈ -22.6° ∈ (-π/4, 0): the line coordinate
    is monotone along the main ray and along the satellite arc, so destinations stay spread.
    """
    t0 = Fraction(1, 5) if exact else 0.2
    direction = nm.asarray([(1 - t0 * t0) / (1 + t0 * t0), -2 * t0 / (1 + t0 * t0)], exact)
    v = dest.A.T @ direction
    sigma = dest.pi @ direction
    w = generic_unit(rng, dest.A.shape[1], exact)
    top = max(max(targets @ w), 0)
    sc = nm.like(scale, exact)
    if exact:
        sc = Fraction(sc).limit_denominator(1 << 20) + 1
    lo, hi = min(sigma), max(sigma)
    if fold:  # main ray only: every σ > 0, λ = α σ with β = 0
        alpha = (top + sc) / lo
        return Line(v, w, alpha, nm.like(0, exact), True)
    span = 2 * sc
    spacing = span / max(len(sigma), 1)
    alpha = span / (hi - lo) if hi != lo else nm.like(0, exact)
    beta = top + spacing - alpha * lo
    return Line(v, w, alpha, beta, False)


def project(builder: ModelBuilder, line: Line) -> None:
    builder.add_ff(line_projection(line.v, line.alpha, line.beta, line.w), "projection")


@dataclass
class Cluster:
    low: object
    high: object
    target: np.ndarray


def _clusters(builder: ModelBuilder, dest: Destinations, targets: np.ndarray,
              w: np.ndarray, widen: bool = False) -> tuple[list[Cluster], object]:
    """Line intervals of the destination clusters (ascending) and the highest target.

    ``widen``: the simulated positions are ideal (exact softmax); every interval is widened
    by 1/20 of the smallest spacing, far more than the softmax collapse can move a token.
    """
    st = builder.state
    s = st.X @ w
    order = np.argsort(dest.token_dest, kind="stable")
    ids, starts = np.unique(dest.token_dest[order], return_index=True)
    so = s[order]
    lows = np.minimum.reduceat(so, starts)
    highs = np.maximum.reduceat(so, starts)
    rank = np.argsort(nm.to_float(lows), kind="stable")
    top_target = max(targets @ w)
    if widen:
        levels = sorted([top_target] + list(lows))
        margin = min(b - a for a, b in zip(levels[:-1], levels[1:])) / 20
        lows, highs = lows - margin, highs + margin
    clusters = [Cluster(lows[i], highs[i], targets[dest.target[ids[i]]]) for i in rank]
    below = top_target
    for i, c in enumerate(clusters):
        gap = float(c.low - below)
        width = float(c.high - c.low)
        if gap <= 0 or (not st.exact and width > 0.05 * gap):
            which = "the targets" if i == 0 else "the next lower cluster"
            raise CompileError(
                f"internal: cluster {i} on the line (width {width:.3g}) is not well apart "
                f"from {which} (gap {gap:.3g})"
            )
        below = c.high
    return clusters, top_target


def _terms(w: np.ndarray, floor, pair: list[Cluster], s_top: float, units: slice) -> float:
    """Σ |W_u|·relu(pre_u) at the line point ``s_top`` for some units of a snap layer."""
    built = snap(w, floor, [(c.low, c.high, c.target) for c in pair], exact=False)
    pre = nm.relu(built.U[units] @ w * s_top / float(w @ w) + built.b[units])
    return float(np.sum(np.max(np.abs(built.W[:, units]), axis=0) * pre))


def _chunk_start(w, floors, clusters: list[Cluster], hi: int, budget: float) -> int:
    """Lowest cluster index of the compact snap layer that ends at cluster ``hi - 1``.

    First-order rounding estimate of the layer at its top point: eps · Σ |terms| (DESIGN.md
    §4 compact mode). Growing the layer downward by one cluster adds one ramp and moves the
    two head units, so the estimate is updated in O(1) per cluster.
    """
    s_top = float(clusters[hi - 1].high)
    lo, ramps = hi - 1, 0.0
    while lo > 0:
        ramp = _terms(w, floors[lo - 1], clusters[lo - 1:lo + 1], s_top, slice(2, 4))
        head = _terms(w, floors[lo - 1], clusters[lo - 1:lo], s_top, slice(0, 2))
        if EPS * (ramps + ramp + head) > budget:
            break
        ramps += ramp
        lo -= 1
    return lo


def snap_all(builder: ModelBuilder, dest: Destinations, targets: np.ndarray, line: Line,
             compact: bool, progress=None, widen: bool = False) -> int:
    """Snap layers from the highest cluster down; returns the number of snap layers."""
    st = builder.state
    clusters, top_target = _clusters(builder, dest, targets, line.w, widen)
    floors = [top_target] + [c.high for c in clusters[:-1]]
    chunks: list[tuple[int, int]] = []  # [i, j) cluster ranges, top chunk first
    hi = len(clusters)
    while hi > 0:
        if not compact:
            lo = hi - 1
        elif st.exact:  # no rounding: one layer
            lo = 0
        else:
            lo = _chunk_start(line.w, floors, clusters, hi, SNAP_BUDGET * st.scale)
        chunks.append((lo, hi))
        hi = lo
    for n, (lo, hi) in enumerate(chunks):
        group = [(c.low, c.high, c.target) for c in clusters[lo:hi]]
        builder.add_units([snap(line.w, floors[lo], group, st.exact)], "snap")
        if progress is not None and (n % 16 == 0 or n + 1 == len(chunks)):
            progress("snap", n + 1, len(chunks))
    return len(chunks)

