"""Evaluation: metrics of perfect and shuffled predictions, single markers, regions, perturbation, reports."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from MRHNetLib.errors import MRHNetError
from MRHNetLib.evaluation.evaluate import channel_groups, evaluate
from MRHNetLib.network.model import MRHNet
from MRHNetLib.network.modelfile import LoadedModel, ModelInfo
from MRHNetLib.simulation.phantom import simulate_subject
from MRHNetLib.data.protocol import default_protocol


@pytest.fixture(scope="module")
def phantom():
    return simulate_subject("R2", seed=1, size="small")


def _shuffled(truth: np.ndarray, mask: np.ndarray, seed: int = 0) -> np.ndarray:
    out = truth.copy()
    out[mask] = np.random.default_rng(seed).permutation(truth[mask])
    return out


def test_perfect_and_shuffled_predictions(phantom, tmp_path):
    mask = phantom.mask
    truth = {t: phantom.target(t) for t in ("af", "mbp")}
    perfect = evaluate(truth, subject=phantom)
    for t in truth:
        n = perfect.summary["targets"][t]["network"]
        assert n["ssim"] == pytest.approx(1.0) and n["pearson_r"] == pytest.approx(1.0)
        assert n["auc"] == pytest.approx(1.0) and n["psnr_db"] == float("inf") and n["rmse"] == 0
        markers = perfect.summary["targets"][t]["markers"]
        assert set(markers) == {"FA", "MTR", "T2w", "MD"}
        for m in markers.values():  # each marker in its better direction, short of the perfect map
            assert 0.5 <= m["auc"] < 1.0 and m["sign"] in "+-"
    shuffled = evaluate({t: _shuffled(v, mask) for t, v in truth.items()}, subject=phantom, markers=())
    for t in truth:
        n = shuffled.summary["targets"][t]["network"]
        assert n["ssim"] < 0.8 and abs(n["pearson_r"]) < 0.2 and abs(n["auc"] - 0.5) < 0.1
        assert np.isfinite(n["psnr_db"]) and n["psnr_db"] < perfect.summary["targets"][t]["network"]["psnr_db"]
    # the stated threshold is the stated percentile of the truth in the mask
    thr = perfect.summary["targets"]["af"]["threshold"]
    assert thr == pytest.approx(np.percentile(truth["af"][mask], 80))
    # reports
    paths = perfect.save(tmp_path / "report")
    data = json.loads(paths["json"].read_text())
    assert data["targets"]["af"]["network"]["psnr_db"] == "inf" and data["percentile"] == 80
    md = paths["md"].read_text()
    assert "## AF" in md and "FA alone" in md and "| network |" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg

    assert mpimg.imread(paths["png"]).shape[0] > 200


def test_marker_sign_is_the_better_direction(phantom):
    mask = phantom.mask
    af = phantom.target("af")
    neg = evaluate({"af": -af}, {"af": af}, mask=mask)
    assert neg.summary["targets"]["af"]["network"]["auc"] == pytest.approx(0.0)
    from MRHNetLib.evaluation.evaluate import marker_detection

    # a marker equal to minus the truth is perfect with sign '-'

    d = marker_detection(-af, af, mask)
    assert d["sign"] == "-" and d["auc"] == pytest.approx(1.0)
    d = marker_detection(af, af, mask)
    assert d["sign"] == "+" and d["auc"] == pytest.approx(1.0)


def test_regions(phantom):
    mask = phantom.mask
    af = phantom.target("af")
    labels = np.zeros(mask.shape, dtype=np.float32)
    labels[: mask.shape[0] // 2] = 1
    labels[mask.shape[0] // 2:] = 2
    ev = evaluate({"af": af}, subject=phantom, labels=labels, markers=())
    regions = ev.summary["targets"]["af"]["regions"]
    assert set(regions) == {"1", "2"}
    assert sum(r["voxels"] for r in regions.values()) == mask.sum()
    assert all(r["pearson_r"] == pytest.approx(1.0) and r["rmse"] == 0 for r in regions.values())
    with pytest.raises(MRHNetError, match="not on one grid"):
        evaluate({"af": af}, subject=phantom, labels=labels[:-1])
    with pytest.raises(MRHNetError, match="no ground truth"):
        evaluate({"xx": af}, subject=phantom)


def test_perturbation_finds_an_unused_input(phantom):
    proto = default_protocol(voxel_size_mm=0.125)
    proto.normalisation.target_scale = 100.0
    torch.manual_seed(0)
    net = MRHNet(67, 1).eval()
    groups = channel_groups(proto)
    assert {k: len(v) for k, v in groups.items()} == {"b2000": 32, "b5000": 32, "T2w": 1, "MT": 2}
    with torch.no_grad():
        net.Conv1.weight[:, groups["T2w"]] = 0  # the network ignores T2w
        net.Conv1.weight[:, groups["MT"]] *= 20  # and leans on MT
    model = LoadedModel(net, ModelInfo(proto, 1, "af"))
    from MRHNetLib.network.infer import predict

    pred = predict(phantom, [model], device="cpu")
    ev = evaluate(pred, subject=phantom, models=[model], markers=(), device="cpu", n_sample=800)
    p = ev.summary["targets"]["af"]["perturbation"]
    assert p["voxels"] == 800
    rises = {k: v["rise"] for k, v in p["groups"].items()}
    assert rises["T2w"] == 0 and p["groups"]["T2w"]["change_rms"] == 0
    assert p["groups"]["MT"]["change_rms"] > p["groups"]["b2000"]["change_rms"] > 0
    assert "T2w" in p["could_drop"] and "MT" not in p["could_drop"]


def test_cli_evaluate(phantom, tmp_path):
    from MRHNetLib.cli import main
    from MRHNetLib.data.io import write_volume

    folder = phantom.save(tmp_path / "subj")
    preds = tmp_path / "pred"
    preds.mkdir()
    write_volume(preds / "af.nii.gz", phantom.images["af"])
    write_volume(preds / "nf.nii.gz", phantom.images["nf"].with_data(_shuffled(phantom.target("nf"), phantom.mask)))
    assert main(["evaluate", str(folder), "--pred-dir", str(preds), "--out", str(tmp_path / "r1")]) == 0
    data = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert set(data["targets"]) == {"af", "nf"}
    assert data["targets"]["af"]["network"]["pearson_r"] == pytest.approx(1.0)
    assert data["targets"]["nf"]["network"]["pearson_r"] < 0.2
    assert (tmp_path / "r1" / "report.png").exists()
    rc = main(["evaluate", "--pred", str(preds / "nf.nii.gz"), "--truth", str(folder / "nf.nii.gz"),
               "--mask", str(folder / "mask.nii.gz"), "--out", str(tmp_path / "r2")])
    assert rc == 0 and json.loads((tmp_path / "r2" / "report.json").read_text())["targets"]["nf"]["markers"] == {}
    assert main(["evaluate", "--pred", str(preds / "nf.nii.gz"), "--out", str(tmp_path / "r3")]) == 2
