"""Small helpers shared by the export tests (reading manifest images, running ONNX files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load(root: Path, *overrides: str):
    """The project's params.yaml with ``key.path=value`` overrides (as ``--set`` does)."""
    from cvplatform.config import load_params

    return load_params(root / "params.yaml", list(overrides))


def split_images(root: Path, split: str = "test") -> tuple[list[np.ndarray], list[str]]:
    """Decode the RGB images of one manifest split (sorted by sha256) and return them with their labels."""
    import cv2

    from cvplatform.data.manifest import read_manifest

    df = read_manifest(root / "data" / "processed" / "manifest.parquet")
    rows = df[df["split"] == split].sort_values("sha256")
    images = [cv2.cvtColor(cv2.imread(str(root / p)), cv2.COLOR_BGR2RGB) for p in rows["path"]]
    return images, [str(v) for v in rows["label"]]


def run_onnx_file(path: Path, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Run an exported file with plain onnxruntime, preprocessing from its own metadata only.

    Returns (logits of the whole batch, logits image by image at batch 1).
    """
    import onnxruntime as ort

    from cvplatform.preprocess import PreprocessContract, preprocess

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    contract = PreprocessContract.from_metadata(sess.get_modelmeta().custom_metadata_map, source=str(path))
    x = preprocess(images, contract)
    batch = sess.run(["logits"], {"input": x})[0]
    single = np.concatenate([sess.run(["logits"], {"input": x[i : i + 1]})[0] for i in range(len(x))])
    return batch, single


def untrained_model(tmp: Path, classes: tuple[str, ...] = ("a", "b", "c"), size: int = 16, seed: int = 0):
    """A real (randomly initialised) small_cnn wrapped as a LoadedModel, plus its contract: no training needed."""
    import torch

    from cvplatform.models import build_model, resolve_model_kwargs
    from cvplatform.models.checkpoint import LoadedModel
    from cvplatform.preprocess import PreprocessContract

    torch.manual_seed(seed)
    kwargs = resolve_model_kwargs("small_cnn", width=4, stages=2)
    net = build_model("small_cnn", len(classes), **kwargs).eval()
    contract = PreprocessContract((size, size), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), classes)
    pre = {"input_size": [size, size], "mean": [0.5] * 3, "std": [0.25] * 3, "eval": []}
    loaded = LoadedModel(model=net, arch="small_cnn", arch_kwargs=kwargs, num_classes=len(classes),
                         class_names=list(classes), input_size=(size, size), mean=(0.5,) * 3, std=(0.25,) * 3,
                         eval_transforms=[], preprocess=pre, path=tmp / "untrained.ckpt")
    return loaded, contract
