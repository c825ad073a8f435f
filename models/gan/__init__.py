"""The GAN family in a room of its own: `model.py` the family (its config,
training step, losses and growth schedule), `archs.py` the architectures by
name, `nets.py` the growable network stacks, `parts.py` the losses and
stabilisers, `stylegan.py` the StyleGAN generator."""

from models.gan.model import GAN, GANConfig, growth

__all__ = ["GAN", "GANConfig", "growth"]
