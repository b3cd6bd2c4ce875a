"""Input statistics on synthetic images with known values."""

from __future__ import annotations

import numpy as np
import pytest

from cvplatform.errors import DataError
from cvplatform.monitoring.stats import STAT_NAMES, image_stats, luma, read_rgb, stats_of_files


def _stripes(h: int = 32, w: int = 32) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, ::2] = 200
    img[:, 1::2] = 40
    return img


def test_flat_gray_image_has_zero_contrast_and_sharpness():
    s = image_stats(np.full((12, 20, 3), 90, np.uint8))
    assert s["brightness"] == 90.0
    assert s["contrast"] == 0.0
    assert s["sharpness"] == 0.0
    assert (s["width"], s["height"]) == (20.0, 12.0)
    assert s["aspect_ratio"] == pytest.approx(20 / 12)
    assert set(s) == set(STAT_NAMES)


def test_darker_copy_lowers_brightness_and_contrast():
    img = _stripes()
    dark = (img.astype(np.float64) * 0.5).round().astype(np.uint8)
    s, d = image_stats(img), image_stats(dark)
    assert s["brightness"] == pytest.approx(120.0)
    assert d["brightness"] == pytest.approx(60.0)
    assert d["contrast"] == pytest.approx(s["contrast"] / 2)
    assert d["sharpness"] < s["sharpness"]


def test_blur_lowers_sharpness_but_not_brightness():
    import cv2

    img = _stripes()
    blurred = cv2.GaussianBlur(img, (5, 5), 1.5)
    s, b = image_stats(img), image_stats(blurred)
    assert b["sharpness"] < 0.1 * s["sharpness"]
    assert b["brightness"] == pytest.approx(s["brightness"], abs=1.0)


def test_luma_uses_bt601_weights_and_gray_input_matches_rgb():
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    assert float(luma(red).mean()) == pytest.approx(0.299 * 255)
    gray = np.full((5, 7), 33, np.uint8)
    assert image_stats(gray) == image_stats(np.repeat(gray[..., None], 3, axis=2))


def test_large_images_are_downscaled_for_luma_stats_but_keep_their_size():
    img = np.full((300, 2000, 3), 77, np.uint8)
    s = image_stats(img, max_side=256)
    assert (s["width"], s["height"], s["brightness"]) == (2000.0, 300.0, 77.0)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8),
                                 np.zeros((0, 4, 3), np.uint8), np.zeros((4,), np.uint8)])
def test_bad_arrays_are_rejected_with_a_clear_error(bad):
    with pytest.raises(DataError, match="image_stats"):
        image_stats(bad)


def test_files_are_decoded_like_arrays(tmp_path):
    from PIL import Image

    img = _stripes(16, 24)
    f = tmp_path / "a.png"
    Image.fromarray(img).save(f)
    assert np.array_equal(read_rgb(f), img)
    assert stats_of_files([f]) == [image_stats(img)]
    with pytest.raises(DataError, match="not found"):
        read_rgb(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot decode"):
        read_rgb(tmp_path / "junk.png")
