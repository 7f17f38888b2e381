"""Pass 3 — split classes whose members differ (docs/design.md §4 step 2).

Rare on real data: a class holds sequences that share points and have equal means. While
two members have different empirical distributions, move a value whose proportion differs
between them (one point move), and broadcast again in the same block: the means now
differ, and the class splits. Compact mode moves one value per class in one wide layer.
"""

from __future__ import annotations

import numpy as np

from .. import numeric as nm
from ..craft import point_move
from ..errors import InternalError
from .geometry import broadcast_and_classify, choose_trapezoid, generic_positive
from .state import ModelBuilder
from .types import Analysis


def _distinguishing_value(st, analysis: Analysis, members: np.ndarray) -> int:
    """A value id whose proportion differs most across the class's groups."""
    mask = np.isin(st.seq, members)
    seqs, vals = st.seq[mask], st.value[mask]
    lengths = np.diff(st.segments)
    best, best_count = -1, 1
    for v in np.unique(vals):
        props = {}
        for j in members:
            g = int(analysis.group[j])
            props.setdefault(g, np.count_nonzero((seqs == j) & (vals == v)) / lengths[j])
        n_distinct = len(set(props.values()))
        if n_distinct > best_count:
            best, best_count = int(v), n_distinct
    return best


def _mixed_classes(cls: np.ndarray, group: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``(class, member sequences)`` of every class holding more than one group, ascending.

    Sorts once instead of one O(N) scan per class.
    """
    key = cls.astype(np.int64) * (int(group.max()) + 1) + group
    pair_cls = np.unique(key) // (int(group.max()) + 1)  # one entry per (class, group)
    mixed = np.unique(pair_cls[1:][pair_cls[1:] == pair_cls[:-1]])
    if not len(mixed):
        return []
    order = np.argsort(cls, kind="stable")  # members in increasing order
    sorted_cls = cls[order]
    lo = np.searchsorted(sorted_cls, mixed, side="left")
    hi = np.searchsorted(sorted_cls, mixed, side="right")
    return [(c, order[a:b]) for c, a, b in zip(mixed, lo, hi)]


def split_classes(builder: ModelBuilder, analysis: Analysis, rng: np.random.Generator,
                  compact: bool, progress=None) -> int:
    """Refine classes until each holds one group; returns the number of split rounds."""
    st = builder.state
    rounds = 0
    while True:
        todo = _mixed_classes(st.cls, analysis.group)
        if not todo:
            return rounds
        if rounds > st.n_sequences + 4:
            raise InternalError("internal: splitting sequences with equal means did not converge")
        if not compact:
            todo = todo[:1]
        pid = st.point_ids()
        units, traps = [], []
        for c, members in todo:
            v = _distinguishing_value(st, analysis, members)
            mine_token = np.flatnonzero((st.cls[st.seq] == c) & (st.value == v))[0]
            mine = np.flatnonzero(pid == pid[mine_token])
            trap = choose_trapezoid(st.X, mine, rng)
            size = nm.dyadic_above(st.scale) if st.exact else st.scale  # short in exact mode
            delta = generic_positive(rng, st.d, st.exact) * size
            units.append(point_move(trap.v, trap.center, trap.gap, delta, trap.top))
            traps.append(trap)
        builder.add_units(units, "split move", traps)
        broadcast_and_classify(builder, rng)
        rounds += 1
        if progress is not None:
            progress("split", rounds, None)
