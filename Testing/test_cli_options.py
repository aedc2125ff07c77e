"""`crossmodalreg register` options that no test ran before (issue 10): `--overwrite` on a successful run, `--seed`,
`--threads` and `--no-rotation-search`, each checked by what it changes in the result, on tiny generated images.

Covered elsewhere, so not repeated here: exit code 3 with nothing written (test_reliability.py
``test_an_optimiser_that_moves_the_images_apart_is_exit_3_in_the_users_words``, test_failure_checks.py),
``--initial-transform`` (test_failure_checks.py ``test_brainweb_good_run_passes_and_landmark_evaluation_fails_a_made
_worse_run``: a 25 mm start is where the run ends), batch ``--itk-threads`` (test_reliability.py
``test_batch_itk_threads_is_what_itk_runs_the_optimiser_with``, test_batch_cohort.py) and batch ``--scheduler``
(test_batch_cohort.py ``test_command_line_runs_on_the_real_cluster``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from CrossModalRegLib import cli

FAST = ["--no-progress", "--no-orientation-search", "--set", "stages.0.optimizer.iterations=15",
        "--set", "stages.0.sampling.samples_per_level=[2000,2000,2000]"]


def _blob(shift=(0.0, 0.0, 0.0), invert=False, size=24):
    grid = np.indices((size,) * 3).astype(float)
    c = (size - 1) / 2
    r2 = sum((g - c - s) ** 2 for g, s in zip(grid, shift[::-1]))
    arr = np.exp(-r2 / 30.0) + 0.5 * (np.abs(grid[0] - c - shift[-1]) < 4) + 0.3 * (grid[2] > c + shift[0])
    img = sitk.GetImageFromArray((100 * (1.0 - arr if invert else arr)).astype(np.float32))
    img.SetSpacing((2.0, 2.0, 2.0))
    return img


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    sitk.WriteImage(_blob(), str(d / "f.nii.gz"))
    sitk.WriteImage(_blob((2, 1, 0), invert=True), str(d / "m.nii.gz"))
    return d


def _register(images, out, *extra, search=False):
    argv = ["register", "--fixed", str(images / "f.nii.gz"), "--moving", str(images / "m.nii.gz"), *FAST,
            *([] if search else ["--no-rotation-search"]), "--output-dir", str(out), *extra]
    assert cli.main(argv) == 0
    return json.loads((out / "registration.json").read_text())


def _parameters(out):
    tx = sitk.ReadTransform(str(out / "transform.h5"))
    while isinstance(tx, sitk.CompositeTransform) or tx.GetName() == "CompositeTransform":
        tx = sitk.CompositeTransform(tx).GetNthTransform(0)
    return np.array(tx.GetParameters())


def test_overwrite_replaces_a_finished_output_with_the_new_run(images, tmp_path):
    out = tmp_path / "out"
    _register(images, out, "--seed", "1")
    (out / "my_notes.txt").write_text("from the first run")
    prov = _register(images, out, "--seed", "2", "--overwrite")
    assert prov["seed"] == 2 and not (out / "my_notes.txt").exists()  # the whole folder is the new run's
    assert (out / "transform.h5").is_file() and not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_seed_repeats_a_run_bit_for_bit_and_another_seed_samples_other_voxels(images, tmp_path):
    a = _parameters_of(images, tmp_path / "a", "7")
    b = _parameters_of(images, tmp_path / "b", "7")
    c = _parameters_of(images, tmp_path / "c", "8")
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-6  # 2000 random samples per level: another seed, another sample set


def _parameters_of(images, out, seed):
    prov = _register(images, out, "--seed", seed)
    assert prov["seed"] == int(seed)
    return _parameters(out)


@pytest.mark.parametrize("threads, expected", [(None, 1), ("2", 2)])
def test_threads_is_what_itk_runs_every_optimisation_with(images, tmp_path, itk_threads_seen, threads, expected):
    """Seen from inside ITK's optimiser at the moment it runs, and recorded; the default is one thread."""
    seen = itk_threads_seen
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    prov = _register(images, tmp_path / "out", *(["--threads", threads] if threads else []))
    assert len(seen) >= 3 and set(seen) == {expected}, seen
    assert prov["threads"] == expected and prov["deterministic"] is (expected == 1)
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before  # the process is left as it was


def test_no_rotation_search_skips_the_search_the_preset_asks_for(images, tmp_path):
    searched = _register(images, tmp_path / "searched", search=True)["initialization"]
    assert searched["rotation_search"]["candidates"], searched["rotation_search"]  # the preset's search ran
    plain = _register(images, tmp_path / "plain")["initialization"]
    assert "rotation_search" not in plain and plain["method"] == searched["method"]
