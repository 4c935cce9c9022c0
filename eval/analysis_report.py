"""The error analysis in a report: Markdown tables, HTML (plots and galleries), comparisons.

Works from the JSON summary alone (``metrics.json``'s ``analysis``, see :mod:`eval.analysis`), so
``rcnn report`` rebuilds it without the detections. Plots: ``errors.png`` (AP gained by fixing
each error type, overall and per object size) and ``fp_types_NN.png`` (Hoiem's stacked areas of
the top-ranked false positives' types, an all-classes panel then one per class, 20 a page).
"""
from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from detector.common.atomic import atomic_path

MAIN = ("cls", "loc", "both", "dupe", "bkg", "miss")
SPECIAL = ("fp", "fn")
LABELS = {"cls": "cls", "loc": "loc", "both": "both", "dupe": "dupe", "bkg": "bkg", "miss": "miss",
          "fp": "FP", "fn": "FN"}
HOIEM_COLOURS = {"loc": "#4c72b0", "sim": "#dd8452", "oth": "#55a868", "bg": "#c44e52"}
ERRORS_PLOT = "errors.png"
PANELS_PER_PAGE = 20
#: Hoiem multiples shown in the tables (N, 2N, 4N).
TABLE_MULTIPLES = (1.0, 2.0, 4.0)
EXPLANATION = (
    "AP gained by fixing only one error type (TIDE's oracles, Bolya et al. ECCV 2020): "
    "cls right box, wrong class; loc right class, IoU between 0.1 and the threshold; both wrong class "
    "and poorly localised; dupe a second detection of a matched object; bkg IoU <= 0.1 with every object; "
    "miss objects no detection came near. FP / FN: every false positive / false negative fixed. "
    "'all fixed' is the AP with the six types fixed at once (1 by construction)."
)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _gain(value: float | None) -> str:
    return "n/a" if value is None else f"+{value:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


# --------------------------------------------------------------------------- tables


def overall_rows(analysis: dict) -> list[list[str]]:
    """Rows (scope, AP, gains, all fixed, boxes): all sizes, each size, each IoU threshold."""
    thresholds = analysis["iou_thresholds"]
    name = "all" if len(thresholds) == 1 else f"all, IoU {thresholds[0]:.2f}:{thresholds[-1]:.2f}"
    scopes = [(name, analysis["overall"])] + [(size, part) for size, part in analysis["sizes"].items()]
    scopes += [(f"IoU {part['iou']:.2f}", part) for part in analysis.get("thresholds", [])]
    return [[scope, _fmt(part["ap"]), *(_gain(part["gain"][k]) for k in MAIN + SPECIAL), _fmt(part["fixed_all"]),
             str(part.get("num_gt", ""))] for scope, part in scopes]


OVERALL_HEADER = ["", "AP", *(LABELS[k] for k in MAIN + SPECIAL), "all fixed", "objects"]
CLASS_HEADER = ["class", "AP", *(LABELS[k] for k in MAIN + SPECIAL), "true pos.", "false pos.", "unmatched objects"]


def class_rows(analysis: dict) -> list[list[str]]:
    """Per-class rows, largest total gain of the main types first; classes without objects last."""
    def weight(row):
        gains = [row["gain"][k] for k in MAIN if row["gain"][k] is not None]
        return (row["ap"] is None, -sum(gains))
    rows = []
    for row in sorted(analysis["classes"], key=weight):
        counts = row["counts"]
        fps = sum(counts[k] for k in ("cls", "loc", "both", "dupe", "bkg"))
        rows.append([row["name"], _fmt(row["ap"]), *(_gain(row["gain"][k]) for k in MAIN + SPECIAL),
                     str(counts["tp"]), str(fps), str(row["num_gt"] - counts["tp"])])
    return rows


def _shares(counts: dict[str, list[int]], ks: list[int], index: int) -> str:
    k = ks[index]
    if k == 0:
        return "-"
    return " / ".join(f"{100 * counts[t][index] / k:.0f}" for t in ("loc", "sim", "oth", "bg")) + f" ({k})"


def hoiem_rows(analysis: dict) -> list[list[str]]:
    """Rows (class, objects, false positives, loc/sim/oth/bg % of the top N, 2N, 4N)."""
    hoiem = analysis["hoiem"]
    columns = [hoiem["multiples"].index(m) for m in TABLE_MULTIPLES]
    entries = [{"name": "all classes", "num_gt": sum(c["num_gt"] for c in hoiem["classes"]),
                "num_fp": sum(c["num_fp"] for c in hoiem["classes"]), **hoiem["overall"]}] + hoiem["classes"]
    return [[entry["name"], str(entry["num_gt"]), str(entry["num_fp"]),
             *(_shares(entry["counts"], entry["k"], i) for i in columns)] for entry in entries]


HOIEM_HEADER = ["class", "objects (N)", "false positives", *(f"top {m:g}N: loc / sim / oth / bg %"
                                                             for m in TABLE_MULTIPLES)]


def similar_text(analysis: dict) -> str:
    groups = analysis["hoiem"]["similar_classes"]
    if not groups:
        return "no similar classes configured (eval.similar_classes), so no false positive is 'sim'"
    return "similar classes: " + "; ".join(f"{name}: {', '.join(members)}" for name, members in groups.items())


def markdown_section(analysis: dict) -> list[str]:
    """The analysis as Markdown lines (for report.md)."""
    counts = analysis["overall"]["counts"]
    lines = ["## Where the AP goes", "", EXPLANATION, ""]
    lines += _table(OVERALL_HEADER, overall_rows(analysis)) + [""]
    lines += ["Counted at IoU {:.2f}: {} true positives; false positives {}; {} objects missed.".format(
        analysis["iou_thresholds"][0], counts["tp"],
        ", ".join(f"{k} {counts[k]}" for k in ("cls", "loc", "both", "dupe", "bkg")), counts["miss"]), ""]
    lines += ["### Per class (AP gained)", ""] + _table(CLASS_HEADER, class_rows(analysis)) + [""]
    lines += ["### Top-ranked false positives (Hoiem et al.; R-CNN Fig. 5)", "",
              "Share of each type among a class's top-scoring false positives, the first N, 2N, 4N "
              f"(N its objects; how many in brackets). loc: IoU 0.1-0.5 with its class or a duplicate; "
              f"sim / oth: IoU >= 0.1 with a similar / other class; bg: the rest. {similar_text(analysis)}.", ""]
    lines += _table(HOIEM_HEADER, hoiem_rows(analysis)) + [""]
    gallery = analysis.get("gallery")
    if gallery:
        pictures = sum(len(c["fp"]) + len(c["miss"]) for c in gallery["classes"])
        lines += [f"Galleries (report.html, gallery/): {pictures} pictures, up to {gallery['per_class']} false "
                  "positives and misses per class" + (f"; {gallery['skipped']} skipped (image unreadable)"
                                                      if gallery["skipped"] else "") + ".", ""]
    return lines


# --------------------------------------------------------------------------- HTML


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_section(analysis: dict, images: list[str]) -> list[str]:
    """The analysis as HTML: tables, the plots `images` and the galleries."""
    parts = ["<h2>Where the AP goes</h2>", f"<p>{html.escape(EXPLANATION)}</p>",
             _html_table(OVERALL_HEADER, overall_rows(analysis)),
             *(f"<p><img src='{html.escape(name)}' alt='{html.escape(name)}'></p>" for name in images[:1]),
             "<h3>Per class (AP gained)</h3>", _html_table(CLASS_HEADER, class_rows(analysis)),
             "<h3>Top-ranked false positives (Hoiem et al.; R-CNN Fig. 5)</h3>",
             f"<p>{html.escape(similar_text(analysis))}.</p>", _html_table(HOIEM_HEADER, hoiem_rows(analysis)),
             *(f"<p><img src='{html.escape(name)}' alt='{html.escape(name)}'></p>" for name in images[1:])]
    return parts + gallery_html(analysis.get("gallery"))


GALLERY_STYLE = ("figure.g{display:inline-block;margin:3px;vertical-align:top;width:120px;font-size:10px}"
                 "figure.g img{display:block;border:1px solid #999}"
                 ".legend b.gt{color:#2ecc40}.legend b.det{color:#ff2d2d}")


def gallery_html(gallery: dict | None) -> list[str]:
    """Per class: thumbnails of its false positives and misses, each linking to the full picture."""
    if not gallery:
        return []
    parts = ["<h2>Galleries</h2>", "<p class='legend'>Boxes: <b class='gt'>ground truth</b>, <b class='det'>"
             "detection</b>. False positives by score, misses largest first; click for the full picture.</p>"]
    for entry in gallery["classes"]:
        if not entry["fp"] and not entry["miss"]:
            continue
        parts.append(f"<h3>{html.escape(entry['name'])}</h3>")
        for kind, title in (("fp", "false positives"), ("miss", "missed objects")):
            if entry[kind]:
                figures = "".join(
                    f"<figure class='g'><a href='{html.escape(item['file'])}'><img src='{html.escape(item['thumb'])}'"
                    f" alt='{html.escape(item['caption'])}' title='{html.escape(item['caption'])}'></a>"
                    f"<figcaption>{html.escape(item['caption'])}</figcaption></figure>" for item in entry[kind])
                parts.append(f"<div><p>{title}</p>{figures}</div>")
    return parts


# --------------------------------------------------------------------------- plots


def _save(figure: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def plot_errors(path: Path, analysis: dict) -> str:
    """Bars of the AP gained by fixing each error type, all objects and per size; returns the file name."""
    scopes = [("all", analysis["overall"])] + list(analysis["sizes"].items())
    figure = Figure(figsize=(10, 3.6))
    main, special = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / len(scopes)
    for s, (scope, part) in enumerate(scopes):
        values = [np.nan_to_num(float(part["gain"][k] if part["gain"][k] is not None else np.nan)) for k in MAIN]
        main.bar(np.arange(len(MAIN)) + (s - (len(scopes) - 1) / 2) * width, values, width, label=scope)
    main.set_xticks(range(len(MAIN)), [LABELS[k] for k in MAIN])
    main.set_ylabel("AP gained (oracle)")
    main.set_title(f"Main errors ({analysis['metric']}, AP {_fmt(analysis['overall']['ap'])})")
    main.legend(fontsize=8)
    special.bar([LABELS[k] for k in SPECIAL],
                [analysis["overall"]["gain"][k] or 0.0 for k in SPECIAL], color=["#8172b2", "#937860"])
    special.set_title("False positives / negatives")
    figure.tight_layout()
    _save(figure, path)
    return path.name


def plot_fp_types(folder: Path, analysis: dict) -> list[str]:
    """Stacked areas of the Hoiem types of the top m*N false positives, one panel per class after an
    all-classes panel, PANELS_PER_PAGE a PNG (``fp_types_NN.png``); returns the file names.
    Fixed margins instead of tight_layout: a 200-class split makes 11 pages."""
    hoiem = analysis["hoiem"]
    panels = [{"name": "all classes", "num_gt": sum(c["num_gt"] for c in hoiem["classes"]),
               "num_fp": sum(c["num_fp"] for c in hoiem["classes"]), **hoiem["overall"]}] + hoiem["classes"]
    names = []
    for page, first in enumerate(range(0, len(panels), PANELS_PER_PAGE), 1):
        chunk = panels[first:first + PANELS_PER_PAGE]
        columns = min(5, len(chunk))
        rows = math.ceil(len(chunk) / columns)
        height = 2.3 * rows + 1.0
        figure = Figure(figsize=(3 * columns + 0.6, height))
        axes = figure.subplots(rows, columns, squeeze=False, sharex=True, sharey=True).ravel()
        for ax, panel in zip(axes, chunk):
            _fp_panel(ax, panel, hoiem)
        for ax in axes[len(chunk):]:
            ax.axis("off")
        for index, ax in enumerate(axes[:len(chunk)]):  # tick labels on the left column and lowest panels only
            ax.tick_params(labelleft=index % columns == 0, labelbottom=index + columns >= len(chunk))
        handles = [axes[0].fill_between([], [], color=colour, label=t) for t, colour in HOIEM_COLOURS.items()]
        figure.legend(handles=handles, loc="upper center", ncol=4, fontsize=8)
        figure.supxlabel("top-scoring false positives considered (N: the class's objects)", fontsize=9)
        figure.supylabel("share of each type (%)", fontsize=9)
        figure.subplots_adjust(left=0.6 / (3 * columns + 0.6), right=0.98, bottom=0.5 / height, top=1 - 0.6 / height,
                               wspace=0.3, hspace=0.55)
        name = f"fp_types_{page:02d}.png"
        _save(figure, folder / name)
        names.append(name)
    return names


def _fp_panel(ax, panel: dict, hoiem: dict) -> None:
    """One stacked-area panel: share of each type among the top k false positives, k = m * N
    (the multiples are powers of 2, drawn evenly spaced)."""
    ks = np.array(panel["k"], dtype=np.float64)
    positions = np.arange(len(hoiem["multiples"]))
    shown = ks > 0
    ax.set_title(f"{panel['name']} (N {panel['num_gt']}, FP {panel['num_fp']})", fontsize=8)
    ax.set(ylim=(0, 100), xlim=(0, positions[-1]))
    ax.set_xticks(positions, [_multiple(m) for m in hoiem["multiples"]])
    ax.tick_params(labelsize=7)
    if not shown.any():
        ax.text(0.5, 0.5, "no false positives", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        return
    shares = [100 * np.array(panel["counts"][t], dtype=np.float64)[shown] / ks[shown] for t in HOIEM_COLOURS]
    ax.stackplot(positions[shown], *shares, colors=list(HOIEM_COLOURS.values()))


def _multiple(m: float) -> str:
    """Tick label of a multiple of N: N/4, N/2, N, 2N..."""
    return f"N/{1 / m:g}" if m < 1 else ("N" if m == 1 else f"{m:g}N")


def write_plots(folder: Path, analysis: dict) -> list[str]:
    """Every analysis plot into `folder`; returns the file names (errors.png first)."""
    return [plot_errors(folder / ERRORS_PLOT, analysis)] + plot_fp_types(folder, analysis)


# --------------------------------------------------------------------------- comparison and summary


def comparison_section(a: dict, b: dict) -> list[str]:
    """Markdown: the breakdown of two runs side by side (B - A), overall and per class."""
    lines = ["## Where the AP goes: B - A", ""]
    if a["metric"] != b["metric"]:
        return lines + [f"Different metrics ({a['metric']} vs {b['metric']}): not compared.", ""]
    rows = [[name, _fmt(a["overall"][key]), _fmt(b["overall"][key]), _delta(a["overall"][key], b["overall"][key])]
            for name, key in (("AP", "ap"), ("all fixed", "fixed_all"))]
    rows += [[f"gain {LABELS[k]}", _gain(a["overall"]["gain"][k]), _gain(b["overall"]["gain"][k]),
              _delta(a["overall"]["gain"][k], b["overall"]["gain"][k])] for k in MAIN + SPECIAL]
    lines += _table(["", "A", "B", "B - A"], rows) + [""]
    per_a = {row["id"]: row for row in a["classes"]}
    rows = [[row["name"], *(_delta(per_a[row["id"]]["gain"][k], row["gain"][k]) for k in MAIN + SPECIAL)]
            for row in b["classes"] if row["id"] in per_a]
    lines += ["Per class: change of each AP gain (negative: B loses less AP to that error).", ""]
    lines += _table(["class", *(LABELS[k] for k in MAIN + SPECIAL)], rows) + [""]
    return lines


def _delta(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{b - a:+.4f}"


def error_summary(analysis: dict | None) -> dict[str, float]:
    """Overall gains by error type (for a run's report.md); empty without an analysis."""
    if not analysis:
        return {}
    return {LABELS[k]: analysis["overall"]["gain"][k] for k in MAIN + SPECIAL}
