"""Hostile inputs (issue 13): bad files, options and paths get exit 2 and one line.

Every file under tests/data/repro/ reproduces a failure found on ede6f1d (see its README);
the CLI runs in process (typer's CliRunner), so each case costs milliseconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import exactformer as ef
from exactformer.cli import app

REPRO = Path(__file__).parent / "data" / "repro"
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, code: int = 2, words: str = "") -> None:
    """Exit ``code``, exactly one line on stderr starting with "error:", nothing else."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, (result.exit_code, result.stderr, result.stdout)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert words in lines[0], lines[0]


@pytest.fixture
def small(tmp_path):
    """A small dataset file and its compiled model."""
    rng = np.random.default_rng(0)
    data = tmp_path / "x.json"
    data.write_text(json.dumps({"inputs": [rng.normal(size=(4, 3)).tolist() for _ in range(4)],
                                "outputs": [rng.normal(size=(1, 3)).tolist() for _ in range(4)]}))
    model = tmp_path / "m.safetensors"
    assert cli("compile", data, "-o", model, "-q").exit_code == 0
    return data, model


@pytest.mark.parametrize("name, words", [
    ("olen_0d.npz", "'output_lengths' must be a 1-D array"),
    ("huge_shape.npz", "of memory needed, more than the"),
    ("j_deep.json", "nested too deeply"),
    ("j_huge_int.json", "beyond float64"),
    ("l_ragged.json", "'labels' must be a flat list"),
    ("l_codes_str.npz", "'codes' must hold real numbers"),
])
def test_bad_dataset_files(tmp_path, name, words):
    result = cli("compile", REPRO / "bad" / name, "-o", tmp_path / "m.safetensors")
    one_line_error(result, 2, words)
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("name", ["l_huge.json", "l_big.json"])
def test_labels_are_names(tmp_path, name):
    """Labels 0 and 10¹² (or 2·10⁸) are two classes: compiled in milliseconds, predicted back."""
    out = tmp_path / "m.safetensors"
    assert cli("compile", REPRO / "bad" / name, "-o", out, "-q").exit_code == 0
    result = cli("verify", out, REPRO / "bad" / name)
    assert result.exit_code == 0 and "accuracy 100.00 %" in result.stdout
    labels = json.loads((REPRO / "bad" / name).read_text())["labels"]
    classes = tmp_path / "c.json"
    assert cli("predict", out, REPRO / "bad" / name, "-o", classes).exit_code == 0
    assert json.loads(classes.read_text()) == labels


def test_text_labels_and_codes_by_row(tmp_path):
    rng = np.random.default_rng(3)
    xs = [rng.normal(size=(3, 2)).tolist() for _ in range(4)]
    data = tmp_path / "t.json"
    data.write_text(json.dumps({"inputs": xs, "labels": ["cat", "dog", "cat", "emu"]}))
    out = tmp_path / "m.safetensors"
    assert cli("compile", data, "-o", out, "-q").exit_code == 0
    assert ef.Transformer.load(out).info["classes"] == ["cat", "dog", "emu"]
    result = cli("predict", out, data)
    assert "sequence 1: class dog" in result.stdout and "accuracy" in result.stdout


@pytest.mark.parametrize("name, command, words", [
    ("nblocks_1e8.safetensors", "info", "n_blocks = 100000000"),
    ("ex_rat_hugeint.safetensors", "info", "beyond float64"),
    ("info_leak_list.safetensors", "info", None),
    ("cls_codes_str.safetensors", "predict", "metadata 'codes'"),
])
def test_bad_model_files(small, name, command, words):
    data, _ = small
    args = [command, REPRO / "models" / name] + ([data] if command == "predict" else [])
    result = cli(*args)
    if words is None:  # hostile but harmless metadata: shown, not obeyed
        assert result.exit_code == 0, result.stderr
    else:
        one_line_error(result, 2, words)


def _write_npz(path, **arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _npz_case(tmp_path, name, **override):
    base = dict(inputs=np.arange(12.0).reshape(6, 2), input_lengths=np.array([3, 3]),
                outputs=np.array([[1.0, 2.0], [3.0, 4.0]]), output_lengths=np.array([1, 1]))
    base.update(override)
    path = tmp_path / name
    _write_npz(path, **{k: v for k, v in base.items() if v is not None})
    return path


@pytest.mark.parametrize("override, words", [
    (dict(inputs=np.arange(12.0).reshape(6, 2) * 1j), "must hold real numbers"),
    (dict(outputs=np.array([[1 + 2j, 2], [3, 4]])), "must hold real numbers"),
    (dict(inputs=np.arange(12).reshape(6, 2).astype("m8[s]")), "must hold real numbers"),
    (dict(inputs=np.ones((6, 2), dtype=bool)), "must hold real numbers"),
    (dict(inputs=np.array([["1"] * 2] * 6)), "must hold real numbers"),
    (dict(input_lengths=np.array([3.0, 3.0])), "must hold integers"),
    (dict(input_lengths=np.array([2**62, 2**62])), "sum to"),
    (dict(input_lengths=np.array([-1, 7])), "negative input length"),
    (dict(output_lengths=np.array(2)), "must be a 1-D array"),
    (dict(inputs=np.arange(6.0)), "must be a 2-D"),
])
def test_npz_members_of_the_wrong_kind(tmp_path, override, words):
    path = _npz_case(tmp_path, "d.npz", **override)
    one_line_error(cli("compile", path, "-o", tmp_path / "m.safetensors"), 2, words)


@pytest.mark.parametrize("payload, words", [
    ({"inputs": [[["1", 2]]], "outputs": [[[1, 2]]]}, "not a number"),
    ({"inputs": [[[True, 2]]], "outputs": [[[1, 2]]]}, "not a number"),
    ({"inputs": [[[1, 2], [3]]], "outputs": [[[1, 2]]]}, "token 1 has 1 numbers"),
    ({"inputs": [[[1, 2]]], "outputs": [[[1, 2e400]]]}, "not a finite number"),
    ({"inputs": [[[1, 2]]], "labels": [True]}, "'labels' must be a flat list"),
    ({"inputs": [[[1, 2]]], "labels": [1.5]}, "'labels' must be a flat list"),
    ({"inputs": [[[1, 2]]], "labels": ["a", 1]}, "'labels' must be a flat list"),
    ({"inputs": [[[1, 2]]], "outputs": "x"}, "must be a list of sequences"),
    ([1, 2], "expected an object"),
])
def test_json_structure(tmp_path, payload, words):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(payload))
    one_line_error(cli("compile", path, "-o", tmp_path / "m.safetensors"), 2, words)


def test_json_nan_literal(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"inputs": [[[1, NaN]]], "outputs": [[[1, 2]]]}')
    one_line_error(cli("compile", path, "-o", tmp_path / "m.safetensors"), 2, "NaN")


def test_python_api_refuses_complex_and_text():
    with pytest.raises(ef.DatasetError, match="real numbers"):
        ef.Dataset.from_sequences([np.ones((2, 2)) * 1j], [np.ones((1, 2))])
    with pytest.raises(ef.DatasetError, match="real numbers"):
        ef.Dataset.from_sequences([[["1", "2"]]], [np.ones((1, 2))])


# -- options and paths ------------------------------------------------------------------------
def _outputs(tmp_path, data):
    return ["", "/", str(tmp_path), "/proc/m.safetensors", "a" * 300 + ".safetensors",
            str(data / "m.safetensors"), "/dev/null", str(tmp_path / "no" / "m.safetensors")]


@pytest.mark.parametrize("k", range(8))
def test_compile_output_paths(small, tmp_path, k):
    data, _ = small
    out = _outputs(tmp_path, data)[k]
    before = sorted(os.listdir(tmp_path))
    one_line_error(cli("compile", data, "-o", out), 2)
    assert sorted(os.listdir(tmp_path)) == before
    assert Path("/dev/null").is_char_device()


@pytest.mark.parametrize("command", ["run", "predict"])
@pytest.mark.parametrize("out", ["", "/", "/proc/o.json", "/dev/null", "o.csv", "x.json"])
def test_run_and_predict_output_paths(small, command, out):
    data, model = small
    out = str(data) if out == "x.json" else out
    before = data.read_bytes()
    one_line_error(cli(command, model, data, "-o", out), 2)
    assert data.read_bytes() == before


def test_output_extensions(small, tmp_path):
    data, model = small
    one_line_error(cli("compile", data, "-o", tmp_path / "x.pt"), 2, ".safetensors")
    one_line_error(cli("run", model, data, "-o", tmp_path / "out.csv"), 2, ".npz or .json")
    assert cli("run", model, data, "-o", tmp_path / "out.json", "-q").exit_code == 0
    assert "inputs" in json.loads((tmp_path / "out.json").read_text())


def test_replaced_file_keeps_its_mode(small, tmp_path):
    data, model = small
    out = tmp_path / "o.npz"
    out.write_bytes(b"old")
    out.chmod(0o640)
    assert cli("run", model, data, "-o", out, "-q").exit_code == 0
    assert out.stat().st_mode & 0o777 == 0o640
    assert np.load(out)["outputs"].shape[1] == 3


@pytest.mark.parametrize("args, words", [
    (["--seed", "-1"], "--seed"),
    (["--seed", "x"], "--seed"),
    (["--attention", "cosine"], "--attention"),
])
def test_bad_option_values_are_one_line(small, tmp_path, args, words):
    data, _ = small
    one_line_error(cli("compile", data, "-o", tmp_path / "m2.safetensors", *args), 2, words)


@pytest.mark.parametrize("tol", ["inf", "1e300", "nan", "-1"])
def test_verify_tolerance_is_bounded(small, tol):
    data, model = small
    one_line_error(cli("verify", model, data, "--tol", tol), 2, "--tol")


def test_what_the_user_did_wrong(small, tmp_path):
    data, model = small
    one_line_error(cli("verify", data, model), 2, "arguments swapped")
    labels = tmp_path / "l.json"
    payload = json.loads(data.read_text())
    labels.write_text(json.dumps({"inputs": payload["inputs"], "labels": [0, 1, 0, 1]}))
    one_line_error(cli("verify", model, labels), 2, "not a classification model")


def test_quiet_everywhere_and_version(small, tmp_path):
    data, model = small
    assert cli("--version").stdout.startswith("exactformer ")
    for args in (["verify", model, data], ["info", model],
                 ["run", model, data, "-o", tmp_path / "o.npz"]):
        result = cli(*args, "-q")
        assert result.exit_code == 0 and result.stdout == "", (args, result.stdout)


def test_train_checks_its_options_first(small, tmp_path):
    data, _ = small
    one_line_error(cli("train", data, "-o", tmp_path / "t.pt"), 2, ".safetensors")
    one_line_error(cli("train", data, "-o", tmp_path / "t.safetensors", "--attention", "relu"),
                   2, "hardmax or softmax")


# -- feasible data that used to be refused (or hang) ------------------------------------------
@pytest.mark.parametrize("name, flags", [
    ("nm2_1e-07.npz", []),  # means 1e-7 × scale apart: a centred broadcast separates them
    ("f2_209.npz", []),  # tokens 2.4e-7 × scale apart, means 1.6e-11 apart
    ("f2_209.npz", ["--compact"]),
    ("far_targets.npz", []),  # inputs O(1), targets 1e12: inputs separated at their scale
    ("min_329.json", []),
    ("min_51.json", ["--exact", "--seed", "2"]),
])
def test_feasible_repro_files_compile(tmp_path, name, flags):
    out = tmp_path / "m.safetensors"
    result = cli("compile", REPRO / name, "-o", out, "-q", *flags)
    assert result.exit_code == 0, result.stderr
    assert cli("verify", out, REPRO / name, "-q").exit_code == 0


@pytest.mark.parametrize("scale", [1e-300, 1e-200, 1e200, 1e300])
@pytest.mark.parametrize("exact", [False, True])
def test_whole_data_scales(tmp_path, scale, exact):
    """A dataset at any scale compiles: built at scale ~1, the model scales back exactly,
    in its last snap (no extra block) unless float64 could not keep that bit for bit."""
    rng = np.random.default_rng(0)
    ds = ef.Dataset.from_sequences([rng.normal(size=(4, 3)) * scale for _ in range(5)],
                                   [rng.normal(size=(1, 3)) * scale for _ in range(5)])
    path = tmp_path / "d.npz"
    ef.save_dataset(ds, path)
    out = tmp_path / "m.safetensors"
    result = cli("compile", path, "-o", out, *(["--exact"] if exact else []))
    assert result.exit_code == 0 and result.stderr == "", result.stderr
    model = ef.Transformer.load(out)
    at_one = ef.compile(ef.Dataset.from_sequences([x / scale for x in ds.inputs],
                                                  [y / scale for y in ds.targets]))
    from exactformer.compiler import FOLD_EXPONENT
    extra = not exact and abs(np.log2(scale)) > FOLD_EXPONENT
    assert (model.blocks[-1].kind == "rescale") == extra
    assert model.n_blocks == at_one.n_blocks + extra
    for x, y in zip(ds.inputs, ds.targets):
        np.testing.assert_allclose(model(x)[:1] if not exact else np.asarray(
            model(x)[:1], dtype=float), y, rtol=1e-12, atol=0)


def test_equal_means_sharing_a_token_split_in_few_rounds():
    """Issue 13: N sequences (0, a, −a) share a token and a mean; N − 1 rounds before."""
    N = 200
    A = np.random.default_rng(7).normal(size=(N, 3))
    ds = ef.Dataset.from_sequences([np.stack([0 * a, a, -a]) for a in A],
                                   [np.eye(3)[[k % 2]] for k in range(N)])
    model = ef.compile(ds)
    assert model.report.passed and model.info["split_rounds"] <= 3
    assert model.n_blocks <= N + 10


@pytest.mark.parametrize("args", [
    ["explain", "{model}", "{data}", "-o", "/dev/null"],
    ["explain", "{model}", "{data}", "-o", "fig.pdf"],
    ["export", "{model}", "--to", "onnx", "-o", "{model}"],
    ["export", "{model}", "--to", "onnx", "-o", "/proc/m.onnx"],
])
def test_other_writers_check_their_paths(small, args):
    data, model = small
    args = [a.format(model=model, data=data) for a in args]
    before = model.read_bytes()
    one_line_error(cli(*args), 2)
    assert model.read_bytes() == before


def _classifier(tmp_path):
    rng = np.random.default_rng(2)
    data = tmp_path / "c.json"
    data.write_text(json.dumps({"inputs": [rng.normal(size=(3, 2)).tolist() for _ in range(4)],
                                "labels": [5, 7, 5, 9]}))
    out = tmp_path / "c.safetensors"
    assert cli("compile", data, "-o", out, "-q").exit_code == 0
    return data, out


def rewritten_model(src, out, meta=None, tensors=None):
    """A copy of a safetensors model file with metadata keys and tensors replaced (None:
    dropped): the tampered files of the hostile tests."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(src), framework="numpy") as fh:
        old_meta = dict(fh.metadata())
        old = {k: fh.get_tensor(k) for k in fh.keys()}
    for target, changes in ((old_meta, meta or {}), (old, tensors or {})):
        for k, v in changes.items():
            if v is None:
                target.pop(k)
            else:
                target[k] = v
    save_file(old, str(out), metadata=old_meta)
    return out


def _with_info(path, tmp_path, **changes):
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        info = json.loads(fh.metadata()["info"])
    info.update(changes)
    return rewritten_model(path, tmp_path / "bad.safetensors", meta={"info": json.dumps(info)})


def test_predict_names_and_hostile_codes(tmp_path):
    data, model = _classifier(tmp_path)
    result = cli("predict", model, data)
    assert result.exit_code == 0 and "class 7" in result.stdout and "100.00 %" in result.stdout
    codes = ef.Transformer.load(model).info["codes"]
    nan = [[float("nan")] * 2] + codes[1:]
    one_line_error(cli("predict", _with_info(model, tmp_path, codes=nan), data), 2, "NaN")
    one_line_error(cli("predict", _with_info(model, tmp_path, codes=codes[:1]), data), 2,
                   "'classes'")
    huge = (np.array(codes) * 1e300).tolist()
    result = cli("predict", _with_info(model, tmp_path, codes=huge), data)
    assert result.exit_code == 0 and "none of the class codes" in result.stdout


def test_softmax_exact_model_runs_its_floats(tmp_path, small):
    data, _ = small
    out = tmp_path / "s.safetensors"
    assert cli("compile", data, "-o", out, "--exact", "--attention", "softmax", "-q"
               ).exit_code == 0
    result = cli("run", out, data, "-o", tmp_path / "o.npz")
    assert result.exit_code in (0, 2) and "Traceback" not in result.stderr
    if result.exit_code == 2:
        one_line_error(result, 2, "float realisation")


@pytest.mark.parametrize("attention", ["hardmax", "softmax"])
def test_long_sequence_attention_in_row_chunks(tmp_path, attention):
    """One sequence of 3000 tokens (9e6 scores > one 2e6 chunk): the chunked forward pass
    agrees with the dense reader of docs/design.md §2 and reproduces the targets."""
    from exactformer.forward import query_chunks
    from test_format import independent_forward

    idx = np.arange(3000)[None, :]
    rows = list(query_chunks(idx))
    assert len(rows) > 1 and rows[0].start == 0 and rows[-1].stop == 3000
    rng = np.random.default_rng(4)
    ds = ef.Dataset.from_sequences([rng.normal(size=(3000, 3)), rng.normal(size=(7, 3))],
                                   [rng.normal(size=(2, 3)), rng.normal(size=(1, 3))])
    model = ef.compile(ds, attention=attention)
    path = tmp_path / "m.safetensors"
    model.save(path)
    dense = independent_forward(path, ds.inputs[0])
    np.testing.assert_allclose(model(ds.inputs[0]), dense, rtol=0, atol=1e-12 * ds.scale)
    np.testing.assert_allclose(dense[:2], ds.targets[0], rtol=0, atol=1e-12 * ds.scale)


@pytest.mark.slow
@pytest.mark.parametrize("attention, n", [("hardmax", 30_000), ("softmax", 10_000)])
def test_one_long_sequence_within_4gb(tmp_path, attention, n):
    """One long sequence compiles and verifies under a 4 GB address-space limit (its dense
    scores would need 7 GB): attention runs in query chunks. The 10⁵-token runs (docs/limits.md)
    take 6 (hardmax) to 25 (softmax) CPU minutes: more than CI's budget holds beside the rest."""
    import subprocess
    import sys

    code = (
        "import resource, numpy as np, exactformer as ef\n"
        "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
        "rng = np.random.default_rng(0)\n"
        f"ds = ef.Dataset.from_sequences([rng.normal(size=({n}, 4))], "
        "[rng.normal(size=(2, 4))])\n"
        f"m = ef.compile(ds, attention={attention!r})\n"
        "assert m.report.passed and ef.verify(m, ds).passed\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=7200,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
