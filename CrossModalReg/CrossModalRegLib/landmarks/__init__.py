"""Landmark annotation with inter-annotator tracking, statistics and point-based registration.

Pure parts (no ``slicer``): :mod:`.protocol`, :mod:`.session`, :mod:`.fileio`, :mod:`.stats`,
:mod:`.pairing`, :mod:`.registration`, :mod:`.tre`, :mod:`.report`, :mod:`.importer`, :mod:`.units` (but for its one MRML
helper). The MRML layer :mod:`.mrml_layer` takes the scene as an argument and needs only slicer-core.

Frames and units: 3D positions are LPS millimetres (the file/ITK convention); 2D positions are image pixels
(x right, y down, as in ANHIR), whatever spacing the image file carries (the rule of :mod:`.units`). Every
transform maps fixed-space points to moving-space points.
"""

from .fileio import (
                     LandmarkSet,
                     read_anhir_csv,
                     read_fcsv,
                     read_landmark_file,
                     read_landmarks_csv,
                     read_mrk_json,
                     write_anhir_csv,
                     write_fcsv,
                     write_landmark_set_csv,
                     write_landmarks_csv,
                     write_mrk_json,
)
from .importer import ImportResult, import_session
from .pairing import LandmarkPairs, pair_landmarks
from .protocol import (
                     PROTOCOL_SCHEMA_VERSION,
                     LandmarkDefinition,
                     LandmarkProtocol,
                     load_protocol,
                     protocol_from_labels,
                     save_protocol,
)
from .registration import (
                     MODELS,
                     PointRegistrationResult,
                     ThinPlateSpline,
                     fit_matrix_fixed_to_moving,
                     register_points,
)
from .report import SessionStatistics, session_statistics
from .session import AnnotationSession, LandmarkPoint
from .stats import LandmarkStatistics, Repeatability, icc_2_1, landmark_statistics, repeatability
from .tre import TargetRegistrationError, expected_tre, expected_tre_map, target_registration_error

__all__ = [
    "LandmarkSet", "read_anhir_csv", "read_fcsv", "read_landmark_file", "read_landmarks_csv", "read_mrk_json",
    "write_anhir_csv", "write_fcsv", "write_landmark_set_csv", "write_landmarks_csv", "write_mrk_json",
    "LandmarkPairs", "pair_landmarks", "TargetRegistrationError", "target_registration_error",
    "PROTOCOL_SCHEMA_VERSION", "LandmarkDefinition", "LandmarkProtocol", "load_protocol", "protocol_from_labels",
    "save_protocol",
    "ImportResult", "import_session",
    "MODELS", "PointRegistrationResult", "ThinPlateSpline", "fit_matrix_fixed_to_moving", "register_points",
    "SessionStatistics", "session_statistics", "AnnotationSession", "LandmarkPoint",
    "LandmarkStatistics", "Repeatability", "icc_2_1", "landmark_statistics", "repeatability",
    "expected_tre", "expected_tre_map",
]
