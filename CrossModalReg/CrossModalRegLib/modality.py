"""Guess a volume's imaging modality, which volume should be fixed and which moving, and the preset to use.

Used right after loading (Add Data, DICOM, sample data): the module fills its fixed/moving selectors and preset
from :func:`guess_roles_and_preset` and shows the reasons, so the user sees why and can correct it.

How a modality is guessed, in order:

1. **DICOM Modality (0008,0060)** of the series the volume was loaded from. Slicer's DICOM plugins store the
   series' SOP instance UIDs in the node attribute ``DICOM.instanceUIDs``; the caller hands in
   ``dicom_value(instance_uid, tag) -> str`` (in Slicer: ``slicer.dicomDatabase.fileValue(
   slicer.dicomDatabase.fileForInstance(uid), tag)``). A node attribute ``DICOM.Modality`` is used as well.
2. **The intensity signature** (no DICOM, e.g. NIfTI/NRRD files), measured on the voxels:

   - *RGB*: a colour (3- or 4-component) volume: histology or a photograph.
   - *CT*: Hounsfield units: air and the outside of the field of view at about -1000 HU or below (1st
     percentile <= -500) and bone above 300 HU (>= 0.2 % of the voxels). No MR, ultrasound or PET image has
     -1000 in it.
   - *Ultrasound*: the acquisition cone inside a box: a large exactly-zero region (>= 25 % of the voxels) and,
     inside the cone, speckle: a dark background with sparse bright echoes, so the non-zero intensities are
     strongly positively skewed (skewness >= 1.0). A skull-stripped MR also has a large zero region, but its
     tissue intensities are not skewed that way (measured: -0.8 to 0.8 on the MR images of the test data, 1.47
     on the RESECT ultrasound).
   - *PET*: blurred (little detail below 2 mm: the part of the signal a 2 mm Gaussian removes is < 35 % of its
     spread) and in SUV-like units (99.9th percentile between 0.3 and 60, values not integers). A PET in Bq/mL
     is not recognised this way: its DICOM Modality is needed.
   - *MR* otherwise; a low-resolution MR (voxels >= 2.5 mm, matrix <= 128 in plane) is reported as EPI-like.

The thresholds are heuristics measured on the project's test data (see the tests): a guess, shown with its
reason, never a silent decision. Written here (not taken from a library) because no library Slicer bundles
guesses a modality from voxels.

Qt-free: volume nodes and SimpleITK images only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from .errors import CrossModalRegError

MODALITY_TAG = "0008,0060"
PATIENT_POSITION_TAG = "0018,5100"
INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"

# DICOM Modality code -> the modality names the presets use
DICOM_MODALITIES = {"CT": "CT", "MR": "MR", "US": "US", "PT": "PET", "NM": "PET", "SM": "RGB", "XC": "RGB",
                    "GM": "RGB"}
MAX_VOXELS = 2_000_000  # the signature is measured on at most this many voxels (integer shrink)


@dataclass
class ModalityGuess:
    """A volume's modality as guessed, with the evidence.

    Attributes
    ----------
    modality : str
        "CT", "MR", "US", "PET" or "RGB".
    source : str
        "DICOM" (the Modality tag) or "intensity" (the voxel signature).
    reason : str
        Why, in words a user can check.
    subtype : str
        "EPI" for a low-resolution MR, else "".
    patient_position : str or None
        DICOM Patient Position (0018,5100), e.g. "HFS" or "FFS", when known.
    measures : dict
        The numbers the guess was made from.
    """

    modality: str
    source: str
    reason: str
    subtype: str = ""
    patient_position: str | None = None
    measures: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- intensities
def _shrunk(image: sitk.Image) -> sitk.Image:
    n = int(np.prod(image.GetSize()))
    if n <= MAX_VOXELS:
        return image
    factor = int(np.ceil((n / MAX_VOXELS) ** (1.0 / image.GetDimension())))
    return sitk.Shrink(image, [factor] * image.GetDimension())


def _skewness(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    s = x.std()
    return float(np.mean(((x - x.mean()) / s) ** 3)) if s > 0 else 0.0


def signature(image: sitk.Image) -> dict:
    """The numbers the intensity guess uses (see the module docstring), measured on ``image``."""
    if image.GetNumberOfComponentsPerPixel() > 1:
        return {"components": image.GetNumberOfComponentsPerPixel()}
    small = _shrunk(sitk.Cast(image, sitk.sitkFloat32))
    a = sitk.GetArrayFromImage(small)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        raise CrossModalRegError("the volume has no finite voxel value; load the image again")
    p1, p999 = np.percentile(finite, [1.0, 99.9])
    nonzero = finite[finite != 0]
    m = {
        "components": 1,
        "min": float(finite.min()),
        "max": float(finite.max()),
        "p1": float(p1),
        "p99_9": float(p999),
        "bone_fraction": float(np.mean(finite > 300.0)),
        "zero_fraction": float(np.mean(finite == 0)),
        "nonzero_skewness": _skewness(nonzero) if nonzero.size > 10 else 0.0,
        "integer_valued": bool(np.all(np.abs(finite[:: max(1, finite.size // 100000)]
                                             - np.round(finite[:: max(1, finite.size // 100000)])) < 1e-6)),
        "spacing_mm": [float(s) for s in image.GetSpacing()],
        "size": [int(s) for s in image.GetSize()],
    }
    lo, hi = np.percentile(finite, [1.0, 99.0])
    if small.GetDimension() == 3 and hi > lo:
        smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(small, 2.0))
        fg = a > lo + 0.1 * (hi - lo)
        m["detail_below_2mm"] = float(np.std((a - smooth)[fg]) / np.std(a[fg])) if fg.sum() > 10 else 1.0
    else:
        m["detail_below_2mm"] = 1.0
    return m


def guess_from_image(image: sitk.Image) -> ModalityGuess:
    """Modality from the intensity signature of a SimpleITK image (no DICOM information)."""
    m = signature(image)
    if m["components"] > 1:
        return ModalityGuess("RGB", "intensity", f"a colour image ({m['components']} components per voxel): "
                             "histology or a photograph", measures=m)
    if m["p1"] <= -500.0 and m["bone_fraction"] >= 0.002:
        return ModalityGuess(
            "CT", "intensity",
            f"Hounsfield units: air at {m['p1']:.0f} (1st percentile, minimum {m['min']:.0f}) and "
            f"{100 * m['bone_fraction']:.1f}% of the voxels above 300 (bone)", measures=m)
    if m["zero_fraction"] >= 0.25 and m["nonzero_skewness"] >= 1.0:
        return ModalityGuess(
            "US", "intensity",
            f"an ultrasound cone: {100 * m['zero_fraction']:.0f}% of the voxels are exactly zero (outside the "
            f"cone) and the rest is speckle (skewness {m['nonzero_skewness']:.2f} of the non-zero intensities)",
            measures=m)
    if m["detail_below_2mm"] < 0.35 and 0.3 <= m["p99_9"] <= 60.0 and not m["integer_valued"]:
        return ModalityGuess(
            "PET", "intensity",
            f"blurred (only {100 * m['detail_below_2mm']:.0f}% of the signal is finer than 2 mm) and in SUV-like "
            f"units (99.9th percentile {m['p99_9']:.2f})", measures=m)
    spacing, size = m["spacing_mm"], m["size"]
    epi = len(spacing) == 3 and min(spacing) >= 2.5 and max(size[:2]) <= 128
    why = (f"no CT, ultrasound or PET signature (1st percentile {m['p1']:.0f}, {100 * m['zero_fraction']:.0f}% "
           f"zero voxels, skewness {m['nonzero_skewness']:.2f}, {100 * m['detail_below_2mm']:.0f}% detail below "
           "2 mm)")
    if epi:
        why += f"; low resolution ({' x '.join(f'{s:.1f}' for s in spacing)} mm voxels): EPI-like"
    return ModalityGuess("MR", "intensity", why, subtype="EPI" if epi else "", measures=m)


# ------------------------------------------------------------------------------------------------- DICOM
def _dicom_values(node, tag, dicom_value):
    uids = (node.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if not uids or dicom_value is None:
        return []
    values = []
    for uid in (uids[0], uids[-1]) if len(uids) > 1 else uids:
        try:
            v = dicom_value(uid, tag)
        except Exception:  # noqa: BLE001 - a missing file in the database: no DICOM evidence, not an error
            v = ""
        if v:
            values.append(str(v).strip().upper())
    return values


def patient_position(node, dicom_value=None) -> str | None:
    """DICOM Patient Position (0018,5100) of the series ``node`` was loaded from (None when unknown)."""
    attr = node.GetAttribute("DICOM.PatientPosition")
    if attr:
        return attr.strip().upper()
    values = _dicom_values(node, PATIENT_POSITION_TAG, dicom_value)
    return values[0] if values else None


def guess_modality(volume_node, *, dicom_value=None) -> ModalityGuess:
    """Modality of a volume node: the DICOM Modality tag where present, else the intensity signature.

    ``dicom_value(instance_uid, tag) -> str`` reads a tag of a loaded DICOM instance (see the module docstring).
    """
    from .mrml import image_from_volume_node

    if volume_node is None:
        raise CrossModalRegError("no volume given")
    position = patient_position(volume_node, dicom_value)
    codes = [volume_node.GetAttribute("DICOM.Modality")] if volume_node.GetAttribute("DICOM.Modality") else []
    codes = [c.strip().upper() for c in codes] + _dicom_values(volume_node, MODALITY_TAG, dicom_value)
    if codes and codes[0] in DICOM_MODALITIES:
        modality = DICOM_MODALITIES[codes[0]]
        guess = ModalityGuess(modality, "DICOM", f"DICOM Modality (0008,0060) is {codes[0]}",
                              patient_position=position)
        if modality == "MR":
            guess.subtype = guess_from_image(image_from_volume_node(volume_node, squeeze_2d=False)).subtype
        return guess
    guess = guess_from_image(image_from_volume_node(volume_node, squeeze_2d=False))
    if codes:
        guess.reason = f"DICOM Modality {codes[0]} is not one the presets know; by intensity: {guess.reason}"
    guess.patient_position = position
    return guess


# ------------------------------------------------------------------------------------------ roles, preset
def _preset_table():
    from .presets import available_presets, load_preset

    table = []
    for name in available_presets():
        p = load_preset(name)
        mods = p.get("modalities", {})
        table.append((name, p, str(mods.get("fixed", "any")), str(mods.get("moving", "any"))))
    return table


def _matches(preset_modality: str, guess: ModalityGuess) -> bool:
    words = preset_modality.upper().split()
    if not words or words[0] == "ANY":
        return False
    base = {"RGB": "RGB", "MR": "MR", "CT": "CT", "US": "US", "PET": "PET"}.get(words[0])
    if base != guess.modality:
        return False
    if len(words) > 1 and words[1] == "EPI":
        return guess.subtype == "EPI"
    if len(words) > 1 and words[1] == "T1":
        return guess.subtype != "EPI"
    return True


def guess_roles_and_preset(scene, nodes, *, dicom_value=None):
    """Which of two loaded volumes is fixed, which moving, and which preset to use, with the reasons.

    Parameters
    ----------
    scene : vtkMRMLScene
        The scene the volumes are in.
    nodes : sequence of two volume nodes
        In the order the user loaded or selected them (kept as fixed, moving when no preset says otherwise).
    dicom_value : callable, optional
        ``dicom_value(instance_uid, tag) -> str`` for volumes loaded from DICOM (see the module docstring).

    Returns
    -------
    fixed, moving : volume nodes
    preset : str
        Name of the suggested preset (``CrossModalRegLib.presets``).
    reasons : list of str
        One line per volume (its modality and why), then why this preset (with its ``when_to_use``).
    warnings : list of str
        Things to check before registering (e.g. head-first vs feet-first series).
    """
    nodes = [n for n in nodes if n is not None]
    if len(nodes) != 2:
        raise CrossModalRegError(f"select two volumes (got {len(nodes)}) to guess which is fixed and which moving")
    a, b = nodes
    for n in nodes:
        if n.GetScene() is not scene:
            raise CrossModalRegError(f"volume '{n.GetName()}' is not in this scene")
    if a.GetID() == b.GetID():
        raise CrossModalRegError(f"'{a.GetName()}' is selected twice; choose two different volumes")
    ga, gb = guess_modality(a, dicom_value=dicom_value), guess_modality(b, dicom_value=dicom_value)
    reasons = [f"'{n.GetName()}': {g.modality}{' (' + g.subtype + ')' if g.subtype else ''} - {g.reason}"
               for n, g in ((a, ga), (b, gb))]
    warnings = []
    if ga.patient_position and gb.patient_position and ga.patient_position != gb.patient_position:
        warnings.append(
            f"the two series disagree on patient position: '{a.GetName()}' is {ga.patient_position}, "
            f"'{b.GetName()}' is {gb.patient_position} (head-first vs feet-first). Slicer places both in the "
            "patient's own coordinates, so this is usually fine, but check that the DICOM headers are right and "
            "expect large rotations if one was set wrongly at the scanner")
    chosen = None
    for name, preset, pf, pm in _preset_table():
        if _matches(pf, ga) and _matches(pm, gb):
            chosen = (name, preset, a, b)
        elif _matches(pf, gb) and _matches(pm, ga):
            chosen = (name, preset, b, a)
        if chosen:
            break
    if chosen is None:
        from .presets import load_preset

        fallback = "multimodal-rigid"
        chosen = (fallback, load_preset(fallback), a, b)
        why = (f"no preset is made for {ga.modality} with {gb.modality}: '{fallback}', with '{a.GetName()}' "
               "fixed as selected")
    else:
        mods = chosen[1].get("modalities", {})
        why = (f"'{chosen[0]}' is made for {mods.get('fixed')} (fixed) with {mods.get('moving')} (moving): "
               f"'{chosen[2].GetName()}' fixed, '{chosen[3].GetName()}' moving")
    name, preset, fixed, moving = chosen
    reasons.append(why + ". " + preset.get("when_to_use", ""))
    return fixed, moving, name, reasons, warnings


def volume_ids(scene) -> set:
    """IDs of the image volumes (scalar and vector, not label maps) in ``scene``: record before a load."""
    out = set()
    for cls in ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"):
        for i in range(scene.GetNumberOfNodesByClass(cls)):
            node = scene.GetNthNodeByClass(i, cls)
            if not node.IsA("vtkMRMLLabelMapVolumeNode"):
                out.add(node.GetID())
    return out


def pair_after_loading(scene, ids_before, current=()) -> list:
    """The two volumes to guess roles for after a load: the newly added image volumes first (in scene order),
    then the currently selected ones (``current``: fixed, moving; None entries skipped), without repeats."""
    new = []
    for cls in ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"):
        for i in range(scene.GetNumberOfNodesByClass(cls)):
            node = scene.GetNthNodeByClass(i, cls)
            if node.GetID() not in ids_before and not node.IsA("vtkMRMLLabelMapVolumeNode") and node not in new:
                new.append(node)
    out = []
    for node in new + [n for n in current if n is not None]:
        if all(node.GetID() != o.GetID() for o in out):
            out.append(node)
    return out[:2]
