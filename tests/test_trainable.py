import math

import torch

from scoring.outcomes import divergence
from study.trainable import read_scalars, run_name


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
    from study.spec import TrialConfig
    from study.trainable import speed_ups

    gan = _tiny_gan()
    with speed_ups(gan, TrialConfig(bf16=True), torch.device("cpu")):
        logits = gan.D(gan.G(torch.randn(4, gan.cfg.z_dim)))
        metrics = read_scalars(gan.train_epoch())
    assert logits.dtype == torch.bfloat16
    assert all(math.isfinite(v) for v in metrics.values())
    with speed_ups(gan, TrialConfig(), torch.device("cpu")):
        assert gan.D(gan.G(torch.randn(4, gan.cfg.z_dim))).dtype == torch.float32


def test_compile_keeps_checkpoint_keys_and_trains():
    from study.spec import TrialConfig
    from study.trainable import speed_ups

    gan = _tiny_gan()
    keys = set(gan.state_dict()["G"])
    speed_ups(gan, TrialConfig(compile=True), torch.device("cpu"))
    assert set(gan.state_dict()["G"]) == keys  # checkpoints stay loadable either way
    assert gan.G._compiled_call_impl is not None and gan.D._compiled_call_impl is not None
    assert all(math.isfinite(v) for v in read_scalars(gan.train_epoch()).values())


def _store(tmp_path, name: str):
    """(client, experiment id, parent run id) in a fresh sqlite store."""
    from mlflow import MlflowClient

    from study.tracking import experiment_id, init_store, start_parent

    uri = f"sqlite:///{tmp_path}/store.db"
    init_store(uri)
    client = MlflowClient(uri)
    exp = experiment_id(client, name)
    return client, exp, start_parent(client, exp, name, {}, {})


def _gan_context(tmp_path, client, exp: str, parent: str, settings: dict):
    """A smoke gan_stability trial's context (digits data, one thread)."""
    from study.spec import resolve
    from study.studies import STUDIES
    from study.trainable import TrialContext

    study = STUDIES["gan_stability"]
    fixed = resolve(study, settings, smoke=True).fixed
    return TrialContext(study.name, "digits", str(tmp_path), fixed, client.tracking_uri, exp,
                        parent, threads=1, searched=())  # fmt: skip


def test_a_trial_gives_the_same_results_in_a_fresh_or_a_reused_process(tmp_path):
    """Tune reuses trial processes: what a process built for an earlier trial
    (the feature classifier, cached) must not shift a later trial's random
    streams. Building the classifier draws from torch's generator; before the
    trial was seeded after all set-up, a fresh process gave other numbers."""
    from scoring import features, registry
    from study.session import LocalSession
    from study.trainable import run_trial

    ctx = _gan_context(tmp_path, *_store(tmp_path, "reuse"), {"arch": "mlp"})

    def trial(name: str, config: dict) -> dict:
        session = LocalSession(name)
        run_trial(config, ctx, session)
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
    from study.session import LocalSession
    from study.tracking import find_trial_run
    from study.trainable import run_trial

    class Counting(LocalSession):
        def report(self, result, state):
            self.checkpointed = [*getattr(self, "checkpointed", []), state is not None]
            super().report(result, state)

    client, exp, parent = _store(tmp_path, "ckpt")
    for seconds, expected in ((10.0, [False, False, True]), (0.0, [True, True, True])):
        settings = {"arch": "mlp", "epochs": "3", "checkpoint_seconds": str(seconds)}
        ctx = _gan_context(tmp_path, client, exp, parent, settings)
        session = Counting(f"every-{seconds}")
        run_trial({}, ctx, session)
        assert session.checkpointed == expected
        run = find_trial_run(client, exp, parent, f"every-{seconds}")
        assert [m.step for m in client.get_metric_history(run.info.run_id, "fid")] == [1, 2, 3]


def test_a_trial_retried_after_its_end_reports_that_end_and_trains_nothing(tmp_path):
    """The driver can die after a trial ended (its run FINISHED in MLflow) and
    before Tune saved that: the resumed study retries it from an older
    checkpoint. The retry reports the recorded end; it neither trains nor
    reopens the run."""
    from study.session import LocalSession
    from study.tracking import find_trial_run
    from study.trainable import run_trial

    class Keeping(LocalSession):
        def report(self, result, state):
            if state is not None:
                self.states = [*getattr(self, "states", []), state]
            super().report(result, state)

    client, exp, parent = _store(tmp_path, "ended")
    settings = {"arch": "mlp", "epochs": "3", "checkpoint_seconds": "0"}
    ctx = _gan_context(tmp_path, client, exp, parent, settings)
    first = Keeping("t1")
    run_trial({}, ctx, first)
    assert [s["epoch"] for s in first.states] == [1, 2, 3]
    before = find_trial_run(client, exp, parent, "t1")

    retry = Keeping("t1")
    retry.report({}, first.states[0])  # Tune hands the retry the epoch-1 checkpoint
    retry.results.clear()
    run_trial({}, ctx, retry)
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
