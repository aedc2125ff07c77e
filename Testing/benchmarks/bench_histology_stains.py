#!/usr/bin/env python3
"""Stain-to-stain histology benchmark on the two-annotator lung-lesion set: relative TRE against the FLE floor.

Not a pytest test: a script (see docs/benchmark.md). Data: ``../shared/data/histology_two_annotators`` (five stains
of one lung-lesion section, 5% JPEGs; landmarks by PS on all five and by JB on He and proSPC, CSV pixel coordinates
at 50% scale, divided by 10 here; rows pair by index) and ``../shared/data/histology`` (rat kidney, HE vs
PanCytokeratin: a pair no preset setting was tuned on).

Pairs: all ten pairs of the five stains, fixed = the stain listed first in ``STAINS`` (He, CD31, Cc10, Ki67,
proSPC), moving = the later one; the rat kidney with HE fixed. TRE of a landmark: the fixed landmark mapped by the
result (fixed -> moving, physical space of the images as read, LPS) and converted to a moving pixel index, against
the moving landmark, in pixels of the 5% images. Relative TRE (ANHIR's rTRE) = TRE / the fixed image's diagonal
(pixels). Per pair: the median over landmarks (ANHIR's MrTRE); over pairs: the median of those.

FLE floor: the two annotators' own disagreement on He and on proSPC (PS against JB, the same image, the same
landmark index), as a relative distance. A registration judged with one annotator's landmarks cannot be shown
better than that annotator's localisation error in both images, which is of this order.

Examples::

    python Testing/benchmarks/bench_histology_stains.py --output-dir /tmp/histo
    python Testing/benchmarks/bench_histology_stains.py --output-dir /tmp/histo --tools ours,elastix \\
        --presets histology-stain-affine-bspline,/path/to/variant.json

Every (tool, preset) runs in its own process (elastix and our SimpleITK bundle different ITK builds).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--threads", type=int, default=2)
_threads = str(_pre.parse_known_args()[0].threads)
for _k in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_k] = _threads

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _bench_cases as bc  # noqa: E402

STAINS = ("He", "CD31", "Cc10", "Ki67", "proSPC")
FILES = {"He": "29-041-Izd2-w35-He-les3", "CD31": "29-041-Izd2-w35-CD31-3-les3", "Cc10": "29-041-Izd2-w35-Cc10-5-les3",
         "Ki67": "29-041-Izd2-w35-Ki67-7-les3", "proSPC": "29-041-Izd2-w35-proSPC-4-les3"}
CSV_SCALE = 0.1  # the CSVs are at 50% scale, the JPEGs at 5%


def read_xy(path, scale=1.0):
    """Pixel (X, Y) of an ANHIR CSV (header ',X,Y'), times ``scale``."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return np.array([[float(r["X"]), float(r["Y"])] for r in rows]) * scale


def diagonal_px(image):
    return float(np.hypot(*image.GetSize()[:2]))


def lung_landmarks(data, user, stain):
    return read_xy(os.path.join(data, "histology_two_annotators", f"user-{user}_scale-50pc", FILES[stain] + ".csv"),
                   CSV_SCALE)


def fle_floor(data):
    """PS against JB on the two stains both annotated: distances (px) and relative to the image diagonal."""
    out = {}
    for stain in ("He", "proSPC"):
        img = sitk.ReadImage(os.path.join(data, "histology_two_annotators", "images", FILES[stain] + ".jpg"))
        d = np.linalg.norm(lung_landmarks(data, "PS", stain) - lung_landmarks(data, "JB", stain), axis=1)
        diag = diagonal_px(img)
        out[stain] = {"n": int(len(d)), "median_px": float(np.median(d)), "mean_px": float(d.mean()),
                      "max_px": float(d.max()), "diagonal_px": diag, "median_rtre_percent": 100 * float(np.median(d)) / diag,
                      "mean_rtre_percent": 100 * float(d.mean()) / diag}
    return out


def pairs(data, which="all"):
    """(pair id, fixed image, moving image, fixed landmarks px, moving landmarks px)."""
    folder = os.path.join(data, "histology_two_annotators", "images")
    chosen = None if which == "all" else {p.strip() for p in which.split(",")}
    for i, a in enumerate(STAINS):
        for b in STAINS[i + 1:]:
            pid = f"{a}-{b}"
            if chosen is not None and pid not in chosen:
                continue
            yield (pid, sitk.ReadImage(os.path.join(folder, FILES[a] + ".jpg")),
                   sitk.ReadImage(os.path.join(folder, FILES[b] + ".jpg")),
                   lung_landmarks(data, "PS", a), lung_landmarks(data, "PS", b))
    if chosen is None or "kidney" in chosen:
        k = os.path.join(data, "histology")
        f, m = read_xy(os.path.join(k, "Rat-Kidney_HE.csv")), read_xy(os.path.join(k, "Rat-Kidney_PanCytokeratin.csv"))
        n = min(len(f), len(m))  # HE has 71 rows, PanCytokeratin 69: the first 69 pair by index
        yield ("kidney", sitk.ReadImage(os.path.join(k, "Rat-Kidney_HE.jpg")),
               sitk.ReadImage(os.path.join(k, "Rat-Kidney_PanCytokeratin.jpg")), f[:n], m[:n])


def tre_px(transform, fixed, moving, fixed_px, moving_px):
    """Per landmark: |index_moving(T(physical_fixed(p))) - q| in moving pixels (T fixed -> moving, physical)."""
    out = []
    for p, q in zip(fixed_px, moving_px):
        y = transform.TransformPoint(fixed.TransformContinuousIndexToPhysicalPoint(tuple(map(float, p))))
        out.append(np.linalg.norm(np.array(moving.TransformPhysicalPointToContinuousIndex(y)) - q))
    return np.array(out)


def record(pid, tool, preset, fixed, moving, fl, ml, transform, seconds, extra=None):
    d = tre_px(transform, fixed, moving, fl, ml)
    diag = diagonal_px(fixed)
    rec = {"pair": pid, "tool": tool, "preset": preset, "seconds": round(seconds, 2), "n": int(len(d)),
           "tre_median_px": float(np.median(d)), "tre_mean_px": float(d.mean()), "tre_max_px": float(d.max()),
           "rtre_median_percent": 100 * float(np.median(d)) / diag, "rtre_mean_percent": 100 * float(d.mean()) / diag,
           "diagonal_px": diag, "load_1min": os.getloadavg()[0]}
    rec.update(extra or {})
    return rec


def worker(args):
    tool, _, preset = args.worker.partition(":")
    out = []
    if tool == "identity":
        for pid, fixed, moving, fl, ml in pairs(args.data_dir, args.pairs):
            out.append(record(pid, "identity", "-", fixed, moving, fl, ml, sitk.Transform(2, sitk.sitkIdentity), 0.0))
    elif tool == "ours":
        sys.path.insert(0, os.path.join(bc.REPO, "CrossModalReg"))
        from CrossModalRegLib import engine
        for pid, fixed, moving, fl, ml in pairs(args.data_dir, args.pairs):
            t = time.perf_counter()
            try:
                r = engine.register(fixed, moving, preset=preset, strict=False, threads=args.threads, seed=args.seed)
            except Exception as exc:  # noqa: BLE001 - a failed pair is a result
                out.append({"pair": pid, "tool": tool, "preset": preset, "error": f"{type(exc).__name__}: {exc}"})
                continue
            dt = time.perf_counter() - t
            out.append(record(pid, tool, preset, fixed, moving, fl, ml, r.transform_fixed_to_moving_lps, dt,
                              {"sanity_passed": bool(r.sanity.passed), "timings_s": r.timings_s}))
            print(f"{pid:14s} {os.path.basename(preset):40s} {dt:6.1f} s  median rTRE "
                  f"{out[-1]['rtre_median_percent']:.3f}%", flush=True)
    elif tool == "elastix":
        import _bench_tools as bt
        el = bt.Elastix()
        el.warm_up()
        for pid, fixed, moving, fl, ml in pairs(args.data_dir, args.pairs):
            case = bc.Case(id=pid, family="histology", stage="deformable", fixed=fixed, moving=moving, preset="-",
                           targets_fixed=fl, targets_moving=ml, fixed_for_tools=bc._luminance(fixed),
                           moving_for_tools=bc._luminance(moving))
            try:
                res = el.run(case)
            except Exception as exc:  # noqa: BLE001
                out.append({"pair": pid, "tool": tool, "preset": "defaults", "error": f"{type(exc).__name__}: {exc}"})
                continue
            out.append(record(pid, tool, "affine + bspline defaults", fixed, moving, fl, ml, res.transform, res.seconds))
            print(f"{pid:14s} elastix {res.seconds:6.1f} s  median rTRE {out[-1]['rtre_median_percent']:.3f}%",
                  flush=True)
    else:
        raise SystemExit(f"unknown tool {tool}")
    with open(args.worker_output, "w") as f:
        json.dump(out, f, indent=1)
    return 0


def markdown(report):
    floor = report["fle_floor"]
    runs = report["runs"]
    lines = [f"Machine load (1 min) before/after: {report['load_before']} / {report['load_after']}; "
             f"threads per tool: {report['threads']}.", "",
             "FLE floor (PS vs JB on the same image, median over 80 landmarks): " + "; ".join(
                 f"{s} {v['median_px']:.2f} px = {v['median_rtre_percent']:.3f}% (mean {v['mean_rtre_percent']:.3f}%, "
                 f"max {v['max_px']:.1f} px)" for s, v in floor.items()), ""]
    pids = [r["pair"] for r in runs[0][1]]
    lines.append("| pair (fixed-moving) | " + " | ".join(name for name, _ in runs) + " |")
    lines.append("|---|" + "---|" * len(runs))
    for pid in pids:
        cells = []
        for _, recs in runs:
            r = next((x for x in recs if x["pair"] == pid), None)
            cells.append("-" if r is None else ("error" if "error" in r else
                         f"{r['rtre_median_percent']:.3f}% ({r['tre_median_px']:.1f} px, {r.get('seconds', 0):.1f} s)"))
        lines.append(f"| {pid} | " + " | ".join(cells) + " |")
    summary = []
    for _name, recs in runs:
        lung = [r["rtre_median_percent"] for r in recs if r["pair"] != "kidney" and "error" not in r]
        t = [r["seconds"] for r in recs if "error" not in r]
        summary.append(f"{np.median(lung):.3f}% / {np.median(t):.1f} s" if lung else "-")
    lines.append("| **median of the lung pairs' median rTRE / time** | " + " | ".join(summary) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--data-dir", default=bc.DEFAULT_DATA)
    ap.add_argument("--tools", default="identity,ours", help="comma list of identity, ours, elastix")
    ap.add_argument("--presets", default="histology-stain-affine-bspline",
                    help="our presets (names or JSON files), comma separated: one run each")
    ap.add_argument("--pairs", default="all", help="'all' or a comma list such as He-proSPC,CD31-Ki67,kidney")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-output", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not os.path.isdir(os.path.join(args.data_dir, "histology_two_annotators")):
        ap.error(f"{args.data_dir}/histology_two_annotators not found (../shared/data relative to the project root)")
    if args.worker:
        return worker(args)
    os.makedirs(args.output_dir, exist_ok=True)
    report = {"argv": sys.argv, "threads": args.threads, "load_before": [round(x, 2) for x in os.getloadavg()],
              "fle_floor": fle_floor(args.data_dir), "runs": []}
    jobs = []
    for tool in [t.strip() for t in args.tools.split(",") if t.strip()]:
        if tool == "ours":
            jobs += [("ours", p.strip()) for p in args.presets.split(",") if p.strip()]
        else:
            jobs.append((tool, ""))
    for i, (tool, preset) in enumerate(jobs):
        out = os.path.join(args.output_dir, f"run{i}_{tool}.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"{tool}:{preset}", "--worker-output", out,
               "--output-dir", args.output_dir, "--data-dir", args.data_dir, "--pairs", args.pairs,
               "--threads", str(args.threads), "--seed", str(args.seed)]
        if subprocess.call(cmd) != 0 or not os.path.exists(out):
            print(f"{tool} {preset}: the worker failed", file=sys.stderr)
            continue
        with open(out) as f:
            name = tool if tool != "ours" else f"ours {os.path.basename(preset)}"
            report["runs"].append((name, json.load(f)))
    report["load_after"] = [round(x, 2) for x in os.getloadavg()]
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(report, f, indent=1)
    text = markdown(report)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
