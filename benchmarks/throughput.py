"""Study throughput: trials per hour, CPU utilisation and the busy share of
a whole study.

    python benchmarks/throughput.py [STUDY] [study.run flags ...]

Runs `python -m study.run STUDY ...` (default: gan_stability with its
defaults) in a temporary folder, samples the machine's CPU use from /proc/stat
once a second while it runs, and prints the wall time, trials per hour, the
mean share of all cores busy (Linux only), and the busy share: the trials' own
training and evaluation seconds (from the study's trials.csv) over the
study's wall time times its slots (trials at once). The rest is the harness:
start-up, per-trial set-up, logging, checkpoints, gaps between trials and the
tail. Other load on the machine counts too: run it on an otherwise idle
machine. The last line is `busy_share=<fraction>`.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import tempfile
import time

import pandas as pd


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies summed over all cores."""
    with open("/proc/stat") as f:
        fields = [float(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def main() -> None:
    args = sys.argv[1:] or ["gan_stability"]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        start = time.monotonic()
        busy0, total0 = cpu_times()
        samples = []
        proc = subprocess.Popen(
            [sys.executable, "-m", "study.run", *args, "--storage", f"{tmp}/runs"],
            cwd=tmp,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        last = (busy0, total0)
        while proc.poll() is None:
            time.sleep(1.0)
            now = cpu_times()
            if now[1] > last[1]:
                samples.append((now[0] - last[0]) / (now[1] - last[1]))
            last = now
        out = proc.stdout.read()
        wall = time.monotonic() - start
        busy1, total1 = cpu_times()
        trials_csv = glob.glob(f"{tmp}/runs/*/summary/trials.csv")
        clocks = pd.read_csv(trials_csv[0]) if trials_csv else pd.DataFrame()
    if proc.returncode != 0:
        sys.exit(f"study failed with exit code {proc.returncode}:\n{out[-2000:]}")
    match = re.search(r"Outcomes: (\d+) trials", out)
    trials = int(match.group(1)) if match else 0
    print(out[out.find("Best configurations") : out.find("Tables:")].rstrip())
    print(f"\nwall {wall:.0f} s, {trials} trials: {trials * 3600 / wall:.0f} trials/hour")
    mean = 100 * (busy1 - busy0) / (total1 - total0)
    median = 100 * sorted(samples)[len(samples) // 2]
    print(
        f"CPU busy (all {os.cpu_count()} cores): mean {mean:.0f} % over the whole run, "
        f"{median:.0f} % median second"
    )
    slots = int(re.search(r"(\d+) at once", out).group(1))
    train, evaluate = clocks["train_seconds"].sum(), clocks["eval_seconds"].sum()
    share = (train + evaluate) / (wall * slots)
    print(
        f"core-seconds: {wall * slots:.0f} ({slots} slots x {wall:.0f} s wall): training "
        f"{train:.0f} s ({train / (wall * slots):.0%}), evaluation {evaluate:.0f} s "
        f"({evaluate / (wall * slots):.0%}), the rest {1 - share:.0%}"
    )
    print(f"busy_share={share:.3f}")


if __name__ == "__main__":
    main()
