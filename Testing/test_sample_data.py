"""The built-in phantom as Slicer sample data: registered with SampleData's API without importing SimpleITK,
harmless when SampleData is absent, and its custom downloader renders the MR/CT pair (with the ground truth) into a
real MRML scene, which the modality guess recognises."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
import types

import numpy as np

from CrossModalRegLib import sample_data
from CrossModalRegLib.modality import guess_modality, guess_roles_and_preset
from CrossModalRegLib.mrml import points_from_markups_node, transform_ras_points_from_parent

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _sample_data_api(calls):
    """SampleData's registration entry point with Slicer 5.10's signature (the SampleData module itself needs the
    Slicer application, which is not here); records what it is given."""
    def registerCustomSampleDataSource(category="Custom", sampleName=None, uris=None, fileNames=None,  # noqa: N802
                                       nodeNames=None, customDownloader=None, thumbnailFileName=None,
                                       loadFileTypes=None, loadFiles=None, loadFileProperties={},  # noqa: B006
                                       checksums=None, loadFileType=None):
        calls.append(dict(category=category, sampleName=sampleName, uris=uris, fileNames=fileNames,
                          nodeNames=nodeNames, customDownloader=customDownloader,
                          thumbnailFileName=thumbnailFileName, loadFileTypes=loadFileTypes))
    return types.SimpleNamespace(SampleDataLogic=types.SimpleNamespace(
        registerCustomSampleDataSource=registerCustomSampleDataSource))


def test_registration_gives_sampledata_a_custom_downloader_and_a_thumbnail():
    calls = []
    assert sample_data.register_phantom_sample_data(_sample_data_api(calls))
    (call,) = calls
    assert call["category"] == "CrossModalReg" and call["sampleName"] == sample_data.SAMPLE_NAME
    assert call["customDownloader"] is sample_data.load_phantom_sample
    assert len(call["uris"]) == len(call["fileNames"]) == len(call["nodeNames"]) == len(call["loadFileTypes"]) == 2
    assert os.path.isfile(call["thumbnailFileName"])


def test_registration_at_startup_imports_no_simpleitk_and_survives_without_sampledata():
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / "CrossModalReg")!r})
        from CrossModalRegLib import sample_data
        assert sample_data.register_phantom_sample_data() is False  # no SampleData module here
        import types
        calls = []
        api = types.SimpleNamespace(SampleDataLogic=types.SimpleNamespace(
            registerCustomSampleDataSource=lambda **kw: calls.append(kw)))
        assert sample_data.register_phantom_sample_data(api) and len(calls) == 1
        heavy = [m for m in ("SimpleITK", "numpy", "slicer", "vtk") if m in sys.modules]
        print("imported:", heavy)
        assert not heavy, heavy
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "imported: []" in out.stdout


def test_the_custom_downloader_renders_the_pair_with_its_ground_truth(scene):
    nodes = sample_data.load_phantom_sample(None, scene=scene)
    fixed, moving, truth, fixed_lm, moving_lm = nodes
    assert [n.GetName() for n in (fixed, moving)] == list(sample_data.NODE_NAMES)
    assert fixed.GetParentTransformNode() is None and moving.GetParentTransformNode() is None
    labels_f, pts_f = points_from_markups_node(fixed_lm)
    labels_m, pts_m = points_from_markups_node(moving_lm)
    assert labels_f == labels_m and len(labels_f) >= 6
    # the truth node's transform from parent maps the fixed landmarks onto the moving ones (RAS)
    mapped = transform_ras_points_from_parent(truth, pts_f * [-1, -1, 1]) * [-1, -1, 1]
    np.testing.assert_allclose(mapped, pts_m, atol=1e-6)
    assert np.max(np.linalg.norm(pts_m - pts_f, axis=1)) > 5.0  # a real misalignment to recover
    assert (guess_modality(fixed).modality, guess_modality(moving).modality) == ("MR", "CT")
    f, m, preset, reasons, warnings = guess_roles_and_preset(scene, [moving, fixed])
    assert (f, m, preset) == (fixed, moving, "mr-ct-rigid") and not warnings
