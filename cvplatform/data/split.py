"""Deterministic, stable train/val/test split derived from each image's content hash.

A row's split is a pure function of its sha256 (and the configured fractions):

1. ``u = int(sha256[:16], 16) / 2**64`` - the first 64 bits of the hash read as a
   number in ``[0, 1)``. For sha256 this is uniform and independent of the label.
2. ``train`` if ``u < f_train``, ``val`` if ``u < f_train + f_val``, else ``test``.

Consequences:

* **Stable**: adding or removing other images never moves an existing image, so
  test images never leak into train when the dataset grows.
* **Stratified per label in expectation**: ``u`` is uniform within every label,
  so each class is split close to the configured fractions (binomial noise:
  about ``sqrt(f (1 - f) / n)`` for a class of ``n`` images).
* Changing the fractions moves only the images whose ``u`` lies between the old
  and the new thresholds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from cvplatform.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from cvplatform.config import SplitFractions

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")


def _as_triplet(fractions: SplitFractions | Mapping[str, float] | Sequence[float]) -> tuple[float, float, float]:
    if isinstance(fractions, Mapping):
        vals = tuple(float(fractions.get(k, 0.0)) for k in SPLIT_NAMES)
    elif isinstance(fractions, Sequence) and not isinstance(fractions, str):
        if len(fractions) != 3:
            raise DataError(f"split fractions {fractions!r}: expected 3 values (train, val, test)")
        vals = tuple(float(v) for v in fractions)
    else:
        vals = tuple(float(getattr(fractions, k)) for k in SPLIT_NAMES)
    if any(v < 0 for v in vals) or abs(sum(vals) - 1.0) > 1e-6:
        raise DataError(
            f"split fractions {dict(zip(SPLIT_NAMES, vals, strict=True))}: must be >= 0 and sum to 1 "
            "(fix ingest.split in params.yaml)."
        )
    return vals  # type: ignore[return-value]


def hash_fraction(sha256: str) -> float:
    """The uniform number in ``[0, 1)`` a split decision is based on: ``int(sha256[:16], 16) / 2**64``.

    Example:
        >>> hash_fraction("8" + "0" * 63)
        0.5
    """
    try:
        return int(sha256[:16], 16) / 2**64
    except (TypeError, ValueError):
        raise DataError(f"{sha256!r} is not a hex sha256 digest; cannot assign a split.") from None


def assign_split(
    sha256: str, label: str, fractions: SplitFractions | Mapping[str, float] | Sequence[float]
) -> str:
    """Return ``"train"``, ``"val"`` or ``"test"`` for an image, from its content hash.

    The decision uses only ``sha256`` and the fractions (see the module
    docstring): it is stable when images are added and stratified per label in
    expectation because the hash is uniform within every label. ``label`` is part
    of the signature so callers state what they split (and a future per-label
    policy needs no API change); it does not change the result today.

    Args:
        sha256: hex digest of the normalised image (the manifest ``sha256``).
        label: the image's class.
        fractions: ``SplitFractions`` (``ingest.split``), a mapping with keys
            train/val/test, or a ``(train, val, test)`` sequence; must sum to 1.

    Returns:
        The split name.

    Raises:
        DataError: ``sha256`` is not hex or the fractions do not sum to 1.

    Example:
        >>> assign_split("0" * 64, "cat", {"train": 0.7, "val": 0.15, "test": 0.15})
        'train'
        >>> assign_split("f" * 64, "cat", (0.7, 0.15, 0.15))
        'test'
    """
    del label  # uniform per label by construction; see docstring
    f_train, f_val, _ = _as_triplet(fractions)
    u = hash_fraction(sha256)
    if u < f_train:
        return "train"
    if u < f_train + f_val:
        return "val"
    return "test"


__all__ = ["SPLIT_NAMES", "assign_split", "hash_fraction"]
