"""``exactformer verify --json``: the verification report as one JSON object on stdout.

Every key, its type and meaning are in docs/verification.md ("Machine-readable output");
tests/test_verify_json.py checks real output against that table, so the two cannot drift.
Numbers that are not finite (an unbounded error, no attention layer's margin) are ``null``:
the output is strict JSON (RFC 8259 has no NaN or Infinity).
"""

from __future__ import annotations

import json
import math

SCHEMA = "exactformer.verify/1"
MODES = {"exact rational": "exact", "ball arithmetic": "exact", "interval": "certified",
         "float64": "float"}
RECORDED = {"verified_by": str, "certified": bool, "certified_delta": float,
            "certified_delta_rel": float, "float_realisation": bool}


def number(x) -> float | None:
    """A finite float, else None (strict JSON)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def recorded_claim(info: dict) -> dict | None:
    """What the file says its compiler proved (a file can be edited: reported, not trusted).

    Only values of the documented type are kept; the rest are null.
    """
    if not any(key in info for key in RECORDED):
        return None
    out = {}
    for key, kind in RECORDED.items():
        value = info.get(key)
        if kind is float:
            ok = type(value) in (int, float)
            out[key] = number(value) if ok else None
        else:
            out[key] = value if type(value) is kind else None
    if isinstance(out["verified_by"], str):
        out["verified_by"] = out["verified_by"][:200]
    return out


def document(report, model, dataset, model_path, data_path, seconds: dict) -> dict:
    """The JSON object of a finished check (PASS or FAIL)."""
    from ..classification import resolve_targets

    # labels become their class codes, one read-out each, as verify() judged them
    dataset = resolve_targets(dataset, model.info.get("codes"), model.info.get("classes"))
    classification = dataset.labels is not None and dataset.codes is not None
    kept = report.failures
    return {
        "schema": SCHEMA,
        "verdict": "pass" if report.passed else "fail",
        "exit_code": 0 if report.passed else 1,
        "error": None,
        "model": str(model_path),
        "data": str(data_path),
        "mode": MODES.get(report.method, "float"),
        "arithmetic": report.method,
        "attention": model.attention,
        "temperature": number(model.temperature) if model.attention == "softmax" else None,
        "model_exact": bool(model.exact),
        "classification": classification,
        "n_sequences": int(dataset.n_sequences),
        "n_tokens": int(dataset.n_tokens),
        "n_readout": int(sum(len(y) for y in dataset.targets)),
        "d": int(dataset.d),
        "scale": number(report.scale),
        "tolerance": number(report.tol),
        "abs_tolerance": number(report.tol * report.scale),
        "max_abs_error": number(report.max_abs_error),
        "max_rel_error": number(report.max_rel_error),
        "certified": report.certified,
        "certified_delta": number(report.max_delta) if report.method == "interval" else None,
        "certified_delta_rel": (number(report.max_delta / report.scale)
                                if report.method == "interval" else None),
        "worst_sequence": int(report.worst_sequence),
        "n_failed_sequences": report.n_failed_sequences,
        "n_failed_tokens": report.n_failed_tokens,
        "failures": [{"sequence": f.sequence, "token": f.token,
                      "part": "read-out" if f.readout else "output set",
                      "error": number(f.error), "limit": number(f.limit)} for f in kept],
        "failures_truncated": (report.n_failed_tokens is None and not report.passed)
        or (report.n_failed_tokens or 0) > len(kept),
        "accuracy": number(report.accuracy) if report.accuracy is not None else None,
        "n_classes": len(dataset.codes) if classification else None,
        "min_score_margin": number(report.min_margin),
        "certificate": report.certificate,
        "note": report.note,
        "recorded": recorded_claim(model.info),
        "seconds": {key: round(float(value), 6) for key, value in seconds.items()},
    }


def error_document(message: str, code: int) -> dict:
    """The JSON object of bad input (exit 2) or an internal error (exit 3)."""
    return {"schema": SCHEMA, "verdict": "error", "exit_code": code, "error": message}


def dumps(doc: dict) -> str:
    """One line of strict JSON, in ASCII (δ and τ as \\u escapes): whatever stdout's encoding,
    and a file name that is not UTF-8 (``\\udcff``), it prints and parses."""
    return json.dumps(doc, allow_nan=False, ensure_ascii=True)
