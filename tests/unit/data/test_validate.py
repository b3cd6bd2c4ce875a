"""The validate stage: the real GX 1.x suite over small crafted manifests.

Every failure case breaks exactly one thing and asserts that exactly the expected
check(s) fail, with observed vs expected in the result and in the message.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from cvplatform.config import ManifestSuiteConfig, Params, load_config
from cvplatform.data.manifest import CORE_COLUMNS, write_manifest
from cvplatform.data.validate import ValidateResult, run_validate, validate_manifest
from cvplatform.errors import ConfigError, DataError, ValidationFailed

REPO = Path(__file__).resolve().parents[3]
SUITE_FILE = REPO / "configs" / "expectations" / "manifest.yaml"
CLASSES = ("cat", "dog", "fox")
SPLITS = ("train", "val", "test")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_manifest(per_class: dict[str, int] | None = None, side: int = 32) -> pd.DataFrame:
    """A valid manifest: ``per_class`` images per label, splits round-robin within each class."""
    per_class = per_class or {c: 12 for c in CLASSES}
    rows = []
    for label, n in per_class.items():
        for i in range(n):
            sha = _sha(f"{label}-{i}")
            rows.append({
                "path": f"data/raw/{label}/{sha}.png", "sha256": sha, "label": label,
                "width": side, "height": side, "channels": 3, "format": "PNG", "source": "shapes",
                "origin": f"{label}/{i}.png", "split": SPLITS[i % 3], "background": "plain",
            })
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def suite() -> ManifestSuiteConfig:
    """The real suite file shipped in configs/ (what `cvplatform validate` uses)."""
    return load_config(SUITE_FILE, ManifestSuiteConfig)


def failed_names(res: ValidateResult) -> set[str]:
    return {c.name for c in res.failed_checks}


# --------------------------------------------------------------------------- passing
def test_valid_manifest_passes_and_classes_check_is_skipped(suite):
    res = validate_manifest(make_manifest(), suite)
    assert res.success, res.lines()
    assert res.failed == 0 and res.evaluated == res.passed > 10
    assert res.rows == 36 and res.docs_path is None
    assert res.evaluated + res.skipped == len(res.checks)
    skipped = [c for c in res.checks if c.status == "skipped"]
    assert {c.name for c in skipped} == {"classes:unknown", "classes:missing"}
    assert all("skipped" in c.message and "classes: null" in c.message for c in skipped)
    assert res.lines()[0].startswith("validate: OK")
    assert any(line.startswith("  skip") for line in res.lines())
    # observed values come from GX: e.g. the imbalance of a balanced set is 1.0
    assert res.check("max_imbalance").observed == 1.0
    assert res.check("type:width").observed == "int64"


def test_passes_with_classes_configured(suite):
    res = validate_manifest(make_manifest(), suite.model_copy(update={"classes": ("fox", "cat", "dog")}))
    assert res.success, res.lines()
    assert res.check("classes:unknown").status == "passed"
    assert res.check("classes:missing").status == "passed"
    assert res.skipped == 0


def test_suite_defaults_pass_on_digits_and_shapes_sized_manifests(suite):
    digits = make_manifest({str(d): n for d, n in zip(range(10), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180],
                                                        strict=True)}, side=32)
    assert len(digits) == 1797
    shapes = make_manifest({"circle": 190, "square": 214, "triangle": 196}, side=64)
    for df in (digits, shapes):
        res = validate_manifest(df, suite)
        assert res.success, res.lines()


# --------------------------------------------------------------------------- each expectation failing
def _set(idx: int, **values) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def f(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        for k, v in values.items():
            df.loc[idx, k] = v
        return df

    return f


def _copy_sha(src: int, dst: int) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def f(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        df.loc[dst, "sha256"] = df.loc[src, "sha256"]
        return df

    return f


CASES = {
    # id: (break the manifest, suite overrides, checks that must fail (exactly), text in the message)
    "missing column": (lambda df: df.drop(columns=["origin"]), {}, {"columns"}, "missing columns ['origin']"),
    "null label": (_set(4, label=None), {}, {"not_null:label"}, "1 of 36 rows unexpected"),
    "null path": (_set(4, path=None), {}, {"not_null:path"}, "1 of 36 rows unexpected"),
    "unknown label": (lambda df: df, {"classes": ("cat", "dog")}, {"classes:unknown"}, "'label': 'fox'"),
    "missing class": (lambda df: df, {"classes": ("cat", "dog", "fox", "owl")}, {"classes:missing"}, "missing ['owl']"),
    "too few per class": (lambda df: df.drop(index=range(24, 31)), {}, {"min_per_class"},
                          "{'count': 5, 'label': 'fox'}"),
    "imbalance": (lambda df: pd.concat([df, make_manifest({"ant": 70})], ignore_index=True), {},
                  {"max_imbalance"}, "observed 5.8333 (largest class 'ant': 70, smallest 'cat': 12)"),
    "one class only": (lambda df: df[df["label"] == "cat"], {}, {"min_classes"}, "observed 1"),
    "width too small": (_set(2, width=4), {}, {"size:width"}, "'width': 4"),
    "height too large": (_set(2, height=5000), {}, {"size:height"}, "'height': 5000"),
    "duplicate sha256": (_copy_sha(0, 3), {}, {"unique:sha256"}, "2 of 36 rows unexpected"),  # 0, 3: both train
    "same image in two splits": (_copy_sha(0, 1), {}, {"unique:sha256", "one_split_per_image"},
                                 "'splits': 'train,val'"),
    "bad sha256": (_set(5, sha256="not-a-sha"), {}, {"format:sha256"}, "'sha256': 'not-a-sha'"),
    "unknown split": (_set(5, split="holdout"), {}, {"values:split"}, "'split': 'holdout'"),
    "grey image": (_set(5, channels=1), {}, {"values:channels"}, "'channels': 1"),
    "float width": (lambda df: df.astype({"width": "float64"}), {}, {"type:width"}, "observed float64"),
    "empty manifest": (lambda df: df.iloc[0:0], {}, {"row_count", "min_classes", "max_imbalance"}, "observed 0"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_each_expectation_fails_on_its_own(suite, case):
    breaker, overrides, expected_failures, text = CASES[case]
    res = validate_manifest(breaker(make_manifest()).reset_index(drop=True), suite.model_copy(update=overrides))
    assert not res.success
    assert failed_names(res) == expected_failures, res.lines()
    assert res.failed == len(expected_failures) and res.evaluated == res.passed + res.failed
    messages = "\n".join(c.message for c in res.failed_checks)
    assert text in messages
    for c in res.failed_checks:
        assert "observed" in c.message and "expected" in c.message
        assert c.success is False and c.expected is not None
    # the one-screen summary lists every failed check
    summary = "\n".join(res.lines())
    assert summary.startswith("validate: FAILED")
    assert all(c.message in summary for c in res.failed_checks)


def test_failed_check_records_observed_and_expected_values(suite):
    res = validate_manifest(_set(2, width=4)(make_manifest()), suite)
    check = res.check("size:width")
    assert check.expectation == "expect_column_values_to_be_between"
    assert check.table == "manifest" and check.column == "width"
    assert check.expected == {"min": suite.min_side, "max": suite.max_side}
    assert check.observed["unexpected_count"] == 1 and check.observed["element_count"] == 36
    assert check.observed["examples"][0]["width"] == 4
    assert check.observed["examples"][0]["path"].startswith("data/raw/")


def test_missing_label_column_skips_dependent_checks(suite):
    res = validate_manifest(make_manifest().drop(columns=["label"]), suite)
    assert failed_names(res) == {"columns"}
    skipped = {c.name for c in res.checks if c.status == "skipped"}
    assert {"not_null:label", "type:label", "min_classes", "min_per_class", "max_imbalance"} <= skipped
    assert "no column 'label'" in res.check("min_per_class").message


def test_pandas3_string_columns_pass_type_checks(suite):
    df = make_manifest()
    assert str(df["label"].dtype) == "str"  # pandas 3 default string dtype
    res = validate_manifest(df.astype({"label": object}), suite)
    assert res.check("type:label").status == "passed"
    assert validate_manifest(df, suite).check("type:label").status == "passed"
    bad = df.astype({"label": object})
    bad.loc[0, "label"] = 7
    assert validate_manifest(bad, suite).check("type:label").status == "failed"


# --------------------------------------------------------------------------- data docs
@pytest.mark.parametrize("broken", [False, True], ids=["pass", "fail"])
def test_data_docs_are_built(suite, tmp_path, broken):
    df = make_manifest()
    if broken:
        df = _copy_sha(0, 1)(df)
    res = validate_manifest(df, suite, docs_dir=tmp_path / "docs")
    assert res.success is not broken
    assert res.docs_path == (tmp_path / "docs" / "index.html").resolve()
    index = res.docs_path.read_text()
    assert "<html" in index.lower()
    pages = sorted(p.relative_to(tmp_path / "docs").as_posix() for p in (tmp_path / "docs" / "validations").rglob("*.html"))
    assert len(pages) == 3  # one validation per table: manifest, class_counts, sha256_splits
    for table in ("manifest", "class_counts", "sha256_splits"):
        assert any(p.endswith(f"-{table}.html") for p in pages), pages
    assert "unexpected Exception occurred during data docs rendering" not in "".join(
        p.read_text() for p in (tmp_path / "docs").rglob("*.html")
    )


# --------------------------------------------------------------------------- run_validate (the stage)
def _project(tmp_path: Path, df: pd.DataFrame, suite_text: str | None = None) -> Path:
    root = tmp_path / "proj"
    (root / "configs" / "expectations").mkdir(parents=True)
    suite_path = root / "configs" / "expectations" / "manifest.yaml"
    if suite_text is None:
        shutil.copy(SUITE_FILE, suite_path)
    else:
        suite_path.write_text(suite_text)
    write_manifest(df, root / "data" / "processed" / "manifest.parquet")
    (root / "params.yaml").write_text(yaml.safe_dump({"validate": {"suite": "configs/expectations/manifest.yaml"}}))
    return root


def _summary(root: Path) -> dict:
    return json.loads((root / "artifacts" / "validate" / "summary.json").read_text())


def test_run_validate_passes_and_writes_summary_and_docs(tmp_path):
    root = _project(tmp_path, make_manifest())
    res = run_validate(Params(), root=root)
    assert res.success
    summary = _summary(root)
    assert summary["stage"] == "validate" and summary["success"] is True
    assert summary["failed"] == 0 and summary["passed"] == res.passed
    assert len(summary["checks"]) == len(res.checks)
    assert (root / "artifacts" / "validate" / "data_docs" / "index.html").is_file()
    assert res.summary_path == root / "artifacts" / "validate" / "summary.json"
    assert not (root / "gx").exists() and not (root / "great_expectations").exists()


def test_run_validate_raises_after_writing_summary_and_docs(tmp_path):
    root = _project(tmp_path, make_manifest({"cat": 12, "dog": 12, "fox": 3}))
    with pytest.raises(ValidationFailed) as excinfo:
        run_validate(Params(), root=root)
    msg = str(excinfo.value)
    assert "failed 1 of" in msg
    assert "images per class: observed 1 of 3 rows unexpected" in msg and "{'count': 3, 'label': 'fox'}" in msg
    assert ">= 10 images in every class" in msg
    docs_index = root / "artifacts" / "validate" / "data_docs" / "index.html"
    assert f"Data Docs: {docs_index}" in msg
    assert docs_index.is_file()
    summary = _summary(root)
    assert summary["success"] is False and summary["failed"] == 1
    [failed] = [c for c in summary["checks"] if c["status"] == "failed"]
    assert failed["name"] == "min_per_class"
    assert failed["observed"]["examples"] == [{"count": 3, "label": "fox"}]
    assert failed["expected"] == {"min": 10}


def test_run_validate_rebuilds_docs_instead_of_accumulating(tmp_path):
    root = _project(tmp_path, make_manifest())
    run_validate(Params(), root=root)
    run_validate(Params(), root=root)
    pages = list((root / "artifacts" / "validate" / "data_docs" / "validations").rglob("*.html"))
    assert len(pages) == 3


def test_run_validate_missing_manifest_is_a_data_error_with_summary(tmp_path):
    root = _project(tmp_path, make_manifest())
    (root / "data" / "processed" / "manifest.parquet").unlink()
    with pytest.raises(DataError, match="manifest not found"):
        run_validate(Params(), root=root)
    summary = _summary(root)
    assert summary["success"] is False and "manifest not found" in summary["error"]


# --------------------------------------------------------------------------- the suite file
def _suite_text(**changes) -> str:
    data = yaml.safe_load(SUITE_FILE.read_text())
    data.update(changes)
    return yaml.safe_dump(data)


def test_shipped_suite_file_loads_with_the_documented_defaults(suite):
    assert suite.required_columns == CORE_COLUMNS
    assert suite.classes is None
    assert suite == ManifestSuiteConfig()  # the file spells out the model defaults


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"min_per_clas": 3}, "min_per_clas: unknown key"),
        ({"min_per_class": "ten"}, "min_per_class: Input should be a valid integer"),
        ({"max_imbalance": 0.5}, "max_imbalance: Input should be greater than or equal to 1"),
        ({"classes": "cat"}, "classes: Input should be a valid tuple"),
        ({"min_side": 100, "max_side": 10}, "min_side (100) must be <= max_side (10)"),
    ],
    ids=["unknown key", "wrong type", "out of range", "not a list", "inconsistent"],
)
def test_bad_suite_file_is_a_config_error_naming_file_and_key(tmp_path, changes, needle):
    path = tmp_path / "suite.yaml"
    path.write_text(_suite_text(**changes))
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, ManifestSuiteConfig)
    msg = str(excinfo.value)
    assert str(path) in msg and needle in msg


def test_integer_class_names_are_read_as_labels(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(_suite_text(classes=[0, 1, 2]))
    assert load_config(path, ManifestSuiteConfig).classes == ("0", "1", "2")


def test_run_validate_bad_or_missing_suite_file(tmp_path):
    root = _project(tmp_path, make_manifest(), suite_text=_suite_text(nope=1))
    with pytest.raises(ConfigError, match=r"manifest\.yaml: invalid configuration[\s\S]*nope: unknown key"):
        run_validate(Params(), root=root)
    assert "nope: unknown key" in _summary(root)["error"]
    params = Params.model_validate({"validate": {"suite": "configs/expectations/missing.yaml"}})
    with pytest.raises(ConfigError, match=r"missing\.yaml: file not found"):
        run_validate(params, root=root)


# --------------------------------------------------------------------------- CLI
def test_cli_validate_exit_codes(tmp_path, monkeypatch):
    from cvplatform.cli import app

    runner = CliRunner()
    root = _project(tmp_path, make_manifest())
    monkeypatch.chdir(root)
    ok = runner.invoke(app, ["validate"])
    assert ok.exit_code == 0, ok.output
    assert "validate: OK" in ok.output

    write_manifest(_set(3, width=2)(make_manifest()), root / "data" / "processed" / "manifest.parquet")
    bad = runner.invoke(app, ["validate"])
    assert bad.exit_code == 3, bad.output
    assert "error:" in bad.output and "manifest.width" in bad.output and "between 8 and 4096" in bad.output
    assert _summary(root)["success"] is False
