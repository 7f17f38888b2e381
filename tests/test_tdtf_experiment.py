"""``exactformer tdtf fit|forecast`` and ``experiment tdtf`` (issue 18): CLI, data, metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from exactformer.cli import app  # noqa: E402
from exactformer.experiments import tdtf as exp  # noqa: E402


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(res, match):
    assert res.exit_code == 2, res.output
    text = res.output.strip()
    assert text.startswith("error:") and match in text and "Traceback" not in text
    assert len(text.splitlines()) <= 2  # one line (rich may wrap a long path)


@pytest.fixture
def series_csv(tmp_path):
    t = np.arange(300) * 0.1
    x = np.stack([np.sin(t), np.cos(1.7 * t)], axis=1)
    path = tmp_path / "s.csv"
    path.write_text("a,b\n" + "\n".join(f"{float(u)!r},{float(v)!r}" for u, v in x))
    return path


def test_fit_and_forecast(tmp_path, series_csv):
    model = tmp_path / "m.safetensors"
    res = invoke("tdtf", "fit", series_csv, "-o", model, "-K", 4, "--epochs", 3)
    assert res.exit_code == 0, res.output
    assert "TD-DMD" in res.output and model.exists()
    out = tmp_path / "f.npz"
    res = invoke("tdtf", "forecast", model, series_csv, "--steps", 25, "-o", out)
    assert res.exit_code == 0, res.output
    with np.load(out) as z:
        assert z["x"].shape == (25, 2) and np.isfinite(z["x"]).all()
    from exactformer.tdtf import TDTF, load_series

    expected = TDTF.load(model).forecast(load_series(series_csv), 25)
    with np.load(out) as z:
        np.testing.assert_array_equal(z["x"], expected)
    res = invoke("tdtf", "forecast", model, series_csv, "-n", 5, "-o", tmp_path / "f.csv")
    assert res.exit_code == 0 and len(load_series(tmp_path / "f.csv")) == 5


def test_bad_input_is_one_line_exit_2(tmp_path, series_csv):
    m = tmp_path / "m.safetensors"
    one_line_error(invoke("tdtf", "fit", tmp_path / "none.csv", "-o", m),
                   "no such file")
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2\n3,x\n")
    one_line_error(invoke("tdtf", "fit", bad, "-o", m), "not a number")
    one_line_error(invoke("tdtf", "fit", series_csv, "-o", m, "--activation", "relu9"),
                   "activation")
    short = tmp_path / "short.csv"
    short.write_text("1,2\n3,4\n5,7\n")
    one_line_error(invoke("tdtf", "fit", short, "-o", m), "too few rows")
    one_line_error(invoke("tdtf", "forecast", series_csv, series_csv, "-n", 3, "-o",
                          tmp_path / "f.npz"), "not a readable")
    model = tmp_path / "m.safetensors"
    assert invoke("tdtf", "fit", series_csv, "-o", model, "-K", 3, "--epochs", 1,
                  "-q").exit_code == 0
    three = tmp_path / "three.csv"
    three.write_text("\n".join("1,2,3" for _ in range(10)))
    one_line_error(invoke("tdtf", "forecast", model, three, "-n", 3, "-o", tmp_path / "f.npz"),
                   "d = 3")
    one_line_error(invoke("tdtf", "forecast", model, series_csv, "-n", 0, "-o",
                          tmp_path / "f.npz"), "--steps")
    one_line_error(invoke("tdtf", "forecast", model, series_csv, "-n", 2, "-o",
                          tmp_path / "f.json"), ".npz or .csv")
    res = invoke("tdtf", "forecast", model, series_csv, "-n", 2, "-o", tmp_path / "q.csv", "-q")
    assert res.exit_code == 0 and res.output == "" and (tmp_path / "q.csv").exists()
    one_line_error(invoke("experiment", "tdtf", "--out", tmp_path / "o", "--systems", "duffing"),
                   "unknown system")


# ---------------------------------------------------------------------------- data


def test_generators_are_seeded_and_shaped():
    a = exp.near_linear(3, n_train=200, n_test=50, n_long=60)
    b = exp.near_linear(3, n_train=200, n_test=50, n_long=60)
    np.testing.assert_array_equal(a.train, b.train)
    assert a.train.shape == (200, 4) and a.test.shape == (50, 4) and a.long.shape == (60, 4)
    assert np.abs(exp.near_linear(4, n_train=200, n_test=50, n_long=60).train
                  - a.train).max() > 0.1
    # the noise is what separates the observed and the clean test series
    assert 0 < np.std(a.test - a.clean_test) < 0.05 * np.std(a.clean_test)


def test_lorenz_is_integrated_tightly_and_sits_on_the_attractor():
    s = exp.lorenz(0, n_train=300, n_test=100, n_long=100)
    x = np.concatenate([s.train, s.test, s.long])
    assert x.shape == (500, 3) and s.lyapunov == pytest.approx(0.906)
    # finite differences of the samples follow the vector field (dt = 0.01, 4th order)
    h = s.dt
    dx = (-x[4:] + 8 * x[3:-1] - 8 * x[1:-3] + x[:-4]) / (12 * h)
    f = np.array([exp._lorenz_rhs(0, p) for p in x[2:-2]])
    assert np.abs(dx - f).max() < 1e-3 * np.abs(f).max()
    assert 5 < x[:, 2].mean() < 45 and np.abs(x).max() < 60
    np.testing.assert_array_equal(exp.lorenz(0, n_train=300, n_test=100, n_long=100).test,
                                  s.test)


def test_lambda_omega_pod_coefficients():
    s = exp.lambda_omega(0, n_train=80, n_test=20, n_long=20, grid=12, modes=3)
    assert s.train.shape == (80, 3) and s.long.shape == (20, 3)
    # POD coefficients of the training part are uncorrelated and ordered by energy
    c = s.train - s.train.mean(axis=0)
    cov = c.T @ c
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 1e-8 * cov.max()
    assert np.all(np.diff(np.diag(cov)) <= 0)
    assert "POD modes hold" in s.note


# ------------------------------------------------------------------------- metrics


def test_valid_steps_and_errors():
    e = np.array([[0.1, 0.2, 0.5, 0.1], [0.1, 0.1, 0.1, 0.1], [0.9, 0, 0, 0]])
    np.testing.assert_array_equal(exp.valid_steps(e), [2, 4, 0])
    pred = np.array([[np.nan, 0.0], [3.0, 4.0]])
    np.testing.assert_array_equal(exp.normalised_errors(pred, np.zeros((2, 2)), 5.0),
                                  [np.inf, 1.0])


def test_w1_and_spectrum():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(4000, 2))
    w1 = exp.marginal_w1(ref + [1.0, 0.0], ref)
    np.testing.assert_allclose(w1, [1.0, 0.0], atol=1e-12)
    assert exp.marginal_w1(np.full((5, 2), np.nan), ref) is None
    t = np.arange(4096) * 0.05
    x = np.stack([np.sin(2 * t), np.cos(3 * t)], axis=1)
    assert exp.spectrum_error(x, x, 0.05) == 0.0
    assert exp.spectrum_error(2 * x, x, 0.05) == pytest.approx(np.log10(4))


def test_summary_checks_the_claims():
    def run(system, seed, tf, dmd):
        keys = ("one_step", "vpt_mean", "w1_mean", "w1_mean_over_std", "spectrum_log10_error")
        return {"system": system, "seed": seed,
                "models": {"TD-TF": dict(zip(keys, tf)), "TD-DMD": dict(zip(keys, dmd))}}

    runs = [run("near_linear", 0, (1.2, 1, 1, 1, 1), (1.0, 1, 1, 1, 1)),
            run("near_linear", 1, (1.6, 1, 1, 1, 1), (1.0, 1, 1, 1, 1)),
            run("lorenz", 0, (1, 4.0, 1.0, 1, 1), (1, 1.0, 4.0, 1, 1)),
            run("lorenz", 1, (1, 3.0, 1.0, 1, 1), (1, 1.0, None, 1, 1))]
    s = exp.summarise(runs)
    c = s["claims"]
    assert not c["near_linear_one_step_within_1.5x"]["holds_every_seed"]
    assert c["near_linear_one_step_within_1.5x"]["ratio"]["mean"] == pytest.approx(1.4)
    assert c["lorenz_vpt_at_least_2x"]["holds_every_seed"]
    assert not c["lorenz_w1_at_most_half"]["holds_every_seed"]  # a None ratio never passes
    assert s["per_system"]["lorenz"]["TD-DMD"]["w1_mean"]["n"] == 1
    json.dumps(s)


@pytest.mark.slow
def test_quick_experiment(tmp_path):
    res = invoke("experiment", "tdtf", "--quick", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "results.json").read_text())
    assert set(r["per_system"]) == set(exp.SYSTEMS)
    lor = r["runs"][[x["system"] for x in r["runs"]].index("lorenz")]
    for label in ("TD-TF", "TD-DMD"):
        m = lor["models"][label]
        assert m["vpt_unit"] == "Lyapunov times" and len(m["vpt"]) == 6
        assert 0 < m["one_step"] < 1
    readme = (tmp_path / "README.md").read_text()
    for fig in r["figures"]:
        assert (tmp_path / fig).stat().st_size > 5000 and f"]({fig})" in readme
    vpt = r["per_system"]["lorenz"]["TD-TF"]["vpt_mean"]["mean"]
    assert f"{vpt:.3g}" in readme  # captions are built from the numbers


@pytest.mark.slow
def test_quick_ablation(tmp_path):
    res = invoke("experiment", "tdtf", "--quick", "--ablation", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "ablation.json").read_text())
    assert [row["variant"] for row in r["rows"]] == list(exp.ABLATIONS)
    assert all(row["TD-TF"]["one_step"] > 0 for row in r["rows"])
    table = (tmp_path / "ablation.md").read_text()
    assert all(name in table for name in exp.ABLATIONS)
