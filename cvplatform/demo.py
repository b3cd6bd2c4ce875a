"""``make demo``: run the pipeline on the embedded defaults and print what it produced.

It runs ``dvc repro`` (so the demo exercises the same pipeline definition users run),
then prints the key numbers of each stage from ``artifacts/<stage>/summary.json``.
Run with ``python -m cvplatform.demo [--root DIR]``.
"""

from __future__ import annotations

import json
import subprocess
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
        metrics = trn.get("best_metrics") or trn.get("metrics") or {}
        acc = metrics.get("val_acc")
        lines.append(f"train    : val_acc={acc:.4f}" if isinstance(acc, int | float) else f"train    : {metrics}")
        if trn.get("mlflow_run_id"):
            lines.append(f"           mlflow run: {trn['mlflow_run_id']}")
    return lines


def main(
    root: Path = typer.Option(Path("."), help="Project root (holds dvc.yaml and params.yaml)."),
    force: bool = typer.Option(False, help="Re-run every stage (dvc repro --force)."),
) -> None:
    root = root.resolve()
    cmd = [dvc_executable(), "repro"] + (["--force"] if force else [])
    typer.echo(f"$ {' '.join(cmd)}  (in {root})")
    rc = subprocess.run(cmd, cwd=root, env=dvc_env()).returncode
    if rc != 0:
        typer.secho(f"dvc repro failed with exit code {rc}; see the stage output above.", fg="red", err=True)
        raise typer.Exit(rc)
    for line in report(root):
        typer.echo(line)


if __name__ == "__main__":
    typer.run(main)
