"""CrossModalRegLandmarks: protocol-driven landmark annotation with inter-annotator statistics.

Several annotators place the landmarks of a versioned protocol on the fixed and the moving image; every change is
saved at once to a session folder. The module computes consensus positions, the fiducial localisation error (FLE),
outliers, per-annotator bias, ICC(2,1) and repeatability, a point-based registration (rigid, similarity, affine,
thin-plate spline) with FRE and leave-one-out TRE, and the expected TRE map of Fitzpatrick and West (1998).

The computing lives in ``CrossModalRegLib.landmarks`` (Qt-free, tested headless); this file binds the GUI to a
parameter node and delegates to it. Transforms map FIXED points to MOVING points (the moving volume goes under the
output transform node, and so do the moving image's annotation and consensus nodes). Every point is saved in its
image's OWN space (LPS mm of that image's grid, before any registration transform), also when it is clicked on
the moving image displayed through the registration.
"""

import logging
import os
import pathlib
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLTableNode, vtkMRMLTransformNode, vtkMRMLVectorVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


#
# CrossModalRegLandmarks
#
class CrossModalRegLandmarks(ScriptedLoadableModule):
    """Module metadata."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CrossModalReg Landmarks")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = ["Markups", "CrossModalReg"]  # CrossModalReg puts CrossModalRegLib on the path
        self.parent.contributors = ["CrossModalReg developers"]
        self.parent.helpText = _(
            "Annotate the landmarks of a protocol as a named annotator on the fixed and the moving image; every "
            "point is saved at once, with its annotator, image and timestamps, to a session folder. Compute the "
            "consensus, the fiducial localisation error (FLE), outliers, per-annotator bias, ICC(2,1) and "
            "repeatability; a point-based registration (FIXED to MOVING) with FRE and leave-one-out TRE; and the "
            "expected TRE map (Fitzpatrick and West, 1998)."
        )
        self.parent.acknowledgementText = _("Part of the CrossModalReg extension.")


#
# CrossModalRegLandmarksParameterNode
#
@parameterNodeWrapper
class CrossModalRegLandmarksParameterNode:
    """Everything an annotation session and its analysis need; saved with the scene.

    protocolFile: the landmark protocol (JSON); used when a new session is started.
    sessionFolder: where every change is saved (a new folder starts a session, an existing one resumes it).
    annotator, repeat: who annotates, and whether this is a repeat (2) for repeatability.
    outlierDistanceMm: absolute outlier threshold in mm (0: off); outlierFactor: k of the rule
    median + k x 1.4826 x MAD of the leave-one-out distances.
    fleMm: RMS fiducial localisation error for the expected TRE map (0: use the measured FLE).
    fixedImageName, movingImageName: which images of the session the fixed and moving volumes show (a session
    made by ``crossmodalreg landmarks import`` holds any number of named images; empty: "fixed" and "moving").
    """

    # Scalar and RGB (histology) volumes; the .ui hides subclasses (label maps). parameterNodeWrapper replaces the
    # selector's nodeTypes with these classes.
    fixedVolume: vtkMRMLScalarVolumeNode | vtkMRMLVectorVolumeNode | None
    movingVolume: vtkMRMLScalarVolumeNode | vtkMRMLVectorVolumeNode | None
    protocolFile: pathlib.Path
    sessionFolder: pathlib.Path
    annotator: str = ""
    repeat: Annotated[int, WithinRange(1, 9)] = 1
    blinded: bool = False
    consensusMethod: Annotated[str, Choice(["mean", "median"])] = "mean"
    outlierFactor: Annotated[float, WithinRange(0.0, 100.0)] = 3.0
    outlierDistanceMm: Annotated[float, WithinRange(0.0, 1000.0)] = 0.0
    registrationModel: Annotated[str, Choice(["rigid", "similarity", "affine", "tps"])] = "affine"
    fleMm: Annotated[float, WithinRange(0.0, 100.0)] = 0.0
    fixedImageName: str = ""
    movingImageName: str = ""
    landmarkTable: vtkMRMLTableNode
    annotatorTable: vtkMRMLTableNode
    registrationTable: vtkMRMLTableNode
    outputTransform: vtkMRMLTransformNode
    expectedTreVolume: vtkMRMLScalarVolumeNode


OUTPUT_ATTRIBUTE = "CrossModalRegLandmarks.output"


def _isSet(path) -> bool:
    return path is not None and str(path) not in ("", ".")


def _format(value) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return ""
    return "" if v != v else f"{v:.2f}"


#
# CrossModalRegLandmarksWidget
#
class CrossModalRegLandmarksWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the .ui to the parameter node, starts work and shows errors; the logic does the rest."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._busy = False
        self._cancelRequested = False
        self._placingImage = None
        self._sessionImagesFolder = None  # the folder whose image names the session-image boxes show
        self._sessionImagesNamed = False  # that folder's session has images other than "fixed"/"moving"

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CrossModalRegLandmarks.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = CrossModalRegLandmarksLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.startSessionButton.connect("clicked(bool)", self.onStartSession)
        self.ui.fixedImageComboBox.connect("currentIndexChanged(int)", lambda i: self._onSessionImageChosen("fixed"))
        self.ui.movingImageComboBox.connect("currentIndexChanged(int)",
                                            lambda i: self._onSessionImageChosen("moving"))
        self.ui.placeFixedButton.connect("clicked(bool)", lambda: self.onPlaceNext("fixed"))
        self.ui.placeMovingButton.connect("clicked(bool)", lambda: self.onPlaceNext("moving"))
        self.ui.blindedCheckBox.connect("toggled(bool)", self.onBlindedToggled)
        self.ui.computeStatisticsButton.connect("clicked(bool)", self.onComputeStatistics)
        self.ui.registerButton.connect("clicked(bool)", self.onRegister)
        self.ui.expectedTreButton.connect("clicked(bool)", self.onExpectedTre)
        self.ui.importButton.connect("clicked(bool)", self.onImport)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.landmarkErrorTable.connect("cellClicked(int,int)", self.onLandmarkErrorRowClicked)
        self.ui.landmarkErrorTable.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic:
            self.logic.closeSession()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        # Every change is already saved: closing the scene only stops recording (and cancels a running map).
        self._cancelRequested = self._cancelRequested or self._busy
        self.logic.closeSession()
        self.setParameterNode(None)
        self._fillLandmarkErrorTable()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.fixedVolume:
            volumes = [v for v in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                       if not v.IsA("vtkMRMLLabelMapVolumeNode")]
            if volumes:
                self._parameterNode.fixedVolume = volumes[0]

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            if self._parameterNodeGuiTag is not None:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            # exit() already removed the observer when the module was left: do not remove it twice (warns)
            if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons):
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _inputWidgets(self) -> list:
        """Every widget that changes the inputs or starts work; locked while work runs."""
        names = ("fixedVolumeSelector", "movingVolumeSelector", "protocolPathLineEdit", "sessionFolderLineEdit",
                 "fixedImageComboBox", "movingImageComboBox",
                 "annotatorLineEdit", "repeatSpinBox", "blindedCheckBox", "startSessionButton", "placeFixedButton",
                 "placeMovingButton", "consensusComboBox", "outlierFactorSpinBox", "outlierDistanceSpinBox",
                 "landmarkTableSelector", "annotatorTableSelector", "computeStatisticsButton", "modelComboBox",
                 "registrationTableSelector", "outputTransformSelector", "registerButton", "fleSpinBox",
                 "expectedTreSelector", "expectedTreButton", "importPathLineEdit", "importFixedRadioButton",
                 "importMovingRadioButton", "importButton", "exportFolderLineEdit", "exportButton",
                 "landmarkErrorTable")
        return [getattr(self.ui, n) for n in names]

    def _runLocked(self, errorText, work, cancelButton=None):
        """Run ``work()`` with every input locked (no second start, no input change mid-run).

        With ``cancelButton`` the button turns into "Cancel" for the run; ``work`` gets a progress callback that
        keeps the GUI alive and stops the work (nothing added to the scene) when Cancel is pressed or the scene is
        closed. Errors are shown to the user. Returns what ``work`` returned, or None.
        """
        from CrossModalRegLib.errors import RegistrationCancelled

        if self._busy:
            return None
        self._busy, self._cancelRequested = True, False
        for w in self._inputWidgets():
            w.enabled = False
        oldText = None
        if cancelButton is not None:
            oldText = cancelButton.text
            cancelButton.text = _("Cancel")
            cancelButton.enabled = True
        result = None
        try:
            with slicer.util.tryWithErrorDisplay(errorText, waitCursor=cancelButton is None):
                try:
                    result = work(self._progress)
                except RegistrationCancelled:
                    self.ui.statusLabel.text = _("Cancelled: nothing was changed.")
        finally:
            self._busy = False
            if cancelButton is not None:
                cancelButton.text = oldText
            for w in self._inputWidgets():
                w.enabled = True
            self._updateButtons()
        return result

    def _progress(self, progress) -> None:
        """A :class:`CrossModalRegLib.progress.Progress` report: the percentage in the status line."""
        from CrossModalRegLib.errors import RegistrationCancelled

        self.ui.statusLabel.text = _("Computing: {percent:.0f}%").format(percent=100.0 * progress.fraction)
        slicer.app.processEvents()
        if self._cancelRequested:
            raise RegistrationCancelled(_("Cancelled by the user"))

    def _updateButtons(self, caller=None, event=None) -> None:
        if self._busy:
            return
        p = self._parameterNode
        ready = bool(p and p.annotator.strip() and _isSet(p.sessionFolder))
        self.ui.startSessionButton.enabled = ready
        self.ui.startSessionButton.toolTip = (
            _("Start or resume the session") if ready else _("Enter the annotator name and the session folder"))
        active = self.logic.session is not None
        for button in (self.ui.placeFixedButton, self.ui.placeMovingButton, self.ui.computeStatisticsButton,
                       self.ui.registerButton, self.ui.expectedTreButton, self.ui.importButton,
                       self.ui.exportButton):
            button.enabled = active
        self._refreshSessionImages()
        self._showNextLandmark()

    def _refreshSessionImages(self) -> None:
        """Offer the session folder's image names as the images the fixed and moving volumes show.

        A new folder (or a two-image session) has only "fixed" and "moving": the boxes show them, disabled. A
        session over N named images (e.g. five stains from ``crossmodalreg landmarks import``) offers all of them.
        """
        p = self._parameterNode
        folder = str(p.sessionFolder) if p and _isSet(p.sessionFolder) else ""
        if folder == self._sessionImagesFolder:
            for box in (self.ui.fixedImageComboBox, self.ui.movingImageComboBox):
                box.enabled = self._sessionImagesNamed  # a locked run re-enables every input afterwards
            return
        self._sessionImagesFolder = folder
        names = self.logic.sessionImageNames(folder) or ["fixed", "moving"]
        named = self._sessionImagesNamed = set(names) != {"fixed", "moving"}
        for role, box, index in (("fixed", self.ui.fixedImageComboBox, 0),
                                 ("moving", self.ui.movingImageComboBox, 1)):
            wasBlocked = box.blockSignals(True)
            box.clear()
            for name in names:
                box.addItem(name)
            current = getattr(p, f"{role}ImageName", "") if p else ""
            if current not in names:
                current = role if role in names else names[min(index, len(names) - 1)]
            box.currentIndex = names.index(current)
            box.enabled = named
            box.blockSignals(wasBlocked)
        if p:  # a folder without named images clears the names a previous session's boxes left behind
            self._onSessionImageChosen("fixed")
            self._onSessionImageChosen("moving")

    def _onSessionImageChosen(self, role) -> None:
        p = self._parameterNode
        if p is None:
            return
        box = self.ui.fixedImageComboBox if role == "fixed" else self.ui.movingImageComboBox
        value = box.currentText if box.enabled else ""
        if getattr(p, f"{role}ImageName") != value:
            setattr(p, f"{role}ImageName", value)

    def _showNextLandmark(self) -> None:
        text = self.logic.nextLandmarkText() if self.logic.session is not None else _("No session")
        self.ui.nextLandmarkLabel.text = text

    def onStartSession(self) -> None:
        self._sessionImagesFolder = None  # read the folder's image names again (a session may have been made since)
        self._refreshSessionImages()
        with slicer.util.tryWithErrorDisplay(_("Failed to start the annotation session."), waitCursor=True):
            self.logic.startSession(self._parameterNode, onChange=self._onPointsSaved, onError=self._onSaveFailed)
            self._updateButtons()

    def _onPointsSaved(self, labels) -> None:
        """A click was saved: show the next landmark; leave place mode when the image is complete."""
        self._showNextLandmark()
        if self._placingImage is not None and self.logic.session is not None and self._parameterNode:
            from CrossModalRegLib.errors import CrossModalRegError

            try:
                complete = self.logic.nextLabel(self._parameterNode, self._placingImage) is None
            except CrossModalRegError:  # the annotator was changed without restarting the session
                complete = False
            if complete:
                self.logic.stopPlacing()
                self._placingImage = None

    def _onSaveFailed(self, error) -> None:
        # Called from the recorder (a VTK observer): the point is shown but not saved; the user must know.
        self.ui.statusLabel.text = _("Landmark NOT saved: see the error message.")
        slicer.util.errorDisplay(_("The landmark was not saved.") + "\n\n" + str(error))

    def onPlaceNext(self, image) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start placing."), waitCursor=False):
            self.logic.startPlacing(self._parameterNode, image)
            self._placingImage = image
            self._showNextLandmark()

    def onBlindedToggled(self, blinded) -> None:
        if self.logic.session is not None:
            self.logic.applyBlinding(self._parameterNode)

    def onComputeStatistics(self) -> None:
        self._runLocked(_("Failed to compute the landmark statistics."),
                        lambda progress: self.logic.computeStatistics(self._parameterNode))

    def onRegister(self) -> None:
        result = self._runLocked(_("Failed to compute the point-based registration."),
                                 lambda progress: self.logic.computeRegistration(self._parameterNode))
        if result is not None:
            self.ui.statusLabel.text = _("Registered ({model}): FRE {fre:.2f} {units} RMS").format(
                model=result.model, fre=result.fre_rms, units=result.units)
        self._fillLandmarkErrorTable()

    def onExpectedTre(self) -> None:
        if self._busy:  # the button is "Cancel" while the map is computed
            self._cancelRequested = True
            return
        node = self._runLocked(_("Failed to compute the expected TRE map."),
                               lambda progress: self.logic.computeExpectedTreMap(self._parameterNode,
                                                                                 progress=progress),
                               cancelButton=self.ui.expectedTreButton)
        if node is not None:
            self.ui.statusLabel.text = _("Expected TRE map: '{name}'").format(name=node.GetName())

    def _fillLandmarkErrorTable(self) -> None:
        """One row per landmark of the last registration: label, FRE, leave-one-out TRE (click to jump)."""
        rows = self.logic.landmarkErrorRows() if self.logic else []
        table = self.ui.landmarkErrorTable
        table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for j, text in enumerate((row["label"], _format(row["fre"]), _format(row["loo_tre"]))):
                table.setItem(i, j, qt.QTableWidgetItem(text))

    def onLandmarkErrorRowClicked(self, row, column) -> None:
        rows = self.logic.landmarkErrorRows()
        if 0 <= row < len(rows):
            with slicer.util.tryWithErrorDisplay(_("Failed to jump to the landmark."), waitCursor=False):
                self.logic.jumpToLandmark(rows[row]["label"])

    def onImport(self) -> None:
        path = self.ui.importPathLineEdit.currentPath
        image = "moving" if self.ui.importMovingRadioButton.checked else "fixed"
        with slicer.util.tryWithErrorDisplay(_("Failed to import the landmark file."), waitCursor=True):
            self.logic.importLandmarkFile(self._parameterNode, path, image, onChange=self._onPointsSaved,
                                          onError=self._onSaveFailed)
            self._updateButtons()

    def onExport(self) -> None:
        folder = self.ui.exportFolderLineEdit.currentPath
        with slicer.util.tryWithErrorDisplay(_("Failed to export the annotations."), waitCursor=True):
            written = self.logic.exportSession(folder)
            slicer.util.showStatusMessage(_("Exported {count} files to {folder}").format(count=len(written),
                                                                                        folder=folder), 3000)


#
# CrossModalRegLandmarksLogic
#
class CrossModalRegLandmarksLogic(ScriptedLoadableModuleLogic):
    """Works from the parameter node and the scene only; delegates to ``CrossModalRegLib.landmarks``.

    Never touches a widget and never opens a dialog: errors are raised as ``CrossModalRegError`` with a message
    that says what to fix.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.session = None
        self.nodes = {}       # (annotator, image, repeat) -> annotation markups node
        self.recorders = {}   # same keys -> SessionRecorder
        self.statistics = None
        self.consensus = {}   # image -> consensus markups node (in that image's own space)
        self.roles = {"fixed": "fixed", "moving": "moving"}  # role -> the session image the role's volume shows
        self.registration = None  # the last PointRegistrationResult (fixed -> moving)

    def getParameterNode(self):
        return CrossModalRegLandmarksParameterNode(super().getParameterNode())

    # ----------------------------------------------------------------------------------------------- session
    def startSession(self, parameterNode, onChange=None, onError=None):
        """Open the session folder (or create it from the protocol) and start recording the annotator's points.

        Returns the session. Existing annotations of every annotator are loaded as nodes, each under its image's
        parent transform (so saved positions are in the image's own space). ``onChange(labels)`` is called after
        every saved click, ``onError(exception)`` when a click could not be saved (the widget shows it).
        """
        from CrossModalRegLib.errors import CrossModalRegError
        from CrossModalRegLib.landmarks import AnnotationSession, load_protocol, mrml_layer

        if not _isSet(parameterNode.sessionFolder):
            raise CrossModalRegError(_("Choose a session folder."))
        annotator = parameterNode.annotator.strip()
        if not annotator:
            raise CrossModalRegError(_("Enter the annotator name before annotating."))
        folder = str(parameterNode.sessionFolder)
        resume = os.path.isfile(os.path.join(folder, "session.json"))
        if resume:
            AnnotationSession.open(folder)  # validate before touching the scene
        else:
            if not _isSet(parameterNode.protocolFile):
                raise CrossModalRegError(_("Choose a protocol file to start a new session in an empty folder."))
            protocol = load_protocol(str(parameterNode.protocolFile))
        roles = self.imageRoles(parameterNode, AnnotationSession.open(folder).images if resume else None)
        self.closeSession(removeNodes=True)  # every point is saved already; the nodes are rebuilt from the folder
        volumes = {roles["fixed"]: parameterNode.fixedVolume, roles["moving"]: parameterNode.movingVolume}
        if resume:
            session, nodes = mrml_layer.load_session_into_scene(slicer.mrmlScene, folder, volumes=volumes,
                                                                images=list(volumes))
        else:
            fixedName = parameterNode.fixedVolume.GetName() if parameterNode.fixedVolume else ""
            movingName = parameterNode.movingVolume.GetName() if parameterNode.movingVolume else ""
            session = AnnotationSession.create(folder, protocol, fixed_image=fixedName, moving_image=movingName)
            nodes = {}
        self.roles = roles
        for image in (roles["fixed"], roles["moving"]):
            key = (annotator, image, int(parameterNode.repeat))
            if key not in nodes:
                nodes[key] = mrml_layer.create_annotation_node(slicer.mrmlScene, session, annotator, image,
                                                               repeat=key[2], image_volume=volumes[image])
        self.session, self.nodes = session, nodes
        for key, node in nodes.items():
            if key[0] == annotator and key[2] == int(parameterNode.repeat):
                node.SetLocked(False)
                self.recorders[key] = mrml_layer.SessionRecorder(session, node, image_volume=volumes[key[1]],
                                                                 on_change=onChange, on_error=onError)
            else:
                node.SetLocked(True)  # other annotators' (or other repeats') points are read-only here
        self.applyBlinding(parameterNode)
        logging.info(f"Landmark session {folder}: recording {annotator}, repeat {parameterNode.repeat}, images "
                     f"{roles['fixed']} (fixed) and {roles['moving']} (moving)")
        return session

    @staticmethod
    def sessionImageNames(folder) -> list:
        """The image names of the session in ``folder`` ([] when there is none yet or it cannot be read)."""
        from CrossModalRegLib.errors import CrossModalRegError
        from CrossModalRegLib.landmarks import AnnotationSession

        if not _isSet(folder) or not os.path.isfile(os.path.join(str(folder), "session.json")):
            return []
        try:
            return list(AnnotationSession.open(str(folder)).images)
        except (CrossModalRegError, OSError, ValueError):
            return []

    @staticmethod
    def imageRoles(parameterNode, images=None) -> dict:
        """{"fixed": session image name, "moving": session image name} for the session's ``images`` (None: a new
        session, whose images are "fixed" and "moving"). Empty names in the parameter node pick "fixed"/"moving"
        when the session has them, else its first two images."""
        from CrossModalRegLib.errors import CrossModalRegError

        names = list(images) if images is not None else ["fixed", "moving"]
        chosen = {}
        for role, given, index in (("fixed", parameterNode.fixedImageName, 0),
                                   ("moving", parameterNode.movingImageName, 1)):
            name = (given or "").strip()
            if not name:
                name = role if role in names else (names[index] if index < len(names) else "")
            if name not in names:
                raise CrossModalRegError(_("The session has no image '{name}'; its images are {names}. Choose "
                                           "the session images again.").format(name=name, names=", ".join(names)))
            chosen[role] = name
        if chosen["fixed"] == chosen["moving"]:
            raise CrossModalRegError(_("Choose two different session images for the fixed and the moving volume "
                                       "(both are '{name}').").format(name=chosen["fixed"]))
        return chosen

    def closeSession(self, removeNodes=False) -> None:
        """Stop recording (every change is already saved); optionally remove the session's annotation nodes."""
        for recorder in self.recorders.values():
            recorder.detach()
        self.recorders = {}
        if removeNodes:
            from CrossModalRegLib.mrml import remove_nodes

            remove_nodes(slicer.mrmlScene, list(self.nodes.values()))
        self.nodes = {}
        self.session = None
        self.roles = {"fixed": "fixed", "moving": "moving"}
        self.statistics = None
        self.registration = None
        self.consensus = {}

    def _currentNode(self, parameterNode, image):
        """The annotator's node on the session image shown as ``image`` ("fixed" or "moving")."""
        from CrossModalRegLib.errors import CrossModalRegError

        key = (parameterNode.annotator.strip(), self.roles[image], int(parameterNode.repeat))
        if key not in self.recorders:
            raise CrossModalRegError(_("Start the session as this annotator first."))
        return self.nodes[key]

    def nextLandmarkText(self) -> str:
        from CrossModalRegLib.landmarks import mrml_layer

        parts = []
        for (annotator, image, repeat), node in self.nodes.items():
            if (annotator, image, repeat) in self.recorders:
                label = mrml_layer.next_unplaced_label(node)
                if label is None:
                    parts.append(_("{image}: complete").format(image=image))
                else:
                    what = self.session.protocol.description_of(label)
                    parts.append(_("{image}: next '{label}' {what}").format(image=image, label=label, what=what))
        return "\n".join(parts) if parts else _("No session")

    def nextLabel(self, parameterNode, image):
        """Label of the current annotator's next unplaced landmark on ``image`` (None when complete)."""
        from CrossModalRegLib.landmarks import mrml_layer

        return mrml_layer.next_unplaced_label(self._currentNode(parameterNode, image))

    def startPlacing(self, parameterNode, image) -> None:
        """Show ``image`` in the slice views, make the annotator's node on it active and enter place mode for its
        next unplaced landmark."""
        from CrossModalRegLib import views
        from CrossModalRegLib.errors import CrossModalRegError
        from CrossModalRegLib.landmarks import mrml_layer

        node = self._currentNode(parameterNode, image)
        volume = parameterNode.fixedVolume if image == "fixed" else parameterNode.movingVolume
        if volume is None:
            raise CrossModalRegError(_("Select the {image} volume: it is shown in the views while you place its "
                                       "landmarks.").format(image=image))
        views.show_volume_in_slice_views(slicer.mrmlScene, volume)
        if mrml_layer.prepare_next_placement(node) < 0:
            self.stopPlacing()
            return
        selectionNode = slicer.app.applicationLogic().GetSelectionNode()
        selectionNode.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
        selectionNode.SetActivePlaceNodeID(node.GetID())
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        interactionNode.SetPlaceModePersistence(1)
        interactionNode.SetCurrentInteractionMode(interactionNode.Place)

    @staticmethod
    def stopPlacing() -> None:
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        interactionNode.SetCurrentInteractionMode(interactionNode.ViewTransform)

    def applyBlinding(self, parameterNode) -> None:
        from CrossModalRegLib.landmarks import mrml_layer

        mrml_layer.set_blinded(list(self.nodes.values()), parameterNode.annotator.strip(), parameterNode.blinded)

    # ----------------------------------------------------------------------------------------------- analysis
    def _checkOutputs(self, p) -> None:
        from CrossModalRegLib.outputs import check_outputs

        check_outputs(
            {_("fixed volume"): p.fixedVolume, _("moving volume"): p.movingVolume},
            {_("landmark table"): p.landmarkTable, _("annotator table"): p.annotatorTable,
             _("registration table"): p.registrationTable, _("output transform"): p.outputTransform,
             _("expected TRE map"): p.expectedTreVolume},
            protected_transforms={_("fixed volume"): p.fixedVolume})

    def computeStatistics(self, parameterNode):
        """Statistics tables and consensus nodes of the current session; returns the SessionStatistics.

        Repeated calls update the same tables and consensus nodes.
        """
        from CrossModalRegLib.landmarks import mrml_layer, session_statistics

        self._checkOutputs(parameterNode)
        session = self._requireSession()
        stats = session_statistics(
            session, consensus=parameterNode.consensusMethod,
            outlier_distance=parameterNode.outlierDistanceMm or None,
            outlier_factor=parameterNode.outlierFactor or None)
        tables = stats.tables()
        from CrossModalRegLib.tables import table_node_from_rows

        cols, rows = tables["landmarks"]
        parameterNode.landmarkTable = table_node_from_rows(
            slicer.mrmlScene, "Landmark statistics", cols, rows, node=parameterNode.landmarkTable)
        cols, rows = tables["annotators"]
        parameterNode.annotatorTable = table_node_from_rows(
            slicer.mrmlScene, "Annotator statistics", cols, rows, node=parameterNode.annotatorTable)
        for name in ("summary", "repeatability"):
            if name in tables:
                cols, rows = tables[name]
                tag = f"{session.folder}|{name}"
                node = mrml_layer.find_output_node(slicer.mrmlScene, "vtkMRMLTableNode", OUTPUT_ATTRIBUTE, tag)
                node = table_node_from_rows(slicer.mrmlScene, f"Landmark {name}", cols, rows, node=node)
                node.SetAttribute(OUTPUT_ATTRIBUTE, tag)
        self.consensus = mrml_layer.consensus_nodes(
            slicer.mrmlScene, stats, volumes={self.roles["fixed"]: parameterNode.fixedVolume,
                                              self.roles["moving"]: parameterNode.movingVolume},
            images=[self.roles["fixed"], self.roles["moving"]])
        self.statistics = stats
        return stats

    def _requireSession(self):
        from CrossModalRegLib.errors import CrossModalRegError

        if self.session is None:
            raise CrossModalRegError(_("Start or load an annotation session first."))
        return self.session

    def computeRegistration(self, parameterNode):
        """Point-based registration of the consensus landmarks (fixed -> moving) into the output transform.

        The moving volume goes under the output transform, and so do the moving image's annotation and consensus
        nodes (they hold moving-image coordinates): later clicks on the moving image are saved in its own space.
        Repeated calls update the same transform and table.
        """
        from CrossModalRegLib import mrml
        from CrossModalRegLib.errors import CrossModalRegError
        from CrossModalRegLib.landmarks import mrml_layer, pair_landmarks, register_points
        from CrossModalRegLib.landmarks.report import registration_columns, registration_rows
        from CrossModalRegLib.tables import table_node_from_rows

        self._checkOutputs(parameterNode)
        stats = self.computeStatistics(parameterNode)  # always from the points as saved now
        fixedName, movingName = self.roles["fixed"], self.roles["moving"]
        missing = [n for n in (fixedName, movingName) if n not in stats.per_image]
        if missing:
            reasons = "; ".join(f"{n}: {stats.skipped.get(n, _('no landmarks'))}" for n in missing)
            raise CrossModalRegError(_("Both images need landmark statistics before registering ({reasons}).").format(
                reasons=reasons))
        # A landmark with no consensus on either image (unplaced, or its pair flagged) is left out, and logged.
        pairs = pair_landmarks(stats.consensus_landmarks(fixedName), stats.consensus_landmarks(movingName),
                               unpaired="skip")
        labels, f, m = pairs.labels, pairs.fixed, pairs.moving
        if pairs.unpaired:
            logging.info(f"Landmark registration without {', '.join(pairs.unpaired)}: no consensus on both images")
        result = register_points(f, m, model=parameterNode.registrationModel, labels=labels,
                                 units=self.session.units)
        parameterNode.registrationTable = table_node_from_rows(
            slicer.mrmlScene, "Landmark registration", registration_columns(result.units), registration_rows(result),
            node=parameterNode.registrationTable)
        # Unsqueezed: a 2D image stays a one-slice volume, the grid a Slicer transform of it is sampled on.
        fixedNode, movingNode = parameterNode.fixedVolume, parameterNode.movingVolume
        reference = mrml.image_from_volume_node(fixedNode, squeeze_2d=False) if fixedNode else None
        movingImage = mrml.image_from_volume_node(movingNode, squeeze_2d=False) if movingNode else None
        parameterNode.outputTransform = mrml_layer.registration_transform_node(
            slicer.mrmlScene, result, reference_image=reference, moving_image=movingImage,
            node=parameterNode.outputTransform)
        moving = parameterNode.movingVolume
        if moving:
            moving.SetAndObserveTransformNodeID(parameterNode.outputTransform.GetID())
            dim = self.session.protocol.dimension
            for (_annotator, image, _repeat), node in self.nodes.items():
                if image == movingName:
                    mrml_layer.attach_annotation_node(node, moving, dim)
            if movingName in self.consensus:
                mrml_layer.attach_annotation_node(self.consensus[movingName], moving, dim)
        self.registration = result
        return result

    def landmarkErrorRows(self) -> list:
        """Per landmark of the last registration: label, FRE and leave-one-out TRE (units of the session)."""
        r = self.registration
        if r is None:
            return []
        return [{"label": lab, "fre": float(r.fre[i]), "loo_tre": float(r.loo_tre[i]), "units": r.units}
                for i, lab in enumerate(r.labels)]

    def jumpToLandmark(self, label, image="fixed"):
        """Centre the slice views on the consensus of ``label`` on ``image`` (where it is displayed, world RAS)."""
        from CrossModalRegLib import views
        from CrossModalRegLib.errors import CrossModalRegError

        node = self.consensus.get(self.roles.get(image, image))
        if node is None:
            raise CrossModalRegError(_("Compute the statistics first (no consensus on the {image} image).").format(
                image=image))
        for i in range(node.GetNumberOfControlPoints()):
            if node.GetNthControlPointLabel(i) == label:
                world = [0.0, 0.0, 0.0]
                node.GetNthControlPointPositionWorld(i, world)
                views.jump_slices_to_point(slicer.mrmlScene, world)
                return world
        raise CrossModalRegError(_("Landmark '{label}' has no consensus on the {image} image.").format(
            label=label, image=image))

    def computeExpectedTreMap(self, parameterNode, progress=None):
        """Expected rigid-registration TRE (mm) on the fixed volume's grid from the fixed consensus landmarks.

        The output node is updated in place (never the fixed or moving volume: refused). ``progress`` receives a
        :class:`CrossModalRegLib.progress.Progress` per slice; an exception from it cancels with nothing added to
        the scene.
        """
        import numpy as np

        from CrossModalRegLib.errors import CrossModalRegError
        from CrossModalRegLib.landmarks import mrml_layer

        if not parameterNode.fixedVolume:
            raise CrossModalRegError(_("Select the fixed volume."))
        self._checkOutputs(parameterNode)
        stats = self.statistics or self.computeStatistics(parameterNode)
        fixed = stats.per_image.get(self.roles["fixed"])
        if fixed is None:
            raise CrossModalRegError(_("The fixed image needs at least two annotators."))
        pts = fixed.consensus[np.all(np.isfinite(fixed.consensus), axis=1)]
        fle = parameterNode.fleMm
        if not fle:
            moving = stats.per_image.get(self.roles["moving"])
            fle = float(np.hypot(fixed.fle_overall, moving.fle_overall if moving else fixed.fle_overall))
        parameterNode.expectedTreVolume = mrml_layer.expected_tre_volume(
            slicer.mrmlScene, pts, parameterNode.fixedVolume, fle, node=parameterNode.expectedTreVolume,
            progress=progress)
        return parameterNode.expectedTreVolume

    # --------------------------------------------------------------------------------------------- files
    def importLandmarkFile(self, parameterNode, path, image, onChange=None, onError=None):
        """Import a .mrk.json, .fcsv or CSV file as the current annotator's points on the session image shown as
        ``image`` ("fixed" or "moving"), validated first."""
        from CrossModalRegLib.landmarks import read_landmark_file

        session = self._requireSession()
        landmarks = read_landmark_file(path, dimension=session.protocol.dimension)
        session.import_points(parameterNode.annotator.strip(), self.roles[image], landmarks.labels, landmarks.points,
                              repeat=int(parameterNode.repeat), source=path)
        self.startSession(parameterNode, onChange=onChange, onError=onError)  # rebuild the nodes from the session

    def exportSession(self, folder):
        """Write every annotation node as .mrk.json (Slicer storage node) and as the landmark CSV into ``folder``."""
        from CrossModalRegLib.landmarks import mrml_layer, write_landmarks_csv

        session = self._requireSession()
        os.makedirs(folder, exist_ok=True)
        written = []
        for (annotator, image, repeat), node in self.nodes.items():
            base = os.path.join(folder, f"{annotator}_{image}_r{repeat}")
            written.append(mrml_layer.export_markups_json(node, base + ".mrk.json", session=session))
            pts = session.points(annotator=annotator, image=image, repeat=repeat)
            meta = [{"annotator": p.annotator, "image": p.image, "repeat": p.repeat, "placed": p.placed,
                     "modified": p.modified} for p in pts]
            # the landmark CSV every command reads: LPS mm in 3D, pixels of the image in 2D
            written.append(write_landmarks_csv(base + ".csv", [p.label for p in pts], [p.position for p in pts],
                                               frame=session.frame, metadata=meta))
        return written


#
# CrossModalRegLandmarksTest
#
class CrossModalRegLandmarksTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: drives the logic (no widget) on a simulated session."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_annotation_statistics_and_registration()

    def test_annotation_statistics_and_registration(self):
        import tempfile

        import numpy as np

        from CrossModalRegLib.landmarks import AnnotationSession, LandmarkDefinition, LandmarkProtocol, save_protocol

        self.delayDisplay("Starting the landmark annotation test")
        tmp = tempfile.mkdtemp(prefix="cmr-landmarks-")
        protocol = LandmarkProtocol("test", [LandmarkDefinition(f"L{i + 1}", f"point {i + 1}") for i in range(8)])
        save_protocol(protocol, os.path.join(tmp, "protocol.json"))
        folder = os.path.join(tmp, "session")
        rng = np.random.default_rng(0)
        truth = rng.uniform(-40, 40, size=(8, 3))
        shift = np.array([5.0, -3.0, 2.0])

        logic = CrossModalRegLandmarksLogic()
        p = logic.getParameterNode()
        p.protocolFile = pathlib.Path(tmp) / "protocol.json"
        p.sessionFolder = pathlib.Path(folder)
        p.registrationModel = "rigid"
        for annotator in ("A", "B", "C"):
            p.annotator = annotator
            logic.startSession(p)
            for image, offset in (("fixed", 0.0), ("moving", shift)):
                node = logic.nodes[(annotator, image, 1)]
                for i in range(8):
                    lps = truth[i] + offset + rng.normal(0, 0.5, 3)
                    node.SetNthControlPointPosition(i, -lps[0], -lps[1], lps[2])
        session = AnnotationSession.open(folder)
        self.assertEqual(sorted(session.annotators()), ["A", "B", "C"])
        self.assertEqual(len(session.points()), 48)

        stats = logic.computeStatistics(p)
        self.assertLess(abs(stats.per_image["fixed"].fle_overall - 0.5 * np.sqrt(3)), 0.4)
        result = logic.computeRegistration(p)
        np.testing.assert_allclose(result.matrix_fixed_to_moving[:3, 3], shift, atol=1.0)
        self.assertIsNotNone(p.outputTransform)
        logic.closeSession()
        self.delayDisplay("Test passed")
