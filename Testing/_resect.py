"""RESECT Case24 (real MR and intra-operative 3D ultrasound, 16 expert landmarks) for tests and benchmarks.

Written independently of the engine: the tag file is parsed here, its RAS points converted to LPS here, and the
landmark error computed here with SimpleITK's ``TransformPoint`` only.

Frames and directions:
* ``Case24-MRI-beforeUS.tag`` (MNI tag file) holds RAS mm; each row is an MR point then the same point in the US.
  LPS = (-R, -A, S).
* Fixed = US, moving = MR. A registration result T maps FIXED (US) points to MOVING (MR) points, LPS mm; its
  landmark error is ``|T(us_i) - mr_i|``.
* A moved copy: the MR resampled through a known rigid P (``moved(p) = mr(P(p))``, P maps moved-copy points to
  original-MR points, LPS) onto a grid padded so nothing is cut off; its landmarks are ``P^-1(mr_i)``.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])
IDENTITY_MEAN_MM = 1.10  # the data README's figure for the original pair


def read_tag_points(path) -> tuple[np.ndarray, np.ndarray]:
    """(first volume's points, second volume's points), each (N, 3) in LPS mm, from an MNI .tag file (RAS)."""
    text = pathlib.Path(path).read_text()
    body = text.split("Points =", 1)[1]
    rows = []
    for line in body.replace(";", "\n").splitlines():
        fields = line.replace('""', "").split()
        if len(fields) >= 6:
            rows.append([float(v) for v in fields[:6]])
    arr = np.array(rows, float)
    return arr[:, :3] * RAS_TO_LPS, arr[:, 3:6] * RAS_TO_LPS


@dataclass
class MrUsCase:
    """fixed = US, moving = MR (or a moved copy); landmarks in LPS; ``us_points`` pair with ``mr_points``."""

    name: str
    fixed: sitk.Image
    moving: sitk.Image
    us_points: np.ndarray
    mr_points: np.ndarray
    moved_by: sitk.Transform | None = None  # P (moved-copy points -> original MR points), None for the original

    def landmark_errors(self, transform_fixed_to_moving: sitk.Transform) -> np.ndarray:
        mapped = np.array([transform_fixed_to_moving.TransformPoint(tuple(map(float, p))) for p in self.us_points])
        return np.linalg.norm(mapped - self.mr_points, axis=1)


def load_case24(shared_data) -> MrUsCase:
    folder = pathlib.Path(shared_data) / "resect_mr_us"
    us = sitk.ReadImage(str(folder / "Case24_us.nii.gz"), sitk.sitkFloat32)
    mr = sitk.ReadImage(str(folder / "Case24_mr.nii.gz"), sitk.sitkFloat32)
    mr_pts, us_pts = read_tag_points(folder / "Case24-MRI-beforeUS.tag")
    return MrUsCase("Case24", us, mr, us_pts, mr_pts)


def random_rigid(seed: int, centre, *, angle_deg=(5.0, 10.0), shift_mm=(4.0, 8.0)) -> sitk.Euler3DTransform:
    """A rigid P: rotation of a uniform angle in ``angle_deg`` about a random axis through ``centre`` and a shift of
    a uniform length in ``shift_mm`` in a random direction (LPS)."""
    rng = np.random.default_rng(int(seed))
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(*angle_deg))
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    shift = direction * rng.uniform(*shift_mm)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    r = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)
    tx = sitk.Euler3DTransform()
    tx.SetCenter(tuple(float(v) for v in centre))
    tx.SetMatrix(tuple(r.ravel()))
    tx.SetTranslation(tuple(float(v) for v in shift))
    return tx


def moved_copy(case: MrUsCase, seed: int, *, pad_mm: float = 12.0, **kwargs) -> MrUsCase:
    """The MR moved by a known random rigid transform (see :func:`random_rigid`), on a padded grid, with its
    landmarks moved with it; the US and its landmarks unchanged."""
    mr = case.moving
    centre = mr.TransformContinuousIndexToPhysicalPoint(tuple((np.array(mr.GetSize()) - 1) / 2.0))
    p = random_rigid(seed, centre, **kwargs)
    pad = [int(np.ceil(pad_mm / s)) for s in mr.GetSpacing()]
    grid = sitk.ConstantPad(mr, pad, pad, 0.0)  # same direction and spacing, origin moved by the padding
    background = float(sitk.GetArrayViewFromImage(mr).min())
    moved = sitk.Resample(mr, grid, p, sitk.sitkLinear, background, sitk.sitkFloat32)
    inverse = p.GetInverse()
    mr_points = np.array([inverse.TransformPoint(tuple(map(float, q))) for q in case.mr_points])
    return MrUsCase(f"{case.name}/moved_seed{seed}", case.fixed, moved, case.us_points, mr_points, p)


def write_case(case: MrUsCase, folder) -> tuple[pathlib.Path, pathlib.Path]:
    """Write the fixed (US) and moving (MR) images of ``case`` as NIfTI files for the command line."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fixed_path, moving_path = folder / "us.nii.gz", folder / "mr.nii.gz"
    sitk.WriteImage(case.fixed, str(fixed_path))
    sitk.WriteImage(case.moving, str(moving_path))
    return fixed_path, moving_path
