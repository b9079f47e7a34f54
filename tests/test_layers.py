"""Tests for lpm.layers: window attention with prompts, Swin blocks for any HxW, prompt networks.

The Swin block is checked against a deliberately naive reference written here from the geometry alone
(explicit zero padding, ``torch.roll``, a Python loop over windows, boolean masks, explicit softmax), not
from the library's gather indices or mask builder.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lpm.layers import (
    PromptNet,
    PromptTarget,
    SwinBlock,
    SwinStage,
    WindowAttention,
    build_window_mask,
    capture_attention,
    relative_position_index,
    window_merge,
    window_partition,
)
from lpm.layers.swin import window_gather_index

pytestmark = pytest.mark.usefixtures("torch_single_thread")

DIM, HEADS = 16, 2
SIZES = [(8, 8), (5, 7), (13, 9), (16, 24), (1, 1)]


# --------------------------------------------------------------------------- naive reference
def _wrapped(n: int, shift: int) -> torch.Tensor:
    """In the rolled frame, which of ``n`` rows (columns) wrapped around from the top (left)."""
    idx = torch.arange(n)
    return idx >= n - shift if shift else torch.zeros(n, dtype=torch.bool)


def naive_attention_out(blk: SwinBlock, xn: torch.Tensor, prompt, prompt_logit) -> torch.Tensor:
    """W-MSA of a Swin block, naive: ``xn`` (B, H, W, C) already normalised, prompt (B, C, ph, pw) or None."""
    b, h, w, c = xn.shape
    win, shift, s = blk.window, blk.shift, blk.prompt_stride
    attn = blk.attn
    heads, d = attn.num_heads, c // attn.num_heads
    hp, wp = math.ceil(h / win) * win, math.ceil(w / win) * win

    padded = xn.new_zeros(b, hp, wp, c)
    padded[:, :h, :w] = xn
    real = torch.zeros(hp, wp, dtype=torch.bool)
    real[:h, :w] = True
    if shift:
        padded = torch.roll(padded, shifts=(-shift, -shift), dims=(1, 2))
        real = torch.roll(real, shifts=(-shift, -shift), dims=(0, 1))
    wrap_r, wrap_c = _wrapped(hp, shift), _wrapped(wp, shift)

    if prompt is not None:
        pws, pshift = win // s, shift // s
        ph, pw = math.ceil(h / s), math.ceil(w / s)
        php, pwp = hp // s, wp // s
        ppad = xn.new_zeros(b, php, pwp, c)
        ppad[:, :ph, :pw] = prompt.permute(0, 2, 3, 1)
        preal = torch.zeros(php, pwp, dtype=torch.bool)
        preal[:ph, :pw] = True
        if pshift:
            ppad = torch.roll(ppad, shifts=(-pshift, -pshift), dims=(1, 2))
            preal = torch.roll(preal, shifts=(-pshift, -pshift), dims=(0, 1))
        pwrap_r = wrap_r[torch.arange(php) * s]
        pwrap_c = wrap_c[torch.arange(pwp) * s]

    wq, wk, wv = attn.qkv.weight.split(c)
    bq, bk, bv = attn.qkv.bias.split(c)
    rel = attn.relative_bias()  # (heads, N, N)
    out_rolled = xn.new_zeros(b, hp, wp, c)
    for wi in range(hp // win):
        for wj in range(wp // win):
            rows = torch.arange(wi * win, (wi + 1) * win)
            cols = torch.arange(wj * win, (wj + 1) * win)
            rr, cc = torch.meshgrid(rows, cols, indexing="ij")
            rr, cc = rr.reshape(-1), cc.reshape(-1)  # raster order inside the window
            tok = padded[:, rr, cc]  # (B, N, C)
            q = tok @ wq.T + bq
            k = tok @ wk.T + bk
            v = tok @ wv.T + bv
            allowed = real[rr, cc][None, :] & (wrap_r[rr][:, None] == wrap_r[rr][None, :]) & (
                wrap_c[cc][:, None] == wrap_c[cc][None, :]
            )
            bias = rel
            if prompt is not None:
                prow = torch.arange(wi * pws, (wi + 1) * pws)
                pcol = torch.arange(wj * pws, (wj + 1) * pws)
                pr, pc = torch.meshgrid(prow, pcol, indexing="ij")
                pr, pc = pr.reshape(-1), pc.reshape(-1)
                ptok = ppad[:, pr, pc]
                k = torch.cat([k, ptok @ wk.T + bk], dim=1)
                v = torch.cat([v, ptok @ wv.T + bv], dim=1)
                pallowed = preal[pr, pc][None, :] & (wrap_r[rr][:, None] == pwrap_r[pr][None, :]) & (
                    wrap_c[cc][:, None] == pwrap_c[pc][None, :]
                )
                allowed = torch.cat([allowed, pallowed], dim=1)
                pb = torch.full((heads, len(rr), len(pr)), 0.0 if prompt_logit is None else prompt_logit)
                bias = torch.cat([rel, pb.to(rel.dtype)], dim=2)
            n_keys = k.shape[1]
            qh = q.reshape(b, -1, heads, d).permute(0, 2, 1, 3)
            kh = k.reshape(b, n_keys, heads, d).permute(0, 2, 1, 3)
            vh = v.reshape(b, n_keys, heads, d).permute(0, 2, 1, 3)
            logits = qh @ kh.transpose(-1, -2) / math.sqrt(d) + bias[None]
            logits = logits.masked_fill(~allowed[None, None], float("-inf"))
            probs = torch.exp(logits - logits.amax(-1, keepdim=True))
            probs = probs / probs.sum(-1, keepdim=True)
            o = (probs @ vh).permute(0, 2, 1, 3).reshape(b, -1, c)
            # padded queries can have every key masked (NaN rows); they are dropped below
            out_rolled[:, rr, cc] = attn.proj(o)
    if shift:
        out_rolled = torch.roll(out_rolled, shifts=(shift, shift), dims=(1, 2))
    return out_rolled[:, :h, :w]


def naive_block(blk: SwinBlock, x: torch.Tensor, prompt=None, prompt_logit=None) -> torch.Tensor:
    y = x + naive_attention_out(blk, blk.norm1(x), prompt, prompt_logit)
    return y + blk.mlp(blk.norm2(y))


def make_block(window: int, shift: int, seed: int = 0) -> SwinBlock:
    torch.manual_seed(seed)
    blk = SwinBlock(DIM, HEADS, window, shift=shift)
    with torch.no_grad():  # make the position bias and the norms matter
        blk.attn.relative_position_bias_table.normal_(0.0, 1.0)
        blk.norm1.weight.uniform_(0.5, 1.5)
        blk.norm1.bias.normal_(0.0, 0.2)
    return blk.eval()


CASES = [(win, sh) for win in (4, 8) for sh in (0, win // 2)]
PROMPT_CASES = [(False, None), (True, None), (True, -1.0)]


@pytest.mark.parametrize("window,shift", CASES)
@pytest.mark.parametrize("with_prompt,logit", PROMPT_CASES)
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_swin_block_matches_naive_reference(window, shift, with_prompt, logit, grad):
    blk = make_block(window, shift)
    ref_blk = copy.deepcopy(blk).double()
    g = torch.Generator().manual_seed(window * 100 + shift)
    for h, w in SIZES:  # one block over several sizes also exercises its per-size plan cache
        x = torch.randn(2, h, w, DIM, generator=g)
        prompt = torch.randn(2, DIM, math.ceil(h / 2), math.ceil(w / 2), generator=g) * 2 if with_prompt else None
        x_before = x.clone()
        with torch.set_grad_enabled(grad):
            out = blk(x, prompt, logit)
        assert out.shape == x.shape
        assert torch.equal(x, x_before), "the block modified its input"
        with torch.no_grad():
            ref = naive_block(ref_blk, x.double(), None if prompt is None else prompt.double(), logit)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0, msg=lambda m: f"{h}x{w}: {m}")


@pytest.mark.parametrize("stride,window,shift", [(1, 4, 2), (4, 8, 4), (4, 8, 0), (2, 2, 0)])
def test_swin_block_other_prompt_strides_match_naive_reference(stride, window, shift):
    torch.manual_seed(1)
    blk = SwinBlock(DIM, HEADS, window, shift=shift, prompt_stride=stride).eval()
    with torch.no_grad():
        blk.attn.relative_position_bias_table.normal_(0.0, 1.0)
    ref_blk = copy.deepcopy(blk).double()
    for h, w in [(13, 9), (16, 8), (1, 1), (17, 3)]:
        x = torch.randn(1, h, w, DIM)
        prompt = torch.randn(1, DIM, math.ceil(h / stride), math.ceil(w / stride)) * 2
        with torch.no_grad():
            out = blk(x, prompt, -0.5)
            ref = naive_block(ref_blk, x.double(), prompt.double(), -0.5)
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0, msg=lambda m: f"{h}x{w}: {m}")


def test_naive_reference_is_sensitive_to_masking():
    """Sanity check of the test itself: dropping the shift mask changes the reference noticeably."""
    blk = make_block(4, 2)
    x = torch.randn(1, 8, 8, DIM)
    with torch.no_grad():
        out = blk(x)
        unmasked = copy.deepcopy(blk)
        unmasked.shift = 0  # the naive reference then does neither roll nor mask
        diff = (naive_block(unmasked, x) - out).abs().max()
    assert diff > 1e-2


def test_swin_block_prompts_change_output_and_strength_fades_them():
    blk = make_block(8, 4)
    x = torch.randn(1, 13, 9, DIM)
    prompt = torch.randn(1, DIM, 7, 5) * 2
    with torch.no_grad():
        plain = blk(x)
        full = blk(x, prompt)
        faint = blk(x, prompt, math.log(1e-30))
    assert (plain - full).abs().max() > 1e-3
    torch.testing.assert_close(faint, plain, atol=1e-6, rtol=0)


def test_swin_block_rejects_wrong_prompt_shape():
    blk = make_block(8, 4)
    x = torch.randn(1, 13, 9, DIM)
    with pytest.raises(ValueError):
        blk(x, torch.randn(1, DIM, 6, 5))
    with pytest.raises(ValueError):
        blk(x, torch.randn(1, DIM + 1, 7, 5))
    with pytest.raises(ValueError):
        SwinBlock(DIM, HEADS, 8, shift=3)


def test_swin_stage_alternates_shift_and_checks_prompt_count():
    torch.manual_seed(0)
    stage = SwinStage(DIM, 3, HEADS, 8).eval()
    assert [b.shift for b in stage.blocks] == [0, 4, 0]
    x = torch.randn(1, DIM, 11, 6)
    prompts = [torch.randn(1, DIM, 6, 3) for _ in range(3)]
    with torch.no_grad():
        out = stage(x, prompts, -0.5)
        y = x.permute(0, 2, 3, 1)
        for blk, p in zip(stage.blocks, prompts):
            y = blk(y, p, -0.5)
    assert out.shape == x.shape
    torch.testing.assert_close(out, y.permute(0, 3, 1, 2), atol=0, rtol=0)
    with pytest.raises(ValueError):
        stage(x, prompts[:2])


# --------------------------------------------------------------------------- build_window_mask
@pytest.mark.parametrize("window", [4, 8])
@pytest.mark.parametrize("prompt_stride", [None, 2])
def test_build_window_mask_none_without_shift_or_padding(window, prompt_stride):
    assert build_window_mask(16, 24, window, 0, prompt_stride, torch.device("cpu")) is None
    assert build_window_mask(16, 24, window, window // 2, prompt_stride, torch.device("cpu")) is not None
    assert build_window_mask(15, 24, window, 0, prompt_stride, torch.device("cpu")) is not None


@pytest.mark.parametrize("h,w", [(8, 8), (5, 7), (13, 9), (16, 24), (1, 1), (9, 17)])
@pytest.mark.parametrize("window", [4, 8])
@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("prompt_stride", [None, 2])
def test_build_window_mask_shape_and_rows(h, w, window, shifted, prompt_stride):
    shift = window // 2 if shifted else 0
    mask = build_window_mask(h, w, window, shift, prompt_stride, torch.device("cpu"))
    hp, wp = math.ceil(h / window) * window, math.ceil(w / window) * window
    if mask is None:
        assert not shift and (hp, wp) == (h, w)
        return
    n_win, n = (hp // window) * (wp // window), window * window
    p = (window // prompt_stride) ** 2 if prompt_stride else 0
    assert mask.shape == (n_win, n, n + p)
    assert mask.dtype == torch.float32
    vals = torch.unique(mask)
    assert set(vals.tolist()) <= {0.0, -1.0e4}
    allowed = mask == 0
    # where each window token sits in the unrolled, unpadded map (same geometry as the naive reference)
    real = torch.zeros(hp, wp, dtype=torch.bool)
    real[:h, :w] = True
    if shift:
        real = torch.roll(real, (-shift, -shift), (0, 1))
    real_q = window_partition(real[None, :, :, None].float(), window)[0, :, :, 0].bool()  # (nW, N)
    # every real query may attend to something (at least itself)
    assert allowed.any(-1)[real_q].all()
    assert allowed[:, :, :n].diagonal(dim1=1, dim2=2)[real_q].all()
    # padded positions are never allowed as image keys
    assert not allowed[:, :, :n].transpose(1, 2)[~real_q].any()
    # a row with no allowed key at all can only belong to a padded query (its output is discarded)
    assert real_q[~allowed.any(-1)].sum() == 0


def test_build_window_mask_matches_naive_geometry():
    """Allowed pairs of the library mask equal the naive geometric rule used in the reference above."""
    h, w, window, shift, s = 13, 9, 8, 4, 2
    mask = build_window_mask(h, w, window, shift, s, torch.device("cpu"))
    hp, wp = 16, 16
    real = torch.zeros(hp, wp, dtype=torch.bool)
    real[:h, :w] = True
    real = torch.roll(real, (-shift, -shift), (0, 1))
    wr, wc = _wrapped(hp, shift), _wrapped(wp, shift)
    preal = torch.zeros(hp // s, wp // s, dtype=torch.bool)
    preal[: math.ceil(h / s), : math.ceil(w / s)] = True
    preal = torch.roll(preal, (-shift // s, -shift // s), (0, 1))
    pwin = window // s
    idx = 0
    for wi in range(hp // window):
        for wj in range(wp // window):
            rr, cc = torch.meshgrid(
                torch.arange(wi * window, (wi + 1) * window), torch.arange(wj * window, (wj + 1) * window), indexing="ij"
            )
            rr, cc = rr.reshape(-1), cc.reshape(-1)
            pr, pc = torch.meshgrid(
                torch.arange(wi * pwin, (wi + 1) * pwin), torch.arange(wj * pwin, (wj + 1) * pwin), indexing="ij"
            )
            pr, pc = pr.reshape(-1), pc.reshape(-1)
            a_img = real[rr, cc][None] & (wr[rr][:, None] == wr[rr][None]) & (wc[cc][:, None] == wc[cc][None])
            a_pr = preal[pr, pc][None] & (wr[rr][:, None] == wr[pr * s][None]) & (wc[cc][:, None] == wc[pc * s][None])
            expected = torch.cat([a_img, a_pr], 1)
            real_q = real[rr, cc]
            assert torch.equal((mask[idx] == 0)[real_q], expected[real_q]), f"window {idx}"
            idx += 1


# --------------------------------------------------------------------------- WindowAttention
def _standard_window_attention(attn: WindowAttention, x: torch.Tensor, mask=None) -> torch.Tensor:
    b, nw, n, c = x.shape
    h, d = attn.num_heads, c // attn.num_heads
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias
    q, k, v = qkv.split(c, dim=-1)
    q = q.reshape(b, nw, n, h, d).transpose(2, 3)
    k = k.reshape(b, nw, n, h, d).transpose(2, 3)
    v = v.reshape(b, nw, n, h, d).transpose(2, 3)
    table = attn.relative_position_bias_table
    bias = torch.empty(h, n, n, dtype=x.dtype)
    win = attn.window
    for i in range(n):
        for j in range(n):
            dy = i // win - j // win + win - 1
            dx = i % win - j % win + win - 1
            bias[:, i, j] = table[dy * (2 * win - 1) + dx]
    logits = (q @ k.transpose(-1, -2)) * d**-0.5 + bias
    if mask is not None:
        logits = logits + mask[None, :, None]
    probs = torch.softmax(logits, dim=-1)
    out = (probs @ v).transpose(2, 3).reshape(b, nw, n, c)
    return out @ attn.proj.weight.T + attn.proj.bias


def _attn(window: int = 4, seed: int = 0) -> WindowAttention:
    torch.manual_seed(seed)
    attn = WindowAttention(DIM, HEADS, window)
    with torch.no_grad():
        attn.relative_position_bias_table.normal_(0.0, 1.0)
    return attn.eval()


@pytest.mark.parametrize("window", [2, 4, 8])
def test_window_attention_without_prompts_is_standard(window):
    attn = _attn(window)
    x = torch.randn(2, 3, window * window, DIM)
    with torch.no_grad():
        out = attn(x)
        ref = _standard_window_attention(attn, x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # a mask of zeros changes nothing, a real mask is honoured
    mask = torch.zeros(3, window * window, window * window)
    mask[1, :, 1:] = -1.0e4
    with torch.no_grad():
        torch.testing.assert_close(attn(x, mask=torch.zeros_like(mask)), ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(attn(x, mask=mask), _standard_window_attention(attn, x, mask), atol=1e-5, rtol=0)


def test_relative_position_index_and_bias():
    idx = relative_position_index(3)
    assert idx.shape == (9, 9)
    assert idx.diagonal().eq(idx[0, 0]).all()  # zero offset everywhere on the diagonal
    assert idx.min() == 0 and idx.max() == 24 and idx.unique().numel() == 25
    attn = _attn(4)
    bias = attn.relative_bias()
    assert bias.shape == (HEADS, 16, 16)


@pytest.mark.parametrize("with_prompts", [False, True])
def test_window_attention_masked_windows_subset_equals_full_mask(with_prompts):
    """Recomputing only the masked windows gives the same result as masking every window."""
    attn = _attn(4)
    b, nw, n = 2, 6, 16
    p = 4 if with_prompts else 0
    x = torch.randn(b, nw, n, DIM)
    prompts = torch.randn(b, nw, p, DIM) if with_prompts else None
    mask = torch.zeros(nw, n, n + p)
    mask[2, :, 5:] = -1.0e4
    mask[5, 3:, :4] = -1.0e4
    masked = torch.tensor([2, 5])
    with torch.no_grad():
        full = attn(x, mask=mask, prompts=prompts, prompt_logit=-0.7)
        sub = attn(x, mask=mask, prompts=prompts, prompt_logit=-0.7, masked_windows=masked)
        with capture_attention(attn):
            cap = attn(x, mask=mask, prompts=prompts, prompt_logit=-0.7)
    torch.testing.assert_close(sub, full, atol=1e-6, rtol=0)
    torch.testing.assert_close(cap, full, atol=1e-6, rtol=0)


def test_window_attention_rejects_bad_heads():
    with pytest.raises(ValueError):
        WindowAttention(10, 3, 4)


# --------------------------------------------------------------------------- capture_attention
def test_capture_attention_records_probabilities_without_changing_outputs():
    torch.manual_seed(0)
    stage = SwinStage(DIM, 2, HEADS, 4).eval()
    for blk in stage.blocks:
        with torch.no_grad():
            blk.attn.relative_position_bias_table.normal_()
    x = torch.randn(2, DIM, 7, 10)
    prompts = [torch.randn(2, DIM, 4, 5) for _ in range(2)]
    with torch.no_grad():
        plain = stage(x, prompts, -0.3)
        with capture_attention(stage) as rec:
            captured = stage(x, prompts, -0.3)
    torch.testing.assert_close(captured, plain, atol=1e-6, rtol=0)
    assert set(rec) == {"blocks.0.attn", "blocks.1.attn"}
    n_win = (8 // 4) * (12 // 4)
    for name, probs_list in rec.items():
        assert len(probs_list) == 1, name
        probs = probs_list[0]
        assert probs.shape == (2, n_win, HEADS, 16, 16 + 4)
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]), atol=1e-5, rtol=0)
        assert (probs >= 0).all()
        assert not probs.requires_grad
    # the shifted block must give masked pairs exactly zero probability
    mask = build_window_mask(7, 10, 4, 2, 2, torch.device("cpu"))
    real = torch.zeros(8, 12, dtype=torch.bool)
    real[:7, :10] = True
    real = torch.roll(real, (-2, -2), (0, 1))
    real_q = window_partition(real[None, :, :, None].float(), 4)[0, :, :, 0].bool()  # (nW, N)
    forbidden = (mask < 0) & real_q[:, :, None]
    assert forbidden.any()
    shifted = rec["blocks.1.attn"][0]
    assert (shifted.permute(0, 2, 1, 3, 4)[:, :, forbidden] == 0).all()
    # after the context nothing is recorded
    for blk in stage.blocks:
        assert blk.attn._capture is None
    with torch.no_grad():
        again = stage(x, prompts, -0.3)
    assert all(len(v) == 1 for v in rec.values())
    torch.testing.assert_close(again, plain, atol=0, rtol=0)


def test_capture_attention_is_reset_after_an_exception():
    attn = _attn(4)
    with pytest.raises(RuntimeError):
        with capture_attention(attn):
            raise RuntimeError("boom")
    assert attn._capture is None


def test_capture_attention_with_grad_and_no_prompts():
    torch.manual_seed(1)
    blk = SwinBlock(DIM, HEADS, 4, shift=0).eval()
    x = torch.randn(1, 8, 8, DIM)
    plain = blk(x)
    with capture_attention(blk) as rec:
        cap = blk(x)
    torch.testing.assert_close(cap, plain, atol=1e-6, rtol=0)
    (probs,) = rec["attn"]
    assert probs.shape == (1, 4, HEADS, 16, 16)


# --------------------------------------------------------------------------- PromptNet
def test_prompt_net_down_shapes():
    targets = [PromptTarget("g_a.0", 1, 8, 2), PromptTarget("g_a.1", 3, 12, 1), PromptTarget("h_a.0", 0, 4, 3)]
    torch.manual_seed(0)
    net = PromptNet(3, 6, 0, targets)
    x = torch.randn(2, 3, 32, 48)
    out = net(x)
    assert list(out) == ["g_a.0", "g_a.1", "h_a.0"]
    for t in targets:
        maps = out[t.name]
        assert len(maps) == t.depth
        for m in maps:
            assert m.shape == (2, t.dim, 32 // 2**t.level, 48 // 2**t.level)
    assert len(net.steps) == 3
    # distinct heads per block: the maps of one stage are not all the same
    assert not torch.allclose(out["g_a.0"][0], out["g_a.0"][1])


def test_prompt_net_up_shapes_and_hidden_heads():
    targets = [PromptTarget("g_s.0", 3, 8, 2), PromptTarget("g_s.2", 1, 8, 1)]
    torch.manual_seed(0)
    net = PromptNet(24, 6, 4, targets, head_hidden=5, stem_kernel=1)
    x = torch.randn(1, 24, 2, 3)
    out = net(x)
    assert [m.shape for m in out["g_s.0"]] == [(1, 8, 4, 6)] * 2
    assert [m.shape for m in out["g_s.2"]] == [(1, 8, 16, 24)]
    # head init: zero bias on the last layer
    for heads in net.heads.values():
        for head in heads:
            assert torch.all(head[-1].bias == 0)


def test_prompt_net_same_level_and_errors():
    net = PromptNet(4, 6, 2, [PromptTarget("a", 2, 8, 1)])
    assert len(net.steps) == 0
    assert net(torch.randn(1, 4, 5, 7))["a"][0].shape == (1, 8, 5, 7)
    with pytest.raises(ValueError):
        PromptNet(3, 6, 2, [PromptTarget("a", 1, 8, 1), PromptTarget("b", 3, 8, 1)])
    with pytest.raises(ValueError):
        PromptNet(3, 6, 2, [])


# --------------------------------------------------------------------------- gather indices / partition
@pytest.mark.parametrize("h,w", [(1, 1), (5, 7), (13, 9), (8, 8), (3, 17), (16, 24)])
@pytest.mark.parametrize("window,shift", [(4, 0), (4, 2), (8, 0), (8, 4), (2, 1)])
def test_window_gather_index_round_trip(h, w, window, shift):
    fwd, inv = window_gather_index(h, w, window, shift, torch.device("cpu"))
    hp, wp = math.ceil(h / window) * window, math.ceil(w / window) * window
    assert fwd.shape == (hp * wp,) and inv.shape == (h * w,)
    x = torch.randn(2, h * w, 3)
    tokens = x[:, fwd]
    torch.testing.assert_close(tokens[:, inv], x, atol=0, rtol=0)
    # fwd agrees with naive pad + roll + partition at every real position
    pos = torch.full((hp, wp), -1, dtype=torch.long)
    pos[:h, :w] = torch.arange(h * w).reshape(h, w)
    if shift:
        pos = torch.roll(pos, (-shift, -shift), (0, 1))
    naive = window_partition(pos[None, :, :, None], window).reshape(-1)
    real = naive >= 0
    assert torch.equal(fwd[real], naive[real])
    assert (fwd[~real] >= 0).all() and (fwd[~real] < h * w).all()


@pytest.mark.parametrize("window", [2, 4])
def test_window_partition_merge_inverse(window):
    x = torch.randn(2, 8, 12, 5)
    parts = window_partition(x, window)
    assert parts.shape == (2, (8 // window) * (12 // window), window * window, 5)
    torch.testing.assert_close(parts[0, 0].reshape(window, window, 5), x[0, :window, :window])
    torch.testing.assert_close(window_merge(parts, window, 8, 12), x, atol=0, rtol=0)


def test_swin_block_additive_prompt_half_adds_to_the_tokens_and_fades():
    """A ``2C``-channel prompt map: the first ``C`` are prompt tokens, the last ``C`` are added (nearest ×s)
    to the block's input tokens, scaled by the prompt strength."""
    blk = make_block(8, 4)
    x = torch.randn(1, 13, 9, DIM)
    tokens = torch.randn(1, DIM, 7, 5)
    add = torch.randn(1, DIM, 7, 5)
    with torch.no_grad():
        kv_only = blk(x, tokens)
        zero_add = blk(x, torch.cat([tokens, torch.zeros_like(add)], 1))
        both = blk(x, torch.cat([tokens, add], 1))
        # the same as adding the upsampled map to the input by hand
        up = add.repeat_interleave(2, 2).repeat_interleave(2, 3)[..., :13, :9].permute(0, 2, 3, 1)
        by_hand = blk(x + up, tokens)
        half = blk(x, torch.cat([tokens, add], 1), math.log(0.5))
        half_by_hand = blk(x + 0.5 * up, tokens, math.log(0.5))
    torch.testing.assert_close(zero_add, kv_only, atol=1e-6, rtol=0)
    assert (both - kv_only).abs().max() > 1e-2
    torch.testing.assert_close(both, by_hand, atol=1e-5, rtol=0)
    torch.testing.assert_close(half, half_by_hand, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="additive"):
        blk(x, torch.randn(1, 3 * DIM, 7, 5))


def test_prompt_net_additive_heads_make_twice_the_channels_and_start_at_zero():
    targets = [PromptTarget("g_a.0", 1, 8, 2)]
    torch.manual_seed(0)
    net = PromptNet(3, 6, 0, targets, additive=True)
    out = net(torch.randn(2, 3, 32, 48))["g_a.0"]
    assert all(m.shape == (2, 16, 16, 24) for m in out)
    assert all(m[:, 8:].abs().max() == 0 and m[:, :8].abs().max() > 0 for m in out)
