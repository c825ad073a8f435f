"""The feature classifier behind fid and the mode metrics: one per dataset,
the same bytes on every machine.

For the offline datasets (mnist5k, digits; Stacked MNIST uses mnist5k's)
the weights ship with the package and their sha256 is recorded here, so
every machine scores in one feature space. Training alone could not promise
that: even on one thread, the float rounding of torch's CPU kernels depends
on the instruction set they pick (AVX2, AVX-512), so two machines can train
two slightly different classifiers from the same recipe.

The recipe is still deterministic on one machine (one thread, deterministic
algorithms, a fixed data order and augmentation stream), so the shipped file
can be rebuilt and checked, and a dataset without shipped weights (the ones
that need a download) gets the same classifier from every run on a machine:

    python -m scoring.classifier mnist5k   # rebuilds scoring/weights/mnist5k-v2.pt
"""

from __future__ import annotations

import argparse
import hashlib
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datasources import Dataset, load_dataset
from datasources.cache import cache_dir, cached_file, install

VERSION = 2  # bump when the architecture or the training recipe changes
WEIGHTS = Path(__file__).with_name("weights")
# sha256 of each shipped file, checked when it is installed in the cache
SHIPPED_SHA256 = {
    "mnist5k": "dc1d81efe4726c35216505221826b70a7a5c43b8872136da8238a1f49a980d06",
    "digits": "7c9c82393a862b65aac0747bdf0934f42401f2fea5724f241a3181e02ed760f1",
}
BATCH = 1000


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


def _shift(x: Tensor, gen: torch.Generator, max_px: int = 1) -> Tensor:
    """Random translation by up to max_px pixels: cheap augmentation worth about
    two points of held-out accuracy on the 4000-image mnist5k split."""
    pad = F.pad(x, (max_px,) * 4)
    dx, dy = torch.randint(0, 2 * max_px + 1, (2,), generator=gen).tolist()
    return pad[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]


@contextmanager
def _deterministic() -> Iterator[None]:
    """One thread and deterministic kernels while inside: the reduction order
    of a multi-threaded backward pass depends on the thread count."""
    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.use_deterministic_algorithms(strict)
        torch.set_num_threads(threads)


def train_classifier(data: Dataset, steps: int = 1500, seed: int = 0) -> tuple[nn.Module, float]:
    """Train on the train split; returns the model and its test-split accuracy.
    A fixed step count (not epochs) gives small datasets enough updates."""
    with _deterministic():
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # the initial weights and dropout
        model = DomainClassifier(data.train_x.shape[1], data.n_classes)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            idx = torch.randint(0, len(data.train_x), (64,), generator=gen)
            loss = F.cross_entropy(model(_shift(data.train_x[idx], gen)), data.train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.inference_mode():
            pred = torch.cat([model(c).argmax(1) for c in data.test_x.split(BATCH)])
    return model, (pred == data.test_y).float().mean().item()


def classifier_bytes(data: Dataset, steps: int = 1500, seed: int = 0) -> bytes:
    """The file of a classifier trained on data: serialised in memory, since
    torch.save names the archive inside after the file it writes to."""
    model, accuracy = train_classifier(data, steps, seed)
    state = {"state": model.state_dict(), "accuracy": accuracy}
    state["shape"] = [data.train_x.shape[1], data.n_classes]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def classifier_file(dataset: str, seed: int = 0) -> Path:
    """The dataset's classifier trained with `seed`, in the cache: the shipped
    bytes where there are some (seed 0 of the offline datasets; replacing,
    with one line, a cached file with other bytes), else trained here on
    first use (deterministic on one machine)."""
    name = f"classifier-{dataset}-v{VERSION}" + (f"-seed{seed}" if seed else "") + ".pt"
    if seed or dataset not in SHIPPED_SHA256:

        def build(tmp: Path) -> None:
            which = f"seed-{seed} " if seed else ""
            print(f"training the {dataset} {which}feature classifier (once; cached for trials)")
            tmp.write_bytes(classifier_bytes(load_dataset(dataset), seed=seed))

        return cached_file(name, build)
    expected, path = SHIPPED_SHA256[dataset], cache_dir() / name
    cached = sha256(path.read_bytes()) if path.exists() else None
    if cached == expected:
        return path
    blob = (WEIGHTS / f"{dataset}-v{VERSION}.pt").read_bytes()
    if sha256(blob) != expected:
        raise RuntimeError(f"the shipped {dataset} classifier is damaged: reinstall the package")
    if cached:
        print(
            f"replacing the cached {dataset} classifier (sha256 {cached[:12]},"
            f" left by another version) with the shipped one ({expected[:12]})"
        )
    return install(name, blob)


def main() -> None:
    p = argparse.ArgumentParser(description="Rebuild a shipped classifier and print its sha256.")
    p.add_argument("dataset", choices=sorted(SHIPPED_SHA256))
    dataset = p.parse_args().dataset
    blob = classifier_bytes(load_dataset(dataset))
    WEIGHTS.mkdir(exist_ok=True)
    (WEIGHTS / f"{dataset}-v{VERSION}.pt").write_bytes(blob)
    print(f"{dataset}: {sha256(blob)}  ({len(blob)} bytes)")


if __name__ == "__main__":
    main()
