#!/usr/bin/env python3
"""Every real pair of ../shared/data with the presets a user would pick: error before and after, time, and the
post-run checks (which one flagged). Also the checks on deliberately wrong answers (an aligned pair moved 25 mm).

Not a pytest test (a few minutes). See docs/benchmark.md, section "Failure checks on every real pair"::

    python Testing/benchmarks/bench_real_pairs.py --output-dir /tmp/real-pairs [--extra PAIR=PRESET ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import SimpleITK as sitk

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
import _bench_cases as bc  # noqa: E402
import _real_pairs as rp  # noqa: E402

from CrossModalRegLib import engine, sanity  # noqa: E402


def pairs(data):
    """(pair id, fixed, moving, fixed points, moving points, units, presets, what the points are)."""
    for case in bc.brainweb_cases(data):
        yield (case.id, case.fixed, case.moving, case.targets_fixed, case.targets_moving, "mm",
               ["multimodal-rigid"], "truth (README)")
    for case in bc.epi_t1_cases(data):
        yield ("epi_t1", case.fixed, case.moving, case.targets_fixed, case.targets_moving, "mm",
               ["mr-epi-t1-rigid", "multimodal-rigid"], "FLIRT (reference)")
    for case in bc.histology_cases(data):
        # mm of the JPEGs' density spacing (0.357 mm/px), as the points are physical: "px" until 2026-12-03 was wrong
        yield ("histology/rat_kidney", case.fixed, case.moving, case.targets_fixed, case.targets_moving, "mm",
               ["histology-stain-affine-bspline"], "69 expert landmarks")
    for stain in ("CD31", "Cc10", "Ki67", "proSPC"):
        f, m, pf, pm = rp.lung_lesion_pair(data, stain)
        yield (f"lung_lesion/He-{stain}", f, m, pf, pm, "mm", ["histology-stain-affine-bspline"],
               f"{len(pf)} landmarks (PS)")
    us, mr, pu, pm = rp.resect_case24(data)
    yield ("resect/Case24 (US fixed, MR moving)", us, mr, pu, pm, "mm", ["multimodal-rigid", "mr-us-deformable"],
           "16 expert landmarks")
    d = os.path.join(data, "kmeans_t1")
    t1 = sitk.ReadImage(os.path.join(d, "KmeansTest_T1UCharRaw.nii.gz"), sitk.sitkFloat32)
    ss = sitk.ReadImage(os.path.join(d, "KmeansTest_T1RawSkullStrip.nii.gz"), sitk.sitkFloat32)
    fg = np.argwhere(sitk.GetArrayViewFromImage(ss) > 0)[::53][:, ::-1]
    p = np.array([t1.TransformIndexToPhysicalPoint(tuple(int(v) for v in i)) for i in fg])
    yield ("kmeans_t1 (T1 vs its skull strip)", t1, ss, p, p, "mm", ["multimodal-rigid"], "identity (same grid)")


def _grey(img):
    return bc._luminance(img) if img.GetNumberOfComponentsPerPixel() > 1 else img


def moved_check(fixed, moving, aligned, shift_mm):
    """The independent check on a deliberately wrong answer: ``aligned`` (fixed -> moving) moved ``shift_mm``
    along the fixed image's first axis, with the aligned transform as the start the run began from."""
    dim = fixed.GetDimension()
    shift = sitk.TranslationTransform(dim, tuple([float(shift_mm)] + [0.0] * (dim - 1)))
    wrong = sitk.CompositeTransform([aligned, shift])
    return sanity.check_independent_agreement(_grey(fixed), _grey(moving), wrong, {"headers": aligned})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=bc.DEFAULT_DATA)
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--only", default="", help="comma-separated substrings of pair ids to run")
    ap.add_argument("--extra", action="append", default=[], metavar="PAIR=PRESET",
                    help="run another preset (name or JSON file) on the pairs whose id contains PAIR")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    extra = [e.split("=", 1) for e in args.extra]
    records = []
    for pid, fixed, moving, pf, pm, units, presets, what in pairs(args.data_dir):
        if args.only and not any(s in pid for s in args.only.split(",")):
            continue
        presets = presets + [p for key, p in extra if key in pid]
        dim = fixed.GetDimension()
        before = rp.mean_distance(sitk.Transform(dim, sitk.sitkIdentity), pf, pm)
        for preset in presets:
            t0 = time.perf_counter()
            try:
                res = engine.register(fixed, moving, preset=preset, strict=False, threads=args.threads)
            except Exception as exc:  # noqa: BLE001
                records.append({"pair": pid, "preset": preset, "error": str(exc)[:200]})
                print(pid, preset, "ERROR", exc, flush=True)
                continue
            seconds = time.perf_counter() - t0
            after = rp.mean_distance(res.transform_fixed_to_moving_lps, pf, pm)
            checks = {c.name: {"passed": c.passed, "value": c.value, "details": c.details}
                      for c in res.sanity.checks}
            rec = {"pair": pid, "preset": preset, "reference": what, "units": units, "before": before,
                   "after": after, "seconds": seconds, "passed": res.sanity.passed,
                   "flagged_by": [c.name for c in res.sanity.checks if not c.passed], "checks": checks,
                   "orientation": res.initialization.get("orientation_search", {}).get("chosen")}
            records.append(rec)
            ind = checks.get("independent_agreement", {})
            print(f"{pid} | {preset} | {before:.2f} -> {after:.2f} {units} | {seconds:.1f} s | "
                  f"passed={res.sanity.passed} flagged={rec['flagged_by']} ngf_ratio={ind.get('value')}", flush=True)
        # A deliberately wrong answer: the reference alignment moved 25 mm (or px).
        if dim == 3 or "brainweb" in pid or "lung" in pid or "histology" in pid:
            if "identity" in what or "truth" in what and "identity" in pid:
                aligned = sitk.Transform(dim, sitk.sitkIdentity)
            elif "resect" in pid:
                from CrossModalRegLib.initialization import landmark_rigid_transform
                aligned = landmark_rigid_transform(pf, pm, dim)
            elif "FLIRT" in what:  # FLIRT's affine, exactly (the targets are its images)
                a = np.linalg.lstsq(np.column_stack([pf, np.ones(len(pf))]), pm, rcond=None)[0]
                aligned = sitk.AffineTransform(dim)
                aligned.SetMatrix(tuple(a[:dim].T.ravel()))
                aligned.SetTranslation(tuple(a[dim]))
            else:
                continue
            c = moved_check(fixed, moving, aligned, 25.0)
            records.append({"pair": pid, "preset": "(aligned answer moved 25 mm)", "passed": c.passed,
                            "flagged_by": [] if c.passed else [c.name], "checks": {c.name: {"value": c.value}}})
            print(f"{pid} | aligned + 25 mm | passed={c.passed} ngf_ratio={c.value:.3f}", flush=True)
    with open(os.path.join(args.output_dir, "real_pairs.json"), "w") as f:
        json.dump(records, f, indent=1, default=float)
    lines = ["| pair | preset | before | after | time (s) | checks | NGF ratio |", "|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['pair']} | {r['preset']} | - | - | - | error: {r['error'][:60]} | - |")
            continue
        ratio = r["checks"].get("independent_agreement", {}).get("value")
        flag = "passed" if r["passed"] else "**flagged: " + ", ".join(r["flagged_by"]) + "**"
        if "before" in r:
            lines.append(f"| {r['pair']} | {r['preset']} | {r['before']:.2f} {r['units']} | {r['after']:.2f} | "
                         f"{r['seconds']:.1f} | {flag} | {ratio if ratio is None else f'{ratio:.2f}'} |")
        else:
            lines.append(f"| {r['pair']} | {r['preset']} | - | - | - | {flag} | {ratio:.2f} |")
    with open(os.path.join(args.output_dir, "real_pairs.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
