"""Prompt networks: a light convolutional trunk with one small head per Swin layer it serves.

This is our reading of the paper's *Layer-adaptive* Prompt Module (the full text is not available; see the
README): one trunk per side extracts features from what that side has — the input image on the encoder
side, hidden features (the quantised latents ``ẑ`` and ``ŷ``) on the decoder side — and every Swin block of
the frozen codec gets its *own* head, so each layer receives prompts adapted to it.

Levels: a feature at level ``L`` has stride ``2**L`` relative to the (padded) image. The trunk starts at the
input's level and walks down (stride-2 convolutions) or up (nearest ×2 + convolution) to every level a
target needs::

    input (C_in, level L0) ─ stem ─► f[L0] ─ down/up ─► f[L0±1] ─ … ─► f[L_k]
                                        │                   │
                         heads: conv1x1 / conv3x3→conv1x1 per served Swin block → prompt map (dim, level)

:class:`HiddenPromptNet` is the other reading of "hidden features" (beyond our default, chosen per side with
``PromptConfig.enc_source`` / ``dec_source``): no trunk; every Swin block's prompt map is computed by its own
head from *that block's* normalised input tokens, so each layer is prompted from the features it steers::

    block input x (B, H, W, C) ─ LN (the block's own, frozen) ─ pad to even ─ conv2x2/2 (C→r) ─ GELU ─ conv1x1 (r→C)
                                                                                   → prompt map (C, ⌈H/2⌉, ⌈W/2⌉)

Its ``forward`` hands out the heads themselves (``{stage: [head per block]}``); the Swin block calls its head on
its tokens (:meth:`lpm.layers.swin.SwinBlock.forward` accepts a callable in place of a map).
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Callable, Union

from torch import Tensor, nn
import torch.nn.functional as F

__all__ = ["PromptTarget", "PromptNet", "HiddenPromptNet", "HiddenPromptHead", "PromptMap"]

#: What a Swin block accepts as its prompt: a map ``(B, C or 2C, ⌈H/s⌉, ⌈W/s⌉)``, or a callable that makes one
#: from the block's normalised tokens ``(B, C, H, W)`` (a :class:`HiddenPromptHead`, or a weighted mix of them).
PromptMap = Union[Tensor, Callable[[Tensor], Tensor]]


@dataclass(frozen=True)
class PromptTarget:
    """A Swin stage that receives prompts: its name, the level of its prompt map, width and depth."""

    name: str
    level: int
    dim: int
    depth: int


class _Up(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest")))


class PromptNet(nn.Module):
    """Trunk + per-layer heads producing prompt maps for a set of Swin stages.

    Args:
        in_channels: channels of the input (3 for the image, ``M`` for ``ŷ``, ``N`` for ``ẑ``).
        channels: trunk width.
        in_level: level of the input.
        targets: the stages to serve; all on one side of ``in_level`` (all ≥ or all ≤).
        head_hidden: if > 0, each head is conv3x3(channels→head_hidden)+GELU+conv1x1(→dim); else conv1x1.
        stem_kernel: kernel of the first convolution (1 keeps wide latent inputs cheap).
        head_init_scale: multiplies the initial weights of each head's last layer (small ⇒ gentle start).
        additive: each head makes ``2 * dim`` channels, prompt tokens and a map added to the block's tokens
            (see :meth:`lpm.layers.swin.SwinBlock.forward`; beyond the paper).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        in_level: int,
        targets: list[PromptTarget],
        head_hidden: int = 0,
        stem_kernel: int = 3,
        head_init_scale: float = 0.1,
        additive: bool = False,
    ) -> None:
        super().__init__()
        if not targets:
            raise ValueError("a PromptNet needs at least one target stage")
        levels = [t.level for t in targets]
        down = min(levels) >= in_level
        if not down and max(levels) > in_level:
            raise ValueError(f"targets at levels {levels} lie on both sides of the input level {in_level}")
        self.in_level = in_level
        self.targets = list(targets)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, stem_kernel, padding=stem_kernel // 2), nn.GELU())
        n_steps = (max(levels) - in_level) if down else (in_level - min(levels))
        self.direction = 1 if down else -1
        self.steps = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.GELU()) if down else _Up(channels)
            for _ in range(n_steps)
        )
        self.heads = nn.ModuleDict()
        for t in targets:
            heads = nn.ModuleList()
            out = t.dim * (2 if additive else 1)
            for _ in range(t.depth):
                if head_hidden > 0:
                    head = nn.Sequential(
                        nn.Conv2d(channels, head_hidden, 3, padding=1), nn.GELU(), nn.Conv2d(head_hidden, out, 1)
                    )
                else:
                    head = nn.Sequential(nn.Conv2d(channels, out, 1))
                last = head[-1]
                last.weight.data.mul_(head_init_scale)
                last.bias.data.zero_()
                if additive:
                    last.weight.data[t.dim:].zero_()  # the added maps start at zero: the tokens start unchanged
                heads.append(head)
            self.heads[t.name.replace(".", "_")] = heads

    def forward(self, x: Tensor) -> dict[str, list[Tensor]]:
        """Prompt maps ``{stage name: [map for block 0, map for block 1, ...]}``."""
        feats = {self.in_level: self.stem(x)}
        f, level = feats[self.in_level], self.in_level
        for step in self.steps:
            f = step(f)
            level += self.direction
            feats[level] = f
        return {t.name: [h(feats[t.level]) for h in self.heads[t.name.replace(".", "_")]] for t in self.targets}


class HiddenPromptHead(nn.Module):
    """One block's prompt head on its own tokens: ``(B, C, H, W)`` → ``(B, C·(2 if additive), ⌈H/s⌉, ⌈W/s⌉)``.

    ``conv s×s, stride s (C→width) ─ GELU ─ conv1x1 (width→out)``, the tokens padded on the bottom/right by
    edge replication to a multiple of ``s`` (the prompt stride) first. The last layer starts scaled by
    ``init_scale`` (and, for an additive head, with its added half at zero). ``kv=False`` (additive only):
    the head makes just the added map (``C`` channels, starting at zero) and no prompt keys/values."""

    def __init__(
        self, dim: int, width: int, stride: int = 2, init_scale: float = 0.1, additive: bool = False, kv: bool = True
    ) -> None:
        super().__init__()
        if not kv and not additive:
            raise ValueError("a prompt head without prompt keys/values must be additive")
        self.dim, self.stride = dim, stride
        #: True: the map it makes is only the part added to the tokens (no prompt keys/values); the Swin block
        #: reads this attribute of the callable it is given.
        self.adds_only = not kv
        self.reduce = nn.Conv2d(dim, width, stride, stride=stride)
        self.act = nn.GELU()
        self.out = nn.Conv2d(width, dim * (2 if additive and kv else 1), 1)
        self.out.weight.data.mul_(init_scale)
        self.out.bias.data.zero_()
        if additive:
            self.out.weight.data[dim if kv else 0:].zero_()  # the added maps start at zero

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 4 or tokens.shape[1] != self.dim:
            raise ValueError(f"a hidden prompt head for {self.dim} channels got tokens of shape {tuple(tokens.shape)}")
        s = self.stride
        ph, pw = (-tokens.shape[-2]) % s, (-tokens.shape[-1]) % s
        if ph or pw:
            tokens = F.pad(tokens, (0, pw, 0, ph), mode="replicate")
        return self.out(self.act(self.reduce(tokens)))


class HiddenPromptNet(nn.Module):
    """Per-block prompt heads fed by each block's own hidden features (see the module docstring).

    Args:
        width: each head's bottleneck channels.
        targets: the stages served (one head per block).
        stride: the prompt stride of those stages (the codec's ``prompt_stride``).
        init_scale, additive: as for :class:`PromptNet`.
        kv: ``False`` with ``additive``: the heads only add to the tokens (no prompt keys/values).

    ``forward(x=None)`` ignores its input (kept so that both nets answer the same call) and returns
    ``{stage name: [head for block 0, head for block 1, ...]}``: callables the blocks apply to their tokens.
    """

    def __init__(
        self,
        width: int,
        targets: list[PromptTarget],
        stride: int = 2,
        init_scale: float = 0.1,
        additive: bool = False,
        kv: bool = True,
    ) -> None:
        super().__init__()
        if not targets:
            raise ValueError("a HiddenPromptNet needs at least one target stage")
        self.targets = list(targets)
        self.heads = nn.ModuleDict(
            {
                t.name.replace(".", "_"): nn.ModuleList(
                    HiddenPromptHead(t.dim, width, stride, init_scale, additive, kv) for _ in range(t.depth)
                )
                for t in targets
            }
        )

    def forward(self, x: object = None) -> dict[str, list[HiddenPromptHead]]:
        return {t.name: list(self.heads[t.name.replace(".", "_")]) for t in self.targets}
