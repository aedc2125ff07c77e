"""``crossmodalreg register``: register two image files and write a complete output folder."""

from __future__ import annotations

import json
import os

from ..errors import CrossModalRegError, RegistrationFailed
from . import add_skip_unpaired_option


def add_parser(sub):
    from ..presets import available_presets

    p = sub.add_parser(
        "register",
        help="register a moving image to a fixed image",
        description="Register MOVING to FIXED (2D or 3D, any modalities) and write transform.h5 (maps fixed-space "
        "points to moving-space points, LPS, ITK convention), the resampled moving image, overlay PNGs, "
        "registration.json (provenance, metric trace, timings) and a Slicer scene.",
    )
    p.add_argument("--fixed", required=True, help="fixed image file (any format SimpleITK reads)")
    p.add_argument("--moving", required=True, help="moving image file")
    p.add_argument("--preset", default="multimodal-rigid",
                   help=f"preset name ({', '.join(available_presets())}) or a preset JSON file")
    p.add_argument("--fixed-mask", help="label map: metric computed only where non-zero (fixed space)")
    p.add_argument("--moving-mask", help="label map in moving space")
    p.add_argument("--fixed-landmarks", help="landmarks on the fixed image (.mrk.json, .fcsv, landmark .csv, ANHIR .csv)")
    p.add_argument("--moving-landmarks", help="the same landmarks on the moving image (paired by label)")
    add_skip_unpaired_option(p)
    p.add_argument("--landmarks-for", choices=["initialization", "evaluation"], default="initialization",
                   help="use landmarks to initialise (default) or only to report distances before/after")
    p.add_argument("--initial-transform", help="ITK transform file (fixed -> moving, LPS) to start from")
    p.add_argument("--seed", type=int, default=None, help="random seed of the metric sampling (default: fixed)")
    p.add_argument("--no-rotation-search", action="store_true", help="skip the coarse search over rotations")
    p.add_argument("--no-orientation-search", action="store_true",
                   help="skip the search over the 24 axis-aligned orientations (90/180-degree turns) of 3D images: "
                   "for headers known to be right (same as --set initialization.orientation_search.enabled=false)")
    p.add_argument("--threads", type=int, default=1,
                   help="threads for metric evaluation: 1 (default) gives bit-identical repeat runs; 0 uses all cores "
                   "(about 1.5x faster, repeat runs may differ by ~0.01 mm)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help='override a preset value, e.g. --set stages.0.optimizer.iterations=50 (VALUE is JSON)')
    p.add_argument("--output-dir", required=True, help="folder to write (must be empty or absent)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.add_argument("--keep-failed", action="store_true",
                   help="write the outputs even when the post-run sanity checks fail (marked failed in registration.json)")
    p.set_defaults(func=run)
    return p


def parse_overrides(items):
    out = {}
    for item in items:
        if "=" not in item:
            raise CrossModalRegError(f"--set needs KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def repeat_command(args) -> str:
    """The shell command that repeats this run exactly (absolute paths, the seed and thread count explicit)."""
    import shlex

    from .. import engine

    words = ["crossmodalreg", "register"]
    for opt in ("fixed", "moving", "fixed_mask", "moving_mask", "fixed_landmarks", "moving_landmarks",
                "initial_transform"):
        if getattr(args, opt):
            words += [f"--{opt.replace('_', '-')}", os.path.abspath(getattr(args, opt))]
    preset = args.preset if not os.path.isfile(args.preset) else os.path.abspath(args.preset)
    words += ["--preset", preset, "--seed", str(engine.DEFAULT_SEED if args.seed is None else args.seed),
              "--threads", str(args.threads)]
    if args.fixed_landmarks:
        words += ["--landmarks-for", args.landmarks_for]
        words += ["--skip-unpaired-landmarks"] if args.skip_unpaired_landmarks else []
    words += [flag for flag, on in (("--no-rotation-search", args.no_rotation_search),
                                    ("--no-orientation-search", args.no_orientation_search)) if on]
    for item in args.set:
        words += ["--set", item]
    words += ["--output-dir", os.path.abspath(args.output_dir) + "-repeat"]
    return shlex.join(words)


SEED_MAX = 2 ** 32 - 1  # numpy's and ITK's seeds are unsigned 32-bit


def check_options(args) -> None:
    """Refuse option values the engine cannot take, before anything is read or written."""
    if args.threads is not None and args.threads < 0:
        raise CrossModalRegError(f"--threads must be 0 (all cores) or a positive number, got {args.threads}")
    if args.seed is not None and not 0 <= args.seed <= SEED_MAX:
        raise CrossModalRegError(f"--seed must be between 0 and {SEED_MAX}, got {args.seed}")


def read_initial_transform(path: str, dimension: int):
    """The ``--initial-transform`` file as a SimpleITK transform of the images' dimension."""
    import SimpleITK as sitk

    if not os.path.isfile(path):
        raise CrossModalRegError(f"initial transform '{path}' does not exist")
    try:
        transform = sitk.ReadTransform(path)
    except RuntimeError:
        raise CrossModalRegError(f"--initial-transform '{path}' could not be read as an ITK transform file "
                                 "(.h5, .tfm, .txt, .mat): give a transform written by ITK, SimpleITK or Slicer") from None
    if transform.GetDimension() != dimension:
        raise CrossModalRegError(f"--initial-transform '{path}' is {transform.GetDimension()}D but the images are "
                                 f"{dimension}D")
    return transform


def run(args) -> int:
    from .. import engine
    from ..output_dir import OutputFolder
    from ..pipeline import TerminalProgress, read_image, read_landmark_pairs, run_registration_job

    inputs = {"fixed": args.fixed, "moving": args.moving, "fixed_mask": args.fixed_mask,
              "moving_mask": args.moving_mask, "fixed_landmarks": args.fixed_landmarks,
              "moving_landmarks": args.moving_landmarks, "initial_transform": args.initial_transform}
    check_options(args)
    OutputFolder(args.output_dir, overwrite=args.overwrite, inputs=list(inputs.values())).check()  # before reading
    overrides = parse_overrides(args.set)
    fixed = read_image(args.fixed, "fixed")
    moving = read_image(args.moving, "moving")
    fixed_mask = read_image(args.fixed_mask, "fixed mask") if args.fixed_mask else None
    moving_mask = read_image(args.moving_mask, "moving mask") if args.moving_mask else None
    fl = ml = labels = None
    if bool(args.fixed_landmarks) != bool(args.moving_landmarks):
        raise CrossModalRegError("give both --fixed-landmarks and --moving-landmarks, or neither")
    if args.fixed_landmarks:
        pairs = read_landmark_pairs(fixed, moving, args.fixed_landmarks, args.moving_landmarks,
                                    unpaired="skip" if args.skip_unpaired_landmarks else "error")
        fl, ml, labels = pairs.fixed, pairs.moving, pairs.labels
        if pairs.unpaired:
            print(f"landmarks: {len(pairs)} pairs; skipped, on one side only: {', '.join(pairs.unpaired)}")
    initial = read_initial_transform(args.initial_transform, fixed.GetDimension()) if args.initial_transform else None
    try:
        result, out = _run_job(args, run_registration_job, fixed, moving, fixed_mask, moving_mask, fl, ml, labels,
                               initial, overrides, inputs, TerminalProgress, engine.DEFAULT_SEED)
    except RegistrationFailed as exc:
        if args.keep_failed and exc.result is None:
            raise RegistrationFailed(f"{exc}; --keep-failed kept nothing: the optimiser stopped without a result to "
                                     "write", exc.report) from None
        raise
    _print_summary(result, out, args.keep_failed)
    return 0 if result.sanity.passed else 3


def _run_job(args, run_registration_job, fixed, moving, fixed_mask, moving_mask, fl, ml, labels, initial, overrides,
             inputs, progress, default_seed):
    return run_registration_job(
        fixed, moving, args.output_dir, preset=args.preset, fixed_mask=fixed_mask, moving_mask=moving_mask,
        fixed_landmarks=fl, moving_landmarks=ml, landmark_labels=labels, initial_transform=initial,
        seed=default_seed if args.seed is None else args.seed, overrides=overrides,
        rotation_search=False if args.no_rotation_search else None,
        orientation_search=False if args.no_orientation_search else None,
        progress=progress(enabled=not args.no_progress), overwrite=args.overwrite,
        input_files=inputs,
        use_landmarks_for_initialization=args.landmarks_for == "initialization", strict=not args.keep_failed,
        threads=args.threads or None, extra_provenance={"command": repeat_command(args)},
    )


def _print_summary(result, out, keep_failed):
    orient = result.initialization.get("orientation_search")
    if orient:
        print(f"orientation search ({orient['orientations']} axis-aligned orientations): "
              f"{'TURNED ' if orient['turned'] else ''}{orient['chosen']}")
    for check in result.sanity.checks:
        if check.name in ("landmarks_not_worse", "landmarks_reported") and check.details:
            d = check.details
            use = "initialisation" if d["used_for_initialization"] else "evaluation"
            print(f"landmarks ({use}, {d['pairs']} pairs): mean distance {d['mean_before_mm']:.2f} mm before -> "
                  f"{d['mean_after_mm']:.2f} mm after (median {d['median_after_mm']:.2f}, max {d['max_after_mm']:.2f})"
                  + ("" if check.passed else "  WORSE"))
    status = "passed" if result.sanity.passed else "FAILED (" + "; ".join(result.sanity.failures()) + ")"
    print(f"registered in {result.timings_s['total']:.1f} s; sanity checks {status}")
    print(f"metric {result.initial_metric:.5g} -> {result.final_metric:.5g} (first stage's metric at full resolution, "
          f"lower is better); outputs in {out}")
    print(f"report: {os.path.join(out, 'report.html')}")
    if keep_failed and not result.sanity.passed:
        print(f"--keep-failed: the FAILED result was kept in {out} (registration.json: sanity.passed false)")
