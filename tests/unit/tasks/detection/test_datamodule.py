"""The real data module on a detection manifest: boxes move with the pixels through the recipe (flip, crop) and the
fixed resize to ``input_size``, and through a letterbox exactly as :class:`Letterbox` predicts; the classes come
from the annotation table, not from the ``label`` column."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from cvplatform.errors import DataError
from cvplatform.tasks import get_task
from cvplatform.tasks.detection.annotations import Box, Letterbox, box_table

W, H = 60, 40
#: image a (train): a crowd "dog" top right and a "cat" on the left (in the table's order: by y0); image b (val): a dog
BOXES = {"a": [Box("dog", 36, 4, 56, 20, iscrowd=True), Box("cat", 4, 8, 20, 32)], "b": [Box("dog", 10, 10, 30, 30)]}


def _project(tmp_path, train: list[dict], input_size=(20, 30), table: dict | None = None):
    """Two 60x40 images (white where the boxes are, black elsewhere), their annotation table and manifest, and the
    data module for ``train`` (the recipe's train steps)."""
    import pandas as pd
    from PIL import Image

    from cvplatform.data.augment import load_recipe
    from cvplatform.data.datamodule import ManifestDataModule
    from cvplatform.data.manifest import write_manifest
    from cvplatform.utils.io import sha256_file

    rows, by_sha = [], {}
    for name, split in (("a", "train"), ("b", "val")):
        img = np.zeros((H, W, 3), np.uint8)
        for b in BOXES[name]:
            img[int(b.y0):int(b.y1), int(b.x0):int(b.x1)] = 255
        f = tmp_path / "img" / f"{name}.png"
        f.parent.mkdir(exist_ok=True)
        Image.fromarray(img).save(f)
        sha = sha256_file(f)
        by_sha[sha] = BOXES[name]
        rows.append({"path": f"img/{name}.png", "sha256": sha, "label": "scene", "width": W, "height": H,
                     "channels": 3, "format": "PNG", "source": "t", "origin": name, "split": split,
                     "annotations": "annotations.parquet"})
    box_table(table if table is not None else by_sha).to_parquet(tmp_path / "annotations.parquet")
    write_manifest(pd.DataFrame(rows), tmp_path / "manifest.parquet")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"input_size": list(input_size), "mean": [0.5] * 3, "std": [0.5] * 3,
                                      "train": train, "eval": []}))
    dm = ManifestDataModule("manifest.parquet", load_recipe(recipe), root=tmp_path, batch_size=2,
                            task=get_task("detection"))
    dm.setup()
    return dm


def _inside(image, box, value: float) -> bool:
    """Every pixel strictly inside ``box`` (one pixel in from its edges) has the normalised ``value``."""
    x0, y0, x1, y1 = (int(np.ceil(box[0])) + 1, int(np.ceil(box[1])) + 1, int(box[2]) - 1, int(box[3]) - 1)
    return bool(np.allclose(image[:, y0:y1, x0:x1].numpy(), value, atol=0.05))


def test_a_flip_and_the_resize_move_the_boxes_with_the_pixels(tmp_path):
    dm = _project(tmp_path, [{"name": "HorizontalFlip", "params": {"p": 1.0}}])
    assert dm.class_names == ["cat", "dog"]  # from the annotation table; the label column says "scene"
    image, target = dm.datasets["train"][0]
    assert tuple(image.shape) == (3, 20, 30)
    # flipped (x -> 60 - x), then halved by the fixed resize to 30 x 20
    np.testing.assert_allclose(target["boxes"], [[2, 2, 12, 10], [20, 4, 28, 16]], atol=1e-4)
    assert target["labels"].tolist() == [1, 0] and target["iscrowd"].tolist() == [True, False]
    for box in target["boxes"]:
        assert _inside(image, box, 1.0)  # white (255 normalised by mean 0.5, std 0.5) where the boxes went
    assert _inside(image, [2, 11, 10, 16], -1.0)  # black where the cat was before the flip
    # validation: no flip, only the resize
    _, val = dm.datasets["val"][0]
    np.testing.assert_allclose(val["boxes"], [[5, 5, 15, 15]], atol=1e-4)
    images, targets = next(iter(dm.train_dataloader()))
    assert tuple(images.shape) == (1, 3, 20, 30) and isinstance(targets, list)
    np.testing.assert_allclose(targets[0]["boxes"], target["boxes"])


def test_a_crop_drops_the_hidden_box_with_its_label_and_crowd_flag(tmp_path):
    dm = _project(tmp_path, [{"name": "Crop", "params": {"x_min": 0, "y_min": 0, "x_max": 30, "y_max": 40}}],
                  input_size=(40, 30))
    image, target = dm.datasets["train"][0]
    np.testing.assert_allclose(target["boxes"], [[4, 8, 20, 32]], atol=1e-4)
    assert target["labels"].tolist() == [0] and target["iscrowd"].tolist() == [False]  # the cat's, not the dog's


@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_a_letterbox_moves_the_boxes_as_letterbox_predicts(tmp_path, size):
    h, w = size
    dm = _project(tmp_path, [{"name": "LongestMaxSize", "params": {"max_size_hw": [h, w]}},
                             {"name": "PadIfNeeded", "params": {"min_height": h, "min_width": w, "position": "center",
                                                                "border_mode": 0, "fill": 114}}], input_size=size)
    image, target = dm.datasets["train"][0]
    expected = Letterbox.fit(W, H, (w, h)).boxes(BOXES["a"])
    np.testing.assert_allclose(target["boxes"], [[b.x0, b.y0, b.x1, b.y1] for b in expected], atol=1e-4)
    for box in target["boxes"]:
        assert _inside(image, box, 1.0)


def test_a_class_without_a_train_box_and_a_manifest_without_annotations_are_clear_errors(tmp_path):
    import pandas as pd

    from cvplatform.data.augment import AugmentRecipe
    from cvplatform.data.datamodule import ManifestDataModule
    from cvplatform.data.manifest import read_manifest, write_manifest

    _project(tmp_path, [])
    manifest = read_manifest(tmp_path / "manifest.parquet")
    sha = dict(zip(manifest["origin"], manifest["sha256"], strict=True))
    # image a (train) keeps only its cat: the dog is boxed in val only
    box_table({sha["a"]: BOXES["a"][1:], sha["b"]: BOXES["b"]}).to_parquet(tmp_path / "annotations.parquet")

    def setup() -> None:
        ManifestDataModule("manifest.parquet", AugmentRecipe(input_size=(20, 30)), root=tmp_path,
                           task=get_task("detection")).setup()

    with pytest.raises(DataError, match=r"manifest.parquet: class\(es\) \['dog'\] have no box in the train split"):
        setup()
    write_manifest(pd.DataFrame(manifest.drop(columns=["annotations"])), tmp_path / "manifest.parquet")
    with pytest.raises(DataError, match="manifest.parquet: no 'annotations' column"):
        setup()
