"""What one pass of the compiler hands the next: plain data, no behaviour beyond lookups.

The passes (validate, separate, split, leaders, endgame, temperature) depend on these types,
on :mod:`.state` and on :mod:`.geometry` only, never on each other; ``compile()`` in
:mod:`exactformer.compiler` is the one place that knows their order (docs/design.md §4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Analysis:
    """What the construction needs to know about the data, by identity (pass 1, validate)."""

    segments: np.ndarray  # (N+1,) token offsets
    seq: np.ndarray  # (T,) sequence of each token
    value: np.ndarray  # (T,) original value id of each token
    group: np.ndarray  # (N,) id of the sequence's empirical distribution
    targets: np.ndarray  # (K, d) distinct target vectors
    target_ids: list[np.ndarray]  # per sequence, (m_j,) ids into ``targets``
    value_first: np.ndarray | None = None  # (V,) first token of each value id

    def prefix_tokens(self, j: int) -> np.ndarray:
        """Token indices of the first m_j tokens of sequence j (the read-out)."""
        return self.segments[j] + np.arange(len(self.target_ids[j]))


@dataclass
class Destinations:
    """Where every token goes in the collapse, by id (pass 4, leaders)."""

    A: np.ndarray  # (2, d) the collapse's query/key map
    token_dest: np.ndarray  # (T,) destination id of every token
    target: np.ndarray  # (n_dest,) target id of each destination
    pi: np.ndarray  # (n_dest, 2) destination in the plane (exact in exact mode)
    point: np.ndarray  # (n_dest, d) destination in R^d
    satellites: bool  # any satellite destinations (then the projection is not folded)
    moves: list  # (point id, destination id) of every leader that moves


@dataclass
class Line:
    """``λ(x) = α⟨v,x⟩ + β`` and the line direction ``w`` (docs/design.md §4 step 4)."""

    v: np.ndarray
    w: np.ndarray
    alpha: object
    beta: object
    folded: bool  # projection folded into the collapse (then β = 0)


@dataclass
class Cluster:
    """The tokens of one destination on the line: their interval ``[low, high]`` and target."""

    low: object
    high: object
    target: np.ndarray
