"""The modules' in-Slicer self-tests (``<Name>Test``, ScriptedLoadableModuleTest) run on the GUI harness.

In Slicer they run from *Reload and Test* or ctest; here the same classes run unchanged on Slicer 5.10's framework
with the harness's scene, so a broken self-test is seen before anyone opens Slicer.
"""

from __future__ import annotations

import pytest

pytest.importorskip("PyQt5", reason="the GUI harness needs PyQt5 (the project's test extra)")


def test_crossmodalreg_selftest_passes_on_the_harness(slicer_gui, module_widget):
    m = module_widget("CrossModalReg", setup=False)
    test = m.module.CrossModalRegTest()
    test.messageDelay = 0
    test.runTest()  # unittest assertions raise on failure


@pytest.mark.parametrize("name", ["CrossModalRegLandmarks", "CrossModalRegValidation"])
def test_landmarks_and_validation_selftests_pass_on_the_harness(slicer_gui, module_widget, name):
    m = module_widget(name, setup=False)
    test = getattr(m.module, f"{name}Test")()
    test.messageDelay = 0
    test.runTest()
