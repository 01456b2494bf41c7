"""Any voxel orientation of the input files gives the same maps and the same training: the networks
always see patches in one canonical orientation (MRHNetLib.data.orient), including left-right flips."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import MRHNetLib.network.infer as infer
from MRHNetLib.data.io import Volume
from MRHNetLib.network.modelfile import load_model
from MRHNetLib.data.orient import CANONICAL, canonical_subject, restore
from MRHNetLib.simulation.phantom import simulate_subject
from MRHNetLib.data.subject import DWI, Subject
from MRHNetLib.network.train import TrainConfig, train


def reoriented(subject: Subject, perm: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> Subject:
    """The same brain stored with permuted / flipped voxel axes (world geometry unchanged)."""
    def one(v: Volume) -> Volume:
        data = v.data
        m = np.eye(4)
        for ax, f in enumerate(flips):
            if f:
                data = np.flip(data, ax)
                flip = np.eye(4)
                flip[ax, ax], flip[ax, 3] = -1, v.shape3[ax] - 1
                m = m @ flip
        affine = v.affine @ m
        order = list(perm) + list(range(3, data.ndim))
        pm = np.eye(4)[:, list(perm) + [3]]
        return Volume(np.ascontiguousarray(np.transpose(data, order)), affine @ pm, v.name)
    return Subject({r: one(v) for r, v in subject.images.items()},
                   {r: DWI(one(d.volume), d.gradients) for r, d in subject.dwi.items()}, subject.name)


def back(vol: Volume, perm, flips) -> np.ndarray:
    data = np.transpose(vol.data, np.argsort(perm))
    for ax, f in enumerate(flips):
        if f:
            data = np.flip(data, ax)
    return data


@pytest.fixture(scope="module")
def brain() -> Subject:
    return simulate_subject("C1", seed=2, size="small")


@pytest.mark.parametrize("perm,flips", [((0, 1, 2), (True, False, False)), ((2, 0, 1), (False, True, True))])
def test_maps_do_not_depend_on_voxel_orientation(brain, perm, flips):
    model = load_model(infer.model_path("af"))
    base = infer.predict(brain, [model], device="cpu")["af"]
    other_subject = reoriented(brain, perm, flips)
    assert canonical_subject(other_subject)[1] is not None  # really another orientation
    other = infer.predict(other_subject, [model], device="cpu")["af"]
    assert np.allclose(other.affine, other_subject.affine) and other.shape3 == other_subject.shape
    scale = np.abs(base.data).max()
    assert np.abs(back(other, perm, flips) - base.data).max() <= 1e-5 * scale


def test_without_canonical_orientation_a_flip_changes_the_map(brain, monkeypatch):
    """The check above can fail: feeding the flipped voxels as they are gives mirrored patches."""
    model = load_model(infer.model_path("af"))
    base = infer.predict(brain, [model], device="cpu")["af"]
    monkeypatch.setattr(infer, "canonical_subject", lambda s: (s, None))
    flipped = reoriented(brain, (0, 1, 2), (True, False, False))
    other = infer.predict(flipped, [model], device="cpu")["af"]
    assert np.abs(back(other, (0, 1, 2), (True, False, False)) - base.data).max() > 1e-3 * np.abs(base.data).max()


def test_training_does_not_depend_on_voxel_orientation(brain, tmp_path):
    config = TrainConfig(depth=1, epochs=1, batch_size=32, val_samples=20, deterministic=True, num_threads=1,
                         seed=5, sampling={"stride0": 2, "stride_fine": 1})
    a = load_model(train([brain], "af", tmp_path / "a.mrhnet", config))
    b = load_model(train([reoriented(brain, (1, 0, 2), (True, False, True))], "af", tmp_path / "b.mrhnet", config))
    assert a.info.training["samples"] == b.info.training["samples"]
    for (ka, va), (kb, vb) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        assert ka == kb and torch.allclose(va, vb, atol=1e-6), ka


def test_restore_inverts_canonical(brain):
    s = reoriented(brain, (2, 1, 0), (False, True, False))
    canon, transform = canonical_subject(s)
    import nibabel as nib

    assert nib.aff2axcodes(canon.affine) == CANONICAL
    assert np.allclose(canon.affine, brain.affine)
    back_t2w = restore(canon.images["t2w"], transform, s.images["t2w"])
    assert np.array_equal(back_t2w.data, s.images["t2w"].data) and np.allclose(back_t2w.affine, s.affine)
