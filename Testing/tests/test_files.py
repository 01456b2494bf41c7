"""Nothing left behind, files as users expect: temporaries of atomic writes never look like outputs, a
run removes those that killed runs left, and every written file follows the user's umask."""
from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from MRHNetLib.cli import main
from MRHNetLib.data.io import Gradients, Volume, read_volume, write_dwi_nrrd, write_fsl_gradients, write_volume
from MRHNetLib.files import atomic_write_text, remove_stale_temporaries
from MRHNetLib.simulation.phantom import simulate_subject

ROOT = Path(__file__).resolve().parents[2]
HOLD_TEMPORARIES = """
import sys, time
from MRHNetLib.files import atomic_output
from contextlib import ExitStack
with ExitStack() as stack:
    for target in sys.argv[1:]:
        tmp = stack.enter_context(atomic_output(target))
        tmp.write_bytes(b"half a map")
        print(tmp, flush=True)
    time.sleep(600)
"""


@pytest.fixture
def umask():
    """Set the process umask for one test (restored after)."""
    saved = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


@pytest.fixture(scope="module")
def subject_dir(tmp_path_factory) -> Path:
    return simulate_subject("C1", size="small").save(tmp_path_factory.mktemp("files") / "brain")


def writer_holding(*targets: Path) -> tuple[subprocess.Popen, list[Path]]:
    """A process in the middle of atomic writes of ``targets`` (their temporaries written, not renamed)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", HOLD_TEMPORARIES, *map(str, targets)], stdout=subprocess.PIPE,
                            text=True, env=env)
    temps = [Path(proc.stdout.readline().strip()) for _ in targets]
    assert all(t.is_file() for t in temps)
    return proc, temps


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()
    proc.stdout.close()


def test_killed_writes_leave_nothing_that_looks_like_an_output_and_the_next_run_removes_them(
        subject_dir, tmp_path, umask):
    out = tmp_path / "maps"
    killed, stale = writer_holding(out / "af.nii.gz", out / "nf.nii.gz")
    stop(killed)
    legacy = out / ".tmp-af-k2j4h5.nii.gz"  # an earlier version's temporary, an hour old
    legacy.write_bytes(b"half a map")
    os.utime(legacy, (time.time() - 3600,) * 2)
    for t in stale:  # hidden, and no output suffix: no glob for maps matches them
        assert t.name.startswith(".") and not fnmatch.fnmatch(t.name, "*.nii.gz") and not t.name.endswith(".gz")
    assert list(out.glob("*.nii.gz")) == [legacy]  # (pathlib's glob matches hidden names)
    running, live = writer_holding(out / "mbp.nii.gz")  # another run still writing: left alone
    try:
        assert main(["predict", str(subject_dir), "-m", "af", "--out", str(out), "--device", "cpu"]) == 0
        assert sorted(p.name for p in out.iterdir()) == sorted(["af.nii.gz", live[0].name])
    finally:
        stop(running)
    assert (out / "af.nii.gz").stat().st_mode & 0o777 == 0o644  # the usual umask 022
    assert read_volume(out / "af.nii.gz").shape3 == read_volume(subject_dir / "t2w.nii.gz").shape3
    assert remove_stale_temporaries(out) == [live[0]]
    assert [p.name for p in out.iterdir()] == ["af.nii.gz"]


def test_only_temporaries_of_gone_writers_are_stale(tmp_path):
    from MRHNetLib.files import _host

    live = tmp_path / f".af.nii.gz.partial-{_host()}-1-0badcafe"  # pid 1 always runs
    other_host = tmp_path / ".af.nii.gz.partial-elsewhere-12345-0badcafe"
    user_file = tmp_path / ".af.nii.gz.notes"
    for p in (live, other_host, user_file):
        p.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == []
    day_old = time.time() - 25 * 3600
    for p in (live, other_host, user_file):
        os.utime(p, (day_old, day_old))
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([live, other_host])
    assert [p.name for p in tmp_path.iterdir()] == [user_file.name]  # never anything but our temporaries


@pytest.mark.filterwarnings("ignore:.*Analyze 7.5 keeps only the voxel size")
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_every_writer_follows_the_umask(tmp_path, umask, mask, mode):
    from MRHNetLib.network.model import MRHNet
    from MRHNetLib.network.modelfile import read_info, save_model
    from MRHNetLib.network.catalog import resolve

    umask(mask)
    rng = np.random.default_rng(0)
    affine = np.diag([0.1, 0.1, 0.1, 1.0])
    vol = Volume(rng.random((5, 6, 7)).astype(np.float32), affine, "v")
    dwi = Volume(rng.random((5, 6, 7, 3)).astype(np.float32), affine, "dwi")
    grads = Gradients(np.array([0.0, 1000.0, 1000.0]), np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], float))
    written = [write_volume(tmp_path / f"v{s}", vol) for s in (".nii.gz", ".nii", ".nrrd", ".hdr")]
    written += [tmp_path / "v.img", write_dwi_nrrd(tmp_path / "dwi.nrrd", dwi, grads)]
    written += list(write_fsl_gradients(tmp_path / "dwi", grads, affine))
    written.append(atomic_write_text(tmp_path / "note.json", "{}"))
    info = read_info(resolve("af"))
    model = save_model(tmp_path / "m.mrhnet", MRHNet(info.protocol.n_channels, info.depth, info.width), info)
    written += [model / "weights.safetensors", model / "model.json"]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: oct(mode) for p in written}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporaries left
    np.testing.assert_array_equal(read_volume(tmp_path / "v.nii.gz").data, vol.data)
    np.testing.assert_array_equal(read_volume(tmp_path / "v.nrrd").data, vol.data)
    np.testing.assert_allclose(read_volume(tmp_path / "v.nrrd").affine, affine, atol=1e-6)
