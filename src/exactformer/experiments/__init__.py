"""Experiments behind ``exactformer experiment ...`` (figures and trained models).

Each module exposes a ``run(out, ...)`` function that writes its outputs into a directory and
returns a summary; the CLI commands in :mod:`exactformer.commands` are thin wrappers.
"""
