"""Bad inputs through the real ``mrhnet`` command (a separate process, as a user runs it): each is
refused with exit code 2 and one line on stderr that names the file, before anything is written."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from MRHNetLib.network.catalog import resolve
from MRHNetLib.simulation.phantom import simulate_subject

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def subject_dir(tmp_path_factory) -> Path:
    return simulate_subject("C1", size="small").save(tmp_path_factory.mktemp("refusals") / "brain")


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) with its content."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(args: list[str], workdir: Path, *names: str) -> str:
    """Run ``mrhnet ARGS``; check exit code 2, one stderr line naming ``names``, nothing written under
    ``workdir``. Returns the line."""
    before = tree(workdir)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-m", "MRHNetLib", *map(str, args)], capture_output=True, text=True,
                         cwd=workdir, env=env, timeout=300)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, run.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    for name in names:
        assert name in lines[0], lines[0]
    assert tree(workdir) == before, "a refused command wrote or changed files"
    return lines[0]


def test_five_dimensional_t2w_is_refused(subject_dir, tmp_path):
    img = nib.load(str(subject_dir / "t2w.nii.gz"))
    data = np.asarray(img.dataobj)
    nib.save(nib.Nifti1Image(np.stack([np.stack([data] * 2, -1)] * 2, -1), img.affine), str(tmp_path / "t2w_5d.nii.gz"))
    line = refused(["predict", subject_dir, "--t2w", tmp_path / "t2w_5d.nii.gz", "-m", "af", "--out", tmp_path / "maps"],
                   tmp_path, "t2w_5d.nii.gz", "5D")
    assert "3D volume" in line


def test_output_folder_under_a_regular_file_is_refused_before_any_work(subject_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    refused(["predict", subject_dir, "-m", "af", "--out", tmp_path / "notes.txt" / "maps"], tmp_path,
            str(tmp_path / "notes.txt"), "not a folder")
    refused(["predict", subject_dir, "-m", "af", "--out", tmp_path / "notes.txt"], tmp_path,
            str(tmp_path / "notes.txt"), "must be a folder")


def test_matlab_file_as_model_says_to_import_it(subject_dir, tmp_path):
    from scipy.io import savemat

    savemat(tmp_path / "net.mat", {"W": np.ones((3, 3), np.float32)})
    line = refused(["predict", subject_dir, "-m", tmp_path / "net.mat", "--out", tmp_path / "maps"], tmp_path,
                   "net.mat", "mrhnet import-matlab")
    assert "JSON" not in line


def test_weights_missing_a_tensor_name_it(subject_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "broken.mrhnet"
    shutil.copytree(resolve("af"), model)
    weights = model / "weights.safetensors"
    state = load_file(str(weights))
    del state["Conv4.weight"]
    save_file(state, str(weights))
    meta = json.loads((model / "model.json").read_text())
    meta["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()  # a consistent, incomplete model
    (model / "model.json").write_text(json.dumps(meta, indent=1))
    refused(["predict", subject_dir, "-m", model, "--out", tmp_path / "maps"], tmp_path,
            "weights.safetensors", "'Conv4.weight'", "missing")


def test_import_matlab_into_a_folder_under_a_regular_file_is_refused(shared_data, tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    net = shared_data / "networks" / "net_5layerV3Res_HRJG_allMRIs_Fluo.mat"
    refused(["import-matlab", net, "--out", tmp_path / "notes.txt" / "af.mrhnet"], tmp_path,
            str(tmp_path / "notes.txt"), "not a folder")
