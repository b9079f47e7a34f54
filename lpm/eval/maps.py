"""Where the prompts act and where the bits go: attention maps and bit-allocation maps.

:func:`attention_maps` runs the frozen base (no prompts) and the prompted codec at a rate on one image,
records the attention probabilities of one :class:`~lpm.layers.WindowAttention` layer with
:func:`lpm.layers.capture_attention`, and maps every per-query statistic from window order back to the
layer's ``H_l × W_l`` grid (undoing the cyclic shift of shifted blocks and dropping padded positions, with
the inverse index of :func:`lpm.layers.swin.window_gather_index`)::

    probs (B, nW, heads, N, N+P)  ─ per query q: statistic over keys, mean over heads ─►  (nW·N,)
                                  ─ [inverse gather index] ─►  (H_l·W_l,)  ─ reshape ─►  (H_l, W_l)

Statistics per image-token query (means over heads):

* ``prompt_mass``: attention probability on the ``P`` prompt keys (0 for the base, which has none);
* ``shift``: total-variation distance ``½ Σ_k |p_base(k) − p̃(k)|`` between the base's distribution over
  the window's image keys and the prompted model's, renormalised to sum to 1 over image keys;
* ``base_entropy`` / ``prompted_entropy``: entropy in bits of the full key distribution (image + prompt
  keys for the prompted model).

:func:`bit_allocation` turns the eval-mode likelihoods of ``y`` and ``z`` into bits per latent position
(``−log₂ p`` summed over channels) and upsamples them (nearest) to the image as bits per pixel; the latent
maps add up exactly to the model's estimated size, which is compared to the real stream.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from lpm import fileformat
from lpm.codec import encode_image
from lpm.data import ImageInfo
from lpm.layers import WindowAttention, capture_attention
from lpm.layers.swin import SwinBlock, window_gather_index
from lpm.models import PromptedCodec, TICCodec

__all__ = ["attention_layer_names", "attention_maps", "bit_allocation", "MAPS_MAX_PIXELS", "Y_STRIDE", "Z_STRIDE"]

#: The largest image the maps take by default. They run the whole-image forward pass (no tiles) and keep every
#: window's attention probabilities: measured with the tiny smoke model on a CPU, peak memory 2.8 GB for
#: attention maps at 1024x1024 and 8.3 GB at 2048x2048 (bit allocation: 1.7 GB at 2048x2048); the paper-size
#: codec needs more. A Kodak image is 0.39 megapixels. Crop a larger photo (lpm.slider.center_crop) or pass
#: ``max_pixels=None`` on a machine with the memory.
MAPS_MAX_PIXELS = 1024 * 1024

#: Downsampling from the image to ``y`` and to ``z``.
Y_STRIDE, Z_STRIDE = 16, 64

#: model id used for the real stream size in :func:`bit_allocation` (not tied to a checkpoint).
_ANON_MODEL_ID = "0" * 16


def _base(model: Union[PromptedCodec, TICCodec]) -> TICCodec:
    return model.base if isinstance(model, PromptedCodec) else model


def attention_layer_names(model: Union[PromptedCodec, TICCodec]) -> list[str]:
    """Qualified names (relative to the base codec) of every window-attention layer, in forward order of
    construction, e.g. ``"g_a.layers.1.blocks.0.attn"``."""
    return [n for n, m in _base(model).named_modules() if isinstance(m, WindowAttention)]


def _check_prompted(model: Any) -> None:
    if not isinstance(model, PromptedCodec):
        raise TypeError(f"expected a PromptedCodec (lpm.zoo.load wraps a bare base), got {type(model).__name__}")


def _as_batch(x: Tensor, max_pixels: Optional[int] = MAPS_MAX_PIXELS) -> Tensor:
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[:2] != (1, 3):
        raise ValueError(f"expected one image (1, 3, H, W) or (3, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if max_pixels is not None and h * w > max_pixels:
        raise ValueError(f"a {w}x{h} image is larger than the maps take ({max_pixels} pixels, "
                         "lpm.eval.maps.MAPS_MAX_PIXELS: they keep every window's attention, about 3 GB at 1024x1024 "
                         "for the tiny model); crop it first (lpm.slider.center_crop) or pass max_pixels=None")
    return x


def _entropy_bits(p: Tensor) -> Tensor:
    return -(p * torch.log2(p.clamp_min(1e-30))).sum(-1)


def _to_grid(per_query: Tensor, inv: Tensor, h: int, w: int) -> np.ndarray:
    """``(nW, N)`` per-query values in window order → ``(h, w)`` numpy map at the layer's resolution."""
    return per_query.reshape(-1).index_select(0, inv).reshape(h, w).double().cpu().numpy()


@torch.no_grad()
def attention_maps(
    model: PromptedCodec, x: Tensor, rate: float, layer: str, *, return_probs: bool = False,
    max_pixels: Optional[int] = MAPS_MAX_PIXELS,
) -> dict[str, Any]:
    """Attention statistics of one layer for the base and for the prompted codec at ``rate``.

    Args:
        model: the prompted codec.
        x: one image ``(1, 3, H, W)`` (or ``(3, H, W)``) in [0, 1].
        rate: λ in the model's range (the base rate gives the base twice).
        layer: a name from :func:`attention_layer_names`.
        return_probs: also return the raw probabilities (``base_probs``, ``prompted_probs``; tensors of
            shape ``(1, nW, heads, N, N[+P])``, window order, padded queries included).
        max_pixels: larger images are refused (:data:`MAPS_MAX_PIXELS`; ``None``: no limit).

    Returns:
        dict with numpy ``(H_l, W_l)`` maps ``prompt_mass``, ``shift``, ``base_entropy``,
        ``prompted_entropy``, and ``layer``, ``resolution`` ``(H_l, W_l)``, ``stride`` (image pixels per
        token), ``image_region`` (the top-left part of the maps that covers real pixels: the codec pads the
        image to a multiple of 64 before the first layer), ``window``, ``window_shift``,
        ``num_prompt_tokens`` (P per window), ``base_probs_shape``, ``probs_shape`` (prompted).
    """
    _check_prompted(model)
    base = model.base
    names = attention_layer_names(model)
    if layer not in names:
        raise KeyError(f"{layer!r} is not a window-attention layer; known: {names}")
    attn = base.get_submodule(layer)
    block = base.get_submodule(layer.rsplit(".", 1)[0])
    if not isinstance(block, SwinBlock):
        raise TypeError(f"{layer!r} does not sit in a SwinBlock")
    x = _as_batch(x, max_pixels).to(next(base.parameters()).device)

    sizes: list[tuple[int, int]] = []
    hook = block.register_forward_pre_hook(lambda m, args: sizes.append(tuple(args[0].shape[1:3])))
    was_training = model.training
    model.eval()
    try:
        with capture_attention(attn) as rec:
            base(x)
            if len(rec[""]) != 1:
                raise RuntimeError(f"layer {layer} ran {len(rec[''])} times in one forward pass")
            p_base = rec[""][0]
            rec[""].clear()
            model(x, rate)
            p_prompt = rec[""][0]
    finally:
        hook.remove()
        model.train(was_training)
    h, w = sizes[0]
    stride = base.pad(x).shape[-2] // h  # the layer's stride relative to the (padded) image
    _, inv = window_gather_index(h, w, block.window, block.shift, p_base.device)
    n = p_base.shape[-2]
    pb = p_base[0].double()  # (nW, heads, N, N)
    pp = p_prompt[0].double()  # (nW, heads, N, N+P)
    img = pp[..., :n]
    img = img / img.sum(-1, keepdim=True).clamp_min(1e-300)
    prompt_mass = pp[..., n:].sum(-1).mean(1)  # (nW, N)
    tv = 0.5 * (pb - img).abs().sum(-1).mean(1)
    out: dict[str, Any] = {
        "layer": layer,
        "rate": float(rate),
        "resolution": (h, w),
        "stride": stride,
        "image_region": (math.ceil(x.shape[-2] / stride), math.ceil(x.shape[-1] / stride)),
        "window": block.window,
        "window_shift": block.shift,
        "num_prompt_tokens": pp.shape[-1] - n,
        "prompt_mass": _to_grid(prompt_mass, inv, h, w),
        "shift": _to_grid(tv, inv, h, w),
        "base_entropy": _to_grid(_entropy_bits(pb).mean(1), inv, h, w),
        "prompted_entropy": _to_grid(_entropy_bits(pp).mean(1), inv, h, w),
        "base_probs_shape": tuple(p_base.shape),
        "probs_shape": tuple(p_prompt.shape),
    }
    if return_probs:
        out["base_probs"] = p_base
        out["prompted_probs"] = p_prompt
    return out


def _upsample(bits: Tensor, factor: int, h: int, w: int) -> np.ndarray:
    """Bits per latent position ``(h_l, w_l)`` → bits per pixel ``(h, w)``: nearest ×factor, /factor², crop."""
    up = bits.repeat_interleave(factor, 0).repeat_interleave(factor, 1) / float(factor * factor)
    return up[:h, :w].double().cpu().numpy()


@torch.no_grad()
def bit_allocation(model: PromptedCodec, x: Tensor, rate: float, *, real: bool = True,
                   max_pixels: Optional[int] = MAPS_MAX_PIXELS) -> dict[str, Any]:
    """Where the bits go, from the eval-mode likelihoods (the same rounding as the bitstream).

    Returns numpy arrays ``y_bits`` ``(H/16, W/16)`` and ``z_bits`` ``(H/64, W/64)`` (bits per latent
    position, padded image size), ``y_bpp_map`` / ``z_bpp_map`` / ``bpp_map`` ``(H, W)`` (bits per pixel:
    nearest upsampling of the latent maps divided by the stride², cropped to the image), and the totals
    ``estimated_bits`` (= ``y_bits.sum() + z_bits.sum()``), ``estimated_bpp``, ``bits_in_padding`` (what
    the crop leaves out of the pixel maps). With ``real=True`` it also codes the image for real:
    ``real_bytes`` (complete ``.lpm`` file), ``payload_bytes`` and ``real_over_estimated`` (payload bits /
    estimated bits; close to 1 for a well-built coder, slightly above). Images over ``max_pixels`` are refused
    (:data:`MAPS_MAX_PIXELS`; ``None``: no limit).
    """
    _check_prompted(model)
    x = _as_batch(x, max_pixels)
    h, w = x.shape[-2:]
    base = model.base
    x = x.to(next(base.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        out = model(x, rate)
    finally:
        model.train(was_training)
    lik = out["likelihoods"]
    y_bits = (-torch.log2(lik["y"].double())).sum(1)[0]
    z_bits = (-torch.log2(lik["z"].double())).sum(1)[0]
    y_map = _upsample(y_bits, Y_STRIDE, h, w)
    z_map = _upsample(z_bits, Z_STRIDE, h, w)
    total = float(y_bits.sum() + z_bits.sum())
    res: dict[str, Any] = {
        "rate": float(rate),
        "y_bits": y_bits.cpu().numpy(),
        "z_bits": z_bits.cpu().numpy(),
        "y_bpp_map": y_map,
        "z_bpp_map": z_map,
        "bpp_map": y_map + z_map,
        "estimated_bits": total,
        "estimated_y_bits": float(y_bits.sum()),
        "estimated_z_bits": float(z_bits.sum()),
        "estimated_bpp": total / (h * w),
        "bits_in_padding": total - float(y_map.sum() + z_map.sum()),
    }
    if real:
        info = ImageInfo(height=h, width=w, channels=3, bit_depth=8, had_alpha=False)
        c = encode_image(model, _ANON_MODEL_ID, x[0].cpu(), info, rate)
        data = fileformat.encode(c)
        payload = sum(len(s) for s in c.strings)
        res.update(
            real_bytes=len(data),
            payload_bytes=payload,
            real_bpp=8.0 * len(data) / (h * w),
            real_over_estimated=8.0 * payload / total if total > 0 else math.nan,
        )
    return res
