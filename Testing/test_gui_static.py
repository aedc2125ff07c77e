"""Static checks of the Slicer module layer (it only runs inside Slicer, so here it is checked by reading it).

For each of the three modules: the file defines the classes the Slicer loader and template expect; every widget
the code reaches through ``self.ui.<name>`` exists in the module's ``.ui`` file; every widget bound to the parameter
node (dynamic property ``SlicerParameterName``) names a parameter that the ``<Name>ParameterNode`` class declares;
the module imports nothing Qt5-only; and the Logic delegates to the Qt-free package.
"""

from __future__ import annotations

import ast
import pathlib
import re
import xml.etree.ElementTree as ET

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULES = ["CrossModalReg", "CrossModalRegLandmarks", "CrossModalRegValidation"]


def _module_tree(name):
    path = ROOT / name / f"{name}.py"
    return ast.parse(path.read_text(), filename=str(path)), path.read_text()


def _ui_widgets(name):
    tree = ET.parse(ROOT / name / "Resources" / "UI" / f"{name}.ui")
    widgets, bound = {}, {}
    for w in tree.iter("widget"):
        obj = w.get("name")
        widgets[obj] = w.get("class")
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[obj] = prop.find("string").text
    # Layout items and actions can also be addressed by name.
    for tag in ("layout", "action"):
        for item in tree.iter(tag):
            if item.get("name"):
                widgets.setdefault(item.get("name"), item.get("class", tag))
    return widgets, bound


def _classes(tree):
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def _parameter_names(cls: ast.ClassDef):
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def _ui_attribute_uses(tree):
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            if node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self":
                names.add(node.attr)
    return names


@pytest.mark.parametrize("name", MODULES)
def test_module_has_the_template_classes(name):
    tree, _ = _module_tree(name)
    classes = _classes(tree)
    for suffix in ("", "ParameterNode", "Widget", "Logic", "Test"):
        assert f"{name}{suffix}" in classes, f"{name}.py must define class {name}{suffix}"


@pytest.mark.parametrize("name", MODULES)
def test_every_ui_widget_the_code_uses_exists_in_the_ui_file(name):
    tree, _ = _module_tree(name)
    widgets, _ = _ui_widgets(name)
    missing = sorted(_ui_attribute_uses(tree) - set(widgets))
    assert not missing, f"{name}.py uses self.ui.{missing} which {name}.ui does not define"


@pytest.mark.parametrize("name", MODULES)
def test_every_bound_widget_names_a_declared_parameter(name):
    tree, _ = _module_tree(name)
    params = _parameter_names(_classes(tree)[f"{name}ParameterNode"])
    _, bound = _ui_widgets(name)
    assert bound, f"{name}.ui binds no widget to the parameter node"
    unknown = {w: p for w, p in bound.items() if p not in params}
    assert not unknown, f"{name}.ui binds widgets to parameters that {name}ParameterNode lacks: {unknown}"


@pytest.mark.parametrize("name", MODULES)
def test_module_uses_nothing_qt5_only_and_lib_is_qt_free(name):
    _, text = _module_tree(name)
    assert "QRegExp" not in text
    lib = ROOT / "CrossModalReg" / "CrossModalRegLib"
    for py in lib.rglob("*.py"):
        src = py.read_text()
        assert not re.search(r"^\s*(import|from)\s+(qt|ctk|slicer\.ScriptedLoadableModule)\b", src, re.M), py


@pytest.mark.parametrize("name", MODULES)
def test_module_cmake_lists_the_module_and_its_resources(name):
    cmake = (ROOT / name / "CMakeLists.txt").read_text()
    assert f"set(MODULE_NAME {name})" in cmake
    assert "WITH_GENERIC_TESTS" in cmake
    assert f"Resources/UI/{name}.ui" in cmake
    assert (ROOT / name / "Resources" / "Icons" / f"{name}.png").is_file()
    top = (ROOT / "CMakeLists.txt").read_text()
    assert f"add_subdirectory({name})" in top


_LIST_FILES = """cmake_minimum_required(VERSION 3.16)
project(ListModuleFiles LANGUAGES NONE)
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(M "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  foreach(f ${M_SCRIPTS} ${M_RESOURCES})
    message(STATUS "FILE ${f}")
  endforeach()
endfunction()
set(BUILD_TESTING OFF)
add_subdirectory(${MODULE_DIR} module)
"""


def _files_cmake_installs(name, tmp_path):
    """What the module's CMakeLists.txt hands to slicerMacroBuildScriptedModule, as real CMake evaluates it (its
    globs expanded): the Slicer build installs exactly these files."""
    import os
    import shutil
    import subprocess
    import sys

    # the test extra installs PyPI's cmake into the venv (next to its python); a system cmake also does
    cmake = shutil.which("cmake", path=os.path.dirname(sys.executable)) or shutil.which("cmake")
    if cmake is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI=true but cmake is missing: the Slicer build's file list cannot be checked")
        pytest.skip("cmake not found (the test extra installs it: pip install -e '.[test]'): the Slicer build's file "
                    "list is not checked")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "CMakeLists.txt").write_text(_LIST_FILES)
    run = subprocess.run([cmake, "-S", str(tmp_path / "src"), "-B", str(tmp_path / "build"),
                          f"-DMODULE_DIR={ROOT / name}"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    return {line.split("FILE ", 1)[1] for line in run.stdout.splitlines() if line.startswith("-- FILE ")}


@pytest.mark.parametrize("name", MODULES)
def test_the_slicer_build_installs_every_package_file_and_nothing_missing(name, tmp_path):
    """The Slicer build copies only what CMake lists: a package file missing there breaks the installed module
    (a glob that misses a folder, a resource list left out of RESOURCES), a listed file that does not exist
    breaks the build."""
    listed = _files_cmake_installs(name, tmp_path)
    module = ROOT / name
    assert {f for f in listed if not (module / f).is_file()} == set()
    want = {f"{name}.py", f"Resources/Icons/{name}.png", f"Resources/UI/{name}.ui"}
    if name == "CrossModalReg":  # the Qt-free package travels with this module: every file of it
        lib = module / "CrossModalRegLib"
        want |= {f.relative_to(module).as_posix() for f in lib.rglob("*")
                 if f.is_file() and "__pycache__" not in f.parts}
    assert want - listed == set(), f"not installed by {name}/CMakeLists.txt"
    assert listed - want == set(), f"installed by {name}/CMakeLists.txt but not part of the module"
