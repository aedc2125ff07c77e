"""The CTK, qMRML and qSlicer widgets the modules' .ui files use, implemented on PyQt5.

Each class is named like the C++ class and declares ``CPP_API``: the properties, signals, public slots and
``Q_INVOKABLE`` methods of its header in ../shared/slicer-5.10. ``Testing/test_gui_harness.py`` parses those
headers and fails if the two differ, so the harness cannot offer module code anything Slicer does not (the
PythonQt layer in ``pythonqt.py`` hides every Python method that is not declared there).

Behaviour is implemented where modules depend on it (node lists of qMRMLNodeComboBox, values and signals of the
slider, collapsing, paths); the few declared members that need a real Slicer application (dialogs, the sort
filter proxy model, menu actions) raise ``NotImplementedError`` naming what to check by hand in Slicer.
"""

from __future__ import annotations

from PyQt5 import QtCore, QtGui, QtWidgets
from PyQt5.QtCore import pyqtProperty, pyqtSignal, pyqtSlot

#: Answers for modal dialogs (rename); a test appends the text the user would type. Empty: the dialog raises.
DIALOG_ANSWERS: list[str] = []


def _not_in_harness(what):
    raise NotImplementedError(f"{what} needs the real Slicer application; try it by hand in Slicer")


class qMRMLWidget(QtWidgets.QWidget):
    CPP_API = {
        "signals": ["mrmlSceneChanged(vtkMRMLScene*)"],
        "slots": ["setMRMLScene"],
        "invokables": ["mrmlScene", "preInitializeApplication", "postInitializeApplication", "pixmapFromIcon"],
        "static": ["preInitializeApplication", "postInitializeApplication", "pixmapFromIcon"],
    }
    mrmlSceneChanged = pyqtSignal(object)

    def __init__(self, parent=None, flags=QtCore.Qt.WindowFlags()):
        super().__init__(parent, flags)
        self._scene = None

    def mrmlScene(self):
        return self._scene

    def setMRMLScene(self, scene):
        if scene is self._scene:
            return
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    @staticmethod
    def preInitializeApplication():
        pass

    @staticmethod
    def postInitializeApplication():
        pass

    @staticmethod
    def pixmapFromIcon(icon):
        return icon.pixmap(32, 32)


class qSlicerWidget(qMRMLWidget):
    """qSlicerWidget (Base/QTGUI/qSlicerWidget.h) adds no Python-visible API beyond qMRMLWidget's."""

    CPP_API = {"signals": [], "slots": [], "invokables": []}


class ctkCollapsibleButton(QtWidgets.QAbstractButton):
    CPP_API = {"signals": ["contentsCollapsed(bool)"], "slots": [], "invokables": []}
    contentsCollapsed = pyqtSignal(bool)

    def __init__(self, *args):
        text = args[0] if args and isinstance(args[0], str) else ""
        parent = args[-1] if args and isinstance(args[-1], QtWidgets.QWidget) else None
        super().__init__(parent)
        self.setText(text)
        self.setCheckable(True)
        self.setChecked(True)
        self._collapsed = False
        self._collapsedHeight = 14
        self._flat = False
        self._frameShape = QtWidgets.QFrame.NoFrame
        self._frameShadow = QtWidgets.QFrame.Plain
        self._lineWidth = 1
        self._midLineWidth = 0
        self._textAlign = int(QtCore.Qt.AlignLeft | QtCore.Qt.AlignVCenter)
        self._indicatorAlign = int(QtCore.Qt.AlignLeft | QtCore.Qt.AlignVCenter)
        self.setSizePolicy(QtWidgets.QSizePolicy.Minimum, QtWidgets.QSizePolicy.Preferred)
        self.toggled.connect(self._onToggled)
        self.setContentsMargins(0, self._buttonHeight(), 0, 0)

    def _buttonHeight(self):
        opt = QtWidgets.QStyleOptionButton()
        opt.initFrom(self)
        h = max(self.fontMetrics().height(), 16) + 8
        return self.style().sizeFromContents(QtWidgets.QStyle.CT_PushButton, opt, QtCore.QSize(10, h), self).height()

    def _onToggled(self, checked):
        self.setCollapsed(not checked)

    def collapsed(self):
        return self._collapsed

    def setCollapsed(self, c):
        c = bool(c)
        self.setChecked(not c)
        if c == self._collapsed:
            return
        self._collapsed = c
        for child in self.children():
            if isinstance(child, QtWidgets.QWidget) and not child.isWindow():
                child.setVisible(not c)
        self.setMaximumHeight(self._buttonHeight() + self._collapsedHeight if c else 16777215)
        self.updateGeometry()
        self.contentsCollapsed.emit(c)

    def childEvent(self, event):
        super().childEvent(event)
        if event.type() == QtCore.QEvent.ChildPolished and self._collapsed:
            child = event.child()
            if isinstance(child, QtWidgets.QWidget):
                child.setVisible(False)

    def collapsedHeight(self):
        return self._collapsedHeight

    def setCollapsedHeight(self, h):
        self._collapsedHeight = int(h)

    def isFlat(self):
        return self._flat

    def setFlat(self, f):
        self._flat = bool(f)

    def contentsFrameShape(self):
        return self._frameShape

    def setContentsFrameShape(self, s):
        self._frameShape = int(s)

    def contentsFrameShadow(self):
        return self._frameShadow

    def setContentsFrameShadow(self, s):
        self._frameShadow = int(s)

    def contentsLineWidth(self):
        return self._lineWidth

    def setContentsLineWidth(self, w):
        self._lineWidth = int(w)

    def contentsMidLineWidth(self):
        return self._midLineWidth

    def setContentsMidLineWidth(self, w):
        self._midLineWidth = int(w)

    def buttonTextAlignment(self):
        return self._textAlign

    def setButtonTextAlignment(self, a):
        self._textAlign = int(a)

    def indicatorAlignment(self):
        return self._indicatorAlign

    def setIndicatorAlignment(self, a):
        self._indicatorAlign = int(a)

    def sizeHint(self):
        bh = self._buttonHeight()
        width = self.fontMetrics().horizontalAdvance(self.text()) + 40
        if self._collapsed or self.layout() is None:
            return QtCore.QSize(width, bh + (self._collapsedHeight if self._collapsed else 0))
        lh = self.layout().sizeHint()
        return QtCore.QSize(max(width, lh.width()), bh + lh.height())

    def minimumSizeHint(self):
        bh = self._buttonHeight()
        if self._collapsed or self.layout() is None:
            return QtCore.QSize(40, bh)
        lm = self.layout().minimumSize()
        return QtCore.QSize(max(40, lm.width()), bh + lm.height())

    def hitButton(self, pos):
        return QtCore.QRect(0, 0, self.width(), self._buttonHeight()).contains(pos)

    def paintEvent(self, event):
        p = QtWidgets.QStylePainter(self)
        opt = QtWidgets.QStyleOptionButton()
        opt.initFrom(self)
        opt.rect = QtCore.QRect(0, 0, self.width(), self._buttonHeight())
        opt.state |= QtWidgets.QStyle.State_Raised
        p.drawControl(QtWidgets.QStyle.CE_PushButtonBevel, opt)
        ind = QtWidgets.QStyleOption()
        ind.initFrom(self)
        size = 9
        ind.rect = QtCore.QRect(6, (self._buttonHeight() - size) // 2, size, size)
        p.drawPrimitive(QtWidgets.QStyle.PE_IndicatorArrowRight if self._collapsed
                        else QtWidgets.QStyle.PE_IndicatorArrowDown, ind)
        p.drawText(QtCore.QRect(6 + size + 6, 0, self.width() - 24, self._buttonHeight()),
                   int(QtCore.Qt.AlignLeft | QtCore.Qt.AlignVCenter), self.text())
        if not self._collapsed:
            pen = QtGui.QPen(self.palette().color(QtGui.QPalette.Mid))
            p.setPen(pen)
            p.drawRect(0, self._buttonHeight(), self.width() - 1, self.height() - self._buttonHeight() - 1)

    collapsed = pyqtProperty(bool, collapsed, setCollapsed, notify=contentsCollapsed)
    collapsedHeight = pyqtProperty(int, collapsedHeight, setCollapsedHeight)
    flat = pyqtProperty(bool, isFlat, setFlat)
    contentsFrameShape = pyqtProperty(int, contentsFrameShape, setContentsFrameShape)
    contentsFrameShadow = pyqtProperty(int, contentsFrameShadow, setContentsFrameShadow)
    contentsLineWidth = pyqtProperty(int, contentsLineWidth, setContentsLineWidth)
    contentsMidLineWidth = pyqtProperty(int, contentsMidLineWidth, setContentsMidLineWidth)
    buttonTextAlignment = pyqtProperty(int, buttonTextAlignment, setButtonTextAlignment)
    indicatorAlignment = pyqtProperty(int, indicatorAlignment, setIndicatorAlignment)


class ctkSliderWidget(QtWidgets.QWidget):
    """A slider and a spin box kept in sync; ``value`` is a double (the spin box is the reference)."""

    CPP_API = {
        "signals": ["valueChanged(double)", "valueIsChanging(double)", "decimalsChanged(int)"],
        "slots": ["reset", "setValue", "setSpinBoxVisible", "setDecimals"],
        "invokables": [],
    }
    valueChanged = pyqtSignal(float)
    valueIsChanging = pyqtSignal(float)
    decimalsChanged = pyqtSignal(int)

    _STEPS = 1000

    def __init__(self, parent=None):
        super().__init__(parent)
        lay = QtWidgets.QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self._slider = QtWidgets.QSlider(QtCore.Qt.Horizontal, self)
        self._slider.setRange(0, self._STEPS)
        self._spin = QtWidgets.QDoubleSpinBox(self)
        self._spin.setRange(0.0, 99.0)
        self._spin.setDecimals(2)
        self._spin.setSingleStep(1.0)
        lay.addWidget(self._slider, 1)
        lay.addWidget(self._spin)
        self._tracking = True
        self._tickInterval = 0.0
        self._sync = 0
        self._popup = False
        self._syncing = False
        self._spin.valueChanged.connect(self._fromSpin)
        self._slider.valueChanged.connect(self._fromSlider)
        self._updateSlider()

    def _updateSlider(self):
        lo, hi = self._spin.minimum(), self._spin.maximum()
        frac = 0.0 if hi <= lo else (self._spin.value() - lo) / (hi - lo)
        self._syncing = True
        self._slider.setValue(int(round(frac * self._STEPS)))
        self._syncing = False

    def _fromSpin(self, v):
        self._updateSlider()
        self.valueIsChanging.emit(v)
        self.valueChanged.emit(v)

    def _fromSlider(self, i):
        if self._syncing:
            return
        lo, hi = self._spin.minimum(), self._spin.maximum()
        v = lo + (hi - lo) * i / self._STEPS
        step = self._spin.singleStep()
        if step > 0:
            v = lo + round((v - lo) / step) * step
        self._spin.setValue(v)

    def value(self):
        return self._spin.value()

    def setValue(self, v):
        self._spin.setValue(float(v))

    def minimum(self):
        return self._spin.minimum()

    def setMinimum(self, v):
        self._spin.setMinimum(float(v))
        self._updateSlider()

    def maximum(self):
        return self._spin.maximum()

    def setMaximum(self, v):
        self._spin.setMaximum(float(v))
        self._updateSlider()

    def singleStep(self):
        return self._spin.singleStep()

    def setSingleStep(self, s):
        self._spin.setSingleStep(float(s))

    def pageStep(self):
        return self._spin.singleStep() * 10

    def setPageStep(self, s):
        pass

    def decimals(self):
        return self._spin.decimals()

    def setDecimals(self, d):
        if d != self._spin.decimals():
            self._spin.setDecimals(int(d))
            self.decimalsChanged.emit(int(d))

    def prefix(self):
        return self._spin.prefix()

    def setPrefix(self, p):
        self._spin.setPrefix(p)

    def suffix(self):
        return self._spin.suffix()

    def setSuffix(self, s):
        self._spin.setSuffix(s)

    def tickInterval(self):
        return self._tickInterval

    def setTickInterval(self, t):
        self._tickInterval = float(t)

    def tickPosition(self):
        return int(self._slider.tickPosition())

    def setTickPosition(self, p):
        self._slider.setTickPosition(QtWidgets.QSlider.TickPosition(int(p)))

    def synchronizeSiblings(self):
        return self._sync

    def setSynchronizeSiblings(self, s):
        self._sync = int(s)

    def spinBoxAlignment(self):
        return int(self._spin.alignment())

    def setSpinBoxAlignment(self, a):
        self._spin.setAlignment(QtCore.Qt.Alignment(int(a)))

    def hasTracking(self):
        return self._tracking

    def setTracking(self, t):
        self._tracking = bool(t)
        self._slider.setTracking(bool(t))

    def isSpinBoxVisible(self):
        return not self._spin.isHidden()

    def setSpinBoxVisible(self, v):
        self._spin.setVisible(bool(v))

    def hasPopupSlider(self):
        return self._popup

    def setPopupSlider(self, p):
        self._popup = bool(p)

    def invertedAppearance(self):
        return self._slider.invertedAppearance()

    def setInvertedAppearance(self, i):
        self._slider.setInvertedAppearance(bool(i))

    def invertedControls(self):
        return self._slider.invertedControls()

    def setInvertedControls(self, i):
        self._slider.setInvertedControls(bool(i))

    def reset(self):
        self.setValue(0.0)

    def setRange(self, lo, hi):  # not a slot in ctkSliderWidget.h: hidden from module code by the wrapper
        self.setMinimum(lo)
        self.setMaximum(hi)

    decimals = pyqtProperty(int, decimals, setDecimals, notify=decimalsChanged)
    singleStep = pyqtProperty(float, singleStep, setSingleStep)
    pageStep = pyqtProperty(float, pageStep, setPageStep)
    minimum = pyqtProperty(float, minimum, setMinimum)
    maximum = pyqtProperty(float, maximum, setMaximum)
    value = pyqtProperty(float, value, setValue)
    prefix = pyqtProperty(str, prefix, setPrefix)
    suffix = pyqtProperty(str, suffix, setSuffix)
    tickInterval = pyqtProperty(float, tickInterval, setTickInterval)
    tickPosition = pyqtProperty(int, tickPosition, setTickPosition)
    synchronizeSiblings = pyqtProperty(int, synchronizeSiblings, setSynchronizeSiblings)
    spinBoxAlignment = pyqtProperty(int, spinBoxAlignment, setSpinBoxAlignment)
    tracking = pyqtProperty(bool, hasTracking, setTracking)
    spinBoxVisible = pyqtProperty(bool, isSpinBoxVisible, setSpinBoxVisible)
    popupSlider = pyqtProperty(bool, hasPopupSlider, setPopupSlider)
    invertedAppearance = pyqtProperty(bool, invertedAppearance, setInvertedAppearance)
    invertedControls = pyqtProperty(bool, invertedControls, setInvertedControls)


class ctkPathLineEdit(QtWidgets.QWidget):
    CPP_API = {
        "signals": ["validInputChanged(bool)", "currentPathChanged(QString)"],
        "slots": ["setCurrentPath", "browse", "retrieveHistory", "addCurrentPathToHistory"],
        "invokables": ["comboBox"],
        "enums": ["Dirs", "Files", "Drives", "NoDotAndDotDot", "AllEntries", "Readable", "Writable", "Executable",
                  "ShowDirsOnly", "DontResolveSymlinks", "DontConfirmOverwrite", "DontUseNativeDialog",
                  "ReadOnly", "HideNameFilterDetails", "AdjustToContents", "AdjustToContentsOnFirstShow",
                  "AdjustToMinimumContentsLength", "AdjustToMinimumContentsLengthWithIcon"],
    }
    validInputChanged = pyqtSignal(bool)
    currentPathChanged = pyqtSignal(str)

    # ctkPathLineEdit::Filter / Option / SizeAdjustPolicy values (ctkPathLineEdit.h mirrors QDir/QFileDialog).
    Dirs, Files, Drives, NoDotAndDotDot, AllEntries = 0x001, 0x002, 0x004, 0x1000, 0x007
    Readable, Writable, Executable = 0x010, 0x020, 0x040
    ShowDirsOnly, DontResolveSymlinks, DontConfirmOverwrite = 0x1, 0x2, 0x4
    DontUseNativeDialog, ReadOnly, HideNameFilterDetails = 0x10, 0x20, 0x40
    AdjustToContents, AdjustToContentsOnFirstShow = 0, 1
    AdjustToMinimumContentsLength, AdjustToMinimumContentsLengthWithIcon = 2, 3

    def __init__(self, *args):
        parent = args[-1] if args and isinstance(args[-1], QtWidgets.QWidget) else None
        super().__init__(parent)
        lay = QtWidgets.QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self._combo = QtWidgets.QComboBox(self)
        self._combo.setEditable(True)
        self._combo.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Fixed)
        self._browse = QtWidgets.QToolButton(self)
        self._browse.setText("...")
        lay.addWidget(self._combo, 1)
        lay.addWidget(self._browse)
        self._label = ""
        self._filters = self.AllEntries
        self._options = 0
        self._settingKey = ""
        self._nameFilters = []
        self._minLen = 0
        self._valid = False
        self._combo.editTextChanged.connect(self._onText)

    def _isValid(self, path):
        import os

        if not path:
            return False
        if self._filters & self.Dirs and not self._filters & self.Files:
            return os.path.isdir(path)
        if self._filters & self.Files and not self._filters & self.Dirs:
            return os.path.isfile(path) or not (self._filters & self.Readable)
        return True

    def _onText(self, text):
        valid = self._isValid(text)
        if valid != self._valid:
            self._valid = valid
            self.validInputChanged.emit(valid)
        self.currentPathChanged.emit(text)

    def currentPath(self):
        return self._combo.currentText()

    def setCurrentPath(self, path):
        if path != self._combo.currentText():
            self._combo.setEditText(path)

    def label(self):
        return self._label

    def setLabel(self, label):
        self._label = label

    def filters(self):
        return self._filters

    def setFilters(self, f):
        self._filters = int(f)

    def options(self):
        return self._options

    def setOptions(self, o):
        self._options = int(o)

    def settingKey(self):
        return self._settingKey

    def setSettingKey(self, k):
        self._settingKey = k

    def showBrowseButton(self):
        return not self._browse.isHidden()

    def setShowBrowseButton(self, v):
        self._browse.setVisible(bool(v))

    def showHistoryButton(self):
        return False

    def setShowHistoryButton(self, v):
        pass

    def sizeAdjustPolicy(self):
        return int(self._combo.sizeAdjustPolicy())

    def setSizeAdjustPolicy(self, p):
        self._combo.setSizeAdjustPolicy(QtWidgets.QComboBox.SizeAdjustPolicy(int(p)))

    def minimumContentsLength(self):
        return self._minLen

    def setMinimumContentsLength(self, n):
        self._minLen = int(n)
        self._combo.setMinimumContentsLength(int(n))

    def nameFilters(self):
        return list(self._nameFilters)

    def setNameFilters(self, f):
        self._nameFilters = list(f)

    def comboBox(self):
        return self._combo

    def browse(self):
        _not_in_harness("ctkPathLineEdit.browse() (a file dialog)")

    def retrieveHistory(self):
        pass

    def addCurrentPathToHistory(self):
        pass

    label = pyqtProperty(str, label, setLabel)
    filters = pyqtProperty(int, filters, setFilters)
    currentPath = pyqtProperty(str, currentPath, setCurrentPath, user=True)
    options = pyqtProperty(int, options, setOptions)
    settingKey = pyqtProperty(str, settingKey, setSettingKey)
    showBrowseButton = pyqtProperty(bool, showBrowseButton, setShowBrowseButton)
    showHistoryButton = pyqtProperty(bool, showHistoryButton, setShowHistoryButton)
    sizeAdjustPolicy = pyqtProperty(int, sizeAdjustPolicy, setSizeAdjustPolicy)
    minimumContentsLength = pyqtProperty(int, minimumContentsLength, setMinimumContentsLength)
    nameFilters = pyqtProperty("QStringList", nameFilters, setNameFilters)


class qMRMLNodeComboBox(QtWidgets.QWidget):
    """Lists the scene's nodes of ``nodeTypes`` (and their subclasses when ``showChildNodeTypes``), as Slicer does.

    Follows qMRMLNodeComboBox.cxx: the "None" item first when ``noneEnabled``; nodes hidden from editors are left
    out unless ``showHidden``; ``hideChildNodeTypes`` removes subclasses; "Create new ...", "Delete current ..."
    and "Rename current ..." action items after the nodes when enabled; when "None" is not allowed and nothing
    is selected, the first node that appears becomes current (what fills an input selector after loading data).
    """

    CPP_API = {
        "signals": ["currentNodeChanged(vtkMRMLNode*)", "currentNodeChanged(bool)", "currentNodeIDChanged(QString)",
                    "nodeActivated(vtkMRMLNode*)", "nodeAdded(vtkMRMLNode*)", "nodeAddedByUser(vtkMRMLNode*)",
                    "nodeAboutToBeRemoved(vtkMRMLNode*)", "currentNodeRenamed(QString)",
                    "nodeAboutToBeEdited(vtkMRMLNode*)"],
        "slots": ["setMRMLScene", "setCurrentNode", "setCurrentNodeID", "setCurrentNodeIndex", "addNode",
                  "removeCurrentNode", "editCurrentNode", "renameCurrentNode"],
        "invokables": ["mrmlScene", "addAttribute", "removeAttribute", "setNodeTypeLabel", "nodeTypeLabel",
                       "nodeCount", "nodeFromIndex", "currentNode", "currentNodeId", "sortFilterProxyModel",
                       "addMenuAction"],
    }
    currentNodeChanged = pyqtSignal([object], [bool])
    PYQT_SIGNAL_OVERLOADS = {"currentNodeChanged(vtkMRMLNode*)": object, "currentNodeChanged(bool)": bool}
    currentNodeIDChanged = pyqtSignal(str)
    nodeActivated = pyqtSignal(object)
    nodeAdded = pyqtSignal(object)
    nodeAddedByUser = pyqtSignal(object)
    nodeAboutToBeRemoved = pyqtSignal(object)
    currentNodeRenamed = pyqtSignal(str)
    nodeAboutToBeEdited = pyqtSignal(object)

    _ACTION_ROLE = QtCore.Qt.UserRole + 1

    def __init__(self, parent=None):
        super().__init__(parent)
        lay = QtWidgets.QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self._combo = QtWidgets.QComboBox(self)
        self._combo.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Fixed)
        self._combo.setSizeAdjustPolicy(QtWidgets.QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self._combo.setMinimumContentsLength(12)
        lay.addWidget(self._combo)
        self.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Fixed)
        self._scene = None
        self._sceneObservers = []
        self._nodeObservers = {}
        self._nodeTypes = []
        self._showHidden = False
        self._showChildNodeTypes = True
        self._hideChildNodeTypes = []
        self._baseNames = {}
        self._noneEnabled = False
        self._addEnabled = True
        self._removeEnabled = True
        self._editEnabled = False
        self._renameEnabled = False
        self._interactionTag = ""
        self._selectUponCreation = True
        self._noneDisplay = "None"
        self._attributes = {}  # nodeType -> {name: value}
        self._typeLabels = {}
        self._currentID = ""
        self._refreshing = False
        self._combo.activated.connect(self._onActivated)
        self._combo.currentIndexChanged.connect(self._onIndexChanged)
        self._refresh()

    # -- node list ------------------------------------------------------------------------------------------------
    def _accepts(self, node):
        if node is None or not self._nodeTypes:
            return False
        if node.GetHideFromEditors() and not self._showHidden:
            return False
        cls = node.GetClassName()
        ok = False
        for t in self._nodeTypes:
            if cls == t or (self._showChildNodeTypes and node.IsA(t)):
                attrs = self._attributes.get(t, {})
                if all((node.GetAttribute(a) or "") == ("" if v is None else str(v)) for a, v in attrs.items()):
                    ok = True
                    break
        if not ok:
            return False
        return not any(node.IsA(h) and cls not in self._nodeTypes for h in self._hideChildNodeTypes)

    def _nodes(self):
        if self._scene is None:
            return []
        out = []
        for i in range(self._scene.GetNumberOfNodes()):
            n = self._scene.GetNthNode(i)
            if self._accepts(n):
                out.append(n)
        return out

    def _refresh(self):
        self._refreshing = True
        try:
            self._combo.clear()
            if self._noneEnabled:
                self._combo.addItem(self._noneDisplay, "")
            for n in self._nodes():
                self._combo.addItem(n.GetName() or "", n.GetID())
            typeLabel = self._typeLabel(self._nodeTypes[0]) if self._nodeTypes else "node"
            if self._scene is not None and self._nodeTypes:
                if self._addEnabled:
                    self._addAction(f"Create new {typeLabel}", "add")
                if self._removeEnabled:
                    self._addAction(f"Delete current {typeLabel}", "remove")
                if self._editEnabled:
                    self._addAction(f"Edit current {typeLabel}", "edit")
                if self._renameEnabled:
                    self._addAction(f"Rename current {typeLabel}", "rename")
            idx = self._combo.findData(self._currentID) if self._currentID else (0 if self._noneEnabled else -1)
            self._combo.setCurrentIndex(idx)
        finally:
            self._refreshing = False
        self._checkCurrent()

    def _addAction(self, text, action):
        self._combo.addItem(text, None)
        self._combo.setItemData(self._combo.count() - 1, action, self._ACTION_ROLE)

    def _typeLabel(self, nodeType):
        if nodeType in self._typeLabels:
            return self._typeLabels[nodeType]
        if self._scene is not None:
            label = self._scene.GetTypeDisplayNameByClassName(nodeType)
            if label:
                return label
        return nodeType.replace("vtkMRML", "").replace("Node", "")

    def _checkCurrent(self):
        """Current node gone -> none/first; nothing selected and None not allowed -> the first node."""
        nodes = self._nodes()
        ids = [n.GetID() for n in nodes]
        if self._currentID and self._currentID not in ids:
            self._setCurrentID(ids[0] if (ids and not self._noneEnabled) else "")
        elif not self._currentID and not self._noneEnabled and ids:
            self._setCurrentID(ids[0])

    def _setCurrentID(self, nodeID):
        nodeID = nodeID or ""
        if nodeID and nodeID not in [n.GetID() for n in self._nodes()]:
            nodeID = ""
        changed = nodeID != self._currentID
        self._currentID = nodeID
        self._refreshing = True
        idx = self._combo.findData(nodeID) if nodeID else (0 if self._noneEnabled else -1)
        self._combo.setCurrentIndex(idx)
        self._refreshing = False
        if changed:
            node = self.currentNode()
            self.currentNodeChanged[object].emit(node)
            self.currentNodeChanged[bool].emit(node is not None)
            self.currentNodeIDChanged.emit(nodeID)

    def _onIndexChanged(self, index):
        if self._refreshing or index < 0:
            return
        if self._combo.itemData(index, self._ACTION_ROLE):
            return
        self._setCurrentID(self._combo.itemData(index) or "")

    def _onActivated(self, index):
        action = self._combo.itemData(index, self._ACTION_ROLE)
        if action:
            self._setCurrentID(self._currentID)  # put the selection back before acting
            {"add": self.addNode, "remove": self.removeCurrentNode, "edit": self.editCurrentNode,
             "rename": self.renameCurrentNode}[action]()
            return
        self.nodeActivated.emit(self.currentNode())

    # -- scene observation ---------------------------------------------------------------------------------------
    def _observeScene(self, scene):
        import vtk

        if self._scene is not None:
            for tag in self._sceneObservers:
                self._scene.RemoveObserver(tag)
        self._sceneObservers = []
        for node, tag in self._nodeObservers.values():
            node.RemoveObserver(tag)
        self._nodeObservers = {}
        self._scene = scene
        if scene is None:
            return
        import slicer

        self._sceneObservers = [
            scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, self._onNodeAdded),
            scene.AddObserver(slicer.vtkMRMLScene.NodeAboutToBeRemovedEvent, self._onNodeAboutToBeRemoved),
            scene.AddObserver(slicer.vtkMRMLScene.NodeRemovedEvent, lambda *a: self._refreshLater()),
            scene.AddObserver(slicer.vtkMRMLScene.EndCloseEvent, lambda *a: self._refreshLater()),
            scene.AddObserver(slicer.vtkMRMLScene.EndImportEvent, lambda *a: self._refreshLater()),
            scene.AddObserver(slicer.vtkMRMLScene.EndBatchProcessEvent, lambda *a: self._refreshLater()),
        ]
        _ = vtk

    def _observeNode(self, node):
        import vtk

        if node.GetID() not in self._nodeObservers:
            tag = node.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: self._onNodeModified(caller))
            self._nodeObservers[node.GetID()] = (node, tag)

    def _refreshLater(self):
        if self._scene is not None and self._scene.IsBatchProcessing():
            return
        self._refresh()

    def _onNodeAdded(self, scene, event, *args):
        # vtkMRMLScene passes the node as call data; the VTK Python wrapper gives no call data here, so rescan.
        before = set(self._combo.itemData(i) for i in range(self._combo.count()))
        self._refreshLater()
        for n in self._nodes():
            self._observeNode(n)
            if n.GetID() not in before:
                self.nodeAdded.emit(n)

    def _onNodeAboutToBeRemoved(self, scene, event, *args):
        pass

    def _onNodeModified(self, node):
        idx = self._combo.findData(node.GetID())
        if idx >= 0 and self._combo.itemText(idx) != node.GetName():
            self._combo.setItemText(idx, node.GetName() or "")
            if node.GetID() == self._currentID:
                self.currentNodeRenamed.emit(node.GetName() or "")
        elif idx < 0 and self._accepts(node) or idx >= 0 and not self._accepts(node):
            self._refresh()

    # -- declared API -------------------------------------------------------------------------------------------
    def mrmlScene(self):
        return self._scene

    def setMRMLScene(self, scene):
        if scene is self._scene:
            return
        self._currentID = ""
        self._observeScene(scene)
        if scene is not None:
            for n in self._nodes():
                self._observeNode(n)
        self._refresh()
        if scene is None:
            self._setCurrentID("")

    def nodeTypes(self):
        return list(self._nodeTypes)

    def setNodeTypes(self, types):
        self._nodeTypes = list(types)
        self._refresh()

    def showHidden(self):
        return self._showHidden

    def setShowHidden(self, v):
        self._showHidden = bool(v)
        self._refresh()

    def showChildNodeTypes(self):
        return self._showChildNodeTypes

    def setShowChildNodeTypes(self, v):
        self._showChildNodeTypes = bool(v)
        self._refresh()

    def hideChildNodeTypes(self):
        return list(self._hideChildNodeTypes)

    def setHideChildNodeTypes(self, types):
        self._hideChildNodeTypes = list(types)
        self._refresh()

    def baseName(self):
        return self._baseNames.get("", "")

    def setBaseName(self, name, nodeType=""):
        self._baseNames[nodeType] = name

    def noneEnabled(self):
        return self._noneEnabled

    def setNoneEnabled(self, v):
        self._noneEnabled = bool(v)
        self._refresh()

    def addEnabled(self):
        return self._addEnabled

    def setAddEnabled(self, v):
        self._addEnabled = bool(v)
        self._refresh()

    def removeEnabled(self):
        return self._removeEnabled

    def setRemoveEnabled(self, v):
        self._removeEnabled = bool(v)
        self._refresh()

    def editEnabled(self):
        return self._editEnabled

    def setEditEnabled(self, v):
        self._editEnabled = bool(v)
        self._refresh()

    def renameEnabled(self):
        return self._renameEnabled

    def setRenameEnabled(self, v):
        self._renameEnabled = bool(v)
        self._refresh()

    def interactionNodeSingletonTag(self):
        return self._interactionTag

    def setInteractionNodeSingletonTag(self, tag):
        self._interactionTag = tag

    def selectNodeUponCreation(self):
        return self._selectUponCreation

    def setSelectNodeUponCreation(self, v):
        self._selectUponCreation = bool(v)

    def noneDisplay(self):
        return self._noneDisplay

    def setNoneDisplay(self, text):
        self._noneDisplay = text
        self._refresh()

    def sizeAdjustPolicy(self):
        return int(self._combo.sizeAdjustPolicy())

    def setSizeAdjustPolicy(self, p):
        self._combo.setSizeAdjustPolicy(QtWidgets.QComboBox.SizeAdjustPolicy(int(p)))

    def addAttribute(self, nodeType, attributeName, attributeValue=None):
        self._attributes.setdefault(nodeType, {})[attributeName] = attributeValue
        self._refresh()

    def removeAttribute(self, nodeType, attributeName):
        self._attributes.get(nodeType, {}).pop(attributeName, None)
        self._refresh()

    def setNodeTypeLabel(self, label, nodeType):
        self._typeLabels[nodeType] = label
        self._refresh()

    def nodeTypeLabel(self, nodeType):
        return self._typeLabel(nodeType)

    def nodeCount(self):
        return len(self._nodes())

    def nodeFromIndex(self, index):
        nodes = self._nodes()
        return nodes[index] if 0 <= index < len(nodes) else None

    def currentNode(self):
        if not self._currentID or self._scene is None:
            return None
        return self._scene.GetNodeByID(self._currentID)

    def currentNodeID(self):
        return self._currentID

    def currentNodeId(self):
        return self._currentID

    def setCurrentNode(self, node):
        if isinstance(node, str):
            self._setCurrentID(node)
        else:
            self._setCurrentID(node.GetID() if node is not None else "")

    def setCurrentNodeID(self, nodeID):
        self._setCurrentID(nodeID)

    def setCurrentNodeIndex(self, index):
        node = self.nodeFromIndex(index)
        self._setCurrentID(node.GetID() if node is not None else "")

    def sortFilterProxyModel(self):
        _not_in_harness("qMRMLNodeComboBox.sortFilterProxyModel()")

    def addMenuAction(self, action):
        _not_in_harness("qMRMLNodeComboBox.addMenuAction()")

    def addNode(self, nodeType=None):
        if self._scene is None or not self._nodeTypes:
            return None
        nodeType = nodeType or self._nodeTypes[0]
        base = self._baseNames.get(nodeType) or self._baseNames.get("") or self._typeLabel(nodeType)
        node = self._scene.CreateNodeByClass(nodeType)
        node.UnRegister(None)
        node.SetName(self._scene.GenerateUniqueName(base))
        for name, value in self._attributes.get(nodeType, {}).items():
            node.SetAttribute(name, "" if value is None else str(value))
        self._scene.AddNode(node)
        if hasattr(node, "CreateDefaultDisplayNodes"):
            node.CreateDefaultDisplayNodes()
        self.nodeAddedByUser.emit(node)
        if self._selectUponCreation:
            self.setCurrentNode(node)
        return node

    def removeCurrentNode(self):
        node = self.currentNode()
        if node is not None:
            self.nodeAboutToBeRemoved.emit(node)
            self._scene.RemoveNode(node)

    def editCurrentNode(self):
        self.nodeAboutToBeEdited.emit(self.currentNode())

    def renameCurrentNode(self):
        node = self.currentNode()
        if node is None:
            return
        if not DIALOG_ANSWERS:
            _not_in_harness("qMRMLNodeComboBox.renameCurrentNode() (a modal dialog; queue widgets.DIALOG_ANSWERS)")
        node.SetName(DIALOG_ANSWERS.pop(0))

    currentNodeID = pyqtProperty(str, currentNodeID, setCurrentNodeID, notify=currentNodeIDChanged)
    currentNodeId = pyqtProperty(str, currentNodeId, setCurrentNode)
    nodeTypes = pyqtProperty("QStringList", nodeTypes, setNodeTypes)
    showHidden = pyqtProperty(bool, showHidden, setShowHidden)
    showChildNodeTypes = pyqtProperty(bool, showChildNodeTypes, setShowChildNodeTypes)
    hideChildNodeTypes = pyqtProperty("QStringList", hideChildNodeTypes, setHideChildNodeTypes)
    baseName = pyqtProperty(str, baseName, setBaseName)
    noneEnabled = pyqtProperty(bool, noneEnabled, setNoneEnabled)
    addEnabled = pyqtProperty(bool, addEnabled, setAddEnabled)
    removeEnabled = pyqtProperty(bool, removeEnabled, setRemoveEnabled)
    editEnabled = pyqtProperty(bool, editEnabled, setEditEnabled)
    renameEnabled = pyqtProperty(bool, renameEnabled, setRenameEnabled)
    interactionNodeSingletonTag = pyqtProperty(str, interactionNodeSingletonTag, setInteractionNodeSingletonTag)
    selectNodeUponCreation = pyqtProperty(bool, selectNodeUponCreation, setSelectNodeUponCreation)
    noneDisplay = pyqtProperty(str, noneDisplay, setNoneDisplay)
    sizeAdjustPolicy = pyqtProperty(int, sizeAdjustPolicy, setSizeAdjustPolicy)


def _placeholder(name, base=QtWidgets.QWidget):
    """Classes the parameterNodeWrapper connectors compare widget types against but no .ui of ours uses."""

    def __init__(self, *args, **kwargs):
        _not_in_harness(f"{name} (not implemented by the harness: no .ui of the extension uses it)")

    return type(name, (base,), {"CPP_API": {"signals": [], "slots": [], "invokables": []}, "__init__": __init__})


#: Harness classes that implement a header (held against it by the tests).
IMPLEMENTED = {c.__name__: c for c in (qMRMLWidget, qMRMLNodeComboBox, ctkCollapsibleButton, ctkSliderWidget,
                                        ctkPathLineEdit)}
CTK_PLACEHOLDERS = {n: _placeholder(n) for n in (
    "ctkCheckBox", "ctkCheckablePushButton", "ctkDoubleSlider", "ctkDoubleSpinBox", "ctkComboBox",
    "ctkRangeWidget", "ctkDoubleRangeSlider", "ctkDirectoryButton", "ctkColorPickerButton")}
SLICER_PLACEHOLDERS = {n: _placeholder(n) for n in ("qMRMLSliderWidget", "qMRMLSpinBox", "qMRMLRangeWidget")}
_ = (pyqtSlot,)


class qSlicerScriptedLoadableModuleWidget(qSlicerWidget):
    """The module panel a scripted Widget's ``parent`` is (qSlicerAbstractModuleWidget + ScriptedLoadable...).

    ``enter()``/``exit()`` call the Python widget's methods and keep ``isEntered`` as Slicer's module panel does.
    """

    CPP_API = {"signals": [], "slots": [], "invokables": ["enter", "exit", "reload", "self"]}

    def __init__(self, moduleName="", parent=None):
        super().__init__(parent)
        self._moduleName = moduleName
        self._entered = False
        self._python = None

    def isEntered(self):
        return self._entered

    def moduleName(self):
        return self._moduleName

    def enter(self):
        self._entered = True
        if self._python is not None:
            self._python.enter()

    def exit(self):
        if self._python is not None:
            self._python.exit()
        self._entered = False

    def reload(self):
        _not_in_harness("reload()")

    def self(self):
        return self._python

    isEntered = pyqtProperty(bool, isEntered)
    moduleName = pyqtProperty(str, moduleName)
