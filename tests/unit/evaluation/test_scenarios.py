"""Suite files: validation errors naming file/scenario/key, expansion, slice filters, curated lists."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from cvplatform.errors import ConfigError, DataError
from cvplatform.evaluation.corruptions import CORRUPTIONS
from cvplatform.evaluation.gates import ScenarioGate
from cvplatform.evaluation.scenarios import (
    Condition,
    Scenario,
    ScenarioSuite,
    load_suite,
    read_hashes,
    select_curated,
    select_slice,
)

REPO = Path(__file__).resolve().parents[3]
CLEAN = {"name": "clean", "kind": "clean"}


def write_suite(tmp_path: Path, data) -> Path:
    p = tmp_path / "suite.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


@pytest.mark.parametrize("name", ["default", "shapes"])
def test_shipped_suites_load(name):
    suite = load_suite(REPO / "configs" / "scenarios" / f"{name}.yaml")
    expanded = suite.expand()
    assert expanded[0].kind == "clean" and expanded[0].gate.level == "must_pass"
    assert len({s.name for s in expanded}) == len(expanded)
    if name == "default":
        got = {(s.corruption, s.severity) for s in expanded if s.kind == "corruption"}
        assert got == {(c, s) for c in CORRUPTIONS for s in range(1, 6)}
    else:
        slices = [s for s in expanded if s.kind == "slice"]
        assert {c.column for s in slices for c in s.where} == {"lighting", "camera", "background"}


def test_expansion_defaults_and_overrides():
    suite = ScenarioSuite.model_validate({
        "defaults": {"level": "warn", "max_drop": 0.05, "min_accuracy": 0.4},
        "scenarios": [
            {**CLEAN, "level": "must_pass", "min_accuracy": 0.9, "max_ece": 0.1, "warn_only": ["max_ece"]},
            {"kind": "corruption", "corruption": "fog", "severities": [2, 4]},
            {"kind": "corruption", "corruption": "jpeg", "name": "jpg", "min_accuracy": None},
            {"name": "cur", "kind": "curated", "hashes_file": "x.txt"},
        ],
    })
    sc = {s.name: s for s in suite.expand()}
    assert list(sc) == ["clean", "fog_s2", "fog_s4", "jpg_s1", "jpg_s2", "jpg_s3", "jpg_s4", "jpg_s5", "cur"]
    assert sc["clean"].gate == ScenarioGate(level="must_pass", min_accuracy=0.9, max_ece=0.1, max_drop=0.05,
                                            warn_only=("max_ece",))
    assert sc["fog_s4"].gate.min_accuracy == 0.4 and sc["fog_s4"].severity == 4
    assert sc["jpg_s3"].gate.min_accuracy is None  # explicit null switches a default off
    assert sc["cur"].gate.min_accuracy == 1.0  # curated: every listed image must be right
    pol = suite.policy(seed=3, n_bootstrap=50, confidence=0.9)
    assert list(pol.scenarios) == list(sc) and pol.seed == 3 and pol.n_bootstrap == 50


def test_a_curated_scenario_gets_the_tasks_floors(tmp_path):
    """Curated lists take their default floor from the task: classification's min_accuracy 1.0, another
    task's own keys (here the brightness task's max_mae) — never classification's."""
    from tests.fixtures.tasks.brightness import BrightnessTask

    class StrictBrightness(BrightnessTask):
        curated_defaults = {"max_mae": 0.01}

    suite = {"scenarios": [{"name": "clean", "kind": "clean"},
                           {"name": "cur", "kind": "curated", "hashes_file": "x.txt"},
                           {"name": "own", "kind": "curated", "hashes_file": "x.txt", "max_mae": 0.2}]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    gates = {s.name: s.gate for s in load_suite(path, StrictBrightness()).expand()}
    assert gates["cur"].thresholds()["max_mae"] == 0.01 and gates["own"].thresholds()["max_mae"] == 0.2
    assert gates["cur"].min_accuracy is None and "max_mae" not in gates["clean"].thresholds()
    suite["scenarios"] = suite["scenarios"][:2]
    path.write_text(yaml.safe_dump(suite))
    assert {s.name: s.gate.min_accuracy for s in load_suite(path).expand()} == {"clean": None, "cur": 1.0}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({**CLEAN, "min_acuracy": 0.5}, r"scenarios\[1\] \(clean\): min_acuracy: unknown key; allowed keys: .*min_accuracy"),
        ({"kind": "corruption", "corruption": "fogg"}, r"scenarios\[1\] \(fogg\): .*unknown corruption 'fogg'; choose one of"),
        ({"kind": "corruption", "corruption": "fog", "severities": [0, 6]},
         r"scenarios\[1\] \(fog\): severities: every severity must be an integer 1..5 \(bad: \[0, 6\]\)"),
        ({"kind": "corruption", "corruption": "fog", "severities": ["high"]}, r"scenarios\[1\] \(fog\): severities.0: "),
        ({"name": "s", "kind": "slice", "where": [{"column": "a", "op": "in", "value": "b"}]},
         r"scenarios\[1\] \(s\): where.0: op 'in' needs a list value"),
        ({"name": "s", "kind": "slice", "where": [{"column": "a", "op": "~=", "value": "b"}]},
         r"scenarios\[1\] \(s\): where.0.op: "),
        ({"name": "s", "kind": "slice", "where": [{"column": "a", "value": "b", "col": 1}]},
         r"scenarios\[1\] \(s\): where.0.col: unknown key; allowed keys: column, op, value"),
        ({"name": "s", "kind": "slice", "corruption": "fog", "where": [{"column": "a", "value": "b"}]},
         r"key\(s\) \['corruption'\] do not apply to kind 'slice'"),
        ({"name": "s", "kind": "slice"}, r"scenarios\[1\] \(s\): kind 'slice': 'where' needs at least one condition"),
        ({"name": "c", "kind": "curated"}, r"'hashes_file' is required"),
        ({"kind": "clean"}, r"'name' is required"),
        ({**CLEAN, "name": "bad name!"}, r"scenarios\[1\] \(bad name!\): name: "),
        ({"name": "x", "kind": "clean", "min_accuracy": "high"}, r"scenarios\[1\] \(x\): min_accuracy: .*got 'high'"),
        ({"name": "x", "kind": "clean", "level": "must"}, r"scenarios\[1\] \(x\): level: "),
        ({"name": "x", "kind": "clean", "warn_only": ["min_acc"]}, r"scenarios\[1\] \(x\): warn_only.0: "),
        ({"name": "x", "kind": "video"}, r"scenarios\[1\] \(x\): kind: "),
    ],
)
def test_bad_entries_name_the_file_scenario_and_key(tmp_path, entry, message):
    path = write_suite(tmp_path, {"scenarios": [CLEAN, entry]})
    with pytest.raises(ConfigError, match=message) as info:
        load_suite(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"scenarios": [{"kind": "corruption", "corruption": "fog"}]}, "needs a 'clean' scenario"),
        ({"scenarios": []}, "must list at least one scenario"),
        ({"scenarios": [CLEAN, CLEAN]}, "scenario name 'clean' is used twice"),
        ({"scenarios": [CLEAN, {"kind": "corruption", "corruption": "fog", "severities": [1]},
                        {"kind": "corruption", "corruption": "fog", "severities": [1, 2]}]},
         "scenario name 'fog_s1' is used twice"),
        ({"scenarios": [CLEAN], "min_pass_rate": 2}, r"min_pass_rate: .*got 2"),
        ({"scenarios": [CLEAN], "nmae": "x"}, r"nmae: unknown key; allowed keys under '<top level>'"),
        ({"scenarios": [CLEAN], "defaults": {"max_dorp": 0.1}}, r"defaults.max_dorp: unknown key"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_bad_suites(tmp_path, data, message):
    with pytest.raises(ConfigError, match=message):
        load_suite(write_suite(tmp_path, data))


def test_missing_suite_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_suite(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------- slices
DF = pd.DataFrame({
    "sha256": list("123456"),
    "lighting": ["dim", "dim", "bright", "normal", None, "dim"],
    "camera": ["a", "b", "b", "c", "a", "c"],
    "width": [32, 32, 64, 64, 32, 32],
})


def sl(*conds: dict) -> Scenario:
    return Scenario("s", "slice", ScenarioGate(), where=tuple(Condition(**c) for c in conds), entry=4)


@pytest.mark.parametrize(
    ("conds", "expected"),
    [
        ([{"column": "lighting", "value": "dim"}], ["1", "2", "6"]),
        ([{"column": "lighting", "op": "!=", "value": "dim"}], ["3", "4", "5"]),  # null is "not dim"
        ([{"column": "camera", "op": "in", "value": ["a", "c"]}], ["1", "4", "5", "6"]),
        ([{"column": "camera", "op": "not in", "value": ["a", "c"]}], ["2", "3"]),
        ([{"column": "lighting", "value": "dim"}, {"column": "camera", "op": "!=", "value": "b"}], ["1", "6"]),
        ([{"column": "width", "value": 64}], ["3", "4"]),  # compared as strings
        ([{"column": "lighting", "value": "dark"}], []),
    ],
)
def test_slice_filters(conds, expected):
    assert select_slice(DF, sl(*conds))["sha256"].tolist() == expected


def test_slice_filter_is_not_eval():
    hostile = {"column": "camera", "value": "__import__('os').system('echo pwned')"}
    assert select_slice(DF, sl(hostile)).empty


def test_slice_on_missing_column_names_scenario_and_key():
    with pytest.raises(ConfigError) as info:
        select_slice(DF, sl({"column": "lighting", "value": "dim"}, {"column": "weather", "value": "rain"}),
                     "suite.yaml")
    msg = str(info.value)
    assert "suite.yaml: scenario 's' (scenarios[4].where[1].column): column 'weather' is not in the manifest" in msg
    assert "lighting" in msg and "camera" in msg


# --------------------------------------------------------------------------- curated
def test_read_hashes_comments_case_and_duplicates(tmp_path):
    a, b = "a" * 64, "B" * 64
    p = tmp_path / "list.txt"
    p.write_text(f"# hard cases\n\n{a}  the blurry one\n{b}\n{a}\n")
    assert read_hashes(p) == [a, b.lower()]


def test_read_hashes_errors(tmp_path):
    p = tmp_path / "list.txt"
    p.write_text("a" * 64 + "\nnot-a-hash\n")
    with pytest.raises(ConfigError, match=r"list.txt:2: scenario 'mnf': 'not-a-hash' is not a sha256"):
        read_hashes(p, scenario="mnf")
    with pytest.raises(ConfigError, match="curated list of scenario 'mnf' not found"):
        read_hashes(tmp_path / "missing.txt", scenario="mnf")


def test_select_curated_keeps_list_order_and_reports_unknown_hashes(tmp_path):
    manifest = pd.DataFrame({"sha256": ["a" * 64, "b" * 64, "c" * 64], "label": ["x", "y", "z"]})
    sc = Scenario("mnf", "curated", ScenarioGate(), hashes_file="l.txt")
    rows = select_curated(manifest, ["c" * 64, "a" * 64], sc, tmp_path / "l.txt")
    assert rows["label"].tolist() == ["z", "x"]
    with pytest.raises(DataError, match=r"l.txt: scenario 'mnf': 1 listed image\(s\) are not in the manifest \(dddddddddddd"):
        select_curated(manifest, ["a" * 64, "d" * 64], sc, tmp_path / "l.txt")


def test_the_shipped_detection_suite_loads_for_the_detection_task_only():
    from cvplatform.tasks import get_task

    path = REPO / "configs" / "scenarios" / "detection.yaml"
    suite = load_suite(path, get_task("detection"))
    expanded = suite.expand()
    assert expanded[0].kind == "clean" and expanded[0].gate.thresholds() == {"min_map50": 0.5, "min_map": 0.25}
    assert suite.policy().robustness == {"min_rpc": 0.5}
    mild = [s for s in expanded if s.kind == "corruption" and s.severity in (1, 2) and s.corruption != "contrast"]
    assert mild and all(s.gate.level == "must_pass" for s in mild)
    with pytest.raises(ConfigError, match="min_map50: unknown key"):
        load_suite(path)  # a classification project cannot use it
