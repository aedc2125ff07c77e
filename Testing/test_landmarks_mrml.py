"""Landmark annotation on real slicer-core MRML: protocol-driven placement, per-change saving, reload, crash
recovery, file formats through Slicer's storage node, bad input, consensus nodes, tables and the command line."""

from __future__ import annotations

import json
import pathlib
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from _cases import folder_digest

from CrossModalRegLib.cli import main as cli_main
from CrossModalRegLib.errors import CrossModalRegError
from CrossModalRegLib.landmarks import (
    AnnotationSession,
    LandmarkDefinition,
    LandmarkProtocol,
    load_protocol,
    read_fcsv,
    read_landmark_file,
    read_mrk_json,
    save_protocol,
    session_statistics,
    write_fcsv,
    write_landmarks_csv,
)
from CrossModalRegLib.landmarks import mrml_layer as ml

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _protocol(n=6):
    return LandmarkProtocol(
        name="phantom", version="2.1", description="test protocol",
        landmarks=[LandmarkDefinition(f"L{i + 1}", f"click landmark {i + 1}") for i in range(n)])


def _place(node, index, pos_lps):
    node.SetNthControlPointPosition(index, -pos_lps[0], -pos_lps[1], pos_lps[2])


def test_protocol_round_trips_with_its_schema_version(tmp_path):
    prot = _protocol()
    save_protocol(prot, str(tmp_path / "p.json"))
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["schema_version"] == 1 and data["version"] == "2.1"
    back = load_protocol(str(tmp_path / "p.json"))
    assert back.labels == prot.labels and back.description_of("L3") == "click landmark 3"
    data["schema_version"] = 99
    (tmp_path / "future.json").write_text(json.dumps(data))
    with pytest.raises(CrossModalRegError, match="schema_version 99 is not supported"):
        load_protocol(str(tmp_path / "future.json"))
    data["schema_version"] = 1
    data["landmarks"].append({"label": "L2"})
    (tmp_path / "dup.json").write_text(json.dumps(data))
    with pytest.raises(CrossModalRegError, match="duplicate landmark label 'L2'"):
        load_protocol(str(tmp_path / "dup.json"))


def test_protocol_driven_placement_leaves_exactly_the_protocols_labels(scene, tmp_path):
    session = AnnotationSession.create(str(tmp_path / "s"), _protocol(), fixed_image="CT", moving_image="MR")
    node = ml.create_annotation_node(scene, session, "alice", "fixed")
    rec = ml.SessionRecorder(session, node)
    assert node.GetFixedNumberOfControlPoints()
    assert ml.next_unplaced_label(node) == "L1"
    rng = np.random.default_rng(0)
    for i in range(6):
        assert ml.next_unplaced_label(node) == f"L{i + 1}"
        assert node.GetControlPointPlacementStartIndex() == i
        _place(node, i, rng.uniform(-50, 50, 3))
    assert ml.next_unplaced_label(node) is None and rec.last_error is None
    labels = [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())]
    assert labels == _protocol().labels
    assert [p.label for p in session.points(annotator="alice", image="fixed")] == _protocol().labels
    assert node.GetNthControlPointDescription(2) == "click landmark 3"


def test_every_change_is_saved_and_reloads_in_a_new_scene_with_annotator_image_and_timestamps(
        slicer_app, tmp_path):
    folder = str(tmp_path / "s")
    session = AnnotationSession.create(folder, _protocol(), fixed_image="CT", moving_image="MR")
    rng = np.random.default_rng(1)
    expected = {}
    for annotator in ("alice", "bob"):
        for image in ("fixed", "moving"):
            node = ml.create_annotation_node(slicer_app.scene, session, annotator, image)
            rec = ml.SessionRecorder(session, node)
            for i in range(4):  # partial annotation: L5, L6 stay unplaced
                p = rng.uniform(-50, 50, 3)
                _place(node, i, p)
                expected[(annotator, image, f"L{i + 1}")] = p
                # saved at once: a fresh reader of the folder sees the point
                assert AnnotationSession.open(folder).get_point(annotator, image, f"L{i + 1}") is not None
            _place(node, 1, expected[(annotator, image, "L2")] + [1.0, 0, 0])  # a move updates 'modified'
            expected[(annotator, image, "L2")] = expected[(annotator, image, "L2")] + [1.0, 0, 0]
            rec.detach()
    before = {(p.annotator, p.image, p.label): (p.placed, p.modified) for p in session.points()}
    moved = session.get_point("alice", "fixed", "L2")
    assert moved.modified > moved.placed
    slicer_app.scene.Clear(False)  # close the scene

    reloaded, nodes = ml.load_session_into_scene(slicer_app.scene, folder)
    assert set(nodes) == {(a, im, 1) for a in ("alice", "bob") for im in ("fixed", "moving")}
    for (annotator, image, _), node in nodes.items():
        assert node.GetAttribute(ml.ANNOTATOR_ATTRIBUTE) == annotator
        assert node.GetAttribute(ml.IMAGE_ATTRIBUTE) == image
        assert ml.next_unplaced_label(node) == "L5"
        for i in range(4):
            label = f"L{i + 1}"
            p = [0.0, 0.0, 0.0]
            node.GetNthControlPointPosition(i, p)
            np.testing.assert_allclose(np.array(p) * [-1, -1, 1], expected[(annotator, image, label)], atol=1e-9)
            assert node.GetAttribute(ml.PLACED_ATTRIBUTE_PREFIX + label) == before[(annotator, image, label)][0]
            assert node.GetAttribute(ml.MODIFIED_ATTRIBUTE_PREFIX + label) == before[(annotator, image, label)][1]
    assert {(p.annotator, p.image, p.label): (p.placed, p.modified) for p in reloaded.points()} == before
    assert reloaded.images == {"fixed": "CT", "moving": "MR"}


KILL_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    import numpy as np
    from CrossModalRegLib.headless import HeadlessSlicer
    from CrossModalRegLib.landmarks import AnnotationSession
    from CrossModalRegLib.landmarks import mrml_layer as ml

    app = HeadlessSlicer()
    session = AnnotationSession.open(sys.argv[1])
    node = ml.create_annotation_node(app.scene, session, "carol", "moving")
    recorder = ml.SessionRecorder(session, node)
    for i in range(node.GetNumberOfControlPoints()):
        node.SetNthControlPointPosition(i, -10.0 * i, -1.0, 2.0 * i)
        print("placed", node.GetNthControlPointLabel(i), flush=True)
        sys.stdin.readline()  # waits here, between two points, until the parent kills it
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_session_killed_between_two_points_reloads_every_point_placed_before_the_kill(slicer_app, tmp_path):
    folder = str(tmp_path / "s")
    AnnotationSession.create(folder, _protocol())
    script = tmp_path / "annotate.py"
    script.write_text(KILL_SCRIPT.format(root=str(ROOT / "CrossModalReg")))
    proc = subprocess.Popen([sys.executable, str(script), folder], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        placed = []
        while len(placed) < 3:
            line = proc.stdout.readline()
            assert line, "annotation subprocess ended early"
            if line.startswith("placed"):
                placed.append(line.split()[1])
                if len(placed) < 3:
                    proc.stdin.write("\n")
                    proc.stdin.flush()
        proc.send_signal(signal.SIGKILL)  # no clean-up, no atexit: as a crash
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert placed == ["L1", "L2", "L3"]
    session, nodes = ml.load_session_into_scene(slicer_app.scene, folder)
    pts = session.points(annotator="carol", image="moving")
    assert [p.label for p in pts] == placed
    for i, p in enumerate(pts):
        np.testing.assert_allclose(p.position, [10.0 * i, 1.0, 2.0 * i])
    assert ml.next_unplaced_label(nodes[("carol", "moving", 1)]) == "L4"
    assert not list(pathlib.Path(folder).rglob("*.partial"))


def test_bad_input_names_what_to_fix_and_touches_nothing_saved(scene, tmp_path):
    folder = str(tmp_path / "s")
    session = AnnotationSession.create(folder, _protocol())
    session.import_points("alice", "fixed", ["L1", "L2", "L3", "L4"], np.arange(12.0).reshape(4, 3))
    digest = folder_digest(folder)
    with pytest.raises(CrossModalRegError, match="unknown landmark label 'X9'.*add the label to the protocol"):
        session.set_point("alice", "fixed", "X9", [0, 0, 0])
    with pytest.raises(CrossModalRegError, match="duplicate landmark label 'L2'"):
        session.import_points("alice", "fixed", ["L2", "L2"], np.zeros((2, 3)))
    with pytest.raises(CrossModalRegError, match="landmark 'L1'.*2 coordinates given but the protocol is 3D"):
        session.import_points("bob", "fixed", ["L1"], [[1.0, 2.0]])
    with pytest.raises(CrossModalRegError, match="annotator name is empty"):
        session.set_point("  ", "fixed", "L1", [0, 0, 0])
    with pytest.raises(CrossModalRegError, match="already holds an annotation session"):
        AnnotationSession.create(folder, _protocol())
    # files: missing columns, unstated frame, unknown label
    (tmp_path / "nocol.csv").write_text("label,x_lps,y_lps\nL1,1,2\n")
    with pytest.raises(CrossModalRegError, match=r"nocol.csv: missing column\(s\) \['z_lps'\]"):
        read_landmark_file(str(tmp_path / "nocol.csv"))
    (tmp_path / "noframe.csv").write_text("label,x,y,z\nL1,1,2,3\n")
    with pytest.raises(CrossModalRegError, match="does not state its frame.*x_lps"):
        read_landmark_file(str(tmp_path / "noframe.csv"))
    (tmp_path / "bad.fcsv").write_text("# CoordinateSystem = IJK\n# columns = id,x,y,z,label\na,1,2,3,L1\n")
    with pytest.raises(CrossModalRegError, match="bad.fcsv: coordinate system 'IJK' is not LPS or RAS"):
        read_fcsv(str(tmp_path / "bad.fcsv"))
    write_landmarks_csv(str(tmp_path / "unknown.csv"), ["L1", "Q"], np.zeros((2, 3)))
    f = read_landmark_file(str(tmp_path / "unknown.csv"))
    with pytest.raises(CrossModalRegError, match="unknown landmark label 'Q' in .*unknown.csv"):
        session.import_points("bob", "fixed", f.labels, f.points, source=f.source)
    with pytest.raises(CrossModalRegError, match="2D pixel landmarks but 3D"):
        (tmp_path / "anhir.csv").write_text(",X,Y\n1,5,6\n")
        read_landmark_file(str(tmp_path / "anhir.csv"), dimension=3)
    assert folder_digest(folder) == digest
    assert AnnotationSession.open(folder).annotators() == ["alice"]


def test_mrk_json_written_by_slicers_storage_node_round_trips_points_and_metadata(scene, tmp_path):
    session = AnnotationSession.create(str(tmp_path / "s"), _protocol(4))
    node = ml.create_annotation_node(scene, session, "alice", "fixed")
    ml.SessionRecorder(session, node)
    _place(node, 0, [1.0, 2.0, 3.0])
    _place(node, 2, [-4.0, 5.5, 6.0])
    path = str(tmp_path / "alice.mrk.json")
    ml.export_markups_json(node, path, session=session)
    data = json.loads(pathlib.Path(path).read_text())
    assert data["markups"][0]["coordinateSystem"] == "LPS"
    pure = read_mrk_json(path)  # the command line's reader, no Slicer
    assert pure.labels == ["L1", "L3"]
    np.testing.assert_allclose(pure.points, [[1.0, 2.0, 3.0], [-4.0, 5.5, 6.0]])
    assert pure.metadata[1]["annotator"] == "alice" and pure.metadata[1]["image"] == "fixed"
    assert pure.metadata[1]["placed"] == session.get_point("alice", "fixed", "L3").placed
    back = ml.import_markups_json(scene, path)
    assert back.GetAttribute(ml.ANNOTATOR_ATTRIBUTE) == "alice"
    assert back.GetNumberOfControlPoints() == 4 and back.GetNthControlPointPositionStatus(1) != back.PositionDefined
    # .fcsv in RAS reads back as LPS
    write_fcsv(str(tmp_path / "a.fcsv"), pure.labels, pure.points, coordinate_system="RAS")
    np.testing.assert_allclose(read_fcsv(str(tmp_path / "a.fcsv")).points, pure.points)
    write_landmarks_csv(str(tmp_path / "a.csv"), pure.labels, pure.points, frame="RAS")
    assert (tmp_path / "a.csv").read_text().startswith("label,x_ras,y_ras,z_ras")
    np.testing.assert_allclose(read_landmark_file(str(tmp_path / "a.csv")).points, pure.points)


def test_blinded_mode_shows_only_the_current_annotators_points(scene, tmp_path):
    session = AnnotationSession.create(str(tmp_path / "s"), _protocol(3))
    nodes = [ml.create_annotation_node(scene, session, a, "fixed") for a in ("alice", "bob", "carol")]
    ml.set_blinded(nodes, "bob", True)
    assert [n.GetDisplayNode().GetVisibility() for n in nodes] == [0, 1, 0]
    ml.set_blinded(nodes, "bob", False)
    assert [n.GetDisplayNode().GetVisibility() for n in nodes] == [1, 1, 1]


def _simulated_session(folder, seed=5, with_repeat=True):
    rng = np.random.default_rng(seed)
    prot = LandmarkProtocol("sim", [LandmarkDefinition(f"L{i + 1:02d}") for i in range(20)])
    session = AnnotationSession.create(folder, prot)
    truth = {im: rng.uniform(-50, 50, size=(20, 3)) for im in ("fixed", "moving")}
    for a in range(5):
        for im in ("fixed", "moving"):
            pts = truth[im] + rng.normal(0, 1.0, size=(20, 3))
            if a == 2 and im == "moving":
                pts = pts + [0.0, 2.5, 0.0]
            session.import_points(f"A{a + 1}", im, prot.labels, pts)
    if with_repeat:
        session.import_points("A1", "fixed", prot.labels, truth["fixed"] + rng.normal(0, 1.0, size=(20, 3)),
                              repeat=2)
    return session, truth


def test_session_statistics_give_consensus_nodes_and_tables_with_units(scene, tmp_path):
    session, truth = _simulated_session(str(tmp_path / "s"))
    stats = session_statistics(session)
    assert stats.per_image["moving"].biased_annotators == ["A3"]
    assert stats.per_image["fixed"].biased_annotators == []
    nodes = ml.consensus_nodes(scene, stats)
    labels, pts = ml.mrml.points_from_markups_node(nodes["fixed"])
    assert labels == session.protocol.labels
    assert np.max(np.linalg.norm(pts - truth["fixed"], axis=1)) < 2.0
    tables = ml.statistics_tables(scene, stats)
    assert set(tables) == {"landmarks", "annotators", "summary", "repeatability"}
    t = tables["landmarks"]
    assert t.GetNumberOfRows() == 40
    assert t.GetColumnUnitLabel("fle_estimate") == "mm" and "sqrt(n/(n-1))" in t.GetColumnDescription("fle_estimate")
    rep = stats.repeatability["fixed"]
    assert rep.annotators == ["A1"] and rep.intra_fle[0] == pytest.approx(np.sqrt(3), rel=0.3)


def test_expected_tre_volume_is_on_the_reference_grid(slicer_app):
    import SimpleITK as sitk

    from CrossModalRegLib import mrml

    img = sitk.Image([20, 16, 8], sitk.sitkFloat32)
    img.SetSpacing((2.0, 2.0, 4.0))
    img.SetOrigin((-20.0, -16.0, -16.0))
    ref = mrml.volume_node_from_image(slicer_app.scene, img, "ref")
    fids = np.array([[-10.0, -8, -4], [10, -8, 4], [0, 8, 0], [5, 5, -8], [-5, 0, 8]])
    vol = ml.expected_tre_volume(slicer_app.scene, fids, ref, 1.0)
    import slicer

    arr = slicer.util.arrayFromVolume(vol)
    assert arr.shape == (8, 16, 20)
    assert arr.min() >= 1.0 / np.sqrt(5) - 1e-6  # never below FLE / sqrt(N) (value at the centroid)
    assert arr[0, 0, 0] > arr.min() * 1.5


def test_cli_stats_writes_the_tables_and_a_summary_with_provenance(tmp_path, capsys):
    session, _ = _simulated_session(str(tmp_path / "s"), seed=6)
    out = tmp_path / "out"
    assert cli_main(["landmarks", "stats", session.folder, "--output-dir", str(out)]) == 0
    for name in ("landmarks", "annotators", "summary", "repeatability"):
        assert (out / f"{name}.tsv").is_file() and (out / f"{name}.schema.tsv").is_file()
    summary = json.loads((out / "landmark_statistics.json").read_text())
    assert summary["images"]["moving"]["biased_annotators"] == ["A3"]
    assert summary["images"]["fixed"]["fle"] == pytest.approx(np.sqrt(3), rel=0.15)
    assert "sha256" in summary["provenance"]["inputs"]["session.json"]
    header = (out / "landmarks.tsv").read_text().splitlines()[0].split("\t")
    assert header[:3] == ["image", "label", "n_annotators"]


def test_cli_reports_bad_input_and_writes_nothing(tmp_path, capsys):
    AnnotationSession.create(str(tmp_path / "s"), _protocol())
    out = tmp_path / "out"
    assert cli_main(["landmarks", "stats", str(tmp_path / "s"), "--output-dir", str(out)]) == 2
    assert "fewer than two annotators" in capsys.readouterr().err
    assert not out.exists()


def test_dragging_saves_once_on_release_and_a_rejected_rename_is_reported(scene, tmp_path):
    session = AnnotationSession.create(str(tmp_path / "s"), _protocol(3))
    node = ml.create_annotation_node(scene, session, "alice", "fixed")
    rec = ml.SessionRecorder(session, node)
    _place(node, 0, [1.0, 1.0, 1.0])
    node.InvokeEvent(node.PointStartInteractionEvent)
    for x in np.linspace(1.0, 5.0, 20):
        _place(node, 0, [x, 1.0, 1.0])
    assert AnnotationSession.open(session.folder).get_point("alice", "fixed", "L1").position[0] == 1.0
    node.InvokeEvent(node.PointEndInteractionEvent)
    assert AnnotationSession.open(session.folder).get_point("alice", "fixed", "L1").position[0] == 5.0
    digest = folder_digest(session.folder)
    node.SetNthControlPointLabel(1, "not-in-protocol")
    _place(node, 1, [2.0, 2.0, 2.0])
    assert isinstance(rec.last_error, CrossModalRegError) and "not-in-protocol" in str(rec.last_error)
    assert folder_digest(session.folder) == digest
    _place(node, 2, [3.0, 3.0, 3.0])  # later points are still saved
    assert AnnotationSession.open(session.folder).get_point("alice", "fixed", "L3") is not None
