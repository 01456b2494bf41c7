"""Input normalisation without whole-volume copies (issue 13, part 3): streamed percentiles equal numpy's
bit for bit, the lazily scaled stack equals the normalised stack, and predict never builds the
(C, X, Y, Z) normalised copy."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from MRHNetLib.data.io import Volume
from MRHNetLib.data.normalise import (ScaledStack, channel_scales, channel_views, lerp_percentile, masked_slabs,
                                      order_statistics, scaled_stack)
from MRHNetLib.data.protocol import Normalisation, default_protocol, plane_axes, scale_group
from MRHNetLib.data.subject import DWI, Subject
from MRHNetLib.network.infer import predict, predict_array
from MRHNetLib.network.model import MRHNet
from MRHNetLib.network.modelfile import LoadedModel, ModelInfo
from MRHNetLib.simulation.phantom import simulate_subject


def stacked_scales(stack: np.ndarray, roles: list[str], mask: np.ndarray, norm: Normalisation) -> np.ndarray:
    """The divisors as they were computed before issue 13: numpy on each whole (copied) group."""
    if norm.method == "global_max":
        top = float(stack.max())
        return np.full(len(stack), top if top > 0 else 1.0, dtype=np.float32)
    groups: dict[str, list[int]] = {}
    for c, role in enumerate(roles):
        groups.setdefault(scale_group(role), []).append(c)
    scales = np.ones(len(stack), dtype=np.float32)
    for idx in groups.values():
        values = stack[idx][:, mask]
        s = float(np.percentile(values, norm.percentile)) if values.size else 0.0
        top = np.abs(values).max() if values.size else 0.0
        scales[idx] = s if s > 0 else (float(top) if top > 0 else 1.0)
    return scales


def test_streamed_percentile_is_numpys_bit_for_bit():
    rng = np.random.default_rng(0)
    for trial in range(600):
        n = int(rng.integers(1, 300))
        v = [rng.normal(size=n), rng.integers(-3, 4, size=n), rng.random(n) * 1e4, np.abs(rng.normal(size=n)) * 1e-30,
             np.zeros(n)][trial % 5].astype(np.float32)
        v[rng.random(n) < 0.05] = -0.0
        q = float(rng.choice([99.5, 99.9, 50.0, 0.0, 100.0, 1.0, 100 * rng.random()]))
        parts = np.array_split(v, 1 + trial % 4)
        got = lerp_percentile(n, q, lambda r: order_statistics(lambda: iter(parts), r))
        assert np.float32(got) == np.percentile(v, q), (n, q)
    special = np.array([np.inf, -np.inf, 0.0, 3.0, -2.0, np.inf], dtype=np.float32)
    for q in (99.5, 50.0, 10.0):
        with np.errstate(invalid="ignore"):
            got = lerp_percentile(6, q, lambda r: order_statistics(lambda: [special], r))
            assert np.array_equal(np.float32(got), np.percentile(special, q), equal_nan=True)
    with_nan = np.array([1.0, np.nan, 2.0], dtype=np.float32)
    assert np.isnan(lerp_percentile(3, 50.0, lambda r: order_statistics(lambda: [with_nan], r)))


def channel_layouts(rng, shape) -> tuple[list[np.ndarray], list[str]]:
    """3D channel views of many memory layouts: C and Fortran 4D shells, flipped and transposed views,
    float64 images, as subjects read from files or reoriented hold them."""
    c4 = rng.normal(1.0, 0.5, size=shape + (4,)).astype(np.float32)
    f4 = np.asfortranarray(rng.random(shape + (3,), dtype=np.float32))
    flipped = np.ascontiguousarray(rng.random(shape[::-1], dtype=np.float32).transpose(2, 1, 0))[::-1, :, ::-1]
    views = [c4[..., k] for k in range(4)] + [f4[..., k] for k in range(3)]
    views += [flipped, rng.random(shape) * 7.0, -rng.random(shape).astype(np.float32)]
    roles = ["dwi_b2000"] * 4 + ["dwi_b5000"] * 3 + ["t2w", "mt_on", "mt_off"]
    return views, roles


@pytest.mark.parametrize("slab", [1, 37, 1 << 22])
def test_channel_scales_equal_the_stacked_computation(slab, monkeypatch):
    import MRHNetLib.data.normalise as normalise

    monkeypatch.setattr(normalise, "SLAB_VOXELS", slab)
    rng = np.random.default_rng(slab)
    shape = (9, 7, 5)
    views, roles = channel_layouts(rng, shape)
    mask = rng.random(shape) > 0.4
    stack = np.stack([np.asarray(v, dtype=np.float32) for v in views])
    assert sum(c.size for v in views for c in masked_slabs(v, mask, slab)) == mask.sum() * len(views)
    for norm in (Normalisation(), Normalisation(percentile=50.0), Normalisation(method="global_max")):
        expected = stacked_scales(stack, roles, mask, norm)
        assert np.array_equal(channel_scales(views, roles, mask, norm), expected), norm
    # the fallbacks: a group whose percentile is not positive, an all-zero group, a NaN
    views[7] = -np.abs(views[7])
    views[8] = np.zeros(shape, dtype=np.float32)
    views[9] = views[9].copy()
    views[9][mask] = np.nan
    stack = np.stack([np.asarray(v, dtype=np.float32) for v in views])
    for norm in (Normalisation(), Normalisation(method="global_max")):
        with np.errstate(invalid="ignore"):
            assert np.array_equal(channel_scales(views, roles, mask, norm), stacked_scales(stack, roles, mask, norm))


def test_scaled_stack_cuts_the_normalised_stack():
    rng = np.random.default_rng(5)
    shape = (8, 6, 7)
    views, _ = channel_layouts(rng, shape)
    scales = rng.random(len(views)).astype(np.float32) + 0.5
    full = np.stack([np.asarray(v, dtype=np.float32) for v in views]) / scales[:, None, None, None]
    lazy = ScaledStack(views, scales)
    assert lazy.shape == full.shape and lazy.ndim == 4
    coords = tuple(rng.integers(0, shape, size=(300, 3)).T)
    assert np.array_equal(lazy.gather(coords), full[(slice(None),) + coords].T)
    net = MRHNet(len(views), 1).eval()
    mask = rng.random(shape) > 0.3
    mask[0, :, 0] = mask[-1, -1, :] = True
    for axes in ((1, 0, 2), (2, 1, 0)):
        for chunk in (3, 1000):
            a = predict_array(net, full, mask, axes, 1, chunk_voxels=chunk)
            assert np.array_equal(predict_array(net, lazy, mask, axes, 1, chunk_voxels=chunk), a)


def upsampled(subject: Subject, factor: int) -> Subject:
    """The subject's inputs with every voxel repeated ``factor`` times along each axis (a larger brain on
    the same voxel size)."""
    def up(v: Volume) -> Volume:
        data = v.data
        for a in range(3):
            data = np.repeat(data, factor, axis=a)
        return Volume(np.ascontiguousarray(data), v.affine.copy(), v.name)

    return Subject({r: up(v) for r, v in subject.images.items() if r in ("t2w", "mt_on", "mt_off", "fa", "mask")},
                   {r: DWI(up(d.volume), d.gradients) for r, d in subject.dwi.items()}, subject.name)


def test_predict_builds_no_normalised_copy_of_the_volume():
    """Memory of predict above its inputs must not grow with the volume: no (C, X, Y, Z) array (here
    67 x 72 x 72 x 36 float32, 50 MB) and no whole-group copy is allocated on the way (numpy's
    allocations are traced by tracemalloc); the map is the one made from the normalised stack."""
    subject = upsampled(simulate_subject("C1", size="small"), 3)
    proto = default_protocol(voxel_size_mm=0.125)
    model = LoadedModel(MRHNet(proto.n_channels, 0).eval(), ModelInfo(proto, 0, "af"))
    stack_bytes = proto.n_channels * int(np.prod(subject.shape)) * 4
    predict(subject, [model], device="cpu", chunk_voxels=256)  # warm-up: imports, workspaces
    tracemalloc.start()
    try:
        maps = predict(subject, [model], device="cpu", chunk_voxels=256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.12 * stack_bytes, f"predict allocated {peak / 1e6:.1f} MB; the normalised stack is {stack_bytes / 1e6:.1f} MB"
    axes = plane_axes(subject.affine, "coronal")
    reference = predict_array(model.net, subject.inputs(proto), subject.mask, axes, chunk_voxels=256)
    assert np.array_equal(maps["af"].data, np.where(subject.mask, reference, np.float32(0)))
    lazy = scaled_stack(subject, proto)
    assert all(np.shares_memory(v, subject.channel_volume(ch.role)) for v, ch in zip(channel_views(subject, proto),
                                                                                      proto.channels))
    assert np.array_equal(lazy.scales, subject.inputs_and_scales(proto)[1])
