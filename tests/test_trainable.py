import copy
import math

import pytest
import torch

from scoring.outcomes import divergence
from study.trial.trainable import read_scalars, run_name
from tests.conftest import local_plan


def test_read_scalars_reads_device_tensors_once_and_keeps_floats():
    out = read_scalars({"d_loss": torch.tensor(0.5), "g_loss": torch.tensor([2.0]), "lr": 0.1})
    assert out == {"d_loss": 0.5, "g_loss": 2.0, "lr": 0.1}


def test_divergence_catches_non_finite_values_and_exploding_losses():
    assert divergence({"d_loss": 0.7, "g_loss": 3.0}, 1e5) is None
    assert "non-finite g_loss" in divergence({"d_loss": 0.7, "g_loss": math.nan}, 1e5)
    assert "non-finite d_loss" in divergence({"d_loss": math.inf}, 1e5)
    assert "exceeds max_loss" in divergence({"d_loss": -2e6}, 1e5)
    # only losses are bounded; other scalars may be large
    assert divergence({"grad_norm": 1e9}, 1e5) is None


def test_run_names_show_what_varies_and_the_seed():
    name = run_name({"lr_g": 0.000123, "loss": "ns", "epochs": 5}, ("lr_g", "loss"), 2)
    assert name == "lr_g=0.00012 loss=ns seed=2"


def _tiny_gan():
    from models.gan import GAN, GANConfig

    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8)
    return GAN(GANConfig(width=8, batch_size=32), x, x[:4])


def test_bf16_autocast_runs_the_step_in_bfloat16():
    from study.studies.spec import TrialConfig
    from study.trial.trainable import speed_ups

    gan = _tiny_gan()
    with speed_ups(gan, TrialConfig(bf16=True), torch.device("cpu")):
        logits = gan.D(gan.G(torch.randn(4, gan.cfg.z_dim)))
        metrics = read_scalars(gan.train_epoch())
    assert logits.dtype == torch.bfloat16
    assert all(math.isfinite(v) for v in metrics.values())
    with speed_ups(gan, TrialConfig(), torch.device("cpu")):
        assert gan.D(gan.G(torch.randn(4, gan.cfg.z_dim))).dtype == torch.float32


def test_compile_keeps_checkpoint_keys_and_trains(monkeypatch):
    """`compile` compiles every network in place: checkpoint keys unchanged,
    and the training step runs through the compiled graphs and moves the
    weights. Compiled by dynamo and AOTAutograd with the `aot_eager` backend
    rather than inductor's default: the same tracing of our step, forward and
    backward, without inductor's C++ code generation, which is torch's to
    test and costs 35 s of a fresh machine's CPU (a cold kernel cache)."""
    import functools

    import torch._dynamo

    from study.studies.spec import TrialConfig
    from study.trial.trainable import speed_ups

    compile_ = functools.partialmethod(torch.nn.Module.compile, backend="aot_eager")
    monkeypatch.setattr(torch.nn.Module, "compile", compile_)
    torch._dynamo.reset()
    gan = _tiny_gan()
    keys, before = set(gan.state_dict()["G"]), [p.clone() for p in gan.G.parameters()]
    speed_ups(gan, TrialConfig(compile=True), torch.device("cpu"))
    assert set(gan.state_dict()["G"]) == keys  # checkpoints stay loadable either way
    assert gan.G._compiled_call_impl is not None and gan.D._compiled_call_impl is not None
    assert all(math.isfinite(v) for v in read_scalars(gan.train_epoch()).values())
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # G's and D's
    assert any(not torch.equal(a, b) for a, b in zip(before, gan.G.parameters(), strict=True))


def _store(tmp_path, name: str):
    """(client, experiment id, parent run id) in a fresh sqlite store."""
    from mlflow import MlflowClient

    from study.tracking.store import experiment_id, init_store, start_parent

    uri = f"sqlite:///{tmp_path}/store.db"
    init_store(uri)
    client = MlflowClient(uri)
    exp = experiment_id(client, name)
    return client, exp, start_parent(client, exp, name, {}, {})


def _gan_context(tmp_path, client, exp: str, parent: str, settings: dict, **kw):
    """A smoke gan_stability trial's plan (digits data, one thread)."""
    return local_plan("gan_stability", tmp_path, client.tracking_uri, exp, parent, settings, **kw)


def test_a_trial_gives_the_same_results_in_a_fresh_or_a_reused_process(tmp_path):
    """Tune reuses trial processes: what a process built for an earlier trial
    (the feature classifier, cached) must not shift a later trial's random
    streams. Building the classifier draws from torch's generator; before the
    trial was seeded after all set-up, a fresh process gave other numbers."""
    from scoring import features, registry
    from study.trial.session import LocalSession
    from study.trial.trainable import run_trial

    ctx = _gan_context(tmp_path, *_store(tmp_path, "reuse"), {"arch": "mlp"})

    def trial(name: str, config: dict) -> dict:
        session = LocalSession(name)
        run_trial(config, ctx, "search", session)
        return {k: v for k, v in session.results[-1].items() if isinstance(v, float)}

    features.extractor_for.cache_clear()  # as in a fresh process
    registry.reference.cache_clear()
    fresh = trial("fresh", {})
    trial("other", {"lr_g": 1e-3})  # the process runs another trial first
    reused = trial("reused", {})
    assert fresh["fid"] == reused["fid"] and fresh["g_loss"] == reused["g_loss"]


def test_a_short_trial_checkpoints_at_its_end_only_unless_asked_for_more(tmp_path):
    """checkpoint_seconds (default 10): a trial of a few seconds reports every
    evaluation but carries a checkpoint only with its last; 0 checkpoints at
    every evaluation. MLflow gets every evaluation either way."""
    from study.tracking.store import find_trial_run
    from study.trial.session import LocalSession
    from study.trial.trainable import run_trial

    class Counting(LocalSession):
        def report(self, result, state):
            self.checkpointed = [*getattr(self, "checkpointed", []), state is not None]
            super().report(result, state)

    client, exp, parent = _store(tmp_path, "ckpt")
    for seconds, expected in ((10.0, [False, False, True]), (0.0, [True, True, True])):
        settings = {"arch": "mlp", "epochs": "3", "checkpoint_seconds": str(seconds)}
        ctx = _gan_context(tmp_path, client, exp, parent, settings)
        session = Counting(f"every-{seconds}")
        run_trial({}, ctx, "search", session)
        assert session.checkpointed == expected
        run = find_trial_run(client, exp, parent, f"every-{seconds}")
        assert [m.step for m in client.get_metric_history(run.info.run_id, "fid")] == [1, 2, 3]


def test_a_trial_retried_after_its_end_reports_that_end_and_trains_nothing(tmp_path):
    """The driver can die after a trial ended (its run FINISHED in MLflow) and
    before Tune saved that: the resumed study retries it from an older
    checkpoint. The retry reports the recorded end; it neither trains nor
    reopens the run."""
    from study.tracking.store import find_trial_run
    from study.trial.session import LocalSession
    from study.trial.trainable import run_trial

    class Keeping(LocalSession):
        def report(self, result, state):
            if state is not None:
                self.states = [*getattr(self, "states", []), state]
            super().report(result, state)

    client, exp, parent = _store(tmp_path, "ended")
    settings = {"arch": "mlp", "epochs": "3", "checkpoint_seconds": "0"}
    ctx = _gan_context(tmp_path, client, exp, parent, settings)
    first = Keeping("t1")
    run_trial({}, ctx, "search", first)
    assert [s["epoch"] for s in first.states] == [1, 2, 3]
    before = find_trial_run(client, exp, parent, "t1")

    retry = Keeping("t1")
    retry.report({}, first.states[0])  # Tune hands the retry the epoch-1 checkpoint
    retry.results.clear()
    run_trial({}, ctx, "search", retry)
    assert len(retry.results) == 1  # the end, once; no epoch trained or evaluated
    end = first.results[-1]
    assert {k: retry.results[0][k] for k in ("epoch", "fid", "objective", "outcome")} == {
        k: end[k] for k in ("epoch", "fid", "objective", "outcome")
    }
    after = find_trial_run(client, exp, parent, "t1")
    assert after.info.status == "FINISHED" and after.info.end_time == before.info.end_time
    assert after.data.tags["restored_from_epoch"] == "3"
    history = client.get_metric_history(after.info.run_id, "d_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]


def test_the_tables_take_a_trials_recorded_end_where_tunes_result_is_no_end(tmp_path):
    """After the driver dies, Tune can hold an older result of a trial that
    had ended and recorded its end in MLflow (written before Tune is told):
    the results the tables are built from take that end. A trial stopped
    early, which recorded no end, keeps Tune's result."""
    from ray.tune import Result

    from study.runner.summary import trial_rows
    from study.runner.tune_run import settled
    from study.tracking.store import close_run, find_trial_run
    from study.trial.session import LocalSession
    from study.trial.trainable import run_trial

    class Stopped(LocalSession):
        def report(self, result, state):
            super().report(result, state)
            if result["epoch"] == 2:
                raise RuntimeError("stopped by the scheduler")

    client, exp, parent = _store(tmp_path, "settle")
    ctx = _gan_context(tmp_path, client, exp, parent, {"arch": "mlp", "epochs": "3"})
    ended, stopped = LocalSession("ended"), Stopped("stopped")
    run_trial({}, ctx, "search", ended)
    with pytest.raises(RuntimeError):
        run_trial({}, ctx, "search", stopped)
    run = find_trial_run(client, exp, parent, "stopped")
    close_run(client, run.info.run_id, "stopped", "stopped early", "FINISHED")  # as CloseRuns
    packed = _pack_context(tmp_path, "settle-pack", {})[3]
    pack = LocalSession("pack")
    run_trial({}, packed, "search", pack)

    def tune_result(session, trial_id: str, error=None) -> Result:
        older = session.results[1] | {"trial_id": trial_id}  # epoch 2 of 3: running
        return Result(metrics=older, checkpoint=None, error=error, path=str(tmp_path))

    results = [
        tune_result(ended, "ended"),
        tune_result(ended, "ended", RuntimeError("the process died after its end")),
        tune_result(stopped, "stopped"),
    ]
    out = settled(results, ctx)
    final = ended.results[-1]
    for r in out[:2]:
        assert r.error is None and r.metrics["epoch"] == 3 and r.metrics["fid"] == final["fid"]
        assert r.metrics["outcome"] == final["outcome"] != "running"
    assert out[2] is results[2]  # no recorded end: Tune's result stays
    rows = trial_rows(out, (), ("fid",))
    assert rows["outcome"].tolist() == [final["outcome"], final["outcome"], "stopped"]
    assert rows["fid"].tolist()[:2] == [final["fid"]] * 2

    (packed_out,) = settled([tune_result(pack, "pack")], packed)
    members = pack.results[-1]["members"]
    assert [m["seed"] for m in packed_out.metrics["members"]] == [0, 1, 2]
    assert [m["fid"] for m in packed_out.metrics["members"]] == [m["fid"] for m in members]
    assert [m["epoch"] for m in packed_out.metrics["members"]] == [3, 3, 3]


# --- seed packs: a trial training several seeds as one fused model ----------


def _pack_context(tmp_path, name: str, settings: dict):
    """A smoke wgan_gp gan_stability trial of 3 epochs as a pack of 3 seeds."""
    client, exp, parent = _store(tmp_path, name)
    base = {"arch": "mlp", "loss": "wgan_gp", "epochs": "3", **settings}
    return client, exp, parent, _gan_context(tmp_path, client, exp, parent, base, seeds=3, pack=3)


def _pack_trial(ctx, trial_id: str):
    from study.trial.session import LocalSession
    from study.trial.trainable import run_trial

    session = LocalSession(trial_id)
    run_trial({}, ctx, "search", session)
    return session.results


def test_a_pack_trial_logs_every_seed_to_its_own_run_as_a_lone_trial_would(tmp_path):
    from dataclasses import replace

    from ray.tune.search.repeater import TRIAL_INDEX

    from study.tracking.store import trial_runs
    from study.trial.session import LocalSession
    from study.trial.trainable import run_trial

    client, exp, parent, ctx = _pack_context(tmp_path, "pack", {})
    results = _pack_trial(ctx, "p")
    assert [r["epoch"] for r in results] == [1, 2, 3]
    end = results[-1]
    members = end["members"]
    assert [m["seed"] for m in members] == [0, 1, 2]
    assert (
        len({m["config_id"] for m in members}) == 1 and end["config_id"] == members[0]["config_id"]
    )
    assert end["objective"] == sum(m["objective"] for m in members) / 3
    assert all(m["outcome"] in ("ok", "collapsed") for m in members) and end["outcome"] == "ended"

    runs = sorted(trial_runs(client, exp, parent, "p"), key=lambda r: r.data.tags["member"])
    assert [r.data.tags["member"] for r in runs] == ["0", "1", "2"]
    for run, member in zip(runs, members, strict=True):
        assert run.info.status == "FINISHED" and run.data.tags["pack"] == "3"
        assert run.data.params["seed"] == str(member["seed"])
        assert run.data.tags["outcome"] == member["outcome"]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "fid")] == [1, 2, 3]
        assert run.data.metrics["fid"] == member["fid"]
        pictures = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "final_metrics.json" in pictures and any("sample" in p for p in pictures)

    # the second seed alone (a trial of one, seed index 1) trains to the same losses
    alone = LocalSession("alone")
    run_trial({TRIAL_INDEX: 1}, replace(ctx, request=replace(ctx.request, pack=1)), "search", alone)
    lone = alone.results[-1]
    assert lone["seed"] == 1 and "members" not in lone
    for key in ("d_loss", "g_loss", "fid"):
        assert members[1][key] == pytest.approx(lone[key], rel=1e-3), key


def test_a_member_that_diverges_ends_alone_and_counts_as_the_penalty(tmp_path):
    from dataclasses import replace

    from study.studies.defaults import PENALTY
    from study.tracking.store import trial_runs

    client, exp, parent, ctx = _pack_context(tmp_path, "diverge", {})
    calm = _pack_trial(ctx, "calm")
    # max_loss between the calmest two seeds' worst loss over all epochs and
    # the third seed's loss at epoch 1: that seed alone diverges, at once
    worst = [
        max(abs(r["members"][k][n]) for r in calm for n in ("d_loss", "g_loss")) for k in range(3)
    ]
    first = [max(abs(calm[0]["members"][k][n]) for n in ("d_loss", "g_loss")) for k in range(3)]
    hit = max(range(3), key=lambda k: first[k])
    others = [k for k in range(3) if k != hit]
    assert first[hit] > max(worst[k] for k in others)  # the seeds tell apart
    threshold = (first[hit] + max(worst[k] for k in others)) / 2

    results = _pack_trial(
        replace(
            ctx, resolved=replace(ctx.resolved, fixed={**ctx.resolved.fixed, "max_loss": threshold})
        ),
        "hit",
    )
    end = results[-1]
    diverged = end["members"][hit]
    assert diverged["outcome"] == "diverged" and diverged["epoch"] == 1
    assert diverged["objective"] == PENALTY
    for k in others:  # trained on, exactly as in the undisturbed pack
        assert end["members"][k]["epoch"] == 3
        assert end["members"][k]["outcome"] == calm[-1]["members"][k]["outcome"] != "diverged"
        for key in ("d_loss", "g_loss", "fid"):
            assert end["members"][k][key] == pytest.approx(calm[-1]["members"][k][key], rel=1e-6)
    assert end["objective"] == pytest.approx(
        (PENALTY + sum(end["members"][k]["objective"] for k in others)) / 3
    )
    run = next(
        r for r in trial_runs(client, exp, parent, "hit") if r.data.tags["member"] == str(hit)
    )
    assert run.info.status == "FINISHED" and run.data.tags["outcome"] == "diverged"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "d_loss")] == [1]


def test_a_pack_trial_retried_from_its_checkpoint_ends_as_an_uninterrupted_one(tmp_path):
    from study.tracking.store import trial_runs
    from study.trial.session import LocalSession
    from study.trial.trainable import run_trial

    class Dying(LocalSession):
        """Keeps the checkpoints; the process dies on reporting epoch 2."""

        def report(self, result, state):
            if state is not None:  # as saved then (training goes on in these tensors)
                self.states = [*getattr(self, "states", []), copy.deepcopy(state)]
            if result["epoch"] == 2:
                raise RuntimeError("killed")
            super().report(result, state)

    client, exp, parent, ctx = _pack_context(tmp_path, "retry", {"checkpoint_seconds": "0"})
    through = _pack_trial(ctx, "through")[-1]
    first = Dying("r")
    with pytest.raises(RuntimeError):
        run_trial({}, ctx, "search", first)
    retry = LocalSession("r")
    retry.report({}, first.states[0])  # Tune hands the retry the epoch-1 checkpoint
    retry.results.clear()
    run_trial({}, ctx, "search", retry)
    assert [r["epoch"] for r in retry.results] == [2, 3]
    for k in range(3):
        for key in ("d_loss", "g_loss", "fid", "objective"):
            got, want = retry.results[-1]["members"][k][key], through["members"][k][key]
            assert got == pytest.approx(want, rel=1e-6), (k, key)
    for run in trial_runs(client, exp, parent, "r"):  # every epoch once, every run ended
        assert run.info.status == "FINISHED" and run.data.tags["restored_from_epoch"] == "1"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "fid")] == [1, 2, 3]
