"""Cost of the stability diagnostics against the evaluation they ride on.

    python benchmarks/diagnostics.py [--repeats 5] [--threads 1]

Builds the default gan_stability networks (mlp, width 256; dcgan, 16
channels) on mnist5k, trains each one epoch, then times, in this one run,
whole evaluations (`study.trial.evaluation.evaluate` with 1000 samples) and
the diagnostics within them: the discriminator's accuracies and
memorisation gap (`GAN.evaluate`), sigma0 of every weight of G and D
(warm power iteration, as at every evaluation after the first) and the
mode dynamics. Prints each part's share of an evaluation; times on a shared
machine are noisy, so read the shares.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from datasources import load_dataset
from models.gan.model import GAN, GANConfig
from scoring.modes import ModeTrack
from scoring.registry import mode_floor, score_samples
from scoring.spectral import TopSingular
from study.studies import TrialConfig
from study.trial.evaluation import evaluate


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (a trial's: 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist5k")
    cfg = TrialConfig(eval_samples=1000)
    print(
        f"{'arch':6} {'evaluation s':>12} {'D accuracy':>11} {'sigma0':>8} {'modes':>7} {'all':>7}"
    )
    for arch in ("mlp", "dcgan"):
        whole, parts = measure(arch, data, cfg, args.repeats)
        shares = [v / whole for v in parts.values()]
        cells = " ".join(f"{s:>{w}.1%}" for s, w in zip(shares, (11, 8, 7), strict=True))
        print(f"{arch:6} {whole:>12.3f} {cells} {sum(shares):>7.1%}")


def measure(arch: str, data, cfg: TrialConfig, repeats: int) -> tuple[float, dict[str, float]]:
    """(median seconds of a whole evaluation, median seconds of each diagnostic)."""
    torch.manual_seed(0)
    gan = GAN(GANConfig(arch=arch, channels=16, width=256), data.train_x, data.test_x)
    gan.train_epoch()
    spectral = TopSingular()
    evaluate(gan, data, cfg, 0, spectral)  # warm: caches, the power iteration's vectors
    samples = gan.sample(1000, torch.Generator().manual_seed(1))
    counts = score_samples(samples, data.name)[1]
    track = ModeTrack(floor=mode_floor(data.name, 1000))
    track.step(counts)
    whole = _median_seconds(lambda: evaluate(gan, data, cfg, 0, spectral), repeats)
    nets = gan.networks()
    return whole, {
        "D accuracy": _median_seconds(gan.evaluate, repeats),
        "sigma0": _median_seconds(lambda: [spectral.top(n, m) for n, m in nets.items()], repeats),
        "modes": _median_seconds(lambda: track.step(counts), repeats),
    }


if __name__ == "__main__":
    main()
