"""What the slice views show, set through MRML only (no Qt): the image being annotated, and jumping to a point.

Slicer's slice views draw whatever their ``vtkMRMLSliceCompositeNode`` names as background and foreground, and
centre on what their ``vtkMRMLSliceNode`` says; setting those nodes is exactly what Slicer's own
``slicer.util.setSliceViewerLayers`` and the Markups module's "jump to point" do, so the same code works in
Slicer, in the GUI test harness and in the headless slicer-core (where a test creates the slice nodes itself).
"""

from __future__ import annotations

from .errors import CrossModalRegError


def slice_composite_nodes(scene) -> list:
    """Every slice composite node of ``scene`` (one per slice view)."""
    n = scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")
    return [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode") for i in range(n)]


def slice_nodes(scene) -> list:
    n = scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")
    return [scene.GetNthNodeByClass(i, "vtkMRMLSliceNode") for i in range(n)]


def show_volume_in_slice_views(scene, volume_node) -> int:
    """Show ``volume_node`` alone in every slice view (background; foreground and label layers cleared).

    Used while annotating an image: the annotator sees the image the next point goes on, not a fusion.
    Returns the number of views changed (0 when the scene has no slice view, e.g. headless).
    """
    if volume_node is None:
        raise CrossModalRegError("select the volume to show (fixed or moving) first")
    if volume_node.GetScene() is not scene:
        raise CrossModalRegError(f"volume '{volume_node.GetName()}' is not in this scene")
    composites = slice_composite_nodes(scene)
    for composite in composites:
        was = composite.StartModify()
        composite.SetBackgroundVolumeID(volume_node.GetID())
        composite.SetForegroundVolumeID(None)
        composite.SetForegroundOpacity(0.0)
        composite.EndModify(was)
    return len(composites)


def jump_slices_to_point(scene, point_ras, *, centered: bool = True) -> int:
    """Move every slice view to the RAS point ``point_ras`` (world coordinates), as Markups' "jump to" does.

    Uses ``vtkMRMLSliceNode.JumpAllSlices`` (Slicer's own implementation); ``centered`` centres the views on the
    point, otherwise only the slice offset changes. Returns the number of slice views in the scene.
    """
    import slicer

    x, y, z = (float(v) for v in point_ras)
    mode = slicer.vtkMRMLSliceNode.CenteredJumpSlice if centered else slicer.vtkMRMLSliceNode.OffsetJumpSlice
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, x, y, z, mode)
    return len(slice_nodes(scene))


PLOT_LAYOUTS = ("SlicerLayoutConventionalPlotView", "SlicerLayoutFourUpPlotView", "SlicerLayoutFourUpPlotTableView",
                "SlicerLayoutOneUpPlotView", "SlicerLayoutThreeOverThreePlotView")


def show_results_in_layout(scene, app_logic, *, table=None, chart=None) -> None:
    """Show ``table`` in the table view and ``chart`` in the plot view, switching to a layout with a plot view
    (four-up with plot) when the current one has none: what the Plots module's ``ShowChartInLayout`` does, through
    the layout, selection and plot view nodes only.
    """
    import slicer

    selection = app_logic.GetSelectionNode()
    if chart is not None:
        layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
        if layout is not None:
            plot_layouts = {getattr(slicer.vtkMRMLLayoutNode, name) for name in PLOT_LAYOUTS}
            if layout.GetViewArrangement() not in plot_layouts:
                layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView)
        selection.SetActivePlotChartID(chart.GetID())
        app_logic.PropagatePlotChartSelection()
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLPlotViewNode")):
            scene.GetNthNodeByClass(i, "vtkMRMLPlotViewNode").SetPlotChartNodeID(chart.GetID())
    if table is not None:
        selection.SetActiveTableID(table.GetID())
        app_logic.PropagateTableSelection()
