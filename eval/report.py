"""Evaluation reports: report.md, metrics.json, curves.npz and report.html with matplotlib PNGs.

A report folder holds::

    metrics.json        dataset, settings, timing, metric, mAP, per-class AP / counts, extras
    curves.npz          per-class precision/recall curves (so the report can be rebuilt)
    report.md           mAP, extras, per-class AP table (best first), settings, timing
    report.html         the same, with ap_per_class.png and pr_curves_NN.png (20 classes a page)

With the detections at hand (write_reports' `analysis`), the error analysis joins them
(:mod:`eval.analysis`): metrics.json's ``analysis``, its tables in report.md, errors.png,
fp_types_NN.png and the galleries (gallery/, primary metric only) in report.html.

``compare_reports`` puts two such folders side by side as per-class AP deltas (and the error
breakdown's deltas when both have one).
"""
from __future__ import annotations

import html
import json
import math
import time
import zipfile
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from detector.common.atomic import atomic_path, write_text
from detector.common.errors import UserError
from eval.analysis import AnalysisInput, analyse
from eval.analysis_report import GALLERY_STYLE, comparison_section, html_section, markdown_section, write_plots
from eval.gallery import write_gallery
from eval.metrics import EvalResult

CLASSES_PER_PAGE = 20  #: PR curves per PNG (up to a 4 x 5 grid)
AP_PLOT = "ap_per_class.png"


# --------------------------------------------------------------------------- writing


def write_report(run_dir: str | Path, result: EvalResult, dataset_name: str, settings: dict, timing: dict,
                 analysis: dict | None = None) -> Path:
    """Write the report files of `result` into `run_dir`; returns the report.md path.

    `settings` (name -> value) and `timing` (stage -> seconds) are shown as given; `analysis` is
    the error analysis's summary (eval.analysis, with its gallery manifest), or None.
    """
    run_dir = Path(run_dir)
    summary = {"dataset": dataset_name, "settings": settings, "timing": timing, **result.to_dict()}
    if analysis is not None:
        summary["analysis"] = analysis
    write_text(run_dir / "metrics.json", json.dumps(summary, indent=2, default=str) + "\n")
    _save_curves(run_dir / "curves.npz", result)
    images = [plot_ap_bars(run_dir / AP_PLOT, result)] + plot_pr_curves(run_dir, result)
    analysis_images = write_plots(run_dir, analysis) if analysis is not None else []
    write_text(run_dir / "report.md", markdown_report(result, dataset_name, settings, timing, analysis))
    write_text(run_dir / "report.html",
               html_report(result, dataset_name, settings, timing, images, analysis, analysis_images))
    return run_dir / "report.md"


def write_reports(run_dir: str | Path, results: list[EvalResult], dataset_name: str, settings: dict,
                  timing: dict, analysis: AnalysisInput | None = None) -> Path:
    """The report of the first (primary) result in `run_dir` and of each further one in
    ``run_dir/<its metric>/``; returns the primary report.md path. With `analysis` (and its
    options enabled) each report gets the error analysis, the primary one its galleries too."""
    run_dir = Path(run_dir)
    for index, result in enumerate(results):
        folder = run_dir / result.metric if index else run_dir
        times = dict(timing)
        summary = _analysis(folder, result.metric, analysis, times, galleries=index == 0)
        write_report(folder, result, dataset_name, {**settings, "metric": result.metric}, times, summary)
    return run_dir / "report.md"


def _analysis(folder: Path, metric: str, source: AnalysisInput | None, timing: dict, galleries: bool) -> dict | None:
    """The error analysis summary of `metric` (galleries written into `folder`), timed into `timing`."""
    if source is None or not source.options.enabled:
        return None
    start = time.perf_counter()
    result = analyse(source.dets, source.dataset, metric, source.options)
    timing["error analysis"] = time.perf_counter() - start
    if galleries and source.options.gallery_per_class > 0:
        start = time.perf_counter()
        result.summary["gallery"] = write_gallery(folder, result, source.dets, source.dataset,
                                                  source.options.gallery_per_class, source.options.gallery_total)
        timing["gallery"] = time.perf_counter() - start
    return result.summary


def _save_curves(path: Path, result: EvalResult) -> None:
    arrays = {}
    for i, name in enumerate(result.classes):
        arrays[f"precision_{i}"] = result.precision[name]
        arrays[f"recall_{i}"] = result.recall[name]
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def find_report(path: str | Path) -> Path:
    """The report folder of `path`: a folder with metrics.json, or a run folder holding exactly
    one ``eval/<split>/metrics.json``."""
    path = Path(path)
    if (path / "metrics.json").is_file():
        return path
    found = sorted(path.glob("eval/*/metrics.json"))
    if len(found) == 1:
        return found[0].parent
    if found:
        raise UserError(f"{path}: several evaluations ({', '.join(str(p.parent) for p in found)}); name one")
    raise UserError(f"{path}: no metrics.json here or in eval/*/ (run `rcnn eval` first)")


def load_report(path: str | Path) -> tuple[EvalResult, str, dict, dict]:
    """(result, dataset name, settings, timing) of a report folder (see find_report)."""
    folder = find_report(path)
    try:
        data = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        result = EvalResult.from_dict(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{folder / 'metrics.json'}: not a metrics file written by write_report ({exc!r})") from None
    curves = folder / "curves.npz"
    if curves.is_file():
        try:
            with np.load(curves, allow_pickle=False) as arrays:
                for i, name in enumerate(result.classes):
                    result.precision[name] = arrays[f"precision_{i}"]
                    result.recall[name] = arrays[f"recall_{i}"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise UserError(f"{curves}: not a curves file written by write_report ({exc!r})") from None
    return result, data.get("dataset", ""), data.get("settings", {}), data.get("timing", {})


def load_analysis(path: str | Path) -> dict | None:
    """The error analysis stored in a report folder's metrics.json (see find_report), or None."""
    folder = find_report(path)
    try:
        analysis = json.loads((folder / "metrics.json").read_text(encoding="utf-8")).get("analysis")
    except (ValueError, AttributeError) as exc:
        raise UserError(f"{folder / 'metrics.json'}: not a metrics file written by write_report ({exc!r})") from None
    return analysis if isinstance(analysis, dict) else None


# --------------------------------------------------------------------------- text


def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def sorted_classes(result: EvalResult) -> list[int]:
    """Class indices by descending AP; classes without ground truth (NaN) last."""
    return sorted(range(len(result.classes)), key=lambda i: (math.isnan(result.ap[result.classes[i]]),
                                                           -np.nan_to_num(result.ap[result.classes[i]])))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _class_rows(result: EvalResult) -> list[list[str]]:
    rows = []
    for rank, i in enumerate(sorted_classes(result), 1):
        c = result.classes[i]
        rows.append([str(rank), result.display_names[i], c, _fmt(result.ap[c]),
                     str(result.num_gt.get(c, 0)), str(result.num_detections.get(c, 0))])
    return rows


CLASS_HEADER = ["rank", "class", "id", "AP", "ground truth", "detections"]


def markdown_report(result: EvalResult, dataset_name: str, settings: dict, timing: dict,
                    analysis: dict | None = None) -> str:
    """The report as Markdown (with the error analysis's tables when `analysis` is given)."""
    undefined = sum(math.isnan(v) for v in result.ap.values())
    lines = [f"# Evaluation: {dataset_name}", "",
             f"**mAP ({result.metric}): {_fmt(result.mAP)}** over {len(result.classes) - undefined} classes"
             + (f" ({undefined} without ground truth, AP n/a, not in the mean)" if undefined else ""), ""]
    if result.extras:
        lines += _table(list(result.extras), [[_fmt(v) for v in result.extras.values()]]) + [""]
    lines += ["## Per-class AP", ""] + _table(CLASS_HEADER, _class_rows(result)) + [""]
    if analysis is not None:
        lines += markdown_section(analysis)
    lines += ["## Settings", ""] + _table(["setting", "value"], [[k, str(v)] for k, v in settings.items()]) + [""]
    lines += ["## Timing", ""] + _table(["stage", "seconds"], [[k, f"{v:.3f}"] for k, v in timing.items()])
    return "\n".join(lines) + "\n"


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_report(
    result: EvalResult, dataset_name: str, settings: dict, timing: dict, images: list[str],
    analysis: dict | None = None, analysis_images: list[str] = (),
) -> str:
    """The report as an HTML page referring to the PNGs `images` (relative names); with
    `analysis`, its tables, plots `analysis_images` and gallery thumbnails too."""
    extras = _html_table(list(result.extras), [[_fmt(v) for v in result.extras.values()]]) if result.extras else ""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Evaluation: {html.escape(dataset_name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}"
        f"{GALLERY_STYLE}</style></head><body>",
        f"<h1>Evaluation: {html.escape(dataset_name)}</h1>",
        f"<p><b>mAP ({html.escape(result.metric)}): {_fmt(result.mAP)}</b></p>", extras,
        "<h2>Per-class AP</h2>", _html_table(CLASS_HEADER, _class_rows(result)),
        "<h2>Plots</h2>", *(f"<p><img src='{html.escape(name)}' alt='{html.escape(name)}'></p>" for name in images),
        *(html_section(analysis, list(analysis_images)) if analysis is not None else []),
        "<h2>Settings</h2>", _html_table(["setting", "value"], [[k, str(v)] for k, v in settings.items()]),
        "<h2>Timing</h2>", _html_table(["stage", "seconds"], [[k, f"{v:.3f}"] for k, v in timing.items()]),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- plots


def _save_figure(figure: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def plot_ap_bars(path: Path, result: EvalResult) -> str:
    """Horizontal bar chart of per-class AP (best on top, classes without ground truth left out)
    saved as PNG at `path`; returns its file name."""
    order = [i for i in sorted_classes(result) if not math.isnan(result.ap[result.classes[i]])][::-1]
    figure = Figure(figsize=(7, 1.2 + 0.22 * max(len(order), 1)))
    ax = figure.subplots()
    ax.barh(range(len(order)), [result.ap[result.classes[i]] for i in order], color="tab:blue")
    ax.set_yticks(range(len(order)), [result.display_names[i] for i in order], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("AP")
    ax.set_title(f"Per-class AP ({result.metric}), mAP {_fmt(result.mAP)}")
    figure.tight_layout()
    _save_figure(figure, path)
    return path.name


def plot_pr_curves(run_dir: Path, result: EvalResult) -> list[str]:
    """Precision-recall curve of every class, CLASSES_PER_PAGE panels per PNG
    (``pr_curves_01.png``, ...); returns the file names."""
    names = []
    for page, first in enumerate(range(0, len(result.classes), CLASSES_PER_PAGE), 1):
        indices = range(first, min(first + CLASSES_PER_PAGE, len(result.classes)))
        columns = min(5, len(indices))
        rows = math.ceil(len(indices) / columns)
        figure = Figure(figsize=(3 * columns + 0.5, 2.6 * rows + 0.5))
        axes = figure.subplots(rows, columns, squeeze=False).ravel()
        for ax, i in zip(axes, indices):
            c = result.classes[i]
            marker = "." if result.recall[c].size < 50 else None  # few points: show them
            ax.plot(result.recall[c], result.precision[c], color="tab:blue", linewidth=1, marker=marker)
            ax.set(xlim=(0, 1.02), ylim=(0, 1.02), title=f"{result.display_names[i]}  AP {_fmt(result.ap[c])}")
            ax.title.set_fontsize(9)
            ax.tick_params(labelsize=7)
        for ax in axes[len(indices):]:
            ax.axis("off")
        figure.supxlabel("recall")
        figure.supylabel("precision")
        figure.tight_layout()
        name = f"pr_curves_{page:02d}.png"
        _save_figure(figure, run_dir / name)
        names.append(name)
    return names


# --------------------------------------------------------------------------- comparison


def compare_reports(run_a: str | Path, run_b: str | Path, out: str | Path | None = None) -> str:
    """Per-class AP of two report folders and their deltas (B - A), biggest gains first, as
    Markdown; written to `out` (default: B's folder / comparison.md) and returned."""
    result_a, name_a, _, _ = load_report(run_a)
    result_b, name_b, _, _ = load_report(run_b)
    folder_a, folder_b = find_report(run_a), find_report(run_b)
    lines = [f"# Comparison: A = {folder_a} ({name_a}), B = {folder_b} ({name_b})", ""]
    if result_a.metric != result_b.metric:
        lines += [f"**Warning: different metrics ({result_a.metric} vs {result_b.metric}); deltas are not comparable.**", ""]
    lines += _table(["", "A", "B", "B - A"], [["mAP", _fmt(result_a.mAP), _fmt(result_b.mAP),
                                               _delta(result_a.mAP, result_b.mAP)]]) + [""]
    names = dict(zip(result_a.classes, result_a.display_names)) | dict(zip(result_b.classes, result_b.display_names))
    rows = []
    for c, name in names.items():
        ap_a, ap_b = result_a.ap.get(c, math.nan), result_b.ap.get(c, math.nan)
        rows.append((ap_b - ap_a, [name, c, _fmt(ap_a), _fmt(ap_b), _delta(ap_a, ap_b)]))
    rows.sort(key=lambda row: (math.isnan(row[0]), -np.nan_to_num(row[0])))
    lines += _table(["class", "id", "AP A", "AP B", "B - A"], [row for _, row in rows])
    analysis_a, analysis_b = load_analysis(folder_a), load_analysis(folder_b)
    if analysis_a and analysis_b:
        lines += [""] + comparison_section(analysis_a, analysis_b)[:-1]
    text = "\n".join(lines) + "\n"
    write_text(Path(out) if out else folder_b / "comparison.md", text)
    return text


def _delta(a: float, b: float) -> str:
    return "n/a" if math.isnan(a) or math.isnan(b) else f"{b - a:+.4f}"
