"""Drift monitoring: is the traffic a model serves still like the data it was trained on?

* :mod:`~cvplatform.monitoring.stats`: per-image input statistics (brightness,
  contrast, sharpness, width, height, aspect ratio);
* :mod:`~cvplatform.monitoring.inference_log`: the server's request log
  (:class:`InferenceLogger`, its background writer :class:`InferenceLogQueue`, :func:`read_log`);
* :mod:`~cvplatform.monitoring.reference`: the training reference, cached by data hash;
* :mod:`~cvplatform.monitoring.drift`: PSI / KS / prediction drift and the policy
  (:func:`check_drift` -> :class:`DriftReport`);
* :mod:`~cvplatform.monitoring.run`: the ``monitor`` stage (:func:`run_monitor`).

Importing this package is cheap: names are loaded on first access.

Example:
    >>> from cvplatform.monitoring import InferenceLogger, run_monitor  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cvplatform.utils.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "STAT_NAMES": "cvplatform.monitoring.stats",
    "image_stats": "cvplatform.monitoring.stats",
    "InferenceLogger": "cvplatform.monitoring.inference_log",
    "InferenceLogQueue": "cvplatform.monitoring.inference_log",
    "LOG_COLUMNS": "cvplatform.monitoring.inference_log",
    "read_log": "cvplatform.monitoring.inference_log",
    "Reference": "cvplatform.monitoring.reference",
    "build_reference": "cvplatform.monitoring.reference",
    "get_reference": "cvplatform.monitoring.reference",
    "load_reference": "cvplatform.monitoring.reference",
    "DriftCheck": "cvplatform.monitoring.drift",
    "DriftPolicy": "cvplatform.monitoring.drift",
    "DriftReport": "cvplatform.monitoring.drift",
    "check_drift": "cvplatform.monitoring.drift",
    "class_psi": "cvplatform.monitoring.drift",
    "ks_statistic": "cvplatform.monitoring.drift",
    "label_psi": "cvplatform.monitoring.drift",
    "psi": "cvplatform.monitoring.drift",
    "MonitorResult": "cvplatform.monitoring.run",
    "run_monitor": "cvplatform.monitoring.run",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from cvplatform.monitoring.drift import (  # noqa: F401
        DriftCheck,
        DriftPolicy,
        DriftReport,
        check_drift,
        class_psi,
        ks_statistic,
        label_psi,
        psi,
    )
    from cvplatform.monitoring.inference_log import LOG_COLUMNS, InferenceLogger, InferenceLogQueue, read_log  # noqa: F401
    from cvplatform.monitoring.reference import (  # noqa: F401
        Reference,
        build_reference,
        get_reference,
        load_reference,
    )
    from cvplatform.monitoring.run import MonitorResult, run_monitor  # noqa: F401
    from cvplatform.monitoring.stats import STAT_NAMES, image_stats  # noqa: F401


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
