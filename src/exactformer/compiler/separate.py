"""Pass 2 — shift into the positive orthant, separate sequences by means (docs/design.md §4 step 1).

The broadcast + classify step (:func:`~.geometry.broadcast_and_classify`) is shared with
pass 3 (split), which repeats it after every move.
"""

from __future__ import annotations

import numpy as np

from .. import numeric as nm
from ..craft import translate
from .geometry import broadcast_and_classify
from .state import ModelBuilder


def shift_and_separate(builder: ModelBuilder, rng: np.random.Generator) -> None:
    """Block 1: FF translation into the positive orthant, SA broadcast of the means."""
    st = builder.state
    if st.exact:  # short dyadics ≥ scale − min: coordinates end in [scale, ~3·scale]
        lo = st.floats().min(axis=0)  # min of the images = image of the min
        margin = 2 * np.finfo(np.float64).eps * (st.scale + np.abs(lo))
        shift = np.array([nm.dyadic_above(st.scale - a + m) for a, m in zip(lo, margin)],
                         dtype=object)
    else:
        lo = st.X.min(axis=0)
        shift = nm.like(st.scale, st.exact) - lo  # every coordinate ends in [scale, 3·scale]
    builder.add_ff(translate(shift), "translate")
    st.cls = np.zeros(st.n_sequences, dtype=np.int64)
    broadcast_and_classify(builder, rng)
