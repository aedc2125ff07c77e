"""`crossmodalreg presets` / `profiles`: every bundled preset and profile is listed, and one is shown whole."""

from __future__ import annotations

from CrossModalRegLib import cli, presets
from CrossModalRegLib.validation import profiles


def test_presets_lists_every_bundled_preset_with_its_roles(capsys):
    assert cli.main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in presets.available_presets():
        row = next((ln for ln in lines if ln.split()[:1] == [name]), None)
        assert row is not None, f"{name} not listed"
        mod = presets.load_preset(name)["modalities"]
        assert f"fixed {mod['fixed']}".split() == row.split("|")[0].split()[1:], row
        assert f"moving {mod['moving']}" in row


def test_preset_shown_with_when_to_use_fixed_moving_and_each_stage(capsys):
    assert cli.main(["presets", "mr-ct-rigid"]) == 0
    out = capsys.readouterr().out
    preset = presets.load_preset("mr-ct-rigid")
    assert "fixed image: MR" in out and "moving image: CT" in out
    assert " ".join(preset["when_to_use"].split()[:8]) in " ".join(out.split())
    assert sum(1 for ln in out.splitlines() if ln.strip()[:2].rstrip(".").isdigit()) == len(preset["stages"])


def test_unknown_preset_is_one_line_exit_2(capsys):
    assert cli.main(["presets", "no-such-preset"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown preset" in err[0] and "mr-ct-rigid" in err[0]


def test_profiles_list_and_show_criteria(capsys):
    assert cli.main(["profiles"]) == 0
    out = capsys.readouterr().out
    for name in profiles.available_profiles():
        assert any(ln.split()[:1] == [name] for ln in out.splitlines())
    assert cli.main(["profiles", "neuro"]) == 0
    out = capsys.readouterr().out
    for c in profiles.load_profile("neuro").criteria:
        assert f"{c.measure} {c.text()}" in out
