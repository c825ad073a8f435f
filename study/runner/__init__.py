"""Running a study, in the order a run takes it: `cli.py` (the command line,
arguments to a `StudyRequest`) -> `prepare.py` (validation into a `Plan`, and
all of resume; `preflight.py` checks storage, disk, Ray and resources) ->
`api.py` (`run_study`, the one entry point; the search, then the
confirmation) -> `tune_run.py` (Ray, started lean by `lean_start.py`; the
searcher, the scheduler, one Tuner per phase) with `callbacks.py` (the
progress line, closing runs) -> `summary.py` (the end tables)."""
