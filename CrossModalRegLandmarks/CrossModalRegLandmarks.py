"""CrossModalRegLandmarks: protocol-driven landmark annotation with inter-annotator statistics.

Several annotators place the landmarks of a versioned protocol on the fixed and the moving image; every change is
saved at once to a session folder. The module computes consensus positions, the fiducial localisation error (FLE),
outliers, per-annotator bias, ICC(2,1) and repeatability, a point-based registration (rigid, similarity, affine,
thin-plate spline) with FRE and leave-one-out TRE, and the expected TRE map of Fitzpatrick and West (1998).

The computing lives in ``CrossModalRegLib.landmarks`` (Qt-free, tested headless); this file binds the GUI to a
parameter node and delegates to it. Transforms map FIXED points to MOVING points (the moving volume goes under the
output transform node).
"""

import logging
import os
import pathlib
from typing import Annotated

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLTableNode, vtkMRMLTransformNode
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
    outlierDistanceMm: absolute outlier threshold in mm (0: off); outlierFactor: multiple of the median spread.
    fleMm: RMS fiducial localisation error for the expected TRE map (0: use the measured FLE).
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
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
    landmarkTable: vtkMRMLTableNode
    annotatorTable: vtkMRMLTableNode
    registrationTable: vtkMRMLTableNode
    outputTransform: vtkMRMLTransformNode
    expectedTreVolume: vtkMRMLScalarVolumeNode


def _isSet(path) -> bool:
    return path is not None and str(path) not in ("", ".")


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
        self.ui.placeFixedButton.connect("clicked(bool)", lambda: self.onPlaceNext("fixed"))
        self.ui.placeMovingButton.connect("clicked(bool)", lambda: self.onPlaceNext("moving"))
        self.ui.blindedCheckBox.connect("toggled(bool)", self.onBlindedToggled)
        self.ui.computeStatisticsButton.connect("clicked(bool)", self.onComputeStatistics)
        self.ui.registerButton.connect("clicked(bool)", self.onRegister)
        self.ui.expectedTreButton.connect("clicked(bool)", self.onExpectedTre)
        self.ui.importButton.connect("clicked(bool)", self.onImport)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)

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
        # Every change is already saved: closing the scene only stops recording.
        self.logic.closeSession()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.fixedVolume:
            volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            if volumes:
                self._parameterNode.fixedVolume = volumes[0]

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
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
        self._showNextLandmark()

    def _showNextLandmark(self) -> None:
        text = self.logic.nextLandmarkText() if self.logic.session is not None else _("No session")
        self.ui.nextLandmarkLabel.text = text

    def onStartSession(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start the annotation session."), waitCursor=True):
            self.logic.startSession(self._parameterNode)
            self._updateButtons()

    def onPlaceNext(self, image) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start placing."), waitCursor=False):
            self.logic.startPlacing(self._parameterNode, image)
            self._showNextLandmark()

    def onBlindedToggled(self, blinded) -> None:
        if self.logic.session is not None:
            self.logic.applyBlinding(self._parameterNode)

    def onComputeStatistics(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to compute the landmark statistics."), waitCursor=True):
            self.logic.computeStatistics(self._parameterNode)

    def onRegister(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to compute the point-based registration."), waitCursor=True):
            self.logic.computeRegistration(self._parameterNode)

    def onExpectedTre(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to compute the expected TRE map."), waitCursor=True):
            self.logic.computeExpectedTreMap(self._parameterNode)

    def onImport(self) -> None:
        path = self.ui.importPathLineEdit.currentPath
        image = "moving" if self.ui.importMovingRadioButton.checked else "fixed"
        with slicer.util.tryWithErrorDisplay(_("Failed to import the landmark file."), waitCursor=True):
            self.logic.importLandmarkFile(self._parameterNode, path, image)
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

    def getParameterNode(self):
        return CrossModalRegLandmarksParameterNode(super().getParameterNode())

    # ----------------------------------------------------------------------------------------------- session
    def startSession(self, parameterNode):
        """Open the session folder (or create it from the protocol) and start recording the annotator's points.

        Returns the session. Existing annotations of every annotator are loaded as nodes.
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
        self.closeSession(removeNodes=True)  # every point is saved already; the nodes are rebuilt from the folder
        if resume:
            session, nodes = mrml_layer.load_session_into_scene(slicer.mrmlScene, folder)
        else:
            fixedName = parameterNode.fixedVolume.GetName() if parameterNode.fixedVolume else ""
            movingName = parameterNode.movingVolume.GetName() if parameterNode.movingVolume else ""
            session = AnnotationSession.create(folder, protocol, fixed_image=fixedName, moving_image=movingName)
            nodes = {}
        for image in ("fixed", "moving"):
            key = (annotator, image, int(parameterNode.repeat))
            if key not in nodes:
                nodes[key] = mrml_layer.create_annotation_node(slicer.mrmlScene, session, annotator, image,
                                                               repeat=key[2])
        self.session, self.nodes = session, nodes
        for key, node in nodes.items():
            if key[0] == annotator and key[2] == int(parameterNode.repeat):
                node.SetLocked(False)
                self.recorders[key] = mrml_layer.SessionRecorder(session, node)
            else:
                node.SetLocked(True)  # other annotators' (or other repeats') points are read-only here
        self.applyBlinding(parameterNode)
        logging.info(f"Landmark session {folder}: recording {annotator}, repeat {parameterNode.repeat}")
        return session

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

    def _currentNode(self, parameterNode, image):
        from CrossModalRegLib.errors import CrossModalRegError

        key = (parameterNode.annotator.strip(), image, int(parameterNode.repeat))
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

    def startPlacing(self, parameterNode, image) -> None:
        """Make the annotator's node on ``image`` active and enter place mode for its next unplaced landmark."""
        from CrossModalRegLib.landmarks import mrml_layer

        node = self._currentNode(parameterNode, image)
        if mrml_layer.prepare_next_placement(node) < 0:
            return
        selectionNode = slicer.app.applicationLogic().GetSelectionNode()
        selectionNode.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
        selectionNode.SetActivePlaceNodeID(node.GetID())
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        interactionNode.SetPlaceModePersistence(1)
        interactionNode.SetCurrentInteractionMode(interactionNode.Place)

    def applyBlinding(self, parameterNode) -> None:
        from CrossModalRegLib.landmarks import mrml_layer

        mrml_layer.set_blinded(list(self.nodes.values()), parameterNode.annotator.strip(), parameterNode.blinded)

    # ----------------------------------------------------------------------------------------------- analysis
    def computeStatistics(self, parameterNode):
        """Statistics tables and consensus nodes of the current session; returns the SessionStatistics."""
        from CrossModalRegLib.landmarks import mrml_layer, session_statistics

        stats = session_statistics(
            self._requireSession(), consensus=parameterNode.consensusMethod,
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
                table_node_from_rows(slicer.mrmlScene, f"Landmark {name}", cols, rows)
        mrml_layer.consensus_nodes(slicer.mrmlScene, stats)
        self.statistics = stats
        return stats

    def _requireSession(self):
        from CrossModalRegLib.errors import CrossModalRegError

        if self.session is None:
            raise CrossModalRegError(_("Start or load an annotation session first."))
        return self.session

    def computeRegistration(self, parameterNode):
        """Point-based registration of the consensus landmarks (fixed -> moving) into the output transform."""
        from CrossModalRegLib import mrml
        from CrossModalRegLib.errors import CrossModalRegError
        from CrossModalRegLib.landmarks import mrml_layer, pair_landmarks, register_points
        from CrossModalRegLib.landmarks.report import registration_columns, registration_rows
        from CrossModalRegLib.tables import table_node_from_rows

        stats = self.statistics or self.computeStatistics(parameterNode)
        if not {"fixed", "moving"} <= set(stats.per_image):
            raise CrossModalRegError(_("Both images need at least two annotators before registering."))
        fixed, moving = stats.per_image["fixed"], stats.per_image["moving"]
        import numpy as np

        fOk = np.all(np.isfinite(fixed.consensus), axis=1)
        mOk = np.all(np.isfinite(moving.consensus), axis=1)
        labels, f, m, _dropped = pair_landmarks(
            [lab for lab, ok in zip(fixed.labels, fOk) if ok], fixed.consensus[fOk],
            [lab for lab, ok in zip(moving.labels, mOk) if ok], moving.consensus[mOk],
            fixed_source=_("fixed consensus"), moving_source=_("moving consensus"))
        result = register_points(f, m, model=parameterNode.registrationModel, labels=labels,
                                 units=self.session.units)
        parameterNode.registrationTable = table_node_from_rows(
            slicer.mrmlScene, "Landmark registration", registration_columns(result.units), registration_rows(result),
            node=parameterNode.registrationTable)
        reference = mrml.image_from_volume_node(parameterNode.fixedVolume) if parameterNode.fixedVolume else None
        if parameterNode.outputTransform:
            slicer.mrmlScene.RemoveNode(parameterNode.outputTransform)
        parameterNode.outputTransform = mrml_layer.registration_transform_node(
            slicer.mrmlScene, result, reference_image=reference)
        if parameterNode.movingVolume:
            parameterNode.movingVolume.SetAndObserveTransformNodeID(parameterNode.outputTransform.GetID())
        return result

    def computeExpectedTreMap(self, parameterNode):
        """Expected rigid-registration TRE (mm) on the fixed volume's grid from the fixed consensus landmarks."""
        import numpy as np

        from CrossModalRegLib.errors import CrossModalRegError
        from CrossModalRegLib.landmarks import mrml_layer

        if not parameterNode.fixedVolume:
            raise CrossModalRegError(_("Select the fixed volume."))
        stats = self.statistics or self.computeStatistics(parameterNode)
        fixed = stats.per_image.get("fixed")
        if fixed is None:
            raise CrossModalRegError(_("The fixed image needs at least two annotators."))
        pts = fixed.consensus[np.all(np.isfinite(fixed.consensus), axis=1)]
        fle = parameterNode.fleMm
        if not fle:
            moving = stats.per_image.get("moving")
            fle = float(np.hypot(fixed.fle_overall, moving.fle_overall if moving else fixed.fle_overall))
        if parameterNode.expectedTreVolume:
            slicer.mrmlScene.RemoveNode(parameterNode.expectedTreVolume)
        parameterNode.expectedTreVolume = mrml_layer.expected_tre_volume(
            slicer.mrmlScene, pts, parameterNode.fixedVolume, fle)
        return parameterNode.expectedTreVolume

    # --------------------------------------------------------------------------------------------- files
    def importLandmarkFile(self, parameterNode, path, image):
        """Import a .mrk.json, .fcsv or CSV file as the current annotator's points on ``image`` (validated first)."""
        from CrossModalRegLib.landmarks import read_landmark_file

        session = self._requireSession()
        landmarks = read_landmark_file(path, dimension=session.protocol.dimension)
        session.import_points(parameterNode.annotator.strip(), image, landmarks.labels, landmarks.points,
                              repeat=int(parameterNode.repeat), source=path)
        self.startSession(parameterNode)  # rebuild the nodes from the saved session

    def exportSession(self, folder):
        """Write every annotation node as .mrk.json (Slicer storage node) and a frame-stated CSV into ``folder``."""
        from CrossModalRegLib.landmarks import mrml_layer, write_landmarks_csv

        session = self._requireSession()
        os.makedirs(folder, exist_ok=True)
        written = []
        for (annotator, image, repeat), node in self.nodes.items():
            base = os.path.join(folder, f"{annotator}_{image}_r{repeat}")
            written.append(mrml_layer.export_markups_json(node, base + ".mrk.json", session=session))
            pts = session.points(annotator=annotator, image=image, repeat=repeat)
            if session.protocol.dimension == 3:
                meta = [{"annotator": p.annotator, "image": p.image, "repeat": p.repeat, "placed": p.placed,
                         "modified": p.modified} for p in pts]
                written.append(write_landmarks_csv(base + ".csv", [p.label for p in pts],
                                                   [p.position for p in pts], metadata=meta))
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
