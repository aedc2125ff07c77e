"""Pairing fixed and moving landmarks by label: the one pairing of the package (no ``slicer``).

Every command, the batch and the Slicer modules pair landmarks here: ``register --fixed-landmarks``,
``validate``, ``landmarks register``, the scene registration and the Landmarks module's consensus registration.
Landmarks are paired **by label**, never by row order; the pairs come in the order of the fixed set. A label on
one side only is an error naming it and its file, unless ``unpaired="skip"`` (then it is listed in
:attr:`LandmarkPairs.unpaired_fixed` / :attr:`LandmarkPairs.unpaired_moving`, for the caller to report).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import CrossModalRegError
from .fileio import LandmarkSet

UNPAIRED_CHOICES = ("error", "skip")


@dataclass(frozen=True)
class LandmarkPairs:
    """Landmarks present in both sets: row i of ``fixed`` and of ``moving`` is the landmark ``labels[i]``.

    ``fixed``/``moving`` are (N, D) in ``frame`` (LPS mm, or pixels); ``unpaired_*`` are the labels on one side
    only that were skipped.
    """

    labels: list[str]
    fixed: np.ndarray
    moving: np.ndarray
    frame: str = "LPS"
    unpaired_fixed: list[str] = field(default_factory=list)
    unpaired_moving: list[str] = field(default_factory=list)

    @property
    def unpaired(self) -> list[str]:
        """Every skipped label: the fixed-only ones, then the moving-only ones."""
        return list(self.unpaired_fixed) + list(self.unpaired_moving)

    @property
    def units(self) -> str:
        return "mm" if self.frame == "LPS" else "pixel"

    def __len__(self) -> int:
        return len(self.labels)


def preview(labels, n: int = 6) -> str:
    """``['a', 'b', ...]`` of at most ``n`` labels, with the count when there are more."""
    labels = list(labels)
    more = f", ... ({len(labels)} in all)" if len(labels) > n else ""
    return "[" + ", ".join(repr(v) for v in labels[:n]) + more + "]"


def pair_landmarks(fixed: LandmarkSet, moving: LandmarkSet, *, unpaired: str = "error") -> LandmarkPairs:
    """Pair ``fixed`` and ``moving`` landmarks by label.

    Parameters
    ----------
    fixed, moving : LandmarkSet
        The same frame and dimension on both sides (their labels are unique: :class:`LandmarkSet` checks that).
    unpaired : {"error", "skip"}
        A label on one side only: an error naming it (default), or skipped and listed in the result.

    Raises
    ------
    CrossModalRegError
        Different frames or dimensions, no shared label, or (with ``unpaired="error"``) one-sided labels.
    """
    if unpaired not in UNPAIRED_CHOICES:
        raise CrossModalRegError(f"unpaired must be one of {', '.join(UNPAIRED_CHOICES)}, not '{unpaired}'")
    f_name = f"fixed ({fixed.source})" if fixed.source else "fixed"
    m_name = f"moving ({moving.source})" if moving.source else "moving"
    if fixed.frame != moving.frame or fixed.dimension != moving.dimension:
        raise CrossModalRegError(
            f"the {f_name} landmarks are {fixed.dimension}D {fixed.frame} points but the {m_name} ones "
            f"{moving.dimension}D {moving.frame} points; give both in the same frame")
    moving_index = {lab: i for i, lab in enumerate(moving.labels)}
    fixed_set = set(fixed.labels)
    labels = [lab for lab in fixed.labels if lab in moving_index]
    only_f = [lab for lab in fixed.labels if lab not in moving_index]
    only_m = [lab for lab in moving.labels if lab not in fixed_set]
    if not labels:
        raise CrossModalRegError(
            f"no landmark label is shared by the {f_name} landmarks {preview(fixed.labels)} and the {m_name} ones "
            f"{preview(moving.labels)}: landmarks are paired by label")
    if (only_f or only_m) and unpaired == "error":
        parts = [f"{preview(only)} only in {name}" for only, name in ((only_f, f_name), (only_m, m_name)) if only]
        raise CrossModalRegError(
            "landmark labels do not match: " + "; ".join(parts) + ". Place them on both images, rename or remove "
            "them, or skip unpaired landmarks (--skip-unpaired-landmarks on the command line)")
    fixed_index = {lab: i for i, lab in enumerate(fixed.labels)}
    fp = fixed.points[[fixed_index[lab] for lab in labels]]
    mp = moving.points[[moving_index[lab] for lab in labels]]
    return LandmarkPairs(labels, fp, mp, fixed.frame, only_f, only_m)
