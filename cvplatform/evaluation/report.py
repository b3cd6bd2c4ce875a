"""The evaluation report: Markdown + HTML with PNG plots, and plot data for ``dvc plots``.

Everything goes under ``artifacts/evaluate/``::

    report.md, report.html          the human report (same content)
    plots/scenarios.png             the task's first metric per scenario with its interval and floors
    plots/corruptions.png           the first metric vs severity per corruption
    plots/gallery/<scenario>.png    worst-handled images (``task.worst_images``)
    plots/scenarios.csv             one row per scenario: every metric of the task (dvc plots: bar chart)
    plots/corruptions.csv           corruption, severity, every metric of the task
    ...                             the task's own sections (``task.report_details``; classification: the
                                    confusion matrix, the reliability diagram and their CSVs, the per-class table)

Which numbers appear comes from the project's task (``ctx.task``, its ``metrics``); nothing here
knows what the task predicts.

Plots use matplotlib's Agg backend (no display needed); thumbnails are composed
with Pillow.
"""

from __future__ import annotations

import csv
import html
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvplatform.utils.figures import PNG_OPTIONS, figure, fixed_margins, save_png, text_inches  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from cvplatform.evaluation.gates import GateCheck, GateReport
    from cvplatform.evaluation.scenarios import Scenario
    from cvplatform.tasks.base import MetricSpec, Task

log = logging.getLogger(__name__)

_STATUS_COLOURS = {"passed": "#2e7d32", "failed": "#c62828", "warned": "#ef6c00", "empty": "#6a1b9a", "-": "#546e7a",
                   "unchecked": "#9e9e9e", "skipped": "#9e9e9e"}
#: Coloured markers for Markdown (Airflow's approval page and GitHub render emoji in colour, not HTML).
STATUS_MARKS = {"passed": "🟢", "failed": "🔴", "warned": "🟠", "empty": "🟣", "-": "⚪", "unchecked": "⚪",
                "skipped": "⚪"}


def check_mark(status: str, level: str) -> str:
    """The coloured marker of a gate check: red for a failed must-pass, orange for a failed warning."""
    if status == "failed":
        return STATUS_MARKS["failed"] if level == "must_pass" else STATUS_MARKS["warned"]
    return STATUS_MARKS.get(status, "⚪")


def check_state(status: str, level: str) -> str:
    """``failed`` / ``warned`` / ``passed`` / ``skipped``: a failed warn-level check is a warning."""
    return "warned" if status == "failed" and level != "must_pass" else status


@dataclass
class GalleryItem:
    """One failure shown in the gallery."""

    image_id: str
    label: str
    predicted: str
    confidence: float
    path: str = ""


@dataclass
class ReportContext:
    """What the report shows (filled by :func:`cvplatform.evaluation.run.run_evaluate`)."""

    model: str
    suite: str
    split: str
    class_names: Sequence[str]
    scenarios: Sequence[Scenario]
    results: Mapping[str, Any]
    gates: GateReport
    corruption_summary: Mapping[str, Any]
    champion: str | None = None
    champion_note: str = ""
    champion_results: Mapping[str, Any] | None = None
    galleries: dict[str, list[GalleryItem]] = field(default_factory=dict)
    gallery_images: dict[str, np.ndarray] = field(default_factory=dict)
    """Scenario -> (k, H, W, 3) uint8 thumbnails of the gallery items."""
    critical_classes: Sequence[str] = ()
    confidence: float = 0.95
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    task: Task | None = None
    """The project's task (default classification): its metrics are the report's numbers."""
    details: dict[str, Any] = field(default_factory=dict)
    """The task's own sections (``task.report_details``), filled by :func:`write_report`."""

    @property
    def the_task(self) -> Task:
        from cvplatform.tasks import get_task

        return self.task or get_task()

    @property
    def first(self) -> MetricSpec:
        """The task's first metric: the one plotted per scenario and per corruption."""
        return self.the_task.metrics[0]

    def with_interval(self) -> set[str]:
        """Metrics reported with an interval (any result's ``intervals`` has them)."""
        return {k for r in self.results.values() if r is not None for k in r.intervals}


def scenario_status(name: str, gates: GateReport) -> str:
    """``passed`` | ``failed`` (a must-pass check failed) | ``warned`` | ``empty`` | ``unchecked`` | ``-``.

    ``passed`` needs at least one decided threshold check that passed: a scenario whose only
    check is "it has images" is ``unchecked`` (drawn grey), never green, whatever its accuracy.
    """
    checks = gates.for_scenario(name)
    if any(c.name == "images" and c.status == "failed" for c in checks):
        return "empty" if not any(c.blocking for c in checks) else "failed"
    if any(c.blocking for c in checks):
        return "failed"
    if any(c.status == "failed" for c in checks):
        return "warned"
    if not checks:
        return "-"
    return "passed" if any(c.status == "passed" and c.name != "images" for c in checks) else "unchecked"


# --------------------------------------------------------------------------- plot data (CSV)
def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in rows:
            w.writerow(["" if v is None else (f"{v:.6f}" if isinstance(v, float) else v) for v in r])
    return path


def write_plot_data(ctx: ReportContext, plots: Path) -> dict[str, Path]:
    """Write the CSV plot data files (scenarios, corruptions); returns name -> path."""
    out: dict[str, Path] = {}
    metrics, ranged = ctx.the_task.metrics, ctx.with_interval()
    header = ["scenario", "kind", "level", "n"]
    for m in metrics:
        header += [m.name, f"{m.name}_low", f"{m.name}_high"] if m.name in ranged else [m.name]
    rows = []
    for sc in ctx.scenarios:
        r = ctx.results.get(sc.name)
        row: list[Any] = [sc.name, sc.kind, sc.gate.level, r.n if r else 0]
        for m in metrics:
            row.append(r.values.get(m.name) if r else None)
            if m.name in ranged:
                ci = r.intervals.get(m.name) if r else None
                row += [ci[0] if ci else None, ci[1] if ci else None]
        rows.append([*row, scenario_status(sc.name, ctx.gates)])
    out["scenarios"] = _write_csv(plots / "scenarios.csv", [*header, "status"], rows)
    crow = []
    for sc in ctx.scenarios:
        r = ctx.results.get(sc.name)
        if sc.kind == "corruption" and r is not None and r.n:
            crow.append([sc.corruption, sc.severity, *(r.values.get(m.name) for m in metrics)])
    out["corruptions"] = _write_csv(plots / "corruptions.csv",
                                    ["corruption", "severity", *(m.name for m in metrics)], crow)
    return out


def _clean(ctx: ReportContext) -> Any:
    for sc in ctx.scenarios:
        if sc.kind == "clean":
            return ctx.results.get(sc.name)
    return None


# --------------------------------------------------------------------------- plots (matplotlib)
def plot_scenarios(ctx: ReportContext, path: Path) -> Path:
    """Horizontal bars: the task's first metric per scenario with its interval and floor (or bound)."""
    spec = ctx.first
    names, val, lo, hi, colours, floors = [], [], [], [], [], []
    for sc in ctx.scenarios:
        r = ctx.results.get(sc.name)
        v = r.values.get(spec.name) if r else None
        ci = r.intervals.get(spec.name) if r else None
        names.append(sc.name)
        val.append(v if v is not None else 0.0)
        lo.append((v - ci[0]) if v is not None and ci else 0.0)
        hi.append((ci[1] - v) if v is not None and ci else 0.0)
        colours.append(_STATUS_COLOURS[scenario_status(sc.name, ctx.gates)])
        floors.append(_floor_of(sc, ctx))
    h = max(2.5, 0.22 * len(names) + 1.0)
    fig, ax = figure(7.5, h)
    y = list(range(len(names)))
    ax.barh(y, val, xerr=[lo, hi], color=colours, alpha=0.85, error_kw={"ecolor": "black", "capsize": 2, "lw": 0.8})
    ticks = [(yi, f) for yi, f in zip(y, floors, strict=True) if f is not None]
    if ticks:  # one collection of floor ticks, not a line per scenario
        ax.vlines([f for _, f in ticks], [yi - 0.4 for yi, _ in ticks], [yi + 0.4 for yi, _ in ticks], color="black",
                  lw=1.5)
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, max([1.0, *(v + e for v, e in zip(val, hi, strict=True))]))
    tick = "floor" if spec.higher_is_better else "bound"
    ax.set_xlabel(f"{spec.display} ({int(round(ctx.confidence * 100))}% interval; black tick = {tick})")
    ax.set_title(f"{spec.display[:1].upper()}{spec.display[1:]} per scenario (green passed, red failed, "
                 "orange warning, grey not checked)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fixed_margins(fig, left=text_inches(names, 7) + 0.2)
    return save_png(fig, path)


def _floor_of(sc: Scenario, ctx: ReportContext) -> float | None:
    """The threshold drawn for a scenario on the first metric: the tighter of its absolute and relative ones."""
    spec = ctx.first
    keys = {spec.gate_key, spec.relative_gate_key}
    limits = [c.threshold for c in ctx.gates.for_scenario(sc.name) if c.name in keys and c.threshold is not None]
    if not limits:
        return None
    return max(limits) if spec.higher_is_better else min(limits)


def plot_corruptions(ctx: ReportContext, path: Path) -> Path | None:
    """The first metric vs severity, one line per corruption, the clean value as a dashed line."""
    spec = ctx.first
    series: dict[str, list[tuple[int, float]]] = {}
    for sc in ctx.scenarios:
        r = ctx.results.get(sc.name)
        v = r.values.get(spec.name) if r is not None else None
        if sc.kind == "corruption" and v is not None:
            series.setdefault(str(sc.corruption), []).append((int(sc.severity or 0), v))
    if not series:
        return None
    fig, ax = figure(7.5, 4)
    for name, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=3, label=name)
    clean = _clean(ctx)
    top = max(p[1] for pts in series.values() for p in pts)
    if clean is not None and clean.values.get(spec.name) is not None:
        ax.axhline(clean.values[spec.name], ls="--", color="black", lw=1, label="clean")
        top = max(top, clean.values[spec.name])
    ax.set_xlabel("severity")
    ax.set_ylabel(spec.display)
    ax.set_ylim(0, max(1.02, top * 1.05))
    ax.set_xticks([1, 2, 3, 4, 5])
    mce = ctx.corruption_summary.get("mce")
    title = f"{spec.display[:1].upper()}{spec.display[1:]} under corruption"
    ax.set_title(f"{title} (mCE vs champion {mce:.2f})" if mce is not None else title, fontsize=9)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    ax.grid(alpha=0.3)
    fixed_margins(fig, left=0.6)
    return save_png(fig, path)


# --------------------------------------------------------------------------- gallery (Pillow)
def gallery_montage(images: np.ndarray, items: Sequence[GalleryItem], path: Path, thumb: int = 96) -> Path:
    """A row of thumbnails with ``true -> predicted (confidence)`` captions."""
    import numpy as np
    from PIL import Image

    k = len(items)
    cap = 26
    canvas = Image.new("RGB", (max(1, k) * (thumb + 6) + 6, thumb + cap + 8), (255, 255, 255))
    for i, (img, it) in enumerate(zip(np.asarray(images), items, strict=True)):
        h, w = img.shape[:2]
        scale = thumb / max(h, w)
        resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR
        im = Image.fromarray(img).resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)
        x0 = 6 + i * (thumb + 6)
        canvas.paste(im, (x0, 4))
        canvas.paste((0, 0, 0), (x0, thumb + 6), _caption(f"{it.label[:8]}>{it.predicted[:8]}"))
        canvas.paste((150, 0, 0), (x0, thumb + 17), _caption(f"p={it.confidence:.2f}"))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG", **PNG_OPTIONS)
    return path


_CAPTIONS: dict[str, Any] = {}


def _caption(text: str) -> Any:
    """The text drawn once in Pillow's default font as an ``L`` mask, pasted in a colour wherever it appears (a
    suite's galleries repeat the same few captions hundreds of times)."""
    mask = _CAPTIONS.get(text)
    if mask is None:
        from PIL import Image, ImageDraw, ImageFont

        font = ImageFont.load_default()
        left, top, right, bottom = font.getbbox(text)
        mask = Image.new("L", (max(1, right), max(1, bottom)), 0)
        ImageDraw.Draw(mask).text((0, 0), text, fill=255, font=font)
        if len(_CAPTIONS) < 4096:
            _CAPTIONS[text] = mask
    return mask


# --------------------------------------------------------------------------- text
def _f(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _ci(ci: tuple[float, float] | None) -> str:
    return "—" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _scenario_header(ctx: ReportContext) -> list[str]:
    ranged = ctx.with_interval()
    cols = ["scenario", "kind", "level", "n"]
    for m in ctx.the_task.metrics:
        cols += [m.display, f"{m.display} CI"] if m.name in ranged else [m.display]
    return [*cols, f"champion {ctx.first.display}", "Δ vs champion [CI]", "status"]


def _scenario_rows(ctx: ReportContext) -> list[list[str]]:
    ranged, first = ctx.with_interval(), ctx.first.name
    rows = []
    for sc in ctx.scenarios:
        r = ctx.results.get(sc.name)
        champ = ctx.champion_results.get(sc.name) if ctx.champion_results else None
        reg = next((c for c in ctx.gates.for_scenario(sc.name) if c.name == "champion_regression"), None)
        row = [sc.name, sc.kind, sc.gate.level, str(r.n if r else 0)]
        for m in ctx.the_task.metrics:
            row.append(_f(r.values.get(m.name) if r else None))
            if m.name in ranged:
                row.append(_ci(r.intervals.get(m.name) if r else None))
        rows.append([
            *row, _f(champ.values.get(first) if champ else None),
            (f"{reg.value:+.3f} {_ci(reg.ci)}" if reg is not None and reg.value is not None else "—"),
            scenario_status(sc.name, ctx.gates),
        ])
    return rows


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in esc)]


def _corruption_matrix(ctx: ReportContext) -> tuple[list[str], list[list[str]]]:
    first = ctx.first.name
    table: dict[str, dict[int, float]] = {}
    for sc in ctx.scenarios:
        r = ctx.results.get(sc.name)
        if sc.kind == "corruption" and r is not None and r.values.get(first) is not None:
            table.setdefault(str(sc.corruption), {})[int(sc.severity or 0)] = r.values[first]
    per = ctx.corruption_summary.get("per_corruption", {})
    rows = [[name, *(_f(sev.get(s)) for s in range(1, 6)), _f(per.get(name, {}).get("ce"), 2),
             _f(per.get(name, {}).get("error_multiple"), 2)] for name, sev in table.items()]
    return ["corruption", "s1", "s2", "s3", "s4", "s5", "CE vs champion", "error ÷ clean error"], rows


def corruption_lines(cs: Mapping[str, Any]) -> tuple[str, str]:
    """Two honest one-liners about corruption error: mCE against the champion, and the reference-free multiple
    (a task without an error rate reports each metric's mean under corruption and its change from clean)."""
    if "error_multiple_vs_clean" not in cs and "mce" not in cs:
        means = [f"{k.removeprefix('mean_corrupted_')} {_f(v, 4)}" for k, v in cs.items()
                 if k.startswith("mean_corrupted_")]
        changes = [f"{k.removeprefix('change_')} {v:+.4f}" for k, v in cs.items()
                   if k.startswith("change_") and v is not None]
        change = f"change from clean: {', '.join(changes) or 'n/a'}"
        if "rpc" in cs:  # a task with Michaelis et al.'s robustness numbers (detection)
            champ = (f"; champion mPC {_f(cs.get('champion_mpc'), 4)}" if cs.get("champion_mpc") is not None else "")
            return (f"mPC {_f(cs.get('mpc'), 4)} (mean mAP over every corruption and severity), rPC "
                    f"{_f(cs.get('rpc'), 3)} = mPC / clean mAP{champ}", change)
        return f"mean under corruption: {', '.join(means) or 'no corruption scenarios'}", change
    if cs.get("mce") is not None:
        mce = (f"mCE {_f(cs.get('mce'), 3)} (ImageNet-C definition with the champion {cs.get('mce_reference')} as "
               "the reference model; < 1 = more robust than the champion)")
    else:
        mce = "mCE: not available (it needs a reference model: the champion, evaluated on the same images)"
    own = (f"corruption error ÷ own clean error: {_f(cs.get('error_multiple_vs_clean'), 2)} (not mCE); mean "
           f"accuracy drop under corruption: {_f(cs.get('mean_degradation'), 3)}")
    return mce, own


def ordered_checks(g: GateReport) -> list[GateCheck]:
    """Checks for the report: failed must-pass, then warnings, then the others weakest first (passed images omitted)."""
    def rank(c: GateCheck) -> tuple[int, float, str, str]:
        group = 0 if c.blocking else 1 if c.status == "failed" else 3 if c.status == "skipped" else 2
        m = c.margin
        return group, (m if m is not None else float("inf")), c.scenario, c.name

    return sorted((c for c in g.checks if c.status != "passed" or c.name != "images"), key=rank)


def _check_row(c: GateCheck, marks: bool) -> list[str]:
    state = check_state(c.status, c.level)
    shown = f"{check_mark(c.status, c.level)} {state}" if marks else state
    return [shown, c.level, c.scenario, c.name, _f(c.value, 4), _f(c.threshold, 4), _ci(c.ci), c.reason]


_CHECK_HEADER = ["status", "level", "scenario", "check", "value", "threshold", "CI", "reason"]


def verdict_text(g: GateReport, marks: bool = True) -> str:
    """``🔴 FAILED: 2 must-pass check(s) failed, 3 warning(s)`` (markers optional)."""
    head = ("🟢 PASSED" if g.passed else "🔴 FAILED") if marks else ("PASSED" if g.passed else "FAILED")
    warn = f"{'🟠 ' if marks and g.warnings else ''}{len(g.warnings)} warning(s)"
    return f"{head}: {len(g.failures)} must-pass check(s) failed, {warn}"


def render_markdown(ctx: ReportContext, plots: Mapping[str, str]) -> str:
    """The Markdown report (plots referenced relative to the report)."""
    g = ctx.gates
    cs = ctx.corruption_summary
    mce, own = corruption_lines(cs)
    pct = int(round(ctx.confidence * 100))
    lines = [
        f"# Evaluation report: {ctx.model}",
        "",
        f"**Verdict: {verdict_text(g)}**; scenario pass rate (KPI) "
        f"{_f(g.pass_rate) if g.pass_rate is not None else 'n/a'}.",
        "",
        f"- model sha256: `{ctx.extra.get('model_sha256') or 'n/a'}`",
        f"- suite: `{ctx.suite}`; split: `{ctx.split}`; classes: {len(ctx.class_names)}; seed: {ctx.seed}",
        f"- champion: {ctx.champion or 'none'}{(' — ' + ctx.champion_note) if ctx.champion_note else ''}",
        f"- {mce}",
        f"- {own}",
        f"- intervals ({pct}%): {ctx.the_task.interval_note}",
        "",
        "## Gate checks",
        "",
        "🔴 failed must-pass · 🟠 warning · 🟢 passed · ⚪ skipped; failures first, then the weakest passes.",
        "",
        *_md_table(_CHECK_HEADER, [_check_row(c, True) for c in ordered_checks(g)]),
        "",
        "## Scenarios",
        "",
        f"![{ctx.first.display} per scenario]({plots.get('scenarios', '')})" if plots.get("scenarios") else "",
        "",
        *_md_table(_scenario_header(ctx), [[*r[:-1], f"{STATUS_MARKS.get(r[-1], '')} {r[-1]}"]
                                      for r in _scenario_rows(ctx)]),
        "",
    ]
    header, rows = _corruption_matrix(ctx)
    if rows:
        lines += [f"## Corruptions ({ctx.first.display} by severity)", ""]
        if plots.get("corruptions"):
            lines += [f"![{ctx.first.display} under corruption]({plots['corruptions']})", ""]
        lines += [*_md_table(header, rows), ""]
    for title, header, rows in ctx.details.get("tables", []):
        if rows:
            lines += [f"## {title}", "", *_md_table(header, rows), ""]
    for key, title, _ in ctx.details.get("plots", []):
        if plots.get(key):
            lines += [f"## {title}", "", f"![{title}]({plots[key]})", ""]
    if ctx.galleries:
        lines += [f"## {ctx.the_task.gallery_title}", ""]
        for name, items in ctx.galleries.items():
            lines += [f"### {name}", "", f"![failures {name}]({plots.get('gallery/' + name, '')})", "",
                      *_md_table(["#", "image sha256", *ctx.the_task.gallery_columns],
                                 [[str(i + 1), it.image_id[:16], it.label, it.predicted, f"{it.confidence:.3f}"]
                                  for i, it in enumerate(items)]), ""]
    return "\n".join(lines) + "\n"


_ROW_BACKGROUND = {"failed": "#ffebee", "warned": "#fff3e0"}


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], status_col: int | None = None) -> str:
    """A table; with ``status_col`` the status cell is coloured and failed / warned rows are shaded."""
    out = ["<table><thead><tr>", *(f"<th>{html.escape(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for r in rows:
        style, row_style = "", ""
        if status_col is not None:
            state = str(r[status_col])
            colour = _STATUS_COLOURS.get(state, "")
            style = f' style="color:{colour};font-weight:bold"' if colour else ""
            if state in _ROW_BACKGROUND:
                row_style = f' style="background:{_ROW_BACKGROUND[state]}"'
        out.append(f"<tr{row_style}>" + "".join(
            f"<td{style if i == status_col else ''}>{html.escape(str(c))}</td>" for i, c in enumerate(r)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_html(ctx: ReportContext, plots: Mapping[str, str]) -> str:
    """The HTML report (self-contained page; images referenced relative to it)."""
    g = ctx.gates
    cs = ctx.corruption_summary
    colour = _STATUS_COLOURS["passed" if g.passed else "failed"]
    mce, own = corruption_lines(cs)
    pct = int(round(ctx.confidence * 100))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Evaluation: {html.escape(ctx.model)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
        "font-size:12px;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}"
        "th{background:#f3f3f3}img{max-width:100%}</style></head><body>",
        f"<h1>Evaluation report: {html.escape(ctx.model)}</h1>",
        f"<p style='font-size:18px;color:{colour}'><b>Verdict: {html.escape(verdict_text(g, marks=False))}</b>"
        f"; scenario pass rate (KPI) {_f(g.pass_rate) if g.pass_rate is not None else 'n/a'}</p>",
        "<ul>",
        f"<li>model sha256: <code>{html.escape(str(ctx.extra.get('model_sha256') or 'n/a'))}</code></li>",
        f"<li>suite: <code>{html.escape(ctx.suite)}</code>; split: <code>{html.escape(ctx.split)}</code>; "
        f"classes: {len(ctx.class_names)}; seed: {ctx.seed}</li>",
        f"<li>champion: {html.escape(ctx.champion or 'none')}"
        f"{(' — ' + html.escape(ctx.champion_note)) if ctx.champion_note else ''}</li>",
        f"<li>{html.escape(mce)}</li><li>{html.escape(own)}</li>",
        f"<li>intervals ({pct}%): {html.escape(ctx.the_task.interval_note)}</li></ul>",
        "<h2>Gate checks</h2>",
        "<p>Failed must-pass checks first (red), then warnings (orange), then the weakest passes.</p>",
        _html_table(_CHECK_HEADER, [_check_row(c, False) for c in ordered_checks(g)], status_col=0),
        "<h2>Scenarios</h2>",
    ]
    if plots.get("scenarios"):
        parts.append(f"<img src='{html.escape(plots['scenarios'])}' alt='{ctx.first.display} per scenario'>")
    header = _scenario_header(ctx)
    parts.append(_html_table(header, _scenario_rows(ctx), status_col=len(header) - 1))
    header, rows = _corruption_matrix(ctx)
    if rows:
        parts.append(f"<h2>Corruptions ({html.escape(ctx.first.display)} by severity)</h2>")
        if plots.get("corruptions"):
            parts.append(f"<img src='{html.escape(plots['corruptions'])}' alt='corruptions'>")
        parts.append(_html_table(header, rows))
    for title, header, rows in ctx.details.get("tables", []):
        if rows:
            parts += [f"<h2>{html.escape(title)}</h2>", _html_table(header, rows)]
    for key, title, _ in ctx.details.get("plots", []):
        if plots.get(key):
            parts += [f"<h2>{html.escape(title)}</h2>", f"<img src='{html.escape(plots[key])}' alt='{html.escape(title)}'>"]
    if ctx.galleries:
        parts.append(f"<h2>{html.escape(ctx.the_task.gallery_title)}</h2>")
        for name, items in ctx.galleries.items():
            parts.append(f"<h3>{html.escape(name)}</h3>")
            if plots.get("gallery/" + name):
                parts.append(f"<img src='{html.escape(plots['gallery/' + name])}' alt='failures {html.escape(name)}'>")
            parts.append(_html_table(["#", "image sha256", *ctx.the_task.gallery_columns],
                                     [[str(i + 1), it.image_id[:16], it.label, it.predicted, f"{it.confidence:.3f}"]
                                      for i, it in enumerate(items)]))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(ctx: ReportContext, out_dir: str | Path) -> dict[str, Path]:
    """Write plots, plot data, ``report.md`` and ``report.html`` under ``out_dir``.

    Returns:
        Name -> path of everything written (``report_md``, ``report_html``, plots and CSVs).

    Example:
        >>> paths = write_report(ctx, "artifacts/evaluate")  # doctest: +SKIP
        >>> paths["report_md"].name  # doctest: +SKIP
        'report.md'
    """
    out = Path(out_dir)
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = dict(write_plot_data(ctx, plots_dir))
    rel: dict[str, str] = {}

    def add(key: str, path: Path | None) -> None:
        if path is not None:
            written[f"plot_{key}"] = path
            rel[key] = path.relative_to(out).as_posix()

    add("scenarios", plot_scenarios(ctx, plots_dir / "scenarios.png"))
    add("corruptions", plot_corruptions(ctx, plots_dir / "corruptions.png"))
    clean = _clean(ctx)
    if clean is not None and clean.n:
        ctx.details = ctx.the_task.report_details(clean, ctx.class_names, plots_dir) or {}
        written.update(ctx.details.get("files", {}))
        for key, _, path in ctx.details.get("plots", []):
            add(key, path)
    for name, items in ctx.galleries.items():
        imgs = ctx.gallery_images.get(name)
        if imgs is not None and len(items):
            add(f"gallery/{name}", gallery_montage(imgs, items, plots_dir / "gallery" / f"{name}.png"))
    md = out / "report.md"
    md.write_text(render_markdown(ctx, rel), encoding="utf-8")
    page = out / "report.html"
    page.write_text(render_html(ctx, rel), encoding="utf-8")
    written["report_md"] = md
    written["report_html"] = page
    return written


__all__ = [
    "STATUS_MARKS",
    "GalleryItem",
    "check_mark",
    "check_state",
    "corruption_lines",
    "ordered_checks",
    "verdict_text",
    "ReportContext",
    "gallery_montage",
    "plot_corruptions",
    "plot_scenarios",
    "render_html",
    "render_markdown",
    "scenario_status",
    "write_plot_data",
    "write_report",
]
