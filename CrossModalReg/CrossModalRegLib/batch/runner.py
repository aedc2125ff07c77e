"""Run a cohort on Dask: a ``distributed.LocalCluster`` sized to the machine, or an existing cluster by address.

One Dask task per case (:func:`.case.run_case`), submitted with ``retries=`` so an unexpected error is retried;
a worker process that dies mid-case is replaced by its nanny and the scheduler reschedules the case (up to
``allowed_worker_deaths`` times, then the case is recorded as failed with ``worker_died``). Dask is imported only
here and only when a cohort is run, so the rest of the package works without it.

Resume: a case whose folder is complete (``DONE`` marker, every file matching its checksum) is skipped and its
folder is not touched; a complete *failed* case is skipped too unless ``retry_failed``. Anything else (no folder,
an incomplete one) is run again and replaces it atomically.

Determinism: every case runs with ``itk_threads`` ITK threads (default 1) in a single-threaded Dask worker, and
with its seed, so a case's transform does not depend on how many workers the cohort uses.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

from ..errors import CrossModalRegError, RegistrationCancelled
from ..progress import ProgressCallback, ProgressTracker
from .case import (
    FAIL_ERROR,
    FAIL_INPUT,
    FAIL_WORKER,
    STAGING_PREFIX,
    STATUS_OK,
    CaseOptions,
    attempts_so_far,
    case_folder,
    check_complete,
    read_record,
    reset_attempts,
    run_case,
    write_failed_case,
)
from .cohort import CohortCase, read_cohort
from .qc import flag_cases, write_qc_table
from .report import write_html_report

QC_TABLE = "cohort_qc.tsv"
REPORT = "cohort_report.html"
SUMMARY = "cohort_summary.json"
GB_PER_WORKER = 2.0
_OLD_RE = re.compile(r"\.old-\d+$")


@dataclass
class CohortRun:
    """What :func:`run_cohort` did. ``records`` are the QC records of every case (table order), flagged."""

    output_dir: str
    records: list[dict]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    qc_table: str = ""
    report: str = ""
    summary: str = ""
    dashboard_link: str | None = None
    workers: int | None = None
    elapsed_s: float = 0.0

    @property
    def failed(self) -> list[str]:
        return [r["case_id"] for r in self.records if r.get("status") != STATUS_OK]

    @property
    def needs_review(self) -> list[str]:
        return [r["case_id"] for r in self.records if r.get("needs_review")]

    def record(self, case_id: str) -> dict:
        return next(r for r in self.records if r["case_id"] == case_id)


def default_workers() -> int:
    """One worker per available core, at most one per 2 GB of memory."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        import psutil

        mem_gb = psutil.virtual_memory().total / 2 ** 30
        return max(1, min(cores, int(mem_gb // GB_PER_WORKER)))
    except ImportError:
        return max(1, cores)


class CohortProgress:
    """Cohort progress on a terminal (one updating line) or as plain lines when not a terminal."""

    def __init__(self, total: int, *, stream=None, enabled: bool = True, min_interval_s: float = 10.0,
                 callback: ProgressCallback | None = None):
        self.total = total
        self.tracker = ProgressTracker(callback, {"cases": 1.0})  # the library's protocol, per finished case
        self._reported = None
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.last_state = None
        self.last_t = 0.0
        self.min_interval_s = min_interval_s

    def say(self, text: str):
        if self.enabled:
            if self.tty:
                self.stream.write("\r\033[K")
            self.stream.write(text + "\n")
            self.stream.flush()

    def update(self, done: int, failed: int, running: int, *, force: bool = False):
        elapsed = time.perf_counter() - self.t0
        finished = done + failed
        left = self.total - finished
        eta = "?" if finished == 0 else _hms(elapsed / finished * left)
        state = (done, failed, running)
        line = (f"cohort: {finished}/{self.total} finished ({done} ok, {failed} failed), {running} running, "
                f"{max(0, left - running)} queued; elapsed {_hms(elapsed)}, time left ~{eta if left else '0:00'}")
        if self._reported != (done, failed):  # a callback raising RegistrationCancelled stops the cohort here
            self._reported = (done, failed)
            self.tracker.step("cases", finished / max(1, self.total), message=line)
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.stream.flush()
        elif force or state != self.last_state or time.perf_counter() - self.last_t >= self.min_interval_s:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.last_t = time.perf_counter()
        self.last_state = state

    def close(self):
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@contextlib.contextmanager
def _lock(output_dir: str):
    os.makedirs(os.path.join(output_dir, ".batch"), exist_ok=True)
    path = os.path.join(output_dir, ".batch", "lock")
    f = open(path, "a+")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CrossModalRegError(f"another batch run is using '{output_dir}': wait for it to finish "
                                     "(or choose another --output-dir)") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
    finally:
        f.close()


def clean_stale(output_dir: str) -> list[str]:
    """Remove staging folders and set-aside old folders left by a killed run (call with the lock held)."""
    root = os.path.join(output_dir, "cases")
    removed = []
    if not os.path.isdir(root):
        return removed
    for name in os.listdir(root):
        if name.startswith(STAGING_PREFIX) or name.startswith("." + STAGING_PREFIX) or _OLD_RE.search(name):
            path = os.path.join(root, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(name)
            else:  # the lock file of a case's staging folder (output_dir.OutputFolder) whose worker was killed
                with contextlib.suppress(OSError):
                    os.remove(path)
    return removed


@contextlib.contextmanager
def _workers_ignore_sigint():
    """Start the local workers with SIGINT ignored (inherited through exec; Python then installs no KeyboardInterrupt
    handler): Ctrl-C reaches the whole process group, and each worker printed two tracebacks. This process stops
    them (``cluster.close``) when it is interrupted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _start_client(workers, scheduler, n_cases, allowed_worker_deaths, dashboard_address):
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise CrossModalRegError("the batch command needs Dask: pip install 'dask[distributed]' "
                                 "(or install crossmodalreg with the 'batch' extra)") from None
    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except OSError as exc:
            raise CrossModalRegError(f"cannot connect to the Dask scheduler at '{scheduler}': {exc}") from None
        return client, None, len(client.scheduler_info().get("workers", {}))
    n = min(int(workers or default_workers()), max(1, n_cases))
    if n < 1:
        raise CrossModalRegError("--workers must be at least 1")
    with dask.config.set({"distributed.scheduler.allowed-failures": int(allowed_worker_deaths)}), \
            _workers_ignore_sigint():
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, silence_logs=logging.ERROR,
                               dashboard_address=dashboard_address)
        client = Client(cluster)
    return client, cluster, n


def _dashboard(client) -> str | None:
    try:
        import bokeh  # noqa: F401  (the dashboard needs it)
    except ImportError:
        return None
    try:
        return client.dashboard_link
    except Exception:  # noqa: BLE001 - a missing dashboard must not stop a cohort
        return None


def _running_count(client, keys: set) -> int:
    try:
        processing = client.processing()
    except Exception:  # noqa: BLE001
        return 0
    return sum(1 for ks in processing.values() for k in ks if k in keys)


def run_cohort(cohort, output_dir: str, *, workers: int | None = None, scheduler: str | None = None,
               retry_failed: bool = False, profile: str | None = None, pictures: bool = True,
               default_preset: str = "multimodal-rigid", overrides: dict | None = None, itk_threads: int = 1,
               retries: int = 2, allowed_worker_deaths: int = 3, verify: str = "checksum",
               progress: ProgressCallback | None = None, show_progress: bool = True, stream=None,
               dashboard_address: str = ":8787") -> CohortRun:
    """Register every case of a cohort on Dask, then write the QC table, the HTML report and a JSON summary.

    Parameters
    ----------
    cohort : str or list of CohortCase
        The cohort CSV (see :mod:`.cohort`) or cases already read.
    output_dir : str
        ``cases/<case_id>/`` per case, ``cohort_qc.tsv`` (+ schema), ``cohort_report.html``, ``cohort_summary.json``.
    workers : int, optional
        Size of the local cluster (default: one per core, at most one per 2 GB). Ignored with ``scheduler``.
    scheduler : str, optional
        Address of a running Dask scheduler (e.g. ``tcp://10.0.0.5:8786``, one made by dask-jobqueue). Its workers
        must import CrossModalRegLib and see ``output_dir`` and the input files at the same paths.
    retry_failed : bool
        Run again the cases recorded as failed (finished successful cases are always skipped).
    profile : str, optional
        Acceptance profile (bundled name or JSON file) for TRE / Dice / Jacobian pass-fail.
    retries : int
        Dask retries of a case that raised an unexpected error.
    allowed_worker_deaths : int
        Times a case may kill its worker before it is recorded as failed (local cluster only; an external
        scheduler uses its own ``distributed.scheduler.allowed-failures``).
    verify : {"checksum", "size", "exists"}
        How finished case folders are checked before being skipped.
    progress : callable(Progress), optional
        The library's progress protocol (:mod:`CrossModalRegLib.progress`): a report each time a case finishes
        (fraction = finished / to run, message = the cohort line). Raising ``RegistrationCancelled`` from it
        cancels the cases still queued or running (finished ones are kept: a rerun resumes) and raises it.
        ``True``/``False`` here mean ``show_progress`` (the meaning before version 0.2).
    show_progress : bool
        The cohort line on ``stream`` (stderr by default): one updating line on a terminal, plain lines otherwise.
    """
    if isinstance(progress, bool):  # the former meaning of ``progress``: the terminal line on or off
        show_progress, progress = progress, None
    t0 = time.perf_counter()
    stream = stream or sys.stderr
    output_dir = os.path.abspath(output_dir)
    cases: list[CohortCase] = read_cohort(cohort) if isinstance(cohort, (str, os.PathLike)) else list(cohort)
    if profile:
        from ..validation import load_profile

        load_profile(profile)  # fail before anything runs
    from ..presets import apply_overrides, load_preset

    # Every preset the cohort names, with the run's --set overrides, is checked before any case runs: a bad
    # preset cell or override is one error now, not the same failure in every case after minutes of work.
    for name, where in {(c.preset or default_preset): c.where("preset") for c in reversed(cases)}.items():
        try:
            apply_overrides(load_preset(name), overrides)
        except CrossModalRegError as exc:
            raise CrossModalRegError(f"{where}: {exc}" if name != default_preset else str(exc)) from None
    if verify not in ("checksum", "size", "exists"):
        raise CrossModalRegError(f"verify must be checksum, size or exists, got '{verify}'")
    options = CaseOptions(default_preset=default_preset, overrides=dict(overrides or {}), profile=profile,
                          pictures=pictures, itk_threads=int(itk_threads))
    from ..output_dir import check_reused_folder

    check_reused_folder(output_dir, inputs=[p for c in cases for p in c.files().values()], replaced="cases")
    os.makedirs(os.path.join(output_dir, "cases"), exist_ok=True)
    run = CohortRun(output_dir=output_dir, records=[])
    prog = CohortProgress(len(cases), stream=stream, enabled=show_progress, callback=progress)
    with _lock(output_dir):
        removed = clean_stale(output_dir)
        if removed:
            prog.say(f"removed {len(removed)} unfinished staging folder(s) of an interrupted run")
        to_run = []
        for case in cases:
            folder = case_folder(output_dir, case.case_id)
            complete, _ = check_complete(folder, verify=verify)
            if complete:
                rec = read_record(folder) or {}
                if rec.get("status") == STATUS_OK or not retry_failed:
                    run.skipped.append(case.case_id)
                    continue
            if case.problems:
                write_failed_case(case, output_dir, options, FAIL_INPUT, "; ".join(case.problems),
                                  stage="reading inputs", attempts=0)
                run.ran.append(case.case_id)
                continue
            to_run.append(case)
        if run.skipped:
            prog.say(f"skipping {len(run.skipped)} case(s) finished earlier"
                     + ("" if retry_failed else " (failed ones are run again with --retry-failed)"))
        if to_run:
            _run_on_dask(to_run, output_dir, options, run, prog, workers=workers, scheduler=scheduler,
                         retries=retries, allowed_worker_deaths=allowed_worker_deaths,
                         dashboard_address=dashboard_address)
        clean_stale(output_dir)
        run.records = _collect(cases, output_dir, options)
        run.elapsed_s = time.perf_counter() - t0
        _write_outputs(run, cases, options, scheduler)
    n_fail, n_rev = len(run.failed), len(run.needs_review)
    prog.say(f"cohort: {len(cases)} case(s): {len(cases) - n_fail} ok, {n_fail} failed, {n_rev} need review "
             f"({len(run.ran)} run now, {len(run.skipped)} skipped) in {_hms(run.elapsed_s)}")
    prog.say(f"QC table: {run.qc_table}\nreport: {run.report}")
    prog.tracker.finish("cohort done")
    return run


def _run_on_dask(to_run, output_dir, options, run, prog, *, workers, scheduler, retries, allowed_worker_deaths,
                 dashboard_address):
    client, cluster, n_workers = _start_client(workers, scheduler, len(to_run), allowed_worker_deaths,
                                               dashboard_address)
    run.workers = n_workers
    interrupted = False
    try:
        run.dashboard_link = _dashboard(client)
        where = f"Dask scheduler {scheduler}" if scheduler else f"a local Dask cluster of {n_workers} worker(s)"
        prog.say(f"running {len(to_run)} case(s) on {where}")
        prog.say(f"Dask dashboard: {run.dashboard_link}" if run.dashboard_link
                 else "Dask dashboard: not available (pip install 'bokeh>=3.1' to get it)")
        token = uuid.uuid4().hex[:8]
        futures = {}
        for case in to_run:
            reset_attempts(output_dir, case.case_id)
            fut = client.submit(run_case, case, output_dir, options, key=f"crossmodalreg-{case.case_id}-{token}",
                                retries=int(retries))
            futures[fut] = case
        try:
            slots = max(1, sum(client.nthreads().values()))
        except Exception:  # noqa: BLE001
            slots = n_workers or 1
        pending = dict(futures)
        keys = {f.key for f in futures}
        done = failed = 0
        prog.total = len(to_run)
        last_poll = 0.0
        running = 0
        while pending:
            finished = [f for f in pending if f.done()]
            for fut in finished:
                case = pending.pop(fut)
                keys.discard(fut.key)
                rec = _result_of(fut, case, output_dir, options)
                run.ran.append(case.case_id)
                if rec.get("status") == STATUS_OK:
                    done += 1
                else:
                    failed += 1
                    prog.say(f"case {case.case_id} failed ({rec.get('failure_kind')}): {rec.get('failure_reason')}")
            if time.perf_counter() - last_poll >= 1.0 or finished:
                running = _running_count(client, keys)
                last_poll = time.perf_counter()
            prog.update(done, failed, min(running, len(pending), slots), force=bool(finished))
            if pending:
                time.sleep(0.2)
        prog.close()
    except (KeyboardInterrupt, RegistrationCancelled):
        prog.say("interrupted: cancelling the cases still running; finished cases are kept (rerun to resume)")
        with contextlib.suppress(Exception):
            client.cancel(list(futures))
        interrupted = True
        raise
    finally:
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()
            if interrupted:  # our own workers are gone: their staging folders can go now (a remote one may still run)
                clean_stale(output_dir)


def _result_of(fut, case, output_dir, options) -> dict:
    """The case's record; a case whose task errored (after its retries) or killed its workers is recorded failed."""
    try:
        from distributed import KilledWorker
    except ImportError:  # pragma: no cover
        KilledWorker = ()  # noqa: N806
    if fut.status == "finished":
        try:
            return fut.result()
        except Exception as exc:  # noqa: BLE001
            exc_ = exc
    else:
        try:
            exc_ = fut.exception()
        except Exception as exc:  # noqa: BLE001 - e.g. CancelledError
            exc_ = exc
    if isinstance(exc_, KilledWorker):
        kind = FAIL_WORKER
        reason = (f"the worker running this case died {attempts_so_far(output_dir, case.case_id)} time(s) "
                  "(out of memory? crash in a library?); see the worker logs")
    else:
        kind = FAIL_ERROR
        reason = f"{type(exc_).__name__}: {str(exc_).strip().splitlines()[-1] if str(exc_).strip() else ''}"
    return write_failed_case(case, output_dir, options, kind, reason, stage="task")


def _collect(cases, output_dir, options) -> list[dict]:
    records = []
    for case in cases:
        rec = read_record(case_folder(output_dir, case.case_id))
        if rec is None:  # should not happen: every case ran or was skipped as complete
            from .case import base_record

            rec = base_record(case, options)
            rec.update(failure_kind=FAIL_ERROR, failure_reason="no record found after the run")
        records.append(rec)
    return flag_cases(records)


def _write_outputs(run: CohortRun, cases, options: CaseOptions, scheduler):
    from ..provenance import software_versions, write_json_atomic

    out = run.output_dir
    run.qc_table = write_qc_table(os.path.join(out, QC_TABLE), run.records)
    now = datetime.datetime.now(datetime.UTC).astimezone().isoformat(timespec="seconds")
    meta = {"cohort": cases[0].source if cases else "", "finished": now, "default preset": options.default_preset,
            "profile": options.profile or "none", "workers": run.workers or "-",
            "scheduler": scheduler or "local cluster"}
    run.report = write_html_report(os.path.join(out, REPORT), run.records, out, meta=meta)
    summary = {
        "schema": "crossmodalreg-batch-summary", "schema_version": 1, "finished": now,
        "cohort": cases[0].source if cases else None, "cases": len(run.records),
        "succeeded": len(run.records) - len(run.failed), "failed": run.failed, "needs_review": run.needs_review,
        "ran": run.ran, "skipped": run.skipped, "elapsed_s": run.elapsed_s,
        "options": {"default_preset": options.default_preset, "overrides": options.overrides,
                    "profile": options.profile, "pictures": options.pictures, "itk_threads": options.itk_threads},
        "dask": {"scheduler": scheduler, "workers": run.workers, "dashboard": run.dashboard_link},
        "software": software_versions(),
    }
    run.summary = write_json_atomic(os.path.join(out, SUMMARY), json.loads(json.dumps(summary, default=str)))
