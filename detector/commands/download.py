"""Download a public data set's official archives and unpack them where the shipped configs read it.

Each archive goes to <root>/downloads/ (a partial <file>.part resumes with an HTTP Range request,
so rerun after an interruption), is checked against its published MD5 and unpacked; the data set
then moves into place under <root>. An existing copy is never overwritten. Archives are kept
(a rerun reuses them) unless --delete is given.

  voc2007       VOC 2007 trainval + test (0.9 GB)   -> <root>/VOCdevkit/VOC2007   (--config voc2007)
  voc2012       VOC 2012 trainval (1.9 GB)          -> <root>/VOCdevkit/VOC2012
  coco2017-val  COCO val2017 images + 2017 annotations (1.0 GB) -> <root>/coco/{val2017,annotations}
                                                       (--config coco --split val2017)

examples:
  rcnn data download voc2007
  rcnn data download coco2017-val --root /datasets --delete
  rcnn data download voc2012 --mirror https://pjreddie.com/media/files
"""
from __future__ import annotations

import argparse
from pathlib import Path

from detector.config import load_config
from detector.data.download import DOWNLOADS, Download, fetch, refuse_existing, unpack


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(DOWNLOADS), help="data set to download")
    parser.add_argument("--root", default="data", help="folder the shipped configs' data.root paths start from")
    parser.add_argument("--mirror", default=None, metavar="URL",
                        help="fetch the archives (same file names) from this base URL instead of the official host")
    parser.add_argument("--delete", action="store_true", help="delete the archives once unpacked")


def run(args: argparse.Namespace) -> int:
    spec, root = DOWNLOADS[args.name], Path(args.root)
    refuse_existing(spec, root)
    archives = [fetch(archive, root / "downloads", args.mirror) for archive in spec.archives]
    unpack(spec, archives, root, root / f".{args.name}.unpacking")
    if args.delete:
        for archive in archives:
            archive.unlink()
    print(f"{args.name}: ready in {', '.join(str(root / p) for p in spec.provides)}; use it with\n  {usage(spec, root)}")
    return 0


def usage(spec: Download, root: Path) -> str:
    """spec.command, with a data.root override when the config does not read it from `root`."""
    where = root / spec.data_root
    same = Path(load_config(spec.config).data.root) == where
    return spec.command if same else f"{spec.command} --set data.root={where}"
