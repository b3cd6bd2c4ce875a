"""One image decoder: the same file gives the same pixels and model input in training, evaluation and serving."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cvplatform.data.augment import AugmentRecipe, build_pipeline
from cvplatform.data.datamodule import ManifestDataset, read_rgb
from cvplatform.errors import DataError
from cvplatform.evaluation.predictors import _BasePredictor
from cvplatform.evaluation.suite_runner import load_images
from cvplatform.imageio import ImageDecodeError, decode_bytes, read_header, read_image
from cvplatform.preprocess import PreprocessContract, preprocess
from cvplatform.serving.inputs import open_images
from cvplatform.serving.schemas import LimitsConfig

RECIPE = AugmentRecipe(input_size=(16, 12), mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
CONTRACT = PreprocessContract(RECIPE.input_size, RECIPE.mean, RECIPE.std, ("a", "b"))


def _pattern(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.stack(np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h)), -1).sum(-1) / 2
    return np.clip(base[..., None] + rng.integers(-30, 30, (h, w, 3)), 0, 255).astype(np.uint8)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _files() -> dict[str, tuple[bytes, np.ndarray | None]]:
    """name -> (encoded file, the RGB pixels it must decode to, when known exactly)."""
    rgb = _pattern(30, 22, 0)
    grey = _pattern(25, 27, 1)[..., 0]
    rgba = np.dstack([_pattern(20, 24, 2), np.linspace(0, 255, 24, dtype=np.uint8)[None].repeat(20, 0)])
    alpha = rgba[..., 3:].astype(np.float64) / 255
    rgba_on_white = np.rint(rgba[..., :3] * alpha + 255 * (1 - alpha))
    oriented = Image.fromarray(_pattern(18, 28, 3))
    exif = oriented.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a 28x18 file is shown 18x28
    return {
        "png-rgb": (_save(Image.fromarray(rgb), "PNG"), rgb),
        "png-grey": (_save(Image.fromarray(grey, "L"), "PNG"), np.repeat(grey[..., None], 3, 2)),
        "png-rgba": (_save(Image.fromarray(rgba, "RGBA"), "PNG"), rgba_on_white),
        "jpeg-rgb": (_save(Image.fromarray(rgb), "JPEG", quality=90), None),
        "jpeg-grey": (_save(Image.fromarray(grey, "L"), "JPEG", quality=90), None),
        "jpeg-exif-rotated": (_save(oriented, "JPEG", quality=90, exif=exif.tobytes()), None),
    }


FILES = _files()


class _InputProbe(_BasePredictor):
    """The evaluation predictor base class, keeping the tensor it would feed a model."""

    def __init__(self) -> None:
        self.name = "probe"
        self.contract = CONTRACT
        self._set_task(None)  # classification: every batch's output passes its check_outputs
        self.inputs: list[np.ndarray] = []

    def _forward(self, x: np.ndarray) -> np.ndarray:
        self.inputs.append(x.copy())
        return np.zeros((x.shape[0], CONTRACT.num_classes), np.float32)


@pytest.mark.parametrize("name", sorted(FILES))
def test_training_evaluation_and_serving_see_the_same_image(tmp_path: Path, name: str):
    data, expected = FILES[name]
    path = tmp_path / f"{name}.img"
    path.write_bytes(data)

    # serving: the request path (header checked against the limits, then decoded) and the model input
    opened = open_images([data], LimitsConfig(formats=["PNG", "JPEG"]))
    served = opened[0].decode()
    served_x = preprocess([served], CONTRACT)

    # training: the data module's reader and the dataset with the eval pipeline
    trained = read_rgb(path)
    ds = ManifestDataset([str(path)], [0], build_pipeline(RECIPE, "eval"), seeded=False)
    trained_x = ds[0][0].numpy()

    # evaluation: the manifest rows -> images at the contract size -> what a predictor feeds its model
    probe = _InputProbe()
    rows = pd.DataFrame({"path": [path.name], "label": ["a"], "sha256": ["x"]})
    evaluated = load_images(rows, tmp_path, probe, "test")
    probe.predict_logits(evaluated.images)
    eval_x = probe.inputs[0]

    assert served.dtype == np.uint8 and served.ndim == 3 and served.shape[2] == 3
    np.testing.assert_array_equal(trained, served)
    if expected is not None:
        np.testing.assert_array_equal(served, expected.astype(np.uint8))
    if name == "jpeg-exif-rotated":
        assert served.shape == (28, 18, 3)  # EXIF orientation applied, as ingest stores the image
    np.testing.assert_array_equal(eval_x, served_x)  # evaluation and serving: bit-identical model input
    # training goes through albumentations (Resize + Normalize): same pixels in, float rounding only
    np.testing.assert_allclose(trained_x, served_x[0], atol=1e-5, rtol=0)


def test_the_header_is_read_before_any_pixel():
    big = _save(Image.new("1", (4000, 3000)), "PNG")
    header = read_header(big)
    assert (header.format, header.size, header.pixels) == ("PNG", (4000, 3000), 12_000_000)
    with pytest.raises(ImageDecodeError) as info:
        decode_bytes(big, max_pixels=1_000_000)
    assert info.value.reason == "too_large" and "4000x3000" in info.value.detail


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"", "empty"), (b"not an image", "unrecognised"), (FILES["png-rgb"][0][:80], "corrupt"),
     (_save(Image.fromarray(np.zeros((4, 4), np.float32), "F"), "TIFF"), "unsupported_mode")],
)
def test_bad_files_have_a_reason(data: bytes, reason: str):
    with pytest.raises(ImageDecodeError) as info:
        decode_bytes(data)
    assert info.value.reason == reason


def test_path_errors_name_the_file(tmp_path: Path):
    with pytest.raises(ImageDecodeError, match="missing.png: file not found"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"junk.png: cannot read image .*cvplatform ingest"):
        read_rgb(tmp_path / "junk.png")
