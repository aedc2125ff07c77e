"""What produced a result: versions, inputs' checksums, parameters, seed, timings. Recorded with every run."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import sys


def sha256_of_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_of_image(image) -> str:
    """Checksum of a SimpleITK image's voxels *and* grid (size, spacing, origin, direction, pixel type)."""
    import SimpleITK as sitk

    h = hashlib.sha256()
    header = {
        "size": list(image.GetSize()),
        "spacing": [round(v, 12) for v in image.GetSpacing()],
        "origin": [round(v, 12) for v in image.GetOrigin()],
        "direction": [round(v, 12) for v in image.GetDirection()],
        "pixel": image.GetPixelIDTypeAsString(),
        "components": image.GetNumberOfComponentsPerPixel(),
    }
    h.update(json.dumps(header, sort_keys=True).encode())
    h.update(sitk.GetArrayViewFromImage(image).tobytes())
    return h.hexdigest()


def sha256_of_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def software_versions() -> dict:
    """Versions of everything that can change a number."""
    import numpy
    import SimpleITK as sitk

    from . import __version__

    versions = {
        "crossmodalreg": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "SimpleITK": sitk.Version.VersionString(),
        "ITK": f"{sitk.Version.ITKMajorVersion()}.{sitk.Version.ITKMinorVersion()}.{sitk.Version.ITKPatchVersion()}",
    }
    try:
        import vtk

        versions["vtk"] = vtk.vtkVersion.GetVTKVersion()
    except Exception:  # noqa: BLE001 - vtk is optional for the pure numeric core
        pass
    try:
        from importlib.metadata import version

        versions["slicer-core"] = version("slicer-core")
    except Exception:  # noqa: BLE001 - inside the Slicer application there is no slicer-core distribution
        try:
            import slicer

            versions["Slicer"] = getattr(slicer.app, "applicationVersion", "unknown")
        except Exception:  # noqa: BLE001
            pass
    return versions


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def write_json_atomic(path: str, obj) -> str:
    tmp = path + ".partial"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=json_default)
        f.write("\n")
    os.replace(tmp, path)
    return path


def json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)  # a record must never make a finished run fail
