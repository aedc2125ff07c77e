"""``crossmodalreg landmarks``: inter-annotator statistics of a session folder, and point-based registration.

    crossmodalreg landmarks stats SESSION_FOLDER --output-dir D [--consensus median] [--outlier-distance MM]
    crossmodalreg landmarks register --fixed-landmarks F --moving-landmarks M --model affine --output-dir D

``stats`` writes ``landmarks.tsv``, ``annotators.tsv``, ``summary.tsv`` (and ``repeatability.tsv`` when an
annotator repeated the annotation), each with a Slicer ``.schema.tsv`` (units and descriptions), plus
``landmark_statistics.json`` (summary numbers and provenance). ``register`` writes ``registration.tsv``
(per-landmark FRE and leave-one-out TRE), ``registration.json`` and, for linear models,
``transform_fixed_to_moving.tfm`` (maps fixed points to moving points, LPS mm or pixels, ITK convention).
Bad input is reported before anything is written.
"""

from __future__ import annotations

import os

from ..errors import CrossModalRegError


def add_parser(subparsers):
    p = subparsers.add_parser("landmarks", help="landmark statistics (inter-annotator) and point-based registration")
    sub = p.add_subparsers(dest="landmarks_command", metavar="ACTION")
    sub.required = True

    s = sub.add_parser("stats", help="inter-annotator statistics of an annotation session folder")
    s.add_argument("session", help="session folder (holds session.json and annotations/)")
    s.add_argument("--output-dir", required=True, help="folder for the TSV tables and the JSON summary")
    s.add_argument("--consensus", choices=("mean", "median"), default="mean", help="consensus estimator")
    s.add_argument("--outlier-distance", type=float, default=None,
                   help="absolute outlier threshold (mm, or pixels for a 2D protocol)")
    s.add_argument("--outlier-factor", type=float, default=3.0,
                   help="outlier threshold as a multiple of the median leave-one-out distance (default 3)")
    s.add_argument("--bias-alpha", type=float, default=0.001, help="significance level of the bias test")
    s.set_defaults(func=run_stats)

    r = sub.add_parser("register", help="point-based registration from paired landmark files")
    r.add_argument("--fixed-landmarks", required=True, help=".mrk.json, .fcsv, frame-stated .csv or ANHIR .csv")
    r.add_argument("--moving-landmarks", required=True, help="same formats; paired with the fixed ones by label")
    r.add_argument("--model", choices=("rigid", "similarity", "affine", "tps"), default="affine")
    r.add_argument("--drop-unpaired", action="store_true",
                   help="ignore landmarks present in one file only (default: report them as an error)")
    r.add_argument("--output-dir", required=True)
    r.set_defaults(func=run_register)
    return p


def _provenance(inputs: dict, parameters: dict) -> dict:
    from ..provenance import now_iso, sha256_of_file, software_versions

    return {"created": now_iso(), "software": software_versions(), "parameters": parameters,
            "inputs": {k: {"path": os.path.abspath(v), "sha256": sha256_of_file(v)} for k, v in inputs.items()}}


def run_stats(args) -> int:
    from ..landmarks import AnnotationSession, session_statistics
    from ..provenance import write_json_atomic
    from ..tables import write_tsv

    session = AnnotationSession.open(args.session)
    stats = session_statistics(session, consensus=args.consensus, outlier_distance=args.outlier_distance,
                               outlier_factor=args.outlier_factor, bias_alpha=args.bias_alpha)
    tables = stats.tables()
    os.makedirs(args.output_dir, exist_ok=True)
    for name, (cols, rows) in tables.items():
        write_tsv(os.path.join(args.output_dir, f"{name}.tsv"), cols, rows)
    files = {os.path.relpath(p, args.session): p for p in
             [os.path.join(session.folder, "session.json")]
             + sorted(os.path.join(session.folder, "annotations", f)
                      for f in os.listdir(os.path.join(session.folder, "annotations")) if f.endswith(".json"))}
    summary = stats.summary()
    summary["tables"] = sorted(f"{n}.tsv" for n in tables)
    summary["provenance"] = _provenance(files, {
        "consensus": args.consensus, "outlier_distance": args.outlier_distance,
        "outlier_factor": args.outlier_factor, "bias_alpha": args.bias_alpha})
    write_json_atomic(os.path.join(args.output_dir, "landmark_statistics.json"), summary)
    for image, st in stats.per_image.items():
        print(f"{image}: FLE {st.fle_overall:.3f} {st.units}, biased: {st.biased_annotators or 'none'}, "
              f"outliers: {len(st.outlier_points)}")
    return 0


def run_register(args) -> int:
    import SimpleITK as sitk

    from ..landmarks import pair_landmarks, read_landmark_file, register_points
    from ..landmarks.report import registration_columns, registration_rows
    from ..provenance import write_json_atomic
    from ..tables import write_tsv

    fixed = read_landmark_file(args.fixed_landmarks)
    moving = read_landmark_file(args.moving_landmarks)
    if fixed.frame != moving.frame:
        raise CrossModalRegError(
            f"{args.fixed_landmarks} is in {fixed.frame} but {args.moving_landmarks} in {moving.frame}; "
            "give both in the same frame")
    labels, fp, mp, dropped = pair_landmarks(fixed.labels, fixed.points, moving.labels, moving.points,
                                             drop_unpaired=args.drop_unpaired, fixed_source=args.fixed_landmarks,
                                             moving_source=args.moving_landmarks)
    result = register_points(fp, mp, model=args.model, labels=labels, units=fixed.units)
    os.makedirs(args.output_dir, exist_ok=True)
    write_tsv(os.path.join(args.output_dir, "registration.tsv"), registration_columns(result.units),
              registration_rows(result))
    if result.transform_fixed_to_moving is not None:
        sitk.WriteTransform(result.transform_fixed_to_moving,
                            os.path.join(args.output_dir, "transform_fixed_to_moving.tfm"))
    write_json_atomic(os.path.join(args.output_dir, "registration.json"), {
        "model": result.model, "units": result.units, "frame": fixed.frame, "n_landmarks": len(labels),
        "dropped_unpaired": dropped, "fre_rms": result.fre_rms, "loo_tre_rms": result.loo_tre_rms,
        "matrix_fixed_to_moving": None if result.matrix_fixed_to_moving is None
        else result.matrix_fixed_to_moving.tolist(),
        "direction": "maps fixed-space points to moving-space points", "notes": result.notes,
        "provenance": _provenance({"fixed_landmarks": args.fixed_landmarks, "moving_landmarks": args.moving_landmarks},
                                  {"model": args.model, "drop_unpaired": args.drop_unpaired}),
    })
    print(f"{result.model}: {len(labels)} landmarks, FRE RMS {result.fre_rms:.3f} {result.units}, "
          f"leave-one-out TRE RMS {result.loo_tre_rms:.3f} {result.units}")
    return 0
