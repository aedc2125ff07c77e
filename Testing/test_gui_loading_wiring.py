"""Loading in the CrossModalReg Widget, on the GUI harness: after the phantom is loaded (the Sample Data custom
downloader), "Guess roles" fills the fixed and moving selectors and the preset, shows the reasons, and the preset's
when_to_use is shown."""

from __future__ import annotations

import pytest

pytest.importorskip("PyQt5", reason="the GUI harness needs PyQt5 (the project's test extra)")


def test_loading_the_phantom_fills_fixed_moving_and_preset(module_widget, slicer_gui, slot_errors):
    from CrossModalRegLib import sample_data
    from CrossModalRegLib.modality import volume_ids

    m = module_widget("CrossModalReg")
    m.enter()
    before = volume_ids(slicer_gui.scene)
    fixed, moving, *_ = sample_data.load_phantom_sample(None)  # what clicking the Sample Data thumbnail does
    m.widget._volumesBeforeLoading = before  # as "DICOM..." records it before the user loads
    m.ui.guessRolesButton.click()
    text = m.ui.guessRolesLabel.text
    assert not m.ui.guessRolesLabel.isHidden()
    assert m.ui.fixedVolumeSelector.currentNode() is fixed
    assert m.ui.movingVolumeSelector.currentNode() is moving
    assert m.ui.presetComboBox.currentText == "mr-ct-rigid"
    assert "A CT and an MR of the same head" in m.ui.presetDescriptionLabel.text  # when_to_use shown
    assert "Hounsfield" in text and "'mr-ct-rigid' is made for MR (fixed) with CT (moving)" in text
    assert m.ui.applyButton.enabled
    assert not slot_errors, slot_errors
