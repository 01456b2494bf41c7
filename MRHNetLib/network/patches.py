"""Training samples: where patches are taken (as the original ``MRH_trainingPrep``) and how they are cut.

Sampling (:func:`sample_centres`), in the protocol's anatomical patch plane (array axes from
:func:`~MRHNetLib.data.protocol.plane_axes`), over an optional range of slices:

* candidate centres lie on a square grid in each slice, starting at ``half_patch`` and ending
  ``half_patch`` voxels before the slice edge, with step ``stride0`` (20, as the original);
* slices with more brain get the finer step ``stride_fine`` (6; the original used 6 or 8). Rule: a
  slice is "rich" when its brain-mask area is at least ``fine_fraction`` (0.5) of the largest
  brain-mask area of any slice in the range;
* a centre is kept when it lies in the brain mask, the target patch has at least ``min_nonzero`` (4)
  non-zero voxels, and the target patch sum is at least ``min_sum_fraction`` times the target's robust
  maximum (its ``robust_percentile`` (99.9th) percentile over non-zero voxels in the mask). The
  original's threshold was a sum of 30 on 0-255 maps, so the default fraction is 30/255.

Extraction (:func:`extract_patches`) cuts (N, C, P, P) float32 patches straight from the (C, X, Y, Z)
arrays in memory, zero outside the volume; rows and columns follow ``plane_axes`` order. Nothing is
written to disk and no volume's full set of patches is materialised: :class:`PatchSet` gathers the
batches that training asks for. :func:`mask_centres` gives every voxel of a mask (inference mode).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Iterator, Sequence

import numpy as np

from ..errors import MRHNetError
from ..data.protocol import PLANES, plane_axes

ORIGINAL_SUM_THRESHOLD = 30.0  # on 0-255 uint8 maps
ORIGINAL_SCALE = 255.0


@dataclass
class SamplingConfig:
    """All parameters of training-sample preparation (JSON-able, stored with a trained model).

    ``slice_range``: (first, stop) slice indices along the patch plane's normal, Python style (stop
    excluded); None for all slices. ``validation``: how many samples (the last ones after shuffling)
    are held out, as the original's last 1000."""

    half_patch: int = 1
    plane: str = "coronal"
    stride0: int = 20
    stride_fine: int = 6
    fine_fraction: float = 0.5
    slice_range: tuple[int, int] | None = None
    min_sum_fraction: float = ORIGINAL_SUM_THRESHOLD / ORIGINAL_SCALE
    robust_percentile: float = 99.9
    min_nonzero: int = 4
    validation: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.plane not in PLANES:
            raise MRHNetError(f"unknown patch plane '{self.plane}' (use {', '.join(PLANES)})")
        if self.half_patch < 0 or self.stride0 < 1 or self.stride_fine < 1:
            raise MRHNetError("half_patch must be >= 0 and strides >= 1")
        if self.slice_range is not None:
            self.slice_range = (int(self.slice_range[0]), int(self.slice_range[1]))

    @property
    def patch_size(self) -> int:
        return 2 * self.half_patch + 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["slice_range"] = list(self.slice_range) if self.slice_range is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SamplingConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise MRHNetError(f"sampling settings: unknown key(s) {', '.join(sorted(unknown))}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "SamplingConfig":
        return cls.from_dict(json.loads(text))


# ---------------------------------------------------------------------------------------------
# Where patches are taken


def robust_max(target: np.ndarray, mask: np.ndarray | None = None, percentile: float = 99.9) -> float:
    """The ``percentile`` of the non-zero target values (inside ``mask``); 1.0 when there are none."""
    values = target[mask] if mask is not None else target.reshape(-1)
    values = values[values != 0]
    if values.size == 0:
        return 1.0
    top = float(np.percentile(np.abs(values), percentile))
    return top if top > 0 else 1.0


def sum_threshold(target: np.ndarray, mask: np.ndarray | None, config: SamplingConfig) -> float:
    """The minimum target patch sum on the target's own scale."""
    return config.min_sum_fraction * robust_max(target, mask, config.robust_percentile)


def _slices(n: int, slice_range: tuple[int, int] | None) -> range:
    if slice_range is None:
        return range(n)
    a, b = slice_range
    if not (0 <= a < b):
        raise MRHNetError(f"slice range {a}-{b} is empty or negative")
    if a >= n:
        raise MRHNetError(f"slice range {a}-{b} lies outside the volume's {n} slices")
    return range(a, min(b, n))


def _grid(n: int, half: int, stride: int) -> np.ndarray:
    return np.arange(half, n - half, stride)


def slice_strides(mask_view: np.ndarray, slices: range, config: SamplingConfig) -> dict[int, int]:
    """The grid step of each slice (``mask_view`` is (slice, row, col))."""
    area = {s: int(mask_view[s].sum()) for s in slices}
    top = max(area.values(), default=0)
    return {s: (config.stride_fine if top > 0 and a >= config.fine_fraction * top else config.stride0)
            for s, a in area.items()}


def sample_centres(target: np.ndarray, mask: np.ndarray, affine: np.ndarray,
                   config: SamplingConfig | None = None) -> np.ndarray:
    """Patch centres for training, as (N, 3) voxel indices (i, j, k) of the volume, in slice, row,
    column order (see the module docstring for the rule)."""
    config = config or SamplingConfig()
    target = np.asarray(target)
    mask = np.asarray(mask, dtype=bool)
    if target.shape != mask.shape or target.ndim != 3:
        raise MRHNetError(f"target shape {target.shape} and mask shape {mask.shape} must be one 3D grid")
    axes = plane_axes(affine, config.plane)
    tv = np.transpose(target, axes).astype(np.float64)
    mv = np.transpose(mask, axes)
    h, p = config.half_patch, config.patch_size
    threshold = sum_threshold(target, mask, config)
    n_s, n_r, n_c = tv.shape
    slices = _slices(n_s, config.slice_range)
    strides = slice_strides(mv, slices, config)
    windows_pad = np.pad(tv, ((0, 0), (h, h), (h, h)))
    found: list[np.ndarray] = []
    for s in slices:
        rows, cols = _grid(n_r, h, strides[s]), _grid(n_c, h, strides[s])
        if not len(rows) or not len(cols):
            continue
        r, c = (g.reshape(-1) for g in np.meshgrid(rows, cols, indexing="ij"))
        inside = mv[s, r, c]
        r, c = r[inside], c[inside]
        if not len(r):
            continue
        # window of centre (r, c) in the padded slice starts at (r, c): rows r-h..r+h of the original
        win = windows_pad[s][r[:, None, None] + np.arange(p)[None, :, None], c[:, None, None] + np.arange(p)[None, None, :]]
        keep = (win.sum(axis=(1, 2)) >= threshold) & ((win != 0).sum(axis=(1, 2)) >= config.min_nonzero)
        if keep.any():
            found.append(np.stack([np.full(int(keep.sum()), s), r[keep], c[keep]], axis=1))
    view = np.concatenate(found) if found else np.zeros((0, 3), dtype=np.int64)
    out = np.empty_like(view)
    out[:, list(axes)] = view  # view column q is array axis axes[q]
    return out.astype(np.int64)


def mask_centres(mask: np.ndarray, affine: np.ndarray | None = None, plane: str = "coronal",
                 slice_range: tuple[int, int] | None = None) -> np.ndarray:
    """Every voxel of ``mask`` as a centre (inference mode), (N, 3) indices in array order; with
    ``affine`` and ``slice_range`` only the slices in that range of the ``plane``."""
    mask = np.asarray(mask, dtype=bool)
    if slice_range is not None:
        if affine is None:
            raise MRHNetError("mask_centres: a slice range needs the affine to find the slice axis")
        axis = plane_axes(affine, plane)[0]
        keep = np.zeros(mask.shape[axis], dtype=bool)
        keep[list(_slices(mask.shape[axis], slice_range))] = True
        shape = [1, 1, 1]
        shape[axis] = -1
        mask = mask & keep.reshape(shape)
    return np.argwhere(mask).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Cutting patches


def patch_indices(centres: np.ndarray, shape: Sequence[int], axes: tuple[int, int, int],
                  half_patch: int) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """Index arrays (each (N, P, P)) into a 3D grid for the patches around ``centres``, clipped into
    the volume, and the (N, P, P) mask of positions that really are inside it."""
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 3)
    _, ra, ca = axes
    off = np.arange(-half_patch, half_patch + 1)
    n, p = len(centres), len(off)
    idx = [np.broadcast_to(centres[:, a, None, None], (n, p, p)) for a in range(3)]
    idx[ra] = centres[:, ra, None, None] + off[None, :, None] + np.zeros((1, 1, p), dtype=np.int64)
    idx[ca] = centres[:, ca, None, None] + off[None, None, :] + np.zeros((1, p, 1), dtype=np.int64)
    valid = np.ones((n, p, p), dtype=bool)
    for a in range(3):
        valid &= (idx[a] >= 0) & (idx[a] < shape[a])
    clipped = tuple(np.clip(idx[a], 0, shape[a] - 1) for a in range(3))
    return clipped, valid  # type: ignore[return-value]


def extract_patches(stack: np.ndarray, centres: np.ndarray, affine: np.ndarray, plane: str = "coronal",
                    half_patch: int = 1) -> np.ndarray:
    """(N, C, P, P) float32 patches of a (C, X, Y, Z) ``stack`` (a 3D array counts as one channel)
    around (N, 3) voxel ``centres``, in the ``plane``; zero outside the volume."""
    stack = np.asarray(stack)
    if stack.ndim == 3:
        stack = stack[None]
    if stack.ndim != 4:
        raise MRHNetError(f"extract_patches: expected a (C, X, Y, Z) array, got shape {stack.shape}")
    shape = stack.shape[1:]
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 3)
    if len(centres) and ((centres < 0).any() or (centres >= np.asarray(shape)).any()):
        raise MRHNetError(f"extract_patches: a centre lies outside the volume of shape {tuple(shape)}")
    (i, j, k), valid = patch_indices(centres, shape, plane_axes(affine, plane), half_patch)
    n, p = valid.shape[0], valid.shape[1]
    if stack.flags.c_contiguous:
        flat = np.ravel_multi_index((i, j, k), shape).reshape(-1)
        out = np.take(stack.reshape(stack.shape[0], -1), flat, axis=1).reshape(stack.shape[0], n, p, p)
    else:
        out = stack[:, i, j, k]
    out = np.ascontiguousarray(np.moveaxis(out, 0, 1), dtype=np.float32)
    out *= valid[:, None]
    return out


def iter_patches(stack: np.ndarray, centres: np.ndarray, affine: np.ndarray, plane: str = "coronal",
                 half_patch: int = 1, batch_size: int = 4096) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, patches)`` for consecutive batches of ``centres`` (streamed; inference mode)."""
    for start in range(0, len(centres), batch_size):
        yield start, extract_patches(stack, centres[start:start + batch_size], affine, plane, half_patch)


class PatchSet:
    """Training samples of several subjects, cut on demand.

    ``stacks``: per subject the (C, X, Y, Z) normalised input; ``targets``: per subject the (X, Y, Z)
    target (already scaled as training wants); ``centres``: per subject (N_i, 3) voxel indices;
    ``affines``: per subject its voxel-to-RAS affine (for the patch plane). Arrays are referenced, not
    copied. Samples are numbered 0..len-1 in :attr:`order` (subject by subject until :meth:`shuffle`).
    ``get(indices)`` returns ``(x (B, C, P, P), y (B, 1, P, P))`` float32."""

    def __init__(self, stacks: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                 centres: Sequence[np.ndarray], affines: Sequence[np.ndarray], half_patch: int = 1,
                 plane: str = "coronal"):
        if not (len(stacks) == len(targets) == len(centres) == len(affines)):
            raise MRHNetError("PatchSet: stacks, targets, centres and affines must list the same subjects")
        channels = {s.shape[0] for s in stacks}
        if len(channels) > 1:
            raise MRHNetError(f"PatchSet: subjects have different channel counts {sorted(channels)}")
        for s, t in zip(stacks, targets):
            if s.shape[1:] != t.shape:
                raise MRHNetError(f"PatchSet: input grid {s.shape[1:]} differs from target grid {t.shape}")
        self.stacks, self.targets = list(stacks), list(targets)
        self.centres = [np.asarray(c, dtype=np.int64).reshape(-1, 3) for c in centres]
        self.affines = [np.asarray(a, dtype=float) for a in affines]
        self.half_patch, self.plane = int(half_patch), plane
        subj = np.concatenate([np.full(len(c), n, dtype=np.int64) for n, c in enumerate(self.centres)]) \
            if self.centres else np.zeros(0, dtype=np.int64)
        local = np.concatenate([np.arange(len(c), dtype=np.int64) for c in self.centres]) \
            if self.centres else np.zeros(0, dtype=np.int64)
        self._samples = np.stack([subj, local], axis=1)  # (subject, centre) of every sample
        self.order = np.arange(len(self._samples))

    @classmethod
    def from_subjects(cls, subjects: Sequence, target: str, protocol, config: SamplingConfig | None = None,
                      target_scale: float = 1.0) -> "PatchSet":
        """Inputs normalised per ``protocol``, targets divided by ``target_scale``, centres sampled per
        ``config`` (plane and half-patch from ``protocol``); shuffled with ``config.seed``."""
        config = config or SamplingConfig(half_patch=protocol.half_patch, plane=protocol.patch_plane)
        if (config.plane, config.half_patch) != (protocol.patch_plane, protocol.half_patch):
            raise MRHNetError(f"sampling settings ({config.plane}, half patch {config.half_patch}) differ from the "
                              f"protocol's ({protocol.patch_plane}, half patch {protocol.half_patch})")
        stacks, targets, centres, affines = [], [], [], []
        for s in subjects:
            t = s.target(target)
            c = sample_centres(t, s.mask, s.affine, config)
            stacks.append(s.inputs(protocol))
            targets.append((t / target_scale).astype(np.float32))
            centres.append(c)
            affines.append(s.affine)
        ps = cls(stacks, targets, centres, affines, protocol.half_patch, protocol.patch_plane)
        return ps.shuffle(config.seed)

    def __len__(self) -> int:
        return len(self.order)

    @property
    def n_channels(self) -> int:
        return int(self.stacks[0].shape[0]) if self.stacks else 0

    def _view(self, order: np.ndarray) -> "PatchSet":
        new = object.__new__(PatchSet)
        new.__dict__.update(self.__dict__)
        new.order = order
        return new

    def shuffle(self, seed: int = 0) -> "PatchSet":
        """Shuffle the sample order in place (reproducibly for ``seed``); returns self."""
        self.order = self.order[np.random.default_rng(seed).permutation(len(self.order))]
        return self

    def split(self, n_validation: int = 1000) -> tuple["PatchSet", "PatchSet"]:
        """(training, validation): the last ``n_validation`` samples (of the current order) held out."""
        n_validation = int(min(max(n_validation, 0), len(self)))
        cut = len(self) - n_validation
        return self._view(self.order[:cut]), self._view(self.order[cut:])

    def sample_info(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """(B, 4) rows (subject, i, j, k) of the given samples."""
        rows = self._samples[self.order[np.asarray(indices, dtype=np.int64)]]
        out = np.empty((len(rows), 4), dtype=np.int64)
        out[:, 0] = rows[:, 0]
        for n in np.unique(rows[:, 0]):
            sel = rows[:, 0] == n
            out[sel, 1:] = self.centres[n][rows[sel, 1]]
        return out

    def get(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inputs (B, C, P, P) and targets (B, 1, P, P) of samples ``indices`` (positions in this set)."""
        info = self.sample_info(indices)
        p = 2 * self.half_patch + 1
        x = np.empty((len(info), self.n_channels, p, p), dtype=np.float32)
        y = np.empty((len(info), 1, p, p), dtype=np.float32)
        for n in np.unique(info[:, 0]):
            sel = info[:, 0] == n
            c = info[sel, 1:]
            x[sel] = extract_patches(self.stacks[n], c, self.affines[n], self.plane, self.half_patch)
            y[sel] = extract_patches(self.targets[n], c, self.affines[n], self.plane, self.half_patch)
        return x, y

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """One sample ``(x (C, P, P), y (1, P, P))`` (torch ``Dataset`` style)."""
        x, y = self.get([index])
        return x[0], y[0]

    def batches(self, batch_size: int = 128, seed: int | None = None,
                drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(x, y)`` batches in this set's order, or in a fresh random order for ``seed``."""
        pos = np.arange(len(self)) if seed is None else np.random.default_rng(seed).permutation(len(self))
        for start in range(0, len(pos), batch_size):
            chunk = pos[start:start + batch_size]
            if drop_last and len(chunk) < batch_size:
                break
            yield self.get(chunk)
