"""assign_split: thresholds, stability when images are added, per-label proportions."""

from __future__ import annotations

import hashlib

import pytest

from cvplatform.config import SplitFractions
from cvplatform.data.split import SPLIT_NAMES, assign_split, hash_fraction
from cvplatform.errors import DataError

FRACTIONS = SplitFractions(train=0.7, val=0.15, test=0.15)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_thresholds_follow_the_leading_64_bits():
    assert hash_fraction("0" * 64) == 0.0
    assert hash_fraction("8" + "0" * 63) == 0.5
    # u just below / at / above the train and train+val thresholds
    below_train = f"{int(0.69 * 2**64):016x}" + "0" * 48
    at_val = f"{int(0.70 * 2**64) + 1:016x}" + "0" * 48
    at_test = f"{int(0.851 * 2**64):016x}" + "0" * 48
    assert [assign_split(s, "x", FRACTIONS) for s in (below_train, at_val, at_test)] == ["train", "val", "test"]
    assert assign_split("f" * 64, "x", FRACTIONS) == "test"


def test_accepts_model_mapping_and_sequence_and_rejects_bad_fractions():
    sha = _sha("a")
    assert assign_split(sha, "x", FRACTIONS) == assign_split(sha, "x", {"train": 0.7, "val": 0.15, "test": 0.15}) \
        == assign_split(sha, "x", (0.7, 0.15, 0.15))
    assert {assign_split(_sha(str(i)), "x", (1.0, 0.0, 0.0)) for i in range(200)} == {"train"}
    with pytest.raises(DataError, match="sum to 1"):
        assign_split(sha, "x", (0.5, 0.2, 0.2))
    with pytest.raises(DataError, match="expected 3 values"):
        assign_split(sha, "x", (0.5, 0.5))
    with pytest.raises(DataError, match="not a hex sha256"):
        assign_split("not-hex", "x", FRACTIONS)


def test_adding_images_never_moves_existing_ones():
    old = {_sha(f"img-{i}"): f"c{i % 3}" for i in range(1000)}
    before = {s: assign_split(s, lab, FRACTIONS) for s, lab in old.items()}
    grown = dict(old) | {_sha(f"new-{i}"): f"c{i % 4}" for i in range(2000)}
    after = {s: assign_split(s, lab, FRACTIONS) for s, lab in grown.items()}
    assert all(after[s] == before[s] for s in old)


def test_proportions_per_label_are_close_to_the_fractions():
    labels = ["cat", "dog", "bird"]
    counts = {lab: dict.fromkeys(SPLIT_NAMES, 0) for lab in labels}
    for i in range(3000):
        lab = labels[i % 3]
        counts[lab][assign_split(_sha(f"{lab}/{i}"), lab, FRACTIONS)] += 1
    for lab in labels:
        n = sum(counts[lab].values())
        assert n == 1000
        for split in SPLIT_NAMES:
            # binomial sd for n=1000 is <= 0.0145; 0.045 is > 3 sd (and the hashes are fixed: no flakiness)
            assert abs(counts[lab][split] / n - getattr(FRACTIONS, split)) < 0.045, (lab, counts[lab])


def test_changing_fractions_moves_only_the_images_between_thresholds():
    shas = [_sha(f"m{i}") for i in range(2000)]
    a = [assign_split(s, "x", (0.7, 0.15, 0.15)) for s in shas]
    b = [assign_split(s, "x", (0.8, 0.1, 0.1)) for s in shas]
    moved = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    assert moved and all(y == "train" or (x == "test" and y == "val") for x, y in moved)
