"""Target registration error: measured (:func:`target_registration_error`) and expected (Fitzpatrick & West).

The measured TRE of paired landmarks under a fixed -> moving transform is :func:`target_registration_error`,
used by ``register``, ``validate``, batch and the Slicer modules. The expected TRE of a rigid point-based
registration (Fitzpatrick & West, 1998) follows.

For N fiducials with isotropic, independent localisation error of RMS magnitude FLE, the expected RMS error at a
target r after a least-squares rigid registration is, to first order::

    TRE^2(r) = FLE^2 / N * (1 + 1/D * sum_k d_k^2 / f_k^2)

where the sum runs over the rotation axes (the D = 3 principal axes of the fiducial configuration in 3D; the one
axis normal to the plane in 2D), d_k is the distance of the target from axis k and f_k the RMS distance of the
fiducials from axis k (axes through the fiducials' centroid). ``FLE`` is the RMS of the whole error vector. When
both the fixed and the moving landmarks carry error, use ``sqrt(FLE_fixed^2 + FLE_moving^2)``.

Pure numpy/SimpleITK; positions and FLE in the same units (LPS mm, or pixels in 2D).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import CrossModalRegError
from ..progress import ProgressTracker


def _axes(fiducials):
    x = np.atleast_2d(np.asarray(fiducials, dtype=float))
    dim = x.shape[1]
    need = 3 if dim == 3 else 2
    if len(x) < need:
        raise CrossModalRegError(f"expected TRE needs at least {need} fiducials in {dim}D, got {len(x)}")
    c = x.mean(axis=0)
    xc = x - c
    if dim == 3:
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        if s[1] <= 1e-9 * max(s[0], 1e-12):
            raise CrossModalRegError("the fiducials are collinear: a rigid registration is not determined; "
                                     "add fiducials off that line")
        axes = vt
    else:
        if np.max(np.linalg.norm(xc, axis=1)) <= 1e-12:
            raise CrossModalRegError("all fiducials are at the same position")
        axes = None
    return x, c, axes


def _sum_ratio(x, c, axes, targets):
    xc = x - c
    t = np.atleast_2d(targets) - c
    if axes is None:  # 2D: one rotation axis, normal to the plane
        f2 = np.mean(np.sum(xc ** 2, axis=1))
        return np.sum(t ** 2, axis=1) / f2
    total = np.zeros(len(t))
    r2_x = np.sum(xc ** 2, axis=1)
    r2_t = np.sum(t ** 2, axis=1)
    for u in axes:
        f2 = np.mean(r2_x - (xc @ u) ** 2)
        d2 = r2_t - (t @ u) ** 2
        total += d2 / f2
    return total


def expected_tre(fiducials, targets, fle_rms: float) -> np.ndarray:
    """Expected RMS TRE at each target (Fitzpatrick & West 1998).

    Parameters
    ----------
    fiducials : array-like, shape (N, D)
        Fiducial (landmark) positions in the fixed space, LPS mm (or pixels in 2D).
    targets : array-like, shape (M, D)
        Target positions, same frame.
    fle_rms : float
        RMS fiducial localisation error (whole vector), same units.

    Returns
    -------
    numpy.ndarray, shape (M,)
        Expected RMS TRE, same units.
    """
    x, c, axes = _axes(fiducials)
    dim = x.shape[1]
    t = np.atleast_2d(np.asarray(targets, dtype=float))
    if t.shape[1] != dim:
        raise CrossModalRegError(f"targets have {t.shape[1]} coordinates but fiducials {dim}")
    ratio = _sum_ratio(x, c, axes, t)
    return np.sqrt(float(fle_rms) ** 2 / len(x) * (1.0 + ratio / dim))


def expected_tre_map(fiducials, reference_image: sitk.Image, fle_rms: float, *, progress=None) -> sitk.Image:
    """Expected RMS TRE at every voxel centre of ``reference_image`` (float32 image on its grid).

    ``fiducials`` are in the reference image's physical frame (LPS mm; for a 2D image, its physical 2D frame).
    ``progress`` (the library's protocol, :mod:`CrossModalRegLib.progress`) receives a report after every slice;
    ``RegistrationCancelled`` (or any exception) raised from it stops the computation.
    """
    tracker = ProgressTracker(progress, {"slices": 1.0})
    x, c, axes = _axes(fiducials)
    dim = reference_image.GetDimension()
    if x.shape[1] != dim:
        raise CrossModalRegError(f"{x.shape[1]}D fiducials for a {dim}D reference image")
    size = reference_image.GetSize()
    d = np.array(reference_image.GetDirection()).reshape(dim, dim)
    a = d @ np.diag(reference_image.GetSpacing())
    origin = np.array(reference_image.GetOrigin())
    out = np.empty(size[::-1], dtype=np.float32)  # (k, j, i) or (j, i)
    grids = [np.arange(s) for s in size[:2]]
    ii, jj = np.meshgrid(grids[0], grids[1], indexing="xy")  # shape (nj, ni)
    plane = np.column_stack([ii.ravel(), jj.ravel()])
    for k in range(size[2] if dim == 3 else 1):
        idx = plane if dim == 2 else np.column_stack([plane, np.full(len(plane), k)])
        phys = idx @ a.T + origin
        ratio = _sum_ratio(x, c, axes, phys)
        tre = np.sqrt(float(fle_rms) ** 2 / len(x) * (1.0 + ratio / dim)).reshape(size[1], size[0])
        if dim == 3:
            out[k] = tre
        else:
            out[:] = tre
        n = size[2] if dim == 3 else 1
        tracker.step("slices", (k + 1) / n, message=f"expected TRE: slice {k + 1} of {n}")
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(reference_image)
    tracker.finish("expected TRE map computed")
    return image


# ------------------------------------------------------------------------------------------ measured TRE
@dataclass(frozen=True)
class TargetRegistrationError:
    """Per landmark pair: ``mapped = T(fixed)``; ``before = |fixed - moving|`` (the identity: as the headers align
    the images); ``after = |T(fixed) - moving|``, measured in the moving space. Units of the points."""

    mapped: np.ndarray
    before: np.ndarray
    after: np.ndarray


def target_registration_error(transform_fixed_to_moving: sitk.Transform, fixed_points,
                              moving_points) -> TargetRegistrationError:
    """Distances of paired landmarks before and after ``transform_fixed_to_moving``: the one measured TRE.

    ``transform_fixed_to_moving`` maps a FIXED-space point to the MOVING space (LPS mm, or pixels for a pixel
    registration); ``fixed_points`` and ``moving_points`` are (N, D) rows of the same landmarks (see
    :func:`.pairing.pair_landmarks`). Whether a distance is a TRE or a FRE depends on whether the landmark drove
    the registration; callers say which.
    """
    fp = np.atleast_2d(np.asarray(fixed_points, dtype=float))
    mp = np.atleast_2d(np.asarray(moving_points, dtype=float))
    if fp.shape != mp.shape:
        raise CrossModalRegError(f"{len(fp)} fixed and {len(mp)} moving landmarks: pair them by label first")
    mapped = np.array([transform_fixed_to_moving.TransformPoint(tuple(map(float, p))) for p in fp]).reshape(fp.shape)
    if not np.all(np.isfinite(mapped)):
        raise CrossModalRegError("the transform maps some fixed landmarks to non-finite points "
                                 "(outside a displacement field's domain?)")
    return TargetRegistrationError(mapped, np.linalg.norm(fp - mp, axis=1), np.linalg.norm(mapped - mp, axis=1))
