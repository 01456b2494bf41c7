"""Simulated multi-contrast mouse brains with ground-truth histology (the embedded default data).

A simulated subject is built in three steps:

1. **Anatomy -> tissue.** Tissue properties per voxel (:class:`~MRHNetLib.simulation.tissue.Tissue`) are derived
   from the real virtual-histology maps shipped in ``Resources/anatomy/`` (see its README): the brain's
   own neurofilament map (``C1`` or ``R2``) gives axon density and, through its structure tensor, the
   fibre orientation (along tracts; in grey matter across the layers) and coherence; the
   autofluorescence map (R3) and the Nissl map give cell density, fluid spaces and how strongly axons
   are myelinated; smooth random fields, seeded by the brain's
   name, add the variation that no map determines (myelin per axon, dispersion, fixation, pigment).
   A name such as ``C1-d2`` applies a smooth random deformation (number 2) to brain C1's anatomy, so
   more brains than the two anatomy sources can be made. ``size="small"`` builds a procedural brain
   instead (cortex, a callosum-like arch, two longitudinal tracts, ventricles, deep grey matter) for
   fast tests.
2. **Tissue -> MRI** (:mod:`MRHNetLib.simulation.tissue`, ex vivo 7 T values with their sources): T2-weighted
   RARE, MT-on / MT-off, and DWI shells at the b-values and directions of a
   :class:`~MRHNetLib.data.protocol.Protocol` (default: per shell 2 b0 + 30 directions at b = 2000 and 5000
   s/mm^2). A smooth receive-coil profile multiplies every image, then Rician noise (Gudbjartsson &
   Patz, Magn Reson Med 1995;34:910-4) is added; FA is fitted from the noisy b2000 shell as the
   original pipeline does.
3. **Tissue -> histology** (:func:`MRHNetLib.simulation.tissue.histology`): AF, NF and MBP maps on a 0..255 scale.

Everything is deterministic for a given brain name and seed: the brain's tissue depends on its name,
the noise on ``seed`` too.
"""
from __future__ import annotations

import functools
import json
import re
import zlib
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import MRHNetError, as_progress
from ..data.io import Gradients, Volume, rotation_of
from ..data.protocol import DWI_ROLES, Protocol, default_protocol, plane_axes
from ..data.subject import DWI, Subject
from .shift import MISREGISTRATION_LENGTH_MM, STAIN_LENGTH_MM, Shift, displacement_field, stain_response, warp
from .tissue import AXON_MAX, CELLS_MAX, MYELIN_MAX, PHYSICS, ExVivo7T, Tissue, dwi_signal, histology, \
    mt_signals, t2w_signal

SIZES = {"small": (24, 24, 12), "medium": (100, 140, 64), "full": (200, 280, 128)}
SMALL_VOXEL_MM = 0.125
SOURCES = {"C1": "nf_brain_C1.nii.gz", "R2": "nf_brain_R2.nii.gz"}
AF_SOURCE, NISSL_SOURCE = "af_brain_R3.nii.gz", "nissl.nii.gz"
DEFAULT_SNR = 40.0
DEFAULT_NOISE = 1.0 / DEFAULT_SNR  # Rician sigma relative to the median brain signal of each unweighted image
SIGNAL_SCALE = 1000.0  # signal of free water at full recovery
MASK_LEVEL = 20.0  # NF value (0..255) that separates brain from the halo of the anatomy maps
DEFORM_MM = 0.12  # standard deviation (mm) of the random displacement of a deformed variant
# Grey matter (myelin below GREY_MYELIN of its maximum): neurites run radially (across the cortical layers),
# as fixed-cortex DTI shows, and their alignment (1 - dispersion) is GREY_ALIGNMENT times what the same
# coherence and axon density give in white matter: fixed grey matter FA about 0.1-0.15
# (calibration.REFERENCE_CONTRASTS["fa_grey"]).
GREY_MYELIN = 0.3
GREY_ALIGNMENT = 0.6
_BRAIN_RE = re.compile(r"^(C1|R2)(?:-d([0-9]+))?$")


# ---------------------------------------------------------------------------------------------
# Names, seeds and random fields


def parse_brain(name: str) -> tuple[str, int]:
    """``"C1"`` -> ("C1", 0); ``"R2-d3"`` -> ("R2", 3). Unknown names raise :class:`MRHNetError`."""
    m = _BRAIN_RE.match(str(name))
    if not m:
        raise MRHNetError(f"unknown simulated brain '{name}' (use C1 or R2, optionally with a deformation "
                          f"number such as C1-d1)")
    return m.group(1), int(m.group(2) or 0)


def _rng(*key: int | str) -> np.random.Generator:
    ints = [k if isinstance(k, int) else zlib.crc32(k.encode()) for k in key]
    return np.random.default_rng(np.random.SeedSequence(ints))


def smooth_field(shape: tuple[int, ...], spacing: np.ndarray, length_mm: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth Gaussian random field of unit standard deviation and correlation length about
    ``length_mm``: white noise on a coarse lattice (step ``length_mm / 2``) spread by a separable Gaussian
    kernel, axis by axis (cheap at any size)."""
    step = length_mm / 2
    weights = []
    for n, sp in zip(shape, spacing):
        x = (np.arange(n) + 0.5) * sp
        nodes = np.arange(-2 * step, n * sp + 2 * step + 1e-9, step)
        w = np.exp(-0.5 * ((x[:, None] - nodes[None, :]) / step) ** 2)
        weights.append((w / w.sum(axis=1, keepdims=True)).astype(np.float32))
    field = rng.standard_normal(tuple(w.shape[1] for w in weights), dtype=np.float32)
    for k, w in enumerate(weights):
        field = np.ascontiguousarray(np.moveaxis(np.tensordot(w, np.moveaxis(field, k, 0), axes=(1, 0)), 0, k))
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


# ---------------------------------------------------------------------------------------------
# Anatomy maps on the output grid


def _resolve_size(size: str | tuple[int, int, int]) -> tuple[str, tuple[int, int, int]]:
    if isinstance(size, str):
        if size not in SIZES:
            raise MRHNetError(f"unknown phantom size '{size}' (use {', '.join(SIZES)} or a shape X,Y,Z)")
        return size, SIZES[size]
    shape = tuple(int(s) for s in size)
    if len(shape) != 3 or min(shape) < 4:
        raise MRHNetError(f"phantom shape {size} must be three sizes of at least 4 voxels")
    return "shape", shape  # type: ignore[return-value]


@functools.lru_cache(maxsize=4)
def _load_anatomy(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A shipped anatomy map as float32 (read-only, cached: about 29 MB each) and its affine."""
    import nibabel as nib

    from ..resources import resource

    img = nib.load(str(resource("anatomy", name)))
    data = np.asarray(img.dataobj, dtype=np.float32)
    data.flags.writeable = False
    return data, np.asarray(img.affine, dtype=float)


@functools.lru_cache(maxsize=2)
def _source_brain(source: str) -> np.ndarray:
    """The masked NF map of an anatomy source (read-only, cached)."""
    nf, _ = _load_anatomy(SOURCES[source])
    out = (nf * source_mask(nf)).astype(np.float32)
    out.flags.writeable = False
    return out


def _grid_affine(src_affine: np.ndarray, src_shape: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Affine of a grid of ``shape`` covering the same field of view as the source grid."""
    f = np.asarray(src_shape, dtype=float) / np.asarray(shape, dtype=float)
    affine = np.array(src_affine, dtype=float)
    affine[:3, :3] = src_affine[:3, :3] @ np.diag(f)
    affine[:3, 3] = src_affine[:3, :3] @ ((f - 1) / 2) + src_affine[:3, 3]
    return affine


def _sample_maps(maps: list[np.ndarray], shape: tuple[int, int, int], deform: int, source: str,
                 src_spacing: float = 0.0625) -> list[np.ndarray]:
    """Resample source maps onto ``shape`` (same field of view), through a smooth random deformation
    when ``deform`` > 0; anti-aliased by a Gaussian when shrinking."""
    src_shape = maps[0].shape
    f = np.asarray(src_shape, dtype=float) / np.asarray(shape, dtype=float)
    if deform == 0 and np.allclose(f, 1.0):
        return maps
    fi = np.round(f).astype(int)
    if deform == 0 and np.allclose(f, fi):  # whole-number shrink: mean over blocks (exact box filter)
        return [m.reshape(shape[0], fi[0], shape[1], fi[1], shape[2], fi[2]).mean(axis=(1, 3, 5), dtype=np.float32)
                for m in maps]
    pre = max([p for p in (1, 2, 4, 8) if np.all(f >= 2 * p) and all(n % p == 0 for n in src_shape)])
    if pre > 1:  # shrink by whole blocks first: cheaper smoothing below, same result up to the filter
        maps = [m.reshape(src_shape[0] // pre, pre, src_shape[1] // pre, pre, src_shape[2] // pre, pre)
                .mean(axis=(1, 3, 5), dtype=np.float32) for m in maps]
        return _sample_maps(maps, shape, deform, source, src_spacing * pre)
    coords = list(np.meshgrid(*[(np.arange(n, dtype=np.float32) + 0.5) * fk - 0.5 for n, fk in zip(shape, f)],
                              indexing="ij"))
    if deform:
        rng = _rng("deform", source, deform)
        spacing = src_spacing * f
        for k in range(3):
            coords[k] += smooth_field(shape, spacing, 2.0, rng) * (DEFORM_MM / src_spacing)
    sigma = np.where(f > 1, 0.4 * f, 0.0)
    out = []
    for m in maps:
        src = ndimage.gaussian_filter(m, sigma) if sigma.any() else m
        out.append(ndimage.map_coordinates(src, coords, order=1, mode="constant", cval=0.0).astype(np.float32))
    return out


def _fill(values: np.ndarray, valid: np.ndarray, inside: np.ndarray, sigma_vox: np.ndarray) -> np.ndarray:
    """``values`` where ``valid`` (a 0..1 weight), elsewhere inside the brain a normalised-convolution
    estimate from nearby valid voxels (the AF and Nissl brains do not cover brain C1 / R2 exactly)."""
    num = ndimage.gaussian_filter(values * valid, sigma_vox)
    den = ndimage.gaussian_filter(valid, sigma_vox)
    fallback = float(np.median(values[valid > 0.5])) if (valid > 0.5).any() else 0.0
    smooth = np.where(den > 1e-3, num / np.maximum(den, 1e-3), fallback)
    w = np.clip(valid, 0, 1)
    out = np.where(inside, w * np.where(valid > 1e-3, values / np.maximum(valid, 1e-3), 0) + (1 - w) * smooth, 0)
    return out.astype(np.float32)


def source_mask(nf: np.ndarray) -> np.ndarray:
    """Brain mask of an anatomy NF map: above the faint halo (values 1-20) that surrounds the brain in
    the original maps, holes filled, specks opened away."""
    mask = ndimage.binary_opening(nf > MASK_LEVEL, iterations=1)
    return ndimage.binary_fill_holes(mask)


def structure_axes(image: np.ndarray, spacing: np.ndarray, index: np.ndarray, sigma_d_mm: float = 0.08,
                   sigma_i_mm: float = 0.2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ridge, across, coherence) of ``image``'s structure tensor at the flat voxel ``index``.

    ``ridge`` is the direction of least intensity change (a bright tract's axis), ``across`` the direction of
    most change (across cortical layers: radial), both (N, 3) unit vectors in the voxel-axis frame (physical
    units). Coherence (l_max - l_min) / (l_max + l_min) is 0 where the neighbourhood is isotropic and near 1
    in tracts and layers."""
    spacing = np.asarray(spacing, dtype=float)
    sd = np.maximum(sigma_d_mm / spacing, 0.7)
    si = np.maximum(sigma_i_mm / spacing, 1.0)
    grads = []
    for k in range(3):
        order = [0, 0, 0]
        order[k] = 1
        grads.append(ndimage.gaussian_filter(image, sd, order=order) / spacing[k])
    tensor = np.empty((len(index), 3, 3), dtype=np.float32)
    for k in range(3):
        for m in range(k, 3):
            j = ndimage.gaussian_filter(grads[k] * grads[m], si).reshape(-1)[index]
            tensor[:, k, m] = j
            tensor[:, m, k] = j
    del grads
    evals, evecs = np.linalg.eigh(tensor)
    lo, hi = evals[:, 0], evals[:, 2]
    coherence = np.clip((hi - lo) / np.maximum(hi + lo, 1e-12), 0, 1)
    return evecs[:, :, 0].astype(np.float32), evecs[:, :, 2].astype(np.float32), coherence.astype(np.float32)


def structure_orientation(image: np.ndarray, spacing: np.ndarray, index: np.ndarray,
                          sigma_d_mm: float = 0.08, sigma_i_mm: float = 0.2,
                          along: str = "ridge") -> tuple[np.ndarray, np.ndarray]:
    """(direction, coherence) of :func:`structure_axes`: ``along="ridge"`` the direction of least intensity
    change (a tract's axis), ``"gradient"`` the direction of most change (across cortical layers)."""
    if along not in ("ridge", "gradient"):
        raise MRHNetError(f"unknown orientation '{along}' (use ridge or gradient)")
    ridge, across, coherence = structure_axes(image, spacing, index, sigma_d_mm, sigma_i_mm)
    return (ridge if along == "ridge" else across), coherence


def _tissue_from_maps(shape: tuple[int, int, int], spacing: np.ndarray, affine: np.ndarray, partial: np.ndarray,
                      nf: np.ndarray, af: np.ndarray, nissl: np.ndarray, direction: np.ndarray,
                      coherence: np.ndarray, index: np.ndarray, key: str, across: np.ndarray | None = None) -> Tissue:
    """Tissue properties from neurofilament, autofluorescence and Nissl maps (0..1, at ``index``).

    * free water: where both NF and AF are dark (ventricles, surface fluid);
    * axons: rising with NF; myelin: axons times a myelination ratio, higher in large tracts (smoothed
      axon density), where AF is dark, and varied by a random field; cell bodies: the Nissl map;
    * fibre direction: ``direction`` (the NF map's ridges: tract axes), or in grey matter ``across`` (the
      direction across the NF map's layers: radial in cortex) where given;
    * dispersion: low where the structure tensor is coherent *and* axons are dense, higher in grey matter
      (alignment times ``GREY_ALIGNMENT``);
    * r2_extra and lipofuscin: random fields no other property explains."""
    rng = _rng("tissue", key)
    fields = [smooth_field(shape, spacing, length, rng).reshape(-1)[index]
              for length in (0.8, 0.8, 0.5, 1.2, 1.0)]
    water = 0.95 * _sigmoid((0.30 - nf) / 0.04) * _sigmoid((0.35 - af) / 0.05)
    # fluid only inside the brain (ventricles): the dark rim of the maps at the surface is partial volume
    inner = np.zeros(int(np.prod(shape)), dtype=bool)
    inner[index] = partial >= 0.5
    depth = ndimage.distance_transform_edt(inner.reshape(shape), sampling=spacing).reshape(-1)[index]
    water = water * _smoothstep((depth - 0.1) / 0.2)
    a_rel = np.clip((nf - 0.15) / 0.75, 0, 1)
    tract = np.zeros(int(np.prod(shape)), dtype=np.float32)
    tract[index] = a_rel
    tract = _smoothstep((ndimage.gaussian_filter(tract.reshape(shape), 0.15 / spacing).reshape(-1)[index] - 0.35) / 0.4)
    ratio = np.clip(0.3 + 0.45 * tract + 0.5 * (0.5 - af) + 0.25 * fields[0], 0.05, 1.0)
    axon = AXON_MAX * a_rel * (1 - water)
    myelin = MYELIN_MAX * a_rel ** 1.3 * ratio * (1 - water)
    cells = CELLS_MAX * np.clip(nissl * (1 + 0.12 * fields[1]), 0, 1) * (1 - water)
    dispersion = np.clip(1 - coherence * (0.45 + 0.55 * _smoothstep(a_rel / 0.6)) + 0.15 * fields[2], 0.03, 1.0)
    grey = myelin / MYELIN_MAX < GREY_MYELIN
    dispersion = np.where(grey, 1 - GREY_ALIGNMENT * (1 - dispersion), dispersion)
    if across is not None:
        direction = np.where(grey[:, None], across, direction)
    world = (direction @ rotation_of(affine).T.astype(np.float32))
    world /= np.maximum(np.linalg.norm(world, axis=1, keepdims=True), 1e-6)
    f32 = lambda x: np.asarray(x, dtype=np.float32)  # noqa: E731
    return Tissue(shape, index, f32(axon), f32(myelin), f32(cells), f32(water), f32(world), f32(dispersion),
                  f32(0.0025 * fields[3]), f32(np.clip(0.4 + 0.2 * fields[4], 0, 1)), f32(partial))


def _hidden_key(brain: str, hidden: int) -> str:
    """Seed key of a brain's hidden random tissue fields: its name, or a redraw number ``hidden`` > 0."""
    return brain if not hidden else f"{brain}~hidden{int(hidden)}"


def anatomy_tissue(brain: str, shape: tuple[int, int, int], progress=None, hidden: int = 0) -> tuple[Tissue, np.ndarray]:
    """Tissue of a real-anatomy brain (``C1``, ``R2``, ``C1-d1``, ...) on a grid of ``shape`` covering
    the anatomy's field of view; returns (tissue, affine). ``hidden`` > 0 redraws the random tissue fields."""
    progress = as_progress(progress)
    source, deform = parse_brain(brain)
    _, src_affine = _load_anatomy(SOURCES[source])
    nf = _source_brain(source)
    af, _ = _load_anatomy(AF_SOURCE)
    nissl, _ = _load_anatomy(NISSL_SOURCE)
    progress.update(0.2, "anatomy read")
    src_shape = nf.shape
    brain_mask = (nf > 0).astype(np.float32)
    af_valid = (af > 0).astype(np.float32)
    ns_valid = (nissl > 10).astype(np.float32)
    nf, af, nissl, brain_mask, af_valid, ns_valid = _sample_maps(
        [nf, af * af_valid, nissl * ns_valid, brain_mask, af_valid, ns_valid], shape, deform, source)
    progress.update(0.5, "anatomy resampled")
    affine = _grid_affine(src_affine, src_shape, shape)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    support = brain_mask > 0.1
    inside = support
    pv = np.clip(brain_mask, 0, 1)
    nf = np.where(support, nf / np.maximum(pv, 1e-3), 0) / 255.0
    sigma = 0.3 / spacing
    af = _fill(af, af_valid, inside, sigma) / 255.0
    nissl = _fill(nissl, ns_valid, inside, sigma)
    nissl /= max(float(np.percentile(nissl[brain_mask > 0.5], 99)), 1e-3)
    nf = np.clip(nf, 0, 1).astype(np.float32)
    index = np.flatnonzero(support)
    direction, across, coherence = structure_axes(nf, spacing, index)
    progress.update(0.9, "fibre orientation")
    flat = lambda x: np.clip(x.reshape(-1)[index], 0, 1)  # noqa: E731
    tissue = _tissue_from_maps(shape, spacing, affine, flat(pv), flat(nf), flat(af), flat(nissl), direction,
                               coherence, index, _hidden_key(brain, hidden), across)
    progress.update(1.0, "tissue")
    return tissue, affine


def procedural_tissue(brain: str, shape: tuple[int, int, int] = SIZES["small"],
                      voxel_mm: float = SMALL_VOXEL_MM, hidden: int = 0) -> tuple[Tissue, np.ndarray]:
    """A synthetic brain (no anatomy files): an ellipsoid with a cortex-like grey-matter shell, a
    callosum-like arch running left-right, two longitudinal tracts, two ventricles and deep grey matter,
    its geometry jittered by the brain's name. Returns (tissue, affine)."""
    rng = _rng("procedural", brain)
    jit = rng.uniform(-1, 1, size=8)
    spacing = np.full(3, voxel_mm)
    affine = np.diag([-voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    u = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*u, indexing="ij")
    r = np.sqrt((x / 0.92) ** 2 + (y / 0.95) ** 2 + (z / 0.9) ** 2)
    step = 2.0 / min(shape)
    pv = np.clip((1 - r) / step + 0.5, 0, 1)
    # arch (corpus callosum): distance to a circle in the x-z plane
    zc, rc = -0.45 + 0.08 * jit[0], 0.62 + 0.05 * jit[1]
    rho = np.sqrt(x ** 2 + (z - zc) ** 2)
    arch = _sigmoid((0.16 - np.abs(rho - rc)) / 0.05) * _sigmoid((z - zc - 0.1) / 0.05) * _sigmoid((0.75 - np.abs(y)) / 0.08)
    tang = np.stack([-(z - zc), np.zeros_like(x), x], axis=-1) / np.maximum(rho, 1e-3)[..., None]
    # longitudinal tracts (internal-capsule like) along y
    xt = 0.48 + 0.06 * jit[2]
    cyl = _sigmoid((0.17 - np.sqrt((np.abs(x) - xt) ** 2 + ((z + 0.35) / 1.2) ** 2)) / 0.05) * _sigmoid((0.8 - np.abs(y)) / 0.08)
    # ventricles
    xv = 0.2 + 0.04 * jit[3]
    vent = _sigmoid((1 - np.sqrt(((np.abs(x) - xv) / 0.13) ** 2 + (y / 0.45) ** 2 + ((z + 0.05) / 0.22) ** 2)) / 0.15)
    cortex = _sigmoid((r - 0.7) / 0.06) * _sigmoid((z + 0.25) / 0.1)
    tractness = np.maximum(arch, cyl)
    radial = np.stack([x, y, z], axis=-1) / np.maximum(np.sqrt(x ** 2 + y ** 2 + z ** 2), 1e-3)[..., None]
    direction = np.where((arch >= cyl)[..., None], tang, np.array([0, 1, 0], dtype=np.float32))
    direction = np.where((tractness < 0.3)[..., None], radial, direction)
    field = smooth_field(shape, spacing, 0.8, rng)
    nf = 0.45 + 0.45 * tractness - 0.08 * cortex + 0.06 * field - 0.35 * vent
    af = 0.55 + 0.2 * cortex - 0.4 * tractness - 0.4 * vent + 0.05 * smooth_field(shape, spacing, 0.6, rng)
    nissl = 0.5 + 0.3 * cortex - 0.35 * tractness - 0.4 * vent + 0.08 * smooth_field(shape, spacing, 0.6, rng)
    coherence = 0.25 + 0.7 * tractness + 0.1 * cortex
    index = np.flatnonzero(pv > 0.02)
    flat = lambda v: np.clip(np.asarray(v, dtype=np.float32).reshape(-1)[index], 0, 1)  # noqa: E731
    d = direction.reshape(-1, 3)[index]
    # the procedural geometry is in voxel axes; express it like the structure tensor does
    tissue = _tissue_from_maps(tuple(shape), spacing, affine, flat(pv), flat(nf), flat(af), flat(nissl),
                               d.astype(np.float32), flat(coherence), index, _hidden_key(brain, hidden))
    return tissue, affine


# ---------------------------------------------------------------------------------------------
# Simulation


def _shells(protocol: Protocol | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """DWI shells by role from ``protocol`` (the default protocol's where it has none)."""
    chosen = protocol if protocol is not None else default_protocol()
    shells = {role: chosen.shell(role) for role in DWI_ROLES if role in chosen.roles()}
    if not shells:
        ref = default_protocol()
        shells = {role: ref.shell(role) for role in DWI_ROLES}
    return shells


def _rician(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of standard deviation ``sigma`` per channel."""
    if sigma <= 0:
        return clean.astype(np.float32, copy=False)
    re = clean + sigma * rng.standard_normal(clean.shape, dtype=np.float32)
    im = sigma * rng.standard_normal(clean.shape, dtype=np.float32)
    return np.sqrt(re * re + im * im, dtype=np.float32)


def fitted_fa(dwi: DWI, mask: np.ndarray) -> np.ndarray:
    """FA of one shell inside ``mask`` by dipy's log-linear least-squares DTI fit (fast on whole brains;
    :func:`MRHNetLib.data.maps.fa_md` offers the weighted fit for real data)."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    from ..data.maps import B0_THRESHOLD

    b = dwi.gradients.bvals
    bvecs = np.where((b < B0_THRESHOLD)[:, None], 0.0, dwi.gradients.bvecs)
    model = TensorModel(gradient_table(b, bvecs=bvecs, b0_threshold=B0_THRESHOLD), fit_method="OLS")
    fa = np.zeros(mask.shape, dtype=np.float32)
    with np.errstate(all="ignore"):
        values = model.fit(np.maximum(dwi.volume.data[mask], 1e-3)).fa
    fa[mask] = np.clip(np.nan_to_num(values, nan=0.0), 0, 1)
    return fa


def simulate_subject(brain: str = "C1", seed: int = 0, size: str | tuple[int, int, int] = "small",
                     protocol: Protocol | None = None, noise: float = DEFAULT_NOISE, bias: float = 0.1,
                     physics: ExVivo7T = PHYSICS, shift: Shift | None = None, progress=None,
                     gains: dict[str, float] | None = None) -> Subject:
    """Simulate one ex vivo mouse brain: t2w, mt_on, mt_off, dwi_b2000, dwi_b5000, fa, mask, af, nf, mbp.

    ``brain``: ``C1`` or ``R2`` (the two real anatomy sources), optionally ``-dN`` for a smooth random
    deformation number N (``C1-d1``). ``size``: ``"small"`` (procedural 24 x 24 x 12 at 0.125 mm, fast),
    ``"medium"`` (the anatomy at 0.125 mm, 100 x 140 x 64), ``"full"`` (200 x 280 x 128 at 0.0625 mm) or
    a shape (X, Y, Z) over the anatomy's field of view. ``protocol``: b-values and RAS directions of the
    DWI shells (default :func:`~MRHNetLib.data.protocol.default_protocol`, 67 channels). ``noise``: Rician
    sigma as a fraction of each acquisition's median unweighted brain signal (default 1/40, SNR 40;
    0 for none). ``bias``: strength of the smooth receive-coil profile (0 for none). ``shift``: a
    test-time :class:`~MRHNetLib.simulation.shift.Shift` (physics constants, SNR and bias replacing
    ``noise`` and ``bias``, hidden factors, misregistration and staining of the truth maps). ``gains``:
    receiver scaling of each acquisition, ``{"t2w": g, "mt": g, "dwi": g}`` (MT-on and MT-off share
    one; missing keys 1), multiplied into the stored images after the noise (see
    :mod:`MRHNetLib.simulation.calibration`); None changes nothing."""
    gain = {"t2w": 1.0, "mt": 1.0, "dwi": 1.0}
    if gains:
        unknown = set(gains) - set(gain)
        if unknown or any(not float(v) > 0 for v in gains.values()):
            raise MRHNetError(f"receiver gains {gains}: use positive t2w, mt and dwi factors")
        gain.update({k: float(v) for k, v in gains.items()})
    if shift is not None:
        physics = shift.apply(physics)
        noise = noise if shift.snr is None else 1.0 / shift.snr
        bias = bias if shift.bias is None else shift.bias
    hidden = shift.hidden if shift is not None else 0
    if noise < 0 or bias < 0:
        raise MRHNetError(f"noise ({noise}) and bias ({bias}) must not be negative")
    progress = as_progress(progress)
    kind, shape = _resolve_size(size)
    shells = _shells(protocol)
    if kind == "small":
        parse_brain(brain)
        tissue, affine = procedural_tissue(brain, shape, hidden=hidden)
    else:
        tissue, affine = anatomy_tissue(brain, shape, progress.sub(0.0, 0.3), hidden=hidden)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    noise_rng = _rng("noise", brain, int(seed))
    coil_rng = _rng("coil", brain, int(seed)) if not hidden else _rng("coil", brain, int(seed), int(hidden))
    coil = np.exp(bias * smooth_field(shape, spacing, 3.0, coil_rng).reshape(-1)[tissue.index])
    mask = tissue.to_volume(tissue.partial >= 0.5) > 0
    if not mask.any():
        raise MRHNetError(f"simulated brain {brain}: the brain mask is empty at size {shape}")

    def acquire(values: np.ndarray, reference: np.ndarray, g: float = 1.0) -> np.ndarray:
        vol = tissue.to_volume(values * SIGNAL_SCALE * coil)
        sigma = noise * SIGNAL_SCALE * float(np.median(reference[tissue.partial >= 0.5]))
        out = _rician(vol, sigma, noise_rng)
        return out if g == 1.0 else out * np.float32(g)

    subject = Subject(name=brain)
    vol = lambda data, role: Volume(data, affine.copy(), role)  # noqa: E731
    t2w = t2w_signal(tissue, physics)
    subject.images["t2w"] = vol(acquire(t2w, t2w, gain["t2w"]), "t2w")
    on, off = mt_signals(tissue, physics)
    subject.images["mt_on"] = vol(acquire(on, off, gain["mt"]), "mt_on")
    subject.images["mt_off"] = vol(acquire(off, off, gain["mt"]), "mt_off")
    progress.update(0.35, "T2w and MT images")
    for k, (role, (bvals, bvecs)) in enumerate(shells.items()):
        clean = dwi_signal(tissue, bvals, bvecs, physics)
        b0 = dwi_signal(tissue, np.zeros(1), np.zeros((1, 3)), physics)[:, 0]
        sigma = noise * SIGNAL_SCALE * float(np.median(b0[tissue.partial >= 0.5]))
        clean *= (SIGNAL_SCALE * coil)[:, None]
        data = np.zeros(tuple(shape) + (len(bvals),), dtype=np.float32)
        data.reshape(-1, len(bvals))[tissue.index] = clean
        del clean
        for i in range(0, shape[0], 8):  # contiguous slabs keep memory and time low
            data[i:i + 8] = _rician(data[i:i + 8], sigma, noise_rng)
            if gain["dwi"] != 1.0:
                data[i:i + 8] *= np.float32(gain["dwi"])
        subject.dwi[role] = DWI(vol(data, role), Gradients(bvals, bvecs))
        progress.update(0.35 + 0.4 * (k + 1) / len(shells), f"{role}")
    fa_role = "dwi_b2000" if "dwi_b2000" in subject.dwi else next(iter(subject.dwi))
    subject.images["fa"] = vol(fitted_fa(subject.dwi[fa_role], mask), "fa")
    subject.images["mask"] = vol(mask.astype(np.float32), "mask")
    for role, values in histology(tissue).items():
        truth = tissue.to_volume(values)
        if shift is not None and shift.histology:
            truth = imperfect_histology(truth, spacing, shift, _rng("histology", brain, int(shift.seed), role))
        subject.images[role] = vol(truth * mask, role)
    progress.update(1.0, f"simulated {brain}")
    return subject


def imperfect_histology(truth: np.ndarray, spacing: np.ndarray, shift: Shift, rng: np.random.Generator) -> np.ndarray:
    """A truth map as real histology would give it against the MRI: displaced by a smooth misregistration
    (RMS ``shift.misregistration_mm``), then stained with a smooth gain field and response exponent."""
    shape = truth.shape
    if shift.misregistration_mm > 0:
        u = displacement_field([smooth_field(shape, spacing, MISREGISTRATION_LENGTH_MM, rng) for _ in range(3)],
                               shift.misregistration_mm)
        truth = warp(truth, u, spacing)
    gain = shift.stain_gain * smooth_field(shape, spacing, STAIN_LENGTH_MM, rng) if shift.stain_gain > 0 else 0.0
    return stain_response(truth, gain, shift.stain_gamma)


def tissue_maps(brain: str = "C1", size: str | tuple[int, int, int] = "small") -> dict[str, np.ndarray]:
    """The noise-free tissue properties of a simulated brain as 3D maps (for figures and checks):
    axon, myelin, cells, water, extra, dispersion, partial."""
    kind, shape = _resolve_size(size)
    tissue, _ = procedural_tissue(brain, shape) if kind == "small" else anatomy_tissue(brain, shape)
    return {name: tissue.to_volume(getattr(tissue, name))
            for name in ("axon", "myelin", "cells", "water", "extra", "dispersion", "partial")}


def write_phantoms(outdir: str | Path, brains: tuple[str, ...] | list[str] = ("C1", "R2"),
                   size: str | tuple[int, int, int] = "medium", seed: int = 0, protocol: Protocol | None = None,
                   noise: float = DEFAULT_NOISE, overwrite: bool = False, shift: Shift | None = None,
                   progress=None, physics_set: str = "default") -> list[Path]:
    """Simulate ``brains`` and write one subject folder each (``OUTDIR/<brain>/``, see
    :mod:`MRHNetLib.data.subject`) plus ``phantom.json`` recording how it was made. Refuses (before writing
    anything) folders that already hold files unless ``overwrite``. ``shift`` applies a test-time shift
    (:mod:`MRHNetLib.simulation.shift`) to every brain and is recorded in ``phantom.json``. ``physics_set``:
    a named set of :mod:`MRHNetLib.simulation.calibration` (``default`` changes nothing; ``calibrated``:
    the values calibrated against the original authors' AF networks, recorded in ``phantom.json``)."""
    from .calibration import physics_set as named_set

    physics, gains = named_set(physics_set)
    outdir = Path(outdir)
    progress = as_progress(progress)
    brains = list(brains)
    if not brains:
        raise MRHNetError("no brains to simulate")
    for b in brains:
        parse_brain(b)
    if len(set(brains)) != len(brains):
        raise MRHNetError(f"brain names repeat in {brains}")
    _resolve_size(size)
    if outdir.exists() and not outdir.is_dir():
        raise MRHNetError(f"{outdir}: exists and is not a folder")
    if not overwrite:
        busy = [outdir / b for b in brains if (outdir / b).is_dir() and any((outdir / b).iterdir())]
        if busy:
            raise MRHNetError(f"{busy[0]}: subject folder is not empty (use --overwrite to replace it)")
    written = []
    n = len(brains)
    for i, brain in enumerate(brains):
        sub = progress.sub(i / n, (i + 0.9) / n)
        subject = simulate_subject(brain, seed=seed, size=size, protocol=protocol, noise=noise, shift=shift,
                                   progress=sub, physics=physics, gains=gains)
        folder = subject.save(outdir / brain)
        info = {"brain": brain, "seed": int(seed), "size": size if isinstance(size, str) else list(size),
                "shape": list(subject.shape), "voxel_mm": [round(float(s), 6) for s in subject.reference.spacing],
                "noise": noise if shift is None or shift.snr is None else 1.0 / shift.snr,
                "shift": shift.to_dict() if shift is not None else None, "generator": "MRHNetLib.simulation.phantom.simulate_subject",
                "anatomy": "Resources/anatomy (MRH-Net, Liang et al. eLife 2022, MIT)"}
        if physics_set != "default":
            from .calibration import parameters

            info["physics_set"] = {"name": physics_set, **{q.name: q.value for q in parameters(physics_set)}}
        (folder / "phantom.json").write_text(json.dumps(info, indent=1) + "\n")
        written.append(folder)
        progress.update((i + 1) / n, f"wrote {folder}")
    return written


# ---------------------------------------------------------------------------------------------
# Figure


def coronal_slice(volume: np.ndarray, affine: np.ndarray, index: int | None = None,
                  mask: np.ndarray | None = None) -> np.ndarray:
    """A coronal slice (superior up, for ``imshow(origin="lower")`` after transposing: rows L-R,
    columns I-S); ``index`` defaults to the middle of the mask's anterior-posterior extent."""
    s_ax, r_ax, c_ax = plane_axes(affine, "coronal")
    if index is None:
        ref = mask if mask is not None else volume != 0
        where = np.flatnonzero(np.any(ref, axis=tuple(a for a in range(3) if a != s_ax)))
        index = int(where.mean() + 0.1 * (where.max() - where.min())) if len(where) else volume.shape[s_ax] // 2
    sl = np.take(volume, index, axis=s_ax)
    axes = [a for a in range(3) if a != s_ax]
    return sl if axes.index(r_ax) == 0 else sl.T


def phantom_figure(subject: Subject, path: str | Path, index: int | None = None, dpi: int = 80) -> Path:
    """Save a figure of one coronal slice of every contrast and target of ``subject`` (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data.maps import b0_image, mtr

    mask = subject.mask
    aff = subject.affine
    panels: list[tuple[str, np.ndarray, str]] = []
    im = subject.images
    panels += [("T2w (TE 50 ms)", im["t2w"].data, "gray"), ("MT-off", im["mt_off"].data, "gray"),
               ("MT-on (-3 kHz, 20 uT)", im["mt_on"].data, "gray"),
               ("MTR", mtr(im["mt_on"].data, im["mt_off"].data) * mask, "gray")]
    for role, d in subject.dwi.items():
        b = d.gradients.bvals
        dw = b >= 100
        label = f"b={np.median(b[dw]):.0f}" if dw.any() else role
        panels.append((f"{role}: b0", b0_image(d.volume.data, d.gradients), "gray"))
        first = int(np.flatnonzero(dw)[0]) if dw.any() else 0
        panels.append((f"DWI {label}, one direction", d.volume.data[..., first], "gray"))
    panels += [("FA", im["fa"].data, "gray")]
    panels += [(f"{r.upper()} (truth)", im[r].data, "magma") for r in ("af", "nf", "mbp") if r in im]
    ncol = 4
    nrow = int(np.ceil(len(panels) / ncol))
    sl0 = coronal_slice(mask, aff, index, mask)
    aspect = sl0.shape[1] / sl0.shape[0]
    fig, axes = plt.subplots(nrow, ncol, figsize=(ncol * 3.0, nrow * 3.0 * aspect + 0.4))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, data, cmap) in zip(axes.ravel(), panels):
        sl = coronal_slice(data, aff, index, mask)
        inside = coronal_slice(mask, aff, index, mask)
        vmax = float(np.percentile(sl[inside], 99.5)) if inside.any() else float(sl.max())
        ax.imshow(sl.T, origin="lower", cmap=cmap, vmin=0, vmax=vmax if vmax > 0 else 1, interpolation="nearest")
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"Simulated ex vivo mouse brain {subject.name} ({'x'.join(map(str, subject.shape))}), "
                 f"coronal slice: MRI inputs and ground-truth histology", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
