"""Known answers of the validation measures (pure numeric core: SimpleITK + numpy, no MRML)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from CrossModalRegLib.errors import CrossModalRegError
from CrossModalRegLib.validation import (
    LandmarkSet,
    compare_label_maps,
    error_statistics,
    jacobian_determinant_image,
    jacobian_statistics,
    landmark_errors,
    load_profile,
    profile_from_dict,
    resolve_fixed_to_moving,
    validate,
)

RNG = np.random.default_rng(20261124)


def _rigid(angles=(0.1, -0.05, 0.2), translation=(5.0, -3.0, 8.0), center=(10.0, 20.0, -5.0)):
    tx = sitk.Euler3DTransform()
    tx.SetCenter(center)
    tx.SetRotation(*angles)
    tx.SetTranslation(translation)
    return tx


def _landmarks(n=12):
    pts = RNG.uniform(-60, 60, size=(n, 3))
    return [f"L{i}" for i in range(n)], pts


# ------------------------------------------------------------------------------------------------ landmarks
def test_identity_transform_gives_tre_equal_to_the_landmark_distances():
    labels, fixed = _landmarks()
    moving = fixed + RNG.normal(0, 3, size=fixed.shape)
    res = landmark_errors(LandmarkSet(labels, fixed), LandmarkSet(labels, moving), sitk.Transform(3, sitk.sitkIdentity))
    expected = np.linalg.norm(fixed - moving, axis=1)
    np.testing.assert_allclose(res.tre_after_mm, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.tre_before_mm, expected, rtol=0, atol=1e-12)


def test_known_rigid_transform_applied_to_landmarks_gives_tre_zero():
    labels, fixed = _landmarks()
    tx = _rigid()
    moving = np.array([tx.TransformPoint(tuple(p)) for p in fixed])  # fixed -> moving, LPS
    res = landmark_errors(LandmarkSet(labels, fixed), LandmarkSet(labels[::-1], moving[::-1]), tx)  # order-free
    assert res.tre_after_mm.max() < 1e-9
    assert res.tre_before_mm.min() > 1.0


def test_moving_to_fixed_direction_is_inverted_before_measuring():
    labels, fixed = _landmarks()
    tx = _rigid()
    moving = np.array([tx.TransformPoint(tuple(p)) for p in fixed])
    report = validate(tx.GetInverse(), direction="moving-to-fixed", fixed_landmarks=LandmarkSet(labels, fixed),
                      moving_landmarks=LandmarkSet(labels, moving))
    assert report.values["tre_max_mm"] < 1e-9


def test_a_transform_without_inverse_given_moving_to_fixed_is_refused_naming_the_direction_needed():
    bspline = sitk.BSplineTransformInitializer(sitk.Image(8, 8, 8, sitk.sitkFloat32), (4, 4, 4))
    with pytest.raises(CrossModalRegError, match="fixed-to-moving direction"):
        resolve_fixed_to_moving(bspline, "moving-to-fixed")


def test_statistics_of_errors_match_their_definitions():
    e = [1.0, 2.0, 2.0, 3.0, 10.0]
    st = error_statistics(e)
    assert st["mean"] == pytest.approx(3.6)
    assert st["sd"] == pytest.approx(np.std(e, ddof=1))
    assert st["median"] == 2.0
    assert st["rms"] == pytest.approx(math.sqrt(np.mean(np.square(e))))
    assert st["p95"] == pytest.approx(np.percentile(e, 95))
    assert st["max"] == 10.0
    assert error_statistics([4.0])["sd"] is None  # not 0: one value has no spread


def test_fre_is_reported_apart_from_tre_and_tre_is_set_against_fle():
    labels, fixed = _landmarks(6)
    offsets = np.array([[0.2, 0, 0]] * 3 + [[0, 3.0, 0]] * 3)
    report = validate(sitk.Transform(3, sitk.sitkIdentity), fixed_landmarks=LandmarkSet(labels, fixed),
                      moving_landmarks=LandmarkSet(labels, fixed + offsets), driving_labels=labels[:3], fle_mm=1.0)
    assert report.values["fre_mean_mm"] == pytest.approx(0.2)
    assert report.values["tre_mean_mm"] == pytest.approx(3.0)
    assert report.values["fre_n"] == 3 and report.values["tre_n"] == 3
    rows = {r["measure"]: r for r in report.summary_rows()}
    assert rows["tre_vs_fle"]["result"] == "above annotator variability"  # 3 mm > sqrt(2) x 1 mm
    assert [r["within_fle"] for r in report.landmark_rows()] == ["yes"] * 3 + ["no"] * 3


def test_mismatched_landmark_labels_are_named_in_the_error():
    with pytest.raises(CrossModalRegError, match=r"\['c'\] only in fixed; \['d'\] only in moving"):
        landmark_errors(LandmarkSet(["a", "b", "c"], np.zeros((3, 3))), LandmarkSet(["a", "b", "d"], np.ones((3, 3))),
                        sitk.Transform(3, sitk.sitkIdentity))


# ------------------------------------------------------------------------------------------------ overlap
def _ball(center_mm, radius_mm, size=(96, 96, 96), spacing=0.5, label=1):
    idx = np.indices(size[::-1]).astype(float) * spacing  # k, j, i
    z, y, x = idx
    c = center_mm
    arr = (((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) <= radius_mm ** 2).astype(np.uint8) * label
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((spacing,) * 3)
    return img


def test_dice_and_hausdorff_of_shifted_spheres_match_their_analytic_values():
    r, d = 10.0, 4.0  # radius and shift along x, mm; the shift is a whole number of 0.5 mm voxels
    fixed = _ball((24.0, 24.0, 24.0), r)
    moving = _ball((24.0 + d, 24.0, 24.0), r)
    comp = compare_label_maps(fixed, moving, sitk.Transform(3, sitk.sitkIdentity))
    row = comp.rows[0]
    v_ball = 4.0 / 3.0 * math.pi * r ** 3
    v_cap_pair = math.pi * (4 * r + d) * (2 * r - d) ** 2 / 12.0  # intersection of two balls
    # A digital ball of radius 20 voxels has a volume within 0.5 % of 4/3 pi r^3 (lattice-point error of
    # order r^(3/2) voxels); Dice is a ratio of such volumes, so 1 % is a safe bound.
    assert row.fixed_volume_mm3 == pytest.approx(v_ball, rel=0.01)
    assert row.dice_after == pytest.approx(v_cap_pair / v_ball, abs=0.01)
    # The shift is exactly 8 voxels: the pole opposite the shift is exactly d from the other ball.
    assert row.hausdorff_mm == pytest.approx(d, abs=1e-5)
    # Mean symmetric surface distance: mean over the sphere of | |p - c_B| - r |; surface voxel centres lie
    # within half a voxel diagonal (0.43 mm) of the true sphere, hence the tolerance.
    cos_t = np.linspace(-1, 1, 200001)
    mssd = np.mean(np.abs(np.sqrt(r * r + d * d - 2 * r * d * cos_t) - r))
    assert row.mssd_mm == pytest.approx(mssd, abs=0.45)
    assert 0 < row.hd95_mm <= d + 1e-5


def test_overlap_measures_agree_with_simpleitk_filters():
    fixed = _ball((20.0, 22.0, 24.0), 9.0, label=3)
    fixed = sitk.Maximum(fixed, _ball((30.0, 24.0, 20.0), 6.0, label=5))
    tx = _rigid(angles=(0.05, 0.02, -0.04), translation=(1.3, -0.7, 2.1), center=(24.0, 24.0, 24.0))
    moving = sitk.Resample(fixed, fixed, tx.GetInverse(), sitk.sitkNearestNeighbor, 0)
    comp = compare_label_maps(fixed, moving, sitk.Transform(3, sitk.sitkIdentity))
    lom = sitk.LabelOverlapMeasuresImageFilter()
    lom.Execute(fixed, moving)
    hd = sitk.HausdorffDistanceImageFilter()
    for row in comp.rows:
        assert row.dice_after == pytest.approx(lom.GetDiceCoefficient(row.label), abs=1e-12)
        assert row.jaccard_after == pytest.approx(lom.GetJaccardCoefficient(row.label), abs=1e-12)
        hd.Execute(fixed == row.label, moving == row.label)
        assert row.hausdorff_mm == pytest.approx(hd.GetHausdorffDistance(), abs=1e-6)


def test_a_label_without_counterpart_is_missing_not_zero():
    fixed = sitk.Maximum(_ball((20.0, 20.0, 20.0), 6.0, label=1), _ball((34.0, 34.0, 34.0), 5.0, label=2))
    moving = _ball((20.0, 20.0, 20.0), 6.0, label=1)
    report = validate(sitk.Transform(3, sitk.sitkIdentity), fixed_labels=fixed, moving_labels=moving)
    row = {r["label"]: r for r in report.segment_rows()}[2]
    assert row["dice_after"] is None and row["hausdorff_mm"] is None and row["mssd_mm"] is None
    assert "absent from the moving" in row["note"]
    assert report.values["dice_mean"] == pytest.approx(1.0)  # the missing label is not averaged in as 0


def test_label_maps_that_do_not_overlap_under_the_transform_are_refused():
    fixed = _ball((20.0, 20.0, 20.0), 6.0)
    with pytest.raises(CrossModalRegError, match="does not overlap"):
        compare_label_maps(fixed, fixed, sitk.TranslationTransform(3, (500.0, 0.0, 0.0)))


# ------------------------------------------------------------------------------------------------ jacobian
def test_jacobian_of_an_affine_transform_equals_its_determinant_everywhere_on_an_oblique_grid():
    grid = sitk.Image(21, 17, 13, sitk.sitkUInt8)
    grid.SetSpacing((1.0, 1.5, 2.5))
    th = 0.4
    grid.SetDirection((math.cos(th), -math.sin(th), 0.0, math.sin(th), math.cos(th), 0.0, 0.0, 0.0, 1.0))
    grid.SetOrigin((3.0, -7.0, 11.0))
    a = np.array([[1.1, 0.2, 0.05], [0.1, 0.9, 0.3], [-0.2, 0.1, 1.3]])
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(a.ravel()))
    tx.SetTranslation((4.0, -2.0, 1.0))
    jac = sitk.GetArrayFromImage(jacobian_determinant_image(tx, grid))
    assert jac.shape == (13, 17, 21)
    np.testing.assert_allclose(jac, np.linalg.det(a), rtol=0, atol=1e-6)  # float32 map


def _fold_transform(amplitude=15.0, sigma=5.0, n=49):
    """Displacement u_x = amplitude * exp(-r^2 / 2 sigma^2) about the grid centre: J = 1 + du_x/dx is
    1 - (amplitude / sigma) e^(-1/2) < 0 at x = centre + sigma (a fold)."""
    grid = sitk.Image(n, n, n, sitk.sitkFloat32)
    c = (n - 1) / 2.0
    z, y, x = np.indices((n, n, n)).astype(float) - c
    field = np.zeros((n, n, n, 3))
    field[..., 0] = amplitude * np.exp(-(x * x + y * y + z * z) / (2 * sigma * sigma))
    img = sitk.GetImageFromArray(field, isVector=True)
    return sitk.DisplacementFieldTransform(img), grid, c


def test_a_planted_fold_is_found_where_it_was_planted():
    tx, grid, c = _fold_transform()
    jac_img = jacobian_determinant_image(tx, grid)
    st = jacobian_statistics(jac_img)
    expected_min = 1 - 15.0 / 5.0 * math.exp(-0.5)  # -0.82
    # central differences on a 1 mm grid: truncation h^2/6 |u'''| = 0.024 at x = sigma
    assert st.min == pytest.approx(expected_min, abs=0.05)
    assert st.fraction_folding > 0
    k, j, i = np.unravel_index(np.argmin(sitk.GetArrayFromImage(jac_img)), grid.GetSize()[::-1])
    assert abs(i - (c + 5.0)) <= 1.0 and abs(j - c) <= 1.0 and abs(k - c) <= 1.0
    plaus = load_profile("plausibility")
    report = validate(tx, fixed_labels=sitk.Cast(grid + 1, sitk.sitkUInt8), moving_labels=sitk.Cast(grid + 1,
                      sitk.sitkUInt8), profile=plaus)
    assert report.verdict == "fail"
    assert report.jacobian_image is not None


# ------------------------------------------------------------------------------------------------ profiles
def test_bundled_profiles_load_and_a_criterion_without_its_measure_is_not_evaluated():
    neuro = load_profile("neuro")
    labels, fixed = _landmarks(4)
    report = validate(sitk.Transform(3, sitk.sitkIdentity), fixed_landmarks=LandmarkSet(labels, fixed),
                      moving_landmarks=LandmarkSet(labels, fixed + 0.5), profile=neuro)
    results = {r.criterion.measure: r.result for r in report.acceptance}
    assert results["tre_mean_mm"] == "pass"
    assert results["dice_mean"] == "not evaluated"
    assert report.verdict == "incomplete"
    row = next(r for r in report.summary_rows() if r["measure"] == "dice_mean")
    assert row["value"] is None and "no label maps" in row["note"]


def test_a_malformed_profile_is_refused_naming_the_entry():
    bad = {"schema": "crossmodalreg-validation-profile", "schema_version": 1, "name": "x", "version": "1",
           "criteria": [{"measure": "tre_mean_mm", "comparison": "=<", "threshold": 2}]}
    with pytest.raises(CrossModalRegError, match="criterion 1: comparison"):
        profile_from_dict(bad)
