"""Rate–distortion losses (compressai conventions: λ·255²·MSE + bpp, or λ·(1 − MS-SSIM) + bpp)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["RateDistortionLoss", "bpp_from_likelihoods"]


def bpp_from_likelihoods(likelihoods: dict[str, Tensor], num_pixels: int) -> Tensor:
    """Estimated bits per pixel, ``Σ −log2 p / (B·H·W)`` (the training proxy; reported bpp comes from real
    bitstreams, see :mod:`lpm.eval`)."""
    return sum(torch.log(l).sum() for l in likelihoods.values()) / (-math.log(2) * num_pixels)


class RateDistortionLoss(nn.Module):
    """``loss = λ·255²·MSE + bpp`` (``metric="mse"``) or ``λ·(1 − MS-SSIM) + bpp`` (``metric="ms-ssim"``).

    ``λ`` may be given per call (``forward(out, target, lmbda=...)``) so one module serves every rate, and
    may be a 1-D tensor of one λ per image (rate-conditioned training): then the distortion term is
    ``mean_i λ_i·255²·MSE_i``.
    Returns a dict with ``loss``, ``bpp_loss``, ``mse_loss`` (and ``ms_ssim_loss``).
    """

    def __init__(self, lmbda: float = 0.0483, metric: str = "mse") -> None:
        super().__init__()
        if metric not in ("mse", "ms-ssim"):
            raise ValueError(f"metric must be 'mse' or 'ms-ssim', got {metric!r}")
        self.lmbda, self.metric = lmbda, metric

    def forward(self, output: dict[str, Any], target: Tensor, lmbda: float | Tensor | None = None) -> dict[str, Tensor]:
        lmbda = self.lmbda if lmbda is None else lmbda
        n, _, h, w = target.shape
        out = {"bpp_loss": bpp_from_likelihoods(output["likelihoods"], n * h * w)}
        x_hat = output["x_hat"].float()
        per_image = isinstance(lmbda, Tensor) and lmbda.dim() == 1
        if per_image and lmbda.shape[0] != n:
            raise ValueError(f"got {lmbda.shape[0]} λ values for a batch of {n}")
        mse_i = torch.mean((x_hat - target.float()) ** 2, dim=(1, 2, 3))
        out["mse_loss"] = mse_i.mean()
        if self.metric == "mse":
            dist = torch.mean(lmbda.to(mse_i) * mse_i) if per_image else lmbda * out["mse_loss"]
            out["loss"] = 255**2 * dist + out["bpp_loss"]
        else:
            from pytorch_msssim import ms_ssim

            d_i = 1 - ms_ssim(x_hat.clamp(0, 1), target.float(), data_range=1.0, size_average=False)
            out["ms_ssim_loss"] = d_i.mean()
            dist = torch.mean(lmbda.to(d_i) * d_i) if per_image else lmbda * out["ms_ssim_loss"]
            out["loss"] = dist + out["bpp_loss"]
        return out
