"""Transform directions for validation: everything is measured with ``transform_fixed_to_moving_lps``.

A registration transform is validated in the ITK resampling direction: it maps a point of the FIXED image's
physical space to the corresponding point of the MOVING image's physical space, in LPS millimetres. A user may
hand the transform in the other direction (moving -> fixed); it is then inverted here, or refused with a message
that says which direction is needed when it has no inverse (B-spline, displacement field without an inverse).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import SimpleITK as sitk

from ..errors import CrossModalRegError

FIXED_TO_MOVING = "fixed-to-moving"
MOVING_TO_FIXED = "moving-to-fixed"
DIRECTIONS = (FIXED_TO_MOVING, MOVING_TO_FIXED)


def _flatten(transform: sitk.Transform) -> list[sitk.Transform]:
    """The elementary transforms of a (possibly nested) composite, in the order SimpleITK stores them."""
    if transform.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        out = []
        for i in range(composite.GetNumberOfTransforms()):
            out.extend(_flatten(composite.GetNthTransform(i)))
        return out
    return [transform]


def is_linear(transform: sitk.Transform) -> bool:
    """True when every component of the transform is linear (its Jacobian is the same everywhere)."""
    return all(t.IsLinear() for t in _flatten(transform))


def transform_kind(transform: sitk.Transform) -> str:
    """Human-readable description of a transform ("AffineTransform", "Composite(Affine, BSpline)")."""
    parts = [t.GetName() for t in _flatten(transform)]
    return parts[0] if len(parts) == 1 else "CompositeTransform(" + ", ".join(parts) + ")"


def resolve_fixed_to_moving(transform: sitk.Transform, direction: str = FIXED_TO_MOVING, *,
                            name: str = "transform") -> sitk.Transform:
    """The fixed -> moving (LPS) transform from a transform given in ``direction``.

    Parameters
    ----------
    transform : SimpleITK.Transform
        The registration transform, LPS millimetres.
    direction : {"fixed-to-moving", "moving-to-fixed"}
        What ``transform`` maps: FIXED points to MOVING points (the ITK resampling direction: what elastix,
        ANTs and BRAINSFit write, and what Slicer's transform node holds as *transform from parent* when the
        moving volume sits under it), or the reverse.
    name : str
        How the transform is named in error messages.

    Returns
    -------
    SimpleITK.Transform
        Maps FIXED-space points to MOVING-space points (LPS mm).

    Raises
    ------
    CrossModalRegError
        Unknown direction, or a moving -> fixed transform that has no inverse.
    """
    if direction not in DIRECTIONS:
        raise CrossModalRegError(f"direction must be one of {', '.join(DIRECTIONS)}, got '{direction}'")
    if direction == FIXED_TO_MOVING:
        return transform
    try:
        inverse = transform.GetInverse()
    except RuntimeError as exc:
        raise CrossModalRegError(
            f"{name} ({transform_kind(transform)}) was given as moving-to-fixed but has no inverse: "
            "supply it in the fixed-to-moving direction (it maps FIXED points to MOVING points, the direction "
            "that resamples the moving image onto the fixed grid), or convert it to a displacement field first"
        ) from exc
    return inverse


def transform_checksum(transform: sitk.Transform) -> str:
    """SHA-256 of a transform's kind, parameters and fixed parameters (stable across runs and file formats)."""
    h = hashlib.sha256()
    for t in _flatten(transform):
        h.update(t.GetName().encode())
        if t.GetName() == "DisplacementFieldTransform":
            field = sitk.DisplacementFieldTransform(t).GetDisplacementField()
            for value in (field.GetSize(), field.GetSpacing(), field.GetOrigin(), field.GetDirection()):
                h.update(json.dumps([repr(float(v)) for v in value]).encode())
            h.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(field), dtype=np.float64).tobytes())
            continue
        h.update(json.dumps([repr(float(v)) for v in t.GetFixedParameters()]).encode())
        h.update(np.asarray(t.GetParameters(), dtype=np.float64).tobytes())
    return h.hexdigest()
