"""The wheel installs the whole tool: it is built from the sources, installed into a fresh virtual
environment outside the checkout (``--system-site-packages``, so torch and the other dependencies come
from this machine and nothing is downloaded; the wheel itself with ``--no-deps``), and ``mrhnet models``,
a small phantom and a prediction run there, from a folder outside the checkout, on the venv's files."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from MRHNetLib.resources import RUNTIME_FOLDERS

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "MRHNetLib"


def engine_resource_folders() -> set[str]:
    """The Resources/ sub-folders the engine's code asks for: ``resource("x", ...)`` and
    ``resources_dir() / "x"``."""
    used = set()
    for path in ENGINE.rglob("*.py"):
        text = path.read_text()
        used |= set(re.findall(r"\bresource\(\s*[\"'](\w+)[\"']", text))
        used |= set(re.findall(r"resources_dir\(\)\s*/\s*[\"'](\w+)[\"']", text))
    return used


def test_runtime_folders_cover_what_the_engine_reads():
    used = engine_resource_folders()
    assert {"anatomy", "networks", "protocols"} <= used, used
    assert used <= set(RUNTIME_FOLDERS), f"engine reads {used - set(RUNTIME_FOLDERS)}, not in RUNTIME_FOLDERS"
    setup_text = (ROOT / "setup.py").read_text()
    for folder in RUNTIME_FOLDERS:
        assert f'"{folder}/' in setup_text, f"setup.py does not ship Resources/{folder}"


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user of the installed wheel: no PYTHONPATH or MRHNET_RESOURCES pointing back
    at the checkout, no user site-packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MRHNET_RESOURCES", "PYTHONHOME")}
    env.update(PYTHONNOUSERSITE="1", **extra)
    return env


def _run(cmd: list, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """(wheel, venv folder, work folder), all outside the checkout."""
    base = tmp_path_factory.mktemp("wheel")
    assert ROOT not in base.parents
    # build from a copy of what a clone holds, so the checkout gets no build/ or *.egg-info
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ENGINE, src / "MRHNetLib", ignore=junk)
    shutil.copytree(ROOT / "Resources", src / "Resources", ignore=shutil.ignore_patterns("figures", "__pycache__"))
    try:  # the build backend of this machine (no download); otherwise pip fetches setuptools
        import setuptools

        isolation = [] if int(setuptools.__version__.split(".")[0]) >= 77 else None
    except ImportError:
        isolation = None
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
             "-w", base / "dist", src]
    _run(build + (["--no-build-isolation"] if isolation is not None else []), cwd=base, timeout=180)
    wheel = next((base / "dist").glob("mrhnet-*.whl"))
    env_dir = base / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    # the machine's pip (visible through the system site-packages) installs into the venv
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
          "--disable-pip-version-check", "-q", wheel], cwd=base, timeout=120)
    work = base / "work"
    work.mkdir()
    return wheel, env_dir, work


def test_wheel_holds_the_whole_tool(wheel_venv):
    wheel, _, _ = wheel_venv
    names = set(zipfile.ZipFile(wheel).namelist())
    engine = {p.relative_to(ROOT).as_posix() for p in ENGINE.rglob("*.py") if "__pycache__" not in p.parts}
    assert "MRHNetLib/cli/__init__.py" in names and "MRHNetLib/cli/predict.py" in names
    assert not engine - names, f"engine files missing from the wheel: {sorted(engine - names)}"
    res = ROOT / "Resources"
    runtime = ([p for p in (res / "anatomy").iterdir()] + list((res / "networks").glob("*/*.mrhnet/*"))
               + list((res / "protocols").rglob("*")))
    shipped = {"MRHNetLib/Resources/" + p.relative_to(res).as_posix() for p in runtime if p.is_file()}
    assert any(n.endswith("original.json") for n in shipped)
    assert any("/networks/original/" in n and n.endswith("weights.safetensors") for n in shipped)
    assert any("/networks/demo/" in n and n.endswith("weights.safetensors") for n in shipped)
    assert any("/original_method_files/" in n for n in shipped)
    assert not shipped - names, f"runtime resources missing from the wheel: {sorted(shipped - names)}"
    assert not any("/figures/" in n for n in names)  # README images are not needed at run time
    print(f"wheel {wheel.name}: {wheel.stat().st_size / 1e6:.1f} MB, {len(names)} files")


def test_installed_wheel_runs_the_tool_from_the_venv(wheel_venv):
    _, env_dir, work = wheel_venv
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python, mrhnet = bindir / "python", bindir / "mrhnet"
    assert mrhnet.exists(), "the wheel installed no mrhnet command"
    # the package, its data and the shipped models all resolve inside the venv
    probe = _run([python, "-c", "import json, MRHNetLib, shutil; "
                  "from MRHNetLib.resources import resources_dir, resource; "
                  "from MRHNetLib.network.catalog import resolve; "
                  "print(json.dumps([MRHNetLib.__file__, str(resources_dir()), str(resolve('af')), "
                  "str(resolve('af-original-4blocks')), str(resource('anatomy', 'nissl.nii.gz')), "
                  "str(resource('protocols', 'original.json')), "
                  "str(resource('protocols', 'original_method_files'))]))"], cwd=work)
    paths = [Path(p).resolve() for p in json.loads(probe.stdout.strip().splitlines()[-1])]
    for p in paths:
        assert env_dir.resolve() in p.parents, f"{p} is not inside the venv"
        assert ROOT not in p.parents, f"{p} comes from the checkout"
    assert paths[1].parts[-2:] == ("MRHNetLib", "Resources")

    listing = _run([mrhnet, "models"], cwd=work).stdout
    assert "af" in listing and "original" in listing
    _run([mrhnet, "phantom", work / "data", "--brains", "C1", "--size", "small"], cwd=work)
    assert (work / "data" / "C1" / "t2w.nii.gz").is_file()
    out = _run([mrhnet, "predict", "data/C1", "-m", "af", "--out", "maps"], cwd=work).stdout
    assert "maps/af.nii.gz" in out.replace(os.sep, "/")
    import nibabel as nib
    import numpy as np

    af = np.asarray(nib.load(str(work / "maps" / "af.nii.gz")).dataobj)
    assert af.shape == nib.load(str(work / "data" / "C1" / "t2w.nii.gz")).shape[:3] and np.isfinite(af).all()
    assert (af > 0).mean() > 0.05
