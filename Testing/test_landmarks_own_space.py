"""Landmarks after a registration, on real slicer-core MRML: points clicked on the transformed moving image are
saved in the moving image's OWN space; annotation and consensus nodes follow their image's transform; a failed
save reaches the error callback; the views show the image being annotated and jump to a landmark; outputs are
reused and never overwrite inputs."""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from _cases import folder_digest

from CrossModalRegLib import mrml, views
from CrossModalRegLib.errors import CrossModalRegError
from CrossModalRegLib.landmarks import (
    AnnotationSession,
    LandmarkDefinition,
    LandmarkProtocol,
    pair_landmarks,
    register_points,
    session_statistics,
)
from CrossModalRegLib.landmarks import mrml_layer as ml
from CrossModalRegLib.outputs import check_outputs

F3 = np.array([-1.0, -1.0, 1.0])
N = 8


def _volume(scene, name, origin, direction):
    img = sitk.Image(24, 20, 16, sitk.sitkFloat32)
    img.SetSpacing((2.0, 2.0, 2.5))
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return mrml.volume_node_from_image(scene, img, name)


def _true_fixed_to_moving():
    """Ground truth: a rigid transform (15 degrees about z, 8 degrees about x, a 12 mm shift) FIXED -> MOVING, LPS."""
    tx = sitk.Euler3DTransform()
    tx.SetRotation(np.deg2rad(8.0), 0.0, np.deg2rad(15.0))
    tx.SetTranslation((12.0, -7.0, 5.0))
    return tx


def _set_world(node, index, world_ras):
    # What Slicer's markups displayable manager does with a click in a view: the world point, converted to the
    # node's local coordinates through its parent transform.
    node.SetNthControlPointPositionWorld(index, *map(float, world_ras))


def _world_of_moving_point(moving_volume, q_lps):
    """Where the moving image's own point q (LPS) is displayed (world RAS) with the moving volume's transform."""
    to_world = vtk_general_transform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(moving_volume.GetParentTransformNode(), None, to_world)
    return np.array(to_world.TransformPoint(*(F3 * q_lps)))


def vtk_general_transform():
    import vtk

    return vtk.vtkGeneralTransform()


@pytest.fixture
def two_images(scene):
    fixed = _volume(scene, "fixed", (-20.0, -20.0, -20.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    c, s = np.cos(np.deg2rad(20)), np.sin(np.deg2rad(20))
    moving = _volume(scene, "moving", (-10.0, -30.0, -15.0), (c, -s, 0, s, c, 0, 0, 0, 1))
    rng = np.random.default_rng(3)
    truth_fixed = rng.uniform(-25, 25, size=(N, 3))
    tx = _true_fixed_to_moving()
    truth_moving = np.array([tx.TransformPoint(tuple(p)) for p in truth_fixed])
    return fixed, moving, truth_fixed, truth_moving, rng


def _session(tmp_path):
    protocol = LandmarkProtocol("own-space", [LandmarkDefinition(f"L{i + 1}", f"point {i + 1}") for i in range(N)])
    return AnnotationSession.create(str(tmp_path / "session"), protocol, fixed_image="fixed", moving_image="moving")


def _register(scene, session, fixed, moving, output=None):
    stats = session_statistics(session)
    # as the module does: a landmark whose two annotators were flagged as a pair has no consensus (NaN)
    pairs = pair_landmarks(stats.consensus_landmarks("fixed"), stats.consensus_landmarks("moving"), unpaired="skip")
    labels, fp, mp = pairs.labels, pairs.fixed, pairs.moving
    result = register_points(fp, mp, model="rigid", labels=labels)
    node = ml.registration_transform_node(scene, result, node=output)
    moving.SetAndObserveTransformNodeID(node.GetID())
    return stats, result, node


def test_points_clicked_after_register_are_saved_in_each_images_own_space(scene, tmp_path, two_images):
    """Two annotators before Register, a third (and a repeat of the first) after: every saved point is where it
    lies in its own image (to 1e-6 mm), although the moving image is displayed through the registration."""
    fixed, moving, truth_f, truth_m, rng = two_images
    session = _session(tmp_path)
    volumes = {"fixed": fixed, "moving": moving}
    nodes, recorders = {}, {}
    for annotator in ("A", "B"):
        for image, truth in (("fixed", truth_f), ("moving", truth_m)):
            node = ml.create_annotation_node(scene, session, annotator, image, image_volume=volumes[image])
            recorders[(annotator, image)] = ml.SessionRecorder(session, node, image_volume=volumes[image])
            nodes[(annotator, image)] = node
            for i in range(N):  # before Register the world is each image's own space
                _set_world(node, i, F3 * (truth[i] + rng.normal(0, 0.3, 3)))
    before = folder_digest(session.folder)
    stats, result, tnode = _register(scene, session, fixed, moving)
    assert result.fre_rms < 1.0
    # The moving annotation nodes went under the registration with the moving image; nothing was re-saved.
    assert nodes[("A", "moving")].GetTransformNodeID() == tnode.GetID()
    assert nodes[("A", "fixed")].GetTransformNodeID() is None
    assert folder_digest(session.folder) == before
    # ... and they are displayed on the fixed anatomy (within the annotation noise and the fit).
    shown = np.array([nodes[("A", "moving")].GetNthControlPointPositionWorld(i) for i in range(N)]) * F3
    assert np.max(np.linalg.norm(shown - truth_f, axis=1)) < 2.0

    changes = []
    for annotator, repeat in (("C", 1), ("A", 2)):
        for image, truth in (("fixed", truth_f), ("moving", truth_m)):
            node = ml.create_annotation_node(scene, session, annotator, image, repeat=repeat,
                                             image_volume=volumes[image])
            ml.SessionRecorder(session, node, image_volume=volumes[image], on_change=changes.append)
            for i in range(N):
                world = _world_of_moving_point(moving, truth[i]) if image == "moving" else F3 * truth[i]
                _set_world(node, i, world)
    assert len(changes) == 4 * N
    reopened = AnnotationSession.open(session.folder)
    for annotator, repeat in (("C", 1), ("A", 2)):
        for image, truth in (("fixed", truth_f), ("moving", truth_m)):
            _, _, arr = reopened.position_array(image, repeat=repeat, annotators=[annotator])
            np.testing.assert_allclose(arr[0], truth, atol=1e-6, err_msg=f"{annotator} r{repeat} {image}")
    # The moving image's world (fixed) position differs from its own by several mm here: the test can fail.
    world_m = np.array([_world_of_moving_point(moving, q) for q in truth_m]) * F3
    assert np.min(np.linalg.norm(world_m - truth_m, axis=1)) > 3.0
    import json

    saved = json.loads(pathlib.Path(session.annotation_path("C", "moving")).read_text())
    assert saved["frame"] == "LPS" and saved["space"].startswith("image (own physical space")


def test_reloaded_session_follows_the_images_transform(scene, tmp_path, two_images):
    fixed, moving, truth_f, truth_m, _ = two_images
    session = _session(tmp_path)
    session.import_points("A", "moving", [f"L{i + 1}" for i in range(N)], truth_m)
    tnode = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "some registration")
    mrml.set_transform_fixed_to_moving(tnode, _true_fixed_to_moving())
    moving.SetAndObserveTransformNodeID(tnode.GetID())
    _, nodes = ml.load_session_into_scene(scene, session.folder, volumes={"fixed": fixed, "moving": moving})
    node = nodes[("A", "moving", 1)]
    assert node.GetTransformNodeID() == tnode.GetID()
    shown = np.array([node.GetNthControlPointPositionWorld(i) for i in range(N)]) * F3
    np.testing.assert_allclose(shown, truth_f, atol=1e-6)  # displayed on the fixed anatomy
    before = folder_digest(session.folder)
    ml.SessionRecorder(session, node, image_volume=moving)
    moving.SetAndObserveTransformNodeID(None)  # the user removes the registration: the points follow
    assert node.GetTransformNodeID() is None
    assert folder_digest(session.folder) == before


def test_a_failed_save_reaches_the_error_callback(scene, tmp_path, two_images):
    fixed, _, truth_f, _, _ = two_images
    session = _session(tmp_path)
    node = ml.create_annotation_node(scene, session, "A", "fixed", image_volume=fixed)
    errors = []
    recorder = ml.SessionRecorder(session, node, image_volume=fixed, on_error=errors.append)
    annotations = pathlib.Path(session.folder) / "annotations"
    shutil.rmtree(annotations)
    annotations.write_text("not a folder")  # the session folder broke (unmounted share, deleted folder ...)
    _set_world(node, 0, F3 * truth_f[0])
    assert len(errors) == 1 and isinstance(errors[0], CrossModalRegError)
    assert "NOT saved" in str(errors[0]) and session.folder in str(errors[0])
    assert str(recorder.last_error) == str(errors[0])
    annotations.unlink()
    annotations.mkdir()  # the folder is back: the next change saves every point again
    _set_world(node, 1, F3 * truth_f[1])
    assert recorder.last_error is None and len(errors) == 1
    assert len(AnnotationSession.open(session.folder).points(annotator="A")) == 2


@pytest.fixture
def slice_views(scene):
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    out = []
    for name, orientation in (("Red", "Axial"), ("Green", "Coronal"), ("Yellow", "Sagittal")):
        sn = slicer.vtkMRMLSliceNode()
        sn.SetName(name)
        sn.SetLayoutName(name)
        sn.SetSingletonTag(name)
        scene.AddNode(sn)
        sn.SetOrientation(orientation)
        cn = slicer.vtkMRMLSliceCompositeNode()
        cn.SetLayoutName(name)
        cn.SetSingletonTag(name)
        scene.AddNode(cn)
        out.append((sn, cn))
    return out


def test_the_views_show_the_image_being_annotated(scene, two_images, slice_views):
    fixed, moving, *_ = two_images
    for _, cn in slice_views:
        cn.SetBackgroundVolumeID(fixed.GetID())
        cn.SetForegroundVolumeID(moving.GetID())
        cn.SetForegroundOpacity(0.5)
    assert views.show_volume_in_slice_views(scene, moving) == 3
    for _, cn in slice_views:
        assert cn.GetBackgroundVolumeID() == moving.GetID()
        assert cn.GetForegroundVolumeID() is None
    with pytest.raises(CrossModalRegError, match="select the volume"):
        views.show_volume_in_slice_views(scene, None)


def test_jump_to_a_landmark_centres_every_view_on_it(scene, slice_views):
    target = np.array([12.5, -33.0, 41.0])
    assert views.jump_slices_to_point(scene, target) == 3
    for sn, _ in slice_views:
        m = sn.GetSliceToRAS()
        np.testing.assert_allclose([m.GetElement(r, 3) for r in range(3)], target, atol=1e-9)


def test_repeated_outputs_update_the_same_nodes(scene, tmp_path, two_images):
    fixed, moving, truth_f, truth_m, rng = two_images
    session = _session(tmp_path)
    for annotator in ("A", "B"):
        session.import_points(annotator, "fixed", [f"L{i + 1}" for i in range(N)], truth_f + rng.normal(0, .3, (N, 3)))
        session.import_points(annotator, "moving", [f"L{i + 1}" for i in range(N)], truth_m + rng.normal(0, .3, (N, 3)))
    volumes = {"fixed": fixed, "moving": moving}
    counts = []
    tnode = None
    for _ in range(3):
        stats, _, tnode = _register(scene, session, fixed, moving, output=tnode)
        ml.consensus_nodes(scene, stats, volumes=volumes)
        counts.append((scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode"),
                       scene.GetNumberOfNodesByClass("vtkMRMLTransformNode")))
    assert counts[0] == counts[1] == counts[2] == (2, 1)
    cons = ml.find_output_node(scene, "vtkMRMLMarkupsFiducialNode", ml.CONSENSUS_ATTRIBUTE,
                               f"{session.folder}|moving")
    assert cons.GetTransformNodeID() == tnode.GetID()  # the moving consensus is in the moving image's space


def test_expected_tre_map_refuses_to_overwrite_the_fixed_volume(scene, two_images):
    fixed, _, truth_f, _, _ = two_images
    before = mrml.image_from_volume_node(fixed, squeeze_2d=False)
    with pytest.raises(CrossModalRegError, match="it is computed on"):
        ml.expected_tre_volume(scene, truth_f, fixed, 1.0, node=fixed)
    after = mrml.image_from_volume_node(fixed, squeeze_2d=False)
    assert np.array_equal(sitk.GetArrayViewFromImage(before), sitk.GetArrayViewFromImage(after))
    assert scene.IsNodePresent(fixed)
    out = ml.expected_tre_volume(scene, truth_f, fixed, 1.0)
    again = ml.expected_tre_volume(scene, truth_f, fixed, 2.0, node=out)
    assert again is out or again.GetID() == out.GetID()
    # TRE scales with FLE: doubling FLE doubles the map.
    arr = slicer.util.arrayFromVolume(out)
    assert np.isfinite(arr).all() and arr.min() > 0


def test_expected_tre_map_can_be_cancelled_midway(scene, two_images):
    fixed, _, truth_f, _, _ = two_images
    n_volumes = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    seen = []

    def progress(p):
        seen.append(p.fraction)
        if p.fraction > 0.3:
            raise KeyboardInterrupt("cancel")

    with pytest.raises(KeyboardInterrupt):
        ml.expected_tre_volume(scene, truth_f, fixed, 1.0, progress=progress)
    assert 0.3 < seen[-1] < 0.5  # stopped after a few of the 16 slices, not at the end
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n_volumes


def test_outputs_that_are_inputs_are_refused_with_the_selector_named(scene, two_images):
    fixed, moving, *_ = two_images
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "t")
    with pytest.raises(CrossModalRegError, match="expected TRE map output is set to 'fixed'.*fixed volume"):
        check_outputs({"fixed volume": fixed, "moving volume": moving}, {"expected TRE map": fixed})
    with pytest.raises(CrossModalRegError, match="both as the landmark table and as the annotator table"):
        check_outputs({}, {"landmark table": table, "annotator table": table})
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "fixed placement")
    fixed.SetAndObserveTransformNodeID(parent.GetID())
    with pytest.raises(CrossModalRegError, match="would move the fixed volume"):
        check_outputs({}, {"output transform": parent}, protected_transforms={"fixed volume": fixed})
    check_outputs({"fixed volume": fixed}, {"expected TRE map": None, "landmark table": table})
