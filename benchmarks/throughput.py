"""Study throughput: trials per hour, CPU utilisation and the busy share of
a whole study, and with --pack the same for seed packs of several sizes.

    python benchmarks/throughput.py [STUDY] [study.run flags ...]
    python benchmarks/throughput.py STUDY --pack [study.run flags ...]

Runs `python -m study.run STUDY ...` (default: gan_stability with its
defaults) in a temporary folder, samples the machine's CPU use from /proc/stat
once a second while it runs, and prints the wall time, trials per hour, the
mean share of all cores busy (Linux only), where the core-seconds went, and
the busy share: the trials' own training and evaluation seconds (from the
study's trials.csv) over the study's wall time times its slots (trials at
once). Other load on the machine counts too: run it on an otherwise idle
machine. The last line is `busy_share=<fraction>`.

With --pack, one configuration's 16 seeds (`--num-samples 1 --seeds 16
--confirm 0`, before the flags given, which may override them) run once
unpacked and once in seed packs of 2, 4, 8 and 16, one after the other in
this one invocation, and a table gives each run's wall time, seeds trained
an hour (a seed's training is what an unpacked trial is), that rate over the
unpacked run's, and the busy share.
"""

from __future__ import annotations

import argparse
import os
import re

import study_clock

PACKS = (1, 2, 4, 8, 16)
PACK_RUN = ["--num-samples", "1", "--seeds", str(max(PACKS)), "--confirm", "0"]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Any other flag goes to `python -m study.run` as it is.",
    )
    p.add_argument("study", nargs="?", default="gan_stability", help="the study to time")
    p.add_argument(
        "--pack", action="store_true", help="one configuration's 16 seeds unpacked and in packs"
    )
    known, rest = p.parse_known_args()
    args = [known.study, *rest]
    if known.pack:
        packs(args)
        return
    study = study_clock.run(args)
    out = study.out
    match = re.search(r"Outcomes: (\d+) trials", out)
    trials = int(match.group(1)) if match else 0
    print(out[out.find("Best configurations") : out.find("Tables:")].rstrip())
    print(
        f"\nwall {study.wall:.0f} s, {trials} trials: {trials * 3600 / study.wall:.0f} trials/hour"
    )
    print(
        f"CPU busy (all {os.cpu_count()} cores): mean {study.cpu_mean:.0%} over the whole run, "
        f"{study.cpu_median:.0%} median second"
    )
    study_clock.print_breakdown(study)
    print(f"busy_share={study_clock.busy_share(study):.3f}")


def packs(args: list[str]) -> None:
    """The same seeds unpacked and in packs of each size, one row each."""
    study, rest = args[0], args[1:]
    rows = []
    for k in PACKS:
        print(f"pack {k}: python -m study.run {study} {' '.join(PACK_RUN + rest)} --pack {k}")
        run = study_clock.run([study, *PACK_RUN, *rest, "--pack", str(k)])
        rate = run.seeds * 3600 / run.wall
        rows.append((k, run.wall, run.seeds, len(run.trials), rate, study_clock.busy_share(run)))
    base = rows[0][4]
    print(f"\n{'pack':>4}  {'wall s':>7}  {'seeds':>5}  {'trials':>6}  {'seeds/hour':>10}  "
          f"{'x unpacked':>10}  {'busy share':>10}")  # fmt: skip
    for k, wall, seeds, trials, rate, busy in rows:
        print(f"{k:>4}  {wall:7.0f}  {seeds:>5}  {trials:>6}  {rate:10.0f}  {rate / base:10.2f}  "
              f"{busy:10.3f}")  # fmt: skip
    print(f"busy_share={rows[-1][5]:.3f}")


if __name__ == "__main__":
    main()
