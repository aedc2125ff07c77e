"""One validation run: landmarks, overlap, Jacobian and NMI measures, acceptance, provenance, table rows.

Everything here is Qt-free and ``slicer``-free: inputs are SimpleITK images and transforms (LPS) and
:class:`~..landmarks.fileio.LandmarkSet` objects. The MRML layer (:mod:`.scene`) and the command line turn nodes and files into
these inputs and the rows below into tables.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from ..errors import CrossModalRegError
from ..landmarks.fileio import LandmarkSet
from ..progress import ProgressCallback, ProgressTracker
from ..provenance import now_iso, sha256_of_image, sha256_of_json, software_versions
from ..tables import Column
from . import measures as _measures
from .jacobian import (
    DEFAULT_BOUNDS,
    JacobianStatistics,
    jacobian_determinant_image,
    jacobian_statistics,
    linear_jacobian_statistics,
)
from .overlap import LabelComparison, compare_label_maps
from .profiles import CriterionResult, Profile, evaluate_profile, verdict
from .similarity import NMIResult, nmi_before_after
from .transforms import FIXED_TO_MOVING, is_linear, resolve_fixed_to_moving, transform_checksum, transform_kind
from .tre import ROLE_DRIVING, ROLE_HELD_OUT, LandmarkResult, landmark_errors

LANDMARK_COLUMNS = [
    Column("index", "#", "", "landmark number (plot axis)", "int"),
    Column("label", "Label", "", "landmark label (pairs fixed and moving points)", "string"),
    Column("role", "Role", "", "driving: used by the registration (its error is FRE); held-out: TRE", "string"),
    Column("fixed_r", "Fixed R", "mm", "fixed landmark, RAS", "double"),
    Column("fixed_a", "Fixed A", "mm", "fixed landmark, RAS", "double"),
    Column("fixed_s", "Fixed S", "mm", "fixed landmark, RAS", "double"),
    Column("moving_r", "Moving R", "mm", "moving landmark, RAS", "double"),
    Column("moving_a", "Moving A", "mm", "moving landmark, RAS", "double"),
    Column("moving_s", "Moving S", "mm", "moving landmark, RAS", "double"),
    Column("tre_before_mm", "Error before", "mm", "|| p_fixed - p_moving || (identity transform)", "double"),
    Column("tre_after_mm", "Error after", "mm", "|| T(p_fixed) - p_moving ||, T fixed-to-moving", "double"),
    Column("residual_r", "Residual R", "mm", "T(p_fixed) - p_moving, RAS", "double"),
    Column("residual_a", "Residual A", "mm", "T(p_fixed) - p_moving, RAS", "double"),
    Column("residual_s", "Residual S", "mm", "T(p_fixed) - p_moving, RAS", "double"),
    Column("fle_mm", "FLE", "mm", "fiducial localisation error of this landmark (RMS, per image)", "double"),
    Column("within_fle", "Within annotator variability", "",
           "yes when error after <= sqrt(2) x FLE; empty when FLE is unknown", "string"),
    Column("note", "Note", "", "why a value is missing", "string"),
]

SEGMENT_COLUMNS = [
    Column("label", "Label value", "", "label value in the label maps", "int"),
    Column("name", "Name", "", "segment or label name", "string"),
    Column("fixed_volume_mm3", "Fixed volume", "mm3", "volume in the fixed label map", "double"),
    Column("moving_volume_mm3", "Moving volume", "mm3", "volume in the moving label map, on its own grid", "double"),
    Column("warped_volume_mm3", "Warped moving volume", "mm3",
           "volume of the moving label resampled onto the fixed grid (nearest neighbour)", "double"),
    Column("dice_before", "Dice before", "", "2|A&B| / (|A|+|B|) with the identity transform", "double"),
    Column("dice_after", "Dice after", "", "2|A&B| / (|A|+|B|) after registration", "double"),
    Column("jaccard_after", "Jaccard after", "", "|A&B| / |A|B| after registration", "double"),
    Column("hausdorff_mm", "Hausdorff", "mm",
           "largest voxel-to-segment distance, both directions (SimpleITK HausdorffDistanceImageFilter)", "double"),
    Column("hd95_mm", "HD95", "mm", "larger of the two directed 95th-percentile surface-to-surface distances",
           "double"),
    Column("mssd_mm", "Mean surface distance", "mm", "mean symmetric surface distance (both directions pooled)",
           "double"),
    Column("note", "Note", "", "why a value is missing", "string"),
]

SUMMARY_COLUMNS = [
    Column("measure", "Measure", "", "measure key (acceptance profiles name these)", "string"),
    Column("title", "Title", "", "what the measure is", "string"),
    Column("value", "Value", "", "the number; empty when it could not be computed", "double"),
    Column("unit", "Unit", "", "unit of the value", "string"),
    Column("criterion", "Criterion", "", "acceptance criterion of the profile, if any", "string"),
    Column("result", "Result", "", "pass, fail, not evaluated; or the TRE-versus-FLE verdict", "string"),
    Column("note", "Note", "", "description, or why the value is missing", "string"),
]


@dataclass
class ValidationReport:
    """All results of one validation run. Distances mm, volumes mm3, points LPS mm."""

    transform_description: str
    landmarks: LandmarkResult | None = None
    labels: LabelComparison | None = None
    jacobian: JacobianStatistics | None = None
    jacobian_image: sitk.Image | None = None
    nmi: NMIResult | None = None
    profile: Profile | None = None
    acceptance: list[CriterionResult] = field(default_factory=list)
    values: dict = field(default_factory=dict)
    reasons: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str | None:
        """Overall acceptance ("pass", "fail", "incomplete") or None without a profile."""
        return verdict(self.acceptance) if self.profile is not None else None

    # ------------------------------------------------------------------------------------------ rows
    def landmark_rows(self) -> list[dict]:
        lm = self.landmarks
        if lm is None:
            return []
        rows = []
        within = lm.within_fle()
        for i, lab in enumerate(lm.labels):
            f = _ras(lm.fixed_points_lps[i])
            m = _ras(lm.moving_points_lps[i])
            r = _ras(lm.mapped_points_lps[i] - lm.moving_points_lps[i])
            fle = float(lm.fle_mm[i]) if np.isfinite(lm.fle_mm[i]) else None
            rows.append({
                "index": i + 1, "label": lab, "role": lm.roles[i],
                "fixed_r": f[0], "fixed_a": f[1], "fixed_s": f[2],
                "moving_r": m[0], "moving_a": m[1], "moving_s": m[2],
                "tre_before_mm": float(lm.tre_before_mm[i]), "tre_after_mm": float(lm.tre_after_mm[i]),
                "residual_r": r[0], "residual_a": r[1], "residual_s": r[2],
                "fle_mm": fle,
                "within_fle": None if within[i] is None else ("yes" if within[i] else "no"),
                "note": "" if fle is not None else "FLE unknown: no verdict against annotator variability",
            })
        return rows

    def segment_rows(self) -> list[dict]:
        if self.labels is None:
            return []
        return [dict(vars(r)) for r in self.labels.rows]

    def summary_rows(self) -> list[dict]:
        rows = []
        criteria = {}
        for res in self.acceptance:
            criteria.setdefault(res.criterion.measure, []).append(res)
        for key, value in self.values.items():
            m = _measures.MEASURES[key]
            base = {"measure": key, "title": m.title, "value": value, "unit": m.unit}
            note = m.description if value is not None else (self.reasons.get(key) or "not computed")
            if key in criteria:
                for res in criteria[key]:
                    rows.append({**base, "criterion": res.criterion.text(), "result": res.result,
                                 "note": note if value is not None else res.note})
            else:
                rows.append({**base, "criterion": "", "result": "", "note": note})
        lm = self.landmarks
        if lm is not None:
            ok, floor = lm.fle_verdict(ROLE_HELD_OUT)
            tre_rms = self.values.get("tre_rms_mm")
            rows.append({
                "measure": "tre_vs_fle", "title": "TRE against annotator variability", "value": tre_rms,
                "unit": "mm", "criterion": "" if floor is None else f"<= {floor:.3g} mm (sqrt(2) x RMS FLE)",
                "result": "" if ok is None else ("within annotator variability" if ok
                                                 else "above annotator variability"),
                "note": "RMS TRE of held-out landmarks against sqrt(2) x their RMS FLE" if ok is not None
                else "FLE not given for held-out landmarks: no verdict",
            })
        if self.profile is not None:
            rows.append({"measure": "verdict", "title": f"Acceptance ({self.profile.name} {self.profile.version})",
                         "value": None, "unit": "", "criterion": f"all {len(self.acceptance)} criteria",
                         "result": self.verdict, "note": f"profile sha256 {self.profile.sha256[:12]}"})
        return rows

    def summary_json(self) -> dict:
        """JSON-ready summary: values, acceptance, notes, provenance."""
        return {
            "transform": self.transform_description,
            "values": {k: v for k, v in self.values.items()},
            "missing": {k: self.reasons.get(k, "not computed") for k, v in self.values.items() if v is None},
            "profile": None if self.profile is None else {
                "name": self.profile.name, "version": self.profile.version, "source": self.profile.source,
                "sha256": self.profile.sha256,
            },
            "acceptance": [
                {"measure": r.criterion.measure, "criterion": r.criterion.text(), "value": r.value,
                 "result": r.result, "note": r.note} for r in self.acceptance
            ],
            "verdict": self.verdict,
            "nmi_note": "NMI is an indirect measure: it can rise for implausible deformations",
            "notes": list(self.notes),
            "provenance": self.provenance,
        }


def _ras(p):
    return [-float(p[0]) + 0.0, -float(p[1]) + 0.0, float(p[2]) + 0.0]


def _clean(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def validate(
    transform: sitk.Transform,
    *,
    direction: str = FIXED_TO_MOVING,
    fixed: sitk.Image | None = None,
    moving: sitk.Image | None = None,
    fixed_landmarks: LandmarkSet | None = None,
    moving_landmarks: LandmarkSet | None = None,
    driving_labels: Iterable[str] | None = None,
    fle_mm: float | Mapping[str, float] | None = None,
    unpaired_landmarks: str = "error",
    fixed_labels: sitk.Image | None = None,
    moving_labels: sitk.Image | None = None,
    label_names: Mapping[int, str] | None = None,
    jacobian: str = "auto",
    jacobian_mask: sitk.Image | None = None,
    jacobian_bounds: tuple[float, float] = DEFAULT_BOUNDS,
    nmi_bins: int = 64,
    profile: Profile | None = None,
    input_checksums: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
) -> ValidationReport:
    """Validate a registration transform with every measure its inputs allow.

    Parameters
    ----------
    transform : SimpleITK.Transform
        The registration transform (LPS mm), in ``direction``.
    direction : {"fixed-to-moving", "moving-to-fixed"}
        What ``transform`` maps. A moving-to-fixed transform is inverted (an error if it has no inverse).
    fixed, moving : SimpleITK.Image, optional
        Fixed and moving images: NMI before/after; the fixed grid also carries the Jacobian map.
    fixed_landmarks, moving_landmarks : LandmarkSet, optional
        Paired by label (LPS mm): TRE before/after, FRE, TRE against FLE.
    driving_labels : iterable of str, optional
        Landmarks that drove the registration (FRE); the others are held out (TRE).
    fle_mm : float or mapping label -> float, optional
        Fiducial localisation error (RMS, mm, per image).
    unpaired_landmarks : {"error", "skip"}
        Landmarks present on one side only.
    fixed_labels, moving_labels : SimpleITK.Image, optional
        Label maps (same value, same structure): Dice, Hausdorff, HD95, MSSD, volumes.
    label_names : mapping int -> str, optional
        Names of the label values.
    jacobian : {"auto", "always", "never"}
        "auto": a Jacobian map for non-linear transforms, the constant determinant for linear ones.
    jacobian_mask : SimpleITK.Image, optional
        Fixed-space region for the Jacobian statistics (default: the whole fixed grid).
    jacobian_bounds : (float, float)
        Plausible range of the Jacobian determinant.
    nmi_bins : int
        Histogram bins per image for NMI.
    profile : Profile, optional
        Acceptance profile giving pass/fail per measure.
    input_checksums : mapping, optional
        Checksums of the input files (recorded in the provenance).
    progress : callable(Progress), optional
        The library's progress protocol (:mod:`CrossModalRegLib.progress`): a report as each group of measures
        starts (its ``message`` names it) and within the overlap measures; raising ``RegistrationCancelled`` from
        it stops the validation.

    Returns
    -------
    ValidationReport
    """
    tracker = ProgressTracker(progress, {"landmarks": 1.0 * (fixed_landmarks is not None),
                                         "overlap": 6.0 * (fixed_labels is not None), "jacobian": 3.0,
                                         "nmi": 1.0 * (fixed is not None)})

    def say(phase, message):
        tracker.step(phase, 0.0, message=message)

    if jacobian not in ("auto", "always", "never"):
        raise CrossModalRegError(f"jacobian must be auto, always or never, got '{jacobian}'")
    if (fixed_landmarks is None) != (moving_landmarks is None):
        raise CrossModalRegError("landmarks need both a fixed and a moving set")
    if (fixed_labels is None) != (moving_labels is None):
        raise CrossModalRegError("overlap measures need both a fixed and a moving label map or segmentation")
    if (fixed is None) != (moving is None):
        raise CrossModalRegError("NMI needs both the fixed and the moving image")
    tx = resolve_fixed_to_moving(transform, direction)
    report = ValidationReport(transform_description=f"{transform_kind(transform)}, given {direction}")
    values, reasons = {}, {}

    # --------------------------------------------------------------------------------- landmarks
    if fixed_landmarks is not None:
        say("landmarks", "landmark errors")
        lm = landmark_errors(fixed_landmarks, moving_landmarks, tx, driving_labels=driving_labels, fle_mm=fle_mm,
                             unpaired=unpaired_landmarks)
        report.landmarks = lm
        report.notes.extend(lm.notes)
        for prefix, role, when in (("tre_", ROLE_HELD_OUT, "after"), ("tre_before_", ROLE_HELD_OUT, "before"),
                                   ("fre_", ROLE_DRIVING, "after")):
            st = lm.statistics(role, when)
            for stat in ("mean", "sd", "median", "rms", "p95", "max"):
                key = f"{prefix}{stat}_mm"
                values[key] = _clean(st[stat])
                if st[stat] is None:
                    reasons[key] = (f"no {role} landmark" if st["n"] == 0 else "needs at least 2 landmarks")
            if prefix != "tre_before_":
                values[f"{prefix}n"] = st["n"]
        _, floor = lm.fle_verdict(ROLE_HELD_OUT)
        values["fle_floor_mm"] = floor
        if floor is None:
            reasons["fle_floor_mm"] = "FLE not given for held-out landmarks"
    else:
        reasons.update({k: "no landmarks given" for k, m in _measures.MEASURES.items() if m.group == "landmarks"})

    # --------------------------------------------------------------------------------- overlap
    if fixed_labels is not None:
        say("overlap", "overlap and surface distances")
        comp = compare_label_maps(fixed_labels, moving_labels, tx, label_names=label_names,
                                  progress=lambda p: tracker.step("overlap", p.fraction, message=p.message))
        report.labels = comp
        compared = [r for r in comp.rows if r.dice_after is not None]
        values["labels_compared"] = len(compared)
        for key, col, agg in (("dice_before_mean", "dice_before", np.mean), ("dice_mean", "dice_after", np.mean),
                              ("dice_min", "dice_after", np.min), ("hausdorff_max_mm", "hausdorff_mm", np.max),
                              ("hd95_mean_mm", "hd95_mm", np.mean), ("hd95_max_mm", "hd95_mm", np.max),
                              ("mssd_mean_mm", "mssd_mm", np.mean), ("mssd_max_mm", "mssd_mm", np.max)):
            vals = comp.values(col)
            values[key] = float(agg(vals)) if vals else None
            if not vals:
                reasons[key] = "no label could be compared"
        unmatched = [r for r in comp.rows if r.dice_after is None]
        if unmatched:
            report.notes.append(f"{len(unmatched)} label(s) without counterpart: "
                                + ", ".join(r.name for r in unmatched[:10]) + ("..." if len(unmatched) > 10 else ""))
    else:
        reasons.update({k: "no label maps given" for k, m in _measures.MEASURES.items() if m.group == "overlap"})

    # --------------------------------------------------------------------------------- jacobian
    linear = is_linear(tx)
    jac_keys = [k for k, m in _measures.MEASURES.items() if m.group == "jacobian"]
    if jacobian == "never":
        reasons.update({k: "Jacobian not requested" for k in jac_keys})
    elif linear and jacobian == "auto":
        say("jacobian", "Jacobian of a linear transform")
        report.jacobian = linear_jacobian_statistics(tx, bounds=tuple(jacobian_bounds))
    elif fixed is None and fixed_labels is None:
        reasons.update({k: "no fixed image or label map to give the grid" for k in jac_keys})
    else:
        say("jacobian", "Jacobian determinant map")
        grid = fixed if fixed is not None else fixed_labels
        report.jacobian_image = jacobian_determinant_image(tx, grid)
        report.jacobian = jacobian_statistics(report.jacobian_image, jacobian_mask, bounds=jacobian_bounds)
    if report.jacobian is not None:
        js = report.jacobian
        for key, v in (("jacobian_min", js.min), ("jacobian_max", js.max), ("jacobian_mean", js.mean),
                       ("jacobian_fraction_folding", js.fraction_folding),
                       ("jacobian_fraction_outside", js.fraction_outside_bounds), ("jacobian_sd_log", js.sd_log)):
            values[key] = _clean(v)
            if v is None:
                reasons[key] = "; ".join(js.notes) or "not computed"
        report.notes.extend(js.notes)

    # --------------------------------------------------------------------------------- NMI
    if fixed is not None:
        say("nmi", "normalized mutual information")
        nmi = nmi_before_after(fixed, moving, tx, bins=nmi_bins)
        report.nmi = nmi
        values["nmi_before"], values["nmi_after"] = _clean(nmi.before), _clean(nmi.after)
        values["nmi_relative_improvement"] = _clean(nmi.relative_improvement)
        for k in ("nmi_before", "nmi_after", "nmi_relative_improvement"):
            if values[k] is None:
                reasons[k] = nmi.note or "not computed"
    else:
        reasons.update({k: "no fixed and moving images given" for k, m in _measures.MEASURES.items()
                        if m.group == "nmi"})

    # keep the registry's order, only measures that apply to the inputs given (or are named by the profile)
    named = {c.measure for c in profile.criteria} if profile is not None else set()
    report.values = {k: values.get(k) for k in _measures.MEASURES if k in values or k in named}
    report.reasons = reasons
    if profile is not None:
        report.profile = profile
        report.acceptance = evaluate_profile(profile, report.values, reasons)

    # --------------------------------------------------------------------------------- provenance
    checksums = dict(input_checksums or {})
    checksums["transform"] = transform_checksum(transform)
    for key, img in (("fixed", fixed), ("moving", moving), ("fixed_labels", fixed_labels),
                     ("moving_labels", moving_labels), ("jacobian_mask", jacobian_mask)):
        if img is not None:
            checksums.setdefault(key, sha256_of_image(img))
    for key, s in (("fixed_landmarks", fixed_landmarks), ("moving_landmarks", moving_landmarks)):
        if s is not None:
            checksums.setdefault(key, sha256_of_json([list(s.labels), np.round(s.points, 9).tolist()]))
    report.provenance = {
        "created": now_iso(),
        "software": software_versions(),
        "inputs_sha256": checksums,
        "transform": {"kind": transform_kind(transform), "direction_given": direction,
                      "measured_with": "fixed-to-moving (LPS)"},
        "options": {"jacobian": jacobian, "jacobian_bounds": list(jacobian_bounds), "nmi_bins": nmi_bins,
                    "unpaired_landmarks": unpaired_landmarks,
                    "driving_labels": None if driving_labels is None else sorted(map(str, driving_labels)),
                    "fle_mm": fle_mm if not isinstance(fle_mm, Mapping) else dict(fle_mm)},
        "profile": None if profile is None else {"name": profile.name, "version": profile.version,
                                                  "source": profile.source, "sha256": profile.sha256},
    }
    tracker.finish("validated")
    return report
