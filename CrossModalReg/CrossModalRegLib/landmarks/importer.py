"""A landmark session from the files annotators already have: N named images, one or more files per annotator.

    import_session("session", images={"He": "He.jpg", "CD31": "CD31.jpg"},
                   annotators={"PS": ["user-PS/"], "JB": ["user-JB/He.csv"]}, scale=0.1)

Everything is read and checked before anything is written (a folder that holds anything is refused):

* each image's header (size, spacing, origin, direction; SimpleITK, no pixels read); the protocol's dimension
  follows the images (2D images: positions in pixels, see :mod:`.units`; 3D: LPS mm);
* each landmark file (ANHIR ``,X,Y`` CSV, frame-stated CSV, ``.fcsv``, ``.mrk.json``), matched to its image by
  name (the file's stem equals the image file's stem, or contains the image name as a ``-``/``_``/``.``-separated
  word; or give it explicitly as ``IMAGE:FILE``);
* pixel files are multiplied by ``scale`` (required for them: ANHIR landmarks at 50 % on images stored at 5 %
  need 0.1; 1 when they were placed on these images); millimetre files are converted to pixels through the
  image's own geometry (2D) or kept in LPS mm (3D);
* every point must lie on its image (pixel index within ``[-0.5, size - 0.5]``): otherwise the error names the
  file, the row, the point, the image bounds, and the scale that would make the points fit.

Labels pair across images and annotators (ANHIR rows pair by index); without a protocol the protocol is every
label in the order first met.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass

import numpy as np

from ..errors import CrossModalRegError
from .fileio import read_landmark_file
from .protocol import LandmarkDefinition, LandmarkProtocol
from .session import SESSION_FILE, AnnotationSession
from .storage import utc_now_iso, write_json_atomic_durable
from .units import image_geometry, outside_image, physical_lps_to_pixel, pixel_bounds_text

LANDMARK_SUFFIXES = (".mrk.json", ".fcsv", ".csv", ".tsv", ".json")
NICE_SCALES = (1.0, 0.5, 0.25, 0.2, 0.1, 0.05, 0.04, 0.025, 0.02, 0.01, 0.005, 0.001)
IMPORT_FILE = "import.json"


def _stem(path: str) -> str:
    base = os.path.basename(path)
    for suffix in LANDMARK_SUFFIXES + (".nii.gz", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".nrrd", ".mha",
                                       ".mhd", ".nii", ".bmp"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return os.path.splitext(base)[0]


def _landmark_files(entry: str, source: str) -> list[str]:
    """The landmark files of a folder (sorted), or the file itself."""
    if os.path.isdir(entry):
        files = sorted(os.path.join(entry, f) for f in os.listdir(entry)
                       if f.lower().endswith(LANDMARK_SUFFIXES) and not f.lower().endswith(".schema.tsv"))
        if not files:
            raise CrossModalRegError(f"{source}: folder {entry} holds no landmark file (.csv, .fcsv, .mrk.json)")
        return files
    if not os.path.isfile(entry):
        raise CrossModalRegError(f"{source}: landmark file or folder not found: {entry}")
    return [entry]


def match_image(path: str, images: dict[str, str]) -> str:
    """The image a landmark file belongs to: the only image; or the one whose file has the same stem; else the
    image name as a word of the file name (case-sensitive first, then not). Raises naming the candidates when
    none or several match."""
    if len(images) == 1:
        return next(iter(images))
    stem = _stem(path)
    same = [name for name, img in images.items() if img and _stem(img) == stem]
    if len(same) == 1:
        return same[0]
    words = [w for w in re.split(r"[-_.\s]+", stem) if w]
    for fold in (False, True):
        key = (lambda w: w.lower()) if fold else (lambda w: w)
        hits = [name for name in images if key(name) in {key(w) for w in words}]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise CrossModalRegError(
                f"{path}: its name fits the images {hits}; give it explicitly as IMAGE:FILE (e.g. {hits[0]}:{path})")
    raise CrossModalRegError(
        f"{path}: its name matches none of the images {list(images)} (neither the image file's name nor an image "
        f"name as a word of it); give it explicitly as IMAGE:FILE (e.g. {next(iter(images))}:{path})")


def _suggest_scale(pixels: np.ndarray, geometry: dict, scale: float) -> str:
    size = np.asarray(geometry["size"], dtype=float)
    extent = np.nanmax(np.abs(pixels), axis=0)
    if not np.all(np.isfinite(extent)) or np.any(extent <= 0):
        return ""
    fit = float(np.min((size - 0.5) / extent)) * scale  # the largest scale under which every point fits
    for s in NICE_SCALES:
        if s <= fit and s != scale:
            # a nice scale that fits and uses a fair part of the image (not a corner)
            if np.all(extent * s / scale > 0.2 * size):
                return f" Did you forget --scale {s:g}? (with it the points fit the image)"
            break
    return " Check --scale (the factor from the file's pixels to this image's pixels) and that the file is for this image."


def _read_for_image(path: str, image: str, geometry: dict, scale: float | None, source: str):
    """Labels, positions in the session's frame (pixels in 2D, LPS mm in 3D), and the points in pixels."""
    lm = read_landmark_file(path)
    dim = int(geometry["dimension"])
    if lm.frame == "pixel":
        if dim != 2:
            raise CrossModalRegError(f"{path} holds 2D pixel landmarks but the '{image}' image is {dim}D")
        if scale is None:
            raise CrossModalRegError(
                f"{path} holds pixel coordinates: give --scale, the factor from the file's pixels to the pixels of "
                f"the '{image}' image ({os.path.basename(geometry['path'])}, {pixel_bounds_text(geometry)}): 1 when "
                "the landmarks were placed on these images, 0.1 for ANHIR landmarks at 50 % on images at 5 %")
        pixels = lm.points * float(scale)
        positions = pixels
    else:  # LPS mm
        pts = lm.points
        if dim == 2:
            z = pts[:, 2] if pts.shape[1] == 3 else np.zeros(len(pts))
            if len(z) and np.ptp(z) > 1e-3:
                raise CrossModalRegError(
                    f"{path}: the points are not in one plane (z from {z.min():g} to {z.max():g} mm) but the "
                    f"'{image}' image is 2D")
            pixels = physical_lps_to_pixel(pts[:, :2], geometry)
            positions = pixels
        else:
            pixels = physical_lps_to_pixel(pts, geometry)
            positions = pts
    outside = outside_image(pixels, geometry)
    if outside.any():
        first = int(np.nonzero(outside)[0][0])
        where = f"after --scale {scale:g}" if lm.frame == "pixel" else "in the image's pixels"
        raise CrossModalRegError(
            f"{source}: {int(outside.sum())} of {len(pixels)} points of {path} are outside the '{image}' image "
            f"({os.path.basename(geometry['path'])}, {pixel_bounds_text(geometry)}); the first is data row "
            f"{first + 1} (label '{lm.labels[first]}') at ({', '.join(f'{v:.1f}' for v in pixels[first])}) "
            f"pixels {where}.{_suggest_scale(pixels, geometry, float(scale or 1.0)) if lm.frame == 'pixel' else ''}"
            " Nothing was created.")
    return lm.labels, positions, lm.frame


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ImportResult:
    """The new session, the files imported (annotator, image, file, sha256, frame, points, scale) and the files of
    the given folders that fit no image (skipped, with the reason)."""

    session: AnnotationSession
    sources: list[dict]
    skipped: list[dict]


def import_session(folder: str, images: dict[str, str], annotators: dict[str, list[str]], *,
                   scale: float | None = None, protocol: LandmarkProtocol | None = None,
                   name: str = "imported landmarks") -> ImportResult:
    """Create a session in ``folder`` from per-annotator landmark files over named images (see the module docstring).

    Parameters
    ----------
    folder : str
        New (or empty) folder for the session.
    images : dict
        Image name -> image file. The names label the images in the session and in every table.
    annotators : dict
        Annotator name -> list of landmark files, folders of them, or ``IMAGE:FILE`` entries. A file of a folder
        that fits no image is skipped (listed in the result); a file named explicitly must fit one.
    scale : float, optional
        Factor from a pixel file's coordinates to the image's pixels; required when a pixel (ANHIR) file is read.
    protocol : LandmarkProtocol, optional
        Labels (and descriptions) every file must use; default: every label found, in the order first met.

    Raises
    ------
    CrossModalRegError
        Bad input of any kind, before anything is written.
    """
    if not images:
        raise CrossModalRegError("give at least one image as NAME=FILE (e.g. --image He=He.jpg)")
    if not annotators:
        raise CrossModalRegError("give at least one annotator as NAME=FILES (e.g. --annotator PS=user-PS/)")
    if scale is not None and not (np.isfinite(scale) and scale > 0):
        raise CrossModalRegError(f"--scale must be a positive number, not {scale}")
    if os.path.exists(os.path.join(folder, SESSION_FILE)):
        raise CrossModalRegError(f"{folder} already holds a session; choose a new folder")
    if os.path.isdir(folder) and os.listdir(folder):
        raise CrossModalRegError(f"{folder} is not empty; choose a new or empty folder for the session")
    geometry = {name_: image_geometry(path) for name_, path in images.items()}
    dims = {g["dimension"] for g in geometry.values()}
    if len(dims) != 1:
        raise CrossModalRegError(
            "the images mix 2D and 3D: " + ", ".join(f"{n} {g['dimension']}D" for n, g in geometry.items()))
    dim = dims.pop()

    # Read and check everything first.
    imports, seen_labels, sources, skipped = [], [], [], []
    for annotator, entries in annotators.items():
        if not annotator or not annotator.strip():
            raise CrossModalRegError("an annotator name is empty; give it as NAME=FILES")
        done: dict[str, str] = {}
        for entry in entries:
            explicit = None
            head, sep, tail = entry.partition(":")
            if sep and head in images:
                explicit, entry = head, tail
            for path in _landmark_files(entry, f"annotator {annotator}"):
                try:
                    image = explicit or match_image(path, images)
                except CrossModalRegError as exc:
                    if not os.path.isdir(entry):
                        raise  # a file named explicitly must fit an image
                    skipped.append({"annotator": annotator, "file": os.path.abspath(path), "reason": str(exc)})
                    continue
                if image in done:
                    raise CrossModalRegError(
                        f"annotator {annotator} has two files for the '{image}' image: {done[image]} and {path}; "
                        "give one per image")
                done[image] = path
                labels, positions, frame = _read_for_image(path, image, geometry[image], scale,
                                                           f"annotator {annotator}")
                imports.append((annotator, image, labels, positions, path))
                sources.append({"annotator": annotator, "image": image, "file": os.path.abspath(path),
                                "sha256": _sha256(path), "file_frame": frame, "n_points": len(labels),
                                "scale": float(scale) if frame == "pixel" else None})
                seen_labels.extend(lab for lab in labels if lab not in seen_labels)
    if protocol is None:
        protocol = LandmarkProtocol(name=name, landmarks=[LandmarkDefinition(x) for x in seen_labels],
                                    dimension=dim, description="labels of the imported landmark files")
    elif protocol.dimension != dim:
        raise CrossModalRegError(f"protocol '{protocol.name}' is {protocol.dimension}D but the images are {dim}D")
    if not imports:
        raise CrossModalRegError("no landmark file fits any of the images " + str(list(images)) + "; "
                                 + "; ".join(s["reason"] for s in skipped[:3]))
    for _, _, labels, _, path in imports:
        for label in labels:
            if label not in protocol.labels:
                raise CrossModalRegError(protocol.unknown_label_message(label, path))

    created = not os.path.isdir(folder)
    try:
        session = AnnotationSession.create_for_images(
            folder, protocol, {n: os.path.abspath(p) for n, p in images.items()}, image_geometry=geometry)
        for annotator, image, labels, positions, path in imports:
            session.import_points(annotator, image, labels, positions, source=path)
        write_json_atomic_durable(os.path.join(session.folder, IMPORT_FILE), {
            "schema": "crossmodalreg-landmark-import", "created": utc_now_iso(),
            "scale": None if scale is None else float(scale), "sources": sources, "skipped_files": skipped})
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return ImportResult(session, sources, skipped)
