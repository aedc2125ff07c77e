"""Digital phantoms: realistic cross-modality pairs with exact ground truth, made at run time (no download).

* :func:`head_phantom` builds an analytic labelled head (scalp, skull, CSF, grey and white matter, ventricles,
  lesions, eyes and nose for an unambiguous orientation) with landmarks, entirely from code.
* :func:`tissue_model_from_mni152` / :func:`tissue_model_from_colin27` derive the same tissue classes from a real
  T1 (and tissue maps) so that CT-, T2- and PET-like images of a real anatomy can be simulated.
* :func:`render` draws a modality from a tissue model (CT in HU with bone bright; T2 with bright CSF and a smooth
  multiplicative bias field; PET with grey-matter uptake, a 7 mm blur and Poisson-like noise).
* :func:`simulate_pair` resamples a rendered image onto its own (anisotropic) grid and field of view through a known
  transform. Ground truth convention (as everywhere here): ``transform_fixed_to_moving_lps`` maps fixed-space points
  to moving-space points (LPS mm).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

AIR, SOFT, BONE, CSF, GM, WM, LESION = 0, 1, 2, 3, 4, 5, 6
TISSUE_NAMES = {AIR: "air", SOFT: "soft tissue", BONE: "bone", CSF: "CSF", GM: "grey matter", WM: "white matter",
                LESION: "lesion"}

# Mean intensity per tissue class and modality (CT in Hounsfield units, others arbitrary units).
INTENSITY = {
    "ct": {AIR: -1000.0, SOFT: 40.0, BONE: 1100.0, CSF: 8.0, GM: 40.0, WM: 27.0, LESION: 60.0},
    "t1": {AIR: 0.0, SOFT: 120.0, BONE: 15.0, CSF: 25.0, GM: 80.0, WM: 130.0, LESION: 55.0},
    "t2": {AIR: 0.0, SOFT: 70.0, BONE: 8.0, CSF: 250.0, GM: 115.0, WM: 75.0, LESION: 190.0},
    "pet": {AIR: 0.0, SOFT: 0.6, BONE: 0.3, CSF: 0.2, GM: 4.0, WM: 1.3, LESION: 6.0},
}
NOISE = {"ct": 8.0, "t1": 3.0, "t2": 4.0, "pet": 0.15}


@dataclass
class TissueModel:
    """Tissue classes on one grid (LPS), with optional grey/white-matter probabilities for partial volume."""

    labels: sitk.Image
    gm: sitk.Image | None = None
    wm: sitk.Image | None = None
    landmarks_lps: dict = field(default_factory=dict)

    def brain_mask(self) -> sitk.Image:
        return sitk.Cast((self.labels == GM) | (self.labels == WM) | (self.labels == LESION), sitk.sitkUInt8)

    def head_mask(self) -> sitk.Image:
        return sitk.Cast(self.labels != AIR, sitk.sitkUInt8)


# --------------------------------------------------------------------------------------------- phantom
def head_phantom(*, spacing_mm: float = 1.5, size_mm=(180.0, 216.0, 180.0)) -> TissueModel:
    """An analytic labelled head on an isotropic grid (default 120 x 144 x 120 voxels of 1.5 mm), LPS, centred at 0.

    Asymmetric features (nose, eyes, an off-centre lesion) make every orientation distinguishable. Landmarks are
    named anatomical points of the phantom, in LPS mm.
    """
    size = [int(round(s / spacing_mm)) for s in size_mm]
    origin = [-(n - 1) * spacing_mm / 2.0 for n in size]
    z, y, x = np.meshgrid(*[origin[d] + spacing_mm * np.arange(size[d]) for d in (2, 1, 0)], indexing="ij")

    def ellipsoid(c, r):
        return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1.0

    labels = np.zeros(z.shape, np.uint8)
    # LPS: +y is posterior, -y anterior (the face), +z superior.
    head = ellipsoid((0, 0, 0), (72, 90, 80))
    nose = ellipsoid((0, -92, -25), (10, 16, 18))
    labels[head | nose] = SOFT
    skull = ellipsoid((0, 3, 5), (66, 83, 72))
    labels[skull] = BONE
    intracranial = ellipsoid((0, 3, 5), (61, 78, 67))
    labels[intracranial] = CSF
    brain = ellipsoid((0, 4, 6), (58, 75, 63))
    labels[brain] = GM
    wm = ellipsoid((0, 6, 8), (47, 62, 50))
    labels[wm] = WM
    # Sulci: CSF stripes in the cortex.
    sulci = brain & ~wm & (np.sin(x / 6.0) * np.sin(y / 7.0) * np.sin(z / 5.0) > 0.55)
    labels[sulci] = CSF
    for cx in (-9.0, 11.0):  # ventricles, deliberately not symmetric
        labels[ellipsoid((cx, 8, 14), (6, 24, 11))] = CSF
    labels[ellipsoid((0, 40, -25), (30, 18, 16))] = GM  # cerebellum-like blob
    labels[ellipsoid((-26, -30, 30), (8, 8, 8))] = LESION
    labels[ellipsoid((30, 35, -5), (5, 6, 5))] = LESION
    for ex in (-32.0, 30.0):  # eyes (fluid), in the soft tissue in front of the skull
        labels[ellipsoid((ex, -78, -18), (11, 11, 11))] = CSF
    img = sitk.GetImageFromArray(labels)
    img.SetSpacing([spacing_mm] * 3)
    img.SetOrigin(origin)
    landmarks = {
        "nose_tip": (0.0, -107.0, -25.0),
        "left_eye_centre": (30.0, -78.0, -18.0),
        "right_eye_centre": (-32.0, -78.0, -18.0),
        "vertex_skull": (0.0, 3.0, 75.5),
        "lesion_A": (-26.0, -30.0, 30.0),
        "lesion_B": (30.0, 35.0, -5.0),
        "left_ventricle": (11.0, 8.0, 14.0),
        "right_ventricle": (-9.0, 8.0, 14.0),
        "cerebellum": (0.0, 40.0, -25.0),
        "occiput_skull": (0.0, 84.5, 5.0),
    }
    return TissueModel(labels=img, landmarks_lps={k: np.array(v) for k, v in landmarks.items()})


# ------------------------------------------------------------------------------------ real anatomies
def tissue_model_from_mni152(data_dir: str) -> tuple[sitk.Image, TissueModel]:
    """(T1, tissue model) from ``mni152/`` (ICBM152 2009a T1 + grey/white matter probability maps, 1 mm)."""
    t1 = sitk.ReadImage(os.path.join(data_dir, "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"), sitk.sitkFloat32)
    gm = sitk.ReadImage(os.path.join(data_dir, "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"), sitk.sitkFloat32) / 255.0
    wm = sitk.ReadImage(os.path.join(data_dir, "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"), sitk.sitkFloat32) / 255.0
    gm.CopyInformation(t1)
    wm.CopyInformation(t1)
    return t1, _tissues_from_t1(t1, gm, wm)


def tissue_model_from_colin27(data_dir: str) -> tuple[sitk.Image, TissueModel]:
    """(T1, tissue model) from ``colin27/`` (ch2 T1 and the brain-extracted ch2bet); brain classes by Otsu."""
    t1 = sitk.ReadImage(os.path.join(data_dir, "ch2.nii.gz"), sitk.sitkFloat32)
    bet = sitk.ReadImage(os.path.join(data_dir, "ch2bet.nii.gz"), sitk.sitkFloat32)
    bet.CopyInformation(t1)
    brain = sitk.Cast(bet > 0, sitk.sitkUInt8)
    classes = sitk.OtsuMultipleThresholds(sitk.Mask(t1, brain), 2, 0, 128, False)
    arr = sitk.GetArrayFromImage(classes)
    b = sitk.GetArrayViewFromImage(brain) > 0
    gm = np.where(b & (arr == 1), 1.0, 0.0).astype(np.float32)
    wm = np.where(b & (arr == 2), 1.0, 0.0).astype(np.float32)
    gm_img = sitk.GetImageFromArray(gm)
    gm_img.CopyInformation(t1)
    wm_img = sitk.GetImageFromArray(wm)
    wm_img.CopyInformation(t1)
    return t1, _tissues_from_t1(t1, gm_img, wm_img)


def _tissues_from_t1(t1, gm, wm) -> TissueModel:
    t1a = sitk.GetArrayFromImage(t1)
    gma = sitk.GetArrayFromImage(gm)
    wma = sitk.GetArrayFromImage(wm)
    thr = 0.12 * np.percentile(t1a, 99.5)
    head = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(sitk.Cast(t1 > thr, sitk.sitkUInt8), [3, 3, 3]))
    head = sitk.RelabelComponent(sitk.ConnectedComponent(head)) == 1
    brain_prob = gma + wma
    brain = sitk.GetImageFromArray((brain_prob > 0.3).astype(np.uint8))
    brain.CopyInformation(t1)
    envelope = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(brain, [6, 6, 6]))
    envelope_d = sitk.BinaryDilate(envelope, [3, 3, 3])
    depth = sitk.SignedMaurerDistanceMap(sitk.Cast(head, sitk.sitkUInt8), insideIsPositive=True, useImageSpacing=True)
    h = sitk.GetArrayViewFromImage(head) > 0
    env = sitk.GetArrayViewFromImage(envelope) > 0
    env_d = sitk.GetArrayViewFromImage(envelope_d) > 0
    dep = sitk.GetArrayViewFromImage(depth)
    dark = t1a < np.percentile(t1a[h], 30)
    labels = np.zeros(t1a.shape, np.uint8)
    labels[h] = SOFT
    labels[h & ~env_d & dark & (dep > 2.0)] = BONE
    if np.count_nonzero(labels == BONE) < 0.02 * np.count_nonzero(h):
        # A skull-stripped template (no skull in the T1): add a skull and a scalp outside the head surface,
        # 2-7 mm and 7-11 mm out, so that CT-like images have their dominant structure.
        outside = sitk.SignedMaurerDistanceMap(sitk.Cast(head, sitk.sitkUInt8), insideIsPositive=False,
                                               useImageSpacing=True)
        out = sitk.GetArrayViewFromImage(outside)
        labels[(out > 2.0) & (out <= 7.0)] = BONE
        labels[(out > 7.0) & (out <= 11.0)] = SOFT
        labels[(out > 0.0) & (out <= 2.0)] = CSF
    labels[env & (brain_prob <= 0.3)] = CSF
    labels[(brain_prob > 0.3) & (gma >= wma)] = GM
    labels[(brain_prob > 0.3) & (wma > gma)] = WM
    img = sitk.GetImageFromArray(labels)
    img.CopyInformation(t1)
    return TissueModel(labels=img, gm=gm, wm=wm)


# ------------------------------------------------------------------------------------------- render
def render(model: TissueModel, kind: str, *, rng: np.random.RandomState, blur_fwhm_mm: float | None = None,
           bias_strength: float | None = None) -> sitk.Image:
    """Draw a modality (``ct``, ``t1``, ``t2``, ``pet``) from a tissue model, on the model's grid (float32)."""
    if kind not in INTENSITY:
        raise ValueError(f"unknown modality {kind}; choose from {sorted(INTENSITY)}")
    table = INTENSITY[kind]
    lab = sitk.GetArrayViewFromImage(model.labels)
    out = np.zeros(lab.shape, np.float32)
    for cls, value in table.items():
        out[lab == cls] = value
    if model.gm is not None and model.wm is not None:
        # Partial volume inside the brain from the probability maps.
        g = sitk.GetArrayViewFromImage(model.gm)
        w = sitk.GetArrayViewFromImage(model.wm)
        inside = (lab == GM) | (lab == WM) | (lab == CSF)
        rest = np.clip(1.0 - g - w, 0.0, 1.0)
        mix = g * table[GM] + w * table[WM] + rest * table[CSF]
        out[inside] = mix[inside]
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(model.labels)
    fwhm = {"ct": 1.0, "t1": 0.0, "t2": 1.0, "pet": 7.0}[kind] if blur_fwhm_mm is None else blur_fwhm_mm
    if fwhm > 0:
        img = sitk.SmoothingRecursiveGaussian(img, fwhm / 2.3548)
    arr = sitk.GetArrayFromImage(img)
    if kind == "t2" or (bias_strength or 0) > 0:
        arr *= _bias_field(model.labels, rng, 0.25 if bias_strength is None else bias_strength)
    if kind == "pet":
        arr = np.clip(arr, 0, None)
        arr = arr + rng.normal(0.0, 1.0, arr.shape).astype(np.float32) * NOISE[kind] * np.sqrt(arr + 0.05)
    else:
        arr = arr + rng.normal(0.0, NOISE[kind], arr.shape).astype(np.float32)
    out_img = sitk.GetImageFromArray(arr.astype(np.float32))
    out_img.CopyInformation(model.labels)
    return out_img


def _bias_field(reference, rng, strength):
    """exp of a random smooth (quadratic) polynomial over the grid: a multiplicative MR bias of about +-strength."""
    size = reference.GetSize()
    axes = [np.linspace(-1, 1, n) for n in size[::-1]]
    grids = np.meshgrid(*axes, indexing="ij")
    poly = np.zeros(grids[0].shape, np.float32)
    for g in grids:
        poly += rng.uniform(-1, 1) * g + rng.uniform(-0.5, 0.5) * g ** 2
    poly /= max(np.abs(poly).max(), 1e-6)
    return np.exp(strength * poly).astype(np.float32)


# -------------------------------------------------------------------------------------- pair making
def turned_then_offset(rng: np.random.RandomState, *, center, axis: int, angle_deg: float,
                       max_angle_deg: float = 8.0, max_translation_mm: float = 8.0) -> sitk.Transform:
    """Fixed -> moving (LPS): a turn of ``angle_deg`` about LPS ``axis`` (0, 1, 2) through ``center``, then a small
    random rigid offset (:func:`random_rigid_transform`): a scan acquired turned by 90 or 180 degrees with a header
    that does not say so."""
    turn = sitk.Euler3DTransform()
    turn.SetCenter(tuple(center))
    angles = [0.0, 0.0, 0.0]
    angles[axis] = np.deg2rad(angle_deg)
    turn.SetRotation(*angles)
    small = random_rigid_transform(rng, center=center, max_angle_deg=max_angle_deg,
                                   max_translation_mm=max_translation_mm)
    return sitk.CompositeTransform([small, turn])  # applied right to left: the turn first


def random_rigid_transform(rng: np.random.RandomState, *, center, max_angle_deg: float = 30.0,
                           max_translation_mm: float = 30.0, dim: int = 3) -> sitk.Transform:
    """A random rigid transform (fixed -> moving, LPS): a rotation of ``max_angle_deg`` at most about a random axis
    through ``center`` and a translation of at most ``max_translation_mm``.
    The angle is drawn uniformly in [max/2, max] so that the cases are genuinely misaligned."""
    angle = np.deg2rad(rng.uniform(0.5, 1.0) * max_angle_deg) * rng.choice([-1, 1])
    t = rng.normal(size=dim)
    t = t / np.linalg.norm(t) * rng.uniform(0.5, 1.0) * max_translation_mm
    if dim == 2:
        return sitk.Euler2DTransform(tuple(center), float(angle), tuple(t))
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    vr = sitk.VersorRigid3DTransform()
    vr.SetCenter(tuple(center))
    vr.SetRotation(tuple(axis), float(angle))
    vr.SetTranslation(tuple(t))
    eu = sitk.Euler3DTransform()
    eu.SetCenter(tuple(center))
    eu.SetMatrix(vr.GetMatrix())
    eu.SetTranslation(vr.GetTranslation())
    return eu


def simulate_pair(source: sitk.Image, transform_fixed_to_moving_lps: sitk.Transform, *, spacing,
                  rng: np.random.RandomState, fov_crop: float = 0.05, oblique_deg: float = 0.0,
                  interpolator=sitk.sitkLinear, default_value: float | None = None) -> sitk.Image:
    """Resample ``source`` (drawn in fixed space) onto a new grid in MOVING space so that
    ``moving(T(x)) = source(x)`` for the ground truth T = ``transform_fixed_to_moving_lps``.

    The new grid has the given ``spacing`` (anisotropic allowed), optionally oblique axes, and covers the
    transformed source extent minus a random crop of up to ``fov_crop`` of each side (its own field of view).
    """
    dim = source.GetDimension()
    size = np.array(source.GetSize())
    corners = np.array([source.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in c * (size - 1)))
                        for c in np.array(np.meshgrid(*[[0, 1]] * dim, indexing="ij")).reshape(dim, -1).T])
    moved = np.array([transform_fixed_to_moving_lps.TransformPoint(tuple(c)) for c in corners])
    if oblique_deg and dim == 3:
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        vr = sitk.VersorRigid3DTransform()
        vr.SetRotation(tuple(axis), float(np.deg2rad(oblique_deg)))
        direction = np.array(vr.GetMatrix()).reshape(3, 3)
    else:
        direction = np.eye(dim)
    local = moved @ direction  # coordinates along the new axes
    lo, hi = local.min(axis=0), local.max(axis=0)
    extent = hi - lo
    lo = lo + extent * rng.uniform(0, fov_crop, dim)
    hi = hi - extent * rng.uniform(0, fov_crop, dim)
    spacing = np.asarray(spacing, dtype=float)
    new_size = np.maximum(4, np.ceil((hi - lo) / spacing).astype(int))
    ref = sitk.Image([int(v) for v in new_size], sitk.sitkFloat32)
    ref.SetSpacing(tuple(spacing))
    ref.SetDirection(tuple(direction.ravel()))
    ref.SetOrigin(tuple(direction @ lo))
    if default_value is None:
        default_value = float(sitk.GetArrayViewFromImage(source).min())
    inverse = transform_fixed_to_moving_lps.GetInverse()
    return sitk.Resample(source, ref, inverse, interpolator, default_value, source.GetPixelID())


def points_in_mask(mask: sitk.Image, n: int, rng: np.random.RandomState) -> np.ndarray:
    """``n`` random voxel centres inside a mask, in LPS mm (targets for TRE)."""
    idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    pick = idx[rng.choice(len(idx), min(n, len(idx)), replace=False)][:, ::-1]
    return np.array([mask.TransformIndexToPhysicalPoint(tuple(int(v) for v in i)) for i in pick])


def target_registration_errors(estimated_fixed_to_moving, true_fixed_to_moving, points_lps) -> np.ndarray:
    """||T_est(p) - T_true(p)|| in mm for each target point p of fixed space: the measured TRE
    (:func:`.landmarks.tre.target_registration_error`) against the points' true positions in the moving space."""
    from .landmarks.tre import target_registration_error

    pts = np.atleast_2d(np.asarray(points_lps, dtype=float))
    truth = np.array([true_fixed_to_moving.TransformPoint(tuple(map(float, p))) for p in pts]).reshape(pts.shape)
    return target_registration_error(estimated_fixed_to_moving, pts, truth).after


class TransformWithInverse:
    """A fixed -> moving transform with an explicit inverse (``simulate_pair`` resamples through the inverse):
    for a displacement field, whose ``GetInverse`` SimpleITK cannot give."""

    def __init__(self, forward: sitk.Transform, inverse: sitk.Transform):
        self.forward, self.inverse = forward, inverse

    def TransformPoint(self, p):  # noqa: N802 (SimpleITK naming)
        return self.forward.TransformPoint(p)

    def GetInverse(self):  # noqa: N802
        return self.inverse


def random_smooth_deformation(reference: sitk.Image, rng: np.random.RandomState, *, amplitude_mm: float = 6.0,
                              control_spacing_mm: float = 24.0, spacing_mm: float = 2.0):
    """A random smooth deformation over ``reference``'s extent, as (forward, inverse, field).

    ``forward`` maps x -> x + u(x) (a DisplacementFieldTransform, LPS mm), u being independent normal values on a
    ``control_spacing_mm`` grid interpolated by cubic B-splines onto a ``spacing_mm`` grid and scaled so that its
    largest displacement is ``amplitude_mm``; ``inverse`` is its numerical inverse
    (``sitk.InvertDisplacementField``, residual below 0.1 mm for the defaults); ``field`` is u itself.
    """
    size = np.array(reference.GetSize())
    sp = np.array(reference.GetSpacing())
    extent = (size - 1) * sp
    n_fine = np.ceil(extent / spacing_mm).astype(int) + 1
    n_coarse = np.ceil(extent / control_spacing_mm).astype(int) + 3
    fine = sitk.Image([int(v) for v in n_fine], sitk.sitkFloat64)
    fine.SetSpacing([spacing_mm] * 3)
    comps = []
    for _ in range(3):
        c = sitk.GetImageFromArray(rng.normal(size=n_coarse[::-1]).astype(np.float64))
        c.SetSpacing([control_spacing_mm] * 3)
        c.SetOrigin([-control_spacing_mm] * 3)
        comps.append(sitk.GetArrayFromImage(sitk.Resample(c, fine, sitk.Transform(), sitk.sitkBSpline, 0.0,
                                                          sitk.sitkFloat64)))
    vec = np.stack(comps, axis=-1).astype(np.float64)
    vec *= amplitude_mm / np.linalg.norm(vec, axis=-1).max()
    field = sitk.GetImageFromArray(vec, isVector=True)
    field.SetSpacing([spacing_mm] * 3)
    field.SetDirection(reference.GetDirection())
    field.SetOrigin(reference.GetOrigin())
    inv_field = sitk.InvertDisplacementField(field, maximumNumberOfIterations=50, maxErrorToleranceThreshold=0.01,
                                             meanErrorToleranceThreshold=0.001, enforceBoundaryCondition=False)
    forward = sitk.DisplacementFieldTransform(sitk.Image(field))
    inverse = sitk.DisplacementFieldTransform(sitk.Cast(inv_field, sitk.sitkVectorFloat64))
    return forward, inverse, field
