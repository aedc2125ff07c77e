"""The axis-aligned orientation search: simulated CT/T2/PET-like pairs of a real anatomy turned 90 or 180 degrees
about each axis in the voxel data (not in the header) are recovered by the default 3D presets; the symmetric
mni152 head is not turned when nothing is turned. Downsampled to 2 mm to stay fast; the full-resolution figures
come from ``Testing/benchmarks/bench_orientation.py``."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from CrossModalRegLib import engine, initialization, simulation

GRIDS = {"ct": (1.8, 1.8, 2.0), "t2": (2.0, 2.4, 3.0), "pet": (2.5, 2.5, 3.0)}
PRESETS = {"ct": "mr-ct-rigid", "t2": "mr-t1-t2-rigid", "pet": "mr-pet-rigid"}


@pytest.fixture(scope="module")
def mni152_2mm(shared_data):
    """(fixed T1 block-averaged to 2 mm, the 1 mm tissue model the moving images are drawn from)."""
    t1, model = simulation.tissue_model_from_mni152(str(shared_data / "mni152"))
    return sitk.BinShrink(t1, [2, 2, 2]), model


def turned_pair(t1, model, modality, axis, angle_deg, seed):
    """A moving image whose voxel data is turned by ``angle_deg`` about LPS ``axis`` (through the head's centre)
    and then moved by a small random rigid offset (up to 8 degrees, 8 mm); the header says nothing of the turn.
    Returns (moving, truth fixed -> moving LPS, target points)."""
    rng = np.random.RandomState(seed)
    center = t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in t1.GetSize()])
    truth = simulation.turned_then_offset(rng, center=center, axis=axis, angle_deg=angle_deg)
    moving = simulation.simulate_pair(simulation.render(model, modality, rng=rng), truth, spacing=GRIDS[modality],
                                      rng=rng)
    targets = simulation.points_in_mask(model.brain_mask(), 300, rng)
    return moving, truth, targets


def test_the_24_orientations_are_the_proper_rotations_of_the_cube():
    rots = initialization.axis_aligned_rotations(3)
    assert len(rots) == 24 and np.allclose(rots[0], np.eye(3))
    assert all(np.isclose(np.linalg.det(r), 1.0) and np.allclose(r @ r.T, np.eye(3)) for r in rots)
    assert len({tuple(r.ravel()) for r in rots}) == 24  # all different; no mirror (det -1) among them
    assert initialization.describe_rotation(np.diag([-1.0, 1.0, -1.0])) == "180 deg about LPS y (the A-P axis)"


@pytest.mark.parametrize("modality,axis,angle", [
    ("t2", 0, 90), ("ct", 0, 180), ("pet", 1, -90), ("ct", 1, 180), ("ct", 2, -90), ("t2", 2, 180),
])
def test_a_scan_turned_90_or_180_degrees_without_the_header_saying_so_is_recovered(mni152_2mm, modality, axis,
                                                                                   angle):
    t1, model = mni152_2mm
    moving, truth, targets = turned_pair(t1, model, modality, axis, angle, seed=axis * 7 + abs(angle))
    before = simulation.target_registration_errors(sitk.Euler3DTransform(), truth, targets)
    assert before.mean() > 40.0  # really turned
    result = engine.register(t1, moving, preset=PRESETS[modality], threads=2)
    errors = simulation.target_registration_errors(result.transform_fixed_to_moving_lps, truth, targets)
    info = result.initialization["orientation_search"]
    assert errors.mean() < 1.0, f"{modality} turned {angle} about axis {axis}: TRE {errors.mean():.2f} mm, " \
                                f"orientation chosen: {info['chosen']}"
    assert info["turned"] and result.sanity.passed


def test_without_the_search_the_turn_is_not_recovered(mni152_2mm):
    """The case above needs the orientation search: the +-30 degree rotation search alone cannot reach 180."""
    t1, model = mni152_2mm
    moving, truth, targets = turned_pair(t1, model, "ct", 1, 180, seed=180 + 7)
    result = engine.register(t1, moving, preset="mr-ct-rigid", orientation_search=False, strict=False, threads=2)
    errors = simulation.target_registration_errors(result.transform_fixed_to_moving_lps, truth, targets)
    assert "orientation_search" not in result.initialization
    assert errors.mean() > 20.0


@pytest.mark.parametrize("modality,preset", [("t2", "mr-t1-t2-rigid"), ("ct", "multimodal-rigid")])
def test_the_symmetric_head_is_not_turned_or_flipped_when_nothing_is_turned(mni152_2mm, modality, preset):
    """mni152 is the left-right symmetric template: a 180-degree turn about A-P or S-I of it is not the same
    image (top/bottom or front/back swap), but a search that picks up symmetric evidence could still turn it. The
    result must be identity-equivalent (the truth within 1 mm)."""
    t1, model = mni152_2mm
    moving, truth, targets = turned_pair(t1, model, modality, 0, 0.0, seed=5)
    result = engine.register(t1, moving, preset=preset, threads=2)
    errors = simulation.target_registration_errors(result.transform_fixed_to_moving_lps, truth, targets)
    assert not result.initialization["orientation_search"]["turned"]
    assert errors.mean() < 1.0 and errors.max() < 2.0
