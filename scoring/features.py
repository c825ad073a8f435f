"""Feature extractors for sample-quality metrics, registered in one place.

Each image dataset is scored in the features of its own classifier (a small
CNN, the established practice for MNIST-like data): it is trained once per
dataset with a fixed seed, cached on disk under a lock so concurrent trials
share it, and identified by the SHA-256 of its weights file. A dataset's spec
names its extractor (`DatasetSpec.extractor`): Stacked MNIST applies the
mnist5k classifier to each channel.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, wraps
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datasources import Dataset, dataset_spec, load_dataset
from datasources.cache import cached_file

_VERSION = 1  # bump when the architecture or training recipe changes
_BATCH = 1000


class DomainClassifier(nn.Module):
    """LeNet-style CNN; its 128-d penultimate layer is the FID feature space."""

    def __init__(self, channels: int, n_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(3),
            nn.Flatten(),
            nn.Linear(32 * 9, 128),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(128, n_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def _shift(x: Tensor, max_px: int = 1) -> Tensor:
    """Random translation by up to max_px pixels: cheap augmentation worth about
    two points of held-out accuracy on the 4000-image mnist5k split (96.8%)."""
    pad = F.pad(x, (max_px,) * 4)
    dx, dy = torch.randint(0, 2 * max_px + 1, (2,)).tolist()
    return pad[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]


def train_classifier(data: Dataset, steps: int = 1500, seed: int = 0) -> tuple[nn.Module, float]:
    """Train on the train split; returns the model and its test-split accuracy.
    A fixed step count (not epochs) gives small datasets enough updates."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DomainClassifier(data.train_x.shape[1], data.n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        idx = torch.randint(0, len(data.train_x), (64,), generator=gen)
        loss = F.cross_entropy(model(_shift(data.train_x[idx])), data.train_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(c).argmax(1) for c in data.test_x.split(_BATCH)])
    return model, (pred == data.test_y).float().mean().item()


@dataclass(frozen=True)
class Extractor:
    name: str
    weights_sha256: str
    accuracy: float  # held-out accuracy of the classifier behind it
    _features: Callable[[Tensor], Tensor]
    _logits: Callable[[Tensor], Tensor]

    @torch.inference_mode()
    def features(self, x: Tensor) -> Tensor:
        return torch.cat([self._features(c) for c in x.split(_BATCH)])

    @torch.inference_mode()
    def predict(self, x: Tensor) -> Tensor:
        return torch.cat([self._logits(c).argmax(-1) for c in x.split(_BATCH)])


# cache entries this process's extractors were built from: a study's driver
# ships them to every trial, so every node scores in the same feature space
USED_CACHE_FILES: dict[str, Path] = {}


def _classifier_file(dataset: str) -> Path:
    def build(tmp: Path) -> None:
        print(f"training the {dataset} feature classifier (once; cached for every trial)")
        data = load_dataset(dataset)
        model, acc = train_classifier(data)
        state = {"state": model.state_dict(), "accuracy": acc}
        state["shape"] = [data.train_x.shape[1], data.n_classes]
        torch.save(state, tmp)

    name = f"classifier-{dataset}-v{_VERSION}.pt"
    USED_CACHE_FILES[name] = path = cached_file(name, build)
    return path


def _classifier(dataset: str, device: torch.device) -> tuple[DomainClassifier, str, float]:
    path = _classifier_file(dataset)
    blob = torch.load(path, map_location=device, weights_only=True)
    model = DomainClassifier(*blob["shape"]).to(device).eval()
    model.load_state_dict(blob["state"])
    return model, hashlib.sha256(path.read_bytes()).hexdigest(), float(blob["accuracy"])


def _own_classifier(dataset: str, device: torch.device) -> Extractor:
    model, sha, acc = _classifier(dataset, device)
    return Extractor(f"{dataset}-classifier-v{_VERSION}", sha, acc, model.body, model)


def _per_channel(base: str) -> Callable[[str, torch.device], Extractor]:
    def make(dataset: str, device: torch.device) -> Extractor:
        model, sha, acc = _classifier(base, device)

        def channels(x: Tensor) -> Tensor:  # (N, 3, H, W) -> (N*3, 1, H, W)
            return x.reshape(-1, 1, *x.shape[2:])

        def features(x: Tensor) -> Tensor:
            return model.body(channels(x)).reshape(len(x), -1)

        def logits(x: Tensor) -> Tensor:  # one class id per triple of digits
            digits = model(channels(x)).argmax(1).reshape(len(x), 3)
            code = digits @ torch.tensor([100, 10, 1], device=x.device)
            return F.one_hot(code, 1000)

        return Extractor(f"{base}-classifier-v{_VERSION}-per-channel", sha, acc, features, logits)

    return make


# every extractor a DatasetSpec may name: (dataset, device) -> Extractor
EXTRACTORS: dict[str, Callable[[str, torch.device], Extractor]] = {
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
def extractor_for(dataset: str, device: str = "cpu") -> Extractor:
    """The extractor the dataset's spec names (its own classifier by default);
    the first call per machine trains and caches the classifier."""
    return EXTRACTORS[dataset_spec(dataset).extractor](dataset, torch.device(device))


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

    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return Extractor(f"inception_v3:{path.name}", sha, float("nan"), features, no_logits)
