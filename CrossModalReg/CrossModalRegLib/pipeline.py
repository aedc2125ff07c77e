"""The headless registration job: inputs in, a complete output folder out (written atomically).

Used by ``crossmodalreg register``, ``crossmodalreg demo`` and the cohort batch. The folder holds:

* ``transform.h5``: ITK transform mapping FIXED-space points to MOVING-space points (LPS), readable by SimpleITK
  (``sitk.ReadTransform``) and by Slicer (it loads as the transform the moving volume goes under);
* ``moving_resampled.nii.gz``: the moving image on the fixed grid;
* ``overlay_before_after.png`` (+ the before/after rows alone): labelled QC views resliced by Slicer's slice
  logic (``qc_pictures``), and ``report.html``, the one page that shows them with the checks (``report_html``);
* ``registration.json``: provenance (versions, preset and hash, parameters, seed, input checksums, timings),
  the sanity checks and the metric trace; ``metric_trace.tsv`` (+ schema);
* ``scene/registration.mrml`` with its node files: opens in Slicer with the moving volume under the transform.

Everything is written into a temporary sibling folder first and renamed into place at the end, so a failure or a
cancel leaves no half-written output (and an existing output folder is never overwritten unless asked).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import SimpleITK as sitk

from . import engine, signals
from .errors import CrossModalRegError
from .image_io import (
    read_image,  # noqa: F401  (re-exported: the commands and batch read inputs from here)
    write_image,
)
from .output_dir import OutputFolder
from .provenance import sha256_of_file, write_json_atomic
from .tables import write_tsv


def landmarks_in_image_space(image: sitk.Image, landmarks, role: str):
    """``landmarks`` (a :class:`~.landmarks.fileio.LandmarkSet`) as LPS mm points of ``image``'s physical space, with
    the image's dimension: pixel files (ANHIR, ``x_pixel``) go through the image's grid."""
    from .landmarks.fileio import LandmarkSet

    pts = np.asarray(landmarks.points, dtype=float)
    dim = image.GetDimension()
    if landmarks.frame == "pixel":
        if dim != 2:
            raise CrossModalRegError(f"{role} landmarks '{landmarks.source}' are 2D pixels but the {role} image is "
                                     f"{dim}D")
        pts = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(map(float, p))) for p in pts])
    elif dim == 2 and pts.shape[1] == 3:
        off = np.abs(pts[:, 2]) > PLANE_TOLERANCE_MM
        if off.any():
            raise CrossModalRegError(
                f"{role} landmarks '{landmarks.source}' are 3D ({int(off.sum())} of {len(pts)} points off the "
                f"image plane z = 0, up to {np.abs(pts[:, 2]).max():.3g} mm) but the {role} image is 2D: give the "
                "image's own landmarks (a pixel CSV, or LPS points with z = 0)")
        pts = pts[:, :2]
    if dim == 2:  # the rule of 'landmarks import'; a 3D point just outside a cropped field of view stays allowed
        _check_inside(image, pts, landmarks, role)
    return LandmarkSet(landmarks.labels, pts.reshape(len(landmarks), dim), "LPS", landmarks.source)


PLANE_TOLERANCE_MM = 1e-3  # a 3D point this close to z = 0 lies on a 2D image's plane


def _check_inside(image: sitk.Image, points_lps, landmarks, role: str) -> None:
    """Refuse landmarks outside their (2D) image beyond its pixel edges: the wrong file, frame or scale. The same
    rule as ``landmarks import`` (:func:`.landmarks.units.outside_image`)."""
    from .landmarks.units import image_geometry, outside_image, physical_lps_to_pixel, pixel_bounds_text

    geometry = image_geometry(image)
    idx = physical_lps_to_pixel(points_lps, geometry)
    out = outside_image(idx, geometry)
    if out.any():
        first = int(np.argmax(out))
        raise CrossModalRegError(
            f"{int(out.sum())} of {len(out)} {role} landmarks of '{landmarks.source}' lie outside the {role} image "
            f"(e.g. '{landmarks.labels[first]}' at pixel {np.round(idx[first], 1).tolist()}; the image is "
            f"{pixel_bounds_text(geometry)}): check that the file belongs to this image and its frame (LPS or RAS) "
            "and scale")


def read_landmark_pairs(fixed: sitk.Image, moving: sitk.Image, fixed_path: str, moving_path: str, *,
                        unpaired: str = "error"):
    """Read both landmark files (any format), bring them to their images' physical spaces and pair them by label
    (:func:`.landmarks.pairing.pair_landmarks`): the one way ``register`` and batch read landmarks."""
    from .landmarks.fileio import read_landmark_file
    from .landmarks.pairing import pair_landmarks

    fl = landmarks_in_image_space(fixed, read_landmark_file(fixed_path), "fixed")
    ml = landmarks_in_image_space(moving, read_landmark_file(moving_path), "moving")
    return pair_landmarks(fl, ml, unpaired=unpaired)


def write_landmark_outputs(folder: str, fixed: sitk.Image, moving: sitk.Image, labels, fixed_points,
                           moving_points) -> dict:
    """The paired landmarks a run used as landmark CSVs (``fixed_landmarks.csv``, ``moving_landmarks.csv``): LPS mm
    for 3D images, pixels of each image for 2D; ``register``, ``validate`` and ``landmarks`` read them back."""
    from .landmarks.fileio import write_landmarks_csv

    files = {}
    for role, image, pts in (("fixed", fixed, fixed_points), ("moving", moving, moving_points)):
        pts = np.asarray(pts, dtype=float)
        frame = "LPS" if image.GetDimension() == 3 else "pixel"
        if frame == "pixel":
            pts = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(map(float, p[:2]))) for p in pts])
        name = f"{role}_landmarks.csv"
        write_landmarks_csv(os.path.join(folder, name), [str(v) for v in labels], pts, frame=frame)
        files[role] = name
    return files


def stage_message(p) -> str:
    """The progress message, prefixed with "stage i/n" when the preset has more than one stage."""
    if p.n_stages and p.n_stages > 1 and p.stage:
        return f"stage {p.stage_index + 1}/{p.n_stages} {p.message}"
    return p.message


class TerminalProgress:
    """A one-line progress bar on a terminal (stderr); plain periodic lines when not a terminal."""

    def __init__(self, stream=None, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last = -1.0
        self.stage = None
        self.t0 = time.perf_counter()

    def __call__(self, p):
        if not self.enabled:
            return
        pct = 100.0 * p.fraction
        message = stage_message(p)
        if self.tty:
            bar = "#" * int(pct / 4)
            metric = f" metric {p.metric:.5g}" if p.metric is not None else ""
            self.stream.write(f"\r[{bar:<25}] {pct:5.1f}% {message:<40}{metric:<22}")
            if p.fraction >= 1.0:
                self.stream.write("\n")
            self.stream.flush()
        elif pct - self.last >= 10.0 or p.fraction >= 1.0 or (p.n_stages > 1 and p.stage_index != self.stage):
            self.last = pct
            self.stage = p.stage_index if p.n_stages > 1 else self.stage
            self.stream.write(f"{pct:5.1f}% {message} ({time.perf_counter() - self.t0:.1f} s)\n")
            self.stream.flush()


# A run may leave the evaluation landmarks this much further apart (mean) before it counts as worse: the larger of
# an absolute and a relative allowance (landmark placement noise; Case24's floor is 0.83 mm, its identity 1.10 mm).
LANDMARK_WORSE_TOLERANCE_MM = 0.5
LANDMARK_WORSE_TOLERANCE_FRACTION = 0.10


def landmark_check(transform, fixed_landmarks, moving_landmarks, *, evaluation_only: bool):
    """A sanity check from paired landmarks: mean distance before (identity: the headers) and after ``transform``
    (fixed -> moving, LPS). With landmarks given for evaluation only, a result that leaves them further apart than
    before (beyond the tolerance) fails; landmarks used for the initialisation are reported but cannot judge."""
    from .landmarks.tre import target_registration_error
    from .sanity import Check

    tre = target_registration_error(transform, fixed_landmarks, moving_landmarks)
    fl = tre.mapped
    before = float(tre.before.mean())
    after_each = tre.after
    after = float(after_each.mean())
    tol = max(LANDMARK_WORSE_TOLERANCE_MM, LANDMARK_WORSE_TOLERANCE_FRACTION * before)
    ok = (after <= before + tol) or not evaluation_only
    limit = f"mean after <= before + {tol:.2f} mm (max of {LANDMARK_WORSE_TOLERANCE_MM} mm and " \
            f"{100 * LANDMARK_WORSE_TOLERANCE_FRACTION:.0f}% of before)" if evaluation_only else "reported only"
    msg = "ok" if ok else (
        f"the registration moved the {len(fl)} evaluation landmarks further apart: mean distance {before:.2f} mm "
        f"before (as the headers align them) -> {after:.2f} mm after (tolerance {tol:.2f} mm: the larger of "
        f"{LANDMARK_WORSE_TOLERANCE_MM} mm and {100 * LANDMARK_WORSE_TOLERANCE_FRACTION:.0f}% of before)")
    return Check("landmarks_not_worse" if evaluation_only else "landmarks_reported", bool(ok), after, limit, msg,
                 details={"pairs": int(len(fl)), "mean_before_mm": before, "mean_after_mm": after,
                          "median_after_mm": float(np.median(after_each)), "max_after_mm": float(after_each.max()),
                          "tolerance_mm": tol, "used_for_initialization": not evaluation_only})


FINAL_METRIC_NOTE = ("initial_metric and final_metric are the first stage's metric at full resolution on smoothed "
                     "images and one fixed sample set, before and after; the metric_trace values are per resolution "
                     "level (own resolution and samples) and are not comparable with them or across levels")


def _input_name(input_files: dict | None, role: str, names: dict | None = None) -> str:
    """What the pictures and the report call the fixed/moving image: a given name, else the file's name."""
    if names and names.get(role):
        return str(names[role])
    path = (input_files or {}).get(role)
    return os.path.basename(path) if path else role


def run_registration_job(fixed: sitk.Image, moving: sitk.Image, output_dir: str, *, preset="multimodal-rigid",
                         fixed_mask=None, moving_mask=None, fixed_landmarks=None, moving_landmarks=None,
                         landmark_labels=None, initial_transform=None, seed: int = engine.DEFAULT_SEED,
                         overrides=None, rotation_search=None, orientation_search=None, progress=None, cancel=None,
                         overwrite: bool = False,
                         input_files: dict | None = None, extra_provenance: dict | None = None,
                         use_landmarks_for_initialization: bool = True, strict: bool = True, pictures: bool = True,
                         threads: int | None = 1, image_names: dict | None = None):
    """Register and write the complete output folder atomically (:class:`.output_dir.OutputFolder`: locked,
    staged, renamed at the end); return (result, output_dir)."""
    with OutputFolder(output_dir, overwrite=overwrite, inputs=list((input_files or {}).values())) as out:
        result = _register_and_write(out.staging, fixed, moving, preset=preset, fixed_mask=fixed_mask,
                                     moving_mask=moving_mask, fixed_landmarks=fixed_landmarks,
                                     moving_landmarks=moving_landmarks, landmark_labels=landmark_labels,
                                     initial_transform=initial_transform, seed=seed, overrides=overrides,
                                     rotation_search=rotation_search, orientation_search=orientation_search,
                                     progress=progress, cancel=cancel, input_files=input_files,
                                     extra_provenance=extra_provenance,
                                     use_landmarks_for_initialization=use_landmarks_for_initialization,
                                     strict=strict, pictures=pictures, threads=threads,
                                     image_names=image_names)
    return result, os.path.abspath(output_dir)


def _register_and_write(tmp, fixed, moving, *, preset, fixed_mask, moving_mask, fixed_landmarks, moving_landmarks,
                        landmark_labels, initial_transform, seed, overrides, rotation_search, orientation_search,
                        progress, cancel, input_files, extra_provenance, use_landmarks_for_initialization, strict,
                        pictures, threads, image_names):
    """The body of :func:`run_registration_job`: register, then write every output into ``tmp``."""
    from .report_html import write_report
    from .scene_registration import METRIC_TRACE_COLUMNS

    with signals.deferred():  # a signal stops the ITK optimisers through the cancel check, not mid-callback
        result = engine.register(
            fixed, moving, preset=preset, fixed_mask=fixed_mask, moving_mask=moving_mask,
            fixed_landmarks=fixed_landmarks if use_landmarks_for_initialization else None,
            moving_landmarks=moving_landmarks if use_landmarks_for_initialization else None,
            initial_transform_fixed_to_moving=initial_transform, seed=seed, overrides=overrides,
            rotation_search=rotation_search, orientation_search=orientation_search, progress=progress,
            cancel=signals.with_signals(cancel), strict=strict and fixed_landmarks is None, threads=threads,
        )
    tx = result.transform_fixed_to_moving_lps
    if fixed_landmarks is not None and moving_landmarks is not None:
        check = landmark_check(tx, fixed_landmarks, moving_landmarks,
                               evaluation_only=not use_landmarks_for_initialization)
        result.sanity.checks.append(check)
        if strict and not result.sanity.passed:  # the landmark figures are part of the message either way
            from .errors import RegistrationFailed

            d = check.details
            figures = (f"landmarks {d['mean_before_mm']:.2f} mm before -> {d['mean_after_mm']:.2f} mm after"
                       if check.passed else "")
            raise RegistrationFailed("the result failed the post-run checks: " + "; ".join(
                result.sanity.failures() + ([figures] if figures else [])), result.sanity.failures(), result)
    sitk.WriteTransform(tx, os.path.join(tmp, "transform.h5"))
    resampled = result.resample_moving(fixed, moving)
    write_image(resampled, os.path.join(tmp, "moving_resampled.nii.gz"))
    rows = [{"iteration_index": i, **r} for i, r in enumerate(result.metric_trace_rows())]
    write_tsv(os.path.join(tmp, "metric_trace.tsv"), METRIC_TRACE_COLUMNS, rows)

    provenance = result.provenance()
    provenance["command_inputs"] = {}
    for role, path in (input_files or {}).items():
        if path:
            provenance["command_inputs"][role] = {"path": os.path.abspath(path), "sha256": sha256_of_file(path)}
    if fixed_landmarks is not None and moving_landmarks is not None:
        from .landmarks.tre import target_registration_error

        tre = target_registration_error(tx, fixed_landmarks, moving_landmarks)
        before, after = tre.before, tre.after
        labels = [str(v) for v in (landmark_labels or range(len(before)))]
        provenance["landmarks"] = {
            "labels": labels,
            "files": write_landmark_outputs(tmp, fixed, moving, labels, fixed_landmarks, moving_landmarks),
            "used_for_initialization": bool(use_landmarks_for_initialization),
            "distance_before_mm": before.tolist(), "distance_after_mm": after.tolist(),
            "mean_before_mm": float(before.mean()), "mean_after_mm": float(after.mean()),
        }
    if extra_provenance:
        provenance.update(extra_provenance)
    provenance["metric_trace"] = rows
    provenance["image_names"] = {role: _input_name(input_files, role, image_names) for role in ("fixed", "moving")}
    provenance["final_metric_note"] = FINAL_METRIC_NOTE
    provenance["outputs"] = {
        "transform.h5": "ITK transform, maps FIXED-space points to MOVING-space points, LPS mm",
        "moving_resampled.nii.gz": "moving image resampled onto the fixed grid through transform.h5",
        "scene/registration.mrml": "Slicer scene: moving volume under the transform node",
        "report.html": "one self-contained page: verdict, QC pictures, metric plot, checks, landmarks, provenance",
    }
    if "landmarks" in provenance:
        provenance["outputs"].update({name: f"the paired {role} landmarks used, landmark CSV (LPS mm in 3D, "
                                      "pixels in 2D)" for role, name in provenance["landmarks"]["files"].items()})
    _write_scene_and_pictures(tmp, fixed, moving, result, resampled, provenance, fixed_landmarks=fixed_landmarks,
                              moving_landmarks=moving_landmarks, landmark_labels=landmark_labels,
                              input_files=input_files, image_names=image_names, pictures=pictures)
    write_report(os.path.join(tmp, "report.html"), provenance)
    write_json_atomic(os.path.join(tmp, "registration.json"), provenance)
    return result


def _write_scene_and_pictures(tmp, fixed, moving, result, resampled, provenance, *, fixed_landmarks,
                              moving_landmarks, landmark_labels, input_files, image_names, pictures):
    """The scene (real MRML, :func:`.scene_builder.build_registration_scene`: the nodes the module makes, input
    images referenced where they are) and the QC pictures from Slicer's compositing of that same scene."""
    from .headless import HeadlessSlicer
    from .overlay import write_png
    from .qc_pictures import figures, render_qc
    from .scene_builder import build_registration_scene, save_registration_scene

    with HeadlessSlicer() as app:
        built = build_registration_scene(
            app.scene, app.app_logic, fixed, moving, result, provenance, input_files=input_files, names=image_names,
            fixed_landmarks=fixed_landmarks, moving_landmarks=moving_landmarks, landmark_labels=landmark_labels,
            resampled=resampled, resampled_file=os.path.join(tmp, "moving_resampled.nii.gz"))
        if pictures:
            qc = render_qc(app.scene, app.app_logic, fixed, built.fixed_node, built.moving_node,
                           built.outputs.transform_node, result.transform_fixed_to_moving_lps,
                           fixed_landmarks=fixed_landmarks, moving_landmarks=moving_landmarks,
                           fixed_name=_input_name(input_files, "fixed", image_names),
                           moving_name=_input_name(input_files, "moving", image_names))
            for name, rgb in figures(qc).items():
                write_png(rgb, os.path.join(tmp, name))
            provenance["qc_pictures"] = qc.summary()
            built.set_provenance(provenance)
        save_registration_scene(built, os.path.join(tmp, "scene", "registration.mrml"))
