"""``crossmodalreg validate``: TSV tables and a JSON summary; bad input gives one line, exit 2, nothing written."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from CrossModalRegLib.cli import main

SHIFT = (2.0, -1.0, 3.0)  # fixed -> moving, LPS mm


@pytest.fixture
def files(tmp_path):
    arr = np.zeros((30, 32, 34), dtype=np.uint8)
    arr[5:15, 8:20, 6:18] = 1
    arr[16:26, 10:28, 14:30] = 2
    fixed_labels = sitk.GetImageFromArray(arr)
    tx = sitk.TranslationTransform(3, SHIFT)
    moving_labels = sitk.Resample(fixed_labels, fixed_labels, tx.GetInverse(), sitk.sitkNearestNeighbor, 0)
    paths = {k: str(tmp_path / f"{k}.nii.gz") for k in ("fixed", "moving", "fixed_labels", "moving_labels")}
    sitk.WriteImage(sitk.Cast(fixed_labels, sitk.sitkFloat32) * 50 + 5, paths["fixed"])
    sitk.WriteImage(sitk.Cast(moving_labels, sitk.sitkFloat32) * 50 + 5, paths["moving"])
    sitk.WriteImage(fixed_labels, paths["fixed_labels"])
    sitk.WriteImage(moving_labels, paths["moving_labels"])
    paths["transform"] = str(tmp_path / "T.h5")
    sitk.WriteTransform(tx, paths["transform"])
    pts = np.array([[5.0, 6.0, 7.0], [20.0, 10.0, 15.0], [12.0, 25.0, 5.0]])
    with open(tmp_path / "fixed.csv", "w") as f:
        f.write("# frame: LPS\nlabel,x,y,z\n" + "".join(f"P{i},{p[0]},{p[1]},{p[2]}\n" for i, p in enumerate(pts)))
    ras = (pts + np.array(SHIFT)) * np.array([-1, -1, 1])
    with open(tmp_path / "moving.csv", "w") as f:
        f.write("# frame: RAS\n" + "".join(f"P{i},{p[0]},{p[1]},{p[2]}\n" for i, p in enumerate(ras)))
    paths["fixed_landmarks"] = str(tmp_path / "fixed.csv")
    paths["moving_landmarks"] = str(tmp_path / "moving.csv")
    return paths


def _args(files, out, **extra):
    args = ["validate", "--fixed", files["fixed"], "--moving", files["moving"], "--transform", files["transform"],
            "--output-dir", str(out)]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v]
    return args


def _read_tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_cli_writes_tables_and_summary(files, tmp_path):
    out = tmp_path / "out"
    code = main(_args(files, out, fixed_landmarks=files["fixed_landmarks"], moving_landmarks=files["moving_landmarks"],
                      fixed_labels=files["fixed_labels"], moving_labels=files["moving_labels"], profile="neuro"))
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "landmarks.schema.tsv", "landmarks.tsv", "segments.schema.tsv", "segments.tsv", "summary.json",
        "summary.schema.tsv", "summary.tsv"]
    lm = _read_tsv(out / "landmarks.tsv")
    assert len(lm) == 3 and max(float(r["tre_after_mm"]) for r in lm) < 1e-9  # CSV frames LPS and RAS both honoured
    seg = _read_tsv(out / "segments.tsv")
    assert [float(r["dice_after"]) for r in seg] == [1.0, 1.0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "pass"
    assert summary["profile"]["name"] == "neuro" and len(summary["profile"]["sha256"]) == 64
    assert len(summary["provenance"]["inputs_sha256"]["transform_file"]) == 64
    assert len(summary["provenance"]["inputs_sha256"]["transform"]) == 64
    schema = _read_tsv(out / "landmarks.schema.tsv")
    assert {r["columnName"]: r["unitLabel"] for r in schema}["tre_after_mm"] == "mm"


def test_cli_reads_slicer_markups_json(files, tmp_path, slicer_app):
    pts = np.array([[5.0, 6.0, 7.0], [20.0, 10.0, 15.0]])
    for role, p in (("fixed", pts), ("moving", pts + np.array(SHIFT))):
        node = slicer_app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", role)
        for i, q in enumerate(p):
            node.AddControlPoint(-q[0], -q[1], q[2], f"P{i}")  # RAS in memory
        storage = slicer.vtkMRMLMarkupsJsonStorageNode()
        storage.SetFileName(str(tmp_path / f"{role}.mrk.json"))
        assert storage.WriteData(node)
    out = tmp_path / "out"
    assert main(_args(files, out, fixed_landmarks=str(tmp_path / "fixed.mrk.json"),
                      moving_landmarks=str(tmp_path / "moving.mrk.json"))) == 0
    assert max(float(r["tre_after_mm"]) for r in _read_tsv(out / "landmarks.tsv")) < 1e-6


def test_two_runs_give_identical_tables(files, tmp_path):
    for out in ("a", "b"):
        assert main(_args(files, tmp_path / out, fixed_labels=files["fixed_labels"],
                          moving_labels=files["moving_labels"])) == 0
    for name in ("segments.tsv", "summary.tsv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize("case, message", [
    ("no_frame", "does not state its frame"),
    ("missing_file", "does not exist"),
    ("bspline_inverse", "has no inverse"),
    ("bad_profile", "acceptance profile 'nope' not found"),
    ("labels_mismatch", "landmark labels do not match"),
])
def test_bad_input_gives_one_line_and_writes_nothing(files, tmp_path, capsys, case, message):
    out = tmp_path / "out"
    extra = {}
    if case == "no_frame":
        no_frame = tmp_path / "noframe.csv"
        no_frame.write_text("P0,1,2,3\n")
        extra = dict(fixed_landmarks=str(no_frame), moving_landmarks=files["moving_landmarks"])
    elif case == "missing_file":
        files = dict(files, fixed=str(tmp_path / "absent.nii.gz"))
    elif case == "bspline_inverse":
        bspline = sitk.BSplineTransformInitializer(sitk.ReadImage(files["fixed"]), (3, 3, 3))
        files = dict(files, transform=str(tmp_path / "bspline.h5"))
        sitk.WriteTransform(bspline, files["transform"])
        extra = dict(direction="moving-to-fixed")
    elif case == "bad_profile":
        extra = dict(profile="nope")
    elif case == "labels_mismatch":
        other = tmp_path / "other.csv"
        other.write_text("# frame: LPS\nQ0,1,2,3\nP1,1,2,3\nP2,4,5,6\n")
        extra = dict(fixed_landmarks=files["fixed_landmarks"], moving_landmarks=str(other))
    code = main(_args(files, out, **extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("crossmodalreg: error:") and message in err[0]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".validate-")]


def test_a_non_empty_output_directory_is_refused(files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(_args(files, out)) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_a_2d_deformable_transform_gets_its_jacobian_map(tmp_path):
    """2D images with a 2D B-spline (fixed -> moving): the map is 2D on the fixed grid and the summary is its
    statistics (it used to stop with "the Jacobian map needs a 3D grid", exit 2)."""
    from CrossModalRegLib.validation import jacobian_determinant_image

    image = sitk.GaussianSource(sitk.sitkFloat32, [48, 40], [10.0, 8.0], [24.0, 20.0], 100.0)
    bspline = sitk.BSplineTransformInitializer(image, [4, 4], 3)
    bspline.SetParameters(tuple(np.random.default_rng(0).normal(scale=1.0, size=bspline.GetNumberOfParameters())))
    paths = {k: str(tmp_path / f"{k}.nii.gz") for k in ("fixed", "moving")}
    for p in paths.values():
        sitk.WriteImage(image, p)
    sitk.WriteTransform(bspline, str(tmp_path / "T.h5"))
    out = tmp_path / "out"
    assert main(["validate", "--fixed", paths["fixed"], "--moving", paths["moving"], "--transform",
                 str(tmp_path / "T.h5"), "--write-jacobian", "--output-dir", str(out)]) == 0
    written = sitk.ReadImage(str(out / "jacobian.nii.gz"))
    assert written.GetDimension() == 2 and written.GetSize() == image.GetSize()
    expected = sitk.GetArrayFromImage(jacobian_determinant_image(bspline, image))
    assert expected.max() - expected.min() > 0.1  # a real deformation
    values = json.load(open(out / "summary.json"))["values"]
    assert values["jacobian_min"] == pytest.approx(float(expected.min()), abs=1e-6)
    assert values["jacobian_max"] == pytest.approx(float(expected.max()), abs=1e-6)
