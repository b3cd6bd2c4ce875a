"""The preprocessing contract: values, shapes, resizing, metadata round trip, errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from cvplatform.errors import DataError, ModelError
from cvplatform.preprocess import PreprocessContract, normalize, preprocess, resize_to_contract, scale_offset


def _contract(**kw) -> PreprocessContract:
    base = {"input_size": (4, 6), "mean": (0.5, 0.25, 0.0), "std": (0.5, 0.25, 1.0), "class_names": ("a", "b")}
    return PreprocessContract(**{**base, **kw})


def test_values_are_scaled_normalised_and_channel_first():
    c = _contract()
    img = np.zeros((4, 6, 3), np.uint8)
    img[..., 0] = 255  # R = 1.0 -> (1 - 0.5) / 0.5 = 1
    img[..., 1] = 0  # G = 0.0 -> (0 - 0.25) / 0.25 = -1
    img[..., 2] = 51  # B = 0.2 -> (0.2 - 0) / 1 = 0.2
    x = preprocess([img], c)
    assert x.shape == (1, 3, 4, 6)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], 1.0)
    np.testing.assert_allclose(x[0, 1], -1.0)
    np.testing.assert_allclose(x[0, 2], 0.2, rtol=1e-6)


@pytest.mark.parametrize(("mean", "std"), [((0.5, 0.25, 0.0), (0.5, 0.25, 1.0)),
                                         ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                                         ((0.4, 0.5, 0.6), (0.2, 0.3, 0.4)), ((0.5,) * 3, (0.25,) * 3)])
def test_the_fused_normalisation_equals_the_contract_formula_for_every_pixel_value(mean, std):
    """x * scale + offset (one fused float32 pass) == (x / 255 - mean) / std within 1e-6, for all 256 values per
    channel, in NCHW order, C-contiguous; scale/offset are built once per contract and cannot be changed."""
    c = _contract(input_size=(256, 2), mean=mean, std=std)
    x = np.stack([np.arange(256, dtype=np.uint8), 255 - np.arange(256, dtype=np.uint8)], 1)[None, :, :, None]
    x = np.concatenate([x, x[:, ::-1], x[:, :, ::-1]], axis=3)  # each channel sees every value, differently placed
    ours = normalize(x, c)
    mean32 = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    std32 = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    reference = (x.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255) - mean32) / std32
    assert ours.shape == (1, 3, 256, 2) and ours.dtype == np.float32 and ours.flags.c_contiguous
    np.testing.assert_allclose(ours, reference, atol=1e-6, rtol=0)
    scale, offset = scale_offset(c.mean, c.std)
    assert scale_offset(c.mean, c.std)[0] is scale and not scale.flags.writeable and not offset.flags.writeable


def test_nhwc_batch_and_list_of_different_sizes_give_same_layout():
    c = _contract(input_size=(8, 8))
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (20, 12, 3), dtype=np.uint8)
    from_list = preprocess([a, b], c)
    assert from_list.shape == (2, 3, 8, 8)
    # an image already at input_size is not resampled
    np.testing.assert_allclose(from_list[0], preprocess(a[None], c)[0])
    # linear (training's interpolation) is what resizes b
    expected = cv2.resize(b, (8, 8), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(resize_to_contract([b], c)[0], expected)


def test_area_interpolation_is_honoured():
    c = _contract(input_size=(5, 5), interpolation="area")
    img = np.random.default_rng(1).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_to_contract([img], c)[0], cv2.resize(img, (5, 5), interpolation=cv2.INTER_AREA))


def test_matches_the_training_eval_pipeline():
    """Evaluation must see exactly what training's eval pipeline (albumentations) produces."""
    from cvplatform.data.augment import AugmentRecipe, build_pipeline

    recipe = AugmentRecipe(input_size=(12, 10), mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    c = PreprocessContract(recipe.input_size, recipe.mean, recipe.std, ("x",))
    img = np.random.default_rng(2).integers(0, 256, (30, 26, 3), dtype=np.uint8)
    ours = preprocess([img], c)[0]
    theirs = build_pipeline(recipe, "eval")(image=img)["image"].numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_metadata_round_trip_is_json_strings():
    c = _contract(class_names=("cat", "dog", "ünïcode"), interpolation="area")
    meta = c.to_metadata()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert meta["input_size"] == "[4, 6]"
    back = PreprocessContract.from_metadata({**meta, "unrelated": "x"})
    assert back == c
    assert back.num_classes == 3


def test_from_metadata_missing_keys_is_a_clear_error():
    meta = _contract().to_metadata()
    del meta["class_names"]
    with pytest.raises(ModelError, match=r"model.onnx.*\['class_names'\] missing"):
        PreprocessContract.from_metadata(meta, source="model.onnx")


def test_from_metadata_rejects_non_json_and_bad_values():
    meta = _contract().to_metadata()
    with pytest.raises(ModelError, match="'mean' is not a JSON string"):
        PreprocessContract.from_metadata({**meta, "mean": "[0.5, 0.5"})
    with pytest.raises(ModelError, match="std must have 3 positive values"):
        PreprocessContract.from_metadata({**meta, "std": "[0, 1, 1]"})


def test_invalid_contracts_are_rejected():
    with pytest.raises(ModelError, match="input_size"):
        _contract(input_size=(0, 4))
    with pytest.raises(ModelError, match="duplicates"):
        _contract(class_names=("a", "a"))
    with pytest.raises(ModelError, match="channel_order"):
        _contract(channel_order="BGR")


def test_bad_images_are_rejected():
    c = _contract()
    with pytest.raises(DataError, match="uint8"):
        preprocess([np.zeros((4, 6, 3), np.float32)], c)
    with pytest.raises(DataError, match="HxWx3"):
        preprocess([np.zeros((4, 6), np.uint8)], c)
    with pytest.raises(DataError, match="single image"):
        preprocess(np.zeros((4, 6, 3), np.uint8), c)
    with pytest.raises(DataError, match="resize_to_contract"):
        normalize(np.zeros((1, 5, 5, 3), np.uint8), c)


# --------------------------------------------------------------------------- the letterbox
@pytest.mark.parametrize("input_size", [(32, 32), (24, 40), (40, 24)])
@pytest.mark.parametrize("hw", [(50, 100), (37, 91), (100, 33), (31, 17), (7, 300), (24, 40)])
def test_the_letterbox_gives_the_pixels_of_the_training_eval_pipeline(input_size, hw):
    """A `resize: letterbox` recipe's eval pipeline (albumentations LongestMaxSize + PadIfNeeded) and the contract's
    numpy/OpenCV letterbox agree pixel for pixel on non-square images, padding included."""
    from cvplatform.data.augment import AugmentRecipe, build_pipeline

    recipe = AugmentRecipe(input_size=input_size, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4), resize="letterbox",
                           pad_value=77)
    c = PreprocessContract(recipe.input_size, recipe.mean, recipe.std, ("x",), resize="letterbox", pad_value=77)
    img = np.random.default_rng(hw[0] * hw[1]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    theirs = build_pipeline(recipe, "eval")(image=img)["image"].numpy()
    pixels = resize_to_contract([img], c)[0]
    # the pipeline's output back to uint8: equal pixels, not merely close values
    restored = np.rint((theirs.transpose(1, 2, 0) * np.array(recipe.std) + np.array(recipe.mean)) * 255)
    np.testing.assert_array_equal(pixels, restored.astype(np.uint8))
    np.testing.assert_allclose(preprocess([img], c)[0], theirs, atol=1e-5)
    h, w = hw
    if (h, w) != tuple(input_size):  # the padding is there, centred, in the pad grey
        from cvplatform.preprocess import resize_geometry

        g = resize_geometry((h, w), c)
        (nh, nw), (top, left) = g.new_size, g.offset
        s = min(input_size[0] / h, input_size[1] / w)  # one scale for both sides: the aspect ratio is kept
        assert abs(nh - h * s) <= 0.5 and abs(nw - w * s) <= 0.5 and (nh == input_size[0] or nw == input_size[1])
        assert abs((input_size[0] - nh) - 2 * top) <= 1 and abs((input_size[1] - nw) - 2 * left) <= 1
        mask = np.ones(input_size, bool)
        mask[top:top + nh, left:left + nw] = False
        assert (pixels[mask] == 77).all()


def test_the_default_resize_is_a_stretch_and_old_metadata_reads_as_one():
    c = _contract()
    assert (c.resize, c.pad_value, c.resize_label) == ("stretch", None, "stretch")
    meta = c.to_metadata()
    assert json.loads(meta["resize"]) == "stretch" and "pad_value" not in meta
    old = {k: v for k, v in meta.items() if k != "resize"}  # an ONNX file exported before the letterbox existed
    assert PreprocessContract.from_metadata(old) == c
    img = np.random.default_rng(4).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_to_contract([img], c)[0], cv2.resize(img, (6, 4), interpolation=cv2.INTER_LINEAR))


def test_letterbox_metadata_round_trip_and_default_pad():
    c = _contract(resize="letterbox")
    assert c.pad_value == 114 and c.resize_label == "letterbox (pad 114)"
    meta = c.to_metadata()
    assert json.loads(meta["resize"]) == "letterbox" and json.loads(meta["pad_value"]) == 114
    assert PreprocessContract.from_metadata(meta) == c
    assert PreprocessContract.from_metadata({k: v for k, v in meta.items() if k != "pad_value"}) == c
    assert PreprocessContract.from_metadata(_contract(resize="letterbox", pad_value=0).to_metadata()).pad_value == 0


def test_invalid_resize_settings_are_rejected():
    with pytest.raises(ModelError, match="resize must be 'stretch' or 'letterbox', got 'crop'"):
        _contract(resize="crop")
    with pytest.raises(ModelError, match="pad_value 0 only applies to resize 'letterbox'"):
        _contract(pad_value=0)
    for bad in (256, -1, 1.5, True):
        with pytest.raises(ModelError, match="pad_value must be an integer grey level 0-255"):
            _contract(resize="letterbox", pad_value=bad)
    meta = _contract(resize="letterbox").to_metadata()
    with pytest.raises(ModelError, match=r"model.onnx.*resize must be"):
        PreprocessContract.from_metadata({**meta, "resize": '"fit"'}, source="model.onnx")


def test_boxes_through_the_letterbox_geometry_come_back():
    from cvplatform.preprocess import resize_geometry

    c = _contract(input_size=(32, 48), resize="letterbox")
    boxes = np.array([[3.0, 5.0, 40.0, 31.0], [0.0, 0.0, 91.0, 37.0]])
    g = resize_geometry((37, 91), c)
    inside = g.to_input(boxes)
    assert (inside[:, [0, 2]] >= 0).all() and (inside[:, [0, 2]] <= 48).all()
    assert (inside[:, [1, 3]] >= g.offset[0]).all() and (inside[:, [1, 3]] <= g.offset[0] + g.new_size[0]).all()
    np.testing.assert_allclose(g.to_image(inside), np.clip(boxes, 0, [91, 37, 91, 37]), atol=1e-9)
    with pytest.raises(DataError, match="image size"):
        resize_geometry((0, 5), c)
