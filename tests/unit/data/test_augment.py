"""Augmentation recipes: validation errors name file and entry; pipelines end in the fixed tail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cvplatform.data.augment import AugmentRecipe, build_pipeline, load_recipe, recipe_from_metadata
from cvplatform.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs" / "augment").glob("*.yaml")))
def test_shipped_recipes_build_and_produce_input_size(name):
    recipe = load_recipe(REPO / "configs" / "augment" / name)
    img = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    for which in ("train", "eval"):
        out = build_pipeline(recipe, which, seed=0)(image=img)["image"]
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
        assert tuple(out.shape) == (3, *recipe.input_size)


def test_tail_normalises_with_recipe_constants():
    recipe = AugmentRecipe(input_size=(8, 8), mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.25))
    out = build_pipeline(recipe, "eval")(image=np.full((8, 8, 3), 255, np.uint8))["image"]
    assert torch.allclose(out[:, 0, 0], torch.tensor([(1 - 0.1) / 0.5, (1 - 0.2) / 0.5, (1 - 0.3) / 0.25]))


def test_same_seed_same_augmentation_different_seed_differs(tmp_path):
    p = _write(tmp_path, "train:\n  - {name: Affine, params: {rotate: [-30, 30], translate_percent: [-0.2, 0.2], p: 1.0}}\n")
    recipe = load_recipe(p)
    img = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    a = build_pipeline(recipe, "train", seed=7)(image=img)["image"]
    b = build_pipeline(recipe, "train", seed=7)(image=img)["image"]
    c = build_pipeline(recipe, "train", seed=8)(image=img)["image"]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_nested_compose(tmp_path):
    p = _write(tmp_path, """
train:
  - name: OneOf
    params: {p: 1.0}
    transforms:
      - {name: Blur, params: {blur_limit: 3}}
      - {name: HorizontalFlip}
""")
    assert load_recipe(p).train[0].transforms[1].name == "HorizontalFlip"


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ("train:\n  - {name: Affine}\n  - {name: HorizontalFlipp}\n", ["train[1]", "HorizontalFlipp", "HorizontalFlip"]),
        ("eval:\n  - {name: CenterCrop, params: {height: 8, width: 8}}\n",
         ["eval", "CenterCrop", "eval[0]", "preprocessing contract", "eval: []"]),
        ("train:\n  - {name: Affine, params: {rotate: abc}}\n", ["train[0]", "Affine", "rotate"]),
        ("train:\n  - {name: Normalize}\n", ["train[0]", "automatically"]),
        ("train:\n  - {name: Blur, transforms: [{name: Blur}]}\n", ["train[0]", "nested"]),
        ("train:\n  - {name: OneOf}\n", ["train[0]", "non-empty"]),
        ("train:\n  - {name: OneOf, transforms: [{name: Nope}]}\n", ["train[0].transforms[0]", "Nope"]),
        ("input_size: [0, 32]\n", ["input_size"]),
        ("std: [0.5, 0, 0.5]\n", ["std"]),
        ("trian: []\n", ["trian", "unknown key"]),
        ("resize: lettrbox\n", ["resize", "'stretch' or 'letterbox'", "'lettrbox'"]),
        ("resize: letterbox\npad_value: 300\n", ["pad_value", "less than or equal to 255", "300"]),
        ("resize: letterbox\npad_value: grey\n", ["pad_value", "'grey'"]),
        ("pad_value: 0\n", ["pad_value", "only applies to `resize: letterbox`", "resize: letterbox"]),
        ("train:\n  - {name: Resize, params: {height: 8, width: 8}}\nresize: stretch\npad_value: 5\n",
         ["pad_value", "only applies"]),
    ],
)
def test_bad_recipes_fail_naming_file_and_entry(tmp_path, body, needles):
    p = _write(tmp_path, body)
    with pytest.raises(ConfigError) as ei:
        load_recipe(p)
    msg = str(ei.value)
    assert str(p) in msg
    for needle in needles:
        assert needle in msg


def test_metadata_roundtrip():
    recipe = load_recipe(REPO / "configs" / "augment" / "natural.yaml")
    meta = recipe.to_metadata()
    assert meta["input_size"] == list(recipe.input_size) and meta["eval"] == []
    back = recipe_from_metadata(meta)
    assert back.eval == recipe.eval and back.mean == recipe.mean and back.train == []


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs" / "augment").glob("*.yaml")))
def test_every_shipped_recipe_loads_and_fits_the_contract(name):
    recipe = load_recipe(REPO / "configs" / "augment" / name)
    assert recipe.eval == []  # evaluation/export/serving can reproduce exactly what validation saw


def test_resize_is_recorded_with_the_model_and_absent_means_stretch():
    lb = AugmentRecipe(input_size=(24, 40), resize="letterbox")
    meta = lb.to_metadata()
    assert (meta["resize"], meta["pad_value"]) == ("letterbox", 114)  # the default grey, written out
    back = recipe_from_metadata(meta)
    assert (back.resize, back.letterbox_fill) == ("letterbox", 114)
    stretch = AugmentRecipe().to_metadata()
    assert stretch["resize"] == "stretch" and "pad_value" not in stretch
    old = {k: v for k, v in stretch.items() if k != "resize"}  # a checkpoint recorded before the key existed
    assert recipe_from_metadata(old).resize == "stretch"


def test_the_letterbox_tail_keeps_the_aspect_ratio_and_moves_boxes(tmp_path):
    """`resize: letterbox` in a recipe file: the fixed tail is LongestMaxSize + PadIfNeeded (centred, pad_value), in
    train and eval, and boxes passed with the task's bbox_params follow the scale and the padding."""
    import albumentations as A

    recipe = load_recipe(_write(tmp_path, "input_size: [32, 32]\nresize: letterbox\npad_value: 0\n"
                                          "mean: [0, 0, 0]\nstd: [1, 1, 1]\n"))
    img = np.full((20, 40, 3), 255, np.uint8)  # white, wider than tall: 16 px of padding above and below
    targets = {"bbox_params": A.BboxParams(format="pascal_voc", label_fields=["labels"])}
    for which in ("train", "eval"):
        out = build_pipeline(recipe, which, seed=0, targets=targets)(image=img, bboxes=[[10, 5, 30, 15]], labels=[0])
        x = out["image"].numpy()
        assert x.shape == (3, 32, 32)
        np.testing.assert_array_equal(x[:, :8], 0.0)  # padding (pad_value 0 -> 0 after mean 0, std 1)
        np.testing.assert_array_equal(x[:, 24:], 0.0)
        np.testing.assert_allclose(x[:, 8:24], 1.0)  # the image, scaled by 32 / 40
        np.testing.assert_allclose(out["bboxes"], [[8, 12, 24, 20]], atol=1e-4)
