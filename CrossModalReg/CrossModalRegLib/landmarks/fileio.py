"""Landmark files: CSV with the frame in the header, ANHIR CSV (2D pixels), Slicer ``.fcsv`` and ``.mrk.json``.

Pure Python (no ``slicer``): the command line reads every format without Slicer. The MRML layer
(:mod:`.mrml_layer`) writes and reads ``.mrk.json`` through Slicer's own ``vtkMRMLMarkupsJsonStorageNode``.

All readers return a :class:`LandmarkSet` whose points are **LPS millimetres** (3D files; RAS files are converted)
or **pixels** (ANHIR, x right and y down). Readers validate everything (columns, frame, duplicate labels, numbers)
and raise :class:`CrossModalRegError` naming the file and what to fix.

CSV layout written and read here (the frame is part of the column names)::

    label,x_lps,y_lps,z_lps[,annotator,image,repeat,placed,modified]

``x_ras,y_ras,z_ras`` is accepted too (converted to LPS). Per-point metadata is carried in ``.fcsv`` and
``.mrk.json`` descriptions as ``annotator=...;image=...;repeat=...;placed=...;modified=...``.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import CrossModalRegError
from .protocol import validate_labels
from .storage import write_json_atomic_durable, write_text_atomic_durable

META_KEYS = ("annotator", "image", "repeat", "placed", "modified")
F3 = np.array([-1.0, -1.0, 1.0])


@dataclass
class LandmarkSet:
    """Labelled landmark positions read from (or to be written to) a file.

    ``points`` is (N, 3) LPS mm for ``frame == "LPS"`` or (N, 2) pixels for ``frame == "pixel"``.
    ``metadata`` holds per-point dicts (annotator, image, repeat, placed, modified) when the file had them.
    """

    labels: list[str]
    points: np.ndarray
    frame: str = "LPS"
    source: str = ""
    descriptions: list[str] = field(default_factory=list)
    metadata: list[dict] = field(default_factory=list)

    @property
    def units(self) -> str:
        return "mm" if self.frame == "LPS" else "pixel"


def format_metadata(meta: dict) -> str:
    """``key=value;...`` text of a point's metadata (for ``.fcsv``/``.mrk.json`` descriptions)."""
    return ";".join(f"{k}={meta[k]}" for k in META_KEYS if meta.get(k) not in (None, ""))


def parse_metadata(text: str) -> dict:
    """Inverse of :func:`format_metadata`; returns {} for a description that is not metadata."""
    out = {}
    for part in (text or "").split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            if k.strip() in META_KEYS:
                out[k.strip()] = v.strip()
    return out


def _finish(labels, points, frame, source, descriptions=None, metadata=None):
    validate_labels(labels, source=source)
    pts = np.asarray(points, dtype=float).reshape(len(labels), -1) if labels else np.zeros((0, 3 if frame == "LPS"
                                                                                               else 2))
    if not np.all(np.isfinite(pts)):
        bad = [labels[i] for i in np.nonzero(~np.all(np.isfinite(pts), axis=1))[0]]
        raise CrossModalRegError(f"{source}: landmarks {bad} have missing or non-numeric coordinates")
    return LandmarkSet(labels, pts, frame, source, list(descriptions or [""] * len(labels)),
                       list(metadata or [{} for _ in labels]))


# --------------------------------------------------------------------------------------------------- CSV
def read_landmarks_csv(path: str) -> LandmarkSet:
    """Read a CSV whose header names the frame: ``label,x_lps,y_lps,z_lps`` or ``label,x_ras,y_ras,z_ras``."""
    rows, header = _read_csv(path)
    cols = [h.strip().lower() for h in header]
    if "label" not in cols:
        raise CrossModalRegError(f"{path}: missing column 'label'; the header must be label,x_lps,y_lps,z_lps")
    frame = None
    for fr in ("lps", "ras"):
        if any(c.endswith("_" + fr) for c in cols):
            frame = fr
            missing = [f"{a}_{fr}" for a in "xyz" if f"{a}_{fr}" not in cols]
            if missing:
                raise CrossModalRegError(f"{path}: missing column(s) {missing}; the header must be "
                                         f"label,x_{fr},y_{fr},z_{fr}")
    if frame is None:
        if {"x", "y"} <= set(cols):
            raise CrossModalRegError(
                f"{path}: the header does not state the frame (columns 'x','y','z'); rename them to x_lps,y_lps,"
                "z_lps or x_ras,y_ras,z_ras (for ANHIR pixel files use read_anhir_csv)")
        raise CrossModalRegError(f"{path}: missing coordinate columns; the header must be label,x_lps,y_lps,z_lps")
    ix = [cols.index(f"{a}_{frame}") for a in "xyz"]
    il = cols.index("label")
    labels, pts, metas = [], [], []
    for n, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            labels.append(row[il].strip())
            pts.append([float(row[i]) for i in ix])
        except (ValueError, IndexError) as exc:
            raise CrossModalRegError(f"{path}, line {n}: coordinates are missing or not numbers ({exc})") from exc
        metas.append({k: row[cols.index(k)].strip() for k in META_KEYS if k in cols and cols.index(k) < len(row)})
    pts = np.array(pts, dtype=float).reshape(-1, 3)
    if frame == "ras":
        pts = pts * F3
    return _finish(labels, pts, "LPS", path, metadata=metas)


def write_landmarks_csv(path: str, labels, points_lps, *, frame: str = "LPS", metadata=None) -> str:
    """Write a CSV (atomically) with the frame in the header; ``points_lps`` are LPS mm, written in ``frame``."""
    frame = frame.upper()
    if frame not in ("LPS", "RAS"):
        raise CrossModalRegError(f"frame must be LPS or RAS, not {frame}")
    pts = np.asarray(points_lps, dtype=float).reshape(-1, 3) * (F3 if frame == "RAS" else 1.0)
    f = frame.lower()
    header = ["label", f"x_{f}", f"y_{f}", f"z_{f}"] + (list(META_KEYS) if metadata is not None else [])
    lines = [",".join(header)]
    for i, (label, p) in enumerate(zip(labels, pts)):
        cells = [str(label)] + [repr(float(v)) for v in p]
        if metadata is not None:
            cells += [str(metadata[i].get(k, "")) for k in META_KEYS]
        lines.append(",".join(cells))
    return write_text_atomic_durable(path, "\n".join(lines) + "\n")


def _read_csv(path):
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError as exc:
        raise CrossModalRegError(f"landmark file not found: {path}") from exc
    rows = [r for r in rows if r and not r[0].lstrip().startswith("#")]
    if not rows:
        raise CrossModalRegError(f"{path} is empty: expected a header row and one row per landmark")
    return rows[1:], rows[0]


# ------------------------------------------------------------------------------------------------- ANHIR
def read_anhir_csv(path: str) -> LandmarkSet:
    """Read an ANHIR landmark CSV: header ``,X,Y``, one row per landmark, pixel coordinates (x right, y down).

    Labels are the first column (the row index) when present, else 1, 2, ... in row order.
    """
    rows, header = _read_csv(path)
    cols = [h.strip() for h in header]
    missing = [c for c in ("X", "Y") if c not in cols]
    if missing:
        raise CrossModalRegError(f"{path}: missing column(s) {missing}; an ANHIR landmark file has the header ',X,Y'")
    if "Z" in cols or "z" in cols:
        raise CrossModalRegError(f"{path}: has a Z column; ANHIR files are 2D pixels (use a CSV with x_lps,...)")
    ix, iy = cols.index("X"), cols.index("Y")
    labels, pts = [], []
    for n, row in enumerate(rows, start=2):
        try:
            pts.append([float(row[ix]), float(row[iy])])
        except (ValueError, IndexError) as exc:
            raise CrossModalRegError(f"{path}, line {n}: X or Y is missing or not a number") from exc
        label = row[0].strip() if ix != 0 and row[0].strip() else str(len(labels) + 1)
        labels.append(label)
    return _finish(labels, pts, "pixel", path)


def write_anhir_csv(path: str, points_pixels, labels=None) -> str:
    """Write ANHIR layout (``,X,Y``) atomically; ``points_pixels`` (N, 2) in pixels."""
    pts = np.asarray(points_pixels, dtype=float).reshape(-1, 2)
    labels = list(labels) if labels is not None else [str(i + 1) for i in range(len(pts))]
    lines = [",X,Y"] + [f"{lab},{float(p[0])!r},{float(p[1])!r}" for lab, p in zip(labels, pts)]
    return write_text_atomic_durable(path, "\n".join(lines) + "\n")


# -------------------------------------------------------------------------------------------------- FCSV
FCSV_COLUMNS = "id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID"


def read_fcsv(path: str) -> LandmarkSet:
    """Read a Slicer ``.fcsv`` file (coordinate system LPS or RAS, as its header says) into LPS."""
    try:
        with open(path, newline="") as f:
            lines = f.read().splitlines()
    except FileNotFoundError as exc:
        raise CrossModalRegError(f"landmark file not found: {path}") from exc
    system, columns = None, None
    data = []
    for line in lines:
        if line.startswith("#"):
            key, _, value = line[1:].partition("=")
            key, value = key.strip().lower(), value.strip()
            if key == "coordinatesystem":
                system = {"0": "RAS", "1": "LPS", "RAS": "RAS", "LPS": "LPS"}.get(value.upper(), value)
            elif key == "columns":
                columns = [c.strip() for c in value.split(",")]
        elif line.strip():
            data.append(line)
    if system not in ("RAS", "LPS"):
        raise CrossModalRegError(
            f"{path}: coordinate system '{system}' is not LPS or RAS; add '# CoordinateSystem = LPS' (or RAS) "
            "to the header")
    columns = columns or FCSV_COLUMNS.split(",")
    missing = [c for c in ("x", "y", "z", "label") if c not in columns]
    if missing:
        raise CrossModalRegError(f"{path}: missing column(s) {missing} in '# columns = ...'")
    labels, pts, descs, metas = [], [], [], []
    for n, row in enumerate(csv.reader(data), start=1):
        try:
            pts.append([float(row[columns.index(a)]) for a in "xyz"])
        except (ValueError, IndexError) as exc:
            raise CrossModalRegError(f"{path}, point {n}: coordinates missing or not numbers") from exc
        labels.append(row[columns.index("label")].strip())
        desc = row[columns.index("desc")] if "desc" in columns and columns.index("desc") < len(row) else ""
        descs.append(desc)
        metas.append(parse_metadata(desc))
    pts = np.array(pts, dtype=float).reshape(-1, 3)
    if system == "RAS":
        pts = pts * F3
    return _finish(labels, pts, "LPS", path, descs, metas)


def write_fcsv(path: str, labels, points_lps, *, descriptions=None, coordinate_system: str = "LPS",
               name: str = "F") -> str:
    """Write a Slicer ``.fcsv`` (version 4.11 layout) atomically; ``points_lps`` are LPS mm."""
    cs = coordinate_system.upper()
    if cs not in ("LPS", "RAS"):
        raise CrossModalRegError(f"coordinate_system must be LPS or RAS, not {coordinate_system}")
    pts = np.asarray(points_lps, dtype=float).reshape(-1, 3) * (F3 if cs == "RAS" else 1.0)
    descriptions = list(descriptions) if descriptions is not None else [""] * len(pts)
    out = ["# Markups fiducial file version = 4.11", f"# CoordinateSystem = {cs}", f"# columns = {FCSV_COLUMNS}"]
    for i, (label, p) in enumerate(zip(labels, pts)):
        desc = str(descriptions[i]).replace(",", " ")
        x, y, z = (float(v) for v in p)
        out.append(f"{name}_{i},{x!r},{y!r},{z!r},0,0,0,1,1,1,0,{label},{desc},")
    return write_text_atomic_durable(path, "\n".join(out) + "\n")


# ---------------------------------------------------------------------------------------------- MRK.JSON
def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_mrk_json(data, path: str) -> dict:
    """The first markups of a parsed ``.mrk.json``, after checking its structure (a list of markups objects, each
    control point an object whose position is 3 numbers); raise naming the file and the entry otherwise."""
    markups = data.get("markups") if isinstance(data, dict) else None
    if not isinstance(markups, list) or not markups:
        raise CrossModalRegError(f"{path}: no 'markups' list; is this a Slicer .mrk.json file?")
    m = markups[0]
    if not isinstance(m, dict):
        raise CrossModalRegError(f"{path}: markups[0] must be an object {{...}}, got {m!r:.40}")
    points = m.get("controlPoints", [])
    if not isinstance(points, list):
        raise CrossModalRegError(f"{path}: markups[0].controlPoints must be a list")
    for i, cp in enumerate(points):
        if not isinstance(cp, dict):
            raise CrossModalRegError(f"{path}: control point {i + 1} must be an object {{...}}, got {cp!r:.40}")
        pos = cp.get("position")
        if pos is None or cp.get("positionStatus", "defined") != "defined":
            continue  # an unplaced point: Slicer writes its position as "" and readers skip it
        if not isinstance(pos, list) or len(pos) != 3 or not all(_is_number(v) for v in pos):
            raise CrossModalRegError(f"{path}: control point '{cp.get('label', i + 1)}' has position {pos!r:.60}; "
                                     "a position is 3 numbers [x, y, z] in mm")
    return m


def read_mrk_json(path: str, *, defined_only: bool = True) -> LandmarkSet:
    """Read the first markups of a Slicer ``.mrk.json`` into LPS (pure JSON; unplaced points skipped)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError as exc:
        raise CrossModalRegError(f"landmark file not found: {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CrossModalRegError(f"{path} is not valid JSON: {exc}") from exc
    m = check_mrk_json(data, path)
    system = str(m.get("coordinateSystem", "LPS")).upper()
    if system not in ("LPS", "RAS"):
        raise CrossModalRegError(f"{path}: coordinateSystem '{system}' is not LPS or RAS")
    labels, pts, descs, metas = [], [], [], []
    for cp in m.get("controlPoints", []):
        status = cp.get("positionStatus", "defined")
        if defined_only and status != "defined":
            continue
        if "position" not in cp:
            raise CrossModalRegError(f"{path}: control point '{cp.get('label')}' has no position")
        labels.append(str(cp.get("label", "")))
        pts.append([float(v) for v in cp["position"]])
        descs.append(str(cp.get("description", "")))
        metas.append(parse_metadata(str(cp.get("description", ""))))
    pts = np.array(pts, dtype=float).reshape(-1, 3)
    if system == "RAS":
        pts = pts * F3
    return _finish(labels, pts, "LPS", path, descs, metas)


def write_mrk_json(path: str, labels, points_lps, *, descriptions=None, name: str = "F") -> str:
    """Write a minimal Slicer fiducial ``.mrk.json`` (LPS) atomically, without Slicer.

    Inside Slicer prefer :func:`.mrml_layer.export_markups_json`, which uses Slicer's storage node.
    """
    pts = np.asarray(points_lps, dtype=float).reshape(-1, 3)
    descriptions = list(descriptions) if descriptions is not None else [""] * len(pts)
    data = {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
                   "Schema/markups-schema-v1.0.3.json#",
        "markups": [{
            "type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm", "name": name,
            "controlPoints": [
                {"id": str(i + 1), "label": str(lab), "description": str(descriptions[i]), "position": [float(v) for v in p],
                 "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0], "selected": True,
                 "locked": False, "visibility": True, "positionStatus": "defined"}
                for i, (lab, p) in enumerate(zip(labels, pts))],
        }],
    }
    return write_json_atomic_durable(path, data)


# ---------------------------------------------------------------------------------------------- dispatch
def read_landmark_file(path: str, *, dimension: int | None = None) -> LandmarkSet:
    """Read any supported landmark file, chosen by extension (``.mrk.json``, ``.fcsv``, ``.csv``).

    A ``.csv`` with ``x_lps``/``x_ras`` columns is read as a frame-stated CSV; one with ``X,Y`` columns as ANHIR
    (2D pixels). ``dimension`` (2 or 3), when given, rejects a file of the other kind with a message.
    """
    low = path.lower()
    if low.endswith(".mrk.json") or low.endswith(".json"):
        result = read_mrk_json(path)
    elif low.endswith(".fcsv"):
        result = read_fcsv(path)
    elif low.endswith(".csv") or low.endswith(".tsv"):
        _, header = _read_csv(path)
        cols = [h.strip() for h in header]
        result = read_anhir_csv(path) if ("X" in cols and "Y" in cols) else read_landmarks_csv(path)
    else:
        raise CrossModalRegError(
            f"{os.path.basename(path)}: unknown landmark file type; use .mrk.json, .fcsv or .csv")
    if dimension is not None and result.points.shape[1] != dimension:
        kind = "2D pixel (ANHIR)" if result.points.shape[1] == 2 else "3D (LPS mm)"
        raise CrossModalRegError(
            f"{path} holds {kind} landmarks but {dimension}D landmarks are expected here; check the file and frame")
    return result
