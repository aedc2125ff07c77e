"""Validation outputs on real slicer-core MRML: an output selector pointing at an input is refused with nothing
changed; repeated runs update the same tables, chart and series; a cancel at any stage leaves the scene as it was."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from _cases import translated_validation_nodes

from CrossModalRegLib.errors import CrossModalRegError, RegistrationCancelled
from CrossModalRegLib.mrml import (
    image_from_volume_node,
)
from CrossModalRegLib.validation.scene import validate_nodes

SHIFT = (3.0, -2.0, 1.0)  # fixed -> moving, LPS mm


@pytest.fixture
def case(scene):
    arr = np.zeros((30, 32, 34), dtype=np.uint8)
    arr[8:20, 10:24, 6:26] = 1
    nodes = translated_validation_nodes(scene, arr, SHIFT, [[10.0, 12.0, 14.0], [20.0, 15.0, 12.0],
                                                            [15.0, 20.0, 18.0]], ["a", "b", "c"])
    nodes.pop("transform")
    return nodes


def _counts(scene):
    return {c: scene.GetNumberOfNodesByClass(c) for c in (
        "vtkMRMLTableNode", "vtkMRMLPlotChartNode", "vtkMRMLPlotSeriesNode", "vtkMRMLScalarVolumeNode")}


def _run(scene, case, **kw):
    args = dict(case)
    return validate_nodes(scene, args.pop("transform_node"), **args, jacobian="always", **kw)


def test_the_fixed_volume_as_jacobian_output_is_refused_and_kept(scene, case):
    before = sitk.GetArrayFromImage(image_from_volume_node(case["fixed_volume"], squeeze_2d=False))
    counts = _counts(scene)
    with pytest.raises(CrossModalRegError, match="Jacobian map output is set to 'fixed', which is the fixed volume"):
        _run(scene, case, outputs={"jacobian_volume": case["fixed_volume"]})
    assert scene.IsNodePresent(case["fixed_volume"]) and _counts(scene) == counts
    after = sitk.GetArrayFromImage(image_from_volume_node(case["fixed_volume"], squeeze_2d=False))
    assert np.array_equal(before, after)


def test_one_table_for_two_outputs_is_refused(scene, case):
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "my table")
    counts = _counts(scene)
    with pytest.raises(CrossModalRegError, match="both as the summary table and as the landmark table"):
        _run(scene, case, outputs={"summary_table": table, "landmark_table": table})
    assert _counts(scene) == counts and table.GetNumberOfColumns() == 0


def test_repeated_runs_update_the_same_nodes(scene, case):
    _, nodes = _run(scene, case)
    after_first = _counts(scene)
    outputs = {"summary_table": nodes.summary_table, "landmark_table": nodes.landmark_table,
               "segment_table": nodes.segment_table, "plot_chart": nodes.plot_chart,
               "jacobian_volume": nodes.jacobian_volume}
    for _ in range(2):
        report, again = _run(scene, case, outputs=outputs)
        assert _counts(scene) == after_first
        assert again.plot_chart.GetNumberOfPlotSeriesNodes() == 2
        assert [s.GetID() for s in again.plot_series] == [s.GetID() for s in nodes.plot_series]
    assert report.values["tre_mean_mm"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("stage", ["landmark errors", "overlap and surface distances", "writing the results"])
def test_a_cancel_at_any_stage_leaves_the_scene_unchanged(scene, case, stage):
    counts = _counts(scene)
    seen = []

    def progress(p):
        seen.append(p.message)
        if p.message == stage:
            raise RegistrationCancelled("cancelled")

    with pytest.raises(RegistrationCancelled):
        _run(scene, case, progress=progress)
    assert stage in seen and _counts(scene) == counts
