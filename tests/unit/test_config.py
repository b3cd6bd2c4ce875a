"""params.yaml / configs loading: the real file loads; bad input is named precisely."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from cvplatform.config import Params, apply_overrides, load_config, load_params, params_hash
from cvplatform.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_repo_params_load_and_are_frozen():
    p = load_params(REPO / "params.yaml")
    assert isinstance(p, Params)
    assert p.ingest.source == "configs/sources/digits.yaml"
    with pytest.raises(ValidationError):  # frozen model
        p.ingest.workers = 3  # type: ignore[misc]


def test_every_params_key_has_a_type_comment():
    """Each leaf key in params.yaml carries a '# (type) meaning' comment."""
    for n, line in enumerate((REPO / "params.yaml").read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("- "):
            continue
        key, _, rest = stripped.partition(":")
        value = rest.split("#")[0].strip()
        if value:  # a leaf (sections have no value)
            assert "# (" in rest, f"params.yaml:{n}: key {key!r} lacks a '# (type) meaning' comment"


def test_overrides_apply_and_parse_yaml_values(tmp_path):
    p = load_params(REPO / "params.yaml", ["ingest.workers=1", "ingest.split.train=0.8", "ingest.split.val=0.1",
                                           "ingest.split.test=0.1", "ingest.shapes.classes=[circle, star]"])
    assert p.ingest.workers == 1
    assert p.ingest.split.train == pytest.approx(0.8)
    assert p.ingest.shapes.classes == ("circle", "star")


def test_unknown_key_names_file_key_and_allowed_keys(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("ingest:\n  wrkers: 2\n")
    with pytest.raises(ConfigError) as e:
        load_params(f)
    msg = str(e.value)
    assert str(f) in msg
    assert "ingest.wrkers: unknown key" in msg
    assert "workers" in msg  # the allowed keys are listed


def test_wrong_type_names_key_value_and_expected_type(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("ingest:\n  workers: two\n")
    with pytest.raises(ConfigError) as e:
        load_params(f)
    msg = str(e.value)
    assert "ingest.workers" in msg and "'two'" in msg and "integer" in msg


def test_override_wrong_type_is_reported_with_the_override():
    with pytest.raises(ConfigError) as e:
        load_params(REPO / "params.yaml", ["ingest.min_side=big"])
    assert "--set ingest.min_side=big" in str(e.value)
    assert "ingest.min_side" in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(line"):
        load_params(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(top)


def test_split_fractions_must_sum_to_one(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"ingest": {"split": {"train": 0.5, "val": 0.1, "test": 0.1}}}))
    with pytest.raises(ConfigError, match="ingest.split: .*sum to 1.0"):
        load_params(f)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_overrides({}, ["ingest.workers"], "params.yaml")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"ingest": {"workers": 2}}, ["ingest.workers.x=1"], "params.yaml")


def test_load_config_names_the_file(tmp_path):
    from cvplatform.config import IngestParams

    f = tmp_path / "c.yaml"
    f.write_text("nope: 1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: invalid configuration"):
        load_config(f, IngestParams)


def test_params_hash_is_stable_and_sensitive():
    a = load_params(REPO / "params.yaml")
    b = load_params(REPO / "params.yaml")
    c = load_params(REPO / "params.yaml", ["ingest.workers=1"])
    assert params_hash(a) == params_hash(b) != params_hash(c)


@pytest.mark.parametrize(("old", "new"), [
    ("train.manifest", "project.manifest"), ("evaluate.manifest", "project.manifest"),
    ("export.manifest", "project.manifest"), ("deploy.local.manifest", "project.manifest"),
    ("monitor.manifest", "project.manifest"), ("evaluate.registered_model", "registry.model_name"),
    ("serve.registered_model", "registry.model_name"), ("evaluate.champion_alias", "registry.champion_alias"),
])
def test_a_retired_key_names_its_replacement(tmp_path, old, new):
    """One key per fact: an old key in a user's params.yaml is an error naming the key that replaced it."""
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    node = data
    *parents, leaf = old.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = "x"
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=rf"{f}: {old} was replaced by {new}\b.*Move the value to the new key"):
        load_params(f)
    with pytest.raises(ConfigError, match=rf"{old} was replaced by {new}"):
        load_params(REPO / "params.yaml", [f"{old}=x"])


def test_one_key_per_fact_in_the_repository_params():
    """The manifest path, the registered model and the champion alias each appear once in params.yaml."""
    text = (REPO / "params.yaml").read_text()
    keys = [line.split(":")[0].strip() for line in text.splitlines() if ":" in line and not line.strip().startswith("#")]
    assert keys.count("manifest") == 1 and keys.count("model_name") == 1 and keys.count("champion_alias") == 1
    assert "registered_model" not in keys
    p = load_params(REPO / "params.yaml")
    assert p.project.manifest == "data/processed/manifest.parquet"


def test_cli_exits_2_on_a_retired_key(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cvplatform.cli import app

    monkeypatch.chdir(REPO)
    res = CliRunner().invoke(app, ["config", "--set", "evaluate.registered_model=other"])
    assert res.exit_code == 2
    assert "evaluate.registered_model was replaced by registry.model_name" in res.output
