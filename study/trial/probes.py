"""The latent probes of one evaluation, for a family with a latent space:
reconstructions beside their inputs, interpolation paths, path_length and
the linear probe. The same held-out inputs and paths at every evaluation, so
pictures and numbers compare over epochs."""

from __future__ import annotations

import torch
from torch import Tensor

from datasources import Dataset
from models import Family
from scoring.probes import PATH_EPSILON
from scoring.registry import AnomalyScores, ProbeCodes, evaluate_latent

RECON_SHOWN = 16  # held-out inputs in the reconstruction picture (one row each kind)
PATHS_SHOWN, STEPS_SHOWN = 8, 10  # interpolation picture: a row per path


@torch.inference_mode()
def latent_probes(
    family: Family,
    data: Dataset,
    n_paths: int,
    probe_labels: int,
    seed: int,
    anomaly_class: int = -1,
) -> tuple[dict[str, float], dict[str, tuple[Tensor, int]]]:
    """(metrics, pictures: kind -> (images, images per row)) on image data;
    nothing for families without a latent space or on 2-D data. With an
    `anomaly_class` (left out of training), anomaly_auroc of the held-out
    reconstruction errors."""
    if not data.is_image:
        return {}, {}
    pictures: dict[str, tuple[Tensor, int]] = {}
    if rows := family.reconstruction_rows(data.test_x[:RECON_SHOWN]):
        pictures["reconstructions"] = (torch.cat(rows), len(rows[0]))
    device = data.test_x.device
    gen = torch.Generator(device=device).manual_seed(seed + 2)
    paths = None
    if (ends := family.latent_ends(n_paths, gen)) is not None:
        t = torch.rand(n_paths, generator=gen, device=device)
        paths = (family.decode_path(ends, t), family.decode_path(ends, t + PATH_EPSILON))
        shown = tuple(e[:PATHS_SHOWN].repeat_interleave(STEPS_SHOWN, 0) for e in ends)
        along = torch.linspace(0, 1, STEPS_SHOWN, device=device)
        steps = along.repeat(len(shown[0]) // STEPS_SHOWN)
        pictures["interpolations"] = (family.decode_path(shown, steps), STEPS_SHOWN)
    codes = None
    if (train_codes := family.probe_codes(data.train_x[:probe_labels])) is not None:
        test_codes = family.probe_codes(data.test_x)
        codes = ProbeCodes(train_codes, data.train_y[:probe_labels], test_codes, data.test_y)
    anomaly = None
    if anomaly_class >= 0 and (scores := family.anomaly_scores(data.test_x)) is not None:
        anomaly = AnomalyScores(scores, data.test_y == anomaly_class)
    return evaluate_latent(data.name, paths, codes, str(device), anomaly), pictures
