"""pytest fixtures of the GUI harness (imported by Testing/conftest.py).

- ``slicer_gui``: the installed environment (module scope: installed for a test module, then removed, so the
  headless suite never sees the harness). ``slicer_gui.scene`` is a fresh Slicer-like scene for each test.
- ``module_widget(name)``: a factory: loads ``<name>.py`` and builds its Widget as Slicer's module panel does;
  returns a ``ModuleUnderTest`` (``.widget``, ``.ui``, ``.logic``, ``.panel``, ``.enter()``, ``.exit()``,
  ``.grab(path)``).
- ``slot_errors``: the list of exceptions raised in Python slots during the test (PythonQt prints them to stderr
  and goes on; a test should assert it stays empty).
"""

from __future__ import annotations

import dataclasses

import pytest


@pytest.fixture(scope="module")
def _slicer_gui_installed():
    from .environment import Environment

    env = Environment().install()
    try:
        yield env
    finally:
        env.uninstall()


@pytest.fixture
def slicer_gui(_slicer_gui_installed):
    env = _slicer_gui_installed
    env.new_scene()
    try:
        yield env
    finally:
        from PyQt5 import QtWidgets

        for w in QtWidgets.QApplication.topLevelWidgets():
            w.close()
            w.deleteLater()
        QtWidgets.QApplication.processEvents()
        env.close_scene()


@pytest.fixture
def slot_errors(slicer_gui):
    from . import pythonqt

    pythonqt.SLOT_ERRORS.clear()
    yield pythonqt.SLOT_ERRORS
    pythonqt.SLOT_ERRORS.clear()


@dataclasses.dataclass
class ModuleUnderTest:
    name: str
    module: object  # the imported <name>.py
    instance: object  # the ScriptedLoadableModule
    panel: object  # qSlicerScriptedLoadableModuleWidget (wrapper): the Widget's ``parent``
    widget: object  # the <name>Widget

    @property
    def ui(self):
        return self.widget.ui

    @property
    def logic(self):
        return self.widget.logic

    def enter(self):
        self.panel.enter()

    def exit(self):
        self.panel.exit()

    def grab(self, path, width=420):
        """Render the panel offscreen (QWidget.grab) and save it as PNG; returns the QPixmap."""
        from PyQt5 import QtWidgets

        qpanel = self.panel._qobj
        qpanel.resize(width, max(qpanel.sizeHint().height(), 200))
        qpanel.show()
        for _ in range(3):
            QtWidgets.QApplication.processEvents()
        qpanel.resize(width, qpanel.sizeHint().height())
        QtWidgets.QApplication.processEvents()
        pixmap = qpanel.grab()
        if not pixmap.save(str(path), "PNG"):
            raise OSError(f"could not write {path}")
        return pixmap


@pytest.fixture
def module_widget(slicer_gui):
    """Factory: ``module_widget("CrossModalReg", setup=True)`` -> ModuleUnderTest.

    As qSlicerScriptedLoadableModule does: the module class gets a parent (``path``, ``title``, ...), then the
    panel (a qSlicerWidget with a QVBoxLayout, the scene set) is given to ``<Name>Widget(parent)`` and
    ``setup()`` runs. ``enter()`` is left to the test (Slicer calls it when the module is selected).
    """
    import qt
    import slicer

    made = []

    def make(name, setup=True):
        module, _parent, instance = slicer_gui.load_module(name)
        panel = slicer.qSlicerScriptedLoadableModuleWidget(name)
        panel.setLayout(qt.QVBoxLayout())
        panel.setMRMLScene(slicer.mrmlScene)
        widget = getattr(module, f"{name}Widget")(panel)
        panel._qobj._python = widget
        setattr(slicer.modules, f"{name}Widget", widget)
        mut = ModuleUnderTest(name, module, instance, panel, widget)
        made.append(mut)
        if setup:
            widget.setup()
        return mut

    yield make
    for mut in made:
        try:
            if mut.panel.isEntered:
                mut.exit()
            if hasattr(mut.widget, "cleanup"):
                mut.widget.cleanup()
        except Exception:  # noqa: BLE001 - a failing test must still release the panel
            pass
