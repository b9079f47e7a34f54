"""Attention maps (shapes, probabilities, window→space mapping with shifts and padding) and bit maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import TINY_BASE_RATE
from lpm.eval.maps import _to_grid, attention_layer_names, attention_maps, bit_allocation
from lpm.layers import WindowAttention
from lpm.layers.swin import window_gather_index

pytestmark = pytest.mark.usefixtures("torch_single_thread")

PROMPTED_RATE = 0.0035


@pytest.fixture(scope="module")
def image():
    # 60x130 pads to 64x192: the window-4 hyperprior layers (2x6 tokens) need Swin padding too
    g = torch.Generator().manual_seed(3)
    return torch.rand(1, 3, 60, 130, generator=g)


def test_layer_names(tiny_codec):
    names = attention_layer_names(tiny_codec)
    cfg = tiny_codec.base.config
    assert len(names) == sum(cfg.enc_depths) + sum(cfg.dec_depths) + 2 * cfg.hyper_depth
    assert "g_a.layers.1.blocks.0.attn" in names
    assert all(isinstance(tiny_codec.base.get_submodule(n), WindowAttention) for n in names)
    assert attention_layer_names(tiny_codec.base) == names
    with pytest.raises(KeyError):
        attention_maps(tiny_codec, torch.rand(1, 3, 64, 64), PROMPTED_RATE, "g_a.layers.0")


@pytest.mark.parametrize("h,w,window,shift", [(8, 8, 4, 0), (6, 10, 4, 2), (5, 7, 4, 2), (12, 20, 8, 4)])
def test_window_tokens_map_back_to_their_positions(h, w, window, shift):
    """Give every window token the flat index of the pixel it was gathered from; mapping back must give
    each position its own index (the roll undone, padded tokens dropped)."""
    fwd, inv = window_gather_index(h, w, window, shift, torch.device("cpu"))
    grid = _to_grid(fwd.reshape(-1, window * window).double(), inv, h, w)
    assert np.array_equal(grid, np.arange(h * w).reshape(h, w))


@pytest.mark.parametrize("layer", ["g_a.layers.1.blocks.0.attn", "g_a.layers.5.blocks.1.attn",
                                   "g_s.layers.1.blocks.1.attn", "h_a.layers.1.blocks.1.attn",
                                   "h_s.layers.1.blocks.1.attn"])
def test_attention_maps(tiny_codec, image, layer):
    r = attention_maps(tiny_codec, image, PROMPTED_RATE, layer, return_probs=True)
    hl, wl = r["resolution"]
    pad_h, pad_w = 64, 192  # the codec pads 60x130 to multiples of 64
    assert (hl * r["stride"], wl * r["stride"]) == (pad_h, pad_w)
    assert r["image_region"] == (math.ceil(60 / r["stride"]), math.ceil(130 / r["stride"]))
    for key in ("prompt_mass", "shift", "base_entropy", "prompted_entropy"):
        assert r[key].shape == (hl, wl), key
        assert np.isfinite(r[key]).all(), key
    pb, pp = r["base_probs"], r["prompted_probs"]
    assert tuple(pb.shape) == r["base_probs_shape"] and tuple(pp.shape) == r["probs_shape"]
    n = (r["window"]) ** 2
    assert pb.shape[-2:] == (n, n)
    assert pp.shape[-1] == n + r["num_prompt_tokens"] and r["num_prompt_tokens"] == n // 4
    torch.testing.assert_close(pb.sum(-1), torch.ones_like(pb[..., 0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(pp.sum(-1), torch.ones_like(pp[..., 0]), atol=1e-5, rtol=0)
    assert (r["prompt_mass"] > 0).all() and (r["prompt_mass"] < 1).all()
    assert (r["shift"] >= 0).all() and (r["shift"] <= 1 + 1e-9).all()
    assert (r["base_entropy"] >= -1e-9).all() and (r["base_entropy"] <= math.log2(n) + 1e-6).all()
    assert (r["prompted_entropy"] <= math.log2(pp.shape[-1]) + 1e-6).all()
    if layer == "g_a.layers.1.blocks.0.attn":
        # the first layer sees the same input with and without prompts: prompt keys only take mass away,
        # the distribution over image keys is unchanged once renormalised (the same holds for the first
        # layer of h_s whenever the prompts do not change ẑ, hence h_s block 1 above)
        assert r["shift"].max() < 1e-6
    else:
        assert r["shift"].mean() > 1e-4


def test_base_rate_has_no_prompt_mass(tiny_codec, image):
    r = attention_maps(tiny_codec, image, TINY_BASE_RATE, "g_s.layers.1.blocks.1.attn")
    assert r["num_prompt_tokens"] == 0 and r["probs_shape"] == r["base_probs_shape"]
    assert np.all(r["prompt_mass"] == 0) and np.all(r["shift"] < 1e-6)
    np.testing.assert_allclose(r["prompted_entropy"], r["base_entropy"], atol=1e-9)


def test_attention_maps_leave_model_state(tiny_codec, image):
    tiny_codec.train()
    try:
        attention_maps(tiny_codec, image[0], PROMPTED_RATE, "h_s.layers.1.blocks.1.attn")
        assert tiny_codec.training
    finally:
        tiny_codec.eval()
    assert all(m._capture is None for m in tiny_codec.modules() if isinstance(m, WindowAttention))


@pytest.mark.parametrize("rate", [PROMPTED_RATE, 0.02, TINY_BASE_RATE])
def test_bit_allocation_totals(tiny_codec, image, rate):
    b = bit_allocation(tiny_codec, image, rate)
    with torch.no_grad():
        lik = tiny_codec(image, rate)["likelihoods"]
    direct = sum(float(-torch.log2(v.double()).sum()) for v in lik.values())
    assert b["estimated_bits"] == pytest.approx(direct, rel=1e-9)
    assert b["y_bits"].shape == (64 // 16, 192 // 16) and b["z_bits"].shape == (1, 3)
    assert b["y_bits"].sum() + b["z_bits"].sum() == pytest.approx(b["estimated_bits"], rel=1e-9)
    for key in ("y_bpp_map", "z_bpp_map", "bpp_map"):
        assert b[key].shape == (60, 130)
    # the pixel maps hold every bit except those of padded positions
    assert b["y_bpp_map"].sum() + b["z_bpp_map"].sum() + b["bits_in_padding"] == pytest.approx(
        b["estimated_bits"], rel=1e-9)
    assert b["bits_in_padding"] > 0
    # real stream vs estimate: reported, loosely checked (an untrained tiny model)
    assert 0.5 < b["real_over_estimated"] < 2.0
    assert b["real_bytes"] > b["payload_bytes"]


def test_bit_maps_of_aligned_image_hold_all_bits(tiny_codec):
    x = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(5))
    b = bit_allocation(tiny_codec, x, PROMPTED_RATE, real=False)
    assert b["bits_in_padding"] == pytest.approx(0.0, abs=1e-6)
    assert b["bpp_map"].sum() == pytest.approx(b["estimated_bits"], rel=1e-9)
    assert b["estimated_bpp"] == pytest.approx(b["estimated_bits"] / (64 * 128))
    assert "real_bytes" not in b
    # nearest upsampling: each 16x16 block of the y map is constant and carries its latent's bits
    np.testing.assert_allclose(b["y_bpp_map"][:16, :16], b["y_bits"][0, 0] / 256)


def test_images_too_large_for_the_maps_are_refused_before_any_work(tiny_codec):
    """The maps run the whole image untiled and keep every window's attention: 8.3 GB at 2048x2048 for the
    tiny model, with no check. A larger image is now refused by its size alone; max_pixels=None lifts it."""
    from lpm.eval.maps import MAPS_MAX_PIXELS

    big = torch.zeros(3, 1025, 1024)  # one row over 1024x1024
    assert 1025 * 1024 > MAPS_MAX_PIXELS
    layer = attention_layer_names(tiny_codec)[0]
    with pytest.raises(ValueError, match="larger than the maps take"):
        attention_maps(tiny_codec, big, tiny_codec.base_rate, layer)
    with pytest.raises(ValueError, match="larger than the maps take"):
        bit_allocation(tiny_codec, big, tiny_codec.base_rate)
    small = torch.rand(3, 40, 24)
    assert attention_maps(tiny_codec, small, tiny_codec.base_rate, layer, max_pixels=40 * 24)["layer"] == layer
    with pytest.raises(ValueError, match="larger than the maps take"):
        bit_allocation(tiny_codec, small, tiny_codec.base_rate, max_pixels=40 * 24 - 1)
