"""The trial contract every model family implements, so one trainable runs them all."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor


class Family(Protocol):
    Config: ClassVar[type]  # the typed config dataclass next to the model
    generates: ClassVar[bool]  # whether sample() exists and samples are scored

    def __init__(self, cfg: Any, train_x: Tensor, test_x: Tensor) -> None: ...

    def train_epoch(self) -> dict[str, Tensor | float]:
        """One pass over the training data; scalar metrics, as 0-d tensors left
        on the device so the caller reads them with one sync per epoch."""

    def evaluate(self) -> dict[str, float]:
        """The family's own held-out metrics (reconstruction, KL, ...)."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples in data space: images in [0, 1] as (n, C, H, W), points as (n, 2)."""

    # Optional: sample_variants() -> {name: sample() keyword arguments}, for a
    # family that scores several samplers per evaluation (diffusion: DDIM steps
    # and eta). Each is logged with the name as suffix; the first also unsuffixed.

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...
