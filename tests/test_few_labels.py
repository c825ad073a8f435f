"""Pretraining with few labels (the chapter's exercise): a pretrained
encoder fine-tuned with a linear head against the same network trained
from scratch on the same few labelled images."""

from __future__ import annotations

import torch
from torch import nn

from scoring.few_labels import PROBE_LR, classifier_accuracy, few_label_accuracies, fresh

DIM, CLASSES = 400, 10


def _noisy_classes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of DIM Gaussian coordinates, every class alike; class c adds 4
    to coordinate c."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % CLASSES
    x = torch.randn(n, DIM, generator=gen)
    x[torch.arange(n), y] += 4.0
    return x, y


def _separating_encoder() -> nn.Module:
    """Pretrained on the answer: its codes are the ten signal coordinates, so
    a code's largest entry is its class (perfectly separable in the limit)."""
    enc = nn.Linear(DIM, CLASSES)
    with torch.no_grad():
        enc.weight.zero_()
        enc.weight[:, :CLASSES] = torch.eye(CLASSES)
        enc.bias.zero_()
    return enc


def test_finetuning_a_separating_encoder_beats_training_it_from_scratch():
    """On 30 labelled inputs in 400 noisy dimensions, the encoder whose codes
    separate the classes is near perfect after fine-tuning, while the same
    network from a fresh initialisation fits the noise; neither run changes
    the encoder it was given."""
    encoder = _separating_encoder()
    before = encoder.weight.clone()
    train, test = _noisy_classes(30, seed=0), _noisy_classes(1000, seed=1)
    got = few_label_accuracies(encoder, train, test, CLASSES, seed=0)
    assert got["finetune_accuracy"] > 0.7  # (3 images a class: the head overfits a little)
    assert got["scratch_accuracy"] < got["finetune_accuracy"] - 0.3
    assert torch.equal(encoder.weight, before)
    # from scratch means a fresh draw of the same layers, not the trained weights
    assert not torch.equal(fresh(encoder, 0).weight, before)


def test_the_accuracy_is_the_trained_classifiers_share_of_right_answers():
    """Deterministic for a seed, and on a test set the trained classifier
    cannot get wrong (each input the pure signal of its class) exactly 1."""
    encoder = _separating_encoder()
    train = _noisy_classes(200, seed=0)
    pure_y = torch.arange(CLASSES).repeat(5)
    pure = (4.0 * nn.functional.one_hot(pure_y, DIM).float(), pure_y)
    phases = [(300, 0.0, PROBE_LR)]  # the head alone, on the frozen encoder
    assert classifier_accuracy(encoder, train, pure, CLASSES, 0, phases) == 1.0
    test = _noisy_classes(500, seed=2)
    one = classifier_accuracy(encoder, train, test, CLASSES, 3, phases)
    assert one == classifier_accuracy(encoder, train, test, CLASSES, 3, phases)
