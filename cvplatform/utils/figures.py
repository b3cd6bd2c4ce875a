"""Bare matplotlib figures for reports (Agg, no pyplot state), shared by the evaluation report and the tasks'
report sections (which must not import the evaluation stage: the stages that run task code depend on
``cvplatform/utils``, not on ``cvplatform/evaluation``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: PNG options of every plot and gallery: zlib level 1 writes these flat-coloured images about as small as the
#: default level 6 at a fraction of its time (the encoder was a third of the report's cost).
PNG_OPTIONS = {"compress_level": 1}


def figure(width: float, height: float, **subplots: Any) -> tuple[Any, Any]:
    """A bare Agg figure and its axes (no pyplot state: nothing to close, nothing kept between plots)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(**subplots)


def fixed_margins(fig: Any, *, left: float, right: float = 0.2, top: float = 0.35, bottom: float = 0.5) -> None:
    """Margins in inches, set once: ``tight_layout`` measures every text by laying the figure out an extra time,
    which cost as much as drawing it."""
    w, h = fig.get_size_inches()  # capped: very long labels are cut at the edge rather than leave no plot
    fig.subplots_adjust(left=min(0.6, left / w), right=max(0.7, 1 - right / w), top=max(0.75, 1 - top / h),
                        bottom=min(0.45, bottom / h))


def text_inches(labels: Sequence[str], fontsize: float) -> float:
    """A generous estimate of the widest label's width (DejaVu Sans: at most about 0.62 em per character)."""
    return max((len(str(t)) for t in labels), default=0) * fontsize * 0.62 / 72


def save_png(fig: Any, path: Path, dpi: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, pil_kwargs=PNG_OPTIONS)
    return path


__all__ = ["PNG_OPTIONS", "figure", "fixed_margins", "save_png", "text_inches"]
