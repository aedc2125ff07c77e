#!/usr/bin/env python3
"""Orientation search: simulated CT/T2/PET-like pairs of mni152 and colin27 turned 90, 180 and 270 degrees about
each LPS axis in the voxel data (the header does not say so; plus a small random offset of up to 8 degrees and
8 mm), registered at full resolution by the default preset of each modality. Prints one line per case and a
summary; see docs/benchmark.md. Not a pytest test::

    python Testing/benchmarks/bench_orientation.py [--anatomies mni152,colin27] [--modalities ct,t2,pet]
        [--angles 90,180,270] [--axes 0,1,2] [--no-search] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _bench_cases as bc  # noqa: E402

from CrossModalRegLib import engine, simulation  # noqa: E402

GRIDS = bc.RIGID_GRIDS
PRESETS = bc.RIGID_PRESETS
AXES = ("x (R-L)", "y (A-P)", "z (I-S)")


def turned_case(t1, model, modality, axis, angle_deg, seed):
    """(moving, truth fixed -> moving LPS, targets): the turn about the head's centre, then a small offset."""
    rng = np.random.RandomState(seed)
    center = t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in t1.GetSize()])
    truth = simulation.turned_then_offset(rng, center=center, axis=axis, angle_deg=angle_deg)
    moving = simulation.simulate_pair(simulation.render(model, modality, rng=rng), truth, spacing=GRIDS[modality],
                                      rng=rng)
    return moving, truth, simulation.points_in_mask(model.brain_mask(), 400, rng)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=bc.DEFAULT_DATA)
    ap.add_argument("--anatomies", default="mni152,colin27")
    ap.add_argument("--modalities", default="ct,t2,pet")
    ap.add_argument("--angles", default="90,180,270")
    ap.add_argument("--axes", default="0,1,2")
    ap.add_argument("--no-search", action="store_true", help="the same cases with the orientation search off")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    rows = []
    for anatomy in args.anatomies.split(","):
        t1, model = bc.anatomy(args.data_dir, anatomy)
        for k, modality in enumerate(args.modalities.split(",")):
            for axis in (int(a) for a in args.axes.split(",")):
                for angle in (float(a) for a in args.angles.split(",")):
                    seed = 1000 * k + 100 * axis + int(angle)
                    moving, truth, targets = turned_case(t1, model, modality, axis, angle, seed)
                    t0 = time.perf_counter()
                    res = engine.register(t1, moving, preset=PRESETS[modality], strict=False, threads=args.threads,
                                          orientation_search=False if args.no_search else None)
                    seconds = time.perf_counter() - t0
                    err = simulation.target_registration_errors(res.transform_fixed_to_moving_lps, truth, targets)
                    orient = res.initialization.get("orientation_search", {})
                    rows.append((anatomy, modality, axis, angle, err.mean(), err.max(), seconds,
                                 orient.get("seconds", 0.0), orient.get("chosen", "-"), res.sanity.passed))
                    print(f"{anatomy} {modality:3s} {angle:+4.0f} deg about {AXES[axis]}: TRE mean {err.mean():.3f} "
                          f"max {err.max():.3f} mm | {seconds:.1f} s (orientation search {orient.get('seconds', 0):.2f}"
                          f" s) | chosen: {orient.get('chosen', '-')} | checks {'passed' if res.sanity.passed else 'FLAGGED'}",
                          flush=True)
    tre = np.array([r[4] for r in rows])
    print(f"\n{len(rows)} cases: {int(np.sum(tre < 1.0))} below 1 mm mean TRE; median {np.median(tre):.3f} mm, "
          f"worst {tre.max():.3f} mm; median time {np.median([r[6] for r in rows]):.1f} s, orientation search "
          f"median {np.median([r[7] for r in rows]):.2f} s; checks passed on {sum(r[9] for r in rows)}")


if __name__ == "__main__":
    main()
