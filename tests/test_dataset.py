import json

import numpy as np
import pytest

from exactformer import Dataset, DatasetError, load_dataset, save_dataset


def test_round_trip_npz_and_json(tmp_path, rng):
    ds = Dataset.from_sequences([rng.standard_normal((3, 2)), rng.standard_normal((1, 2))],
                                [rng.standard_normal((2, 2)), rng.standard_normal((1, 2))])
    for name in ("d.npz", "d.json"):
        save_dataset(ds, tmp_path / name)
        back = load_dataset(tmp_path / name)
        assert back.n_sequences == 2 and back.d == 2
        for a, b in zip(ds.inputs + ds.targets, back.inputs + back.targets):
            np.testing.assert_array_equal(a, b)


def test_npz_keys_are_design_format(tmp_path, rng):
    ds = Dataset.from_sequences([np.ones((3, 2))], [np.zeros((1, 2))])
    save_dataset(ds, tmp_path / "d.npz")
    with np.load(tmp_path / "d.npz") as z:
        assert set(z.files) == {"inputs", "input_lengths", "outputs", "output_lengths"}
        assert z["inputs"].dtype == np.float64 and z["inputs"].shape == (3, 2)


@pytest.mark.parametrize(
    "inputs, targets, message",
    [
        ([np.ones((2, 1))], [np.ones((1, 1))], "d >= 2"),
        ([np.ones((2, 2))], [np.ones((0, 2))], "m_j = 0"),
        ([np.ones((1, 2))], [np.ones((2, 2))], "exceeds input length"),
        ([np.array([[np.nan, 1.0]])], [np.ones((1, 2))], "NaN or inf"),
        ([np.ones((2, 2))], [np.array([[np.inf, 1.0]])], "NaN or inf"),
        ([np.ones((2, 2)), np.ones((2, 3))], [np.ones((1, 2)), np.ones((1, 3))], "sequence 1"),
        ([np.ones((2, 2))], [], "1 input sequences but 0 target"),
    ],
)
def test_bad_arrays_are_one_line_errors(inputs, targets, message):
    with pytest.raises(DatasetError) as err:
        Dataset.from_sequences(inputs, targets)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_files(tmp_path):
    (tmp_path / "x.json").write_text('{"inputs": [[[1, 2]]]}')
    with pytest.raises(DatasetError, match="keys 'inputs' and 'outputs'"):
        load_dataset(tmp_path / "x.json")
    np.savez(tmp_path / "len.npz", inputs=np.zeros((3, 2)), input_lengths=np.array([2]),
             outputs=np.zeros((1, 2)), output_lengths=np.array([1]))
    with pytest.raises(DatasetError, match="sum to 2"):
        load_dataset(tmp_path / "len.npz")
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "missing.npz")
    (tmp_path / "d.csv").write_text("1,2")
    with pytest.raises(DatasetError, match="unknown dataset extension"):
        load_dataset(tmp_path / "d.csv")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable"):
        load_dataset(tmp_path / "bad.npz")


def test_inputs_only_file_for_run(tmp_path):
    (tmp_path / "in.json").write_text(json.dumps({"inputs": [[[1, 2], [3, 4]]]}))
    ds = load_dataset(tmp_path / "in.json", require_targets=False)
    assert ds.n_sequences == 1 and ds.inputs[0].shape == (2, 2)
