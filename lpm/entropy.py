"""Entropy decoding that crafted strings cannot crash, leak memory into, or inflate (issue 10).

compressai's rANS decoder (C++ ``RansDecoder.decode_with_indexes``: ``rans_interface.cpp`` on ryg's
``rans64.h``, compressai 1.2.8) reads its string as little-endian 32-bit words and never checks where it
is. A string too short for its symbols makes it read past the end of its buffer: a crash, or bytes of other
objects in the picture (a different image on every run). :meth:`lpm.models.TICCodec.decompress` therefore
decodes only through :func:`check_strings`, :func:`decode_bottleneck` and :func:`decode_gaussian`, which
check, in order:

1. **Framing** (:func:`check_framing`). compressai's encoder writes whole words and starts the string
   with its final 64-bit state, which always lies in ``[2**31, 2**63)``. Anything else is refused. The
   lower end is also the decoder invariant ``x >= 2**31`` that the read bound of step 3 rests on.
2. **Length** (:func:`table_min_bits`, :func:`min_string_bytes`), before anything is allocated for the
   decode. A string is never shorter than what the coder needs for its symbols, even if each is its
   table's most probable value (frequency ``f`` of ``2**16``; an escape adds at least a 4-bit bypass
   code). Coding a symbol multiplies the encoder state by at least ``1 + (2**16/f - 1)(1 - 2**-15)``
   (``x' = floor(x/f)·2**16 + x mod f + start`` with ``x >= 2**15·f``), emitting a word divides it by at
   most ``2**32 / (1 - 2**-15)``, and the state starts at ``2**31`` and ends below ``2**63``. So with
   ``G`` the sum of the log2 of those factors, a string has at least ``8 + 4·floor((G - 32) / (32 +
   2**-14))`` bytes, whatever the image. z is checked from the header alone (its tables are fixed), y
   first with its cheapest table, then with its own tables (the scales from ẑ) just before its decode.
3. **Reads** (:func:`read_bound`). The decoder gets the string followed by zeros, long enough that it
   provably stays inside: ``2 + 21·n + 16·W`` words for ``n`` symbols and a ``W``-word string.
   Initialisation reads 2 words, each symbol's renormalisation at most one. Only an escape (a table's
   last entry, followed by bypass codes) reads more: 4 bits per call, so at most one word per 8 calls
   while ``x >= 2**31``. The calls number at most ``16·k + 15`` where ``k`` counts its leading
   15-valued nibbles: at most 9 from the state before its first refill, then 8 per all-ones data word,
   at most 7 from the data word that ends the run, none from zero padding. Summed over symbols, each data
   word counted once: the bound. (Tested against a read-counting model of the decoder.) The padded copy
   costs 84 bytes per symbol, twice (pybind copies it again), only while y is decoded, before the
   synthesis transform's much larger peak.
   A string is also never longer than ``4·n`` bytes for ``n`` symbols (:func:`max_string_bytes`): compressai's
   encoder writes into a buffer of one 32-bit word per symbol, flush included, and never beyond it unless it
   corrupts the heap (see step 4). So the padded copy is bounded by the latent's size (at most ``148·n + 8``
   bytes; ``84·n`` plus 16 per string byte), whatever the file's size, and a string padded with junk to the
   file-size limit is refused from the header alone instead of costing ~33 bytes of memory per byte.
4. **Canonical stream** (:func:`decode_indexed`). The decoded symbols must lie within ``±MAX_SYMBOL``
   (float32 holds no larger integer exactly, and compressai's encoder shifts by 32 bits or more --
   undefined behaviour -- from ``2**27`` on) and encode again, with the same tables, to exactly the
   given string. Encoder output always passes (decoding then encoding it is the identity); junk that
   happens to decode, or a stream decoded at another rate than it was coded at, is refused instead of
   becoming a picture. Before that re-encoding, :func:`encoded_words_bound` must show that the encoder's
   output for those symbols fits its ``n``-word buffer: escapes cost up to 48 bits a symbol near
   ``MAX_SYMBOL``, and compressai's encoder writes past the start of its buffer (heap corruption) when
   the words do not fit. Symbols that would not fit are no encoder's output, so they are refused unencoded.
   The encoder side is checked the same way (:func:`encode_bottleneck`, :func:`encode_gaussian`): latents
   that are not finite, beyond ``±MAX_SYMBOL``, or too costly for the buffer are a one-line ``ValueError``
   (a broken checkpoint), never a call into compressai's encoder.

Every refusal is a one-line :class:`lpm.fileformat.BitstreamError` (a ``ValueError``).

**Tables that agree on every device** (issue 11). Which table codes each element of y is decided by the
scales of the hyper-synthesis; a decoder whose arithmetic differs from the encoder's in the last float32 bit
can land on the other side of a table boundary and desynchronise (measured: ~0.7·10⁻⁶ flips per element per
ulp; one a stream in five at paper size for a 1-ulp difference). :func:`cpu_float64` gives the copies in which
:meth:`lpm.models.TICCodec.compress`/``decompress`` evaluate the hyper-synthesis and its prompt nets at both
ends (float64, on the CPU, whatever device runs the rest), and :func:`table_check` the CRC-32 of the index map
that ``.lpm`` version 2 stores, so a decoder that still derives other tables refuses in one line
(:class:`lpm.fileformat.TableMismatchError`) instead of writing garbage.
"""

from __future__ import annotations

import copy
import math
import zlib
from typing import Sequence, TypeVar

import torch
from compressai import ans
from compressai.entropy_models import EntropyBottleneck, EntropyModel, GaussianConditional
from torch import Tensor

from lpm.fileformat import BitstreamError

_M = TypeVar("_M", bound=torch.nn.Module)

__all__ = [
    "cpu_float64",
    "table_check",
    "MAX_SYMBOL",
    "MIN_SYMBOLS",
    "MIN_TABLE_LENGTH",
    "check_framing",
    "table_min_bits",
    "table_problem",
    "min_string_bytes",
    "read_bound",
    "check_strings",
    "max_string_bytes",
    "encoded_words_bound",
    "decode_indexed",
    "decode_bottleneck",
    "decode_gaussian",
    "encode_bottleneck",
    "encode_gaussian",
]

PRECISION = 16  # compressai's rANS precision (``entropy_coder_precision``); the bounds assume it
RANS_L = 1 << 31  # rans64's normalisation interval is [RANS_L, 2**63)
STATE_END = 1 << 63
#: Largest decoded symbol magnitude accepted (see step 4 of the module docstring).
MAX_SYMBOL = 1 << 24
#: Fewest symbols per string. compressai's encoder sizes its output at one word per symbol, which the
#: 2-word final state overflows (heap corruption) for one or two symbols; a margin, as real latents are large.
MIN_SYMBOLS = 5
#: Shortest CDF (entries + 1) compressai builds: one value and the escape entry.
MIN_TABLE_LENGTH = 3
#: Read bound in 32-bit words: ``READ_INIT + READ_PER_SYMBOL·n + READ_PER_WORD·W`` (step 3).
READ_INIT, READ_PER_SYMBOL, READ_PER_WORD = 2, 21, 16
_LOSS = 1.0 - 2.0**-15  # rounding loss factor of one encoder step (step 2)


def _check_coder(model: EntropyModel) -> None:
    name = getattr(model.entropy_coder, "name", None)
    if name != "ans" or model.entropy_coder_precision != PRECISION:
        raise ValueError(f"safe decoding supports compressai's 'ans' coder at {PRECISION} bits, not {name!r}")
    if model._quantized_cdf.numel() == 0:
        raise ValueError("entropy model tables are not built; call update() first")
    problem = table_problem(model)
    if problem is not None:
        raise ValueError(f"the entropy tables {problem}: not tables compressai builds")


def table_problem(model: EntropyModel) -> str | None:
    """Why compressai's rANS coder cannot take ``model``'s (built) tables safely, or ``None``: each CDF runs
    ``0 … 2**precision``, strictly increasing over its length, and has at least one value and the escape
    entry (compressai's encoder divides by zero on a one-entry table); offsets, and an entropy bottleneck's
    quantiles (its medians), lie within ±``MAX_SYMBOL`` (beyond, its encoder hangs or overflows int32).
    The checkpoint loader refuses such tables; every encode and decode checks them again."""
    q, length = model._quantized_cdf, model._cdf_length.long()
    top = 1 << int(model.entropy_coder_precision)
    if bool(((length < MIN_TABLE_LENGTH) | (length > q.shape[1])).any()):
        return f"have CDF lengths outside {MIN_TABLE_LENGTH}..{q.shape[1]}"
    if bool((model._offset.long().abs() > MAX_SYMBOL).any()):
        return f"have offsets beyond ±{MAX_SYMBOL}"
    if isinstance(model, EntropyBottleneck) and not bool((model.quantiles.detach().abs() <= MAX_SYMBOL).all()):
        return f"have quantiles beyond ±{MAX_SYMBOL}"
    used = torch.arange(1, q.shape[1], device=q.device).unsqueeze(0) < length.unsqueeze(1)  # columns 1.. in each CDF
    last = q.gather(1, (length - 1).unsqueeze(1)).squeeze(1)
    rising = q[:, 1:] > q[:, :-1]
    if bool((q[:, 0] != 0).any()) or bool((last != top).any()) or bool((used & ~rising).any()):
        return f"are not valid CDFs (0 … {top}, strictly increasing)"
    return None


def check_framing(string: object, name: str) -> bytes:
    """Step 1: ``string`` is bytes, whole words, at least the 8-byte state, and the state is in range."""
    if not isinstance(string, (bytes, bytearray, memoryview)):
        raise ValueError(f"{name} string must be bytes, got {type(string).__name__}")
    s = bytes(string)
    if len(s) < 8 or len(s) % 4:
        raise BitstreamError(
            f"malformed {name} string: {len(s)} bytes (the rANS coder writes whole words, at least 8 bytes)"
        )
    state = int.from_bytes(s[:8], "little")
    if not RANS_L <= state < STATE_END:
        raise BitstreamError(f"malformed {name} string: initial coder state 0x{state:016x} outside [2^31, 2^63)")
    return s


def table_min_bits(model: EntropyModel) -> Tensor:
    """Step 2: per table (float64), a lower bound on the bits one symbol coded with it adds to the string:
    its most probable value's, or the escape entry's plus the 4 bits of its shortest bypass code."""
    _check_coder(model)
    cdf = model._quantized_cdf.to("cpu", torch.int64)
    lengths = model._cdf_length.to("cpu", torch.int64).reshape(-1, 1)
    freqs = cdf[:, 1:] - cdf[:, :-1]
    col = torch.arange(freqs.shape[1]).view(1, -1)
    regular = freqs.masked_fill(col >= lengths - 2, 0).amax(1)  # values inside the table
    escape = freqs.gather(1, (lengths - 2).clamp(min=0))[:, 0]  # the escape entry, plus >= 4 bypass bits

    def cost(f: Tensor) -> Tensor:
        f = f.clamp(1, 1 << PRECISION).double()
        return torch.log2(1 + ((1 << PRECISION) / f - 1) * _LOSS)

    return torch.minimum(cost(regular).masked_fill(regular < 1, float("inf")), cost(escape) + 4)


def min_string_bytes(bits: float) -> int:
    """Step 2: the fewest bytes a string can have whose symbols add at least ``bits`` bits."""
    words = math.floor(max(0.0, bits * (1 - 1e-9) - 32) / (32 + 2.0**-14))
    return 8 + 4 * words


def read_bound(num_symbols: int, num_bytes: int) -> int:
    """Step 3: bytes the decoder may read for ``num_symbols`` symbols from a ``num_bytes``-byte string."""
    return 4 * (READ_INIT + READ_PER_SYMBOL * num_symbols + READ_PER_WORD * (num_bytes // 4))


def max_string_bytes(num_symbols: int) -> int:
    """Step 2: the most bytes compressai's encoder writes for ``num_symbols`` symbols (its output buffer)."""
    return 4 * num_symbols


#: log2 of the most one rANS step grows the state beyond its nominal bits (``x >= 2**15·f`` before a put:
#: the ``x mod f + start < 2**16`` term is at most ``2**-15`` of ``x·2**16/f``); also covers the bypass puts.
_STEP_SLACK = math.log2(1.0 + 2.0**-15)


def encoded_words_bound(model: EntropyModel, symbols: Tensor, indexes: Tensor) -> int:
    """Step 4: an upper bound on the 32-bit words compressai's encoder writes for ``symbols`` (integers, any
    magnitude representable in int64) coded with the tables ``indexes`` (same shape), its final state included.

    The encoder starts at ``2**31``, ends at or above ``2**31`` and flushes two words; every word it emits
    divides the state by at least ``2**32``, a symbol of frequency ``f`` multiplies it by at most
    ``2**16/f·(1 + 2**-15)``, and an escape adds one 4-bit put per bypass nibble plus its count nibbles (the
    count in 15-valued runs, then the remainder), each multiplying by at most ``16·(1 + 2**-27)``. So the
    words emitted are at most the sum of those log2 factors over 32. Memory: a few int64/float64 copies of
    the symbols; never the ``(n, table length)`` rows of the tables."""
    _check_coder(model)
    idx = indexes.reshape(-1).to("cpu", torch.int64)
    cdf = model._quantized_cdf.to("cpu", torch.int64)
    width = cdf.shape[1]
    v = symbols.reshape(-1).to("cpu", torch.int64) - model._offset.reshape(-1).to("cpu", torch.int64)[idx]
    max_value = model._cdf_length.reshape(-1).to("cpu", torch.int64)[idx] - 2
    escape = (v < 0) | (v >= max_value)
    at = idx * width + torch.where(escape, max_value, v)
    flat = cdf.reshape(-1)
    freq = (flat[at + 1] - flat[at]).clamp(min=1)
    bits = float((PRECISION - torch.log2(freq.double())).sum()) + idx.numel() * _STEP_SLACK
    v, max_value = v[escape], max_value[escape]  # escapes only (few in a real latent)
    raw = torch.where(v < 0, -2 * v - 1, 2 * (v - max_value))
    nibbles = torch.zeros_like(raw)
    for j in range(16):  # int64 magnitudes have at most 16 nibbles
        nibbles += (raw >> (4 * j)) > 0
    puts = nibbles + nibbles // 15 + 1
    bits += float(puts.sum()) * (4 + _STEP_SLACK)
    return 2 + math.floor(bits / 32)


def _check_length(s: bytes, bits: float, name: str, num_symbols: int) -> None:
    need = min_string_bytes(bits)
    if len(s) < need:
        raise BitstreamError(
            f"implausibly short {name} string: {len(s)} bytes for {num_symbols} latent values "
            f"(the coder's tables need at least {need})"
        )
    _check_not_too_long(s, name, num_symbols)


def _check_not_too_long(s: bytes, name: str, num_symbols: int) -> None:
    most = max_string_bytes(num_symbols)
    if len(s) > most:
        raise BitstreamError(
            f"implausibly long {name} string: {len(s)} bytes for {num_symbols} latent values "
            f"(the encoder writes at most {most})"
        )


def _batch(strings: object, name: str) -> list[bytes]:
    if not isinstance(strings, (list, tuple)) or not strings:
        raise ValueError(f"expected a non-empty list of {name} strings, got {type(strings).__name__}")
    return [check_framing(s, name) for s in strings]


def check_strings(
    bottleneck: EntropyBottleneck,
    conditional: GaussianConditional,
    y_strings: Sequence[bytes],
    z_strings: Sequence[bytes],
    z_shape: Sequence[int],
    y_channels: int,
    y_per_z: int = 4,
) -> None:
    """Steps 1-2 from the latent shape alone: framing of every string, z's length against its fixed
    tables, y's against its cheapest table (y is ``y_channels x (y_per_z·zh) x (y_per_z·zw)``)."""
    ys, zs = _batch(y_strings, "y"), _batch(z_strings, "z")
    if len(ys) != len(zs):
        raise ValueError(f"{len(ys)} y strings but {len(zs)} z strings")
    zh, zw = (int(v) for v in z_shape)
    if zh < 1 or zw < 1:
        raise ValueError(f"latent shape must be positive, got {zh}x{zw}")
    z_bits = float(table_min_bits(bottleneck).sum()) * zh * zw
    n_y = y_channels * y_per_z * zh * y_per_z * zw
    y_bits = float(table_min_bits(conditional).min()) * n_y
    for y, z in zip(ys, zs):
        _check_length(z, z_bits, "z", bottleneck._quantized_cdf.shape[0] * zh * zw)
        _check_length(y, y_bits, "y", n_y)


def decode_indexed(model: EntropyModel, string: bytes, indexes: Tensor, name: str) -> Tensor:
    """Steps 1, 3 and 4 for one string: its symbols (int32, shaped like ``indexes``), or a refusal."""
    _check_coder(model)
    s = check_framing(string, name)
    n = indexes.numel()
    if n < MIN_SYMBOLS:
        raise ValueError(f"{name} latent of {n} values is too small to code (compressai needs at least {MIN_SYMBOLS})")
    _check_not_too_long(s, name, n)  # before the padded copy: its size must not follow the file's
    idx = indexes.reshape(-1).int().tolist()
    cdf = model._quantized_cdf.tolist()
    lengths = model._cdf_length.reshape(-1).int().tolist()
    offsets = model._offset.reshape(-1).int().tolist()
    padded = s + bytes(read_bound(n, len(s)) - len(s))
    values = ans.RansDecoder().decode_with_indexes(padded, idx, cdf, lengths, offsets)
    del padded
    symbols = torch.tensor(values, dtype=torch.int32)
    if int(symbols.to(torch.int64).abs().max()) > MAX_SYMBOL:
        raise BitstreamError(f"corrupted {name} string: decodes to a value beyond ±{MAX_SYMBOL}")
    if encoded_words_bound(model, symbols, indexes) > n:  # re-encoding them would overrun the encoder's buffer
        raise BitstreamError(
            f"corrupted {name} string: decodes to values too costly for the encoder's {n}-word buffer "
            f"(no encoder output decodes to them)"
        )
    if ans.RansEncoder().encode_with_indexes(values, idx, cdf, lengths, offsets) != s:
        raise BitstreamError(f"corrupted {name} string: not what the encoder writes for the values it decodes to")
    return symbols.reshape(indexes.shape).to(model._quantized_cdf.device)


def decode_bottleneck(bottleneck: EntropyBottleneck, strings: Sequence[bytes], size: Sequence[int]) -> Tensor:
    """Safe ``EntropyBottleneck.decompress(strings, size)``: ẑ of shape ``(B, C, *size)``."""
    zs = _batch(strings, "z")
    size = tuple(int(v) for v in size)
    n_ch = bottleneck._quantized_cdf.shape[0]
    bits = float(table_min_bits(bottleneck).sum()) * math.prod(size)
    indexes = torch.arange(n_ch, dtype=torch.int32).view(n_ch, *([1] * len(size))).expand(n_ch, *size)
    medians = bottleneck._get_medians().detach().reshape(n_ch, *([1] * len(size)))
    out = []
    for z in zs:
        _check_length(z, bits, "z", indexes.numel())
        out.append(decode_indexed(bottleneck, z, indexes, "z"))
    z_hat = torch.stack(out).type_as(medians)
    z_hat += medians  # in place, as compressai does: the same memory layout, so bit-identical downstream
    return z_hat


def decode_gaussian(
    conditional: GaussianConditional, strings: Sequence[bytes], indexes: Tensor, means: Tensor
) -> Tensor:
    """Safe ``GaussianConditional.decompress(strings, indexes, means=means)``: ŷ shaped like ``indexes``."""
    ys = _batch(strings, "y")
    if len(ys) != indexes.shape[0] or means.shape != indexes.shape:
        raise ValueError(f"{len(ys)} y strings for indexes {tuple(indexes.shape)}, means {tuple(means.shape)}")
    bits = table_min_bits(conditional)
    out = []
    for y, idx in zip(ys, indexes):
        _check_length(y, float(bits[idx.reshape(-1).long().cpu()].sum()), "y", idx.numel())
        out.append(decode_indexed(conditional, y, idx, "y"))
    y_hat = torch.stack(out).type_as(means)
    y_hat += means
    return y_hat


def _check_encodable(model: EntropyModel, symbols: Tensor, indexes: Tensor, name: str) -> None:
    """Step 4 on the encoder side: rounded latents ``symbols`` (float, one image) that compressai can code."""
    if not bool(torch.isfinite(symbols).all()):
        raise ValueError(f"cannot code this image: the {name} latent is not finite (a broken checkpoint?)")
    if float(symbols.abs().max()) > MAX_SYMBOL:
        raise ValueError(f"cannot code this image: a {name} latent value is beyond ±{MAX_SYMBOL} (a broken checkpoint?)")
    n = symbols.numel()
    if n < MIN_SYMBOLS:
        raise ValueError(f"{name} latent of {n} values is too small to code (compressai needs at least {MIN_SYMBOLS})")
    words = encoded_words_bound(model, symbols.to(torch.int64), indexes)
    if words > n:
        raise ValueError(
            f"cannot code this image: its {name} latent may need {words} words, more than the {n} that "
            f"compressai's encoder has room for (a broken checkpoint?)"
        )


def encode_bottleneck(bottleneck: EntropyBottleneck, z: Tensor) -> list[bytes]:
    """Checked ``EntropyBottleneck.compress(z)`` (``z``: ``(B, C, H, W)``): the same strings, or a ``ValueError``
    for latents compressai's encoder cannot code without writing out of bounds (step 4)."""
    _check_coder(bottleneck)
    n_ch = bottleneck._quantized_cdf.shape[0]
    medians = bottleneck._get_medians().detach().reshape(1, n_ch, *([1] * (z.dim() - 2)))
    indexes = torch.arange(n_ch, dtype=torch.int64).view(n_ch, *([1] * (z.dim() - 2))).expand(*z.shape[1:])
    symbols = torch.round(z - medians.to(z))  # what compressai's quantize(..., "symbols") computes
    for one in symbols:
        _check_encodable(bottleneck, one, indexes, "z")
    return bottleneck.compress(z)


def encode_gaussian(conditional: GaussianConditional, y: Tensor, indexes: Tensor, means: Tensor) -> list[bytes]:
    """Checked ``GaussianConditional.compress(y, indexes, means=means)``: the same strings, or a ``ValueError``
    for latents compressai's encoder cannot code without writing out of bounds (step 4)."""
    _check_coder(conditional)
    symbols = torch.round(y - means)  # what compressai's quantize(..., "symbols", means) computes
    for one, idx in zip(symbols, indexes):
        _check_encodable(conditional, one, idx, "y")
    return conditional.compress(y, indexes, means=means)


def cpu_float64(module: _M) -> _M:
    """A float64 copy of ``module`` on the CPU, in eval mode (``module`` itself is untouched).

    Copied afresh on each call (~10 ms for the paper-size hyper-synthesis, ~1 ms per prompt net), so it always
    reflects the module's current weights and state: no cache can go stale. Forward hooks of the original
    (e.g. a notebook capturing attention maps) are not carried over: the copy computes exactly the module."""
    out = copy.deepcopy(module).to(device="cpu", dtype=torch.float64).eval()
    for m in out.modules():
        for name in ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
                     "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called"):
            hooks = getattr(m, name, None)
            if hooks:
                hooks.clear()
    return out


def table_check(indexes: Tensor) -> int:
    """CRC-32 (zlib) of one image's table indexes ``(C, H, W)``, as little-endian int32 in C, H, W order."""
    idx = indexes.detach().to("cpu", torch.int32).contiguous()
    return zlib.crc32(idx.numpy().astype("<i4", copy=False).tobytes())
