"""exactformer: compile a dataset of sequences into a transformer that reproduces it exactly.

    >>> import exactformer as ef
    >>> ds = ef.load_dataset("data.npz")
    >>> model = ef.compile(ds)            # hardmax, strict, float64, verified
    >>> ef.verify(model, ds).passed
    True

See docs/design.md for the architecture (§1), the files (§2), what "exact" means (§3) and the
construction (§4-§5).
"""

from . import progress
from .compiler import compile
from .dataset import Dataset, load_dataset, save_dataset
from .errors import (
    CompileError,
    DatasetError,
    ExactformerError,
    InfeasibleError,
    InternalError,
    ModelFileError,
    VerificationError,
)
from .model import Block, FeedForward, SelfAttention, Transformer
from .verify import Report, verify

__version__ = "0.1.0"

__all__ = [
    "Block",
    "CompileError",
    "Dataset",
    "DatasetError",
    "ExactformerError",
    "FeedForward",
    "InfeasibleError",
    "InternalError",
    "ModelFileError",
    "Report",
    "SelfAttention",
    "Transformer",
    "VerificationError",
    "compile",
    "progress",
    "load_dataset",
    "save_dataset",
    "verify",
]
