"""Quality-control pictures a reader can judge in seconds, made with Slicer's own slice compositing.

For each of the axial, coronal and sagittal views through the region of interest (the fixed image's foreground
centre, or the fixed landmarks' centroid) the fixed and moving volumes are resliced by ``vtkMRMLSliceLogic``
exactly as Slicer's slice views show them, on ONE field of view shared by "before" and "after", at 2 px/mm or more:

* contour panel: the moving image in grey with the fixed image's edges (Canny, computed once per view on the
  fixed slice) drawn over it in red, so the same red line sits on the same place before and after;
* checkerboard panel: fixed and moving tiles alternating, about 10 tiles across the fixed foreground; where the
  moving image has no data the fixed image shows (no black tiles);
* landmarks (when given) projected onto each view: a cyan dot at the fixed landmark, a yellow line to where the
  moving landmark lies in fixed space (its error vector).

Every panel is labelled: view name, slice position (RAS mm), the anatomical direction letters at its edges,
"before"/"after", and a 10 mm scale bar; a legend says which image is grey, which red, what the tiles are.
Text is drawn with VTK's FreeType text renderer (no OpenGL, no extra dependency).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from .geometry import embed_3d_points
from .overlay import layer_rgba

VIEWS_3D = ("Axial", "Coronal", "Sagittal")
LETTERS = (("L", "R"), ("P", "A"), ("I", "S"))  # RAS axis -> (letter towards -axis, letter towards +axis)
MIN_PX_PER_MM = 2.0
MIN_SIZE, MAX_SIZE = 384, 900
TILES_ACROSS = 10
EDGE_RGB = (255, 40, 40)
FIXED_LM_RGB = (0, 230, 255)
ERROR_RGB = (255, 230, 0)
TEXT_RGB = (255, 255, 255)
GREY_GRID = "vtkMRMLColorTableNodeGrey"


@dataclass
class Roi:
    """Region of interest in RAS mm: centre and extent (per RAS axis) of the fixed foreground."""

    center_ras: np.ndarray
    extent_ras: np.ndarray
    source: str = "fixed foreground"


@dataclass
class ViewGeometry:
    """One view's field of view, shared by the before and after pictures."""

    name: str
    width: int
    height: int
    fov_mm: float  # across (the panel's width); the height covers height / px_per_mm
    center_ras: np.ndarray
    tile_px: int
    xy_to_ras: np.ndarray = field(default=None)

    @property
    def px_per_mm(self) -> float:
        return self.width / self.fov_mm


def _ras(points_lps) -> np.ndarray:
    p = np.array(points_lps, float).reshape(-1, 3)
    return p * np.array([-1.0, -1.0, 1.0])


def foreground_roi(fixed: sitk.Image, landmarks_lps=None) -> Roi:
    """Centre and extent of the fixed image's foreground (Otsu threshold on a shrunk copy), in RAS mm.

    With landmarks, the centre is their centroid (the extent stays the foreground's, so tiles fit the anatomy).
    """
    img = sitk.Cast(fixed if fixed.GetNumberOfComponentsPerPixel() == 1 else
                    sitk.VectorIndexSelectionCast(fixed, 0), sitk.sitkFloat32)
    factor = [max(1, int(s // 96)) for s in img.GetSize()]
    small = sitk.BinShrink(img, factor) if max(factor) > 1 else img
    mask = sitk.OtsuThreshold(small, 0, 1)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    dim = fixed.GetDimension()
    if 1 not in stats.GetLabels():  # constant image: the whole grid
        corners = [small.TransformIndexToPhysicalPoint([0] * dim),
                   small.TransformIndexToPhysicalPoint([s - 1 for s in small.GetSize()])]
    else:
        box = stats.GetBoundingBox(1)
        lo, size = box[:dim], box[dim:]
        idx = np.array(np.meshgrid(*[[lo[d], lo[d] + size[d] - 1] for d in range(dim)])).reshape(dim, -1).T
        corners = [small.TransformIndexToPhysicalPoint([int(v) for v in i]) for i in idx]
    c = _ras(embed_3d_points(corners))
    center = 0.5 * (c.min(axis=0) + c.max(axis=0))
    extent = c.max(axis=0) - c.min(axis=0) + np.array(small.GetSpacing() + (0.0,) * (3 - dim))[:3]
    source = "fixed foreground"
    if landmarks_lps is not None and len(landmarks_lps):
        center = _ras(embed_3d_points(landmarks_lps)).mean(axis=0)
        source = "fixed landmarks' centroid"
    if dim == 2:
        center[2] = 0.0
    return Roi(center, np.maximum(extent, 1e-3), source)


def view_geometry(name: str, roi: Roi, *, square: bool = True) -> ViewGeometry:
    """Field of view around the ROI with a 10 % margin, at 2 px/mm or more (longest side 384-900 px).

    ``square`` (3D): every view covers the ROI's largest extent, so the three views share one scale; otherwise
    (2D) the panel has the in-plane shape of the foreground.
    """
    in_plane = {"Axial": (0, 1), "Coronal": (0, 2), "Sagittal": (1, 2)}[name]
    ext = [float(roi.extent_ras[i]) for i in in_plane]
    fov = [1.1 * float(max(roi.extent_ras))] * 2 if square else [1.1 * e for e in ext]
    scale = max(MIN_PX_PER_MM, MIN_SIZE / max(fov))
    scale = min(scale, MAX_SIZE / max(fov))
    width, height = (max(16, int(math.ceil(f * scale))) for f in fov)
    tile_px = max(4, int(round(max(ext) / TILES_ACROSS * scale)))
    return ViewGeometry(name, width, height, width / scale, np.array(roi.center_ras, float), tile_px)


class SliceRenderer:
    """Reslices the fixed (background) and moving (foreground) layers of one view with a fresh slice logic."""

    def __init__(self, scene, app_logic, fixed_node, moving_node):
        self.scene, self.app_logic = scene, app_logic
        self.fixed_node, self.moving_node = fixed_node, moving_node
        self._created = []

    def layers(self, geom: ViewGeometry):
        """(fixed RGBA, moving RGBA) of the view, rows top-down; sets ``geom.xy_to_ras``."""
        logic = slicer.vtkMRMLSliceLogic()
        if self.app_logic is not None:
            logic.SetMRMLApplicationLogic(self.app_logic)
        logic.SetMRMLScene(self.scene)
        slice_node = logic.AddSliceNode(f"CrossModalRegQC{geom.name}")
        composite = logic.GetSliceCompositeNode()
        self._created += [slice_node, composite]
        composite.SetBackgroundVolumeID(self.fixed_node.GetID())
        composite.SetForegroundVolumeID(self.moving_node.GetID())
        composite.SetForegroundOpacity(1.0)
        slice_node.SetOrientation(geom.name)
        slice_node.SetDimensions(geom.width, geom.height, 1)
        slice_node.SetFieldOfView(geom.fov_mm, geom.height / geom.px_per_mm, 1.0)
        slice_node.JumpSliceByCentering(*[float(v) for v in geom.center_ras])
        slice_node.UpdateMatrices()
        m = slice_node.GetXYToRAS()
        geom.xy_to_ras = np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])
        bg = layer_rgba(logic.GetBackgroundLayer().GetImageDataConnection())
        fg = layer_rgba(logic.GetForegroundLayer().GetImageDataConnection())
        logic.SetMRMLScene(None)
        self.close()  # a slice node left behind would be picked up (with its old size) by the next logic
        return bg, fg

    def close(self):
        for node in self._created:
            if node is not None and self.scene.IsNodePresent(node):
                self.scene.RemoveNode(node)
        self._created = []


def fixed_edges(bg_rgba: np.ndarray, px_per_mm: float) -> np.ndarray:
    """Boolean edge map of the fixed slice (Canny, sigma 1 mm; thresholds from the slice's own gradients)."""
    grey = sitk.GetImageFromArray(bg_rgba[..., :3].mean(axis=2).astype(np.float32))
    inside = bg_rgba[..., 3] > 0
    sigma = max(1.0, px_per_mm * 1.0)
    grad = sitk.GetArrayFromImage(sitk.GradientMagnitudeRecursiveGaussian(grey, sigma))
    values = grad[inside & (grad > 1e-3)]
    if values.size < 10:
        return np.zeros(inside.shape, bool)
    upper = float(np.percentile(values, 85))
    edges = sitk.CannyEdgeDetection(grey, lowerThreshold=0.5 * upper, upperThreshold=upper, variance=[sigma ** 2] * 2)
    return (sitk.GetArrayFromImage(edges) > 0) & inside


def contour_panel(fg_rgba: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The moving slice in grey (black where it has no data) with the fixed edges in red."""
    rgb = fg_rgba[..., :3].copy()
    rgb[fg_rgba[..., 3] == 0] = 0
    rgb[edges] = EDGE_RGB
    return rgb


def checkerboard_panel(bg_rgba: np.ndarray, fg_rgba: np.ndarray, tile_px: int) -> np.ndarray:
    """Alternating fixed / moving tiles of ``tile_px``, centred on the view; the fixed shows where the moving has
    no data (no black tiles outside the moving image's field of view)."""
    h, w = bg_rgba.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    use_moving = (((yy - h // 2) // tile_px + (xx - w // 2) // tile_px) % 2).astype(bool) & (fg_rgba[..., 3] > 0)
    return np.where(use_moving[..., None], fg_rgba[..., :3], bg_rgba[..., :3]).astype(np.uint8)


def project(geom: ViewGeometry, points_ras) -> tuple[np.ndarray, np.ndarray]:
    """(column, row) pixel positions (rows top-down) and signed distance (mm) from the slice plane."""
    inv = np.linalg.inv(geom.xy_to_ras)
    p = np.concatenate([np.asarray(points_ras, float).reshape(-1, 3), np.ones((len(points_ras), 1))], axis=1)
    xy = (inv @ p.T).T
    normal = geom.xy_to_ras[:3, 2] / max(np.linalg.norm(geom.xy_to_ras[:3, 2]), 1e-12)
    dist = (np.asarray(points_ras, float) - geom.center_ras) @ normal
    return np.stack([xy[:, 0], geom.height - 1 - xy[:, 1]], axis=1), dist


# ---------------------------------------------------------------- drawing (numpy + VTK FreeType text)

def text_image(text: str, size: int = 14, rgb=TEXT_RGB, bold: bool = True) -> np.ndarray:
    """RGBA uint8 array (rows top-down) of ``text`` rendered by VTK's FreeType text renderer."""
    prop = vtk.vtkTextProperty()
    prop.SetFontSize(int(size))
    prop.SetColor(*(c / 255.0 for c in rgb))
    prop.SetBold(bool(bold))
    prop.SetFontFamilyToArial()
    prop.SetBackgroundOpacity(0.0)
    img = vtk.vtkImageData()
    renderer = vtk.vtkTextRenderer()
    dims = [0, 0]
    if not text or not renderer.RenderString(prop, text, img, dims, 72, vtk.vtkTextRenderer.FreeType):
        return np.zeros((1, 1, 4), np.uint8)
    w, h, _ = img.GetDimensions()
    arr = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)
    # The image is padded (to a power of two); the text is the bottom-left dims[0] x dims[1] pixels.
    return arr[: max(1, dims[1]), : max(1, dims[0])][::-1].copy()


def draw_text(canvas: np.ndarray, text: str, x: int, y: int, *, size: int = 14, rgb=TEXT_RGB, anchor: str = "nw",
              box: bool = True) -> None:
    """Alpha-blend ``text`` onto ``canvas`` (H, W, 3) at (x, y); ``anchor`` like Tk ('nw', 'n', 'e', 'center'...),
    on a dark box (``box``) so it reads over any image."""
    t = text_image(text, size, rgb)
    h, w = t.shape[:2]
    ax = {"w": 0, "e": w}.get(next((c for c in anchor if c in "we"), ""), w // 2)
    ay = {"n": 0, "s": h}.get(next((c for c in anchor if c in "ns"), ""), h // 2)
    x0, y0 = int(x) - ax, int(y) - ay
    x0 = min(max(x0, 0), canvas.shape[1] - w)
    y0 = min(max(y0, 0), canvas.shape[0] - h)
    region = canvas[y0:y0 + h, x0:x0 + w].astype(float)
    if box:
        region *= 0.35
    alpha = t[: region.shape[0], : region.shape[1], 3:4] / 255.0
    region = region * (1 - alpha) + t[: region.shape[0], : region.shape[1], :3] * alpha
    canvas[y0:y0 + h, x0:x0 + w] = region.astype(np.uint8)


def draw_line(canvas: np.ndarray, p0, p1, rgb, width: int = 1) -> None:
    """A straight line from p0 to p1 (column, row), clipped to the canvas."""
    n = int(max(abs(p1[0] - p0[0]), abs(p1[1] - p0[1]))) + 1
    xs = np.linspace(p0[0], p1[0], n)
    ys = np.linspace(p0[1], p1[1], n)
    for dx in range(-(width // 2), width - width // 2):
        for dy in range(-(width // 2), width - width // 2):
            c = np.round(xs + dx).astype(int)
            r = np.round(ys + dy).astype(int)
            ok = (c >= 0) & (c < canvas.shape[1]) & (r >= 0) & (r < canvas.shape[0])
            canvas[r[ok], c[ok]] = rgb


def draw_dot(canvas: np.ndarray, p, radius: float, rgb) -> None:
    r0, c0 = int(round(p[1])), int(round(p[0]))
    rr = int(math.ceil(radius))
    yy, xx = np.mgrid[-rr:rr + 1, -rr:rr + 1]
    disk = yy ** 2 + xx ** 2 <= radius ** 2
    r, c = (yy[disk] + r0), (xx[disk] + c0)
    ok = (c >= 0) & (c < canvas.shape[1]) & (r >= 0) & (r < canvas.shape[0])
    canvas[r[ok], c[ok]] = rgb


def edge_letters(geom: ViewGeometry) -> dict:
    """Anatomical direction letters at the panel's right, left, top and bottom edges (from the slice matrix)."""
    def letter(v):
        axis = int(np.argmax(np.abs(v)))
        return LETTERS[axis][1 if v[axis] > 0 else 0]

    right, up = geom.xy_to_ras[:3, 0], geom.xy_to_ras[:3, 1]
    return {"right": letter(right), "left": letter(-right), "top": letter(up), "bottom": letter(-up)}


def slice_position_text(geom: ViewGeometry) -> str:
    normal = geom.xy_to_ras[:3, 2]
    axis = int(np.argmax(np.abs(normal)))
    return f"{'RAS'[axis]} {geom.center_ras[axis]:.1f} mm"


def label_panel(rgb: np.ndarray, geom: ViewGeometry, title: str) -> np.ndarray:
    """Panel with a title bar (view, slice position, before/after), edge letters and a 10 mm scale bar."""
    out = rgb.copy()
    letters = edge_letters(geom)
    w, h, fs = geom.width, geom.height, 16
    draw_text(out, letters["left"], 3, h // 2, size=fs, anchor="w")
    draw_text(out, letters["right"], w - 3, h // 2, size=fs, anchor="e")
    draw_text(out, letters["top"], w // 2, 2, size=fs, anchor="n")
    draw_text(out, letters["bottom"], w // 2, h - 2, size=fs, anchor="s")
    bar = 10.0 * geom.px_per_mm
    y = h - 12
    draw_line(out, (8, y), (8 + bar, y), (255, 255, 255), width=3)
    draw_text(out, "10 mm", int(10 + bar), y, size=12, anchor="w")
    head = np.zeros((26, w, 3), np.uint8)
    draw_text(head, f"{title} | {geom.name} {slice_position_text(geom)}", 4, 13, size=15, anchor="w", box=False)
    return np.concatenate([head, out], axis=0)


def _dimmed(rgb):
    return tuple(int(0.45 * v) for v in rgb)


NEAR_SLICE_MM = 10.0  # landmarks this close to the slice plane are drawn bright; farther ones dim and thin


def draw_landmarks(rgb: np.ndarray, geom: ViewGeometry, fixed_ras, target_ras) -> None:
    """Fixed landmarks (cyan dots) with their error vectors (yellow) to ``target_ras``, projected onto the view.

    Every landmark is drawn (a view may have none in its plane), but those farther than ``NEAR_SLICE_MM`` from the
    slice are dim and thin, so a reader can tell a point on this slice from one projected from far away."""
    if fixed_ras is None or not len(fixed_ras):
        return
    pf, dist = project(geom, fixed_ras)
    pt, _ = project(geom, target_ras)
    near = np.abs(dist) <= NEAR_SLICE_MM
    for far_pass in (True, False):  # far ones first, so near ones are drawn over them
        for a, b, is_near in zip(pf, pt, near):
            if bool(is_near) != far_pass:
                draw_line(rgb, a, b, ERROR_RGB if is_near else _dimmed(ERROR_RGB), width=2 if is_near else 1)
        for a, is_near in zip(pf, near):
            if bool(is_near) != far_pass:
                draw_dot(rgb, a, 3.0 if is_near else 1.5, FIXED_LM_RGB if is_near else _dimmed(FIXED_LM_RGB))


@dataclass
class QcPictures:
    """The labelled panels: ``panels[(kind, state)]`` is a list over views (kind: contour/checkerboard,
    state: before/after); ``legend`` explains the colours; ``geometry`` holds each view's field of view."""

    panels: dict
    geometry: list
    legend: str
    roi: Roi

    def summary(self) -> dict:
        """What registration.json records about the pictures."""
        g = self.geometry
        return {"legend": self.legend, "roi_source": self.roi.source,
                "roi_center_ras_mm": [round(float(v), 2) for v in self.roi.center_ras],
                "field_of_view_mm": round(g[0].fov_mm, 1), "pixels_per_mm": round(g[0].px_per_mm, 2),
                "checkerboard_tile_mm": round(g[0].tile_px / g[0].px_per_mm, 1), "views": [v.name for v in g]}


def landmark_targets_in_fixed(transform, fixed_lps, moving_lps):
    """Where each moving landmark lies in fixed space (LPS) through ``transform`` (fixed -> moving): the exact
    inverse for linear transforms; for others the moving-space error added to the fixed landmark."""
    fixed_lps = embed_3d_points(fixed_lps)
    moving_lps = embed_3d_points(moving_lps)
    if transform is None:
        return moving_lps
    dim = transform.GetDimension()
    try:
        inv = transform.GetInverse()
        return embed_3d_points([inv.TransformPoint(tuple(map(float, p[:dim]))) for p in moving_lps])
    except RuntimeError:
        mapped = embed_3d_points([transform.TransformPoint(tuple(map(float, p[:dim]))) for p in fixed_lps])
        return fixed_lps + (moving_lps - mapped)


def _render_state(renderer, geoms, edges, state, landmarks):
    contour, checker = [], []
    for k, geom in enumerate(geoms):
        bg, fg = renderer.layers(geom)
        if edges[k] is None:
            edges[k] = fixed_edges(bg, geom.px_per_mm)
        c = contour_panel(fg, edges[k])
        b = checkerboard_panel(bg, fg, geom.tile_px)
        if landmarks is not None:
            draw_landmarks(c, geom, *landmarks)
            draw_landmarks(b, geom, *landmarks)
        contour.append(label_panel(c, geom, f"{state.upper()} contour"))
        checker.append(label_panel(b, geom, f"{state.upper()} checkerboard"))
    return contour, checker


def render_qc(scene, app_logic, fixed: sitk.Image, fixed_node, moving_node, transform_node, transform, *,
              fixed_landmarks=None, moving_landmarks=None, fixed_name="fixed", moving_name="moving") -> QcPictures:
    """Before (moving as its header places it) and after (moving under ``transform_node``) pictures.

    ``transform`` (SimpleITK, fixed -> moving, LPS) places the moving landmarks in fixed space for the "after"
    error vectors. Leaves the moving volume under ``transform_node``; its colour table is restored.
    """
    roi = foreground_roi(fixed, fixed_landmarks)
    views = ("Axial",) if fixed.GetDimension() == 2 else VIEWS_3D
    geoms = [view_geometry(v, roi, square=fixed.GetDimension() == 3) for v in views]
    display = moving_node.GetDisplayNode()
    old_color = display.GetColorNodeID() if display is not None else None
    if old_color is not None:
        display.SetAndObserveColorNodeID(GREY_GRID)
    renderer = SliceRenderer(scene, app_logic, fixed_node, moving_node)
    edges = [None] * len(geoms)
    panels = {}
    have_lm = fixed_landmarks is not None and moving_landmarks is not None
    f_ras = _ras(embed_3d_points(fixed_landmarks)) if have_lm else None
    try:
        for state, tnode, tx in (("before", None, None), ("after", transform_node, transform)):
            moving_node.SetAndObserveTransformNodeID(tnode.GetID() if tnode is not None else None)
            lm = (f_ras, _ras(landmark_targets_in_fixed(tx, fixed_landmarks, moving_landmarks))) if have_lm else None
            panels[("contour", state)], panels[("checkerboard", state)] = _render_state(
                renderer, geoms, edges, state, lm)
    finally:
        renderer.close()
        if old_color is not None:
            display.SetAndObserveColorNodeID(old_color)
    tile_mm = geoms[0].tile_px / geoms[0].px_per_mm
    legend = (f"Contour: moving ({moving_name}) in grey (colour images in their own colours), fixed ({fixed_name}) edges in red; black = no moving data. "
              f"Checkerboard: fixed / moving tiles of {tile_mm:.0f} mm, fixed shown where the moving has no data. "
              + ("Landmarks (projected on each view; dim and thin when more than 10 mm from the slice): cyan dot = fixed, yellow "
                 "line = error to the moving one. "
                 if have_lm else "")
              + f"Views through the {roi.source}, same field of view before and after, "
              f"{geoms[0].px_per_mm:.1f} px/mm; letters = patient directions (R/L, A/P, S/I).")
    return QcPictures(panels, geoms, legend, roi)


def _hstack(tiles, gap=6):
    h = max(t.shape[0] for t in tiles)
    out = []
    for t in tiles:
        pad = np.full((h - t.shape[0], t.shape[1], 3), 255, np.uint8)
        out += [np.concatenate([t, pad], axis=0), np.full((h, gap, 3), 255, np.uint8)]
    return np.concatenate(out[:-1], axis=1)


def _vstack(rows, gap=6):
    w = max(r.shape[1] for r in rows)
    out = []
    for r in rows:
        out += [np.concatenate([r, np.full((r.shape[0], w - r.shape[1], 3), 255, np.uint8)], axis=1),
                np.full((gap, w, 3), 255, np.uint8)]
    return np.concatenate(out[:-1], axis=0)


def legend_strip(text: str, width: int) -> np.ndarray:
    """White strip with the legend wrapped to ``width`` pixels."""
    import textwrap

    chars = max(40, int(width / 7.5))
    lines = textwrap.wrap(text, chars)
    strip = np.full((8 + 18 * len(lines), width, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        draw_text(strip, line, 6, 4 + 18 * i, size=13, rgb=(20, 20, 20), box=False)
    return strip


def figures(qc: QcPictures) -> dict:
    """The PNG arrays by file name: one row per view (before, after) for each kind, and the combined figure."""
    p = qc.panels
    out = {
        "overlay_before.png": _hstack(p[("contour", "before")]),
        "overlay_after.png": _hstack(p[("contour", "after")]),
        "checkerboard_before.png": _hstack(p[("checkerboard", "before")]),
        "checkerboard_after.png": _hstack(p[("checkerboard", "after")]),
    }
    rows = [_hstack([p[("contour", "before")][k], p[("contour", "after")][k], p[("checkerboard", "before")][k],
                     p[("checkerboard", "after")][k]]) for k in range(len(qc.geometry))]
    grid = _vstack(rows)
    out["overlay_before_after.png"] = _vstack([grid, legend_strip(qc.legend, grid.shape[1])], gap=0)
    return out
