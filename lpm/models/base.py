"""The base transformer codec: TIC-family analysis/synthesis with Swin stages and a Swin hyperprior.

Follows the TIC family (Lu et al., "Transformer-based Image Compression", DCC 2022; the backbone that Kao et
al., ICIP 2023, and TransTIC, ICCV 2023, prompt): strided convolutions change resolution, Swin stages
(window 8) transform features between them, the hyperprior has Swin stages with window 4, and ``y`` is
coded with a mean-scale Gaussian conditional (Minnen et al., NeurIPS 2018) through compressai's rANS coder.
Every stage can receive prompt maps, which is how :class:`lpm.models.PromptedCodec` steers it to other rates.

It is smaller than TIC's own layout (as in the TIC model of Kao et al.'s public code, NYCU-MAPL/
Transformer_VariableROI, ``compressai/models/tic_promptmodel.py``): there ``g_a`` and ``g_s`` have a fourth
Swin stage (depth 2, ``M`` channels, 16 heads) at stride 16, each hyper-transform two Swin stages (depth 2,
window 4, 16 heads) at strides 32 and 64, the convolutions between stages are 3×3 (5×5 only next to the
image), and stochastic depth is 0.1. Here ``g_a``/``g_s`` have three stages (strides 2, 4, 8), each
hyper-transform one (stride 32), every ``g_a``/``g_s`` convolution is 5×5, all stages have 8 heads and there is
no stochastic depth. Same ``N``, ``M``, windows, MLP ratio, depths 2-4-6 and entropy model.

Data flow (level ``L`` = stride ``2**L``; default depths in brackets)::

    x ─pad→64─► conv↓ ─[2]─ conv↓ ─[4]─ conv↓ ─[6]─ conv↓ ──► y (M, L4)
                   g_a stages at L1, L2, L3    (prompts: from the image, encoder side)
    y ─► conv↓ ─[2]─ conv↓ ──► z (N, L6) ──► EntropyBottleneck ──► ẑ        h_a, stage at L5 (window 4)
    ẑ ─► deconv↑ ─[2]─ deconv↑ ──► (scales, means) (L4)                     h_s, prompts from ẑ
    y ─► GaussianConditional(scales, means) ──► ŷ
    ŷ ─► deconv↑ ─[6]─ deconv↑ ─[4]─ deconv↑ ─[2]─ deconv↑ ─crop─► x̂        g_s stages at L3, L2, L1, prompts from ŷ

Any ``H×W`` is accepted: the image is padded (edge replication) to a multiple of 64 and the output cropped.

Large images (:meth:`TICCodec.compress` / :meth:`TICCodec.decompress`, not :meth:`~TICCodec.forward`) are
transformed in tiles so that memory stays bounded whatever the size: see :func:`tile_grid`. The file format
does not change; whether and how an image is tiled depends only on its (padded) size.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple, Optional, Protocol, Sequence

import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models import CompressionModel
from compressai.models.utils import conv
from torch import Tensor, nn

from lpm import entropy
from lpm.fileformat import TableMismatchError
from lpm.layers import PromptTarget, SwinStage
from lpm.layers.deconv import Deconv, thread_invariant

__all__ = [
    "CodecConfig", "CONFIG_LIMITS", "TICCodec", "PromptSource", "Transform", "STRIDE", "TILE", "TILE_HALO", "Tile",
    "Progress", "tile_spans", "tile_grid",
]

#: The image is padded to a multiple of this (4 stride-2 steps to ``y``, 2 more to ``z``).
STRIDE = 64
#: Stride of ``y`` (and ``ŷ``) relative to the padded image.
LATENT_STRIDE = 16

#: Tiled coding of large images (see :func:`tile_grid`): a padded side longer than ``TILE`` image pixels is cut
#: into ``ceil(side / TILE)`` near-equal tiles (multiples of :data:`STRIDE`), and every tile is transformed with
#: ``TILE_HALO`` pixels of context on each inner side (cropped off again). Fixed constants, never derived from
#: the machine, so every machine codes and decodes a file the same way. Images whose padded sides are both at
#: most ``TILE`` (Kodak, 768×512, and anything up to 1024×1024) take the whole-image path, bit for bit.
#: ``TILE`` bounds the peak memory (a tile with its halo is at most 1408×1408 pixels: about 2.8 GB at paper
#: size on a CPU, see :mod:`lpm.limits`) and ``TILE_HALO`` the difference to whole-image transforms.
TILE = 1024
#: Context around each tile, image pixels (a multiple of :data:`STRIDE`: tile origins then keep the Swin
#: window grids of every stage, shifted ones included, and the prompt maps at stride 64 aligned). Chosen by
#: measurement (Kodak, forced 256-pixel tiles, the same stream decoded tiled and whole, before 8-bit rounding):
#: untrained paper-size codec 30 / 4.3 / 0.22 / 0.003 LSB at most with halos of 64 / 128 / 192 / 256 pixels;
#: the tiny-smoke checkpoint 0.005 LSB with 128 and 0 with 192 (all 24 images). 192 keeps it below half an
#: LSB at 1.7× the transform work of a 24-megapixel photo (256 would take 2×).
TILE_HALO = 192

#: ``progress(done, total)``: called after each tile of a transform (``done`` = 1 … ``total``).
Progress = Callable[[int, int], None]

#: Decode on the CPU inside :func:`lpm.layers.deconv.thread_invariant` (the synthesis and the decoder-side
#: prompt nets): oneDNN off and the :class:`~lpm.layers.deconv.Deconv` layers as fixed-order matrix products,
#: so the decoded image is the same bits for any thread count (with oneDNN, ≤1-LSB differences in ~12 pixels
#: per Kodak image were measured between 1 and 2 threads). ``bench/determinism_cost.py`` measures the cost.
THREAD_INVARIANT_SYNTHESIS = True


class PromptSource(Protocol):
    """What the codec asks for prompts. ``None`` values mean "no prompts for that side"."""

    prompt_logit: Optional[float]

    def encoder(self, x: Tensor) -> Optional[dict[str, list[Tensor]]]: ...

    def hyper_decoder(self, z_hat: Tensor) -> Optional[dict[str, list[Tensor]]]: ...

    def exact_hyper_decoder(self, z_hat: Tensor) -> Optional[dict[str, list[Tensor]]]:
        """:meth:`hyper_decoder` evaluated on float64 CPU copies of its nets (``z_hat`` is float64 on the CPU;
        see :func:`lpm.entropy.cpu_float64`): what the entropy tables are derived from at both ends."""
        ...

    def decoder(self, y_hat: Tensor) -> Optional[dict[str, list[Tensor]]]: ...

    def latent_log_gain(self) -> Optional[Tensor]:
        """Optional per-channel log-gain ``g``, ``(M,)`` or per image ``(B, M)``, on ``y`` before the
        hyper-analysis and quantisation (coded as ``y·e^g``)."""
        ...

    def latent_log_inv_gain(self) -> Optional[Tensor]:
        """Optional log-gain ``g'`` on ``ŷ`` before the synthesis (decoded as ``ŷ·e^g'``); a source without
        this method gets ``g' = -g`` (symmetric gains)."""
        ...


#: Bounds every :class:`CodecConfig` is checked against (inclusive), so that a config read from a file
#: cannot ask for a giant or broken model: channels ``N``, ``M``; Swin blocks per stage; attention heads
#: (they must also divide ``N``); window sides (their ``window**4`` index tables are built per block);
#: convolution kernels (odd); the prompt-map stride, 1 or 2 (a stage at stride ``2**L`` gets prompt maps at
#: ``2**L · prompt_stride``; the hyper-transforms' stages sit at 32, so 2 keeps every map on the 64-pixel padding
#: grid the tiling stitches on; it must also divide the window and, in stages of two or more blocks, the shift
#: ``window // 2``).
CONFIG_LIMITS: dict[str, tuple[int, int]] = {
    "channels": (1, 1024),
    "depth": (0, 64),
    "heads": (1, 64),
    "window": (1, 32),
    "kernel": (1, 15),
    "prompt_stride": (1, 2),
}
#: ``mlp_ratio`` lies in ``(0, MAX_MLP_RATIO]``; ``drop_path`` in ``[0, 1)``.
MAX_MLP_RATIO = 16.0


def _int_in(name: str, value: Any, lo: int, hi: int) -> int:
    """``value`` if it is an integer (not a bool) in ``[lo, hi]``, else ``ValueError`` naming ``name``."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {value!r:.40}")
    return int(value)


def config_from_dict(cls: Any, d: Any, what: str) -> Any:
    """``cls(**d)`` for a dataclass config read from JSON/YAML: ``ValueError`` (naming ``what``) for a
    non-mapping or unknown keys; the class's own ``__post_init__`` checks the values."""
    if not isinstance(d, dict):
        raise ValueError(f"a {what} config must be a mapping, got {type(d).__name__}")
    unknown = set(d) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {what} config keys: {sorted(map(str, unknown))[:10]}")
    return cls(**d)


def _real(name: str, value: Any) -> float:
    """``value`` as a finite float if it is a real number (not a bool), else ``ValueError`` naming ``name``."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r:.40}")
    return float(value)


@dataclass
class CodecConfig:
    """Every size setting of :class:`TICCodec` (defaults: TIC/Kao et al. widths N=128, M=192; fewer Swin stages
    than TIC, see the module docstring).

    Checked on construction against :data:`CONFIG_LIMITS` (``ValueError``)."""

    N: int = 128
    M: int = 192
    enc_depths: Sequence[int] = (2, 4, 6)
    dec_depths: Sequence[int] = (6, 4, 2)
    enc_heads: Sequence[int] = (8, 8, 8)
    dec_heads: Sequence[int] = (8, 8, 8)
    hyper_depth: int = 2
    hyper_heads: int = 8
    window: int = 8
    hyper_window: int = 4
    mlp_ratio: float = 2.0
    kernel: int = 5
    hyper_kernel: int = 3
    drop_path: float = 0.0
    prompt_stride: int = 2

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in d.items()}

    def __post_init__(self) -> None:
        lim = CONFIG_LIMITS
        for name in ("N", "M"):
            _int_in(f"codec config {name}", getattr(self, name), *lim["channels"])
        stages = []  # (name, depth, heads, window) of the eight Swin stages
        for part in ("enc", "dec"):
            depths, heads = getattr(self, f"{part}_depths"), getattr(self, f"{part}_heads")
            for name, seq in ((f"{part}_depths", depths), (f"{part}_heads", heads)):
                if not isinstance(seq, (list, tuple)) or len(seq) != 3:
                    raise ValueError(f"codec config {name} must be a list of 3 integers (stages at strides 2, 4, 8), "
                                     f"got {seq!r:.60}")
            stages += [(f"{part}[{i}]", d, h, self.window) for i, (d, h) in enumerate(zip(depths, heads))]
        stages += [("hyper", self.hyper_depth, self.hyper_heads, self.hyper_window)] * 2
        _int_in("codec config prompt_stride", self.prompt_stride, *lim["prompt_stride"])
        for name in ("window", "hyper_window"):
            w = _int_in(f"codec config {name}", getattr(self, name), *lim["window"])
            if w % self.prompt_stride:
                raise ValueError(f"codec config {name}={w} is not a multiple of prompt_stride={self.prompt_stride}")
        for name, depth, heads, window in stages:
            _int_in(f"codec config depth of stage {name}", depth, *lim["depth"])
            _int_in(f"codec config heads of stage {name}", heads, *lim["heads"])
            if self.N % heads:
                raise ValueError(f"codec config: {heads} heads of stage {name} do not divide N={self.N}")
            if depth >= 2 and (window // 2) % self.prompt_stride:
                raise ValueError(f"codec config: the shift {window // 2} of stage {name} (window {window}) is not a "
                                 f"multiple of prompt_stride={self.prompt_stride}")
        for name in ("kernel", "hyper_kernel"):
            if _int_in(f"codec config {name}", getattr(self, name), *lim["kernel"]) % 2 == 0:
                raise ValueError(f"codec config {name} must be odd, got {getattr(self, name)}")
        ratio = _real("codec config mlp_ratio", self.mlp_ratio)
        if not 0 < ratio <= MAX_MLP_RATIO or int(self.N * ratio) < 1:
            raise ValueError(f"codec config mlp_ratio must be in (0, {MAX_MLP_RATIO:g}] with N*mlp_ratio >= 1, "
                             f"got {ratio}")
        if not 0 <= _real("codec config drop_path", self.drop_path) < 1:
            raise ValueError(f"codec config drop_path must be in [0, 1), got {self.drop_path}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CodecConfig":
        """A config from :meth:`to_dict` output (e.g. parsed JSON); ``ValueError`` for anything else."""
        if not isinstance(d, dict):
            raise ValueError(f"a codec config must be a mapping, got {type(d).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown codec config keys: {sorted(map(str, unknown))[:10]}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class Transform(nn.Module):
    """A sequence of convolutions and :class:`SwinStage` s; stage ``i`` is addressed as ``f"{name}.{i}"``."""

    def __init__(self, name: str, layers: list[nn.Module], levels: list[int], prompt_stride: int = 2) -> None:
        super().__init__()
        up = prompt_stride.bit_length() - 1  # prompt maps sit this many levels below their stage (1 or 2: CodecConfig)
        self.name = name
        self.layers = nn.ModuleList(layers)
        self.stage_names: dict[int, str] = {}
        self.targets: list[PromptTarget] = []
        for idx, (layer, level) in enumerate(zip(layers, levels)):
            if isinstance(layer, SwinStage):
                sname = f"{name}.{len(self.targets)}"
                self.stage_names[idx] = sname
                self.targets.append(PromptTarget(sname, level + up, layer.dim, layer.depth))

    def forward(
        self, x: Tensor, prompts: Optional[dict[str, list[Tensor]]] = None, prompt_logit: Optional[float] = None
    ) -> Tensor:
        for idx, layer in enumerate(self.layers):
            if idx in self.stage_names:
                p = prompts.get(self.stage_names[idx]) if prompts else None
                x = layer(x, p, prompt_logit)
            else:
                x = layer(x)
        return x


def _channel_scale(log_gain: Tensor, like: Tensor) -> Tensor:
    """``e^g`` shaped to multiply ``like`` ``(B, M, H, W)``: ``g`` is ``(M,)`` (all images) or ``(B, M)``."""
    g = log_gain.exp().to(like.dtype)
    return g.view(1, -1, 1, 1) if g.dim() == 1 else g.view(*g.shape, 1, 1)


class Tile(NamedTuple):
    """One tile of the padded image, in image pixels: rows ``y0:y1`` and columns ``x0:x1`` are its own, and
    ``ey0:ey1``, ``ex0:ex1`` the same with the halo (clipped to the image) that the transforms see."""

    y0: int
    y1: int
    x0: int
    x1: int
    ey0: int
    ey1: int
    ex0: int
    ex1: int


def tile_spans(length: int, tile: Optional[int] = None, halo: Optional[int] = None) -> list[tuple[int, int, int, int]]:
    """One side of :func:`tile_grid`: ``[(start, end, ext_start, ext_end), ...]`` covering ``0:L`` once, where
    ``L`` is ``length`` rounded up to :data:`STRIDE`.

    ``ceil(L / tile)`` spans of near-equal size (multiples of :data:`STRIDE`, the first ones one step longer
    when it does not divide), each extended by ``halo`` on both sides and clipped to ``0:L``. Defaults:
    :data:`TILE`, :data:`TILE_HALO`."""
    tile = TILE if tile is None else tile
    halo = TILE_HALO if halo is None else halo
    if tile < STRIDE or tile % STRIDE or halo < 0 or halo % STRIDE:
        raise ValueError(f"tile ({tile}) must be a positive and halo ({halo}) a non-negative multiple of {STRIDE}")
    if length < 1:
        raise ValueError(f"length must be positive, got {length}")
    units, per = -(-length // STRIDE), tile // STRIDE
    n = -(-units // per)
    base, extra = divmod(units, n)
    spans, pos = [], 0
    for i in range(n):
        size = (base + (i < extra)) * STRIDE
        end = pos + size
        spans.append((pos, end, max(0, pos - halo), min(units * STRIDE, end + halo)))
        pos = end
    return spans


def tile_grid(height: int, width: int, tile: Optional[int] = None, halo: Optional[int] = None) -> list[Tile]:
    """The tiles (row-major) in which :meth:`TICCodec.compress`/``decompress`` transform an ``H×W`` image.

    Depends on the size alone (and the fixed :data:`TILE`, :data:`TILE_HALO`): sides are padded to
    :data:`STRIDE` and each is cut by :func:`tile_spans`. One tile (the whole padded image, no halo) means the
    whole-image path. Tiles cover the padded image exactly once."""
    rows = tile_spans(height, tile, halo)
    cols = tile_spans(width, tile, halo)
    return [Tile(r[0], r[1], c[0], c[1], r[2], r[3], c[2], c[3]) for r in rows for c in cols]


def _centre(t: Tile, factor: int) -> tuple[slice, slice, slice, slice]:
    """Slices of tile ``t``'s own region at ``factor`` times the image stride: in the full map and in the
    tile's (halo-extended) map."""
    if any(v % factor for v in t):
        raise ValueError(f"tile {tuple(t)} is not aligned to stride {factor}")
    y0, y1, x0, x1, ey0, _, ex0, _ = (v // factor for v in t)
    return slice(y0, y1), slice(x0, x1), slice(y0 - ey0, y1 - ey0), slice(x0 - ex0, x1 - ex0)


def _stages(dim: int, depths: Sequence[int], heads: Sequence[int], window: int, cfg: CodecConfig) -> list[SwinStage]:
    return [
        SwinStage(dim, d, h, window, cfg.mlp_ratio, cfg.drop_path, cfg.prompt_stride) for d, h in zip(depths, heads)
    ]


class TICCodec(CompressionModel):
    """TIC-family transformer codec (see module docstring). Construct with keyword sizes or a config.

    ``TICCodec()`` is the default N=128, M=192 model (~7.5 M parameters); ``TICCodec(N=16, M=24, ...)``
    gives test-sized models. All methods accept an optional :class:`PromptSource`; without one they are the
    plain base codec.

    Returns follow compressai: ``forward -> {"x_hat", "likelihoods": {"y", "z"}}``,
    ``compress -> {"strings": [y_strings, z_strings], "shape": z_hw}``, ``decompress -> {"x_hat"}``.
    """

    def __init__(self, config: Optional[CodecConfig] = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = config or CodecConfig()
        if kwargs:
            cfg = CodecConfig(**{**cfg.to_dict(), **kwargs})
        if len(cfg.enc_depths) != 3 or len(cfg.dec_depths) != 3:
            raise ValueError("enc_depths and dec_depths need 3 entries (stages at strides 2, 4, 8)")
        self.config = cfg
        N, M, k, hk = cfg.N, cfg.M, cfg.kernel, cfg.hyper_kernel
        ea, eb, ec = _stages(N, cfg.enc_depths, cfg.enc_heads, cfg.window, cfg)
        self.g_a = Transform(
            "g_a",
            [conv(3, N, k), ea, conv(N, N, k), eb, conv(N, N, k), ec, conv(N, M, k)],
            [1, 1, 2, 2, 3, 3, 4],
            cfg.prompt_stride,
        )
        da, db, dc = _stages(N, cfg.dec_depths, cfg.dec_heads, cfg.window, cfg)
        self.g_s = Transform(
            "g_s",
            [Deconv(M, N, k), da, Deconv(N, N, k), db, Deconv(N, N, k), dc, Deconv(N, 3, k)],
            [3, 3, 2, 2, 1, 1, 0],
            cfg.prompt_stride,
        )
        (ha,) = _stages(N, [cfg.hyper_depth], [cfg.hyper_heads], cfg.hyper_window, cfg)
        self.h_a = Transform("h_a", [conv(M, N, hk), ha, conv(N, N, hk)], [5, 5, 6], cfg.prompt_stride)
        (hs,) = _stages(N, [cfg.hyper_depth], [cfg.hyper_heads], cfg.hyper_window, cfg)
        self.h_s = Transform("h_s", [Deconv(N, N, hk), hs, Deconv(N, 2 * M, hk)], [5, 5, 4], cfg.prompt_stride)
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None)

    # ------------------------------------------------------------------ layout for prompt modules
    def with_prompt_stride(self, stride: int) -> "TICCodec":
        """A copy with another ``prompt_stride`` (1 or 2) and the same weights, buffers and entropy tables: the
        base has no prompt parameters, the stride only lays out the prompt maps, so the copy codes the base
        rate bit for bit. ``ValueError`` if the windows do not allow the stride."""
        copy = TICCodec(CodecConfig.from_dict({**self.config.to_dict(), "prompt_stride": stride}))
        copy.load_state_dict(self.state_dict())
        ref = next(self.parameters())
        return copy.to(device=ref.device, dtype=ref.dtype).train(self.training).requires_grad_(ref.requires_grad)

    def prompt_targets(self) -> dict[str, list[PromptTarget]]:
        """Stages that accept prompts, grouped by who can compute them: ``encoder`` (sees the image),
        ``hyper_decoder`` (sees ẑ) and ``decoder`` (sees ŷ)."""
        return {
            "encoder": self.g_a.targets + self.h_a.targets,
            "hyper_decoder": self.h_s.targets,
            "decoder": self.g_s.targets,
        }

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def pad(x: Tensor) -> Tensor:
        """Pad ``(B, 3, H, W)`` on the bottom/right to a multiple of :data:`STRIDE` by edge replication."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % STRIDE, (-w) % STRIDE
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return x

    def _analysis(
        self, x: Tensor, src: Optional[PromptSource], tiled: bool = False, progress: Optional[Progress] = None
    ) -> tuple[Tensor, Tensor]:
        """``(y, z)`` of a padded batch. ``tiled=True`` (:meth:`compress`): when :func:`tile_grid` cuts the image,
        ``g_a`` and the encoder prompt net run per tile with its halo and the tiles' centres of ``y`` and of
        the hyper-analysis prompt maps are stitched, so ``h_a`` runs once on the whole ``y``."""
        logit = src.prompt_logit if src is not None else None
        tiles = tile_grid(*x.shape[-2:]) if tiled else []
        if len(tiles) > 1:
            y, prompts = self._analysis_tiles(x, src, tiles, progress)
        else:
            prompts = src.encoder(x) if src is not None else None
            y = self.g_a(x, prompts, logit)
            if progress is not None:
                progress(1, 1)
        gain = self._gain(src, inverse=False)
        if gain is not None:
            y = y * _channel_scale(gain, y)
        z = self.h_a(y, prompts, logit)
        return y, z

    def _analysis_tiles(
        self, x: Tensor, src: Optional[PromptSource], tiles: list[Tile], progress: Optional[Progress]
    ) -> tuple[Tensor, Optional[dict[str, list[Tensor]]]]:
        """``y`` and the stitched ``h_a`` prompt maps from ``g_a`` (and ``src.encoder``) run tile by tile."""
        logit = src.prompt_logit if src is not None else None
        levels = {t.name: t.level for t in self.h_a.targets}
        y: Optional[Tensor] = None
        hyper: Optional[dict[str, list[Tensor]]] = None
        for i, t in enumerate(tiles):
            xt = x[..., t.ey0 : t.ey1, t.ex0 : t.ex1]
            prompts = src.encoder(xt) if src is not None else None
            yt = self.g_a(xt, prompts, logit)
            if y is None:
                y = yt.new_empty(*yt.shape[:2], x.shape[-2] // LATENT_STRIDE, x.shape[-1] // LATENT_STRIDE)
            ry, rx, cy, cx = _centre(t, LATENT_STRIDE)
            y[..., ry, rx] = yt[..., cy, cx]
            if prompts is not None:
                if hyper is None:
                    hyper = {}
                for name, maps in prompts.items():
                    if name not in levels or maps is None:
                        continue
                    if not all(isinstance(m, Tensor) for m in maps):
                        hyper[name] = list(maps)  # heads on h_a's own tokens: they run once, on the whole y
                        continue
                    f = 2 ** levels[name]
                    ry, rx, cy, cx = _centre(t, f)
                    dst = hyper.setdefault(name, [m.new_empty(*m.shape[:2], x.shape[-2] // f, x.shape[-1] // f)
                                                  for m in maps])
                    for d, m in zip(dst, maps):
                        if tuple(m.shape[-2:]) != ((t.ey1 - t.ey0) // f, (t.ex1 - t.ex0) // f):
                            raise ValueError(f"prompt map {name} of shape {tuple(m.shape)} is not at stride {f}")
                        d[..., ry, rx] = m[..., cy, cx]
            del xt, prompts, yt
            if progress is not None:
                progress(i + 1, len(tiles))
        assert y is not None
        return y, hyper

    @staticmethod
    def _gain(src: Optional[PromptSource], inverse: bool) -> Optional[Tensor]:
        """The source's log-gain on ``y`` (``inverse=False``) or on ``ŷ`` (``inverse=True``), or None."""
        if src is None:
            return None
        fn = getattr(src, "latent_log_gain", None)
        gain = fn() if fn is not None else None
        if not inverse:
            return gain
        inv = getattr(src, "latent_log_inv_gain", None)
        if inv is not None:
            return inv()
        return None if gain is None else -gain

    def _params(self, z_hat: Tensor, src: Optional[PromptSource]) -> tuple[Tensor, Tensor]:
        logit = src.prompt_logit if src is not None else None
        prompts = src.hyper_decoder(z_hat) if src is not None else None
        scales, means = self.h_s(z_hat, prompts, logit).chunk(2, 1)
        return scales, means

    def _synthesis(
        self, y_hat: Tensor, src: Optional[PromptSource], tiled: bool = False, progress: Optional[Progress] = None
    ) -> Tensor:
        """``x̂`` (padded size) from ``ŷ``. ``tiled=True`` (:meth:`decompress`): when :func:`tile_grid` cuts the
        image, the decoder prompt net and ``g_s`` run per tile with its halo and the tiles' centres are
        written into one preallocated output."""
        logit = src.prompt_logit if src is not None else None
        gain = self._gain(src, inverse=True)
        if gain is not None:
            y_hat = y_hat * _channel_scale(gain, y_hat)
        tiles = tile_grid(y_hat.shape[-2] * LATENT_STRIDE, y_hat.shape[-1] * LATENT_STRIDE) if tiled else []
        if len(tiles) <= 1:
            prompts = src.decoder(y_hat) if src is not None else None
            x_hat = self.g_s(y_hat, prompts, logit)
            if progress is not None:
                progress(1, 1)
            return x_hat
        out: Optional[Tensor] = None
        s = LATENT_STRIDE
        for i, t in enumerate(tiles):
            yt = y_hat[..., t.ey0 // s : t.ey1 // s, t.ex0 // s : t.ex1 // s].contiguous()
            prompts = src.decoder(yt) if src is not None else None
            xt = self.g_s(yt, prompts, logit)
            if out is None:
                out = xt.new_empty(*xt.shape[:2], y_hat.shape[-2] * s, y_hat.shape[-1] * s)
            ry, rx, cy, cx = _centre(t, 1)
            out[..., ry, rx] = xt[..., cy, cx]
            del yt, prompts, xt
            if progress is not None:
                progress(i + 1, len(tiles))
        assert out is not None
        return out

    # ------------------------------------------------------------------ compressai API
    def forward(self, x: Tensor, prompts: Optional[PromptSource] = None) -> dict[str, Any]:
        """Training/evaluation pass. In training mode ``y`` gets uniform noise for the likelihoods and a
        straight-through rounding for the synthesis (and the decoder-side prompts); in eval mode both use
        the rounded latents exactly as the bitstream path does. Under mixed-precision autocast the
        entropy models run in float32 (likelihoods and their logs need it)."""
        h, w = x.shape[-2:]
        xp = self.pad(x)
        y, z = self._analysis(xp, prompts)
        y, z = y.float(), z.float()
        with torch.autocast(x.device.type, enabled=False):
            z_hat, z_likelihoods = self.entropy_bottleneck(z)
        scales, means = self._params(z_hat, prompts)
        scales, means = scales.float(), means.float()
        with torch.autocast(x.device.type, enabled=False):
            _, y_likelihoods = self.gaussian_conditional(y, scales, means=means)
        if self.training:
            y_hat = y + (torch.round(y - means) + means - y).detach()
        else:
            y_hat = torch.round(y - means) + means
        x_hat = self._synthesis(y_hat, prompts)[..., :h, :w]
        return {"x_hat": x_hat, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    def entropy_tables(
        self, z_hat: Tensor, prompts: Optional[PromptSource] = None, exact: bool = True
    ) -> tuple[Tensor, Tensor]:
        """The Gaussian conditional's table indexes (int32) and means (float32) for y, given ẑ.

        ``exact=True`` (what :meth:`compress` and :meth:`decompress` use): the hyper-synthesis ``h_s`` and the
        prompt source's hyper-decoder prompts are evaluated on float64 copies on the CPU
        (:func:`lpm.entropy.cpu_float64`), cast to float32, and the scales mapped to tables on the CPU, so that
        encoder and decoder derive the same tables whatever device, precision or thread count runs the big
        transforms (float64 differences would have to be ~10⁻⁷ relative to move an index as often as one
        float32 ulp does). Both tensors are on the CPU. ``exact=False``: the float32 path of lpm 0.1 (``h_s``
        on the model's device), kept to decode ``.lpm`` version 1 files; tensors on the model's device.
        """
        gc = self.gaussian_conditional
        if not exact:
            scales, means = self._params(z_hat, prompts)
            return gc.build_indexes(scales), means
        z64 = z_hat.detach().to("cpu", torch.float64)
        hyper = None
        if prompts is not None:
            fn = getattr(prompts, "exact_hyper_decoder", None)
            if fn is None:
                raise TypeError(f"{type(prompts).__name__} has no exact_hyper_decoder(): the entropy tables cannot be "
                                "computed the same way at both ends")
            hyper = fn(z64)
        logit = prompts.prompt_logit if prompts is not None else None
        with torch.autocast("cpu", enabled=False):
            scales, means = entropy.cpu_float64(self.h_s)(z64, hyper, logit).float().chunk(2, 1)
        table = gc.scale_table.detach().to("cpu", torch.float32)
        scales = torch.maximum(scales, gc.lower_bound_scale.bound.detach().to("cpu", torch.float32))
        # compressai's build_indexes, as one exact comparison: index = #{i < T-1 : table[i] < scale}
        indexes = torch.bucketize(scales.contiguous(), table[:-1]).to(torch.int32)
        return indexes, means.contiguous()

    @torch.no_grad()
    def compress(
        self, x: Tensor, prompts: Optional[PromptSource] = None, progress: Optional[Progress] = None
    ) -> dict[str, Any]:
        """Entropy-code a batch ``(B, 3, H, W)`` in [0, 1]; ``update()`` must have been called.

        Returns compressai's ``{"strings", "shape"}`` plus ``"table_checks"``: per image the
        :func:`lpm.entropy.table_check` of its table indexes (see :meth:`entropy_tables`), which
        :meth:`decompress` compares before decoding.

        Images that :func:`tile_grid` cuts are analysed tile by tile (bounded memory; ``y`` differs slightly
        from the whole-image transform near tile borders, the stream is as valid); ``progress(done, total)``
        is called after each tile (once for an image coded whole)."""
        xp = self.pad(x)
        y, z = self._analysis(xp, prompts, tiled=True, progress=progress)
        z_strings = entropy.encode_bottleneck(self.entropy_bottleneck, z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        indexes, means = self.entropy_tables(z_hat, prompts)
        y_strings = entropy.encode_gaussian(self.gaussian_conditional, y, indexes, means.to(y.device))
        checks = [entropy.table_check(i) for i in indexes]
        return {"strings": [y_strings, z_strings], "shape": tuple(z.shape[-2:]), "table_checks": checks}

    @torch.no_grad()
    def decompress(
        self,
        strings: list[list[bytes]],
        shape: Sequence[int],
        prompts: Optional[PromptSource] = None,
        size: Optional[Sequence[int]] = None,
        table_checks: Optional[Sequence[int]] = None,
        exact: bool = True,
        progress: Optional[Progress] = None,
    ) -> dict[str, Tensor]:
        """Decode ``strings`` (as returned by :meth:`compress`); ``size=(H, W)`` crops the padding.

        Images that :func:`tile_grid` cuts (decided from ``shape`` alone) are synthesised tile by tile, each
        with :data:`TILE_HALO` pixels of context, into one output (bounded memory; not bit-identical to a
        whole-image synthesis, see :data:`TILE`); ``progress(done, total)`` is called after each tile (once
        for an image decoded whole).

        ``table_checks`` (from :meth:`compress`; ``None`` skips the check): the tables derived here must have
        the same :func:`lpm.entropy.table_check`, or :class:`lpm.fileformat.TableMismatchError` is raised
        before anything is entropy-decoded. ``exact=False`` uses the float32 table path of ``.lpm`` version 1
        (see :meth:`entropy_tables`).

        Entropy decoding goes through :mod:`lpm.entropy`, never straight to compressai's unchecked rANS
        decoder: strings too short for the latent ``shape`` claims are refused before anything is
        allocated, the decoder cannot read past a string, and a string that is not exactly what the encoder
        writes is refused (all one-line :class:`lpm.fileformat.BitstreamError`). Whatever the bytes, the
        output is deterministic (non-finite synthesis values, from absurd but well-formed latents, become 0).
        On the CPU the synthesis runs inside :func:`lpm.layers.deconv.thread_invariant`
        (:data:`THREAD_INVARIANT_SYNTHESIS`), which makes the decoded image the same bits for any number of
        threads.
        """
        if not isinstance(strings, (list, tuple)) or len(strings) != 2:
            raise ValueError("expected strings = [y_strings, z_strings]")
        y_strings, z_strings = strings
        shape = tuple(shape)
        gc = self.gaussian_conditional
        entropy.check_strings(self.entropy_bottleneck, gc, y_strings, z_strings, shape, self.config.M)
        z_hat = entropy.decode_bottleneck(self.entropy_bottleneck, z_strings, shape)
        indexes, means = self.entropy_tables(z_hat, prompts, exact)
        if table_checks is not None:
            if len(table_checks) != indexes.shape[0]:
                raise ValueError(f"{len(table_checks)} table checks for {indexes.shape[0]} images")
            for stored, idx in zip(table_checks, indexes):
                computed = entropy.table_check(idx)
                if int(stored) != computed:
                    raise TableMismatchError(int(stored), computed)
        y_hat = entropy.decode_gaussian(gc, y_strings, indexes, means)
        device = self.g_s.layers[0].weight.device
        y_hat = y_hat.to(device)
        with thread_invariant(enabled=THREAD_INVARIANT_SYNTHESIS and device.type == "cpu"):
            x_hat = self._synthesis(y_hat, prompts, tiled=True, progress=progress).nan_to_num_(0.0).clamp_(0, 1)
        if size is not None:
            x_hat = x_hat[..., : size[0], : size[1]]
        return {"x_hat": x_hat}

    # ------------------------------------------------------------------ bookkeeping
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @staticmethod
    def latent_shape(height: int, width: int) -> tuple[int, int]:
        """Shape of ``z`` for an ``H×W`` image."""
        return math.ceil(height / STRIDE), math.ceil(width / STRIDE)
