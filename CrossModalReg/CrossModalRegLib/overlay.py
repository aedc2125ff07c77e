"""Overlay pictures made with Slicer's own slice compositing (``vtkMRMLSliceLogic``), no OpenGL needed.

The fixed volume is the background layer, the moving volume the foreground layer (with its parent transform
applied exactly as Slicer's slice views apply it), blended with an opacity, or shown as a checkerboard.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

ORIENTATIONS_3D = ("Axial", "Coronal", "Sagittal")


def _layer_rgba(connection) -> np.ndarray:
    producer = connection.GetProducer()
    producer.Update()
    img = producer.GetOutputDataObject(connection.GetIndex())
    w, h, _ = img.GetDimensions()
    arr = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)
    return arr[::-1].copy()  # VTK rows go bottom-up


def _ras_center(volume_node):
    bounds = [0.0] * 6
    volume_node.GetRASBounds(bounds)
    return [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2]


def slice_views(scene, fixed_node, moving_node, *, app_logic=None, size: int = 256, opacity: float = 0.5,
                checkerboard: int = 0, orientations=None, moving_color_node_id: str | None = None) -> np.ndarray:
    """RGB mosaic (H, W*n, 3) uint8 of the fixed/moving composite in each orientation through the fixed centre.

    ``checkerboard`` > 0 shows a checkerboard of that many squares per side instead of a blend. Nodes made for
    the rendering (slice and composite nodes) are removed again; the volumes are not changed, except that the
    moving display's colour table is switched to ``moving_color_node_id`` during the rendering when given.
    """
    dims = fixed_node.GetImageData().GetDimensions()
    if orientations is None:
        orientations = ("Axial",) if dims[2] == 1 else ORIENTATIONS_3D
    display = moving_node.GetDisplayNode() if moving_node is not None else None
    old_color = display.GetColorNodeID() if display is not None else None
    if old_color is None:  # RGB (vector) volumes show their own colours: no colour table to swap
        display = None
    if display is not None and moving_color_node_id and scene.GetNodeByID(moving_color_node_id) is not None:
        display.SetAndObserveColorNodeID(moving_color_node_id)
    tiles = []
    created = []
    try:
        for k, orientation in enumerate(orientations):
            logic = slicer.vtkMRMLSliceLogic()
            if app_logic is not None:
                logic.SetMRMLApplicationLogic(app_logic)
            logic.SetMRMLScene(scene)
            slice_node = logic.AddSliceNode(f"CrossModalRegOverlay{k}")
            composite = logic.GetSliceCompositeNode()
            created += [slice_node, composite]
            composite.SetBackgroundVolumeID(fixed_node.GetID())
            composite.SetForegroundVolumeID(moving_node.GetID() if moving_node is not None else None)
            composite.SetForegroundOpacity(1.0 if checkerboard else float(opacity))
            slice_node.SetOrientation(orientation)
            slice_node.SetDimensions(size, size, 1)
            logic.FitSliceToAll()
            slice_node.JumpSliceByCentering(*_ras_center(fixed_node))
            if checkerboard and moving_node is not None:
                bg = _layer_rgba(logic.GetBackgroundLayer().GetImageDataConnection())
                fg = _layer_rgba(logic.GetForegroundLayer().GetImageDataConnection())
                yy, xx = np.mgrid[0:bg.shape[0], 0:bg.shape[1]]
                sq = max(1, size // int(checkerboard))
                use_fg = ((yy // sq + xx // sq) % 2).astype(bool)
                rgb = np.where(use_fg[..., None], fg[..., :3], bg[..., :3])
            else:
                rgb = _layer_rgba(logic.GetImageDataConnection())[..., :3]
            tiles.append(rgb.astype(np.uint8))
            logic.SetMRMLScene(None)
    finally:
        for node in created:
            if node is not None and scene.IsNodePresent(node):
                scene.RemoveNode(node)
        if display is not None and moving_color_node_id:
            display.SetAndObserveColorNodeID(old_color)
    gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
    out = tiles[0]
    for t in tiles[1:]:
        out = np.concatenate([out, gap, t], axis=1)
    return out


def write_png(rgb: np.ndarray, path: str) -> str:
    """Write an (H, W, 3) uint8 array as PNG with VTK's writer (atomically: temp file then rename)."""
    import os

    h, w, _ = rgb.shape
    img = vtk.vtkImageData()
    img.SetDimensions(w, h, 1)
    arr = numpy_support.numpy_to_vtk(np.ascontiguousarray(rgb[::-1]).reshape(-1, 3), deep=True)
    arr.SetNumberOfComponents(3)
    img.GetPointData().SetScalars(arr)
    tmp = path + ".partial.png"
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(tmp)
    writer.SetInputData(img)
    writer.Write()
    os.replace(tmp, path)
    return path


def stack_rows(rows: list[np.ndarray]) -> np.ndarray:
    """Stack mosaics vertically (e.g. 'before' above 'after'), padding widths with white."""
    width = max(r.shape[1] for r in rows)
    padded = []
    for r in rows:
        pad = np.full((r.shape[0], width - r.shape[1], 3), 255, np.uint8)
        padded.append(np.concatenate([r, pad], axis=1))
        padded.append(np.full((4, width, 3), 255, np.uint8))
    return np.concatenate(padded[:-1], axis=0)
