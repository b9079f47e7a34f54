"""lpm.entropy: crafted entropy-coded strings are refused or decoded safely (issue 10).

Each of the four checks of :mod:`lpm.entropy` is tested against what it claims: the length bound against
what compressai's encoder really writes, the read bound against a Python model of compressai's rANS decoder
that counts its reads (and agrees with the C++ one symbol for symbol), the canonical check against mutated
strings, and the whole path against the streams our encoder writes (decoded bit for bit as before).
"""

from __future__ import annotations

import bisect
import random
import struct
import zlib

import pytest
import torch
from compressai import ans

from conftest import make_tiny_codec
from lpm import entropy, fileformat
from lpm.fileformat import BitstreamError

pytestmark = pytest.mark.usefixtures("torch_single_thread")

RATE = 0.013


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([xx, yy, (xx + yy) / 2])
    return (base + 0.1 * torch.rand(3, h, w, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def streams(tiny_codec):
    """(strings, shape, size, rate) of a few genuine streams of the tiny codec."""
    out = []
    for (h, w), rate, seed in (((64, 96), RATE, 0), ((70, 130), 0.0035, 1), ((128, 64), 0.0483, 2)):
        c = tiny_codec.compress(_image(h, w, seed)[None], rate)
        out.append((c["strings"], c["shape"], (h, w), rate))
    return out


def _tables(model):
    return (
        model._quantized_cdf.tolist(),
        model._cdf_length.reshape(-1).int().tolist(),
        model._offset.reshape(-1).int().tolist(),
    )


def _one_line_bitstream_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert isinstance(excinfo.value, ValueError) and "\n" not in msg and msg
    return msg


# ---------------------------------------------------------------------------------------- 1. framing
@pytest.mark.parametrize("n", range(17))
def test_strings_of_0_to_16_bytes(n):
    s = ((1 << 40) + n).to_bytes(8, "little") + bytes(range(n - 8)) if n >= 8 else bytes(n)
    if n >= 8 and n % 4 == 0:
        assert entropy.check_framing(s, "y") == s
    else:
        with pytest.raises(BitstreamError, match="whole words, at least 8 bytes") as e:
            entropy.check_framing(s, "y")
        _one_line_bitstream_error(e)


@pytest.mark.parametrize("state,ok", [(0, False), ((1 << 31) - 1, False), (1 << 31, True), ((1 << 63) - 1, True),
                                      (1 << 63, False), ((1 << 64) - 1, False)])
def test_initial_coder_state_must_be_one_the_encoder_can_write(state, ok):
    s = state.to_bytes(8, "little") + b"\x00\x01\x02\x03"
    if ok:
        entropy.check_framing(s, "z")
    else:
        with pytest.raises(BitstreamError, match="initial coder state"):
            entropy.check_framing(s, "z")


def test_non_bytes_string_is_a_value_error():
    with pytest.raises(ValueError, match="must be bytes"):
        entropy.check_framing("abcdefgh", "y")


# ---------------------------------------------------------------------------------------- 2. length bound
def _most_probable(model, t: int) -> int:
    cdf, lengths, offsets = _tables(model)
    freqs = [cdf[t][j + 1] - cdf[t][j] for j in range(lengths[t] - 1)]
    return freqs.index(max(freqs)) + offsets[t]


@pytest.mark.parametrize("which", ["entropy_bottleneck", "gaussian_conditional"])
def test_min_bytes_never_exceeds_what_the_encoder_writes(tiny_codec, which):
    """The cheapest possible strings (every symbol its table's most probable value) are never shorter than
    the bound, and the bound is not vacuous (it is most of their length once there are many symbols)."""
    model = getattr(tiny_codec.base, which)
    cdf, lengths, offsets = _tables(model)
    bits = entropy.table_min_bits(model)
    n_tables = len(lengths)
    for t in sorted({0, 1, 2, n_tables // 2, n_tables - 1}):
        sym = _most_probable(model, t)
        for n in (entropy.MIN_SYMBOLS, 6, 50, 1000, 20000):
            s = ans.RansEncoder().encode_with_indexes([sym] * n, [t] * n, cdf, lengths, offsets)
            bound = entropy.min_string_bytes(n * float(bits[t]))
            assert len(s) >= bound, (which, t, n, len(s), bound)
            if n == 20000 and len(s) > 64:
                assert bound > 0.9 * len(s), (which, t, len(s), bound)


def test_min_bytes_holds_for_random_symbols_and_tables(tiny_codec):
    rng = random.Random(0)
    for model in (tiny_codec.base.entropy_bottleneck, tiny_codec.base.gaussian_conditional):
        cdf, lengths, offsets = _tables(model)
        bits = entropy.table_min_bits(model)
        for _ in range(30):
            n = rng.choice([entropy.MIN_SYMBOLS, 10, 300, 3000])
            idx = [rng.randrange(len(lengths)) for _ in range(n)]
            # mostly in-range values, some escapes (out of the table: bypass coded)
            sym = [offsets[t] + rng.randrange(-3, lengths[t] + 2) for t in idx]
            s = ans.RansEncoder().encode_with_indexes(sym, idx, cdf, lengths, offsets)
            assert len(s) >= entropy.min_string_bytes(float(bits[idx].sum()))


def test_min_string_bytes_edges():
    assert entropy.min_string_bytes(0) == 8
    assert entropy.min_string_bytes(64) == 8 + 4 * 0  # (64 - 32) / 32.00006 < 1 word
    assert entropy.min_string_bytes(32 * 1000 + 33) == 8 + 4 * 1000
    assert entropy.min_string_bytes(32 * 1000 + 32) == 8 + 4 * 999  # the rounding losses cost a word


# ---------------------------------------------------------------------------------------- 3. read bound
_L = 1 << 31
_M64 = (1 << 64) - 1


def reference_decode(data: bytes, indexes, cdfs, lengths, offsets):
    """Python model of compressai 1.2.8's ``RansDecoder.decode_with_indexes`` (rans_interface.cpp with
    rans64.h) that counts the 32-bit words it reads. Returns ``(values, words_read, exact)``; ``exact`` is
    False when an escape had 8 or more value nibbles, where the C++ shifts by >= 32 bits (undefined
    behaviour, so only the read count is modelled there)."""
    pos = 0

    def word() -> int:
        nonlocal pos
        w = int.from_bytes(data[4 * pos : 4 * pos + 4].ljust(4, b"\0"), "little")
        pos += 1
        return w

    x = word() | (word() << 32)

    def get4() -> int:
        nonlocal x
        v = x & 15
        x >>= 4
        if x < _L:
            x = ((x << 32) | word()) & _M64
        return v

    out, exact = [], True
    for t in indexes:
        cdf, size = cdfs[t], lengths[t]
        s = bisect.bisect_right(cdf[:size], x & 0xFFFF) - 1
        x = (cdf[s + 1] - cdf[s]) * (x >> 16) + (x & 0xFFFF) - cdf[s]
        if x < _L:
            x = ((x << 32) | word()) & _M64
        value = s
        if s == size - 2:  # escape: bypass-coded value
            val = get4()
            nb = val
            while val == 15:
                val = get4()
                nb += val
            raw = 0
            for j in range(nb):
                raw |= get4() << ((j * 4) & 31)
            exact &= nb <= 7
            raw &= 0xFFFFFFFF
            raw -= (raw >> 31) << 32
            value = -(raw >> 1) - 1 if raw & 1 else (raw >> 1) + size - 2
        out.append(value + offsets[t])
    return out, pos, exact


# Tables that make escapes likely (a real table's escape entry is rare), to drive the bypass path.
_STRESS = [[0, 65536], [0, 1, 65536], [0, 1, 2, 65536], [0, 30000, 60000, 65536]]
_STRESS_CDFS = [t + [0] * (6 - len(t)) for t in _STRESS]
_STRESS_LENGTHS = [len(t) for t in _STRESS]
_STRESS_OFFSETS = [0, -1, 3, 0]


def _adversarial(rng: random.Random) -> tuple[bytes, list[int]]:
    n = rng.choice([1, 2, 5, 20, 100])
    kind = rng.choice(["ones", "random", "zeros", "mix"])
    words = []
    for _ in range(rng.choice([0, 1, 2, 4, 8, 30])):
        if kind == "ones":
            w = 0xFFFFFFFF
        elif kind == "zeros":
            w = 0
        elif kind == "random":
            w = rng.getrandbits(32)
        else:
            w = rng.choice([0xFFFFFFFF, 0, rng.getrandbits(32), 0xFFFFFFF0, 0x0FFFFFFF])
        words.append(w)
    state = rng.choice([_L, (1 << 63) - 1, 0x7FFFFFFFFFFFFFF0, rng.randrange(_L, 1 << 63)])
    data = state.to_bytes(8, "little") + b"".join(w.to_bytes(4, "little") for w in words)
    if rng.random() < 0.5:
        idx = [rng.randrange(len(_STRESS))] * n
    else:
        idx = [rng.randrange(len(_STRESS)) for _ in range(n)]
    return data, idx


def test_reference_decoder_agrees_with_compressai():
    rng = random.Random(1)
    checked = 0
    for _ in range(300):
        data, idx = _adversarial(rng)
        ref, _, exact = reference_decode(data + bytes(1 << 16), idx, _STRESS_CDFS, _STRESS_LENGTHS, _STRESS_OFFSETS)
        pad = entropy.read_bound(len(idx), len(data)) - len(data)
        got = ans.RansDecoder().decode_with_indexes(
            data + bytes(pad), idx, _STRESS_CDFS, _STRESS_LENGTHS, _STRESS_OFFSETS
        )
        if exact:
            assert got == ref
            checked += 1
    # and with a real model's tables on random strings (escapes are rare there)
    gc = make_tiny_codec().base.gaussian_conditional
    cdf, lengths, offsets = _tables(gc)
    for _ in range(100):
        n = rng.choice([5, 50, 500])
        data = rng.randrange(_L, 1 << 63).to_bytes(8, "little") + rng.randbytes(4 * rng.randrange(0, 64))
        idx = [rng.randrange(len(lengths)) for _ in range(n)]
        ref, _, exact = reference_decode(data, idx, cdf, lengths, offsets)
        pad = entropy.read_bound(n, len(data)) - len(data)
        if exact:
            assert ans.RansDecoder().decode_with_indexes(data + bytes(pad), idx, cdf, lengths, offsets) == ref
            checked += 1
    assert checked > 120


def test_decoder_reads_stay_within_the_bound():
    """The decoder's reads (counted by the reference model) never pass ``read_bound``, and the bound is
    close to tight for the worst strings (all-ones words, escape-only tables)."""
    rng = random.Random(2)
    worst = 0.0
    for _ in range(2000):
        data, idx = _adversarial(rng)
        _, words, _ = reference_decode(data, idx, _STRESS_CDFS, _STRESS_LENGTHS, _STRESS_OFFSETS)
        bound = entropy.read_bound(len(idx), len(data))
        assert 4 * words <= bound, (words, bound, len(idx), len(data))
        worst = max(worst, 4 * words / bound)
    assert worst > 0.5


def test_compressai_decoder_output_does_not_depend_on_bytes_past_the_bound():
    """Direct evidence on the C++ decoder: bytes after the zero padding never change what it decodes."""
    rng = random.Random(3)
    for _ in range(300):
        data, idx = _adversarial(rng)
        padded = data + bytes(entropy.read_bound(len(idx), len(data)) - len(data))
        a, b = (
            ans.RansDecoder().decode_with_indexes(
                padded + rng.randbytes(256), idx, _STRESS_CDFS, _STRESS_LENGTHS, _STRESS_OFFSETS
            )
            for _ in range(2)
        )
        assert a == b


# ---------------------------------------------------------------------------------------- 4. canonical
def test_genuine_streams_decode_bit_exactly_as_compressai(tiny_codec, streams):
    base = tiny_codec.base
    eb, gc = base.entropy_bottleneck, base.gaussian_conditional
    for strings, shape, size, rate in streams:
        ys, zs = strings
        z_old = eb.decompress(zs, shape)
        z_new = entropy.decode_bottleneck(eb, zs, shape)
        assert torch.equal(z_old, z_new)
        scales, means = base._params(z_new, tiny_codec.prompt_source(rate, 1))
        idx = gc.build_indexes(scales)
        assert torch.equal(gc.decompress(ys, idx, z_new.dtype, means), entropy.decode_gaussian(gc, ys, idx, means))
        x = tiny_codec.decompress(strings, shape, rate, size=size)["x_hat"]
        assert x.shape[-2:] == size and torch.isfinite(x).all()


@pytest.mark.parametrize("which", [0, 1])
def test_flipped_bits_are_refused(tiny_codec, streams, which):
    strings, shape, size, rate = streams[0]
    s = strings[which][0]
    refused = 0
    for pos in range(8, len(s), max(1, len(s) // 25)):
        bad = bytearray(s)
        bad[pos] ^= 1 << (pos % 8)
        mutated = [list(strings[0]), list(strings[1])]
        mutated[which] = [bytes(bad)]
        try:
            a = tiny_codec.decompress(mutated, shape, rate, size=size)["x_hat"]
        except BitstreamError as e:
            assert "\n" not in str(e)
            refused += 1
        else:  # a canonical stream after all: then it must decode deterministically
            assert torch.equal(a, tiny_codec.decompress(mutated, shape, rate, size=size)["x_hat"])
    assert refused >= 20


def test_swapped_strings_are_refused(tiny_codec, streams):
    strings, shape, size, rate = streams[0]
    with pytest.raises(BitstreamError) as e:
        tiny_codec.decompress([strings[1], strings[0]], shape, rate, size=size)
    _one_line_bitstream_error(e)


def test_values_beyond_max_symbol_are_refused(tiny_codec):
    eb = tiny_codec.base.entropy_bottleneck
    cdf, lengths, offsets = _tables(eb)
    n_ch = len(lengths)
    idx = torch.arange(n_ch, dtype=torch.int32).view(n_ch, 1, 1).expand(n_ch, 1, 2)
    sym = [offsets[t] + 1 for t in idx.reshape(-1).tolist()]
    sym[3] = entropy.MAX_SYMBOL + 5
    s = ans.RansEncoder().encode_with_indexes(sym, idx.reshape(-1).tolist(), cdf, lengths, offsets)
    with pytest.raises(BitstreamError, match="beyond"):
        entropy.decode_indexed(eb, s, idx, "z")
    sym[3] = entropy.MAX_SYMBOL  # the largest accepted value decodes
    s = ans.RansEncoder().encode_with_indexes(sym, idx.reshape(-1).tolist(), cdf, lengths, offsets)
    assert entropy.decode_indexed(eb, s, idx, "z").reshape(-1).tolist() == sym


def test_absurd_but_canonical_latents_decode_deterministically(tiny_codec, streams):
    """A well-formed stream of huge latent values (an attacker can encode any that fit the encoder's buffer)
    gives a finite, repeatable picture: non-finite synthesis values become 0 before clamping."""
    strings, shape, size, rate = streams[0]
    base = tiny_codec.base
    gc = base.gaussian_conditional
    z_hat = entropy.decode_bottleneck(base.entropy_bottleneck, strings[1], shape)
    scales, _ = base._params(z_hat, tiny_codec.prompt_source(rate, 1))
    idx = gc.build_indexes(scales)
    n = idx.numel()
    flat = idx.reshape(-1).tolist()
    # every other value at ±MAX_SYMBOL (~48 bits each), the rest their table's most probable value: as
    # absurd as fits compressai's one-word-per-symbol buffer (all of them at ±MAX_SYMBOL would overrun it)
    sym = [(entropy.MAX_SYMBOL if i % 4 == 1 else -entropy.MAX_SYMBOL) if i % 2 else _most_probable(gc, t)
           for i, t in enumerate(flat)]
    assert entropy.encoded_words_bound(gc, torch.tensor(sym), idx) <= n
    cdf, lengths, offsets = _tables(gc)
    y = ans.RansEncoder().encode_with_indexes(sym, flat, cdf, lengths, offsets)
    crafted = [[y], strings[1]]
    a = tiny_codec.decompress(crafted, shape, rate, size=size)["x_hat"]
    b = tiny_codec.decompress(crafted, shape, rate, size=size)["x_hat"]
    assert torch.isfinite(a).all() and torch.equal(a, b)


# ------------------------------------------------------------------------------- 4. the encoder's buffer
def reference_encode(symbols, indexes, cdfs, lengths, offsets) -> bytes:
    """Python model of compressai 1.2.8's ``RansEncoder.encode_with_indexes`` (rans_interface.cpp with
    rans64.h) without its fixed buffer of one word per symbol: the bytes it writes, however many."""
    x, words = _L, []

    def renorm(freq: int) -> None:  # the encoder emits the state's low word before a put would overflow it
        nonlocal x
        if x >= ((_L >> 16) << 32) * freq:
            words.append(x & 0xFFFFFFFF)
            x >>= 32

    def put_bits(val: int) -> None:  # a 4-bit bypass put (frequency 2**12 of 2**16)
        nonlocal x
        renorm(1 << 12)
        x = (x << 4) | val

    for sym, t in zip(reversed(symbols), reversed(indexes)):  # rANS codes backwards
        cdf, max_value = cdfs[t], lengths[t] - 2
        value = sym - offsets[t]
        if value < 0 or value >= max_value:
            raw = -2 * value - 1 if value < 0 else 2 * (value - max_value)
            nb = 0
            while raw >> (4 * nb):
                nb += 1
            for j in range(nb - 1, -1, -1):
                put_bits((raw >> (4 * j)) & 15)
            while nb >= 15:
                nb -= 15
                put_bits(15)
            put_bits(nb)
            value = max_value
        start, freq = cdf[value], cdf[value + 1] - cdf[value]
        renorm(freq)
        x = ((x // freq) << 16) + (x % freq) + start
    return struct.pack("<II", x & 0xFFFFFFFF, x >> 32) + b"".join(struct.pack("<I", w) for w in reversed(words))


def _random_symbols(rng: random.Random, lengths, offsets, n: int, huge: float) -> tuple[list[int], list[int]]:
    """Random table choices and values: mostly inside the tables, some small escapes, a share ``huge`` of
    escapes up to ±MAX_SYMBOL (and beyond, which the bound must also cover)."""
    idx = [rng.randrange(len(lengths)) for _ in range(n)]
    sym = []
    for t in idx:
        r = rng.random()
        if r < huge:
            v = rng.choice([entropy.MAX_SYMBOL, -entropy.MAX_SYMBOL, rng.randrange(-(1 << 30), 1 << 30),
                            rng.randrange(-4096, 4096)])
        else:
            v = offsets[t] + rng.randrange(-3, lengths[t] + 2)
        sym.append(v)
    return sym, idx


def test_reference_encoder_agrees_with_compressai(tiny_codec):
    """The model writes what compressai writes, byte for byte (only inputs that fit its buffer are given to
    compressai, by the bound tested next and, independently, by the model's own length)."""
    rng = random.Random(4)
    # the stress tables but the first: compressai's encoder dies of SIGFPE on a one-entry table (frequency
    # 2**16), which no compressai model builds and the checkpoint loader refuses
    tables = [_tables(tiny_codec.base.entropy_bottleneck), _tables(tiny_codec.base.gaussian_conditional),
              (_STRESS_CDFS[1:], _STRESS_LENGTHS[1:], _STRESS_OFFSETS[1:])]
    checked = 0
    for _ in range(150):
        cdf, lengths, offsets = rng.choice(tables)
        n = rng.choice([entropy.MIN_SYMBOLS, 8, 40, 400])
        sym, idx = _random_symbols(rng, lengths, offsets, n, huge=rng.choice([0.0, 0.05, 0.3]))
        sym = [max(-entropy.MAX_SYMBOL, min(entropy.MAX_SYMBOL, v)) for v in sym]  # the C++ shifts are defined
        ref = reference_encode(sym, idx, cdf, lengths, offsets)
        if len(ref) <= 4 * n:
            assert ans.RansEncoder().encode_with_indexes(sym, idx, cdf, lengths, offsets) == ref
            checked += 1
    assert checked > 80


@pytest.mark.parametrize("table", ["entropy_bottleneck", "gaussian_conditional", "stress"])
def test_encoded_words_bound_holds_and_is_nearly_tight(tiny_codec, table):
    """``encoded_words_bound`` is never below the words the encoder writes (the model's count, also for
    inputs that would overrun compressai's buffer), and at most a few words above it."""
    class _Tables:  # the stress tables in the shape of an entropy model
        entropy_coder = tiny_codec.base.gaussian_conditional.entropy_coder
        entropy_coder_precision = 16
        _quantized_cdf = torch.tensor(_STRESS_CDFS[1:], dtype=torch.int32)
        _cdf_length = torch.tensor(_STRESS_LENGTHS[1:], dtype=torch.int32)
        _offset = torch.tensor(_STRESS_OFFSETS[1:], dtype=torch.int32)

    model = _Tables() if table == "stress" else getattr(tiny_codec.base, table)  # (without its one-entry table)
    cdf, lengths, offsets = _tables(model)
    rng = random.Random(5)
    over = 0
    for _ in range(200):
        n = rng.choice([entropy.MIN_SYMBOLS, 7, 60, 600])
        sym, idx = _random_symbols(rng, lengths, offsets, n, huge=rng.choice([0.0, 0.02, 0.2, 0.6, 1.0]))
        words = len(reference_encode(sym, idx, cdf, lengths, offsets)) // 4
        bound = entropy.encoded_words_bound(model, torch.tensor(sym), torch.tensor(idx))
        assert words <= bound <= words + 3 + n // 1000, (n, words, bound)
        over += bound > n
    assert over > 10  # the random inputs do include ones that would overrun the buffer


def test_decoded_values_too_costly_for_the_encoder_are_refused_without_encoding(tiny_codec, monkeypatch):
    """A junk string can decode (reading its zero padding) to escapes whose re-encoding would overrun
    compressai's buffer; the canonical check must refuse those before calling its encoder."""
    eb = tiny_codec.base.entropy_bottleneck
    n_ch = eb._quantized_cdf.shape[0]
    idx = torch.arange(n_ch, dtype=torch.int32).view(n_ch, 1, 1).expand(n_ch, 2, 2)
    n = idx.numel()

    class _Decoder:  # stands in for what such a junk string decodes to
        def decode_with_indexes(self, *args):
            return [entropy.MAX_SYMBOL] * n

    class _Encoder:
        calls = 0

        def encode_with_indexes(self, *args):
            type(self).calls += 1
            raise AssertionError("compressai's encoder was called with values that overrun its buffer")

    monkeypatch.setattr(entropy.ans, "RansDecoder", _Decoder)
    monkeypatch.setattr(entropy.ans, "RansEncoder", _Encoder)
    string = (1 << 40).to_bytes(8, "little") + bytes(4 * (n - 2))
    with pytest.raises(BitstreamError, match="too costly for the encoder") as e:
        entropy.decode_indexed(eb, string, idx, "z")
    _one_line_bitstream_error(e)
    assert _Encoder.calls == 0


def test_strings_longer_than_the_encoder_writes_are_refused_before_decoding(tiny_codec, streams, monkeypatch):
    """Junk appended to a string (lengths and CRC recomputed) used to cost ~33 bytes of memory per byte in the
    padded copy before the canonical check refused it; now its length alone refuses it."""
    monkeypatch.setattr(entropy.ans, "RansDecoder", _CountingDecoder)
    strings, shape, size, rate = streams[0]
    ys, zs = strings[0][0], strings[1][0]
    n_z = tiny_codec.base.entropy_bottleneck._quantized_cdf.shape[0] * shape[0] * shape[1]
    _CountingDecoder.calls = 0
    with pytest.raises(BitstreamError, match="implausibly long y string") as e:  # from the header alone
        tiny_codec.decompress([[ys + bytes(1 << 20)], [zs]], shape, rate, size=size)
    _one_line_bitstream_error(e)
    with pytest.raises(BitstreamError, match=f"implausibly long z string: {4 * n_z + 4} bytes"):
        tiny_codec.decompress([[ys], [zs + bytes(4 * n_z + 4 - len(zs))]], shape, rate, size=size)
    assert _CountingDecoder.calls == 0
    eb = tiny_codec.base.entropy_bottleneck
    idx = torch.arange(n_z // (shape[0] * shape[1]), dtype=torch.int32).view(-1, 1, 1).expand(-1, *shape)
    with pytest.raises(BitstreamError, match="implausibly long z string"):  # decode_indexed on its own too
        entropy.decode_indexed(eb, zs + bytes(4 * n_z), idx, "z")
    assert _CountingDecoder.calls == 0
    assert entropy.max_string_bytes(n_z) == 4 * n_z


def test_encoder_side_refuses_latents_compressai_cannot_code(tiny_codec, monkeypatch):
    """Latents from a broken checkpoint (non-finite, beyond ±MAX_SYMBOL, or costlier than the encoder's
    buffer) are a one-line ValueError before compressai's encoder runs; ordinary ones code as before."""
    eb, gc = tiny_codec.base.entropy_bottleneck, tiny_codec.base.gaussian_conditional
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, eb._quantized_cdf.shape[0], 3, 5, generator=g) * 3
    assert entropy.encode_bottleneck(eb, z) == eb.compress(z)
    y = torch.randn(1, 24, 8, 8, generator=g) * 4
    idx = gc.build_indexes(torch.rand(y.shape, generator=g) * 5)
    means = torch.randn(y.shape, generator=g)
    assert entropy.encode_gaussian(gc, y, idx, means) == gc.compress(y, idx, means=means)

    calls = []
    for m in (eb, gc):
        real = m.entropy_coder._encoder
        monkeypatch.setattr(m.entropy_coder, "_encoder", type("E", (), {
            "encode_with_indexes": lambda self, *a, real=real: (calls.append(1), real.encode_with_indexes(*a))[1]})())
    huge = z.clone()
    huge[1] = 0.9 * entropy.MAX_SYMBOL  # every value of image 2 a ~48-bit escape: 1.5 words a symbol
    for bad, match in ((huge, "more than the"), (z * float("nan"), "not finite"), (z * 1e9, "beyond")):
        with pytest.raises(ValueError, match=match) as e:
            entropy.encode_bottleneck(eb, bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="more than the"):
        entropy.encode_gaussian(gc, torch.full(y.shape, 0.9 * entropy.MAX_SYMBOL), idx, means)
    assert calls == []


# ---------------------------------------------------------------------------------------- decompress
class _CountingDecoder:
    calls = 0

    def __init__(self):
        self._d = _REAL_DECODER()

    def decode_with_indexes(self, *args):
        type(self).calls += 1
        return self._d.decode_with_indexes(*args)


_REAL_DECODER = ans.RansDecoder


def test_short_strings_are_refused_before_decoding(tiny_codec, streams, monkeypatch):
    monkeypatch.setattr(entropy.ans, "RansDecoder", _CountingDecoder)
    strings, shape, size, rate = streams[0]
    ys, zs = strings[0][0], strings[1][0]
    _CountingDecoder.calls = 0
    with pytest.raises(BitstreamError, match="implausibly short z string") as e:  # from the header alone
        tiny_codec.decompress([[ys], [zs[:8]]], shape, rate, size=size)
    _one_line_bitstream_error(e)
    assert _CountingDecoder.calls == 0
    with pytest.raises(BitstreamError, match="implausibly short z string"):  # a bigger latent than coded
        tiny_codec.decompress([[ys], [zs]], (shape[0] * 4, shape[1] * 4), rate)
    assert _CountingDecoder.calls == 0
    # y once its tables are known (here: the widest, as a trained model's scales often are; this untrained
    # one's are mostly the narrowest, where a symbol can cost as little as 7e-5 bits)
    gc = tiny_codec.base.gaussian_conditional
    idx = torch.full((1, 24, 8, 8), len(gc.scale_table) - 1, dtype=torch.int32)
    with pytest.raises(BitstreamError, match="implausibly short y string: 64 bytes for 1536 latent values"):
        entropy.decode_gaussian(gc, [ys[:64]], idx, torch.zeros(idx.shape))
    assert _CountingDecoder.calls == 0


def _pack(model_id: str, rate: float, h: int, w: int, strings: list[bytes]) -> bytes:
    """A ``.lpm`` file, byte by byte from the layout in lpm.fileformat's docstring, CRC recomputed."""
    zh, zw = fileformat.expected_latent_shape(h, w)
    body = fileformat.MAGIC + struct.pack(">BBH", 2, 0, 35)
    body += struct.pack(">8sdIIBBHHIB", bytes.fromhex(model_id), rate, h, w, 3, 8, zh, zw, 0, len(strings))
    for s in strings:
        body += struct.pack(">I", len(s)) + s
    return body + struct.pack(">I", zlib.crc32(body))


def test_decompression_bomb_is_refused_by_the_cli_before_decoding(tmp_path, capsys, monkeypatch):
    """The issue's 159-byte file claiming 2048x4096 (was: 2.1 GB and 9 s to decode junk into a picture)."""
    from lpm.cli import main
    from lpm.checkpoints import save_codec

    model = make_tiny_codec(seed=0)
    ckpt = tmp_path / "tiny.safetensors"
    model_id = fileformat.model_id_from_sha256(save_codec(ckpt, model, meta={"budget": "untrained test model"}))
    c = model.compress(_image(64, 64)[None], RATE)
    bomb = _pack(model_id, RATE, 2048, 4096, [bytes(range(64)), c["strings"][1][0][:40]])
    (tmp_path / "bomb.lpm").write_bytes(bomb)
    monkeypatch.setattr(entropy.ans, "RansDecoder", _CountingDecoder)
    _CountingDecoder.calls = 0
    rc = main(["decompress", str(tmp_path / "bomb.lpm"), str(tmp_path / "out.png"), "--model", str(ckpt)])
    err = capsys.readouterr().err
    assert rc != 0 and not (tmp_path / "out.png").exists()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lpm: error:") and "implausibly short z" in lines[0], err
    assert _CountingDecoder.calls == 0
