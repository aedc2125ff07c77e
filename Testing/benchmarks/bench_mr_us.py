#!/usr/bin/env python3
"""MR-ultrasound benchmark on real appearance: RESECT Case24 and moved copies of it, ours vs elastix, ANTs, greedy.

Not a pytest test: a script. See docs/benchmark.md. Fixed = US, moving = MR (the preset ``us-mr-mind-rigid``).
The cases: the original pair, and ``--seeds`` moved copies (the MR moved by a random rigid transform of 5-10
degrees and 4-8 mm, its landmarks moved with it; ``Testing/_resect.py``). Every tool starts from the images'
positions (identity), gets the same fixed mask (the US cone, non-zero, eroded 6 mm, as our preset finds it) and
runs rigid with its best-documented multimodal setting:

* ours: ``engine.register(us, mr, preset="us-mr-mind-rigid")`` (MIND-SSC);
* elastix (itk-elastix): the default "rigid" parameter map (advanced Mattes MI), identity start
  (``AutomaticTransformInitialization`` false), fixed mask with the ``RandomSparseMask`` sampler (elastix's advice
  for small masks: the default sampler stops with "could not find enough image samples");
* ANTs (antspyx): ``type_of_transform="Rigid"`` (MI), identity initial transform, fixed mask;
* greedy (picsl-greedy): ``-a -dof 6 -m NMI -ia-identity -n 100x50x25 -gm mask`` (greedy has NCC, WNCC, SSD, NMI,
  MI and MAHAL; NMI is its documented multimodal metric; it has no MIND).

Landmark error: mean distance at the 16 landmarks (mm) of T(us_i) vs mr_i, T the tool's fixed -> moving (LPS)
answer. Only the registration call is timed. Examples::

    python Testing/benchmarks/bench_mr_us.py --output-dir /tmp/bench_mrus --seeds 1-20
    python Testing/benchmarks/bench_mr_us.py --output-dir /tmp/q --seeds 1-2 --tools ours,greedy
"""

from __future__ import annotations

import argparse
import json  # noqa: E402
import os
import sys
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import _bench_threads  # noqa: F401  (sets the thread count before ITK and the others load)
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..")))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..", "CrossModalReg")))
import _bench_tools as bt  # noqa: E402
import _resect  # noqa: E402

from CrossModalRegLib import engine, mind  # noqa: E402

PRESET = "us-mr-mind-rigid"
TOOLS = ("ours", "elastix", "ants", "greedy")
F4 = np.diag([-1.0, -1.0, 1.0, 1.0])


def parse_seeds(text):
    out = []
    for part in str(text).split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part.strip():
            out.append(int(part))
    return out


def us_mask(case):
    metric = json.load(open(os.path.join(os.path.dirname(engine.__file__), "presets", PRESET + ".json")))
    return mind.field_of_view_mask(case.fixed, erode_mm=float(metric["stages"][0]["metric"]["fov_erode_mm"]))


# ---------------------------------------------------------------------------------------------- tools
def run_ours(case, mask, threads):
    t = time.perf_counter()
    r = engine.register(case.fixed, case.moving, preset=PRESET, strict=False, threads=threads)
    dt = time.perf_counter() - t
    return r.transform_fixed_to_moving_lps, dt, {"sanity_passed": bool(r.sanity.passed),
                                                 "stop_conditions": r.stop_conditions}


class ElastixRigid(bt.Elastix):
    def run_mr_us(self, case, mask):
        po = self.itk.ParameterObject.New()
        m = po.GetDefaultParameterMap("rigid")
        m["AutomaticTransformInitialization"] = ["false"]
        m["ImageSampler"] = ["RandomSparseMask"]  # elastix's own advice when the fixed mask is small
        po.AddParameterMap(m)
        fixed, moving = self._to_itk(case.fixed), self._to_itk(case.moving)
        fmask = self.itk.image_from_array(np.ascontiguousarray(sitk.GetArrayFromImage(mask).astype(np.uint8)))
        fmask.CopyInformation(fixed)
        t = time.perf_counter()
        _, params = self.itk.elastix_registration_method(fixed, moving, parameter_object=po, fixed_mask=fmask,
                                                         log_to_console=False)
        dt = time.perf_counter() - t
        return self._rigid_to_sitk(params, 3), dt, {
            "parameter_map": "default rigid, no automatic initialisation, RandomSparseMask sampler"}


class AntsRigid(bt.Ants):
    def run_mr_us(self, case, mask):
        fixed, moving = self._to_ants(case.fixed), self._to_ants(case.moving)
        amask = self._to_ants(sitk.Cast(mask, sitk.sitkFloat32))
        with tempfile.TemporaryDirectory() as d:
            ident = os.path.join(d, "identity.mat")
            sitk.WriteTransform(sitk.AffineTransform(3), ident)
            t = time.perf_counter()
            out = self.ants.registration(fixed, moving, type_of_transform="Rigid", mask=amask,
                                         initial_transform=[ident], outprefix=os.path.join(d, "r_"))
            dt = time.perf_counter() - t
            tx = sitk.ReadTransform(out["fwdtransforms"][-1])
        return tx, dt, {"type_of_transform": "Rigid", "initial_transform": "identity"}


class GreedyRigid:
    name = "greedy"

    def __init__(self):
        from picsl_greedy import Greedy3D
        self.cls = Greedy3D

    def run_mr_us(self, case, mask):
        g = self.cls()
        cmd = ("-i fixed moving -gm mask -a -dof 6 -m NMI -ia-identity -n 100x50x25 -o result "
               f"-threads {os.environ['ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS']}")
        t = time.perf_counter()
        g.execute(cmd, fixed=case.fixed, moving=case.moving, mask=sitk.Cast(mask, sitk.sitkFloat32), result=None)
        dt = time.perf_counter() - t
        m_ras = np.array(g["result"], float)  # greedy: fixed -> moving, physical RAS (4 x 4)
        m_lps = F4 @ m_ras @ F4
        tx = sitk.AffineTransform(3)
        tx.SetMatrix(tuple(m_lps[:3, :3].ravel()))
        tx.SetTranslation(tuple(m_lps[:3, 3]))
        # Check our reading of the direction against greedy's own reslicing (normalised correlation ~1).
        g.execute("-rf fixed -rm moving resliced -r result", resliced=None)
        theirs = sitk.GetArrayFromImage(g["resliced"])
        ours = sitk.GetArrayFromImage(sitk.Resample(case.moving, case.fixed, tx, sitk.sitkLinear, 0.0,
                                                    sitk.sitkFloat32))
        a, b = ours.ravel() - ours.mean(), theirs.ravel() - theirs.mean()
        agreement = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
        return tx, dt, {"command": cmd, "direction_check_ncc": round(agreement, 4)}


def make(name):
    if name == "elastix":
        return ElastixRigid()
    if name == "ants":
        return AntsRigid()
    if name == "greedy":
        return GreedyRigid()
    return None


# ---------------------------------------------------------------------------------------------- main
def summarize(records):
    out = {}
    for tool in sorted({r["tool"] for r in records}):
        rows = [r for r in records if r["tool"] == tool and r.get("mean_mm") is not None]
        moved = [r for r in rows if r["case"] != "Case24"]
        orig = [r for r in rows if r["case"] == "Case24"]
        s = {"Case24_mean_mm": orig[0]["mean_mm"] if orig else None,
             "Case24_seconds": orig[0]["seconds"] if orig else None}
        if moved:
            e = np.array([r["mean_mm"] for r in moved])
            s.update({"moved_n": len(moved), "moved_median_mm": float(np.median(e)), "moved_mean_mm": float(e.mean()),
                      "moved_max_mm": float(e.max()), "moved_within_2mm": int(np.sum(e <= 2.0)),
                      "moved_median_seconds": float(np.median([r["seconds"] for r in moved]))})
        out[tool] = s
    return out


def markdown(summary, starts):
    lines = ["| tool | Case24 mean (mm) | time (s) | moved copies: median / mean / max (mm) | within 2 mm | "
             "median time (s) |", "|---|---|---|---|---|---|"]
    for tool, s in summary.items():
        def f(v, nd=2):
            return "-" if v is None else f"{v:.{nd}f}"
        lines.append(f"| {tool} | {f(s['Case24_mean_mm'])} | {f(s['Case24_seconds'], 1)} | "
                     f"{f(s.get('moved_median_mm'))} / {f(s.get('moved_mean_mm'))} / {f(s.get('moved_max_mm'))} | "
                     f"{s.get('moved_within_2mm', '-')}/{s.get('moved_n', '-')} | "
                     f"{f(s.get('moved_median_seconds'), 1)} |")
    lines.append(f"\nStart (identity): Case24 {starts['Case24']:.2f} mm; moved copies median "
                 f"{np.median(starts['moved']):.2f} mm (range {min(starts['moved']):.2f}-{max(starts['moved']):.2f}).")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--seeds", default="1-20", help="moved copies' seeds, e.g. 1-20 or 1,3,5")
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-original", action="store_true", help="only the moved copies")
    p.add_argument("--data", default=os.path.abspath(os.path.join(HERE, "..", "..", "..", "shared", "data")))
    args = p.parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    base = _resect.load_case24(args.data)
    cases = ([] if args.no_original else [base]) + [_resect.moved_copy(base, s) for s in parse_seeds(args.seeds)]
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    runners = {}
    for t in tools:
        if t == "ours":
            continue
        try:
            runners[t] = make(t)
        except ImportError as exc:
            print(f"{t}: not installed ({exc}); skipped")
    records = []
    jsonl = os.path.join(args.output_dir, "results.jsonl")
    starts = {"Case24": float(base.landmark_errors(sitk.Euler3DTransform()).mean()), "moved": []}
    for case in cases:
        mask = us_mask(case)
        start = float(case.landmark_errors(sitk.Euler3DTransform()).mean())
        if case is not base:
            starts["moved"].append(start)
        for t in tools:
            if t != "ours" and t not in runners:
                continue
            rec = {"case": case.name, "tool": t, "start_mm": start}
            try:
                if t == "ours":
                    tx, dt, info = run_ours(case, mask, args.threads)
                else:
                    tx, dt, info = runners[t].run_mr_us(case, mask)
                e = case.landmark_errors(tx)
                rec.update({"mean_mm": float(e.mean()), "max_mm": float(e.max()), "seconds": float(dt), "info": info})
            except Exception as exc:  # noqa: BLE001 - a tool's failure is a result
                rec.update({"mean_mm": None, "error": f"{type(exc).__name__}: {exc}",
                            "traceback": traceback.format_exc(limit=3)})
            records.append(rec)
            with open(jsonl, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            print(f"{case.name:24s} {t:8s} start {start:5.2f} -> "
                  f"{rec['mean_mm'] if rec['mean_mm'] is None else round(rec['mean_mm'], 2)} mm "
                  f"({rec.get('seconds', 0):.1f} s)", flush=True)
    summary = summarize(records)
    with open(os.path.join(args.output_dir, "results.json"), "w") as fh:
        json.dump({"summary": summary, "records": records, "starts": starts, "threads": args.threads}, fh, indent=1)
    md = markdown(summary, starts) if starts["moved"] else json.dumps(summary, indent=1)
    with open(os.path.join(args.output_dir, "results.md"), "w") as fh:
        fh.write(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
