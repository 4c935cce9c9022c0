"""Atomic file writes: write beside the target, then rename, so a crash never leaves half a file;
and output folders that never overwrite or delete a file the project did not write there."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from detector.common.errors import UserError

try:  # POSIX; elsewhere output folders are not locked against other processes
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


def _temporary_file(folder: Path, name: str, suffix: str) -> Path:
    """A new empty file in `folder` with a unique name, created with mode 0o666 so that the
    kernel applies the process umask (and default ACLs), as for any other new file: nothing
    reads or changes the umask, which other threads share."""
    for _ in range(100):
        path = folder / f".{name}.{uuid.uuid4().hex[:12]}.tmp{suffix}"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666))
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
        return path
    raise FileExistsError(errno.EEXIST, "no unique temporary name", str(folder))  # pragma: no cover


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto `target`.

    The suffix is kept so that writers which look at it (numpy, matplotlib) behave the same.
    On an exception the temporary file is removed and `target` is untouched. The file gets the
    permissions any new file gets (0o666 less the umask).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _temporary_file(target.parent, target.name, target.suffix)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def check_writable(folder: str | Path, what: str = "output folder") -> None:
    """Create `folder` if needed and check a file can be written in it (a unique temporary file,
    so concurrent processes never trip over each other); UserError naming the folder otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UserError(f"{folder}: {what} is not writable ({exc.strerror})") from None


def write_text(target: str | Path, text: str) -> None:
    """Atomically write `text` (UTF-8) to `target`."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(target: str | Path, data: bytes) -> None:
    """Atomically write `data` to `target`."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def fresh_folder(target: str | Path) -> Iterator[Path]:
    """A temporary folder beside `target` that becomes `target` on success, so a failure leaves
    nothing behind. `target` must not exist or be an empty folder, also at the end: a folder that
    another process filled meanwhile is never replaced (UserError naming it); nothing is deleted
    but the temporary folder."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        try:
            os.rename(tmp, target)  # atomic; replaces an empty folder only
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise UserError(f"{target}: exists and is not an empty folder (another process wrote it "
                                "meanwhile?); not overwriting it") from None
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- output folders

#: The list of the files the project wrote in an output folder, kept in that folder.
OUTPUTS_FILE = ".rcnn-outputs.json"
OUTPUTS_FORMAT = "googlenet-rcnn outputs"


class OutputFolder:
    """A folder the project writes results into (``detect --out``, ``--save-format``) that may
    hold the user's own files too. It lists what the project wrote there in :data:`OUTPUTS_FILE`,
    and never overwrites or deletes a file missing from that list: writing one raises a
    UserError naming it. Sub-folders written whole (:meth:`write_set`, e.g. ``labels/``) must hold
    only the project's files. Updates hold an exclusive lock on the folder (``flock``), so several
    processes can write into one folder at once; the last one's files win, file by file.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._saved: set[str] = set()

    # ----------------------------------------------------------------- the list and the lock

    @contextlib.contextmanager
    def locked(self) -> Iterator[set[str]]:
        """Hold the folder's lock; yield the names (relative POSIX paths) the project wrote,
        which the caller may change and which are saved on success."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            handle = os.open(self.root, os.O_RDONLY)
        except OSError as exc:
            raise UserError(f"{self.root}: output folder is not usable ({exc.strerror})") from None
        try:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX)
            owned = self._read()
            self._saved = set(owned)
            yield owned
            self._save(owned)
        finally:
            os.close(handle)  # releases the lock

    def _save(self, owned: set[str]) -> None:
        """Write the list (under the lock) when it changed since it was read or last saved."""
        if owned != self._saved:
            _write(self.root / OUTPUTS_FILE, json.dumps({"format": OUTPUTS_FORMAT, "files": sorted(owned)}, indent=1))
            self._saved = set(owned)

    def _read(self) -> set[str]:
        path = self.root / OUTPUTS_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, RecursionError) as exc:
            raise UserError(f"{path}: unreadable list of the files googlenet-rcnn wrote here ({exc}); "
                            "remove the folder's outputs and the list, or choose another output folder") from None
        files = data.get("files") if isinstance(data, dict) and data.get("format") == OUTPUTS_FORMAT else None
        if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
            raise UserError(f"{path}: not a list of the files googlenet-rcnn wrote here; "
                            "remove it and the outputs, or choose another output folder")
        return set(files)

    # ----------------------------------------------------------------- checks

    def refuse_foreign(self, names: Iterable[str], owned: set[str] | None = None) -> None:
        """UserError naming the first of `names` (relative paths) that exists but was not written
        by the project, which writing it would overwrite."""
        owned = self._read() if owned is None else owned
        for name in names:
            path = self.root / name
            if name not in owned and (path.exists() or path.is_symlink()):
                raise UserError(f"{path}: exists and was not written by googlenet-rcnn; not overwriting it "
                                "(move it away, or choose another output folder)")

    def refuse_foreign_entries(self, folder: str, owned: set[str] | None = None) -> None:
        """UserError naming the first entry of sub-folder `folder` the project did not write
        (the folder is written whole, so it may hold nothing else)."""
        owned = self._read() if owned is None else owned
        path = self.root / folder
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise UserError(f"{path}: exists and is not a folder googlenet-rcnn wrote; not writing into it")
        if not path.is_dir():
            return
        for entry in sorted(path.iterdir()):
            if f"{folder}/{entry.name}" not in owned and not _is_temporary(entry.name):
                raise UserError(f"{entry}: not written by googlenet-rcnn, in {path}, which holds this project's "
                                "result files only; not writing there (move it away, or choose another output folder)")

    # ----------------------------------------------------------------- writing

    def claim(self, names: Iterable[str]) -> None:
        """Record `names` as the project's before writing them; UserError when one exists and
        is not the project's already."""
        names = list(names)
        with self.locked() as owned:
            self.refuse_foreign(names, owned)
            owned.update(names)

    def write_text(self, name: str, text: str) -> Path:
        """Atomically write one file `name` (relative path) of the folder; see :meth:`claim`."""
        self.claim([name])
        path = self.root / name
        _write(path, text)
        return path

    def write_set(self, folder: str, files: dict[str, str]) -> list[Path]:
        """Make sub-folder `folder` hold exactly `files` ({file name: text}): each written
        atomically, those the project wrote there before and not now removed. UserError, before
        anything changes, when the sub-folder holds something the project did not write."""
        with self.locked() as owned:
            self.refuse_foreign_entries(folder, owned)
            names = {f"{folder}/{name}": text for name, text in files.items()}
            owned.update(names)
            self._save(owned)  # claimed before written: a crash leaves no file the list lacks
            for name, text in names.items():
                _write(self.root / name, text)
            for name in sorted(owned):
                if name.startswith(f"{folder}/") and "/" not in name[len(folder) + 1:] and name not in names:
                    (self.root / name).unlink(missing_ok=True)
                    owned.discard(name)
        return [self.root / name for name in names]


def _write(path: Path, text: str) -> None:
    try:
        write_text(path, text)
    except OSError as exc:
        raise UserError(f"{path}: cannot write it ({exc.strerror})") from None


def _is_temporary(name: str) -> bool:
    """Whether `name` is an atomic write's temporary file (another process's, or a crash's)."""
    return name.startswith(".") and ".tmp" in name
