"""Fast paths of the compiler passes give the results of the plain computations they replace.

The endgame simulates each snap layer on its own clusters' tokens only (docs/design.md §4 step 4);
validation and class refinement number values without sorting rows (np.unique(axis=0)).
"""

import numpy as np
import pytest

import exactformer as ef
import exactformer.compiler as compiler
from conftest import random_dataset
from exactformer import Dataset, InfeasibleError
from exactformer.compiler import endgame, geometry, validate
from exactformer.compiler.split import _mixed_classes
from exactformer.compiler.state import TokenState
from exactformer.errors import InternalError
from test_compile import structured_dataset


@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("kind", ["structured", "random"])
def test_snaps_land_every_token_and_match_the_full_forward(monkeypatch, compact, kind):
    """Each snap layer, applied to *all* tokens, gives the state the compiler simulated."""
    ds = (structured_dataset(60, n=20) if kind == "structured"
          else random_dataset(np.random.default_rng(5), N=40, n=(3, 9), d=4, m=(1, 3)))
    seen = {}
    real = compiler.snap_all

    def spy(builder, dest, targets, line, *args, **kwargs):
        seen["X0"], seen["n0"] = builder.state.X.copy(), len(builder.blocks)
        n = real(builder, dest, targets, line, *args, **kwargs)
        seen.update(X=builder.state.X.copy(), blocks=builder.blocks[seen["n0"]:], n=n,
                    want=targets[dest.target[dest.token_dest]])
        return n

    monkeypatch.setattr(compiler, "snap_all", spy)
    model = ef.compile(ds, compact=compact)
    assert len(seen["blocks"]) == seen["n"] == model.info["snap_layers"]
    X = seen["X0"]
    for block in seen["blocks"]:
        X = block.ff(X)
    tol = 1e-12 if compact else 1e-14
    np.testing.assert_allclose(seen["X"], X, rtol=0, atol=tol * ds.scale)
    np.testing.assert_allclose(seen["X"], seen["want"], rtol=0, atol=tol * ds.scale)


def test_check_landed_catches_a_token_left_on_the_line():
    endgame._check_landed(np.array([0.5, 1.0, 1.1]), 1.0, 4.0)
    with pytest.raises(InternalError, match="token 2 .* above the snap limit"):
        endgame._check_landed(np.array([0.5, 1.0, 1.6]), 1.0, 4.0)


def _ids_as_np_unique(X):
    _, inv = np.unique(X, axis=0, return_inverse=True)
    return inv.ravel()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_unique_rows_numbers_rows_like_np_unique(rng, dtype):
    vocab = rng.integers(-2, 3, size=(12, 3)).astype(dtype)
    vocab[0, 0] = -0.0
    vocab[1] = vocab[0] * 0  # 0.0 where row 0 has -0.0: one value after + 0.0
    X = vocab[rng.integers(0, 12, size=500)] + dtype(0)
    X = np.concatenate([X, rng.standard_normal((50, 3)).astype(dtype)])
    ids, first = validate.unique_rows(X)
    np.testing.assert_array_equal(ids, _ids_as_np_unique(X))
    np.testing.assert_array_equal(X[first], np.unique(X, axis=0))
    np.testing.assert_array_equal(first, np.unique(ids, return_index=True)[1])


def test_unique_rows_survives_a_hash_collision(monkeypatch, rng):
    X = rng.integers(0, 3, size=(200, 4)).astype(float)
    monkeypatch.setattr(validate, "_row_hash", lambda bits: np.zeros(len(bits), np.uint64))
    ids, first = validate.unique_rows(X)
    np.testing.assert_array_equal(ids, _ids_as_np_unique(X))
    np.testing.assert_array_equal(first, np.unique(ids, return_index=True)[1])


def _groups_reference(seq, value, n):
    """docs/design.md §3 groups, plainly: reduced count vectors keyed in order of appearance."""
    from math import gcd

    keys, group = {}, []
    for j in range(n):
        vals, counts = np.unique(value[seq == j], return_counts=True)
        g = 0
        for c in counts:
            g = gcd(g, int(c))
        group.append(keys.setdefault((tuple(vals), tuple(counts // g)), len(keys)))
    return np.array(group)


def test_analyse_ids_and_groups_match_the_plain_computation():
    ds = structured_dataset(80, n=12, d=3, seed=4)
    xs = [x.copy() for x in ds.inputs]
    xs[3][0, 1] = -0.0
    xs[5][2, 1] = 0.0  # the same value as xs[3][0] where it differs only in the zero's sign
    xs[5][2, [0, 2]] = xs[3][0, [0, 2]]
    xs.append(np.concatenate([xs[7], xs[7]]))  # same distribution as sequence 7
    ds = Dataset.from_sequences(xs, list(ds.targets) + [ds.targets[7]])
    a = validate.analyse(ds)
    X = np.concatenate(ds.inputs) + 0.0
    np.testing.assert_array_equal(a.value, _ids_as_np_unique(X))
    assert a.value[a.segments[3]] == a.value[a.segments[5] + 2]
    np.testing.assert_array_equal(a.targets, np.unique(np.concatenate(ds.targets) + 0.0, axis=0))
    np.testing.assert_array_equal(a.group, _groups_reference(a.seq, a.value, len(xs)))
    assert a.group[7] == a.group[len(xs) - 1]


def test_rule_i_names_the_first_conflict_in_sequence_order():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    y = np.array([[0.0, 0.0], [1.0, 1.0]])
    z = np.array([[5.0, 5.0], [6.0, 6.0]])
    ds = Dataset.from_sequences([z, x, x[::-1], x], [y[:1], y, y, y[::-1]])
    with pytest.raises(InfeasibleError, match=r"sequences 1 and 2 .*value \(3, 4\) \(position 1 "
                       r"of sequence 1, position 0 of sequence 2\) .* \(1, 1\) and \(0, 0\)"):
        validate.analyse(ds)


def _first_rule_i_conflict(a):
    """Rule (i) scanned token by token, as the plain loop does: (j, k, first j, first k)."""
    seen = {}
    for j, tids in enumerate(a.target_ids):
        for k, t in enumerate(tids.tolist()):
            pj, pk, pt = seen.setdefault((int(a.group[j]), int(a.value[a.segments[j] + k])),
                                         (j, k, t))
            if pt != t:
                return j, k, pj, pk
    return None


def test_rule_i_reports_the_conflict_the_plain_scan_finds(rng, monkeypatch):
    raised = 0
    for _ in range(60):
        ds = structured_dataset(int(rng.integers(2, 12)), n=int(rng.integers(2, 6)), d=2,
                                seed=int(rng.integers(1 << 30)))
        xs = [x[:2] if rng.random() < 0.5 else x for x in ds.inputs]
        ys = [ds.targets[int(rng.integers(len(xs)))][:1] if rng.random() < 0.3 else y
              for y in ds.targets]
        ds = Dataset.from_sequences(xs, ys)
        calls = {}
        monkeypatch.setattr(validate, "_check_feasible",
                            lambda d, a, _c=calls: _c.setdefault("a", a))
        a = validate.analyse(ds)
        monkeypatch.undo()
        want = _first_rule_i_conflict(a)
        if want is None:
            continue
        raised += 1
        j, k, pj, pk = want
        where = (f"sequence {j}: the value .* positions {pk} and {k}" if pj == j else
                 f"position {pk} of sequence {pj}, position {k} of sequence {j}")
        with pytest.raises(InfeasibleError, match=where):
            validate._check_feasible(ds, a)
    assert raised > 5


def _classes_reference(st, means, tol, rng):
    """The class refinement with the (T, 3) key sorted by np.unique(axis=0)."""
    N = st.n_sequences
    pairs = geometry.close_pairs(means, tol, rng)
    clusters = geometry._components(N, pairs[:, 0], pairs[:, 1])
    key = np.stack([st.cls[st.seq], clusters[st.seq], st.value], axis=1)
    node = np.unique(key, axis=0, return_inverse=True)[1].ravel()
    labels = geometry._components(N + node.max() + 1, st.seq, N + node)
    return np.unique(labels[:N], return_inverse=True)[1].ravel()


def test_classes_match_the_reference(rng):
    ds = structured_dataset(50, n=6, d=3, seed=2)
    a = validate.analyse(ds)
    st = TokenState(np.concatenate(ds.inputs), a.seq, a.value, a.segments, False, ds.scale)
    st.cls = rng.integers(0, 4, size=st.n_sequences)
    means = np.add.reduceat(st.X, st.segments[:-1], axis=0) / np.diff(st.segments)[:, None]
    means = np.round(means, 1)  # many equal means
    got = geometry._classes(st, means, 1e-9, np.random.default_rng(0))
    want = _classes_reference(st, means, 1e-9, np.random.default_rng(0))
    np.testing.assert_array_equal(got, want)


def test_mixed_classes_match_a_scan_per_class(rng):
    for _ in range(200):
        n = int(rng.integers(1, 30))
        cls = rng.integers(0, int(rng.integers(1, 8)), n)
        group = rng.integers(0, int(rng.integers(1, 5)), n)
        want = [(c, np.flatnonzero(cls == c)) for c in np.unique(cls)
                if len(np.unique(group[cls == c])) > 1]
        got = _mixed_classes(cls, group)
        assert [c for c, _ in got] == [c for c, _ in want]
        for (_, m1), (_, m2) in zip(got, want):
            np.testing.assert_array_equal(m1, m2)


def _chunk_start_reference(w, floors, clusters, hi, budget):
    """The estimate built from the actual snap units (one ``snap`` call per term)."""
    from exactformer import numeric as nm
    from exactformer.craft import snap

    def terms(floor, pair, s_top, units):
        built = snap(w, floor, [(c.low, c.high, c.target) for c in pair], exact=False)
        pre = nm.relu(built.U[units] @ w * s_top / float(w @ w) + built.b[units])
        return float(np.sum(np.max(np.abs(built.W[:, units]), axis=0) * pre))

    s_top = float(clusters[hi - 1].high)
    lo, ramps = hi - 1, 0.0
    while lo > 0:
        ramp = terms(floors[lo - 1], clusters[lo - 1:lo + 1], s_top, slice(2, 4))
        head = terms(floors[lo - 1], clusters[lo - 1:lo], s_top, slice(0, 2))
        if endgame.EPS * (ramps + ramp + head) > budget:
            break
        ramps += ramp
        lo -= 1
    return lo


@pytest.mark.parametrize("d", [2, 3, 16])
def test_chunk_start_matches_the_estimate_from_built_units(rng, d):
    w = rng.standard_normal(d)
    w /= np.linalg.norm(w)
    K = 300
    edges = np.cumsum(rng.uniform(0.5, 2.0, size=2 * K + 1))
    clusters = [endgame.Cluster(edges[2 * i + 1], edges[2 * i + 1] + rng.uniform(0, 0.02),
                                rng.standard_normal(d) * 3) for i in range(K)]
    floors = [edges[0]] + [c.high for c in clusters[:-1]]
    costs = endgame._unit_costs(w, floors, clusters)
    for budget in (1e-13, 1e-12, 1e-11):
        hi = K
        while hi > 0:
            lo = endgame._chunk_start(costs, clusters, hi, budget)
            assert lo == _chunk_start_reference(w, floors, clusters, hi, budget)
            hi = lo
