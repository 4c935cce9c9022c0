"""Per-step or per-epoch training logs as CSV files that survive an interrupted, resumed run."""
from __future__ import annotations

import csv
from pathlib import Path

from detector.common.atomic import write_text


class CsvLog:
    """An append-only CSV with columns `fields`, the first a step counter (iteration, epoch).
    Opened at step `start` of a resumed run it keeps the rows up to `start` and drops later ones
    (written after the checkpoint the run resumes from); `last` is the last row kept or written."""

    def __init__(self, path: Path, fields: tuple[str, ...], start: int) -> None:
        self.path, self.fields = path, fields
        rows = []
        if path.is_file() and start > 0:
            with path.open() as handle:
                rows = [r for r in csv.DictReader(handle) if int(r[fields[0]]) <= start]
        self.last = {k: float(v) for k, v in rows[-1].items()} if rows else {}
        write_text(path, "\n".join([",".join(fields)] + [",".join(r[f] for f in fields) for r in rows]) + "\n")

    def write(self, values: dict[str, float]) -> None:
        """Append one row; `values` holds every field (the counter too)."""
        self.last = values
        with self.path.open("a") as handle:
            handle.write(",".join([str(int(values[self.fields[0]]))] + [f"{values[f]:.6g}" for f in self.fields[1:]]) + "\n")
