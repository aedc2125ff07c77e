"""Progress reports for long work: a fraction that only goes up and reaches 1, the stage, level and metric."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Progress:
    """One progress report.

    ``fraction`` is in [0, 1], never decreases during a run and is exactly 1.0 in the last report.
    ``stage``/``level`` name where the optimiser is (levels count from 0, coarsest first); ``metric`` is the
    current metric value (lower is better for every metric of this package), ``None`` outside optimisation.
    ``transform_fixed_to_moving_lps()`` builds the current estimate (fixed -> moving, LPS) for a live preview;
    it returns ``None`` when no estimate exists yet. Building it costs a little: call it only when drawing.
    """

    fraction: float
    stage: str = ""
    stage_index: int = 0
    n_stages: int = 0
    level: int = 0
    n_levels: int = 0
    iteration: int = 0
    metric: float | None = None
    message: str = ""
    _transform_factory: Callable | None = field(default=None, repr=False)

    def transform_fixed_to_moving_lps(self):
        return None if self._transform_factory is None else self._transform_factory()


class ProgressTracker:
    """Turns (phase, within-phase fraction) into one monotonic overall fraction and forwards it.

    Phases get fixed weights up front; ``update`` never reports less than before, ``finish`` reports 1.0.
    """

    def __init__(self, callback: Callable[[Progress], None] | None, weights: dict[str, float]):
        self.callback = callback
        total = float(sum(weights.values())) or 1.0
        self._start: dict[str, float] = {}
        self._width: dict[str, float] = {}
        acc = 0.0
        for name, w in weights.items():
            self._start[name] = acc / total
            self._width[name] = w / total
            acc += w
        self.fraction = 0.0
        self.reports = 0
        self.t0 = time.perf_counter()

    def update(self, phase: str, within: float, **info):
        within = min(max(float(within), 0.0), 1.0)
        f = self._start.get(phase, self.fraction) + self._width.get(phase, 0.0) * within
        # Never go back, and keep 1.0 for finish().
        self.fraction = min(max(self.fraction, f), 0.999999)
        self._emit(**info)

    def finish(self, message: str = "done"):
        self.fraction = 1.0
        self._emit(message=message)

    def _emit(self, **info):
        self.reports += 1
        if self.callback is not None:
            self.callback(Progress(fraction=self.fraction, **info))
