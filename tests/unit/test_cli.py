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


# --------------------------------------------------------------------------- configuration errors exit 2
@pytest.mark.parametrize(("args", "code", "needles"), [
    (["--set", "train.model.arch=resnet"], 0, ["arch: resnet", "train.model.resnet"]),
    (["--set", "train.model.resnet.widht=3"], 2, ["train.model.resnet", "widht", "width"]),
    (["--set", "train.model.arch=vgg99"], 2, ["vgg99", "small_cnn"]),
    (["--set", "nope.key=1"], 2, ["nope: unknown key"]),
    (["--set", "evaluate.suite=configs/augment/default.yaml"], 2, ["evaluate.suite", "default.yaml", "unknown key"]),
    (["--set", "deploy.policy=configs/deploy/missing.yaml"], 2, ["deploy.policy", "missing.yaml", "file not found"]),
])
def test_config_validates_every_referenced_file_and_exits_2(args, code, needles):
    res = runner.invoke(app, ["config", "--params", str(REPO / "params.yaml"), *args])
    assert res.exit_code == code, res.output
    for needle in needles:
        assert needle in res.output


def test_a_bad_architecture_fails_train_with_exit_2_before_training(tmp_path):
    from tests.fixtures.tiny_dataset import make_tiny_project

    root = make_tiny_project(tmp_path, per_class=4)
    res = runner.invoke(app, ["train", "--params", str(root / "params.yaml"),
                              "--set", "train.model.small_cnn={stages: 2, widht: 4}"])
    assert res.exit_code == 2, res.output
    assert "widht" in res.output and "width" in res.output
    assert not (root / "artifacts" / "train" / "best.ckpt").exists()


def test_stage_commands_say_when_overrides_apply_to_this_run_only(tmp_path):
    from tests.fixtures.tiny_dataset import make_tiny_project

    root = make_tiny_project(tmp_path, per_class=4)
    env = {"PATH": f"{Path(sys.executable).parent}:{__import__('os').environ['PATH']}"}
    out = subprocess.run([str(Path(sys.executable).parent / "cvplatform"), "validate", "--params",
                          str(root / "params.yaml"), "--set", "validate.suite=configs/expectations/manifest.yaml"],
                         cwd=root, capture_output=True, text=True, env={**__import__("os").environ, **env})
    assert "apply to this run only" in out.stderr and "dvc repro" in out.stderr


def test_library_logging_is_quiet_by_default(tmp_path):
    """`cvplatform validate` prints cvplatform's story, not Great Expectations' INFO lines (-v shows them)."""
    import os

    from tests.fixtures.tiny_dataset import make_tiny_project

    root = make_tiny_project(tmp_path, per_class=12)
    cli = str(Path(sys.executable).parent / "cvplatform")
    quiet = subprocess.run([cli, "validate", "--params", str(root / "params.yaml")], cwd=root,
                           capture_output=True, text=True, env=dict(os.environ))
    assert quiet.returncode in (0, 3), quiet.stderr[-2000:]
    third_party = [ln for ln in quiet.stderr.splitlines() if " INFO " in ln and "cvplatform" not in ln]
    assert third_party == [], third_party[:5]
    assert len(quiet.stderr.splitlines()) < 40, quiet.stderr
    loud = subprocess.run([cli, "validate", "-v", "--params", str(root / "params.yaml")], cwd=root,
                          capture_output=True, text=True, env=dict(os.environ))
    assert any(" DEBUG cvplatform" in ln for ln in loud.stderr.splitlines())
