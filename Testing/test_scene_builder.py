"""The one scene builder: the command line's ``scene/registration.mrml``, loaded back into a fresh real MRML scene,
has the nodes the CrossModalReg module makes (names from the files, views, transform direction, metric table,
provenance), references the input images where they are, and matches the module's node structure."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from _cases import foreground, grid_points

from CrossModalRegLib import cli, geometry, mrml, scene_builder, scene_io, scene_registration
from CrossModalRegLib.headless import HeadlessSlicer
from CrossModalRegLib.landmarks.fileio import write_landmarks_csv

FIXED_FILE = "BrainT1SliceBorder20.mha"
MOVING_FILE = "BrainProtonDensitySliceShifted13x17y.mha"  # README ground truth: fixed -> moving = (13, 17) mm LPS
SHIFT_LPS = np.array([13.0, 17.0])
FIXED, MOVING = "BrainT1SliceBorder20", "BrainProtonDensitySliceShifted13x17y"
TRANSFORM = f"{MOVING}_to_{FIXED} (CrossModalReg)"
LANDMARKS_LPS = np.array([[100.0, 120.0, 0.0], [140.0, 150.0, 0.0], [90.0, 160.0, 0.0], [150.0, 100.0, 0.0]])


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, shared_data):
    """One ``crossmodalreg register`` run on the BrainWeb shift pair, with evaluation landmarks (the truth)."""
    d = shared_data / "brainweb2d"
    tmp = tmp_path_factory.mktemp("scene")
    labels = ["a", "b", "c", "d"]
    write_landmarks_csv(str(tmp / "T1_points.csv"), labels, LANDMARKS_LPS)
    write_landmarks_csv(str(tmp / "PD_points.csv"), labels, LANDMARKS_LPS + [*SHIFT_LPS, 0.0])
    out = tmp / "out"
    assert cli.main(["register", "--fixed", str(d / FIXED_FILE), "--moving", str(d / MOVING_FILE),
                     "--fixed-landmarks", str(tmp / "T1_points.csv"), "--moving-landmarks", str(tmp / "PD_points.csv"),
                     "--landmarks-for", "evaluation", "--output-dir", str(out), "--no-progress"]) == 0
    return out, d


def _loaded(app, out):
    scene_io.load_scene(app.scene, str(out / "scene" / "registration.mrml"))
    return app.scene


def test_cli_scene_names_volumes_after_their_files_and_shows_fixed_under_moving_in_every_view(cli_run):
    out, d = cli_run
    with HeadlessSlicer() as app:
        scene = _loaded(app, out)
        fixed, moving = scene.GetFirstNodeByName(FIXED), scene.GetFirstNodeByName(MOVING)
        assert fixed is not None and moving is not None
        assert scene.GetFirstNodeByName("fixed") is None and scene.GetFirstNodeByName("moving") is None
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mrml.image_from_volume_node(fixed)),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(d / FIXED_FILE))))
        composites = {c.GetLayoutName(): c for c in (scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
                                                     for i in range(scene.GetNumberOfNodesByClass(
                                                         "vtkMRMLSliceCompositeNode")))}
        assert set(composites) == {"Red", "Yellow", "Green"}
        for comp in composites.values():
            assert comp.GetBackgroundVolumeID() == fixed.GetID()
            assert comp.GetForegroundVolumeID() == moving.GetID()
            assert comp.GetForegroundOpacity() == pytest.approx(0.5)
        orientations = {n: scene.GetSingletonNode(n, "vtkMRMLSliceNode").GetOrientation() for n in composites}
        assert orientations == {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
        for node in (fixed, moving):  # Slicer's automatic window/level: inside the image's range, not the default
            display = node.GetDisplayNode()
            lo, hi = node.GetImageData().GetScalarRange()
            assert display.GetAutoWindowLevel()
            assert 0.2 * (hi - lo) < display.GetWindow() <= hi - lo
            assert lo < display.GetLevel() < hi


def test_cli_transform_node_maps_fixed_points_onto_the_moving_points_the_readme_gives(cli_run):
    out, d = cli_run
    fixed_image = sitk.ReadImage(str(d / FIXED_FILE))
    with HeadlessSlicer() as app:
        scene = _loaded(app, out)
        fixed, moving = scene.GetFirstNodeByName(FIXED), scene.GetFirstNodeByName(MOVING)
        node = scene.GetFirstNodeByName(TRANSFORM)
        assert node is not None and moving.GetParentTransformNode() is node
        assert fixed.GetParentTransformNode() is None
        assert node.GetAttribute(mrml.DIRECTION_ATTRIBUTE) == mrml.DIRECTION_FIXED_TO_MOVING
        assert node.GetNodeReference(mrml.FIXED_VOLUME_REFERENCE) is fixed
        assert node.GetNodeReference(mrml.MOVING_VOLUME_REFERENCE) is moving
        points = grid_points(fixed_image, 8, foreground(fixed_image))
        fixed_ras = geometry.lps_to_ras_points(points)
        moving_lps = geometry.ras_to_lps_points(mrml.transform_ras_points_from_parent(node, fixed_ras))
        error = np.linalg.norm(moving_lps[:, :2] - (points + SHIFT_LPS), axis=1)
        assert error.mean() < 0.5 and np.abs(moving_lps[:, 2]).max() < 1e-9
        # the landmarks: fixed ones where they were placed, the moving ones under the transform
        fixed_lm, moving_lm = scene.GetFirstNodeByName(f"{FIXED} landmarks"), scene.GetFirstNodeByName(
            f"{MOVING} landmarks")
        assert fixed_lm.GetParentTransformNode() is None and moving_lm.GetParentTransformNode() is node
        labels, lps = mrml.points_from_markups_node(moving_lm)
        assert labels == ["a", "b", "c", "d"]
        np.testing.assert_allclose(lps, LANDMARKS_LPS + [*SHIFT_LPS, 0.0], atol=1e-6)


def test_cli_scene_holds_the_metric_table_and_the_provenance_the_module_makes(cli_run):
    out, _ = cli_run
    record = json.loads((out / "registration.json").read_text())
    with HeadlessSlicer() as app:
        scene = _loaded(app, out)
        node = scene.GetFirstNodeByName(TRANSFORM)
        table = node.GetNodeReference(scene_registration.TRACE_REFERENCE)
        assert table is not None and table.GetName() == f"{TRANSFORM} metric trace"
        assert table.GetNumberOfRows() == len(record["metric_trace"]) > 10
        for column in scene_registration.METRIC_TRACE_COLUMNS:
            assert table.GetColumnTitle(column.key) == column.title
            assert table.GetColumnUnitLabel(column.key) == column.unit
            assert table.GetColumnDescription(column.key) == column.description
        assert table.GetTable().GetColumnByName("iteration_index").GetDataTypeAsString() == "int"
        np.testing.assert_allclose([table.GetTable().GetValueByName(i, "metric").ToDouble() for i in range(3)],
                                   [r["metric"] for r in record["metric_trace"][:3]], rtol=1e-5)  # 6 digits
        provenance = node.GetNodeReference(scene_registration.PROVENANCE_REFERENCE)
        assert provenance is not None and provenance.GetName() == f"{TRANSFORM} provenance"
        prov = json.loads(provenance.GetText())
        for key in ("seed", "preset", "preset_sha256", "command_inputs", "sanity", "qc_pictures", "landmarks"):
            assert prov[key] == record[key], key
        assert prov["output_transform"] == {"node": TRANSFORM, "meaning": mrml.DIRECTION_FIXED_TO_MOVING}
        assert prov["scene_inputs"] == {"fixed_volume": FIXED, "moving_volume": MOVING,
                                        "fixed_landmarks": f"{FIXED} landmarks",
                                        "moving_landmarks": f"{MOVING} landmarks"}
        chart = scene.GetFirstNodeByName(f"{TRANSFORM} convergence")
        assert chart.GetNthPlotSeriesNode(0).GetTableNode() is table
    assert "output_transform" not in record and "scene_inputs" not in record  # registration.json as it was


def test_cli_scene_references_the_input_files_where_they_are_and_survives_moving_the_output_folder(cli_run, tmp_path):
    out, d = cli_run
    scene_files = sorted(p.name for p in (out / "scene").iterdir())
    assert not [n for n in scene_files if n.endswith((".mha", ".nrrd", ".nii.gz"))], scene_files  # no copies
    text = (out / "scene" / "registration.mrml").read_text()
    assert f'fileName="{d / FIXED_FILE}"' in text and f'fileName="{d / MOVING_FILE}"' in text  # absolute
    assert 'fileName="../moving_resampled.nii.gz"' in text  # what the run wrote: inside the output folder
    moved = tmp_path / "elsewhere" / "deeper" / "out"
    shutil.copytree(out, moved)
    with HeadlessSlicer() as app:
        scene = _loaded(app, moved)
        for name, path in ((FIXED, d / FIXED_FILE), (MOVING, d / MOVING_FILE),
                           (f"{MOVING} resampled", moved / "moving_resampled.nii.gz")):
            node = scene.GetFirstNodeByName(name)
            assert node.GetStorageNode().GetFileName() == str(path), name
            assert node.GetImageData() is not None and node.GetImageData().GetNumberOfPoints() > 1000, name
        assert scene.GetFirstNodeByName(TRANSFORM).GetStorageNode().GetFileName().startswith(str(moved / "scene"))


def _structure(scene):
    """(class, name, parent transform, {reference role: names}) of every data node: what a user sees in Data."""
    classes = ("vtkMRMLVolumeNode", "vtkMRMLTransformNode", "vtkMRMLTextNode", "vtkMRMLTableNode",
               "vtkMRMLPlotSeriesNode", "vtkMRMLPlotChartNode", "vtkMRMLMarkupsNode")
    out = set()
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        if not any(node.IsA(c) for c in classes) or node.GetHideFromEditors():
            continue
        parent = node.GetParentTransformNode() if hasattr(node, "GetParentTransformNode") else None
        refs = tuple(sorted((role, node.GetNodeReference(role).GetName()) for role in (
            mrml.FIXED_VOLUME_REFERENCE, mrml.MOVING_VOLUME_REFERENCE, scene_registration.PROVENANCE_REFERENCE,
            scene_registration.TRACE_REFERENCE) if node.GetNodeReference(role) is not None))
        out.add((node.GetClassName(), node.GetName(), parent.GetName() if parent else None, refs))
    return out


def test_the_module_logic_and_the_command_line_make_the_same_nodes(cli_run, shared_data):
    """The module's path (volumes loaded from the files as Slicer loads them, register_volume_nodes with the user's
    landmark lists, used for the initialisation, and a resampled volume) and the CLI's scene give the same classes, names, parents, references."""
    out, d = cli_run
    with HeadlessSlicer() as app:
        cli_nodes = _structure(_loaded(app, out))
    with HeadlessSlicer() as app:
        scene = app.scene
        fixed = app.volumes_logic.AddArchetypeVolume(str(d / FIXED_FILE), FIXED)
        moving = app.volumes_logic.AddArchetypeVolume(str(d / MOVING_FILE), MOVING)
        labels = ["a", "b", "c", "d"]
        fixed_lm = mrml.markups_node_from_points(scene, LANDMARKS_LPS, labels, f"{FIXED} landmarks")
        moving_lm = mrml.markups_node_from_points(scene, LANDMARKS_LPS + [*SHIFT_LPS, 0.0], labels,
                                                  f"{MOVING} landmarks")
        outputs = scene_registration.register_volume_nodes(scene, fixed, moving, create_resampled_volume=True,
                                                           fixed_landmarks_node=fixed_lm, moving_landmarks_node=moving_lm)
        assert outputs.transform_node.GetName() == TRANSFORM
        module_nodes = _structure(scene)
    assert module_nodes == cli_nodes
    assert len(cli_nodes) == 10  # 3 volumes, transform, provenance, table, series, chart, 2 landmark lists


def test_an_image_not_read_from_its_file_is_written_into_the_scene_folder(tmp_path, shared_data):
    """An input whose file does not hold the registered image (here: the image given a new origin) is not referenced:
    the scene would show another image than the one registered. It is saved in the scene folder instead."""
    fixed = sitk.ReadImage(str(shared_data / "brainweb2d" / FIXED_FILE))
    assert scene_builder.file_holds_image(str(shared_data / "brainweb2d" / FIXED_FILE), fixed)
    shifted = sitk.Image(fixed)
    shifted.SetOrigin((5.0, 0.0))
    assert not scene_builder.file_holds_image(str(shared_data / "brainweb2d" / FIXED_FILE), shifted)
    assert not scene_builder.file_holds_image(str(tmp_path / "absent.nii.gz"), fixed)


def test_a_run_from_images_in_memory_writes_its_volumes_into_the_scene(tmp_path, shared_data):
    """No input files (the demo, a script): the volumes are named by role and written into the scene folder."""
    from CrossModalRegLib.pipeline import run_registration_job

    fixed = sitk.ReadImage(str(shared_data / "brainweb2d" / FIXED_FILE))
    moving = sitk.ReadImage(str(shared_data / "brainweb2d" / MOVING_FILE))
    run_registration_job(fixed, moving, str(tmp_path / "out"), pictures=False)
    with HeadlessSlicer() as app:
        scene = _loaded(app, tmp_path / "out")
        for role, image in (("fixed", fixed), ("moving", moving)):
            node = scene.GetFirstNodeByName(role)
            assert node.GetStorageNode().GetFileName().startswith(str(tmp_path / "out" / "scene")), role
            np.testing.assert_array_equal(sitk.GetArrayFromImage(mrml.image_from_volume_node(node)),
                                          sitk.GetArrayFromImage(image))
        assert scene.GetFirstNodeByName("moving_to_fixed (CrossModalReg)") is not None


def test_slice_views_made_headless_are_fitted_to_the_fixed_volume(slicer_app, shared_data):
    scene = slicer_app.scene
    fixed = mrml.volume_node_from_image(scene, sitk.ReadImage(str(shared_data / "brainweb2d" / FIXED_FILE)), "T1")
    moving = mrml.volume_node_from_image(scene, sitk.ReadImage(str(shared_data / "brainweb2d" / MOVING_FILE)), "PD")
    scene_builder.show_in_slice_views(scene, slicer_app.app_logic, fixed, moving)
    red = scene.GetSingletonNode("Red", "vtkMRMLSliceNode")
    bounds = [0.0] * 6
    fixed.GetRASBounds(bounds)
    fov = red.GetFieldOfView()
    assert max(fov[:2]) == pytest.approx(max(bounds[1] - bounds[0], bounds[3] - bounds[2]), rel=0.05)
    m = vtk.vtkMatrix4x4()
    m.DeepCopy(red.GetSliceToRAS())
    center = [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2]
    np.testing.assert_allclose([m.GetElement(0, 3), m.GetElement(1, 3)], center, atol=1.0)


def test_an_image_format_the_headless_slicer_cannot_read_is_copied_so_the_scene_opens_everywhere(tmp_path, shared_data):
    """JPEG/PNG/TIFF are read by the Slicer application but not by slicer-core (no such ITK image IO): a scene that
    referenced them would not open headless. Such inputs are written into the scene folder; NIfTI/NRRD/MetaImage
    (read by every Slicer) are referenced."""
    d = shared_data / "brainweb2d"
    fixed = sitk.ReadImage(str(d / FIXED_FILE))
    png = tmp_path / "T1.png"
    sitk.WriteImage(sitk.Cast(sitk.RescaleIntensity(fixed, 0, 255), sitk.sitkUInt8), str(png))
    assert not scene_builder.file_holds_image(str(png), sitk.ReadImage(str(png)))
    out = tmp_path / "out"
    assert cli.main(["register", "--fixed", str(png), "--moving", str(d / MOVING_FILE), "--output-dir", str(out),
                     "--no-progress"]) == 0
    with HeadlessSlicer() as app:
        scene = _loaded(app, out)
        node = scene.GetFirstNodeByName("T1")
        assert node.GetStorageNode().GetFileName().startswith(str(out / "scene"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mrml.image_from_volume_node(node)),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(png))))
        assert scene.GetFirstNodeByName(MOVING).GetStorageNode().GetFileName() == str(d / MOVING_FILE)


def test_a_batch_case_scene_is_the_command_lines_scene(cli_run, tmp_path):
    """Batch registers each case through the same job and builder: its case scene has the CLI's nodes (less the
    landmark lists, not given here) and references the case's input files."""
    out, d = cli_run
    cohort = tmp_path / "cohort.csv"
    cohort.write_text(f"case_id,fixed,moving\nshift,{d / FIXED_FILE},{d / MOVING_FILE}\n")
    assert cli.main(["batch", str(cohort), "--output-dir", str(tmp_path / "batch"), "--workers", "1", "--no-pictures",
                     "--no-progress"]) == 0
    with HeadlessSlicer() as app:
        cli_nodes = {n for n in _structure(_loaded(app, out)) if "Markups" not in n[0]}
    with HeadlessSlicer() as app:
        scene = _loaded(app, tmp_path / "batch" / "cases" / "shift")
        assert _structure(scene) == cli_nodes
        assert scene.GetFirstNodeByName(FIXED).GetStorageNode().GetFileName() == str(d / FIXED_FILE)
