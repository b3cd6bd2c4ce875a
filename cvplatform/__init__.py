"""cvplatform: an end-to-end MLOps platform for computer vision.

Every pipeline stage is a plain function, importable in a notebook::

    from cvplatform import load_params, run_ingest, run_validate
    params = load_params("params.yaml", ["ingest.source=shapes"])
    ingest = run_ingest(params)
    report = run_validate(params)

Importing this package is cheap: heavy libraries (torch, mlflow, airflow,
great_expectations) are imported inside the functions that need them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily on first access)
_EXPORTS: dict[str, str] = {
    "load_params": "cvplatform.config",
    "load_config": "cvplatform.config",
    "Params": "cvplatform.config",
    "CVPlatformError": "cvplatform.errors",
    "run_ingest": "cvplatform.data.ingest",
    "IngestResult": "cvplatform.data.ingest",
    "run_validate": "cvplatform.data.validate",
    "ValidateResult": "cvplatform.data.validate",
}

__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from cvplatform.config import Params, load_config, load_params  # noqa: F401
    from cvplatform.data.ingest import IngestResult, run_ingest  # noqa: F401
    from cvplatform.data.validate import ValidateResult, run_validate  # noqa: F401
    from cvplatform.errors import CVPlatformError  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cvplatform' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
