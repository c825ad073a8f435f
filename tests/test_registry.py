"""The sample-metric registry: a metric registered in one line is scored and
logged by a real trial; a study naming a metric nobody logs is refused
before anything starts; the analysis side reads every metric key."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from datasources import load_dataset
from scoring.registry import METRICS, evaluate_samples, register, split_sampler_metric
from study.errors import UsageError
from study.runner.prepare import check_metric_names
from study.studies import STUDIES
from study.tracking.store import experiment_id, find_trial_run, init_store, start_parent
from study.trial.session import LocalSession
from study.trial.trainable import run_trial
from tests.conftest import local_plan


@pytest.fixture
def toy_metric():
    """Mean brightness of the samples: needs nothing, scored per sampler."""
    register("toy_brightness", lambda s: float(s.samples.mean()), "", "max", True, "toy")
    yield "toy_brightness"
    del METRICS["toy_brightness"]


def test_a_registered_metric_is_scored_by_evaluate_samples(toy_metric):
    dark = evaluate_samples(torch.zeros(50, 1, 8, 8), "digits")
    light = evaluate_samples(torch.full((50, 1, 8, 8), 0.5), "digits")
    assert dark[toy_metric] == 0.0 and light[toy_metric] == pytest.approx(0.5)
    assert {"fid", "kid", "modes_covered"} <= set(dark)
    assert "sample_seconds" not in dark and "modes_captured" not in dark  # needs unmet


def test_a_registered_metric_is_logged_by_a_trial_for_every_sampler(toy_metric, tmp_path):
    uri = f"sqlite:///{tmp_path}/store.db"
    init_store(uri)
    client = MlflowClient(uri)
    exp = experiment_id(client, "toy")
    parent = start_parent(client, exp, "toy", {}, {})
    study = STUDIES["diffusion_schedule"]  # smoke samplers: ddim5_eta0 (main), ddim10_eta1
    plan = local_plan(study.name, tmp_path, uri, exp, parent, {}, searched=True)
    session = LocalSession("toy-trial")
    run_trial({"schedule": "cosine"}, plan, "search", session)
    run = find_trial_run(client, exp, parent, "toy-trial")
    assert run.info.status == "FINISHED"
    for key in (toy_metric, f"{toy_metric}_ddim5_eta0", f"{toy_metric}_ddim10_eta1"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps == [1, 2], key
        assert 0 < run.data.metrics[key] < 1
    assert session.results[-1][toy_metric] == run.data.metrics[toy_metric]
    # density is not per sampler: logged unsuffixed only
    assert "density" in run.data.metrics and "density_ddim10_eta1" not in run.data.metrics


def test_per_sampler_names_split_on_the_longest_registered_metric():
    assert split_sampler_metric("fid_ddim10_eta0") == ("fid", "ddim10_eta0")
    assert split_sampler_metric("sample_seconds_ddpm") == ("sample_seconds", "ddpm")
    assert split_sampler_metric("density_ddpm") is None  # not per sampler
    assert split_sampler_metric("fid") is None


@pytest.mark.parametrize(
    ("study", "field", "name", "ok"),
    [
        ("gan_stability", "metric", "fid", True),
        ("gan_stability", "metric", "fdi", False),
        ("gan_stability", "table_metrics", ("recon_mse",), False),
        ("gan_stability", "table_metrics", ("fid_ddim10_eta0",), False),  # a GAN has no samplers
        ("gan_modes", "metric", "modes_covered", False),  # image metric on 2-D data
        ("diffusion_schedule", "table_metrics", ("fid_ddpm", "sample_seconds_ddim7_eta0.5"), True),
        ("diffusion_schedule", "table_metrics", ("fid_euler",), False),
        ("vae_kl", "table_metrics", ("kl", "active_units", "fid", "kl_train"), True),
        ("sparse_ae", "metric", "fid", False),  # reconstruct-only: no sample metrics
    ],
)
def test_study_metrics_are_checked_against_family_and_registry(study, field, name, ok):
    spec = replace(STUDIES[study], **{field: name})
    data = load_dataset(spec.dataset).subset(64)
    if ok:
        check_metric_names(spec, data)
        return
    with pytest.raises(UsageError) as err:
        check_metric_names(spec, data)
    assert "is not logged by family" in str(err.value) and "\n" not in str(err.value)


def test_every_registered_study_names_metrics_its_family_logs():
    for study in STUDIES.values():
        check_metric_names(study, load_dataset(study.dataset).subset(64))


def test_load_history_sees_a_metric_that_only_a_late_run_logged(tmp_path):
    """Runs of one study log different keys; the 61st run's must not be missed."""
    from analysis import load_history, load_runs

    uri = f"sqlite:///{tmp_path}/store.db"
    client = MlflowClient(uri)
    exp = experiment_id(client, "keys")
    parent = start_parent(client, exp, "keys", {}, {})
    for i in range(61):
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent, "outcome": "ok"})
        client.log_param(run.info.run_id, "config_id", f"c{i}")
        client.log_param(run.info.run_id, "seed", "0")
        client.log_metric(run.info.run_id, "fid", float(i), step=1)
        if i == 60:
            client.log_metric(run.info.run_id, "fid_ddpm", 1.5, step=1)
    runs = load_runs("keys", uri)
    history = load_history("keys", uri, runs=runs)
    assert set(history["metric"]) == {"fid", "fid_ddpm"}
    assert history[history["metric"] == "fid_ddpm"]["value"].tolist() == [1.5]


def test_sampler_table_reads_every_sampler_the_registry_names():
    from analysis import sampler_table

    runs = pd.DataFrame(
        {"run_id": ["a", "b"], "config_id": ["c", "c"], "seed": [0, 1], "T": [100, 100],
         "family": ["diffusion"] * 2,
         "schedule": ["cosine", "cosine"], "fid_ddpm": [3.0, 4.0],
         "fid_ddim10_eta0": [5.0, 6.0], "fid_inception": [1.0, 1.0], "density": [1.0, 1.0],
         "class_accuracy_ddim10_eta0_w3": [0.9, 0.8], "recall_ddpm20_beta": [0.5, 0.6]}
    )  # fmt: skip
    table = sampler_table(runs)
    assert sorted(set(table["sampler"])) == ["ddim10_eta0", "ddim10_eta0_w3", "ddpm", "ddpm20_beta"]
    ddpm = table[table["sampler"] == "ddpm"]
    assert ddpm["steps"].tolist() == [100, 100] and ddpm["eta"].tolist() == [1.0, 1.0]
    assert not ddpm["beta"].any() and ddpm["w"].isna().all()
    guided = table[table["sampler"] == "ddim10_eta0_w3"]
    assert guided["w"].tolist() == [3.0, 3.0] and set(guided["metric"]) == {"class_accuracy"}
    beta = table[table["sampler"] == "ddpm20_beta"]
    assert beta["beta"].all() and beta["steps"].tolist() == [20, 20]


def test_the_analysis_package_exports_its_public_functions():
    import analysis

    for name in ("load_runs", "load_history", "config_stats", "budget_curve", "importance",
                 "stability_map", "knobs", "figures", "evaluate_samples"):  # fmt: skip
        assert callable(getattr(analysis, name)), name
