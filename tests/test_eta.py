"""When a phase will end: the estimate against planted schedules of trial
times, played out as Tune plays them (each trial on the first free place),
and the heartbeat that shows it."""

from __future__ import annotations

import heapq
import io
from types import SimpleNamespace

import pytest

from study.runner.eta import Running, describe, estimate
from study.studies import STUDIES

EPOCHS = 10


def _state(durations: list[float], slots: int, now: float):
    """A planted schedule played out to `now`: the durations of the trials
    that ended, the running ones (epochs done at an even pace) and how many
    are still queued; and when the last one truly ends."""
    places = [(0.0, i) for i in range(slots)]
    starts = []
    for d in durations:  # each trial starts on the place that frees first
        free, place = heapq.heappop(places)
        starts.append(free)
        heapq.heappush(places, (free + d, place))
    end = max(s + d for s, d in zip(starts, durations, strict=True))
    finished = [d for s, d in zip(starts, durations, strict=True) if s + d <= now]
    running = [
        Running(now - s, int(EPOCHS * (now - s) / d), EPOCHS)
        for s, d in zip(starts, durations, strict=True)
        if s <= now < s + d
    ]
    queued = sum(s > now for s in starts)
    return finished, running, queued, end - now


def test_equal_trials_end_exactly_when_estimated():
    # 10 trials of 100 s, 2 at a time: halfway through the second pair, 350 s are left
    finished, running, queued, left = _state([100.0] * 10, 2, 150.0)
    assert (len(finished), len(running), queued, left) == (2, 2, 6, 350.0)
    eta = estimate(finished, running, queued, slots=2)
    assert (eta.low, eta.mid, eta.high) == pytest.approx((350.0, 350.0, 350.0))
    assert describe(eta) == "ETA 5m50s (from 4 trials)"


@pytest.mark.parametrize("now", [130.0, 200.0, 400.0, 650.0])
def test_slow_and_fast_trials_keep_the_true_end_inside_the_range(now):
    """Configurations of 60 s and 240 s in turn, 3 at a time: once both kinds
    were seen, the range holds the true end, and a slow trial under way
    counts as slow from its own pace."""
    durations = [60.0, 240.0] * 8
    finished, running, queued, left = _state(durations, 3, now)
    eta = estimate(finished, running, queued, slots=3)
    assert eta.low <= left <= eta.high
    assert eta.low <= eta.mid <= eta.high
    slowest_left = max(r.left for r in running if r.left is not None)
    assert eta.low >= slowest_left  # nothing ends before the slowest running trial


def test_no_estimate_before_the_first_epoch_and_none_needed_at_the_end():
    assert estimate([], [Running(3.0, 0, EPOCHS)], queued=5, slots=2) is None
    assert describe(None) == "ETA after the first epoch"
    done = estimate([50.0, 70.0], [], queued=0, slots=2)
    assert (done.low, done.mid, done.high) == (0.0, 0.0, 0.0)
    # a trial that has not reported yet counts as a typical one, from its start
    eta = estimate([100.0], [Running(30.0, 0, EPOCHS)], queued=0, slots=2)
    assert eta.mid == pytest.approx(70.0)


def test_the_heartbeat_names_each_running_trials_epoch_and_the_eta():
    """The driver's progress line from Tune's trials as it sees them."""
    import time

    from study.runner.callbacks import Progress

    plan = SimpleNamespace(
        study=STUDIES["gan_stability"],  # fid, lower is better
        phase=lambda name: SimpleNamespace(pack=1),
        resolved=SimpleNamespace(fixed={"epochs": EPOCHS}),
        population=(),  # a search, not a PBT population
    )
    progress = Progress(6, plan, "search", slots=2)
    now = time.time()

    def trial(status: str, result: dict) -> SimpleNamespace:
        return SimpleNamespace(status=status, last_result=result, config={}, trial_id="t")

    ended = trial("TERMINATED", {"time_total_s": 100.0, "outcome": "ok", "fid": 50.0})
    progress._count(ended)
    running = [
        trial("RUNNING", {"epoch": 5, "time_total_s": 50.0, "timestamp": now}),
        trial("RUNNING", {"epoch": 2, "time_total_s": 20.0, "timestamp": now}),
    ]
    line = "{}/6 done{}".format(*progress._status([ended, *running]))
    assert "1/6 done (ok 1) | 2 running (epochs 5/10 2/10) | 3 left" in line
    # 50 s and 80 s left on the two places, then 3 trials of 100 s: 250 s
    assert line.endswith("| ETA 4m10s (from 3 trials)"), line


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_heartbeat_is_a_bar_redrawn_in_place(monkeypatch):
    """A terminal gets the live bar, a log file or CI plain lines; the bar
    redraws its one line (carriage returns), prints endings above it, and
    is left out when Tune pickles the callback that holds it."""
    import pickle

    from study.runner import live

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert live.wanted(_Terminal()) and not live.wanted(io.StringIO())
    monkeypatch.setenv("CI", "true")
    assert not live.wanted(_Terminal())
    screen = _Terminal()
    bar = live.LiveBar(8, screen)
    bar.show(2, " | 2 running | 4 left | ETA 1m40s")
    bar.show(3, " | 1 running | 4 left | ETA 1m00s", now=False)  # too soon: not drawn
    assert "3/8" not in screen.getvalue()
    bar.write("           ok        fid=31.2")
    bar.show(3, " | 1 running | 4 left | ETA 1m00s")
    out = screen.getvalue()
    assert "2/8 done | 2 running | 4 left | ETA 1m40s" in out
    assert "ok        fid=31.2\n" in out and out.count("\r") >= 3
    assert out.rindex("3/8 done | 1 running") > out.index("fid=31.2")  # redrawn below
    copy = pickle.loads(pickle.dumps(bar))
    assert copy.bar is None and copy.total == 8
    bar.close()


def test_a_population_is_estimated_from_its_pace_in_trial_epochs():
    """PBT: 4 members of 12 epochs took turns, 2 at a time, 10 s an epoch;
    at 60 s they have 12 of 48 trial-epochs (two paused at 4, one at 4
    running, one at 0), so 36 are left at 5 s each (the pair's pace):
    180 s. An ended member's epochs are all done, however early it ended."""
    from study.runner.eta import population

    progress = [Running(0, 4, 12), Running(0, 4, 12), Running(0, 4, 12), Running(0, 0, 12)]
    eta = population(60.0, progress, [False] * 4)
    assert eta is not None and eta.mid == pytest.approx(180.0) and eta.trials == 3
    ended = population(60.0, progress, [True, False, False, False])  # one diverged at 4
    assert ended.mid == pytest.approx(60.0 / 20 * 28)
    assert population(5.0, [Running(0, 0, 12)] * 4, [False] * 4) is None
