"""Reproduce the remaining items of issue #12 against the current code (tiny synthetic inputs, a few seconds each).

    .venv/bin/python scripts/repro_issue12.py [WORKDIR]

Prints one line per case: OK (behaves as the README promises) or FAIL with the exit code and the last stderr line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile

import numpy as np
import SimpleITK as sitk

PY = sys.executable
CLI = [PY, "-m", "CrossModalRegLib.cli"]
ENV = dict(os.environ, PYTHONPATH=os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "CrossModalReg")))
CHEAP = ["--no-progress", "--no-rotation-search", "--no-orientation-search",
         "--set", "stages.0.optimizer.iterations=15", "--set", "stages.0.sampling.samples_per_level=[2000,2000,2000]"]


def blob(shift=(0.0, 0.0, 0.0), invert=False, size=24, dim=3):
    grid = np.indices((size,) * dim).astype(float)
    c = (size - 1) / 2
    r2 = sum((g - c - s) ** 2 for g, s in zip(grid, shift[::-1]))
    arr = np.exp(-r2 / 30.0) + 0.5 * (np.abs(grid[0] - c - shift[-1]) < 4)
    arr = 1.0 - arr if invert else arr
    img = sitk.GetImageFromArray((100 * arr).astype(np.float32))
    img.SetSpacing((2.0,) * dim)
    return img


SLOW_AFFINE = ["--preset", "multimodal-affine", "--no-rotation-search", "--no-orientation-search",
               "--set", "stages.1.optimizer.iterations=5000", "--set", "stages.1.optimizer.min_step=1e-9",
               "--set", "stages.1.optimizer.gradient_tolerance=0"]


def start_slow(out):
    """A registration that is in its affine stage (for several seconds) when this returns."""
    p = subprocess.Popen(CLI + ["register", "--fixed", "f.nii.gz", "--moving", "m.nii.gz", *SLOW_AFFINE,
                                "--output-dir", out], env=ENV, stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        if "affine level" in line:
            break
    return p


def run(args, cwd=None, timeout=120):
    p = subprocess.run(CLI + args, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=timeout)
    return p.returncode, p.stderr.strip().splitlines()


def report(name, ok, code=None, err=None):
    tail = (err[-1] if err else "")[:160]
    print(f"{'OK  ' if ok else 'FAIL'} {name}" + ("" if ok else f"  [exit {code}] {tail}"), flush=True)


def one_line(code, err, want=2):
    return code == want and len(err) == 1 and err[0].startswith("crossmodalreg: ")


def main(work):
    os.makedirs(work, exist_ok=True)
    os.chdir(work)
    sitk.WriteImage(blob(), "f.nii.gz")
    sitk.WriteImage(blob((2, 1, 0), invert=True), "m.nii.gz")
    sitk.WriteImage(blob(dim=2), "f2.nii.gz")
    base = ["register", "--fixed", "f.nii.gz", "--moving", "m.nii.gz", *CHEAP]

    # 1. output-folder protocol
    code, err = run(base + ["--output-dir", "ok"])
    report("register baseline", code == 0, code, err)
    os.makedirs("inside", exist_ok=True)
    sitk.WriteImage(blob(), "inside/f.nii.gz")
    code, err = run(["register", "--fixed", "inside/f.nii.gz", "--moving", "m.nii.gz", *CHEAP,
                     "--output-dir", "inside", "--overwrite"])
    report("--overwrite with an input inside the output folder refused", one_line(code, err)
           and os.path.isfile("inside/f.nii.gz"), code, err)
    os.makedirs("dot", exist_ok=True)  # its own folder: today the run deletes it
    sitk.WriteImage(blob(), "dot/f.nii.gz")
    code, err = run(["register", "--fixed", "f.nii.gz", "--moving", "../m.nii.gz", *CHEAP, "--output-dir", ".",
                     "--overwrite"], cwd=os.path.abspath("dot"))
    report("--output-dir . --overwrite refused", one_line(code, err) and os.path.isfile("dot/f.nii.gz"), code, err)
    open("afile", "w").close()
    code, err = run(base + ["--output-dir", "afile"])
    report("register output that is a file", one_line(code, err), code, err)
    code, err = run(base + ["--output-dir", "new1/new2/out", "--threads", "-3"])
    report("empty parents removed on failure", not os.path.exists("new1"), code, err)
    os.makedirs(".stale.partial-999999-x", exist_ok=True)
    code, err = run(base + ["--output-dir", "stale"])
    report("stale partial of a dead pid removed", code == 0 and not os.path.exists(".stale.partial-999999-x"), code, err)
    # concurrent runs: the second starts while the first is in its affine stage
    p1 = start_slow("conc")
    code, err = run(base + ["--output-dir", "conc", "--overwrite"])
    p1.kill()
    p1.wait()
    report("second run on the same folder refused at once", one_line(code, err) and "another run" in err[0], code, err)
    # landmarks register into a non-empty folder
    lm = {"@schema": "https://raw.githubusercontent.com/slicer/slicer/main/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
          "markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": [
              {"label": f"p{i}", "position": list(map(float, p))} for i, p in
              enumerate([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10], [5, 5, 5]])]}]}
    with open("fl.mrk.json", "w") as f:
        json.dump(lm, f)
    os.makedirs("lmout", exist_ok=True)
    open("lmout/old.txt", "w").close()
    code, err = run(["landmarks", "register", "--fixed-landmarks", "fl.mrk.json", "--moving-landmarks", "fl.mrk.json",
                     "--output-dir", "lmout"])
    report("landmarks register into a non-empty folder refused", one_line(code, err), code, err)
    code, err = run(["landmarks", "register", "--fixed-landmarks", "fl.mrk.json", "--moving-landmarks", "fl.mrk.json",
                     "--output-dir", "afile"])
    report("landmarks register output that is a file", one_line(code, err), code, err)
    os.makedirs("vout", exist_ok=True)
    open("vout/x", "w").close()
    sitk.WriteTransform(sitk.Euler3DTransform(), "id3.tfm")
    code, err = run(["validate", "--fixed", "f.nii.gz", "--moving", "m.nii.gz", "--transform", "id3.tfm",
                     "--output-dir", "vout", "--overwrite"])
    report("validate accepts --overwrite", code == 0, code, err)

    # 2. signals, sent while the affine stage runs
    for sig, want in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        p = start_slow(f"sig{want}")
        p.send_signal(sig)
        err = p.communicate(timeout=60)[1].strip().splitlines()
        left = [n for n in os.listdir(".") if n.startswith(f".sig{want}") or n == f"sig{want}"]
        report(f"{sig.name} -> {want}, one line, nothing left", p.returncode == want and len(err) == 1 and not left,
               p.returncode, err + [f"left: {left}"])

    # 3. traceback cases
    sitk.WriteTransform(sitk.Euler2DTransform(), "id2.tfm")
    with open("garbage.h5", "w") as f:
        f.write("not a transform\n")
    bad_mrk = dict(lm, markups="oops")
    with open("str.mrk.json", "w") as f:
        json.dump(bad_mrk, f)
    twod = json.loads(json.dumps(lm))
    for cp in twod["markups"][0]["controlPoints"]:
        cp["position"] = cp["position"][:2]
    with open("twod.mrk.json", "w") as f:
        json.dump(twod, f)
    text = json.loads(json.dumps(lm))
    for cp in text["markups"][0]["controlPoints"]:
        cp["position"] = ["a", "b", "c"]
    with open("text.mrk.json", "w") as f:
        json.dump(text, f)
    os.makedirs("ro", exist_ok=True)
    os.chmod("ro", 0o555)
    cases = {
        "--threads -3": base + ["--threads", "-3", "--output-dir", "o1"],
        "--seed -1": base + ["--seed", "-1", "--output-dir", "o2"],
        "garbage --initial-transform": base + ["--initial-transform", "garbage.h5", "--output-dir", "o3"],
        "string markups": ["landmarks", "register", "--fixed-landmarks", "str.mrk.json", "--moving-landmarks",
                           "fl.mrk.json", "--output-dir", "o4"],
        "2-D positions": ["landmarks", "register", "--fixed-landmarks", "twod.mrk.json", "--moving-landmarks",
                          "fl.mrk.json", "--output-dir", "o5"],
        "text positions": ["landmarks", "register", "--fixed-landmarks", "text.mrk.json", "--moving-landmarks",
                           "fl.mrk.json", "--output-dir", "o6"],
        "register string markups": base + ["--fixed-landmarks", "str.mrk.json", "--moving-landmarks", "fl.mrk.json",
                                           "--output-dir", "o6b"],
        "validate 2D transform on 3D": ["validate", "--fixed", "f.nii.gz", "--moving", "m.nii.gz", "--transform",
                                        "id2.tfm", "--output-dir", "o7"],
        "validate 3D transform on 2D": ["validate", "--fixed", "f2.nii.gz", "--moving", "f2.nii.gz", "--transform",
                                        "id3.tfm", "--output-dir", "o8"],
        "validate text landmarks": ["validate", "--fixed", "f.nii.gz", "--moving", "m.nii.gz", "--transform",
                                    "id3.tfm", "--fixed-landmarks", "text.mrk.json", "--moving-landmarks",
                                    "fl.mrk.json", "--output-dir", "o8b"],
        "300-character name": base + ["--output-dir", "y" * 300],
        "negative iterations --set": base + ["--set", "stages.0.optimizer.iterations=-5", "--output-dir", "o9"],
        "wrong type --set": base + ["--set", "stages.0.optimizer.iterations=\"many\"", "--output-dir", "o10"],
        "out-of-range --set index": base + ["--set", "stages.7.optimizer.iterations=5", "--output-dir", "o11"],
    }
    for name, args in cases.items():
        code, err = run(args)
        report(name, one_line(code, err) and "Traceback" not in "\n".join(err), code, err)
    os.chmod("ro", 0o755)
    code, err = run(base + ["--output-dir", "x" * 250])
    report("250-character name works (staging/lock names shortened)", code == 0, code, err)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="repro12-")))
