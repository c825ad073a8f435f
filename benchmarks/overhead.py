"""Harness overhead: where a default study's time goes, and the default GAN
trial as a bare PyTorch loop and as a trial.

    python benchmarks/overhead.py [--study sparse_ae] [--repeats 3] [--epochs 12]
                                  [--threads 1] [--gpu]

First, the study named by --study runs with its defaults (`python -m
study.run`, see study_clock.py) and its core-seconds (wall x slots) are split
by phase: the driver's start, the trial processes' start, each trial's own
phases from its clock (data, MLflow set-up, model, training, evaluation,
MLflow writes, checkpoint and report), the gaps between trials and the tail.
Then (a) a bare loop written here around the family's own networks: the same
optimisers, loss, data and batch size, one thread, no logging; (b) the same
configuration as a one-trial study through `study.run_study` with MLflow
logging on (a sqlite store in a temporary folder), evaluated only at the end,
as the default study's last epoch is. The trial reports its training time
apart from evaluation, so both sides time the same steps. Runs alternate, and
the ratio is of the medians: the machine is shared and noisy, so only a ratio
from one run means anything. Per-trial start-up (from the study's start to
the first training step) is printed separately. The last line is
`ratio=<harness steps/s / bare steps/s>`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import study_clock
import torch
import torch.nn.functional as F

from datasources import load_dataset
from models.gan import GAN, GANConfig
from study import StudyRequest, run_study
from study.studies import STUDIES

STUDY = STUDIES["gan_stability"]
# the default trial: the study's fixed settings, every searched axis at its
# GANConfig default (mlp, ns loss, lr 2e-4, beta1 0.5, n_disc 1, no stabilisers)
DEFAULTS = {k: str(getattr(GANConfig(), k)) for k in STUDY.axes}


def bare_steps_per_second(epochs: int, threads: int, device: str) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = GANConfig(width=STUDY.fixed["width"])
    x = load_dataset(STUDY.dataset).train_x.to(device)
    gan = GAN(cfg, x, x)  # its networks only; the loop below is written out
    g, d = gan.G, gan.D
    adam = {"betas": (cfg.beta1, cfg.beta2), "fused": True}
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, **adam)
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, **adam)
    b = cfg.batch_size
    steps = len(x) // b
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(x), device=device)
        for i in range(steps):
            real = x[perm[i * b : (i + 1) * b]]
            with torch.no_grad():
                fake = g(torch.randn(b, cfg.z_dim, device=device))
            loss_d = F.softplus(-d(real)).mean() + F.softplus(d(fake)).mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            d.requires_grad_(False)
            loss_g = F.softplus(-d(g(torch.randn(b, cfg.z_dim, device=device)))).mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            d.requires_grad_(True)
    if device == "cuda":
        torch.cuda.synchronize()
    return epochs * steps / (time.perf_counter() - t0)


def harness_steps_per_second(
    epochs: int, threads: int, gpus: int, workdir: Path
) -> tuple[float, float]:
    workdir.mkdir(parents=True)
    request = StudyRequest(
        STUDY.name,
        sets={**DEFAULTS, "epochs": str(epochs), "eval_every": str(epochs)},
        num_samples=1,
        seeds=1,
        cpus_per_trial=threads,
        gpus_per_trial=gpus,
        tracking_uri=f"sqlite:///{workdir}/mlflow.db",
        storage=str(workdir / "runs"),
        name="overhead",
    )
    t_start = time.time()
    with contextlib.redirect_stdout(io.StringIO()):  # the study's own progress lines
        trial = run_study(request).trials.iloc[0]
    steps = epochs * (4000 // GANConfig().batch_size)
    return steps / trial["train_seconds"], trial["started_at"] - t_start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default="sparse_ae", help="the study whose time is broken down")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=STUDY.fixed["epochs"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--gpu", action="store_true", help="both sides on one GPU")
    args = p.parse_args()
    device, gpus = ("cuda", 1) if args.gpu else ("cpu", 0)
    study = study_clock.run([args.study, *(["--gpus-per-trial", "1"] if args.gpu else [])])
    study_clock.print_breakdown(study)
    print(f"busy share (training and evaluation): {study_clock.busy_share(study):.3f}\n")
    bare, harness, startup = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            bare.append(bare_steps_per_second(args.epochs, args.threads, device))
            h, s = harness_steps_per_second(args.epochs, args.threads, gpus, Path(tmp) / str(i))
            harness.append(h)
            startup.append(s)
            print(
                f"repeat {i + 1}: bare {bare[-1]:.1f} steps/s, harness {harness[-1]:.1f} "
                f"steps/s, trial start-up {s:.2f} s",
                flush=True,
            )
    b, h = statistics.median(bare), statistics.median(harness)
    print(
        f"median: bare {b:.1f} steps/s, harness {h:.1f} steps/s; "
        f"trial start-up {statistics.median(startup):.2f} s (study start to first step)"
    )
    print(f"ratio={h / b:.3f}")


if __name__ == "__main__":
    main()
