"""What a reviewer decides on: one version against the champion, with links that open in a browser.

:func:`review_facts` gathers, for a registered version, everything the approval page
(:func:`cvplatform.orchestration.approval_body`) shows: task and classes, test-set size,
the gate verdict with the failing, warning and weakest checks and their values, latency /
size / cost next to the champion's, what changed since the champion (data version,
params diff, compatibility), and the URLs of the MLflow model version, the evaluation
report and the model card (attached to the version's registration run).

It reads the registry and ``artifacts/evaluate/`` (the gate report judges the registered
artifact: the registry checked its sha256 at registration). Every registry lookup is
best effort: a fact that cannot be read is reported as missing, never guessed.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvplatform.registry.client import (
    TAG_ACCURACY,
    TAG_CLASS_NAMES,
    TAG_DATA_HASH,
    TAG_GIT_COMMIT,
    TAG_PARAMS_HASH,
    TAG_PRECISION,
    TAG_SHA256,
    TAG_TRAIN_RUN,
    RegistryClient,
)
from cvplatform.registry.compat import ModelFacts, differences

if TYPE_CHECKING:  # pragma: no cover
    from cvplatform.config import Params

log = logging.getLogger(__name__)

#: Params that differ between runs without changing the model (run bookkeeping).
_NOISE_PARAMS = ("train.progress_bar", "train.run_name", "data.version", "data.train", "data.val", "data.test")


@dataclass
class Side:
    """The facts of one version (the candidate or the champion)."""

    version: str
    tags: dict[str, str]
    run_id: str | None = None
    experiment_id: str | None = None
    params: dict[str, str] = field(default_factory=dict)

    def tag(self, key: str) -> str | None:
        return self.tags.get(key)

    def number(self, key: str) -> float | None:
        try:
            return float(self.tags[key])
        except (KeyError, TypeError, ValueError):
            return None


@dataclass
class ReviewFacts:
    """Everything the approval page shows (plain data)."""

    model: str
    version: str
    tracking_uri: str
    candidate: Side | None
    champion: Side | None
    champion_alias: str
    gate: dict[str, Any]
    metrics: dict[str, Any]
    changes: list[str]
    params_diff: list[tuple[str, str | None, str | None]]
    links: dict[str, str]
    notes: list[str] = field(default_factory=list)


def _json_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _gate_report(root: Path, notes: list[str]) -> dict[str, Any]:
    """The evaluation gate report through its typed model ({} and a note when missing or invalid)."""
    from cvplatform.artifacts import ArtifactError, GateReportFile

    try:
        return GateReportFile.read(GateReportFile.at(root)).to_dict()
    except ArtifactError as exc:
        notes.append(f"no gate facts: {exc}")
        return {}


def _side(c: RegistryClient, name: str, version: str) -> Side:
    mv = c.version(name, version)
    side = Side(str(mv.version), dict(mv.tags or {}), mv.run_id)
    run_ids = [r for r in (mv.run_id, side.tag(TAG_TRAIN_RUN)) if r]
    for rid in run_ids:  # the registration run logs every params.yaml value; older versions: the training run
        try:
            run = c.call(f"get run {rid}", lambda rid=rid: c.mlflow.get_run(rid))
        except Exception as exc:  # a missing run is a missing fact, not a failure of the page
            log.warning("review: cannot read run %s: %s", rid, exc)
            continue
        if side.experiment_id is None:
            side.experiment_id = run.info.experiment_id
        if run.data.params and not side.params:
            side.params = dict(run.data.params)
    return side


def params_diff(new: dict[str, str], old: dict[str, str]) -> list[tuple[str, str | None, str | None]]:
    """``(key, champion value, candidate value)`` for every param that differs (run bookkeeping ignored).

    Example:
        >>> params_diff({"train.epochs": "10", "train.lr": "0.1"}, {"train.epochs": "6", "train.lr": "0.1"})
        [('train.epochs', '6', '10')]
    """
    keys = sorted(set(new) | set(old))
    return [(k, old.get(k), new.get(k)) for k in keys
            if new.get(k) != old.get(k) and not k.startswith(_NOISE_PARAMS)]


def _links(c: RegistryClient, name: str, side: Side | None) -> dict[str, str]:
    from cvplatform.registry.identity import is_tracking_server

    base = c.uri.rstrip("/") if is_tracking_server(c.uri) else "http://127.0.0.1:5000"
    links = {"model_version": f"{base}/#/models/{name}/versions/{side.version if side else '?'}"}
    if side is not None and side.run_id and side.experiment_id:
        art = f"{base}/#/experiments/{side.experiment_id}/runs/{side.run_id}/artifacts/registration"
        links["report"] = f"{art}/report.html"
        links["model_card"] = f"{art}/model_card.md"
        links["gate_report"] = f"{art}/gate_report.json"
    return links


def _changes(cand: Side, champ: Side | None) -> list[str]:
    if champ is None:
        return ["no champion yet: this version would be the first"]
    out = []
    for label, key in (("data version (DVC md5)", TAG_DATA_HASH), ("params hash", TAG_PARAMS_HASH),
                       ("git commit", TAG_GIT_COMMIT), ("precision", TAG_PRECISION)):
        a, b = (champ.tag(key) or "?")[:16], (cand.tag(key) or "?")[:16]
        out.append(f"{label}: unchanged ({a or '?'})" if a == b else f"{label}: CHANGED {a or '?'} -> {b or '?'}")
    diffs = differences(ModelFacts.from_tags(cand.tags), ModelFacts.from_tags(champ.tags))
    out.extend(f"INCOMPATIBLE with the champion: {d}" for d in diffs)
    return out


def review_facts(
    name: str, version: str | int, *, params: Params | None = None, root: str | os.PathLike[str] | None = None,
    client: RegistryClient | None = None,
) -> ReviewFacts:
    """Gather the approval page's facts for ``name`` version ``version`` (see the module docstring).

    Example:
        >>> facts = review_facts("cvplatform", 4, root=".")  # doctest: +SKIP
        >>> facts.links["model_version"]  # doctest: +SKIP
        'http://mlflow:5000/#/models/cvplatform/versions/4'
    """
    from cvplatform.registry.approvals import resolve_params

    cfg = resolve_params(params, root)
    c = client or RegistryClient.from_params(cfg, root)
    base = Path(root or os.getcwd())
    notes: list[str] = []
    gate = _gate_report(base, notes)
    metrics = _json_file(base / "artifacts/evaluate/scenarios.json")
    cand = champ = None
    try:
        cand = _side(c, name, str(version))
        alias = cfg.registry.champion_alias
        current = c.version_by_alias(name, alias)
        if current is not None and str(current.version) != cand.version:
            champ = _side(c, name, str(current.version))
    except Exception as exc:  # the page must still render: say what is missing
        notes.append(f"registry facts unavailable ({type(exc).__name__}: {exc})")
    if cand is not None and gate.get("model_sha256") and gate.get("model_sha256") != cand.tag(TAG_SHA256):
        notes.append(f"artifacts/evaluate/gate_report.json judged sha256 {gate.get('model_sha256')}, not this "
                     f"version's {cand.tag(TAG_SHA256)}: the gate facts below may describe another artifact")
    return ReviewFacts(
        model=name, version=str(version), tracking_uri=c.uri, candidate=cand, champion=champ,
        champion_alias=cfg.registry.champion_alias, gate=gate, metrics=metrics,
        changes=_changes(cand, champ) if cand is not None else [],
        params_diff=params_diff(cand.params, champ.params) if cand is not None and champ is not None else [],
        links=_links(c, name, cand), notes=notes,
    )


def class_names(facts: ReviewFacts) -> list[str]:
    """The candidate's classes (registry tag, else the gate report)."""
    if facts.candidate is not None and facts.candidate.tag(TAG_CLASS_NAMES):
        try:
            return [str(n) for n in json.loads(facts.candidate.tags[TAG_CLASS_NAMES])]
        except ValueError:
            pass
    return [str(n) for n in facts.gate.get("class_names") or []]


def accuracy(side: Side | None) -> float | None:
    """Clean accuracy recorded at registration."""
    return side.number(TAG_ACCURACY) if side is not None else None


__all__ = ["ReviewFacts", "Side", "accuracy", "class_names", "params_diff", "review_facts"]
