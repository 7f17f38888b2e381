"""Each pass of the compiler on its own (docs/design.md §4), on small crafted data."""

import numpy as np
import pytest

from exactformer import Dataset, InfeasibleError
from exactformer.compiler.geometry import close_pairs, find_trapezoid
from exactformer.compiler.leaders import plan_destinations
from exactformer.compiler.separate import shift_and_separate
from exactformer.compiler.split import split_classes
from exactformer.compiler.state import ModelBuilder, TokenState
from exactformer.compiler.validate import analyse
from exactformer.demo import demo_dataset


def _builder(ds, exact=False):
    a = analyse(ds)
    X = np.concatenate(ds.inputs)
    from exactformer import numeric as nm

    st = TokenState(nm.to_exact(X) if exact else X.copy(), a.seq, a.value, a.segments, exact,
                    ds.scale)
    return a, ModelBuilder(st)


def test_validate_groups_by_distribution():
    x = np.array([[0.0, 1.0], [2.0, 3.0]])
    ds = Dataset.from_sequences([x, x[::-1], np.concatenate([x, x]), x[:1]],
                                [x[:1] * 0, x[:1] * 0, x[:1] * 0, x[:1] * 0])
    a = analyse(ds)
    assert a.group[0] == a.group[1] == a.group[2] != a.group[3]


def test_validate_rule_i_within_one_sequence():
    x = np.array([[1.0, 1.0], [1.0, 1.0]])
    with pytest.raises(InfeasibleError, match="sequence 0: the value .* positions 0 and 1"):
        analyse(Dataset.from_sequences([x], [np.array([[0.0, 0.0], [1.0, 0.0]])]))


def test_validate_rule_i_across_a_group():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    y = np.array([[0.0, 0.0], [1.0, 1.0]])
    with pytest.raises(InfeasibleError, match="rule i"):
        analyse(Dataset.from_sequences([x, x], [y, y[::-1]]))


def test_validate_rule_ii():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(InfeasibleError, match="sequences 0 and 1 .* rule ii"):
        analyse(Dataset.from_sequences([x, x[::-1]], [np.zeros((1, 2)), np.ones((1, 2))]))


def test_separate_puts_tokens_in_the_positive_orthant_and_classes_by_mean():
    ds = demo_dataset()
    a, b = _builder(ds)
    shift_and_separate(b, np.random.default_rng(0))
    assert (b.state.X > 0).all()
    assert len(b.blocks) == 1 and b.blocks[0].sa.uniform
    # sequences 0 and 2 share their mean and tokens: one class; sequence 1 its own
    assert b.state.cls[0] == b.state.cls[2] != b.state.cls[1]


@pytest.mark.parametrize("compact", [False, True])
def test_split_separates_equal_means(compact):
    ds = demo_dataset()
    a, b = _builder(ds)
    rng = np.random.default_rng(0)
    shift_and_separate(b, rng)
    rounds = split_classes(b, a, rng, compact)
    assert rounds == 1
    assert len(set(b.state.cls.tolist())) == 3
    assert b.blocks[-1].kind == "split ramps + broadcast"


@pytest.mark.parametrize("exact", [False, True])
def test_split_rounds_that_split_nothing_cost_no_block(monkeypatch, exact):
    """Ramps that move nothing split nothing: the round is undone, point moves take over,
    and every kept round splits, so the block count stays within 2Σm + N + 1."""
    import exactformer.compiler.split as split
    from exactformer import compile
    from exactformer.compiler import strict_bound

    real = split._ramps

    def idle_ramps(st, todo, rng):
        units = real(st, todo, rng)
        return type(units)(units.U, units.b, units.W * 0)

    monkeypatch.setattr(split, "_ramps", idle_ramps)
    N = 6  # N sequences (0, a, -a): one shared token, one mean; N - 1 point-move rounds
    A = np.random.default_rng(3).normal(size=(N, 3))
    ds = Dataset.from_sequences([np.stack([0 * a, a, -a]) for a in A],
                                [np.eye(3)[[k % 3]] for k in range(N)])
    model = compile(ds, exact=exact)
    assert model.report.passed
    assert model.info["split_rounds"] == N - 1
    assert not any("ramps" in b.kind for b in model.blocks)
    assert model.n_blocks <= strict_bound(ds)


def test_destinations_share_targets_and_find_satellites():
    ds = demo_dataset()
    a, b = _builder(ds)
    rng = np.random.default_rng(0)
    shift_and_separate(b, rng)
    split_classes(b, a, rng, False)
    dest = plan_destinations(b, a, rng)
    # targets (1,0) [main of 0, 1] , (0,1) [main of 2], (1,0) as satellite of 2
    assert dest.satellites
    assert len(dest.moves) == 4
    assert len(dest.target) == 3
    first_tokens = a.segments[:2]
    assert dest.token_dest[first_tokens[0]] == dest.token_dest[first_tokens[1]]


def test_close_pairs_matches_brute_force(rng):
    P = rng.uniform(size=(300, 3))
    P[10] = P[20] + 1e-4
    delta = 0.05
    got = {tuple(p) for p in close_pairs(P, delta, rng).tolist()}
    d = np.linalg.norm(P[:, None] - P[None], axis=2)
    want = {(i, j) for i in range(300) for j in range(i + 1, 300) if d[i, j] < delta}
    assert got == want and (10, 20) in got


def test_trapezoid_gap_and_top():
    X = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    t = find_trapezoid(X, np.array([1]), np.array([1.0, 0.0]))
    assert t.gap == 1.0 and not t.top and t.center == 1.0
    t = find_trapezoid(X, np.array([2]), np.array([1.0, 0.0]))
    assert t.top and t.gap == 2.0
    assert find_trapezoid(X, np.array([1]), np.array([0.0, 1.0])) is None  # all at t = 0
