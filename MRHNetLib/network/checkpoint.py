"""Safe, atomic training checkpoints: tensors in safetensors, everything else in JSON (never pickle).

A checkpoint folder holds ``ckpt-<tag>.safetensors`` files and one ``checkpoint.json`` that names the
current tensor file and its SHA-256. Writing a checkpoint first writes the tensor file (temporary name,
then rename), then ``checkpoint.json`` (the same), which is the commit point; older tensor files are
removed afterwards. A process killed at any moment leaves the last complete checkpoint readable.

Nested states (an optimiser's ``state_dict``, RNG states) are split by :func:`flatten` into a JSON tree
whose tensors are replaced by ``{"__tensor__": key}`` references, and rebuilt by :func:`unflatten`.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import MRHNetError
from ..files import atomic_write_bytes, atomic_write_text, read_json, remove_own_files, sha256_file

STATE = "checkpoint.json"
FORMAT = "mrhnet-checkpoint"
# our files, and the temporaries of their atomic writes (files.atomic_write_bytes: ".NAME.xxxx")
_NAMES = r"(checkpoint\.json|ckpt-[\w-]+\.safetensors)"
_CHECKPOINT_FILE = re.compile(rf"{_NAMES}|\.{_NAMES}\..+")


def flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "") -> Any:
    """A JSON-able copy of ``obj`` with tensors moved into ``tensors`` (keys are their paths)."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "tensor"
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()  # own storage: safetensors refuses shared memory
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if any(not isinstance(k, (str, int)) for k in obj):
            raise TypeError(f"{prefix}: only str/int keys can be stored")
        out = {str(k): flatten(v, tensors, f"{prefix}.{k}" if prefix else str(k)) for k, v in obj.items()}
        int_keys = [str(k) for k in obj if isinstance(k, int)]
        if int_keys:
            out["__int_keys__"] = int_keys
        return out
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy scalar
        return obj.item()
    if hasattr(obj, "tolist"):  # numpy array: small ones only (RNG states)
        return {"__array__": obj.tolist(), "dtype": str(obj.dtype)}
    raise TypeError(f"{prefix}: cannot store a {type(obj).__name__} in a checkpoint")


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten`."""
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(unflatten(v, tensors) for v in obj["__tuple__"])
    if "__array__" in obj:
        import numpy as np

        return np.asarray(obj["__array__"], dtype=obj["dtype"])
    int_keys = set(obj.get("__int_keys__", ()))
    return {(int(k) if k in int_keys else k): unflatten(v, tensors) for k, v in obj.items() if k != "__int_keys__"}


def save_checkpoint(folder: str | os.PathLike, state: dict[str, Any], tag: str) -> Path:
    """Store ``state`` (any nesting of dicts, lists, tuples, numbers, strings, tensors, small numpy
    arrays) as checkpoint ``tag``; returns the path of ``checkpoint.json``."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    tree = flatten(state, tensors)
    name = f"ckpt-{tag}.safetensors"
    atomic_write_bytes(folder / name, save(tensors, metadata={"format": FORMAT}))
    meta = {"format": FORMAT, "tensors": name, "sha256": sha256_file(folder / name), "state": tree}
    atomic_write_text(folder / STATE, json.dumps(meta))
    for old in folder.glob("ckpt-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return folder / STATE


def remove_checkpoint(folder: str | os.PathLike) -> None:
    """Remove a checkpoint folder's files (and their temporaries), then the folder if that emptied it;
    files that :func:`save_checkpoint` did not write are left alone."""
    remove_own_files(folder, _is_checkpoint_file)


def _is_checkpoint_file(name: str) -> bool:
    """``checkpoint.json``, ``ckpt-<tag>.safetensors`` or a temporary of their atomic writes."""
    return _CHECKPOINT_FILE.fullmatch(name) is not None


def has_checkpoint(folder: str | os.PathLike) -> bool:
    return (Path(folder) / STATE).is_file()


def load_checkpoint(folder: str | os.PathLike) -> dict[str, Any]:
    """Read the last complete checkpoint of ``folder`` (safetensors + JSON only; hash checked)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path = folder / STATE
    if not meta_path.is_file():
        raise MRHNetError(f"{folder}: no checkpoint to resume from ({STATE} missing)")
    meta = read_json(meta_path)
    if meta.get("format") != FORMAT:
        raise MRHNetError(f"{meta_path}: not an MRHNet checkpoint")
    tensor_path = folder / Path(meta["tensors"]).name
    if not tensor_path.is_file():
        raise MRHNetError(f"{tensor_path}: checkpoint tensors are missing")
    if sha256_file(tensor_path) != meta.get("sha256"):
        raise MRHNetError(f"{tensor_path}: SHA-256 does not match {STATE}: the checkpoint was modified or damaged")
    try:
        tensors = load_file(str(tensor_path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise MRHNetError(f"{tensor_path}: not a valid safetensors file ({exc})") from None
    return unflatten(meta["state"], tensors)
