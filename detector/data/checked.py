"""The one checked path for numbers read from files: annotation readers (VOC / ILSVRC XML, COCO
JSON, YOLO labels) and result-file readers (COCO, VOC, ILSVRC, YOLO) all parse their numbers and
check their boxes here, so NaN, infinity and numbers out of range are refused alike, with a
message naming the file (and line or entry) and the value, never kept or turned into a traceback.

A number must be a finite float that float32 (the project's box dtype) can hold; a bool, None, a
list or text that is no number is not one. Boxes converted from such numbers (``x + w``, YOLO's
normalised values times the image size) must stay finite in float32 too.
"""
from __future__ import annotations

import math

import numpy as np

from detector.common.errors import UserError

#: The largest magnitude a number read from a file may have: float32's (boxes are float32).
LIMIT = float(np.finfo(np.float32).max)


def shown(value) -> str:
    """`value` as messages show it: its repr, shortened (a huge integer by its digit count)."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's 4300-digit conversion limit
        return f"an integer of {value.bit_length()} bits"
    return text if len(text) <= 40 else f"{text[:37]}..."


def _value(value, text: bool = True) -> float | None:
    """`value` as a float, or None when it is no number (a bool, None, a container, other text;
    any text unless `text`)."""
    kinds = (int, float, np.integer, np.floating) + ((str,) if text else ())
    if isinstance(value, bool) or not isinstance(value, kinds):
        return None
    try:
        return float(value)
    except ValueError:
        return None
    except OverflowError:  # an int beyond float64
        return math.inf


def problem(value, text: bool = True) -> str | None:
    """Why `value` is not a usable number (None when it is one); text is one unless not `text`
    (JSON, whose numbers are never strings)."""
    number = _value(value, text)
    if number is None:
        return "is not a number"
    if math.isnan(number) or (math.isinf(number) and _says_infinite(value)):
        return "is NaN or infinite"
    if not abs(number) <= LIMIT:
        return f"is out of range (beyond {LIMIT:.3g})"
    return None


def _says_infinite(value) -> bool:
    """Whether `value` is infinity itself, not a finite number too large for a float ("1e400")."""
    if isinstance(value, str):
        return value.strip().lstrip("+-").lower() in ("inf", "infinity")
    return not isinstance(value, (int, np.integer))


def number(value, where: str, name: str = "a number", error: type[UserError] = UserError,
           text: bool = True) -> float:
    """`value` (text, unless not `text`, or a JSON number) as a finite float; `error` naming
    `where`, `name` and the value otherwise."""
    reason = problem(value, text)
    if reason is not None:
        raise error(f"{where}: {name} {reason} ({shown(value)})")
    return float(value)


def numbers(fields, where: str, error: type[UserError] = UserError, text: bool = True) -> list[float]:
    """Every one of `fields` as a finite float (text only where `text`); `error` naming `where`
    and the first bad value."""
    values = list(fields) if isinstance(fields, (list, tuple)) else None
    if values is None:
        raise error(f"{where}: expected numbers, got {shown(fields)}")
    reasons = [problem(value, text) for value in values]
    if "is not a number" in reasons:
        raise error(f"{where}: expected numbers, got {' '.join(map(shown_field, values))[:80]!r}")
    for value, reason in zip(values, reasons):
        if reason is not None:
            raise error(f"{where}: a number {reason} ({shown(value)})")
    return [float(value) for value in values]


def shown_field(value) -> str:
    """A field of a text line as written (text as is, other values as :func:`shown`)."""
    return value if isinstance(value, str) else shown(value)


def bad_boxes(boxes: np.ndarray) -> np.ndarray:
    """Boolean mask [N] of boxes [N, 4] with a coordinate that is not finite in float32."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return ~(np.abs(boxes) <= LIMIT).all(axis=1)


def finite_boxes(boxes: np.ndarray, where: str, error: type[UserError] = UserError) -> np.ndarray:
    """`boxes` [N, 4] as float32 after checking every coordinate is finite there (a conversion
    such as ``x + w`` can leave float32's range); `error` naming `where` and the first bad box."""
    bad = bad_boxes(boxes)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        values = ", ".join(f"{v:.6g}" for v in np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[index].tolist())
        raise error(f"{where}: box {index} [{values}] is NaN, infinite or out of range after conversion")
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
