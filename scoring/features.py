"""Feature extractors for sample-quality metrics, registered in one place.

Each image dataset is scored in the features of its own classifier (a small
CNN, the established practice for MNIST-like data; scoring.classifier: the
same shipped bytes on every machine for the offline datasets), kept in the
on-disk cache that trials share, and identified by the SHA-256 of its file.
A dataset's spec names its extractor (`DatasetSpec.extractor`): Stacked
MNIST applies the mnist5k classifier to each channel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, wraps
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datasources import dataset_spec
from scoring.classifier import BATCH, VERSION, DomainClassifier, classifier_file, sha256


@dataclass(frozen=True)
class Extractor:
    name: str
    weights_sha256: str
    accuracy: float  # held-out accuracy of the classifier behind it
    _features: Callable[[Tensor], Tensor]
    _logits: Callable[[Tensor], Tensor]

    @torch.inference_mode()
    def features(self, x: Tensor) -> Tensor:
        return torch.cat([self._features(c) for c in x.split(BATCH)])

    @torch.inference_mode()
    def predict(self, x: Tensor) -> Tensor:
        return torch.cat([self._logits(c).argmax(-1) for c in x.split(BATCH)])


# cache entries this process's extractors were built from: a study's driver
# ships them to every trial, so every node scores in the same feature space
USED_CACHE_FILES: dict[str, Path] = {}


def _classifier(
    dataset: str, device: torch.device, seed: int
) -> tuple[DomainClassifier, str, float]:
    path = classifier_file(dataset, seed)
    USED_CACHE_FILES[path.name] = path
    blob = torch.load(path, map_location=device, weights_only=True)
    model = DomainClassifier(*blob["shape"]).to(device).eval()
    model.load_state_dict(blob["state"])
    return model, sha256(path.read_bytes()), float(blob["accuracy"])


def _name(dataset: str, seed: int) -> str:
    return f"{dataset}-classifier-v{VERSION}" + (f"-seed{seed}" if seed else "")


def _own_classifier(dataset: str, device: torch.device, seed: int) -> Extractor:
    model, sha, acc = _classifier(dataset, device, seed)
    return Extractor(_name(dataset, seed), sha, acc, model.body, model)


def _per_channel(base: str) -> Callable[[str, torch.device, int], Extractor]:
    def make(dataset: str, device: torch.device, seed: int) -> Extractor:
        model, sha, acc = _classifier(base, device, seed)

        def channels(x: Tensor) -> Tensor:  # (N, 3, H, W) -> (N*3, 1, H, W)
            return x.reshape(-1, 1, *x.shape[2:])

        def features(x: Tensor) -> Tensor:
            return model.body(channels(x)).reshape(len(x), -1)

        def logits(x: Tensor) -> Tensor:  # one class id per triple of digits
            digits = model(channels(x)).argmax(1).reshape(len(x), 3)
            code = digits @ torch.tensor([100, 10, 1], device=x.device)
            return F.one_hot(code, 1000)

        return Extractor(f"{_name(base, seed)}-per-channel", sha, acc, features, logits)

    return make


# every extractor a DatasetSpec may name: (dataset, device, classifier seed) -> Extractor
EXTRACTORS: dict[str, Callable[[str, torch.device, int], Extractor]] = {
    "classifier": _own_classifier,
    "mnist5k_per_channel": _per_channel("mnist5k"),
}


def _own_rng(build: Callable[..., Extractor]) -> Callable[..., Extractor]:
    """Building an extractor (module init, a first-use training) leaves the
    caller's torch random stream as it was: a trial's results must not depend
    on whether its process built the extractor or found it cached."""

    @wraps(build)
    def wrapped(*args: object) -> Extractor:
        with torch.random.fork_rng(devices=[]):
            return build(*args)

    return wrapped


@cache
@_own_rng
def extractor_for(dataset: str, device: str = "cpu", seed: int = 0) -> Extractor:
    """The extractor the dataset's spec names (its own classifier by default),
    on the classifier trained with `seed` (0: the shipped one; another seed
    is another feature space, trained on first use and cached)."""
    return EXTRACTORS[dataset_spec(dataset).extractor](dataset, torch.device(device), seed)


INCEPTION_SIZE = 299  # the input side Inception v3 was trained at


class InceptionError(ValueError):
    """The Inception weights file is missing or not an Inception v3 state dict."""


@cache
@_own_rng
def inception_extractor(weights: str, device: str = "cpu") -> Extractor:
    """Inception v3 pool features (2048-d) from a local torchvision weights file
    (e.g. inception_v3_google-0cc3c7bd.pth). Never downloads: weights=None
    builds the bare network and the file fills it. Grey images are repeated to
    three channels; inputs go in as [-1, 1] at 299x299, what the network saw."""
    from torchvision.models import inception_v3

    path = Path(weights).expanduser()
    if not path.is_file():
        raise InceptionError(f"Inception weights file {path} does not exist")
    net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, KeyError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InceptionError(f"{path} is not an Inception v3 state dict ({first})") from None
    net.fc = nn.Identity()
    net = net.to(device).eval()

    def features(x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = F.interpolate(
            x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False
        )
        return net(x * 2 - 1)

    def no_logits(x: Tensor) -> Tensor:
        raise NotImplementedError("the Inception extractor scores fid only")

    sha = sha256(path.read_bytes())
    return Extractor(f"inception_v3:{path.name}", sha, float("nan"), features, no_logits)
