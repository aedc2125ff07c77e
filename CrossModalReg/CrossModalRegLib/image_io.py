"""Reading image files with the checks ITK does not make: one layer for every image the tool reads.

ITK reads some damaged files without a word, and the registration then runs on garbage and "passes":

* a truncated ``.gz`` or uncompressed ``.nii`` (the missing voxels come back as zeros or whatever follows);
* a truncated JPEG or PNG (the decoder fills the rest with grey);
* NaN or infinite voxels in a NIfTI file (read as 0, so no later check can see them);
* a NIfTI ``pixdim`` of 0 or NaN (silently read as 1 mm);
* a non-orthonormal direction matrix (a damaged or sheared header, which ITK keeps as is and Slicer cannot show: the
  resampled output lands far from the fixed grid).

:func:`read_image` refuses each of these with a :class:`~CrossModalRegLib.errors.CrossModalRegError` that names the
file, the problem and what to do, before anything is computed or written. The checks read the file's own bytes
(NIfTI-1 header and data, JPEG/PNG end markers) because after ITK has read them the damage can no longer be seen;
they are written here by hand since neither SimpleITK nor anything else Slicer bundles exposes them.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np
import SimpleITK as sitk

from .errors import CrossModalRegError

_CHUNK = 1 << 22
# NIfTI-1 datatype code -> (numpy dtype char, is floating point)
_NIFTI_TYPES = {2: ("u1", False), 4: ("i2", False), 8: ("i4", False), 16: ("f4", True), 64: ("f8", True),
                128: ("u1", False), 256: ("i1", False), 512: ("u2", False), 768: ("u4", False),
                1024: ("i8", False), 1280: ("u8", False), 2304: ("u1", False), 32: ("f4", True),
                1792: ("f8", True)}


def read_image(path: str, role: str, *, pixel_type=None) -> sitk.Image:
    """Read an image file for ``role`` ("fixed", "moving mask", ...) after checking that it is complete and sane.

    Raises ``CrossModalRegError`` (message: the file, the problem, what to fix) for a missing, truncated or corrupt
    file, NaN/infinite NIfTI voxels, a zero/NaN voxel size, and a non-orthonormal direction matrix.
    """
    role = role if role.endswith(("image", "map", "mask")) else f"{role} image"
    if not path or not os.path.isfile(path):
        raise CrossModalRegError(f"{role} '{path}' does not exist")
    check_image_file(path, role)
    try:
        image = sitk.ReadImage(path) if pixel_type is None else sitk.ReadImage(path, pixel_type)
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise CrossModalRegError(f"cannot read {role} '{path}': {msg}") from None
    check_image_geometry(image, role, path)
    return image


def write_image(image: sitk.Image, path: str, *, compress: bool = True) -> str:
    """Write ``image`` and check that the whole file reached the disk; returns ``path``.

    ITK's NIfTI writer does not fail on a full disk: it prints "NWAD: wrote only 0 of N bytes" and returns, leaving
    a truncated file that a later step would commit as a result. The file is therefore read back with the same
    checks as an input (:func:`check_image_file`: complete gzip stream, NIfTI data length) and its header read.
    Raises ``CrossModalRegError`` naming the file (and the free space when the disk is full).
    """
    import shutil

    try:
        sitk.WriteImage(image, path, useCompression=compress)
        check_image_file(path, "written image")
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
    except (RuntimeError, CrossModalRegError) as exc:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        why = f"no space left on the device ({free} bytes free)" if free < (1 << 20) else str(exc).strip()[:300]
        raise CrossModalRegError(f"writing {path} failed: {why}; nothing was written") from None
    return path


def check_image_file(path: str, role: str) -> None:
    """The checks on the file's bytes (see the module docstring); returns quietly for a sound file."""
    lower = path.lower()
    if lower.endswith((".nii", ".nii.gz")):
        _check_nifti(path, role)
    elif lower.endswith(".gz"):
        _check_gzip_complete(path, role)
    elif lower.endswith((".jpg", ".jpeg")):
        _check_tail(path, role, b"\xff\xd9", "JPEG end-of-image marker")
    elif lower.endswith(".png"):
        _check_tail(path, role, b"IEND", "PNG end chunk")


def check_image_geometry(image: sitk.Image, role: str, path: str = "") -> None:
    """Positive, finite spacing and an orthonormal direction matrix (what every grid Slicer can show has).

    ``role`` names the image in messages ("fixed image", "moving mask")."""
    where = f" '{path}'" if path else ""
    spacing = np.asarray(image.GetSpacing(), float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise CrossModalRegError(f"{role}{where} has voxel spacing {tuple(spacing)}: every spacing must be a "
                                 "positive number of mm; fix the file's header")
    if not np.all(np.isfinite(image.GetOrigin())):
        raise CrossModalRegError(f"{role}{where} has a non-finite origin {image.GetOrigin()}: fix the header")
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), float).reshape(dim, dim)
    deviation = float(np.abs(direction.T @ direction - np.eye(dim)).max()) if np.all(np.isfinite(direction)) \
        else float("inf")
    if deviation > 1e-4:
        raise CrossModalRegError(
            f"{role}{where} has a direction matrix that is not orthonormal (deviation {deviation:.3g}; "
            f"rows {np.round(direction, 4).tolist()}): the header is damaged or describes a sheared grid, which "
            "cannot be registered or shown correctly; resample the image onto a proper grid or fix the header")


def _check_gzip_complete(path: str, role: str) -> None:
    """ITK reads a truncated .gz image without complaint: read the whole compressed stream first."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(_CHUNK):
                pass
    except (EOFError, OSError, zlib.error) as exc:
        raise CrossModalRegError(f"{role} '{path}' is truncated or corrupt ({exc}): copy it again") from None


def _check_tail(path: str, role: str, marker: bytes, what: str) -> None:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(max(0, size - 4096))
        tail = f.read().rstrip(b"\x00")
    if marker not in tail[-(len(marker) + 8):]:
        raise CrossModalRegError(f"{role} '{path}' is truncated or corrupt (no {what}; the decoder would fill "
                                 "the missing part with grey): copy it again")


def _nifti_chunks(path: str, role: str):
    opener = gzip.open if path.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            while True:
                block = f.read(_CHUNK)
                if not block:
                    return
                yield block
    except (EOFError, OSError, zlib.error) as exc:
        raise CrossModalRegError(f"{role} '{path}' is truncated or corrupt ({exc}): copy it again") from None


def _check_nifti(path: str, role: str) -> None:
    """NIfTI-1 (single file): voxel size, data length, NaN/Inf in floating-point data; NIfTI-2 only gz-complete."""
    chunks = _nifti_chunks(path, role)
    head = b""
    for block in chunks:
        head += block
        if len(head) >= 352:
            break
    if len(head) < 348:
        raise CrossModalRegError(f"{role} '{path}' is too short for a NIfTI header: copy it again")
    endian = "<" if struct.unpack("<i", head[:4])[0] == 348 else ">"
    if struct.unpack(endian + "i", head[:4])[0] != 348 or head[344:347] != b"n+1":
        for _ in chunks:  # NIfTI-2 or a header/image pair: only check that the stream is complete
            pass
        return
    dims = struct.unpack(endian + "8h", head[40:56])
    datatype = struct.unpack(endian + "h", head[70:72])[0]
    bitpix = struct.unpack(endian + "h", head[72:74])[0]
    pixdim = struct.unpack(endian + "8f", head[76:108])
    vox_offset = int(struct.unpack(endian + "f", head[108:112])[0])
    ndim = int(dims[0])
    if not 1 <= ndim <= 7:
        raise CrossModalRegError(f"{role} '{path}': NIfTI header says {ndim} dimensions: the header is damaged")
    spatial = min(ndim, 3)
    for axis in range(1, spatial + 1):
        v = pixdim[axis]
        if not np.isfinite(v) or v == 0:
            raise CrossModalRegError(
                f"{role} '{path}': the NIfTI header's voxel size pixdim[{axis}] is {v} (ITK would silently use "
                "1 mm): set the real voxel size in the header (e.g. with nibabel or fslhd/fslcreatehd)")
    n_voxels = int(np.prod([max(1, int(d)) for d in dims[1:ndim + 1]], dtype=np.int64))
    expected = n_voxels * max(1, bitpix) // 8
    kind = _NIFTI_TYPES.get(int(datatype))
    itemsize = np.dtype(kind[0]).itemsize if kind else 1
    check_finite = bool(kind and kind[1])
    dtype = np.dtype(endian + kind[0]) if kind else None
    seen = 0  # data bytes read so far
    carry = b""
    non_finite = 0
    for block in _chain([head], chunks):
        block = carry + block
        carry = b""
        if seen == 0 and vox_offset:
            # still inside the header/extension: drop the bytes before the data
            if len(block) <= vox_offset:
                vox_offset -= len(block)
                continue
            block = block[vox_offset:]
            vox_offset = 0
        take = block[: max(0, expected - seen)]
        seen += len(take)
        if check_finite and take:
            usable = len(take) - len(take) % itemsize
            if usable < len(take):
                carry = take[usable:]
                seen -= len(carry)
            values = np.frombuffer(take[:usable], dtype=dtype)
            non_finite += int(values.size - np.count_nonzero(np.isfinite(values)))
    if seen + len(carry) < expected:
        raise CrossModalRegError(
            f"{role} '{path}' is truncated: its NIfTI header promises {expected} bytes of voxels but the file "
            f"holds {seen + len(carry)} (ITK would fill the rest with garbage): copy it again")
    if non_finite:
        raise CrossModalRegError(
            f"{role} '{path}' has {non_finite} NaN or infinite voxels (ITK would read them as 0): fill or "
            "mask them before registering")


def _chain(first, rest):
    yield from first
    yield from rest
