"""The README's Python example prints what its comments say it prints."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def _expected(comment: str, printed: str) -> bool:
    """``# 0.0`` is exact; ``# ~1e-16`` an order of magnitude; ``...`` matches anything."""
    if comment.startswith("~"):
        bound = float(comment[1:])
        return 0 <= float(printed) < 10 * bound
    pattern = ".*".join(re.escape(part) for part in comment.split("..."))
    return re.fullmatch(pattern, printed) is not None


def test_python_example_prints_what_it_claims(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    code = text[text.index("```python\n") + 10:]
    code = code[:code.index("```")]
    claims = []  # one per print(): its comment, or None
    for line in code.splitlines():
        if line.startswith("print("):
            _, _, comment = line.partition("  # ")
            claims.append(comment.strip() or None)
    assert "0.0" in claims, "the exact model's error"
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    printed = out.getvalue().splitlines()
    assert len(printed) == len(claims)
    for comment, line in zip(claims, printed):
        if comment is not None:
            assert _expected(comment, line), (comment, line)
