"""One Jacobian determinant (``validation.jacobian``) for 2D and 3D, used by the post-run folding check, ``validate``
and batch: analytic cases (an affine transform's det(A) on oblique grids, a known smooth deformation, a B-spline
up to its grid's border, a one-slice volume) and the sanity check agreeing with ``validate`` on the same transform.
Every transform here maps FIXED-space points to MOVING-space points, LPS mm."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from CrossModalRegLib import sanity
from CrossModalRegLib.validation import jacobian_determinant_image, jacobian_statistics, validate

A3 = np.array([[1.1, 0.2, 0.05], [0.1, 0.9, 0.3], [-0.2, 0.1, 1.3]])
A2 = np.array([[1.2, 0.4], [-0.1, 0.8]])


def _oblique_grid(dim, angle=0.4):
    """A grid turned by ``angle`` about the last axis, anisotropic spacing, off-zero origin."""
    c, s = math.cos(angle), math.sin(angle)
    grid = sitk.Image([23, 17, 9][:dim], sitk.sitkFloat32)
    grid.SetSpacing([1.0, 1.5, 2.5][:dim])
    grid.SetOrigin([3.0, -7.0, 11.0][:dim])
    grid.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0) if dim == 3 else (c, -s, s, c))
    return grid


def _affine(a, translation):
    tx = sitk.AffineTransform(len(a))
    tx.SetMatrix(tuple(a.ravel()))
    tx.SetTranslation(tuple(translation))
    return tx


def _as_nonlinear(tx, dim):
    """``tx`` composed with an identity B-spline: the same mapping, but not linear (the folding check runs)."""
    bspline = sitk.BSplineTransform(dim, 3)
    return sitk.CompositeTransform([tx, bspline])


@pytest.mark.parametrize("dim,a", [(2, A2), (3, A3)])
def test_an_affine_transform_gives_its_determinant_everywhere_on_an_oblique_grid(dim, a):
    grid = _oblique_grid(dim)
    tx = _affine(a, [4.0, -2.0, 1.0][:dim])
    jac = sitk.GetArrayFromImage(jacobian_determinant_image(tx, grid))
    assert jac.shape == grid.GetSize()[::-1]
    np.testing.assert_allclose(jac, np.linalg.det(a), rtol=0, atol=1e-5)  # float32 map, border included


@pytest.mark.parametrize("dim,a", [(2, A2), (3, A3)])
def test_the_folding_check_and_validate_see_the_same_determinant_on_an_oblique_grid(dim, a):
    """The post-run check used to differentiate the field along the grid's axes without turning it into them:
    on this grid it read det(A) 1.23 as anything from 1.05 to 1.39."""
    grid = _oblique_grid(dim)
    flip = np.eye(dim)
    flip[0, 0] = -1.0  # a reflection: det < 0 everywhere, so the check must fail and say the minimum
    tx = _as_nonlinear(_affine(a @ flip, [0.0] * dim), dim)
    det = float(np.linalg.det(a @ flip))
    report = sanity.check_result(grid + 1.0, grid + 1.0, tx, initial_metric=None, final_metric=0.0)
    folding = next(c for c in report.checks if c.name == "no_folding")
    assert not folding.passed and folding.value == 1.0
    assert f"min {det:.3g})" in folding.message
    v = validate(tx, fixed=grid + 1.0, moving=grid + 1.0, jacobian="always").values
    assert v["jacobian_min"] == pytest.approx(det, abs=1e-5) and v["jacobian_max"] == pytest.approx(det, abs=1e-5)
    assert v["jacobian_fraction_folding"] == folding.value


def _sine_field_transform(dim, n=48, amplitude=3.0, wavelength=40.0):
    """u_c = amplitude * sin(2 pi x_c / wavelength) along every axis c, sampled at integer coordinates (the test
    grid's voxel centres: its interpolation is exact there); J = prod_c (1 + amplitude * k * cos(k x_c)),
    k = 2 pi / wavelength."""
    k = 2 * math.pi / wavelength
    coords = np.arange(n + 8) - 4.0
    grids = np.meshgrid(*([coords] * dim), indexing="ij")  # grids[c] is x_c, array axes (x, y[, z])
    field = np.stack([amplitude * np.sin(k * g) for g in grids], axis=-1)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(field, list(range(dim)), list(range(dim))[::-1])),
                                 isVector=True)  # array axes (z, y, x) as SimpleITK wants them
    img.SetOrigin([coords[0]] * dim)
    return sitk.DisplacementFieldTransform(img), k


@pytest.mark.parametrize("dim", [2, 3])
def test_a_known_smooth_deformation_gives_its_analytic_determinant(dim):
    amplitude = 3.0
    tx, k = _sine_field_transform(dim, amplitude=amplitude)
    grid = sitk.Image([40, 36, 32][:dim], sitk.sitkFloat32)
    grid.SetOrigin([2.0] * dim)
    jac = sitk.GetArrayFromImage(jacobian_determinant_image(tx, grid))
    idx = np.indices(jac.shape)  # (k, j, i): physical x_c = 2 + index along image axis c
    truth = np.ones(jac.shape)
    for c in range(dim):
        truth *= 1 + amplitude * k * np.cos(k * (2.0 + idx[dim - 1 - c]))
    assert truth.min() < 0.6 and truth.max() > 1.4  # a real deformation, J from ~0.5 to ~1.5 per axis
    inner = (slice(1, -1),) * dim
    # central differences on a 1 mm grid: relative truncation (k h)^2 / 6 = 0.4 %; one-sided at the border
    np.testing.assert_allclose(jac[inner], truth[inner], atol=0.01 * dim)
    np.testing.assert_allclose(jac, truth, atol=0.06 * dim)


@pytest.mark.parametrize("dim", [2, 3])
def test_a_bspline_is_measured_right_up_to_the_border_of_its_grid(dim):
    """A B-spline made on the grid has no displacement beyond its domain (half a voxel past the border): sampling
    the transform one voxel outside made J jump there (2.7 on a registration whose inside was 0.8-1.2)."""
    grid = sitk.Image([30, 26, 22][:dim], sitk.sitkFloat32)
    grid.SetSpacing([1.0, 1.2, 1.5][:dim])
    tx = sitk.BSplineTransformInitializer(grid, [3] * dim, 3)
    tx.SetParameters(tuple(np.random.default_rng(dim).normal(scale=1.5, size=tx.GetNumberOfParameters())))
    jac = sitk.GetArrayFromImage(jacobian_determinant_image(tx, grid))
    # the truth at every voxel centre (all inside the domain): derivative by tiny central differences
    h = 1e-4
    idx = np.argwhere(np.ones(jac.shape, bool))[::7]
    for kji in idx:
        p = np.array(grid.TransformIndexToPhysicalPoint(tuple(int(v) for v in kji[::-1])))
        cols = [(np.array(tx.TransformPoint(tuple(p + h * e))) - np.array(tx.TransformPoint(tuple(p - h * e)))) / (2 * h)
                for e in np.eye(dim)]
        assert jac[tuple(kji)] == pytest.approx(np.linalg.det(np.array(cols).T), abs=0.05), kji


def test_a_volume_one_slice_thick_gives_the_determinant_of_a_3d_transform():
    """A 2D image as a volume (batch validates 2D cases so): the third axis is sampled one voxel either side."""
    grid = sitk.Image(20, 16, 1, sitk.sitkFloat32)
    grid.SetSpacing((1.0, 1.0, 3.0))
    tx = _affine(A3, (1.0, 2.0, 3.0))
    jac = sitk.GetArrayFromImage(jacobian_determinant_image(tx, grid))
    assert jac.shape == (1, 16, 20)
    np.testing.assert_allclose(jac, np.linalg.det(A3), atol=1e-5)


def test_statistics_over_a_2d_mask_on_another_grid():
    grid = sitk.Image(20, 20, sitk.sitkFloat32)
    bspline = sitk.BSplineTransformInitializer(grid, [2, 2], 3)
    left_half = sitk.Image(10, 20, sitk.sitkUInt8) + 1  # its own grid: x 0..9 of the Jacobian's 0..19
    st = jacobian_statistics(jacobian_determinant_image(bspline, grid), left_half)
    assert st.n_voxels == 200 and st.region == "mask"
    assert st.min == pytest.approx(1.0) and st.max == pytest.approx(1.0)


def test_validate_gives_det_a_for_a_linear_2d_transform_and_refuses_a_grid_of_another_dimension():
    image = sitk.GaussianSource(sitk.sitkFloat32, [40, 40], [8.0, 8.0], [20.0, 20.0])
    v = validate(_affine(A2, (1.0, 1.0)), fixed=image, moving=image).values
    assert v["jacobian_min"] == pytest.approx(np.linalg.det(A2)) == v["jacobian_max"]
    from CrossModalRegLib.errors import CrossModalRegError

    with pytest.raises(CrossModalRegError, match="the transform is 3D but the Jacobian grid is 2D"):
        jacobian_determinant_image(_affine(A3, (0.0, 0.0, 0.0)), image)
