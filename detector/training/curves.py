"""Training curves: PNG plots of the CSV logs that fine-tuning and pre-training write."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from detector.common.atomic import atomic_path


@dataclass(frozen=True)
class Panel:
    """One plot of a curves figure: CSV columns (column, legend label) against the x column."""

    title: str
    ylabel: str
    series: tuple[tuple[str, str], ...]
    scale: float = 1.0  #: multiplies every value (100: fractions shown as %)
    ylim: tuple[float, float] | None = None


@dataclass(frozen=True)
class Curves:
    """A figure of side-by-side panels over one x column of a CSV log."""

    x: str
    panels: tuple[Panel, ...]
    marker: str | None = None


FINETUNE_CURVES = Curves("iteration", (
    Panel("training losses", "loss", tuple((key, key) for key in ("loss", "cls_loss", "box_loss", "aux_loss"))),
    Panel("foreground region accuracy", "accuracy", (("fg_accuracy", "foreground regions"),), ylim=(0, 1)),
))
PRETRAIN_CURVES = Curves("epoch", (
    Panel("loss", "cross-entropy", (("train_loss", "train (augmented)"), ("val_loss", "val"),
                                     ("ema_val_loss", "val, EMA"))),
    Panel("accuracy (center crop)", "%", (("train_top1", "train top-1"), ("val_top1", "val top-1"),
                                          ("ema_top1", "val top-1, EMA"), ("ema_top5", "val top-5, EMA")),
          scale=100, ylim=(0, 100)),
), marker=".")


def plot_log_curves(log_path: Path, png_path: Path, curves: Curves) -> None:
    """Plot `curves` from the CSV log at `log_path` into `png_path` (nothing when the log is
    missing or empty)."""
    if not log_path.is_file():
        return
    with log_path.open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [int(r[curves.x]) for r in rows]
    fig, axes = plt.subplots(1, len(curves.panels), figsize=(5 * len(curves.panels), 3.5))
    for ax, panel in zip(axes, curves.panels):
        for key, label in panel.series:
            ax.plot(xs, [panel.scale * float(r[key]) for r in rows], marker=curves.marker, label=label)
        ax.set(xlabel=curves.x, ylabel=panel.ylabel, title=panel.title, ylim=panel.ylim)
        ax.legend()
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
