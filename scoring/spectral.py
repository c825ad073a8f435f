"""The top singular value (sigma0) of a network's weights, as BigGAN tracks
it (Brock et al. 2019, section 4): by power iteration, each weight keeping
its vector from one measurement to the next, so a warm measurement
(weights that moved little) converges in a few matrix-vector products. The
first measurement, and one whose weight moved too far to converge in
MAX_ITERS, takes an SVD instead. A
weight of more than two dimensions (a convolution's) is read as its output
dimension by the rest, as torch.nn.utils.spectral_norm reads it."""

from __future__ import annotations

import torch
from torch import Tensor, nn

MAX_ITERS = 200  # warm power iterations before falling back to an SVD
# Stop once v is (nearly) a right singular vector: ||W^T u - sigma v|| at most
# this share of sigma. Sigma's own change between iterations is no test: with
# two close top singular values it creeps by less than any tolerance while
# still a percent off.
TOLERANCE = 1e-4


def as_matrix(module: nn.Module, w: Tensor) -> Tensor:
    """The weight as (out, in...) the way spectral_norm reads it: a
    transposed convolution's output dimension is its second."""
    if isinstance(module, nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d):
        w = w.transpose(0, 1)
    return w.reshape(w.shape[0], -1)


class TopSingular:
    """Persistent power iteration over the weights of networks."""

    def __init__(self) -> None:
        self.vectors: dict[str, Tensor] = {}
        self.svds = 0  # measurements that needed a full SVD

    @torch.no_grad()
    def sigma(self, key: str, w: Tensor) -> float:
        """sigma0 of the matrix w; `key` names its persistent vector."""
        w = w.detach().float()
        v = self.vectors.get(key)
        if v is not None and v.shape == (w.shape[1],):
            for _ in range(MAX_ITERS):
                u = w @ v
                u = u / u.norm().clamp_min(1e-12)
                x = w.T @ u
                sigma = float(x.norm())  # = u^T W v, the Rayleigh estimate
                residual = float((x - sigma * v).norm())
                v = x / max(sigma, 1e-12)
                if residual <= TOLERANCE * sigma:
                    self.vectors[key] = v
                    return sigma
        # Cold, or the weight moved too far for the warm vector: one SVD.
        # From a random vector power iteration needs thousands of steps when
        # the top two singular values are close, as in a fresh layer.
        _, s, vh = torch.linalg.svd(w, full_matrices=False)
        self.svds += 1
        self.vectors[key] = vh[0]
        return float(s[0])

    def top(self, prefix: str, net: nn.Module) -> tuple[float, str]:
        """(the largest sigma0 of any weight of `net`, that weight's name);
        (0, "") for a network without a weight matrix."""
        best, where = 0.0, ""
        for mod_name, module in net.named_modules():
            for p_name, p in module.named_parameters(recurse=False):
                if p.dim() < 2:
                    continue
                name = f"{mod_name}.{p_name}" if mod_name else p_name
                value = self.sigma(f"{prefix}/{name}", as_matrix(module, p))
                if value > best:
                    best, where = value, name
        return best, where
