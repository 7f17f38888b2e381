"""The ``exactformer`` command line (typer + rich).

Exit status: 0 ok, 1 a check failed, 2 bad input or a documented limit (one line on stderr,
never a traceback), 3 an internal error (one line; the traceback only with ``--debug``).
The table is in docs/limits.md.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from functools import wraps
from pathlib import Path

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

try:  # typer ≥ 0.25 vendors click as typer._click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors

from .errors import ExactformerError, InternalError, VerificationError


class _OneLineErrors(TyperGroup):
    """Usage errors (bad option values, missing arguments) as one ``error:`` line, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError as exc:
            print(exc.format_message())
            sys.exit(0)
        except click_errors.UsageError as exc:
            where = f"{exc.ctx.command_path}: " if exc.ctx is not None else ""
            err_console.print(f"error: {where}{exc.format_message()}", highlight=False,
                              markup=False, soft_wrap=True)
            # the parser's errors ("--json=1": takes no value) come without a context
            command = exc.ctx.command if exc.ctx is not None else self._named(args)
            if command is not None and _wants_json(command, args):
                _print_json_error(f"{where}{exc.format_message()}", 2)
            sys.exit(2)
        except click_errors.ClickException as exc:
            err_console.print(f"error: {exc.format_message()}", highlight=False, markup=False,
                              soft_wrap=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            err_console.print("aborted")
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


    def _named(self, args):
        """The subcommand named first on the command line, if any."""
        argv = sys.argv[1:] if args is None else list(args)
        return next((self.commands[a] for a in argv if a in self.commands), None)


class _Command(TyperCommand):
    """Usage lines name arguments as the README does, ``verify [OPTIONS] MODEL DATA``: typer
    writes a required argument as ``{MODEL}``."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        return [piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece
                for piece in super().collect_usage_pieces(ctx)]


HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}


class Typer(typer.Typer):
    """typer.Typer whose commands are :class:`_Command` with ``-h`` as ``--help`` (every
    command module uses it)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("context_settings", HELP_OPTIONS)
        super().__init__(*args, **kwargs)

    def command(self, *args, cls=None, context_settings=None, **kwargs):
        return super().command(*args, cls=cls or _Command,
                               context_settings=context_settings or HELP_OPTIONS, **kwargs)


app = Typer(
    cls=_OneLineErrors,
    help="Compile a dataset of sequences into a transformer that reproduces it exactly.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain help: no "<bool>" type column
    pretty_exceptions_enable=False,
)
experiment_app = Typer(cls=_OneLineErrors, help="Experiments around the construction.",
                             no_args_is_help=True, rich_markup_mode=None)
app.add_typer(experiment_app, name="experiment")

def drop_output(stream) -> None:
    """The reader of ``stream`` went away (``exactformer verify … | head -1``): send the rest
    of the output to /dev/null, so the command finishes and exits with its own status
    (verify: 1 only when the check fails), without a broken-pipe error at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


class _Console(Console):
    """rich's console, but a closed pipe does not end the command (rich exits 1 there)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        drop_output(sys.stderr if self.stderr else sys.stdout)


def emit(text: str) -> None:
    """Print ``text`` on stdout as it is (machine-readable output), surviving a closed pipe."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        drop_output(sys.stdout)


# markup off: file names, class names and metadata are input ("[/x]" is a rich closing tag)
console = _Console(markup=False)
err_console = _Console(stderr=True, markup=False)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("exactformer")
        except PackageNotFoundError:
            v = "unknown (not installed)"
        console.print(f"exactformer {v}", highlight=False)
        raise typer.Exit(0)




QUIET = typer.Option(False, "--quiet", "-q", help="Print nothing but errors.")


def printable(text) -> str:
    """``text`` with terminal control characters replaced by "?" (names from files are input)."""
    return "".join(c if c.isprintable() else "?" for c in str(text))


def fail(message: str, code: int = 2) -> None:
    """Print one line on stderr and exit with ``code`` (``--json``: also the error object)."""
    err_console.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
    if _json_errors["on"]:
        _print_json_error(message, code)
    raise typer.Exit(code)


_debug = {"on": False}
_json_errors = {"on": False}  # a command running with --json: errors also as JSON on stdout


def _wants_json(command, args) -> bool:
    """A usage error of a command that has ``--json``, given on its command line."""
    argv = sys.argv[1:] if args is None else list(args)
    asked = any(a == "--json" or a.startswith("--json=") for a in argv)
    return asked and any(p.name == "json_output" for p in command.params)


def _print_json_error(message: str, code: int) -> None:
    """verify --json's error object (docs/verification.md, "Machine-readable output")."""
    from .commands.verify_json import dumps, error_document

    emit(dumps(error_document(message, code)))


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an internal error."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Compile a dataset of sequences into a transformer that reproduces it exactly."""
    _debug["on"] = debug


def user_errors(fn):
    """One stderr line per error: bad input → exit 2, failed check → 1, internal error → 3.

    A command's ``quiet`` (``-q``) silences its console; its ``json_output`` (``--json``)
    too, and an error then also prints verify's JSON error object on stdout.

    numpy's floating-point warnings are silenced: every check is explicit, and at extreme
    scales they would print lines of RuntimeWarnings before the one line that matters.
    """

    @wraps(fn)
    def wrapper(*args, **kwargs):
        quiet = console.quiet
        json_output = bool(kwargs.get("json_output"))  # stdout is the JSON object alone
        console.quiet = quiet or bool(kwargs.get("quiet")) or json_output
        _json_errors["on"] = json_output
        try:
            with np_quiet():
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
        except OSError as exc:  # writing the output, reading a file: the environment
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            fail(f"{where}{exc.strerror or exc}")
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # a bug: one line, exit 3 (the traceback with --debug)
            if _debug["on"]:
                import traceback

                traceback.print_exc()
            fail(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} (an "
                 "internal error: please report it; --debug shows where)", 3)
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None
        finally:
            console.quiet = quiet
            _json_errors["on"] = False

    return wrapper


class np_quiet:
    """Context: numpy floating-point warnings off (every check in the tool is explicit)."""

    def __enter__(self):
        import numpy as np

        self._state = np.seterr(all="ignore")
        self._warn = warnings.catch_warnings()
        self._warn.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)
        return self

    def __exit__(self, *exc):
        import numpy as np

        self._warn.__exit__(*exc)
        np.seterr(**self._state)
        return False


def refuse_swapped(model: Path, data: Path | None, data_suffixes: tuple[str, ...],
                   what: str, data_name: str) -> None:
    """A ``what`` file (by its suffix) given as MODEL is refused by name; when DATA is then a
    .safetensors file, the line says the arguments look swapped."""
    if model.suffix.lower() in data_suffixes and (data is None or
                                                  data.suffix.lower() == ".safetensors"):
        order = (f" (arguments swapped? the model comes first: MODEL {data_name} = {data} "
                 f"{model})" if data else "")
        fail(f"{model}: is a {what}, not a model file{order}")


def output_file(out: Path, option: str, suffixes: tuple[str, ...], inputs=()) -> Path:
    """Check an output file path before any work: nothing else is ever written or replaced.

    Refused (exit 2, one line): an extension other than ``suffixes`` (the tool writes what
    the extension says); an empty name; a directory; an existing file that is not a regular
    file (``/dev/null``, a FIFO); one of the ``inputs``; a parent that does not exist or is
    not a directory; a name the file system cannot hold or a directory it cannot write in
    (probed by creating and removing the temporary file the atomic write would use).
    """
    text = str(out)
    if not text or text.endswith(os.sep) or out.name in ("", ".", ".."):
        fail(f"{option} {text!r}: not a file name")
    if out.suffix.lower() not in suffixes:
        fail(f"{option} {out}: the file would be {' or '.join(suffixes)}; "
             f"give a name ending in {' or '.join(suffixes)}")
    try:
        st = out.stat() if out.exists() or out.is_symlink() else None
    except OSError as exc:
        fail(f"{option} {out}: {exc.strerror or exc}")
    if st is not None:
        import stat

        if stat.S_ISDIR(st.st_mode):
            fail(f"{option} {out}: is a directory")
        if not stat.S_ISREG(st.st_mode):
            fail(f"{option} {out}: exists and is not a regular file (refusing to replace it)")
        for p in inputs:
            try:
                same = p is not None and Path(p).exists() and os.path.samefile(p, out)
            except OSError:
                same = False
            if same:
                fail(f"{option} {out}: is the input file {p} (refusing to overwrite it)")
    parent = out.parent
    if not parent.exists():
        fail(f"{option} {out}: directory {parent} does not exist")
    if not parent.is_dir():
        fail(f"{option} {out}: {parent} is not a directory")
    probe_directory(parent, f"{option} {out}", out.name)
    return out


def probe_directory(directory: Path, what: str, name: str = "x") -> None:
    """Create and remove a temporary file in ``directory`` as the atomic write will."""
    from .dataset import temp_name

    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_name(name), suffix=".tmp" + Path(name).suffix[:16],
                                   dir=directory)
        os.close(fd)
        os.unlink(tmp)
        limit = os.pathconf(directory, "PC_NAME_MAX")
    except OSError as exc:
        fail(f"{what}: cannot write in {directory} ({exc.strerror or exc})")
    if len(os.fsencode(name)) > limit:
        fail(f"{what}: the file name is {len(os.fsencode(name))} bytes long, the file system "
             f"allows {limit}")


def output_directory(out: Path, option: str = "--out") -> Path:
    """An output directory: created if missing (with its parents), refused if unusable."""
    if not str(out):
        fail(f"{option} '': not a directory name")
    if out.exists() and not out.is_dir():
        fail(f"{option} {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"{option} {out}: cannot create the directory ({exc.strerror or exc})")
    probe_directory(out, f"{option} {out}")
    return out


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # output outside the consoles, e.g. a NoArgsIsHelp text
        drop_output(sys.stdout)
        sys.exit(0)


def note(message: str) -> None:
    """One ``note:`` line on stderr, not with ``-q``: a fact worth knowing before long work."""
    if not console.quiet:
        err_console.print(f"note: {message}", highlight=False, markup=False, soft_wrap=True)


from .commands import register_all  # noqa: E402  (commands import `app` from this module)
from .dataset import set_note_sink  # noqa: E402

register_all()
set_note_sink(note)  # readers say when a dataset is large (docs/limits.md)
