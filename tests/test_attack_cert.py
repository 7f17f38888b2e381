"""Regressions found by hostile testing of the certificate (docs/verification.md)."""

import numpy as np
import pytest

import exactformer as ef
import exactformer.forward as fw
from exactformer.forward import run_certified


def _small_chunks(monkeypatch, entries=7):
    """Attend a few query rows at a time, as a sequence of > 1414 tokens is (limits.md)."""
    orig = fw.query_chunks
    monkeypatch.setattr(fw, "query_chunks", lambda idx, max_entries=0: orig(idx, entries))


@pytest.mark.parametrize("attention", ["hardmax", "softmax"])
def test_certified_attention_in_query_chunks(monkeypatch, attention):
    """The certified observer saw one call per bucket: a bucket split into query chunks
    (any sequence longer than ~1414 tokens) crashed compile and verify (exit 3)."""
    rng = np.random.default_rng(3)
    inputs = [rng.normal(size=(n, 3)) for n in (9, 9, 6)]
    targets = [rng.normal(size=(m, 3)) for m in (1, 2, 2)]
    ds = ef.Dataset.from_sequences(inputs, targets)
    model = ef.compile(ds, attention=attention)
    whole = run_certified(model, inputs)
    _small_chunks(monkeypatch)
    chunked = run_certified(model, inputs)
    for a, b in zip(whole.outputs, chunked.outputs):  # BLAS may round other shapes apart
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    for a, b in zip(whole.radii, chunked.radii):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-15)
    assert ef.verify(model, ds).passed


def test_long_sequence_compiles_and_certifies(tmp_path):
    """One sequence of 1500 tokens (2.25e6 scores: two query chunks)."""
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(1500, 2)), rng.normal(size=(3, 2))]
    targets = [rng.normal(size=(1, 2)), rng.normal(size=(2, 2))]
    ds = ef.Dataset.from_sequences(inputs, targets)
    report = ef.verify(ef.compile(ds), ds)
    assert report.passed and report.certified


# -- exact mode: float images of rationals below 2⁻¹⁰⁷⁵ are 0 --------------------------------
def _q(rows):
    from fractions import Fraction

    return np.array([[Fraction(v) for v in r] for r in rows], dtype=object)


def _exact_model(blocks):
    from exactformer.model import Transformer

    model = Transformer(blocks, 2)
    assert model.exact
    return model


def test_exact_hardmax_screen_covers_underflowing_keys():
    """Keys K·x_w = (c1, 0), K·x_l = (0, c2) with c1 ≈ c2 ≈ 2⁻¹⁰⁷⁵: c1's image is 0, c2's is
    2⁻¹⁰⁷⁴, and with |q| ~ 2⁸⁰ the float scores put x_l ahead by 4e-300 > the old bound.
    The true argmax is x_w (M·c1 > (2M/3)·c2); exact verify said PASS, error 0, on data
    whose targets were x_l (repro/underflow in the attack-cert worktree)."""
    from fractions import Fraction as F

    from exactformer.model import Block, SelfAttention

    eta, M = F(1, 2 ** 1075), F(2 ** 80)
    c1, c2 = eta * (1 - F(1, 1024)), eta * (1 + F(1, 1024))
    sa = SelfAttention(_q([[M, M], [M * 2 / 3, M * 2 / 3]]), _q([[c1, 0], [0, c2]]),
                       V=_q([[1, 0], [0, 1]]), rho=F(0))
    model = _exact_model([Block(sa=sa)])
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    out = model(x)
    assert [list(r) for r in out] == [[1, 0], [1, 0]]  # every query attends to x_w
    wrong = ef.Dataset.from_sequences([x], [np.array([[0.0, 1.0]])])
    assert not ef.verify(model, wrong).passed
    assert ef.verify(model, ef.Dataset.from_sequences([x], [np.array([[1.0, 0.0]])])).passed


def test_exact_ff_screen_covers_underflowing_weights():
    """u = 2⁻¹⁰⁸⁰ (image 0), b = −2⁻⁹⁹⁰: at x = (2²⁰⁰, 0) the true pre-activation is
    2⁻⁸⁸⁰ − 2⁻⁹⁹⁰ > 0 but the screen read fl(u)·x + b < 0 and skipped the row."""
    from fractions import Fraction as F

    from exactformer.model import Block, FeedForward

    ff = FeedForward(_q([[F(1, 2 ** 1080), 0]]), np.array([F(-1, 2 ** 990)], dtype=object),
                     _q([[2 ** 900], [0]]), F(1))
    model = _exact_model([Block(ff=ff)])
    x = np.array([[2.0 ** 200, 0.0]])
    moved = F(2 ** 200) + F(2 ** 900) * (F(1, 2 ** 880) - F(1, 2 ** 990))
    assert model(x)[0, 0] == moved
    assert not ef.verify(model, ef.Dataset.from_sequences([x], [x])).passed


def test_exact_error_below_float_range_is_not_zero():
    """An exact output 2⁻¹²⁰⁰ off its target: its float distance underflows to 0.0, and the
    exact pass rule (error == 0) read that as equal: PASS, error 0, on a wrong output."""
    from fractions import Fraction as F

    from exactformer.model import Block, SelfAttention

    sa = SelfAttention(np.zeros((0, 2), dtype=object), np.zeros((0, 2), dtype=object),
                       V=_q([[0, 0], [0, 0]]), rho=1 + F(1, 2 ** 1200))
    model = _exact_model([Block(sa=sa)])
    x = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert model(x)[0, 0] == 1 + F(1, 2 ** 1200)
    report = ef.verify(model, ef.Dataset.from_sequences([x], [x[:1]]))
    assert not report.passed and report.max_abs_error > 0


@pytest.mark.parametrize("scale", [1e150, 1e-150])
def test_exact_softmax_at_scales_outside_2_64(scale):
    """Data outside 2^±64 is scaled back by the last snap (η = 2^e); the ball certificate
    wanted snaps with η = 1 only after the line (once it refused the trailing rescale block
    too, so `compile --attention softmax --exact` exited 1 at any scale beyond 1.8e±19)."""
    from fractions import Fraction

    rng = np.random.default_rng(5)
    inputs = [rng.normal(size=(n, 3)) * scale for n in (3, 4, 2)]
    targets = [rng.normal(size=(m, 3)) * scale for m in (1, 2, 2)]
    ds = ef.Dataset.from_sequences(inputs, targets)
    model = ef.compile(ds, attention="softmax", exact=True)
    assert "rescaled_by" in model.info and model.report.passed
    assert model.blocks[-1].kind == "snap" and model.blocks[-1].ff.eta != 1
    model.blocks[-1].ff.eta *= 1 + Fraction(1, 2 ** 70)  # the scaling is part of the proof
    assert not ef.verify(model, ds).passed
