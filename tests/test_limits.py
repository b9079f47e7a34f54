"""Machine-derived defaults (lpm.limits) and the torch-free start of the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lpm import limits


def test_default_max_pixels_follows_memory_with_a_floor():
    gb = 1 << 30
    assert limits.default_max_pixels(24 * gb) == int(
        (24 * gb * limits.MEMORY_SHARE - limits.BASE_BYTES) / limits.BYTES_PER_PIXEL)
    # tiled coding: ~100 MP on this 24 GB machine (22 GB available), so a 24 MP photo is coded by default
    assert 90_000_000 < limits.default_max_pixels(22 * gb) < 110_000_000
    assert limits.estimated_peak_bytes(6000 * 4000) < 8 * gb  # measured: 5.6 GB
    assert limits.default_max_pixels(1 * gb) == limits.MIN_DEFAULT_MAX_PIXELS
    assert limits.default_max_pixels(4 * gb) == limits.MIN_DEFAULT_MAX_PIXELS
    assert limits.default_max_pixels() >= limits.MIN_DEFAULT_MAX_PIXELS


def test_absurd_headers_are_refused_before_decoding(tmp_path):
    """A 65535x65535 header is refused by the default limit from the header alone (no allocation)."""
    from lpm import fileformat
    from lpm.codec import DEFAULT_MAX_PIXELS

    assert limits.default_max_pixels(64 << 30) < 65535 * 65535
    c = fileformat.CompressedImage(fileformat.StreamHeader("0123456789abcdef", 0.01, 65535, 65535, 3, 8,
                                                           fileformat.expected_latent_shape(65535, 65535), 0),
                                   [b"\x00" * 8, b"\x00" * 8])
    path = tmp_path / "huge.lpm"
    fileformat.write(path, c)
    if DEFAULT_MAX_PIXELS < 65535 * 65535:  # any machine with less than ~860 GB available
        with pytest.raises(ValueError, match="exceeds the limit"):
            fileformat.read(path, max_pixels=DEFAULT_MAX_PIXELS)


def test_default_threads_leaves_loaded_cpus_alone(monkeypatch):
    monkeypatch.delenv("LPM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert limits.default_threads(load=0.0, cpus=8) == 8
    assert limits.default_threads(load=2.6, cpus=8) == 5
    assert limits.default_threads(load=30.0, cpus=8) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert limits.default_threads(load=0.0, cpus=8) == 3
    monkeypatch.setenv("LPM_THREADS", "2")
    assert limits.default_threads(load=0.0, cpus=8) == 2
    monkeypatch.setenv("LPM_THREADS", "zero")
    assert limits.default_threads(load=0.0, cpus=8) == 3  # not a positive integer: ignored


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["info", "--help"]])
def test_cli_start_does_not_import_torch(argv):
    code = (
        "import sys\nfrom lpm.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "NO-TORCH", out.stdout + out.stderr


def test_info_does_not_import_torch(tmp_path):
    from lpm import fileformat

    c = fileformat.CompressedImage(fileformat.StreamHeader("0123456789abcdef", 0.01, 64, 64, 3, 8, (1, 1), 0),
                                   [b"\x00" * 8, b"\x00" * 8])
    path = tmp_path / "a.lpm"
    fileformat.write(path, c)
    code = ("import sys\nfrom lpm.cli import main\n"
            f"rc = main(['info', {str(path)!r}])\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "NO-TORCH 0", out.stdout + out.stderr


def _fake_cgroups(monkeypatch, tmp_path, proc_line: str, files: dict[str, str]) -> None:
    """A fake ``/proc/self/cgroup`` (one line) and cgroup tree under ``tmp_path`` (``files``: path -> text)."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "proc").write_text(proc_line + "\n")
    for rel, text in files.items():
        (tmp_path / "sys" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "sys" / rel).write_text(text)
    monkeypatch.setattr(limits, "_PROC_CGROUP", str(tmp_path / "proc"))
    monkeypatch.setattr(limits, "_CGROUP_ROOT", str(tmp_path / "sys"))


def test_a_containers_memory_limit_bounds_the_default(monkeypatch, tmp_path):
    """MemAvailable is the host's; a cgroup limit below it (a container) sets the default max_pixels."""
    gb = 1 << 30
    # cgroup v2, the limit one level above this process's cgroup; 1 GB of usage is reclaimable page cache
    _fake_cgroups(monkeypatch, tmp_path, "0::/box/job", {
        "cgroup.controllers": "cpu memory",
        "box/memory.max": str(8 * gb), "box/memory.current": str(3 * gb), "box/memory.stat": f"anon 1\ninactive_file {gb}\n",
        "box/job/memory.max": "max", "box/job/memory.current": str(3 * gb),
    })
    assert limits.cgroup_available_memory() == 6 * gb
    assert limits.available_memory() <= 6 * gb  # this machine's MemAvailable, cut to the container's
    assert limits.default_max_pixels(limits.available_memory()) <= limits.default_max_pixels(6 * gb)
    # cgroup v1 (memory controller mounted on its own), a process in a namespace (its cgroup is the root)
    _fake_cgroups(monkeypatch, tmp_path / "v1", "4:memory:/docker/abc", {
        "memory/memory.limit_in_bytes": str(4 * gb), "memory/memory.usage_in_bytes": str(gb),
        "memory/memory.stat": f"inactive_file 0\ntotal_inactive_file {gb // 2}\n",
    })
    assert limits.cgroup_available_memory() == 4 * gb - gb // 2
    # no limit (v1 writes 2**63 rounded to pages, v2 "max"): the machine's figure stands
    _fake_cgroups(monkeypatch, tmp_path / "none", "4:memory:/\n0::/", {
        "memory/memory.limit_in_bytes": "9223372036854771712", "memory/memory.usage_in_bytes": str(gb),
        "unified/memory.max": "max",
    })
    assert limits.cgroup_available_memory() is None
    monkeypatch.setattr(limits, "_PROC_CGROUP", str(tmp_path / "missing"))
    assert limits.cgroup_available_memory() is None
