"""The CrossModalReg module driven through its real Widget on the GUI harness (Testing/slicer_gui).

A small CT-like/MR-like phantom pair (CrossModalRegLib.simulation, 4 mm voxels, known rigid misalignment) keeps
each registration to seconds. Cancel is tested in every phase by holding the worker thread at the engine's first
cancellation check inside that phase (files preprocessing.py, initialization.py, engine.py, and after the engine
in scene_registration.py: sanity checks/resampling) and clicking Cancel there, as a user would.
"""

from __future__ import annotations

import re
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("PyQt5", reason="the GUI harness needs PyQt5 (the project's test extra)")

# slicer-core 5.13 deprecates what Slicer 5.10 uses (vtkMRMLTableNode::SetColumnLongName); only that may be logged.
_KNOWN_CORE_WARNINGS = re.compile(r"SetColumnLongName is deprecated|GetSelectionNodeID: no selection node|^\s*$")


def _unexpected(stderr: str):
    return [line for line in stderr.splitlines() if not _KNOWN_CORE_WARNINGS.search(line)]


@pytest.fixture(scope="module")
def phantom_images():
    from CrossModalRegLib import simulation

    rng = np.random.RandomState(3)
    model = simulation.head_phantom(spacing_mm=4.0)
    fixed = simulation.render(model, "t1", rng=rng)
    center = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in fixed.GetSize()])
    truth = simulation.random_rigid_transform(rng, center=center, max_angle_deg=10, max_translation_mm=10)
    moving = simulation.simulate_pair(simulation.render(model, "ct", rng=rng), truth, spacing=(4.0, 4.0, 4.0), rng=rng)
    targets = simulation.points_in_mask(model.brain_mask(), 200, rng)
    return fixed, moving, truth, targets


@pytest.fixture
def phantom(slicer_gui, phantom_images):
    from CrossModalRegLib import mrml

    fixed, moving, truth, targets = phantom_images
    fixed_node = mrml.volume_node_from_image(slicer_gui.scene, fixed, "phantom MR")
    moving_node = mrml.volume_node_from_image(slicer_gui.scene, moving, "phantom CT")
    return fixed_node, moving_node, truth, targets


def _wait(condition, timeout=120.0):
    """Let the GUI run (processEvents) until ``condition()``; returns the longest gap between two event passes."""
    import slicer

    t0 = last = time.perf_counter()
    worst = 0.0
    while not condition():
        slicer.app.processEvents()
        time.sleep(0.01)
        now = time.perf_counter()
        worst = max(worst, now - last)
        last = now
        assert now - t0 < timeout, "timed out"
    slicer.app.processEvents()
    return worst


def _scene_state(scene, moving_node, transform_node=None):
    ids = sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))
    parent = moving_node.GetParentTransformNode()
    matrix = None
    if transform_node is not None:
        import vtk

        m = vtk.vtkMatrix4x4()
        transform_node.GetMatrixTransformFromParent(m)
        matrix = [m.GetElement(i, j) for i in range(4) for j in range(4)]
    return ids, parent.GetID() if parent else None, matrix


def test_setup_enter_exit_print_nothing_and_raise_nothing(module_widget, slot_errors, capfd, recwarn, phantom):
    capfd.readouterr()
    m = module_widget("CrossModalReg")
    m.enter()
    m.exit()
    m.enter()
    out = capfd.readouterr()
    assert not _unexpected(out.err), out.err
    assert not [str(w.message) for w in recwarn], "Python warnings are printed to stderr in Slicer"
    assert not slot_errors


def test_every_parameter_round_trips_through_its_widget(module_widget, slicer_gui, phantom):
    """Each SlicerParameterName is bound by Slicer's own connector: parameter -> widget and widget -> parameter."""
    scene = slicer_gui.scene
    fixed_node, moving_node, _, _ = phantom
    m = module_widget("CrossModalReg")
    m.enter()
    p, ui = m.widget._parameterNode, m.ui
    guis = p._parameterGUIs[m.widget._parameterNodeGuiTag]
    assert set(guis) == {
        "fixedVolume", "movingVolume", "preset", "presetFile", "fixedMask", "movingMask", "fixedLandmarks",
        "movingLandmarks", "outputTransform", "createResampledVolume", "initialTransform", "rotationSearch",
        "livePreview", "seed", "overlayOpacity", "checkerboardSquares"}
    assert (p.fixedVolume, p.movingVolume) == (fixed_node, moving_node)  # filled from the scene on entering
    p.movingVolume, p.fixedVolume = fixed_node, moving_node
    assert ui.fixedVolumeSelector.currentNode() is moving_node
    ui.movingVolumeSelector.setCurrentNode(moving_node)
    assert p.movingVolume is moving_node
    ui.presetComboBox.currentIndex = ui.presetComboBox.findText("mr-ct-rigid")
    assert p.preset == "mr-ct-rigid"
    p.preset = "mr-pet-rigid"
    assert ui.presetComboBox.currentText == "mr-pet-rigid"
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "mask")
    ui.fixedMaskSelector.setCurrentNode(label)
    assert p.fixedMask is label
    lm = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "F")
    p.fixedLandmarks = lm
    assert ui.fixedLandmarksSelector.currentNode() is lm
    ui.seedSpinBox.value = 7
    assert p.seed == 7
    ui.opacitySliderWidget.value = 0.8
    assert p.overlayOpacity == pytest.approx(0.8)
    ui.checkerboardSquaresSpinBox.value = 12
    assert p.checkerboardSquares == 12
    for box, name in ((ui.createResampledCheckBox, "createResampledVolume"), (ui.rotationSearchCheckBox,
                      "rotationSearch"), (ui.livePreviewCheckBox, "livePreview")):
        box.checked = not getattr(p, name)
        assert getattr(p, name) == box.checked
    ui.presetFileLineEdit.text = "/tmp/x.json"
    assert p.presetFile == "/tmp/x.json"


def test_apply_enabled_only_for_valid_inputs_and_outputs_never_point_at_inputs(module_widget, slicer_gui, phantom):
    scene = slicer_gui.scene
    fixed_node, moving_node, _, _ = phantom
    m = module_widget("CrossModalReg")
    m.enter()
    p, apply = m.widget._parameterNode, m.ui.applyButton
    assert apply.enabled
    p.movingVolume = fixed_node
    assert not apply.enabled and "different" in apply.toolTip
    p.movingVolume = moving_node
    assert apply.enabled
    initial = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "initial")
    p.initialTransform = initial
    p.outputTransform = initial
    assert not apply.enabled and "initial transform" in apply.toolTip
    p.outputTransform = None
    assert apply.enabled
    other = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "other")
    fixed_node.SetAndObserveTransformNodeID(other.GetID())
    p.outputTransform = other
    assert not apply.enabled and "fixed volume is under" in apply.toolTip
    fixed_node.SetAndObserveTransformNodeID(None)
    p.outputTransform = None
    p.presetFile = "/nonexistent/preset.json"
    assert not apply.enabled and "preset file" in apply.toolTip.lower()
    assert "not usable" in m.ui.presetDescriptionLabel.text
    p.presetFile = ""
    assert apply.enabled


def test_preset_when_to_use_is_shown_and_a_user_preset_file_is_used(module_widget, phantom, tmp_path):
    import json

    from CrossModalRegLib import presets

    m = module_widget("CrossModalReg")
    m.enter()
    p = m.widget._parameterNode
    p.preset = "mr-ct-rigid"
    assert presets.load_preset("mr-ct-rigid")["when_to_use"] in m.ui.presetDescriptionLabel.text
    mine = presets.load_preset("multimodal-rigid")
    mine.update(name="my-rigid", title="My rigid", when_to_use="For my scanner pair.")
    path = tmp_path / "my-rigid.json"
    path.write_text(json.dumps(mine))
    m.ui.presetFileLineEdit.text = str(path)
    assert m.ui.presetDescriptionLabel.text == "My rigid. For my scanner pair."
    assert m.logic.presetSource(p) == str(path)


def test_apply_runs_with_live_preview_locks_inputs_and_creates_the_outputs(module_widget, slicer_gui, slot_errors,
                                                                          phantom, capfd):
    from CrossModalRegLib import geometry, mrml

    scene = slicer_gui.scene
    fixed_node, moving_node, truth, targets = phantom
    m = module_widget("CrossModalReg")
    m.enter()
    p, ui = m.widget._parameterNode, m.ui
    p.preset, p.rotationSearch, p.createResampledVolume = "mr-ct-rigid", False, True
    before = scene.GetNumberOfNodes()
    capfd.readouterr()
    ui.applyButton.click()
    assert ui.applyButton.text == "Cancel" and ui.applyButton.enabled
    assert not ui.inputsCollapsibleButton.enabled and not ui.outputsCollapsibleButton.enabled
    assert not ui.advancedCollapsibleButton.enabled
    output = p.outputTransform
    assert moving_node.GetParentTransformNode() is output  # live preview: the moving volume follows
    seen = []
    worst_gap = _wait(lambda: (seen.append(ui.progressBar.value), m.widget._job is None)[1])
    print(f"longest GUI pause during the run: {worst_gap:.2f} s (shared machine)", file=sys.stdout)
    assert worst_gap < 2.0, "the GUI froze during the run"
    assert not slot_errors
    assert ui.applyButton.text == "Apply" and ui.inputsCollapsibleButton.enabled
    assert max(seen) > 0 and "Done in" in ui.statusLabel.text
    outputs = m.widget.lastOutputs
    assert outputs.preview_updates >= 1
    assert outputs.transform_node is output is p.outputTransform
    assert moving_node.GetParentTransformNode() is output
    assert outputs.resampled_node is not None and outputs.trace_chart_node is not None
    assert scene.GetNumberOfNodes() > before
    # The result through Slicer's own transform: fixed RAS -> moving RAS against the truth (LPS).
    mapped = mrml.transform_ras_points_from_parent(output, geometry.lps_to_ras_points(targets))
    expected = geometry.lps_to_ras_points(geometry.transform_points(truth, targets))
    tre = np.linalg.norm(mapped - expected, axis=1)
    assert float(tre.mean()) < 1.5, tre.mean()  # 4 mm voxels
    # The metric plot is shown in the layout's plot view.
    plot_view = scene.GetFirstNodeByClass("vtkMRMLPlotViewNode")
    assert plot_view is not None and plot_view.GetPlotChartNodeID() == outputs.trace_chart_node.GetID()
    assert not _unexpected(capfd.readouterr().err)


class PhaseGate:
    """Cancel flag (threading.Event-like) that holds the worker at its first cancellation check made by code of
    ``source_file``, until the test has clicked Cancel: a click exactly in that phase."""

    def __init__(self, source_file):
        self.source_file = source_file
        self._event = threading.Event()
        self.reached = threading.Event()

    def set(self):
        self._event.set()

    def is_set(self):
        if not self.reached.is_set() and threading.current_thread() is not threading.main_thread():
            frame = sys._getframe(1)  # the code that checks for cancellation, not what called it ...
            while frame.f_code.co_filename.endswith("progress.py"):  # ... through the progress protocol's tracker
                frame = frame.f_back
            caller = frame.f_code
            if caller.co_filename.endswith(self.source_file):
                self.where = f"{caller.co_name} in {self.source_file}"
                self.reached.set()
                self._event.wait(60)
        return self._event.is_set()


@pytest.mark.parametrize("phase_file, preset", [
    ("preprocessing.py", "user file with N4"),  # N4 bias correction (no shipped preset enables it)
    ("initialization.py", "mr-ct-rigid"),  # rotation search
    ("engine.py", "mr-ct-rigid"),  # optimiser iterations
    ("scene_registration.py", "mr-ct-rigid"),  # after the engine: sanity checks done, resampling next
])
def test_cancel_in_every_phase_leaves_the_scene_as_it_was(module_widget, slicer_gui, slot_errors, phantom,
                                                          monkeypatch, tmp_path, phase_file, preset):
    import json

    from CrossModalRegLib import presets

    scene = slicer_gui.scene
    fixed_node, moving_node, _, _ = phantom
    user_output = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "my output")
    m = module_widget("CrossModalReg")
    m.enter()
    p, ui = m.widget._parameterNode, m.ui
    if preset == "user file with N4":
        data = presets.load_preset("mr-ct-rigid")
        data["preprocessing"]["moving"]["n4_bias_correction"] = {"shrink": 2, "iterations": [10]}
        (tmp_path / "n4.json").write_text(json.dumps(data))
        p.presetFile = str(tmp_path / "n4.json")
    else:
        p.preset = preset
    p.rotationSearch, p.createResampledVolume = phase_file == "initialization.py", True
    p.outputTransform = user_output
    state = _scene_state(scene, moving_node, user_output)
    gate = PhaseGate(phase_file)
    monkeypatch.setattr(m.module.RegistrationJob, "eventFactory", lambda: gate)
    ui.applyButton.click()
    _wait(lambda: gate.reached.is_set() or m.widget._job is None)
    assert gate.reached.is_set(), f"the run ended before reaching {phase_file}: {ui.statusLabel.text}"
    assert ui.applyButton.text == "Cancel" and not ui.inputsCollapsibleButton.enabled
    ui.applyButton.click()  # Cancel
    _wait(lambda: m.widget._job is None)
    assert ui.statusLabel.text == "Cancelled: nothing was changed.", gate.where
    assert _scene_state(scene, moving_node, user_output) == state
    assert p.outputTransform is user_output
    assert ui.applyButton.text == "Apply" and ui.applyButton.enabled and ui.inputsCollapsibleButton.enabled
    assert not slot_errors


def test_cancel_with_a_new_output_removes_it(module_widget, slicer_gui, phantom, monkeypatch):
    scene = slicer_gui.scene
    _, moving_node, _, _ = phantom
    m = module_widget("CrossModalReg")
    m.enter()
    p = m.widget._parameterNode
    p.preset, p.rotationSearch = "mr-ct-rigid", False
    state = _scene_state(scene, moving_node)
    gate = PhaseGate("engine.py")
    monkeypatch.setattr(m.module.RegistrationJob, "eventFactory", lambda: gate)
    m.ui.applyButton.click()
    assert p.outputTransform is not None  # created for the run ...
    _wait(gate.reached.is_set)
    m.ui.applyButton.click()
    _wait(lambda: m.widget._job is None)
    assert _scene_state(scene, moving_node) == state  # ... and removed with everything else
    assert p.outputTransform is None


def test_closing_the_scene_during_a_run_stops_it(module_widget, slicer_gui, phantom, monkeypatch):
    m = module_widget("CrossModalReg")
    m.enter()
    p = m.widget._parameterNode
    p.preset, p.rotationSearch = "mr-ct-rigid", False
    gate = PhaseGate("engine.py")
    monkeypatch.setattr(m.module.RegistrationJob, "eventFactory", lambda: gate)
    m.ui.applyButton.click()
    _wait(gate.reached.is_set)
    threading.Timer(0.2, gate.set).start()  # the close cancels; the gate lets the worker see it
    slicer_gui.scene.Clear(False)
    assert m.widget._job is None and m.ui.applyButton.text == "Apply"


def test_fade_flicker_and_checkerboard_do_not_replace_each_other(module_widget, slicer_gui, phantom):
    scene = slicer_gui.scene
    fixed_node, moving_node, _, _ = phantom
    m = module_widget("CrossModalReg")
    m.enter()
    ui = m.ui
    comps = [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode") for i in range(3)]
    ui.showOverlayButton.click()
    assert all(c.GetBackgroundVolumeID() == fixed_node.GetID() for c in comps)
    assert all(c.GetForegroundVolumeID() == moving_node.GetID() for c in comps)
    ui.opacitySliderWidget.value = 0.3
    assert all(c.GetForegroundOpacity() == pytest.approx(0.3) for c in comps)
    ui.checkerboardButton.click()
    board = m.widget._parameterNode.checkerboardVolume
    assert board is not None and all(c.GetBackgroundVolumeID() == board.GetID() for c in comps)
    ui.opacitySliderWidget.value = 0.7  # the fade must not replace the checkerboard
    assert all(c.GetBackgroundVolumeID() == board.GetID() for c in comps)
    n = scene.GetNumberOfNodes()
    ui.checkerboardButton.click()  # reuses its volume
    assert scene.GetNumberOfNodes() == n and m.widget._parameterNode.checkerboardVolume is board
    ui.registrationLayoutButton.click()
    by_view = {c.GetLayoutName(): c for c in comps}
    assert by_view["Red"].GetBackgroundVolumeID() == fixed_node.GetID() and not by_view["Red"].GetForegroundVolumeID()
    assert by_view["Yellow"].GetBackgroundVolumeID() == moving_node.GetID()
    assert by_view["Green"].GetForegroundVolumeID() == moving_node.GetID()
    assert scene.GetFirstNodeByClass("vtkMRMLLayoutNode").GetViewArrangement() == m.module.REGISTRATION_LAYOUT_ID
    m.widget.FLICKER_INTERVAL_MS = 20
    m.widget._flickerTimer.setInterval(20)
    seen = set()
    ui.flickerButton.checked = True
    _wait(lambda: (seen.add(round(by_view["Green"].GetForegroundOpacity(), 3)), {0.0, 1.0} <= seen)[1], timeout=10)
    ui.flickerButton.checked = False
    assert by_view["Green"].GetForegroundOpacity() == pytest.approx(0.7)


def test_module_import_does_not_import_simpleitk():
    """Slicer imports every module file at start-up: the engine (SimpleITK) must wait for the first run."""
    import pathlib
    import subprocess

    root = pathlib.Path(__file__).resolve().parents[1]
    code = (
        "import sys; sys.path[:0] = ['Testing', 'CrossModalReg']\n"
        "from slicer_gui.environment import Environment\n"
        "env = Environment().install()\n"
        "module, parent, instance = env.load_module('CrossModalReg')\n"
        "module.CrossModalRegLogic().getParameterNode()\n"
        "print('SimpleITK' in sys.modules, parent.title)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "False", "CrossModalReg.py imports SimpleITK at start-up"


def test_metadata_for_the_extensions_index(module_widget):
    import pathlib

    from CrossModalRegLib import engine

    m = module_widget("CrossModalReg", setup=False)
    parent = m.instance.parent
    assert parent.title == "Cross-Modality Registration"
    assert all(re.fullmatch(r"[^()]+ \([^()]+\)", c) for c in parent.contributors), parent.contributors
    assert m.module.HOMEPAGE in parent.helpText
    assert m.module.DEFAULT_SEED == engine.DEFAULT_SEED
    top = (pathlib.Path(__file__).resolve().parents[1] / "CMakeLists.txt").read_text()
    shots = re.search(r'set\(EXTENSION_SCREENSHOTURLS "([^"]*)"\)', top).group(1).split()
    assert shots, "EXTENSION_SCREENSHOTURLS is empty"
    root = pathlib.Path(__file__).resolve().parents[1]
    homepage = re.search(r'set\(EXTENSION_HOMEPAGE "https://github.com/([^"]+)"\)', top).group(1)
    for url in shots:
        prefix = f"https://raw.githubusercontent.com/{homepage}/main/"
        assert url.startswith(prefix), url
        assert (root / url[len(prefix):]).is_file(), url
    contributors = re.search(r'set\(EXTENSION_CONTRIBUTORS "([^"]*)"\)', top).group(1)
    assert all(re.fullmatch(r"[^()]+ \([^()]+\)", c.strip()) for c in contributors.split(",")), contributors


def test_every_panel_renders_with_nothing_clipped(slicer_gui, tmp_path):
    """The panels fit Slicer's module panel width and no control is cut off (what docs/screenshots shows)."""
    from slicer_gui import screenshots

    for name, (path, problems) in screenshots.render_all(tmp_path, env=slicer_gui).items():
        assert path.stat().st_size > 10_000, name
        assert not problems, f"{name}: {problems}"
        assert (screenshots.ROOT / "docs" / "screenshots" / f"{name}.png").is_file(), "run screenshots.py"
