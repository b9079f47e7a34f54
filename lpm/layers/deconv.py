"""Stride-2 transposed convolution with a CPU path whose output bits do not depend on the thread count.

:class:`Deconv` is the upsampling layer of the synthesis transforms: the same module, parameters and
initialisation as compressai's ``deconv(in, out, k)`` (``nn.ConvTranspose2d``, stride 2, padding ``k // 2``,
output padding 1, so ``H×W → 2H×2W``). Inside :func:`thread_invariant` on the CPU it computes the same
function another way:

* the output splits into four phases (even/odd row × even/odd column); each phase is a small correlation of
  the input with the taps of the kernel that land on it (for ``k = 5``: 3×3, 3×2, 2×3 and 2×2 taps, 25 in
  all, so no work is spent on zeros);
* each tap is one matrix product of the channels-last input, shifted by a whole number of rows of the padded
  image (a contiguous slice, nothing is copied), with the tap's ``Cin×Cout`` weights; the taps of a phase are
  added in a fixed order (``addmm_``), so the order of every sum is fixed by this code and by the matrix
  product's reduction over ``Cin``, which PyTorch's CPU BLAS does not split between threads.

Why (issue 11): with oneDNN, PyTorch's CPU convolutions pick their blocking, and with it the order of the
sums, from the thread count: the same stream decoded with 1 and 2 threads differed by 1 LSB in ~12 pixels
per Kodak image. Without oneDNN PyTorch's native transposed convolution is thread-invariant but 2.6–3.4× slower
than oneDNN on the two widest layers of the paper-size decoder (+9 % on a whole decode); this path is within
about 10–30 % of oneDNN on them, and a whole paper-size decode costs the same as with oneDNN
(``bench/determinism_cost.py``: +0.8 %, one thread). Narrow outputs (fewer than :data:`GEMM_MIN_OUT` channels, i.e. the last
layer to RGB) keep the native path, which is the faster one there and thread-invariant too.

Outside :func:`thread_invariant`, on a GPU, or when gradients are needed, :class:`Deconv` is exactly
``nn.ConvTranspose2d``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GEMM_MIN_OUT", "Deconv", "phase_taps", "thread_invariant"]

#: Outputs narrower than this keep PyTorch's native transposed convolution inside :func:`thread_invariant`
#: (a matrix product with 3 columns is slow: 0.5 s vs 0.06 s for the last layer of a paper-size decoder on a
#: 768×512 image, one thread).
GEMM_MIN_OUT = 16

_active = 0


@contextlib.contextmanager
def thread_invariant(enabled: bool = True) -> Iterator[None]:
    """Within the block, CPU convolutions give the same bits for any thread count: oneDNN (mkldnn) is off
    (PyTorch's native convolutions are used; ``torch.backends.mkldnn.flags`` would also reset its TF32
    setting and warn about Intel GPUs), and :class:`Deconv` layers use their phase/GEMM path. Restored
    after; ``enabled=False`` changes nothing. Not for use from several Python threads at once."""
    global _active
    if not enabled:
        yield
        return
    before = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    _active += 1
    try:
        yield
    finally:
        _active -= 1
        torch._C._set_mkldnn_enabled(before)


def phase_taps(kernel: int, phase: int) -> list[tuple[int, int]]:
    """``(kernel index, input offset)`` pairs of one output phase of a stride-2 transposed convolution with
    padding ``kernel // 2``: ``out[2m + phase] = Σ w[kh] · x[m + offset]`` (inputs outside the image are 0),
    offsets ascending."""
    p = kernel // 2
    taps = [(kh, (phase + p - kh) // 2) for kh in range(kernel) if (kh - phase - p) % 2 == 0]
    return sorted(taps, key=lambda t: t[1])


class Deconv(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d(cin, cout, k, stride=2, padding=k // 2, output_padding=1)`` (compressai's
    ``deconv``; same parameters and state-dict keys) with a thread-invariant CPU path, see the module doc."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5) -> None:
        if kernel_size % 2 != 1:
            raise ValueError(f"Deconv needs an odd kernel size, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, stride=2, output_padding=1,
                         padding=kernel_size // 2)

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:  # type: ignore[override]
        if (
            _active
            and output_size is None
            and x.device.type == "cpu"
            and x.dim() == 4
            and x.dtype in (torch.float32, torch.float64)
            and x.dtype == self.weight.dtype
            and self.out_channels >= GEMM_MIN_OUT
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
        ):
            return self._phase_gemm(x)
        return super().forward(x, output_size)

    def _phase_gemm(self, x: Tensor) -> Tensor:
        """The transposed convolution as 4 phases × (their taps) matrix products, see the module doc.
        Returns ``(B, Cout, 2H, 2W)`` in channels-last memory (what the next Swin stage reads)."""
        b, cin, h, w = x.shape
        if cin != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {cin}")
        k, cout = self.kernel_size[0], self.out_channels
        taps = [phase_taps(k, r) for r in (0, 1)]
        pad = max(max(abs(d) for _, d in t) for t in taps)
        hp, wp = h + 2 * pad, w + 2 * pad
        # channels-last padded input, flattened to rows of Cin: a shift by (dh, dw) is a contiguous slice
        flat = F.pad(x.permute(0, 2, 3, 1), (0, 0, pad, pad, pad, pad)).contiguous().view(b * hp * wp, cin)
        rows = (b - 1) * hp * wp + (h - 1) * wp + w  # output rows q = (n·hp + i)·wp + j, i < h, j < w
        weight = self.weight.permute(2, 3, 0, 1).contiguous()  # (k, k, Cin, Cout)
        bias = self.bias
        acc = x.new_empty(b * hp * wp, cout)
        acc[rows:].zero_()
        out = x.new_empty(b, h, 2, w, 2, cout)
        for r in (0, 1):
            for s in (0, 1):
                first = True
                for kh, dh in taps[r]:
                    for kw, dw in taps[s]:
                        start = (pad + dh) * wp + pad + dw
                        a, wt = flat[start : start + rows], weight[kh, kw]
                        if first:
                            if bias is None:
                                torch.mm(a, wt, out=acc[:rows])
                            else:
                                torch.addmm(bias, a, wt, out=acc[:rows])
                            first = False
                        else:
                            acc[:rows].addmm_(a, wt)
                out[:, :, r, :, s] = acc.view(b, hp, wp, cout)[:, :h, :w]
        return out.view(b, 2 * h, 2 * w, cout).permute(0, 3, 1, 2)
