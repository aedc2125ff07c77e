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
