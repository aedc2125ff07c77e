"""Build the Python environment a scripted module sees inside Slicer 5.10, from three explicit sources.

Which name comes from where (``SOURCES``; ``Testing/test_gui_harness.py`` checks it):

- MRML and logic classes (``slicer.vtkMRML*``, ``slicer.vtkSlicer*Logic``): slicer-core, the real C++ MRML.
- The pure-Python framework (``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``, ``slicer.util``,
  ``slicer.i18n``): Slicer 5.10's own files in ../shared/slicer-5.10/slicer/Base/Python/slicer, loaded by path and
  unmodified (slicer-core's shorter ``slicer/util.py`` is set aside while the harness is installed).
- ``qt``, ``ctk``, ``slicer.qMRML*``/``slicer.qSlicer*`` widgets, ``slicer.app``, ``slicer.modules``: the
  harness (PyQt5 presented with PythonQt's semantics, see ``pythonqt.py`` and ``widgets.py``).

``install()`` puts this in place and ``uninstall()`` restores ``sys.modules`` and the ``slicer`` namespace, so
that the headless suite running after the GUI tests sees slicer-core alone again.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
import tempfile
import types

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
if not os.environ.get("XDG_RUNTIME_DIR"):  # else Qt warns on stderr, which the tests watch
    os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="slicer-harness-runtime-")

from PyQt5 import QtCore, QtWidgets  # noqa: E402

from . import pythonqt, widgets  # noqa: E402
from .headers import SHARED  # noqa: E402

FRAMEWORK_DIR = SHARED / "slicer" / "Base" / "Python" / "slicer"
FRAMEWORK_MODULES = ("i18n", "util", "parameterNodeWrapper", "ScriptedLoadableModule")
ROOT = pathlib.Path(__file__).resolve().parents[2]
MODULE_NAMES = ("CrossModalReg", "CrossModalRegLandmarks", "CrossModalRegValidation")

SOURCES = {
    "mrml": "slicer-core",
    **{f"slicer.{m}": str(FRAMEWORK_DIR) for m in FRAMEWORK_MODULES},
    "qt": "harness", "ctk": "harness", "slicer.app": "harness", "slicer.qMRMLNodeComboBox": "harness",
}

_QAPP = None


def qapplication():
    global _QAPP
    if _QAPP is None:
        _QAPP = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["SlicerHarness"])
        _QAPP.setApplicationName("Slicer")
        _QAPP.setOrganizationName("CrossModalRegHarness")
        settings_dir = tempfile.mkdtemp(prefix="slicer-harness-settings-")
        QtCore.QSettings.setDefaultFormat(QtCore.QSettings.IniFormat)
        QtCore.QSettings.setPath(QtCore.QSettings.IniFormat, QtCore.QSettings.UserScope, settings_dir)
    return _QAPP


# ------------------------------------------------------------------------------------------------ .ui loading
class _HarnessCustomWidgets:
    """uic's custom-widget lookup, mapped to the harness classes; an unknown class is an error, not a QWidget."""

    def __init__(self):
        self._declared = {}

    def addCustomWidget(self, widgetClass, baseClass, module):
        self._declared[widgetClass] = module

    def search(self, cls):
        if cls not in self._declared:
            return None
        impl = HARNESS_CLASSES.get(cls)
        if impl is None:
            raise NotImplementedError(f"the .ui uses {cls}, which the harness does not implement (widgets.py)")
        return impl


def _ui_loader_class():
    from PyQt5.uic.Loader.loader import DynamicUILoader
    from PyQt5.uic.Loader.qobjectcreator import LoaderCreatorPolicy

    class Policy(LoaderCreatorPolicy):
        def createCustomWidgetLoader(self):
            return _HarnessCustomWidgets()

    class Loader(DynamicUILoader):
        def __init__(self):
            from PyQt5 import QtGui
            from PyQt5.uic.uiparser import UIParser

            UIParser.__init__(self, QtCore, QtGui, QtWidgets, Policy(""))

        def createConnections(self, elem):
            """Designer connections resolved as PythonQt resolves ``obj.connect('sig(args)', receiver, 'slot()')``."""

            def obj(name):
                return self.toplevelWidget if name == self.uiname else getattr(self.toplevelWidget, name)

            for conn in iter(elem):
                sender = pythonqt.wrap(obj(conn.findtext("sender")))
                receiver = pythonqt.wrap(obj(conn.findtext("receiver")))
                sender.connect(conn.findtext("signal"), receiver, conn.findtext("slot"))
            QtCore.QMetaObject.connectSlotsByName(self.toplevelWidget)

    return Loader


class QUiLoader(QtCore.QObject):
    """``qt.QUiLoader`` as ``slicer.util.loadUI`` uses it: ``load(QFile)`` -> the widget tree of the .ui file."""

    CPP_API = {"signals": [], "slots": [], "invokables": ["load"]}

    def load(self, device, parent=None):
        path = device.fileName()
        widget = _ui_loader_class()().loadUi(path, None, "_rc")
        if parent is not None:
            widget.setParent(parent)
        return widget


# ------------------------------------------------------------------------------------------------ application
class qSlicerModuleManager(QtCore.QObject):
    """Stand-in: the signal ScriptedLoadableModuleWidget connects to, and module lookup."""

    CPP_API = {"signals": ["moduleAboutToBeUnloaded(QString)", "moduleLoaded(QString)"], "slots": [],
               "invokables": ["module", "moduleNames"]}
    moduleAboutToBeUnloaded = QtCore.pyqtSignal(str)
    moduleLoaded = QtCore.pyqtSignal(str)

    def __init__(self):
        super().__init__()
        self._modules = {}

    def module(self, name):
        return self._modules.get(name)

    def moduleNames(self):
        return list(self._modules)


class qSlicerLayoutManager(QtCore.QObject):
    """Stand-in: the layout id and its change signal; slice view names. No views are rendered."""

    CPP_API = {"signals": ["layoutChanged(int)"], "slots": ["setLayout"],
               "invokables": ["sliceViewNames", "layoutLogic", "sliceWidget", "threeDWidget", "tableWidget",
                              "plotWidget", "mrmlSliceLogics", "resetSliceViews", "resetThreeDViews"]}
    layoutChanged = QtCore.pyqtSignal(int)

    def __init__(self, harness):
        super().__init__()
        self._harness = harness
        self._layout = 6  # SlicerLayoutFourUpView

    def getLayout(self):
        return self._layout

    def setLayout(self, layout):
        layout = int(layout)
        node = self._harness.layout_node
        if node is not None:
            node.SetViewArrangement(layout)
        if layout != self._layout:
            self._layout = layout
            self.layoutChanged.emit(layout)

    layout = QtCore.pyqtProperty(int, getLayout, setLayout)

    def layoutLogic(self):
        return self._harness.layout_logic

    def sliceViewNames(self):
        return ["Red", "Yellow", "Green"]

    def mrmlSliceLogics(self):
        return self._harness.app_logic.GetSliceLogics()

    def sliceWidget(self, name):
        return None  # slice views are not rendered by the harness

    def threeDWidget(self, index):
        return None

    def tableWidget(self, index):
        return None

    def plotWidget(self, index):
        return None

    def resetSliceViews(self):
        pass

    def resetThreeDViews(self):
        pass


class qSlicerApplication(QtCore.QObject):
    """Stand-in for ``slicer.app`` with what modules call; ``testingEnabled()`` is True (messages are logged)."""

    CPP_API = {"signals": ["startupCompleted()"], "slots": ["processEvents", "restart", "quit"],
               "invokables": ["layoutManager", "moduleManager", "mrmlScene", "applicationLogic", "testingEnabled",
                              "translate", "setOverrideCursor", "restoreOverrideCursor", "settings", "userSettings",
                              "moduleDocumentationUrl", "keyboardModifiers", "pythonManager", "ioManager",
                              "coreIOManager"]}

    startupCompleted = QtCore.pyqtSignal()  # qSlicerApplication.h: emitted once the application has started

    def __init__(self, harness):
        super().__init__()
        self._harness = harness
        self._modules = qSlicerModuleManager()
        self._layout = qSlicerLayoutManager(harness)

    def getApplicationName(self):
        return "Slicer"

    applicationName = QtCore.pyqtProperty(str, getApplicationName)

    def getDocumentationBaseUrl(self):
        return "https://slicer.readthedocs.io/en/5.10/"

    documentationBaseUrl = QtCore.pyqtProperty(str, getDocumentationBaseUrl)

    def getVersion(self):
        return "5.10.0"

    applicationVersion = QtCore.pyqtProperty(str, getVersion)

    def processEvents(self, *args):
        QtWidgets.QApplication.processEvents()

    def restart(self):
        raise RuntimeError("slicer.app.restart() in the harness")

    def quit(self):
        raise RuntimeError("slicer.app.quit() in the harness")

    def layoutManager(self):
        return self._layout

    def moduleManager(self):
        return self._modules

    def mrmlScene(self):
        return self._harness.scene

    def applicationLogic(self):
        return self._harness.app_logic

    def testingEnabled(self):
        return True

    def translate(self, context, text):
        return text

    def setOverrideCursor(self, cursor):
        QtWidgets.QApplication.setOverrideCursor(cursor)

    def restoreOverrideCursor(self):
        QtWidgets.QApplication.restoreOverrideCursor()

    def settings(self):
        return QtCore.QSettings()

    userSettings = settings

    def moduleDocumentationUrl(self, name):
        return self.getDocumentationBaseUrl() + "user_guide/modules/" + name.lower() + ".html"

    def keyboardModifiers(self):
        return QtWidgets.QApplication.keyboardModifiers()

    def pythonManager(self):
        return None

    def ioManager(self):
        raise NotImplementedError("slicer.app.ioManager() (Add Data dialog) needs the real Slicer")

    coreIOManager = ioManager


HARNESS_CLASSES = {**widgets.IMPLEMENTED, **widgets.CTK_PLACEHOLDERS, **widgets.SLICER_PLACEHOLDERS,
                   "qSlicerWidget": widgets.qSlicerWidget,
                   "qSlicerScriptedLoadableModuleWidget": widgets.qSlicerScriptedLoadableModuleWidget}


def _load_by_path(name, path, package_dir=None):
    if package_dir is not None:
        spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=[str(package_dir)])
    else:
        spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Environment:
    """The installed environment; one per test session (the QApplication lives for the process)."""

    def __init__(self):
        self.installed = False
        self.scene = None
        self.app_logic = None
        self.layout_logic = None
        self.layout_node = None
        self.headless = None
        self._saved_modules = {}
        self._saved_attrs = {}

    # -- install / uninstall ------------------------------------------------------------------------------------
    def install(self):
        import slicer  # slicer-core

        qapplication()
        self._slicer = slicer
        names = ["qt", "ctk", "slicer.util", "slicer.i18n", "slicer.ScriptedLoadableModule", "slicer.modules",
                 *[n for n in sys.modules if n.startswith("slicer.parameterNodeWrapper")], *MODULE_NAMES]
        self._saved_modules = {n: sys.modules.get(n) for n in names}
        attrs = ["util", "i18n", "ScriptedLoadableModule", "parameterNodeWrapper", "app", "modules", "mrmlScene",
                 "selfTests", *HARNESS_CLASSES]
        self._saved_attrs = {a: slicer.__dict__.get(a, _MISSING) for a in attrs}

        qt = types.ModuleType("qt", "Qt as PythonQt presents it (harness: PyQt5 underneath)")
        qt.__getattr__ = pythonqt.qt_namespace_getattr
        qt.QUiLoader = pythonqt.wrapper_class(QUiLoader)
        sys.modules["qt"] = qt
        ctk = types.ModuleType("ctk", "CTK widgets (harness implementations)")
        for name, cls in HARNESS_CLASSES.items():
            if name.startswith("ctk"):
                wrapper = pythonqt.wrapper_class(cls)
                wrapper.__module__ = "ctk"
                setattr(ctk, name, wrapper)
        sys.modules["ctk"] = ctk
        for name, cls in HARNESS_CLASSES.items():
            if name.startswith("q"):
                wrapper = pythonqt.wrapper_class(cls)
                wrapper.__module__ = "slicer"
                setattr(slicer, name, wrapper)
        modules = types.ModuleType("slicer.modules")
        sys.modules["slicer.modules"] = modules
        slicer.modules = modules
        for m in FRAMEWORK_MODULES:
            path = FRAMEWORK_DIR / m
            if path.is_dir():
                mod = _load_by_path(f"slicer.{m}", path / "__init__.py", package_dir=path)
            else:
                mod = _load_by_path(f"slicer.{m}", FRAMEWORK_DIR / f"{m}.py")
            setattr(slicer, m, mod)
        self.app = qSlicerApplication(self)
        slicer.app = pythonqt.wrap(self.app)
        self.installed = True
        self.new_scene()
        return self

    def uninstall(self):
        if not self.installed:
            return
        self.close_scene()
        slicer = self._slicer
        for name in [n for n in sys.modules if n.startswith("slicer.parameterNodeWrapper")]:
            sys.modules.pop(name)
        for name, mod in self._saved_modules.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
        for attr, value in self._saved_attrs.items():
            if value is _MISSING:
                slicer.__dict__.pop(attr, None)
            else:
                setattr(slicer, attr, value)
        self.installed = False

    # -- scene -------------------------------------------------------------------------------------------------
    def new_scene(self):
        """A scene built like Slicer's: headless application logic, module logics, layout, slice views."""
        import slicer

        from CrossModalRegLib.headless import HeadlessSlicer

        self.close_scene()
        self.headless = HeadlessSlicer()
        self.scene = self.headless.scene
        self.app_logic = self.headless.app_logic
        self.layout_logic = slicer.vtkMRMLLayoutLogic()
        self.layout_logic.SetMRMLScene(self.scene)
        self.layout_node = self.layout_logic.GetLayoutNode()
        self.slice_logics = []
        import vtk

        collection = vtk.vtkCollection()
        for name in ("Red", "Yellow", "Green"):
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLScene(self.scene)
            logic.SetMRMLApplicationLogic(self.app_logic)
            logic.AddSliceNode(name)
            self.slice_logics.append(logic)
            collection.AddItem(logic)
        self.app_logic.SetSliceLogics(collection)
        self._slice_collection = collection
        slicer.mrmlScene = self.scene
        return self.scene

    def close_scene(self):
        if self.headless is None:
            return
        for logic in getattr(self, "slice_logics", []):
            logic.SetMRMLScene(None)
        self.slice_logics = []
        if self.app_logic is not None:
            self.app_logic.SetSliceLogics(None)
        if self.layout_logic is not None:
            self.layout_logic.SetMRMLScene(None)
        self.layout_logic = self.layout_node = None
        self.headless.close()
        self.headless = None
        self.scene = None

    # -- modules -----------------------------------------------------------------------------------------------
    def load_module(self, name):
        """Import ``<name>.py`` and instantiate it as Slicer's scripted-module loader does (qSlicerScriptedLoadable-
        Module: a parent with ``path``, the module class, then ``slicer.modules.<name>Instance``)."""
        import slicer

        path = ROOT / name / f"{name}.py"
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        module = sys.modules.get(name) or _load_by_path(name, path)
        parent = ModuleParent(name, str(path))
        instance = getattr(module, name)(parent)
        setattr(slicer.modules, name.lower(), parent)
        setattr(slicer.modules, f"{name}Instance", instance)
        self.app._modules._modules[name] = parent
        return module, parent, instance


_MISSING = object()


class ModuleParent:
    """The qSlicerScriptedLoadableModule that a ScriptedLoadableModule's ``parent`` is (its Python-settable
    properties: title, categories, contributors, helpText, acknowledgementText, icon, dependencies, path,
    hidden, index, isEntered)."""

    def __init__(self, name, path):
        self.name = name
        self.path = path
        self.title = ""
        self.categories = []
        self.dependencies = []
        self.contributors = []
        self.helpText = ""
        self.acknowledgementText = ""
        self.icon = None
        self.hidden = False
        self.index = -1
        self.isEntered = False
