"""``make demo``: one whole release cycle on the embedded defaults, the way production runs it.

1. ``dvc repro``: ingest -> validate -> train -> export -> evaluate (the same pipeline
   definition users and Airflow run; unchanged stages are skipped on a second run);
2. register the exported model in the MLflow registry (idempotent) and approve it as a
   named reviewer (four-eyes: the reviewer is not the author);
3. start the serving deployment: a long-running ``cvplatform serve`` process on 127.0.0.1
   that follows the registry aliases; the first version becomes its champion through the
   canary controller (no champion yet: promoted directly);
4. retrain a challenger (another seed), evaluate it against the champion, register and
   approve it;
5. start a separate traffic client process (``python -m cvplatform.serving.replay``: held-out
   digits, 20 % of them corrupted) calling that server, and canary the challenger onto the
   server with the production analysis thresholds (``configs/deploy/canary-demo.yaml``:
   only bake times and request minimums are shorter than ``canary.yaml``);
6. call the server to show which version answers: the new champion after a promotion, the
   old one after a rollback; stop the client and the server; print the key numbers.

Run with ``python -m cvplatform.demo [--root DIR] [--reviewer NAME] [--task TASK]``.

``--task detection`` (``make demo TASK=detection``) runs the same cycle for an object detector on the
built-in scenes: the overrides of ``configs/demo/detection.yaml`` are applied in the demo's own working
copy of the project (:func:`cvplatform.workspace.prepare_workspace`; same MLflow store and DVC cache), so
the project's ``params.yaml`` is not touched, and the detector is registered under its own model name.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import typer

from cvplatform.pipeline import dvc_env, dvc_executable
from cvplatform.serving.local import LocalProcessError


def _summary(root: Path, stage: str) -> dict | None:
    """A stage's summary.json (through its typed :mod:`cvplatform.artifacts` model when it has one), or None."""
    from cvplatform import artifacts

    models = {"ingest": artifacts.IngestSummary, "validate": artifacts.ValidateSummary,
              "train": artifacts.TrainSummary, "export": artifacts.ExportSummary,
              "evaluate": artifacts.EvaluateSummary}
    f = root / "artifacts" / stage / "summary.json"
    if stage in models:
        found = models[stage].read_if_present(f)
        return found.to_dict() if found is not None else None
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
    dep = _summary(root, "deploy")
    if dep:
        lines.append(f"deploy   : canary v{dep.get('version')} -> {dep.get('decision')} on {dep.get('server')} "
                     f"({dep.get('traffic')} traffic); the server then answered with v{dep.get('served_version')}")
    return lines


def _register_and_approve(root: Path, params, reviewer: str) -> tuple[str, bool, list[str]]:
    """Register the stage outputs under ``root`` and approve them; return (version, rolled back?, report lines)."""
    from cvplatform.registry import approve, register_model, show
    from cvplatform.registry.errors import AlreadyApprovedError

    reg = register_model(params, root=root)
    lines = ["", *reg.lines()]
    status = {v.version: v for v in show(reg.model_name, params=params, root=root).versions}[reg.version].approval
    if status == "rolled_back":
        lines.append(f"approve: v{reg.version} was rolled back by an earlier demo's canary; it stays rolled back "
                     "(delete artifacts/demo-challenger to train a new challenger)")
        return reg.version, True, lines
    try:
        lines += approve(reg.model_name, reg.version, reviewer, "approved by make demo", params=params,
                         root=root).lines()
    except AlreadyApprovedError as exc:
        lines.append(f"approve: {exc}")
    return reg.version, False, lines


def _answer(url: str, root: Path, params, when: str) -> list[str]:
    """Call the server with one held-out image and say which version answered."""
    from cvplatform.serving.replay import load_items, predict_once

    item = load_items(params.project.manifest, split="test", root=root, limit=1)[0]
    body = predict_once(url, item.data)
    top = (body.get("predictions") or [{}])[0]
    head = f"{when}: {url}/v1/predict answers with v{body.get('version')} ({body.get('variant')}): "
    if "detections" in top:  # a detector: its boxes (class, score) in the image's pixels
        dets = top["detections"]
        shown = ", ".join(f"{d['class']} {d['score']:.2f} at {[round(v) for v in d['box']]}" for d in dets[:3])
        return [head + f"{len(dets)} object(s){': ' + shown if shown else ''}{' ...' if len(dets) > 3 else ''}"]
    return [head + f"class {top.get('class')!r} at {top.get('confidence', 0):.2f} (true label {item.label!r})"]


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


def _train_challenger(root: Path, params, seed: int) -> tuple[Path, object, list[str]]:
    """Train, evaluate (against the champion) and export a challenger in a side project sharing the store."""
    from cvplatform import run_evaluate, run_export, run_train
    from cvplatform.config import load_params

    ch = challenger_root(root)
    challenger = load_params(root / "params.yaml", [f"train.seed={seed}", "train.progress_bar=false"])
    if (ch / "artifacts/export/summary.json").is_file():  # built by an earlier demo: reuse, no new version
        return ch, challenger, [f"challenger: reusing {ch / 'artifacts'} (delete it to retrain)"]
    lines = run_train(challenger, root=ch).lines()
    lines += run_export(challenger, root=ch).lines()[:1]
    lines += run_evaluate(challenger, root=ch).lines()[-4:]  # the gates judge the exported artifact
    return ch, challenger, lines


def _wait_ready(srv, timeout_s: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{srv.url}/v2/health/ready", timeout=10).status_code != 200:
        if time.monotonic() > deadline:
            raise LocalProcessError(f"{srv.url} has no champion loaded after {timeout_s:g} s. Its log:\n"
                                    f"{srv.log_text()}")
        time.sleep(0.5)


def _canary_with_traffic(srv, root: Path, params, policy, challenger: str) -> list[str]:
    """A separate client process sends traffic to the server while the challenger is canaried onto it."""
    from cvplatform.deploy.canary import run_canary
    from cvplatform.serving.local import ReplayProcess

    local = params.deploy.local
    lines: list[str] = []
    with ReplayProcess(srv.url, root=root, manifest=params.project.manifest, split=local.split, corrupt=local.corrupt,
                       concurrency=local.concurrency, rate=local.rate) as client:
        lines.append(f"traffic: a separate client process (`python -m cvplatform.serving.replay`, pid "
                     f"{client.proc.pid}) sends held-out {local.split} images, {local.corrupt:.0%} also corrupted")
        time.sleep(2)
        lines += _answer(srv.url, root, params, "before the canary")
        res = run_canary(params, challenger, server=srv.url, root=root, token=srv.token, policy=policy,
                         traffic="replay")
        lines += ["", *res.lines(), ""]
        lines += _answer(srv.url, root, params, "after the canary")
        expected = challenger if res.promoted else res.champion_before
        why = "the new champion" if res.promoted else f"the old champion: the challenger was {res.decision}"
        lines.append(f"expected v{expected} ({why})")
    rep = client.report or {}
    lines.append(f"traffic: {rep.get('sent', 0)} requests, {rep.get('failures', 0)} failed; answered by "
                 f"version {rep.get('by_version', {})}")
    return lines


def release(root: Path, reviewer: str, challenger_seed_offset: int = 1) -> list[str]:
    """The demo's release cycle on one long-running server: v1 from ``dvc repro`` becomes its champion, then a
    retrained challenger (another seed, trained through the library like a notebook would) is evaluated
    against it, registered, approved and canaried onto that server while a separate client sends traffic."""
    from cvplatform.config import load_params
    from cvplatform.deploy.analysis import load_canary_policy
    from cvplatform.deploy.canary import run_canary
    from cvplatform.registry import show
    from cvplatform.serving.local import LocalServer
    from cvplatform.tracking import tracking_uri

    params = load_params(root / "params.yaml")
    policy = load_canary_policy(root / "configs/deploy/canary-demo.yaml")
    lines = ["", "--- release 1: the model dvc repro just built ---"]
    first, _, more = _register_and_approve(root, params, reviewer)
    lines += more
    seed = (params.train.seed if params.train.seed is not None else params.project.seed) + challenger_seed_offset
    with LocalServer(root, wait_ready=False) as srv:
        lines += ["", f"serving: `cvplatform serve` (pid {srv.proc.pid}) at {srv.url}, following the registry "
                      "aliases: the service the canary drives"]
        if _champion(params, root) is None:  # first release: no champion to compare with, promoted directly
            lines += run_canary(params, first, server=srv.url, root=root, token=srv.token, policy=policy,
                                traffic="replay").lines()
        _wait_ready(srv)
        lines += _answer(srv.url, root, params, "serving")
        lines += ["", f"--- release 2: a challenger retrained with seed {seed}, canaried against the champion ---"]
        with _tracking_at(tracking_uri(root)):  # same MLflow store and registry as the main project
            ch, challenger, more = _train_challenger(root, params, seed)
            lines += more
            version, rolled_back, more = _register_and_approve(ch, challenger, reviewer)
            lines += more
        if rolled_back:
            lines += _answer(srv.url, root, params, "no canary (the challenger was rolled back before)")
        else:
            lines += _canary_with_traffic(srv, root, params, policy, version)
    lines += ["serving: traffic client and server stopped", "",
              *show(params.registry.model_name, params=params, root=root).lines()]
    return lines


#: ``--task`` -> the overrides file of its demo (``None``: the project's own params.yaml).
TASK_DEMOS: dict[str, str | None] = {"classification": None, "detection": "configs/demo/detection.yaml"}


def task_overrides(root: Path, task: str) -> list[str]:
    """The ``key.path=value`` overrides of ``task``'s demo (``configs/demo/<task>.yaml``: ``overrides: [...]``).

    Raises:
        ConfigError: unknown task, or the file is missing or not a list of ``key=value`` strings.
    """
    from cvplatform.config import read_yaml
    from cvplatform.errors import ConfigError

    if task not in TASK_DEMOS:
        raise ConfigError(f"demo: unknown --task {task!r}; choose one of {sorted(TASK_DEMOS)}.")
    rel = TASK_DEMOS[task]
    if rel is None:
        return []
    path = root / rel
    if not path.is_file():
        raise ConfigError(f"demo: {path} is missing; it lists the overrides of the {task} demo (restore it from git).")
    data = read_yaml(path) or {}
    overrides = data.get("overrides") if isinstance(data, dict) else None
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise ConfigError(f"demo: {path}: 'overrides' must be a list of key.path=value strings, got {overrides!r}.")
    return overrides


def _demo_root(root: Path, task: str) -> Path:
    """Where the demo of ``task`` runs: the project itself, or a working copy with the task's overrides."""
    overrides = task_overrides(root, task)
    if not overrides:
        return root
    from cvplatform.workspace import prepare_workspace

    ws = prepare_workspace(root, f"demo-{task}", overrides)
    ws.activate()  # the project's MLflow store for the in-process registry and canary calls
    typer.echo(f"demo: {task} runs in its own working copy {ws.path} (overrides from {TASK_DEMOS[task]})")
    return ws.path


def main(
    root: Path = typer.Option(Path("."), help="Project root (holds dvc.yaml and params.yaml)."),
    force: bool = typer.Option(False, help="Re-run every stage (dvc repro --force)."),
    reviewer: str = typer.Option("demo-reviewer", help="Reviewer recorded on the approval (not the author)."),
    task: str = typer.Option("classification", help=f"Which task's release cycle: {', '.join(TASK_DEMOS)}."),
) -> None:
    from cvplatform.errors import CVPlatformError

    try:
        root = _demo_root(root.resolve(), task)
    except CVPlatformError as exc:
        typer.secho(f"demo: {exc}", fg="red", err=True)
        raise typer.Exit(getattr(exc, "exit_code", 1)) from None
    cmd = [dvc_executable(), "repro"] + (["--force"] if force else [])
    typer.echo(f"$ {' '.join(cmd)}  (in {root})")
    rc = subprocess.run(cmd, cwd=root, env=dvc_env()).returncode
    if rc != 0:
        typer.secho(f"dvc repro failed with exit code {rc}; see the stage output above.", fg="red", err=True)
        raise typer.Exit(rc)
    try:
        release_lines = release(root, reviewer)
    except CVPlatformError as exc:
        typer.secho(f"release failed: {exc}", fg="red", err=True)
        raise typer.Exit(getattr(exc, "exit_code", 1)) from None
    for line in release_lines + report(root):
        typer.echo(line)


if __name__ == "__main__":
    typer.run(main)
