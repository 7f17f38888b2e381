"""Activation traces (exactformer.trace) for numpy and torch models (issue 5)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import exactformer as ef  # noqa: E402
from exactformer.model import Block, FeedForward, SelfAttention, Transformer  # noqa: E402
from exactformer.torch import TorchTransformer  # noqa: E402
from exactformer.trace import trace  # noqa: E402


def model_with_gaps(attention="hardmax") -> Transformer:
    """Block 0: FF only; block 1: SA only (factor V); block 2: both (uniform SA)."""
    rng = np.random.default_rng(0)
    d = 3
    ff = FeedForward(rng.normal(size=(2, d)), rng.normal(size=2), rng.normal(size=(d, 2)), 1.0)
    sa = SelfAttention(rng.normal(size=(2, d)), rng.normal(size=(2, d)),
                       Vo=rng.normal(size=(d, 1)), Vi=rng.normal(size=(1, d)), rho=0.5)
    uni = SelfAttention(np.zeros((0, d)), np.zeros((0, d)), V=np.eye(d), rho=0.0)
    blocks = [Block(ff, None, "shift"), Block(None, sa, "mix"), Block(ff, uni, "broadcast")]
    return Transformer(blocks, d, attention, 0.5)


def test_labels_and_kinds():
    model = model_with_gaps()
    X = np.random.default_rng(1).normal(size=(4, 3))
    steps = trace(model, X)
    assert [s.label for s in steps] == ["input", "block 0 ff", "block 1 sa", "block 2 ff",
                                        "block 2 sa"]
    assert [(s.block, s.layer, s.kind) for s in steps] == [
        (None, "input", ""), (0, "ff", "shift"), (1, "sa", "mix"), (2, "ff", "broadcast"),
        (2, "sa", "broadcast")]
    assert np.array_equal(steps[0].states, X)
    assert np.array_equal(steps[-1].states, model(X))
    # each state is the previous one pushed through that layer
    assert np.array_equal(steps[1].states, model.blocks[0].ff(X))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), lengths=st.lists(st.integers(1, 6), min_size=1,
                                                          max_size=4),
       attention=st.sampled_from(["hardmax", "softmax"]))
def test_numpy_and_torch_traces_agree(seed, lengths, attention):
    model = model_with_gaps(attention)
    rng = np.random.default_rng(seed)
    seqs = [rng.normal(size=(n, 3)) for n in lengths]
    a = trace(model, seqs)
    b = trace(TorchTransformer.from_model(model), seqs)
    assert [(s.block, s.layer, s.kind) for s in a] == [(s.block, s.layer, s.kind) for s in b]
    for sa, sb in zip(a, b, strict=True):
        assert len(sa.states) == len(sb.states) == len(seqs)
        for x, y in zip(sa.states, sb.states, strict=True):
            assert y.dtype == np.float64 and x.shape == y.shape
            assert np.max(np.abs(x - y)) <= 1e-12 * max(1.0, np.max(np.abs(x)))
    out = model.run(seqs)
    for y, s in zip(out, a[-1].states, strict=True):
        assert np.array_equal(y, s)


def test_torch_trace_is_detached_and_float64_even_in_float32():
    tm = TorchTransformer.from_model(model_with_gaps()).to(torch.float32)
    X = np.random.default_rng(2).normal(size=(5, 3))
    steps = trace(tm, X)
    assert all(isinstance(s.states, np.ndarray) and s.states.dtype == np.float64 for s in steps)
    assert np.array_equal(steps[-1].states, tm(X).detach().double().numpy())


def test_exact_model_trace_is_rational():
    model = model_with_gaps().as_exact()
    X = [[Fraction(1, 3), 0, 1], [2, Fraction(-1, 7), 0]]
    steps = trace(model, np.array(X, dtype=object))
    assert all(isinstance(v, Fraction) for v in steps[-1].states.ravel())


def test_trace_of_compiled_model():
    if not hasattr(ef, "compile"):
        pytest.skip("exactformer.compile not available")
    rng = np.random.default_rng(5)
    ins = [rng.normal(size=(int(rng.integers(2, 5)), 3)) for _ in range(5)]
    ds = ef.Dataset.from_sequences(ins, [x[:1] * 2 for x in ins])
    model = ef.compile(ds)
    steps = trace(TorchTransformer.from_model(model), ds.inputs)
    n_layers = sum((b.ff is not None) + (b.sa is not None) for b in model.blocks)
    assert len(steps) == 1 + n_layers
    assert {s.kind for s in steps[1:]} == {b.kind for b in model.blocks}
    for y, s in zip(ds.targets, steps[-1].states, strict=True):
        assert np.allclose(s[: len(y)], y, rtol=0, atol=1e-10 * ds.scale)
