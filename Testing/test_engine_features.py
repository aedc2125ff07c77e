"""Features of the engine that a test must see work, each on a tiny synthetic pair with a known answer (issue 10):
masks, the moments start, the joint-histogram MI / mean-squares / correlation metrics, the `ct-ct-rigid`,
`multimodal-affine` and `mr-us-deformable` presets, and N4 bias correction.

Each test measures the feature's effect on the result, so that removing the feature turns it red (the mutation
list is in docs/validation.md, "How the tests are checked"); none reads provenance to decide."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from _cases import SHIFT_A, blobs_image, two_object_pair

from CrossModalRegLib import engine, preprocessing, presets, simulation

FAST_2D = {"stages.0.optimizer.iterations": 60}


@pytest.mark.parametrize("which", ["fixed_mask", "moving_mask"])
def test_a_mask_decides_which_object_is_aligned(which):
    """With a mask over object A (the fixed mask in fixed space, the moving mask over A where it is in the moving
    image), the result is A's shift; without one, a compromise pulled towards the bigger object B. Removing
    SetMetricFixedMask / SetMetricMovingMask from metrics.metric_method gives the unmasked answer."""
    fixed, moving, fixed_mask, moving_mask = two_object_pair()
    a_centre = (25.0, 50.0)
    unmasked = engine.register(fixed, moving, rotation_search=False, strict=False, overrides=FAST_2D)
    off = np.linalg.norm(np.array(unmasked.transform_fixed_to_moving_lps.TransformPoint(a_centre))
                         - np.add(a_centre, SHIFT_A))
    assert off > 2.0, off  # measured 3.6 mm: the unmasked optimum is not object A's shift
    mask = fixed_mask if which == "fixed_mask" else moving_mask
    masked = engine.register(fixed, moving, rotation_search=False, overrides=FAST_2D, **{which: mask})
    tx = masked.transform_fixed_to_moving_lps
    for p in ((20.0, 30.0), a_centre, (34.0, 70.0)):  # every point of A lands on A (rotation ~0)
        np.testing.assert_allclose(tx.TransformPoint(p), np.add(p, SHIFT_A), atol=0.3)  # measured 0.1 mm


def _centre_of_mass(img):
    arr = sitk.GetArrayViewFromImage(img).astype(float)
    idx = np.indices(arr.shape).reshape(arr.ndim, -1)[::-1].T  # (i, j) per voxel
    w = arr.ravel()
    mean_idx = (idx * w[:, None]).sum(axis=0) / w.sum()
    return np.array(img.TransformContinuousIndexToPhysicalPoint(tuple(mean_idx)))


def _geometric_centre(img):
    return np.array(img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in img.GetSize()]))


@pytest.mark.parametrize("method", ["moments", "geometry"])
def test_centre_initialisations_match_the_centres_they_name(method):
    """One blob far from each grid's centre, on two grids of different origin and spacing: the moments start maps
    the fixed centre of mass onto the moving one, the geometry start maps grid centre onto grid centre, and the
    two starts differ by 20 mm, so a moments start that centred the grids instead (or the reverse) fails."""
    fixed = blobs_image([(24, 30, 4)], size=80)
    moving = sitk.Resample(blobs_image([(60, 54, 4)], size=100), [90, 90], sitk.Transform(), sitk.sitkLinear,
                           (-5.0, 3.0), (1.2, 1.2), (1.0, 0.0, 0.0, 1.0), 0.0, sitk.sitkFloat32)
    preset = presets.load_preset("multimodal-rigid")
    preset["preprocessing"] = {}  # the centre of mass of the images themselves (rank equalisation moves it)
    result = engine.register(fixed, moving, preset=preset, initialization_method=method, rotation_search=False,
                             strict=False, overrides={"stages.0.optimizer.iterations": 1})
    start = result.initial_transform_fixed_to_moving_lps
    com = (_centre_of_mass(fixed), _centre_of_mass(moving))
    geo = (_geometric_centre(fixed), _geometric_centre(moving))
    assert np.linalg.norm((com[1] - com[0]) - (geo[1] - geo[0])) > 20.0  # the two answers are far apart
    want = com if method == "moments" else geo
    np.testing.assert_allclose(start.TransformPoint(tuple(want[0])), want[1], atol=0.05)
    assert result.initialization["method"] == method


def _texture(size=96, seed=0):
    rng = np.random.RandomState(seed)
    img = sitk.GetImageFromArray(rng.normal(size=(size, size)).astype(np.float32))
    img = sitk.SmoothingRecursiveGaussian(img, 3.0)
    return sitk.RescaleIntensity(img, 0.0, 100.0)


SHIFT = (3.5, -2.25)


@pytest.mark.parametrize("metric, relation", [
    ("mean_squares", lambda a: a),  # same intensities: what mean squares assumes
    ("correlation", lambda a: 0.5 * a + 20.0),  # a linear relation: what correlation assumes
    ("joint_histogram_mi", lambda a: 100.0 - a ** 1.5 / 10.0),  # inverted and non-linear: needs MI
])
def test_each_metric_recovers_a_known_shift_on_a_pair_it_suits(metric, relation):
    """The moving image is the fixed one's texture shifted by (3.5, -2.25) mm through ``relation``: every metric
    the schema accepts must be configured in metrics._set_metric and find the shift."""
    fixed = _texture()
    moving = sitk.Resample(fixed, fixed, sitk.TranslationTransform(2, tuple(-s for s in SHIFT)), sitk.sitkBSpline,
                           0.0, sitk.sitkFloat32)
    moving = sitk.GetImageFromArray(relation(sitk.GetArrayFromImage(moving)).astype(np.float32))
    overrides = dict(FAST_2D, **{"stages.0.metric.name": metric})
    result = engine.register(fixed, moving, rotation_search=False, overrides=overrides)
    tx = result.transform_fixed_to_moving_lps
    for p in ((30.0, 30.0), (48.0, 48.0), (66.0, 60.0)):
        np.testing.assert_allclose(tx.TransformPoint(p), np.add(p, SHIFT), atol=0.25)
    if metric == "mean_squares":
        assert 0.0 <= result.final_metric < result.initial_metric  # a squared difference, not an MI (< 0)
    elif metric == "correlation":
        assert -1.0 <= result.final_metric < -0.95  # ITK's correlation metric is -(normalised correlation)


BY_HAND = {  # each metric configured directly in SimpleITK, 20 bins, joint-PDF variance 3 (defaults are 32 and 1.5)
    "joint_histogram_mi": lambda m: m.SetMetricAsJointHistogramMutualInformation(20, 3.0),
    "mattes": lambda m: m.SetMetricAsMattesMutualInformation(20),
    "mean_squares": lambda m: m.SetMetricAsMeanSquares(),
    "correlation": lambda m: m.SetMetricAsCorrelation(),
}


@pytest.mark.parametrize("name", sorted(BY_HAND))
def test_a_metric_name_configures_that_itk_metric_with_the_presets_parameters(name):
    """Two mutual informations both find a shift, so the value tells them apart: the metric a name sets up gives
    the value ITK's metric of that name gives with the preset's bins (and joint-PDF variance), and no other's."""
    from CrossModalRegLib.metrics import metric_method

    fixed = _texture(64, seed=3)
    moving = sitk.Resample(fixed, fixed, sitk.TranslationTransform(2, (1.5, -1.0)), sitk.sitkLinear, 0.0,
                           sitk.sitkFloat32)

    def value(method):
        method.SetInterpolator(sitk.sitkLinear)
        method.SetInitialTransform(sitk.TranslationTransform(2))
        return method.MetricEvaluate(fixed, moving)

    def by_hand(n):
        method = sitk.ImageRegistrationMethod()
        BY_HAND[n](method)
        return value(method)

    ours = value(metric_method({"name": name, "bins": 20, "variance": 3.0}))
    assert ours == pytest.approx(by_hand(name), rel=1e-9)
    assert all(by_hand(other) != pytest.approx(ours, rel=1e-3) for other in BY_HAND if other != name)


@pytest.fixture(scope="module")
def phantom():
    """A 4 mm head phantom (45 x 54 x 45 voxels: each registration below takes about a second)."""
    model = simulation.head_phantom(spacing_mm=4.0)
    rng = np.random.RandomState(3)
    images = {kind: simulation.render(model, kind, rng=rng) for kind in ("ct", "t1")}
    centre = _geometric_centre(images["t1"])
    targets = simulation.points_in_mask(model.brain_mask(), 200, rng)
    return model, images, centre, targets, rng


NO_SEARCH = {"initialization.rotation_search.enabled": False, "initialization.orientation_search.enabled": False}


def _tre(tx, truth, targets):
    return simulation.target_registration_errors(tx, truth, targets).mean()


def test_ct_ct_rigid_recovers_a_known_rigid_move(phantom):
    model, images, centre, targets, rng = phantom
    truth = simulation.random_rigid_transform(np.random.RandomState(11), center=centre, max_angle_deg=8.0,
                                              max_translation_mm=8.0)
    moving = simulation.simulate_pair(simulation.render(model, "ct", rng=np.random.RandomState(12)), truth,
                                      spacing=(3.5, 3.5, 4.5), rng=np.random.RandomState(13))
    result = engine.register(images["ct"], moving, preset="ct-ct-rigid",
                             overrides=dict(NO_SEARCH, **{"stages.0.optimizer.iterations": 40}))
    before, after = _tre(sitk.Euler3DTransform(), truth, targets), _tre(result.transform_fixed_to_moving_lps, truth,
                                                                          targets)
    assert before > 3.0 and after < 0.3, (before, after)  # measured 5.2 -> 0.04 mm
    assert -1.0 <= result.final_metric < -0.9  # the preset's correlation metric (a Mattes MI value is below -1)


def test_multimodal_affine_recovers_a_known_scaling_and_shear(phantom):
    model, images, centre, targets, rng = phantom
    truth = sitk.AffineTransform(3)
    truth.SetCenter(tuple(centre))
    truth.SetMatrix((1.06, 0.02, 0.0, 0.0, 0.95, 0.0, 0.0, 0.0, 1.03))
    truth.SetTranslation((3.0, -2.0, 4.0))
    moving = simulation.simulate_pair(simulation.render(model, "t2", rng=np.random.RandomState(21)), truth,
                                      spacing=(3.5, 3.5, 4.5), rng=np.random.RandomState(22))
    overrides = dict(NO_SEARCH, **{"stages.0.optimizer.iterations": 30, "stages.1.optimizer.iterations": 40})
    result = engine.register(images["t1"], moving, preset="multimodal-affine", overrides=overrides)
    tx = result.transform_fixed_to_moving_lps
    before, after = _tre(sitk.Euler3DTransform(), truth, targets), _tre(tx, truth, targets)
    assert before > 4.0 and after < 0.8, (before, after)  # measured 6.0 -> 0.39 mm
    scales = np.linalg.svd(np.array(tx.GetMatrix()).reshape(3, 3), compute_uv=False)
    np.testing.assert_allclose(sorted(scales), sorted(np.linalg.svd(np.array(truth.GetMatrix()).reshape(3, 3),
                                                                   compute_uv=False)), atol=0.02)


@pytest.fixture(scope="module")
def deformed_pair(phantom):
    """MR-like fixed, T2-like moving (the preset's MR and a second contrast; no ultrasound simulator) under a
    known rigid offset after a smooth deformation of up to 6 mm."""
    model, images, centre, targets, _ = phantom
    rng = np.random.RandomState(31)
    rigid = simulation.random_rigid_transform(rng, center=centre, max_angle_deg=5.0, max_translation_mm=6.0)
    u, u_inv, _ = simulation.random_smooth_deformation(images["t1"], rng, amplitude_mm=6.0, control_spacing_mm=48.0,
                                                       spacing_mm=4.0)
    truth = sitk.CompositeTransform([rigid, u])
    inverse = sitk.CompositeTransform([u_inv, rigid.GetInverse()])
    moving = simulation.simulate_pair(simulation.render(model, "t2", rng=rng),
                                      simulation.TransformWithInverse(truth, inverse), spacing=(4.0, 4.0, 4.0),
                                      rng=rng)
    result = engine.register(images["t1"], moving, preset="mr-us-deformable",
                             overrides={"stages.0.optimizer.iterations": 30, "stages.1.optimizer.iterations": 15})
    return result, truth, targets


def test_mr_us_deformable_runs_and_improves_the_known_error(deformed_pair):
    result, truth, targets = deformed_pair
    tx = result.transform_fixed_to_moving_lps
    assert isinstance(tx, sitk.CompositeTransform) and tx.GetNumberOfTransforms() == 2
    assert isinstance(tx.GetNthTransform(1), sitk.BSplineTransform)
    before, after = _tre(sitk.Euler3DTransform(), truth, targets), _tre(tx, truth, targets)
    assert after < 0.7 * before, (before, after)
    assert result.sanity.passed


@pytest.mark.xfail(strict=True, reason="mr-us-deformable's L-BFGS-B stops after its first evaluation on both levels "
                   "('Gradient tolerance reached. Gradient tolerance is 1e-05'): the B-spline stays exactly zero. "
                   "Open finding of issue 10 for the preset's owner (measured on a 3 mm phantom: gradient_tolerance "
                   "1e-9 runs 77 iterations in 32 s and moves TRE only 3.01 -> 3.00 mm).")
def test_mr_us_deformable_bspline_stage_moves_its_control_points(deformed_pair):
    result, _, _ = deformed_pair
    coefficients = np.array(result.transform_fixed_to_moving_lps.GetNthTransform(1).GetParameters())
    assert np.abs(coefficients).max() > 0.1


def test_n4_bias_correction_as_a_preset_key_removes_most_of_a_known_bias(phantom):
    """A T1 phantom times a smooth bias field (up to exp(+-0.7)); the moving-image preprocessing of a preset with
    ``n4_bias_correction`` added (clipping, rank equalisation, then N4) must leave white matter about as uniform
    as the same preprocessing of the unbiased image, where without N4 the bias dominates its spread."""
    model = phantom[0]
    clean = simulation.render(model, "t1", rng=np.random.RandomState(41), bias_strength=0.0)
    biased = simulation.render(model, "t1", rng=np.random.RandomState(41), bias_strength=0.7)
    plain = presets.load_preset("mr-t1-t2-rigid")
    with_n4 = presets.apply_overrides(plain, {"preprocessing.moving.n4_bias_correction": {"shrink": 2,
                                                                                         "iterations": [30, 30]}})
    wm = sitk.GetArrayViewFromImage(model.labels) == simulation.WM

    def spread(img, preset):  # coefficient of variation of white matter after the preset's preprocessing
        v = sitk.GetArrayViewFromImage(preprocessing.preprocess(img, preset["preprocessing"]["moving"]))[wm]
        return float(v.std() / v.mean())

    reference, uncorrected, corrected = spread(clean, plain), spread(biased, plain), spread(biased, with_n4)
    # measured: 0.0254 (unbiased), 0.0373 (biased, no N4), 0.0231 (biased, N4)
    assert uncorrected > 1.3 * reference, (reference, uncorrected)
    assert corrected < 1.05 * reference and corrected < 0.7 * uncorrected, (reference, uncorrected, corrected)
