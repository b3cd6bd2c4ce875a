"""Model loading for serving (contract from ONNX metadata, layout checks, sha256 verification) and the
manager's atomic swaps."""

from __future__ import annotations

import asyncio

import onnx
import pytest

from cvplatform.errors import CVPlatformError, ModelError, RegistryError
from cvplatform.preprocess import preprocess
from cvplatform.serving.metrics import ServingMetrics, StatsBook
from cvplatform.serving.models import (
    FileSource,
    ModelManager,
    RegistrySource,
    ServingError,
    load_onnx,
)
from cvplatform.serving.schemas import ServingConfig
from cvplatform.tasks import get_task
from tests.fixtures.serving_models import build_model, colour_image, get_alias, set_alias, version_tags


def _save(tmp_path, model, name="m.onnx"):
    p = tmp_path / name
    p.write_bytes(model.SerializeToString())
    return p


def test_load_onnx_reads_the_contract_and_predicts(tmp_path):
    m = load_onnx(_save(tmp_path, build_model()), name="m", version="1")
    assert m.contract.input_size == (16, 16) and m.class_names == ("red", "green", "blue")
    assert (m.input_name, m.output_name) == ("input", "logits")
    x = preprocess([colour_image(i) for i in range(3)], m.contract)
    logits = m.forward(x)["logits"]  # forward returns every output by name
    assert logits.shape == (3, 3)
    classes, confidences = get_task().decode_top({"logits": logits}, m.class_names)
    assert list(classes) == ["red", "green", "blue"] and ((confidences > 1 / 3) & (confidences <= 1)).all()
    m.warmup()


def test_models_the_server_cannot_batch_or_explain_are_refused(tmp_path):
    no_meta = build_model()
    del no_meta.metadata_props[:]
    with pytest.raises(ModelError, match="class_names"):
        load_onnx(_save(tmp_path, no_meta), name="m", version="1")
    fixed = build_model()
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    with pytest.raises(ModelError, match="fixed batch size 4"):
        load_onnx(_save(tmp_path, fixed), name="m", version="1")
    four = build_model()
    onnx.helper.set_model_props(four, {**{p.key: p.value for p in four.metadata_props},
                                       "class_names": '["a", "b", "c", "d"]'})
    with pytest.raises(ModelError, match=r"expected \(N, 4\)"):
        load_onnx(_save(tmp_path, four), name="m", version="1")
    with pytest.raises(ModelError, match="not found"):
        load_onnx(tmp_path / "missing.onnx", name="m", version="1")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ModelError, match="cannot load"):
        load_onnx(tmp_path / "junk.onnx", name="m", version="1")


def test_a_model_that_breaks_on_real_images_raises_model_error(tmp_path):
    m = load_onnx(_save(tmp_path, build_model("erroring")), name="m", version="3")
    m.warmup()  # the black warm-up image passes ...
    with pytest.raises(ModelError, match=r"returned shape \(1, 6\)"):  # ... real images do not
        m.forward(preprocess([colour_image(0)], m.contract))


def test_file_source_serves_one_file_without_aliases(tmp_path):
    src = FileSource(_save(tmp_path, build_model()), model_name="m")
    assert src.resolve("champion") == "local" and src.resolve("canary") is None
    assert src.load("local").sha256
    with pytest.raises(ServingError) as e:
        src.set_alias("canary", "2")
    assert e.value.status == 409 and e.value.code == "no_registry"


def test_registry_source_resolves_loads_verified_and_refuses_tampered_artifacts(registry):
    src = RegistrySource(registry.name, root=registry.root)
    v = registry.versions
    assert src.resolve("champion") == v["champion"] and src.resolve("canary") is None
    m = src.load(v["good"])
    assert m.version == v["good"] and m.sha256 == version_tags(registry.root, registry.name, v["good"])["artifact.sha256"]
    with pytest.raises(RegistryError, match="sha256"):
        src.load(v["tampered"])
    with pytest.raises(CVPlatformError):
        src.load(v["broken"])
    with pytest.raises(RegistryError):
        src.load("999")
    # the serving session options apply to registry-verified models too
    tuned = RegistrySource(registry.name, root=registry.root, intra_op_threads=1, allow_spinning=False).load(v["good"])
    opts = tuned.session.get_session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def _manager(registry, **cfg):
    config = ServingConfig.model_validate({"models": {"poll_interval_s": 0}, **cfg})
    src = RegistrySource(registry.name, root=registry.root)
    return ModelManager(src, config, ServingMetrics(), StatsBook())


def test_manager_swaps_atomically_under_load_and_never_serves_a_broken_canary(registry):
    v = registry.versions

    async def main():
        mgr = _manager(registry)
        await mgr.start()
        assert mgr.champion.version == v["champion"] and mgr.canary is None
        x = preprocess([colour_image(i % 3, seed=i) for i in range(4)], mgr.champion.model.contract)
        old = mgr.champion

        async def one(i):
            h = mgr.champion  # what a request does: read the slot once, use that handle
            await asyncio.sleep(0.001 * (i % 5))
            outputs, _ = await h.infer(x[i % 4 : i % 4 + 1])  # keyed by the task's output names
            return h.version, int(outputs["logits"].argmax())

        async def flip():
            await asyncio.to_thread(set_alias, registry.root, registry.name, "champion", v["good"])
            return await mgr.refresh()

        results, changes = await asyncio.gather(asyncio.gather(*(one(i) for i in range(200))), flip())
        assert changes["champion"]["action"] == "loaded" and mgr.champion.version == v["good"]
        late, _ = await old.infer(x[:1])  # a request still holding the old handle is answered
        assert late["logits"].shape == (1, 3)
        assert {r[1] for r in results} <= {0, 1, 2} and len(results) == 200
        # a canary that fails to load never enters its slot
        with pytest.raises(ServingError) as e:
            await mgr.set_canary(v["broken"], share=1.0)
        assert e.value.code == "canary_load_failed" and mgr.canary is None
        with pytest.raises(ServingError) as e:
            await mgr.set_traffic(canary_share=0.5)
        assert e.value.code == "no_canary"
        # ... nor when it arrives through the registry alias
        await asyncio.to_thread(set_alias, registry.root, registry.name, "canary", v["tampered"])
        changes = await mgr.refresh()
        assert changes["canary"]["action"] == "load_failed" and mgr.canary is None
        assert "sha256" in mgr.errors["canary"]
        await mgr.stop()
        await asyncio.sleep(0)
        assert old.batcher.closed

    asyncio.run(main())


def test_manager_canary_lifecycle_tags_the_registry(registry):
    v = registry.versions
    root, name = registry.root, registry.name

    async def main():
        mgr = _manager(registry)
        await mgr.start()
        st = await mgr.set_canary(v["permuted"], share=0.25, shadow=True)
        assert st["canary"]["version"] == v["permuted"] and st["traffic"] == {
            "canary_share": 0.25, "shadow": True, "shadow_share": 1.0}
        assert get_alias(root, name, "canary") == v["permuted"]
        st = await mgr.abort_canary("disagrees with the champion")
        assert st["canary"]["loaded"] is False and st["traffic"]["canary_share"] == 0.0
        assert get_alias(root, name, "canary") is None
        tags = version_tags(root, name, v["permuted"])
        assert tags["deploy.status"] == "rolled_back" and tags["deploy.rollback_reason"] == "disagrees with the champion"
        await mgr.set_canary(v["good"], share=0.5)
        st = await mgr.promote(v["good"], "passed")
        assert st["champion"]["version"] == v["good"] and st["previous_champion"] == v["champion"]
        assert st["canary"]["loaded"] is False and get_alias(root, name, "champion") == v["good"]
        assert version_tags(root, name, v["good"])["champion.previous"] == v["champion"]
        st = await mgr.rollback("back")
        assert st["champion"]["version"] == v["champion"] and get_alias(root, name, "champion") == v["champion"]
        await mgr.stop()

    asyncio.run(main())
