"""A study whose tracking server keeps its runs in PostgreSQL: the scaling
page's recipe past sqlite's few dozen concurrent loggers. `pytest -k
postgres` selects these and the load benchmark's; without Debian's
postgresql package they are skipped (in CI they fail: .ci/run installs it)."""

from __future__ import annotations

from mlflow import MlflowClient
from sqlalchemy import create_engine, text

from tests.conftest import free_port, http_server, mlflow_server_argv, steps, study_runs


def test_a_study_logs_to_a_tracking_server_on_postgres(tmp_path, postgres, shared_ray):
    store = postgres("study")
    port = free_port()
    argv = mlflow_server_argv(port, tmp_path, store)
    with http_server(argv, f"http://127.0.0.1:{port}", "/health") as url:
        args = ["gan_stability", "--smoke", "--num-samples", "1", "--max-concurrent", "1"]
        done = shared_ray.run_study([*args, "--tracking-uri", url, "--name", "pg"], tmp_path)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "Outcomes: 2 trials" in done.stdout  # one configuration, its two seeds
        client = MlflowClient(url)
        parents, children = study_runs(url)
        assert len(parents) == 1 and len(children) == 2
        for run in [*parents, *children]:
            assert run.info.status == "FINISHED"
        for run in children:
            assert steps(client, run.info.run_id, "fid") == [1, 2]
        summary = {a.path for a in client.list_artifacts(parents[0].info.run_id, "summary")}
        assert summary == {"summary/configurations.csv", "summary/trials.csv"}
    # read from PostgreSQL itself, the server gone: every run and point is there
    with create_engine(store).connect() as db:
        stored = dict(db.execute(text("select run_uuid, status from runs")).all())
        fids = db.execute(text("select count(*) from metrics where key = 'fid'")).scalar()
    assert stored == {r.info.run_id: "FINISHED" for r in [*parents, *children]}
    assert fids == 2 * 2
