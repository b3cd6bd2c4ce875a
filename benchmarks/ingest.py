"""Ingest and validation throughput, measured as ratios within one run.

1. Generates N (default 10,000) synthetic 64x64 images with the built-in shapes
   generator, then ingests them as a `folder:` source with 1 and with 2 workers
   and reports images/s for each and the 2-vs-1 speed-up ratio.
   Baseline: a plain PIL loop over the same files (open, convert to RGB, save as PNG
   to a new folder), timed in the same run. Ingest with 1 worker is compared with it
   `--repeats` times (default 3; the two alternate), reported as min/median/max of
   ``ingest seconds / plain-loop seconds`` (wall clock), and the same ratio of this process's CPU time
   (``cpu_ratio``: what the machine's other jobs inflate least; both loops run in this process, ingest with
   ``ingest.workers=1``). Each timed loop starts after an ``os.sync()``; one untimed ingest first pays the
   imports. Target: <= 1.5x.
2. Builds a 100,000-row manifest (synthetic rows, no image files needed) and times
   the Great Expectations validation over it.

Usage:  .venv/bin/python benchmarks/ingest.py [--n 10000] [--repeats 3] [--rows 100000] [--only-vs-plain]
        [--out benchmarks/results/ingest.json]
The machine is shared and noisy: compare the ratio, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def plain_loop(files: list[Path], out: Path) -> tuple[float, float]:
    """Seconds (wall, CPU of this process) for the baseline: decode each file with PIL, convert to RGB, write it
    as a PNG (the same zlib level as ingest)."""
    from PIL import Image

    out.mkdir()
    t0, c0 = time.perf_counter(), time.process_time()
    for i, f in enumerate(files):
        with Image.open(f) as im:
            im.convert("RGB").save(out / f"{i}.png", format="PNG", compress_level=6)
    return time.perf_counter() - t0, time.process_time() - c0


def _fresh(path: Path) -> Path:
    path.mkdir()
    return path


def bench_vs_plain(src: Path, tmp: Path, repeats: int) -> dict:
    """Ingest (1 worker) / plain PIL loop, ``repeats`` times, alternating the two."""
    import shutil
    import statistics

    from cvplatform.config import load_params
    from cvplatform.data.ingest import run_ingest

    files = sorted(p for p in src.rglob("*.png"))
    params = load_params(REPO / "params.yaml", [f"ingest.source=folder:{src}", "ingest.labels_csv=labels.csv",
                                                 "ingest.workers=1"])
    # untimed warm-up: the first run_ingest of a process imports pandas/pyarrow and the stage's modules (about a
    # second), a one-off cost the plain loop does not have; the comparison is per image
    run_ingest(params, root=_fresh(tmp / "warmup"))
    shutil.rmtree(tmp / "warmup")
    ratios, cpu_ratios, runs = [], [], []
    for k in range(repeats):
        # a full sync before each timed loop, so neither pays for writing back the other's files
        os.sync()
        plain_s, plain_cpu = plain_loop(files, tmp / f"plain{k}")
        root = tmp / f"vs_plain{k}"
        root.mkdir()
        os.sync()
        t0, c0 = time.perf_counter(), time.process_time()
        run_ingest(params, root=root)
        ingest_s, ingest_cpu = time.perf_counter() - t0, time.process_time() - c0
        ratios.append(ingest_s / plain_s)
        cpu_ratios.append(ingest_cpu / plain_cpu)
        runs.append({"plain_s": round(plain_s, 3), "ingest_s": round(ingest_s, 3), "ratio": round(ratios[-1], 3),
                     "plain_cpu_s": round(plain_cpu, 3), "ingest_cpu_s": round(ingest_cpu, 3),
                     "cpu_ratio": round(cpu_ratios[-1], 3)})
        shutil.rmtree(root)
        shutil.rmtree(tmp / f"plain{k}")
    return {"files": len(files), "runs": runs, "ratio_min": round(min(ratios), 3),
            "ratio_median": round(statistics.median(ratios), 3), "ratio_max": round(max(ratios), 3),
            "cpu_ratio_min": round(min(cpu_ratios), 3), "cpu_ratio_median": round(statistics.median(cpu_ratios), 3),
            "cpu_ratio_max": round(max(cpu_ratios), 3),
            "target_max_ratio": 1.5, "met_every_run": max(ratios) <= 1.5}


def bench_ingest(n: int, tmp: Path, repeats: int = 3, only_vs_plain: bool = False) -> dict:
    from cvplatform.config import ShapesParams, load_params
    from cvplatform.data.ingest import run_ingest
    from cvplatform.data.synthetic import generate_shapes

    src = tmp / "src"
    t0 = time.perf_counter()
    generate_shapes(ShapesParams(count=n, size=64, seed=0), src)
    gen_s = time.perf_counter() - t0
    out: dict = {"images": n, "generate_s": round(gen_s, 3)}
    if only_vs_plain:
        out["vs_plain_pil_loop"] = bench_vs_plain(src, tmp, repeats)
        return out
    manifests = {}
    for workers in (1, 2):
        params = load_params(
            REPO / "params.yaml",
            [f"ingest.source=folder:{src}", "ingest.labels_csv=labels.csv", f"ingest.workers={workers}"],
        )
        root = tmp / f"project_w{workers}"
        root.mkdir()
        t0 = time.perf_counter()
        res = run_ingest(params, root=root)
        dt = time.perf_counter() - t0
        assert res.accepted + res.duplicates + res.quarantined == n
        out[f"workers_{workers}"] = {"seconds": round(dt, 3), "images_per_s": round(n / dt, 1)}
        manifests[workers] = (root / "data/processed/manifest.parquet").read_bytes()
    out["speedup_2_vs_1"] = round(out["workers_1"]["seconds"] / out["workers_2"]["seconds"], 3)
    out["vs_plain_pil_loop"] = bench_vs_plain(src, tmp, repeats)
    out["identical_manifest_1_vs_2_workers"] = manifests[1] == manifests[2]
    return out


def synthetic_manifest(rows: int):
    import hashlib

    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    labels = [str(i) for i in range(10)]
    sha = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(rows)]
    lab = [labels[i % 10] for i in range(rows)]
    u = np.array([int(s[:16], 16) / 2**64 for s in sha])
    split = np.where(u < 0.7, "train", np.where(u < 0.85, "val", "test"))
    side = rng.integers(32, 65, size=rows)
    return pd.DataFrame({
        "path": [f"data/raw/{lab[i]}/{sha[i]}.png" for i in range(rows)],
        "sha256": sha, "label": lab, "width": side, "height": side, "channels": 3,
        "format": "PNG", "source": "bench", "origin": [f"{i}.png" for i in range(rows)], "split": split,
    })


def bench_validate(rows: int, tmp: Path) -> dict:
    from cvplatform.config import load_config, load_params
    from cvplatform.data import validate as v

    params = load_params(REPO / "params.yaml")
    suite = load_config(REPO / params.validate_params.suite, v.ManifestSuiteConfig)
    df = synthetic_manifest(rows)
    t0 = time.perf_counter()
    res = v.validate_manifest(df, suite, docs_dir=tmp / "docs")
    dt = time.perf_counter() - t0
    return {"rows": rows, "seconds": round(dt, 3), "rows_per_s": round(rows / dt, 1), "success": res.success}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="images to generate and ingest")
    ap.add_argument("--repeats", type=int, default=3, help="ingest vs plain-loop comparisons")
    ap.add_argument("--only-vs-plain", action="store_true",
                    help="only the ingest vs plain-loop comparison (no 1/2-worker runs, no validation)")
    ap.add_argument("--rows", type=int, default=100_000, help="manifest rows to validate")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/ingest.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "ing").mkdir()
        (tmp / "val").mkdir()
        result = {
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "ingest": bench_ingest(args.n, tmp / "ing", args.repeats, args.only_vs_plain),
        }
        if not args.only_vs_plain:
            result["validate"] = bench_validate(args.rows, tmp / "val")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
