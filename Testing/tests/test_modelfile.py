"""Safe model files: round trip, and refusal of wrong, damaged, tampered and pickled files."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from MRHNetLib.errors import MRHNetError
from MRHNetLib.network.model import MRHNet, init_weights
from MRHNetLib.network.modelfile import ModelInfo, load_model, read_info, save_model
from MRHNetLib.data.protocol import Normalisation, check_compatible, default_protocol, maps_protocol


def _model(tmp_path: Path, depth: int = 2, protocol=None, name: str = "m.mrhnet") -> tuple[Path, MRHNet, ModelInfo]:
    protocol = protocol or default_protocol(voxel_size_mm=0.1, normalisation=Normalisation(target_scale=187.5,
                                                                                           reference_scales={"t2w": 3.0}))
    net = init_weights(MRHNet(protocol.n_channels, depth, width=16), "orthogonal", torch.Generator().manual_seed(1))
    info = ModelInfo(protocol, depth, "nf", "a.u.", 16, "test network", {"summary": "none", "epochs": 3},
                     {"trained_by": "test"})
    return save_model(tmp_path / name, net, info), net, info


def test_model_file_round_trips(tmp_path):
    path, net, info = _model(tmp_path)
    assert sorted(p.name for p in path.iterdir()) == ["model.json", "weights.safetensors"]
    loaded = load_model(path)
    assert loaded.name == "m" and loaded.info.target == "nf" and loaded.info.depth == 2
    assert loaded.info.protocol.to_dict() == info.protocol.to_dict()
    assert loaded.info.protocol.normalisation.target_scale == 187.5
    assert loaded.info.training == info.training and loaded.info.provenance == info.provenance
    x = torch.randn(5, 67, 3, 3)
    with torch.no_grad():
        assert torch.equal(loaded.net(x), net.eval()(x))
    meta = json.loads((path / "model.json").read_text())
    assert meta["software"]["mrhnet"] and meta["architecture"] == {"name": "MRHNet", "in_channels": 67, "depth": 2,
                                                                    "width": 16}
    # saving again replaces the model whole, leaving no temporary folders
    save_model(path, net, info)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mrhnet"]


def test_maps_model_round_trips(tmp_path):
    path, _, _ = _model(tmp_path, depth=1, protocol=maps_protocol())
    info = read_info(path)
    assert info.protocol.input_kind == "maps" and info.protocol.roles() == ["t2w", "mtr", "fa", "md", "mk"]


def test_wrong_channel_count_is_refused(tmp_path):
    protocol = default_protocol()
    with pytest.raises(MRHNetError, match="network \\(12 inputs, depth 1\\) does not match its description "
                                          "\\(67 channels"):
        save_model(tmp_path / "x.mrhnet", MRHNet(12, 1), ModelInfo(protocol, 1))
    assert not list(tmp_path.iterdir())
    path, _, _ = _model(tmp_path)
    meta = json.loads((path / "model.json").read_text())
    meta["architecture"]["in_channels"] = 12
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(MRHNetError, match="protocol lists 67 channels but the network has 12 inputs"):
        load_model(path)


def test_weights_that_do_not_fit_the_description_are_refused(tmp_path):
    path, _, _ = _model(tmp_path, depth=2)
    meta = json.loads((path / "model.json").read_text())
    meta["architecture"]["depth"] = 3
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(MRHNetError, match="weights do not fit an MRH-Net of depth 3 with 67 inputs"):
        load_model(path)


def test_subject_protocol_mismatch_is_refused(tmp_path):
    path, _, _ = _model(tmp_path)
    model = read_info(path).protocol
    with pytest.raises(MRHNetError, match="dwi_b2000: model expects 32 volumes, subject has 20"):
        check_compatible(model, default_protocol(n_dirs=18))
    with pytest.raises(MRHNetError, match="model expects raw inputs, subject provides maps"):
        check_compatible(model, maps_protocol())
    with pytest.raises(MRHNetError, match="volume 2 has b=3000"):
        check_compatible(model, default_protocol(bvalues=(3000.0, 5000.0)))


def test_corrupted_safetensors_is_refused(tmp_path):
    path, _, _ = _model(tmp_path)
    weights = path / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated, and its hash updated so that only the format fails
    meta = json.loads((path / "model.json").read_text())
    import hashlib

    meta["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(MRHNetError, match="weights.safetensors: not a valid safetensors file"):
        load_model(path)


def test_tampered_weights_are_refused(tmp_path):
    path, _, _ = _model(tmp_path)
    weights = path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(MRHNetError, match="SHA-256 does not match model.json: the file was modified or damaged"):
        load_model(path)


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_pickled_weights_are_refused_without_unpickling(tmp_path, how, monkeypatch):
    path, net, _ = _model(tmp_path)
    weights = path / "weights.safetensors"
    if how == "torch.save":
        torch.save(net.state_dict(), weights)
    else:
        weights.write_bytes(pickle.dumps({k: v.numpy() for k, v in net.state_dict().items()}, protocol=4))
    meta = json.loads((path / "model.json").read_text())
    meta.pop("weights_sha256")  # even without a hash to catch it
    (path / "model.json").write_text(json.dumps(meta))

    def no_unpickling(*args, **kwargs):
        raise AssertionError("the loader tried to unpickle")

    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(MRHNetError, match="is a pickle / torch.save archive, which is never loaded"):
        load_model(path)


def test_not_a_model_is_refused(tmp_path):
    with pytest.raises(MRHNetError, match="model does not exist"):
        load_model(tmp_path / "none.mrhnet")
    (tmp_path / "empty.mrhnet").mkdir()
    with pytest.raises(MRHNetError, match="not a model folder"):
        load_model(tmp_path / "empty.mrhnet")
    path, _, _ = _model(tmp_path)
    (path / "model.json").write_text("{not json")
    with pytest.raises(MRHNetError, match="model.json: is not valid JSON"):
        load_model(path)
    (path / "model.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(MRHNetError, match="not an MRHNet model description"):
        load_model(path)



def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_saving_never_deletes_a_users_files(tmp_path):
    """Saving into a folder that holds anything but an earlier model is refused and leaves every file."""
    path, net, info = _model(tmp_path)
    for name in ("notes.mrhnet", "m2.mrhnet"):
        folder = tmp_path / name
        (folder / "sub").mkdir(parents=True)
        (folder / "notes.txt").write_text("my notes")
        (folder / "sub" / "data.txt").write_text("my data")
    (tmp_path / "m2.mrhnet" / "model.json").write_text("{}")  # a model-like folder with user files in it
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "keep.txt").write_text("keep")
    (tmp_path / "file.mrhnet").write_text("not a folder")
    before = _tree(tmp_path)
    for name in ("notes.mrhnet", "m2.mrhnet"):
        with pytest.raises(MRHNetError, match=f"{name}: holds other files than a model .*choose a new NAME.mrhnet"):
            save_model(tmp_path / name, net, info)
    # a path without the suffix (a user's folder, a new name) or a file is refused with a suggestion
    for name, pattern in (("results", "results: a model path must end in .mrhnet \\(for example .*results.mrhnet\\)"),
                          ("new-model", "must end in .mrhnet \\(for example .*new-model.mrhnet\\)"),
                          ("file.mrhnet", "exists and is not a model folder")):
        with pytest.raises(MRHNetError, match=pattern) as exc:
            save_model(tmp_path / name, net, info)
        assert "\n" not in str(exc.value)
    assert _tree(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.mrhnet", "m.mrhnet", "m2.mrhnet", "notes.mrhnet",
                                                           "results"]  # no temporaries left


def test_resaving_over_an_earlier_model_replaces_it(tmp_path):
    path, net, info = _model(tmp_path)
    (path / ".weights.safetensors.abc123").write_bytes(b"a temporary of ours")
    other = init_weights(MRHNet(net.in_channels, 2, width=16), "glorot", torch.Generator().manual_seed(5))
    save_model(path, other, info)
    assert sorted(p.name for p in path.iterdir()) == ["model.json", "weights.safetensors"]
    assert torch.equal(load_model(path).net.state_dict()["Conv1.weight"], other.state_dict()["Conv1.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mrhnet"]
    empty = tmp_path / "empty.mrhnet"
    empty.mkdir()
    save_model(empty, net, info)  # an empty folder holds nothing to lose
    assert load_model(empty).info.depth == 2


def test_a_cancel_between_the_renames_puts_the_earlier_model_back(tmp_path, monkeypatch):
    """Cancel in the GUI arrives in the job as SystemExit (SIGTERM); landing between moving the earlier model
    aside and moving the new one in, it must leave the earlier model in place, and no temporaries."""
    import os

    from MRHNetLib.network import modelfile

    path, net, info = _model(tmp_path)
    before = load_model(path).net.state_dict()["Conv1.weight"].clone()
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new model moving in
            raise SystemExit(143)
        return real(src, dst)

    monkeypatch.setattr(modelfile.os, "replace", replace)
    other = init_weights(MRHNet(net.in_channels, 2, width=16), "glorot", torch.Generator().manual_seed(5))
    with pytest.raises(SystemExit):
        save_model(path, other, info)
    monkeypatch.undo()
    assert len(calls) == 3  # aside, (cancelled), back
    assert torch.equal(load_model(path).net.state_dict()["Conv1.weight"], before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mrhnet"]
