"""Latent arithmetic (the chapter's headline: attribute vectors between
group means, added to codes and decoded): arithmetic_success, checked on toy
latent spaces whose answer is known, and on a trained autoencoder."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from datasources import load_dataset
from scoring.probes import attribute_shifts, class_pairs, shift_success
from scoring.registry import ShiftedImages, evaluate_latent, predict_classes
from study.trial.probes import PER_PAIR, latent_arithmetic

DATASET = "digits"


class ToySpace:
    """A latent space of one-hot class codes (plus noise) whose decoder draws
    a held-out image of the class a code points at (one the classifier reads
    right), or, `random`, any held-out image whatever the code."""

    def __init__(self, encoder: bool, random: bool = False) -> None:
        self.data = load_dataset(DATASET)
        x, y = self.data.test_x, self.data.test_y
        right = predict_classes(x, DATASET) == y
        self.bank = torch.stack([x[right & (y == c)][0] for c in range(10)])
        self.encoder, self.random = encoder, random
        self.gen = torch.Generator().manual_seed(0)

    def encode_codes(self, x: Tensor) -> Tensor | None:
        if not self.encoder:
            return None
        n = len(x)
        y = self.data.train_y[:n] if n != len(self.data.test_x) else self.data.test_y
        return 3 * torch.nn.functional.one_hot(y, 10).float() + 0.3 * torch.randn(n, 10)

    def draw_codes(self, n: int, generator: torch.Generator) -> Tensor:
        y = torch.randint(10, (n,), generator=generator)
        return 3 * torch.nn.functional.one_hot(y, 10).float() + 0.3 * torch.randn(n, 10)

    def decode_codes(self, z: Tensor) -> Tensor:
        if self.random:
            return self.data.test_x[
                torch.randint(len(self.data.test_x), (len(z),), generator=self.gen)
            ]
        return self.bank[z.argmax(1)]


@pytest.mark.parametrize("encoder", [True, False], ids=["encoder", "latent draws"])
def test_arithmetic_success_is_one_for_a_decoder_of_the_class_asked_for_and_chance_at_random(
    encoder,
):
    """Codes that say their class and a decoder that draws that class: every
    shifted code lands in its target class, whether the codes come from an
    encoder with the data's labels or from latent draws the classifier
    labels by what they decode to (a GAN's way). A decoder that ignores its
    code scores the classifier's chance, 1 in 10.
    The picture holds a row per pair: two means, three codes, three shifted."""
    torch.manual_seed(0)
    pictures: dict = {}
    space = ToySpace(encoder)
    shifted = latent_arithmetic(space, space.data, seed=0, pictures=pictures)
    success = evaluate_latent(DATASET, shifts=shifted)["arithmetic_success"]
    assert success == 1.0
    images, per_row = pictures["arithmetic"]  # a column per pair, 8 rows
    assert per_row == 10 and images.shape == (10 * 8, 1, 8, 8)
    held = space.data.test_y if encoder else None
    if held is not None:  # each pair shifts up to PER_PAIR held-out codes of its source
        assert len(shifted.images) == sum(min(PER_PAIR, int((held == a).sum())) for a in range(10))
    assert shifted.n_pairs == 10
    random = ToySpace(encoder, random=True)
    chance = latent_arithmetic(random, random.data, seed=0, pictures={})
    assert abs(evaluate_latent(DATASET, shifts=chance)["arithmetic_success"] - 0.1) < 0.05


def test_attribute_vectors_are_differences_of_class_means_and_absent_classes_count():
    """The vector of pair (a, b) is mean(b) - mean(a) of the fit codes, added
    to the held-out codes of a only; a pair whose target never appears among
    the fit codes scores 0 and still counts, one whose source has no
    held-out code is not scored."""
    fit = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0]])
    fit_y = torch.tensor([0, 0, 1, 1])
    held = torch.tensor([[1.0, 1.0], [5.0, 5.0], [7.0, 7.0]])
    held_y = torch.tensor([0, 1, 0])
    pairs = [(0, 1), (1, 2), (2, 0)]  # class 2: no fit code and no held-out code
    sh = attribute_shifts(fit, fit_y, held, held_y, pairs, per_pair=5)
    vector = torch.tensor([-1.0, 5.0])  # (0, 5) - (1, 0)
    assert torch.equal(sh.codes, held[[0, 2]] + vector)
    assert torch.equal(sh.originals, held[[0, 2]])
    assert sh.pair.tolist() == [0, 0] and sh.targets.tolist() == [1, 1]
    assert torch.equal(sh.means[0], torch.tensor([[1.0, 0.0], [0.0, 5.0]]))
    assert sh.n_pairs == 2  # (0, 1) and (1, 2); (2, 0) has no source to shift
    # one of the two shifted rows reaches its class: pair (0, 1) scores 1/2,
    # pair (1, 2) has no vector and scores 0
    assert shift_success(torch.tensor([1, 0]), sh.targets, sh.pair, sh.n_pairs) == 0.25
    assert class_pairs(3) == [(0, 1), (1, 2), (2, 0)] and len(class_pairs(1000)) == 10
    empty = ShiftedImages(torch.zeros(0, 1, 8, 8), sh.targets[:0], sh.pair[:0], 0)
    assert math.isnan(evaluate_latent(DATASET, shifts=empty)["arithmetic_success"])
