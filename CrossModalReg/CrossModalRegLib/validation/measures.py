"""The summary measures of a validation run: key, title, unit and description of each.

Acceptance profiles name these keys. Landmark measures are over held-out landmarks (TRE) or driving ones (FRE);
without stated roles every landmark counts as held out. Overlap measures aggregate the per-label rows; Jacobian
measures are over the fixed grid or the mask; NMI is an indirect measure.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Measure:
    key: str
    title: str
    unit: str
    description: str
    group: str


def _m(key, title, unit, description, group):
    return Measure(key, title, unit, description, group)


_STATS = (
    ("mean", "mean"), ("sd", "SD"), ("median", "median"), ("rms", "RMS"), ("p95", "95th percentile"), ("max", "max"),
)

MEASURES: dict[str, Measure] = {}


def _add(m: Measure):
    MEASURES[m.key] = m


for _when, _label in (("", "after"), ("before_", "before")):
    for _stat, _title in _STATS:
        _add(_m(f"tre_{_when}{_stat}_mm", f"TRE {_title} ({_label})", "mm",
                f"{_title} of || T(p_fixed) - p_moving || over held-out landmarks, {_label} registration"
                + (" (identity transform)" if _label == "before" else ""), "landmarks"))
for _stat, _title in _STATS:
    _add(_m(f"fre_{_stat}_mm", f"FRE {_title}", "mm",
            f"{_title} of the error of the landmarks that drove the registration (optimistic)", "landmarks"))
_add(_m("tre_n", "Held-out landmarks", "count", "number of landmarks in the TRE statistics", "landmarks"))
_add(_m("fre_n", "Driving landmarks", "count", "number of landmarks in the FRE statistics", "landmarks"))
_add(_m("fle_floor_mm", "TRE floor from FLE", "mm",
        "sqrt(2) x RMS fiducial localisation error of the held-out landmarks: the error a perfect registration "
        "still shows", "landmarks"))
_add(_m("labels_compared", "Labels compared", "count", "labels present in both the fixed and the moving maps", "overlap"))
_add(_m("dice_before_mean", "Dice mean (before)", "", "mean Dice over compared labels, identity transform", "overlap"))
_add(_m("dice_mean", "Dice mean (after)", "", "mean Dice over compared labels after registration", "overlap"))
_add(_m("dice_min", "Dice min (after)", "", "smallest Dice of a compared label after registration", "overlap"))
_add(_m("hausdorff_max_mm", "Hausdorff max", "mm", "largest Hausdorff distance over labels, after", "overlap"))
_add(_m("hd95_mean_mm", "HD95 mean", "mm", "mean over labels of the 95th-percentile surface distance", "overlap"))
_add(_m("hd95_max_mm", "HD95 max", "mm", "largest 95th-percentile surface distance over labels", "overlap"))
_add(_m("mssd_mean_mm", "Mean surface distance", "mm", "mean over labels of the mean symmetric surface distance",
        "overlap"))
_add(_m("mssd_max_mm", "Mean surface distance, worst label", "mm",
        "largest mean symmetric surface distance over labels", "overlap"))
_add(_m("jacobian_min", "Jacobian min", "", "smallest Jacobian determinant of the fixed-to-moving transform",
        "jacobian"))
_add(_m("jacobian_max", "Jacobian max", "", "largest Jacobian determinant", "jacobian"))
_add(_m("jacobian_mean", "Jacobian mean", "", "mean Jacobian determinant (1: volume preserved)", "jacobian"))
_add(_m("jacobian_fraction_folding", "Folding fraction", "fraction",
        "fraction of voxels with Jacobian determinant <= 0 (the transform folds there)", "jacobian"))
_add(_m("jacobian_fraction_outside", "Fraction outside bounds", "fraction",
        "fraction of voxels with Jacobian determinant outside the plausible range (default [0.5, 2])", "jacobian"))
_add(_m("jacobian_sd_log", "SD of log Jacobian", "", "standard deviation of log J over voxels with J > 0",
        "jacobian"))
_add(_m("nmi_before", "NMI (before)", "", "normalized mutual information, identity transform (indirect)", "nmi"))
_add(_m("nmi_after", "NMI (after)", "", "normalized mutual information after registration (indirect)", "nmi"))
_add(_m("nmi_relative_improvement", "NMI relative improvement", "fraction",
        "(NMI after - NMI before) / NMI before; indirect: it can rise for implausible deformations", "nmi"))
