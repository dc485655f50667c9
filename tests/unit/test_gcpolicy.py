"""The garbage collector's settings and the record of its pauses."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest

from controller import gcpolicy
from controller.metrics import FROZEN_COUNT_INTERVAL_SECONDS, Metrics


@pytest.fixture(autouse=True)
def collector_as_it_was() -> Iterator[None]:
    """Each test leaves the process's collector as it found it."""
    thresholds = gc.get_threshold()
    callbacks = list(gc.callbacks)
    yield
    gc.set_threshold(*thresholds)
    gc.callbacks[:] = callbacks
    gc.unfreeze()


class Cycle:
    """An object that refers to itself: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_young_generation_is_collected_less_often_the_older_ratios_kept() -> None:
    gc.set_threshold(700, 11, 12)
    gcpolicy.collect_young_less_often()
    assert gc.get_threshold() == (gcpolicy.YOUNG_COLLECTION_ALLOCATIONS, 11, 12)


def test_frozen_survivors_are_counted_never_scanned_again_and_later_cycles_are_still_collected() -> None:
    before = Cycle()
    kept = weakref.ref(before)
    frozen = gcpolicy.freeze_survivors()
    assert frozen > 0 and frozen == gc.get_freeze_count()
    later = Cycle()
    gone = weakref.ref(later)
    del before, later
    gc.collect()
    assert gone() is None, "made after the freeze: collected as before"
    assert kept() is not None, "alive at the freeze: frozen, so the collector no longer even looks at it"


@pytest.mark.parametrize(
    ("pause", "expected_le"),
    [
        pytest.param(0.0004, "0.001", id="below-the-first-bound"),
        pytest.param(0.001, "0.001", id="on-a-bound-counts-in-it"),
        pytest.param(0.3, "0.5", id="a-full-collection"),
        pytest.param(7.0, "+Inf", id="above-every-bound"),
    ],
)
def test_a_pause_lands_in_its_bucket_and_every_one_above(monkeypatch: pytest.MonkeyPatch, pause: float, expected_le: str) -> None:
    recorder = gcpolicy.PauseRecorder()
    clock = iter([0.0, pause])
    monkeypatch.setattr(gcpolicy.time, "perf_counter", lambda: next(clock))
    recorder("start", {"generation": 1})
    recorder("stop", {"generation": 1, "collected": 0, "uncollectable": 0})
    buckets = dict(recorder.cumulative(1))
    bounds = list(buckets)
    first = bounds.index(expected_le)
    assert all(buckets[bound] == 0 for bound in bounds[:first])
    assert all(buckets[bound] == 1 for bound in bounds[first:])
    assert recorder.seconds[1] == pytest.approx(pause)
    assert dict(recorder.cumulative(0))["+Inf"] == 0 and dict(recorder.cumulative(2))["+Inf"] == 0


def test_pauses_are_recorded_only_while_the_recorder_is_installed() -> None:
    with gcpolicy.PauseRecorder() as recorder:
        gc.collect()
        full = dict(recorder.cumulative(2))["+Inf"]
        assert full >= 1
        assert recorder.seconds[2] > 0
    gc.collect()
    assert dict(recorder.cumulative(2))["+Inf"] == full
    assert recorder not in gc.callbacks


def test_metrics_show_the_pauses_per_generation() -> None:
    metrics = Metrics()
    with gcpolicy.PauseRecorder() as recorder:
        metrics.track_gc_pauses(recorder)
        gc.collect()
    text = generate_latest(metrics.registry).decode()  # read at scrape time, from the recorder
    full = recorder.counts[2]
    assert sum(full) >= 1
    assert f'node_ipam_controller_gc_pause_seconds_count{{generation="2"}} {float(sum(full))}' in text
    assert f'node_ipam_controller_gc_pause_seconds_bucket{{generation="2",le="+Inf"}} {float(sum(full))}' in text
    assert 'node_ipam_controller_gc_pause_seconds_count{generation="0"} ' in text


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("generation", "frozen"),
    [
        pytest.param(2, True, id="after-a-full-collection-its-survivors-are-frozen"),
        pytest.param(1, False, id="after-a-middle-collection-nothing"),
        pytest.param(0, False, id="after-a-young-collection-nothing"),
    ],
)
def test_only_a_full_collection_freezes_its_survivors(generation: int, frozen: bool) -> None:
    gc.unfreeze()
    freezer = gcpolicy.FreezeSurvivors(clock=Clock())
    survivor = Cycle()
    kept = weakref.ref(survivor)
    gc.collect()  # the survivor is in the oldest generation now
    freezer("stop", {"generation": generation, "collected": 0, "uncollectable": 0})
    del survivor
    gc.collect()  # a frozen object is not scanned: its cycle outlives this
    assert (kept() is not None) is frozen


def test_a_full_collection_past_the_thaw_interval_thaws_and_the_next_frees_the_frozen_garbage() -> None:
    gc.unfreeze()
    clock = Clock()
    with gcpolicy.FreezeSurvivors(thaw_interval=60.0, clock=clock) as freezer:
        survivor = Cycle()
        gc.collect()
        kept = weakref.ref(survivor)
        del survivor
        gc.collect()  # before the interval: it froze again, and the cycle frozen before stays
        assert kept() is not None and freezer.thaws == 0 and gc.get_freeze_count() > 0
        clock.now = 60.0
        gc.collect()  # past the interval: it thaws instead of freezing
        assert freezer.thaws == 1 and gc.get_freeze_count() == 0
        gc.collect()  # scans what was frozen: the cycle is garbage and goes
        assert kept() is None
    assert gc.get_freeze_count() == 0


def test_metrics_show_how_many_objects_are_frozen_counted_once_per_interval() -> None:
    """Counting walks every frozen object: a scrape counts again only once the interval has passed."""
    clock = Clock()
    metrics = Metrics()
    with gcpolicy.PauseRecorder() as recorder:
        metrics.track_gc_pauses(recorder, clock)

    def shown() -> float:
        text = generate_latest(metrics.registry).decode()
        line = next(line for line in text.splitlines() if line.startswith("node_ipam_controller_gc_frozen_objects "))
        return float(line.split()[1])

    try:
        frozen = gcpolicy.freeze_survivors()
        assert abs(shown() - frozen) < frozen / 2  # the scrape itself may free or keep a few
        gc.unfreeze()
        assert shown() > 0  # counted less than the interval ago
        clock.now += FROZEN_COUNT_INTERVAL_SECONDS
        assert shown() == 0
    finally:
        gc.unfreeze()
