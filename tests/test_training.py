"""Training-smoke tests: the RD loss goes down, prompts move the real rate, the base stays bit-identical."""

from __future__ import annotations

import math

import pytest
import torch

from lpm import zoo
from lpm.models import PromptConfig, PromptedCodec
from lpm.train.loops import infinite, progressive_order, train_base, train_prompt, train_progressive
from lpm.train.losses import RateDistortionLoss, bpp_from_likelihoods


def _images(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random images with edges (compressible, not noise)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 8, size // 8, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    x = x + 0.03 * torch.randn(n, 3, size, size, generator=g)
    return x.clamp(0, 1)


def _batches(seed: int, batch: int = 4, size: int = 64):
    g = torch.Generator().manual_seed(seed)
    pool = _images(32, size, seed)
    while True:
        idx = torch.randint(0, pool.shape[0], (batch,), generator=g)
        yield pool[idx]


@pytest.fixture(scope="module")
def trained_base() -> PromptedCodec:
    torch.manual_seed(0)
    codec = zoo.build("tiny", base_rate=0.0483)
    train_base(codec.base, _batches(0), steps=400, lmbda=0.0483, lr=2e-3, log_every=1000)
    return codec


def _real_bytes(codec: PromptedCodec, x: torch.Tensor, rate: float) -> int:
    codec.eval()
    out = codec.compress(x, rate)
    return sum(len(s) for strings in out["strings"] for s in strings)


def test_rd_loss_matches_definition():
    x = torch.rand(2, 3, 8, 8)
    out = {"x_hat": x + 0.1, "likelihoods": {"y": torch.full((2, 4, 2, 2), 0.5)}}
    res = RateDistortionLoss(0.01)(out, x)
    bpp = 2 * 4 * 2 * 2 * 1.0 / (2 * 8 * 8)  # one bit per element
    assert res["bpp_loss"].item() == pytest.approx(bpp)
    assert res["mse_loss"].item() == pytest.approx(0.01, rel=1e-4)
    assert res["loss"].item() == pytest.approx(0.01 * 255**2 * 0.01 + bpp, rel=1e-4)
    assert bpp_from_likelihoods(out["likelihoods"], 2 * 64).item() == pytest.approx(bpp)
    with pytest.raises(ValueError):
        RateDistortionLoss(metric="l1")


def test_base_loss_decreases():
    torch.manual_seed(1)
    codec = zoo.build("tiny")
    hist = train_base(codec.base, _batches(1), steps=60, lmbda=0.0483, lr=2e-3, log_every=10)
    first, last = hist[0]["loss"], sum(h["loss"] for h in hist[-2:]) / 2
    assert last < 0.7 * first, hist
    # the base is frozen again after pretraining, as the prompted codec wants it
    assert not any(p.requires_grad for p in codec.base.parameters())


@pytest.mark.parametrize("latent_gain", [False, True])
def test_prompts_move_real_rate_down_and_base_is_untouched(trained_base, latent_gain, torch_single_thread):
    """Training a prompt module for a lower rate lowers that rate's RD objective below the frozen base's,
    leaves the base bit-identical, and (with the per-rate latent gain) shrinks the real bytes.

    Prompts alone move the real rate very little in a few steps — the risk MISSION.md describes; measured
    here about ±1 % of the bytes, within numerical noise, so only the objective is asserted for them. The
    optional latent gain moves the bytes by about −14 %."""
    # torch_single_thread: the byte counts below must not depend on the thread count
    codec = PromptedCodec(
        trained_base.base, trained_base.rates, 0.0483, PromptConfig(enc_channels=8, dec_channels=8, latent_gain=latent_gain)
    )
    x = _images(2, 96, seed=123)
    crit = RateDistortionLoss()
    before = {k: v.clone() for k, v in codec.base.state_dict().items()}
    bytes_base = _real_bytes(codec, x, 0.0483)
    with torch.no_grad():
        loss_base = crit(codec(x, 0.0483), x, lmbda=0.0018)["loss"].item()
    hist = train_prompt(codec, 0.0018, _batches(2), steps=150, lr=1e-2, log_every=1000)
    assert math.isfinite(hist[-1]["loss"])
    after = codec.base.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "base weights changed during prompt learning"
    with torch.no_grad():
        loss_prompted = crit(codec(x, 0.0018), x, lmbda=0.0018)["loss"].item()
    print(f"latent_gain={latent_gain}: RD loss {loss_base:.4f} -> {loss_prompted:.4f}; bytes {bytes_base} -> "
          f"{_real_bytes(codec, x, 0.0018)}")
    assert loss_prompted < 0.97 * loss_base, (loss_prompted, loss_base)
    bytes_low = _real_bytes(codec, x, 0.0018)
    if latent_gain:
        assert bytes_low < 0.95 * bytes_base, (bytes_low, bytes_base)
    # prompts off => exactly the base again
    assert _real_bytes(codec, x, 0.0483) == bytes_base


def test_only_prompt_parameters_are_optimised(trained_base, monkeypatch):
    codec = trained_base
    seen = []
    real_adam = torch.optim.Adam

    def spy(params, **kw):
        params = list(params)
        seen.append({id(p) for p in params})
        return real_adam(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", spy)
    train_prompt(codec, 0.013, _batches(3), steps=2, lr=1e-3)
    own = {id(p) for p in codec.module(0.013).parameters()}
    assert seen == [own]
    base_ids = {id(p) for p in codec.base.parameters()}
    assert not (seen[0] & base_ids)


def test_progressive_order_steps_one_notch_at_a_time():
    codec = zoo.build("tiny", base_rate=0.0483)
    plan = progressive_order(codec)
    assert [r for r, _ in plan] == [0.025, 0.013, 0.0067, 0.0035, 0.0018]
    assert [f for _, f in plan] == [0.0483, 0.025, 0.013, 0.0067, 0.0035]
    mid = zoo.build("tiny", base_rate=0.0067)
    plan = dict(progressive_order(mid))
    assert plan[0.013] == 0.0067 and plan[0.0035] == 0.0067 and plan[0.0483] == 0.025 and plan[0.0018] == 0.0035


def test_progressive_initialises_from_neighbour():
    torch.manual_seed(4)
    codec = zoo.build("tiny", base_rate=0.0483)
    codec.rates  # 6 rates; train 1 step each and check the copy happened before training
    snapshots = {}
    real = train_prompt

    def record(c, rate, data, steps, lr=1e-3, **kw):
        snapshots[rate] = {k: v.clone() for k, v in c.module(rate).state_dict().items()}
        return real(c, rate, data, steps, lr, **kw)

    import lpm.train.loops as loops

    orig = loops.train_prompt
    loops.train_prompt = record
    try:
        train_progressive(codec, _batches(5, batch=1, size=64), steps_per_rate=1, lr=1e-3)
    finally:
        loops.train_prompt = orig
    after_025 = codec.module(0.025).state_dict()
    # λ=0.013 started from the *trained* λ=0.025 module
    assert all(torch.equal(snapshots[0.013][k], after_025[k]) for k in after_025)


def test_ms_ssim_loss_variant():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 192, 192)
    out = {"x_hat": (x + 0.05 * torch.randn_like(x)).clamp(0, 1), "likelihoods": {"y": torch.full((1, 2, 4, 4), 0.25)}}
    res = RateDistortionLoss(3.0, metric="ms-ssim")(out, x)
    assert 0 < res["ms_ssim_loss"].item() < 1
    assert res["loss"].item() == pytest.approx(3.0 * res["ms_ssim_loss"].item() + res["bpp_loss"].item(), rel=1e-5)
    same = RateDistortionLoss(3.0, metric="ms-ssim")({**out, "x_hat": x}, x)
    assert same["ms_ssim_loss"].item() == pytest.approx(0.0, abs=1e-5)


def test_per_image_lambda_loss():
    x = torch.zeros(2, 3, 4, 4)
    out = {"x_hat": torch.stack([torch.full((3, 4, 4), 0.1), torch.full((3, 4, 4), 0.2)]),
           "likelihoods": {"y": torch.ones(2, 1, 1, 1)}}
    lam = torch.tensor([0.01, 0.02])
    res = RateDistortionLoss()(out, x, lmbda=lam)
    assert res["loss"].item() == pytest.approx(255**2 * (0.01 * 0.01 + 0.02 * 0.04) / 2, rel=1e-5)
    with pytest.raises(ValueError):
        RateDistortionLoss()(out, x, lmbda=torch.tensor([0.01, 0.02, 0.03]))
