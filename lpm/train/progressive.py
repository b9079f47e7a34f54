"""Progressive prompt learning (our reading of the paper): the plan and the preparation of each stage.

Rates are visited in order of their distance from the base rate (in log λ), and each new prompt module
starts from the weights of its already-trained neighbour on the base side, so every stage only has to move
the codec one notch along the λ ladder::

    λ:  0.0018  0.0035  0.0067  0.013  0.025  [0.0483 = base]
        5th <-- 4th <-- 3rd <-- 2nd <-- 1st <-- (the 1st starts from its own fresh module)

Only the parameters of the module being learned reach the optimizer; the base is frozen, and checked to
be, before every stage (:func:`prepare_prompt_stage`).
"""

from __future__ import annotations

import math

from torch import nn

from lpm.models import PromptedCodec

__all__ = ["progressive_order", "prepare_prompt_stage", "check_base_frozen"]


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


def check_base_frozen(codec: PromptedCodec) -> None:
    """``RuntimeError`` unless every base parameter has ``requires_grad=False``."""
    if any(p.requires_grad for p in codec.base.parameters()):
        raise RuntimeError("the base codec must stay frozen during prompt learning")


def prepare_prompt_stage(codec: PromptedCodec, rate: float, *, initialise: bool = True) -> list[nn.Parameter]:
    """Make the prompt module of ``rate`` the only trainable part of ``codec`` and return its parameters.

    ``initialise``: first copy the weights of its neighbour one notch closer to the base (see
    :func:`progressive_order`; nothing is copied for the first rate on each side). A stage resumed from a
    training state passes ``False``: its module already holds the state's weights.
    """
    own = codec.module(rate)  # KeyError for the base rate or an untrained one
    if initialise:
        init_from = dict(progressive_order(codec))[codec.rates[codec.trained_index(rate)]]
        if init_from != codec.base_rate:
            own.load_state_dict(codec.module(init_from).state_dict())
    for m in codec.prompts.values():
        m.requires_grad_(m is own)
    check_base_frozen(codec)
    return list(own.parameters())
