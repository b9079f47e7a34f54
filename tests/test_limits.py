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
