"""3D cross-modality pairs with exact ground truth, simulated from real anatomies (mni152, colin27): CT-like,
T2-like (with bias field) and PET-like (7 mm blur, 2.5-3 mm voxels) images on their own anisotropic grids under
random rigid transforms of up to 30 degrees and 30 mm; and the real EPI-T1 pair against FSL FLIRT's answer."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from CrossModalRegLib import engine, simulation
from CrossModalRegLib.geometry import fsl_flirt_matrix_to_world_lps

GRIDS = {"ct": (0.9, 0.9, 2.0), "t2": (1.0, 1.2, 3.0), "pet": (2.5, 2.5, 3.0)}
PRESETS = {"ct": "mr-ct-rigid", "t2": "mr-t1-t2-rigid", "pet": "mr-pet-rigid"}


@pytest.fixture(scope="module")
def anatomies(shared_data):
    return {
        "mni152": simulation.tissue_model_from_mni152(str(shared_data / "mni152")),
        "colin27": simulation.tissue_model_from_colin27(str(shared_data / "colin27")),
    }


CASES = [(a, m, s) for a, seeds in (("mni152", (11, 12)), ("colin27", (21,))) for m in ("ct", "t2", "pet")
         for s in seeds]


@pytest.mark.parametrize("anatomy,modality,seed", CASES)
def test_simulated_pair_registers_with_mean_tre_under_1mm(anatomies, anatomy, modality, seed):
    t1, model = anatomies[anatomy]
    rng = np.random.RandomState(seed)
    center = t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in t1.GetSize()])
    truth = simulation.random_rigid_transform(rng, center=center, max_angle_deg=30.0, max_translation_mm=30.0)
    moving = simulation.simulate_pair(simulation.render(model, modality, rng=rng), truth, spacing=GRIDS[modality],
                                      rng=rng)
    targets = simulation.points_in_mask(model.brain_mask(), 400, rng)
    before = simulation.target_registration_errors(sitk.Euler3DTransform(), truth, targets)
    result = engine.register(t1, moving, preset=PRESETS[modality])
    errors = simulation.target_registration_errors(result.transform_fixed_to_moving_lps, truth, targets)
    assert before.mean() > 10.0  # genuinely misaligned to begin with
    assert errors.mean() < 1.0, f"{anatomy} {modality} seed {seed}: mean TRE {errors.mean():.3f} mm"
    assert errors.max() < 2.0
    assert result.sanity.passed


def _flirt_moving_to_fixed_lps(shared_data, epi, t1):
    """FSL FLIRT's highres -> example_func matrix as a world (LPS) transform T1 -> EPI."""
    m = np.loadtxt(str(shared_data / "epi_t1" / "highres2example_func.mat"))
    return fsl_flirt_matrix_to_world_lps(m, t1, epi)


def test_real_epi_t1_pair_lands_within_2mm_of_flirt_over_the_brain(shared_data):
    epi = sitk.ReadImage(str(shared_data / "epi_t1" / "example_func.nii.gz"), sitk.sitkFloat32)
    t1 = sitk.ReadImage(str(shared_data / "epi_t1" / "highres.nii.gz"), sitk.sitkFloat32)
    w = _flirt_moving_to_fixed_lps(shared_data, epi, t1)
    brain = np.argwhere(sitk.GetArrayViewFromImage(t1) > 0)[::97][:, ::-1]  # the T1 is brain-extracted
    p_moving = np.array([t1.TransformIndexToPhysicalPoint(tuple(int(v) for v in i)) for i in brain])
    p_fixed = p_moving @ w[:3, :3].T + w[:3, 3]
    result = engine.register(epi, t1, preset="mr-epi-t1-rigid")
    est = np.array([result.transform_fixed_to_moving_lps.TransformPoint(tuple(p)) for p in p_fixed])
    distance = np.linalg.norm(est - p_moving, axis=1)
    assert distance.mean() < 2.0, f"mean distance to FLIRT {distance.mean():.2f} mm"
    assert np.percentile(distance, 95) < 3.0
