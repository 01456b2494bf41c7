"""Safe model files: a folder ``NAME.mrhnet/`` with ``weights.safetensors`` and ``model.json``.

``model.json`` holds everything needed to use the network correctly: architecture and depth, the input
:class:`~MRHNetLib.data.protocol.Protocol` (channel roles, b-values, directions, patch plane and size,
normalisation including the target scale, voxel size), the target and its units, a training summary,
provenance and the software version, and the SHA-256 of the weights. Loading never unpickles: weights
are read with safetensors only, and a file whose hash does not match, or that is a pickle / torch.save
archive, is refused with a clear error.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import MRHNetError
from ..files import read_json, sha256_file
from ..data.protocol import Protocol

if TYPE_CHECKING:  # torch is imported only where weights are read or written: listing models needs none
    import torch

    from .model import MRHNet

FORMAT = "mrhnet-model"
FORMAT_VERSION = 1
WEIGHTS = "weights.safetensors"
META = "model.json"
SUFFIX = ".mrhnet"
MODEL_FILES = (META, WEIGHTS)


@dataclass
class ModelInfo:
    """Metadata of a model file (everything but the weights)."""

    protocol: Protocol
    depth: int
    target: str = "af"
    target_units: str = "a.u."
    width: int = 64
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        import torch

        from .. import __version__

        return {"format": FORMAT, "format_version": FORMAT_VERSION,
                "architecture": {"name": "MRHNet", "in_channels": self.protocol.n_channels, "depth": self.depth,
                                 "width": self.width},
                "target": {"name": self.target, "units": self.target_units},
                "description": self.description, "protocol": self.protocol.to_dict(),
                "training": self.training, "provenance": self.provenance,
                "software": {"mrhnet": __version__, "torch": torch.__version__}}

    @classmethod
    def from_dict(cls, d: dict, where: str = "model.json") -> "ModelInfo":
        if d.get("format") != FORMAT:
            raise MRHNetError(f"{where}: not an MRHNet model description (format={d.get('format')!r})")
        if int(d.get("format_version", 0)) > FORMAT_VERSION:
            raise MRHNetError(f"{where}: model format version {d['format_version']} is newer than this software "
                              f"understands ({FORMAT_VERSION}); update MRHNet")
        arch = d.get("architecture", {})
        if arch.get("name") != "MRHNet":
            raise MRHNetError(f"{where}: unknown architecture {arch.get('name')!r}")
        protocol = Protocol.from_dict(d["protocol"])
        if protocol.n_channels != int(arch.get("in_channels", -1)):
            raise MRHNetError(f"{where}: protocol lists {protocol.n_channels} channels but the network has "
                              f"{arch.get('in_channels')} inputs")
        return cls(protocol, int(arch["depth"]), d["target"]["name"], d["target"].get("units", "a.u."),
                   int(arch.get("width", 64)), d.get("description", ""), d.get("training", {}),
                   d.get("provenance", {}))


@dataclass
class LoadedModel:
    """A network ready to run, with its metadata and where it came from."""

    net: MRHNet
    info: ModelInfo
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.path.name[: -len(SUFFIX)] if self.path and self.path.name.endswith(SUFFIX) else \
            (self.path.name if self.path else "model")


def check_model_path(path: str | os.PathLike) -> Path:
    """Refuse a model path that saving could not write without losing a user's files: it must end in
    ``.mrhnet``, and an existing one must be an earlier model (nothing but our model files). Returns it."""
    path = Path(path)
    if not path.name.endswith(SUFFIX) or path.name == SUFFIX:
        raise MRHNetError(f"{path}: a model path must end in {SUFFIX} (for example "
                          f"{path.with_name((path.stem if path.name != SUFFIX else 'model') + SUFFIX)})")
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise MRHNetError(f"{path}: exists and is not a model folder; choose a new NAME{SUFFIX} path")
    if path.is_dir():
        foreign = sorted(p.name for p in path.iterdir() if not _ours(p))
        if foreign:
            raise MRHNetError(f"{path}: holds other files than a model ({', '.join(foreign[:3])}"
                              f"{', ...' if len(foreign) > 3 else ''}); it is never replaced: choose a new "
                              f"NAME{SUFFIX} path")
    return path


def _ours(p: Path) -> bool:
    """A model file of ours, or a temporary that our atomic writes leave (``.NAME.xxxx``)."""
    if p.is_symlink() or not p.is_file():
        return False
    return p.name in MODEL_FILES or any(p.name.startswith(f".{name}.") for name in MODEL_FILES)


def save_model(path: str | os.PathLike, net: MRHNet, info: ModelInfo) -> Path:
    """Write ``path`` (a ``.mrhnet`` folder) atomically: built in a temporary folder beside it, then
    renamed into place. An existing folder is replaced only when it is an earlier model
    (:func:`check_model_path`); anything else is refused and left untouched."""
    from safetensors.torch import save

    path = check_model_path(path)
    if net.in_channels != info.protocol.n_channels or net.depth != info.depth:
        raise MRHNetError(f"{path}: network ({net.in_channels} inputs, depth {net.depth}) does not match its "
                          f"description ({info.protocol.n_channels} channels, depth {info.depth})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-" + path.name + "-", dir=path.parent))
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; a model folder is meant to be shared
        state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
        (tmp / WEIGHTS).write_bytes(save(state, metadata={"format": FORMAT}))  # save_file would make it 0600
        meta = info.to_dict()
        meta["weights_sha256"] = sha256_file(tmp / WEIGHTS)
        (tmp / META).write_text(json.dumps(meta, indent=1))
        _swap_into_place(tmp, path)
    finally:
        _remove_model_folder(tmp)
    return path


def _swap_into_place(new: Path, path: Path) -> None:
    """Rename ``new`` to ``path``; an earlier model there stays whole until the new one is in place."""
    if not path.exists():
        os.replace(new, path)
        return
    check_model_path(path)  # again, just before touching it
    trash = Path(tempfile.mkdtemp(prefix=".old-" + path.name + "-", dir=path.parent))
    try:
        os.replace(path, trash / path.name)
        os.replace(new, path)
    except BaseException:  # also a cancel (SystemExit from SIGTERM) between the two renames
        if (trash / path.name).exists() and not path.exists():
            os.replace(trash / path.name, path)  # put the earlier model back
        raise
    finally:
        _remove_model_folder(trash / path.name)
        _remove_model_folder(trash)


def _remove_model_folder(folder: Path) -> None:
    """Remove our model files and temporaries from ``folder``, then the folder if that left it empty.
    Anything else (a file someone added meanwhile) is never deleted: the folder then stays."""
    if folder.is_symlink() or not folder.is_dir():
        return
    for p in folder.iterdir():
        if _ours(p):
            p.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass


def _read_meta(path: Path) -> tuple[dict, ModelInfo]:
    """The raw ``model.json`` of a model folder and its parsed :class:`ModelInfo`."""
    meta_path = path / META if path.is_dir() else path
    if not path.exists():
        raise MRHNetError(f"{path}: model does not exist")
    if not meta_path.exists():
        raise MRHNetError(f"{path}: not a model folder (no {META})")
    _refuse_foreign_file(meta_path)
    meta = read_json(meta_path)
    return meta, ModelInfo.from_dict(meta, str(meta_path))


def _refuse_foreign_file(path: Path) -> None:
    """A clear word for files that are not a model description: MATLAB networks, weights alone."""
    with open(path, "rb") as f:
        head = f.read(128)
    if path.suffix.lower() == ".mat" or head.startswith(b"MATLAB") or head[:8] == b"\x89HDF\r\n\x1a\n":
        raise MRHNetError(f"{path}: is a MATLAB file, not a model; convert an original MRH-Net network first: "
                          f"mrhnet import-matlab {path} --out {path.stem}{SUFFIX}")
    if path.name == WEIGHTS or head[:1] == b"\x80" or head[:2] == b"PK":
        raise MRHNetError(f"{path}: is a weights file, not a model; give the {SUFFIX} folder that holds it "
                          f"with its {META}")


def _check_tensors(state: dict[str, torch.Tensor], net: MRHNet, weights: Path, info: ModelInfo) -> None:
    """Name the first tensor that is missing, unexpected or of the wrong shape in ``weights``."""
    expected = net.state_dict()
    fit = f"{weights}: weights do not fit an MRH-Net of depth {info.depth} with {info.protocol.n_channels} inputs"
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    for names, what in ((missing, "is missing"), (extra, "is not part of it")):
        if names:
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            raise MRHNetError(f"{fit}: tensor '{names[0]}'{more} {what}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise MRHNetError(f"{fit}: tensor '{k}' has shape {tuple(state[k].shape)}, not {tuple(v.shape)}")


def read_info(path: str | os.PathLike) -> ModelInfo:
    """Read only the metadata of a model folder."""
    return _read_meta(Path(path))[1]


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model folder safely (safetensors only; hash checked). Raises :class:`MRHNetError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .model import MRHNet

    path = Path(path)
    meta, info = _read_meta(path)
    weights = path / WEIGHTS
    if not weights.exists():
        raise MRHNetError(f"{path}: no {WEIGHTS} in the model folder")
    with open(weights, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80" or head[:2] == b"PK":
        raise MRHNetError(f"{weights}: is a pickle / torch.save archive, which is never loaded (unsafe); "
                          f"convert the weights to safetensors")
    expected = meta.get("weights_sha256")
    if expected and expected != sha256_file(weights):
        raise MRHNetError(f"{weights}: SHA-256 does not match model.json: the file was modified or damaged")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise MRHNetError(f"{weights}: not a valid safetensors file ({exc})") from None
    net = MRHNet(info.protocol.n_channels, info.depth, info.width)
    _check_tensors(state, net, weights, info)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise MRHNetError(f"{weights}: weights do not fit an MRH-Net of depth {info.depth} with "
                          f"{info.protocol.n_channels} inputs ({first})") from None
    net.eval().to(device)
    return LoadedModel(net, info, path)
