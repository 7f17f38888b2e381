"""The PyTorch twin on TransformerLens's own hook machinery (``pip install exactformer[lens]``).

:class:`exactformer.torch.TorchTransformer` already has hook points with TransformerLens's
names and methods (:mod:`exactformer.hooks`), without the dependency. :func:`hooked`
builds the same model on TransformerLens's ``HookedRootModule`` and ``HookPoint`` (3.x and
4.x), so everything written for them — ``run_with_cache`` returning an
``ActivationCache``, ``run_with_hooks``, ``add_perma_hook``, the patching utilities —
applies to the compiled model itself. docs/export.md lists the hook names.
"""

from __future__ import annotations

from functools import cache

from .export import MissingExtraError


@cache
def lens_class():
    """``LensTransformer``: :class:`TorchTransformer` on TransformerLens's classes."""
    try:
        from transformer_lens.hook_points import HookPoint
    except ImportError:
        raise MissingExtraError("the TransformerLens twin needs transformer-lens: "
                                "pip install 'exactformer[lens]'") from None
    try:
        from transformer_lens import HookedRootModule  # 4.x
    except ImportError:
        from transformer_lens.hook_points import HookedRootModule  # 3.x

    from .torch import TorchTransformer

    class LensTransformer(HookedRootModule, TorchTransformer):
        """TorchTransformer whose hook points are TransformerLens ``HookPoint``s."""

        hook_point = HookPoint
        hook_dict = None  # set by HookedRootModule.setup (shadows our property)

        def __init__(self, *args, **kwargs):
            TorchTransformer.__init__(self, *args, **kwargs)
            self.is_caching, self.context_level = False, 0
            self.setup()

        def _setup_hook_names(self) -> None:  # setup() names TransformerLens's hook points
            pass

    return LensTransformer


def hooked(model, **kwargs):
    """The twin of ``model`` (a :class:`~exactformer.Transformer`, a path or a
    :class:`TorchTransformer`) as a TransformerLens ``HookedRootModule``."""
    from pathlib import Path

    from .model import Transformer

    if isinstance(model, (str, Path)):
        model = Transformer.load(model)
    if hasattr(model, "to_model"):
        model = model.to_model()
    return lens_class().from_model(model, **kwargs)
