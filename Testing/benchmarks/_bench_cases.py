"""Benchmark cases with ground truth, built from ``../shared/data`` (see that folder's README).

Every case is a :class:`Case`: a fixed and a moving SimpleITK image, the stage to run (``rigid`` or
``deformable``), the preset our engine uses, and target points: ``targets_fixed`` (N x dim, LPS mm, or pixels
for the histology pair) with the points ``targets_moving`` they must map to. The ground-truth direction is the
one of the data README and of our engine: fixed point -> moving point.
"""

from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "CrossModalReg"))

from CrossModalRegLib import simulation  # noqa: E402
from CrossModalRegLib.geometry import fsl_flirt_matrix_to_world_lps  # noqa: E402

DEFAULT_DATA = os.path.abspath(os.path.join(REPO, "..", "shared", "data"))

RIGID_GRIDS = {"ct": (0.9, 0.9, 2.0), "t2": (1.0, 1.2, 3.0), "pet": (2.5, 2.5, 3.0)}
RIGID_PRESETS = {"ct": "mr-ct-rigid", "t2": "mr-t1-t2-rigid", "pet": "mr-pet-rigid"}
DEFORMABLE_GRID = (1.1, 1.1, 1.6)


@dataclass
class Case:
    id: str
    family: str  # brainweb2d | rigid3d | deformable3d | epi_t1 | histology
    stage: str  # rigid | deformable
    fixed: sitk.Image
    moving: sitk.Image
    preset: str
    targets_fixed: np.ndarray
    targets_moving: np.ndarray
    units: str = "mm"
    success_threshold: float = 2.0  # mean TRE below this (in ``units``) = success
    diagonal: float | None = None  # 2D: image diagonal (same units), TRE is also given relative to it
    fixed_for_tools: sitk.Image | None = None  # grey versions for tools that do not take RGB
    moving_for_tools: sitk.Image | None = None
    info: dict = field(default_factory=dict)


def _to_points(tx, pts):
    return np.array([tx.TransformPoint(tuple(map(float, p))) for p in pts])


# ------------------------------------------------------------------------------------------- 2D BrainWeb
sys.path.insert(0, os.path.join(REPO, "Testing"))
from _cases import BRAINWEB_CASES as BRAINWEB  # noqa: E402  (the test suite's cases: one definition)


def brainweb_cases(data):
    folder = os.path.join(data, "brainweb2d")
    for name, (f, m, truth) in BRAINWEB.items():
        fixed = sitk.ReadImage(os.path.join(folder, f), sitk.sitkFloat32)
        moving = sitk.ReadImage(os.path.join(folder, m), sitk.sitkFloat32)
        fg = sitk.GetArrayFromImage(sitk.OtsuThreshold(fixed, 0, 1, 128)) > 0
        idx = np.argwhere(fg)[::7][:, ::-1]
        pts = np.array([fixed.TransformIndexToPhysicalPoint(tuple(int(v) for v in i)) for i in idx])
        diag = float(np.linalg.norm(np.array(fixed.GetSize()) * np.array(fixed.GetSpacing())))
        yield Case(id=f"brainweb2d/{name}", family="brainweb2d", stage="rigid", fixed=fixed, moving=moving,
                   preset="multimodal-rigid", targets_fixed=pts, targets_moving=_to_points(truth(), pts),
                   success_threshold=0.01 * diag, diagonal=diag)


# ---------------------------------------------------------------------------------- 3D simulated, rigid
_MODELS: dict = {}


def anatomy(data, name):
    if name not in _MODELS:
        if name == "mni152":
            _MODELS[name] = simulation.tissue_model_from_mni152(os.path.join(data, "mni152"))
        elif name == "colin27":
            _MODELS[name] = simulation.tissue_model_from_colin27(os.path.join(data, "colin27"))
        else:
            raise ValueError(f"unknown anatomy {name}")
    return _MODELS[name]


def _center(img):
    return img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in img.GetSize()])


def rigid3d_cases(data, seeds, anatomies=("mni152", "colin27"), modalities=("ct", "t2", "pet"),
                  alternate=False, n_targets=400):
    """One case per (seed, anatomy, modality); with ``alternate`` each seed uses one anatomy (seed parity)."""
    for seed in seeds:
        names = [anatomies[seed % len(anatomies)]] if alternate else list(anatomies)
        for a in names:
            t1, model = anatomy(data, a)
            for k, mod in enumerate(modalities):
                rng = np.random.RandomState(1000 * seed + 17 * k + (0 if a == "mni152" else 7))
                truth = simulation.random_rigid_transform(rng, center=_center(t1), max_angle_deg=30.0,
                                                          max_translation_mm=30.0)
                moving = simulation.simulate_pair(simulation.render(model, mod, rng=rng), truth,
                                                  spacing=RIGID_GRIDS[mod], rng=rng)
                pts = simulation.points_in_mask(model.brain_mask(), n_targets, rng)
                m = np.array(truth.GetMatrix()).reshape(3, 3)
                angle = float(np.degrees(np.arccos(np.clip((np.trace(m) - 1) / 2, -1, 1))))
                yield Case(id=f"rigid3d/{a}/{mod}/seed{seed}", family="rigid3d", stage="rigid", fixed=t1,
                           moving=moving, preset=RIGID_PRESETS[mod], targets_fixed=pts,
                           targets_moving=_to_points(truth, pts),
                           info={"anatomy": a, "modality": mod, "seed": seed, "true_angle_deg": round(angle, 2),
                                 "true_translation_mm": round(float(np.linalg.norm(truth.GetTranslation())), 2),
                                 "moving_size": list(moving.GetSize()), "moving_spacing": list(RIGID_GRIDS[mod])})


# ---------------------------------------------------------------------------- 3D simulated, deformable
def deformable3d_cases(data, seeds, anatomies=("mni152", "colin27"), modality="t2", alternate=False,
                       amplitude_mm=6.0, n_targets=400):
    """T1 (fixed) vs a T2-like (or other) image of the same anatomy under a small rigid offset (<= 5 deg, 5 mm)
    composed with a known smooth deformation: T(x) = R(x + u(x)), u of ``amplitude_mm`` at most."""
    for seed in seeds:
        names = [anatomies[seed % len(anatomies)]] if alternate else list(anatomies)
        for a in names:
            t1, model = anatomy(data, a)
            rng = np.random.RandomState(5000 + 1000 * seed + (0 if a == "mni152" else 7))
            rigid = simulation.random_rigid_transform(rng, center=_center(t1), max_angle_deg=5.0,
                                                      max_translation_mm=5.0)
            d, d_inv, field = simulation.random_smooth_deformation(t1, rng, amplitude_mm=amplitude_mm)
            forward = sitk.CompositeTransform([rigid, d])  # d first, then the rigid offset
            inverse = sitk.CompositeTransform([d_inv, rigid.GetInverse()])
            truth = simulation.TransformWithInverse(forward, inverse)
            moving = simulation.simulate_pair(simulation.render(model, modality, rng=rng), truth,
                                              spacing=DEFORMABLE_GRID, rng=rng)
            pts = simulation.points_in_mask(model.brain_mask(), n_targets, rng)
            tgt = _to_points(forward, pts)
            back = _to_points(inverse, tgt)
            jac = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field))
            yield Case(id=f"deformable3d/{a}/{modality}/seed{seed}", family="deformable3d", stage="deformable",
                       fixed=t1, moving=moving, preset="multimodal-deformable", targets_fixed=pts,
                       targets_moving=tgt,
                       info={"anatomy": a, "modality": modality, "seed": seed,
                             "max_displacement_mm": amplitude_mm,
                             "mean_displacement_at_targets_mm": round(float(np.linalg.norm(
                                 _to_points(d, pts) - pts, axis=1).mean()), 3),
                             "truth_jacobian_min_max": [round(float(jac.min()), 3), round(float(jac.max()), 3)],
                             "truth_inverse_residual_mm_max": round(float(np.linalg.norm(back - pts, axis=1).max()), 4),
                             "moving_size": list(moving.GetSize()), "moving_spacing": list(DEFORMABLE_GRID)})


# ------------------------------------------------------------------------------------- real EPI / T1
def flirt_to_world_lps(mat, src, ref):
    """FSL FLIRT matrix (``src`` -> ``ref``) as a world (LPS) transform src -> ref; see the library function."""
    return fsl_flirt_matrix_to_world_lps(mat, src, ref)


def epi_t1_cases(data):
    folder = os.path.join(data, "epi_t1")
    epi = sitk.ReadImage(os.path.join(folder, "example_func.nii.gz"), sitk.sitkFloat32)
    t1 = sitk.ReadImage(os.path.join(folder, "highres.nii.gz"), sitk.sitkFloat32)
    w = flirt_to_world_lps(np.loadtxt(os.path.join(folder, "highres2example_func.mat")), t1, epi)  # T1 -> EPI
    brain = np.argwhere(sitk.GetArrayViewFromImage(t1) > 0)[::97][:, ::-1]  # the T1 is brain-extracted
    p_t1 = np.array([t1.TransformIndexToPhysicalPoint(tuple(int(v) for v in i)) for i in brain])
    p_epi = p_t1 @ w[:3, :3].T + w[:3, 3]
    # fixed = EPI, moving = T1 (as the mr-epi-t1-rigid preset expects): truth maps EPI points to T1 points.
    yield Case(id="epi_t1/flirt_reference", family="epi_t1", stage="rigid", fixed=epi, moving=t1,
               preset="mr-epi-t1-rigid", targets_fixed=p_epi, targets_moving=p_t1,
               info={"reference": "FSL FLIRT highres2example_func.mat converted to LPS world (see flirt_to_world_lps)",
                     "flirt_world_T1_to_EPI": np.round(w, 5).tolist()})


# ----------------------------------------------------------------------------------------- histology
def _read_xy(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return np.array([[float(r["X"]), float(r["Y"])] for r in rows])


def _luminance(img):
    if img.GetNumberOfComponentsPerPixel() == 1:
        return sitk.Cast(img, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    grey = sitk.GetImageFromArray(arr[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32))
    grey.SetSpacing(img.GetSpacing())
    grey.SetOrigin(img.GetOrigin())
    grey.SetDirection(img.GetDirection())
    return grey


def histology_cases(data):
    folder = os.path.join(data, "histology")
    fixed = sitk.ReadImage(os.path.join(folder, "Rat-Kidney_HE.jpg"))
    moving = sitk.ReadImage(os.path.join(folder, "Rat-Kidney_PanCytokeratin.jpg"))
    f = _read_xy(os.path.join(folder, "Rat-Kidney_HE.csv"))
    m = _read_xy(os.path.join(folder, "Rat-Kidney_PanCytokeratin.csv"))
    n = min(len(f), len(m))  # HE has 71 rows, PanCytokeratin 69: the first 69 pair by index
    # Pixel (X, Y) -> physical: the JPEGs carry a JFIF density of 28 dots/cm, which ITK reads as 0.357 mm spacing, so
    # distances (and the diagonal) are in those millimetres, not pixels (1 px = 0.357 mm).
    pf = np.array([fixed.TransformContinuousIndexToPhysicalPoint(tuple(p)) for p in f[:n]])
    pm = np.array([moving.TransformContinuousIndexToPhysicalPoint(tuple(p)) for p in m[:n]])
    diag = float(np.linalg.norm(np.array(fixed.GetSize()) * np.array(fixed.GetSpacing())))
    yield Case(id="histology/rat_kidney_HE_PanCytokeratin", family="histology", stage="deformable", fixed=fixed,
               moving=moving, preset="histology-stain-affine-bspline", targets_fixed=pf, targets_moving=pm,
               units="mm", success_threshold=0.01 * diag, diagonal=diag, fixed_for_tools=_luminance(fixed),
               moving_for_tools=_luminance(moving), info={"landmark_pairs": int(n)})
