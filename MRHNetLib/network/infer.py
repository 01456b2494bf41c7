"""Whole-volume inference: virtual-histology maps of a subject from one or more networks.

The result is the original's per-voxel procedure (every brain voxel's own zero-padded P x P patch in
the protocol's plane through the network, the centre of the output kept, the map times the mask),
computed exactly but in chunks of many patches with :class:`~MRHNetLib.network.fastconv.PatchNet`. The
normalised input is never built: patches are cut chunk by chunk from the subject's own arrays and scaled
as they are cut (:mod:`MRHNetLib.data.normalise`), so memory above the inputs stays bounded by the chunk
size whatever the volume size.

API used by the CLI, the Slicer module and the web app: :func:`predict`, :func:`predict_array`, and
from :mod:`~MRHNetLib.network.checks` (no PyTorch there, so GUI processes import it directly)
:func:`check_subject` and :func:`write_maps`.
"""
from __future__ import annotations

import os
import warnings
from typing import Sequence

import numpy as np
import torch

from ..errors import MRHNetError, Progress, as_progress
from .fastconv import PRECISIONS, PatchNet
from ..data.io import Volume
from ..data.normalise import ScaledStack, scaled_stack
from .model import MRHNet
from .checks import check_subject, map_keys, model_path, needs_resampling, output_paths, write_maps  # noqa: F401
from .modelfile import LoadedModel, ModelInfo, load_model
from ..data.orient import canonical_subject, restore
from ..data.protocol import plane_axes

DEFAULT_CHUNK = 2048  # voxels per chunk on the CPU (per worker thread)
CUDA_CHUNK = 65536  # voxels per chunk on a GPU: large products, few kernel launches (~0.8 GB of buffers)


# ---------------------------------------------------------------------------------------------
# Devices and models


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a clear error for an unavailable device."""
    text = str(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise MRHNetError(f"unknown device '{text}' (use auto, cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MRHNetError("device cuda requested but no CUDA GPU is available (use --device cpu or auto)")
    if dev.type not in ("cpu", "cuda"):
        raise MRHNetError(f"device '{text}' is not supported (use auto, cpu or cuda)")
    return dev


def default_chunk(device: torch.device) -> int:
    """Voxels per inference chunk when none is given: small on the CPU (per worker thread), large on a GPU."""
    return CUDA_CHUNK if device.type == "cuda" else DEFAULT_CHUNK


def as_model(model: LoadedModel | str | os.PathLike) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model_path(model))


# ---------------------------------------------------------------------------------------------
# Arrays


def patch_batch(stack: torch.Tensor, centres: torch.Tensor, shape: Sequence[int], axes: tuple[int, int, int],
                half_patch: int) -> torch.Tensor:
    """(P, P, N, C) zero-padded in-plane patches of a (C, X*Y*Z) ``stack`` around flat voxel ``centres``."""
    _, ra, ca = axes
    strides = (shape[1] * shape[2], shape[2], 1)
    coords = [(centres // strides[a]) % shape[a] for a in range(3)]
    off = torch.arange(-half_patch, half_patch + 1, device=centres.device)
    p, n = len(off), len(centres)
    dr = off.view(p, 1, 1)
    dc = off.view(1, p, 1)
    row = coords[ra].view(1, 1, n) + dr
    col = coords[ca].view(1, 1, n) + dc
    valid = (row >= 0) & (row < shape[ra]) & (col >= 0) & (col < shape[ca])  # (P, P, N)
    flat = centres.view(1, 1, n) + dr * strides[ra] + dc * strides[ca]
    flat = torch.where(valid, flat, centres.view(1, 1, n))
    g = stack.index_select(1, flat.reshape(-1))  # (C, P*P*N)
    x = g.view(stack.shape[0], p, p, n).permute(1, 2, 3, 0).contiguous()
    return x.masked_fill_(~valid.unsqueeze(-1), 0.0)


def scaled_patches(stack: ScaledStack, centres: np.ndarray, axes: tuple[int, int, int],
                   half_patch: int) -> np.ndarray:
    """(P, P, N, C) float32 zero-padded in-plane patches around flat voxel ``centres``, cut from the
    subject's own arrays and scaled as they are cut: the numbers :func:`patch_batch` gives on the
    normalised stack. Each distinct voxel of the chunk is read once."""
    shape = tuple(stack.shape[1:])
    _, ra, ca = axes
    coords = np.unravel_index(np.asarray(centres, dtype=np.int64), shape)
    off = np.arange(-half_patch, half_patch + 1)
    p, n = len(off), len(centres)
    row = coords[ra][None, None, :] + off[:, None, None]
    col = coords[ca][None, None, :] + off[None, :, None]
    valid = (row >= 0) & (row < shape[ra]) & (col >= 0) & (col < shape[ca])  # (P, P, N)
    full = [np.broadcast_to(c, (p, p, n)) for c in coords]
    full[ra] = np.where(valid, row, coords[ra])  # outside the volume: the centre, zeroed below
    full[ca] = np.where(valid, col, coords[ca])
    voxels, inverse = np.unique(np.ravel_multi_index(full, shape).reshape(-1), return_inverse=True)
    x = stack.gather(np.unravel_index(voxels, shape))[inverse]
    x[~valid.reshape(-1)] = 0.0
    return x.reshape(p, p, n, -1)


def _run_chunk(pn: PatchNet, cut, centres, single_thread: bool) -> torch.Tensor:
    if single_thread:
        torch.set_num_threads(1)  # per worker thread (OpenMP settings are per thread)
    return pn(cut(centres))


def predict_voxels(net: MRHNet | PatchNet, stack: np.ndarray | torch.Tensor | ScaledStack, centres: np.ndarray,
                   axes: tuple[int, int, int], half_patch: int = 1, *, device: str | torch.device = "cpu",
                   precision: str = "fp32", chunk_voxels: int | None = None, workers: int | None = None,
                   progress=None) -> np.ndarray:
    """Network output (centre of each voxel's patch) at flat voxel indices ``centres`` of a (C, X, Y, Z)
    normalised ``stack`` (an array, a tensor or a :class:`~MRHNetLib.data.normalise.ScaledStack`, whose
    patches are cut and scaled chunk by chunk from the subject's own arrays): (N,) float32.

    Chunks of ``chunk_voxels`` (default: 2,048 on the CPU, 65,536 on a GPU) bound the memory. On the
    CPU, chunks run on ``workers`` threads (default: torch's thread count) that each compute
    single-threaded: no synchronisation inside a chunk, which keeps the throughput when other programs
    share the cores. Progress and cancellation are handled on the calling thread."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    prog = as_progress(progress)
    dev = resolve_device(device)
    pn = net if isinstance(net, PatchNet) else PatchNet(net, dev, precision)
    if stack.ndim != 4:
        raise MRHNetError(f"expected a (C, X, Y, Z) input stack, got shape {tuple(stack.shape)}")
    if stack.shape[0] != pn.in_channels:
        raise MRHNetError(f"input has {stack.shape[0]} channels but the network expects {pn.in_channels}")
    shape = tuple(int(s) for s in stack.shape[1:])
    if isinstance(stack, ScaledStack):
        idx = np.asarray(centres, dtype=np.int64)
        cut = lambda c: torch.from_numpy(scaled_patches(stack, c, axes, half_patch)).to(pn.device)  # noqa: E731
    else:
        if isinstance(stack, np.ndarray):
            stack = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))
        flat = stack.reshape(stack.shape[0], -1).to(pn.device)
        idx = torch.as_tensor(np.asarray(centres, dtype=np.int64), device=pn.device)
        cut = lambda c: patch_batch(flat, c, shape, axes, half_patch)  # noqa: E731
    out = torch.empty(len(idx), dtype=torch.float32, device=pn.device)
    chunk = max(1, int(chunk_voxels or default_chunk(pn.device)))
    total = len(idx)
    starts = list(range(0, total, chunk))
    n_workers = 1 if pn.device.type != "cpu" else max(1, int(workers or torch.get_num_threads()))
    single = n_workers > 1
    pending: deque = deque()
    done = 0
    with ThreadPoolExecutor(n_workers) as pool:
        try:
            for i, start in enumerate(starts):
                c = idx[start:start + chunk]
                if n_workers == 1:
                    out[start:start + len(c)] = pn(cut(c))
                    done += len(c)
                    prog.update(done / total, f"{done:,} / {total:,} voxels")
                    continue
                pending.append((start, len(c), pool.submit(_run_chunk, pn, cut, c, single)))
                while pending and (len(pending) > n_workers or i == len(starts) - 1):
                    s0, n0, fut = pending.popleft()
                    out[s0:s0 + n0] = fut.result()
                    done += n0
                    prog.update(done / total, f"{done:,} / {total:,} voxels")
        finally:
            for _, _, fut in pending:
                fut.cancel()
    return out.cpu().numpy()


def predict_array(net: MRHNet | PatchNet, stack: np.ndarray | torch.Tensor | ScaledStack, mask: np.ndarray,
                  axes: tuple[int, int, int], half_patch: int = 1, *, device: str | torch.device = "cpu",
                  precision: str = "fp32", chunk_voxels: int | None = None, workers: int | None = None,
                  progress=None) -> np.ndarray:
    """(X, Y, Z) map: the network's patch-centre output at every voxel of ``mask``, zero elsewhere.

    ``stack``: (C, X, Y, Z) normalised input (or a :class:`~MRHNetLib.data.normalise.ScaledStack`);
    ``axes``: (slice_axis, row_axis, col_axis) from :func:`~MRHNetLib.data.protocol.plane_axes` (patch rows
    along ``row_axis``, columns along ``col_axis``)."""
    mask = np.asarray(mask, dtype=bool)
    if tuple(mask.shape) != tuple(stack.shape[1:]):
        raise MRHNetError(f"mask shape {mask.shape} differs from the input's {tuple(stack.shape[1:])}")
    centres = np.flatnonzero(mask)
    out = np.zeros(mask.size, dtype=np.float32)
    out[centres] = predict_voxels(net, stack, centres, axes, half_patch, device=device, precision=precision,
                                  chunk_voxels=chunk_voxels, workers=workers, progress=progress)
    return out.reshape(mask.shape)


# ---------------------------------------------------------------------------------------------
# Subjects


def _prepare(subject, info: ModelInfo, adapt_protocol: bool, resample: bool | None, progress: Progress):
    """(working subject, resampled?) for one model: adapted and/or resampled as asked or needed."""
    work = subject
    if adapt_protocol and info.protocol.input_kind == "raw":
        from ..data.adapt import adapt_subject

        work = adapt_subject(work, info.protocol, progress=progress.sub(0.0, 0.5))
    mv = info.protocol.voxel_size_mm
    do = bool(mv) and (resample is True or (resample is None and needs_resampling(subject, info)))
    if resample is True and not mv:
        warnings.warn(f"model for {info.target} records no voxel size; not resampling", stacklevel=3)
    if do:
        from ..data.resample import resample_subject

        progress.update(0.5, f"resampling to {mv:g} mm")
        mask = work.mask  # derive it on the original grid first
        work = resample_subject(work, mv)
        if "mask" not in work.images:
            from ..data.resample import resample_spacing

            m = resample_spacing(subject.reference.with_data(mask.astype(np.float32)), mv, nearest=True)
            work.images["mask"] = m
    progress.update(1.0, "inputs ready")
    return work, do


def predict(subject, models: Sequence[LoadedModel | str | os.PathLike], *, device: str = "auto", progress=None,
            adapt_protocol: bool = False, resample: bool | None = None, precision: str = "fp32",
            chunk_voxels: int | None = None) -> dict[str, Volume]:
    """Virtual-histology maps of ``subject``, one per target, on the subject's own grid.

    Each map is de-normalised to its target's scale and zero outside the mask. Several models of one
    target form an ensemble: ``maps[target]`` is their mean and ``maps[target + "_std"]`` their spread
    (standard deviation across models). ``resample``: None resamples to the model's voxel size only
    when it differs beyond the tolerance, True always (when the model records one), False never
    (a different voxel size is refused). ``adapt_protocol`` re-expresses DWI shells on the model's
    gradient directions (see :mod:`MRHNetLib.data.adapt`). ``precision``: fp32 (exact), tf32 (CUDA) or bf16."""
    if precision not in PRECISIONS:
        raise MRHNetError(f"unknown precision '{precision}' (use {', '.join(PRECISIONS)})")
    if not models:
        raise MRHNetError("no model given")
    prog = as_progress(progress)
    dev = resolve_device(device)
    loaded = [as_model(m) for m in models]
    for m in loaded:
        check_subject(subject, m, adapt_protocol=adapt_protocol, resample=resample)
    canon, transform = canonical_subject(subject)
    if transform is not None:  # networks see one voxel orientation (MRHNetLib.data.orient); maps go back
        maps = predict(canon, loaded, device=device, progress=prog, adapt_protocol=adapt_protocol,
                       resample=resample, precision=precision, chunk_voxels=chunk_voxels)
        return {key: restore(vol, transform, subject.reference) for key, vol in maps.items()}
    ref = subject.reference
    mask = subject.mask
    outputs: dict[str, list[np.ndarray]] = {}
    cache: tuple | None = None
    n = len(loaded)
    for i, m in enumerate(loaded):
        sub = prog.sub(i / n, (i + 1) / n)
        proto = m.info.protocol
        key = (proto.to_json(), adapt_protocol, resample)
        if cache is None or cache[0] != key:
            cache = None  # free the previous stack first
            work, resampled = _prepare(subject, m.info, adapt_protocol, resample, sub.sub(0.0, 0.15))
            sub.update(0.15, f"{m.name}: normalising inputs")
            cache = (key, work, resampled, scaled_stack(work, proto), work.mask)  # views, no copy
        _, work, resampled, stack, wmask = cache
        axes = plane_axes(work.affine, proto.patch_plane)
        pred = predict_array(m.net, stack, wmask, axes, proto.half_patch, device=dev, precision=precision,
                             chunk_voxels=chunk_voxels, progress=sub.sub(0.15, 0.97))
        pred *= np.float32(proto.normalisation.target_scale)
        if resampled:
            from ..data.resample import resample_to

            pred = resample_to(work.reference.with_data(pred), ref).data
        pred = np.where(mask, pred, np.float32(0.0)).astype(np.float32)
        outputs.setdefault(m.info.target, []).append(pred)
        sub.update(1.0, f"{m.name}: done")
    cache = None
    maps: dict[str, Volume] = {}
    for target, preds in outputs.items():
        if len(preds) == 1:
            maps[target] = ref.with_data(preds[0], target)
        else:
            arr = np.stack(preds)
            maps[target] = ref.with_data(arr.mean(axis=0).astype(np.float32), target)
            maps[f"{target}_std"] = ref.with_data(arr.std(axis=0).astype(np.float32), f"{target}_std")
    return maps
