"""SegmentClock: times add up over the segments of a run, also when a segment raises."""

import json
import time

import pytest

from bara_pyro.timing import SegmentClock


def test_totals_add_up_over_segments(tmp_path):
    path = tmp_path / "timing.json"
    first = SegmentClock(path)
    with pytest.raises(KeyboardInterrupt):  # a stopped segment still counts its time
        with first.measure("train_time_s"):
            time.sleep(0.02)
            raise KeyboardInterrupt
    saved = first.close()
    assert saved["segments"] == 1 and saved["train_time_s"] >= 0.02
    assert json.loads(path.read_text()) == saved

    second = SegmentClock(path)
    with second.measure("train_time_s"):
        time.sleep(0.01)
    with second.measure("eval_time_s"):
        time.sleep(0.01)
    totals = second.close()
    assert totals["segments"] == 2
    assert totals["train_time_s"] >= saved["train_time_s"] + 0.01
    assert totals["eval_time_s"] >= 0.01 and totals["wall_time_s"] >= saved["wall_time_s"] + 0.02
    assert second.close() == totals  # written once

    fresh = SegmentClock(path, resume=False)
    assert fresh.segments == 1 and fresh.total("train_time_s") == 0.0
