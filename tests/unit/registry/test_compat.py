"""A version whose classes / input contract differ from the champion's becomes champion only with a recorded,
signed confirmation by its reviewer."""

from __future__ import annotations

import pytest

from cvplatform.registry import approve, promote, register_model, verify_version
from cvplatform.registry.errors import IncompatibleVersionError
from tests.unit.registry.project import new_training, onnx_model_bytes

THREE = ("cat", "dog", "fox")


@pytest.fixture
def champion_v1(registered, project, client):
    approve("cvplatform", 1, reviewer="bob", comment="ok", root=project.root)
    promote("cvplatform", 1, root=project.root)
    return project


def _register_three_class(project, params):
    """A retraining on a 3-class label set, exported, evaluated (gates passed) and registered."""
    from tests.unit.registry.project import write_evaluation, write_export

    run_id = new_training(project).train_run_id
    write_export(project.root, onnx_model_bytes(seed=5, classes=THREE), run_id, classes=THREE)
    write_evaluation(project.root)
    return register_model(params, root=project.root)


def test_an_incompatible_version_needs_a_confirmed_approval(champion_v1, params, client):
    res = _register_three_class(champion_v1, params)
    assert res.version == "2" and res.tags["model.class_names"] == '["cat", "dog", "fox"]'
    with pytest.raises(IncompatibleVersionError) as info:
        approve("cvplatform", 2, reviewer="bob", comment="more classes", root=champion_v1.root)
    msg = str(info.value)
    assert "class list: 2 classes ['cat', 'dog'] -> 3 classes ['cat', 'dog', 'fox']" in msg
    assert "--confirm-incompatible" in msg
    assert client.version("cvplatform", 2).tags["approval.status"] == "pending"

    ok = approve("cvplatform", 2, reviewer="bob", comment="clients updated for fox", root=champion_v1.root,
                 confirm_incompatible=True)
    assert ok.confirmed_changes and "class list" in ok.confirmed_changes[0]
    check = verify_version("cvplatform", 2, root=champion_v1.root)
    conf = check.last("approved").details["confirmed_incompatible"]
    assert check.ok and conf["champion_version"] == "1" and conf["differences"] == ok.confirmed_changes
    assert promote("cvplatform", 2, root=champion_v1.root).version == "2"


def test_an_incompatible_version_approved_without_a_champion_cannot_replace_one_later(registered, project, params,
                                                                                     client):
    res = _register_three_class(project, params)  # v2: 3 classes, while there is no champion yet
    approve("cvplatform", 2, reviewer="bob", comment="first of its kind", root=project.root)  # nothing to confirm
    approve("cvplatform", 1, reviewer="bob", comment="ok", root=project.root)
    promote("cvplatform", 1, root=project.root)  # the 2-class model becomes champion
    with pytest.raises(IncompatibleVersionError, match="did not confirm this change"):
        promote("cvplatform", res.version, root=project.root)
    assert str(client.model("cvplatform").aliases["champion"]) == "1"


def test_a_compatible_version_needs_no_confirmation(champion_v1, params, client):
    new_training(champion_v1, onnx_model_bytes(seed=9))
    register_model(params, root=champion_v1.root)
    approve("cvplatform", 2, reviewer="bob", comment="retrained", root=champion_v1.root)
    assert promote("cvplatform", 2, root=champion_v1.root).previous == "1"


def test_a_letterbox_version_differs_from_a_champion_registered_before_the_resize_key():
    """A champion's contract tag without ``resize`` was stretched: a letterbox replacement is a contract change; a
    stretch replacement is not."""
    from cvplatform.registry.compat import ModelFacts, differences

    old = ModelFacts("detection", ("cat",), {"input_size": [32, 32], "interpolation": "linear"})
    letterbox = ModelFacts("detection", ("cat",), {"input_size": [32, 32], "interpolation": "linear",
                                                   "resize": "letterbox", "pad_value": 114})
    stretch = ModelFacts("detection", ("cat",), {"input_size": [32, 32], "interpolation": "linear",
                                                 "resize": "stretch"})
    assert differences(letterbox, old) == ["input contract resize: stretch -> letterbox"]
    assert differences(stretch, old) == []
    assert differences(old, letterbox) == ["input contract resize: letterbox -> stretch"]
