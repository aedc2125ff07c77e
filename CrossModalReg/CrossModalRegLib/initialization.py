"""Initial transforms (fixed -> moving, LPS): image centres, moments, paired landmarks, and a coarse rotation search."""

from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk

from .errors import CrossModalRegError, NoOverlapError, RegistrationCancelled
from .preprocessing import foreground_mask
from .progress import ProgressTracker


def _rigid(dim):
    return sitk.Euler3DTransform() if dim == 3 else sitk.Euler2DTransform()


def set_rotation_matrix(tx, r) -> None:
    """Set the rotation of a rigid transform from a matrix, away from gimbal lock.

    ITK's Euler3DTransform (Z-X-Y order by default) loses a degree of freedom when its X angle is +-90 degrees:
    a scan turned 90 degrees about L-R then optimises badly (2.4 mm instead of 0.05 mm measured on a simulated
    CT). When the rotation is within 30 degrees of that lock, the Z-Y-X order is used instead (whose lock, at a Y
    angle of +-90 degrees, is then far away; the two cannot both be near). The order is stored in the transform's
    fixed parameters, so written transforms read back the same.
    """
    r = np.asarray(r, float)
    if isinstance(tx, sitk.Euler3DTransform):
        tx.SetComputeZYX(bool(abs(r[2, 1]) > np.cos(np.deg2rad(30.0))))  # Z-X-Y: sin(angle X) = r[2, 1]
    tx.SetMatrix(tuple(r.ravel()))


def check_landmark_pairs(fixed_landmarks, moving_landmarks, dim: int):
    """Validate paired landmarks for a rigid fit; return (fixed, moving) float arrays of shape (N, dim)."""
    if fixed_landmarks is None or moving_landmarks is None:
        which = "moving" if fixed_landmarks is not None else "fixed"
        raise CrossModalRegError(f"landmark initialisation needs both fixed and moving landmarks; {which} ones are missing")
    f = np.atleast_2d(np.asarray(fixed_landmarks, dtype=float))
    m = np.atleast_2d(np.asarray(moving_landmarks, dtype=float))
    if f.shape[1] == 3 and dim == 2:
        f, m = f[:, :2], m[:, :2]
    if f.shape[1] != dim or m.shape[1] != dim:
        raise CrossModalRegError(f"landmarks must have {dim} coordinates for {dim}D images, got {f.shape[1]} and {m.shape[1]}")
    if len(f) != len(m):
        raise CrossModalRegError(
            f"{len(f)} fixed landmarks but {len(m)} moving landmarks: every landmark needs a partner (pair them by label)"
        )
    if len(f) < 3:
        raise CrossModalRegError(f"landmark initialisation needs at least 3 landmark pairs, got {len(f)}: place more")
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(m))):
        raise CrossModalRegError("a landmark has a NaN or infinite coordinate: place it or remove it")
    for name, pts in (("fixed", f), ("moving", m)):
        s = np.linalg.svd(pts - pts.mean(axis=0), compute_uv=False)
        if dim == 3 and (s[1] < 1e-3 * max(s[0], 1e-12)):
            raise CrossModalRegError(f"the {name} landmarks are (nearly) collinear: a rigid fit is undetermined; "
                                     "place landmarks that span the anatomy")
        if s[0] < 1e-9:
            raise CrossModalRegError(f"the {name} landmarks all coincide")
    return f, m


def landmark_rigid_transform(fixed_landmarks, moving_landmarks, dim: int) -> sitk.Transform:
    """Least-squares rigid transform mapping fixed landmarks onto moving ones (fixed -> moving, LPS).

    Uses ITK's LandmarkBasedTransformInitializer (a closed-form, Horn-type fit).
    """
    base = sitk.VersorRigid3DTransform() if dim == 3 else sitk.Euler2DTransform()
    tx = sitk.LandmarkBasedTransformInitializer(
        base, [float(v) for v in np.ravel(fixed_landmarks)], [float(v) for v in np.ravel(moving_landmarks)]
    )
    if dim == 3:
        eu = sitk.Euler3DTransform()
        eu.SetCenter(tx.GetCenter())
        eu.SetMatrix(tx.GetMatrix())
        eu.SetTranslation(tx.GetTranslation())
        return eu
    return sitk.Euler2DTransform(tx)


def initial_transform(fixed, moving, method: str, *, fixed_landmarks=None, moving_landmarks=None):
    """A rigid starting transform (fixed -> moving, LPS) and a dict describing how it was made."""
    dim = fixed.GetDimension()
    if method == "landmarks":
        tx = landmark_rigid_transform(fixed_landmarks, moving_landmarks, dim)
        resid = np.linalg.norm(
            np.array([tx.TransformPoint(tuple(p)) for p in fixed_landmarks]) - moving_landmarks, axis=1
        )
        return tx, {"method": "landmarks", "pairs": int(len(fixed_landmarks)),
                    "landmark_rms_residual_mm": float(np.sqrt(np.mean(resid ** 2)))}
    if method in ("moments", "geometry"):
        mode = (sitk.CenteredTransformInitializerFilter.MOMENTS if method == "moments"
                else sitk.CenteredTransformInitializerFilter.GEOMETRY)
        try:
            tx = sitk.CenteredTransformInitializer(_positive(fixed), _positive(moving), _rigid(dim), mode)
        except RuntimeError as exc:
            raise CrossModalRegError(f"{method} initialisation failed ({exc}); try 'geometry' or landmarks") from exc
        tx = sitk.Euler3DTransform(tx) if dim == 3 else sitk.Euler2DTransform(tx)
        return tx, {"method": method, "translation_mm": list(tx.GetTranslation()), "center_mm": list(tx.GetCenter())}
    if method == "none":
        tx = _rigid(dim)
        tx.SetCenter(_image_center(fixed))
        return tx, {"method": "none"}
    raise CrossModalRegError(f"unknown initialisation '{method}'")


def _positive(image):
    """Shift intensities so the minimum is 0 (centre of mass needs non-negative weights, e.g. CT in HU)."""
    arr_min = float(sitk.GetArrayViewFromImage(image).min())
    return image - arr_min if arr_min < 0 else image


def _image_center(image):
    size = np.array(image.GetSize(), dtype=float)
    return image.TransformContinuousIndexToPhysicalPoint(tuple((size - 1) / 2.0))


def overlap_fraction(fixed, moving, transform, *, fixed_mask=None, max_points: int = 20000, seed: int = 0) -> float:
    """Fraction of the fixed foreground (mask, or Otsu foreground) that maps inside the moving image's grid."""
    from .geometry import image_ijk_to_lps_matrix, linear_transform_matrix_lps

    mask = fixed_mask if fixed_mask is not None else foreground_mask(fixed)
    idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    if len(idx) == 0:
        return 0.0
    rng = np.random.RandomState(seed)
    if len(idx) > max_points:
        idx = idx[rng.choice(len(idx), max_points, replace=False)]
    dim = mask.GetDimension()
    ijk = np.column_stack([idx[:, ::-1].astype(float), np.ones(len(idx))]) if dim == 3 else np.column_stack(
        [idx[:, ::-1].astype(float), np.zeros(len(idx)), np.ones(len(idx))])
    pts = (ijk @ image_ijk_to_lps_matrix(mask).T)[:, :dim]
    if transform.IsLinear():
        m = linear_transform_matrix_lps(transform, dim)
        moved = pts @ m[:dim, :dim].T + m[:dim, 3]
    else:
        moved = np.array([transform.TransformPoint(tuple(p)) for p in pts])
    to_index = np.linalg.inv(image_ijk_to_lps_matrix(moving))
    q = (np.column_stack([moved, np.zeros((len(moved), 3 - dim)), np.ones(len(moved))]) @ to_index.T)[:, :dim]
    size = np.array(moving.GetSize())
    inside = np.all((q >= -0.5) & (q <= size - 0.5), axis=1)
    return float(np.mean(inside))


def check_overlap(fixed, moving, transform, *, fixed_mask=None, when="", minimum=0.02):
    frac = overlap_fraction(fixed, moving, transform, fixed_mask=fixed_mask, max_points=4000)
    if frac < minimum:
        raise NoOverlapError(
            f"the fixed and moving images do not overlap {when} ({100 * frac:.1f}% of the fixed foreground maps "
            "inside the moving image): check that both images are in the same physical space (origin, direction), "
            "or initialise with landmarks or a transform"
        )
    return frac


def _coarse_inputs(fixed, moving, fixed_mask, moving_mask, coarse_mm):
    """The two images at ``coarse_mm`` and their masks on those grids (None stays None), for the searches."""
    f_c, m_c = coarse_copy(fixed, coarse_mm), coarse_copy(moving, coarse_mm)
    fm = sitk.Resample(fixed_mask, f_c, sitk.Transform(), sitk.sitkNearestNeighbor) if fixed_mask is not None else None
    mm = sitk.Resample(moving_mask, m_c, sitk.Transform(), sitk.sitkNearestNeighbor) if moving_mask is not None else None
    return f_c, m_c, fm, mm


def coarse_copy(image, spacing_mm: float) -> sitk.Image:
    """Block-average (BinShrink) to about ``spacing_mm`` voxels: smoothing and down-sampling in one cheap pass."""
    factors = [max(1, int(round(spacing_mm / s))) for s in image.GetSpacing()]
    factors = [min(f, max(1, n // 8)) for f, n in zip(factors, image.GetSize())]
    return sitk.BinShrink(image, factors) if max(factors) > 1 else image



def _search_progress(progress, cancel):
    """The searches' ``report(fraction)``, ``cancelled()`` and ``finish()`` from the library's progress protocol."""
    tracker = ProgressTracker(progress, {"search": 1.0}, cancel=cancel)
    return (lambda f: tracker.update("search", f, message="searching")), tracker.cancelled, tracker.finish


def rotation_search(fixed, moving, start, *, metric, config, seed, fixed_mask=None, moving_mask=None,
                    progress=None, cancel=None):
    """Coarse search over rotations about the start's centre, for large initial misalignment.

    Evaluates the metric on a coarse copy of both images for a grid of rotations (every ``step_deg`` up to
    ``max_angle_deg`` about each axis), then refines the ``top_k`` best with a short rigid optimisation at that
    resolution and keeps the best. Returns (transform fixed -> moving LPS, info dict). ``progress`` receives
    :class:`~CrossModalRegLib.progress.Progress` reports; it (by raising ``RegistrationCancelled``) or ``cancel``
    stops the search with ``RegistrationCancelled``.
    """
    report, cancelled, finish = _search_progress(progress, cancel)
    from .metrics import metric_method

    dim = fixed.GetDimension()
    coarse_mm = float(config.get("coarse_spacing_mm", 6.0 if dim == 3 else 3.0))
    sample_fraction = float(config.get("sample_fraction", 0.3))
    max_angle = float(config.get("max_angle_deg", 30.0))
    step = float(config.get("step_deg", 15.0))
    top_k = int(config.get("top_k", 3))
    refine_iterations = int(config.get("refine_iterations", 60))
    f_c, m_c, fm, mm = _coarse_inputs(fixed, moving, fixed_mask, moving_mask, coarse_mm)

    angles = np.deg2rad(np.arange(-max_angle, max_angle + 1e-9, step))
    if dim == 3:
        grid = list(itertools.product(angles, angles, angles))
    else:
        grid = [(a,) for a in angles]
    start_r = np.array(start.GetMatrix()).reshape(dim, dim)
    center = np.array(start.GetCenter())
    start_t = np.array(start.GetTranslation())

    def candidate(angles_xyz):
        tx = _rigid(dim)
        tx.SetCenter(tuple(center))
        if dim == 3:
            rot = sitk.Euler3DTransform((0, 0, 0), *angles_xyz)
        else:
            rot = sitk.Euler2DTransform((0, 0), angles_xyz[0])
        r = start_r @ np.array(rot.GetMatrix()).reshape(dim, dim)
        set_rotation_matrix(tx, r)
        tx.SetTranslation(tuple(start_t))
        return tx

    def new_method():
        return metric_method(metric, fraction=sample_fraction, strategy="regular", seed=int(seed), fixed_mask=fm,
                             moving_mask=mm)

    scores = _grid_scores_exhaustive(new_method(), f_c, m_c, start, center, angles, dim, cancelled)
    if scores is None:  # a grid rotation left too few samples inside the moving image: score one by one
        scores = []
        method = new_method()
        for i, ang in enumerate(grid):
            if cancelled():
                raise RegistrationCancelled()
            tx = candidate(ang)
            method.SetInitialTransform(tx, inPlace=False)
            try:
                value = method.MetricEvaluate(f_c, m_c)
            except RuntimeError:  # too few samples overlap for this rotation
                value = np.inf
            scores.append((float(value), i))
            if i % 8 == 0:
                report(0.5 * (i + 1) / len(grid))
    report(0.5)
    scores.sort()
    zero = int(np.argmin([np.abs(np.asarray(g)).sum() for g in grid]))  # the start's own orientation
    chosen = [i for _, i in scores[:top_k]]
    if zero not in chosen:
        chosen.append(zero)
    refined = []
    for rank, i in enumerate(chosen):
        if cancelled():
            raise RegistrationCancelled()
        tx = candidate(grid[i])
        method = new_method()
        method.SetOptimizerAsRegularStepGradientDescent(learningRate=coarse_mm, minStep=0.05, numberOfIterations=refine_iterations,
                                                        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetInitialTransform(tx, inPlace=True)

        def stop_if_cancelled(method=method):
            if cancelled():
                method.StopRegistration()

        method.AddCommand(sitk.sitkIterationEvent, stop_if_cancelled)
        try:
            method.Execute(f_c, m_c)
            value = method.GetMetricValue()
        except RuntimeError:
            value = np.inf
        if cancelled():
            raise RegistrationCancelled()
        refined.append((float(value), tx, [float(np.rad2deg(a)) for a in grid[i]], i == zero))
        report(0.5 + 0.5 * (rank + 1) / len(chosen))
    best = min(refined, key=lambda r: r[0])
    start = next(r for r in refined if r[3])
    # Keep the start's orientation unless a rotated candidate is clearly better: a near-tie on a coarse grid is
    # not evidence enough to turn the image (a symmetric phantom was turned 15 degrees on a 0.3% difference).
    margin = float(config.get("keep_start_margin", 0.01)) * abs(start[0])
    if start[0] <= best[0] + margin:
        best = start
    info = {"candidates": len(grid), "refined": len(chosen), "coarse_spacing_mm": coarse_mm,
            "best_start_angles_deg": best[2], "best_coarse_metric": best[0], "start_coarse_metric": start[0]}
    finish("rotation search done")
    return best[1], info


def _grid_scores_exhaustive(method, f_c, m_c, start, center, angles, dim, cancelled):
    """Score every rotation of the search grid in one ITK run; ``[(value, grid index)]`` or None on failure.

    ITK's exhaustive optimiser walks the same grid as :func:`rotation_search` builds (``angles`` about each
    axis, in the order of ``itertools.product``): the optimised transform is a rotation ``E`` about the start's
    centre and the start is the moving initial transform, so each point is ``S(E(x)) = R_s R (x - c) + c + t``,
    the candidate of :func:`rotation_search`. One run instead of one ``MetricEvaluate`` per rotation: the metric's
    set-up (sampling, histograms, threads) is paid once, which was most of the search's time (125 rotations in 3D).
    Returns None when any grid point fails (too few samples inside the moving image): the caller then scores the
    rotations one by one and gives the failing ones an infinite value.
    """
    n = len(angles) // 2
    step = float(angles[1] - angles[0]) if len(angles) > 1 else 0.0
    if len(angles) != 2 * n + 1 or not np.allclose(angles, step * np.arange(-n, n + 1)):
        return None
    e = sitk.Euler3DTransform() if dim == 3 else sitk.Euler2DTransform()
    e.SetCenter(tuple(float(v) for v in center))
    method.SetMovingInitialTransform(start)
    method.SetInitialTransform(e, inPlace=False)
    n_angles = 3 if dim == 3 else 1
    method.SetOptimizerAsExhaustive([n] * n_angles + [0] * dim, stepLength=step)
    method.SetOptimizerScales([1.0] * (n_angles + dim))
    seen = {}

    def record():
        if cancelled():
            method.StopRegistration()
            return
        pos = method.GetOptimizerPosition()[:n_angles]
        seen[tuple(int(round(a / step)) + n for a in pos)] = float(method.GetMetricValue())

    method.AddCommand(sitk.sitkIterationEvent, record)
    try:
        method.Execute(f_c, m_c)
    except RuntimeError:
        return None
    if cancelled():
        raise RegistrationCancelled()
    scores = []
    for i, idx in enumerate(itertools.product(range(2 * n + 1), repeat=n_angles)):
        if idx not in seen:
            return None
        scores.append((seen[idx], i))
    return scores


# ------------------------------------------------------------------------------ axis-aligned orientation search
_AXIS_NAMES_LPS = ("x (the R-L axis)", "y (the A-P axis)", "z (the I-S axis)")


def axis_aligned_rotations(dim: int) -> list[np.ndarray]:
    """The proper rotations that map the coordinate axes onto themselves: the 24 rotations of the cube in 3D,
    the 4 of the square in 2D (signed permutation matrices with determinant +1; mirror images are excluded, so a
    left-right flip is never proposed). The identity comes first."""
    out = []
    for perm in itertools.permutations(range(dim)):
        for signs in itertools.product((1.0, -1.0), repeat=dim):
            r = np.zeros((dim, dim))
            for row, (col, s) in enumerate(zip(perm, signs)):
                r[row, col] = s
            if np.linalg.det(r) > 0:
                out.append(r)
    out.sort(key=lambda r: -np.trace(r))  # identity (trace = dim) first
    return out


def describe_rotation(r: np.ndarray) -> str:
    """A short human description of an axis-aligned rotation matrix in LPS: 'none', '180 deg about LPS y (the A-P axis)',
    '120 deg about (+x +y -z) in LPS' ..."""
    r = np.asarray(r, float)
    dim = r.shape[0]
    if np.allclose(r, np.eye(dim)):
        return "none (as the headers say)"
    if dim == 2:
        angle = np.rad2deg(np.arctan2(r[1, 0], r[0, 0]))
        return f"{angle:+.0f} deg in plane"
    angle = float(np.rad2deg(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))
    w, v = np.linalg.eig(r)
    axis = np.real(v[:, np.argmin(np.abs(w - 1.0))])
    axis = axis / np.linalg.norm(axis)
    if angle < 179.0:  # the sign of the axis matters (right-hand rule); for 180 deg it does not
        skew = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
        if skew @ axis < 0:
            axis = -axis
    big = np.flatnonzero(np.abs(axis) > 0.3)
    if len(big) == 1:
        k = int(big[0])
        sign = "" if angle > 179.0 else ("+" if axis[k] > 0 else "-")
        return f"{angle:.0f} deg about LPS {sign}{_AXIS_NAMES_LPS[k]}"
    parts = " ".join(f"{'+' if axis[k] > 0 else '-'}{'xyz'[k]}" for k in big)
    return f"{angle:.0f} deg about ({parts}) in LPS"


def orientation_search(fixed, moving, start, *, metric, config, seed, fixed_mask=None, moving_mask=None,
                       progress=None, cancel=None):
    """Try every axis-aligned orientation (24 in 3D) of the moving image about the start's centre; keep the best.

    For scans whose headers do not say that one was acquired turned (head-first vs feet-first, prone vs supine):
    a +-30 degree rotation search cannot reach a 90 or 180 degree turn. Each orientation ``Q`` gives the start
    ``T(x) = R_start Q (x - c) + c + t`` (fixed -> moving, LPS; ``c`` the start's centre, i.e. the fixed centre
    of mass after a moments start, so the centres stay matched). The metric is evaluated for all of them on coarse
    copies (``coarse_spacing_mm``, default 8 mm); the ``top_k`` best and the start's own orientation are then
    refined by a short rigid optimisation at that resolution, and the best refined value wins, but the start's
    orientation is kept unless another is better by ``keep_start_margin`` (fraction of |metric|, default 2%):
    a near-tie is no reason to turn a scan. Returns (transform fixed -> moving LPS, info dict with the chosen
    orientation as a matrix and in words). ``progress`` and ``cancel`` as for :func:`rotation_search`.
    """
    report, cancelled, finish = _search_progress(progress, cancel)
    import time

    from .metrics import metric_method

    t0 = time.perf_counter()
    dim = fixed.GetDimension()
    coarse_mm = float(config.get("coarse_spacing_mm", 8.0 if dim == 3 else 4.0))
    sample_fraction = float(config.get("sample_fraction", 0.5))
    top_k = int(config.get("top_k", 3))
    refine_iterations = int(config.get("refine_iterations", 40))
    margin_fraction = float(config.get("keep_start_margin", 0.02))
    f_c, m_c, fm, mm = _coarse_inputs(fixed, moving, fixed_mask, moving_mask, coarse_mm)
    rotations = axis_aligned_rotations(dim)
    start_r = np.array(start.GetMatrix()).reshape(dim, dim)
    center = np.array(start.GetCenter())
    start_t = np.array(start.GetTranslation())

    def candidate(q):
        tx = _rigid(dim)
        tx.SetCenter(tuple(center))
        set_rotation_matrix(tx, start_r @ q)
        tx.SetTranslation(tuple(start_t))
        return tx

    def new_method():
        return metric_method(metric, fraction=sample_fraction, strategy="regular", seed=int(seed), fixed_mask=fm,
                             moving_mask=mm)

    method = new_method()
    raw = []
    for i, q in enumerate(rotations):
        if cancelled():
            raise RegistrationCancelled()
        method.SetInitialTransform(candidate(q), inPlace=False)
        try:
            value = float(method.MetricEvaluate(f_c, m_c))
        except RuntimeError:  # too few samples overlap in this orientation
            value = np.inf
        raw.append(value)
        report(0.4 * (i + 1) / len(rotations))
    order = [int(i) for i in np.argsort(raw)]
    chosen = order[:top_k]
    if 0 not in chosen:
        chosen.append(0)
    refined = {}
    for rank, i in enumerate(chosen):
        if cancelled():
            raise RegistrationCancelled()
        tx = candidate(rotations[i])
        m = new_method()
        m.SetOptimizerAsRegularStepGradientDescent(learningRate=coarse_mm, minStep=0.1,
                                                   numberOfIterations=refine_iterations, relaxationFactor=0.5,
                                                   gradientMagnitudeTolerance=1e-8)
        m.SetOptimizerScalesFromPhysicalShift()
        m.SetInitialTransform(tx, inPlace=True)
        m.AddCommand(sitk.sitkIterationEvent, lambda m=m: m.StopRegistration() if cancelled() else None)
        try:
            m.Execute(f_c, m_c)
            value = float(m.GetMetricValue())
        except RuntimeError:
            value = np.inf
        if cancelled():
            raise RegistrationCancelled()
        refined[i] = value
        report(0.4 + 0.6 * (rank + 1) / len(chosen))
    best = min(refined, key=lambda i: refined[i])
    start_value = refined[0]
    if np.isfinite(start_value) and start_value <= refined[best] + margin_fraction * abs(start_value):
        best = 0
    q = rotations[best]
    info = {
        "orientations": len(rotations), "refined": len(chosen), "coarse_spacing_mm": coarse_mm,
        "chosen": describe_rotation(q), "chosen_matrix": q.tolist(), "turned": bool(best != 0),
        "frame": "LPS; applied in fixed space before the start: T(x) = R_start Q (x - c) + c + t",
        "chosen_coarse_metric": refined[best], "start_coarse_metric": start_value,
        "runner_up": describe_rotation(rotations[min((i for i in refined if i != best), key=lambda i: refined[i])])
        if len(refined) > 1 else None,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    finish("orientation search done")
    # The chosen orientation as a fresh start (not the coarse refinement: the rotation search and the stages refine).
    return candidate(q), info
