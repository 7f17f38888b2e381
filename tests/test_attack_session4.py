"""Hostile tests of session 4 (docs/limits.md, "Scales"): regressions found by attacking main."""

from __future__ import annotations

import json

import numpy as np
import pytest

import exactformer as ef
from exactformer.model import Transformer
from test_hostile import cli


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


def test_exact_inputs_that_lose_bits_at_scale_one_refused():
    """Inputs 1e-20 beside targets 3e300 are divided by 2^999: the inputs become subnormal
    and lose bits, the exact hardmax model was built for the rounded inputs and failed its
    exact verification in every draw (exit 1, max abs error 4.7e300). Now exit 2, by name."""
    with pytest.raises(ef.DatasetError, match="inputs .* lose bits"):
        ef.compile(_mixed_scales(1e-20, 3e300), exact=True)


def _classes(inputs: float, codes: float | None) -> ef.Dataset:
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(3, 2)) * inputs for _ in range(6)]
    code_rows = None if codes is None else rng.normal(size=(3, 2)) * codes
    return ef.Dataset(xs, [np.zeros((0, 2)) for _ in xs], labels=np.array([0, 1, 2, 0, 1, 2]),
                      codes=code_rows)


def test_classification_accuracy_with_huge_codes():
    """Codes ~1e200: verify took norms of read-out − code, whose squares overflow to inf, so
    every sequence was 'nearest' code 0 and a model with every output on its code (max rel
    error 3e-16) failed at 33 % accuracy in every draw (VerificationError, exit 1)."""
    ds = _classes(1e100, 1e200)
    model = ef.compile(ds)
    assert model.report.accuracy == 1.0 and ef.verify(model, ds).passed


def test_exact_softmax_classification_reports_its_classes(tmp_path):
    """The ball certificate (exact softmax) reported no accuracy, so `verify --json` said
    classification false, n_classes null for a classification model."""


    ds = _classes(1.0, None)
    model = ef.compile(ds, attention="softmax", exact=True)
    assert model.report.accuracy == 1.0
    path, data = tmp_path / "m.safetensors", tmp_path / "d.json"
    model.save(path)
    data.write_text(json.dumps({"inputs": [x.tolist() for x in ds.inputs],
                                "labels": ds.labels.tolist()}))
    result = cli("verify", path, data, "--json")
    doc = json.loads(result.stdout)
    assert result.exit_code == 0 and doc["arithmetic"] == "ball arithmetic"
    assert doc["classification"] is True and doc["n_classes"] == 3 and doc["accuracy"] == 1.0


def test_certificate_survives_a_last_snap_scaled_by_a_large_power_of_two():
    """Inputs ~1 beside targets ~1e200: the last snap is scaled back by 2^401, and the
    certificate multiplied the line part's direction A (~1e199, beside |ξ| ≤ 1e-135) by it:
    inf, so a correct model (max rel error 2e-16) was 'not certified' in every draw (exit 1).
    The line part is rebalanced by powers of two first."""
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(3, 2)) for _ in range(6)]
    codes = rng.normal(size=(3, 2)) * 1e200
    ds = ef.Dataset.from_sequences(xs, [codes[[k % 3]] for k in range(6)])
    model = ef.compile(ds)
    assert model.info["rescaled_by"] == "2^401" and model.report.certified


def test_line_part_rebalancing_keeps_the_set_exactly():
    """ξ·a with |ξ| ≤ xi, a ∈ A ± RA is rewritten as (ξ·2^k)·(a/2^k): the products xi·A and
    xi·RA stay bit for bit, rows with max|A| ≤ 1 or entries that would turn subnormal are
    untouched."""
    from exactformer.arithmetic import Interval

    rng = np.random.default_rng(1)
    iv = Interval()
    iv.begin(np.zeros((5, 3)))
    A = rng.normal(size=(5, 3)) * np.array([[1e199], [1e-3], [1e300], [5.0], [1e250]])
    A[4, 0] = 1e-100  # /2^831 would be subnormal: row left as it is
    RA = np.abs(A) * 1e-10
    xi = np.array([1e-135, 0.5, 1e-300, 0.0, 1e-200])
    iv.A, iv.RA, iv.xi = A.copy(), RA.copy(), xi.copy()
    iv._rebalance(np.arange(5))
    assert np.all(np.abs(iv.A[[0, 2, 3]]).max(axis=1) <= 1)
    np.testing.assert_array_equal(iv.A[[1, 4]], A[[1, 4]])
    np.testing.assert_array_equal(iv.xi[[1, 4]], xi[[1, 4]])
    for r in range(5):
        k = np.frexp(np.abs(A[r]).max())[1] if r in (0, 2, 3) else 0
        np.testing.assert_array_equal(np.ldexp(iv.A[r], k), A[r])
        np.testing.assert_array_equal(np.ldexp(iv.RA[r], k), RA[r])
        assert np.ldexp(iv.xi[r], -k) == xi[r]


@pytest.mark.parametrize("inputs, targets, flags", [
    (1e-20, 3e300, ()), (1.0, 5e307, ("--compact",)), (3e-300, 1e20, ("--attention", "softmax")),
    (3e-300, 1e20, ("--attention", "softmax", "--exact")),
])
def test_targets_beyond_2_1000_times_the_inputs_refused(tmp_path, inputs, targets, flags):
    """Targets more than 2^1000 × the inputs' scale: every draw failed, exit 1 ('not
    certified', δ inf) or 3 ('softmax: no temperature put every token within ε'). Now one
    line, exit 2, before any work (float mode and softmax; exact hardmax computes no float)."""
    from test_hostile import one_line_error

    ds = _mixed_scales(inputs, targets)
    data = tmp_path / "d.json"
    data.write_text(json.dumps({"inputs": [x.tolist() for x in ds.inputs],
                                "outputs": [y.tolist() for y in ds.targets]}))
    result = cli("compile", data, "-o", tmp_path / "m.safetensors", *flags)
    one_line_error(result, 2, "times the inputs' scale")
    assert not (tmp_path / "m.safetensors").exists()


def test_verify_json_with_a_value_still_prints_the_error_object(tmp_path):
    """`verify … --json=1`: the parser's error ("does not take a value") has no context, so
    stdout stayed empty although JSON was asked for (docs/verification.md: an error object
    also for option errors)."""
    from test_hostile import one_line_error

    result = cli("verify", tmp_path / "m.safetensors", tmp_path / "d.json", "--json=1")
    one_line_error(result, 2, "does not take a value")
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "error" and doc["exit_code"] == 2
