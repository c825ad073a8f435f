"""The driver killed or interrupted mid-study, and Tune's saved state. (Trial
processes killed throughout a study: the chaos test in test_cluster.py.)"""

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

from mlflow import MlflowClient

from tests.conftest import Stragglers, run_cli, start_cli, started, steps, study_runs
from tests.test_clients import assert_optuna_matches_mlflow


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below pid: the local Ray cluster a
    CLI starts is its own subtree, so this never touches anyone else's."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                cmd = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            out.append((child, cmd.decode(errors="replace")))
            todo.append(child)
    return out


def _wait_gone(pids: list[int], seconds: float) -> None:
    def alive() -> list[int]:
        return [pid for pid in pids if started(pid) is not None]

    deadline = time.monotonic() + seconds
    while alive() and time.monotonic() < deadline:
        time.sleep(1)
    assert not alive(), f"still running: {alive()}"


EPOCHS = 16


def _holds_half_way(state: Path) -> bool:
    """Whether Tune's saved state names a checkpoint of a trial still under
    way (the file's time says less: under load Tune can save its state
    before it has registered a checkpoint already on disk)."""
    try:
        trials = json.loads(state.read_text())["trial_data"]
        results = [json.loads(metadata).get("last_result") or {} for _, metadata in trials]
    except (OSError, ValueError, KeyError):  # being written
        return False
    return any(r.get("checkpoint_dir_name") and not r.get("done") for r in results)


def _kill_with_one_trial_ended_and_one_half_way(
    cli: subprocess.Popen, lines: list[str], runs: Path
) -> list[tuple[int, str]]:
    """SIGKILL the driver once a trial has ended and the next one (trials run
    one at a time) has a checkpoint that Tune's saved state already holds:
    the resume then has both finished and half-trained trials to deal with.
    Returns the driver's processes (its local Ray) as they were at the kill."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert cli.poll() is None, "".join(lines)[-3000:]
        assert not any(" 2/4 done" in line for line in lines), "the kill came too late"
        states = list(runs.glob("experiment_state-*.json"))
        if any(" 1/4 done" in line for line in lines) and any(map(_holds_half_way, states)):
            ray_processes = _descendants(cli.pid)
            os.kill(cli.pid, signal.SIGKILL)
            cli.wait(timeout=30)
            return ray_processes
        time.sleep(0.1)
    raise AssertionError("no trial ended in time:\n" + "".join(lines)[-3000:])


def test_killed_driver_resumes_the_study_with_every_trial_once(tmp_path, stragglers):
    uri = f"sqlite:///{tmp_path}/store.db"
    args = [
        "gan_stability", "--smoke", "--num-samples", "2", "--seeds", "2",
        "--max-concurrent", "1", "--tracking-uri", uri, "--name", "dk",
        "--set", "arch=mlp", "--set", f"epochs={EPOCHS}", "--set", "eval_every=4",
        "--set", "train_size=2000", "--set", "width=256", "--set", "eval_samples=100",
        "--set", "checkpoint_seconds=0",
    ]  # fmt: skip
    # Tune saves its state at least every second (by default every 10 s or
    # more), so the kill need not wait long for a save after a checkpoint
    cli = start_cli(args, tmp_path, stderr=subprocess.STDOUT, env={"TUNE_GLOBAL_CHECKPOINT_S": "1"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(cli.stdout), daemon=True)
    reader.start()
    try:
        ray_processes = _kill_with_one_trial_ended_and_one_half_way(
            cli, lines, tmp_path / "runs" / "dk"
        )
    finally:
        if cli.poll() is None:
            cli.kill()
    parents, before = study_runs(uri)
    ended_before = {r.info.run_id for r in before if r.info.status == "FINISHED"}
    assert ended_before and len(parents) == 1
    # the local Ray cluster the driver started goes with it: the trial workers,
    # raylet and GCS at once; Ray's two idle agents notice a minute later
    agents = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
    _wait_gone([p for p, cmd in ray_processes if not cmd.startswith(agents)], 30)

    # the resumed command names no settings: they come from the saved invocation
    again = run_cli(["gan_stability", "--resume"], tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Outcomes: 4 trials" in again.stdout

    # and the idle agents too, within 90 s of the resume's end (checked when
    # the session ends, not waited for here)
    stragglers.expect_gone([p for p, _ in ray_processes], 90, "the killed driver's Ray")
    client = MlflowClient(uri)
    after_parents, children = study_runs(uri)
    assert [r.info.run_id for r in after_parents] == [parents[0].info.run_id]
    assert after_parents[0].info.status == "FINISHED"
    assert len(children) == 4 and len({r.data.tags["trial_id"] for r in children}) == 4
    assert all(r.info.status == "FINISHED" for r in children)
    # the searcher kept its history: 2 configurations x 2 seeds, none drawn twice
    seeds = Counter(r.data.params["config_id"] for r in children)
    assert sorted(seeds.values()) == [2, 2], seeds
    for run in children:
        assert steps(client, run.info.run_id, "d_loss") == list(range(1, EPOCHS + 1))
        assert steps(client, run.info.run_id, "fid") == list(range(4, EPOCHS + 1, 4))
    # the Optuna study holds each configuration once, finished, with its seed mean
    # (those the killed driver had asked for and Tune never saved are marked failed)
    exp_id = after_parents[0].info.experiment_id
    assert_optuna_matches_mlflow(client, exp_id, after_parents[0], "gan_stability")
    # finished trials were not trained again; some trial continued from a checkpoint
    restored = {r.info.run_id: r.data.tags.get("restored_from_epoch") for r in children}
    assert ended_before <= set(restored)
    assert all(restored[r] in (None, str(EPOCHS)) for r in ended_before)
    # and their runs were not reopened: each ended when it first did
    ended_at = {r.info.run_id: r.info.end_time for r in before if r.info.run_id in ended_before}
    assert {
        r: e for r, e in ((c.info.run_id, c.info.end_time) for c in children) if r in ended_before
    } == ended_at
    assert any(v is not None for v in restored.values()), restored


def test_ctrl_c_ends_with_130_the_resume_hint_and_no_running_run(tmp_path, shared_ray):
    uri = f"sqlite:///{tmp_path}/store.db"
    args = ["gan_stability", "--smoke", "--tracking-uri", uri, "--name", "ci", "--set", "arch=mlp"]
    args += ["--set", "epochs=60", "--address", shared_ray.address, "--max-concurrent", "1"]
    cli = start_cli(args, tmp_path, stderr=subprocess.STDOUT, env=shared_ray.env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(cli.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        # the trials have opened their runs (in the store the CLI has made
        # by the time it names its parent run)
        while not (any("parent run" in line for line in lines) and study_runs(uri)[1]):
            assert cli.poll() is None, "the study ended before it was interrupted"
            assert time.monotonic() < deadline, "no trial run in MLflow"
            time.sleep(0.5)
        cli.send_signal(signal.SIGINT)
        cli.wait(timeout=120)
        reader.join(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
    out = "".join(lines)
    assert cli.returncode == 130, out[-3000:]
    assert "--resume --name ci" in out
    parents, children = study_runs(uri)
    assert parents[0].info.status == "KILLED"
    assert children and all(r.info.status == "KILLED" for r in children)


def test_tunes_saved_state_reaches_the_storage_whole_before_the_driver_goes_on(tmp_path):
    """Tune copies its saved state (trials, searcher) from a staging folder to
    the storage path in the background; a driver killed before that copy ends
    leaves a state --resume cannot trust. Each save now returns with the
    storage holding exactly what it staged."""
    import ray
    from ray.train._internal.storage import StorageContext
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    from study.internals import upload_whole
    from study.runner.tune_run import start_ray

    start_ray(None, ray.init, ray.shutdown)  # the storage's staging folder is Ray's
    try:
        upload_whole()
        storage = StorageContext(storage_path=str(tmp_path / "runs"), experiment_dir_name="exp")
        manager = _ExperimentCheckpointManager(storage=storage, checkpoint_period="auto")
        staging = Path(storage.experiment_driver_staging_path)
        stored = Path(storage.experiment_fs_path)
        for i in range(3):

            def save(i: int = i) -> None:
                staging.mkdir(parents=True, exist_ok=True)
                (staging / "searcher.txt").write_text(str(i))
                (staging / "trials.bin").write_bytes(bytes([i]) * 20_000_000)

            manager.sync_up_experiment_state(save, force=True)
            assert (stored / "searcher.txt").read_text() == str(i)
            assert (stored / "trials.bin").read_bytes() == bytes([i]) * 20_000_000
    finally:
        ray.shutdown()


def test_a_process_that_outlives_its_time_is_named_one_that_exits_is_not():
    """The check behind `stragglers`, which the killed driver's test leaves
    its Ray's idle agents to."""
    sleeper = subprocess.Popen(["sleep", "30"])
    quick = subprocess.Popen(["true"])
    quick.wait()
    found = Stragglers([])
    found.expect_gone([sleeper.pid, quick.pid], 0.5, "the sleeper")
    assert found.still_running() == [f"the sleeper: pid {sleeper.pid}"]
    sleeper.kill()
    sleeper.wait()
    assert found.still_running() == []
