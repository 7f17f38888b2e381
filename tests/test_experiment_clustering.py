"""The clustering figures: files, captions, and the claim behind every figure."""

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


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clustering")
    summary = clustering.run(out, quick=True)
    return out, summary


def test_files_and_captions(run):
    out, summary = run
    readme = (out / "README.md").read_text(encoding="utf-8")
    for name in FIGURES:
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        assert f"]({name})" in readme
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert "arXiv:2407.01602" in readme


def test_argmax_geometry_claim(run):
    q = run[1]["argmax_geometry.png"]["queries"]
    assert all(x["argmax"] == [x["top_projection"]] for x in q)
    follower, leader = q
    assert not follower["is_leader"] and follower["argmax"] != [follower["query"]]
    assert leader["is_leader"] and leader["argmax"] == [leader["query"]]


def test_rank_one_claim(run):
    s = run[1]["rank_one.png"]
    assert s["converged"] and s["n_limit_points"] == 2
    assert s["max_error_to_extremes"] < 1e-8


def test_full_clustering_claim(run):
    s = run[1]["clustering.png"]
    assert s["limit_equals_leaders"]
    assert s["n_clusters"] == len(s["leaders"]) >= 2
    assert s["cluster_kinds"] == ["leader"]


def test_no_concentration_claim(run):
    s = run[1]["no_concentration.png"]
    assert not s["concentrated"]
    assert np.allclose(s["tie_points"], [[0.0, 0.0]])


def test_trajectory_claims(run):
    s = run[1]["trajectories_2d.png"]
    assert s["kinds"]["tie"] == 0
    assert s["kinds"]["leader"] == s["n_leaders"]
    sph = run[1]["sphere.png"]
    assert sph["converged"] and sph["max_norm_error"] < 1e-12
    assert sph["kinds"]["tie"] == 0
    # every cluster is a leader of the limit; initial leaders that stayed are clusters
    assert sph["kinds"]["leader"] + sph["kinds"]["emerged"] == sph["n_clusters"]
    assert sph["leaders_kept"] <= sph["kinds"]["leader"] <= sph["n_leaders"]


def test_softmax_claim(run):
    s = run[1]["hardmax_vs_softmax.png"]
    err = s["max_distance_to_hardmax"]
    assert err[-1] < 1e-2 < err[0]  # agreement only at the lowest temperature
    assert s["clusters_at_1e-3"][0] < s["hardmax_clusters"]  # hot softmax merges clusters
    assert s["clusters_at_1e-3"][-1] == s["hardmax_clusters"]


def test_convergence_time_claim(run):
    s = run[1]["convergence_time.png"]
    assert s["all_converged"]
    # once each token's argmax settles it contracts at rate 1/(1+alpha): the time stays
    # within a few layers of log(1/tol)/log(1+alpha) as n grows (no growth with n)
    assert max(s["max_steps"]["2"]) <= s["reference_steps"] + 15


def test_cli(tmp_path):
    from typer.testing import CliRunner

    from exactformer.cli import app

    res = CliRunner().invoke(app, ["experiment", "clustering", "--help"])
    assert res.exit_code == 0 and "--out" in res.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = CliRunner().invoke(app, ["experiment", "clustering", "--out", str(blocker / "d")])
    assert res.exit_code == 2
