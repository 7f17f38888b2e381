"""``exactformer bench --quick``: it runs and writes sane files (never a timing assert)."""

import json

import pytest

from conftest import run_cli_process
from exactformer.bench import Case, check_targets, derived, fit_exponent, grid


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = run_cli_process("bench", "--quick", "--out", out, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.mark.slow
def test_quick_bench_writes_json_markdown_and_png(quick):
    result = json.loads((quick / "bench.json").read_text())
    rows = result["rows"]
    assert rows and all(r["ok"] for r in rows)
    for r in rows:
        assert r["tokens"] == r["N"] * r["n"]
        assert r["blocks"] >= 3 and r["params"] > 0
        assert 0 < r["compiler_s"] <= r["compile_s"]  # in-process part of the whole process
        assert r["verify_s"] > 0 and r["peak_mb"] > 10  # a Python process with numpy
        assert r["verify_plain_s"] > 0  # verify --no-certify in the same run
        assert 0 <= r["max_rel_error"] <= 1e-10
    strict = [r for r in rows if r["mode"] == "strict"]
    compact = [r for r in rows if r["mode"] == "compact" and r["m"] == 1]
    assert strict and compact
    # the structure the construction promises: strict grows with N, compact does not
    assert max(r["blocks"] for r in strict) > min(r["blocks"] for r in strict)
    assert all(r["blocks"] <= 6 for r in compact)
    assert any(d["what"].startswith("growth exponent") and d["value"] is not None
               for d in result["derived"])
    assert result["machine"]["cores"] >= 1
    md = (quick / "bench.md").read_text()
    assert md.count("| hardmax |") == sum(r["attention"] == "hardmax" for r in rows)
    assert "Compile vs learn" in md
    exact = [r for r in rows if r["exact"]]  # issue 15: exact rows with size and bit lengths
    assert exact and all(r["max_rel_error"] == 0 and r["file_mb"] > 0 for r in exact)
    assert all(r["weight_bits"] > 0 and r["state_bits"] >= 53 for r in exact)
    assert "Exact mode" in md
    assert (quick / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_quick_bench_compile_vs_learn(quick):
    learn = json.loads((quick / "bench.json").read_text())["learn"]
    if not learn.get("available"):
        pytest.skip(learn.get("note", "training not available"))
    assert learn["compile_s"] > 0 and learn["train_s"] > 0 and learn["epochs_run"] >= 1
    assert learn["ratio"] == pytest.approx(learn["train_s"] / learn["compile_s"])


def test_full_grid_holds_the_issue_targets():
    cases = grid(quick=False, softmax=False)
    keyed = {c.key: c for c in cases}
    assert keyed["hardmax-strict-N1000-n100-d16-m1"].targets == {"compile_s": 5.0,
                                                                 "verify_s": 10.0}
    assert keyed["hardmax-compact-N1000-n100-d16-m1"].targets == {"compile_s": 3.0,
                                                                  "verify_s": 3.0}
    big = keyed["hardmax-compact-N10000-n100-d16-m1"]
    assert big.tokens == 10**6 and big.targets["peak_mb"] == 4096.0
    assert {c.m for c in cases} == {1, 4}
    tokens = [c.tokens for c in cases if c.series == "hardmax-compact-N"]
    assert min(tokens) == 10**4 and max(tokens) == 10**6
    # issue 15: exact mode at 900, 10⁴ and 10⁵ tokens, strict and compact
    assert keyed["hardmax-strict-exact-N30-n30-d8-m1"].targets == {"compile_s": 2.0,
                                                                   "verify_s": 2.0}
    for mode in ("strict", "compact"):
        assert keyed[f"hardmax-{mode}-exact-N100-n100-d16-m1"].targets["peak_mb"] == 4096.0
        assert keyed[f"hardmax-{mode}-exact-N1000-n100-d16-m1"].targets["compile_s"] == 900.0


def test_exponent_fit_and_target_checks():
    assert fit_exponent([1e4, 1e5, 1e6], [1.0, 10.0, 100.0]) == pytest.approx(1.0)
    assert fit_exponent([1e4, 1e6], [2.0, 2.0]) == pytest.approx(0.0, abs=1e-12)
    assert fit_exponent([1e4], [1.0]) is None
    row = {"ok": True, "compile_s": 4.0, "verify_s": 12.0}
    checks = {c["metric"]: c["met"] for c in check_targets(row, {"compile_s": 5.0,
                                                                  "verify_s": 10.0})}
    assert checks == {"compile_s": True, "verify_s": False}
    assert not check_targets({**row, "ok": False}, {"compile_s": 5.0})[0]["met"]


def test_m4_ratio_is_judged_against_the_m1_twin():
    def row(m, s, compact=True):
        c = Case(1000, 100, 16, m, compact, series="m" if m > 1 else "hardmax-compact-N")
        return {"series": c.series, "ok": True, "compact": compact, "m": m, "N": 1000, "n": 100,
                "d": 16, "attention": "hardmax", "compile_s": s, "mode": c.mode,
                "tokens": c.tokens, "compiler_s": s}
    out = derived([row(1, 2.0), row(4, 7.0)], quick=False)
    ratio = [d for d in out if d["what"].startswith("compile time m = 4")][0]
    assert ratio["value"] == pytest.approx(3.5) and ratio["met"] is False
