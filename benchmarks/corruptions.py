"""Per-image cost of every corruption, as a ratio to the model's forward pass per image (one run).

For each image side (default 32 and 64) and every corruption of
``cvplatform/evaluation/corruptions.py`` at severities 1, 3 and 5, times ``apply_corruption`` on
``--n`` random images and divides by the per-image time of the platform's default model
(``small_cnn``, randomly initialised, exported to ONNX) run by onnxruntime at the evaluation batch
size (``evaluate.batch_size`` = 256) with one intra-op thread, measured in the same process.
albumentations' ``RandomFog`` with the parameters the ``fog`` corruption used before (fog
coefficient 0.30 .. 0.90, alpha 0.12) is timed alongside as ``fog_randomfog`` (the "before").

Reported: microseconds per image and ``ratio`` = corruption time / model forward time per image.
A corruption with a ratio far above 1 dominates the evaluation stage.

Usage:  .venv/bin/python benchmarks/corruptions.py [--n 128] [--sides 32 64] [--out benchmarks/results/corruptions.json]
The machine is shared and noisy: compare the ratios within a run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEVERITIES = (1, 3, 5)
OLD_FOG_COEFS = (0.30, 0.45, 0.60, 0.75, 0.90)


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def model_us_per_image(side: int, batch: int, repeats: int) -> float:
    import numpy as np
    import onnxruntime as ort

    from benchmarks.serving import export_model
    from cvplatform.runtime import session_options

    with tempfile.TemporaryDirectory() as tmp:
        path = export_model("small_cnn", side, Path(tmp) / "model.onnx")
        sess = ort.InferenceSession(str(path), sess_options=session_options(intra_op_threads=1),
                                    providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, side, side)).astype(np.float32)
    sess.run(None, {"input": x})
    return _best(lambda: sess.run(None, {"input": x}), repeats) / batch * 1e6


def randomfog_us_per_image(images, severity: int, repeats: int) -> float:
    import albumentations as A

    f = OLD_FOG_COEFS[severity - 1]
    t = A.RandomFog(fog_coef_range=(f, f), alpha_coef=0.12, p=1.0)

    def run() -> None:
        for i, im in enumerate(images):
            t.set_random_seed(i)
            t(image=im)

    return _best(run, repeats) / len(images) * 1e6


def bench_side(side: int, n: int, repeats: int, model_us: float) -> dict:
    import numpy as np

    from cvplatform.evaluation.corruptions import CORRUPTIONS, apply_corruption

    x = np.random.default_rng(side).integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    ids = [f"{i:064x}" for i in range(n)]
    rows = {}
    for name in [*CORRUPTIONS, "fog_randomfog"]:
        per_sev = {}
        for s in SEVERITIES:
            if name == "fog_randomfog":
                us = randomfog_us_per_image(list(x), s, repeats)
            else:
                apply_corruption(x[:2], ids[:2], name, s, seed=0)  # warm-up (imports, kernels)
                us = _best(lambda: apply_corruption(x, ids, name, s, seed=0), repeats) / n * 1e6  # noqa: B023
            per_sev[s] = round(us, 1)
        mean_us = sum(per_sev.values()) / len(per_sev)
        rows[name] = {"us_per_image": per_sev, "mean_us_per_image": round(mean_us, 1),
                      "ratio_to_model_forward": round(mean_us / model_us, 2)}
        print(f"{side:>3}px {name:<15} {mean_us:>9.1f} us/image  = {mean_us / model_us:>7.2f} x model forward",
              flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=128, help="images per measurement")
    ap.add_argument("--sides", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (best kept)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "corruptions.json"))
    args = ap.parse_args()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    warnings.filterwarnings("ignore")
    import onnxruntime as ort

    results = {"what": "corruption cost per image / model forward per image (small_cnn, onnxruntime, 1 thread, "
                       "batch 256), severities 1, 3, 5; fog_randomfog = the albumentations RandomFog fog used before",
               "machine": {"platform": platform.platform(), "python": platform.python_version(),
                           "cpus": os.cpu_count(), "onnxruntime": ort.__version__},
               "n": args.n, "sides": {}}
    for side in args.sides:
        model_us = model_us_per_image(side, 256, args.repeats)
        print(f"{side:>3}px model forward {model_us:.1f} us/image", flush=True)
        results["sides"][str(side)] = {"model_forward_us_per_image": round(model_us, 1),
                                       "corruptions": bench_side(side, args.n, args.repeats, model_us)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
