"""LPS/RAS conversions for oblique volumes and transforms, checked through real slicer-core MRML."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from CrossModalRegLib import geometry, mrml


def _oblique_image(dim=3):
    rng = np.random.RandomState(3)
    size = [13, 11, 7][:dim]
    img = sitk.GetImageFromArray(rng.rand(*size[::-1]).astype(np.float32))
    if dim == 3:
        rot = sitk.Euler3DTransform((0, 0, 0), 0.3, -0.5, 0.9)
        img.SetDirection(rot.GetMatrix())
        img.SetSpacing((0.7, 1.3, 2.9))
        img.SetOrigin((-40.0, 25.0, 13.0))
    else:
        a = np.deg2rad(30)
        img.SetDirection((np.cos(a), -np.sin(a), np.sin(a), np.cos(a)))
        img.SetSpacing((0.5, 2.0))
        img.SetOrigin((-12.0, 7.0))
    return img


def _voxel_center_lps(img, index):
    return np.array(img.TransformIndexToPhysicalPoint(tuple(int(i) for i in index)))


def test_oblique_volume_node_has_the_images_geometry_in_ras(scene):
    img = _oblique_image()
    node = mrml.volume_node_from_image(scene, img, "oblique")
    m = slicer.vtkMRMLScalarVolumeNode()  # just for type; geometry read from node below
    del m
    ijk = (5, 3, 2)
    ras = [0.0, 0.0, 0.0, 1.0]
    vm = __import__("vtk").vtkMatrix4x4()
    node.GetIJKToRASMatrix(vm)
    ras = vm.MultiplyPoint((*ijk, 1.0))[:3]
    lps = _voxel_center_lps(img, ijk)
    np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-9)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), sitk.GetArrayFromImage(img))


@pytest.mark.parametrize("dim", [2, 3])
def test_volume_round_trip_is_exact(scene, dim):
    img = _oblique_image(dim)
    node = mrml.volume_node_from_image(scene, img, "rt")
    back = mrml.image_from_volume_node(node)
    assert back.GetDimension() == dim
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))
    np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetSpacing(), img.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(back.GetDirection(), img.GetDirection(), atol=1e-9)


def test_vector_volume_round_trip(scene):
    rgb = sitk.Compose([sitk.Cast(_oblique_image(2) * 255, sitk.sitkUInt8)] * 3)
    node = mrml.volume_node_from_image(scene, rgb, "rgb")
    assert node.IsA("vtkMRMLVectorVolumeNode")
    back = mrml.image_from_volume_node(node)
    assert back.GetNumberOfComponentsPerPixel() == 3
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(rgb))


def _random_transforms():
    eu = sitk.Euler3DTransform((10.0, -5.0, 3.0), 0.2, -0.4, 0.5, (12.0, -7.0, 4.0))
    aff = sitk.AffineTransform(3)
    aff.SetMatrix((1.1, 0.05, 0.0, -0.02, 0.95, 0.1, 0.0, 0.03, 1.05))
    aff.SetTranslation((3.0, 2.0, -1.0))
    aff.SetCenter((4.0, 5.0, 6.0))
    grid = sitk.Image([30, 30, 30], sitk.sitkFloat32)
    grid.SetOrigin((-30.0, -30.0, -30.0))
    grid.SetSpacing((2.0, 2.0, 2.0))
    bs = sitk.BSplineTransformInitializer(grid, [3, 3, 3])
    bs.SetParameters(tuple(np.random.RandomState(1).randn(bs.GetNumberOfParameters()) * 2.0))
    comp = sitk.CompositeTransform([eu, bs])
    return {"euler": eu, "affine": aff, "bspline": bs, "euler_then_bspline": comp}


@pytest.mark.parametrize("kind", ["euler", "affine", "bspline", "euler_then_bspline"])
def test_transform_node_from_parent_is_fixed_to_moving_in_ras(scene, kind):
    """Slicer's own VTK transform of the node maps RAS fixed points to RAS moving points (F4 T F4)."""
    tx = _random_transforms()[kind]
    node = scene.AddNewNodeByClass("vtkMRMLTransformNode", kind)
    mrml.set_transform_fixed_to_moving(node, tx)
    pts_lps = np.random.RandomState(2).uniform(-20, 20, size=(25, 3))
    expected_lps = geometry.transform_points(tx, pts_lps)
    got_ras = mrml.transform_ras_points_from_parent(node, geometry.lps_to_ras_points(pts_lps))
    np.testing.assert_allclose(geometry.ras_to_lps_points(got_ras), expected_lps, atol=1e-6)
    back = mrml.transform_fixed_to_moving_from_node(node)
    np.testing.assert_allclose(geometry.transform_points(back, pts_lps), expected_lps, atol=1e-6)


def test_2d_transform_embeds_in_ras_with_z_unchanged(scene):
    tx = sitk.Euler2DTransform((110.0, 128.0), np.deg2rad(10), (13.0, 17.0))
    node = scene.AddNewNodeByClass("vtkMRMLTransformNode")
    mrml.set_transform_fixed_to_moving(node, tx)
    p = np.array([[50.0, 60.0], [150.0, 20.0]])
    got = geometry.ras_to_lps_points(mrml.transform_ras_points_from_parent(node, geometry.lps_to_ras_points(p)))
    np.testing.assert_allclose(got[:, :2], geometry.transform_points(tx, p), atol=1e-9)
    np.testing.assert_allclose(got[:, 2], 0.0, atol=1e-12)


def test_markups_store_ras_and_return_lps(scene):
    pts = np.array([[1.0, 2.0, 3.0], [-4.0, 5.0, -6.0]])
    node = mrml.markups_node_from_points(scene, pts, ["a", "b"], "lm")
    p = [0.0, 0.0, 0.0]
    node.GetNthControlPointPosition(0, p)
    np.testing.assert_allclose(p, [-1.0, -2.0, 3.0])
    labels, back = mrml.points_from_markups_node(node)
    assert labels == ["a", "b"]
    np.testing.assert_allclose(back, pts)


def test_headless_application_closes_without_vtk_warnings(capfd):
    """Every command that builds a scene closes one; closing must not print VTK warnings on the user's terminal."""
    from CrossModalRegLib.headless import HeadlessSlicer

    with HeadlessSlicer(set_global_scene=False) as app:
        app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    err = capfd.readouterr().err
    assert "WARN" not in err and "Invalid scene" not in err, err
