"""Annotation sessions: every landmark point with its annotator, image and timestamps, saved as it changes.

A session folder holds::

    session.json                                  protocol, image names, frame and units, creation time
    annotations/<annotator>__<image>__r<repeat>.json   one file per annotator, image and repeat

``images`` maps image names to image files: ``fixed`` and ``moving`` for a session made in Slicer, or any
names (e.g. one per stain) for a session made by ``crossmodalreg landmarks import`` (:mod:`.importer`), which also
records each image's ``image_geometry`` (size, spacing, origin, direction; see :mod:`.units`). The full layout
is documented in ``docs/landmarks.md``.

Each annotation file lists the placed points of one annotator on one image (``fixed`` or ``moving``, or a name
of the session's images) in one repeat (1 for the first annotation, 2 for a second, blinded, repeat used for
repeatability)::

    {"schema": "crossmodalreg-landmark-annotation", "schema_version": 1, "annotator": "Ann", "image": "fixed",
     "repeat": 1, "frame": "LPS", "units": "mm", "image_name": "CT", "protocol": {"name": ..., "version": ...},
     "points": [{"label": "L01", "position": [x, y, z], "placed": ISO-time, "modified": ISO-time}, ...]}

Every change rewrites only the file it concerns, atomically and durably (temporary file, fsync, rename), so a
crash or a killed process loses at most the change in progress and never corrupts what was saved. Bad input is
rejected before anything is written.

Positions are LPS millimetres for a 3D protocol, and pixels (x right, y down) for a 2D protocol (the unit rule
of :mod:`.units`).
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass

import numpy as np

from ..errors import CrossModalRegError
from .protocol import IMAGES, LandmarkProtocol, validate_labels
from .storage import utc_now_iso, write_json_atomic_durable

SESSION_FILE = "session.json"
ANNOTATIONS_FOLDER = "annotations"
SESSION_SCHEMA = "crossmodalreg-landmark-session"
ANNOTATION_SCHEMA = "crossmodalreg-landmark-annotation"
SESSION_SCHEMA_VERSION = 1
# Where the saved positions live: the annotated image's own physical space (its voxel grid's LPS frame), never the
# frame a registration transform displays it in. Written into every annotation file.
IMAGE_OWN_SPACE = "image (own physical space of the annotated image, before any registration transform)"


@dataclass
class LandmarkPoint:
    """One placed point.

    Attributes
    ----------
    label : str
        Protocol label of the landmark.
    annotator : str
        Who placed it.
    image : str
        ``"fixed"`` or ``"moving"``.
    position : numpy.ndarray
        LPS millimetres (3D protocol) or pixels (2D protocol).
    placed, modified : str
        ISO 8601 UTC times of the first placement and of the last move.
    repeat : int
        1 for the first annotation of this annotator, 2 for a repeat.
    """

    label: str
    annotator: str
    image: str
    position: np.ndarray
    placed: str
    modified: str
    repeat: int = 1


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_") or "annotator"


def _check_image(image: str) -> None:
    if image not in IMAGES:
        raise CrossModalRegError(f"image must be 'fixed' or 'moving', not '{image}'")


def _check_annotator(annotator: str) -> None:
    if not isinstance(annotator, str) or not annotator.strip():
        raise CrossModalRegError("the annotator name is empty; enter your name or initials before placing landmarks")


class AnnotationSession:
    """A landmark annotation session stored in a folder (see the module docstring). No ``slicer`` needed.

    Create one with :meth:`create` (new folder) or :meth:`open` (existing folder). Every change method
    validates first, then saves the one file it changes atomically.
    """

    def __init__(self, folder: str, protocol: LandmarkProtocol, *, images: dict | None = None, created: str = ""):
        self.folder = os.path.abspath(folder)
        self.protocol = protocol
        self.images = dict(images or {"fixed": "", "moving": ""})
        self.created = created or utc_now_iso()
        # image name -> {"path", "size", "spacing", "origin", "direction", "scale"} (see create_for_images)
        self.image_geometry: dict[str, dict] = {}
        # (annotator, image, repeat) -> {label: LandmarkPoint}, in placement order
        self._points: dict[tuple[str, str, int], dict[str, LandmarkPoint]] = {}

    # ------------------------------------------------------------------------------------------------ frames
    @property
    def frame(self) -> str:
        """``"LPS"`` for a 3D protocol, ``"pixel"`` (x right, y down) for a 2D protocol."""
        return "LPS" if self.protocol.dimension == 3 else "pixel"

    @property
    def units(self) -> str:
        return "mm" if self.protocol.dimension == 3 else "pixel"

    # ------------------------------------------------------------------------------------------ create/open
    @classmethod
    def create(cls, folder: str, protocol: LandmarkProtocol, *, fixed_image: str = "", moving_image: str = ""):
        """Start a new session in ``folder`` (created if needed). Refuses a folder that already holds a session."""
        path = os.path.join(folder, SESSION_FILE)
        if os.path.exists(path):
            raise CrossModalRegError(
                f"{folder} already holds an annotation session; open it to continue, or choose an empty folder"
            )
        session = cls(folder, protocol, images={"fixed": fixed_image, "moving": moving_image})
        os.makedirs(os.path.join(session.folder, ANNOTATIONS_FOLDER), exist_ok=True)
        write_json_atomic_durable(path, session._session_dict())
        return session

    @classmethod
    def create_for_images(cls, folder: str, protocol: LandmarkProtocol, images: dict[str, str], *,
                          image_geometry: dict[str, dict] | None = None) -> AnnotationSession:
        """Start a new session over any number of named images (not only ``fixed``/``moving``).

        Parameters
        ----------
        images : dict
            Image name -> image file (or display name). Names are what annotation files and tables call the
            images: letters, digits, ``.``, ``-`` and ``_`` (no ``__``).
        image_geometry : dict, optional
            Image name -> {"path", "size", "spacing", "origin", "direction", ...} as SimpleITK reads the image
            (see :func:`.units.image_geometry`); saved in ``session.json``.
        """
        if not images:
            raise CrossModalRegError("a session needs at least one image; name the images and their files")
        for name in images:
            if not re.fullmatch(r"[A-Za-z0-9.-]+(_[A-Za-z0-9.-]+)*", str(name)):
                raise CrossModalRegError(
                    f"image name '{name}': use letters, digits, '.', '-' and single '_' only (it goes into file "
                    "names)")
        path = os.path.join(folder, SESSION_FILE)
        if os.path.exists(path):
            raise CrossModalRegError(
                f"{folder} already holds an annotation session; open it to continue, or choose an empty folder"
            )
        session = cls(folder, protocol, images={str(k): str(v) for k, v in images.items()})
        session.image_geometry = {str(k): dict(v) for k, v in (image_geometry or {}).items()}
        os.makedirs(os.path.join(session.folder, ANNOTATIONS_FOLDER), exist_ok=True)
        write_json_atomic_durable(path, session._session_dict())
        return session

    def check_image_name(self, image: str) -> None:
        """Raise unless ``image`` is one of this session's images (``fixed``/``moving`` for a two-image session)."""
        if image not in self.images:
            if set(self.images) == set(IMAGES):
                _check_image(image)
            raise CrossModalRegError(
                f"image '{image}' is not in this session; its images are {', '.join(map(repr, self.images))}")

    @classmethod
    def open(cls, folder: str) -> AnnotationSession:
        """Load a session folder written by :meth:`create` (with every annotation file in it)."""
        path = os.path.join(folder, SESSION_FILE)
        if not os.path.isfile(path):
            raise CrossModalRegError(
                f"{folder} is not a landmark session folder (no {SESSION_FILE}); choose the folder the session "
                "was saved in, or start a new session"
            )
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as exc:
                raise CrossModalRegError(f"{path} is not valid JSON: {exc}") from exc
        if data.get("schema") != SESSION_SCHEMA or int(data.get("schema_version", 0)) > SESSION_SCHEMA_VERSION:
            raise CrossModalRegError(
                f"{path}: not a CrossModalReg landmark session of schema version <= {SESSION_SCHEMA_VERSION}"
            )
        protocol = LandmarkProtocol.from_dict(data["protocol"], source=path)
        session = cls(folder, protocol, images=data.get("images"), created=data.get("created", ""))
        session.image_geometry = dict(data.get("image_geometry") or {})
        for ann_path in sorted(glob.glob(os.path.join(session.folder, ANNOTATIONS_FOLDER, "*.json"))):
            session._load_annotation_file(ann_path)
        return session

    def _session_dict(self) -> dict:
        return {
            "schema": SESSION_SCHEMA,
            "schema_version": SESSION_SCHEMA_VERSION,
            "created": self.created,
            "frame": self.frame,
            "units": self.units,
            "images": self.images,
            "protocol": self.protocol.to_dict(),
            **({"image_geometry": self.image_geometry} if self.image_geometry else {}),
        }

    def _load_annotation_file(self, path: str) -> None:
        """Load one annotation file; a file that lacks its annotator, image or well-formed points is refused
        naming the file and the entry (it was a KeyError traceback)."""
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as exc:
                raise CrossModalRegError(f"{path} is not valid JSON ({exc}); restore it or remove it") from exc
        if data.get("schema") != ANNOTATION_SCHEMA:
            return
        if data.get("frame", self.frame) != self.frame:
            raise CrossModalRegError(f"{path}: frame '{data.get('frame')}' but the session is in {self.frame}")
        key = _annotation_key(data, path)
        points = {}
        for i, p in enumerate(data.get("points", [])):
            label, position = _annotation_point(p, i, path, self.protocol.dimension)
            if label not in self.protocol.labels:
                raise CrossModalRegError(self.protocol.unknown_label_message(label, path))
            points[label] = LandmarkPoint(label, key[0], key[1], position, str(p.get("placed", "")),
                                          str(p.get("modified", "")), key[2])
        self._points[key] = points

    # ------------------------------------------------------------------------------------------------- paths
    def annotation_path(self, annotator: str, image: str, repeat: int = 1) -> str:
        """The file that holds ``annotator``'s points on ``image`` for ``repeat``."""
        return os.path.join(self.folder, ANNOTATIONS_FOLDER, f"{_slug(annotator)}__{image}__r{int(repeat)}.json")

    def _save(self, key) -> None:
        annotator, image, repeat = key
        pts = self._points.get(key, {})
        data = {
            "schema": ANNOTATION_SCHEMA,
            "schema_version": SESSION_SCHEMA_VERSION,
            "annotator": annotator,
            "image": image,
            "repeat": repeat,
            "frame": self.frame,
            "space": IMAGE_OWN_SPACE,
            "units": self.units,
            "image_name": self.images.get(image, ""),
            "protocol": {"name": self.protocol.name, "version": self.protocol.version},
            "points": [
                {"label": p.label, "position": [float(v) for v in p.position], "placed": p.placed,
                 "modified": p.modified}
                for p in sorted(pts.values(), key=lambda p: self.protocol.labels.index(p.label))
            ],
        }
        write_json_atomic_durable(self.annotation_path(*key), data)

    def _check_key(self, annotator, image, repeat):
        _check_annotator(annotator)
        self.check_image_name(image)
        if int(repeat) < 1:
            raise CrossModalRegError(f"repeat must be 1 or more, not {repeat}")
        for other in {k[0] for k in self._points}:
            if other != annotator and _slug(other) == _slug(annotator):
                raise CrossModalRegError(
                    f"annotator name '{annotator}' is too similar to the existing '{other}' (both are saved as "
                    f"'{_slug(annotator)}'); choose a different name"
                )

    def _checked_position(self, label, position, source=""):
        pos = np.asarray(position, dtype=float).ravel()
        dim = self.protocol.dimension
        if pos.size != dim:
            raise CrossModalRegError(
                f"landmark '{label}'{source}: {pos.size} coordinates given but the protocol is {dim}D "
                f"({self.frame}); check the file's frame and columns (for 2D images the protocol needs "
                "dimension=2; 'crossmodalreg landmarks import' takes the dimension from the images)"
            )
        if not np.all(np.isfinite(pos)):
            raise CrossModalRegError(f"landmark '{label}'{source}: position {pos.tolist()} is not finite")
        return pos

    # ------------------------------------------------------------------------------------------------ change
    def set_point(self, annotator: str, image: str, label: str, position, *, repeat: int = 1,
                  time: str | None = None) -> LandmarkPoint:
        """Place (or move) ``annotator``'s point ``label`` on ``image`` and save at once.

        Parameters
        ----------
        position : array-like
            LPS millimetres (3D protocol) or pixels (2D protocol).
        time : str, optional
            ISO time of the change (default: now). ``placed`` is kept from the first placement.
        """
        self._check_key(annotator, image, repeat)
        if label not in self.protocol.labels:
            raise CrossModalRegError(self.protocol.unknown_label_message(label))
        pos = self._checked_position(label, position)
        key = (annotator, image, int(repeat))
        now = time or utc_now_iso()
        points = self._points.setdefault(key, {})
        old = points.get(label)
        if old is not None and np.array_equal(old.position, pos):
            return old
        point = LandmarkPoint(label, annotator, image, pos, old.placed if old else now, now, int(repeat))
        points[label] = point
        try:
            self._save(key)
        except OSError:
            if old is None:
                del points[label]
            else:
                points[label] = old
            raise
        return point

    def remove_point(self, annotator: str, image: str, label: str, *, repeat: int = 1) -> None:
        """Remove a placed point (no-op when it was not placed) and save."""
        key = (annotator, image, int(repeat))
        if label in self._points.get(key, {}):
            del self._points[key][label]
            self._save(key)

    def import_points(self, annotator: str, image: str, labels, positions, *, repeat: int = 1,
                      placed=None, modified=None, source: str = "imported points") -> list[LandmarkPoint]:
        """Add many points at once (e.g. from a file), all validated before anything is saved.

        Raises
        ------
        CrossModalRegError
            For duplicate or unknown labels, or positions of the wrong dimension; the session is unchanged.
        """
        self._check_key(annotator, image, repeat)
        labels = [str(x) for x in labels]
        validate_labels(labels, source=source)
        for label in labels:
            if label not in self.protocol.labels:
                raise CrossModalRegError(self.protocol.unknown_label_message(label, source))
        positions = np.atleast_2d(np.asarray(positions, dtype=float))
        if len(positions) != len(labels):
            raise CrossModalRegError(f"{source}: {len(labels)} labels for {len(positions)} positions")
        checked = [self._checked_position(lab, p, f" in {source}") for lab, p in zip(labels, positions)]
        now = utc_now_iso()
        key = (annotator, image, int(repeat))
        points = dict(self._points.get(key, {}))
        out = []
        for i, (label, pos) in enumerate(zip(labels, checked)):
            t_placed = placed[i] if placed is not None and placed[i] else now
            t_mod = modified[i] if modified is not None and modified[i] else t_placed
            points[label] = LandmarkPoint(label, annotator, image, pos, t_placed, t_mod, int(repeat))
            out.append(points[label])
        previous = self._points.get(key)
        self._points[key] = points
        try:
            self._save(key)
        except OSError:
            if previous is None:
                del self._points[key]
            else:
                self._points[key] = previous
            raise
        return out

    # -------------------------------------------------------------------------------------------------- read
    def annotators(self, *, image: str | None = None, repeat: int | None = None) -> list[str]:
        """Annotators with an annotation file (on ``image`` / ``repeat`` when given), in first-seen order."""
        seen = []
        for a, im, r in self._points:
            if (image is None or im == image) and (repeat is None or r == repeat) and a not in seen:
                seen.append(a)
        return seen

    def repeats(self, annotator: str, image: str) -> list[int]:
        return sorted(r for a, im, r in self._points if a == annotator and im == image)

    def points(self, *, annotator: str | None = None, image: str | None = None,
               repeat: int | None = None) -> list[LandmarkPoint]:
        """Placed points, filtered by annotator, image and repeat when given."""
        out = []
        for (a, im, r), pts in self._points.items():
            if (annotator is None or a == annotator) and (image is None or im == image) and (
                    repeat is None or r == repeat):
                out.extend(pts.values())
        return out

    def get_point(self, annotator: str, image: str, label: str, *, repeat: int = 1) -> LandmarkPoint | None:
        return self._points.get((annotator, image, int(repeat)), {}).get(label)

    def position_array(self, image: str, *, repeat: int = 1, annotators=None):
        """Positions as an array for the statistics.

        Returns
        -------
        annotators : list of str
        labels : list of str
            The protocol's labels.
        positions : numpy.ndarray, shape (n_annotators, n_labels, dimension)
            LPS mm (or pixels); NaN where an annotator did not place a landmark.
        """
        self.check_image_name(image)
        if annotators is None:
            annotators = self.annotators(image=image, repeat=repeat)
        labels = self.protocol.labels
        arr = np.full((len(annotators), len(labels), self.protocol.dimension), np.nan)
        for i, a in enumerate(annotators):
            for label, p in self._points.get((a, image, int(repeat)), {}).items():
                arr[i, labels.index(label)] = p.position
        return list(annotators), list(labels), arr


def _annotation_key(data: dict, path: str) -> tuple[str, str, int]:
    """(annotator, image, repeat) of an annotation file, checked."""
    for field in ("annotator", "image"):
        if not isinstance(data.get(field), str) or not data[field].strip():
            raise CrossModalRegError(f"{path}: no '{field}' (a name) in this annotation file; add it or remove the "
                                     "file from the session's annotations folder")
    repeat = data.get("repeat", 1)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise CrossModalRegError(f"{path}: 'repeat' must be a whole number >= 1, got {repeat!r}")
    return data["annotator"], data["image"], repeat


def _annotation_point(p, i: int, path: str, dimension: int):
    """(label, position array) of the i-th point of an annotation file, checked."""
    if not isinstance(p, dict) or not isinstance(p.get("label"), str):
        raise CrossModalRegError(f"{path}: point {i + 1} must be an object with a 'label'")
    pos = p.get("position")
    if not isinstance(pos, list) or len(pos) != dimension or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pos):
        raise CrossModalRegError(f"{path}: point '{p['label']}' has position {pos!r:.60}; it must be {dimension} "
                                 "numbers")
    return p["label"], np.asarray(pos, dtype=float)
