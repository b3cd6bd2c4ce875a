"""Shared helpers for monitoring tests: a tiny project and logged traffic (real logger, real images)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

from cvplatform.config import load_params
from cvplatform.data.manifest import read_manifest
from cvplatform.monitoring.inference_log import InferenceLogger
from cvplatform.monitoring.stats import read_rgb
from tests.fixtures.tiny_dataset import make_tiny_project

MIN_SAMPLES = 30


def make_monitor_project(root: Path, *overrides: str, min_samples: int = MIN_SAMPLES) -> Path:
    """A tiny project (36 train images) whose drift policy needs only ``min_samples`` requests."""
    root = make_tiny_project(root, per_class=20, size=16, overrides=["monitor.log_to_mlflow=false", *overrides])
    policy_file = root / "configs/monitor/drift.yaml"
    policy = yaml.safe_load(policy_file.read_text())
    policy["min_samples"] = min_samples
    policy_file.write_text(yaml.safe_dump(policy))
    return root


def log_traffic(
    root: Path,
    *,
    transform: Callable[[np.ndarray], np.ndarray] = lambda img: img,
    predicted: str | None = None,
    repeat: int = 3,
    confidence: float = 0.9,
    at: datetime | None = None,
    limit: int | None = None,
) -> int:
    """Log the train images as served traffic (optionally transformed / all one predicted class)."""
    df = read_manifest(root / "data/processed/manifest.parquet")
    train = df[df["split"] == "train"].reset_index(drop=True)
    logger = InferenceLogger.from_params(load_params(root / "params.yaml"), root)
    if at is not None:
        logger = InferenceLogger(logger.directory, logger.max_bytes, clock=lambda: at)
    n = 0
    with logger:
        for r in range(repeat):
            for i, row in train.iterrows():
                if limit is not None and n >= limit:
                    return n
                img = transform(read_rgb(root / row["path"]))
                logger.log(img, model="cvplatform", version="1", variant="champion", request_id=f"{r}-{i}",
                           predicted=predicted or row["label"], confidence=confidence)
                n += 1
    return n


def darken_and_blur(img: np.ndarray) -> np.ndarray:
    import cv2

    dark = (img.astype(np.float32) * 0.35).astype(np.uint8)
    return cv2.GaussianBlur(dark, (5, 5), 2.0)
