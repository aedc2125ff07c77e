"""Registration of two volume nodes in a scene, with a live preview, and nothing left behind on cancel or error.

This is what the CrossModalReg module's Logic calls (and what the command line calls on a headless scene):

* the moving volume is placed under the output transform node at the start, and the node is updated while the
  optimiser runs (linear and B-spline), so slice views show the moving image sliding into place;
* the output transform node's *transform from parent* maps FIXED RAS points to MOVING RAS points (the moving
  volume, under it, displays aligned with the fixed); it references its fixed and moving volumes;
* provenance (versions, preset and hash, parameters, seed, timings, inputs' checksums) is kept in the scene as a
  text node referenced from the transform node; the metric per iteration as a table (and a plot): these nodes are
  made by :mod:`.scene_builder`, which also builds the command line's and batch's scene, so both look the same;
* on cancel or error every node the run created is removed, the moving volume gets its previous parent
  transform back and a user-supplied output node its previous transform.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import slicer

from . import engine, mrml
from .errors import CrossModalRegError
from .geometry import embed_3d, linear_transform_in_plane
from .scene_builder import (  # noqa: F401  (the module's names for these live on here)
    METRIC_TRACE_COLUMNS,
    PROVENANCE_REFERENCE,
    TRACE_REFERENCE,
    SceneRegistrationOutputs,
    add_result_nodes,
    default_transform_name,
    set_overlay_layers,
)


def landmark_pairs_from_nodes(fixed_node, moving_node):
    """The placed control points of two markups nodes paired by label (:func:`.landmarks.pairing.pair_landmarks`),
    or None when neither node is given."""
    from .landmarks.pairing import pair_landmarks

    if fixed_node is None and moving_node is None:
        return None
    if fixed_node is None or moving_node is None:
        raise CrossModalRegError("landmark initialisation needs both a fixed and a moving landmark list")
    return pair_landmarks(mrml.landmark_set_from_markups_node(fixed_node),
                          mrml.landmark_set_from_markups_node(moving_node))


def register_volume_nodes(
    scene,
    fixed_node,
    moving_node,
    *,
    preset="multimodal-rigid",
    output_transform_node=None,
    output_transform_name: str | None = None,
    fixed_mask_node=None,
    moving_mask_node=None,
    fixed_landmarks_node=None,
    moving_landmarks_node=None,
    initial_transform_node=None,
    create_resampled_volume: bool = False,
    create_convergence_outputs: bool = True,
    live_preview: bool = True,
    preview_interval_s: float = 0.1,
    seed: int = engine.DEFAULT_SEED,
    overrides: dict | None = None,
    rotation_search: bool | None = None,
    progress=None,
    cancel=None,
    strict: bool = True,
) -> SceneRegistrationOutputs:
    """Register ``moving_node`` to ``fixed_node`` in ``scene`` (see the module docstring for what is created).

    ``progress`` receives :class:`~CrossModalRegLib.progress.Progress` reports (a GUI updates its progress bar and
    processes events there, which is also when the views redraw the moving preview). Raises
    ``CrossModalRegError`` (bad input: nothing created), ``RegistrationCancelled`` or ``RegistrationFailed``
    (everything created removed, the scene as before).

    The three phases are also available separately (what a GUI uses to compute in a worker thread while the main
    thread keeps the views and the Cancel button live): :func:`prepare_registration` (reads the scene),
    :meth:`PreparedRegistration.run` (no MRML), and :class:`SceneChanges` (preview, commit, rollback; main thread).
    """
    prepared = prepare_registration(
        fixed_node, moving_node, preset=preset, output_transform_node=output_transform_node,
        fixed_mask_node=fixed_mask_node, moving_mask_node=moving_mask_node,
        fixed_landmarks_node=fixed_landmarks_node, moving_landmarks_node=moving_landmarks_node,
        initial_transform_node=initial_transform_node, create_resampled_volume=create_resampled_volume,
        seed=seed, overrides=overrides, rotation_search=rotation_search, strict=strict,
    )
    changes = SceneChanges(scene, prepared, output_transform_node=output_transform_node,
                           output_transform_name=output_transform_name, live_preview=live_preview,
                           preview_interval_s=preview_interval_s)
    try:
        def on_progress(p):
            changes.preview(p)
            if progress is not None:
                progress(p)

        result, resampled = prepared.run(progress=on_progress, cancel=cancel)
        return changes.commit(result, resampled, create_convergence_outputs=create_convergence_outputs)
    except BaseException:
        changes.rollback()
        raise


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    return bool(cancel.is_set() if hasattr(cancel, "is_set") else cancel())


@dataclass
class PreparedRegistration:
    """One run's inputs, read from the scene by :func:`prepare_registration` (images in LPS, landmarks paired).

    :meth:`run` uses no MRML and no scene: it may run in a worker thread.
    """

    fixed_node: object
    moving_node: object
    fixed: object  # SimpleITK image (LPS)
    moving: object
    engine_options: dict
    scene_inputs: dict
    output_transform_node: object | None = None
    create_resampled_volume: bool = False
    moving_landmarks_node: object | None = None  # goes under the output transform with the moving volume

    def run(self, *, progress=None, cancel=None):
        """``(RegistrationResult, resampled moving image or None)``; raises RegistrationCancelled / Failed."""
        from .errors import RegistrationCancelled

        result = engine.register(self.fixed, self.moving, progress=progress, cancel=cancel, **self.engine_options)
        resampled = None
        if self.create_resampled_volume:
            if _is_cancelled(cancel):
                raise RegistrationCancelled("cancelled before resampling")
            resampled = result.resample_moving(self.fixed, self.moving)
        if _is_cancelled(cancel):
            raise RegistrationCancelled("cancelled")
        return result, resampled


def prepare_registration(
    fixed_node, moving_node, *, preset="multimodal-rigid", output_transform_node=None, fixed_mask_node=None,
    moving_mask_node=None, fixed_landmarks_node=None, moving_landmarks_node=None, initial_transform_node=None,
    create_resampled_volume: bool = False, seed: int = engine.DEFAULT_SEED, overrides: dict | None = None,
    rotation_search: bool | None = None, strict: bool = True,
) -> PreparedRegistration:
    """Check the inputs and read them from their nodes; changes nothing in the scene (call on the main thread)."""
    for role, node in (("fixed", fixed_node), ("moving", moving_node)):
        if node is None or not node.IsA("vtkMRMLVolumeNode"):
            raise CrossModalRegError(f"select a {role} volume")
    if fixed_node is moving_node:
        raise CrossModalRegError("fixed and moving volumes are the same node: select two different volumes")
    if output_transform_node is not None and not output_transform_node.IsA("vtkMRMLTransformNode"):
        raise CrossModalRegError("the output must be a transform node")
    if output_transform_node is not None and output_transform_node is initial_transform_node:
        raise CrossModalRegError("the output transform is also the initial transform: select another output "
                                 "(or none, to create one) so that the initial transform is kept")
    fixed = mrml.image_from_volume_node(fixed_node)
    moving = mrml.image_from_volume_node(moving_node)
    fixed_mask = mrml.segmentation_or_labelmap_to_mask(fixed_mask_node, fixed_node) if fixed_mask_node else None
    moving_mask = mrml.segmentation_or_labelmap_to_mask(moving_mask_node, moving_node) if moving_mask_node else None
    pairs = landmark_pairs_from_nodes(fixed_landmarks_node, moving_landmarks_node)
    f_lm, m_lm = (None, None) if pairs is None else (pairs.fixed, pairs.moving)
    if f_lm is not None and fixed.GetDimension() == 2:
        f_lm, m_lm = f_lm[:, :2], m_lm[:, :2]
    initial = None
    if initial_transform_node is not None:
        initial = mrml.transform_fixed_to_moving_from_node(initial_transform_node)
        if fixed.GetDimension() == 2:
            initial = linear_transform_in_plane(initial)
    return PreparedRegistration(
        fixed_node, moving_node, fixed, moving,
        engine_options=dict(preset=preset, fixed_mask=fixed_mask, moving_mask=moving_mask, fixed_landmarks=f_lm,
                            moving_landmarks=m_lm, initial_transform_fixed_to_moving=initial, overrides=overrides,
                            rotation_search=rotation_search, seed=seed, strict=strict),
        scene_inputs={
            "fixed_volume": fixed_node.GetName(), "moving_volume": moving_node.GetName(),
            "fixed_mask": fixed_mask_node.GetName() if fixed_mask_node else None,
            "moving_mask": moving_mask_node.GetName() if moving_mask_node else None,
            "fixed_landmarks": fixed_landmarks_node.GetName() if fixed_landmarks_node else None,
            "moving_landmarks": moving_landmarks_node.GetName() if moving_landmarks_node else None,
            "initial_transform": initial_transform_node.GetName() if initial_transform_node else None,
        },
        output_transform_node=output_transform_node,
        create_resampled_volume=create_resampled_volume,
        moving_landmarks_node=moving_landmarks_node,
    )


class SceneChanges:
    """The scene side of one run (main thread only): the output node, the live preview, the outputs.

    Created at the start of a run: records what :meth:`rollback` restores (the parent transforms of the moving volume
    and the moving landmarks, the user's output node's transform and attributes) and creates the output transform
    node if none was given.
    """

    def __init__(self, scene, prepared: PreparedRegistration, *, output_transform_node=None,
                 output_transform_name: str | None = None, live_preview: bool = True, preview_interval_s: float = 0.1):
        self.scene = scene
        self.prepared = prepared
        self.live_preview = live_preview
        self.preview_interval_s = preview_interval_s
        self.preview_updates = 0
        self._last_preview = 0.0
        self.created = []
        moving_node = prepared.moving_node
        parent = moving_node.GetParentTransformNode()
        self._previous_parent_id = parent.GetID() if parent else None
        landmarks = prepared.moving_landmarks_node
        landmarks_parent = landmarks.GetParentTransformNode() if landmarks is not None else None
        self._previous_landmarks_parent_id = landmarks_parent.GetID() if landmarks_parent else None
        self._previous_output = None
        self._previous_attr = None
        if output_transform_node is not None:
            # A detached copy of the user's node (its transform and attributes), put back on failure.
            self._previous_output = slicer.vtkMRMLTransformNode()
            self._previous_output.CopyContent(output_transform_node, True)
            self._previous_attr = output_transform_node.GetAttribute(mrml.DIRECTION_ATTRIBUTE)
        else:
            output_transform_node = scene.AddNewNodeByClass(
                "vtkMRMLTransformNode",
                output_transform_name or default_transform_name(prepared.fixed_node, moving_node))
            self.created.append(output_transform_node)
        self.output_transform_node = output_transform_node
        if live_preview:
            moving_node.SetAndObserveTransformNodeID(output_transform_node.GetID())

    def preview(self, p) -> bool:
        """Show the optimiser's current transform (a Progress report) on the output node; throttled."""
        if not self.live_preview or p._transform_factory is None:
            return False
        now = time.perf_counter()
        if now - self._last_preview < self.preview_interval_s:
            return False
        tx = p.transform_fixed_to_moving_lps()
        if tx is None or (tx.GetDimension() == 2 and not tx.IsLinear()):
            return False  # 2D B-spline preview goes through a 3D embedding at the end only
        mrml.set_transform_fixed_to_moving(self.output_transform_node, embed_3d(tx))
        self.preview_updates += 1
        self._last_preview = now
        return True

    def commit(self, result, resampled=None, *, create_convergence_outputs: bool = True) -> SceneRegistrationOutputs:
        """The run's nodes (:func:`.scene_builder.add_result_nodes`, shared with the command line's scene)."""
        provenance = result.provenance()
        provenance["scene_inputs"] = dict(self.prepared.scene_inputs)
        outputs = add_result_nodes(self.scene, self.prepared.fixed_node, self.prepared.moving_node,
                                   self.output_transform_node, result, provenance, resampled=resampled,
                                   convergence=create_convergence_outputs, created=self.created,
                                   moving_landmarks_node=self.prepared.moving_landmarks_node)
        outputs.preview_updates = self.preview_updates
        return outputs

    def rollback(self) -> None:
        """Put the scene back as it was: the moving volume's parent, the user's output node, no new nodes."""
        self.prepared.moving_node.SetAndObserveTransformNodeID(self._previous_parent_id)
        if self.prepared.moving_landmarks_node is not None:
            self.prepared.moving_landmarks_node.SetAndObserveTransformNodeID(self._previous_landmarks_parent_id)
        if self._previous_output is not None:
            self.output_transform_node.CopyContent(self._previous_output, True)
            self.output_transform_node.SetAttribute(mrml.DIRECTION_ATTRIBUTE, self._previous_attr)
        mrml.remove_nodes(self.scene, reversed(self.created))
        self.created = []


def checkerboard_volume(scene, fixed_node, moving_node, *, squares: int = 8, node=None, name: str | None = None):
    """A volume on the fixed grid alternating fixed and moving (through the moving's parent transform) in squares.

    Each image is scaled to [0, 1] between its 1st and 99th percentile so that CT and MR can sit side by side.
    Updates ``node`` when given (the same node is reused by the module's checkerboard button), else adds one.
    """
    import SimpleITK as sitk

    fixed = mrml.image_from_volume_node(fixed_node)
    moving = mrml.image_from_volume_node(moving_node)
    if fixed.GetNumberOfComponentsPerPixel() > 1 or moving.GetNumberOfComponentsPerPixel() > 1:
        from .preprocessing import to_grey

        fixed, moving = to_grey(fixed, "luminance"), to_grey(moving, "luminance")
    parent = moving_node.GetParentTransformNode()
    tx = mrml.transform_fixed_to_moving_from_node(parent) if parent is not None else sitk.Transform(3, sitk.sitkIdentity)
    if fixed.GetDimension() == 2:
        if not tx.IsLinear():
            raise CrossModalRegError("a checkerboard of 2D images needs a linear transform")
        tx = linear_transform_in_plane(tx)
    warped = sitk.Resample(sitk.Cast(moving, sitk.sitkFloat32), fixed, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)

    def unit(a):
        lo, hi = np.percentile(a, [1, 99])
        return np.clip((a - lo) / (hi - lo if hi > lo else 1.0), 0, 1).astype(np.float32)

    f = unit(sitk.GetArrayFromImage(sitk.Cast(fixed, sitk.sitkFloat32)))
    m = unit(sitk.GetArrayFromImage(warped))
    idx = np.indices(f.shape)
    n = np.array(f.shape)
    cell = [np.maximum(1, s // squares) for s in n]
    parity = sum(idx[d] // cell[d] for d in range(len(n)) if n[d] > 1) % 2
    out = sitk.GetImageFromArray(np.where(parity == 0, f, m).astype(np.float32))
    out.CopyInformation(fixed)
    return mrml.volume_node_from_image(scene, out, name or f"{moving_node.GetName()} checkerboard", node=node)
