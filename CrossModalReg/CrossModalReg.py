"""CrossModalReg: cross-modality registration with a live overlay preview.

The user picks a fixed and a moving volume (CT, MR, PET, ultrasound, RGB histology), a preset for the modality
pair, optional masks and landmarks, and presses Apply: the moving volume is placed under the output transform,
which is updated while the optimiser runs, so the moving image slides into place over the fixed one in the slice
views. Apply turns into Cancel during the run; a cancelled or failed run leaves the scene as it was.

All computing and all MRML building is in the Qt-free package ``CrossModalRegLib`` (tested headless); this file
only binds the GUI to the parameter node, starts and cancels the work and shows errors. The optimiser runs in a
worker thread (no MRML there); the main thread reads the inputs, shows the live preview and writes the outputs,
so the views and the Cancel button stay live in every phase. Nothing imports SimpleITK until a run starts (Slicer
imports every module file at start-up).

Transform convention: the output transform node's *transform from parent* maps FIXED RAS points to MOVING RAS
points (equivalently its *transform to parent* maps moving to fixed), which is what Slicer needs to display the
moving volume, placed under it, aligned with the fixed volume.
"""

import dataclasses
import logging
import os
import queue
import sys
import threading
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

from CrossModalRegLib import presets  # noqa: E402 - json only; the engine (SimpleITK) is imported when a run starts
from CrossModalRegLib.errors import CrossModalRegError, RegistrationCancelled, RegistrationFailed  # noqa: E402

#: = CrossModalRegLib.engine.DEFAULT_SEED (not imported here: that would import SimpleITK at Slicer start-up).
DEFAULT_SEED = 20261124
HOMEPAGE = "https://github.com/CrossModalReg/SlicerCrossModalReg"
#: Slicer layout id of the registration layout (fixed | moving | fused, metric plot below); extensions pick ids
#: above 1000 to stay clear of Slicer's own.
REGISTRATION_LAYOUT_ID = 15310
REGISTRATION_LAYOUT_XML = """
<layout type="vertical" split="true">
 <item splitSize="650">
  <layout type="horizontal">
   <item><view class="vtkMRMLSliceNode" singletontag="Red">
    <property name="orientation" action="default">Axial</property>
    <property name="viewlabel" action="default">R</property>
    <property name="viewcolor" action="default">#F34A33</property></view></item>
   <item><view class="vtkMRMLSliceNode" singletontag="Yellow">
    <property name="orientation" action="default">Axial</property>
    <property name="viewlabel" action="default">Y</property>
    <property name="viewcolor" action="default">#EDD54C</property></view></item>
   <item><view class="vtkMRMLSliceNode" singletontag="Green">
    <property name="orientation" action="default">Axial</property>
    <property name="viewlabel" action="default">G</property>
    <property name="viewcolor" action="default">#6EB04B</property></view></item>
  </layout>
 </item>
 <item splitSize="350"><view class="vtkMRMLPlotViewNode" singletontag="PlotView1">
  <property name="viewlabel" action="default">P</property></view></item>
</layout>
"""
#: What each view of the registration layout shows: background, foreground.
REGISTRATION_VIEWS = {"Red": ("fixed", None), "Yellow": ("moving", None), "Green": ("fixed", "moving")}


#
# CrossModalReg
#
class CrossModalReg(ScriptedLoadableModule):
    """Module metadata."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Cross-Modality Registration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["CrossModalReg maintainers (CrossModalReg project)"]
        self.parent.helpText = _(
            "Register images of one subject taken with different physics (CT-MR, MR-PET, MR-ultrasound, "
            "histology stains) with a preset per modality pair, and watch the moving image slide into place. "
            "The output transform's 'transform from parent' maps fixed points to moving points (RAS): the moving "
            "volume placed under it is shown aligned with the fixed volume. Every run records its provenance "
            "(versions, preset, parameters, seed, input checksums, timings) in the scene."
        ) + "<p>" + _("Documentation: {link}").format(link=f'<a href="{HOMEPAGE}#readme">{HOMEPAGE}</a>') + "</p>"
        self.parent.acknowledgementText = _("Part of the CrossModalReg extension. Engine: SimpleITK / ITK.")
        # The built-in phantom in the Sample Data module, once Slicer has started (no SimpleITK import here).
        app = getattr(slicer, "app", None)
        if app is not None and hasattr(app, "connect"):
            app.connect("startupCompleted()", _registerSampleData)


def _registerSampleData():
    """Register the CT-MR phantom (generated locally, no download) with Sample Data; nothing if it is absent."""
    try:
        from CrossModalRegLib.sample_data import register_phantom_sample_data

        register_phantom_sample_data()
    except Exception:  # noqa: BLE001 - sample data is a convenience: never stop Slicer's start-up for it
        logging.exception("CrossModalReg: could not register the phantom sample data")


#
# CrossModalRegParameterNode
#
@parameterNodeWrapper
class CrossModalRegParameterNode:
    """The state of the module, saved with the scene so that a run can be repeated from it.

    fixedVolume, movingVolume: the images (scalar or RGB vector volumes).
    preset: name of a shipped preset (see CrossModalRegLib/presets).
    presetFile: path of a user preset JSON file; when set it is used instead of ``preset``.
    fixedMask, movingMask: segmentation or label map; the metric is computed where they are non-zero.
    fixedLandmarks, movingLandmarks: paired by label; used to initialise (rigid fit) when both are set.
    initialTransform: a transform (its transform-from-parent, fixed -> moving) to start from.
    outputTransform: created on the first run (named '<moving>_to_<fixed> (CrossModalReg)') and reused after;
    never one of the inputs.
    checkerboardVolume: the checkerboard made by "Show checkerboard" (reused, not bound to a widget).
    """

    # Concrete classes only: parameterNodeWrapper instantiates each to read its name, and its name list replaces
    # the selector's nodeTypes (so the union is what the selector offers; the .ui says whether subclasses show).
    fixedVolume: vtkMRMLScalarVolumeNode | vtkMRMLVectorVolumeNode | None
    movingVolume: vtkMRMLScalarVolumeNode | vtkMRMLVectorVolumeNode | None
    preset: Annotated[str, Choice(presets.available_presets())] = "multimodal-rigid"
    presetFile: str = ""
    fixedMask: vtkMRMLSegmentationNode | vtkMRMLLabelMapVolumeNode | None
    movingMask: vtkMRMLSegmentationNode | vtkMRMLLabelMapVolumeNode | None
    fixedLandmarks: vtkMRMLMarkupsFiducialNode | None
    movingLandmarks: vtkMRMLMarkupsFiducialNode | None
    initialTransform: vtkMRMLTransformNode | None  # and every subclass: linear, B-spline, grid, composite
    outputTransform: vtkMRMLTransformNode | None
    livePreview: bool = True
    rotationSearch: bool = True
    createResampledVolume: bool = False
    seed: Annotated[int, WithinRange(0, 2147483647)] = DEFAULT_SEED
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    checkerboardSquares: Annotated[int, WithinRange(2, 64)] = 8
    checkerboardVolume: vtkMRMLScalarVolumeNode | None


#
# CrossModalRegWidget
#
class CrossModalRegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI binding only: parameter node <-> widgets, Apply/Cancel, progress, errors."""

    POLL_INTERVAL_MS = 50
    #: Each poll waits this long for the worker (thread join, which releases the GIL): Slicer's main thread may
    #: hold the GIL while idle in the Qt event loop, and the worker's Python parts would then starve.
    WORKER_SLICE_S = 0.03
    FLICKER_INTERVAL_MS = 500

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._pollTimer = None
        self._flickerTimer = None
        self._flickerPhase = False
        self.lastOutputs = None

    def setup(self) -> None:
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CrossModalReg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CrossModalRegLogic()
        self.ui.progressBar.setVisible(False)

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self._pollRun)
        self._flickerTimer = qt.QTimer()
        self._flickerTimer.setInterval(self.FLICKER_INTERVAL_MS)
        self._flickerTimer.connect("timeout()", self._flickerStep)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.presetComboBox.connect("currentIndexChanged(int)", self.onPresetChanged)
        self.ui.presetFileLineEdit.connect("textChanged(QString)", self.onPresetChanged)
        self.ui.presetFileBrowseButton.connect("clicked(bool)", self.onBrowsePresetFile)
        self.ui.opacitySliderWidget.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.showOverlayButton.connect("clicked(bool)", self.onShowOverlay)
        self.ui.checkerboardButton.connect("clicked(bool)", self.onCheckerboard)
        self.ui.registrationLayoutButton.connect("clicked(bool)", self.onRegistrationLayout)
        self.ui.flickerButton.connect("toggled(bool)", self.onFlicker)
        self.ui.addDataButton.connect("clicked(bool)", self.onAddData)
        self.ui.dicomButton.connect("clicked(bool)", self.onDicom)
        self.ui.guessRolesButton.connect("clicked(bool)", self.onGuessRolesButton)
        self._volumesBeforeLoading = set()
        self.initializeParameterNode()
        self.onPresetChanged()

    def cleanup(self) -> None:
        self._stopRun()
        if self._flickerTimer is not None:
            self._flickerTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        # A running registration goes on (its progress shows again on return); flicker stops.
        self.ui.flickerButton.checked = False
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self._stopRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if not p.fixedVolume or not p.movingVolume:
            volumes = self.logic.candidateVolumes()
            if not p.fixedVolume and volumes:
                p.fixedVolume = volumes[0]
            if not p.movingVolume:
                others = [v for v in volumes if v is not p.fixedVolume]
                if others:
                    p.movingVolume = others[0]

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            # exit() already removed it (Slicer's template warns "does not have observer" here on re-entering).
            if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply):
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            if self._parameterNode.preset in presets.ALIASES:  # a scene saved with a former preset name
                self._parameterNode.preset = presets.ALIASES[self._parameterNode.preset]
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._job is not None:
            return
        problem = self.logic.inputProblem(self._parameterNode) if self._parameterNode else _("No parameter node")
        self.ui.applyButton.enabled = problem is None
        self.ui.applyButton.toolTip = problem or _("Register the moving volume to the fixed volume")

    def onPresetChanged(self, *args) -> None:
        # From the widgets: this slot may run before the parameter node has been updated from them.
        source = self.ui.presetFileLineEdit.text.strip() or self.ui.presetComboBox.currentText
        try:
            preset = presets.load_preset(source)
            self.ui.presetDescriptionLabel.text = preset["title"] + ". " + preset["when_to_use"]
        except Exception as exc:  # noqa: BLE001 - shown where the description goes; Apply says it too
            self.ui.presetDescriptionLabel.text = _("Preset not usable: {reason}").format(reason=exc)
        self._checkCanApply()

    def onAddData(self) -> None:
        """Slicer's Add Data dialog, then the modality guess on what it loaded."""
        from CrossModalRegLib.modality import volume_ids

        before = volume_ids(slicer.mrmlScene)
        with slicer.util.tryWithErrorDisplay(_("Loading failed."), waitCursor=True):
            slicer.util.openAddDataDialog()
        self.onGuessRoles(before)

    def onDicom(self) -> None:
        """The DICOM module; "Guess roles" afterwards looks at the series loaded since this click."""
        from CrossModalRegLib.modality import volume_ids

        self._volumesBeforeLoading = volume_ids(slicer.mrmlScene)
        slicer.util.selectModule("DICOM")

    def onGuessRolesButton(self) -> None:
        self.onGuessRoles(self._volumesBeforeLoading)

    def onGuessRoles(self, volumesBefore) -> None:
        """Guess the modality of the volumes loaded since ``volumesBefore`` (IDs) and fill fixed, moving and the
        preset; the reasons and warnings (e.g. head-first vs feet-first) are shown under the buttons."""
        from CrossModalRegLib.modality import guess_roles_and_preset, pair_after_loading

        def dicomValue(uid, tag):
            db = getattr(slicer, "dicomDatabase", None)
            return db.fileValue(db.fileForInstance(uid), tag) if db else ""

        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not guess the modalities."), waitCursor=True):
            nodes = pair_after_loading(slicer.mrmlScene, set(volumesBefore or ()), (p.fixedVolume, p.movingVolume))
            fixed, moving, preset, reasons, warnings = guess_roles_and_preset(slicer.mrmlScene, nodes,
                                                                              dicom_value=dicomValue)
            p.fixedVolume, p.movingVolume, p.preset = fixed, moving, preset
            text = "\n".join(list(reasons) + [_("Warning: {w}").format(w=w) for w in warnings])
            self.ui.guessRolesLabel.text = text
            self.ui.guessRolesLabel.visible = bool(text)
            self._volumesBeforeLoading = set()

    def onBrowsePresetFile(self) -> None:
        import qt

        path = qt.QFileDialog.getOpenFileName(self.parent, _("Preset file"), "", _("Preset (*.json)"))
        if path and self._parameterNode:
            self._parameterNode.presetFile = path

    # -- display --------------------------------------------------------------------------------------------------
    def onOpacityChanged(self, value) -> None:
        """Fade: the moving (foreground) opacity only; the volumes shown (e.g. a checkerboard) stay."""
        self.logic.setForegroundOpacity(value)

    def onShowOverlay(self) -> None:
        p = self._parameterNode
        if p and p.fixedVolume and p.movingVolume:
            self.logic.showOverlay(p.fixedVolume, p.movingVolume, opacity=p.overlayOpacity)

    def onRegistrationLayout(self) -> None:
        p = self._parameterNode
        self.logic.showRegistrationLayout(p.fixedVolume if p else None, p.movingVolume if p else None,
                                          opacity=p.overlayOpacity if p else 0.5)

    def onFlicker(self, on) -> None:
        if on:
            self._flickerPhase = False
            self._flickerTimer.start()
        else:
            self._flickerTimer.stop()
            if self._parameterNode:
                self.logic.setForegroundOpacity(self._parameterNode.overlayOpacity)

    def _flickerStep(self) -> None:
        self._flickerPhase = not self._flickerPhase
        self.logic.setForegroundOpacity(1.0 if self._flickerPhase else 0.0)

    def onCheckerboard(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to make the checkerboard."), waitCursor=True):
            self.ui.flickerButton.checked = False
            self.logic.showCheckerboard(p)

    # -- run ------------------------------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.ui.applyButton.text = _("Cancelling...")
            self.ui.applyButton.enabled = False
            return
        self.ui.statusLabel.text = ""
        try:
            self._job = self.logic.startRegistration(self._parameterNode)
        except Exception as exc:  # noqa: BLE001 - bad input: say what to fix, nothing was changed
            self.ui.statusLabel.text = _("Not started: {reason}").format(reason=exc)
            slicer.util.errorDisplay(_("Registration not started.") + f"\n\n{exc}")
            return
        self._setRunning(True)
        self._pollTimer.start()

    def _setRunning(self, running) -> None:
        """Lock the inputs during a run (the run uses a copy of them; changing them would mislead)."""
        for w in (self.ui.inputsCollapsibleButton, self.ui.outputsCollapsibleButton, self.ui.advancedCollapsibleButton,
                  self.ui.checkerboardButton, self.ui.showOverlayButton, self.ui.registrationLayoutButton):
            w.enabled = not running
        self.ui.progressBar.setVisible(running)
        if running:
            self.ui.progressBar.value = 0
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the registration; the scene is left as it was")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.text = _("Apply")
            self._checkCanApply()

    def _pollRun(self) -> None:
        job = self._job
        if job is None:
            self._pollTimer.stop()
            return
        job.wait(self.WORKER_SLICE_S)
        progress = job.poll()
        if progress is not None:
            self.ui.progressBar.value = int(round(100 * progress.fraction))
            if progress.metric is not None:
                self.ui.statusLabel.text = _("{message}, iteration {iteration}, metric {metric:.5g}").format(
                    message=progress.message, iteration=progress.iteration, metric=progress.metric)
            elif progress.message:
                self.ui.statusLabel.text = progress.message
        if not job.isDone():
            return
        self._pollTimer.stop()
        self._job = None
        try:
            outputs = self.logic.finishRegistration(job)
            self.lastOutputs = outputs
            r = outputs.result
            self.ui.statusLabel.text = _(
                "Done in {seconds:.1f} s; metric {start:.4g} -> {end:.4g}; sanity checks passed."
            ).format(seconds=r.timings_s["total"], start=r.initial_metric, end=r.final_metric)
        except RegistrationCancelled:
            self.ui.statusLabel.text = _("Cancelled: nothing was changed.")
        except RegistrationFailed as exc:
            self.ui.statusLabel.text = _("Rejected by the sanity checks: {reasons}").format(
                reasons="; ".join(exc.report))
            slicer.util.errorDisplay(_("Registration failed.") + "\n\n" + self.ui.statusLabel.text)
        except Exception as exc:  # noqa: BLE001 - shown to the user; the scene was put back
            self.ui.statusLabel.text = _("Failed: {reason}").format(reason=exc)
            slicer.util.errorDisplay(_("Registration failed.") + f"\n\n{exc}")
        finally:
            self._setRunning(False)

    def _stopRun(self) -> None:
        """Cancel a running registration and wait for it (scene close, module unload)."""
        job = self._job
        if job is None:
            return
        self._pollTimer.stop()
        self._job = None
        job.cancel()
        job.wait()
        try:
            self.logic.finishRegistration(job)
        except Exception:  # noqa: BLE001 - cancelled on purpose; the scene is put back
            pass
        self._setRunning(False)


#
# RegistrationJob
#
class RegistrationJob:
    """One registration: the optimiser in a worker thread, everything MRML on the caller's (main) thread.

    ``poll()`` (main thread) returns the latest progress report and shows the live preview; ``cancel()`` asks the
    engine to stop at its next check (it checks in every phase: preprocessing, N4, initialisation, each level and
    iteration, sanity checks, resampling); ``finish()`` (main thread) writes the outputs, or puts the scene back and
    raises ``RegistrationCancelled`` / the run's error.
    """

    #: Makes the cancel flag (a threading.Event); tests replace it to hold the worker in a given phase.
    eventFactory = threading.Event

    def __init__(self, prepared, changes, *, live_preview=True, preview_interval_s=0.1,
                 create_convergence_outputs=True):
        self.prepared = prepared
        self.changes = changes
        self.live_preview = live_preview
        self.preview_interval_s = preview_interval_s
        self.create_convergence_outputs = create_convergence_outputs
        self._cancel = type(self).eventFactory()
        self._queue = queue.SimpleQueue()
        self._result = None
        self._error = None
        self._lastPreview = 0.0
        self._thread = threading.Thread(target=self._work, name="CrossModalReg registration", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _work(self):  # worker thread: no MRML here
        try:
            self._result = self.prepared.run(progress=self._onProgress, cancel=self._cancel)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._error = exc

    def _onProgress(self, p):  # worker thread
        tx = None
        now = time.perf_counter()
        if self.live_preview and p._transform_factory is not None and now - self._lastPreview >= self.preview_interval_s:
            tx = p.transform_fixed_to_moving_lps()
            self._lastPreview = now
        self._queue.put((dataclasses.replace(p, _transform_factory=None), tx))

    def cancel(self):
        self._cancel.set()

    @property
    def cancelRequested(self):
        return self._cancel.is_set()

    def isDone(self):
        return not self._thread.is_alive()

    def wait(self, timeout=None):
        self._thread.join(timeout)

    def poll(self):
        latest, latestTx = None, None
        while True:
            try:
                p, tx = self._queue.get_nowait()
            except queue.Empty:
                break
            latest = p
            if tx is not None:
                latestTx = tx
        if latestTx is not None and not self._cancel.is_set():
            self.changes.preview(dataclasses.replace(latest, _transform_factory=lambda: latestTx))
        return latest

    def finish(self):
        self.wait()
        self.poll()
        try:
            if self._error is not None:
                raise self._error
            if self._cancel.is_set():
                raise RegistrationCancelled("cancelled")
            result, resampled = self._result
            return self.changes.commit(result, resampled, create_convergence_outputs=self.create_convergence_outputs)
        except BaseException:
            self.changes.rollback()
            raise


#
# CrossModalRegLogic
#
class CrossModalRegLogic(ScriptedLoadableModuleLogic):
    """Works from the parameter node only; delegates to CrossModalRegLib.scene_registration."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return CrossModalRegParameterNode(super().getParameterNode())

    def candidateVolumes(self):
        """Scalar (not label map) and vector volumes of the scene, in scene order."""
        out = []
        for i in range(slicer.mrmlScene.GetNumberOfNodes()):
            node = slicer.mrmlScene.GetNthNode(i)
            if node.GetClassName() in ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"):
                out.append(node)
        return out

    @staticmethod
    def presetSource(p):
        return p.presetFile if p.presetFile else p.preset

    def inputProblem(self, p):
        """Why Apply cannot run (text for the user), or None."""
        if not p.fixedVolume or not p.movingVolume:
            return _("Select a fixed and a moving volume")
        if p.fixedVolume == p.movingVolume:
            return _("Select two different volumes: fixed and moving")
        if p.outputTransform and p.outputTransform == p.initialTransform:
            return _("The output transform is the initial transform: select another output (or none)")
        if p.outputTransform and p.fixedVolume.GetParentTransformNode() == p.outputTransform:
            return _("The fixed volume is under the output transform: select another output (or none)")
        if p.presetFile:
            try:
                presets.load_preset(p.presetFile)
            except Exception as exc:  # noqa: BLE001 - the reason is the message
                return _("User preset file not usable: {reason}").format(reason=exc)
        return None

    def _prepare(self, p):
        from CrossModalRegLib import scene_registration

        problem = self.inputProblem(p)
        if problem:
            raise CrossModalRegError(problem)
        return scene_registration.prepare_registration(
            p.fixedVolume, p.movingVolume, preset=self.presetSource(p), output_transform_node=p.outputTransform,
            fixed_mask_node=p.fixedMask, moving_mask_node=p.movingMask, fixed_landmarks_node=p.fixedLandmarks,
            moving_landmarks_node=p.movingLandmarks, initial_transform_node=p.initialTransform,
            create_resampled_volume=p.createResampledVolume, seed=p.seed, rotation_search=p.rotationSearch)

    def startRegistration(self, parameterNode):
        """Read the inputs (nothing changed in the scene if they are bad), then start the optimiser in a worker
        thread; returns the RegistrationJob. Call ``finishRegistration(job)`` once ``job.isDone()``."""
        from CrossModalRegLib import scene_registration

        p = parameterNode
        prepared = self._prepare(p)
        if p.livePreview:
            self.showOverlay(p.fixedVolume, p.movingVolume, opacity=p.overlayOpacity)
        changes = scene_registration.SceneChanges(slicer.mrmlScene, prepared, output_transform_node=p.outputTransform,
                                                  live_preview=p.livePreview)
        p.outputTransform = changes.output_transform_node
        job = RegistrationJob(prepared, changes, live_preview=p.livePreview)
        job.parameterNode = p
        job.previousOutputTransform = prepared.output_transform_node
        return job.start()

    def finishRegistration(self, job):
        """Outputs of a finished job (main thread); on cancel or error the scene is put back and the error raised."""
        try:
            outputs = job.finish()
        except BaseException:
            if job.parameterNode.outputTransform != job.previousOutputTransform:
                job.parameterNode.outputTransform = job.previousOutputTransform
            raise
        job.parameterNode.outputTransform = outputs.transform_node
        if outputs.trace_chart_node is not None:
            self.showChart(outputs.trace_chart_node)
        return outputs

    def process(self, parameterNode, progress=None, cancel=None):
        """Run the registration described by ``parameterNode`` synchronously (scripts, tests); returns
        SceneRegistrationOutputs.

        Raises CrossModalRegError (bad input, nothing changed), RegistrationCancelled or RegistrationFailed
        (the scene left as it was).
        """
        from CrossModalRegLib import scene_registration

        p = parameterNode
        start = time.time()
        problem = self.inputProblem(p)
        if problem:
            raise CrossModalRegError(problem)
        if p.fixedVolume and p.movingVolume and p.livePreview:
            self.showOverlay(p.fixedVolume, p.movingVolume, opacity=p.overlayOpacity)
        outputs = scene_registration.register_volume_nodes(
            slicer.mrmlScene,
            p.fixedVolume,
            p.movingVolume,
            preset=self.presetSource(p),
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

    # -- views ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _compositeNodes():
        nodes = slicer.mrmlScene.GetNodesByClass("vtkMRMLSliceCompositeNode")
        return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]

    @staticmethod
    def _layoutNode():
        return slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLayoutNode")

    def isRegistrationLayout(self):
        node = self._layoutNode()
        return node is not None and node.GetViewArrangement() == REGISTRATION_LAYOUT_ID

    def showOverlay(self, fixedVolume, movingVolume, opacity=0.5):
        """Fixed in the background, moving in the foreground of every slice view (in the registration layout:
        fixed alone, moving alone, and the two fused)."""
        from CrossModalRegLib import scene_registration

        if self.isRegistrationLayout():
            self._assignRegistrationViews(fixedVolume, movingVolume, opacity)
        else:
            scene_registration.set_overlay_layers(slicer.mrmlScene, fixedVolume, movingVolume, opacity=opacity)

    def setForegroundOpacity(self, opacity):
        """Fade between background (0) and foreground (1) in every view that shows a foreground."""
        for comp in self._compositeNodes():
            comp.SetForegroundOpacity(float(opacity))

    def showRegistrationLayout(self, fixedVolume, movingVolume, opacity=0.5):
        """Switch to the registration layout (fixed | moving | fused, metric plot below) and fill its views."""
        layoutNode = self._layoutNode()
        if layoutNode is None:
            raise CrossModalRegError("the scene has no layout node")
        if not layoutNode.IsLayoutDescription(REGISTRATION_LAYOUT_ID):
            layoutNode.AddLayoutDescription(REGISTRATION_LAYOUT_ID, REGISTRATION_LAYOUT_XML)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            layoutManager.setLayout(REGISTRATION_LAYOUT_ID)
        else:
            layoutNode.SetViewArrangement(REGISTRATION_LAYOUT_ID)
        self._assignRegistrationViews(fixedVolume, movingVolume, opacity)

    def _assignRegistrationViews(self, fixedVolume, movingVolume, opacity):
        volumes = {"fixed": fixedVolume, "moving": movingVolume, None: None}
        for comp in self._compositeNodes():
            roles = REGISTRATION_VIEWS.get(comp.GetLayoutName())
            if roles is None:
                continue
            background, foreground = (volumes[r] for r in roles)
            comp.SetBackgroundVolumeID(background.GetID() if background else None)
            comp.SetForegroundVolumeID(foreground.GetID() if foreground else None)
            comp.SetForegroundOpacity(float(opacity))

    def showChart(self, chartNode):
        """Show a plot chart in the layout's plot view (switching to the registration layout if it has none)."""
        if not slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLPlotViewNode") or not self.isRegistrationLayout():
            p = self.getParameterNode()
            self.showRegistrationLayout(p.fixedVolume, p.movingVolume, opacity=p.overlayOpacity)
        appLogic = slicer.app.applicationLogic()
        appLogic.GetSelectionNode().SetActivePlotChartID(chartNode.GetID())
        appLogic.PropagatePlotChartSelection()

    def showCheckerboard(self, parameterNode):
        """Make (or update) the checkerboard volume of fixed and transformed moving and show it in every view."""
        from CrossModalRegLib import scene_registration

        p = parameterNode
        if not p.fixedVolume or not p.movingVolume:
            raise CrossModalRegError("select a fixed and a moving volume first")
        node = scene_registration.checkerboard_volume(slicer.mrmlScene, p.fixedVolume, p.movingVolume,
                                                      squares=p.checkerboardSquares, node=p.checkerboardVolume)
        p.checkerboardVolume = node
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
        p.fixedVolume, p.movingVolume, p.preset = fixedNode, movingNode, "mr-ct-rigid"
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
