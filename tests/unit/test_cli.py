"""The CLI contract: --help everywhere, --params/--set, clean errors with non-zero exits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cvplatform.cli import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _commands() -> list[str]:
    import typer.main

    group = typer.main.get_command(app)
    return sorted(group.commands)


def test_every_command_has_help():
    cmds = _commands()
    assert {"ingest", "validate", "config"} <= set(cmds)
    for cmd in cmds:
        res = runner.invoke(app, [cmd, "--help"])
        assert res.exit_code == 0, (cmd, res.output)
        assert "Usage" in res.output


@pytest.mark.parametrize("cmd", ["ingest", "validate"])
def test_stage_commands_accept_params_and_set(cmd):
    res = runner.invoke(app, [cmd, "--help"])
    assert "--params" in res.output and "--set" in res.output


def test_config_command_resolves_overrides():
    res = runner.invoke(app, ["config", "--params", str(REPO / "params.yaml"), "--set", "ingest.workers=1"])
    assert res.exit_code == 0, res.output
    assert "workers: 1" in res.output


def test_bad_override_exits_2_with_message():
    res = runner.invoke(app, ["config", "--params", str(REPO / "params.yaml"), "--set", "ingest.nope=1"])
    assert res.exit_code == 2
    assert "ingest.nope: unknown key" in res.output


def test_missing_params_file_exits_nonzero(tmp_path):
    res = runner.invoke(app, ["ingest", "--params", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2
    assert "missing.yaml: file not found" in res.output


def test_serve_with_a_missing_model_file_exits_2_before_starting(tmp_path):
    res = runner.invoke(app, ["serve", "--params", str(REPO / "params.yaml"), "--model", str(tmp_path / "nope.onnx"),
                              "--port", "0"])
    assert res.exit_code == 2
    assert "nope.onnx: no such file" in res.output and "cvplatform export" in res.output


def test_import_cvplatform_is_light():
    code = (
        "import sys, cvplatform; "
        "heavy=[m for m in ('torch','mlflow','airflow','great_expectations','pandas','cv2') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
