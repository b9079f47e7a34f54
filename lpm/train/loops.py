"""Training loops: base pretraining at one rate, and progressive prompt learning on the frozen base.

Progressive learning (our reading of the paper): rates are visited in order of their distance from the
base rate (in log λ), and each new prompt module starts from the weights of its already-trained neighbour
on the base side, so every step only has to move the codec one notch along the λ ladder. Only the prompt
parameters of the module being learned are given to the optimizer; the base is frozen and untouched.

These loops are deliberately plain (eager, single process); the resumable, compiled, multi-GPU runner
builds on them.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import Tensor

from lpm.models import PromptedCodec, TICCodec
from lpm.train.losses import RateDistortionLoss

__all__ = ["infinite", "train_base", "train_prompt", "progressive_order", "train_progressive"]

Log = Callable[[dict], None]


def infinite(batches: Iterable[Tensor]) -> Iterator[Tensor]:
    """Cycle over a finite iterable of batches (e.g. a DataLoader) forever."""
    while True:
        for b in batches:
            yield b


def _run(
    forward: Callable[[Tensor], dict],
    params: list[torch.nn.Parameter],
    data: Iterator[Tensor],
    steps: int,
    lmbda: float,
    lr: float,
    aux_module: Optional[TICCodec] = None,
    device: str | torch.device = "cpu",
    log: Optional[Log] = None,
    log_every: int = 50,
    clip: float = 1.0,
) -> list[dict]:
    criterion = RateDistortionLoss(lmbda)
    opt = torch.optim.Adam(params, lr=lr)
    aux_opt = None
    if aux_module is not None:
        aux_opt = torch.optim.Adam([p for n, p in aux_module.named_parameters() if n.endswith("quantiles")], lr=1e-3)
    history, t0 = [], time.perf_counter()
    for step in range(1, steps + 1):
        x = next(data).to(device, non_blocking=True)
        out = forward(x)
        losses = criterion(out, x)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if aux_opt is not None:
            aux_opt.zero_grad(set_to_none=True)
            aux_module.aux_loss().backward()
            aux_opt.step()
        if step % log_every == 0 or step == steps:
            mse = losses["mse_loss"].item()
            rec = {
                "step": step,
                "loss": losses["loss"].item(),
                "bpp": losses["bpp_loss"].item(),
                "psnr": 10 * math.log10(1 / max(mse, 1e-12)),
                "seconds": time.perf_counter() - t0,
            }
            history.append(rec)
            if log:
                log(rec)
    return history


def train_base(
    base: TICCodec, data: Iterator[Tensor], steps: int, lmbda: float = 0.0483, lr: float = 1e-4, **kw
) -> list[dict]:
    """Train all base parameters at one rate (``λ·255²·MSE + bpp``) plus the entropy bottleneck's aux loss."""
    frozen = {n for n, p in base.named_parameters() if not p.requires_grad}
    base.requires_grad_(True).train()
    try:
        main = [p for n, p in base.named_parameters() if not n.endswith("quantiles")]
        hist = _run(base, main, data, steps, lmbda, lr, aux_module=base, **kw)
    finally:
        for n, p in base.named_parameters():
            p.requires_grad_(n not in frozen)
        base.eval()
    base.update(force=True)
    return hist


def train_prompt(
    codec: PromptedCodec, rate: float, data: Iterator[Tensor], steps: int, lr: float = 1e-3, **kw
) -> list[dict]:
    """Train the prompt module of one trained rate; the base stays frozen (and is checked to be)."""
    module = codec.module(rate)
    params = list(module.parameters())
    if any(p.requires_grad for p in codec.base.parameters()):
        raise RuntimeError("the base codec must be frozen during prompt learning")
    codec.train()
    hist = _run(lambda x: codec(x, rate), params, data, steps, rate, lr, **kw)
    codec.eval()
    return hist


def progressive_order(codec: PromptedCodec) -> list[tuple[float, float]]:
    """``[(rate, initialise_from), ...]``: prompted rates ordered by distance from the base rate in log λ;
    each is initialised from its neighbour one notch closer to the base (the base itself for the first)."""
    base = codec.base_rate
    order = sorted((r for r in codec.rates if r != base), key=lambda r: abs(math.log(r / base)))
    plan = []
    for r in order:
        side = [q for q in codec.rates if (q - base) * (r - base) > 0 or q == base]
        closer = [q for q in side if abs(math.log(q / base)) < abs(math.log(r / base))]
        plan.append((r, max(closer, key=lambda q: abs(math.log(q / base)))))
    return plan


def train_progressive(
    codec: PromptedCodec, data: Iterator[Tensor], steps_per_rate: int, lr: float = 1e-3, **kw
) -> dict[float, list[dict]]:
    """Learn every prompt module, one notch at a time from the base rate outwards (see module docstring)."""
    histories = {}
    for rate, init_from in progressive_order(codec):
        if init_from != codec.base_rate:
            codec.module(rate).load_state_dict(codec.module(init_from).state_dict())
        histories[rate] = train_prompt(codec, rate, data, steps_per_rate, lr, **kw)
    return histories
