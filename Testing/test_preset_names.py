"""Preset names and titles in one order: ``<fixed>-<moving>-<model>``, titles "<MOVING> onto <FIXED>", former names
kept as aliases (same preset, a note on the command line, the old name in the provenance)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from CrossModalRegLib import cli, engine, presets, simulation

# A family word of a modality ("MR" in "MR T1") is not repeated in a name: mr-t1-t2-rigid, not mr-t1-mr-t2-rigid.
NAME_PREFIX_FOR_ANY = {"any": "multimodal", "RGB histology": "histology"}


def _tokens(modality: str) -> list[str]:
    return [w.lower() for w in modality.split()]


@pytest.mark.parametrize("name", presets.available_presets())
def test_name_puts_the_fixed_modality_first_then_the_moving(name):
    preset = presets.load_preset(name)
    assert preset["name"] == name
    fixed, moving = preset["modalities"]["fixed"], preset["modalities"]["moving"]
    parts = name.split("-")
    if fixed in NAME_PREFIX_FOR_ANY:  # either image may be anything (or any stain): no order to state
        assert fixed == moving and parts[0] == NAME_PREFIX_FOR_ANY[fixed], name
        return
    f, m = _tokens(fixed), _tokens(moving)
    if len(m) > 1 and m[0] == f[0]:
        m = m[1:]
    assert parts[:len(f)] == f, f"{name}: fixed is {fixed!r}, the name must start with {'-'.join(f)}"
    assert parts[len(f):len(f) + len(m)] == m, f"{name}: moving is {moving!r}, expected {'-'.join(m)} next"
    assert len(parts) > len(f) + len(m), f"{name}: the model (rigid, deformable, ...) comes last"


@pytest.mark.parametrize("name", presets.available_presets())
def test_title_says_moving_onto_fixed(name):
    preset = presets.load_preset(name)
    title = preset["title"]
    assert " onto " in title and " to " not in title, title
    moving_part, fixed_part = title.split(" onto ", 1)
    for modality, part in ((preset["modalities"]["moving"], moving_part), (preset["modalities"]["fixed"], fixed_part)):
        assert re.search(rf"\b{re.escape(modality)}\b", part, re.IGNORECASE), f"{name}: {modality!r} not in {part!r}"


def test_former_name_gives_the_same_preset_with_a_warning_naming_the_new_one():
    assert presets.ALIASES == {"ct-mr-rigid": "mr-ct-rigid"}
    with pytest.warns(presets.PresetAliasWarning, match="'ct-mr-rigid' is deprecated: it is now 'mr-ct-rigid'"):
        old = presets.load_preset("ct-mr-rigid")
    new = presets.load_preset("mr-ct-rigid")
    assert old == new and old["name"] == "mr-ct-rigid"
    assert presets.preset_sha256(old) == presets.preset_sha256(new)
    assert "ct-mr-rigid" not in presets.available_presets()  # not a second file: one preset, two names
    for old_name, new_name in presets.ALIASES.items():
        assert new_name in presets.available_presets() and old_name not in presets.available_presets()


def test_current_name_gives_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        presets.load_preset("mr-ct-rigid")


@pytest.fixture(scope="module")
def small_pair():
    rng = np.random.RandomState(3)
    model = simulation.head_phantom(spacing_mm=4.0)
    fixed = simulation.render(model, "t1", rng=rng)
    return fixed, simulation.render(model, "ct", rng=rng)


def test_engine_records_the_former_name_in_the_provenance(small_pair):
    fixed, moving = small_pair
    quick = {"stages.0.optimizer.iterations": 3}
    with pytest.warns(presets.PresetAliasWarning):
        old = engine.register(fixed, moving, preset="ct-mr-rigid", overrides=quick, rotation_search=False,
                              orientation_search=False, strict=False)
    new = engine.register(fixed, moving, preset="mr-ct-rigid", overrides=quick, rotation_search=False,
                          orientation_search=False, strict=False)
    prov = old.provenance()
    assert prov["preset"]["name"] == "mr-ct-rigid"
    assert prov["preset_alias"]["requested"] == "ct-mr-rigid" and "mr-ct-rigid" in prov["preset_alias"]["note"]
    assert "preset_alias" not in new.provenance()
    assert prov["preset_sha256"] == new.provenance()["preset_sha256"]
    np.testing.assert_array_equal(old.transform_fixed_to_moving_lps.GetParameters(),
                                  new.transform_fixed_to_moving_lps.GetParameters())


def test_cli_prints_one_note_line_for_a_former_name(capsys):
    assert cli.main(["presets", "ct-mr-rigid"]) == 0
    captured = capsys.readouterr()
    notes = captured.err.strip().splitlines()
    assert len(notes) == 1 and notes[0].startswith("crossmodalreg: note: preset name 'ct-mr-rigid' is deprecated")
    assert "'mr-ct-rigid'" in notes[0] and "Traceback" not in captured.err and "Warning" not in captured.err
    assert captured.out.startswith("mr-ct-rigid ")
    assert "former name (deprecated, still accepted): ct-mr-rigid" in captured.out
    # A second command in the same process notes it again (no once-per-process registry swallowing it).
    assert cli.main(["presets", "ct-mr-rigid"]) == 0
    assert capsys.readouterr().err.count("note: preset name 'ct-mr-rigid'") == 1


def test_current_name_prints_no_note(capsys):
    assert cli.main(["presets", "mr-ct-rigid"]) == 0
    assert capsys.readouterr().err == ""


def test_presets_list_shows_the_former_names(capsys):
    assert cli.main(["presets"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+ct-mr-rigid\s+-> mr-ct-rigid$", out, re.MULTILINE), out
    assert "<fixed>-<moving>-<model>" in out



def test_module_upgrades_a_scene_saved_with_a_former_name(module_widget, slot_errors):
    pytest.importorskip("PyQt5", reason="the GUI harness needs PyQt5 (the project's test extra)")
    m = module_widget("CrossModalReg")
    m.widget.logic.getParameterNode().parameterNode.SetParameter("preset", "ct-mr-rigid")  # as an old .mrml has it
    m.enter()
    assert m.widget._parameterNode.preset == "mr-ct-rigid"
    assert m.ui.presetComboBox.currentText == "mr-ct-rigid"
    assert "A CT and an MR of the same head" in m.ui.presetDescriptionLabel.text
    assert not slot_errors, slot_errors


@pytest.mark.parametrize("name", presets.available_presets())
def test_every_preset_is_shown_with_roles_when_to_use_and_each_stage(name, capsys):
    assert cli.main(["presets", name]) == 0
    out = capsys.readouterr().out
    preset = presets.load_preset(name)
    mod = preset["modalities"]
    assert f"fixed image: {mod['fixed']} " in out and f"moving image: {mod['moving']} " in out
    assert "when to use:" in out and " ".join(preset["when_to_use"].split()) in " ".join(out.split())
    stage_lines = [ln.strip() for ln in out.splitlines() if re.match(r"\s+\d+\. ", ln)]
    assert [ln.split(": ")[0].split(". ")[1] for ln in stage_lines] == [s["type"] for s in preset["stages"]]


def test_profile_is_shown_with_when_to_use(capsys):
    from CrossModalRegLib.validation import profiles

    for name in profiles.available_profiles():
        assert cli.main(["profiles", name]) == 0
        out = capsys.readouterr().out
        prof = profiles.load_profile(name)
        assert "when to use:" in out and " ".join(prof.description.split()) in " ".join(out.split())
