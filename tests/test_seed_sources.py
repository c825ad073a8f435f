"""Seed sources kept apart (study/trial/seeds.py): init, data order, training
noise and evaluation draws, each settable while the others stay; by default
all follow the trial's seed through one stream, as before they were split;
evaluation noise measured over several draws at the final evaluation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from models.gan import GAN, GANConfig
from scoring.registry import score_samples
from study.studies.spec import SEED_SOURCES, TrialConfig, config_id
from study.trial.evaluation import draw_noise
from study.trial.seeds import SeedSources, stream_seed
from study.trial.trainable import build, seed_everything
from tests.test_trainable import _gan_context, _store


def _data():
    from datasources import load_dataset

    return load_dataset("digits").subset(256)


def _weights(family) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in family.G.parameters()])


def test_every_source_follows_the_seed_unless_set_and_setting_one_splits_the_streams():
    plain = SeedSources.of(TrialConfig(), 3)
    assert plain.params() == dict.fromkeys(SEED_SOURCES, 3) and not plain.split
    only_eval = SeedSources.of(TrialConfig(eval_seed=7), 3)
    assert only_eval.params() == {"init_seed": 3, "data_seed": 3, "sample_seed": 3, "eval_seed": 7}
    assert only_eval.split
    # the same number given to two sources still seeds two different streams
    assert len({stream_seed(5, s) for s in ("data_seed", "sample_seed", "eval_seed")}) == 3
    # a seed source is a seed: it never makes another configuration
    values = {"lr_g": 1e-3, "seed": 0}
    assert config_id(values | {"eval_seed": 1, "data_seed": 4}) == config_id(values)


def test_by_default_training_is_what_it_was_before_the_sources_were_split():
    """The old procedure, written out: seed everything, build, train from
    the one global stream (order and noise interleaved)."""
    data, cfg = _data(), GANConfig(arch="mlp", batch_size=64)
    seed_everything(4)
    old = GAN(cfg, data.train_x, data.test_x)
    old.train_epoch()
    new = build("gan", cfg, data, [SeedSources.of(TrialConfig(), 4)]).leader
    new.train_epoch()
    assert torch.equal(_weights(old), _weights(new))


def test_each_source_moves_only_what_it_seeds():
    data, cfg = _data(), GANConfig(arch="mlp", batch_size=64)

    def trained(**sources):
        family = build("gan", cfg, data, [SeedSources.of(TrialConfig(**sources), 0)]).leader
        start = _weights(family).clone()
        family.train_epoch()
        return start, _weights(family)

    base = trained(eval_seed=0)  # split streams, every source 0
    for source in ("init_seed", "data_seed", "sample_seed"):
        start, end = trained(eval_seed=0, **{source: 1})
        assert torch.equal(start, base[0]) == (source != "init_seed"), source
        assert not torch.equal(end, base[1]), source
    # the eval seed leaves training alone
    start, end = trained(eval_seed=5)
    assert torch.equal(start, base[0]) and torch.equal(end, base[1])


def test_a_study_varying_only_eval_seed_keeps_init_and_data_seeds_on_every_run(tmp_path):
    """Three in-process trials, eval_seed 0, 1, 2: each run records the
    sources as numbers, the same init and data seeds and configuration, the
    same training (losses), and other samples scored (fid)."""
    from study.tracking.store import find_trial_run
    from study.trial.session import LocalSession
    from study.trial.trainable import run_trial

    client, exp, parent = _store(tmp_path, "evalonly")
    results, runs = {}, {}
    for e in (0, 1, 2):
        ctx = _gan_context(tmp_path, client, exp, parent, {"arch": "mlp", "eval_seed": str(e)})
        session = LocalSession(f"e{e}")
        run_trial({}, ctx, "search", session)
        results[e] = session.results[-1]
        runs[e] = find_trial_run(client, exp, parent, f"e{e}")
    params = [r.data.params for r in runs.values()]
    assert [p["eval_seed"] for p in params] == ["0", "1", "2"]
    assert {(p["init_seed"], p["data_seed"], p["sample_seed"], p["seed"]) for p in params} == {
        ("0", "0", "0", "0")
    }
    assert len({p["config_id"] for p in params}) == 1
    assert {r.data.tags["seed_streams"] for r in runs.values()} == {"split"}
    assert len({results[e]["g_loss"] for e in results}) == 1
    assert len({results[e]["fid"] for e in results}) == 3


def test_a_retry_continues_the_datas_own_stream_from_its_checkpoint(tmp_path):
    """With the data seeded apart, a trial resumed from its epoch-1
    checkpoint trains epochs 2-3 exactly as the uninterrupted trial did: the
    data stream's state is in the checkpoint beside the global one."""
    from study.trial.session import LocalSession
    from study.trial.trainable import run_trial

    class Keeping(LocalSession):
        def report(self, result, state):
            if state is not None:
                # a copy: a state holds the live networks' tensors
                self.states = [*getattr(self, "states", []), copy.deepcopy(state)]
            super().report(result, state)

    client, exp, parent = _store(tmp_path, "resume")
    settings = {"arch": "mlp", "epochs": "3", "checkpoint_seconds": "0", "data_seed": "9"}
    ctx = _gan_context(tmp_path, client, exp, parent, settings)
    whole = Keeping("whole")
    run_trial({}, ctx, "search", whole)
    assert len(whole.states[0]["data_rng"]) == 1
    retry = Keeping("retry")
    retry.report({}, whole.states[0])
    retry.results.clear()
    run_trial({}, ctx, "search", retry)
    assert retry.results[-1]["d_loss"] == whole.results[-1]["d_loss"]
    assert retry.results[-1]["fid"] == whole.results[-1]["fid"]


def test_evaluation_noise_is_the_spread_over_independent_draws():
    """draw_noise against the draws scored here by hand: mean and sample
    standard deviation (ddof 1) over the first evaluation and R - 1 more,
    each drawn from its own stream of the eval seed."""
    data = _data()
    seed_everything(0)
    gan = GAN(GANConfig(arch="mlp", batch_size=64), data.train_x, data.test_x)
    gan.train_epoch()
    cfg = TrialConfig(eval_samples=200, eval_draws=3)
    first, _ = score_samples(gan.sample(200, torch.Generator().manual_seed(1)), data.name)
    out = draw_noise(gan, data, cfg, 0, first)
    fids = [first["fid"]]
    for r in (1, 2):
        gen = torch.Generator().manual_seed(stream_seed(0, "eval_seed", r))
        fids.append(score_samples(gan.sample(200, gen), data.name)[0]["fid"])
    assert len(set(fids)) == 3  # independent draws
    assert out["fid_draws_mean"] == pytest.approx(np.mean(fids))
    assert out["fid_draws_std"] == pytest.approx(np.std(fids, ddof=1))
    assert "sample_ms_draws_mean" not in out  # timings are not a draw's metric
