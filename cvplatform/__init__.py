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

from typing import TYPE_CHECKING

from cvplatform.utils.lazy import lazy_exports

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
    "run_train": "cvplatform.train",
    "TrainResult": "cvplatform.train",
    "run_evaluate": "cvplatform.evaluation.run",
    "EvaluateResult": "cvplatform.evaluation.run",
    "run_export": "cvplatform.export.run",
    "ExportResult": "cvplatform.export.run",
    "register_model": "cvplatform.registry.register",
    "RegisterResult": "cvplatform.registry.register",
    "approve": "cvplatform.registry.approvals",
    "reject": "cvplatform.registry.approvals",
    "promote": "cvplatform.registry.aliases",
    "rollback": "cvplatform.registry.aliases",
    "load_model": "cvplatform.registry.loading",
    "create_app": "cvplatform.serving.app",
    "serve": "cvplatform.serving.app",
    "run_canary": "cvplatform.deploy.canary",
    "run_canary_local": "cvplatform.deploy.canary",
    "run_deploy": "cvplatform.deploy.canary",
    "CanaryResult": "cvplatform.deploy.canary",
    "run_monitor": "cvplatform.monitoring.run",
    "MonitorResult": "cvplatform.monitoring.run",
}

__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from cvplatform.config import Params, load_config, load_params  # noqa: F401
    from cvplatform.data.ingest import IngestResult, run_ingest  # noqa: F401
    from cvplatform.data.validate import ValidateResult, run_validate  # noqa: F401
    from cvplatform.deploy.canary import CanaryResult, run_canary, run_canary_local, run_deploy  # noqa: F401
    from cvplatform.errors import CVPlatformError  # noqa: F401
    from cvplatform.evaluation.run import EvaluateResult, run_evaluate  # noqa: F401
    from cvplatform.export.run import ExportResult, run_export  # noqa: F401
    from cvplatform.monitoring.run import MonitorResult, run_monitor  # noqa: F401
    from cvplatform.registry.aliases import promote, rollback  # noqa: F401
    from cvplatform.registry.approvals import approve, reject  # noqa: F401
    from cvplatform.registry.loading import load_model  # noqa: F401
    from cvplatform.registry.register import RegisterResult, register_model  # noqa: F401
    from cvplatform.serving.app import create_app, serve  # noqa: F401
    from cvplatform.train import TrainResult, run_train  # noqa: F401


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
