"""Training, resume, transfer learning, the CLI and 2-process distributed training (CPU, tiny nets)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from MRHNetLib.network.checkpoint import load_checkpoint
from MRHNetLib.cli import main as cli_main
from MRHNetLib.errors import Cancelled, MRHNetError
from MRHNetLib.data.io import Gradients, Volume
from MRHNetLib.network.model import MRHNet, init_weights
from MRHNetLib.network.modelfile import ModelInfo, load_model, read_info, save_model
from MRHNetLib.data.protocol import fibonacci_directions
from MRHNetLib.data.subject import DWI, Subject
from MRHNetLib.network.train import (TrainConfig, build_training, finetune, new_run_dir, read_log, remove_run_dir,
                                    train)

ROOT = Path(__file__).resolve().parents[2]
# one thread: on a shared 2-core machine OpenMP spinning makes 2 threads far slower for these tiny nets
FAST = dict(depth=1, width=8, num_threads=1, deterministic=True, batch_size=16,
            sampling={"stride0": 2, "stride_fine": 1})


def fast(**options) -> TrainConfig:
    """A tiny, deterministic training configuration (``options`` override)."""
    return TrainConfig(**{**FAST, **options})


def tiny_subject(seed: int = 0, shape=(16, 12, 10), n_dirs: int = 3) -> Subject:
    """A hand-made subject: 2 x (1 b0 + n_dirs) DWI, T2w, MT pair, mask, AF and NF made from two tissue
    fields that the images encode (so the targets are learnable from the inputs)."""
    rng = np.random.default_rng(seed)
    aff = np.diag([0.1, 0.1, 0.1, 1.0])
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    mask = (np.sqrt((grid ** 2).sum(0)) < 0.95).astype(np.float32)
    tissue = np.stack([gaussian_filter(t, 1.0) for t in rng.random((2,) + shape)])
    tissue = (tissue - tissue.min()) / (tissue.max() - tissue.min())
    t2 = (1.0 - 0.6 * tissue[0]) * mask
    mt_off = (0.9 + 0.1 * tissue[1]) * mask
    dirs = fibonacci_directions(n_dirs)
    dwi = {}
    for role, b in (("dwi_b2000", 2.0), ("dwi_b5000", 5.0)):
        vols = [mask] + [mask * np.exp(-b * 0.3 * (1 + tissue[1] * d[0] ** 2)) for d in dirs]
        data = np.stack(vols, -1) + 0.01 * rng.standard_normal(shape + (n_dirs + 1,))
        grads = Gradients(np.r_[0.0, np.full(n_dirs, b * 1000)], np.vstack([[0, 0, 0], dirs]))
        dwi[role] = DWI(Volume(data.astype(np.float32), aff, role), grads)
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    images = {"t2w": Volume(f32(t2), aff), "mt_on": Volume(f32(mt_off * (1 - 0.4 * tissue[0])), aff),
              "mt_off": Volume(f32(mt_off), aff), "mask": Volume(mask, aff),
              "af": Volume(f32(200 * (tissue[0] ** 2 + 0.3 * tissue[1]) * mask), aff),
              "nf": Volume(f32(150 * tissue[1] * mask), aff)}
    return Subject(images, dwi, f"tiny{seed}")


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_model(path).net.state_dict()


def test_tiny_network_overfits_tiny_set(tmp_path):
    from MRHNetLib.network.patches import SamplingConfig, extract_patches, sample_centres

    subject = tiny_subject(0)
    sampling = {"stride0": 3, "stride_fine": 3}
    config = fast(width=16, sampling=sampling, epochs=30, batch_size=4, lr_drop_every=20,
                         val_samples=0, clip_norm=0.1, init="orthogonal")
    out = train([subject], "af", tmp_path / "af.mrhnet", config)
    log = read_log(tmp_path / "af.run")
    info = read_info(out)
    # the training targets (3 x 3 patches on the training scale) and their variance: a network that
    # only learnt the mean would have this loss
    centres = sample_centres(subject.target("af"), subject.mask, subject.affine, SamplingConfig(**sampling))
    y = extract_patches(subject.target("af"), centres, subject.affine) / info.protocol.normalisation.target_scale
    assert len(log) == 30 and info.training["val_samples"] == 0 and info.training["samples"] == len(centres)
    first, last = log[0]["train_loss"], log[-1]["train_loss"]
    assert last < 0.2 * first and last < 0.2 * float(np.var(y)), (first, last, np.var(y))
    assert (tmp_path / "af.run" / "curve.png").stat().st_size > 1000
    assert (tmp_path / "af.run" / "log.csv").read_text().splitlines()[0].startswith("epoch,train_loss,val_loss")


@pytest.fixture(scope="module")
def phantoms():
    """Two small simulated brains: C1 for training, R2 held out."""
    from MRHNetLib.simulation.phantom import simulate_subject

    return simulate_subject("C1", seed=1, size="small"), simulate_subject("R2", seed=2, size="small")


def test_loss_falls_on_phantom_data(tmp_path, phantoms):
    train_brain, val_brain = phantoms
    config = fast(depth=2, width=16, epochs=4, batch_size=32)
    out = train([train_brain], "af", tmp_path / "af.mrhnet", config, val_subjects=[val_brain])
    log = read_log(tmp_path / "af.run")
    assert log[-1]["train_loss"] < 0.7 * log[0]["train_loss"], log
    assert log[-1]["val_loss"] < log[0]["val_loss"], log
    info = read_info(out)
    assert info.training["val_subjects"] == ["R2"] and info.training["subjects"] == ["C1"]
    assert info.protocol.n_channels == 67 and info.protocol.normalisation.target_scale > 0
    assert set(info.protocol.normalisation.reference_scales) == {"dwi_b2000", "dwi_b5000", "t2w", "mt"}


def test_train_on_parameter_maps(tmp_path, phantoms):
    from MRHNetLib.data.protocol import maps_protocol

    config = fast(epochs=3, batch_size=32, loss="l1")
    out = train([phantoms[0]], "mbp", tmp_path / "mbp.mrhnet", config, protocol=maps_protocol())
    info = read_info(out)
    assert info.protocol.input_kind == "maps" and info.protocol.n_channels == 5 and info.target == "mbp"
    assert set(info.protocol.normalisation.reference_scales) == {"t2w", "mtr", "fa", "md", "mk"}
    log = read_log(tmp_path / "mbp.run")
    assert log[-1]["train_loss"] < log[0]["train_loss"] and info.training["loss"] == "l1"


class Kill(Exception):
    """Stands for the process being killed."""


@pytest.mark.parametrize("checkpoint_steps", [0, 7])
def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, checkpoint_steps):
    subject = tiny_subject(0)
    config = fast(epochs=3, val_samples=40, patience=2, checkpoint_steps=checkpoint_steps)
    full = train([subject], "af", tmp_path / "full.mrhnet", config)

    seen = []

    def killer(fraction: float, message: str) -> None:
        seen.append(fraction)
        if 0.5 < fraction < 0.6:  # in the middle of the second epoch
            raise Kill()

    with pytest.raises(Kill):
        train([subject], "af", tmp_path / "cut.mrhnet", config, progress=killer)
    assert not (tmp_path / "cut.mrhnet").exists()
    state = load_checkpoint(tmp_path / "cut.run" / "checkpoint")
    assert state["epoch"] == 1 and (state["step"] > 0) == (checkpoint_steps > 0)
    assert [f.suffix for f in sorted((tmp_path / "cut.run" / "checkpoint").iterdir())] == [".json", ".safetensors"]
    resumed = train([subject], "af", tmp_path / "cut.mrhnet", config, resume=True)
    a, b = weights(full), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda log: [{k: r[k] for k in ("epoch", "train_loss", "val_loss", "lr")} for r in log]  # noqa: E731
    assert strip(read_log(tmp_path / "full.run")) == strip(read_log(tmp_path / "cut.run"))


def test_resume_refuses_other_options_and_damaged_checkpoint(tmp_path):
    subject = tiny_subject(0)
    config = fast(epochs=1, val_samples=20)
    train([subject], "af", tmp_path / "m.mrhnet", config)
    with pytest.raises(MRHNetError, match="different option.*lr"):
        train([subject], "af", tmp_path / "m.mrhnet", fast(epochs=2, lr=0.05, val_samples=20),
              resume=True)
    tensors = next((tmp_path / "m.run" / "checkpoint").glob("*.safetensors"))
    data = bytearray(tensors.read_bytes())
    data[-5] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(MRHNetError, match="modified or damaged"):
        train([subject], "af", tmp_path / "m.mrhnet", fast(epochs=2, val_samples=20), resume=True)


def test_finetune_keeps_body_and_reinitialises_head_at_ten_times_rate(tmp_path):
    subject = tiny_subject(3)
    net = init_weights(MRHNet(11, depth=2, width=8), "glorot", torch.Generator().manual_seed(5))
    base_path = save_model(tmp_path / "base.mrhnet", net, ModelInfo(subject.protocol(), 2, "af", width=8))
    base = load_model(base_path)
    config = fast(depth=2, lr=1e-4, epochs=1, val_samples=20)

    start, optimiser, _ = build_training(11, config, base)
    b = base.net.state_dict()
    for name, value in start.state_dict().items():
        if name.startswith(("Conv4", "Conv5")):
            assert not torch.equal(value, b[name]) or name.endswith("bias")
        else:
            assert torch.equal(value, b[name]), name
    head = {id(p) for c in start.head() for p in c.parameters()}
    rates = {id(p): g["lr"] for g in optimiser.param_groups for p in g["params"]}
    assert len(rates) == len(list(start.parameters()))
    assert all(rates[i] == pytest.approx(1e-3) for i in head)
    assert all(rate == pytest.approx(1e-4) for i, rate in rates.items() if i not in head)

    out = finetune(base_path, [subject], "nf", tmp_path / "nf.mrhnet", config)
    tuned = load_model(out)
    assert tuned.info.target == "nf" and tuned.info.provenance["base_model"]["name"] == "base"
    assert tuned.info.protocol.normalisation.target_scale != pytest.approx(
        base.info.protocol.normalisation.target_scale)
    t = tuned.net.state_dict()
    body_change = max(float((t[k] - b[k]).abs().max()) for k in t if not k.startswith(("Conv4", "Conv5")))
    head_change = float((t["Conv4.weight"] - b["Conv4.weight"]).abs().max())
    assert 0 < body_change < 0.01 < head_change


def test_finetune_refuses_subject_with_other_protocol(tmp_path):
    net = MRHNet(11, depth=1, width=8)
    base = save_model(tmp_path / "base.mrhnet", net, ModelInfo(tiny_subject(0).protocol(), 1, "af", width=8))
    other = tiny_subject(1, n_dirs=4)  # 13 channels
    with pytest.raises(MRHNetError, match="does not fit base model base.*dwi_b2000: model expects 4 volumes"):
        finetune(base, [other], "nf", tmp_path / "nf.mrhnet", fast(epochs=1))
    assert not (tmp_path / "nf.mrhnet").exists()


def test_train_refuses_missing_target_and_unknown_options(tmp_path):
    with pytest.raises(MRHNetError, match="tiny0: no 'mbp' target"):
        train([tiny_subject(0)], "mbp", tmp_path / "x.mrhnet", fast(epochs=1))
    with pytest.raises(MRHNetError, match="unknown loss 'huber'"):
        TrainConfig(loss="huber")
    with pytest.raises(MRHNetError, match="unknown training option"):
        TrainConfig.from_dict({"epochz": 3})
    assert not list(tmp_path.iterdir())


def test_finetune_and_train_start_from_their_commands_config(tmp_path, monkeypatch):
    import MRHNetLib.network.train as engine

    seen = {}
    monkeypatch.setattr(engine, "_run", lambda subjects, target, out, config, *a: seen.setdefault(target, config))
    base = save_model(tmp_path / "base.mrhnet", MRHNet(11, depth=2, width=8),
                      ModelInfo(tiny_subject(0).protocol(), 2, "af", width=8))
    finetune(base, [tiny_subject(0)], "nf", tmp_path / "nf.mrhnet")
    train([tiny_subject(0)], "af", tmp_path / "af.mrhnet")
    assert seen["nf"].lr == 1e-4 and (seen["nf"].depth, seen["nf"].width) == (2, 8)
    assert seen["af"].lr == 0.1 and seen["af"] == TrainConfig()


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_never_writes_over_a_users_folder(tmp_path, capsys):
    subject = tiny_subject(4)
    folder = subject.save(tmp_path / "subj")
    base = save_model(tmp_path / "base.mrhnet", MRHNet(11, depth=1, width=8),
                      ModelInfo(subject.protocol(), 1, "af", width=8))
    for out in (tmp_path / "mine", tmp_path / "mine.mrhnet"):
        (out / "sub").mkdir(parents=True)
        (out / "notes.txt").write_text("notes")
        (out / "sub" / "data.txt").write_text("data")
    before = _tree(tmp_path)
    opts = ["--target", "af", "--depth", "1", "--epochs", "1", "--threads", "1", "--stride0", "2"]
    for out, message in ((tmp_path / "mine", "must end in .mrhnet (for example"),
                         (tmp_path / "mine.mrhnet", "mine.mrhnet: holds other files than a model")):
        assert cli_main(["train", str(folder), "--out", str(out), *opts]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert cli_main(["finetune", str(base), str(folder), "--out", str(out), "--target", "nf"]) == 2
        assert message in capsys.readouterr().err
        # the engine refuses before any work (no progress reported)
        calls = []
        with pytest.raises(MRHNetError, match="must end in|holds other files"):
            train([subject], "af", out, fast(epochs=1), progress=lambda f, m: calls.append(f))
        assert calls == []
    assert _tree(tmp_path) == before and not (tmp_path / "mine.run").exists()


def test_run_dir_is_removed_when_asked_leaving_other_files(tmp_path):
    subject = tiny_subject(0)
    config = fast(epochs=2, val_samples=20)
    run = new_run_dir()
    assert run.name.startswith("mrhnet-train-") and run.is_dir()
    out = train([subject], "af", tmp_path / "a.mrhnet", config, run_dir=run, keep_run_dir=False)
    assert load_model(out).info.depth == 1 and not run.exists()
    # cancelled in the second epoch, with a checkpoint and a log written: removed as well
    with pytest.raises(Cancelled):
        train([subject], "af", tmp_path / "b.mrhnet", config, run_dir=tmp_path / "b.run", keep_run_dir=False,
              progress=lambda fraction, message: fraction < 0.75)
    assert not (tmp_path / "b.run").exists() and not (tmp_path / "b.mrhnet").exists()
    # a run folder holding a user's files keeps them; only what training wrote goes
    mine = tmp_path / "mine"
    (mine / "checkpoint").mkdir(parents=True)
    (mine / "notes.txt").write_text("notes")
    (mine / "checkpoint" / "keep.bin").write_bytes(b"1")
    train([subject], "af", tmp_path / "c.mrhnet", config, run_dir=mine)
    assert {"log.json", "log.csv", "curve.png"} <= {p.name for p in mine.iterdir()}
    remove_run_dir(mine)
    assert _tree(mine) == {"notes.txt": b"notes", "checkpoint/keep.bin": b"1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_train_and_two_process_gloo_run_match(tmp_path, capsys):
    folder = tiny_subject(4).save(tmp_path / "subj")
    opts = ["--target", "af", "--depth", "1", "--epochs", "2", "--batch", "32", "--val-samples", "40",
            "--stride0", "2", "--stride-fine", "1", "--deterministic", "--threads", "1", "--seed", "3"]
    assert cli_main(["train", str(folder), "--out", str(tmp_path / "one.mrhnet"), *opts]) == 0
    assert "wrote" in capsys.readouterr().out

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "MRHNetLib", "train", str(folder), "--out", str(tmp_path / "two.mrhnet"), *opts]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    two = read_info(tmp_path / "two.mrhnet")
    assert two.training["world_size"] == 2 and read_info(tmp_path / "one.mrhnet").training["world_size"] == 1
    # same global batches: the gradients agree up to float summation order (allreduce), so the
    # weights after 2 epochs agree to 1e-5 relative to their scale
    a, b = weights(tmp_path / "one.mrhnet"), weights(tmp_path / "two.mrhnet")
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5 * float(a[k].abs().max()) + 1e-7), k
    la, lb = read_log(tmp_path / "one.run"), read_log(tmp_path / "two.run")
    assert [r["val_loss"] for r in la] == pytest.approx([r["val_loss"] for r in lb], rel=1e-4)

    (tmp_path / "one.run" / "curve.png").unlink()
    assert cli_main(["train", "--plot", str(tmp_path / "one.run")]) == 0
    assert (tmp_path / "one.run" / "curve.png").exists()
    assert cli_main(["train", "--plot", str(tmp_path)]) == 2
    assert "no training log" in capsys.readouterr().err
