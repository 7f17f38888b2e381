"""Fuzzing the dataset and model-file readers through the CLI (issue 13).

Every input must give exit 2 with exactly one ``error:`` line, or (a dataset) a model that
the independent reader of docs/design.md §2 (tests/test_format.py) confirms, or (a model
file) exit 0. Random bytes, random JSON trees, random npz members and dtypes, and targeted
strategies: deep nesting, huge literals, huge declared shapes, hostile metadata. The
default lane runs a few examples of each (< ~5 s); the slow lane many more.
"""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from exactformer.cli import app
from test_format import independent_forward

runner = CliRunner()
FAST = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 12)), deadline=None,
                suppress_health_check=list(HealthCheck), derandomize=True)
SLOW = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))


def _leaves(tree, depth=0):
    if isinstance(tree, list):
        for t in tree:
            yield from _leaves(t, depth + 1)
    else:
        yield depth, tree


def must_refuse(name: str, payload: bytes) -> bool:
    """An oracle written from docs/design.md §2 alone: numbers are real numbers.

    JSON: a string, boolean or null where a dataset's numbers go; npz: a member of complex,
    boolean, time or text dtype among the numeric arrays. (Not a full reader: only rules
    that the fuzzer's inputs break often.)
    """
    if name.endswith(".json"):
        try:
            data = json.loads(payload)
        except (ValueError, RecursionError):
            return False
        if not isinstance(data, dict):
            return False
        return any(type(v) not in (int, float) for key in ("inputs", "outputs", "codes")
                   if isinstance(data.get(key), list) for _, v in _leaves(data[key]))
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as z:
            kinds = {k: z[k].dtype.kind for k in ("inputs", "outputs") if k in z.files}
    except Exception:
        return False
    return any(kind not in "fiu" for kind in kinds.values())


def check_compile(tmp_path, name: str, payload: bytes) -> None:
    """compile FILE: exit 2 + one line, or a model the independent reader confirms."""
    import exactformer as ef

    data = tmp_path / name
    data.write_bytes(payload)
    out = tmp_path / "m.safetensors"
    if out.exists():
        out.unlink()
    result = runner.invoke(app, ["compile", str(data), "-o", str(out), "-q"])
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit), f"{type(result.exception).__name__}: {result.exception}"
    lines = result.stderr.strip().splitlines()
    if result.exit_code == 0:
        assert not must_refuse(name, payload), "accepted numbers that are not real numbers"
        ds = ef.load_dataset(data)
        if ds.labels is not None:
            from exactformer.classification import with_codes

            ds = with_codes(ds, ds.codes)
        for x, y in zip(ds.inputs, ds.targets):
            got = independent_forward(out, x)[: len(y)]
            assert np.all(np.abs(got - y) <= 1e-9 * ds.scale), (got, y)
        return
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (
        result.exit_code, result.stderr[-2000:])
    assert not out.exists()


def check_model(tmp_path, payload: bytes) -> None:
    path = tmp_path / "f.safetensors"
    path.write_bytes(payload)
    result = runner.invoke(app, ["info", str(path)])
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit), f"{type(result.exception).__name__}: {result.exception}"
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 0 or (result.exit_code == 2 and len(lines) == 1), (
        result.exit_code, result.stderr[-2000:])


# -- strategies ---------------------------------------------------------------------------------
numbers = st.one_of(st.integers(-10, 10), st.floats(-1e3, 1e3, allow_nan=False),
                    st.integers(-10**400, 10**400), st.floats(), st.booleans(),
                    st.text(max_size=3), st.none())
json_trees = st.recursive(numbers, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.sampled_from(
        ["inputs", "outputs", "labels", "codes", "x"]), kids, max_size=4)), max_leaves=40)


@st.composite
def near_datasets(draw):
    """Mostly well-formed JSON datasets with one thing possibly wrong."""
    N = draw(st.integers(1, 4))
    d = draw(st.integers(1, 3))
    rows = st.lists(st.one_of(st.floats(-5, 5, allow_nan=False), st.integers(-5, 5)),
                    min_size=d, max_size=d)
    inputs = [draw(st.lists(rows, min_size=1, max_size=4)) for _ in range(N)]
    payload: dict = {"inputs": inputs}
    if draw(st.booleans()):
        payload["outputs"] = [draw(st.lists(rows, min_size=1, max_size=2)) for _ in range(N)]
    else:
        payload["labels"] = draw(st.lists(st.one_of(st.integers(0, 10**12), st.text(
            "abc", min_size=1, max_size=2)), min_size=N, max_size=N))
    key = draw(st.sampled_from(["inputs", "outputs", "labels", None]))
    if key in payload and draw(st.booleans()):
        payload[key] = draw(json_trees)
    return json.dumps(payload).encode()


DTYPES = ["f8", "f4", "f2", "i8", "u8", "i1", "u1", "c16", "b1", "m8[s]", "M8[D]", "U3", "S2"]


@st.composite
def npz_files(draw):
    """npz files whose members have random dtypes and shapes (some well-formed)."""
    T = draw(st.integers(0, 6))
    d = draw(st.integers(0, 3))
    members = {}
    for key, shape in [("inputs", (T, d)), ("input_lengths", (draw(st.integers(0, 3)),)),
                       ("outputs", (draw(st.integers(0, 3)), d)),
                       ("output_lengths", (draw(st.integers(0, 3)),)),
                       ("labels", (draw(st.integers(0, 3)),))]:
        if draw(st.integers(0, 4)) == 0:
            continue
        dtype = draw(st.sampled_from(DTYPES[:1] * 4 + DTYPES))
        if draw(st.integers(0, 5)) == 0:
            shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
        if key.endswith("lengths") and dtype == "f8":
            dtype = "i8"
        values = draw(st.lists(st.integers(-3, 6), min_size=int(np.prod(shape)),
                               max_size=int(np.prod(shape))))
        members[key] = np.array(values).reshape(shape).astype(dtype)
    buf = io.BytesIO()
    np.savez(buf, **members)
    return buf.getvalue()


def huge_npz(rows: int) -> bytes:
    """An npz whose 'inputs' header declares ``rows`` rows (the data is a few bytes)."""
    buf = io.BytesIO()
    np.savez(buf, inputs=np.zeros((1, 2)), input_lengths=np.array([1]),
             outputs=np.zeros((1, 2)), output_lengths=np.array([1]))
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name in src.namelist():
            raw = src.read(name)
            if name == "inputs.npy":
                raw = raw.replace(b"(1, 2)", f"({rows}, 2)".encode())
                raw = raw[:10] + raw[10:].replace(b" " * (len(str(rows)) - 1), b"", 1)
            z.writestr(name, raw)
    return out.getvalue()


def safetensors_with(meta: dict, tensors: dict | None = None) -> bytes:
    from safetensors.numpy import save

    tensors = tensors or {"blocks.0.ff.U": np.zeros((1, 2)), "blocks.0.ff.b": np.ones(1),
                          "blocks.0.ff.W": np.ones((2, 1)), "blocks.0.ff.eta": np.array(1.0)}
    base = {"format": "exactformer/1", "attention": "hardmax", "temperature": "1.0",
            "d": "2", "n_blocks": "1"}
    base.update(meta)
    return save(tensors, metadata=base)


hostile_meta = st.fixed_dictionaries({}, optional={
    "n_blocks": st.sampled_from(["100000000", "1000000000000", "-1", "1e3", "x", "1" * 5000]),
    "d": st.sampled_from(["0", "3", "2" * 400, "-2"]),
    "attention": st.sampled_from(["softmax", "relu", ""]),
    "temperature": st.sampled_from(["nan", "-1", "inf", "1e-320"]),
    "info": st.one_of(json_trees.map(json.dumps), st.just("[" * 100_000),
                      st.just('{"codes": "abc"}'), st.just('{"codes": [[1e308, 1], [NaN, 2]]}'),
                      st.just('{"codes": [[1, 2]], "classes": [0, 1]}'),
                      st.just('{"softmax_off_argmax_weight": [1, 2]}'),
                      st.just('{"verified_by": "interval", "certified_delta_rel": "x"}')),
    "block_kinds": st.one_of(json_trees.map(json.dumps), st.just("[" * 50_000)),
    "rational": st.sampled_from(['{"blocks.0.ff.b": ["1' + "0" * 400 + '"]}', '[1]',
                                 '{"blocks.0.ff.b": ["1/0"]}', '{"blocks.0.ff.b": [[1]]}']),
})


# -- the fuzz tests --------------------------------------------------------------------------------
def _run(settings_, strategy, check):
    @settings_
    @given(strategy)
    def inner(payload):
        check(payload)

    inner()


@pytest.mark.parametrize("lane", [pytest.param(FAST, id="fast"),
                                  pytest.param(SLOW, id="slow", marks=pytest.mark.slow)])
def test_random_bytes(tmp_path, lane):
    for name in ("d.json", "d.npz"):
        _run(lane, st.binary(max_size=200), lambda b, n=name: check_compile(tmp_path, n, b))
    _run(lane, st.binary(max_size=200), lambda b: check_model(tmp_path, b))


@pytest.mark.parametrize("lane", [pytest.param(FAST, id="fast"),
                                  pytest.param(SLOW, id="slow", marks=pytest.mark.slow)])
def test_json_datasets(tmp_path, lane):
    _run(lane, json_trees.map(lambda t: json.dumps(t).encode()),
         lambda b: check_compile(tmp_path, "d.json", b))
    _run(lane, near_datasets(), lambda b: check_compile(tmp_path, "d.json", b))


@pytest.mark.parametrize("lane", [pytest.param(FAST, id="fast"),
                                  pytest.param(SLOW, id="slow", marks=pytest.mark.slow)])
def test_npz_members(tmp_path, lane):
    _run(lane, npz_files(), lambda b: check_compile(tmp_path, "d.npz", b))


@pytest.mark.parametrize("lane", [pytest.param(FAST, id="fast"),
                                  pytest.param(SLOW, id="slow", marks=pytest.mark.slow)])
def test_hostile_model_metadata(tmp_path, lane):
    _run(lane, hostile_meta.map(safetensors_with), lambda b: check_model(tmp_path, b))


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deep_nesting(tmp_path, depth):
    check_compile(tmp_path, "d.json", b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}")


@pytest.mark.parametrize("digits", [20, 309, 400, 5000])
def test_huge_literals(tmp_path, digits):
    big = "9" * digits
    check_compile(tmp_path, "d.json", f'{{"inputs": [[[{big}, 1], [0, 0]]], '
                                      f'"outputs": [[[1, 2]]]}}'.encode())
    check_compile(tmp_path, "d.json", f'{{"inputs": [[[1, 1]], [[0, 0]]], '
                                      f'"labels": [0, {big}]}}'.encode())


@pytest.mark.parametrize("rows", [10**6, 10**13, 10**18])
def test_huge_declared_shapes(tmp_path, rows):
    check_compile(tmp_path, "d.npz", huge_npz(rows))
