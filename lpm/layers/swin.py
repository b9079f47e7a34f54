"""Swin transformer blocks and stages for feature maps of any height and width, with prompt inputs.

A :class:`SwinStage` is a loop of :class:`SwinBlock` s alternating regular and shifted windows (Liu et al.,
ICCV 2021), as used by the TIC codec family (Lu et al., DCC 2022). Any ``H×W`` works: the block pads the
normalised tokens to a multiple of the window and masks the padded keys, so outputs at real positions do
not depend on how much padding there is.

Prompts: every block may receive a prompt *map* ``(B, C, ⌈H/s⌉, ⌈W/s⌉)`` at ``s`` times (default 2) the
block's stride. It is cut into windows of ``w/s × w/s`` that line up with the ``w × w`` image windows, so
each window gets ``(w/s)^2`` prompt tokens (16 for ``w=8``, 4 for ``w=4``), rolled together with the image
for shifted windows and masked with the same shift regions (a prompt token belongs to the region of the
``s × s`` pixels it covers).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import Tensor, nn

from .attention import MASK_VALUE, WindowAttention

__all__ = ["SwinBlock", "SwinStage", "window_partition", "window_merge", "build_window_mask"]


def window_partition(x: Tensor, window: int) -> Tensor:
    """``(B, H, W, C)`` with ``H, W`` multiples of ``window`` → ``(B, nW, window², C)``."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, (h // window) * (w // window), window * window, c)


def window_merge(x: Tensor, window: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`."""
    b, _, _, c = x.shape
    x = x.reshape(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def _region_labels(hp: int, wp: int, window: int, shift: int, device: torch.device) -> Tensor:
    """Shift-region id of every position of the padded map (all zero without shift)."""
    labels = torch.zeros(hp, wp, dtype=torch.int64, device=device)
    if shift:
        cuts = lambda n: (slice(0, n - window), slice(n - window, n - shift), slice(n - shift, n))  # noqa: E731
        i = 0
        for hs in cuts(hp):
            for ws in cuts(wp):
                labels[hs, ws] = i
                i += 1
    return labels


def build_window_mask(
    h: int,
    w: int,
    window: int,
    shift: int,
    prompt_stride: Optional[int],
    device: torch.device,
) -> Optional[Tensor]:
    """Additive attention mask ``(nW, N, N [+ P])`` for a ``h×w`` map, or ``None`` if nothing is masked.

    A query may attend to a key only if both lie in the same shift region and the key is a real (not
    padded) position; prompt keys follow the same rule on their own (coarser) grid.
    """
    hp, wp = math.ceil(h / window) * window, math.ceil(w / window) * window
    if not shift and hp == h and wp == w:
        return None
    labels = _region_labels(hp, wp, window, shift, device)
    valid = torch.zeros(hp, wp, dtype=torch.bool, device=device)
    valid[:h, :w] = True
    keys = torch.where(valid, labels, torch.full_like(labels, -1))
    roll = lambda t, s: torch.roll(t, (-s, -s), (0, 1)) if s else t  # noqa: E731
    q_lab = window_partition(roll(labels, shift)[None, :, :, None], window)[0, :, :, 0]  # (nW, N)
    k_lab = window_partition(roll(keys, shift)[None, :, :, None], window)[0, :, :, 0]
    if prompt_stride:
        s = prompt_stride
        p_lab = labels[::s, ::s].clone()
        p_lab[math.ceil(h / s):, :] = -1
        p_lab[:, math.ceil(w / s):] = -1
        p_lab = window_partition(roll(p_lab, shift // s)[None, :, :, None], window // s)[0, :, :, 0]
        k_lab = torch.cat([k_lab, p_lab], dim=1)
    allowed = q_lab[:, :, None] == k_lab[:, None, :]
    return torch.where(allowed, 0.0, MASK_VALUE).float()


class SwinBlock(nn.Module):
    """Pre-norm Swin block: ``x + W-MSA(LN(x), prompts)`` then ``x + MLP(LN(x))``, tokens ``(B, H, W, C)``.

    Args:
        dim, num_heads, window: attention settings.
        shift: cyclic shift of the windows (0 or ``window // 2``).
        mlp_ratio: hidden width of the MLP relative to ``dim``.
        drop_path: stochastic-depth rate.
        prompt_stride: how much coarser than the tokens the prompt map is (window must be divisible by
            ``prompt_stride`` and, with a shift, so must ``shift``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int,
        shift: int = 0,
        mlp_ratio: float = 2.0,
        drop_path: float = 0.0,
        prompt_stride: int = 2,
    ) -> None:
        super().__init__()
        if window % prompt_stride or shift % prompt_stride:
            raise ValueError(f"window={window} and shift={shift} must be multiples of prompt_stride={prompt_stride}")
        self.dim, self.window, self.shift, self.prompt_stride = dim, window, shift, prompt_stride
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self._mask_cache: dict[tuple, Optional[Tensor]] = {}

    def _mask(self, h: int, w: int, with_prompts: bool, device: torch.device) -> Optional[Tensor]:
        key = (h, w, with_prompts, device)
        if key not in self._mask_cache:
            if len(self._mask_cache) > 32:
                self._mask_cache.clear()
            stride = self.prompt_stride if with_prompts else None
            self._mask_cache[key] = build_window_mask(h, w, self.window, self.shift, stride, device)
        return self._mask_cache[key]

    def forward(self, x: Tensor, prompt: Optional[Tensor] = None, prompt_logit: Optional[float] = None) -> Tensor:
        """``x``: ``(B, H, W, C)``; ``prompt``: ``(B, C, ⌈H/s⌉, ⌈W/s⌉)`` or ``None``."""
        b, h, w, c = x.shape
        win, shift, s = self.window, self.shift, self.prompt_stride
        hp, wp = math.ceil(h / win) * win, math.ceil(w / win) * win
        y = self.norm1(x)
        if (hp, wp) != (h, w):
            y = F.pad(y, (0, 0, 0, wp - w, 0, hp - h))
        if shift:
            y = torch.roll(y, (-shift, -shift), (1, 2))
        tokens = window_partition(y, win)
        ptokens = None
        if prompt is not None:
            ph, pw = math.ceil(h / s), math.ceil(w / s)
            if prompt.shape[0] != b or prompt.shape[1] != c or tuple(prompt.shape[-2:]) != (ph, pw):
                raise ValueError(
                    f"prompt map of shape {tuple(prompt.shape)} does not fit a {h}x{w}x{c} block "
                    f"(expected ({b}, {c}, {ph}, {pw}))"
                )
            p = prompt.permute(0, 2, 3, 1).to(y.dtype)
            if (hp // s, wp // s) != (ph, pw):
                p = F.pad(p, (0, 0, 0, wp // s - pw, 0, hp // s - ph))
            if shift:
                p = torch.roll(p, (-shift // s, -shift // s), (1, 2))
            ptokens = window_partition(p, win // s)
        mask = self._mask(h, w, ptokens is not None, x.device)
        y = self.attn(tokens, mask=mask, prompts=ptokens, prompt_logit=prompt_logit)
        y = window_merge(y, win, hp, wp)
        if shift:
            y = torch.roll(y, (shift, shift), (1, 2))
        if (hp, wp) != (h, w):
            y = y[:, :h, :w, :]
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinStage(nn.Module):
    """``depth`` Swin blocks alternating regular and shifted windows, on conv-layout maps ``(B, C, H, W)``.

    ``forward(x, prompts)`` takes one optional prompt map per block (``prompts[i]`` for block ``i``; the
    layer-adaptive prompt module makes one per layer).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: int,
        mlp_ratio: float = 2.0,
        drop_path: float | Sequence[float] = 0.0,
        prompt_stride: int = 2,
    ) -> None:
        super().__init__()
        rates = [drop_path] * depth if isinstance(drop_path, (int, float)) else list(drop_path)
        self.dim, self.depth, self.window, self.prompt_stride = dim, depth, window, prompt_stride
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                num_heads,
                window,
                shift=0 if i % 2 == 0 else window // 2,
                mlp_ratio=mlp_ratio,
                drop_path=rates[i],
                prompt_stride=prompt_stride,
            )
            for i in range(depth)
        )

    def forward(
        self,
        x: Tensor,
        prompts: Optional[Sequence[Optional[Tensor]]] = None,
        prompt_logit: Optional[float] = None,
    ) -> Tensor:
        if prompts is not None and len(prompts) != self.depth:
            raise ValueError(f"got {len(prompts)} prompt maps for a stage of {self.depth} blocks")
        y = x.permute(0, 2, 3, 1)
        for i, blk in enumerate(self.blocks):
            y = blk(y, None if prompts is None else prompts[i], prompt_logit)
        return y.permute(0, 3, 1, 2)
