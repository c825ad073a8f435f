"""Anomaly detection by reconstruction error (the chapter's use of an
autoencoder): `anomaly_class` leaves a class out of training, and the
held-out reconstruction error is scored as that class's anomaly score."""

from __future__ import annotations

import torch
from sklearn.metrics import roc_auc_score

from datasources import load_dataset
from models.autoencoder import AEConfig, Autoencoder
from study.tracking.store import find_trial_run
from study.trial.probes import latent_probes
from study.trial.session import LocalSession
from study.trial.trainable import run_trial
from tests.conftest import local_plan, steps
from tests.test_trainable import _store

LEFT_OUT = 0


def test_anomaly_auroc_is_roc_auc_of_the_reconstruction_errors():
    """The logged metric equals scikit-learn's roc_auc_score on per-image
    squared errors computed here; a class never seen in training scores as
    an anomaly (AUROC well above chance), and a class seen does not stand out."""
    data = load_dataset("digits").without_class(LEFT_OUT)
    assert LEFT_OUT not in data.train_y and LEFT_OUT in data.test_y
    torch.manual_seed(0)
    model = Autoencoder(AEConfig(coding=8, batch_size=64), data.train_x, data.test_x)
    for _ in range(30):
        model.train_epoch()
    metrics, _ = latent_probes(model, data, 50, 200, seed=0, anomaly_class=LEFT_OUT)
    with torch.no_grad():
        errors = ((model.net.decode(model.net.encode(data.test_x)) - data.test_x) ** 2).mean(
            (1, 2, 3)
        )
    expected = roc_auc_score((data.test_y == LEFT_OUT).numpy(), errors.numpy())
    assert metrics["anomaly_auroc"] == expected
    assert expected > 0.7
    seen, _ = latent_probes(model, data, 50, 200, seed=0, anomaly_class=LEFT_OUT + 1)
    assert abs(seen["anomaly_auroc"] - 0.5) < abs(expected - 0.5)
    no_class, _ = latent_probes(model, data, 50, 200, seed=0)
    assert "anomaly_auroc" not in no_class


def test_a_trial_with_anomaly_class_trains_without_it_and_logs_its_auroc(tmp_path):
    """In a real trial: the setting is a param, the metric is logged at every
    evaluation (and, asked for, the few-label accuracies at the last); the
    training split the family saw lacks the class (it holds
    the smoke split's other images, and the linear probe, fitted on training
    codes, never predicts the class)."""
    client, exp, parent = _store(tmp_path, "anomaly")
    uri = client.tracking_uri
    settings = {"anomaly_class": LEFT_OUT, "noise": "gaussian", "finetune_labels": 100}
    plan = local_plan("denoising_ae", tmp_path, uri, exp, parent, settings)
    run_trial({}, plan, "search", LocalSession("anomaly-trial"))
    run = find_trial_run(client, exp, parent, "anomaly-trial")
    assert run.info.status == "FINISHED" and run.data.params["anomaly_class"] == str(LEFT_OUT)
    smoke = load_dataset("digits").subset(plan.resolved.fixed["train_size"])
    assert run.data.params["train_samples"] == str(int((smoke.train_y != LEFT_OUT).sum()))
    assert steps(client, run.info.run_id, "anomaly_auroc") == [1, 2]
    # few labels: at the final evaluation only, on the trial's own training split
    assert steps(client, run.info.run_id, "finetune_accuracy") == [2]
    assert 0.1 < run.data.metrics["scratch_accuracy"] <= 1
    # (after 2 smoke epochs on 512 images the unseen 0s reconstruct no worse than
    # the rest: the auroc is not judged here, only logged)
    assert 0 <= run.data.metrics["anomaly_auroc"] <= 1
    # a probe that never saw the class misses all of its held-out digits (a tenth)
    assert run.data.metrics["probe_accuracy"] < 0.92
