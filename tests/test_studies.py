"""Every study's --smoke run through the CLI writes its family's metrics to
MLflow, per epoch; and --sweep turns any setting into an axis."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from models.config import ConfigError, coerce
from study.studies import STUDIES
from study.studies.spec import Choice, resolve, settings_owner

# metrics each family must log at every evaluation of a smoke run (epochs 1, 2)
LATENT = ("path_length", "probe_accuracy")
FINAL_LATENT = "arithmetic_success"  # at the final evaluation only, with its picture
FAMILY_METRICS = {
    "sparse_ae": ("recon_mse", "sparsity", "active_fraction", "sparsity_penalty", *LATENT),
    "denoising_ae": ("recon_mse", "recon_mse_train", "denoise_mse", *LATENT),
    "vae_kl": ("recon_mse", "kl", "active_units", "fid", "kl_weight", "sample_seconds", *LATENT),
    "dvae_temperature": ("recon_mse", "kl", "code_perplexity", "tau", "fid", *LATENT),
    "vq_codebook": (
        "recon_mse",
        "codebook_perplexity",
        "dead_codes",
        "commit_loss",
        "codebook_loss",
        "fid",
        *LATENT,
    ),
    "diffusion_guidance": (
        "fid",
        "class_accuracy",
        "recall",
        "fid_ddim5_eta0_w3",
        "class_accuracy_ddim5_eta0_w3",
        "recall_ddim5_eta0_w3",
        "fid_ddpm10_beta",
        "eps_loss",
    ),
    "latent_diffusion": (
        "fid",
        "fid_ddim10_eta1",
        "sample_seconds_ddim5_eta0",
        "recon_mse",
        "kl",
        "first_stage_seconds",
        "eps_loss",
        *LATENT,
    ),
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
    gans = {"gan_stability", "gan_modes", "gan_stabilisers", "gan_collapse", "gan_replay"}
    # the seed_variance studies train gan_stability's and vae_kl's families and data
    seeds = {"seed_variance", "seed_variance_vae"}
    # the trilemma spans four of them (tests/test_trilemma.py)
    assert set(FAMILY_METRICS) | gans | seeds | {"trilemma"} == set(STUDIES)


def test_a_codebook_that_collapses_is_named_so_in_the_outcomes(smoke_store):
    """A vq_codebook trial whose codebook is mostly unused on held-out inputs
    ends `collapsed` with that reason, and only such a trial."""
    client = MlflowClient(smoke_store.uri)
    exp = client.get_experiment_by_name("vq_codebook")
    children = [
        r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags
    ]
    assert len(children) == 4
    for run in children:
        dead, tags = run.data.metrics["dead_codes"], run.data.tags
        codebook = tags["outcome_reason"].startswith("codebook collapsed: ")
        assert codebook == (dead > 0.75), (dead, tags)
        assert not codebook or tags["outcome"] == "collapsed"


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
        if set(LATENT) <= set(FAMILY_METRICS[study]):
            history = client.get_metric_history(child.info.run_id, FINAL_LATENT)
            assert [m.step for m in history] == [2]
        assert all(v == v for v in child.data.metrics.values())  # no NaN anywhere


# the pictures each family's runs carry at every evaluation (latent
# arithmetic: at the last): (folder, rows of the first picture; None: only
# when the samples allow); reconstructions are 16 inputs a row, latent
# arithmetic a column per class pair (8 rows)
PICTURES = {
    "sparse_ae": {"reconstructions": 2, "interpolations": 8, "arithmetic": 8},
    "denoising_ae": {"reconstructions": 3, "interpolations": 8, "arithmetic": 8},
    "vae_kl": {"reconstructions": 2, "interpolations": 8, "samples": 8, "arithmetic": 8},
    "dvae_temperature": {"reconstructions": 2, "interpolations": 8, "samples": 8, "arithmetic": 8},
    "vq_codebook": {"reconstructions": 2, "interpolations": 8, "samples": 8, "arithmetic": 8},
    # a GAN's pairs need their classes among its samples (2 epochs: rarely all)
    "gan_stability": {"interpolations": 8, "samples": 8, "arithmetic": None},
    "diffusion_guidance": {"samples": 8},
}


@pytest.mark.parametrize("study", list(PICTURES))
def test_runs_carry_their_pictures_at_every_evaluation(smoke_store, study, tmp_path):
    from PIL import Image

    client = MlflowClient(smoke_store.uri)
    exp = client.get_experiment_by_name(study)
    run = next(
        r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags
    )
    folders = {a.path for a in client.list_artifacts(run.info.run_id) if a.is_dir}
    kinds = {"samples", "reconstructions", "interpolations", "arithmetic"}
    always = {k for k, rows in PICTURES[study].items() if rows is not None}
    assert always <= folders and folders & kinds <= set(PICTURES[study])
    for folder, rows in PICTURES[study].items():
        if rows is None and folder not in folders:
            continue
        pngs = [a.path for a in client.list_artifacts(run.info.run_id, folder)]
        epochs = (2,) if folder == "arithmetic" else (1, 2)  # the final evaluation's
        every = [f"{folder}/{folder}_epoch{e:04d}.png" for e in epochs]
        assert pngs == every if rows is not None else set(pngs) <= set(every)
        local = client.download_artifacts(run.info.run_id, pngs[0], str(tmp_path))
        side = 28 if study != "diffusion_guidance" else 8
        if rows is not None:
            assert Image.open(local).size[1] == rows * (side + 2) + 2  # torchvision's padding 2
    if "interpolations" in PICTURES[study]:  # a latent space: its path length is scored
        assert run.data.metrics["path_length"] > 0


# the knobs the studies above keep at their defaults, each set through the CLI
KNOB_RUNS = {
    "vae_kl": {"recon_loss": "mse", "probe_labels": "100"},
    "dvae_temperature": {"kl_weight": "0.5"},
    "vq_codebook": {
        "codebook_update": "ema",
        "restart_dead": "true",
        "decay": "0.9",
        "code_dim": "8",
        "codebook_size": "32",
        "commitment": "0.5",
    },
}


def test_the_latent_knobs_reach_a_trial_as_set(tmp_path):
    """`--set` values, validated into a plan as the CLI does, reach the
    trial's params and train (in-process: the CLI and Ray have tests of
    their own; every family's study also runs through the CLI in the smoke
    store)."""
    from dataclasses import replace

    from study.request import StudyRequest
    from study.runner.prepare import prepare
    from study.tracking.store import experiment_id, init_store, start_parent
    from study.trial.session import LocalSession
    from study.trial.trainable import run_trial

    uri = f"sqlite:///{tmp_path}/store.db"
    init_store(uri)
    client = MlflowClient(uri)
    for study, sets in KNOB_RUNS.items():
        request = StudyRequest(study, smoke=True, num_samples=1, seeds=1, sets=sets,
                               tracking_uri=uri, storage=str(tmp_path / "runs"))  # fmt: skip
        plan = prepare(request)
        exp = experiment_id(client, study, uri)
        plan = replace(
            plan, experiment_id=exp, parent_run_id=start_parent(client, exp, study, {}, {})
        )
        run_trial({k: a.grid()[0] for k, a in plan.resolved.axes.items()}, plan, "search",
                  LocalSession(study))  # fmt: skip
    for study in KNOB_RUNS:
        exp = client.get_experiment_by_name(study)
        (child,) = [
            r
            for r in client.search_runs([exp.experiment_id])
            if "mlflow.parentRunId" in r.data.tags
        ]
        params = child.data.params
        spec = STUDIES[study]
        want = {k: str(coerce(settings_owner(spec, k), k, v)) for k, v in KNOB_RUNS[study].items()}
        assert {k: params[k] for k in KNOB_RUNS[study]} == want
        assert child.data.tags["outcome"] in ("ok", "collapsed")
        assert {"path_length", "probe_accuracy", "recon_mse"} <= set(child.data.metrics)
        assert float(params["probe_pixels_accuracy"]) > 0.5


def test_end_table_shows_only_metrics_the_trials_reported(smoke_store):
    # the smoke run samples with ddim5_eta0 and ddim10_eta1, not the default
    # samplers whose fids the study's table lists
    out = smoke_store.outputs["diffusion_schedule"].stdout
    table = out[out.index("Best configurations") : out.index("Outcomes:")].splitlines()
    # beside the outcomes, the course: median epoch of the first collapse, share hopping
    assert table[1].split() == ["#", "schedule", "fid", "collapsed", "at", "hopping", "outcomes"]
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
