"""Engine behaviour: progress, cancel, determinism, pre-flight errors, post-run sanity checks, presets."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk

from CrossModalRegLib import engine, presets, sanity, simulation
from CrossModalRegLib.errors import CrossModalRegError, RegistrationCancelled, RegistrationFailed


@pytest.fixture(scope="module")
def phantom_pair():
    """A CT-like moving and MR-like fixed phantom (no data needed) under a known 25 degree rigid transform."""
    rng = np.random.RandomState(5)
    model = simulation.head_phantom(spacing_mm=2.0)
    fixed = simulation.render(model, "t1", rng=rng)
    center = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in fixed.GetSize()])
    truth = simulation.random_rigid_transform(rng, center=center, max_angle_deg=25.0, max_translation_mm=20.0)
    moving = simulation.simulate_pair(simulation.render(model, "ct", rng=rng), truth, spacing=(1.5, 1.5, 3.0), rng=rng)
    targets = simulation.points_in_mask(model.brain_mask(), 300, rng)
    return fixed, moving, truth, targets


def test_phantom_ct_to_mr_is_recovered(phantom_pair):
    fixed, moving, truth, targets = phantom_pair
    result = engine.register(fixed, moving, preset="mr-ct-rigid")
    assert simulation.target_registration_errors(result.transform_fixed_to_moving_lps, truth, targets).mean() < 1.0


def test_progress_only_goes_up_reaches_one_and_names_stage_level_and_metric(phantom_pair):
    fixed, moving, _, _ = phantom_pair
    reports = []
    engine.register(fixed, moving, progress=reports.append)
    fractions = [r.fraction for r in reports]
    assert fractions[-1] == 1.0
    assert all(b >= a for a, b in zip(fractions, fractions[1:]))
    assert sum(1 for f in fractions if f == 1.0) == 1
    optimising = [r for r in reports if r.metric is not None]
    assert len(optimising) > 20
    assert {r.level for r in optimising} == {0, 1, 2}
    assert all(r.stage == "rigid" and r.n_levels == 3 for r in optimising)
    # The live-preview estimate is available during optimisation and is a real transform.
    tx = optimising[len(optimising) // 2].transform_fixed_to_moving_lps()
    assert tx is not None and tx.GetDimension() == 3


def test_metric_trace_is_kept_per_iteration_and_converges(phantom_pair):
    fixed, moving, _, _ = phantom_pair
    result = engine.register(fixed, moving)
    rows = result.metric_trace_rows()
    assert len(rows) == len(result.metric_trace) > 20
    last_level = [r["metric"] for r in rows if r["level"] == 2]
    assert last_level[-1] <= last_level[0] + 1e-6
    assert result.final_metric < result.initial_metric


def test_cancel_is_honoured_within_a_second(phantom_pair):
    fixed, moving, _, _ = phantom_pair
    stop = threading.Event()
    outcome = {}

    def run():
        try:
            engine.register(fixed, moving, preset="multimodal-deformable", cancel=stop)
            outcome["result"] = "finished"
        except RegistrationCancelled:
            outcome["cancelled_at"] = time.perf_counter()

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(1.5)
    stop.set()
    asked = time.perf_counter()
    worker.join(timeout=30)
    assert "cancelled_at" in outcome, outcome
    assert outcome["cancelled_at"] - asked < 1.0


def test_same_inputs_and_seed_give_the_same_transform(phantom_pair):
    fixed, moving, _, _ = phantom_pair
    a = engine.register(fixed, moving, seed=123).transform_fixed_to_moving_lps
    b = engine.register(fixed, moving, seed=123).transform_fixed_to_moving_lps
    np.testing.assert_array_equal(a.GetParameters(), b.GetParameters())
    np.testing.assert_array_equal(a.GetFixedParameters(), b.GetFixedParameters())


def test_provenance_records_what_is_needed_to_repeat_the_run(phantom_pair):
    fixed, moving, _, _ = phantom_pair
    result = engine.register(fixed, moving, preset="mr-ct-rigid", seed=99)
    prov = result.provenance()
    assert prov["seed"] == 99
    assert prov["preset"]["name"] == "mr-ct-rigid"
    assert prov["preset_sha256"] == presets.preset_sha256(presets.load_preset("mr-ct-rigid"))
    assert len(prov["inputs"]["fixed"]["sha256"]) == 64 and len(prov["inputs"]["moving"]["sha256"]) == 64
    assert {"SimpleITK", "numpy", "crossmodalreg"} <= set(prov["software"])
    assert prov["transform_direction"].startswith("fixed -> moving") and prov["transform_frame"] == "LPS"
    assert prov["timings_s"]["total"] > 0


def _image(arr, spacing=(1.0, 1.0, 1.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing[: img.GetDimension()])
    return img


def _blob(shape=(20, 24, 28), dtype=np.float32):
    z, y, x = np.indices(shape)
    return (np.exp(-((x - 14) ** 2 + (y - 12) ** 2 + (z - 10) ** 2) / 40.0) * 100).astype(dtype)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda f: (f, _image(_blob()[0])), "fixed image is 3D but moving image is 2D"),
        (lambda f: (f, _image(np.full((20, 24, 28), 7.0, np.float32))), "constant"),
        (lambda f: (f, _image(np.where(_blob() > 50, np.nan, _blob()).astype(np.float32))), "NaN"),
        (lambda f: (f, sitk.Compose([_image(_blob())] * 3)), "RGB"),
        (lambda f: (f, _image(_blob()[:2])), "at least 4 voxels"),
    ],
)
def test_bad_input_is_refused_with_a_message_saying_what_to_fix(make, match):
    fixed, moving = make(_image(_blob()))
    with pytest.raises(CrossModalRegError, match=match):
        engine.register(fixed, moving)


def test_empty_mask_is_refused():
    f = _image(_blob())
    with pytest.raises(CrossModalRegError, match="fixed mask is empty"):
        engine.register(f, f, fixed_mask=_image(np.zeros((20, 24, 28), np.uint8)))


def test_fewer_than_three_landmark_pairs_are_refused():
    f = _image(_blob())
    with pytest.raises(CrossModalRegError, match="at least 3 landmark pairs"):
        engine.register(f, f, fixed_landmarks=[[1, 2, 3], [4, 5, 6]], moving_landmarks=[[1, 2, 3], [4, 5, 6]])
    with pytest.raises(CrossModalRegError, match="collinear"):
        line = [[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3]]
        engine.register(f, f, fixed_landmarks=line, moving_landmarks=line)


def test_images_that_do_not_overlap_are_refused_before_optimising():
    f = _image(_blob())
    m = _image(_blob())
    m.SetOrigin((500.0, 0.0, 0.0))
    with pytest.raises(CrossModalRegError, match="do not overlap"):
        engine.register(f, m, initialization_method="none", rotation_search=False)


def test_landmark_initialisation_recovers_a_large_rotation_without_search(phantom_pair):
    fixed, moving, truth, targets = phantom_pair
    lm_fixed = targets[:6]
    lm_moving = np.array([truth.TransformPoint(tuple(p)) for p in lm_fixed]) + np.random.RandomState(0).normal(0, 1, (6, 3))
    result = engine.register(fixed, moving, fixed_landmarks=lm_fixed, moving_landmarks=lm_moving, rotation_search=False)
    assert result.initialization["method"] == "landmarks"
    assert simulation.target_registration_errors(result.transform_fixed_to_moving_lps, truth, targets).mean() < 1.0


def test_sanity_check_rejects_a_diverged_optimiser(phantom_pair):
    """A learning rate 1000 times too large sends the optimiser away: the run must fail loudly, not return."""
    fixed, moving, _, _ = phantom_pair
    with pytest.raises(RegistrationFailed) as info:
        engine.register(fixed, moving, rotation_search=False,
                        overrides={"stages.0.optimizer.learning_rate": 2000.0, "stages.0.optimizer.min_step": 100.0})
    assert info.value.report  # the reasons, for the user and the batch QC
    if info.value.result is not None:
        assert not info.value.result.sanity.passed


def test_sanity_check_finds_folding_and_degenerate_transforms():
    ref = _image(_blob((24, 24, 24)), (2.0, 2.0, 2.0))
    bs = sitk.BSplineTransformInitializer(ref, [3, 3, 3])
    params = np.zeros(bs.GetNumberOfParameters())
    n = len(params) // 3
    params[:n] = np.random.RandomState(1).normal(0, 30.0, n)  # x displacements far larger than the grid spacing
    bs.SetParameters(tuple(params))
    report = sanity.check_result(ref, ref, bs, initial_metric=-1.0, final_metric=-1.1)
    assert not report.passed and any("folds" in m for m in report.failures())
    mirror = sitk.AffineTransform(3)
    mirror.SetMatrix((-1, 0, 0, 0, 1, 0, 0, 0, 1))
    mirror.SetCenter(ref.TransformContinuousIndexToPhysicalPoint((11.5, 11.5, 11.5)))
    report = sanity.check_result(ref, ref, mirror, initial_metric=-1.0, final_metric=-1.1)
    assert any("degenerate" in m for m in report.failures())
    report = sanity.check_result(ref, ref, sitk.Euler3DTransform(), initial_metric=-1.0, final_metric=-0.5)
    assert any("worse" in m for m in report.failures())


def test_every_shipped_preset_is_valid_and_says_when_to_use_it():
    names = presets.available_presets()
    assert {"mr-ct-rigid", "mr-pet-rigid", "mr-t1-t2-rigid", "ct-ct-rigid", "mr-us-deformable",
            "histology-stain-affine-bspline"} <= set(names)
    for name in names:
        p = presets.load_preset(name)
        assert p["name"] == name and p["schema_version"] == presets.SCHEMA_VERSION
        assert len(p["when_to_use"]) > 80


@pytest.mark.parametrize("bad,match", [
    ({"stages": []}, "at least one stage"),
    ({"stages": [{"type": "similarity", "metric": {"name": "mattes"}}]}, "type must be one of"),
    ({"stages": [{"type": "rigid", "metric": {"name": "mi"}}]}, "metric.name"),
    ({"schema_version": 99}, "schema_version"),
])
def test_a_broken_preset_is_refused_with_the_key_to_fix(bad, match):
    p = presets.load_preset("multimodal-rigid")
    p.update(bad)
    with pytest.raises(CrossModalRegError, match=match):
        presets.load_preset(p)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(CrossModalRegError, match="multimodal-rigid"):
        presets.load_preset("no-such-preset")


def test_2d_deformable_histology_preset_runs_on_rgb_and_reduces_landmark_error(shared_data):
    import csv

    fixed = sitk.ReadImage(str(shared_data / "histology" / "Rat-Kidney_HE.jpg"))
    moving = sitk.ReadImage(str(shared_data / "histology" / "Rat-Kidney_PanCytokeratin.jpg"))

    def load(name, image):
        rows = list(csv.reader(open(shared_data / "histology" / name)))[1:70]
        return np.array([image.TransformContinuousIndexToPhysicalPoint((float(r[1]), float(r[2]))) for r in rows])

    fl, ml = load("Rat-Kidney_HE.csv", fixed), load("Rat-Kidney_PanCytokeratin.csv", moving)
    result = engine.register(fixed, moving, preset="histology-stain-affine-bspline")
    mapped = np.array([result.transform_fixed_to_moving_lps.TransformPoint(tuple(p)) for p in fl])
    px = fixed.GetSpacing()[0]
    before = np.linalg.norm(fl - ml, axis=1).mean() / px
    after = np.linalg.norm(mapped - ml, axis=1).mean() / px
    diagonal = float(np.hypot(*fixed.GetSize()))
    # measured (one thread, deterministic): 27.98 px -> 6.37 px mean, 0.453% of the 1405 px diagonal (the
    # benchmark's success criterion, 1%, would let a result 2.2 times worse pass)
    assert after < 0.3 * before, (before, after)
    assert after / diagonal < 0.006, after / diagonal


def test_existing_transform_initialisation_is_used_as_the_start(phantom_pair):
    """A user's rough alignment (here the truth off by 4 degrees and 6 mm) is refined, with no search."""
    fixed, moving, truth, targets = phantom_pair
    rough = sitk.Euler3DTransform(truth)
    rough.SetRotation(rough.GetAngleX() + np.deg2rad(4.0), rough.GetAngleY(), rough.GetAngleZ())
    rough.SetTranslation(tuple(np.array(rough.GetTranslation()) + [6.0, 0.0, 0.0]))
    assert simulation.target_registration_errors(rough, truth, targets).mean() > 3.0
    result = engine.register(fixed, moving, initial_transform_fixed_to_moving=rough)
    assert result.initialization["method"] == "transform" and "rotation_search" not in result.initialization
    assert simulation.target_registration_errors(result.transform_fixed_to_moving_lps, truth, targets).mean() < 1.0
