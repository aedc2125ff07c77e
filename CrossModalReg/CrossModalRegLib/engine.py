"""The registration engine (SimpleITK, Qt-free): 2D and 3D, rigid / affine / B-spline stages, cross-modality metrics.

The single entry point is :func:`register`. Its result's ``transform_fixed_to_moving_lps`` maps a point of the
FIXED image's physical space (LPS mm) to the corresponding point of the MOVING image (LPS mm): the ITK
resampling direction. ``sitk.Resample(moving, fixed, result.transform_fixed_to_moving_lps)`` brings the moving
image onto the fixed grid; in Slicer the same transform is the *transform from parent* of the node the moving
volume is placed under (see ``mrml.set_transform_fixed_to_moving``).

:func:`register` is a short pipeline of named steps passing one state object (``_Run``, holding the checked
``_Options``):
``_validated_run`` (pre-flight: every input and option checked before anything is computed) -> ``_preprocess``
-> ``_initialise`` (moments / geometry / landmarks / the caller's transform, then the orientation and rotation
searches) -> ``_run_stages`` (each stage: ``_linear_stage``, ``_itk_bspline_stage``, ``_stochastic_bspline_stage``
or ``_mind_stage``) -> ``_check`` (post-run sanity checks) -> ``_finish`` (timings, strict failure, progress 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
    preset_alias: str | None = None  # the former preset name the caller used (``presets.ALIASES``), if any

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
            **({"preset_alias": {"requested": self.preset_alias, "note": presets.alias_note(self.preset_alias)}}
               if self.preset_alias else {}),
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


@dataclass(frozen=True)
class _Options:
    """The checked inputs and options of one :func:`register` call (made by ``_validated_run``, read-only)."""

    fixed: sitk.Image
    moving: sitk.Image
    preset: dict
    dim: int
    fixed_mask: sitk.Image | None
    moving_mask: sitk.Image | None
    fixed_landmarks: object
    moving_landmarks: object
    given_start_fixed_to_moving: sitk.Transform | None  # the caller's initial transform (LPS), if any
    method_name: str  # "moments", "geometry", "landmarks", "none" or "transform" (the caller's)
    do_search: object  # rotation search (the preset's value or the caller's)
    do_orient: object  # orientation search (3D only)
    seed: int
    threads: int | None
    cancelled: Callable[[], bool]

    @property
    def stages(self) -> list[dict]:
        return self.preset["stages"]

    @property
    def init_cfg(self) -> dict:
        return self.preset.get("initialization", {})


@dataclass
class _Run:
    """What the steps of one :func:`register` call share: the options, progress and timings, then what each step
    adds (``_preprocess`` the working images, ``_initialise`` the start). Every transform held here maps
    FIXED-space points to MOVING-space points, LPS mm."""

    opt: _Options
    t_start: float
    tracker: ProgressTracker | None = None
    stage_costs: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    fixed_p: sitk.Image | None = None  # preprocessed, at the working resolution
    moving_p: sitk.Image | None = None
    pyramid_cache: dict = field(default_factory=dict)
    overlap_region: sitk.Image | None = None  # fixed mask, else the fixed Otsu foreground
    fixed_eval: sitk.Image | None = None  # smoothed copies for the start/end metric
    moving_eval: sitk.Image | None = None
    start_metric: float | None = None
    init_info: dict = field(default_factory=dict)
    initialised_fixed_to_moving: sitk.Transform | None = None  # the initialisation, before any search
    current_fixed_to_moving: sitk.Transform | None = None  # the optimiser's start, after the searches
    searched_fixed_to_moving: sitk.Transform | None = None  # a copy of it (kept when a stage changes the original)


@dataclass
class _Stage:
    """One preset stage while it runs: its index, its settings and where its levels sit within its progress."""

    index: int
    config: dict
    level_start: np.ndarray
    level_width: np.ndarray

    @classmethod
    def of(cls, index: int, config: dict, costs: list[float]) -> _Stage:
        return cls(index, config, np.concatenate([[0.0], np.cumsum(costs)])[:-1] / sum(costs),
                   np.array(costs) / sum(costs))

    @property
    def type(self) -> str:
        return self.config["type"]


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
        Raising ``RegistrationCancelled`` from it cancels the run like ``cancel`` (see :mod:`.progress`).
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
    t_start, tracker = time.perf_counter(), ProgressTracker(progress, cancel=cancel)
    preset_dict = presets.apply_overrides(presets.load_preset(preset), overrides)
    run = _Run(_validated_run(
        fixed, moving, preset_dict, fixed_mask=fixed_mask, moving_mask=moving_mask, fixed_landmarks=fixed_landmarks,
        moving_landmarks=moving_landmarks, initial_transform_fixed_to_moving=initial_transform_fixed_to_moving,
        initialization_method=initialization_method, rotation_search=rotation_search,
        orientation_search=orientation_search, seed=seed, threads=threads, cancelled=tracker.cancelled), t_start)
    run.tracker, run.inputs = tracker.set_weights(_progress_weights(run)), _input_provenance(run)
    _preprocess(run)
    _initialise(run)
    result = _new_result(run)
    result.preset_alias = presets.alias_of(preset)
    result.transform_fixed_to_moving_lps = _run_stages(run, result)
    _check(run, result)
    return _finish(run, result, strict=strict)


def _validated_run(fixed, moving, preset_dict, *, fixed_mask, moving_mask, fixed_landmarks, moving_landmarks,
                   initial_transform_fixed_to_moving, initialization_method, rotation_search, orientation_search,
                   seed, threads, cancelled) -> _Options:
    """Pre-flight: every input and option checked (raising ``CrossModalRegError`` with what to fix) before
    anything is computed; returns them with the chosen initialisation and searches."""
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
    init_cfg = preset_dict.get("initialization", {})
    method_name = initialization_method or (
        "landmarks" if fixed_landmarks is not None or moving_landmarks is not None else init_cfg.get("method", "moments")
    )
    if initial_transform_fixed_to_moving is not None:
        method_name = "transform"
    if method_name == "landmarks":
        fixed_landmarks, moving_landmarks = initialization.check_landmark_pairs(fixed_landmarks, moving_landmarks, dim)
    if initial_transform_fixed_to_moving is not None:
        _check_initial_transform(initial_transform_fixed_to_moving, dim)
    do_search = init_cfg.get("rotation_search", {}).get("enabled", False) if rotation_search is None else rotation_search
    do_orient = (init_cfg.get("orientation_search", {}).get("enabled", False) if orientation_search is None
                 else orientation_search) and dim == 3
    if method_name in ("landmarks", "transform"):
        do_search = bool(rotation_search)  # a user-given start is trusted unless a search is asked for
        do_orient = bool(orientation_search) and dim == 3
    return _Options(fixed, moving, preset_dict, dim, fixed_mask, moving_mask, fixed_landmarks, moving_landmarks,
                    initial_transform_fixed_to_moving, method_name, do_search, do_orient, seed, threads, cancelled)


def _check_initial_transform(tx: sitk.Transform, dim: int) -> None:
    """The caller's starting transform (fixed -> moving, LPS) must be linear and of the images' dimension."""
    if tx.GetDimension() != dim:
        raise CrossModalRegError(f"initial transform is {tx.GetDimension()}D but the images are {dim}D")
    if not tx.IsLinear():
        raise CrossModalRegError("the initial transform must be linear (rigid or affine)")


def _progress_weights(run: _Run) -> dict[str, float]:
    """The progress weights of the steps: preprocessing, initialisation (more with searches) and each stage by
    its estimated cost; also stores the stages' per-level costs in ``run.stage_costs``."""
    weights = {"preprocess": 0.03 * 1e6,
               "initialize": (0.02 + 0.13 * run.opt.do_search + 0.1 * run.opt.do_orient) * 1e6}
    run.stage_costs = [_level_costs(run.opt.fixed, st) for st in run.opt.stages]
    total_stage = sum(sum(c) for c in run.stage_costs) or 1.0
    for i, c in enumerate(run.stage_costs):
        weights[f"stage{i}"] = 0.80 * 1e6 * sum(c) / total_stage
    return weights


def _input_provenance(run: _Run) -> dict:
    """Checksums, sizes and spacings of the inputs (and masks, landmark pairs) for the provenance."""
    fixed, moving = run.opt.fixed, run.opt.moving
    inputs = {
        "fixed": {"sha256": sha256_of_image(fixed), "size": list(fixed.GetSize()), "spacing": list(fixed.GetSpacing())},
        "moving": {"sha256": sha256_of_image(moving), "size": list(moving.GetSize()),
                   "spacing": list(moving.GetSpacing())},
    }
    if run.opt.fixed_mask is not None:
        inputs["fixed_mask"] = {"sha256": sha256_of_image(run.opt.fixed_mask)}
    if run.opt.moving_mask is not None:
        inputs["moving_mask"] = {"sha256": sha256_of_image(run.opt.moving_mask)}
    if run.opt.fixed_landmarks is not None and run.opt.moving_landmarks is not None:
        inputs["landmark_pairs"] = int(len(run.opt.fixed_landmarks))
    return inputs


def _preprocess(run: _Run) -> None:
    """The preset's preprocessing of both images, at the working resolution (``run.fixed_p``, ``run.moving_p``)."""
    t = time.perf_counter()
    o = run.opt
    pre = o.preset.get("preprocessing", {})
    run.tracker.update("preprocess", 0.0, message="preprocessing")
    # When every stage stops at a level coarser than the images (e.g. 2 mm for a 1 mm head), work on block-averaged
    # copies at that resolution from the start: preprocessing, pyramids and checks then cost 1/8 as much.
    working_mm = _working_spacing_mm(o.stages)
    fixed_w, moving_w = _at_working_resolution(o.fixed, working_mm), _at_working_resolution(o.moving, working_mm)
    run.inputs["working_spacing_mm"] = working_mm  # None: the images' own grids
    run.fixed_p = preprocess(fixed_w, pre.get("fixed"), mask=o.fixed_mask, cancelled=o.cancelled)
    run.tracker.update("preprocess", 0.5, message="preprocessing")
    run.moving_p = preprocess(moving_w, pre.get("moving"), mask=o.moving_mask, cancelled=o.cancelled)
    if o.cancelled():
        raise RegistrationCancelled()
    run.tracker.update("preprocess", 1.0, message="preprocessed")
    run.timings["preprocess"] = time.perf_counter() - t


def _initialise(run: _Run) -> None:
    """The start (fixed -> moving, LPS): the caller's transform or the initialisation method, checked for overlap,
    its metric taken as the reference, then improved by the orientation and rotation searches when enabled."""
    t = time.perf_counter()
    o = run.opt
    run.tracker.update("initialize", 0.0, message=f"initialising ({o.method_name})")
    if o.method_name == "transform":
        current = o.given_start_fixed_to_moving
        run.init_info = {"method": "transform"}
    else:
        current, run.init_info = initialization.initial_transform(
            run.fixed_p, run.moving_p, o.method_name, fixed_landmarks=o.fixed_landmarks,
            moving_landmarks=o.moving_landmarks)
    run.initialised_fixed_to_moving = _copy_transform(current)  # one of the starts the result is compared with
    # Where the fixed image has something to overlap: its mask, else its Otsu foreground (used before and after).
    run.overlap_region = o.fixed_mask if o.fixed_mask is not None else foreground_mask(run.fixed_p)
    initialization.check_overlap(run.fixed_p, run.moving_p, current, fixed_mask=run.overlap_region,
                                 when="after initialisation")
    # The reference for "did the optimisation make it worse": the start before any search or optimisation.
    run.fixed_eval = sanity.smoothed_for_evaluation(run.fixed_p)
    run.moving_eval = sanity.smoothed_for_evaluation(run.moving_p)
    with _metric_threads(o.threads):
        run.start_metric = _first_stage_metric(run, current)
    if o.do_orient:
        current = _search(run, current, "orientation_search", lambda f: run.tracker.update(
            "initialize", 0.4 * f if o.do_search else f, message="searching orientations"))
    if o.do_search:
        current = _search(run, current, "rotation_search", lambda f: run.tracker.update(
            "initialize", 0.4 * o.do_orient + (1 - 0.4 * o.do_orient) * f, message="searching rotations"))
    run.current_fixed_to_moving = current
    run.searched_fixed_to_moving = _copy_transform(current)
    run.tracker.update("initialize", 1.0, message="initialised")
    run.timings["initialize"] = time.perf_counter() - t


def _search(run: _Run, current: sitk.Transform, kind: str, report) -> sitk.Transform:
    """A better start than ``current`` (fixed -> moving, LPS) from ``initialization.orientation_search`` (the 24
    axis-aligned orientations of the moving image) or ``initialization.rotation_search`` (a coarse grid of
    rotations, refined), configured by the preset's ``initialization.<kind>``; its report goes into the
    provenance's ``initialization.<kind>``."""
    o = run.opt
    search = initialization.orientation_search if kind == "orientation_search" else initialization.rotation_search
    with _metric_threads(o.threads):
        current, info = search(run.fixed_p, run.moving_p, current, metric=o.stages[0]["metric"],
                               config=dict(o.init_cfg.get(kind, {})), seed=o.seed, fixed_mask=o.fixed_mask,
                               moving_mask=o.moving_mask, progress=lambda p: report(p.fraction), cancel=o.cancelled)
    run.init_info[kind] = info
    return current


def _new_result(run: _Run) -> RegistrationResult:
    """The result as it stands after initialisation (its transform is the start until the stages replace it)."""
    result = RegistrationResult(
        transform_fixed_to_moving_lps=run.current_fixed_to_moving,
        initial_transform_fixed_to_moving_lps=run.searched_fixed_to_moving,
        preset=run.opt.preset,
        preset_sha256=presets.preset_sha256(run.opt.preset),
        seed=int(run.opt.seed),
        dimension=run.opt.dim,
        initialization=run.init_info,
        inputs=run.inputs,
        started=now_iso(),
        threads=run.opt.threads,
    )
    result.initial_metric = run.start_metric
    return result


def _run_stages(run: _Run, result: RegistrationResult) -> sitk.Transform:
    """Every preset stage in turn, each linear one starting from the linear result before it; returns the final
    transform, fixed -> moving (LPS): the last linear stage's ``L``, or ``L(B(x))`` with the last B-spline ``B``."""
    linear, bspline = run.current_fixed_to_moving, None
    for si, config in enumerate(run.opt.stages):
        if run.opt.cancelled():
            raise RegistrationCancelled()
        t = time.perf_counter()
        stage = _Stage.of(si, config, run.stage_costs[si])
        out = _one_stage(run, result, stage, linear)
        if stage.type == "bspline":
            bspline = out
        else:
            linear = out
        run.timings[f"stage{si}_{stage.type}"] = time.perf_counter() - t
        run.tracker.update(f"stage{si}", 1.0, stage=stage.type, stage_index=si, n_stages=len(run.opt.stages),
                           message=f"{stage.type} done")
    return linear if bspline is None else sitk.CompositeTransform([_copy_transform(linear), bspline])


def _one_stage(run: _Run, result: RegistrationResult, stage: _Stage, linear: sitk.Transform) -> sitk.Transform:
    """One stage from ``linear`` (fixed -> moving): a linear stage returns its transform (fixed -> moving), a
    B-spline stage its B-spline ``B`` (fixed -> intermediate; the stage's transform is ``linear(B(x))``)."""
    if stage.config["metric"]["name"] == "mind_ssc":
        # MIND-SSC (``mind``): its own descriptors, off-grid samples and optimiser, on the input images (the
        # ultrasound's zero background is its field of view, which preprocessing would blur).
        return _mind_stage(run, result, stage, linear)
    if stage.type in ("rigid", "affine"):
        return _linear_stage(run, result, stage, linear)
    shrink, _ = _levels(stage.config)
    scale_factors = [int(v) for v in stage.config.get("mesh_scale_factors", [1] * len(shrink))]
    mesh = _bspline_mesh(run.fixed_p, float(stage.config["control_point_spacing_mm"]), scale_factors[-1])
    if _is_stochastic(stage.config):
        return _stochastic_bspline_stage(run, result, stage, linear, mesh)
    return _itk_bspline_stage(run, result, stage, linear, mesh)


def _itk_method(run: _Run, stage: _Stage, fraction: float, level: int) -> sitk.ImageRegistrationMethod:
    """A SimpleITK registration method with the stage's metric sampling ``fraction`` of the level's voxels."""
    cfg = stage.config
    return metric_method(cfg["metric"], strategy=cfg.get("sampling", {}).get("strategy", "random"),
                         fractions_per_level=[fraction], seed=run.opt.seed + stage.index * 16 + level,
                         fixed_mask=run.opt.fixed_mask, moving_mask=run.opt.moving_mask)


def _linear_stage(run: _Run, result: RegistrationResult, stage: _Stage, linear: sitk.Transform) -> sitk.Transform:
    """A rigid or affine stage started from ``linear``; returns its transform (fixed -> moving, LPS).

    Our own pyramid of block-averaged (BinShrink) and smoothed copies, one optimisation per level. ITK's built-in
    pyramid smooths the full-size images at every level, which was a third of the run time on a 1 mm head; the
    result is the same kind of coarse-to-fine optimisation."""
    _, sigmas = _levels(stage.config)
    stage_tx = _linear_transform_for(stage.type, run.opt.dim, linear)
    pcts = _sampling_percentages(run.fixed_p, stage.config)

    def make_preview(pos):
        tx = _copy_transform(stage_tx)
        tx.SetParameters(pos)
        return tx

    factors = _level_factors(run.fixed_p, stage.config)
    for level, (factor, sigma) in enumerate(zip(factors, sigmas)):
        if run.opt.cancelled():
            raise RegistrationCancelled()
        f_l = _pyramid_level(run.pyramid_cache, "fixed", run.fixed_p, factor, sigma, reference_spacing=run.fixed_p)
        m_l = _pyramid_level(run.pyramid_cache, "moving", run.moving_p, factor, sigma, reference_spacing=run.fixed_p)
        n_level = float(np.prod(f_l.GetSize()))
        n_wanted = pcts[level] * np.prod(run.fixed_p.GetSize()) / factor ** run.opt.dim
        _check_level_samples(stage.type, stage.index, level, f_l, min(n_wanted, n_level))
        method = _itk_method(run, stage, min(1.0, n_wanted / n_level), level)
        method.SetInitialTransform(stage_tx, inPlace=True)
        _set_optimizer(method, stage.config.get("optimizer", {}), stage.type)
        _execute(run, result, stage, method, (f_l, m_l), make_preview, level)
    return stage_tx


def _itk_bspline_stage(run: _Run, result: RegistrationResult, stage: _Stage, linear: sitk.Transform,
                       mesh: list[int]) -> sitk.BSplineTransform:
    """A B-spline stage optimised by SimpleITK (L-BFGS-B); returns the B-spline ``B`` (fixed -> intermediate,
    LPS), the stage's transform being ``linear(B(x))``, fixed -> moving.

    Coarse to fine: each level's control grid is the previous one refined (its coefficients fitted to interpolate
    the previous level's displacement exactly at the new control points), then optimised on that level's pyramid
    images with L-BFGS-B. ITK's built-in mesh refinement cannot be used with L-BFGS-B (its scales keep the first
    level's size), and L-BFGS-B is the optimiser that moves thousands of control points sensibly (a normalised
    gradient step gives each only ~1/sqrt(n) of the step)."""
    shrink, _ = _levels(stage.config)
    pcts = _sampling_percentages(run.fixed_p, stage.config)
    level_tx = None
    for level, f_l, m_l, level_tx in _bspline_levels(stage.config, run.fixed_p, run.moving_p, mesh,
                                                     run.pyramid_cache, run.opt.cancelled):
        n_wanted = pcts[level] * np.prod(run.fixed_p.GetSize()) / float(shrink[level]) ** run.opt.dim
        _check_level_samples(stage.type, stage.index, level, f_l, min(n_wanted, float(np.prod(f_l.GetSize()))))
        method = _itk_method(run, stage, min(1.0, n_wanted / float(np.prod(f_l.GetSize()))), level)
        method.SetMovingInitialTransform(_copy_transform(linear))
        method.SetInitialTransform(level_tx, inPlace=True)
        _set_optimizer(method, stage.config.get("optimizer", {}), stage.type)

        def make_preview(pos, level_tx=level_tx):
            b = sitk.BSplineTransform(level_tx)
            b.SetParameters(pos)
            return sitk.CompositeTransform([_copy_transform(linear), b])

        _execute(run, result, stage, method, (f_l, m_l), make_preview, level)
    return level_tx


def _execute(run: _Run, result: RegistrationResult, stage: _Stage, method: sitk.ImageRegistrationMethod, images,
             make_preview, level: int) -> None:
    """One level of a SimpleITK stage on ``images`` (fixed, moving): the metric of every iteration into the result
    and the progress (with a preview transform, fixed -> moving), stopped within an iteration of a cancel.

    Raises ``RegistrationCancelled``, or when ITK fails mid-stage the error :func:`_stage_error` judges from where
    the optimiser last was (``RegistrationFailed`` when it diverged or moved the images apart, else
    ``CrossModalRegError``)."""
    cancelled_here = []
    last = {}
    n_levels = len(_levels(stage.config)[0])
    max_iter = int(stage.config.get("optimizer", {}).get("iterations", 100))

    def on_iteration():
        it = method.GetOptimizerIteration()
        value = method.GetMetricValue()
        position = method.GetOptimizerPosition()  # copied now: the optimiser forgets it after the run
        last["position"] = position  # where the optimiser was, should ITK fail at the next step
        result.metric_trace.append(MetricSample(stage.index, stage.type, int(level), int(it), float(value)))
        within = stage.level_start[level] + stage.level_width[level] * min(1.0, (it + 1) / max(max_iter, 1))
        run.tracker.update(
            f"stage{stage.index}", within, stage=stage.type, stage_index=stage.index, n_stages=len(run.opt.stages),
            level=int(level), n_levels=n_levels, iteration=int(it), metric=float(value),
            message=f"{stage.type} level {level + 1}/{n_levels}", _transform_factory=lambda: make_preview(position),
        )
        if run.opt.cancelled():
            cancelled_here.append(True)
            method.StopRegistration()

    method.AddCommand(sitk.sitkIterationEvent, on_iteration)
    try:
        with _metric_threads(run.opt.threads):
            method.Execute(*images)
    except RuntimeError as exc:
        if cancelled_here or run.opt.cancelled():
            raise RegistrationCancelled() from None
        raise _stage_error(stage.type, exc, last.get("position"), make_preview, *images) from None
    if cancelled_here or run.opt.cancelled():
        raise RegistrationCancelled()
    result.stop_conditions.append(f"{stage.type}: {method.GetOptimizerStopConditionDescription()}")


def _check(run: _Run, result: RegistrationResult) -> None:
    """Post-run sanity checks of the result (fixed -> moving): the first stage's metric at the end against the
    start, the transform's plausibility and overlap, and the independent (NGF) agreement when the preset asks."""
    t = time.perf_counter()
    final = result.transform_fixed_to_moving_lps
    with _metric_threads(run.opt.threads):
        result.final_metric = _first_stage_metric(run, final)
    result.sanity = sanity.check_result(run.fixed_p, run.moving_p, final, initial_metric=result.initial_metric,
                                        final_metric=result.final_metric, fixed_mask=run.overlap_region)
    checks_cfg = run.opt.preset.get("checks", {})
    if checks_cfg.get("independent_agreement", True):
        identity = sitk.Transform(run.opt.dim, sitk.sitkIdentity)  # the headers' own alignment
        starts = {"headers": identity, "initialisation": run.initialised_fixed_to_moving,
                  "search": run.searched_fixed_to_moving}
        min_ratio = float(checks_cfg.get("independent_agreement_min_ratio", sanity.INDEPENDENT_MIN_RATIO))
        with _metric_threads(run.opt.threads):
            result.sanity.checks.append(sanity.check_independent_agreement(
                run.fixed_p, run.moving_p, final, starts, fixed_mask=run.opt.fixed_mask, seed=run.opt.seed,
                min_ratio=min_ratio))
    run.timings["sanity"] = time.perf_counter() - t


def _finish(run: _Run, result: RegistrationResult, *, strict: bool) -> RegistrationResult:
    """Timings into the result; ``RegistrationFailed`` (carrying the result) when strict and a check failed."""
    run.timings["total"] = time.perf_counter() - run.t_start
    result.timings_s = {k: round(v, 4) for k, v in run.timings.items()}
    if strict and not result.sanity.passed:
        raise RegistrationFailed(
            "the result failed the post-run checks: " + "; ".join(result.sanity.failures()), result.sanity.failures(),
            result,
        )
    run.tracker.finish("done")
    return result


def _first_stage_metric(run: _Run, transform: sitk.Transform) -> float:
    """The first stage's metric (lower is better) at ``transform`` (fixed -> moving): SimpleITK's on the smoothed
    evaluation copies, or MIND-SSC on the input images (``mind.evaluate``: off-grid samples, field-of-view mask)."""
    o = run.opt
    metric = o.stages[0]["metric"]
    if metric["name"] == "mind_ssc":
        from . import mind

        return mind.evaluate(o.fixed, o.moving, transform, metric, seed=o.seed, fixed_mask=o.fixed_mask,
                             moving_mask=o.moving_mask)
    return sanity.evaluate_metric(run.fixed_eval, run.moving_eval, transform, metric, fixed_mask=o.fixed_mask,
                                  moving_mask=o.moving_mask, seed=o.seed)


def _mind_stage(run: _Run, result: RegistrationResult, stage: _Stage, linear: sitk.Transform) -> sitk.Transform:
    """A stage on MIND-SSC, on the input images (``run.opt.fixed``, ``run.opt.moving``). Rigid: ``mind.register_rigid``,
    returns its Euler3DTransform. B-spline (asgd): the levels of ``_bspline_levels`` optimised by
    ``stochastic_bspline.optimise_level`` on ``mind.MindBSplineLevel``; returns the B-spline B (fixed ->
    intermediate, the stage's transform being ``linear(B(x))``). Both fixed -> moving, LPS."""
    from . import mind
    from . import stochastic_bspline as sb

    o, cfg, si = run.opt, stage.config, stage.index
    bspline = cfg["type"] == "bspline"
    levels = len(cfg.get("shrink_factors" if bspline else "level_spacing_mm", [1.0]))
    iterations = int(cfg.get("optimizer", {}).get("iterations", 30))

    def on_iteration(level, it, value):
        result.metric_trace.append(MetricSample(si, cfg["type"], int(level), int(it), float(value)))
        run.tracker.update(f"stage{si}", stage.level_start[level] + stage.level_width[level] * min(
            1.0, (it + 1) / iterations), stage=cfg["type"], stage_index=si, n_stages=len(o.stages),
            level=int(level), n_levels=levels, iteration=int(it), metric=float(value),
            message=f"{cfg['type']} (MIND-SSC) level {level + 1}/{levels}")

    try:
        f_mask, m_mask = mind.fov_masks(o.fixed, o.moving, cfg["metric"], o.fixed_mask, o.moving_mask)
        if not bspline:
            tx, stops = mind.register_rigid(o.fixed, o.moving, linear, cfg, seed=o.seed + si * 16,
                                            fixed_mask=f_mask, moving_mask=m_mask, on_iteration=on_iteration,
                                            cancelled=o.cancelled)
        else:
            tx, stops = _mind_bspline_levels(run, stage, linear, f_mask, m_mask, on_iteration)
    except sb.ImagesApart as exc:
        raise RegistrationFailed(f"the MIND-SSC bspline optimiser moved the images apart ({exc})", [str(exc)],
                                 None) from None
    except ValueError as exc:
        raise CrossModalRegError(f"the MIND-SSC {cfg['type']} stage could not run: {exc}") from None
    if o.cancelled():
        raise RegistrationCancelled()
    result.stop_conditions.extend(stops)
    return tx


def _mind_bspline_levels(run: _Run, stage: _Stage, linear, f_mask, m_mask, on_iteration):
    """The levels of a MIND-SSC B-spline stage (see ``_mind_stage``); returns (B-spline, stop conditions)."""
    from . import mind
    from . import stochastic_bspline as sb

    o, cfg, si = run.opt, stage.config, stage.index
    opt = cfg.get("optimizer", {})
    iterations = int(opt.get("iterations", 30))
    shrink, sigmas = _levels(cfg)
    scale_factors = [int(v) for v in cfg.get("mesh_scale_factors", [1] * len(shrink))]
    mesh = _bspline_mesh(run.fixed_p, float(cfg["control_point_spacing_mm"]), scale_factors[-1])
    steps = _per_level(opt.get("max_step_mm", 1.0), len(shrink))
    n_samples = [int(v) for v in _per_level(cfg["sampling"]["samples_per_iteration"], len(shrink))]
    mind_cfg = mind.MindConfig.from_metric(cfg["metric"])
    stops, tx = [], None
    for level, _f, _m, tx in _bspline_levels(cfg, run.fixed_p, run.moving_p, mesh, run.pyramid_cache,
                                             o.cancelled):
        f_l, m_l = mind.level_images(o.fixed, o.moving, shrink[level] * min(o.fixed.GetSpacing()),
                                     sigmas[level])
        lv = mind.MindBSplineLevel(mind.MindLevel(f_l, m_l, mind_cfg, fixed_mask=f_mask, moving_mask=m_mask),
                                   linear, tx, rng=np.random.default_rng(o.seed + si * 16 + level))
        stop = sb.optimise_level(
            lv, iterations=iterations, samples=n_samples[level], max_step_mm=steps[level],
            a_offset=float(opt.get("A", 20.0)), alpha=float(opt.get("alpha", 0.602)),
            bending_weight=float(cfg.get("regularization", {}).get("bending_energy_weight", 0.0)),
            average_last=float(opt.get("average_last", 0.0)),
            on_iteration=lambda it, v, _c, level=level: on_iteration(level, it, v), cancelled=o.cancelled)
        stops.append(f"mind_ssc bspline level {level + 1}: {stop}")
    return tx, stops


def _stochastic_bspline_stage(run: _Run, result: RegistrationResult, stage: _Stage, linear: sitk.Transform,
                              mesh: list[int]) -> sitk.BSplineTransform:
    """The B-spline stage with new random samples every iteration (``optimizer.name == "asgd"``): coarse to fine,
    each level's grid the previous one refined exactly, optimised by ``stochastic_bspline.optimise_level``.

    Returns the B-spline (fixed -> intermediate, LPS); the stage's transform is ``linear(B(x))``, fixed -> moving.
    Samples are drawn over the whole fixed image, or inside the fixed mask when one is given (a mask drawn inside
    the organ's boundary hides the edges mutual information needs: see the README). ``run.opt.threads`` share each
    iteration's samples (None: every core); the result does not depend on their number."""
    import os

    from . import stochastic_bspline as sb

    o, cfg, si = run.opt, stage.config, stage.index
    shrink, _ = _levels(cfg)
    opt = cfg.get("optimizer", {})
    iterations = int(opt.get("iterations", 256))
    steps = _per_level(opt.get("max_step_mm", 1.0), len(shrink))
    n_samples = [int(v) for v in _per_level(cfg["sampling"]["samples_per_iteration"], len(shrink))]
    bending = float(cfg.get("regularization", {}).get("bending_energy_weight", 0.0))
    level_tx = None
    for level, f_l, m_l, level_tx in _bspline_levels(cfg, run.fixed_p, run.moving_p, mesh, run.pyramid_cache,
                                                     o.cancelled):
        try:
            opt_level = sb.StochasticBSplineLevel(
                sb.LevelImages(f_l, m_l, _sample_mask(o.fixed_mask, f_l)), linear, level_tx,
                bins=int(cfg["metric"].get("bins", 32)), moving_mask=o.moving_mask,
                rng=np.random.default_rng(o.seed + si * 16 + level))
        except ValueError as exc:
            raise CrossModalRegError(f"bspline stage could not run: {exc}") from None
        try:
            stop = sb.optimise_level(
                opt_level, iterations=iterations, samples=n_samples[level], max_step_mm=steps[level],
                a_offset=float(opt.get("A", 20.0)), alpha=float(opt.get("alpha", 0.602)), bending_weight=bending,
                average_last=float(opt.get("average_last", 0.0)),
                on_iteration=_asgd_reporter(run, result, stage, linear, level, level_tx, iterations),
                cancelled=o.cancelled, threads=o.threads if o.threads else os.cpu_count())
        except sb.ImagesApart as exc:
            raise RegistrationFailed(f"the bspline optimiser moved the images apart ({exc}); try a smaller "
                                     "max_step_mm, a fixed mask or landmarks", [str(exc)], None) from None
        if stop == "cancelled" or o.cancelled():
            raise RegistrationCancelled()
        result.stop_conditions.append(f"bspline level {level + 1}: {stop}")
    return level_tx


def _sample_mask(fixed_mask: sitk.Image | None, level_image: sitk.Image):
    """The fixed mask on a pyramid level's grid as a boolean array (k, j, i), or None without a mask."""
    if fixed_mask is None:
        return None
    on_level = sitk.Resample(fixed_mask, level_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayViewFromImage(on_level) > 0


def _asgd_reporter(run: _Run, result: RegistrationResult, stage: _Stage, linear, level: int, level_tx, iterations):
    """The per-iteration callback of a stochastic B-spline level: the metric into the result and the progress,
    with a preview ``linear(B(x))`` (fixed -> moving) built from a snapshot of the coefficients."""
    from . import stochastic_bspline as sb

    n_levels = len(_levels(stage.config)[0])

    def on_iteration(it, value, coef):
        result.metric_trace.append(MetricSample(stage.index, "bspline", level, int(it), float(value)))
        snapshot = coef.copy()

        def preview():
            b = sitk.BSplineTransform(level_tx)
            sb.set_coefficients(b, snapshot)
            return sitk.CompositeTransform([_copy_transform(linear), b])

        run.tracker.update(f"stage{stage.index}", stage.level_start[level] + stage.level_width[level] * (it + 1)
                           / iterations, stage="bspline", stage_index=stage.index, n_stages=len(run.opt.stages),
                           level=level, n_levels=n_levels, iteration=int(it), metric=float(value),
                           message=f"bspline level {level + 1}/{n_levels}", _transform_factory=preview)

    return on_iteration


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
