"""The bf16 training path (what the GPU runs: `bf16: true` in the reduced-budget configs), exercised on the CPU
with torch's CPU autocast as a stand-in, so that dtype mistakes show up before a GPU session is spent on them."""

from __future__ import annotations

import math

import torch

from lpm.train.progressive import prepare_prompt_stage
from lpm.train.stages import RateForward
from lpm.train.step import TrainStep, main_parameters

from conftest import make_tiny_base, make_tiny_codec


def _x() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    low = torch.rand(2, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(low, size=(64, 64), mode="bilinear", align_corners=False)


def test_entropy_models_stay_float32_under_bf16_autocast():
    base = make_tiny_base().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = base(_x())
    assert out["x_hat"].dtype == torch.bfloat16  # the transforms did run in bf16
    assert {k: v.dtype for k, v in out["likelihoods"].items()} == {"y": torch.float32, "z": torch.float32}


def test_bf16_base_steps_train_and_keep_float32_weights():
    base = make_tiny_base().train()
    step = TrainStep(base, main_parameters(base), lmbda=0.0483, lr=1e-3, aux=base, bf16=True, device_type="cpu")
    x = _x()
    losses = [float(step(x)["loss"]) for _ in range(6)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in base.parameters())


def test_bf16_prompt_steps_train_only_the_module_and_leave_the_base_bit_exact():
    codec = make_tiny_codec(ready=False).train()
    before = {k: v.clone() for k, v in codec.base.state_dict().items()}
    rate = codec.rates[0]
    params = prepare_prompt_stage(codec, rate, initialise=False)
    module_before = [p.detach().clone() for p in params]
    step = TrainStep(RateForward(codec, rate), params, lmbda=rate, lr=1e-3, bf16=True, device_type="cpu")
    x = _x()
    losses = [float(step(x)["loss"]) for _ in range(4)]
    assert all(math.isfinite(v) for v in losses)
    assert any(not torch.equal(a, b) for a, b in zip(module_before, params))
    assert all(torch.equal(v, codec.base.state_dict()[k]) for k, v in before.items())
