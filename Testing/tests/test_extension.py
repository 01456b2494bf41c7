"""Extension packaging and the module's GUI description, checked without Slicer: the .ui file, the
CMake files, the Extensions Index entry, the module file (compiled, thin, importing only lazily)."""
from __future__ import annotations

import ast
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "MRHNet"
UI = MODULE / "Resources" / "UI" / "MRHNet.ui"
SOURCE = (MODULE / "MRHNet.py").read_text()
CATEGORIES = {"Image Synthesis", "Segmentation", "Neuroimaging", "Utilities", "Diffusion", "Quantification"}


def cmake_set(text: str, name: str) -> str:
    m = re.search(r"set\(\s*" + re.escape(name) + r"\s+(.*?)\)\s*$", text, re.S | re.M)
    assert m, f"{name} not set"
    return m.group(1).strip()


def cmake_list(text: str, name: str) -> list[str]:
    return [item for item in cmake_set(text, name).split() if not item.startswith("#")]


def ui_widgets() -> dict[str, ET.Element]:
    tree = ET.parse(UI)  # raises on invalid XML
    return {w.get("name"): w for w in tree.iter("widget")}


def test_ui_is_valid_and_names_every_widget_the_module_uses():
    widgets = ui_widgets()
    used = set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", SOURCE))
    assert used, "the module uses no widgets?"
    missing = sorted(used - set(widgets))
    assert not missing, f"MRHNet.py uses widgets missing from MRHNet.ui: {missing}"
    assert ET.parse(UI).getroot().find("class").text == "MRHNet"


def test_ui_parameter_names_match_the_parameter_node():
    """Every widget bound with SlicerParameterName names a field of MRHNetParameterNode, and every
    node selector's scene is connected."""
    tree = ast.parse(SOURCE)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MRHNetParameterNode")
    fields = {s.target.id for s in cls.body if isinstance(s, ast.AnnAssign)}
    bound = {}
    for name, w in ui_widgets().items():
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                bound[name] = p.find("string").text
    assert bound and set(bound.values()) <= fields, set(bound.values()) - fields
    assert len(set(bound.values())) == len(bound), "two widgets bound to one parameter"
    root = ET.parse(UI).getroot()
    connected = {c.find("receiver").text for c in root.iter("connection")
                 if c.find("slot").text == "setMRMLScene(vtkMRMLScene*)"}
    combos = {n for n, w in ui_widgets().items() if w.get("class") == "qMRMLNodeComboBox"}
    assert combos and combos <= connected


def test_ui_loads_with_qt_if_available():
    QtUiTools = pytest.importorskip("PySide6.QtUiTools")  # not installed here: Qt is not pulled in for this
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    assert QtUiTools.QUiLoader().load(str(UI)) is not None and app


def test_module_file_compiles_and_stays_thin():
    py_compile.compile(str(MODULE / "MRHNet.py"), doraise=True)
    assert len(SOURCE.splitlines()) < 400
    tree = ast.parse(SOURCE)
    top_imports = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names} | \
        {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    allowed = {"logging", "os", "pathlib", "sys", "time", "typing", "qt", "ctk", "vtk", "slicer", "MRHNetLib"}
    assert top_imports <= allowed, top_imports  # no numerics in the module: numpy, torch ... stay in the engine
    # what the module imports of the engine when Slicer starts must not pull in torch or numpy (not installed yet)
    engine = sorted({n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module.startswith("MRHNetLib")})
    probe = "import sys; " + "; ".join(f"import {m}" for m in engine) + \
        "; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout
    classes = {n.name: [b.id if isinstance(b, ast.Name) else b.attr for b in n.bases]
               for n in tree.body if isinstance(n, ast.ClassDef)}
    assert classes["MRHNet"] == ["ScriptedLoadableModule"]
    assert "ScriptedLoadableModuleWidget" in classes["MRHNetWidget"]
    assert classes["MRHNetLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["MRHNetTest"] == ["ScriptedLoadableModuleTest"]
    assert "eLife 2022;11:e72331" in SOURCE and "README" in SOURCE


def _last_line(probe: str) -> str:
    """The last line a fresh Python prints running ``probe`` (which must succeed)."""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_listing_and_describing_models_needs_no_torch():
    """Inside Slicer the panel lists the shipped models and shows their description in Slicer's own process,
    where torch may not be installed yet (it comes with the PyTorch extension) and never needs to be loaded:
    only the child process runs networks."""
    pytest.importorskip("slicer")
    probe = ("import sys, slicer; from MRHNetLib.gui.controller import Controller; "
             "c = Controller(slicer.vtkMRMLScene()); "
             "names = [m.name for m in c.catalogue()]; text, problems = c.describe(names); "
             "assert 'af-original-4blocks' in names and not problems and 'depth 4' in text, (names, problems); "
             "print('torch' in sys.modules)")
    assert _last_line(probe) == "False"


def test_module_calls_engine_functions_that_exist():
    """Every ``from MRHNetLib.x import y`` in the module resolves in the engine."""
    import importlib

    for module, names in re.findall(r"from (MRHNetLib[.\w]+) import ([\w, ]+(?: as \w+)?)", SOURCE):
        mod = importlib.import_module(module)
        for name in [n.strip().split(" as ")[0] for n in names.split(",")]:
            if not hasattr(mod, name):  # a sub-module
                importlib.import_module(f"{module}.{name}")


def test_top_level_cmakelists_describes_the_extension():
    text = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"^project\(MRHNet\)", text, re.M)
    assert cmake_set(text, "EXTENSION_CATEGORY").strip('"') in CATEGORIES
    assert cmake_set(text, "EXTENSION_DEPENDS").strip('"') == "PyTorch"
    for name in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION"):
        assert len(cmake_set(text, name).strip('"')) > 10
    assert cmake_set(text, "EXTENSION_ICONURL").strip('"').endswith(".png")
    shots = cmake_set(text, "EXTENSION_SCREENSHOTURLS").strip('"').split()
    assert shots and all(s.endswith((".png", ".jpg", ".jpeg", ".gif")) for s in shots)
    for shot in shots:  # the screenshots are files of this repository
        assert (ROOT / re.search(r"/main/(.*)$", shot).group(1)).is_file(), shot
    icon_path = re.search(r"/main/(.*\.png)", cmake_set(text, "EXTENSION_ICONURL")).group(1)
    assert (ROOT / icon_path).is_file()
    for sub in re.findall(r"add_subdirectory\((\w+)\)", text):
        assert (ROOT / sub / "CMakeLists.txt").is_file()
    for needed in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                   "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert needed in text
    assert any((ROOT / n).is_file() for n in ("LICENSE", "LICENSE.txt", "COPYING"))


def test_module_cmakelists_lists_existing_files_and_packages_the_engine():
    text = (MODULE / "CMakeLists.txt").read_text()
    assert cmake_set(text, "MODULE_NAME") == "MRHNet"
    listed = [f.replace("${MODULE_NAME}", "MRHNet") for f in
              cmake_list(text, "MODULE_PYTHON_SCRIPTS") + cmake_list(text, "MODULE_PYTHON_RESOURCES")]
    assert "MRHNet.py" in listed and "Resources/UI/MRHNet.ui" in listed
    for f in listed:
        assert (MODULE / f).is_file(), f"{f} listed in MRHNet/CMakeLists.txt does not exist"
    assert "slicerMacroBuildScriptedModule(" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    # the engine package and its shipped data are gathered relative to the repository root
    assert "${MRHNET_SOURCE_ROOT}/MRHNetLib/*.py" in text and "${MRHNET_SOURCE_ROOT}/Resources/${folder}/*" in text
    engine = [p for p in (ROOT / "MRHNetLib").rglob("*.py") if "__pycache__" not in p.parts]
    assert (ROOT / "MRHNetLib" / "gui" / "scene.py") in engine and (ROOT / "MRHNetLib" / "network" / "infer.py") in engine
    assert (MODULE / "Testing" / "CMakeLists.txt").is_file() and (MODULE / "Testing" / "Python" / "CMakeLists.txt").is_file()


def test_module_finds_the_engine_beside_or_above_it():
    """The module puts the folder holding MRHNetLib on sys.path: beside MRHNet.py when installed (the
    CMake copies MRHNetLib into the scripted-modules folder), one level up in the source tree."""
    tree = ast.parse(SOURCE)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "ensureLibraryPath")
    body = ast.unparse(fn)
    assert "os.path.dirname(here)" in body and "MRHNetLib" in body
    assert (MODULE.parent / "MRHNetLib" / "__init__.py").is_file()
    from MRHNetLib.resources import resources_dir

    assert resources_dir() == ROOT / "Resources"  # installed layout: <scripted-modules>/Resources


def test_extensions_index_entry():
    entry = json.loads((ROOT / "MRHNet.json").read_text())
    assert entry["$schema"].startswith("https://") and "slicer-extension-catalog-entry-schema" in entry["$schema"]
    assert entry["category"] in CATEGORIES
    assert entry["category"] == cmake_set((ROOT / "CMakeLists.txt").read_text(), "EXTENSION_CATEGORY").strip('"')
    assert entry["scm_url"].startswith("https://github.com/") and entry["scm_url"].rsplit("/", 1)[1].startswith("Slicer")
    assert entry["build_dependencies"] == ["PyTorch"]
    assert set(entry) <= {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision",
                          "scm_url", "scm_type", "dicom_support_rule", "enabled", "tier"}
    # the extension name (file name) is the CMake project name and does not start with "Slicer"
    assert not "MRHNet".startswith("Slicer")


def test_icon_and_requirements():
    from PIL import Image

    icon = Image.open(MODULE / "Resources" / "Icons" / "MRHNet.png")
    assert icon.size == (128, 128)
    reqs = [line.split(">=")[0].strip() for line in (MODULE / "Resources" / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert "torch" not in reqs  # torch comes from the PyTorch extension
    declared = " ".join(__import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    for req in reqs:
        assert req in declared, f"{req} is not an engine dependency"


def engine_resource_folders() -> set[str]:
    """The Resources/ sub-folders the engine's code asks for: ``resource("x", ...)``, ``resources_dir() / "x"``."""
    used = set()
    for path in (ROOT / "MRHNetLib").rglob("*.py"):
        text = path.read_text()
        used |= set(re.findall(r"\bresource\(\s*[\"'](\w+)[\"']", text))
        used |= set(re.findall(r"resources_dir\(\)\s*/\s*[\"'](\w+)[\"']", text))
    return used


def test_cmake_installs_every_resource_folder_the_engine_reads():
    from MRHNetLib.resources import RUNTIME_FOLDERS

    installed = cmake_list((MODULE / "CMakeLists.txt").read_text(), "MRHNET_RUNTIME_RESOURCES")
    used = engine_resource_folders()
    assert {"anatomy", "networks", "protocols"} <= used
    assert used <= set(installed), f"the engine reads Resources/{sorted(used - set(installed))}, not installed by CMake"
    assert set(installed) == set(RUNTIME_FOLDERS)
    for folder in installed:
        assert any(p.is_file() for p in (ROOT / "Resources" / folder).rglob("*")), folder


STUB_SLICER = """cmake_minimum_required(VERSION 3.16)
project(MRHNetInstallCheck NONE)
enable_testing()
set(BUILD_TESTING ON)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.10/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.10/qt-scripted-modules)
macro(slicerMacroBuildScriptedModule)  # as Slicer's: scripts and resources installed beside the module
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  foreach(f IN LISTS MY_SCRIPTS MY_RESOURCES)
    get_filename_component(d ${f} DIRECTORY)
    install(FILES ${CMAKE_CURRENT_SOURCE_DIR}/${f} DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/${d})
  endforeach()
endmacro()
macro(slicer_add_python_unittest)  # as Slicer's: the test is named py_<script name>
  cmake_parse_arguments(MY "" "SCRIPT" "" ${ARGN})
  get_filename_component(test_name ${MY_SCRIPT} NAME_WE)
  add_test(NAME py_${test_name} COMMAND ${CMAKE_COMMAND} -E echo ${test_name})
endmacro()
add_subdirectory(${MRHNET_MODULE_DIR} MRHNet)
"""


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_install_tree_runs_the_engine(tmp_path):
    """MRHNet/CMakeLists.txt built and installed with Slicer's macros stubbed: the install tree holds the
    module, MRHNetLib and every runtime Resources folder; the engine run from it finds its data and the
    module's requirements there; the registered self-test carries the index-build switch."""
    (tmp_path / "CMakeLists.txt").write_text(STUB_SLICER)
    build, prefix = tmp_path / "build", tmp_path / "install"
    run = lambda *cmd: subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True, text=True, timeout=120)
    run("cmake", "-S", str(tmp_path), "-B", str(build), f"-DMRHNET_MODULE_DIR={MODULE}")
    run("cmake", "--build", str(build))
    run("cmake", "--install", str(build), "--prefix", str(prefix))
    tree = prefix / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    from MRHNetLib.resources import RUNTIME_FOLDERS

    assert (tree / "MRHNet.py").is_file() and (tree / "Resources" / "requirements.txt").is_file()
    engine = {p.relative_to(ROOT).as_posix() for p in (ROOT / "MRHNetLib").rglob("*.py") if "__pycache__" not in p.parts}
    assert engine <= {p.relative_to(tree).as_posix() for p in (tree / "MRHNetLib").rglob("*.py")}
    for folder in RUNTIME_FOLDERS:
        shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "Resources" / folder).rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts}
        assert shipped and shipped <= {p.relative_to(tree).as_posix() for p in (tree / "Resources" / folder).rglob("*")}
    assert (tree / "Resources" / "protocols" / "original.json").is_file()
    env = {k: v for k, v in os.environ.items() if k != "MRHNET_RESOURCES"}
    env["PYTHONPATH"] = str(tree)  # as the module's ensureLibraryPath does inside Slicer
    probe = subprocess.run(
        [sys.executable, "-c", "import MRHNetLib, MRHNetLib.resources as r, MRHNetLib.gui.install as i; "
         "from MRHNetLib.network.catalog import resolve; "
         "print(MRHNetLib.__file__, r.resources_dir(), i.requirements_file(), resolve('af-original-4blocks'), "
         "r.resource('protocols', 'original_method_files'), sep='\\n')"],
        cwd=tmp_path, env=env, check=True, capture_output=True, text=True, timeout=60).stdout.split()
    assert all(Path(p).resolve().is_relative_to(tree.resolve()) for p in probe), probe
    tests = json.loads(run("ctest", "--show-only=json-v1", "--test-dir", str(build)).stdout)["tests"]
    selftest = next(t for t in tests if t["name"] == "py_MRHNet")
    env_props = [p["value"] for p in selftest.get("properties", []) if p["name"] == "ENVIRONMENT"]
    assert env_props and "MRHNET_SELFTEST_ENGINE=if-installed" in env_props[0]


def test_checking_inputs_and_saving_maps_needs_no_torch(phantom, tmp_path):
    """The panel checks the chosen inputs against the models whenever a selection changes (first when the
    module opens), and the web app's server saves maps: both in the GUI's own process, so neither may load
    torch (seconds of frozen GUI, or an error where torch is not installed yet)."""
    pytest.importorskip("slicer")
    folder = phantom.save(tmp_path / "mouse")
    probe = ("import sys; from pathlib import Path; from MRHNetLib.gui.controller import Controller, Inputs; "
             "from MRHNetLib.gui.webapp import save_maps; from MRHNetLib.data.io import read_volume; "
             f"folder = Path({str(folder)!r}); "
             "text, problems = Controller(None).summary(Inputs(folder=str(folder)), ['af', 'nf']); "
             "assert 'AF, depth' in text and problems == [], (text, problems); "
             "written = save_maps(folder / 'maps', {'af': read_volume(folder / 'af.nii.gz')}); "
             "assert [p.name for p in written] == ['af.nii.gz'], written; "
             "print('torch' in sys.modules)")
    assert _last_line(probe) == "False"
