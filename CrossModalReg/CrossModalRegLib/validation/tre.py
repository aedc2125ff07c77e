"""Landmark errors: target registration error (TRE) before and after, FRE apart from TRE, TRE against FLE.

Frames and directions
---------------------
Points are LPS millimetres. ``transform_fixed_to_moving_lps`` maps a FIXED-space point to the MOVING space, so the
error of a landmark pair after registration is ``|| T(p_fixed) - p_moving ||`` (measured in the moving space) and
before registration ``|| p_fixed - p_moving ||`` (the identity transform).

Roles
-----
Landmarks that drove the registration give the fiducial registration error (FRE), which is optimistic; only
held-out landmarks give a target registration error (TRE). Without stated roles every landmark is treated as held
out, and the summary says so.

FLE
---
``fle_mm`` is the fiducial localisation error of one landmark position in one image (RMS, mm), as the annotator
statistics give it (one number for all landmarks or one per label). With independent localisation errors in both
images, a perfect registration still shows a measured error of about ``sqrt(2) * FLE`` (RMS); a TRE at or below
that floor is "within annotator variability".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from ..errors import CrossModalRegError
from ..landmarks.fileio import LandmarkSet
from ..landmarks.pairing import pair_landmarks, preview
from ..landmarks.tre import target_registration_error

ROLE_DRIVING = "driving"
ROLE_HELD_OUT = "held-out"


def error_statistics(errors_mm) -> dict:
    """Summary statistics of a set of distances (mm).

    Returns
    -------
    dict
        ``n``; ``mean``, ``sd`` (sample standard deviation, ddof = 1; None for fewer than 2 values), ``median``,
        ``rms``, ``p95`` (95th percentile, linear interpolation between order statistics) and ``max``, all in mm;
        every value is None when there is no distance.
    """
    e = np.asarray([v for v in errors_mm if v is not None and np.isfinite(v)], dtype=float)
    n = int(e.size)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "median": None, "rms": None, "p95": None, "max": None}
    return {
        "n": n,
        "mean": float(np.mean(e)),
        "sd": float(np.std(e, ddof=1)) if n > 1 else None,
        "median": float(np.median(e)),
        "rms": float(np.sqrt(np.mean(e * e))),
        "p95": float(np.percentile(e, 95.0)),
        "max": float(np.max(e)),
    }


@dataclass
class LandmarkResult:
    """Per-landmark errors (mm) and their summaries. Points are LPS mm; ``mapped_points_lps = T(fixed)``."""

    labels: list[str]
    roles: list[str]
    fixed_points_lps: np.ndarray
    moving_points_lps: np.ndarray
    mapped_points_lps: np.ndarray
    tre_before_mm: np.ndarray
    tre_after_mm: np.ndarray
    fle_mm: np.ndarray
    roles_given: bool
    unpaired_fixed: list[str] = field(default_factory=list)
    unpaired_moving: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def fle_floor_mm(self) -> np.ndarray:
        """Expected measured error of a perfect registration, ``sqrt(2) * FLE`` (NaN where FLE is unknown)."""
        return math.sqrt(2.0) * self.fle_mm

    def within_fle(self) -> list[bool | None]:
        """Per landmark: TRE after <= sqrt(2) * FLE, or None where FLE is unknown."""
        floor = self.fle_floor_mm
        return [None if not np.isfinite(f) else bool(t <= f) for t, f in zip(self.tre_after_mm, floor, strict=True)]

    def statistics(self, role: str | None, when: str = "after") -> dict:
        """:func:`error_statistics` of the landmarks with ``role`` (None: all), ``when`` in {"before", "after"}."""
        values = self.tre_after_mm if when == "after" else self.tre_before_mm
        sel = [v for v, r in zip(values, self.roles, strict=True) if role is None or r == role]
        return error_statistics(sel)

    def fle_verdict(self, role: str = ROLE_HELD_OUT) -> tuple[bool | None, float | None]:
        """(RMS TRE after <= sqrt(2) * RMS FLE, that floor in mm) over landmarks with ``role`` and a known FLE."""
        sel = [i for i, r in enumerate(self.roles) if r == role and np.isfinite(self.fle_mm[i])]
        if not sel:
            return None, None
        tre_rms = float(np.sqrt(np.mean(self.tre_after_mm[sel] ** 2)))
        floor = float(math.sqrt(2.0) * np.sqrt(np.mean(self.fle_mm[sel] ** 2)))
        return tre_rms <= floor, floor


def landmark_errors(
    fixed: LandmarkSet,
    moving: LandmarkSet,
    transform_fixed_to_moving_lps: sitk.Transform,
    *,
    driving_labels: Iterable[str] | None = None,
    fle_mm: float | Mapping[str, float] | None = None,
    unpaired: str = "error",
) -> LandmarkResult:
    """Landmark errors before and after registration.

    Parameters
    ----------
    fixed, moving : LandmarkSet
        Landmarks in the fixed and moving images' physical spaces (LPS mm), paired by label.
    transform_fixed_to_moving_lps : SimpleITK.Transform
        Maps FIXED points to MOVING points (LPS mm).
    driving_labels : iterable of str, optional
        Labels of the landmarks that drove the registration (their error is FRE); the others are held out (TRE).
        None: roles unknown, every landmark is treated as held out.
    fle_mm : float or mapping label -> float, optional
        Fiducial localisation error (RMS, mm, per image) for all landmarks or per label.
    unpaired : {"error", "skip"}
        What to do with labels present on one side only.

    Returns
    -------
    LandmarkResult
    """
    for s in (fixed, moving):
        if s.frame != "LPS" or s.dimension != 3:
            raise CrossModalRegError(f"{s.source or 'landmarks'}: validation measures 3D landmarks in LPS mm, not "
                                     f"{s.dimension}D {s.frame} points")
    pairs = pair_landmarks(fixed, moving, unpaired=unpaired)
    labels, fp, mp = pairs.labels, pairs.fixed, pairs.moving
    only_f, only_m = pairs.unpaired_fixed, pairs.unpaired_moving
    notes = []
    if driving_labels is None:
        roles = [ROLE_HELD_OUT] * len(labels)
        roles_given = False
        notes.append("landmark roles not given: every landmark is treated as held out; "
                     "if some drove the registration, their error is an optimistic FRE")
    else:
        driving = {str(v) for v in driving_labels}
        unknown = sorted(driving - set(labels))
        if unknown:
            raise CrossModalRegError(f"driving landmark labels {preview(unknown)} are not among the paired landmarks")
        roles = [ROLE_DRIVING if lab in driving else ROLE_HELD_OUT for lab in labels]
        roles_given = True
    tre = target_registration_error(transform_fixed_to_moving_lps, fp, mp)
    mapped, before, after = tre.mapped, tre.before, tre.after
    if fle_mm is None:
        fle = np.full(len(labels), np.nan)
    elif isinstance(fle_mm, Mapping):
        fle = np.array([float(fle_mm[lab]) if fle_mm.get(lab) is not None else np.nan for lab in labels])
    else:
        fle = np.full(len(labels), float(fle_mm))
    if np.any(fle[np.isfinite(fle)] < 0):
        raise CrossModalRegError("FLE must be a non-negative distance in mm")
    if only_f or only_m:
        notes.append(f"unpaired landmarks skipped: fixed only {preview(only_f)}, moving only {preview(only_m)}")
    return LandmarkResult(labels, roles, fp, mp, mapped, before, after, fle, roles_given, only_f, only_m, notes)
