"""A headless Slicer application object (MRML scene + module logics) for the command line and the tests.

Inside Slicer the application already exists and none of this is used. Headless, the application logic must
outlive every module logic and node that uses it (otherwise adding a markups node segfaults), so one
``HeadlessSlicer`` object owns them all; keep it alive for as long as its scene is used.
"""

from __future__ import annotations

import slicer


class HeadlessSlicer:
    """Owns a ``vtkMRMLScene``, a ``vtkSlicerApplicationLogic`` and the module logics this package uses.

    Sets ``slicer.mrmlScene`` so that ``slicer.util`` helpers work. Use as a context manager or call
    :meth:`close`.
    """

    def __init__(self, set_global_scene: bool = True):
        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        color_logic = self.app_logic.GetColorLogic()
        color_logic.SetMRMLScene(self.scene)
        color_logic.AddDefaultColorNodes()
        self.app_logic.SetModuleLogic("Colors", color_logic)
        self.volumes_logic = slicer.vtkSlicerVolumesLogic()
        self.markups_logic = slicer.vtkSlicerMarkupsLogic()
        self.transform_logic = slicer.vtkSlicerTransformLogic()
        self.segmentations_logic = slicer.vtkSlicerSegmentationsModuleLogic()
        self.tables_logic = slicer.vtkSlicerTablesLogic()
        self._logics = {
            "Volumes": self.volumes_logic,
            "Markups": self.markups_logic,
            "Transforms": self.transform_logic,
            "Segmentations": self.segmentations_logic,
            "Tables": self.tables_logic,
        }
        for name, logic in self._logics.items():
            logic.SetMRMLScene(self.scene)
            logic.SetMRMLApplicationLogic(self.app_logic)
            self.app_logic.SetModuleLogic(name, logic)
        self._previous_scene = getattr(slicer, "mrmlScene", None)
        if set_global_scene:
            slicer.mrmlScene = self.scene

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        """Clear the scene, then release the logics before the application logic."""
        if self.scene is None:
            return
        self.scene.Clear(True)
        if getattr(slicer, "mrmlScene", None) is self.scene:
            slicer.mrmlScene = self._previous_scene
        for name, logic in self._logics.items():
            # The segmentations logic asks for the scene's subject hierarchy when its scene is unset and logs a
            # warning ("GetSubjectHierarchyNode: Invalid scene given") on every command; released with its
            # reference dropped, it leaves the (cleared) scene without a word.
            if name != "Segmentations":
                logic.SetMRMLScene(None)
            self.app_logic.SetModuleLogic(name, None)
        self._logics.clear()
        self.volumes_logic = self.markups_logic = self.transform_logic = None
        self.segmentations_logic = self.tables_logic = None
        self.scene = None
