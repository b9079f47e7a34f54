"""Resource limits of the codec commands, derived from measurements and from the machine (no torch import).

* :func:`default_max_pixels` — the largest image coded by default. Images whose padded sides both fit
  :data:`lpm.models.base.TILE` (1024) are transformed whole; larger ones tile by tile (1024-pixel tiles with a
  192-pixel halo, :func:`lpm.models.base.tile_grid`), so the transforms' peak is that of one tile and only
  the image-sized buffers (input, output, latents, entropy coding, PNG) grow with the size. Peak memory of the
  paper-size codec (N=128, M=192, untrained) on a CPU, measured with ``/usr/bin/time -v`` on ``lpm compress`` /
  ``lpm decompress`` (kodim23 resized, 1 thread; 2026-11-25): 3.46 / 3.51 GB at 3072×2048 (6 tiles) and
  5.60 / 5.51 GB at 6000×4000 (24 tiles; 10.0 / 8.3 minutes), i.e. about 2.8 GB plus 121 bytes per pixel.
  (Whole-image transforms, before tiling, took about 1.4 kB per pixel: 8.6 / 8.9 GB at 3072×2048, and a
  6000×4000 photo was killed for lack of memory at 22.8 GB on a 24 GB machine.) :data:`BASE_BYTES` and
  :data:`BYTES_PER_PIXEL` round that up to 3 GB plus 150 bytes per pixel. The default lets an image use at
  most :data:`MEMORY_SHARE` of the memory available when the command starts (``MemAvailable`` on Linux, or
  what the process's memory cgroup still allows where that is less: a container's limit), and
  never less than :data:`MIN_DEFAULT_MAX_PIXELS`: about 100 megapixels on a 24 GB machine. ``--max-pixels``
  overrides it; larger images are refused with a message, from the header alone (a 65535×65535 ``.lpm`` header
  is refused before anything is allocated). The limit only refuses: how an image is tiled never depends on it
  or on the machine.
* :func:`default_threads` — torch's intra-op threads for one command: the CPUs this process may use, minus
  the load already on them (rounded), at least 1. Torch's own default takes every core even when other
  work runs, which oversubscribes a busy machine (measured: a round trip that took 33 s alone took 255 s
  next to another job with the default, 4 images 42 s → 12 s with one thread). ``--threads`` or
  ``LPM_THREADS`` override it; an explicit ``OMP_NUM_THREADS`` is respected.
"""

from __future__ import annotations

import os
from typing import Optional

__all__ = [
    "BASE_BYTES", "BYTES_PER_PIXEL", "MEMORY_SHARE", "MIN_DEFAULT_MAX_PIXELS", "available_memory",
    "cgroup_available_memory",
    "default_max_pixels", "default_threads", "estimated_peak_bytes",
]

#: Measured CPU peak memory of the paper-size codec with tiled transforms (see the module docstring), rounded
#: up: ``BASE_BYTES`` (the process, the model and one tile with its halo) plus ``BYTES_PER_PIXEL`` per pixel.
BASE_BYTES = 3_000_000_000
BYTES_PER_PIXEL = 150
#: Share of the available memory one image may take by default.
MEMORY_SHARE = 0.75
#: The default limit never drops below 2048×2048 (about 3.6 GB by the measurement above).
MIN_DEFAULT_MAX_PIXELS = 2048 * 2048


def estimated_peak_bytes(pixels: int) -> int:
    """Peak memory (bytes) of coding an image of ``pixels`` pixels on a CPU, by the measurement above."""
    return BASE_BYTES + BYTES_PER_PIXEL * int(pixels)


#: Where :func:`cgroup_available_memory` looks (attributes, so that tests can point them at a fake tree).
_PROC_CGROUP = "/proc/self/cgroup"
_CGROUP_ROOT = "/sys/fs/cgroup"
#: A cgroup v1 limit at or above this is "no limit" (the kernel writes a page-rounded 2**63 - 1).
_NO_V1_LIMIT = 1 << 62


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None  # "max" (cgroup v2: no limit) and junk give None


def _inactive_file(path: str, key: str) -> int:
    """Reclaimable page cache a cgroup's usage counts (``key`` of its ``memory.stat``), 0 if unreadable."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key and value.strip().isdigit():
                    return int(value)
    except (OSError, UnicodeDecodeError):
        pass
    return 0


def cgroup_available_memory() -> Optional[int]:
    """Bytes the memory cgroups of this process still allow (Linux; a container's or a systemd unit's limit):
    the smallest ``limit - usage`` over its cgroup and the ones above it, reclaimable page cache not counted as
    used, as ``MemAvailable`` does not count it. ``None`` where no limit is set or none can be read.
    ``MemAvailable`` is the whole machine's: inside a container limited to 8 GB on a 256 GB host it says ~250 GB,
    so the default let in images for which the kernel kills the process (no error line) instead of refusing them."""
    try:
        with open(_PROC_CGROUP, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    best: Optional[int] = None
    for line in lines:
        _, controllers, rel = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # cgroup v2 (unified hierarchy)
            top = _CGROUP_ROOT if os.path.exists(os.path.join(_CGROUP_ROOT, "cgroup.controllers")) \
                else os.path.join(_CGROUP_ROOT, "unified")
            files = ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):  # cgroup v1
            top = os.path.join(_CGROUP_ROOT, "memory")
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        rel = rel.strip("/")
        if not os.path.isdir(os.path.join(top, rel)):
            rel = ""  # a cgroup namespace: this process's cgroup is the mount's root
        parts = rel.split("/") if rel else []
        for depth in range(len(parts), -1, -1):  # this cgroup, then each one above it: every limit applies
            d = os.path.join(top, *parts[:depth])
            limit = _read_int(os.path.join(d, files[0]))
            if limit is None or (controllers and limit >= _NO_V1_LIMIT):
                continue
            used = _read_int(os.path.join(d, files[1])) or 0
            used -= min(used, _inactive_file(os.path.join(d, "memory.stat"), files[2]))
            best = max(0, limit - used) if best is None else min(best, max(0, limit - used))
    return best


def available_memory() -> Optional[int]:
    """Bytes of memory available to new work: ``MemAvailable``, or less where this process's memory cgroup
    allows less (:func:`cgroup_available_memory`); ``None`` if the system does not say."""
    machine: Optional[int] = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    machine = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if machine is None:
        try:
            machine = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            machine = None
    group = cgroup_available_memory()
    return group if machine is None else machine if group is None else min(machine, group)


def default_max_pixels(memory: Optional[int] = None) -> int:
    """Largest image (pixels) coded by default on this machine (see the module docstring)."""
    memory = available_memory() if memory is None else memory
    if memory is None:
        return MIN_DEFAULT_MAX_PIXELS
    return max(MIN_DEFAULT_MAX_PIXELS, int((memory * MEMORY_SHARE - BASE_BYTES) / BYTES_PER_PIXEL))


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(load: Optional[float] = None, cpus: Optional[int] = None) -> int:
    """Intra-op threads for one command: ``LPM_THREADS``, else ``OMP_NUM_THREADS``, else the CPUs of this
    process minus the 1-minute load average (rounded), at least 1."""
    for var in ("LPM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    cpus = _cpus() if cpus is None else cpus
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (OSError, AttributeError):
            load = 0.0
    return max(1, min(cpus, cpus - int(load + 0.5)))
