"""The MRML layer: SimpleITK images/transforms (LPS) <-> Slicer nodes (RAS).

Every function takes the scene or the nodes as arguments (no global state), works in Slicer and in the
headless slicer-core, and never uses ``slicer.util.itkImageFromVolume`` / ``addVolumeFromITKImage``
(they flip the direction between LPS and RAS but not the origin).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from .errors import CrossModalRegError
from .geometry import F3, F4, image_ijk_to_ras_matrix, linear_transform_matrix_ras

# Node references written on output transforms so that a user (or a later module) can tell what they map.
FIXED_VOLUME_REFERENCE = "CrossModalReg.fixedVolume"
MOVING_VOLUME_REFERENCE = "CrossModalReg.movingVolume"
DIRECTION_ATTRIBUTE = "CrossModalReg.direction"
DIRECTION_FIXED_TO_MOVING = "TransformFromParent maps FIXED RAS points to MOVING RAS points (moving volume goes under it)"


def _matrix_to_vtk(m) -> vtk.vtkMatrix4x4:
    vm = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vm.SetElement(r, c, float(m[r][c]))
    return vm


def _vtk_to_matrix(vm) -> np.ndarray:
    return np.array([[vm.GetElement(r, c) for c in range(4)] for r in range(4)])


# ----------------------------------------------------------------------------------------------- volumes
def volume_node_from_image(scene, image: sitk.Image, name: str, *, node=None, create_display=True):
    """Add (or update ``node``) a volume node holding ``image`` with exactly its geometry.

    Scalar images give a ``vtkMRMLScalarVolumeNode``, multi-component ones a ``vtkMRMLVectorVolumeNode``.
    A 2D image becomes a single-slice volume with z = 0. Voxels are copied, never resampled.
    """
    ncomp = image.GetNumberOfComponentsPerPixel()
    arr = sitk.GetArrayFromImage(image)
    if image.GetDimension() == 2:
        arr = arr[np.newaxis, ...]
    elif image.GetDimension() != 3:
        raise CrossModalRegError(f"only 2D and 3D images are supported, got {image.GetDimension()}D")
    if node is None:
        cls = "vtkMRMLVectorVolumeNode" if ncomp > 1 else "vtkMRMLScalarVolumeNode"
        node = scene.AddNewNodeByClass(cls, name)
    else:
        node.SetName(name)
    ijk_to_ras = image_ijk_to_ras_matrix(image)
    node.SetIJKToRASMatrix(_matrix_to_vtk(ijk_to_ras))
    _set_voxels(node, arr, ncomp)
    if create_display and node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None and ncomp == 1 and hasattr(display, "AutoWindowLevelOn"):
            display.AutoWindowLevelOn()
    return node


def _set_voxels(node, arr, ncomp):
    arr = np.ascontiguousarray(arr)
    nk, nj, ni = arr.shape[:3]
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(ni, nj, nk)
    flat = arr.reshape(-1, ncomp) if ncomp > 1 else arr.ravel()
    vtk_array = numpy_support.numpy_to_vtk(flat, deep=True)
    vtk_array.SetNumberOfComponents(ncomp)
    image_data.GetPointData().SetScalars(vtk_array)
    node.SetAndObserveImageData(image_data)
    node.StorableModified()


def image_from_volume_node(node, *, squeeze_2d: bool = True) -> sitk.Image:
    """SimpleITK image (LPS) of a volume node's own voxels and grid.

    The node's parent transform, if any, is *not* applied (registration inputs are taken where their file put
    them). A single-slice volume whose slice normal is the z axis becomes a 2D image when ``squeeze_2d``.
    """
    image_data = node.GetImageData() if node is not None else None
    if image_data is None or image_data.GetPointData().GetScalars() is None:
        name = node.GetName() if node is not None else "None"
        raise CrossModalRegError(f"volume '{name}' has no voxels: load an image into it first")
    dims = image_data.GetDimensions()
    ncomp = image_data.GetNumberOfScalarComponents()
    arr = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars())
    arr = arr.reshape((dims[2], dims[1], dims[0], ncomp) if ncomp > 1 else (dims[2], dims[1], dims[0])).copy()
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ijk_to_ras = _vtk_to_matrix(m)
    ijk_to_lps = F4 @ ijk_to_ras
    lin = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    direction = lin / spacing
    origin = ijk_to_lps[:3, 3]
    if squeeze_2d and dims[2] == 1 and abs(abs(direction[2, 2]) - 1.0) < 1e-6 and abs(origin[2]) < 1e-9:
        img = sitk.GetImageFromArray(arr[0], isVector=ncomp > 1)
        img.SetSpacing(tuple(spacing[:2]))
        img.SetOrigin(tuple(origin[:2]))
        img.SetDirection(tuple(direction[:2, :2].ravel()))
        return img
    img = sitk.GetImageFromArray(arr, isVector=ncomp > 1)
    img.SetSpacing(tuple(spacing))
    img.SetOrigin(tuple(origin))
    img.SetDirection(tuple(direction.ravel()))
    return img


def segmentation_or_labelmap_to_mask(node, reference_volume_node=None) -> sitk.Image:
    """Binary mask image (uint8, LPS) from a label map volume node or a segmentation node (all segments).

    A segmentation is exported on the reference volume's grid when given (else its own).
    """
    if node is None:
        raise CrossModalRegError("mask node is None")
    if node.IsA("vtkMRMLSegmentationNode"):
        scene = node.GetScene()
        labelmap = slicer.vtkMRMLLabelMapVolumeNode()
        if scene is not None:
            scene.AddNode(labelmap)
        try:
            ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(
                node, labelmap, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
            ) if reference_volume_node is None else slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                node, _all_segment_ids(node), labelmap, reference_volume_node
            )
            if not ok:
                raise CrossModalRegError(f"segmentation '{node.GetName()}' could not be exported to a label map")
            image = image_from_volume_node(labelmap)
        finally:
            if scene is not None:
                scene.RemoveNode(labelmap)
    else:
        image = image_from_volume_node(node)
    return sitk.Cast(image > 0, sitk.sitkUInt8)


def _all_segment_ids(segmentation_node):
    ids = vtk.vtkStringArray()
    segmentation_node.GetSegmentation().GetSegmentIDs(ids)
    return ids


# ------------------------------------------------------------------------------------------- transforms
def set_transform_fixed_to_moving(transform_node, transform_fixed_to_moving_lps: sitk.Transform):
    """Make ``transform_node`` represent a fixed -> moving SimpleITK transform (LPS).

    Slicer stores it as the node's *transform from parent* in RAS (``F4 @ T @ F4`` for a linear T), so the
    MOVING volume placed under the node is displayed aligned with the fixed one. Linear transforms are set as a
    matrix (fast, exact); others go through Slicer's own ITK transform reader, exactly as a file would.
    """
    tx = transform_fixed_to_moving_lps
    if tx.IsLinear():
        matrix_ras = linear_transform_matrix_ras(tx)
        transform_node.SetMatrixTransformFromParent(_matrix_to_vtk(matrix_ras))
    else:
        tmpdir = tempfile.mkdtemp(prefix="cmr-tx-")
        try:
            path = os.path.join(tmpdir, "transform.h5")
            sitk.WriteTransform(tx, path)
            holder = slicer.vtkMRMLTransformNode()
            storage = slicer.vtkMRMLTransformStorageNode()
            storage.SetFileName(path)
            if not storage.ReadData(holder):
                raise CrossModalRegError(f"Slicer could not read a {tx.GetName()} transform")
            transform_node.SetAndObserveTransformFromParent(holder.GetTransformFromParent())
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
    transform_node.SetAttribute(DIRECTION_ATTRIBUTE, DIRECTION_FIXED_TO_MOVING)
    return transform_node


def transform_fixed_to_moving_from_node(transform_node) -> sitk.Transform:
    """The SimpleITK (LPS) transform equal to the node's *transform from parent* (fixed -> moving when the
    moving volume sits under the node). Works for linear, B-spline, grid and composite transform nodes:
    it goes through Slicer's own ITK transform writer.
    """
    if transform_node is None:
        raise CrossModalRegError("no transform node given")
    if transform_node.IsLinear():
        m = vtk.vtkMatrix4x4()
        transform_node.GetMatrixTransformFromParent(m)
        m_lps = F4 @ _vtk_to_matrix(m) @ F4
        tx = sitk.AffineTransform(3)
        tx.SetMatrix(tuple(m_lps[:3, :3].ravel()))
        tx.SetTranslation(tuple(m_lps[:3, 3]))
        return tx
    tmpdir = tempfile.mkdtemp(prefix="cmr-tx-")
    try:
        path = os.path.join(tmpdir, "transform.h5")
        storage = slicer.vtkMRMLTransformStorageNode()
        storage.SetFileName(path)
        if not storage.WriteData(transform_node):
            raise CrossModalRegError(f"transform '{transform_node.GetName()}' could not be written as an ITK transform")
        return sitk.ReadTransform(path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def transform_ras_points_from_parent(transform_node, points_ras) -> np.ndarray:
    """Apply the node's transform FROM parent (fixed -> moving, RAS) to RAS points with Slicer's own VTK transform."""
    vt = transform_node.GetTransformFromParent()
    pts = np.atleast_2d(np.asarray(points_ras, dtype=float))
    return np.array([vt.TransformPoint(tuple(map(float, p))) for p in pts])


def set_volume_references(transform_node, fixed_node, moving_node):
    """Record on the transform node which volumes it relates (saved in the .mrml scene)."""
    if fixed_node is not None:
        transform_node.SetNodeReferenceID(FIXED_VOLUME_REFERENCE, fixed_node.GetID())
    if moving_node is not None:
        transform_node.SetNodeReferenceID(MOVING_VOLUME_REFERENCE, moving_node.GetID())


# ---------------------------------------------------------------------------------------------- markups
def markups_node_from_points(scene, points_lps, labels, name: str, *, node=None, locked: bool = False):
    """Add (or fill ``node``) a fiducial markups node from LPS points (2D points get z = 0); labels kept in order."""
    pts = np.atleast_2d(np.asarray(points_lps, dtype=float))
    if pts.shape[1] == 2:
        pts = np.column_stack([pts, np.zeros(len(pts))])
    labels = list(labels)
    if len(labels) != len(pts):
        raise CrossModalRegError(f"{len(labels)} labels for {len(pts)} points in '{name}'")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    wasModifying = node.StartModify()
    try:
        node.RemoveAllControlPoints()
        for label, p in zip(labels, pts):
            p_ras = F3 @ p
            idx = node.AddControlPoint(vtk.vtkVector3d(*p_ras), str(label))
            node.SetNthControlPointLocked(idx, locked)
    finally:
        node.EndModify(wasModifying)
    return node


def points_from_markups_node(node, *, defined_only: bool = True):
    """(labels, points_lps) of a markups node; unplaced (undefined) points are skipped when ``defined_only``."""
    labels, pts = [], []
    for i in range(node.GetNumberOfControlPoints()):
        if defined_only and not node.GetNthControlPointPositionVisibility(i):
            continue
        if defined_only and hasattr(node, "GetNthControlPointPositionStatus"):
            if node.GetNthControlPointPositionStatus(i) != node.PositionDefined:
                continue
        p = [0.0, 0.0, 0.0]
        node.GetNthControlPointPosition(i, p)
        labels.append(node.GetNthControlPointLabel(i))
        pts.append(F3 @ np.array(p))
    return labels, np.array(pts).reshape(-1, 3)


def landmark_set_from_markups_node(node):
    """The placed control points of a markups node as a :class:`~.landmarks.fileio.LandmarkSet` (LPS mm), named
    after the node in messages; a node with no placed point is an error."""
    from .landmarks.fileio import LandmarkSet

    if node is None:
        raise CrossModalRegError("no markups node given")
    labels, points = points_from_markups_node(node)
    if not labels:
        raise CrossModalRegError(f"markups '{node.GetName()}' has no placed control point")
    return LandmarkSet(labels, points, "LPS", f"landmark list '{node.GetName()}'")


def remove_nodes(scene, nodes):
    """Remove nodes (and their display/storage nodes) from the scene; ignores None and already-removed ones."""
    for node in nodes:
        if node is None or scene is None or not scene.IsNodePresent(node):
            continue
        if hasattr(node, "GetNumberOfDisplayNodes"):
            for i in reversed(range(node.GetNumberOfDisplayNodes())):
                d = node.GetNthDisplayNode(i)
                if d is not None and scene.IsNodePresent(d):
                    scene.RemoveNode(d)
        if hasattr(node, "GetStorageNode") and node.GetStorageNode() is not None:
            scene.RemoveNode(node.GetStorageNode())
        scene.RemoveNode(node)
