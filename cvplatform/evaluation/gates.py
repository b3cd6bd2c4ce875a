"""Release gates: a pure decision over scenario results.

:func:`check_gates` takes the challenger's per-scenario results, a
:class:`GatePolicy` (thresholds per scenario, suite-wide KPIs) and optionally the
champion's results on the *same images*, and returns a :class:`GateReport`. It
does no I/O and is deterministic (the paired bootstrap is seeded), so the CLI,
DVC, Airflow and tests all get the same verdict; the caller acts on it (exit code
3, failed task, short-circuit).

The checks come from the project's task (``task=``, default classification): the results follow
the scenario-result protocol of :mod:`cvplatform.tasks.base` (``values``, ``intervals``, ``n``,
``image_ids``, ``note``) and every threshold key is one of the task's ``MetricSpec`` keys. Checks
(each one a :class:`GateCheck` with name, scenario, value, threshold, confidence interval, status,
level and a one-line reason):

``images``            the scenario has at least one image (an empty slice fails)
``task.support_checks``  (clean scenario) whether the split can support the floors; classification:
                      ``min_images_per_class`` (must-pass), every class has at least that many images
``min_<metric>``      a higher-is-better metric >= floor (classification: ``min_accuracy``, ``min_macro_f1``)
``max_<metric>``      a lower-is-better metric <= bound (classification: ``max_ece``; an error such as ``max_mae``)
``min_relative_<metric>``  metric >= floor x the clean scenario's value (robustness relative to clean
                      performance, e.g. ``min_relative_accuracy: 0.85``: a mild corruption may cost at most 15 %)
``task.extra_gate_checks``  the task's own thresholds; classification: ``critical_fpr:<c>``, the
                      false-positive rate of critical class ``c`` <= ``max_critical_fpr``
``champion_regression``  ``task.paired_delta`` of challenger vs champion on the same images
                      (classification: paired bootstrap of the accuracy difference): fails when the
                      CI's lower bound is *below* ``-max_drop`` (exactly ``-max_drop`` passes)
``champion``          suite-wide: "no champion to compare against" (status
                      ``skipped``, or ``failed`` with ``require_champion``); a champion whose
                      classes / input differ is ``failed`` (warn, or must-pass with
                      ``require_champion``): "not comparable" is never silent
``pass_rate``         share of must-pass scenarios (or of all scenarios, ``pass_rate_scope: all``)
                      passing >= ``min_pass_rate``; a scenario passes when no check at the
                      scenario's own level fails (``warn_only`` checks don't count)

``GateReport.passed`` is True when no ``must_pass`` check has status ``failed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field

from cvplatform.config import StrictModel

if TYPE_CHECKING:  # pragma: no cover
    from cvplatform.tasks.base import MetricSpec, Task

Level = Literal["must_pass", "warn"]
#: A threshold key: classification's ``min_accuracy`` ... or any task's ``min_<metric>`` / ``max_<metric>``.
ThresholdKey = str
Status = Literal["passed", "failed", "skipped"]

#: Float tolerance for threshold comparisons: a value equal to its threshold passes.
EPS = 1e-9


class ScenarioGate(StrictModel):
    """The thresholds of one scenario (``None`` = no such check).

    The declared fields are classification's; another task's gate keys (``max_mae``, ...) are extra
    fields (validated against the task by :func:`cvplatform.evaluation.scenarios.load_suite`).
    """

    model_config = ConfigDict(extra="allow", frozen=True, strict=False, validate_default=True)

    level: Level = "warn"
    min_accuracy: float | None = Field(None, ge=0.0, le=1.0)
    min_relative_accuracy: float | None = Field(None, ge=0.0, le=1.0)
    """Floor as a fraction of the clean scenario's accuracy."""
    min_macro_f1: float | None = Field(None, ge=0.0, le=1.0)
    max_ece: float | None = Field(None, ge=0.0, le=1.0)
    max_critical_fpr: float | None = Field(None, ge=0.0, le=1.0)
    max_drop: float | None = Field(None, ge=0.0, le=1.0)
    warn_only: tuple[ThresholdKey, ...] = ()
    """Thresholds whose checks are only warnings even in a must-pass scenario (e.g. ``[max_ece]``)."""

    def thresholds(self) -> dict[str, float]:
        """Every set threshold except ``max_drop`` (the champion's): key -> value, declared ones first."""
        out = {k: getattr(self, k) for k in ("min_accuracy", "min_relative_accuracy", "min_macro_f1", "max_ece",
                                             "max_critical_fpr")}
        out.update(self.model_extra or {})
        return {k: float(v) for k, v in out.items() if v is not None}

    def level_of(self, threshold: str) -> Level:
        """The level of the check made from ``threshold`` (a key such as ``max_ece``)."""
        return "warn" if threshold in self.warn_only else self.level


class GatePolicy(StrictModel):
    """Everything :func:`check_gates` needs besides the results.

    Example:
        >>> GatePolicy(scenarios={"clean": ScenarioGate(level="must_pass", min_accuracy=0.9)}).min_pass_rate
        1.0
    """

    scenarios: dict[str, ScenarioGate] = Field(default_factory=dict)
    """Scenario name -> thresholds, in report order."""
    critical_classes: tuple[str, ...] = ()
    """Classes whose false-positive rate is bounded by ``max_critical_fpr``."""
    min_pass_rate: float = Field(1.0, ge=0.0, le=1.0)
    """KPI: share of scenarios (in ``pass_rate_scope``) that must pass their checks."""
    pass_rate_scope: Literal["must_pass", "all"] = "must_pass"
    """Which scenarios the pass rate counts: the must-pass ones, or all (warn scenarios too)."""
    pass_rate_level: Level = "must_pass"
    """Level of the pass-rate check."""
    require_champion: bool = False
    """True: the 'no champion' check fails instead of being skipped."""
    clean_scenario: str | None = None
    """The clean scenario: reference of ``min_relative_accuracy`` and of ``min_images_per_class``."""
    min_images_per_class: int | None = Field(None, ge=1)
    """Every class needs at least this many images in the clean scenario, else a must-pass failure."""
    n_bootstrap: int = Field(1000, ge=10)
    """Resamples of the paired bootstrap."""
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    """Interval level of the paired bootstrap."""
    seed: int = 0
    """Seed of the paired bootstrap."""
    robustness: dict[str, float] = Field(default_factory=dict)
    """Suite-wide thresholds on the task's corruption summary: ``min_<number>`` / ``max_<number>`` (detection:
    ``min_rpc``, ``min_mpc``); the task's ``robustness_keys`` lists what a suite may set."""
    robustness_level: Level = "must_pass"
    """Level of the robustness checks."""


@dataclass(frozen=True)
class GateCheck:
    """One gate check (JSON-friendly)."""

    name: str
    scenario: str
    status: Status
    level: Level
    reason: str
    value: float | None = None
    threshold: float | None = None
    ci: tuple[float, float] | None = None

    @property
    def passed(self) -> bool | None:
        """True/False for a decided check, None when skipped."""
        return None if self.status == "skipped" else self.status == "passed"

    @property
    def blocking(self) -> bool:
        """A failed must-pass check (makes the report fail)."""
        return self.status == "failed" and self.level == "must_pass"

    @property
    def margin(self) -> float | None:
        """How far a decided check is from its threshold, in the passing direction (negative = failing).

        Floors (``min_*``, ``pass_rate``, ``images``) give ``value - threshold``; bounds (``max_*``,
        ``critical_fpr:*``) give ``threshold - value``; the champion regression uses the lower CI
        bound. None for skipped checks and checks without numbers.
        """
        if self.status == "skipped" or self.threshold is None:
            return None
        if self.name == "champion_regression":
            lo = self.ci[0] if self.ci else self.value
            return None if lo is None else lo - self.threshold
        if self.value is None:
            return None
        if self.name.startswith(("max_", "critical_fpr")):
            return self.threshold - self.value
        return self.value - self.threshold

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = list(self.ci) if self.ci is not None else None
        d["passed"] = self.passed
        return d

    def line(self) -> str:
        """One line for terminals and exception messages."""
        mark = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[self.status]
        return f"[{mark}] {self.level:<9} {self.scenario:<22} {self.name:<22} {self.reason}"


@dataclass(frozen=True)
class GateReport:
    """All checks and the verdict."""

    checks: list[GateCheck]
    pass_rate: float | None
    champion: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """No must-pass check failed."""
        return not any(c.blocking for c in self.checks)

    @property
    def failures(self) -> list[GateCheck]:
        """Failed must-pass checks."""
        return [c for c in self.checks if c.blocking]

    @property
    def warnings(self) -> list[GateCheck]:
        """Failed warn-level checks."""
        return [c for c in self.checks if c.status == "failed" and c.level == "warn"]

    def for_scenario(self, name: str) -> list[GateCheck]:
        return [c for c in self.checks if c.scenario == name]

    def weakest(self, n: int = 5) -> list[GateCheck]:
        """The ``n`` passed threshold checks closest to failing (smallest margin), for reviewers.

        Example:
            >>> GateReport([GateCheck("min_accuracy", "fog_s1", "passed", "must_pass", "", 0.9, 0.85),
            ...             GateCheck("min_accuracy", "clean", "passed", "must_pass", "", 0.99, 0.9)],
            ...            1.0).weakest(1)[0].scenario
            'fog_s1'
        """
        decided = [c for c in self.checks if c.status == "passed" and c.name not in ("images", "pass_rate")
                   and c.margin is not None]
        return sorted(decided, key=lambda c: (c.margin, c.scenario, c.name))[:n]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "pass_rate": self.pass_rate,
            "champion": self.champion,
            "n_failed_must_pass": len(self.failures),
            "n_warnings": len(self.warnings),
            "checks": [c.to_dict() for c in self.checks],
            **self.extra,
        }


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _floor_check(name: str, scenario: str, level: Level, value: float, floor: float, label: str) -> GateCheck:
    ok = value >= floor - EPS
    reason = f"{label} {_fmt(value)} {'>=' if ok else '<'} floor {_fmt(floor)}"
    return GateCheck(name, scenario, "passed" if ok else "failed", level, reason, value, floor)


def bound_check(name: str, scenario: str, level: Level, value: float | None, bound: float, label: str) -> GateCheck:
    if value is None:
        return GateCheck(name, scenario, "skipped", level, f"{label} undefined (no images outside the class)",
                         None, bound)
    ok = value <= bound + EPS
    reason = f"{label} {_fmt(value)} {'<=' if ok else '>'} bound {_fmt(bound)}"
    return GateCheck(name, scenario, "passed" if ok else "failed", level, reason, value, bound)


def _metric_checks(name: str, gate: ScenarioGate, res: Any, spec: MetricSpec, clean: Any,
                   policy: GatePolicy) -> list[GateCheck]:
    """The absolute (``min_``/``max_<metric>``) and relative (``min_relative_<metric>``) checks of one metric."""
    value, ci = res.values.get(spec.name), res.intervals.get(spec.name)
    out: list[GateCheck] = []
    thresholds = gate.thresholds()
    if spec.gate_key in thresholds:
        t, lvl = thresholds[spec.gate_key], gate.level_of(spec.gate_key)
        if value is None:
            out.append(GateCheck(spec.gate_key, name, "skipped", lvl, f"{spec.display} undefined on this scenario",
                                 None, t))
        elif spec.higher_is_better:
            c = _floor_check(spec.gate_key, name, lvl, value, t, spec.display)
            out.append(GateCheck(**{**asdict(c), "ci": None if ci is None else tuple(ci)}))
        else:
            out.append(bound_check(spec.gate_key, name, lvl, value, t, spec.display))
    rel = spec.relative_gate_key
    if rel and rel in thresholds:
        out.append(_relative_check(name, gate.level_of(rel), res, spec, thresholds[rel], clean,
                                   policy.clean_scenario))
    return out


def _relative_check(scenario: str, level: Level, res: Any, spec: MetricSpec, ratio: float,
                    clean: Any, clean_name: str | None) -> GateCheck:
    key, label = str(spec.relative_gate_key), spec.display
    value, ci = res.values.get(spec.name), res.intervals.get(spec.name)
    ci = None if ci is None else tuple(ci)
    ref = None if clean is None else clean.values.get(spec.name)
    if ref is None or value is None:
        return GateCheck(key, scenario, "failed", level,
                         f"no clean result ({clean_name or 'no clean scenario'}) to judge the relative floor against",
                         value, None, ci)
    floor = ratio * ref
    ok = value >= floor - EPS
    share = (value / ref) if ref > 0 else 0.0
    reason = (f"{label} {_fmt(value)} is {share:.0%} of clean {_fmt(ref)} "
              f"{'>=' if ok else '<'} floor {ratio:.0%} ({_fmt(floor)})")
    return GateCheck(key, scenario, "passed" if ok else "failed", level, reason, value, floor, ci)


def _regression_check(
    scenario: str, gate: ScenarioGate, res: Any, champ: Any | None, policy: GatePolicy, task: Task
) -> GateCheck:
    assert gate.max_drop is not None
    lvl = gate.level_of("max_drop")
    if champ is None:
        return GateCheck("champion_regression", scenario, "skipped", lvl,
                         "champion has no result for this scenario", None, -gate.max_drop)
    if list(champ.image_ids) != list(res.image_ids):
        return GateCheck(
            "champion_regression", scenario, "failed", lvl,
            f"champion was evaluated on different images ({len(champ.image_ids)} vs {len(res.image_ids)}); "
            "a paired comparison needs the same images",
            None, -gate.max_drop,
        )
    delta, lo, hi = task.paired_delta(res, champ, n_bootstrap=policy.n_bootstrap, confidence=policy.confidence,
                                      seed=policy.seed)
    ok = lo >= -gate.max_drop - EPS
    pct = int(round(policy.confidence * 100))
    reason = (
        f"{task.paired_metric} change vs champion {delta:+.4f} ({pct}% CI [{lo:+.4f}, {hi:+.4f}]); "
        f"lower bound {'>=' if ok else '<'} -max_drop {-gate.max_drop:+.4f}"
    )
    return GateCheck("champion_regression", scenario, "passed" if ok else "failed", lvl, reason,
                     delta, -gate.max_drop, (lo, hi))


def _scenario_checks(name: str, gate: ScenarioGate, results: Mapping[str, Any], policy: GatePolicy,
                     champion: Mapping[str, Any] | None, task: Task) -> list[GateCheck]:
    """Every check of one scenario: images, the task's support checks, each metric's thresholds, the task's
    own thresholds (classification: critical false-positive rates), the champion regression."""
    res = results.get(name)
    lvl = gate.level
    if res is None:
        return [GateCheck("images", name, "failed", lvl, "scenario was not evaluated (no result)")]
    if res.n == 0 or all(v is None for v in res.values.values()):
        return [GateCheck("images", name, "failed", lvl,
                          f"scenario has no images{(' (' + res.note + ')') if res.note else ''}; "
                          "nothing was checked", 0.0, 1.0)]
    own = [GateCheck("images", name, "passed", lvl, f"{res.n} images", float(res.n), 1.0)]
    if name == policy.clean_scenario:
        own.extend(GateCheck(**c) for c in task.support_checks(name, res, policy))
    clean = results.get(policy.clean_scenario) if policy.clean_scenario else None
    for spec in task.metrics:
        own.extend(_metric_checks(name, gate, res, spec, clean, policy))
    own.extend(GateCheck(**c) for c in task.extra_gate_checks(name, gate, res, policy))
    if gate.max_drop is not None and champion is not None:
        own.append(_regression_check(name, gate, res, champion.get(name), policy, task))
    return own


def _champion_check(policy: GatePolicy, champion: Mapping[str, Any] | None, champion_note: str | None,
                    champion_incompatible: str | None) -> GateCheck | None:
    """The suite-wide champion presence check (never silent); None when a champion was compared."""
    if champion is None and champion_incompatible:
        return GateCheck(
            "champion", "*", "failed", "must_pass" if policy.require_champion else "warn",
            f"champion not comparable: {champion_incompatible}; no regression check was run, and the version can "
            "only replace the champion if its reviewer confirms the change (registry approve --confirm-incompatible)",
        )
    if champion is None:
        status: Status = "failed" if policy.require_champion else "skipped"
        wanted = [n for n, g in policy.scenarios.items() if g.max_drop is not None]
        return GateCheck(
            "champion", "*", status, "must_pass" if policy.require_champion else "warn",
            "no champion to compare against"
            + (f" ({champion_note})" if champion_note else "")
            + (f"; regression checks on {len(wanted)} scenario(s) not run" if wanted else "")
            + ("; require_champion is set" if policy.require_champion else ""),
        )
    return None


def _pass_rate_check(policy: GatePolicy, scenario_ok: dict[str, bool]) -> tuple[float | None, GateCheck]:
    """The suite-wide KPI: share of (must-pass, or all) scenarios that pass; ``(pass rate, check)``."""
    if policy.pass_rate_scope == "must_pass":
        must = [n for n, g in policy.scenarios.items() if g.level == "must_pass"]
        scope = "must-pass scenarios"
    else:
        must = list(policy.scenarios)
        scope = "scenarios"
    if not must:
        return None, GateCheck("pass_rate", "*", "skipped", policy.pass_rate_level,
                               f"no {scope} in the suite", None, policy.min_pass_rate)
    pass_rate = sum(scenario_ok[n] for n in must) / len(must)
    ok = pass_rate >= policy.min_pass_rate - EPS
    failing = [n for n in must if not scenario_ok[n]]
    if len(failing) > 8:
        failing = [*failing[:8], f"... ({len(failing) - 8} more)"]
    reason = (
        f"{sum(scenario_ok[n] for n in must)}/{len(must)} {scope} pass ({pass_rate:.1%}) "
        f"{'>=' if ok else '<'} KPI {policy.min_pass_rate:.1%}"
        + (f"; failing: {', '.join(failing)}" if failing else "")
    )
    return pass_rate, GateCheck("pass_rate", "*", "passed" if ok else "failed", policy.pass_rate_level,
                                reason, pass_rate, policy.min_pass_rate)


def robustness_checks(policy: GatePolicy, summary: Mapping[str, Any] | None) -> list[GateCheck]:
    """The suite-wide robustness checks (``policy.robustness``) on the task's corruption summary.

    Example:
        >>> [c.status for c in robustness_checks(GatePolicy(robustness={"min_rpc": 0.6}), {"rpc": 0.55})]
        ['failed']
    """
    out = []
    for key, threshold in policy.robustness.items():
        bound, number = key.split("_", 1)
        value = (summary or {}).get(number)
        if value is None:
            out.append(GateCheck(key, "*", "failed", policy.robustness_level,
                                 f"{number} was not measured (no corruption scenario with a result, or a clean "
                                 f"value of 0); {key} {threshold:g} cannot be judged", None, float(threshold)))
            continue
        ok = value >= threshold - EPS if bound == "min" else value <= threshold + EPS
        sign = (">=" if ok else "<") if bound == "min" else ("<=" if ok else ">")
        out.append(GateCheck(key, "*", "passed" if ok else "failed", policy.robustness_level,
                             f"{number} {float(value):.4f} {sign} {key} {threshold:g}", float(value), float(threshold)))
    return out


def check_gates(
    results: Mapping[str, Any],
    policy: GatePolicy,
    champion: Mapping[str, Any] | None = None,
    *,
    champion_note: str | None = None,
    champion_incompatible: str | None = None,
    task: Task | None = None,
    robustness: Mapping[str, Any] | None = None,
) -> GateReport:
    """Decide the release gates (pure: no I/O; deterministic).

    Args:
        results: Challenger results by scenario name.
        policy: Thresholds per scenario and suite-wide KPIs.
        champion: The champion's results on the same scenarios and images, or None
            when there is no champion (reported as a ``skipped`` check).
        champion_note: Why there is no champion (shown in that check's reason),
            e.g. "registered model 'cvplatform' does not exist".
        champion_incompatible: Set when a champion exists but cannot be compared (other
            classes / input contract): the ``champion`` check then fails (warn-level, or
            must-pass with ``require_champion``) naming the differences.
        task: The project's task (default classification): its ``metrics`` give the threshold
            keys, its hooks add task-only checks (``support_checks``, ``extra_gate_checks``) and
            ``paired_delta`` compares with the champion. Results follow the scenario-result
            protocol of :mod:`cvplatform.tasks.base` (``values``, ``intervals``, ``n``, ``image_ids``).
        robustness: The task's corruption summary (``task.corruption_summary``), judged by the suite-wide
            ``policy.robustness`` thresholds (:func:`robustness_checks`).

    Returns:
        A :class:`GateReport`; ``report.passed`` is False when any must-pass check failed.

    Example:
        >>> import numpy as np
        >>> from cvplatform.tasks.classification.metrics import ScenarioResult
        >>> res = ScenarioResult.from_predictions(
        ...     "clean", "clean", ["a", "b", "c"], np.array([0, 1, 1]), np.eye(2)[[0, 1, 0]], ["x", "y"],
        ...     n_bootstrap=20)
        >>> policy = GatePolicy(scenarios={"clean": ScenarioGate(level="must_pass", min_accuracy=0.9)})
        >>> report = check_gates({"clean": res}, policy)
        >>> report.passed, [c.name for c in report.failures]
        (False, ['min_accuracy', 'pass_rate'])
    """
    from cvplatform.tasks import get_task

    task = task or get_task()
    checks: list[GateCheck] = []
    scenario_ok: dict[str, bool] = {}
    for name, gate in policy.scenarios.items():
        own = _scenario_checks(name, gate, results, policy, champion, task)
        checks.extend(own)
        # a scenario passes when none of its checks at the scenario's own level fails (warn_only ones don't count)
        scenario_ok[name] = not any(c.status == "failed" and c.level == gate.level for c in own)
    champ = _champion_check(policy, champion, champion_note, champion_incompatible)
    if champ is not None:
        checks.append(champ)
    checks.extend(robustness_checks(policy, robustness))
    pass_rate, rate_check = _pass_rate_check(policy, scenario_ok)
    checks.append(rate_check)
    all_rate = (sum(scenario_ok.values()) / len(scenario_ok)) if scenario_ok else None
    return GateReport(checks=checks, pass_rate=pass_rate, extra={"pass_rate_all": all_rate})


__all__ = [
    "EPS",
    "bound_check",
    "GateCheck",
    "GatePolicy",
    "GateReport",
    "Level",
    "ScenarioGate",
    "Status",
    "ThresholdKey",
    "check_gates",
    "robustness_checks",
]
