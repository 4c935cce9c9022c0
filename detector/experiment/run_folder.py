"""Run folders of ``rcnn run``: content keys, stage manifests, free-space checks and the run log.

A stage unit is complete when ``stages/<unit>.json``, written atomically after its outputs,
records the key of its inputs and the SHA-1 of each output file (:class:`RunFolder`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from detector.common.atomic import check_writable, write_bytes, write_text
from detector.common.distributed import DistContext, broadcast, gathered
from detector.common.errors import UserError
from detector.data.images import file_digest

log = logging.getLogger(__name__)

MIN_FREE_BYTES = 512 * 2**20  #: refuse to start with less free space in the run folder


def content_key(*parts: Any) -> str:
    """16 hex digits of SHA-1 over JSON-able `parts`."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(records: list, name: str, classes: list[str]) -> str:
    """Content key of a split: class list, image ids, image bytes and annotations."""
    digest = hashlib.sha1(json.dumps([name, classes]).encode())
    for record in records:
        try:
            image = file_digest(record.path, length=40)
        except OSError as exc:
            raise UserError(f"{record.path}: image not readable ({exc.strerror})") from None
        digest.update(f"{record.image_id}\0{image}".encode())
        for array in (record.boxes, record.labels, record.ignore):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- manifests


@dataclass
class Manifest:
    """A finished stage unit: its input key, outputs (path relative to the run folder -> SHA-1)
    and facts worth reporting (counts, seconds)."""

    unit: str
    key: str
    outputs: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class RunFolder:
    """The run folder and its stage manifests."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def manifest_file(self, unit: str) -> Path:
        return self.root / "stages" / f"{unit}.json"

    def valid(self, unit: str, key: str) -> Manifest | None:
        """The unit's manifest when it was made for `key` and its outputs are intact, else None."""
        path = self.manifest_file(unit)
        if not path.is_file():
            return None
        try:
            manifest = Manifest(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            log.warning("%s: unreadable manifest (%s); redoing %s", path, exc, unit)
            return None
        if manifest.key != key:
            log.info("%s: inputs changed since it ran; redoing it", unit)
            return None
        for relative, digest in manifest.outputs.items():
            output = self.root / relative
            if not output.is_file() or file_digest(output, length=40) != digest:
                log.warning("%s: %s is missing or changed; redoing %s", path, output, unit)
                return None
        return manifest

    def complete(self, unit: str, key: str, outputs: list[Path], info: dict[str, Any]) -> Manifest:
        """Record the unit as done (atomically, after its outputs)."""
        digests = {str(p.relative_to(self.root)): file_digest(p, length=40) for p in outputs}
        manifest = Manifest(unit, key, digests, info)
        write_text(self.manifest_file(unit), json.dumps(dataclasses.asdict(manifest), indent=2) + "\n")
        return manifest


def check_run_folder(root: Path, min_free: int = MIN_FREE_BYTES) -> None:
    """Raise UserError unless `root` can be created, written and has `min_free` bytes free."""
    check_writable(root, "run folder")
    free = shutil.disk_usage(root).free
    if free < min_free:
        raise UserError(f"{root}: only {free / 2**20:.0f} MiB free, need at least {min_free / 2**20:.0f} MiB")


def markdown_summary(name: str, evaluations: dict[str, Manifest], manifests: dict[str, dict]) -> str:
    """report.md of a run: mAP of every evaluated model and split, then every stage unit."""
    lines = [f"# {name}", "", "| evaluation | metric | mAP |", "|---|---|---|"]
    for unit, manifest in evaluations.items():
        scores = {manifest.info["metric"]: manifest.info["mAP"], **manifest.info.get("extra", {})}
        lines += [f"| {unit.removeprefix('evaluate-')} | {metric} | {value:.4f} |" for metric, value in scores.items()]
    lines += _error_table(evaluations)
    lines += ["", "| stage | key | seconds | facts |", "|---|---|---|---|"]
    for unit, manifest in manifests.items():
        info = dict(manifest["info"])
        seconds = info.pop("seconds", "")
        facts = ", ".join(f"{k} {v}" for k, v in info.items() if k not in ("mAP", "metric", "extra", "errors"))
        lines.append(f"| {unit} | {manifest['key']} | {seconds} | {facts} |")
    return "\n".join(lines) + "\n"


def _error_table(evaluations: dict[str, Manifest]) -> list[str]:
    """Markdown lines: the AP each error type costs (primary metric) per evaluation, if recorded."""
    rows = {unit: m.info["errors"] for unit, m in evaluations.items() if m.info.get("errors")}
    if not rows:
        return []
    types = list(next(iter(rows.values())))
    lines = ["", "AP gained by fixing each error type (TIDE oracles; eval/<split>/report.md has the details):", "",
             "| evaluation | " + " | ".join(types) + " |", "|---|" + "---|" * len(types)]
    for unit, gains in rows.items():
        cells = ["n/a" if gains.get(t) is None else f"+{gains[t]:.4f}" for t in types]
        lines.append(f"| {unit.removeprefix('evaluate-')} | " + " | ".join(cells) + " |")
    return lines


@contextlib.contextmanager
def logging_to(path: Path) -> Iterator[None]:
    """Also append this process's log records to `path` while the body runs."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def share_files(root: Path, outputs: dict[str, str], context: DistContext, stage: str) -> None:
    """Under torchrun, copy rank 0's version of each output (path relative to `root` -> SHA-1)
    to the ranks whose copy is missing or differs, over the process group (no shared disk)."""
    lacking = [] if context.is_main else [  # rank 0's copies are the ones recorded in `outputs`
        relative for relative, digest in outputs.items()
        if not (root / relative).is_file() or file_digest(root / relative, length=40) != digest]
    wanted = sorted(set().union(*gathered(lacking, context, stage, everywhere=True)))
    for relative in wanted:
        data = broadcast((root / relative).read_bytes() if context.is_main else None, context, stage)
        if relative in lacking:
            write_bytes(root / relative, data)
