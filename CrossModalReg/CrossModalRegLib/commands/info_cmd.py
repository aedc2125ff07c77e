"""``crossmodalreg presets [NAME]`` and ``crossmodalreg profiles [NAME]``: what is bundled, and what each is for.

Without a name: one line per bundled preset (or acceptance profile) with its title. With a name (or a path to a
user's JSON file): the whole description, which image is fixed and which moving, and the stages (presets) or the
criteria (profiles), so a user can choose without reading JSON.
"""

from __future__ import annotations

import textwrap

from ..errors import CrossModalRegError


def add_parser(sub):
    p = sub.add_parser("presets", help="list the registration presets, or show one with its when-to-use text",
                       description=__doc__)
    p.add_argument("name", nargs="?", help="a preset name or a path to a preset JSON file")
    p.set_defaults(func=run_presets)
    q = sub.add_parser("profiles", help="list the validation acceptance profiles, or show one with its criteria",
                       description=__doc__)
    q.add_argument("name", nargs="?", help="a profile name or a path to a profile JSON file")
    q.set_defaults(func=run_profiles)
    return p


def _wrap(text: str, indent: str = "  ") -> str:
    return textwrap.fill(" ".join(str(text).split()), width=100, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False, break_long_words=False)  # keep "0.4-1.3 mm" and paths whole


def _stage_line(stage: dict) -> str:
    metric = stage.get("metric", {}).get("name", "?")
    optimizer = stage.get("optimizer", {}).get("name", "default")
    parts = [f"{stage.get('type', '?')}: metric {metric}, optimizer {optimizer}"]
    if "level_spacing_mm" in stage:
        parts.append("levels at " + ", ".join(f"{v:g}" for v in stage["level_spacing_mm"]) + " mm")
    elif "shrink_factors" in stage:
        parts.append("shrink factors " + ", ".join(f"{v:g}" for v in stage["shrink_factors"]))
    if stage.get("type") == "bspline" and "control_point_spacing_mm" in stage:
        parts.append(f"control points {stage['control_point_spacing_mm']:g} mm")
    return "; ".join(parts)


def describe_preset(preset: dict) -> str:
    """A preset as the terminal shows it: title, fixed/moving, dimension, former names, when to use,
    initialisation, stages."""
    from ..presets import ALIASES

    mod = preset.get("modalities", {})
    init = preset.get("initialization", {})
    former = [old for old, new in ALIASES.items() if new == preset.get("name")]
    lines = [
        f"{preset['name']} {preset.get('version', '')}: {preset.get('title', '')}",
        f"  fixed image: {mod.get('fixed', 'any')}    moving image: {mod.get('moving', 'any')}    "
        f"dimension: {preset.get('dimension', 'any')}",
        *([f"  former name (deprecated, still accepted): {', '.join(former)}"] if former else []),
        "  when to use:",
        _wrap(preset.get("when_to_use", "(not stated)"), "    "),
        f"  initialisation: {init.get('method', 'moments')}"
        + (", rotation search" if init.get("rotation_search", {}).get("enabled") else ""),
        "  stages:",
    ]
    lines += [f"    {i + 1}. {_stage_line(s)}" for i, s in enumerate(preset.get("stages", []))]
    return "\n".join(lines)


def run_presets(args) -> int:
    from .. import presets

    if args.name:
        print(describe_preset(presets.load_preset(args.name)))
        return 0
    for name in presets.available_presets():
        p = presets.load_preset(name)
        mod = p.get("modalities", {})
        print(f"{name:34s} fixed {mod.get('fixed', 'any'):>14s} | moving {mod.get('moving', 'any'):14s} "
              f"{p.get('title', '')}")
    if presets.ALIASES:
        print(f"\nFormer names, still accepted (removed in version {presets.ALIASES_REMOVED_IN}; names are "
              "<fixed>-<moving>-<model>):")
        for old, new in sorted(presets.ALIASES.items()):
            print(f"  {old:32s} -> {new}")
    print("\n`crossmodalreg presets NAME` shows one preset with its when-to-use text and stages.")
    return 0


def run_profiles(args) -> int:
    from ..validation import profiles

    if args.name:
        prof = profiles.load_profile(args.name)
        print(f"{prof.name} {prof.version} ({prof.source})")
        print("  when to use:")
        print(_wrap(prof.description or "(no description)", "    "))
        print("  criteria (all must pass):")
        for c in prof.criteria:
            print(f"    {c.measure} {c.text()}" + (f": {c.description}" if c.description else ""))
        return 0
    names = profiles.available_profiles()
    if not names:
        raise CrossModalRegError("no acceptance profile is bundled with this installation")
    for name in names:
        prof = profiles.load_profile(name)
        first = (prof.description.split(". ")[0] if prof.description else "").rstrip(".")
        print(f"{name:16s} {len(prof.criteria)} criteria  {first}")
    print("\n`crossmodalreg profiles NAME` shows one profile with its criteria.")
    return 0
