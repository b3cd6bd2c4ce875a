"""Airflow fixtures: a throw-away AIRFLOW_HOME with a migrated SQLite metadata DB."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def make_project_copy(dest: Path) -> Path:
    """A minimal project root (params.yaml + configs) the DAG's tasks run in."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "params.yaml", dest / "params.yaml")
    shutil.copytree(REPO / "configs", dest / "configs")
    return dest


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }
    os.environ.update(env)
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        check=True, capture_output=True, env={**os.environ, **env}, timeout=300,
    )
    return home
