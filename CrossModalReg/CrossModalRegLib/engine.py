"""The registration engine (SimpleITK, Qt-free): 2D and 3D, rigid / affine / B-spline stages, cross-modality metrics.

The single entry point is :func:`register`. Its result's ``transform_fixed_to_moving_lps`` maps a point of the
FIXED image's physical space (LPS mm) to the corresponding point of the MOVING image (LPS mm): the ITK
resampling direction. ``sitk.Resample(moving, fixed, result.transform_fixed_to_moving_lps)`` brings the moving
image onto the fixed grid; in Slicer the same transform is the *transform from parent* of the node the moving
volume is placed under (see ``mrml.set_transform_fixed_to_moving``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from . import initialization, presets, sanity
from .errors import CrossModalRegError, RegistrationCancelled, RegistrationFailed
from .metrics import metric_method
from .preprocessing import check_image, check_mask, foreground_mask, preprocess
from .progress import ProgressTracker
from .provenance import now_iso, sha256_of_image, software_versions

DEFAULT_SEED = 20261124


@dataclass
class MetricSample:
    """One optimiser iteration: which stage and level, the iteration number and the metric value (lower = better)."""

    stage_index: int
    stage: str
    level: int
    iteration: int
    metric: float


@dataclass
class RegistrationResult:
    """What :func:`register` returns.

    Attributes
    ----------
    transform_fixed_to_moving_lps : SimpleITK.Transform
        Maps FIXED-space points to MOVING-space points, LPS millimetres (ITK convention).
    initial_transform_fixed_to_moving_lps : SimpleITK.Transform
        The initialisation the optimiser started from, after any rotation search (same direction and frame).
    initial_metric, final_metric : float
        The first stage's metric (lower is better) at the start (before the rotation search and optimisation)
        and at the result, both evaluated on smoothed copies of the preprocessed images with fixed samples.
    """

    transform_fixed_to_moving_lps: sitk.Transform
    initial_transform_fixed_to_moving_lps: sitk.Transform
    preset: dict
    preset_sha256: str
    seed: int
    dimension: int
    metric_trace: list[MetricSample] = field(default_factory=list)
    initial_metric: float | None = None
    final_metric: float | None = None
    sanity: sanity.SanityReport | None = None
    timings_s: dict = field(default_factory=dict)
    initialization: dict = field(default_factory=dict)
    stop_conditions: list[str] = field(default_factory=list)
    inputs: dict = field(default_factory=dict)
    started: str = ""
    threads: int | None = 1

    def resample_moving(self, fixed: sitk.Image, moving: sitk.Image, *, interpolator=sitk.sitkLinear,
                        default_value: float | None = None) -> sitk.Image:
        """The moving image resampled onto the fixed grid through the result (moving's pixel type kept)."""
        if default_value is None:
            arr = sitk.GetArrayViewFromImage(moving)
            default_value = float(arr.min()) if arr.size else 0.0
        return sitk.Resample(moving, fixed, self.transform_fixed_to_moving_lps, interpolator, default_value,
                             moving.GetPixelID())

    def metric_trace_rows(self) -> list[dict]:
        return [
            {"stage_index": s.stage_index, "stage": s.stage, "level": s.level, "iteration": s.iteration,
             "metric": s.metric}
            for s in self.metric_trace
        ]

    def provenance(self) -> dict:
        """Everything needed to repeat the run: versions, preset (and hash), seed, inputs' checksums, timings."""
        return {
            "software": software_versions(),
            "started": self.started,
            "preset": self.preset,
            "preset_sha256": self.preset_sha256,
            "seed": self.seed,
            "threads": self.threads,
            "deterministic": self.threads == 1,
            "dimension": self.dimension,
            "inputs": self.inputs,
            "initialization": self.initialization,
            "timings_s": self.timings_s,
            "initial_metric": self.initial_metric,
            "final_metric": self.final_metric,
            "stop_conditions": self.stop_conditions,
            "sanity": self.sanity.as_dict() if self.sanity else None,
            "transform_direction": "fixed -> moving (maps fixed-space points to moving-space points)",
            "transform_frame": "LPS",
        }


def _cancel_checker(cancel):
    if cancel is None:
        return lambda: False
    if hasattr(cancel, "is_set"):
        return cancel.is_set
    if callable(cancel):
        return lambda: bool(cancel())
    raise TypeError("cancel must be None, a threading.Event-like object or a callable returning bool")


def _level_factors(fixed: sitk.Image, stage: dict) -> list[float]:
    """Per level, the linear down-sampling factor relative to the fixed image's finest spacing (>= 1)."""
    levels, _ = _levels(stage)
    if "level_spacing_mm" in stage:
        return [max(1.0, v / min(fixed.GetSpacing())) for v in levels]
    return [float(v) for v in levels]


def _sampling_percentages(fixed: sitk.Image, stage: dict) -> list[float]:
    """Fraction of fixed voxels sampled at each level.

    ``samples_per_level`` (a number of points per level) wins over ``percentage_per_level`` and ``percentage``:
    it keeps the metric's statistics the same for a 2D slice and a 3D volume.
    """
    shrink = _level_factors(fixed, stage)
    sampling = stage.get("sampling", {})
    n = float(np.prod(fixed.GetSize()))
    if sampling.get("samples_per_level"):
        counts = [float(c) for c in sampling["samples_per_level"]]
        return [min(1.0, c / (n / s ** fixed.GetDimension())) for c, s in zip(counts, shrink)]
    if sampling.get("percentage_per_level"):
        return [min(1.0, float(p)) for p in sampling["percentage_per_level"]]
    return [min(1.0, float(sampling.get("percentage", 1.0)))] * len(shrink)


def _set_optimizer(method, opt: dict, stage_type: str):
    name = opt.get("name", "lbfgsb" if stage_type == "bspline" else "regular_step_gradient_descent")
    iterations = int(opt.get("iterations", 100))
    if name == "regular_step_gradient_descent":
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=float(opt.get("learning_rate", 1.0)),
            minStep=float(opt.get("min_step", 1e-3)),
            numberOfIterations=iterations,
            relaxationFactor=float(opt.get("relaxation_factor", 0.5)),
            gradientMagnitudeTolerance=float(opt.get("gradient_tolerance", 1e-6)),
        )
    elif name == "gradient_descent":
        method.SetOptimizerAsGradientDescent(
            learningRate=float(opt.get("learning_rate", 1.0)),
            numberOfIterations=iterations,
            convergenceMinimumValue=float(opt.get("convergence_minimum_value", 1e-6)),
            convergenceWindowSize=int(opt.get("convergence_window_size", 10)),
            estimateLearningRate=method.EachIteration,
            maximumStepSizeInPhysicalUnits=float(opt.get("max_step_mm", 1.0)),
        )
    elif name == "gradient_descent_line_search":
        method.SetOptimizerAsGradientDescentLineSearch(
            learningRate=float(opt.get("learning_rate", 5.0)),
            numberOfIterations=iterations,
            convergenceMinimumValue=float(opt.get("convergence_minimum_value", 1e-5)),
            convergenceWindowSize=int(opt.get("convergence_window_size", 5)),
        )
    elif name == "lbfgsb":
        method.SetOptimizerAsLBFGSB(
            gradientConvergenceTolerance=float(opt.get("gradient_tolerance", 1e-5)),
            numberOfIterations=iterations,
            maximumNumberOfCorrections=int(opt.get("corrections", 5)),
            maximumNumberOfFunctionEvaluations=int(opt.get("max_evaluations", 4 * iterations)),
            costFunctionConvergenceFactor=float(opt.get("cost_convergence_factor", 1e7)),
        )
    elif name == "lbfgs2":
        method.SetOptimizerAsLBFGS2(
            solutionAccuracy=float(opt.get("solution_accuracy", 1e-5)),
            numberOfIterations=iterations,
            deltaConvergenceTolerance=float(opt.get("delta_tolerance", 1e-5)),
        )
    else:
        raise CrossModalRegError(f"unknown optimizer '{name}'")
    if stage_type != "bspline" and name not in ("lbfgsb", "lbfgs2"):
        # Rotations (radians) and translations (mm) need scales; B-spline parameters are all displacements in mm,
        # so unit scales are right, and estimating them from physical shifts costs a metric pass per control point
        # (36 s of a 39 s run on a 60x72x60 phantom).
        method.SetOptimizerScalesFromPhysicalShift()
    return iterations


def _levels(stage: dict):
    """(shrink factors, smoothing sigmas in mm) per level. For linear stages ``level_spacing_mm`` may replace the
    shrink factors: levels are then defined in millimetres (e.g. 8, 4, 2 mm), never finer than the image."""
    if "level_spacing_mm" in stage:
        levels = [float(v) for v in stage["level_spacing_mm"]]
        sigmas = [float(s) for s in stage.get("smoothing_sigmas_mm", [0.0] * len(levels))]
        return levels, sigmas
    shrink = [int(s) for s in stage.get("shrink_factors", [1])]
    sigmas = [float(s) for s in stage.get("smoothing_sigmas_mm", [0.0] * len(shrink))]
    return shrink, sigmas


def _linear_transform_for(stage_type: str, dim: int, current: sitk.Transform) -> sitk.Transform:
    """A new stage transform initialised to ``current`` (a linear fixed->moving transform)."""
    from .geometry import linear_transform_matrix_lps

    m = linear_transform_matrix_lps(current, dim)
    a, t = m[:dim, :dim], m[:dim, 3]
    center = np.array(current.GetCenter()) if hasattr(current, "GetCenter") else np.zeros(dim)
    if stage_type == "rigid":
        tx = sitk.Euler3DTransform() if dim == 3 else sitk.Euler2DTransform()
        tx.SetCenter(tuple(center))
        # Nearest rotation to A (it is a rotation already for rigid inputs).
        u, _, vt = np.linalg.svd(a)
        r = u @ vt
        if np.linalg.det(r) < 0:
            u[:, -1] *= -1
            r = u @ vt
        initialization.set_rotation_matrix(tx, r)  # away from the Euler angles' gimbal lock (90-degree turns)
    else:
        tx = sitk.AffineTransform(dim)
        tx.SetCenter(tuple(center))
        tx.SetMatrix(tuple(a.ravel()))
        r = a
    # T(x) = R (x - c) + c + t'  must equal A x + t  =>  t' = A c + t - c (R = A for the same linear part)
    tx.SetTranslation(tuple(r @ center + t - center))
    return tx


def _bspline_mesh(fixed: sitk.Image, spacing_mm: float, coarsest_scale: int) -> list[int]:
    extent = np.array(fixed.GetSize()) * np.array(fixed.GetSpacing())
    mesh = np.maximum(1, np.round(extent / (spacing_mm * coarsest_scale)).astype(int))
    return [int(m) for m in mesh]


def _level_costs(fixed: sitk.Image, stage: dict) -> list[float]:
    shrink = _level_factors(fixed, stage)
    iters = int(stage.get("optimizer", {}).get("iterations", 100))
    if _is_stochastic(stage):
        # New samples every iteration: the cost is samples x iterations x the (order + 1)^dim control points each
        # sample touches (about 30 times a linear stage's cost per sample, measured on a 1 mm head).
        samples = _per_level(stage["sampling"]["samples_per_iteration"], len(shrink))
        return [k * iters * 30.0 for k in samples]
    per_level = _sampling_percentages(fixed, stage)
    n = float(np.prod(fixed.GetSize()))
    costs = []
    for s, p in zip(shrink, per_level):
        c = n / (s ** fixed.GetDimension()) * min(float(p), 1.0) * iters
        if stage["type"] == "bspline":
            c *= 3.0
        costs.append(max(c, 1.0))
    return costs


def _per_level(value, n_levels: int) -> list[float]:
    """A preset value given once for every level or as a list with one value per level."""
    return [float(v) for v in value] if isinstance(value, list) else [float(value)] * n_levels


def _is_stochastic(stage: dict) -> bool:
    """A B-spline stage optimised by adaptive stochastic gradient descent (``stochastic_bspline``)."""
    return stage["type"] == "bspline" and stage.get("optimizer", {}).get("name") == "asgd"


def register(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    preset="multimodal-rigid",
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
    fixed_landmarks=None,
    moving_landmarks=None,
    initial_transform_fixed_to_moving: sitk.Transform | None = None,
    initialization_method: str | None = None,
    rotation_search: bool | None = None,
    orientation_search: bool | None = None,
    overrides: dict | None = None,
    seed: int = DEFAULT_SEED,
    progress=None,
    cancel=None,
    strict: bool = True,
    threads: int | None = 1,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` (2D or 3D, any modalities) with a preset.

    Parameters
    ----------
    fixed, moving : SimpleITK.Image
        Images in LPS physical space (as read by SimpleITK). RGB images are accepted by presets that convert
        to grey.
    preset : str, path or dict
        A shipped preset name (see ``presets.available_presets()``), a JSON file, or a preset dict.
    fixed_mask, moving_mask : SimpleITK.Image, optional
        Label maps (non-zero = inside) restricting where the metric is computed, on any grid.
    fixed_landmarks, moving_landmarks : array (N, dim), optional
        Paired points in LPS mm (row i of each is the same anatomical point). Used for landmark initialisation
        (N >= 3; a rigid fit); also reported in the result.
    initial_transform_fixed_to_moving : SimpleITK.Transform, optional
        A linear starting transform (fixed -> moving, LPS), e.g. from an earlier run or a manual alignment.
    initialization_method : {"moments", "geometry", "landmarks", "none"}, optional
        Overrides the preset. Defaults to "landmarks" when landmarks are given.
    rotation_search : bool, optional
        Overrides the preset's coarse search over rotations (for large initial misalignment).
    orientation_search : bool, optional
        Overrides the preset's search over the 24 axis-aligned orientations (3D: a scan acquired turned by 90 or
        180 degrees with headers that do not say so); see ``initialization.orientation_search``.
    overrides : dict, optional
        Dotted-key changes to the preset, e.g. ``{"stages.0.optimizer.iterations": 50}``.
    seed : int
        Seed of every random sampler: the same inputs and seed give the same transform.
    progress : callable(Progress), optional
        Called with a :class:`~CrossModalRegLib.progress.Progress`; its fraction only goes up and ends at 1.
    cancel : threading.Event or callable, optional
        When set (or returning True) the run stops within about a second and raises ``RegistrationCancelled``.
    strict : bool
        If True (default) a result that fails the post-run sanity checks raises ``RegistrationFailed``;
        if False it is returned with ``result.sanity.passed == False``.
    threads : int or None
        Threads for metric evaluation. 1 (default) makes runs bit-for-bit repeatable; None uses ITK's default
        (all cores: faster, but two runs may differ by ~0.01 mm because ITK sums the metric in thread order).
        The stochastic B-spline stage (``asgd``) uses as many threads and gives the same result for any number.

    Returns
    -------
    RegistrationResult
        ``transform_fixed_to_moving_lps`` maps fixed-space points to moving-space points (LPS mm).
    """
    t_start = time.perf_counter()
    cancelled = _cancel_checker(cancel)
    preset_dict = presets.apply_overrides(presets.load_preset(preset), overrides)

    # ---------------------------------------------------------------- pre-flight (nothing is created before)
    pre = preset_dict.get("preprocessing", {})
    check_image(fixed, "fixed", allow_vector="grey" in pre.get("fixed", {}))
    check_image(moving, "moving", allow_vector="grey" in pre.get("moving", {}))
    dim = fixed.GetDimension()
    if moving.GetDimension() != dim:
        raise CrossModalRegError(
            f"fixed image is {dim}D but moving image is {moving.GetDimension()}D: register 2D with 2D and 3D with 3D"
        )
    want_dim = preset_dict.get("dimension", "any")
    if want_dim != "any" and int(want_dim) != dim:
        raise CrossModalRegError(
            f"preset '{preset_dict['name']}' is for {want_dim}D images but the inputs are {dim}D: choose another preset"
        )
    fixed_mask = check_mask(fixed_mask, "fixed", fixed)
    moving_mask = check_mask(moving_mask, "moving", moving)
    init_cfg = dict(preset_dict.get("initialization", {}))
    method_name = initialization_method or (
        "landmarks" if fixed_landmarks is not None or moving_landmarks is not None else init_cfg.get("method", "moments")
    )
    if initial_transform_fixed_to_moving is not None:
        method_name = "transform"
    if method_name == "landmarks":
        fixed_landmarks, moving_landmarks = initialization.check_landmark_pairs(fixed_landmarks, moving_landmarks, dim)
    if initial_transform_fixed_to_moving is not None:
        if initial_transform_fixed_to_moving.GetDimension() != dim:
            raise CrossModalRegError(
                f"initial transform is {initial_transform_fixed_to_moving.GetDimension()}D but the images are {dim}D"
            )
        if not initial_transform_fixed_to_moving.IsLinear():
            raise CrossModalRegError("the initial transform must be linear (rigid or affine)")
    do_search = init_cfg.get("rotation_search", {}).get("enabled", False) if rotation_search is None else rotation_search
    do_orient = (init_cfg.get("orientation_search", {}).get("enabled", False) if orientation_search is None
                 else orientation_search) and dim == 3
    if method_name in ("landmarks", "transform"):
        do_search = bool(rotation_search)  # a user-given start is trusted unless a search is asked for
        do_orient = bool(orientation_search) and dim == 3

    stages = preset_dict["stages"]
    weights = {"preprocess": 0.03 * 1e6, "initialize": (0.02 + 0.13 * do_search + 0.1 * do_orient) * 1e6}
    stage_costs = [_level_costs(fixed, st) for st in stages]
    total_stage = sum(sum(c) for c in stage_costs) or 1.0
    for i, c in enumerate(stage_costs):
        weights[f"stage{i}"] = 0.80 * 1e6 * sum(c) / total_stage
    tracker = ProgressTracker(progress, weights)
    timings = {}

    inputs = {
        "fixed": {"sha256": sha256_of_image(fixed), "size": list(fixed.GetSize()), "spacing": list(fixed.GetSpacing())},
        "moving": {"sha256": sha256_of_image(moving), "size": list(moving.GetSize()),
                   "spacing": list(moving.GetSpacing())},
    }
    if fixed_mask is not None:
        inputs["fixed_mask"] = {"sha256": sha256_of_image(fixed_mask)}
    if moving_mask is not None:
        inputs["moving_mask"] = {"sha256": sha256_of_image(moving_mask)}
    if fixed_landmarks is not None and moving_landmarks is not None:
        inputs["landmark_pairs"] = int(len(fixed_landmarks))

    # ---------------------------------------------------------------- preprocessing
    t = time.perf_counter()
    tracker.update("preprocess", 0.0, message="preprocessing")
    # When every stage stops at a level coarser than the images (e.g. 2 mm for a 1 mm head), work on block-averaged
    # copies at that resolution from the start: preprocessing, pyramids and checks then cost 1/8 as much.
    working_mm = _working_spacing_mm(stages)
    fixed_w, moving_w = _at_working_resolution(fixed, working_mm), _at_working_resolution(moving, working_mm)
    inputs["working_spacing_mm"] = working_mm  # None: the images' own grids
    fixed_p = preprocess(fixed_w, pre.get("fixed"), mask=fixed_mask, cancelled=cancelled)
    tracker.update("preprocess", 0.5, message="preprocessing")
    moving_p = preprocess(moving_w, pre.get("moving"), mask=moving_mask, cancelled=cancelled)
    if cancelled():
        raise RegistrationCancelled()
    tracker.update("preprocess", 1.0, message="preprocessed")
    timings["preprocess"] = time.perf_counter() - t

    # ---------------------------------------------------------------- initialisation
    t = time.perf_counter()
    tracker.update("initialize", 0.0, message=f"initialising ({method_name})")
    if method_name == "transform":
        current = initial_transform_fixed_to_moving
        init_info = {"method": "transform"}
    else:
        current, init_info = initialization.initial_transform(
            fixed_p, moving_p, method_name, fixed_landmarks=fixed_landmarks, moving_landmarks=moving_landmarks
        )
    initialised = _copy_transform(current)  # before any search: one of the starts the result is compared with
    # Where the fixed image has something to overlap: its mask, else its Otsu foreground (used before and after).
    overlap_region = fixed_mask if fixed_mask is not None else foreground_mask(fixed_p)
    initialization.check_overlap(fixed_p, moving_p, current, fixed_mask=overlap_region, when="after initialisation")
    # The reference for "did the optimisation make it worse": the start before any search or optimisation.
    fixed_eval, moving_eval = sanity.smoothed_for_evaluation(fixed_p), sanity.smoothed_for_evaluation(moving_p)
    with _metric_threads(threads):
        start_metric = _first_stage_metric(fixed, moving, fixed_eval, moving_eval, current, stages[0]["metric"],
                                           fixed_mask=fixed_mask, moving_mask=moving_mask, seed=seed)
    if do_orient:
        with _metric_threads(threads):
            current, orient_info = initialization.orientation_search(
                fixed_p, moving_p, current, metric=stages[0]["metric"], config=dict(init_cfg.get("orientation_search", {})),
                seed=seed, fixed_mask=fixed_mask, moving_mask=moving_mask, cancelled=cancelled,
                report=lambda f: tracker.update("initialize", 0.4 * f if do_search else f, message="searching orientations"),
            )
        init_info["orientation_search"] = orient_info
    if do_search:
        search_cfg = dict(init_cfg.get("rotation_search", {}))
        with _metric_threads(threads):
            current, search_info = initialization.rotation_search(
                fixed_p, moving_p, current, metric=stages[0]["metric"], config=search_cfg, seed=seed,
                fixed_mask=fixed_mask, moving_mask=moving_mask, cancelled=cancelled,
                report=lambda f: tracker.update("initialize", 0.4 * do_orient + (1 - 0.4 * do_orient) * f,
                                                message="searching rotations"),
            )
        init_info["rotation_search"] = search_info
    initial_transform = _copy_transform(current)
    tracker.update("initialize", 1.0, message="initialised")
    timings["initialize"] = time.perf_counter() - t

    result = RegistrationResult(
        transform_fixed_to_moving_lps=current,
        initial_transform_fixed_to_moving_lps=initial_transform,
        preset=preset_dict,
        preset_sha256=presets.preset_sha256(preset_dict),
        seed=int(seed),
        dimension=dim,
        initialization=init_info,
        inputs=inputs,
        started=now_iso(),
        threads=threads,
    )
    result.initial_metric = start_metric

    # ---------------------------------------------------------------- stages
    linear = current
    bspline_tx = None
    pyramid_cache = {}
    for si, stage in enumerate(stages):
        if cancelled():
            raise RegistrationCancelled()
        t = time.perf_counter()
        stage_type = stage["type"]
        shrink, sigmas = _levels(stage)
        costs = stage_costs[si]
        level_start = np.concatenate([[0.0], np.cumsum(costs)])[:-1] / sum(costs)
        level_width = np.array(costs) / sum(costs)
        state = {"cancelled": False}
        max_iter = int(stage.get("optimizer", {}).get("iterations", 100))

        def make_method(sampling_pcts, seed_offset, stage=stage):
            return metric_method(stage["metric"], strategy=stage.get("sampling", {}).get("strategy", "random"),
                                 fractions_per_level=sampling_pcts, seed=seed + seed_offset,
                                 fixed_mask=fixed_mask, moving_mask=moving_mask)

        def run(method, fixed_img, moving_img, make_preview, level_of, si=si, stage_type=stage_type, state=state,
                level_start=level_start, level_width=level_width, n_levels=len(shrink), max_iter=max_iter):
            def on_iteration():
                level = level_of(method)
                it = method.GetOptimizerIteration()
                value = method.GetMetricValue()
                position = method.GetOptimizerPosition()  # copied now: the optimiser forgets it after the run
                state["position"] = position  # where the optimiser was, should ITK fail at the next step
                result.metric_trace.append(MetricSample(si, stage_type, int(level), int(it), float(value)))
                within = level_start[level] + level_width[level] * min(1.0, (it + 1) / max(max_iter, 1))
                tracker.update(
                    f"stage{si}", within, stage=stage_type, stage_index=si, n_stages=len(stages), level=int(level),
                    n_levels=n_levels, iteration=int(it), metric=float(value),
                    message=f"{stage_type} level {level + 1}/{n_levels}",
                    _transform_factory=lambda: make_preview(position),
                )
                if cancelled():
                    state["cancelled"] = True
                    method.StopRegistration()

            method.AddCommand(sitk.sitkIterationEvent, on_iteration)
            try:
                with _metric_threads(threads):
                    method.Execute(fixed_img, moving_img)
            except RuntimeError as exc:
                if state["cancelled"] or cancelled():
                    raise RegistrationCancelled() from None
                raise _stage_error(stage_type, exc, state.get("position"), make_preview, fixed_img,
                                   moving_img) from None
            if state["cancelled"] or cancelled():
                raise RegistrationCancelled()
            result.stop_conditions.append(f"{stage_type}: {method.GetOptimizerStopConditionDescription()}")

        if stage["metric"]["name"] == "mind_ssc":
            # MIND-SSC (``mind``): its own descriptors, off-grid samples and optimiser, on the input images (the
            # ultrasound's zero background is its field of view, which preprocessing would blur).
            out = _mind_stage(stage, si, fixed, moving, linear, seed=seed, fixed_mask=fixed_mask,
                              moving_mask=moving_mask, cancelled=cancelled, result=result, tracker=tracker,
                              n_stages=len(stages), level_start=level_start, level_width=level_width,
                              fixed_p=fixed_p, moving_p=moving_p, pyramid_cache=pyramid_cache)
            if stage_type == "bspline":
                bspline_tx = [out]
            else:
                linear = out
        elif stage_type in ("rigid", "affine"):
            # Linear stages: our own pyramid of block-averaged (BinShrink) and smoothed copies, one optimisation per
            # level. ITK's built-in pyramid smooths the full-size images at every level, which was a third of the
            # run time on a 1 mm head; the result is the same kind of coarse-to-fine optimisation.
            stage_tx = _linear_transform_for(stage_type, dim, linear)
            pcts = _sampling_percentages(fixed_p, stage)

            def make_preview(pos, stage_tx=stage_tx):
                tx = _copy_transform(stage_tx)
                tx.SetParameters(pos)
                return tx

            factors = _level_factors(fixed_p, stage)
            for level, (factor, sigma) in enumerate(zip(factors, sigmas)):
                if cancelled():
                    raise RegistrationCancelled()
                f_l = _pyramid_level(pyramid_cache, "fixed", fixed_p, factor, sigma, reference_spacing=fixed_p)
                m_l = _pyramid_level(pyramid_cache, "moving", moving_p, factor, sigma, reference_spacing=fixed_p)
                n_level = float(np.prod(f_l.GetSize()))
                n_wanted = pcts[level] * np.prod(fixed_p.GetSize()) / factor ** dim
                _check_level_samples(stage_type, si, level, f_l, min(n_wanted, n_level))
                method = make_method([min(1.0, n_wanted / n_level)], si * 16 + level)
                method.SetInitialTransform(stage_tx, inPlace=True)
                _set_optimizer(method, stage.get("optimizer", {}), stage_type)
                run(method, f_l, m_l, make_preview, lambda _m, level=level: level)
            linear = stage_tx
        else:
            # B-spline, coarse to fine: each level's control grid is the previous one refined (its coefficients fitted
            # to interpolate the previous level's displacement exactly at the new control points), then optimised
            # on that level's pyramid images with L-BFGS-B. ITK's built-in mesh refinement cannot be used with
            # L-BFGS-B (its scales keep the first level's size), and L-BFGS-B is the optimiser that moves thousands
            # of control points sensibly (a normalised gradient step gives each only ~1/sqrt(n) of the step).
            scale_factors = [int(v) for v in stage.get("mesh_scale_factors", [1] * len(shrink))]
            mesh = _bspline_mesh(fixed_p, float(stage["control_point_spacing_mm"]), scale_factors[-1])
            if _is_stochastic(stage):
                bspline_tx = [_stochastic_bspline_stage(
                    stage, si, fixed_p, moving_p, linear, mesh, pyramid_cache, seed=seed, fixed_mask=fixed_mask,
                    moving_mask=moving_mask, cancelled=cancelled, result=result, tracker=tracker,
                    n_stages=len(stages), level_start=level_start, level_width=level_width, threads=threads)]
                timings[f"stage{si}_{stage_type}"] = time.perf_counter() - t
                tracker.update(f"stage{si}", 1.0, stage=stage_type, stage_index=si, n_stages=len(stages),
                               message=f"{stage_type} done")
                continue
            pcts = _sampling_percentages(fixed_p, stage)
            for level, f_l, m_l, level_tx in _bspline_levels(stage, fixed_p, moving_p, mesh, pyramid_cache, cancelled):
                n_wanted = pcts[level] * np.prod(fixed_p.GetSize()) / float(shrink[level]) ** dim
                _check_level_samples(stage_type, si, level, f_l, min(n_wanted, float(np.prod(f_l.GetSize()))))
                method = make_method([min(1.0, n_wanted / float(np.prod(f_l.GetSize())))], si * 16 + level)
                method.SetMovingInitialTransform(_copy_transform(linear))
                method.SetInitialTransform(level_tx, inPlace=True)
                _set_optimizer(method, stage.get("optimizer", {}), stage_type)

                def make_preview(pos, level_tx=level_tx, linear=linear):
                    b = sitk.BSplineTransform(level_tx)
                    b.SetParameters(pos)
                    return sitk.CompositeTransform([_copy_transform(linear), b])

                run(method, f_l, m_l, make_preview, lambda _m, level=level: level)
            bspline_tx = [level_tx]
        timings[f"stage{si}_{stage_type}"] = time.perf_counter() - t
        tracker.update(f"stage{si}", 1.0, stage=stage_type, stage_index=si, n_stages=len(stages),
                       message=f"{stage_type} done")

    final = linear if bspline_tx is None else sitk.CompositeTransform([_copy_transform(linear), *bspline_tx])
    result.transform_fixed_to_moving_lps = final

    # ---------------------------------------------------------------- post-run sanity checks
    t = time.perf_counter()
    with _metric_threads(threads):
        result.final_metric = _first_stage_metric(fixed, moving, fixed_eval, moving_eval, final, stages[0]["metric"],
                                                  fixed_mask=fixed_mask, moving_mask=moving_mask, seed=seed)
    result.sanity = sanity.check_result(fixed_p, moving_p, final, initial_metric=result.initial_metric,
                                        final_metric=result.final_metric, fixed_mask=overlap_region)
    checks_cfg = preset_dict.get("checks", {})
    if checks_cfg.get("independent_agreement", True):
        identity = sitk.Transform(dim, sitk.sitkIdentity)  # the headers' own alignment
        min_ratio = float(checks_cfg.get("independent_agreement_min_ratio", sanity.INDEPENDENT_MIN_RATIO))
        with _metric_threads(threads):
            result.sanity.checks.append(sanity.check_independent_agreement(
                fixed_p, moving_p, final, {"headers": identity, "initialisation": initialised,
                                           "search": initial_transform}, fixed_mask=fixed_mask, seed=seed,
                min_ratio=min_ratio))
    timings["sanity"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    result.timings_s = {k: round(v, 4) for k, v in timings.items()}
    if strict and not result.sanity.passed:
        raise RegistrationFailed(
            "the result failed the post-run checks: " + "; ".join(result.sanity.failures()), result.sanity.failures(),
            result,
        )
    tracker.finish("done")
    return result


def _first_stage_metric(fixed, moving, fixed_eval, moving_eval, transform, metric, *, fixed_mask, moving_mask, seed):
    """The first stage's metric (lower is better) at ``transform`` (fixed -> moving): SimpleITK's on the smoothed
    evaluation copies, or MIND-SSC on the input images (``mind.evaluate``: off-grid samples, field-of-view mask)."""
    if metric["name"] == "mind_ssc":
        from . import mind

        return mind.evaluate(fixed, moving, transform, metric, seed=seed, fixed_mask=fixed_mask,
                             moving_mask=moving_mask)
    return sanity.evaluate_metric(fixed_eval, moving_eval, transform, metric, fixed_mask=fixed_mask,
                                  moving_mask=moving_mask, seed=seed)


def _mind_stage(stage, si, fixed, moving, linear, *, seed, fixed_mask, moving_mask, cancelled, result, tracker,
                n_stages, level_start, level_width, fixed_p, moving_p, pyramid_cache):
    """A stage on MIND-SSC, on the input images (``fixed``, ``moving``). Rigid: ``mind.register_rigid``, returns
    its Euler3DTransform. B-spline (asgd): the levels of ``_bspline_levels`` optimised by
    ``stochastic_bspline.optimise_level`` on ``mind.MindBSplineLevel``; returns the B-spline B (fixed ->
    intermediate, the stage's transform being ``linear(B(x))``). Both fixed -> moving, LPS."""
    from . import mind
    from . import stochastic_bspline as sb

    bspline = stage["type"] == "bspline"
    levels = len(stage.get("shrink_factors" if bspline else "level_spacing_mm", [1.0]))
    opt = stage.get("optimizer", {})
    iterations = int(opt.get("iterations", 30))

    def on_iteration(level, it, value):
        result.metric_trace.append(MetricSample(si, stage["type"], int(level), int(it), float(value)))
        tracker.update(f"stage{si}", level_start[level] + level_width[level] * min(1.0, (it + 1) / iterations),
                       stage=stage["type"], stage_index=si, n_stages=n_stages, level=int(level), n_levels=levels,
                       iteration=int(it), metric=float(value),
                       message=f"{stage['type']} (MIND-SSC) level {level + 1}/{levels}")

    try:
        f_mask, m_mask = mind.fov_masks(fixed, moving, stage["metric"], fixed_mask, moving_mask)
        if not bspline:
            tx, stops = mind.register_rigid(fixed, moving, linear, stage, seed=seed + si * 16, fixed_mask=f_mask,
                                            moving_mask=m_mask, on_iteration=on_iteration, cancelled=cancelled)
        else:
            shrink, sigmas = _levels(stage)
            scale_factors = [int(v) for v in stage.get("mesh_scale_factors", [1] * len(shrink))]
            mesh = _bspline_mesh(fixed_p, float(stage["control_point_spacing_mm"]), scale_factors[-1])
            steps = _per_level(opt.get("max_step_mm", 1.0), len(shrink))
            n_samples = [int(v) for v in _per_level(stage["sampling"]["samples_per_iteration"], len(shrink))]
            cfg = mind.MindConfig.from_metric(stage["metric"])
            stops, tx = [], None
            for level, _f, _m, tx in _bspline_levels(stage, fixed_p, moving_p, mesh, pyramid_cache, cancelled):
                f_l, m_l = mind.level_images(fixed, moving, shrink[level] * min(fixed.GetSpacing()), sigmas[level])
                lv = mind.MindBSplineLevel(mind.MindLevel(f_l, m_l, cfg, fixed_mask=f_mask, moving_mask=m_mask),
                                           linear, tx, rng=np.random.default_rng(seed + si * 16 + level))
                stop = sb.optimise_level(
                    lv, iterations=iterations, samples=n_samples[level], max_step_mm=steps[level],
                    a_offset=float(opt.get("A", 20.0)), alpha=float(opt.get("alpha", 0.602)),
                    bending_weight=float(stage.get("regularization", {}).get("bending_energy_weight", 0.0)),
                    average_last=float(opt.get("average_last", 0.0)),
                    on_iteration=lambda it, v, _c, level=level: on_iteration(level, it, v), cancelled=cancelled)
                stops.append(f"mind_ssc bspline level {level + 1}: {stop}")
    except sb.ImagesApart as exc:
        raise RegistrationFailed(f"the MIND-SSC bspline optimiser moved the images apart ({exc})", [str(exc)],
                                 None) from None
    except ValueError as exc:
        raise CrossModalRegError(f"the MIND-SSC {stage['type']} stage could not run: {exc}") from None
    if cancelled():
        raise RegistrationCancelled()
    result.stop_conditions.extend(stops)
    return tx


def _stochastic_bspline_stage(stage, si, fixed_p, moving_p, linear, mesh, pyramid_cache, *, seed, fixed_mask,
                              moving_mask, cancelled, result, tracker, n_stages, level_start, level_width,
                              threads=1):
    """The B-spline stage with new random samples every iteration (``optimizer.name == "asgd"``): coarse to fine,
    each level's grid the previous one refined exactly, optimised by ``stochastic_bspline.optimise_level``.

    Returns the B-spline (fixed -> intermediate, LPS); the stage's transform is ``linear(B(x))``, fixed -> moving.
    Samples are drawn over the whole fixed image, or inside the fixed mask when one is given (a mask drawn inside
    the organ's boundary hides the edges mutual information needs: see the README). ``threads`` share each
    iteration's samples (None: every core); the result does not depend on their number."""
    import os

    from . import stochastic_bspline as sb

    shrink, _ = _levels(stage)
    opt = stage.get("optimizer", {})
    iterations = int(opt.get("iterations", 256))
    steps = _per_level(opt.get("max_step_mm", 1.0), len(shrink))
    n_samples = [int(v) for v in _per_level(stage["sampling"]["samples_per_iteration"], len(shrink))]
    bending = float(stage.get("regularization", {}).get("bending_energy_weight", 0.0))
    level_tx = None
    for level, f_l, m_l, level_tx in _bspline_levels(stage, fixed_p, moving_p, mesh, pyramid_cache, cancelled):
        sample_mask = None
        if fixed_mask is not None:
            on_level = sitk.Resample(fixed_mask, f_l, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
            sample_mask = sitk.GetArrayViewFromImage(on_level) > 0
        try:
            opt_level = sb.StochasticBSplineLevel(
                sb.LevelImages(f_l, m_l, sample_mask), linear, level_tx, bins=int(stage["metric"].get("bins", 32)),
                moving_mask=moving_mask, rng=np.random.default_rng(seed + si * 16 + level))
        except ValueError as exc:
            raise CrossModalRegError(f"bspline stage could not run: {exc}") from None

        def on_iteration(it, value, coef, level=level, level_tx=level_tx):
            result.metric_trace.append(MetricSample(si, "bspline", level, int(it), float(value)))
            snapshot = coef.copy()

            def preview():
                b = sitk.BSplineTransform(level_tx)
                sb.set_coefficients(b, snapshot)
                return sitk.CompositeTransform([_copy_transform(linear), b])

            tracker.update(f"stage{si}", level_start[level] + level_width[level] * (it + 1) / iterations,
                           stage="bspline", stage_index=si, n_stages=n_stages, level=level, n_levels=len(shrink),
                           iteration=int(it), metric=float(value), message=f"bspline level {level + 1}/{len(shrink)}",
                           _transform_factory=preview)

        try:
            stop = sb.optimise_level(
                opt_level, iterations=iterations, samples=n_samples[level], max_step_mm=steps[level],
                a_offset=float(opt.get("A", 20.0)), alpha=float(opt.get("alpha", 0.602)), bending_weight=bending,
                average_last=float(opt.get("average_last", 0.0)), on_iteration=on_iteration, cancelled=cancelled,
                threads=threads if threads else os.cpu_count())
        except sb.ImagesApart as exc:
            raise RegistrationFailed(f"the bspline optimiser moved the images apart ({exc}); try a smaller "
                                     "max_step_mm, a fixed mask or landmarks", [str(exc)], None) from None
        if stop == "cancelled" or cancelled():
            raise RegistrationCancelled()
        result.stop_conditions.append(f"bspline level {level + 1}: {stop}")
    return level_tx


def _bspline_levels(stage, fixed_p, moving_p, mesh, pyramid_cache, cancelled):
    """Per level of a B-spline stage: (level, fixed and moving pyramid images, the level's B-spline). The
    B-spline is the previous level's result refined exactly onto this level's grid; the caller optimises it in
    place before asking for the next level."""
    shrink, sigmas = _levels(stage)
    scale_factors = [int(v) for v in stage.get("mesh_scale_factors", [1] * len(shrink))]
    previous = None
    for level, (factor, sigma, scale) in enumerate(zip(shrink, sigmas, scale_factors)):
        if cancelled():
            raise RegistrationCancelled()
        f_l = _pyramid_level(pyramid_cache, "fixed", fixed_p, factor, sigma, reference_spacing=fixed_p)
        m_l = _pyramid_level(pyramid_cache, "moving", moving_p, factor, sigma, reference_spacing=fixed_p)
        level_tx = sitk.BSplineTransformInitializer(fixed_p, [m * scale for m in mesh], int(stage.get("order", 3)))
        if previous is not None:
            level_tx = refine_bspline(previous, level_tx)
        yield level, f_l, m_l, level_tx
        previous = level_tx


def _subdivision_matrix(n_coarse: int) -> np.ndarray:
    """Exact refinement of uniform cubic B-spline coefficients by a factor of 2 (Lane-Riesenfeld subdivision),
    for ITK's grid layout: coarse mesh m has m + 3 coefficients, the refined mesh 2m has 2m + 3, and refined
    coefficient k sits at coarse continuous index (k + 1) / 2."""
    m = n_coarse - 3
    r = np.zeros((2 * m + 3, n_coarse))
    for k in range(2 * m + 3):
        if k % 2:  # on a coarse coefficient j
            j = (k + 1) // 2
            r[k, j - 1], r[k, j], r[k, j + 1] = 1 / 8, 6 / 8, 1 / 8
        else:  # half-way between coefficients j and j + 1
            j = k // 2
            r[k, j], r[k, j + 1] = 1 / 2, 1 / 2
    return r


def _working_spacing_mm(stages) -> float | None:
    """The finest level (mm) any stage needs, when every stage defines its levels in mm; else None (full size)."""
    if not all("level_spacing_mm" in st for st in stages):
        return None
    return min(min(float(v) for v in st["level_spacing_mm"]) for st in stages)


def _at_working_resolution(image: sitk.Image, spacing_mm: float | None) -> sitk.Image:
    """Block-average (BinShrink) by whole factors that keep every axis at or finer than ``spacing_mm``."""
    if not spacing_mm:
        return image
    factors = [max(1, int(np.floor(spacing_mm / s + 1e-6))) for s in image.GetSpacing()]
    factors = [min(f, max(1, n // 8)) for f, n in zip(factors, image.GetSize())]
    if max(factors) == 1:
        return image
    shrunk = sitk.BinShrink(image, factors)
    return shrunk


def refine_bspline(coarse: sitk.BSplineTransform, fine: sitk.BSplineTransform) -> sitk.BSplineTransform:
    """``fine`` (a cubic B-spline over the same domain with a control grid 2, 4, 8... times finer) with the
    coefficients that represent ``coarse`` exactly (repeated factor-2 subdivision; no approximation)."""
    dim = fine.GetDimension()
    cfp = np.array(coarse.GetFixedParameters())
    ffp = np.array(fine.GetFixedParameters())
    csize = cfp[:dim].astype(int)
    fsize = ffp[:dim].astype(int)
    n = coarse.GetNumberOfParameters() // dim
    coef = np.stack([np.array(coarse.GetParameters()[c * n:(c + 1) * n]).reshape(csize, order="F")
                     for c in range(dim)], axis=-1)
    for axis in range(dim):
        while coef.shape[axis] < fsize[axis]:
            r = _subdivision_matrix(coef.shape[axis])
            coef = np.moveaxis(np.tensordot(r, np.moveaxis(coef, axis, 0), axes=(1, 0)), 0, axis)
        if coef.shape[axis] != fsize[axis]:
            raise ValueError(f"control grid {fsize} is not a power-of-2 refinement of {csize}")
    out = sitk.BSplineTransform(fine)
    out.SetParameters(tuple(float(v) for c in range(dim) for v in coef[..., c].ravel(order="F")))
    return out


def _pyramid_level(cache, role, image, factor, sigma_mm, *, reference_spacing):
    """A coarse copy of ``image`` for one pyramid level: block-averaged to about ``factor`` times the fixed image's
    finest spacing (per axis, never finer than the image itself), then Gaussian-smoothed by ``sigma_mm``."""
    key = (role, float(factor), float(sigma_mm))
    if key in cache:
        return cache[key]
    target = factor * min(reference_spacing.GetSpacing())
    factors = [max(1, int(round(target / s))) for s in image.GetSpacing()]
    factors = [min(f, max(1, n // 4)) for f, n in zip(factors, image.GetSize())]
    out = sitk.BinShrink(image, factors) if max(factors) > 1 else image
    if sigma_mm > 0:
        out = sitk.SmoothingRecursiveGaussian(out, float(sigma_mm))
    cache[key] = out
    return out


class _metric_threads:
    """Run ITK with ``n`` threads inside the block (None: leave as is).

    ITK's Mattes mutual information accumulates its joint histogram from several threads in whatever order they
    finish: two runs on the same inputs then differ in the last bits, and the optimiser's path amplifies that to
    ~0.01 mm. One thread makes every run bit-identical (``threads=1``, the default, for determinism).
    """

    def __init__(self, n):
        self.n = n
        self.previous = None

    def __enter__(self):
        if self.n:
            self.previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(self.n))
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(self.previous)
        return False


def _copy_transform(tx: sitk.Transform) -> sitk.Transform:
    """A deep copy keeping the concrete class (Euler3DTransform stays Euler3DTransform)."""
    name = tx.GetName()
    cls = getattr(sitk, name, None)
    if cls is not None and name != "Transform":
        try:
            return cls(tx)
        except (TypeError, RuntimeError):
            pass
    copy = sitk.Transform(tx)
    copy.MakeUnique()
    return copy


MIN_LEVEL_SAMPLES = 20  # fewer metric samples on a level: ITK fails with "Refusing to change spacing ..." or
MIN_LEVEL_VOXELS = 4  # "VirtualSampledPointSet must have 1 or more points"; so does a level grid this narrow


def _check_level_samples(stage_type, si, level, level_image, n_samples):
    """Refuse a level that has too few metric samples or too narrow a grid, in the preset's words (before ITK)."""
    size = level_image.GetSize()
    spacing = ", ".join(f"{v:.3g}" for v in level_image.GetSpacing())
    where = f"stages.{si} ({stage_type}) level {level + 1}"
    if min(size) < MIN_LEVEL_VOXELS:
        raise CrossModalRegError(f"{where}: the image shrinks to {' x '.join(map(str, size))} voxels of {spacing} mm "
                                 f"(fewer than {MIN_LEVEL_VOXELS} along an axis): use a smaller "
                                 f"stages.{si}.level_spacing_mm (or shrink_factors) for this image size")
    if n_samples < MIN_LEVEL_SAMPLES:
        raise CrossModalRegError(f"{where}: only {int(n_samples)} metric sample(s) (at least {MIN_LEVEL_SAMPLES} "
                                 f"needed): raise stages.{si}.sampling.samples_per_level (or percentage) or use a "
                                 f"finer stages.{si}.level_spacing_mm")


DIVERGED_PARAMETER = 1e6  # a transform parameter (mm, or a matrix entry) this large: the optimiser ran away
APART_OVERLAP = 0.05  # fraction of the fixed foreground still inside the moving image: below it, "moved apart"


def _stage_error(stage_type, exc, position, make_preview, fixed_img, moving_img):
    """The user's error for an ITK failure in the middle of a stage, judged from where the optimiser last was (its
    parameters and the overlap they leave), not from ITK's text ("Refusing to change spacing ... -2.43e+37", "All
    samples map outside moving image buffer", "VirtualSampledPointSet ..."), which is kept only as a detail."""
    from .initialization import overlap_fraction

    advice = "try a smaller learning rate, landmark initialisation, an initial transform or masks"
    if position is not None:
        pos = np.asarray(position, dtype=float)
        if not np.all(np.isfinite(pos)) or np.abs(pos).max() > DIVERGED_PARAMETER:
            return RegistrationFailed(f"the {stage_type} optimiser diverged (a transform parameter reached "
                                      f"{np.nanmax(np.abs(pos)):.3g}): {advice}", ["diverged"], None)
        try:
            frac = overlap_fraction(fixed_img, moving_img, make_preview(position), max_points=4000)
        except (RuntimeError, np.linalg.LinAlgError):
            frac = 0.0
        if frac < APART_OVERLAP:
            return RegistrationFailed(f"the {stage_type} optimiser moved the images apart ({100 * frac:.1f}% of the "
                                      f"fixed image still overlaps the moving one): {advice}", ["moved apart"], None)
    return CrossModalRegError(f"the {stage_type} stage could not run on these images ({advice}); ITK said: "
                              f"{_short_itk_error(exc)}")


def _short_itk_error(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    for line in reversed(text):
        if "Description" in line or "description" in line:
            return line.split(":", 1)[-1].strip()
    return text[-1] if text else repr(exc)
