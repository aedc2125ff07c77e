"""Cohort batch on Dask, end to end, on simulated pairs built at run time from ../shared/data.

One cohort of 10 cases: seven 2D BrainWeb T1/PD pairs under known random rigid transforms (some with landmarks,
some with label maps, one deformable), one small 3D MNI152 T1 / simulated-T2 pair with tissue labels, and two
planted failures: a pair that does not overlap and a corrupted (truncated) file. The main run uses a local cluster
of 2 workers. A second run goes to a real Dask cluster (a `dask scheduler` and two `dask worker` processes on
127.0.0.1, started by the test) and kills, from outside, the worker process running the 3D case in the middle of
it: the cohort must finish, the case be retried, no output be half-written, and every transform equal the local
run's. Reruns check resume (outputs untouched, by checksum) and --retry-failed; a 1-worker run checks the
transforms are identical to the 2-worker run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk

if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    import distributed  # noqa: F401  (CI installs the batch extra: never skip there)
else:
    pytest.importorskip("distributed", reason="the batch extra (dask[distributed]) is not installed")

from distributed import Client  # noqa: E402

from CrossModalRegLib import cli  # noqa: E402
from CrossModalRegLib import simulation as sim  # noqa: E402
from CrossModalRegLib.batch import check_complete, run_cohort  # noqa: E402

GOOD_2D = [f"bw{i:02d}" for i in range(1, 8)]
GOOD = GOOD_2D + ["mni01"]
KILLED = "mni01"  # the slowest case: its worker is killed mid-registration on the real cluster
DEFORMABLE = "bw07"
FAST = {"stages.0.optimizer.iterations": 100}


def _write_landmarks(path, pts):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "x_lps", "y_lps", "z_lps"])
        for i, p in enumerate(pts):
            p = list(map(float, p)) + [0.0] * (3 - len(p))
            w.writerow([f"L{i + 1}", *p])


def build_cohort(shared_data, folder) -> str:
    """Write the images, landmarks, labels, a preset and cohort.csv into ``folder``; return the CSV path."""
    os.makedirs(folder, exist_ok=True)
    bw = shared_data / "brainweb2d"
    fixed = sitk.Cast(sitk.ReadImage(str(bw / "BrainT1SliceBorder20.mha")), sitk.sitkFloat32)
    pd = sitk.Cast(sitk.ReadImage(str(bw / "BrainProtonDensitySliceBorder20.mha")), sitk.sitkFloat32)
    mask = sitk.ReadImage(str(bw / "BrainProtonDensitySliceBorder20Mask.mha"))
    labels = sitk.Cast(sitk.OtsuMultipleThresholds(fixed, 2) + 1, sitk.sitkUInt8) * sitk.Cast(mask > 0, sitk.sitkUInt8)
    sitk.WriteImage(fixed, os.path.join(folder, "fixed.mha"))
    sitk.WriteImage(labels, os.path.join(folder, "fixed_labels.mha"))
    center = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()])
    rows = []
    for i, cid in enumerate(GOOD_2D):
        rng = np.random.RandomState(100 + i)
        tx = sim.random_rigid_transform(rng, center=center, max_angle_deg=10.0, max_translation_mm=10.0, dim=2)
        moving = sim.simulate_pair(pd, tx, spacing=(1.0, 1.0), rng=np.random.RandomState(i), fov_crop=0.0)
        sitk.WriteImage(moving, os.path.join(folder, f"{cid}_pd.mha"))
        row = {"case_id": cid, "fixed": "fixed.mha", "moving": f"{cid}_pd.mha"}
        if i % 2 == 0:
            pts = sim.points_in_mask(mask, 8, rng)
            _write_landmarks(os.path.join(folder, f"{cid}_fixed_lm.csv"), pts)
            _write_landmarks(os.path.join(folder, f"{cid}_moving_lm.csv"),
                             [tx.TransformPoint(tuple(map(float, p))) for p in pts])
            row.update(fixed_landmarks=f"{cid}_fixed_lm.csv", moving_landmarks=f"{cid}_moving_lm.csv")
        if i % 3 == 0:
            ml = sim.simulate_pair(labels, tx, spacing=(1.0, 1.0), rng=np.random.RandomState(i), fov_crop=0.0,
                                   interpolator=sitk.sitkNearestNeighbor, default_value=0)
            sitk.WriteImage(ml, os.path.join(folder, f"{cid}_labels.mha"))
            row.update(fixed_labels="fixed_labels.mha", moving_labels=f"{cid}_labels.mha")
        if cid == DEFORMABLE:
            row["preset"] = "small_deformable.json"
        rows.append(row)
    # a small 3D pair: MNI152 T1 at 3 mm against a simulated T2 on its own 3x3x4 mm grid, tissue labels for Dice
    mni = shared_data / "mni152"
    t1, gm, wm = (sitk.BinShrink(sitk.ReadImage(str(mni / f"mni_icbm152_{n}_tal_nlin_sym_09a_converted.nii.gz"),
                                                sitk.sitkFloat32), [3, 3, 3]) for n in ("t1", "gm", "wm"))
    model = sim._tissues_from_t1(t1, gm / 255.0, wm / 255.0)
    rng = np.random.RandomState(7)
    t2 = sim.render(model, "t2", rng=rng)
    c3 = t1.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in t1.GetSize()])
    tx3 = sim.random_rigid_transform(rng, center=c3, max_angle_deg=10.0, max_translation_mm=10.0)
    sitk.WriteImage(t1, os.path.join(folder, "mni01_t1.nii.gz"))
    sitk.WriteImage(sim.simulate_pair(t2, tx3, spacing=(3, 3, 4), rng=np.random.RandomState(3)),
                    os.path.join(folder, "mni01_t2.nii.gz"))
    brain = sitk.Cast((model.labels >= sim.CSF) * model.labels, sitk.sitkUInt8)
    sitk.WriteImage(brain, os.path.join(folder, "mni01_t1_labels.nii.gz"))
    sitk.WriteImage(sim.simulate_pair(brain, tx3, spacing=(3, 3, 4), rng=np.random.RandomState(3),
                                      interpolator=sitk.sitkNearestNeighbor, default_value=0),
                    os.path.join(folder, "mni01_t2_labels.nii.gz"))
    rows.append({"case_id": "mni01", "fixed": "mni01_t1.nii.gz", "moving": "mni01_t2.nii.gz",
                 "fixed_labels": "mni01_t1_labels.nii.gz", "moving_labels": "mni01_t2_labels.nii.gz"})
    # planted failure 1: the moving image is 5 m away and the case's preset trusts the scanner coordinates
    far = sitk.ReadImage(os.path.join(folder, "bw01_pd.mha"))
    far.SetOrigin(tuple(o + 5000.0 for o in far.GetOrigin()))
    sitk.WriteImage(far, os.path.join(folder, "far_pd.mha"))
    presets_dir = os.path.join(os.path.dirname(sim.__file__), "presets")
    with open(os.path.join(presets_dir, "multimodal-deformable.json")) as f:
        small = json.load(f)  # the shipped deformable preset, made quick: no rotation search, coarse levels
    small["name"] = "small-deformable"
    small["initialization"]["rotation_search"]["enabled"] = False
    for stage in small["stages"]:
        stage.pop("level_spacing_mm", None)
        stage["shrink_factors"], stage["smoothing_sigmas_mm"] = [4, 2], [2.0, 1.0]
        stage.pop("mesh_scale_factors", None)
        if stage["type"] == "bspline":  # new random samples every iteration: keep its sampling, one step per level
            stage["optimizer"]["iterations"] = 20
            stage["optimizer"]["max_step_mm"] = 1.0
            stage["sampling"]["samples_per_iteration"] = 2048
        else:
            stage.pop("sampling", None)  # every voxel of these small 2D images
    with open(os.path.join(folder, "small_deformable.json"), "w") as f:
        json.dump(small, f)
    with open(os.path.join(presets_dir, "multimodal-rigid.json")) as f:
        preset = json.load(f)
    preset["name"] = "rigid-scanner-coordinates"
    preset["initialization"] = {"method": "none"}
    with open(os.path.join(folder, "scanner_rigid.json"), "w") as f:
        json.dump(preset, f)
    rows.append({"case_id": "nooverlap", "fixed": "fixed.mha", "moving": "far_pd.mha", "preset": "scanner_rigid.json"})
    # planted failure 2: a truncated image file
    with open(os.path.join(folder, "bw02_pd.mha"), "rb") as f:
        data = f.read()
    with open(os.path.join(folder, "corrupt_pd.mha"), "wb") as f:
        f.write(data[: len(data) // 2])
    rows.append({"case_id": "corrupt", "fixed": "fixed.mha", "moving": "corrupt_pd.mha"})
    cols = ["case_id", "fixed", "moving", "fixed_landmarks", "moving_landmarks", "fixed_labels", "moving_labels",
            "preset"]
    path = os.path.join(folder, "cohort.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path


def tree_state(folder) -> dict:
    """{relative path: (sha256, mtime_ns)} of every file under ``folder``."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            p = os.path.join(root, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = (hashlib.sha256(f.read()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


def transform_params(case_dir):
    tx = sitk.ReadTransform(os.path.join(case_dir, "transform.h5"))
    comps = [tx.GetNthTransform(i) for i in range(tx.GetNumberOfTransforms())] if tx.GetName() == "CompositeTransform" else [tx]
    return np.concatenate([np.r_[c.GetParameters(), c.GetFixedParameters()] for c in comps])


@pytest.fixture(scope="module")
def cohort_csv(shared_data, tmp_path_factory):
    return build_cohort(shared_data, str(tmp_path_factory.mktemp("cohort")))


@pytest.fixture(scope="module")
def main_run(cohort_csv, tmp_path_factory):
    """A local Dask cluster of 2 workers."""
    out = str(tmp_path_factory.mktemp("out2"))
    run = run_cohort(cohort_csv, out, workers=2, overrides=FAST, profile="neuro", progress=True,
                     dashboard_address=":0")
    return run, out


def test_good_cases_succeed_and_planted_failures_are_flagged(main_run):
    run, out = main_run
    assert len(run.records) == 10
    for cid in GOOD:
        rec = run.record(cid)
        assert rec["status"] == "ok", (cid, rec["failure_reason"])
        assert rec["sanity_passed"] is True
        ok, why = check_complete(os.path.join(out, "cases", cid))
        assert ok, why
        assert os.path.isfile(os.path.join(out, "cases", cid, "transform.h5"))
        assert rec["metric_improvement"] > 0
    assert sorted(run.failed) == ["corrupt", "nooverlap"]
    nov, bad = run.record("nooverlap"), run.record("corrupt")
    assert nov["failure_kind"] == "no_overlap" and "do not overlap" in nov["failure_reason"]
    assert bad["failure_kind"] == "input" and "corrupt_pd.mha" in bad["failure_reason"]
    for rec in (nov, bad):
        assert rec["needs_review"] and rec["review_reason"].startswith("failed (")
        ok, why = check_complete(os.path.join(out, "cases", rec["case_id"]))
        assert ok, why  # a failed case is a complete folder too (its qc.json says why)
    # TRE where landmarks were given, Dice where labels were; a deformable result has Jacobian statistics
    assert run.record("bw01")["tre_mean_mm"] < 1.5 < run.record("bw01")["tre_before_mean_mm"]
    assert run.record("bw04")["dice_mean"] > 0.8
    assert run.record("mni01")["dice_mean"] > 0.6
    assert run.record(DEFORMABLE)["jacobian_min"] is not None
    assert run.record("bw02")["tre_mean_mm"] is None  # no landmarks there


def test_a_2d_deformable_case_has_the_jacobian_of_its_own_transform(main_run, cohort_csv):
    """Batch validates a 2D case as a one-slice volume; its Jacobian statistics are those of the 2D result
    (``validation.jacobian`` on the fixed grid), not a 3D-only map switched off for 2D."""
    from CrossModalRegLib.validation import jacobian_determinant_image

    run, out = main_run
    tx = sitk.ReadTransform(os.path.join(out, "cases", DEFORMABLE, "transform.h5"))
    assert not tx.IsLinear() and tx.GetDimension() == 2
    fixed = sitk.ReadImage(os.path.join(os.path.dirname(cohort_csv), "fixed.mha"))
    jac = sitk.GetArrayFromImage(jacobian_determinant_image(tx, fixed))
    rec = run.record(DEFORMABLE)
    assert jac.max() - jac.min() > 0.05  # a real deformation
    # the one-slice volume carries the result as a displacement field sampled at 1/4 of the control spacing
    assert rec["jacobian_min"] == pytest.approx(float(jac.min()), abs=0.03)
    assert rec["jacobian_max"] == pytest.approx(float(jac.max()), abs=0.03)


def test_qc_table_and_report(main_run):
    run, out = main_run
    with open(os.path.join(out, "cohort_qc.tsv")) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["case_id"] for r in rows] == GOOD_2D + ["mni01", "nooverlap", "corrupt"]
    by_id = {r["case_id"]: r for r in rows}
    assert by_id["corrupt"]["needs_review"] == "true" and by_id["corrupt"]["failure_kind"] == "input"
    assert by_id["nooverlap"]["needs_review"] == "true" and "no_overlap" in by_id["nooverlap"]["review_reason"]
    assert os.path.isfile(os.path.join(out, "cohort_qc.schema.tsv"))
    with open(os.path.join(out, "cohort_report.html"), encoding="utf-8") as f:
        page = f.read()
    assert page.count("<svg") >= 3
    assert "src='http" not in page and "<script" not in page and "<link" not in page  # self-contained
    flagged_with_pictures = [r for r in run.records if r["needs_review"] and r["status"] == "ok"]
    assert page.count("data:image/png;base64,") == len(flagged_with_pictures)
    with open(os.path.join(out, "cohort_summary.json")) as f:
        summary = json.load(f)
    assert summary["cases"] == 10 and sorted(summary["failed"]) == ["corrupt", "nooverlap"]


def test_rerun_skips_finished_cases_and_resumes_an_interrupted_one(main_run, cohort_csv, tmp_path):
    _, out0 = main_run
    out = str(tmp_path / "resume")
    shutil.copytree(out0, out)
    # an interruption: bw05's folder lost its DONE marker (never finished) and a killed worker's staging folder
    os.remove(os.path.join(out, "cases", "bw05", "DONE"))
    os.makedirs(os.path.join(out, "cases", ".staging-bw06-deadbeef", "scene"))
    before = tree_state(os.path.join(out, "cases"))
    run = run_cohort(cohort_csv, out, workers=2, overrides=FAST, profile="neuro", dashboard_address=":0")
    assert run.ran == ["bw05"]
    assert sorted(run.skipped) == sorted(c for c in GOOD + ["nooverlap", "corrupt"] if c != "bw05")
    after = tree_state(os.path.join(out, "cases"))
    untouched = {k: v for k, v in before.items() if not k.startswith(("bw05", ".staging"))}
    assert {k: after[k] for k in untouched} == untouched  # same bytes, same modification times
    assert not os.path.exists(os.path.join(out, "cases", ".staging-bw06-deadbeef"))
    assert check_complete(os.path.join(out, "cases", "bw05"))[0]
    assert np.array_equal(transform_params(os.path.join(out, "cases", "bw05")),
                          transform_params(os.path.join(out0, "cases", "bw05")))
    # --retry-failed runs only the two failed cases (they fail again, for the same reasons)
    before = tree_state(os.path.join(out, "cases"))
    run = run_cohort(cohort_csv, out, workers=2, overrides=FAST, retry_failed=True, progress=False,
                     dashboard_address=":0")
    assert sorted(run.ran) == ["corrupt", "nooverlap"]
    assert run.record("nooverlap")["failure_kind"] == "no_overlap" and run.record("corrupt")["failure_kind"] == "input"
    after = tree_state(os.path.join(out, "cases"))
    assert {k: v for k, v in after.items() if k.split(os.sep)[0] in GOOD} == \
        {k: v for k, v in before.items() if k.split(os.sep)[0] in GOOD}


def test_one_worker_gives_identical_results(main_run, cohort_csv, tmp_path):
    _, out2 = main_run
    out1 = str(tmp_path / "one")
    run = run_cohort(cohort_csv, out1, workers=1, overrides=FAST, pictures=False, progress=False,
                     dashboard_address=":0")
    assert run.workers == 1 and sorted(run.failed) == ["corrupt", "nooverlap"]
    for cid in GOOD:
        a = transform_params(os.path.join(out1, "cases", cid))
        b = transform_params(os.path.join(out2, "cases", cid))
        assert np.array_equal(a, b), (cid, np.abs(a - b).max())
        with open(os.path.join(out2, "cases", cid, "qc.json")) as f:
            assert run.record(cid)["final_metric"] == json.load(f)["final_metric"]


def test_command_line_reports_and_exit_status(main_run, cohort_csv, tmp_path, capsys):

    _, out0 = main_run
    out = str(tmp_path / "cli")
    shutil.copytree(out0, out)
    code = cli.main(["batch", cohort_csv, "--output-dir", out, "--workers", "1", "--no-progress",
                     "--set", "stages.0.optimizer.iterations=100"])
    assert code == 3  # some cases failed; all recorded, nothing run again
    assert "8/10 case(s) succeeded, 2 failed" in capsys.readouterr().out


def test_itk_threads_reach_the_engine_and_leave_the_process_as_it_was(cohort_csv, tmp_path):
    """`batch --itk-threads N` is what the registration runs with (recorded as such), and a case does not change
    ITK's process-wide thread count for whatever else runs in that worker."""
    from CrossModalRegLib.batch.case import CaseOptions, case_folder, run_case
    from CrossModalRegLib.batch.cohort import read_cohort

    case = next(c for c in read_cohort(cohort_csv) if c.case_id == GOOD[0])
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    record = run_case(case, str(tmp_path), CaseOptions(overrides=FAST, pictures=False, itk_threads=2))
    assert record["status"] == "ok", record
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before
    with open(os.path.join(case_folder(str(tmp_path), case.case_id), "registration.json")) as f:
        prov = json.load(f)
    assert prov["threads"] == 2 and prov["deterministic"] is False


# --- a real Dask cluster: `dask scheduler` and two `dask worker` processes on 127.0.0.1 ---


def _dask_command(*args):
    exe = os.path.join(os.path.dirname(sys.executable), "dask")
    return [exe, *args] if os.path.exists(exe) else [sys.executable, "-m", "dask", *args]


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory):
    """(address, processes): a scheduler and two single-threaded workers (with nannies) on loopback."""
    folder = tmp_path_factory.mktemp("dask")
    sched_file = str(folder / "scheduler.json")
    logs = open(folder / "dask.log", "w")  # noqa: SIM115 - closed in the teardown
    procs = [subprocess.Popen(_dask_command("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                            "--scheduler-file", sched_file), stdout=logs, stderr=logs)]
    deadline = time.time() + 60
    while not os.path.exists(sched_file):
        assert time.time() < deadline and procs[0].poll() is None, "the dask scheduler did not start"
        time.sleep(0.2)
    for i in range(2):
        procs.append(subprocess.Popen(
            _dask_command("worker", "--scheduler-file", sched_file, "--nthreads", "1", "--nworkers", "1",
                          "--no-dashboard", "--memory-limit", "6GB", "--local-directory", str(folder / f"w{i}")),
            stdout=logs, stderr=logs))
    client = Client(scheduler_file=sched_file, timeout="60s")
    try:
        client.wait_for_workers(2, timeout=120)
        address = client.scheduler.address
    finally:
        client.close()
    assert address.startswith("tcp://127.0.0.1:"), address
    yield address
    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
    logs.close()


def _kill_worker_running(case_id, address, cases_dir, killed: dict, stop: threading.Event):
    """When ``case_id``'s registration is under way (its staging folder exists), SIGKILL the worker process that
    the scheduler says is processing it."""
    with Client(address, timeout="30s") as client:
        while not stop.is_set():
            names = os.listdir(cases_dir) if os.path.isdir(cases_dir) else []
            if any(case_id in n and ".partial-" in n for n in names):
                for worker, keys in client.processing().items():
                    if any(f"-{case_id}-" in str(k) for k in keys):
                        pid = client.run(os.getpid, workers=[worker])[worker]
                        os.kill(pid, signal.SIGKILL)
                        killed.update(worker=worker, pid=pid, at=time.time())
                        return
            time.sleep(0.05)


def test_real_cluster_survives_a_killed_worker_with_the_local_results(real_cluster, main_run, cohort_csv,
                                                                      tmp_path):
    _, local_out = main_run
    out = str(tmp_path / "real")
    killed, stop = {}, threading.Event()
    watcher = threading.Thread(target=_kill_worker_running,
                               args=(KILLED, real_cluster, os.path.join(out, "cases"), killed, stop), daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    try:
        run = run_cohort(cohort_csv, out, scheduler=real_cluster, overrides=FAST, profile="neuro",
                         progress=False, dashboard_address=":0")
    finally:
        stop.set()
        watcher.join(timeout=30)
    wall = time.perf_counter() - t0
    print(f"real-cluster cohort: {len(run.records)} cases in {wall:.1f} s, killed {killed}")
    assert killed, f"the {KILLED} case was never seen running (the watcher did not kill a worker)"
    assert run.workers == 2
    rec = run.record(KILLED)
    assert rec["status"] == "ok" and rec["attempts"] == 2, rec
    assert sorted(run.failed) == ["corrupt", "nooverlap"]
    names = os.listdir(os.path.join(out, "cases"))
    assert sorted(names) == sorted(GOOD + ["nooverlap", "corrupt"])  # no staging or partial folder left
    for cid in names:
        ok, why = check_complete(os.path.join(out, "cases", cid))
        assert ok, (cid, why)
    for cid in GOOD:  # one ITK thread per case and fixed seeds: the cluster does not change a transform
        a = transform_params(os.path.join(out, "cases", cid))
        b = transform_params(os.path.join(local_out, "cases", cid))
        assert np.array_equal(a, b), (cid, np.abs(a - b).max())


def test_command_line_runs_on_the_real_cluster(real_cluster, main_run, cohort_csv, tmp_path, capsys):
    """`crossmodalreg batch --scheduler tcp://...` on a finished cohort: connects, runs only the unfinished case."""
    _, local_out = main_run
    out = str(tmp_path / "cli")
    shutil.copytree(local_out, out)
    os.remove(os.path.join(out, "cases", "bw02", "DONE"))  # one case to run again, on the cluster
    code = cli.main(["batch", cohort_csv, "--output-dir", out, "--scheduler", real_cluster, "--no-progress",
                     "--set", "stages.0.optimizer.iterations=100"])
    assert code == 3  # the two planted failures are still failures
    text = capsys.readouterr()
    assert "8/10 case(s) succeeded, 2 failed" in text.out
    with open(os.path.join(out, "cohort_summary.json")) as f:
        summary = json.load(f)
    assert summary["ran"] == ["bw02"] and summary["dask"]["scheduler"] == real_cluster
    assert np.array_equal(transform_params(os.path.join(out, "cases", "bw02")),
                          transform_params(os.path.join(local_out, "cases", "bw02")))


@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_documented_jobqueue_configuration_gives_single_threaded_worker_jobs(kind):
    """docs/examples/jobqueue.yaml, loaded as a user would, makes job scripts that start one single-threaded
    worker per job with this Python (not submitted: there is no batch system here)."""
    import dask
    import yaml

    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        import dask_jobqueue as jobqueue  # in the test extra: never skip in CI
    else:
        jobqueue = pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed (test extra)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "examples", "jobqueue.yaml")) as f:
        settings = yaml.safe_load(f)["jobqueue"][kind]
    cls = {"slurm": jobqueue.SLURMCluster, "pbs": jobqueue.PBSCluster}[kind]
    # merged into dask's defaults, as ~/.config/dask/jobqueue.yaml is
    with dask.config.set({f"jobqueue.{kind}.{k}": v for k, v in settings.items()}), \
            cls(scheduler_options={"host": "127.0.0.1"}) as cluster:
        script = cluster.job_script()
    assert sys.executable in script and "distributed.cli.dask_worker" in script
    assert script.count("--nthreads 1") >= 1 and "--nanny" in script
    assert ("--mem=4G" in script) if kind == "slurm" else ("mem=4GB" in script)
