"""Deployment: the canary controller (:mod:`~cvplatform.deploy.canary`) and its pure analysis
(:mod:`~cvplatform.deploy.analysis`).

Example::

    from cvplatform.config import load_params
    from cvplatform.deploy.canary import run_deploy
    result = run_deploy(load_params("params.yaml"), 4)   # deploy.server, or loopback when it is null
    result.decision, result.reasons, result.served_version
"""
