"""Progress for long work: a rich bar on a terminal, plain lines everywhere else.

A rich live bar draws nothing when the output is a log file or a pipe, so a long run would
look dead there. :class:`Progress` keeps rich's task interface (``add_task``, ``advance``,
``update``) and, when its console is not a terminal, prints one plain line per task at most
every ``interval`` seconds and when the task completes. It is also the compiler's callback
``progress(stage, done, total)``, so the Python API can show progress on request::

    ef.compile(data, progress=ef.progress.Progress())   # or progress=True
"""

from __future__ import annotations

import sys
import time

from rich.console import Console


class Progress:
    """Context manager; ``__call__(stage, done, total)`` is the compiler's callback."""

    def __init__(self, console: Console | None = None, enabled: bool = True,
                 interval: float = 10.0):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.interval = interval
        self._bar = None
        self._tasks: dict = {}  # id → [description, completed, total, last printed, start]
        self._by_name: dict[str, int] = {}

    # -- context --------------------------------------------------------------------------
    def __enter__(self) -> Progress:
        if self.enabled and self.console.is_terminal:
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                     TextColumn("{task.completed}/{task.total}"),
                                     TimeElapsedColumn(), console=self.console, transient=True)
            self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None

    # -- rich's task interface ------------------------------------------------------------
    def add_task(self, description: str, total: float | None = None) -> int:
        if self._bar is not None:
            return self._bar.add_task(description, total=total)
        task = len(self._tasks)
        now = time.monotonic()
        self._tasks[task] = [description, 0, total, now, now]
        return task

    def update(self, task: int, completed: float | None = None, total: float | None = None,
               advance: float = 0, description: str | None = None) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            kw = {k: v for k, v in (("completed", completed), ("total", total),
                                    ("description", description)) if v is not None}
            self._bar.update(task, advance=advance, **kw)
            return
        t = self._tasks[task]
        if description is not None:
            t[0] = description
        if total is not None:
            t[2] = total
        t[1] = (t[1] if completed is None else completed) + advance
        now = time.monotonic()
        done = t[2] is not None and t[1] >= t[2]
        if done or now - t[3] >= self.interval:
            t[3] = now
            of = "" if t[2] is None else f"/{t[2]:g}"
            self.console.print(f"{t[0]}: {t[1]:g}{of} ({now - t[4]:.0f} s)", highlight=False,
                               markup=False, soft_wrap=True)

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    # -- the compiler's callback ----------------------------------------------------------
    def __call__(self, stage: str, done: float, total: float | None) -> None:
        if stage not in self._by_name:
            self._by_name[stage] = self.add_task(stage, total=total)
        self.update(self._by_name[stage], completed=done, total=total)


def as_callback(progress):
    """``progress`` argument of the Python API: None/False (off), True (lines on stderr), or a
    callable ``(stage, done, total)``."""
    if progress is True:
        return Progress(Console(file=sys.stderr))
    return progress or None
