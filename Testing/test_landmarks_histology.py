"""Point-based registration of the real ANHIR rat-kidney landmarks (H&E fixed, PanCytokeratin moving), in pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from CrossModalRegLib.cli import main as cli_main
from CrossModalRegLib.errors import CrossModalRegError
from CrossModalRegLib.landmarks import pair_landmarks, read_anhir_csv, register_points


@pytest.fixture
def histology(shared_data):
    folder = shared_data / "histology"
    fixed = read_anhir_csv(str(folder / "Rat-Kidney_HE.csv"))
    moving = read_anhir_csv(str(folder / "Rat-Kidney_PanCytokeratin.csv"))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(folder / "Rat-Kidney_HE.jpg"))
    reader.ReadImageInformation()
    width, height = reader.GetSize()[:2]
    return folder, fixed, moving, math.hypot(width, height)


def test_anhir_files_pair_the_first_69_landmarks_and_name_the_extra_two(histology):
    _, fixed, moving, _ = histology
    assert len(fixed.labels) == 71 and len(moving.labels) == 69 and fixed.frame == "pixel"
    with pytest.raises(CrossModalRegError, match=r"\['70', '71'\] only in fixed"):
        pair_landmarks(fixed, moving)
    pairs = pair_landmarks(fixed, moving, unpaired="skip")
    labels, f, dropped = pairs.labels, pairs.fixed, pairs.unpaired
    assert labels == [str(i) for i in range(1, 70)] and dropped == ["70", "71"]
    np.testing.assert_array_equal(f, fixed.points[:69])


def test_affine_registration_of_the_histology_landmarks_fre_and_leave_one_out_tre(histology):
    _, fixed, moving, diagonal = histology
    pairs = pair_landmarks(fixed, moving, unpaired="skip")
    labels, f, m = pairs.labels, pairs.fixed, pairs.moving
    results = {model: register_points(f, m, model=model, labels=labels, units="pixel")
               for model in ("rigid", "similarity", "affine", "tps")}
    for model, r in results.items():
        print(f"{model:10s} FRE RMS {r.fre_rms:7.3f} px ({100 * r.fre_rms / diagonal:.3f}% of the {diagonal:.0f} px "
              f"diagonal), leave-one-out TRE RMS {r.loo_tre_rms:7.3f} px ({100 * r.loo_tre_rms / diagonal:.3f}%)")
    aff = results["affine"]
    # measured: FRE 5.67 px (0.40%), LOO-TRE 5.95 px (0.42%) on a 1164 x 787 image
    assert 4.0 < aff.fre_rms < 7.5 and 4.0 < aff.loo_tre_rms < 8.0
    assert aff.loo_tre_rms / diagonal < 0.006
    assert aff.fre_rms < aff.loo_tre_rms < 1.2 * aff.fre_rms  # 69 landmarks, 6 parameters: little over-fitting
    # the stains differ by more than a rotation: affine beats similarity beats rigid
    assert aff.fre_rms < 0.7 * results["similarity"].fre_rms < 0.7 * results["rigid"].fre_rms
    assert np.isfinite(aff.loo_tre).all() and aff.loo_tre.max() < 40.0
    # the 2D SimpleITK transform maps fixed pixels to moving pixels
    p = f[10]
    np.testing.assert_allclose(aff.transform_fixed_to_moving.TransformPoint(tuple(p)), aff.map_fixed_to_moving(p)[0])


def test_cli_register_on_histology_writes_transform_and_table(histology, tmp_path):
    folder, *_ = histology
    out = tmp_path / "reg"
    args = ["landmarks", "register", "--fixed-landmarks", str(folder / "Rat-Kidney_HE.csv"),
            "--moving-landmarks", str(folder / "Rat-Kidney_PanCytokeratin.csv"), "--model", "affine",
            "--output-dir", str(out)]
    assert cli_main(args) == 2 and not out.exists()  # one-sided landmarks 70, 71: nothing written
    assert cli_main(args + ["--drop-unpaired"]) == 0
    tx = sitk.ReadTransform(str(out / "transform_fixed_to_moving.tfm"))
    rows = (out / "registration.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["label", "fre", "loo_tre"] and len(rows) == 70
    assert tx.GetDimension() == 2
