"""Cost of scoring samples, and our fid/kid against torchmetrics on the same features.

    python benchmarks/metrics.py [--samples 10000] [--threads 2]

Prints the wall time of `evaluate_samples` on N mnist5k-shaped samples with
every metric on, each metric's share of that evaluation (the first metric to
need a shared piece, such as the extractor's pass, pays for it), then fid and
kid computed by us and by torchmetrics from the same feature tensors, with
their values and the time ratio (ours/torchmetrics) measured in this one run.
Times on a shared machine are noisy: read the shares and ratios.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from datasources import load_dataset
from scoring.arithmetic import feature_stats, frechet_distance, kid
from scoring.copying import build_cells
from scoring.features import extractor_for
from scoring.registry import METRICS, Scoring, copy_cells, evaluate_samples, needs_met, reference

NEW_METRICS = ("fid_inf", "vendi", "ct_score")  # beyond fid: what their share is asked for


class Features(nn.Module):
    """Hands precomputed features to torchmetrics unchanged."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def best_of(fn, repeats: int = 3) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def metric_shares(samples: torch.Tensor) -> None:
    """Each metric's seconds on one fresh Scoring, in registry order, and its
    share of their sum; the copy test's k-means cells (once per process) apart."""
    ref, ext = reference("mnist5k"), extractor_for("mnist5k")
    t0 = time.perf_counter()
    build_cells(ext.features(ref.data.train_x), ref.features)
    print(f"ct_score's k-means cells, once per process: {time.perf_counter() - t0:.2f} s")
    copy_cells("mnist5k")  # the cached ones: warm, as in a trial's later evaluations
    scoring = Scoring(samples, "mnist5k", ref)
    have = needs_met(is_image=True)
    seconds = {}
    for m in METRICS.values():
        if m.needs <= have:
            t0 = time.perf_counter()
            m.compute(scoring)
            seconds[m.name] = time.perf_counter() - t0
    total = sum(seconds.values())
    print(f"one evaluation, metric by metric: {total:.2f} s")
    for name, t in seconds.items():
        mark = "  (new)" if name in NEW_METRICS else ""
        print(f"  {name:16s} {t * 1000:8.1f} ms  {t / total:6.1%}{mark}")
    new = sum(seconds[n] for n in NEW_METRICS)
    print(f"  fid_inf + vendi + ct_score: {new / total:.1%} of the evaluation")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    data = load_dataset("mnist5k")
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(data.train_x), (args.samples,), generator=gen)
    noise = 0.1 * torch.rand(args.samples, 1, 28, 28, generator=gen)
    samples = (data.train_x[idx] + noise).clamp(0, 1)  # stand-in generator output
    evaluate_samples(samples[:10], "mnist5k")  # builds the cached reference once

    t_all, metrics = best_of(lambda: evaluate_samples(samples, "mnist5k"), repeats=1)
    print(f"evaluate_samples, {args.samples} samples, every metric: {t_all:.2f} s")
    print("  " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    metric_shares(samples)

    ext = extractor_for("mnist5k")
    real = ext.features(data.test_x).double()
    fake = ext.features(samples).double()

    def ours_fid() -> float:
        return frechet_distance(*feature_stats(real), *feature_stats(fake))

    def tm_fid() -> float:
        m = FrechetInceptionDistance(feature=Features(real.shape[1]))
        m.update(real, real=True)
        m.update(fake, real=False)
        return float(m.compute())

    m_sub = min(1000, len(real), len(fake))

    def ours_kid() -> float:
        return kid(real, fake, subsets=100, subset_size=m_sub)

    def tm_kid() -> float:
        m = KernelInceptionDistance(feature=Features(real.shape[1]), subsets=100, subset_size=m_sub)
        m.update(real, real=True)
        m.update(fake, real=False)
        return float(m.compute()[0])

    for name, ours, theirs in (("fid", ours_fid, tm_fid), ("kid", ours_kid, tm_kid)):
        t_ours, v_ours = best_of(ours)
        t_tm, v_tm = best_of(theirs)
        print(
            f"{name}: ours {v_ours:.6g} in {t_ours * 1000:.1f} ms, torchmetrics {v_tm:.6g} in "
            f"{t_tm * 1000:.1f} ms, ratio={t_ours / t_tm:.3f}"
        )


if __name__ == "__main__":
    main()
