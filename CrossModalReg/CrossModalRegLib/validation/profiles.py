"""Acceptance profiles: versioned, user-editable JSON files giving pass or fail per measure.

A profile file::

    {
      "schema": "crossmodalreg-validation-profile",
      "schema_version": 1,
      "name": "neuro",
      "version": "1.0.0",
      "description": "...",
      "criteria": [
        {"measure": "tre_mean_mm", "comparison": "<", "threshold": 2.0, "description": "..."}
      ]
    }

``measure`` is a key of :data:`measures.MEASURES`; ``comparison`` one of ``<``, ``<=``, ``>``, ``>=``. The
bundled profiles live in ``profiles/``; a user copies one, edits it and passes its path. A criterion whose measure
was not computed is "not evaluated" (never a pass, never a fail); the verdict is "fail" if any criterion fails,
"incomplete" if none fails but one was not evaluated, else "pass".
"""

from __future__ import annotations

import json
import operator
import os
from dataclasses import dataclass

from ..errors import CrossModalRegError
from ..provenance import sha256_of_json
from .measures import MEASURES

SCHEMA = "crossmodalreg-validation-profile"
SCHEMA_VERSION = 1
PROFILE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiles")
COMPARISONS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}

PASS, FAIL, NOT_EVALUATED = "pass", "fail", "not evaluated"


@dataclass(frozen=True)
class Criterion:
    measure: str
    comparison: str
    threshold: float
    description: str = ""

    def text(self) -> str:
        unit = MEASURES[self.measure].unit
        unit = "" if unit in ("", "count", "fraction") else f" {unit}"
        return f"{self.comparison} {self.threshold:g}{unit}"


@dataclass(frozen=True)
class Profile:
    name: str
    version: str
    description: str
    criteria: tuple[Criterion, ...]
    source: str
    sha256: str
    data: dict


@dataclass(frozen=True)
class CriterionResult:
    criterion: Criterion
    value: float | None
    result: str  # PASS, FAIL or NOT_EVALUATED
    note: str = ""


def available_profiles() -> list[str]:
    """Names of the bundled profiles."""
    if not os.path.isdir(PROFILE_DIR):
        return []
    return sorted(f[:-5] for f in os.listdir(PROFILE_DIR) if f.endswith(".json"))


def profile_from_dict(data: dict, *, source: str = "<dict>") -> Profile:
    """Check a profile's structure and return it; errors name the file and the faulty entry."""
    def bad(msg):
        return CrossModalRegError(f"acceptance profile {source}: {msg}")

    if not isinstance(data, dict):
        raise bad("must be a JSON object")
    if data.get("schema") != SCHEMA:
        raise bad(f"'schema' must be '{SCHEMA}'")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise bad(f"'schema_version' {data.get('schema_version')!r} is not supported (this version reads "
                  f"{SCHEMA_VERSION})")
    for key in ("name", "version"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise bad(f"'{key}' must be a non-empty string")
    crit = data.get("criteria")
    if not isinstance(crit, list) or not crit:
        raise bad("'criteria' must be a non-empty list")
    criteria = []
    for i, c in enumerate(crit):
        if not isinstance(c, dict):
            raise bad(f"criterion {i + 1} must be an object")
        measure = c.get("measure")
        if measure not in MEASURES:
            raise bad(f"criterion {i + 1}: unknown measure {measure!r} (known: {', '.join(sorted(MEASURES))})")
        comparison = c.get("comparison")
        if comparison not in COMPARISONS:
            raise bad(f"criterion {i + 1}: comparison must be one of {', '.join(COMPARISONS)}, got {comparison!r}")
        threshold = c.get("threshold")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise bad(f"criterion {i + 1}: threshold must be a number, got {threshold!r}")
        criteria.append(Criterion(measure, comparison, float(threshold), str(c.get("description", ""))))
    return Profile(data["name"], data["version"], str(data.get("description", "")), tuple(criteria), source,
                   sha256_of_json(data), data)


def load_profile(name_or_path: str) -> Profile:
    """A bundled profile by name (``"neuro"``) or a profile file by path."""
    path = name_or_path
    if not os.path.isfile(path):
        candidate = os.path.join(PROFILE_DIR, f"{name_or_path}.json")
        if not os.path.isfile(candidate):
            raise CrossModalRegError(
                f"acceptance profile '{name_or_path}' not found: give a file path or one of "
                f"{', '.join(available_profiles()) or '(none bundled)'}"
            )
        path = candidate
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise CrossModalRegError(f"acceptance profile {path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    return profile_from_dict(data, source=os.path.basename(path))


def evaluate_profile(profile: Profile, values: dict, reasons: dict | None = None) -> list[CriterionResult]:
    """Pass/fail per criterion from the summary ``values`` (measure key -> number or None)."""
    reasons = reasons or {}
    out = []
    for c in profile.criteria:
        v = values.get(c.measure)
        if v is None:
            note = reasons.get(c.measure) or "measure not computed for these inputs"
            out.append(CriterionResult(c, None, NOT_EVALUATED, note))
            continue
        ok = COMPARISONS[c.comparison](float(v), c.threshold)
        out.append(CriterionResult(c, float(v), PASS if ok else FAIL, c.description))
    return out


def verdict(results: list[CriterionResult]) -> str:
    """"fail" if any criterion fails, "incomplete" if one was not evaluated, "pass" otherwise."""
    if any(r.result == FAIL for r in results):
        return FAIL
    if any(r.result == NOT_EVALUATED for r in results):
        return "incomplete"
    return PASS
