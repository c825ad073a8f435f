"""Model families (torch only). FAMILIES is the one registry of them."""

from models.autoencoder import Autoencoder
from models.diffusion import Diffusion
from models.dvae import DiscreteVAE
from models.family import (
    Family,
    GenerativeFamily,
    does_arithmetic,
    encodes,
    generates,
    has_latent_space,
    main_sampler,
    reconstructs,
)
from models.gan import GAN
from models.latent_diffusion import LatentDiffusion
from models.vae import VAE
from models.vqvae import VQVAE

FAMILIES: dict[str, type[Family]] = {
    "gan": GAN,
    "autoencoder": Autoencoder,
    "vae": VAE,
    "dvae": DiscreteVAE,
    "vqvae": VQVAE,
    "diffusion": Diffusion,
    "latent_diffusion": LatentDiffusion,
}

__all__ = [
    "FAMILIES",
    "Family",
    "GenerativeFamily",
    "encodes",
    "generates",
    "has_latent_space",
    "does_arithmetic",
    "main_sampler",
    "reconstructs",
]
