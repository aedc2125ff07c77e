"""A B-spline stage optimised by stochastic gradient descent on Mattes mutual information (numpy, Qt-free).

Why this exists beside SimpleITK's ``ImageRegistrationMethod``: ITK's v4 metrics evaluate the B-spline Jacobian
densely (every sample against every control point) and keep one sample set per level, so a 10 mm control grid on
a head costs minutes and over-fits its fixed samples. This module does what elastix does for the same stage
(Klein et al., IEEE TIP 2007 and IJCV 2009; Mattes et al., IEEE TMI 2003): every iteration draws *new* random
sample points, the gradient of each sample touches only the (order + 1)^dim control points whose support holds it,
and an adaptive stochastic gradient descent (ASGD) sets the step length. The optional bending-energy-like penalty
acts on the control-point grid. No Slicer-bundled library offers this (elastix is not bundled with Slicer), hence
the hand-written code; everything it produces is an ordinary ``sitk.BSplineTransform`` whose evaluation
(``displacement_at``) the tests pin against ITK's own ``TransformPoint``.

Direction and frame: the optimised B-spline ``B`` maps FIXED points to intermediate points, LPS mm, and the stage's
result is ``linear(B(x))``: fixed -> moving (the engine's ``CompositeTransform([linear, B])``).

Threads: every iteration's samples are cut into chunks of ``CHUNK`` samples (a fixed size, whatever the number of
threads); a ``ThreadPoolExecutor`` maps the per-sample work (B-spline weights, image interpolation, the gradient
scatter) over the chunks, numpy releasing the GIL inside its array operations, and the per-chunk gradients are
summed in chunk order. The arithmetic is therefore the same for 1, 2 or more threads: a run is bit-identical for
a given seed whatever the thread count. The joint histogram (small) is built once per iteration from all samples.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .geometry import image_ijk_to_lps_matrix, linear_transform_matrix_lps


class ImagesApart(RuntimeError):
    """Too few samples map inside the moving image (or its mask): the deformation moved the images apart."""


PAD = 2  # histogram bins kept free at each end for the cubic Parzen window (as in ITK's Mattes metric)
CHUNK = 1024  # samples per unit of (threaded) work; fixed, so results do not depend on the number of threads


def _bspline3(x):
    """Cubic B-spline kernel beta3 (support |x| < 2)."""
    ax = np.abs(x)
    out = np.where(ax < 1.0, (4.0 - 6.0 * ax ** 2 + 3.0 * ax ** 3) / 6.0, 0.0)
    return np.where((ax >= 1.0) & (ax < 2.0), (2.0 - ax) ** 3 / 6.0, out)


def _bspline3_derivative(x):
    ax = np.abs(x)
    s = np.sign(x)
    out = np.where(ax < 1.0, s * (-2.0 * ax + 1.5 * ax ** 2), 0.0)
    return np.where((ax >= 1.0) & (ax < 2.0), -s * 0.5 * (2.0 - ax) ** 2, out)


def _cubic_weights(t):
    """beta3(t - k) for k = 0..3 and t in [1, 2) (a sample's four neighbours along one axis), (N, 4): the closed
    form of ``_bspline3`` on its four pieces (five times faster than the general kernel)."""
    u = t - 1.0
    u2 = u * u
    u3 = u2 * u
    return np.stack([(1.0 - u) ** 3, 3.0 * u3 - 6.0 * u2 + 4.0, -3.0 * u3 + 3.0 * u2 + 3.0 * u + 1.0, u3],
                    axis=1) / 6.0


# ------------------------------------------------------------------------------------------- B-spline grid
@dataclass
class BSplineGrid:
    """The control grid of a cubic ``sitk.BSplineTransform`` in numpy form (ITK's fixed-parameter layout)."""

    size: np.ndarray  # control points per axis (mesh + 3)
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray  # dim x dim

    @classmethod
    def of(cls, tx: sitk.BSplineTransform) -> BSplineGrid:
        if tx.GetOrder() != 3:
            raise ValueError("the stochastic B-spline stage supports cubic B-splines only")
        dim = tx.GetDimension()
        fp = np.array(tx.GetFixedParameters(), dtype=float)
        return cls(fp[:dim].astype(int), fp[dim:2 * dim], fp[2 * dim:3 * dim],
                   fp[3 * dim:3 * dim + dim * dim].reshape(dim, dim))

    @property
    def dim(self) -> int:
        return len(self.size)

    @property
    def n_points(self) -> int:
        return int(np.prod(self.size))

    def weights(self, points: np.ndarray):
        """For N points (LPS mm): flat control-point indices (N, 4^dim; Fortran order, as ITK stores the
        parameters) and B-spline weights (N, 4^dim), following ITK's BSplineInterpolationWeightFunction.
        Column c = (o_0, ..., o_dim-1) in row-major order of the per-axis offsets (axis 0 slowest)."""
        cidx = ((points - self.origin) @ self.direction) / self.spacing  # D^T (x - o) / s
        start = np.floor(cidx - 1.0).astype(np.int64)
        t = cidx - start
        strides = np.concatenate([[1], np.cumprod(self.size[:-1])]).astype(np.int64)
        n, dim = len(points), self.dim
        offsets = np.stack(np.meshgrid(*[np.arange(4)] * dim, indexing="ij"), axis=-1).reshape(-1, dim)
        if np.all((start >= 0) & (start <= self.size - 4)):  # every point inside the grid's domain: no clipping
            index = (start @ strides)[:, None] + (offsets @ strides)[None, :]
        else:  # a support past the grid's edge reads the edge coefficients (never for points inside the image)
            index = np.clip(start[:, None, :] + offsets[None, :, :], 0, self.size - 1) @ strides
        weight = np.ones((n, 1))
        for a in range(dim):
            weight = (weight[:, :, None] * _cubic_weights(t[:, a])[:, None, :]).reshape(n, -1)
        return index, weight


def coefficients(tx: sitk.BSplineTransform) -> np.ndarray:
    """The parameters of ``tx`` as an (n_control_points, dim) array (row = control point, Fortran grid order)."""
    p = np.array(tx.GetParameters(), dtype=float)
    return p.reshape(tx.GetDimension(), -1).T.copy()


def set_coefficients(tx: sitk.BSplineTransform, coef: np.ndarray) -> None:
    tx.SetParameters(tuple(float(v) for v in coef.T.ravel()))


def displacement_at(grid: BSplineGrid, coef: np.ndarray, points: np.ndarray, weights=None) -> np.ndarray:
    """u(x) of the B-spline at N points (N, dim), the same as ``tx.TransformPoint(x) - x`` inside its domain
    (``weights``: ``grid.weights(points)`` when already computed)."""
    index, weight = grid.weights(points) if weights is None else weights
    return np.stack([np.einsum("nk,nk->n", weight, np.take(coef[:, d], index)) for d in range(grid.dim)], axis=1)


# ------------------------------------------------------------------------------------------- images
class _Image:
    """An image as a numpy array with its physical geometry: linear interpolation of values (and of a precomputed
    gradient) at physical points."""

    def __init__(self, image: sitk.Image, with_gradient: bool = False):
        self.dim = image.GetDimension()
        arr = sitk.GetArrayFromImage(image).astype(np.float32)  # [z, y, x]
        self.size = np.array(image.GetSize())
        m = image_ijk_to_lps_matrix(image)  # 4 x 4 (a 2D image embedded), index -> LPS
        self.index_to_lps = m[:self.dim, :self.dim]
        self.origin = m[:self.dim, 3]
        self.lps_to_index = np.linalg.inv(self.index_to_lps)
        channels = [arr]
        if with_gradient:
            # Gradient in index units (central differences), per axis in ITK order (x, y, z).
            g = np.gradient(arr)  # numpy axes are z, y, x
            channels += [g[self.dim - 1 - a].astype(np.float32) for a in range(self.dim)]
        self.data = np.stack(channels, axis=-1).reshape(-1, len(channels))
        self.strides = np.concatenate([[1], np.cumprod(self.size[:-1])]).astype(np.int64)

    def to_index(self, points):
        return (points - self.origin) @ self.lps_to_index.T

    def sample(self, points):
        """(values (N, channels), inside (N,)) at physical points; linear interpolation, outside = not inside."""
        cidx = self.to_index(points)
        inside = np.all((cidx >= 0) & (cidx <= self.size - 1), axis=1)
        cidx = np.clip(cidx, 0, self.size - 1 - 1e-6)
        base = np.floor(cidx).astype(np.int64)
        frac = cidx - base
        n = len(points)
        flat = np.zeros((n, 1), dtype=np.int64)
        w = np.ones((n, 1))
        for a in range(self.dim):  # corners (o_0, ..., o_dim-1), axis 0 slowest
            o = np.array([0, 1])
            flat = (flat[:, :, None] + np.minimum(base[:, a, None] + o, self.size[a] - 1)[:, None, :]
                    * self.strides[a]).reshape(n, -1)
            w = (w[:, :, None] * np.stack([1.0 - frac[:, a], frac[:, a]], axis=1)[:, None, :]).reshape(n, -1)
        return np.einsum("nc,ncv->nv", w, np.take(self.data, flat, axis=0)), inside

    def gradient_lps(self, index_gradient):
        """Index-space gradients (N, dim) to physical (LPS) gradients: g_lps = (index_to_lps^-1)^T g_index."""
        return index_gradient @ self.lps_to_index


# ------------------------------------------------------------------------------------------- the metric
class MattesMI:
    """Mattes mutual information of the fixed and moving intensities at N sample points, and its derivative with
    respect to the moving intensity of each sample (fixed: zero-order Parzen window; moving: cubic)."""

    def __init__(self, bins, fixed_range, moving_range):
        self.bins = int(bins)
        self.fmin, fmax = fixed_range
        self.mmin, mmax = moving_range
        self.df = max(fmax - self.fmin, 1e-12) / (self.bins - 2 * PAD)
        self.dm = max(mmax - self.mmin, 1e-12) / (self.bins - 2 * PAD)

    def value_and_sample_derivative(self, f, m):
        """(-MI (lower is better), d(-MI)/dm per sample)."""
        b = self.bins
        fb = np.clip(np.floor((f - self.fmin) / self.df) + PAD, PAD, b - PAD - 1).astype(np.int64)
        xi = np.clip((m - self.mmin) / self.dm + PAD, PAD, b - PAD - 1e-9)
        j0 = np.floor(xi).astype(np.int64) - 1
        hist = np.zeros(b * b)
        js, ws, dws = [], [], []
        for k in range(4):
            j = j0 + k
            d = j - xi
            js.append(j)
            ws.append(_bspline3(d))
            dws.append(_bspline3_derivative(d))
            hist += np.bincount(fb * b + j, weights=ws[-1], minlength=b * b)
        n = float(len(f))
        p = hist.reshape(b, b) / n
        pf = p.sum(axis=1)
        pm = p.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            nz = p > 0
            mi = float(np.sum(p[nz] * np.log(p[nz] / np.outer(pf, pm)[nz])))
            log_ratio = np.where(nz, np.log(np.where(nz, p, 1.0) / np.where(pm > 0, pm, 1.0)[None, :]), 0.0)
        # dMI/dm(x) = (1/N) sum_j log(p(i,j)/pm(j)) * d beta3(j - xi)/dm,  d beta3(j - xi)/dm = -beta3'(j - xi)/dm
        s = np.zeros(len(f))
        for j, dw in zip(js, dws):
            s += log_ratio[fb, j] * dw
        d_mi_dm = -s / (n * self.dm)
        return -mi, -d_mi_dm


# ------------------------------------------------------------------------------------------- the stage
@dataclass
class LevelImages:
    fixed: sitk.Image
    moving: sitk.Image
    fixed_sample_mask: np.ndarray | None = None  # bool array in the fixed level image's numpy order, or None


class StochasticBSplineLevel:
    """One pyramid level: optimise the coefficients of ``bspline`` (a cubic ``sitk.BSplineTransform`` over the
    fixed domain, changed in place) so that ``linear(bspline(x))`` (fixed -> moving, LPS) maximises Mattes MI."""

    def __init__(self, level: LevelImages, linear: sitk.Transform, bspline: sitk.BSplineTransform, *, bins=32,
                 moving_mask: sitk.Image | None = None, rng: np.random.Generator):
        self.dim = level.fixed.GetDimension()
        self.fixed = _Image(level.fixed)
        self.moving = _Image(level.moving, with_gradient=True)
        self.grid = BSplineGrid.of(bspline)
        self.bspline = bspline
        self.coef = coefficients(bspline)
        m = linear_transform_matrix_lps(linear, self.dim)
        self.a, self.t = m[:self.dim, :self.dim], m[:self.dim, 3]
        self.rng = rng
        farr = sitk.GetArrayViewFromImage(level.fixed)
        cand = np.ones(farr.shape, bool) if level.fixed_sample_mask is None else level.fixed_sample_mask
        self.candidates = np.flatnonzero(cand.ravel())  # numpy C order == ITK x-fastest flat index
        if self.candidates.size == 0:
            raise ValueError("no fixed voxels to sample")
        marr = sitk.GetArrayViewFromImage(level.moving)
        self.metric = MattesMI(bins, (float(farr.ravel()[self.candidates].min()), float(farr.ravel()[self.candidates].max())),
                               (float(marr.min()), float(marr.max())))
        self.moving_mask = None
        if moving_mask is not None:
            mm = sitk.Resample(moving_mask, level.moving, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
            self.moving_mask = _Image(mm)

    def _sample_points(self, n):
        flat = self.candidates[self.rng.integers(0, self.candidates.size, n)]
        idx = np.stack(np.unravel_index(flat, tuple(self.fixed.size[::-1])), axis=1)[:, ::-1].astype(float)
        idx += self.rng.uniform(-0.5, 0.5, idx.shape)  # random coordinates, not only voxel centres
        idx = np.clip(idx, 0, self.fixed.size - 1)
        return idx @ self.fixed.index_to_lps.T + self.fixed.origin

    def _map_samples(self, x):
        """Per chunk of sample points (fixed, LPS): fixed values, B-spline indices and weights, moving values and
        index gradients (channels 1:), and whether each maps inside the moving image (and its mask)."""
        f = self.fixed.sample(x)[0][:, 0]
        index, weight = self.grid.weights(x)
        u = displacement_at(self.grid, self.coef, x, (index, weight))
        y = (x + u) @ self.a.T + self.t
        mv, inside = self.moving.sample(y)
        if self.moving_mask is not None:
            inside &= self.moving_mask.sample(y)[0][:, 0] > 0.5
        return f, index, weight, mv, inside

    def _scatter(self, index, weight, mv, dcost_dm):
        """One chunk's gradient on the control grid (n_control_points, dim): each sample's A^T dM/dy times
        dcost/dm, spread over the control points that hold it by their B-spline weights."""
        grad_y = self.moving.gradient_lps(mv[:, 1:])  # dM/dy, LPS
        g_x = (dcost_dm[:, None] * grad_y) @ self.a  # chain rule through y = A (x + u) + t: A^T dM/dy
        flat = index.ravel()
        return np.stack([np.bincount(flat, weights=(weight * g_x[:, d:d + 1]).ravel(), minlength=self.grid.n_points)
                         for d in range(self.dim)], axis=1)

    def value_and_gradient(self, n_samples, executor: ThreadPoolExecutor | None = None):
        """(-MI on a fresh random sample set, gradient (n_control_points, dim), number of valid samples).

        The samples are drawn here (the generator's stream does not depend on threads), processed in chunks of
        ``CHUNK`` (on ``executor``'s threads when given) and the chunk gradients summed in chunk order."""
        x = self._sample_points(n_samples)
        chunks = [x[i:i + CHUNK] for i in range(0, len(x), CHUNK)]
        run = executor.map if executor is not None else map
        parts = list(run(self._map_samples, chunks))
        inside = [p[4] for p in parts]
        n_inside = int(sum(int(i.sum()) for i in inside))
        if n_inside < max(16, 0.05 * n_samples):
            raise ImagesApart(f"only {n_inside} of {n_samples} samples map inside the moving image")
        kept = [(f[i], index[i], weight[i], mv[i]) for (f, index, weight, mv, _), i in zip(parts, inside)]
        value, dcost_dm = self.metric.value_and_sample_derivative(np.concatenate([k[0] for k in kept]),
                                                                  np.concatenate([k[3][:, 0] for k in kept]))
        ends = np.cumsum([len(k[0]) for k in kept])
        pieces = [dcost_dm[e - len(k[0]):e] for k, e in zip(kept, ends)]
        grads = list(run(self._scatter, [k[1] for k in kept], [k[2] for k in kept], [k[3] for k in kept], pieces))
        grad = grads[0]
        for g in grads[1:]:  # a fixed order: the same sum for any number of threads
            grad = grad + g
        return value, grad, n_inside


def bending_penalty_gradient(coef: np.ndarray, grid: BSplineGrid) -> tuple[float, np.ndarray]:
    """A discrete bending energy of the control-point displacements: mean over interior control points of
    sum_axis |second difference / spacing^2|^2 (mm^-2), and its gradient with respect to the coefficients."""
    shape = tuple(grid.size[::-1]) + (grid.dim,)  # numpy order of a Fortran-flat grid: reversed axes
    c = coef.reshape(shape)
    total = 0.0
    grad = np.zeros_like(c)
    n_interior = max(1, int(np.prod(np.maximum(grid.size - 2, 1))))
    for a in range(grid.dim):
        if grid.size[a] < 3:
            continue
        h2 = grid.spacing[a] ** 2
        along = np.moveaxis(c, grid.dim - 1 - a, 0)  # views with ITK axis a first (numpy axes are reversed)
        g_along = np.moveaxis(grad, grid.dim - 1 - a, 0)
        d2 = (along[:-2] - 2 * along[1:-1] + along[2:]) / h2
        total += float(np.sum(d2 ** 2))
        g = 2 * d2 / h2
        g_along[:-2] += g
        g_along[1:-1] -= 2 * g
        g_along[2:] += g
    return total / n_interior, grad.reshape(coef.shape) / n_interior


def optimise_level(level: StochasticBSplineLevel, *, iterations=256, samples=2048, max_step_mm=1.0,
                   a_offset=20.0, alpha=0.602, bending_weight=0.0, average_last=0.0, on_iteration=None,
                   cancelled=lambda: False, threads=1):
    """Adaptive stochastic gradient descent (Klein et al. 2009) on -MI (+ bending penalty): new samples every
    iteration, step gamma_k = a / (t_k + A)^alpha with the 'time' t_k advancing only when successive gradients
    disagree. ``a`` is set so that the first step moves the most-pushed control point by about ``max_step_mm``.

    ``on_iteration(iteration, value, coef)`` is called after every iteration. ``threads`` (1 or more) share each
    iteration's sample chunks; the result is the same for any number. Returns the stop description."""
    threads = max(1, int(threads or 1))
    if threads == 1:
        return _optimise_level(level, None, iterations, samples, max_step_mm, a_offset, alpha, bending_weight,
                               average_last, on_iteration, cancelled)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bspline") as executor:
        return _optimise_level(level, executor, iterations, samples, max_step_mm, a_offset, alpha, bending_weight,
                               average_last, on_iteration, cancelled)


def _optimise_level(level, executor, iterations, samples, max_step_mm, a_offset, alpha, bending_weight,
                    average_last, on_iteration, cancelled):
    def total_gradient():
        value, g, _ = level.value_and_gradient(samples, executor)
        if bending_weight > 0:
            e, ge = bending_penalty_gradient(level.coef, level.grid)
            value += bending_weight * e
            g = g + bending_weight * ge
        return value, g

    # Step scale from a few gradients at the start (their noise included, as elastix's estimate does).
    probes = [total_gradient() for _ in range(3)]
    gmax = np.median([np.max(np.linalg.norm(g, axis=1)) for _, g in probes])
    if not np.isfinite(gmax) or gmax <= 0:
        return "no gradient: the images carry no information for the B-spline at this level"
    a = max_step_mm * (a_offset ** alpha) / gmax
    g_sq = np.mean([np.sum(g * g) for _, g in probes])
    omega = 0.1 * g_sq  # sigmoid scale: about the squared norm of one gradient
    f_min, f_max = -0.8, 1.0
    t_k = 0.0
    prev = None
    n_avg = int(round(float(average_last) * int(iterations)))
    avg = np.zeros_like(level.coef)
    for k in range(int(iterations)):
        if cancelled():
            return "cancelled"
        value, g = total_gradient()
        if prev is not None:
            x = -float(np.sum(g * prev)) / omega
            t_k = max(0.0, t_k + f_min + (f_max - f_min) / (1.0 - (f_max / f_min) * np.exp(-np.clip(x, -50, 50))))
        gamma = a / (t_k + a_offset) ** alpha
        level.coef -= gamma * g
        prev = g
        if k >= int(iterations) - n_avg:
            avg += level.coef / n_avg
        if on_iteration is not None:
            on_iteration(k, value, level.coef)
    if n_avg > 0:
        level.coef[...] = avg
    set_coefficients(level.bspline, level.coef)
    return f"maximum number of iterations ({int(iterations)}) reached"
