"""``crossmodalreg batch``: register a whole cohort on Dask, with resume, retries and automatic quality control."""

from __future__ import annotations

from ..errors import CrossModalRegError


def add_parser(sub):
    from ..presets import available_presets

    p = sub.add_parser(
        "batch",
        help="register a cohort (CSV, one row per case) on Dask, with resume and a QC table and report",
        description="Register every case of COHORT (a CSV: case_id,fixed,moving and optional fixed_mask, "
        "moving_mask, fixed_landmarks, moving_landmarks, fixed_labels, moving_labels, preset, seed, landmarks_for; "
        "relative paths are relative to the CSV) on a Dask LocalCluster sized to the machine or on an existing "
        "cluster (--scheduler). Each case's outputs (those of 'crossmodalreg register', plus validation and "
        "qc.json) go atomically to OUTPUT/cases/<case_id>/. A rerun skips finished cases. Writes "
        "OUTPUT/cohort_qc.tsv (one row per case, needs_review and the reason), OUTPUT/cohort_report.html and "
        "OUTPUT/cohort_summary.json. Exit status: 0 when every case succeeded, 3 when some failed (recorded, "
        "the others finished), 2 for a bad cohort table or option.",
    )
    p.add_argument("cohort", help="cohort table (CSV)")
    p.add_argument("--output-dir", required=True, help="output folder (created; reused to resume)")
    p.add_argument("--workers", type=int, default=None,
                   help="local Dask workers (default: one per core, at most one per 2 GB of memory)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="address of a running Dask scheduler (e.g. tcp://host:8786, from dask-jobqueue on "
                        "SLURM/PBS); its workers must see the same paths")
    p.add_argument("--retry-failed", action="store_true", help="run again the cases recorded as failed")
    p.add_argument("--profile", default=None,
                   help="acceptance profile for TRE/Dice/Jacobian: bundled name (neuro, abdomen, plausibility) "
                        "or a JSON file")
    p.add_argument("--no-pictures", action="store_true", help="no overlay PNGs (faster; no thumbnails in the report)")
    p.add_argument("--preset", default="multimodal-rigid",
                   help=f"preset for cases without a 'preset' cell ({', '.join(available_presets())}) or a JSON file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset value for every case, e.g. --set stages.0.optimizer.iterations=50")
    p.add_argument("--retries", type=int, default=2, help="Dask retries of a case after an unexpected error (default 2)")
    p.add_argument("--itk-threads", type=int, default=1,
                   help="ITK threads per case (default 1: results do not depend on the number of workers)")
    p.add_argument("--verify", choices=("checksum", "size", "exists"), default="checksum",
                   help="how finished case folders are checked before being skipped (default checksum)")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..batch import run_cohort
    from .register_cmd import parse_overrides

    if args.workers is not None and args.workers < 1:
        raise CrossModalRegError("--workers must be at least 1")
    if args.itk_threads < 1:
        raise CrossModalRegError("--itk-threads must be at least 1")
    result = run_cohort(
        args.cohort, args.output_dir, workers=args.workers, scheduler=args.scheduler,
        retry_failed=args.retry_failed, profile=args.profile, pictures=not args.no_pictures,
        default_preset=args.preset, overrides=parse_overrides(args.set), itk_threads=args.itk_threads,
        retries=args.retries, verify=args.verify, show_progress=not args.no_progress,
    )
    n = len(result.records)
    print(f"{n - len(result.failed)}/{n} case(s) succeeded, {len(result.failed)} failed, "
          f"{len(result.needs_review)} need review; QC table {result.qc_table}; report {result.report}")
    return 3 if result.failed else 0
