"""Sample pictures logged at each evaluation: an image grid, or a scatter of
2-D samples over the mixture's modes."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from study.tracking import TrialRun


def save_samples_png(samples: Tensor, path: Path, modes: Tensor | None = None) -> None:
    samples = samples.detach().float().cpu()
    if samples.dim() == 4:
        from torchvision.utils import save_image

        save_image(samples[:64].clamp(0, 1), str(path), nrow=8, padding=2)
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


def log_samples(run: TrialRun, samples: Tensor, epoch: int, modes: Tensor | None) -> None:
    """The picture of an evaluation's samples, as samples/samples_epochNNNN.png."""
    with tempfile.TemporaryDirectory() as d:
        png = Path(d) / f"samples_epoch{epoch:04d}.png"
        save_samples_png(samples, png, modes)
        run.log_file(png, "samples")
