"""Study throughput: trials per hour, CPU utilisation and the busy share of
a whole study.

    python benchmarks/throughput.py [STUDY] [study.run flags ...]

Runs `python -m study.run STUDY ...` (default: gan_stability with its
defaults) in a temporary folder, samples the machine's CPU use from /proc/stat
once a second while it runs, and prints the wall time, trials per hour, the
mean share of all cores busy (Linux only), where the core-seconds went, and
the busy share: the trials' own training and evaluation seconds (from the
study's trials.csv) over the study's wall time times its slots (trials at
once). Other load on the machine counts too: run it on an otherwise idle
machine. The last line is `busy_share=<fraction>`.
"""

from __future__ import annotations

import os
import re
import sys

import study_clock


def main() -> None:
    study = study_clock.run(sys.argv[1:] or ["gan_stability"])
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


if __name__ == "__main__":
    main()
