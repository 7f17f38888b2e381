"""verify(): prefix read-out and output-set checks, exact and float."""

import numpy as np

import exactformer as ef
from exactformer.model import Block, FeedForward, Transformer


def identity_model(d):
    ff = FeedForward(np.zeros((1, d)), np.zeros(1), np.zeros((d, 1)), 1.0)
    return Transformer([Block(ff, None, "identity")], d)


def test_prefix_and_set_checks():
    x = np.array([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]])
    model = identity_model(2)
    ok = ef.Dataset.from_sequences([x], [x[:1]])  # outputs (1,2),(3,4),(1,2): (3,4) not a target
    r = ef.verify(model, ok)
    assert r.prefix_ok[0] and not r.set_ok[0] and not r.passed
    full = ef.Dataset.from_sequences([x], [x])
    r = ef.verify(model, full)
    assert r.passed and r.max_abs_error == 0
    wrong = ef.Dataset.from_sequences([x], [x[:2] + 1e-3])
    r = ef.verify(model, wrong)
    assert not r.prefix_ok[0] and abs(r.max_abs_error - 1e-3) < 1e-12
    assert r.worst_sequence == 0 and "FAIL" in r.summary()


def test_exact_verification_has_zero_tolerance():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    model = identity_model(2).as_exact()
    r = ef.verify(model, ef.Dataset.from_sequences([x], [x]))
    assert r.exact and r.passed and r.tol == 0
    r = ef.verify(model, ef.Dataset.from_sequences([x], [x + 1e-15]))
    assert not r.passed  # float mode would accept this; exact mode does not


def test_margins_are_reported_for_compiled_models():
    rng = np.random.default_rng(0)
    ds = ef.Dataset.from_sequences([rng.standard_normal((4, 3)) for _ in range(5)],
                                   [rng.standard_normal((1, 3)) for _ in range(5)])
    r = ef.verify(ef.compile(ds), ds)
    assert 0 < r.min_margin < 1 and len(r.layer_margins) == 1  # the collapse
