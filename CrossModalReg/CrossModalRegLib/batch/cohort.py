"""The cohort table: one CSV row per case, read and checked before anything runs.

Columns (header names, any order; ``case_id``, ``fixed`` and ``moving`` are required)::

    case_id            unique name of the case: letters, digits, '.', '_', '-' (it names the case folder)
    fixed, moving      image files (any format SimpleITK reads)
    fixed_mask         label map: metric computed only where non-zero (fixed space)       optional
    moving_mask        label map in moving space                                           optional
    fixed_landmarks    landmark file on the fixed image (.mrk.json, .fcsv, .csv)           optional, with moving_landmarks
    moving_landmarks   the same landmarks on the moving image (paired by label)            optional
    fixed_labels       label map / segmentation on the fixed side (Dice, surface distance) optional, with moving_labels
    moving_labels      label map on the moving side                                        optional
    preset             preset name or preset JSON file for this case (default: the run's)  optional
    seed               random seed of the metric sampling (integer)                        optional
    landmarks_for      "evaluation" (default: landmarks only measure TRE) or "initialization"  optional

Relative paths are relative to the CSV file's folder. Blank lines and lines starting with ``#`` are skipped;
columns whose name starts with ``note`` or ``comment`` are carried along and ignored.

A malformed table (missing column, empty required cell, duplicate or unsafe case id, unknown preset, a landmark or
label column without its partner) raises :class:`CohortError` naming the row, the line and the column, before
anything is written. A file that does not exist is not a table error: the case is recorded as failed with the
column named, and the rest of the cohort runs.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field

from ..errors import CrossModalRegError

REQUIRED_COLUMNS = ("case_id", "fixed", "moving")
FILE_COLUMNS = ("fixed", "moving", "fixed_mask", "moving_mask", "fixed_landmarks", "moving_landmarks",
                "fixed_labels", "moving_labels")
OPTIONAL_COLUMNS = ("fixed_mask", "moving_mask", "fixed_landmarks", "moving_landmarks", "fixed_labels",
                    "moving_labels", "preset", "seed", "landmarks_for")
KNOWN_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
PAIRED_COLUMNS = (("fixed_landmarks", "moving_landmarks"), ("fixed_labels", "moving_labels"))
LANDMARK_USES = ("evaluation", "initialization")
CASE_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


class CohortError(CrossModalRegError):
    """The cohort table is malformed. The message names the file, the row (and line) and the column."""


@dataclass
class CohortCase:
    """One row of the cohort table, with absolute paths (None for an empty optional cell)."""

    case_id: str
    fixed: str
    moving: str
    fixed_mask: str | None = None
    moving_mask: str | None = None
    fixed_landmarks: str | None = None
    moving_landmarks: str | None = None
    fixed_labels: str | None = None
    moving_labels: str | None = None
    preset: str | None = None
    seed: int | None = None
    landmarks_for: str = "evaluation"
    row: int = 0
    line: int = 0
    source: str = ""
    problems: list[str] = field(default_factory=list)

    def files(self) -> dict:
        """{column: path} of the files this case names."""
        return {c: getattr(self, c) for c in FILE_COLUMNS if getattr(self, c)}

    def where(self, column: str | None = None) -> str:
        col = f", column '{column}'" if column else ""
        return f"{os.path.basename(self.source) or 'cohort'} row {self.row} (line {self.line}, case '{self.case_id}'){col}"


def _is_extra(name: str) -> bool:
    low = name.lower()
    return low.startswith("note") or low.startswith("comment")


def read_cohort(path: str, *, check_files: bool = True) -> list[CohortCase]:
    """Read and check a cohort CSV; return its cases in table order.

    With ``check_files`` every named file is looked up; a missing one is recorded in ``case.problems`` (the case
    will be recorded as failed without running) rather than raised, so one bad path does not stop a cohort.
    """
    from ..presets import load_preset

    path = os.path.abspath(os.path.expanduser(path))
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise CohortError(f"cohort table '{path}' does not exist")
    base = os.path.dirname(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = [(n, text) for n, text in enumerate(f.read().splitlines(), start=1)]
    except UnicodeDecodeError as exc:
        raise CohortError(f"{name}: not a UTF-8 text file ({exc.reason})") from None
    lines = [(n, t) for n, t in lines if t.strip() and not t.lstrip().startswith("#")]
    if not lines:
        raise CohortError(f"{name}: the table is empty; the first line must be a header with case_id,fixed,moving")
    header_line, header_text = lines[0]
    header = [h.strip() for h in next(csv.reader([header_text]))]
    seen = set()
    for i, h in enumerate(header, start=1):
        if not h:
            raise CohortError(f"{name} line {header_line}: header column {i} has no name")
        if h in seen:
            raise CohortError(f"{name} line {header_line}: column '{h}' appears twice in the header")
        seen.add(h)
        if h not in KNOWN_COLUMNS and not _is_extra(h):
            raise CohortError(f"{name} line {header_line}: unknown column '{h}'; the columns are "
                              f"{', '.join(KNOWN_COLUMNS)} (and note*/comment* columns, ignored)")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise CohortError(f"{name} line {header_line}: missing required column(s) {', '.join(repr(c) for c in missing)}; "
                          f"the header has {', '.join(header)}")
    for a, b in PAIRED_COLUMNS:
        if (a in header) != (b in header):
            raise CohortError(f"{name} line {header_line}: column '{a if a in header else b}' needs its partner "
                              f"'{b if a in header else a}'")

    cases: list[CohortCase] = []
    by_id: dict[str, CohortCase] = {}
    preset_ok: dict[str, str | None] = {}
    for row_no, (line_no, text) in enumerate(lines[1:], start=1):
        cells = next(csv.reader([text]))
        where = f"{name} row {row_no} (line {line_no})"
        if len(cells) > len(header):
            raise CohortError(f"{where}: {len(cells)} cells but the header has {len(header)} columns "
                              "(a comma inside a path? quote the cell)")
        cells = [c.strip() for c in cells] + [""] * (len(header) - len(cells))
        values = dict(zip(header, cells))
        for col in REQUIRED_COLUMNS:
            if not values[col]:
                raise CohortError(f"{where}, column '{col}': empty; every case needs {', '.join(REQUIRED_COLUMNS)}")
        cid = values["case_id"]
        if not CASE_ID_RE.match(cid):
            raise CohortError(f"{where}, column 'case_id': '{cid}' is not a safe folder name: use letters, digits, "
                              "'.', '_' and '-' (at most 128, not starting with '.' or '-')")
        if cid in by_id:
            first = by_id[cid]
            raise CohortError(f"{where}, column 'case_id': '{cid}' is already used by row {first.row} "
                              f"(line {first.line}); case ids must be unique")
        case = CohortCase(case_id=cid, fixed="", moving="", row=row_no, line=line_no, source=path)
        for col in FILE_COLUMNS:
            v = values.get(col, "")
            if v:
                setattr(case, col, os.path.normpath(os.path.join(base, os.path.expanduser(v))))
        for a, b in PAIRED_COLUMNS:
            if bool(getattr(case, a)) != bool(getattr(case, b)):
                have, lack = (a, b) if getattr(case, a) else (b, a)
                raise CohortError(f"{where}, column '{lack}': empty while '{have}' is given; give both or neither")
        preset = values.get("preset", "")
        if preset:
            resolved = preset
            candidate = os.path.join(base, os.path.expanduser(preset))
            if preset.endswith(".json") or os.sep in preset:
                resolved = os.path.normpath(candidate)
            if resolved not in preset_ok:
                try:
                    load_preset(resolved)
                    preset_ok[resolved] = None
                except CrossModalRegError as exc:
                    preset_ok[resolved] = str(exc)
            if preset_ok[resolved]:
                raise CohortError(f"{where}, column 'preset': {preset_ok[resolved]}")
            case.preset = resolved
        seed = values.get("seed", "")
        if seed:
            try:
                case.seed = int(seed)
            except ValueError:
                raise CohortError(f"{where}, column 'seed': '{seed}' is not an integer") from None
        use = values.get("landmarks_for", "") or "evaluation"
        if use not in LANDMARK_USES:
            raise CohortError(f"{where}, column 'landmarks_for': '{use}'; use {' or '.join(LANDMARK_USES)}")
        case.landmarks_for = use
        if check_files:
            for col, p in case.files().items():
                if not os.path.isfile(p):
                    case.problems.append(f"column '{col}': file '{p}' does not exist")
        by_id[cid] = case
        cases.append(case)
    if not cases:
        raise CohortError(f"{name}: the table has a header but no case")
    return cases
