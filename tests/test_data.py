"""lpm.data: image reading/writing, image folders, data set location and manifests, download script."""

from __future__ import annotations

import ast
import hashlib
import io
import pickle
import struct
import subprocess
import sys
import tarfile
import warnings
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import torch
from PIL import Image

from lpm import data
from lpm.data import (
    ImageFolderDataset,
    ImageInfo,
    ImageReadError,
    ImageTooLargeError,
    find_images,
    locate_dataset,
    manifest_checksum,
    read_image,
    read_manifest,
    to_uint8,
    verify_manifest,
    write_image,
)

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
DOWNLOAD = ROOT / "data" / "download.py"


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def write_png(path: Path, array: np.ndarray) -> Path:
    path.write_bytes(imagecodecs.png_encode(array))
    return path


def as_hwc(x: torch.Tensor) -> np.ndarray:
    return x.numpy().transpose(1, 2, 0)


# ------------------------------------------------------------------------------------- reading


def test_read_rgb8(tmp_path):
    a = rng().integers(0, 256, (5, 7, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, info = read_image(write_png(tmp_path / "a.png", a))
    assert x.dtype == torch.float32 and x.shape == (3, 5, 7)
    assert info == ImageInfo(height=5, width=7, channels=3, bit_depth=8, had_alpha=False)
    np.testing.assert_array_equal(np.round(as_hwc(x) * 255).astype(np.uint8), a)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_read_gray8_replicates(tmp_path):
    a = rng().integers(0, 256, (4, 6), dtype=np.uint8)
    x, info = read_image(write_png(tmp_path / "g.png", a))
    assert x.shape == (3, 4, 6)
    assert info.channels == 1 and info.bit_depth == 8 and not info.had_alpha
    for c in range(3):
        np.testing.assert_allclose(x[c].numpy(), a / 255.0, atol=1e-7)


def test_read_gray_alpha_warns_and_drops(tmp_path):
    a = rng().integers(0, 256, (3, 4, 2), dtype=np.uint8)
    path = write_png(tmp_path / "ga.png", a)
    with pytest.warns(UserWarning, match="alpha") as record:
        x, info = read_image(path)
    assert "ga.png" in str(record[0].message)
    assert info.channels == 1 and info.had_alpha
    np.testing.assert_allclose(x[1].numpy(), a[:, :, 0] / 255.0, atol=1e-7)


def test_read_rgba_warns_and_drops(tmp_path):
    a = rng().integers(0, 256, (3, 4, 4), dtype=np.uint8)
    path = write_png(tmp_path / "rgba.png", a)
    with pytest.warns(UserWarning, match=r"rgba\.png.*alpha"):
        x, info = read_image(path)
    assert info == ImageInfo(3, 4, 3, 8, True)
    np.testing.assert_array_equal(np.round(as_hwc(x) * 255).astype(np.uint8), a[:, :, :3])


def test_read_palette(tmp_path):
    rgb = rng().integers(0, 256, (6, 5, 3), dtype=np.uint8)
    im = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    im.save(tmp_path / "p.png")
    expected = np.asarray(im.convert("RGB"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, info = read_image(tmp_path / "p.png")
    assert info == ImageInfo(6, 5, 3, 8, False)
    np.testing.assert_array_equal(to_uint8(x), expected)


def test_read_palette_gif_via_pil(tmp_path):
    rgb = rng().integers(0, 256, (6, 5, 3), dtype=np.uint8)
    im = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    im.save(tmp_path / "p.gif")
    x, info = read_image(tmp_path / "p.gif")
    assert x.shape == (3, 6, 5) and info.channels == 3 and info.bit_depth == 8


@pytest.mark.parametrize("shape", [(4, 5, 3), (4, 5)], ids=["rgb16", "gray16"])
def test_read_16bit_full_precision(tmp_path, shape):
    k = rng().integers(0, 255, shape)
    a = (257 * k + 1).astype(np.uint16)  # not representable with 8 bits
    x, info = read_image(write_png(tmp_path / "s.png", a))
    assert info.bit_depth == 16 and info.channels == (3 if len(shape) == 3 else 1)
    got = as_hwc(x) if len(shape) == 3 else x[0].numpy()
    np.testing.assert_array_equal(got, (a / 65535.0).astype(np.float32))
    np.testing.assert_array_equal(np.round(got.astype(np.float64) * 65535).astype(np.uint16), a)


def test_read_16bit_tiff_and_pgm(tmp_path):
    a = (257 * rng().integers(0, 255, (4, 5, 3)) + 1).astype(np.uint16)
    (tmp_path / "s.tif").write_bytes(imagecodecs.tiff_encode(a))
    x, info = read_image(tmp_path / "s.tif")
    assert info == ImageInfo(4, 5, 3, 16, False)
    np.testing.assert_array_equal(as_hwc(x), (a / 65535.0).astype(np.float32))
    Image.fromarray(a[:, :, 0]).save(tmp_path / "g.pgm")  # PIL reads it as 32-bit integer mode "I"
    x, info = read_image(tmp_path / "g.pgm")
    assert info == ImageInfo(4, 5, 1, 16, False)
    np.testing.assert_array_equal(x[2].numpy(), (a[:, :, 0] / 65535.0).astype(np.float32))


def test_read_8bit_tiff_bmp_webp(tmp_path):
    a = rng().integers(0, 256, (6, 4, 3), dtype=np.uint8)
    for name in ("a.tiff", "a.bmp", "a.webp"):
        Image.fromarray(a).save(tmp_path / name, **({"lossless": True} if name.endswith("webp") else {}))
        x, info = read_image(tmp_path / name)
        assert info == ImageInfo(6, 4, 3, 8, False), name
        np.testing.assert_array_equal(to_uint8(x), a)
    Image.fromarray(a[:, :, 0]).save(tmp_path / "g.tif")
    x, info = read_image(tmp_path / "g.tif", max_pixels=24)
    assert info.channels == 1
    with pytest.raises(ImageTooLargeError):
        read_image(tmp_path / "g.tif", max_pixels=23)


def test_tiff_pil_calls_a_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    """A small file declaring a huge TIFF (PIL raises DecompressionBombError at open) used to be decoded
    whole by imagecodecs before the size check: 3.5 GB for a 2.9 MB 900-megapixel file."""
    a = rng().integers(0, 256, (64, 64), dtype=np.uint8)
    (tmp_path / "b.tif").write_bytes(imagecodecs.tiff_encode(a))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels > 2x the limit: PIL's bomb error

    decoded = []
    real = data._imagecodecs().tiff_decode
    monkeypatch.setattr(data._imagecodecs(), "tiff_decode", lambda *a, **k: (decoded.append(1), real(*a, **k))[1])
    with pytest.raises(ImageTooLargeError, match="b.tif"):
        read_image(tmp_path / "b.tif", max_pixels=None)  # no limit of ours: PIL's applies
    assert decoded == []
    # a limit of ours above PIL's is the one that counts (checked from the header before decoding)
    assert read_image(tmp_path / "b.tif", max_pixels=10**9)[1].height == 64 and decoded == [1]
    assert Image.MAX_IMAGE_PIXELS == 1000


@pytest.mark.parametrize("fmt", ["JPEG", "GIF", "WEBP", "BMP"])
def test_a_max_pixels_above_pils_bomb_limit_is_the_limit(tmp_path, monkeypatch, fmt):
    """PIL refuses more than twice its MAX_IMAGE_PIXELS (179 M pixels) at open: a 200-megapixel JPEG was refused
    on a machine whose --max-pixels allowed it. Our limit now decides; with none, PIL's still applies."""
    path = tmp_path / f"a.{fmt.lower()}"
    Image.fromarray(rng().integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path, format=fmt)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4800 pixels > 2x the limit: PIL's bomb error
    x, info = read_image(path, max_pixels=4800)
    assert (info.height, info.width) == (60, 80) and x.shape[-2:] == (60, 80)
    assert Image.MAX_IMAGE_PIXELS == 1000  # put back
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our refusal alone, no DecompressionBombWarning of PIL's before it
        with pytest.raises(ImageTooLargeError, match="more than the allowed max_pixels=4799"):
            read_image(path, max_pixels=4799)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # above PIL's limit, below twice it, above ours
        with pytest.raises(ImageTooLargeError, match="more than the allowed max_pixels=2000"):
            read_image(path, max_pixels=2000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageTooLargeError, match=rf"a.{fmt.lower()}"):
        read_image(path, max_pixels=None)
    assert Image.MAX_IMAGE_PIXELS == 1000


def _tiff_entries(data: bytes) -> dict[int, tuple[int, int]]:
    """{tag: (offset of its 12-byte entry, type)} of a little-endian classic TIFF's first directory."""
    assert data[:4] == b"II*\x00"
    first = struct.unpack("<I", data[4:8])[0]
    n = struct.unpack("<H", data[first : first + 2])[0]
    out = {}
    for i in range(n):
        at = first + 2 + 12 * i
        tag, kind = struct.unpack("<HH", data[at : at + 4])
        out[tag] = (at, kind)
    return out


def _set_tiff_tag(data: bytes, tag: int, value: int) -> bytes:
    """Rewrite one single-valued SHORT/LONG tag in place (TIFFs carry no checksum: nothing else to redo)."""
    at, kind = _tiff_entries(data)[tag]
    raw = struct.pack("<H", value) + b"\0\0" if kind == 3 else struct.pack("<I", value)
    return data[: at + 8] + raw + data[at + 12 :]


def _count_tiff_decodes(monkeypatch) -> list:
    decoded = []
    real = data._imagecodecs().tiff_decode
    monkeypatch.setattr(data._imagecodecs(), "tiff_decode", lambda *a, **k: (decoded.append(1), real(*a, **k))[1])
    return decoded


def test_tiff_that_pil_cannot_open_is_size_checked_from_its_own_directory(tmp_path, monkeypatch):
    """A LERC TIFF (a compression PIL does not know) skipped the pre-decode size check: a 31 kB file declaring
    20480x20480 was decoded whole (2 GB) by imagecodecs before ``max_pixels`` refused it, and under a memory
    limit the MemoryError came out as "not an image file PIL can identify"."""
    a = rng().integers(0, 256, (64, 64, 3), dtype=np.uint8)
    raw = imagecodecs.tiff_encode(a)
    bomb = _set_tiff_tag(_set_tiff_tag(_set_tiff_tag(raw, 256, 20480), 257, 20480), 259, 34887)  # LERC
    (tmp_path / "bomb.tif").write_bytes(bomb)
    with pytest.raises(Exception):  # noqa: B017 -- PIL cannot read it at all: that is the case here
        Image.open(tmp_path / "bomb.tif").load()
    decoded = _count_tiff_decodes(monkeypatch)
    with pytest.raises(ImageTooLargeError, match=r"bomb.tif: 20480x20480 \(HxW\) image has 419430400 pixels"):
        read_image(tmp_path / "bomb.tif", max_pixels=10**6)
    (tmp_path / "no_size.tif").write_bytes(_set_tiff_tag(raw, 256, 0))
    with pytest.raises(ImageReadError, match="zero size"):
        read_image(tmp_path / "no_size.tif")
    for cut in (10, len(raw) // 2):  # the directory sits at the end of what tiff_encode writes
        (tmp_path / "cut.tif").write_bytes(raw[:cut] if cut == 10 else raw[: _tiff_entries(raw)[256][0]])
        with pytest.raises(ImageReadError, match="cut.tif: not a readable TIFF"):
            read_image(tmp_path / "cut.tif")
    assert decoded == []


def test_multi_page_tiff_is_refused_whatever_its_compression(tmp_path, monkeypatch):
    """The multi-page check lived in PIL's view of the file: a two-page LERC TIFF was coded as its first page."""
    pages = [Image.fromarray(rng().integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]
    pages[0].save(tmp_path / "two.tif", save_all=True, append_images=pages[1:])
    (tmp_path / "two_lerc.tif").write_bytes(_set_tiff_tag((tmp_path / "two.tif").read_bytes(), 259, 34887))
    decoded = _count_tiff_decodes(monkeypatch)
    for name in ("two.tif", "two_lerc.tif"):
        with pytest.raises(ImageReadError, match=f"{name}: multi-page TIFF"):
            read_image(tmp_path / name)
    assert decoded == []


def test_tiff_colours_are_what_a_viewer_shows(tmp_path):
    """Palette and MinIsWhite TIFFs were taken as raw samples: palette indexes as a grey image, 200 as 55."""
    stripes = np.zeros((16, 24), np.uint8)
    stripes[:, 8:16], stripes[:, 16:] = 1, 2
    pal = Image.fromarray(stripes, mode="P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    pal.save(tmp_path / "pal.tif")
    x, info = read_image(tmp_path / "pal.tif")
    assert info.channels == 3
    assert x[:, 0, 0].tolist() == [1, 0, 0] and x[:, 0, 10].tolist() == [0, 1, 0] and x[:, 0, 20].tolist() == [0, 0, 1]

    g = rng().integers(0, 256, (16, 24), dtype=np.uint8)
    (tmp_path / "white.tif").write_bytes(imagecodecs.tiff_encode(g, photometric="miniswhite"))
    x, _ = read_image(tmp_path / "white.tif")
    assert np.array_equal(np.round(x[0].numpy() * 255).astype(np.uint8), 255 - g)
    g16 = g.astype(np.uint16) * 257
    (tmp_path / "white16.tif").write_bytes(imagecodecs.tiff_encode(g16, photometric="miniswhite"))
    x, info = read_image(tmp_path / "white16.tif")
    assert info.bit_depth == 16 and np.array_equal(np.round(x[0].numpy() * 65535).astype(np.uint16), 65535 - g16)

    a16 = rng().integers(0, 65536, (16, 24, 3), dtype=np.uint16)  # one plane per sample: PIL cannot read it
    (tmp_path / "planar.tif").write_bytes(imagecodecs.tiff_encode(np.moveaxis(a16, -1, 0), photometric="rgb",
                                                                  planarconfig="separate"))
    x, info = read_image(tmp_path / "planar.tif")
    assert info.bit_depth == 16 and np.array_equal(np.round(x.permute(1, 2, 0).numpy() * 65535).astype(np.uint16), a16)
    a = rng().integers(0, 256, (3, 3, 3), dtype=np.uint8)  # as many samples as rows and columns: not planar
    (tmp_path / "tiny.tif").write_bytes(imagecodecs.tiff_encode(a, photometric="rgb"))
    x, _ = read_image(tmp_path / "tiny.tif")
    assert np.array_equal(np.round(x.permute(1, 2, 0).numpy() * 255).astype(np.uint8), a)
    (tmp_path / "big.tif").write_bytes(imagecodecs.tiff_encode(a16, photometric="rgb", bigtiff=True))
    x, info = read_image(tmp_path / "big.tif")
    assert info.bit_depth == 16 and np.array_equal(np.round(x.permute(1, 2, 0).numpy() * 65535).astype(np.uint16), a16)
    a8 = (a16 >> 8).astype(np.uint8)
    for big in (False, True):  # big-endian, classic and BigTIFF (imagecodecs' writer swaps 16-bit data there)
        (tmp_path / "mm.tif").write_bytes(_big_endian_tiff(a8, bigtiff=big))
        x, _ = read_image(tmp_path / "mm.tif")
        assert np.array_equal(np.round(x.permute(1, 2, 0).numpy() * 255).astype(np.uint8), a8)


def _big_endian_tiff(a: np.ndarray, bigtiff: bool) -> bytes:
    """An uncompressed 8-bit RGB TIFF in Motorola byte order, written by hand."""
    h, w, c = a.shape
    pixels = a.tobytes()
    off_fmt, cnt_fmt, entry = (">Q", ">Q", 20) if bigtiff else (">I", ">H", 12)
    tags = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2), (273, 4, 1, 0),
            (277, 3, 1, c), (278, 3, 1, h), (279, 4, 1, len(pixels))]
    head = b"MM\x00+" + struct.pack(">HHQ", 8, 0, 16) if bigtiff else b"MM\x00*" + struct.pack(">I", 8)
    ifd_size = struct.calcsize(cnt_fmt) + entry * len(tags) + struct.calcsize(off_fmt)
    data_at = len(head) + ifd_size
    ifd = struct.pack(cnt_fmt, len(tags))
    for tag, kind, count, value in tags:
        value = data_at if tag == 273 else value
        slot = 8 if bigtiff else 4
        packed = struct.pack(">H", value) if kind == 3 else struct.pack(">I", value)
        ifd += struct.pack(">HH", tag, kind) + struct.pack(off_fmt, count) + packed.ljust(slot, b"\0")
    return head + ifd + struct.pack(off_fmt, 0) + pixels


def test_tiff_layouts_that_cannot_be_shown_right_are_refused(tmp_path):
    g16 = rng().integers(0, 65536, (16, 24), dtype=np.uint16)
    (tmp_path / "pal16.tif").write_bytes(
        imagecodecs.tiff_encode(g16, photometric="palette", colormap=np.zeros((3, 65536), np.uint16)))
    with pytest.raises(ImageReadError, match="pal16.tif: 16-bit palette TIFF cannot be read here"):
        read_image(tmp_path / "pal16.tif")
    rgb16 = imagecodecs.tiff_encode(np.stack([g16] * 3, -1), photometric="rgb")
    (tmp_path / "lab.tif").write_bytes(_set_tiff_tag(rgb16, 262, 8))  # CIELab: L*a*b* samples
    with pytest.raises(ImageReadError, match="lab.tif: 16-bit CIELab TIFF cannot be read here"):
        read_image(tmp_path / "lab.tif")
    (tmp_path / "six.tif").write_bytes(_set_tiff_tag(rgb16, 277, 6))  # RGB and three extra samples
    with pytest.raises(ImageReadError, match="six.tif: TIFF with 6 samples per pixel is not supported"):
        read_image(tmp_path / "six.tif")


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.float32])
def test_signed_and_float_tiffs_are_refused(tmp_path, dtype):
    """int8 TIFFs used to be read by PIL as unsigned "L" pixels (-127 became 129) without a word."""
    a = np.array([[-127, 0, 5], [100, -1, 7]], dtype=dtype)
    (tmp_path / "s.tif").write_bytes(imagecodecs.tiff_encode(a))
    with pytest.raises(ImageReadError, match=f"s.tif: TIFF with {np.dtype(dtype).name} samples is not supported"):
        read_image(tmp_path / "s.tif")


def test_16bit_tiff_that_only_pil_reads_warns_that_it_keeps_8_bits(tmp_path):
    a = (rng().integers(0, 65536, (5, 6, 4))).astype(np.uint16)
    (tmp_path / "c.tif").write_bytes(imagecodecs.tiff_encode(a, photometric="separated"))  # 16-bit CMYK
    with pytest.warns(UserWarning, match="c.tif: 16-bit TIFF read at 8 bits"):
        x, info = read_image(tmp_path / "c.tif")
    assert info.bit_depth == 8 and (info.height, info.width) == (5, 6)
    Image.fromarray(a[:, :, :3].astype(np.uint8)).convert("CMYK").save(tmp_path / "c8.tif")  # 8-bit: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image(tmp_path / "c8.tif")


def test_exif_orientation(tmp_path):
    a = rng().integers(0, 256, (8, 16, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp_path / "o6.jpg", exif=exif)
    Image.fromarray(a).save(tmp_path / "plain.jpg")
    exif[0x0112] = 99  # not an orientation
    Image.fromarray(a).save(tmp_path / "odd.jpg", exif=exif)
    assert data.exif_orientation(tmp_path / "o6.jpg") == 6
    assert data.exif_orientation(tmp_path / "plain.jpg") == 1
    assert data.exif_orientation(tmp_path / "odd.jpg") == 1
    assert data.exif_orientation(tmp_path / "missing.jpg") == 1
    x, info = read_image(tmp_path / "o6.jpg")  # the pixels as stored: 8 rows, 16 columns
    assert (info.height, info.width) == (8, 16)


def test_read_1x1(tmp_path):
    x, info = read_image(write_png(tmp_path / "one.png", np.array([[[10, 20, 30]]], np.uint8)))
    assert x.shape == (3, 1, 1) and (info.height, info.width) == (1, 1)
    assert to_uint8(x).tolist() == [[[10, 20, 30]]]


def test_read_jpeg(tmp_path):
    a = np.full((8, 16, 3), (200, 100, 50), np.uint8)
    Image.fromarray(a).save(tmp_path / "c.JPG", quality=95)
    x, info = read_image(tmp_path / "c.JPG")
    assert x.shape == (3, 8, 16) and info == ImageInfo(8, 16, 3, 8, False)
    assert np.abs(to_uint8(x).astype(int) - a).max() <= 3


def test_read_gray_jpeg(tmp_path):
    Image.fromarray(np.full((4, 4), 128, np.uint8)).save(tmp_path / "g.jpg")
    x, info = read_image(tmp_path / "g.jpg")
    assert info.channels == 1 and torch.equal(x[0], x[2])


def test_read_png_named_otherwise(tmp_path):
    """Format comes from the content, not the name."""
    a = rng().integers(0, 256, (3, 3, 3), dtype=np.uint8)
    x, _ = read_image(write_png(tmp_path / "mislabelled.jpg", a))
    np.testing.assert_array_equal(to_uint8(x), a)


def test_read_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")


def test_read_broken_symbolic_links_say_what_is_wrong(tmp_path):
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    with pytest.raises(FileNotFoundError, match="dangling.png is a symbolic link to a missing file .*gone.png"):
        read_image(tmp_path / "dangling.png")
    with pytest.raises(FileNotFoundError, match="a.png is a symbolic link in a loop"):
        read_image(tmp_path / "a.png")


def test_read_directory(tmp_path):
    with pytest.raises(ImageReadError):
        read_image(tmp_path)


def test_read_truncated_png(tmp_path):
    good = imagecodecs.png_encode(rng().integers(0, 256, (32, 32, 3), dtype=np.uint8))
    path = tmp_path / "cut.png"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ImageReadError, match="cut.png") as exc:
        read_image(path)
    assert "\n" not in str(exc.value)


def test_read_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(rng().integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[:300])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg")


@pytest.mark.parametrize("content", [b"this is not an image\n", b"", b"\x89PNG\r\n\x1a\n"])
def test_read_not_an_image(tmp_path, content):
    path = tmp_path / "text.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match="text.png") as exc:
        read_image(path)
    assert isinstance(exc.value, ValueError) and "\n" not in str(exc.value)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_read_zero_sized_png(tmp_path):
    ihdr = struct.pack(">IIBBBBB", 0, 5, 8, 2, 0, 0, 0)
    blob = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"")) + _png_chunk(b"IEND", b"")
    (tmp_path / "empty.png").write_bytes(blob)
    with pytest.raises(ImageReadError, match="zero size"):
        read_image(tmp_path / "empty.png")


def test_max_pixels(tmp_path):
    png = write_png(tmp_path / "big.png", np.zeros((10, 20, 3), np.uint8))
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "big.jpg")
    for path in (png, tmp_path / "big.jpg"):
        with pytest.raises(ImageTooLargeError, match=r"200 pixels.*max_pixels=199"):
            read_image(path, max_pixels=199)
        x, _ = read_image(path, max_pixels=200)
        assert x.shape == (3, 10, 20)
    assert issubclass(ImageTooLargeError, ValueError)


def test_a_large_png_declaring_too_many_pixels_is_refused_before_it_is_read(tmp_path):
    import tracemalloc

    head = (tmp_path / "head.png")
    write_png(head, np.zeros((1, 1, 3), np.uint8))
    data = bytearray(head.read_bytes())
    data[16:24] = struct.pack(">II", 100_000, 100_000)  # IHDR: 100000x100000 (its CRC no longer matches: never read)
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.write(data)
        f.truncate(len(data) + 200 * 2**20)  # 200 MiB more (sparse)
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError, match="100000x100000"):
            read_image(big, max_pixels=10**6)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak


# ------------------------------------------------------------------------------------- writing


def test_write_roundtrip_8bit_exact(tmp_path):
    a = rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    x, info = read_image(write_png(tmp_path / "in.png", a))
    write_image(tmp_path / "out.png", x, info)
    raw = imagecodecs.png_decode((tmp_path / "out.png").read_bytes())
    assert raw.dtype == np.uint8 and raw.shape == (9, 11, 3)
    np.testing.assert_array_equal(raw, a)
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("shape", [(5, 6, 3), (5, 6)], ids=["rgb16", "gray16"])
def test_write_roundtrip_16bit_exact(tmp_path, shape):
    a = rng(2).integers(0, 65536, shape, dtype=np.uint16)
    x, info = read_image(write_png(tmp_path / "in.png", a))
    write_image(tmp_path / "out.png", x, info)
    raw = imagecodecs.png_decode((tmp_path / "out.png").read_bytes())
    assert raw.dtype == np.uint16 and raw.shape == shape
    np.testing.assert_array_equal(raw, a)


def test_write_gray_roundtrip_and_luma(tmp_path):
    a = rng(3).integers(0, 256, (4, 5), dtype=np.uint8)
    x, info = read_image(write_png(tmp_path / "g.png", a))
    write_image(tmp_path / "g_out.png", x, info)
    raw = imagecodecs.png_decode((tmp_path / "g_out.png").read_bytes())
    assert raw.shape == (4, 5)
    np.testing.assert_array_equal(raw, a)
    # a colour tensor written as grey uses BT.601 luma
    colour = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 2, 2)
    write_image(tmp_path / "red.png", colour, ImageInfo(2, 2, 1, 8, False))
    assert imagecodecs.png_decode((tmp_path / "red.png").read_bytes()).tolist() == [[76, 76], [76, 76]]


def test_write_clamps_rounds_and_defaults(tmp_path):
    x = torch.tensor([-0.5, 0.5 / 255 + 1e-4, 2.0]).view(1, 1, 3)  # (1, H, W) without info
    write_image(tmp_path / "c.png", x)
    raw = imagecodecs.png_decode((tmp_path / "c.png").read_bytes())
    assert raw.shape == (1, 3) and raw.tolist() == [[0, 1, 255]]
    write_image(tmp_path / "c.png", torch.zeros(3, 2, 2))  # replaces the existing file
    assert imagecodecs.png_decode((tmp_path / "c.png").read_bytes()).shape == (2, 2, 3)


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_image(tmp_path / "a.png", torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="NaN"):
        write_image(tmp_path / "a.png", torch.full((3, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="PNG"):
        write_image(tmp_path / "a.jpg", torch.zeros(3, 2, 2))
    with pytest.raises(FileNotFoundError):
        write_image(tmp_path / "no_dir" / "a.png", torch.zeros(3, 2, 2))
    assert list(tmp_path.iterdir()) == []


def test_to_uint8():
    x = torch.tensor([0.0, 0.5, 1.0, 1.5, -1.0, 0.2]).view(3, 1, 2)
    out = to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (1, 2, 3)
    assert out[0, :, 0].tolist() == [0, 128] and out[0, :, 1].tolist() == [255, 255]
    assert out[0, :, 2].tolist() == [0, 51]


# -------------------------------------------------------------------------------- image folders


def test_find_images(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.JpEg", "d.txt", ".hidden.png", "e.webp", "f.tif"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.bmp").write_bytes(b"x")
    (tmp_path / "dir.png").mkdir()
    assert [p.name for p in find_images(tmp_path)] == ["a.jpg", "b.PNG", "c.JpEg", "e.webp", "f.tif"]
    assert [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path, recursive=True)][-1] == "sub/z.bmp"


def test_find_images_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        find_images(tmp_path / "missing")
    (tmp_path / "note.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        find_images(tmp_path)
    with pytest.raises(NotADirectoryError):
        find_images(tmp_path / "note.txt")


# ------------------------------------------------------------------------------ manifests, sets


def make_fake_set(root: Path) -> tuple[Path, Path]:
    """A tiny set with a subfolder and its sha256sum-style manifest (one './' path)."""
    src = root / "src"
    (src / "train").mkdir(parents=True)
    write_png(src / "img1.png", rng(4).integers(0, 256, (4, 4, 3), dtype=np.uint8))
    write_png(src / "train" / "img2.png", rng(5).integers(0, 256, (3, 5), dtype=np.uint8))
    lines = []
    for rel in ["img1.png", "train/img2.png"]:
        digest = hashlib.sha256((src / rel).read_bytes()).hexdigest()
        lines.append(f"{digest}  {'./' if 'train' in rel else ''}{rel}")
    manifest = root / "fake.sha256"
    manifest.write_text("\n".join(lines) + "\n")
    return src, manifest


def test_verify_manifest(tmp_path):
    src, manifest = make_fake_set(tmp_path)
    assert set(read_manifest(manifest)) == {"img1.png", "train/img2.png"}
    assert verify_manifest(src, manifest) == []
    (src / "train" / "img2.png").unlink()
    assert verify_manifest(src, manifest) == ["missing: train/img2.png"]
    (src / "img1.png").write_bytes(b"corrupt")
    assert verify_manifest(src, manifest) == ["sha256 mismatch: img1.png", "missing: train/img2.png"]
    assert manifest_checksum(manifest) == hashlib.sha256(manifest.read_bytes()).hexdigest()


def test_read_manifest_rejects_bad_lines(tmp_path):
    bad = tmp_path / "bad.sha256"
    bad.write_text("nothex  a.png\n")
    with pytest.raises(ValueError, match="malformed"):
        read_manifest(bad)
    bad.write_text("0" * 64 + "  ../escape.png\n")
    with pytest.raises(ValueError, match="leaves"):
        read_manifest(bad)


def test_project_manifests_present():
    for name, known in data.KNOWN_SETS.items():
        assert known.manifest_path == ROOT / "data" / f"{name}.sha256"
        assert len(read_manifest(known.manifest_path)) == known.num_images
    assert data.PROJECT_ROOT == ROOT


def test_locate_dataset(tmp_path, monkeypatch):
    (tmp_path / "given" / "kodak").mkdir(parents=True)
    (tmp_path / "env" / "bsds500").mkdir(parents=True)
    (tmp_path / "default" / "kodak").mkdir(parents=True)
    monkeypatch.setattr(data, "DATA_DIR", tmp_path / "default")
    monkeypatch.delenv("LPM_DATA_DIR", raising=False)
    assert locate_dataset("kodak", tmp_path / "given") == tmp_path / "given" / "kodak"
    assert locate_dataset("kodak") == tmp_path / "default" / "kodak"
    monkeypatch.setenv("LPM_DATA_DIR", str(tmp_path / "env"))
    assert locate_dataset("bsds500") == tmp_path / "env" / "bsds500"
    with pytest.raises(FileNotFoundError, match=r"download\.py kodak") as exc:
        locate_dataset("kodak")  # the env var wins over the project default
    assert str(tmp_path / "env" / "kodak") in str(exc.value)
    with pytest.raises(ValueError, match="unknown data set"):
        locate_dataset("imagenet", tmp_path)
    with pytest.raises(ValueError, match="does not match its manifest"):
        locate_dataset("kodak", tmp_path / "given", verify=True)


@pytest.mark.skipif(not (SHARED_DATA / "kodak").is_dir(), reason="no ../shared/data beside the checkout")
def test_shared_kodak_matches_manifest():
    directory = locate_dataset("kodak", SHARED_DATA, verify=True)
    assert verify_manifest(directory, data.manifest_path("kodak")) == []
    x, info = read_image(directory / "kodim01.png")
    assert x.shape == (3, 512, 768) and info == ImageInfo(512, 768, 3, 8, False)


# ------------------------------------------------------------------------------------ dataset


def make_images(directory: Path, sizes) -> list[Path]:
    directory.mkdir(exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(sizes):
        paths.append(write_png(directory / f"im{i}.png", rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)))
    return paths


def test_dataset_crops(tmp_path):
    make_images(tmp_path / "imgs", [(20, 30), (5, 3), (1, 40), (1, 1)])
    ds = ImageFolderDataset(tmp_path / "imgs", crop_size=8, hflip=True, vflip=True)
    assert len(ds) == 4
    for i in range(len(ds)):
        x = ds[i]
        assert x.shape == (3, 8, 8) and x.dtype == torch.float32
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    rect = ImageFolderDataset(tmp_path / "imgs", crop_size=(4, 6))
    assert rect[0].shape == (3, 4, 6)
    full = ImageFolderDataset(sorted((tmp_path / "imgs").glob("*.png")))
    assert full[0].shape == (3, 20, 30)


def test_dataset_crop_content_and_padding(tmp_path):
    (path,) = make_images(tmp_path / "imgs", [(5, 3)])
    src, _ = read_image(path)
    x = ImageFolderDataset([path], crop_size=(5, 3))[0]
    assert torch.equal(x, src)  # the crop of the full size is the image itself
    big = ImageFolderDataset([path], crop_size=(12, 9), generator=torch.Generator().manual_seed(0))[0]
    assert big.shape == (3, 12, 9)
    # reflection padding only repeats pixels of the image
    assert set(map(tuple, big.reshape(3, -1).T.tolist())) <= set(map(tuple, src.reshape(3, -1).T.tolist()))


def test_dataset_generator_reproducible(tmp_path):
    make_images(tmp_path / "imgs", [(32, 32)])
    def crops(seed):
        ds = ImageFolderDataset(tmp_path / "imgs", crop_size=8, hflip=True, generator=torch.Generator().manual_seed(seed))
        return torch.stack([ds[0] for _ in range(6)])
    assert torch.equal(crops(1), crops(1))
    assert not torch.equal(crops(1), crops(2))
    ds = ImageFolderDataset(tmp_path / "imgs", crop_size=8, generator=torch.Generator())
    assert pickle.loads(pickle.dumps(ds)).generator is None  # workers seed their own RNG


def test_dataset_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        ImageFolderDataset([])
    (path,) = make_images(tmp_path / "imgs", [(4, 4)])
    with pytest.raises(ValueError):
        ImageFolderDataset([path], crop_size=0)


def test_dataset_in_dataloader_workers(tmp_path):
    make_images(tmp_path / "imgs", [(40, 40)] * 4)
    ds = ImageFolderDataset(tmp_path / "imgs", crop_size=16, generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, generator=torch.Generator().manual_seed(0))
    batches = [b for b in loader]
    assert [tuple(b.shape) for b in batches] == [(2, 3, 16, 16)] * 2


# ------------------------------------------------------------------------------ download script


def run_download(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DOWNLOAD), *args], capture_output=True, text=True, timeout=60, cwd=ROOT.parent
    )


def test_download_script_is_stdlib_only():
    tree = ast.parse(DOWNLOAD.read_text())
    modules = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert modules - {"__future__"} <= set(sys.stdlib_module_names)


def test_download_from_dir(tmp_path):
    src, manifest = make_fake_set(tmp_path)
    dest = tmp_path / "dest"
    result = run_download("kodak", "--from-dir", str(src), "--dest", str(dest), "--manifest", str(manifest))
    assert result.returncode == 0, result.stderr
    assert "2 files verified" in result.stdout
    assert verify_manifest(dest / "kodak", manifest) == []
    assert sorted(p.name for p in (dest / "kodak").rglob("*") if p.is_file()) == ["img1.png", "img2.png"]
    # run again: nothing to copy, still verified; a parent folder holding kodak/ is accepted too
    again = run_download("kodak", "--from-dir", str(dest), "--dest", str(tmp_path / "dest2"), "--manifest", str(manifest))
    assert again.returncode == 0, again.stderr


def test_download_from_dir_detects_corruption(tmp_path):
    src, manifest = make_fake_set(tmp_path)
    (src / "img1.png").write_bytes(b"corrupt")
    (src / "train" / "img2.png").unlink()
    dest = tmp_path / "dest"
    result = run_download("bsds500", "--from-dir", str(src), "--dest", str(dest), "--manifest", str(manifest))
    assert result.returncode == 1
    assert "sha256 mismatch: img1.png" in result.stderr and "train/img2.png" in result.stderr
    assert not (dest / "bsds500" / "img1.png").exists()
    assert not [p for p in (dest / "bsds500").rglob("*") if p.is_file()]  # no partial or temp files
    assert dest.is_dir() and not (dest / "bsds500").exists()  # nor the empty folders it made for them


def test_a_failed_download_keeps_what_was_there(tmp_path):
    src, manifest = make_fake_set(tmp_path)
    dest = tmp_path / "dest"
    (dest / "kodak").mkdir(parents=True)
    (dest / "kodak" / "mine.txt").write_text("keep")
    (dest / "kodak" / "empty-but-mine").mkdir()
    (src / "img1.png").unlink()
    result = run_download("kodak", "--from-dir", str(src), "--dest", str(dest), "--manifest", str(manifest))
    assert result.returncode == 1 and "missing" in result.stderr
    assert (dest / "kodak" / "mine.txt").read_text() == "keep" and (dest / "kodak" / "empty-but-mine").is_dir()


def test_download_bsds500_tarball(tmp_path):
    payloads = {f"{split}/{i}.jpg": f"{split}{i}".encode() for split in ("train", "val", "test") for i in (1, 2)}
    manifest = tmp_path / "bsds.sha256"
    manifest.write_text("".join(f"{hashlib.sha256(b).hexdigest()}  ./{rel}\n" for rel, b in payloads.items()))
    tarball = tmp_path / "BSR_bsds500.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        extra = {"BSR/BSDS500/data/images/train/Thumbs.db": b"x", "BSR/BSDS500/data/groundTruth/train/1.mat": b"y"}
        members = {f"BSR/BSDS500/data/images/{rel}": b for rel, b in payloads.items()} | extra
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    dest = tmp_path / "dest"
    result = run_download("bsds500", "--tarball", str(tarball), "--dest", str(dest), "--manifest", str(manifest))
    assert result.returncode == 0, result.stderr
    files = sorted(p.relative_to(dest / "bsds500").as_posix() for p in (dest / "bsds500").rglob("*") if p.is_file())
    assert files == sorted(payloads)
    bad = run_download("kodak", "--tarball", str(tarball), "--dest", str(dest))
    assert bad.returncode == 2 and "bsds500 only" in bad.stderr


# ------------------------------------------------------------------ without imagecodecs (the GPU machine)


@pytest.mark.parametrize("kind", ["rgb8", "gray8", "rgba8", "gray16", "palette"])
def test_png_without_imagecodecs_reads_the_same(tmp_path, monkeypatch, kind):
    """PIL reads what imagecodecs reads, bit for bit (Kodak PNGs on a machine without the wheel)."""
    r = rng(5)
    if kind == "palette":
        path = tmp_path / "p.png"
        Image.fromarray(r.integers(0, 256, (7, 9, 3), dtype=np.uint8)).convert("P").save(path)
    else:
        shape = {"rgb8": (7, 9, 3), "gray8": (7, 9), "rgba8": (7, 9, 4), "gray16": (7, 9)}[kind]
        a = r.integers(0, 65536 if kind == "gray16" else 256, shape).astype(np.uint16 if kind == "gray16" else np.uint8)
        path = write_png(tmp_path / "p.png", a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # alpha dropped
        y, info_y = read_image(path)  # through imagecodecs
        monkeypatch.setattr(data, "_imagecodecs", _missing_imagecodecs)
        x, info = read_image(path)  # through PIL
    assert torch.equal(x, y) and info == info_y


def _missing_imagecodecs():
    raise ImportError("No module named 'imagecodecs'")


def test_16bit_colour_png_without_imagecodecs_is_refused_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_imagecodecs", _missing_imagecodecs)
    path = write_png(tmp_path / "c.png", (257 * rng().integers(0, 255, (4, 5, 3))).astype(np.uint16))
    with pytest.raises(ImageReadError, match="16-bit colour or alpha PNG needs imagecodecs"):
        read_image(path)


@pytest.mark.parametrize("kind", ["rgb8", "gray8", "gray16"])
def test_png_written_without_imagecodecs_reads_back_the_same(tmp_path, monkeypatch, kind):
    """decompress on a machine without imagecodecs: PIL writes the PNG, every sample as imagecodecs would."""
    r = rng(6)
    shape = (3, 7, 9) if kind == "rgb8" else (1, 7, 9)
    x = torch.from_numpy(r.random(shape))
    info = ImageInfo(height=7, width=9, channels=shape[0], bit_depth=16 if kind == "gray16" else 8, had_alpha=False)
    write_image(tmp_path / "a.png", x, info)  # imagecodecs
    monkeypatch.setattr(data, "_imagecodecs", _missing_imagecodecs)
    write_image(tmp_path / "b.png", x, info)  # PIL
    monkeypatch.undo()
    a, ia = read_image(tmp_path / "a.png")
    b, ib = read_image(tmp_path / "b.png")
    assert torch.equal(a, b) and ia == ib


def test_16bit_colour_png_write_without_imagecodecs_is_refused_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_imagecodecs", _missing_imagecodecs)
    info = ImageInfo(height=4, width=5, channels=3, bit_depth=16, had_alpha=False)
    with pytest.raises(ValueError, match="16-bit colour PNG needs imagecodecs"):
        write_image(tmp_path / "c.png", torch.rand(3, 4, 5), info)
    assert not (tmp_path / "c.png").exists()
