"""Exact classification (issue: labels in, class codes out, N + C + 1 blocks)."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import exactformer as ef
from conftest import run_cli, run_cli_process
from exactformer import DatasetError, InfeasibleError
from exactformer.classification import default_codes, from_labels, predict, with_codes


def test_default_codes_are_distinct_for_many_classes():
    codes = default_codes(7, 3)
    assert len(np.unique(codes, axis=0)) == 7


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), n_seq=st.integers(1, 25), n_classes=st.integers(1, 5),
       d=st.integers(2, 6), attention=st.sampled_from(["hardmax", "softmax"]))
def test_classification_bound_and_exactness(seed, n_seq, n_classes, d, attention):
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((int(rng.integers(1, 9)), d)) for _ in range(n_seq)]
    labels = rng.integers(0, n_classes, size=n_seq)
    ds = from_labels(xs, labels)
    model = ef.compile(ds, attention=attention)
    report = ef.verify(model, ds)
    assert report.passed and report.accuracy == 1.0
    C = len(np.unique(labels))
    assert model.n_blocks <= n_seq + C + 1 + model.info["split_rounds"] + (
        attention == "softmax")
    assert model.width <= 4 and model.rank <= 2
    np.testing.assert_array_equal(ds.classes[predict(model, xs, ds.codes)], labels)


def test_permuted_sequences_with_different_labels_are_infeasible():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(InfeasibleError, match="sequences 0 and 1"):
        ef.compile(from_labels([x, x[::-1]], [0, 1]))


def test_user_codes_and_bad_codes():
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((3, 2)) for _ in range(4)]
    codes = np.array([[5.0, 5.0], [-5.0, 1.0]])
    ds = from_labels(xs, [0, 1, 1, 0], codes)
    model = ef.compile(ds)
    np.testing.assert_allclose(model(xs[1])[0], codes[1], atol=1e-13)
    with pytest.raises(DatasetError, match="share one code"):
        from_labels(xs, [0, 1, 1, 0], np.ones((2, 2)))
    with pytest.raises(DatasetError, match="label 2 is not a row of the 2 codes"):
        from_labels(xs, [0, 1, 2, 0], codes)
    with pytest.raises(DatasetError, match="codes must be"):
        from_labels(xs, [0, 1, 1, 0], codes[:, :1])


def test_labels_through_the_cli(tmp_path):
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((int(n), 3)).tolist() for n in rng.integers(2, 7, size=12)]
    labels = [j % 3 for j in range(12)]
    data = tmp_path / "cls.json"
    data.write_text(json.dumps({"inputs": xs, "labels": labels}))
    model = tmp_path / "m.safetensors"
    proc = run_cli("compile", data, "-o", model, "--labels")
    assert proc.returncode == 0, proc.stderr
    assert "accuracy 100.00 %" in proc.stdout
    proc = run_cli("verify", model, data)
    assert proc.returncode == 0 and "accuracy 100.00 %" in proc.stdout
    out = tmp_path / "classes.json"
    proc = run_cli_process("predict", model, data, "-o", out)  # end to end, as a process
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text()) == labels
    # a model without codes cannot predict
    ef.save_dataset(ef.Dataset.from_sequences([np.ones((2, 3))], [np.zeros((1, 3))]),
                    tmp_path / "plain.json")
    assert run_cli("compile", tmp_path / "plain.json", "-o", tmp_path / "p.safetensors",
                   "-q").returncode == 0
    proc = run_cli("predict", tmp_path / "p.safetensors", data)
    assert proc.returncode == 2 and "not a classification model" in proc.stderr
    proc = run_cli("compile", tmp_path / "plain.json", "-o", tmp_path / "x.safetensors",
                   "--labels")
    assert proc.returncode == 2 and "reads as a dataset with outputs" in proc.stderr


def test_with_codes_needs_labels():
    with pytest.raises(DatasetError, match="no labels"):
        with_codes(ef.Dataset.from_sequences([np.ones((2, 2))], [np.zeros((1, 2))]))


def test_unknown_label_message_cuts_long_class_names():
    """A 5000-character class name made a 5000-character error line."""
    from exactformer.classification import class_index

    names = np.array(["x" * 5000, "b"])
    with pytest.raises(DatasetError) as err:
        class_index(np.array(["y" * 3000]), names)
    assert len(str(err.value)) < 200 and "sequence 0" in str(err.value)
