"""The trial contract every model family implements, so one trainable runs
them all. Two kinds: a `Family` trains and reports its own metrics (an
autoencoder that only reconstructs); a `GenerativeFamily` also draws samples,
which the trainable scores with the sample-metric registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

# The roles a family's settings can play. Figures and reports ask a family
# which of its settings plays a role (`Family.roles`) instead of knowing any
# family's names; each role maps to settings of the family's Config, the
# main one first.
ROLES = {
    "learning_rate": "the optimisers' learning rates (a GAN's generator's first)",
    "architecture": "the settings that choose or size the networks",
    "loss": "the training objective",
    "split": "the knobs a figure splits its points by: colour first, then marker",
    "regulariser": "the kind of regulariser on the codes",
    "weight": "the regulariser's weight",
    "target": "what the regulariser aims at",
    "noise": "the input corruption: its level, then its kind",
    "latent": "the size of the latent space or of the codebook",
    "schedule": "a schedule over training (of a weight, a temperature or the noise)",
    "steps": "the diffusion steps T",
    "condition": "the conditioning dropout",
}


# A collapse rule: why one evaluation's metrics count as collapsed (one line),
# or None. A family lists the rules that apply to it, first match wins.
CollapseRule = Callable[[dict[str, float], int], str | None]


def mode_rule(metrics: dict[str, float], n_modes: int) -> str | None:
    """A generating family's samples cover under half of the classes/modes."""
    covered = metrics.get("modes_covered", metrics.get("modes_captured"))
    if covered is not None and covered < n_modes / 2:
        return f"samples cover {covered:g} of {n_modes} modes"
    return None


class Family(ABC):
    Config: ClassVar[type]  # the typed config dataclass next to the model
    # role -> settings of Config that play it (keys from ROLES)
    roles: ClassVar[dict[str, tuple[str, ...]]] = {}
    # setting -> (another setting, the value under which the first acts at all)
    acts_when: ClassVar[dict[str, tuple[str, Any]]] = {}
    # every name train_epoch() and evaluate() may return; the harness checks a
    # study's metrics against them before anything starts
    train_metrics: ClassVar[frozenset[str]]
    eval_metrics: ClassVar[frozenset[str]]
    # whether K seeds train as one fused model (models.pack): the family then
    # runs its steps through self.engine, and `counters` names the plain
    # attributes (epochs, steps) each member copies from the pack's first
    packs: ClassVar[bool] = False
    counters: ClassVar[tuple[str, ...]] = ()
    # when an evaluation counts as collapsed (scoring.outcomes combines them)
    collapse_rules: ClassVar[tuple[CollapseRule, ...]] = ()

    @abstractmethod
    def __init__(
        self, cfg: Any, train_x: Tensor, test_x: Tensor, train_y: Tensor | None = None
    ) -> None:
        """Build from the config and the data, already on the trial's device
        (`train_y`: the training labels, for a family that can condition on
        them); a setting that cannot work with this data raises ConfigError."""

    @abstractmethod
    def train_epoch(self) -> dict[str, Tensor | float]:
        """One pass over the training data; scalar metrics, as 0-d tensors left
        on the device so the caller reads them with one sync per epoch."""

    @abstractmethod
    def evaluate(self) -> dict[str, float]:
        """The family's own held-out metrics (reconstruction, KL, ...)."""

    @abstractmethod
    def state_dict(self) -> dict:
        """Networks and optimisers: what a checkpoint must hold to continue."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None: ...

    def networks(self) -> dict[str, torch.nn.Module]:
        """The family's networks by name (lower case), for the diagnostics
        that read weights: by default every module it holds as an attribute."""
        return {k.lower(): v for k, v in vars(self).items() if isinstance(v, torch.nn.Module)}

    # --- optional: what a family with a latent space offers the probes ------

    def reconstruction_rows(self, x: Tensor) -> list[Tensor]:
        """Rows of the reconstruction picture for held-out inputs x: the inputs,
        what the model was given if it differs (a denoiser's corrupted input),
        and the reconstructions. Empty: the family does not reconstruct."""
        return []

    def probe_codes(self, x: Tensor) -> Tensor | None:
        """Frozen codes of x, (N, D), for the linear probe; None: no encoder."""
        return None

    def encoder_network(self) -> torch.nn.Module | None:
        """The trained module from inputs to codes, for a classifier that
        reuses it (fine-tuned with few labels); None: no encoder."""
        return None

    def anomaly_scores(self, x: Tensor) -> Tensor | None:
        """Each input's anomaly score, (N,): its reconstruction error (mean
        squared, per pixel); None: the family does not reconstruct."""
        return None

    def latent_ends(self, n: int, generator: torch.Generator) -> tuple[Tensor, ...] | None:
        """The ends of n latent paths (encoded held-out pairs, or latent
        draws), each tensor's first dimension n; None: no latent space."""
        return None

    def decode_path(self, ends: tuple[Tensor, ...], t: Tensor) -> Tensor:
        """Data at positions t in [0, 1] (N,) along the paths `ends` (from
        latent_ends); deterministic, so t and t + epsilon differ only by t."""
        raise NotImplementedError

    # latent arithmetic: codes as the decoder takes them, from an encoder
    # (encode_codes) or, for a family without one, from the prior (draw_codes)

    def encode_codes(self, x: Tensor) -> Tensor | None:
        """The codes of x that decode_codes turns back into data; None: no encoder."""
        return None

    def draw_codes(self, n: int, generator: torch.Generator) -> Tensor | None:
        """n latent draws that decode_codes turns into samples, for a family
        without an encoder (an unconditional GAN's z); None: none such."""
        return None

    def decode_codes(self, z: Tensor) -> Tensor:
        """Data from codes (deterministic: the same code, the same data)."""
        raise NotImplementedError


class GenerativeFamily(Family):
    collapse_rules = (mode_rule,)

    @abstractmethod
    def sample(
        self, n: int, generator: torch.Generator | None = None, sampler: str | None = None
    ) -> Tensor:
        """n samples in data space: images in [0, 1] as (n, C, H, W), points as
        (n, 2); `sampler` names one of samplers() (None: the main one)."""

    def sample_labels(self, n: int) -> Tensor | None:
        """The class each of sample(n)'s samples was asked for (a conditional
        model), or None; scored by the metrics that need labels."""
        return None

    def samplers(self) -> tuple[str, ...]:
        """Named samplers scored at every evaluation, the first the main one;
        each one's per-sampler metrics are logged as METRIC_NAME. Empty: one
        unnamed sampler."""
        return ()

    def final_samplers(self) -> tuple[str, ...]:
        """Named samplers scored at the final evaluation only, after the
        others: what a stage trained after the model (final_stage) offers."""
        return ()

    def final_stage(self) -> dict[str, float]:
        """Train what comes after the model (a learned prior over its codes),
        at the final evaluation, before its samplers are scored; its metrics."""
        return {}

    @classmethod
    def is_sampler(cls, name: str) -> bool:
        """Whether `name` can name a sampler of this family (for name checks)."""
        return False


def generates(family: type[Family]) -> bool:
    return issubclass(family, GenerativeFamily)


def main_sampler(family: Family) -> str:
    """The sampler a model's unsuffixed sample metrics are of ("": its one
    unnamed sampler, or none at all)."""
    named = family.samplers() if isinstance(family, GenerativeFamily) else ()
    return named[0] if named else ""


def balanced_labels(n: int, n_classes: int, device: torch.device) -> Tensor:
    """What a conditional model's samples are asked for: sample i is class
    i mod n_classes, so every class is scored alike."""
    return torch.arange(n, device=device) % n_classes


def has_latent_space(family: type[Family]) -> bool:
    return family.latent_ends is not Family.latent_ends


def encodes(family: type[Family]) -> bool:
    return family.probe_codes is not Family.probe_codes


def does_arithmetic(family: type[Family]) -> bool:
    """Whether codes of the family can be shifted and decoded (latent arithmetic)."""
    return family.decode_codes is not Family.decode_codes


def reconstructs(family: type[Family]) -> bool:
    return family.anomaly_scores is not Family.anomaly_scores
