"""Results tables of the landmark statistics and registrations: column declarations (with units and descriptions)
and rows, shared by the Slicer tables and the command line's TSV files. No ``slicer``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import CrossModalRegError
from ..tables import Column
from .session import AnnotationSession
from .stats import AXIS_NAMES, LandmarkStatistics, Repeatability, landmark_statistics, repeatability


def _f(v):
    """A JSON/table number: None for a value that could not be computed (NaN, or infinite)."""
    return None if v is None or not math.isfinite(float(v)) else float(v)


def landmark_columns(units: str, dim: int) -> list[Column]:
    axes = AXIS_NAMES[dim]
    frame = "LPS" if dim == 3 else "pixel"
    return [
        Column("image", "Image", "", "image name (fixed or moving in a two-image session)", "string"),
        Column("label", "Landmark", "", "protocol label", "string"),
        Column("n_annotators", "Annotators", "", "annotators who placed this landmark", "int"),
        *[Column(f"consensus_{a}", f"Consensus {a}", units, f"consensus position, {frame} axis {a}") for a in axes],
        Column("rms_to_consensus", "RMS to consensus", units, "RMS distance of the inlier points to the consensus"),
        Column("fle_estimate", "FLE estimate", units,
               "fiducial localisation error estimate: RMS to consensus x sqrt(n/(n-1))"),
        Column("max_deviation", "Largest deviation", units, "largest distance of any point to the consensus"),
        Column("max_deviation_annotator", "Largest deviation by", "",
               "annotator(s) of the farthest point; with two annotators both are always equidistant, so both are "
               "named (A;B)", "string"),
        Column("outlier_distance", "Outlier test distance", units,
               "largest leave-one-out distance at this landmark (with two annotators: the distance between their "
               "points), compared with the outlier threshold"),
        Column("outliers", "Outliers", "",
               "annotators whose point is an outlier (leave-one-out; with two annotators both, as a pair)", "string"),
        Column("unit", "Unit", "", "unit of every position and distance in this table", "string"),
    ]


def landmark_rows(stats: LandmarkStatistics, image: str) -> list[dict]:
    axes = AXIS_NAMES[stats.consensus.shape[1]]
    rows = []
    for i, label in enumerate(stats.labels):
        row = {
            "image": image, "label": label, "n_annotators": int(stats.n_annotators[i]),
            "rms_to_consensus": _f(stats.rms_to_consensus[i]), "fle_estimate": _f(stats.fle_estimate[i]),
            "max_deviation": _f(stats.max_deviation[i]), "max_deviation_annotator": stats.max_deviation_annotator[i],
            "outliers": ";".join(a for a, o in zip(stats.annotators, stats.outlier[:, i]) if o),
            "outlier_distance": _f(np.nanmax(stats.loo_distance[:, i])) if np.isfinite(
                stats.loo_distance[:, i]).any() else None,
            "unit": stats.units,
        }
        for k, a in enumerate(axes):
            row[f"consensus_{a}"] = _f(stats.consensus[i, k])
        rows.append(row)
    return rows


def annotator_columns(units: str, dim: int) -> list[Column]:
    axes = AXIS_NAMES[dim]
    return [
        Column("image", "Image", "", "fixed or moving", "string"),
        Column("annotator", "Annotator", "", "annotator name", "string"),
        Column("completeness", "Completeness", "fraction", "fraction of the protocol's landmarks placed"),
        Column("mean_distance", "Mean distance", units, "mean distance to the leave-one-out consensus"),
        *[Column(f"bias_{a}", f"Bias {a}", units, f"mean offset from the leave-one-out consensus, axis {a}")
          for a in axes],
        Column("bias_magnitude", "Bias magnitude", units, "length of the bias vector"),
        Column("bias_p_value", "Bias p-value", "", "Hotelling T^2 test of a zero bias"),
        Column("biased", "Biased", "", "bias significant at the chosen level", "bool"),
        Column("outliers", "Outliers", "", "number of this annotator's points flagged as outliers", "int"),
        Column("unit", "Unit", "", "unit of every distance in this table", "string"),
    ]


def annotator_rows(stats: LandmarkStatistics, image: str) -> list[dict]:
    axes = AXIS_NAMES[stats.consensus.shape[1]]
    rows = []
    for a, name in enumerate(stats.annotators):
        b = stats.annotator_bias[a]
        row = {
            "image": image, "annotator": name, "completeness": float(stats.completeness[a]),
            "mean_distance": _f(stats.annotator_mean_distance[a]),
            "bias_magnitude": _f(float(np.linalg.norm(b))) if np.all(np.isfinite(b)) else None,
            "bias_p_value": _f(stats.annotator_bias_pvalue[a]), "biased": bool(stats.biased[a]),
            "outliers": int(stats.outlier[a].sum()),
            "unit": stats.units,
        }
        for k, ax in enumerate(axes):
            row[f"bias_{ax}"] = _f(b[k])
        rows.append(row)
    return rows


SUMMARY_COLUMNS = [
    Column("image", "Image", "", "fixed or moving", "string"),
    Column("quantity", "Quantity", "", "what is measured", "string"),
    Column("value", "Value", "", "the measurement"),
    Column("unit", "Unit", "", "unit of the value", "string"),
    Column("description", "Description", "", "definition", "string"),
]


def _fle_description(stats: LandmarkStatistics) -> str:
    n_points, n_landmarks = int(stats.outlier.sum()), len(stats.outlier_landmarks)
    text = "pooled fiducial localisation error (RMS, degrees-of-freedom corrected), "
    if n_points == 0:
        return text + "no outliers flagged (every point used)"
    if not stats.outliers_excluded:
        return text + f"every point used, the {n_points} outlier points included"
    return text + f"without the {n_points} outlier points ({n_landmarks} landmarks)"


def summary_rows(stats: LandmarkStatistics, image: str) -> list[dict]:
    axes = AXIS_NAMES[stats.consensus.shape[1]]
    rows = [
        {"image": image, "quantity": "FLE", "value": _f(stats.fle_overall), "unit": stats.units,
         "description": _fle_description(stats)},
        {"image": image, "quantity": "FLE with outliers", "value": _f(stats.fle_overall_with_outliers),
         "unit": stats.units,
         "description": "pooled FLE over every placed point, outliers included (consensus of all points)"},
        {"image": image, "quantity": "completeness", "value": stats.overall_completeness, "unit": "fraction",
         "description": "fraction of (annotator, landmark) points placed"},
        {"image": image, "quantity": "outlier threshold", "value": _f(stats.outlier_threshold), "unit": stats.units,
         "description": stats.outlier_rule or
         "distance to the leave-one-out median consensus above which a point is an outlier"},
        {"image": image, "quantity": "outliers", "value": float(stats.outlier.sum()), "unit": "points",
         "description": "points flagged as outliers (with two annotators a flagged landmark counts 2: the pair)"},
        {"image": image, "quantity": "outlier landmarks", "value": float(len(stats.outlier_landmarks)),
         "unit": "landmarks", "description": "landmarks with at least one outlier point"},
        {"image": image, "quantity": "complete landmarks", "value": float(stats.n_complete_landmarks),
         "unit": "landmarks", "description": "landmarks placed by every annotator (used for the ICC)"},
    ]
    for k, a in enumerate(axes):
        rows.append({"image": image, "quantity": f"ICC(2,1) {a}", "value": _f(stats.icc_per_axis[k]), "unit": "",
                     "description": "intraclass correlation, two-way random, absolute agreement, single rater"})
    return rows


def repeatability_columns(units: str) -> list[Column]:
    return [
        Column("image", "Image", "", "fixed or moving", "string"),
        Column("annotator", "Annotator", "", "annotator with two repeats", "string"),
        Column("n_pairs", "Pairs", "", "landmarks placed in both repeats", "int"),
        Column("rms_difference", "RMS difference", units, "RMS distance between the two placements"),
        Column("intra_fle", "Intra-annotator FLE", units, "RMS difference / sqrt(2)"),
        Column("max_difference", "Largest difference", units, "largest distance between the two placements"),
    ]


def repeatability_rows(rep: Repeatability, image: str) -> list[dict]:
    return [{"image": image, "annotator": a, "n_pairs": int(rep.n_pairs[i]),
             "rms_difference": _f(rep.rms_difference[i]), "intra_fle": _f(rep.intra_fle[i]),
             "max_difference": _f(rep.max_difference[i])} for i, a in enumerate(rep.annotators)]


def registration_columns(units: str) -> list[Column]:
    return [
        Column("label", "Landmark", "", "landmark label", "string"),
        Column("fre", "FRE", units, "fiducial registration error |T(fixed) - moving|"),
        Column("loo_tre", "Leave-one-out TRE", units, "error at the landmark when it is left out of the fit"),
    ]


def registration_rows(result) -> list[dict]:
    return [{"label": lab, "fre": _f(result.fre[i]), "loo_tre": _f(result.loo_tre[i])}
            for i, lab in enumerate(result.labels)]


@dataclass
class SessionStatistics:
    """Statistics of a whole session: per image (``fixed``/``moving``) and repeatability where available."""

    session: AnnotationSession
    per_image: dict[str, LandmarkStatistics]
    repeatability: dict[str, Repeatability]
    skipped: dict[str, str] = field(default_factory=dict)
    units: str = ""  # unit of every distance: the session's (mm, or pixel in 2D), or mm converted from pixels

    @property
    def distance_units(self) -> str:
        return self.units or self.session.units

    def tables(self) -> dict[str, tuple[list[Column], list[dict]]]:
        """Name -> (columns, rows) of every results table."""
        units, dim = self.distance_units, self.session.protocol.dimension
        out = {
            "landmarks": (landmark_columns(units, dim), []),
            "annotators": (annotator_columns(units, dim), []),
            "summary": (SUMMARY_COLUMNS, []),
        }
        for image, st in self.per_image.items():
            out["landmarks"][1].extend(landmark_rows(st, image))
            out["annotators"][1].extend(annotator_rows(st, image))
            out["summary"][1].extend(summary_rows(st, image))
        if self.repeatability:
            rows = []
            for image, rep in self.repeatability.items():
                rows.extend(repeatability_rows(rep, image))
            out["repeatability"] = (repeatability_columns(units), rows)
        return out

    def consensus_landmarks(self, image: str):
        """The consensus of ``image`` as a :class:`~.fileio.LandmarkSet` in the session's frame (LPS mm in 3D,
        pixels in 2D; landmarks without a consensus left out), or None when distances were converted to mm."""
        from .fileio import LandmarkSet

        if self.distance_units != self.session.units:
            return None
        st = self.per_image[image]
        ok = np.all(np.isfinite(st.consensus), axis=1)
        return LandmarkSet([lab for lab, k in zip(st.labels, ok) if k], st.consensus[ok], self.session.frame,
                           f"consensus of the {image} image")

    def summary(self) -> dict:
        """JSON-ready summary (numbers per image)."""
        out = {"units": self.distance_units, "frame": self.session.frame,
               "stored_units": self.session.units,
               "protocol": {"name": self.session.protocol.name, "version": self.session.protocol.version},
               "images": {}, "skipped": self.skipped,
               "null_values": "null is a value that could not be computed (see each image's notes and "
                              "outlier_rule); never NaN or Infinity"}
        for image, st in self.per_image.items():
            out["images"][image] = {
                "annotators": st.annotators, "fle": _f(st.fle_overall),
                "fle_description": _fle_description(st),
                "fle_with_outliers": _f(st.fle_overall_with_outliers),
                "icc_2_1_per_axis": [_f(v) for v in st.icc_per_axis],
                "completeness": st.overall_completeness, "biased_annotators": st.biased_annotators,
                "outliers": [{"annotator": a, "label": lab} for a, lab in st.outlier_points],
                "outlier_landmarks": st.outlier_landmarks,
                "outlier_threshold": _f(st.outlier_threshold), "outlier_rule": st.outlier_rule,
                "outliers_excluded": st.outliers_excluded, "notes": st.notes,
            }
            geometry = self.session.image_geometry.get(image)
            if geometry:
                out["images"][image]["image_geometry"] = geometry
        return out


def session_statistics(session: AnnotationSession, *, consensus: str = "mean", outlier_distance=None,
                       outlier_factor: float | None = 3.0, bias_alpha: float = 0.001,
                       units: str | None = None) -> SessionStatistics:
    """Inter-annotator statistics of repeat 1 on each image and repeatability where an annotator has repeat 2.

    Every image of the session is analysed (``fixed`` and ``moving``, or the named images of a session made by
    :func:`.importer.import_session`); an image with fewer than two annotators is skipped (reason in ``skipped``).

    Parameters
    ----------
    units : {None, "pixel", "mm"}
        Unit of every distance. None: the session's (mm in 3D, pixels in 2D). ``"mm"`` for a 2D session converts
        each image's pixels to millimetres through the image's spacing, origin and direction recorded in the
        session (:mod:`.units`); refused when an analysed image has no recorded geometry.
    """
    units = units or session.units
    if units not in (session.units, "mm"):
        raise CrossModalRegError(f"units must be '{session.units}' or 'mm' for this session, not '{units}'")
    per_image, reps, skipped = {}, {}, {}
    for image in session.images:
        annotators = session.annotators(image=image, repeat=1)
        if len(annotators) < 2:
            skipped[image] = f"{len(annotators)} annotator(s) on the {image} image; need at least 2"
            continue
        names, labels, arr = session.position_array(image, repeat=1, annotators=annotators)
        convert = _unit_converter(session, image, units)
        per_image[image] = landmark_statistics(
            convert(arr), annotators=names, labels=labels, units=units, consensus=consensus,
            outlier_distance=outlier_distance, outlier_factor=outlier_factor, bias_alpha=bias_alpha, image=image)
        again = session.annotators(image=image, repeat=2)
        if again:
            _, _, a1 = session.position_array(image, repeat=1, annotators=again)
            _, _, a2 = session.position_array(image, repeat=2, annotators=again)
            reps[image] = repeatability(convert(a1), convert(a2), annotators=again, units=units)
    if not per_image:
        raise CrossModalRegError(
            f"session {session.folder} has fewer than two annotators on every image "
            f"({'; '.join(skipped.values())}); statistics need at least 2")
    return SessionStatistics(session, per_image, reps, skipped, units)


def _unit_converter(session: AnnotationSession, image: str, units: str):
    if units == session.units:
        return lambda arr: arr
    from .units import pixel_to_physical_lps

    geometry = session.image_geometry.get(image)
    if not geometry:
        raise CrossModalRegError(
            f"--units mm needs the spacing of the '{image}' image, but the session has no image geometry for it; "
            "create the session with 'crossmodalreg landmarks import --image NAME=FILE ...' (which records it), "
            "or report in pixels")
    return lambda arr: pixel_to_physical_lps(arr, geometry)
