"""Installing the module's requirements next to Slicer 5.10's packages (numpy 2.0.2, scipy 1.13.1 pinned,
as the module's constraints file pins them) upgrades nothing that is there, and pulls no torch. Asks the
package registry (Testing/check_slicer_requirements.py); skipped, saying so, when it cannot be reached."""
from __future__ import annotations

import importlib.util
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_checker():
    spec = importlib.util.spec_from_file_location("check_slicer_requirements", ROOT / "Testing" / "check_slicer_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def registry_reachable() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=10) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.network
def test_module_requirements_keep_slicer_510_packages():
    if not registry_reachable():
        pytest.skip("the package registry (https://pypi.org) cannot be reached: the dry run needs it")
    checker = load_checker()
    try:
        problems, plan = checker.check("5.10")
    except RuntimeError as exc:
        if "No matching distribution" in str(exc) or "ResolutionImpossible" in str(exc):
            raise AssertionError(f"no set of packages fits Slicer 5.10's numpy/scipy: {exc}") from None
        pytest.skip(f"pip could not ask the registry: {exc}")
    assert not problems, problems
    names = {checker._normalize(n): v for n, v in plan}
    assert names["numpy"] == "2.0.2" and names["scipy"] == "1.13.1"
    assert {"nibabel", "pynrrd", "dipy", "safetensors"} <= set(names)
    assert not {"torch", "scikit-image", "scikit-learn", "matplotlib", "tifffile"} & set(names)
