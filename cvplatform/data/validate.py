"""The validate stage: the manifest against its Great Expectations (1.x) suite.

The suite definition lives in ``configs/expectations/manifest.yaml`` (loaded into
:class:`~cvplatform.config.ManifestSuiteConfig`). It becomes three GX expectation
suites, one per table, all run in an in-memory (ephemeral) GX Data Context so no GX
project files land in the repository:

``manifest``
    the manifest itself: row count, required columns, column types (integers for
    width/height/channels, strings for labels, 64-hex sha256), nulls, allowed
    ``split`` and ``channels`` values, image size bounds, unique sha256/path and,
    when ``classes`` is configured, the exact label set (no unknown label, no missing class).
``class_counts``
    derived, one row per label: ``label, count, ratio_to_smallest``. GX has no
    "images per class" or "imbalance" expectation, so the stage validates this table
    instead (``count >= min_per_class``, ``max(ratio_to_smallest) <= max_imbalance``).
``sha256_splits``
    derived, one row per sha256: ``sha256, n_splits, splits``; ``n_splits <= 1``
    means no image sits in two splits (train/test leakage).

Every check's observed value comes from the GX validation result. The HTML Data Docs
(``artifacts/validate/data_docs/index.html``) show all three tables.

pandas 3 note: GX 1.24's ``expect_column_values_to_be_in_type_list`` compares the
column's dtype object with numpy dtypes, so it never matches pandas 3's default
string dtype (``StringDtype(na_value=nan)``, shown as ``str``); string columns are
therefore checked with ``expect_column_values_to_be_of_type(type_="str")``, which
compares ``dtype.type`` and works on both ``str`` and ``object`` columns.

GX 1.24 note: the Data Docs renderer raises ``KeyError: 'unexpected_percent'`` on a
*failed* ``expect_column_distinct_values_to_equal_set`` (its result has
``unexpected_count`` but no percentages), so "label set equals ``classes``" is two
expectations: ``expect_column_values_to_be_in_set`` (no unknown label) and
``expect_column_distinct_values_to_contain_set`` (no missing class).
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from cvplatform.config import BoxSuiteConfig, ManifestSuiteConfig, Params, load_config
from cvplatform.data.manifest import read_manifest
from cvplatform.errors import CVPlatformError, ValidationFailed
from cvplatform.stage import StageResult
from cvplatform.utils.io import ProjectPaths

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

logger = logging.getLogger(__name__)

MANIFEST_TABLE = "manifest"
CLASS_COUNTS_TABLE = "class_counts"
SHA_SPLITS_TABLE = "sha256_splits"
BOXES_TABLE = "boxes"
BOXES_PER_IMAGE_TABLE = "boxes_per_image"
BOX_CLASS_COUNTS_TABLE = "box_class_counts"
DOCS_SITE = "cvplatform"
SHA256_REGEX = r"^[0-9a-f]{64}$"
INT_COLUMNS = ("width", "height", "channels")
# numpy integer dtypes (whole-column check) + "int" (python ints in an object column, checked per value)
INT_TYPES = ["int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8", "int"]
_META_KEY = "cvplatform_check"
_EXAMPLES = 5

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


# --------------------------------------------------------------------------- results
@dataclass
class CheckResult:
    """The outcome of one expectation.

    Attributes:
        name: stable id of the check in the suite, e.g. ``not_null:label``, ``min_per_class``.
        expectation: GX expectation type, e.g. ``expect_column_values_to_not_be_null``.
        table: ``manifest``, ``class_counts`` or ``sha256_splits``.
        column: the column checked (None for table-level checks).
        status: ``passed``, ``failed`` or ``skipped``.
        success: True / False, None when skipped.
        observed: what GX observed (a number, a list, or a dict with unexpected counts and examples).
        expected: the expected value or threshold.
        message: one line, observed vs expected (or why it was skipped).
    """

    name: str
    expectation: str
    table: str
    column: str | None
    status: str
    success: bool | None
    observed: Any
    expected: Any
    message: str


@dataclass
class ValidateResult(StageResult):
    """What :func:`run_validate` / :func:`validate_manifest` return.

    ``evaluated = passed + failed``; skipped checks (e.g. ``classes: null``) are not
    evaluated. ``docs_path`` is the Data Docs ``index.html`` (None when not built).
    """

    stage: ClassVar[str] = "validate"
    summary_model: ClassVar[str | None] = "ValidateSummary"

    success: bool
    rows: int
    evaluated: int
    passed: int
    failed: int
    skipped: int
    checks: list[CheckResult] = field(default_factory=list)
    suite: str = "manifest"
    suite_path: str | None = None
    manifest_path: str | None = None
    docs_path: Path | None = None
    error: str | None = None

    @property
    def failed_checks(self) -> list[CheckResult]:
        """The checks that failed, in suite order."""
        return [c for c in self.checks if c.status == FAILED]

    def check(self, name: str) -> CheckResult:
        """The check called ``name`` (e.g. ``"unique:sha256"``); KeyError if absent."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r}; checks: {[c.name for c in self.checks]}")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["checks"] = [_json_safe(asdict(c)) for c in self.checks]
        return out

    def lines(self) -> list[str]:
        """One screen: the verdict, each failed check (observed vs expected), skipped checks, Data Docs."""
        if self.error:
            return [f"validate: ERROR: {self.error}"]
        verdict = "OK" if self.success else "FAILED"
        out = [
            f"validate: {verdict} (suite '{self.suite}', {self.rows:,} rows): "
            f"{self.passed} of {self.evaluated} checks passed, {self.failed} failed, {self.skipped} skipped"
        ]
        out += [f"  FAIL {c.message}" for c in self.failed_checks]
        reasons: dict[str, list[str]] = {}  # one line per reason (e.g. both `classes` checks)
        for c in self.checks:
            if c.status == SKIPPED:
                reasons.setdefault(c.message.split("skipped: ", 1)[-1], []).append(c.name)
        out += [f"  skip {', '.join(names)}: {why}" for why, names in reasons.items()]
        if self.docs_path:
            out.append(f"data docs: {self.docs_path}")
        return out

    def failure_message(self) -> str:
        """The ValidationFailed message: every failed check with observed vs expected, and where to look."""
        where = self.manifest_path or "the manifest"
        suite = self.suite_path or f"suite '{self.suite}'"
        lines = [f"{where} failed {self.failed} of {self.evaluated} expectations of {suite}:"]
        lines += [f"  - {c.message}" for c in self.failed_checks]
        if self.docs_path:
            lines.append(f"Data Docs: {self.docs_path}")
        lines.append(
            "Fix the data (then re-run `cvplatform ingest`), or if a threshold is wrong for this dataset, "
            f"edit {self.suite_path or 'the suite file'}."
        )
        return "\n".join(lines)


# --------------------------------------------------------------------------- suite building
@dataclass
class _Spec:
    name: str
    table: str
    column: str | None
    title: str
    expectation: Any  # a great_expectations.expectations.Expectation
    expected: Any
    expected_text: str


@dataclass
class _Plan:
    specs: dict[str, list[_Spec]]  # table -> specs
    skipped: list[CheckResult]
    order: list[str]  # check names in suite order (skipped included)


def _skip(name: str, expectation: str, table: str, column: str | None, expected: Any, why: str) -> CheckResult:
    where = f"{table}.{column}" if column else table
    msg = f"{where} [{expectation}]: skipped: {why}"
    return CheckResult(name, expectation, table, column, SKIPPED, None, None, expected, msg)


def _referenced_columns(cfg: ManifestSuiteConfig) -> list[str]:
    cols = list(cfg.required_columns)
    for c in (*cfg.not_null, *cfg.unique, "sha256", "label", "split", *INT_COLUMNS):
        if c not in cols:
            cols.append(c)
    return cols


def _plan(cfg: ManifestSuiteConfig, columns: list[str], has_boxes: bool = False) -> _Plan:
    """Build the GX expectations for every table; checks on missing columns (or a missing annotation
    table) are skipped."""
    import great_expectations.expectations as gxe

    present = set(columns)
    specs: dict[str, list[_Spec]] = {t: [] for t in (MANIFEST_TABLE, CLASS_COUNTS_TABLE, SHA_SPLITS_TABLE,
                                                      BOXES_TABLE, BOXES_PER_IMAGE_TABLE, BOX_CLASS_COUNTS_TABLE)}
    skipped: list[CheckResult] = []
    order: list[str] = []

    def add(table: str, name: str, col: str | None, title: str, cls: Any, expected: Any,
            expected_text: str, needs: tuple[str, ...] = (), notes: str | None = None, **kwargs: Any) -> None:
        order.append(name)
        missing = [c for c in needs if c not in present]
        if missing:
            skipped.append(_skip(name, _gx_type(cls), table, col, expected,
                                 f"{title}: manifest has no column {', '.join(map(repr, missing))} "
                                 "(reported by the required-columns check)"))
            return
        if col is not None:
            kwargs["column"] = col
        exp = cls(meta={_META_KEY: name}, notes=notes, **kwargs)
        specs[table].append(_Spec(name, table, col, title, exp, expected, expected_text))

    m = MANIFEST_TABLE
    add(m, "row_count", None, "row count", gxe.ExpectTableRowCountToBeBetween,
        {"min": cfg.min_rows}, f">= {cfg.min_rows} rows", min_value=cfg.min_rows)
    required = _referenced_columns(cfg)
    add(m, "columns", None, "required columns", gxe.ExpectTableColumnsToMatchSet,
        required, f"columns include {required}", column_set=required, exact_match=False)
    for c in INT_COLUMNS:
        add(m, f"type:{c}", c, "integer type", gxe.ExpectColumnValuesToBeInTypeList,
            {"types": INT_TYPES}, "an integer dtype", needs=(c,), type_list=INT_TYPES)
    add(m, "type:label", "label", "string type", gxe.ExpectColumnValuesToBeOfType,
        {"type": "str"}, "strings", needs=("label",), type_="str")
    add(m, "format:sha256", "sha256", "64 lowercase hex characters", gxe.ExpectColumnValuesToMatchRegex,
        {"regex": SHA256_REGEX}, f"matching {SHA256_REGEX}", needs=("sha256",), regex=SHA256_REGEX)
    for c in cfg.not_null:
        add(m, f"not_null:{c}", c, "no nulls", gxe.ExpectColumnValuesToNotBeNull,
            "not null", "no null values", needs=(c,))
    add(m, "values:split", "split", "allowed splits", gxe.ExpectColumnValuesToBeInSet,
        list(cfg.splits), f"in {list(cfg.splits)}", needs=("split",), value_set=list(cfg.splits))
    add(m, "values:channels", "channels", "allowed channel counts", gxe.ExpectColumnValuesToBeInSet,
        list(cfg.channels), f"in {list(cfg.channels)}", needs=("channels",), value_set=list(cfg.channels))
    for c in ("width", "height"):
        add(m, f"size:{c}", c, "image size bounds", gxe.ExpectColumnValuesToBeBetween,
            {"min": cfg.min_side, "max": cfg.max_side}, f"between {cfg.min_side} and {cfg.max_side} pixels",
            needs=(c,), min_value=cfg.min_side, max_value=cfg.max_side)
    for c in cfg.unique:
        add(m, f"unique:{c}", c, "unique values", gxe.ExpectColumnValuesToBeUnique,
            "unique", "no duplicates", needs=(c,))
    if cfg.classes is None:
        why = "label set vs configured classes: `classes: null` in the suite (not checked)"
        for name, cls in (("classes:unknown", gxe.ExpectColumnValuesToBeInSet),
                          ("classes:missing", gxe.ExpectColumnDistinctValuesToContainSet)):
            order.append(name)
            skipped.append(_skip(name, _gx_type(cls), m, "label", None, why))
    else:
        # "label set == classes" as two checks (no unknown label, no missing class): GX 1.24's
        # Data Docs renderer crashes on a failed expect_column_distinct_values_to_equal_set.
        classes = sorted(cfg.classes)
        add(m, "classes:unknown", "label", "labels are configured classes", gxe.ExpectColumnValuesToBeInSet,
            classes, f"every label in {classes}", needs=("label",), value_set=classes)
        add(m, "classes:missing", "label", "every configured class present",
            gxe.ExpectColumnDistinctValuesToContainSet, classes, f"all of {classes} present",
            needs=("label",), value_set=classes)

    add(CLASS_COUNTS_TABLE, "min_classes", None, "number of classes", gxe.ExpectTableRowCountToBeBetween,
        {"min": cfg.min_classes}, f">= {cfg.min_classes} classes", needs=("label",),
        notes="Derived table: one row per label in the manifest.", min_value=cfg.min_classes)
    add(CLASS_COUNTS_TABLE, "min_per_class", "count", "images per class", gxe.ExpectColumnValuesToBeBetween,
        {"min": cfg.min_per_class}, f">= {cfg.min_per_class} images in every class", needs=("label",),
        notes="Derived table: images per label in the manifest (GX has no per-class count expectation).",
        min_value=cfg.min_per_class)
    add(CLASS_COUNTS_TABLE, "max_imbalance", "ratio_to_smallest", "class imbalance (largest / smallest class)",
        gxe.ExpectColumnMaxToBeBetween, {"max": cfg.max_imbalance}, f"<= {cfg.max_imbalance:g}",
        needs=("label",), notes="Derived: ratio_to_smallest = count / smallest class count.",
        max_value=cfg.max_imbalance)
    add(SHA_SPLITS_TABLE, "one_split_per_image", "n_splits", "no image in two splits",
        gxe.ExpectColumnValuesToBeBetween, {"max": 1}, "every sha256 in at most 1 split",
        needs=("sha256", "split"),
        notes="Derived table: number of distinct splits per sha256 (train/val/test leakage).",
        max_value=1)
    _plan_boxes(cfg.boxes, add, order, skipped, has_boxes)
    return _Plan(specs, skipped, order)


def _plan_boxes(cfg: BoxSuiteConfig, add: Any, order: list[str], skipped: list[CheckResult],
                has_boxes: bool) -> None:
    """The checks of the annotation table (detection); none for a manifest without one (classification)."""
    import great_expectations.expectations as gxe

    if not has_boxes:
        return

    checks = [
        (BOXES_TABLE, "boxes:inside", "overhang", "boxes inside their image", gxe.ExpectColumnValuesToBeBetween,
         {"max": cfg.max_overhang}, f"no box more than {cfg.max_overhang:g} px outside its image",
         "Derived table: one row per box; overhang = pixels the box reaches outside its image.",
         {"max_value": cfg.max_overhang}),
        (BOXES_TABLE, "boxes:min_side", "min_side", "box size", gxe.ExpectColumnValuesToBeBetween,
         {"min": cfg.min_box_side}, f"every box at least {cfg.min_box_side:g} px wide and high",
         "Derived: min_side = min(box width, box height) in pixels.", {"min_value": cfg.min_box_side}),
        (BOXES_PER_IMAGE_TABLE, "boxes:per_image", "n_boxes", "boxes per image", gxe.ExpectColumnValuesToBeBetween,
         {"max": cfg.max_boxes_per_image}, f"at most {cfg.max_boxes_per_image} boxes per image",
         "Derived table: boxes per manifest image (background images have 0).",
         {"max_value": cfg.max_boxes_per_image}),
        (BOX_CLASS_COUNTS_TABLE, "boxes:min_per_class", "count", "boxes per class",
         gxe.ExpectColumnValuesToBeBetween, {"min": cfg.min_boxes_per_class},
         f">= {cfg.min_boxes_per_class} boxes of every class", "Derived table: boxes per class.",
         {"min_value": cfg.min_boxes_per_class}),
        (BOX_CLASS_COUNTS_TABLE, "boxes:max_imbalance", "ratio_to_smallest", "class balance by box count",
         gxe.ExpectColumnMaxToBeBetween, {"max": cfg.max_box_imbalance}, f"<= {cfg.max_box_imbalance:g}",
         "Derived: ratio_to_smallest = boxes of the class / boxes of the smallest class.",
         {"max_value": cfg.max_box_imbalance}),
    ]
    if cfg.classes is not None:
        classes = sorted(cfg.classes)
        checks.append((BOXES_TABLE, "boxes:classes", "class", "box classes are configured classes",
                       gxe.ExpectColumnValuesToBeInSet, classes, f"every box class in {classes}", None,
                       {"value_set": classes}))
    for table, name, col, title, cls, expected, text, notes, kwargs in checks:
        add(table, name, col, title, cls, expected, text, notes=notes, **kwargs)
    if cfg.classes is None:
        order.append("boxes:classes")
        skipped.append(_skip("boxes:classes", "expect_column_values_to_be_in_set", BOXES_TABLE, "class", None,
                             "box classes vs configured classes: `boxes.classes: null` in the suite (not checked)"))


def _gx_type(cls: Any) -> str:
    """snake_case expectation type of a GX expectation class (ExpectColumnX -> expect_column_x)."""
    import re

    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()


# --------------------------------------------------------------------------- derived tables
def _class_counts(df: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    counts = df["label"].dropna().astype(str).value_counts().sort_index()
    out = pd.DataFrame({"label": counts.index.astype(str), "count": counts.to_numpy().astype("int64")})
    smallest = int(out["count"].min()) if len(out) else 0
    out["ratio_to_smallest"] = (out["count"] / smallest).astype("float64") if smallest else pd.Series(dtype="float64")
    return out


def _sha_splits(df: pd.DataFrame) -> pd.DataFrame:
    """One row per sha256: how many distinct splits it appears in, and which (vectorised)."""
    import pandas as pd

    pairs = df[["sha256", "split"]].dropna().astype({"sha256": str, "split": str}).drop_duplicates()
    pairs = pairs.sort_values(["sha256", "split"], kind="mergesort")
    grouped = pairs.groupby("sha256", sort=True)["split"]
    n_splits = grouped.size()
    splits = grouped.first()
    multi = n_splits.index[n_splits.to_numpy() > 1]
    if len(multi):  # usually none: join the split names only where there is leakage
        joined = pairs[pairs["sha256"].isin(multi)].groupby("sha256", sort=True)["split"].agg(",".join)
        splits = splits.astype(object)
        splits.loc[joined.index] = joined
    return pd.DataFrame({
        "sha256": n_splits.index.astype(str),
        "n_splits": n_splits.to_numpy().astype("int64"),
        "splits": splits.reindex(n_splits.index).astype(str).to_numpy(),
    })


def box_tables(df: pd.DataFrame, boxes: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The derived tables of the box checks: one row per box (``overhang``, ``min_side``), boxes per manifest
    image (``n_boxes``, 0 for a background image) and boxes per class (``count``, ``ratio_to_smallest``).

    Example:
        >>> import pandas as pd
        >>> m = pd.DataFrame({"sha256": ["a", "b"], "width": [10, 10], "height": [8, 8]})
        >>> b = pd.DataFrame({"sha256": ["a"], "class": ["cat"], "x0": [-1.0], "y0": [2.0], "x1": [4.0], "y1": [9.0]})
        >>> t = box_tables(m, b)
        >>> t["boxes"][["overhang", "min_side"]].values.tolist(), t["boxes_per_image"]["n_boxes"].tolist()
        ([[1.0, 5.0]], [1, 0])
    """
    import numpy as np
    import pandas as pd

    size = df[["sha256", "width", "height"]].drop_duplicates("sha256").astype({"sha256": str})
    b = boxes.astype({"sha256": str, "class": str}).merge(size, on="sha256", how="left")
    x0, y0, x1, y1 = (b[c].astype("float64").to_numpy() for c in ("x0", "y0", "x1", "y1"))
    w, h = b["width"].astype("float64").to_numpy(), b["height"].astype("float64").to_numpy()
    over = np.maximum.reduce([-x0, -y0, x1 - w, y1 - h, np.zeros(len(b))]) if len(b) else np.zeros(0)
    per_box = pd.DataFrame({"sha256": b["sha256"].to_numpy(), "class": b["class"].to_numpy(),
                            "overhang": np.nan_to_num(over, nan=np.inf),  # a box of an unknown image: outside
                            "min_side": np.minimum(x1 - x0, y1 - y0)})
    n = b.groupby("sha256").size()
    per_image = pd.DataFrame({"sha256": size["sha256"].to_numpy(),
                              "n_boxes": n.reindex(size["sha256"]).fillna(0).astype("int64").to_numpy()})
    counts = b["class"].value_counts().sort_index()
    per_class = pd.DataFrame({"class": counts.index.astype(str), "count": counts.to_numpy().astype("int64")})
    smallest = int(per_class["count"].min()) if len(per_class) else 0
    per_class["ratio_to_smallest"] = (per_class["count"] / smallest).astype("float64") if smallest else 0.0
    return {BOXES_TABLE: per_box, BOXES_PER_IMAGE_TABLE: per_image, BOX_CLASS_COUNTS_TABLE: per_class}


# --------------------------------------------------------------------------- result reading
def _json_safe(v: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> python, containers recursively (GX results hold numpy values)."""
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set):
        return [_json_safe(x) for x in v]
    if hasattr(v, "item") and callable(v.item) and getattr(v, "shape", None) == ():
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return str(v)


def _exception_message(res: Any) -> str | None:
    info = getattr(res, "exception_info", None) or {}
    if "raised_exception" in info:
        return info.get("exception_message") if info.get("raised_exception") else None
    msgs = [v.get("exception_message") for v in info.values() if isinstance(v, dict) and v.get("raised_exception")]
    return "; ".join(m for m in msgs if m) or None


def _short(v: Any, limit: int = 120) -> str:
    s = repr(v) if not isinstance(v, str) else v
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _observed(res: Any) -> tuple[Any, str]:
    """(observed value for the summary, human text) from one GX ExpectationValidationResult."""
    err = _exception_message(res)
    if err:
        return f"error: {err}", f"could not evaluate ({err})"
    r = _json_safe(dict(res.result or {}))
    if "unexpected_count" in r and "element_count" in r:  # column map expectation
        n, total = r["unexpected_count"], r["element_count"]
        examples = r.get("partial_unexpected_index_list") or r.get("partial_unexpected_list") or []
        examples = examples[:_EXAMPLES]
        observed = {"unexpected_count": n, "element_count": total, "examples": examples}
        text = f"{n} of {total} rows unexpected"
        if n:
            text += f", e.g. {_short(examples, 300)}"
        return observed, text
    if "partial_missing_list" in r or "missing_count" in r:  # distinct values contain set
        missing = r.get("partial_missing_list", [])
        return {"missing": missing, "missing_count": r.get("missing_count")}, f"missing {missing}"
    details = r.get("details") or {}
    if isinstance(details, dict) and "mismatched" in details:
        missing = (details.get("mismatched") or {}).get("missing", [])
        observed = {"missing": missing, "columns": r.get("observed_value")}
        return observed, f"missing columns {missing}" if missing else f"columns {r.get('observed_value')}"
    ov = r.get("observed_value")
    if isinstance(ov, float):
        ov = round(ov, 4)
    return ov, ("none (empty table)" if ov is None else _short(ov))


def _check_from_result(spec: _Spec, res: Any, note: str | None = None) -> CheckResult:
    observed, text = _observed(res)
    if note:
        text = f"{text} ({note})"
    ok = bool(res.success)
    where = f"{spec.table}.{spec.column}" if spec.column else spec.table
    msg = f"{where} [{res.expectation_config.type}] {spec.title}: observed {text}; expected {spec.expected_text}"
    return CheckResult(spec.name, res.expectation_config.type, spec.table, spec.column,
                       PASSED if ok else FAILED, ok, observed, spec.expected, msg)


# --------------------------------------------------------------------------- GX run
def _context(docs_dir: Path | None) -> Any:
    """An in-memory GX Data Context; its only Data Docs site (if any) writes under ``docs_dir``."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites: dict[str, Any] = {}
    if docs_dir is not None:
        sites[DOCS_SITE] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites=sites,
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def _result_format(index_columns: list[str]) -> dict[str, Any]:
    fmt: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": _EXAMPLES}
    if index_columns:
        fmt["unexpected_index_column_names"] = index_columns
    return fmt


def validate_manifest(
    df: pd.DataFrame,
    suite_cfg: ManifestSuiteConfig,
    *,
    docs_dir: str | Path | None = None,
    boxes: pd.DataFrame | None = None,
) -> ValidateResult:
    """Validate a manifest DataFrame against the suite; never raises on failed expectations.

    Args:
        df: the manifest (columns as in :mod:`cvplatform.data.manifest`).
        suite_cfg: the suite definition (``configs/expectations/manifest.yaml``).
        docs_dir: where to build the GX Data Docs site (``index.html`` + pages); None = no HTML.
        boxes: the annotation table of a detection manifest (one row per box: ``sha256``, ``class``,
            ``x0, y0, x1, y1``); None = the box checks are skipped.

    Returns:
        A :class:`ValidateResult` (``success`` False when any expectation failed).

    Example:
        >>> from cvplatform.config import ManifestSuiteConfig
        >>> from cvplatform.data.manifest import read_manifest
        >>> res = validate_manifest(read_manifest("data/processed/manifest.parquet"),
        ...                         ManifestSuiteConfig())  # doctest: +SKIP
        >>> res.success, [c.message for c in res.failed_checks]  # doctest: +SKIP
        (True, [])
    """
    import great_expectations as gx

    columns = [str(c) for c in df.columns]
    plan = _plan(suite_cfg, columns, has_boxes=boxes is not None)
    docs = Path(docs_dir).resolve() if docs_dir is not None else None
    ctx = _context(docs)
    source = ctx.data_sources.add_pandas(name="cvplatform")

    tables: dict[str, tuple[Any, list[str]]] = {MANIFEST_TABLE: (df, ["path"] if "path" in columns else [])}
    notes: dict[str, str] = {}
    if plan.specs[CLASS_COUNTS_TABLE]:
        counts = _class_counts(df)
        tables[CLASS_COUNTS_TABLE] = (counts, ["label"])
        if len(counts):
            big, small = counts.loc[counts["count"].idxmax()], counts.loc[counts["count"].idxmin()]
            notes["max_imbalance"] = (f"largest class {big['label']!r}: {big['count']}, "
                                      f"smallest {small['label']!r}: {small['count']}")
    if plan.specs[SHA_SPLITS_TABLE]:
        tables[SHA_SPLITS_TABLE] = (_sha_splits(df), ["sha256", "splits"])
    if boxes is not None:
        derived = box_tables(df, boxes)
        tables[BOXES_TABLE] = (derived[BOXES_TABLE], ["sha256", "class"])
        tables[BOXES_PER_IMAGE_TABLE] = (derived[BOXES_PER_IMAGE_TABLE], ["sha256"])
        tables[BOX_CLASS_COUNTS_TABLE] = (derived[BOX_CLASS_COUNTS_TABLE], ["class"])

    by_name: dict[str, CheckResult] = {c.name: c for c in plan.skipped}
    for table, (frame, index_cols) in tables.items():
        specs = plan.specs[table]
        if not specs:
            continue
        batch_def = source.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe(name="all")
        suite_name = suite_cfg.name if table == MANIFEST_TABLE else f"{suite_cfg.name}.{table}"
        suite = ctx.suites.add(gx.ExpectationSuite(name=suite_name, expectations=[s.expectation for s in specs]))
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=suite_name, data=batch_def, suite=suite))
        logger.debug("validating %s (%d rows) with %d expectations", table, len(frame), len(specs))
        results = vd.run(batch_parameters={"dataframe": frame}, result_format=_result_format(index_cols))
        spec_by_name = {s.name: s for s in specs}
        for res in results.results:
            name = (res.expectation_config.meta or {}).get(_META_KEY)
            if name in spec_by_name:
                by_name[name] = _check_from_result(spec_by_name[name], res, notes.get(name))
        for s in specs:  # defensive: GX returned no result for an expectation
            if s.name not in by_name:
                by_name[s.name] = CheckResult(s.name, _gx_type(type(s.expectation)), s.table, s.column, FAILED,
                                              False, None, s.expected, f"{s.table}: {s.title}: no result from GX")

    index_path = None
    if docs is not None:
        docs.mkdir(parents=True, exist_ok=True)
        ctx.build_data_docs(site_names=[DOCS_SITE])
        index_path = docs / "index.html"

    checks = [by_name[n] for n in plan.order]
    passed = sum(c.status == PASSED for c in checks)
    failed = sum(c.status == FAILED for c in checks)
    skipped = sum(c.status == SKIPPED for c in checks)
    result = ValidateResult(
        success=failed == 0, rows=len(df), evaluated=passed + failed, passed=passed, failed=failed,
        skipped=skipped, checks=checks, suite=suite_cfg.name, docs_path=index_path,
    )
    logger.info("validate: %d of %d checks passed, %d failed, %d skipped", passed, passed + failed, failed, skipped)
    return result


# --------------------------------------------------------------------------- stage
def _reset_docs_dir(docs_dir: Path) -> None:
    """Remove a previous Data Docs build so the site shows this run only (the stage is idempotent)."""
    if docs_dir.is_dir():
        shutil.rmtree(docs_dir)


def run_validate(params: Params, *, root: str | Path | None = None) -> ValidateResult:
    """Validate ``data/processed/manifest.parquet`` against ``params.validate.suite``.

    Writes ``artifacts/validate/summary.json`` (always, also on failure) and the Data Docs
    under ``artifacts/validate/data_docs/``; then raises :class:`ValidationFailed` if any
    expectation failed. A missing/invalid suite file raises ConfigError, a missing
    manifest DataError (the summary records the error in both cases).

    Args:
        params: loaded ``params.yaml`` (only ``validate.suite`` is used).
        root: project root (default: the current directory).

    Returns:
        The :class:`ValidateResult` of a passing validation.

    Raises:
        ValidationFailed: an expectation failed; the message lists each with observed vs expected.

    Example:
        >>> from cvplatform.config import load_params
        >>> res = run_validate(load_params("params.yaml"))  # doctest: +SKIP
        >>> print("\\n".join(res.lines()))  # doctest: +SKIP
        validate: OK (suite 'manifest', 1,797 rows): 19 of 19 checks passed, 0 failed, 1 skipped
    """
    from cvplatform.utils.logs import quiet_libraries

    quiet_libraries()  # no third-party INFO floods in task logs and notebooks
    paths = ProjectPaths.at(root)
    out_dir = paths.artifacts("validate")
    suite_file = paths.resolve(params.validate_params.suite)
    manifest_file = paths.resolve(params.project.manifest)
    try:
        suite_cfg = load_config(suite_file, ManifestSuiteConfig)
        # no `required` here: missing columns are reported by the suite (summary + Data Docs)
        df = read_manifest(manifest_file, required=())
        boxes = _annotation_table(df, paths)
    except CVPlatformError as exc:
        ValidateResult(
            success=False, rows=0, evaluated=0, passed=0, failed=0, skipped=0,
            suite_path=str(suite_file), manifest_path=str(manifest_file), error=str(exc),
        ).write_summary(out_dir)
        raise

    docs_dir = out_dir / "data_docs"
    _reset_docs_dir(docs_dir)
    result = validate_manifest(df, suite_cfg, docs_dir=docs_dir, boxes=boxes)
    result.suite_path = str(suite_file)
    result.manifest_path = str(manifest_file)
    result.write_summary(out_dir)
    if not result.success:
        raise ValidationFailed(result.failure_message())
    return result


def _annotation_table(df: pd.DataFrame, paths: ProjectPaths) -> pd.DataFrame | None:
    """The annotation table the manifest's ``annotations`` column names (None without the column).

    Raises:
        DataError: the column names several tables, or the table is missing, unreadable or lacks columns.
    """
    import pandas as pd

    from cvplatform.errors import DataError

    if "annotations" not in df.columns:
        return None
    named = sorted({str(v) for v in df["annotations"].dropna().tolist() if str(v).strip()})
    if not named:
        return None
    if len(named) > 1:
        raise DataError(f"manifest column 'annotations' names {len(named)} tables ({named[:3]}); one dataset has "
                        "one annotation table. Re-run `cvplatform ingest`.")
    path = paths.resolve(named[0])
    try:
        table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: annotation table named by the manifest is missing or unreadable ({exc}). Run "
                        "`dvc pull` or re-run `cvplatform ingest`.") from None
    missing = [c for c in ("sha256", "class", "x0", "y0", "x1", "y1") if c not in table.columns]
    if missing:
        raise DataError(f"{path}: annotation table lacks column(s) {missing}. Re-run `cvplatform ingest`.")
    return table


__all__ = ["CheckResult", "ValidateResult", "box_tables", "run_validate", "validate_manifest"]
