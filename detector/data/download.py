"""Public data sets' official archives: download (resumable, MD5-checked) and safe unpacking
into the layout the shipped configs read. ``rcnn data download NAME`` is the command.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from detector.common.errors import UserError

CHUNK = 1 << 20  #: bytes read per network call
TIMEOUT_S = 30.0  #: seconds without data before a download counts as interrupted


@dataclass(frozen=True)
class Archive:
    """One official archive and its published MD5."""

    url: str
    md5: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Download:
    """A data set: its archives, the sub-folder of --root they unpack into, the paths (relative to
    --root) that unpacking provides (none may exist beforehand), and how a shipped config reads it."""

    archives: tuple[Archive, ...]
    unpack_into: str
    provides: tuple[str, ...]
    data_root: str  #: data.root for it, relative to --root
    config: str  #: the shipped config that reads it
    command: str  #: a command line that uses it


VOC = "http://host.robots.ox.ac.uk/pascal/VOC"
COCO = "http://images.cocodataset.org"
DOWNLOADS = {
    "voc2007": Download(
        (Archive(f"{VOC}/voc2007/VOCtrainval_06-Nov-2007.tar", "c52e279531787c972589f7e41ab4ae64"),
         Archive(f"{VOC}/voc2007/VOCtest_06-Nov-2007.tar", "b6e924de25625d8de591ea690078ad9f")),
        "", ("VOCdevkit/VOC2007",), "VOCdevkit/VOC2007", "voc2007", "rcnn run --config voc2007"),
    "voc2012": Download(
        (Archive(f"{VOC}/voc2012/VOCtrainval_11-May-2012.tar", "6cd6e144f989b92b3379bac3b3de84fd"),),
        "", ("VOCdevkit/VOC2012",), "VOCdevkit/VOC2012", "voc2007",
        "rcnn run --config voc2007 --set data.train_split=train --set data.test_split=val --set eval.metric=voc10"),
    "coco2017-val": Download(
        (Archive(f"{COCO}/zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80"),
         Archive(f"{COCO}/annotations/annotations_trainval2017.zip", "f4bbac642086de4f52a3fdda2de5fa2c")),
        "coco", ("coco/val2017", "coco/annotations"), "coco", "coco",
        "rcnn eval --config coco --split val2017 --weights MODEL"),
}


def refuse_existing(spec: Download, root: Path) -> None:
    """UserError when a path the data set would provide exists already."""
    for relative in spec.provides:
        if (root / relative).exists():
            raise UserError(f"{root / relative} already exists; not overwriting it (remove it, or give another --root)")


# --------------------------------------------------------------------------- download


def fetch(archive: Archive, folder: Path, mirror: str | None = None) -> Path:
    """The archive in `folder`, downloaded (resuming <file>.part) unless a checked copy is there."""
    url = f"{mirror.rstrip('/')}/{archive.filename}" if mirror else archive.url
    target = folder / archive.filename
    if target.is_file() and md5(target) == archive.md5:
        print(f"{target}: downloaded before, checksum ok", file=sys.stderr)
        return target
    part = target.with_name(target.name + ".part")
    download(url, part)
    digest = md5(part)
    if digest != archive.md5:
        part.unlink()
        raise UserError(f"{url}: MD5 {digest} is not the published {archive.md5}; removed the download, run again")
    part.replace(target)
    return target


def download(url: str, part: Path) -> None:
    """Append `url`'s bytes to `part`, asking for those after its current size (HTTP Range)."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing after offset: the part is complete; the checksum decides
            return
        raise UserError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"{url}: cannot connect ({reason}); offline? Put the archive in {part.parent} "
                        "by other means and rerun, or use --mirror") from None
    with response:
        if response.status != 206:  # the server ignored the range: start again
            offset = 0
        _copy(response, part, offset, url)


def _copy(response, part: Path, offset: int, url: str) -> None:
    """Stream the response into `part` from `offset` with a progress bar; UserError if it ends early."""
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length else None
    done = offset
    part.parent.mkdir(parents=True, exist_ok=True)
    with open(part, "ab" if offset else "wb") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name[:-5]) as bar:
        try:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
                done += len(chunk)
        except (OSError, http.client.HTTPException) as exc:
            raise UserError(f"{url}: download interrupted at {done} bytes ({exc}); run again to resume") from None
    if total is not None and done < total:
        raise UserError(f"{url}: download interrupted at {done} of {total} bytes; run again to resume")


def md5(path: Path) -> str:
    """Hex MD5 of a file's bytes."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- unpacking


def unpack(spec: Download, archives: list[Path], root: Path, staging: Path) -> None:
    """Unpack every archive into `staging`, then move the provided paths into `root`."""
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for archive in archives:
            extract(archive, staging / spec.unpack_into)
        refuse_existing(spec, root)
        for relative in spec.provides:
            if not (staging / relative).exists():
                raise UserError(f"{', '.join(map(str, archives))}: no {relative} inside; not the expected archives")
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (staging / relative).rename(root / relative)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def extract(archive: Path, folder: Path) -> None:
    """Unpack a tar or zip archive into `folder`. Only regular files and folders are unpacked, at
    names inside `folder`: an absolute or ``..`` name, a symbolic or hard link, a device, a FIFO
    or any other member type is refused (UserError naming it) before anything is written, on
    every Python (tarfile's ``data`` filter is applied on top where it exists, but is not relied
    on: 3.10-3.13 before the 2025 fixes let links through it). Tar members get plain
    permissions (no set-id bits, nothing group- or world-writable) and the current user as owner.
    """
    print(f"unpacking {archive.name}", file=sys.stderr)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as handle:  # zipfile writes links as plain files
                _check_members(archive, handle.namelist())
                handle.extractall(folder)
        else:
            with tarfile.open(archive) as handle:
                members = _safe_members(archive, handle.getmembers())
                handle.extractall(folder, members=members,
                                  **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    except (tarfile.TarError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(f"{archive}: cannot unpack it ({exc})") from None


def _check_members(archive: Path, names: list[str]) -> None:
    for name in names:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or "\0" in name:
            raise UserError(f"{archive}: member {name!r} would be written outside the target folder; refused")


#: tar member types by their tarfile test, as messages name them
_KINDS = (("issym", "a symbolic link"), ("islnk", "a hard link"), ("ischr", "a character device"),
          ("isblk", "a block device"), ("isfifo", "a FIFO"))


def _safe_members(archive: Path, members: list[tarfile.TarInfo]) -> list[tarfile.TarInfo]:
    """`members` checked (names as :func:`_check_members`; regular files and folders only) and
    given plain permissions and the current user as owner; UserError naming the first refused."""
    _check_members(archive, [member.name for member in members])
    uid, gid = (os.getuid(), os.getgid()) if hasattr(os, "getuid") else (0, 0)
    for member in members:
        if not (member.isreg() or member.isdir()):
            kind = next((text for test, text in _KINDS if getattr(member, test)()), f"of tar type {member.type!r}")
            target = f" to {member.linkname!r}" if member.issym() or member.islnk() else ""
            raise UserError(f"{archive}: member {member.name!r} is {kind}{target}; only files and folders are "
                            "unpacked, refused")
        owner = 0o700 if member.isdir() or member.mode & 0o100 else 0o600
        member.mode = (member.mode & 0o755 & (0o777 if owner == 0o700 else 0o666)) | owner
        member.uid, member.gid, member.uname, member.gname = uid, gid, "", ""
    return members
