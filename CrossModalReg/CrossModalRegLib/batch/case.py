"""One cohort case on a worker: register (``pipeline.run_registration_job``), validate, write ``qc.json`` and ``DONE``.

The case folder ``<output>/cases/<case_id>/`` appears in one rename, complete:

* the registration outputs of ``crossmodalreg register`` (``transform.h5``, ``moving_resampled.nii.gz``, overlay
  PNGs, ``registration.json``, ``scene/``), written by :func:`~CrossModalRegLib.pipeline.run_registration_job`;
* ``validation/summary.tsv`` + ``summary.json`` (:func:`~CrossModalRegLib.validation.validate`) when landmarks or
  label maps were given or the result is deformable;
* ``qc.json``: the case's quality-control record (status, failure reason, metrics, sanity checks, TRE/Dice,
  Jacobian, run time, attempts);
* ``DONE``: written last, lists every file of the folder with its size and SHA-256. A folder is *complete* only
  when DONE is there and every file matches it; anything else is redone on the next run.

Everything is first written into a hidden staging folder beside it (``cases/.staging-<case_id>-<random>``) and
renamed into place at the end, so a worker killed mid-case leaves no half-written case folder (only a staging
folder, removed by the next run). A failed case (unreadable file, no overlap, sanity checks failed) is a
complete folder too, whose ``qc.json`` says ``"status": "failed"`` with the reason; a sanity failure keeps the
registration outputs so the overlay can be inspected.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field

from ..errors import CrossModalRegError, NoOverlapError, RegistrationFailed
from ..provenance import sha256_of_file

QC_FILE = "qc.json"
DONE_FILE = "DONE"
QC_SCHEMA = "crossmodalreg-batch-case"
QC_SCHEMA_VERSION = 1
STAGING_PREFIX = ".staging-"

STATUS_OK, STATUS_FAILED = "ok", "failed"
# failure kinds: what went wrong, for the QC table
FAIL_INPUT, FAIL_NO_OVERLAP, FAIL_SANITY, FAIL_ERROR, FAIL_WORKER = "input", "no_overlap", "sanity", "error", "worker_died"



@dataclass(frozen=True)
class CaseOptions:
    """Run-wide settings of every case (a per-case ``preset`` column wins over ``default_preset``)."""

    default_preset: str = "multimodal-rigid"
    overrides: dict = field(default_factory=dict)
    profile: str | None = None
    pictures: bool = True
    itk_threads: int = 1


def case_folder(output_dir: str, case_id: str) -> str:
    return os.path.join(os.path.abspath(output_dir), "cases", case_id)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).astimezone().isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------- DONE marker
def _list_files(folder: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            rel = os.path.relpath(os.path.join(root, f), folder)
            if rel != DONE_FILE:
                out.append(rel.replace(os.sep, "/"))
    return out


def write_done(folder: str, case_id: str) -> dict:
    """Write the DONE marker (last): every file of the folder with its size and SHA-256."""
    from ..provenance import write_json_atomic

    files = {}
    for rel in _list_files(folder):
        p = os.path.join(folder, rel)
        files[rel] = {"size": os.path.getsize(p), "sha256": sha256_of_file(p)}
    done = {"schema": "crossmodalreg-batch-done", "case_id": case_id, "finished": _now(), "files": files}
    write_json_atomic(os.path.join(folder, DONE_FILE), done)
    return done


def check_complete(folder: str, *, verify: str = "checksum") -> tuple[bool, str]:
    """(complete, why not). ``verify``: "checksum" (sizes and SHA-256 of every file), "size" or "exists"."""
    done_path = os.path.join(folder, DONE_FILE)
    if not os.path.isfile(done_path):
        return False, "no DONE marker"
    try:
        with open(done_path) as f:
            done = json.load(f)
        files = done["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False, "DONE marker unreadable"
    if QC_FILE not in files:
        return False, "DONE marker does not list qc.json"
    for rel, meta in files.items():
        p = os.path.join(folder, rel)
        if not os.path.isfile(p):
            return False, f"{rel} missing"
        if verify in ("size", "checksum") and os.path.getsize(p) != meta.get("size"):
            return False, f"{rel} changed size"
        if verify == "checksum" and sha256_of_file(p) != meta.get("sha256"):
            return False, f"{rel} changed (checksum)"
    return True, ""


def read_record(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, QC_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------ helpers
def _attempt(output_dir: str, case_id: str) -> int:
    """Count this attempt (a line per attempt in ``.batch/attempts/<case_id>.log``); return its number."""
    folder = os.path.join(output_dir, ".batch", "attempts")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, case_id + ".log")
    with open(path, "a") as f:
        f.write(f"{_now()}\t{socket.gethostname()}\t{os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def attempts_so_far(output_dir: str, case_id: str) -> int:
    try:
        with open(os.path.join(output_dir, ".batch", "attempts", case_id + ".log")) as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def reset_attempts(output_dir: str, case_id: str) -> None:
    try:
        os.remove(os.path.join(output_dir, ".batch", "attempts", case_id + ".log"))
    except FileNotFoundError:
        pass


def _finite(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if v == v and abs(v) != float("inf") else None


def base_record(case, options: CaseOptions) -> dict:
    return {
        "schema": QC_SCHEMA, "schema_version": QC_SCHEMA_VERSION,
        "case_id": case.case_id, "status": STATUS_FAILED, "failure_kind": None, "failure_reason": None,
        "failure_stage": None,
        "row": case.row, "inputs": case.files(),
        "preset": case.preset or options.default_preset, "overrides": dict(options.overrides or {}),
        "seed": None, "landmarks_for": case.landmarks_for, "dimension": None,
        "initial_metric": None, "final_metric": None, "metric_improvement": None,
        "sanity_passed": None, "sanity_failures": [], "sanity": None,
        "transform_kind": None,
        "jacobian_min": None, "jacobian_max": None, "jacobian_fraction_folding": None,
        "tre_before_mean_mm": None, "tre_mean_mm": None, "tre_max_mm": None, "fre_mean_mm": None,
        "dice_before_mean": None, "dice_mean": None, "dice_min": None,
        "profile": options.profile, "profile_verdict": None, "profile_failures": [], "profile_not_evaluated": [],
        "validation_note": None,
        "run_time_s": None, "registration_time_s": None, "attempts": None, "itk_threads": options.itk_threads,
        "worker": f"{socket.gethostname()}:{os.getpid()}", "finished": None,
    }


def commit_case(staging: str, final: str, record: dict) -> None:
    """Write qc.json and DONE into ``staging`` and rename it to ``final`` (replacing an incomplete folder)."""
    from ..output_dir import replace_folder
    from ..provenance import write_json_atomic

    os.makedirs(staging, exist_ok=True)
    record["finished"] = _now()
    write_json_atomic(os.path.join(staging, QC_FILE), record)
    write_done(staging, record["case_id"])
    replace_folder(staging, final)


def write_failed_case(case, output_dir: str, options: CaseOptions, kind: str, reason: str, *,
                      stage: str | None = None, attempts: int | None = None) -> dict:
    """Record a case that failed without a worker result (missing file, worker died too often, ...)."""
    record = base_record(case, options)
    record.update(failure_kind=kind, failure_reason=reason, failure_stage=stage,
                  attempts=attempts if attempts is not None else attempts_so_far(output_dir, case.case_id),
                  worker=None)
    final = case_folder(output_dir, case.case_id)
    staging = os.path.join(os.path.dirname(final), f"{STAGING_PREFIX}{case.case_id}-{uuid.uuid4().hex[:8]}")
    try:
        commit_case(staging, final, record)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


# ------------------------------------------------------------------------------------------- validation
def _validate(case, fixed, moving, result, landmarks, options: CaseOptions, staging: str, record: dict) -> None:
    """TRE / Dice / Jacobian (and NMI) with ``validation.validate``; 2D cases are embedded as one-slice 3D."""
    from ..geometry import embed_3d, embed_3d_image, embed_3d_points
    from ..pipeline import read_image
    from ..provenance import write_json_atomic
    from ..tables import write_tsv
    from ..validation import SUMMARY_COLUMNS, LandmarkSet, load_profile, validate

    tx = result.transform_fixed_to_moving_lps
    nonlinear = not tx.IsLinear()
    if landmarks is None and not case.fixed_labels and not nonlinear:
        return
    kw = {}
    if landmarks is not None:
        fl, ml, labels = landmarks

        kw["fixed_landmarks"] = LandmarkSet(tuple(labels), embed_3d_points(fl))
        kw["moving_landmarks"] = LandmarkSet(tuple(labels), embed_3d_points(ml))
        if case.landmarks_for == "initialization":
            kw["driving_labels"] = list(labels)
    if case.fixed_labels:
        kw["fixed_labels"] = embed_3d_image(read_image(case.fixed_labels, "fixed labels"))
        kw["moving_labels"] = embed_3d_image(read_image(case.moving_labels, "moving labels"))
    profile = load_profile(options.profile) if options.profile else None
    # A 2D case is a one-slice volume here; its Jacobian map is the 2D one (validation.jacobian handles one slice).
    report = validate(embed_3d(tx), fixed=embed_3d_image(fixed), moving=embed_3d_image(moving), profile=profile,
                      jacobian="auto" if nonlinear else "never",
                      input_checksums={k: sha256_of_file(v) for k, v in case.files().items()}, **kw)
    vdir = os.path.join(staging, "validation")
    os.makedirs(vdir, exist_ok=True)
    write_tsv(os.path.join(vdir, "summary.tsv"), SUMMARY_COLUMNS, report.summary_rows())
    write_json_atomic(os.path.join(vdir, "summary.json"), report.summary_json())
    v = report.values
    for key in ("jacobian_min", "jacobian_max", "jacobian_fraction_folding", "tre_before_mean_mm", "tre_mean_mm",
                "tre_max_mm", "fre_mean_mm", "dice_before_mean", "dice_mean", "dice_min"):
        if key in v and (v[key] is not None or not key.startswith("jacobian")):
            record[key] = _finite(v[key])
    if profile is not None:
        record["profile"] = f"{profile.name} {profile.version}"
        record["profile_verdict"] = report.verdict
        record["profile_failures"] = [
            f"{r.criterion.measure} {r.value:.4g} (needs {r.criterion.text()})" for r in report.acceptance
            if r.result == "fail"
        ]
        record["profile_not_evaluated"] = [
            f"{r.criterion.measure} ({r.note})" for r in report.acceptance if r.result not in ("pass", "fail")]


def _landmark_pairs(case, fixed, moving):
    """The case's landmarks paired by label in the images' physical spaces. Two 2D pixel (ANHIR) files skip the
    labels on one side only (ANHIR's published files differ in length; the shared row numbers pair), recorded in
    the QC record as ``landmarks_unpaired``; any other one-sided label fails the case with its name."""
    from ..landmarks.fileio import read_landmark_file
    from ..landmarks.pairing import pair_landmarks
    from ..pipeline import landmarks_in_image_space

    f_set, m_set = read_landmark_file(case.fixed_landmarks), read_landmark_file(case.moving_landmarks)
    unpaired = "skip" if f_set.frame == m_set.frame == "pixel" else "error"
    return pair_landmarks(landmarks_in_image_space(fixed, f_set, "fixed"),
                          landmarks_in_image_space(moving, m_set, "moving"), unpaired=unpaired)


# ----------------------------------------------------------------------------------------------- the task
def run_case(case, output_dir: str, options: CaseOptions) -> dict:
    """Register, validate and record one case; return its QC record (also in ``cases/<case_id>/qc.json``).

    Bad input, no overlap and failed sanity checks are recorded as a failed case and returned normally (retrying
    would not help). Any other exception propagates, so that Dask retries the task (``retries=``); a worker that
    dies is rescheduled by the Dask scheduler. Either way the case folder is committed only when complete.
    """

    from .. import engine
    from ..pipeline import read_image, run_registration_job

    t0 = time.perf_counter()
    output_dir = os.path.abspath(output_dir)
    final = case_folder(output_dir, case.case_id)
    staging = os.path.join(os.path.dirname(final), f"{STAGING_PREFIX}{case.case_id}-{uuid.uuid4().hex[:8]}")
    os.makedirs(os.path.dirname(final), exist_ok=True)
    record = base_record(case, options)
    record["attempts"] = _attempt(output_dir, case.case_id)
    seed = engine.DEFAULT_SEED if case.seed is None else int(case.seed)
    record["seed"] = seed
    stage = "reading inputs"
    try:
        try:
            if case.problems:
                raise CrossModalRegError("; ".join(case.problems))
            fixed = read_image(case.fixed, "fixed")
            moving = read_image(case.moving, "moving")
            record["dimension"] = fixed.GetDimension()
            fixed_mask = read_image(case.fixed_mask, "fixed mask") if case.fixed_mask else None
            moving_mask = read_image(case.moving_mask, "moving mask") if case.moving_mask else None
            landmarks = None
            if case.fixed_landmarks:
                pairs = _landmark_pairs(case, fixed, moving)
                landmarks = (pairs.fixed, pairs.moving, pairs.labels)
                record["landmarks_unpaired"] = pairs.unpaired
            stage = "registration"
            fl, ml, labels = landmarks if landmarks is not None else (None, None, None)
            result, _ = run_registration_job(
                fixed, moving, staging, preset=case.preset or options.default_preset, fixed_mask=fixed_mask,
                moving_mask=moving_mask, fixed_landmarks=fl, moving_landmarks=ml, landmark_labels=labels, seed=seed,
                overrides=dict(options.overrides or {}), input_files=case.files(),
                extra_provenance={"batch": {"case_id": case.case_id, "cohort": case.source, "row": case.row,
                                            "attempt": record["attempts"], "itk_threads": options.itk_threads}},
                use_landmarks_for_initialization=case.landmarks_for == "initialization", strict=False,
                pictures=options.pictures, threads=int(options.itk_threads),
            )
        except CrossModalRegError as exc:
            msg = str(exc)
            kind = FAIL_NO_OVERLAP if isinstance(exc, NoOverlapError) else FAIL_INPUT
            record.update(failure_kind=kind, failure_reason=msg, failure_stage=stage)
            result = None
        except RegistrationFailed as exc:  # strict=False makes this rare; kept for safety
            record.update(failure_kind=FAIL_SANITY, failure_reason=str(exc), failure_stage=stage)
            result = None
        if result is not None:
            s = result.sanity
            record.update(
                initial_metric=_finite(result.initial_metric), final_metric=_finite(result.final_metric),
                sanity_passed=bool(s.passed) if s is not None else None,
                sanity_failures=s.failures() if s is not None else [], sanity=s.as_dict() if s is not None else None,
                registration_time_s=_finite(result.timings_s.get("total")),
                transform_kind=result.transform_fixed_to_moving_lps.GetName(),
            )
            if record["initial_metric"] is not None and record["final_metric"] is not None:
                record["metric_improvement"] = record["initial_metric"] - record["final_metric"]
            if s is not None:
                for c in s.checks:
                    if c.name == "no_folding":
                        record["jacobian_fraction_folding"] = _finite(c.value)
            if s is not None and not s.passed:
                record.update(failure_kind=FAIL_SANITY, failure_stage="sanity checks",
                              failure_reason="sanity checks failed: " + "; ".join(s.failures()))
            else:
                record.update(status=STATUS_OK)
            stage = "validation"
            try:
                _validate(case, fixed, moving, result, landmarks, options, staging, record)
            except CrossModalRegError as exc:
                record["validation_note"] = f"validation could not run: {exc}"
            except RuntimeError as exc:  # ITK errors on odd inputs: keep the registration, say why
                record["validation_note"] = f"validation could not run: {str(exc).strip().splitlines()[-1]}"
        record["run_time_s"] = time.perf_counter() - t0
        commit_case(staging, final, record)
        return record
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def record_summary(record: dict) -> str:
    """One line for the terminal."""
    if record.get("status") == STATUS_OK:
        return f"{record['case_id']}: ok ({record.get('run_time_s') or 0:.1f} s)"
    return f"{record['case_id']}: FAILED ({record.get('failure_kind')}): {record.get('failure_reason')}"


def options_dict(options: CaseOptions) -> dict:
    return asdict(options)
