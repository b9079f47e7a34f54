"""Tiled coding of large images (lpm.models.base.tile_grid): grid, closeness to whole-image coding, progress."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import lpm.models.base as base
from conftest import make_tiny_codec
from lpm.models.base import STRIDE, Tile, tile_grid, tile_spans

pytestmark = pytest.mark.usefixtures("torch_single_thread")

RATE = 0.013  # a prompted (non-base) rate of the tiny codec: encoder and decoder prompt nets take part


@pytest.fixture(scope="module")
def model():
    return make_tiny_codec(seed=0)


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A smooth colour image with some texture, ``(1, 3, h, w)`` in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    x = torch.stack([xx, yy, 0.5 + 0.4 * torch.sin(9 * xx + 5 * yy)])[None]
    return (x + 0.05 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 1)


def _code(model, x, rate=RATE, progress=None):
    out = model.compress(x, rate, progress=progress)
    dec = model.decompress(out["strings"], out["shape"], rate, size=x.shape[-2:], table_checks=out["table_checks"],
                           progress=progress)["x_hat"]
    return out, dec


# ---------------------------------------------------------------------------------------------- the grid
@pytest.mark.parametrize("h,w,tile,halo", [(130, 70, 64, 128), (1, 1, 64, 0), (1024, 1024, 1024, 128),
                                           (1025, 3000, 1024, 128), (4000, 6000, 1024, 128), (700, 200, 256, 64)])
def test_grid_covers_every_pixel_once(h, w, tile, halo):
    hp, wp = math.ceil(h / STRIDE) * STRIDE, math.ceil(w / STRIDE) * STRIDE
    tiles = tile_grid(h, w, tile, halo)
    count = np.zeros((hp, wp), np.int32)
    for t in tiles:
        assert isinstance(t, Tile)
        count[t.y0 : t.y1, t.x0 : t.x1] += 1
        assert all(v % STRIDE == 0 for v in t)  # keeps every Swin window grid (and the stride-64 maps) aligned
        assert 0 < t.y1 - t.y0 <= tile and 0 < t.x1 - t.x0 <= tile
        assert t.ey0 == max(0, t.y0 - halo) and t.ey1 == min(hp, t.y1 + halo)
        assert t.ex0 == max(0, t.x0 - halo) and t.ex1 == min(wp, t.x1 + halo)
    assert (count == 1).all()
    assert len(tiles) == math.ceil(hp / tile) * math.ceil(wp / tile)


def test_grid_sizes_are_balanced_and_defaults_are_whole_up_to_the_tile():
    assert [(a, b) for a, b, _, _ in tile_spans(1088, 1024, 128)] == [(0, 576), (576, 1088)]
    assert [b - a for a, b, _, _ in tile_spans(6016, 1024, 128)] == [1024, 1024, 1024, 1024, 960, 960]
    assert tile_grid(1024, 1024) == [Tile(0, 1024, 0, 1024, 0, 1024, 0, 1024)]  # one tile = whole-image path
    assert len(tile_grid(768, 512)) == 1 and len(tile_grid(1025, 64)) == 2
    assert len(tile_grid(4000, 6000)) == 4 * 6
    for bad in [(100, 128), (0, 128), (64, -64), (64, 32)]:
        with pytest.raises(ValueError):
            tile_spans(500, *bad)


def test_tiling_depends_only_on_the_size(monkeypatch, model):
    """Fixed constants, not the machine: the grid is the same whatever memory or threads the machine has,
    the same for every size that pads alike, and the encoder and decoder (which sees only the latent shape)
    cut an image the same way."""
    from lpm import limits

    ref = tile_grid(4000, 6000)
    for mem in (1 << 30, 1 << 40):
        monkeypatch.setattr(limits, "available_memory", lambda mem=mem: mem)
        assert tile_grid(4000, 6000) == ref
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert tile_grid(4000, 6000) == ref
    finally:
        torch.set_num_threads(threads)
    assert tile_grid(3970, 5990) == ref  # pads to the same 4032x6016
    monkeypatch.setattr(base, "TILE", 64)
    calls = []
    _code(model, _image(130, 70), progress=lambda d, n: calls.append(n))
    assert set(calls) == {len(tile_grid(130, 70))} == {6}


# ------------------------------------------------------------------------------- whole-image path untouched
@pytest.mark.parametrize("h,w", [(128, 128), (100, 60)])
def test_images_up_to_the_tile_are_coded_whole_bit_for_bit(monkeypatch, model, h, w):
    x = _image(h, w)
    monkeypatch.setattr(base, "TILE", 1 << 20)
    ref_out, ref = _code(model, x)
    monkeypatch.setattr(base, "TILE", 128)  # the image is exactly one tile (after padding)
    out, dec = _code(model, x)
    assert out["strings"] == ref_out["strings"] and out["table_checks"] == ref_out["table_checks"]
    assert torch.equal(dec, ref)
    # and that is the plain untiled transform pair
    xp = model.base.pad(x)
    src = model.prompt_source(RATE)
    y, _ = model.base._analysis(xp, src)
    assert torch.equal(y, model.base._analysis(xp, src, tiled=True)[0])


# ------------------------------------------------------------------------------------- tiled vs whole
#: Bound on tiled minus whole-image synthesis of the same stream (default 192-pixel halo). Measured: 0 for this
#: tiny codec with 64-pixel tiles (0.1 LSB with a 128-pixel halo); with 256-pixel tiles on Kodak 0 for the
#: tiny-smoke checkpoint and at most 0.18 LSB for an untrained paper-size codec (see the README).
MAX_TILED_DIFF = 0.5 / 255


def test_tiled_decode_matches_whole_decode(monkeypatch, model):
    x = _image(256, 192, seed=1)
    monkeypatch.setattr(base, "TILE", 1 << 20)
    out, whole = _code(model, x)
    monkeypatch.setattr(base, "TILE", 64)
    tiled = model.decompress(out["strings"], out["shape"], RATE, size=x.shape[-2:],
                             table_checks=out["table_checks"])["x_hat"]
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().max().item() <= MAX_TILED_DIFF  # in general not bit-identical, but < 0.5 LSB
    # the halo is what makes it so: without one the tile borders show, with a smaller one they fade
    diffs = []
    for halo in (0, 64):
        monkeypatch.setattr(base, "TILE_HALO", halo)
        other = model.decompress(out["strings"], out["shape"], RATE, size=x.shape[-2:],
                                 table_checks=out["table_checks"])["x_hat"]
        diffs.append((other - whole).abs().max().item())
    assert diffs[0] > 20 / 255 and diffs[0] > diffs[1] > 0


def test_additive_prompts_tile_like_the_rest(monkeypatch):
    """Additive prompt maps (2C channels) go through the tiled analysis (stitched for h_a) and synthesis: the
    same file decodes tiled as whole within half an LSB, and a tiled encoding is a valid, close stream."""
    add = make_tiny_codec(seed=4, additive=True)
    x = _image(256, 192, seed=5)
    monkeypatch.setattr(base, "TILE", 1 << 20)
    out, whole = _code(add, x)
    plain_out, _ = _code(make_tiny_codec(seed=4), x)
    assert out["strings"] != plain_out["strings"]  # the added maps do change the coding
    monkeypatch.setattr(base, "TILE", 64)
    tiled = add.decompress(out["strings"], out["shape"], RATE, size=x.shape[-2:],
                           table_checks=out["table_checks"])["x_hat"]
    assert (tiled - whole).abs().max().item() <= MAX_TILED_DIFF
    t_out, t_dec = _code(add, x)
    assert torch.isfinite(t_dec).all() and (t_dec - whole).abs().max().item() <= MAX_TILED_DIFF


def test_tiled_encoding_is_a_valid_stream_close_to_whole(monkeypatch, model):
    x = _image(130, 70, seed=2)  # odd size: padded to 192x128, 3x2 tiles of 64
    monkeypatch.setattr(base, "TILE", 1 << 20)
    ref_out, ref = _code(model, x)
    monkeypatch.setattr(base, "TILE", 64)
    out, dec = _code(model, x)  # tiled analysis, tiled synthesis; the table check passes on decoding
    assert dec.shape == (1, 3, 130, 70) and torch.isfinite(dec).all()
    monkeypatch.setattr(base, "TILE", 1 << 20)
    whole_dec = model.decompress(out["strings"], out["shape"], RATE, size=(130, 70),
                                 table_checks=out["table_checks"])["x_hat"]  # the same file, decoded whole
    assert (whole_dec - dec).abs().max().item() <= MAX_TILED_DIFF

    def psnr(a):
        return -10 * math.log10(((torch.round(a * 255) / 255 - x) ** 2).mean().item())

    bits = sum(len(s[0]) for s in out["strings"]) * 8
    ref_bits = sum(len(s[0]) for s in ref_out["strings"]) * 8
    assert abs(bits - ref_bits) <= 0.01 * ref_bits + 64
    assert abs(psnr(dec) - psnr(ref)) < 0.05


def test_the_base_rate_and_batches_tile_too(monkeypatch, model):
    """The base rate (no prompt source) and a batch of two images code in tiles as well."""
    monkeypatch.setattr(base, "TILE", 64)
    x = torch.cat([_image(128, 130, seed=3), _image(128, 130, seed=4)])
    rate = model.base_rate
    out = model.compress(x, rate)
    dec = model.decompress(out["strings"], out["shape"], rate, size=(128, 130), table_checks=out["table_checks"])
    assert dec["x_hat"].shape == (2, 3, 128, 130)


# ------------------------------------------------------------------------------------------- progress
def test_progress_is_called_once_per_tile(monkeypatch, model):
    calls: list[tuple[int, int]] = []
    _code(model, _image(100, 60), progress=lambda d, n: calls.append((d, n)))
    assert calls == [(1, 1), (1, 1)]  # whole image: one call per transform
    monkeypatch.setattr(base, "TILE", 64)
    calls.clear()
    _code(model, _image(130, 70), progress=lambda d, n: calls.append((d, n)))
    assert calls == [(i, 6) for i in range(1, 7)] * 2  # encoder tiles, then decoder tiles


def test_cli_shows_a_bar_for_tiled_images_only(monkeypatch, tmp_path, capsys):
    import imagecodecs

    from lpm.cli import main
    from lpm.train.checkpoint import save_codec

    ckpt = tmp_path / "tiny.safetensors"
    save_codec(ckpt, make_tiny_codec(seed=0), meta={"budget": "untrained test model"})
    arr = (_image(130, 70)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    src = tmp_path / "in.png"
    src.write_bytes(imagecodecs.png_encode(np.ascontiguousarray(arr)))

    def run(*argv) -> str:
        assert main([str(a) for a in argv]) == 0
        return capsys.readouterr().err

    assert "tile" not in run("compress", src, tmp_path / "a.lpm", "--model", ckpt)  # one tile: no bar
    monkeypatch.setattr(base, "TILE", 64)
    assert "encoding tiles" in run("compress", src, tmp_path / "b.lpm", "--model", ckpt)
    assert "decoding tiles" in run("decompress", tmp_path / "b.lpm", tmp_path / "b.png", "--model", ckpt)
    assert run("decompress", tmp_path / "b.lpm", tmp_path / "c.png", "--model", ckpt, "--no-progress") == ""
    assert Path(tmp_path / "c.png").read_bytes() == Path(tmp_path / "b.png").read_bytes()
