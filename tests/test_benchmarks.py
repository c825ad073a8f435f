"""The study-time breakdown of benchmarks/study_clock.py: every core-second of
wall x slots lands in exactly one phase, and gaps land where they happened."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from study.trial.clock import PHASES
from tests.conftest import ROOT, benchmark_module, in_process


def _study_clock():
    return benchmark_module("study_clock")


def _trial(entered: float, ended: float, process: float = 0.0, train: float = 0.0) -> dict:
    return {**dict.fromkeys(PHASES, 0.0), "process_seconds": process, "train_seconds": train,
            "entered_at": entered, "started_at": entered, "ended_at": ended}  # fmt: skip


def test_the_breakdown_adds_up_to_wall_times_slots_and_places_each_gap():
    sc = _study_clock()
    # two slots from t=100 to t=130: slot A runs trials [110, 118] (its process
    # started 3 s before) and [119, 125]; slot B runs [112, 128] (process 4 s)
    trials = pd.DataFrame([
        _trial(110, 118, process=3, train=7), _trial(119, 125, train=5),
        _trial(112, 128, process=4, train=15),
    ])  # fmt: skip
    run = sc.StudyRun("", 100.0, 130.0, trials, 2, 0.0, 0.0)
    table = sc.breakdown(run).set_index("phase")["core_seconds"]
    assert table.sum() == pytest.approx(60.0)  # 2 slots x 30 s
    label = sc.LABELS
    assert table[label["before"]] == pytest.approx((110 - 100 - 3) + (112 - 100 - 4))
    assert table[label["process_seconds"]] == pytest.approx(7)
    assert table[label["train_seconds"]] == pytest.approx(27)
    assert table[label["untimed"]] == pytest.approx(3)  # 8 + 6 + 16 in trials, 27 timed
    assert table[label["between"]] == pytest.approx(1)  # 118 -> 119 on slot A
    assert table[label["after"]] == pytest.approx((130 - 125) + (130 - 128))
    assert sc.busy_share(run) == pytest.approx(27 / 60)


def test_the_tracking_load_benchmark_counts_requests_and_finds_lost_points():
    tl = benchmark_module("tracking_load")
    with tempfile.TemporaryDirectory() as d, tl.mlflow_server(Path(d), 1) as url:
        row = tl.measure(url, Path(d), 2, epochs=2)
        # per logger: run, params, 2 metric batches, 1 PNG, final JSON, end
        assert row["requests"] == 2 * 7 and row["errors"] == 0
        assert row["lost_points"] == 0 and row["lost_files"] == 0
        client = MlflowClient(url)
        run = client.create_run(client.create_experiment("x")).info.run_id
        client.log_batch(run, metrics=[Metric("metric_0", 1.0, 0, 1)])
        # a point and a file the server acknowledged that are not there
        claimed = {"run": run, "points": 2, "files": ["samples/missing.png"]}
        assert tl.lost(url, [claimed]) == (1, 1)


def test_the_tracking_load_benchmark_runs_on_a_postgres_store(postgres_installed):
    """`--backend postgresql`: the same loggers against a server whose store
    is a database on the benchmark's own PostgreSQL server, every write
    acknowledged and read back, and there in PostgreSQL itself."""
    from sqlalchemy import create_engine, text

    tl = benchmark_module("tracking_load")
    with (
        tempfile.TemporaryDirectory() as d,
        tl.backend_store(Path(d), "postgresql") as store,
        tl.mlflow_server(Path(d), 1, store) as url,
    ):
        assert store.startswith("postgresql+psycopg://")
        row = tl.measure(url, Path(d), 2, epochs=2)
        with create_engine(store).connect() as db:
            assert db.execute(text("select count(*) from metrics")).scalar() == 2 * 2 * 10
    assert row["requests"] == 2 * 7 and row["errors"] == 0
    assert row["lost_points"] == 0 and row["lost_files"] == 0


# every benchmark's `--help`, run as its own __main__ in one process: the
# scripts all import torch, which a process per script would pay eight times
HELP_RUNNER = """
import contextlib, io, json, runpy, sys
out = {}
for path in sys.argv[1:]:
    sys.argv, stdout, stderr = [path, "--help"], io.StringIO(), io.StringIO()
    code = None
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as e:
            code = e.code
        except BaseException as e:
            code = f"{type(e).__name__}: {e}"
    out[path] = [code, stdout.getvalue(), stderr.getvalue()]
print(json.dumps(out))
"""


def test_every_benchmark_answers_help_with_its_usage_and_starts_nothing():
    """`python benchmarks/X.py --help` prints usage and exits 0 (before it
    timed whole studies or ended in a traceback)."""
    import json
    import subprocess

    from tests.conftest import cli_env

    scripts = [str(p) for p in sorted((ROOT / "benchmarks").glob("*.py"))]
    # the scripts find their siblings as `python benchmarks/X.py` does
    env = {**cli_env(), "PYTHONPATH": f"{ROOT / 'benchmarks'}{os.pathsep}{ROOT}"}
    done = subprocess.run(
        [sys.executable, "-c", HELP_RUNNER, *scripts], env=env, capture_output=True, text=True,
        timeout=180, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    outs = json.loads(done.stdout)
    assert len(outs) >= 7
    for path, (code, stdout, stderr) in outs.items():
        name = Path(path).name
        assert code == 0 and stdout.startswith("usage:"), (name, code, stderr)
        assert "Traceback" not in stderr, name


def test_the_scale_benchmark_places_each_gap_on_its_slot_and_rates_growth():
    sc = benchmark_module("scale")
    # two slots: [0, 10] and [1, 5]; [6, 12] takes the slot free since 5,
    # [11, 20] the one free since 10
    trials = pd.DataFrame({"entered_at": [0, 1, 6, 11], "ended_at": [10, 5, 12, 20]})
    assert sc.gaps(trials, 2) == [1, 1]
    rows = [
        {"trials": 100, "peak_rss_mb": 300.0, "cpu_s_per_trial": 0.5, "gap_p50_s": 0.2,
         "save_mean_s": 0.01, "state_kb": 4000.0, "end_tables_s": 2.0},
        {"trials": 1000, "peak_rss_mb": 1200.0, "cpu_s_per_trial": 0.5, "gap_p50_s": 0.4,
         "save_mean_s": 1.0, "state_kb": 40000.0, "end_tables_s": 20.0},
    ]  # fmt: skip
    grown = sc.growth(rows, rss_before=200.0)
    # memory: 100 MB for 100 trials, 1000 MB for 1000: linear
    assert grown["peak_rss_mb"] == pytest.approx(1.0)
    assert grown["cpu_s_per_trial"] == pytest.approx(1.0)
    assert grown["gap_p50_s"] == pytest.approx(2.0)  # the gap doubled: worse than linear
    assert grown["save_mean_s"] == pytest.approx(10.0)  # a save costs 10x more per trial
    assert grown["state_kb"] == pytest.approx(1.0) and grown["end_tables_s"] == pytest.approx(1.0)


def test_the_scale_benchmark_measures_a_study_of_its_smallest_size(tmp_path, shared_ray):
    """The benchmark itself, end to end on a few trials (no timing asserted)."""
    sc = benchmark_module("scale")
    args = ["--trials", "2", "--concurrent", "1", "--address", shared_ray.address]
    done = in_process(sc.main, args, tmp_path, shared_ray.env)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = [line for line in done.stdout.splitlines() if line.startswith("trials=")]
    figures = dict(pair.split("=") for pair in row.split())
    assert figures["trials"] == "2"
    assert float(figures["peak_rss_mb"]) > 0 and float(figures["cpu_s_per_trial"]) > 0
    assert int(figures["state_saves"]) >= 1 and float(figures["state_kb"]) > 0
    assert float(figures["end_tables_s"]) > 0
