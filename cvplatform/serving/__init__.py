"""HTTP inference service: FastAPI + onnxruntime, micro-batching, traffic split, shadowing, metrics.

Modules (import them directly; this package imports nothing heavy):

* :mod:`~cvplatform.serving.app` -- the FastAPI app (:func:`~cvplatform.serving.app.create_app`,
  :func:`~cvplatform.serving.app.serve`), wiring the routers of :mod:`~cvplatform.serving.routes`:
  ``/v1/predict``, Open Inference Protocol v2, health and ``/metrics``, the token-protected ``/admin`` API;
* :mod:`~cvplatform.serving.core` -- the server state every route shares (over the model manager)
  and the prediction core (routing, canary fallback, statistics, shadowing);
* :mod:`~cvplatform.serving.web` -- HTTP plumbing: body limit, body reading, the JSON error shape;
* :mod:`~cvplatform.serving.openapi` -- the documented request bodies and error shape;
* :mod:`~cvplatform.serving.models` -- model sources (registry aliases, a local file), loading
  (:class:`cvplatform.runtime.RuntimeModel`), atomic swaps and reloads (``ModelManager``);
* :mod:`~cvplatform.serving.batching` -- dynamic micro-batching;
* :mod:`~cvplatform.serving.routing` -- deterministic, sticky traffic split and shadow sampling;
* :mod:`~cvplatform.serving.metrics` -- Prometheus metrics and per-variant statistics;
* :mod:`~cvplatform.serving.inputs` -- request bodies to images/tensors (4xx on bad input);
* :mod:`~cvplatform.serving.budget` -- decode memory charged per request and across requests in flight;
* :mod:`~cvplatform.serving.protocol` -- ``cvplatform serve``'s HTTP layer: JSON protocol errors, timeouts;
* :mod:`~cvplatform.serving.schemas` -- ``configs/deploy/serving.yaml`` and the API's JSON models;
* :mod:`~cvplatform.serving.replay` -- traffic replay client (``python -m cvplatform.serving.replay``);
* :mod:`~cvplatform.serving.local` -- server / replay subprocesses on loopback.

Example::

    from cvplatform.config import load_params
    from cvplatform.serving.app import serve
    serve(load_params("params.yaml"), port=8080)
"""
