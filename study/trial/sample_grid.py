"""Pictures logged at each evaluation: image grids (samples, reconstructions
beside their inputs, interpolations), or a scatter of 2-D samples over the
mixture's modes."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from study.tracking.trial_run import TrialRun


def save_samples_png(
    samples: Tensor, path: Path, modes: Tensor | None = None, nrow: int = 8
) -> None:
    """An image grid of the first 8 rows of `nrow` images, or a scatter."""
    samples = samples.detach().float().cpu()
    if samples.dim() == 4:
        from torchvision.utils import save_image

        save_image(samples[: 8 * nrow].clamp(0, 1), str(path), nrow=nrow, padding=2)
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4, label="samples")
    if modes is not None:
        m = modes.cpu()
        ax.scatter(m[:, 0], m[:, 1], s=30, marker="x", c="red", label="modes")
        lim = float(torch.max(m.abs())) * 1.5
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim))
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def log_picture(
    run: TrialRun,
    images: Tensor,
    kind: str,
    epoch: int,
    nrow: int = 8,
    modes: Tensor | None = None,
) -> None:
    """One picture of an evaluation, as KIND/KIND_epochNNNN.png (kind:
    samples, reconstructions, interpolations)."""
    with tempfile.TemporaryDirectory() as d:
        png = Path(d) / f"{kind}_epoch{epoch:04d}.png"
        save_samples_png(images, png, modes, nrow)
        run.log_file(png, kind)
