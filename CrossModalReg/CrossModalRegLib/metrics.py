"""The metrics of this package, configured the same way everywhere (optimisation, search, sanity checks)."""

from __future__ import annotations

import SimpleITK as sitk

from .errors import CrossModalRegError


def _set_metric(method, metric: dict):
    name = metric["name"]
    if name == "mattes":
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(metric.get("bins", 32)))
    elif name == "joint_histogram_mi":
        method.SetMetricAsJointHistogramMutualInformation(
            numberOfHistogramBins=int(metric.get("bins", 32)), varianceForJointPDFSmoothing=float(metric.get("variance", 1.5))
        )
    elif name == "ants_neighborhood_correlation":
        method.SetMetricAsANTSNeighborhoodCorrelation(radius=int(metric.get("radius", 2)))
    elif name == "correlation":
        method.SetMetricAsCorrelation()
    elif name == "mean_squares":
        method.SetMetricAsMeanSquares()
    else:  # validated before
        raise CrossModalRegError(f"unknown metric {name}")


def metric_method(metric: dict, *, fraction: float = 1.0, strategy: str = "random", seed: int = 0, fixed_mask=None,
                  moving_mask=None, fractions_per_level=None) -> sitk.ImageRegistrationMethod:
    """An ImageRegistrationMethod with ``metric``, seeded sampling of ``fraction`` of the fixed voxels (or one
    fraction per level), linear interpolation, masks, and gradients taken at the sampled points only (no gradient
    image of every voxel)."""
    method = sitk.ImageRegistrationMethod()
    _set_metric(method, metric)
    fractions = list(fractions_per_level) if fractions_per_level else [fraction]
    if strategy == "none" or min(fractions) >= 1.0:
        method.SetMetricSamplingStrategy(method.NONE)
    else:
        method.SetMetricSamplingStrategy(method.REGULAR if strategy == "regular" else method.RANDOM)
        method.SetMetricSamplingPercentagePerLevel([min(1.0, float(f)) for f in fractions], int(seed))
    method.SetInterpolator(sitk.sitkLinear)
    method.MetricUseFixedImageGradientFilterOff()
    method.MetricUseMovingImageGradientFilterOff()
    if fixed_mask is not None:
        method.SetMetricFixedMask(fixed_mask)
    if moving_mask is not None:
        method.SetMetricMovingMask(moving_mask)
    return method
