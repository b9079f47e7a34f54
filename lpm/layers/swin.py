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

Instead of a map, a block may be given a callable (``lpm.layers.prompt.PromptMap``): it is called on the
block's normalised input tokens ``(B, C, H, W)`` and must return the map (prompts computed from the hidden
features they steer, :class:`lpm.layers.prompt.HiddenPromptNet`). A callable whose ``adds_only`` attribute is
true returns only a ``C``-channel map to add to the tokens: no prompt keys/values at all.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from timm.layers import DropPath, Mlp
from torch import Tensor, nn

from .attention import MASK_VALUE, WindowAttention
from .prompt import PromptMap

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


def _rolled_labels(n: int, shift: int, device: torch.device) -> Tensor:
    """Shift region of each row (or column) in the *rolled* frame: 1 for the ``shift`` rows that wrapped
    around from the top (left), 0 for the rest. Tokens of different regions were not neighbours."""
    lab = torch.zeros(n, dtype=torch.int64, device=device)
    if shift:
        lab[n - shift :] = 1
    return lab


def build_window_mask(
    h: int,
    w: int,
    window: int,
    shift: int,
    prompt_stride: Optional[int],
    device: torch.device,
) -> Optional[Tensor]:
    """Additive attention mask ``(nW, N, N [+ P])`` for a ``h×w`` map, or ``None`` if nothing is masked.

    Works in the rolled frame the attention sees: a query may attend to a key only if both lie in the same
    shift region (neither or both wrapped around) and the key is a real (not padded) position; prompt keys
    follow the same rule on their own, ``prompt_stride`` times coarser grid.
    """
    hp, wp = math.ceil(h / window) * window, math.ceil(w / window) * window
    if not shift and hp == h and wp == w:
        return None
    labels = _rolled_labels(hp, shift, device)[:, None] * 2 + _rolled_labels(wp, shift, device)[None, :]
    valid = torch.zeros(hp, wp, dtype=torch.bool, device=device)
    valid[:h, :w] = True
    roll = lambda t, s: torch.roll(t, (-s, -s), (0, 1)) if s else t  # noqa: E731
    keys = torch.where(roll(valid, shift), labels, torch.full_like(labels, -1))
    q_lab = window_partition(labels[None, :, :, None], window)[0, :, :, 0]  # (nW, N)
    k_lab = window_partition(keys[None, :, :, None], window)[0, :, :, 0]
    if prompt_stride:
        s = prompt_stride
        p_valid = torch.zeros(hp // s, wp // s, dtype=torch.bool, device=device)
        p_valid[: math.ceil(h / s), : math.ceil(w / s)] = True
        p_keys = torch.where(roll(p_valid, shift // s), labels[::s, ::s], torch.full_like(labels[::s, ::s], -1))
        p_lab = window_partition(p_keys[None, :, :, None], window // s)[0, :, :, 0]
        k_lab = torch.cat([k_lab, p_lab], dim=1)
    allowed = q_lab[:, :, None] == k_lab[:, None, :]
    return torch.where(allowed, 0.0, MASK_VALUE).float()


def window_gather_index(h: int, w: int, window: int, shift: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Flat indices that do pad + cyclic shift + window partition (and the inverse) as one gather each.

    ``tokens = x.reshape(B, h*w, C)[:, fwd]`` gives the ``(B, nW*window², C)`` window tokens of the padded,
    rolled map (padded positions point at token 0: they are masked as keys and dropped as queries), and
    ``out[:, inv]`` puts window tokens back at their ``h*w`` positions.
    """
    hp, wp = math.ceil(h / window) * window, math.ceil(w / window) * window
    r = (torch.arange(hp, device=device) + shift) % hp
    c = (torch.arange(wp, device=device) + shift) % wp
    valid = (r[:, None] < h) & (c[None, :] < w)
    flat = torch.where(valid, r[:, None] * w + c[None, :], torch.zeros((), dtype=torch.long, device=device))
    fwd = window_partition(flat[None, :, :, None], window).reshape(-1)
    i = (torch.arange(h, device=device) - shift) % hp
    j = (torch.arange(w, device=device) - shift) % wp
    nww = wp // window
    win_id = (i[:, None] // window) * nww + (j[None, :] // window)
    inv = win_id * window * window + (i[:, None] % window) * window + (j[None, :] % window)
    return fwd, inv.reshape(-1)


def _added(add: Tensor, s: int, h: int, w: int, prompt_logit: Optional[float]) -> Tensor:
    """An additive prompt map ``(B, C, ⌈h/s⌉, ⌈w/s⌉)`` as ``(B, h, w, C)`` tokens to add: each pixel to the
    ``s × s`` tokens it covers, scaled by the prompt strength ``exp(prompt_logit)``."""
    add = add.repeat_interleave(s, 2).repeat_interleave(s, 3)[..., :h, :w].permute(0, 2, 3, 1)
    return add if prompt_logit is None else add * math.exp(prompt_logit)


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
        self._plan_cache: dict[tuple, tuple] = {}

    def _plan(self, h: int, w: int, with_prompts: bool, device: torch.device) -> tuple:
        """Gather indices and mask for a ``h×w`` map, cached per size (they depend on nothing else)."""
        key = (h, w, with_prompts, device)
        if key not in self._plan_cache:
            if len(self._plan_cache) > 32:
                self._plan_cache.clear()
            s = self.prompt_stride
            mask = build_window_mask(h, w, self.window, self.shift, s if with_prompts else None, device)
            masked = None if mask is None else torch.nonzero(mask.amin(dim=(1, 2)) < 0).flatten()
            fwd, inv = window_gather_index(h, w, self.window, self.shift, device)
            pfwd = None
            if with_prompts:
                pfwd, _ = window_gather_index(math.ceil(h / s), math.ceil(w / s), self.window // s, self.shift // s, device)
            self._plan_cache[key] = (mask, masked, fwd, inv, pfwd)
        return self._plan_cache[key]

    def forward(self, x: Tensor, prompt: Optional[PromptMap] = None, prompt_logit: Optional[float] = None) -> Tensor:
        """``x``: ``(B, H, W, C)``; ``prompt``: ``(B, C, ⌈H/s⌉, ⌈W/s⌉)``, a callable making it from the
        normalised tokens ``LN(x)`` as ``(B, C, H, W)``, or ``None``.

        A prompt map of ``2C`` channels (an *additive* prompt module, beyond the paper) is split: the first
        ``C`` channels are the prompt tokens as above, the last ``C`` are added to the block's input tokens
        (the residual stream), each prompt pixel to the ``s × s`` tokens it covers, scaled by the prompt
        strength ``exp(prompt_logit)``."""
        b, h, w, c = x.shape
        s = self.prompt_stride
        normed: Optional[Tensor] = None
        adds_only = False  # an additive-only head: its map is added to the tokens, no prompt keys/values
        if prompt is not None and not isinstance(prompt, Tensor):
            adds_only = bool(getattr(prompt, "adds_only", False))
            normed = self.norm1(x)
            prompt = prompt(normed.permute(0, 3, 1, 2))
            if not isinstance(prompt, Tensor):
                raise TypeError(f"a prompt callable must return a tensor, got {type(prompt).__name__}")
        if prompt is not None:
            ph, pw = math.ceil(h / s), math.ceil(w / s)
            channels = (c,) if adds_only else (c, 2 * c)
            if prompt.shape[0] != b or prompt.shape[1] not in channels or tuple(prompt.shape[-2:]) != (ph, pw):
                raise ValueError(
                    f"prompt map of shape {tuple(prompt.shape)} does not fit a {h}x{w}x{c} block "
                    f"(expected ({b}, {c}, {ph}, {pw})" + (")" if adds_only else
                                                           f", or {2 * c} channels with an additive part)")
                )
            if adds_only:
                x = x + _added(prompt, s, h, w, prompt_logit).to(x.dtype)
                prompt, normed = None, None
            elif prompt.shape[1] == 2 * c:
                prompt, add = prompt[:, :c], prompt[:, c:]
                x = x + _added(add, s, h, w, prompt_logit).to(x.dtype)
                normed = None  # the tokens changed
        mask, masked, fwd, inv, pfwd = self._plan(h, w, prompt is not None, x.device)
        n = self.window * self.window
        tokens = (self.norm1(x) if normed is None else normed).reshape(b, h * w, c).index_select(1, fwd).reshape(b, -1, n, c)
        ptokens = None
        if prompt is not None:
            p = prompt.to(tokens.dtype).flatten(2).transpose(1, 2)  # (B, ph*pw, C)
            ptokens = p.index_select(1, pfwd).reshape(b, tokens.shape[1], -1, c)
        y = self.attn(tokens, mask=mask, prompts=ptokens, prompt_logit=prompt_logit, masked_windows=masked)
        y = y.reshape(b, -1, c).index_select(1, inv).reshape(b, h, w, c)
        if torch.is_grad_enabled() or self.training:
            x = x + self.drop_path(y)
            return x + self.drop_path(self.mlp(self.norm2(x)))
        x = y.add_(x)  # inference: no drop path; reuse the fresh buffers instead of allocating new maps
        return x.add_(self.mlp(self.norm2(x)))


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
        prompts: Optional[Sequence[Optional[PromptMap]]] = None,
        prompt_logit: Optional[float] = None,
    ) -> Tensor:
        if prompts is not None and len(prompts) != self.depth:
            raise ValueError(f"got {len(prompts)} prompt maps for a stage of {self.depth} blocks")
        y = x.permute(0, 2, 3, 1)
        for i, blk in enumerate(self.blocks):
            y = blk(y, None if prompts is None else prompts[i], prompt_logit)
        return y.permute(0, 3, 1, 2)
