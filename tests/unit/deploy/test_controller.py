"""The canary controller's contract without a server: clear errors, result shape, CLI wiring."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cvplatform.cli import app
from cvplatform.config import load_params
from cvplatform.deploy.analysis import CanaryPolicy
from cvplatform.deploy.canary import (
    AdminClient,
    CanaryResult,
    DeployError,
    configured_server,
    run_canary,
    run_deploy,
)
from cvplatform.errors import ConfigError
from cvplatform.serving.local import free_port

REPO = Path(__file__).resolve().parents[3]


def test_an_unreachable_server_is_a_clear_deploy_error(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(DeployError) as e:
        run_canary(load_params(REPO / "params.yaml"), 3, server=url, root=tmp_path, token="t", policy=CanaryPolicy())
    assert url in str(e.value) and "cvplatform serve" in str(e.value) and "deploy.server" in str(e.value)
    assert not (tmp_path / "artifacts").exists()  # nothing written when nothing happened
    client = AdminClient(url, "t", retries=1)
    with pytest.raises(DeployError):
        client.status()
    client.close()


def test_result_summary_and_lines():
    res = CanaryResult(model="m", version="4", decision="rollback", reasons=["agreement: 3/120 agree"],
                       failed_checks=["agreement"], champion_before="3", champion_after="3",
                       steps=[{"index": 0, "traffic": 0.1, "canary_requests": 120,
                               "analysis": {"passed": False, "checks": [
                                   {"name": "agreement", "status": "fail", "detail": "3/120 agree"}]}}])
    text = "\n".join(res.lines())
    assert "ROLLBACK" in text and "agreement" in text and "champion unchanged: v3" in text
    d = res.to_dict()
    assert d["stage"] == "deploy" and d["decision"] == "rollback" and d["failed_checks"] == ["agreement"]
    assert not res.promoted
    one = res.one_line()
    assert one.startswith("ROLLED BACK: m v4") and "agreement" in one and "champion v3 unchanged" in one
    assert "\n" not in one


def test_the_configured_server_comes_from_the_environment_then_params(monkeypatch, tmp_path):
    params = load_params(REPO / "params.yaml")
    monkeypatch.delenv("CVPLATFORM_DEPLOY_SERVER", raising=False)
    assert params.deploy.server is None and configured_server(params) is None  # embedded default: loopback
    assert configured_server(load_params(REPO / "params.yaml", ["deploy.server=http://serving:8080/"])) == \
        "http://serving:8080"
    monkeypatch.setenv("CVPLATFORM_DEPLOY_SERVER", "http://prod-serving:8080")
    assert configured_server(params) == "http://prod-serving:8080"
    monkeypatch.setenv("CVPLATFORM_DEPLOY_SERVER", "prod-serving:8080")
    with pytest.raises(ConfigError, match="CVPLATFORM_DEPLOY_SERVER"):
        configured_server(params)
    with pytest.raises(ConfigError, match="deploy.server"):
        load_params(REPO / "params.yaml", ["deploy.server=serving"])


def test_a_configured_server_that_is_down_fails_and_never_falls_back_to_loopback(monkeypatch, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("CVPLATFORM_DEPLOY_SERVER", url)
    with pytest.raises(DeployError, match="cannot reach"):
        run_deploy(load_params(REPO / "params.yaml"), 3, root=tmp_path, policy=CanaryPolicy())
    with pytest.raises(ConfigError, match="--server"):
        run_deploy(load_params(REPO / "params.yaml"), 3, root=tmp_path, server="serving:8080")


def test_cli_has_serve_and_deploy_canary():
    runner = CliRunner()
    for args in (["serve", "--help"], ["deploy", "--help"], ["deploy", "canary", "--help"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
    assert "--version" in runner.invoke(app, ["deploy", "canary", "--help"]).output
    r = runner.invoke(app, ["deploy", "canary", "--version", "3", "--server", f"http://127.0.0.1:{free_port()}",
                            "--params", str(REPO / "params.yaml")])
    assert r.exit_code != 0 and "cannot reach the inference server" in r.output
