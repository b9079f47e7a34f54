"""lpm.layers.deconv: the synthesis' upsampling layer and its thread-invariant CPU path (issue 11)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from compressai.models.utils import deconv as compressai_deconv
from torch import nn

from lpm.layers.deconv import GEMM_MIN_OUT, Deconv, phase_taps, thread_invariant


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _reference(m: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """The transposed convolution in float64 (the layer's own parameters, oneDNN's path irrelevant)."""
    b = None if m.bias is None else m.bias.double()
    return F.conv_transpose2d(x.double(), m.weight.double(), b, stride=2, padding=m.padding, output_padding=1)


@pytest.mark.parametrize("k", [3, 5, 7])
def test_phase_taps_cover_the_kernel_once(k):
    both = phase_taps(k, 0) + phase_taps(k, 1)
    assert sorted(kh for kh, _ in both) == list(range(k))
    for phase in (0, 1):
        # out[2m + phase] receives w[kh] * x[i] exactly when 2i - k//2 + kh == 2m + phase
        for kh, d in phase_taps(k, phase):
            assert 2 * d - k // 2 + kh == phase


@pytest.mark.parametrize(
    "b, cin, cout, k, h, w, dtype, bias",
    [
        (1, 24, 16, 5, 7, 5, torch.float32, True),
        (2, 16, 32, 3, 5, 9, torch.float32, True),
        (3, 16, 20, 5, 1, 1, torch.float64, True),
        (1, 8, 16, 5, 4, 6, torch.float32, False),
        (2, 16, 3, 5, 6, 4, torch.float32, True),  # narrow: native path
    ],
)
def test_invariant_path_computes_the_transposed_convolution(b, cin, cout, k, h, w, dtype, bias):
    torch.manual_seed(0)
    m = Deconv(cin, cout, k).to(dtype)
    if not bias:
        m.bias = None
    x = torch.randn(b, cin, h, w, dtype=dtype)
    ref = _reference(m, x)
    with torch.no_grad(), thread_invariant():
        y = m(x)
    assert y.shape == (b, cout, 2 * h, 2 * w) and y.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert (y.double() - ref).abs().max().item() < tol * max(1.0, ref.abs().max().item())


def test_outside_the_block_it_is_exactly_conv_transpose():
    torch.manual_seed(1)
    m = Deconv(24, 16, 5)
    x = torch.randn(1, 24, 6, 7)
    with torch.no_grad():
        assert torch.equal(m(x), nn.ConvTranspose2d.forward(m, x))
        with thread_invariant(enabled=False):
            assert torch.equal(m(x), nn.ConvTranspose2d.forward(m, x))


def test_same_parameters_and_init_as_compressai_deconv():
    torch.manual_seed(2)
    ours = Deconv(24, 16, 5)
    torch.manual_seed(2)
    theirs = compressai_deconv(24, 16, 5)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)
    assert (ours.stride, ours.padding, ours.output_padding) == (theirs.stride, theirs.padding, theirs.output_padding)
    with pytest.raises(ValueError, match="odd kernel"):
        Deconv(8, 8, 4)


@pytest.mark.parametrize("cin, cout, h, w", [(192, 128, 12, 16), (64, 48, 24, 20), (32, GEMM_MIN_OUT - 1, 16, 16)])
def test_same_bits_for_any_thread_count(threads, cin, cout, h, w):
    """The property the path exists for; shapes like the decoder's first layers (where oneDNN's result
    changed with the thread count) and a narrow layer that keeps PyTorch's native path."""
    torch.manual_seed(3)
    m = Deconv(cin, cout, 5)
    x = torch.randn(2, cin, h, w)
    outs = []
    with torch.no_grad(), thread_invariant():
        for n in (1, 2, 3, 4, 7):
            torch.set_num_threads(n)
            outs.append(m(x))
    for y in outs[1:]:
        assert torch.equal(y, outs[0])


def test_gradients_use_the_standard_path():
    torch.manual_seed(4)
    m = Deconv(16, 16, 3)
    x = torch.randn(1, 16, 5, 5, requires_grad=True)
    with thread_invariant():
        y = m(x)
    y.square().sum().backward()
    assert x.grad is not None and m.weight.grad is not None
    assert torch.equal(y.detach(), nn.ConvTranspose2d.forward(m, x).detach())


def test_flag_restored_also_after_an_error():
    before = torch._C._get_mkldnn_enabled()
    with pytest.raises(RuntimeError, match="boom"), thread_invariant():
        assert not torch._C._get_mkldnn_enabled()
        with thread_invariant():
            pass
        assert not torch._C._get_mkldnn_enabled()
        raise RuntimeError("boom")
    assert torch._C._get_mkldnn_enabled() == before
    m = Deconv(16, 16, 3)
    x = torch.randn(1, 16, 4, 4)
    with torch.no_grad():  # the module flag is back to "off" too: plain ConvTranspose2d bits
        assert torch.equal(m(x), nn.ConvTranspose2d.forward(m, x))


def test_wrong_channel_count_is_a_clear_error():
    m = Deconv(16, 16, 3)
    with torch.no_grad(), thread_invariant(), pytest.raises((ValueError, RuntimeError)):
        m(torch.randn(1, 8, 4, 4))
