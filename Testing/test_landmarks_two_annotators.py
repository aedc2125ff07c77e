"""Two annotators, N images, imported from the files annotators have; the 2D unit rule (pixels) in CLI and MRML.

The real data: ``histology_two_annotators`` (ANHIR lung-lesion_3, five stains; annotator PS on all five, JB on He
and proSPC; CSVs at 50 % scale, images at 5 %). Every expected number below is computed in the test itself from
the CSV files with numpy, never with the library.
"""

from __future__ import annotations

import csv
import json
import math
import pathlib

import numpy as np
import pytest
import SimpleITK as sitk

from CrossModalRegLib.cli import main as cli_main
from CrossModalRegLib.errors import CrossModalRegError
from CrossModalRegLib.landmarks import AnnotationSession, landmark_statistics, write_anhir_csv, write_mrk_json
from CrossModalRegLib.landmarks.importer import import_session
from CrossModalRegLib.landmarks.units import image_geometry, pixel_node_to_volume_ras

STAINS = {"He": "29-041-Izd2-w35-He-les3", "CD31": "29-041-Izd2-w35-CD31-3-les3",
          "Cc10": "29-041-Izd2-w35-Cc10-5-les3", "Ki67": "29-041-Izd2-w35-Ki67-7-les3",
          "proSPC": "29-041-Izd2-w35-proSPC-4-les3"}


def _strict_json(path):
    """json.load that refuses NaN and Infinity (not JSON)."""
    def refuse(name):
        raise ValueError(f"{path} holds {name}, which is not JSON")
    return json.loads(pathlib.Path(path).read_text(), parse_constant=refuse)


def _read_anhir_independently(path, scale=0.1):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return np.array([[float(r[1]), float(r[2])] for r in rows]) * scale


def _import_args(folder, session):
    args = ["landmarks", "import", str(session)]
    for name, stem in STAINS.items():
        args += ["--image", f"{name}={folder / 'images' / (stem + '.jpg')}"]
    return args + ["--annotator", f"PS={folder / 'user-PS_scale-50pc'}",
                   "--annotator", f"JB={folder / 'user-JB_scale-50pc'}"]


@pytest.fixture
def two_annotators(shared_data):
    return shared_data / "histology_two_annotators"


def test_one_command_creates_the_five_stain_session_and_stats_flag_the_pairs_an_independent_mad_rule_flags(
        two_annotators, tmp_path, capsys):
    session_dir, out = tmp_path / "session", tmp_path / "stats"
    assert cli_main(_import_args(two_annotators, session_dir) + ["--scale", "0.1"]) == 0
    session = AnnotationSession.open(str(session_dir))
    assert list(session.images) == list(STAINS) and session.units == "pixel" and session.protocol.dimension == 2
    assert {im: session.annotators(image=im) for im in STAINS} == {
        "He": ["JB", "PS"], "CD31": ["PS"], "Cc10": ["PS"], "Ki67": ["PS"], "proSPC": ["JB", "PS"]}
    assert session.image_geometry["He"]["size"] == [892, 661]

    assert cli_main(["landmarks", "stats", str(session_dir), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = _strict_json(out / "landmark_statistics.json")
    assert set(summary["images"]) == {"He", "proSPC"} and set(summary["skipped"]) == {"CD31", "Cc10", "Ki67"}
    for stain, n_expected in (("He", 14), ("proSPC", 6)):
        ps = _read_anhir_independently(two_annotators / "user-PS_scale-50pc" / f"{STAINS[stain]}.csv")
        jb = _read_anhir_independently(two_annotators / "user-JB_scale-50pc" / f"{STAINS[stain]}.csv")
        d = np.linalg.norm(ps - jb, axis=1)
        med = np.median(d)
        threshold = med + 3 * 1.4826 * np.median(np.abs(d - med))
        flagged = [str(i + 1) for i in np.nonzero(d > threshold)[0]]
        # with two annotators the consensus is the midpoint: FLE of a landmark = (d/2) * sqrt(2) = d / sqrt(2)
        fle_all = math.sqrt(np.mean(d ** 2) / 2)
        fle_without = math.sqrt(np.mean(d[d <= threshold] ** 2) / 2)
        im = summary["images"][stain]
        print(f"{stain}: {len(flagged)} flagged pairs above {threshold:.2f} px ({d[d > threshold].min():.1f}-"
              f"{d.max():.1f} px); FLE {fle_all:.2f} px with them, {fle_without:.2f} px without")
        assert im["outlier_landmarks"] == flagged and len(flagged) == n_expected
        assert sorted(im["outliers"], key=lambda o: (int(o["label"]), o["annotator"])) == [
            {"annotator": a, "label": lab} for lab in flagged for a in ("JB", "PS")]  # the pair, both
        assert im["outlier_threshold"] == pytest.approx(threshold, rel=1e-12)
        assert im["fle_with_outliers"] == pytest.approx(fle_all, rel=1e-9)
        assert im["fle"] == pytest.approx(fle_without, rel=1e-9)
        assert f"without the {2 * n_expected} outlier points" in im["fle_description"]
        assert "median + 3 x 1.4826 x MAD" in im["outlier_rule"] and "pair" in im["outlier_rule"]
        assert f"without the {2 * n_expected} outlier points on {n_expected} landmarks" in printed
    he = summary["images"]["He"]
    assert he["fle_with_outliers"] == pytest.approx(16.25, abs=0.01) and he["fle"] == pytest.approx(7.03, abs=0.01)
    rows = list(csv.DictReader(open(out / "landmarks.tsv"), delimiter="\t"))
    assert {r["unit"] for r in rows} == {"pixel"}
    kept = [r for r in rows if r["image"] == "He" and not r["outliers"]]
    assert {r["max_deviation_annotator"] for r in kept} == {"JB;PS"}  # never a tie broken by rounding
    schema = list(csv.DictReader(open(out / "landmarks.schema.tsv"), delimiter="\t"))
    assert {s["unitLabel"] for s in schema if s["columnName"] in ("fle_estimate", "max_deviation")} == {"pixel"}


def test_an_outlier_distance_alone_is_the_threshold_and_flags_the_pairs_beyond_it(two_annotators, tmp_path):
    session_dir, out = tmp_path / "session", tmp_path / "stats"
    assert cli_main(_import_args(two_annotators, session_dir) + ["--scale", "0.1"]) == 0
    assert cli_main(["landmarks", "stats", str(session_dir), "--output-dir", str(out),
                     "--outlier-distance", "20"]) == 0
    he = _strict_json(out / "landmark_statistics.json")["images"]["He"]
    ps = _read_anhir_independently(two_annotators / "user-PS_scale-50pc" / f"{STAINS['He']}.csv")
    jb = _read_anhir_independently(two_annotators / "user-JB_scale-50pc" / f"{STAINS['He']}.csv")
    d = np.linalg.norm(ps - jb, axis=1)
    assert he["outlier_threshold"] == 20.0
    assert he["outlier_landmarks"] == [str(i + 1) for i in np.nonzero(d > 20)[0]] and len(he["outlier_landmarks"]) > 14


def test_forgetting_the_scale_names_the_file_the_row_the_bounds_and_the_fix_and_creates_nothing(
        two_annotators, tmp_path, capsys):
    session_dir = tmp_path / "session"
    assert cli_main(_import_args(two_annotators, session_dir) + ["--scale", "1"]) == 2
    err = capsys.readouterr().err
    assert "29-041-Izd2-w35-" in err and ".csv" in err and "data row 1" in err
    # the first file read is PS's CD31 (folders are read in name order)
    assert "CD31-3-les3.csv" in err and "'CD31' image" in err and "--scale 0.1" in err
    assert "895 x 660 pixels: x in [-0.5, 894.5], y in [-0.5, 659.5]" in err
    assert not session_dir.exists()
    assert cli_main(_import_args(two_annotators, session_dir)) == 2  # no scale at all: asked for, not assumed
    assert "give --scale" in capsys.readouterr().err and not session_dir.exists()


def test_two_annotators_disagreeing_are_flagged_as_a_pair_and_json_never_holds_infinity(tmp_path):
    rng = np.random.default_rng(1)
    truth = rng.uniform(0, 500, size=(30, 2))
    pos = truth[None] + rng.normal(0, 1.0, size=(2, 30, 2))
    pos[1, 7] += [40.0, 0.0]
    st = landmark_statistics(pos, annotators=["A", "B"], labels=[str(i) for i in range(30)], units="pixel")
    assert st.outlier_points == [("A", "7"), ("B", "7")] and st.outlier_landmarks == ["7"]
    assert np.isnan(st.consensus[7]).all() and "resolve them" in st.notes[0]
    assert st.fle_overall < 2.0 < st.fle_overall_with_outliers
    assert all(who == "A;B" for i, who in enumerate(st.max_deviation_annotator) if i != 7)
    off = landmark_statistics(pos, annotators=["A", "B"], labels=[str(i) for i in range(30)], units="pixel",
                              outlier_factor=None)
    assert not off.outlier.any() and "no outliers can be flagged" in off.outlier_rule
    # a session whose statistics cannot flag anything writes null (and says why), never Infinity
    session = AnnotationSession.create_for_images(str(tmp_path / "s"), _protocol2d(30), {"slide": ""})
    for a in range(2):
        session.import_points("AB"[a], "slide", [str(i) for i in range(30)], pos[a])
    out = tmp_path / "out"
    assert cli_main(["landmarks", "stats", session.folder, "--output-dir", str(out)]) == 0
    assert _strict_json(out / "landmark_statistics.json")["images"]["slide"]["outlier_landmarks"] == ["7"]
    from CrossModalRegLib.landmarks.report import SessionStatistics, _f
    assert _f(float("inf")) is None and _f(float("nan")) is None
    summary = SessionStatistics(session, {"slide": off}, {}).summary()
    json.dumps(summary, allow_nan=False)
    assert summary["images"]["slide"]["outlier_threshold"] is None
    assert "no outliers flagged" in summary["images"]["slide"]["fle_description"]


def _protocol2d(n):
    from CrossModalRegLib.landmarks import protocol_from_labels
    return protocol_from_labels([str(i) for i in range(n)], dimension=2)


def _jpeg_with_density(path, dots_per_cm=28):
    """A JPEG whose JFIF header says ``dots_per_cm`` (density unit 2), as the shipped lung-lesion JPEGs do; ITK
    reads that as a spacing of 10 / dots_per_cm mm. (SimpleITK writes the density without a unit.)"""
    arr = (np.indices((60, 90)).sum(axis=0) % 256).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    data = bytearray(pathlib.Path(path).read_bytes())
    assert data[6:11] == b"JFIF\x00"
    data[13] = 2
    data[14:18] = bytes([0, dots_per_cm, 0, dots_per_cm])
    pathlib.Path(path).write_bytes(bytes(data))
    return path


def test_a_jpeg_with_a_spacing_gives_the_same_pixels_from_a_pixel_file_and_from_a_millimetre_file(tmp_path, capsys):
    jpg = _jpeg_with_density(tmp_path / "slide.jpg", 28)
    geom = image_geometry(str(jpg))
    assert geom["spacing"] == pytest.approx([10 / 28, 10 / 28]) and geom["size"] == [90, 60]
    px = np.array([[10.0, 5.0], [80.25, 50.5], [45.0, 30.0], [3.0, 55.0]])
    labels = ["1", "2", "3", "4"]
    write_anhir_csv(str(tmp_path / "A.csv"), px, labels)
    # the same points as Slicer saves them for a click on the JPEG loaded with its spacing: LPS mm = index x spacing
    write_mrk_json(str(tmp_path / "B.mrk.json"), labels, np.c_[px * (10 / 28), np.zeros(4)])
    result = import_session(str(tmp_path / "s"), {"slide": str(jpg)},
                            {"A": [f"slide:{tmp_path / 'A.csv'}"], "B": [f"slide:{tmp_path / 'B.mrk.json'}"]},
                            scale=1.0)
    session = result.session
    np.testing.assert_allclose(session.position_array("slide")[2], np.stack([px, px]), atol=1e-9)
    assert [s["file_frame"] for s in result.sources] == ["pixel", "LPS"]
    # reported in pixels by default; --units mm goes through the image's spacing, and says so in every table
    session.import_points("B", "slide", labels, px + [[3.0, 4.0]] * 4)  # B 5 px off everywhere
    for units, expected in (("pixel", 5.0 / math.sqrt(2)), ("mm", 5.0 / math.sqrt(2) * 10 / 28)):
        out = tmp_path / f"out-{units}"
        assert cli_main(["landmarks", "stats", session.folder, "--output-dir", str(out), "--units", units]) == 0
        summary = _strict_json(out / "landmark_statistics.json")
        assert summary["units"] == units and summary["images"]["slide"]["fle"] == pytest.approx(expected)
        for table in ("landmarks", "annotators"):
            assert {r["unit"] for r in csv.DictReader(open(out / f"{table}.tsv"), delimiter="\t")} == {units}
        # consensus files stay in the session's own units (pixels): none in mm, and stats says so
        assert (out / "consensus_slide.csv").exists() == (units == "pixel")
        if units == "mm":
            assert "no consensus_slide.csv: consensus files are written in the session's own units" in \
                capsys.readouterr().out


def test_a_point_outside_the_image_is_refused_naming_file_row_and_bounds(tmp_path):
    jpg = _jpeg_with_density(tmp_path / "slide.jpg", 28)
    write_anhir_csv(str(tmp_path / "A.csv"), [[10.0, 5.0], [95.0, 5.0]], ["p", "q"])
    with pytest.raises(CrossModalRegError, match=r"1 of 2 points of .*A\.csv.*x in \[-0\.5, 89\.5\].*data row 2 \(label 'q'\)"):
        import_session(str(tmp_path / "s"), {"slide": str(jpg)}, {"A": [str(tmp_path / "A.csv")]}, scale=1.0)
    assert not (tmp_path / "s").exists()


def test_in_slicer_a_click_on_a_jpeg_loaded_with_its_spacing_is_saved_in_its_pixels(scene, tmp_path):
    from CrossModalRegLib import mrml
    from CrossModalRegLib.landmarks import mrml_layer as ml
    from CrossModalRegLib.landmarks.units import attach_to_pixel_grid

    jpg = _jpeg_with_density(tmp_path / "slide.jpg", 28)
    image = sitk.ReadImage(str(jpg))
    image.SetOrigin((12.0, -7.0))
    volume = mrml.volume_node_from_image(scene, image, "slide")  # as Slicer loads it: 0.357 mm/px
    session = AnnotationSession.create(str(tmp_path / "s"), _protocol2d(3))
    node = ml.create_annotation_node(scene, session, "alice", "fixed")
    tnode = attach_to_pixel_grid(scene, node, volume)
    recorder = ml.SessionRecorder(session, node)
    pixel = np.array([40.0, 25.0])
    ras = np.array(image.TransformContinuousIndexToPhysicalPoint(tuple(pixel)) + (0.0,)) * [-1, -1, 1]
    node.SetNthControlPointPositionWorld(0, *ras)  # what a click on that pixel of the slice view does
    assert recorder.last_error is None
    np.testing.assert_allclose(session.get_point("alice", "fixed", "0").position, pixel, atol=1e-9)
    # without the pixel grid the same click would be saved as millimetres taken for pixels (0.357 x, plus origin)
    bare = ml.create_annotation_node(scene, session, "bob", "fixed")
    ml.SessionRecorder(session, bare)
    bare.SetNthControlPointPositionWorld(0, *ras)
    np.testing.assert_allclose(session.get_point("bob", "fixed", "0").position, pixel * 10 / 28 + [12.0, -7.0])
    # the pure matrix agrees with Slicer's IJK-to-RAS of the volume
    import vtk

    vm = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(vm)
    m = np.array([[vm.GetElement(r, c) for c in range(4)] for r in range(4)])
    np.testing.assert_allclose(pixel_node_to_volume_ras(m) @ [-pixel[0], -pixel[1], 0, 1], [*ras, 1], atol=1e-9)
    assert attach_to_pixel_grid(scene, node, volume) is tnode  # one transform per volume


def test_three_annotators_flag_one_point_leave_one_out_and_a_landmark_with_two_of_them_as_a_pair():
    rng = np.random.default_rng(4)
    truth = rng.uniform(0, 100, size=(25, 3))
    pos = truth[None] + rng.normal(0, 0.5, size=(3, 25, 3))
    pos[2, 3] += [0.0, 8.0, 0.0]          # one annotator off: only that point is an outlier
    pos[0, 9] = np.nan                    # only B and C placed L09 ...
    pos[2, 9] += [9.0, 0.0, 0.0]          # ... and they disagree: the pair is flagged
    st = landmark_statistics(pos, annotators=["A", "B", "C"], labels=[f"L{i:02d}" for i in range(25)])
    flagged = set(st.outlier_points)
    # A and B are ~4 from the midpoint of the other two at L03 (above the threshold), but C is tested first
    assert st.loo_distance[0, 3] > st.outlier_threshold and st.loo_distance[1, 3] > st.outlier_threshold
    assert ("C", "L03") in flagged and ("A", "L03") not in flagged and ("B", "L03") not in flagged
    assert {("B", "L09"), ("C", "L09")} <= flagged
    assert np.isfinite(st.consensus[3]).all() and np.isnan(st.consensus[9]).all()
    assert st.max_deviation_annotator[3] == "C"


@pytest.mark.parametrize("model", ["affine", "tps"])
def test_in_slicer_2d_clicks_are_pixels_and_the_landmark_transform_maps_physical_fixed_to_moving(scene, tmp_path,
                                                                                                  model):
    """The 2D unit rule end to end in MRML: two JPEGs with different spacings and origins, points clicked where
    Slicer shows given pixels are saved as those pixels (the node goes under the pixel grid by itself), and the
    transform made from a pixel registration moves the moving image so that moving pixel T(p) lies on fixed pixel
    p in RAS (fixed -> moving, transform from parent), also away from the landmarks."""
    from CrossModalRegLib import mrml
    from CrossModalRegLib.landmarks import mrml_layer as ml
    from CrossModalRegLib.landmarks.registration import register_points

    images, volumes = {}, {}
    for name, dots, origin in (("fixed", 28, (12.0, -7.0)), ("moving", 50, (-3.0, 4.5))):
        img = sitk.ReadImage(str(_jpeg_with_density(tmp_path / f"{name}.jpg", dots)))
        img.SetOrigin(origin)
        images[name], volumes[name] = img, mrml.volume_node_from_image(scene, img, name)
    session = AnnotationSession.create(str(tmp_path / "s"), _protocol2d(5))
    fixed_px = np.array([[10.0, 8.0], [70.0, 12.0], [40.0, 50.0], [15.0, 45.0], [60.0, 40.0]])
    shift = np.array([5.0, -3.0])

    def ras_of(name, pixel):
        return np.array(images[name].TransformContinuousIndexToPhysicalPoint(tuple(map(float, pixel))) + (0.0,)) \
            * [-1, -1, 1]

    nodes = {}
    for name, pts in (("fixed", fixed_px), ("moving", fixed_px + shift)):
        nodes[name] = ml.create_annotation_node(scene, session, "alice", name, image_volume=volumes[name])
        recorder = ml.SessionRecorder(session, nodes[name], image_volume=volumes[name])
        for i, p in enumerate(pts):
            nodes[name].SetNthControlPointPositionWorld(i, *ras_of(name, p))  # a click on that pixel
        assert recorder.last_error is None
        saved = np.array([session.get_point("alice", name, str(i)).position for i in range(len(pts))])
        np.testing.assert_allclose(saved, pts, atol=1e-9)
    result = register_points(fixed_px, fixed_px + shift, model=model, units="pixel")
    tnode = ml.registration_transform_node(
        scene, result, reference_image=mrml.image_from_volume_node(volumes["fixed"], squeeze_2d=False),
        moving_image=mrml.image_from_volume_node(volumes["moving"], squeeze_2d=False))
    from_parent = tnode.GetTransformFromParent()
    for p in ([30.0, 20.0], [12.0, 30.0], *fixed_px[:2]):
        got = np.array(from_parent.TransformPoint(*ras_of("fixed", p)))
        np.testing.assert_allclose(got, ras_of("moving", np.array(p) + shift), atol=1e-3)
    # Under the transform, the moving landmarks (kept on the moving pixel grid) show on the fixed ones.
    volumes["moving"].SetAndObserveTransformNodeID(tnode.GetID())
    ml.attach_annotation_node(nodes["moving"], volumes["moving"], 2)
    world = [0.0, 0.0, 0.0]
    nodes["moving"].GetNthControlPointPositionWorld(2, world)
    np.testing.assert_allclose(world, ras_of("fixed", fixed_px[2]), atol=1e-3)
    np.testing.assert_allclose(session.get_point("alice", "moving", "2").position, fixed_px[2] + shift, atol=1e-9)
