"""Validation in real slicer-core MRML: tables, plot nodes, the Jacobian volume, repeatability, no overwrite."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from _cases import translated_validation_nodes

from CrossModalRegLib.errors import CrossModalRegError
from CrossModalRegLib.mrml import set_transform_fixed_to_moving, volume_node_from_image
from CrossModalRegLib.validation import LANDMARK_COLUMNS, SEGMENT_COLUMNS, SUMMARY_COLUMNS, load_profile
from CrossModalRegLib.validation.scene import validate_nodes

SHIFT = (3.0, -2.0, 1.0)  # fixed -> moving, LPS mm: a whole number of 1 mm voxels


def _table(node):
    t = node.GetTable()
    cols = [t.GetColumnName(c) for c in range(t.GetNumberOfColumns())]
    rows = [[t.GetValue(r, c).ToString() for c in range(t.GetNumberOfColumns())] for r in range(t.GetNumberOfRows())]
    return cols, rows


@pytest.fixture
def case(scene):
    arr = np.zeros((40, 44, 48), dtype=np.uint8)
    arr[8:20, 10:30, 6:26] = 1
    arr[22:34, 14:36, 20:40] = 2
    pts = [[0.0, -10.0, 20.0], [5.0, 3.0, 30.0], [-8.0, 0.0, 25.0], [2.0, -4.0, 40.0]]
    nodes = translated_validation_nodes(scene, arr, SHIFT, pts, ["AC", "PC", "L1", "L2"], moving_offset=(0.0, 0.0, 0.5),
                                        origin=(-20.0, -30.0, 10.0))
    nodes.pop("transform")
    return nodes


def test_tables_and_plot_have_the_right_columns_units_and_rows(scene, case):
    report, nodes = validate_nodes(scene, case.pop("transform_node"), **case, driving_labels=["AC"],
                                   profile=load_profile("neuro"))
    cols, rows = _table(nodes.landmark_table)
    assert cols == [c.key for c in LANDMARK_COLUMNS] and len(rows) == 4
    assert nodes.landmark_table.GetColumnUnitLabel("tre_after_mm") == "mm"
    assert "T(p_fixed)" in nodes.landmark_table.GetColumnDescription("tre_after_mm")
    tre = slicer.util.arrayFromTableColumn(nodes.landmark_table, "tre_after_mm")
    np.testing.assert_allclose(tre, 0.5, atol=1e-9)  # the planted 0.5 mm offset along S
    cols, rows = _table(nodes.segment_table)
    assert cols == [c.key for c in SEGMENT_COLUMNS] and len(rows) == 2
    assert nodes.segment_table.GetColumnUnitLabel("fixed_volume_mm3") == "mm3"
    np.testing.assert_allclose(slicer.util.arrayFromTableColumn(nodes.segment_table, "dice_after"), 1.0)
    cols, rows = _table(nodes.summary_table)
    assert cols == [c.key for c in SUMMARY_COLUMNS]
    summary = {r[0]: r for r in rows}
    assert summary["verdict"][cols.index("result")] == "pass"
    assert summary["fre_n"][cols.index("value")] == "1"
    chart = nodes.plot_chart
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    for i, column in enumerate(("tre_before_mm", "tre_after_mm")):
        series = chart.GetNthPlotSeriesNode(i)
        assert series.GetTableNode() is nodes.landmark_table
        assert (series.GetXColumnName(), series.GetYColumnName()) == ("index", column)
    assert chart.GetYAxisTitle() == "Error (mm)"
    assert report.values["nmi_after"] > report.values["nmi_before"]


def test_a_run_twice_gives_identical_tables_and_updates_the_same_nodes(scene, case):
    tn = case.pop("transform_node")
    _, first = validate_nodes(scene, tn, **case)
    snapshot = {k: _table(getattr(first, k)) for k in ("landmark_table", "segment_table", "summary_table")}
    n_nodes = scene.GetNumberOfNodes()
    outputs = dict(landmark_table=first.landmark_table, segment_table=first.segment_table,
                   summary_table=first.summary_table, plot_chart=first.plot_chart, plot_series=first.plot_series)
    _, second = validate_nodes(scene, tn, **case, outputs=outputs)
    assert second.summary_table is first.summary_table
    assert scene.GetNumberOfNodes() == n_nodes
    for k, v in snapshot.items():
        assert _table(getattr(second, k)) == v


def test_existing_nodes_the_user_did_not_hand_in_are_never_overwritten(scene, case):
    mine = scene.AddNewNodeByClass("vtkMRMLTableNode", "Validation summary")
    mine.AddColumn().SetName("precious")
    _, nodes = validate_nodes(scene, case.pop("transform_node"), **case)
    assert nodes.summary_table is not mine
    assert mine.GetNumberOfColumns() == 1 and mine.GetTable().GetColumnName(0) == "precious"


def test_segmentations_are_matched_by_name_and_an_unmatched_segment_is_missing(scene, case):
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    segs = []
    for role, names in (("fixed", ["caudate", "putamen"]), ("moving", ["caudate", "thalamus"])):
        seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{role} seg")
        assert logic.ImportLabelmapToSegmentationNode(case[f"{role}_segmentation"], seg)
        s = seg.GetSegmentation()
        for i, name in enumerate(names):
            s.GetSegment(s.GetNthSegmentID(i)).SetName(name)
        segs.append(seg)
    _, nodes = validate_nodes(scene, case["transform_node"], fixed_segmentation=segs[0], moving_segmentation=segs[1])
    cols, rows = _table(nodes.segment_table)
    by_name = {r[cols.index("name")]: r for r in rows}
    assert set(by_name) == {"caudate", "putamen", "thalamus"}
    assert float(by_name["caudate"][cols.index("dice_after")]) == pytest.approx(1.0)
    assert by_name["putamen"][cols.index("dice_after")] in ("nan", "")  # missing, not 0
    assert "absent" in by_name["putamen"][cols.index("note")]


def test_bad_input_adds_nothing_to_the_scene(scene, case):
    mm = case["moving_landmarks"]
    mm.SetNthControlPointLabel(0, "renamed")
    n_nodes = scene.GetNumberOfNodes()
    with pytest.raises(CrossModalRegError, match="labels do not match"):
        validate_nodes(scene, case["transform_node"], fixed_landmarks=case["fixed_landmarks"], moving_landmarks=mm)
    assert scene.GetNumberOfNodes() == n_nodes


def test_a_non_linear_transform_node_gives_a_jacobian_volume(scene, case):
    n = 24
    field = np.zeros((n, n, n, 3))
    field[..., 0] = np.linspace(0, 2.0, n)[None, None, :]  # u_x = x/12: J = 1 + 2/23 everywhere
    img = sitk.GetImageFromArray(field, isVector=True)
    tn = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "deformable")
    set_transform_fixed_to_moving(tn, sitk.DisplacementFieldTransform(img))
    grid = volume_node_from_image(scene, sitk.Image(n, n, n, sitk.sitkFloat32) + 1.0, "grid")
    report, nodes = validate_nodes(scene, tn, fixed_volume=grid, moving_volume=grid)
    assert nodes.jacobian_volume is not None
    jac = slicer.util.arrayFromVolume(nodes.jacobian_volume)
    assert jac.shape == (n, n, n)
    assert float(np.median(jac)) == pytest.approx(1 + 2.0 / (n - 1), abs=1e-3)  # Slicer's grid is cubic inside
