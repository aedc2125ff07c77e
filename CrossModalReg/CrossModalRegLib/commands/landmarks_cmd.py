"""``crossmodalreg landmarks``: inter-annotator statistics of a session folder, and point-based registration.

    crossmodalreg landmarks import SESSION_FOLDER --image NAME=FILE ... --annotator NAME=FILES ... [--scale S]
    crossmodalreg landmarks stats SESSION_FOLDER --output-dir D [--consensus median] [--outlier-distance MM]
    crossmodalreg landmarks register --fixed-landmarks F --moving-landmarks M --model affine --output-dir D

``stats`` writes ``landmarks.tsv``, ``annotators.tsv``, ``summary.tsv`` (and ``repeatability.tsv`` when an
annotator repeated the annotation), each with a Slicer ``.schema.tsv`` (units and descriptions), plus
``landmark_statistics.json`` (summary numbers and provenance) and ``consensus_<image>.csv`` per image (the landmark
CSV: LPS mm in 3D, pixels in 2D; ``register --fixed-landmarks`` and ``validate`` read it). ``register`` writes ``registration.tsv``
(per-landmark FRE and leave-one-out TRE), ``registration.json`` and, for linear models,
``transform_fixed_to_moving.tfm`` (maps fixed points to moving points, LPS mm or pixels, ITK convention).
Bad input is reported before anything is written.
"""

from __future__ import annotations

import os

from ..errors import CrossModalRegError
from . import add_skip_unpaired_option


def add_parser(subparsers):
    p = subparsers.add_parser("landmarks", help="landmark statistics (inter-annotator) and point-based registration")
    sub = p.add_subparsers(dest="landmarks_command", metavar="ACTION")
    sub.required = True

    i = sub.add_parser("import", help="create a session from per-annotator landmark files over N named images",
                       description="Create a landmark session from the files annotators have (ANHIR ,X,Y CSV, "
                       "frame-stated CSV, .fcsv, .mrk.json) over any number of named images. Every point is "
                       "checked against its image's bounds before anything is written.")
    i.add_argument("session", help="new (or empty) folder for the session")
    i.add_argument("--image", action="append", default=[], metavar="NAME=FILE", required=True,
                   help="an image and its name (repeat for each image), e.g. --image He=He.jpg")
    i.add_argument("--annotator", action="append", default=[], metavar="NAME=FILES", required=True,
                   help="an annotator and their landmark files or folders, comma-separated; a file is matched to "
                   "its image by name, or give IMAGE:FILE (repeat for each annotator)")
    i.add_argument("--scale", type=float, default=None,
                   help="factor from pixel files' coordinates to the images' pixels (required for pixel files: "
                   "1 when placed on these images, 0.1 for ANHIR 50%% landmarks on 5%% images)")
    i.add_argument("--protocol", default=None, help="protocol JSON the labels must follow (default: the labels found)")
    i.add_argument("--overwrite", action="store_true", help="replace an existing session folder (at the end)")
    i.set_defaults(func=run_import)

    s = sub.add_parser("stats", help="inter-annotator statistics of an annotation session folder")
    s.add_argument("session", help="session folder (holds session.json and annotations/)")
    s.add_argument("--output-dir", required=True,
                   help="folder for the TSV tables and the JSON summary (must be empty or absent)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder (at the end)")
    s.add_argument("--consensus", choices=("mean", "median"), default="mean", help="consensus estimator")
    s.add_argument("--outlier-distance", type=float, default=None,
                   help="absolute outlier threshold in the reported units (mm, or pixels for a 2D session); "
                   "alone, it is the threshold")
    s.add_argument("--outlier-factor", type=float, default=None,
                   help="relative outlier threshold: median + FACTOR x 1.4826 x MAD of the leave-one-out distances "
                   "(default 3 when no --outlier-distance is given; with both, the smaller threshold applies)")
    s.add_argument("--units", choices=("pixel", "mm"), default=None,
                   help="2D sessions: report pixels (default) or millimetres through each image's recorded spacing")
    s.add_argument("--bias-alpha", type=float, default=0.001, help="significance level of the bias test")
    s.set_defaults(func=run_stats)

    r = sub.add_parser("register", help="point-based registration from paired landmark files")
    r.add_argument("--fixed-landmarks", required=True, help=".mrk.json, .fcsv, landmark .csv or ANHIR .csv")
    r.add_argument("--moving-landmarks", required=True, help="same formats; paired with the fixed ones by label")
    r.add_argument("--model", choices=("rigid", "similarity", "affine", "tps"), default="affine")
    add_skip_unpaired_option(r, "--drop-unpaired")  # --drop-unpaired: the older name, kept as an alias
    r.add_argument("--output-dir", required=True, help="folder to write (must be empty or absent)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing output folder (at the end)")
    r.set_defaults(func=run_register)
    return p


def _provenance(inputs: dict, parameters: dict) -> dict:
    from ..provenance import now_iso, sha256_of_file, software_versions

    return {"created": now_iso(), "software": software_versions(), "parameters": parameters,
            "inputs": {k: {"path": os.path.abspath(v), "sha256": sha256_of_file(v)} for k, v in inputs.items()}}


def _pairs(values, option):
    out = {}
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or not name.strip() or not rest.strip():
            raise CrossModalRegError(f"{option} {v!r}: expected NAME=VALUE")
        if name.strip() in out:
            raise CrossModalRegError(f"{option} {name.strip()!r} is given twice")
        out[name.strip()] = rest.strip()
    return out


def run_import(args) -> int:
    from ..landmarks import AnnotationSession, load_protocol
    from ..landmarks.importer import import_session
    from ..output_dir import OutputFolder

    images = _pairs(args.image, "--image")
    annotators = {k: [x for x in v.split(",") if x] for k, v in _pairs(args.annotator, "--annotator").items()}
    inputs = [*images.values(), args.protocol] + [e.partition(":")[2] or e for v in annotators.values() for e in v]
    with OutputFolder(args.session, overwrite=args.overwrite, inputs=inputs, option="session folder") as out:
        protocol = load_protocol(args.protocol) if args.protocol else None
        result = import_session(out.staging, images, annotators, scale=args.scale, protocol=protocol)
    session = AnnotationSession.open(out.final)
    print(f"created session {session.folder}: {len(session.images)} images, {len(session.protocol.labels)} "
          f"landmarks, {session.protocol.dimension}D, positions in {session.units}"
          + (f" (pixel files x {args.scale:g})" if args.scale is not None else ""))
    for image in session.images:
        g = session.image_geometry[image]
        names = session.annotators(image=image)
        print(f"  {image}: {' x '.join(map(str, g['size']))} px, spacing {g['spacing'][0]:.4g} mm, annotators "
              f"{', '.join(names) or 'none'} ({sum(len(session.points(annotator=a, image=image)) for a in names)} "
              "points)")
    for item in result.skipped:
        print(f"  skipped {item['file']} of {item['annotator']}: fits none of the images")
    return 0


def run_stats(args) -> int:
    from ..landmarks import AnnotationSession, session_statistics
    from ..output_dir import OutputFolder

    OutputFolder(args.output_dir, overwrite=args.overwrite, inputs=[args.session]).check()  # before reading

    session = AnnotationSession.open(args.session)
    factor = args.outlier_factor if args.outlier_factor is not None else (
        3.0 if args.outlier_distance is None else None)
    units = args.units
    if units == "pixel" and session.units != "pixel":
        raise CrossModalRegError(f"--units pixel is for 2D sessions; this session is in {session.units}")
    stats = session_statistics(session, consensus=args.consensus, outlier_distance=args.outlier_distance,
                               outlier_factor=factor, bias_alpha=args.bias_alpha, units=units)
    tables = stats.tables()
    with OutputFolder(args.output_dir, overwrite=args.overwrite, inputs=[args.session]) as out:
        consensus_notes = _write_stats(out.staging, args, session, stats, tables, factor)
    _print_stats(stats)
    for line in consensus_notes:
        print(line)
    return 0


def _write_stats(folder, args, session, stats, tables, factor):
    from ..provenance import write_json_atomic
    from ..tables import write_tsv

    for name, (cols, rows) in tables.items():
        write_tsv(os.path.join(folder, f"{name}.tsv"), cols, rows)
    files = {os.path.relpath(p, args.session): p for p in
             [os.path.join(session.folder, "session.json")]
             + sorted(os.path.join(session.folder, "annotations", f)
                      for f in os.listdir(os.path.join(session.folder, "annotations")) if f.endswith(".json"))}
    summary = stats.summary()
    summary["tables"] = sorted(f"{n}.tsv" for n in tables)
    summary["provenance"] = _provenance(files, {
        "consensus": args.consensus, "outlier_distance": args.outlier_distance,
        "outlier_factor": factor, "bias_alpha": args.bias_alpha, "units": stats.distance_units})
    write_json_atomic(os.path.join(folder, "landmark_statistics.json"), summary)
    return _write_consensus_csvs(folder, stats)


def _write_consensus_csvs(folder, stats) -> list[str]:
    """``consensus_<image>.csv`` for every analysed image; returns the lines that say what each file leaves out
    (landmarks without a consensus there: a flagged outlier pair, too few annotators) or why none was written."""
    from ..landmarks import write_landmark_set_csv

    notes = []
    for image, st in stats.per_image.items():
        consensus = stats.consensus_landmarks(image)
        if consensus is None:
            notes.append(f"{image}: no consensus_{image}.csv: consensus files are written in the session's own units "
                         f"({stats.session.units}), not in --units {stats.distance_units}")
            continue
        if len(consensus):
            write_landmark_set_csv(os.path.join(folder, f"consensus_{image}.csv"), consensus)
        left_out = [lab for lab in st.labels if lab not in set(consensus.labels)]
        if left_out:
            notes.append(f"{image}: consensus_{image}.csv leaves out {', '.join(left_out)} (no consensus there); "
                         "pair such files with --skip-unpaired-landmarks")
    return notes


def _print_stats(stats):
    for image, reason in stats.skipped.items():
        print(f"{image}: skipped ({reason})")
    for image, st in stats.per_image.items():
        n_pts, n_lm = len(st.outlier_points), len(st.outlier_landmarks)
        if n_pts == 0:
            fle = f"FLE {st.fle_overall:.3f} {st.units} (no outliers flagged)"
        elif st.outliers_excluded:
            fle = (f"FLE {st.fle_overall:.3f} {st.units} without the {n_pts} outlier points on {n_lm} landmarks "
                   f"({st.fle_overall_with_outliers:.3f} with them)")
        else:
            fle = f"FLE {st.fle_overall:.3f} {st.units} (outliers included)"
        print(f"{image}: {fle}, biased: {st.biased_annotators or 'none'}, outlier landmarks: "
              f"{', '.join(st.outlier_landmarks) or 'none'}")
        print(f"  rule: {st.outlier_rule}")


def run_register(args) -> int:
    from ..landmarks import pair_landmarks, read_landmark_file, register_points
    from ..output_dir import OutputFolder

    inputs = [args.fixed_landmarks, args.moving_landmarks]
    OutputFolder(args.output_dir, overwrite=args.overwrite, inputs=inputs).check()  # before reading anything
    pairs = pair_landmarks(read_landmark_file(args.fixed_landmarks), read_landmark_file(args.moving_landmarks),
                           unpaired="skip" if args.skip_unpaired_landmarks else "error")
    labels, dropped = pairs.labels, pairs.unpaired
    result = register_points(pairs.fixed, pairs.moving, model=args.model, labels=labels, units=pairs.units)
    with OutputFolder(args.output_dir, overwrite=args.overwrite, inputs=inputs) as out:
        _write_registration(out.staging, args, pairs.frame, labels, dropped, result)
    if dropped:
        print(f"skipped, on one side only: {', '.join(dropped)}")
    print(f"{result.model}: {len(labels)} landmarks, FRE RMS {result.fre_rms:.3f} {result.units}, "
          f"leave-one-out TRE RMS {result.loo_tre_rms:.3f} {result.units}")
    return 0


def _write_registration(folder, args, frame, labels, dropped, result):
    import SimpleITK as sitk

    from ..landmarks.report import registration_columns, registration_rows
    from ..provenance import write_json_atomic
    from ..tables import write_tsv

    write_tsv(os.path.join(folder, "registration.tsv"), registration_columns(result.units),
              registration_rows(result))
    if result.transform_fixed_to_moving is not None:
        sitk.WriteTransform(result.transform_fixed_to_moving, os.path.join(folder, "transform_fixed_to_moving.tfm"))
    write_json_atomic(os.path.join(folder, "registration.json"), {
        "model": result.model, "units": result.units, "frame": frame, "n_landmarks": len(labels),
        "dropped_unpaired": dropped, "fre_rms": result.fre_rms, "loo_tre_rms": result.loo_tre_rms,
        "matrix_fixed_to_moving": None if result.matrix_fixed_to_moving is None
        else result.matrix_fixed_to_moving.tolist(),
        "direction": "maps fixed-space points to moving-space points", "notes": result.notes,
        "provenance": _provenance({"fixed_landmarks": args.fixed_landmarks, "moving_landmarks": args.moving_landmarks},
                                  {"model": args.model, "skip_unpaired_landmarks": args.skip_unpaired_landmarks}),
    })
