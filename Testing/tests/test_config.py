"""Training options have one owner: the CLI's flags, help and defaults and the GUI defaults are derived
from the config of each command (MRHNetLib.network.config)."""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

import pytest

from MRHNetLib.cli import build_parser
from MRHNetLib.cli.train import _config
from MRHNetLib.errors import MRHNetError
from MRHNetLib.network.config import (COMMANDS, SAMPLING_FROM_TRAINING, SAMPLING_TRAIN_ONLY, TrainConfig, config_for,
                                      gui_defaults, option_help, option_specs)
from MRHNetLib.network.patches import SamplingConfig

FROM_BASE = {"depth", "width", "normalisation"}  # finetune takes these from the base model


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def _subparser(command: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def test_config_module_needs_no_torch():
    import subprocess

    code = "import sys, MRHNetLib.network.config as c; c.option_specs('train'); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"  # the GUI reads defaults before torch is installed


def test_command_defaults():
    assert config_for("train").lr == 0.1 and config_for("finetune").lr == 1e-4
    assert config_for("finetune", epochs=7).epochs == 7 and config_for("finetune", epochs=7).lr == 1e-4
    assert config_for("train") == TrainConfig() and TrainConfig.for_command("finetune") == config_for("finetune")
    with pytest.raises(MRHNetError, match="unknown training command 'predict'"):
        config_for("predict")
    with pytest.raises(MRHNetError, match="unknown training option"):
        config_for("train", learning_rate=1)
    with pytest.raises(MRHNetError, match="sampling settings: unknown key"):
        config_for("train", sampling={"strid0": 3})


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_parsed_defaults_equal_the_config(command):
    argv = [command, "base.mrhnet"] if command == "finetune" else [command]
    args = _parse(*argv, "subject", "--out", "x.mrhnet")
    expected = config_for(command)
    for spec in option_specs(command):
        assert getattr(args, spec.name) == (spec.default if spec.group == "training" else None), spec.name
    assert _config(args, command) == expected
    assert _config(args, command).sampling == {}  # only what differs from SamplingConfig is stored


def test_finetune_without_lr_gets_its_own_rate():
    assert _config(_parse("finetune", "base.mrhnet", "s", "--out", "y.mrhnet"), "finetune").lr == 1e-4
    assert _config(_parse("train", "s", "--out", "y.mrhnet"), "train").lr == 0.1
    assert _config(_parse("finetune", "base.mrhnet", "s", "--lr", "0.003"), "finetune").lr == 0.003


@pytest.mark.parametrize("command", COMMANDS)
def test_every_config_field_has_a_cli_flag(command):
    flags = {a.dest: a.option_strings for a in _subparser(command)._actions}
    expected = {f.name for f in fields(TrainConfig)} - {"sampling"}
    expected -= FROM_BASE if command == "finetune" else {"head_lr_factor"}
    expected |= {f.name for f in fields(SamplingConfig)} - set(SAMPLING_FROM_TRAINING)
    if command == "finetune":
        expected -= set(SAMPLING_TRAIN_ONLY)
    assert expected <= set(flags), expected - set(flags)
    assert {s.name for s in option_specs(command)} == expected


def test_cli_values_reach_the_config():
    args = _parse("train", "s", "--out", "x.mrhnet", "--batch", "32", "--threads", "2", "--clip", "0",
                  "--keep-best", "--stride0", "3", "--slice-range", "2", "9", "--plane", "axial",
                  "--fine-fraction", "0.25", "--width", "16", "--clip-method", "global")
    config = _config(args, "train")
    assert (config.batch_size, config.num_threads, config.clip_norm, config.keep_best, config.width) == \
        (32, 2, 0.0, True, 16)
    assert config.clip_method == "global"
    assert config.sampling == {"stride0": 3, "slice_range": [2, 9], "plane": "axial", "fine_fraction": 0.25}


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_the_config_default(command):
    text = " ".join(_subparser(command).format_help().split())
    for spec in option_specs(command):
        assert spec.help_with_default() in text, spec.flag
    lr = "0.0001" if command == "finetune" else "0.1"
    assert f"initial learning rate (finetune: of the kept layers) (default: {lr})" in text
    assert option_help(command, "lr").endswith(f"(default: {lr})")


def test_gui_defaults():
    assert gui_defaults("train") == {"depth": 5, "epochs": 300, "lr": 0.1, "device": "auto"}
    assert gui_defaults("finetune") == {"epochs": 300, "lr": 1e-4, "device": "auto"}  # depth: the base's
    # the GUI builds its config from these values plus the user's: the same as the CLI's
    assert config_for("finetune", **gui_defaults("finetune")) == config_for("finetune")
