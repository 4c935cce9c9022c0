"""The result every evaluator returns, and its JSON form (metrics.json)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class EvalResult:
    """Scores of one split under one metric.

    Per-class dicts are keyed by class id (``Dataset.classes``: names, or wnids for ILSVRC).
    ``ap`` is NaN for a class without (non-ignored) ground truth; ``mAP`` is the mean over the
    other classes (NaN when no class has ground truth). ``precision`` / ``recall`` are float64
    curves: for voc07/voc10/ilsvrc one point per scored detection of the class in score order
    (empty for classes without ground truth); for coco the 101 COCO recall points at IoU 0.5.
    ``extras`` holds metric-specific numbers (COCO: AP50, AP75, APs/m/l, AR...).
    """

    metric: str
    classes: list[str]
    display_names: list[str]
    ap: dict[str, float]
    mAP: float
    precision: dict[str, np.ndarray] = field(repr=False)
    recall: dict[str, np.ndarray] = field(repr=False)
    num_gt: dict[str, int] = field(default_factory=dict)  #: non-ignored ground-truth boxes
    num_detections: dict[str, int] = field(default_factory=dict)
    extras: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-safe summary without the curves (NaN written as null)."""
        return {
            "metric": self.metric,
            "mAP": _json_float(self.mAP),
            "classes": [
                {
                    "id": c,
                    "name": name,
                    "ap": _json_float(self.ap[c]),
                    "num_gt": self.num_gt.get(c, 0),
                    "num_detections": self.num_detections.get(c, 0),
                }
                for c, name in zip(self.classes, self.display_names)
            ],
            "extras": {key: _json_float(value) for key, value in self.extras.items()},
        }

    @classmethod
    def from_dict(
        cls, data: dict, precision: dict[str, np.ndarray] | None = None, recall: dict[str, np.ndarray] | None = None
    ) -> EvalResult:
        """Inverse of to_dict; curves default to empty."""
        rows = data["classes"]
        ids = [row["id"] for row in rows]
        empty = {c: np.zeros(0) for c in ids}
        return cls(
            metric=data["metric"],
            classes=ids,
            display_names=[row["name"] for row in rows],
            ap={row["id"]: _from_json_float(row["ap"]) for row in rows},
            mAP=_from_json_float(data["mAP"]),
            precision=precision if precision is not None else dict(empty),
            recall=recall if recall is not None else dict(empty),
            num_gt={row["id"]: int(row["num_gt"]) for row in rows},
            num_detections={row["id"]: int(row["num_detections"]) for row in rows},
            extras={key: _from_json_float(value) for key, value in data.get("extras", {}).items()},
        )


def mean_ap(ap: dict[str, float]) -> float:
    """Mean of the non-NaN APs; NaN when there are none."""
    values = [v for v in ap.values() if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def count_by_class(labels: list[np.ndarray], classes: list[str]) -> dict[str, int]:
    """Class id -> number of entries in the label arrays (each int64 [N], 0-based)."""
    counts = np.bincount(np.concatenate(labels or [np.zeros(0, np.int64)]), minlength=len(classes))
    return {name: int(n) for name, n in zip(classes, counts)}


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _from_json_float(value: float | None) -> float:
    return math.nan if value is None else float(value)
