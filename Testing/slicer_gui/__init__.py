"""A GUI harness that runs the extension's module Widgets for real, without the Slicer application.

See README.md in this folder: Slicer 5.10's own Python framework, real MRML (slicer-core) and real Qt (PyQt5,
offscreen) presented with PythonQt's semantics. Fixtures are in ``fixtures.py``.
"""
