"""Cohort quality control: which cases a person must look at, and why.

A case ``needs_review`` when any of these holds (``review_reason`` lists all that apply, ``; ``-separated):

* ``failed``: the case failed (unreadable or missing file, images do not overlap, sanity checks failed, error,
  worker died too often) -- the reason follows;
* ``metric worse``: the final metric is worse (higher; every metric here is "lower is better") than at the start;
* ``folding``: a deformable result folds (some Jacobian determinant <= 0);
* ``acceptance``: TRE, Dice, ... beyond the acceptance profile (``--profile``), criterion by criterion;
* ``outlier run time`` / ``outlier metric``: against the cohort, by a robust rule. Cases are compared only with
  cases of the same preset and dimension that succeeded (groups of at least :data:`MIN_GROUP` cases); a value is
  an outlier when it lies more than :data:`OUTLIER_K` robust standard deviations from the group median, the robust
  standard deviation being ``max(1.4826 * MAD, floor)``, with floor = 10 % of the median run time (run time: only
  slower cases are flagged) or 1 % of |median| (final metric: both sides).
"""

from __future__ import annotations

import math
from dataclasses import replace

from ..tables import Column, write_tsv
from .case import STATUS_OK

OUTLIER_K = 3.0
MIN_GROUP = 5
MAD_TO_SD = 1.4826
RUNTIME_FLOOR = 0.10
METRIC_FLOOR = 0.01

QC_COLUMNS = [
    Column("case_id", "Case", "", "case id from the cohort table (names the folder cases/<case_id>)", "string"),
    Column("status", "Status", "", "ok or failed", "string"),
    Column("failure_kind", "Failure kind", "",
           "input (missing or unreadable file, bad landmarks), no_overlap, sanity (post-run checks failed), error, "
           "worker_died", "string"),
    Column("failure_reason", "Failure reason", "", "what went wrong, naming the file or check", "string"),
    Column("verdict", "Verdict", "",
           "failed, review (flagged: see review_reason), incomplete (not flagged, but an acceptance criterion could "
           "not be evaluated: see verdict_reason), pass (every check ran and passed), checks passed (no profile)",
           "string"),
    Column("verdict_reason", "Verdict reason", "", "why the verdict is not pass", "string"),
    Column("needs_review", "Needs review", "", "true when a person should look at this case", "bool"),
    Column("review_reason", "Review reason", "", "every reason that applies, separated by '; '", "string"),
    Column("dimension", "Dimension", "", "2 or 3", "int"),
    Column("preset", "Preset", "", "registration preset (name or file)", "string"),
    Column("initial_metric", "Initial metric", "", "metric at the start (after initialisation); lower is better",
           "double"),
    Column("final_metric", "Final metric", "", "metric of the result (same metric, same samples); lower is better",
           "double"),
    Column("metric_improvement", "Metric improvement", "", "initial - final metric: positive is better", "double"),
    Column("sanity_passed", "Sanity checks passed", "",
           "engine's post-run checks: metric improved, plausible linear part, no folding, overlap", "bool"),
    Column("sanity_failures", "Sanity failures", "", "the checks that failed", "string"),
    Column("transform_kind", "Transform", "", "ITK class of the result", "string"),
    Column("jacobian_min", "Jacobian min", "", "smallest determinant of the Jacobian (deformable results)", "double"),
    Column("jacobian_max", "Jacobian max", "", "largest determinant of the Jacobian (deformable results)", "double"),
    Column("jacobian_fraction_folding", "Folding fraction", "fraction",
           "fraction of the fixed grid where det(J) <= 0 (deformable results)", "double"),
    Column("tre_before_mean_mm", "TRE before", "mm", "mean landmark distance before registration", "double"),
    Column("tre_mean_mm", "TRE", "mm", "mean target registration error of held-out landmarks after registration",
           "double"),
    Column("tre_max_mm", "TRE max", "mm", "largest target registration error", "double"),
    Column("fre_mean_mm", "FRE", "mm", "mean error of landmarks used to initialise (landmarks_for=initialization)",
           "double"),
    Column("dice_before_mean", "Dice before", "", "mean Dice over labels with the identity transform", "double"),
    Column("dice_mean", "Dice", "", "mean Dice over labels after registration", "double"),
    Column("dice_min", "Dice min", "", "smallest Dice over labels after registration", "double"),
    Column("profile_verdict", "Acceptance", "", "verdict of the acceptance profile: pass, fail, incomplete",
           "string"),
    Column("run_time_s", "Run time", "s", "wall time of the case on its worker (reading to committed folder)",
           "double"),
    Column("registration_time_s", "Registration time", "s", "engine time (preprocessing to sanity checks)",
           "double"),
    Column("attempts", "Attempts", "", "times the case was started in this run (> 1: retried after a crash)", "int"),
    Column("validation_note", "Validation note", "", "why a validation measure is missing", "string"),
    Column("case_dir", "Case folder", "", "folder of the case's outputs, relative to the output folder", "string"),
]


def _median(values):
    v = sorted(values)
    n = len(v)
    return 0.5 * (v[(n - 1) // 2] + v[n // 2])


def robust_limits(values, *, floor: float, k: float = OUTLIER_K):
    """(median, low, high): median +- k * max(1.4826 * MAD, floor)."""
    med = _median(values)
    mad = _median([abs(x - med) for x in values])
    scale = max(MAD_TO_SD * mad, floor)
    return med, med - k * scale, med + k * scale


def _num(v):
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def flag_cases(records: list[dict]) -> list[dict]:
    """Add ``needs_review``, ``review_reason`` and ``case_dir`` to copies of the records (same order)."""
    out = [dict(r) for r in records]
    reasons = {id(r): [] for r in out}
    for r in out:
        rs = reasons[id(r)]
        r["case_dir"] = f"cases/{r['case_id']}"
        if r.get("status") != STATUS_OK:
            rs.append(f"failed ({r.get('failure_kind') or 'unknown'}): {r.get('failure_reason') or 'no reason recorded'}")
        i, f = r.get("initial_metric"), r.get("final_metric")
        if _num(i) and _num(f) and f > i and not any(s.startswith("failed (sanity)") and "worse" in s for s in rs):
            rs.append(f"metric worse than at the start ({i:.5g} -> {f:.5g})")
        fold, jmin = r.get("jacobian_fraction_folding"), r.get("jacobian_min")
        if (_num(fold) and fold > 0) or (_num(jmin) and jmin <= 0):
            pct = f"{100 * fold:.2f}% of the grid" if _num(fold) else "part of the grid"
            rs.append(f"folding: {pct} has det(J) <= 0")
        for failure in r.get("profile_failures") or []:
            rs.append(f"beyond acceptance profile {r.get('profile') or ''}: {failure}".replace("  ", " "))
        if r.get("validation_note"):
            rs.append(r["validation_note"])
    groups: dict[tuple, list[dict]] = {}
    for r in out:
        if r.get("status") == STATUS_OK:
            groups.setdefault((r.get("preset"), r.get("dimension")), []).append(r)
    for members in groups.values():
        if len(members) < MIN_GROUP:
            continue
        times = [r["run_time_s"] for r in members if _num(r.get("run_time_s"))]
        if len(times) >= MIN_GROUP:
            med, _, high = robust_limits(times, floor=RUNTIME_FLOOR * abs(_median(times)))
            for r in members:
                if _num(r.get("run_time_s")) and r["run_time_s"] > high:
                    reasons[id(r)].append(f"outlier run time: {r['run_time_s']:.1f} s against a cohort median of "
                                          f"{med:.1f} s (limit {high:.1f} s)")
        metrics = [r["final_metric"] for r in members if _num(r.get("final_metric"))]
        if len(metrics) >= MIN_GROUP:
            med, low, high = robust_limits(metrics, floor=METRIC_FLOOR * abs(_median(metrics)))
            for r in members:
                v = r.get("final_metric")
                if _num(v) and not (low <= v <= high):
                    reasons[id(r)].append(f"outlier metric: {v:.5g} against a cohort median of {med:.5g} "
                                          f"(range {low:.5g} to {high:.5g})")
    for r in out:
        rs = reasons[id(r)]
        r["needs_review"] = bool(rs)
        r["review_reason"] = "; ".join(rs)
        r["verdict"], r["verdict_reason"] = case_verdict(r)
    return out


def case_verdict(r: dict) -> tuple[str, str]:
    """(verdict, reason) of one flagged record: failed, review, incomplete, pass, or 'checks passed' (no profile)."""
    if r.get("status") != STATUS_OK:
        return "failed", r.get("review_reason", "")
    if r.get("needs_review"):
        return "review", r.get("review_reason", "")
    if r.get("profile_verdict") == "incomplete":
        missing = "; ".join(r.get("profile_not_evaluated") or []) or "a criterion was not evaluated"
        return "incomplete", f"acceptance profile {r.get('profile') or ''} incomplete: not evaluated {missing}"
    if r.get("profile_verdict") == "pass":
        return "pass", ""
    if r.get("profile"):  # asked for, but the case had nothing the profile measures
        return "incomplete", (f"acceptance profile {r['profile']} not evaluated: the case has no landmarks or label "
                              "maps (and a linear result), so no TRE or Dice was measured")
    return "checks passed", "no acceptance profile given (--profile): only the post-run sanity checks judged it"


def qc_rows(flagged: list[dict]) -> list[dict]:
    rows = []
    for r in flagged:
        row = {c.key: r.get(c.key) for c in QC_COLUMNS}
        row["sanity_failures"] = "; ".join(r.get("sanity_failures") or [])
        rows.append(row)
    return rows


def write_qc_table(path: str, flagged: list[dict]) -> str:
    """The cohort TSV (one row per case) with its Slicer ``.schema.tsv`` (units, descriptions); measured values
    with 6 significant digits."""
    columns = [replace(c, digits=6) if c.type == "double" and c.digits is None else c for c in QC_COLUMNS]
    return write_tsv(path, columns, qc_rows(flagged))
