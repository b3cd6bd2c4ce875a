"""cv_retrain DAG: imports cleanly, wires the expected graph, parses light, and runs with dag.test()."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dags.conftest import REPO, make_project_copy

EXPECTED_EDGES = {"ingest": {"validate"}, "validate": set()}
HEAVY = ("torch", "mlflow", "great_expectations", "onnxruntime", "albumentations", "pytorch_lightning",
         "cvplatform.data.ingest", "cv2", "pandas")


def _dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(str(REPO / "dags"))


def test_dagbag_has_no_import_errors_and_expected_graph(airflow_home):
    bag = _dagbag()
    assert bag.import_errors == {}
    dag = bag.dags["cv_retrain"]
    edges = {tid: set(t.downstream_task_ids) for tid, t in dag.task_dict.items()}
    assert edges == EXPECTED_EDGES
    assert dag.max_active_runs == 1
    assert set(dag.params.keys()) >= {"source", "params_file", "overrides"}


def test_dag_file_imports_nothing_heavy_at_parse_time(airflow_home):
    code = (
        "import sys, runpy; runpy.run_path(sys.argv[1]);"
        f"heavy={HEAVY!r};"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "dags" / "cv_retrain.py")],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout.strip().splitlines()[-1:]
    assert out in ([], [""]), f"heavy modules imported at parse time: {out}"


@pytest.mark.e2e
def test_dag_test_runs_ingest_and_validate_on_tiny_data(airflow_home, tmp_path, monkeypatch):
    project = make_project_copy(tmp_path / "project")
    monkeypatch.setenv("CVPLATFORM_ROOT", str(project))
    bag = _dagbag()
    dag = bag.dags["cv_retrain"]
    run = dag.test(
        run_conf={
            "source": "shapes",
            "overrides": ["ingest.shapes.count=90", "ingest.workers=1"],
        }
    )
    assert run.state == "success", run.state
    summary = json.loads((project / "artifacts/ingest/summary.json").read_text())
    assert summary["accepted"] > 0
    assert summary["seen"] == summary["accepted"] + summary["quarantined"] + summary["duplicates"]
    assert (project / "data/processed/manifest.parquet").exists()
    assert json.loads((project / "artifacts/validate/summary.json").read_text())["success"] is True
