"""The preset file format as data: every key a preset may have, its type and its allowed range.

:func:`check` walks a preset against :data:`PRESET` and refuses, with the dotted path of the entry and what to
write instead, any unknown key (a misspelt ``iteratons`` would otherwise be ignored and the default used), any
value of the wrong type and any value out of range (``bins: 0``, a negative learning rate, zero iterations).
It runs on every preset before anything is computed: shipped presets, users' files, ``--set`` overrides and each
row of a batch cohort. Rules that tie several keys together (level counts, the optimizer a stage type takes) stay
in :func:`CrossModalRegLib.presets.validate_preset`.

Written here rather than with ``jsonschema`` because Slicer does not bundle it, and the messages must say how to
fix the file in the preset's own words.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass


class SchemaError(ValueError):
    """``path``: where in the preset (``stages[0].optimizer.iterations``); ``args[0]``: what is wrong."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path} {message}" if path else message)
        self.path = path
        self.detail = message


@dataclass(frozen=True)
class Num:
    low: float | None = None
    high: float | None = None
    integer: bool = False
    low_open: bool = False  # low itself not allowed
    high_open: bool = False

    def check(self, value, path):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(path, f"must be {'a whole number' if self.integer else 'a number'}, got {value!r}")
        if not math.isfinite(value):
            raise SchemaError(path, f"must be finite, got {value!r}")
        if self.integer and float(value) != int(value):
            raise SchemaError(path, f"must be a whole number, got {value!r}")
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise SchemaError(path, f"must be {'>' if self.low_open else '>='} {self.low:g}, got {value!r}")
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            raise SchemaError(path, f"must be {'<' if self.high_open else '<='} {self.high:g}, got {value!r}")


@dataclass(frozen=True)
class Str:
    def check(self, value, path):
        if not isinstance(value, str):
            raise SchemaError(path, f"must be a text, got {value!r}")


@dataclass(frozen=True)
class Bool:
    def check(self, value, path):
        if not isinstance(value, bool):
            raise SchemaError(path, f"must be true or false, got {value!r}")


@dataclass(frozen=True)
class Enum:
    choices: tuple

    def check(self, value, path):
        if isinstance(value, bool) or value not in self.choices:
            raise SchemaError(path, f"must be one of {', '.join(map(repr, self.choices))}, got {value!r}")


@dataclass(frozen=True)
class List:
    item: object
    length: int | None = None
    min_length: int = 1

    def check(self, value, path):
        if not isinstance(value, list):
            raise SchemaError(path, f"must be a list, got {value!r}")
        if self.length is not None and len(value) != self.length:
            raise SchemaError(path, f"must have {self.length} values, got {len(value)}")
        if len(value) < self.min_length:
            raise SchemaError(path, f"must have at least {self.min_length} value(s)")
        for i, v in enumerate(value):
            self.item.check(v, f"{path}[{i}]")


@dataclass(frozen=True)
class OneOf:
    options: tuple

    def check(self, value, path):
        errors = []
        for option in self.options:
            try:
                option.check(value, path)
                return
            except SchemaError as exc:
                errors.append(str(exc).split(": ", 1)[-1])
        raise SchemaError(path, " or ".join(errors))


@dataclass(frozen=True)
class Obj:
    fields: dict
    required: tuple = ()

    def check(self, value, path):
        if not isinstance(value, dict):
            raise SchemaError(path, f"must be an object {{...}}, got {value!r}")
        for key in self.required:
            if key not in value:
                raise SchemaError(path, f"missing key '{key}'")
        for key, v in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if key not in self.fields:
                close = difflib.get_close_matches(str(key), list(self.fields), n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise SchemaError(sub, f"is not a known key ({hint}known here: {', '.join(sorted(self.fields))})")
            self.fields[key].check(v, sub)


POSITIVE = Num(0, low_open=True)
NON_NEGATIVE = Num(0)
COUNT = Num(1, integer=True)
PER_LEVEL_POSITIVE = OneOf((POSITIVE, List(POSITIVE)))

PREPROCESSING = Obj({
    "grey": Enum(("luminance", "optical_density")),
    "clip_range": List(Num(), length=2),
    "clip_percentiles": List(Num(0, 100), length=2),
    "equalize": Bool(),
    "n4_bias_correction": Obj({"shrink": COUNT, "iterations": List(COUNT)}),
    "smoothing_sigma_mm": NON_NEGATIVE,
})

SEARCH_COMMON = {
    "enabled": Bool(),
    "top_k": COUNT,
    "refine_iterations": Num(0, integer=True),
    "coarse_spacing_mm": POSITIVE,
    "sample_fraction": Num(0, 1, low_open=True),
    "keep_start_margin": NON_NEGATIVE,
}

ROTATION_SEARCH = Obj({
    **SEARCH_COMMON,
    "max_angle_deg": Num(0, 180, low_open=True),
    "step_deg": Num(0, 180, low_open=True),
})

INITIALIZATION = Obj({
    "method": Enum(("moments", "geometry", "landmarks", "none")),
    "orientation_search": Obj(SEARCH_COMMON),  # the 24 axis-aligned orientations (3D)
    "rotation_search": ROTATION_SEARCH,
})

METRIC = Obj({
    "name": Enum(("mattes", "joint_histogram_mi", "ants_neighborhood_correlation", "correlation", "mean_squares",
                  "mind_ssc")),
    "bins": Num(4, 1024, integer=True),
    "variance": POSITIVE,
    "radius": COUNT,
    # mind_ssc (CrossModalRegLib.mind)
    "dilation": COUNT,
    "patch": Enum(("box", "gaussian")),
    "fov_mask": Enum(("auto", "fixed", "moving", "none")),
    "fov_erode_mm": NON_NEGATIVE,
}, required=("name",))

SAMPLING = Obj({
    "strategy": Enum(("random", "regular", "none", "random_every_iteration")),  # the last: asgd stages
    "percentage": Num(0, 1, low_open=True),
    "percentage_per_level": List(Num(0, 1, low_open=True)),
    "samples_per_level": List(COUNT),
    "samples_per_iteration": OneOf((Num(64, integer=True), List(Num(64, integer=True)))),
})

OPTIMIZER = Obj({
    "name": Enum(("regular_step_gradient_descent", "gradient_descent", "gradient_descent_line_search", "lbfgsb",
                  "lbfgs2", "asgd", "gauss_newton_line_search")),
    "tolerance_mm": POSITIVE,
    "iterations": COUNT,
    "learning_rate": POSITIVE,
    "min_step": POSITIVE,
    "relaxation_factor": Num(0, 1, low_open=True, high_open=True),
    "gradient_tolerance": NON_NEGATIVE,
    "convergence_minimum_value": POSITIVE,
    "convergence_window_size": COUNT,
    "max_step_mm": PER_LEVEL_POSITIVE,
    "corrections": COUNT,
    "max_evaluations": COUNT,
    "cost_convergence_factor": POSITIVE,
    "solution_accuracy": POSITIVE,
    "delta_tolerance": POSITIVE,
    "A": NON_NEGATIVE,
    "alpha": Num(0, 1, low_open=True),
    "average_last": Num(0, 1, high_open=True),
})

STAGE = Obj({
    "type": Enum(("rigid", "affine", "bspline")),
    "metric": METRIC,
    "sampling": SAMPLING,
    "optimizer": OPTIMIZER,
    "shrink_factors": List(COUNT),
    "level_spacing_mm": List(POSITIVE),
    "smoothing_sigmas_mm": List(NON_NEGATIVE),
    "control_point_spacing_mm": POSITIVE,
    "mesh_scale_factors": List(COUNT),
    "order": Num(1, 3, integer=True),
    "regularization": Obj({"bending_energy_weight": NON_NEGATIVE}),
}, required=("type", "metric"))

PRESET = Obj({
    "schema_version": Num(integer=True),
    "name": Str(),
    "version": Str(),
    "title": Str(),
    "when_to_use": Str(),
    "modalities": Obj({"fixed": Str(), "moving": Str()}),
    "dimension": Enum((2, 3, "any")),
    "preprocessing": Obj({"fixed": PREPROCESSING, "moving": PREPROCESSING}),
    "initialization": INITIALIZATION,
    # post-run checks that can be turned off, and the independent check's limit where a preset measured its own
    "checks": Obj({"independent_agreement": Bool(), "independent_agreement_min_ratio": Num(0, 1, low_open=True)}),
    "stages": List(STAGE, min_length=0),  # "needs at least one stage": validate_preset says it
}, required=("schema_version", "name", "version", "title", "when_to_use", "stages"))


def check(preset) -> None:
    """Raise :class:`SchemaError` for the first entry of ``preset`` that the format does not allow."""
    PRESET.check(preset, "")


def spec_at(path: str):
    """The spec a dotted override key (``stages.0.optimizer.iterations``) lands on, or raise SchemaError."""
    spec = PRESET
    walked = []
    for part in path.split("."):
        if isinstance(spec, List):
            if not part.isdigit():
                raise SchemaError(".".join(walked), f"'{'.'.join(walked)}' is a list: the next part must be an "
                                                    f"index (0, 1, ...), got '{part}'")
            spec = spec.item
        elif isinstance(spec, Obj):
            if part not in spec.fields:
                close = difflib.get_close_matches(part, list(spec.fields), n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise SchemaError(".".join([*walked, part]),
                                  f"'{part}' is not a known key{' under ' + repr('.'.join(walked)) if walked else ''} "
                                  f"({hint}known there: {', '.join(sorted(spec.fields))})")
            spec = spec.fields[part]
        elif isinstance(spec, OneOf) and part.isdigit():
            spec = next((o.item for o in spec.options if isinstance(o, List)), None)
            if spec is None:
                raise SchemaError(".".join(walked), f"'{'.'.join(walked)}' is a single value, not a list")
        else:
            raise SchemaError(".".join(walked), f"'{'.'.join(walked)}' is a single value: nothing is under it")
        walked.append(part)
    return spec
