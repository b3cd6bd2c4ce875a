"""The real Open Inference Protocol v2 client, ``tritonclient.http``, against ``cvplatform serve``.

tritonclient sends FP32 inputs as JSON ``data`` (``binary_data=False``) or as binary tensor data
(its default), and asks for outputs as binary data by default (``binary_data_output`` when it
names no output, ``binary_data`` per requested output). Every combination must give the same
answer, equal to the offline onnxruntime session's.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient  # the dev extras' tritonclient[http]

from cvplatform.preprocess import PreprocessContract
from cvplatform.serving.local import LocalServer
from cvplatform.tasks.classification import softmax
from tests.fixtures.serving_models import SIZE, make_serving_project

pytestmark = pytest.mark.integration

MODEL = "triton"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("CVPLATFORM_ADMIN_TOKEN", raising=False)
    root, _, paths = make_serving_project(tmp_path_factory.mktemp("triton"), MODEL,
                                          {"models.poll_interval_s": 0, "models.intra_op_threads": 1,
                                           "batching.max_wait_ms": 5}, kinds=("champion",))
    with LocalServer(root) as srv:
        yield srv, paths["champion"]
    mp.undo()


def _infer(client, x: np.ndarray, binary_in: bool, binary_out: bool | None):
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    outputs = None  # tritonclient then asks for every output as binary data (binary_data_output)
    if binary_out is not None:
        outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary_out),
                   httpclient.InferRequestedOutput("label", binary_data=binary_out)]
    return client.infer(MODEL, [inp], outputs=outputs)


def test_tritonclient_json_and_binary_tensors_give_the_offline_answer(served):
    srv, model_path = served
    x = np.random.default_rng(7).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    want = softmax(sess.run(None, {"input": x})[0])
    client = httpclient.InferenceServerClient(url=srv.url.removeprefix("http://"))
    try:
        assert client.is_model_ready(MODEL)
        meta = client.get_model_metadata(MODEL)
        assert [o["name"] for o in meta["outputs"]] == ["probabilities", "label"]
        results = {}
        for binary_in in (False, True):
            for binary_out in (False, True, None):
                res = _infer(client, x, binary_in, binary_out)
                body = res.get_response()
                assert {o["name"]: "binary_data_size" in (o.get("parameters") or {}) for o in body["outputs"]} == {
                    "probabilities": binary_out is not False, "label": binary_out is not False}, body
                results[binary_in, binary_out] = (res.as_numpy("probabilities"), res.as_numpy("label"))
    finally:
        client.close()
    names = PreprocessContract.from_metadata(sess.get_modelmeta().custom_metadata_map).class_names
    labels = [names[i] for i in want.argmax(axis=1)]
    for (binary_in, binary_out), (probs, label) in results.items():
        assert probs.dtype == np.float32 and probs.shape == want.shape, (binary_in, binary_out)
        np.testing.assert_allclose(probs, want, atol=1e-6, rtol=0)
        np.testing.assert_array_equal(probs, results[False, False][0])  # JSON in/out == binary in/out
        got = [v.decode() if isinstance(v, bytes) else str(v) for v in label.ravel()]
        assert got == labels, (binary_in, binary_out)
