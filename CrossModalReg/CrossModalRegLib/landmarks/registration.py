"""Point-based registration from paired landmarks (pure numpy + SimpleITK; no ``slicer``).

Every transform here maps **fixed-space points to moving-space points** (the ITK resampling direction used
throughout CrossModalReg): ``moving ~= T(fixed)``. Points are LPS millimetres (3D) or pixels (2D); the returned
SimpleITK transform works in the same frame and units.

Models: ``rigid`` (rotation + translation), ``similarity`` (+ isotropic scale), both by the closed-form
least-squares solution of Umeyama (1991) / Horn (1987); ``affine`` (linear least squares); ``tps`` (thin-plate
spline, interpolating, kernel ``r`` in 3D and ``r^2 log r`` in 2D, with an affine part).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from ..errors import CrossModalRegError

MODELS = ("rigid", "similarity", "affine", "tps")


def _check_points(fixed, moving, model, labels=None):
    x = np.atleast_2d(np.asarray(fixed, dtype=float))
    y = np.atleast_2d(np.asarray(moving, dtype=float))
    if model not in MODELS:
        raise CrossModalRegError(f"unknown model '{model}'; choose one of {', '.join(MODELS)}")
    if x.shape != y.shape:
        raise CrossModalRegError(
            f"{len(x)} fixed and {len(y)} moving landmarks ({x.shape} vs {y.shape}): pair them first "
            "(every landmark must be on both images)")
    dim = x.shape[1]
    if dim not in (2, 3):
        raise CrossModalRegError(f"landmarks must be 2D or 3D, got {dim} coordinates")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise CrossModalRegError("landmark positions contain NaN or infinite values; remove unplaced landmarks")
    need = minimum_points(model, dim)
    if len(x) < need:
        raise CrossModalRegError(
            f"a {model} transform in {dim}D needs at least {need} paired landmarks, got {len(x)}; add landmarks")
    _check_spread(x, model, dim, "fixed")
    if model in ("rigid", "similarity"):
        _check_spread(y, model, dim, "moving")
    return x, y, dim


def minimum_points(model: str, dim: int) -> int:
    """Fewest paired landmarks that determine ``model`` in ``dim`` dimensions."""
    if model in ("rigid", "similarity"):
        return dim if dim == 3 else 2
    return dim + 1


def _check_spread(points, model, dim, which):
    c = points - points.mean(axis=0)
    s = np.linalg.svd(c, compute_uv=False)
    scale = max(float(s[0]), 1e-12)
    rank = int(np.sum(s > 1e-9 * scale)) if s[0] > 1e-12 else 0
    if rank == 0:
        raise CrossModalRegError(f"all {which} landmarks are at the same position; place them apart")
    need_rank = dim if model in ("affine", "tps") else (2 if dim == 3 else 1)
    if rank < need_rank:
        shape = "on one line (collinear)" if rank == 1 else "in one plane (coplanar)"
        raise CrossModalRegError(
            f"the {which} landmarks are {shape}: a {model} transform in {dim}D is not determined by them; "
            "add landmarks off that " + ("line" if rank == 1 else "plane"))


def fit_matrix_fixed_to_moving(fixed, moving, *, model: str = "affine") -> np.ndarray:
    """Least-squares homogeneous matrix (dim+1 square) mapping fixed points to moving points.

    ``model`` is ``rigid``, ``similarity`` (Umeyama 1991, reflections excluded) or ``affine``.
    """
    x, y, dim = _check_points(fixed, moving, model)
    if model == "tps":
        raise CrossModalRegError("a thin-plate spline has no matrix; use ThinPlateSpline")
    m = np.eye(dim + 1)
    if model == "affine":
        xh = np.column_stack([x, np.ones(len(x))])
        sol, *_ = np.linalg.lstsq(xh, y, rcond=None)
        m[:dim, :] = sol.T
        return m
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mx, y - my
    cov = yc.T @ xc / len(x)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(dim)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    r = u @ np.diag(d) @ vt
    scale = 1.0
    if model == "similarity":
        var_x = np.mean(np.sum(xc ** 2, axis=1))
        scale = float(np.sum(s * d) / var_x)
    m[:dim, :dim] = scale * r
    m[:dim, dim] = my - scale * r @ mx
    return m


class ThinPlateSpline:
    """Interpolating thin-plate spline mapping fixed points to moving points (``moving = f(fixed)``).

    Kernel ``U(r) = r`` in 3D and ``r^2 log r`` in 2D, plus an affine part; units and frame as the points.
    ``regularization`` (>= 0, in kernel units) relaxes exact interpolation.
    """

    def __init__(self, fixed, moving, *, regularization: float = 0.0):
        x, y, dim = _check_points(fixed, moving, "tps")
        self.dimension = dim
        self.control_points = x
        n = len(x)
        k = self._kernel(x, x) + regularization * np.eye(n)
        p = np.column_stack([np.ones(n), x])
        a = np.zeros((n + dim + 1, n + dim + 1))
        a[:n, :n], a[:n, n:], a[n:, :n] = k, p, p.T
        b = np.zeros((n + dim + 1, dim))
        b[:n] = y
        try:
            sol = np.linalg.solve(a, b)
        except np.linalg.LinAlgError as exc:
            raise CrossModalRegError("the thin-plate spline system is singular: two landmarks coincide") from exc
        self.weights, self.affine = sol[:n], sol[n:]

    def _kernel(self, a, b):
        r = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
        if self.dimension == 3:
            return r
        with np.errstate(divide="ignore", invalid="ignore"):
            k = r ** 2 * np.log(r)
        return np.nan_to_num(k)

    def transform_points(self, points_fixed) -> np.ndarray:
        """Map fixed-space points (N, dim) to moving space."""
        p = np.atleast_2d(np.asarray(points_fixed, dtype=float))
        return self._kernel(p, self.control_points) @ self.weights + np.column_stack([np.ones(len(p)), p]) @ self.affine

    def to_displacement_field_transform(self, reference_image: sitk.Image) -> sitk.DisplacementFieldTransform:
        """A SimpleITK displacement-field transform (fixed -> moving) sampled on ``reference_image``'s grid."""
        size = reference_image.GetSize()
        idx = np.stack(np.meshgrid(*[np.arange(s) for s in size], indexing="ij"), axis=-1).reshape(-1, len(size))
        d = np.array(reference_image.GetDirection()).reshape(len(size), len(size))
        phys = idx * np.array(reference_image.GetSpacing()) @ d.T + np.array(reference_image.GetOrigin())
        disp = np.empty_like(phys)
        for start in range(0, len(phys), 20000):
            chunk = phys[start:start + 20000]
            disp[start:start + 20000] = self.transform_points(chunk) - chunk
        arr = disp.reshape(*size, len(size)).transpose(*reversed(range(len(size))), len(size))
        field_image = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=True)
        field_image.CopyInformation(reference_image)
        return sitk.DisplacementFieldTransform(sitk.Cast(field_image, sitk.sitkVectorFloat64))


@dataclass
class PointRegistrationResult:
    """A point-based registration and its errors. Distances in ``units`` (mm or pixels).

    Attributes
    ----------
    matrix_fixed_to_moving : numpy.ndarray or None
        Homogeneous matrix mapping fixed points to moving points (None for ``tps``).
    transform_fixed_to_moving : SimpleITK.Transform or None
        The same mapping as a SimpleITK transform in the points' frame (LPS for 3D; pixels for 2D).
    fre : numpy.ndarray
        Per-landmark fiducial registration error ``|T(fixed_i) - moving_i|``.
    loo_tre : numpy.ndarray
        Per-landmark leave-one-out target registration error: ``T`` refitted without landmark i, error at i;
        NaN when the remaining landmarks do not determine the model.
    """

    model: str
    labels: list[str]
    fixed_points: np.ndarray
    moving_points: np.ndarray
    units: str
    matrix_fixed_to_moving: np.ndarray | None
    transform_fixed_to_moving: sitk.Transform | None
    tps: ThinPlateSpline | None
    fre: np.ndarray
    loo_tre: np.ndarray
    notes: list[str] = field(default_factory=list)

    @property
    def fre_rms(self) -> float:
        return float(np.sqrt(np.mean(self.fre ** 2)))

    @property
    def loo_tre_rms(self) -> float:
        v = self.loo_tre[np.isfinite(self.loo_tre)]
        return float(np.sqrt(np.mean(v ** 2))) if v.size else float("nan")

    def map_fixed_to_moving(self, points_fixed) -> np.ndarray:
        """Map fixed-space points (N, dim) to moving space with the fitted model."""
        return _apply(self.model, self.matrix_fixed_to_moving, self.tps, points_fixed)


def _apply(model, matrix, tps, points):
    p = np.atleast_2d(np.asarray(points, dtype=float))
    if model == "tps":
        return tps.transform_points(p)
    dim = p.shape[1]
    return p @ matrix[:dim, :dim].T + matrix[:dim, dim]


def _fit(model, x, y):
    if model == "tps":
        return None, ThinPlateSpline(x, y)
    return fit_matrix_fixed_to_moving(x, y, model=model), None


def sitk_transform_from_matrix(matrix_fixed_to_moving, model: str) -> sitk.Transform:
    """SimpleITK transform (same direction: fixed -> moving) from a homogeneous matrix of dimension 2 or 3."""
    m = np.asarray(matrix_fixed_to_moving, dtype=float)
    dim = m.shape[0] - 1
    if model == "rigid":
        tx = sitk.Euler3DTransform() if dim == 3 else sitk.Euler2DTransform()
        tx.SetMatrix(tuple(m[:dim, :dim].ravel()))
        tx.SetTranslation(tuple(m[:dim, dim]))
        return tx
    tx = sitk.AffineTransform(dim)
    tx.SetMatrix(tuple(m[:dim, :dim].ravel()))
    tx.SetTranslation(tuple(m[:dim, dim]))
    return tx


def register_points(fixed_points, moving_points, *, model: str = "affine", labels=None, units: str = "mm",
                    leave_one_out: bool = True) -> PointRegistrationResult:
    """Fit ``model`` so that ``moving ~= T(fixed)`` and report FRE and leave-one-out TRE.

    Parameters
    ----------
    fixed_points, moving_points : array-like, shape (N, dim)
        Paired landmarks (row i of both is the same landmark), LPS mm (3D) or pixels (2D).
    model : {"rigid", "similarity", "affine", "tps"}
    labels : sequence of str, optional
        Landmark names (for tables and messages).

    Raises
    ------
    CrossModalRegError
        Too few points, collinear/coplanar points, unpaired arrays, non-finite values.
    """
    x, y, dim = _check_points(fixed_points, moving_points, model)
    labels = [str(v) for v in labels] if labels is not None else [str(i + 1) for i in range(len(x))]
    matrix, tps = _fit(model, x, y)
    fre = np.linalg.norm(_apply(model, matrix, tps, x) - y, axis=1)
    loo = np.full(len(x), np.nan)
    notes = []
    if leave_one_out:
        for i in range(len(x)):
            keep = np.arange(len(x)) != i
            try:
                m_i, t_i = _fit(model, x[keep], y[keep])
            except CrossModalRegError:
                notes.append(f"leave-one-out TRE of '{labels[i]}' not computed: the other landmarks do not "
                             f"determine a {model} transform")
                continue
            loo[i] = float(np.linalg.norm(_apply(model, m_i, t_i, x[i:i + 1])[0] - y[i]))
    transform = sitk_transform_from_matrix(matrix, model) if matrix is not None else None
    if model == "tps":
        notes.append("FRE of an interpolating thin-plate spline is 0 by construction; judge it by the "
                     "leave-one-out TRE")
    return PointRegistrationResult(model, labels, x, y, units, matrix, transform, tps, fre, loo, notes)

