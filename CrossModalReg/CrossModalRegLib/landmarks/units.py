"""One unit rule for 2D landmarks, the same on the command line and in Slicer.

**The rule.** A 2D landmark is stored in **pixels of its image**: the continuous image index ``(x, y)``, x along
the columns (right) and y along the rows (down), ``(0, 0)`` the centre of the top-left pixel (ITK's index, and
ANHIR's pixel coordinates). Pixels are what annotators place and what ANHIR files hold, and they do not depend
on a spacing that may or may not be physical.

* A **pixel file** (ANHIR ``,X,Y`` CSV) is read as pixels, times the ``--scale`` given on import (e.g. 0.1 for
  landmarks placed at 50 % on images stored at 5 %).
* A **physical position** (a ``.fcsv``/``.mrk.json`` file in mm, or a point clicked in Slicer, which shows an
  image at the spacing ITK reads from it) is converted to pixels through *that image's own* origin, spacing and
  direction, as SimpleITK reads them (:func:`physical_lps_to_pixel`). In Slicer the annotation node is placed
  under a transform that maps pixels to the volume's RAS (:func:`attach_to_pixel_grid`), so a JPEG loaded with
  its 0.357 mm/px spacing gives the same pixels as the same point in an ANHIR file.
* **Reported** distances are in pixels; ``units="mm"`` (``--units mm``) reports millimetres instead, through each
  image's spacing as recorded in the session (:func:`pixel_to_physical_lps`). Every table states its unit.

Why pixels by default: the spacing of a JPEG or PNG comes from its JFIF/pHYs density, which exporting software
sets to a screen default (the shipped lung-lesion JPEGs say 28 dots/cm, i.e. 0.357 mm/px, 71 dpi); for a
histology section that is not the scanner's pixel size, so millimetres computed from it are wrong by orders of
magnitude. Use ``--units mm`` for images whose spacing is physical (e.g. a 2D ``.nrrd``/``.mha`` slice).

Pure numpy/SimpleITK except :func:`attach_to_pixel_grid`, which needs slicer-core (MRML) and no Qt.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import CrossModalRegError

PIXEL = "pixel"
MM = "mm"
# mrml_layer keeps a 2D point (x, y) in its markups node as the RAS point (-x, -y, 0) (LPS (x, y, 0)).
_PIXEL_NODE_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def image_geometry(image_or_path) -> dict:
    """Size, spacing, origin and direction of an image as SimpleITK reads it (header only for a file).

    Returns
    -------
    dict
        ``{"path", "dimension", "size", "spacing", "origin", "direction", "spacing_source"}``; lists of floats
        (LPS mm for origin and spacing, direction cosines row-major). ``spacing_source`` says where a 2D
        JPEG/PNG/TIFF spacing comes from (the file's density header, not a physical calibration).
    """
    import SimpleITK as sitk

    if isinstance(image_or_path, (str, os.PathLike)):
        path = os.fspath(image_or_path)
        if not os.path.isfile(path):
            raise CrossModalRegError(f"image file not found: {path}")
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise CrossModalRegError(f"{path}: not an image SimpleITK can read ({str(exc).strip()[:200]})") from exc
        size, spacing, origin, direction = (reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(),
                                            reader.GetDirection())
    else:
        path = ""
        img = image_or_path
        size, spacing, origin, direction = img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection()
    dim = len(size)
    if dim == 3 and size[2] == 1:  # a single-slice volume is a 2D image
        size, spacing, origin = size[:2], spacing[:2], origin[:2]
        direction = (direction[0], direction[1], direction[3], direction[4])
        dim = 2
    source = "image header"
    if path.lower().endswith((".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")):
        source = ("the file's resolution/density header (dots per cm or inch), usually the exporting software's "
                  "default rather than a physical pixel size")
    return {"path": os.path.abspath(path) if path else "", "dimension": dim, "size": [int(v) for v in size],
            "spacing": [float(v) for v in spacing], "origin": [float(v) for v in origin],
            "direction": [float(v) for v in direction], "spacing_source": source}


def _matrices(geometry):
    dim = int(geometry["dimension"])
    direction = np.asarray(geometry["direction"], dtype=float).reshape(dim, dim)
    spacing = np.asarray(geometry["spacing"], dtype=float)
    origin = np.asarray(geometry["origin"], dtype=float)
    return direction @ np.diag(spacing), origin


def pixel_to_physical_lps(points_pixel, geometry: dict) -> np.ndarray:
    """Continuous index (pixels) -> physical LPS mm of the image: ``origin + direction @ (spacing * index)``."""
    a, origin = _matrices(geometry)
    pts = np.asarray(points_pixel, dtype=float)
    return pts @ a.T + origin


def physical_lps_to_pixel(points_lps, geometry: dict) -> np.ndarray:
    """Physical LPS mm -> continuous index (pixels) of the image (inverse of :func:`pixel_to_physical_lps`)."""
    a, origin = _matrices(geometry)
    pts = np.asarray(points_lps, dtype=float)
    return np.linalg.solve(a, (pts - origin).T).T


def outside_image(points_pixel, geometry: dict) -> np.ndarray:
    """Boolean mask of the points outside the image: index beyond the pixel edges ``[-0.5, size - 0.5]``."""
    pts = np.atleast_2d(np.asarray(points_pixel, dtype=float))
    size = np.asarray(geometry["size"], dtype=float)
    return np.any((pts < -0.5) | (pts > size - 0.5), axis=1)


def pixel_bounds_text(geometry: dict) -> str:
    size = geometry["size"]
    axes = "xyz"
    ranges = ", ".join(f"{axes[k]} in [-0.5, {size[k] - 0.5:g}]" for k in range(len(size)))
    return f"{' x '.join(str(s) for s in size)} pixels: {ranges}"


def pixel_node_to_volume_ras(ijk_to_ras) -> np.ndarray:
    """4x4 matrix from the 2D annotation node's frame to a volume's RAS.

    :mod:`.mrml_layer` keeps a 2D landmark ``(x, y)`` (pixels) in its markups node as the point ``(-x, -y, 0)``.
    Placing the node under a transform whose matrix-to-parent is ``IJKToRAS @ diag(-1, -1, 1, 1)`` shows that
    point on pixel ``(x, y)`` of the volume, whatever the volume's spacing, origin and direction; and a point
    clicked on the volume arrives in the node (and the session) as its pixel index.

    Parameters
    ----------
    ijk_to_ras : array-like, 4x4
        The volume's IJK-to-RAS matrix (``volumeNode.GetIJKToRASMatrix``).
    """
    m = np.asarray(ijk_to_ras, dtype=float).reshape(4, 4)
    return m @ _PIXEL_NODE_FLIP


def attach_to_pixel_grid(scene, markups_node, volume_node, *, name: str | None = None):
    """Put a 2D annotation markups node under the transform "pixels of ``volume_node`` -> RAS" (slicer-core, no Qt).

    The transform node (matrix from :func:`pixel_node_to_volume_ras`; it maps the node's pixel frame TO the
    volume's RAS) is created once per volume and reused. Returns the transform node. Does nothing and returns
    None when ``volume_node`` is None (the node then keeps pixels as RAS millimetres of an identity-geometry
    image).
    """
    if volume_node is None:
        return None
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    ijk_to_ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    out = pixel_node_to_volume_ras(ijk_to_ras)
    name = name or f"Pixel grid of {volume_node.GetName()}"
    attr = "CrossModalReg.landmarks.pixelGridOf"
    tnode = None
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLLinearTransformNode")):
        cand = scene.GetNthNodeByClass(i, "vtkMRMLLinearTransformNode")
        if cand.GetAttribute(attr) == volume_node.GetID():
            tnode = cand
            break
    if tnode is None:
        tnode = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
        tnode.SetAttribute(attr, volume_node.GetID())
    # Change only what differs: the recorder re-attaches on every transform event, so an unchanged call must not
    # fire another one.
    have = vtk.vtkMatrix4x4()
    tnode.GetMatrixTransformToParent(have)
    if not np.allclose([[have.GetElement(r, c) for c in range(4)] for r in range(4)], out, rtol=0, atol=1e-12):
        vm = vtk.vtkMatrix4x4()
        for r in range(4):
            for c in range(4):
                vm.SetElement(r, c, float(out[r, c]))
        tnode.SetMatrixTransformToParent(vm)
    if tnode.GetTransformNodeID() != volume_node.GetTransformNodeID():
        tnode.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    if markups_node.GetTransformNodeID() != tnode.GetID():
        markups_node.SetAndObserveTransformNodeID(tnode.GetID())
    return tnode


def _pixel_to_lps_homogeneous(geometry: dict) -> np.ndarray:
    """3x3 homogeneous matrix: 2D pixel index -> 2D physical LPS mm of the image (``origin + D S index``)."""
    a, origin = _matrices(geometry)
    h = np.eye(3)
    h[:2, :2], h[:2, 2] = a, origin
    return h


def physical_transform_from_pixel_registration(result, fixed_geometry: dict, moving_geometry: dict,
                                               reference_image=None):
    """The 3D LPS transform, FIXED -> MOVING physical points, that does what a 2D pixel registration does.

    A 2D session's registration (:func:`register_points` on pixels) maps fixed *pixels* to moving *pixels*. The
    moving volume in Slicer needs a transform between physical points: ``P_m o T_pixels o P_f^-1``, with ``P`` an
    image's pixel -> LPS mapping (its own origin, spacing and direction, :func:`image_geometry`). The third axis
    (the slice normal) is left unchanged. Linear models give an exact affine; a thin-plate spline is sampled as a
    displacement field on ``reference_image`` (the fixed image as SimpleITK reads it from its volume node, LPS),
    which is then required.
    """
    import SimpleITK as sitk

    for g in (fixed_geometry, moving_geometry):
        if int(g["dimension"]) != 2:
            raise CrossModalRegError("a pixel registration applies to 2D images only; got a "
                                     f"{g['dimension']}D image ({g.get('path') or 'in the scene'})")
    pf, pm = _pixel_to_lps_homogeneous(fixed_geometry), _pixel_to_lps_homogeneous(moving_geometry)
    if result.matrix_fixed_to_moving is not None:
        h2 = pm @ np.asarray(result.matrix_fixed_to_moving, dtype=float) @ np.linalg.inv(pf)
        from ..geometry import affine_transform_from_matrix_lps

        h3 = np.eye(4)
        h3[:2, :2], h3[:2, 3] = h2[:2, :2], h2[:2, 2]
        return affine_transform_from_matrix_lps(h3, 3)
    if reference_image is None:
        raise CrossModalRegError("a thin-plate spline transform node needs the fixed image as reference grid")
    ref = reference_image
    if ref.GetDimension() != 3:
        raise CrossModalRegError("the reference grid of a 2D thin-plate spline must be the fixed volume (3D, one "
                                 "slice) as read from its node")
    size = ref.GetSize()
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in size], indexing="ij"), axis=-1).reshape(-1, 3)
    a = np.asarray(ref.GetDirection()).reshape(3, 3) @ np.diag(ref.GetSpacing())
    x = idx @ a.T + np.asarray(ref.GetOrigin())
    pix = (np.linalg.inv(pf) @ np.column_stack([x[:, :2], np.ones(len(x))]).T).T[:, :2]
    y = (pm @ np.column_stack([result.map_fixed_to_moving(pix), np.ones(len(x))]).T).T[:, :2]
    disp = np.zeros((len(x), 3))
    disp[:, :2] = y - x[:, :2]
    # numpy order of a SimpleITK vector image is (z, y, x, component); idx runs x-major (ij indexing).
    field = disp.reshape(*size, 3).transpose(2, 1, 0, 3)
    img = sitk.GetImageFromArray(field, isVector=True)
    img.CopyInformation(ref)
    return sitk.DisplacementFieldTransform(sitk.Cast(img, sitk.sitkVectorFloat64))
