import json

import pytest

from models.config import ConfigError, build, coerce
from models.gan import GANConfig
from study.errors import UsageError
from study.request import StudyRequest
from study.runner.prepare import INVOCATION_FILE, resumed_request
from study.studies import STUDIES
from study.studies.spec import Choice, LogUniform, resolve, split_settings


def test_strings_are_converted_to_field_types():
    assert coerce(GANConfig, "lr_g", "1e-3") == pytest.approx(1e-3)
    assert coerce(GANConfig, "n_disc", "5") == 5
    assert coerce(GANConfig, "replay", "true") is True
    assert coerce(GANConfig, "mbstd", "off") is False
    assert coerce(GANConfig, "loss", "hinge") == "hinge"


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("n_disc", "2.5", "not a valid int"),
        ("lr_g", "fast", "not a valid float"),
        ("lr_g", "nan", "not a valid float"),
        ("replay", "maybe", "not a valid bool"),
        ("n_disc", "0", "out of range"),
        ("beta1", "1.5", "out of range"),
        ("loss", "wasserstein", "choose from"),
        ("learning_rate", "1", "unknown key"),
    ],
)
def test_bad_values_are_rejected_with_what_is_accepted(key, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        coerce(GANConfig, key, value)


def test_build_validates_every_value():
    cfg = build(GANConfig, {"lr_d": "0.01", "arch": "dcgan"})
    assert cfg.lr_d == 0.01 and cfg.arch == "dcgan" and cfg.lr_g == GANConfig().lr_g


def test_set_fixes_a_searched_axis_and_splits_settings():
    study = STUDIES["gan_stability"]
    resolved = resolve(study, {"loss": "hinge", "epochs": "3"})
    assert "loss" not in resolved.axes and "lr_g" in resolved.axes
    trial, family = split_settings(study, {**resolved.fixed, "lr_g": 1e-3})
    assert trial.epochs == 3 and family.loss == "hinge" and family.lr_g == 1e-3


def test_unknown_set_key_names_accepted_keys():
    with pytest.raises(ConfigError, match="accepted: .*lr_g"):
        resolve(STUDIES["gan_stability"], {"lr": "1"})


def test_axes_give_optuna_distributions_and_grids():
    axis = LogUniform(1e-5, 1e-2)
    assert axis.grid() == pytest.approx([1e-5, 10**-3.5, 1e-2])
    assert axis.optuna().log
    assert Choice((1, 2)).grid() == [1, 2]


def test_resume_reads_the_saved_request_and_refuses_a_folder_it_cannot_read(tmp_path):
    run = tmp_path / "gan_stability-1"
    run.mkdir()
    original = StudyRequest("gan_stability", seeds=5, sets={"loss": "hinge"}, smoke=True)
    info = {"study": "gan_stability", "parent_run_id": "p", "tracking_uri": "sqlite:///x.db",
            "experiment": "e", "request": original.to_json()}  # fmt: skip
    (run / INVOCATION_FILE).write_text(json.dumps(info))
    # the resumed command names nothing but the study: the rest comes back
    again = resumed_request(StudyRequest("gan_stability", storage=str(tmp_path), resume=True))
    assert (again.seeds, again.sets, again.smoke) == (5, {"loss": "hinge"}, True)
    assert (again.name, again.tracking_uri, again.experiment) == (run.name, "sqlite:///x.db", "e")
    assert again.to_argv()[:3] == ["gan_stability", "--seeds", "5"] and again.address is None
    # where it runs is the new invocation's: --address with --resume is kept
    cluster = StudyRequest("gan_stability", storage=str(tmp_path), resume=True, address="h:6379")
    assert resumed_request(cluster).address == "h:6379"
    old = {k: v for k, v in info.items() if k != "request"} | {"argv": ["gan_stability"]}
    (run / INVOCATION_FILE).write_text(json.dumps(old))  # an earlier version's folder
    with pytest.raises(UsageError, match="written by an earlier genstudy"):
        resumed_request(StudyRequest("gan_stability", storage=str(tmp_path), name=run.name))
