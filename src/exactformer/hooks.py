"""Hook points in TransformerLens's conventions, for the PyTorch twin (issue 16).

TransformerLens (``pip install exactformer[lens]``) names every activation of a model by
the path of an identity module, a *hook point*, through which it flows:
``blocks.3.hook_resid_pre``, ``blocks.3.attn.hook_pattern``, ``blocks.3.mlp.hook_pre`` …
A forward hook on a hook point sees the value and may return a replacement (activation
patching). :class:`HookPoint` and :class:`HookedModule` reproduce that machinery with the
same names, call convention (``hook_fn(value, hook=hook_point)``) and methods
(``run_with_cache``, ``run_with_hooks``, ``hooks``, ``reset_hooks``), so the twin needs
only the ``torch`` extra: TransformerLens itself pulls in ~490 MB (transformers, datasets,
wandb, accelerate) and 3 s of import. With the ``lens`` extra,
:func:`exactformer.lens.hooked` gives the same model on TransformerLens's own
``HookedRootModule``. The names and shapes are listed in docs/export.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["HookPoint", "HookPoints", "HookedModule", "NO_HOOKS"]


class HookPoint(nn.Module):
    """Identity module whose forward hooks may read or replace the value passing through."""

    def __init__(self):
        super().__init__()
        self.name: str | None = None

    def add_hook(self, hook: Callable, dir: str = "fwd") -> torch.utils.hooks.RemovableHandle:
        """Call ``hook(value, hook=self)`` on every forward pass; a non-None result replaces
        the value (TransformerLens's convention). Only forward hooks are supported."""
        if dir != "fwd":
            raise ValueError("only forward hooks (dir='fwd') are supported")
        return self.register_forward_hook(lambda module, args, out: hook(out, hook=self))

    def remove_hooks(self) -> None:
        self._forward_hooks.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class HookPoints(nn.Module):
    """A holder of hook points and nothing else (the block's ``mlp`` and ``attn``), so hook
    names read like TransformerLens's while parameters keep the file's names (``ff``, ``sa``)."""

    def __init__(self, names: Iterable[str], factory: Callable[[], nn.Module] = HookPoint):
        super().__init__()
        for name in names:
            setattr(self, name, factory())


class _Identity:
    def __getattr__(self, name):
        return _identity


def _identity(x):
    return x


NO_HOOKS = _Identity()  # stands in for a HookPoints holder when a layer runs on its own


class HookedModule:
    """``run_with_cache`` / ``run_with_hooks`` over the model's :class:`HookPoint` modules.

    Mixed into :class:`exactformer.torch.TorchTransformer` before ``nn.Module``; the hook
    names are the module paths (``named_modules``).
    """

    @property
    def hook_dict(self) -> dict[str, nn.Module]:
        return {name: m for name, m in self.named_modules() if isinstance(m, HookPoint)}

    def _setup_hook_names(self) -> None:
        for name, m in self.hook_dict.items():
            m.name = name

    def reset_hooks(self) -> None:
        for m in self.hook_dict.values():
            m.remove_hooks()

    @contextmanager
    def hooks(self, fwd_hooks: list[tuple[str | Callable, Callable]] = ()):
        """Add ``(name or names filter, hook_fn)`` pairs for the duration of the block."""
        handles = []
        try:
            points = self.hook_dict
            for name, fn in fwd_hooks:
                chosen = ([points[name]] if isinstance(name, str) and name in points else
                          [m for n, m in points.items() if callable(name) and name(n)])
                if isinstance(name, str) and name not in points:
                    raise KeyError(f"no hook point named {name!r}")
                handles += [m.add_hook(fn) for m in chosen]
            yield self
        finally:
            for h in handles:
                h.remove()

    def run_with_hooks(self, *args, fwd_hooks=(), **kwargs):
        """Forward pass with temporary hooks (removed afterwards)."""
        with self.hooks(fwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(self, *args, names_filter=None, **kwargs):
        """``(output, cache)``: cache maps every hook name (or those ``names_filter`` — a
        name, a list of names or a predicate — keeps) to its detached value."""
        if names_filter is None:
            keep = _always
        elif isinstance(names_filter, str):
            keep = names_filter.__eq__
        elif callable(names_filter):
            keep = names_filter
        else:
            keep = set(names_filter).__contains__
        cache: dict[str, torch.Tensor] = {}

        def saver(name):  # keyed by this model's path, even if the module is shared
            def save(value, hook):
                cache[name] = value.detach()
            return save

        with self.hooks([(name, saver(name)) for name in self.hook_dict if keep(name)]):
            out = self(*args, **kwargs)
        return out, cache


def _always(name: str) -> bool:
    return True
