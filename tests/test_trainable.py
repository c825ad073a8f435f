import math

import torch

from study.trainable import divergence, read_scalars, run_name


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
