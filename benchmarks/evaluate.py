"""Evaluation throughput, and how its cost grows with scenarios x images (ratios within one run).

1. Generates 2N synthetic 32x32 shapes images (the built-in generator) and ingests
   them all into the ``test`` split of a throw-away project.
2. Exports the project's default architecture (``train.model`` in ``params.yaml``,
   randomly initialised: accuracy is irrelevant here) to ONNX with the
   preprocessing contract in its metadata, and evaluates it with the real
   ``run_evaluate`` on three workloads:

   * ``full``: N images x the full default suite (clean + 11 corruptions x 5 severities = 56),
   * ``scenarios_2x``: N images x the default suite listed twice (112 scenarios, same mix),
   * ``images_2x``: 2N images x the full default suite.

Each workload runs ``--repeats`` times, round-robin (best time kept). Reported: images/s
(scenario-images per second of the whole stage, and of the scenario loop alone:
corrupt + predict + metrics), seconds per scenario-image, and the ratios
``time(scenarios_2x) / time(full)`` and ``time(images_2x) / time(full)``; both
workloads are exactly twice the work, so linear cost means ratios close to 2.0
(``*_linearity`` = time ratio / work ratio close to 1.0). Per-scenario costs differ
a lot (the blurs cost ~4x a brightness shift; fog cost ~50x until it became cvplatform's Fog,
see benchmarks/corruptions.py), which is why the scenario workload repeats
the same mix instead of taking a subset.

3. The cost of evaluation against the model's own compute: seconds per scenario-image of the
   whole ``evaluate`` stage (``full`` workload) divided by seconds per image of the raw
   onnxruntime session (same session options as evaluation, batches of ``evaluate.batch_size``,
   preprocessed input, timed in the same run), with the corruption cache off (``cold``: every
   corruption computed) and filled (``warm``: a second run on the same split reads
   ``evaluate.corruption_cache``). Target: warm <= 2.5x. Reported as min/median/max over
   ``--repeats``.

The linearity workloads run with the cache off, so they measure the real work.

Usage:  .venv/bin/python benchmarks/evaluate.py [--n 150] [--repeats 2] [--only-cost] [--out benchmarks/results/evaluate.json]
(``--only-cost``: part 3 alone, ``--repeats`` times, for its min/median/max.)
The machine is shared and noisy: compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_project(tmp: Path, n_images: int) -> Path:
    """A project whose manifest holds ``n_images`` shapes images, all in the test split."""
    import shutil

    from cvplatform.config import ShapesParams, load_params
    from cvplatform.data.ingest import run_ingest
    from cvplatform.data.synthetic import generate_shapes

    root = tmp / "project"
    root.mkdir()
    shutil.copytree(REPO / "configs", root / "configs")
    src = tmp / "shapes"
    generate_shapes(ShapesParams(count=n_images, size=32, seed=0), src)
    params = load_params(REPO / "params.yaml", [
        f"ingest.source=folder:{src}", "ingest.labels_csv=labels.csv", "ingest.workers=2",
        "ingest.split.train=0.0", "ingest.split.val=0.0", "ingest.split.test=1.0",
    ])
    res = run_ingest(params, root=root)
    if res.accepted < n_images * 0.95:
        raise SystemExit(f"ingest accepted only {res.accepted} of {n_images} images")
    return root


def export_model(root: Path) -> tuple[Path, str]:
    """The default architecture (random weights) as ONNX with the preprocessing contract."""
    import io

    import onnx
    import pandas as pd
    import torch

    from cvplatform.config import load_params
    from cvplatform.data.augment import load_recipe
    from cvplatform.models import build_model
    from cvplatform.preprocess import PreprocessContract

    params = load_params(REPO / "params.yaml")
    recipe = load_recipe(root / params.train.augment)
    classes = sorted(pd.read_parquet(root / "data/processed/manifest.parquet")["label"].unique().tolist())
    torch.manual_seed(0)
    arch = params.train.model.arch
    net = build_model(arch, len(classes), **dict(params.train.model.kwargs)).eval()
    contract = PreprocessContract(recipe.input_size, recipe.mean, recipe.std, tuple(classes))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 3, *contract.input_size), buf, dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    onnx.helper.set_model_props(proto, contract.to_metadata())
    path = root / "model.onnx"
    onnx.save(proto, str(path))
    return path, arch


def write_doubled_suite(root: Path) -> Path:
    """The default suite with every scenario listed twice (second copy renamed ``*_b``; the clean scenario's
    twin is a slice selecting every image, the same work, since a suite has exactly one clean scenario)."""
    import copy

    import yaml

    data = yaml.safe_load((root / "configs/scenarios/default.yaml").read_text())
    twins = []
    for entry in data["scenarios"]:
        twin = copy.deepcopy(entry)
        twin["name"] = f"{entry.get('name') or entry['corruption']}_b"
        if entry["kind"] == "clean":  # a suite has one clean scenario: its twin is a slice of every image
            twin.update(kind="slice", where=[{"column": "split", "op": "==", "value": "test"}])
        twins.append(twin)
    data["scenarios"] += twins
    path = root / "configs/scenarios/doubled.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def model_seconds_per_image(root: Path, model: Path, n_images: int, repeats: int = 20) -> float:
    """The raw onnxruntime session's seconds per image on the evaluated images (preprocessed once, batches of
    ``evaluate.batch_size``, evaluation's session options); best of ``repeats`` passes."""
    import onnxruntime as ort

    from cvplatform.config import load_params
    from cvplatform.data.manifest import read_manifest
    from cvplatform.evaluation.predictors import OnnxPredictor, session_options
    from cvplatform.evaluation.suite_runner import load_images, select_split
    from cvplatform.preprocess import preprocess

    params = load_params(REPO / "params.yaml")
    pred = OnnxPredictor(model)
    rows = select_split(read_manifest(root / "data/processed/manifest.parquet"), "test", n_images, source="bench",
                        key="evaluate.split")
    x = preprocess(load_images(rows, root, pred, "bench").images, pred.contract)
    sess = ort.InferenceSession(str(model), session_options(), providers=["CPUExecutionProvider"])
    b = params.evaluate.batch_size
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s in range(0, len(x), b):
            sess.run(None, {"input": x[s : s + b]})
        best = min(best, time.perf_counter() - t0)
    return best / len(x)


def run_once(root: Path, model: Path, suite: str, n_images: int, cache: str | None = None) -> dict:
    from cvplatform.config import load_params
    from cvplatform.errors import GateFailed
    from cvplatform.evaluation.run import run_evaluate

    params = load_params(REPO / "params.yaml", [
        f"evaluate.suite={suite}", f"evaluate.max_images={n_images}", "evaluate.compare_champion=false",
        "evaluate.log_to_mlflow=false", f"evaluate.corruption_cache={cache if cache else 'null'}",
    ])
    t0 = time.perf_counter()
    try:
        res = run_evaluate(params, root=root, model=str(model))
    except GateFailed as exc:  # a random model fails its gates; the timings are what we want
        res = exc.result
    wall = time.perf_counter() - t0
    work = res.predictions
    loop = res.timings_s["scenarios"]
    return {
        "images": res.n_images,
        "scenarios": len(res.scenarios),
        "scenario_images": work,
        "seconds": round(wall, 3),
        "timings_s": res.timings_s,
        "images_per_s": round(work / wall, 1),
        "loop_images_per_s": round(work / loop, 1),
        "s_per_scenario_image": wall / work,
        "loop_s_per_scenario_image": loop / work,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=150, help="images of the N workloads (images_2x uses 2N)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per workload (best kept)")
    ap.add_argument("--only-cost", action="store_true",
                    help="only part 3 (evaluate vs the model's compute, --repeats times); no linearity workloads")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/evaluate.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="cvp-bench-eval-") as d:
        tmp = Path(d)
        root = make_project(tmp, 2 * args.n)
        model, arch = export_model(root)
        doubled = write_doubled_suite(root)
        default = "configs/scenarios/default.yaml"
        # warm-up (imports, onnxruntime session, albumentations) on a few images
        run_once(root, model, default, 8)
        workloads = {"full": (default, args.n), "scenarios_2x": (str(doubled), args.n),
                     "images_2x": (default, 2 * args.n)}
        if args.only_cost:
            workloads = {}
        runs: dict[str, dict] = {}
        cost: dict[str, list[float]] = {"cold": [], "warm": [], "model_ms_per_image": []}
        warm_runs: list[dict] = []
        for k in range(args.repeats):  # round-robin, so machine noise spreads over all workloads
            for name, (suite, n) in workloads.items():
                r = run_once(root, model, suite, n)
                if name not in runs or r["seconds"] < runs[name]["seconds"]:
                    runs[name] = r
            # evaluation vs the model's own compute, measured next to each other
            per_image = model_seconds_per_image(root, model, args.n)
            cache = str(tmp / f"cache{k}")
            cold = run_once(root, model, default, args.n, cache=cache)  # fills the cache
            warm = run_once(root, model, default, args.n, cache=cache)
            cost["model_ms_per_image"].append(per_image * 1e3)
            cost["cold"].append(cold["s_per_scenario_image"] / per_image)
            cost["warm"].append(warm["s_per_scenario_image"] / per_image)
            warm_runs.append(warm)

    cost_doc = {
        key: {"min": round(min(v), 3), "median": round(statistics.median(v), 3), "max": round(max(v), 3),
              "runs": [round(x, 3) for x in v]}
        for key, v in cost.items()
    }
    if args.only_cost:
        write_cost_only(args, arch, cost_doc, warm_runs)
        return

    def ratio(a: str, b: str, key: str) -> float:
        return runs[a][key] / runs[b][key]

    scen_work = ratio("scenarios_2x", "full", "scenario_images")
    img_work = ratio("images_2x", "full", "scenario_images")
    time_scen = ratio("scenarios_2x", "full", "seconds")
    time_img = ratio("images_2x", "full", "seconds")
    loop_scen = runs["scenarios_2x"]["timings_s"]["scenarios"] / runs["full"]["timings_s"]["scenarios"]
    loop_img = runs["images_2x"]["timings_s"]["scenarios"] / runs["full"]["timings_s"]["scenarios"]
    result = {
        "benchmark": "evaluate",
        "model": f"{arch} (ONNX, onnxruntime CPU)",
        "input_size": "32x32",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "runs": runs,
        "full_suite_images_per_s": runs["images_2x"]["images_per_s"],
        "repeats": args.repeats,
        "warm_cache_runs": warm_runs,
        "evaluate_vs_model_compute": cost_doc,
        "ratios": {
            "scenarios_work_2x_vs_1x": round(scen_work, 3),
            "scenarios_time_2x_vs_1x": round(time_scen, 3),
            "scenarios_loop_time_2x_vs_1x": round(loop_scen, 3),
            "scenarios_linearity": round(time_scen / scen_work, 3),
            "scenarios_loop_linearity": round(loop_scen / scen_work, 3),
            "images_work_2x_vs_1x": round(img_work, 3),
            "images_time_2x_vs_1x": round(time_img, 3),
            "images_loop_time_2x_vs_1x": round(loop_img, 3),
            "images_linearity": round(time_img / img_work, 3),
            "images_loop_linearity": round(loop_img / img_work, 3),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, r in runs.items():
        print(f"{name:12s} {r['images']:5d} images x {r['scenarios']:3d} scenarios = {r['scenario_images']:6d}: "
              f"{r['seconds']:7.2f}s  {r['images_per_s']:8.1f} img/s (loop {r['loop_images_per_s']:8.1f} img/s)")
    q = result["ratios"]
    print(f"scenarios x{q['scenarios_work_2x_vs_1x']:.2f} -> time x{q['scenarios_time_2x_vs_1x']:.2f} "
          f"(loop x{q['scenarios_loop_time_2x_vs_1x']:.2f}); linearity {q['scenarios_linearity']:.2f} "
          f"(loop {q['scenarios_loop_linearity']:.2f})")
    print(f"images    x{q['images_work_2x_vs_1x']:.2f} -> time x{q['images_time_2x_vs_1x']:.2f} "
          f"(loop x{q['images_loop_time_2x_vs_1x']:.2f}); linearity {q['images_linearity']:.2f} "
          f"(loop {q['images_loop_linearity']:.2f})")
    print_cost(result["evaluate_vs_model_compute"])
    print(f"written: {args.out}")


def print_cost(c: dict) -> None:
    print(f"evaluate / model compute per scenario-image: cold (no cache) {c['cold']['median']:.2f}x "
          f"[{c['cold']['min']:.2f}-{c['cold']['max']:.2f}], warm (cache) {c['warm']['median']:.2f}x "
          f"[{c['warm']['min']:.2f}-{c['warm']['max']:.2f}] (target warm <= 2.5x); model "
          f"{c['model_ms_per_image']['median']:.3f} ms/image")


def write_cost_only(args: argparse.Namespace, arch: str, cost_doc: dict, warm_runs: list[dict]) -> None:
    """``--only-cost``: part 3 alone, written to ``--out``."""
    result = {
        "benchmark": "evaluate (--only-cost)", "model": f"{arch} (ONNX, onnxruntime CPU)", "input_size": "32x32",
        "platform": platform.platform(), "python": platform.python_version(), "images": args.n,
        "repeats": args.repeats, "evaluate_vs_model_compute": cost_doc, "warm_cache_runs": warm_runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_cost(cost_doc)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
