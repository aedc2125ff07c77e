"""Landmark files: the landmark CSV, ANHIR CSV (2D pixels), Slicer ``.fcsv`` and ``.mrk.json``; one type for all.

Pure Python (no ``slicer``): the command line reads every format without Slicer. The MRML layer
(:mod:`.mrml_layer`) writes and reads ``.mrk.json`` through Slicer's own ``vtkMRMLMarkupsJsonStorageNode``
for nodes in a scene; every command reads ``.mrk.json`` files with :func:`read_mrk_json`.

All readers return a :class:`LandmarkSet` whose points are **LPS millimetres** (3D files; RAS files are converted)
or **pixels** (2D: x right along the columns, y down along the rows, as ANHIR). Readers validate everything
(columns, frame, duplicate labels, numbers) and raise :class:`CrossModalRegError` naming the file and what to fix.

The landmark CSV (written by every command, read by every command; docs/landmarks.md "Landmark files"): a header
row whose coordinate columns name the frame, then one row per landmark::

    label,x_lps,y_lps,z_lps[,annotator,image,repeat,placed,modified]     3D, LPS millimetres
    label,x_pixel,y_pixel                                                2D, pixels of the image

``x_ras,y_ras,z_ras`` is read too (converted to LPS), and so is the older dialect of ``crossmodalreg validate``:
a comment line ``# frame: LPS`` (or ``RAS``) and rows ``label,x,y,z`` (an optional ``label,x,y,z`` header).
Per-point metadata is carried in ``.fcsv`` and ``.mrk.json`` descriptions as
``annotator=...;image=...;repeat=...;placed=...;modified=...``.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import CrossModalRegError
from .protocol import validate_labels
from .storage import write_json_atomic_durable, write_text_atomic_durable

META_KEYS = ("annotator", "image", "repeat", "placed", "modified")
F3 = np.array([-1.0, -1.0, 1.0])
FRAMES = ("LPS", "pixel")
# The coordinate columns of the landmark CSV per frame written ("RAS" is a 3D file frame, read into LPS).
CSV_AXES = {"LPS": ("x_lps", "y_lps", "z_lps"), "RAS": ("x_ras", "y_ras", "z_ras"), "pixel": ("x_pixel", "y_pixel")}


@dataclass
class LandmarkSet:
    """Labelled landmark positions in one image: the one landmark type of the package.

    ``points`` is (N, 3) LPS mm for ``frame == "LPS"`` ((N, 2) for points in a 2D image's physical plane) or
    (N, 2) pixels for ``frame == "pixel"``. Labels are unique, non-empty strings; points are finite. ``source``
    (the file, or the node's name) is how messages name the set. ``metadata`` holds per-point dicts (annotator,
    image, repeat, placed, modified) when the file had them.
    """

    labels: list[str]
    points: np.ndarray
    frame: str = "LPS"
    source: str = ""
    descriptions: list[str] = field(default_factory=list)
    metadata: list[dict] = field(default_factory=list)

    def __post_init__(self):
        name = self.source or "landmarks"
        if self.frame not in FRAMES:
            raise CrossModalRegError(f"{name}: frame must be one of {', '.join(FRAMES)}, not '{self.frame}'")
        self.labels = [str(v) for v in self.labels]
        _check_unique_labels(self.labels, name)
        pts = np.asarray(self.points, dtype=float)
        if pts.size == 0:
            pts = pts.reshape(0, 3 if self.frame == "LPS" else 2)
        if pts.ndim != 2 or len(pts) != len(self.labels):
            raise CrossModalRegError(f"{name}: {len(self.labels)} labels for {len(pts)} points")
        if pts.shape[1] != 2 and (self.frame == "pixel" or pts.shape[1] != 3):
            raise CrossModalRegError(f"{name}: {pts.shape[1]} coordinates per point; {self.frame} points need "
                                     + ("2 (x, y pixels)" if self.frame == "pixel" else "3 (x, y, z LPS mm)"))
        if not np.all(np.isfinite(pts)):
            bad = [self.labels[i] for i in np.nonzero(~np.all(np.isfinite(pts), axis=1))[0]]
            raise CrossModalRegError(f"{name}: landmarks {bad} have missing or non-numeric coordinates")
        self.points = pts
        self.descriptions = list(self.descriptions) or [""] * len(self.labels)
        self.metadata = list(self.metadata) or [{} for _ in self.labels]

    @property
    def units(self) -> str:
        return "mm" if self.frame == "LPS" else "pixel"

    @property
    def dimension(self) -> int:
        return int(self.points.shape[1])

    def __len__(self) -> int:
        return len(self.labels)


def _check_unique_labels(labels, name):
    """Non-empty, unique labels (what pairing needs); the files' stricter rules are :func:`.protocol.validate_labels`."""
    seen = set()
    for label in labels:
        if not label.strip():
            raise CrossModalRegError(f"{name}: a landmark has an empty label; give every landmark a unique label")
        if label in seen:
            raise CrossModalRegError(f"{name}: duplicate landmark label '{label}'; labels must be unique")
        seen.add(label)


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
    validate_labels(labels, source=source)  # a file's labels follow the protocol rules (no comma, ...)
    return LandmarkSet(labels, points, frame, source, list(descriptions or []), list(metadata or []))


# --------------------------------------------------------------------------------------------------- CSV
_FRAME_COMMENT = re.compile(r"^\s*#\s*frame\s*[:=]\s*(\w+)", re.I)


def _csv_frame(path, cols):
    """The frame ("lps", "ras" or "pixel") that the header's coordinate columns name, checked complete."""
    for frame, axes in (("lps", CSV_AXES["LPS"]), ("ras", CSV_AXES["RAS"]), ("pixel", CSV_AXES["pixel"])):
        if any(c.endswith("_" + frame) for c in cols):
            missing = [a for a in axes if a not in cols]
            if missing:
                raise CrossModalRegError(f"{path}: missing column(s) {missing}; the header must be "
                                         f"label,{','.join(axes)}")
            return frame
    if {"x", "y"} <= set(cols):
        raise CrossModalRegError(
            f"{path} does not state its frame (columns 'x','y','z'); rename them to x_lps,y_lps,z_lps "
            "(3D, LPS mm) or x_pixel,y_pixel (2D, pixels), or add a first line '# frame: LPS'")
    raise CrossModalRegError(f"{path}: missing coordinate columns; the header must be label,x_lps,y_lps,z_lps "
                             "(3D, LPS mm) or label,x_pixel,y_pixel (2D, pixels)")


def read_landmarks_csv(path: str) -> LandmarkSet:
    """Read the landmark CSV: ``label,x_lps,y_lps,z_lps`` (or ``x_ras,...``) in mm, or ``label,x_pixel,y_pixel``.

    A file whose comment lines say ``# frame: LPS`` (or ``RAS``) is read in the older ``label,x,y,z`` dialect.
    """
    comments, rows = _csv_lines(path)
    frame = next((m.group(1) for m in map(_FRAME_COMMENT.match, comments) if m), None)
    if frame is not None:
        return _read_frame_comment_csv(path, frame.upper(), rows)
    header, rows = rows[0], rows[1:]
    cols = [h.strip().lower() for h in header]
    if "label" not in cols:
        raise CrossModalRegError(
            f"{path} does not state its frame: its first row must be the header label,x_lps,y_lps,z_lps (3D, LPS "
            "mm) or label,x_pixel,y_pixel (2D, pixels); or add a first line '# frame: LPS' before rows label,x,y,z")
    frame = _csv_frame(path, cols)
    ix = [cols.index(a) for a in CSV_AXES[frame.upper() if frame != "pixel" else "pixel"]]
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
    pts = np.array(pts, dtype=float).reshape(-1, len(ix))
    if frame == "ras":
        pts = pts * F3
    return _finish(labels, pts, "pixel" if frame == "pixel" else "LPS", path, metadata=metas)


def _read_frame_comment_csv(path, frame, rows):
    """The older ``validate`` dialect: ``# frame: LPS|RAS`` and rows ``label,x,y,z`` (optional header)."""
    if frame not in ("LPS", "RAS"):
        raise CrossModalRegError(f"{path}: unknown frame '{frame}' in '# frame:'; use LPS or RAS")
    labels, pts = [], []
    for n, row in enumerate(rows, start=1):
        first = row[0].strip()
        if not any(cell.strip() for cell in row) or first.lower() == "label":
            continue
        try:
            pts.append([float(v) for v in row[1:4]])
        except ValueError as exc:
            raise CrossModalRegError(f"{path}, data row {n}: coordinates must be numbers (label,x,y,z)") from exc
        if len(pts[-1]) != 3:
            raise CrossModalRegError(f"{path}, data row {n}: expected label,x,y,z")
        labels.append(first)
    if not labels:
        raise CrossModalRegError(f"{path} has no landmark")
    pts = np.array(pts, dtype=float) * (F3 if frame == "RAS" else 1.0)
    return _finish(labels, pts, "LPS", path)


def write_landmarks_csv(path: str, labels, points, *, frame: str = "LPS", metadata=None) -> str:
    """Write the landmark CSV atomically; the header's coordinate columns state the frame.

    ``frame`` "LPS" (default) or "RAS": ``points`` are (N, 3) LPS mm, written in that frame; "pixel": (N, 2)
    pixels (x right, y down). ``metadata``: per-point dicts of :data:`META_KEYS`, written as extra columns.
    """
    frame = frame if frame == "pixel" else str(frame).upper()
    if frame not in CSV_AXES:
        raise CrossModalRegError(f"frame must be LPS, RAS or pixel, not {frame}")
    axes = CSV_AXES[frame]
    pts = np.asarray(points, dtype=float).reshape(-1, len(axes)) * (F3 if frame == "RAS" else 1.0)
    LandmarkSet(labels, pts, "pixel" if frame == "pixel" else "LPS", path)  # refuse what could not be read back
    validate_labels([str(v) for v in labels], source=path)  # and labels the CSV cannot hold
    header = ["label", *axes] + (list(META_KEYS) if metadata is not None else [])
    lines = [",".join(header)]
    for i, (label, p) in enumerate(zip(labels, pts)):
        cells = [str(label)] + [repr(float(v)) for v in p]
        if metadata is not None:
            cells += [str(metadata[i].get(k, "")) for k in META_KEYS]
        lines.append(",".join(cells))
    return write_text_atomic_durable(path, "\n".join(lines) + "\n")


def write_landmark_set_csv(path: str, landmarks: LandmarkSet) -> str:
    """Write a :class:`LandmarkSet` as the landmark CSV in its own frame (LPS mm or pixels)."""
    if landmarks.frame == "LPS" and landmarks.dimension != 3:
        raise CrossModalRegError(f"{path}: only 3D LPS or 2D pixel landmarks have a CSV frame")
    meta = landmarks.metadata if any(landmarks.metadata) else None
    return write_landmarks_csv(path, landmarks.labels, landmarks.points, frame=landmarks.frame, metadata=meta)


def _csv_lines(path):
    """(comment lines, rows) of a CSV; rows without comments; a missing or empty file is an error."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError as exc:
        raise CrossModalRegError(f"landmark file not found: {path}") from exc
    except UnicodeDecodeError as exc:
        raise CrossModalRegError(f"{path} is not a text (UTF-8) CSV file") from exc
    comments = [",".join(r) for r in rows if r and r[0].lstrip().startswith("#")]
    rows = [r for r in rows if r and not r[0].lstrip().startswith("#")]
    if not rows:
        raise CrossModalRegError(f"{path} is empty: expected a header row and one row per landmark")
    return comments, rows


def _read_csv(path):
    _, rows = _csv_lines(path)
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
    """Read any supported landmark file, chosen by extension: the one reader every command and module uses.

    ``.mrk.json`` (Slicer markups), ``.fcsv`` (Slicer), ``.csv``/``.txt``: the landmark CSV (frame in the column
    names, or the older ``# frame:`` dialect) or, with ``X,Y`` columns, ANHIR (2D pixels). ``dimension`` (2 or 3),
    when given, rejects a file of the other kind with a message.
    """
    low = path.lower()
    if os.path.isdir(path):
        raise CrossModalRegError(f"{path} is a folder; give a landmark file (.mrk.json, .fcsv or .csv)")
    if low.endswith(".mrk.json") or low.endswith(".json"):
        result = read_mrk_json(path)
    elif low.endswith(".fcsv"):
        result = read_fcsv(path)
    elif low.endswith((".csv", ".txt")):
        _, header = _read_csv(path)
        cols = [h.strip() for h in header]
        result = read_anhir_csv(path) if ("X" in cols and "Y" in cols) else read_landmarks_csv(path)
    else:
        raise CrossModalRegError(
            f"{os.path.basename(path)}: unknown landmark file type; use .mrk.json, .fcsv or .csv")
    if dimension is not None and result.points.shape[1] != dimension:
        kind = "2D pixel" if result.frame == "pixel" else f"{result.points.shape[1]}D (LPS mm)"
        raise CrossModalRegError(
            f"{path} holds {kind} landmarks but {dimension}D landmarks are expected here; check the file and frame")
    return result
