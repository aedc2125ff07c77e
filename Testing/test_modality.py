"""Modality guess, fixed/moving roles and preset suggestion on the REAL test images (resect_mr_us, epi_t1, mni152,
colin27) and on CT and PET simulated from them, plus real DICOM files (written and read by SimpleITK/GDCM): the
Modality tag wins over the intensities, and head-first vs feet-first series are warned about."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from CrossModalRegLib import simulation
from CrossModalRegLib.errors import CrossModalRegError
from CrossModalRegLib.modality import INSTANCE_UIDS_ATTRIBUTE, guess_modality, guess_roles_and_preset
from CrossModalRegLib.mrml import volume_node_from_image
from CrossModalRegLib.presets import available_presets

REAL = {
    "resect US": "resect_mr_us/Case24_us.nii.gz",
    "resect MR": "resect_mr_us/Case24_mr.nii.gz",
    "EPI": "epi_t1/example_func.nii.gz",
    "T1 (epi_t1)": "epi_t1/highres.nii.gz",
    "MNI152 T1": "mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "Colin27 T1": "colin27/ch2.nii.gz",
}
EXPECTED = {"resect US": ("US", ""), "resect MR": ("MR", ""), "EPI": ("MR", "EPI"), "T1 (epi_t1)": ("MR", ""),
            "MNI152 T1": ("MR", ""), "Colin27 T1": ("MR", "")}


@pytest.fixture(scope="module")
def simulated(shared_data):
    """CT and PET rendered from the MNI152 tissue maps (the digital-phantom protocol of ../shared/data)."""
    _, model = simulation.tissue_model_from_mni152(str(shared_data / "mni152"))
    rng = np.random.RandomState(4)
    return {"simulated CT": simulation.render(model, "ct", rng=rng),
            "simulated PET": simulation.render(model, "pet", rng=rng)}


def _node(scene, shared_data, name, simulated=None):
    image = simulated[name] if simulated and name in simulated else sitk.ReadImage(str(shared_data / REAL[name]))
    return volume_node_from_image(scene, image, name)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_images_get_their_modality_from_the_intensities(scene, shared_data, name):
    guess = guess_modality(_node(scene, shared_data, name))
    assert (guess.modality, guess.subtype) == EXPECTED[name], guess.reason
    assert guess.source == "intensity" and guess.reason


def test_simulated_ct_and_pet_are_recognised(scene, shared_data, simulated):
    ct = guess_modality(_node(scene, shared_data, "simulated CT", simulated))
    assert ct.modality == "CT" and "Hounsfield" in ct.reason
    assert ct.measures["p1"] < -900 and ct.measures["bone_fraction"] > 0.002
    pet = guess_modality(_node(scene, shared_data, "simulated PET", simulated))
    assert pet.modality == "PET" and "blurred" in pet.reason
    assert pet.measures["detail_below_2mm"] < 0.35


@pytest.mark.parametrize("first, second, preset, fixed", [
    ("resect US", "resect MR", "mr-us-deformable", "resect MR"),
    ("T1 (epi_t1)", "EPI", "mr-epi-t1-rigid", "EPI"),
    ("simulated CT", "Colin27 T1", "mr-ct-rigid", "Colin27 T1"),
    ("simulated PET", "MNI152 T1", "mr-pet-rigid", "MNI152 T1"),
    ("MNI152 T1", "Colin27 T1", "mr-t1-t2-rigid", "MNI152 T1"),
])
def test_roles_and_preset_follow_the_presets_modalities(scene, shared_data, simulated, first, second, preset,
                                                        fixed):
    a, b = (_node(scene, shared_data, n, simulated) for n in (first, second))
    f, m, name, reasons, warnings = guess_roles_and_preset(scene, [a, b])
    assert name == preset and name in available_presets()
    assert f.GetName() == fixed and {f.GetName(), m.GetName()} == {first, second}
    assert len(reasons) == 3 and reasons[2].startswith(f"'{preset}' is made for")
    assert not warnings


def _write_dicom_series(folder, image, modality, position, series_uid):
    """A real DICOM series (one file per slice, GDCM through SimpleITK); returns {SOP instance UID: file}."""
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = {}
    img = sitk.Cast(sitk.RescaleIntensity(image, 0, 1000), sitk.sitkInt16)
    for k in range(img.GetDepth()):
        s = img[:, :, k]
        uid = f"{series_uid}.{k + 1}"
        for tag, value in (("0008|0060", modality), ("0018|5100", position), ("0020|000e", series_uid),
                           ("0008|0018", uid), ("0008|0016", "1.2.840.10008.5.1.4.1.1.7"),
                           ("0020|0013", str(k + 1)),
                           ("0020|0032", "\\".join(map(str, img.TransformIndexToPhysicalPoint((0, 0, k))))),
                           ("0020|0037", "1\\0\\0\\0\\1\\0")):
            s.SetMetaData(tag, value)
        path = str(folder / f"{k:03d}.dcm")
        writer.SetFileName(path)
        writer.Execute(s)
        files[uid] = path
    return files


def _read_tag(files):
    """What the module passes in Slicer: slicer.dicomDatabase.fileValue(fileForInstance(uid), tag)."""
    def value(uid, tag):
        reader = sitk.ImageFileReader()
        reader.SetFileName(files[uid])
        reader.ReadImageInformation()
        key = tag.replace(",", "|").lower()
        return reader.GetMetaData(key) if reader.HasMetaDataKey(key) else ""
    return value


def _dicom_node(scene, files, name):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sorted(files.values()))
    node = volume_node_from_image(scene, reader.Execute(), name)
    node.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(files))  # as Slicer's DICOM scalar volume plugin does
    return node


def test_dicom_modality_and_patient_position_win_and_warn(scene, shared_data, tmp_path):
    mr = sitk.ReadImage(str(shared_data / REAL["EPI"]))[:, :, 10:16]
    files = _write_dicom_series(tmp_path / "a", mr, "CT", "HFS", "1.2.826.0.1.3680043.8.498.1")
    files.update(_write_dicom_series(tmp_path / "b", mr, "PT", "FFS", "1.2.826.0.1.3680043.8.498.2"))
    lookup = _read_tag(files)
    a = _dicom_node(scene, {u: f for u, f in files.items() if u.startswith("1.2.826.0.1.3680043.8.498.1.")}, "A")
    b = _dicom_node(scene, {u: f for u, f in files.items() if u.startswith("1.2.826.0.1.3680043.8.498.2.")}, "B")
    ga = guess_modality(a, dicom_value=lookup)
    assert (ga.modality, ga.source, ga.patient_position) == ("CT", "DICOM", "HFS")  # the tag, not the voxels
    assert guess_modality(a).modality == "MR"  # without the DICOM database: the intensities (an EPI)
    f, m, preset, reasons, warnings = guess_roles_and_preset(scene, [a, b], dicom_value=lookup)
    assert preset == "multimodal-rigid" and f is a and "no preset is made for CT with PET" in reasons[2]
    assert len(warnings) == 1 and "HFS" in warnings[0] and "FFS" in warnings[0]


def test_bad_selections_are_refused(scene, shared_data):
    a = _node(scene, shared_data, "EPI")
    with pytest.raises(CrossModalRegError, match="select two volumes"):
        guess_roles_and_preset(scene, [a])
    with pytest.raises(CrossModalRegError, match="selected twice"):
        guess_roles_and_preset(scene, [a, a])


def test_the_pair_after_loading_is_the_new_volumes_then_the_selection(scene, shared_data):
    from CrossModalRegLib.modality import pair_after_loading, volume_ids

    selected = _node(scene, shared_data, "EPI")
    scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "a mask")
    before = volume_ids(scene)
    assert before == {selected.GetID()}
    loaded = _node(scene, shared_data, "T1 (epi_t1)")  # what Add Data loaded
    assert pair_after_loading(scene, before, (selected, None)) == [loaded, selected]
    second = _node(scene, shared_data, "resect US")
    assert pair_after_loading(scene, before, (selected, None)) == [loaded, second]
    assert pair_after_loading(scene, volume_ids(scene), (selected, selected)) == [selected]
