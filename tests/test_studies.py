"""Every study's --smoke run through the CLI writes its family's metrics to
MLflow, per epoch; and --sweep turns any setting into an axis."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from models.config import ConfigError
from study.spec import Choice, resolve
from study.studies import STUDIES

# metrics each family must log at every evaluation of a smoke run (epochs 1, 2)
FAMILY_METRICS = {
    "sparse_ae": ("recon_mse", "sparsity", "active_fraction", "sparsity_penalty"),
    "denoising_ae": ("recon_mse", "recon_mse_train", "denoise_mse"),
    "vae_kl": ("recon_mse", "kl", "active_units", "fid", "kl_weight", "sample_seconds"),
    "dvae_temperature": ("recon_mse", "kl", "code_perplexity", "tau", "fid"),
    "diffusion_schedule": (
        "fid",
        "fid_ddim5_eta0",
        "fid_ddim10_eta1",
        "sample_seconds_ddim5_eta0",
        "sample_seconds_ddim10_eta1",
        "eps_loss",
    ),
}


def test_list_names_every_family_study():
    assert set(FAMILY_METRICS) | {"gan_stability", "gan_modes", "gan_stabilisers"} == set(STUDIES)


@pytest.mark.parametrize("study", list(FAMILY_METRICS))
def test_smoke_study_logs_its_family_metrics(smoke_store, study):
    out = smoke_store.outputs[study]
    assert "Outcomes: 4 trials" in out.stdout
    client = MlflowClient(smoke_store.uri)
    exp = client.get_experiment_by_name(study)
    children = [
        r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags
    ]
    assert len(children) == 4 and len({r.data.params["config_id"] for r in children}) == 2
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params["family"] == STUDIES[study].family
        for key in FAMILY_METRICS[study]:
            history = client.get_metric_history(child.info.run_id, key)
            assert [m.step for m in history] == [1, 2], key
        assert all(v == v for v in child.data.metrics.values())  # no NaN anywhere


def test_end_table_shows_only_metrics_the_trials_reported(smoke_store):
    # the smoke run samples with ddim5_eta0 and ddim10_eta1, not the default
    # samplers whose fids the study's table lists
    out = smoke_store.outputs["diffusion_schedule"].stdout
    table = out[out.index("Best configurations") : out.index("Outcomes:")].splitlines()
    assert table[1].split() == ["#", "schedule", "fid", "outcomes"], table
    assert not any("- ± -" in row for row in table[2:]), table


def test_sweep_makes_any_setting_an_axis():
    study = STUDIES["diffusion_schedule"]
    resolved = resolve(study, {}, sweeps={"T": ["250", "1000"], "loss": ["mse", "huber"]})
    assert resolved.axes["T"] == Choice((250, 1000))
    assert resolved.axes["loss"] == Choice(("mse", "huber"))
    assert "T" not in resolved.fixed and "schedule" in resolved.axes
    with pytest.raises(ConfigError, match="both --set and --sweep"):
        resolve(study, {"T": "100"}, sweeps={"T": ["250", "1000"]})
    with pytest.raises(ConfigError, match="not accepted"):
        resolve(study, {}, sweeps={"loss": ["mse", "l3"]})
