"""One scene builder: the nodes a registration leaves in a Slicer scene, for the module, the command line and batch.

The CrossModalReg module (through :class:`.scene_registration.SceneChanges`) and ``crossmodalreg register`` /
``demo`` / ``batch`` (through :func:`.pipeline.run_registration_job`, which calls :func:`build_registration_scene`
and :func:`save_registration_scene`) make the same nodes, with the same names and references:

* the fixed and moving volumes, named after their files (``T1.nii.gz`` -> ``T1``; in the module, the user's nodes);
* the output transform ``<moving>_to_<fixed> (CrossModalReg)``: Slicer's name for the transform that brings the
  moving volume onto the fixed one. Its *transform from parent* maps FIXED RAS points to MOVING RAS points (the
  ``CrossModalReg.direction`` attribute says so); it references both volumes, and the moving volume (and the moving
  landmarks) sit under it, so that they display aligned with the fixed volume;
* the provenance as a text node ``<transform> provenance`` (JSON) and the metric per iteration as a table
  ``<transform> metric trace`` (column titles, units, descriptions) with a plot series and chart, both referenced
  from the transform node (:data:`PROVENANCE_REFERENCE`, :data:`TRACE_REFERENCE`);
* the moving volume resampled on the fixed grid ``<moving> resampled`` (optional in the module);
* landmarks as markups nodes ``<volume> landmarks`` (the moving ones under the transform);
* fixed as background and moving as foreground (opacity 0.5) of every slice view, each volume with Slicer's automatic
  window/level. A headless scene gets Slicer's Red, Yellow and Green views (axial, sagittal, coronal, fitted to the
  fixed volume), which Slicer applies to its own views when it opens the scene.

Files (:func:`save_registration_scene`): the input images are **referenced where they are**, not copied: the
volume's storage node points at the original file by its absolute path (written as such in the ``.mrml``), so the
output folder can be moved or copied anywhere on the same machine and the scene still opens. If the input files are
moved, renamed or deleted, Slicer opens the scene without those volumes' voxels (it logs that it cannot read the
file) while everything the run created still loads; load the image again, or edit the ``fileName`` in the
``.mrml``. An input that is not a NRRD, NIfTI or MetaImage file (JPEG, PNG, TIFF: the Slicer application reads them,
the headless slicer-core does not), or whose file does not hold the image that was registered (an image made in
memory, say), is written into the scene folder instead. Everything the run created is written into the
scene folder or referenced inside the output folder by a relative path (``../moving_resampled.nii.gz``), so that
part stays together with the folder.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import slicer

from . import mrml
from .geometry import embed_3d
from .provenance import json_default
from .tables import Column, table_node_from_rows

PROVENANCE_REFERENCE = "CrossModalReg.provenance"
TRACE_REFERENCE = "CrossModalReg.metricTrace"
METRIC_TRACE_COLUMNS = [
    Column("iteration_index", "Index", "", "Running index over all stages and levels", "int"),
    Column("stage", "Stage", "", "Transform stage being optimised (rigid, affine, bspline)", "string"),
    Column("level", "Level", "", "Resolution level, 0 = coarsest", "int"),
    Column("iteration", "Iteration", "", "Optimiser iteration within the level", "int"),
    Column("metric", "Metric", "", "Metric value (lower is better; negative mutual information for MI metrics); "
           "per resolution level, not comparable across levels", digits=6),
]
# Slicer's three slice views (layout name, orientation), made in a headless scene that has none.
SLICE_VIEWS = (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))
# Image files every Slicer reads (ITK's NRRD, NIfTI and MetaImage IO are in the application and in slicer-core);
# JPEG, PNG, TIFF, ... are read by the application only, so a scene referencing them would not open headless.
REFERENCED_EXTENSIONS = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
OVERLAY_OPACITY = 0.5


@dataclass
class SceneRegistrationOutputs:
    transform_node: object
    result: object  # engine.RegistrationResult
    resampled_node: object | None = None
    provenance_node: object | None = None
    trace_table_node: object | None = None
    trace_chart_node: object | None = None
    preview_updates: int = 0
    created_nodes: list = field(default_factory=list)


def default_transform_name(fixed_node, moving_node) -> str:
    """``<moving>_to_<fixed> (CrossModalReg)``: the transform that brings the moving volume onto the fixed one."""
    return f"{moving_node.GetName()}_to_{fixed_node.GetName()} (CrossModalReg)"


def set_overlay_layers(scene, fixed_node, moving_node, *, opacity: float = OVERLAY_OPACITY):
    """Fixed in the background and moving in the foreground of every slice view of the scene."""
    nodes = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(nodes.GetNumberOfItems()):
        comp = nodes.GetItemAsObject(i)
        comp.SetBackgroundVolumeID(fixed_node.GetID() if fixed_node else None)
        comp.SetForegroundVolumeID(moving_node.GetID() if moving_node else None)
        comp.SetForegroundOpacity(float(opacity))


def provenance_text(provenance: dict, transform_node) -> str:
    """The provenance node's JSON: the run's record plus which node holds the result and what it maps."""
    record = dict(provenance)
    record["output_transform"] = {"node": transform_node.GetName(), "meaning": mrml.DIRECTION_FIXED_TO_MOVING}
    return json.dumps(record, indent=2, default=json_default)


def add_result_nodes(scene, fixed_node, moving_node, transform_node, result, provenance: dict, *, resampled=None,
                     convergence: bool = True, created: list | None = None,
                     moving_landmarks_node=None) -> SceneRegistrationOutputs:
    """Put ``result`` on ``transform_node`` (the moving volume and ``moving_landmarks_node`` under it, both volumes
    referenced) and add the provenance node, the metric trace table and chart (``convergence``) and the resampled
    moving volume (a SimpleITK image, when given). Every node added is appended to ``created`` (what a rollback
    removes)."""
    created = [] if created is None else created
    mrml.set_transform_fixed_to_moving(transform_node, embed_3d(result.transform_fixed_to_moving_lps))
    mrml.set_volume_references(transform_node, fixed_node, moving_node)
    for node in (moving_node, moving_landmarks_node):
        if node is not None:
            node.SetAndObserveTransformNodeID(transform_node.GetID())
    outputs = SceneRegistrationOutputs(transform_node, result)
    name = transform_node.GetName()
    text = scene.AddNewNodeByClass("vtkMRMLTextNode", f"{name} provenance")
    created.append(text)
    text.SetText(provenance_text(provenance, transform_node))
    transform_node.SetNodeReferenceID(PROVENANCE_REFERENCE, text.GetID())
    outputs.provenance_node = text
    if convergence:
        outputs.trace_table_node, outputs.trace_chart_node = _add_metric_trace(scene, transform_node, result, created)
    if resampled is not None:
        outputs.resampled_node = mrml.volume_node_from_image(scene, resampled, f"{moving_node.GetName()} resampled")
        created.append(outputs.resampled_node)
    outputs.created_nodes = list(created)
    return outputs


def _add_metric_trace(scene, transform_node, result, created: list):
    """The metric per iteration as a table (referenced from the transform node) and a line chart of it."""
    name = transform_node.GetName()
    rows = [{"iteration_index": i, **r} for i, r in enumerate(result.metric_trace_rows())]
    table = table_node_from_rows(scene, f"{name} metric trace", METRIC_TRACE_COLUMNS, rows)
    created.append(table)
    transform_node.SetNodeReferenceID(TRACE_REFERENCE, table.GetID())
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} metric")
    created.append(series)
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetXColumnName("iteration_index")
    series.SetYColumnName("metric")
    series.SetPlotType(series.PlotTypeLine)
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{name} convergence")
    created.append(chart)
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle("Metric per iteration")
    chart.SetXAxisTitle("iteration (all stages and levels)")
    chart.SetYAxisTitle("metric (lower is better)")
    return table, chart


# ----------------------------------------------------------------------------------- the command line's scene
def volume_name(path: str | None, role: str, given: str | None = None) -> str:
    """A volume node's name: ``given``, else the file's name without its extension as Slicer strips it
    (``T1.nii.gz`` -> ``T1``), else the role."""
    if given:
        return str(given)
    if path:
        return slicer.vtkMRMLVolumeArchetypeStorageNode().GetFileNameWithoutExtension(os.path.basename(path))
    return role


def file_holds_image(path: str, image: sitk.Image) -> bool:
    """Whether ``path`` is a file every Slicer reads (:data:`REFERENCED_EXTENSIONS`) whose header gives ``image``'s
    grid (size, spacing, origin, direction, components): then the scene can reference the file instead of a copy."""
    if not path or not os.path.isfile(path) or not path.lower().endswith(REFERENCED_EXTENSIONS):
        return False
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    return (tuple(reader.GetSize()) == tuple(image.GetSize())
            and reader.GetNumberOfComponents() == image.GetNumberOfComponentsPerPixel()
            and np.allclose(reader.GetSpacing(), image.GetSpacing(), rtol=0, atol=1e-6)
            and np.allclose(reader.GetOrigin(), image.GetOrigin(), rtol=0, atol=1e-6)
            and np.allclose(reader.GetDirection(), image.GetDirection(), rtol=0, atol=1e-6))


def reference_file(scene, node, path: str):
    """Give ``node`` a storage node pointing at ``path`` (absolute), read as that one file (no series)."""
    storage = node.CreateDefaultStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(os.path.abspath(path))
    if hasattr(storage, "SingleFileOn"):
        storage.SingleFileOn()  # numbered siblings (slice_001.png, ...) are not read as one volume
    node.SetAndObserveStorageNodeID(storage.GetID())
    return storage


def show_in_slice_views(scene, app_logic, fixed_node, moving_node, *, opacity: float = OVERLAY_OPACITY) -> None:
    """Fixed as background, moving as foreground in every slice view; a scene without views (headless) gets
    Slicer's Red, Yellow and Green views, each fitted to the fixed volume."""
    if scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode") == 0:
        for layout, orientation in SLICE_VIEWS:
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLApplicationLogic(app_logic)
            logic.SetMRMLScene(scene)
            logic.AddSliceNode(layout).SetOrientation(orientation)
            composite = logic.GetSliceCompositeNode()
            composite.SetBackgroundVolumeID(fixed_node.GetID())
            logic.FitSliceToBackground()
            logic.SetMRMLScene(None)
    set_overlay_layers(scene, fixed_node, moving_node, opacity=opacity)


@dataclass
class RegistrationScene:
    """What :func:`build_registration_scene` made; ``external`` maps nodes to the input files they reference and
    ``kept`` lists nodes whose files the run wrote elsewhere in its output folder."""

    scene: object
    fixed_node: object
    moving_node: object
    outputs: SceneRegistrationOutputs
    landmark_nodes: tuple = ()
    external: dict = field(default_factory=dict)
    kept: list = field(default_factory=list)
    scene_inputs: dict = field(default_factory=dict)

    def set_provenance(self, provenance: dict) -> None:
        """(Re)write the provenance node from the run's record (called again once the QC pictures are made)."""
        record = dict(provenance)
        record["scene_inputs"] = dict(self.scene_inputs)
        self.outputs.provenance_node.SetText(provenance_text(record, self.outputs.transform_node))


def _volume_names(input_files: dict, names: dict) -> dict:
    out = {role: volume_name(input_files.get(role), role, names.get(role)) for role in ("fixed", "moving")}
    if out["fixed"] == out["moving"]:  # T1.nii.gz from two folders: say which is which
        out = {role: f"{name} ({role})" for role, name in out.items()}
    return out


def add_landmark_nodes(scene, fixed_node, moving_node, fixed_landmarks, moving_landmarks, labels=None) -> tuple:
    """Paired landmarks (LPS mm) as markups ``<fixed> landmarks`` and ``<moving> landmarks`` (the latter goes under
    the transform in :func:`add_result_nodes`); () when there are none."""
    if fixed_landmarks is None or moving_landmarks is None:
        return ()
    labels = [str(v) for v in (labels if labels is not None else range(len(fixed_landmarks)))]
    fixed_lm = mrml.markups_node_from_points(scene, fixed_landmarks, labels, f"{fixed_node.GetName()} landmarks")
    moving_lm = mrml.markups_node_from_points(scene, moving_landmarks, labels, f"{moving_node.GetName()} landmarks")
    return fixed_lm, moving_lm


def build_registration_scene(scene, app_logic, fixed: sitk.Image, moving: sitk.Image, result, provenance: dict, *,
                             input_files: dict | None = None, names: dict | None = None, fixed_landmarks=None,
                             moving_landmarks=None, landmark_labels=None, resampled: sitk.Image | None = None,
                             resampled_file: str | None = None) -> RegistrationScene:
    """The scene of a run made outside the module (command line, batch), with the nodes the module makes (see the
    module docstring). ``input_files`` (role -> path) names the volumes and is referenced where it holds the image;
    ``names`` (role -> name) overrides the names; ``resampled_file`` is where the run wrote ``resampled``."""
    input_files, names = input_files or {}, names or {}
    volume_names = _volume_names(input_files, names)
    nodes, external = {}, {}
    for role, image in (("fixed", fixed), ("moving", moving)):
        nodes[role] = mrml.volume_node_from_image(scene, image, volume_names[role])
        if file_holds_image(input_files.get(role), image):
            reference_file(scene, nodes[role], input_files[role])
            external[nodes[role]] = os.path.abspath(input_files[role])
    fixed_node, moving_node = nodes["fixed"], nodes["moving"]
    transform_node = scene.AddNewNodeByClass("vtkMRMLTransformNode", default_transform_name(fixed_node, moving_node))
    landmarks = add_landmark_nodes(scene, fixed_node, moving_node, fixed_landmarks, moving_landmarks, landmark_labels)
    scene_inputs = {"fixed_volume": fixed_node.GetName(), "moving_volume": moving_node.GetName(),
                    "fixed_landmarks": landmarks[0].GetName() if landmarks else None,
                    "moving_landmarks": landmarks[1].GetName() if landmarks else None}
    outputs = add_result_nodes(scene, fixed_node, moving_node, transform_node, result,
                               {**provenance, "scene_inputs": scene_inputs}, resampled=resampled,
                               moving_landmarks_node=landmarks[1] if landmarks else None)
    kept = []
    if outputs.resampled_node is not None and resampled_file and os.path.isfile(resampled_file):
        reference_file(scene, outputs.resampled_node, resampled_file)
        kept.append(outputs.resampled_node)
    show_in_slice_views(scene, app_logic, fixed_node, moving_node)
    return RegistrationScene(scene, fixed_node, moving_node, outputs, landmarks, external, kept, scene_inputs)


def save_registration_scene(built: RegistrationScene, mrml_path: str) -> list[str]:
    """Write the scene (:func:`.scene_io.save_scene`): the run's nodes into the scene folder, the nodes that reference
    files elsewhere keep them, and the input files are written in the ``.mrml`` by their absolute paths (Slicer would
    write them relative to the scene folder, which breaks when the output folder is moved)."""
    from .scene_io import save_scene

    written = save_scene(built.scene, mrml_path, keep=list(built.external) + list(built.kept))
    absolute_file_names(mrml_path, {node.GetStorageNode().GetID(): path for node, path in built.external.items()})
    return written


def absolute_file_names(mrml_path: str, paths: dict) -> None:
    """Rewrite the ``fileName`` of the storage nodes ``paths`` names (ID -> absolute path) in a written ``.mrml``,
    encoded as Slicer encodes file names; the rest of the file is left byte for byte."""
    if not paths:
        return
    with open(mrml_path, encoding="utf-8") as f:
        text = f.read()
    encoder = slicer.vtkMRMLVolumeArchetypeStorageNode()
    for node_id, path in paths.items():
        pattern = re.compile(r'(<\w+\s+id="' + re.escape(node_id) + r'"[^>]*?\sfileName=")[^"]*(")')
        value = encoder.URLEncodeString(os.path.abspath(path)).replace("&", "&amp;")
        text, n = pattern.subn(lambda m, v=value: m.group(1) + v + m.group(2), text)
        if n != 1:
            raise OSError(f"the scene file {mrml_path} has no storage node {node_id} to point at {path}")
    tmp = mrml_path + ".partial"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, mrml_path)
