"""The optimisers a family can be trained with, registered by name.

Each takes the parameters, the learning rate and the family's config (which
carries betas, alpha and momentum) and uses torch's fused implementation
where it has one (Adam: one kernel per step) and the multi-tensor (foreach)
one otherwise (NAdam, RMSProp, SGD).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

Builder = Callable[[Iterable[nn.Parameter], float, Any], torch.optim.Optimizer]

OPTIMIZERS: dict[str, Builder] = {
    "adam": lambda p, lr, c: torch.optim.Adam(p, lr=lr, betas=(c.beta1, c.beta2), fused=True),
    # Adam with Nesterov momentum (Dozat 2016): the chapter's collapsing GAN
    "nadam": lambda p, lr, c: torch.optim.NAdam(p, lr=lr, betas=(c.beta1, c.beta2), foreach=True),
    # the chapter's working choice for its GAN
    "rmsprop": lambda p, lr, c: torch.optim.RMSprop(
        p, lr=lr, alpha=c.rms_alpha, momentum=c.momentum, foreach=True
    ),
    # foreach, not fused: fused SGD fails on a restored momentum buffer of a
    # parameter that has had no gradient yet (a level not grown into)
    "sgd": lambda p, lr, c: torch.optim.SGD(p, lr=lr, momentum=c.momentum, foreach=True),
}


def make_optimizer(
    name: str, params: Iterable[nn.Parameter], lr: float, cfg: Any
) -> torch.optim.Optimizer:
    return OPTIMIZERS[name](params, lr, cfg)
