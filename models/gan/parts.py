"""GAN losses and stabilisers: the pieces a GAN study switches on and off."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize


@dataclass(frozen=True)
class GANLoss:
    """Discriminator and generator objectives on raw logits (critic outputs)."""

    d: Callable[[Tensor, Tensor], Tensor]  # (real logits, fake logits) -> loss
    g: Callable[[Tensor], Tensor]  # fake logits -> loss
    gradient_penalty: bool = False
    # the output above which D calls an input real; None (a critic): the
    # midpoint of its mean output on the real and on the fake inputs judged
    threshold: float | None = 0.0


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
        threshold=0.5,
    ),
    # Gulrajani et al. 2017; the penalty is added by the training step
    "wgan_gp": GANLoss(
        d=lambda r, f: f.mean() - r.mean(),
        g=lambda f: -f.mean(),
        gradient_penalty=True,
        threshold=None,
    ),
}


def interpolation_weights(
    n: int, dims: int, device: torch.device, generator: torch.Generator | None = None
) -> Tensor:
    """The gradient penalty's eps ~ U(0, 1), one per sample of n, shaped to
    broadcast over samples of `dims` dimensions."""
    return torch.rand((n, *([1] * dims)), device=device, generator=generator)


def gradient_penalty(
    critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, eps: Tensor | None = None
) -> Tensor:
    """E[(||grad_x critic(x)|| - 1)^2] at interpolates eps * real + (1 - eps) *
    fake (eps: interpolation_weights, drawn here when not given). torch.func's
    grad, not autograd.grad: it also runs inside a seed pack's vmap, and the
    outer backward differentiates through it."""
    if eps is None:
        eps = interpolation_weights(len(real), real.dim() - 1, real.device)
    x = eps * real + (1 - eps) * fake
    grad = torch.func.grad(lambda v: critic(v).sum())(x)
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
    With `labelled`, each sample's class is kept beside it (conditional GANs).
    Lives on the training device; pushing and sampling never sync with the host."""

    def __init__(
        self, capacity: int, shape: tuple[int, ...], device: torch.device, labelled: bool = False
    ) -> None:
        self.data = torch.zeros(capacity, *shape, device=device)
        self.labels = torch.zeros(capacity, dtype=torch.long, device=device) if labelled else None
        self.size = 0
        self.pos = 0

    @property
    def capacity(self) -> int:
        return self.data.shape[0]

    def push(self, x: Tensor, y: Tensor | None = None) -> None:
        x = x.detach()[: self.capacity]
        idx = (torch.arange(len(x), device=x.device) + self.pos) % self.capacity
        self.data[idx] = x
        if self.labels is not None:
            self.labels[idx] = y[: self.capacity]
        self.pos = (self.pos + len(x)) % self.capacity
        self.size = min(self.size + len(x), self.capacity)

    def draw(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """n past samples, with their labels when the buffer keeps them."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = torch.randint(0, self.size, (n,), device=self.data.device, generator=generator)
        return self.data[idx], None if self.labels is None else self.labels[idx]

    def sample(self, n: int) -> Tensor:
        return self.draw(n)[0]

    def state_dict(self) -> dict:
        labels = None if self.labels is None else self.labels[: self.size].clone()
        return {"data": self.data[: self.size].clone(), "labels": labels, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        n = len(state["data"])
        self.data[:n] = state["data"].to(self.data.device)
        if self.labels is not None and state.get("labels") is not None:
            self.labels[:n] = state["labels"].to(self.labels.device)
        self.size, self.pos = n, int(state["pos"])


class PixelNorm(nn.Module):
    """Pixelwise feature normalisation (Karras et al. 2018): each pixel's
    feature vector divided by its root mean square over channels (dim 1), so
    generator activations cannot escalate in the race with the discriminator."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class MinibatchDiscrimination(nn.Module):
    """Salimans et al. 2016: features f(x_i) in R^A times T in R^{A x B x C}
    give M_i in R^{B x C}; o(x_i)_b = sum_{j != i} exp(-||M_i,b - M_j,b||_1)
    is appended to f(x_i). A batch of near-copies gives every o_b close to
    n - 1, a varied batch values near 0, which D can then tell apart.
    (The paper's sum includes j = i, a constant 1 for every sample; it is left
    out here so that the feature is 0 for a sample with no near-copies.)"""

    def __init__(self, in_features: int, kernels: int, kernel_dim: int) -> None:
        super().__init__()
        self.kernels, self.kernel_dim = kernels, kernel_dim
        self.T = nn.Parameter(torch.randn(in_features, kernels * kernel_dim) * 0.1)

    def forward(self, f: Tensor) -> Tensor:
        m = (f @ self.T).reshape(-1, self.kernels, self.kernel_dim)  # (n, B, C)
        l1 = (m.unsqueeze(0) - m.unsqueeze(1)).abs().sum(dim=3)  # (n, n, B)
        o = torch.exp(-l1).sum(dim=1) - 1.0  # drop the j = i term, exp(0) = 1
        return torch.cat([f, o], dim=1)


class _HeScale(nn.Module):
    """The parametrization of an equalized-learning-rate weight: the stored
    weight is N(0, 1), the layer uses it times the He constant."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, w: Tensor) -> Tensor:
        return w * self.scale


def he_constant(layer: nn.Module) -> float:
    """sqrt(2 / fan_in), fan_in the inputs each output unit sums over: for a
    transposed convolution in_channels x k x k / stride^2 (its kernel taps
    are spread over stride^2 output positions)."""
    w = layer.weight
    if isinstance(layer, nn.ConvTranspose2d):
        fan_in = w.shape[0] * w[0, 0].numel() / (layer.stride[0] * layer.stride[1])
    else:
        fan_in = w[0].numel()
    return (2.0 / fan_in) ** 0.5


def equalize_lr(net: nn.Module) -> nn.Module:
    """Equalized learning rate (Karras et al. 2018) on every linear and
    convolutional layer of `net`: weights redrawn N(0, 1), biases zero, the He
    constant applied at run time. An adaptive optimiser's step is then the
    same size relative to every layer's effective weights."""
    for layer in list(net.modules()):
        if isinstance(layer, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            scale = he_constant(layer)
            with torch.no_grad():
                layer.weight.normal_(0.0, 1.0)
                if layer.bias is not None:
                    layer.bias.zero_()
            parametrize.register_parametrization(layer, "weight", _HeScale(scale))
    return net


def d_accuracies(scores: dict[str, Tensor], threshold: float | None) -> dict[str, float]:
    """The discriminator's accuracy on each set of inputs it scored
    (`scores`: name -> outputs; "fake" is generated, the rest real): the
    share of real inputs scored above the threshold, of fakes below it. A
    critic's threshold (None) is the midpoint of its mean score on the reals
    named "train" and on the fakes."""
    if threshold is None:
        threshold = 0.5 * float(scores["train"].mean() + scores["fake"].mean())
    return {
        name: float(((s <= threshold) if name == "fake" else (s > threshold)).float().mean())
        for name, s in scores.items()
    }
