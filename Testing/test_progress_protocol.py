"""One progress protocol (``CrossModalRegLib.progress``): every long-running public function calls ``progress`` with
:class:`Progress` reports whose fraction only goes up and ends at 1.0, and stops with ``RegistrationCancelled`` when
the callback raises it (nothing printed, no report after the cancel)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk

from CrossModalRegLib import engine, initialization, simulation
from CrossModalRegLib.errors import RegistrationCancelled
from CrossModalRegLib.landmarks.fileio import LandmarkSet
from CrossModalRegLib.landmarks.tre import expected_tre_map
from CrossModalRegLib.progress import Progress, ProgressTracker
from CrossModalRegLib.validation.overlap import compare_label_maps
from CrossModalRegLib.validation.report import validate


def _complete_run(fn):
    """Run ``fn(progress)`` to the end; the reports it gave."""
    reports = []
    fn(reports.append)
    assert reports and all(isinstance(r, Progress) for r in reports)
    fractions = [r.fraction for r in reports]
    assert all(b >= a for a, b in zip(fractions, fractions[1:])), fractions
    assert fractions[-1] == 1.0 and fractions.count(1.0) == 1 and 0.0 <= fractions[0] < 1.0
    assert len(set(fractions)) >= 3, "reports along the way, not only at the end"
    return reports


def _cancelled_run(fn, at: float):
    """Run ``fn(progress)`` with a callback that cancels at the first report at or past ``at``."""
    seen = []

    def progress(p):
        seen.append(p.fraction)
        if p.fraction >= at:
            raise RegistrationCancelled("cancelled by the test")

    with pytest.raises(RegistrationCancelled):
        fn(progress)
    first = next(i for i, f in enumerate(seen) if f >= at)
    assert first == len(seen) - 1, f"reports went on after the cancel: {seen[first:]}"
    assert seen[-1] < 1.0
    return seen


@pytest.fixture(scope="module")
def pair():
    rng = np.random.RandomState(11)
    model = simulation.head_phantom(spacing_mm=4.0)
    fixed = simulation.render(model, "t1", rng=rng)
    center = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in fixed.GetSize()])
    truth = simulation.random_rigid_transform(rng, center=center, max_angle_deg=10.0, max_translation_mm=8.0)
    moving = simulation.simulate_pair(simulation.render(model, "t2", rng=rng), truth, spacing=(4.0, 4.0, 4.0),
                                      rng=rng)
    labels = sitk.Cast(model.brain_mask(), sitk.sitkUInt8)
    return fixed, moving, truth, labels


def test_tracker_keeps_a_cancel_raised_by_the_callback_for_code_that_cannot_raise():
    calls = []

    def progress(p):
        calls.append(p.fraction)
        raise RegistrationCancelled()

    tracker = ProgressTracker(progress, {"a": 1.0})
    tracker.update("a", 0.5)  # as from inside an ITK observer: nothing raised here
    assert tracker.cancelled() and calls == [0.5]
    tracker.update("a", 0.9)
    assert calls == [0.5], "no report after the cancel"
    with pytest.raises(RegistrationCancelled):
        tracker.check()


QUICK = {"stages.0.optimizer.iterations": 15}


def test_engine_register_reports_and_is_cancelled_through_the_callback(pair, capfd):
    fixed, moving, _, _ = pair
    run = lambda progress: engine.register(fixed, moving, preset="mr-t1-t2-rigid", overrides=QUICK,  # noqa: E731
                                           orientation_search=False, progress=progress, strict=False)
    reports = _complete_run(run)
    assert any(r.metric is not None for r in reports) and reports[-1].message == "done"
    t0 = time.perf_counter()
    _cancelled_run(run, at=0.5)  # inside the optimiser's ITK iteration observer
    assert time.perf_counter() - t0 < 30
    _cancelled_run(run, at=0.0)  # the very first report
    err = capfd.readouterr().err
    assert "Traceback" not in err and "error executing the Python Callable" not in err


@pytest.mark.parametrize("search", [initialization.rotation_search, initialization.orientation_search])
def test_initial_searches_report_and_are_cancelled_through_the_callback(pair, search, capfd):
    fixed, moving, _, _ = pair
    start, _ = initialization.initial_transform(fixed, moving, "moments")
    config = {"max_angle_deg": 20, "step_deg": 20, "top_k": 1, "refine_iterations": 5}

    def run(progress):
        return search(fixed, moving, start, metric={"name": "mattes", "bins": 24}, config=config, seed=1,
                      progress=progress)

    _complete_run(run)
    _cancelled_run(run, at=0.3)
    assert "Traceback" not in capfd.readouterr().err


def test_expected_tre_map_reports_per_slice_and_is_cancelled_through_the_callback(pair):
    fixed = pair[0]
    fiducials = np.array([[10.0, 0, 0], [-10, 5, 0], [0, -10, 8], [3, 3, -9]])
    reports = _complete_run(lambda progress: expected_tre_map(fiducials, fixed, 1.0, progress=progress))
    assert len(reports) == fixed.GetSize()[2] + 1
    _cancelled_run(lambda progress: expected_tre_map(fiducials, fixed, 1.0, progress=progress), at=0.4)


def test_label_comparison_reports_and_is_cancelled_through_the_callback(pair):
    fixed, _, truth, labels = pair
    two = sitk.Cast(labels, sitk.sitkUInt8) + sitk.Cast(sitk.BinaryErode(labels, [2, 2, 2]), sitk.sitkUInt8)
    run = lambda progress: compare_label_maps(two, two, truth, progress=progress)  # noqa: E731
    reports = _complete_run(run)
    assert any("distances" in r.message for r in reports)
    _cancelled_run(run, at=0.5)


def test_validate_reports_each_group_and_is_cancelled_through_the_callback(pair):
    fixed, moving, truth, labels = pair
    pts = np.array([[10.0, 0, 0], [-10, 5, 0], [0, -10, 8], [3, 3, -9]])
    fl = LandmarkSet(["a", "b", "c", "d"], pts)
    ml = LandmarkSet(["a", "b", "c", "d"], np.array([truth.TransformPoint(tuple(p)) for p in pts]))

    def run(progress):
        return validate(truth, fixed=fixed, moving=moving, fixed_landmarks=fl, moving_landmarks=ml,
                        fixed_labels=labels, moving_labels=labels, jacobian="always", progress=progress)

    reports = _complete_run(run)
    messages = [r.message for r in reports]
    for group in ("landmark errors", "overlap and surface distances", "Jacobian determinant map",
                  "normalized mutual information"):
        assert group in messages
    _cancelled_run(run, at=0.2)


def _small_cohort(shared_data, folder, n=3) -> str:
    """``n`` BrainWeb T1/PD pairs (2D) under small known shifts, and their cohort CSV."""
    import csv
    import os

    bw = shared_data / "brainweb2d"
    fixed = sitk.Cast(sitk.ReadImage(str(bw / "BrainT1SliceBorder20.mha")), sitk.sitkFloat32)
    pd = sitk.Cast(sitk.ReadImage(str(bw / "BrainProtonDensitySliceBorder20.mha")), sitk.sitkFloat32)
    sitk.WriteImage(fixed, os.path.join(folder, "fixed.mha"))
    with open(os.path.join(folder, "cohort.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "fixed", "moving"])
        for i in range(n):
            moving = sitk.Resample(pd, sitk.TranslationTransform(2, (2.0 + i, -1.0)), sitk.sitkLinear, 0.0)
            sitk.WriteImage(moving, os.path.join(folder, f"c{i}.mha"))
            w.writerow([f"c{i}", "fixed.mha", f"c{i}.mha"])
    return os.path.join(folder, "cohort.csv")


@pytest.mark.shared_data
def test_batch_reports_per_case_and_is_cancelled_through_the_callback(shared_data, tmp_path):
    pytest.importorskip("distributed", reason="the batch extra (dask[distributed]) is not installed")
    from CrossModalRegLib.batch import check_complete, run_cohort

    cohort = _small_cohort(shared_data, tmp_path)
    fast = {"stages.0.optimizer.iterations": 20}
    common = dict(workers=1, overrides=fast, pictures=False, show_progress=False, dashboard_address=":0")
    reports = _complete_run(lambda progress: run_cohort(cohort, tmp_path / "all", progress=progress, **common))
    # one report as the cases start, one per finished case (the last just below 1.0), then 1.0 when all is written
    assert [r.fraction for r in reports] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0, 1.0], abs=1e-5)
    _cancelled_run(lambda progress: run_cohort(cohort, tmp_path / "cancelled", progress=progress, **common),
                   at=0.3)
    finished = [c for c in ("c0", "c1", "c2") if check_complete(str(tmp_path / "cancelled" / "cases" / c))[0]]
    assert len(finished) < 3, "the cases after the cancel did not run"


def test_scene_registration_reports_and_a_cancel_from_the_callback_leaves_the_scene_as_it_was(pair, scene):
    from CrossModalRegLib import mrml, scene_registration

    fixed, moving, _, _ = pair
    fixed_node = mrml.volume_node_from_image(scene, fixed, "MR")
    moving_node = mrml.volume_node_from_image(scene, moving, "T2")
    before = scene.GetNumberOfNodes()

    def run(progress):
        return scene_registration.register_volume_nodes(scene, fixed_node, moving_node, preset="mr-t1-t2-rigid",
                                                        overrides=QUICK, create_resampled_volume=True,
                                                        progress=progress, strict=False)

    _cancelled_run(run, at=0.5)
    assert scene.GetNumberOfNodes() == before and moving_node.GetParentTransformNode() is None
    _complete_run(run)
    assert scene.GetNumberOfNodes() > before
