"""The built-in digital head phantom as Slicer sample data: generated on this computer, nothing downloaded.

Registered with Slicer's SampleData module the way extensions do (``SampleData.SampleDataLogic.
registerCustomSampleDataSource``) with a ``customDownloader``: the SampleData module calls it when the user clicks
the phantom's thumbnail, and it renders the phantom instead of downloading a file. The ``uris`` are placeholders
that SampleData requires but never fetches, because the custom downloader replaces the download.

Registration is cheap and safe at Slicer start-up: this module imports neither SimpleITK nor numpy at import time
(the phantom is only computed when asked for), and :func:`register_phantom_sample_data` returns False, without an
error, when the SampleData module is absent (e.g. a custom Slicer build).

The phantom pair: an MR-T1-like FIXED image and a CT-like MOVING image of the same analytic head (tissue classes,
an off-centre lesion, named anatomical landmarks), the CT on its own anisotropic grid under a known rigid
transform. The ground truth comes with it: a transform node holding the true FIXED-to-MOVING transform (its
transform from parent, RAS; the moving volume is NOT placed under it) and the landmarks on both images, so a user
can register the pair and check the result with the Validation module.
"""

from __future__ import annotations

import logging
import os

CATEGORY = "CrossModalReg"
SAMPLE_NAME = "CrossModalRegPhantomMRCT"
SAMPLE_DESCRIPTION = "MR-CT head phantom\n(generated, no download)"
NODE_NAMES = ("Phantom MR (fixed)", "Phantom CT (moving)")
TRUTH_TRANSFORM_NAME = "Phantom truth fixed->moving"
LANDMARK_NAMES = ("Phantom landmarks MR", "Phantom landmarks CT")
SEED = 11


def _icon_path() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(os.path.dirname(here), "Resources", "Icons", "CrossModalReg.png")


def register_phantom_sample_data(sample_data=None) -> bool:
    """Add the phantom to Slicer's SampleData module (category "CrossModalReg"). Returns True when registered.

    ``sample_data``: the SampleData module (default: ``import SampleData``). Absent: False, nothing raised.
    Registering twice registers once (SampleData compares the sources).
    """
    if sample_data is None:
        try:
            import SampleData as sample_data
        except ImportError:
            logging.info("CrossModalReg: the SampleData module is not available; the phantom is not listed there")
            return False
    sample_data.SampleDataLogic.registerCustomSampleDataSource(
        category=CATEGORY,
        sampleName=SAMPLE_NAME,
        uris=["crossmodalreg://phantom/mr-t1", "crossmodalreg://phantom/ct"],
        fileNames=["CrossModalRegPhantomMR.nrrd", "CrossModalRegPhantomCT.nrrd"],
        nodeNames=list(NODE_NAMES),
        thumbnailFileName=_icon_path(),
        loadFileTypes=["VolumeFile", "VolumeFile"],
        customDownloader=load_phantom_sample,
    )
    return True


def load_phantom_sample(source=None, *, scene=None, spacing_mm: float = 2.5):
    """The custom downloader: render the phantom pair into ``scene`` (default ``slicer.mrmlScene``).

    ``source`` is the SampleDataSource SampleData hands in (unused: nothing is downloaded). Returns the nodes
    added: [fixed MR volume, moving CT volume, truth transform node (fixed -> moving), MR landmarks, CT
    landmarks]. The same seed gives the same pair every time.
    """
    import numpy as np
    import slicer

    from . import mrml, simulation
    from .geometry import transform_points

    scene = scene if scene is not None else slicer.mrmlScene
    rng = np.random.RandomState(SEED)
    model = simulation.head_phantom(spacing_mm=spacing_mm)
    fixed = simulation.render(model, "t1", rng=rng)
    center = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in fixed.GetSize()])
    truth = simulation.random_rigid_transform(rng, center=center, max_angle_deg=20, max_translation_mm=15)
    moving = simulation.simulate_pair(simulation.render(model, "ct", rng=rng), truth, spacing=(2.0, 2.0, 3.0),
                                      rng=rng)
    fixed_node = mrml.volume_node_from_image(scene, fixed, NODE_NAMES[0])
    moving_node = mrml.volume_node_from_image(scene, moving, NODE_NAMES[1])
    truth_node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", TRUTH_TRANSFORM_NAME)
    mrml.set_transform_fixed_to_moving(truth_node, truth)
    mrml.set_volume_references(truth_node, fixed_node, moving_node)
    labels = list(model.landmarks_lps)
    fixed_pts = np.array([model.landmarks_lps[k] for k in labels])
    fixed_lm = mrml.markups_node_from_points(scene, fixed_pts, labels, LANDMARK_NAMES[0], locked=True)
    moving_lm = mrml.markups_node_from_points(scene, transform_points(truth, fixed_pts), labels, LANDMARK_NAMES[1],
                                              locked=True)
    for node, modality in ((fixed_node, "MR"), (moving_node, "CT")):
        node.SetAttribute("CrossModalReg.phantomModality", modality)
    return [fixed_node, moving_node, truth_node, fixed_lm, moving_lm]
