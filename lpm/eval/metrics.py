"""Image-quality metrics on 8-bit RGB images: PSNR and MS-SSIM, as in the usual Kodak tables.

- :func:`psnr`: ``10·log10(255² / MSE)`` with the MSE over all pixels and all three channels of the
  8-bit images (computed in float64). **Identical images**: the MSE is floored at
  :data:`MSE_FLOOR` (``1e-10``), so the result is the finite cap :data:`PSNR_CAP_DB` ≈ 148.13 dB
  instead of ``inf``. The floor is far below any real 8-bit error (one pixel off by one gray level
  in a 100-megapixel image is still an MSE of 3.3e-9), so the cap never hides a real distortion, and
  means over images and JSON files stay finite. The same floor is used by :mod:`lpm.eval.rd`.
- :func:`ms_ssim_rgb`: :func:`pytorch_msssim.ms_ssim` on the images scaled to ``[0, 1]``
  (``data_range=1``, the default 11-pixel Gaussian window and 5 scales). With 5 scales the window no
  longer fits below :data:`MS_SSIM_MIN_SIDE` = 161 pixels on the shorter side; there MS-SSIM is
  undefined and ``NaN`` is returned instead of raising.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["MSE_FLOOR", "MS_SSIM_MIN_SIDE", "PSNR_CAP_DB", "ms_ssim_rgb", "psnr"]

#: Smallest MSE used in :func:`psnr` (identical images would give ``inf``).
MSE_FLOOR = 1e-10
#: What :func:`psnr` returns for identical images: ``10·log10(255² / MSE_FLOOR)`` ≈ 148.13 dB.
PSNR_CAP_DB = 10.0 * math.log10(255.0**2 / MSE_FLOOR)
#: Shortest image side for which 5-scale MS-SSIM with an 11-pixel window is defined:
#: ``(11 - 1) · 2**4 + 1``; pytorch_msssim asserts ``min(H, W) > 160``.
MS_SSIM_MIN_SIDE = 161


def _as_uint8_pair(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name, v in (("a", a), ("b", b)):
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().numpy()
        v = np.asarray(v)
        if v.dtype != np.uint8:
            raise TypeError(f"{name} must be a uint8 image array (8-bit samples), got dtype {v.dtype}")
        arrays.append(v)
    if arrays[0].shape != arrays[1].shape:
        raise ValueError(f"images differ in shape: {arrays[0].shape} vs {arrays[1].shape}")
    if arrays[0].size == 0:
        raise ValueError("empty image")
    return arrays[0], arrays[1]


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """PSNR in dB between two 8-bit images of the same shape (any layout, e.g. ``(H, W, 3)``).

    MSE over every sample (all pixels, all channels), peak 255. Identical images give
    :data:`PSNR_CAP_DB` (see the module docstring), not ``inf``.

    Raises:
        TypeError: an input is not uint8.
        ValueError: shapes differ, or the images are empty.
    """
    a8, b8 = _as_uint8_pair(a, b)
    mse = float(np.mean((a8.astype(np.float64) - b8.astype(np.float64)) ** 2))
    return 10.0 * math.log10(255.0**2 / max(mse, MSE_FLOOR))


def ms_ssim_rgb(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """MS-SSIM between two 8-bit RGB images ``(H, W, 3)`` (uint8), computed on ``[0, 1]`` (``data_range=1``).

    Returns ``NaN`` when ``min(H, W) < MS_SSIM_MIN_SIDE`` (161): 5-scale MS-SSIM is undefined there.

    Raises:
        TypeError: an input is not uint8.
        ValueError: shapes differ, or the images are not ``(H, W, 3)``.
    """
    from pytorch_msssim import ms_ssim

    a8, b8 = _as_uint8_pair(a, b)
    if a8.ndim != 3 or a8.shape[2] != 3:
        raise ValueError(f"ms_ssim_rgb takes (H, W, 3) RGB images, got shape {a8.shape}")
    if min(a8.shape[:2]) < MS_SSIM_MIN_SIDE:
        return float("nan")
    x = torch.from_numpy(np.ascontiguousarray(a8)).permute(2, 0, 1)[None].to(torch.float32) / 255.0
    y = torch.from_numpy(np.ascontiguousarray(b8)).permute(2, 0, 1)[None].to(torch.float32) / 255.0
    with torch.no_grad():
        return float(ms_ssim(x, y, data_range=1.0, size_average=True).item())
