"""Input normalisation without whole-volume copies.

The network input is the (C, X, Y, Z) stack of a protocol's channels, each divided by its scale group's
divisor (see :class:`~MRHNetLib.data.protocol.Normalisation`). Nothing here builds that stack:

* :func:`channel_views` gives each channel as a view of the subject's own 3D image or 4D shell;
* :func:`channel_scales` computes the divisors by streaming over those views, slab by slab: the
  percentile of a scale group is found exactly (two counting passes over 16-bit digits of an
  order-preserving integer key, then numpy's own linear interpolation), so the divisors are bit for bit
  those of ``np.percentile`` on the concatenated group;
* :class:`ScaledStack` stands for the normalised stack and cuts (M, C) scaled values at any voxels,
  straight from the original arrays, as inference asks for them chunk by chunk.

Memory above the inputs stays bounded by the slab and chunk sizes whatever the volume.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

SLAB_VOXELS = 1 << 22  # voxels of one channel read at a time by the statistics (16 MB of float32)
_DIGIT = 16  # bits per counting pass: two passes resolve a 32-bit key


# ---------------------------------------------------------------------------------------------
# Channels as views


def channel_views(subject, protocol) -> list[np.ndarray]:
    """Each channel of ``protocol`` as a 3D view of ``subject``'s arrays (no copies), in the protocol's
    order; DWI channels take the shell's volumes in the subject's own order."""
    from ..errors import MRHNetError

    views: list[np.ndarray] = []
    used: dict[str, int] = {}
    for ch in protocol.channels:
        arr = subject.channel_volume(ch.role)
        if arr.ndim == 4:
            k = used.get(ch.role, 0)
            if k >= arr.shape[3]:
                raise MRHNetError(f"{ch.role}: model needs more volumes than the subject's {arr.shape[3]}")
            views.append(arr[..., k])
            used[ch.role] = k + 1
        else:
            views.append(arr)
    return views


def masked_slabs(view: np.ndarray, mask: np.ndarray | None, max_voxels: int | None = None) -> Iterator[np.ndarray]:
    """The float32 values of a 3D ``view`` (inside ``mask``; all of them when None), in slabs of about
    ``max_voxels`` (default :data:`SLAB_VOXELS`), in the view's memory order (the order does not matter
    to order statistics and maxima)."""
    max_voxels = int(max_voxels or SLAB_VOXELS)
    perm = tuple(int(a) for a in np.argsort([-abs(s) for s in view.strides], kind="stable"))
    v = view.transpose(perm)
    m = None if mask is None else np.asarray(mask, dtype=bool).transpose(perm)
    step = max(1, max_voxels // max(1, int(np.prod(v.shape[1:]))))
    for i in range(0, v.shape[0], step):
        part = v[i:i + step] if m is None else v[i:i + step][m[i:i + step]]
        yield np.asarray(part, dtype=np.float32).reshape(-1)


# ---------------------------------------------------------------------------------------------
# Exact order statistics by streaming


def sort_keys(values: np.ndarray) -> np.ndarray:
    """uint32 keys whose unsigned order is the numeric order of float32 ``values`` (-0 counts as +0;
    NaN must have been excluded)."""
    bits = (np.asarray(values, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
    return np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))


def from_keys(keys: np.ndarray) -> np.ndarray:
    """The float32 values of :func:`sort_keys` keys."""
    keys = np.asarray(keys, dtype=np.uint32)
    return np.where(keys >> np.uint32(31), keys & np.uint32(0x7FFFFFFF), ~keys).view(np.float32)


def _digit_counts(chunks: Iterable[np.ndarray], prefix: int | None) -> tuple[np.ndarray, bool]:
    """(counts of the high 16-bit digit of every key (``prefix`` None), or of the low digit of the keys
    whose high digit is ``prefix``; whether any value is NaN)."""
    counts = np.zeros(1 << _DIGIT, dtype=np.int64)
    nan = False
    for c in chunks:
        nan = nan or bool(np.isnan(c).any())
        k = sort_keys(c)
        high = k >> np.uint32(_DIGIT)
        digits = high if prefix is None else (k[high == prefix] & np.uint32(0xFFFF))
        counts += np.bincount(digits, minlength=1 << _DIGIT)
    return counts, nan


def order_statistics(chunks: Callable[[], Iterable[np.ndarray]], ranks: Sequence[int]) -> np.ndarray:
    """float32 values at 0-based ``ranks`` of the sorted union of the float32 arrays that ``chunks()``
    yields (called once per pass); all NaN when any value is NaN (as ``np.percentile``). Exact: one
    pass for the high digit, one per distinct high digit of the ranks for the low digit."""
    counts, nan = _digit_counts(chunks(), None)
    if nan:
        return np.full(len(ranks), np.nan, dtype=np.float32)
    cum = np.cumsum(counts)
    ranks = [int(r) for r in ranks]
    if any(r < 0 or r >= cum[-1] for r in ranks):
        raise ValueError(f"ranks {ranks} outside 0..{int(cum[-1]) - 1}")
    high = [int(np.searchsorted(cum, r, side="right")) for r in ranks]
    low_cum = {h: np.cumsum(_digit_counts(chunks(), h)[0]) for h in sorted(set(high))}
    keys = []
    for r, h in zip(ranks, high):
        within = r - (int(cum[h - 1]) if h else 0)
        keys.append((h << _DIGIT) | int(np.searchsorted(low_cum[h], within, side="right")))
    return from_keys(np.array(keys, dtype=np.uint32))


def lerp_percentile(n: int, q: float, order_stat: Callable[[Sequence[int]], np.ndarray]) -> np.float32:
    """``np.percentile(values, q)`` (method "linear", a float ``q``) of ``n`` float32 values given only
    by ``order_stat(ranks)``, computed with numpy's own arithmetic: the same index, the same weight and
    the same float32 interpolation, so the result is bit for bit numpy's."""
    quantile = np.true_divide(q, 100)
    virtual = n * quantile + (1 + quantile * (1 - 1 - 1)) - 1  # numpy's virtual index for alpha = beta = 1
    prev = float(np.floor(virtual))
    if virtual >= n - 1:
        prev = nxt = -1.0
    elif virtual < 0:
        prev = nxt = 0.0
    else:
        nxt = prev + 1
    gamma = float(virtual - prev)
    a, b = order_stat([int(prev) % n, int(nxt) % n])
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


# ---------------------------------------------------------------------------------------------
# Divisors


def group_scale(views: Sequence[np.ndarray], mask: np.ndarray, percentile: float) -> float:
    """The divisor of one scale group: the ``percentile`` of its values inside ``mask`` (all channels
    pooled), or their largest magnitude when that is not positive, or 1 (NaN values give 1, as before)."""
    chunks = lambda: (c for v in views for c in masked_slabs(v, mask))  # noqa: E731
    n = int(np.count_nonzero(mask)) * len(views)
    if n == 0:
        return 1.0
    s = float(lerp_percentile(n, percentile, lambda r: order_statistics(chunks, r)))
    if s > 0:
        return s
    top = float(np.max([np.abs(c).max() for c in chunks() if c.size]))
    return top if top > 0 else 1.0


def channel_scales(views: Sequence[np.ndarray], roles: Sequence[str], mask: np.ndarray, normalisation) -> np.ndarray:
    """One float32 divisor per channel of 3D ``views`` with channel ``roles`` (see
    :class:`~MRHNetLib.data.protocol.Normalisation`); the values of ``np.percentile`` / ``max`` on the
    stacked channels, without stacking them."""
    from .protocol import scale_group

    if normalisation.method == "global_max":
        top = float(np.max([np.max([c.max() for c in masked_slabs(v, None)]) for v in views]))
        return np.full(len(views), top if top > 0 else 1.0, dtype=np.float32)
    groups: dict[str, list[int]] = {}
    for c, role in enumerate(roles):
        groups.setdefault(scale_group(role), []).append(c)
    scales = np.ones(len(views), dtype=np.float32)
    for idx in groups.values():
        scales[idx] = group_scale([views[c] for c in idx], mask, normalisation.percentile)
    return scales


# ---------------------------------------------------------------------------------------------
# The normalised stack, cut on demand


def _read_base(view: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a 1-D read-only array over the memory ``view`` spans, from its lowest address; the element
    step of each axis) so that ``view[i, j, k] == base[(i - o0) * s0 + ...]`` with per-axis origins."""
    item = view.itemsize
    if any(s % item for s in view.strides):
        view = np.ascontiguousarray(view)  # unaligned strides (rare): one copy of this view only
    steps = np.array([s // item for s in view.strides], dtype=np.int64)
    corner = tuple(n - 1 if s < 0 else 0 for n, s in zip(view.shape, steps))
    span = int(np.sum((np.array(view.shape) - 1) * np.abs(steps))) + 1
    base = np.lib.stride_tricks.as_strided(view[corner + (Ellipsis,)], shape=(span,), strides=(item,), writeable=False)
    return base, steps


class ScaledStack:
    """The normalised (C, X, Y, Z) network input, never built: the channels stay views of the subject's
    arrays, and :meth:`gather` cuts scaled values at given voxels (``raw / scale`` in float32, the
    same numbers as dividing the whole stack). Has ``shape`` and ``ndim`` like the array it stands for."""

    def __init__(self, views: Sequence[np.ndarray], scales: np.ndarray):
        shapes = {tuple(v.shape) for v in views}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3:
            raise ValueError(f"channels must be 3D views of one grid, got shapes {sorted(shapes)}")
        self.scales = np.asarray(scales, dtype=np.float32)
        self.shape = (len(views),) + next(iter(shapes))
        self.ndim = 4
        self._bases = [_read_base(v) for v in views]

    def offsets(self, coords: Sequence[np.ndarray], steps: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
        """Element offsets in a base of voxel ``coords`` (three int64 arrays) for per-axis ``steps``."""
        off = np.zeros(np.shape(coords[0]), dtype=np.int64)
        for a in range(3):
            off += (coords[a] - (grid[a] - 1 if steps[a] < 0 else 0)) * steps[a]
        return off

    def gather(self, coords: Sequence[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
        """(M, C) float32 scaled values at voxels ``coords`` (three (M,) int64 arrays, inside the grid)."""
        m = int(np.size(coords[0]))
        out = np.empty((m, self.shape[0]), dtype=np.float32) if out is None else out
        grid = self.shape[1:]
        cache: dict[tuple[int, ...], np.ndarray] = {}
        for c, (base, steps) in enumerate(self._bases):
            key = tuple(int(s) for s in steps)
            if key not in cache:  # channels of one shell share their strides
                cache[key] = self.offsets(coords, steps, grid)
            out[:, c] = base[cache[key]]
        out /= self.scales
        return out


def scaled_stack(subject, protocol) -> ScaledStack:
    """``subject``'s network input for ``protocol`` (what :meth:`Subject.inputs` returns) as a
    :class:`ScaledStack`: views of its arrays and the divisors, no copy of the volume."""
    views = channel_views(subject, protocol)
    roles = [ch.role for ch in protocol.channels]
    return ScaledStack(views, channel_scales(views, roles, subject.mask, protocol.normalisation))
