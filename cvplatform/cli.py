"""The ``cvplatform`` command: one subcommand per stage, thin wrappers over the library.

Every command takes ``--params FILE`` (default ``params.yaml``) and repeatable
``--set key.path=value``, prints a one-screen summary, and exits non-zero with a
clear message on failure. The stage functions write ``artifacts/<stage>/summary.json``.
"""

from __future__ import annotations

import logging
import sys
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
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def _run(fn: Callable[[], Any]) -> Any:
    """Run a stage; print its summary; turn CVPlatformError into a clean non-zero exit."""
    try:
        result = fn()
    except CVPlatformError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=exc.exit_code) from None
    for line in result.lines():
        typer.echo(line)
    if getattr(result, "summary_path", None):
        typer.echo(f"summary: {result.summary_path}")
    return result


def _params(params: Path, overrides: list[str] | None):
    from cvplatform.config import load_params

    return load_params(params, overrides or [])


@app.command()
def ingest(
    source: Annotated[
        str | None,
        typer.Option("--source", help="folder:PATH | s3://bucket/prefix | digits | shapes (overrides ingest.source)."),
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
        cfg = _params(params, overrides)
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
        cfg = _params(params, set_)
        from cvplatform.data.validate import run_validate

        return run_validate(cfg)

    _run(go)


@app.command("config")
def show_config(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Print the fully-resolved params (defaults filled in) as YAML."""
    import yaml

    try:
        p = _params(params, set_)
    except CVPlatformError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=exc.exit_code) from None
    typer.echo(yaml.safe_dump(p.model_dump(mode="json", by_alias=True), sort_keys=False))


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
