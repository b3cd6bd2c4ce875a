"""Fog: a blend towards a smooth bright noise field, cheap per image, the same bytes in every process,
stronger with each severity."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cvplatform.errors import ConfigError
from cvplatform.evaluation.corruptions import FOG_STRENGTHS, SEVERITIES, Fog, apply_corruption

REPO = Path(__file__).resolve().parents[3]


def _images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _digest(out: np.ndarray) -> str:
    return hashlib.sha256(out.tobytes()).hexdigest()


@pytest.mark.parametrize(("h", "w"), [(32, 32), (64, 64), (24, 40)])
def test_fog_keeps_dtype_and_shape_and_is_deterministic(h, w):
    x = _images(4, h, w)
    ids = [f"{i:064x}" for i in range(4)]
    a = apply_corruption(x, ids, "fog", 3, seed=5)
    assert a.dtype == np.uint8 and a.shape == x.shape
    np.testing.assert_array_equal(a, apply_corruption(x, ids, "fog", 3, seed=5))
    assert not np.array_equal(a, apply_corruption(x, ids, "fog", 3, seed=6))  # the seed moves the fog


def test_fog_gives_the_same_bytes_in_another_process():
    x = _images(5, 32, 32, seed=3)
    ids = [f"{i:064x}" for i in range(5)]
    here = [_digest(apply_corruption(x, ids, "fog", s, seed=11)) for s in SEVERITIES]
    code = textwrap.dedent("""
        import hashlib, sys
        import numpy as np
        from cvplatform.evaluation.corruptions import apply_corruption
        x = np.random.default_rng(3).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
        ids = [f"{i:064x}" for i in range(5)]
        for s in (1, 2, 3, 4, 5):
            print(hashlib.sha256(apply_corruption(x, ids, "fog", s, seed=11).tobytes()).hexdigest())
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == here


@pytest.mark.parametrize("side", [32, 64])
def test_higher_severity_moves_pixels_further_and_brightens(side):
    x = _images(16, side, side, seed=side)
    ids = [f"{i:064x}" for i in range(16)]
    diffs, means = [], []
    for s in SEVERITIES:
        out = apply_corruption(x, ids, "fog", s, seed=0).astype(np.float64)
        diffs.append(float(np.abs(out - x).mean()))
        means.append(float(out.mean()))
    assert all(a < b for a, b in zip(diffs, diffs[1:], strict=False)), diffs
    assert all(a < b for a, b in zip(means, means[1:], strict=False)), means  # fog is bright
    dark = np.zeros((16, side, side, 3), np.uint8)  # on black, the fog itself shows: bright and uneven
    fogged = apply_corruption(dark, ids, "fog", 5, seed=0).astype(np.float64)
    assert fogged.mean() > 80 and fogged.std(axis=(1, 2)).mean() > 3


def test_fog_field_is_smooth_and_within_0_1():
    fog = Fog(0.3, 64)
    fog.set_random_seed(9)
    f = fog.field(64, 64)
    assert f.dtype == np.float32 and f.shape == (64, 64) and f.min() >= 0.0 and f.max() <= 1.0
    # smooth: neighbouring pixels differ far less than independent noise would (mean |diff| about 1/3)
    assert float(np.abs(np.diff(f, axis=0)).mean()) < 0.05 and float(f.std()) > 0.03


def test_fog_strength_outside_its_range_is_refused():
    assert all(0 < s < 0.8 for s in FOG_STRENGTHS)
    with pytest.raises(ConfigError, match="fog strength 0.8"):
        Fog(0.8, 32)
