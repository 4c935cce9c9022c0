"""`rcnn data download`: against an HTTP server on 127.0.0.1 serving tiny generated archives (never
the real network) — layout the configs read, checksums, resuming with Range, no overwriting, offline."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import socket
import stat
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from detector.cli import main
from detector.config import load_config
from detector.data import download
from detector.data.datasets import load_dataset
from tests.synthetic import make_voc_dataset


class Handler(BaseHTTPRequestHandler):
    """GET with single-range support; the server's `cut` sends only that many bytes of a path's
    next response, `ignore_range` answers every request in full."""

    def do_GET(self) -> None:
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") and not server.ignore_range else 0
        if start >= len(data) > 0:
            self.send_response(416)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:start + server.cut.pop(self.path, len(data))])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.requests, httpd.cut, httpd.ignore_range = {}, [], {}, False
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def tar_of(folder: Path, arcname: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as handle:
        handle.add(folder, arcname=arcname)
    return buffer.getvalue()


def serve(server, monkeypatch, name: str, archives: dict[str, bytes], path: str = "") -> None:
    """Serve `archives` (file name -> bytes) and point DOWNLOADS[name] at them with their MD5s."""
    entries = []
    for filename, data in archives.items():
        server.files[f"{path}/{filename}"] = data
        entries.append(download.Archive(f"{server.base}{path}/{filename}", hashlib.md5(data).hexdigest()))
    spec = dataclasses.replace(download.DOWNLOADS[name], archives=tuple(entries))
    monkeypatch.setitem(download.DOWNLOADS, name, spec)


@pytest.fixture
def voc_archives(tmp_path_factory) -> dict[str, bytes]:
    """VOC 2007's two archives in miniature: VOCdevkit/VOC2007 with a trainval and a test split."""
    archives = {}
    for filename, split in (("VOCtrainval_06-Nov-2007.tar", "trainval"), ("VOCtest_06-Nov-2007.tar", "test")):
        root = tmp_path_factory.mktemp(split)
        make_voc_dataset(root / "VOCdevkit" / "VOC2007", splits={split: 2}, seed=len(split))
        archives[filename] = tar_of(root / "VOCdevkit", "VOCdevkit")
    return archives


def error_line(err: str) -> str:
    """The one-line error at the end of stderr (progress bars come before it)."""
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and sum("error" in line for line in lines) == 1, err
    return lines[-1]


def _tiny_reading(data_root: str):
    """The tiny config (square / disc classes) reading `data_root`."""
    return load_config("tiny", [f"data.root={data_root}"]).data


def test_voc2007_lands_where_its_config_reads_it_and_is_never_overwritten(
        server, monkeypatch, voc_archives, tmp_path, capsys):
    serve(server, monkeypatch, "voc2007", voc_archives)
    monkeypatch.chdir(tmp_path)
    assert main(["data", "download", "voc2007"]) == 0
    printed = capsys.readouterr().out
    assert "voc2007: ready in data/VOCdevkit/VOC2007; use it with\n  rcnn run --config voc2007\n" in printed
    configured = load_config("voc2007").data.root
    assert [len(load_dataset(_tiny_reading(configured), s).records) for s in ("trainval", "test")] == [2, 2]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["VOCdevkit", "downloads"]  # no staging left
    assert len(server.requests) == 2

    assert main(["data", "download", "voc2007"]) == 2
    assert "data/VOCdevkit/VOC2007 already exists; not overwriting it" in capsys.readouterr().err
    marker = tmp_path / "data" / "VOCdevkit" / "VOC2007" / "mine.txt"
    marker.write_text("kept")
    assert main(["data", "download", "voc2007"]) == 2 and marker.read_text() == "kept"

    assert main(["data", "download", "voc2007", "--root", "other", "--delete"]) == 0
    assert len(server.requests) == 4 and not list((tmp_path / "other" / "downloads").iterdir())
    assert "--set data.root=other/VOCdevkit/VOC2007" in capsys.readouterr().out


def test_archives_downloaded_before_are_reused(server, monkeypatch, voc_archives, tmp_path, capsys):
    serve(server, monkeypatch, "voc2007", voc_archives)
    assert main(["data", "download", "voc2007", "--root", str(tmp_path)]) == 0
    (tmp_path / "VOCdevkit").rename(tmp_path / "moved")
    assert main(["data", "download", "voc2007", "--root", str(tmp_path)]) == 0
    assert len(server.requests) == 2 and "downloaded before, checksum ok" in capsys.readouterr().err
    assert (tmp_path / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "test.txt").is_file()


def test_an_interrupted_download_resumes_with_a_range_request(server, monkeypatch, voc_archives, tmp_path, capsys):
    serve(server, monkeypatch, "voc2007", voc_archives)
    name = "VOCtest_06-Nov-2007.tar"
    half = len(voc_archives[name]) // 2
    server.cut[f"/{name}"] = half
    assert main(["data", "download", "voc2007", "--root", str(tmp_path)]) == 2
    err = error_line(capsys.readouterr().err)
    assert f"{name}: download interrupted at {half} of" in err and "run again to resume" in err
    part = tmp_path / "downloads" / f"{name}.part"
    assert part.stat().st_size == half and not (tmp_path / "VOCdevkit").exists()

    assert main(["data", "download", "voc2007", "--root", str(tmp_path)]) == 0
    assert server.requests[-1] == (f"/{name}", f"bytes={half}-")
    assert (tmp_path / "downloads" / name).read_bytes() == voc_archives[name] and not part.exists()


def test_a_server_ignoring_the_range_restarts_the_file(server, monkeypatch, voc_archives, tmp_path):
    serve(server, monkeypatch, "voc2007", voc_archives)
    server.ignore_range = True
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "VOCtest_06-Nov-2007.tar.part").write_bytes(b"stale bytes of another attempt")
    assert main(["data", "download", "voc2007", "--root", str(tmp_path)]) == 0
    assert (downloads / "VOCtest_06-Nov-2007.tar").read_bytes() == voc_archives["VOCtest_06-Nov-2007.tar"]


def test_a_checksum_mismatch_removes_the_download(server, monkeypatch, voc_archives, tmp_path, capsys):
    serve(server, monkeypatch, "voc2007", voc_archives)
    spec = download.DOWNLOADS["voc2007"]
    wrong = dataclasses.replace(spec.archives[0], md5="0" * 32)
    monkeypatch.setitem(download.DOWNLOADS, "voc2007", dataclasses.replace(spec, archives=(wrong, spec.archives[1])))
    assert main(["data", "download", "voc2007", "--root", str(tmp_path)]) == 2
    err = error_line(capsys.readouterr().err)
    assert f"is not the published {'0' * 32}; removed the download, run again" in err
    assert list((tmp_path / "downloads").iterdir()) == [] and not (tmp_path / "VOCdevkit").exists()


def test_offline_is_one_line_and_exit_2(monkeypatch, tmp_path, capsys):
    with socket.socket() as probe:  # a local port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["data", "download", "voc2012", "--root", str(tmp_path), "--mirror", f"http://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"127.0.0.1:{port}/VOCtrainval_11-May-2012.tar: cannot connect" in err
    assert "offline?" in err and not (tmp_path / "downloads").exists()


def test_missing_file_on_the_server_is_an_http_error(server, tmp_path, capsys):
    assert main(["data", "download", "voc2012", "--root", str(tmp_path), "--mirror", server.base]) == 2
    assert "VOCtrainval_11-May-2012.tar: HTTP 404" in capsys.readouterr().err


def test_coco2017_val_from_a_mirror_reads_with_the_coco_config(server, monkeypatch, tmp_path, capsys):
    images, annotations = io.BytesIO(), io.BytesIO()
    with zipfile.ZipFile(images, "w") as handle:
        handle.writestr("val2017/000000000001.jpg", b"jpeg bytes")
    instances = {"images": [{"id": 1, "file_name": "000000000001.jpg", "width": 64, "height": 48}],
                 "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 20, 10], "area": 200,
                                  "iscrowd": 0}],
                 "categories": [{"id": 1, "name": "person"}]}
    with zipfile.ZipFile(annotations, "w") as handle:
        handle.writestr("annotations/instances_val2017.json", json.dumps(instances))
    serve(server, monkeypatch, "coco2017-val", {"val2017.zip": images.getvalue(),
                                                 "annotations_trainval2017.zip": annotations.getvalue()}, path="/m")
    assert main(["data", "download", "coco2017-val", "--root", str(tmp_path), "--mirror", f"{server.base}/m/"]) == 0
    assert [path for path, _ in server.requests] == ["/m/val2017.zip", "/m/annotations_trainval2017.zip"]
    assert f"--set data.root={tmp_path / 'coco'}" in capsys.readouterr().out
    data = dataclasses.replace(load_config("coco").data, root=str(tmp_path / "coco"), class_file="", classes=["person"])
    (record,) = load_dataset(data, "val2017").records
    assert record.path.read_bytes() == b"jpeg bytes" and record.boxes.tolist() == [[2, 3, 22, 13]]


def test_archive_members_outside_the_target_are_refused(server, monkeypatch, tmp_path, capsys):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as handle:
        member = tarfile.TarInfo("../escaped.txt")
        member.size = 4
        handle.addfile(member, io.BytesIO(b"evil"))
    serve(server, monkeypatch, "voc2012", {"VOCtrainval_11-May-2012.tar": buffer.getvalue()})
    assert main(["data", "download", "voc2012", "--root", str(tmp_path / "root")]) == 2
    assert "member '../escaped.txt' would be written outside the target folder" in capsys.readouterr().err
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "root" / ".voc2012.unpacking").exists()


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as handle:
        for member, data in members:
            member.size = len(data)
            handle.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def _member(name: str, type=tarfile.REGTYPE, **fields) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = type
    for key, value in fields.items():
        setattr(member, key, value)
    return member


HOSTILE = {
    "absolute symlink": (_member("VOCdevkit/passwd", tarfile.SYMTYPE, linkname="/etc/passwd"),
                         "'VOCdevkit/passwd' is a symbolic link to '/etc/passwd'"),
    "relative symlink out": (_member("VOCdevkit/up", tarfile.SYMTYPE, linkname="../../.."),
                             "'VOCdevkit/up' is a symbolic link to '../../..'"),
    "hardlink out": (_member("VOCdevkit/hard", tarfile.LNKTYPE, linkname="../outside.txt"),
                     "'VOCdevkit/hard' is a hard link to '../outside.txt'"),
    "char device": (_member("VOCdevkit/null", tarfile.CHRTYPE, devmajor=1, devminor=3),
                    "'VOCdevkit/null' is a character device"),
    "block device": (_member("VOCdevkit/disk", tarfile.BLKTYPE, devmajor=8, devminor=0),
                     "'VOCdevkit/disk' is a block device"),
    "fifo": (_member("VOCdevkit/pipe", tarfile.FIFOTYPE), "'VOCdevkit/pipe' is a FIFO"),
}


@pytest.mark.parametrize("data_filter", [True, False], ids=["with tarfile.data_filter", "without (Python < 3.10.12)"])
@pytest.mark.parametrize("case", list(HOSTILE))
def test_links_devices_and_fifos_in_archives_are_refused(tmp_path, monkeypatch, case, data_filter):
    """Without the data filter an absolute symlink, a hardlink out and a char device were created;
    with it, 3.11.7's filter is the one the 2025 fixes (CVE-2025-4517 and others) corrected."""
    if not data_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    (tmp_path / "outside.txt").write_text("theirs")
    member, message = HOSTILE[case]
    archive = tmp_path / "a.tar"
    archive.write_bytes(_tar((_member("VOCdevkit/ok.txt"), b"fine"), (member, b"")))
    target = tmp_path / "unpacked"
    with pytest.raises(download.UserError, match=re.escape(f"member {message}; only files and folders")):
        download.extract(archive, target)
    assert not target.exists()  # refused before anything was written
    assert (tmp_path / "outside.txt").read_text() == "theirs"


@pytest.mark.parametrize("data_filter", [True, False], ids=["with tarfile.data_filter", "without"])
def test_unpacked_files_get_plain_permissions(tmp_path, monkeypatch, data_filter):
    if not data_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    archive = tmp_path / "a.tar"
    archive.write_bytes(_tar((_member("d", tarfile.DIRTYPE, mode=0o7777), b""), (_member("d/run", mode=0o6777), b"x"),
                             (_member("d/text", mode=0o666, uid=4242, gid=4242), b"y")))
    download.extract(archive, tmp_path / "out")
    modes = {name: stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) for name in ("d", "d/run", "d/text")}
    assert modes == {"d": 0o755, "d/run": 0o755, "d/text": 0o644}
    assert (tmp_path / "out" / "d" / "text").stat().st_uid == os.getuid()


def test_a_hostile_archive_is_one_line_in_the_cli(server, monkeypatch, tmp_path, capsys):
    serve(server, monkeypatch, "voc2012", {"VOCtrainval_11-May-2012.tar": _tar((HOSTILE["char device"][0], b""))})
    assert main(["data", "download", "voc2012", "--root", str(tmp_path / "root")]) == 2
    line = error_line(capsys.readouterr().err)
    assert "'VOCdevkit/null' is a character device; only files and folders are unpacked, refused" in line
    assert not (tmp_path / "root" / ".voc2012.unpacking").exists()
