"""Pass 2 — shift into the positive orthant, separate sequences by their means (DESIGN.md §4.1).

Also home of the broadcast + classify step that pass 3 (split) repeats after every move.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .. import numeric as nm
from ..craft import broadcast, translate
from ..errors import CompileError
from .geometry import (
    close_pairs,
    exact_duplicates,
    generic_positive,
    representatives,
    scalar_clusters,
)
from .state import ModelBuilder, TokenState

CLASS_TOL = 1e-9  # broadcast scalars this close (× scale) count as equal
DISTINCT_TOL = 1e-7  # distinct points must be this far apart (× scale)


def shift_and_separate(builder: ModelBuilder, rng: np.random.Generator) -> None:
    """Block 1: FF translation into the positive orthant, SA broadcast of the means."""
    st = builder.state
    lo = st.X.min(axis=0)
    shift = nm.like(st.scale, st.exact) - lo  # every coordinate ends in [scale, 3·scale]
    builder.add_ff(translate(shift), "translate")
    st.cls = np.zeros(st.n_sequences, dtype=np.int64)
    broadcast_and_classify(builder, rng)


def _classes(st: TokenState, scalars: np.ndarray, tol) -> np.ndarray:
    """Sequences sharing a point and (almost) the same broadcast scalar form one class.

    Classes only split: the old class is part of the key, so this refines ``st.cls``.
    """
    N = st.n_sequences
    clusters = scalar_clusters(scalars, tol)
    key = np.stack([st.cls[st.seq], clusters[st.seq], st.value], axis=1)
    _, node = np.unique(key, axis=0, return_inverse=True)
    node = node.ravel()
    graph = coo_matrix((np.ones(len(node)), (st.seq, N + node)), shape=(N + node.max() + 1,) * 2)
    _, labels = connected_components(graph, directed=False)
    return np.unique(labels[:N], return_inverse=True)[1].ravel()


def _merge(cls: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    n = cls.max() + 1
    rows, cols = zip(*pairs) if pairs else ((), ())
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return np.unique(labels[cls], return_inverse=True)[1].ravel()


def broadcast_and_classify(builder: ModelBuilder, rng: np.random.Generator,
                           tries: int = 8) -> None:
    """Uniform attention ``V = c·e·uᵀ`` (fresh generic c, u, e), then refine the classes.

    Check (DESIGN.md §4 step 1): distinct points — (class, original value) ids — must be
    ≥ 1e-7 × scale apart. Copies of one value that end up too close across classes are
    merged into one class (step 2 then separates them on purpose); any other near pair
    means an unlucky draw: redraw.
    """
    st = builder.state
    d = st.d
    counts = np.diff(st.segments)
    for _ in range(tries):
        u = generic_positive(rng, d, st.exact)
        e = generic_positive(rng, d, st.exact)
        means = np.add.reduceat(st.X, st.segments[:-1], axis=0) * nm.reciprocal_counts(
            counts, st.exact)[:, None]
        mu = means @ u
        c = st.scale / max(nm.max_abs(mu) * nm.norm(e), 1e-300)
        c = Fraction(c).limit_denominator(1 << 20) if st.exact else c
        layer = broadcast(c, e, u)
        X_new = layer(st.X, st.segments)
        scale = max(nm.max_abs(X_new), st.scale)
        # exact mode: equal means are exactly equal, and distinct points exactly distinct
        cls = _classes(st, c * mu, 0 if st.exact else CLASS_TOL * scale)
        saved = st.cls
        st.cls = cls
        pid = st.point_ids()
        st.cls = saved
        _, first = representatives(pid)
        if st.exact:
            pairs = exact_duplicates(X_new[first])
        else:
            pairs = close_pairs(X_new[first], DISTINCT_TOL * scale, rng)
        same_value = st.value[first[pairs[:, 0]]] == st.value[first[pairs[:, 1]]]
        if np.all(same_value):
            if len(pairs):
                seqs = st.seq[first[pairs]]
                cls = _merge(cls, [(cls[a], cls[b]) for a, b in seqs])
            st.cls = cls
            builder.add_sa(layer, "broadcast", X_new=X_new)
            return
    raise CompileError(f"no generic broadcast separated the sequences in {tries} draws "
                       "(distinct tokens closer than 1e-7 × scale?)")
