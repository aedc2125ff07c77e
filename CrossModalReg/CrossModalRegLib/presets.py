"""Registration presets: versioned JSON data files, one per modality pair, validated on load.

A preset file (``presets/<name>.json``) has::

    {
      "schema_version": 1,                  # version of this file format
      "name": "mr-ct-rigid", "version": "1.0.0",
      "title": "...", "when_to_use": "...", "modalities": {"fixed": "MR", "moving": "CT"},
      "dimension": 3,                       # 2, 3 or "any"
      "preprocessing": {"fixed": {...}, "moving": {...}},
      "initialization": {"method": "moments" | "geometry" | "landmarks" | "none",
                         "orientation_search": {"enabled": true, "coarse_spacing_mm": 8, "top_k": 3, ...},
                         "rotation_search": {"enabled": true, "max_angle_deg": 45, "step_deg": 15, ...}},
      "checks": {"independent_agreement": true},   # the post-run NGF check (sanity.check_independent_agreement)
      "stages": [ {"type": "rigid" | "affine" | "bspline", "metric": {...}, "sampling": {...},
                   "optimizer": {...}, "shrink_factors": [...] or "level_spacing_mm": [...] (linear stages),
                   "smoothing_sigmas_mm": [...], ...}, ... ]
    }

Names and titles: a preset is named ``<fixed>-<moving>-<model>`` with the FIXED modality first (``mr-ct-rigid``:
MR fixed, CT moving; ``mr-t1-t2-rigid``: T1 fixed, T2 moving; ``us-mr-mind-rigid``: ultrasound fixed), or
``multimodal-<model>`` / ``histology-stain-<model>`` when either image may be anything; its ``title`` says
"<MOVING> onto <FIXED>, <model>" (the moving image is moved onto the fixed one). A renamed preset keeps its old name
in :data:`ALIASES` for a release: :func:`load_preset` accepts it, returns the same preset and emits a
:class:`PresetAliasWarning` (the command line prints it as a one-line note), and :func:`alias_of` tells the engine
to record the old name in the provenance.

Preprocessing keys (each optional): ``grey`` ("luminance" | "optical_density") for RGB input,
``clip_range`` [lo, hi] in the image's units, ``clip_percentiles`` [lo, hi], ``n4_bias_correction``
{"shrink": 4, "iterations": [...]}, ``smoothing_sigma_mm``.

B-spline stages optimise with L-BFGS-B on a fixed sample set per level (``optimizer.name`` "lbfgsb"), or with
adaptive stochastic gradient descent on new random samples every iteration (``"asgd"``: ``iterations``,
``max_step_mm`` per level, ``A``, ``alpha``, ``average_last``; ``sampling.samples_per_iteration``;
``regularization.bending_energy_weight``), see ``stochastic_bspline``.

Metrics: ``mattes`` (Mattes mutual information, ``bins``), ``joint_histogram_mi`` (``bins``, ``variance``),
``ants_neighborhood_correlation`` (``radius``), ``correlation`` (normalized correlation), ``mean_squares``,
``mind_ssc`` (MIND-SSC self-similarity descriptors for pairs with no intensity relation such as MR-ultrasound, see
``mind``: ``radius`` and ``dilation`` in voxels of the level, ``patch`` "box" | "gaussian", ``fov_mask`` "auto" |
"fixed" | "moving" | "none" (the non-zero field of view of an ultrasound, eroded by ``fov_erode_mm``); 3D only;
rigid stages (levels in ``level_spacing_mm``, ``sampling.samples_per_level``, ``optimizer.iterations``) and
B-spline stages with the asgd optimizer; it runs on the input images, the preset's preprocessing does not apply
to it).
"""

from __future__ import annotations

import copy
import json
import os
import warnings

from . import preset_schema
from .errors import CrossModalRegError
from .provenance import sha256_of_json

PRESET_DIR = os.path.join(os.path.dirname(__file__), "presets")
SCHEMA_VERSION = 1
STAGE_TYPES = ("rigid", "affine", "bspline")
METRICS = ("mattes", "joint_histogram_mi", "ants_neighborhood_correlation", "correlation", "mean_squares", "mind_ssc")
INIT_METHODS = ("moments", "geometry", "landmarks", "none")
GREY_MODES = ("luminance", "optical_density")


# Former name -> current name. Each is accepted, with a deprecation note, until version ALIASES_REMOVED_IN.
ALIASES = {"ct-mr-rigid": "mr-ct-rigid"}
ALIASES_REMOVED_IN = "0.3"


class PresetAliasWarning(FutureWarning):
    """A preset was asked for by a former name (:data:`ALIASES`): it still works, the message says the new name."""


def available_presets() -> list[str]:
    """Names of the presets shipped with the package, sorted (former names in :data:`ALIASES` not included)."""
    return sorted(f[:-5] for f in os.listdir(PRESET_DIR) if f.endswith(".json"))


def alias_of(name_or_path) -> str | None:
    """The former name ``name_or_path`` is, when it is one of :data:`ALIASES`; otherwise None."""
    return name_or_path if isinstance(name_or_path, str) and name_or_path in ALIASES else None


def alias_note(alias: str) -> str:
    """The one-line deprecation note for a former preset name."""
    return (f"preset name '{alias}' is deprecated: it is now '{ALIASES[alias]}' (the same preset, named "
            f"<fixed>-<moving>-<model>); the old name goes in version {ALIASES_REMOVED_IN}")


def load_preset(name_or_path) -> dict:
    """Load and validate a preset by name (shipped) or by path to a JSON file (user preset), or copy a dict."""
    if isinstance(name_or_path, dict):
        preset = copy.deepcopy(name_or_path)
        source = "<dict>"
    else:
        path = str(name_or_path)
        if alias_of(path):
            warnings.warn(alias_note(path), PresetAliasWarning, stacklevel=2)
            path = ALIASES[path]
        if not path.endswith(".json") and os.sep not in path:
            path = os.path.join(PRESET_DIR, path + ".json")
            if not os.path.isfile(path):
                raise CrossModalRegError(
                    f"unknown preset '{name_or_path}': choose one of {', '.join(available_presets())} or give a JSON file"
                )
        if not os.path.isfile(path):
            raise CrossModalRegError(f"preset file '{path}' does not exist")
        try:
            with open(path) as f:
                preset = json.load(f)
        except json.JSONDecodeError as exc:
            raise CrossModalRegError(f"preset file '{path}' is not valid JSON: {exc}") from exc
        source = path
    validate_preset(preset, source)
    return preset


def preset_sha256(preset: dict) -> str:
    return sha256_of_json(preset)


def apply_overrides(preset: dict, overrides: dict | None) -> dict:
    """Return a copy of ``preset`` with dotted-key overrides applied, e.g. ``{"stages.0.optimizer.iterations": 50}``.

    Every key must name an entry the preset format has (a misspelt key is refused, not added), list indexes must
    exist, and the result is validated like a preset file: bad overrides raise ``CrossModalRegError`` naming the
    key, before anything runs.
    """
    out = copy.deepcopy(preset)
    for key, value in (overrides or {}).items():
        try:
            preset_schema.spec_at(key)
        except preset_schema.SchemaError as exc:
            raise CrossModalRegError(f"--set {key}: {exc.detail}") from None
        parts = key.split(".")
        target = out
        for depth, p in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(target, list):
                i = int(p)
                if i >= len(target):
                    raise CrossModalRegError(f"--set {key}: '{'.'.join(parts[:depth]) or 'preset'}' has "
                                             f"{len(target)} entries (indexes 0 to {len(target) - 1}), not {i}")
                if last:
                    target[i] = value
                else:
                    target = target[i]
            elif isinstance(target, dict):
                if last:
                    target[p] = value
                else:
                    target = target.setdefault(p, [] if parts[depth + 1].isdigit() else {})
            else:
                raise CrossModalRegError(f"--set {key}: '{'.'.join(parts[:depth])}' is a single value")
    if overrides:
        validate_preset(out, f"'{preset.get('name', '?')}' with --set {', '.join(overrides)}")
    return out


def validate_preset(preset: dict, source: str = "<preset>") -> None:
    def fail(msg):
        raise CrossModalRegError(f"preset {source}: {msg}")

    if not isinstance(preset, dict):
        fail("must be a JSON object")
    try:
        preset_schema.check(preset)
    except preset_schema.SchemaError as exc:
        fail(str(exc))
    if preset.get("schema_version") != SCHEMA_VERSION:
        fail(f"schema_version must be {SCHEMA_VERSION}, got {preset.get('schema_version')!r}")
    for key in ("name", "version", "title", "when_to_use", "stages"):
        if key not in preset:
            fail(f"missing key '{key}'")
    if preset.get("dimension", "any") not in (2, 3, "any"):
        fail("dimension must be 2, 3 or \"any\"")
    init = preset.get("initialization", {})
    if init.get("method", "moments") not in INIT_METHODS:
        fail(f"initialization.method must be one of {INIT_METHODS}")
    for role in ("fixed", "moving"):
        pre = preset.get("preprocessing", {}).get(role, {})
        if "grey" in pre and pre["grey"] not in GREY_MODES:
            fail(f"preprocessing.{role}.grey must be one of {GREY_MODES}")
        for k in ("clip_range", "clip_percentiles"):
            if k in pre and (len(pre[k]) != 2 or pre[k][0] >= pre[k][1]):
                fail(f"preprocessing.{role}.{k} must be [low, high] with low < high")
    stages = preset["stages"]
    if not stages:
        fail("needs at least one stage")
    seen_deformable = False
    for i, st in enumerate(stages):
        t = st.get("type")
        if t not in STAGE_TYPES:
            fail(f"stages[{i}].type must be one of {STAGE_TYPES}")
        if seen_deformable:
            fail(f"stages[{i}] ({t}) comes after a bspline stage; put linear stages first")
        seen_deformable = t == "bspline"
        metric = st.get("metric", {}).get("name")
        if metric not in METRICS:
            fail(f"stages[{i}].metric.name must be one of {METRICS}")
        if metric == "mind_ssc":
            if t == "affine" or preset.get("dimension") != 3:
                fail(f"stages[{i}]: the mind_ssc metric is for rigid and bspline (asgd) stages of 3D presets "
                     "(\"dimension\": 3)")
            if t == "bspline" and st.get("optimizer", {}).get("name") != "asgd":
                fail(f"stages[{i}]: a mind_ssc bspline stage needs the asgd optimizer")
            if i == 0 and init.get("rotation_search", {}).get("enabled", False):
                fail("the rotation search evaluates SimpleITK metrics: disable it with a mind_ssc first stage")
            if t == "rigid" and "level_spacing_mm" not in st:
                fail(f"stages[{i}]: a mind_ssc stage needs level_spacing_mm")
        if "level_spacing_mm" in st:
            if t == "bspline":
                fail(f"stages[{i}]: a bspline stage takes shrink_factors, not level_spacing_mm")
            shrink = st["level_spacing_mm"]
            if any(float(v) <= 0 for v in shrink):
                fail(f"stages[{i}]: level_spacing_mm must be positive")
        else:
            shrink = st.get("shrink_factors", [1])
            if any(int(s) < 1 for s in shrink):
                fail(f"stages[{i}]: shrink factors must be >= 1")
        sigmas = st.get("smoothing_sigmas_mm", [0] * len(shrink))
        if len(shrink) != len(sigmas):
            fail(f"stages[{i}]: the levels and smoothing_sigmas_mm must have the same length")
        if t == "bspline" and float(st.get("control_point_spacing_mm", 0)) <= 0:
            fail(f"stages[{i}]: a bspline stage needs control_point_spacing_mm > 0")
        sampling = st.get("sampling", {})
        pct = sampling.get("percentage", 1.0)
        if not 0 < float(pct) <= 1:
            fail(f"stages[{i}].sampling.percentage must be in (0, 1]")
        for key in ("percentage_per_level", "samples_per_level"):
            if key in sampling and len(sampling[key]) != len(shrink):
                fail(f"stages[{i}].sampling.{key} needs one value per level ({len(shrink)})")
        opt = st.get("optimizer", {})
        if opt.get("name") == "asgd":
            if t != "bspline" or metric not in ("mattes", "mind_ssc"):
                fail(f"stages[{i}]: the asgd optimizer is for bspline stages with the mattes or mind_ssc metric")
            for where, value, low in (("sampling.samples_per_iteration", sampling.get("samples_per_iteration", 0), 64),
                                      ("optimizer.max_step_mm", opt.get("max_step_mm", 1.0), 1e-9)):
                values = value if isinstance(value, list) else [value]
                if isinstance(value, list) and len(values) != len(shrink):
                    fail(f"stages[{i}].{where} needs one value per level ({len(shrink)}) or a single number")
                if any(float(v) < low for v in values):
                    fail(f"stages[{i}].{where} must be at least {low:g}")
            if int(st.get("order", 3)) != 3:
                fail(f"stages[{i}]: asgd supports cubic B-splines only (order 3)")
