"""The self-attention particle system: integrator, hardmax limit, chunking, W2 (fast lane)."""

import math

import numpy as np
import pytest
from scipy.linalg import expm

from exactformer.dynamics import random_spd
from exactformer.meanfield import (
    SelfAttentionFlow,
    argmax_tokens,
    distinct_points,
    integrate,
    projection_map,
    simulate,
    wasserstein2,
)


def _tokens(seed, n, d, condition=4.0):
    rng = np.random.default_rng(seed)
    A = random_spd(d, rng, condition)
    return rng.uniform(-1, 1, size=(n, d)), A


def test_integrator_matches_the_exact_solution_of_a_linear_system():
    # y' = M y (a damped rotation): y(t) = expm(t M) y0
    M = np.array([[-0.5, 2.0, 0.0], [-2.0, -0.5, 0.0], [0.0, 0.0, 0.3]])
    y0 = np.array([[1.0, 0.5, -1.0], [0.0, 2.0, 0.25]])  # two "tokens", rows
    times = [0.0, 0.3, 1.0, 2.5, 4.0]
    errors = []
    for rtol in (1e-5, 1e-8):
        sol = integrate(lambda y: y @ M.T, y0, times, rtol=rtol, atol=rtol * 1e-3)
        assert np.array_equal(sol.times, times)  # lands exactly on every output time
        exact = np.stack([y0 @ expm(t * M).T for t in times])
        errors.append(np.abs(sol.states - exact).max())
        assert errors[-1] <= 50 * rtol * np.abs(exact).max()
        assert sol.evaluations == 1 + 6 * (sol.steps + sol.rejected)
    assert errors[1] < errors[0] / 100  # tighter tolerance, (much) smaller error


def test_integrator_stops_and_rejects_bad_input():
    sol = integrate(lambda y: -y, np.ones((1, 1)), [0.0, 100.0], rtol=1e-8, atol=1e-12,
                    stop=lambda t, y, v: np.abs(y).max() < 1e-3)
    assert sol.stopped and sol.times[-1] == pytest.approx(math.log(1e3), rel=0.2)
    assert abs(sol.final[0, 0] - math.exp(-sol.times[-1])) < 1e-7
    with pytest.raises(ValueError):
        integrate(lambda y: y, np.ones(2), [1.0, 0.5])
    with pytest.raises(RuntimeError):
        integrate(lambda y: y, np.ones(2), [0.0, 10.0], max_steps=3)


@pytest.mark.parametrize("beta", [3.0, 1e3, math.inf])
def test_chunked_velocity_equals_the_dense_formula(beta):
    X, A = _tokens(1, 37, 3)
    rng = np.random.default_rng(2)
    Q, V = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    K = np.linalg.solve(Q.T, A)  # QᵀK = A
    S = (X @ Q.T) @ (X @ K.T).T
    if math.isinf(beta):
        W = (S >= S.max(axis=1, keepdims=True) - 1e-12 * np.abs(S).max(axis=1, keepdims=True))
        W = W.astype(float)
    else:
        W = np.exp(beta * (S - S.max(axis=1, keepdims=True)))
    P = W / W.sum(axis=1, keepdims=True)
    dense = (P @ X - X) @ V.T
    raw = P @ X @ V.T
    for chunk in (1, 5, 37, 1000):
        f = SelfAttentionFlow(Q, K, V, beta, chunk=chunk)
        assert np.allclose(f(X), dense, rtol=1e-12, atol=1e-12)
        g = SelfAttentionFlow(Q, K, V, beta, normalised=False, chunk=chunk)
        assert np.allclose(g(X), raw, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("beta", [10.0, 1e4])
def test_single_precision_exponentials_stay_below_the_step_tolerance(beta):
    # float32 exp, float64 scores and sums: each weight is off by <= ~1e-7 (1 + |argument|)
    # relative; the velocity error must stay far below the experiment's rtol = 1e-6
    X, A = _tokens(7, 300, 2)
    I = np.eye(2)
    double = SelfAttentionFlow(I, A, I, beta, chunk=64)(X)
    single = SelfAttentionFlow(I, A, I, beta, chunk=64, single_exp=True)(X)
    err = np.abs(single - double).max()
    assert 0 < err <= 1e-7 * np.abs(X).max()


def test_softmax_velocity_tends_to_hardmax():
    X, A = _tokens(3, 50, 2)
    I = np.eye(2)
    hard = SelfAttentionFlow(I, A, I, math.inf)(X)
    S = X @ A @ X.T
    top2 = np.sort(S, axis=1)[:, -2:]
    gap = float((top2[:, 1] - top2[:, 0]).min())
    for beta in (10 / gap, 40 / gap):
        soft = SelfAttentionFlow(I, A, I, beta)(X)
        # weights off the argmax are at most n·exp(-β·gap), times the spread of the tokens
        bound = 50 * math.exp(-beta * gap) * 2 * np.abs(X).max() * 2
        assert np.abs(soft - hard).max() <= bound


def test_raw_form_with_identity_value_grows_a_leader_like_exp_t():
    X = np.array([[2.0, 0.0], [0.5, 0.1], [-1.0, 0.3]])
    I = np.eye(2)
    sol = simulate(X, SelfAttentionFlow(I, I, I, math.inf, normalised=False), [0.0, 1.0, 2.0],
                   rtol=1e-10, atol=1e-12)
    assert np.allclose(sol.states[:, 0], np.outer(np.exp([0.0, 1.0, 2.0]), X[0]), rtol=1e-8)


def test_explicit_projection_equals_the_integrated_hardmax_flow():
    # tokens on an A-ellipse (all leaders) and inside it: every best key is a leader
    rng = np.random.default_rng(4)
    A = random_spd(2, rng, 3.0)
    w, E = np.linalg.eigh(A)
    ang = rng.uniform(0, 2 * np.pi, 30)
    ring = np.c_[np.cos(ang), np.sin(ang)] @ (E / np.sqrt(w)).T
    inner = 0.6 * ring[:20] * rng.uniform(0, 1, (20, 1))
    X = np.vstack([ring, inner])
    I = np.eye(2)
    exact = projection_map(X, I, A, I)
    assert exact.method == "explicit"
    best, strict = argmax_tokens(X, A)
    assert strict.all() and np.array_equal(exact.image, X[best])
    flow = projection_map(X, I, A, I, tol=1e-11, method="integrate")
    assert flow.method == "integrated" and flow.solution.stopped
    assert np.abs(flow.image - exact.image).max() < 1e-9


def test_projection_of_a_general_configuration_is_a_stationary_point():
    X, A = _tokens(5, 40, 2)
    I = np.eye(2)
    proj = projection_map(X, I, A, I)
    v = SelfAttentionFlow(I, A, I, math.inf)(proj.image)
    assert proj.method == "integrated" and proj.solution.stopped
    assert np.abs(v).max() <= 1e-9 * np.abs(X).max()
    # leaders (strict self-maximisers) never move under V = I
    best, strict = argmax_tokens(X, A)
    lead = np.flatnonzero((best == np.arange(len(X))) & strict)
    # (up to the integration error: followers arriving at tol-level can tie with them)
    assert len(lead) >= 1 and np.abs(proj.image[lead] - X[lead]).max() < 1e-9


def test_wasserstein2_trivial_cases():
    pytest.importorskip("ot")
    rng = np.random.default_rng(6)
    X = rng.standard_normal((60, 3))
    shift = np.array([0.3, -0.4, 1.2])
    assert wasserstein2(X, X) == pytest.approx(0.0, abs=1e-7)
    assert wasserstein2(X, X + shift) == pytest.approx(np.linalg.norm(shift), rel=1e-9)
    # two atoms: half the mass moves by 2
    assert wasserstein2(np.array([[0.0], [0.0]]), np.array([[0.0], [2.0]])) == \
        pytest.approx(math.sqrt(2.0), rel=1e-12)
    Y = X[rng.integers(0, 5, 60)]  # many copies of 5 points
    P, counts = distinct_points(Y, 1e-9)
    assert len(P) <= 5 and counts.sum() == 60
    assert wasserstein2(X, P, counts) == pytest.approx(wasserstein2(X, Y), rel=1e-9)


def test_bad_input_is_refused():
    I = np.eye(2)
    with pytest.raises(ValueError):
        SelfAttentionFlow(I, I, np.eye(3), 1.0)
    with pytest.raises(ValueError):
        SelfAttentionFlow(I, I, I, 0.0)
    with pytest.raises(ValueError):
        simulate(np.ones((3, 3)), SelfAttentionFlow(I, I, I, 1.0), [0.0, 1.0])
    with pytest.raises(ValueError):
        projection_map(np.full((2, 2), np.nan), I, I, I)
