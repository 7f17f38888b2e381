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
