"""Real data: the AAL atlas (116 labels) on colin27 moved by a known rigid transform."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from CrossModalRegLib.validation import validate
from CrossModalRegLib.validation.overlap import resample_labels


@pytest.fixture(scope="module")
def aal_case(shared_data):
    aal = sitk.ReadImage(str(shared_data / "colin27" / "aal.nii.gz"))
    t1 = sitk.ReadImage(str(shared_data / "colin27" / "ch2bet.nii.gz"))
    tx = sitk.Euler3DTransform()  # fixed -> moving, LPS
    tx.SetCenter((0.0, -18.0, 18.0))
    tx.SetRotation(0.06, -0.04, 0.09)
    tx.SetTranslation((6.0, -4.0, 3.0))
    # moving(q) = aal(T^-1(q)): a fixed point p corresponds to the moving point T(p)
    moving_labels = sitk.Resample(aal, aal, tx.GetInverse(), sitk.sitkNearestNeighbor, 0)
    moving_t1 = sitk.Resample(t1, t1, tx.GetInverse(), sitk.sitkLinear, 0.0)
    # validated as the user would hand in the inverse registration result (moving -> fixed)
    report = validate(tx.GetInverse(), direction="moving-to-fixed", fixed=t1, moving=moving_t1, fixed_labels=aal,
                      moving_labels=moving_labels, jacobian="never")
    return aal, moving_labels, tx, report


def test_aal_dice_is_low_before_and_near_one_after_applying_the_inverse(aal_case):
    *_, report = aal_case
    assert report.values["labels_compared"] == 116
    assert report.values["dice_before_mean"] < 0.6
    # Two nearest-neighbour resamplings of a rotated atlas lose at most a voxel layer here and there.
    assert report.values["dice_mean"] > 0.98
    assert report.values["dice_min"] > 0.95
    assert report.values["mssd_max_mm"] < 0.2
    assert report.values["nmi_after"] > report.values["nmi_before"]


def test_aal_values_agree_with_simpleitk_filters_to_1e_6(aal_case):
    aal, moving_labels, tx, report = aal_case
    warped = resample_labels(moving_labels, aal, tx)
    lom = sitk.LabelOverlapMeasuresImageFilter()
    lom.Execute(aal, warped)
    rows = report.labels.rows
    dice_err = max(abs(r.dice_after - lom.GetDiceCoefficient(r.label)) for r in rows)
    assert dice_err < 1e-6
    before = sitk.LabelOverlapMeasuresImageFilter()
    before.Execute(aal, sitk.Resample(moving_labels, aal, sitk.Transform(3, sitk.sitkIdentity),
                                      sitk.sitkNearestNeighbor, 0))
    assert max(abs(r.dice_before - before.GetDiceCoefficient(r.label)) for r in rows) < 1e-6
    hd = sitk.HausdorffDistanceImageFilter()
    for r in rows[::12]:  # SimpleITK's filter is slow on the whole volume: every 12th label
        hd.Execute(aal == r.label, warped == r.label)
        assert abs(r.hausdorff_mm - hd.GetHausdorffDistance()) < 1e-6
    volumes = np.array([r.fixed_volume_mm3 for r in rows])
    counts = np.bincount(sitk.GetArrayViewFromImage(aal).ravel(), minlength=117)[1:117]
    np.testing.assert_array_equal(volumes, counts * 1.0)  # 1 mm isotropic voxels
