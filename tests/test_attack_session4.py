"""Hostile tests of session 4 (docs/limits.md, "Scales"): regressions found by attacking main."""

from __future__ import annotations

import numpy as np
import pytest

import exactformer as ef
from exactformer.model import Transformer


def _mixed_scales(inputs: float, targets: float) -> ef.Dataset:
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(int(rng.integers(1, 4)), 2)) * inputs for _ in range(4)]
    ys = [rng.normal(size=(int(rng.integers(1, len(x) + 1)), 2)) * targets for x in xs]
    return ef.Dataset.from_sequences(xs, ys)


@pytest.mark.parametrize("inputs, targets, attention, exact", [
    (1.0, 1e250, "hardmax", False),
    (1.0, 1e250, "softmax", False),
    (1.0, 1e250, "softmax", True),
    (1e-20, 1e150, "hardmax", False),
    (1e-150, 1e100, "softmax", False),
])
def test_inputs_far_below_targets_compile(tmp_path, inputs, targets, attention, exact):
    """Inputs 1 beside targets 1e250: dividing by the data's scale put the inputs at 1e-250,
    where scores underflow; every float and softmax compile ended in an internal error (exit 3:
    'the collapse missed its destinations', 'a token scores higher away from its destination').
    The inputs now stay above 2^-400 at the working scale."""
    ds = _mixed_scales(inputs, targets)
    model = ef.compile(ds, attention=attention, exact=exact)
    path = tmp_path / "m.safetensors"
    model.save(path)
    loaded = Transformer.load(path)
    assert ef.verify(loaded, ds).passed
    sm = sum(len(y) for y in ds.targets)
    assert loaded.n_blocks <= 2 * sm + ds.n_sequences + (1 if attention == "hardmax" else 2)


@pytest.mark.parametrize("inputs, targets", [(1e20, 3e-300), (3e300, 1e-20)])
@pytest.mark.parametrize("attention", ["hardmax", "softmax"])
def test_exact_targets_that_lose_bits_at_scale_one_refused(inputs, targets, attention):
    """Inputs 1e20 beside targets 3e-300 are divided by 2^67: the targets become subnormal and
    lose bits, so the exact model reproduced the rounded targets and failed its own exact
    verification in every draw (VerificationError, exit 1). Now refused, exit 2, by name."""
    ds = _mixed_scales(inputs, targets)
    with pytest.raises(ef.DatasetError, match="targets .* lose bits"):
        ef.compile(ds, attention=attention, exact=True)
