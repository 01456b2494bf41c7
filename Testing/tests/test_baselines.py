"""Baselines: ridge and gradient boosting of the centre-voxel inputs, fitted, reported and refused."""
from __future__ import annotations

import json

import numpy as np
import pytest

from MRHNetLib.cli import main
from MRHNetLib.errors import MRHNetError
from MRHNetLib.gui.webapp import evaluation_rows
from MRHNetLib.evaluation.baselines import baseline_maps, fit_predict, sample_rows, subject_baselines, training_rows
from MRHNetLib.evaluation.evaluate import agreement, evaluate
from MRHNetLib.simulation.phantom import simulate_subject


@pytest.fixture(scope="module")
def brains():
    return {"C1": simulate_subject("C1", seed=0, size="small"), "R2": simulate_subject("R2", seed=1, size="small")}


def _linear_target(subject, weights: np.ndarray) -> np.ndarray:
    """A target that is exactly linear in the engine-normalised inputs (inside the mask)."""
    x = subject.inputs(subject.protocol())
    out = np.zeros(subject.shape, dtype=np.float32)
    out[subject.mask] = 40.0 + x[:, subject.mask].T @ weights
    return out


def test_ridge_recovers_a_linear_target(brains):
    train, test = brains["C1"], brains["R2"]
    w = np.random.default_rng(0).normal(0, 20, size=train.protocol().n_channels).astype(np.float32)
    proto = test.protocol()
    x, y = training_rows(train.inputs(proto), train.mask, {"af": _linear_target(train, w)}, 10 ** 6)
    assert x.shape == (train.mask.sum(), 67) and y["af"].shape == (train.mask.sum(),)
    maps = baseline_maps(x, y, test.inputs(proto), test.mask, kinds=("ridge",))
    truth = _linear_target(test, w)
    score = agreement(truth, maps["ridge"]["af"], test.mask, ssim=False)
    assert score["r2"] > 0.99 and score["pearson_r"] > 0.995
    assert not maps["ridge"]["af"][~test.mask].any()


def test_fit_predict_is_seeded_and_bounded():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 5)).astype(np.float32)
    y = np.sin(x[:, 0]) + x[:, 1] ** 2
    a = fit_predict("boosting", x, y, x[:200], seed=3, max_samples=500)
    b = fit_predict("boosting", x, y, x[:200], seed=3, max_samples=500)
    assert np.array_equal(a, b) and a.dtype == np.float32
    assert np.corrcoef(a, y[:200])[0, 1] > 0.8  # nonlinear target: trees follow it
    assert len(sample_rows(3000, 500, 0)) == 500 and len(sample_rows(100, 500, 0)) == 100
    with pytest.raises(MRHNetError, match="unknown baseline"):
        fit_predict("forest", x, y, x)
    with pytest.raises(MRHNetError, match="inputs"):
        fit_predict("ridge", x, y, x[:, :3])


def test_baselines_are_computed_and_reported(brains, tmp_path):
    train, test = brains["C1"], brains["R2"]
    preds = {t: test.target(t) * 0.8 + 5 for t in ("af", "nf")}
    ev = evaluate(preds, subject=test, baseline_train=[train], baseline_samples=2000, data_label="simulated brain R2")
    for t in ("af", "nf"):
        e = ev.summary["targets"][t]
        assert set(e["baselines"]) == {"ridge", "boosting"}
        for b in e["baselines"].values():
            assert set(b) >= {"r2", "pearson_r", "ssim", "psnr_db", "auc", "rmse"}
            assert -1 < b["r2"] < 1 and 0.5 < b["auc"] <= 1  # the inputs carry the targets, not perfectly
        assert e["network"]["r2"] == pytest.approx(1 - np.sum((test.target(t) - preds[t])[test.mask] ** 2)
                                                   / np.sum((test.target(t)[test.mask] - test.target(t)[test.mask].mean()) ** 2), rel=1e-5)
    assert ev.summary["baselines"]["training_subjects"] == ["C1"] and ev.summary["baselines"]["inputs"] == 67
    paths = ev.save(tmp_path / "report")
    data = json.loads(paths["json"].read_text())
    assert data["targets"]["nf"]["baselines"]["ridge"]["r2"] == pytest.approx(ev.summary["targets"]["nf"]["baselines"]["ridge"]["r2"])
    md = paths["md"].read_text()
    assert "| ridge fit (baseline) |" in md and "| gradient boosting (baseline) |" in md and "| R^2 |" in md
    assert "simulated brain R2" in md and "real brains (Liang et al. 2022; other data)" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {r[0]: r for r in evaluation_rows(ev.summary)}  # the web app's table shows them too
    ridge = ev.summary["targets"]["nf"]["baselines"]["ridge"]
    assert rows["NF ridge fit (baseline)"][2] == f"{ridge['pearson_r']:.3f}"
    assert "AF gradient boosting (baseline)" in rows and "AF network" in rows


def test_refusals(brains):
    train, test = brains["C1"], brains["R2"]
    lacking = simulate_subject("C1", seed=0, size="small")
    del lacking.images["mbp"]
    lacking.name = "C1-no-mbp"
    with pytest.raises(MRHNetError, match="C1-no-mbp has no mbp target"):
        subject_baselines([lacking], test, ["af", "mbp"])
    with pytest.raises(MRHNetError, match="no mbp target"):
        evaluate({"mbp": test.target("mbp")}, subject=test, baseline_train=[lacking])
    with pytest.raises(MRHNetError, match="need the subject"):
        evaluate({"af": test.target("af")}, {"af": test.target("af")}, mask=test.mask, baseline_train=[train])
    short = simulate_subject("C1", seed=0, size="small")
    short.dwi.pop("dwi_b5000")
    short.name = "C1-short"
    with pytest.raises(MRHNetError, match="C1-short: subject lacks input"):
        subject_baselines([short], test, ["af"])
    with pytest.raises(MRHNetError, match="at least one training subject"):
        subject_baselines([], test, ["af"])


def test_cli_baseline_train(brains, tmp_path, capsys):
    train = brains["C1"].save(tmp_path / "C1")
    test = brains["R2"].save(tmp_path / "R2")
    preds = tmp_path / "pred"
    preds.mkdir()
    from MRHNetLib.data.io import write_volume

    write_volume(preds / "af.nii.gz", brains["R2"].images["af"])
    assert main(["evaluate", str(test), "--pred-dir", str(preds), "--out", str(tmp_path / "r"),
                 "--baseline-train", str(train), "--baseline-samples", "1500"]) == 0
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert set(data["targets"]["af"]["baselines"]) == {"ridge", "boosting"}
    assert data["baselines"]["max_samples"] == 1500
    assert "ridge: R^2" in capsys.readouterr().out
    (tmp_path / "C1" / "af.nii.gz").unlink()
    assert main(["evaluate", str(test), "--pred-dir", str(preds), "--out", str(tmp_path / "r2"),
                 "--baseline-train", str(train)]) == 2
    assert "has no af target" in capsys.readouterr().err
