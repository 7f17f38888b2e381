"""`experiment meanfield --quick`: every claim recomputed from the saved trajectories (slow
lane), and the command's bad-input handling (fast lane)."""

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from exactformer.cli import app


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    from exactformer.experiments import meanfield

    try:
        meanfield.require_pot()
    except ImportError:
        pytest.skip("POT is not installed")
    out = tmp_path_factory.mktemp("meanfield")
    results = meanfield.run(out, quick=True)
    with np.load(out / "trajectories.npz") as z:
        arrays = dict(z)
    return out, results, arrays


def _w2(X, Y):
    import ot

    a = np.full(len(X), 1 / len(X))
    b = np.full(len(Y), 1 / len(Y))
    M = ((X[:, None, :] - Y[None, :, :]) ** 2).sum(axis=2)
    return math.sqrt(max(ot.emd2(a, b, M, numItermax=10_000_000), 0.0))


def _seeds(s, d):
    return s["seeds"][s["dims"].index(d)]


def _curves(results, arrays, d):
    """W2(t) recomputed from the trajectories, per (β, seed), with the image recomputed from
    the initial tokens (dense argmax, no library code)."""
    s = results["settings"]
    curves = {}
    for beta in s["betas"]:
        for seed in range(_seeds(s, d)):
            key = f"d{d}_b{beta:g}_s{seed}"
            X0, A, states = arrays[f"{key}_X0"], arrays[f"{key}_A"], arrays[f"{key}_states"]
            S = X0 @ A @ X0.T
            best = S.argmax(axis=1)
            # every best key is a leader (its own best key): the flow is explicit
            assert np.array_equal(best[best], best)
            image = X0[best]
            assert np.array_equal(arrays[f"{key}_image"], image)
            curves[beta, seed] = (arrays[f"{key}_times"], np.array([_w2(X, image)
                                                                    for X in states]))
    return curves


@pytest.mark.slow
def test_files_and_captions(quick):
    out, results, _ = quick
    for name in ("distance_vs_time.png", "plateau_vs_beta.png", "terminal_phase.png",
                 "arrival_time.png"):
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    readme = (out / "README.md").read_text(encoding="utf-8")
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["fits"] == json.loads(json.dumps(results["fits"]))
    slope = results["fits"]["2"]["plateau_slope"]["mean"]
    assert f"{slope:.2f}" in readme and "Quantifying Concentration" in readme


@pytest.mark.slow
def test_w2_of_the_results_is_the_w2_of_the_trajectories(quick):
    _, results, arrays = quick
    for d in results["settings"]["dims"]:
        curves = _curves(results, arrays, d)
        for r in results["runs"]:
            if r["d"] == d:
                assert np.allclose(r["w2"], curves[r["beta"], r["seed"]][1], rtol=1e-6,
                                   atol=1e-9)


@pytest.mark.slow
def test_concentration_plateau_departure_and_arrival_d2(quick):
    _, results, arrays = quick
    s = results["settings"]
    curves = _curves(results, arrays, 2)
    betas = s["betas"]
    mins = {}
    for (beta, seed), (t, w) in curves.items():
        k = int(np.argmin(w))
        mins[beta, seed] = w[k]
        # concentration: the distance falls below its t = 0 value, by 2x once beta >= 100
        assert w[k] <= (0.5 if beta >= 100 else 0.9) * w[0]
        within = np.flatnonzero(w <= 2 * w[k])
        if beta >= 1000:  # metastable: within 2x of the minimum for >= 2 log(beta)
            run = within[within >= within[0]]
            stay = t[run[np.flatnonzero(np.diff(np.r_[run, -9]) != 1)[0]]] - t[within[0]]
            assert stay >= 2 * math.log(beta)
        if beta <= 100:  # finite beta, late times: the flow leaves the limit
            assert w[-1] > 2 * w[k]
    # the plateau falls with beta: per-seed log-log slope
    slopes = [np.polyfit(np.log(betas), np.log([mins[b, sd] for b in betas]), 1)[0]
              for sd in range(_seeds(s, 2))]
    assert np.mean(slopes) <= -0.3
    # arrival (first time within 2x of the minimum) grows with log beta
    arrival = {b: np.mean([curves[b, sd][0][np.argmax(curves[b, sd][1] <= 2 * mins[b, sd])]
                           for sd in range(_seeds(s, 2))]) for b in betas}
    assert all(arrival[b1] < arrival[b2] for b1, b2 in zip(betas, betas[1:]))


def _arrival(t, w):
    """First time w(t) <= 2 min w: log w linear in log t between the output times around
    the crossing (linear in t on [0, t_1])."""
    level = 2 * w.min()
    k = int(np.flatnonzero(w <= level)[0])
    if k == 0:
        return t[0]
    frac = (math.log(w[k - 1]) - math.log(level)) / (math.log(w[k - 1]) - math.log(w[k]))
    if t[k - 1] == 0:
        return frac * t[k]
    return t[k - 1] * (t[k] / t[k - 1]) ** frac


@pytest.mark.slow
def test_interpolated_arrival_times_and_their_fit(quick):
    _, results, arrays = quick
    s = results["settings"]
    for d in s["dims"]:
        curves = _curves(results, arrays, d)
        arrival = {}
        for r in results["runs"]:
            if r["d"] == d:
                t, w = curves[r["beta"], r["seed"]]
                arrival[r["beta"], r["seed"]] = _arrival(t, w)
                assert r["arrival"] == pytest.approx(arrival[r["beta"], r["seed"]], rel=1e-6,
                                                     abs=1e-9)
                # between the last output time above 2x the minimum and the first one below
                k = int(np.flatnonzero(w <= 2 * w.min())[0])
                assert t[max(k - 1, 0)] <= r["arrival"] <= t[k]
                assert r["concentrates"] == bool(w[0] > 2 * w.min())
        x = [math.log(b) for b in s["betas"] for _ in range(_seeds(s, d))]
        y = [arrival[b, sd] for b in s["betas"] for sd in range(_seeds(s, d))]
        slope = np.polyfit(x, y, 1)[0]
        assert results["fits"][str(d)]["arrival_fit"]["slope"] == pytest.approx(slope, rel=1e-6)


@pytest.mark.slow
def test_hulls_are_nested_along_the_flow(quick):
    # V = I: every velocity points into the convex hull, so support functions never grow
    _, results, arrays = quick
    U = np.random.default_rng(0).standard_normal((32, 2))
    for beta in results["settings"]["betas"]:
        states = arrays[f"d2_b{beta:g}_s0_states"]
        h = (states @ U.T).max(axis=1)
        assert np.all(np.diff(h, axis=0) <= 1e-6)


@pytest.mark.slow
def test_terminal_phase_lines_up_with_the_slow_eigenvector_of_v(quick):
    _, results, arrays = quick
    for seed in range(results["settings"]["terminal_seeds"]):
        X = arrays[f"terminal_s{seed}_states"][-1]
        V = arrays[f"terminal_s{seed}_V"]
        lam, R = np.linalg.eigh(V)
        C = X - X.mean(axis=0)
        axis = np.linalg.eigh(C.T @ C)[1][:, -1]
        assert abs(axis @ R[:, 0]) > 0.9  # principal axis = eigenvector of the smallest λ
        along = np.sqrt(((C @ R[:, 0]) ** 2).mean())
        across = np.sqrt(((C @ R[:, 1]) ** 2).mean())
        assert across < 0.2 * along
        X0 = arrays[f"terminal_s{seed}_states"][0]
        C0 = X0 - X0.mean(axis=0)  # the initial cloud is round: V made the axis
        ev = np.linalg.eigvalsh(C0.T @ C0)
        assert ev[1] < 1.3 * ev[0]


def test_command_refuses_bad_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = CliRunner().invoke(app, ["experiment", "meanfield", "--quick", "--out",
                                   str(blocker / "sub")])
    assert res.exit_code == 2
    assert "Traceback" not in res.output


@pytest.mark.slow
def test_workers_change_nothing_but_the_wall_time(tmp_path):
    from exactformer.experiments import meanfield

    pytest.importorskip("ot")
    s = meanfield.Settings(n=60, betas=(10.0, 100.0), seeds=(2, 3), n_times=8, terminal_n=60,
                           terminal_t=10.0, terminal_seeds=2, big_n=200, big_subsample=50,
                           big_subsamples=2)
    one = meanfield.run(tmp_path / "one", settings=s, workers=1)
    two = meanfield.run(tmp_path / "two", settings=s, workers=2)
    assert json.dumps(one["fits"], sort_keys=True) == json.dumps(two["fits"], sort_keys=True)
    assert [r["w2"] for r in one["runs"]] == [r["w2"] for r in two["runs"]]
    assert one["big"]["w2_subsample_mean"] == two["big"]["w2_subsample_mean"]
    with np.load(tmp_path / "one" / "trajectories.npz") as a, \
            np.load(tmp_path / "two" / "trajectories.npz") as b:
        assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_command_refuses_zero_workers(tmp_path):
    res = CliRunner().invoke(app, ["experiment", "meanfield", "--quick", "--workers", "0",
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
