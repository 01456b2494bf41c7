"""Training options, with one owner: every default, help text, command-line flag and choice lives here.

:class:`TrainConfig` holds the options of ``train`` and ``finetune``. Each field carries its metadata
(help, flag, choices, the commands that offer it, whether the GUI panels show it, and per-command
defaults such as fine-tuning's learning rate 1e-4); the command line (:mod:`MRHNetLib.cli.train`) and
the GUIs derive their flags, help and defaults from it:

* :func:`config_for` (``command``, overrides) -> the config a command starts from;
* :func:`gui_defaults` -> the defaults of the fields the GUI panels show;
* :func:`option_specs` -> every option of a command (training and sampling) with flag, default and help.

The sampling options (:class:`~MRHNetLib.network.patches.SamplingConfig`, kept in ``TrainConfig.sampling``
as the options that differ from its defaults) take their defaults from that class and their help from
:data:`SAMPLING_HELP`. This module imports neither torch nor the GUI.
"""
from __future__ import annotations

from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import Any

from ..errors import MRHNetError

COMMANDS = ("train", "finetune")
TRAIN_ONLY = ("train",)  # finetune takes these from the base model
FINETUNE_ONLY = ("finetune",)


def option(default: Any, help: str, *, flag: str | None = None, choices: tuple[str, ...] | None = None,
           commands: tuple[str, ...] = COMMANDS, gui: bool = False, **command_defaults: Any) -> Any:
    """A :class:`TrainConfig` field with its metadata; ``command_defaults``: other defaults per command."""
    unknown = set(command_defaults) - set(COMMANDS)
    if unknown:
        raise TypeError(f"unknown command(s) {unknown}")
    meta = {"help": help, "flag": flag, "choices": choices, "commands": commands, "gui": gui,
            "defaults": command_defaults}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Training options (JSON-able; stored in the model file). Defaults: the original's recipe
    (``MRH_training.mlx``); use :func:`config_for` for a command's defaults (finetune: lr 1e-4)."""

    depth: int = option(5, "residual blocks (the paper's AF network: 30; 3-5 for small data sets)",
                        commands=TRAIN_ONLY, gui=True)
    width: int = option(64, "filters per convolution", commands=TRAIN_ONLY)
    epochs: int = option(300, "maximum epochs", gui=True)
    batch_size: int = option(128, "mini-batch size", flag="--batch")
    lr: float = option(0.1, "initial learning rate (finetune: of the kept layers)", gui=True, finetune=1e-4)
    lr_drop_factor: float = option(0.1, "learning-rate drop factor")
    lr_drop_every: int = option(10, "epochs between learning-rate drops")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(1e-4, "L2 regularisation of the convolution weights (not biases, as MATLAB)")
    clip_norm: float = option(0.01, "gradient clipping to this L2 norm (0: off)", flag="--clip")
    clip_method: str = option("param", "clipping of each parameter's gradient (MATLAB l2norm) or of all "
                                       "together", choices=("param", "global"))
    loss: str = option("mse", "loss on the target patch: mse (the original code) or l1 (the paper)",
                       choices=("mse", "l1"))
    init: str = option("glorot", "weight initialisation: glorot (MATLAB) or orthogonal (the paper)",
                       choices=("glorot", "orthogonal"))
    val_samples: int = option(1000, "samples held out (the last shuffled ones) when no --val subjects")
    patience: int = option(0, "early stopping after N epochs without a better validation loss, keeping the "
                              "best epoch (0: off)")
    keep_best: bool = option(False, "save the best-validation weights, not the last")
    head_lr_factor: float = option(10.0, "learning-rate factor of the new Conv4/Conv5", commands=FINETUNE_ONLY)
    target_percentile: float = option(99.5, "target scale: this percentile of the training targets inside "
                                             "the masks")
    normalisation: str = option("percentile", "input scaling: robust per-modality percentile or the "
                                              "original's global maximum", choices=("percentile", "global_max"),
                                commands=TRAIN_ONLY)
    seed: int = option(0, "random seed")
    device: str = option("auto", "auto (CUDA when present), cpu, cuda or cuda:N", gui=True)
    amp: bool = option(False, "mixed precision (CUDA only)")
    deterministic: bool = option(False, "reproducible kernels (tests, exact resume on a GPU)")
    num_threads: int = option(0, "CPU threads for torch (0: torch's default)", flag="--threads")
    checkpoint_steps: int = option(0, "also checkpoint every N steps inside an epoch (0: per epoch only)")
    preload_mb: int = option(4096, "keep the training patches on the device up to this size (MB)")
    sampling: dict[str, Any] = option({}, "sampling options that differ from SamplingConfig's defaults")

    def __post_init__(self) -> None:
        for f in fields(self):
            allowed = f.metadata.get("choices")
            if allowed and getattr(self, f.name) not in allowed:
                raise MRHNetError(f"unknown {f.name} '{getattr(self, f.name)}' (use {' or '.join(allowed)})")
        for name in ("depth", "epochs", "batch_size", "lr_drop_every"):
            if int(getattr(self, name)) < (0 if name == "depth" else 1):
                raise MRHNetError(f"{name} must be positive (got {getattr(self, name)})")
        if self.lr <= 0:
            raise MRHNetError(f"learning rate must be positive (got {self.lr})")
        sampling_config(self.sampling)  # unknown keys and bad values fail here, not after loading data

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise MRHNetError(f"unknown training option(s) {', '.join(sorted(unknown))}")
        return cls(**d)

    @classmethod
    def for_command(cls, command: str, **overrides: Any) -> "TrainConfig":
        """The config ``command`` (``train`` or ``finetune``) starts from, with ``overrides``."""
        return cls.from_dict({**command_defaults(command), **overrides})


# --------------------------------------------------------------------------------------------
# sampling options (SamplingConfig's fields; validation and seed come from TrainConfig)
# --------------------------------------------------------------------------------------------
SAMPLING_HELP = {
    "stride0": "coarse grid step of patch centres",
    "stride_fine": "grid step on slices with more brain",
    "fine_fraction": "a slice is sampled finely when its brain area is at least this fraction of the "
                     "largest slice's",
    "slice_range": "slices to sample along the plane's normal: FIRST STOP (stop excluded)",
    "plane": "patch plane",
    "half_patch": "half patch size (1: 3x3 patches)",
    "min_nonzero": "minimum non-zero target voxels per patch",
    "min_sum_fraction": "minimum target patch sum, as a fraction of the target's robust maximum (the "
                        "original: 30/255)",
    "robust_percentile": "percentile of the non-zero target values taken as its robust maximum",
}
SAMPLING_FROM_TRAINING = ("validation", "seed")  # set from val_samples and seed
SAMPLING_TRAIN_ONLY = ("plane", "half_patch")  # finetune: the base model's patch geometry


def sampling_config(options: dict[str, Any]):
    """The :class:`~MRHNetLib.network.patches.SamplingConfig` of ``TrainConfig.sampling`` options."""
    from .patches import SamplingConfig

    return SamplingConfig.from_dict(dict(options))


# --------------------------------------------------------------------------------------------
# what the command line and the GUIs derive from the config
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OptionSpec:
    """One option of a command as the CLI and GUIs show it. ``group``: ``training`` (a TrainConfig
    field) or ``sampling`` (a key of ``TrainConfig.sampling``)."""

    name: str
    group: str
    flag: str
    default: Any
    help: str
    type: type
    choices: tuple[str, ...] | None = None
    nargs: int | None = None

    def help_with_default(self) -> str:
        """The help text ending with the default, as the config holds it."""
        return f"{self.help} (default: {format_default(self.default)})"


def format_default(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return "all" if value is None else str(value)


def _check_command(command: str) -> None:
    if command not in COMMANDS:
        raise MRHNetError(f"unknown training command '{command}' (use {' or '.join(COMMANDS)})")


def _field_default(f: Field) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]


def command_defaults(command: str) -> dict[str, Any]:
    """Every TrainConfig default of ``command`` (a field's per-command default where it has one)."""
    _check_command(command)
    return {f.name: f.metadata["defaults"].get(command, _field_default(f)) for f in fields(TrainConfig)}


def config_for(command: str, **overrides: Any) -> TrainConfig:
    """The config of ``command`` (``train`` or ``finetune``) with ``overrides`` (TrainConfig fields)."""
    return TrainConfig.for_command(command, **overrides)


def option_specs(command: str) -> list[OptionSpec]:
    """Every option ``command`` offers: the TrainConfig fields it uses, then the sampling options."""
    from .patches import SamplingConfig

    defaults = command_defaults(command)
    specs = []
    for f in fields(TrainConfig):
        if f.name == "sampling" or command not in f.metadata["commands"]:
            continue
        value = defaults[f.name]
        specs.append(OptionSpec(f.name, "training", f.metadata["flag"] or _flag(f.name), value, f.metadata["help"],
                                type(value), f.metadata["choices"]))
    plane_choices = _plane_choices()
    for f in fields(SamplingConfig):
        if f.name in SAMPLING_FROM_TRAINING or (command != "train" and f.name in SAMPLING_TRAIN_ONLY):
            continue
        value = _field_default(f)
        pair = f.name == "slice_range"
        specs.append(OptionSpec(f.name, "sampling", _flag(f.name), value, SAMPLING_HELP[f.name],
                                int if pair else type(value), plane_choices if f.name == "plane" else None,
                                2 if pair else None))
    return specs


def gui_defaults(command: str) -> dict[str, Any]:
    """The defaults of the options the GUI panels show for ``command`` (finetune has no depth: the base
    model's)."""
    defaults = command_defaults(command)
    return {f.name: defaults[f.name] for f in fields(TrainConfig)
            if f.metadata["gui"] and command in f.metadata["commands"]}


def option_help(command: str, name: str) -> str:
    """The help text of option ``name`` of ``command`` with its default (for GUI tooltips)."""
    for spec in option_specs(command):
        if spec.name == name:
            return spec.help_with_default()
    raise MRHNetError(f"'{command}' has no option '{name}'")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _plane_choices() -> tuple[str, ...]:
    from ..data.protocol import PLANES

    return tuple(PLANES)
