"""The 2D BrainWeb T1/PD pairs (real simulated MR, ../shared/data/brainweb2d) recover their known transforms."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from _cases import BRAINWEB_CASES, foreground, grid_points, tre

from CrossModalRegLib import engine


@pytest.mark.parametrize("case", sorted(BRAINWEB_CASES))
def test_brainweb_pair_recovers_known_transform_within_half_a_millimetre(shared_data, case):
    fixed_name, moving_name, truth = BRAINWEB_CASES[case]
    fixed = sitk.ReadImage(str(shared_data / "brainweb2d" / fixed_name))
    moving = sitk.ReadImage(str(shared_data / "brainweb2d" / moving_name))
    result = engine.register(fixed, moving, preset="multimodal-rigid")
    errors = tre(result.transform_fixed_to_moving_lps, truth(), grid_points(fixed, 4, foreground(fixed)))
    assert result.sanity.passed
    assert errors.mean() < 0.5, f"{case}: mean TRE {errors.mean():.3f} mm"
    assert errors.max() < 1.0, f"{case}: max TRE {errors.max():.3f} mm"


def test_direction_plus_30_pair_is_identity_in_physical_space_not_in_index_space(shared_data):
    """The images' direction cosines are rotated by 30 degrees: in physical space the answer is identity, so a
    registration that ignored direction would report a 30 degree rotation."""
    fixed = sitk.ReadImage(str(shared_data / "brainweb2d" / "BrainT1SliceBorder20DirectionPlus30.mhd"))
    moving = sitk.ReadImage(str(shared_data / "brainweb2d" / "BrainProtonDensitySliceBorder20DirectionPlus30.mhd"))
    d = np.array(fixed.GetDirection()).reshape(2, 2)
    assert abs(np.degrees(np.arctan2(d[1, 0], d[0, 0]))) == pytest.approx(30.0, abs=0.01)
    result = engine.register(fixed, moving)
    a = np.array(result.transform_fixed_to_moving_lps.GetMatrix()).reshape(2, 2)
    assert abs(np.degrees(np.arctan2(a[1, 0], a[0, 0]))) < 0.2


def test_a_brain_mask_on_real_mr_still_recovers_the_shift(shared_data):
    """A masked run on real data stays accurate. That the mask reaches the metric at all is measured where it
    changes the answer: test_engine_features.test_a_mask_decides_which_object_is_aligned."""
    fixed = sitk.ReadImage(str(shared_data / "brainweb2d" / "BrainT1SliceBorder20.mha"))
    moving = sitk.ReadImage(str(shared_data / "brainweb2d" / "BrainProtonDensitySliceShifted13x17y.mha"))
    mask = sitk.ReadImage(str(shared_data / "brainweb2d" / "BrainProtonDensitySliceBorder20Mask.mha"))
    result = engine.register(fixed, moving, fixed_mask=mask)
    errors = tre(result.transform_fixed_to_moving_lps, sitk.TranslationTransform(2, (13.0, 17.0)),
                 grid_points(fixed, 4, foreground(fixed)))
    assert errors.mean() < 0.5
