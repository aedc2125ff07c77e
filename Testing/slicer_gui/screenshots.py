"""Render each module's panel offscreen with the GUI harness and save it under docs/screenshots/.

Run from the repository root:  .venv/bin/python Testing/slicer_gui/screenshots.py
The panels are the real Widgets (setup() and enter() as in Slicer) on a scene holding the built-in phantom pair,
drawn with Qt's Fusion style (Slicer's own style sheet and icons are not reproduced).
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODULES = ("CrossModalReg", "CrossModalRegLandmarks", "CrossModalRegValidation")
WIDTH = 520  # a typical width of Slicer's module panel on a full-HD screen


def clipped_controls(panel_qwidget):
    """Visible controls that are cut off: outside the panel, or narrower/shorter than their minimum size hint."""
    from PyQt5 import QtCore, QtWidgets

    problems = []
    if panel_qwidget.minimumSizeHint().width() > WIDTH:
        problems.append(f"the panel needs {panel_qwidget.minimumSizeHint().width()} px, more than {WIDTH} px "
                        "(Slicer's module panel would scroll sideways)")
    panel_rect = panel_qwidget.rect()
    for w in panel_qwidget.findChildren(QtWidgets.QWidget):
        if not w.isVisibleTo(panel_qwidget) or w.isWindow() or not w.objectName() or w.objectName().startswith("qt_"):
            continue
        top_left = w.mapTo(panel_qwidget, QtCore.QPoint(0, 0))
        rect = QtCore.QRect(top_left, w.size())
        hint = w.minimumSizeHint()
        if not panel_rect.contains(rect):
            problems.append(f"{w.objectName()} outside the panel ({rect} not in {panel_rect})")
        elif isinstance(w, (QtWidgets.QLabel, QtWidgets.QAbstractButton, QtWidgets.QComboBox)) and (
                w.width() < hint.width() or w.height() < hint.height()):
            if isinstance(w, QtWidgets.QLabel) and w.wordWrap():
                continue  # a wrapped label's minimum hint is its unwrapped width
            problems.append(f"{w.objectName()} squeezed: {w.width()}x{w.height()} < {hint.width()}x{hint.height()}")
    return problems


def render_all(out_dir: pathlib.Path, env=None):
    """Render the three panels into ``out_dir``; returns {module: (png path, clipped controls)}."""
    sys.path[:0] = [str(ROOT / "Testing"), str(ROOT / "CrossModalReg")]
    import numpy as np
    import slicer

    from CrossModalRegLib import mrml, simulation
    from slicer_gui.environment import Environment
    from slicer_gui.fixtures import ModuleUnderTest

    own = env is None
    env = env or Environment().install()
    results = {}
    try:
        import qt

        for name in MODULES:
            env.new_scene()
            rng = np.random.RandomState(3)
            model = simulation.head_phantom(spacing_mm=6.0)
            mrml.volume_node_from_image(env.scene, simulation.render(model, "t1", rng=rng), "phantom MR")
            mrml.volume_node_from_image(env.scene, simulation.render(model, "ct", rng=rng), "phantom CT")
            module, _parent, instance = env.load_module(name)
            panel = slicer.qSlicerScriptedLoadableModuleWidget(name)
            panel.setLayout(qt.QVBoxLayout())
            panel.setMRMLScene(env.scene)
            widget = getattr(module, f"{name}Widget")(panel)
            panel._qobj._python = widget
            widget.setup()
            panel.enter()
            mut = ModuleUnderTest(name, module, instance, panel, widget)
            path = out_dir / f"{name}.png"
            mut.grab(path, width=WIDTH)
            results[name] = (path, clipped_controls(panel._qobj))
            panel.exit()
            widget.cleanup()
            panel._qobj.close()
            panel._qobj.deleteLater()
            qt.QApplication.processEvents()
    finally:
        env.close_scene()
        if own:
            env.uninstall()
    return results


if __name__ == "__main__":
    out = ROOT / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    for path, problems in render_all(out).values():
        print(path.relative_to(ROOT), "clipped:" if problems else "ok", *problems)
