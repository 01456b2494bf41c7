"""Whole-volume inference: exactness against the original per-voxel procedure, geometry, resampling,
protocol checks, protocol adaptation, ensembles, CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from MRHNetLib.errors import Cancelled, MRHNetError
from MRHNetLib.network.fastconv import PatchNet
from MRHNetLib.network.infer import check_subject, predict, predict_array, resolve_device, write_maps
from MRHNetLib.data.io import Volume, read_volume
from MRHNetLib.network.model import MRHNet
from MRHNetLib.network.modelfile import LoadedModel, ModelInfo, save_model
from MRHNetLib.simulation.phantom import simulate_subject
from MRHNetLib.data.protocol import default_protocol, plane_axes
from MRHNetLib.data.subject import DWI, Subject


def random_net(c_in: int, depth: int, seed: int) -> MRHNet:
    g = torch.Generator().manual_seed(seed)
    net = MRHNet(c_in, depth)
    with torch.no_grad():
        for conv in net.convs():
            fan_in = conv.weight[0].numel()
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (1.6 / fan_in) ** 0.5)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.1)
    return net.eval()


def per_voxel_reference(net: MRHNet, stack: np.ndarray, mask: np.ndarray, axes, half: int) -> np.ndarray:
    """The original procedure, voxel by voxel: each voxel's own zero-padded patch in the plane through
    the network, the centre of the output kept, the map times the mask."""
    _, ra, ca = axes
    p = 2 * half + 1
    out = np.zeros(mask.shape, dtype=np.float64)
    with torch.no_grad():
        for v in np.argwhere(mask):  # outside the mask the map is zero anyway
            patch = np.zeros((stack.shape[0], p, p), dtype=np.float32)
            for a in range(p):
                for b in range(p):
                    w = v.copy()
                    w[ra] += a - half
                    w[ca] += b - half
                    if all(0 <= w[k] < mask.shape[k] for k in range(3)):
                        patch[:, a, b] = stack[(slice(None), *w)]
            out[tuple(v)] = net(torch.from_numpy(patch)[None])[0, 0, half, half].item()
    return out * mask


@pytest.mark.parametrize("axes,half,depth", [((1, 0, 2), 1, 2), ((2, 1, 0), 1, 0), ((0, 2, 1), 2, 1)])
def test_exact_against_per_voxel_reference(axes, half, depth):
    rng = np.random.default_rng(3)
    shape = (7, 6, 5)
    stack = rng.normal(size=(4,) + shape).astype(np.float32)
    mask = rng.random(shape) > 0.35  # ragged mask: many mask-edge voxels
    mask[0, :, 0] = mask[-1, -1, :] = True  # and voxels on the volume's border
    net = random_net(4, depth, seed=depth + 10 * half)
    ref = per_voxel_reference(net, stack, mask, axes, half)
    for chunk in (5, 1000):  # chunk boundaries must not matter
        fast = predict_array(net, stack, mask, axes, half, chunk_voxels=chunk)
        scale = np.abs(ref).max()
        assert scale > 0.1
        np.testing.assert_allclose(fast, ref, rtol=0, atol=2e-6 * scale)
        assert np.all(fast[~mask] == 0)
    # bf16 is an approximation, not exact, but close
    approx = predict_array(net, stack, mask, axes, half, precision="bf16")
    assert 0 < np.abs(approx - ref).max() < 0.1 * np.abs(ref).max()


def test_patchnet_equals_conv2d_port_deep():
    net = random_net(67, 30, seed=1)
    x = torch.randn(64, 67, 3, 3)
    with torch.no_grad():
        ref = net(x)[:, 0, 1, 1]
    fast = PatchNet(net)(x.permute(2, 3, 0, 1).contiguous())
    assert torch.allclose(fast, ref, rtol=0, atol=1e-5 * ref.abs().max().item())


def test_patchnet_workspace_is_per_thread_and_never_aliased():
    """Buffers are reused between calls (per batch size and thread): results must not change afterwards,
    and threads sharing one PatchNet must not mix their batches."""
    from concurrent.futures import ThreadPoolExecutor

    net = random_net(5, 2, seed=3)
    pn = PatchNet(net)
    xs = [torch.randn(3, 3, n, 5) for n in (7, 7, 12, 7, 12, 7)]
    with torch.no_grad():
        refs = [net(x.permute(2, 3, 0, 1))[:, 0, 1, 1] for x in xs]
    first = pn(xs[0])
    kept = first.clone()
    seq = [pn(x) for x in xs[1:]]
    assert torch.equal(first, kept)  # a later call of the same size did not overwrite an earlier result
    for y, ref in zip([first] + seq, refs):
        assert torch.allclose(y, ref, rtol=0, atol=1e-5)
    with ThreadPoolExecutor(3) as pool:
        par = list(pool.map(pn, xs * 4))
    for y, ref in zip(par, refs * 4):
        assert torch.allclose(y, ref, rtol=0, atol=1e-5)


def test_devices_and_precision_options():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(MRHNetError, match="no CUDA"):
            resolve_device("cuda")
        with pytest.raises(MRHNetError, match="tf32 needs a CUDA"):
            PatchNet(random_net(3, 0, 0), "cpu", "tf32")
    with pytest.raises(MRHNetError, match="unknown precision"):
        PatchNet(random_net(3, 0, 0), "cpu", "fp16")


# ---------------------------------------------------------------------------------------------
# Subjects and models


@pytest.fixture(scope="module")
def phantom() -> Subject:
    return simulate_subject("C1", seed=0, size="small")


def make_model(target="af", depth=1, seed=0, voxel=0.125, scale=200.0, protocol=None) -> LoadedModel:
    proto = protocol or default_protocol(voxel_size_mm=voxel)
    proto.normalisation.target_scale = scale
    return LoadedModel(random_net(proto.n_channels, depth, seed), ModelInfo(proto, depth, target))


def test_predict_maps_geometry_scale_and_mask(phantom):
    model = make_model()
    maps = predict(phantom, [model], device="cpu")
    assert set(maps) == {"af"}
    m = maps["af"]
    assert m.shape3 == phantom.shape and np.array_equal(m.affine, phantom.affine)
    mask = phantom.mask
    assert np.all(m.data[~mask] == 0) and np.any(m.data[mask] != 0)
    # de-normalised: equals the normalised network output times the target scale
    axes = plane_axes(phantom.affine, "coronal")
    raw = predict_array(model.net, phantom.inputs(model.info.protocol), mask, axes)
    np.testing.assert_allclose(m.data, raw * 200.0, rtol=1e-6, atol=1e-6)


def _permuted(subject: Subject, perm: tuple[int, int, int], rotate_deg: float = 0.0) -> Subject:
    """The same data stored with permuted array axes and an (optionally) oblique affine; the gradient
    table is kept, so every voxel's patch and channels are unchanged."""
    c, s = np.cos(np.radians(rotate_deg)), np.sin(np.radians(rotate_deg))
    rot = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])

    def move(v: Volume) -> Volume:
        data = np.ascontiguousarray(np.transpose(v.data, perm + tuple(range(3, v.data.ndim))))
        aff = v.affine.copy()
        aff[:, :3] = v.affine[:, list(perm)]
        return Volume(data, rot @ aff, v.name)

    out = Subject(images={k: move(v) for k, v in subject.images.items()}, name=subject.name + "-perm")
    out.dwi = {k: DWI(move(d.volume), d.gradients) for k, d in subject.dwi.items()}
    return out


@pytest.mark.parametrize("perm,rotate_deg", [((2, 0, 1), 0.0), ((1, 0, 2), 12.0)])
def test_permuted_and_oblique_input_gives_the_same_map(phantom, perm, rotate_deg):
    model = make_model()
    base = predict(phantom, [model], device="cpu")["af"]
    moved = _permuted(phantom, perm, rotate_deg)
    assert plane_axes(moved.affine, "coronal") != plane_axes(phantom.affine, "coronal")
    out = predict(moved, [model], device="cpu")["af"]
    assert out.shape3 == moved.shape and np.array_equal(out.affine, moved.affine)
    # the patch plane follows the anatomy, so the map is the base map with its axes permuted
    np.testing.assert_allclose(out.data, np.transpose(base.data, perm), rtol=1e-5, atol=1e-5 * np.abs(base.data).max())


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_written_maps_keep_input_geometry(phantom, tmp_path, suffix):
    from MRHNetLib.data.subject import load_subject

    folder = phantom.save(tmp_path / "subj", suffix=suffix)
    subject = load_subject(folder)
    maps = predict(subject, [make_model()], device="cpu")
    written = write_maps(maps, tmp_path / "out", suffix=suffix)
    back = read_volume(written["af"])
    t2w = read_volume(folder / f"t2w{suffix}")
    assert back.shape3 == t2w.shape3
    np.testing.assert_allclose(back.affine, t2w.affine, atol=1e-6)
    np.testing.assert_allclose(back.data, maps["af"].data, rtol=1e-6)
    with pytest.raises(MRHNetError, match="is an input file"):
        write_maps(maps, {"af": folder / f"t2w{suffix}"}, protect=[folder / f"t2w{suffix}"])


def test_resampling_when_voxel_sizes_differ(phantom):
    same = make_model(voxel=0.125)
    direct = predict(phantom, [same], device="cpu")["af"].data
    # resampling onto the same voxel size and back is (nearly) the identity
    forced = predict(phantom, [same], device="cpu", resample=True)["af"].data
    mask = phantom.mask
    assert np.abs(forced - direct)[mask].max() < 1e-3 * np.abs(direct).max()
    coarse = make_model(voxel=0.25)
    with pytest.raises(MRHNetError, match="voxel size"):
        check_subject(phantom, coarse, resample=False)
    with pytest.raises(MRHNetError, match="voxel size"):
        predict(phantom, [coarse], device="cpu", resample=False)
    check_subject(phantom, coarse)  # auto: resampled, accepted
    out = predict(phantom, [coarse], device="cpu")["af"]
    assert out.shape3 == phantom.shape and np.array_equal(out.affine, phantom.affine)
    assert np.all(out.data[~mask] == 0) and np.count_nonzero(out.data[mask]) > 0.9 * mask.sum()


def test_protocol_mismatches_are_refused(phantom):
    import copy

    cases = {
        "lacks input": default_protocol(voxel_size_mm=0.125),
        "expects 33 volumes": default_protocol(n_b0=3, voxel_size_mm=0.125),
        "b=3000": default_protocol(bvalues=(3000.0, 5000.0), voxel_size_mm=0.125),
    }
    cases["lacks input"].channels.append(copy.copy(cases["lacks input"].channels[-1]))
    cases["lacks input"].channels[-1].role = "mtr"
    for message, proto in cases.items():
        model = make_model(protocol=proto)
        with pytest.raises(MRHNetError, match=message):
            check_subject(phantom, model)
        with pytest.raises(MRHNetError, match=message):
            predict(phantom, [model], device="cpu")
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(30, 3))
    turned = make_model(protocol=default_protocol(directions=dirs / np.linalg.norm(dirs, axis=1, keepdims=True),
                                                  voxel_size_mm=0.125))
    with pytest.raises(MRHNetError, match="--adapt-protocol"):
        check_subject(phantom, turned)
    check_subject(phantom, turned, adapt_protocol=True)
    # adaptation cannot bridge b-values
    with pytest.raises(MRHNetError, match="b=3000"):
        check_subject(phantom, make_model(protocol=cases["b=3000"]), adapt_protocol=True)


def _rotation(deg: float) -> np.ndarray:
    axis = np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.radians(deg)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def test_adapt_protocol_close_to_own_table():
    from MRHNetLib.data.protocol import fibonacci_directions

    rotated = default_protocol(directions=fibonacci_directions(30) @ _rotation(35.0).T)
    # noise-free, so that the difference is the adaptation's alone (noise draws differ between tables)
    other = simulate_subject("C1", seed=0, size="small", protocol=rotated, noise=0.0)
    phantom = simulate_subject("C1", seed=0, size="small", noise=0.0)
    model = make_model(depth=2, seed=4)
    with pytest.raises(MRHNetError, match="--adapt-protocol"):
        predict(other, [model], device="cpu")
    own = predict(phantom, [model], device="cpu")["af"].data
    adapted = predict(other, [model], device="cpu", adapt_protocol=True)["af"].data
    mask = phantom.mask
    rel = np.sqrt(np.mean((adapted - own)[mask] ** 2)) / np.sqrt(np.mean(own[mask] ** 2))
    # control: the rotated data fed as if it had the model's directions (what adaptation fixes)
    fake = Subject(images=other.images, name="fake",
                   dwi={k: DWI(d.volume, phantom.dwi[k].gradients) for k, d in other.dwi.items()})
    wrong = predict(fake, [model], device="cpu")["af"].data
    rel_wrong = np.sqrt(np.mean((wrong - own)[mask] ** 2)) / np.sqrt(np.mean(own[mask] ** 2))
    # and the inputs themselves: re-expressed DWI against the DWI acquired on the model's table
    from MRHNetLib.data.adapt import adapt_subject

    ad = adapt_subject(other, model.info.protocol)
    assert adapt_subject(phantom, model.info.protocol).dwi["dwi_b5000"] is phantom.dwi["dwi_b5000"]  # kept as is
    dw = phantom.dwi["dwi_b5000"].gradients.bvals > 100
    a, o = ad.dwi["dwi_b5000"].volume.data[mask][:, dw], phantom.dwi["dwi_b5000"].volume.data[mask][:, dw]
    rel_in = np.sqrt(np.mean((a - o) ** 2)) / np.sqrt(np.mean(o ** 2))
    print(f"adapt-protocol (35 deg rotated table, noise-free): map relative RMS difference {rel:.4f} "
          f"(unadapted {rel_wrong:.4f}); b5000 DWI relative RMS difference {rel_in:.4f}")
    assert rel < 0.02 and rel < 0.3 * rel_wrong and rel_in < 0.05


def test_ensemble_mean_and_spread(phantom):
    a, b = make_model(seed=1), make_model(seed=2)
    same = predict(phantom, [a, a], device="cpu")
    assert set(same) == {"af", "af_std"}
    assert np.all(same["af_std"].data == 0)
    diff = predict(phantom, [a, b, make_model(target="nf", seed=3)], device="cpu")
    assert set(diff) == {"af", "af_std", "nf"}
    mask = phantom.mask
    one, two = (predict(phantom, [m], device="cpu")["af"].data for m in (a, b))
    np.testing.assert_allclose(diff["af"].data, (one + two) / 2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(diff["af_std"].data, np.abs(one - two) / 2, rtol=1e-4, atol=1e-5)
    assert np.all(diff["af_std"].data[mask] > 0) and np.all(diff["af_std"].data[~mask] == 0)


def test_progress_and_cancel(phantom):
    seen = []
    predict(phantom, [make_model()], device="cpu", chunk_voxels=500, progress=lambda f, m: seen.append(f))
    assert seen and seen[-1] == pytest.approx(1.0) and all(b >= a - 1e-9 for a, b in zip(seen, seen[1:]))
    with pytest.raises(Cancelled):
        predict(phantom, [make_model()], device="cpu", chunk_voxels=500,
                progress=lambda f, m: False if "voxels" in m else None)


def test_cli_predict_ensemble(phantom, tmp_path):
    from MRHNetLib.cli import main

    folder = phantom.save(tmp_path / "subj")
    paths = []
    for seed in (1, 2):
        m = make_model(seed=seed)
        paths.append(save_model(tmp_path / f"af{seed}.mrhnet", m.net, m.info))
    out = tmp_path / "maps"
    rc = main(["predict", str(folder), "--model", str(paths[0]), "--model", str(paths[1]), "--out", str(out),
               "--device", "cpu"])
    assert rc == 0
    af, sd = read_volume(out / "af.nii.gz"), read_volume(out / "af_std.nii.gz")
    np.testing.assert_allclose(af.affine, phantom.affine, atol=1e-6)
    assert af.shape3 == phantom.shape and sd.data.max() > 0
    # writing into the subject folder with the default suffix would not replace an input ...
    assert main(["predict", str(folder), "-m", str(paths[0]), "--out", str(out), "--precision", "tf32",
                 "--device", "cpu"]) == 2
    assert main(["predict", str(folder), "-m", str(tmp_path / "missing.mrhnet"), "--out", str(out)]) == 2
