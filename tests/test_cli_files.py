"""The codec commands' file handling and argument checks found by the CLI audit of 2026-12-07: names that are
not UTF-8, standard output, sides beyond the file format, rates checked before the long run, 16-bit PPM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_tiny_codec
from lpm.cli import main
from lpm.data import read_image
from lpm.fsutil import OutputRefused, check_output, printable
from lpm.paths import PROJECT_ROOT

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _png(path: Path, h: int, w: int, seed: int = 0) -> Path:
    import imagecodecs

    rng = np.random.default_rng(seed)
    path.write_bytes(imagecodecs.png_encode(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    return path


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------------------ names and outputs
def test_an_output_name_that_is_not_utf8_is_written_and_reported(tmp_path, ckpt):
    """With a strict UTF-8 stdout the success line raised UnicodeEncodeError after the file was written: exit 2
    and an error naming no path, with the file left on disk. Now the name is shown escaped, exit 0."""
    src = _png(tmp_path / "a.png", 20, 24)
    name = os.fsdecode(b"bad\xff.lpm")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONPATH": str(PROJECT_ROOT)}
    r = subprocess.run([sys.executable, "-m", "lpm.cli", "compress", str(src), name, "--model", str(ckpt),
                        "--no-progress", "--threads", "1"], cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert b"bad\\xff.lpm: 20x24" in r.stdout
    assert (tmp_path / name).is_file()
    back = os.fsdecode(b"bad\xff.png")
    r = subprocess.run([sys.executable, "-m", "lpm.cli", "decompress", name, back, "--model", str(ckpt),
                        "--no-progress", "--threads", "1"], cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert b"bad\\xff.png: 20x24" in r.stdout and (tmp_path / back).is_file()


def test_printable_shows_undecodable_bytes_and_control_characters_escaped():
    assert printable(os.fsdecode(b"a\xff\x1b[2Jb\n")) == "a\\xff\\x1b[2Jb\\n"
    assert printable("café ∆") == "café ∆"


def test_standard_output_and_device_files_are_refused_even_with_force(tmp_path):
    """``-`` became a file named '-'; /dev/stdout was 'already exists; use --force', and --force (as root)
    replaced the /dev/stdout link with a regular file."""
    for force in (False, True):
        with pytest.raises(OutputRefused, match="not standard output"):
            check_output("-", force=force)
        for p in ("/dev/stdout", "/dev/null", "/proc/self/fd/1"):
            if os.path.lexists(p):
                with pytest.raises(OutputRefused, match="device or process file"):
                    check_output(p, force=force)
    link = tmp_path / "out.lpm"
    link.symlink_to("/dev/null")
    with pytest.raises(OutputRefused, match="device or process file"):
        check_output(link, force=True)
    check_output(tmp_path / "new.lpm")  # an ordinary new file is fine
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        check_output("/dev/shm/lpm-test-output.lpm")  # shared memory is an ordinary file system


def test_compress_to_dash_writes_no_file_called_dash(tmp_path, ckpt, capsys, monkeypatch):
    src = _png(tmp_path / "a.png", 20, 24)
    monkeypatch.chdir(tmp_path)
    rc, out, err = _run(capsys, "compress", src, "-", "--model", ckpt, "--no-progress")
    assert rc == 2 and "not standard output" in err
    assert not (tmp_path / "-").exists()


# ------------------------------------------------------------------------------------------ sizes
def test_a_side_beyond_the_file_format_is_refused_before_encoding(tmp_path, ckpt, capsys, monkeypatch):
    """A 1x66000 image was encoded whole (65 tiles) and then refused with 'width 66000 out of range'."""
    src = _png(tmp_path / "wide.png", 1, 66000)
    called = []
    from lpm.models import PromptedCodec

    real = PromptedCodec.compress
    monkeypatch.setattr(PromptedCodec, "compress", lambda self, *a, **k: called.append(1) or real(self, *a, **k))
    rc, out, err = _run(capsys, "compress", src, tmp_path / "w.lpm", "--model", ckpt, "--no-progress")
    assert rc == 2 and "1x66000" in err and "65535 pixels a side" in err
    assert not called and not (tmp_path / "w.lpm").exists()


# ------------------------------------------------------------------------------------------ roundtrip / eval args
def test_roundtrip_checks_every_rate_before_measuring_any(tmp_path, ckpt, capsys, monkeypatch):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _png(imgs / "a.png", 20, 24)
    import lpm.eval

    calls = []
    monkeypatch.setattr(lpm.eval, "evaluate_codec", lambda *a, **k: calls.append(1) or pytest.fail("measured"))
    rc, out, err = _run(capsys, "roundtrip", "--model", ckpt, "--images", imgs, "--rates", "0.0483", "0.1",
                        "--no-progress")
    assert rc == 2 and "rate 0.1 is outside" in err and not calls


def test_roundtrip_json_under_a_file_is_refused_before_measuring(tmp_path, ckpt, capsys, monkeypatch):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _png(imgs / "a.png", 20, 24)
    (tmp_path / "notadir").write_text("x")
    import lpm.eval

    monkeypatch.setattr(lpm.eval, "evaluate_codec", lambda *a, **k: pytest.fail("measured"))
    rc, out, err = _run(capsys, "roundtrip", "--model", ckpt, "--images", imgs, "--json",
                        tmp_path / "notadir" / "x.json", "--no-progress")
    assert rc == 2 and "is not a folder" in err


def test_roundtrip_measures_a_repeated_rate_once(tmp_path, ckpt, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _png(imgs / "a.png", 20, 24)
    rc, out, err = _run(capsys, "roundtrip", "--model", ckpt, "--images", imgs, "--rates", "0.0483", "0.0483",
                        "--json", tmp_path / "r.json", "--no-progress")
    assert rc == 0, err
    assert len(json.loads((tmp_path / "r.json").read_text())["results"]["bpp"]) == 1


@pytest.mark.parametrize("argv, what", [
    (["roundtrip", "--limit", "-1"], "--limit: expected an integer >= 0, got -1"),
    (["compress", "a.png", "b.lpm", "--threads", "0"], "--threads: expected an integer in 1..1024, got 0"),
    (["compress", "a.png", "b.lpm", "--threads", "5000"], "--threads: expected an integer in 1..1024"),
    (["eval", "--continuous", "-2"], "--continuous: expected an integer in 0..1000"),
    (["compress", "a.png", "b.lpm", "--max-pixels", "0"], "--max-pixels: expected an integer >= 1, got 0"),
    (["decompress", "a.lpm", "b.png", "--max-pixels", "-5"], "--max-pixels: expected an integer >= 1, got -5"),
])
def test_counts_out_of_range_are_refused_by_the_parser(argv, what, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and what in capsys.readouterr().err


def test_decompress_reports_the_bytes_it_decoded_and_how_to_raise_the_limit(tmp_path, ckpt, capsys, monkeypatch):
    """The bpp was taken from the file's size after decoding: a file replaced meanwhile changed it."""
    import lpm.codec as codec

    _png(tmp_path / "a.png", 40, 48)
    assert _run(capsys, "compress", tmp_path / "a.png", tmp_path / "a.lpm", "--model", ckpt)[0] == 0
    size = (tmp_path / "a.lpm").stat().st_size
    rc, _, err = _run(capsys, "decompress", tmp_path / "a.lpm", tmp_path / "small.png", "--model", ckpt,
                      "--max-pixels", "100")
    assert rc == 2 and "exceeds the limit of 100 pixels (raise it with --max-pixels" in err
    assert not (tmp_path / "small.png").exists()
    decode = codec.decode_image

    def decode_then_replace(*args, **kw):
        out = decode(*args, **kw)
        with open(tmp_path / "a.lpm", "ab") as f:
            f.write(b"\0" * 1000)
        return out

    monkeypatch.setattr(codec, "decode_image", decode_then_replace)
    res = codec.decompress_file(*_loaded(ckpt), tmp_path / "a.lpm", tmp_path / "a_dec.png")
    assert res.num_bytes == size and (tmp_path / "a.lpm").stat().st_size == size + 1000


def _loaded(ckpt):
    from lpm import zoo

    c = zoo.load(str(ckpt))
    return c.model, c.model_id


def test_a_rate_just_outside_the_range_is_shown_with_its_digits():
    model = make_tiny_codec()
    hi = model.rate_range[1]
    with pytest.raises(ValueError, match=rf"rate {hi * (1 + 1e-7)!r} is outside the trained range"):
        model.check_rate(hi * (1 + 1e-7))


# ------------------------------------------------------------------------------------------ 16-bit PPM
def _ppm16(path: Path, a: np.ndarray, maxval: int, plain: bool = False) -> Path:
    h, w, _ = a.shape
    if plain:
        path.write_bytes(f"P3\n# a comment\n{w} {h}\n{maxval}\n".encode() + " ".join(map(str, a.ravel())).encode())
    else:
        sample = ">u2" if maxval > 255 else "u1"
        path.write_bytes(f"P6\n{w} {h}\n# a comment\n{maxval}\n".encode() + a.astype(sample).tobytes())
    return path


@pytest.mark.parametrize("plain", [False, True])
def test_a_16bit_ppm_is_read_at_16_bits(tmp_path, plain):
    """PIL read a 16-bit colour PPM at 8 bits, silently (a 16-bit PGM stayed 16-bit)."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 65536, (5, 7, 3))
    x, info = read_image(_ppm16(tmp_path / "a.ppm", a, 65535, plain))
    assert info.bit_depth == 16 and info.channels == 3 and (info.height, info.width) == (5, 7)
    assert torch.equal(x.double(), torch.from_numpy(a.transpose(2, 0, 1) / 65535.0).float().double())
    b = rng.integers(0, 1024, (3, 4, 3))  # 10-bit: scaled to the full 16-bit range
    x, info = read_image(_ppm16(tmp_path / "b.ppm", b, 1023, plain))
    assert info.bit_depth == 16
    expect = (b * 65535 + 511) // 1023
    assert np.array_equal(np.round(x.double().numpy().transpose(1, 2, 0) * 65535), expect)


def test_bad_16bit_ppms_are_clear_errors(tmp_path):
    from lpm.data import ImageReadError, ImageTooLargeError

    a = np.full((4, 4, 3), 1000)
    p = _ppm16(tmp_path / "t.ppm", a, 65535)
    p.write_bytes(p.read_bytes()[:-3])
    with pytest.raises(ImageReadError, match="truncated PPM"):
        read_image(p)
    with pytest.raises(ImageReadError, match="exceeds maxval"):
        read_image(_ppm16(tmp_path / "o.ppm", a, 999))
    (tmp_path / "h.ppm").write_bytes(b"P6\n4 x\n65535\n")
    with pytest.raises(ImageReadError, match="malformed header"):
        read_image(tmp_path / "h.ppm")
    (tmp_path / "big.ppm").write_bytes(b"P6\n100000 100000\n65535\n")
    with pytest.raises(ImageTooLargeError):
        read_image(tmp_path / "big.ppm", max_pixels=10**6)
    x, info = read_image(_ppm16(tmp_path / "eight.ppm", np.full((2, 2, 3), 200), 255))  # 8-bit: PIL, exact
    assert info.bit_depth == 8 and float(x.max()) == pytest.approx(200 / 255)


def test_a_plain_16bit_ppm_with_loose_whitespace_and_a_bound(tmp_path):
    from lpm.data import ImageReadError

    a = np.arange(18).reshape(2, 3, 3) * 1000
    p = tmp_path / "loose.ppm"
    p.write_bytes(b"P3\n3 2\n65535\n" + "\n\n      ".join(map(str, a.ravel())).encode() + b"\n")
    x, info = read_image(p)
    assert info.bit_depth == 16 and np.array_equal(np.round(x.double().numpy().transpose(1, 2, 0) * 65535), a)
    (tmp_path / "huge.ppm").write_bytes(b"P3\n4000 4000\n65535\n0 0 0\n")
    with pytest.raises(ImageReadError, match="convert it to binary P6 or PNG"):
        read_image(tmp_path / "huge.ppm")


def test_input_dash_says_standard_input_is_not_read(tmp_path, ckpt, capsys, monkeypatch):
    """``lpm compress - out.lpm`` said only 'No such file or directory'; a file named ``-`` is still read."""
    monkeypatch.chdir(tmp_path)
    for argv in (["compress", "-", "o.lpm", "--model", ckpt], ["decompress", "-", "o.png", "--model", ckpt],
                 ["info", "-"]):
        rc, _, err = _run(capsys, *argv)
        assert rc == 2 and "lpm does not read standard input; name a file" in err, err
    _png(tmp_path / "-", 16, 16)
    rc, _, err = _run(capsys, "compress", "-", "o.lpm", "--model", ckpt)
    assert rc == 0 and (tmp_path / "o.lpm").is_file(), err
