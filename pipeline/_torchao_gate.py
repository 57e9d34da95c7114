"""torchao stays out of the process until fp8 is asked for.

transformers and diffusers import torchao as soon as they find it installed (their torchao quantizers). That
loads torchao's C extensions, and where those don't match the installed torch (the CPU build, for one) it
prints "Failed to load ... .so" and "Unable to import `torchao` Tensor objects" on every import of this
package. Each library decides "installed" once, with ``importlib.util.find_spec``: diffusers when its
``utils.import_utils`` module runs, transformers on the first call of its cached ``is_torchao_available``.
While those two modules load, ``sys.modules["torchao"]`` is None, which ``find_spec`` reports as absent;
afterwards torchao imports as usual, and ``pipeline.quantization`` imports it when fp8 is asked for.

The cost: in this process transformers' and diffusers' own torchao integrations (loading checkpoints that
torchao quantised) stay off. This project quantises with torchao directly and loads only plain checkpoints.
``install`` runs when ``pipeline`` is imported; a process that imported torchao or either library before
``pipeline`` keeps what they decided.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

_AVAILABILITY_MODULES = ("diffusers.utils.import_utils", "transformers.utils.import_utils")


def install() -> None:
    if not any(isinstance(finder, _HideTorchaoWhileLoading) for finder in sys.meta_path):
        sys.meta_path.insert(0, _HideTorchaoWhileLoading())


def reveal_torchao() -> None:
    """Undo a hiding still in force (only while one of the two modules loads), so torchao can import."""
    if "torchao" in sys.modules and sys.modules["torchao"] is None:
        del sys.modules["torchao"]


@contextmanager
def _torchao_hidden() -> Iterator[None]:
    if "torchao" in sys.modules:  # imported (or already hidden): nothing to decide any more
        yield
        return
    sys.modules["torchao"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        reveal_torchao()


class _HideTorchaoWhileLoading(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _AVAILABILITY_MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _HidingLoader(spec.loader)
        return spec


class _HidingLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with _torchao_hidden():
            self._inner.exec_module(module)
            cached_check = getattr(module, "is_torchao_available", None)
            if module.__name__.startswith("transformers.") and callable(cached_check):
                cached_check()  # transformers caches the answer on the first call: make it now

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename ... of the real loader
        return getattr(self._inner, name)
