"""Times of work that may run in several segments (stopped, then resumed), added up across segments.

A :class:`SegmentClock` reads the totals that earlier segments left in a small JSON file, measures this
segment (``with clock.measure("train_time_s"): ...`` and the segment's wall time), and writes the new
totals back when the segment ends, however it ends (finished, stopped by a signal, or failed)::

    {"segments": 3, "wall_time_s": 812.4, "train_time_s": 640.1, "eval_time_s": 95.0}

A segment killed outright (SIGKILL, power loss) writes nothing, so its time is not counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

__all__ = ["SegmentClock", "TIMING_NAME", "read_totals"]

TIMING_NAME = "timing.json"


def read_totals(path: str | os.PathLike) -> dict:
    """The totals saved in ``path`` ({} if there are none)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class SegmentClock:
    """Totals over segments of one run.

    :param path: the JSON file of the totals.
    :param resume: continue the totals in ``path``; False starts from zero (the file is overwritten).
    """

    def __init__(self, path: str | os.PathLike, resume: bool = True):
        self.path = Path(path)
        prior = self._read() if resume else {}
        self.segments = int(prior.get("segments", 0)) + 1
        self._prior = {k: float(v) for k, v in prior.items() if k.endswith("_s") and isinstance(v, (int, float))}
        self._current: dict[str, float] = {}
        self._start = time.perf_counter()
        self._closed = False

    def _read(self) -> dict:
        return read_totals(self.path)

    @contextlib.contextmanager
    def measure(self, key: str):
        """Add the time spent in the block to ``key`` (also when the block raises)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._current[key] = self._current.get(key, 0.0) + time.perf_counter() - t0

    def total(self, key: str) -> float:
        """``key`` summed over the earlier segments and this one so far."""
        if key == "wall_time_s":
            return self._prior.get(key, 0.0) + time.perf_counter() - self._start
        return self._prior.get(key, 0.0) + self._current.get(key, 0.0)

    def totals(self) -> dict:
        keys = sorted(set(self._prior) | set(self._current) | {"wall_time_s"})
        return {"segments": self.segments, **{k: self.total(k) for k in keys}}

    def close(self) -> dict:
        """Write the totals (once; later calls return them unchanged) and return them."""
        if not self._closed:
            self._final = self.totals()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self._final, indent=2))
            os.replace(tmp, self.path)
            self._closed = True
        return self._final
