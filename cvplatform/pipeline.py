"""Run the DVC pipeline from code (Airflow tasks, the demo): one definition, one cache.

Airflow's data/model tasks do not call stage functions directly: they run
``dvc repro <stage>`` in the project, so a DAG run and a local ``dvc repro`` share
``dvc.yaml``, ``dvc.lock``, the cache and the remote. A stage that is already up
to date is skipped by DVC, which makes cleared-and-retried tasks idempotent.

Airflow runs do this in their own working copy of the project
(:mod:`cvplatform.workspace`), where trigger-form overrides are written into the
copy's ``params.yaml`` (:func:`apply_params_overrides`), never into the project's.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cvplatform.errors import ConfigError, CVPlatformError

log = logging.getLogger(__name__)


class PipelineError(CVPlatformError):
    """A DVC command failed; the message carries the end of its output."""


def dvc_executable() -> str:
    """The ``dvc`` next to the running interpreter (the project venv), else on PATH."""
    exe = Path(sys.executable).parent / "dvc"
    if exe.exists():
        return str(exe)
    found = shutil.which("dvc")
    if not found:
        raise PipelineError("dvc is not installed in this environment; run `make setup` (or pip install dvc)")
    return found


@dataclass(frozen=True)
class DvcRun:
    """What one DVC command did."""

    command: list[str]
    output: str
    ran_stages: tuple[str, ...]
    """Stages DVC actually executed (empty when everything was up to date)."""


def dvc_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for DVC subprocesses: the venv's bin first on PATH, so `cmd: cvplatform ...` resolves."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, **(extra or {}), "PATH": path}


def run_dvc(args: list[str], root: str | os.PathLike[str], *, tail_lines: int = 40,
            env: dict[str, str] | None = None) -> DvcRun:
    """Run ``dvc <args>`` in ``root``, streaming its output to the log; raise PipelineError on failure.

    Example:
        >>> run_dvc(["status"], ".").output  # doctest: +SKIP
        'Data and pipelines are up to date.\\n'
    """
    cmd = [dvc_executable(), *args]
    log.info("$ %s  (in %s)", " ".join(cmd), root)
    proc = subprocess.Popen(
        cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dvc_env(env), bufsize=1
    )
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        log.info("dvc| %s", line.rstrip())
    rc = proc.wait()
    out = "".join(lines)
    if rc != 0:
        tail = "".join(lines[-tail_lines:])
        raise PipelineError(f"`{' '.join(['dvc', *args])}` failed in {root} (exit {rc}). Last output:\n{tail}")
    ran = tuple(ln.split("'")[1] for ln in lines if ln.startswith("Running stage '"))
    return DvcRun(cmd, out, ran)


def repro(stage: str, root: str | os.PathLike[str], *, force: bool = False,
          env: dict[str, str] | None = None) -> DvcRun:
    """``dvc repro <stage>``: run the stage if its deps/params changed (and stale upstream stages).

    Before ``evaluate`` (or ``champion``), ``cvplatform champion-ref`` refreshes
    ``artifacts/champion.json`` (in ``root``, with ``env``), so a promotion or rollback since the
    last run re-runs ``evaluate`` while the same champion leaves it up to date.
    """
    if stage in ("evaluate", "champion"):
        refresh_champion_ref(root, env=env)
    return run_dvc(["repro", stage, *(["--force", "--single-item"] if force else [])], root, env=env)


def refresh_champion_ref(root: str | os.PathLike[str], *, env: dict[str, str] | None = None) -> None:
    """Run ``cvplatform champion-ref`` in ``root`` (rewrites artifacts/champion.json only when the champion changed).

    Raises:
        PipelineError: the command failed (e.g. the registry is unreachable), with its output.
    """
    exe = Path(sys.executable).parent / "cvplatform"
    cmd = [str(exe) if exe.exists() else "cvplatform", "champion-ref"]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=dvc_env(env))
    for line in (proc.stdout + proc.stderr).splitlines():
        log.info("champion-ref| %s", line)
    if proc.returncode != 0:
        raise PipelineError(f"`cvplatform champion-ref` failed in {root} (exit {proc.returncode}):\n"
                            f"{proc.stdout}{proc.stderr}")


def push(root: str | os.PathLike[str], targets: Iterable[str] = (), *, env: dict[str, str] | None = None) -> DvcRun:
    """``dvc push [targets]``: upload pipeline outputs to the default DVC remote."""
    return run_dvc(["push", *targets], root, env=env)


def apply_params_overrides(root: str | os.PathLike[str], overrides: Iterable[str], params_file: str = "params.yaml") -> list[str]:
    """Write ``key.path=value`` overrides into a (working copy's) ``params.yaml``, keeping comments.

    The overrides are validated against the params models first; nothing is
    written if any is invalid (ConfigError naming the key).

    Returns:
        The overrides that changed a value.
    """
    from ruamel.yaml import YAML

    from cvplatform.config import load_params, parse_overrides

    overrides = [o for o in overrides if o]
    path = Path(root) / params_file
    if not overrides:
        return []
    load_params(path, overrides)  # validates every key and value; raises ConfigError naming them
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap long lines (no trailing spaces, a minimal diff)
    yaml.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))  # keep `null`, not empty
    data = yaml.load(path.read_text(encoding="utf-8"))
    changed = []
    for (parts, value), raw in zip(parse_overrides(overrides), overrides, strict=True):
        node = data
        for k in parts[:-1]:
            if k not in node or node[k] is None:
                node[k] = {}
            node = node[k]
            if not hasattr(node, "keys"):
                raise ConfigError(f"{path}: --set {raw}: '{k}' is a value, not a section")
        if node.get(parts[-1]) != value:
            node[parts[-1]] = value
            changed.append(raw)
    if changed:
        tmp = path.with_suffix(".yaml.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            yaml.dump(data, fh)
        os.replace(tmp, path)
        log.info("params.yaml: applied %s", ", ".join(changed))
    return changed
