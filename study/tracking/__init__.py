"""Tracking: what a study writes, where. `store.py` is the MLflow store
(experiment, parent run, child runs found again), `trial_run.py` one seed's
child run, `optuna_store.py` the searcher's history in Optuna storage.

What `analysis` (and any reader of a study's runs) may rely on, and nothing
more, is exported here:

- `resolve_tracking_uri`, `check_tracking_uri` and `TrackingError`: a store
  found the way a study finds it, or one line saying why not;
- `FINAL_METRICS`: the artifact holding a seed's last result;
- `MODE_SHARE`, `MODE_METRICS_MAX`, `SHARES_ARTIFACT`: where a generating
  seed's mode histogram of each evaluation is (metrics `mode_share_<k>` for
  up to 100 modes, else the artifact);
- `RUN_TAGS`: the tags every child run carries (`outcome`, `outcome_reason`,
  `trial_id`, `ray_node`, `restored_from_epoch`, `phase`, in a seed pack
  `pack`, its size, and `member`, the seed's place in it, and once it has
  ended `COURSE_TAGS`: `collapse_epoch` (or "none"), `ended_epoch`, `recovered`, and
  `hopping` for a generating family). Every param of a
  child run is a setting of its configuration, plus `config_id`, `seed`,
  `family`, `device`, `threads` and the scoring provenance; metrics are
  logged per epoch with step = epoch;
- `PARENT`, `GENERATION`, `FROM_EPOCH`, `REPLACED_TRIAL`: under population-based
  training, the params of a run that continues a cloned member (the run it
  continues, its generation, the epoch it continues from) and the tag that
  holds the trial id of a run cloned over (its `trial_id` tag is removed).
"""

from study.tracking.lineage import FROM_EPOCH, GENERATION, PARENT, REPLACED_TRIAL
from study.tracking.store import (
    COURSE_TAGS,
    FINAL_METRICS,
    MODE_METRICS_MAX,
    MODE_SHARE,
    RUN_TAGS,
    SHARES_ARTIFACT,
    TrackingError,
    check_tracking_uri,
    resolve_tracking_uri,
)

__all__ = [
    "COURSE_TAGS",
    "FINAL_METRICS",
    "FROM_EPOCH",
    "GENERATION",
    "MODE_METRICS_MAX",
    "MODE_SHARE",
    "PARENT",
    "REPLACED_TRIAL",
    "RUN_TAGS",
    "SHARES_ARTIFACT",
    "TrackingError",
    "check_tracking_uri",
    "resolve_tracking_uri",
]
