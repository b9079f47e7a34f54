"""Structure-aware fuzzing of ``.lpm`` streams whose CRC an attacker recomputed (issue 10).

Mutants of real streams of the shipped tiny checkpoint (``tiny-smoke``): header fields, latent shape, strings of 0-16 bytes,
truncated, extended, swapped and random strings of plausible length, bit flips, huge sizes (also with a
well-formed z crafted for a huge latent). Every mutant must either decode deterministically (twice, same
bytes) or be refused with a one-line ``ValueError`` (``BitstreamError``, ``ModelMismatchError``).

The decoding runs in a child process, so that a segfault fails the test instead of killing pytest: the
child decodes the whole batch, printing one JSON line per mutant, under an address-space limit
(``RLIMIT_AS``) and a per-mutant time limit. When it dies or hangs, the mutant it was on is reported and
a new child goes on with the next one.
"""

from __future__ import annotations

import collections
import json
import math
import os
import random
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass

import pytest
import torch
from compressai import ans

from lpm import fileformat, zoo
from lpm.codec import encode_image
from lpm.data import ImageInfo
from lpm.checkpoints import load_codec

pytestmark = pytest.mark.usefixtures("torch_single_thread")

#: Extra address space the child may map once its model is loaded (the genuine decodes need ~50 MB).
CHILD_EXTRA_MEMORY = 1 << 30
#: Seconds one mutant may take in the child (genuine ones take ~0.1 s on two busy cores).
MUTANT_TIMEOUT = 15.0
#: Seconds for the child to import torch and load the checkpoint.
STARTUP_TIMEOUT = 60.0
MIN_MUTANTS = 800

# The child: decode mutants[start:] and report each on one JSON line (flushed before the next starts).
CHILD = r"""
import hashlib, json, resource, sys, warnings
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
from lpm import fileformat, zoo
from lpm.codec import DEFAULT_MAX_PIXELS, decode_image
from lpm.checkpoints import load_codec

ckpt, folder, start, count, extra = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
loaded = load_codec(ckpt)
model, model_id = loaded.model, loaded.model_id
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + extra, resource.getrlimit(resource.RLIMIT_AS)[1]))
print(json.dumps({"ready": True}), flush=True)

def once(data):
    c = fileformat.decode(data, max_pixels=DEFAULT_MAX_PIXELS)
    x, _ = decode_image(model, model_id, c)
    digest = hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()
    return digest, list(x.shape), [c.header.height, c.header.width]

for i in range(start, count):
    print(json.dumps({"start": i}), flush=True)
    data = open(f"{folder}/{i:05d}.lpm", "rb").read()
    try:
        first = once(data)
        again = once(data)
        out = {"i": i, "ok": first[0], "again": again[0], "shape": first[1], "size": first[2]}
    except Exception as e:
        out = {"i": i, "refused": type(e).__name__, "value_error": isinstance(e, ValueError), "msg": str(e)}
    print(json.dumps(out), flush=True)
"""


@dataclass
class Outcome:
    index: int
    report: dict | None  # the child's JSON line, or None if it died / hung on this mutant
    problem: str | None = None


def _lines(proc: subprocess.Popen, timeout_at):
    """The child's stdout lines as they come (read from the file descriptor: no buffer can hide a line
    from ``select``); ``None`` when ``timeout_at()`` (a monotonic time) passes first; stops at EOF."""
    fd, buf = proc.stdout.fileno(), b""
    while True:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode()
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout_at() - time.monotonic()))
        if not ready:
            yield None
            return
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return
        buf += chunk


def run_children(child: str, args: list[str], count: int, *, mutant_timeout: float = MUTANT_TIMEOUT) -> list[Outcome]:
    """Run ``child`` over mutants ``0..count-1`` (it gets ``*args, start, count, extra memory``), restarting
    after the mutant it died or hung on; one :class:`Outcome` per mutant."""
    outcomes: list[Outcome] = []
    start = 0
    while start < count:
        stderr_file = tempfile.TemporaryFile()  # a file, not a pipe: a chatty child must not block on it
        proc = subprocess.Popen(
            [sys.executable, "-c", child, *args, str(start), str(count), str(CHILD_EXTRA_MEMORY)],
            stdout=subprocess.PIPE, stderr=stderr_file, start_new_session=True,
        )
        current, problem = None, None
        deadline = [time.monotonic() + STARTUP_TIMEOUT]
        try:
            for line in _lines(proc, lambda: deadline[0]):
                if line is None:
                    problem = f"no answer within {mutant_timeout if current is not None else STARTUP_TIMEOUT:g} s"
                    break
                if not line.startswith("{"):
                    continue  # not one of ours
                msg = json.loads(line)
                if "start" in msg:
                    current = msg["start"]
                    deadline[0] = time.monotonic() + mutant_timeout
                elif "i" in msg:
                    outcomes.append(Outcome(msg["i"], msg))
                    current, start = None, msg["i"] + 1
            else:
                proc.wait()
                if proc.returncode != 0 or start < count:
                    stderr_file.seek(0)
                    err = stderr_file.read().decode(errors="replace")[-300:]
                    problem = f"child died (exit status {proc.returncode}): {err!r}"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            proc.stdout.close()
            stderr_file.close()
        if problem is None:
            break
        if current is None:  # died outside any mutant: cannot pin it on one, give up
            outcomes.append(Outcome(start, None, f"child failed before mutant {start}: {problem}"))
            break
        outcomes.append(Outcome(current, None, problem))
        start = current + 1
    return outcomes


# ---------------------------------------------------------------------------------------- mutants
def pack(fields: dict, strings: list[bytes], *, n_strings: int | None = None, layout: int = 2) -> bytes:
    """A ``.lpm`` file from raw header ``fields`` (any values the layout can hold), CRC recomputed; ``layout``
    1 writes the version 1 header (no table check)."""
    body = fileformat.MAGIC + struct.pack(">BBH", fields["version"], fields["flags"], fields["hlen"])
    head = [fields["model_id"], fields["rate"], fields["h"], fields["w"], fields["channels"], fields["bit_depth"],
            fields["zh"], fields["zw"]]
    if layout == 2:
        head.append(fields["check"])
    body += struct.pack(">8sdIIBBHHIB" if layout == 2 else ">8sdIIBBHHB", *head,
                        len(strings) if n_strings is None else n_strings)
    for s in strings:
        body += struct.pack(">I", len(s)) + s
    return body + struct.pack(">I", zlib.crc32(body))


def fields_of(c: fileformat.CompressedImage) -> dict:
    h = c.header
    return dict(
        version=fileformat.FORMAT_VERSION, flags=0, hlen=35, model_id=bytes.fromhex(h.model_id), rate=h.rate,
        h=h.height, w=h.width, channels=h.channels, bit_depth=h.bit_depth, zh=h.latent_shape[0],
        zw=h.latent_shape[1], check=h.table_check,
    )


def _canonical_z(model, zh: int, zw: int) -> bytes:
    """A well-formed z string for a ``zh x zw`` latent: every value its channel's median."""
    eb = model.base.entropy_bottleneck
    n_ch = eb._quantized_cdf.shape[0]
    idx = [c for c in range(n_ch) for _ in range(zh * zw)]
    return ans.RansEncoder().encode_with_indexes(
        [0] * len(idx), idx, eb._quantized_cdf.tolist(), eb._cdf_length.tolist(), eb._offset.tolist()
    )


def make_mutants(
    model, genuine: list[fileformat.CompressedImage], large: fileformat.CompressedImage, rng: random.Random
) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    lo, hi = model.rate_range
    for g, c in enumerate(genuine):
        f = fields_of(c)
        y, z = c.strings
        tag = f"stream{g}"

        def add(name: str, strings=None, n_strings=None, layout=2, **changes):
            out.append((f"{tag}: {name}", pack({**f, **changes}, [y, z] if strings is None else strings,
                                               n_strings=n_strings, layout=layout)))

        add("genuine")
        # the table check (version 2) and the version 1 layout (no check, float32 tables)
        for bit in (0, 7, 31):
            add(f"table check, bit {bit} flipped", check=f["check"] ^ (1 << bit))
        add("table check 0", check=0)
        add("version 1 layout (no table check)", layout=1, version=1, hlen=31)
        add("version 1 layout, version field 2", layout=1, version=2, hlen=31)
        # header fields
        add("other model id", model_id=bytes(8))
        add("model id, one bit flipped", model_id=bytes([f["model_id"][0] ^ 1]) + f["model_id"][1:])
        for r in (0.0, -0.013, math.nan, math.inf, -math.inf, 5e-324, 1e300, lo, hi, lo * 0.999, hi * 1.001,
                  math.sqrt(lo * hi), f["rate"] * (1 + 1e-12), *model.rates):
            add(f"rate {r!r}", rate=r)
        for name, v in (("version", 0), ("version", 1), ("version", 3), ("version", 255), ("flags", 1),
                        ("flags", 128), ("hlen", 0), ("hlen", 31), ("hlen", 34), ("hlen", 36), ("hlen", 65535)):
            add(f"{name} {v}", **{name: v})
        for ch in (0, 1, 2, 4, 255):
            add(f"channels {ch}", channels=ch)
        for bd in (0, 1, 7, 16, 32, 255):
            add(f"bit depth {bd}", bit_depth=bd)
        for dh, dw in ((-1, 0), (0, -1), (1, 0), (0, 1), (-63, 0), (64, 0), (0, 64), (64, 64)):
            h, w = f["h"] + dh, f["w"] + dw
            zh, zw = fileformat.expected_latent_shape(max(h, 1), max(w, 1))
            add(f"size {h}x{w} (latent kept consistent)", h=h, w=w, zh=zh, zw=zw)
            add(f"size {h}x{w} (latent unchanged)", h=h, w=w)
        for zh, zw in ((0, f["zw"]), (f["zh"], 0), (f["zh"] + 1, f["zw"]), (f["zh"], f["zw"] + 1), (65535, 65535)):
            add(f"latent {zh}x{zw} only", zh=zh, zw=zw)
        for h, w in ((0, 0), (1, 1), (65535, 65535), (2048, 4096), (4096, 2048), (4096, 4096), (1, 65535)):
            zh, zw = fileformat.expected_latent_shape(max(h, 1), max(w, 1))
            add(f"huge/odd size {h}x{w}", h=h, w=w, zh=zh, zw=zw)
        for n in (0, 1, 3, 8, 9, 255):
            add(f"string count field {n}", n_strings=n)
        add("one string (y only)", strings=[y])
        add("one string (z only)", strings=[z])
        add("three strings", strings=[y, z, z])
        add("eight empty strings", strings=[b""] * 8)
        # string lengths 0..16 (and a few more), for each string, several contents
        for which, s in (("y", y), ("z", z)):
            def put(name, new, which=which):
                add(f"{which} {name}", strings=[new, z] if which == "y" else [y, new])

            for n in range(0, 25):
                put(f"{n} zero bytes", bytes(n))
                put(f"{n} 0xff bytes", b"\xff" * n)
                put(f"{n} random bytes", rng.randbytes(n))
                put(f"first {n} bytes", s[:n])
            for frac in (0.25, 0.5, 0.75):
                put(f"truncated to {frac:.0%}", s[: int(len(s) * frac) // 4 * 4])
            for cut in (1, 2, 3, 4, 8):
                put(f"last {cut} bytes cut", s[:-cut])
            for extra in (b"\0", b"\0" * 4, rng.randbytes(4), rng.randbytes(64)):
                put(f"{len(extra)} bytes appended", s + extra)
            put("doubled", s + s)
            for k in range(6):
                n = max(8, len(s) + rng.choice([-8, -4, 0, 0, 4, 8])) // 4 * 4
                put(f"random bytes, {n} (plausible length)", rng.randbytes(n))
                put(f"genuine state then random bytes, {n}", s[:8] + rng.randbytes(n - 8))
            for k in range(8):
                pos = rng.randrange(len(s))
                bad = bytearray(s)
                bad[pos] ^= 1 << rng.randrange(8)
                put(f"bit flip at byte {pos}", bytes(bad))
            for k in range(4):
                pos = rng.randrange(len(s) // 4) * 4
                word = rng.choice([b"\0" * 4, b"\xff" * 4])
                put(f"word {pos // 4} set to {word.hex()}", s[:pos] + word + s[pos + 4:])
        add("y and z swapped", strings=[z, y])
        add("y twice", strings=[y, y])
        add("z twice", strings=[z, z])
        add("both empty", strings=[b"", b""])
        # huge latents with strings long enough to pass the length checks
        for h, w in ((2048, 4096), (4096, 2048)):
            zh, zw = fileformat.expected_latent_shape(h, w)
            zc = _canonical_z(model, zh, zw)
            add(f"{h}x{w}: well-formed z, 64-byte y", strings=[bytes(range(64)), zc], h=h, w=w, zh=zh, zw=zw)
            add(f"{h}x{w}: well-formed z, genuine y", strings=[y, zc], h=h, w=w, zh=zh, zw=zw)
            add(f"{h}x{w}: random z of z's length", strings=[y, rng.randbytes(len(zc))], h=h, w=w, zh=zh, zw=zw)
    # strings of 0-16 bytes where the latent is large (768x512: this is where they used to segfault)
    f = fields_of(large)
    y, z = large.strings
    out.append(("large: genuine", pack(f, [y, z])))
    out.append(("large: y and z swapped", pack(f, [z, y])))
    for which in ("y", "z"):
        for n in range(17):
            for what, new in (("zero", bytes(n)), ("0xff", b"\xff" * n), ("random", rng.randbytes(n)),
                              ("first", (y if which == "y" else z)[:n])):
                strings = [new, z] if which == "y" else [y, new]
                out.append((f"large: {which} {what} {n} bytes", pack(f, strings)))
    # the bomb: 159 bytes claiming 2048x4096
    f = fields_of(genuine[0])
    out.append(("issue bomb 2048x4096, 64-byte y",
                pack({**f, "h": 2048, "w": 4096, "zh": 32, "zw": 64}, [bytes(range(64)), genuine[0].strings[1][:40]])))
    return out


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return (torch.stack([xx, yy, (xx * yy)]) + 0.15 * torch.rand(3, h, w, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def fuzz_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    ckpt = zoo.checkpoint_path("tiny-smoke")  # trained tables: realistic rates, and where the old decoder crashed
    loaded = load_codec(ckpt)
    model, model_id = loaded.model, loaded.model_id
    genuine = [
        encode_image(model, model_id, _image(h, w, seed), ImageInfo(height=h, width=w, channels=ch, bit_depth=bd,
                                                                    had_alpha=False), rate)
        for h, w, ch, bd, rate, seed in ((64, 96, 3, 8, 0.013, 0), (70, 130, 1, 16, 0.0035, 1))
    ]
    info = ImageInfo(height=512, width=768, channels=3, bit_depth=8, had_alpha=False)
    large = encode_image(model, model_id, _image(512, 768, 2), info, 0.0483)
    mutants = make_mutants(model, genuine, large, random.Random(10))
    for i, (_, data) in enumerate(mutants):
        (folder / f"{i:05d}.lpm").write_bytes(data)
    return ckpt, folder, mutants


def test_fuzzed_streams_decode_deterministically_or_are_refused(fuzz_setup):
    ckpt, folder, mutants = fuzz_setup
    t = time.perf_counter()
    outcomes = run_children(CHILD, [str(ckpt), str(folder)], len(mutants))
    elapsed = time.perf_counter() - t
    failures, kinds, decoded, refused = [], collections.Counter(), 0, 0

    def fail(kind: str, index: int, text: str) -> None:
        kinds[kind] += 1
        failures.append(f"#{index} {mutants[index][0]}: {text}")

    for o in outcomes:
        r = o.report
        if r is None:
            fail("crashed or hung", o.index, o.problem)
        elif "ok" in r:
            decoded += 1
            if r["ok"] != r["again"]:
                fail("decoded differently twice", o.index, "two decodes differ")
            if r["shape"][-2:] != r["size"]:
                fail("decoded to a wrong size", o.index, f"decoded {r['shape']} for a {r['size']} header")
        else:
            refused += 1
            if not r["value_error"] or "\n" in r["msg"] or not r["msg"].strip():
                fail("other errors", o.index, f"refused with {r['refused']}: {r['msg'][:200]!r}")
    print(f"\n{len(mutants)} mutants: {decoded} decoded, {refused} refused, {len(failures)} failures "
          f"{dict(kinds)}, {elapsed:.1f} s")
    assert len(mutants) >= MIN_MUTANTS
    assert not failures, f"{len(failures)} of {len(mutants)} mutants failed {dict(kinds)}:\n" + "\n".join(failures[:30])
    assert len(outcomes) == len(mutants) and decoded >= 20  # genuine streams and harmless header edits decode
    for i, (name, _) in enumerate(mutants):
        r = outcomes[i].report
        if name.endswith(": genuine") or name.endswith(": version 1 layout (no table check)"):
            assert "ok" in r, name  # version 1 files are still decoded (with their float32 tables)
        if ": table check" in name:  # an intact file whose tables do not match: refused, naming the cause
            assert "cannot decode on this setup" in r.get("msg", ""), (name, r)


# The harness itself: a crash or a hang is pinned on its mutant, and the rest still run.
FAKE_CHILD = r"""
import ctypes, json, sys, time
start, count = int(sys.argv[1]), int(sys.argv[2])
print(json.dumps({"ready": True}), flush=True)
for i in range(start, count):
    print(json.dumps({"start": i}), flush=True)
    if i == 3:
        ctypes.string_at(0)  # segfault
    if i == 5:
        time.sleep(60)
    print(json.dumps({"i": i, "refused": "BitstreamError", "value_error": True, "msg": "x"}), flush=True)
"""


def test_harness_pins_crashes_and_hangs_on_their_mutant():
    outcomes = run_children(FAKE_CHILD, [], 8, mutant_timeout=2.0)
    assert [o.index for o in outcomes] == list(range(8))
    bad = {o.index: o.problem for o in outcomes if o.report is None}
    assert set(bad) == {3, 5}
    assert "died" in bad[3] and "-11" in bad[3] and "no answer" in bad[5]
