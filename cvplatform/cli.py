"""The ``cvplatform`` command: one subcommand per stage, thin wrappers over the library.

Every command takes ``--params FILE`` (default ``params.yaml``) and repeatable
``--set key.path=value``, prints a one-screen summary, and exits non-zero with a
clear message on failure. The stage functions write ``artifacts/<stage>/summary.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from cvplatform.errors import CVPlatformError

app = typer.Typer(
    name="cvplatform",
    help="End-to-end MLOps for computer vision: ingest, validate, train, evaluate, export, register, serve, deploy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOpt = Annotated[
    Path, typer.Option("--params", "-p", help="Params file (one section per stage).", show_default=True)
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a param: --set ingest.workers=4 (repeatable; value read as YAML)."),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]


def _setup_logging(verbose: bool) -> None:
    from cvplatform.utils.logs import configure_logging

    configure_logging(verbose)


def _echo(line: str) -> None:
    """Print a summary line; failed must-pass checks in red, warnings in yellow (colour only on a terminal)."""
    if "[FAIL] must_pass" in line or "PROBLEM:" in line:
        typer.secho(line, fg=typer.colors.RED)
    elif "[FAIL] warn" in line:
        typer.secho(line, fg=typer.colors.YELLOW)
    else:
        typer.echo(line)


def _run(fn: Callable[[], Any]) -> Any:
    """Run a stage; print its summary; turn CVPlatformError into a clean non-zero exit."""
    try:
        result = fn()
    except CVPlatformError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=exc.exit_code) from None
    for line in result.lines():
        _echo(line)
    if getattr(result, "summary_path", None):
        typer.echo(f"summary: {result.summary_path}")
    return result


def _params(params: Path, overrides: list[str] | None, *, dvc_stage: str | None = None):
    from cvplatform.config import load_params

    cfg = load_params(params, overrides or [])
    if dvc_stage and overrides:
        # the stage's outputs now come from settings that params.yaml does not hold: say so, since
        # `dvc repro` follows params.yaml and will quietly redo the stage the params.yaml way
        typer.secho(
            f"note: {', '.join(overrides)} apply to this run only. `dvc repro` follows {params} and will re-run "
            f"{dvc_stage} with its values; to make them the pipeline's, edit {params} "
            "(or `dvc exp run -S key=value`).", fg=typer.colors.YELLOW, err=True)
    return cfg


@app.command()
def ingest(
    source: Annotated[
        str | None,
        typer.Option("--source", help="PATH (or folder:PATH) | s3://bucket/prefix | digits | shapes | scenes "
                                     "(overrides ingest.source for this run only; dvc repro follows params.yaml)."),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Ingest images from a source into data/raw, data/quarantine and the manifest."""
    _setup_logging(verbose)

    def go():
        overrides = list(set_ or [])
        if source is not None:
            overrides.append(f"ingest.source={source}")
        cfg = _params(params, overrides, dvc_stage="ingest")
        from cvplatform.data.ingest import run_ingest

        return run_ingest(cfg)

    _run(go)


@app.command()
def validate(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Validate the manifest against its Great Expectations suite (exit 3 on failure)."""
    _setup_logging(verbose)

    def go():
        cfg = _params(params, set_, dvc_stage="validate")
        from cvplatform.data.validate import run_validate

        return run_validate(cfg)

    _run(go)


@app.command()
def train(
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue from artifacts/train/last.ckpt and the same MLflow run."),
    ] = False,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Train a classifier on the manifest (Lightning), tracked in MLflow; writes artifacts/train/."""
    _setup_logging(verbose)

    def go():
        from cvplatform.train import run_train

        return run_train(_params(params, set_, dvc_stage="train"), resume=resume)

    _run(go)


@app.command()
def evaluate(
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            metavar="PATH_OR_MODEL_URI",
            help="*.onnx, *.ckpt or models:/NAME@ALIAS (default: evaluate.model, artifacts/export/model.onnx: "
                 "the exported artifact that ships).",
        ),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run the scenario suite on the exported model and check the release gates (exit 3 when a must-pass gate
    fails); writes the report and the model card."""
    _setup_logging(verbose)

    def go():
        from cvplatform.errors import GateFailed
        from cvplatform.evaluation.run import run_evaluate

        try:
            return run_evaluate(_params(params, set_, dvc_stage="evaluate"), model=model)
        except GateFailed as exc:  # show the scenario table before the failed checks
            for line in getattr(exc, "result", None).lines() if getattr(exc, "result", None) else []:
                _echo(line)
            raise

    _run(go)


@app.command("champion-ref")
def champion_ref(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Write the registry champion's version and sha256 to artifacts/champion.json when it changed (a dependency
    of `evaluate` in dvc.yaml: a promotion or rollback re-runs evaluate; the same champion keeps `dvc repro` a no-op)."""
    _setup_logging(verbose)

    def go():
        import json

        from cvplatform.evaluation.champion import describe, write_champion_ref

        path, changed = write_champion_ref(_params(params, set_))

        class _Summary:
            def lines(self) -> list[str]:
                return [describe(json.loads(path.read_text())), f"  {path}: {'updated' if changed else 'unchanged'}"]

        return _Summary()

    _run(go)


@app.command()
def export(
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="Checkpoint to export (default: export.checkpoint, artifacts/train/best.ckpt)."),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Export to ONNX (parity gate, exit 3 on failure), try INT8, benchmark; `cvplatform evaluate` judges it next."""
    _setup_logging(verbose)

    def go():
        from cvplatform.export.run import run_export

        return run_export(_params(params, set_, dvc_stage="export"), checkpoint=checkpoint)

    _run(go)


registry_app = typer.Typer(
    name="registry",
    help="MLflow model registry: register, approve/reject, promote/rollback, history, verify, show.",
    no_args_is_help=True,
)
app.add_typer(registry_app, name="registry")
NameArg = Annotated[str, typer.Argument(help="Registered model name (params registry.model_name).")]
VersionArg = Annotated[str, typer.Argument(help="Model version number.")]
ReviewerOpt = Annotated[str | None, typer.Option(
    "--reviewer", help="Who decides (not the version's author). Required on the embedded local store (recorded as "
                       "self-declared); with a tracking server you are the authenticated user, and a --reviewer "
                       "naming someone else is refused.")]


@registry_app.command("register")
def registry_register(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Register artifacts/export/model.onnx as a new version (idempotent): lineage tags, challenger, pending."""
    _setup_logging(verbose)

    def go():
        from cvplatform.registry.register import register_model

        return register_model(_params(params, set_))

    _run(go)


@registry_app.command("approve")
def registry_approve(
    name: NameArg,
    version: VersionArg,
    comment: Annotated[str, typer.Option("--comment", help="Why (recorded on the version and in the audit log).")],
    reviewer: ReviewerOpt = None,
    confirm_incompatible: Annotated[bool, typer.Option(
        "--confirm-incompatible",
        help="Confirm that the version's task, class list or input contract may differ from the champion's "
             "(recorded in the signed approval).")] = False,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Approve a version (identity, four-eyes, registry.reviewers, gates, compatibility); a refusal exits 3."""
    _setup_logging(verbose)

    def go():
        from cvplatform.registry.approvals import approve

        return approve(name, version, reviewer, comment, params=_params(params, set_),
                       confirm_incompatible=confirm_incompatible)

    _run(go)


@registry_app.command("reject")
def registry_reject(
    name: NameArg,
    version: VersionArg,
    comment: Annotated[str, typer.Option("--comment", help="Why it is rejected (required).")],
    reviewer: ReviewerOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Reject a version (identity, four-eyes and registry.reviewers apply); decisions are final; a refusal exits 3."""
    _setup_logging(verbose)

    def go():
        from cvplatform.registry.approvals import reject

        return reject(name, version, reviewer, comment, params=_params(params, set_))

    _run(go)


@registry_app.command("promote")
def registry_promote(
    name: NameArg,
    version: VersionArg,
    comment: Annotated[str, typer.Option("--comment", help="Why (recorded in the audit log).")] = "",
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Point the champion alias at a version approved in its verified audit trail (refusals exit 3)."""
    _setup_logging(verbose)

    def go():
        from cvplatform.registry.aliases import promote

        return promote(name, version, comment=comment, params=_params(params, set_))

    _run(go)


@registry_app.command("rollback")
def registry_rollback(
    name: NameArg,
    comment: Annotated[str, typer.Option("--comment", help="Why (recorded in the audit log).")] = "",
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Move the champion alias back to the previous champion (recorded)."""
    _setup_logging(verbose)

    def go():
        from cvplatform.registry.aliases import rollback

        return rollback(name, comment=comment, params=_params(params, set_))

    _run(go)


@registry_app.command("history")
def registry_history(
    name: NameArg,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Print the audit log of every version, oldest first."""
    _setup_logging(verbose)

    def go():
        from cvplatform.registry.audit import history

        return history(name, params=_params(params, set_))

    _run(go)


@registry_app.command("verify")
def registry_verify(
    name: NameArg,
    version: VersionArg,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Verify a version's signed audit trail: exit 3 when an event was edited, reordered or deleted."""
    _setup_logging(verbose)

    def go():
        from cvplatform.registry.audit import verify_version

        return verify_version(name, version, params=_params(params, set_))

    result = _run(go)
    if not result.ok:
        typer.secho(f"error: the audit trail of {name} v{version} is BROKEN ({len(result.problems)} problem(s)); "
                    "see docs/runbooks/rejected-approval.md", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=3)


@registry_app.command("show")
def registry_show(
    name: NameArg,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Print versions with aliases, approval state and gate results."""
    _setup_logging(verbose)

    def go():
        from cvplatform.registry.audit import show

        return show(name, params=_params(params, set_))

    _run(go)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option("--host", help="Interface to bind (default serve.host).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="TCP port (default serve.port).")] = None,
    model: Annotated[
        Path | None, typer.Option("--model", help="Serve this local ONNX file instead of the registry aliases.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="Serving config (default serve.config).")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run the inference service (FastAPI + onnxruntime): /v1/predict, OIP v2 /v2/..., /metrics, /admin/..."""
    _setup_logging(verbose)
    try:
        cfg = _params(params, set_)
        from cvplatform.serving.app import serve as run_server

        run_server(cfg, host=host, port=port, model=model, config_path=config, log_level=log_level)
    except CVPlatformError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=exc.exit_code) from None


deploy_app = typer.Typer(
    name="deploy",
    help="Deployment: canary rollout with automatic promotion or rollback.",
    no_args_is_help=True,
)
app.add_typer(deploy_app, name="deploy")


@deploy_app.command("canary")
def deploy_canary(
    version: Annotated[str, typer.Option("--version", help="Registry version to roll out.")],
    server: Annotated[
        str | None,
        typer.Option("--server", help="The serving deployment's base URL (default $CVPLATFORM_DEPLOY_SERVER, "
                                      "then deploy.server; none = the loopback canary)."),
    ] = None,
    local: Annotated[
        bool,
        typer.Option("--local", help="Loopback canary: a private `cvplatform serve` process plus replayed "
                                     "held-out traffic (deploy.local), even when a server is configured."),
    ] = False,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Canary-deploy a version on the serving deployment: 10% -> 50% -> 100% with analysis; promote, or roll
    back (exit 3). Too little traffic to judge: inconclusive (exit 1, the version stays approved)."""
    _setup_logging(verbose)

    def go():
        from cvplatform.deploy.canary import run_deploy

        cfg = _params(params, set_)
        return run_deploy(cfg, version, server=server, local=local, params_file=str(params),
                          overrides=list(set_ or []))

    result = _run(go)
    decision = getattr(result, "decision", None)
    if decision == "rollback":
        raise typer.Exit(code=3)
    if decision == "inconclusive":
        raise typer.Exit(code=1)


@app.command()
def monitor(
    since: Annotated[
        str | None,
        typer.Option("--since", help="Window start, ISO-8601 UTC (e.g. 2026-01-31T00:00:00Z); default: "
                                     "now - window_hours."),
    ] = None,
    fail_on_drift: Annotated[
        bool, typer.Option("--fail-on-drift", help="Exit 3 when drift is found (for scripts); default exit 0."),
    ] = False,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Compare served traffic (request log) with the training data: input and prediction drift; print the verdict."""
    _setup_logging(verbose)

    def go():
        from cvplatform.monitoring.run import run_monitor

        return run_monitor(_params(params, set_), since=since)

    result = _run(go)
    if fail_on_drift and result.drifted:
        raise typer.Exit(code=3)


@app.command("config")
def show_config(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only validate; print nothing on success.")] = False,
) -> None:
    """Validate params.yaml and every config file it names, then print the resolved params (exit 2 if invalid)."""
    import yaml

    try:
        p = _params(params, set_)
        from cvplatform.config import check_params

        checked = check_params(p, Path(params).resolve().parent)
    except CVPlatformError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=exc.exit_code) from None
    if quiet:
        return
    typer.echo(yaml.safe_dump(p.model_dump(mode="json", by_alias=True), sort_keys=False))
    typer.echo("# valid: params.yaml and " + "; ".join(checked))


@app.command("tasks")
def list_tasks() -> None:
    """List the tasks `project.task` can select (built-in, installed plugins)."""
    from cvplatform.tasks import get_task, known_tasks

    for name in known_tasks():
        typer.echo(f"{name:16s} {get_task(name).description}")


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
