"""Every harness default in one place: the CLI's help, `StudyRequest`, the
study definitions and `--smoke` all read these. (A model's own defaults sit
on its config dataclass, next to the model.)"""

from __future__ import annotations

DATA_DIR = "data"  # torchvision datasets; git-ignored
STORAGE = "runs"  # Tune state, checkpoints and summaries, a folder per invocation
SEARCH = "optuna"
SEARCHES = ("optuna", "random", "grid")
SCHEDULER = "none"
SCHEDULERS = ("none", "asha", "pbt", "pb2")
# population-based training (Jaderberg et al. 2017), at every evaluation: the
# worst quarter of the population clones the best quarter's weights, and each
# mutable setting is resampled (a quarter of the time) or scaled by 0.8 or 1.2
PBT_QUANTILE = 0.25
PBT_RESAMPLE = 0.25
POPULATION_SCHEDULERS = ("pbt", "pb2")  # PB2: PBT whose new settings a GP-bandit picks
CPUS_PER_TRIAL = 1.0
GPUS_PER_TRIAL = 0.0
NUM_SAMPLES = 8  # configurations, where a study does not say
SEEDS = 3  # per configuration, where a study does not say
CONFIRM = (
    0  # best configurations re-run on fresh seeds after the search, where a study does not say
)
CONFIRM_SEEDS = 3  # fresh seeds per confirmed configuration

MIN_FREE_MB = 500  # checkpoints, sample grids and the store of a default study fit easily
MAX_FAILURES = 2  # Tune retries a failed trial this often, from its checkpoint
HEARTBEAT_SECONDS = 30.0  # progress line while no trial ends
PENALTY = 1e6  # the searcher's objective for a diverged trial (sign by mode)
TIMEOUT_SECONDS = 5.0  # to reach a tracking server or a Ray head

# --smoke: any study in seconds (the tests use it)
SMOKE_SETTINGS = {"epochs": 2, "eval_every": 1, "train_size": 512, "eval_samples": 200}
SMOKE_CONFIGS = 2
SMOKE_SEEDS = 2
SMOKE_GRID_POINTS = 3  # a random few points of a grid
