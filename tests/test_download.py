"""``data/download.py`` against a local HTTP server that misbehaves: responses larger than the file can be,
cut short, or slow are refused without filling the disk or leaving part files; a tarball the user placed is
used and kept; a set that verifies is not downloaded again; a tarball member stored twice is fine."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import io
import tarfile
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dl(monkeypatch):
    spec = importlib.util.spec_from_file_location("lpm_download_under_test", ROOT / "data" / "download.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module.time, "sleep", lambda s: None)  # retries without waiting
    monkeypatch.setattr(module, "MAX_BYTES", {"kodak": 64 << 10, "bsds500": 16 << 10, "tarball": 1 << 20})
    return module


class _Server:
    """Serves ``routes[path] = (body, declared_length or None, extra_bytes_to_stream)``; counts requests."""

    def __init__(self):
        self.routes: dict[str, tuple[bytes, int | None, int]] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # no Content-Length: the body ends when the connection closes

            def do_GET(self):
                outer.requests.append(self.path)
                if self.path not in outer.routes:
                    self.send_error(404)
                    return
                body, declared, extra = outer.routes[self.path]
                self.send_response(200)
                if declared is not None:
                    self.send_header("Content-Length", str(declared))
                self.end_headers()
                try:
                    self.wfile.write(body)
                    for _ in range(extra // 65536):
                        self.wfile.write(b"\0" * 65536)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _manifest(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "set.sha256"
    path.write_text("".join(f"{hashlib.sha256(b).hexdigest()}  {rel}\n" for rel, b in files.items()))
    return path, {rel: hashlib.sha256(b).hexdigest() for rel, b in files.items()}


def _files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_oversized_truncated_and_good_responses(dl, server, tmp_path, monkeypatch):
    good = b"a" * 1000
    files = {"good.png": good, "declared-huge.png": b"x", "streams-forever.png": b"y", "cut-short.png": b"z" * 500}
    manifest_file, _ = _manifest(tmp_path, files)
    server.routes = {
        "/k/good.png": (good, len(good), 0),
        "/k/declared-huge.png": (b"x", 10 << 30, 0),  # declares 10 GiB: refused before a byte is written
        "/k/streams-forever.png": (b"", None, 4 << 20),  # no length, 4 MiB of zeros: cut off at the 64 KiB cap
        "/k/cut-short.png": (b"z" * 100, 500, 0),  # closes after 100 of 500 declared bytes
    }
    monkeypatch.setattr(dl, "KODAK_BASE_URL", server.url + "/k/")
    dest = tmp_path / "dest"
    rc = dl.main(["kodak", "--dest", str(dest), "--manifest", str(manifest_file)])
    assert rc == 1
    assert _files_under(dest) == ["kodak/good.png"]  # nothing partial, nothing hidden
    assert (dest / "kodak" / "good.png").read_bytes() == good
    assert server.requests.count("/k/cut-short.png") == 3  # retried: a short read may be the network's fault
    assert server.requests.count("/k/declared-huge.png") == 1  # not retried: it cannot become right


def test_messages_name_the_reason(dl, server, tmp_path, monkeypatch, capsys):
    manifest_file, _ = _manifest(tmp_path, {"a.png": b"x", "b.png": b"y"})
    server.routes = {"/k/a.png": (b"x", 10 << 30, 0), "/k/b.png": (b"", 500, 0)}
    monkeypatch.setattr(dl, "KODAK_BASE_URL", server.url + "/k/")
    assert dl.main(["kodak", "--dest", str(tmp_path / "d"), "--manifest", str(manifest_file)]) == 1
    err = capsys.readouterr().err
    assert "declares 10737418240 bytes" in err and "closed early (500 bytes short)" in err
    assert not (tmp_path / "d" / "kodak").exists()  # the folder it made for them is gone again


def _tarball(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members:
            info = tarfile.TarInfo(f"BSR/BSDS500/data/images/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def test_bsds500_keeps_a_placed_tarball_and_skips_a_complete_set(dl, server, tmp_path, monkeypatch):
    files = {"train/1.jpg": b"one", "val/2.jpg": b"two"}
    manifest_file, _ = _manifest(tmp_path, files)
    monkeypatch.setattr(dl, "BSDS500_URL", server.url + "/BSR_bsds500.tgz")
    dest = tmp_path / "dest"
    dest.mkdir()
    # a bad copy of a member before its good one is fine once the good one verified
    placed = _tarball(dest / "BSR_bsds500.tgz", [("train/1.jpg", b"bad"), ("train/1.jpg", b"one"),
                                                 ("val/2.jpg", b"two")])
    blob = placed.read_bytes()
    assert dl.main(["bsds500", "--dest", str(dest), "--manifest", str(manifest_file)]) == 0
    assert placed.read_bytes() == blob  # the user's tarball is used and kept
    assert server.requests == []
    placed.unlink()
    assert dl.main(["bsds500", "--dest", str(dest), "--manifest", str(manifest_file)]) == 0
    assert server.requests == []  # the set verifies: nothing downloaded again
    assert _files_under(dest) == ["bsds500/train/1.jpg", "bsds500/val/2.jpg"]


def test_bsds500_download_is_bounded_and_leaves_nothing(dl, server, tmp_path, monkeypatch, capsys):
    files = {"train/1.jpg": b"one", "train/big.jpg": b"b" * 100}
    manifest_file, _ = _manifest(tmp_path, files)
    monkeypatch.setattr(dl, "BSDS500_URL", server.url + "/BSR_bsds500.tgz")
    # a member that claims to be 1 MiB (a JPEG of the set is never that large here) is refused by its header
    tgz = _tarball(tmp_path / "t.tgz", [("train/1.jpg", b"one"), ("train/big.jpg", b"\0" * (1 << 20))])
    server.routes = {"/BSR_bsds500.tgz": (tgz.read_bytes(), tgz.stat().st_size, 0)}
    dest = tmp_path / "dest"
    assert dl.main(["bsds500", "--dest", str(dest), "--manifest", str(manifest_file)]) == 1
    assert "train/big.jpg" in capsys.readouterr().err
    assert _files_under(dest) == ["bsds500/train/1.jpg"]  # no tarball, no part file
    server.routes = {"/BSR_bsds500.tgz": (b"", None, 8 << 20)}  # endless: cut off at the tarball cap
    with pytest.raises(SystemExit, match="larger than 1 MiB"):
        dl.main(["bsds500", "--dest", str(dest), "--manifest", str(manifest_file)])
    assert _files_under(dest) == ["bsds500/train/1.jpg"]


def test_an_interrupted_download_leaves_no_part_file(dl, tmp_path, monkeypatch):
    manifest_file, _ = _manifest(tmp_path, {"a.png": b"x"})

    def interrupted(url, tmp, max_bytes, attempts=3):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(dl, "fetch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dl.main(["kodak", "--dest", str(tmp_path / "d"), "--manifest", str(manifest_file)])
    assert _files_under(tmp_path / "d") == []
