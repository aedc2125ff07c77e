"""The GUI harness itself: where each name comes from, the widget APIs against Slicer's headers, PythonQt's
semantics, and qMRMLNodeComboBox's node lists. See Testing/slicer_gui/README.md."""

from __future__ import annotations

import pathlib
import sys

import pytest

pytest.importorskip("PyQt5", reason="the GUI harness needs PyQt5 (the project's test extra)")

from slicer_gui import headers, widgets  # noqa: E402
from slicer_gui.environment import FRAMEWORK_DIR, Environment  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_names_come_from_the_declared_sources_and_uninstall_restores_slicer_core():
    """Runs first in this file, before the module-scoped environment exists."""
    import slicer

    core_util = sys.modules.get("slicer.util")
    env = Environment().install()
    try:
        import ctk
        import qt

        # MRML: slicer-core's compiled classes.
        assert slicer.vtkMRMLScene.__module__.startswith(("slicer_core", "MRMLCore", "vtkMRML")), \
            slicer.vtkMRMLScene.__module__
        assert isinstance(slicer.mrmlScene, slicer.vtkMRMLScene)
        # Framework: Slicer 5.10's own files, unmodified, loaded by path.
        for name in ("util", "i18n", "ScriptedLoadableModule", "parameterNodeWrapper"):
            module = getattr(slicer, name)
            assert pathlib.Path(module.__file__).is_relative_to(FRAMEWORK_DIR), (name, module.__file__)
            assert sys.modules[f"slicer.{name}"] is module
        from slicer.ScriptedLoadableModule import ScriptedLoadableModule  # noqa: F401

        # Harness: qt, ctk, the qMRML/qSlicer widgets and slicer.app.
        assert qt.__doc__.startswith("Qt as PythonQt presents it")
        assert ctk.ctkCollapsibleButton._qt_class is widgets.ctkCollapsibleButton
        assert slicer.qMRMLNodeComboBox._qt_class is widgets.qMRMLNodeComboBox
        assert slicer.app.applicationName == "Slicer"
    finally:
        env.uninstall()
    assert "qt" not in sys.modules and "ctk" not in sys.modules
    assert sys.modules.get("slicer.util") is core_util
    assert not hasattr(slicer, "ScriptedLoadableModule") and not hasattr(slicer, "app")


_BASIC = {"bool": "bool", "int": "int", "double": "double", "QString": "QString", "QStringList": "QStringList"}


@pytest.mark.parametrize("class_name", sorted(headers.HEADER_PATHS))
def test_harness_widget_api_is_exactly_the_slicer_header(class_name):
    api = headers.parse_header(class_name)
    cls = widgets.IMPLEMENTED[class_name]
    assert cls.__bases__[0].__name__ == api.base, "the harness class must extend the same Qt class"
    mo = cls.staticMetaObject
    own = {mo.property(i).name(): mo.property(i).typeName() for i in range(mo.propertyOffset(), mo.propertyCount())}
    assert set(own) == set(api.properties), (
        f"properties: missing {set(api.properties) - set(own)}, extra {set(own) - set(api.properties)}")
    for name, info in api.properties.items():
        if info["type"] in _BASIC:
            assert own[name] == _BASIC[info["type"]], (name, own[name], info["type"])
        prop = mo.property(mo.indexOfProperty(name))
        assert prop.isWritable() == ("write" in info), f"{name}: writable in the header = {'write' in info}"
    assert set(cls.CPP_API["signals"]) == api.signals
    for sig in api.signals:
        assert hasattr(cls, sig.split("(")[0]), sig
    assert set(cls.CPP_API["slots"]) == api.slots
    assert set(cls.CPP_API["invokables"]) == api.invokables
    for name in api.slots | api.invokables:
        assert callable(getattr(cls, name, None)), f"{class_name}.{name} is declared but not implemented"


def test_header_parser_reads_signatures_as_qt_normalises_them():
    api = headers.parse_header("qMRMLNodeComboBox")
    assert "currentNodeIDChanged(QString)" in api.signals
    assert "currentNodeChanged(vtkMRMLNode*)" in api.signals and "currentNodeChanged(bool)" in api.signals
    assert "setMRMLScene" in api.slots and "currentNode" in api.invokables
    assert "setNodeTypes" not in api.slots | api.invokables  # a plain public method: not visible in PythonQt


def test_every_ui_file_loads_with_harness_classes_only(slicer_gui):
    import slicer

    for name in ("CrossModalReg", "CrossModalRegLandmarks", "CrossModalRegValidation"):
        ui_path = ROOT / name / "Resources" / "UI" / f"{name}.ui"
        widget = slicer.util.loadUI(str(ui_path))
        assert type(widget) is slicer.qMRMLWidget
        ui = slicer.util.childWidgetVariables(widget)
        import xml.etree.ElementTree as ET

        for w in ET.parse(ui_path).iter("widget"):
            child = getattr(ui, w.get("name"), None) if w.get("name") != name else widget
            assert child is not None, w.get("name")
            assert type(child).__name__ == w.get("class"), (w.get("name"), type(child).__name__)


def test_pythonqt_semantics(slicer_gui):
    import ctk
    import qt

    button = qt.QPushButton("Apply")
    assert button.text == "Apply"  # a property is an attribute ...
    with pytest.raises(TypeError):
        button.text()  # ... not a method
    button.enabled = False
    assert not button.isEnabled()
    calls = []
    button.enabled = True
    button.connect("clicked(bool)", lambda: calls.append("no-arg slot"))  # fewer args than the signal: fine
    button.clicked.connect(lambda checked: calls.append(checked))
    button.click()
    assert calls == ["no-arg slot", False]
    with pytest.raises(AttributeError):
        button.connect("clickedd(bool)", lambda: None)
    slider = ctk.ctkSliderWidget()
    slider.maximum = 1.0
    slider.value = 0.25
    assert slider.value == 0.25
    with pytest.raises(AttributeError):
        slider.setRange(0, 1)  # a public method of ctkSliderWidget.h but not a slot: PythonQt does not expose it
    with pytest.raises(AttributeError):
        slider._spin  # noqa: B018 - the harness's internals are not visible
    layout = qt.QVBoxLayout()
    parent = qt.QWidget()
    parent.setLayout(layout)
    layout.addWidget(slider)
    assert slider.parent() is parent  # one wrapper per C++ object
    assert type(parent.findChildren(qt.QWidget)[0]) is ctk.ctkSliderWidget


def _nodes(combo):
    return [combo.nodeFromIndex(i).GetName() for i in range(combo.nodeCount())]


def test_node_combobox_lists_scene_nodes_like_slicer(slicer_gui):
    import slicer

    scene = slicer_gui.scene
    combo = slicer.qMRMLNodeComboBox()
    combo.nodeTypes = ["vtkMRMLScalarVolumeNode"]
    changed, ids = [], []
    combo.connect("currentNodeChanged(vtkMRMLNode*)", changed.append)
    combo.currentNodeIDChanged.connect(ids.append)
    combo.setMRMLScene(scene)
    assert combo.nodeCount() == 0 and combo.currentNode() is None
    mr = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "MR")
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "label")
    assert _nodes(combo) == ["MR", "label"]  # subclasses are shown by default (showChildNodeTypes true)
    assert combo.currentNode() is mr and changed == [mr] and ids == [mr.GetID()]  # noneEnabled false: first node
    combo.showChildNodeTypes = False
    assert _nodes(combo) == ["MR"]
    combo.showChildNodeTypes = True
    combo.hideChildNodeTypes = ["vtkMRMLLabelMapVolumeNode"]
    assert _nodes(combo) == ["MR"]
    combo.hideChildNodeTypes = []
    hidden = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "hidden")
    hidden.SetHideFromEditors(True)
    assert "hidden" not in _nodes(combo)
    combo.noneEnabled = True
    combo.setCurrentNode(None)
    assert combo.currentNode() is None and changed[-1] is None
    combo.setCurrentNodeID(label.GetID())
    assert combo.currentNodeID == label.GetID()
    label.SetName("brain mask")
    assert "brain mask" in _nodes(combo)
    combo.baseName = "Registered"
    created = combo.addNode()
    assert created.GetName().startswith("Registered") and combo.currentNode() is created
    combo.removeCurrentNode()
    assert scene.GetNodeByID(created.GetID()) is None and combo.currentNode() is None
    scene.RemoveNode(mr)
    assert "MR" not in _nodes(combo)


def test_ui_connections_set_the_scene_on_every_selector(slicer_gui):
    import slicer

    widget = slicer.util.loadUI(str(ROOT / "CrossModalReg" / "Resources" / "UI" / "CrossModalReg.ui"))
    ui = slicer.util.childWidgetVariables(widget)
    assert ui.fixedVolumeSelector.mrmlScene() is None
    widget.setMRMLScene(slicer_gui.scene)  # mrmlSceneChanged(vtkMRMLScene*) -> setMRMLScene(vtkMRMLScene*)
    assert ui.fixedVolumeSelector.mrmlScene() is slicer_gui.scene
    assert ui.outputTransformSelector.mrmlScene() is slicer_gui.scene
