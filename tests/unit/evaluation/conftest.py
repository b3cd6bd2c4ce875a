"""Helpers for the evaluation tests: tiny real models exported to ONNX with the preprocessing contract."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from cvplatform.preprocess import PreprocessContract

CLASSES = ("red", "green", "blue")  # the classes of tests/fixtures/tiny_dataset.py, in palette order


def colour_model(scale: float = 10.0, perm: Sequence[int] | None = None, noise: float = 0.0, seed: int = 0):
    """A real torch classifier for the tiny dataset: logits = scale * mean(R, G, B) (normalised).

    ``perm`` reorders the output rows (e.g. ``(1, 0, 2)`` swaps red and green: a degraded model);
    ``noise`` perturbs the weights with Gaussian noise.
    """
    import torch
    from torch import nn

    lin = nn.Linear(3, 3)
    with torch.no_grad():
        w = torch.eye(3) * scale
        if perm is not None:
            w = w[list(perm)]
        if noise:
            g = torch.Generator().manual_seed(seed)
            w = w + noise * torch.randn(3, 3, generator=g)
        lin.weight.copy_(w)
        lin.bias.zero_()
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), lin).eval()


def contract(size: int = 16, classes: Sequence[str] = CLASSES) -> PreprocessContract:
    return PreprocessContract((size, size), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), tuple(classes))


def export_onnx(
    model,
    path: str | Path,
    c: PreprocessContract | None,
    *,
    dynamic: bool = True,
    batch: int = 1,
) -> Path:
    """Export ``model`` with torch.onnx (TorchScript exporter), put ``c`` in metadata_props, save to ``path``."""
    import onnx
    import torch

    size = c.input_size if c is not None else (16, 16)
    buf = io.BytesIO()
    kw = {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}} if dynamic else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(batch, 3, *size), buf, dynamo=False, input_names=["input"],
                          output_names=["logits"], **kw)
    proto = onnx.load_from_string(buf.getvalue())
    if c is not None:
        onnx.helper.set_model_props(proto, c.to_metadata())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


def register_onnx(root: Path, onnx_path: Path, name: str = "cvplatform", alias: str | None = "champion") -> str:
    """Log ``onnx_path`` to the project's (sqlite) MLflow as a new version of ``name``; set ``alias``.

    Like ``cvplatform.registry.register_model``, the file is stored byte-for-byte and its sha256 is
    tagged on the version (``artifact.sha256``), which the registry's loader verifies.
    """
    import mlflow
    import mlflow.onnx
    import onnx

    from cvplatform.evaluation.predictors import mlflow_uris
    from cvplatform.registry.client import TAG_SHA256
    from cvplatform.tracking import default_artifact_location, ensure_experiment, get_client
    from cvplatform.utils.io import sha256_file

    client, uri = get_client(root)
    exp = ensure_experiment(client, "evaluate-tests", default_artifact_location(root))
    with mlflow_uris(uri), mlflow.start_run(experiment_id=exp):
        info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name="model", registered_model_name=name,
                                     save_as_external_data=False)
    version = str(info.registered_model_version)
    client.set_model_version_tag(name, version, TAG_SHA256, sha256_file(onnx_path))
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version


@pytest.fixture(autouse=True)
def _embedded_mlflow(monkeypatch):
    """Tests use the embedded sqlite store under their project root, never an outside server."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def rgb_images() -> np.ndarray:
    """Six 32x32 structured RGB images (stripes + colour), uint8 NHWC."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    out = []
    for i in range(6):
        stripes = ((xx + yy * (i % 2) + i) // 3) % 2
        colour = rng.integers(40, 230, 3)
        img = colour[None, None, :] * (0.5 + 0.5 * stripes[..., None]) + rng.normal(0, 5, (32, 32, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)
