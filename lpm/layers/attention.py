"""Window self-attention that accepts per-window prompt tokens.

Data flow of one window (``N = w*w`` image tokens, ``P`` prompt tokens)::

    image tokens x (N, C) ──► q, k, v  = qkv(x)            (the base's frozen projections)
    prompt tokens p (P, C) ─► k_p, v_p = qkv_{k,v}(p)       (same projection, no query)
    attention:  softmax( q · [k ; k_p]ᵀ / √d  +  [B_rel ; g]  +  mask ) · [v ; v_p]

Queries come from image tokens only, so the output has exactly the image tokens' shape; the prompts only
add keys and values (this is how Kao et al., ICIP 2023, and TransTIC prompt a TIC codec, and how we read the
LPM paper's "feeds prompts as additional information into the Swin layers"). ``B_rel`` is the usual Swin
relative-position bias over image keys; prompt keys get no positional bias, only an optional scalar logit
offset ``g = log(strength)`` used to fade prompts in and out continuously (strength 1 → full prompts,
strength → 0 → exactly no prompts). With ``prompts=None`` the computation is the base window attention.

Attention probabilities of any layer can be captured for analysis with :func:`capture_attention`; when no
capture is active the layer runs the fused ``scaled_dot_product_attention`` and stores nothing.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import Tensor, nn

__all__ = ["WindowAttention", "capture_attention", "relative_position_index"]

#: Additive logit for keys a query must not see (other shift regions, padding). Finite, so that a query
#: row whose keys are all masked (possible only for padding queries, whose outputs are discarded) gives a
#: uniform distribution instead of NaN; exp(-1e4) underflows to exactly 0 in float32 and bfloat16.
MASK_VALUE = -1.0e4


def relative_position_index(window: int) -> Tensor:
    """Index into a ``(2w-1)^2`` bias table for every (query, key) pair of a ``w×w`` window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    coords = coords.flatten(1)  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N)
    rel = rel + (window - 1)
    return rel[0] * (2 * window - 1) + rel[1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows, with optional prompt keys/values.

    Args:
        dim: token channels ``C``.
        num_heads: attention heads (``C`` must be divisible by it).
        window: window side ``w``; a window holds ``w*w`` image tokens.
        qkv_bias: learn biases in the q/k/v projection.
        attn_drop, proj_drop: dropout rates (0 for compression).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.window = window
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        #: set by :func:`capture_attention`; ``None`` means "do not record" (the default, zero cost).
        self._capture: Optional[list] = None

    def relative_bias(self) -> Tensor:
        """Relative-position bias, ``(heads, N, N)``."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.reshape(n, n, self.num_heads).permute(2, 0, 1)

    def forward(
        self,
        x: Tensor,
        mask: Optional[Tensor] = None,
        prompts: Optional[Tensor] = None,
        prompt_logit: Optional[float] = None,
        masked_windows: Optional[Tensor] = None,
    ) -> Tensor:
        """Attend within windows.

        Args:
            x: image tokens ``(B, nW, N, C)`` (``nW`` windows per image).
            mask: additive mask ``(nW, N, N + P)`` (or ``(nW, N, N)`` without prompts); ``None`` = none.
            prompts: prompt tokens ``(B, nW, P, C)`` or ``None``.
            prompt_logit: scalar added to the logits of prompt keys (``log`` of the prompt strength).
            masked_windows: optional indices of the windows whose ``mask`` is not all zero (with a shift or
                padding, only windows at the bottom/right edge). Those are recomputed with the mask and all
                others use the shared position bias alone, so no ``(nW, heads, N, N+P)`` tensor is built.
        Returns:
            ``(B, nW, N, C)``.
        """
        b, nw, n, c = x.shape
        h, d = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(b * nw, n, 3, h, d).permute(2, 0, 3, 1, 4)  # (3, B*nW, h, N, d)
        q, k, v = qkv.unbind(0)
        bias = self.relative_bias().to(q.dtype)  # (h, N, N)
        if prompts is not None:
            p = prompts.shape[2]
            w_kv = self.qkv.weight[c:]
            b_kv = self.qkv.bias[c:] if self.qkv.bias is not None else None
            kv_p = F.linear(prompts, w_kv, b_kv).reshape(b * nw, p, 2, h, d).permute(2, 0, 3, 1, 4)
            k = torch.cat([k, kv_p[0]], dim=2)
            v = torch.cat([v, kv_p[1]], dim=2)
            pbias = bias.new_zeros(h, n, p) if prompt_logit is None else bias.new_full((h, n, p), prompt_logit)
            bias = torch.cat([bias, pbias], dim=2)  # (h, N, N+P)
        drop = self.attn_drop if self.training else 0.0
        if self._capture is not None:
            full = bias if mask is None else bias.unsqueeze(0) + mask.to(bias.dtype).unsqueeze(1)  # (nW|1, h, N, S)
            logits = (q * self.scale).reshape(b, nw, h, n, d) @ k.reshape(b, nw, h, -1, d).transpose(-2, -1)
            probs = (logits + full).softmax(dim=-1)
            self._capture.append(probs.detach())
            out = (probs @ v.reshape(b, nw, h, -1, d)).reshape(b * nw, h, n, d)
        elif mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0), dropout_p=drop)
        else:
            if masked_windows is None or masked_windows.numel() == nw:
                full = bias.unsqueeze(0) + mask.to(bias.dtype).unsqueeze(1)  # (nW, h, N, S)
                full = full.unsqueeze(0).expand(b, -1, -1, -1, -1).reshape(b * nw, h, n, -1)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=full, dropout_p=drop)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0), dropout_p=drop)
                sel = lambda t: t.reshape(b, nw, *t.shape[1:])[:, masked_windows].flatten(0, 1)  # noqa: E731
                nb = masked_windows.numel()
                sub = bias.unsqueeze(0) + mask[masked_windows].to(bias.dtype).unsqueeze(1)  # (nB, h, N, S)
                sub = sub.unsqueeze(0).expand(b, -1, -1, -1, -1).reshape(b * nb, h, n, -1)
                fixed = F.scaled_dot_product_attention(sel(q), sel(k), sel(v), attn_mask=sub, dropout_p=drop)
                out = out.reshape(b, nw, h, n, d).index_copy(1, masked_windows, fixed.reshape(b, nb, h, n, d))
                out = out.reshape(b * nw, h, n, d)
        out = out.transpose(1, 2).reshape(b, nw, n, c)
        return self.proj_drop(self.proj(out))


@contextlib.contextmanager
def capture_attention(*modules: nn.Module) -> Iterator[dict[str, list[Tensor]]]:
    """Record the attention probabilities of every :class:`WindowAttention` inside ``modules``.

    Yields a dict ``{qualified layer name: [probs, ...]}`` filled during the forward passes run inside the
    ``with`` block; each entry is ``(B, nW, heads, N, N + P)`` and sums to one over the last axis (keys:
    ``N`` image tokens of the window, then ``P`` prompt tokens). Outside the block nothing is recorded and
    the fused attention kernel is used.
    """
    records: dict[str, list[Tensor]] = {}
    layers = []
    for root in modules:
        for name, m in root.named_modules():
            if isinstance(m, WindowAttention):
                records.setdefault(name, [])
                m._capture = records[name]
                layers.append(m)
    try:
        yield records
    finally:
        for m in layers:
            m._capture = None
