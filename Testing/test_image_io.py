"""Reading inputs: damaged files that ITK reads without a word are refused with the file and the fix named.

Each case is made at test time from a real image of ../shared/data (or a small synthetic one) and first shown to
fool plain ``sitk.ReadImage``, so the test fails if the check is removed.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import SimpleITK as sitk

from CrossModalRegLib import cli
from CrossModalRegLib.errors import CrossModalRegError
from CrossModalRegLib.image_io import read_image


def _float_volume(tmp_path, name="v.nii", nan=False):
    a = np.random.default_rng(0).random((12, 14, 16)).astype(np.float32)
    if nan:
        a[3, 4, 5], a[1, 1, 1] = np.nan, np.inf
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((0.8, 0.9, 1.2))
    path = tmp_path / name
    sitk.WriteImage(img, str(path))
    return path


def test_sound_real_files_read_exactly_as_itk_reads_them(shared_data):
    for rel in ("mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", "epi_t1/example_func.nii.gz",
                "histology/Rat-Kidney_HE.jpg", "brainweb2d/BrainT1SliceBorder20.mha",
                "resect_mr_us/Case24_us.nii.gz"):
        path = str(shared_data / rel)
        ours, itk = read_image(path, "fixed"), sitk.ReadImage(path)
        assert ours.GetSpacing() == itk.GetSpacing() and ours.GetDirection() == itk.GetDirection()
        assert np.array_equal(sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(itk)), rel


def test_truncated_uncompressed_nifti_is_refused(tmp_path):
    data = _float_volume(tmp_path).read_bytes()
    broken = tmp_path / "broken.nii"
    broken.write_bytes(data[: 352 + (len(data) - 352) // 100])  # 99% of the voxels missing
    sitk.ReadImage(str(broken))  # ITK reads it
    with pytest.raises(CrossModalRegError, match=r"moving image '.*broken.nii' is truncated.*copy it again"):
        read_image(str(broken), "moving")


@pytest.mark.parametrize("name", ["nan.nii", "nan.nii.gz"])
def test_nan_voxels_in_nifti_are_refused(tmp_path, name):
    path = _float_volume(tmp_path, name, nan=True)
    assert np.all(np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))))  # ITK turned them into 0
    with pytest.raises(CrossModalRegError, match="2 NaN or infinite voxels"):
        read_image(str(path), "fixed")


@pytest.mark.parametrize("value", [0.0, float("nan")])
def test_zero_or_nan_voxel_size_in_nifti_is_refused(tmp_path, value):
    data = bytearray(_float_volume(tmp_path).read_bytes())
    struct.pack_into("<f", data, 80, value)  # pixdim[1]
    path = tmp_path / "pixdim.nii"
    path.write_bytes(bytes(data))
    assert sitk.ReadImage(str(path)).GetSpacing()[0] == 1.0  # ITK silently makes it 1 mm
    with pytest.raises(CrossModalRegError, match=r"pixdim\[1\]"):
        read_image(str(path), "fixed")


def test_truncated_jpeg_is_refused(tmp_path, shared_data):
    data = (shared_data / "histology" / "Rat-Kidney_HE.jpg").read_bytes()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(data[: len(data) // 3])
    sitk.ReadImage(str(broken))  # the decoder fills two thirds with grey
    with pytest.raises(CrossModalRegError, match="truncated or corrupt.*JPEG"):
        read_image(str(broken), "moving")


def test_non_orthonormal_direction_is_refused(tmp_path, shared_data):
    text = (shared_data / "brainweb2d" / "BrainT1Slice.mha").read_bytes()
    assert b"TransformMatrix = 1 0 0 1" in text
    sheared = tmp_path / "sheared.mha"
    sheared.write_bytes(text.replace(b"TransformMatrix = 1 0 0 1", b"TransformMatrix = 1 0.5 0 1"))
    assert sorted(sitk.ReadImage(str(sheared)).GetDirection()) == [0.0, 0.5, 1.0, 1.0]  # kept as is by ITK
    with pytest.raises(CrossModalRegError, match="not orthonormal"):
        read_image(str(sheared), "fixed")


def test_register_and_validate_refuse_a_truncated_nifti_and_write_nothing(tmp_path, shared_data, capsys):
    fixed = str(shared_data / "kmeans_t1" / "KmeansTest_T1UCharRaw.nii.gz")
    img = sitk.ReadImage(fixed)
    whole = tmp_path / "moving.nii"
    sitk.WriteImage(img, str(whole))
    data = whole.read_bytes()
    broken = tmp_path / "moving_broken.nii"
    broken.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert cli.main(["register", "--fixed", fixed, "--moving", str(broken), "--output-dir", str(out),
                     "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "moving_broken.nii' is truncated" in err[0]
    tx = tmp_path / "identity.h5"
    sitk.WriteTransform(sitk.Euler3DTransform(), str(tx))
    gz = tmp_path / "fixed_broken.nii.gz"
    gz.write_bytes(open(fixed, "rb").read()[:4000])
    assert cli.main(["validate", "--fixed", str(gz), "--moving", str(whole), "--transform", str(tx),
                     "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "truncated or corrupt" in err[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["moving.nii", "moving_broken.nii", "identity.h5", "fixed_broken.nii.gz"])
