"""Evaluation of virtual-histology maps against ground truth, and against single MRI markers.

For each target map (AF, NF, MBP) inside the brain mask:

* agreement with the truth: R^2 = 1 - SSE/SST, SSIM and PSNR (scikit-image; data range = the truth's
  range in the mask), Pearson r, RMSE;
* detection of high-target voxels, as the paper's ROC analysis: a voxel is positive when its truth
  exceeds the ``percentile`` (default 80th) of the truth in the mask; ROC-AUC (scikit-learn) of the
  network's map and of each single MRI marker alone (FA, MTR, T2w, MD). A marker's AUC is reported
  for its better direction: sign ``-`` means low marker values indicate high target (its AUC is that
  of the negated marker);
* baselines (:mod:`MRHNetLib.evaluation.baselines`) with the same metrics: a ridge fit and gradient-boosted
  trees of the same centre-voxel inputs, trained on given training subjects (``baseline_train``);
* per-region numbers when a label map is given;
* input contribution by perturbation (paper, Fig. 3): Gaussian noise added to one channel group at a
  time (b2000, b5000, T2w, MT; each map for a maps network) on a sample of brain voxels; the rise in
  RMSE against the truth, per group.

:func:`evaluate` returns an :class:`Evaluation`; :meth:`Evaluation.save` writes ``report.json``,
``report.md`` and ``report.png``.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import MRHNetError, as_progress
from ..files import atomic_write_text
from ..data.io import Volume
from .baselines import BASELINE_NAMES, DEFAULT_MAX_SAMPLES, subject_baselines

MARKERS = ("fa", "mtr", "t2w", "md")
MARKER_NAMES = {"fa": "FA", "mtr": "MTR", "t2w": "T2w", "md": "MD"}
GROUP_NAMES = {"dwi_b2000": "b2000", "dwi_b5000": "b5000", "t2w": "T2w", "mt": "MT"}
DEFAULT_PERCENTILE = 80.0
# The paper's voxel-wise R^2 and ROC-AUC on real brains (Liang et al., eLife 2022, text): other data, for reference
PAPER_REAL = {"af": {"r2": 0.71, "auc": "> 0.94"}, "nf": {"r2": 0.61}, "mbp": {"r2": 0.73}}
PAPER_LABEL = "paper, real brains (Liang et al. 2022; other data)"


# ---------------------------------------------------------------------------------------------
# Metrics


def _array(v: Volume | np.ndarray) -> np.ndarray:
    return np.asarray(v.data if isinstance(v, Volume) else v, dtype=np.float32)


def ssim_in_mask(truth: np.ndarray, pred: np.ndarray, mask: np.ndarray, data_range: float) -> float:
    """Mean structural similarity (scikit-image, 3D) over the mask's voxels."""
    from skimage.metrics import structural_similarity

    win = min(7, *[s if s % 2 else s - 1 for s in truth.shape])
    if win < 3:
        raise MRHNetError(f"volume {truth.shape} is too small for SSIM")
    _, smap = structural_similarity(truth.astype(np.float64), pred.astype(np.float64), data_range=data_range,
                                    win_size=win, full=True)
    return float(smap[mask].mean())


def roc_auc(labels: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, score))


def high_voxels(truth: np.ndarray, mask: np.ndarray, percentile: float) -> tuple[np.ndarray, float]:
    """(labels inside the mask, threshold): truth above its ``percentile`` within the mask."""
    values = truth[mask]
    thr = float(np.percentile(values, percentile))
    return values > thr, thr


def agreement(truth: np.ndarray, pred: np.ndarray, mask: np.ndarray, percentile: float = DEFAULT_PERCENTILE,
              ssim: bool = True) -> dict[str, float]:
    """R^2 (1 - SSE/SST), SSIM, PSNR (dB), Pearson r, RMSE and ROC-AUC of ``pred`` against ``truth`` inside
    ``mask``."""
    from skimage.metrics import peak_signal_noise_ratio

    t, p = truth[mask].astype(np.float64), pred[mask].astype(np.float64)
    rng = float(t.max() - t.min()) or 1.0
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        psnr = float(peak_signal_noise_ratio(t, p, data_range=rng))
        r = float(np.corrcoef(t, p)[0, 1]) if t.std() > 0 and p.std() > 0 else float("nan")
    labels, _ = high_voxels(truth, mask, percentile)
    sst = float(np.sum((t - t.mean()) ** 2))
    r2 = 1.0 - float(np.sum((t - p) ** 2)) / sst if sst > 0 else float("nan")
    out = {"r2": r2, "ssim": ssim_in_mask(truth, pred, mask, rng) if ssim else float("nan"), "psnr_db": psnr,
           "pearson_r": r, "rmse": float(np.sqrt(np.mean((t - p) ** 2))), "auc": roc_auc(labels, p)}
    return out


def marker_detection(marker: np.ndarray, truth: np.ndarray, mask: np.ndarray,
                     percentile: float = DEFAULT_PERCENTILE) -> dict[str, Any]:
    """AUC of a single marker for high-target voxels, in its better direction (sign + or -), and its r."""
    labels, _ = high_voxels(truth, mask, percentile)
    m = marker[mask].astype(np.float64)
    auc = roc_auc(labels, m)
    sign = "+"
    if not math.isnan(auc) and auc < 0.5:
        auc, sign = 1.0 - auc, "-"
    t = truth[mask]
    r = float(np.corrcoef(t, m)[0, 1]) if t.std() > 0 and m.std() > 0 else float("nan")
    return {"auc": auc, "sign": sign, "pearson_r": r}


def region_table(truth: np.ndarray, pred: np.ndarray, mask: np.ndarray, labels: np.ndarray,
                 percentile: float = DEFAULT_PERCENTILE, min_voxels: int = 20) -> dict[str, dict[str, float]]:
    """Per label value (> 0) inside the mask: voxels, mean truth and prediction, r, RMSE, AUC (with the
    whole-brain threshold)."""
    thr = float(np.percentile(truth[mask], percentile))
    out: dict[str, dict[str, float]] = {}
    lab = np.rint(labels).astype(np.int64)
    for value in np.unique(lab[mask]):
        if value <= 0:
            continue
        sel = mask & (lab == value)
        n = int(sel.sum())
        if n < min_voxels:
            continue
        t, p = truth[sel].astype(np.float64), pred[sel].astype(np.float64)
        r = float(np.corrcoef(t, p)[0, 1]) if t.std() > 0 and p.std() > 0 else float("nan")
        out[str(int(value))] = {"voxels": n, "truth_mean": float(t.mean()), "pred_mean": float(p.mean()),
                                "pearson_r": r, "rmse": float(np.sqrt(np.mean((t - p) ** 2))),
                                "auc": roc_auc(t > thr, p)}
    return out


# ---------------------------------------------------------------------------------------------
# Input contribution


def channel_groups(protocol) -> dict[str, list[int]]:
    """Perturbation groups of a protocol's channels: b2000, b5000, T2w, MT (raw) or one per map."""
    from ..data.protocol import scale_group

    groups: dict[str, list[int]] = {}
    for c, ch in enumerate(protocol.channels):
        key = scale_group(ch.role)
        groups.setdefault(GROUP_NAMES.get(key, key.upper()), []).append(c)
    return groups


def perturbation(model, subject, truth: np.ndarray, *, noise: float = 0.1, n_sample: int = 20000, seed: int = 0,
                 device: str = "auto", progress=None) -> dict[str, Any]:
    """Rise in RMSE against ``truth`` when Gaussian noise (``noise`` x the group's mean normalised signal
    in the mask) is added to one channel group at a time, on a random sample of brain voxels."""
    import torch

    from ..network.fastconv import PatchNet
    from ..network.infer import as_model, patch_batch, resolve_device
    from ..data.orient import canonical_subject, reorient
    from ..data.protocol import plane_axes

    prog = as_progress(progress)
    model = as_model(model)
    proto = model.info.protocol
    dev = resolve_device(device)
    canon, transform = canonical_subject(subject)  # the orientation the network expects (MRHNetLib.data.orient)
    if transform is not None:
        truth, subject = reorient(Volume(np.asarray(truth), subject.affine), transform).data, canon
    stack = subject.inputs(proto)
    mask = subject.mask
    rng = np.random.default_rng(seed)
    centres = np.flatnonzero(mask)
    if len(centres) > n_sample:
        centres = np.sort(rng.choice(centres, n_sample, replace=False))
    scale = float(proto.normalisation.target_scale)
    t = truth.reshape(-1)[centres].astype(np.float64)
    groups = channel_groups(proto)
    level = {g: float(np.abs(stack[idx][:, mask]).mean()) for g, idx in groups.items()}
    pn = PatchNet(model.net, dev)
    flat = torch.from_numpy(stack.reshape(stack.shape[0], -1)).to(dev)
    axes = plane_axes(subject.affine, proto.patch_plane)
    gen = torch.Generator(device=dev).manual_seed(seed)
    preds = {name: np.empty(len(centres)) for name in ["none"] + list(groups)}
    chunk = 4096
    for k, start in enumerate(range(0, len(centres), chunk)):
        c = torch.as_tensor(centres[start:start + chunk], device=dev)
        x = patch_batch(flat, c, stack.shape[1:], axes, proto.half_patch)
        valid = (x != 0).any(dim=-1, keepdim=True)
        preds["none"][start:start + len(c)] = pn(x).cpu().numpy() * scale
        for name, idx in groups.items():
            xn = x.clone()
            sub = xn[..., idx]
            sub += noise * level[name] * torch.randn(sub.shape, generator=gen, device=dev) * valid
            xn[..., idx] = sub
            preds[name][start:start + len(c)] = pn(xn).cpu().numpy() * scale
        prog.update(min(start + chunk, len(centres)) / len(centres), "perturbation")
    base = float(np.sqrt(np.mean((preds["none"] - t) ** 2)))
    out: dict[str, Any] = {"noise": noise, "voxels": int(len(centres)), "rmse_clean": base, "groups": {}}
    for name, idx in groups.items():
        rmse = float(np.sqrt(np.mean((preds[name] - t) ** 2)))
        out["groups"][name] = {"channels": len(idx), "rmse": rmse, "rise": rmse - base,
                               "change_rms": float(np.sqrt(np.mean((preds[name] - preds["none"]) ** 2)))}
    top = max((g["rise"] for g in out["groups"].values()), default=0.0)
    out["could_drop"] = [n for n, g in out["groups"].items() if top > 0 and g["rise"] < 0.1 * top]
    return out


# ---------------------------------------------------------------------------------------------
# Whole evaluation


@dataclass
class Evaluation:
    """The report (``summary``, JSON-ready) and the arrays its figure shows."""

    summary: dict[str, Any]
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    pred: dict[str, np.ndarray] = field(default_factory=dict)
    markers: dict[str, np.ndarray] = field(default_factory=dict)
    mask: np.ndarray | None = None
    slice_axis: int = 1
    baselines: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # kind -> target -> map

    def save(self, folder: str | os.PathLike) -> dict[str, Path]:
        """Write report.json, report.md and report.png into ``folder`` (each atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"json": folder / "report.json", "md": folder / "report.md", "png": folder / "report.png"}
        atomic_write_text(paths["json"], json.dumps(_jsonable(self.summary), indent=1))
        atomic_write_text(paths["md"], markdown(self.summary))
        tmp = paths["png"].with_name(".tmp-report.png")
        try:
            figure(self, tmp)
            os.replace(tmp, paths["png"])
        finally:
            tmp.unlink(missing_ok=True)
        return paths


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else ("inf" if x > 0 else ("-inf" if x < 0 else None))
    if isinstance(x, np.integer):
        return int(x)
    return x


def subject_markers(subject, names: Sequence[str] = MARKERS, progress=None) -> tuple[dict[str, np.ndarray], list[str]]:
    """The single-marker maps a subject can give (derived when missing), and notes on those it cannot."""
    prog = as_progress(progress)
    out, notes = {}, []
    for k, name in enumerate(names):
        try:
            out[name] = np.asarray(subject.channel_volume(name), dtype=np.float32)
        except MRHNetError as exc:
            notes.append(f"marker {MARKER_NAMES.get(name, name)} not available: {exc}")
        prog.update((k + 1) / len(names), f"marker {name}")
    return out, notes


def evaluate(predictions: Mapping[str, Volume | np.ndarray], truth: Mapping[str, Volume | np.ndarray] | None = None,
             *, subject=None, mask: np.ndarray | None = None, labels: Volume | np.ndarray | None = None,
             percentile: float = DEFAULT_PERCENTILE, markers: Sequence[str] = MARKERS,
             models: Sequence = (), noise: float = 0.1, n_sample: int = 20000, seed: int = 0,
             baseline_train: Sequence = (), baseline_samples: int = DEFAULT_MAX_SAMPLES, data_label: str = "",
             device: str = "auto", progress=None) -> Evaluation:
    """Evaluate predicted maps (by target name) against the truth (``truth`` or ``subject``'s target
    images) inside the mask (given, the subject's, or where truth or prediction is non-zero).

    ``subject`` also gives the single-marker maps and, with ``models`` (one per target), the inputs of
    the perturbation analysis. ``baseline_train`` (subjects holding every evaluated target, same inputs as
    ``subject``) trains the ridge and boosting baselines on at most ``baseline_samples`` voxels.
    ``data_label`` says what the data are (for example "simulated brain R2"; shown in the report).
    Keys ending in ``_std`` (ensemble spread) are skipped."""
    prog = as_progress(progress)
    if not 0 < percentile < 100:
        raise MRHNetError(f"percentile {percentile} must lie between 0 and 100")
    truth = dict(truth or {})
    if subject is not None:
        for role in subject.targets():
            truth.setdefault(role, subject.images[role])
    targets = [t for t in predictions if not t.endswith("_std")]
    missing = [t for t in targets if t not in truth]
    if missing:
        raise MRHNetError(f"no ground truth for predicted map(s) {', '.join(missing)}")
    if not targets:
        raise MRHNetError("no predicted maps to evaluate")
    tarr = {t: _array(truth[t]) for t in targets}
    parr = {t: _array(predictions[t]) for t in targets}
    shape = next(iter(tarr.values())).shape
    for t in targets:
        if tarr[t].shape != shape or parr[t].shape != shape:
            raise MRHNetError(f"{t}: prediction {parr[t].shape} and truth {tarr[t].shape} are not on one grid")
    if mask is None:
        mask = subject.mask if subject is not None else np.any([(tarr[t] != 0) | (parr[t] != 0) for t in targets], axis=0)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise MRHNetError(f"mask {mask.shape} and maps {shape} are not on one grid")
    if mask.sum() < 10:
        raise MRHNetError("mask has fewer than 10 voxels; nothing to evaluate")
    lab = _array(labels) if labels is not None else None
    if lab is not None and lab.shape != shape:
        raise MRHNetError(f"label map {lab.shape} and maps {shape} are not on one grid")
    notes: list[str] = []
    mk: dict[str, np.ndarray] = {}
    if subject is not None and markers:
        mk, notes = subject_markers(subject, markers, prog.sub(0.0, 0.2))
    base_maps: dict[str, dict[str, np.ndarray]] = {}
    base_info: dict[str, Any] = {}
    if baseline_train:
        if subject is None:
            raise MRHNetError("baselines need the subject's input images (give a subject folder)")
        prog.update(0.2, "baselines")
        base_maps = subject_baselines(list(baseline_train), subject, targets, seed=seed,
                                      max_samples=baseline_samples)
        base_info = {"kinds": {k: BASELINE_NAMES[k] for k in base_maps},
                     "training_subjects": [s.name for s in baseline_train], "max_samples": baseline_samples,
                     "inputs": int(subject.protocol().n_channels), "seed": seed}
    by_target = {}
    for t in targets:
        _, thr = high_voxels(tarr[t], mask, percentile)
        entry: dict[str, Any] = {"voxels": int(mask.sum()), "threshold": thr,
                                 "network": agreement(tarr[t], parr[t], mask, percentile),
                                 "baselines": {k: agreement(tarr[t], m[t], mask, percentile) for k, m in base_maps.items()},
                                 "markers": {MARKER_NAMES.get(k, k): marker_detection(v, tarr[t], mask, percentile)
                                             for k, v in mk.items()}}
        if lab is not None:
            entry["regions"] = region_table(tarr[t], parr[t], mask, lab, percentile)
        by_target[t] = entry
    prog.update(0.5, "metrics")
    model_list = list(models)
    if model_list:
        if subject is None:
            raise MRHNetError("the perturbation analysis needs the subject's input images (give a subject folder)")
        from ..network.infer import as_model

        loaded = [as_model(m) for m in model_list]
        for k, m in enumerate(loaded):
            t = m.info.target
            if t not in by_target:
                notes.append(f"model {m.name}: no prediction/truth for target {t}; perturbation skipped")
                continue
            by_target[t]["perturbation"] = perturbation(
                m, subject, tarr[t], noise=noise, n_sample=n_sample, seed=seed, device=device,
                progress=prog.sub(0.5 + 0.5 * k / len(loaded), 0.5 + 0.5 * (k + 1) / len(loaded)))
    summary = {"percentile": percentile, "mask_voxels": int(mask.sum()), "targets": by_target,
               "baselines": base_info, "data": data_label,
               "definitions": {
                   "r2": "1 - SSE/SST inside the mask (SST about the truth's mean in the mask)",
                   "baselines": "voxel-wise fits of the network's input channels at the centre voxel (normalised "
                                "as the network sees them), trained on the training subjects: ridge = standard "
                                "scaler + Ridge(alpha=1); boosting = HistGradientBoostingRegressor (200 iterations)",
                   "auc": f"ROC-AUC for voxels whose truth exceeds its {percentile:g}th percentile in the mask",
                   "marker sign": "+: high marker = high target; -: low marker = high target (AUC of the negated marker)",
                   "ssim": "scikit-image SSIM (3D, data range of the truth in the mask), averaged over the mask",
                   "psnr_db": "scikit-image PSNR inside the mask, data range of the truth in the mask",
                   "perturbation": "rise in RMSE against the truth with Gaussian noise (noise x mean normalised "
                                   "signal of the group) added to one channel group"},
               "notes": notes}
    slice_axis = 1
    if subject is not None:
        from ..data.protocol import plane_axes

        slice_axis = plane_axes(subject.affine, "coronal")[0]
    prog.update(1.0, "evaluated")
    return Evaluation(summary, tarr, parr, mk, mask, slice_axis, base_maps)


# ---------------------------------------------------------------------------------------------
# Reports


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.{digits}f}"


def markdown(summary: dict) -> str:
    """The report as Markdown tables."""
    data = summary.get("data") or ""
    lines = ["# Virtual histology evaluation", ""]
    if data:
        lines += [f"Data: {data}.", ""]
    lines += [f"Inside the brain mask ({summary['mask_voxels']:,} voxels). R^2 = 1 - SSE/SST. AUC: detection of "
              f"voxels above the {summary['percentile']:g}th percentile of the truth; a marker's sign says which "
              f"direction detects (− = low values).", ""]
    base = summary.get("baselines") or {}
    if base:
        lines += [f"Baselines: fits of the {base['inputs']} input channels at the centre voxel (normalised as the "
                  f"network sees them; no 3 x 3 context), trained on {', '.join(base['training_subjects'])} "
                  f"(at most {base['max_samples']:,} voxels).", ""]
    for t, e in summary["targets"].items():
        n = e["network"]
        row = lambda name, a: (f"| {name} | {_fmt(a.get('r2'))} | {_fmt(a['ssim'])} | {_fmt(a['psnr_db'], 2)} | "  # noqa: E731
                               f"{_fmt(a['pearson_r'])} | {_fmt(a['rmse'], 2)} | {_fmt(a['auc'])} |")
        lines += [f"## {t.upper()}", "", "| map | R^2 | SSIM | PSNR (dB) | Pearson r | RMSE | ROC-AUC |",
                  "|---|---|---|---|---|---|---|", row("network", n)]
        for k, a in e.get("baselines", {}).items():
            lines.append(row(f"{BASELINE_NAMES.get(k, k)} (baseline)", a))
        for name, m in e["markers"].items():
            lines.append(f"| {name} alone ({m['sign']}) | | | | {_fmt(m['pearson_r'])} | | {_fmt(m['auc'])} |")
        if t in PAPER_REAL:
            p = PAPER_REAL[t]
            lines.append(f"| {PAPER_LABEL} | {_fmt(p['r2'], 2)} | | | | | {p.get('auc', '')} |")
        lines.append("")
        if e.get("regions"):
            lines += ["| region | voxels | truth mean | prediction mean | r | RMSE | AUC |", "|---|---|---|---|---|---|---|"]
            for k, r in e["regions"].items():
                lines.append(f"| {k} | {r['voxels']} | {_fmt(r['truth_mean'], 1)} | {_fmt(r['pred_mean'], 1)} | "
                             f"{_fmt(r['pearson_r'])} | {_fmt(r['rmse'], 2)} | {_fmt(r['auc'])} |")
            lines.append("")
        if e.get("perturbation"):
            p = e["perturbation"]
            lines += [f"Input contribution (noise {p['noise']:g} x mean signal, {p['voxels']:,} voxels; RMSE "
                      f"without noise {_fmt(p['rmse_clean'], 2)}):", "",
                      "| channel group | channels | RMSE | rise |", "|---|---|---|---|"]
            for g, v in sorted(p["groups"].items(), key=lambda kv: -kv[1]["rise"]):
                lines.append(f"| {g} | {v['channels']} | {_fmt(v['rmse'], 2)} | {_fmt(v['rise'], 2)} |")
            if p["could_drop"]:
                lines.append(f"\nGroups contributing under 10 % of the largest rise: {', '.join(p['could_drop'])}.")
            lines.append("")
    if summary.get("notes"):
        lines += ["Notes:", ""] + [f"- {n}" for n in summary["notes"]] + [""]
    return "\n".join(lines)


def figure(ev: Evaluation, path: str | os.PathLike) -> Path:
    """Matching slices of truth, prediction, each baseline and each marker; scatter plots; ROC curves (network,
    baselines, markers); perturbation bars."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    targets = list(ev.pred)
    mask = ev.mask
    ax_s = ev.slice_axis
    counts = mask.sum(axis=tuple(a for a in range(3) if a != ax_s))
    k = int(np.argmax(counts))
    take = lambda a: np.take(a, k, axis=ax_s).T  # noqa: E731  (rows: last axis, shown upwards)
    has_bars = any("perturbation" in ev.summary["targets"][t] for t in targets)
    kinds = list(ev.baselines)
    ncol = 2 + len(kinds) + len(ev.markers) + 2 + (1 if has_bars else 0)
    fig, axes = plt.subplots(len(targets), ncol, figsize=(2.3 * ncol, 2.5 * len(targets)), squeeze=False)
    rng = np.random.default_rng(0)
    for row, t in enumerate(targets):
        truth, pred = ev.truth[t], ev.pred[t]
        e = ev.summary["targets"][t]
        hi = float(np.percentile(truth[mask], 99.5)) or 1.0
        panels = [(f"{t.upper()} truth", truth, (0, hi)),
                  (f"{t.upper()} network, R² {_fmt(e['network']['r2'], 2)}", pred, (0, hi))]
        for kind in kinds:
            panels.append((f"{BASELINE_NAMES.get(kind, kind)}, R² {_fmt(e['baselines'][kind]['r2'], 2)}",
                           ev.baselines[kind][t], (0, hi)))
        for name, m in ev.markers.items():
            vals = m[mask]
            panels.append((MARKER_NAMES.get(name, name), m * mask, tuple(np.percentile(vals, [0.5, 99.5]))))
        for c, (title, img, lim) in enumerate(panels):
            a = axes[row, c]
            a.imshow(take(img), cmap="gray", vmin=lim[0], vmax=lim[1], origin="lower")
            a.set_title(title, fontsize=8)
            a.axis("off")
        t_in, p_in = truth[mask], pred[mask]
        sel = rng.choice(len(t_in), min(len(t_in), 5000), replace=False)
        a = axes[row, len(panels)]
        a.scatter(t_in[sel], p_in[sel], s=1, alpha=0.3)
        a.plot([0, hi], [0, hi], "k--", lw=0.8)
        a.set_xlabel("truth", fontsize=7), a.set_ylabel("network", fontsize=7)
        a.set_title(f"r = {_fmt(e['network']['pearson_r'])}", fontsize=8)
        a.tick_params(labelsize=6)
        a = axes[row, len(panels) + 1]
        labels = t_in > e["threshold"]
        if labels.any() and not labels.all():
            fpr, tpr, _ = roc_curve(labels, p_in)
            a.plot(fpr, tpr, lw=1.5, label=f"network {_fmt(e['network']['auc'], 2)}")
            for kind in kinds:
                fpr, tpr, _ = roc_curve(labels, ev.baselines[kind][t][mask])
                a.plot(fpr, tpr, lw=1.0, ls="--", label=f"{kind} {_fmt(e['baselines'][kind]['auc'], 2)}")
            for name, m in ev.markers.items():
                info = e["markers"][MARKER_NAMES.get(name, name)]
                s = m[mask] if info["sign"] == "+" else -m[mask]
                fpr, tpr, _ = roc_curve(labels, s)
                a.plot(fpr, tpr, lw=0.8, label=f"{MARKER_NAMES.get(name, name)}{info['sign']} {_fmt(info['auc'], 2)}")
        a.plot([0, 1], [0, 1], "k:", lw=0.6)
        a.set_title(f"ROC (> P{ev.summary['percentile']:g})", fontsize=8)
        a.legend(fontsize=5, loc="lower right")
        a.tick_params(labelsize=6)
        if has_bars:
            a = axes[row, -1]
            p = e.get("perturbation")
            if p:
                names = list(p["groups"])
                a.bar(names, [p["groups"][n]["rise"] for n in names], color="tab:orange")
                a.set_title("rise in RMSE (noise)", fontsize=8)
                a.tick_params(labelsize=6)
            else:
                a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return Path(path)
