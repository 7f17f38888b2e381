"""Softmax compilation (docs/design.md §5): exact in float64, certified in exact mode."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import exactformer as ef
from conftest import near_duplicates, random_dataset, reference_feasible, run_cli
from exactformer import DatasetError, InfeasibleError, Transformer
from exactformer.certify import certify
from exactformer.compiler import strict_bound
from exactformer.demo import demo_dataset
from test_compile import datasets


def check(model, ds, compact):
    report = ef.verify(model, ds)
    assert report.passed, report.summary()
    assert report.max_rel_error <= (1e-10 if compact else 1e-12)
    assert model.attention == "softmax" and model.temperature > 0
    if compact:
        assert model.n_blocks <= 4 + model.info["split_rounds"] + model.info["snap_layers"] - 1
    else:
        assert model.width <= 4 and model.rank <= 2
        assert model.n_blocks <= strict_bound(ds, "softmax")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ds=datasets(), compact=st.booleans())
def test_softmax_float_contract(ds, compact):
    feasible = reference_feasible(ds.inputs, ds.targets)
    if feasible and near_duplicates(ds):
        with pytest.raises(DatasetError):
            ef.compile(ds, attention="softmax", compact=compact)
        return
    if not feasible:
        with pytest.raises(InfeasibleError):
            ef.compile(ds, attention="softmax", compact=compact)
        return
    check(ef.compile(ds, attention="softmax", compact=compact), ds, compact)


@pytest.mark.parametrize("scale", [1e-5, 1e5])
def test_softmax_scaled_random(scale):
    ds = random_dataset(np.random.default_rng(4), N=40, n=(3, 15), d=6, m=(1, 3), scale=scale)
    check(ef.compile(ds, attention="softmax"), ds, False)
    check(ef.compile(ds, attention="softmax", compact=True), ds, True)


@pytest.mark.parametrize("compact", [False, True])
def test_exact_softmax_is_certified(compact):
    ds = demo_dataset()
    model = ef.compile(ds, attention="softmax", exact=True, compact=compact)
    report = ef.verify(model, ds)
    assert report.passed and report.certificate and "exactly" in report.certificate
    cert = certify(model, ds.inputs, ds.targets)
    for out, y in zip(cert.outputs, ds.targets):
        assert (out[: len(y)] == y).all()  # Fractions equal to the float targets


def test_certificate_fails_on_tampered_models(tmp_path):
    ds = demo_dataset()
    model = ef.compile(ds, attention="softmax", exact=True)
    model.save(tmp_path / "m.safetensors")
    loaded = Transformer.load(tmp_path / "m.safetensors")
    assert ef.verify(loaded, ds).passed  # rationals and τ survive the file
    hot = Transformer.load(tmp_path / "m.safetensors")
    hot.temperature = float(model.temperature) * 1e4  # far too hot
    cert = certify(hot, ds.inputs, ds.targets)
    assert not cert.passed and "token" in cert.message
    assert "straddles" in cert.message or "no snap covers" in cert.message
    float_model = ef.compile(ds, attention="softmax")
    cert = certify(float_model, ds.inputs, ds.targets)
    assert not cert.passed and "float weights" in cert.message


def test_softmax_cli(tmp_path):
    data = tmp_path / "d.json"
    ef.save_dataset(demo_dataset(), data)
    out = tmp_path / "m.safetensors"
    proc = run_cli("compile", data, "-o", out, "--attention", "softmax", "--exact")
    assert proc.returncode == 0, proc.stderr
    assert "nan" not in proc.stdout and "not measured (the ball-arithmetic" in proc.stdout
    proc = run_cli("verify", out, data)
    assert proc.returncode == 0 and "certified" in proc.stdout
    proc = run_cli("info", out)
    assert "temperature" in proc.stdout and "worst weight off the argmax" in proc.stdout
    proc = run_cli("demo", "--attention", "softmax", "--out", tmp_path / "demo")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "demo" / "collapse_contrast.png").stat().st_size > 0


def test_snap_threshold_within_float_precision_of_a_token_is_decided_exactly():
    """certify._Line: float64 images decide most tokens; a token whose λ interval is closer to
    a threshold than floats resolve is compared in exact rationals (on, off, or neither)."""
    from fractions import Fraction

    import flint

    from exactformer.certify import _Line

    third, tiny = Fraction(1, 3), Fraction(1, 2**80)
    line = _Line([third, third + 3 * tiny, flint.arb(5), flint.arb(2) / 3])
    idx = np.arange(4)
    on, off = line.side(idx, -(third + tiny), Fraction(1))  # λ > 1/3 + 2^-80 ?
    assert on.tolist() == [False, True, True, True] and off.tolist() == [True, False, False, False]
    on, off = line.side(idx, third + tiny, Fraction(-1))  # λ < 1/3 + 2^-80 ?
    assert on.tolist() == [True, False, False, False] and off.tolist() == [False, True, True, True]
    on, off = line.side(idx, -third, Fraction(1))  # λ > 1/3: the exact 1/3 is off, not on
    assert on.tolist() == [False, True, True, True] and off.tolist()[0]
    ball = _Line([flint.arb(third.numerator) / third.denominator])  # a ball around 1/3
    on, off = ball.side(np.arange(1), -third, Fraction(1))
    assert not on[0] and not off[0]  # it straddles 1/3: neither
