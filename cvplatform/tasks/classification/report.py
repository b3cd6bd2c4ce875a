"""Classification's own parts of the evaluation report: per-class table, confusion matrix, reliability diagram.

:meth:`cvplatform.tasks.classification.ClassificationTask.report_details` calls :func:`report_details` for the
clean scenario; the report (cvplatform/evaluation/report.py) renders what it returns without knowing the task::

    plots/confusion_<scenario>.png    confusion matrix (clean)
    plots/reliability_<scenario>.png  reliability diagram (clean)
    plots/reliability.csv             bins of the clean reliability diagram
    plots/confusion.csv               actual, predicted (one row per clean image; dvc confusion template)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cvplatform.tasks.classification.metrics import ScenarioResult


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in rows:
            w.writerow(["" if v is None else (f"{v:.6f}" if isinstance(v, float) else v) for v in r])
    return path


def _f(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _ci(ci: tuple[float, float] | None) -> str:
    return "—" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


CLASS_HEADER = ["class", "support", "precision", "recall", "recall CI (Wilson)", "FPR"]


def class_rows(result: ScenarioResult, class_names: Sequence[str]) -> list[list[str]]:
    m = result.metrics
    if m is None:
        return []
    return [[c, str(m.support[c]), _f(m.precision[c]), _f(m.recall[c]), _ci(m.recall_ci.get(c)),
             _f(m.critical_fpr.get(c)) if c in m.critical_fpr else ""] for c in class_names]


def plot_confusion(result: ScenarioResult, class_names: Sequence[str], path: Path) -> Path:
    """Confusion matrix heat map (rows = true class, columns = predicted)."""
    import numpy as np

    from cvplatform.utils.figures import figure, fixed_margins, save_png, text_inches

    assert result.metrics is not None
    cm = np.asarray(result.metrics.confusion)
    k = len(class_names)
    size = min(10.0, max(3.5, 0.45 * k + 2))
    fig, ax = figure(size, size * 0.85)
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=7)
    ax.set_yticklabels(class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        thresh = cm.max() / 2 if cm.max() else 0.5
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > thresh else "black")
    ax.set_title(f"Confusion matrix: {result.name}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    label = text_inches(class_names, 7)
    fixed_margins(fig, left=label + 0.45, right=0.45, bottom=0.707 * label + 0.5)  # x labels turned 45 degrees
    return save_png(fig, path)


def plot_reliability(result: ScenarioResult, path: Path) -> Path:
    """Reliability diagram: accuracy vs mean confidence per bin, with the share of images per bin."""
    from cvplatform.utils.figures import figure, fixed_margins, save_png

    assert result.metrics is not None
    bins = result.metrics.reliability
    fig, (ax, ax2) = figure(4.8, 5.2, nrows=2, ncols=1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    centres = [(b["lower"] + b["upper"]) / 2 if b["upper"] > b["lower"] else b["lower"] for b in bins]
    widths = [max(b["upper"] - b["lower"], 0.02) for b in bins]
    ax.bar(centres, [b["accuracy"] for b in bins], width=widths, alpha=0.6, edgecolor="black", label="accuracy")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="C3", ms=3,
            label="(confidence, accuracy)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Reliability: {result.name} (ECE {result.metrics.ece:.3f})", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax2.bar(centres, [b["share"] for b in bins], width=widths, color="C0", alpha=0.6)
    ax2.set_xlabel("confidence")
    ax2.set_ylabel("share")
    ax2.set_xlim(0, 1.02)
    fixed_margins(fig, left=0.6)
    return save_png(fig, path)


def report_details(result: ScenarioResult, class_names: Sequence[str], plots_dir: Path) -> dict[str, Any]:
    """Write the clean scenario's plot data and plots; return the report's task sections as plain data:
    ``files`` (name -> path written), ``tables`` ([(title, header, rows)]), ``plots`` ([(key, title, path)])."""
    if result is None or result.metrics is None:
        return {}
    files: dict[str, Path] = {}
    files["reliability"] = _write_csv(
        plots_dir / "reliability.csv", ["scenario", "lower", "upper", "count", "share", "confidence", "accuracy"],
        [[result.name, b["lower"], b["upper"], b["count"], b["share"], b["confidence"], b["accuracy"]]
         for b in result.metrics.reliability],
    )
    names = list(class_names)
    files["confusion"] = _write_csv(
        plots_dir / "confusion.csv", ["actual", "predicted"],
        [[names[int(t)], names[int(p)]] for t, p in zip(result.y_true, result.y_pred, strict=True)],
    )
    confusion = plot_confusion(result, class_names, plots_dir / f"confusion_{result.name}.png")
    reliability = plot_reliability(result, plots_dir / f"reliability_{result.name}.png")
    return {
        "files": files,
        "tables": [("Per class (clean)", CLASS_HEADER, class_rows(result, class_names))],
        "plots": [("confusion", "Confusion matrix (clean)", confusion),
                  ("reliability", "Reliability diagram (clean)", reliability)],
    }


__all__ = ["CLASS_HEADER", "class_rows", "plot_confusion", "plot_reliability", "report_details"]
