"""Hostile TD-TF series and model files (docs/tdtf.md, "Series and model files").

The TD-TF readers use the dataset and model readers' strict checks (exactformer.dataset,
exactformer.modelfile): every case here was accepted silently, or failed inside a library,
on 8c74935. In process (CliRunner) and small: the whole file runs in a few seconds.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from exactformer import tdtf as T  # noqa: E402
from test_attack_readers import _header_only_npz, _with_header_text  # noqa: E402
from test_hostile import cli, one_line_error, rewritten_model  # noqa: E402

ROWS = "\n".join(f"{np.sin(t / 3):.6f},{np.cos(t / 5):.6f}" for t in range(60)) + "\n"


def _forecast_with(tmp_path, model, series):
    """``tdtf forecast`` (the cheapest command that reads both files)."""
    return cli("tdtf", "forecast", model, series, "--steps", 3, "-o", tmp_path / "f.csv")


# -- CSV cells: plain ASCII decimals, values float64 holds -------------------------------
@pytest.mark.parametrize("cell, words", [
    ("1_0", "line 2, column 1: '1_0' is not a number"),  # float() reads 10
    ("１", "line 2, column 1: '１' is not a number"),  # full-width digit: float() reads 1
    ("٣", "'٣' is not a number"),  # Arabic-Indic three
    ("1\u00a0", "is not a number"),  # a no-break space: float() strips it
    ("0x10", "'0x10' is not a number"),
    ("1e400", "beyond float64"),  # float() reads inf: was 'NaN or infinite value'
    ("1e-400", "would be read as 0"),  # float() reads 0: a number becomes another
    ("9007199254740993", "the integer 9007199254740993 is not a float64 number"),
    ("-9007199254740993", "is not a float64 number"),
])
def test_csv_cells_are_plain_decimals_float64_holds(tmp_path, cell, words):
    path = tmp_path / "s.csv"
    path.write_text("1,2\n" + cell + ",3\n" + ROWS, encoding="utf-8")
    with pytest.raises(T.SeriesError, match="s.csv: "):
        T.load_series(path)
    one_line_error(cli("tdtf", "fit", path, "-o", tmp_path / "m.safetensors"), 2, words)
    assert not (tmp_path / "m.safetensors").exists()


def test_a_lenient_first_row_is_checked_not_dropped_as_a_header(tmp_path):
    """'1_0' and '２' read as numbers in Python: the row is data, refused, not a header."""
    path = tmp_path / "s.csv"
    path.write_text("1_0,２\n" + ROWS, encoding="utf-8")
    with pytest.raises(T.SeriesError, match="line 1, column 1: '1_0' is not a number"):
        T.load_series(path)


def test_a_byte_order_mark_does_not_hide_the_first_row(tmp_path):
    """A UTF-8 BOM (spreadsheets write one) made '\\ufeff0.5' a header: the row was lost."""
    path = tmp_path / "s.csv"
    path.write_text("\ufeff0.5,7\n" + ROWS, encoding="utf-8")
    x = T.load_series(path)
    assert x.shape == (61, 2) and x[0].tolist() == [0.5, 7.0]


def test_ordinary_csv_files_still_read(tmp_path):
    x = np.array([[1e-3, -2.5e4], [0.5, 3.0], [-0.0, 9007199254740992.0], [4.9e-324, 1.5e308]])
    spelled = [["1e-3", "-2.5E+04"], ["+.5", " 3."], ["-0", "9007199254740992"],
               ["4.9e-324", '"1.5e308"']]
    text = "\r\n".join(", ".join(r) for r in spelled) + "\r\n"
    for name, content in [("crlf.csv", text), ("header.csv", "time, value\n" + text),
                          ("blank.csv", text.replace("\r\n", "\n") + "\n\n"),
                          ("bom.csv", "\ufeffa,b\n" + text)]:
        (tmp_path / name).write_text(content, encoding="utf-8", newline="")
        np.testing.assert_array_equal(T.load_series(tmp_path / name), x, err_msg=name)
    T.save_series(x, tmp_path / "o.csv")  # what the tool writes it reads back
    np.testing.assert_array_equal(T.load_series(tmp_path / "o.csv"), x)
    (tmp_path / "nan.csv").write_text("1,2\n3,NaN\n")
    with pytest.raises(T.SeriesError, match="NaN or infinite value in time step 1"):
        T.load_series(tmp_path / "nan.csv")


def test_csv_larger_than_memory_is_refused_before_reading(tmp_path, monkeypatch):
    from exactformer import dataset

    path = tmp_path / "s.csv"
    path.write_text(ROWS)
    monkeypatch.setattr(dataset, "available_memory", lambda: 10 * len(ROWS))
    one_line_error(cli("tdtf", "fit", path, "-o", tmp_path / "m.safetensors"), 2,
                   "reading this CSV file: about")


# -- .npz series: the dataset reader's header, memory and member checks ------------------
def test_npz_declaring_more_than_memory_is_refused_from_its_header(tmp_path, monkeypatch):
    from exactformer import dataset

    monkeypatch.setattr(dataset, "available_memory", lambda: 500_000_000)
    path = _header_only_npz(tmp_path / "big.npz", {"x": ((10**8, 4), "f8")})
    one_line_error(cli("tdtf", "fit", path, "-o", tmp_path / "m.safetensors"), 2,
                   "of memory needed, more than the 500 MB available")


def test_npz_with_two_members_named_x(tmp_path):
    path = tmp_path / "two.npz"
    np.savez(path, x=np.zeros((50, 2)))
    with zipfile.ZipFile(path, "a") as zf, pytest.warns(UserWarning, match="Duplicate"):
        zf.writestr("x.npy", zipfile.ZipFile(tmp_path / "two.npz").read("x.npy"))
    one_line_error(cli("tdtf", "fit", path, "-o", tmp_path / "m.safetensors"), 2,
                   "holds a member named 'x.npy' twice")


@pytest.mark.parametrize("x, words", [
    (np.array([[2**53 + 1, 0]] + [[t, t % 7] for t in range(50)], dtype=np.int64),
     "the integer 9007199254740993 is not a float64 number"),
    (np.ones((50, 2), dtype=np.complex128), "'x' must hold real numbers"),
])
def test_npz_values_float64_would_change(tmp_path, x, words):
    np.savez(tmp_path / "s.npz", x=x)
    one_line_error(cli("tdtf", "fit", tmp_path / "s.npz", "-o", tmp_path / "m.safetensors"),
                   2, words)


# -- model files: metadata spelled strictly, configuration checked before anything is built
@pytest.fixture(scope="module")
def tdtf_model(tmp_path_factory):
    """A small trained TD-TF (d = 2, K = 3) and a series for it."""
    tmp = tmp_path_factory.mktemp("tdtf")
    series = _csv(tmp)
    model = T.TDTF.fit(T.load_series(series),
                       T.TDTFConfig(window=3, width=4, attn_dim=2, hidden=4, epochs=1))
    model.save(tmp / "m.safetensors")
    return tmp / "m.safetensors", series


def _config_with(model, **changes) -> str:
    from safetensors import safe_open

    with safe_open(str(model), framework="numpy") as fh:
        config = json.loads(fh.metadata()["config"])
    config.update(changes)
    return json.dumps({k: v for k, v in config.items() if v is not None})


@pytest.mark.parametrize("d, words", [
    (" 2 ", "metadata 'd' must be a decimal integer in ASCII digits (docs/tdtf.md)"),
    ("２", "metadata 'd' must be a decimal integer"),
    ("2_0", "metadata 'd' must be a decimal integer"),
    ("0", "a series has at least 1 variable"),
    ("3", "tensor mu has shape (2,), expected (3,)"),
])
def test_model_metadata_d_is_plain_and_matches_the_tensors(tdtf_model, tmp_path, d, words):
    model, series = tdtf_model
    bad = rewritten_model(model, tmp_path / "b.safetensors", meta={"d": d})
    one_line_error(_forecast_with(tmp_path, bad, series), 2, words)


def test_model_config_with_a_duplicate_key(tdtf_model, tmp_path):
    """Python's json kept the last 'activation' silently: a gelu model loaded as linear."""
    model, series = tdtf_model
    config = _config_with(model)
    bad = rewritten_model(model, tmp_path / "b.safetensors",
                     meta={"config": config[:-1] + ', "activation": "linear"}'})
    one_line_error(_forecast_with(tmp_path, bad, series), 2, 'duplicate key "activation"')


def test_model_header_with_a_duplicate_key(tdtf_model, tmp_path):
    model, series = tdtf_model

    def edit(text):
        at = text.index('"__metadata__":{') + len('"__metadata__":{')
        return text[:at] + '"d":"3",' + text[at:]
    bad = _with_header_text(model, tmp_path / "b.safetensors", edit)
    one_line_error(_forecast_with(tmp_path, bad, series), 2, 'duplicate key "d"')


@pytest.mark.parametrize("changes, words", [
    ({"window": 0}, "window must be at least 1"),
    ({"window": -3}, "window must be at least 1"),
    ({"window": True}, "window must be an integer, got 'True'"),
    ({"window": 3.5}, "window must be an integer"),
    ({"window": "3"}, "window must be an integer"),
    ({"width": 10**5}, "tensor E has shape (3, 4, 2), expected (3, 100000, 2)"),
    ({"window": 10**12}, "tensor E has shape (3, 4, 2), expected (1000000000000, 4, 2)"),
    ({"hidden": 0}, "hidden must be at least 1"),
    ({"activation": "relu"}, "activation must be one of gelu, tanh, linear"),
    ({"activation": 1}, "activation must be a name"),
    ({"lag_only_scores": 1}, "lag_only_scores must be true or false"),
    ({"lr": "fast"}, "lr must be a finite number"),
    ({"seed": -1}, "seed must lie in [0, 2^63)"),
    ({"seed": 2**64}, "seed must lie in [0, 2^63)"),
    ({"window": None}, "missing key(s) window"),
    ({"heads": 2}, "unknown key 'heads'"),
])
def test_hostile_model_config(tdtf_model, tmp_path, changes, words):
    model, series = tdtf_model
    bad = rewritten_model(model, tmp_path / "b.safetensors",
                     meta={"config": _config_with(model, **changes)})
    one_line_error(_forecast_with(tmp_path, bad, series), 2, words)


@pytest.mark.parametrize("config, words", [
    ("[8]", "metadata 'config' must be a JSON object"),
    pytest.param("[" * 100_000, "nested too deeply", id="deep"),
    ('{"window": NaN}', "corrupt metadata"),
])
def test_model_config_that_is_no_configuration(tdtf_model, tmp_path, config, words):
    model, series = tdtf_model
    bad = rewritten_model(model, tmp_path / "b.safetensors", meta={"config": config})
    one_line_error(_forecast_with(tmp_path, bad, series), 2, words)


@pytest.mark.parametrize("tensors, words", [
    ({"sigma": np.zeros(2)}, "tensor sigma must be positive"),
    ({"delta": np.array([1.0, -1.0])}, "tensor delta must be positive"),
    ({"mu": np.array([0.0, np.nan])}, "tensor mu has non-finite values"),
    ({"mu": np.zeros(2, dtype=np.float32)}, "tensor mu has dtype float32, expected float64"),
    ({"WV": None}, "missing tensor WV"),
    ({"extra": np.zeros(1)}, "unexpected tensor 'extra'"),
])
def test_hostile_model_tensors(tdtf_model, tmp_path, tensors, words):
    model, series = tdtf_model
    bad = rewritten_model(model, tmp_path / "b.safetensors", tensors=tensors)
    one_line_error(_forecast_with(tmp_path, bad, series), 2, words)


def test_a_model_beyond_memory_is_refused_before_it_is_built(monkeypatch):
    from exactformer import dataset

    monkeypatch.setattr(dataset, "available_memory", lambda: 10**9)
    with pytest.raises(T.SeriesError, match="a TD-TF of 1,000,"):
        T.TDTF.new(2, T.TDTFConfig(width=10**6, hidden=1, attn_dim=1, window=1))
    with pytest.raises(T.SeriesError, match="training windows of K"):  # 7·10⁴ windows
        T.TDTF.fit(np.random.default_rng(0).normal(size=(10**5, 2)),
                   T.TDTFConfig(window=10**4, width=2, attn_dim=1, hidden=1))


def test_a_forecast_beyond_memory_is_refused(tdtf_model, tmp_path):
    """--steps 10¹³ was a MemoryError from numpy (146 TiB), exit 3."""
    model, series = tdtf_model
    result = cli("tdtf", "forecast", model, series, "--steps", 10**13, "-o", tmp_path / "f.csv")
    one_line_error(result, 2, "a forecast of 10,000,000,000,000 steps in d = 2: about")


def test_a_configuration_of_numpy_numbers_is_saved_and_read_back(tmp_path):
    """TDTFConfig accepts numpy integers and floats; save wrote them with json.dumps, which
    refused them (TypeError)."""
    cfg = T.TDTFConfig(window=np.int64(3), width=4, attn_dim=2, hidden=4, epochs=1,
                       lr=np.float64(0.003), lag_only_scores=np.bool_(True))
    model = T.TDTF.fit(T.load_series(_csv(tmp_path)), cfg)
    model.save(tmp_path / "m.safetensors")
    again = T.TDTF.load(tmp_path / "m.safetensors")
    assert again.cfg == cfg and type(again.cfg.window) is int


def _csv(tmp_path):
    (tmp_path / "s.csv").write_text(ROWS)
    return tmp_path / "s.csv"


def test_the_untouched_model_forecasts(tdtf_model, tmp_path):
    model, series = tdtf_model
    result = _forecast_with(tmp_path, model, series)
    assert result.exit_code == 0, result.stderr
    assert T.load_series(tmp_path / "f.csv").shape == (3, 2)


def test_swapped_forecast_arguments_are_named(tdtf_model, tmp_path):
    """`tdtf forecast SERIES MODEL` said 'header too large' (the CSV read as safetensors)."""
    model, series = tdtf_model
    result = cli("tdtf", "forecast", series, model, "--steps", 2, "-o", tmp_path / "f.csv")
    one_line_error(result, 2, "arguments swapped?")
