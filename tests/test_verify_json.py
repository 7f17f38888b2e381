"""``exactformer verify --json`` against its documented schema (docs/verification.md).

The key table is parsed from the document and every real output, in every mode, is checked
against it (keys and types), so the document cannot drift from the code.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from exactformer import Dataset, Transformer, save_dataset

DOC = Path(__file__).parent.parent / "docs" / "verification.md"
TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool,
         "object": dict, "array": list}
ERROR_KEYS = {"schema", "verdict", "exit_code", "error"}


def documented() -> dict[str, tuple[set, bool]]:
    """key → (allowed Python types, nullable), from the table of the JSON section."""
    text = DOC.read_text()
    section = text[text.index("## Machine-readable output"):]
    section = section[:section.index("\n## ", 1)]
    keys = {}
    for key, kind in re.findall(r"^\| `([a-z_.\[\]]+)` \| ([a-z ]+) \|", section, re.M):
        nullable = kind.endswith(" or null")
        keys[key] = (TYPES[kind.removesuffix(" or null")], nullable)
    assert len(keys) > 30, "the schema table was not found"
    return keys


def flatten(doc: dict, prefix: str = "") -> dict:
    """Dotted keys; the objects of an array appear as ``key[].sub``."""
    out = {}
    for key, value in doc.items():
        out[prefix + key] = value
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, list):
            for item in value:
                out.update(flatten(item, f"{prefix}{key}[]."))
    return out


def check_against_doc(doc: dict, schema: dict) -> None:
    flat = flatten(doc)
    for key, value in flat.items():
        assert key in schema, f"{key} is not documented in docs/verification.md"
        kind, nullable = schema[key]
        if value is None:
            assert nullable, f"{key} is null but documented as never null"
        else:
            assert isinstance(value, kind) and not (kind is int and isinstance(value, bool)), \
                (key, value)
    for key in schema:  # every top-level (and every sub-key of a present object) is there
        parent = key.rsplit(".", 1)[0] if "." in key else None
        if parent is None:
            assert key in flat, f"documented key {key} missing"
        elif "[]" not in key and isinstance(flat.get(parent), dict):
            assert key in flat, f"documented key {key} missing"


def verify_json(*args):
    """Run verify --json; stdout must be exactly one JSON object (one line)."""
    result = run_cli("verify", *args, "--json")
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert result.stdout.isascii()  # prints under any encoding (δ in the certificate: \u03b4)
    doc = json.loads(lines[0], parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert doc["exit_code"] == result.returncode
    return doc, result


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vj")
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((int(n), 3)) for n in (3, 5, 4, 6)]
    ys = [rng.standard_normal((1 + j % 2, 3)) for j in range(4)]
    data = tmp / "data.npz"
    save_dataset(Dataset.from_sequences(xs, ys), data)
    labels = tmp / "labels.json"
    labels.write_text(json.dumps({"inputs": [x.tolist() for x in xs], "labels": [0, 1, 1, 0]}))
    out = {"data": data, "labels": labels}
    for name, args in {"float": [data], "exact": [data, "--exact"],
                       "softmax": [data, "--attention", "softmax"],
                       "softmax_exact": [data, "--attention", "softmax", "--exact"],
                       "classifier": [labels, "--labels"]}.items():
        out[name] = tmp / f"{name}.safetensors"
        assert run_cli("compile", *args, "-o", out[name], "-q").returncode == 0, name
    tampered = Transformer.load(out["float"])
    tampered.blocks[-1].ff.W = tampered.blocks[-1].ff.W * 1.01
    out["tampered"] = tmp / "tampered.safetensors"
    tampered.save(out["tampered"])
    hot = Transformer.load(out["softmax_exact"])
    hot.temperature = float(hot.temperature) * 1e4  # far too hot: the certificate fails
    out["hot"] = tmp / "hot.safetensors"
    hot.save(out["hot"])
    return out


CASES = {  # name: (model, data, flags, verdict, mode)
    "certified": ("float", "data", [], "pass", "certified"),
    "no-certify": ("float", "data", ["--no-certify"], "pass", "float"),
    "exact model": ("exact", "data", [], "pass", "exact"),
    "exact model --float": ("exact", "data", ["--float"], "pass", "certified"),
    "float model --exact": ("float", "data", ["--exact"], "fail", "exact"),
    "softmax": ("softmax", "data", [], "pass", "certified"),
    "softmax exact": ("softmax_exact", "data", [], "pass", "exact"),
    "classifier": ("classifier", "labels", [], "pass", "certified"),
    "tampered": ("tampered", "data", [], "fail", "certified"),
    "tampered --no-certify": ("tampered", "data", ["--no-certify"], "fail", "float"),
    "softmax exact, tampered τ": ("hot", "data", [], "fail", "exact"),
}


@pytest.mark.parametrize("case", CASES)
def test_json_output_matches_the_documented_schema(files, case):
    model, data, flags, verdict, mode = CASES[case]
    doc, result = verify_json(files[model], files[data], *flags)
    assert result.stderr == ""
    check_against_doc(doc, documented())
    assert (doc["verdict"], doc["mode"]) == (verdict, mode)
    assert doc["exit_code"] == (0 if verdict == "pass" else 1)
    assert doc["schema"] == "exactformer.verify/1" and doc["error"] is None
    assert doc["n_sequences"] == 4 and doc["n_tokens"] == 18 and doc["d"] == 3
    assert doc["model"] == str(files[model]) and doc["seconds"]["total"] >= 0
    assert doc["recorded"]["verified_by"] in ("interval", "exact rational", "ball arithmetic")
    if verdict == "pass":
        assert doc["failures"] == [] and doc["n_failed_tokens"] == 0
    elif doc["arithmetic"] == "ball arithmetic":  # stops at the first failure, names it
        assert doc["n_failed_tokens"] is None and doc["failures_truncated"]
        assert doc["certified"] is False and "sequence" in doc["certificate"]
    else:
        assert doc["n_failed_sequences"] > 0 and doc["failures"]
        assert all(f["error"] is None or f["error"] > f["limit"] for f in doc["failures"])
        assert len(doc["failures"]) == min(doc["n_failed_tokens"], 100)
    if mode == "certified":
        assert doc["certified"] is (verdict == "pass") and doc["certified_delta"] is not None
        assert doc["certified_delta_rel"] == pytest.approx(doc["certified_delta"] / doc["scale"])
    else:
        assert doc["certified_delta"] is None
    if mode == "exact" and doc["arithmetic"] == "exact rational" and verdict == "pass":
        assert doc["max_abs_error"] == 0 and doc["tolerance"] == 0
    if case == "classifier":
        assert doc["classification"] and doc["accuracy"] == 1.0 and doc["n_classes"] == 2
        assert doc["n_readout"] == 4
    else:
        assert not doc["classification"] and doc["accuracy"] is None
    if case.startswith("softmax"):
        assert doc["attention"] == "softmax" and doc["temperature"] > 0


def test_float_model_under_exact_says_what_was_checked(files):
    """A float model's weights, run as rationals, miss by ~1e-16: exit 1 with a note saying
    what was checked and that certified verification is the check for a float model."""
    doc, _ = verify_json(files["float"], files["data"], "--exact")
    assert doc["arithmetic"] == "exact rational" and not doc["model_exact"]
    assert 0 < doc["max_abs_error"] < 1e-12
    assert "not an exact interpolant" in doc["note"] and "certified" in doc["note"]
    result = run_cli("verify", files["float"], files["data"], "--exact")
    assert result.returncode == 1
    note = " ".join(result.stdout.split())
    assert "note: exact mode on a float model" in note and "not an exact interpolant" in note
    assert "without --exact" in note
    # an exact model run in rationals needs no note
    assert verify_json(files["exact"], files["data"])[0]["note"] is None


def test_failures_are_capped_and_counted(files, tmp_path):
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((6, 3)) for _ in range(40)]
    ys = [rng.standard_normal((1, 3)) for _ in range(40)]
    data = tmp_path / "many.npz"
    save_dataset(Dataset.from_sequences(xs, ys), data)
    doc, result = verify_json(files["float"], data, "--no-certify")
    assert result.returncode == 1 and doc["verdict"] == "fail"
    assert doc["n_failed_tokens"] == 240 and len(doc["failures"]) == 100
    assert doc["failures_truncated"] is True
    assert [(f["sequence"], f["token"]) for f in doc["failures"][:7]] == \
        [(0, t) for t in range(6)] + [(1, 0)]
    assert doc["failures"][0]["part"] == "read-out" and doc["failures"][1]["part"] == "output set"
    check_against_doc(doc, documented())


@pytest.mark.parametrize("args", [
    ["{tmp}/missing.safetensors", "{data}"],
    ["{data}", "{float}"],  # swapped arguments
    ["{float}", "{data}", "--tol", "1e300"],
    ["{float}", "{data}", "--tol", "x"],  # an option click refuses before the command runs
    ["{float}"],  # a missing argument
])
def test_bad_input_is_one_stderr_line_and_an_error_object(files, tmp_path, args):
    args = [a.format(tmp=tmp_path, **{k: str(v) for k, v in files.items()}) for a in args]
    doc, result = verify_json(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert set(doc) == ERROR_KEYS and doc["verdict"] == "error"
    assert doc["error"] in lines[0]
    check_against_doc_partial = {k: documented()[k] for k in ERROR_KEYS}
    for key, value in doc.items():
        assert isinstance(value, check_against_doc_partial[key][0])


def test_documented_keys_are_all_produced(files):
    """Every key of the table appears in some real output (none is documented but dead)."""
    seen = set(ERROR_KEYS)
    for model, data, flags in (("float", "data", []), ("tampered", "data", [])):
        seen |= set(flatten(verify_json(files[model], files[data], *flags)[0]))
    assert set(documented()) <= seen, set(documented()) - seen


def test_without_json_no_json(files):
    result = run_cli("verify", files["float"], files["data"])
    assert result.returncode == 0 and result.stdout.startswith("PASS")
    assert "{" not in result.stdout


def test_internal_error_is_exit_3_and_an_error_object(files, monkeypatch):
    import exactformer

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(exactformer, "verify", broken)
    doc, result = verify_json(files["float"], files["data"])
    assert result.returncode == 3 and doc == {
        "schema": "exactformer.verify/1", "verdict": "error", "exit_code": 3,
        "error": doc["error"]}
    assert "RuntimeError: boom" in doc["error"] and "internal error" in result.stderr
    # the next command in the same process is not in JSON mode any more
    plain = run_cli("verify", files["data"].parent / "missing.safetensors", files["data"])
    assert plain.stdout == "" and plain.returncode == 2


def test_tolerance_in_exact_mode_is_named_as_unused(files):
    result = run_cli("verify", files["exact"], files["data"], "--tol", "1e-3")
    assert result.returncode == 0 and "note: --tol is for float mode" in result.stdout
    assert "--tol" not in run_cli("verify", files["exact"], files["data"]).stdout
    assert verify_json(files["exact"], files["data"], "--tol", "1e-3")[0]["tolerance"] == 0


def test_unknown_label_is_named_plainly(files, tmp_path):
    payload = json.loads(files["labels"].read_text())
    payload["labels"] = [0, 1, 7, 1]
    other = tmp_path / "l7.json"
    other.write_text(json.dumps(payload))
    doc, result = verify_json(files["classifier"], other)
    assert result.returncode == 2
    assert doc["error"] == "sequence 2: label 7 is not one of the 2 classes (0, 1)"  # no np.int64
