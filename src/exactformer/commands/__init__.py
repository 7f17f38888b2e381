"""CLI commands, one module per subsystem; each registers itself on ``cli.app``.

To add a command: write a module here that imports ``app`` (or ``experiment_app``) from
``exactformer.cli`` and decorates its functions, then list the module in ``MODULES``.
"""

import importlib

MODULES = [
    "core",
    "experiments_dynamics",
    "training",
    "bench",
    "tdtf",
    "export",
]


def register_all() -> None:
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}")
