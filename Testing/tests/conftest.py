"""Shared test fixtures. Tests run on CPU with small volumes; nothing here needs a GPU."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data" / "mrhnet-seed"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The original tool's real data (read-only, present on developer machines and CI)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("shared MRH-Net seed data not present")
    return SHARED_DATA


@pytest.fixture
def scene():
    """A real MRML scene (slicer-core) with the three slice views of an application layout."""
    slicer = pytest.importorskip("slicer")
    s = slicer.vtkMRMLScene()
    slicer.mrmlScene = s  # slicer.util helpers use it
    for _ in range(3):
        s.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    return s


@pytest.fixture(scope="module")
def phantom():
    """The small simulated brain C1 (24 x 24 x 12, every input and histology)."""
    from MRHNetLib.simulation.phantom import simulate_subject

    return simulate_subject("C1", seed=0, size="small")
