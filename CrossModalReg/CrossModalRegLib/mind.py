"""MIND-SSC: a modality-independent similarity for pairs with no global intensity relation (MR-ultrasound).

Heinrich et al., "Towards realtime multimodal fusion for image-guided interventions using self-similarity context",
MICCAI 2013 (and MIND, Med Image Anal 2012). Each image is replaced by a 12-channel descriptor: for every pair of
voxels of the six-neighbourhood that are sqrt(2) apart (12 pairs), the patch distance ``D_ij(x)`` = box-filtered
squared difference of the image shifted by the two neighbours; the descriptor is ``exp(-D_ij(x) / V(x))`` with
``V(x)`` the mean of the 12 distances (the local variance estimate), as in the authors' reference implementation.
It describes the local structure (edges, speckle-free boundaries) and not the intensities, so any intensity
remapping that keeps the local structure (monotonic or not) leaves it almost unchanged. The cost is the mean
squared descriptor difference at sample points.

Why hand-written: neither SimpleITK nor anything Slicer bundles offers MIND-SSC or a registration over a vector
(12-channel) metric; elastix/ANTs/greedy are not bundled with Slicer. The descriptors use SimpleITK filters
(``BoxMean``, ``SmoothingRecursiveGaussian``) and numpy; the rigid optimiser takes Gauss-Newton directions over the
six rigid parameters with a line search (the cost is a sum of squares: no learning rate to tune); B-spline stages
use ``MindBSplineLevel`` with the stochastic B-spline optimiser (``stochastic_bspline.optimise_level``).

Sampling is OFF-GRID: sample positions are random continuous coordinates (not voxel centres). When the moving image
is on the fixed image's grid (RESECT's MR is resampled onto the ultrasound grid), grid-aligned samples make the
interpolation exact at identity only, which puts a false optimum at identity.

Direction and frame: every transform here maps FIXED points to MOVING points, LPS mm (the ITK resampling direction).
The ultrasound's field of view is found automatically as its non-zero region (an image with many exact zeros),
filled, eroded by ``erode_mm`` so that the cone's artificial edge never enters a descriptor.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .geometry import image_ijk_to_lps_matrix, linear_transform_matrix_lps

# Six-neighbourhood offsets (x, y, z) in voxels and the 12 pairs of them that are sqrt(2) apart.
_SIX = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
PAIRS = [(i, j) for i, j in itertools.combinations(range(6), 2) if np.sum((_SIX[i] - _SIX[j]) ** 2) == 2]
assert len(PAIRS) == 12
N_CHANNELS = len(PAIRS)


# ------------------------------------------------------------------------------------------- descriptors
def _shifted(arr: np.ndarray, offset_xyz, dilation: int) -> np.ndarray:
    """``arr`` (numpy z, y, x) read at x + offset * dilation, edges replicated."""
    d = int(dilation)
    pad = np.pad(arr, d, mode="edge")
    ox, oy, oz = (int(v) * d for v in offset_xyz)
    nz, ny, nx = arr.shape
    return pad[d + oz:d + oz + nz, d + oy:d + oy + ny, d + ox:d + ox + nx]


def mind_ssc(image: sitk.Image, *, radius: int = 1, dilation: int = 1, patch: str = "box") -> np.ndarray:
    """The MIND-SSC descriptor of a 3D image: float32 array (z, y, x, 12) on the image's grid, values in (0, 1].

    ``radius`` (voxels) sets the patch: a (2r+1)^3 box (``patch="box"``, as the reference implementation) or a
    Gaussian of sigma = r voxels (``"gaussian"``); ``dilation`` (voxels) the distance of the six neighbours.
    """
    if image.GetDimension() != 3:
        raise ValueError("MIND-SSC is implemented for 3D images")
    if patch not in ("box", "gaussian"):
        raise ValueError(f"patch must be 'box' or 'gaussian', got {patch!r}")
    arr = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32)).astype(np.float32)
    dist = np.empty(arr.shape + (N_CHANNELS,), np.float32)
    for c, (i, j) in enumerate(PAIRS):
        diff2 = (_shifted(arr, _SIX[i], dilation) - _shifted(arr, _SIX[j], dilation)) ** 2
        img = sitk.GetImageFromArray(diff2)
        if patch == "box":
            img = sitk.BoxMean(img, [int(radius)] * 3)
        else:
            img = sitk.SmoothingRecursiveGaussian(img, float(radius))  # unit spacing: sigma in voxels
        dist[..., c] = sitk.GetArrayViewFromImage(img)
    dist -= dist.min(axis=-1, keepdims=True)
    var = dist.mean(axis=-1, keepdims=True)
    mean_var = float(var.mean())
    var = np.clip(var, 1e-3 * mean_var + 1e-12, 1e3 * mean_var + 1e-12)
    return np.exp(-dist / var).astype(np.float32)


def field_of_view_mask(image: sitk.Image, *, erode_mm: float = 3.0) -> sitk.Image | None:
    """The non-zero field of view of an image that has one (an ultrasound cone: at least 5% of its voxels exactly
    0), its holes filled and eroded by ``erode_mm``; ``None`` when the image has no such zero background (an MR)."""
    arr = sitk.GetArrayViewFromImage(image)
    if np.mean(arr == 0) < 0.05:
        return None
    inside = sitk.Cast(image != 0, sitk.sitkUInt8)
    cc = sitk.ConnectedComponent(inside)
    inside = sitk.Cast(sitk.RelabelComponent(cc, sortByObjectSize=True) == 1, sitk.sitkUInt8)
    inside = sitk.BinaryFillhole(inside)
    if erode_mm > 0:
        radius = [max(1, int(round(erode_mm / s))) for s in image.GetSpacing()]
        inside = sitk.BinaryErode(inside, radius, sitk.sitkBall)
    if not np.any(sitk.GetArrayViewFromImage(inside)):
        raise ValueError(f"the field of view vanished after eroding by {erode_mm} mm: use a smaller erode_mm")
    return inside


# ------------------------------------------------------------------------------------------- interpolation
class DescriptorImage:
    """A multi-channel array (z, y, x, C) with its image's physical geometry; trilinear values and their exact
    spatial derivative (the derivative of the trilinear interpolant, so costs and gradients agree) at LPS points."""

    def __init__(self, descriptor: np.ndarray, geometry: sitk.Image):
        self.size = np.array(geometry.GetSize())
        if tuple(descriptor.shape[:3]) != tuple(self.size[::-1]):
            raise ValueError("descriptor and geometry disagree in size")
        m = image_ijk_to_lps_matrix(geometry)
        self.index_to_lps = m[:3, :3]
        self.origin = m[:3, 3]
        self.lps_to_index = np.linalg.inv(self.index_to_lps)
        self.data = np.ascontiguousarray(descriptor.reshape(-1, descriptor.shape[-1]))
        self.strides = np.array([1, self.size[0], self.size[0] * self.size[1]], dtype=np.int64)

    def to_index(self, points):
        return (points - self.origin) @ self.lps_to_index.T

    def sample(self, points, with_gradient=False):
        """(values (N, C), inside (N,), gradient (N, C, 3) in LPS or None)."""
        cidx = self.to_index(points)
        inside = np.all((cidx >= 0) & (cidx <= self.size - 1), axis=1)
        cidx = np.clip(cidx, 0, self.size - 1 - 1e-6)
        base = np.floor(cidx).astype(np.int64)
        frac = cidx - base
        corners = np.array(list(itertools.product((0, 1), repeat=3)))  # (8, 3)
        flat = np.zeros((len(points), 8), dtype=np.int64)
        for a in range(3):
            flat += np.minimum(base[:, a, None] + corners[None, :, a], self.size[a] - 1) * self.strides[a]
        # Per axis and corner: the 1D weight (1 - f or f) and its derivative (-1 or +1).
        w1 = np.where(corners[None, :, :] == 1, frac[:, None, :], 1.0 - frac[:, None, :])  # (N, 8, 3)
        values = self.data[flat]  # (N, 8, C)
        weight = w1[..., 0] * w1[..., 1] * w1[..., 2]
        val = np.einsum("nk,nkc->nc", weight, values)
        grad = None
        if with_gradient:
            sign = np.where(corners == 1, 1.0, -1.0)  # (8, 3)
            dw = np.stack([sign[None, :, 0] * w1[..., 1] * w1[..., 2], sign[None, :, 1] * w1[..., 0] * w1[..., 2],
                           sign[None, :, 2] * w1[..., 0] * w1[..., 1]], axis=-1)  # (N, 8, 3)
            grad = np.einsum("nkc,nkd->ncd", values, dw) @ self.lps_to_index  # dV/dy = dV/dc . dc/dy
        return val, inside, grad


# ------------------------------------------------------------------------------------------- the metric
@dataclass
class MindConfig:
    radius: int = 1
    dilation: int = 1
    patch: str = "box"
    erode_mm: float = 3.0

    @classmethod
    def from_metric(cls, metric: dict) -> MindConfig:
        return cls(radius=int(metric.get("radius", 1)), dilation=int(metric.get("dilation", 1)),
                   patch=str(metric.get("patch", "box")), erode_mm=float(metric.get("fov_erode_mm", 3.0)))


def _resample_mask(mask: sitk.Image | None, reference: sitk.Image):
    if mask is None:
        return None
    return sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


class MindLevel:
    """MIND-SSC of a fixed and a moving image (one pyramid level) and the cost at off-grid fixed sample points.

    ``fixed_mask`` / ``moving_mask``: where samples may lie (fixed space) and where their mapped points must land
    (moving space); ``None`` for the whole image. Usually the ultrasound's eroded field of view.
    """

    def __init__(self, fixed: sitk.Image, moving: sitk.Image, config: MindConfig, *, fixed_mask=None,
                 moving_mask=None):
        self.config = config
        self.fixed = DescriptorImage(mind_ssc(fixed, radius=config.radius, dilation=config.dilation,
                                              patch=config.patch), fixed)
        self.moving = DescriptorImage(mind_ssc(moving, radius=config.radius, dilation=config.dilation,
                                               patch=config.patch), moving)
        fm = _resample_mask(fixed_mask, fixed)
        cand = np.ones(tuple(self.fixed.size[::-1]), bool) if fm is None else sitk.GetArrayViewFromImage(fm) > 0
        self.candidates = np.flatnonzero(cand.ravel())
        if self.candidates.size == 0:
            raise ValueError("the fixed mask leaves no voxel to sample")
        mm = _resample_mask(moving_mask, moving)
        self.moving_mask = None if mm is None else DescriptorImage(
            sitk.GetArrayFromImage(mm).astype(np.float32)[..., None], mm)

    def sample_points(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` random off-grid points (LPS) inside the fixed mask: a random voxel, then a uniform offset of up to
        half a voxel along each axis."""
        flat = self.candidates[rng.integers(0, self.candidates.size, int(n))]
        idx = np.stack(np.unravel_index(flat, tuple(self.fixed.size[::-1])), axis=1)[:, ::-1].astype(float)
        idx += rng.uniform(-0.5, 0.5, idx.shape)
        idx = np.clip(idx, 0, self.fixed.size - 1)
        return idx @ self.fixed.index_to_lps.T + self.fixed.origin

    def fixed_values(self, points):
        return self.fixed.sample(points)[0]

    def cost(self, fixed_values, mapped_points, with_gradient=False):
        """Mean squared descriptor difference over the samples that land inside the moving image (and mask).

        Returns (cost, residuals (n_valid, C), valid (N,), dcost/dy (N, 3) or None, moving gradient (n_valid, C, 3)
        or None). ``mapped_points`` are the samples' images in moving space (LPS)."""
        mv, inside, grad = self.moving.sample(mapped_points, with_gradient=with_gradient)
        if self.moving_mask is not None:
            inside &= self.moving_mask.sample(mapped_points)[0][:, 0] > 0.5
        n_valid = int(inside.sum())
        if n_valid == 0:
            return float("nan"), None, inside, None, None
        r = mv[inside] - fixed_values[inside]
        cost = float(np.mean(r ** 2))
        if not with_gradient:
            return cost, r, inside, None, None
        g = grad[inside]
        dcost_dy = np.zeros((len(mapped_points), 3))
        dcost_dy[inside] = 2.0 / (n_valid * N_CHANNELS) * np.einsum("nc,ncd->nd", r, g)
        return cost, r, inside, dcost_dy, g


# ------------------------------------------------------------------------------------------- rigid
def _skew(v):
    """(N, 3, 3) cross-product matrices: skew(v) @ w = v x w."""
    s = np.zeros((len(v), 3, 3))
    s[:, 0, 1], s[:, 0, 2], s[:, 1, 2] = -v[:, 2], v[:, 1], -v[:, 0]
    s[:, 1, 0], s[:, 2, 0], s[:, 2, 1] = v[:, 2], -v[:, 1], v[:, 0]
    return s


def rotation_from_vector(w) -> np.ndarray:
    """Rodrigues: the rotation exp([w]_x) of a rotation vector (radians)."""
    w = np.asarray(w, float)
    theta = float(np.linalg.norm(w))
    k = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
    if theta < 1e-12:
        return np.eye(3) + k
    return np.eye(3) + np.sin(theta) / theta * k + (1 - np.cos(theta)) / theta ** 2 * (k @ k)


@dataclass
class RigidState:
    """T(x) = R (x - c) + c + t, fixed -> moving, LPS mm."""

    rotation: np.ndarray
    translation: np.ndarray
    center: np.ndarray

    @classmethod
    def of(cls, transform: sitk.Transform, center) -> RigidState:
        m = linear_transform_matrix_lps(transform, 3)
        a, t = m[:3, :3], m[:3, 3]
        u, _, vt = np.linalg.svd(a)
        r = u @ vt
        if np.linalg.det(r) < 0:
            u[:, -1] *= -1
            r = u @ vt
        c = np.asarray(center, float)
        # A x + t = R (x - c) + c + t'  =>  t' = R c + t - c
        return cls(r, r @ c + t - c, c)

    def perturbed(self, p) -> RigidState:
        """The state moved by p = (rotation vector (rad), translation (mm)): R' = exp([w]) R, t' = t + dt."""
        return RigidState(rotation_from_vector(p[:3]) @ self.rotation, self.translation + np.asarray(p[3:]),
                          self.center)

    def apply(self, x):
        return (x - self.center) @ self.rotation.T + self.center + self.translation

    def to_sitk(self) -> sitk.Euler3DTransform:
        tx = sitk.Euler3DTransform()
        tx.SetCenter(tuple(float(v) for v in self.center))
        tx.SetMatrix(tuple(float(v) for v in self.rotation.ravel()))
        tx.SetTranslation(tuple(float(v) for v in self.translation))
        return tx


def rigid_cost_and_gradient(level: MindLevel, fixed_values, points, state: RigidState, p=np.zeros(6)):
    """Cost at ``state.perturbed(p)`` and its analytic gradient with respect to p (rotation vector about the
    centre, applied on the left, then translation): dy/dw = -[q]_x with q = R'(x - c), dy/dt = I."""
    moved = state.perturbed(p)
    y = moved.apply(points)
    cost, r, inside, dcost_dy, g = level.cost(fixed_values, y, with_gradient=True)
    if r is None:
        return cost, None
    q = (points - moved.center) @ moved.rotation.T
    # d(exp([w + dw]) R q0)/d(dw) ~ -[q]_x at the current w (exact at w = 0; the optimiser always uses w = 0).
    dy_dw = -_skew(q)
    grad = np.concatenate([np.einsum("nd,ndk->k", dcost_dy, dy_dw), dcost_dy.sum(axis=0)])
    return cost, grad


def optimise_rigid_level(level: MindLevel, state: RigidState, *, samples=20000, iterations=30, rng,
                         tolerance=1e-2, on_iteration=None, cancelled=lambda: False):
    """Gauss-Newton directions with a line search over the six rigid parameters, on one fixed set of off-grid
    samples.

    The descriptor residuals stay large at the optimum (speckle, structures only one modality shows), so the
    Gauss-Newton matrix J^T J over-estimates the curvature many times and a plain Gauss-Newton step is far too
    short: the step length along the Gauss-Newton direction is searched (doubling while the cost falls, halving
    when the first step does not). Returns (state, iterations done, stop description)."""
    x = level.sample_points(samples, rng)
    fv = level.fixed_values(x)
    stop = f"maximum iterations ({iterations})"
    it = 0
    alpha = 1.0
    for it in range(iterations):
        if cancelled():
            return state, it, "cancelled"
        cost, r, inside, _, g = level.cost(fv, state.apply(x), with_gradient=True)
        if r is None:
            raise ValueError("no sample maps inside the moving image")
        q_c = (x[inside] - state.center) @ state.rotation.T
        # Residual Jacobian: dr_c/dp = g_c . dy/dp with dy/dw = -[q]_x, dy/dt = I; rows (n * C), 6 columns.
        jw = -np.einsum("ncd,nde->nce", g, _skew(q_c))
        jac = np.concatenate([jw, g], axis=2).reshape(-1, 6)
        h = jac.T @ jac
        b = jac.T @ r.reshape(-1)
        if on_iteration is not None:
            on_iteration(it, cost)
        direction = -np.linalg.solve(h + 1e-6 * np.diag(np.diag(h)) + 1e-12 * np.eye(6), b)

        def at(a, state=state, direction=direction):
            return level.cost(fv, state.perturbed(a * direction).apply(x))[0]

        a, best = alpha, at(alpha)
        if not (np.isfinite(best) and best < cost):
            while a > alpha / 64 and not (np.isfinite(best) and best < cost):
                a *= 0.5
                best = at(a)
        else:
            while a < 1024:
                c2 = at(2 * a)
                if not (np.isfinite(c2) and c2 < best):
                    break
                a, best = 2 * a, c2
        if not (np.isfinite(best) and best < cost):
            stop = "no further decrease"
            break
        step = a * direction
        state = state.perturbed(step)
        alpha = a
        # Largest displacement of the step within a 50 mm radius: rotation (rad) x 50 mm + translation.
        move = 50.0 * float(np.linalg.norm(step[:3])) + float(np.linalg.norm(step[3:]))
        if move < tolerance:
            stop = f"step below {tolerance:g} mm"
            break
    return state, it + 1, stop


def level_images(fixed: sitk.Image, moving: sitk.Image, spacing_mm: float, sigma_mm: float):
    """Copies of the two images for one level: Gaussian-smoothed by ``sigma_mm`` then resampled to about
    ``spacing_mm`` (block-average when a whole factor fits, keeping each image's own geometry)."""
    out = []
    for img in (fixed, moving):
        img = sitk.Cast(img, sitk.sitkFloat32)
        factors = [max(1, int(np.floor(spacing_mm / s + 1e-6))) for s in img.GetSpacing()]
        factors = [min(f, max(1, n // 8)) for f, n in zip(factors, img.GetSize())]
        if sigma_mm > 0:
            img = sitk.SmoothingRecursiveGaussian(img, float(sigma_mm))
        if max(factors) > 1:
            img = sitk.BinShrink(img, factors)
        out.append(img)
    return out


def fov_masks(fixed: sitk.Image, moving: sitk.Image, metric: dict, fixed_mask=None, moving_mask=None):
    """The masks the metric uses: the user's, else each image's automatic field of view (``fov_mask``: "auto"
    (default: an image with a zero background gets one), "fixed", "moving" or "none")."""
    cfg = MindConfig.from_metric(metric)
    mode = metric.get("fov_mask", "auto")
    if mode not in ("auto", "fixed", "moving", "none"):
        raise ValueError(f"fov_mask must be auto, fixed, moving or none, got {mode!r}")
    if fixed_mask is None and mode in ("auto", "fixed"):
        fixed_mask = field_of_view_mask(fixed, erode_mm=cfg.erode_mm)
    if moving_mask is None and mode in ("auto", "moving"):
        moving_mask = field_of_view_mask(moving, erode_mm=cfg.erode_mm)
    return fixed_mask, moving_mask


def register_rigid(fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform, stage: dict, *, seed: int,
                   fixed_mask=None, moving_mask=None, on_iteration=None, cancelled=lambda: False):
    """A rigid stage on MIND-SSC, coarse to fine (``level_spacing_mm`` / ``smoothing_sigmas_mm``).

    ``fixed``/``moving``: the images (raw or preprocessed) in LPS; ``initial``: a linear fixed -> moving start.
    Masks: as :func:`fov_masks` returns them. Returns (Euler3DTransform fixed -> moving (LPS), stop descriptions).
    ``on_iteration(level, iteration, cost)`` is called every iteration."""
    if fixed.GetDimension() != 3:
        raise ValueError("the MIND-SSC rigid stage is 3D only")
    metric = stage["metric"]
    cfg = MindConfig.from_metric(metric)
    spacings = [float(v) for v in stage.get("level_spacing_mm", [2.0, 1.0])]
    sigmas = [float(v) for v in stage.get("smoothing_sigmas_mm", [0.0] * len(spacings))]
    samples = stage.get("sampling", {}).get("samples_per_level", [20000] * len(spacings))
    opt = stage.get("optimizer", {})
    iterations = int(opt.get("iterations", 30))
    centre = fixed.TransformContinuousIndexToPhysicalPoint(tuple((np.array(fixed.GetSize()) - 1) / 2.0))
    if fixed_mask is not None:
        arr = np.argwhere(sitk.GetArrayViewFromImage(_resample_mask(fixed_mask, fixed)) > 0)
        if len(arr):
            centre = fixed.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in arr.mean(axis=0)[::-1]))
    state = RigidState.of(initial, centre)
    stops = []
    for level, (sp, sg, n) in enumerate(zip(spacings, sigmas, samples)):
        f_l, m_l = level_images(fixed, moving, sp, sg)
        lv = MindLevel(f_l, m_l, cfg, fixed_mask=fixed_mask, moving_mask=moving_mask)
        rng = np.random.default_rng(int(seed) + 7919 * level)
        state, _, stop = optimise_rigid_level(
            lv, state, samples=int(n), iterations=iterations, rng=rng, tolerance=float(opt.get("tolerance_mm", 1e-2)),
            on_iteration=None if on_iteration is None else (lambda it, c, level=level: on_iteration(level, it, c)),
            cancelled=cancelled)
        stops.append(f"mind_ssc rigid level {level + 1}: {stop}")
        if stop == "cancelled":
            break
    return state.to_sitk(), stops


def evaluate(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, metric: dict, *, seed=0,
             spacing_mm: float = 1.0, samples: int = 20000, fixed_mask=None, moving_mask=None) -> float:
    """The MIND-SSC cost (lower is better) of a fixed -> moving transform at fixed off-grid samples (for
    comparing a start and an end). Non-linear transforms are applied with ITK's ``TransformPoint``."""
    fixed_mask, moving_mask = fov_masks(fixed, moving, metric, fixed_mask, moving_mask)
    f_l, m_l = level_images(fixed, moving, spacing_mm, 0.0)
    lv = MindLevel(f_l, m_l, MindConfig.from_metric(metric), fixed_mask=fixed_mask, moving_mask=moving_mask)
    x = lv.sample_points(samples, np.random.default_rng(int(seed)))
    if transform.IsLinear():
        m = linear_transform_matrix_lps(transform, 3)
        y = x @ m[:3, :3].T + m[:3, 3]
    else:
        y = np.array([transform.TransformPoint(tuple(p)) for p in x])
    return lv.cost(lv.fixed_values(x), y)[0]


# ------------------------------------------------------------------------------------------- B-spline
class MindBSplineLevel:
    """One B-spline level on MIND-SSC for ``stochastic_bspline.optimise_level`` (the same interface as its
    ``StochasticBSplineLevel``: ``value_and_gradient(n)``, ``coef``, ``grid``, ``bspline``): new off-grid samples
    every call; the stage's transform is ``linear(B(x))``, fixed -> moving (LPS), B changed in place."""

    def __init__(self, level: MindLevel, linear: sitk.Transform, bspline: sitk.BSplineTransform, *,
                 rng: np.random.Generator):
        from . import stochastic_bspline as sb

        self.level = level
        self.grid = sb.BSplineGrid.of(bspline)
        self.bspline = bspline
        self.coef = sb.coefficients(bspline)
        m = linear_transform_matrix_lps(linear, 3)
        self.a, self.t = m[:3, :3], m[:3, 3]
        self.rng = rng

    def value_and_gradient(self, n_samples, points=None):
        """(cost, gradient (n_control_points, 3), number of valid samples); ``points`` (LPS) replaces the random
        draw (for tests)."""
        from .stochastic_bspline import ImagesApart

        x = self.level.sample_points(n_samples, self.rng) if points is None else points
        fv = self.level.fixed_values(x)
        index, weight = self.grid.weights(x)
        u = np.einsum("nk,nkd->nd", weight, self.coef[index])
        y = (x + u) @ self.a.T + self.t
        cost, r, inside, dcost_dy, _ = self.level.cost(fv, y, with_gradient=True)
        n_valid = int(inside.sum())
        if r is None or n_valid < max(16, 0.05 * len(x)):
            raise ImagesApart(f"only {n_valid} of {len(x)} samples map inside the moving image")
        g_x = dcost_dy @ self.a  # chain rule through y = A (x + u) + t
        grad = np.zeros((self.grid.n_points, 3))
        flat = index.ravel()
        for d in range(3):
            grad[:, d] = np.bincount(flat, weights=(weight * g_x[:, d:d + 1]).ravel(), minlength=self.grid.n_points)
        return cost, grad, n_valid
