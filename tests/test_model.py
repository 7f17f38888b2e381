from fractions import Fraction

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from exactformer import ModelFileError
from exactformer.model import Block, FeedForward, SelfAttention, Transformer


def _toy(rng, d=3):
    ff = FeedForward(rng.standard_normal((4, d)), rng.standard_normal(4),
                     rng.standard_normal((d, 4)), 1.0)
    sa = SelfAttention(rng.standard_normal((2, d)), rng.standard_normal((2, d)),
                       V=rng.standard_normal((d, d)), rho=0.5)
    uni = SelfAttention(np.zeros((0, d)), np.zeros((0, d)), Vo=np.ones((d, 1)),
                        Vi=np.ones((1, d)), rho=1.0)
    return Transformer([Block(ff, sa, "a"), Block(None, uni, "b"), Block(ff, None, "c")], d)


def test_hardmax_ties_are_uniform():
    X = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    sa = SelfAttention(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]]), V=np.eye(2), rho=0.0)
    out = sa(X, np.array([0, 3]))
    # token 2 scores 0 against everything: uniform over all three tokens
    np.testing.assert_allclose(out[2], X.mean(axis=0))
    np.testing.assert_array_equal(out[0], [1.0, 0.0])


def test_uniform_attention_is_the_sequence_mean():
    X = np.arange(10.0).reshape(5, 2)
    sa = SelfAttention(np.zeros((0, 2)), np.zeros((0, 2)), V=np.eye(2), rho=0.0)
    out = sa(X, np.array([0, 2, 5]))
    np.testing.assert_allclose(out[:2], np.repeat(X[:2].mean(0, keepdims=True), 2, axis=0))
    np.testing.assert_allclose(out[2:], np.repeat(X[2:].mean(0, keepdims=True), 3, axis=0))


def test_softmax_limits(rng):
    X = rng.standard_normal((4, 2))
    sa = SelfAttention(np.eye(2), np.eye(2), V=np.eye(2), rho=0.0)
    hot = sa(X, np.array([0, 4]), "softmax", 1e6)
    np.testing.assert_allclose(hot, np.repeat(X.mean(0, keepdims=True), 4, axis=0), atol=1e-5)


def test_run_many_equals_one_by_one(rng):
    model = _toy(rng)
    xs = [rng.standard_normal((n, 3)) for n in (1, 4, 4, 7)]
    together = model.run(xs)
    for x, y in zip(xs, together):
        np.testing.assert_allclose(model(x), y, rtol=1e-13, atol=1e-13)  # BLAS blocking


def test_save_load_round_trip(tmp_path, rng):
    model = _toy(rng)
    model.save(tmp_path / "m.safetensors")
    back = Transformer.load(tmp_path / "m.safetensors")
    assert back.n_blocks == 3 and back.n_params == model.n_params
    assert [b.kind for b in back.blocks] == ["a", "b", "c"]
    assert back.blocks[1].ff is None and back.blocks[2].sa is None
    x = rng.standard_normal((5, 3))
    np.testing.assert_array_equal(back(x), model(x))


def test_exact_weights_survive_the_file(tmp_path):
    ff = FeedForward(np.array([[Fraction(1, 3), Fraction(2, 7)]], dtype=object),
                     np.array([Fraction(1, 11)], dtype=object),
                     np.array([[Fraction(5, 3)], [Fraction(-1, 9)]], dtype=object), Fraction(1))
    model = Transformer([Block(ff, None, "x")], 2)
    model.save(tmp_path / "e.safetensors")
    back = Transformer.load(tmp_path / "e.safetensors")
    assert back.exact
    assert back.blocks[0].ff.U[0, 0] == Fraction(1, 3)
    x = np.array([[Fraction(1), Fraction(2)]], dtype=object)
    assert (back(x) == model(x)).all()


def _write(path, tensors, meta):
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("break_it, message", [
    (lambda t, m: t.pop("blocks.0.ff.b"), "missing tensor blocks.0.ff.b"),
    (lambda t, m: t.__setitem__("blocks.0.ff.W", np.zeros((2, 4))), "has shape"),
    (lambda t, m: t.__setitem__("blocks.0.sa.rho", np.array(np.nan)), "non-finite"),
    (lambda t, m: m.__setitem__("format", "other/2"), "unknown format"),
    (lambda t, m: m.__setitem__("attention", "linear"), "hardmax or softmax"),
    (lambda t, m: t.__setitem__("blocks.9.ff.U", np.zeros((1, 3))), "unexpected tensor"),
    (lambda t, m: m.pop("d"), "metadata"),
])
def test_load_errors_are_clear(tmp_path, rng, break_it, message):
    model = _toy(rng)
    model.save(tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), "numpy") as fh:
        meta = dict(fh.metadata())
    tensors = load_file(str(tmp_path / "m.safetensors"))
    break_it(tensors, meta)
    _write(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(ModelFileError, match=message):
        Transformer.load(tmp_path / "bad.safetensors")


def test_load_garbage(tmp_path):
    (tmp_path / "g.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ModelFileError):
        Transformer.load(tmp_path / "g.safetensors")
    with pytest.raises(ModelFileError, match="no such file"):
        Transformer.load(tmp_path / "nothing.safetensors")


def test_wide_layers_are_chunked_identically(rng):
    ff = FeedForward(rng.standard_normal((50, 3)), rng.standard_normal(50),
                     rng.standard_normal((3, 50)), 1.0)
    X = rng.standard_normal((1000, 3))
    np.testing.assert_array_equal(ff(X, chunk_entries=1 << 30), ff(X, chunk_entries=500))
