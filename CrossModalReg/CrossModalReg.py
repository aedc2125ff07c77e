"""CrossModalReg: cross-modality registration with a live overlay preview.

The user picks a fixed and a moving volume (CT, MR, PET, ultrasound, RGB histology), a preset for the modality
pair, optional masks and landmarks, and presses Apply: the moving volume is placed under the output transform,
which is updated while the optimiser runs, so the moving image slides into place over the fixed one in the slice
views. Apply turns into Cancel during the run; a cancelled or failed run leaves the scene as it was.

All computing and all MRML building is in the Qt-free package ``CrossModalRegLib`` (tested headless); this file
only binds the GUI to the parameter node, starts and cancels the work and shows errors.

Transform convention: the output transform node's *transform from parent* maps FIXED RAS points to MOVING RAS
points (equivalently its *transform to parent* maps moving to fixed), which is what Slicer needs to display the
moving volume, placed under it, aligned with the fixed volume.
"""

import logging
import os
import sys
import time
from typing import Annotated

import slicer
import vtk
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTransformNode,
    vtkMRMLVectorVolumeNode,
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

# The shared package sits next to this file (installed with the module); make it importable for the other two
# modules of the extension as well.
_MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
if _MODULE_DIR not in sys.path:
    sys.path.insert(0, _MODULE_DIR)

from CrossModalRegLib import engine, presets  # noqa: E402
from CrossModalRegLib.errors import RegistrationCancelled, RegistrationFailed  # noqa: E402


#
# CrossModalReg
#
class CrossModalReg(ScriptedLoadableModule):
    """Module metadata."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CrossModalReg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["CrossModalReg developers"]
        self.parent.helpText = _(
            "Register images of one subject taken with different physics (CT-MR, MR-PET, MR-ultrasound, "
            "histology stains) with a preset per modality pair, and watch the moving image slide into place. "
            "The output transform's 'transform from parent' maps fixed points to moving points (RAS): the moving "
            "volume placed under it is shown aligned with the fixed volume. Every run records its provenance "
            "(versions, preset, parameters, seed, input checksums, timings) in the scene."
        )
        self.parent.acknowledgementText = _("Part of the CrossModalReg extension. Engine: SimpleITK / ITK.")


#
# CrossModalRegParameterNode
#
@parameterNodeWrapper
class CrossModalRegParameterNode:
    """The state of the module, saved with the scene so that a run can be repeated from it.

    fixedVolume, movingVolume: the images (scalar or RGB vector volumes).
    preset: name of a shipped preset (see CrossModalRegLib/presets) or a path to a preset JSON file.
    fixedMask, movingMask: segmentation or label map; the metric is computed where they are non-zero.
    fixedLandmarks, movingLandmarks: paired by label; used to initialise (rigid fit) when both are set.
    initialTransform: a linear transform (its transform-from-parent, fixed -> moving) to start from.
    outputTransform: created on the first run (named '<moving>_to_<fixed> (CrossModalReg)') and reused after.
    """

    # Concrete classes only: parameterNodeWrapper instantiates each to read its name, and its name list replaces
    # the selector's nodeTypes (so the union is what the selector offers; the .ui says whether subclasses show).
    fixedVolume: vtkMRMLScalarVolumeNode | vtkMRMLVectorVolumeNode | None
    movingVolume: vtkMRMLScalarVolumeNode | vtkMRMLVectorVolumeNode | None
    preset: Annotated[str, Choice(presets.available_presets())] = "multimodal-rigid"
    fixedMask: vtkMRMLSegmentationNode | vtkMRMLLabelMapVolumeNode | None
    movingMask: vtkMRMLSegmentationNode | vtkMRMLLabelMapVolumeNode | None
    fixedLandmarks: vtkMRMLMarkupsFiducialNode | None
    movingLandmarks: vtkMRMLMarkupsFiducialNode | None
    initialTransform: vtkMRMLTransformNode | None  # and every subclass: linear, B-spline, grid, composite
    outputTransform: vtkMRMLTransformNode | None
    livePreview: bool = True
    rotationSearch: bool = True
    createResampledVolume: bool = False
    seed: Annotated[int, WithinRange(0, 2147483647)] = engine.DEFAULT_SEED
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    checkerboardSquares: Annotated[int, WithinRange(2, 64)] = 8


#
# CrossModalRegWidget
#
class CrossModalRegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI binding only: parameter node <-> widgets, Apply/Cancel, progress, errors."""

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
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CrossModalReg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CrossModalRegLogic()

        self.ui.progressBar.setVisible(False)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.presetComboBox.connect("currentIndexChanged(int)", self.onPresetChanged)
        self.ui.opacitySliderWidget.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.showOverlayButton.connect("clicked(bool)", self.onShowOverlay)
        self.ui.checkerboardButton.connect("clicked(bool)", self.onCheckerboard)
        self.initializeParameterNode()
        self.onPresetChanged()

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
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.fixedVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.fixedVolume = first

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._running:
            return
        p = self._parameterNode
        if p and p.fixedVolume and p.movingVolume and p.fixedVolume != p.movingVolume:
            self.ui.applyButton.toolTip = _("Register the moving volume to the fixed volume")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.toolTip = _("Select two different volumes: fixed and moving")
            self.ui.applyButton.enabled = False

    def onPresetChanged(self, index=None) -> None:
        name = self.ui.presetComboBox.currentText
        try:
            preset = presets.load_preset(name)
            self.ui.presetDescriptionLabel.text = preset["title"] + ". " + preset["when_to_use"]
        except Exception:  # noqa: BLE001 - a bad preset file is reported when Apply is pressed
            self.ui.presetDescriptionLabel.text = ""

    def onOpacityChanged(self, value) -> None:
        p = self._parameterNode
        if p and p.fixedVolume and p.movingVolume:
            self.logic.showOverlay(p.fixedVolume, p.movingVolume, opacity=value)

    def onShowOverlay(self) -> None:
        p = self._parameterNode
        if p and p.fixedVolume and p.movingVolume:
            self.logic.showOverlay(p.fixedVolume, p.movingVolume, opacity=p.overlayOpacity)

    def onCheckerboard(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to make the checkerboard."), waitCursor=True):
            self.logic.showCheckerboard(p)

    def onApplyButton(self) -> None:
        if self._running:
            self._cancelRequested = True
            self.ui.applyButton.text = _("Cancelling...")
            return
        self._running = True
        self._cancelRequested = False
        self.ui.applyButton.text = _("Cancel")
        self.ui.applyButton.toolTip = _("Stop the registration; the scene is left as it was")
        self.ui.progressBar.setVisible(True)
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = ""
        try:
            with slicer.util.tryWithErrorDisplay(_("Registration failed."), waitCursor=False):
                try:
                    outputs = self.logic.process(self._parameterNode, progress=self._onProgress,
                                                 cancel=lambda: self._cancelRequested)
                    r = outputs.result
                    self.ui.statusLabel.text = _(
                        "Done in {seconds:.1f} s; metric {start:.4g} -> {end:.4g}; sanity checks passed."
                    ).format(seconds=r.timings_s["total"], start=r.initial_metric, end=r.final_metric)
                except RegistrationCancelled:
                    self.ui.statusLabel.text = _("Cancelled: nothing was changed.")
                except RegistrationFailed as exc:
                    self.ui.statusLabel.text = _("Rejected by the sanity checks: {reasons}").format(
                        reasons="; ".join(exc.report))
                    raise
        finally:
            self._running = False
            self.ui.applyButton.text = _("Apply")
            self.ui.progressBar.setVisible(False)
            self._checkCanApply()

    def _onProgress(self, progress) -> None:
        self.ui.progressBar.value = int(round(100 * progress.fraction))
        if progress.metric is not None:
            self.ui.statusLabel.text = _("{message}, iteration {iteration}, metric {metric:.5g}").format(
                message=progress.message, iteration=progress.iteration, metric=progress.metric)
        else:
            self.ui.statusLabel.text = progress.message
        slicer.app.processEvents()  # redraws the views (the live preview) and lets Cancel be clicked


#
# CrossModalRegLogic
#
class CrossModalRegLogic(ScriptedLoadableModuleLogic):
    """Works from the parameter node only; delegates to CrossModalRegLib.scene_registration."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return CrossModalRegParameterNode(super().getParameterNode())

    def process(self, parameterNode, progress=None, cancel=None):
        """Run the registration described by ``parameterNode``; returns SceneRegistrationOutputs.

        Raises CrossModalRegError (bad input, nothing changed), RegistrationCancelled or RegistrationFailed
        (the scene left as it was).
        """
        from CrossModalRegLib import scene_registration

        p = parameterNode
        start = time.time()
        if p.fixedVolume and p.movingVolume and p.livePreview:
            self.showOverlay(p.fixedVolume, p.movingVolume, opacity=p.overlayOpacity)
        outputs = scene_registration.register_volume_nodes(
            slicer.mrmlScene,
            p.fixedVolume,
            p.movingVolume,
            preset=p.preset,
            output_transform_node=p.outputTransform,
            fixed_mask_node=p.fixedMask,
            moving_mask_node=p.movingMask,
            fixed_landmarks_node=p.fixedLandmarks,
            moving_landmarks_node=p.movingLandmarks,
            initial_transform_node=p.initialTransform,
            create_resampled_volume=p.createResampledVolume,
            live_preview=p.livePreview,
            seed=p.seed,
            rotation_search=p.rotationSearch,
            progress=progress,
            cancel=cancel,
        )
        p.outputTransform = outputs.transform_node
        logging.info(f"CrossModalReg finished in {time.time() - start:.1f} s")
        return outputs

    def showOverlay(self, fixedVolume, movingVolume, opacity=0.5):
        """Fixed in the background, moving in the foreground of every slice view."""
        from CrossModalRegLib import scene_registration

        scene_registration.set_overlay_layers(slicer.mrmlScene, fixedVolume, movingVolume, opacity=opacity)

    def showCheckerboard(self, parameterNode):
        from CrossModalRegLib import scene_registration

        p = parameterNode
        node = scene_registration.checkerboard_volume(slicer.mrmlScene, p.fixedVolume, p.movingVolume,
                                                      squares=p.checkerboardSquares)
        slicer.util.setSliceViewerLayers(background=node, foreground=None)
        return node


#
# CrossModalRegTest
#
class CrossModalRegTest(ScriptedLoadableModuleTest):
    """In-Slicer tests (run them from the Reload & Test button or ctest). The headless suite in the repository's
    Testing/ folder covers the same logic against slicer-core; these check it inside the real application."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PhantomCtToMrRecoversKnownRigidTransform()
        self.setUp()
        self.test_CancelLeavesSceneUnchanged()

    def _phantomPair(self):
        import numpy as np

        from CrossModalRegLib import mrml, simulation

        rng = np.random.RandomState(3)
        model = simulation.head_phantom(spacing_mm=2.5)
        fixed = simulation.render(model, "t1", rng=rng)
        center = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in fixed.GetSize()])
        truth = simulation.random_rigid_transform(rng, center=center, max_angle_deg=20, max_translation_mm=15)
        moving = simulation.simulate_pair(simulation.render(model, "ct", rng=rng), truth, spacing=(2.0, 2.0, 3.0),
                                          rng=rng)
        fixedNode = mrml.volume_node_from_image(slicer.mrmlScene, fixed, "phantom MR")
        movingNode = mrml.volume_node_from_image(slicer.mrmlScene, moving, "phantom CT")
        targets = simulation.points_in_mask(model.brain_mask(), 200, rng)
        return fixedNode, movingNode, truth, targets

    def test_PhantomCtToMrRecoversKnownRigidTransform(self):
        from CrossModalRegLib import geometry, mrml

        self.delayDisplay("Registering a CT-like phantom to an MR-like phantom")
        fixedNode, movingNode, truth, targets = self._phantomPair()
        logic = CrossModalRegLogic()
        p = logic.getParameterNode()
        p.fixedVolume, p.movingVolume, p.preset = fixedNode, movingNode, "ct-mr-rigid"
        fractions = []
        outputs = logic.process(p, progress=lambda pr: fractions.append(pr.fraction))
        self.assertEqual(fractions[-1], 1.0)
        self.assertTrue(all(b >= a for a, b in zip(fractions, fractions[1:])))
        self.assertGreater(outputs.preview_updates, 1)
        # Through Slicer's own transform: fixed RAS -> moving RAS must match the truth (LPS) to < 1 mm.
        mapped = mrml.transform_ras_points_from_parent(outputs.transform_node, geometry.lps_to_ras_points(targets))
        expected = geometry.lps_to_ras_points(geometry.transform_points(truth, targets))
        import numpy as np

        tre = np.linalg.norm(mapped - expected, axis=1)
        self.assertLess(float(tre.mean()), 1.0)
        self.assertEqual(movingNode.GetParentTransformNode(), outputs.transform_node)
        self.delayDisplay(f"Mean TRE {tre.mean():.2f} mm")

    def test_CancelLeavesSceneUnchanged(self):
        self.delayDisplay("Cancelling a run")
        fixedNode, movingNode, _truth, _targets = self._phantomPair()
        logic = CrossModalRegLogic()
        p = logic.getParameterNode()
        p.fixedVolume, p.movingVolume = fixedNode, movingNode
        before = slicer.mrmlScene.GetNumberOfNodes()
        calls = []

        def cancel():
            calls.append(1)
            return len(calls) > 20

        with self.assertRaises(RegistrationCancelled):
            logic.process(p, progress=lambda pr: None, cancel=cancel)
        self.assertIsNone(movingNode.GetParentTransformNode())
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Cancel left the scene as it was")
