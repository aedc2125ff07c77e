"""Saving a scene (.mrml plus one file per node) that opens in Slicer, headless or not."""

from __future__ import annotations

import os
import re

_EXTENSIONS = {
    "vtkMRMLScalarVolumeNode": ".nrrd",
    "vtkMRMLLabelMapVolumeNode": ".nrrd",
    "vtkMRMLVectorVolumeNode": ".nrrd",
    "vtkMRMLTransformNode": ".h5",
    "vtkMRMLLinearTransformNode": ".h5",
    "vtkMRMLBSplineTransformNode": ".h5",
    "vtkMRMLGridTransformNode": ".h5",
    "vtkMRMLMarkupsFiducialNode": ".mrk.json",
    "vtkMRMLTableNode": ".tsv",
    "vtkMRMLTextNode": ".txt",
    "vtkMRMLSegmentationNode": ".seg.nrrd",
}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "node"


def save_scene(scene, mrml_path: str, *, keep=()) -> list[str]:
    """Write every storable node's data next to ``mrml_path`` and the scene file itself; return the files written.

    Nodes keep their data; each gets a storage node (a default one if it has none) pointing into the folder, except
    the nodes in ``keep``, whose storage nodes already point at their files (an input image where it is, say): their
    files are neither written nor moved. Slicer writes every file name relative to the scene folder.
    """
    keep = {node.GetID() for node in keep}
    folder = os.path.dirname(os.path.abspath(mrml_path))
    os.makedirs(folder, exist_ok=True)
    written = []
    used = set()
    nodes = scene.GetNodesByClass("vtkMRMLStorableNode")
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetID() in keep or (node.GetHideFromEditors() and not node.IsA("vtkMRMLTableNode")):
            continue
        if node.IsA("vtkMRMLVolumeNode") and node.GetImageData() is None:
            continue
        ext = next((e for cls, e in _EXTENSIONS.items() if node.IsA(cls)), None)
        if ext is None:
            continue
        storage = node.GetStorageNode()
        if storage is None:
            storage = node.CreateDefaultStorageNode()
            if storage is None:
                continue
            scene.AddNode(storage)
            node.SetAndObserveStorageNodeID(storage.GetID())
        base = _safe(node.GetName())
        name = base
        k = 1
        while name in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        path = os.path.join(folder, name + ext)
        storage.SetFileName(path)
        if not storage.WriteData(node):
            raise OSError(f"could not write node '{node.GetName()}' to {path}")
        written.append(path)
    scene.SetRootDirectory(folder)
    scene.SetURL(os.path.abspath(mrml_path))
    if not scene.Commit():
        raise OSError(f"could not write the scene file {mrml_path}")
    written.append(os.path.abspath(mrml_path))
    return written


def load_scene(scene, mrml_path: str) -> None:
    """Import a .mrml scene file (with its node files) into ``scene``."""
    scene.SetURL(os.path.abspath(mrml_path))
    if not scene.Import():
        raise OSError(f"could not read the scene file {mrml_path}")

