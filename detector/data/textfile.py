"""Whitespace-separated text files (result lists, YOLO label files): lines read with their numbers
and checked field counts, fields parsed with messages naming ``file:line``, numbers written back in
their shortest exact form.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from detector.common.errors import UserError
from detector.data import checked


def lines(path: Path, layout: str, hint: str = "") -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-empty line of text file `path`, each holding the fields of
    `layout` (any number for an empty layout); a UserError names ``path:line`` otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read it as text ({exc})") from None
    count = len(layout.split())
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if fields and count and len(fields) != count:
            raise UserError(f"{path}:{number}: expected {count} fields '{layout}'{hint}, got {line.strip()[:80]!r}")
        if fields:
            yield number, fields


def numbers(fields: list, where: str, error: type[UserError] = UserError, text: bool = True) -> list[float]:
    """`fields` as finite floats (:func:`detector.data.checked.numbers`, the one checked path); an
    `error` naming `where` when one is not a number (text is one only where `text`), is NaN,
    infinite or out of range."""
    return checked.numbers(fields, where, error, text)


def integer(field: str, where: str, name: str) -> int:
    """`field` as an int; a UserError naming `where` and the field's `name` otherwise."""
    try:
        return int(field)
    except ValueError:
        raise UserError(f"{where}: {name} {field!r} is not a whole number") from None


def text_rows(*columns) -> list[str]:
    """Lines of space-separated columns (numbers in their shortest exact form), one per row."""
    return [" ".join(row) for row in zip(*(np.asarray(c).astype(str) for c in columns))]
