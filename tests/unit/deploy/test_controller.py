"""The canary controller's contract without a server: clear errors, result shape, CLI wiring."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cvplatform.cli import app
from cvplatform.config import load_params
from cvplatform.deploy.analysis import CanaryPolicy
from cvplatform.deploy.canary import AdminClient, CanaryResult, DeployError, run_canary
from cvplatform.serving.local import free_port

REPO = Path(__file__).resolve().parents[3]


def test_an_unreachable_server_is_a_clear_deploy_error(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(DeployError) as e:
        run_canary(load_params(REPO / "params.yaml"), 3, server=url, root=tmp_path, token="t", policy=CanaryPolicy())
    assert url in str(e.value) and "cvplatform serve" in str(e.value)
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


def test_cli_has_serve_and_deploy_canary():
    runner = CliRunner()
    for args in (["serve", "--help"], ["deploy", "--help"], ["deploy", "canary", "--help"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
    assert "--version" in runner.invoke(app, ["deploy", "canary", "--help"]).output
    r = runner.invoke(app, ["deploy", "canary", "--version", "3", "--server", f"http://127.0.0.1:{free_port()}",
                            "--params", str(REPO / "params.yaml")])
    assert r.exit_code != 0 and "cannot reach the inference server" in r.output
