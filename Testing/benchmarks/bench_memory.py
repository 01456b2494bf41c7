"""Peak memory of ``mrhnet predict`` above its inputs, on a brain and the same brain at 2x each dimension
(issue 13, part 3). A benchmark, not a test: run it by hand and copy the table into BENCHMARKS.md.

    python Testing/benchmarks/bench_memory.py [--workdir DIR] [--factors 1 2 [4x4x2]] [--reading-only 4x4x2]
                                              [--model af] [--json out.json]

Subjects: a simulated brain (``simulate_subject(brain, size=...)``, default R2 medium, 100 x 140 x 64
at 0.125 mm) with its inputs only (T2w, MT pair, two 32-volume DWI shells, FA, mask; no histology), and
the same images upsampled by an integer factor along each axis, or one per axis (``4x4x2``; every voxel
repeated) at the same voxel size: a brain ``factor`` times larger in each dimension, on the model's grid,
so ``predict`` does not resample. Folders are written once under ``--workdir`` and reused. For brains too
large to predict in the time at hand, ``--reading-only`` measures reading alone (the part that grows with
the volume; predict's own peak above its inputs is the "predict after reading" row of smaller brains).

Rows, each in a fresh process: the baselines (the interpreter importing torch and the engine, and importing
only the engine's data package, as the reading rows do; no data);
per subject, reading it only (``load_subject``) and ``mrhnet predict``, both under ``/usr/bin/time -v``
(``apt-get install time``): max resident set size and wall time; "inputs" is the float32 size of every
image of the subject folder (what ``predict`` holds after reading), "above inputs" = max RSS - inputs
(so it includes the baseline); and the predict phase alone (``infer.predict`` + ``write_maps`` after
reading): its peak above the resident size right after reading, the peak reset through Linux's
``/proc/self/clear_refs``. ``--engine DIR`` runs another copy of the engine (``git archive`` of an older
commit) for before / after rows. Memory numbers do not depend on load; wall times on a shared machine do.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

INPUT_ROLES = ("t2w", "mt_on", "mt_off", "fa", "mask")
MB = 1e6


def parse_factor(text: str) -> tuple[int, int, int]:
    """An upsampling factor: ``2`` (each axis) or ``4x4x2`` (per axis)."""
    parts = [int(p) for p in str(text).lower().split("x")]
    if len(parts) not in (1, 3) or min(parts) < 1:
        raise SystemExit(f"bad factor {text!r}: use N or AxBxC")
    return tuple(parts * 3 if len(parts) == 1 else parts)  # type: ignore[return-value]


def upsample(data: np.ndarray, factor: int | tuple[int, int, int]) -> np.ndarray:
    """``data`` (3D or 4D) with every voxel repeated ``factor`` times along each of the first 3 axes (or
    ``factor[a]`` times along axis ``a``)."""
    factors = (factor,) * 3 if isinstance(factor, int) else factor
    for axis, f in enumerate(factors):
        if f > 1:
            data = np.repeat(data, f, axis=axis)
    return data


def make_subject(folder: Path, brain: str, size: str, factor: int | tuple[int, int, int]) -> Path:
    """Write the inputs of a simulated brain, upsampled by ``factor``, as a subject folder (once)."""
    if (folder / "done").exists():
        return folder
    from MRHNetLib.data.io import Volume
    from MRHNetLib.data.subject import DWI, Subject
    from MRHNetLib.simulation.phantom import simulate_subject

    sim = simulate_subject(brain, size=size)
    sub = Subject(name=f"{brain}-x{factor}")
    for role in INPUT_ROLES:
        v = sim.images[role]
        sub.images[role] = Volume(upsample(v.data, factor), v.affine.copy(), role)
    for role, d in sim.dwi.items():
        sub.dwi[role] = DWI(Volume(upsample(d.volume.data, factor), d.volume.affine.copy(), role), d.gradients)
    del sim
    sub.save(folder)
    (folder / "done").write_text(f"{brain} {size} x{factor}\n")
    return folder


def input_bytes(folder: Path) -> tuple[int, tuple[int, ...]]:
    """(float32 bytes of every image in ``folder``, the 3D grid shape) from the headers."""
    import nibabel as nib

    total, shape = 0, ()
    for p in sorted(folder.glob("*.nii.gz")):
        s = nib.load(str(p)).shape
        total += 4 * int(np.prod(s))
        shape = tuple(int(x) for x in s[:3])
    return total, shape


def timed(cmd: list[str], engine: str | None = None) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v`` (in folder ``engine``, whose ``MRHNetLib`` then comes first
    on the path): max RSS (bytes), wall seconds."""
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=engine) if engine else None
    r = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True, cwd=engine, env=env)
    wall = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    if r.returncode != 0 or m is None:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return {"max_rss": int(m.group(1)) * 1024, "wall_s": wall}


PHASE_SCRIPT = """
import json, sys
import torch
from MRHNetLib.data.subject import load_subject
from MRHNetLib.network.infer import as_model, predict, write_maps
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
folder, out, models = sys.argv[1], sys.argv[2], sys.argv[3:]
models = [as_model(m) for m in models]
subject = load_subject(folder)
after_read = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak resident size (VmHWM) to the current one
write_maps(predict(subject, models, device="cpu"), out)
print(json.dumps({"after_read": after_read, "peak": status("VmHWM:")}))
"""


def predict_phase(folder: Path, out: Path, models: list[str], engine: str | None) -> dict:
    """Peak resident memory of predict alone (after the subject is read), above the resident memory right
    after reading (interpreter, torch, engine, inputs): Linux ``/proc/self/clear_refs`` resets the peak."""
    env = dict(os.environ, PYTHONPATH=engine) if engine else None
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", PHASE_SCRIPT, str(folder), str(out), *models], capture_output=True,
                       text=True, cwd=engine, env=env)
    if r.returncode != 0:
        raise SystemExit(f"predict phase failed:\n{r.stderr[-3000:]}")
    d = json.loads(r.stdout.strip().splitlines()[-1])
    return {"max_rss": d["peak"], "wall_s": time.perf_counter() - t0, "above": d["peak"] - d["after_read"]}


def mrhnet(engine: str | None) -> list[str]:
    """The command line: the installed ``mrhnet``, or ``python -m MRHNetLib`` for an engine folder."""
    exe = shutil.which("mrhnet")
    return [exe] if exe and not engine else [sys.executable, "-m", "MRHNetLib"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="bench-memory", help="subject folders and maps (reused)")
    ap.add_argument("--brain", default="R2")
    ap.add_argument("--size", default="medium", help="phantom size of the 1x brain (small, medium, full)")
    ap.add_argument("--factors", nargs="+", default=["1", "2"],
                    help="upsampling factors: N (each dimension) or AxBxC (per dimension)")
    ap.add_argument("--reading-only", nargs="*", default=[],
                    help="factors (also given in --factors) for which only reading is measured (large brains)")
    ap.add_argument("--model", "-m", action="append", default=None, help="model(s) to run (default: af)")
    ap.add_argument("--extra", default="", help="extra options for mrhnet predict (one string)")
    ap.add_argument("--engine", help="run the MRHNetLib found in this folder (e.g. `git archive` of an older commit)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if not Path("/usr/bin/time").exists():
        raise SystemExit("/usr/bin/time is missing (Debian/Ubuntu: apt-get install time)")
    work = Path(args.workdir)
    models = sum((["-m", m] for m in (args.model or ["af"])), [])
    engine = str(Path(args.engine).resolve()) if args.engine else None
    base = timed([sys.executable, "-c", "import torch, MRHNetLib.network.infer, MRHNetLib.cli"], engine)
    rows = [{"what": "baseline: interpreter + torch + engine imported", "inputs": 0, **base, "above": base["max_rss"]}]
    base = timed([sys.executable, "-c", "import MRHNetLib.data.subject"], engine)
    rows.append({"what": "baseline: interpreter + engine's data package imported (no torch)", "inputs": 0, **base,
                 "above": base["max_rss"]})
    for f in args.factors:
        folder = make_subject(work / f"{args.brain}-x{f}", args.brain, args.size, parse_factor(f)).resolve()
        nbytes, shape = input_bytes(folder)
        name = f"{args.brain} {args.size} x{f}: {' x '.join(map(str, shape))}"
        r = timed([sys.executable, "-c", f"from MRHNetLib.data.subject import load_subject; load_subject({str(folder)!r})"],
                  engine)
        rows.append({"what": f"{name}, reading only", "inputs": nbytes, **r, "above": r["max_rss"] - nbytes})
        if f in args.reading_only:
            continue
        out = (work / f"maps-x{f}").resolve()
        r = timed(mrhnet(engine) + ["predict", str(folder), *models, "--out", str(out), "--device", "cpu",
                                    *args.extra.split()], engine)
        rows.append({"what": f"{name}, predict", "inputs": nbytes, **r, "above": r["max_rss"] - nbytes})
        r = predict_phase(folder, out, args.model or ["af"], engine)
        rows.append({"what": f"{name}, predict after reading (peak above the RSS after reading)", "inputs": nbytes, **r})
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"engine {args.engine or 'installed'}")
    print("| subject | inputs MB | max RSS MB | above inputs MB | wall s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['inputs'] / MB:,.0f} | {r['max_rss'] / MB:,.0f} | {r['above'] / MB:,.0f} "
              f"| {r['wall_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
