"""A finished study opened with each ecosystem's own client, as its users
would: Ray Tune's result API, Optuna's storage and dashboard, MLflow's
experiment kind, and JupyterLab driven by headless Chromium."""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
import urllib.request
from collections import defaultdict
from collections.abc import Iterator

import optuna
import pytest
from mlflow import MlflowClient

from study.studies import STUDIES
from study.studies.defaults import PENALTY
from study.tracking.store import EXPERIMENT_KIND
from tests.conftest import BIN, ROOT, cli_env, free_port, http_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _smoke(smoke_store, study: str) -> tuple[MlflowClient, str, object]:
    """(client, experiment id, parent run) of a smoke study."""
    client = MlflowClient(smoke_store.uri)
    exp = client.get_experiment_by_name(study)
    parent = next(
        r
        for r in client.search_runs([exp.experiment_id])
        if "mlflow.parentRunId" not in r.data.tags
    )
    return client, exp.experiment_id, parent


def assert_optuna_matches_mlflow(client: MlflowClient, exp_id: str, parent, study: str) -> None:
    """The Optuna study the parent run names holds each configuration of the
    study once, finished, with the mean over its seeds of what the searcher
    was told (the study's metric, the penalty for a diverged seed), and the
    standard deviation and standard error of those as user attributes."""
    spec = STUDIES[study]
    optuna_study = optuna.load_study(
        study_name=parent.data.tags["optuna_study"], storage=parent.data.tags["optuna_storage"]
    )
    states = optuna.trial.TrialState
    assert not optuna_study.get_trials(states=(states.RUNNING,))
    trials = optuna_study.get_trials(states=(states.COMPLETE,))
    runs = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    penalty = PENALTY if spec.mode == "min" else -PENALTY
    told: dict[tuple, list[float]] = defaultdict(list)
    for run in runs:
        diverged = run.data.tags["outcome"] == "diverged"
        score = run.data.metrics.get(spec.metric, penalty)
        searched = tuple(sorted(k for k in trials[0].params))
        key = tuple(run.data.params[k] for k in searched)
        told[key].append(penalty if diverged or not math.isfinite(score) else score)
    assert len(trials) == len(told)
    for t in trials:
        key = tuple(str(t.params[k]) for k in sorted(t.params))
        assert key in told, (key, list(told))
        assert t.value == pytest.approx(sum(told[key]) / len(told[key]), rel=1e-9)
        # and the spread over those seeds, for optuna-dashboard
        seeds = told[key]
        assert t.user_attrs["seeds"] == len(seeds)
        if len(seeds) > 1:
            std = statistics.stdev(seeds)
            assert t.user_attrs["objective_std"] == pytest.approx(std, rel=1e-9)
            stderr = std / math.sqrt(len(seeds))
            assert t.user_attrs["objective_stderr"] == pytest.approx(stderr, rel=1e-9)


def test_optuna_storage_holds_the_searchers_history(smoke_store):
    client, exp_id, parent = _smoke(smoke_store, "gan_stability")
    run_dir = smoke_store.root / "runs" / "smoke-gan_stability"
    assert parent.data.tags["optuna_storage"] == f"sqlite:///{run_dir / 'optuna.db'}"
    assert parent.data.tags["optuna_study"] == "smoke-gan_stability"
    assert_optuna_matches_mlflow(client, exp_id, parent, "gan_stability")
    out = smoke_store.outputs["gan_stability"].stdout
    assert f"optuna-dashboard {parent.data.tags['optuna_storage']}" in out


def test_optuna_dashboard_serves_the_study(smoke_store):
    _, _, parent = _smoke(smoke_store, "gan_stability")
    port = free_port()
    with http_server(
        [str(BIN / "optuna-dashboard"), parent.data.tags["optuna_storage"],
         "--host", "127.0.0.1", "--port", str(port)],
        f"http://127.0.0.1:{port}", "/api/studies",
    ) as url:  # fmt: skip
        with urllib.request.urlopen(url + "/api/studies") as r:
            studies = json.load(r)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["smoke-gan_stability"]
        with urllib.request.urlopen(f"{url}/api/studies/{studies[0]['study_id']}") as r:
            trials = json.load(r)["trials"]
    assert [t["state"] for t in trials] == ["Complete", "Complete"]  # 2 configurations
    assert {p["name"] for p in trials[0]["params"]} == set(STUDIES["gan_stability"].axes)


def test_ray_result_api_reads_every_trial(smoke_store):
    from ray.tune import ExperimentAnalysis

    client, exp_id, parent = _smoke(smoke_store, "gan_stability")
    run_dir = smoke_store.root / "runs" / "smoke-gan_stability"
    frame = ExperimentAnalysis(str(run_dir)).dataframe()
    assert len(frame) == 4  # 2 configurations x 2 seeds
    runs = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    fid = {r.data.tags["trial_id"]: r.data.metrics["fid"] for r in runs}
    assert dict(zip(frame["trial_id"], frame["fid"], strict=True)) == pytest.approx(fid)
    assert set(frame["epoch"]) == {2}  # the last result of each trial


def test_every_study_experiment_opens_as_model_training(smoke_store):
    client = MlflowClient(smoke_store.uri)
    key, kind = EXPERIMENT_KIND
    for study in smoke_store.outputs:
        assert client.get_experiment_by_name(study).tags.get(key) == kind


# --- JupyterLab -------------------------------------------------------------------


@pytest.fixture
def lab(smoke_store, tmp_path) -> Iterator[str]:
    """`python -m analysis.lab` (what `make notebooks` runs) on the smoke store,
    serving a copy of the notebooks: JupyterLab autosaves what it runs. Every
    cell stays in the page (windowing off): by default JupyterLab skips
    rendering the cells out of view, and the test reads all of them."""
    port = free_port()
    shutil.copytree(ROOT / "analysis" / "notebooks", tmp_path / "notebooks")
    tracker = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    env = {
        **cli_env(),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
    }
    with http_server(
        [sys.executable, "-m", "analysis.lab", "--store", smoke_store.uri, "--no-browser",
         f"--port={port}", "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=",
         "--LabApp.expose_app_in_browser=True", "--notebooks", str(tmp_path / "notebooks")],
        f"http://127.0.0.1:{port}", "/api/status", cwd=tmp_path, env=env,
    ) as url:  # fmt: skip
        yield url


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt install chromium)")
def test_jupyterlab_runs_a_notebook_on_the_study_store(lab, tmp_path):
    from playwright.sync_api import sync_playwright

    notebook = "gan_stability.ipynb"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{lab}/lab/tree/{notebook}")
        page.wait_for_function(
            "() => window.jupyterapp && document.querySelector('.jp-Notebook .jp-Cell')",
            timeout=120_000,
        )
        # the kernel is this project's Python: its first cell imports the harness
        page.wait_for_function(
            "() => window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel"
            "?.status === 'idle'",
            timeout=120_000,
        )
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        # done when every code cell shows its execution count
        page.wait_for_function(
            "() => [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]"
            ".every(p => /\\[\\d+\\]/.test(p.textContent))",
            timeout=240_000,
        )
        errors = page.locator("[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
        figures = page.locator(".jp-OutputArea-output img").count()
        text = page.locator(".jp-Notebook").inner_text()
        browser.close()
    assert not [e for e in errors if "Traceback" in e or "Error" in e], errors
    assert "Traceback" not in text
    assert figures >= 1, "no figure rendered"
    assert "4 trials, 2 configurations" in text  # read from the smoke store
