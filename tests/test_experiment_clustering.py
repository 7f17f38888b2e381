"""The clustering figures: files, captions, and the claim behind every figure.

The experiment run (~5 s of CPU) puts the figure tests in the slow lane.
"""

import json

import numpy as np
import pytest

from exactformer.experiments import clustering

FIGURES = [
    "argmax_geometry.png",
    "rank_one.png",
    "clustering.png",
    "no_concentration.png",
    "trajectories_2d.png",
    "sphere.png",
    "hardmax_vs_softmax.png",
    "convergence_time.png",
]


# The claims are recomputed here from the raw trajectories, with plain numpy written for the
# tests (not exactformer.dynamics), and compared with what each figure reports.


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clustering")
    raw: dict = {}
    summary = clustering.run(out, quick=True, trajectories=raw)
    return out, summary, raw


def argmax_rows(Z, A, rtol=1e-12):
    """Argmax set of every token: scores within rtol × the row's largest |score| of the top."""
    S = Z @ A @ Z.T
    return S >= S.max(axis=1, keepdims=True) - rtol * np.abs(S).max(axis=1, keepdims=True)


def own_argmax(Z, A, rtol=1e-9):
    """Tokens whose argmax set is only their own position (the leaders)."""
    M = argmax_rows(Z, A, rtol)
    same = np.abs(Z[:, None, :] - Z[None, :, :]).max(axis=2) <= 1e-12
    return np.flatnonzero(~(M & ~same).any(axis=1))


def points(X, atol):
    """Distinct points of X (greedy grouping within atol, max-norm)."""
    reps: list = []
    for x in X:
        if not any(np.abs(x - r).max() <= atol for r in reps):
            reps.append(x)
    return np.array(reps)


@pytest.mark.slow
def test_files_and_captions(run):
    out, summary, _ = run
    readme = (out / "README.md").read_text(encoding="utf-8")
    for name in FIGURES:
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        assert f"]({name})" in readme
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert "arXiv:2407.01602" in readme


@pytest.mark.slow
def test_argmax_geometry_claim(run):
    r, reported = run[2]["argmax_geometry.png"], run[1]["argmax_geometry.png"]["queries"]
    Z, A = r["Z"], r["A"]
    M = argmax_rows(Z, A)
    follower, leader = (int(i) for i in r["queries"])
    for i, rep in zip((follower, leader), reported):
        best = np.flatnonzero(M[i])
        # the argmax set is the token furthest along A z_i, a single token here
        assert best.tolist() == [int(np.argmax(Z @ (A @ Z[i])))] == rep["argmax"]
    assert M[follower, follower] == False and M[leader].tolist() == (  # noqa: E712
        np.arange(len(Z)) == leader).tolist()


@pytest.mark.slow
def test_rank_one_claim(run):
    r, s = run[2]["rank_one.png"], run[1]["rank_one.png"]
    Z, a, states = r["Z"], r["a"], r["states"]
    p = Z @ a
    expected = np.where((p > 0)[:, None], Z[np.argmax(p)], Z[np.argmin(p)])
    final = states[-1]
    assert np.abs(final - expected).max() < 1e-8  # straight to the extreme on its side
    assert len(points(final, 1e-8)) == 2 == s["n_limit_points"]
    scale = np.linalg.norm(Z, axis=1).max()
    assert np.linalg.norm(states[-1] - states[-2], axis=1).max() <= 1e-10 * scale  # stationary


@pytest.mark.slow
def test_full_clustering_claim(run):
    r, s = run[2]["clustering.png"], run[1]["clustering.png"]
    Z, A, states = r["Z"], r["A"], r["states"]
    lead = own_argmax(Z, A)
    assert sorted(lead.tolist()) == sorted(s["leaders"]) and len(lead) >= 2
    assert np.abs(states[:, lead] - Z[lead]).max() < 1e-12  # leaders never move
    final = states[-1]
    to_leader = np.abs(final[:, None, :] - Z[lead][None]).max(axis=2).min(axis=1)
    assert to_leader.max() < 1e-8  # every token ends on a leader ...
    assert len(points(final, 1e-8)) == len(lead) == s["n_clusters"]  # ... and each is used


@pytest.mark.slow
def test_no_concentration_claim(run):
    r, s = run[2]["no_concentration.png"], run[1]["no_concentration.png"]
    Z, A, states = r["Z"], r["A"], r["states"]
    centre = int(np.flatnonzero(np.all(Z == 0, axis=1))[0])
    assert np.all(states[:, centre] == 0)  # exactly: it ties with everything and stays
    assert argmax_rows(Z, A)[centre].sum() == len(Z)  # its argmax set is every token
    lead = own_argmax(Z, A)
    final = states[-1]
    off = np.abs(final[:, None, :] - Z[lead][None]).max(axis=2).min(axis=1) > 1e-6
    assert off.any() and not s["concentrated"]  # a limit point that is not a leader
    assert np.allclose(s["tie_points"], [[0.0, 0.0]])


def _no_ties(final, A):
    """Every limit point is its own unique argmax among the limit points."""
    P = points(final, 1e-6)
    return len(own_argmax(P, A)) == len(P), P


@pytest.mark.slow
def test_trajectory_claims(run):
    r, s = run[2]["trajectories_2d.png"], run[1]["trajectories_2d.png"]
    Z, A, states = r["Z"], r["A"], r["states"]
    ok, P = _no_ties(states[-1], A)
    assert ok and s["kinds"]["tie"] == 0 and len(P) == s["n_clusters"]
    lead = own_argmax(Z, A)
    at_leader = [np.abs(Z[lead] - p).max(axis=1).min() < 1e-8 for p in P]
    assert sum(at_leader) == len(lead) == s["kinds"]["leader"] == s["n_leaders"]
    r, sph = run[2]["sphere.png"], run[1]["sphere.png"]
    states = r["states"]
    assert np.abs(np.linalg.norm(states, axis=2) - 1).max() < 1e-12  # on the sphere
    assert np.linalg.norm(states[-1] - states[-2], axis=1).max() <= r["tol"]  # converged
    ok, P = _no_ties(states[-1], r["A"])
    assert ok and sph["kinds"]["tie"] == 0 and len(P) == sph["n_clusters"]
    Z0 = states[0]
    lead = own_argmax(Z0, r["A"])
    kept = int(np.sum(np.abs(states[:, lead] - Z0[lead]).max(axis=(0, 2)) < 1e-9))
    assert kept == sph["leaders_kept"] <= sph["kinds"]["leader"] <= len(lead)


@pytest.mark.slow
def test_softmax_claim(run):
    r, s = run[2]["hardmax_vs_softmax.png"], run[1]["hardmax_vs_softmax.png"]
    finals = dict(r["finals"])
    hard = finals.pop("hardmax")
    err = [float(np.abs(f - hard).max()) for f in finals.values()]
    assert np.allclose(err, s["max_distance_to_hardmax"], rtol=0, atol=0)
    assert err[-1] < 1e-2 < err[0]  # agreement only at the lowest temperature
    n_hard = len(points(hard, 1e-3))
    counts = [len(points(f, 1e-3)) for f in finals.values()]
    assert counts[0] < n_hard == counts[-1]  # hot softmax merges clusters


def _layers_to_rest(Z, A, alpha, tol):
    """Layers of z ← (z + α·mean of the argmax set)/(1+α) until one moves nothing (plain)."""
    scale = np.linalg.norm(Z, axis=1).max()
    for k in range(1, 2001):
        M = argmax_rows(Z, A).astype(float)
        new = (Z + alpha * (M @ Z) / M.sum(axis=1, keepdims=True)) / (1 + alpha)
        if np.linalg.norm(new - Z, axis=1).max() <= tol * scale:
            return k - 1
        Z = new
    return None


@pytest.mark.slow
def test_convergence_time_claim(run):
    r, s = run[2]["convergence_time.png"], run[1]["convergence_time.png"]
    n, steps = r["n"], r["steps"]
    for d in (2, 8):  # recompute the largest n, first seed, with the plain loop above
        Z, A = clustering._tokens(1000 * n[-1], n[-1], d)
        assert _layers_to_rest(Z, A, clustering.ALPHA, r["tol"]) == steps[d][-1, 0]
    ref = np.log(1 / r["tol"]) / np.log(1 + clustering.ALPHA)
    # once each token's argmax settles it contracts at rate 1/(1+alpha): the time stays
    # within a few layers of log(1/tol)/log(1+alpha) as n grows (no growth with n)
    assert steps[2].max() <= ref + 15
    assert s["max_steps"]["2"] == steps[2].max(axis=1).tolist()


def test_cli(tmp_path):
    from typer.testing import CliRunner

    from exactformer.cli import app

    res = CliRunner().invoke(app, ["experiment", "clustering", "--help"])
    assert res.exit_code == 0 and "--out" in res.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = CliRunner().invoke(app, ["experiment", "clustering", "--out", str(blocker / "d")])
    assert res.exit_code == 2
