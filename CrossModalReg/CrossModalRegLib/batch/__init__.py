"""Cohort batch registration with automatic quality control, on Dask (Qt-free).

Composes the existing pieces -- :func:`CrossModalRegLib.pipeline.run_registration_job` for each case and
:func:`CrossModalRegLib.validation.validate` for TRE / Dice / Jacobian -- and adds the cohort table, the Dask run
with resume and retries, and the cohort QC (TSV + one-page HTML). Dask is imported lazily (only when a cohort
runs), so the rest of the package works without it.

Public API::

    read_cohort(csv_path) -> list[CohortCase]            # raises CohortError naming row/line/column
    run_cohort(csv_path_or_cases, output_dir, workers=None, scheduler=None, retry_failed=False,
               profile=None, pictures=True, default_preset="multimodal-rigid", overrides=None,
               itk_threads=1, retries=2, allowed_worker_deaths=3, verify="checksum") -> CohortRun
    run_case(case, output_dir, CaseOptions(...)) -> dict   # one case, the Dask task (usable without Dask)
    check_complete(case_folder) -> (bool, why)              # the DONE-marker check used for resume
    flag_cases(records) -> records with needs_review / review_reason
    write_qc_table(path, flagged), write_html_report(path, flagged, output_dir)

See docs/batch.md for the command line (``crossmodalreg batch``).
"""

from .case import CaseOptions, case_folder, check_complete, read_record, run_case
from .cohort import CohortCase, CohortError, read_cohort
from .qc import QC_COLUMNS, flag_cases, robust_limits, write_qc_table
from .report import svg_histogram, write_html_report
from .runner import CohortRun, default_workers, run_cohort

__all__ = [
    "QC_COLUMNS", "CaseOptions", "CohortCase", "CohortError", "CohortRun", "case_folder", "check_complete",
    "default_workers", "flag_cases", "read_cohort", "read_record", "robust_limits", "run_case", "run_cohort",
    "svg_histogram", "write_html_report", "write_qc_table",
]
