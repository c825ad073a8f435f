"""The CLI as a user runs it: a real local Ray, a real sqlite MLflow store."""

import contextlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from study.errors import UsageError
from study.runner.lean_start import SKIPPED, lean_changes
from study.runner.preflight import check_resources, trials_at_once
from study.runner.tune_run import start_ray
from study.studies.defaults import PENALTY
from study.tracking.store import FINAL_METRICS
from tests.conftest import cli_env, in_process, run_cli, steps
from tests.test_clients import assert_optuna_matches_mlflow


def _children(uri):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("gan_stability")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def test_list_shows_every_study_with_a_description(tmp_path):
    out = run_cli(["--list"], tmp_path)
    assert out.returncode == 0
    assert out.stdout.startswith("gan_stability") and "GAN learning rates" in out.stdout
    assert "\ngan_modes " in out.stdout and "PacGAN" in out.stdout


def test_list_with_a_study_documents_every_setting_it_accepts():

    from models import FAMILIES
    from models.config import keys
    from study.runner.cli import main
    from study.studies import STUDIES
    from study.studies.spec import TrialConfig

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["gan_stabilisers", "--list"]) == 0
    text = buf.getvalue()
    study = STUDIES["gan_stabilisers"]
    rows = [line for line in text.splitlines() if line.startswith("  ")]
    listed = {line.split()[0] for line in rows if not line.startswith("  axis")}
    assert keys(TrialConfig) | keys(FAMILIES[study.family].Config) <= listed
    assert "axis technique: {baseline, nadam" in text and "lr_g = lr_d in" in text
    assert "'dcgan' (study)" in text and "adam | nadam | rmsprop | sgd" in text


def test_smoke_study_end_to_end(smoke_store, tmp_path):
    uri, out = smoke_store.uri, smoke_store.outputs["gan_stability"]
    # progress lines, the table and how to browse the results
    assert "4/4 done" in out.stdout
    assert "Best configurations by fid" in out.stdout and "Outcomes: 4 trials" in out.stdout
    assert f"mlflow ui --backend-store-uri {uri}" in out.stdout

    client, parents, children = _children(uri)
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["study"] == "gan_stability"
    assert "--smoke" in parent.data.tags["command"]
    assert re.fullmatch(r"[0-9a-f]{40}", parent.data.tags["mlflow.source.git.commit"])
    assert parent.data.params["space.lr_g"] == "log-uniform 1e-05..0.01"
    assert parent.data.params["seeds"] == "2"
    summary = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert summary == {"summary/configurations.csv", "summary/trials.csv"}

    by_config = {}
    for run in children:
        tags, params, rid = run.data.tags, run.data.params, run.info.run_id
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
        assert tags["outcome"] in {"ok", "collapsed", "diverged"} and "outcome_reason" in tags
        # the full resolved config, seed and config_id
        for key in (
            "lr_g",
            "lr_d",
            "beta1",
            "loss",
            "n_disc",
            "replay",
            "mbstd",
            "arch",
            "epochs",
            "batch_size",
            "z_dim",
            "seed",
            "config_id",
            "dataset",
        ):
            assert key in params, key
        assert params["fid_extractor"].startswith("mnist5k-classifier")
        assert len(params["fid_weights_sha256"]) == 64
        by_config.setdefault(params["config_id"], set()).add(params["seed"])
        if tags["outcome"] != "diverged":
            for key in (
                "fid",
                "kid",
                "precision",
                "recall",
                "density",
                "coverage",
                "modes_covered",
                "mode_kl",
                "d_loss",
                "g_loss",
                "sample_seconds",
            ):
                steps = [m.step for m in client.get_metric_history(rid, key)]
                assert steps == [1, 2], (key, steps)  # step=epoch, no duplicates
            pngs = [a.path for a in client.list_artifacts(rid, "samples")]
            assert pngs == ["samples/samples_epoch0001.png", "samples/samples_epoch0002.png"]
        path = client.download_artifacts(rid, FINAL_METRICS, str(tmp_path))
        final = json.loads(Path(path).read_text())
        assert final["outcome"] == tags["outcome"] and final["config_id"] == params["config_id"]
    # 2 configurations x 2 seeds, the seeds sharing their configuration's id
    assert sorted(map(sorted, by_config.values())) == [["0", "1"], ["0", "1"]]
    summary_dir = smoke_store.root / "runs" / "smoke-gan_stability" / "summary"
    assert (summary_dir / "configurations.csv").exists()
    # artifacts go beside the sqlite store, as the banner says, not to ./mlruns
    where = (smoke_store.root / "mlartifacts" / "gan_stability").as_uri()
    assert client.get_experiment(parent.info.experiment_id).artifact_location == where
    assert f"  artifacts: {where}" in out.stdout
    assert (smoke_store.root / "mlartifacts" / "gan_stability").is_dir()


def test_a_new_experiments_artifacts_go_beside_its_sqlite_store_wherever_started(tmp_path):
    """MLflow's own default is ./mlruns of the working folder; the store's
    folder is where a user looks for them."""
    from study.tracking.store import experiment_id, init_store

    store = tmp_path / "stores" / "x.db"
    store.parent.mkdir()
    uri = f"sqlite:///{store}"
    init_store(uri)
    client = MlflowClient(uri)
    exp = experiment_id(client, "a study/with odd name", uri)
    location = client.get_experiment(exp).artifact_location
    folder = store.parent / "mlartifacts" / "a_study_with_odd_name"  # one plain folder
    assert location == folder.as_uri()
    run = client.create_run(exp)
    client.log_text(run.info.run_id, "hello", "note.txt")
    assert [p.relative_to(folder).parts[1:] for p in folder.rglob("note.txt")] == [
        ("artifacts", "note.txt")
    ]


def test_exploding_loss_ends_the_trial_as_diverged(tmp_path, shared_ray):
    uri = f"sqlite:///{tmp_path}/store.db"
    out = shared_ray.run_study(
        [
            "gan_stability",
            "--smoke",
            "--num-samples",
            "1",
            "--seeds",
            "1",
            "--search",
            "random",
            "--tracking-uri",
            uri,
            "--set",
            "loss=lsgan",
            "--set",
            "max_loss=1e-6",
        ],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    client, (parent,), children = _children(uri)
    (run,) = children
    assert run.data.tags["outcome"] == "diverged"
    # the searcher was told the penalty, and Optuna's storage holds just that
    assert_optuna_matches_mlflow(client, parent.info.experiment_id, parent, "gan_stability")
    assert "exceeds max_loss" in run.data.tags["outcome_reason"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "d_loss")] == [1]
    assert "fid" not in run.data.metrics  # a diverged model is not scored
    assert "diverged 1" in out.stdout


def test_grid_search_runs_every_grid_point(tmp_path, shared_ray):
    uri = f"sqlite:///{tmp_path}/store.db"
    fixed = [
        "lr_g=2e-4",
        "lr_d=2e-4",
        "beta1=0.5",
        "loss=ns",
        "replay=false",
        "mbstd=false",
        "arch=mlp",
    ]
    args = ["gan_stability", "--smoke", "--search", "grid", "--seeds", "1", "--tracking-uri", uri]
    args += ["--max-concurrent", "1"]  # one trial process, seconds of CPU less
    for item in fixed:
        args += ["--set", item]
    out = shared_ray.run_study(args, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    _, _, children = _children(uri)
    assert sorted(r.data.params["n_disc"] for r in children) == ["1", "2"]


def _corrupt_mnist(tmp: Path) -> dict[str, str]:
    raw = tmp / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x09" + bytes(100))  # truncated
    return {}


def _corrupt_cache(tmp: Path) -> dict[str, str]:
    (tmp / "cache").mkdir()
    (tmp / "cache" / "data-digits-v1.npz").write_bytes(b"PK\x03\x04 cut short")
    return {"GENSTUDY_CACHE": str(tmp / "cache")}


def _storage_is_a_file(tmp: Path) -> dict[str, str]:
    (tmp / "afile").write_text("not a folder")
    return {}


def _nothing(tmp: Path) -> dict[str, str]:
    return {}


# (arguments, set-up of the bad state returning extra environment, the message)
def test_a_pareto_search_in_seed_packs_logs_every_seed_and_prints_its_front(tmp_path, shared_ray):
    """--pack 3: the search's 2 seeds a configuration train as packs of 2,
    the confirmation's 3 fresh seeds as one pack of 3; every seed is a run of
    its own, and the tables count seeds, as without packs. --objectives
    fid,recall: Optuna gets both means over a configuration's seeds, in
    their directions, and the front's member is what is confirmed."""
    uri = f"sqlite:///{tmp_path}/store.db"
    args = ["gan_stability", "--smoke", "--pack", "3", "--confirm", "1", "--confirm-seeds", "3"]
    args += ["--max-concurrent", "1"]  # one trial process a phase, seconds of CPU less
    args += ["--objectives", "fid,recall"]
    out = shared_ray.run_study([*args, "--tracking-uri", uri, "--name", "packed"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "4 seeds in 2 trials (seed packs of 2)" in out.stdout
    assert "3 seeds in 1 confirmation trials (seed packs of 3)" in out.stdout
    assert "4/4 done" in out.stdout and "3/3 done" in out.stdout
    assert "Best configurations by fid" in out.stdout and "Outcomes: 7 trials" in out.stdout
    assert "modes_covered" in out.stdout  # every table column, read from the seeds' results
    assert "Pareto front of fid (lower is better), recall (higher is better)" in out.stdout
    client, parents, children = _children(uri)
    assert len(parents) == 1 and len(children) == 7
    assert parents[0].data.params["objectives"] == "fid:min,recall:max"
    seeds: dict[tuple, set] = {}
    finals: dict[str, list] = {}
    for run in children:
        tags, params = run.data.tags, run.data.params
        assert run.info.status == "FINISHED" and tags["outcome"] in {"ok", "collapsed", "diverged"}
        seeds.setdefault((tags["phase"], tags["pack"]), set()).add(int(params["seed"]))
        if tags["outcome"] != "diverged":
            assert steps(client, run.info.run_id, "fid") == [1, 2]
        if tags["phase"] == "search":  # what the searcher sees of a seed; diverged: the penalty
            m = run.data.metrics
            seen = (m["fid"], m["recall"]) if tags["outcome"] != "diverged" else (PENALTY, -PENALTY)
            finals.setdefault(params["config_id"], []).append(seen)
    assert seeds[("search", "2")] == {0, 1}
    assert seeds[("confirm", "3")] == {2, 3, 4}
    folder = tmp_path / "runs" / "packed"
    trials = pd.read_csv(folder / "summary" / "trials.csv")
    assert len(trials) == 7 and trials["trial_id"].nunique() == 3
    # Optuna holds each configuration's two means over its seeds, as MLflow has them
    import optuna

    study = optuna.load_study(study_name="packed", storage=f"sqlite:///{folder}/optuna.db")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    means = {tuple(round(v, 6) for v in pd.DataFrame(f).mean()) for f in finals.values()}
    assert {tuple(round(v, 6) for v in t.values) for t in study.trials} == means
    assert all("objective_fid_std" in t.user_attrs for t in study.trials)
    # the front by hand: a configuration is on it unless another is no worse on both
    table = pd.read_csv(folder / "summary" / "configurations.csv", dtype={"config_id": str})
    points = list(zip(table["fid_mean"], -table["recall_mean"], strict=True))
    by_hand = [not any(q != p and q[0] <= p[0] and q[1] <= p[1] for q in points) for p in points]
    assert table["pareto"].tolist() == by_hand
    confirmed = {r.data.params["config_id"] for r in children if r.data.tags["phase"] == "confirm"}
    assert confirmed <= set(table.loc[table["pareto"], "config_id"])
    printed = out.stdout.split("Pareto front of")[1].split("\n\n")[0].splitlines()[2:]
    assert len(printed) == table["pareto"].sum() and "NaN" not in "".join(printed)
    for row, (_, member) in zip(printed, table[table["pareto"]].iterrows(), strict=False):
        assert member["loss"] in row.split()  # each member with its own settings
    from analysis.report import build_report

    path, _, _ = build_report("gan_stability", uri, None, tmp_path / "report")
    assert '<img alt="pareto_front"' in path.read_text()
    drawn = pd.read_csv(tmp_path / "report" / "pareto.csv", dtype={"config_id": str})
    assert dict(zip(drawn["config_id"], drawn["pareto"], strict=True)) == dict(
        zip(table["config_id"], table["pareto"], strict=True)
    )


BAD = [
    (
        ["no_such_study"],
        _nothing,
        "unknown study 'no_such_study'; choose from: gan_stability, gan_stabilisers, gan_collapse, "
        "gan_modes, sparse_ae",
    ),
    ([], _nothing, "no study given"),
    (["gan_stability", "--set", "learning_rate=1"], _nothing, "unknown key 'learning_rate'"),
    (["gan_stability", "--set", "n_disc=two"], _nothing, "n_disc='two' is not a valid int"),
    (["gan_stability", "--set", "beta1=3"], _nothing, "beta1='3' is out of range"),
    (["gan_stability", "--set", "lr_g"], _nothing, "--set expects KEY=VALUE"),
    (["gan_stability", "--sweep", "lr_g=0.1"], _nothing, "--sweep lr_g needs at least two values"),
    (["gan_collapse", "--sweep", "nosuch=1,2"], _nothing, "unknown key 'nosuch'"),
    (
        ["gan_stability", "--sweep", "noise_seed=0,1"],
        _nothing,
        "unknown seed source 'noise_seed'; the sources: init_seed, data_seed, sample_seed, "
        "eval_seed",
    ),
    (["gan_stability", "--dataset", "imagenet"], _nothing, "unknown dataset 'imagenet'"),
    (
        ["gan_stability", "--dataset", "cifar10", "--data-dir", "DATA"],
        _nothing,
        "could not be downloaded",
    ),
    (["gan_stability", "--dataset", "ring", "--set", "arch=dcgan"], _nothing, "divisible by 4"),
    (["gan_stability", "--seeds", "0"], _nothing, "--seeds must be > 0"),
    (["gan_stability", "--pack", "0"], _nothing, "--pack must be > 0"),
    (["gan_stability", "--pack", "3", "--seeds", "4"], _nothing, "--pack 3 does not divide the 4"),
    (
        ["gan_stability", "--pack", "2", "--set", "compile=true"],
        _nothing,
        "--pack does not combine with compile=true",
    ),
    (["gan_stability", "--num-samples", "x"], _nothing, "invalid int value"),
    (["gan_stability", "--search", "bayes"], _nothing, "invalid choice"),
    (["gan_stability", "--tracking-uri", "http://127.0.0.1:9"], _nothing, "does not answer"),
    (["gan_stability", "--resume"], _nothing, "nothing to resume"),
    (
        ["gan_stability", "--smoke", "--dataset", "mnist", "--data-dir", "data"],
        _corrupt_mnist,
        "unreadable or incomplete",
    ),
    (
        ["gan_stability", "--smoke", "--dataset", "digits"],
        _corrupt_cache,
        "data-digits-v1.npz is unreadable",
    ),
    (
        ["gan_stability", "--smoke", "--storage", "afile/runs"],
        _storage_is_a_file,
        "cannot be created or written",
    ),
    (
        ["gan_stability", "--smoke"],
        lambda tmp: {"GENSTUDY_MIN_FREE_MB": "1e12"},  # a full disk, as the check sees it
        "MB free, under the",
    ),
    (
        ["gan_stability", "--smoke", "--address", "127.0.0.1:9"],
        _nothing,
        "cannot join Ray at 127.0.0.1:9",
    ),
    (
        ["gan_stability", "--smoke", "--gpus-per-trial", "64"],
        _nothing,
        "--gpus-per-trial 64 but the largest node of the Ray cluster has 0 GPUs",
    ),
    (
        ["gan_stability", "--smoke", "--cpus-per-trial", "99"],
        _nothing,
        "--cpus-per-trial 99 but the largest node of the Ray cluster has",
    ),
    # values that become a folder under --storage must stay inside it
    (["gan_stability", "--smoke", "--name", "../../etc/x"], _nothing, "got '../../etc/x'"),
    (["gan_stability", "--smoke", "--name", "/tmp/abs"], _nothing, "got '/tmp/abs'"),
    (["gan_stability", "--smoke", "--name", ".."], _nothing, "got '..'"),
    (["gan_stability", "--smoke", "--name", ""], _nothing, "plain folder name"),
    (
        ["gan_stability", "--resume", "--name", "../x"],
        _nothing,
        "--name must be one plain folder name",
    ),
    (
        ["gan_stability", "--smoke", "--optuna-storage", "optuna.db"],
        _nothing,
        "--optuna-storage expects a database URL",
    ),
    (["gan_modes", "--num-samples", "5"], _nothing, "--num-samples 5 but the grid has 3 points"),
    # latent diffusion's first stage: a setting it lacks, a bad value, one the data refuses
    (["latent_diffusion", "--set", "first_depth=2"], _nothing, "unknown key 'first_depth'"),
    (["latent_diffusion", "--set", "first_arch=resnet"], _nothing, "first_arch='resnet' is not"),
    (
        ["latent_diffusion", "--dataset", "ring", "--set", "first_arch=conv"],
        _nothing,
        "first stage: first_arch=conv needs images",
    ),
    (["latent_diffusion", "--pack", "2"], _nothing, "does not train in seed packs"),
    # anomaly detection needs a family that reconstructs, and a class the data has
    (["gan_stability", "--set", "anomaly_class=3"], _nothing, "family gan does not reconstruct"),
    (["sparse_ae", "--set", "anomaly_class=10"], _nothing, "mnist5k has classes 0..9"),
    (["gan_stability", "--set", "finetune_labels=100"], _nothing, "no encoder to fine-tune"),
    (["sparse_ae", "--set", "finetune_labels=9000"], _nothing, "needs that many labelled"),
    (
        ["gan_modes", "--set", "pac=2", "--num-samples", "2"],
        _nothing,
        "nothing is searched (every axis is fixed)",
    ),
    # a study spanning families: each family's settings scoped, and given to it alone
    (["trilemma", "--set", "vae.lr_g=0.001"], _nothing, "lr_g is a setting of gan, not of vae"),
    (["gan_stability", "--set", "kl_weight=2"], _nothing, "kl_weight is a setting of vae"),
    (["trilemma", "--set", "kl_weight=2"], _nothing, "spans families, so give it as vae.kl_weight"),
    (["trilemma", "--set", "dvae.tau=1"], _nothing, "trilemma trains vae, gan, diffusion, vqvae"),
    (["trilemma", "--set", "family=dvae"], _nothing, "family 'dvae' is not trained by study"),
    # a Pareto search: registered metrics with a direction, logged by the family, two or more
    (["gan_stability", "--objectives", "fid"], _nothing, "--objectives needs two different"),
    (["gan_stability", "--objectives", "fid,fidd"], _nothing, "'fidd' is not a registered"),
    (["sparse_ae", "--objectives", "fid,recall"], _nothing, "'fid' is not logged by family"),
    (
        ["gan_stability", "--objectives", "fid,recall", "--scheduler", "asha"],
        _nothing,
        "--objectives does not combine with --scheduler asha",
    ),
    # population-based training: something mutable searched, a population, nothing it undoes
    (["vae_kl", "--scheduler", "pbt"], _nothing, "no searched setting may change mid-training"),
    (
        ["gan_stability", "--scheduler", "pbt", "--confirm", "1"],
        _nothing,
        "--scheduler pbt does not combine with --confirm: a member's result comes from",
    ),
    (
        ["gan_stability", "--scheduler", "pbt", "--objectives", "fid,recall"],
        _nothing,
        "--scheduler pbt does not combine with --objectives",
    ),
    (
        [
            "gan_stability",
            "--scheduler",
            "pb2",
            "--set",
            "lr_g=1e-3",
            "--set",
            "lr_d=1e-3",
            "--set",
            "beta1=0.5",
        ],
        _nothing,
        "--scheduler pb2: no searched setting may change mid-training over a range (PB2)",
    ),  # fmt: skip
    (
        ["gan_stability", "--scheduler", "pbt", "--num-samples", "1", "--seeds", "1"],
        _nothing,
        "need a population of two members or more",
    ),
    (
        ["trilemma", "--sweep", "gan.lr_g=0.001,0.002"],
        _nothing,
        "add --set family=gan to sweep it",
    ),
]


def main_in_process(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`study.run`'s main(args) in this process (`in_process`).
    `test_a_bad_invocation_is_refused_before_ray_is_imported` runs the real
    command line; here, every mistake it can be given."""
    from study.runner.cli import main

    return in_process(main, args, cwd, env)


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory) -> dict[str, tuple]:
    """Every bad invocation, each in a fresh folder: (output, the folder's
    files before, after)."""

    def one(case: tuple) -> tuple:
        args, setup, message = case
        tmp = tmp_path_factory.mktemp("bad")
        env = setup(tmp)
        args = [a.replace("DATA", str(tmp / "data")) for a in args]
        before = sorted(p.name for p in tmp.iterdir())
        out = main_in_process(args, tmp, env)
        return out, before, sorted(p.name for p in tmp.iterdir())

    return {m: one(case) for case, m in zip(BAD, [m for *_, m in BAD], strict=True)}


@pytest.mark.parametrize("message", [m for *_, m in BAD])
def test_bad_input_or_state_gets_one_line_and_exit_code_2(bad_runs, message):
    out, before, after = bad_runs[message]
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert message in lines[0]
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert after == before  # nothing started, nothing written


def test_a_study_the_joined_cluster_cannot_hold_is_refused_with_nothing_written(
    tmp_path, shared_ray
):
    """Only a joined cluster can say what its nodes hold, so this check runs
    after Ray: the store (default ./mlflow.db) is still not created."""
    out = shared_ray.run_study(["gan_stability", "--smoke", "--gpus-per-trial", "64"], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    message = "--gpus-per-trial 64 but the largest node of the Ray cluster has 0 GPUs"
    assert out.stderr.startswith(f"error: {message}") and out.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_bad_invocation_is_refused_before_ray_is_imported(tmp_path):
    """Validation comes first: a typo costs the user seconds, not Ray's import."""
    code = (
        "import sys; from study.runner.cli import main; "
        "print(main(sys.argv[1:]), 'ray' in sys.modules)"
    )
    # a typo, and a trial larger than this machine (a local Ray would start)
    for args, message in ((["--set", "lr_g=x"], "lr_g"), (["--cpus-per-trial", "999"], "999")):
        argv = [sys.executable, "-c", code, "gan_stability", *args]
        out = subprocess.run(argv, cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        assert out.stdout.split() == ["2", "False"], out.stderr[-2000:]
        assert message in out.stderr


def test_gan_modes_grids_over_pac_and_logs_the_mixture_metrics(tmp_path, shared_ray):
    uri = f"sqlite:///{tmp_path}/store.db"
    out = shared_ray.run_study(
        # one trial at a time: one trial process, seconds of CPU less
        ["gan_modes", "--smoke", "--seeds", "1", "--max-concurrent", "1", "--tracking-uri", uri],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "grid search" in out.stdout and "modes_captured" in out.stdout
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("gan_modes")
    children = [
        r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags
    ]
    assert sorted(r.data.params["pac"] for r in children) == ["1", "2", "4"]
    for run in children:
        assert run.data.params["dataset"] == "ring" and run.data.params["z_dim"] == "2"
        for key in ("modes_captured", "hq_fraction", "reverse_kl"):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == [1, 2], key
        assert 0 <= run.data.metrics["modes_captured"] <= 8
        pngs = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
        assert len(pngs) == 2


# the sqlite store under four trials at once: a PBT population's, in
# tests/test_population.py (one study for both checks)


def test_trials_at_once_counts_cpus_and_gpus():
    # what a one-GPU, 16-core machine fits: 4 trials at a quarter GPU each
    assert trials_at_once({"CPU": 16.0, "GPU": 1.0}, 1, 0.25) == 4
    assert trials_at_once({"CPU": 16.0, "GPU": 1.0}, 1, 0) == 16
    assert trials_at_once({"CPU": 2.0}, 1, 0) == 2
    assert trials_at_once({"CPU": 3.0, "GPU": 8.0}, 2, 1) == 1
    assert trials_at_once({"CPU": 64.0, "GPU": 0.7}, 1, 0.1) == 7  # not 6 from 6.999...


def test_a_trial_must_fit_on_one_node_or_on_one_the_autoscaler_can_add():
    nodes = [
        {"Alive": True, "Resources": {"CPU": 2.0}},
        {"Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0}},
        {"Alive": False, "Resources": {"CPU": 64.0}},  # a lost node counts for nothing
    ]
    cpus = {"CPU": ("--cpus-per-trial", 2.0)}
    assert check_resources(nodes, cpus) == []
    # 4 CPUs in all, but no node has 3: such a trial could never start
    with pytest.raises(UsageError, match="--cpus-per-trial 3 but the largest node .* 2 CPUs"):
        check_resources(nodes, {"CPU": ("--cpus-per-trial", 3.0)})
    with pytest.raises(UsageError, match="has 1 GPU, so no trial"):
        check_resources(nodes, {"GPU": ("--gpus-per-trial", 2.0)})
    # an autoscaler whose node types reach 8 GPUs: the trials wait for it
    warnings = check_resources(nodes, {"GPU": ("--gpus-per-trial", 2.0)}, {"GPU": 8.0})
    assert len(warnings) == 1 and "autoscaler" in warnings[0]
    with pytest.raises(UsageError, match="no trial could start"):
        check_resources(nodes, {"GPU": ("--gpus-per-trial", 16.0)}, {"GPU": 8.0})


def test_a_local_ray_that_times_out_starting_is_tried_once_more_then_refused(capsys):
    """Ray gives a starting node a fixed 30 s; several studies starting at once
    on a small machine can miss it. The message is the one Ray raises."""
    timeout = Exception(
        "The current node timed out during startup. This could happen because some of "
        "the raylet failed to startup or the GCS has become overloaded."
    )
    calls: list[str] = []

    def init_failing(times: int):
        def init(**kwargs):
            calls.append("init")
            if calls.count("init") <= times:
                raise timeout

        return init

    start_ray(None, init_failing(1), lambda: calls.append("shutdown"))
    assert calls == ["init", "shutdown", "init"]  # the half-started node went first
    assert "trying once more" in capsys.readouterr().err
    calls.clear()
    with pytest.raises(UsageError, match="did not come up in 30 s, twice"):
        start_ray(None, init_failing(2), lambda: calls.append("shutdown"))
    assert calls == ["init", "shutdown", "init", "shutdown"]
    calls.clear()
    with pytest.raises(UsageError, match="cannot start or join Ray at 10.0.0.1:6379: refused"):
        start_ray("10.0.0.1:6379", lambda **kw: (_ for _ in ()).throw(ConnectionError("refused")),
                  lambda: None)  # fmt: skip


@pytest.mark.skipif(importlib.util.find_spec(SKIPPED) is None, reason=f"{SKIPPED} not installed")
def test_the_ray_node_a_study_starts_imports_jsonschema_without_the_iri_grammars():
    """rfc3987_syntax compiles 38 grammars at import (1.5 s of CPU in each of
    Ray's processes); a study's node skips it. jsonschema still validates,
    without the "iri" format check, and this process's environment is as it
    was: only the node's processes are affected."""
    import ray

    keys = set(lean_changes(os.environ))  # what the start changes for the node only
    before = {k: os.environ.get(k) for k in keys}
    start_ray(None, ray.init, ray.shutdown)
    try:

        @ray.remote(num_cpus=0)
        def worker_view():
            import sys

            import jsonschema

            valid = jsonschema.Draft7Validator({"type": "integer"}).is_valid(3)
            iri = "iri" in jsonschema.Draft7Validator.FORMAT_CHECKER.checkers
            return SKIPPED in sys.modules, iri, valid

        assert ray.get(worker_view.remote()) == (False, False, True)
    finally:
        ray.shutdown()
    assert {k: os.environ.get(k) for k in keys} == before
    import jsonschema  # here the package is used, as in any process outside a study

    assert "iri" in jsonschema.Draft7Validator.FORMAT_CHECKER.checkers
    # the CLI's driver skips it as well
    code = (
        "from study.runner.cli import main; main(['--list']); import jsonschema; "
        "print('iri' in jsonschema.Draft7Validator.FORMAT_CHECKER.checkers)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.stdout.splitlines()[-1] == "False", out.stderr[-2000:]


def test_asha_over_seed_packs_stops_whole_configurations_and_closes_their_runs(
    tmp_path, shared_ray
):
    """Each configuration's 2 seeds train as one pack, one trial at a time
    (--max-concurrent 1) in the grid's seeded order: lr 0.01 first, then
    1e-6, whose pack mean is far worse at ASHA's rung (epoch 1), stopped
    with both its seeds. The stopped runs are closed by the driver, in the
    --experiment."""
    uri = f"sqlite:///{tmp_path}/store.db"
    fixed = ["penalty=l1", "sparsity_weight=1e-4", "target_sparsity=0.1", "coding=32"]
    args = ["sparse_ae", "--smoke", "--search", "grid", "--seeds", "2", "--pack", "2",
            "--scheduler", "asha", "--max-concurrent", "1", "--experiment", "asha_check",
            "--tracking-uri", uri, "--sweep", "lr=3e-6,1e-5,0.01,1e-6"]  # fmt: skip
    for item in fixed:
        args += ["--set", item]
    out = shared_ray.run_study(args, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "1 at once" in out.stdout and "stopped" in out.stdout.split("Outcomes:")[1]
    assert "ASHA: stops whole configurations, on the mean of its 2 seeds" in out.stdout
    client = MlflowClient(uri)
    assert client.get_experiment_by_name("sparse_ae") is None  # --experiment took its place
    exp = client.get_experiment_by_name("asha_check")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 6 and all(r.info.status == "FINISHED" for r in children)
    stopped = [r for r in children if r.data.tags["outcome"] == "stopped"]
    assert stopped and all(r.data.params["lr"] != "0.01" for r in stopped)
    by_lr = {lr: sorted(r.data.params["seed"] for r in stopped if r.data.params["lr"] == lr)
             for lr in {r.data.params["lr"] for r in stopped}}  # fmt: skip
    assert all(seeds == ["0", "1"] for seeds in by_lr.values()), by_lr  # both seeds, or none
    for run in stopped:
        assert "stopped early by the scheduler at epoch 1" in run.data.tags["outcome_reason"]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1]
    # one trial at a time: no other trial's run started while a trial that closed
    # its own runs was running (a stopped trial's runs are closed later, by the driver)
    trials: dict[str, list] = {}
    for r in children:
        trials.setdefault(r.data.params["lr"], []).append(r)
    spans = {lr: (min(r.info.start_time for r in rs), max(r.info.end_time for r in rs))
             for lr, rs in trials.items() if lr not in by_lr}  # fmt: skip
    others = [(lr, r.info.start_time) for lr, rs in trials.items() for r in rs]
    assert not any(s < t < e for lr, (s, e) in spans.items() for o, t in others if o != lr)
