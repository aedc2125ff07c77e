"""Benchmark: all overlap and distance measures of CrossModalRegLib.validation on a 256^3 label map with 100+ labels,
side by side with SimpleITK's LabelOverlapMeasuresImageFilter and HausdorffDistanceImageFilter on the same data.

Not a test. Run from the project root::

    .venv/bin/python Testing/benchmarks/bench_validation.py [--sitk-labels N] [--threads T]

Data: the AAL atlas (116 labels, ../shared/data/colin27/aal.nii.gz) resampled onto a 256^3 grid; without the shared
data, a synthetic map of 120 labels. The moving map is the fixed one moved by a known rigid transform; the
validation resamples it back (nearest neighbour) and measures Dice before/after, Jaccard, Hausdorff, HD95 and
the mean symmetric surface distance for every label. SimpleITK's Hausdorff filter works on one label at a time on
the whole volume; ``--sitk-labels N`` times N labels and extrapolates (default: all labels).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np
import SimpleITK as sitk

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "CrossModalReg"))

from CrossModalRegLib.validation.overlap import compare_label_maps, resample_labels  # noqa: E402

SIZE = 256


def atlas_256():
    data = pathlib.Path(os.environ.get("CROSSMODALREG_SHARED_DATA", ROOT.parent / "shared" / "data"))
    path = data / "colin27" / "aal.nii.gz"
    if path.is_file():
        aal = sitk.ReadImage(str(path))
        extent = np.array(aal.GetSize()) * np.array(aal.GetSpacing())
        ref = sitk.Image([SIZE] * 3, aal.GetPixelID())
        ref.SetDirection(aal.GetDirection())
        ref.SetOrigin(aal.GetOrigin())
        ref.SetSpacing(tuple(extent / SIZE))
        return sitk.Resample(aal, ref, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkNearestNeighbor, 0), "AAL"
    rng = np.random.default_rng(0)  # 120 Voronoi cells inside a ball, built on a 64^3 grid and upsampled
    n = 64
    seeds = rng.uniform(8, 56, size=(120, 3))
    z, y, x = np.indices((n, n, n)).reshape(3, -1)
    d = ((x[:, None] - seeds[:, 0]) ** 2 + (y[:, None] - seeds[:, 1]) ** 2 + (z[:, None] - seeds[:, 2]) ** 2)
    lab = (np.argmin(d, axis=1) + 1).astype(np.uint8)
    lab[(x - 32) ** 2 + (y - 32) ** 2 + (z - 32) ** 2 > 28 ** 2] = 0
    small = sitk.GetImageFromArray(lab.reshape(n, n, n))
    ref = sitk.Image([SIZE] * 3, sitk.sitkUInt8)
    ref.SetSpacing((n / SIZE,) * 3)
    ref.SetOrigin((-0.5 + 0.5 * n / SIZE,) * 3)
    return sitk.Resample(small, ref, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkNearestNeighbor, 0), "synthetic"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sitk-labels", type=int, default=0, help="time SimpleITK's Hausdorff on N labels (0: all)")
    parser.add_argument("--threads", type=int, default=0, help="SimpleITK threads (0: its default)")
    args = parser.parse_args()
    if args.threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    fixed, source = atlas_256()
    center = fixed.TransformContinuousIndexToPhysicalPoint([s / 2.0 for s in fixed.GetSize()])
    tx = sitk.Euler3DTransform()  # fixed -> moving, LPS
    tx.SetCenter(center)
    tx.SetRotation(0.06, -0.04, 0.09)
    tx.SetTranslation((6.0, -4.0, 3.0))
    moving = sitk.Resample(fixed, fixed, tx.GetInverse(), sitk.sitkNearestNeighbor, 0)
    labels = sorted(set(np.unique(sitk.GetArrayViewFromImage(fixed)).tolist()) - {0})
    print(f"data: {source} label map {fixed.GetSize()} voxels, spacing {np.round(fixed.GetSpacing(), 3).tolist()} mm, "
          f"{len(labels)} labels; cores: {os.cpu_count()}; SimpleITK {sitk.Version.VersionString()}, "
          f"{sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()} threads")

    t0 = time.perf_counter()
    comp = compare_label_maps(fixed, moving, tx)
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    warped = resample_labels(moving, fixed, tx)
    t_resample = time.perf_counter() - t0
    t0 = time.perf_counter()
    lom = sitk.LabelOverlapMeasuresImageFilter()
    lom.Execute(fixed, warped)
    t_lom = time.perf_counter() - t0

    subset = labels if args.sitk_labels <= 0 else labels[:: max(1, len(labels) // args.sitk_labels)][: args.sitk_labels]
    hd = sitk.HausdorffDistanceImageFilter()
    rows = {r.label: r for r in comp.rows}
    max_hd_diff = 0.0
    t0 = time.perf_counter()
    for lab in subset:
        hd.Execute(fixed == lab, warped == lab)
        max_hd_diff = max(max_hd_diff, abs(hd.GetHausdorffDistance() - rows[lab].hausdorff_mm))
    t_hd = (time.perf_counter() - t0) * len(labels) / len(subset)
    max_dice_diff = max(abs(lom.GetDiceCoefficient(lab) - rows[lab].dice_after) for lab in labels)

    extrapolated = "" if len(subset) == len(labels) else f" (extrapolated from {len(subset)} labels)"
    print()
    lines = [
        ("CrossModalRegLib: 2 resamplings, Dice before+after, Jaccard, volumes, Hausdorff, HD95, MSSD", t_ours),
        ("SimpleITK: 1 resampling", t_resample),
        ("SimpleITK: LabelOverlapMeasuresImageFilter, all labels (Dice after only)", t_lom),
        ("SimpleITK: HausdorffDistanceImageFilter, one call per label" + extrapolated, t_hd),
        ("SimpleITK total (no HD95, no MSSD, no Dice before)", t_resample + t_lom + t_hd),
    ]
    width = max(len(text) for text, _ in lines) + 2
    print(f"{'what':<{width}}{'seconds':>10}")
    for text, seconds in lines:
        print(f"{text:<{width}}{seconds:>10.2f}")
    print()
    print(f"agreement: max |Dice - SimpleITK| = {max_dice_diff:.2e}; max |Hausdorff - SimpleITK| = {max_hd_diff:.2e} mm "
          f"over {len(subset)} labels")
    dice = np.array([r.dice_after for r in comp.rows if r.dice_after is not None])
    print(f"mean Dice before {np.mean([r.dice_before for r in comp.rows if r.dice_before is not None]):.4f}, "
          f"after {dice.mean():.4f} (min {dice.min():.4f})")


if __name__ == "__main__":
    main()
