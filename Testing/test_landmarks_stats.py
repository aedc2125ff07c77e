"""Landmark statistics, point-based registration and expected TRE: numbers against known truth (pure numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from CrossModalRegLib.errors import CrossModalRegError
from CrossModalRegLib.landmarks import (
    expected_tre,
    expected_tre_map,
    icc_2_1,
    landmark_statistics,
    register_points,
    repeatability,
)
from CrossModalRegLib.landmarks.fileio import LandmarkSet
from CrossModalRegLib.landmarks.pairing import pair_landmarks

N_ANNOTATORS, N_LANDMARKS, SIGMA_MM = 5, 20, 1.0
TRUE_FLE_MM = SIGMA_MM * math.sqrt(3.0)  # RMS length of an isotropic 3D error vector
ANNOTATORS = [f"A{i + 1}" for i in range(N_ANNOTATORS)]
LABELS = [f"L{i + 1:02d}" for i in range(N_LANDMARKS)]


def _simulate(seed, *, bias=None, outliers=()):
    """5 annotators x 20 landmarks in a 100 mm cube, isotropic N(0, 1 mm) per axis (true FLE = sqrt(3) mm)."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(-50, 50, size=(N_LANDMARKS, 3))
    pos = truth[None] + rng.normal(0, SIGMA_MM, size=(N_ANNOTATORS, N_LANDMARKS, 3))
    if bias is not None:
        pos[bias[0]] += np.asarray(bias[1])
    for a, i, shift in outliers:
        pos[a, i] += shift
    return truth, pos


def test_fle_estimate_is_within_10_percent_of_the_true_localisation_error():
    # With 5 x 20 3D points the estimate has 240 degrees of freedom: relative SD ~ 1/sqrt(480) = 4.6%, so about
    # 97% of such data sets land within 10% (checked over 40 data sets below); this one is a typical draw.
    _, pos = _simulate(2)
    st = landmark_statistics(pos, annotators=ANNOTATORS, labels=LABELS)
    print(f"FLE estimate {st.fle_overall:.4f} mm, truth {TRUE_FLE_MM:.4f} mm")
    assert st.fle_overall == pytest.approx(TRUE_FLE_MM, rel=0.10)
    assert not st.outlier.any() and not st.biased.any()
    # The uncorrected RMS distance to the consensus underestimates by sqrt(4/5) (-11%): the correction matters.
    uncorrected = math.sqrt(np.nanmean(st.rms_to_consensus ** 2))
    assert uncorrected == pytest.approx(st.fle_overall * math.sqrt(4 / 5), rel=1e-9)


def test_fle_estimate_is_unbiased_and_mostly_within_10_percent_over_many_simulations():
    estimates = np.array([landmark_statistics(_simulate(s)[1], annotators=ANNOTATORS, labels=LABELS).fle_overall
                          for s in range(100, 140)])
    # RMS of 40 estimates vs truth: standard error ~0.7% over 40 x 240 degrees of freedom
    assert math.sqrt(np.mean(estimates ** 2)) == pytest.approx(TRUE_FLE_MM, rel=0.03)
    within = np.mean(np.abs(estimates / TRUE_FLE_MM - 1) < 0.10)
    print(f"{within:.0%} of 40 simulated sessions within 10% of the true FLE")
    assert within >= 0.9


def test_planted_bias_is_named_and_others_are_not():
    _, pos = _simulate(2, bias=(3, [2.0, 0.0, -1.0]))
    st = landmark_statistics(pos, annotators=ANNOTATORS, labels=LABELS)
    assert st.biased_annotators == ["A4"]
    np.testing.assert_allclose(st.annotator_bias[3], [2.0, 0.0, -1.0], atol=0.6)
    assert st.annotator_bias_pvalue[3] < 1e-4
    assert np.all(st.annotator_bias_pvalue[[0, 1, 2, 4]] > 1e-3)


def test_planted_outliers_are_flagged_and_left_out_of_the_consensus():
    planted = [(0, 4, [12.0, 0, 0]), (2, 11, [0, -9.0, 6.0]), (4, 17, [0, 0, 15.0])]
    truth, pos = _simulate(3, outliers=planted)
    st = landmark_statistics(pos, annotators=ANNOTATORS, labels=LABELS)
    assert sorted(st.outlier_points) == sorted([("A1", "L05"), ("A3", "L12"), ("A5", "L18")])
    # Their landmarks' consensus is as good as the others' (outliers excluded) and the FLE is not inflated.
    err = np.linalg.norm(st.consensus - truth, axis=1)
    assert err.max() < 1.5
    assert st.fle_overall == pytest.approx(TRUE_FLE_MM, rel=0.10)
    assert st.max_deviation_annotator[4] == "A1" and st.max_deviation[4] > 10


def test_absolute_outlier_distance_flags_points_beyond_it():
    _, pos = _simulate(4, outliers=[(1, 0, [4.5, 0, 0])])
    st = landmark_statistics(pos, annotators=ANNOTATORS, labels=LABELS, outlier_distance=4.0, outlier_factor=None)
    assert ("A2", "L01") in st.outlier_points
    assert st.outlier_threshold == 4.0


def test_median_consensus_resists_an_unflagged_gross_error():
    truth, pos = _simulate(5, outliers=[(0, 0, [30.0, 0, 0])])
    st = landmark_statistics(pos, annotators=ANNOTATORS, labels=LABELS, consensus="median",
                             exclude_outliers=False, outlier_factor=None)
    assert np.linalg.norm(st.consensus[0] - truth[0]) < 1.5


def test_icc_2_1_matches_shrout_and_fleiss_1979_table_2():
    # Shrout & Fleiss (1979), Psychol. Bull. 86:420, Table 2: 6 targets x 4 judges; ICC(2,1) = 0.29.
    ratings = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
    assert icc_2_1(ratings) == pytest.approx(0.29, abs=0.005)
    # and against an independent formulation: variance components of the two-way ANOVA
    n, k = ratings.shape
    resid = ratings - ratings.mean(1, keepdims=True) - ratings.mean(0, keepdims=True) + ratings.mean()
    sigma_e = (resid ** 2).sum() / ((n - 1) * (k - 1))
    sigma_t = (k * ratings.mean(1).var(ddof=1) - sigma_e) / k
    sigma_j = (n * ratings.mean(0).var(ddof=1) - sigma_e) / n
    assert icc_2_1(ratings) == pytest.approx(sigma_t / (sigma_t + sigma_j + sigma_e), rel=1e-12)


def test_icc_per_axis_is_high_for_landmarks_spread_far_beyond_the_noise():
    _, pos = _simulate(6)
    st = landmark_statistics(pos, annotators=ANNOTATORS, labels=LABELS)
    # between-landmark variance (100^2/12 mm^2) vs noise 1 mm^2: ICC ~ 1 - 12/10^4
    assert np.all(st.icc_per_axis > 0.995) and np.all(st.icc_per_axis < 1.0)


def test_repeatability_recovers_intra_annotator_error():
    rng = np.random.default_rng(7)
    truth = rng.uniform(-50, 50, size=(1, 200, 3))
    first = truth + rng.normal(0, 0.5, size=truth.shape)
    second = truth + rng.normal(0, 0.5, size=truth.shape)
    rep = repeatability(first, second, annotators=["A1"])
    assert rep.n_pairs[0] == 200
    assert rep.intra_fle[0] == pytest.approx(0.5 * math.sqrt(3), rel=0.10)


def test_annotator_without_points_is_named():
    _, pos = _simulate(8)
    pos[2] = np.nan
    with pytest.raises(CrossModalRegError, match="annotator 'A3' has no points on the fixed image"):
        landmark_statistics(pos, annotators=ANNOTATORS, labels=LABELS, image="fixed")


def test_duplicate_labels_are_named():
    _, pos = _simulate(8)
    with pytest.raises(CrossModalRegError, match="duplicate landmark labels \\['L01'\\]"):
        landmark_statistics(pos, annotators=ANNOTATORS, labels=["L01"] + LABELS[:-1])


# ------------------------------------------------------------------------------------------- registration
def _random_affine(rng, dim):
    a = np.eye(dim) + rng.normal(0, 0.1, size=(dim, dim))
    return a, rng.normal(0, 10, size=dim)


@pytest.mark.parametrize("model", ["rigid", "similarity", "affine"])
def test_exact_points_recover_the_transform_fixed_to_moving(model):
    rng = np.random.default_rng(11)
    fixed = rng.uniform(-50, 50, size=(12, 3))
    if model == "affine":
        a, t = _random_affine(rng, 3)
    else:
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        a = q * np.sign(np.linalg.det(q)) * (1.3 if model == "similarity" else 1.0)
        t = np.array([5.0, -7.0, 2.0])
    moving = fixed @ a.T + t
    res = register_points(fixed, moving, model=model)
    np.testing.assert_allclose(res.matrix_fixed_to_moving[:3, :3], a, atol=1e-9)
    np.testing.assert_allclose(res.matrix_fixed_to_moving[:3, 3], t, atol=1e-8)
    assert res.fre_rms < 1e-8 and res.loo_tre_rms < 1e-8
    # the SimpleITK transform maps fixed points to moving points (ITK direction)
    target = np.array([3.0, -4.0, 12.0])
    np.testing.assert_allclose(res.transform_fixed_to_moving.TransformPoint(tuple(target)), a @ target + t,
                               atol=1e-8)


def test_tps_interpolates_and_its_leave_one_out_tre_is_small_on_a_smooth_warp():
    rng = np.random.default_rng(12)
    fixed = rng.uniform(0, 100, size=(40, 2))
    warp = lambda p: p + 3.0 * np.sin(p[:, ::-1] / 40.0)  # noqa: E731 - smooth test deformation
    res = register_points(fixed, warp(fixed), model="tps", units="pixel")
    assert res.fre_rms < 1e-6
    aff = register_points(fixed, warp(fixed), model="affine", units="pixel")
    assert res.loo_tre_rms < 0.5 * aff.loo_tre_rms
    assert res.loo_tre_rms < 0.5


def test_fre_and_loo_tre_with_noise_follow_theory_for_rigid():
    rng = np.random.default_rng(13)
    fixed = rng.uniform(-50, 50, size=(30, 3))
    moving = fixed + rng.normal(0, 1.0, size=fixed.shape)
    res = register_points(fixed, moving, model="rigid")
    # E[FRE^2] = (1 - 2/N) FLE^2 for rigid (Fitzpatrick 1998); FLE^2 = 3 mm^2
    assert res.fre_rms == pytest.approx(math.sqrt((1 - 2 / 30) * 3.0), rel=0.15)
    assert res.loo_tre_rms > res.fre_rms


def test_collinear_points_are_rejected_with_a_fix():
    line = np.outer(np.arange(6.0), [1.0, 2.0, 0.5])
    with pytest.raises(CrossModalRegError, match="collinear.*add landmarks off that line"):
        register_points(line, line + 1.0, model="rigid")
    plane = np.column_stack([np.random.default_rng(0).uniform(size=(8, 2)), np.zeros(8)])
    with pytest.raises(CrossModalRegError, match="coplanar"):
        register_points(plane, plane, model="affine")


def test_too_few_points_says_how_many_are_needed():
    with pytest.raises(CrossModalRegError, match="needs at least 4 paired landmarks, got 3"):
        register_points(np.eye(3), np.eye(3), model="affine")


def test_one_sided_landmarks_are_named():
    fixed = LandmarkSet(["L1", "L2", "L3"], np.arange(9.).reshape(3, 3), source="fixed.csv")
    moving = LandmarkSet(["L2", "L1"], np.arange(6.).reshape(2, 3), source="moving.csv")
    with pytest.raises(CrossModalRegError, match=r"\['L3'\] only in fixed \(fixed.csv\)"):
        pair_landmarks(fixed, moving)
    pairs = pair_landmarks(fixed, moving, unpaired="skip")
    assert pairs.labels == ["L1", "L2"] and pairs.unpaired == ["L3"]
    np.testing.assert_array_equal(pairs.moving[0], [3.0, 4.0, 5.0])  # L1 is the moving file's second row
    np.testing.assert_array_equal(pairs.fixed[0], [0.0, 1.0, 2.0])


# ------------------------------------------------------------------------------------------- expected TRE
def _monte_carlo_tre(fiducials, targets, fle_fixed, fle_moving, trials, rng):
    """RMS TRE of rigid point registration with isotropic noise on both point sets (the truth is identity)."""
    dim = fiducials.shape[1]
    sq = np.zeros(len(targets))
    for _ in range(trials):
        f = fiducials + rng.normal(0, fle_fixed / math.sqrt(dim), size=fiducials.shape)
        m = fiducials + rng.normal(0, fle_moving / math.sqrt(dim), size=fiducials.shape)
        res = register_points(f, m, model="rigid", leave_one_out=False)
        sq += np.sum((res.map_fixed_to_moving(targets) - targets) ** 2, axis=1)
    return np.sqrt(sq / trials)


def test_expected_tre_agrees_with_monte_carlo_within_10_percent_3d():
    rng = np.random.default_rng(21)
    fiducials = rng.uniform(-40, 40, size=(8, 3)) * [1.0, 0.6, 0.3]  # anisotropic layout
    targets = np.array([[0.0, 0.0, 0.0], [60.0, 0.0, 0.0], [0.0, 50.0, 30.0], [-80.0, 40.0, -20.0]])
    fle_f, fle_m = 1.0, 1.5
    expected = expected_tre(fiducials, targets, math.hypot(fle_f, fle_m))
    simulated = _monte_carlo_tre(fiducials, targets, fle_f, fle_m, 2000, rng)
    print("expected TRE", np.round(expected, 3), "Monte Carlo", np.round(simulated, 3))
    np.testing.assert_allclose(expected, simulated, rtol=0.10)
    assert expected[3] > 2 * expected[0]  # far targets are worse: the layout matters


def test_expected_tre_agrees_with_monte_carlo_within_10_percent_2d():
    rng = np.random.default_rng(22)
    fiducials = rng.uniform(0, 100, size=(6, 2))
    targets = np.array([fiducials.mean(0), [250.0, 10.0]])
    expected = expected_tre(fiducials, targets, 2.0)
    simulated = _monte_carlo_tre(fiducials, targets, 2.0, 0.0, 2000, rng)
    np.testing.assert_allclose(expected, simulated, rtol=0.10)
    # at the centroid: FLE / sqrt(N)
    assert expected[0] == pytest.approx(2.0 / math.sqrt(6), rel=1e-9)


def test_expected_tre_map_matches_point_evaluation_on_an_oblique_grid():
    import SimpleITK as sitk

    rng = np.random.default_rng(23)
    img = sitk.Image([9, 7, 5], sitk.sitkFloat32)
    img.SetSpacing((2.0, 3.0, 4.0))
    img.SetOrigin((-10.0, 5.0, 2.0))
    img.SetDirection(sitk.Euler3DTransform((0, 0, 0), 0.2, -0.3, 0.4).GetMatrix())
    fiducials = rng.uniform(-20, 20, size=(6, 3))
    tre_img = expected_tre_map(fiducials, img, 1.2)
    arr = sitk.GetArrayFromImage(tre_img)
    for idx in [(0, 0, 0), (8, 6, 4), (3, 2, 1)]:
        p = np.array(img.TransformIndexToPhysicalPoint(idx))
        assert arr[idx[2], idx[1], idx[0]] == pytest.approx(expected_tre(fiducials, p[None], 1.2)[0], rel=1e-5)


def test_bias_detection_over_many_sessions_names_the_biased_annotator_and_no_one_else():
    exact, false_alarm = 0, 0
    for s in range(40):
        _, pos = _simulate(3000 + s, bias=(1, [0.0, 2.5, 0.0]))
        exact += landmark_statistics(pos, annotators=ANNOTATORS, labels=LABELS).biased_annotators == ["A2"]
        _, pos = _simulate(4000 + s)
        false_alarm += bool(landmark_statistics(pos, annotators=ANNOTATORS, labels=LABELS).biased_annotators)
    print(f"biased annotator named alone in {exact}/40 sessions; false alarms in {false_alarm}/40 unbiased ones")
    assert exact >= 36 and false_alarm <= 2


def test_bias_test_works_when_one_axis_never_varies():
    # a 3D protocol on a single slice: every z is 0; the bias test runs in the plane instead of failing
    _, pos = _simulate(9, bias=(0, [2.0, 0.0, 0.0]))
    pos[..., 2] = 0.0
    st = landmark_statistics(pos, annotators=ANNOTATORS, labels=LABELS)
    assert st.biased_annotators == ["A1"]
