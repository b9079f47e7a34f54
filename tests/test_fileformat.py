"""Tests for the ``.lpm`` container (lpm.fileformat): round trips and hostile inputs."""

from __future__ import annotations

import math
import os
import re
import struct
import time
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lpm import fileformat as ff
from lpm.fileformat import (
    FORMAT_VERSION,
    LATENT_STRIDE,
    MAGIC,
    MIN_FILE_SIZE,
    BitstreamError,
    CompressedImage,
    StreamHeader,
    bits_per_pixel,
    decode,
    describe,
    encode,
    model_id_from_sha256,
)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Offsets from the byte table in the module docstring.
OFF_VERSION, OFF_FLAGS, OFF_HLEN = 8, 9, 10
OFF_RATE, OFF_H, OFF_W, OFF_C, OFF_BD, OFF_ZH, OFF_ZW, OFF_CHECK, OFF_N = 20, 28, 32, 36, 37, 38, 40, 42, 46
OFF_STRINGS = 47

# A 1x1 RGB PNG (signature, IHDR, IDAT, IEND).
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de"
    "0000000c4944415408d763f8cfc000000301010018dd8db00000000049454e44ae426082"
)


def make_header(height=100, width=150, **kw) -> StreamHeader:
    fields = dict(
        model_id="0123456789abcdef", rate=0.0130, height=height, width=width, channels=3,
        bit_depth=8, latent_shape=ff.expected_latent_shape(height, width), table_check=0x1A2B3C4D,
    )
    fields.update(kw)
    return StreamHeader(**fields)


SAMPLE = CompressedImage(make_header(), [bytes(range(40)) * 2, b"\x07\x42zz\x00"])


def reseal(body: bytes) -> bytes:
    """Recompute the trailing CRC after editing ``body`` (a whole file including its old CRC)."""
    body = body[:-4]
    return body + struct.pack(">I", zlib.crc32(body))


def patch(data: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return reseal(bytes(b))


# --- strategies --------------------------------------------------------------------------------

sides = st.integers(1, 65535)


@st.composite
def headers(draw) -> StreamHeader:
    h, w = draw(sides), draw(sides)
    return StreamHeader(
        model_id=draw(st.binary(min_size=8, max_size=8)).hex(),
        rate=draw(st.floats(min_value=0, exclude_min=True, allow_infinity=False, allow_nan=False)),
        height=h,
        width=w,
        channels=draw(st.sampled_from([1, 3])),
        bit_depth=draw(st.sampled_from([8, 16])),
        latent_shape=(math.ceil(h / LATENT_STRIDE), math.ceil(w / LATENT_STRIDE)),
        table_check=draw(st.integers(0, 2**32 - 1)),
    )


images = st.builds(CompressedImage, headers(), st.lists(st.binary(max_size=64), min_size=1, max_size=8))


# --- round trips -------------------------------------------------------------------------------


@FAST
@given(images)
def test_round_trip(c):
    data = encode(c)
    assert decode(data) == c
    assert encode(c) == data  # deterministic
    assert encode(decode(data)) == data
    assert len(data) == ff.encoded_size(c)
    assert data.startswith(MAGIC) and data[OFF_VERSION] == FORMAT_VERSION


def test_sample_layout_matches_docstring_table():
    data = encode(SAMPLE)
    assert ff.HEADER_SIZE == 35 and MIN_FILE_SIZE == 55 and FORMAT_VERSION == 2
    assert data[:8] == b"\x89LPM\r\n\x1a\n"
    assert struct.unpack_from(">BBH", data, 8) == (2, 0, 35)
    assert data[12:20] == bytes.fromhex("0123456789abcdef")
    assert struct.unpack_from(">dIIBBHHIB", data, OFF_RATE) == (0.0130, 100, 150, 3, 8, 2, 3, 0x1A2B3C4D, 2)
    assert struct.unpack_from(">I", data, OFF_STRINGS) == (80,)
    assert struct.unpack_from(">I", data, len(data) - 4) == (zlib.crc32(data[:-4]),)
    assert len(data) == MIN_FILE_SIZE + 4 + 80 + 5
    assert "table check 1a2b3c4d" in describe(SAMPLE) and describe(SAMPLE).startswith("lpm v2:")


def test_version_1_files_are_read_and_written_only_on_request():
    """Version 1 (lpm 0.1: no table check, 31-byte header) is still decoded; lpm writes version 1 only when
    asked (compatibility tests), and never a version 2 file without its table check."""
    v1 = CompressedImage(make_header(table_check=None), SAMPLE.strings)
    assert v1.header.version == 1 and SAMPLE.header.version == 2
    with pytest.raises(ValueError, match="needs the header's table_check"):
        encode(v1)
    with pytest.raises(ValueError, match="needs the header's table_check"):
        encode(SAMPLE, legacy_v1=True)
    data = encode(v1, legacy_v1=True)
    assert struct.unpack_from(">BBH", data, 8) == (1, 0, 31) and len(data) == 51 + 4 + 80 + 5
    assert struct.unpack_from(">dIIBBHHB", data, OFF_RATE) == (0.0130, 100, 150, 3, 8, 2, 3, 2)
    back = decode(data)
    assert back == v1 and back.header.table_check is None
    assert describe(back).startswith("lpm v1:") and "no table check" in describe(back)
    for n in range(len(data)):  # truncations of a version 1 file fail too
        with pytest.raises(BitstreamError):
            decode(data[:n])
    with pytest.raises(BitstreamError, match="bad lpm header length 35 \\(version 1 headers are 31 bytes\\)"):
        decode(patch(data, OFF_HLEN, ">H", 35))
    with pytest.raises(BitstreamError, match="bad lpm header length 31 \\(version 2 headers are 35 bytes\\)"):
        decode(patch(encode(SAMPLE), OFF_HLEN, ">H", 31))


@pytest.mark.parametrize("check", [-1, 2**32, 1.5, True])
def test_invalid_table_check_refused(check):
    with pytest.raises(ValueError):
        make_header(table_check=check)


def test_decode_accepts_bytearray_and_memoryview():
    data = encode(SAMPLE)
    assert decode(bytearray(data)) == SAMPLE == decode(memoryview(data))
    with pytest.raises(TypeError):
        decode("not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        decode(51)  # type: ignore[arg-type]  (bytes(51) would be 51 zeros)


def test_header_normalises_numpy_like_values():
    np = pytest.importorskip("numpy")
    h = make_header(height=np.int64(64), width=np.int32(65), rate=np.float32(0.5), latent_shape=[1, 2])
    assert type(h.height) is int and type(h.rate) is float and h.latent_shape == (1, 2)
    c = CompressedImage(h, (bytearray(b"ab"),))  # tuple and bytearray are normalised too
    assert c.strings == [b"ab"] and decode(encode(c)) == c


# --- hostile inputs ----------------------------------------------------------------------------


def test_every_truncation_raises():
    data = encode(SAMPLE)
    for n in range(len(data)):
        with pytest.raises(BitstreamError) as e:
            decode(data[:n])
        assert "\n" not in str(e.value)
        if n < MIN_FILE_SIZE:
            assert "truncated" in str(e.value) or "not an lpm file" in str(e.value)
        else:
            assert "checksum mismatch" in str(e.value)


def test_every_single_byte_mutation_raises():
    data = encode(SAMPLE)
    for pos in range(len(data)):
        for delta in (0x01, 0x80, 0xFF):
            b = bytearray(data)
            b[pos] ^= delta
            with pytest.raises(BitstreamError):
                decode(bytes(b))


@FAST
@given(st.data())
def test_random_byte_mutations_raise(draw):
    data = bytearray(encode(SAMPLE))
    pos = draw.draw(st.integers(0, len(data) - 1))
    value = draw.draw(st.integers(0, 255).filter(lambda v: v != data[pos]))
    data[pos] = value
    with pytest.raises(BitstreamError):
        decode(bytes(data))


@FAST
@given(st.binary(max_size=300))
def test_foreign_bytes_raise_bitstream_error(blob):
    with pytest.raises(BitstreamError) as e:
        decode(blob)
    assert "\n" not in str(e.value)


@FAST
@given(st.binary(min_size=0, max_size=200), st.booleans())
def test_resealed_garbage_never_escapes(blob, with_prefix):
    """Garbage behind a valid magic/version and a valid CRC: decode or BitstreamError, nothing else."""
    prefix = MAGIC + bytes([FORMAT_VERSION, 0]) + struct.pack(">H", 35) if with_prefix else MAGIC + b"\x02"
    data = reseal(prefix + blob + b"\0\0\0\0")
    try:
        c = decode(data)
    except BitstreamError as e:
        assert "\n" not in str(e)
    else:
        assert encode(c) == data


def test_huge_length_field_with_valid_crc_fails_fast():
    data = encode(SAMPLE)
    for offset, fmt, value in [
        (OFF_STRINGS, ">I", 0xFFFFFFFF),
        (OFF_STRINGS, ">I", 81),  # one byte too many
        (OFF_HLEN, ">H", 0xFFFF),
        (OFF_N, ">B", 255),
        (OFF_N, ">B", 8),
    ]:
        bad = patch(data, offset, fmt, value)
        t0 = time.perf_counter()
        with pytest.raises(BitstreamError):
            decode(bad)
        assert time.perf_counter() - t0 < 0.5


@pytest.mark.parametrize(
    "offset, fmt, value, message",
    [
        (OFF_FLAGS, ">B", 1, "unsupported lpm flags 0x01"),
        (OFF_HLEN, ">H", 30, "bad lpm header length 30"),
        (OFF_VERSION, ">B", 1, "bad lpm header length 35 (version 1 headers are 31 bytes)"),
        (OFF_RATE, ">d", 0.0, "rate must be finite and > 0"),
        (OFF_RATE, ">d", -1.0, "rate must be finite and > 0"),
        (OFF_RATE, ">d", float("nan"), "rate must be finite and > 0"),
        (OFF_RATE, ">d", float("inf"), "rate must be finite and > 0"),
        (OFF_H, ">I", 0, "height 0 out of range"),
        (OFF_W, ">I", 70000, "width 70000 out of range"),
        (OFF_C, ">B", 2, "channels must be 1 or 3, got 2"),
        (OFF_BD, ">B", 12, "bit_depth must be 8 or 16, got 12"),
        (OFF_ZH, ">H", 0, "latent height 0 out of range"),
        (OFF_ZH, ">H", 3, "inconsistent header: latent shape 3x3"),
        (OFF_H, ">I", 129, "inconsistent header"),
        (OFF_N, ">B", 0, "0 strings (expected 1..8)"),
        (OFF_N, ">B", 9, "9 strings (expected 1..8)"),
        (OFF_N, ">B", 1, "trailing bytes"),
        (OFF_N, ">B", 3, "string 2 length field runs past the end"),
        (OFF_STRINGS, ">I", 1000, "string 0 declares 1000 bytes but only"),
    ],
)
def test_valid_crc_but_bad_fields_give_specific_messages(offset, fmt, value, message):
    with pytest.raises(BitstreamError, match="^[^\n]*" + re.escape(message)):
        decode(patch(encode(SAMPLE), offset, fmt, value))


def test_trailing_garbage_with_valid_crc():
    data = encode(SAMPLE)
    with pytest.raises(BitstreamError, match="3 trailing bytes"):
        decode(reseal(data[:-4] + b"abc" + data[-4:]))


def test_version_and_magic_messages():
    data = encode(SAMPLE)
    with pytest.raises(BitstreamError, match=r"unsupported lpm format version 3 \(this build reads 1, 2\)"):
        decode(patch(data, OFF_VERSION, ">B", 3))
    with pytest.raises(BitstreamError, match=r"not an lpm file \(bad magic\)"):
        decode(reseal(b"\x89LPX" + data[4:]))
    with pytest.raises(BitstreamError, match=r"corrupted lpm file \(checksum mismatch\)"):
        decode(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(BitstreamError, match="empty"):
        decode(b"")
    with pytest.raises(BitstreamError, match="truncated lpm file"):
        decode(MAGIC + b"\x01")


def test_png_is_not_an_lpm_file(tmp_path):
    with pytest.raises(BitstreamError, match=r"not an lpm file \(bad magic\)"):
        decode(PNG_1X1)
    p = tmp_path / "image.png"
    p.write_bytes(PNG_1X1 + bytes(100))
    with pytest.raises(BitstreamError, match=r"image\.png: not an lpm file"):
        ff.read(p)


def test_max_pixels():
    data = encode(SAMPLE)
    assert decode(data, max_pixels=100 * 150) == SAMPLE
    with pytest.raises(BitstreamError, match=r"image of 100x150 .* exceeds the limit of 14999 pixels"):
        decode(data, max_pixels=100 * 150 - 1)
    with pytest.raises(ValueError):
        decode(data, max_pixels=0)


# --- encoder-side validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        dict(model_id="0123456789ABCDEF"),
        dict(model_id="0123456789abcde"),
        dict(model_id="0123456789abcdeg"),
        dict(model_id=b"0123456789abcdef"),
        dict(rate=0.0),
        dict(rate=float("nan")),
        dict(rate=True),
        dict(rate="0.1"),
        dict(height=0, latent_shape=(1, 3)),
        dict(width=65536, latent_shape=(2, 1024)),
        dict(height=10.0),
        dict(channels=4),
        dict(bit_depth=10),
        dict(latent_shape=(2, 2)),
        dict(latent_shape=(2,)),
    ],
)
def test_invalid_header_refused(kw):
    with pytest.raises(ValueError):
        make_header(**kw)


@pytest.mark.parametrize("strings", [[], [b"x"] * 9, ["text"], [b"ok", None], b"xyz"])
def test_invalid_strings_refused(strings):
    with pytest.raises(ValueError):
        CompressedImage(make_header(), strings)


def test_encode_revalidates_mutated_object():
    c = CompressedImage(make_header(), [b"y", b"z"])
    c.strings.extend([b"s"] * 7)  # the list is mutable even though the dataclass is frozen
    with pytest.raises(ValueError, match="expected 1..8 strings"):
        encode(c)
    h = make_header()
    object.__setattr__(h, "channels", 2)
    bad = object.__new__(CompressedImage)
    object.__setattr__(bad, "header", h)
    object.__setattr__(bad, "strings", [b"y"])
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        encode(bad)
    with pytest.raises(ValueError):
        encode("not an image")  # type: ignore[arg-type]


# --- helpers -----------------------------------------------------------------------------------


def test_model_id_from_sha256():
    digest = "ABCDEF0123456789" + "0" * 48
    assert model_id_from_sha256(digest) == "abcdef0123456789"
    make_header(model_id=model_id_from_sha256(digest))
    for bad in ("abc", "z" * 64, "a" * 63, None):
        with pytest.raises(ValueError):
            model_id_from_sha256(bad)  # type: ignore[arg-type]


def test_expected_latent_shape():
    assert ff.expected_latent_shape(1, 1) == (1, 1)
    assert ff.expected_latent_shape(64, 65) == (1, 2)
    assert ff.expected_latent_shape(512, 768) == (8, 12)
    assert ff.expected_latent_shape(65535, 65535) == (1024, 1024)


def test_describe_and_bits_per_pixel():
    data = encode(SAMPLE)
    bpp = bits_per_pixel(data, 100, 150)
    assert bpp == pytest.approx(8 * len(data) / 15000)
    text = describe(SAMPLE)
    assert "\n" not in text
    for part in ("100x150", "RGB", "8-bit", "lambda=0.013", "0123456789abcdef", f"{len(data)} bytes",
                 f"{bpp:.4f} bpp", "y 80 B", "z 5 B"):
        assert part in text, (part, text)
    with pytest.raises(ValueError):
        bits_per_pixel(data, 0, 10)


# --- files -------------------------------------------------------------------------------------


def test_write_read_atomic(tmp_path):
    path = tmp_path / "img.lpm"
    ff.write(path, SAMPLE)
    assert ff.read(path) == SAMPLE
    assert path.read_bytes() == encode(SAMPLE)
    other = CompressedImage(make_header(height=7, width=9), [b"new"])
    ff.write(str(path), other)  # overwrite, str path
    assert ff.read(str(path)) == other
    assert sorted(os.listdir(tmp_path)) == ["img.lpm"]  # no temporary left behind


def test_write_invalid_leaves_nothing(tmp_path):
    c = CompressedImage(make_header(), [b"y"])
    c.strings.clear()
    with pytest.raises(ValueError):
        ff.write(tmp_path / "x.lpm", c)
    assert os.listdir(tmp_path) == []


def test_write_into_missing_folder_leaves_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        ff.write(tmp_path / "missing" / "x.lpm", SAMPLE)
    assert os.listdir(tmp_path) == []


def test_read_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        ff.read(tmp_path / "nope.lpm")


def test_read_refuses_oversized_file(tmp_path, monkeypatch):
    path = tmp_path / "big.lpm"
    ff.write(path, SAMPLE)
    monkeypatch.setattr(ff, "MAX_FILE_BYTES", len(encode(SAMPLE)) - 1)
    with pytest.raises(BitstreamError, match="exceeds the .*-byte limit"):
        ff.read(path)


def test_read_refuses_sparse_huge_file_without_reading(tmp_path):
    path = tmp_path / "huge.lpm"
    with open(path, "wb") as f:
        f.truncate(ff.MAX_FILE_BYTES + 1)  # sparse: no real disk or memory use
    t0 = time.perf_counter()
    with pytest.raises(BitstreamError, match="exceeds"):
        ff.read(path)
    assert time.perf_counter() - t0 < 1.0


def test_read_reserves_memory_for_the_file_not_for_the_limit(tmp_path):
    """Reading a small file used to reserve MAX_FILE_BYTES (1 GiB) for a moment: a MemoryError under an
    address-space limit that leaves room for the model and the image but not for that."""
    import tracemalloc

    path = tmp_path / "small.lpm"
    ff.write(path, SAMPLE)
    tracemalloc.start()
    try:
        assert ff.read(path) == SAMPLE
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


def test_read_max_pixels_and_corruption_carry_path(tmp_path):
    path = tmp_path / "img.lpm"
    ff.write(path, SAMPLE)
    with pytest.raises(BitstreamError, match=r"img\.lpm: image of 100x150"):
        ff.read(path, max_pixels=10)
    path.write_bytes(encode(SAMPLE)[:-1])
    with pytest.raises(BitstreamError, match=r"img\.lpm: corrupted lpm file"):
        ff.read(path)


def test_read_refuses_a_socket_as_not_a_regular_file(tmp_path, monkeypatch):
    """A socket cannot even be opened (ENXIO): it is refused by kind like a FIFO or device, not as 'No such
    device or address'."""
    import socket

    monkeypatch.chdir(tmp_path)  # a short relative name: AF_UNIX paths are limited to ~107 bytes
    with socket.socket(socket.AF_UNIX) as s:
        s.bind("s.lpm")
        with pytest.raises(BitstreamError, match=r"^s\.lpm: not a regular file \(a socket\)"):
            ff.read("s.lpm")
