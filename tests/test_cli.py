"""The command line as a user runs it: exit codes, one-line errors, files.

Commands run in process (typer's CliRunner, :func:`conftest.run_cli`); one test per command
runs it as a separate process (:func:`conftest.run_cli_process`), end to end.
"""

import json

import numpy as np
import pytest

from conftest import run_cli, run_cli_process
from exactformer import Dataset, Transformer, save_dataset


@pytest.fixture
def data_file(tmp_path, rng):
    xs = [rng.standard_normal((int(n), 3)) for n in rng.integers(2, 8, size=12)]
    ys = [rng.standard_normal((1 + j % 2, 3)) for j in range(12)]
    path = tmp_path / "data.npz"
    save_dataset(Dataset.from_sequences(xs, ys), path)
    return path


def one_error_line(proc):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]


@pytest.mark.parametrize("flags", [[], ["--compact"], ["--exact"]])
def test_compile_verify_info_run(tmp_path, data_file, flags):
    model = tmp_path / "m.safetensors"
    proc = run_cli("compile", data_file, "-o", model, *flags)
    assert proc.returncode == 0, proc.stderr
    assert "PASS" in proc.stdout and "paper" in proc.stdout
    proc = run_cli("verify", model, data_file)
    assert proc.returncode == 0 and "PASS" in proc.stdout
    if "--exact" in flags:
        assert "exact rational" in proc.stdout and "max abs error 0," in proc.stdout
    proc = run_cli("info", model)
    assert proc.returncode == 0
    for word in ("translate", "broadcast", "collapse", "snap", "parameters"):
        assert word in proc.stdout
    out = tmp_path / "out.npz"
    proc = run_cli("run", model, data_file, "-o", out)
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as z:
        assert z["outputs"].shape == z["inputs"].shape
        with np.load(data_file) as ref:
            first = z["outputs"][0]
            np.testing.assert_allclose(first, ref["outputs"][0], atol=1e-12)


def test_compile_verify_info_run_as_processes(tmp_path, data_file):
    """End to end: each core command as its own process, as a user's shell runs it."""
    model, out = tmp_path / "m.safetensors", tmp_path / "out.npz"
    proc = run_cli_process("compile", data_file, "-o", model)
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stderr
    proc = run_cli_process("verify", model, data_file)
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stderr
    proc = run_cli_process("info", model)
    assert proc.returncode == 0 and "collapse" in proc.stdout, proc.stderr
    proc = run_cli_process("run", model, data_file, "-o", out)
    assert proc.returncode == 0 and out.stat().st_size > 0, proc.stderr
    proc = run_cli_process("verify", tmp_path / "missing.safetensors", data_file)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr


def test_verify_fails_on_a_tampered_model(tmp_path, data_file):
    model = tmp_path / "m.safetensors"
    assert run_cli("compile", data_file, "-o", model, "-q").returncode == 0
    m = Transformer.load(model)
    last = m.blocks[-1].ff
    last.W = last.W * 1.001
    m.save(tmp_path / "bad.safetensors")
    proc = run_cli("verify", tmp_path / "bad.safetensors", data_file)
    assert proc.returncode == 1 and "FAIL" in proc.stdout


def test_verify_against_other_data_fails(tmp_path, data_file, rng):
    model = tmp_path / "m.safetensors"
    assert run_cli("compile", data_file, "-o", model, "-q").returncode == 0
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"inputs": [rng.standard_normal((3, 3)).tolist()],
                                 "outputs": [rng.standard_normal((1, 3)).tolist()]}))
    assert run_cli("verify", model, other).returncode == 1


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


BAD_DATA = {
    "missing.npz": None,
    "nan.npz": dict(inputs=np.array([[np.nan, 1.0], [1, 2]]), input_lengths=np.array([2]),
                    outputs=np.array([[1.0, 2]]), output_lengths=np.array([1])),
    "inf_target.npz": dict(inputs=np.ones((2, 2)), input_lengths=np.array([2]),
                           outputs=np.array([[np.inf, 2]]), output_lengths=np.array([1])),
    "lengths.npz": dict(inputs=np.zeros((3, 2)), input_lengths=np.array([2]),
                        outputs=np.array([[1.0, 2]]), output_lengths=np.array([1])),
    "d1.npz": dict(inputs=np.zeros((3, 1)), input_lengths=np.array([3]),
                   outputs=np.array([[1.0]]), output_lengths=np.array([1])),
    "m0.npz": dict(inputs=np.ones((3, 2)), input_lengths=np.array([3]),
                   outputs=np.zeros((0, 2)), output_lengths=np.array([0])),
    "m_gt_n.npz": dict(inputs=np.ones((1, 2)), input_lengths=np.array([1]),
                       outputs=np.zeros((2, 2)), output_lengths=np.array([2])),
    "keys.npz": dict(foo=np.ones(2)),
    "shape.npz": dict(inputs=np.ones(4), input_lengths=np.array([4]),
                      outputs=np.ones((1, 2)), output_lengths=np.array([1])),
}


@pytest.mark.parametrize("name", sorted(BAD_DATA))
def test_bad_npz_is_exit_2_one_line(tmp_path, name):
    path = tmp_path / name
    if BAD_DATA[name] is not None:
        _npz(path, **BAD_DATA[name])
    out = tmp_path / "m.safetensors"
    line = one_error_line(run_cli("compile", path, "-o", out))
    assert not out.exists()
    assert name.split(".")[0].split("_")[0] in line or "sequence" in line or "missing" in line


@pytest.mark.parametrize("payload, words", [
    ({"inputs": [[[1, 2], [3, 4]], [[3, 4], [1, 2]]], "outputs": [[[0, 0]], [[1, 1]]]},
     ["sequences 0 and 1", "rule ii"]),
    ({"inputs": [[[1, 2], [3, 4]], [[3, 4], [1, 2]]], "outputs": [[[0, 0], [1, 1]],
                                                                  [[0, 0], [1, 1]]]},
     ["sequences 0 and 1", "rule i"]),
    ({"inputs": [[[1, 2], [1, 2]]], "outputs": [[[0, 0], [1, 1]]]}, ["sequence 0", "rule i"]),
    ({"inputs": [[[1, 2]], [[1, 2, 3]]], "outputs": [[[0, 0]], [[1, 1, 1]]]}, ["sequence 1"]),
    ({"inputs": "nope", "outputs": []}, ["list of sequences"]),
])
def test_infeasible_and_malformed_json(tmp_path, payload, words):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(payload))
    out = tmp_path / "m.safetensors"
    line = one_error_line(run_cli("compile", path, "-o", out))
    for w in words:
        assert w in line
    assert not out.exists()


def test_corrupt_and_foreign_model_files(tmp_path, data_file):
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"\x00\x01garbage")
    from safetensors.numpy import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": np.zeros((2, 2))}, str(foreign), metadata={"format": "pt"})
    for path in (garbage, foreign, tmp_path / "absent.safetensors"):
        one_error_line(run_cli("info", path))
        one_error_line(run_cli("verify", path, data_file))
        one_error_line(run_cli("run", path, data_file, "-o", tmp_path / "o.npz"))
    assert not (tmp_path / "o.npz").exists()


def test_dimension_mismatch_is_bad_input(tmp_path, data_file):
    model = tmp_path / "m.safetensors"
    assert run_cli("compile", data_file, "-o", model, "-q").returncode == 0
    other = tmp_path / "d2.json"
    other.write_text(json.dumps({"inputs": [[[1, 2]]], "outputs": [[[0, 0]]]}))
    line = one_error_line(run_cli("verify", model, other))
    assert str(other) in line and str(model) in line, line  # names both files
    one_error_line(run_cli("run", model, other, "-o", tmp_path / "o.npz"))


def test_demo(tmp_path):
    proc = run_cli_process("demo", "--out", tmp_path / "demo")  # end to end, as a process
    assert proc.returncode == 0, proc.stderr
    assert "PASS" in proc.stdout and "exact rational" in proc.stdout
    assert "0 abs, 0 rel" in proc.stdout
    for name in ("trajectories.png", "paths.png", "demo.safetensors", "demo.json"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    # the written model is exact and re-verifies
    demo = tmp_path / "demo"
    proc = run_cli("verify", demo / "demo.safetensors", demo / "demo.json")
    assert proc.returncode == 0 and "max abs error 0," in proc.stdout


def test_help_everywhere():
    for cmd in ([], ["compile"], ["verify"], ["info"], ["run"], ["demo"]):
        proc = run_cli(*cmd, "--help")
        assert proc.returncode == 0 and "Usage" in proc.stdout


def _commands(group=None, path=()):
    """Every command of the CLI as (path, click command), groups included."""
    import typer

    from exactformer.cli import app

    group = group or typer.main.get_command(app)
    for name, cmd in group.commands.items():
        yield (*path, name), cmd
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))


def test_every_help_names_arguments_alike():
    """Usage lines read `verify [OPTIONS] MODEL DATA` as in the README (typer wrote required
    arguments as `{MODEL}`), arguments are upper case, no flag shows a `<bool>` type, and
    every command that prints has -q; -h is --help everywhere."""
    for path, cmd in _commands():
        proc = run_cli(*path, "-h")
        assert proc.returncode == 0, path
        usage = proc.stdout.splitlines()[0]
        assert "{" not in usage and "}" not in usage, usage
        assert "<bool>" not in proc.stdout, path
        for param in cmd.params:
            if param.param_type_name == "argument":
                assert param.metavar and param.metavar.isupper(), (path, param.name)
                assert param.metavar in usage, (path, usage)
        if not hasattr(cmd, "commands"):
            assert any("-q" in p.opts for p in cmd.params), f"{path} has no -q"
    assert "verify [OPTIONS] MODEL DATA" in run_cli("verify", "--help").stdout


def test_command_lists_show_whole_short_help():
    """Each listed command has its own one-line summary: click's default cuts the docstring
    at its first period ("The paper's Fig." for tikhonov) or with "..."."""
    for path, cmd in [((), None), *_commands()]:
        if cmd is not None and not hasattr(cmd, "commands"):
            continue
        proc = run_cli(*path, "--help")
        listing = proc.stdout[proc.stdout.index("Commands:"):]
        for line in listing.splitlines()[1:]:
            name, _, short = line.strip().partition(" ")
            assert short.strip() and not short.rstrip().endswith(("...", "Fig.")), (path, line)
    groups = {p: c for p, c in _commands() if hasattr(c, "commands")}
    for sub in groups[("experiment",)].commands.values():
        assert sub.short_help and len(sub.short_help) <= 60, sub.name
        assert sub.short_help in run_cli("experiment", "--help").stdout


def test_info_shows_every_width_of_a_group_of_blocks(tmp_path):
    from typer.testing import CliRunner

    from exactformer.cli import app
    from exactformer.model import Block, FeedForward

    def ff(w):
        return FeedForward(np.ones((w, 2)), np.zeros(w), np.zeros((2, w)))

    blocks = [Block(ff(2), None, "point move"), Block(ff(4), None, "point move"),
              Block(ff(1), None, "snap")]
    path = tmp_path / "m.safetensors"
    Transformer(blocks, 2).save(path)
    res = CliRunner().invoke(app, ["info", str(path)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    rows = [line for line in res.output.splitlines() if "point move" in line or "snap" in line]
    assert "2–4" in rows[0] and "0–1" in rows[0]
    assert "2–4" not in rows[1]


@pytest.mark.parametrize("flags, code", [([], 0), (["--exact"], 1), (["--json"], 0)])
def test_a_closed_pipe_keeps_the_exit_status(tmp_path, data_file, flags, code):
    """`exactformer verify … | head -1`: the reader goes away; verify still exits with its
    own status (rich's console exited 1 there: "verification failed" for a passing model;
    the JSON line gave "error: Broken pipe", exit 2), and stderr stays empty."""
    import os
    import subprocess
    import sys

    model = tmp_path / "m.safetensors"
    assert run_cli("compile", data_file, "-o", model, "-q").returncode == 0
    read, write = os.pipe()
    os.close(read)  # every write to stdout fails with EPIPE, deterministically
    try:
        proc = subprocess.run([sys.executable, "-m", "exactformer", "verify", str(model),
                               str(data_file), *flags], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=600)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (code, "")
