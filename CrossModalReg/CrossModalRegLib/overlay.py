"""Reading Slicer's slice compositing (``vtkMRMLSliceLogic``) into numpy and writing PNGs, no OpenGL needed.

The QC pictures built on it are in :mod:`qc_pictures`.
"""

from __future__ import annotations

import numpy as np
import vtk
from vtk.util import numpy_support


def layer_rgba(connection) -> np.ndarray:
    """RGBA (H, W, 4) uint8 of a slice layer's output, rows top-down."""
    producer = connection.GetProducer()
    producer.Update()
    img = producer.GetOutputDataObject(connection.GetIndex())
    w, h, _ = img.GetDimensions()
    arr = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)
    return arr[::-1].copy()  # VTK rows go bottom-up


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
