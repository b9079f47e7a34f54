"""The ``.lpm`` container: one compressed image, self-describing and checksummed.

A ``.lpm`` file holds the entropy-coded strings of one image (in our codec two strings: the
latent ``y``, then the hyper-latent ``z``; each is what CompressAI's ``compress()`` returns as
``strings[i][0]``) together with everything needed to decode them: which checkpoint made them
(``model_id``), the rate ``λ`` the prompt modules were driven with, the original image size,
channel count and bit depth, and the hyper-latent shape that CompressAI's ``decompress()`` takes
as ``shape``.

Pure Python (``struct`` and ``zlib``); no torch needed. The decoder's contract is that any
truncated, mutated or foreign input fails with a one-line :class:`BitstreamError` (a
``ValueError``) -- never an exception from deeper code, a hang, or an allocation larger than the
input. To that end the CRC-32 over the whole file is verified *before* any length field is
trusted, and every length is checked against the bytes actually present.

Byte layout (all integers big-endian, ``struct`` format ``>``; ``u8/u16/u32`` unsigned,
``f64`` IEEE-754 double)::

    offset  size  type   field
    ------  ----  -----  --------------------------------------------------------------
         0     8  bytes  magic  89 4C 50 4D 0D 0A 1A 0A  (b"\\x89LPM\\r\\n\\x1a\\n")
         8     1  u8     format version (FORMAT_VERSION = 2; version 1 is still read, see below)
         9     1  u8     flags (0; reserved, a non-zero value is refused)
        10     2  u16    header length H (HEADER_SIZE = 35 for version 2, 31 for version 1): bytes 12..12+H
        12     8  bytes  model id: first 8 bytes of the checkpoint's sha256 (16 hex chars)
        20     8  f64    rate (the λ used; finite and > 0)
        28     4  u32    height of the original image (1..65535)
        32     4  u32    width  of the original image (1..65535)
        36     1  u8     channels of the original image (1 or 3)
        37     1  u8     bit depth of the original image (8 or 16)
        38     2  u16    latent height = ceil(height / LATENT_STRIDE)
        40     2  u16    latent width  = ceil(width / LATENT_STRIDE)
        42     4  u32    table check: CRC-32 of the entropy coder's table indexes (version 2 only)
        46     1  u8     number of strings N (1..8)                          (offset 42 in version 1)
        47                N times:  u32 length L_i | L_i bytes of string i    (offset 43 in version 1)
     end-4     4  u32    CRC-32 (zlib.crc32) of bytes [0, end-4)

The smallest valid file (one empty string) is ``MIN_FILE_SIZE = 55`` bytes (51 in version 1).
``LATENT_STRIDE`` is 64: the hyper-latent ``z`` is the image padded to a multiple of 64 and downsampled 64
times, so a header whose latent shape disagrees with its image size is refused as inconsistent.

**The table check (version 2).** The file's CRC-32 proves that the bytes are intact; it cannot see a decoder
whose arithmetic picks other entropy tables than the encoder's (the classic "encoded on a GPU, garbage on a
CPU" failure of learned codecs). lpm computes the tables' inputs (the hyper-synthesis and its prompt nets) in
float64 on the CPU at both ends, so they agree on any device and thread count; the table check is
:func:`lpm.entropy.table_check` of the index map, which a decoder compares with its own before decoding and
refuses with :class:`TableMismatchError` if they differ. **Version 1** files (lpm 0.1, before 2026-11-25: hyper-synthesis in
float32 on the encoding device, no table check) are still decoded, with the float32 path of version 1 and a
warning that a mismatch cannot be detected; lpm writes version 2 only.

Decoding checks, in order: the length is at least the minimum; the magic; the version; the
CRC-32; flags and header length; field ranges and latent consistency; the string table (each
length within the bytes that remain, no trailing bytes); finally the caller's ``max_pixels``.
"""

from __future__ import annotations

import errno
import math
import numbers
import operator
import os
import stat
import struct
import zlib
from dataclasses import dataclass

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "LATENT_STRIDE",
    "MAX_STRINGS",
    "MAX_FILE_BYTES",
    "MIN_FILE_SIZE",
    "BitstreamError",
    "TableMismatchError",
    "READ_VERSIONS",
    "StreamHeader",
    "CompressedImage",
    "encode",
    "encoded_size",
    "decode",
    "write",
    "read",
    "model_id_from_sha256",
    "expected_latent_shape",
    "describe",
    "bits_per_pixel",
]

MAGIC = b"\x89LPM\r\n\x1a\n"
FORMAT_VERSION = 2
#: Versions :func:`decode` reads (1: no table check, decoded with the float32 hyper-synthesis of lpm 0.1).
READ_VERSIONS = (1, 2)
#: Total downsampling from the image to the hyper-latent z (image padded to a multiple of this).
LATENT_STRIDE = 64
#: Largest image side (and latent side) a header may declare.
MAX_SIDE = 65535
MAX_STRINGS = 8
#: ``read()`` refuses files larger than this before reading them into memory.
MAX_FILE_BYTES = 1 << 30

_PREFIX = struct.Struct(">8sBBH")  # magic, version, flags, header length
#: Header layout per version: model id, rate, h, w, channels, bit depth, zh, zw, [table check,] n strings.
_HEADERS = {1: struct.Struct(">8sdIIBBHHB"), 2: struct.Struct(">8sdIIBBHHIB")}
_HEADER = _HEADERS[FORMAT_VERSION]
_LENGTH = struct.Struct(">I")
_CRC = struct.Struct(">I")

HEADER_SIZE = _HEADER.size  # 35 (31 in version 1)
MIN_FILE_SIZE = _PREFIX.size + HEADER_SIZE + _LENGTH.size + _CRC.size  # 55
#: The smallest file of any version :func:`decode` reads (a shorter one is refused as truncated).
_MIN_ANY = _PREFIX.size + min(h.size for h in _HEADERS.values()) + _LENGTH.size + _CRC.size  # 51

_HEX = frozenset("0123456789abcdef")
_CHANNEL_NAMES = {1: "gray", 3: "RGB"}


class BitstreamError(ValueError):
    """A byte string or file is not a valid ``.lpm`` container (message is one line)."""


class TableMismatchError(BitstreamError):
    """The file passed its integrity checks, but this decoder picks other entropy tables than the encoder's did
    (its table check differs): other arithmetic, or a header field (the rate) edited along with the CRC.
    Decoding would give garbage, so it is refused (message is one line)."""

    def __init__(self, stored: int, computed: int) -> None:
        super().__init__(
            f"cannot decode on this setup: its hyper-synthesis picks different entropy tables than the encoder's "
            f"did (table check {stored:08x} in the file, {computed:08x} here); the file passed its integrity checks: "
            f"decode it with the lpm version and checkpoint that wrote it (or its header was edited)"
        )
        self.stored, self.computed = stored, computed


def expected_latent_shape(height: int, width: int) -> tuple[int, int]:
    """Shape of the hyper-latent z for an image of ``height x width``: ``ceil(side / 64)``."""
    return (-(-height // LATENT_STRIDE), -(-width // LATENT_STRIDE))


def model_id_from_sha256(hexdigest: str) -> str:
    """The ``model_id`` of a checkpoint: the first 16 hex chars (8 bytes) of its sha256."""
    if not isinstance(hexdigest, str):
        raise ValueError(f"expected a sha256 hex digest string, got {type(hexdigest).__name__}")
    digest = hexdigest.strip().lower()
    if len(digest) != 64 or not set(digest) <= _HEX:
        raise ValueError(f"not a sha256 hex digest (64 hex chars): {hexdigest!r:.80}")
    return digest[:16]


def _as_int(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got bool")
    try:
        return operator.index(value)  # accepts int and numpy integers, refuses floats
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}") from None


def _header_problem(
    rate: float, height: int, width: int, channels: int, bit_depth: int,
    latent_shape: tuple[int, int],
) -> str | None:
    """The first thing wrong with these header fields, or None. Shared by encoder and decoder."""
    if not (math.isfinite(rate) and rate > 0):
        return f"rate must be finite and > 0, got {rate!r}"
    for name, side in (("height", height), ("width", width)):
        if not 1 <= side <= MAX_SIDE:
            return f"{name} {side} out of range 1..{MAX_SIDE}"
    if channels not in (1, 3):
        return f"channels must be 1 or 3, got {channels}"
    if bit_depth not in (8, 16):
        return f"bit_depth must be 8 or 16, got {bit_depth}"
    zh, zw = latent_shape
    for name, side in (("latent height", zh), ("latent width", zw)):
        if not 1 <= side <= MAX_SIDE:
            return f"{name} {side} out of range 1..{MAX_SIDE}"
    want = expected_latent_shape(height, width)
    if (zh, zw) != want:
        return (
            f"inconsistent header: latent shape {zh}x{zw} does not match image "
            f"{height}x{width} (expected {want[0]}x{want[1]} at stride {LATENT_STRIDE})"
        )
    return None


@dataclass(frozen=True)
class StreamHeader:
    """What a decoder needs besides the strings. Validated on construction (``ValueError``).

    ``model_id`` is 16 lowercase hex chars (see :func:`model_id_from_sha256`); ``rate`` is the
    λ used; ``height``/``width``/``channels``/``bit_depth`` describe the original image;
    ``latent_shape`` is the hyper-latent shape handed to CompressAI's ``decompress(shape=...)``;
    ``table_check`` is the CRC-32 of the entropy coder's table indexes (a 32-bit unsigned integer; ``None``
    only for files of format version 1, which carry none).
    """

    model_id: str
    rate: float
    height: int
    width: int
    channels: int
    bit_depth: int
    latent_shape: tuple[int, int]
    table_check: int | None = None

    @property
    def version(self) -> int:
        """The format version this header is written in: 2, or 1 for a header without a table check."""
        return 1 if self.table_check is None else 2

    def __post_init__(self) -> None:
        mid = self.model_id
        if not isinstance(mid, str) or len(mid) != 16 or not set(mid) <= _HEX:
            raise ValueError(f"model_id must be 16 lowercase hex chars, got {mid!r:.80}")
        if isinstance(self.rate, bool) or not isinstance(self.rate, numbers.Real):
            raise ValueError(f"rate must be a real number, got {type(self.rate).__name__}")
        rate = float(self.rate)
        ints = {n: _as_int(n, getattr(self, n)) for n in ("height", "width", "channels", "bit_depth")}
        try:
            zh, zw = self.latent_shape
        except (TypeError, ValueError):
            raise ValueError(f"latent_shape must be a pair of ints, got {self.latent_shape!r:.80}") from None
        latent = (_as_int("latent height", zh), _as_int("latent width", zw))
        problem = _header_problem(rate, latent_shape=latent, **ints)
        if problem:
            raise ValueError(problem)
        if self.table_check is not None:
            check = _as_int("table_check", self.table_check)
            if not 0 <= check <= 0xFFFFFFFF:
                raise ValueError(f"table_check must be a 32-bit unsigned integer, got {check}")
            object.__setattr__(self, "table_check", check)
        object.__setattr__(self, "rate", rate)
        for name, value in ints.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "latent_shape", latent)


def _strings_problem(strings: object) -> str | None:
    if not isinstance(strings, list):
        return f"strings must be a list of bytes, got {type(strings).__name__}"
    if not 1 <= len(strings) <= MAX_STRINGS:
        return f"expected 1..{MAX_STRINGS} strings, got {len(strings)}"
    for i, s in enumerate(strings):
        if not isinstance(s, bytes):
            return f"strings[{i}] must be bytes, got {type(s).__name__}"
        if len(s) > 0xFFFFFFFF:
            return f"strings[{i}] is too long ({len(s)} bytes; at most 2**32 - 1)"
    return None


@dataclass(frozen=True)
class CompressedImage:
    """One compressed image: its header and its entropy-coded strings (y then z in our codec)."""

    header: StreamHeader
    strings: list[bytes]

    def __post_init__(self) -> None:
        if not isinstance(self.header, StreamHeader):
            raise ValueError(f"header must be a StreamHeader, got {type(self.header).__name__}")
        strings = self.strings
        if isinstance(strings, (list, tuple)):
            strings = [bytes(s) if isinstance(s, (bytearray, memoryview)) else s for s in strings]
        problem = _strings_problem(strings)
        if problem:
            raise ValueError(problem)
        object.__setattr__(self, "strings", strings)


def encoded_size(c: CompressedImage) -> int:
    """Bytes of ``c`` as a file (its version's header, the strings with their lengths, the checksum): what
    :func:`encode` writes and a file :func:`decode` accepted holds, since no trailing bytes are allowed."""
    head = _HEADERS[c.header.version].size
    return _PREFIX.size + head + sum(_LENGTH.size + len(s) for s in c.strings) + _CRC.size


def encode(c: CompressedImage, *, legacy_v1: bool = False) -> bytes:
    """Serialise ``c`` in format version 2; refuses (``ValueError``) anything :func:`decode` would not read
    back, and a header without ``table_check``. ``legacy_v1=True`` writes version 1 instead (no table check;
    for compatibility tests only: lpm itself never writes it)."""
    if not isinstance(c, CompressedImage):
        raise ValueError(f"expected a CompressedImage, got {type(c).__name__}")
    h = c.header
    # Re-check: frozen dataclasses can be bypassed and the strings list is mutable.
    problem = _strings_problem(c.strings) or _header_problem(
        h.rate, h.height, h.width, h.channels, h.bit_depth, tuple(h.latent_shape)
    )
    if problem:
        raise ValueError(problem)
    if legacy_v1 != (h.table_check is None):
        raise ValueError("a version 2 file needs the header's table_check; version 1 (legacy_v1=True) has none")
    fields = [bytes.fromhex(h.model_id), h.rate, h.height, h.width, h.channels, h.bit_depth,
              h.latent_shape[0], h.latent_shape[1]]
    version = 1 if legacy_v1 else FORMAT_VERSION
    if not legacy_v1:
        fields.append(h.table_check)
    header = _HEADERS[version]
    parts = [
        _PREFIX.pack(MAGIC, version, 0, header.size),
        header.pack(*fields, len(c.strings)),
    ]
    for s in c.strings:
        parts += [_LENGTH.pack(len(s)), s]
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


def decode(data: bytes, *, max_pixels: int | None = None) -> CompressedImage:
    """Parse a ``.lpm`` byte string; any malformed input raises a one-line :class:`BitstreamError`.

    ``max_pixels`` (optional) refuses images with ``height * width > max_pixels`` before a caller
    allocates anything for them.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode() expects bytes, got {type(data).__name__}")
    if max_pixels is not None and (_as_int("max_pixels", max_pixels) < 1):
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    data = bytes(data)
    n = len(data)

    if n < _MIN_ANY:
        if n == 0:
            raise BitstreamError("not an lpm file (empty)")
        if data[: len(MAGIC)] != MAGIC[:n]:
            raise BitstreamError("not an lpm file (bad magic)")
        raise BitstreamError(f"truncated lpm file ({n} bytes; a valid file has at least {_MIN_ANY})")
    magic, version, flags, header_len = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise BitstreamError("not an lpm file (bad magic)")
    if version not in READ_VERSIONS:
        raise BitstreamError(
            f"unsupported lpm format version {version} (this build reads {', '.join(map(str, READ_VERSIONS))})"
        )
    header = _HEADERS[version]
    min_size = _PREFIX.size + header.size + _LENGTH.size + _CRC.size
    if n < min_size:
        raise BitstreamError(f"truncated lpm file ({n} bytes; a valid version {version} file has at least {min_size})")
    end = n - _CRC.size
    (stored_crc,) = _CRC.unpack_from(data, end)
    if zlib.crc32(memoryview(data)[:end]) != stored_crc:
        raise BitstreamError("corrupted lpm file (checksum mismatch)")

    # From here on the bytes are as written; still, trust no field without checking it.
    if flags != 0:
        raise BitstreamError(f"unsupported lpm flags 0x{flags:02x} (this build knows none)")
    if header_len != header.size:
        raise BitstreamError(
            f"bad lpm header length {header_len} (version {version} headers are {header.size} bytes)"
        )
    fields = header.unpack_from(data, _PREFIX.size)
    mid, rate, height, width, channels, bit_depth, zh, zw = fields[:8]
    table_check, n_strings = (fields[8], fields[9]) if version >= 2 else (None, fields[8])
    problem = _header_problem(rate, height, width, channels, bit_depth, (zh, zw))
    if problem:
        raise BitstreamError(f"invalid lpm header: {problem}")
    if not 1 <= n_strings <= MAX_STRINGS:
        raise BitstreamError(f"invalid lpm header: {n_strings} strings (expected 1..{MAX_STRINGS})")

    pos = _PREFIX.size + header.size
    strings = []
    for i in range(n_strings):
        if end - pos < _LENGTH.size:
            raise BitstreamError(f"malformed lpm file: string {i} length field runs past the end")
        (length,) = _LENGTH.unpack_from(data, pos)
        pos += _LENGTH.size
        if length > end - pos:
            raise BitstreamError(
                f"malformed lpm file: string {i} declares {length} bytes but only {end - pos} remain"
            )
        strings.append(data[pos : pos + length])
        pos += length
    if pos != end:
        raise BitstreamError(f"malformed lpm file: {end - pos} trailing bytes after the last string")

    if max_pixels is not None and height * width > max_pixels:
        raise BitstreamError(
            f"image of {height}x{width} (HxW, {height * width} pixels) exceeds the limit of {max_pixels} pixels "
            "(raise it with --max-pixels, or max_pixels= in Python, if this machine has the memory)"
        )
    return CompressedImage(StreamHeader(mid.hex(), rate, height, width, channels, bit_depth, (zh, zw), table_check),
                           strings)


def write(path: str | os.PathLike, c: CompressedImage, *, overwrite: bool = True) -> int:
    """Write ``c`` to ``path`` atomically (:func:`lpm.fsutil.atomic_write`); returns the bytes written.

    Readers see either the old file or the complete new one; on any failure (also an interrupt) no
    temporary is left, and an ``OSError`` names ``path``. The new file gets the usual permissions
    (``0o666`` minus the umask). ``overwrite=False`` refuses (``FileExistsError``) an existing file;
    a directory, FIFO or device is never replaced, a symbolic link is replaced itself.
    """
    from lpm.fsutil import atomic_write

    data = encode(c)  # validate before touching the disk
    atomic_write(path, data, overwrite=overwrite)
    return len(data)


def read(path: str | os.PathLike, *, max_pixels: int | None = None) -> CompressedImage:
    """Read and :func:`decode` a ``.lpm`` file.

    Only regular files are read: a directory raises ``IsADirectoryError``, a FIFO, device or socket
    a :class:`BitstreamError` at once (opened non-blocking, so a FIFO without writer never hangs and
    ``/dev/zero`` is not read). The prefix (magic, version) is checked before the rest is read, and
    files over ``MAX_FILE_BYTES`` are refused before being read; a missing file raises
    ``FileNotFoundError``. Decoding errors carry the path: ``BitstreamError("<path>: ...")``.
    """
    path = os.fspath(path)

    def not_regular(mode: int) -> BitstreamError:
        from lpm.fsutil import file_kind

        return BitstreamError(
            f"{path}: not a regular file (a {file_kind(mode)}); .lpm files are read from regular files only"
        )

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:  # a socket cannot be opened at all (ENXIO, "No such device or address")
        try:
            mode = os.stat(path).st_mode
        except OSError:
            if path == "-" and isinstance(exc, FileNotFoundError):  # the convention for standard input
                raise FileNotFoundError(errno.ENOENT, "no such file (lpm does not read standard input; name a "
                                        "file)", path) from None
            raise exc from None
        if stat.S_ISSOCK(mode):
            raise not_regular(mode) from None
        raise
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISREG(st.st_mode):
            raise not_regular(st.st_mode)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        if st.st_size > MAX_FILE_BYTES:
            raise BitstreamError(f"{path}: file of {st.st_size} bytes exceeds the {MAX_FILE_BYTES}-byte limit")
        head = f.read(_PREFIX.size)
        if head[: len(MAGIC)] != MAGIC or len(head) < _PREFIX.size:
            data = head  # not ours, or too short: decode() says which, without reading the rest
        else:
            # the size fstat saw, plus one byte to notice a file that grows meanwhile (reading up to the limit
            # would make CPython reserve MAX_FILE_BYTES for every file, however small)
            data = head + f.read(max(st.st_size - len(head), 0) + 1)
    if len(data) > MAX_FILE_BYTES:
        raise BitstreamError(f"{path}: file exceeds the {MAX_FILE_BYTES}-byte limit")
    if len(data) > st.st_size:
        raise BitstreamError(f"{path}: the file grew while it was read; read it again once it is written")
    try:
        return decode(data, max_pixels=max_pixels)
    except BitstreamError as e:
        raise BitstreamError(f"{path}: {e}") from None


def bits_per_pixel(data: bytes, height: int, width: int) -> float:
    """Rate of an encoded file counted from its real bytes: ``8 * len(data) / (height * width)``."""
    height, width = _as_int("height", height), _as_int("width", width)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    return 8 * len(data) / (height * width)


def describe(c: CompressedImage) -> str:
    """One-line summary, e.g. ``lpm v2: 512x768 (HxW) RGB 8-bit, lambda=0.0067, ...``.

    The bpp counts every byte of the encoded file (header and checksum included).
    """
    h = c.header
    total = encoded_size(c)
    names = ("y", "z") if len(c.strings) == 2 else tuple(str(i) for i in range(len(c.strings)))
    sizes = ", ".join(f"{k} {len(s)} B" for k, s in zip(names, c.strings))
    return (
        f"lpm v{h.version}: {h.height}x{h.width} (HxW) {_CHANNEL_NAMES.get(h.channels, h.channels)} "
        f"{h.bit_depth}-bit, lambda={h.rate:.6g}, model {h.model_id}, latent {h.latent_shape[0]}x"
        f"{h.latent_shape[1]}, "
        + ("no table check (version 1), " if h.table_check is None else f"table check {h.table_check:08x}, ")
        + f"{len(c.strings)} strings ({sizes}), {total} bytes, "
        f"{8 * total / (h.height * h.width):.4f} bpp"
    )
