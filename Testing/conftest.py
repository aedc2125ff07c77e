"""Shared fixtures of the headless suite (runs against the real slicer-core MRML, never a stand-in)."""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Import the package from the source tree even when it is not pip-installed.
sys.path.insert(0, str(ROOT / "CrossModalReg"))

SHARED_DATA = pathlib.Path(os.environ.get("CROSSMODALREG_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The folder of real images with ground truth. Absent in a user's clone: skip; absent in CI: fail."""
    if not (SHARED_DATA / "README.md").is_file():
        if _in_ci():
            pytest.fail(f"CI=true but the shared test data is missing at {SHARED_DATA}")
        pytest.skip(f"real test data not found at {SHARED_DATA} (set CROSSMODALREG_SHARED_DATA to run these tests)")
    return SHARED_DATA


@pytest.fixture
def slicer_app():
    """One headless Slicer application (scene + logics) per test; it owns every logic for the test's duration."""
    from CrossModalRegLib.headless import HeadlessSlicer

    app = HeadlessSlicer()
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def scene(slicer_app):
    return slicer_app.scene


# GUI harness fixtures (Testing/slicer_gui): slicer_gui, module_widget, slot_errors.
@pytest.fixture
def itk_threads_seen(monkeypatch):
    """ITK's global thread count at the moment each ``ImageRegistrationMethod.Execute`` runs (a spy), in order."""
    import SimpleITK as sitk

    seen = []
    execute = sitk.ImageRegistrationMethod.Execute

    def spy(self, *args):
        seen.append(sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
        return execute(self, *args)

    monkeypatch.setattr(sitk.ImageRegistrationMethod, "Execute", spy)
    return seen


from slicer_gui.fixtures import _slicer_gui_installed, module_widget, slicer_gui, slot_errors  # noqa: E402,F401
