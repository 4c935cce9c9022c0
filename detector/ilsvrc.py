"""``python -m detector.ilsvrc``: the older name of ``rcnn split-val`` (same options), kept working."""
from __future__ import annotations

import sys

from detector.cli import main as rcnn_main


def main(argv: list[str] | None = None) -> int:
    """``rcnn split-val`` with `argv` (default: this process's arguments)."""
    return rcnn_main(["split-val", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
