"""The MRML side of landmark annotation: protocol-driven markups nodes, recording every change into a session,
reloading a session into a scene, blinded display, ``.mrk.json`` through Slicer's storage node, consensus nodes,
results tables, transform nodes and the expected-TRE map volume.

Every function takes the scene (or nodes) as an argument and needs only slicer-core (no Qt). Markups nodes hold
RAS positions in memory; sessions and files hold LPS millimetres (3D) **in the annotated image's own physical
space** (the space of its voxel grid, before any registration transform): an annotation node is kept under the
same parent transform as its image (see :func:`attach_to_image_transform`), so its control points' local
coordinates are the image's own coordinates whatever transform the image is displayed through, and a point
clicked on the moving image after a registration is saved where it lies in the moving image, not in the fixed
(world) frame it is displayed in. For a 2D (pixel) protocol the node holds a pixel ``(x, y)`` as the local point
``(-x, -y, 0)`` and sits under the "pixels -> RAS" transform of its image (see :func:`attach_annotation_node` and
:mod:`.units`): the point shows on pixel ``(x, y)`` of the image whatever its spacing, and a click is saved in
pixels, the same rule as on the command line.
"""

from __future__ import annotations

import os

import numpy as np
import slicer
import vtk

from .. import mrml
from ..errors import CrossModalRegError
from ..tables import table_node_from_rows
from .fileio import format_metadata, parse_metadata
from .protocol import LandmarkProtocol
from .session import AnnotationSession
from .storage import utc_now_iso

ANNOTATOR_ATTRIBUTE = "CrossModalReg.landmarks.annotator"
IMAGE_ATTRIBUTE = "CrossModalReg.landmarks.image"
REPEAT_ATTRIBUTE = "CrossModalReg.landmarks.repeat"
SESSION_ATTRIBUTE = "CrossModalReg.landmarks.sessionFolder"
PLACED_ATTRIBUTE_PREFIX = "CrossModalReg.landmarks.placed."
MODIFIED_ATTRIBUTE_PREFIX = "CrossModalReg.landmarks.modified."
F3 = np.array([-1.0, -1.0, 1.0])


def _to_ras(position, dim):
    p = np.zeros(3)
    p[:dim] = np.asarray(position, dtype=float)[:dim]
    return p * F3


def _from_ras(p_ras, dim):
    return (np.asarray(p_ras, dtype=float) * F3)[:dim]


def annotation_node_name(annotator: str, image: str, repeat: int = 1) -> str:
    return f"Landmarks {annotator} {image}" + (f" r{repeat}" if repeat != 1 else "")


def create_annotation_node(scene, session: AnnotationSession, annotator: str, image: str, *, repeat: int = 1,
                           node=None, image_volume=None):
    """A fiducial node with one control point per protocol landmark, in protocol order.

    Points already saved in ``session`` are placed at their saved positions; the others are unplaced
    (``PositionUndefined``), so Slicer's place mode fills them in order. The number of points is fixed: the user
    cannot add points outside the protocol. Annotator, image and repeat are node attributes; the protocol's
    description of each landmark is the control point's description. With ``image_volume`` the node goes under
    the volume's parent transform (saved positions are the image's own coordinates, see the module docstring).
    """
    if not annotator or not annotator.strip():
        raise CrossModalRegError("the annotator name is empty; enter your name or initials before placing landmarks")
    session.check_image_name(image)
    protocol: LandmarkProtocol = session.protocol
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", annotation_node_name(annotator, image, repeat))
    was = node.StartModify()
    try:
        node.SetFixedNumberOfControlPoints(False)
        node.RemoveAllControlPoints()
        for lm in protocol.landmarks:
            idx = node.AddControlPoint(vtk.vtkVector3d(0, 0, 0), lm.label)
            node.SetNthControlPointDescription(idx, lm.description)
            saved = session.get_point(annotator, image, lm.label, repeat=repeat)
            if saved is None:
                node.UnsetNthControlPointPosition(idx)
            else:
                node.SetNthControlPointPosition(idx, *_to_ras(saved.position, protocol.dimension))
                node.SetAttribute(PLACED_ATTRIBUTE_PREFIX + lm.label, saved.placed)
                node.SetAttribute(MODIFIED_ATTRIBUTE_PREFIX + lm.label, saved.modified)
        node.SetFixedNumberOfControlPoints(True)
        node.SetAttribute(ANNOTATOR_ATTRIBUTE, annotator)
        node.SetAttribute(IMAGE_ATTRIBUTE, image)
        node.SetAttribute(REPEAT_ATTRIBUTE, str(repeat))
        node.SetAttribute(SESSION_ATTRIBUTE, session.folder)
        prepare_next_placement(node)
    finally:
        node.EndModify(was)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    attach_annotation_node(node, image_volume, protocol.dimension)
    return node


def attach_annotation_node(node, volume_node, dimension: int) -> bool:
    """Put an annotation (or consensus) node where its points are the image's own coordinates; True if it moved.

    The one rule for both dimensions (see :mod:`.units` for the 2D unit rule):

    * 3D (LPS mm): the node goes under the same parent transform as ``volume_node``
      (:func:`attach_to_image_transform`);
    * 2D (pixels): the node goes under the "pixels of ``volume_node`` -> RAS" transform
      (:func:`.units.attach_to_pixel_grid`), itself under the volume's parent transform, so a click on pixel
      ``(x, y)`` of an image loaded with any spacing is saved as ``(x, y)``, as in an ANHIR file.

    ``volume_node`` None: nothing to follow (False; a 2D node then keeps pixels as RAS mm of an identity image).
    """
    if volume_node is None or node is None:
        return False
    if int(dimension) == 3:
        return attach_to_image_transform(node, volume_node)
    from .units import attach_to_pixel_grid

    before = node.GetTransformNodeID()
    tnode = attach_to_pixel_grid(node.GetScene(), node, volume_node)
    return tnode is not None and before != tnode.GetID()


def attach_to_image_transform(node, volume_node) -> bool:
    """Put annotation (or consensus) ``node`` under the same parent transform as ``volume_node``.

    Its control points keep their local coordinates, which are then the image's own coordinates: the points move
    on screen with the image and are saved in its own space. Returns True when the parent changed.
    ``volume_node`` None: nothing to follow (False).
    """
    if volume_node is None or node is None:
        return False
    wanted = volume_node.GetTransformNodeID()
    if node.GetTransformNodeID() == wanted:
        return False
    node.SetAndObserveTransformNodeID(wanted)
    return True


def next_unplaced_label(node) -> str | None:
    """Label of the first control point not yet placed (None when all are placed)."""
    for i in range(node.GetNumberOfControlPoints()):
        if node.GetNthControlPointPositionStatus(i) != node.PositionDefined:
            return node.GetNthControlPointLabel(i)
    return None


def prepare_next_placement(node) -> int:
    """Point Slicer's place mode at the next unplaced control point; returns its index (-1 when complete)."""
    for i in range(node.GetNumberOfControlPoints()):
        if node.GetNthControlPointPositionStatus(i) != node.PositionDefined:
            node.SetControlPointPlacementStartIndex(i)
            return i
    return -1


class SessionRecorder:
    """Saves every change of an annotation node into the session, as it happens.

    Observes point added/modified/removed and position defined/undefined events of ``node`` and re-synchronises
    the whole node with the session: a newly defined point is placed (``placed`` = now), a moved one updates
    ``modified``, an unplaced one is removed. Each change is one atomic, durable file write; while a point is
    dragged (between the start and end interaction events) saving waits for the release. A change the session
    rejects (e.g. a point renamed to a label outside the protocol) or that cannot be written (folder gone, disk
    full) is not saved, is kept in ``last_error`` and is handed to ``on_error`` (the widget shows it to the user;
    an observer must never raise into VTK). ``on_change(labels)`` is called after every saved change (the widget
    updates its "next landmark" instruction).

    Positions are saved in the image's own space: with ``image_volume`` given, the node is kept under the
    volume's parent transform (re-attached whenever the volume's transform changes, e.g. after "Register"), so
    the local coordinates saved are the image's own coordinates even for points clicked on the transformed image.
    Call :meth:`detach` when done (the widget does so on scene close).
    """

    EVENTS = ("PointPositionDefinedEvent", "PointModifiedEvent", "PointPositionUndefinedEvent",
              "PointRemovedEvent", "PointAddedEvent")

    def __init__(self, session: AnnotationSession, node, *, annotator: str | None = None, image: str | None = None,
                 repeat: int | None = None, image_volume=None, on_change=None, on_error=None):
        self.session = session
        self.node = node
        self.annotator = annotator or node.GetAttribute(ANNOTATOR_ATTRIBUTE)
        self.image = image or node.GetAttribute(IMAGE_ATTRIBUTE)
        self.repeat = int(repeat or node.GetAttribute(REPEAT_ATTRIBUTE) or 1)
        if not self.annotator or not self.image:
            raise CrossModalRegError(f"node '{node.GetName()}' has no annotator/image; create it with "
                                     "create_annotation_node")
        session.check_image_name(self.image)
        self.last_error: Exception | None = None
        self.interacting = False
        self.image_volume = image_volume
        self.on_change = on_change
        self.on_error = on_error
        attach_annotation_node(node, image_volume, session.protocol.dimension)
        self._observers = [(node, node.AddObserver(getattr(node, e), self._on_event)) for e in self.EVENTS]
        self._observers.append((node, node.AddObserver(node.PointStartInteractionEvent, self._on_start_interaction)))
        self._observers.append((node, node.AddObserver(node.PointEndInteractionEvent, self._on_end_interaction)))
        if image_volume is not None:
            # The image moved under another transform (a registration): the points go with it, unchanged.
            follow = image_volume.TransformModifiedEvent
            self._observers.append((image_volume, image_volume.AddObserver(follow, self._on_image_transform)))
            self._observers.append((node, node.AddObserver(node.TransformModifiedEvent, self._on_image_transform)))
        self.sync()

    def _on_image_transform(self, caller, event):
        attach_annotation_node(self.node, self.image_volume, self.session.protocol.dimension)

    def _on_start_interaction(self, caller, event):
        # While the user drags a point, its position changes many times a second: save once, when released.
        self.interacting = True

    def _on_end_interaction(self, caller, event):
        self.interacting = False
        self._on_event(caller, event)

    def _on_event(self, caller, event):
        if self.interacting:
            return
        try:
            try:
                changed = self.sync()
            except OSError as exc:
                raise CrossModalRegError(
                    f"{self.annotator}'s change on the {self.image} image was NOT saved: writing to the session "
                    f"folder {self.session.folder} failed ({exc}). Check that the folder exists and is writable; "
                    "the next change will save every point again") from exc
            self.last_error = None
        except Exception as exc:  # noqa: BLE001 - an observer must never raise into VTK; keep it for the caller
            # One click fires several point events: report a failure once, not once per event.
            repeated = self.last_error is not None and str(self.last_error) == str(exc)
            self.last_error = exc
            if self.on_error is not None and not repeated:
                try:
                    self.on_error(exc)
                except Exception:  # noqa: BLE001, S110 - the error display itself failed; last_error keeps it
                    pass
            return
        if changed and self.on_change is not None:
            try:
                self.on_change(changed)
            except Exception as exc:  # noqa: BLE001 - never raise into VTK
                self.last_error = exc

    def sync(self) -> list[str]:
        """Bring the session in line with the node; returns the labels that changed (saved).

        Raises the first :class:`CrossModalRegError` of a point the session rejected, after saving all others.
        """
        node, dim = self.node, self.session.protocol.dimension
        changed, seen, rejected = [], set(), []
        for i in range(node.GetNumberOfControlPoints()):
            label = node.GetNthControlPointLabel(i)
            seen.add(label)
            if node.GetNthControlPointPositionStatus(i) != node.PositionDefined:
                if self.session.get_point(self.annotator, self.image, label, repeat=self.repeat) is not None:
                    self.session.remove_point(self.annotator, self.image, label, repeat=self.repeat)
                    changed.append(label)
                continue
            p = [0.0, 0.0, 0.0]
            node.GetNthControlPointPosition(i, p)
            pos = _from_ras(p, dim)
            old = self.session.get_point(self.annotator, self.image, label, repeat=self.repeat)
            if old is not None and np.allclose(old.position, pos, rtol=0, atol=1e-9):
                continue
            try:
                point = self.session.set_point(self.annotator, self.image, label, pos, repeat=self.repeat,
                                               time=utc_now_iso())
            except CrossModalRegError as exc:  # keep saving the other points; report this one
                rejected.append(exc)
                continue
            node.SetAttribute(PLACED_ATTRIBUTE_PREFIX + label, point.placed)
            node.SetAttribute(MODIFIED_ATTRIBUTE_PREFIX + label, point.modified)
            changed.append(label)
        for p in list(self.session.points(annotator=self.annotator, image=self.image, repeat=self.repeat)):
            if p.label not in seen:
                self.session.remove_point(self.annotator, self.image, p.label, repeat=self.repeat)
                changed.append(p.label)
        if changed:
            prepare_next_placement(node)
        if rejected:
            raise rejected[0]
        return changed

    def detach(self) -> None:
        for obj, tag in self._observers:
            obj.RemoveObserver(tag)
        self._observers = []
        self.on_change = self.on_error = None


def load_session_into_scene(scene, folder: str, *, volumes: dict | None = None,
                            images=None) -> tuple[AnnotationSession, dict]:
    """Open a session folder and create one annotation node per (annotator, image, repeat) in ``scene``.

    ``volumes`` ({image name: volume node}, optional): each node goes where its points are that volume's own
    coordinates (:func:`attach_annotation_node`). ``images`` (optional): only the nodes of these session images
    (e.g. the two of a five-stain session shown now). Returns the session and ``{(annotator, image, repeat):
    node}``. Nothing is written.
    """
    session = AnnotationSession.open(folder)
    volumes = volumes or {}
    if images is not None:
        for image in images:
            session.check_image_name(image)
    nodes = {}
    keys = sorted({(p.annotator, p.image, p.repeat) for p in session.points()
                   if images is None or p.image in images})
    for annotator, image, repeat in keys:
        nodes[(annotator, image, repeat)] = create_annotation_node(scene, session, annotator, image, repeat=repeat,
                                                                   image_volume=volumes.get(image))
    return session, nodes


def set_blinded(nodes, current_annotator: str, blinded: bool) -> None:
    """Blinded mode: show only ``current_annotator``'s annotation nodes (all of them when not blinded)."""
    for node in nodes:
        display = node.GetDisplayNode()
        if display is None:
            continue
        mine = node.GetAttribute(ANNOTATOR_ATTRIBUTE) == current_annotator
        display.SetVisibility(bool(mine or not blinded))


# ---------------------------------------------------------------------------------------------- .mrk.json
def export_markups_json(node, path: str, *, session: AnnotationSession | None = None) -> str:
    """Write ``node`` to ``path`` with Slicer's ``vtkMRMLMarkupsJsonStorageNode`` (LPS), atomically.

    When the node is an annotation node, each point's description carries its metadata
    (``annotator=...;image=...;repeat=...;placed=...;modified=...``) so that it survives outside a scene.
    """
    annotator = node.GetAttribute(ANNOTATOR_ATTRIBUTE)
    image = node.GetAttribute(IMAGE_ATTRIBUTE)
    repeat = node.GetAttribute(REPEAT_ATTRIBUTE) or "1"
    copy = slicer.vtkMRMLMarkupsFiducialNode()
    copy.Copy(node)
    if annotator:
        for i in range(copy.GetNumberOfControlPoints()):
            label = copy.GetNthControlPointLabel(i)
            meta = {"annotator": annotator, "image": image, "repeat": repeat,
                    "placed": node.GetAttribute(PLACED_ATTRIBUTE_PREFIX + label) or "",
                    "modified": node.GetAttribute(MODIFIED_ATTRIBUTE_PREFIX + label) or ""}
            if session is not None:
                saved = session.get_point(annotator, image, label, repeat=int(repeat))
                if saved is not None:
                    meta["placed"], meta["modified"] = saved.placed, saved.modified
            copy.SetNthControlPointDescription(i, format_metadata(meta))
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    storage.SetCoordinateSystem(slicer.vtkMRMLStorageNode.CoordinateSystemLPS)
    tmp = path + ".partial.mrk.json"
    storage.SetFileName(tmp)
    if not storage.WriteData(copy):
        raise CrossModalRegError(f"Slicer could not write {path}; check the folder exists and is writable")
    os.replace(tmp, path)
    return path


def import_markups_json(scene, path: str, *, name: str | None = None):
    """Read a ``.mrk.json`` with Slicer's storage node into a new fiducial node (metadata back to attributes)."""
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name or "")
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    storage.SetFileName(path)
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise CrossModalRegError(f"Slicer could not read {path} as markups; is it a .mrk.json file?")
    for i in range(node.GetNumberOfControlPoints()):
        meta = parse_metadata(node.GetNthControlPointDescription(i))
        label = node.GetNthControlPointLabel(i)
        if meta.get("annotator"):
            node.SetAttribute(ANNOTATOR_ATTRIBUTE, meta["annotator"])
            node.SetAttribute(IMAGE_ATTRIBUTE, meta.get("image", ""))
            node.SetAttribute(REPEAT_ATTRIBUTE, meta.get("repeat", "1"))
            node.SetAttribute(PLACED_ATTRIBUTE_PREFIX + label, meta.get("placed", ""))
            node.SetAttribute(MODIFIED_ATTRIBUTE_PREFIX + label, meta.get("modified", ""))
    return node


# --------------------------------------------------------------------------------------- results in MRML
CONSENSUS_ATTRIBUTE = "CrossModalReg.landmarks.consensusOf"


def find_output_node(scene, cls: str, attribute: str, value: str):
    """The first node of class ``cls`` whose ``attribute`` equals ``value`` (an output made earlier), or None."""
    for i in range(scene.GetNumberOfNodesByClass(cls)):
        node = scene.GetNthNodeByClass(i, cls)
        if node.GetAttribute(attribute) == value:
            return node
    return None


def consensus_nodes(scene, session_stats, *, name_prefix: str = "Consensus", volumes: dict | None = None,
                    images=None) -> dict:
    """One locked fiducial node per analysed image holding the consensus positions (LPS -> RAS).

    The consensus of an image is in that image's own space: with ``volumes`` ({image name: volume node})
    each node goes where its points are that image's own coordinates; ``images``: only these images (default
    all). Repeated calls update the nodes made before for the same session (found by attribute), they do not add
    new ones.
    """
    out = {}
    volumes = volumes or {}
    folder = session_stats.session.folder
    for image, st in session_stats.per_image.items():
        if images is not None and image not in images:
            continue
        ok = np.all(np.isfinite(st.consensus), axis=1)
        pts = st.consensus[ok]
        dim = pts.shape[1]
        if dim == 2:
            pts = np.column_stack([pts, np.zeros(len(pts))])
        labels = [lab for lab, k in zip(st.labels, ok) if k]
        tag = f"{folder}|{image}"
        existing = find_output_node(scene, "vtkMRMLMarkupsFiducialNode", CONSENSUS_ATTRIBUTE, tag)
        node = mrml.markups_node_from_points(scene, pts, labels, f"{name_prefix} {image}", locked=True,
                                             node=existing)
        node.SetAttribute(CONSENSUS_ATTRIBUTE, tag)
        attach_annotation_node(node, volumes.get(image), dim)
        out[image] = node
    return out


def statistics_tables(scene, session_stats, *, prefix: str = "Landmark") -> dict:
    """Table nodes (with units and descriptions) of every statistics table; returns name -> node."""
    return {name: table_node_from_rows(scene, f"{prefix} {name}", cols, rows)
            for name, (cols, rows) in session_stats.tables().items()}


def registration_table(scene, result, *, name: str = "Landmark registration"):
    from .report import registration_columns, registration_rows

    return table_node_from_rows(scene, name, registration_columns(result.units), registration_rows(result))


def registration_transform_node(scene, result, *, name: str | None = None, reference_image=None, node=None,
                                moving_image=None):
    """A transform node whose transform FROM parent maps fixed RAS points to moving RAS points.

    Linear models are set as a matrix; a thin-plate spline is sampled as a displacement field on
    ``reference_image`` (a SimpleITK image of the fixed space, LPS), which is then required. ``node`` (a
    ``vtkMRMLTransformNode`` chosen by the user, or made by an earlier run) is updated in place; otherwise a new
    node is added.

    A 2D registration (``result.units`` pixels) maps fixed pixels to moving pixels: it is turned into the physical
    transform between the two images (:func:`.units.physical_transform_from_pixel_registration`), which needs
    ``reference_image`` (the fixed image) and ``moving_image`` (the moving image, its own geometry, as read from
    its volume node).
    """
    if result.units == "pixel":
        from .units import image_geometry, physical_transform_from_pixel_registration

        if reference_image is None or moving_image is None:
            raise CrossModalRegError("a 2D (pixel) landmark registration needs the fixed and moving volumes to "
                                     "make its transform; select both volumes")
        tx = physical_transform_from_pixel_registration(result, image_geometry(reference_image),
                                                        image_geometry(moving_image), reference_image)
    elif result.transform_fixed_to_moving is not None:
        tx = result.transform_fixed_to_moving
    else:
        if reference_image is None:
            raise CrossModalRegError("a thin-plate spline transform node needs the fixed image as reference grid")
        tx = result.tps.to_displacement_field_transform(reference_image)
    if node is not None and not node.IsA("vtkMRMLTransformNode"):
        raise CrossModalRegError(f"output '{node.GetName()}' is not a transform node; choose a transform")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTransformNode", name or "Landmarks fixed->moving")
    mrml.set_transform_fixed_to_moving(node, tx)
    return node


def expected_tre_volume(scene, fiducials_lps, reference_volume_node, fle_rms: float, *, name: str = "Expected TRE",
                        node=None, progress=None):
    """Scalar volume (mm) of the expected rigid-registration TRE on the reference volume's grid.

    ``node`` (the output chosen by the user or made by an earlier run) is updated in place; it must not be the
    reference volume itself (refused: the image would be overwritten). ``progress`` receives a
    :class:`~CrossModalRegLib.progress.Progress` per slice; ``RegistrationCancelled`` (or any exception) raised from
    it stops the computation before anything is added to the scene.
    """
    from .tre import expected_tre_map

    if node is not None and node is reference_volume_node:
        raise CrossModalRegError(f"the expected TRE map output is the volume '{node.GetName()}' it is computed on; "
                                 "choose another output node or 'Create new volume'")
    image = mrml.image_from_volume_node(reference_volume_node, squeeze_2d=False)
    tre_image = expected_tre_map(np.asarray(fiducials_lps, float), image, fle_rms, progress=progress)
    out = mrml.volume_node_from_image(scene, tre_image, node.GetName() if node is not None else name, node=node)
    # Same place as the image it was computed on (its grid is the image's own space).
    out.SetAndObserveTransformNodeID(reference_volume_node.GetTransformNodeID())
    return out
