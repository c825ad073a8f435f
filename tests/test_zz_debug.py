import shutil
from pathlib import Path

import pytest

import tests.test_fault_tolerance as ft

SEEN = []


def _recording(real):
    def run(*a, **k):
        out = real(*a, **k)
        SEEN.append(out)
        return out

    return run


@pytest.mark.parametrize("i", range(5))
def test_dbg(tmp_path, monkeypatch, i):
    monkeypatch.setattr(ft, "run_cli", _recording(ft.run_cli))
    try:
        ft.test_killed_driver_resumes_the_study_with_every_trial_once(tmp_path)
    except AssertionError:
        d = Path(f"/tmp/exp/kd{i}")
        shutil.copytree(tmp_path, d, ignore=shutil.ignore_patterns("checkpoint_*"))
        (d / "again_stdout.txt").write_text(SEEN[-1].stdout if SEEN else "")
        (d / "again_stderr.txt").write_text(SEEN[-1].stderr if SEEN else "")
        raise
