"""The embedded demo dataset: three sequences in R² that exercise every step of docs/design.md §4.

* sequences 0 and 2 have the same mean (1, 1) and share the tokens (0,0), (2,2), but their
  distributions differ ((1,1) only in sequence 2): the broadcast cannot tell them apart,
  so the compiler **splits** them with one extra point move;
* sequence 2 reads out two tokens with different targets: its second leader is a
  **satellite**;
* the target (1, 0) is **shared** by sequences 0, 1 and 2: one destination serves them all.
"""

from __future__ import annotations

import numpy as np

from .dataset import Dataset

DEMO_INPUTS = [
    [[0.0, 0.0], [2.0, 2.0]],
    [[3.0, 1.0], [1.0, 3.0], [3.0, 3.0]],
    [[2.0, 2.0], [1.0, 1.0], [0.0, 0.0]],
]
DEMO_TARGETS = [
    [[1.0, 0.0]],
    [[1.0, 0.0]],
    [[0.0, 1.0], [1.0, 0.0]],
]


def demo_dataset() -> Dataset:
    """The three-sequence demo dataset (target lengths 1, 1, 2)."""
    return Dataset.from_sequences([np.array(x) for x in DEMO_INPUTS],
                                  [np.array(y) for y in DEMO_TARGETS])
