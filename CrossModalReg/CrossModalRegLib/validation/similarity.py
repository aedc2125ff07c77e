"""Normalized mutual information (NMI) before and after registration: an indirect measure.

NMI is Studholme's ``(H(F) + H(M)) / H(F, M)`` (1 for independent images, 2 for one image determining the other),
from a joint histogram of the fixed image and the moving image resampled onto the fixed grid (linear
interpolation) through the identity ("before") or ``transform_fixed_to_moving_lps`` ("after"), over the fixed
voxels whose mapped point falls inside the moving image (and inside the mask when one is given). Both histograms
use the same bins (the fixed and moving images' full intensity ranges), so before and after are comparable.

It is *indirect*: a higher NMI says the intensities are more predictable from each other, not that anatomy is
aligned; a non-linear transform can raise it by implausible deformations. Read it with the landmark, overlap and
Jacobian measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import CrossModalRegError

MIN_SAMPLES = 1000


@dataclass(frozen=True)
class NMIResult:
    """NMI before and after (dimensionless), relative improvement ``(after - before) / before``, sample counts."""

    before: float | None
    after: float | None
    relative_improvement: float | None
    n_samples_before: int
    n_samples_after: int
    bins: int
    note: str = ""


def _entropy(p):
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _nmi(f, m, f_range, m_range, bins):
    fi = np.clip(((f - f_range[0]) / (f_range[1] - f_range[0]) * bins).astype(np.int64), 0, bins - 1)
    mi = np.clip(((m - m_range[0]) / (m_range[1] - m_range[0]) * bins).astype(np.int64), 0, bins - 1)
    joint = np.bincount(fi * bins + mi, minlength=bins * bins).reshape(bins, bins).astype(np.float64)
    joint /= joint.sum()
    h_joint = _entropy(joint.ravel())
    if h_joint == 0:
        return None
    return (_entropy(joint.sum(axis=1)) + _entropy(joint.sum(axis=0))) / h_joint


def nmi_before_after(fixed: sitk.Image, moving: sitk.Image, transform_fixed_to_moving_lps: sitk.Transform, *,
                     bins: int = 64, mask: sitk.Image | None = None) -> NMIResult:
    """NMI of fixed and moving before (identity) and after (``transform_fixed_to_moving_lps``) registration.

    Parameters
    ----------
    fixed, moving : SimpleITK.Image
        Scalar images (LPS geometry); the moving one is resampled onto the fixed grid.
    transform_fixed_to_moving_lps : SimpleITK.Transform
        Maps FIXED points to MOVING points (LPS mm).
    bins : int
        Histogram bins per image.
    mask : SimpleITK.Image, optional
        Fixed-space region (non-zero voxels) to restrict the samples to.
    """
    if fixed.GetNumberOfComponentsPerPixel() != 1 or moving.GetNumberOfComponentsPerPixel() != 1:
        raise CrossModalRegError("NMI needs scalar (single-component) fixed and moving images")
    if bins < 2:
        raise CrossModalRegError("NMI needs at least 2 histogram bins")
    f_img = sitk.Cast(fixed, sitk.sitkFloat32)
    m_img = sitk.Cast(moving, sitk.sitkFloat32)
    f = sitk.GetArrayViewFromImage(f_img).ravel()
    m_all = sitk.GetArrayViewFromImage(m_img)
    f_range = (float(f.min()), float(f.max()))
    m_range = (float(m_all.min()), float(m_all.max()))
    if f_range[1] <= f_range[0] or m_range[1] <= m_range[0]:
        return NMIResult(None, None, None, 0, 0, bins, "an image is constant: NMI is undefined")
    sel_mask = None
    if mask is not None:
        mk = sitk.Resample(mask, fixed, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkNearestNeighbor, 0)
        sel_mask = sitk.GetArrayViewFromImage(mk).ravel() != 0
    values, counts = [], []
    for tx in (sitk.Transform(fixed.GetDimension(), sitk.sitkIdentity), transform_fixed_to_moving_lps):
        warped = sitk.Resample(m_img, fixed, tx, sitk.sitkLinear, float("nan"), sitk.sitkFloat32)
        w = sitk.GetArrayViewFromImage(warped).ravel()
        sel = np.isfinite(w)
        if sel_mask is not None:
            sel &= sel_mask
        n = int(sel.sum())
        counts.append(n)
        values.append(_nmi(f[sel], w[sel], f_range, m_range, bins) if n >= MIN_SAMPLES else None)
    before, after = values
    note = ""
    if before is None or after is None:
        note = (f"fewer than {MIN_SAMPLES} overlapping voxels "
                f"({'before' if before is None else 'after'} registration): NMI not computed")
    rel = (after - before) / before if before is not None and after is not None else None
    if counts[1] == 0:
        raise CrossModalRegError("the moving image does not overlap the fixed grid under the transform: "
                                 "check the transform direction and that both images are in the same space")
    return NMIResult(before, after, rel, counts[0], counts[1], bins, note)
