"""The one progress protocol of the library: a callback that receives :class:`Progress` reports.

Every public function that can run for more than a moment takes ``progress=None`` (keyword-only) and calls
``progress(report)`` with a :class:`Progress` whose ``fraction`` only goes up, from 0 to exactly 1.0 in the last
report, and whose ``message`` says what it is doing (plus stage, level and metric while an optimiser runs). This is
what most callers already used (the engine, the scene registration, the pipeline, the module's progress bar), so
the others follow it too. The functions that take it:

* ``engine.register``, ``scene_registration.register_volume_nodes``, ``pipeline.run_registration_job`` (these also
  take ``cancel``), ``initialization.rotation_search`` / ``orientation_search``;
* ``validation.validate``, ``validation.overlap.compare_label_maps``, ``validation.scene.validate_nodes``
  (formerly a message-string callback: the message is now ``report.message``);
* ``landmarks.tre.expected_tre_map``, ``landmarks.mrml_layer.expected_tre_volume`` (formerly a bare fraction);
* ``batch.run_cohort``: one report per finished case (its terminal line is ``show_progress``; the former
  ``progress=True/False`` still means that).

Tested for each in ``Testing/test_progress_protocol.py``.

Cancelling goes through the same callback: a callback that raises :class:`~CrossModalRegLib.errors.
RegistrationCancelled` stops the work at its next step, and the function raises ``RegistrationCancelled`` with
nothing written or added to a scene. (The registration functions also take ``cancel``: a ``threading.Event`` or a
callable returning True, for a cancel from another thread.) A callback never has to be thread-safe: it is called
on the thread that runs the function.

Inside the library, :class:`ProgressTracker` does the bookkeeping: named phases with weights, a fraction within
each phase, one monotonic overall fraction, and the cancel request remembered so that code inside an ITK observer
(where an exception cannot travel) can test ``tracker.cancelled()`` and stop cleanly.

    >>> reports = []
    >>> tracker = ProgressTracker(reports.append, {"read": 1, "compute": 3})
    >>> tracker.update("compute", 0.5, message="computing")
    >>> tracker.finish()
    >>> [(r.fraction, r.message) for r in reports]
    [(0.625, 'computing'), (1.0, 'done')]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import RegistrationCancelled

ProgressCallback = Callable[["Progress"], None]


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


def cancel_checker(cancel) -> Callable[[], bool]:
    """``cancel`` (None, a ``threading.Event`` or a callable returning bool) as a function returning True to stop."""
    if cancel is None:
        return lambda: False
    if hasattr(cancel, "is_set"):
        return cancel.is_set
    if callable(cancel):
        return lambda: bool(cancel())
    raise TypeError("cancel must be None, a threading.Event-like object or a callable returning bool")


class ProgressTracker:
    """Turns (phase, within-phase fraction) into one monotonic overall fraction and forwards it.

    Phases get weights (up front, or later with :meth:`set_weights`); ``update`` never reports less than before,
    ``finish`` reports 1.0. A ``RegistrationCancelled`` raised by the callback is kept, not propagated:
    :meth:`cancelled` is then True (as it is when ``cancel`` is set) and :meth:`check` raises it where the caller
    can stop cleanly.
    """

    def __init__(self, callback: ProgressCallback | None, weights: dict[str, float] | None = None, *,
                 cancel=None):
        self.callback = callback
        self._cancel = cancel_checker(cancel)
        self.cancel_requested = False
        self.fraction = 0.0
        self.reports = 0
        self.t0 = time.perf_counter()
        self.set_weights(weights or {})

    def set_weights(self, weights: dict[str, float]) -> ProgressTracker:
        """The phases and their weights (replacing any before); returns the tracker."""
        total = float(sum(weights.values())) or 1.0
        self._start: dict[str, float] = {}
        self._width: dict[str, float] = {}
        acc = 0.0
        for name, w in weights.items():
            self._start[name] = acc / total
            self._width[name] = w / total
            acc += w
        return self

    def update(self, phase: str, within: float, **info):
        within = min(max(float(within), 0.0), 1.0)
        f = self._start.get(phase, self.fraction) + self._width.get(phase, 0.0) * within
        # Never go back, and keep 1.0 for finish().
        self.fraction = min(max(self.fraction, f), 0.999999)
        self._emit(**info)

    def step(self, phase: str, within: float, **info):
        """:meth:`update`, then :meth:`check`: for plain Python code, which can stop right where it reports."""
        self.update(phase, within, **info)
        self.check()

    def finish(self, message: str = "done"):
        self.fraction = 1.0
        self._emit(message=message)

    def cancelled(self) -> bool:
        return self.cancel_requested or self._cancel()

    def check(self) -> None:
        """Raise ``RegistrationCancelled`` when the callback asked for it or ``cancel`` is set."""
        if self.cancelled():
            raise RegistrationCancelled()

    def _emit(self, **info):
        self.reports += 1
        if self.callback is not None and not self.cancel_requested:
            try:
                self.callback(Progress(fraction=self.fraction, **info))
            except RegistrationCancelled:
                self.cancel_requested = True
