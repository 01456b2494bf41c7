"""Background jobs: progress delivered, errors as messages, cancel within 2 s, no output on cancel."""
from __future__ import annotations

import time

import numpy as np
import pytest

from MRHNetLib.errors import Cancelled, MRHNetError
from MRHNetLib.gui.jobs import CANCELLED, DONE, FAILED, Job, start_job


def counting(n: int, step_s: float = 0.01, progress=None, fail_at: int | None = None):
    """A stand-in for engine work: n steps, each reporting progress (where a cancel takes effect)."""
    total = 0
    for i in range(n):
        if fail_at is not None and i == fail_at:
            raise MRHNetError(f"step {i}: bad input")
        time.sleep(step_s)
        total += i
        progress.update((i + 1) / n, f"step {i + 1}/{n}")
    return np.arange(total % 7 + 3)


def ignores_progress(seconds: float, progress=None):
    """Work that never checks for a cancel (a long kernel): only a process can be stopped."""
    time.sleep(seconds)
    return "finished"


def crashing(progress=None):
    progress.update(0.5, "half")
    return [1][3]


def collect(job: Job, timeout: float = 30.0) -> list:
    events, start = [], time.monotonic()
    while not job.finished and time.monotonic() - start < timeout:
        events += job.poll()
        time.sleep(0.02)
    return events


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_progress_and_result(mode):
    job = Job(counting, 20, mode=mode).start()
    events = collect(job)
    kinds = [e.kind for e in events]
    assert kinds[-1] == DONE and job.state == DONE
    fractions = [e.fraction for e in events if e.kind == "progress"]
    assert fractions and fractions == sorted(fractions) and 0 < fractions[-1] <= 1.0
    assert np.array_equal(job.result(), np.arange(sum(range(20)) % 7 + 3))
    assert job.poll() == []  # the final event came once


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_cancel_within_two_seconds_leaves_no_output(mode):
    job = Job(counting, 10_000, 0.01, mode=mode).start()
    while job.fraction == 0 and job.running:
        job.poll()
        time.sleep(0.01)
    t0 = time.monotonic()
    job.cancel()
    events = collect(job, timeout=5)
    assert time.monotonic() - t0 < 2.0
    assert job.state == CANCELLED and events[-1].kind == CANCELLED
    assert job.output is None
    with pytest.raises(Cancelled):
        job.result()


def test_process_job_that_ignores_cancel_is_terminated():
    job = Job(ignores_progress, 60, mode="process", cancel_grace_s=0.5).start()
    time.sleep(0.2)
    t0 = time.monotonic()
    job.cancel()
    collect(job, timeout=5)
    assert job.state == CANCELLED and time.monotonic() - t0 < 2.0
    assert not job._worker.is_alive()


def test_thread_job_result_after_cancel_is_dropped():
    job = Job(ignores_progress, 0.3, cancel_grace_s=5).start()
    job.cancel()
    collect(job)
    assert job.state == CANCELLED and job.output is None


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_errors_are_delivered_as_messages(mode):
    job = Job(counting, 10, mode=mode, fail_at=3).start()
    events = collect(job)
    assert job.state == FAILED and events[-1].kind == FAILED
    assert job.error == "step 3: bad input" and job.output is None
    with pytest.raises(MRHNetError, match="step 3: bad input"):
        job.result()
    crash = start_job(crashing)
    collect(crash)
    assert crash.state == FAILED and crash.error.startswith("IndexError:") and "Traceback" in crash.details


def test_data_events_and_futures_style_api():
    def work(progress=None, emit=None):
        for epoch in range(3):
            emit({"epoch": epoch, "loss": 1.0 / (epoch + 1)})
            progress.update((epoch + 1) / 3, f"epoch {epoch}")
        return "model"

    job = start_job(work, emit_as="emit")
    data = []
    while not job.finished:
        data += [e.payload for e in job.poll() if e.kind == "data"]
        time.sleep(0.01)
    assert [d["epoch"] for d in data] == [0, 1, 2]
    assert job.done and job.progress == (1.0, "done") and job.result() == "model"
    assert job.wait() == "model"
