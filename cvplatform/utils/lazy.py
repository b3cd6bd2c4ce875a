"""PEP 562 lazy exports: a package lists ``name -> module`` and imports the module on first use.

Keeps ``import cvplatform`` (and its subpackages) light: torch, mlflow, onnxruntime ...
load only when a notebook or a task touches a name that needs them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` that import ``exports[name]`` on first access.

    Example:
        >>> __getattr__, __dir__ = lazy_exports(__name__, {"run_ingest": "cvplatform.data.ingest"})  # doctest: +SKIP
    """
    names = sorted({*exports, *getattr(sys.modules.get(package), "__all__", ())})

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # cache: the next access skips __getattr__
        return value

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__
