"""The pass rule, fail-closed loading and exit codes (issue 12 cases 1, 3, 5, 6, 7)."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import exactformer as ef
from exactformer.cli import app
from exactformer.model import Block, FeedForward, Transformer

REPRO = Path(__file__).parent / "data" / "repro"


def translate_model(shift):
    """x ↦ x + shift (one always-on unit): outputs are known exactly."""
    d = len(shift)
    ff = FeedForward(np.zeros((1, d)), np.ones(1), np.asarray(shift, float).reshape(d, 1), 1.0)
    return Transformer([Block(ff, None, "translate")], d)


def test_close_targets_swapped_do_not_pass():
    """Case 1: inputs ~1e5, the output is the *other* of two targets 1e-6 apart."""
    model = translate_model([-1e5, 0.0])  # every output (0, 0)
    data = ef.Dataset.from_sequences([[[1e5, 0.0]], [[1e5, 0.0], [1e5, 0.0]]],
                                     [[[1e-6, 0.0]], [[0.0, 0.0]]])
    for certify in (False, True):
        r = ef.verify(model, data, certify=certify)
        assert not r.passed and not r.prefix_ok[0] and r.prefix_ok[1]
        assert r.max_rel_error < 1e-10  # within the old tolerance: only the rule catches it


def test_flipped_labels_do_not_pass():
    """Case 1 with labels: inputs ~1e11, each read-out is the other class's code."""
    model = translate_model([-1e11, 0.0])
    inputs = [np.array([[1e11, 1.0]]), np.array([[1e11, 0.0], [1e11, 0.0]])]
    data = ef.Dataset(inputs, [np.zeros((0, 2))] * 2, labels=np.array([0, 1]),
                      codes=np.array([[0.0, 0.0], [0.0, 1.0]]))
    r = ef.verify(model, data)
    assert r.accuracy == 0.0 and not r.passed


def test_output_after_the_read_out_is_judged_against_its_nearest_target():
    model = translate_model([0.0, 0.0])
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 0.0]])
    r = ef.verify(model, ef.Dataset.from_sequences([x], [x[:2]]))
    assert r.prefix_ok[0] and not r.set_ok[0]  # 0.5 is not within 1/4 of 0 or 1
    r = ef.verify(model, ef.Dataset.from_sequences([x[:2]], [x[:1]]))
    assert r.prefix_ok[0] and not r.set_ok[0]


def test_compile_refuses_targets_float64_cannot_tell_apart():
    """Case 6 (repro/s1.json): inputs ~1e8, targets k·1e-9."""
    data = ef.load_dataset(REPRO / "s1.json")
    with pytest.raises(ef.DatasetError, match="--exact"):
        ef.compile(data)
    result = CliRunner().invoke(app, ["compile", str(REPRO / "s1.json"), "-o", "m.safetensors"])
    assert result.exit_code == 2


def test_partial_rational_metadata_is_a_malformed_file(tmp_path):
    """Case 3: rationals for block 0 only must not load as an exact model."""
    rng = np.random.default_rng(3)
    data = ef.Dataset.from_sequences([rng.normal(size=(3, 2)) for _ in range(2)],
                                     [rng.normal(size=(1, 2)) for _ in range(2)])
    model = ef.compile(data, exact=True)
    path = tmp_path / "m.safetensors"
    model.save(path)
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(path), framework="numpy") as fh:
        meta = dict(fh.metadata())
    tensors = load_file(str(path))
    rational = json.loads(meta["rational"])
    meta["rational"] = json.dumps({k: v for k, v in rational.items() if k.startswith("blocks.0.")})
    save_file(tensors, str(tmp_path / "half.safetensors"), metadata=meta)
    with pytest.raises(ef.ModelFileError, match="partial"):
        Transformer.load(tmp_path / "half.safetensors")
    result = CliRunner().invoke(app, ["info", str(tmp_path / "half.safetensors")])
    assert result.exit_code == 2
    # in memory: rationals in the first layer only do not make the model exact
    mixed = model.as_float()
    mixed.blocks[0] = model.blocks[0]
    assert not mixed.exact and model.exact


@pytest.mark.parametrize("name", ["s3.json", "seed252.npz"])
def test_exact_models_floats_are_checked_in_their_own_right(name, tmp_path):
    """Case 5: the float64 tensors of an exact model are wrong; say so, do not use them."""
    data = ef.load_dataset(REPRO / name)
    model = ef.compile(data, exact=True)
    assert ef.verify(model, data).passed  # the rationals are proven
    assert model.info["float_realisation"] is False
    assert not ef.verify(model, data, exact=False).passed  # --float really runs the floats
    with pytest.raises(ef.ModelFileError, match="no float realisation"):
        model.float_model()
    path = tmp_path / "m.safetensors"
    model.save(path)
    runner = CliRunner()
    result = runner.invoke(app, ["verify", str(path), str(REPRO / name), "--float"])
    assert result.exit_code == 1
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 0 and "no float realisation" in result.output


def test_internal_failures_retry_a_new_draw():
    """Case 7 / min_329.json, min_51.json: a failed draw is retried, not reported as bad input."""
    data = ef.load_dataset(REPRO / "min_329.json")
    model = ef.compile(data)
    assert model.report.passed and model.info.get("draw", 0) >= 1
    data = ef.load_dataset(REPRO / "min_51.json")
    model = ef.compile(data, exact=True, seed=2)  # was "internal: cluster 0 …" as exit 2
    assert model.report.passed


def test_exit_codes_for_failed_checks_and_internal_errors(monkeypatch, tmp_path):
    from exactformer import compiler

    data = ef.Dataset.from_sequences([[[0.0, 1.0], [2.0, 1.0]], [[1.0, 3.0]]],
                                     [[[1.0, 1.0]], [[0.0, 2.0]]])
    path = tmp_path / "d.npz"
    ef.save_dataset(data, path)
    runner = CliRunner()

    def broken(*args, **kwargs):
        raise ef.InternalError("internal: a step failed")

    monkeypatch.setattr(compiler, "_build", broken)
    with pytest.raises(ef.InternalError, match="generic draws"):
        ef.compile(data)
    result = runner.invoke(app, ["compile", str(path), "-o", str(tmp_path / "m.safetensors")])
    assert result.exit_code == 3 and "Traceback" not in result.output
    assert not (tmp_path / "m.safetensors").exists()
    monkeypatch.undo()

    wrong = translate_model([5.0, 5.0])
    monkeypatch.setattr(compiler, "_build", lambda *a, **k: wrong)
    with pytest.raises(ef.VerificationError):
        ef.compile(data)
    result = runner.invoke(app, ["compile", str(path), "-o", str(tmp_path / "m.safetensors")])
    assert result.exit_code == 1 and not (tmp_path / "m.safetensors").exists()
    assert not issubclass(ef.VerificationError, ef.ExactformerError)
    assert not issubclass(ef.InternalError, ef.ExactformerError)
