"""How maps are shown, one place for every face (Slicer scene, web app, CLI figures): each target's
colour ramp, the display window, output names, and a matplotlib overlay figure with the same look."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data.io import Volume
from .files import atomic_output

DEFAULT_OPACITY = 0.6


@dataclass(frozen=True)
class Stain:
    """How one target is shown: a colour ramp (value 0..1 -> RGB control points) and a label."""

    label: str
    points: tuple[tuple[float, tuple[float, float, float]], ...]


STAINS: dict[str, Stain] = {
    # autofluorescence: dark -> fluorescent green -> yellow
    "af": Stain("AF", ((0.0, (0.0, 0.05, 0.0)), (0.45, (0.1, 0.65, 0.1)), (0.8, (0.6, 0.95, 0.2)),
                       (1.0, (1.0, 1.0, 0.4)))),
    # neurofilament: a warm "hot"-like ramp
    "nf": Stain("NF", ((0.0, (0.1, 0.0, 0.0)), (0.35, (0.8, 0.1, 0.0)), (0.7, (1.0, 0.6, 0.0)),
                       (1.0, (1.0, 1.0, 0.75)))),
    # myelin basic protein: dark blue -> purple -> pale lilac
    "mbp": Stain("MBP", ((0.0, (0.02, 0.0, 0.15)), (0.4, (0.2, 0.2, 0.75)), (0.75, (0.6, 0.3, 0.85)),
                         (1.0, (0.95, 0.85, 1.0)))),
}
UNCERTAINTY = Stain("SD", ((0.0, (0.0, 0.0, 0.0)), (0.5, (0.45, 0.45, 0.5)), (1.0, (1.0, 1.0, 1.0))))


def stain_of(key: str) -> Stain:
    """The display of an output key (``af``, ``nf_std``, ...); unknown targets get a grey ramp."""
    if key.endswith("_std"):
        return Stain(f"{key[:-4].upper()}-SD", UNCERTAINTY.points)
    return STAINS.get(key, Stain(key.upper(), UNCERTAINTY.points))


def colour_ramp(stain: Stain, n: int = 256) -> np.ndarray:
    """(n, 3) RGB values interpolated between the stain's control points."""
    x = np.linspace(0.0, 1.0, n)
    pos = np.array([p for p, _ in stain.points])
    rgb = np.array([c for _, c in stain.points])
    return np.stack([np.interp(x, pos, rgb[:, ch]) for ch in range(3)], axis=1)


def display_range(data: np.ndarray) -> tuple[float, float]:
    """(low, high) window of a map: 0 to the 99.5th percentile of its positive voxels."""
    pos = data[data > 0]
    if pos.size == 0:
        return 0.0, 1.0
    high = float(np.percentile(pos, 99.5))
    return 0.0, high if high > 0 else float(pos.max())


def output_name(input_name: str, key: str) -> str:
    """``brain1 MRH-AF``; uncertainty maps ``brain1 MRH-AF-SD``."""
    return f"{input_name} MRH-{stain_of(key).label}"


def overlay_figure(background: Volume, maps: dict[str, Volume], out: str | os.PathLike,
                   opacity: float = DEFAULT_OPACITY, title: str = "") -> Path:
    """A PNG of the maps as coloured overlays on the background's middle coronal slice, with the same
    colour tables, window and transparent zero as the scene display (for the README and reports)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .data.protocol import plane_axes

    axis = plane_axes(background.affine, "coronal")[0]
    mid = background.shape3[axis] // 2

    def cut(data: np.ndarray) -> np.ndarray:
        return np.rot90(np.take(data, mid, axis=axis))

    grey = cut(background.data)
    grey = np.clip(grey / (np.percentile(grey[grey > 0], 99.5) if np.any(grey > 0) else 1.0), 0, 1)
    fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 3.4), squeeze=False)
    for ax, (key, vol) in zip(axes[0], maps.items()):
        low, high = display_range(vol.data)
        values = cut(vol.data)
        ramp = colour_ramp(stain_of(key))
        idx = np.clip((values - low) / max(high - low, 1e-12) * 255, 0, 255).astype(int)
        alpha = np.where(values > max(high * 1e-3, 1e-12), opacity, 0.0)[..., None]
        rgb = (1 - alpha) * np.repeat(grey[..., None], 3, axis=2) + alpha * ramp[idx]
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(output_name(title or background.name or "brain", key), fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=110, format=out.suffix.lstrip(".").lower() or "png")
    plt.close(fig)
    return out
