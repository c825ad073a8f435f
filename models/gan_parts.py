"""GAN losses and stabilisers: the pieces a GAN study switches on and off."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class GANLoss:
    """Discriminator and generator objectives on raw logits (critic outputs)."""

    d: Callable[[Tensor, Tensor], Tensor]  # (real logits, fake logits) -> loss
    g: Callable[[Tensor], Tensor]  # fake logits -> loss
    gradient_penalty: bool = False


def _bce_d(real: Tensor, fake: Tensor) -> Tensor:
    # -log D(x) - log(1 - D(G(z))) with D = sigmoid, in the stable softplus form
    return F.softplus(-real).mean() + F.softplus(fake).mean()


LOSSES: dict[str, GANLoss] = {
    # Goodfellow et al. 2014, the generator maximises log D(G(z))
    "ns": GANLoss(d=_bce_d, g=lambda f: F.softplus(-f).mean()),
    # the original saturating game: the generator minimises log(1 - D(G(z)))
    "minimax": GANLoss(d=_bce_d, g=lambda f: -F.softplus(f).mean()),
    "hinge": GANLoss(
        d=lambda r, f: F.relu(1 - r).mean() + F.relu(1 + f).mean(), g=lambda f: -f.mean()
    ),
    # Mao et al. 2017, 0-1 coding
    "lsgan": GANLoss(
        d=lambda r, f: 0.5 * ((r - 1) ** 2).mean() + 0.5 * (f**2).mean(),
        g=lambda f: 0.5 * ((f - 1) ** 2).mean(),
    ),
    # Gulrajani et al. 2017; the penalty is added by the training step
    "wgan_gp": GANLoss(
        d=lambda r, f: f.mean() - r.mean(), g=lambda f: -f.mean(), gradient_penalty=True
    ),
}


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """E[(||grad_x critic(x)|| - 1)^2] at random interpolates of real and fake."""
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
    x = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


class MinibatchStdDev(nn.Module):
    """Appends the across-batch standard deviation, averaged to one number per
    group, as an extra feature (Karras et al. 2018): a collapsed batch has zero
    spread, which the discriminator can then see and punish."""

    def __init__(self, group_size: int = 4) -> None:
        super().__init__()
        self.group_size = group_size

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        g = self.group_size if b % self.group_size == 0 else b
        y = x.reshape(g, b // g, *x.shape[1:])
        std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt()
        stat = std.flatten(1).mean(dim=1).repeat(g)  # (b,), matches the reshape order
        extra = stat.reshape(b, 1, *([1] * (x.dim() - 2))).expand(b, 1, *x.shape[2:])
        return torch.cat([x, extra], dim=1)


class ReplayBuffer:
    """A ring buffer of past generator samples that the discriminator sees again
    (Shrivastava et al. 2017), so it keeps penalising modes the generator left.
    Lives on the training device; pushing and sampling never sync with the host."""

    def __init__(self, capacity: int, shape: tuple[int, ...], device: torch.device) -> None:
        self.data = torch.zeros(capacity, *shape, device=device)
        self.size = 0
        self.pos = 0

    @property
    def capacity(self) -> int:
        return self.data.shape[0]

    def push(self, x: Tensor) -> None:
        x = x.detach()[: self.capacity]
        idx = (torch.arange(len(x), device=x.device) + self.pos) % self.capacity
        self.data[idx] = x
        self.pos = (self.pos + len(x)) % self.capacity
        self.size = min(self.size + len(x), self.capacity)

    def sample(self, n: int) -> Tensor:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return self.data[torch.randint(0, self.size, (n,), device=self.data.device)]

    def state_dict(self) -> dict:
        return {"data": self.data[: self.size].clone(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        n = len(state["data"])
        self.data[:n] = state["data"].to(self.data.device)
        self.size, self.pos = n, int(state["pos"])
