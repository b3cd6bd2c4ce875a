"""Who may decide: Unicode look-alikes of the author are refused, the run's trigger user is an author too,
and a free-text reviewer is recorded as self-declared on the embedded store only."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cvplatform.cli import app
from cvplatform.errors import ConfigError
from cvplatform.registry import approve, register_model, reject
from cvplatform.registry.errors import (
    FourEyesError,
    IdentityError,
    InvalidReviewerError,
    ReviewerNotAllowedError,
)
from cvplatform.registry.identity import check_name, normalize_name, resolve_reviewer, same_person, skeleton

runner = CliRunner()

# the author is "alice" (tests/unit/registry/conftest.py); each of these is alice again
ALICE_LOOKALIKES = [
    "alice\u200b",                      # zero-width space
    "\u200dal\u00adice",                # zero-width joiner + soft hyphen (both Cf)
    "ＡＬＩＣＥ",                        # fullwidth
    "ALICE",
    " alice ",
    "\u0430\u04cf\u0456\u0441\u0435",   # all-Cyrillic look-alike: а ӏ і с е
]


def _status(client) -> str:
    return client.version("cvplatform", 1).tags["approval.status"]


@pytest.mark.parametrize("name", ALICE_LOOKALIKES)
def test_lookalikes_of_the_author_are_the_author(registered, project, client, name):
    with pytest.raises(FourEyesError, match="four-eyes|Four-eyes"):
        approve("cvplatform", 1, reviewer=name, comment="lgtm", root=project.root)
    assert _status(client) == "pending"


@pytest.mark.parametrize("name", ["\u0430lice", "m\u0430llory", "b\u03bfb"])  # Cyrillic а, Greek ο mixed into Latin
def test_mixed_script_names_are_refused(registered, project, client, name):
    with pytest.raises(InvalidReviewerError, match="mixes scripts"):
        approve("cvplatform", 1, reviewer=name, comment="lgtm", root=project.root)
    assert _status(client) == "pending"


def test_refusals_exit_3_on_the_cli(registered, project, monkeypatch):
    monkeypatch.chdir(project.root)
    for name in ("alice\u200b", "\u0430lice"):
        res = runner.invoke(app, ["registry", "approve", "cvplatform", "1", "--reviewer", name, "--comment", "x"])
        assert res.exit_code == 3, res.output


def test_recorded_name_is_the_visible_one(registered, project, client):
    res = approve("cvplatform", 1, reviewer="Bob\u200b", comment="ok", root=project.root)
    assert res.reviewer == "Bob" and client.version("cvplatform", 1).tags["approval.reviewer"] == "Bob"
    assert res.identity.source == "self-declared" and res.identity.verified is False


def test_reviewer_list_compares_normalised_names(registered, project, make_params):
    params = make_params("registry.reviewers=[carol]")
    with pytest.raises(ReviewerNotAllowedError):
        approve("cvplatform", 1, reviewer="car0l", comment="ok", params=params, root=project.root)
    assert approve("cvplatform", 1, reviewer="ＣＡＲＯＬ", comment="ok", params=params, root=project.root).reviewer == "CAROL"


def test_mixed_script_reviewer_list_is_a_config_error(make_params):
    with pytest.raises(ConfigError, match="mixes scripts"):
        make_params("registry.reviewers=[c\u0430rol]")


def test_the_user_who_triggered_the_run_cannot_approve_it(project, params, client):
    register_model(params, root=project.root, triggered_by="bob")
    assert client.version("cvplatform", 1).tags["lineage.triggered_by"] == "bob"
    with pytest.raises(FourEyesError, match="triggered the run"):
        approve("cvplatform", 1, reviewer="BOB", comment="mine", root=project.root)
    with pytest.raises(FourEyesError):
        reject("cvplatform", 1, reviewer="bob", comment="mine", root=project.root)
    assert approve("cvplatform", 1, reviewer="carol", comment="ok", root=project.root).status == "approved"


def test_the_author_is_the_signed_one_not_the_tag(registered, project, client):
    client.mlflow.set_model_version_tag("cvplatform", "1", "author", "someone-else")  # hand edit
    with pytest.raises(FourEyesError):
        approve("cvplatform", 1, reviewer="alice", comment="mine after all", root=project.root)


def test_an_unauthenticated_non_embedded_store_cannot_establish_identity(client):
    from cvplatform.registry.client import RegistryClient

    c = RegistryClient("postgresql+psycopg2://postgres@127.0.0.1:1/nodb")
    with pytest.raises(IdentityError, match="neither the embedded local store"):
        resolve_reviewer(c, "bob")
    assert resolve_reviewer(client, "bob").source == "self-declared"
    airflow = resolve_reviewer(client, None, airflow_user="carol")
    assert (airflow.name, airflow.source, airflow.verified) == ("carol", "airflow", False)


def test_name_helpers():
    assert normalize_name("Ｍａｌｌｏｒｙ\u200b") == "mallory"
    assert skeleton("\u0440\u0430\u0443\u0440\u0430\u04cf") == "paypal"
    assert same_person("bob", "BOB") and not same_person("bob", "rob") and not same_person(None, "bob")
    assert check_name("José García") == "José García"  # accents are Latin: not mixed
    assert check_name("山田太郎") == "山田太郎" and check_name("やまだ太郎") == "やまだ太郎"
    with pytest.raises(InvalidReviewerError, match="empty"):
        check_name("\u200b\u200c")
