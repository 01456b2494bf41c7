"""Child-process jobs (``mrhnet job``) without a scene: the JSON-lines protocol, failures, and the
launcher inside Slicer (``PythonSlicer`` beside the application, Slicer's startup environment)."""
from __future__ import annotations

import json
import os
import stat
import sys

import pytest

from MRHNetLib.cli.job import execute
from MRHNetLib.errors import MRHNetError
from MRHNetLib.gui import process
from MRHNetLib.gui.process import ChildJob


def test_job_protocol_in_process(tmp_path):
    lines = []
    code = execute({"kind": "phantom", "out": str(tmp_path / "s"), "size": "small"}, lines.append)
    assert code == 0 and lines[-1]["event"] == "done" and (tmp_path / "s" / "t2w.nii").is_file()
    assert all(e["event"] == "progress" for e in lines[:-1]) and len(lines) > 2
    json.dumps(lines)  # every event is plain JSON
    lines.clear()
    assert execute({"kind": "nope"}, lines.append) == 2
    assert lines == [{"event": "failed", "message": "unknown job kind 'nope' (known: predict, train, phantom)",
                      "details": ""}]


def test_a_child_that_dies_is_reported_with_its_stderr(tmp_path):
    job = ChildJob({"kind": "phantom"}, tmp_path / "w", python=[sys.executable, "-c",
                                                                   "import sys; sys.exit('engine crashed')", "--"])
    job.start()
    job.process.wait(timeout=30)
    events = job.poll()
    assert events[-1].kind == "failed" and "engine crashed" in events[-1].message
    assert not (tmp_path / "w").exists()
    with pytest.raises(MRHNetError, match="already started"):
        job.start()


def test_inside_slicer_the_job_runs_with_pythonslicer_and_the_startup_environment(tmp_path, monkeypatch):
    """A stand-in Slicer application (only its home folder and startup environment; nothing else of
    Slicer's Qt application can run here): the job must go through <home>/bin/PythonSlicer."""
    slicer = pytest.importorskip("slicer")
    home = tmp_path / "Slicer"
    (home / "bin").mkdir(parents=True)
    launcher = home / "bin" / ("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
    marker = tmp_path / "launched"
    launcher.write_text(f"#!/bin/sh\necho \"$MRHNET_TEST_STARTUP\" > {marker}\nexec {sys.executable} \"$@\"\n")
    launcher.chmod(launcher.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(slicer, "app", type("App", (), {"slicerHome": str(home)})(), raising=False)
    monkeypatch.setattr(slicer.util, "startupEnvironment",
                        lambda: {**os.environ, "MRHNET_TEST_STARTUP": "startup"}, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")  # found through Slicer's home, not the PATH
    assert process.in_slicer() and process.python_command() == [str(launcher)]
    job = ChildJob({"kind": "phantom", "out": str(tmp_path / "s"), "size": "small"}, tmp_path / "w").start()
    assert job.wait(timeout=120) == {"subject": str(tmp_path / "s")}
    assert marker.read_text().strip() == "startup"


@pytest.mark.skipif(os.name == "nt", reason="Windows ends the job's process tree instead")
def test_a_cancelled_job_runs_its_cleanup(tmp_path):
    """Cancel sends SIGTERM to the job's process group; ``mrhnet job`` turns it into SystemExit so that the
    engine's ``finally`` blocks (temporaries, an earlier model being replaced) still run."""
    import subprocess

    marker = tmp_path / "temporary"
    code = ("import os, signal, sys, time; from pathlib import Path; from MRHNetLib.cli.job import exit_on_sigterm; "
            f"exit_on_sigterm(); p = Path({str(marker)!r}); p.write_text('x')\n"
            "try:\n    os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)\nfinally:\n    p.unlink()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 128 + 15, out.stderr[-1000:]
    assert not marker.exists()


@pytest.mark.skipif(os.name == "nt", reason="POSIX: the job watches its GUI's process id")
def test_a_job_whose_gui_is_gone_stops(tmp_path):
    """A crashed or killed Slicer / web app (its ``parent_pid``, which ChildJob writes into the spec) must not
    leave the engine computing: the job ends as a cancel does (exit 143). With a live GUI the other tests'
    jobs run to the end."""
    import subprocess

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its process id no longer runs
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"kind": "phantom", "out": str(tmp_path / "s"), "size": "medium",
                                "parent_pid": gone.pid}))
    out = subprocess.run([sys.executable, "-m", "MRHNetLib", "job", str(spec)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 128 + 15, (out.returncode, out.stderr[-1000:])
    job = ChildJob({"kind": "phantom", "out": str(tmp_path / "t"), "size": "small"}, tmp_path / "w").start()
    assert json.loads((tmp_path / "w" / "job.json").read_text())["parent_pid"] == os.getpid()
    job.wait(timeout=120)
