"""CrossModalRegValidation: how good is a registration, and is it good enough for my purpose?

TRE/FRE against FLE, Dice and surface distances, Jacobian determinant and NMI, with pass/fail from an acceptance
profile, as Slicer tables and a plot. The computing lives in ``CrossModalRegLib.validation`` (Qt-free, tested
headless); this file binds the GUI to a parameter node and delegates to it.
"""

import logging
from typing import Annotated

import slicer
import vtk
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLPlotChartNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
    vtkMRMLTransformNode,
)
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

NO_PROFILE = "(none)"


#
# CrossModalRegValidation
#
class CrossModalRegValidation(ScriptedLoadableModule):
    """Module metadata."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CrossModalReg Validation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = ["CrossModalReg"]  # CrossModalReg puts CrossModalRegLib on the path
        self.parent.contributors = ["CrossModalReg developers"]
        self.parent.helpText = _(
            "Validate any registration transform (linear, B-spline, grid, composite; ours, elastix, ANTs, "
            "BRAINSFit or manual): landmark TRE before and after (FRE apart, against annotator FLE), per-segment "
            "Dice, Hausdorff, HD95 and mean surface distance, Jacobian determinant statistics and map, and NMI "
            "(an indirect measure), with pass/fail from an editable acceptance profile. The transform's "
            "'transform from parent' is taken as FIXED-to-MOVING (the moving volume placed under it) unless "
            "stated otherwise."
        )
        self.parent.acknowledgementText = _("Part of the CrossModalReg extension.")


#
# CrossModalRegValidationParameterNode
#
@parameterNodeWrapper
class CrossModalRegValidationParameterNode:
    """Everything a validation run needs; saved with the scene so that a run can be repeated from it.

    transform: the registration transform node; ``direction`` says what its transform-from-parent maps.
    fleMm: fiducial localisation error (RMS per image, mm), used when ``useFle``.
    drivingLandmarks: comma-separated labels of the landmarks that drove the registration (FRE).
    Output nodes are created on the first run and updated by later runs.
    """

    transform: vtkMRMLTransformNode
    direction: Annotated[str, Choice(["fixed-to-moving", "moving-to-fixed"])] = "fixed-to-moving"
    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    fixedLandmarks: vtkMRMLMarkupsFiducialNode
    movingLandmarks: vtkMRMLMarkupsFiducialNode
    drivingLandmarks: str = ""
    useFle: bool = False
    fleMm: Annotated[float, WithinRange(0.0, 100.0)] = 1.0
    skipUnpairedLandmarks: bool = False
    fixedSegmentation: vtkMRMLSegmentationNode
    movingSegmentation: vtkMRMLSegmentationNode
    fixedLabelMap: vtkMRMLLabelMapVolumeNode
    movingLabelMap: vtkMRMLLabelMapVolumeNode
    jacobianMode: Annotated[str, Choice(["auto", "always", "never"])] = "auto"
    jacobianMask: vtkMRMLSegmentationNode
    profile: Annotated[str, Choice([NO_PROFILE, "abdomen", "neuro", "plausibility"])] = "neuro"  # = available_profiles()
    summaryTable: vtkMRMLTableNode
    landmarkTable: vtkMRMLTableNode
    segmentTable: vtkMRMLTableNode
    plotChart: vtkMRMLPlotChartNode
    jacobianVolume: vtkMRMLScalarVolumeNode


#
# CrossModalRegValidationWidget
#
class CrossModalRegValidationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the GUI to the parameter node; runs the logic and shows errors. No computing here."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._running = False
        self._cancelRequested = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CrossModalRegValidation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CrossModalRegValidationLogic()

        self.ui.profileComboBox.clear()
        self.ui.profileComboBox.addItems([NO_PROFILE] + self.logic.availableProfiles())

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        # A run in progress stops at its next step, before it writes anything into the closing scene.
        self._cancelRequested = self._cancelRequested or self._running
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            if self._parameterNodeGuiTag is not None:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            # exit() already removed the observer when the module was left: do not remove it twice (warns)
            if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply):
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._running:
            return  # the button is "Cancel" during a run
        p = self._parameterNode
        ready, why = self.logic.canRun(p) if p else (False, _("No parameter node"))
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = _("Compute the validation tables") if ready else why

    def _inputWidgets(self) -> list:
        """Every widget of the panel but the Apply/Cancel button, the status line and their parents: locked during
        a run."""
        keep = (self.ui.applyButton, self.ui.statusLabel)
        return [w for w in vars(self.ui).values()
                if hasattr(w, "enabled") and w not in keep and not any(w.isAncestorOf(k) for k in keep)]

    def onApplyButton(self) -> None:
        from CrossModalRegLib.errors import RegistrationCancelled

        if self._running:  # the button reads "Cancel" during a run
            self._cancelRequested = True
            self.ui.statusLabel.text = _("Cancelling...")
            return
        self._running, self._cancelRequested = True, False
        locked = [(w, w.enabled) for w in self._inputWidgets()]
        for w, _wasEnabled in locked:
            w.enabled = False
        applyText = self.ui.applyButton.text
        self.ui.applyButton.text = _("Cancel")
        self.ui.applyButton.toolTip = _("Stop the validation; nothing is written")
        try:
            with slicer.util.tryWithErrorDisplay(_("Validation failed."), waitCursor=False):
                self.ui.statusLabel.text = _("Running...")
                try:
                    verdict = self.logic.process(self._parameterNode, progress=self._showProgress)
                except RegistrationCancelled:
                    self.ui.statusLabel.text = _("Cancelled: nothing was written.")
                else:
                    self.ui.statusLabel.text = (_("Done.") if verdict is None
                                                else _("Done: {verdict}").format(verdict=verdict))
                    self.logic.showResults(self._parameterNode)
        finally:
            self._running = False
            for w, wasEnabled in locked:
                w.enabled = wasEnabled
            self.ui.applyButton.text = applyText
            self._checkCanApply()

    def _showProgress(self, progress) -> None:
        """A :class:`CrossModalRegLib.progress.Progress` report: its message and percentage in the status line."""
        from CrossModalRegLib.errors import RegistrationCancelled

        self.ui.statusLabel.text = _("{message} ({percent:.0f}%)").format(message=progress.message,
                                                                           percent=100.0 * progress.fraction)
        slicer.app.processEvents()  # keeps Cancel clickable; every input is locked meanwhile
        if self._cancelRequested:
            raise RegistrationCancelled(_("Validation cancelled"))


#
# CrossModalRegValidationLogic
#
class CrossModalRegValidationLogic(ScriptedLoadableModuleLogic):
    """Runs a validation from a parameter node by delegating to ``CrossModalRegLib.validation``.

    Never opens a popup and never touches a widget: progress goes through a callback.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return CrossModalRegValidationParameterNode(super().getParameterNode())

    @staticmethod
    def availableProfiles() -> list:
        from CrossModalRegLib.validation import available_profiles

        return available_profiles()

    @staticmethod
    def canRun(p) -> tuple:
        """(ready, reason): a transform and at least one kind of evidence are needed."""
        if p.transform is None:
            return False, _("Select the registration transform")
        has_landmarks = p.fixedLandmarks is not None and p.movingLandmarks is not None
        has_segments = (p.fixedSegmentation is not None and p.movingSegmentation is not None) or (
            p.fixedLabelMap is not None and p.movingLabelMap is not None)
        has_images = p.fixedVolume is not None and p.movingVolume is not None
        if not (has_landmarks or has_segments or has_images):
            return False, _("Select paired landmarks, segmentations or label maps, or the fixed and moving volumes")
        return True, ""

    def process(self, p, progress=None):
        """Run the validation described by parameter node ``p``; returns the acceptance verdict (or None)."""
        from CrossModalRegLib.validation import load_profile
        from CrossModalRegLib.validation.scene import validate_nodes

        ready, why = self.canRun(p)
        if not ready:
            raise ValueError(why)
        driving = [s.strip() for s in p.drivingLandmarks.split(",") if s.strip()] or None
        fixedSeg = p.fixedSegmentation if p.fixedSegmentation is not None else p.fixedLabelMap
        movingSeg = p.movingSegmentation if p.movingSegmentation is not None else p.movingLabelMap
        profile = load_profile(p.profile) if p.profile and p.profile != NO_PROFILE else None
        outputs = {
            "summary_table": p.summaryTable,
            "landmark_table": p.landmarkTable,
            "segment_table": p.segmentTable,
            "plot_chart": p.plotChart,
            "jacobian_volume": p.jacobianVolume,
        }
        report, nodes = validate_nodes(
            slicer.mrmlScene, p.transform, direction=p.direction, fixed_volume=p.fixedVolume,
            moving_volume=p.movingVolume, fixed_landmarks=p.fixedLandmarks, moving_landmarks=p.movingLandmarks,
            driving_labels=driving, fle_mm=p.fleMm if p.useFle else None,
            unpaired_landmarks="skip" if p.skipUnpairedLandmarks else "error",
            fixed_segmentation=fixedSeg, moving_segmentation=movingSeg, jacobian_mask=p.jacobianMask,
            jacobian=p.jacobianMode, profile=profile, outputs=outputs, progress=progress)
        p.summaryTable = nodes.summary_table
        p.landmarkTable = nodes.landmark_table
        p.segmentTable = nodes.segment_table
        p.plotChart = nodes.plot_chart
        p.jacobianVolume = nodes.jacobian_volume
        logging.info("CrossModalRegValidation: %s", report.verdict or "done")
        return report.verdict

    @staticmethod
    def showResults(p) -> None:
        """Show the summary table and the TRE plot in the view layout (a layout with a plot view if needed)."""
        from CrossModalRegLib.views import show_results_in_layout

        show_results_in_layout(slicer.mrmlScene, slicer.app.applicationLogic(), table=p.summaryTable,
                               chart=p.plotChart)


#
# CrossModalRegValidationTest
#
class CrossModalRegValidationTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: drives the logic from a parameter node, no widget."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_translation_gives_known_tre_and_dice()

    def test_translation_gives_known_tre_and_dice(self):
        import numpy as np
        import SimpleITK as sitk

        from CrossModalRegLib.mrml import (
            markups_node_from_points,
            set_transform_fixed_to_moving,
            volume_node_from_image,
        )

        self.delayDisplay("Building a synthetic pair")
        arr = np.zeros((40, 40, 40), dtype=np.uint8)
        arr[10:25, 12:28, 8:30] = 1
        fixed = sitk.GetImageFromArray(arr)
        shift = (3.0, -2.0, 1.0)  # fixed -> moving, LPS mm
        tx = sitk.TranslationTransform(3, shift)
        moving = sitk.Resample(fixed, fixed, tx.GetInverse(), sitk.sitkNearestNeighbor, 0)
        scene = slicer.mrmlScene
        fixedLabel = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "fixed labels")
        movingLabel = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "moving labels")
        volume_node_from_image(scene, fixed, "fixed labels", node=fixedLabel)
        volume_node_from_image(scene, moving, "moving labels", node=movingLabel)
        pts = np.array([[5.0, 6.0, 7.0], [20.0, 10.0, 15.0], [30.0, 25.0, 5.0]])
        fixedMarkups = markups_node_from_points(scene, pts, ["a", "b", "c"], "fixed landmarks")
        movingMarkups = markups_node_from_points(scene, pts + np.array(shift), ["a", "b", "c"], "moving landmarks")
        transformNode = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
        set_transform_fixed_to_moving(transformNode, tx)

        logic = CrossModalRegValidationLogic()
        p = logic.getParameterNode()
        p.transform = transformNode
        p.fixedLandmarks = fixedMarkups
        p.movingLandmarks = movingMarkups
        p.fixedLabelMap = fixedLabel
        p.movingLabelMap = movingLabel
        p.profile = "neuro"
        verdict = logic.process(p)
        self.assertEqual(verdict, "pass")
        self.assertEqual(p.landmarkTable.GetNumberOfRows(), 3)
        tre = slicer.util.arrayFromTableColumn(p.landmarkTable, "tre_after_mm")
        self.assertLess(float(np.max(tre)), 1e-9)
        dice = slicer.util.arrayFromTableColumn(p.segmentTable, "dice_after")
        self.assertAlmostEqual(float(dice[0]), 1.0, places=9)
        self.assertEqual(p.plotChart.GetNumberOfPlotSeriesNodes(), 2)
        self.delayDisplay("Test passed")
