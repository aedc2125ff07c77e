#!/usr/bin/env python3
"""Side-by-side benchmark: our engine vs elastix (itk-elastix) vs ANTs (antspyx), same inputs, same machine.

Not a pytest test: a script. See docs/benchmark.md. Examples::

    # the full run (long: about an hour on 2 cores with all three tools)
    python Testing/benchmarks/bench_registration.py --output-dir /tmp/bench
    # a quick one
    python Testing/benchmarks/bench_registration.py --output-dir /tmp/bench --cases brainweb2d,rigid3d \\
        --tools ours,elastix --seeds 0-1 --modalities ct

Families (``--cases``): brainweb2d, rigid3d, deformable3d, epi_t1, histology. Tools (``--tools``): ours, elastix,
ants (a tool that is not installed is skipped with a note). Every tool runs with the same number of threads
(``--threads``, default 2). Writes ``results.json``, ``results.md`` and ``time_vs_tre.png`` to ``--output-dir``.
"""

from __future__ import annotations

import argparse
import datetime  # noqa: E402
import json  # noqa: E402
import os
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys
import time  # noqa: E402
import traceback  # noqa: E402

import _bench_threads  # noqa: F401  (sets the thread count before ITK and the others load)
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench_cases as bc  # noqa: E402
import _bench_tools as bt  # noqa: E402

FAMILIES = ("brainweb2d", "rigid3d", "deformable3d", "epi_t1", "histology")
TOOLS = ("ours", "ours1", "elastix", "ants")  # ours1: ours with one thread (the engine's default)


def parse_seeds(text):
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def make_tool(name, notes):
    try:
        return {"ours": bt.Ours, "ours1": lambda: bt.Ours(threads=1), "elastix": bt.Elastix,
                "ants": bt.Ants}[name]()
    except ImportError as exc:
        notes.append(f"{name} skipped: not installed ({exc}); pip install -e '.[compare]'")
        return None


def versions():
    v = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    for mod, key in (("SimpleITK", "SimpleITK"), ("itk", "itk"), ("ants", "antspyx"), ("numpy", "numpy")):
        try:
            m = __import__(mod)
            v[key] = getattr(m, "__version__", None) or getattr(m, "Version", lambda: None)()
        except Exception:  # noqa: BLE001
            pass
    try:
        from importlib.metadata import version
        v["itk-elastix"] = version("itk-elastix")
    except Exception:  # noqa: BLE001
        pass
    return v


def evaluate(case, tool, res):
    rec = {"case": case.id, "family": case.family, "stage": case.stage, "tool": tool, "units": case.units,
           "seconds": round(res.seconds, 3), "info": res.info}
    est = bt.transform_points(res.transform, case.targets_fixed)
    err = np.linalg.norm(est - case.targets_moving, axis=1)
    rec.update(tre_mean=round(float(err.mean()), 4), tre_median=round(float(np.median(err)), 4),
               tre_max=round(float(err.max()), 4), n_targets=int(len(err)))
    if case.diagonal:
        rec["tre_mean_percent_of_diagonal"] = round(100.0 * float(err.mean()) / case.diagonal, 4)
        rec["diagonal"] = round(case.diagonal, 2)
    rec["success"] = bool(err.mean() < case.success_threshold)
    rec["success_threshold"] = round(case.success_threshold, 3)
    if case.stage == "deformable":
        fld = res.displacement if res.displacement is not None else bt.dense_field(res.transform, bt.grey(case.fixed))
        frac, dmin, dmax = bt.folding_fraction(fld)
        rec.update(folding_fraction=frac, jacobian_min=round(dmin, 4), jacobian_max=round(dmax, 4))
    try:
        rec["image_agreement"] = None if tool == "ours" else bt.image_agreement(case, res.transform, res.tool_image)
    except Exception as exc:  # noqa: BLE001
        rec["image_agreement_error"] = str(exc)
    return rec


def summarize(records):
    rows = []
    keys = sorted({(r["family"], r["tool"]) for r in records},
                  key=lambda k: (FAMILIES.index(k[0]), TOOLS.index(k[1])))
    for fam, tool in keys:
        rs = [r for r in records if r["family"] == fam and r["tool"] == tool]
        ok = [r for r in rs if "error" not in r]
        row = {"family": fam, "tool": tool, "n": len(rs), "errors": len(rs) - len(ok),
               "successes": sum(r["success"] for r in ok), "units": rs[0]["units"]}
        if ok:
            t = np.array([r["seconds"] for r in ok])
            e = np.array([r["tre_mean"] for r in ok])
            row.update(time_median=float(np.median(t)), time_max=float(t.max()), tre_median=float(np.median(e)),
                       tre_max=float(e.max()), tre_worst_point=float(max(r["tre_max"] for r in ok)))
            if any("folding_fraction" in r for r in ok):
                f = np.array([r.get("folding_fraction", np.nan) for r in ok])
                row.update(folding_median=float(np.nanmedian(f)), folding_max=float(np.nanmax(f)))
        rows.append(row)
    return rows


def bars(summary):
    """The issue's performance bar, evaluated on this run's numbers (None when a side is missing)."""
    s = {(r["family"], r["tool"]): r for r in summary}
    out = {}
    o, e = s.get(("rigid3d", "ours")), s.get(("rigid3d", "elastix"))
    if o and e and "time_median" in o and "time_median" in e:
        out["rigid3d"] = {
            "success_on_every_case": {"met": o["successes"] == o["n"], "ours": f"{o['successes']}/{o['n']}",
                                      "elastix": f"{e['successes']}/{e['n']}"},
            "median_time_at_most_half_of_elastix": {"met": o["time_median"] <= 0.5 * e["time_median"],
                                                    "ours_s": o["time_median"], "elastix_s": e["time_median"],
                                                    "ratio": o["time_median"] / e["time_median"]},
            "median_tre_no_worse_than_elastix": {"met": o["tre_median"] <= e["tre_median"],
                                                 "ours_mm": o["tre_median"], "elastix_mm": e["tre_median"]},
        }
    o, e = s.get(("deformable3d", "ours")), s.get(("deformable3d", "elastix"))
    if o and e and "time_median" in o and "time_median" in e:
        out["deformable3d"] = {
            "tre_no_worse_than_elastix_bspline": {"met": o["tre_median"] <= e["tre_median"],
                                                  "ours_mm": o["tre_median"], "elastix_mm": e["tre_median"]},
            "no_folding": {"met": o.get("folding_max", 1.0) == 0.0, "ours_max_fraction": o.get("folding_max"),
                           "elastix_max_fraction": e.get("folding_max")},
            "in_no_more_time": {"met": o["time_median"] <= e["time_median"], "ours_s": o["time_median"],
                                "elastix_s": e["time_median"], "ratio": o["time_median"] / e["time_median"]},
        }
    return out


def _fmt(v, nd=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != 0 and abs(v) < 10 ** -nd:
            return f"{v:.1e}"
        return f"{v:.{nd}f}"
    return str(v)


def markdown(report):
    lines = [f"# Registration benchmark, {report['started']}", "",
             f"Machine: {report['environment']['cpus']} CPUs, {report['threads']} threads per tool; "
             f"load average before/after: {report['load_before']} / {report.get('load_after')}.", ""]
    for n in report["notes"]:
        lines.append(f"- {n}")
    lines += ["", "## Summary per case family", "",
              "| family | tool | cases | successes | errors | time median (s) | time max (s) | TRE median | "
              "TRE max (of means) | worst point | folding median | folding max |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["summary"]:
        lines.append(f"| {r['family']} | {r['tool']} | {r['n']} | {r['successes']} | {r['errors']} | "
                     f"{_fmt(r.get('time_median'), 1)} | {_fmt(r.get('time_max'), 1)} | "
                     f"{_fmt(r.get('tre_median'))} {r['units']} | {_fmt(r.get('tre_max'))} | "
                     f"{_fmt(r.get('tre_worst_point'))} | {_fmt(r.get('folding_median'), 4)} | "
                     f"{_fmt(r.get('folding_max'), 4)} |")
    if report["bars"]:
        lines += ["", "## The bar (issue 5)", "", "| family | criterion | met | numbers |", "|---|---|---|---|"]
        for fam, crit in report["bars"].items():
            for name, d in crit.items():
                nums = ", ".join(f"{k}={_fmt(v, 3)}" for k, v in d.items() if k != "met")
                lines.append(f"| {fam} | {name} | {'yes' if d['met'] else '**no**'} | {nums} |")
    lines += ["", "## Every case", "",
              "| case | tool | time (s) | TRE mean | TRE max | % diag | success | folding | load | check |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["records"]:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['tool']} | - | - | - | - | error: {r['error'][:80]} | - | - | - |")
            continue
        lines.append(f"| {r['case']} | {r['tool']} | {r['seconds']:.1f} | {r['tre_mean']:.3f} {r['units']} | "
                     f"{r['tre_max']:.3f} | {_fmt(r.get('tre_mean_percent_of_diagonal'), 3)} | "
                     f"{'yes' if r['success'] else '**no**'} | {_fmt(r.get('folding_fraction'), 4)} | "
                     f"{_fmt(r.get('load_1min_before'), 1)} | {_fmt(r.get('image_agreement'), 3)} |")
    lines += ["", "TRE: mm, or pixels (px) for histology. '% diag': mean TRE relative to the image diagonal (2D). "
              "'check': normalised correlation between the tool's own resampled image and the moving image "
              "resampled through the transform the TRE was computed with (~1 = direction and composition read "
              "correctly). 'load': 1-minute load average just before the run.", ""]
    return "\n".join(lines)


def plot(records, path):
    ok = [r for r in records if "error" not in r and r["units"] == "mm"]
    if not ok:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    colours = {"ours": "tab:blue", "ours1": "tab:cyan", "elastix": "tab:orange", "ants": "tab:green"}
    markers = {"brainweb2d": "s", "rigid3d": "o", "deformable3d": "^", "epi_t1": "D"}
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    for tool in TOOLS:
        for fam, mk in markers.items():
            rs = [r for r in ok if r["tool"] == tool and r["family"] == fam]
            if rs:
                ax.scatter([r["seconds"] for r in rs], [max(r["tre_mean"], 1e-3) for r in rs], c=colours[tool],
                           marker=mk, alpha=0.75, label=f"{tool} {fam}")
    ax.axhline(2.0, color="grey", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("wall time of the registration call (s, 2 threads)")
    ax.set_ylabel("mean TRE (mm)")
    ax.set_title("time against TRE (dashed: 2 mm success threshold)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _read_jsonl(path):
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def case_generator(args, families):
    anatomies = [a.strip() for a in args.anatomies.split(",") if a.strip()]
    if "brainweb2d" in families:
        yield from bc.brainweb_cases(args.data_dir)
    if "rigid3d" in families:
        yield from bc.rigid3d_cases(args.data_dir, parse_seeds(args.seeds), anatomies,
                                    [m.strip() for m in args.modalities.split(",")],
                                    alternate=args.anatomy_mode == "alternate")
    if "deformable3d" in families:
        yield from bc.deformable3d_cases(args.data_dir, parse_seeds(args.deformable_seeds), anatomies,
                                         alternate=args.anatomy_mode == "alternate",
                                         amplitude_mm=args.deformable_amplitude_mm)
    if "epi_t1" in families:
        yield from bc.epi_t1_cases(args.data_dir)
    if "histology" in families:
        yield from bc.histology_cases(args.data_dir)


def worker(args, families):
    """Run one tool on every case, appending JSON lines to records_<tool>.jsonl (resumable after a crash)."""
    name = args.worker
    jsonl = os.path.join(args.output_dir, f"records_{name}.jsonl")
    skip = set() if args.skip in (None, "-") else set(args.skip.split(","))

    def emit(obj):
        with open(jsonl, "a") as f:
            f.write(json.dumps(obj, default=str) + "\n")

    notes = []
    tool = make_tool(name, notes)
    if tool is None:
        emit({"kind": "meta", "skipped": notes[0]})
        return 0
    t = time.perf_counter()
    tool.warm_up()
    emit({"kind": "meta", "warm_up_s": round(time.perf_counter() - t, 2), "environment": versions()})
    for case in case_generator(args, families):
        if case.id in skip:
            continue
        emit({"kind": "case", "case": case.id, "info": case.info})
        emit({"kind": "started", "case": case.id, "family": case.family, "stage": case.stage, "tool": name,
              "units": case.units})
        load = os.getloadavg()[0]
        try:
            ours = name in ("ours", "ours1")
            res = tool.run(case, args.ours_preset) if ours and args.ours_preset else tool.run(case)
            rec = evaluate(case, name, res)
        except Exception as exc:  # noqa: BLE001 - a tool failing is a result, not a crash of the benchmark
            rec = {"case": case.id, "family": case.family, "stage": case.stage, "tool": name, "units": case.units,
                   "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        rec["load_1min_before"] = round(load, 2)
        rec["kind"] = "record"
        emit(rec)
        print(f"{case.id:45s} {name:8s} " + (
            f"{rec['seconds']:7.1f} s  TRE {rec['tre_mean']:.3f}/{rec['tre_max']:.3f} {rec['units']}  "
            f"{'ok ' if rec['success'] else 'FAIL'}"
            + (f"  fold {rec['folding_fraction']:.2e}" if "folding_fraction" in rec else "")
            + (f"  check {rec['image_agreement']:.3f}" if rec.get("image_agreement") is not None else "")
            + f"  load {load:.1f}" if "error" not in rec else rec["error"][:150]), flush=True)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--data-dir", default=bc.DEFAULT_DATA)
    ap.add_argument("--cases", default=",".join(FAMILIES), help="comma list of " + ", ".join(FAMILIES))
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--seeds", default="0-9", help="rigid3d seeds, e.g. 0-9 or 0,3,5 (default 0-9)")
    ap.add_argument("--deformable-seeds", default="0-1", help="deformable3d seeds (default 0-1)")
    ap.add_argument("--anatomies", default="mni152,colin27")
    ap.add_argument("--anatomy-mode", choices=("both", "alternate"), default="both",
                    help="both: every seed on every anatomy; alternate: seed parity picks the anatomy")
    ap.add_argument("--modalities", default="ct,t2,pet", help="rigid3d modalities")
    ap.add_argument("--deformable-amplitude-mm", type=float, default=6.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ours-preset", default=None, help="override our preset for every case (experiments)")
    ap.add_argument("--resume", action="store_true", help="keep records_<tool>.jsonl of an interrupted run")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--skip", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    os.makedirs(args.output_dir, exist_ok=True)
    os.environ.setdefault("BENCH_TMP", args.output_dir)
    families = [f.strip() for f in args.cases.split(",") if f.strip()]
    bad = set(families) - set(FAMILIES)
    if bad:
        ap.error(f"unknown case families {sorted(bad)}; choose from {', '.join(FAMILIES)}")
    if not os.path.isdir(args.data_dir):
        ap.error(f"data folder {args.data_dir} not found (../shared/data relative to the project root)")
    if args.worker:
        return worker(args, families)

    # Each tool runs in its own worker process (one after the other, never at the same time): the three tools
    # bundle their own ITK builds, and a crash of one (a segmentation fault) must not take the others down. A
    # crashed case is recorded as an error and the worker is restarted after it.
    notes = []
    report = {"started": datetime.datetime.now().isoformat(timespec="seconds"), "threads": args.threads,
              "argv": sys.argv, "environment": versions(), "load_before": [round(x, 2) for x in os.getloadavg()],
              "notes": notes, "records": [], "cases": {}, "warm_up_s": {}}
    notes.append("timed: the registration call only (engine.register / itk.elastix_registration_method / "
                 "ants.registration), each tool warmed up once in its own process; imports, file reading, image "
                 "conversion and transform extraction excluded for all tools")
    notes.append("elastix: default parameter maps (rigid; rigid + bspline for deformable3d; affine + bspline for "
                 "histology); ANTs: type_of_transform 'Rigid', 'ElasticSyN' for deformable cases")
    out_json = os.path.join(args.output_dir, "results.json")
    per_tool = {}
    for name in [t.strip() for t in args.tools.split(",") if t.strip()]:
        jsonl = os.path.join(args.output_dir, f"records_{name}.jsonl")
        if os.path.exists(jsonl) and not args.resume:
            os.remove(jsonl)
        crashed = []
        for _attempt in range(50):
            done = _read_jsonl(jsonl)
            skip = {r["case"] for r in done if r.get("kind") in ("record", "crash")}
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--skip",
                   ",".join(sorted(skip)) or "-"] + [a for a in (argv if argv is not None else sys.argv[1:])]
            rc = subprocess.call(cmd)
            if rc == 0:
                break
            lines = _read_jsonl(jsonl)
            started = [r for r in lines if r.get("kind") == "started"]
            finished = {r["case"] for r in lines if r.get("kind") in ("record", "crash")}
            pending = [r for r in started if r["case"] not in finished]
            if not pending:
                notes.append(f"{name} worker exited with {rc} outside a case")
                break
            crash = dict(pending[-1], kind="crash", error=f"worker process died (exit code {rc}) during this case")
            crashed.append(crash["case"])
            with open(jsonl, "a") as f:
                f.write(json.dumps(crash) + "\n")
        lines = _read_jsonl(jsonl)
        for r in lines:
            if r.get("kind") == "meta":
                if r.get("skipped"):
                    notes.append(r["skipped"])
                report["warm_up_s"][name] = r.get("warm_up_s")
                report["environment"].update(r.get("environment", {}))
            if r.get("kind") == "case":
                report["cases"][r["case"]] = r["info"]
        per_tool[name] = {r["case"]: r for r in lines if r.get("kind") in ("record", "crash")}
    order = list(report["cases"])
    for cid in order:
        for name in per_tool:
            if cid in per_tool[name]:
                r = dict(per_tool[name][cid])
                r.pop("kind", None)
                report["records"].append(r)
    report["load_after"] = [round(x, 2) for x in os.getloadavg()]
    report["summary"] = summarize(report["records"])
    report["bars"] = bars(report["summary"])
    png = plot(report["records"], os.path.join(args.output_dir, "time_vs_tre.png"))
    report["plot"] = png
    with open(out_json, "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(markdown(report))
    print(markdown(report).split("## Every case")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
