"""Errors with a one-line message meant for the user.

The CLI maps them to its exit status (README, "Exit status"): :class:`ExactformerError`
(bad input or a documented limit of the method) → 2, :class:`VerificationError` (a check
failed) → 1, :class:`InternalError` (a bug) → 3.
"""


class ExactformerError(Exception):
    """Base class: bad input that the user can fix. ``str(err)`` is one line."""


class DatasetError(ExactformerError):
    """A dataset file or array that breaks docs/design.md §2 (format) or §3 (basic rules)."""


class InfeasibleError(DatasetError):
    """A dataset that no permutation-equivariant model fits (docs/design.md §3, rules i, ii)."""


class ModelFileError(ExactformerError):
    """A model file that is missing, corrupt or foreign (docs/design.md §2)."""


class CompileError(ExactformerError):
    """The data hits a documented limit of the construction (exit status 2), e.g. points too
    close for float64 layers; the message names the limit and the remedy (often ``--exact``).

    Failures that are no fault of the data are :class:`InternalError`.
    """


class ResourceError(ExactformerError):
    """The work would exceed what this machine has (e.g. exact mode's projected memory beyond
    what the operating system reports available): exit status 2, not retried with new draws.
    The message gives the estimate."""


class InternalError(Exception):
    """A bug: a step that should not fail did, after its retries (exit status 3).

    Not an :class:`ExactformerError`: the user's input is fine and there is nothing to fix.
    """


class VerificationError(Exception):
    """A model failed its check (exit status 1): e.g. no draw of the compiler certified.

    ``report`` is the :class:`~exactformer.verify.Report` of the last failed check.
    """

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report
