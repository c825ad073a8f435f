"""Population-based training: the CLI with real MLflow runs (a new run at
every clone, no param rewritten), the lineage rebuilt into schedules, and a
clone's weights taken over under its own optimiser settings."""

from __future__ import annotations

import torch
from mlflow import MlflowClient
from mlflow.entities import ViewType

from analysis.population import member_paths, schedules
from analysis.runs import load_history, load_runs
from models import FAMILIES
from models.gan import GANConfig
from models.pack import Pack
from study.tracking import FROM_EPOCH, GENERATION, PARENT, REPLACED_TRIAL
from study.tracking.lineage import Lineage
from study.tracking.store import experiment_id, init_store, start_parent
from study.tracking.trial_run import TrialRun
from tests.conftest import steps

MUTABLE = ("lr_g", "lr_d", "beta1", "n_disc")
FIXED = ("loss", "replay", "mbstd", "arch", "config_id")  # arch: never perturbed


def test_a_pbt_population_of_four_at_once_on_sqlite_clones_into_new_runs(tmp_path, shared_ray):
    """--smoke with PBT, its four members (two configurations x two seeds,
    each drawn its own settings) at once on an sqlite store, a quarter CPU
    each (they fit in the shared Ray's one CPU no other worker's study
    holds). They meet at epoch 1, the worst clones the best: the clone ends
    the cloned-over run and opens one naming its parent, no run is deleted
    or failed, sqlite never reports itself locked, and every final member's
    schedule covers epochs 1-2 once. (One study for both: the store's
    concurrency check and PBT's, a study's start of CPU less.)"""
    uri = f"sqlite:///{tmp_path}/store.db"
    args = ["gan_stability", "--smoke", "--scheduler", "pbt", "--cpus-per-trial", "0.25"]
    args += ["--set", "arch=mlp", "--tracking-uri", uri, "--name", "pbt"]
    out = shared_ray.run_study(args, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "database is locked" not in out.stderr
    assert "PBT: a population of 4 members (a seed each)" in out.stdout
    assert "perturbs lr_g, lr_d, beta1, n_disc" in out.stdout
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("gan_stability").experiment_id
    every = client.search_runs([exp], run_view_type=ViewType.ALL)
    assert all(r.info.lifecycle_stage == "active" for r in every)  # none deleted
    runs = {r.info.run_id: r for r in every if "mlflow.parentRunId" in r.data.tags}
    assert all(r.info.status == "FINISHED" and r.data.tags["outcome"] != "failed"
               for r in runs.values())  # fmt: skip
    clones = [r for r in runs.values() if PARENT in r.data.params]
    assert clones, "the smoke run performed no exploit"
    for clone in clones:
        params, donor = clone.data.params, runs[clone.data.params[PARENT]].data.params
        start = int(params[FROM_EPOCH])
        assert int(params[GENERATION]) == int(donor[GENERATION]) + 1
        assert steps(client, clone.info.run_id, "d_loss") == [start + 1]
        assert any(params[k] != donor[k] for k in MUTABLE)  # perturbed
        assert all(params[k] == donor[k] for k in FIXED if k != "config_id")
        assert params["config_id"] != donor["config_id"]  # a new configuration, a new run
        # the run it replaced: stopped at the clone, its trial id moved aside
        (old,) = [r for r in runs.values()
                  if r.data.tags.get(REPLACED_TRIAL) == clone.data.tags["trial_id"]]  # fmt: skip
        assert old.data.tags["outcome"] == "stopped"
        assert "cloned over by PBT" in old.data.tags["outcome_reason"]
        assert steps(client, old.info.run_id, "d_loss") == [start]
    first = [r for r in runs.values() if PARENT not in r.data.params]
    assert len(first) == 4  # the population as drawn, each from epoch 1
    spans = [(r.info.start_time, r.info.end_time) for r in first]
    overlap = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert overlap >= 3, spans  # 4 at once; one may end as the last starts on 2 cores
    live = [r for r in runs.values() if "trial_id" in r.data.tags]
    assert len(live) == 4 and all(r.data.tags["outcome"] != "stopped" for r in live)
    table = schedules(load_runs("gan_stability", uri), list(MUTABLE))
    assert table["member"].nunique() == 4
    for _, stretches in table.groupby("member"):
        firsts, lasts = list(stretches["first_epoch"]), list(stretches["last_epoch"])
        assert firsts[0] == 1 and lasts[-1] == 2
        assert [f - 1 for f in firsts[1:]] == lasts[:-1]  # contiguous, no epoch twice


def _member_run(client, exp, parent, trial, lineage, lr, name):
    params = {"lr_g": lr, "config_id": f"c{lr}", "seed": 0, "arch": "mlp"}
    return TrialRun.open(
        client, experiment_id=exp, parent_run_id=parent, trial_id=trial, name=name,
        params=params, tags={"phase": "search"}, lineage=lineage.params(0),
    )  # fmt: skip


def _epochs(run: TrialRun, first: int, last: int, outcome: str = "") -> None:
    for epoch in range(first, last + 1):
        run.add(epoch, {"fid": 100.0 - epoch})
    run.flush()
    if outcome:
        run.finish(outcome, "", tags={"ended_epoch": str(last)})


def test_lineage_rebuilds_the_schedule_of_a_member_cloned_twice(tmp_path):
    """Trial t2 clones t1 at epoch 2, then t3 clones t2 at epoch 4: the final
    member of t3 trained under lr 1 (epochs 1-2, t1's run), 2 (3-4, t2's
    clone) and 3 (5-6, its own clone); the runs cloned over ended where
    they were, and their metric paths join along the lineage."""
    uri = f"sqlite:///{tmp_path}/store.db"
    init_store(uri)
    client = MlflowClient(uri)
    exp = experiment_id(client, "gan_stability", uri)
    parent = start_parent(client, exp, "pbt", {}, {})
    r1 = _member_run(client, exp, parent, "t1", Lineage(), 1e-3, "t1")
    _epochs(r1, 1, 6, "ok")
    first_t2 = _member_run(client, exp, parent, "t2", Lineage(), 9e-3, "t2")
    _epochs(first_t2, 1, 2)
    # what t2's checkpoint-restore sees: t1's state at epoch 2
    state = {"epoch": 2, "lineage": Lineage().saved("t1", [r1.run_id])}
    clone2 = Lineage.of(state, "t2")
    assert clone2 == Lineage(1, (r1.run_id,), 2, cloned=True)
    r2 = _member_run(client, exp, parent, "t2", clone2, 2e-3, "t2 gen 1")
    _epochs(r2, 3, 6, "ok")
    first_t3 = _member_run(client, exp, parent, "t3", Lineage(), 8e-3, "t3")
    _epochs(first_t3, 1, 4)
    clone3 = Lineage.of({"epoch": 4, "lineage": clone2.saved("t2", [r2.run_id])}, "t3")
    r3 = _member_run(client, exp, parent, "t3", clone3, 3e-3, "t3 gen 2")
    # a retry of t3 from its own checkpoint finds the same run again
    retry = Lineage.of({"epoch": 5, "lineage": clone3.saved("t3", [r3.run_id])}, "t3")
    assert retry == Lineage(2, (r2.run_id,), 4)
    assert _member_run(client, exp, parent, "t3", retry, 3e-3, "t3 gen 2").run_id == r3.run_id
    _epochs(r3, 5, 6, "ok")
    runs = load_runs("gan_stability", uri)
    table = schedules(runs, ["lr_g"])
    mine = table[table["member"] == r3.run_id]
    assert list(mine["run_id"]) == [r1.run_id, r2.run_id, r3.run_id]
    assert list(mine["generation"]) == [0, 1, 2]
    assert list(mine["first_epoch"]) == [1, 3, 5] and list(mine["last_epoch"]) == [2, 4, 6]
    assert list(mine["lr_g"]) == [1e-3, 2e-3, 3e-3]
    assert set(table["member"]) == {r1.run_id, r2.run_id, r3.run_id}  # the cloned-over: none
    replaced = runs.set_index("run_id").loc[[first_t2.run_id, first_t3.run_id]]
    assert list(replaced[REPLACED_TRIAL]) == ["t2", "t3"]
    assert list(replaced["outcome"]) == ["stopped", "stopped"]
    assert replaced["trial_id"].isna().all()
    history = load_history("gan_stability", uri, runs=runs, metrics=["fid"])
    path = member_paths(mine, history, "fid")
    assert list(path["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert list(path["value"]) == [99.0, 98.0, 97.0, 96.0, 95.0, 94.0]


def test_a_clone_takes_the_weights_and_moments_but_keeps_its_own_optimiser_settings():
    """The state of one GAN loaded into another built with other learning
    rates and beta1: parameters and Adam moments are the donor's, lr and
    betas the clone's config's."""
    x = torch.rand(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))

    def gan(lr: float, beta1: float, seed: int) -> Pack:
        torch.manual_seed(seed)
        cfg = GANConfig(arch="mlp", width=32, batch_size=32, lr_g=lr, lr_d=lr, beta1=beta1)
        return Pack([FAMILIES["gan"](cfg, x, x[:16], y)])

    donor, clone = gan(1e-3, 0.5, 0), gan(7e-4, 0.2, 1)
    donor.train_epoch()
    clone.take_over(donor.state_dict())
    for key, opt in clone.engine.optimizers.items():
        mine = donor.engine.optimizers[key]
        for group in opt.param_groups:
            assert group["lr"] == 7e-4 and group["betas"][0] == 0.2
        for p, q in zip(opt.param_groups[0]["params"], mine.param_groups[0]["params"], strict=True):
            assert torch.equal(p, q)
            assert torch.equal(opt.state[p]["exp_avg"], mine.state[q]["exp_avg"])


def test_pb2_takes_the_continuous_mutable_axes_as_its_bandits_bounds(tmp_path):
    """PB2 works within bounds: of gan_stability's mutable axes it takes the
    learning rates and beta1 (n_disc, a choice, is cloned, never picked),
    with the axes' own ranges; PBT takes all four, with the axes as Tune
    domains to resample from."""
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.schedulers.pb2 import PB2

    from study.request import StudyRequest
    from study.runner.prepare import prepare
    from study.runner.tune_run import SCHEDULERS
    from study.studies import STUDIES

    def plan(scheduler: str):
        return prepare(StudyRequest("gan_stability", smoke=True, scheduler=scheduler,
                                    storage=str(tmp_path / scheduler)))  # fmt: skip

    pb2 = plan("pb2")
    assert pb2.population == ("lr_g", "lr_d", "beta1") and pb2.confirm == 0
    scheduler = SCHEDULERS["pb2"](pb2)
    axes = STUDIES["gan_stability"].axes
    assert isinstance(scheduler, PB2) and scheduler._synch
    assert scheduler._hyperparam_bounds == {
        k: [axes[k].low, axes[k].high] for k in ("lr_g", "lr_d", "beta1")
    }
    pbt = plan("pbt")
    assert pbt.population == MUTABLE and pbt.optuna_url is None
    scheduler = SCHEDULERS["pbt"](pbt)
    assert isinstance(scheduler, PopulationBasedTraining) and not isinstance(scheduler, PB2)
    assert scheduler._perturbation_interval == pbt.eval_every == 1
    assert set(scheduler._hyperparam_mutations) == set(MUTABLE)
    assert pbt.resolved.fixed["checkpoint_seconds"] == 0.0


def test_a_member_that_ends_before_a_meeting_does_not_hold_the_others(tmp_path, shared_ray):
    """Synchronous PBT waits at each meeting for every live member. Three
    members on Tune, one leaving after step 1 while the other two wait at
    step 2: with Ray's own PBT they would wait for ever (ray#12122); with
    the harness's the meeting is held without it, one clones the other, and
    both reach their last step, 3."""
    import os

    import ray
    from ray import tune

    from study.runner.population import MeetingPBT
    from tests.pbt_member import member

    os.environ.update({k: v for k, v in shared_ray.env.items() if k.startswith("RAY_AUTH")})
    ray.init(address=shared_ray.address, log_to_driver=False, include_dashboard=False)
    try:
        scheduler = MeetingPBT(
            time_attr="running_epoch", metric="objective", mode="max", perturbation_interval=2,
            hyperparam_mutations={"x": tune.uniform(0.0, 1.0)}, synch=True,
        )  # fmt: skip
        tuner = tune.Tuner(
            tune.with_resources(member, {"cpu": 0.1}),
            param_space={"x": tune.grid_search([0.1, 0.9, 0.5]), "ends": tune.sample_from(
                lambda spec: spec.config["x"] == 0.5)},
            tune_config=tune.TuneConfig(scheduler=scheduler, time_budget_s=90, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=str(tmp_path), name="meeting", verbose=0),
        )  # fmt: skip
        results = tuner.fit()
    finally:
        ray.shutdown()
    steps = sorted(r.metrics.get("running_epoch", 0) for r in results)
    assert steps == [1, 3, 3], steps
    assert scheduler._num_perturbations >= 1
