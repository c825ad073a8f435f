"""The latent probes of one evaluation, for a family with a latent space:
reconstructions beside their inputs, interpolation paths, path_length and
the linear probe; and, at the final evaluation, latent arithmetic. The same
held-out inputs and paths at every evaluation, so pictures and numbers
compare over epochs."""

from __future__ import annotations

import torch
from torch import Tensor

from datasources import Dataset
from models import Family
from scoring.probes import PATH_EPSILON, Shifts, attribute_shifts, class_pairs
from scoring.registry import (
    AnomalyScores,
    ProbeCodes,
    ShiftedImages,
    evaluate_latent,
    predict_classes,
)

RECON_SHOWN = 16  # held-out inputs in the reconstruction picture (one row each kind)
PATHS_SHOWN, STEPS_SHOWN = 8, 10  # interpolation picture: a row per path
# latent arithmetic: class means from this many encoded training images (about
# 100 a class on digits) or, without an encoder, from the first half of
# 2 x ARITHMETIC_DRAWS latent draws the classifier labels (a GAN generates and
# the classifier reads each: about 0.5 s of CPU a thousand); each pair shifts
# up to PER_PAIR held-out codes
ARITHMETIC_FIT, ARITHMETIC_DRAWS, PER_PAIR = 1000, 500, 50
SHIFTS_SHOWN = 3  # arithmetic picture, a column per pair: the two means, 3 codes, 3 shifted


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


@torch.inference_mode()
def arithmetic_probe(
    family: Family, data: Dataset, seed: int
) -> tuple[dict[str, float], dict[str, tuple[Tensor, int]]]:
    """arithmetic_success and its picture, on image data for a family whose
    codes decode; nothing otherwise. Scored at a trial's final evaluation
    only: it decodes up to 500 shifted codes and, for a GAN, first generates
    and labels 1000 samples (0.5 s of CPU an evaluation, which at every
    evaluation of a seed pack's members added up)."""
    pictures: dict[str, tuple[Tensor, int]] = {}
    if not data.is_image or (shifts := latent_arithmetic(family, data, seed, pictures)) is None:
        return {}, {}
    device = str(data.test_x.device)
    return evaluate_latent(data.name, device=device, shifts=shifts), pictures


def arithmetic_codes(
    family: Family, data: Dataset, seed: int
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """(fit codes, their classes, held-out codes, their classes): an
    encoder's codes of training images and of the held-out split with their
    labels, or latent draws labelled by the classifier of what they decode
    to; None without either."""
    if (fit := family.encode_codes(data.train_x[:ARITHMETIC_FIT])) is not None:
        return fit, data.train_y[:ARITHMETIC_FIT], family.encode_codes(data.test_x), data.test_y
    gen = torch.Generator(device=data.test_x.device).manual_seed(seed + 3)
    if (z := family.draw_codes(2 * ARITHMETIC_DRAWS, gen)) is None:
        return None
    y = predict_classes(family.decode_codes(z), data.name)
    n = ARITHMETIC_DRAWS
    return z[:n], y[:n], z[n:], y[n:]


def latent_arithmetic(
    family: Family, data: Dataset, seed: int, pictures: dict[str, tuple[Tensor, int]]
) -> ShiftedImages | None:
    """Attribute vectors between class means added to held-out codes and
    decoded (scoring.probes.attribute_shifts), and their picture; None for a
    family whose codes cannot be shifted and decoded."""
    if (found := arithmetic_codes(family, data, seed)) is None:
        return None
    pairs = class_pairs(data.n_classes)
    shifts = attribute_shifts(*found, pairs, PER_PAIR)
    images = family.decode_codes(shifts.codes) if len(shifts.codes) else data.test_x[:0]
    if (picture := arithmetic_picture(family, shifts, images)) is not None:
        pictures["arithmetic"] = picture
    return ShiftedImages(images, shifts.targets, shifts.pair, shifts.n_pairs)


def arithmetic_picture(family: Family, shifts: Shifts, images: Tensor) -> tuple[Tensor, int] | None:
    """(images, images per row): a column per pair with SHIFTS_SHOWN rows
    of its own, 8 rows in all: its source and target class means decoded,
    SHIFTS_SHOWN held-out codes decoded, and the same codes plus the
    attribute vector decoded (the chapter's figure, one pair a column)."""
    columns = []
    for p in shifts.pair.unique():
        at = (shifts.pair == p).nonzero().flatten()[:SHIFTS_SHOWN]
        if len(at) == SHIFTS_SHOWN:
            means, codes = family.decode_codes(shifts.means[p]), shifts.originals[at]
            columns.append(torch.cat([means, family.decode_codes(codes), images[at]]))
    if not columns:
        return None
    return torch.stack(columns, 1).flatten(0, 1), len(columns)  # row by row
