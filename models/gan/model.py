"""GAN family: the training step, its losses, stabilisers, optimisers and
ProGAN growth schedule; the architectures live in models.gan.archs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.config import ConfigError, param
from models.family import GenerativeFamily, balanced_labels
from models.gan.archs import ARCHS, GROWS
from models.gan.parts import (
    LOSSES,
    ReplayBuffer,
    d_accuracies,
    equalize_lr,
    gradient_penalty,
    interpolation_weights,
)
from models.gan.stylegan import SAMPLER
from models.latent import slerp
from models.optimizers import OPTIMIZERS, make_optimizer
from models.pack import Engine, Solo


@dataclass
class GANConfig:
    arch: str = param("mlp", choices=tuple(ARCHS), help="network architecture (style: StyleGAN G)")
    z_dim: int = param(32, low=1, high=1024, help="latent codings")
    width: int = param(256, low=2, high=4096, help="hidden units of the mlp networks")
    channels: int = param(32, low=2, high=1024, help="base channels of the dcgan/style networks")
    loss: str = param("ns", choices=tuple(LOSSES), help="adversarial objective")
    optimizer: str = param("adam", choices=tuple(OPTIMIZERS), help="optimiser of G (and of D)")
    optimizer_d: str = param(
        "same", choices=("same", *OPTIMIZERS), help="optimiser of D (same: as optimizer)"
    )
    lr_g: float = param(2e-4, low=1e-8, high=1.0, help="generator learning rate", mutable=True)
    lr_d: float = param(2e-4, low=1e-8, high=1.0, help="discriminator learning rate", mutable=True)
    beta1: float = param(
        0.5, low=0.0, high=0.999, help="Adam/NAdam beta1 for both networks", mutable=True
    )
    beta2: float = param(0.999, low=0.0, high=0.9999, help="Adam/NAdam beta2 for both networks")
    rms_alpha: float = param(0.99, low=0.0, high=0.9999, help="RMSProp smoothing constant")
    momentum: float = param(0.0, low=0.0, high=0.999, help="RMSProp and SGD momentum")
    # read every epoch, so population-based training may change it mid-training
    n_disc: int = param(
        1, low=1, high=20, help="discriminator steps per generator step", mutable=True
    )
    gp_weight: float = param(10.0, low=0.0, high=1e4, help="gradient penalty (wgan_gp loss)")
    replay: bool = param(False, help="show the discriminator past fakes again")
    replay_fraction: float = param(0.5, low=0.0, high=1.0, help="share of a fake batch replayed")
    replay_capacity: int = param(4096, low=1, high=10**7, help="past fakes kept for replay")
    mbstd: bool = param(False, help="minibatch standard deviation feature in D")
    mbdisc: bool = param(False, help="minibatch discrimination (Salimans et al. 2016) in D")
    mbdisc_kernels: int = param(16, low=1, high=1024, help="minibatch discrimination kernels B")
    mbdisc_dim: int = param(8, low=1, high=1024, help="minibatch discrimination kernel size C")
    pac: int = param(1, low=1, high=16, help="PacGAN packing: D judges pac samples at once")
    dropout: float = param(0.3, low=0.0, high=0.9, help="dropout in the DCGAN discriminator")
    equalized_lr: bool = param(False, help="ProGAN equalized learning rate in G and D")
    pixelnorm: bool = param(False, help="ProGAN pixelwise normalisation in G (for batch norm)")
    progressive: bool = param(False, help="ProGAN growing: h/4, h/2, h (dcgan, style)")
    stage_epochs: int = param(2, low=1, high=10**5, help="epochs per resolution (progressive)")
    fade_epochs: int = param(1, low=1, high=10**5, help="epochs a new resolution fades in over")
    mapping_layers: int = param(4, low=0, high=8, help="StyleGAN mapping network depth")
    mixing_prob: float = param(0.9, low=0.0, high=1.0, help="StyleGAN style-mixing share")
    truncation: float = param(0.7, low=0.0, high=1.0, help="psi of the second style sampler")
    conditional: bool = param(False, help="class-conditional G and projection D")
    batch_size: int = param(64, low=2, high=65536, help="real samples per discriminator step")


JUDGED = 1000  # inputs of each kind the discriminator's accuracy is measured on


def growth(t: float, levels: int, stage_epochs: int, fade_epochs: int) -> tuple[int, float]:
    """(stage, alpha) after `t` epochs of progressive training: stage k starts at
    epoch k * stage_epochs and its level fades in linearly over fade_epochs."""
    stage = min(int(t // stage_epochs), levels)
    if stage == 0:
        return 0, 1.0
    return stage, min(1.0, (t - stage * stage_epochs) / fade_epochs)


# --- the family -------------------------------------------------------------


def _check(cfg: GANConfig, train_x: Tensor, train_y: Tensor | None) -> None:
    if cfg.batch_size % cfg.pac:
        raise ConfigError(f"batch_size={cfg.batch_size} is not a multiple of pac={cfg.pac}")
    if len(train_x) < cfg.batch_size * cfg.n_disc:
        raise ConfigError(
            f"batch_size={cfg.batch_size} x n_disc={cfg.n_disc} exceeds the "
            f"{len(train_x)} training samples"
        )
    if cfg.progressive and cfg.arch not in GROWS:
        raise ConfigError(f"progressive growing needs arch in {GROWS}, not {cfg.arch}")
    if cfg.fade_epochs > cfg.stage_epochs:
        raise ConfigError(f"fade_epochs={cfg.fade_epochs} exceeds stage_epochs={cfg.stage_epochs}")
    if cfg.conditional and train_y is None:
        raise ConfigError("conditional=true needs a dataset with labels")
    if cfg.conditional and cfg.pac > 1:
        raise ConfigError("conditional=true does not combine with pac > 1 (one label per input)")


class GAN(GenerativeFamily):
    roles = {
        "learning_rate": ("lr_g", "lr_d"),
        "architecture": ("arch", "width", "channels", "z_dim"),
        "loss": ("loss",),
        "split": ("arch", "loss"),
    }
    Config = GANConfig
    train_metrics = frozenset({"d_loss", "g_loss", "grad_norm_g", "grad_norm_d"})
    # beside its samples: how its discriminator judges (the chapter's 50% at
    # equilibrium; BigGAN's memorising D)
    eval_metrics = frozenset({"d_acc_real", "d_acc_fake", "d_memorisation_gap"})
    packs = True
    counters = ("epoch",)

    def __init__(
        self, cfg: GANConfig, train_x: Tensor, test_x: Tensor, train_y: Tensor | None = None
    ) -> None:
        _check(cfg, train_x, train_y)
        self.cfg = cfg
        self.x, self.test_x = train_x, test_x
        self.y = train_y if cfg.conditional else None
        self.n_classes = int(train_y.max()) + 1 if self.y is not None else 0
        self.device = train_x.device
        shape = tuple(train_x.shape[1:])
        make_g, make_d = ARCHS[cfg.arch]
        self.G = make_g(cfg, shape, self.n_classes).to(self.device)
        self.D = make_d(cfg, shape, self.n_classes).to(self.device)
        if cfg.equalized_lr:
            for net in (self.G, self.D):
                equalize_lr(net)
        self.opt_g = make_optimizer(cfg.optimizer, self.G.param_groups(cfg.lr_g), cfg.lr_g, cfg)
        opt_d = cfg.optimizer if cfg.optimizer_d == "same" else cfg.optimizer_d
        self.opt_d = make_optimizer(opt_d, self.D.parameters(), cfg.lr_d, cfg)
        self.loss = LOSSES[cfg.loss]
        self.replay = (
            ReplayBuffer(cfg.replay_capacity, shape, self.device, self.y is not None)
            if cfg.replay
            else None
        )
        self.epoch = 0  # epochs trained: the growth schedule's clock
        # trains this GAN alone; a seed pack swaps in its Fused engine (models.pack)
        self.engine: Engine = Solo(
            self, {"G": self.G, "D": self.D}, {"g": self.opt_g, "d": self.opt_d}
        )
        self._grow(0.0)

    def _grow(self, t: float) -> None:
        if self.cfg.progressive:
            at = growth(t, self.G.levels, self.cfg.stage_epochs, self.cfg.fade_epochs)
            for net in self.engine.modules("G") + self.engine.modules("D"):
                net.grow(*at)

    def _z(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.cfg.z_dim, device=self.device, generator=generator)

    def _labels(self, n: int) -> Tensor | None:
        """Classes for n fakes (each member its own draw), None unconditional."""
        if self.y is None:
            return None

        def draw(g: torch.Generator | None) -> Tensor:
            return torch.randint(0, self.n_classes, (n,), device=self.device, generator=g)

        return self.engine.draw(draw)

    def _replayed(
        self, fake: Tensor, y_fake: Tensor | None, gen: torch.Generator | None
    ) -> tuple[Tensor, Tensor | None]:
        """One member's fakes with a share swapped for past ones from its buffer."""
        k = int(len(fake) * self.cfg.replay_fraction) if self.replay.size else 0
        old, old_y = self.replay.draw(k, gen) if k else (None, None)
        self.replay.push(fake, y_fake)
        if k:
            fake = torch.cat([fake[: len(fake) - k], old])
            y_fake = None if y_fake is None else torch.cat([y_fake[: len(y_fake) - k], old_y])
        return fake, y_fake

    def _d_step(self, real: Tensor, y_real: Tensor | None, b: int) -> Tensor:
        e = self.engine
        y_fake = self._labels(b)
        fake = e.call("G", e.draw(lambda g: self._z(b, g)), y_fake)
        if self.replay is not None:
            fake, y_fake = e.each(GAN._replayed, fake, y_fake)
        eps = None
        if self.loss.gradient_penalty:
            dims = len(self.x.shape) - 1
            eps = e.draw(lambda g: interpolation_weights(b, dims, self.device, g))
        return e.step("d", self._d_loss, real, y_real, fake, y_fake, eps)["d_loss"]

    def _d_loss(
        self,
        nets: dict,
        real: Tensor,
        y_real: Tensor | None,
        fake: Tensor,
        y_fake: Tensor | None,
        eps: Tensor | None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        D = nets["D"]
        loss = self.loss.d(D(real, y_real), D(fake, y_fake))
        if eps is not None:
            critic = lambda x: D(x, y_real)  # noqa: E731
            loss = loss + self.cfg.gp_weight * gradient_penalty(critic, real, fake, eps)
        return loss, {"d_loss": loss}

    def _g_step(self, n: int) -> Tensor:
        y = self._labels(n)
        z = self.engine.draw(lambda g: self._z(n, g))
        # the generator step must not move D
        return self.engine.step("g", self._g_loss, z, y, fixed=("D",))["g_loss"]

    def _g_loss(self, nets: dict, z: Tensor, y: Tensor | None) -> tuple[Tensor, dict]:
        loss = self.loss.g(nets["D"](nets["G"](z, y), y))
        return loss, {"g_loss": loss}

    def train_epoch(self) -> dict[str, Tensor]:
        """One pass over the training set in real batches; losses stay on the
        device (summed there) so the epoch costs no host sync per step. In a
        seed pack every tensor has the member dimension first."""
        b, n_disc = self.cfg.batch_size, self.cfg.n_disc
        steps = len(self.x) // b
        perm = self.engine.order(
            lambda g: torch.randperm(len(self.x), device=self.device, generator=g)
        )
        d_sum = torch.zeros(self.engine.lead, device=self.device)  # one sum per member
        g_sum = torch.zeros(self.engine.lead, device=self.device)
        for i in range(steps):
            self._grow(self.epoch + i / steps)
            idx = perm[..., i * b : (i + 1) * b]
            d_sum += self._d_step(self.x[idx], None if self.y is None else self.y[idx], b)
            if (i + 1) % n_disc == 0:
                g_sum += self._g_step(b)
        self.epoch += 1
        self._grow(float(self.epoch))  # alpha 0 of a new level draws as the old one
        return {"d_loss": d_sum / steps, "g_loss": g_sum / (steps // n_disc)}

    @torch.inference_mode()
    def evaluate(self) -> dict[str, float]:
        """D's accuracy on training reals (d_acc_real), on fresh fakes
        (d_acc_fake) and the gap between training and held-out reals
        (d_memorisation_gap; unconditional GANs only: held-out labels are not
        at hand), each on up to JUDGED inputs, D in eval mode."""
        n = min(JUDGED, len(self.test_x))
        n -= n % self.cfg.pac  # PacGAN's D judges pac inputs at once
        gen = torch.Generator(device=self.device).manual_seed(0)
        labels = self.sample_labels(n)
        inputs = {"train": (self.x[:n], None if self.y is None else self.y[:n])}
        inputs["fake"] = (self._generate(self._z(n, gen), labels, None, gen), labels)
        if self.y is None:
            inputs["held_out"] = (self.test_x[:n], None)
        self.D.eval()
        scores = {k: self.D(x, y).flatten() for k, (x, y) in inputs.items()}
        self.D.train()
        acc = d_accuracies(scores, self.loss.threshold)
        out = {"d_acc_real": acc["train"], "d_acc_fake": acc["fake"]}
        if "held_out" in acc:
            out["d_memorisation_gap"] = acc["train"] - acc["held_out"]
        return out

    def samplers(self) -> tuple[str, ...]:
        return self.G.samplers()

    @classmethod
    def is_sampler(cls, name: str) -> bool:
        return SAMPLER.fullmatch(name) is not None

    def sample_labels(self, n: int) -> Tensor | None:
        """Balanced: sample i is asked for class i mod n_classes."""
        return None if self.y is None else balanced_labels(n, self.n_classes, self.device)

    @torch.inference_mode()
    def sample(
        self, n: int, generator: torch.Generator | None = None, sampler: str | None = None
    ) -> Tensor:
        return self._generate(self._z(n, generator), self.sample_labels(n), sampler, generator)

    def latent_ends(self, n: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Pairs of latent draws (and, conditional, one label per path)."""
        z = self._z(2 * n, generator)
        labels = self.sample_labels(n)
        return (z[:n], z[n:]) if labels is None else (z[:n], z[n:], labels)

    @torch.inference_mode()
    def decode_path(self, ends: tuple[Tensor, ...], t: Tensor) -> Tensor:
        """slerp in Z, as StyleGAN's path length; a StyleGAN's noise inputs
        are drawn from one seed at every call, so only t moves the images."""
        y = ends[2] if len(ends) > 2 else None
        noise = torch.Generator(device=self.device).manual_seed(0)
        return self._generate(slerp(ends[0], ends[1], t), y, None, noise)

    def draw_codes(self, n: int, generator: torch.Generator) -> Tensor | None:
        """z draws; None for a conditional GAN, whose class comes from its label."""
        return None if self.y is not None else self._z(n, generator)

    @torch.inference_mode()
    def decode_codes(self, z: Tensor) -> Tensor:
        noise = torch.Generator(device=self.device).manual_seed(0)  # as decode_path
        return self._generate(z, None, None, noise)

    def _generate(
        self, z: Tensor, labels: Tensor | None, sampler: str | None, gen: torch.Generator | None
    ) -> Tensor:
        """G in eval mode (batch norm's running statistics), 1000 at a time."""
        self.G.eval()
        out = []
        for chunk in torch.arange(len(z), device=self.device).split(1000):
            y = None if labels is None else labels[chunk]
            out.append(self.G(z[chunk], y, sampler, gen))
        self.G.train()
        return torch.cat(out)

    def state_dict(self) -> dict:
        return {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "replay": self.replay.state_dict() if self.replay is not None else None,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if self.replay is not None and state["replay"] is not None:
            self.replay.load_state_dict(state["replay"])
        self.epoch = int(state["epoch"])
        self._grow(float(self.epoch))
