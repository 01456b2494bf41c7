"""Training and transfer learning of MRH-Net, resumable, on CPU, one GPU or many (``torchrun``).

:func:`train` fits a new network to one target (AF, NF, MBP or a user's) from training subjects;
:func:`finetune` starts from a trained model and replaces its head (Conv4, Conv5) as the original made
MRH-NF and MRH-MBP from MRH-AF. Both write a safe model file (:mod:`MRHNetLib.network.modelfile`) and keep a run
folder (``NAME.run/`` beside ``NAME.mrhnet`` unless given; ``keep_run_dir=False`` removes it at the end,
:func:`new_run_dir` makes a temporary one) with:

* ``checkpoint/``: the last complete checkpoint (weights, optimiser, scheduler, epoch, random states,
  sample order, best weights), written atomically after every epoch (:mod:`MRHNetLib.network.checkpoint`);
* ``log.csv`` and ``log.json``: per-epoch training / validation loss, learning rate, time;
* ``curve.png``: the loss curves (also on demand: :func:`plot_log`, ``mrhnet train --plot RUN_DIR``).

The options, their defaults and help live in :mod:`MRHNetLib.network.config` (:func:`config_for` gives
a command's; fine-tuning starts at learning rate 1e-4). Defaults are the original's recipe
(``MRH_training.mlx``): MSE over the 3 x 3 target patch, SGD with momentum 0.9, learning rate 0.1 x 0.1
every 10 epochs, L2 1e-4 on the weights (MATLAB's default bias L2 factor is 0), gradient clipping of
each parameter's gradient to L2 norm 0.01 (MATLAB's ``l2norm`` method), mini-batch 128, up to 300
epochs, the last 1000 (shuffled) samples held out. The paper's variants are options: early stopping
(patience 5, best-validation weights kept), orthogonal initialisation and the L1 loss.

Under ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` > 1) every rank takes a contiguous shard of each
global batch and DistributedDataParallel averages the gradients (NCCL on GPUs, gloo on CPU); the loss of
each shard is weighted so that the update equals the single-process update of the same global batch.
"""
from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import random
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import TrainConfig, config_for, gui_defaults, option_specs  # noqa: F401 (the API)
from .checkpoint import has_checkpoint, load_checkpoint, remove_checkpoint, save_checkpoint
from ..files import atomic_write_bytes, atomic_write_text, remove_own_files
from ..errors import MRHNetError, Progress, ProgressCallback, as_progress
from .model import MRHNet, init_weights, reinit_conv
from .modelfile import SUFFIX, LoadedModel, ModelInfo, check_model_path, load_model, save_model
from ..data.orient import canonical_subject
from ..data.protocol import Protocol, check_compatible, scale_group
from ..data.subject import Subject

LOG_FIELDS = ("epoch", "train_loss", "val_loss", "lr", "seconds", "samples_per_s")
RUN_FILES = ("log.json", "log.csv", "curve.png")
RESUMABLE_CHANGES = ("epochs", "device", "num_threads", "checkpoint_steps", "preload_mb")


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def run_dir_for(out: str | os.PathLike) -> Path:
    """The run folder that goes with a model path: ``af.mrhnet`` -> ``af.run``."""
    out = Path(out)
    stem = out.name[: -len(SUFFIX)] if out.name.endswith(SUFFIX) else out.name
    return out.with_name(stem + ".run")


def train(subjects: Sequence[Subject], target: str, out: str | os.PathLike, config: TrainConfig | None = None,
          protocol: Protocol | None = None, val_subjects: Sequence[Subject] | None = None,
          progress: Progress | ProgressCallback | None = None, resume: bool = False,
          run_dir: str | os.PathLike | None = None, description: str = "", keep_run_dir: bool = True) -> Path:
    """Train a new network on ``subjects`` for ``target`` and write the model file ``out``.

    ``config``: default ``config_for("train")``. ``protocol``: the input channels (default: the first
    subject's own raw images; ``maps_protocol()`` for parameter maps). ``val_subjects``: held-out
    subjects for validation (default: the last ``config.val_samples`` shuffled samples). ``resume``:
    continue from the run folder's checkpoint. ``run_dir``: checkpoints and logs (default ``NAME.run``
    beside ``out``); ``keep_run_dir=False`` removes them when training ends, however it ends
    (:func:`remove_run_dir`). ``out`` must be a new ``NAME.mrhnet`` path or an earlier model
    (:func:`~MRHNetLib.network.modelfile.check_model_path`, checked before any work).
    Returns the model path (written by rank 0 only under ``torchrun``)."""
    check_model_path(out)
    config = config or config_for("train")
    subjects = _check_subjects(subjects, target, "training")
    protocol = copy.deepcopy(protocol) if protocol is not None else subjects[0].protocol("raw")
    protocol.normalisation.method = config.normalisation
    if protocol.voxel_size_mm is None:
        protocol.voxel_size_mm = subjects[0].voxel_size
    for s in subjects + list(val_subjects or []):
        check_compatible(protocol, s.protocol(protocol.input_kind))
    return _run(subjects, target, out, config, protocol, val_subjects, progress, resume, run_dir, None,
                description, keep_run_dir)


def finetune(base_model: str | os.PathLike | LoadedModel, subjects: Sequence[Subject], target: str,
             out: str | os.PathLike, config: TrainConfig | None = None,
             val_subjects: Sequence[Subject] | None = None, progress: Progress | ProgressCallback | None = None,
             resume: bool = False, run_dir: str | os.PathLike | None = None, description: str = "",
             keep_run_dir: bool = True) -> Path:
    """Transfer learning: start from ``base_model``, replace Conv4 and Conv5 with freshly initialised
    layers learning at ``config.head_lr_factor`` x the base rate, train all layers on ``subjects`` for
    ``target``. ``config``: default ``config_for("finetune")`` (base rate 1e-4); its depth, width and
    normalisation are the base model's, as is the input protocol. Other arguments as :func:`train`."""
    check_model_path(out)
    base = base_model if isinstance(base_model, LoadedModel) else load_model(base_model)
    config = config or config_for("finetune")
    config = TrainConfig.from_dict({**config.to_dict(), "depth": base.info.depth, "width": base.info.width,
                                    "normalisation": base.info.protocol.normalisation.method})
    subjects = _check_subjects(subjects, target, "fine-tuning")
    protocol = copy.deepcopy(base.info.protocol)
    for s in subjects + list(val_subjects or []):
        try:
            check_compatible(protocol, s.protocol(protocol.input_kind))
        except MRHNetError as exc:
            raise MRHNetError(f"{s.name}: does not fit base model {base.name}: {exc}") from None
    return _run(subjects, target, out, config, protocol, val_subjects, progress, resume, run_dir, base,
                description, keep_run_dir)


def new_run_dir() -> Path:
    """A new temporary run folder (``mrhnet-train-*`` in the system's temporary folder), for callers
    that show the log while training runs and then remove it (:func:`remove_run_dir`)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="mrhnet-train-"))


def remove_run_dir(run_dir: str | os.PathLike) -> None:
    """Remove a run folder's checkpoint, logs and curve, then the folder if nothing else is in it.
    Files that training did not write are never deleted (the folder then stays with them)."""
    run_dir = Path(run_dir)
    if run_dir.is_symlink() or not run_dir.is_dir():
        return
    remove_checkpoint(run_dir / "checkpoint")
    remove_own_files(run_dir, _is_run_file)


def _is_run_file(name: str) -> bool:
    """A file training writes into its run folder, or the temporary of its atomic write."""
    return name in RUN_FILES or any(name.startswith(f".{f}.") for f in RUN_FILES)


def read_log(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch log of a run folder."""
    path = Path(run_dir) / "log.json"
    if not path.is_file():
        raise MRHNetError(f"{run_dir}: no training log (log.json) in this folder")
    try:
        return json.loads(path.read_text())["epochs"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise MRHNetError(f"{path}: unreadable training log ({exc})") from None


def plot_log(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Draw training and validation loss per epoch of a run folder to ``curve.png`` (or ``out``)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = read_log(run_dir)
    meta = json.loads((Path(run_dir) / "log.json").read_text())
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    epochs = [r["epoch"] for r in rows]
    ax.plot(epochs, [r["train_loss"] for r in rows], "o-", ms=3, label="training")
    val = [(r["epoch"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    if val:
        ax.plot(*zip(*val), "s-", ms=3, label="validation")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{meta.get('loss', 'loss')} loss (target / target scale)")
    ax.set_title(f"{meta.get('target', '').upper()} {meta.get('kind', 'train')}: {Path(run_dir).name}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out) if out is not None else Path(run_dir) / "curve.png"
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(out, buf.getvalue())
    return out


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
@dataclass
class SampleSet:
    """Training samples ready for batching: patches ``x`` (N, C, P, P) and targets ``y`` (N, 1, P, P),
    either materialised tensors or a lazy source with ``batch(indices)``."""

    n: int
    source: Any
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None

    def batch(self, idx: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.x is not None:
            t = torch.as_tensor(idx, device=self.x.device)
            return self.x.index_select(0, t).to(device), self.y.index_select(0, t).to(device)
        x, y = _fetch(self.source, idx)
        return torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)

    def preload(self, device: torch.device, limit_mb: int) -> "SampleSet":
        if self.x is None and self.n and _bytes_per_sample(self.source) * self.n <= limit_mb * 2 ** 20:
            x, y = _fetch(self.source, np.arange(self.n))
            self.x, self.y = torch.as_tensor(x).to(device), torch.as_tensor(y).to(device)
        return self


def _check_subjects(subjects: Sequence[Subject], target: str, what: str) -> list[Subject]:
    subjects = list(subjects)
    if not subjects:
        raise MRHNetError(f"no {what} subjects given")
    for s in subjects:
        s.target(target)  # raises a clear error when missing
    return subjects


def _subject_arrays(subject: Subject, protocol: Protocol, target: str | None
                    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """(normalised inputs (C,X,Y,Z), target or None, mask, per-channel input scales)."""
    x, scales = subject.inputs_and_scales(protocol)
    y = None
    if target is not None:
        y = np.nan_to_num(np.asarray(subject.target(target), dtype=np.float32))
    return x, y, subject.mask, scales


def _target_scale(subjects: Sequence[Subject], target: str, percentile: float) -> float:
    values = np.concatenate([np.nan_to_num(np.asarray(s.target(target), np.float32))[s.mask] for s in subjects])
    scale = float(np.percentile(values, percentile)) if values.size else 0.0
    if not scale > 0:
        scale = float(np.abs(values).max()) if values.size else 0.0
    if not scale > 0:
        raise MRHNetError(f"{subjects[0].name}: target '{target}' is zero everywhere inside the brain mask")
    return scale


def _prepare(subjects: Sequence[Subject], val_subjects: Sequence[Subject] | None, target: str,
             protocol: Protocol, config: TrainConfig) -> tuple[SampleSet, SampleSet, Protocol, dict]:
    """Sample both sets (:mod:`MRHNetLib.network.patches`) and fill the protocol's patch geometry, target scale
    and reference input scales."""
    from .patches import SamplingConfig

    sampling = SamplingConfig.from_dict({"plane": protocol.patch_plane, "half_patch": protocol.half_patch,
                                         **config.sampling, "validation": config.val_samples,
                                         "seed": config.seed})
    protocol.patch_plane, protocol.half_patch = sampling.plane, sampling.half_patch
    tscale = _target_scale(subjects, target, config.target_percentile)
    protocol.normalisation.target_scale = tscale
    groups: dict[str, list[float]] = {}
    source = _patch_set(subjects, target, protocol, sampling, tscale, groups)
    protocol.normalisation.reference_scales = {g: float(np.mean(v)) for g, v in groups.items()}
    if len(source) == 0:
        raise MRHNetError(f"{subjects[0].name}: no training samples pass the sampling filters for '{target}' "
                          f"(check the target's values and the slice range)")
    source.shuffle(config.seed)
    if val_subjects:
        train_part, val_part = source, _patch_set(val_subjects, target, protocol, sampling, tscale, {})
    else:
        n_val = min(config.val_samples, len(source) // 5)
        if 0 < n_val < config.val_samples:
            warnings.warn(f"only {len(source)} samples: holding out {n_val} for validation instead of "
                          f"{config.val_samples}")
        train_part, val_part = source.split(n_val)
    train_set, val_set = SampleSet(len(train_part), train_part), SampleSet(len(val_part), val_part)
    summary = {"subjects": [s.name for s in subjects], "val_subjects": [s.name for s in val_subjects or []],
               "samples": train_set.n, "val_samples": val_set.n, "target_scale": tscale,
               "sampling": sampling.to_dict(), "fingerprint": _fingerprint(train_set, val_set)}
    return train_set, val_set, protocol, summary


def _patch_set(subjects: Sequence[Subject], target: str, protocol: Protocol, sampling, tscale: float,
               groups: dict[str, list[float]]):
    """A PatchSet of ``subjects`` (inputs normalised, targets / ``tscale``); input scales into ``groups``."""
    from .patches import PatchSet, sample_centres

    stacks, targets, centres, affines = [], [], [], []
    for s in subjects:
        s = canonical_subject(s)[0]  # patches in the networks' one voxel orientation (MRHNetLib.data.orient)
        x, y, mask, scales = _subject_arrays(s, protocol, target)
        for ch, sc in zip(protocol.channels, scales):
            groups.setdefault(scale_group(ch.role), []).append(float(sc))
        centres.append(sample_centres(y, mask, s.affine, sampling))
        stacks.append(x)
        targets.append(y / np.float32(tscale))
        affines.append(s.affine)
    return PatchSet(stacks, targets, centres, affines, sampling.half_patch, sampling.plane)


def _fetch(source: Any, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return source.get(np.asarray(idx, dtype=np.int64))


def _bytes_per_sample(source: Any) -> int:
    p = 2 * source.half_patch + 1
    return 4 * (source.n_channels + 1) * p * p


def _fingerprint(*sets: SampleSet) -> str:
    """A short hash of the samples (checked on resume so that a run continues on the same data)."""
    import hashlib

    h = hashlib.sha256()
    for s in sets:
        h.update(str(s.n).encode())
        if s.n:
            idx = np.unique(np.linspace(0, s.n - 1, num=min(s.n, 64)).astype(np.int64))
            x, y = _fetch(s.source, idx)
            h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
            h.update(np.ascontiguousarray(y, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# devices, determinism, distribution
# --------------------------------------------------------------------------------------------
@dataclass
class _Dist:
    rank: int
    world: int
    device: torch.device
    created: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA when present, else CPU (:func:`MRHNetLib.network.infer.resolve_device`); a bare ``cuda``
    means the local rank's GPU."""
    from .infer import resolve_device

    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def _setup_distributed(config: TrainConfig) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(0, 1, _device(config.device))
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(config.device, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    return _Dist(dist.get_rank(), dist.get_world_size(), device, created)


@contextmanager
def _torch_settings(config: TrainConfig, device: torch.device) -> Iterator[None]:
    """Deterministic kernels and thread count for the duration of training, restored afterwards."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic, torch.get_num_threads())
    try:
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        if config.deterministic:
            if device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[1], saved[2]
        torch.set_num_threads(saved[3])


def _rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": {"keys": np_state[1].astype(np.int64).tolist(),
                                                        "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                                                        "gauss": float(np_state[4])},
             "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# the training loop
# --------------------------------------------------------------------------------------------
def _param_groups(net: MRHNet, config: TrainConfig, head_factor: float) -> list[dict[str, Any]]:
    """Weights with L2, biases without (MATLAB's defaults); the head at ``head_factor`` x the rate."""
    head = {id(p) for conv in net.head() for p in conv.parameters()}
    groups = []
    for is_head, factor in ((False, 1.0), (True, head_factor)):
        for is_bias in (False, True):
            params = [p for name, p in net.named_parameters()
                      if (id(p) in head) == is_head and name.endswith("bias") == is_bias]
            groups.append({"params": params, "lr": config.lr * factor,
                           "weight_decay": 0.0 if is_bias else config.weight_decay,
                           "name": ("head" if is_head else "body") + ("_bias" if is_bias else "_weight")})
    return groups


def build_training(in_channels: int, config: TrainConfig, base: LoadedModel | None = None
                   ) -> tuple[MRHNet, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The network, optimiser and schedule at the start of training.

    A new network is initialised with ``config.init`` from ``config.seed``. With ``base`` (finetune)
    every layer is loaded from it, then Conv4 and Conv5 are re-initialised and learn at
    ``config.head_lr_factor`` x ``config.lr``."""
    gen = torch.Generator().manual_seed(config.seed)
    net = MRHNet(in_channels, config.depth, config.width)
    if base is None:
        init_weights(net, config.init, gen)
        head_factor = 1.0
    else:
        net.load_state_dict(base.net.state_dict())
        for conv in net.head():
            reinit_conv(conv, config.init, gen)
        head_factor = config.head_lr_factor
    optimiser = torch.optim.SGD(_param_groups(net, config, head_factor), lr=config.lr, momentum=config.momentum)
    scheduler = torch.optim.lr_scheduler.StepLR(optimiser, step_size=config.lr_drop_every,
                                                gamma=config.lr_drop_factor)
    return net, optimiser, scheduler


def _clip(params: list[torch.Tensor], max_norm: float, method: str) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or max_norm <= 0:
        return
    if method == "global":
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    norms = torch.stack(torch._foreach_norm(grads)) if hasattr(torch, "_foreach_norm") else \
        torch.stack([g.norm() for g in grads])
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, list(coef.unbind()))


def _loss_sum(pred: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    pred = pred.float()
    return F.mse_loss(pred, y, reduction="sum") if kind == "mse" else F.l1_loss(pred, y, reduction="sum")


def _evaluate(net: torch.nn.Module, data: SampleSet, config: TrainConfig, dist: _Dist) -> float | None:
    """Mean loss per target voxel over ``data`` (shards across ranks, summed)."""
    if data.n == 0:
        return None
    shard = np.array_split(np.arange(data.n), dist.world)[dist.rank]
    total = torch.zeros(2, dtype=torch.float64, device=dist.device)
    net.eval()
    with torch.no_grad(), _autocast(config, dist.device):
        for start in range(0, len(shard), 4096):
            x, y = data.batch(shard[start:start + 4096], dist.device)
            total[0] += _loss_sum(net(x), y, config.loss).double()
            total[1] += y.numel()
    net.train()
    if dist.world > 1:
        torch.distributed.all_reduce(total)
    return float(total[0] / total[1])


def _autocast(config: TrainConfig, device: torch.device):
    if config.amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return nullcontext()


def _write_log(run_dir: Path, history: list[dict], meta: dict) -> None:
    atomic_write_text(run_dir / "log.json", json.dumps({**meta, "epochs": history}, indent=1))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in LOG_FIELDS})
    atomic_write_text(run_dir / "log.csv", buf.getvalue())


def _check_resume(state: dict, config: TrainConfig, summary: dict, kind: str, target: str, ckpt: Path) -> None:
    old = TrainConfig.from_dict(state["config"]).to_dict()
    new = config.to_dict()
    changed = [k for k in new if new[k] != old.get(k) and k not in RESUMABLE_CHANGES]
    if changed:
        raise MRHNetError(f"{ckpt}: cannot resume with different option(s) {', '.join(changed)} "
                          f"(checkpoint: {', '.join(f'{k}={old.get(k)!r}' for k in changed)})")
    if state["kind"] != kind or state["target"] != target:
        raise MRHNetError(f"{ckpt}: checkpoint is a {state['kind']} run for '{state['target']}', "
                          f"not {kind} for '{target}'")
    if state["summary"]["fingerprint"] != summary["fingerprint"]:
        raise MRHNetError(f"{ckpt}: the training samples differ from the interrupted run's "
                          f"(same subjects and sampling options are needed to resume)")


def _run(subjects: Sequence[Subject], target: str, out: str | os.PathLike, config: TrainConfig,
         protocol: Protocol, val_subjects: Sequence[Subject] | None, progress, resume: bool,
         run_dir: str | os.PathLike | None, base: LoadedModel | None, description: str,
         keep_run_dir: bool = True) -> Path:
    out = Path(out)
    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(out)
    ckpt_dir = run_dir / "checkpoint"
    kind = "finetune" if base is not None else "train"
    progress = as_progress(progress)
    dist = _setup_distributed(config)
    try:
        with _torch_settings(config, dist.device):
            progress.update(0.0, "preparing samples")
            train_set, val_set, protocol, summary = _prepare(subjects, val_subjects, target, protocol, config)
            train_set.preload(dist.device, config.preload_mb)
            val_set.preload(dist.device, config.preload_mb)
            return _fit(train_set, val_set, protocol, summary, target, out, config, run_dir, ckpt_dir, kind,
                        base, progress, resume, dist, description)
    finally:
        if dist.created:
            torch.distributed.destroy_process_group()
        if not keep_run_dir and dist.main:
            remove_run_dir(run_dir)


def _fit(train_set: SampleSet, val_set: SampleSet, protocol: Protocol, summary: dict, target: str, out: Path,
         config: TrainConfig, run_dir: Path, ckpt_dir: Path, kind: str, base: LoadedModel | None,
         progress: Progress, resume: bool, dist: _Dist, description: str) -> Path:
    device = dist.device
    _seed_all(config.seed)
    net, optimiser, scheduler = build_training(protocol.n_channels, config, base)
    net.to(device)
    amp_fp16 = config.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=amp_fp16)
    model = net
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in net.parameters()]

    epoch, step0, history = 0, 0, []
    best = {"loss": None, "epoch": None, "weights": None}
    bad_epochs, run_sum, run_count, epoch_time = 0, 0.0, 0, 0.0
    order = None
    if resume and has_checkpoint(ckpt_dir):
        state = load_checkpoint(ckpt_dir)
        _check_resume(state, config, summary, kind, target, ckpt_dir)
        net.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"]) if state.get("scaler") else None
        epoch, step0, history = state["epoch"], state["step"], state["history"]
        best, bad_epochs = state["best"], state["bad_epochs"]
        run_sum, run_count, epoch_time = state["run_sum"], state["run_count"], state["epoch_time"]
        order = state["order"].numpy() if step0 else None
        _set_rng_state(state["rng"], device)
    elif resume:
        warnings.warn(f"{ckpt_dir}: no checkpoint found; starting from the beginning")
    elif has_checkpoint(ckpt_dir) and dist.main:
        warnings.warn(f"{run_dir}: replacing the checkpoint of an earlier run (use --resume to continue it)")
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    log_meta = {"target": target, "kind": kind, "loss": config.loss, "config": config.to_dict(),
                "subjects": summary["subjects"], "val_subjects": summary["val_subjects"],
                "samples": summary["samples"], "val_samples": summary["val_samples"]}

    def checkpoint(ep: int, step: int, order_now: np.ndarray | None, sum_now: float, count_now: int,
                   tag: str) -> None:
        if not dist.main:
            return
        save_checkpoint(ckpt_dir, {
            "kind": kind, "target": target, "config": config.to_dict(), "summary": summary,
            "protocol": protocol.to_dict(), "model": net.state_dict(), "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if amp_fp16 else None,
            "epoch": ep, "step": step, "history": history, "best": best, "bad_epochs": bad_epochs,
            "run_sum": sum_now, "run_count": count_now, "epoch_time": epoch_time,
            "order": torch.as_tensor(order_now if order_now is not None else np.zeros(0, np.int64)),
            "rng": _rng_state(device)}, tag)

    B = config.batch_size
    steps = max(1, math.ceil(train_set.n / B))
    stop = bool(config.patience) and bad_epochs >= config.patience
    t_start = time.perf_counter()
    model.train()
    while epoch < config.epochs and not stop:
        if order is None:
            order = np.random.default_rng([config.seed, epoch]).permutation(train_set.n)
            run_sum, run_count, epoch_time = 0.0, 0, 0.0
        # this rank's loss sum and voxel count, kept on the device (no sync per step)
        acc = torch.tensor([run_sum, run_count], dtype=torch.float64, device=device) if dist.main else \
            torch.zeros(2, dtype=torch.float64, device=device)
        t0 = time.perf_counter()
        lr_now = optimiser.param_groups[0]["lr"]
        message = f"epoch {epoch + 1}/{config.epochs}" + (f" loss {history[-1]['train_loss']:.4g}" if history else "")
        for step in range(step0, steps):
            batch = order[step * B:(step + 1) * B]
            local = np.array_split(batch, dist.world)[dist.rank]
            x, y = train_set.batch(local, device)
            with _autocast(config, device):
                pred = model(x)
            local_sum = _loss_sum(pred, y, config.loss)
            # weighted so that DDP's gradient average equals the gradient of the global batch mean
            loss = local_sum * (dist.world / (len(batch) * int(np.prod(y.shape[1:]))))
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimiser)
            _clip(params, config.clip_norm, config.clip_method)
            scaler.step(optimiser)
            scaler.update()
            acc[0] += local_sum.detach().double()
            acc[1] += y.numel()
            if config.checkpoint_steps and (step + 1) % config.checkpoint_steps == 0 and step + 1 < steps:
                epoch_time += time.perf_counter() - t0
                t0 = time.perf_counter()
                run_sum, run_count = _global_sums(acc, dist)
                checkpoint(epoch, step + 1, order, run_sum, run_count, f"{epoch + 1:04d}-{step + 1:06d}")
            if (step + 1) % 25 == 0:
                s_, c_ = acc.tolist()
                message = f"epoch {epoch + 1}/{config.epochs} loss {s_ / max(c_, 1):.4g}"
            progress.update((epoch + (step + 1) / steps) / config.epochs, message)
        step0, order = 0, None
        epoch_time += time.perf_counter() - t0
        run_sum, run_count = _global_sums(acc, dist)
        train_loss = run_sum / max(run_count, 1)
        if not math.isfinite(train_loss):
            raise MRHNetError(f"training diverged in epoch {epoch + 1} (loss {train_loss}); lower the learning "
                              f"rate (--lr) or keep gradient clipping on")
        val_loss = _evaluate(net, val_set, config, dist)
        scheduler.step()
        epoch += 1
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr_now,
                        "seconds": round(epoch_time, 3),
                        "samples_per_s": round(train_set.n / epoch_time, 1) if epoch_time > 0 else None})
        if val_loss is not None and (best["loss"] is None or val_loss < best["loss"]):
            best = {"loss": val_loss, "epoch": epoch,
                    "weights": {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
                    if (config.keep_best or config.patience) else None}
            bad_epochs = 0
        elif val_loss is not None:
            bad_epochs += 1
        stop = bool(config.patience) and val_set.n > 0 and bad_epochs >= config.patience
        checkpoint(epoch, 0, None, 0.0, 0, f"{epoch:04d}")
        if dist.main:
            _write_log(run_dir, history, log_meta)
        progress.update(epoch / config.epochs, f"epoch {epoch}/{config.epochs} loss {train_loss:.4g}"
                        + (f" val {val_loss:.4g}" if val_loss is not None else ""))
    seconds = time.perf_counter() - t_start

    use_best = best.get("weights") is not None and (config.keep_best or config.patience)
    if use_best:
        net.load_state_dict(best["weights"])
    final = history[-1] if history else {}
    if dist.main:
        info = _model_info(protocol, config, target, summary, history, best, use_best, kind, base, dist,
                           seconds, description)
        save_model(out, net.to("cpu"), info)
        if history:
            try:
                plot_log(run_dir)
            except ImportError:  # matplotlib is optional: the Slicer module plots log.json itself
                pass
    if dist.world > 1:
        torch.distributed.barrier()
    val = best["loss"] if use_best else final.get("val_loss")
    progress.update(1.0, f"saved {out.name}" + (f" (val {val:.4g})" if val is not None else ""))
    return out


def _global_sums(acc: torch.Tensor, dist: _Dist) -> tuple[float, int]:
    """(loss sum, voxel count) over all ranks (the resumed part of an epoch is held by rank 0)."""
    total = acc.clone()
    if dist.world > 1:
        torch.distributed.all_reduce(total)
    s, c = total.tolist()
    return s, int(c)


def _model_info(protocol: Protocol, config: TrainConfig, target: str, summary: dict, history: list[dict],
                best: dict, use_best: bool, kind: str, base: LoadedModel | None, dist: _Dist, seconds: float,
                description: str) -> ModelInfo:
    from datetime import datetime, timezone

    final = history[-1] if history else {}
    val = best["loss"] if use_best else final.get("val_loss")
    n_subj = len(summary["subjects"])
    text = (f"{kind} on {n_subj} subject{'s' * (n_subj != 1)} ({', '.join(summary['subjects'])}), "
            f"{summary['samples']} samples, {len(history)} epochs"
            + (f", validation {config.loss.upper()} {val:.4g}" if val is not None else "")
            + (f" (best epoch {best['epoch']})" if use_best else "")
            + (f", from {base.name}" if base is not None else ""))
    training = {
        "summary": text, "kind": kind, **{k: v for k, v in summary.items() if k != "fingerprint"},
        "epochs": len(history), "train_loss": final.get("train_loss"), "val_loss": val,
        "best_epoch": best["epoch"] if use_best else None, "loss": config.loss,
        "config": config.to_dict(), "device": str(dist.device), "world_size": dist.world,
        "seconds": round(seconds, 1),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    provenance: dict[str, Any] = {"trained_by": f"mrhnet {kind}"}
    if base is not None:
        provenance["base_model"] = {"name": base.name, "target": base.info.target,
                                    "training": base.info.training.get("summary", "")}
    desc = description or f"MRH-Net {target.upper()}, depth {config.depth}, {kind} ({text})"
    return ModelInfo(protocol, config.depth, target, "a.u.", config.width, desc, training, provenance)
