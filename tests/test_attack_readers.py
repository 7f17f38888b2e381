"""Hostile inputs still open after tests/test_attack_cli.py (main at 7348302): each case here
failed there — an allocation until the OOM killer, exit 1 instead of a named limit, or a
strict reader that accepted an ambiguous or non-canonical file. Each is now one line with
exit 2 (docs/limits.md). The CLI runs in process; no case takes more than a tiny compile.
"""

from __future__ import annotations

import contextlib
import json
import resource
import zipfile

import numpy as np
import pytest

from test_attack_cli import _edit_metadata
from test_hostile import cli, one_line_error


def _data(tmp_path, scale: float = 1.0, name: str = "x.json"):
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(n, 3)) * scale for n in (4, 6, 5, 3)]
    ys = [rng.normal(size=(1, 3)) * scale for _ in range(4)]
    path = tmp_path / name
    path.write_text(json.dumps({"inputs": [x.tolist() for x in xs],
                                "outputs": [y.tolist() for y in ys]}))
    return path


@contextlib.contextmanager
def _address_space_cap(extra: int = 3 << 30):
    """At most ``extra`` more bytes of address space while inside (RLIMIT_AS, soft limit).

    Without the size check the commands below allocate terabytes: with the cap they fail
    with a MemoryError (exit 3, the test fails) instead of driving the machine into the
    OOM killer.
    """
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = vm + extra if hard == resource.RLIM_INFINITY else min(hard, vm + extra)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# -- 1. train: the model's size against the available memory, before allocating ---------
@pytest.mark.parametrize("options", [
    ["--width", "1000000000"],
    ["--blocks", "1000000000000"],
    ["--rank", "10000000000"],
    ["--init", "compiled", "--blocks", "100000000000"],
    ["--init", "compiled", "--width", "100000000000"],
])
def test_train_refuses_a_model_beyond_memory(tmp_path, options):
    pytest.importorskip("torch")
    data, out = _data(tmp_path), tmp_path / "t.safetensors"
    with _address_space_cap():
        result = cli("train", data, "-o", out, "-q", *options)
    one_line_error(result, 2, "of memory needed, more than the")
    assert not out.exists()


# -- 2. subnormal data: float64's limit, named; --exact compiles it ----------------------
def test_subnormal_data_is_a_float64_limit(tmp_path):
    data, out = _data(tmp_path, 1e-310), tmp_path / "m.safetensors"
    one_line_error(cli("compile", data, "-o", out), 2, "--exact")
    assert not out.exists()
    assert cli("compile", data, "-o", out, "--exact", "-q").exit_code == 0
    assert cli("verify", out, data, "-q").exit_code == 0


# -- 3. strict readers -------------------------------------------------------------------
def test_npz_with_two_members_of_one_name(tmp_path):
    good = tmp_path / "g.npz"
    rng = np.random.default_rng(0)
    np.savez(good, inputs=rng.normal(size=(4, 2)), input_lengths=[2, 2],
             outputs=rng.normal(size=(2, 2)), output_lengths=[1, 1])
    bad = tmp_path / "b.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        with pytest.warns(UserWarning, match="Duplicate name"):
            dst.writestr("inputs.npy", src.read("inputs.npy"))
    one_line_error(cli("compile", bad, "-o", tmp_path / "m.safetensors"), 2,
                   "'inputs.npy' twice")


def test_json_dataset_with_a_duplicate_key(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"inputs": [[[1, 2]], [[3, 4]]], "outputs": [[[0, 0]], [[1, 1]]], '
                    '"outputs": [[[5, 5]], [[6, 6]]]}')
    one_line_error(cli("compile", path, "-o", tmp_path / "m.safetensors"), 2,
                   'duplicate key "outputs"')


@pytest.fixture
def small_model(tmp_path):
    data, model = _data(tmp_path), tmp_path / "m.safetensors"
    assert cli("compile", data, "-o", model, "-q").exit_code == 0
    return data, model


@pytest.fixture
def exact_model(tmp_path):
    data, model = _data(tmp_path), tmp_path / "e.safetensors"
    assert cli("compile", data, "-o", model, "--exact", "-q").exit_code == 0
    return data, model


def _rational(model):
    from safetensors import safe_open

    with safe_open(str(model), framework="numpy") as fh:
        return json.loads(fh.metadata()["rational"])


def _respell(entry: str, how: str) -> str:
    """``entry`` ("p/q") spelled another way that Fraction() reads as the same number."""
    p, q = entry.split("/")
    return {"underscores": f"{p}_0/{q}_0", "space before": f" {entry}",
            "space after": f"{entry} ", "plus": f"+{entry}" if p[0] != "-" else f"-+{entry[1:]}",
            "fullwidth": entry.translate({ord(c): ord("０") + int(c) for c in "0123456789"}),
            }[how]


@pytest.mark.parametrize("how", ["underscores", "space before", "space after", "plus",
                                 "fullwidth"])
def test_rational_weights_are_plain_p_over_q(exact_model, tmp_path, how):
    """Fraction() reads every one of these as the stored value; docs/design.md §2 allows
    ``p/q`` and ``p`` in ASCII digits only."""
    data, model = exact_model
    rational = _rational(model)
    name, k = next((n, k) for n, v in rational.items() for k, s in enumerate(v) if "/" in s)
    rational[name][k] = _respell(rational[name][k], how)
    bad = _edit_metadata(model, tmp_path / "b.safetensors", rational=json.dumps(rational))
    one_line_error(cli("verify", bad, data), 2, name)


def test_rational_weights_with_a_duplicate_key(exact_model, tmp_path):
    data, model = exact_model
    text = json.dumps(_rational(model))
    first = text[1:text.index("]") + 1]  # '"name": [...]'
    bad = _edit_metadata(model, tmp_path / "b.safetensors", rational="{" + first + ", " + text[1:])
    one_line_error(cli("verify", bad, data), 2, "duplicate key")


@pytest.mark.parametrize("key, value", [
    ("n_blocks", " {} "), ("n_blocks", "{}\n"), ("n_blocks", "+{}"), ("n_blocks", "0_{}"),
    ("n_blocks", "fullwidth"), ("d", " 3"), ("d", "３"), ("temperature", " 1.0"),
    ("temperature", "1_0.0"), ("temperature", "１.0"),
])
def test_model_metadata_numbers_are_ascii(exact_model, tmp_path, key, value):
    """int() and float() accept spaces, underscores and any Unicode digits: refused."""
    data, model = exact_model
    from safetensors import safe_open

    with safe_open(str(model), framework="numpy") as fh:
        n = fh.metadata()["n_blocks"]
    if value == "fullwidth":
        value = "".join(chr(ord("０") + int(c)) for c in n)
    bad = _edit_metadata(model, tmp_path / "b.safetensors", **{key: value.format(n)})
    one_line_error(cli("info", bad), 2, key)


def test_model_info_with_a_duplicate_key(exact_model, tmp_path):
    data, model = exact_model
    bad = _edit_metadata(model, tmp_path / "b.safetensors", info='{"seed": 0, "seed": 1}')
    one_line_error(cli("info", bad), 2, 'duplicate key "seed"')


# -- 4. a dataset that is small on disk and large in memory: a note before the work ------
@pytest.fixture
def large(tmp_path, monkeypatch):
    """A dataset over the (lowered) LARGE_TOKENS threshold: two sequences of equal tokens
    with different targets, refused by rule (i) after it is read."""
    from exactformer import dataset

    monkeypatch.setattr(dataset, "LARGE_TOKENS", 4000)
    path = tmp_path / "big.npz"
    np.savez(path, inputs=np.zeros((4000, 2)), input_lengths=[2000, 2000],
             outputs=[[0.0, 0.0], [1.0, 1.0]], output_lengths=[1, 1])
    return path


def test_a_large_dataset_gets_a_note_first(large, tmp_path):
    result = cli("compile", large, "-o", tmp_path / "m.safetensors")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 2, result.stderr
    assert lines[0].startswith("note: ") and "4,000 input tokens in d = 2" in lines[0], lines
    assert lines[1].startswith("error: ") and "rule i" in lines[1], lines
    one_line_error(cli("compile", large, "-o", tmp_path / "m.safetensors", "-q"), 2, "rule i")


def test_the_note_comes_before_the_arrays_are_read(large, tmp_path):
    """A member whose data is corrupt (its CRC fails only once it is read in full): the note
    is printed from the headers, then the error."""
    raw = bytearray(large.read_bytes())
    at = raw.index(b"inputs.npy") + 40_000  # in the data, beyond zipfile's first read
    raw[at] ^= 0xFF
    large.write_bytes(bytes(raw))
    result = cli("compile", large, "-o", tmp_path / "m.safetensors")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 2, result.stderr
    assert lines[0].startswith("note: ") and lines[1].startswith("error: "), lines
    assert "'inputs' is not a readable array" in lines[1], lines


# -- the safetensors header itself: the library keeps one of two equal keys silently -----
def _with_header_text(model, out, edit):
    """A copy of ``model`` whose JSON header text is ``edit(text)`` (same tensor data)."""
    raw = model.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    text = edit(raw[8:8 + n].decode()).encode()
    text += b" " * (-len(text) % 8)
    out.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])
    return out


@pytest.mark.parametrize("where", ["metadata", "tensor"])
def test_safetensors_header_with_a_duplicate_key(small_model, tmp_path, where):
    data, model = small_model
    header = json.loads(model.read_bytes()[8:8 + int.from_bytes(model.read_bytes()[:8],
                                                                 "little")])
    if where == "metadata":  # a first 'attention' that the second one silently replaced
        def edit(text):
            at = text.index('"__metadata__":{') + len('"__metadata__":{')
            return text[:at] + '"attention":"softmax",' + text[at:]
        key = "attention"
    else:
        key = next(k for k in header if k != "__metadata__")

        def edit(text):
            return "{" + json.dumps(key) + ":" + json.dumps(header[key]) + "," + text[1:]
    bad = _with_header_text(model, tmp_path / "b.safetensors", edit)
    one_line_error(cli("verify", bad, data), 2, f'duplicate key "{key}"')


# -- numbers that float64 cannot hold are not rounded silently into other numbers --------
def _npz(path, inputs):
    np.savez(path, inputs=inputs, input_lengths=[1, 1], outputs=[[0.0, 0.0], [1.0, 1.0]],
             output_lengths=[1, 1])
    return path


@pytest.mark.parametrize("kind", ["int64", "uint64", "json", "longdouble"])
def test_numbers_float64_would_change_are_refused(tmp_path, kind):
    """2⁵³ and 2⁵³ + 1 are two tokens; read as float64 they were one (with two targets)."""
    big = 2**53
    if kind == "json":
        path = tmp_path / "d.json"
        path.write_text(json.dumps({"inputs": [[[big, 0]], [[big + 1, 0]]],
                                    "outputs": [[[0, 0]], [[1, 1]]]}))
        words = "integer 9007199254740993 is not a float64"
    elif kind == "longdouble":
        if np.finfo(np.longdouble).nmant <= 52:
            pytest.skip("long double is float64 on this platform")
        one = np.longdouble(1)
        path = _npz(tmp_path / "d.npz", np.array([[one, 0], [one + np.finfo(one).eps, 0]]))
        words = "more bits than float64"
    else:
        path = _npz(tmp_path / "d.npz", np.array([[big, 0], [big + 1, 0]], dtype=kind))
        words = "integer 9007199254740993 is not a float64"
    one_line_error(cli("compile", path, "-o", tmp_path / "m.safetensors", "--exact"), 2, words)


def test_integers_that_float64_holds_are_read(tmp_path):
    path = _npz(tmp_path / "d.npz", np.array([[2**62, 0], [-2**63, 0]], dtype=np.int64))
    assert cli("compile", path, "-o", tmp_path / "m.safetensors", "--exact", "-q").exit_code == 0


# -- the mechanism annotation that `explain` indexes with --------------------------------
@pytest.mark.parametrize("change, words", [
    ({"collapse_block": -5}, "collapse_block"),
    ({"collapse_block": 10**18}, "collapse_block"),
    ({"token_destination": [[0]]}, "one entry per sequence"),
    ({"token_destination": [[10**9] * 4, [0] * 6, [0] * 5, [0] * 3]}, "destination ids"),
    ({"leaders": [[99], [0], [0], [0]]}, "token positions"),
    ({"final_block": None}, "final_block"),
    ({"final_block": [["x"] * 4, [0] * 6, [0] * 5, [0] * 3]}, "final_block of sequence 0"),
    ({"destinations": [[["a"]]]}, "destinations"),
    ({"version": 99}, "version 99"),
])
def test_explain_with_a_hostile_mechanism(small_model, tmp_path, change, words):
    from safetensors import safe_open

    data, model = small_model
    with safe_open(str(model), framework="numpy") as fh:
        mech = json.loads(fh.metadata()["mechanism"])
    bad = _edit_metadata(model, tmp_path / "b.safetensors",
                         mechanism=json.dumps({**mech, **change}))
    one_line_error(cli("explain", bad, data, "-o", tmp_path / "e.png"), 2, words)
    assert not (tmp_path / "e.png").exists()


def test_explain_on_other_data_of_as_many_sequences(small_model, tmp_path):
    """Four sequences of other lengths: the mechanism's token positions do not apply."""
    data, model = small_model
    other = json.loads(data.read_text())
    other["inputs"] = [x[:1] + x for x in other["inputs"]]
    (tmp_path / "o.json").write_text(json.dumps(other))
    one_line_error(cli("explain", model, tmp_path / "o.json", "-o", tmp_path / "e.png"), 2,
                   "not the data it was compiled from")


def test_train_on_a_classification_file_learns_its_classes(tmp_path):
    """A file with labels has no outputs: train used to fit empty targets (loss 0, exit 0)."""
    pytest.importorskip("torch")
    path, out = tmp_path / "lab.json", tmp_path / "t.safetensors"
    path.write_text(json.dumps({"inputs": [[[1, 2], [0, 1]], [[3, 4]]], "labels": ["a", "b"]}))
    assert cli("train", path, "-o", out, "--epochs", "1", "-q").exit_code == 0
    log = (tmp_path / "t.log.csv").read_text().splitlines()
    assert float(log[1].split(",")[1]) > 0, log  # the distance to the classes' codes
    result = cli("predict", out, path)
    assert result.exit_code == 0 and "class " in result.stdout, result.stderr


# -- memory of many short sequences: ~570 B each beyond their numbers --------------------
def _header_only_npz(path, shapes):
    """An .npz whose members hold only their headers (declared shapes, no data)."""
    import io

    from numpy.lib import format as npy

    with zipfile.ZipFile(path, "w") as zf:
        for name, (shape, dtype) in shapes.items():
            buf = io.BytesIO()
            npy.write_array_header_1_0(buf, {"descr": npy.dtype_to_descr(np.dtype(dtype)),
                                             "fortran_order": False, "shape": shape})
            zf.writestr(name + ".npy", buf.getvalue())
    return path


def test_many_sequences_count_in_the_memory_estimate(tmp_path, monkeypatch):
    """10⁶ one-token sequences: 16 MB of numbers, but ~0.6 GB once read as sequences."""
    from exactformer import dataset

    monkeypatch.setattr(dataset, "available_memory", lambda: 500_000_000)
    n = 10**6
    path = _header_only_npz(tmp_path / "many.npz", {
        "inputs": ((n, 2), "f8"), "input_lengths": ((n,), "i8"),
        "outputs": ((n, 2), "f8"), "output_lengths": ((n,), "i8")})
    one_line_error(cli("compile", path, "-o", tmp_path / "m.safetensors"), 2,
                   "of memory needed, more than the 500 MB available")


def test_json_of_many_short_sequences_counts_its_objects(tmp_path, monkeypatch):
    """`[[0,0]]` per sequence: 64 bytes of objects per byte of JSON were measured."""
    from exactformer import dataset

    path = tmp_path / "many.json"
    seqs = ",".join(["[[0,0]]"] * 100)
    path.write_text(f'{{"inputs":[{seqs}],"outputs":[{seqs}]}}')
    monkeypatch.setattr(dataset, "available_memory", lambda: 60 * path.stat().st_size)
    one_line_error(cli("compile", path, "-o", tmp_path / "m.safetensors"), 2,
                   "parsing this JSON file")


@pytest.mark.parametrize("literal, words", [
    ("1e-400", "would be read as 0"), ("2e-324", "would be read as 0"),
    ("1e400", "beyond float64"), ("-1e400", "beyond float64"),
])
def test_json_decimals_beyond_float64(tmp_path, literal, words):
    """1e-400 and 2e-400 were both read as 0 (two tokens one); 1e400 as inf ("NaN or inf")."""
    path = tmp_path / "d.json"
    path.write_text(f'{{"inputs": [[[{literal}, 1], [0, 0]]], "outputs": [[[0, 0]]]}}')
    one_line_error(cli("compile", path, "-o", tmp_path / "m.safetensors", "--exact"), 2, words)


@pytest.mark.parametrize("first, second", [("4.9e-324", "0e5"), ("1.5e308", "1.7e308")])
def test_json_decimals_at_float64s_ends_are_read(tmp_path, first, second):
    path = tmp_path / "d.json"
    path.write_text(f'{{"inputs": [[[{first}, 1], [0, 0]], [[{second}, 1]]], '
                    f'"outputs": [[[0, 0]], [[{second}, 1]]]}}')
    assert cli("compile", path, "-o", tmp_path / "m.safetensors", "--exact", "-q").exit_code == 0


def test_exact_weights_beyond_float64_are_a_named_limit(tmp_path):
    """Inputs 0 and 1 beside 1.7e308: the exact model needs a weight ~2^1030, which the
    file cannot store as float64 (was an OverflowError while converting, exit 3)."""
    path = tmp_path / "d.json"
    path.write_text('{"inputs": [[[1, 1], [0, 0]], [[1.7e308, 1]]], '
                    '"outputs": [[[0, 0]], [[1, 1]]]}')
    out = tmp_path / "m.safetensors"
    one_line_error(cli("compile", path, "-o", out, "--exact"), 2, "beyond float64's range")
    assert not out.exists()


def test_a_long_block_kind_is_a_short_label(small_model, tmp_path):
    """A 10⁵-character kind: explain printed 200 kB and a matplotlib layout warning."""
    from safetensors import safe_open

    data, model = small_model
    with safe_open(str(model), framework="numpy") as fh:
        n = int(fh.metadata()["n_blocks"])
    bad = _edit_metadata(model, tmp_path / "b.safetensors",
                         block_kinds=json.dumps(["x" * 10**5] * n))
    result = cli("explain", bad, data, "-o", tmp_path / "e.png")
    assert result.exit_code == 0 and result.stderr == "", result.stderr
    assert len(result.stdout) < 5000 and "x" * 59 + "…" in result.stdout
