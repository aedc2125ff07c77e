"""Results tables with units and descriptions, written the way Slicer's SegmentStatistics does.

A ``Column`` declares a key, a title, a unit and a description. The same declaration builds a
``vtkMRMLTableNode`` (one ``StartModify``/``EndModify``) and a TSV file (plus Slicer's ``.schema.tsv``).
A value that could not be computed is ``None`` (or NaN) and is written as an empty cell with the reason in a
``note`` column, never as 0.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    unit: str = ""
    description: str = ""
    type: str = "double"  # "double", "int", "string", "bool"
    digits: int | None = None  # significant digits written to TSV (None: exact, repr)


def _cell(value, ctype, digits=None):
    if value is None:
        return ""
    if ctype == "double":
        try:
            v = float(value)
        except (TypeError, ValueError):
            return ""
        if math.isnan(v):
            return ""
        return f"{v:.{digits}g}" if digits else repr(v)
    if ctype == "int" and isinstance(value, float) and value.is_integer():
        return str(int(value))  # a count read back from JSON as 10.0 is written 10
    if ctype == "bool":
        return "true" if value else "false"
    return str(value)


def write_tsv(path: str, columns: list[Column], rows: list[dict], *, write_schema: bool = True) -> str:
    """Write rows as TSV (atomically: temp file then rename) with a Slicer-style ``.schema.tsv`` beside it.

    The schema file lists each column's type, unit and description, so Slicer restores them on load.
    """
    tmp = path + ".partial"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow([c.key for c in columns])
        for row in rows:
            w.writerow([_cell(row.get(c.key), c.type, c.digits) for c in columns])
    os.replace(tmp, path)
    if write_schema:
        base = path[:-4] if path.endswith(".tsv") else path
        schema = base + ".schema.tsv"
        tmp = schema + ".partial"
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["columnName", "type", "title", "unitLabel", "longName", "description"])
            for c in columns:
                slicer_type = {"double": "double", "int": "int", "string": "string", "bool": "bit"}[c.type]
                w.writerow([c.key, slicer_type, c.title, c.unit, c.title, c.description])
        os.replace(tmp, schema)
    return path


def table_node_from_rows(scene, name: str, columns: list[Column], rows: list[dict], *, node=None):
    """Create (or overwrite ``node``) a ``vtkMRMLTableNode`` with typed columns, titles, units and descriptions."""
    import vtk

    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    was = node.StartModify()
    try:
        table = node.GetTable()
        while table.GetNumberOfColumns() > 0:
            table.RemoveColumn(table.GetNumberOfColumns() - 1)
        for c in columns:
            if c.type == "double":
                arr = vtk.vtkDoubleArray()
            elif c.type == "int":
                arr = vtk.vtkIntArray()
            elif c.type == "bool":
                arr = vtk.vtkBitArray()
            else:
                arr = vtk.vtkStringArray()
            arr.SetName(c.key)
            for row in rows:
                v = row.get(c.key)
                if c.type == "double":
                    arr.InsertNextValue(float("nan") if v is None else float(v))
                elif c.type == "int":
                    arr.InsertNextValue(0 if v is None else int(v))
                elif c.type == "bool":
                    arr.InsertNextValue(1 if v else 0)
                else:
                    arr.InsertNextValue("" if v is None else str(v))
            table.AddColumn(arr)
        for c in columns:
            node.SetColumnTitle(c.key, c.title)
            node.SetColumnUnitLabel(c.key, c.unit)
            node.SetColumnDescription(c.key, c.description)
            _set_long_name_quietly(node, c.key, c.title)
        node.SetUseColumnTitleAsColumnHeader(True)
        node.Modified()
    finally:
        node.EndModify(was)
    return node


def _set_long_name_quietly(node, key: str, title: str) -> None:
    """Slicer 5.10's table view shows a column's long name; slicer-core 5.13 made it an alias of the title that logs
    a deprecation warning on every call (which the command line would print): set it with VTK warnings off."""
    import vtk

    was = vtk.vtkObject.GetGlobalWarningDisplay()
    vtk.vtkObject.GlobalWarningDisplayOff()
    try:
        node.SetColumnLongName(key, title)
    finally:
        vtk.vtkObject.SetGlobalWarningDisplay(was)
