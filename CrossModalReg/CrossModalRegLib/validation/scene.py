"""The MRML part of validation: nodes in, Slicer tables, a TRE plot and a Jacobian volume out.

Every function takes the scene (or nodes) as an argument and works in Slicer and in the headless slicer-core.
Output nodes the caller hands in are updated; otherwise new nodes with unique names are created, so a node
the user did not hand in is never overwritten. Tables are written with :func:`tables.table_node_from_rows`
(titles, units and descriptions per column; a missing value is an empty cell with a note, never 0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from ..errors import CrossModalRegError
from ..mrml import (
    image_from_volume_node,
    landmark_set_from_markups_node,
    transform_fixed_to_moving_from_node,
    volume_node_from_image,
)
from ..progress import ProgressTracker
from ..tables import table_node_from_rows
from .report import LANDMARK_COLUMNS, SEGMENT_COLUMNS, SUMMARY_COLUMNS, ValidationReport, validate
from .transforms import FIXED_TO_MOVING

PROVENANCE_ATTRIBUTE = "CrossModalReg.validationProvenance"
ROLE_ATTRIBUTE = "CrossModalReg.validationRole"


@dataclass
class ValidationNodes:
    """The nodes a validation run wrote (None where the inputs gave nothing to show)."""

    landmark_table: object = None
    segment_table: object = None
    summary_table: object = None
    plot_chart: object = None
    plot_series: tuple = ()
    jacobian_volume: object = None


# ------------------------------------------------------------------------------------------------- inputs
def _segment_ids_and_names(node):
    seg = node.GetSegmentation()
    ids = [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
    return ids, [seg.GetSegment(i).GetName() for i in ids]


def _export_segments(node, ids, reference_volume_node):
    scene = node.GetScene()
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    scene.AddNode(labelmap)
    try:
        id_array = vtk.vtkStringArray()
        for i in ids:
            id_array.InsertNextValue(i)
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if reference_volume_node is not None:
            ok = logic.ExportSegmentsToLabelmapNode(node, id_array, labelmap, reference_volume_node)
        else:
            ok = logic.ExportSegmentsToLabelmapNode(node, id_array, labelmap, None,
                                                    slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        if not ok or labelmap.GetImageData() is None:
            raise CrossModalRegError(f"segmentation '{node.GetName()}' could not be exported to a label map")
        return image_from_volume_node(labelmap, squeeze_2d=False)
    finally:
        scene.RemoveNode(labelmap)


def _labelmap_names(node, image):
    names = {}
    display = node.GetDisplayNode() if hasattr(node, "GetDisplayNode") else None
    color = display.GetColorNode() if display is not None else None
    values = np.unique(sitk.GetArrayViewFromImage(image))
    for v in values.tolist():
        if v > 0:
            name = color.GetColorName(int(v)) if color is not None else ""
            names[int(v)] = name if name and name != "(none)" else str(int(v))
    return names


def label_maps_from_nodes(fixed_node, moving_node, *, fixed_reference_volume=None, moving_reference_volume=None):
    """(fixed label image, moving label image, names) from two label map volumes or two segmentations.

    Segmentations are matched by segment name: a name present on both sides gets the same label value; a name
    on one side only gets its own value (reported as having no counterpart). Label map volumes are matched by
    value, named from their colour table. Segmentations are exported on the reference volume's grid when given.
    """
    if fixed_node is None or moving_node is None:
        raise CrossModalRegError("overlap measures need both a fixed and a moving segmentation or label map")
    seg_f, seg_m = fixed_node.IsA("vtkMRMLSegmentationNode"), moving_node.IsA("vtkMRMLSegmentationNode")
    if seg_f != seg_m:
        raise CrossModalRegError("give two segmentations or two label map volumes, not one of each")
    if not seg_f:
        fixed = image_from_volume_node(fixed_node, squeeze_2d=False)
        moving = image_from_volume_node(moving_node, squeeze_2d=False)
        names = _labelmap_names(moving_node, moving)
        names.update(_labelmap_names(fixed_node, fixed))
        return fixed, moving, names
    ids_f, names_f = _segment_ids_and_names(fixed_node)
    ids_m, names_m = _segment_ids_and_names(moving_node)
    for node, names in ((fixed_node, names_f), (moving_node, names_m)):
        if not names:
            raise CrossModalRegError(f"segmentation '{node.GetName()}' has no segment")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise CrossModalRegError(f"segmentation '{node.GetName()}' has several segments named {dup}: "
                                     "segments are matched by name")
    order = [n for n in names_f if n in names_m] + [n for n in names_f if n not in names_m] \
        + [n for n in names_m if n not in names_f]
    value = {n: i + 1 for i, n in enumerate(order)}
    images = []
    for node, ids, names, ref in ((fixed_node, ids_f, names_f, fixed_reference_volume),
                                  (moving_node, ids_m, names_m, moving_reference_volume)):
        img = _export_segments(node, ids, ref)
        lut = np.zeros(len(ids) + 1, dtype=np.uint16)
        for i, n in enumerate(names):
            lut[i + 1] = value[n]
        remapped = sitk.GetImageFromArray(lut[sitk.GetArrayViewFromImage(img).astype(np.int64)])
        remapped.CopyInformation(img)
        images.append(remapped)
    return images[0], images[1], {v: n for n, v in value.items()}


# ------------------------------------------------------------------------------------------------ outputs
def _new_or_given(scene, given, cls, name):
    if given is not None:
        if not given.IsA(cls):
            raise CrossModalRegError(f"output node '{given.GetName()}' is not a {cls}")
        return given
    return scene.AddNewNodeByClass(cls, scene.GenerateUniqueName(name))


def _table(scene, given, name, columns, rows, role, provenance):
    node = _new_or_given(scene, given, "vtkMRMLTableNode", name)
    table_node_from_rows(scene, node.GetName(), columns, rows, node=node)
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    node.SetAttribute(PROVENANCE_ATTRIBUTE, provenance)
    return node


def write_report_to_scene(scene, report: ValidationReport, *, name: str = "Validation", landmark_table=None,
                          segment_table=None, summary_table=None, plot_chart=None, plot_series=(),
                          jacobian_volume=None) -> ValidationNodes:
    """Tables (per landmark, per segment, summary with pass/fail), a TRE plot and the Jacobian map in the scene.

    Parameters
    ----------
    scene : vtkMRMLScene
    report : ValidationReport
    name : str
        Prefix of the new nodes' names (made unique in the scene).
    landmark_table, segment_table, summary_table, plot_chart, jacobian_volume : MRML nodes, optional
        Nodes to update in place (the caller hands them in). Missing ones are created.
    plot_series : sequence of two vtkMRMLPlotSeriesNode, optional
        Series to reuse for "before" and "after".

    Returns
    -------
    ValidationNodes
    """
    provenance = json.dumps(report.provenance, sort_keys=True, default=str)
    out = ValidationNodes()
    out.summary_table = _table(scene, summary_table, f"{name} summary", SUMMARY_COLUMNS, report.summary_rows(),
                               "summary", provenance)
    if report.landmarks is not None:
        out.landmark_table = _table(scene, landmark_table, f"{name} landmarks", LANDMARK_COLUMNS,
                                    report.landmark_rows(), "landmarks", provenance)
        out.plot_chart, out.plot_series = _tre_plot(scene, out.landmark_table, name, plot_chart, plot_series)
    if report.labels is not None:
        out.segment_table = _table(scene, segment_table, f"{name} segments", SEGMENT_COLUMNS, report.segment_rows(),
                                   "segments", provenance)
    if report.jacobian_image is not None:
        if jacobian_volume is None:
            jacobian_volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                                      scene.GenerateUniqueName(f"{name} Jacobian determinant"))
        out.jacobian_volume = volume_node_from_image(scene, report.jacobian_image, jacobian_volume.GetName(),
                                                     node=jacobian_volume)
        out.jacobian_volume.SetAttribute(ROLE_ATTRIBUTE, "jacobian determinant of the fixed-to-moving transform")
        out.jacobian_volume.SetAttribute(PROVENANCE_ATTRIBUTE, provenance)
    return out


def _tre_plot(scene, table, name, chart, series):
    if chart is not None and not series:
        # Re-running into the same chart: update its "before"/"after" series instead of adding new ones.
        series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
        series = [s for s in series if s is not None and s.GetAttribute(ROLE_ATTRIBUTE) in ("tre before",
                                                                                             "tre after")]
        series.sort(key=lambda s: s.GetAttribute(ROLE_ATTRIBUTE) != "tre before")
    chart = _new_or_given(scene, chart, "vtkMRMLPlotChartNode", f"{name} TRE plot")
    series = list(series or ())
    made = []
    specs = (("tre_before_mm", "before", (0.6, 0.6, 0.6), slicer.vtkMRMLPlotSeriesNode.MarkerStyleSquare),
             ("tre_after_mm", "after", (0.85, 0.2, 0.1), slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle))
    for i, (column, when, color, marker) in enumerate(specs):
        s = _new_or_given(scene, series[i] if i < len(series) else None, "vtkMRMLPlotSeriesNode",
                          f"{name} TRE {when}")
        s.SetAndObserveTableNodeID(table.GetID())
        s.SetXColumnName("index")
        s.SetYColumnName(column)
        s.SetLabelColumnName("label")
        s.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        s.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleNone)
        s.SetMarkerStyle(marker)
        s.SetMarkerSize(10)
        s.SetColor(*color)
        s.SetAttribute(ROLE_ATTRIBUTE, f"tre {when}")
        made.append(s)
    chart.RemoveAllPlotSeriesNodeIDs()
    for s in made:
        chart.AddAndObservePlotSeriesNodeID(s.GetID())
    chart.SetTitle("Landmark error before and after registration")
    chart.SetXAxisTitle("Landmark #")
    chart.SetYAxisTitle("Error (mm)")
    chart.SetLegendVisibility(True)
    return chart, tuple(made)


# ------------------------------------------------------------------------------------------------ one call
def validate_nodes(scene, transform_node, *, direction: str = FIXED_TO_MOVING, fixed_volume=None, moving_volume=None,
                   fixed_landmarks=None, moving_landmarks=None, driving_labels=None, fle_mm=None,
                   unpaired_landmarks: str = "error", fixed_segmentation=None, moving_segmentation=None,
                   jacobian_mask=None, jacobian: str = "auto", profile=None, name: str = "Validation",
                   outputs: dict | None = None, progress=None) -> tuple[ValidationReport, ValidationNodes]:
    """Validate ``transform_node`` with whatever inputs are given, and write the results to the scene.

    ``transform_node``'s *transform from parent* is the registration transform; with ``direction`` =
    "fixed-to-moving" it maps FIXED RAS points to MOVING RAS points (Slicer's convention when the moving volume is
    placed under it). Landmarks are markups nodes, segmentations are segmentation or label map nodes,
    ``jacobian_mask`` a label map or segmentation on the fixed side. ``outputs`` may hand in nodes to update
    (keys as :func:`write_report_to_scene`'s keywords). Nothing is added to the scene if the inputs are invalid,
    and an output node that is one of the inputs (or chosen for two outputs) is refused before anything is
    computed. ``progress`` receives :class:`~CrossModalRegLib.progress.Progress` reports (the library's protocol)
    during the validation and once more, "writing the results", just before anything is added to the scene:
    ``RegistrationCancelled`` (or any exception) raised from it leaves the scene unchanged.
    """
    from ..mrml import segmentation_or_labelmap_to_mask
    from ..outputs import check_outputs

    given_outputs = dict(outputs or {})
    check_outputs(
        {"registration transform": transform_node, "fixed volume": fixed_volume, "moving volume": moving_volume,
         "fixed landmarks": fixed_landmarks, "moving landmarks": moving_landmarks,
         "fixed segmentation": fixed_segmentation, "moving segmentation": moving_segmentation,
         "Jacobian mask": jacobian_mask},
        {"summary table": given_outputs.get("summary_table"), "landmark table": given_outputs.get("landmark_table"),
         "segment table": given_outputs.get("segment_table"), "TRE plot": given_outputs.get("plot_chart"),
         "Jacobian map": given_outputs.get("jacobian_volume")})

    transform = transform_fixed_to_moving_from_node(transform_node)
    fixed = image_from_volume_node(fixed_volume, squeeze_2d=False) if fixed_volume is not None else None
    moving = image_from_volume_node(moving_volume, squeeze_2d=False) if moving_volume is not None else None
    fl = landmark_set_from_markups_node(fixed_landmarks) if fixed_landmarks is not None else None
    ml = landmark_set_from_markups_node(moving_landmarks) if moving_landmarks is not None else None
    fixed_labels = moving_labels = names = None
    if fixed_segmentation is not None or moving_segmentation is not None:
        fixed_labels, moving_labels, names = label_maps_from_nodes(
            fixed_segmentation, moving_segmentation, fixed_reference_volume=fixed_volume,
            moving_reference_volume=moving_volume)
    mask = segmentation_or_labelmap_to_mask(jacobian_mask, fixed_volume) if jacobian_mask is not None else None
    tracker = ProgressTracker(progress, {"validate": 9.0, "write": 1.0})
    report = validate(transform, direction=direction, fixed=fixed, moving=moving, fixed_landmarks=fl,
                      moving_landmarks=ml, driving_labels=driving_labels, fle_mm=fle_mm,
                      unpaired_landmarks=unpaired_landmarks, fixed_labels=fixed_labels, moving_labels=moving_labels,
                      label_names=names, jacobian=jacobian, jacobian_mask=mask, profile=profile,
                      progress=lambda p: tracker.step("validate", p.fraction, message=p.message))
    report.provenance["input_nodes"] = {
        k: (n.GetName() if n is not None else None) for k, n in (
            ("transform", transform_node), ("fixed_volume", fixed_volume), ("moving_volume", moving_volume),
            ("fixed_landmarks", fixed_landmarks), ("moving_landmarks", moving_landmarks),
            ("fixed_segmentation", fixed_segmentation), ("moving_segmentation", moving_segmentation))
    }
    tracker.step("write", 0.0, message="writing the results")
    nodes = write_report_to_scene(scene, report, name=name, **given_outputs)
    tracker.finish("results written")
    return report, nodes
