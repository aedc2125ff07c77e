"""The headless command line: ``crossmodalreg register`` and ``crossmodalreg demo`` (the README's main job)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from _cases import foreground, grid_points, tre

from CrossModalRegLib import cli, scene_io
from CrossModalRegLib.headless import HeadlessSlicer


def test_register_writes_every_output_and_the_transform_goes_fixed_to_moving(tmp_path, shared_data):
    d = shared_data / "brainweb2d"
    out = tmp_path / "out"
    code = cli.main(["register", "--fixed", str(d / "BrainT1SliceBorder20.mha"),
                     "--moving", str(d / "BrainProtonDensitySliceShifted13x17y.mha"),
                     "--output-dir", str(out), "--no-progress"])
    assert code == 0
    for name in ("transform.h5", "moving_resampled.nii.gz", "overlay_before.png", "overlay_after.png",
                 "checkerboard_after.png", "overlay_before_after.png", "report.html", "registration.json", "metric_trace.tsv", "metric_trace.schema.tsv",
                 "scene/registration.mrml"):
        assert (out / name).is_file(), name
    fixed = sitk.ReadImage(str(d / "BrainT1SliceBorder20.mha"))
    tx = sitk.ReadTransform(str(out / "transform.h5"))  # ITK convention: fixed point -> moving point (LPS)
    assert tre(tx, sitk.TranslationTransform(2, (13.0, 17.0)), grid_points(fixed, 6, foreground(fixed))).mean() < 0.5
    prov = json.loads((out / "registration.json").read_text())
    assert prov["command_inputs"]["fixed"]["sha256"] and prov["seed"] and prov["preset_sha256"]
    assert prov["sanity"]["passed"] and prov["metric_trace"]
    assert prov["transform_direction"].startswith("fixed -> moving")


def test_scene_file_opens_with_the_moving_volume_under_the_transform(tmp_path, shared_data):
    d = shared_data / "brainweb2d"
    out = tmp_path / "out"
    assert cli.main(["register", "--fixed", str(d / "BrainT1SliceBorder20.mha"),
                     "--moving", str(d / "BrainProtonDensitySliceR10X13Y17.mha"),
                     "--output-dir", str(out), "--no-progress"]) == 0
    with HeadlessSlicer() as app:
        scene_io.load_scene(app.scene, str(out / "scene" / "registration.mrml"))
        moving = app.scene.GetFirstNodeByName("BrainProtonDensitySliceR10X13Y17")  # named after the files
        fixed = app.scene.GetFirstNodeByName("BrainT1SliceBorder20")
        assert moving is not None and fixed is not None and moving.GetImageData() is not None
        parent = moving.GetParentTransformNode()
        assert parent is not None
        # The loaded transform maps fixed RAS to moving RAS like transform.h5 maps fixed LPS to moving LPS.
        tx = sitk.ReadTransform(str(out / "transform.h5"))
        p = np.array([120.0, 140.0])
        q = np.array(tx.TransformPoint(tuple(p)))
        got = parent.GetTransformFromParent().TransformPoint((-p[0], -p[1], 0.0))
        np.testing.assert_allclose([-got[0], -got[1]], q, atol=1e-6)


def test_register_with_anhir_landmarks_reports_distances_before_and_after(tmp_path, shared_data):
    d = shared_data / "histology"
    out = tmp_path / "histo"
    code = cli.main(["register", "--fixed", str(d / "Rat-Kidney_HE.jpg"), "--moving", str(d / "Rat-Kidney_PanCytokeratin.jpg"),
                     "--preset", "histology-stain-affine-bspline", "--fixed-landmarks", str(d / "Rat-Kidney_HE.csv"),
                     "--moving-landmarks", str(d / "Rat-Kidney_PanCytokeratin.csv"), "--landmarks-for", "evaluation",
                     "--skip-unpaired-landmarks", "--output-dir", str(out), "--no-progress"])
    assert code == 0
    lm = json.loads((out / "registration.json").read_text())["landmarks"]
    assert len(lm["labels"]) == 69 and not lm["used_for_initialization"]
    # measured (one thread, deterministic): 9.99 mm -> 2.27 mm mean (0.228 of the start)
    assert lm["mean_after_mm"] < 0.3 * lm["mean_before_mm"] and lm["mean_after_mm"] < 2.8, lm


@pytest.mark.parametrize("args,message", [
    (["--fixed", "nope.nii.gz", "--moving", "nope.nii.gz"], "fixed image 'nope.nii.gz' does not exist"),
    (["--preset", "unknown-preset"], "unknown preset"),
    (["--fixed-landmarks", "x.csv"], "give both --fixed-landmarks and --moving-landmarks"),
])
def test_bad_input_gives_one_line_error_non_zero_exit_and_writes_nothing(tmp_path, shared_data, capsys, args, message):
    d = shared_data / "brainweb2d"
    base = {"--fixed": str(d / "BrainT1Slice.mha"), "--moving": str(d / "BrainProtonDensitySlice.mha")}
    argv = ["register"]
    for k, v in base.items():
        if k not in args:
            argv += [k, v]
    out = tmp_path / "out"
    code = cli.main(argv + args + ["--output-dir", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0]
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]


def test_existing_output_folder_is_not_overwritten_without_asking(tmp_path, shared_data, capsys):
    d = shared_data / "brainweb2d"
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code = cli.main(["register", "--fixed", str(d / "BrainT1Slice.mha"), "--moving", str(d / "BrainProtonDensitySlice.mha"),
                     "--output-dir", str(out), "--no-progress"])
    assert code == 2 and "not empty" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me"


def test_demo_runs_on_built_in_data_and_reports_tre_under_one_millimetre(tmp_path):
    """The README's main job, as a user runs it: a subprocess, no data folder, no download."""
    out = tmp_path / "demo"
    env = dict(os.environ, CROSSMODALREG_SHARED_DATA="/nonexistent")
    proc = subprocess.run([sys.executable, "-m", "CrossModalRegLib.cli", "demo", "--output-dir", str(out), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=600,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "demo_summary.json").read_text())
    assert {c["case"] for c in summary["cases"]} == {"ct_to_mr", "pet_to_mr", "t2_to_mr"}
    for case in summary["cases"]:
        assert case["misalignment_deg"] > 10.0
        assert case["tre_brain_mean_mm"] < 1.0, case
    assert "TRE" in proc.stdout and (out / "ct_to_mr" / "transform.h5").is_file()
    for case in ("ct_to_mr", "pet_to_mr", "t2_to_mr"):
        page = (out / case / "report.html").read_text()
        assert "crossmodalreg demo --output-dir" in page and "landmarks: mean" in page  # repeatable, judged
    for line in (out / "demo_tre.tsv").read_text().splitlines()[1:]:  # 4 significant digits, not 17
        numbers = line.split("\t")[2:10]
        assert all(len(v.lstrip("-").replace(".", "").lstrip("0")) <= 4 for v in numbers), line


def test_a_truncated_compressed_image_is_refused_not_registered(tmp_path, shared_data, capsys):
    """ITK silently fills a truncated .nii.gz with zeros; the command must refuse it."""
    data = (shared_data / "kmeans_t1" / "KmeansTest_T1UCharRaw.nii.gz").read_bytes()
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    code = cli.main(["register", "--fixed", str(shared_data / "kmeans_t1" / "KmeansTest_T1UCharRaw.nii.gz"),
                     "--moving", str(broken), "--output-dir", str(out), "--no-progress"])
    assert code == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    assert not out.exists()
