"""Numbers that reproduce on any machine: the feature classifier behind fid
and the mode metrics is the same bytes everywhere."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from datasources.cache import cache_dir
from scoring.classifier import SHIPPED_SHA256, VERSION, WEIGHTS, classifier_file, sha256
from tests.conftest import cli_env

TRAIN = (
    "from datasources import load_dataset\n"
    "from scoring.classifier import classifier_bytes, sha256\n"
    "import torch; torch.set_num_threads({threads})\n"
    "print(sha256(classifier_bytes(load_dataset('{dataset}'), steps=40)))\n"
)


def test_the_classifier_trains_to_the_same_bytes_whatever_the_thread_settings():
    """Two processes, one and two threads (torch's and OpenMP's): the same
    file, byte for byte (without the one-thread recipe they differ)."""

    def train(threads: int) -> str:
        env = {**cli_env(), "OMP_NUM_THREADS": str(threads)}
        code = TRAIN.format(threads=threads, dataset="mnist5k")
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout.strip()

    with ThreadPoolExecutor(max_workers=2) as pool:
        one, two = pool.map(train, (1, 2))
    assert len(one) == 64 and one == two


def test_the_shipped_classifiers_hold_their_recorded_hashes():
    for dataset, expected in SHIPPED_SHA256.items():
        assert sha256((WEIGHTS / f"{dataset}-v{VERSION}.pt").read_bytes()) == expected, dataset


def test_a_cached_classifier_with_other_bytes_is_replaced_with_one_line(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("GENSTUDY_CACHE", str(tmp_path))
    stale = cache_dir() / f"classifier-digits-v{VERSION}.pt"
    stale.write_bytes(b"weights an older version trained on another machine")
    path = classifier_file("digits")
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("replacing the cached digits classifier")
    assert path == stale and sha256(path.read_bytes()) == SHIPPED_SHA256["digits"]
    classifier_file("digits")  # now the shipped bytes: nothing to say
    assert capsys.readouterr().out == ""
    fresh = tmp_path / "fresh"
    monkeypatch.setenv("GENSTUDY_CACHE", str(fresh))
    assert sha256(classifier_file("digits").read_bytes()) == SHIPPED_SHA256["digits"]
    assert capsys.readouterr().out == ""  # a first install is silent
