"""Validation of a registration: TRE/FRE against FLE, overlap and surface distances, Jacobian, NMI, acceptance.

The numeric modules (``tre``, ``overlap``, ``jacobian``, ``similarity``, ``profiles``, ``report``) import no
``slicer``: they work on SimpleITK images and transforms in LPS millimetres, with the registration transform
``transform_fixed_to_moving_lps`` (FIXED points -> MOVING points). ``scene`` builds Slicer tables and plots.
"""

from ..landmarks.fileio import LandmarkSet  # the package's one landmark type (re-exported here)
from ..landmarks.pairing import pair_landmarks  # the one pairing by label
from .jacobian import JacobianStatistics, jacobian_determinant_image, jacobian_statistics
from .overlap import LabelComparison, LabelRow, compare_label_maps, surface_distances
from .profiles import Profile, available_profiles, evaluate_profile, load_profile, profile_from_dict
from .report import LANDMARK_COLUMNS, SEGMENT_COLUMNS, SUMMARY_COLUMNS, ValidationReport, validate
from .similarity import NMIResult, nmi_before_after
from .transforms import FIXED_TO_MOVING, MOVING_TO_FIXED, resolve_fixed_to_moving
from .tre import LandmarkResult, error_statistics, landmark_errors

__all__ = [
    "FIXED_TO_MOVING", "MOVING_TO_FIXED", "LANDMARK_COLUMNS", "SEGMENT_COLUMNS", "SUMMARY_COLUMNS",
    "JacobianStatistics", "LabelComparison", "LabelRow", "LandmarkResult", "LandmarkSet", "NMIResult", "Profile",
    "ValidationReport", "available_profiles", "compare_label_maps", "error_statistics", "evaluate_profile",
    "jacobian_determinant_image", "jacobian_statistics", "landmark_errors", "load_profile", "nmi_before_after",
    "pair_landmarks", "profile_from_dict", "resolve_fixed_to_moving", "surface_distances", "validate",
]
