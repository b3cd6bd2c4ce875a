"""Scenario suites (``configs/scenarios/*.yaml``): what to evaluate and which gates apply.

A suite is a YAML file validated into :class:`ScenarioSuite` (unknown keys and bad
types raise :class:`~cvplatform.errors.ConfigError` naming the file and the key)::

    name: default
    critical_classes: []          # classes whose false-positive rate is bounded
    min_pass_rate: 1.0            # KPI: share of scenarios (pass_rate_scope) that must pass
    pass_rate_scope: must_pass    # must_pass | all (warn scenarios count too)
    pass_rate_level: must_pass    # level of the pass-rate check
    require_champion: false       # true: "no champion" fails instead of being skipped
    min_images_per_class: 15      # the clean split needs >= 15 images of every class, else a must-pass failure
    defaults:                     # thresholds for every scenario that does not set its own
      max_drop: 0.05              #   (a scenario's explicit `null` turns a default off)
    scenarios:
      - name: clean               # the evaluated split as is
        kind: clean
        level: must_pass          # must_pass | warn
        min_accuracy: 0.8
        min_macro_f1: 0.75
        max_ece: 0.15
        warn_only: [max_ece]      # this check only warns although the scenario is must_pass
      - kind: corruption          # one scenario per severity: gaussian_noise_s1 .. _s5
        corruption: gaussian_noise
        severities: [1, 2]
        level: must_pass
        min_relative_accuracy: 0.85   # keep >= 85 % of the clean accuracy
      - name: dim_light           # metadata slice over manifest columns (ANDed conditions)
        kind: slice
        where:
          - {column: lighting, op: "==", value: dim}
          - {column: camera, op: in, value: [a, b]}
      - name: must_not_fail       # curated list of image sha256 (one per line, '#' comments)
        kind: curated
        hashes_file: configs/scenarios/must_not_fail.txt
        level: must_pass          # min_accuracy defaults to 1.0: every listed image correct

Thresholds per scenario: ``min_accuracy``, ``min_macro_f1`` (floors),
``min_relative_accuracy`` (a floor as a fraction of the clean scenario's accuracy),
``max_ece``, ``max_critical_fpr`` (bounds), ``max_drop`` (largest allowed accuracy drop
vs the champion, judged on the lower bound of a paired-bootstrap interval). Every check
has the scenario's ``level`` unless listed in ``warn_only``. Suite-wide,
``min_images_per_class`` makes the suite refuse (must-pass) a clean split with fewer
images of some class than the floors can be judged on.

Slice filters are a small safe syntax (``column``, ``op`` in ``==, !=, in, not in``,
``value``), never ``eval``; values are compared as strings (the manifest stores
metadata as strings). Curated images are looked up in the whole manifest (any
split); relative paths are resolved against the project root.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from cvplatform.config import StrictModel
from cvplatform.errors import ConfigError, DataError
from cvplatform.evaluation.corruptions import CORRUPTIONS, SEVERITIES
from cvplatform.evaluation.gates import GatePolicy, Level, ScenarioGate

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from cvplatform.tasks.base import Task

Kind = Literal["clean", "corruption", "slice", "curated"]
Op = Literal["==", "!=", "in", "not in"]
Scalar = str | int | float | bool
_NAME = r"^[A-Za-z0-9_.-]+$"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_THRESHOLDS = ("min_accuracy", "min_relative_accuracy", "min_macro_f1", "max_ece", "max_critical_fpr", "max_drop",
               "warn_only")
_KIND_KEYS: dict[str, set[str]] = {
    "clean": set(),
    "corruption": {"corruption", "severities"},
    "slice": {"where"},
    "curated": {"hashes_file"},
}


class Condition(StrictModel):
    """One slice condition: ``column op value``."""

    column: str = Field(min_length=1)
    """Manifest column (core or source metadata, e.g. ``lighting``)."""
    op: Op = "=="
    """``==``, ``!=``, ``in`` or ``not in``."""
    value: Scalar | list[Scalar]
    """A value (``==``, ``!=``) or a list of values (``in``, ``not in``); compared as strings."""

    @model_validator(mode="after")
    def _value_matches_op(self) -> Condition:
        is_list = isinstance(self.value, list)
        if self.op in ("in", "not in") and not is_list:
            raise ValueError(f"op {self.op!r} needs a list value, e.g. value: [a, b]; got {self.value!r}")
        if self.op in ("==", "!=") and is_list:
            raise ValueError(f"op {self.op!r} needs a single value; use op: in for a list")
        return self

    def describe(self) -> str:
        return f"{self.column} {self.op} {self.value!r}"


class Thresholds(StrictModel):
    """Thresholds shared by a scenario entry and the suite ``defaults`` (``None`` = no check).

    The fields below are classification's; any other task's gate keys (``min_<metric>`` /
    ``max_<metric>`` / ``min_relative_<metric>`` from its ``MetricSpec`` entries) are extra keys, kept as
    given and checked against the project's task by :func:`load_suite` (an unknown key is a
    configuration error naming the key, the file and the allowed keys).
    """

    model_config = ConfigDict(extra="allow", frozen=True, strict=False, validate_default=True)

    level: Level | None = None
    """``must_pass`` (a failed check fails the gate) or ``warn`` (reported only). Default: warn."""
    min_accuracy: float | None = Field(None, ge=0.0, le=1.0)
    """Accuracy floor."""
    min_relative_accuracy: float | None = Field(None, ge=0.0, le=1.0)
    """Accuracy floor as a fraction of the clean scenario's accuracy (e.g. 0.85)."""
    min_macro_f1: float | None = Field(None, ge=0.0, le=1.0)
    """Macro-F1 floor."""
    max_ece: float | None = Field(None, ge=0.0, le=1.0)
    """Expected-calibration-error bound."""
    max_critical_fpr: float | None = Field(None, ge=0.0, le=1.0)
    """Bound on the false-positive rate of each critical class."""
    max_drop: float | None = Field(None, ge=0.0, le=1.0)
    """Largest allowed accuracy drop vs the champion (lower CI bound of the paired bootstrap)."""
    warn_only: tuple[str, ...] | None = None
    """Thresholds whose checks only warn even when the scenario is must_pass, e.g. [max_ece]."""


class ScenarioSpec(Thresholds):
    """One entry of ``scenarios:`` (a corruption entry expands to one scenario per severity)."""

    kind: Kind
    """clean | corruption | slice | curated."""
    name: str | None = Field(None, pattern=_NAME)
    """Unique name (letters, digits, ``_.-``). Corruption entries default to the corruption name."""
    description: str = ""
    """Free text shown in the report."""
    corruption: str | None = None
    """corruption: name from the corruption table (e.g. ``gaussian_noise``)."""
    severities: tuple[int, ...] | None = None
    """corruption: severities 1..5 to run (default all five)."""
    where: tuple[Condition, ...] | None = None
    """slice: conditions over manifest columns, all of which must hold."""
    hashes_file: str | None = None
    """curated: text file with one image sha256 per line."""

    @field_validator("severities")
    @classmethod
    def _severities(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("severities must list at least one level 1..5")
        bad = [s for s in v if s not in SEVERITIES]
        if bad:
            raise ValueError(f"every severity must be an integer 1..5 (bad: {bad})")
        if len(set(v)) != len(v):
            raise ValueError(f"severities lists a level twice: {list(v)}")
        return v

    @model_validator(mode="after")
    def _kind_fields(self) -> ScenarioSpec:
        label = f"kind {self.kind!r}"
        other_keys = set().union(*_KIND_KEYS.values()) - _KIND_KEYS[self.kind]
        wrong = sorted(k for k in other_keys if getattr(self, k) is not None)
        if wrong:
            raise ValueError(f"{label}: key(s) {wrong} do not apply to kind {self.kind!r}")
        if self.kind != "corruption" and self.name is None:
            raise ValueError(f"{label}: 'name' is required")
        if self.kind == "corruption":
            if self.corruption is None:
                raise ValueError(f"{label}: 'corruption' is required; one of {', '.join(sorted(CORRUPTIONS))}")
            if self.corruption not in CORRUPTIONS:
                raise ValueError(
                    f"{label}: unknown corruption {self.corruption!r}; choose one of {', '.join(sorted(CORRUPTIONS))}"
                )
        if self.kind == "slice" and not self.where:
            raise ValueError(f"{label}: 'where' needs at least one condition, e.g. "
                             "[{column: lighting, op: '==', value: dim}]")
        if self.kind == "curated" and not self.hashes_file:
            raise ValueError(f"{label}: 'hashes_file' is required (one sha256 per line)")
        return self


@dataclass(frozen=True)
class Scenario:
    """One expanded scenario, ready to run."""

    name: str
    kind: Kind
    gate: ScenarioGate
    description: str = ""
    corruption: str | None = None
    severity: int | None = None
    where: tuple[Condition, ...] = ()
    hashes_file: str | None = None
    entry: int = 0
    """Index of the suite entry it came from (for error messages)."""

    def describe(self) -> str:
        if self.kind == "corruption":
            return f"{self.corruption} severity {self.severity}"
        if self.kind == "slice":
            return " and ".join(c.describe() for c in self.where)
        if self.kind == "curated":
            return f"images listed in {self.hashes_file}"
        return "evaluated split as is"


class ScenarioSuite(StrictModel):
    """A scenario suite file (see the module docstring for the format).

    Example:
        >>> suite = ScenarioSuite.model_validate({"scenarios": [
        ...     {"name": "clean", "kind": "clean", "level": "must_pass", "min_accuracy": 0.9},
        ...     {"kind": "corruption", "corruption": "fog", "severities": [1, 3]}]})
        >>> [s.name for s in suite.expand()]
        ['clean', 'fog_s1', 'fog_s3']
    """

    name: str = Field("suite", pattern=_NAME)
    """Suite name (shown in the report)."""
    description: str = ""
    """Free text shown in the report."""
    critical_classes: tuple[str, ...] = ()
    """Classes whose false-positive rate is reported and bounded by ``max_critical_fpr``."""
    min_pass_rate: float = Field(1.0, ge=0.0, le=1.0)
    """KPI: share of scenarios (in ``pass_rate_scope``) that must pass their checks."""
    pass_rate_scope: Literal["must_pass", "all"] = "must_pass"
    """Which scenarios the pass rate counts: the must-pass ones, or all (warn scenarios too)."""
    pass_rate_level: Level = "must_pass"
    """Level of the pass-rate check."""
    require_champion: bool = False
    """Fail (instead of skip) when there is no champion to compare against."""
    min_images_per_class: int | None = Field(None, ge=1)
    """The clean split needs at least this many images of every class (a must-pass check); None = no guard."""
    robustness: dict[str, float] = Field(default_factory=dict)
    """Suite-wide thresholds on the task's corruption summary (detection: ``min_rpc``, ``min_mpc``); the
    allowed keys are the task's ``robustness_keys``."""
    robustness_level: Level = "must_pass"
    """Level of the robustness checks."""
    defaults: Thresholds = Thresholds()
    """Thresholds applied to every scenario that does not set the key itself."""
    scenarios: tuple[ScenarioSpec, ...] = ()
    """The scenarios, in report order."""
    _curated_defaults: dict[str, float] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _unique_names(self) -> ScenarioSuite:
        if not self.scenarios:
            raise ValueError("'scenarios' must list at least one scenario (and one of kind 'clean')")
        seen: dict[str, int] = {}
        for s in self.expand():
            if s.name in seen:
                raise ValueError(
                    f"scenario name {s.name!r} is used twice (entries {seen[s.name]} and {s.entry}); names must be unique"
                )
            seen[s.name] = s.entry
        if not any(s.kind == "clean" for s in self.scenarios):
            raise ValueError("the suite needs a 'clean' scenario (kind: clean): corruption errors are relative to it")
        if sum(s.kind == "clean" for s in self.scenarios) > 1:
            raise ValueError("the suite has more than one 'clean' scenario; relative floors need exactly one")
        for s in self.expand():
            relative = [k for k in s.gate.thresholds() if k.startswith("min_relative_")]
            if s.kind == "clean" and relative:
                absolute = relative[0].replace("min_relative_", "min_", 1)
                raise ValueError(f"scenario {s.name!r} (kind clean) sets {relative[0]}: it would be compared "
                                 f"with itself; use {absolute} there")
        return self

    @model_validator(mode="after")
    def _task_defaults(self, info: ValidationInfo) -> ScenarioSuite:
        """Remember the task's thresholds for curated scenarios (``context={"task": ...}``; default task else)."""
        task = (info.context or {}).get("task")
        if task is None:
            from cvplatform.tasks import get_task

            task = get_task()
        self._curated_defaults = dict(task.curated_defaults)
        return self

    def _gate(self, spec: ScenarioSpec) -> ScenarioGate:
        values: dict[str, Any] = {}
        for key in ("level", *_THRESHOLDS):
            if key in spec.model_fields_set:
                values[key] = getattr(spec, key)
            else:
                values[key] = getattr(self.defaults, key)
        values.update({k: v for k, v in (self.defaults.model_extra or {}).items()})
        if spec.kind == "curated":  # the task's floors for a list of images the model must get right
            own = set(spec.model_fields_set) | set(spec.model_extra or {})
            values.update({k: v for k, v in self._curated_defaults.items() if k not in own})
        values.update({k: v for k, v in (spec.model_extra or {}).items()})
        if values["level"] is None:
            values["level"] = "warn"
        if values["warn_only"] is None:
            values["warn_only"] = ()
        return ScenarioGate(**values)

    def expand(self) -> list[Scenario]:
        """One :class:`Scenario` per clean/slice/curated entry and per corruption severity."""
        out: list[Scenario] = []
        for i, spec in enumerate(self.scenarios):
            gate = self._gate(spec)
            if spec.kind == "corruption":
                base = spec.name or spec.corruption
                for sev in spec.severities or SEVERITIES:
                    out.append(Scenario(f"{base}_s{sev}", "corruption", gate, spec.description,
                                        corruption=spec.corruption, severity=sev, entry=i))
            else:
                out.append(Scenario(spec.name or spec.kind, spec.kind, gate, spec.description,
                                    where=tuple(spec.where or ()), hashes_file=spec.hashes_file, entry=i))
        return out

    def policy(self, *, seed: int = 0, n_bootstrap: int = 1000, confidence: float = 0.95) -> GatePolicy:
        """The :class:`GatePolicy` for :func:`~cvplatform.evaluation.gates.check_gates`.

        Example:
            >>> suite = ScenarioSuite.model_validate({"defaults": {"max_drop": 0.05},
            ...     "scenarios": [{"name": "clean", "kind": "clean", "min_accuracy": 0.9}]})
            >>> suite.policy().scenarios["clean"].max_drop
            0.05
        """
        return GatePolicy(
            scenarios={s.name: s.gate for s in self.expand()},
            critical_classes=self.critical_classes,
            min_pass_rate=self.min_pass_rate,
            pass_rate_scope=self.pass_rate_scope,
            pass_rate_level=self.pass_rate_level,
            require_champion=self.require_champion,
            clean_scenario=next(s.name for s in self.expand() if s.kind == "clean"),
            min_images_per_class=self.min_images_per_class,
            robustness=dict(self.robustness),
            robustness_level=self.robustness_level,
            n_bootstrap=n_bootstrap,
            confidence=confidence,
            seed=seed,
        )


def load_suite(path: str | os.PathLike[str], task: Task | None = None) -> ScenarioSuite:
    """Load and validate a scenario suite.

    Raises:
        ConfigError: missing file, invalid YAML, unknown keys, wrong types, unknown
            corruption, severity outside 1..5, duplicate names — naming the file and key.

    Example:
        >>> from cvplatform.evaluation.scenarios import load_suite
        >>> suite = load_suite("configs/scenarios/default.yaml")  # doctest: +SKIP
        >>> suite.expand()[0].name  # doctest: +SKIP
        'clean'
    """
    from pydantic import ValidationError

    from cvplatform.config import read_yaml

    data = read_yaml(path)
    source = str(path)
    if data is None or not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'scenarios' list, got {type(data).__name__}")
    from cvplatform.tasks import get_task

    _check_gate_keys(data, source, task or get_task())
    try:
        return ScenarioSuite.model_validate(data, context={"task": task or get_task()})
    except ValidationError as exc:
        raise ConfigError(_format_suite_error(exc, source, data)) from None


def allowed_gate_keys(task: Task) -> list[str]:
    """The threshold keys a suite may set for ``task``: each metric's ``min_``/``max_`` key, ``min_relative_``
    for higher-is-better metrics, the task's own (``extra_gate_keys``) and ``max_drop`` (the champion).

    Example:
        >>> from cvplatform.tasks import get_task
        >>> allowed_gate_keys(get_task("classification"))[:3]
        ['min_accuracy', 'min_relative_accuracy', 'min_macro_f1']
    """
    keys: list[str] = []
    for m in task.metrics:
        keys.extend(k for k in (m.gate_key, m.relative_gate_key) if k)
    return [*keys, *task.extra_gate_keys, "max_drop"]


def _check_gate_keys(data: dict[str, Any], source: str, task: Task) -> None:
    """Every threshold key of ``defaults`` and each scenario must be one of the task's (a ConfigError otherwise)."""
    allowed = allowed_gate_keys(task)
    fixed = set(ScenarioSpec.model_fields) - set(_THRESHOLDS)
    entries = data.get("scenarios") if isinstance(data.get("scenarios"), list) else []
    blocks = [("defaults", data.get("defaults"))] + [
        (f"scenarios[{i}] ({(e or {}).get('name') or (e or {}).get('corruption') or '?'})", e)
        for i, e in enumerate(entries) if isinstance(e, dict)]
    lines = []
    for where, block in blocks:
        if not isinstance(block, dict):
            continue
        own_fixed = {"level"} if where == "defaults" else fixed
        for key, value in block.items():
            if key in own_fixed or key == "warn_only":
                continue
            if key not in allowed and (value is not None or key not in _THRESHOLDS):
                at = f"defaults.{key}" if where == "defaults" else f"{where}: {key}"
                lines.append(f"  - {at}: unknown key; allowed keys: "
                             f"{', '.join(sorted({*own_fixed, 'warn_only', *allowed}))} (task {task.name!r})")
            elif key not in _THRESHOLDS and value is not None and (
                    isinstance(value, bool) or not isinstance(value, int | float)):
                lines.append(f"  - {where}: {key}: expected a number, got {value!r}")
        warn_only = block.get("warn_only")
        for i, key in enumerate(warn_only if isinstance(warn_only, list) else []):
            if key not in allowed:
                lines.append(f"  - {where}: warn_only.{i}: {key!r} is not a threshold key of task {task.name!r}; "
                             f"allowed: {', '.join(allowed)}")
    robustness = data.get("robustness")
    for key in (robustness if isinstance(robustness, dict) else {}):
        if key not in task.robustness_keys:
            allowed = ", ".join(task.robustness_keys) or "none"
            lines.append(f"  - robustness.{key}: unknown key; task {task.name!r} allows: {allowed}")
    if lines:
        raise ConfigError("\n".join([f"{source}: invalid scenario suite", *lines,
                                     "Fix the key(s) above in the suite file and run again."]))


def _format_suite_error(exc: Any, source: str, data: dict[str, Any]) -> str:
    """Like :func:`cvplatform.config.format_validation_error`, naming scenario entries by index and name."""
    from cvplatform.config import format_validation_error

    entries = data.get("scenarios") if isinstance(data.get("scenarios"), list) else []
    lines = [f"{source}: invalid scenario suite"]
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        etype = err.get("type", "")
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if len(loc) >= 2 and loc[0] == "scenarios" and isinstance(loc[1], int):
            i = loc[1]
            entry = entries[i] if i < len(entries) and isinstance(entries[i], dict) else {}
            label = entry.get("name") or entry.get("corruption") or "?"
            where = f"scenarios[{i}] ({label})"
            key = ".".join(str(x) for x in loc[2:])
            if etype == "extra_forbidden":
                model = Condition if (len(loc) > 3 and loc[2] == "where") else ScenarioSpec
                allowed = sorted(model.model_fields)
                lines.append(f"  - {where}: {key}: unknown key; allowed keys: {', '.join(allowed)}")
            elif key:
                value = err.get("input")
                shown = "" if isinstance(value, dict) else f"; got {value!r}"
                lines.append(f"  - {where}: {key}: {msg}{shown}")
            else:
                lines.append(f"  - {where}: {msg}")
        elif not loc:
            lines.append(f"  - {msg}")
        else:
            sub = format_validation_error(type(exc).from_exception_data(exc.title, [err]), ScenarioSuite, source)
            lines.extend(sub.splitlines()[1:-1])
    lines.append("Fix the key(s) above in the suite file and run again.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- selection helpers
def select_slice(df: pd.DataFrame, scenario: Scenario, source: str = "<suite>") -> pd.DataFrame:
    """Rows of ``df`` satisfying every condition of a slice scenario (safe: no ``eval``).

    Raises:
        ConfigError: a condition names a column the manifest does not have.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"camera": ["a", "b", None], "sha256": ["1", "2", "3"]})
        >>> sc = Scenario("cam_b", "slice", ScenarioGate(), where=(Condition(column="camera", value="b"),))
        >>> select_slice(df, sc)["sha256"].tolist()
        ['2']
    """
    mask = None
    for j, cond in enumerate(scenario.where):
        if cond.column not in df.columns:
            raise ConfigError(
                f"{source}: scenario {scenario.name!r} (scenarios[{scenario.entry}].where[{j}].column): "
                f"column {cond.column!r} is not in the manifest; available columns: {', '.join(map(str, df.columns))}. "
                "Fix the column name or evaluate data from a source that has this metadata."
            )
        col = df[cond.column]
        as_str = col.astype(str)
        present = col.notna()
        if cond.op in ("==", "!="):
            hit = present & (as_str == str(cond.value))
        else:
            values = [str(v) for v in cond.value]  # type: ignore[union-attr]
            hit = present & as_str.isin(values)
        m = hit if cond.op in ("==", "in") else ~hit
        mask = m if mask is None else (mask & m)
    return df[mask] if mask is not None else df


def read_hashes(path: str | os.PathLike[str], *, scenario: str = "curated") -> list[str]:
    """Read a curated list: one sha256 per line (first token), blank lines and ``#`` comments ignored.

    Raises:
        ConfigError: missing file or a line that is not a 64-hex sha256 (with its line number).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "h.txt"
        >>> _ = p.write_text("# hard cases\\n" + "a" * 64 + "  a note\\n")
        >>> read_hashes(p) == ["a" * 64]
        True
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"{p}: curated list of scenario {scenario!r} not found. Create it (one image sha256 per line) "
            "or fix hashes_file in the suite."
        )
    out: list[str] = []
    for lineno, raw in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        token = line.split()[0].lower()
        if not _SHA256.match(token):
            raise ConfigError(
                f"{p}:{lineno}: scenario {scenario!r}: {token!r} is not a sha256 (64 hex characters). "
                "List the `sha256` column of the manifest, one per line."
            )
        if token not in out:
            out.append(token)
    return out


def select_curated(manifest: pd.DataFrame, hashes: list[str], scenario: Scenario, path: Path) -> pd.DataFrame:
    """Manifest rows of the listed hashes, in list order.

    Raises:
        DataError: a listed hash is not in the manifest (naming the file and the hashes).
    """
    by_hash = manifest.drop_duplicates("sha256").set_index("sha256", drop=False)
    missing = [h for h in hashes if h not in by_hash.index]
    if missing:
        shown = ", ".join(h[:12] + "…" for h in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(
            f"{path}: scenario {scenario.name!r}: {len(missing)} listed image(s) are not in the manifest ({shown}). "
            "Remove them from the list or re-ingest the data that contains them."
        )
    return by_hash.loc[hashes].reset_index(drop=True)


__all__ = [
    "Condition",
    "Kind",
    "Scenario",
    "ScenarioSpec",
    "ScenarioSuite",
    "Thresholds",
    "load_suite",
    "read_hashes",
    "select_curated",
    "select_slice",
]
