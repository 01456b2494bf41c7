"""The command line as a user meets it: the shipped model list, a subject given file by file to
training, and the demo end to end on the small simulated brain."""
from __future__ import annotations

import json

import numpy as np
import pytest

from MRHNetLib.cli import main
from MRHNetLib.data.io import read_volume
from MRHNetLib.network.modelfile import read_info
from MRHNetLib.simulation.phantom import simulate_subject


def test_models_lists_the_shipped_networks(capsys):
    assert main(["models", "--brief"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    kinds = {row[0]: (row[1], row[2]) for row in rows}
    assert kinds["af"] == ("demo", "AF") and kinds["nf"] == ("demo", "NF") and kinds["mbp"] == ("demo", "MBP")
    assert kinds["af-original-4blocks"] == ("original", "AF") and kinds["af-original-9blocks"] == ("original", "AF")


def test_train_takes_a_subject_file_by_file(tmp_path, capsys):
    folder = simulate_subject("C1", seed=1, size="small").save(tmp_path / "subj")
    files = ["--t2w", folder / "t2w.nii.gz", "--mt-on", folder / "mt_on.nii.gz", "--mt-off", folder / "mt_off.nii.gz",
             "--dwi-b2000", folder / "dwi_b2000.nii.gz", "--dwi-b2000-bval", folder / "dwi_b2000.bval",
             "--dwi-b2000-bvec", folder / "dwi_b2000.bvec", "--dwi-b5000", folder / "dwi_b5000.nii.gz",
             "--mask", folder / "mask.nii.gz", "--af", folder / "af.nii.gz"]
    out = tmp_path / "af.mrhnet"
    args = ["train", *map(str, files), "--target", "af", "--depth", "1", "--epochs", "1", "--threads", "1",
            "--stride0", "2", "--stride-fine", "1", "--val-samples", "20", "--out", str(out)]
    assert main(args) == 0
    info = read_info(out)
    assert info.target == "af" and info.depth == 1 and info.protocol.n_channels == 67
    assert info.training["subjects"] == ["subject"]  # one subject, named by load_subject's default
    # without any subject the command says what is missing and writes nothing
    assert main(["train", "--target", "af", "--out", str(tmp_path / "none.mrhnet")]) == 2
    assert "give training subject folders (or files)" in capsys.readouterr().err
    assert not (tmp_path / "none.mrhnet").exists()


def test_demo_runs_end_to_end_on_the_small_brain(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--size", "small", "--no-perturbation", "--device", "cpu", "--out", str(out)]) == 0
    t2w = read_volume(out / "subject" / "t2w.nii.gz")
    mask = read_volume(out / "subject" / "mask.nii.gz").data > 0
    for target in ("af", "nf", "mbp"):
        m = read_volume(out / "maps" / f"{target}.nii.gz")
        assert m.shape3 == t2w.shape3 and np.allclose(m.affine, t2w.affine)
        assert np.all(m.data[~mask] == 0) and np.std(m.data[mask]) > 0
    report = json.loads((out / "report" / "report.json").read_text())
    assert set(report["targets"]) == {"af", "nf", "mbp"}
    for entry in report["targets"].values():
        assert -1 <= entry["network"]["pearson_r"] <= 1 and 0 <= entry["network"]["auc"] <= 1
        assert {"FA", "MTR", "T2w"} <= set(entry["markers"])
    assert (out / "overlays.png").stat().st_size > 1000 and (out / "report" / "report.png").exists()
    printed = capsys.readouterr().out
    assert "MRH-NF" in printed and "best single marker" in printed


def test_demo_without_shipped_networks_says_how_to_proceed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MRHNET_RESOURCES", str(tmp_path / "empty-resources"))
    (tmp_path / "empty-resources" / "anatomy").mkdir(parents=True)
    assert main(["demo", "--size", "small", "--out", str(tmp_path / "demo")]) == 2
    assert "--train" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()  # checked before anything is simulated or written


@pytest.mark.parametrize("argv", [["predict", "--help"], ["train", "--help"], ["app", "--help"]])
def test_help_works_without_heavy_imports(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0 and "usage: mrhnet" in capsys.readouterr().out
