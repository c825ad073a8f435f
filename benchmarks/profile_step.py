"""Profile one training epoch of the default GAN trial (torch.profiler).

    python benchmarks/profile_step.py [--rows 15]

Prints the operators that took the most time and the counts that matter for
the performance rules: scalar reads of tensors into the host
(aten::_local_scalar_dense), apart from the optimiser's own host-side step
counters, and host-device copies (CUDA only). Expected: 0 and 0.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from datasources import load_dataset
from models.gan import GAN, GANConfig
from study.studies import STUDIES


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = load_dataset(STUDIES["gan_stability"].dataset).to(device)
    gan = GAN(GANConfig(width=STUDIES["gan_stability"].fixed["width"]), data.train_x, data.test_x)
    gan.train_epoch()  # warm-up: lazy optimiser state, allocator
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        gan.train_epoch()
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    counts = {e.key: e.count for e in table}
    in_optimizer = elsewhere = 0
    for event in prof.events():
        if event.name != "aten::_local_scalar_dense":
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("Optimizer.step"):
            parent = parent.cpu_parent
        if parent is None:
            elsewhere += 1
        else:
            in_optimizer += 1
    # Adam keeps its step counters as host tensors (on a GPU too), so reading
    # them syncs nothing; any other scalar read in the step would be a sync
    print(
        f"scalar reads in one epoch: {elsewhere} in the training step, {in_optimizer} of "
        f"the optimiser's host-side step counters"
    )
    print(
        f"memcpy host<->device in one epoch: {counts.get('Memcpy HtoD', 0)} HtoD, "
        f"{counts.get('Memcpy DtoH', 0)} DtoH (CUDA only; 0 on a CPU)"
    )


if __name__ == "__main__":
    main()
