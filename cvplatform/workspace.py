"""A run's own working copy of the project: where an Airflow run applies its overrides and runs DVC.

Trigger-form values and ``key.path=value`` overrides never touch the project's files.
:func:`prepare_workspace` makes a working copy for one run instead:

1. a git clone of the project at its current commit (``git clone --shared``, cheap), plus
   the project's uncommitted changes (modified and untracked-not-ignored files, e.g. an
   edited ``params.yaml`` or the ``dvc.lock`` of the last local ``dvc repro``), so the
   run sees what the user sees;
2. the project's DVC cache (``cache.dir`` in the copy's ``.dvc/config.local``) and the
   same remote, so unchanged stages are restored instead of recomputed and outputs are
   pushed where every other clone pulls them;
3. the overrides written into the copy's ``params.yaml`` (validated first, comments kept;
   a source is written in the spelling DVC tracks, see
   :func:`cvplatform.data.sources.dvc_location`);
4. a record (``.git/cvplatform-run.json``) of the project, commit, local changes and
   overrides; the same facts go to MLflow through :meth:`RunWorkspace.env`.

Two runs with different overrides get two copies, so neither sees the other's values,
and the project's ``params.yaml`` stays byte-identical. The embedded MLflow store stays
the project's (``CVPLATFORM_STORE_ROOT``). Copies live under ``$CVPLATFORM_RUNS_DIR``
(default ``~/.cache/cvplatform/runs/<project>-<hash>/``); the newest
``orchestration.keep_workspaces`` are kept for inspection.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvplatform.errors import CVPlatformError

if TYPE_CHECKING:  # pragma: no cover
    from cvplatform.config import Params

log = logging.getLogger(__name__)

ENV_RUNS_DIR = "CVPLATFORM_RUNS_DIR"
RECORD = Path(".git") / "cvplatform-run.json"


class WorkspaceError(CVPlatformError):
    """A run's working copy cannot be made (not a git repository, git or DVC failed)."""


@dataclass(frozen=True)
class RunWorkspace:
    """One run's working copy (JSON-serialisable: Airflow tasks pass it through XCom).

    Example:
        >>> ws = RunWorkspace(root="/tmp/wc", project="/srv/proj", run_id="manual__1", revision="abc",
        ...                   local_changes=(), overrides=("train.epochs=2",))
        >>> RunWorkspace.from_ref(ws.to_ref()) == ws
        True
    """

    root: str
    """The working copy."""
    project: str
    """The project it was made from (its MLflow store and DVC cache are used)."""
    run_id: str
    revision: str
    """The project's git commit the copy was made at."""
    local_changes: tuple[str, ...] = ()
    """Files that differ from ``revision`` (taken from the project's working tree)."""
    overrides: tuple[str, ...] = ()
    """``key.path=value`` overrides applied to the copy's ``params.yaml``."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.root)

    def to_ref(self) -> dict[str, Any]:
        """A small JSON-safe reference (for XCom)."""
        d = asdict(self)
        d["local_changes"] = list(self.local_changes)
        d["overrides"] = list(self.overrides)
        return d

    @classmethod
    def from_ref(cls, ref: Mapping[str, Any]) -> RunWorkspace:
        return cls(
            root=str(ref["root"]), project=str(ref["project"]), run_id=str(ref["run_id"]),
            revision=str(ref.get("revision") or ""), local_changes=tuple(ref.get("local_changes") or ()),
            overrides=tuple(ref.get("overrides") or ()), extra=dict(ref.get("extra") or {}),
        )

    def env(self) -> dict[str, str]:
        """Environment for the stages run in this copy: the project's store, the run's overrides."""
        from cvplatform.tracking import ENV_RUN_OVERRIDES, ENV_STORE_ROOT

        return {ENV_STORE_ROOT: self.project, ENV_RUN_OVERRIDES: json.dumps(list(self.overrides))}

    def activate(self) -> None:
        """Apply :meth:`env` to this process (for in-process registry and deploy calls)."""
        os.environ.update(self.env())

    def params(self) -> Params:
        """The copy's ``params.yaml`` (overrides included)."""
        from cvplatform.config import load_params

        return load_params(self.path / "params.yaml")


# --------------------------------------------------------------------------- helpers
def _git(args: list[str], cwd: Path, *, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise WorkspaceError(f"`git {' '.join(args)}` failed in {cwd}: {proc.stderr.strip()[-800:]}")
    return proc.stdout


def project_revision(project: Path) -> str:
    """The project's HEAD commit; :class:`WorkspaceError` when it is not a git repository with a commit."""
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True)
    if proc.returncode != 0:
        raise WorkspaceError(
            f"{project} is not a git repository with a commit ({proc.stderr.strip()[:200]}). Airflow runs work in "
            "a copy of the project made with git: run `git init && git add -A && git commit -m init` there."
        )
    return proc.stdout.strip()


def local_changes(project: Path) -> tuple[list[str], list[str]]:
    """Files of the working tree that differ from HEAD: (modified or untracked-not-ignored, deleted)."""
    changed = _git(["ls-files", "-z", "--modified", "--others", "--exclude-standard"], project).split("\0")
    deleted = set(_git(["ls-files", "-z", "--deleted"], project).split("\0"))
    keep = sorted({p for p in changed if p and p not in deleted})
    return keep, sorted(p for p in deleted if p)


def runs_dir(project: Path) -> Path:
    """Where this project's run copies live (``$CVPLATFORM_RUNS_DIR`` or ``~/.cache/cvplatform/runs``)."""
    base = os.environ.get(ENV_RUNS_DIR, "").strip()
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "cvplatform" / "runs"
    digest = hashlib.sha256(str(project.resolve()).encode()).hexdigest()[:10]
    return root / f"{project.name}-{digest}"


def _safe(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("._")[:120] or "run"


def _dvc_cache_dir(project: Path) -> Path:
    from cvplatform.pipeline import dvc_env, dvc_executable

    proc = subprocess.run([dvc_executable(), "cache", "dir"], cwd=project, capture_output=True, text=True,
                          env=dvc_env())
    out = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not out:
        return project / ".dvc" / "cache"
    p = Path(out[-1])
    return p if p.is_absolute() else (project / p).resolve()


def write_overrides(params_file: Path, overrides: Iterable[str]) -> list[str]:
    """Apply overrides to a working copy's ``params.yaml``; sources in the spelling DVC tracks.

    Returns the overrides as written (``ingest.source=folder:X`` becomes ``ingest.source=X``).
    """
    from cvplatform.data.sources import dvc_location
    from cvplatform.pipeline import apply_params_overrides

    written = []
    for item in overrides:
        key, sep, value = str(item).partition("=")
        if sep and key.strip() == "ingest.source" and value.strip():
            item = f"ingest.source={dvc_location(value.strip())}"
        written.append(item)
    apply_params_overrides(params_file.parent, written, params_file.name)
    return written


# --------------------------------------------------------------------------- entry point
def prepare_workspace(project: str | os.PathLike[str], run_id: str, overrides: Iterable[str] = (), *,
                      keep: int = 5) -> RunWorkspace:
    """Make (or, for a retried task, reuse) the working copy of run ``run_id``.

    Args:
        project: the project folder (a git repository holding ``dvc.yaml`` and ``params.yaml``).
        run_id: the Airflow run id (or any name unique to the run).
        overrides: ``key.path=value`` settings for this run only.
        keep: how many run copies of this project to keep (oldest removed first).

    Raises:
        ConfigError: an override names an unknown key or a bad value (nothing is made).
        WorkspaceError: the project is not a git repository, or git/DVC failed.

    Example:
        >>> ws = prepare_workspace(".", "manual__2026-01-01", ["train.epochs=2"])  # doctest: +SKIP
        >>> (ws.path / "params.yaml").read_text() != open("params.yaml").read()  # doctest: +SKIP
        True
    """
    from cvplatform.config import load_params

    proj = Path(project).resolve()
    overrides = [str(o).strip() for o in overrides if str(o).strip()]
    load_params(proj / "params.yaml", overrides)  # validate before making anything (names the key)
    revision = project_revision(proj)
    changed, deleted = local_changes(proj)
    dest = runs_dir(proj) / _safe(run_id)
    record = dest / RECORD
    if record.is_file():
        prior = json.loads(record.read_text())
        if prior.get("overrides_requested") == overrides and prior.get("revision") == revision:
            log.info("workspace: reusing %s (same run, same overrides)", dest)
            return RunWorkspace.from_ref(prior["workspace"])
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _git(["clone", "--quiet", "--shared", "--no-checkout", str(proj), str(dest)], dest.parent)
    _git(["-c", "advice.detachedHead=false", "checkout", "--quiet", revision], dest)
    for rel in changed:
        src = proj / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for rel in deleted:
        (dest / rel).unlink(missing_ok=True)
    local = proj / ".dvc" / "config.local"
    if local.is_file():
        shutil.copy2(local, dest / ".dvc" / "config.local")
    _set_dvc_cache(dest, _dvc_cache_dir(proj))
    written = write_overrides(dest / "params.yaml", overrides) if overrides else []
    ws = RunWorkspace(root=str(dest), project=str(proj), run_id=run_id, revision=revision,
                      local_changes=tuple(changed + [f"{d} (deleted)" for d in deleted]), overrides=tuple(written))
    record.write_text(json.dumps({"workspace": ws.to_ref(), "overrides_requested": overrides,
                                  "revision": revision, "created": time.time()}, indent=2))
    log.info("workspace: %s at %s%s%s", dest, revision[:12],
             f" + {len(changed) + len(deleted)} local change(s)" if changed or deleted else "",
             f", overrides {written}" if written else "")
    prune_workspaces(proj, keep=keep, current=dest)
    return ws


def _set_dvc_cache(dest: Path, cache_dir: Path) -> None:
    from cvplatform.pipeline import run_dvc

    run_dvc(["config", "--local", "cache.dir", str(cache_dir)], dest)


def prune_workspaces(project: Path, *, keep: int, current: Path | None = None) -> list[Path]:
    """Remove all but the ``keep`` newest run copies of ``project``; returns what was removed."""
    base = runs_dir(project)
    if not base.is_dir():
        return []
    copies = sorted((p for p in base.iterdir() if (p / RECORD).is_file()), key=lambda p: (p / RECORD).stat().st_mtime,
                    reverse=True)
    removed = []
    for old in copies[max(keep, 1):]:
        if current is not None and old.resolve() == current.resolve():
            continue
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old)
    return removed


def changes_since(ws: RunWorkspace, lock_text: str) -> list[str]:
    """What the run's inputs change relative to an earlier pipeline state (the text of its ``dvc.lock``).

    The lock is placed in the copy and ``dvc status`` compares it with what the copy would
    run now: the source (new, changed or removed images), params, configuration files,
    code and commands. Missing outputs do not count (a fresh copy has none yet; they are
    restored from the cache). Returns one line per change; empty = nothing new.

    Example:
        >>> changes_since(ws, previous_lock)  # doctest: +SKIP
        ['ingest: /data/cameras modified', 'train: params.yaml {'train.epochs': 'modified'}']
    """
    import yaml

    from cvplatform.pipeline import run_dvc

    (ws.path / "dvc.lock").write_text(lock_text, encoding="utf-8")
    restore_outputs(ws)  # the earlier outputs, from the cache: what later stages depend on
    produced = {str(o.get("path")) for st in ((yaml.safe_load(lock_text) or {}).get("stages") or {}).values()
                for o in (st.get("outs") or [])}
    out = run_dvc(["status", "--json"], ws.path, env=ws.env()).output
    start = out.find("{")
    try:
        status = json.loads(out[start:]) if start >= 0 else {}
    except json.JSONDecodeError as exc:
        raise WorkspaceError(f"`dvc status --json` in {ws.path} printed no JSON ({exc}): {out[-500:]}") from None
    lines = []
    for stage, entries in sorted(status.items()):
        for entry in entries:
            if isinstance(entry, str):  # "changed command", "always changed", "changed checksum"
                lines.append(f"{stage}: {entry}")
            elif isinstance(entry, dict):
                for what, detail in entry.items():
                    if what == "changed outs":
                        continue
                    if what == "changed deps" and isinstance(detail, dict):
                        # an upstream output missing from the cache is not a change of the inputs
                        detail = {k: v for k, v in detail.items() if not (v == "deleted" and k in produced)}
                        if not detail:
                            continue
                    lines.append(f"{stage}: {what} {json.dumps(detail, sort_keys=True)}")
    return lines


def restore_outputs(ws: RunWorkspace) -> None:
    """``dvc checkout`` in the copy: outputs its ``dvc.lock`` names are restored from the cache."""
    from cvplatform.pipeline import run_dvc

    if (ws.path / "dvc.lock").is_file():
        run_dvc(["checkout", "--allow-missing", "--quiet"], ws.path, env=ws.env())


__all__ = [
    "ENV_RUNS_DIR",
    "changes_since",
    "RunWorkspace",
    "WorkspaceError",
    "local_changes",
    "prepare_workspace",
    "project_revision",
    "prune_workspaces",
    "restore_outputs",
    "runs_dir",
    "write_overrides",
]
