"""The searcher's history in Optuna storage, so Optuna's own tools open it
(`optuna-dashboard URL`, `optuna.load_study`): an sqlite file in the run
folder by default, or the database of `--optuna-storage`. The Optuna study is
named after the invocation's folder; each of its trials is one configuration,
its value the mean over seeds the searcher was told (a diverged seed counts
as the penalty)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from study.errors import UsageError

OPTUNA_FILE = "optuna.db"  # in the run folder, beside Tune's state


def default_url(run_dir: Path) -> str:
    return f"sqlite:///{run_dir / OPTUNA_FILE}"


def resolve_url(url: str) -> str:
    """--optuna-storage, with a relative sqlite path made absolute (the
    searcher is pickled and restored by a later --resume in any folder)."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(url[len("sqlite:///") :]).resolve())
    return url


def check_url(url: str) -> None:
    """An sqlite file must be creatable; any other database must answer.
    (The default file lies in the run folder, made only once checks pass.)"""
    if url.startswith("sqlite:///"):
        folder = Path(url[len("sqlite:///") :]).parent
        if folder.exists() and not os.access(folder, os.W_OK):
            raise UsageError(f"--optuna-storage: cannot write in {folder}")
        return
    if "://" not in url:
        raise UsageError(
            f"--optuna-storage expects a database URL (sqlite:///PATH, postgresql://...), "
            f"got '{url}'"
        )
    try:
        storage(url)
    except Exception as e:  # any connection or driver error is the user's to fix
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"--optuna-storage {url}: {first}") from None


def storage(url: str) -> Any:
    """Optuna's RDB storage at url (pickled with the searcher; reconnects on load)."""
    import optuna

    return optuna.storages.RDBStorage(url, heartbeat_interval=None)


def fail_stale_trials(url: str, study_name: str) -> int:
    """Mark FAIL the Optuna trials left RUNNING at the study's end: asked by a
    driver that died before Tune saved them, they were asked again after the
    resume, so each configuration is one finished trial. Returns how many."""
    import optuna
    from optuna.trial import TrialState

    store = storage(url)
    study = optuna.load_study(study_name=study_name, storage=store)
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    study_id = store.get_study_id_from_name(study_name)  # the storage's public API, by number
    for t in stale:
        trial_id = store.get_trial_id_from_study_id_trial_number(study_id, t.number)
        store.set_trial_state_values(trial_id, state=TrialState.FAIL)
    return len(stale)
