"""CrossModalRegLib: the Qt-free core of the CrossModalReg 3D Slicer extension.

Conventions used everywhere in this package (see ``geometry`` for the details):

* SimpleITK images and transforms are in **LPS** millimetres (the ITK / file convention).
  MRML nodes are in **RAS** millimetres (the Slicer convention). Conversion happens only in
  ``geometry`` and ``mrml``.
* A registration result is ``transform_fixed_to_moving_lps``: a SimpleITK transform that maps a point
  of the FIXED image's physical space to the corresponding point of the MOVING image's physical space
  (the ITK resampling direction). In Slicer it becomes a transform node whose *transform from parent* is
  that mapping in RAS; placing the MOVING volume under that node shows it aligned with the fixed one.

Sub-packages never import ``qt``, ``ctk`` or ``slicer.ScriptedLoadableModule``. Modules that import
``slicer`` (``mrml``, ``headless``, ``overlay``, ``scene_io``) need only the Qt-free slicer-core.
"""

__version__ = "0.1.0"

from .errors import CrossModalRegError, RegistrationCancelled, RegistrationFailed  # noqa: E402

__all__ = ["__version__", "CrossModalRegError", "RegistrationCancelled", "RegistrationFailed"]
