"""The ``exactformer`` command line (typer + rich).

Exit status: 0 ok, 1 a check failed, 2 bad input or a documented limit (one line on stderr,
never a traceback), 3 an internal error (one line; the traceback only with ``--debug``).
"""

from __future__ import annotations

import sys
from functools import wraps

import typer
from rich.console import Console

from .errors import ExactformerError, InternalError, VerificationError

app = typer.Typer(
    help="Compile a dataset of sequences into a transformer that reproduces it exactly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
experiment_app = typer.Typer(help="Experiments around the construction.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print one line on stderr and exit with ``code``."""
    err_console.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(code)


_debug = {"on": False}


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug",
                                        help="Show the traceback of an internal error.")):
    """Compile a dataset of sequences into a transformer that reproduces it exactly."""
    _debug["on"] = debug


def user_errors(fn):
    """One stderr line per error: bad input → exit 2, failed check → 1, internal error → 3."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ExactformerError as exc:
            fail(str(exc))
        except VerificationError as exc:
            fail(str(exc), 1)
        except InternalError as exc:
            if _debug["on"]:
                import traceback

                traceback.print_exc()
            fail(f"{exc} (an internal error: please report it; --debug shows where)", 3)
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # e.g. `exactformer info m | head`
        sys.exit(0)


from .commands import register_all  # noqa: E402  (commands import `app` from this module)

register_all()
