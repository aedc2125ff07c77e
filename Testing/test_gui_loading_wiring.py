"""The loading wiring the integrator adds to CrossModalReg.py, run on the GUI harness against the real CrossModalReg
Widget: after the phantom is loaded (the Sample Data custom downloader), guessing the roles fills the fixed and
moving selectors and the preset, and the preset's when_to_use is shown. ``wireGuessRoles`` below is the code to
paste into the Widget (see the helper's report); this test keeps it honest."""

from __future__ import annotations

import pytest

pytest.importorskip("PyQt5", reason="the GUI harness needs PyQt5 (the project's test extra)")


def wireGuessRoles(widget, volumesBefore):  # noqa: N802 - Slicer naming: the Widget method as the integrator adds it
    """CrossModalRegWidget.onGuessRoles: called after Add Data / DICOM / Sample Data with the IDs recorded before."""
    import slicer

    from CrossModalRegLib.modality import guess_roles_and_preset, pair_after_loading

    def dicomValue(uid, tag):
        db = getattr(slicer, "dicomDatabase", None)
        return db.fileValue(db.fileForInstance(uid), tag) if db else ""

    p = widget._parameterNode
    nodes = pair_after_loading(slicer.mrmlScene, volumesBefore, (p.fixedVolume, p.movingVolume))
    fixed, moving, preset, reasons, warnings = guess_roles_and_preset(slicer.mrmlScene, nodes,
                                                                      dicom_value=dicomValue)
    p.fixedVolume, p.movingVolume, p.preset = fixed, moving, preset
    return "\n".join(reasons + ["Warning: " + w for w in warnings])


def test_loading_the_phantom_fills_fixed_moving_and_preset(module_widget, slicer_gui, slot_errors):
    from CrossModalRegLib import sample_data
    from CrossModalRegLib.modality import volume_ids

    m = module_widget("CrossModalReg")
    m.enter()
    before = volume_ids(slicer_gui.scene)
    fixed, moving, *_ = sample_data.load_phantom_sample(None)  # what clicking the Sample Data thumbnail does
    text = wireGuessRoles(m.widget, before)
    assert m.ui.fixedVolumeSelector.currentNode() is fixed
    assert m.ui.movingVolumeSelector.currentNode() is moving
    assert m.ui.presetComboBox.currentText == "ct-mr-rigid"
    assert "A CT and an MR of the same head" in m.ui.presetDescriptionLabel.text  # when_to_use shown
    assert "Hounsfield" in text and "'ct-mr-rigid' is made for MR (fixed) with CT (moving)" in text
    assert m.ui.applyButton.enabled
    assert not slot_errors, slot_errors
