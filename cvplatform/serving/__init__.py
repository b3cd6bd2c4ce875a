"""HTTP inference service: FastAPI + onnxruntime, micro-batching, traffic split, shadowing, metrics.

Modules (import them directly; this package imports nothing heavy):

* :mod:`~cvplatform.serving.app` -- the FastAPI app (:func:`~cvplatform.serving.app.create_app`,
  :func:`~cvplatform.serving.app.serve`): ``/v1/predict``, Open Inference Protocol v2, ``/metrics``,
  the token-protected ``/admin`` API;
* :mod:`~cvplatform.serving.models` -- model sources (registry aliases, a local file), loading,
  atomic swaps and reloads;
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
