import pytest

from pipeline.progress import ProgressTracker, Work


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr("pipeline.progress.time.perf_counter", fake)
    return fake


def test_eta_uses_the_measured_cost_of_each_kind_of_work(clock):
    seen = []
    tracker = ProgressTracker(chunks=2, steps=2, callback=seen.append, writes_output=True)
    clock.now = 1.0
    tracker.done(Work.STEP, 0, 1)
    # Only steps measured: the 2 decodes and the write are estimated at the step cost, 1 s each.
    assert seen[-1].eta_seconds == pytest.approx(3 * 1.0 + 3 * 1.0)
    clock.now = 2.0
    tracker.done(Work.STEP, 0, 2)
    clock.now = 12.0
    tracker.done(Work.DECODE, 0)
    # 2 steps at 1 s, a decode at 10 s, the write unmeasured: estimated at the mean unit, 12 s / 3.
    assert seen[-1].eta_seconds == pytest.approx(2 * 1.0 + 1 * 10.0 + 4.0)
    assert seen[-1].fraction == pytest.approx(3 / 7)


def test_fraction_reaches_one_only_after_the_write(clock):
    seen = []
    tracker = ProgressTracker(chunks=1, steps=1, callback=seen.append, writes_output=True)
    tracker.done(Work.STEP, 0, 1)
    tracker.done(Work.DECODE, 0)
    assert seen[-1].fraction == pytest.approx(2 / 3) and seen[-1].eta_seconds is not None
    tracker.done(Work.WRITE, 0)
    assert (seen[-1].fraction, seen[-1].eta_seconds) == (1.0, 0.0)


def test_no_estimate_before_any_unit_and_clock_restarts(clock):
    tracker = ProgressTracker(chunks=1, steps=3, callback=None, writes_output=False)
    clock.now = 50.0  # encoding the inputs: not a unit of this tracker
    tracker.restart_clock()
    assert tracker.snapshot().eta_seconds is None
    clock.now = 52.0
    tracker.done(Work.STEP, 0, 1)
    progress = tracker.snapshot()
    assert progress.elapsed_seconds == 2.0 and progress.eta_seconds == pytest.approx(3 * 2.0)
    assert (progress.units_done, progress.units_total) == (1, 4)
