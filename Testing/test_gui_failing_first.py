"""The first tests on the GUI harness: they failed on main before issue 15's fixes (defects 1-3).

1. ``setup()`` of CrossModalReg stopped with "TypeError: this is an abstract class and cannot be instantiated"
   (node annotations of abstract classes, vtkMRMLVolumeNode / vtkMRMLNode), so nothing was bound.
2. ``preset: str`` / ``profile: str`` bound to a QComboBox: "RuntimeError: ComboBoxToStringableConnector requires
   the Choice annotation to be used."
3. The annotation's node class overrode the .ui's nodeTypes: transform selectors listed only vtkMRMLTransformNode
   itself and volume selectors no RGB (vector) volumes.
"""

from __future__ import annotations

import pytest


def _bound_widgets(ui_widget):
    """{parameter name: widget} for every widget of the .ui carrying SlicerParameterName."""
    import qt

    out = {}
    for child in ui_widget.findChildren(qt.QWidget):
        name = child.property("SlicerParameterName")
        if name:
            out[name] = child
    return out


@pytest.mark.parametrize("name", ["CrossModalReg", "CrossModalRegValidation"])
def test_setup_binds_every_parameter_through_slicers_connectors(module_widget, slot_errors, name):
    m = module_widget(name)  # raised on main: TypeError (CrossModalReg), RuntimeError (Validation)
    m.enter()
    parameterNode = m.widget._parameterNode
    assert parameterNode is not None
    guis = parameterNode._parameterGUIs[m.widget._parameterNodeGuiTag]
    bound = _bound_widgets(m.panel.findChildren(__import__("qt").QWidget)[0].parent())
    assert set(guis) == set(bound), f"bound by connectGui: {sorted(guis)}; in the .ui: {sorted(bound)}"
    assert not slot_errors


def _add_volume(scene, cls, name, components=1):
    import numpy as np
    import slicer

    node = scene.AddNewNodeByClass(cls, name)
    array = np.zeros((4, 5, 6, components) if components > 1 else (4, 5, 6), dtype=np.uint8)
    slicer.util.updateVolumeFromArray(node, array)
    return node


def test_selectors_offer_rgb_volumes_and_every_transform_class(module_widget, slicer_gui):
    scene = slicer_gui.scene
    scalar = _add_volume(scene, "vtkMRMLScalarVolumeNode", "MR")
    rgb = _add_volume(scene, "vtkMRMLVectorVolumeNode", "histology RGB", components=3)
    label = _add_volume(scene, "vtkMRMLLabelMapVolumeNode", "brain mask")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "tumour")
    transforms = [scene.AddNewNodeByClass(c, c) for c in (
        "vtkMRMLLinearTransformNode", "vtkMRMLBSplineTransformNode", "vtkMRMLGridTransformNode",
        "vtkMRMLTransformNode")]
    m = module_widget("CrossModalReg")
    m.enter()

    def listed(selector):
        return {selector.nodeFromIndex(i).GetID() for i in range(selector.nodeCount())}

    for selector in (m.ui.fixedVolumeSelector, m.ui.movingVolumeSelector):
        assert listed(selector) == {scalar.GetID(), rgb.GetID()}, selector.name
    for selector in (m.ui.fixedMaskSelector, m.ui.movingMaskSelector):
        assert listed(selector) == {label.GetID(), segmentation.GetID()}, selector.name
    for selector in (m.ui.initialTransformSelector, m.ui.outputTransformSelector):
        assert listed(selector) == {t.GetID() for t in transforms}, selector.name


def test_combobox_choices_are_the_shipped_presets_and_profiles(module_widget):
    """The Choice annotations list file names at import time: they must be exactly the shipped files."""
    from CrossModalRegLib import presets
    from CrossModalRegLib.validation import available_profiles

    reg = module_widget("CrossModalReg")
    assert [reg.ui.presetComboBox.itemText(i) for i in range(reg.ui.presetComboBox.count)] == \
        presets.available_presets()
    val = module_widget("CrossModalRegValidation")
    combo = val.ui.profileComboBox
    assert [combo.itemText(i) for i in range(combo.count)] == [val.module.NO_PROFILE, *available_profiles()]
