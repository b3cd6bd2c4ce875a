"""configs/deploy/serving.yaml: the real file loads; bad keys and values are named; the admin token source."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvplatform.config import load_params
from cvplatform.errors import ConfigError
from cvplatform.serving.app import registered_model_name
from cvplatform.serving.schemas import ServingConfig, load_serving_config

REPO = Path(__file__).resolve().parents[3]


def test_the_real_serving_config_loads():
    cfg = load_serving_config(REPO / "configs" / "deploy" / "serving.yaml")
    assert cfg.batching.max_batch_size >= 1 and cfg.models.canary_alias == "canary"
    assert cfg.traffic.canary_share == 0.0 and cfg.admin.token_env == "CVPLATFORM_ADMIN_TOKEN"
    assert load_serving_config(None) == ServingConfig()


def test_unknown_key_and_bad_value_name_file_and_key(tmp_path):
    p = tmp_path / "serving.yaml"
    p.write_text("batching:\n  max_batch_sise: 8\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_serving_config(p)
    assert str(p) in str(e.value) and "batching.max_batch_sise" in str(e.value) and "max_batch_size" in str(e.value)
    p.write_text("traffic:\n  canary_share: 1.5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="traffic.canary_share"):
        load_serving_config(p)


def test_admin_token_env_wins_over_config(monkeypatch):
    from_config, from_env = "from-config-" + "c" * 32, "from-env-" + "e" * 32
    cfg = ServingConfig.model_validate({"admin": {"token": from_config}})
    monkeypatch.delenv("CVPLATFORM_ADMIN_TOKEN", raising=False)
    assert cfg.admin_token() == from_config
    monkeypatch.setenv("CVPLATFORM_ADMIN_TOKEN", from_env)
    assert cfg.admin_token() == from_env
    monkeypatch.delenv("CVPLATFORM_ADMIN_TOKEN")
    assert ServingConfig().admin_token() is None  # no token anywhere: admin API disabled


def test_serve_and_deploy_params():
    params = load_params(REPO / "params.yaml")
    assert params.serve.config == "configs/deploy/serving.yaml" and params.deploy.policy.endswith("canary.yaml")
    assert registered_model_name(params) == params.registry.model_name
    with pytest.raises(ValueError, match="registry.model_name"):  # one key per setting: params.yaml's
        ServingConfig.model_validate({"models": {"registered_model": "x"}})
    with pytest.raises(ConfigError, match="serve.port"):
        load_params(REPO / "params.yaml", ["serve.port=70000"])


@pytest.mark.parametrize("token", ["change-me", "too-short-1234"])
def test_a_weak_admin_token_in_the_config_file_is_a_config_error(tmp_path, token):
    p = tmp_path / "serving.yaml"
    p.write_text(f"admin:\n  token: {token}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="admin.token") as info:
        load_serving_config(p)
    assert str(p) in str(info.value) and "secrets.token_urlsafe(32)" in str(info.value)


def test_the_shipped_config_documents_every_limit():
    from cvplatform.serving.schemas import LimitsConfig

    text = (REPO / "configs" / "deploy" / "serving.yaml").read_text(encoding="utf-8")
    for key in LimitsConfig.model_fields:
        line = next((ln for ln in text.splitlines() if ln.strip().startswith(f"{key}:")), None)
        assert line is not None and "# (" in line, key
