"""jobkit.tuning: objects alive at the end of start-up are no longer scanned by the collector."""

import gc

import jobkit.tuning
from jobkit.tuning import freeze_startup_objects


def test_objects_alive_at_start_up_leave_the_collectors_generations(monkeypatch):
    monkeypatch.setattr(jobkit.tuning, "_frozen", False)  # as in a new process
    survivors = [[n] for n in range(1000)]  # tracked containers, as an app's start-up makes
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() >= len(survivors)
        tracked = {id(obj) for obj in gc.get_objects()}
        assert id(survivors[0]) not in tracked  # frozen: in no generation the collector scans
    finally:
        gc.unfreeze()


def test_a_second_start_up_in_the_same_process_freezes_nothing_more(monkeypatch):
    monkeypatch.setattr(jobkit.tuning, "_frozen", True)  # the process has started an app
    later = [[n] for n in range(10)]
    freeze_startup_objects()
    assert id(later[0]) in {id(obj) for obj in gc.get_objects()}
