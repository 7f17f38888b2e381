"""TD-TF, TD-DMD and the series files (issue 18, docs/tdtf.md). Fast: each test < ~3 s."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from exactformer import tdtf as T  # noqa: E402


def ar_series(rng, n=400, d=3, K=3):
    """x_{t+1} = Σ_j A_j x_{t−K+1+j} + ε_t, Σ‖A_j‖ = 0.9 (stable), plus an offset 3."""
    A = rng.normal(size=(K, d, d))
    A *= 0.9 / sum(np.linalg.norm(a, 2) for a in A)
    x = np.zeros((n, d))
    for t in range(K, n):
        x[t] = np.einsum("jik,jk->i", A, x[t - K:t]) + rng.normal(size=d)
    return x + 3.0  # normalisation with μ ≠ 0 must not matter


def oscillations(rng, n=200, omegas=(0.3, 0.7, 1.1)):
    """Noise-free mixed sinusoids: exactly x_{t+1} = A_0 x_{t−1} + A_1 x_t (K = 2)."""
    d = len(omegas)
    P = rng.normal(size=(d, d))
    t = np.arange(n)
    x = np.sin(np.outer(t, omegas) + rng.uniform(0, 6, d)) @ P.T
    A1 = P @ np.diag(2 * np.cos(omegas)) @ np.linalg.inv(P)
    A0 = -np.eye(d)
    return x, np.stack([A0, A1])


def small_series(n=300, d=2, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) * 0.1
    x = np.stack([np.sin(t) + 0.5 * np.sin(2.3 * t), np.cos(t) ** 3][:d], axis=1)
    return x + noise * rng.normal(size=x.shape)


# ---------------------------------------------------------------------- windows


def test_delay_windows_are_oldest_first():
    x = np.arange(12.0).reshape(6, 2)
    W, Y = T.delay_windows(x, 3)
    assert W.shape == (3, 3, 2) and Y.shape == (3, 2)
    np.testing.assert_array_equal(W[1], x[1:4])
    np.testing.assert_array_equal(Y[1], x[4])
    assert T.delay_windows(x, 6)[0].shape == (0, 6, 2)


# ----------------------------------------------------------------------- TD-DMD


def test_tddmd_recovers_an_exact_linear_delay_recurrence(rng):
    x, A = oscillations(rng)
    dmd = T.TDDMD.fit(x, 2)
    np.testing.assert_allclose(dmd.blocks(), A, atol=1e-8)
    assert dmd.spectral_radius() == pytest.approx(1.0, abs=1e-8)
    W, Y = T.delay_windows(x, 2)
    np.testing.assert_allclose(T.rollout(dmd, W[0], 100), x[2:102], atol=1e-7)


def test_tddmd_needs_enough_windows():
    with pytest.raises(T.SeriesError, match="needs at least"):
        T.TDDMD.fit(np.random.default_rng(0).normal(size=(10, 3)), 4)


# ---------------------------------------- the linear restriction equals TD-DMD


@pytest.mark.parametrize("width", [None, 7])
def test_restricted_tdtf_with_least_squares_weights_is_tddmd(rng, width):
    x = ar_series(rng)
    K = 3
    dmd = T.TDDMD.fit(x[:300], K)  # least-squares weights
    model = T.TDTF.from_tddmd(dmd, x[:300].mean(axis=0), x[:300].std(axis=0), width=width)
    assert model.cfg.lag_only_scores and model.cfg.activation == "linear"
    W, _ = T.delay_windows(x[300:], K)
    ref = dmd.predict(W)
    np.testing.assert_allclose(model.predict(W), ref, rtol=0, atol=1e-8 * np.abs(ref).max())
    # the whole rollout, not only one step
    r1, r2 = T.rollout(dmd, W[0], 60), T.rollout(model, W[0], 60)
    np.testing.assert_allclose(r2, r1, rtol=0, atol=1e-8 * np.abs(r1).max())
    # and the probed affine map is TD-DMD's matrix with no offset
    G, g = model.affine_map()
    np.testing.assert_allclose(G, dmd.A, atol=1e-10)
    np.testing.assert_allclose(g, 0, atol=1e-10)


def _superposition_gap(model, rng):
    w1, w2 = rng.normal(size=(2, 5, model.K, model.d))
    a = 0.3
    lhs = model.predict(a * w1 + (1 - a) * w2)
    rhs = a * model.predict(w1) + (1 - a) * model.predict(w2)
    return np.abs(lhs - rhs).max() / np.abs(rhs).max()


def test_restriction_makes_the_prediction_affine_and_only_then(rng):
    base = dict(window=4, width=8, attn_dim=4, hidden=8, seed=3)
    restricted = T.TDTF.new(2, T.TDTFConfig(**base, activation="linear", lag_only_scores=True),
                            mu=np.array([1.0, -2.0]), sigma=np.array([2.0, 0.5]),
                            delta=np.array([0.3, 0.7]))
    with torch.no_grad():
        restricted.net.beta.copy_(torch.linspace(-1, 1, 4, dtype=torch.float64))
    assert _superposition_gap(restricted, rng) < 1e-12
    assert _superposition_gap(T.TDTF.new(2, T.TDTFConfig(**base)), rng) > 1e-4
    assert _superposition_gap(T.TDTF.new(2, T.TDTFConfig(**base, activation="linear")),
                              rng) > 1e-4  # query-key scores alone break linearity
    assert _superposition_gap(T.TDTF.new(2, T.TDTFConfig(**base, lag_only_scores=True)),
                              rng) > 1e-4  # the nonlinear FF alone too


def test_attention_reads_only_its_window_and_costs_linear_parameters():
    cfg = T.TDTFConfig(window=5, width=8, attn_dim=4, hidden=6)
    model = T.TDTF.new(3, cfg)
    K, m, a, h, d = 5, 8, 4, 6, 3
    expected = K * m * d + K * m + 2 * a * m + K + m * m + h * m + h + m * h + m + d * m
    assert model.n_params == expected
    w = np.random.default_rng(0).normal(size=(1, K, d))
    w2 = w.copy()
    w2[0, 0] += 1.0  # the oldest state matters ...
    assert np.abs(model.predict(w) - model.predict(w2)).max() > 1e-6


# --------------------------------------------------------------------- training


def test_training_is_seeded_and_learns():
    x = small_series(noise=0.0)
    cfg = T.TDTFConfig(window=4, width=8, attn_dim=4, hidden=16, epochs=15, batch_size=32,
                       patience=15, lr=1e-2, seed=1)
    m1, m2 = T.TDTF.fit(x, cfg), T.TDTF.fit(x, cfg)
    W, _ = T.delay_windows(x[-50:], 4)
    np.testing.assert_array_equal(m1.predict(W), m2.predict(W))
    other = T.TDTF.fit(x, T.TDTFConfig(**{**cfg.__dict__, "seed": 2}))
    assert np.abs(other.predict(W) - m1.predict(W)).max() > 0
    log = m1.log
    assert min(log.val) < log.val[0] / 10
    assert log.best_epoch == int(np.argmin(log.val))
    np.testing.assert_allclose(m1.mu, x[:240].mean(axis=0))


def test_multistep_loss_trains():
    x = small_series(n=200)
    cfg = T.TDTFConfig(window=3, width=8, attn_dim=4, hidden=8, epochs=4, rollout_steps=3,
                       batch_size=64)
    model = T.TDTF.fit(x, cfg)
    assert len(model.log.val) == 4 and np.isfinite(model.log.val).all()


def test_early_stopping_keeps_the_best_epoch():
    x = small_series(n=200)
    cfg = T.TDTFConfig(window=3, width=8, attn_dim=4, hidden=8, epochs=200, patience=2,
                       lr=0.3, batch_size=32)
    model = T.TDTF.fit(x, cfg)
    log = model.log
    assert log.stopped_early and len(log.val) < 200
    # the returned parameters are those of the best validation epoch
    from exactformer.tdtf import _rollout_loss, segments

    va = segments(x[160:], 4)
    with torch.no_grad():
        val = _rollout_loss(model.net, torch.from_numpy((va - model.mu) / model.sigma), 3,
                            torch.from_numpy(model.delta)).item()
    assert val == pytest.approx(min(log.val), rel=1e-12)


@pytest.mark.parametrize("bad", [
    {"activation": "relu6"}, {"window": 0}, {"val_fraction": 1.0}, {"lr": 0.0},
])
def test_bad_config(bad):
    with pytest.raises(T.SeriesError):
        T.TDTF.fit(small_series(), T.TDTFConfig(**bad))


def test_fit_refuses_short_constant_or_nonfinite_series():
    with pytest.raises(T.SeriesError, match="too few rows"):
        T.TDTF.fit(small_series(n=12), T.TDTFConfig(window=8))
    x = small_series()
    x[:, 1] = 4.0
    with pytest.raises(T.SeriesError, match="constant"):
        T.TDTF.fit(x, T.TDTFConfig(window=3, epochs=1))
    x = small_series()
    x[5, 0] = np.nan
    with pytest.raises(T.SeriesError, match="NaN"):
        T.TDTF.fit(x, T.TDTFConfig(window=3, epochs=1))


# ------------------------------------------------------------------- rollout, files


def test_rollout_feeds_predictions_back_and_freezes_divergence():
    class Double:
        def predict(self, w):
            return 2 * w[:, -1] + w[:, 0] * 0

    out = T.rollout(Double(), np.ones((2, 1)), 5)
    np.testing.assert_array_equal(out[:, 0], [2, 4, 8, 16, 32])
    out = T.rollout(Double(), np.ones((2, 1)), 50)
    assert np.isnan(out[-1]).all() and np.isfinite(out[:39]).all()


def test_model_file_round_trip(tmp_path):
    x = small_series()
    model = T.TDTF.fit(x, T.TDTFConfig(window=4, width=8, attn_dim=4, hidden=8, epochs=2))
    path = tmp_path / "m.safetensors"
    model.save(path)
    again = T.TDTF.load(path)
    np.testing.assert_array_equal(again.forecast(x, 20), model.forecast(x, 20))
    assert again.cfg == model.cfg
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(T.SeriesError, match="not a readable"):
        T.TDTF.load(tmp_path / "junk.safetensors")
    with pytest.raises(T.SeriesError, match="no such file"):
        T.TDTF.load(tmp_path / "missing.safetensors")
    with pytest.raises(T.SeriesError, match="d = 3"):
        model.forecast(np.zeros((10, 3)), 2)


def test_load_series_formats(tmp_path):
    x = np.arange(12.0).reshape(4, 3)
    np.savez(tmp_path / "a.npz", x=x)
    np.testing.assert_array_equal(T.load_series(tmp_path / "a.npz"), x)
    np.savez(tmp_path / "b.npz", x=np.arange(5.0))
    assert T.load_series(tmp_path / "b.npz").shape == (5, 1)
    (tmp_path / "h.csv").write_text("u,v,w\n" + "\n".join(",".join(map(str, r)) for r in x))
    np.testing.assert_array_equal(T.load_series(tmp_path / "h.csv"), x)
    (tmp_path / "n.csv").write_text("\n".join(",".join(map(str, r)) for r in x) + "\n\n")
    np.testing.assert_array_equal(T.load_series(tmp_path / "n.csv"), x)
    T.save_series(x, tmp_path / "o.csv")
    np.testing.assert_array_equal(T.load_series(tmp_path / "o.csv"), x)


@pytest.mark.parametrize("name, content, match", [
    ("r.csv", "1,2\n3\n", "2 columns|1 columns"),
    ("s.csv", "1,2\n3,abc\n", "'abc' is not a number"),
    ("e.csv", "a,b\n", "no data rows"),
    ("one.csv", "1,2\n", "at least 2 time steps"),
    ("nan.csv", "1,2\n3,nan\n", "NaN or infinite value in time step 1"),
    ("x.json", "[]", "expected a .npz"),
])
def test_load_series_errors(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(T.SeriesError, match=match):
        T.load_series(tmp_path / name)


def test_load_series_npz_errors(tmp_path):
    np.savez(tmp_path / "y.npz", y=np.zeros((4, 2)))
    with pytest.raises(T.SeriesError, match="no array 'x'"):
        T.load_series(tmp_path / "y.npz")
    np.savez(tmp_path / "c.npz", x=np.zeros((4, 2, 2)))
    with pytest.raises(T.SeriesError, match=r"shape \(T, d\)"):
        T.load_series(tmp_path / "c.npz")
    (tmp_path / "bad.npz").write_bytes(b"PK garbage")
    with pytest.raises(T.SeriesError, match="not a readable"):
        T.load_series(tmp_path / "bad.npz")
    with pytest.raises(T.SeriesError, match="no such file"):
        T.load_series(tmp_path / "none.npz")


def test_hankel_dmd_at_full_rank_is_tddmd(rng):
    pytest.importorskip("pydmd")
    x = ar_series(rng) - 3.0
    full = T.HankelDMDBaseline(3, svd_rank=-1).fit(x[:300])
    W, _ = T.delay_windows(x[300:], 3)
    ref = T.TDDMD.fit(x[:300], 3).predict(W)
    np.testing.assert_allclose(full.predict(W), ref, atol=1e-8 * np.abs(ref).max())
    truncated = T.HankelDMDBaseline(3, svd_rank=2).fit(x[:300])
    assert truncated.rank == 2 and np.abs(truncated.predict(W) - ref).max() > 1e-3
