"""The inference service's routers, each over the app's :class:`~cvplatform.serving.core.ServerState`.

* :mod:`.predict` -- ``POST /v1/predict``;
* :mod:`.oip` -- Open Inference Protocol v2 (server / model metadata, readiness, inference);
* :mod:`.ops` -- health (``/v2/health/live|ready``), ``/metrics`` and ``/``;
* :mod:`.admin` -- the token-protected ``/admin`` API.

:func:`cvplatform.serving.app.create_app` includes them in that order.
"""

from __future__ import annotations

from cvplatform.serving.routes import admin, oip, ops, predict

ROUTERS = (predict.router, oip.router, ops.router, admin.router)
"""In the order the app includes them (the OpenAPI document lists paths in this order)."""

__all__ = ["ROUTERS"]
