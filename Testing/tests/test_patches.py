"""Training-sample preparation: the sampler against a slow loop reference, extraction against naive
per-patch slicing with manual zero padding, orientation independence, and the PatchSet."""
from __future__ import annotations

import json

import numpy as np
import pytest

from MRHNetLib.errors import MRHNetError
from MRHNetLib.data.io import Volume
from MRHNetLib.network.patches import (PatchSet, SamplingConfig, extract_patches, iter_patches, mask_centres,
                               sample_centres)
from MRHNetLib.data.protocol import Channel, Protocol, plane_axes
from MRHNetLib.data.subject import Subject


def rotation_affine(angle_deg: float = 8.0, spacing=(0.1, 0.12, 0.15), origin=(3.0, -2.0, 5.0)) -> np.ndarray:
    """An oblique voxel-to-RAS affine whose axes still map one-to-one onto R, A, S."""
    t = np.radians(angle_deg)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    rot = rot @ np.array([[1, 0, 0], [0, np.cos(t / 2), -np.sin(t / 2)], [0, np.sin(t / 2), np.cos(t / 2)]])
    a = np.eye(4)
    a[:3, :3] = rot * np.asarray(spacing)
    a[:3, 3] = origin
    return a


def small_brain(shape=(26, 30, 22), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A target with zero background and sparse zeros inside, and an ellipsoid mask slightly smaller."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g ** 2 for g in grid)
    target = np.where(r2 < 0.9, 40 + 200 * rng.random(shape), 0.0)
    target[rng.random(shape) < 0.35] = 0.0  # holes so the non-zero-count filter matters
    target[r2 > 0.75] *= 0.02  # a faint rim so the sum filter matters
    mask = r2 < 0.8
    return target, mask


def reference_sampler(target, mask, affine, cfg: SamplingConfig) -> list[tuple[int, int, int]]:
    """Plain loops, one voxel at a time."""
    sa, ra, ca = plane_axes(affine, cfg.plane)
    values = [abs(v) for v, m in zip(target.reshape(-1), mask.reshape(-1)) if m and v != 0]
    threshold = cfg.min_sum_fraction * float(np.percentile(values, cfg.robust_percentile))
    h = cfg.half_patch
    n = target.shape
    first, stop = cfg.slice_range if cfg.slice_range else (0, n[sa])
    slices = list(range(first, min(stop, n[sa])))

    def voxel(s, r, c):
        idx = [0, 0, 0]
        idx[sa], idx[ra], idx[ca] = s, r, c
        return tuple(idx)

    area = {}
    for s in slices:
        area[s] = 0
        for r in range(n[ra]):
            for c in range(n[ca]):
                area[s] += bool(mask[voxel(s, r, c)])
    biggest = max(area.values())
    out = []
    for s in slices:
        stride = cfg.stride_fine if area[s] >= cfg.fine_fraction * biggest else cfg.stride0
        r = h
        while r < n[ra] - h:
            c = h
            while c < n[ca] - h:
                if mask[voxel(s, r, c)]:
                    total, nonzero = 0.0, 0
                    for dr in range(-h, h + 1):
                        for dc in range(-h, h + 1):
                            v = float(target[voxel(s, r + dr, c + dc)])
                            total += v
                            nonzero += v != 0
                    if total >= threshold and nonzero >= cfg.min_nonzero:
                        out.append(voxel(s, r, c))
                c += stride
            r += stride
    return out


def naive_patch(stack, centre, affine, plane, h):
    """One patch by loops with explicit bounds checks (zero outside)."""
    _, ra, ca = plane_axes(affine, plane)
    p = 2 * h + 1
    out = np.zeros((stack.shape[0], p, p), dtype=np.float32)
    for a in range(p):
        for b in range(p):
            idx = list(centre)
            idx[ra] += a - h
            idx[ca] += b - h
            if all(0 <= idx[q] < stack.shape[1 + q] for q in range(3)):
                out[:, a, b] = stack[(slice(None),) + tuple(idx)]
    return out


@pytest.mark.parametrize("plane,half,slice_range", [("coronal", 1, None), ("axial", 2, (4, 15)),
                                                     ("sagittal", 1, (0, 100))])
def test_sampler_equals_loop_reference(plane, half, slice_range):
    target, mask = small_brain()
    affine = rotation_affine()
    cfg = SamplingConfig(half_patch=half, plane=plane, stride0=5, stride_fine=2, slice_range=slice_range)
    got = sample_centres(target, mask, affine, cfg)
    ref = reference_sampler(target, mask, affine, cfg)
    assert len(ref) > 20
    assert [tuple(int(x) for x in row) for row in got] == ref  # same centres, same order


def test_sampler_filters_and_strides_act():
    target, mask = small_brain()
    affine = rotation_affine()
    base = SamplingConfig(stride0=5, stride_fine=2)
    n = len(sample_centres(target, mask, affine, base))
    # each filter removes candidates that the others keep
    assert len(sample_centres(target, mask, affine, SamplingConfig(stride0=5, stride_fine=2, min_nonzero=0))) > n
    assert len(sample_centres(target, mask, affine, SamplingConfig(stride0=5, stride_fine=2, min_sum_fraction=0))) > n
    assert len(sample_centres(target, mask, affine, SamplingConfig(stride0=5, stride_fine=5))) < n
    # the threshold is on the target's own scale: rescaling the target changes nothing
    scaled = sample_centres(target / 255.0, mask, affine, base)
    np.testing.assert_array_equal(scaled, sample_centres(target, mask, affine, base))
    # every kept centre lies in the mask
    c = sample_centres(target, mask, affine, base)
    assert mask[tuple(c.T)].all()


def test_sampling_is_independent_of_array_orientation():
    target, mask = small_brain()
    affine = rotation_affine()
    stack = np.stack([target, np.sqrt(target), -target])
    cfg = SamplingConfig(stride0=4, stride_fine=2, half_patch=1)
    c0 = sample_centres(target, mask, affine, cfg)
    x0 = extract_patches(stack, c0, affine, cfg.plane, 1)
    for perm in [(1, 2, 0), (2, 0, 1), (0, 2, 1)]:
        a = affine.copy()
        a[:, :3] = affine[:, list(perm)]  # new axis q is old axis perm[q]
        t, m = np.transpose(target, perm), np.transpose(mask, perm)
        s = np.stack([np.transpose(ch, perm) for ch in stack])
        c = sample_centres(t, m, a, cfg)
        np.testing.assert_array_equal(c, c0[:, list(perm)])
        np.testing.assert_array_equal(extract_patches(s, c, a, cfg.plane, 1), x0)


@pytest.mark.parametrize("plane,half", [("coronal", 1), ("axial", 2), ("sagittal", 1)])
def test_extraction_equals_naive_slicing_including_border(plane, half):
    rng = np.random.default_rng(3)
    stack = rng.standard_normal((4, 7, 9, 6)).astype(np.float32)
    affine = rotation_affine()
    corners = np.array([[i, j, k] for i in (0, 6) for j in (0, 8) for k in (0, 5)])
    centres = np.vstack([corners, rng.integers(0, [7, 9, 6], size=(40, 3))])
    got = extract_patches(stack, centres, affine, plane, half)
    assert got.shape == (len(centres), 4, 2 * half + 1, 2 * half + 1) and got.dtype == np.float32
    for n, c in enumerate(centres):
        np.testing.assert_array_equal(got[n], naive_patch(stack, c, affine, plane, half))
    # non-contiguous input takes the other path and agrees
    np.testing.assert_array_equal(extract_patches(stack[:, ::-1][:, ::-1], centres, affine, plane, half), got)
    # zero padding: a corner patch has zeros where it sticks out
    assert (got[0][:, :half, :] == 0).all() or (got[0][:, :, :half] == 0).all()
    with pytest.raises(MRHNetError, match="outside the volume"):
        extract_patches(stack, [[7, 0, 0]], affine, plane, half)


def test_streamed_batches_and_mask_centres():
    target, mask = small_brain((12, 14, 10))
    affine = rotation_affine()
    centres = mask_centres(mask)
    assert len(centres) == mask.sum() and mask[tuple(centres.T)].all()
    whole = extract_patches(target, centres, affine)
    parts = [(s, p) for s, p in iter_patches(target, centres, affine, batch_size=37)]
    assert [s for s, _ in parts] == list(range(0, len(centres), 37))
    np.testing.assert_array_equal(np.concatenate([p for _, p in parts]), whole)
    sa = plane_axes(affine, "coronal")[0]
    some = mask_centres(mask, affine, "coronal", (3, 6))
    assert set(some[:, sa].tolist()) <= {3, 4, 5} and len(some) == mask.take(range(3, 6), axis=sa).sum()


def test_patchset_get_shuffle_split():
    affines = [rotation_affine(), rotation_affine(20.0)]
    brains = [small_brain((14, 16, 12), seed) for seed in (1, 2)]
    stacks = [np.stack([t, 2 * t + 1]).astype(np.float32) for t, _ in brains]
    targets = [t.astype(np.float32) for t, _ in brains]
    cfg = SamplingConfig(stride0=3, stride_fine=2)
    centres = [sample_centres(t, m, a, cfg) for (t, m), a in zip(brains, affines)]
    ps = PatchSet(stacks, targets, centres, affines)
    assert len(ps) == sum(len(c) for c in centres)
    x, y = ps.get([0, len(centres[0])])  # first sample of each subject
    np.testing.assert_array_equal(x[0], extract_patches(stacks[0], centres[0][:1], affines[0])[0])
    np.testing.assert_array_equal(x[1], extract_patches(stacks[1], centres[1][:1], affines[1])[0])
    np.testing.assert_array_equal(y[:, 0], x[:, 0])  # target equals channel 0 by construction
    order = ps.shuffle(5).order.copy()
    assert sorted(order) == list(range(len(ps))) and not np.array_equal(order, np.arange(len(ps)))
    np.testing.assert_array_equal(PatchSet(stacks, targets, centres, affines).shuffle(5).order, order)
    train, val = ps.split(10)
    assert len(val) == 10 and len(train) == len(ps) - 10
    np.testing.assert_array_equal(val.order, order[-10:])
    xi, yi = ps[len(ps) - 1]
    xv, yv = val.get([9])
    np.testing.assert_array_equal(xi, xv[0])
    np.testing.assert_array_equal(yi, yv[0])
    got = [b for b in train.batches(64, seed=1)]
    assert sum(len(b[0]) for b in got) == len(train) and got[0][0].shape[1:] == (2, 3, 3)


def test_patchset_from_subjects_and_config_json():
    target, mask = small_brain((12, 14, 10))
    affine = rotation_affine()
    subject = Subject(name="s")
    for role, data in (("t2w", target + 5), ("mt_on", target * 0.5 + 1), ("af", target), ("mask", mask)):
        subject.images[role] = Volume(data.astype(np.float32), affine, role)
    protocol = Protocol([Channel("t2w"), Channel("mt_on")])
    cfg = SamplingConfig(stride0=3, stride_fine=2, validation=5, seed=2)
    ps = PatchSet.from_subjects([subject], "af", protocol, cfg, target_scale=255.0)
    assert len(ps) == len(sample_centres(target, mask, affine, cfg)) > 5
    x, y = ps.get(np.arange(len(ps)))
    info = ps.sample_info(np.arange(len(ps)))
    np.testing.assert_allclose(y[:, 0, 1, 1], target[tuple(info[:, 1:].T)] / 255.0, rtol=1e-6)
    inputs = subject.inputs(protocol)
    np.testing.assert_allclose(x[:, :, 1, 1], inputs[:, info[:, 1], info[:, 2], info[:, 3]].T, rtol=1e-6)
    with pytest.raises(MRHNetError, match="differ from the protocol's"):
        PatchSet.from_subjects([subject], "af", protocol, SamplingConfig(plane="axial"))
    again = SamplingConfig.from_json(cfg.to_json())
    assert again == cfg and json.loads(SamplingConfig(slice_range=(1, 4)).to_json())["slice_range"] == [1, 4]
    with pytest.raises(MRHNetError, match="unknown key"):
        SamplingConfig.from_dict({"stride": 3})
    with pytest.raises(MRHNetError, match="patch plane"):
        SamplingConfig(plane="oblique")
