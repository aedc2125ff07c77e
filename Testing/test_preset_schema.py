"""Presets and --set overrides are checked against the preset format before anything runs.

A misspelt key used to be ignored (the default used instead), ``bins: 0`` ran 0 iterations and returned the bare
initialisation as "passed", and a bad index ended in a traceback. Each is now one line, exit 2, nothing written.
"""

from __future__ import annotations

import json

import pytest

from CrossModalRegLib import cli, presets
from CrossModalRegLib.errors import CrossModalRegError


def test_every_shipped_preset_is_in_the_format():
    for name in presets.available_presets():
        presets.load_preset(name)


def _preset_file(tmp_path, edit):
    data = presets.load_preset("multimodal-rigid")
    edit(data)
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["stages"][0]["optimizer"].update(iteratons=5), "did you mean 'iterations'"),
    (lambda p: p.update(stagse=p["stages"]), "did you mean 'stages'"),
    (lambda p: p["stages"][0]["metric"].update(bins=0), "stages[0].metric.bins must be >= 4"),
    (lambda p: p["stages"][0]["optimizer"].update(learning_rate=-0.5), "learning_rate must be > 0"),
    (lambda p: p["stages"][0]["optimizer"].update(iterations="100"), "iterations must be a whole number"),
    (lambda p: p["stages"][0]["optimizer"].update(iterations=-3), "iterations must be >= 1"),
    (lambda p: p["initialization"]["rotation_search"].update(enabled="yes"), "enabled must be true or false"),
])
def test_preset_files_with_unknown_keys_or_bad_values_are_refused(tmp_path, edit, message):
    with pytest.raises(CrossModalRegError, match="mine.json") as err:
        presets.load_preset(_preset_file(tmp_path, edit))
    assert message in str(err.value)


@pytest.mark.parametrize("setting, message", [
    ("stages.0.optimizer.iteratons=5", "'iteratons' is not a known key under 'stages.0.optimizer'"),
    ("stages.0.metric.bogus_key=1", "'bogus_key' is not a known key"),
    ("stages.7.optimizer.iterations=5", "'stages' has 1 entries"),
    ("stages.x.optimizer.iterations=5", "must be an index"),
    ("stages.0.optimizer.iterations=-3", "iterations must be >= 1"),
    ("stages.0.optimizer.iterations=\"ten\"", "iterations must be a whole number"),
    ("stages.0.metric.bins=0", "bins must be >= 4"),
])
def test_register_refuses_bad_overrides_in_one_line_and_writes_nothing(tmp_path, shared_data, capsys, setting,
                                                                        message):
    d = shared_data / "brainweb2d"
    out = tmp_path / "out"
    code = cli.main(["register", "--fixed", str(d / "BrainT1Slice.mha"), "--moving",
                     str(d / "BrainProtonDensitySlice.mha"), "--set", setting, "--output-dir", str(out),
                     "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


def test_a_good_override_changes_what_runs():
    p = presets.apply_overrides(presets.load_preset("multimodal-rigid"), {"stages.0.optimizer.iterations": 7})
    assert p["stages"][0]["optimizer"]["iterations"] == 7


def test_batch_checks_overrides_before_running_any_case(tmp_path, shared_data, capsys):
    d = shared_data / "brainweb2d"
    cohort = tmp_path / "cohort.csv"
    cohort.write_text("case_id,fixed,moving\n" + "".join(
        f"c{i},{d / 'BrainT1Slice.mha'},{d / 'BrainProtonDensitySlice.mha'}\n" for i in range(3)))
    out = tmp_path / "out"
    code = cli.main(["batch", str(cohort), "--output-dir", str(out), "--workers", "1", "--no-progress",
                     "--set", "stages.0.optimizer.iteratons=5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "did you mean 'iterations'" in err[0], err
    assert not out.exists()
