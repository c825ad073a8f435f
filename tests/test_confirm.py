"""The confirmation phase (--confirm K --confirm-seeds S): the search's K
best configurations re-run on S seeds it never used, as children of the same
parent tagged phase=confirm, surviving a driver killed mid-phase; its table,
and the same table read back from MLflow by `analysis.confirmation`."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from analysis import confirmation, load_runs
from analysis.report import build_report
from study.errors import UsageError
from study.request import StudyRequest
from study.runner.prepare import prepare
from tests.conftest import start_cli, steps, study_runs

EPOCHS = 4


def _request(tmp_path: Path, **kw) -> StudyRequest:
    uri = f"sqlite:///{tmp_path}/store.db"
    return StudyRequest("gan_stability", storage=str(tmp_path / "runs"), tracking_uri=uri, **kw)


def test_confirm_defaults_follow_the_study_and_the_search(tmp_path):
    plan = prepare(_request(tmp_path))
    assert (plan.confirm, plan.confirm_seeds, plan.confirm_trials) == (2, 3, 6)
    assert prepare(_request(tmp_path, smoke=True)).confirm == 0  # smoke: only when asked
    assert prepare(_request(tmp_path, num_samples=1)).confirm == 1  # no more than searched
    asked = prepare(_request(tmp_path, smoke=True, confirm=2, confirm_seeds=4))
    assert (asked.confirm, asked.confirm_seeds) == (2, 4)
    assert prepare(StudyRequest("sparse_ae", storage=str(tmp_path / "r"))).confirm == 0
    with pytest.raises(UsageError, match="--confirm 3 but the search tries 2 configurations"):
        prepare(_request(tmp_path, smoke=True, confirm=3))
    with pytest.raises(UsageError, match="--confirm-seeds 2 but nothing is confirmed"):
        prepare(_request(tmp_path, smoke=True, confirm_seeds=2))
    with pytest.raises(UsageError, match="--confirm-seeds must be > 0"):
        prepare(_request(tmp_path, confirm=1, confirm_seeds=0))


def _kill_during_confirm(cli: subprocess.Popen, lines: list[str], pack: int) -> None:
    """SIGKILL the driver once a confirmation trial (`pack` seeds) has ended
    and others have not."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        text = "".join(lines)
        if "Confirming" in text and f" {pack}/4 done" in text.split("Confirming", 1)[1]:
            break
        assert cli.poll() is None, "".join(lines)[-3000:]
        time.sleep(0.1)
    else:
        raise AssertionError("no confirmation trial ended in time:\n" + "".join(lines)[-3000:])
    os.kill(cli.pid, signal.SIGKILL)
    cli.wait(timeout=30)


def test_confirm_reruns_the_best_on_fresh_seeds_and_resumes_after_a_kill(tmp_path, shared_ray):
    # one seed a trial, the default; a confirmation in seed packs is
    # test_cli.py's seed-pack study (a kill here in packs too cost a minute)
    pack = 1
    uri = f"sqlite:///{tmp_path}/store.db"
    args = [
        "sparse_ae", "--smoke", "--search", "random", "--num-samples", "3", "--seeds", "2",
        "--confirm", "2", "--confirm-seeds", "2", "--tracking-uri", uri, "--name", "cf",
        "--set", f"epochs={EPOCHS}", "--set", "eval_every=2", "--set", "train_size=2000",
        "--set", "checkpoint_seconds=0", "--address", shared_ray.address, "--pack", str(pack),
        "--max-concurrent", "1",  # one trial process a phase: seconds of CPU less
    ]  # fmt: skip
    cli = start_cli(args, tmp_path, stderr=subprocess.STDOUT, env=shared_ray.env)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(cli.stdout), daemon=True).start()
    try:
        _kill_during_confirm(cli, lines, pack)
    finally:
        if cli.poll() is None:
            cli.kill()
    _, before = study_runs(uri, "sparse_ae")
    ended_before = {
        r.info.run_id: r.info.end_time
        for r in before
        if r.data.tags.get("phase") == "confirm" and r.info.status == "FINISHED"
    }
    assert ended_before

    # the resume through main() in this process (the kill needed a process)
    again = shared_ray.run_study(["sparse_ae", "--resume", "--name", "cf"], tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    out = again.stdout
    assert "Confirmed on fresh seeds" in out and "P(best)" in out
    assert "Outcomes: 10 trials" in out

    client = MlflowClient(uri)
    (parent,), children = study_runs(uri, "sparse_ae")
    assert parent.info.status == "FINISHED" and parent.data.params["confirm"] == "2"
    phases = {p: [r for r in children if r.data.tags["phase"] == p] for p in ("search", "confirm")}
    assert len(phases["search"]) == 6 and len(phases["confirm"]) == 4
    assert all(r.info.status == "FINISHED" for r in children)
    # each confirmation trial ran once: a run a seed, every epoch logged once,
    # and the ones that had ended before the kill kept their end
    assert len({r.data.tags["trial_id"] for r in phases["confirm"]}) == 4 // pack
    assert all(r.data.tags.get("pack", "1") == str(pack) for r in children)
    for run in phases["confirm"]:
        assert steps(client, run.info.run_id, "loss") == list(range(1, EPOCHS + 1))
    assert {r.info.run_id: r.info.end_time for r in phases["confirm"]
            if r.info.run_id in ended_before} == ended_before  # fmt: skip

    # fresh seeds: none of the search's; each confirmed configuration on 2 of them
    seed = {p: {(r.data.params["config_id"], r.data.params["seed"]) for r in rs}
            for p, rs in phases.items()}  # fmt: skip
    assert {s for _, s in seed["search"]} == {"0", "1"}
    assert {s for _, s in seed["confirm"]} == {"2", "3"}
    # the confirmed configurations are the search's 2 best by mean recon_mse
    search = pd.DataFrame(
        [(r.data.params["config_id"], r.data.metrics["recon_mse"]) for r in phases["search"]],
        columns=["config_id", "recon_mse"],
    )
    best = search.groupby("config_id")["recon_mse"].mean().nsmallest(2).index
    assert {c for c, _ in seed["confirm"]} == set(best)

    # the end tables, and the same read back from MLflow: every trial at its
    # end, those that ended before the kill too
    trials = pd.read_csv(tmp_path / "runs" / "cf" / "summary" / "trials.csv")
    assert (trials["epoch"] == EPOCHS).all() and "stopped" not in set(trials["outcome"]), (
        trials.to_string()
    )
    table = pd.read_csv(tmp_path / "runs" / "cf" / "summary" / "confirmation.csv")
    assert set(table["config_id"]) == set(best) and table["confirm_seeds"].tolist() == [2, 2]
    assert table["search_rank"].tolist() in ([1, 2], [2, 1])
    runs = load_runs("sparse_ae", uri)
    back = confirmation(runs)
    assert back["config_id"].tolist() == table["config_id"].tolist()
    assert back["confirm_mean"].to_numpy() == pytest.approx(table["confirm_mean"].to_numpy())
    assert back["p_best"].to_numpy() == pytest.approx(table["p_best"].to_numpy())

    # the report: how sure the search's order is, and both estimates
    path, _, _ = build_report("sparse_ae", uri, None, tmp_path / "report")
    page = path.read_text()
    assert "How sure the order is" in page and "Confirmed on fresh seeds" in page
    assert (tmp_path / "report" / "pairwise.csv").exists()
