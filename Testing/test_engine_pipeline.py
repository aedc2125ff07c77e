"""The engine is a short pipeline of named steps (issue #10): no function in ``engine.py`` over 80 lines, and the
public ``register`` keeps the signature the command line, the Slicer modules, batch and the benchmarks call."""

from __future__ import annotations

import ast
import inspect
import pathlib

from CrossModalRegLib import engine

MAX_LINES = 80


def test_no_function_in_the_engine_is_over_80_lines():
    tree = ast.parse(pathlib.Path(engine.__file__).read_text())
    lengths = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
               if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert lengths["register"] <= MAX_LINES
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}


def test_register_keeps_its_public_signature():
    params = inspect.signature(engine.register).parameters
    assert list(params) == [
        "fixed", "moving", "preset", "fixed_mask", "moving_mask", "fixed_landmarks", "moving_landmarks",
        "initial_transform_fixed_to_moving", "initialization_method", "rotation_search", "orientation_search",
        "overrides", "seed", "progress", "cancel", "strict", "threads"]
    assert [p.name for p in params.values() if p.kind is p.POSITIONAL_OR_KEYWORD] == ["fixed", "moving"]
    defaults = {k: p.default for k, p in params.items() if p.default is not p.empty}
    assert defaults == {"preset": "multimodal-rigid", "fixed_mask": None, "moving_mask": None, "fixed_landmarks": None,
                        "moving_landmarks": None, "initial_transform_fixed_to_moving": None,
                        "initialization_method": None, "rotation_search": None, "orientation_search": None,
                        "overrides": None, "seed": engine.DEFAULT_SEED, "progress": None, "cancel": None,
                        "strict": True, "threads": 1}
