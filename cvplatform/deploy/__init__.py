"""Deployment: the canary controller (:mod:`~cvplatform.deploy.canary`) and its pure analysis
(:mod:`~cvplatform.deploy.analysis`).

Example::

    from cvplatform.config import load_params
    from cvplatform.deploy.canary import run_canary
    result = run_canary(load_params("params.yaml"), 4, server="http://127.0.0.1:8080")
    result.decision, result.reasons
"""
