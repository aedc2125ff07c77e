"""Shared helpers of the registration tests: ground-truth cases from ../shared/data and error measures."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

BRAINWEB_CASES = {
    # id: (fixed, moving, ground truth fixed -> moving (LPS mm), from the data README)
    "identity": ("BrainT1Slice.mha", "BrainProtonDensitySlice.mha", lambda: sitk.Euler2DTransform()),
    "shift_13_17": ("BrainT1SliceBorder20.mha", "BrainProtonDensitySliceShifted13x17y.mha",
                    lambda: sitk.TranslationTransform(2, (13.0, 17.0))),
    "rotation_10": ("BrainT1SliceBorder20.mha", "BrainProtonDensitySliceRotated10.mha",
                    lambda: sitk.Euler2DTransform((110.0, 128.0), np.deg2rad(10.0))),
    "rotation_10_shift": ("BrainT1SliceBorder20.mha", "BrainProtonDensitySliceR10X13Y17.mha",
                          lambda: sitk.Euler2DTransform((110.0, 128.0), np.deg2rad(10.0), (13.1, 15.9))),
    "direction_plus_30": ("BrainT1SliceBorder20DirectionPlus30.mhd", "BrainProtonDensitySliceBorder20DirectionPlus30.mhd",
                          lambda: sitk.Euler2DTransform()),
}


def grid_points(image: sitk.Image, step: int = 8, mask: sitk.Image | None = None) -> np.ndarray:
    """Physical (LPS) centres of every ``step``-th voxel of ``image`` (inside ``mask`` when given)."""
    arr = sitk.GetArrayViewFromImage(mask) > 0 if mask is not None else np.ones(image.GetSize()[::-1], bool)
    idx = np.argwhere(arr)[::step][:, ::-1]
    return np.array([image.TransformIndexToPhysicalPoint(tuple(int(v) for v in i)) for i in idx])


def tre(estimated, truth, points) -> np.ndarray:
    est = np.array([estimated.TransformPoint(tuple(map(float, p))) for p in points])
    tru = np.array([truth.TransformPoint(tuple(map(float, p))) for p in points])
    return np.linalg.norm(est - tru, axis=1)


def foreground(image: sitk.Image) -> sitk.Image:
    return sitk.OtsuThreshold(sitk.Cast(image, sitk.sitkFloat32), 0, 1, 128)


def blobs_image(centres, size: int = 96) -> sitk.Image:
    """A 2D float image (1 mm pixels, origin 0) of Gaussian blobs ``(x, y, sigma)``, values up to ~100."""
    y, x = np.mgrid[0:size, 0:size].astype(float)
    arr = sum(np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s)) for cx, cy, s in centres)
    return sitk.GetImageFromArray((100 * arr).astype(np.float32))


OBJECT_A = [(20, 30, 3), (30, 50, 4), (18, 62, 3), (34, 70, 2.5)]  # x < 40
OBJECT_B = [(64, 30, 5), (74, 52, 6), (62, 70, 5), (80, 74, 4)]  # x > 55: bigger, so it dominates a whole-image metric
SHIFT_A, SHIFT_B = (4.0, 3.0), (-4.0, -3.0)


def two_object_pair():
    """(fixed, moving, mask over A in the fixed image, mask over A in the moving image): object A moves by
    SHIFT_A, object B by SHIFT_B, so no rigid transform fits both and only a mask says which one to align."""
    def moved(blobs, d):
        return [(cx + d[0], cy + d[1], s) for cx, cy, s in blobs]

    def left_of(x):
        arr = np.zeros((96, 96), np.uint8)
        arr[:, :x] = 1
        return sitk.GetImageFromArray(arr)

    return (blobs_image(OBJECT_A + OBJECT_B), blobs_image(moved(OBJECT_A, SHIFT_A) + moved(OBJECT_B, SHIFT_B)),
            left_of(44), left_of(48))


def translated_validation_nodes(scene, label_array, shift, points, labels, *, moving_offset=(0.0, 0.0, 0.0),
                                origin=None, volume_names=("fixed", "moving")):
    """MRML nodes of a validation case with a known answer, from a label array (k, j, i).

    The fixed label map and a fixed image (labels x 100 + 10), their copies moved by the translation ``shift``
    (fixed -> moving, LPS mm) as the moving ones, landmarks ``points`` (LPS) on the fixed image and the same points
    shifted (plus ``moving_offset``, a planted error) on the moving one, and a transform node holding the translation.
    Returns the keys ``validate_nodes`` takes (transform_node, fixed_volume, ...) and ``transform`` (SimpleITK).
    """
    from CrossModalRegLib.mrml import markups_node_from_points, set_transform_fixed_to_moving, volume_node_from_image

    fixed_labels = sitk.GetImageFromArray(np.asarray(label_array, dtype=np.uint8))
    if origin is not None:
        fixed_labels.SetOrigin(tuple(origin))
    tx = sitk.TranslationTransform(3, tuple(shift))
    moving_labels = sitk.Resample(fixed_labels, fixed_labels, tx.GetInverse(), sitk.sitkNearestNeighbor, 0)
    fixed_img = sitk.Cast(fixed_labels, sitk.sitkFloat32) * 100 + 10
    moving_img = sitk.Resample(fixed_img, fixed_img, tx.GetInverse(), sitk.sitkLinear, 10.0)
    fl = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "fixed labels")
    ml = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "moving labels")
    volume_node_from_image(scene, fixed_labels, "fixed labels", node=fl)
    volume_node_from_image(scene, moving_labels, "moving labels", node=ml)
    fv = volume_node_from_image(scene, fixed_img, volume_names[0])
    mv = volume_node_from_image(scene, moving_img, volume_names[1])
    pts = np.asarray(points, float)
    fm = markups_node_from_points(scene, pts, list(labels), "fixed landmarks")
    mm = markups_node_from_points(scene, pts + np.asarray(shift) + np.asarray(moving_offset), list(labels),
                                  "moving landmarks")
    tn = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    set_transform_fixed_to_moving(tn, tx)
    return dict(transform_node=tn, fixed_volume=fv, moving_volume=mv, fixed_landmarks=fm, moving_landmarks=mm,
                fixed_segmentation=fl, moving_segmentation=ml, transform=tx)


def folder_digest(folder) -> str:
    """SHA-256 over every file's relative path and bytes under ``folder``: equal digests, nothing was rewritten."""
    import hashlib
    import pathlib

    h = hashlib.sha256()
    for p in sorted(pathlib.Path(folder).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()
