"""Benchmark: cohort throughput (cases per minute) of ``crossmodalreg batch`` with 1 and 2 Dask workers.

Not a test. Run from the project root::

    .venv/bin/python Testing/benchmarks/bench_batch.py [--cases 12] [--workers 1 2] [--no-pictures]

The cohort: 2D BrainWeb pairs (../shared/data/brainweb2d: T1 fixed, PD moved by a known random rigid transform
on its own grid), registered with the default preset (multimodal-rigid) and the default outputs (overlay PNGs,
scene). The time is the wall time of ``run_cohort`` (cluster start-up included) in a fresh output folder; the
transforms of every worker count are checked to be identical.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
import SimpleITK as sitk

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "CrossModalReg"))

from CrossModalRegLib import simulation as sim  # noqa: E402
from CrossModalRegLib.batch import run_cohort  # noqa: E402


def build(folder: str, n: int, data: pathlib.Path) -> str:
    bw = data / "brainweb2d"
    fixed = sitk.Cast(sitk.ReadImage(str(bw / "BrainT1SliceBorder20.mha")), sitk.sitkFloat32)
    pd = sitk.Cast(sitk.ReadImage(str(bw / "BrainProtonDensitySliceBorder20.mha")), sitk.sitkFloat32)
    sitk.WriteImage(fixed, os.path.join(folder, "fixed.mha"))
    center = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()])
    lines = ["case_id,fixed,moving"]
    for i in range(n):
        rng = np.random.RandomState(1000 + i)
        tx = sim.random_rigid_transform(rng, center=center, max_angle_deg=10.0, max_translation_mm=10.0, dim=2)
        sitk.WriteImage(sim.simulate_pair(pd, tx, spacing=(1.0, 1.0), rng=rng, fov_crop=0.0),
                        os.path.join(folder, f"c{i:03d}.mha"))
        lines.append(f"c{i:03d},fixed.mha,c{i:03d}.mha")
    path = os.path.join(folder, "cohort.csv")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-pictures", action="store_true")
    args = ap.parse_args()
    data = pathlib.Path(os.environ.get("CROSSMODALREG_SHARED_DATA", ROOT.parent / "shared" / "data"))
    if not (data / "brainweb2d").is_dir():
        sys.exit(f"shared data not found at {data}")
    with tempfile.TemporaryDirectory(prefix="bench_batch-") as tmp:
        csv_path = build(tmp, args.cases, data)
        print(f"cohort: {args.cases} 2D BrainWeb T1/PD cases, preset multimodal-rigid, "
              f"pictures {'off' if args.no_pictures else 'on'}, {os.cpu_count()} CPU(s)")
        transforms = {}
        for w in args.workers:
            out = os.path.join(tmp, f"out{w}")
            t = time.perf_counter()
            run = run_cohort(csv_path, out, workers=w, pictures=not args.no_pictures, progress=False,
                             dashboard_address=":0")
            dt = time.perf_counter() - t
            ok = len(run.records) - len(run.failed)
            case_time = np.median([r["run_time_s"] for r in run.records if r.get("run_time_s")])
            print(f"workers {w}: {ok}/{len(run.records)} ok in {dt:.1f} s -> {60.0 * len(run.records) / dt:.1f} "
                  f"cases/min (median case {case_time:.2f} s)")
            for r in run.records:
                if r["status"] == "ok":
                    tx = sitk.ReadTransform(os.path.join(out, "cases", r["case_id"], "transform.h5"))
                    transforms.setdefault(r["case_id"], []).append(tuple(tx.GetParameters()))
        same = all(len(set(v)) == 1 for v in transforms.values())
        print(f"transforms identical across worker counts: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
