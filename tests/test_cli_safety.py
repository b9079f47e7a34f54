"""Careless commands must not lose data (issue 10): every refusal is one line ``lpm: error: <path>: ...``,
exit status 2, the files already there stay byte-identical, and no temporary file is left behind."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lpm import fileformat, fsutil
from lpm.cli import main

pytestmark = pytest.mark.usefixtures("torch_single_thread")

MODEL = ("--model", "tiny-smoke")


def _image(path: Path, h: int = 24, w: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _snapshot(folder: Path) -> dict:
    """Everything in ``folder`` (one level): bytes of files, targets of links, kinds of the rest."""
    snap = {}
    for p in sorted(folder.iterdir()):
        mode = p.lstat().st_mode
        if stat.S_ISLNK(mode):
            snap[p.name] = ("link", os.readlink(p))
        elif stat.S_ISREG(mode):
            snap[p.name] = ("file", p.read_bytes())
        else:
            snap[p.name] = ("dir" if stat.S_ISDIR(mode) else "special", None)
    return snap


def _refused(rc: int, err: str, path: object) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpm: error: "), err
    assert str(path) in lines[0], err
    assert ".tmp" not in err and "Traceback" not in err


@pytest.fixture(scope="module")
def stream(tmp_path_factory) -> bytes:
    """A valid .lpm file of the tiny-smoke checkpoint."""
    folder = tmp_path_factory.mktemp("stream")
    src = _image(folder / "s.png")
    assert main(["compress", str(src), str(folder / "s.lpm"), *MODEL]) == 0
    return (folder / "s.lpm").read_bytes()


@pytest.fixture
def files(tmp_path, stream, monkeypatch) -> Path:
    """tmp_path (also the working directory) with in.png, in.lpm, a directory d/ and a file old.lpm."""
    monkeypatch.chdir(tmp_path)
    _image(tmp_path / "in.png")
    (tmp_path / "in.lpm").write_bytes(stream)
    (tmp_path / "d").mkdir()
    (tmp_path / "old.lpm").write_bytes(b"precious old contents")
    return tmp_path


# --- 4. one line instead of a traceback ------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,path",
    [
        (("compress", "d", "o.lpm"), "d"),
        (("compress", "in.png", "d"), "d"),
        (("decompress", "d", "o.png"), "d"),
        (("info", "d"), "d"),
    ],
    ids=["compress-in", "compress-out", "decompress-in", "info"],
)
def test_directory_as_input_or_output(files, capsys, argv, path):
    (files / "d.png").mkdir()  # a directory with an image's name, as decompress output
    before = _snapshot(files)
    rc, _, err = _run(capsys, *argv, *([] if argv[0] == "info" else MODEL))
    _refused(rc, err, path)
    assert "directory" in err.lower()
    rc, _, err = _run(capsys, "decompress", "in.lpm", "d.png", *MODEL, "--force")
    _refused(rc, err, "d.png")
    assert _snapshot(files) == before


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS], ids=["read-only-folder", "read-only-fs"])
@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_unwritable_folder(files, capsys, monkeypatch, code, command):
    ro = files / "ro"
    ro.mkdir()
    (ro / "keep.txt").write_text("keep")
    real_open = os.open

    def denying_open(path, flags, *args, **kwargs):  # root ignores chmod: make the kernel's answer explicit
        if flags & os.O_CREAT and os.path.dirname(os.path.abspath(path)) == str(ro):
            raise OSError(code, os.strerror(code), path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", denying_open)
    ro.chmod(0o555)
    try:
        before = _snapshot(ro)
        src, out = ("in.png", "ro/out.lpm") if command == "compress" else ("in.lpm", "ro/out.png")
        rc, _, err = _run(capsys, command, src, out, *MODEL)
        _refused(rc, err, out)
        assert _snapshot(ro) == before
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_full_disk_keeps_the_old_file_and_leaves_no_temporary(files, capsys, monkeypatch, command):
    real_write, real_fsync = os.write, os.fsync

    def is_temporary(fd: int) -> bool:
        return os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp")

    def full_write(fd, data):  # ENOSPC after half the bytes, for temporaries only
        if is_temporary(fd):
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    def full_fsync(fd):  # where writes are buffered, the full disk shows at fsync (delayed allocation, NFS)
        if is_temporary(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd")
    monkeypatch.setattr(os, "write", full_write)
    monkeypatch.setattr(os, "fsync", full_fsync)
    src, out = ("in.png", "old.lpm") if command == "compress" else ("in.lpm", "old.png")
    (files / "old.png").write_bytes(b"precious old png")
    before = _snapshot(files)
    for target, force in ((f"new{out[-4:]}", []), (out, ["--force"])):  # a new file; replacing an old one
        rc, _, err = _run(capsys, command, src, target, *MODEL, *force)
        _refused(rc, err, target)
        assert "No space left on device" in err
        assert _snapshot(files) == before


def test_name_at_the_limit_works_and_one_beyond_is_one_line(files, capsys):
    longest = "n" * 251 + ".lpm"  # 255 bytes: NAME_MAX of common Linux file systems
    rc, _, err = _run(capsys, "compress", "in.png", longest, *MODEL)
    assert rc == 0, err
    assert fileformat.read(longest).header.height == 24
    rc, _, err = _run(capsys, "decompress", longest, "p" * 251 + ".png", *MODEL)
    assert rc == 0, err
    before = _snapshot(files)
    too_long = "n" * 252 + ".lpm"
    rc, _, err = _run(capsys, "compress", "in.png", too_long, *MODEL)
    _refused(rc, err, too_long)
    assert "too long" in err
    assert _snapshot(files) == before


# --- 5. data loss -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["same-name", "symlink", "hardlink", "symlinked-input"])
@pytest.mark.parametrize("force", [False, True], ids=["", "force"])
@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_output_is_never_the_input(files, capsys, command, via, force):
    src = "in.png"
    if command == "decompress":  # a stream under a PNG name, so that only the same-file rule can refuse
        os.replace("in.lpm", src)
    (files / "alias.png").symlink_to(src) if via in ("symlink", "symlinked-input") else None
    if via == "hardlink":
        os.link(src, "alias.png")
    argv = {
        "same-name": (src, src),
        "symlink": (src, "alias.png"),
        "hardlink": (src, "alias.png"),
        "symlinked-input": ("alias.png", src),
    }[via]
    before = _snapshot(files)
    rc, _, err = _run(capsys, command, *argv, *MODEL, *(["--force"] if force else []))
    _refused(rc, err, argv[1])
    assert "same file as the input" in err
    assert _snapshot(files) == before


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_existing_output_needs_force(files, capsys, command):
    src, out = ("in.png", "old.lpm") if command == "compress" else ("in.lpm", "old.png")
    (files / "old.png").write_bytes(b"precious old png")
    before = _snapshot(files)
    rc, _, err = _run(capsys, command, src, out, *MODEL)
    _refused(rc, err, out)
    assert "already exists" in err and "--force" in err
    assert _snapshot(files) == before
    rc, _, err = _run(capsys, command, src, out, *MODEL, "--force")
    assert rc == 0, err
    assert (files / out).read_bytes() != before[out][1]
    assert sorted(_snapshot(files)) == sorted(before)  # replaced in place, no temporary left


def test_force_replaces_a_symlink_itself_never_its_target(files, capsys):
    victim = files / "victim.txt"
    victim.write_bytes(b"not yours")
    (files / "out.lpm").symlink_to("victim.txt")
    before = _snapshot(files)
    rc, _, err = _run(capsys, "compress", "in.png", "out.lpm", *MODEL)
    _refused(rc, err, "out.lpm")
    assert _snapshot(files) == before
    rc, _, err = _run(capsys, "compress", "in.png", "out.lpm", *MODEL, "--force")
    assert rc == 0, err
    assert not (files / "out.lpm").is_symlink()
    assert fileformat.read(files / "out.lpm").header.width == 32
    assert victim.read_bytes() == b"not yours"
    # a dangling link is replaced the same way
    (files / "dangling.lpm").symlink_to("nowhere")
    assert _run(capsys, "compress", "in.png", "dangling.lpm", *MODEL, "--force")[0] == 0
    assert (files / "dangling.lpm").is_file() and not (files / "nowhere").exists()


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_force_never_replaces_special_files(files, capsys, kind):
    out = files / "out.lpm"
    os.mkfifo(out) if kind == "fifo" else out.mkdir()
    before = _snapshot(files)
    rc, _, err = _run(capsys, "compress", "in.png", "out.lpm", *MODEL, "--force")
    _refused(rc, err, "out.lpm")
    assert ("FIFO" if kind == "fifo" else "directory") in err
    assert _snapshot(files) == before


def test_roundtrip_json_is_not_overwritten_without_force(files, capsys):
    images = files / "imgs"
    images.mkdir()
    _image(images / "a.png", 16, 16)
    (files / "res.json").write_text("{}")
    args = ("roundtrip", "--images", images, "--rates", 0.013, *MODEL)
    before = _snapshot(files)
    rc, out, err = _run(capsys, *args, "--json", "res.json")
    _refused(rc, err, "res.json")
    assert out == ""  # refused before the run
    assert _snapshot(files) == before
    rc, _, err = _run(capsys, *args, "--json", images / "a.png", "--force")
    _refused(rc, err, images / "a.png")
    rc, _, err = _run(capsys, *args, "--json", "res.json", "--force")
    assert rc == 0, err
    assert '"bpp"' in (files / "res.json").read_text()


def test_force_never_overwrites_the_checkpoint_in_use(files, capsys):
    """``--model FILE`` is an input too: ``--force`` with the checkpoint as output used to replace it by the
    .lpm file (and the next load failed)."""
    from lpm import zoo

    ckpt = files / "model.safetensors"
    ckpt.write_bytes(zoo.checkpoint_path("tiny-smoke").read_bytes())
    before = _snapshot(files)
    rc, _, err = _run(capsys, "compress", "in.png", ckpt, "--model", ckpt, "--force")
    _refused(rc, err, ckpt)
    assert "same file as the input" in err
    images = files / "imgs"
    images.mkdir()
    _image(images / "a.png", 16, 16)
    rc, _, err = _run(capsys, "roundtrip", "--images", images, "--rates", 0.013, "--model", ckpt, "--json", ckpt,
                      "--force")
    _refused(rc, err, ckpt)
    (images / "a.png").unlink()
    images.rmdir()
    assert _snapshot(files) == before


def test_exif_orientation_is_warned_about(files, capsys):
    """A phone photo's orientation tag is not applied: the decoded PNG would show turned, so compress says so."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open("in.png").convert("RGB").save("o6.jpg", exif=exif)
    with pytest.warns(UserWarning, match=r"o6\.jpg: its EXIF orientation \(6: turn it 90° clockwise\) is not applied"):
        rc, _, err = _run(capsys, "compress", "o6.jpg", "o6.lpm", *MODEL)
    assert rc == 0, err
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rc, _, err = _run(capsys, "compress", "in.png", "plain.lpm", *MODEL)
    assert rc == 0 and not [w for w in seen if "EXIF" in str(w.message)], err


def test_out_of_memory_is_one_line(files, capsys, monkeypatch):
    import lpm.codec

    def exhausted(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(lpm.codec, "read_image", exhausted)
    before = _snapshot(files)
    rc, _, err = _run(capsys, "compress", "in.png", "new.lpm", *MODEL)
    assert rc == 2 and err.strip().splitlines() == [
        "lpm: error: out of memory: try a smaller image, --max-pixels, or a machine with more memory"], err
    assert _snapshot(files) == before


@pytest.mark.parametrize("command", ["decompress", "compress"])
def test_torch_failing_to_allocate_is_one_line(files, capsys, monkeypatch, command):
    """torch raises no MemoryError when an allocation fails but a RuntimeError (its CPU allocator's "can't
    allocate memory"; torch.OutOfMemoryError on a GPU): a big image under a ulimit -v printed a traceback."""
    import torch

    import lpm.codec

    def too_big(*args, **kwargs):
        return torch.empty(1 << 50, dtype=torch.uint8)  # a real failed allocation (1 PiB)

    monkeypatch.setattr(lpm.codec, "decode_image" if command == "decompress" else "encode_image", too_big)
    before = _snapshot(files)
    src, out = ("in.lpm", "new.png") if command == "decompress" else ("in.png", "new.lpm")
    rc, _, err = _run(capsys, command, src, out, *MODEL)
    assert rc == 2 and err.strip().splitlines() == [
        "lpm: error: out of memory: try a smaller image, --max-pixels, or a machine with more memory"], err
    assert _snapshot(files) == before

    def other_runtime_error(*args, **kwargs):
        raise RuntimeError("a bug, not memory")

    monkeypatch.setattr(lpm.codec, "decode_image" if command == "decompress" else "encode_image", other_runtime_error)
    with pytest.raises(RuntimeError, match="a bug"):  # other errors are not disguised as memory
        main([command, src, out, *MODEL])


# --- 6. promises kept ---------------------------------------------------------------------------------------


def test_unreachable_target_bpp_fails_and_names_the_smallest_bpp(files, capsys):
    before = _snapshot(files)
    rc, _, err = _run(capsys, "compress", "in.png", "t.lpm", *MODEL, "--target-bpp", "1e-9")
    _refused(rc, err, "in.png")
    assert "the lowest rate λ=" in err and "bpp" in err
    assert _snapshot(files) == before


@pytest.mark.parametrize("kind", ["gif", "tiff", "apng", "webp"])
def test_several_frames_are_refused(files, capsys, kind):
    frames = [Image.fromarray(np.full((12, 10, 3), 40 * i, np.uint8)) for i in range(3)]
    name = {"gif": "anim.gif", "tiff": "pages.tif", "apng": "anim.png", "webp": "anim.webp"}[kind]
    extra = {"webp": {"lossless": True}}.get(kind, {})
    frames[0].save(files / name, save_all=True, append_images=frames[1:], **extra)
    before = _snapshot(files)
    rc, _, err = _run(capsys, "compress", name, "o.lpm", *MODEL)
    _refused(rc, err, name)
    assert "3 frames" in err
    assert _snapshot(files) == before
    # one frame is fine
    frames[0].save(files / f"one.{name.split('.')[-1]}")
    assert _run(capsys, "compress", f"one.{name.split('.')[-1]}", "o.lpm", *MODEL)[0] == 0


def test_info_and_decompress_refuse_devices_at_once(files, capsys):
    for argv in (("info", "/dev/zero"), ("decompress", "/dev/zero", "o.png", *MODEL)):
        t0 = time.perf_counter()
        rc, _, err = _run(capsys, *argv)
        assert time.perf_counter() - t0 < 5.0  # not 1 GiB read first
        _refused(rc, err, "/dev/zero")
        assert "not a regular file" in err
    assert not (files / "o.png").exists()


def test_info_of_a_fifo_does_not_hang(files, capsys):
    fifo = files / "pipe.lpm"
    os.mkfifo(fifo)

    def unblock() -> None:  # only if the reader hangs: open the other end so the test ends anyway
        fd = os.open(fifo, os.O_WRONLY)
        os.close(fd)

    rescue = threading.Timer(20.0, unblock)
    rescue.daemon = True
    rescue.start()
    t0 = time.perf_counter()
    try:
        rc, _, err = _run(capsys, "info", fifo)
    finally:
        rescue.cancel()
    assert time.perf_counter() - t0 < 5.0
    _refused(rc, err, fifo)
    assert "FIFO" in err


def test_ctrl_c_during_writing_leaves_the_old_file_and_no_temporary(files, capsys, monkeypatch):
    def interrupted_fsync(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted_fsync)
    before = _snapshot(files)
    rc, _, err = _run(capsys, "compress", "in.png", "old.lpm", *MODEL, "--force")
    assert rc == 130 and err.strip() == "lpm: interrupted"
    rc, _, err = _run(capsys, "compress", "in.png", "new.lpm", *MODEL)
    assert rc == 130
    assert _snapshot(files) == before


_SUBPROCESS_PRELUDE = """
import os, signal, sys
real_fsync = os.fsync
SIG = signal.SIGHUP if sys.argv[1].startswith("sighup") else signal.SIGTERM
def fsync(fd):  # the signal arrives while the temporary file exists
    os.kill(os.getpid(), SIG)
    real_fsync(fd)
if sys.argv[1] == "sighup-ignored":  # as under nohup
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
if sys.argv[1] in ("sigterm", "sighup", "sighup-ignored"):
    os.fsync = fsync
from lpm.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _lpm_subprocess(cwd: Path, mode: str, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SUBPROCESS_PRELUDE), mode, *argv],
        cwd=cwd, capture_output=True, text=True, timeout=300, env=env,
    )


def test_sigterm_during_compress_leaves_nothing_and_warnings_are_one_line(files):
    """One real process (importing torch costs seconds) for two promises: SIGTERM while the temporary file
    exists removes it (exit 143), and the RGBA warning prints as ``lpm: warning: ...`` without the source
    file and line of lpm's code."""
    Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA").save(files / "rgba.png")
    before = _snapshot(files)
    res = _lpm_subprocess(files, "sigterm", "compress", "rgba.png", "new.lpm", *MODEL)
    assert res.returncode == 143, res.stderr
    assert res.stderr == (
        "lpm: warning: rgba.png: alpha channel dropped (the codec codes colour only)\n"
        "lpm: interrupted\n"
    )
    assert _snapshot(files) == before


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_during_compress_leaves_nothing_unless_it_is_ignored(files):
    """A closed terminal (SIGHUP) killed lpm with its temporary file left beside the output; now it is an
    interrupt like SIGTERM (exit 129, nothing left). Under nohup (SIGHUP ignored) it stays ignored."""
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(files / "rgb.png")
    before = _snapshot(files)
    res = _lpm_subprocess(files, "sighup", "compress", "rgb.png", "new.lpm", *MODEL)
    assert res.returncode == 128 + signal.SIGHUP and res.stderr == "lpm: interrupted\n", res.stderr
    assert _snapshot(files) == before
    res = _lpm_subprocess(files, "sighup-ignored", "compress", "rgb.png", "new.lpm", *MODEL)
    assert res.returncode == 0, res.stderr
    assert set(_snapshot(files)) == set(before) | {"new.lpm"}


# --- the helper itself --------------------------------------------------------------------------------------


def test_atomic_write_permissions_short_temporary_and_no_clobber(tmp_path):
    old = os.umask(0o027)
    try:
        fsutil.atomic_write(tmp_path / "a.bin", b"one")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o640
    with pytest.raises(FileExistsError) as info:
        fsutil.atomic_write(tmp_path / "a.bin", b"two", overwrite=False)
    assert info.value.filename == str(tmp_path / "a.bin")
    assert (tmp_path / "a.bin").read_bytes() == b"one"
    name = "é" * 126 + ".x"  # 254 bytes in UTF-8: a valid name, too long for ".{name}.{hex}.tmp"
    fsutil.atomic_write(tmp_path / name, b"three")
    assert (tmp_path / name).read_bytes() == b"three"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.bin", name])


def test_library_errors_are_cut_at_a_sentence_or_word_never_inside_one():
    from lpm.fsutil import one_line

    torch_msg = ("PytorchStreamReader failed reading zip archive: failed finding central directory. This is an "
                 "internal miniz error. If you are seeing this error, there is a high likelihood that your "
                 "checkpoint file is corrupted.")
    assert one_line(RuntimeError(torch_msg), 200, with_type=True) == (
        "RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory. "
        "This is an internal miniz error.")
    cut = one_line(ValueError("checkpoint " * 40), 50)
    assert cut.endswith(" …") and len(cut) <= 52 and all(w == "checkpoint" for w in cut[:-2].split())
    assert one_line(ValueError("x" * 100), 50) == "x" * 50 + "…"
    assert one_line(ValueError("  two\n  lines ")) == "two lines" and one_line(KeyError()) == "KeyError"
