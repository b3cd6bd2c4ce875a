"""Corruptions: the table, determinism (same seed -> identical pixels), severities that mean something."""

from __future__ import annotations

import numpy as np
import pytest

from cvplatform.errors import ConfigError
from cvplatform.evaluation.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    apply_corruption,
    build_corruption,
    corruption_params,
    image_seed,
)

EXPECTED = {
    "low_light", "brightness", "contrast", "gaussian_noise", "motion_blur", "defocus_blur",
    "jpeg", "pixelate", "occlusion", "rotation", "fog",
}
IDS = [f"{i:064x}" for i in range(6)]


def test_table_covers_every_corruption_at_five_fixed_severities():
    assert set(CORRUPTIONS) == EXPECTED
    for name, spec in CORRUPTIONS.items():
        assert len(spec.levels) == 5, name
        assert [corruption_params(name, s) for s in SEVERITIES] == list(spec.levels)
        # fixed values, not ranges
        assert all(isinstance(v, int | float) for lvl in spec.levels for v in lvl.values()), name
        assert len({tuple(sorted(lvl.items())) for lvl in spec.levels}) == 5, f"{name}: severities must differ"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_same_seed_gives_identical_pixels_and_severity_changes_them(name, rgb_images):
    a = apply_corruption(rgb_images, IDS, name, 3, seed=7)
    b = apply_corruption(rgb_images, IDS, name, 3, seed=7)
    assert a.dtype == np.uint8 and a.shape == rgb_images.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, rgb_images), "a corruption must change the image"
    s1 = apply_corruption(rgb_images, IDS, name, 1, seed=7)
    s5 = apply_corruption(rgb_images, IDS, name, 5, seed=7)
    assert not np.array_equal(s1, s5), f"{name}: severity 1 and 5 gave the same pixels"


@pytest.mark.parametrize("name", ["gaussian_noise", "occlusion", "motion_blur", "fog"])
def test_random_corruptions_depend_on_seed_and_image_id_not_on_batch_order(name, rgb_images):
    out = apply_corruption(rgb_images, IDS, name, 4, seed=1)
    perm = np.array([3, 0, 5, 1, 4, 2])
    shuffled = apply_corruption(rgb_images[perm], [IDS[i] for i in perm], name, 4, seed=1)
    np.testing.assert_array_equal(shuffled, out[perm])
    # a single image alone gives the same pixels as inside the batch
    np.testing.assert_array_equal(apply_corruption(rgb_images[2:3], IDS[2:3], name, 4, seed=1)[0], out[2])
    other_seed = apply_corruption(rgb_images, IDS, name, 4, seed=2)
    assert not np.array_equal(other_seed, out)


def test_image_seed_is_stable_and_distinct():
    assert image_seed(42, "fog", 1, "ab") == image_seed(42, "fog", 1, "ab")
    seeds = {image_seed(s, n, v, i) for s in (0, 1) for n in ("fog", "jpeg") for v in (1, 2) for i in ("a", "b")}
    assert len(seeds) == 16


@pytest.mark.parametrize("name", ["low_light", "brightness", "contrast", "gaussian_noise", "occlusion"])
def test_higher_severity_moves_pixels_further(name, rgb_images):
    ref = rgb_images.astype(np.float64)
    dist = [np.abs(apply_corruption(rgb_images, IDS, name, s, seed=0).astype(np.float64) - ref).mean()
            for s in SEVERITIES]
    assert all(b > a for a, b in zip(dist, dist[1:], strict=False)), (name, dist)


def test_low_light_multiplies_and_contrast_keeps_the_mean():
    img = np.full((1, 8, 8, 3), 200, np.uint8)
    img[0, :4] = 100
    dark = apply_corruption(img, IDS[:1], "low_light", 1, seed=0)  # factor 0.70
    np.testing.assert_array_equal(dark[0, 4:], 140)
    np.testing.assert_array_equal(dark[0, :4], 70)
    flat = apply_corruption(img, IDS[:1], "contrast", 1, seed=0)  # contrast x 0.40 around the mean 150
    np.testing.assert_array_equal(flat[0, 4:], 170)
    np.testing.assert_array_equal(flat[0, :4], 130)


def test_spatial_parameters_scale_with_image_size():
    assert build_corruption("motion_blur", 1, 32).blur_limit == (3, 3)
    assert build_corruption("motion_blur", 5, 32).blur_limit == (11, 11)
    assert build_corruption("motion_blur", 5, 64).blur_limit == (23, 23)
    assert build_corruption("defocus_blur", 2, 64).radius == (4, 4)


@pytest.mark.parametrize(
    ("name", "severity", "match"),
    [
        ("fogg", 1, r"scenario 'x': unknown corruption 'fogg'; choose one of brightness, contrast"),
        ("fog", 0, r"scenario 'x': corruption 'fog' severity must be an integer 1..5, got 0"),
        ("fog", 6, r"severity must be an integer 1..5, got 6"),
        ("fog", "3", r"severity must be an integer 1..5, got '3'"),
        ("fog", True, r"severity must be an integer 1..5, got True"),
    ],
)
def test_bad_corruption_or_severity_is_a_config_error(name, severity, match):
    with pytest.raises(ConfigError, match=match):
        build_corruption(name, severity, where="scenario 'x'")


def test_apply_checks_its_inputs(rgb_images):
    with pytest.raises(ConfigError, match="uint8 NHWC"):
        apply_corruption(rgb_images.astype(np.float32), IDS, "fog", 1, seed=0)
    with pytest.raises(ConfigError, match="6 images but 2 ids"):
        apply_corruption(rgb_images, IDS[:2], "fog", 1, seed=0)
