"""Reusable layer builders (docs/design.md §4): they know geometry, not datasets.

Each builder returns a :class:`~exactformer.model.FeedForward` or
:class:`~exactformer.model.SelfAttention` (or, for feed-forward pieces that are meant to
be stacked into one wide layer in compact mode, a :class:`Units` triple).
"""

from .layers import (
    Units,
    broadcast,
    collapse_layer,
    feed_forward,
    line_projection,
    point_move,
    snap,
    translate,
)

__all__ = [
    "Units",
    "broadcast",
    "collapse_layer",
    "feed_forward",
    "line_projection",
    "point_move",
    "snap",
    "translate",
]
