"""Reliability under hostile input, signals and concurrency (issue #12): every case generated here, tiny and fast.

Each case gives one line ``crossmodalreg: ...`` and exit 2 (bad input), 3 (failed registration) or 130/143
(signal); nothing half-written is left and no input or existing output is changed.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import SimpleITK as sitk
from _cases import folder_digest

from CrossModalRegLib import cli
from CrossModalRegLib.output_dir import OutputFolder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "CrossModalReg"))
CHEAP = ["--no-progress", "--no-rotation-search", "--no-orientation-search", "--set",
         "stages.0.optimizer.iterations=15", "--set", "stages.0.sampling.samples_per_level=[2000,2000,2000]"]


def blob(shift=(0.0, 0.0, 0.0), invert=False, size=24, dim=3):
    grid = np.indices((size,) * dim).astype(float)
    c = (size - 1) / 2
    r2 = sum((g - c - s) ** 2 for g, s in zip(grid, shift[::-1]))
    arr = np.exp(-r2 / 30.0) + 0.5 * (np.abs(grid[0] - c - shift[-1]) < 4)
    img = sitk.GetImageFromArray((100 * (1.0 - arr if invert else arr)).astype(np.float32))
    img.SetSpacing((2.0,) * dim)
    return img


def markups(points, **change):
    cps = [{"label": f"p{i}", "position": list(p)} for i, p in enumerate(points)]
    data = {"markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": cps}]}
    data.update(change)
    return data


POINTS = [[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10], [5, 5, 5]]


@pytest.fixture
def files(tmp_path):
    sitk.WriteImage(blob(), str(tmp_path / "f.nii.gz"))
    sitk.WriteImage(blob((2, 1, 0), invert=True), str(tmp_path / "m.nii.gz"))
    sitk.WriteImage(blob(dim=2), str(tmp_path / "f2.nii.gz"))
    sitk.WriteTransform(sitk.Euler3DTransform(), str(tmp_path / "id3.tfm"))
    sitk.WriteTransform(sitk.Euler2DTransform(), str(tmp_path / "id2.tfm"))
    (tmp_path / "fl.mrk.json").write_text(json.dumps(markups(POINTS)))
    return tmp_path


def register_args(d, out, *extra, fixed="f.nii.gz"):
    return ["register", "--fixed", str(d / fixed), "--moving", str(d / "m.nii.gz"), *CHEAP, "--output-dir",
            str(out), *extra]


def one_error_line(capsys, code, want=2) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == want, err
    assert len(err) == 1 and err[0].startswith("crossmodalreg: "), err
    return err[0]


# ------------------------------------------------------------------------------- 1. the output-folder protocol
def test_overwrite_never_deletes_an_input_inside_the_output_folder(files, capsys):
    inside = files / "inside"
    inside.mkdir()
    sitk.WriteImage(blob(), str(inside / "f.nii.gz"))
    before = folder_digest(inside)
    code = cli.main(register_args(files, inside, "--overwrite", fixed="inside/f.nii.gz"))
    assert "contains the input" in one_error_line(capsys, code)
    code = cli.main(["validate", "--fixed", str(inside / "f.nii.gz"), "--moving", str(files / "m.nii.gz"),
                     "--transform", str(files / "id3.tfm"), "--output-dir", str(inside), "--overwrite"])
    assert "contains the input" in one_error_line(capsys, code)
    assert folder_digest(inside) == before


@pytest.mark.parametrize("target", [".", ".."])
def test_the_working_folder_or_its_parent_is_refused_as_output(files, capsys, monkeypatch, target):
    work = files / "work"
    work.mkdir()
    (work / "mine.txt").write_text("keep")
    monkeypatch.chdir(work)
    code = cli.main(register_args(files, target, "--overwrite"))
    assert "working folder" in one_error_line(capsys, code)
    assert (work / "mine.txt").read_text() == "keep" and (files / "f.nii.gz").is_file()


def _landmarks_register(d, out, *extra):
    return ["landmarks", "register", "--fixed-landmarks", str(d / "fl.mrk.json"), "--moving-landmarks",
            str(d / "fl.mrk.json"), "--output-dir", str(out), *extra]


def _validate(d, out, *extra, transform="id3.tfm", fixed="f.nii.gz"):
    return ["validate", "--fixed", str(d / fixed), "--moving", str(d / fixed), "--transform", str(d / transform),
            "--output-dir", str(out), *extra]


@pytest.mark.parametrize("command", ["register", "validate", "landmarks register", "demo", "batch"])
def test_an_output_that_is_a_file_is_refused(files, capsys, command):
    target = files / "afile"
    target.write_text("mine")
    argv = {"register": register_args(files, target), "validate": _validate(files, target),
            "landmarks register": _landmarks_register(files, target),
            "demo": ["demo", "--output-dir", str(target), "--no-progress"],
            "batch": ["batch", str(_cohort(files)), "--output-dir", str(target), "--no-progress"]}[command]
    assert "file" in one_error_line(capsys, cli.main(argv))
    assert target.read_text() == "mine"


def _cohort(d):
    path = d / "cohort.csv"
    path.write_text("case_id,fixed,moving\nc1,f.nii.gz,m.nii.gz\n")
    return path


def test_landmarks_register_into_a_non_empty_folder_refuses_and_overwrite_replaces_it_whole(files, capsys):
    out = files / "lm"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert "not empty" in one_error_line(capsys, cli.main(_landmarks_register(files, out)))
    assert (out / "old.txt").read_text() == "old"
    assert cli.main(_landmarks_register(files, out, "--overwrite")) == 0
    assert "old.txt" not in os.listdir(out) and (out / "registration.json").is_file()
    assert not [n for n in os.listdir(files) if n.startswith(".lm.")]  # no lock, no staging left


def test_a_second_run_on_a_locked_folder_refuses_at_once(files, capsys):
    out = files / "busy"
    with OutputFolder(str(out)):  # another run holds the folder
        code = cli.main(register_args(files, out, "--overwrite"))
        assert "another run" in one_error_line(capsys, code)
        code = cli.main(_landmarks_register(files, out))
        assert "another run" in one_error_line(capsys, code)
    assert out.is_dir() and not os.listdir(out)  # only the holder's (empty) result
    assert not (files / ".busy.lock").exists()


def test_a_failed_run_removes_the_parents_it_made_and_keeps_the_old_output(files, capsys):
    # a 2D transform on 3D images fails after the folder is taken: nothing of a/b/ may stay
    code = cli.main(_validate(files, files / "a" / "b" / "out", transform="id2.tfm"))
    assert "2D but the images are 3D" in one_error_line(capsys, code)
    assert not (files / "a").exists()
    old = files / "old"
    assert cli.main(_validate(files, old)) == 0
    before = folder_digest(old)
    code = cli.main(_validate(files, old, "--overwrite", transform="id2.tfm"))
    one_error_line(capsys, code)
    assert folder_digest(old) == before  # --overwrite replaces only at the final rename
    assert sorted(n for n in os.listdir(files) if n.startswith(".")) == []


def test_stale_staging_of_a_dead_run_is_removed_and_a_live_one_kept(files, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = files / f".out.partial-{dead.pid}-abc"
    live = files / ".out.partial-1-def"  # pid 1 is alive
    stale.mkdir()
    live.mkdir()
    (stale / "transform.h5").write_text("half")
    assert cli.main(register_args(files, files / "out")) == 0
    assert not stale.exists() and live.exists()


def test_a_name_too_long_for_the_file_system_is_one_line(files, capsys):
    code = cli.main(register_args(files, files / ("y" * 300)))
    assert "choose a shorter name" in one_error_line(capsys, code)
    # 250 characters fit: the staging and lock names are shortened, the output keeps its name
    assert cli.main(register_args(files, files / ("x" * 250))) == 0
    assert (files / ("x" * 250) / "transform.h5").is_file()


def test_unwritable_parent_and_full_disk_are_one_line_and_leave_nothing(files, capsys, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", kwargs.get("dir", str(files)))

    with monkeypatch.context() as m:  # root ignores chmod: simulate what a read-only parent gives
        m.setattr(tempfile, "mkdtemp", denied)
        code = cli.main(register_args(files, files / "ro" / "out"))
    assert "permission denied" in one_error_line(capsys, code)
    assert not (files / "ro").exists()

    from CrossModalRegLib import pipeline

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(pipeline, "write_json_atomic", full)
    code = cli.main(register_args(files, files / "full"))
    assert "no space left" in one_error_line(capsys, code)
    assert not (files / "full").exists() and not [n for n in os.listdir(files) if n.startswith(".full")]


def test_a_really_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    """A real 2 MB file system (tmpfs) that the resampled image does not fit in. ITK's NIfTI writer does not fail
    there: it prints "NWAD: wrote only 0 of N bytes" and returns, leaving a truncated file; every written image is
    read back (image_io.write_image), so the run ends at that file in one line, exit 2, nothing left."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN); the simulated full disk above "
                    "covers the message")
    try:
        noise = np.random.default_rng(0).normal(100, 20, (96, 96, 96)).astype(np.float32)
        sitk.WriteImage(sitk.GetImageFromArray(noise), str(tmp_path / "f.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(np.roll(noise, 2, axis=2)), str(tmp_path / "m.nii.gz"))
        p = subprocess.run([sys.executable, "-m", "CrossModalRegLib.cli", "register", "--fixed",
                            str(tmp_path / "f.nii.gz"), "--moving", str(tmp_path / "m.nii.gz"), "--keep-failed",
                            *CHEAP, "--output-dir", str(mnt / "out")], env=ENV, capture_output=True, text=True)
        lines = [ln for ln in p.stderr.splitlines() if ln.startswith("crossmodalreg")]
        assert p.returncode == 2 and len(lines) == 1 and "no space left" in lines[0], p.stderr
        assert "moving_resampled.nii.gz" in lines[0], lines  # caught at the truncated write, not at a later one
        assert "Traceback" not in p.stderr
        assert os.listdir(mnt) == []  # no output, no staging, no lock
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# ---------------------------------------------------------------------------------------------- 2. signals
SLOW_AFFINE = ["--preset", "multimodal-affine", "--no-rotation-search", "--no-orientation-search",
               "--set", "stages.1.optimizer.iterations=5000", "--set", "stages.1.optimizer.min_step=1e-9",
               "--set", "stages.1.optimizer.gradient_tolerance=0"]


@pytest.mark.parametrize("sig, stage, code", [(signal.SIGINT, "affine", 130), (signal.SIGTERM, "affine", 143)])
def test_a_signal_mid_registration_exits_128_plus_signum_with_one_line_and_nothing_left(files, sig, stage, code):
    out = files / "sig"
    p = subprocess.Popen([sys.executable, "-m", "CrossModalRegLib.cli", "register", "--fixed", str(files / "f.nii.gz"),
                          "--moving", str(files / "m.nii.gz"), *SLOW_AFFINE, "--output-dir", str(out)],
                         env=ENV, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in p.stderr:  # progress lines: send the signal once the ITK stage runs
        seen.append(line)
        if f"{stage} level" in line:
            p.send_signal(sig)
            break
    rest = p.stderr.read().strip().splitlines()
    p.wait(timeout=60)
    assert any(f"{stage} level" in s for s in seen), seen
    assert p.returncode == code, rest
    assert rest == [f"crossmodalreg: interrupted by {sig.name}: stopped, nothing half-written left behind"]
    assert sorted(os.listdir(files)) == sorted(["f.nii.gz", "m.nii.gz", "f2.nii.gz", "id3.tfm", "id2.tfm",
                                                "fl.mrk.json"])


# ---------------------------------------------------------------------------------- 3. one line, exit 2
@pytest.mark.parametrize("extra, expected", [
    (["--threads", "-3"], "--threads must be 0"),
    (["--seed", "-1"], "--seed must be between 0 and"),
    (["--initial-transform", "{garbage}"], "could not be read as an ITK transform"),
    (["--initial-transform", "{id2}"], "is 2D but the images are 3D"),
    (["--set", "stages.0.optimizer.iterations=-5"], "iterations"),
    (["--set", 'stages.0.optimizer.iterations="many"'], "iterations"),
    (["--set", "stages.7.optimizer.iterations=5"], "stages"),
])
def test_register_option_errors_are_one_line(files, capsys, extra, expected):
    (files / "garbage.h5").write_text("not a transform\n")
    extra = [e.format(garbage=files / "garbage.h5", id2=files / "id2.tfm") for e in extra]
    code = cli.main(register_args(files, files / "new" / "out", *extra))
    assert expected in one_error_line(capsys, code)
    assert not (files / "new").exists()


@pytest.mark.parametrize("bad, expected", [
    ({"markups": "oops"}, "no 'markups' list"),
    ({"markups": ["oops"]}, "markups[0] must be an object"),
    ("2d", "a position is 3 numbers"),
    ("text", "a position is 3 numbers"),
])
@pytest.mark.parametrize("command", ["landmarks register", "register", "validate"])
def test_malformed_markups_files_are_one_line(files, capsys, bad, expected, command):
    if bad == "2d":
        data = markups([p[:2] for p in POINTS])
    elif bad == "text":
        data = markups([["a", "b", "c"]] * 5)
    else:
        data = markups(POINTS, **bad)
    path = files / "bad.mrk.json"
    path.write_text(json.dumps(data))
    out = files / "out"
    argv = {"landmarks register": ["landmarks", "register", "--fixed-landmarks", str(path), "--moving-landmarks",
                                   str(files / "fl.mrk.json"), "--output-dir", str(out)],
            "register": register_args(files, out, "--fixed-landmarks", str(path), "--moving-landmarks",
                                      str(files / "fl.mrk.json")),
            "validate": _validate(files, out, "--fixed-landmarks", str(path), "--moving-landmarks",
                                  str(files / "fl.mrk.json"))}[command]
    assert expected in one_error_line(capsys, cli.main(argv))
    assert not out.exists()


@pytest.mark.parametrize("transform, fixed, expected", [("id2.tfm", "f.nii.gz", "2D but the images are 3D"),
                                                        ("id3.tfm", "f2.nii.gz", "3D but the images are 2D")])
def test_validate_with_a_transform_of_the_other_dimension_is_one_line(files, capsys, transform, fixed, expected):
    code = cli.main(_validate(files, files / "out", transform=transform, fixed=fixed))
    assert expected in one_error_line(capsys, code)
    assert not (files / "out").exists()


def _session(files, capsys):
    session = files / "session"
    code = cli.main(["landmarks", "import", str(session), "--image", f"f={files / 'f.nii.gz'}", "--annotator",
                     f"A=f:{files / 'fl.mrk.json'}", "--annotator", f"B=f:{files / 'fl.mrk.json'}"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    return session


@pytest.mark.parametrize("drop, expected", [("annotator", "no 'annotator'"), ("image", "no 'image'"),
                                            ("position", "must be 3 numbers")])
def test_landmarks_stats_on_annotation_files_missing_a_field_is_one_line(files, capsys, drop, expected):
    session = _session(files, capsys)
    ann = sorted((session / "annotations").glob("*.json"))[0]
    data = json.loads(ann.read_text())
    if drop == "position":
        data["points"][0]["position"] = "here"
    else:
        del data[drop]
    ann.write_text(json.dumps(data))
    code = cli.main(["landmarks", "stats", str(session), "--output-dir", str(files / "stats")])
    assert expected in one_error_line(capsys, code)
    assert not (files / "stats").exists()


def test_landmarks_import_and_stats_use_the_output_protocol(files, capsys):
    session = _session(files, capsys)
    assert not [n for n in os.listdir(files) if ".partial-" in n or n.endswith(".lock")]
    stats = files / "stats"
    assert cli.main(["landmarks", "stats", str(session), "--output-dir", str(stats)]) == 0
    code = cli.main(["landmarks", "stats", str(session), "--output-dir", str(stats)])
    assert "not empty" in one_error_line(capsys, code)
    code = cli.main(["landmarks", "stats", str(session), "--output-dir", str(session / "annotations"),
                     "--overwrite"])
    assert "inside the input folder" in one_error_line(capsys, code)
    assert len(list((session / "annotations").glob("*.json"))) == 2


RUNAWAY = ["--set", "stages.0.optimizer.learning_rate=1000", "--set", "stages.0.optimizer.min_step=1"]


def test_an_optimiser_that_moves_the_images_apart_is_exit_3_in_the_users_words(files, capsys):
    code = cli.main(register_args(files, files / "out", *RUNAWAY, "--keep-failed"))
    line = one_error_line(capsys, code, want=3)
    assert "moved the images apart" in line and "try a smaller learning rate" in line
    assert "ITK" not in line and "MutualInformation" not in line and "buffer" not in line
    assert "--keep-failed kept nothing" in line  # says why nothing was kept
    assert not (files / "out").exists()


def test_keep_failed_says_what_it_kept(files, capsys):
    code = cli.main(["register", "--fixed", str(files / "f.nii.gz"), "--moving", str(files / "m.nii.gz"),
                     "--preset", "multimodal-affine", "--no-progress", "--keep-failed", "--output-dir",
                     str(files / "kept")])
    assert code == 3
    assert f"--keep-failed: the FAILED result was kept in {files / 'kept'}" in capsys.readouterr().out
    assert json.loads((files / "kept" / "registration.json").read_text())["sanity"]["passed"] is False


def test_ctrl_c_on_a_batch_stops_it_with_one_line_no_dask_traceback_and_no_staging_left(files):
    pytest.importorskip("distributed")
    (files / "cohort.csv").write_text("case_id,fixed,moving\nc1,f.nii.gz,m.nii.gz\nc2,f.nii.gz,m.nii.gz\n")
    out = files / "batch"
    p = subprocess.Popen([sys.executable, "-m", "CrossModalRegLib.cli", "batch", str(files / "cohort.csv"),
                          "--output-dir", str(out), "--workers", "2", "--no-pictures", *SLOW_AFFINE[:2],
                          *SLOW_AFFINE[4:]], env=ENV, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         start_new_session=True)  # its own process group, as a terminal's Ctrl-C reaches
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and p.poll() is None:
            if os.path.isdir(out / "cases") and any(".partial-" in n for n in os.listdir(out / "cases")):
                break  # a case is registering
            time.sleep(0.1)
        assert p.poll() is None, p.communicate()
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1] == "crossmodalreg: interrupted by SIGINT: stopped, nothing half-written left behind"
    assert [n for n in os.listdir(out / "cases") if n.startswith(".")] == []


@pytest.mark.parametrize("setting, expected", [
    ("stages.0.sampling.samples_per_level=[1,1,1]", "only 1 metric sample(s)"),  # ITK: "Refusing to change spacing"
    ("stages.0.level_spacing_mm=[80,40,20]", "metric sample(s)"),  # ITK: "VirtualSampledPointSet must have ..."
])
def test_raw_itk_messages_of_unworkable_levels_become_the_presets_words(files, capsys, setting, expected):
    code = cli.main(register_args(files, files / "out", "--set", setting))
    line = one_error_line(capsys, code)
    assert expected in line and "stages.0 (rigid) level 1" in line
    assert "ITK" not in line and "Refusing" not in line and "VirtualSampledPointSet" not in line


def test_sigkill_leaves_staging_that_the_next_run_removes(files):
    out = files / "killed"
    p = subprocess.Popen([sys.executable, "-m", "CrossModalRegLib.cli", "register", "--fixed", str(files / "f.nii.gz"),
                          "--moving", str(files / "m.nii.gz"), *SLOW_AFFINE, "--output-dir", str(out)],
                         env=ENV, stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        if "affine level" in line:
            p.kill()
            break
    p.wait(timeout=30)
    left = [n for n in os.listdir(files) if n.startswith(".killed.partial-")]
    assert left and not out.exists()  # SIGKILL cannot be handled: the staging stays
    assert cli.main(register_args(files, out)) == 0
    assert [n for n in os.listdir(files) if n.startswith(".killed.")] == []


def test_batch_checks_preset_cells_and_set_before_running_anything(files, capsys):
    cohort = files / "cohort.csv"
    cohort.write_text("case_id,fixed,moving,preset\nc1,f.nii.gz,m.nii.gz,\nc2,f.nii.gz,m.nii.gz,no-such-preset\n")
    out = files / "batch"
    code = cli.main(["batch", str(cohort), "--output-dir", str(out), "--no-progress"])
    assert "row 2" in one_error_line(capsys, code) and not out.exists()
    _cohort(files)
    for setting, expected in (("stages.3.optimizer.iterations=3", "stages"),
                              ("stages.0.optimizer.iterations=-1", "iterations"),
                              ('stages.0.optimizer.iterations="x"', "iterations")):
        code = cli.main(["batch", str(cohort), "--output-dir", str(out), "--no-progress", "--set", setting])
        assert expected in one_error_line(capsys, code) and not out.exists()


@pytest.mark.parametrize("threads", [1, 2])
def test_batch_itk_threads_is_what_itk_runs_the_optimiser_with(files, itk_threads_seen, threads):
    """`batch --itk-threads N`: ITK's thread count at the moment each optimisation executes, seen from inside."""
    from CrossModalRegLib.batch.case import CaseOptions, run_case
    from CrossModalRegLib.batch.cohort import read_cohort

    seen = itk_threads_seen
    case = read_cohort(str(_cohort(files)))[0]
    overrides = {"stages.0.optimizer.iterations": 15, "initialization.rotation_search.enabled": False,
                 "initialization.orientation_search.enabled": False}
    record = run_case(case, str(files / "out"), CaseOptions(overrides=overrides, pictures=False, itk_threads=threads))
    assert record["itk_threads"] == threads and record["status"] in ("ok", "failed")
    assert len(seen) >= 3 and set(seen) == {threads}, seen


def test_two_processes_on_one_output_folder_the_second_refuses_while_the_first_runs(files, capsys):
    out = files / "shared"
    first = subprocess.Popen([sys.executable, "-m", "CrossModalRegLib.cli", "register", "--fixed",
                              str(files / "f.nii.gz"), "--moving", str(files / "m.nii.gz"), *SLOW_AFFINE,
                              "--output-dir", str(out)], env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stderr:
            if "affine level" in line:
                break
        code = cli.main(register_args(files, out, "--overwrite"))
        assert "being written by another run" in one_error_line(capsys, code)
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 143 and not out.exists()
