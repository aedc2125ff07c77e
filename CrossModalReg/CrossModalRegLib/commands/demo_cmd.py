"""``crossmodalreg demo``: the main job on built-in data, no download.

Builds a digital head phantom (tissue labels and named landmarks), draws an MR-T1-like fixed image and CT-like,
PET-like and T2-like moving images of it, each on its own anisotropic grid under a known random rigid transform,
registers each with its preset and prints the target registration error against the known truth.
"""

from __future__ import annotations

import os
import shlex
import time

import numpy as np


def add_parser(sub):
    p = sub.add_parser("demo", help="simulate a CT/PET/T2 vs MR phantom, register, print TRE against the truth",
                       description=__doc__)
    p.add_argument("--output-dir", required=True, help="folder to write (must be empty or absent)")
    p.add_argument("--seed", type=int, default=7, help="seed of the phantom's noise and random transforms")
    p.add_argument("--max-angle", type=float, default=30.0, help="largest rotation of the simulated misalignment (deg)")
    p.add_argument("--max-translation", type=float, default=30.0, help="largest translation (mm)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder (at the end)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    return p


CASES = [
    # name, modality, preset, spacing of the moving grid (mm)
    ("ct_to_mr", "ct", "mr-ct-rigid", (0.8, 0.8, 2.5)),
    ("pet_to_mr", "pet", "mr-pet-rigid", (3.0, 3.0, 3.0)),
    ("t2_to_mr", "t2", "mr-t1-t2-rigid", (1.2, 1.0, 3.5)),
]


def _repeat_command(args, name: str) -> str:
    """The command that makes this demo again (all three pairs; ``name`` is the one this folder holds)."""
    return shlex.join(["crossmodalreg", "demo", "--output-dir", os.path.abspath(args.output_dir) + "-repeat",
                       "--seed", str(args.seed), "--max-angle", f"{args.max_angle:g}",
                       "--max-translation", f"{args.max_translation:g}"]) + f"   # all three pairs; this is {name}"


def run(args) -> int:
    import SimpleITK as sitk

    from .. import simulation as sim
    from ..geometry import transform_points
    from ..image_io import write_image
    from ..output_dir import OutputFolder
    from ..pipeline import TerminalProgress, run_registration_job
    from ..provenance import write_json_atomic
    from ..tables import Column, write_tsv

    with OutputFolder(args.output_dir, overwrite=args.overwrite) as out:
        tmp = out.staging
        rng = np.random.RandomState(args.seed)
        model = sim.head_phantom()
        fixed = sim.render(model, "t1", rng=rng)
        phantom_dir = os.path.join(tmp, "phantom")
        os.makedirs(phantom_dir)
        write_image(fixed, os.path.join(phantom_dir, "fixed_mr_t1.nii.gz"))
        write_image(model.labels, os.path.join(phantom_dir, "tissue_labels.nii.gz"))
        labels = list(model.landmarks_lps)
        fixed_pts = np.array([model.landmarks_lps[k] for k in labels])
        brain_targets = sim.points_in_mask(model.brain_mask(), 500, np.random.RandomState(args.seed + 1))
        center = np.array(fixed.TransformContinuousIndexToPhysicalPoint(
            tuple((np.array(fixed.GetSize(), float) - 1) / 2)))
        rows = []
        print(f"digital phantom: {fixed.GetSize()} voxels of {fixed.GetSpacing()[0]} mm; {len(labels)} landmarks")
        for name, modality, preset, spacing in CASES:
            truth = sim.random_rigid_transform(rng, center=center, max_angle_deg=args.max_angle,
                                               max_translation_mm=args.max_translation)
            source = sim.render(model, modality, rng=rng)
            moving = sim.simulate_pair(source, truth, spacing=spacing, rng=rng)
            case_dir = os.path.join(tmp, name)
            moving_path = os.path.join(phantom_dir, f"moving_{modality}.nii.gz")
            write_image(moving, moving_path)
            sitk.WriteTransform(truth, os.path.join(phantom_dir, f"truth_{modality}_fixed_to_moving_lps.tfm"))
            angle = np.degrees(np.arccos(np.clip((np.trace(np.array(truth.GetMatrix()).reshape(3, 3)) - 1) / 2, -1, 1)))
            print(f"\n{name}: {modality.upper()} on a {moving.GetSize()} grid of {spacing} mm, misaligned by "
                  f"{angle:.1f} deg and {np.linalg.norm(truth.GetTranslation()):.1f} mm; preset {preset}")
            t0 = time.perf_counter()
            result, _ = run_registration_job(
                fixed, moving, case_dir, preset=preset, progress=TerminalProgress(enabled=not args.no_progress),
                fixed_landmarks=fixed_pts, moving_landmarks=transform_points(truth, fixed_pts),
                landmark_labels=labels, use_landmarks_for_initialization=False,
                image_names={"fixed": "MR-T1 phantom", "moving": f"{modality.upper()} phantom"},
                extra_provenance={"command": _repeat_command(args, name), "ground_truth_fixed_to_moving_lps": {
                    "type": truth.GetName(), "parameters": list(truth.GetParameters()),
                    "fixed_parameters": list(truth.GetFixedParameters())}},
            )
            wall = time.perf_counter() - t0
            tre_lm = sim.target_registration_errors(result.transform_fixed_to_moving_lps, truth, fixed_pts)
            tre_brain = sim.target_registration_errors(result.transform_fixed_to_moving_lps, truth, brain_targets)
            rows.append({"case": name, "preset": preset, "misalignment_deg": angle,
                         "misalignment_mm": float(np.linalg.norm(truth.GetTranslation())),
                         "tre_landmarks_mean_mm": tre_lm.mean(), "tre_landmarks_max_mm": tre_lm.max(),
                         "tre_brain_mean_mm": tre_brain.mean(), "tre_brain_max_mm": tre_brain.max(),
                         "registration_s": result.timings_s["total"], "wall_s": wall,
                         "sanity": "passed" if result.sanity.passed else "failed"})
            print(f"  TRE at {len(labels)} landmarks: mean {tre_lm.mean():.2f} mm, max {tre_lm.max():.2f} mm; "
                  f"over the brain: mean {tre_brain.mean():.2f} mm, max {tre_brain.max():.2f} mm "
                  f"({result.timings_s['total']:.1f} s)")
        columns = [
            Column("case", "Case", "", "Simulated modality pair", "string"),
            Column("preset", "Preset", "", "Registration preset used", "string"),
            Column("misalignment_deg", "Rotation", "deg", "Angle of the simulated rotation", digits=4),
            Column("misalignment_mm", "Translation", "mm", "Length of the simulated translation", digits=4),
            Column("tre_landmarks_mean_mm", "TRE landmarks mean", "mm", "Mean target registration error at the named landmarks", digits=4),
            Column("tre_landmarks_max_mm", "TRE landmarks max", "mm", "Largest TRE at the named landmarks", digits=4),
            Column("tre_brain_mean_mm", "TRE brain mean", "mm", "Mean TRE at 500 random points in the brain", digits=4),
            Column("tre_brain_max_mm", "TRE brain max", "mm", "Largest TRE at those points", digits=4),
            Column("registration_s", "Registration time", "s", "Engine time (preprocessing to sanity checks)", digits=4),
            Column("wall_s", "Wall time", "s", "Including writing the outputs and pictures", digits=4),
            Column("sanity", "Sanity checks", "", "Post-run checks of the engine", "string"),
        ]
        write_tsv(os.path.join(tmp, "demo_tre.tsv"), columns, rows)
        write_json_atomic(os.path.join(tmp, "demo_summary.json"), {"seed": args.seed, "cases": rows})
    worst = max(r["tre_brain_mean_mm"] for r in rows)
    print(f"\nworst mean TRE over the brain: {worst:.2f} mm; results in {os.path.abspath(args.output_dir)}")
    return 0
