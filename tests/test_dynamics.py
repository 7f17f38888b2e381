"""Pure-attention clustering dynamics (exactformer.dynamics)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exactformer.dynamics import (
    argmax_sets,
    attention_weights,
    leaders,
    limit_configuration,
    random_spd,
    simulate,
    step,
)


def _config(seed, n, d, condition=5.0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), random_spd(d, rng, condition)


configs = st.tuples(
    st.integers(0, 2**32 - 1),  # seed
    st.integers(2, 25),  # n tokens
    st.integers(2, 4),  # d
    st.floats(0.25, 3.0),  # alpha
)


def test_argmax_set_is_top_of_projection_onto_Ax():
    Z, A = _config(0, 12, 2)
    mask = argmax_sets(Z, A)
    for i in range(len(Z)):
        proj = Z @ (A @ Z[i])
        assert np.flatnonzero(mask[i]).tolist() == [int(np.argmax(proj))]


def test_argmax_set_keeps_exact_ties():
    # with A = I, the query (1, 1) sees (1, 0) and (0, 1) with the same score 1
    Z = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.1, 0.1]])
    mask = argmax_sets(Z, np.eye(2))
    assert np.flatnonzero(mask[3]).tolist() == [2]
    P = attention_weights(np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]), np.eye(2))
    assert np.allclose(P[2], [1 / 3, 1 / 3, 1 / 3])  # three-way tie at the midpoint


def test_origin_attends_uniformly():
    Z = np.array([[0.0, 0.0], [1.0, 2.0], [-3.0, 1.0]])
    assert np.allclose(attention_weights(Z, np.eye(2))[0], 1 / 3)


def test_fixed_points():
    # distinct points on the unit circle with A = I: every point is its own strict argmax
    theta = np.linspace(0, 2 * np.pi, 7, endpoint=False)
    Z = np.c_[np.cos(theta), np.sin(theta)]
    assert leaders(Z, np.eye(2)).tolist() == list(range(7))
    assert np.allclose(step(Z, np.eye(2), alpha=0.7), Z, rtol=0, atol=1e-15)
    # copies of one point
    Z = np.tile([[0.3, -1.2, 2.0]], (5, 1))
    A = random_spd(3, np.random.default_rng(1))
    assert np.array_equal(step(Z, A, alpha=2.0), Z)
    assert leaders(Z, A).tolist() == list(range(5))


@settings(max_examples=40, deadline=None)
@given(configs)
def test_leaders_never_move_and_hulls_are_nested(cfg):
    seed, n, d, alpha = cfg
    Z, A = _config(seed, n, d)
    traj = simulate(Z, A, alpha=alpha, max_steps=300)
    lead = leaders(Z, A)
    assert len(lead) >= 1  # the token with the largest A-norm always wins its own argmax
    # up to the tie tolerance: tokens arriving within ~1e-12 of a leader tie with it
    assert np.allclose(traj.states[:, lead], Z[lead], rtol=0, atol=1e-9)
    # support function h(u) = max_i <u, z_i> never increases: conv(Z^{k+1}) ⊆ conv(Z^k)
    U = np.random.default_rng(seed + 1).standard_normal((16, d))
    h = (traj.states @ U.T).max(axis=1)  # (steps+1, 16)
    assert np.all(np.diff(h, axis=0) <= 1e-12)
    # tokens at the same position stay together (merged tokens never split again)
    D = np.linalg.norm(traj.states[:, :, None] - traj.states[:, None, :], axis=3)
    together = D[:-1] <= 1e-13
    assert np.all(D[1:][together] <= 1e-13)


@settings(max_examples=40, deadline=None)
@given(configs)
def test_generic_configurations_cluster_onto_leaders(cfg):
    seed, n, d, alpha = cfg
    Z, A = _config(seed, n, d)
    traj = simulate(Z, A, alpha=alpha, max_steps=2000)
    assert traj.converged
    lc = limit_configuration(traj)
    assert lc.concentrated
    # every initial leader is its own cluster, and every cluster is a strict leader of the limit
    assert len(set(lc.leader_clusters.tolist())) == len(lc.leaders)
    assert set(lc.kind.tolist()) <= {"leader", "emerged"}
    assert len(leaders(lc.points, A)) == lc.n_clusters
    # the limit is a fixed point
    assert np.allclose(step(traj.final, A, alpha), traj.final, rtol=0, atol=1e-8)


def test_monotone_convergence_to_the_leader():
    # 1-D with A = 1: positives go to the maximum, negatives to the minimum, each step
    # divides the distance to the target by exactly 1 + alpha
    z = np.array([[-2.0], [-0.5], [0.25], [1.0], [3.0]])
    alpha = 1.5
    traj = simulate(z, np.eye(1), alpha=alpha)
    assert leaders(z, np.eye(1)).tolist() == [0, 4]
    target = np.array([-2.0, -2.0, 3.0, 3.0, 3.0])
    dist = np.abs(traj.states[:, :, 0] - target)
    assert np.all(np.diff(dist, axis=0) <= 0)
    ratio = dist[1:, 1:4] / dist[:-1, 1:4]
    assert np.allclose(ratio[dist[:-1, 1:4] > 1e-6], 1 / (1 + alpha))
    assert np.allclose(traj.final[:, 0], target, atol=1e-9)


def test_rank_one_A_collapses_onto_the_extreme_tokens_along_a_line():
    rng = np.random.default_rng(3)
    a = np.array([1.0, 2.0, -0.5])
    A = np.outer(a, a)  # rank one: only the projection <a, z> is seen
    Z = rng.standard_normal((30, 3))
    traj = simulate(Z, A, alpha=1.0)
    assert traj.converged
    p = Z @ a
    top, bottom = int(np.argmax(p)), int(np.argmin(p))
    assert p[top] > 0 > p[bottom]
    expected = np.where((p > 0)[:, None], Z[top], Z[bottom])
    assert np.allclose(traj.final, expected, atol=1e-8)
    # each token's path is a straight segment towards its extreme token
    for i in range(len(Z)):
        path = traj.states[:, i] - expected[i]
        assert np.linalg.matrix_rank(path, tol=1e-9 * np.abs(path).max() + 1e-30) <= 1


def test_symmetric_configuration_does_not_concentrate():
    # a square, a token at its centre and a symmetric pair: the centre ties with everything,
    # is moved to the mean (itself) and never reaches a leader. Dyadic coordinates keep every
    # sum exact: in general rounding breaks such ties, they are unstable.
    Z = np.array([[1, 0], [0, 1], [-1, 0], [0, -1], [0, 0], [0.25, 0.125], [-0.25, -0.125]])
    A = np.diag([1.0, 2.0])
    traj = simulate(Z, A, alpha=1.0)
    lc = limit_configuration(traj)
    assert not lc.concentrated
    tie = np.flatnonzero(lc.kind == "tie")
    assert len(tie) == 1 and np.allclose(lc.points[tie[0]], 0.0)
    assert lc.labels[5] != lc.labels[4]  # the off-centre tokens still go to vertices
    assert lc.kind[lc.labels[5]] == lc.kind[lc.labels[6]] == "leader"


def test_softmax_approaches_hardmax_at_low_temperature():
    Z, A = _config(5, 15, 2)
    steps = 25
    hard = simulate(Z, A, alpha=1.0, max_steps=steps, min_steps=steps, tol=0).final
    errs = []
    for tau in [1.0, 0.001]:
        soft = simulate(
            Z, A, alpha=1.0, attention="softmax", temperature=tau, max_steps=steps, tol=0
        ).final
        errs.append(np.abs(soft - hard).max())
    # at moderate temperatures a token near a hardmax tie can pick the other leader; the
    # agreement is only asymptotic
    assert errs[0] > 0.1
    assert errs[-1] < 1e-3


def test_sphere_variant_stays_on_the_sphere():
    Z, A = _config(2, 10, 3, condition=8.0)
    traj = simulate(Z, A, alpha=1.0, sphere=True, max_steps=500)
    assert np.allclose(np.linalg.norm(traj.states, axis=2), 1.0)
    assert traj.converged


def test_bad_inputs():
    with pytest.raises(ValueError, match="must be"):
        simulate(np.zeros((3, 2)), np.eye(3))
    with pytest.raises(ValueError, match="symmetric"):
        simulate(np.ones((3, 2)), np.array([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="temperature"):
        step(np.ones((3, 2)), np.eye(2), attention="softmax")
    with pytest.raises(ValueError, match="alpha"):
        step(np.ones((3, 2)), np.eye(2), alpha=0)
