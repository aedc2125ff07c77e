"""Registration of volume nodes in a real slicer-core MRML scene: live preview, outputs, rollback, conventions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from _cases import BRAINWEB_CASES, SHIFT_A, foreground, grid_points, two_object_pair

from CrossModalRegLib import geometry, mrml, scene_registration, simulation
from CrossModalRegLib.errors import CrossModalRegError, RegistrationCancelled


def _brainweb_nodes(scene, shared_data, case):
    fixed_name, moving_name, truth = BRAINWEB_CASES[case]
    fixed = sitk.ReadImage(str(shared_data / "brainweb2d" / fixed_name))
    moving = sitk.ReadImage(str(shared_data / "brainweb2d" / moving_name))
    return (mrml.volume_node_from_image(scene, fixed, "T1"), mrml.volume_node_from_image(scene, moving, "PD"),
            fixed, moving, truth())


def _node_ids(scene):
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def test_moving_under_output_transform_coincides_with_fixed_through_slicer_transform_logic(slicer_app, shared_data):
    """After hardening the output transform on the moving volume with Slicer's transform logic, the moving voxel
    that Slicer puts at a fixed RAS point is the voxel the ground truth says corresponds to it."""
    scene = slicer_app.scene
    fixed_node, moving_node, fixed, moving, truth = _brainweb_nodes(scene, shared_data, "rotation_10_shift")
    out = scene_registration.register_volume_nodes(scene, fixed_node, moving_node)
    assert moving_node.GetParentTransformNode() is out.transform_node
    assert out.transform_node.GetNodeReference(mrml.FIXED_VOLUME_REFERENCE) is fixed_node
    assert out.transform_node.GetNodeReference(mrml.MOVING_VOLUME_REFERENCE) is moving_node

    points_lps = grid_points(fixed, 6, foreground(fixed))
    expected_moving_lps = geometry.transform_points(truth, points_lps)
    # Slicer's own transform: hardening moves the moving volume's geometry (linear transform).
    slicer_app.transform_logic.hardenTransform(moving_node)
    assert moving_node.GetParentTransformNode() is None
    ras_to_ijk = vtk.vtkMatrix4x4()
    moving_node.GetRASToIJKMatrix(ras_to_ijk)
    ijk_slicer = np.array([ras_to_ijk.MultiplyPoint((*p, 1.0))[:3] for p in geometry.lps_to_ras_points(points_lps)])
    ijk_truth = np.array([moving.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in expected_moving_lps])
    error_mm = np.linalg.norm((ijk_slicer[:, :2] - ijk_truth) * np.array(moving.GetSpacing()), axis=1)
    assert error_mm.mean() < 0.5
    assert np.abs(ijk_slicer[:, 2]).max() < 1e-6  # the 2D slice stays in its plane


def test_3d_oblique_result_maps_fixed_ras_to_moving_ras_as_the_lps_transform_says(slicer_app):
    """The frame conversion on a real 3D pair whose moving grid is oblique: node (RAS) vs result (LPS)."""
    scene = slicer_app.scene
    rng = np.random.RandomState(2)
    model = simulation.head_phantom(spacing_mm=2.5)
    fixed = simulation.render(model, "t1", rng=rng)
    center = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in fixed.GetSize()])
    truth = simulation.random_rigid_transform(rng, center=center, max_angle_deg=20.0, max_translation_mm=15.0)
    moving = simulation.simulate_pair(simulation.render(model, "ct", rng=rng), truth, spacing=(2.0, 2.0, 3.0),
                                      rng=rng, oblique_deg=25.0)
    fixed_node = mrml.volume_node_from_image(scene, fixed, "MR")
    moving_node = mrml.volume_node_from_image(scene, moving, "CT")
    out = scene_registration.register_volume_nodes(scene, fixed_node, moving_node, preset="mr-ct-rigid")
    targets = simulation.points_in_mask(model.brain_mask(), 200, rng)
    via_slicer = geometry.ras_to_lps_points(
        mrml.transform_ras_points_from_parent(out.transform_node, geometry.lps_to_ras_points(targets)))
    via_result = geometry.transform_points(out.result.transform_fixed_to_moving_lps, targets)
    np.testing.assert_allclose(via_slicer, via_result, atol=1e-6)
    truth_pts = geometry.transform_points(truth, targets)
    assert np.linalg.norm(via_slicer - truth_pts, axis=1).mean() < 1.0


def test_live_preview_updates_the_transform_node_many_times_during_a_run(slicer_app, shared_data):
    scene = slicer_app.scene
    fixed_node, moving_node, *_ = _brainweb_nodes(scene, shared_data, "rotation_10_shift")
    transform_node = scene.AddNewNodeByClass("vtkMRMLTransformNode", "output")
    modified = []
    transform_node.AddObserver(transform_node.TransformModifiedEvent, lambda *a: modified.append(1))
    parents_seen = []

    def progress(p):
        parents_seen.append(moving_node.GetParentTransformNode() is transform_node)

    out = scene_registration.register_volume_nodes(scene, fixed_node, moving_node,
                                                   output_transform_node=transform_node, preview_interval_s=0.0,
                                                   progress=progress)
    assert out.preview_updates > 10
    assert len(modified) > 10
    assert all(parents_seen)  # the moving volume sits under the preview during the whole run


def test_deformable_preview_and_result_are_b_spline_transforms_slicer_can_apply(slicer_app):
    scene = slicer_app.scene
    rng = np.random.RandomState(4)
    model = simulation.head_phantom(spacing_mm=3.0)
    fixed = simulation.render(model, "t1", rng=rng)
    moving = simulation.render(model, "t2", rng=rng)
    fixed_node = mrml.volume_node_from_image(scene, fixed, "T1")
    moving_node = mrml.volume_node_from_image(scene, moving, "T2")
    out = scene_registration.register_volume_nodes(
        scene, fixed_node, moving_node, preset="multimodal-deformable", preview_interval_s=0.0,
        overrides={"stages.2.optimizer.iterations": 5, "stages.1.optimizer.iterations": 10}, strict=False)
    assert out.preview_updates > 5
    assert not out.transform_node.IsLinear()
    pts = simulation.points_in_mask(model.brain_mask(), 50, rng)
    via_slicer = geometry.ras_to_lps_points(
        mrml.transform_ras_points_from_parent(out.transform_node, geometry.lps_to_ras_points(pts)))
    np.testing.assert_allclose(via_slicer, geometry.transform_points(out.result.transform_fixed_to_moving_lps, pts),
                               atol=1e-3)


def test_outputs_provenance_metric_table_and_resampled_volume(slicer_app, shared_data):
    scene = slicer_app.scene
    fixed_node, moving_node, fixed, *_ = _brainweb_nodes(scene, shared_data, "shift_13_17")
    out = scene_registration.register_volume_nodes(scene, fixed_node, moving_node, create_resampled_volume=True,
                                                   seed=42)
    assert out.transform_node.GetName() == "PD_to_T1 (CrossModalReg)"
    prov = json.loads(out.transform_node.GetNodeReference(scene_registration.PROVENANCE_REFERENCE).GetText())
    assert prov["seed"] == 42 and prov["preset"]["name"] == "multimodal-rigid"
    assert prov["scene_inputs"]["fixed_volume"] == "T1"
    assert prov["inputs"]["fixed"]["sha256"] and prov["software"]["SimpleITK"]
    table = out.trace_table_node
    assert table.GetNumberOfRows() == len(out.result.metric_trace) > 10
    assert table.GetColumnDescription("metric").startswith("Metric value")
    assert out.trace_chart_node.GetNumberOfPlotSeriesNodes() == 1
    resampled = mrml.image_from_volume_node(out.resampled_node)
    assert resampled.GetSize() == fixed.GetSize()


def test_cancel_leaves_the_scene_exactly_as_it_was(slicer_app, shared_data):
    scene = slicer_app.scene
    fixed_node, moving_node, *_ = _brainweb_nodes(scene, shared_data, "rotation_10_shift")
    previous_parent = scene.AddNewNodeByClass("vtkMRMLTransformNode", "user's transform")
    moving_node.SetAndObserveTransformNodeID(previous_parent.GetID())
    user_output = scene.AddNewNodeByClass("vtkMRMLTransformNode", "user's output")
    m = vtk.vtkMatrix4x4()
    m.SetElement(0, 3, 7.0)
    user_output.SetMatrixTransformToParent(m)
    ids_before = _node_ids(scene)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 30  # cancel in the middle of the optimisation

    with pytest.raises(RegistrationCancelled):
        scene_registration.register_volume_nodes(scene, fixed_node, moving_node, output_transform_node=user_output,
                                                 cancel=cancel)
    assert _node_ids(scene) == ids_before
    assert moving_node.GetParentTransformNode() is previous_parent
    after = vtk.vtkMatrix4x4()
    user_output.GetMatrixTransformToParent(after)
    assert after.GetElement(0, 3) == 7.0 and after.GetElement(0, 0) == 1.0


def test_bad_input_changes_nothing(slicer_app, shared_data):
    scene = slicer_app.scene
    fixed_node, moving_node, *_ = _brainweb_nodes(scene, shared_data, "identity")
    ids_before = _node_ids(scene)
    with pytest.raises(CrossModalRegError, match="same node"):
        scene_registration.register_volume_nodes(scene, fixed_node, fixed_node)
    lm_f = mrml.markups_node_from_points(scene, [[0, 0, 0], [10, 0, 0], [0, 10, 0]], ["a", "b", "c"], "f")
    lm_m = mrml.markups_node_from_points(scene, [[0, 0, 0], [10, 0, 0], [0, 10, 0]], ["a", "b", "x"], "m")
    ids_before = _node_ids(scene)
    with pytest.raises(CrossModalRegError, match=r"\['c'\] only in fixed \(landmark list 'f'\); \['x'\] only in moving \(landmark list 'm'\)"):
        scene_registration.register_volume_nodes(scene, fixed_node, moving_node, fixed_landmarks_node=lm_f,
                                                 moving_landmarks_node=lm_m)
    assert _node_ids(scene) == ids_before
    assert moving_node.GetParentTransformNode() is None


def test_segmentation_mask_from_a_segmentation_node_is_used(slicer_app):
    """A segment over object A of a two-object pair (A and B moved differently, _cases.two_object_pair) makes the
    module's registration align A: the segmentation reaches the metric as a mask, in the right place (a mask lost
    on the way, or flipped between RAS and LPS, gives the unmasked compromise: measured 3.6 mm off A's shift)."""
    import slicer

    scene = slicer_app.scene
    fixed, moving, fixed_mask, _ = two_object_pair()
    fixed_node = mrml.volume_node_from_image(scene, fixed, "two objects")
    moving_node = mrml.volume_node_from_image(scene, moving, "two objects moved")
    labelmap = mrml.volume_node_from_image(scene, fixed_mask, "A")
    lm_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "lm")
    lm_node.SetAndObserveImageData(labelmap.GetImageData())
    m = vtk.vtkMatrix4x4()
    labelmap.GetIJKToRASMatrix(m)
    lm_node.SetIJKToRASMatrix(m)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mask seg")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(lm_node, seg)
    out = scene_registration.register_volume_nodes(scene, fixed_node, moving_node, fixed_mask_node=seg,
                                                   rotation_search=False)
    points = np.array([[20.0, 30.0], [25.0, 50.0], [34.0, 70.0]])  # object A
    mapped = geometry.transform_points(out.result.transform_fixed_to_moving_lps, points)
    np.testing.assert_allclose(mapped, points + SHIFT_A, atol=0.3)


def _smooth_noise(seed, shape=(64, 64)):
    img = sitk.GetImageFromArray(np.random.RandomState(seed).normal(size=shape).astype(np.float32))
    return sitk.RescaleIntensity(sitk.SmoothingRecursiveGaussian(img, 2.0), 0.0, 1000.0)


def test_checkerboard_volume_alternates_fixed_and_transformed_moving(slicer_app):
    """Two unrelated textures; the moving under a known transform node. Tile by tile (4 x 4 tiles of 16 px), the
    checkerboard must show the fixed image or the moving image resampled through that transform, alternating like
    a chessboard: its size alone would not tell a board from either image."""
    scene = slicer_app.scene
    fixed, moving = _smooth_noise(1), _smooth_noise(2, (80, 80))
    moving.SetOrigin((-6.0, 4.0))
    truth = sitk.Euler2DTransform((32.0, 32.0), 0.1, (5.0, -3.0))  # fixed -> moving, LPS
    fixed_node = mrml.volume_node_from_image(scene, fixed, "fixed texture")
    moving_node = mrml.volume_node_from_image(scene, moving, "moving texture")
    tnode = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "truth")
    mrml.set_transform_fixed_to_moving(tnode, truth)
    moving_node.SetAndObserveTransformNodeID(tnode.GetID())
    node = scene_registration.checkerboard_volume(scene, fixed_node, moving_node, squares=4)
    board = sitk.GetArrayFromImage(mrml.image_from_volume_node(node))
    f = sitk.GetArrayFromImage(fixed)
    m = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, truth, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    assert board.shape == f.shape
    for r in range(4):
        for c in range(4):
            tile = (slice(16 * r + 1, 16 * r + 15), slice(16 * c + 1, 16 * c + 15))  # away from the seams
            # (both images are scaled between their 1st and 99th percentile: clipping keeps r just under 1)
            with_fixed = np.corrcoef(board[tile].ravel(), f[tile].ravel())[0, 1]
            with_moving = np.corrcoef(board[tile].ravel(), m[tile].ravel())[0, 1]
            shows_fixed = (r + c) % 2 == 0
            assert (with_fixed if shows_fixed else with_moving) > 0.99, (r, c, with_fixed, with_moving)
            assert abs(with_moving if shows_fixed else with_fixed) < 0.6, (r, c, with_fixed, with_moving)
    again = scene_registration.checkerboard_volume(scene, fixed_node, moving_node, squares=4, node=node)
    assert again is node


def test_moving_landmarks_go_under_the_output_transform_and_back_on_cancel(slicer_app, shared_data):
    """The module's moving landmark list follows the moving volume (as in the command line's scene): under the output
    transform after a run, so that it displays on the fixed anatomy; its own parent again after a cancel."""
    scene = slicer_app.scene
    fixed_node, moving_node, *_ = _brainweb_nodes(scene, shared_data, "shift_13_17")
    points = np.array([[100.0, 120.0, 0.0], [140.0, 150.0, 0.0], [90.0, 160.0, 0.0], [150.0, 100.0, 0.0]])
    labels = ["a", "b", "c", "d"]
    lm_f = mrml.markups_node_from_points(scene, points, labels, "T1 landmarks")
    lm_m = mrml.markups_node_from_points(scene, points + [13.0, 17.0, 0.0], labels, "PD landmarks")
    own = scene.AddNewNodeByClass("vtkMRMLTransformNode", "users own")
    lm_m.SetAndObserveTransformNodeID(own.GetID())
    with pytest.raises(RegistrationCancelled):
        scene_registration.register_volume_nodes(scene, fixed_node, moving_node, fixed_landmarks_node=lm_f,
                                                 moving_landmarks_node=lm_m, cancel=lambda: True)
    assert lm_m.GetParentTransformNode() is own
    out = scene_registration.register_volume_nodes(scene, fixed_node, moving_node, fixed_landmarks_node=lm_f,
                                                   moving_landmarks_node=lm_m)
    assert lm_m.GetParentTransformNode() is out.transform_node and lm_f.GetParentTransformNode() is None
    world = np.array([lm_m.GetNthControlPointPositionWorld(i) for i in range(4)])  # where Slicer draws them
    np.testing.assert_allclose(world, geometry.lps_to_ras_points(points), atol=0.5)
