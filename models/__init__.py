"""Model families (torch only). FAMILIES is the one registry of them."""

from models.family import Family
from models.gan import GAN

FAMILIES: dict[str, type[Family]] = {
    "gan": GAN,
}

__all__ = ["FAMILIES", "Family"]
