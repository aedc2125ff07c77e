"""Coordinate frames and transform directions: the one place where LPS meets RAS.

ITK, SimpleITK and image files use **LPS** (x to the patient's Left, y Posterior, z Superior).
Slicer's MRML uses **RAS**. With ``F = diag(-1, -1, 1)``:

* a point: ``p_ras = F @ p_lps``;
* an image grid: ``IJKToRAS[:3, :3] = F @ D @ diag(spacing)`` and ``IJKToRAS[:3, 3] = F @ origin``
  (``D`` the direction cosines, ``origin`` in LPS); the numpy voxel order ``(k, j, i)`` is the same on both sides;
* a homogeneous transform matrix: ``M_ras = F4 @ M_lps @ F4`` with ``F4 = diag(-1, -1, 1, 1)``; the direction
  of the mapping does not change.

2D images (histology, BrainWeb slices) are embedded in 3D with ``z = 0`` and an identity third axis.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .errors import CrossModalRegError

F3 = np.diag([-1.0, -1.0, 1.0])
F4 = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras_points(points_lps) -> np.ndarray:
    """Convert an (N, 3) or (3,) array of LPS points to RAS (and back: the map is its own inverse).

    2D points (N, 2) are embedded with z = 0 first.
    """
    pts = np.asarray(points_lps, dtype=float)
    single = pts.ndim == 1
    pts = np.atleast_2d(pts)
    if pts.shape[1] == 2:
        pts = np.column_stack([pts, np.zeros(len(pts))])
    if pts.shape[1] != 3:
        raise ValueError(f"points must have 2 or 3 coordinates, got shape {pts.shape}")
    out = pts * np.array([-1.0, -1.0, 1.0])
    return out[0] if single else out


ras_to_lps_points = lps_to_ras_points


def image_ijk_to_lps_matrix(image: sitk.Image) -> np.ndarray:
    """4x4 matrix mapping voxel indices (i, j, k) to LPS mm. A 2D image is embedded (k -> z, unit spacing)."""
    dim = image.GetDimension()
    direction = np.array(image.GetDirection(), dtype=float).reshape(dim, dim)
    spacing = np.array(image.GetSpacing(), dtype=float)
    origin = np.array(image.GetOrigin(), dtype=float)
    m = np.eye(4)
    m[:dim, :dim] = direction @ np.diag(spacing)
    m[:dim, 3] = origin
    return m


def image_ijk_to_ras_matrix(image: sitk.Image) -> np.ndarray:
    """4x4 IJKToRAS matrix of a SimpleITK image, as a Slicer volume node of the same grid has it."""
    return F4 @ image_ijk_to_lps_matrix(image)


def linear_transform_matrix_lps(transform: sitk.Transform, dimension: int | None = None) -> np.ndarray:
    """Homogeneous 4x4 matrix (LPS) of a linear SimpleITK transform, including composites of linear transforms.

    The matrix has the same direction as ``transform`` (for a registration result, fixed -> moving).
    A 2D transform is embedded in 3D (z unchanged). Raises ``ValueError`` for a non-linear transform.
    """
    if not transform.IsLinear():
        raise ValueError(f"{transform.GetName()} is not linear; convert it through a file or a displacement field")
    dim = dimension or transform.GetDimension()
    origin = np.zeros(dim)
    t0 = np.array(transform.TransformPoint(tuple(origin)))
    a = np.zeros((dim, dim))
    for c in range(dim):
        e = np.zeros(dim)
        e[c] = 1.0
        a[:, c] = np.array(transform.TransformPoint(tuple(e))) - t0
    m = np.eye(4)
    m[:dim, :dim] = a
    m[:dim, 3] = t0
    return m


def linear_transform_matrix_ras(transform: sitk.Transform) -> np.ndarray:
    """4x4 RAS matrix of a linear SimpleITK (LPS) transform; same mapping direction."""
    return F4 @ linear_transform_matrix_lps(transform) @ F4


def affine_transform_from_matrix_lps(matrix_lps, dimension: int = 3) -> sitk.AffineTransform:
    """SimpleITK AffineTransform from a homogeneous 4x4 LPS matrix (the direction is kept as given)."""
    m = np.asarray(matrix_lps, dtype=float)
    tx = sitk.AffineTransform(dimension)
    tx.SetMatrix(tuple(m[:dimension, :dimension].ravel()))
    tx.SetTranslation(tuple(m[:dimension, 3]))
    return tx


def transform_points(transform: sitk.Transform, points) -> np.ndarray:
    """Apply a SimpleITK transform to an (N, dim) array of points (in the transform's frame, usually LPS)."""
    pts = np.atleast_2d(np.asarray(points, dtype=float))
    return np.array([transform.TransformPoint(tuple(map(float, p))) for p in pts])


def fsl_flirt_matrix_to_world_lps(matrix, source: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """An FSL FLIRT matrix (``source`` -> ``reference``, FSL's scaled-voxel convention) as a 4x4 world transform
    mapping SOURCE points to REFERENCE points in LPS mm.

    FLIRT works in 'scaled voxel' coordinates: voxel index times voxel size, with the first axis mirrored
    (i -> n_i - 1 - i) when the image's RAS voxel-to-world matrix has a positive determinant (the usual NIfTI
    storage). With A the index -> LPS matrix ITK reads and S the index -> scaled-voxel matrix of each image:
    ``world_ref = A_ref S_ref^-1 M S_src A_src^-1 world_src``. (FLIRT's ``-in`` is the source, ``-ref`` the
    reference; a registration result fixed -> moving with fixed = reference is the inverse of this matrix.)
    """

    def scaled(img):
        n = np.array(img.GetSize())
        sp = np.array(img.GetSpacing())
        a = image_ijk_to_lps_matrix(img)
        s = np.diag([*sp, 1.0])
        if np.linalg.det(F3 @ a[:3, :3]) > 0:
            flip = np.eye(4)
            flip[0, 0], flip[0, 3] = -1.0, (n[0] - 1) * sp[0]
            s = flip @ s
        return s, a

    s_src, a_src = scaled(source)
    s_ref, a_ref = scaled(reference)
    return a_ref @ np.linalg.inv(s_ref) @ np.asarray(matrix, float) @ s_src @ np.linalg.inv(a_src)


def linear_transform_in_plane(transform: sitk.Transform) -> sitk.AffineTransform:
    """The 2D (x, y) part of a linear 3D transform, for 2D images shown in Slicer as one-slice volumes (z = 0)."""
    m3 = linear_transform_matrix_lps(transform, 3)
    m2 = np.eye(4)
    m2[:2, :2], m2[:2, 3] = m3[:2, :2], m3[:2, 3]
    return affine_transform_from_matrix_lps(m2, 2)


def embed_3d(tx: sitk.Transform) -> sitk.Transform:
    """A 2D transform as the 3D one Slicer needs (z unchanged); 3D transforms are returned as they are.

    Used wherever a 2D result meets MRML or a 3D-only tool: the scene builder, the module, batch validation."""
    if tx.GetDimension() == 3:
        return tx
    if tx.IsLinear():
        return affine_transform_from_matrix_lps(linear_transform_matrix_lps(tx, 2), 3)
    # A 2D deformable result: sample it as a 3D displacement field one slice thick (exact at z = 0).
    return _embed_2d_deformable(tx)


def embed_3d_image(image: sitk.Image | None) -> sitk.Image | None:
    """A 2D image as the one-slice volume a 3D-only step takes (z = 0, 1 mm thick); 3D images (and None) as they
    are. Goes with :func:`embed_3d` for its transform and :func:`embed_3d_points` for its points."""
    return image if image is None or image.GetDimension() == 3 else sitk.JoinSeries(image)


def embed_3d_points(points) -> np.ndarray:
    """(N, 2) points of a 2D image's plane as (N, 3) with z = 0; (N, 3) points as they are."""
    p = np.asarray(points, dtype=float)
    return np.column_stack([p, np.zeros(len(p))]) if p.ndim == 2 and p.shape[1] == 2 else p


def _embed_2d_deformable(tx):
    """Sample a 2D deformable transform on a 1 mm-ish grid over its B-spline domain as a one-slice 3D field."""
    comps = ([tx.GetNthTransform(i) for i in range(tx.GetNumberOfTransforms())]
             if tx.GetName() == "CompositeTransform" else [tx])
    bs = [c for c in comps if c.GetName() == "BSplineTransform"]
    if not bs:
        raise CrossModalRegError(f"cannot show a 2D {tx.GetName()} in Slicer")
    fp = np.array(sitk.BSplineTransform(bs[-1]).GetFixedParameters())  # size(2) origin(2) spacing(2) direction(4)
    size, origin, spacing = fp[0:2], fp[2:4], fp[4:6]
    n = [int(size[0]) * 4, int(size[1]) * 4]
    sp = (float(spacing[0]) / 4, float(spacing[1]) / 4)
    field2d = sitk.TransformToDisplacementField(tx, sitk.sitkVectorFloat64, n, tuple(map(float, origin)), sp,
                                                tuple(map(float, fp[6:10])))
    arr2 = sitk.GetArrayFromImage(field2d)
    arr = np.zeros((1, arr2.shape[0], arr2.shape[1], 3))
    arr[0, :, :, :2] = arr2
    field = sitk.GetImageFromArray(arr, isVector=True)
    d2 = np.array(field2d.GetDirection()).reshape(2, 2)
    d3 = np.eye(3)
    d3[:2, :2] = d2
    field.SetSpacing((sp[0], sp[1], 1.0))
    field.SetOrigin((float(origin[0]), float(origin[1]), 0.0))
    field.SetDirection(tuple(d3.ravel()))
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
