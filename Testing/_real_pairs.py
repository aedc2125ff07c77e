"""The real image pairs of ../shared/data that are not simulated: loaders with their reference answers.

Shared by the failure-check tests and ``Testing/benchmarks/bench_real_pairs.py``. Every pair returns
(fixed, moving, fixed points, moving points): the points pair by row; the reference transform (fixed -> moving,
LPS) maps each fixed point onto its moving point.
"""

from __future__ import annotations

import csv
import os

import numpy as np
import SimpleITK as sitk


def read_mni_tag(path):
    """(first volume's points, second volume's points) of an MNI .tag file, in RAS mm (as written)."""
    rows = []
    with open(path) as f:
        text = f.read()
    body = text.split("Points =", 1)[1]
    for line in body.replace(";", "\n").splitlines():
        parts = line.split()
        if len(parts) >= 6:
            rows.append([float(v) for v in parts[:6]])
    rows = np.array(rows)
    return rows[:, :3], rows[:, 3:6]


def resect_case24(data):
    """RESECT Case24: fixed = intra-operative US, moving = MR; 16 expert landmarks as (US LPS, MR LPS)."""
    d = os.path.join(str(data), "resect_mr_us")
    us = sitk.ReadImage(os.path.join(d, "Case24_us.nii.gz"), sitk.sitkFloat32)
    mr = sitk.ReadImage(os.path.join(d, "Case24_mr.nii.gz"), sitk.sitkFloat32)
    mr_ras, us_ras = read_mni_tag(os.path.join(d, "Case24-MRI-beforeUS.tag"))  # rows: MR point, then US point
    flip = np.array([-1.0, -1.0, 1.0])  # RAS -> LPS
    return us, mr, us_ras * flip, mr_ras * flip


def _read_xy(path, scale=1.0):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return np.array([[float(r["X"]) * scale, float(r["Y"]) * scale] for r in rows])


def lung_lesion_pair(data, stain, annotator="user-PS_scale-50pc"):
    """histology_two_annotators: fixed = He, moving = ``stain`` (CD31, Cc10, Ki67, proSPC); 80 landmarks
    (50% scale pixels divided by 10 for the 5% images)."""
    d = os.path.join(str(data), "histology_two_annotators")
    names = {"He": "29-041-Izd2-w35-He-les3", "CD31": "29-041-Izd2-w35-CD31-3-les3",
             "Cc10": "29-041-Izd2-w35-Cc10-5-les3", "Ki67": "29-041-Izd2-w35-Ki67-7-les3",
             "proSPC": "29-041-Izd2-w35-proSPC-4-les3"}
    fixed = sitk.ReadImage(os.path.join(d, "images", names["He"] + ".jpg"))
    moving = sitk.ReadImage(os.path.join(d, "images", names[stain] + ".jpg"))
    f = _read_xy(os.path.join(d, annotator, names["He"] + ".csv"), 0.1)
    m = _read_xy(os.path.join(d, annotator, names[stain] + ".csv"), 0.1)
    n = min(len(f), len(m))
    pf = np.array([fixed.TransformContinuousIndexToPhysicalPoint(tuple(p)) for p in f[:n]])
    pm = np.array([moving.TransformContinuousIndexToPhysicalPoint(tuple(p)) for p in m[:n]])
    return fixed, moving, pf, pm


def mean_distance(transform, fixed_points, moving_points) -> float:
    """Mean |T(p_fixed) - p_moving| (transform fixed -> moving)."""
    mapped = np.array([transform.TransformPoint(tuple(map(float, p))) for p in fixed_points])
    return float(np.linalg.norm(mapped - np.asarray(moving_points), axis=1).mean())
