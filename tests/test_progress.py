"""Progress lines where no bar can be drawn, and the modes of the files the tool writes."""

import io
import os
import stat

import numpy as np
from rich.console import Console

import exactformer as ef
from exactformer.dataset import write_atomic
from exactformer.progress import Progress


def _plain_console():
    buf = io.StringIO()
    return buf, Console(file=buf, force_terminal=False, width=200)


def test_plain_lines_when_not_a_terminal():
    buf, console = _plain_console()
    with Progress(console, interval=3600) as bar:
        task = bar.add_task("training", total=3)
        for _ in range(3):
            bar.advance(task)
        bar("leaders", 5, 10)  # the compiler's callback: first call prints nothing yet
        bar("leaders", 10, 10)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("training: 3/3")  # throttled: only the completion line
    assert lines[1].startswith("leaders: 10/10")
    assert len(lines) == 2


def test_disabled_progress_prints_nothing():
    buf, console = _plain_console()
    with Progress(console, enabled=False) as bar:
        bar("stage", 1, 1)
    assert buf.getvalue() == ""


def test_compile_reports_progress_on_request():
    rng = np.random.default_rng(0)
    data = ef.Dataset.from_sequences([rng.normal(size=(4, 3)) for _ in range(3)],
                                     [rng.normal(size=(1, 3)) for _ in range(3)])
    seen = []
    ef.compile(data, progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert seen and all(isinstance(s, str) for s, _, _ in seen)


def test_written_files_get_the_umask_mode_and_keep_an_existing_mode(tmp_path):
    old = os.umask(0o022)
    try:
        new = tmp_path / "new.bin"
        write_atomic(new, lambda tmp: open(tmp, "wb").write(b"x"))
        assert stat.S_IMODE(os.stat(new).st_mode) == 0o644
        kept = tmp_path / "kept.bin"
        kept.write_bytes(b"old")
        os.chmod(kept, 0o640)
        write_atomic(kept, lambda tmp: open(tmp, "wb").write(b"y"))
        assert stat.S_IMODE(os.stat(kept).st_mode) == 0o640
        assert kept.read_bytes() == b"y"
    finally:
        os.umask(old)
