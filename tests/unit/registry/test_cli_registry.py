"""`cvplatform registry ...`: the sub-commands print a summary and exit non-zero with clear messages."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cvplatform.cli import app

runner = CliRunner()


@pytest.fixture
def in_project(project, monkeypatch):
    monkeypatch.chdir(project.root)
    return project


def _run(*args: str):
    return runner.invoke(app, ["registry", *args])


def test_registry_help_lists_every_subcommand():
    res = runner.invoke(app, ["registry", "--help"])
    assert res.exit_code == 0
    for cmd in ("register", "approve", "reject", "promote", "rollback", "history", "verify", "show"):
        assert cmd in res.output
        sub = _run(cmd, "--help")
        assert sub.exit_code == 0 and "--params" in sub.output, (cmd, sub.output)


def test_full_review_cycle_through_the_cli(in_project, monkeypatch):
    res = _run("register")
    assert res.exit_code == 0, res.output
    assert "models:/cvplatform/1 registered" in res.output and "summary:" in res.output
    assert (in_project.root / "artifacts" / "register" / "summary.json").is_file()

    res = _run("approve", "cvplatform", "1", "--reviewer", "alice", "--comment", "mine")
    assert res.exit_code == 3 and "four-eyes" in res.output.lower()  # a refused rule exits 3 (README)

    res = _run("promote", "cvplatform", "1")
    assert res.exit_code == 3 and "not 'approved'" in res.output

    res = _run("approve", "cvplatform", "1", "--reviewer", "bob", "--comment", "looks good")
    assert res.exit_code == 0, res.output
    assert "approved by bob" in res.output

    res = _run("promote", "cvplatform", "1", "--comment", "go")
    assert res.exit_code == 0 and "promoted to v1" in res.output

    res = _run("rollback", "cvplatform")
    assert res.exit_code == 3 and "nothing to return to" in res.output

    res = _run("verify", "cvplatform", "1")
    assert res.exit_code == 0 and "audit trail intact; 3 event(s)" in res.output

    res = _run("show", "cvplatform")
    assert res.exit_code == 0 and "champion -> v1" in res.output and "approval approved by bob" in res.output

    res = _run("history", "cvplatform")
    assert res.exit_code == 0
    lines = [ln for ln in res.output.splitlines() if "cvplatform v1" in ln]
    assert [ln.split()[3] for ln in lines] == ["registered", "approved", "promoted"]


def test_cli_errors_name_the_problem(in_project):
    res = _run("show", "nope")
    assert res.exit_code == 1 and "'nope' does not exist" in res.output
    res = _run("approve", "cvplatform", "1", "--reviewer", "bob")
    assert res.exit_code != 0 and "--comment" in res.output  # required option


def test_approving_failed_gates_exits_3(failed_project, monkeypatch):
    monkeypatch.chdir(failed_project.root)
    assert _run("register").exit_code == 0
    res = _run("approve", "cvplatform", "1", "--reviewer", "bob", "--comment", "ship")
    assert res.exit_code == 3 and "gates did not pass" in res.output
    res = _run("reject", "cvplatform", "1", "--reviewer", "bob", "--comment", "gates failed")
    assert res.exit_code == 0 and "rejected by bob" in res.output


def test_set_overrides_reach_the_registry(in_project):
    res = _run("register", "--set", "registry.model_name=other")
    assert res.exit_code == 0 and "models:/other/1" in res.output
    res = _run("approve", "other", "1", "--reviewer", "bob", "--comment", "ok", "--set", "registry.reviewers=[carol]")
    assert res.exit_code == 3 and "not in registry.reviewers" in res.output
