"""The three tools behind one interface: ``run(case) -> ToolResult``.

Timing: only the registration call itself is timed (``time.perf_counter`` around ``engine.register``,
``itk.elastix_registration_method`` and ``ants.registration``). Imports, file reading, conversion of the
in-memory SimpleITK images into each tool's image type and the extraction of the result transform are excluded,
the same way for all. Each tool is warmed up once on a tiny image before the first timed call so that lazy
module loading (ITK's Python wrapping loads on first use) is not charged to the first case.

Direction: every tool's answer is turned into a SimpleITK transform mapping FIXED points to MOVING points (LPS);
``image_agreement`` checks it numerically on every case: the moving image resampled through that transform is
compared (normalised correlation inside the fixed image's foreground) with the tool's own resampled output. A
wrong direction or composition order gives a low value.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

THREADS = int(os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "2"))


@dataclass
class ToolResult:
    transform: sitk.Transform | None  # fixed -> moving, LPS
    seconds: float
    tool_image: sitk.Image | None = None  # the tool's own moving-resampled-to-fixed output (for the check)
    displacement: sitk.Image | None = None  # dense displacement field on the fixed grid (deformable)
    info: dict = field(default_factory=dict)
    error: str | None = None


def _sitk_to_numpy_geometry(img):
    dim = img.GetDimension()
    return (sitk.GetArrayFromImage(img).astype(np.float32), np.array(img.GetOrigin()), np.array(img.GetSpacing()),
            np.array(img.GetDirection()).reshape(dim, dim))


# ---------------------------------------------------------------------------------------------- ours
class Ours:
    name = "ours"

    def __init__(self, threads=None):
        """``threads``: the engine's ``threads`` (default: --threads, as every tool); 1 for the ``ours1`` tool."""
        import sys
        here = os.path.dirname(os.path.abspath(__file__))
        sys.path.insert(0, os.path.abspath(os.path.join(here, "..", "..", "CrossModalReg")))
        import inspect

        from CrossModalRegLib import engine
        self.engine = engine
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(THREADS)
        # The engine's thread keyword (``threads``, default 1 for bit-identical runs; ``number_of_threads`` in
        # older versions): every tool gets the same number of threads (--threads), ours included.
        params = inspect.signature(engine.register).parameters
        key = "threads" if "threads" in params else "number_of_threads" if "number_of_threads" in params else None
        self.thread_kw = {key: threads or THREADS} if key else {}

    def warm_up(self):
        img = sitk.GaussianSource(sitk.sitkFloat32, [32, 32, 32], [6, 6, 6], [16, 16, 16])
        try:
            self.engine.register(img, img, preset="multimodal-rigid", strict=False, **self.thread_kw,
                                 overrides={"stages.0.optimizer.iterations": 2})
        except Exception:  # noqa: BLE001 - a warm-up only
            pass

    def run(self, case, preset=None):
        t = time.perf_counter()
        r = self.engine.register(case.fixed, case.moving, preset=preset or case.preset, strict=False,
                                 **self.thread_kw)
        dt = time.perf_counter() - t
        info = {"sanity_passed": bool(r.sanity.passed) if r.sanity else None, "engine_timings_s": r.timings_s,
                "threads": self.thread_kw,
                "preset": preset or case.preset, "stop_conditions": r.stop_conditions}
        if not (r.sanity and r.sanity.passed):
            info["sanity_failures"] = r.sanity.failures() if r.sanity else []
        return ToolResult(transform=r.transform_fixed_to_moving_lps, seconds=dt, info=info)


# ------------------------------------------------------------------------------------------- elastix
class Elastix:
    name = "elastix"

    def __init__(self):
        import itk
        self.itk = itk
        # ITK's Python wrapping loads modules lazily: touch what is used now (untimed).
        self.itk.ElastixRegistrationMethod  # noqa: B018
        self.itk.TransformixFilter  # noqa: B018

    def _to_itk(self, img):
        arr, origin, spacing, direction = _sitk_to_numpy_geometry(img)
        out = self.itk.image_from_array(np.ascontiguousarray(arr))
        out.SetOrigin(origin.tolist())
        out.SetSpacing(spacing.tolist())
        out.SetDirection(self.itk.matrix_from_array(direction))
        return out

    @staticmethod
    def _to_sitk(img, like):
        arr = np.asarray(img)
        out = sitk.GetImageFromArray(arr.astype(np.float32))
        out.CopyInformation(like)
        return out

    def maps_for(self, case):
        if case.family == "histology":
            return ["affine", "bspline"]
        return ["rigid"] if case.stage == "rigid" else ["rigid", "bspline"]

    def warm_up(self):
        img = sitk.GaussianSource(sitk.sitkFloat32, [32, 32, 32], [6, 6, 6], [16, 16, 16])
        po = self.itk.ParameterObject.New()
        m = po.GetDefaultParameterMap("rigid")
        m["MaximumNumberOfIterations"] = ["2"]
        m["NumberOfResolutions"] = ["1"]
        po.AddParameterMap(m)
        self.itk.elastix_registration_method(self._to_itk(img), self._to_itk(img), parameter_object=po,
                                             log_to_console=False)

    def run(self, case):
        fixed_s = case.fixed_for_tools or case.fixed
        moving_s = case.moving_for_tools or case.moving
        fixed, moving = self._to_itk(fixed_s), self._to_itk(moving_s)
        po = self.itk.ParameterObject.New()
        maps = self.maps_for(case)
        for name in maps:
            po.AddParameterMap(po.GetDefaultParameterMap(name))
        t = time.perf_counter()
        # Threads: ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS (set before import). Passing number_of_threads=2
        # explicitly makes itk-elastix 0.25.4 crash (segmentation fault) in the B-spline stage's ASGD parameter
        # estimation ("Sampling gradients"), in 2D and 3D; without it the run is fine.
        result_image, result_params = self.itk.elastix_registration_method(
            fixed, moving, parameter_object=po, log_to_console=False)
        dt = time.perf_counter() - t
        tool_image = self._to_sitk(result_image, fixed_s)
        info = {"parameter_maps": maps, "defaults": "itk-elastix ParameterObject.GetDefaultParameterMap"}
        if case.stage == "rigid":
            tx = self._rigid_to_sitk(result_params, fixed_s.GetDimension())
            return ToolResult(transform=tx, seconds=dt, tool_image=tool_image, info=info)
        # Dense displacement field of the whole composition, computed by transformix itself (exact elastix
        # semantics, including the order in which the maps compose), on the fixed grid.
        fld = self.itk.transformix_deformation_field(moving, result_params)
        arr = np.asarray(fld).astype(np.float64)
        field_img = sitk.GetImageFromArray(arr, isVector=True)
        field_img.CopyInformation(fixed_s)
        tx = sitk.DisplacementFieldTransform(sitk.Image(field_img))
        return ToolResult(transform=tx, seconds=dt, tool_image=tool_image, displacement=field_img, info=info)

    @staticmethod
    def _rigid_to_sitk(params, dim):
        m = params.GetParameterMap(0)
        p = [float(v) for v in m["TransformParameters"]]
        c = [float(v) for v in m["CenterOfRotationPoint"]]
        if m["Transform"][0] != "EulerTransform":
            raise RuntimeError(f"unexpected elastix transform {m['Transform'][0]}")
        if dim == 2:
            return sitk.Euler2DTransform(c, p[0], p[1:3])
        tx = sitk.Euler3DTransform()
        tx.SetCenter(c)
        if m.get("ComputeZYX", ["false"])[0] == "true":
            tx.SetComputeZYX(True)
        tx.SetParameters(p)
        return tx


# ---------------------------------------------------------------------------------------------- ANTs
class Ants:
    name = "ants"
    DEFORMABLE = "ElasticSyN"

    def __init__(self):
        import ants
        self.ants = ants

    def _to_ants(self, img):
        arr, origin, spacing, direction = _sitk_to_numpy_geometry(img)
        # ANTs arrays are indexed (x, y, z); SimpleITK's (z, y, x).
        return self.ants.from_numpy(np.ascontiguousarray(arr.T), origin=origin.tolist(), spacing=spacing.tolist(),
                                    direction=direction)

    @staticmethod
    def _to_sitk(img, like):
        out = sitk.GetImageFromArray(np.ascontiguousarray(img.numpy().T).astype(np.float32))
        out.CopyInformation(like)
        return out

    def type_for(self, case):
        return "Rigid" if case.stage == "rigid" else self.DEFORMABLE

    def warm_up(self):
        img = sitk.GaussianSource(sitk.sitkFloat32, [32, 32, 32], [6, 6, 6], [16, 16, 16])
        a = self._to_ants(img)
        with tempfile.TemporaryDirectory() as d:
            self.ants.registration(a, a, type_of_transform="Translation", outprefix=os.path.join(d, "w"),
                                   aff_iterations=(2,), aff_shrink_factors=(1,), aff_smoothing_sigmas=(0,))

    def run(self, case):
        fixed_s = case.fixed_for_tools or case.fixed
        moving_s = case.moving_for_tools or case.moving
        fixed, moving = self._to_ants(fixed_s), self._to_ants(moving_s)
        kind = self.type_for(case)
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
            t = time.perf_counter()
            out = self.ants.registration(fixed, moving, type_of_transform=kind, outprefix=os.path.join(d, "r_"))
            dt = time.perf_counter() - t
            tool_image = self._to_sitk(out["warpedmovout"], fixed_s)
            info = {"type_of_transform": kind, "fwdtransforms": [os.path.basename(p) for p in out["fwdtransforms"]]}
            if case.stage == "rigid":
                (mat,) = out["fwdtransforms"]
                tx = sitk.ReadTransform(mat)
                return ToolResult(transform=tx, seconds=dt, tool_image=tool_image, info=info)
            # ANTs composes its own list into one displacement field on the fixed grid (its own semantics).
            composed = self.ants.apply_transforms(fixed, moving, transformlist=out["fwdtransforms"],
                                                  compose=os.path.join(d, "composed_"))
            field_img = sitk.Cast(sitk.ReadImage(composed), sitk.sitkVectorFloat64)
            tx = sitk.DisplacementFieldTransform(sitk.Image(field_img))
            return ToolResult(transform=tx, seconds=dt, tool_image=tool_image, displacement=field_img, info=info)


# ------------------------------------------------------------------------------------------ measures
def transform_points(tx, pts):
    return np.array([tx.TransformPoint(tuple(map(float, p))) for p in pts])


def dense_field(tx, reference):
    """Displacement field (fixed -> moving minus identity) of ``tx`` on ``reference``'s grid."""
    return sitk.TransformToDisplacementField(tx, sitk.sitkVectorFloat64, reference.GetSize(), reference.GetOrigin(),
                                             reference.GetSpacing(), reference.GetDirection())


def folding_fraction(field_img):
    """Fraction of voxels of the fixed grid where det(Jacobian of x -> x + u(x)) <= 0, and the min/max det."""
    det = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field_img))
    return float(np.mean(det <= 0)), float(det.min()), float(det.max())


def grey(img):
    if img.GetNumberOfComponentsPerPixel() == 1:
        return sitk.Cast(img, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    out = sitk.GetImageFromArray(arr[..., :3].mean(axis=-1))
    out.CopyInformation(sitk.VectorIndexSelectionCast(img, 0))
    return out


def image_agreement(case, tx, tool_image):
    """Normalised correlation, over the fixed foreground, of the moving image resampled through ``tx`` (our
    reading of the tool's answer) and the tool's own resampled output. ~1 when the direction is right."""
    if tool_image is None or tx is None:
        return None
    moving = grey(case.moving_for_tools or case.moving)
    fixed = grey(case.fixed_for_tools or case.fixed)
    ours = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    theirs = sitk.GetArrayViewFromImage(tool_image)
    fg = (sitk.GetArrayFromImage(sitk.OtsuThreshold(fixed, 0, 1, 64)) > 0) & (ours != 0) & (theirs != 0)
    if fg.sum() < 100:
        return None
    a = ours[fg] - ours[fg].mean()
    b = theirs[fg] - theirs[fg].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-12))
