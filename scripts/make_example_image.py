#!/usr/bin/env python3
"""Write the shipped example image, ``examples/chelsea.jpg``.

It is "Chelsea the cat" (451x300 px), the photograph that scikit-image (a dependency) installs
inside its package as ``skimage/data/chelsea.png`` and returns from ``skimage.data.chelsea()``
without a download; its docstring states: "No copyright restrictions. CC0 by the photographer
(Stefan van der Walt)." This script re-encodes it as a JPEG (quality 90).

Usage: python scripts/make_example_image.py [--out examples/chelsea.jpg]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image
from skimage.data import chelsea

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "examples" / "chelsea.jpg", help="JPEG file to write")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(chelsea()).save(args.out, format="JPEG", quality=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
