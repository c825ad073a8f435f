"""The MLflow UI as a user sees it: `mlflow ui` on the smoke store, pages
rendered by headless Chromium (Debian's chromium; `.ci/run` installs it).
The runs must be nested and readable, and their metrics and sample grids
must show."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator

import pytest
from mlflow import MlflowClient

from tests.conftest import BIN, cli_env, free_port, http_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt install chromium)")


@pytest.fixture(scope="module")
def ui(smoke_store) -> Iterator[str]:
    """`mlflow ui` on the smoke store, one for this module's tests (without
    its GenAI job runner: eight processes that pages of runs never use)."""
    port = free_port()
    with http_server(
        [str(BIN / "mlflow"), "ui", "--backend-store-uri", smoke_store.uri,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        f"http://127.0.0.1:{port}", "/health", cwd=smoke_store.root,
        env={**cli_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    ) as url:  # fmt: skip
        yield url


def _render(url: str) -> str:
    """The page's DOM after its scripts ran (Chromium's virtual time budget)."""
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--window-size=1500,1000",
             "--virtual-time-budget=15000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _text(page: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


def test_mlflow_ui_shows_nested_readable_runs_their_metrics_and_sample_grids(smoke_store, ui):
    client = MlflowClient(smoke_store.uri)
    exp = client.get_experiment_by_name("gan_stability")
    runs = client.search_runs([exp.experiment_id])
    child = next(r for r in runs if r.data.tags.get("outcome") not in (None, "diverged"))

    listing = _text(_render(f"{ui}/#/experiments/{exp.experiment_id}/runs"))
    assert f"{len(runs)} matching runs" in listing  # the parent and its 4 trials
    assert "smoke-gan_stability" in listing  # the parent; its children nest below it

    # the trial's overview lists its final metrics with their values
    overview = _text(_render(f"{ui}/#/experiments/{exp.experiment_id}/runs/{child.info.run_id}"))
    for name in ("fid", "modes_covered", "d_loss"):
        assert name in overview
    assert f"fid {child.data.metrics['fid']!r}" in overview  # JS and repr: shortest round-trip

    grid = "samples/samples_epoch0002.png"
    page = _render(
        f"{ui}/#/experiments/{exp.experiment_id}/runs/{child.info.run_id}/artifacts/{grid}"
    )
    assert child.info.run_name in _text(page)  # e.g. "lr_g=0.00044 lr_d=0.0014 ... seed=1"
    assert re.search(r"seed=\d", child.info.run_name)
    # the UI fetched the grid and shows it (as an object URL)
    assert re.search(rf'<img alt="{grid}" src="blob:', page), re.findall(r"<img[^>]*>", page)
    with urllib.request.urlopen(f"{ui}/get-artifact?path={grid}&run_uuid={child.info.run_id}") as r:
        assert r.headers["Content-Type"] == "image/png" and r.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_printed_link_opens_the_experiment_on_its_runs_table(smoke_store, ui):
    """MLflow 3.17's UI opens an experiment on its GenAI overview (traces,
    latency, tokens) unless the address asks for machine learning; the link
    the study prints does, and lands on the runs with the trials nested."""
    client = MlflowClient(smoke_store.uri)
    exp = client.get_experiment_by_name("sparse_ae")
    runs = client.search_runs([exp.experiment_id])
    printed = re.search(r"open (\S+)", smoke_store.outputs["sparse_ae"].stdout).group(1)
    assert printed.startswith("http://127.0.0.1:5000/#/experiments/")  # `mlflow ui`'s default
    landing = _text(_render(printed.replace("http://127.0.0.1:5000", ui)))
    assert f"{len(runs)} matching runs" in landing, landing[-3000:]
    assert "smoke-sparse_ae" in landing and "Token Usage" not in landing
