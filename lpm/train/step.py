"""The one training step, shared by every kind of run (:mod:`lpm.train.runner`), the tests and the benchmark.

One call of :class:`TrainStep` on a batch ``x``::

    x --forward (bf16 autocast on CUDA if asked)--> {"x_hat", "likelihoods"[, "lmbda": one λ per image]}
      --RateDistortionLoss(λ of the stage, or the per-image λ)--> loss --backward--> clip (max norm)
      --> Adam step on the stage's parameters
      --> aux step: aux_loss() of the entropy bottleneck --backward--> Adam step on its quantiles only

and returns the detached ``loss``, ``bpp_loss`` and ``mse_loss`` tensors: nothing is copied to the host,
so a caller that logs every N steps syncs once per N steps. The learning-rate schedule is
:func:`lr_at` (step drops by 10 at fractions of the stage), set per step with :meth:`TrainStep.set_lr`.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from lpm.train.losses import RateDistortionLoss

__all__ = ["TrainStep", "lr_at", "main_parameters", "quantile_parameters"]


def quantile_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The entropy bottleneck's quantiles: trained by the aux loss only, never by the RD loss."""
    return [p for n, p in model.named_parameters() if n.endswith("quantiles")]


def main_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Everything the RD loss trains when a whole model is trained (all but the quantiles)."""
    return [p for n, p in model.named_parameters() if not n.endswith("quantiles")]


def lr_at(step: int, *, lr: float, steps: int, drops: Sequence[float]) -> float:
    """Learning rate of (1-based) ``step`` of ``steps``: ``lr``, divided by 10 past each fraction in ``drops``."""
    return lr * 0.1 ** sum(step > f * steps for f in drops)


class TrainStep:
    """Forward, RD loss, backward, clip, optimizer step and (with ``aux``) the aux-loss step; see the module
    docstring.

    Args:
        forward: ``x -> compressai output dict``; may add ``"lmbda"`` (one λ per image), which then replaces
            ``lmbda`` in the loss. May be wrapped (DDP, ``torch.compile``).
        params: what the RD loss trains (and the optimizer gets; nothing else).
        lmbda: the stage's λ.
        aux: the codec whose ``aux_loss()`` trains its entropy bottleneck's quantiles, or ``None``.
        bf16: autocast the forward in bfloat16 (on ``device_type``).
    """

    def __init__(
        self,
        forward: Callable[[Tensor], dict],
        params: Sequence[nn.Parameter],
        *,
        lmbda: float,
        lr: float = 1e-4,
        aux: Optional[nn.Module] = None,
        aux_lr: float = 1e-3,
        clip: float = 1.0,
        metric: str = "mse",
        bf16: bool = False,
        device_type: str = "cpu",
    ) -> None:
        self.forward = forward
        self.params = list(params)
        self.criterion = RateDistortionLoss(lmbda, metric)
        self.optimizer = torch.optim.Adam(self.params, lr=lr)
        self.aux = aux
        self.aux_optimizer = torch.optim.Adam(quantile_parameters(aux), lr=aux_lr) if aux is not None else None
        self.clip = clip
        self.bf16, self.device_type = bf16, device_type

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.forward(x)
        losses = self.criterion(out, x, lmbda=out.get("lmbda"))
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        if self.aux_optimizer is not None:
            self.aux_optimizer.zero_grad(set_to_none=True)
            self.aux.aux_loss().backward()
            self.aux_optimizer.step()
        return {k: v.detach() for k, v in losses.items()}

    # the training state keeps the two optimizers under these names (``state.pt`` format 1)
    def state_dict(self) -> dict[str, dict]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "aux_optimizer": self.aux_optimizer.state_dict() if self.aux_optimizer is not None else {},
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.aux_optimizer is not None and state["aux_optimizer"]:
            self.aux_optimizer.load_state_dict(state["aux_optimizer"])
