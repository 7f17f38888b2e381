"""A reader written from docs/design.md §1-§2 alone (no exactformer code) runs our files."""

import numpy as np
import pytest
from safetensors import safe_open

import exactformer as ef
from conftest import random_dataset


def independent_forward(path, X):
    """docs/design.md §1 on one sequence, straight from the tensors of docs/design.md §2."""
    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata()
        T = {k: fh.get_tensor(k) for k in fh.keys()}
    assert meta["format"] == "exactformer/1"
    mode, tau = meta["attention"], float(meta["temperature"])
    assert int(meta["d"]) == X.shape[1]
    for l in range(int(meta["n_blocks"])):
        p = f"blocks.{l}."
        if p + "ff.U" in T:
            pre = X @ T[p + "ff.U"].T + T[p + "ff.b"]
            X = T[p + "ff.eta"] * X + np.maximum(pre, 0) @ T[p + "ff.W"].T
        if p + "sa.Q" in T:
            V = T[p + "sa.V"] if p + "sa.V" in T else T[p + "sa.Vo"] @ T[p + "sa.Vi"]
            S = (X @ T[p + "sa.Q"].T) @ (X @ T[p + "sa.K"].T).T  # h = 0: all zeros
            if mode == "hardmax":
                P = (S == S.max(axis=1, keepdims=True)).astype(float)
            else:
                P = np.exp((S - S.max(axis=1, keepdims=True)) / tau)
            P /= P.sum(axis=1, keepdims=True)
            X = T[p + "sa.rho"] * X + P @ (X @ V.T)
    return X


@pytest.mark.parametrize("attention", ["hardmax", "softmax"])
@pytest.mark.parametrize("compact", [False, True])
def test_independent_reader_reproduces_the_targets(tmp_path, attention, compact):
    ds = random_dataset(np.random.default_rng(5), N=15, n=(2, 9), d=4, m=(1, 3))
    model = ef.compile(ds, attention=attention, compact=compact)
    path = tmp_path / "m.safetensors"
    model.save(path)
    for x, y in zip(ds.inputs, ds.targets):
        out = independent_forward(path, x)
        np.testing.assert_allclose(out[: len(y)], y, rtol=0, atol=1e-12 * ds.scale)
        np.testing.assert_allclose(out, model(x), rtol=0, atol=1e-12 * ds.scale)


def test_tensor_names_dtypes_and_shapes(tmp_path):
    ds = random_dataset(np.random.default_rng(6), N=4, d=3)
    model = ef.compile(ds)
    model.save(tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), framework="numpy") as fh:
        meta = fh.metadata()
        keys = list(fh.keys())
        for k in keys:
            t = fh.get_tensor(k)
            assert t.dtype == np.float64
            name = k.split(".")
            assert name[0] == "blocks" and name[1].isdigit() and name[2] in ("ff", "sa")
            assert name[3] in ("eta", "U", "b", "W", "rho", "Q", "K", "V", "Vo", "Vi")
            if name[3] in ("eta", "rho"):
                assert t.shape == ()
    assert {"format", "attention", "temperature", "d", "n_blocks"} <= set(meta)
    assert int(meta["n_blocks"]) == model.n_blocks
