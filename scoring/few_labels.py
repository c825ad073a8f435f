"""Pretraining with few labels, as the chapter does it (its exercise: reuse
an autoencoder's lower layers in a classifier trained on 500 labelled
images; does pretraining help?): the pretrained encoder with a linear head
fine-tuned on N labelled images, against the same network trained from a
fresh initialisation on the same images. Plain torch: the loop is a dozen
lines on the trial's device, and no library offers this protocol."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEW_LABEL_METRICS = ("finetune_accuracy", "scratch_accuracy")
# the same budget of steps whatever N (N = 500: 64 passes over the images),
# long enough for a fresh network to fit its few images
FEW_LABEL_STEPS = 500
FEW_LABEL_BATCH = 64
# Adam's rates. From scratch: every layer at SCRATCH_LR for all the steps.
# Fine-tuning, as the chapter advises for very few labels (freeze the
# pretrained layers first) and as linear probing then fine-tuning does it
# (Kumar et al. 2022): the head alone on the frozen encoder for the first
# half at a linear probe's rate, then every layer at SCRATCH_LR. Tuned at
# once from a fresh head, the encoder's features are overwritten before the
# head has learnt to read them (measured: an encoder whose codes separate
# the classes, tuned at 1e-3 from the first step on 30 noisy images, 18 %
# held out; probed first, 79 %). On a denoising autoencoder's encoder and
# 500 digits, tuning the encoder at a tenth of this rate scored 0.84 against
# 0.86: too timid to be the default.
SCRATCH_LR, PROBE_LR = 1e-3, 1e-2
Phases = list[tuple[int, float, float]]  # (steps, encoder's rate, head's rate)


def fresh(net: nn.Module, seed: int) -> nn.Module:
    """A copy of net with every layer re-initialised (torch's own defaults)."""
    out = copy.deepcopy(net)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in out.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return out


def classifier_accuracy(
    encoder: nn.Module,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    n_classes: int,
    seed: int,
    phases: Phases,
) -> float:
    """Train a copy of `encoder` with a linear head on its flattened output
    on the labelled `train` images (cross-entropy, Adam, shuffled batches
    pass after pass, through `phases`) and return its accuracy on `test`."""
    (x, y), (test_x, test_y) = train, test
    torch.manual_seed(seed)  # the head's initialisation
    body = copy.deepcopy(encoder).train()
    with torch.no_grad():
        width = body(x[:2]).flatten(1).shape[1]
    model = nn.Sequential(body, nn.Flatten(), nn.Linear(width, n_classes)).to(x.device)
    opt = torch.optim.Adam([{"params": body.parameters()}, {"params": model[-1].parameters()}])
    order = torch.Generator(device=x.device).manual_seed(seed)
    batches: list[Tensor] = []
    for steps, encoder_lr, head_lr in phases:
        opt.param_groups[0]["lr"], opt.param_groups[1]["lr"] = encoder_lr, head_lr
        for _ in range(steps):
            if not batches:  # a new pass
                batches = list(
                    torch.randperm(len(x), generator=order, device=x.device).split(FEW_LABEL_BATCH)
                )
            idx = batches.pop()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        right = [
            (model(c).argmax(1) == t).sum()
            for c, t in zip(test_x.split(1000), test_y.split(1000), strict=True)
        ]
    return int(sum(right)) / len(test_x)


def few_label_accuracies(
    encoder: nn.Module,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    n_classes: int,
    seed: int,
) -> dict[str, float]:
    """finetune_accuracy (the pretrained encoder: its head probed, then both
    fine-tuned at the scratch rate) and scratch_accuracy (the same network re-initialised, then
    trained on the same images in the same order for as many steps)."""
    half = FEW_LABEL_STEPS // 2
    tune = [(half, 0.0, PROBE_LR), (FEW_LABEL_STEPS - half, SCRATCH_LR, SCRATCH_LR)]
    with torch.inference_mode(False), torch.enable_grad():
        tuned = classifier_accuracy(encoder, train, test, n_classes, seed, tune)
        scratch = classifier_accuracy(
            fresh(encoder, seed),
            train,
            test,
            n_classes,
            seed,
            [(FEW_LABEL_STEPS, SCRATCH_LR, SCRATCH_LR)],
        )
    return {"finetune_accuracy": tuned, "scratch_accuracy": scratch}
