"""Input checks and per-preset preprocessing. Everything here returns new images; inputs are never modified."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .errors import CrossModalRegError, RegistrationCancelled


def check_image(image, role: str, *, allow_vector: bool = False) -> None:
    """Pre-flight checks of one input image; raise ``CrossModalRegError`` saying what to fix."""
    if image is None:
        raise CrossModalRegError(f"no {role} image given")
    if image.GetDimension() not in (2, 3):
        raise CrossModalRegError(f"{role} image is {image.GetDimension()}D; only 2D and 3D images can be registered")
    if min(image.GetSize()) < 4:
        raise CrossModalRegError(
            f"{role} image is {image.GetSize()} voxels: every axis needs at least 4 voxels "
            "(a single-slice volume must be loaded as a 2D image)"
        )
    if image.GetNumberOfComponentsPerPixel() > 1 and not allow_vector:
        raise CrossModalRegError(
            f"{role} image has {image.GetNumberOfComponentsPerPixel()} components (RGB?) but this preset needs a grey "
            "image: use a preset with grey conversion (e.g. histology-stain-affine-bspline) or convert it first"
        )
    arr = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise CrossModalRegError(f"{role} image has {bad} NaN or infinite voxels: fill or mask them before registering")
    if arr.size and float(arr.max()) == float(arr.min()):
        raise CrossModalRegError(f"{role} image is constant (every voxel {float(arr.min())}): nothing to register")
    spacing = np.array(image.GetSpacing())
    if np.any(spacing <= 0):
        raise CrossModalRegError(f"{role} image has non-positive spacing {tuple(spacing)}")


def check_mask(mask, role: str, image) -> sitk.Image:
    """Validate a mask (any integer/float image, non-zero = inside) and return it as uint8."""
    if mask is None:
        return None
    if mask.GetDimension() != image.GetDimension():
        raise CrossModalRegError(
            f"{role} mask is {mask.GetDimension()}D but the {role} image is {image.GetDimension()}D"
        )
    if mask.GetNumberOfComponentsPerPixel() != 1:
        raise CrossModalRegError(f"{role} mask must be a label map (one component), not a vector image")
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(binary)):
        raise CrossModalRegError(f"{role} mask is empty (no non-zero voxel): draw the region or drop the mask")
    return binary


def to_grey(image, mode: str) -> sitk.Image:
    """Grey float32 image from a multi-component (RGB) image.

    ``luminance``: 0.299 R + 0.587 G + 0.114 B. ``optical_density``: sum over channels of -log10((I + 1) / 256),
    which is ~0 on the white slide background and positive in tissue whatever the stain: a stain-agnostic
    'how much tissue' image for stain-to-stain registration.
    """
    n = image.GetNumberOfComponentsPerPixel()
    if n == 1:
        return sitk.Cast(image, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    rgb = arr[..., :3] if n >= 3 else np.repeat(arr[..., :1], 3, axis=-1)
    if mode == "luminance":
        grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    elif mode == "optical_density":
        grey = (-np.log10((rgb + 1.0) / 256.0)).sum(axis=-1)
    else:
        raise CrossModalRegError(f"unknown grey conversion '{mode}'")
    out = sitk.GetImageFromArray(grey.astype(np.float32))
    out.CopyInformation(sitk.VectorIndexSelectionCast(image, 0))
    return out


def preprocess(image, options: dict | None, *, mask=None, cancelled=lambda: False) -> sitk.Image:
    """Apply a preset's preprocessing (grey conversion, clipping, N4 bias correction, smoothing); float32 out."""
    options = options or {}
    if image.GetNumberOfComponentsPerPixel() > 1:
        if "grey" not in options:
            raise CrossModalRegError("an RGB image needs a preset with 'grey' preprocessing")
        img = to_grey(image, options["grey"])
    else:
        img = sitk.Cast(image, sitk.sitkFloat32)
    if "clip_range" in options:
        lo, hi = map(float, options["clip_range"])
        img = sitk.Clamp(img, sitk.sitkFloat32, lo, hi)
    if "clip_percentiles" in options:
        arr = sitk.GetArrayViewFromImage(img)
        sel = arr[sitk.GetArrayViewFromImage(mask) > 0] if mask is not None and mask.GetSize() == img.GetSize() else arr
        lo, hi = np.percentile(sel, options["clip_percentiles"])
        if hi > lo:
            img = sitk.Clamp(img, sitk.sitkFloat32, float(lo), float(hi))
    if options.get("equalize"):
        img = equalize(img, mask=mask)
    if options.get("n4_bias_correction"):
        img = n4_bias_correction(img, options["n4_bias_correction"], cancelled=cancelled)
    sigma = float(options.get("smoothing_sigma_mm", 0) or 0)
    if sigma > 0:
        img = sitk.SmoothingRecursiveGaussian(img, sigma)
    return img


def equalize(image, *, mask=None, n_quantiles: int = 1024) -> sitk.Image:
    """Map intensities to their quantile in [0, 1] (a monotonic rank transform, piecewise linear).

    Mutual information is in theory blind to monotonic intensity changes, but its histogram bins are not: an image
    whose interesting contrast is squeezed into a few bins (brain tissue in a CT in HU between air and bone) loses
    it. Equalising spreads every intensity range over the bins in proportion to how many voxels it holds.
    """
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    sel = arr
    if mask is not None and mask.GetSize() == image.GetSize():
        sel = arr[sitk.GetArrayViewFromImage(mask) > 0]
    sel = sel.ravel()
    if sel.size > 2_000_000:
        sel = sel[:: sel.size // 1_000_000]
    q = np.linspace(0.0, 1.0, n_quantiles)
    levels = np.quantile(sel, q)
    levels, first = np.unique(levels, return_index=True)
    out = np.interp(arr, levels, q[first]).astype(np.float32) if len(levels) > 1 else np.zeros_like(arr)
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(image)
    return img


def n4_bias_correction(image, options: dict | bool, *, cancelled=lambda: False) -> sitk.Image:
    """N4 bias field correction (ITK's N4BiasFieldCorrection) estimated on a shrunk copy, applied at full size."""
    opts = options if isinstance(options, dict) else {}
    shrink = int(opts.get("shrink", 4))
    iterations = [int(i) for i in opts.get("iterations", [25, 25, 15])]
    positive = sitk.Cast(image - float(sitk.GetArrayViewFromImage(image).min()) + 1.0, sitk.sitkFloat32)
    mask = sitk.OtsuThreshold(positive, 0, 1, 200)
    small = sitk.Shrink(positive, [shrink] * image.GetDimension())
    small_mask = sitk.Shrink(mask, [shrink] * image.GetDimension())
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(iterations)

    def _check():
        if cancelled():
            n4.Abort()

    n4.AddCommand(sitk.sitkIterationEvent, _check)
    try:
        n4.Execute(small, small_mask)
    except RuntimeError:
        if cancelled():
            raise RegistrationCancelled() from None
        raise
    if cancelled():
        raise RegistrationCancelled()
    log_bias = n4.GetLogBiasFieldAsImage(positive)
    return sitk.Cast(positive / sitk.Exp(log_bias), sitk.sitkFloat32)


def foreground_mask(image) -> sitk.Image:
    """A rough body/tissue mask (Otsu on the image) used only for checks (overlap), never for the metric."""
    img = sitk.Cast(image, sitk.sitkFloat32)
    try:
        m = sitk.OtsuThreshold(img, 0, 1, 128)
    except RuntimeError:
        m = sitk.Cast(img > float(np.mean(sitk.GetArrayViewFromImage(img))), sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(m)):
        m = sitk.Cast(img == img, sitk.sitkUInt8)
    return m
