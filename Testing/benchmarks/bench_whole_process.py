#!/usr/bin/env python3
"""Whole-process wall time on the rigid 3D cases: ``crossmodalreg register`` against a minimal elastix script.

Issue 13's bar is "the rigid benchmark at or below half of elastix's whole-process time": what a user waits for
from typing the command to having the result on disk. Each case's images are written to ``--output-dir`` first
(untimed); then each tool runs as a fresh process on those files, timed from start to exit:

* elastix: ``python -c`` importing ``itk``, reading both files, its default ``rigid`` parameter map at
  ``--threads`` threads, writing the result parameters (the least a user of itk-elastix runs);
* ours: ``crossmodalreg register --fixed F --moving M --preset P --threads N --output-dir D --no-progress``
  (everything the command writes: transform, resampled image, scene, overlay pictures, provenance).

The TRE of our result is read back from its ``transform.h5`` (fixed -> moving, LPS) against the case's ground
truth. Not a test: a script that prints figures. Example::

    python Testing/benchmarks/bench_whole_process.py --output-dir /tmp/whole --seeds 0-1

``bench_registration.py`` times the registration calls alone (inside a warmed-up process); see docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import _bench_threads  # noqa: F401  (sets the thread count before ITK loads)
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench_cases as bc  # noqa: E402
from bench_registration import parse_seeds  # noqa: E402

ELASTIX = r"""
import sys, itk
f = itk.imread(sys.argv[1], itk.F); m = itk.imread(sys.argv[2], itk.F)
p = itk.ParameterObject.New(); p.AddParameterMap(p.GetDefaultParameterMap("rigid"))
r, params = itk.elastix_registration_method(f, m, parameter_object=p, log_to_console=False,
                                            number_of_threads=int(sys.argv[4]))
open(sys.argv[3], "w").write(str(params))
"""


def _tre_mm(case, transform_path):
    import SimpleITK as sitk

    tx = sitk.ReadTransform(transform_path)
    got = np.array([tx.TransformPoint(tuple(map(float, p))) for p in case.targets_fixed])
    return float(np.linalg.norm(got - case.targets_moving, axis=1).mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data"))
    ap.add_argument("--seeds", default="0-1")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import SimpleITK as sitk

    os.makedirs(args.output_dir, exist_ok=True)
    script = os.path.join(args.output_dir, "elastix_rigid.py")
    with open(script, "w") as f:
        f.write(ELASTIX)
    bindir = os.path.dirname(sys.executable)
    cli = os.path.join(bindir, "crossmodalreg")
    rows = []
    cases = bc.rigid3d_cases(args.data_dir, parse_seeds(args.seeds), ["mni152", "colin27"], ["ct", "t2", "pet"],
                             alternate=True)
    for case in cases:
        d = os.path.join(args.output_dir, case.id.replace("/", "_"))
        os.makedirs(d, exist_ok=True)
        fp, mp = os.path.join(d, "fixed.nrrd"), os.path.join(d, "moving.nrrd")
        sitk.WriteImage(case.fixed, fp)
        sitk.WriteImage(case.moving, mp)
        load = os.getloadavg()[0]
        t = time.perf_counter()
        subprocess.run([sys.executable, script, fp, mp, os.path.join(d, "elastix.txt"), str(args.threads)],
                       check=True, capture_output=True)
        t_elx = time.perf_counter() - t
        out = os.path.join(d, "ours")
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        p = subprocess.run([cli, "register", "--fixed", fp, "--moving", mp, "--preset", case.preset, "--threads",
                            str(args.threads), "--output-dir", out, "--no-progress"], capture_output=True, text=True)
        t_ours = time.perf_counter() - t
        tre = _tre_mm(case, os.path.join(out, "transform.h5")) if p.returncode == 0 else None
        rows.append({"case": case.id, "elastix_s": round(t_elx, 2), "ours_s": round(t_ours, 2),
                     "ours_exit": p.returncode, "ours_tre_mm": tre, "load_before": round(load, 2)})
        print(f"{case.id:30s} elastix {t_elx:5.1f} s  ours {t_ours:5.1f} s  ratio {t_ours / t_elx:.2f}  exit "
              f"{p.returncode}  TRE {tre if tre is None else round(tre, 3)} mm  load {load:.1f}", flush=True)
    med_e = statistics.median(r["elastix_s"] for r in rows)
    med_o = statistics.median(r["ours_s"] for r in rows)
    summary = {"cases": len(rows), "elastix_median_s": med_e, "ours_median_s": med_o, "ratio": round(med_o / med_e, 3),
               "threads": args.threads, "rows": rows}
    with open(os.path.join(args.output_dir, "whole_process.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"median whole-process time: ours {med_o:.1f} s, elastix {med_e:.1f} s, ratio {med_o / med_e:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
