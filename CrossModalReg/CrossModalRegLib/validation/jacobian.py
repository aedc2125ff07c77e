"""Jacobian determinant of a transform over a grid (2D or 3D): local area/volume change, folding, statistics.

The one implementation of the package: the post-run check (``sanity.check_result``), ``validate`` and batch all
call :func:`jacobian_determinant_image` and :func:`jacobian_statistics`.

The transform is ``transform_fixed_to_moving_lps`` (FIXED -> MOVING, LPS mm). Its Jacobian determinant
``J(x) = det(d T / d x)`` at a FIXED-space point is the ratio of the area (2D) or volume (3D) of the
corresponding moving-space region to the fixed-space one: J > 1 the moving image is locally larger, J <= 0 the
transform folds (it is not invertible there). For the other direction the determinant is ``1 / J`` at the
corresponding point.

Method: the displacement field ``u(x) = T(x) - x`` is sampled on the grid padded by one voxel, its vectors are
expressed in the grid's index axes (``D^T u``, so oblique grids are handled: without it the determinant of an
affine transform on a grid turned by 23 degrees comes out anywhere between 1.05 and 1.39 instead of 1.23), and
SimpleITK's ``DisplacementFieldJacobianDeterminant`` gives ``det(I + grad u)`` by central differences with
spacing taken into account. The padding is what makes the border right: along an axis of two voxels or more it
is extrapolated linearly from the grid (one-sided differences at the border; sampling the transform there
instead reads a B-spline outside its domain, where ITK gives no displacement: J of 2.7 at a border measured
where the inside is 0.8-1.2); along an axis one voxel thick (a 2D image as a volume) the transform itself is
sampled one voxel either side. For an affine transform the result is ``det(A)`` exactly.
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
        Maps FIXED points to MOVING points (LPS mm); any kind (linear, B-spline, displacement field, composite),
        of the grid's dimension.
    reference : SimpleITK.Image
        The grid, 2D or 3D (normally the fixed image, or :func:`coarse_grid` of it): size, spacing, origin and
        direction. A 3D grid one slice thick (a 2D image as a volume) is fine.

    Returns
    -------
    SimpleITK.Image
        Dimensionless determinant, on the reference grid.
    """
    dim = reference.GetDimension()
    if dim not in (2, 3):
        raise CrossModalRegError(f"the Jacobian map needs a 2D or 3D grid, got {dim}D")
    if transform_fixed_to_moving_lps.GetDimension() != dim:
        raise CrossModalRegError(f"the transform is {transform_fixed_to_moving_lps.GetDimension()}D but the "
                                 f"Jacobian grid is {dim}D: give a grid of the transform's dimension")
    direction = np.array(reference.GetDirection(), dtype=float).reshape(dim, dim)
    spacing = np.array(reference.GetSpacing(), dtype=float)
    padded_origin = np.array(reference.GetOrigin(), dtype=float) - direction @ spacing  # one voxel before index 0
    sampled = sitk.TransformToDisplacementField(
        transform_fixed_to_moving_lps, sitk.sitkVectorFloat64, [s + 2 for s in reference.GetSize()],
        tuple(padded_origin), tuple(spacing), tuple(direction.ravel()))
    arr = sitk.GetArrayFromImage(sampled)  # (k, j, i, component)
    del sampled  # one field less in memory (a 1 mm head's is 170 MB)
    if not np.allclose(direction, np.eye(dim), atol=1e-12):
        arr = arr @ direction  # row-vector form of D^T u
    for axis, n in enumerate(reversed(reference.GetSize())):
        if n >= 2:  # the padding layers extrapolated linearly: one-sided differences at the grid's border
            side = np.moveaxis(arr, axis, 0)  # a view: writing to it writes to arr
            side[0], side[-1] = 2 * side[1] - side[2], 2 * side[-2] - side[-3]
    field_img = sitk.GetImageFromArray(arr, isVector=True)
    del arr
    field_img.SetSpacing(tuple(spacing))
    field_img.SetOrigin(tuple(padded_origin))
    field_img.SetDirection(tuple(direction.ravel()))
    jac = sitk.DisplacementFieldJacobianDeterminant(field_img, True)
    jac = sitk.Cast(jac[(slice(1, -1),) * dim], sitk.sitkFloat32)
    jac.CopyInformation(reference)
    return jac


def coarse_grid(reference: sitk.Image, max_size: int = 64) -> sitk.Image:
    """A grid over ``reference``'s field of view with at most ``max_size`` (and at least 4) voxels per axis, same
    origin and direction: where a quick Jacobian (the post-run folding check) is computed."""
    size = np.array(reference.GetSize())
    factor = np.maximum(1.0, size / max_size)
    new_size = np.maximum(4, np.round(size / factor)).astype(int)
    new_spacing = np.array(reference.GetSpacing()) * size / new_size
    ref = sitk.Image([int(v) for v in new_size], sitk.sitkUInt8)
    ref.SetSpacing(tuple(float(v) for v in new_spacing))
    ref.SetOrigin(reference.GetOrigin())
    ref.SetDirection(reference.GetDirection())
    return ref


def linear_jacobian_statistics(transform_fixed_to_moving_lps: sitk.Transform, *,
                               bounds: tuple[float, float] = DEFAULT_BOUNDS) -> JacobianStatistics:
    """The statistics of a linear transform (2D or 3D), whose determinant ``det(A)`` is the same everywhere."""
    tx = transform_fixed_to_moving_lps
    dim = tx.GetDimension()
    origin = np.array(tx.TransformPoint((0.0,) * dim))
    a = np.array([tx.TransformPoint(tuple(e)) for e in np.eye(dim)]) - origin
    det = float(np.linalg.det(a.T))
    low, high = bounds
    return JacobianStatistics(0, det, det, det, float(det <= 0), float(det < low or det > high),
                              0.0 if det > 0 else None, tuple(bounds), "everywhere",
                              ["linear transform: the Jacobian determinant is the same everywhere"])


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
            mask = sitk.Resample(mask, jacobian, sitk.Transform(jacobian.GetDimension(), sitk.sitkIdentity),
                                 sitk.sitkNearestNeighbor, 0)
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
