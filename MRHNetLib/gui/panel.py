"""The Slicer panel's parameters as controller requests, framework-free (``p`` is the module's parameter
node, or any object with its attributes), so that the module keeps only widgets and this stays testable."""
from __future__ import annotations

from typing import Any

from .controller import Inputs

SHIPPED = ("af", "nf", "mbp")
NODE_ROLES = {"t2w": "t2w", "mt_on": "mtOn", "mt_off": "mtOff", "dwi_b2000": "dwiB2000", "dwi_b5000": "dwiB5000",
              "fa": "fa"}


def inputs(p) -> Inputs:
    """The chosen input nodes, the gradient files of 4D / sequence inputs, the mask."""
    return Inputs({role: getattr(p, name) for role, name in NODE_ROLES.items()},
                  {"dwi_b2000": p.dwiB2000Gradients, "dwi_b5000": p.dwiB5000Gradients}, p.mask)


def extra_models(p) -> list[str]:
    """Model folders the user added (stored ';'-separated)."""
    return [x for x in (p.extraModels.split(";") if p is not None and p.extraModels else []) if x]


def models(p) -> list[str]:
    """Ticked demo networks, the chosen original network, the added folders."""
    chosen = [name for name, use in zip(SHIPPED, (p.useAF, p.useNF, p.useMBP)) if use]
    return chosen + ([p.originalModel] if p.originalModel != "none" else []) + extra_models(p)


def training(p) -> dict[str, Any]:
    """Keyword arguments of :meth:`Controller.train`: only the options the user set are passed, so every
    other default (a fine-tune's learning rate above all) is the command's own (:mod:`MRHNetLib.network.config`)."""
    base = p.fineTuneFile or p.fineTuneFrom or None
    options: dict[str, Any] = {"epochs": p.epochs, "device": p.device}
    if p.learningRate > 0:  # 0: "default" in the panel
        options["lr"] = p.learningRate
    if base is None:  # a fine-tune keeps the base model's depth
        options["depth"] = p.depth
    return {"target": p.trainTarget, "stain": p.trainStain, "out": p.modelOutput, "base_model": base,
            "options": options}


def select(p, nodes: dict[str, Any]) -> None:
    """Choose a subject's nodes (e.g. the sample brain's) as inputs and its histology as training target."""
    for role, name in NODE_ROLES.items():
        setattr(p, name, nodes.get(role))
    p.mask = nodes.get("mask")
    p.trainTarget = nodes.get(p.trainStain)


def default_t2w(scene) -> Any:
    """The first plain scalar volume of the scene (not a DWI, labelmap or one of our outputs): the T2w guess."""
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
        if node.GetClassName() == "vtkMRMLScalarVolumeNode" and not node.GetAttribute("MRHNet.Output"):
            return node
    return None


SAMPLE_FILE = "MRHNetPhantomBrain.mrhsample"


def sample_source(resources: str, name: str, file_type: str) -> dict[str, Any]:
    """Sample Data registration of the simulated brain: a small local file (JSON: size and seed) that the
    module's file reader turns into the brain, so that ``SampleData.downloadSample(name)`` works."""
    from pathlib import Path

    folder = Path(resources)
    return {"category": "MRHNet", "sampleName": name, "uris": [(folder / SAMPLE_FILE).resolve().as_uri()],
            "fileNames": [SAMPLE_FILE], "nodeNames": [name], "loadFileTypes": [file_type],
            "thumbnailFileName": str(folder / "Icons" / "MRHNet.png")}


def sample_options(path: str) -> dict[str, Any]:
    """The ``size`` and ``seed`` of a ``.mrhsample`` file; a clear error for anything else."""
    import json

    from ..errors import MRHNetError
    from ..simulation.phantom import SIZES

    try:
        spec = json.loads(open(path, encoding="utf-8").read())
        size, seed = spec.get("size", "medium"), int(spec.get("seed", 0))
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise MRHNetError(f"{path}: not an MRHNet sample file ({exc})") from None
    if size not in SIZES:
        raise MRHNetError(f"{path}: unknown size '{size}' (use {', '.join(SIZES)})")
    return {"size": size, "seed": seed}


def replaces_model(path: str) -> bool:
    """True when training would replace an earlier model at ``path`` (the panel asks before it starts)."""
    from pathlib import Path

    from ..network.modelfile import META

    return bool(path) and (Path(path) / META).is_file()
