"""Failures caught without landmarks (the independent NGF check) and with evaluation landmarks (exit 3 when a run
left them further apart), on real pairs: RESECT Case24 MR-US, EPI-T1 against FLIRT, BrainWeb."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk
from _real_pairs import mean_distance, resect_case24

from CrossModalRegLib import cli, engine, sanity
from CrossModalRegLib.geometry import fsl_flirt_matrix_to_world_lps, linear_transform_matrix_lps
from CrossModalRegLib.initialization import landmark_rigid_transform
from CrossModalRegLib.landmarks.fileio import write_landmarks_csv


def _write_case24_landmarks(shared_data, tmp_path):
    us, mr, p_us, p_mr = resect_case24(shared_data)
    labels = [f"L{i + 1}" for i in range(len(p_us))]
    fixed = write_landmarks_csv(str(tmp_path / "us.csv"), labels, p_us)
    moving = write_landmarks_csv(str(tmp_path / "mr.csv"), labels, p_mr)
    return fixed, moving


def test_case24_mr_us_with_multimodal_rigid_is_flagged_and_exits_3(shared_data, tmp_path, capsys):
    """Today's multimodal-rigid moves Case24 from 1.1 mm to about 27 mm mean landmark error: the run must fail
    (exit 3, nothing written) on the independent check alone, without any landmarks."""
    d = shared_data / "resect_mr_us"
    out = tmp_path / "out"
    code = cli.main(["register", "--fixed", str(d / "Case24_us.nii.gz"), "--moving", str(d / "Case24_mr.nii.gz"),
                     "--preset", "multimodal-rigid", "--output-dir", str(out), "--no-progress", "--threads", "2"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "independent edge-alignment measure (NGF)" in err
    assert not out.exists()


def test_case24_good_alignments_pass_and_a_25mm_move_does_not(shared_data):
    """The check itself, on the real MR-US appearance: the landmark fit (0.83 mm) and the headers (1.10 mm) keep
    their NGF; the aligned pair moved 25 mm loses most of it."""
    us, mr, p_us, p_mr = resect_case24(shared_data)
    fit = landmark_rigid_transform(p_us, p_mr, 3)
    ident = sitk.Transform(3, sitk.sitkIdentity)
    assert mean_distance(fit, p_us, p_mr) < 0.9
    assert sanity.check_independent_agreement(us, mr, fit, {"headers": ident}).passed
    moved = sitk.CompositeTransform([fit, sitk.TranslationTransform(3, (25.0, 0.0, 0.0))])
    check = sanity.check_independent_agreement(us, mr, moved, {"headers": ident, "initialisation": fit})
    assert not check.passed and check.value < 0.5


def test_epi_t1_good_run_passes_every_check_and_flirt_moved_25mm_is_flagged(shared_data):
    epi = sitk.ReadImage(str(shared_data / "epi_t1" / "example_func.nii.gz"), sitk.sitkFloat32)
    t1 = sitk.ReadImage(str(shared_data / "epi_t1" / "highres.nii.gz"), sitk.sitkFloat32)
    w = fsl_flirt_matrix_to_world_lps(np.loadtxt(str(shared_data / "epi_t1" / "highres2example_func.mat")), t1, epi)
    flirt = sitk.AffineTransform(3)  # fixed (EPI) -> moving (T1): the inverse of FLIRT's T1 -> EPI
    inv = np.linalg.inv(w)
    flirt.SetMatrix(tuple(inv[:3, :3].ravel()))
    flirt.SetTranslation(tuple(inv[:3, 3]))
    result = engine.register(epi, t1, preset="mr-epi-t1-rigid", threads=2)
    assert result.sanity.passed, result.sanity.failures()
    check = next(c for c in result.sanity.checks if c.name == "independent_agreement")
    assert check.value > 0.9
    diff = linear_transform_matrix_lps(result.transform_fixed_to_moving_lps, 3) - np.vstack([inv[:3], [0, 0, 0, 1]])
    assert np.abs(diff[:3, 3]).max() < 5.0  # the run is a good one (near FLIRT), so passing it is right
    moved = sitk.CompositeTransform([flirt, sitk.TranslationTransform(3, (0.0, 25.0, 0.0))])
    assert not sanity.check_independent_agreement(epi, t1, moved, {"headers": sitk.Transform(3, sitk.sitkIdentity),
                                                                   "initialisation": flirt}).passed


def test_brainweb_good_run_passes_and_landmark_evaluation_fails_a_made_worse_run(shared_data, tmp_path, capsys):
    """BrainWeb T1/PD (aligned: the truth is identity). A run forced to a wrong answer (started 25 mm off with no
    real step and no search, the independent check switched off so that only the landmarks judge) must exit 3,
    print before/after, and write nothing; with --keep-failed it writes the outputs marked failed."""
    d = shared_data / "brainweb2d"
    fixed = sitk.ReadImage(str(d / "BrainT1Slice.mha"))
    rng = np.random.RandomState(0)
    pts = np.column_stack([rng.uniform(60, 160, 8), rng.uniform(60, 190, 8), np.zeros(8)])
    labels = [f"P{i}" for i in range(8)]
    lm = write_landmarks_csv(str(tmp_path / "p.csv"), labels, pts)
    base = ["register", "--fixed", str(d / "BrainT1Slice.mha"), "--moving", str(d / "BrainProtonDensitySlice.mha"),
            "--fixed-landmarks", lm, "--moving-landmarks", lm, "--landmarks-for", "evaluation", "--no-progress"]
    good = tmp_path / "good"
    assert cli.main(base + ["--output-dir", str(good)]) == 0
    text = capsys.readouterr().out
    assert "landmarks (evaluation, 8 pairs): mean distance 0.00 mm before" in text
    prov = json.loads((good / "registration.json").read_text())
    assert prov["sanity"]["passed"] and prov["landmarks"]["mean_after_mm"] < 0.5
    assert {c["name"] for c in prov["sanity"]["checks"]} >= {"independent_agreement", "landmarks_not_worse"}

    shift = tmp_path / "shift.tfm"
    sitk.WriteTransform(sitk.TranslationTransform(2, (25.0, 0.0)), str(shift))
    # one step of a size below the optimiser's minimum step: it stops where it starts (0 iterations is refused)
    worse = base + ["--initial-transform", str(shift), "--set", "stages.0.optimizer.iterations=1",
                    "--set", "stages.0.optimizer.learning_rate=1e-9", "--set", "checks.independent_agreement=false"]
    bad = tmp_path / "bad"
    assert cli.main(worse + ["--output-dir", str(bad)]) == 3
    err = capsys.readouterr().err
    assert "0.00 mm before" in err and "25.00 mm after" in err and "tolerance 0.50 mm" in err
    assert not bad.exists()
    kept = tmp_path / "kept"
    assert cli.main(worse + ["--output-dir", str(kept), "--keep-failed"]) == 3
    assert "WORSE" in capsys.readouterr().out
    prov = json.loads((kept / "registration.json").read_text())
    assert not prov["sanity"]["passed"]
    assert fixed.GetDimension() == 2
