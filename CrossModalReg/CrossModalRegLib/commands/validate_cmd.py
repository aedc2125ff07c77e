"""``crossmodalreg validate``: the validation tables of the CrossModalRegValidation module, as TSV and JSON.

Writes into ``--output-dir`` (created; it must not exist or be empty): ``summary.tsv``, ``landmarks.tsv`` and
``segments.tsv`` when those inputs are given (each with Slicer's ``.schema.tsv`` beside it, so the units and
descriptions load into Slicer), ``summary.json`` (values, acceptance, provenance) and, with ``--write-jacobian``,
``jacobian.nii.gz``. The folder is written by :class:`CrossModalRegLib.output_dir.OutputFolder` (staged,
locked, renamed at the end), so a failed run leaves nothing behind.
"""

from __future__ import annotations

import os

from ..errors import CrossModalRegError
from . import add_skip_unpaired_option

LANDMARK_HELP = ("landmark file: the landmark CSV (label,x_lps,y_lps,z_lps; or the older '# frame: LPS' + "
                 "label,x,y,z), Slicer .mrk.json or .fcsv (docs/landmarks.md)")


def add_parser(subparsers):
    p = subparsers.add_parser(
        "validate",
        help="TRE, Dice, surface distances, Jacobian and NMI of a registration, with acceptance profiles",
        description="Validate a registration transform: landmark TRE/FRE before and after (against FLE), per-label "
                    "Dice, Hausdorff, HD95 and mean surface distance, Jacobian determinant statistics and NMI, "
                    "with pass/fail from an acceptance profile. Writes TSV tables and a JSON summary.",
    )
    p.add_argument("--fixed", required=True, help="fixed image file")
    p.add_argument("--moving", required=True, help="moving image file")
    p.add_argument("--transform", required=True, help="ITK transform file (.h5, .tfm, .mat, .txt)")
    p.add_argument("--direction", choices=("fixed-to-moving", "moving-to-fixed"), default="fixed-to-moving",
                   help="what the transform maps: FIXED points to MOVING points (ITK/elastix/ANTs/BRAINSFit "
                        "resampling convention, default) or the reverse (inverted here when possible)")
    p.add_argument("--fixed-landmarks", help=LANDMARK_HELP)
    p.add_argument("--moving-landmarks", help=LANDMARK_HELP)
    p.add_argument("--driving-landmarks", default=None,
                   help="comma-separated labels of the landmarks that drove the registration (reported as FRE); "
                        "the others are held out (TRE)")
    p.add_argument("--fle", type=float, default=None, help="fiducial localisation error, RMS per image, mm")
    add_skip_unpaired_option(p)
    p.add_argument("--fixed-labels", help="label map on the fixed side (same value = same structure)")
    p.add_argument("--moving-labels", help="label map on the moving side")
    p.add_argument("--jacobian", choices=("auto", "always", "never"), default="auto",
                   help="Jacobian map: for non-linear transforms (auto), always, or never")
    p.add_argument("--jacobian-mask", help="fixed-space mask (non-zero voxels) for the Jacobian statistics")
    p.add_argument("--write-jacobian", action="store_true", help="also write the Jacobian map as jacobian.nii.gz")
    p.add_argument("--profile", default=None,
                   help="acceptance profile: a bundled name (neuro, abdomen, plausibility) or a JSON file")
    p.add_argument("--fail-on-reject", action="store_true", help="exit with 1 when the profile's verdict is fail")
    p.add_argument("--output-dir", required=True, help="folder to create for the results (must be empty or absent)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder (at the end)")
    p.set_defaults(func=run)
    return p


# ------------------------------------------------------------------------------------------ reading inputs
def _read_image(path, role):
    from ..image_io import read_image

    return read_image(path, role)


def _read_transform(path):
    import SimpleITK as sitk

    if not os.path.isfile(path):
        raise CrossModalRegError(f"transform file not found: {path}")
    try:
        return sitk.ReadTransform(path)
    except RuntimeError as exc:
        raise CrossModalRegError(f"transform file {path} could not be read as an ITK transform") from exc


def _check_transform_dimension(transform, fixed, path):
    if transform.GetDimension() != fixed.GetDimension():
        raise CrossModalRegError(f"transform file {path} is {transform.GetDimension()}D but the images are "
                                 f"{fixed.GetDimension()}D: give a {fixed.GetDimension()}D transform")


def read_landmarks(path, role, image):
    """The landmarks of ``path`` (any format: :func:`~..landmarks.fileio.read_landmark_file`) as LPS mm points of
    ``image``'s physical space, with 3 coordinates (a 2D image's points get z = 0: validation embeds a 2D case as a
    one-slice volume, as batch does). Pixel files and 3D points off a 2D image's plane go through
    :func:`~..pipeline.landmarks_in_image_space` (the same rules as ``register``)."""
    from ..geometry import embed_3d_points
    from ..landmarks.fileio import LandmarkSet, read_landmark_file
    from ..pipeline import landmarks_in_image_space

    if not os.path.isfile(path):
        raise CrossModalRegError(f"{role} landmarks file not found: {path}")
    landmarks = read_landmark_file(path)
    placed = landmarks_in_image_space(image, landmarks, role)
    return LandmarkSet(placed.labels, embed_3d_points(placed.points), "LPS", placed.source)


# -------------------------------------------------------------------------------------------------- run
def registration_report_for(transform_path: str) -> str | None:
    """The report.html that ``crossmodalreg register`` wrote beside this transform, when there is one."""
    path = os.path.join(os.path.dirname(os.path.abspath(transform_path)), "report.html")
    return path if os.path.isfile(path) else None


def run(args) -> int:
    from ..output_dir import OutputFolder

    inputs = [args.fixed, args.moving, args.transform, args.fixed_landmarks, args.moving_landmarks,
              args.fixed_labels, args.moving_labels, args.jacobian_mask, args.profile]
    with OutputFolder(args.output_dir, overwrite=args.overwrite, inputs=inputs) as out:
        report, profile = _validate_into(args, out.staging)
    verdict = report.verdict
    print(f"validation written to {out.final}" + (f" (profile {profile.name}: {verdict})" if profile else ""))
    registration_report = report.provenance.get("registration_report")
    if registration_report:
        print(f"registration report (pictures, checks): {registration_report}")
    return 1 if args.fail_on_reject and verdict == "fail" else 0


def _validate_into(args, tmp):
    """Read the inputs, validate, write the tables into ``tmp``; return (report, profile)."""
    from ..provenance import sha256_of_file, write_json_atomic
    from ..tables import write_tsv
    from ..validation.profiles import load_profile
    from ..validation.report import LANDMARK_COLUMNS, SEGMENT_COLUMNS, SUMMARY_COLUMNS, validate

    if bool(args.fixed_landmarks) != bool(args.moving_landmarks):
        raise CrossModalRegError("give both --fixed-landmarks and --moving-landmarks, or neither")
    if bool(args.fixed_labels) != bool(args.moving_labels):
        raise CrossModalRegError("give both --fixed-labels and --moving-labels, or neither")
    if args.fle is not None and args.fle < 0:
        raise CrossModalRegError("--fle must be a non-negative distance in mm")
    profile = load_profile(args.profile) if args.profile else None
    fixed = _read_image(args.fixed, "fixed image")
    moving = _read_image(args.moving, "moving image")
    transform = _read_transform(args.transform)
    _check_transform_dimension(transform, fixed, args.transform)
    files = {"fixed": args.fixed, "moving": args.moving, "transform": args.transform,
             "fixed_landmarks": args.fixed_landmarks, "moving_landmarks": args.moving_landmarks,
             "fixed_labels": args.fixed_labels, "moving_labels": args.moving_labels,
             "jacobian_mask": args.jacobian_mask}
    checksums = {f"{k}_file": sha256_of_file(v) for k, v in files.items() if v}
    fl = ml = None
    if args.fixed_landmarks:
        fl = read_landmarks(args.fixed_landmarks, "fixed", fixed)
        ml = read_landmarks(args.moving_landmarks, "moving", moving)
    fixed_labels = _read_image(args.fixed_labels, "fixed label map") if args.fixed_labels else None
    moving_labels = _read_image(args.moving_labels, "moving label map") if args.moving_labels else None
    mask = _read_image(args.jacobian_mask, "Jacobian mask") if args.jacobian_mask else None
    if fl is not None and fixed.GetDimension() == 2:
        # 2D landmarks are measured in 3D (z = 0): the case becomes a one-slice volume, as in batch
        from ..geometry import embed_3d, embed_3d_image

        transform = embed_3d(transform)
        fixed, moving, fixed_labels, moving_labels, mask = (embed_3d_image(v) for v in (
            fixed, moving, fixed_labels, moving_labels, mask))
    driving = None
    if args.driving_landmarks is not None:
        driving = [s.strip() for s in args.driving_landmarks.split(",") if s.strip()]
    report = validate(transform, direction=args.direction, fixed=fixed, moving=moving, fixed_landmarks=fl,
                      moving_landmarks=ml, driving_labels=driving, fle_mm=args.fle,
                      unpaired_landmarks="skip" if args.skip_unpaired_landmarks else "error",
                      fixed_labels=fixed_labels, moving_labels=moving_labels, jacobian=args.jacobian,
                      jacobian_mask=mask, profile=profile, input_checksums=checksums)
    report.provenance["input_files"] = {k: os.path.abspath(v) for k, v in files.items() if v}
    registration_report = registration_report_for(args.transform)
    if registration_report:
        report.provenance["registration_report"] = registration_report
    write_tsv(os.path.join(tmp, "summary.tsv"), SUMMARY_COLUMNS, report.summary_rows())
    if report.landmarks is not None:
        write_tsv(os.path.join(tmp, "landmarks.tsv"), LANDMARK_COLUMNS, report.landmark_rows())
    if report.labels is not None:
        write_tsv(os.path.join(tmp, "segments.tsv"), SEGMENT_COLUMNS, report.segment_rows())
    if args.write_jacobian and report.jacobian_image is not None:
        from ..image_io import write_image

        write_image(report.jacobian_image, os.path.join(tmp, "jacobian.nii.gz"))
    write_json_atomic(os.path.join(tmp, "summary.json"), report.summary_json())
    return report, profile
