"""Jacobian determinant of a transform over a grid: local volume change, folding, and its statistics.

The transform is ``transform_fixed_to_moving_lps`` (FIXED -> MOVING, LPS mm). Its Jacobian determinant
``J(x) = det(d T / d x)`` at a FIXED-space point is the ratio of the volume of the corresponding moving-space
region to the fixed-space one: J > 1 the moving image is locally larger, J <= 0 the transform folds (it is not
invertible there). For the other direction the determinant is ``1 / J`` at the corresponding point.

Method: the displacement field ``u(x) = T(x) - x`` is sampled on the grid (padded by one voxel so that the
central differences are also exact at its border), its vectors are expressed in the grid's index axes
(``D^T u``, so oblique grids are handled), and SimpleITK's ``DisplacementFieldJacobianDeterminant`` gives
``det(I + grad u)`` with spacing taken into account. For an affine transform this is ``det(A)`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from ..errors import CrossModalRegError

DEFAULT_BOUNDS = (0.5, 2.0)


def jacobian_determinant_image(transform_fixed_to_moving_lps: sitk.Transform, reference: sitk.Image) -> sitk.Image:
    """Jacobian determinant of the transform at every voxel centre of ``reference`` (float32 image, same grid).

    Parameters
    ----------
    transform_fixed_to_moving_lps : SimpleITK.Transform
        Maps FIXED points to MOVING points (LPS mm); any kind (linear, B-spline, displacement field, composite).
    reference : SimpleITK.Image
        The grid (normally the fixed image, or a coarser grid over it): size, spacing, origin and direction.

    Returns
    -------
    SimpleITK.Image
        Dimensionless determinant, on the reference grid.
    """
    dim = reference.GetDimension()
    if dim != 3:
        raise CrossModalRegError(f"the Jacobian map needs a 3D grid, got {dim}D")
    if min(reference.GetSize()) < 2:
        raise CrossModalRegError("the Jacobian grid needs at least 2 voxels along every axis")
    direction = np.array(reference.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.array(reference.GetSpacing(), dtype=float)
    origin = np.array(reference.GetOrigin(), dtype=float)
    size = [s + 2 for s in reference.GetSize()]
    padded_origin = origin - direction @ spacing  # one voxel before index 0 along every axis
    tdf = sitk.TransformToDisplacementFieldFilter()
    tdf.SetOutputPixelType(sitk.sitkVectorFloat64)
    tdf.SetSize(size)
    tdf.SetOutputOrigin(tuple(padded_origin))
    tdf.SetOutputSpacing(tuple(spacing))
    tdf.SetOutputDirection(tuple(direction.ravel()))
    field_img = tdf.Execute(transform_fixed_to_moving_lps)
    if not np.allclose(direction, np.eye(3), atol=1e-12):
        arr = sitk.GetArrayViewFromImage(field_img) @ direction  # row-vector form of D^T u
        rotated = sitk.GetImageFromArray(arr, isVector=True)
        rotated.CopyInformation(field_img)
        field_img = rotated
    jac = sitk.DisplacementFieldJacobianDeterminant(field_img, True)
    jac = jac[1:-1, 1:-1, 1:-1]
    jac = sitk.Cast(jac, sitk.sitkFloat32)
    jac.CopyInformation(reference)
    return jac


@dataclass
class JacobianStatistics:
    """Statistics of a Jacobian determinant map over a region (dimensionless unless stated)."""

    n_voxels: int
    min: float | None
    max: float | None
    mean: float | None
    fraction_folding: float | None
    fraction_outside_bounds: float | None
    sd_log: float | None
    bounds: tuple[float, float] = DEFAULT_BOUNDS
    region: str = "fixed grid"
    notes: list[str] = field(default_factory=list)


def jacobian_statistics(jacobian: sitk.Image, mask: sitk.Image | None = None, *,
                        bounds: tuple[float, float] = DEFAULT_BOUNDS) -> JacobianStatistics:
    """Min, max, mean, fraction folding (J <= 0), fraction outside ``bounds`` and SD of log J.

    Parameters
    ----------
    jacobian : SimpleITK.Image
        From :func:`jacobian_determinant_image`.
    mask : SimpleITK.Image, optional
        Non-zero voxels select the region; resampled (nearest neighbour, identity) onto the Jacobian grid when
        its grid differs.
    bounds : (float, float)
        The plausible range of J; voxels with J < low or J > high count as outside.

    Notes
    -----
    SD of log J is over voxels with J > 0 (the log of a folded voxel is undefined); the notes say how many were
    left out. Every fraction is of the voxels in the region.
    """
    j = sitk.GetArrayViewFromImage(jacobian).astype(np.float64)
    region = "fixed grid"
    notes = []
    if mask is not None:
        if (mask.GetSize() != jacobian.GetSize() or not np.allclose(mask.GetOrigin(), jacobian.GetOrigin())
                or not np.allclose(mask.GetSpacing(), jacobian.GetSpacing())
                or not np.allclose(mask.GetDirection(), jacobian.GetDirection())):
            mask = sitk.Resample(mask, jacobian, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkNearestNeighbor, 0)
        sel = sitk.GetArrayViewFromImage(mask) != 0
        j = j[sel]
        region = "mask"
        if j.size == 0:
            raise CrossModalRegError("the Jacobian mask is empty on the fixed grid: nothing to measure")
    j = j.ravel()
    j = j[np.isfinite(j)]
    n = int(j.size)
    if n == 0:
        return JacobianStatistics(0, None, None, None, None, None, None, tuple(bounds), region,
                                  ["no finite Jacobian value in the region"])
    positive = j[j > 0]
    folded = n - positive.size
    if folded:
        notes.append(f"{folded} voxel(s) fold (J <= 0); SD of log J is over the {positive.size} others")
    sd_log = float(np.std(np.log(positive))) if positive.size > 1 else None
    low, high = bounds
    return JacobianStatistics(
        n_voxels=n,
        min=float(j.min()),
        max=float(j.max()),
        mean=float(j.mean()),
        fraction_folding=folded / n,
        fraction_outside_bounds=float(np.count_nonzero((j < low) | (j > high))) / n,
        sd_log=sd_log,
        bounds=(float(low), float(high)),
        region=region,
        notes=notes,
    )
