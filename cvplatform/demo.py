"""``make demo``: one whole release cycle on the embedded defaults, then what it produced.

1. ``dvc repro``: ingest -> validate -> train -> export -> evaluate (the same pipeline
   definition users and Airflow run; unchanged stages are skipped on a second run);
2. register the exported model in the MLflow registry (idempotent);
3. approve it as a named reviewer (four-eyes: the reviewer is not the author);
4. canary-deploy it behind a live HTTP server on 127.0.0.1 with replayed held-out
   traffic (the quick policy ``configs/deploy/canary-demo.yaml``), which promotes it;
5. print the key numbers of each step.

Run with ``python -m cvplatform.demo [--root DIR] [--reviewer NAME]``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import typer

from cvplatform.pipeline import dvc_env, dvc_executable


def _summary(root: Path, stage: str) -> dict | None:
    f = root / "artifacts" / stage / "summary.json"
    return json.loads(f.read_text()) if f.exists() else None


def report(root: Path) -> list[str]:
    """The demo's closing report, one line per fact, from the stages' summary.json files."""
    lines = ["", "=== cvplatform demo: results ==="]
    ing = _summary(root, "ingest")
    if ing:
        lines.append(
            f"ingest   : source={ing.get('source')} seen={ing['seen']} accepted={ing['accepted']} "
            f"quarantined={ing['quarantined']} duplicates={ing['duplicates']} splits={ing.get('by_split')}"
        )
    val = _summary(root, "validate")
    if val:
        lines.append(f"validate : success={val['success']} ({val.get('passed')}/{val.get('evaluated')} expectations)")
        if val.get("data_docs"):
            lines.append(f"           data docs: {val['data_docs']}")
    trn = _summary(root, "train")
    if trn:
        metrics = trn.get("best_metrics") or {}
        acc = metrics.get("val_acc")
        lines.append(f"train    : {trn.get('arch')} val_acc={acc:.4f} (best epoch {trn.get('best_epoch')}, "
                     f"mlflow run {trn.get('run_id')})" if isinstance(acc, int | float) else f"train    : {metrics}")
    ev = _summary(root, "evaluate")
    if ev:
        lines.append(f"evaluate : gates {'PASSED' if ev.get('passed') else 'FAILED'} on {ev.get('n_images')} test "
                     f"images, scenario pass rate {ev.get('pass_rate', 0):.0%}; report artifacts/evaluate/report.html")
    ex = _summary(root, "export")
    if ex:
        bench = (ex.get("benchmark") or {}).get("runtimes") or {}
        lat = ", ".join(f"{k} p50 {v['latency_ms']['p50']:.3f} ms"
                        for k, v in bench.items() if isinstance(v, dict) and "latency_ms" in v)
        lines.append(f"export   : shipped {ex.get('chosen')} ({ex.get('artifact')}); {lat}")
        if ex.get("int8_rejected_reason"):
            lines.append(f"           INT8 rejected: {ex['int8_rejected_reason']}")
    return lines


def _release(root: Path, params, reviewer: str, policy, *, deploy: bool = True) -> list[str]:
    """Register the stage outputs under ``root``, approve them, canary-deploy; return report lines."""
    from cvplatform.deploy.canary import run_canary_local
    from cvplatform.registry import approve, register_model
    from cvplatform.registry.errors import AlreadyApprovedError

    reg = register_model(params, root=root)
    lines = ["", *reg.lines()]
    try:
        lines += approve(reg.model_name, reg.version, reviewer, "approved by make demo", params=params, root=root).lines()
    except AlreadyApprovedError as exc:
        lines.append(f"approve: {exc}")
    if not deploy:
        return lines + [f"deploy: a champion already serves; v{reg.version} is not re-deployed"]
    canary = run_canary_local(params, reg.version, root=root, policy=policy)
    return lines + ["", *canary.lines()]


def _champion(params, root: Path) -> str | None:
    from cvplatform.registry import show
    from cvplatform.registry.errors import RegistryError

    try:
        return show(params.registry.model_name, params=params, root=root).aliases.get(params.registry.champion_alias)
    except RegistryError:  # no registered model yet
        return None


@contextmanager
def _tracking_at(uri: str):
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


def challenger_root(root: Path) -> Path:
    """A side project sharing ``root``'s data and configs, where the demo trains its challenger."""
    ch = root / "artifacts" / "demo-challenger"
    ch.mkdir(parents=True, exist_ok=True)
    for name in ("data", "configs"):
        link = ch / name
        if not link.exists():
            link.symlink_to(root / name, target_is_directory=True)
    shutil.copyfile(root / "params.yaml", ch / "params.yaml")  # the demo's server runs there
    return ch


def release(root: Path, reviewer: str, challenger_seed_offset: int = 1) -> list[str]:
    """The demo's release cycle: v1 from ``dvc repro`` becomes champion, then a retrained
    challenger (another seed, trained through the library like a notebook would) is
    evaluated against it, registered, approved and canary-deployed with live traffic."""
    from cvplatform.config import load_params
    from cvplatform.deploy.analysis import load_canary_policy
    from cvplatform.registry import show
    from cvplatform.tracking import tracking_uri

    params = load_params(root / "params.yaml")
    policy = load_canary_policy(root / "configs/deploy/canary-demo.yaml")
    name = params.registry.model_name
    lines = ["", "--- release 1: the model dvc repro just built (first deploy: no champion to compare with) ---"]
    lines += _release(root, params, reviewer, policy, deploy=_champion(params, root) is None)

    seed = (params.train.seed if params.train.seed is not None else params.project.seed) + challenger_seed_offset
    lines += ["", f"--- release 2: a challenger retrained with seed {seed}, canaried against the champion ---"]
    from cvplatform import run_evaluate, run_export, run_train

    ch = challenger_root(root)
    challenger = load_params(root / "params.yaml", [f"train.seed={seed}", "train.progress_bar=false"])
    with _tracking_at(tracking_uri(root)):  # same MLflow store and registry as the main project
        if (ch / "artifacts/export/summary.json").is_file():  # built by an earlier demo: reuse, no new version
            lines.append(f"challenger: reusing {ch / 'artifacts'} (delete it to retrain)")
        else:
            lines += run_train(challenger, root=ch).lines()
            lines += run_export(challenger, root=ch).lines()[:1]
            lines += run_evaluate(challenger, root=ch).lines()[-4:]  # the gates judge the exported artifact
        lines += _release(ch, challenger, reviewer, policy)
    lines += ["", *show(name, params=params, root=root).lines()]
    return lines


def main(
    root: Path = typer.Option(Path("."), help="Project root (holds dvc.yaml and params.yaml)."),
    force: bool = typer.Option(False, help="Re-run every stage (dvc repro --force)."),
    reviewer: str = typer.Option("demo-reviewer", help="Reviewer recorded on the approval (not the author)."),
) -> None:
    root = root.resolve()
    cmd = [dvc_executable(), "repro"] + (["--force"] if force else [])
    typer.echo(f"$ {' '.join(cmd)}  (in {root})")
    rc = subprocess.run(cmd, cwd=root, env=dvc_env()).returncode
    if rc != 0:
        typer.secho(f"dvc repro failed with exit code {rc}; see the stage output above.", fg="red", err=True)
        raise typer.Exit(rc)
    from cvplatform.errors import CVPlatformError

    try:
        release_lines = release(root, reviewer)
    except CVPlatformError as exc:
        typer.secho(f"release failed: {exc}", fg="red", err=True)
        raise typer.Exit(getattr(exc, "exit_code", 1)) from None
    for line in release_lines + report(root):
        typer.echo(line)


if __name__ == "__main__":
    typer.run(main)
